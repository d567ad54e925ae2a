/**
 * @module lspci
 * Loads a machine from pciutils `lspci` text: `-t`/`-tv`/`-tvnn` trees, `-v`…`-vvvnnD` dumps,
 * `-P`/`-PP` path listings and `-x`…`-xxxx` hex dumps, several at once for one machine (and
 * several kinds in one file). Every input adds facts about functions keyed by BDF; a fact told
 * twice must agree. The output shapes read here are pciutils 3.x's, as described in the
 * topology-formats notes §3; no pciutils code is reused.
 */

import { InputError } from "../errors.ts";
import { formatBdf, formatBusId } from "../hw/bdf.ts";
import { type PcieType, parseConfigSpace } from "../hw/config-space.ts";
import type {
  BarDescription,
  FunctionDescription,
  HostBridgeDescription,
  LinkDescription,
  MachineDescription,
} from "../hw/machine.ts";
import { isBridgeDescription, MACHINE_SCHEMA_VERSION } from "../hw/machine.ts";
import type { PciIds } from "./pci-ids.ts";

export interface LspciOptions {
  /**
   * A names database: resolves class names (output without `-n`) to class codes, and vendor
   * and device names to IDs when the text has no `[vvvv:dddd]`.
   */
  readonly ids?: PciIds | null;
}

/**
 * Class names lspci prints (from pci.ids) for the classes P2P analysis cares about, so output
 * without `-n` still yields bridges, GPUs, NICs and NVMe without a names database.
 */
export const LSPCI_CLASS_NAMES: ReadonlyMap<string, number> = new Map([
  ["Non-VGA unclassified device", 0x0000],
  ["SCSI storage controller", 0x0100],
  ["RAID bus controller", 0x0104],
  ["SATA controller", 0x0106],
  ["Serial Attached SCSI controller", 0x0107],
  ["Non-Volatile memory controller", 0x0108],
  ["Mass storage controller", 0x0180],
  ["Ethernet controller", 0x0200],
  ["Infiniband controller", 0x0207],
  ["Fabric controller", 0x0208],
  ["Network controller", 0x0280],
  ["VGA compatible controller", 0x0300],
  ["3D controller", 0x0302],
  ["Display controller", 0x0380],
  ["Audio device", 0x0403],
  ["Host bridge", 0x0600],
  ["ISA bridge", 0x0601],
  ["PCI bridge", 0x0604],
  ["CardBus bridge", 0x0607],
  ["Semi-transparent PCI-to-PCI bridge", 0x0609],
  ["Bridge", 0x0680],
  ["IOMMU", 0x0806],
  ["System peripheral", 0x0880],
  ["Co-processor", 0x0b40],
  ["USB controller", 0x0c03],
  ["SMBus", 0x0c05],
  ["Encryption controller", 0x1080],
  ["Signal processing controller", 0x1180],
  ["Processing accelerators", 0x1200],
]);

// ------------------------------------------------------------------------------------------
// facts

interface At {
  readonly file: string;
  readonly line: number;
}

interface AcsFact {
  readonly cap: number;
  readonly ctrl?: number;
  readonly offset?: number;
  /** Bits the source could tell: lspci prints 7 flags, a dump gives the whole 16-bit word. */
  readonly mask: number;
}

interface FactValues {
  vendor: number;
  device: number;
  subsystemVendor: number;
  subsystemDevice: number;
  revision: number;
  class16: number;
  progIf: number;
  headerType: number;
  multifunction: boolean;
  pcieType: PcieType | null;
  maxSpeed: number | null;
  maxWidth: number;
  speed: number | null;
  width: number;
  secondaryBus: number;
  subordinateBus: number;
  bars: readonly BarDescription[];
  numaNode: number | null;
  iommuGroup: number;
  driver: string | null;
  label: string;
  hasAcs: boolean;
  acs: AcsFact;
  hasSriov: boolean;
  sriov: { readonly totalVfs: number; readonly numVfs: number };
  treeParent: string | null;
  pathParent: string | null;
  /** The tree draws a bus below it (header type 1 or 2). */
  bridge: boolean;
}
type Key = keyof FactValues;
type Facts = { [K in Key]?: { readonly v: FactValues[K]; readonly at: At } };

const LABEL: Record<Key, string> = {
  vendor: "vendor ID",
  device: "device ID",
  subsystemVendor: "subsystem vendor ID",
  subsystemDevice: "subsystem device ID",
  revision: "revision",
  class16: "class",
  progIf: "prog-if",
  headerType: "header type",
  multifunction: "multi-function bit",
  pcieType: "PCIe port type",
  maxSpeed: "LnkCap speed",
  maxWidth: "LnkCap width",
  speed: "LnkSta speed",
  width: "LnkSta width",
  secondaryBus: "secondary bus",
  subordinateBus: "subordinate bus",
  bars: "BARs",
  numaNode: "NUMA node",
  iommuGroup: "IOMMU group",
  driver: "driver",
  label: "label",
  hasAcs: "ACS capability presence",
  acs: "ACS registers",
  hasSriov: "SR-IOV capability presence",
  sriov: "SR-IOV VF counts",
  treeParent: "parent in the -t tree",
  pathParent: "parent in the -P path",
  bridge: "bridge",
};
const HEX_KEYS = new Set<Key>([
  "vendor",
  "device",
  "subsystemVendor",
  "subsystemDevice",
  "revision",
  "class16",
  "progIf",
  "secondaryBus",
  "subordinateBus",
]);

interface Fn {
  readonly bdf: string;
  readonly domain: number;
  readonly bus: number;
  readonly first: At;
  readonly facts: Facts;
  /** `vendor device` as lspci printed it (without `[ids]`). */
  names?: string;
  className?: string;
  config?: Uint8Array;
  /** Some `Region` line had no `[size=]` (a dump read back with `lspci -F`). */
  barsUnsized?: boolean;
  denied?: boolean;
}

/** Facts of one device header block before its BDF is known (`-P` paths). */
interface Pending {
  facts: Facts;
  names?: string;
  className?: string;
  config?: Uint8Array;
  barsUnsized?: boolean;
  denied?: boolean;
}

const fail = (at: At, reason: string): never => {
  throw new InputError({ file: at.file, place: `line ${at.line}` }, reason);
};

const hex = (s: string): number => Number.parseInt(s, 16);

function show(k: Key, v: unknown): string {
  if (v === null) return "none";
  if (typeof v === "number" && HEX_KEYS.has(k)) return `0x${v.toString(16)}`;
  if (Array.isArray(v)) return `${v.length} BAR(s) ${JSON.stringify(v, big)}`;
  if (typeof v === "object") return JSON.stringify(v, big);
  return String(v);
}
const big = (_k: string, v: unknown): unknown =>
  typeof v === "bigint" ? `0x${v.toString(16)}` : v;
const same = (a: unknown, b: unknown): boolean =>
  a === b ||
  (typeof a === "object" &&
    a !== null &&
    typeof b === "object" &&
    b !== null &&
    JSON.stringify(a, big) === JSON.stringify(b, big));

/** Adds a fact; a different value already known is an InputError naming both places. */
function put<K extends Key>(facts: Facts, k: K, v: FactValues[K], at: At, who: string): void {
  const slot = facts as { [P in K]?: { v: FactValues[P]; at: At } };
  const old = slot[k];
  if (old === undefined) {
    slot[k] = { v, at };
    return;
  }
  if (k === "acs") {
    const a = old.v as AcsFact;
    const b = v as AcsFact;
    const m = a.mask & b.mask;
    const ctrlOk = a.ctrl === undefined || b.ctrl === undefined || ((a.ctrl ^ b.ctrl) & m) === 0;
    const offOk = a.offset === undefined || b.offset === undefined || a.offset === b.offset;
    if (((a.cap ^ b.cap) & m) !== 0 || !ctrlOk || !offOk)
      fail(
        at,
        `${who}: ACS registers cap=0x${b.cap.toString(16)} ctrl=0x${(b.ctrl ?? 0).toString(16)} here but cap=0x${a.cap.toString(16)} ctrl=0x${(a.ctrl ?? 0).toString(16)} at ${old.at.file} line ${old.at.line}`,
      );
    // keep the wider reading, filling what it lacks from the other
    const [wide, narrow] = b.mask > a.mask ? [b, a] : [a, b];
    const ctrl = wide.ctrl ?? narrow.ctrl;
    const offset = wide.offset ?? narrow.offset;
    slot[k] = {
      v: {
        cap: wide.cap,
        mask: wide.mask,
        ...(ctrl !== undefined ? { ctrl } : {}),
        ...(offset !== undefined ? { offset } : {}),
      } as FactValues[K],
      at: old.at,
    };
    return;
  }
  if (!same(old.v, v))
    fail(
      at,
      `${who}: ${LABEL[k]} is ${show(k, v)} here but ${show(k, old.v)} at ${old.at.file} line ${old.at.line}`,
    );
}

function putAll(into: Fn, from: Pending): void {
  for (const k of Object.keys(from.facts) as Key[]) {
    const f = from.facts[k]!;
    put(into.facts, k, f.v as never, f.at, into.bdf);
  }
  if (from.names !== undefined) into.names ??= from.names;
  if (from.className !== undefined) into.className ??= from.className;
  if (from.config && (!into.config || from.config.length > into.config.length))
    into.config = from.config;
  if (from.barsUnsized) into.barsUnsized = true;
  if (from.denied) into.denied = true;
}

// ------------------------------------------------------------------------------------------
// line shapes

const HEADER_RE =
  /^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])((?:\/(?:[0-9a-fA-F]{2}:)?[0-9a-fA-F]{2}\.[0-7])*)(?=\s|$)/;
const HEX_ROW_RE = /^([0-9a-fA-F]{2,3}):((?: [0-9a-fA-F]{2}){16})$/;
const HEX_ROW_START_RE = /^[0-9a-fA-F]{2,3}: [0-9a-fA-F]/;
const TREE_START_RE = /^-(?:\+-)?\[/;
const WARNING_RE = /^(?:lspci|pcilib): /;
const WARNING_ANYWHERE_RE = /(?:lspci|pcilib): /;

/** True when the text's first meaningful line is an lspci tree, header or hex row. */
export function looksLikeLspci(text: string): boolean {
  for (const raw of text.replace(/^\uFEFF/, "").split("\n", 64)) {
    const line = raw.trimEnd();
    if (line === "" || WARNING_RE.test(line)) continue;
    if (TREE_START_RE.test(line)) return true;
    const m = HEADER_RE.exec(line);
    return m !== null && line.length > m[0].length;
  }
  return false;
}

// ------------------------------------------------------------------------------------------
// header line: `BB:DD.F Class [cccc]: Vendor Device [vvvv:dddd] (rev rr) (prog-if pp [name])`

interface Head {
  class16?: number;
  className?: string;
  progIf?: number;
  revision: number;
  vendor?: number;
  device?: number;
  names?: string;
}

/**
 * `vendor device` as pciutils' name lookup formats it: `V D`, `V D [vvvv:dddd]` (-nn),
 * `vvvv:dddd` (-n), `V Device dddd` / `Device vvvv:dddd` (unknown names), `V: Unknown device
 * dddd` (pciutils 2.x). Names cut at the buffer end carry `...`.
 */
function parseVendorDevice(text: string): { vendor?: number; device?: number; names?: string } {
  const t = text.trim();
  let m = /^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$/.exec(t);
  if (m) return { vendor: hex(m[1]!), device: hex(m[2]!) };
  m = /\[([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\]$/.exec(t);
  if (m) {
    const names = t.slice(0, m.index).trimEnd();
    return {
      vendor: hex(m[1]!),
      device: hex(m[2]!),
      ...(names !== "" && names !== "Device" ? { names } : {}),
    };
  }
  m = /^Device ([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$/.exec(t);
  if (m) return { vendor: hex(m[1]!), device: hex(m[2]!) };
  m = /(?: Device|: Unknown device) ([0-9a-fA-F]{4})$/.exec(t);
  if (m) return { device: hex(m[1]!), names: t };
  return t === "" ? {} : { names: t };
}

function parseHead(rest: string, at: At): Head {
  if (rest.startsWith('"'))
    fail(at, "lspci -m/-mm output is not supported: give lspci -vvvnn, -tv, -PP or -xxxx output");
  let tail: string;
  const head: Partial<Head> = {};
  const num = /^([0-9a-fA-F]{4}): ([0-9a-fA-F]{4}):([0-9a-fA-F]{4})(?=\s|$)(.*)$/.exec(rest);
  if (num) {
    head.class16 = hex(num[1]!);
    head.vendor = hex(num[2]!);
    head.device = hex(num[3]!);
    tail = num[4]!;
  } else {
    const i = rest.indexOf(": ");
    if (i < 0)
      fail(at, `device header without "class: vendor device" (truncated?): "${cut(rest)}"`);
    const cls = rest.slice(0, i);
    tail = rest.slice(i + 2);
    const mixed = /\[([0-9a-fA-F]{4})\]$/.exec(cls);
    const unknown = /^Class ([0-9a-fA-F]{4})$/.exec(cls);
    if (mixed) head.class16 = hex(mixed[1]!);
    else if (unknown) head.class16 = hex(unknown[1]!);
    else head.className = cls;
  }
  const pi = tail.lastIndexOf(" (prog-if ");
  const pm =
    pi >= 0 ? /^ \(prog-if ([0-9a-fA-F]{2})(?: \[[^\]]*\])?\)$/.exec(tail.slice(pi)) : null;
  if (pm) {
    head.progIf = hex(pm[1]!);
    tail = tail.slice(0, pi);
  }
  const ri = tail.lastIndexOf(" (rev ");
  const rm = ri >= 0 ? /^ \(rev ([0-9a-fA-F]{2})\)$/.exec(tail.slice(ri)) : null;
  if (rm) tail = tail.slice(0, ri);
  if (num && tail.trim() !== "") fail(at, `unexpected "${cut(tail.trim())}" in a numeric header`);
  const vd = num ? {} : parseVendorDevice(tail);
  // lspci prints `(rev rr)` only for a nonzero revision
  return { ...head, ...vd, revision: rm ? hex(rm[1]!) : 0 } as Head;
}

const cut = (s: string): string => (s.length > 60 ? `${s.slice(0, 57)}...` : s);

// ------------------------------------------------------------------------------------------
// verbose lines (-v, -vv, -vvv)

const PCIE_TYPES: ReadonlyMap<string, PcieType> = new Map([
  ["Endpoint", "endpoint"],
  ["Legacy Endpoint", "legacy-endpoint"],
  ["Root Port", "root-port"],
  ["Upstream Port", "upstream-port"],
  ["Downstream Port", "downstream-port"],
  ["PCI-Express to PCI/PCI-X Bridge", "pcie-to-pci-bridge"],
  ["PCI/PCI-X to PCI-Express Bridge", "pci-to-pcie-bridge"],
  ["Root Complex Integrated Endpoint", "rc-endpoint"],
  ["Root Complex Event Collector", "rc-event-collector"],
]);

/** lspci's ACS flag names, in register bit order (PCI_ACS_SV … PCI_ACS_DT). */
const ACS_FLAGS = [
  "SrcValid",
  "TransBlk",
  "ReqRedir",
  "CmpltRedir",
  "UpstreamFwd",
  "EgressCtrl",
  "DirectTrans",
] as const;

function acsWord(text: string, at: At, what: string): number {
  let word = 0;
  let found = 0;
  for (const m of text.matchAll(/([A-Za-z]+)([+-]?)/g)) {
    const bit = ACS_FLAGS.indexOf(m[1] as (typeof ACS_FLAGS)[number]);
    if (bit < 0 || m[2] === "") continue;
    found |= 1 << bit;
    if (m[2] === "+") word |= 1 << bit;
  }
  if (found !== 0x7f) {
    const missing = ACS_FLAGS.filter((_, i) => !(found & (1 << i)));
    fail(at, `${what} line lacks ${missing.join(", ")} (truncated?)`);
  }
  return word;
}

/** `Speed 8GT/s`/`Speed unknown` and `Width x16` from LnkCap/LnkSta, as lspci spells them. */
function linkPair(text: string, at: At, what: string): { speed: number | null; width: number } {
  const s = /Speed (unknown|[0-9]+(?:\.[0-9]+)?GT\/s)/.exec(text);
  const w = /Width x([0-9]{1,2})\b/.exec(text);
  if (!s || !w) fail(at, `${what} line without Speed and Width (truncated?)`);
  const speed = s![1] === "unknown" ? null : Number.parseFloat(s![1]!);
  return { speed, width: Number.parseInt(w![1]!, 10) };
}

const SIZE_UNITS: Readonly<Record<string, bigint>> = {
  "": 1n,
  K: 1n << 10n,
  M: 1n << 20n,
  G: 1n << 30n,
  T: 1n << 40n,
  P: 1n << 50n,
  E: 1n << 60n,
};

/**
 * lspci -vv's `Region N: Memory at ADDR (64-bit, prefetchable) [size=16M]`; bar null for
 * `<unassigned>`/`<ignored>`. Sizes come from sysfs, so `lspci -F` output has none.
 */
function parseRegion(
  text: string,
  at: At,
): { bar: BarDescription | null; sized: boolean } | undefined {
  const m =
    /^Region ([0-9]+): (?:\[virtual\] )?(Memory|I\/O ports) at (\S+)(?: \(([^)]*)\))?(.*)$/.exec(
      text,
    );
  if (!m) {
    if (/^Region [0-9]+: /.test(text)) fail(at, `unreadable Region line: "${cut(text)}"`);
    return undefined;
  }
  const index = Number.parseInt(m[1]!, 10);
  if (index > 5) fail(at, `Region ${index}: a function has BARs 0 to 5 only`);
  const addr = m[3]!;
  if (addr.startsWith("<")) return { bar: null, sized: true }; // <unassigned>, <ignored>
  if (!/^[0-9a-fA-F]{1,16}$/.test(addr)) fail(at, `Region ${index}: address "${addr}" is not hex`);
  const sz = /\[size=([0-9a-fA-F]+)([KMGTPE]?)\]/.exec(m[5]!);
  if (!sz) return { bar: null, sized: false };
  // sizes are decimal with a unit; pciutils 2.x printed 2 GiB and more as bare hex
  const size =
    sz[2] === "" && sz[1]!.length > 4
      ? BigInt(`0x${sz[1]}`)
      : /^[0-9]+$/.test(sz[1]!)
        ? BigInt(sz[1]!) * SIZE_UNITS[sz[2]!]!
        : fail(at, `Region ${index}: size "${sz[1]}${sz[2]}" is not a number`);
  const mem = m[2] === "Memory";
  const attrs = m[4] ?? "";
  return {
    bar: {
      index,
      start: BigInt(`0x${addr}`),
      size,
      mem,
      prefetchable: mem && /(?:^|[ ,])prefetchable/.test(attrs),
      is64: mem && attrs.includes("64-bit"),
    },
    sized: true,
  };
}

function indentOf(line: string): number {
  let w = 0;
  for (const ch of line) {
    if (ch === "\t") w = (w + 8) & ~7;
    else if (ch === " ") w++;
    else break;
  }
  return w;
}

interface Block {
  readonly at: At;
  readonly head: Head;
  readonly domain: number;
  /** Hops of a -P/-PP path, the function itself last; bus undefined in -P short form. */
  readonly hops: readonly { readonly bus?: number; readonly dev: number; readonly fn: number }[];
  readonly lines: { readonly text: string; readonly at: At }[];
  readonly hex: number[];
}

/**
 * Reads one device block into facts; `who` names the function in conflict messages. Follows
 * lspci's verbose layout: fields at one indent, each capability's registers deeper; `Control:`
 * appears from -vv on, `Flags:` only at -v; extended capabilities only when lspci could read
 * past 256 bytes (as root), else `Capabilities: <access denied>`.
 */
function readBlock(b: Block, who: string): Pending {
  const p: Pending = { facts: {} };
  const f = p.facts;
  const at = b.at;
  const h = b.head;
  if (h.class16 !== undefined) put(f, "class16", h.class16, at, who);
  else if (h.className !== undefined) p.className = h.className;
  if (h.vendor !== undefined) put(f, "vendor", h.vendor, at, who);
  if (h.device !== undefined) put(f, "device", h.device, at, who);
  put(f, "revision", h.revision, at, who);
  if (h.names !== undefined) p.names = h.names;

  let top = Number.POSITIVE_INFINITY;
  for (const l of b.lines) top = Math.min(top, indentOf(l.text));
  let level = 0; // 1: -v (Flags:), 2: -vv and more (Control:)
  let cap: "express" | "acs" | "sriov" | "other" | null = null;
  let capsSeen = false;
  let extSeen = false;
  let expressSeen = false;
  let statusCap: boolean | undefined;
  let busLine = false;
  let modules = false;
  let driver: string | undefined;
  let acsPresent = false;
  let acsOffset: number | undefined;
  let acsCap: number | undefined;
  let acsCtl: number | undefined;
  let acsAt: At = at;
  let sriovPresent = false;
  const bars: BarDescription[] = [];
  for (const l of b.lines) {
    const t = l.text.trim();
    if (indentOf(l.text) <= top) {
      cap = null;
      if (t.startsWith("Capabilities:")) {
        if (/^Capabilities: <access denied>/.test(t)) {
          p.denied = true;
          continue;
        }
        const m = /^Capabilities: \[([0-9a-fA-F]{2,3})(?: v([0-9]+))?\] (.*)$/.exec(t);
        if (!m) fail(l.at, `unreadable capability line: "${cut(t)}"`);
        const off = hex(m![1]!);
        const desc = m![3]!;
        capsSeen = true;
        if (off >= 0x100) extSeen = true;
        if (desc.startsWith("Express ")) {
          expressSeen = true;
          cap = "express";
          const typeText = desc
            .replace(/^Express (?:\(v[0-9]+\) )?/, "")
            .split(",")[0]!
            .replace(/ \(Slot[+-]\)$/, "")
            .trim();
          const type = PCIE_TYPES.get(typeText);
          if (type !== undefined) put(f, "pcieType", type, l.at, who);
        } else if (desc.startsWith("Access Control Services")) {
          cap = "acs";
          acsPresent = true;
          acsOffset = off;
          acsAt = l.at;
        } else if (desc.startsWith("Single Root I/O Virtualization")) {
          cap = "sriov";
          sriovPresent = true;
        } else cap = "other";
        continue;
      }
      if (t.startsWith("Control:")) level = Math.max(level, 2);
      else if (t.startsWith("Flags:")) level = Math.max(level, 1);
      else if (t.startsWith("Status:")) {
        const m = /^Status: Cap([+-])/.exec(t);
        if (m) statusCap = m[1] === "+";
      } else if (t.startsWith("Bus:")) {
        const m =
          /^Bus: primary=([0-9a-fA-F]{2}), secondary=([0-9a-fA-F]{2}), subordinate=([0-9a-fA-F]{2})\b/.exec(
            t,
          );
        if (!m) fail(l.at, `unreadable Bus line (truncated?): "${cut(t)}"`);
        busLine = true;
        put(f, "secondaryBus", hex(m![2]!), l.at, who);
        put(f, "subordinateBus", hex(m![3]!), l.at, who);
      } else if (t.startsWith("Region ")) {
        const r = parseRegion(t, l.at);
        if (r && !r.sized) p.barsUnsized = true;
        if (r?.bar) bars.push(r.bar);
      } else if (t.startsWith("Subsystem:") || t.startsWith("DeviceName:")) {
        // pciutils prints DeviceName without a newline, so Subsystem may share its line
        const parts = t.split(/\t+/);
        for (const part of parts) {
          if (part.startsWith("DeviceName:")) {
            const label = part.slice("DeviceName:".length).trim();
            if (label) put(f, "label", label, l.at, who);
          } else if (part.startsWith("Subsystem:")) {
            const vd = parseVendorDevice(part.slice("Subsystem:".length));
            if (vd.vendor !== undefined) put(f, "subsystemVendor", vd.vendor, l.at, who);
            if (vd.vendor !== undefined && vd.device !== undefined)
              put(f, "subsystemDevice", vd.device, l.at, who);
          }
        }
      } else if (t.startsWith("NUMA node:")) {
        const m = /^NUMA node: (-?[0-9]{1,6})$/.exec(t);
        if (!m) fail(l.at, `unreadable NUMA node line: "${cut(t)}"`);
        const n = Number.parseInt(m![1]!, 10);
        put(f, "numaNode", n < 0 ? null : n, l.at, who);
      } else if (t.startsWith("IOMMU group:")) {
        const m = /^IOMMU group: ([0-9]{1,9})$/.exec(t);
        if (!m) fail(l.at, `unreadable IOMMU group line: "${cut(t)}"`);
        put(f, "iommuGroup", Number.parseInt(m![1]!, 10), l.at, who);
      } else if (t.startsWith("Kernel driver in use:")) {
        driver = t.slice("Kernel driver in use:".length).trim();
        if (driver === "") fail(l.at, "empty Kernel driver in use line");
        put(f, "driver", driver, l.at, who);
      } else if (t.startsWith("Kernel modules:")) modules = true;
      continue;
    }
    // detail lines of the capability above
    if (cap === "express") {
      if (t.startsWith("LnkCap:")) {
        const lk = linkPair(t, l.at, "LnkCap");
        put(f, "maxSpeed", lk.speed, l.at, who);
        put(f, "maxWidth", lk.width, l.at, who);
      } else if (t.startsWith("LnkSta:")) {
        const lk = linkPair(t, l.at, "LnkSta");
        put(f, "speed", lk.speed, l.at, who);
        put(f, "width", lk.width, l.at, who);
      }
    } else if (cap === "acs") {
      if (t.startsWith("ACSCap:")) acsCap = acsWord(t, l.at, "ACSCap");
      else if (t.startsWith("ACSCtl:")) acsCtl = acsWord(t, l.at, "ACSCtl");
    } else if (cap === "sriov") {
      const m = /Total VFs: ([0-9]{1,5}), Number of VFs: ([0-9]{1,5})/.exec(t);
      if (m)
        put(
          f,
          "sriov",
          { totalVfs: Number.parseInt(m[1]!, 10), numVfs: Number.parseInt(m[2]!, 10) },
          l.at,
          who,
        );
    }
  }

  if (b.lines.length > 0) {
    // lspci prints the Bus line for header types 1 and 2 only, at every verbosity
    if (busLine) put(f, "headerType", h.class16 === 0x0607 ? 2 : 1, at, who);
    else if (level > 0) put(f, "headerType", 0, at, who);
    // prog-if is printed when verbose and nonzero (or named)
    if (level > 0 && h.progIf === undefined) put(f, "progIf", 0, at, who);
    if (!expressSeen && !p.denied && (statusCap === false || capsSeen))
      put(f, "pcieType", null, at, who);
    if (acsPresent) {
      put(f, "hasAcs", true, acsAt, who);
      if (acsCap !== undefined)
        put(
          f,
          "acs",
          {
            cap: acsCap,
            mask: 0x7f,
            ...(acsCtl !== undefined ? { ctrl: acsCtl } : {}),
            ...(acsOffset !== undefined ? { offset: acsOffset } : {}),
          },
          acsAt,
          who,
        );
    } else if (extSeen && !p.denied) put(f, "hasAcs", false, at, who);
    if (sriovPresent) put(f, "hasSriov", true, at, who);
    else if (extSeen && !p.denied) put(f, "hasSriov", false, at, who);
    // -vv prints a Region line per BAR in use (-v prints them without the index)
    if (level >= 2 && !p.barsUnsized) put(f, "bars", bars, at, who);
    // lspci -k output (Kernel modules) without a driver line: no driver bound
    if (modules && driver === undefined) put(f, "driver", null, at, who);
  }
  if (h.progIf !== undefined) put(f, "progIf", h.progIf, at, who);

  if (b.hex.length > 0) readConfig(b, p, who);
  return p;
}

/** Facts from a `-x`/`-xxx`/`-xxxx` hex dump (64, 256 or 4096 bytes), read by parseConfigSpace. */
function readConfig(b: Block, p: Pending, who: string): void {
  const bytes = Uint8Array.from(b.hex);
  p.config = bytes;
  if (bytes.length < 64) return;
  const c = parseConfigSpace(bytes);
  const f = p.facts;
  const at = b.at;
  put(f, "vendor", c.vendor, at, who);
  put(f, "device", c.device, at, who);
  put(f, "revision", c.revision, at, who);
  put(f, "class16", c.classCode >> 8, at, who);
  put(f, "progIf", c.classCode & 0xff, at, who);
  put(f, "headerType", c.headerType, at, who);
  put(f, "multifunction", c.multifunction, at, who);
  if (c.subsystemVendor !== undefined) put(f, "subsystemVendor", c.subsystemVendor, at, who);
  if (c.subsystemDevice !== undefined) put(f, "subsystemDevice", c.subsystemDevice, at, who);
  if (c.secondaryBus !== undefined) put(f, "secondaryBus", c.secondaryBus, at, who);
  if (c.subordinateBus !== undefined) put(f, "subordinateBus", c.subordinateBus, at, who);
  if (c.pcie) {
    if (c.pcie.type !== null) put(f, "pcieType", c.pcie.type, at, who);
    // integrated endpoints and event collectors have no link (lspci shows no LnkCap for them)
    const linked = c.pcie.type !== "rc-endpoint" && c.pcie.type !== "rc-event-collector";
    if (linked && c.pcie.linkCap) {
      put(f, "maxSpeed", c.pcie.linkCap.speed, at, who);
      put(f, "maxWidth", c.pcie.linkCap.width, at, who);
    }
    if (linked && c.pcie.linkStatus) {
      put(f, "speed", c.pcie.linkStatus.speed, at, who);
      put(f, "width", c.pcie.linkStatus.width, at, who);
    }
  } else if (bytes.length >= 256) put(f, "pcieType", null, at, who);
  if (c.acs) {
    put(f, "hasAcs", true, at, who);
    put(
      f,
      "acs",
      { cap: c.acs.cap, ctrl: c.acs.ctrl, offset: c.acs.offset, mask: 0xffff },
      at,
      who,
    );
  } else if (c.acs === null) put(f, "hasAcs", false, at, who);
  if (c.sriov) {
    put(f, "hasSriov", true, at, who);
    put(f, "sriov", { totalVfs: c.sriov.totalVfs, numVfs: c.sriov.numVfs }, at, who);
  } else if (c.sriov === null) put(f, "hasSriov", false, at, who);
}

// ------------------------------------------------------------------------------------------
// -t tree

interface Level {
  /** Column where this level's entries (dd.f, or [dddd:bb] for the roots) start. */
  readonly col: number;
  readonly forest: boolean;
  readonly domain: number;
  readonly bus: number;
  readonly bridge: string | null;
  open: boolean;
}

interface Tree {
  readonly levels: Level[];
  readonly seen: Set<string>;
  readonly roots: Set<string>;
  last: At;
}

const CONNECTOR_RE = /[-+\\`]*/y;
const ROOT_RE = /\[(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2})\]/y;
const DEV_RE = /([0-9a-fA-F]{2})\.([0-7])/y;
const BRIDGE_RE = /-\[([0-9a-fA-F]{2})(?:-([0-9a-fA-F]{2}))?\]/y;

function sticky(re: RegExp, s: string, pos: number): RegExpExecArray | null {
  re.lastIndex = pos;
  return re.exec(s);
}

/**
 * One line of an `lspci -t` drawing. pciutils' ls-tree prints a bus's devices one per line at a
 * fixed column; the first child continues its parent's line after `--`/`+-`, later siblings
 * start a line with `+-` (more follow) or `\-` (last), and columns to the left carry `|` for
 * every branch still open. Anything else is an inconsistent drawing.
 */
function treeLine(line: string, at: At, tree: Tree, st: State, first: boolean): void {
  tree.last = at;
  let level: Level;
  let pos: number;
  if (first) {
    pos = line.indexOf("[");
    const prefix = line.slice(0, pos);
    level = { col: pos, forest: true, domain: 0, bus: 0, bridge: null, open: prefix === "-+-" };
    tree.levels.push(level);
  } else {
    pos = 0;
    while (pos < line.length && " |+-\\`".includes(line[pos]!)) pos++;
    if (pos === line.length) fail(at, "tree line without a device or bus");
    if (pos < 2) fail(at, `inconsistent tree indentation: an entry at column ${pos + 1}`);
    const levels = tree.levels;
    while (levels.length > 0 && levels[levels.length - 1]!.col > pos) {
      const gone = levels.pop()!;
      if (gone.open)
        fail(
          at,
          `inconsistent tree: the branch at column ${gone.col + 1} ends without a last entry (\\-)`,
        );
    }
    const top = levels[levels.length - 1];
    if (!top || top.col !== pos)
      fail(at, `inconsistent tree indentation: no branch above continues at column ${pos + 1}`);
    level = top!;
    if (!level.open)
      fail(at, `inconsistent tree: an entry at column ${pos + 1} after its branch's last (\\-)`);
    const want: string[] = new Array<string>(Math.max(0, pos - 2)).fill(" ");
    for (const l of levels)
      if (l !== level && l.col >= 2 && l.col < pos) want[l.col - 2] = l.open ? "|" : " ";
    const have = line.slice(0, Math.max(0, pos - 2));
    const w = want.join("");
    if (have !== w) {
      let i = 0;
      while (have[i] === w[i]) i++;
      fail(
        at,
        `inconsistent tree indentation at column ${i + 1}: "${have[i]}" where "${w[i]}" was expected`,
      );
    }
    const conn = line.slice(pos - 2, pos);
    if (conn === "\\-" || conn === "`-") level.open = false;
    else if (conn !== "+-")
      fail(at, `inconsistent tree: "${conn}" before column ${pos + 1}, expected +- or \\-`);
  }
  treeChain(line, pos, level, at, tree, st);
}

/** Reads entries left to right from `pos`: a device (or root), its bus, its first child, ... */
function treeChain(line: string, start: number, from: Level, at: At, tree: Tree, st: State): void {
  let pos = start;
  let level = from;
  for (;;) {
    let domain: number;
    let bus: number;
    let bridge: string | null;
    let lead: string;
    if (level.forest) {
      const m = sticky(ROOT_RE, line, pos);
      if (!m) fail(at, `tree: expected a root bus [dddd:bb] at column ${pos + 1}`);
      domain = m![1] !== undefined ? hex(m![1]) : 0;
      bus = hex(m![2]!);
      const id = formatBusId(domain, bus);
      if (tree.roots.has(id)) fail(at, `tree: root bus ${id} is drawn twice`);
      tree.roots.add(id);
      bridge = null;
      pos += m![0].length;
      lead = "-";
    } else {
      const m = sticky(DEV_RE, line, pos);
      if (!m) fail(at, `tree: expected a device dd.f at column ${pos + 1}`);
      const dev = hex(m![1]!);
      if (dev > 31) fail(at, `tree: device number ${m![1]} is above 1f`);
      const bdf = formatBdf({ domain: level.domain, bus: level.bus, dev, fn: Number(m![2]) });
      if (tree.seen.has(bdf)) fail(at, `tree: ${bdf} is drawn twice`);
      tree.seen.add(bdf);
      const fn = st.fn(bdf, level.domain, level.bus, at);
      put(fn.facts, "treeParent", level.bridge, at, bdf);
      pos += m![0].length;
      if (pos === line.length) return;
      if (line.startsWith("  ", pos)) {
        const vd = parseVendorDevice(line.slice(pos + 2));
        if (vd.vendor !== undefined) put(fn.facts, "vendor", vd.vendor, at, bdf);
        if (vd.device !== undefined) put(fn.facts, "device", vd.device, at, bdf);
        if (vd.names !== undefined) fn.names ??= vd.names;
        return;
      }
      if (line.slice(pos) === "-") {
        put(fn.facts, "bridge", true, at, bdf); // a bridge whose secondary bus is 0
        return;
      }
      const bm = sticky(BRIDGE_RE, line, pos);
      if (!bm) fail(at, `tree: unexpected "${cut(line.slice(pos))}" after ${bdf}`);
      const sec = hex(bm![1]!);
      put(fn.facts, "bridge", true, at, bdf);
      put(fn.facts, "secondaryBus", sec, at, bdf);
      put(fn.facts, "subordinateBus", bm![2] !== undefined ? hex(bm![2]) : sec, at, bdf);
      domain = level.domain;
      bus = sec;
      bridge = bdf;
      pos += bm![0].length;
      lead = "--";
    }
    const run = sticky(CONNECTOR_RE, line, pos)![0];
    pos += run.length;
    if (pos === line.length) {
      if (run !== lead) fail(at, `tree: "${run}" at the end of a line, expected "${lead}"`);
      return; // a bus with nothing on it
    }
    if (run !== `${lead}+-` && run !== `${lead}--`)
      fail(at, `tree: "${run}" before column ${pos + 1}, expected "${lead}+-" or "${lead}--"`);
    const child: Level = { col: pos, forest: false, domain, bus, bridge, open: run.endsWith("+-") };
    tree.levels.push(child);
    level = child;
  }
}

function endTree(tree: Tree): void {
  for (const l of tree.levels)
    if (l.open)
      fail(
        tree.last,
        `tree ends while the branch at column ${l.col + 1} expects more entries (truncated?)`,
      );
}

// ------------------------------------------------------------------------------------------
// inputs

interface PathRecord {
  readonly block: Block;
  readonly pending: Pending;
}

class State {
  readonly fns = new Map<string, Fn>();
  readonly shortPaths: PathRecord[] = [];

  fn(bdf: string, domain: number, bus: number, at: At): Fn {
    let f = this.fns.get(bdf);
    if (!f) {
      f = { bdf, domain, bus, first: at, facts: {} };
      this.fns.set(bdf, f);
    }
    return f;
  }
}

function readInput(file: string, text: string, st: State): void {
  const nul = text.indexOf("\0");
  if (nul >= 0) {
    const line = text.slice(0, nul).split("\n").length;
    fail({ file, line }, "binary data (NUL byte), not lspci text");
  }
  const lines = text.replace(/^\uFEFF/, "").split("\n");
  let tree: Tree | null = null;
  let block: Block | null = null;
  const flush = () => {
    if (block) readHeaderBlock(block, st);
    block = null;
  };
  const closeTree = () => {
    if (tree) endTree(tree);
    tree = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const at = { file, line: i + 1 };
    let line = lines[i]!.trimEnd();
    const warn = WARNING_ANYWHERE_RE.exec(line);
    if (warn) {
      if (warn.index === 0) continue; // lspci's own warning, captured with 2>&1
      // a warning spliced into a half-written stdout line: the line goes on after it
      line = (line.slice(0, warn.index) + (lines[i + 1] ?? "")).trimEnd();
      i++;
    }
    if (line === "") {
      closeTree();
      flush();
      continue;
    }
    if (TREE_START_RE.test(line)) {
      closeTree();
      flush();
      tree = { levels: [], seen: new Set(), roots: new Set(), last: at };
      treeLine(line, at, tree, st, true);
      continue;
    }
    if (tree) {
      if (/^[ |+\\`-]/.test(line)) {
        treeLine(line, at, tree, st, false);
        continue;
      }
      closeTree();
    }
    const c0 = line[0]!;
    if (c0 === " " || c0 === "\t") {
      if (!block) fail(at, `indented line before any device header: "${cut(line.trim())}"`);
      if (block!.hex.length > 0) fail(at, "verbose line after the hex dump of the same device");
      block!.lines.push({ text: line, at });
      continue;
    }
    if (HEX_ROW_START_RE.test(line)) {
      const m = HEX_ROW_RE.exec(line);
      if (!m) {
        const n = line
          .slice(line.indexOf(":") + 1)
          .trim()
          .split(/\s+/).length;
        fail(at, `hex dump row with ${n} byte(s), 16 expected (truncated?)`);
      }
      if (!block) fail(at, "hex dump row before any device header");
      const b = block!;
      const off = hex(m![1]!);
      if (off !== b.hex.length)
        fail(
          at,
          `hex dump row at offset ${m![1]} where ${b.hex.length.toString(16).padStart(2, "0")} was expected`,
        );
      if (off >= 4096) fail(at, "hex dump longer than the 4096 bytes of config space");
      for (const byte of m![2]!.trim().split(" ")) b.hex.push(hex(byte));
      continue;
    }
    const hm = HEADER_RE.exec(line);
    if (hm) {
      flush();
      const rest = line.slice(hm[0].length).trim();
      if (rest === "") fail(at, "device address without class and name (truncated?)");
      const dev = hex(hm[3]!);
      if (dev > 31) fail(at, `device number ${hm[3]} is above 1f`);
      const hops: { bus?: number; dev: number; fn: number }[] = [
        { bus: hex(hm[2]!), dev, fn: Number(hm[4]) },
      ];
      for (const hop of hm[5] ? hm[5].slice(1).split("/") : []) {
        const hp = /^(?:([0-9a-fA-F]{2}):)?([0-9a-fA-F]{2})\.([0-7])$/.exec(hop)!;
        const d = hex(hp[2]!);
        if (d > 31) fail(at, `device number ${hp[2]} in the path is above 1f`);
        hops.push({
          ...(hp[1] !== undefined ? { bus: hex(hp[1]) } : {}),
          dev: d,
          fn: Number(hp[3]),
        });
      }
      block = {
        at,
        head: parseHead(rest, at),
        domain: hm[1] !== undefined ? hex(hm[1]) : 0,
        hops,
        lines: [],
        hex: [],
      };
      continue;
    }
    fail(
      at,
      `not lspci output: expected a device header, a tree line or a hex dump row, got "${cut(line)}"`,
    );
  }
  closeTree();
  flush();
}

function hopBdf(domain: number, hop: { bus?: number; dev: number; fn: number }): string {
  return formatBdf({ domain, bus: hop.bus!, dev: hop.dev, fn: hop.fn });
}

function readHeaderBlock(b: Block, st: State): void {
  const last = b.hops[b.hops.length - 1]!;
  if (last.bus === undefined || b.hops.some((h) => h.bus === undefined)) {
    // -P: the buses below the first hop come from bridges' secondary bus numbers, later
    st.shortPaths.push({ block: b, pending: readBlock(b, `${hopBdf(b.domain, b.hops[0]!)}/...`) });
    return;
  }
  const bdf = hopBdf(b.domain, last);
  const pending = readBlock(b, bdf);
  if (b.hops.length > 1)
    put(pending.facts, "pathParent", hopBdf(b.domain, b.hops[b.hops.length - 2]!), b.at, bdf);
  putAll(st.fn(bdf, b.domain, last.bus, b.at), pending);
}

/** Resolves `lspci -P` paths (dev.fn per hop) through the secondary buses of their bridges. */
function resolveShortPaths(st: State): void {
  let todo = st.shortPaths;
  while (todo.length > 0) {
    const next: PathRecord[] = [];
    for (const r of todo) {
      const b = r.block;
      let bus = b.hops[0]!.bus!;
      let prev = "";
      let ok = true;
      const hops = b.hops.map((h, i) => {
        if (i > 0) {
          const sec = st.fns.get(prev)?.facts.secondaryBus?.v;
          if (h.bus === undefined && sec === undefined) ok = false;
          bus = h.bus ?? sec ?? 0;
        }
        prev = formatBdf({ domain: b.domain, bus, dev: h.dev, fn: h.fn });
        return { bus, dev: h.dev, fn: h.fn };
      });
      if (!ok) {
        next.push(r);
        continue;
      }
      const last = hops[hops.length - 1]!;
      const bdf = hopBdf(b.domain, last);
      put(r.pending.facts, "pathParent", hopBdf(b.domain, hops[hops.length - 2]!), b.at, bdf);
      putAll(st.fn(bdf, b.domain, last.bus, b.at), r.pending);
    }
    if (next.length === todo.length) {
      const b = next[0]!.block;
      fail(
        b.at,
        "lspci -P path: the bus below a hop is unknown (no secondary bus for its bridge in the input); give -PP output instead",
      );
    }
    todo = next;
  }
}

// ------------------------------------------------------------------------------------------
// assembly

/**
 * Parses one or more lspci outputs of one machine into a MachineDescription. Parent/child comes
 * from a `-t` tree, else a `-PP` path, else bridge secondary bus numbers (the bridge whose
 * secondary bus is the function's bus), as lspci itself nests devices without sysfs.
 */
export function parseLspci(
  inputs: readonly { readonly file: string; readonly text: string }[],
  options: LspciOptions = {},
): MachineDescription {
  if (inputs.length === 0) throw new InputError({ file: "(none)" }, "no lspci input given");
  const st = new State();
  for (const { file, text } of inputs) readInput(file, text, st);
  resolveShortPaths(st);
  if (st.fns.size === 0)
    throw new InputError({ file: inputs[0]!.file }, "no PCI functions found in the lspci input");
  const ids = options.ids ?? null;
  const fns = [...st.fns.values()].sort(
    (a, b) => a.domain - b.domain || a.bus - b.bus || (a.bdf < b.bdf ? -1 : a.bdf > b.bdf ? 1 : 0),
  );

  // parents
  const bySecondary = new Map<string, Fn>();
  const sharedSecondary: string[] = [];
  for (const f of fns) {
    const sec = f.facts.secondaryBus?.v;
    if (sec === undefined || sec <= f.bus) continue;
    const key = formatBusId(f.domain, sec);
    const had = bySecondary.get(key);
    if (had) sharedSecondary.push(`${key} (${had.bdf}, ${f.bdf})`);
    else bySecondary.set(key, f);
  }
  const parents = new Map<string, string | null>();
  let byBus = 0;
  const inferredRoots = new Set<string>();
  for (const f of fns) {
    const tree = f.facts.treeParent;
    const path = f.facts.pathParent;
    if (tree && path && tree.v !== path.v)
      fail(
        path.at,
        `${f.bdf}: the -P path puts it below ${path.v ?? "the root bus"} but the tree at ${tree.at.file} line ${tree.at.line} below ${tree.v ?? "the root bus"}`,
      );
    let parent: string | null;
    if (tree) parent = tree.v;
    else if (path) parent = path.v;
    else {
      byBus++;
      const br = bySecondary.get(formatBusId(f.domain, f.bus));
      parent = br && br !== f ? br.bdf : null;
      if (parent === null) inferredRoots.add(formatBusId(f.domain, f.bus));
    }
    parents.set(f.bdf, parent);
  }

  // a -P path hop above a function is a bridge, whatever its class text says
  for (const f of fns) {
    const path = f.facts.pathParent;
    const p = path?.v ? st.fns.get(path.v) : undefined;
    if (p && path) put(p.facts, "bridge", true, path.at, p.bdf);
  }

  const unknowns: string[] = [];
  const noClass: string[] = [];
  const noIds: string[] = [];
  const byName: string[] = [];
  const unsized: string[] = [];
  const noBars: string[] = [];
  const acsUnknown: string[] = [];
  let denied = 0;
  const functions: FunctionDescription[] = [];
  for (const f of fns) {
    const v = <K extends Key>(k: K): FactValues[K] | undefined => f.facts[k]?.v;
    let class16 = v("class16");
    if (class16 === undefined && f.className !== undefined)
      class16 = LSPCI_CLASS_NAMES.get(f.className) ?? ids?.subclassByName(f.className);
    if (class16 === undefined) noClass.push(f.bdf);
    let vendor = v("vendor");
    let device = v("device");
    let vendorName: string | undefined;
    let deviceName: string | undefined;
    if (f.names !== undefined) {
      const n = splitNames(f.names, vendor, ids);
      vendorName = n.vendorName;
      deviceName = n.deviceName;
      if (vendor === undefined && n.vendor !== undefined) {
        vendor = n.vendor;
        byName.push(f.bdf);
      }
      if (device === undefined && vendor !== undefined && deviceName !== undefined && ids) {
        device = ids.deviceByName(vendor, deviceName);
        if (device !== undefined && !byName.includes(f.bdf)) byName.push(f.bdf);
      }
    }
    if (vendor === undefined || device === undefined) noIds.push(f.bdf);
    let headerType = v("headerType");
    const bridgeFact = f.facts.bridge;
    if (bridgeFact && headerType === 0)
      fail(
        bridgeFact.at,
        `${f.bdf}: the input puts a bus below it, but its header type is 0 (${f.facts.headerType!.at.file} line ${f.facts.headerType!.at.line})`,
      );
    if (headerType === undefined && bridgeFact) headerType = class16 === 0x0607 ? 2 : 1;
    const isBridge = headerType !== undefined ? headerType !== 0 : bridgeFact !== undefined;
    const pcieType = v("pcieType");
    const link: { -readonly [K in keyof LinkDescription]: LinkDescription[K] } = {};
    const maxSpeed = v("maxSpeed");
    const maxWidth = v("maxWidth");
    const speed = v("speed");
    const width = v("width");
    if (maxSpeed !== undefined) link.maxSpeed = maxSpeed;
    if (maxWidth !== undefined) link.maxWidth = maxWidth;
    if (speed !== undefined) link.speed = speed;
    if (width !== undefined) link.width = width;
    const acsW = v("acs");
    const hasAcs = v("hasAcs");
    let acs: FunctionDescription["acs"];
    if (acsW)
      acs = {
        cap: acsW.cap,
        ...(acsW.ctrl !== undefined ? { ctrl: acsW.ctrl } : {}),
        ...(acsW.offset !== undefined ? { offset: acsW.offset } : {}),
      };
    // conventional PCI has no extended config space, so no ACS and no SR-IOV
    else if (hasAcs === false || (pcieType === null && hasAcs === undefined)) acs = null;
    if (acs === undefined && pcieType !== null) {
      acsUnknown.push(f.bdf);
      if (f.denied) denied++;
    }
    const sriovV = v("sriov");
    const hasSriov = v("hasSriov");
    const sriov =
      sriovV ??
      (hasSriov === false || (pcieType === null && hasSriov === undefined) ? null : undefined);
    const bars = f.barsUnsized ? undefined : v("bars");
    if (f.barsUnsized) unsized.push(f.bdf);
    else if (bars === undefined) noBars.push(f.bdf);
    const sec = v("secondaryBus");
    const sub = v("subordinateBus");
    const numaNode = v("numaNode");
    const iommuGroup = v("iommuGroup");
    const driver = v("driver");
    const revision = v("revision");
    const sv = v("subsystemVendor");
    const sd = v("subsystemDevice");
    const progIf = v("progIf");
    const multifunction = v("multifunction");
    const label = v("label");
    functions.push({
      bdf: f.bdf,
      parent: parents.get(f.bdf) ?? null,
      ...(vendor !== undefined ? { vendor } : {}),
      ...(device !== undefined ? { device } : {}),
      ...(sv !== undefined ? { subsystemVendor: sv } : {}),
      ...(sd !== undefined ? { subsystemDevice: sd } : {}),
      ...(revision !== undefined ? { revision } : {}),
      classCode: class16 !== undefined ? ((class16 << 8) | (progIf ?? 0)) >>> 0 : 0,
      ...(headerType !== undefined ? { headerType } : {}),
      ...(multifunction !== undefined ? { multifunction } : {}),
      ...(pcieType !== undefined ? { pcieType } : {}),
      ...(Object.keys(link).length > 0 ? { link } : {}),
      ...(isBridge && sec !== undefined ? { secondaryBus: sec } : {}),
      ...(isBridge && sub !== undefined ? { subordinateBus: sub } : {}),
      ...(bars !== undefined ? { bars } : {}),
      ...(numaNode !== undefined ? { numaNode } : {}),
      ...(iommuGroup !== undefined ? { iommuGroup } : {}),
      ...(driver !== undefined ? { driver } : {}),
      ...(acs !== undefined ? { acs } : {}),
      ...(sriov !== undefined ? { sriov } : {}),
      ...(label !== undefined ? { label } : {}),
      ...(f.config ? { config: f.config } : {}),
      ...(vendorName !== undefined ? { vendorName } : {}),
      ...(deviceName !== undefined ? { deviceName } : {}),
    });
  }

  // every parent must be a listed bridge, and the chains must end
  const byBdf = new Map(functions.map((d) => [d.bdf, d]));
  for (const d of functions) {
    if (d.parent === null) continue;
    const f = st.fns.get(d.bdf)!;
    const where = f.facts.treeParent?.at ?? f.facts.pathParent?.at ?? f.first;
    const p = byBdf.get(d.parent);
    if (!p) fail(where, `${d.bdf}: its path names bridge ${d.parent}, which no input lists`);
    if (!isBridgeDescription(p!))
      fail(where, `${d.bdf}: its parent ${d.parent} is not a bridge (header type 0)`);
    const seen = new Set<string>([d.bdf]);
    for (let q = p; q && q.parent !== null; q = byBdf.get(q.parent)) {
      if (seen.has(q.bdf))
        fail(where, `${d.bdf}: the bridges above it loop (${[...seen].join(" → ")})`);
      seen.add(q.bdf);
    }
  }

  const hostBridges: HostBridgeDescription[] = [];
  const hbSeen = new Set<string>();
  for (const d of functions) {
    if (d.parent !== null) continue;
    const f = st.fns.get(d.bdf)!;
    const id = formatBusId(f.domain, f.bus);
    if (hbSeen.has(id)) continue;
    hbSeen.add(id);
    hostBridges.push({ domain: f.domain, bus: f.bus });
  }

  const list = (xs: readonly string[]): string =>
    xs.length > 6 ? `${xs.slice(0, 6).join(", ")} and ${xs.length - 6} more` : xs.join(", ");
  if (noClass.length > 0)
    unknowns.push(
      `class codes of ${noClass.length} function(s), shown as 0 (lspci -t prints none; give -vvvnn): ${list(noClass)}`,
    );
  if (noIds.length > 0)
    unknowns.push(
      `vendor/device IDs of ${noIds.length} function(s) (output without -nn): ${list(noIds)}`,
    );
  if (byName.length > 0)
    unknowns.push(
      `vendor/device IDs of ${byName.length} function(s) were looked up from their names in pci.ids: ${list(byName)}`,
    );
  if (acsUnknown.length > 0)
    unknowns.push(
      `ACS of ${acsUnknown.length} function(s)${denied > 0 ? ` (${denied} show "Capabilities: <access denied>": lspci ran without root)` : " (no ACS lines or extended capabilities in the input)"}: ${list(acsUnknown)}`,
    );
  if (unsized.length > 0)
    unknowns.push(
      `BARs of ${unsized.length} function(s): Region lines without [size=] (a dump read back with lspci -F): ${list(unsized)}`,
    );
  if (noBars.length > 0)
    unknowns.push(`BARs of ${noBars.length} function(s) (no -vv Region lines): ${list(noBars)}`);
  if (byBus > 0)
    unknowns.push(
      `parent/child of ${byBus} function(s) derived from bridge bus numbers (no -t tree or -PP path covers them)`,
    );
  if (byBus > 0 && inferredRoots.size > 0)
    unknowns.push(
      `buses taken as root buses because no bridge in the input has them as secondary bus: ${list([...inferredRoots])}`,
    );
  if (sharedSecondary.length > 0)
    unknowns.push(
      `buses claimed as secondary by two bridges (the first in BDF order is used): ${list(sharedSecondary)}`,
    );
  unknowns.push("CPU vendor and family (lspci does not show them)");
  unknowns.push("kernel command line and IOMMU mode (lspci does not show them)");

  return {
    schemaVersion: MACHINE_SCHEMA_VERSION,
    source: { format: "lspci", path: inputs.map((i) => i.file).join(", ") },
    hostBridges,
    functions,
    unknowns,
  };
}

/** Splits lspci's `vendor device` text at the vendor name, when it can be told. */
function splitNames(
  names: string,
  vendor: number | undefined,
  ids: PciIds | null,
): { vendor?: number; vendorName?: string; deviceName?: string } {
  const unknownDev = /^(.*?)(?: |: Unknown )(Device [0-9a-fA-F]{4}|device [0-9a-fA-F]{4})$/.exec(
    names,
  );
  if (ids) {
    if (vendor !== undefined) {
      const vn = ids.vendorName(vendor);
      if (vn !== undefined && names.startsWith(`${vn} `))
        return { vendorName: vn, deviceName: names.slice(vn.length + 1) };
    } else {
      // longest prefix that is a vendor name (pci.ids vendor names are far below 200 chars)
      let i = names.length;
      if (i > 200) i = names.lastIndexOf(" ", 200);
      for (; i > 0; i = names.lastIndexOf(" ", i - 1)) {
        const id = ids.vendorByName(names.slice(0, i));
        if (id !== undefined)
          return {
            vendor: id,
            vendorName: names.slice(0, i),
            ...(i < names.length ? { deviceName: names.slice(i + 1) } : {}),
          };
      }
    }
  }
  if (unknownDev) return { vendorName: unknownDev[1]!, deviceName: unknownDev[2]! };
  return { deviceName: names };
}
