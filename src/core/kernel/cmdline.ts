/**
 * @module cmdline
 * The kernel command-line parameters that change P2P decisions: `pci=disable_acs_redir=`,
 * `pci=config_acs=`, `pci=noats`, and the IOMMU switches. Parsed with the kernel's syntax:
 * `pci=` options are split at `,`, device lists inside them at `;`.
 */

import { parseBdf } from "../hw/bdf.ts";
import type { IommuMode } from "../hw/machine.ts";

/** One `<dev>` of pci_dev_str_match(). */
export type DeviceMatch =
  | {
      readonly kind: "path";
      readonly domain: number;
      readonly bus: number;
      readonly devfns: readonly number[];
      readonly text: string;
    }
  | {
      readonly kind: "id";
      readonly vendor: number;
      readonly device: number;
      readonly subVendor: number;
      readonly subDevice: number;
      readonly text: string;
    };

export interface ConfigAcsEntry {
  readonly mask: number;
  readonly flags: number;
  readonly match: DeviceMatch;
}

/** An entry the kernel could not parse: its per-device walk stops there. */
export interface InvalidEntry {
  readonly invalid: string;
}

export interface CmdlineProblem {
  readonly param: string;
  readonly message: string;
}

export interface ParsedCmdline {
  readonly raw: string;
  /** In order; the last `pci=disable_acs_redir=` wins (pci_setup keeps one pointer). */
  readonly disableAcsRedir: readonly (DeviceMatch | InvalidEntry)[];
  readonly configAcs: readonly (ConfigAcsEntry | InvalidEntry)[];
  readonly noats: boolean;
  /** What the IOMMU parameters ask for; undefined where the line says nothing. */
  readonly iommu: {
    readonly intel?: "on" | "off";
    readonly amd?: "on" | "off";
    /** iommu=pt / iommu.passthrough=1 → true; iommu=nopt / passthrough=0 → false. */
    readonly passthrough?: boolean;
    readonly strict?: boolean;
    readonly off?: boolean;
  };
  /** Unknown `pci=` options and malformed entries, as the kernel would warn. */
  readonly problems: readonly CmdlineProblem[];
}

/** Splits a command line into words; double quotes group spaces (next_arg()). */
function words(line: string): string[] {
  const out: string[] = [];
  let cur = "";
  let quoted = false;
  let any = false;
  for (const ch of line) {
    if (ch === '"') {
      quoted = !quoted;
      any = true;
    } else if (!quoted && /\s/.test(ch)) {
      if (any) out.push(cur);
      cur = "";
      any = false;
    } else {
      cur += ch;
      any = true;
    }
  }
  if (any) out.push(cur);
  return out;
}

const DEVFN_RE = /^([0-9a-fA-F]{1,2})\.([0-7])$/;

/** Parses one `<dev>` of pci_dev_str_match(); null when malformed. */
export function parseDeviceMatch(text: string): DeviceMatch | null {
  const t = text.trim();
  if (t.startsWith("pci:")) {
    const parts = t.slice(4).split(":");
    if (parts.length !== 2 && parts.length !== 4) return null;
    if (!parts.every((p) => /^[0-9a-fA-F]{1,4}$/.test(p))) return null;
    const [v, d, sv, sd] = parts.map((p) => Number.parseInt(p, 16));
    return { kind: "id", vendor: v!, device: d!, subVendor: sv ?? 0, subDevice: sd ?? 0, text: t };
  }
  const segs = t.split("/");
  const head = parseBdf(segs[0]!);
  if (!head) return null;
  const devfns = [(head.dev << 3) | head.fn];
  for (const s of segs.slice(1)) {
    const m = DEVFN_RE.exec(s);
    if (!m) return null;
    const dev = Number.parseInt(m[1]!, 16);
    if (dev > 31) return null;
    devfns.push((dev << 3) | Number.parseInt(m[2]!, 10));
  }
  return { kind: "path", domain: head.domain, bus: head.bus, devfns, text: t };
}

/**
 * `config_acs` bits: read right to left from SV; `0` clear, `1` set, `x` keep. Forcing a bit
 * beyond DT is an error; an `x` there forces nothing and is accepted (__pci_config_acs).
 */
export function parseConfigAcsBits(bits: string): { mask: number; flags: number } | null {
  if (bits.length === 0 || bits.length > 32) return null;
  let mask = 0;
  let flags = 0;
  for (let i = 0; i < bits.length; i++) {
    const ch = bits[bits.length - 1 - i]!;
    const bit = 2 ** i;
    if (ch === "0") mask += bit;
    else if (ch === "1") {
      mask += bit;
      flags += bit;
    } else if (ch !== "x" && ch !== "X") return null;
  }
  if (mask > 0x7f) return null;
  return { mask, flags };
}

/** The first entry matching `matches`, as the kernel's per-device walk finds it; stops at a bad entry. */
export function firstMatch<T extends object>(
  entries: readonly (T | InvalidEntry)[],
  matches: (e: T) => boolean,
): T | undefined {
  for (const e of entries) {
    if ("invalid" in e) return undefined;
    if (matches(e)) return e;
  }
  return undefined;
}

/** `hasConfigAcs`: the kernel knows `pci=config_acs=` (mainline; 6.1 calls it an unknown option). */
export function parseCmdline(raw: string, opts: { hasConfigAcs?: boolean } = {}): ParsedCmdline {
  let disable: (DeviceMatch | InvalidEntry)[] = [];
  let config: (ConfigAcsEntry | InvalidEntry)[] = [];
  const problems: CmdlineProblem[] = [];
  let noats = false;
  const iommu: { -readonly [K in keyof ParsedCmdline["iommu"]]: ParsedCmdline["iommu"][K] } = {};
  for (const w of words(raw)) {
    const eq = w.indexOf("=");
    const key = eq < 0 ? w : w.slice(0, eq);
    const val = eq < 0 ? "" : w.slice(eq + 1);
    switch (key) {
      case "pci":
        for (const opt of val.split(",")) {
          if (opt === "") continue;
          if (opt.startsWith("disable_acs_redir=")) {
            disable = [];
            for (const d of opt.slice("disable_acs_redir=".length).split(";")) {
              if (d === "") continue;
              const m = parseDeviceMatch(d);
              if (m) disable.push(m);
              else {
                disable.push({ invalid: d });
                problems.push({
                  param: opt,
                  message: `cannot parse "${d}" as a PCI device (disable_acs_redir); entries after it are not reached`,
                });
              }
            }
          } else if (opt.startsWith("config_acs=") && opts.hasConfigAcs !== false) {
            config = [];
            for (const e of opt.slice("config_acs=".length).split(";")) {
              if (e === "") continue;
              const at = e.indexOf("@");
              const bits = at < 0 ? null : parseConfigAcsBits(e.slice(0, at));
              const m = at < 0 ? null : parseDeviceMatch(e.slice(at + 1));
              if (at < 0)
                problems.push({
                  param: opt,
                  message: `config_acs entry "${e}" has no "@<device>"`,
                });
              else if (!bits)
                problems.push({ param: opt, message: `config_acs entry "${e}": invalid flags` });
              else if (!m)
                problems.push({
                  param: opt,
                  message: `config_acs entry "${e}": cannot parse the device`,
                });
              if (bits && m) config.push({ ...bits, match: m });
              else config.push({ invalid: e });
            }
          } else if (opt === "noats") noats = true;
          else if (!KNOWN_PCI_OPTS.some((k) => opt === k || opt.startsWith(`${k}=`)))
            problems.push({
              param: opt,
              message: `unknown pci= option "${opt}" (the kernel prints "PCI: Unknown option")`,
            });
        }
        break;
      case "intel_iommu":
        for (const o of val.split(",")) {
          if (o === "on") iommu.intel = "on";
          else if (o === "off") iommu.intel = "off";
          else if (o === "strict") iommu.strict = true;
        }
        break;
      case "amd_iommu":
        if (val === "off") iommu.amd = "off";
        else if (val === "on") iommu.amd = "on";
        break;
      case "iommu":
        if (val === "pt") iommu.passthrough = true;
        else if (val === "nopt") iommu.passthrough = false;
        else if (val === "off") iommu.off = true;
        break;
      case "iommu.passthrough":
        iommu.passthrough = val === "1" || val === "y" || val === "on";
        break;
      case "iommu.strict":
        iommu.strict = val === "1" || val === "y" || val === "on";
        break;
      default:
        break;
    }
  }
  return { raw, disableAcsRedir: disable, configAcs: config, noats, iommu, problems };
}

/** `pci=` options we do not model but the kernel accepts (so they are not reported unknown). */
const KNOWN_PCI_OPTS = [
  "nomsi",
  "noaer",
  "nommconf",
  "nomio",
  "noacpi",
  "nobar",
  "realloc",
  "assign-busses",
  "nocrs",
  "use_crs",
  "bfsort",
  "nobfsort",
  "pcie_bus_perf",
  "pcie_bus_safe",
  "pcie_bus_tune_off",
  "pcie_bus_peer2peer",
  "hpiosize",
  "hpmmiosize",
  "hpmmioprefsize",
  "hpmemsize",
  "hpbussize",
  "resource_alignment",
  "ecrc",
  "pcie_scan_all",
  "big_root_window",
  "skip_isa_align",
  "noearly",
  "lastbus",
  "routeirq",
  "norom",
  "conf1",
  "conf2",
  "nodomains",
  "noari",
  "check_enable_amd_mmconf",
  "nocheck_enable_amd_mmconf",
  "earlydump",
  "irqmask",
  "pcie_port_pm",
  "force_floating",
  "nopcie",
  "biosirq",
  "nobios",
  "rom",
  "cbiosize",
  "cbmemsize",
];

/**
 * The IOMMU mode a command line leads to, starting from what the machine had (`base`). Which
 * IOMMU is on by default is a build choice, so without an explicit switch the base stands.
 */
export function iommuFromCmdline(
  c: ParsedCmdline,
  cpuVendor: string | undefined,
  base: IommuMode | undefined,
): IommuMode | undefined {
  if (c.iommu.off) return "off";
  const amd = cpuVendor === "AuthenticAMD" || cpuVendor === "HygonGenuine";
  const sw = amd ? c.iommu.amd : c.iommu.intel;
  if (sw === "off") return "off";
  let mode = sw === "on" && (base === undefined || base === "off") ? "dma-fq" : base;
  if (mode === undefined || mode === "off") return mode;
  if (c.iommu.passthrough === true) mode = "identity";
  else if (c.iommu.passthrough === false && mode === "identity") mode = "dma-fq";
  if (c.iommu.strict === true && mode === "dma-fq") mode = "dma";
  return mode;
}
