/**
 * @module pci-ids (node)
 * Finds and loads this system's PCI ID database, where pciutils (Debian `pci.ids`) or hwdata
 * (Fedora, Arch) install it. Loaded once per process.
 */

import { readFileSync } from "node:fs";
import { InputError } from "../core/errors.ts";
import { type PciIds, parsePciIds } from "../core/formats/pci-ids.ts";

export const PCI_IDS_PATHS: readonly string[] = [
  "/usr/share/misc/pci.ids",
  "/usr/share/hwdata/pci.ids",
];

/** Largest pci.ids accepted (the 2023 file is 1.4 MB). */
const MAX_BYTES = 64 * 1024 * 1024;

const cache = new Map<string, PciIds | null>();

/**
 * The first database found among `paths`, or null when none exists. A file that exists but
 * cannot be read is an InputError, not "absent".
 */
export function loadSystemPciIds(paths: readonly string[] = PCI_IDS_PATHS): PciIds | null {
  const key = paths.join("\0");
  const hit = cache.get(key);
  if (hit !== undefined) return hit;
  let found: PciIds | null = null;
  for (const path of paths) {
    let text: string;
    try {
      const buf = readFileSync(path);
      if (buf.length > MAX_BYTES)
        throw new InputError(
          { file: path },
          `file is ${buf.length} bytes, more than the ${MAX_BYTES} accepted`,
          "input-too-large",
        );
      text = buf.toString("utf8");
    } catch (e) {
      if (e instanceof InputError) throw e;
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") continue;
      throw new InputError({ file: path }, `cannot read: ${code ?? (e as Error).message}`);
    }
    found = parsePciIds(text);
    break;
  }
  cache.set(key, found);
  return found;
}
