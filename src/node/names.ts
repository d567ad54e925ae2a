/**
 * @module names
 * Device names for display: the system's pci.ids when present, else none (IDs are shown).
 */

import type { Names } from "../core/analysis/tree.ts";

const NONE: Names = { vendor: () => undefined, device: () => undefined };
let cached: Names | undefined;
let provider: (() => Names | null) | undefined;

/** Lets the pci.ids loader plug in without this module depending on it. */
export function setNamesProvider(p: () => Names | null): void {
  provider = p;
  cached = undefined;
}

export function systemNames(): Names {
  if (cached) return cached;
  cached = provider?.() ?? NONE;
  return cached;
}
