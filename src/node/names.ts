/**
 * @module names
 * Device names for display: the system's pci.ids when present, else none (IDs are shown).
 */

import type { Names } from "../core/analysis/tree.ts";
import { loadSystemPciIds } from "./pci-ids.ts";

const NONE: Names = { vendor: () => undefined, device: () => undefined };
let cached: Names | undefined;

/** Names from the system's pci.ids, loaded on first use; none when the file is absent. */
export function systemNames(): Names {
  if (cached) return cached;
  let ids: ReturnType<typeof loadSystemPciIds> = null;
  try {
    ids = loadSystemPciIds();
  } catch {
    ids = null; // an unreadable pci.ids costs names, not the answer
  }
  cached = ids
    ? { vendor: (v) => ids.vendorName(v), device: (v, d) => ids.deviceName(v, d) }
    : NONE;
  return cached;
}
