/**
 * @module config-space
 * Reads what P2P analysis needs out of raw PCI configuration space: header type, the standard
 * capability list (PCI Express), the extended capability list (ACS, SR-IOV), bridge bus numbers.
 * Offsets and bit layouts follow the PCI/PCIe specs as include/uapi/linux/pci_regs.h names them.
 */

export type PcieType =
  | "endpoint"
  | "legacy-endpoint"
  | "root-port"
  | "upstream-port"
  | "downstream-port"
  | "pcie-to-pci-bridge"
  | "pci-to-pcie-bridge"
  | "rc-endpoint"
  | "rc-event-collector";

/** PCI_EXP_FLAGS_TYPE values (bits 7:4 of the PCIe capabilities register). */
export const PCIE_TYPE_BY_CODE: Readonly<Record<number, PcieType>> = {
  0: "endpoint",
  1: "legacy-endpoint",
  4: "root-port",
  5: "upstream-port",
  6: "downstream-port",
  7: "pcie-to-pci-bridge",
  8: "pci-to-pcie-bridge",
  9: "rc-endpoint",
  10: "rc-event-collector",
};

/** ACS capability/control bits (PCI_ACS_*). */
export const ACS = {
  SV: 0x01,
  TB: 0x02,
  RR: 0x04,
  CR: 0x08,
  UF: 0x10,
  EC: 0x20,
  DT: 0x40,
} as const;
export const ACS_BIT_NAMES = ["SV", "TB", "RR", "CR", "UF", "EC", "DT"] as const;
export type AcsBitName = (typeof ACS_BIT_NAMES)[number];

/** Link speed in GT/s per PCI_EXP_LNKCAP_SLS / LNKSTA_CLS code. */
export const LINK_SPEED_GTS: Readonly<Record<number, number>> = {
  1: 2.5,
  2: 5,
  3: 8,
  4: 16,
  5: 32,
  6: 64,
};

export interface ParsedCapability {
  readonly id: number;
  readonly offset: number;
  readonly extended: boolean;
  readonly version?: number;
}

export interface ParsedConfig {
  readonly length: number;
  readonly vendor: number;
  readonly device: number;
  readonly classCode: number;
  readonly revision: number;
  readonly headerType: number;
  readonly multifunction: boolean;
  readonly subsystemVendor?: number;
  readonly subsystemDevice?: number;
  readonly primaryBus?: number;
  readonly secondaryBus?: number;
  readonly subordinateBus?: number;
  readonly capabilities: readonly ParsedCapability[];
  /** undefined when the PCIe capability could not be read (short config file). */
  readonly pcie?: {
    readonly offset: number;
    readonly type: PcieType | null;
    readonly typeCode: number;
    readonly linkCap?: { speed: number | null; width: number };
    readonly linkStatus?: { speed: number | null; width: number };
  };
  /** null: extended space readable and no ACS; undefined: extended space not in the data. */
  readonly acs?: { readonly offset: number; readonly cap: number; readonly ctrl: number } | null;
  readonly sriov?: {
    readonly offset: number;
    readonly totalVfs: number;
    readonly numVfs: number;
    readonly firstVfOffset: number;
    readonly vfStride: number;
    readonly vfDevice: number;
  } | null;
  readonly extendedReadable: boolean;
}

const u8 = (b: Uint8Array, o: number): number => b[o] ?? 0;
const u16 = (b: Uint8Array, o: number): number => u8(b, o) | (u8(b, o + 1) << 8);
const u32 = (b: Uint8Array, o: number): number => (u16(b, o) | (u16(b, o + 2) << 16)) >>> 0;

/** PCI_EXT_CAP_ID_ACS */
export const EXT_CAP_ACS = 0x0d;
/** PCI_EXT_CAP_ID_SRIOV */
export const EXT_CAP_SRIOV = 0x10;
/** PCI_CAP_ID_EXP */
export const CAP_EXP = 0x10;

/**
 * Parses a config space dump of 64, 256 or 4096 bytes. Fields beyond the dump are left undefined
 * (unknown), never guessed: a 64-byte non-root read says nothing about ACS.
 */
export function parseConfigSpace(bytes: Uint8Array): ParsedConfig {
  const len = bytes.length;
  const headerType = u8(bytes, 0x0e);
  const layout = headerType & 0x7f;
  const caps: ParsedCapability[] = [];
  let pcie: ParsedConfig["pcie"];
  const status = u16(bytes, 0x06);
  if (len >= 0x40 && status & 0x10) {
    // walk the standard list; guard against loops (at most 48 entries fit in 192 bytes)
    let ptr = u8(bytes, layout === 2 ? 0x14 : 0x34) & 0xfc;
    const seen = new Set<number>();
    while (ptr >= 0x40 && ptr + 2 <= len && !seen.has(ptr) && seen.size < 48) {
      seen.add(ptr);
      const id = u8(bytes, ptr);
      caps.push({ id, offset: ptr, extended: false });
      if (id === CAP_EXP && ptr + 0x14 <= len) {
        const flags = u16(bytes, ptr + 2);
        const typeCode = (flags >> 4) & 0xf;
        const lnkcap = u32(bytes, ptr + 0x0c);
        const lnksta = u16(bytes, ptr + 0x12);
        const type = PCIE_TYPE_BY_CODE[typeCode] ?? null;
        // integrated endpoints and event collectors have no link (PCIe r6 §7.5.3)
        const linkless = type === "rc-endpoint" || type === "rc-event-collector";
        pcie = {
          offset: ptr,
          typeCode,
          type,
          ...(linkless
            ? {}
            : {
                linkCap: {
                  speed: LINK_SPEED_GTS[lnkcap & 0xf] ?? null,
                  width: (lnkcap >> 4) & 0x3f,
                },
                linkStatus: {
                  speed: LINK_SPEED_GTS[lnksta & 0xf] ?? null,
                  width: (lnksta >> 4) & 0x3f,
                },
              }),
        };
      } else if (id === CAP_EXP && ptr + 4 <= len) {
        const typeCode = (u16(bytes, ptr + 2) >> 4) & 0xf;
        pcie = { offset: ptr, typeCode, type: PCIE_TYPE_BY_CODE[typeCode] ?? null };
      }
      ptr = u8(bytes, ptr + 1) & 0xfc;
    }
  }
  const extendedReadable = len >= 0x1000 && pcie !== undefined;
  let acs: ParsedConfig["acs"] = extendedReadable ? null : undefined;
  let sriov: ParsedConfig["sriov"] = extendedReadable ? null : undefined;
  if (extendedReadable) {
    let ptr = 0x100;
    const seen = new Set<number>();
    while (ptr >= 0x100 && ptr + 4 <= len && !seen.has(ptr) && seen.size < 960) {
      seen.add(ptr);
      const hdr = u32(bytes, ptr);
      if (hdr === 0 || hdr === 0xffffffff) break;
      const id = hdr & 0xffff;
      caps.push({ id, offset: ptr, extended: true, version: (hdr >>> 16) & 0xf });
      if (id === EXT_CAP_ACS && acs === null) {
        acs = { offset: ptr, cap: u16(bytes, ptr + 4), ctrl: u16(bytes, ptr + 6) };
      } else if (id === EXT_CAP_SRIOV && sriov === null) {
        sriov = {
          offset: ptr,
          totalVfs: u16(bytes, ptr + 0x0e),
          numVfs: u16(bytes, ptr + 0x10),
          firstVfOffset: u16(bytes, ptr + 0x14),
          vfStride: u16(bytes, ptr + 0x16),
          vfDevice: u16(bytes, ptr + 0x1a),
        };
      }
      ptr = (hdr >>> 20) & 0xffc;
    }
  }
  const bridge = layout === 1 || layout === 2;
  return {
    length: len,
    vendor: u16(bytes, 0),
    device: u16(bytes, 2),
    revision: u8(bytes, 8),
    classCode: (u8(bytes, 0x0b) << 16) | (u8(bytes, 0x0a) << 8) | u8(bytes, 0x09),
    headerType: layout,
    multifunction: (headerType & 0x80) !== 0,
    ...(layout === 0 && len >= 0x30
      ? { subsystemVendor: u16(bytes, 0x2c), subsystemDevice: u16(bytes, 0x2e) }
      : {}),
    ...(bridge
      ? {
          primaryBus: u8(bytes, 0x18),
          secondaryBus: u8(bytes, 0x19),
          subordinateBus: u8(bytes, 0x1a),
        }
      : {}),
    capabilities: caps,
    ...(pcie ? { pcie } : {}),
    ...(acs !== undefined ? { acs } : {}),
    ...(sriov !== undefined ? { sriov } : {}),
    extendedReadable,
  };
}

/** `SV+ TB- RR+ ...` in lspci's order, for display. */
export function formatAcsBits(word: number): string {
  return ACS_BIT_NAMES.map((n) => `${n}${word & ACS[n] ? "+" : "-"}`).join(" ");
}

/** Parses `RR|CR`, `0x1d`, `SV,RR,CR,UF` into a control word. */
export function parseAcsBits(text: string): number | null {
  const t = text.trim();
  if (/^0x[0-9a-f]+$/i.test(t)) return Number.parseInt(t.slice(2), 16);
  if (/^[0-9]+$/.test(t)) return Number.parseInt(t, 10);
  let v = 0;
  for (const part of t.split(/[|,+\s]+/).filter(Boolean)) {
    const bit = ACS[part.toUpperCase() as AcsBitName];
    if (bit === undefined) return null;
    v |= bit;
  }
  return v;
}
