/**
 * @module bdf
 * PCI addresses as parsed values. Domains may be 32-bit (VMD uses 10000 and up).
 */

export interface Bdf {
  readonly domain: number;
  readonly bus: number;
  readonly dev: number;
  readonly fn: number;
}

const BDF_RE = /^(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$/;

/** Parses `DDDD:BB:DD.F` or `BB:DD.F` (domain 0); returns null when it is not one. */
export function parseBdf(text: string): Bdf | null {
  const m = BDF_RE.exec(text.trim());
  if (!m) return null;
  const dev = Number.parseInt(m[3]!, 16);
  if (dev > 31) return null;
  return {
    domain: m[1] ? Number.parseInt(m[1], 16) : 0,
    bus: Number.parseInt(m[2]!, 16),
    dev,
    fn: Number.parseInt(m[4]!, 10),
  };
}

/** `pci_name()`: `%04x:%02x:%02x.%d`. */
export function formatBdf(b: Bdf): string {
  return `${b.domain.toString(16).padStart(4, "0")}:${b.bus.toString(16).padStart(2, "0")}:${b.dev
    .toString(16)
    .padStart(2, "0")}.${b.fn}`;
}

export const devfn = (b: Bdf): number => (b.dev << 3) | b.fn;

/** Root-bus name as sysfs spells the host bridge directory: `pciDDDD:BB`. */
export function formatBusId(domain: number, bus: number): string {
  return `${domain.toString(16).padStart(4, "0")}:${bus.toString(16).padStart(2, "0")}`;
}

/** Sort key: domain, bus, devfn. */
export function compareBdf(a: Bdf, b: Bdf): number {
  return a.domain - b.domain || a.bus - b.bus || devfn(a) - devfn(b);
}

/** Canonical string for a BDF string in any accepted spelling; null if not a BDF. */
export function normalizeBdf(text: string): string | null {
  const b = parseBdf(text);
  return b ? formatBdf(b) : null;
}
