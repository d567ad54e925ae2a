/**
 * @module sysfs
 * Loads a machine from a sysfs tree: live /sys, an hwloc-gather-topology capture, our own
 * `peerbuf gather` tarball or a kernel-oracle capture. Parent/child comes from each device's
 * canonical path (as pciutils and NCCL derive it); when the capture has no device paths
 * (flattened `bus/pci/devices` directories) it falls back to bridge bus ranges (as hwloc does).
 */

import { InputError } from "../errors.ts";
import { formatBdf, formatBusId, parseBdf } from "../hw/bdf.ts";
import { parseConfigSpace } from "../hw/config-space.ts";
import type {
  BarDescription,
  FunctionDescription,
  HostBridgeDescription,
  IommuMode,
  LinkDescription,
  MachineDescription,
} from "../hw/machine.ts";
import { MACHINE_SCHEMA_VERSION } from "../hw/machine.ts";
import { hostBridgeWindows, parseCpuinfo, parseIomem } from "./proc.ts";
import { basename, joinPath, readText, realpath, type SnapshotSource } from "./snapshot.ts";

const HB_RE = /^pci([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2})$/;

/** Finds the directory that holds `sys/` (a capture may wrap it in a top-level folder). */
export function findSysfsRoot(src: SnapshotSource): string | null {
  if (src.kind("sys/devices") === "dir" || src.kind("sys/bus/pci") === "dir") return "";
  if (src.kind("devices") === "dir" && src.kind("bus") === "dir") return "..";
  for (const name of src.list("") ?? []) {
    if (src.kind(`${name}/sys/devices`) === "dir" || src.kind(`${name}/sys/bus/pci`) === "dir")
      return name;
  }
  return null;
}

/** Sysfs link speed strings: `8.0 GT/s PCIe` (≥5.7), `8 GT/s` (≤5.6), `Unknown`, typos. */
export function parseSysfsSpeed(text: string): number | null | undefined {
  const t = text.trim();
  if (t === "") return undefined;
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*GT\/s/i.exec(t);
  if (m) return Number.parseFloat(m[1]!);
  if (/^unknown/i.test(t)) return null;
  return undefined;
}

function hexNum(text: string | null): number | undefined {
  if (text === null) return undefined;
  const t = text.trim();
  if (!/^(0x)?[0-9a-fA-F]+$/.test(t)) return undefined;
  return Number.parseInt(t.replace(/^0x/, ""), 16);
}

function decNum(text: string | null): number | undefined {
  if (text === null) return undefined;
  const t = text.trim();
  if (!/^-?[0-9]+$/.test(t)) return undefined;
  return Number.parseInt(t, 10);
}

/** `resource`: start end flags per line; IORESOURCE_IO 0x100, MEM 0x200, PREFETCH 0x2000, MEM_64 0x100000. */
export function parseResourceFile(text: string, file: string): BarDescription[] {
  const bars: BarDescription[] = [];
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  lines.forEach((line, i) => {
    if (i > 5) return; // standard BARs only; ROM and IOV BARs follow
    const parts = line.trim().split(/\s+/);
    if (parts.length < 3 || !parts.every((p) => /^0x[0-9a-fA-F]+$/.test(p)))
      throw new InputError(
        { file, place: `line ${i + 1}` },
        `expected "start end flags" in hex, got "${line.trim()}"`,
      );
    const start = BigInt(parts[0]!);
    const end = BigInt(parts[1]!);
    const flags = BigInt(parts[2]!);
    if (start === 0n && end === 0n) return;
    bars.push({
      index: i,
      start,
      size: end - start + 1n,
      mem: (flags & 0x200n) !== 0n,
      prefetchable: (flags & 0x2000n) !== 0n,
      is64: (flags & 0x100000n) !== 0n,
    });
  });
  return bars;
}

interface Found {
  bdf: string;
  /** canonical directory, relative to the snapshot root */
  dir: string;
  /** bridge BDF above, from the path; undefined when the path says nothing */
  pathParent?: string | null;
  hostBridge?: string;
}

/**
 * Reads every PCI function under the root. `label` names the input in errors.
 */
export function loadSysfs(src: SnapshotSource, opts: { format?: string } = {}): MachineDescription {
  const root = findSysfsRoot(src);
  if (root === null)
    throw new InputError(
      { file: src.label },
      "not a sysfs capture: no sys/devices or sys/bus/pci directory found",
    );
  const at = (p: string) => joinPath(root, p);
  const found = new Map<string, Found>();
  let byPath = false;

  const busDevs = at("sys/bus/pci/devices");
  for (const name of src.list(busDevs) ?? []) {
    const b = parseBdf(name);
    if (!b) continue;
    const bdf = formatBdf(b);
    const entry = `${busDevs}/${name}`;
    const rp = realpath(src, entry);
    if (rp === null)
      throw new InputError(
        { file: src.label, place: entry },
        "broken link: the device directory it points to is missing",
      );
    found.set(bdf, { bdf, dir: rp, ...pathFacts(rp, src.label) });
    if (src.kind(entry) === "link") byPath = true;
  }
  // bridges on a device's path that bus/pci/devices does not list (seen in real captures)
  const added: string[] = [];
  for (const f of [...found.values()]) {
    const parts = f.dir.split("/");
    for (let i = parts.length - 2; i >= 0; i--) {
      const b = parseBdf(parts[i]!);
      if (!b || parts[i]!.length < 12) break;
      const bdf = formatBdf(b);
      if (found.has(bdf)) continue;
      const dir = parts.slice(0, i + 1).join("/");
      if (src.kind(`${dir}/class`) === null && src.kind(`${dir}/config`) === null) continue;
      found.set(bdf, { bdf, dir, ...pathFacts(dir, src.label) });
      added.push(bdf);
    }
  }
  if (found.size === 0) {
    // no bus/pci/devices: walk sys/devices/pci*/ recursively
    const walk = (dir: string, depth: number) => {
      if (depth > 64)
        throw new InputError({ file: src.label, place: dir }, "device tree deeper than 64 levels");
      for (const name of src.list(dir) ?? []) {
        const child = `${dir}/${name}`;
        if (src.kind(child) !== "dir") continue;
        const b = parseBdf(name);
        if (b && name.length >= 12) {
          const bdf = formatBdf(b);
          found.set(bdf, { bdf, dir: child, ...pathFacts(child, src.label) });
          walk(child, depth + 1);
        } else if (HB_RE.test(name)) walk(child, depth + 1);
      }
    };
    walk(at("sys/devices"), 0);
    byPath = found.size > 0;
  }

  const functions: FunctionDescription[] = [];
  const hbIds = new Map<string, HostBridgeDescription>();
  const iommuTypes = new Set<string>();
  for (const f of found.values()) {
    const fd = readFunction(src, f, root);
    functions.push(fd.desc);
    if (fd.iommuType) iommuTypes.add(fd.iommuType);
  }

  // parents: from paths when the capture has them, else by bus ranges
  const parents = byPath ? null : parentsByBusRange(functions);
  const withParents = functions.map((f) => {
    const info = found.get(f.bdf)!;
    let parent: string | null = null;
    if (parents) parent = parents.get(f.bdf) ?? null;
    else if (info.pathParent !== undefined) parent = info.pathParent;
    // a VF's path sits under its PF's parent already; nothing else to fix
    return { ...f, parent };
  });

  // host bridges: from path components, else from the root-bus functions
  for (const f of withParents) {
    const info = found.get(f.bdf)!;
    let id = info.hostBridge;
    if (!id && f.parent === null) {
      const b = parseBdf(f.bdf)!;
      id = formatBusId(b.domain, b.bus);
    }
    if (id && !hbIds.has(id)) {
      const [d, b] = id.split(":");
      hbIds.set(id, { domain: Number.parseInt(d!, 16), bus: Number.parseInt(b!, 16) });
    }
  }

  const noIds = withParents.filter((f) => f.vendor === undefined).map((f) => f.bdf);
  const cpuText = readText(src, at("proc/cpuinfo"));
  const cmdline = readText(src, at("proc/cmdline"))?.trim();
  const iomemText = readText(src, at("proc/iomem"));
  const unknowns: string[] = [];
  if (added.length > 0)
    unknowns.push(
      `functions missing from bus/pci/devices, read from their device directories: ${added.sort().join(", ")}`,
    );
  if (noIds.length > 0)
    unknowns.push(`vendor/device IDs of ${noIds.length} function(s) (not in the capture)`);
  if (cpuText === null) unknowns.push("CPU vendor and family (no proc/cpuinfo in the capture)");
  if (cmdline === undefined) unknowns.push("kernel command line (no proc/cmdline in the capture)");
  const windows = iomemText ? hostBridgeWindows(parseIomem(iomemText)) : new Map();
  const hostBridges = [...hbIds.entries()].map(([id, h]) => {
    const w = windows.get(id);
    const node = decNum(
      readText(src, at(`sys/devices/pci${id}/numa_node`)) ??
        readText(src, at(`sys/class/pci_bus/${id}/device/numa_node`)),
    );
    return {
      ...h,
      ...(node !== undefined ? { numaNode: node < 0 ? null : node } : {}),
      ...(w
        ? {
            windows: w.map((r: { start: bigint; end: bigint }) => ({
              cpuStart: r.start,
              size: r.end - r.start + 1n,
              busStart: r.start,
            })),
          }
        : {}),
    };
  });
  const short = withParents.filter(
    (f) => f.pcieType === undefined && f.config !== undefined,
  ).length;
  if (withParents.some((f) => f.acs === undefined))
    unknowns.push(
      short > 0
        ? `ACS control words of ${short} function(s): config space holds only 64 bytes (captured without root)`
        : "ACS control words of some functions: config space not in the capture",
    );
  const iommu = iommuMode(iommuTypes, src, root);
  const nodes = (src.list(at("sys/devices/system/node")) ?? []).filter((n) =>
    /^node\d+$/.test(n),
  ).length;
  const release = readText(src, at("proc/sys/kernel/osrelease"))?.trim();
  return {
    schemaVersion: MACHINE_SCHEMA_VERSION,
    source: { format: opts.format ?? "sysfs", path: src.label },
    ...(cpuText !== null ? { cpu: parseCpuinfo(cpuText) } : {}),
    ...(release ? { kernel: { release } } : {}),
    ...(cmdline !== undefined ? { cmdline } : {}),
    ...(iommu ? { iommu } : {}),
    ...(nodes > 0 ? { numaNodes: nodes } : {}),
    hostBridges,
    functions: withParents,
    ...(unknowns.length > 0 ? { unknowns } : {}),
  };
}

/** Bridge and host bridge facts from a canonical device path. */
function pathFacts(dir: string, file: string): { pathParent?: string | null; hostBridge?: string } {
  const parts = dir.split("/");
  let hb = -1;
  for (let i = parts.length - 2; i >= 0; i--) {
    if (HB_RE.test(parts[i]!)) {
      hb = i;
      break;
    }
  }
  if (hb < 0) return {};
  const m = HB_RE.exec(parts[hb]!)!;
  const hostBridge = `${m[1]!.toLowerCase().padStart(4, "0")}:${m[2]!.toLowerCase()}`;
  // between the host bridge and the function every directory is a bridge function; anything else
  // (a USB or platform device) cannot sit on a PCI path
  for (let i = hb + 1; i < parts.length - 1; i++)
    if (!parseBdf(parts[i]!) || parts[i]!.length < 12)
      throw new InputError(
        { file, place: dir },
        `"${parts[i]}" on the path of a PCI function is not a PCI function or host bridge`,
      );
  const prev = parts[parts.length - 2]!;
  const pb = parseBdf(prev);
  return { hostBridge, pathParent: pb && prev.length >= 12 ? formatBdf(pb) : null };
}

function linkBase(src: SnapshotSource, path: string): string | null {
  const t = src.readLink(path);
  return t === null ? null : basename(t.replace(/\/+$/, ""));
}

function readFunction(
  src: SnapshotSource,
  f: Found,
  root: string,
): { desc: FunctionDescription; iommuType?: string } {
  const d = f.dir;
  // one listing per function: most optional attributes are absent, and absent reads are costly
  const present = new Set(src.list(d) ?? []);
  const file = (n: string) => {
    const slash = n.indexOf("/");
    if (!present.has(slash < 0 ? n : n.slice(0, slash))) return null;
    return readText(src, `${d}/${n}`);
  };
  const place = (n: string) => ({ file: src.label, place: `${d}/${n}` });
  const rawConfig = present.has("config") ? src.readFile(`${d}/config`) : null;
  const cfg = rawConfig && rawConfig.length >= 64 ? parseConfigSpace(rawConfig) : null;
  // config space already holds the IDs (the sysfs files repeat them), except for VFs, whose
  // config reads 0xffff there as the PCIe spec requires
  const ids = cfg !== null && cfg.vendor !== 0xffff ? cfg : null;
  const fromFile = (n: string, v: number | undefined) => (ids ? v : (hexNum(file(n)) ?? v));
  const vendor = fromFile("vendor", cfg?.vendor);
  const device = fromFile("device", cfg?.device);
  const classCode = fromFile("class", cfg?.classCode);
  if (classCode === undefined)
    throw new InputError(
      place("class"),
      `function ${f.bdf} has no readable class (neither the file nor config space)`,
    );
  const subsystemVendor = fromFile("subsystem_vendor", cfg?.subsystemVendor);
  const subsystemDevice = fromFile("subsystem_device", cfg?.subsystemDevice);
  const revision = fromFile("revision", cfg?.revision);
  const resource = file("resource");
  const bars =
    resource !== null ? parseResourceFile(resource, `${src.label}: ${d}/resource`) : undefined;
  const numa = decNum(file("numa_node"));
  const group = present.has("iommu_group") ? linkBase(src, `${d}/iommu_group`) : null;
  const driver = present.has("driver") ? linkBase(src, `${d}/driver`) : null;
  const physfnT = present.has("physfn") ? src.readLink(`${d}/physfn`) : null;
  const physfn = physfnT !== null ? parseBdf(basename(physfnT.replace(/\/+$/, ""))) : null;
  const link: { -readonly [K in keyof LinkDescription]: LinkDescription[K] } = {};
  const ms = file("max_link_speed");
  const cs = file("current_link_speed");
  const mw = decNum(file("max_link_width"));
  const cw = decNum(file("current_link_width"));
  if (ms !== null) {
    const v = parseSysfsSpeed(ms);
    if (v !== undefined) link.maxSpeed = v;
  }
  if (cs !== null) {
    const v = parseSysfsSpeed(cs);
    if (v !== undefined) link.speed = v;
  }
  if (mw !== undefined) link.maxWidth = mw;
  if (cw !== undefined) link.width = cw;
  if (cfg?.pcie?.linkCap && link.maxSpeed === undefined) {
    link.maxSpeed = cfg.pcie.linkCap.speed;
    link.maxWidth ??= cfg.pcie.linkCap.width;
  }
  if (cfg?.pcie?.linkStatus && link.speed === undefined) {
    link.speed = cfg.pcie.linkStatus.speed;
    link.width ??= cfg.pcie.linkStatus.width;
  }
  const sec = cfg?.secondaryBus ?? decNum(file("secondary_bus_number"));
  const sub = cfg?.subordinateBus ?? decNum(file("subordinate_bus_number"));
  const total = decNum(file("sriov_totalvfs"));
  const num = decNum(file("sriov_numvfs"));
  const p2pSize = decNum(file("p2pmem/size"));
  const p2pAvail = decNum(file("p2pmem/available"));
  const p2pPub = decNum(file("p2pmem/published"));
  const label = file("label")?.trim();
  let iommuType: string | undefined;
  if (group !== null) {
    const t = readText(src, joinPath(root, `sys/kernel/iommu_groups/${group}/type`))?.trim();
    if (t) iommuType = t;
  }
  let pcieType: FunctionDescription["pcieType"];
  let acs: FunctionDescription["acs"];
  if (cfg?.pcie)
    pcieType = cfg.pcie.type ?? undefined; // a reserved type code: PCIe, type unknown
  else if (cfg && cfg.length >= 256) pcieType = null; // full standard space read, no PCIe cap
  if (cfg?.acs) acs = { cap: cfg.acs.cap, ctrl: cfg.acs.ctrl, offset: cfg.acs.offset };
  else if (cfg?.acs === null || pcieType === null) acs = null; // conventional PCI has no extended space
  const hasLink = Object.keys(link).length > 0;
  const desc: FunctionDescription = {
    bdf: f.bdf,
    parent: null,
    ...(vendor !== undefined ? { vendor } : {}),
    ...(device !== undefined ? { device } : {}),
    ...(subsystemVendor !== undefined ? { subsystemVendor } : {}),
    ...(subsystemDevice !== undefined ? { subsystemDevice } : {}),
    ...(revision !== undefined ? { revision } : {}),
    classCode,
    ...(cfg ? { headerType: cfg.headerType, multifunction: cfg.multifunction } : {}),
    ...(pcieType !== undefined ? { pcieType } : {}),
    ...(hasLink ? { link } : {}),
    ...(sec !== undefined && (cfg ? cfg.headerType !== 0 : true) ? { secondaryBus: sec } : {}),
    ...(sub !== undefined && (cfg ? cfg.headerType !== 0 : true) ? { subordinateBus: sub } : {}),
    ...(bars !== undefined ? { bars } : {}),
    ...(numa !== undefined ? { numaNode: numa < 0 ? null : numa } : {}),
    ...(group !== null ? { iommuGroup: Number.parseInt(group, 10) } : {}),
    ...(present.has("driver") || driver !== null ? { driver } : {}),
    ...(acs !== undefined ? { acs } : {}),
    ...(total !== undefined
      ? { sriov: { totalVfs: total, numVfs: num ?? 0 } }
      : cfg?.sriov === null
        ? { sriov: null }
        : {}),
    ...(physfn ? { physfn: formatBdf(physfn) } : {}),
    ...(p2pSize !== undefined
      ? {
          p2pmem: {
            size: BigInt(p2pSize),
            available: BigInt(p2pAvail ?? 0),
            published: p2pPub === 1,
          },
        }
      : {}),
    ...(label ? { label } : {}),
    ...(rawConfig && rawConfig.length > 0 ? { config: rawConfig } : {}),
  };
  return iommuType ? { desc, iommuType } : { desc };
}

function iommuMode(
  types: Set<string>,
  src: SnapshotSource,
  root: string,
): MachineDescription["iommu"] {
  const groupsDir = src.list(joinPath(root, "sys/kernel/iommu_groups"));
  if (types.size === 0) {
    if (groupsDir !== null && groupsDir.length === 0) return { mode: "off" };
    return undefined;
  }
  const order: [string, IommuMode][] = [
    ["DMA-FQ", "dma-fq"],
    ["DMA", "dma"],
    ["identity", "identity"],
  ];
  for (const [t, m] of order) if (types.has(t)) return { mode: m };
  return undefined;
}

/**
 * For captures without device paths: a function's parent is the bridge whose secondary bus is the
 * function's bus (hwloc nests by [secondary, subordinate] containment; on consistent data the two
 * agree). Bridges whose secondary bus is not above their own bus are ignored, as hwloc drops them.
 */
export function parentsByBusRange(
  functions: readonly FunctionDescription[],
): Map<string, string | null> {
  const bySecondary = new Map<string, string>();
  for (const br of functions) {
    if (br.secondaryBus === undefined) continue;
    const bb = parseBdf(br.bdf)!;
    if (br.secondaryBus <= bb.bus) continue;
    const key = `${bb.domain}:${br.secondaryBus}`;
    if (!bySecondary.has(key)) bySecondary.set(key, br.bdf);
  }
  const out = new Map<string, string | null>();
  for (const f of functions) {
    const b = parseBdf(f.bdf)!;
    out.set(f.bdf, bySecondary.get(`${b.domain}:${b.bus}`) ?? null);
  }
  return out;
}
