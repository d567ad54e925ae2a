/**
 * @module nccl-xml
 * Reads and writes NCCL topology XML (`NCCL_TOPO_FILE`, `NCCL_TOPO_DUMP_FILE`; `<system
 * version="1">`) and RCCL's variant (`version="2"`, `<xgmi>`, `gcn`). NCCL describes a switch by
 * its upstream port only and never lists root ports (ncclTopoGetXmlFromSys strips two sysfs path
 * components per level), so the tree read here is that collapsed tree, said so in `unknowns`.
 */

import { z } from "zod";
import { InputError } from "../errors.ts";
import { formatBdf, formatBusId, parseBdf } from "../hw/bdf.ts";
import type {
  CpuDescription,
  FunctionDescription,
  HostBridgeDescription,
  LinkDescription,
  MachineDescription,
  PciFunction,
} from "../hw/machine.ts";
import { buildMachine, MACHINE_SCHEMA_VERSION } from "../hw/machine.ts";
import {
  checkAttrs,
  checkBuildable,
  decodeXmlText,
  failAt,
  readXml,
  type XmlNode,
  xmlKids,
  xmlOpen,
} from "./hwloc-xml.ts";

type Mut<T> = { -readonly [K in keyof T]: T[K] };

/** Integers as NCCL reads them (xmlGetAttrInt: strtol base 0): decimal, 0x hex, 0 octal. */
const INT_RE = /^\s*-?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\s*$/;
function cInt(s: string): number {
  const t = s.trim();
  const neg = t.startsWith("-");
  const u = neg ? t.slice(1) : t;
  const v = /^0[xX]/.test(u)
    ? Number.parseInt(u.slice(2), 16)
    : u.length > 1 && u.startsWith("0")
      ? Number.parseInt(u.slice(1), 8)
      : Number.parseInt(u, 10);
  return neg ? -v : v;
}
const UINT_RE = /^\s*(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\s*$/;
const HEX_ID_RE = /^\s*(?:0[xX])?[0-9a-fA-F]{1,4}\s*$/;
const CLASS_RE = /^\s*(?:0[xX])?[0-9a-fA-F]{1,6}\s*$/;
const hexId = (s: string) => Number.parseInt(s.trim().replace(/^0[xX]/, ""), 16);

const SystemAttrs = z.looseObject({
  version: z.string().regex(INT_RE, "not an integer").optional(),
});
const CpuAttrs = z.looseObject({
  numaid: z.string().regex(INT_RE, "not an integer NUMA id").optional(),
  arch: z.string().optional(),
  vendor: z.string().optional(),
  familyid: z.string().regex(UINT_RE, "not an unsigned integer").optional(),
  modelid: z.string().regex(UINT_RE, "not an unsigned integer").optional(),
});
const PciAttrs = z.looseObject({
  busid: z
    .string({ error: "missing the busid attribute" })
    .refine((s) => parseBdf(s) !== null, "not a PCI address"),
  class: z.string().regex(CLASS_RE, "not a hex class code").optional(),
  vendor: z.string().regex(HEX_ID_RE, "not a 16-bit hex ID").optional(),
  device: z.string().regex(HEX_ID_RE, "not a 16-bit hex ID").optional(),
  subsystem_vendor: z.string().regex(HEX_ID_RE, "not a 16-bit hex ID").optional(),
  subsystem_device: z.string().regex(HEX_ID_RE, "not a 16-bit hex ID").optional(),
  link_speed: z.string().optional(),
  link_width: z
    .string()
    .regex(/^\s*(?:\d{1,3})?\s*$/, "not a lane count")
    .optional(),
});
const NetAttrs = z.looseObject({ name: z.string().optional() });

/** Link speed strings NCCL meets: sysfs ≤5.6 `8 GT/s`, ≥5.7 `8.0 GT/s PCIe`, typos, `Unknown`. */
export function parseNcclSpeed(text: string): number | null | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*GT\/s/i.exec(text);
  if (m) return Number.parseFloat(m[1]!);
  if (/^\s*unknown/i.test(text)) return null;
  return undefined;
}

/**
 * NCCL's `familyid` is cpuid's family + (extended family << 4) and `modelid` model + (extended model
 * << 4) (ncclTopoGetXmlFromCpu), both decimal. The model is /proc/cpuinfo's; the family is not
 * when the base family is 0xF (AMD: Rome 143 = 0x8F, Milan/Genoa 175 = 0xAF).
 */
export function familyFromNccl(familyid: number): number {
  return familyid > 0xf && (familyid & 0xf) === 0xf ? 0xf + (familyid >> 4) : familyid;
}
export function familyToNccl(family: number): number {
  return family > 0xf ? 0xf + ((family - 0xf) << 4) : family;
}

const ARCH_FROM_NCCL: Readonly<Record<string, string>> = { arm64: "aarch64" };
const ARCH_TO_NCCL: Readonly<Record<string, string>> = {
  aarch64: "arm64",
  ppc64le: "ppc64",
  ppc64: "ppc64",
  x86_64: "x86_64",
};

/** Classes we make up when the file gives none (reported in `unknowns`). */
const INFERRED_BRIDGE = 0x060400;
const INFERRED_GPU = 0x038000;
const INFERRED_NIC = 0x028000;
const UNKNOWN_CLASS = 0xff0000;

const isVirtualSwitch = (bdf: string) => {
  const b = parseBdf(bdf)!;
  return b.domain === 0xffff && b.bus === 0xff;
};

/**
 * Parses an NCCL/RCCL topology XML. A `<pci>` nested in another names it as parent (NCCL's
 * collapsed tree); one directly under `<cpu>` has parent null and sits on a host bridge made up
 * per (domain, root bus), with the cpu's `numaid` as NUMA node.
 */
export function parseNcclXml(file: string, text: string): MachineDescription {
  const doc = readXml(file, text);
  const system = xmlKids(doc.root, "system")[0];
  if (!system) {
    if (xmlKids(doc.root, "graphs").length > 0)
      throw new InputError(
        { file },
        "an NCCL graph file (<graphs>, NCCL_GRAPH_FILE) has rings and trees, not a PCI topology",
        "input-unsupported",
      );
    throw new InputError(
      { file },
      "not NCCL topology XML: no <system> element",
      xmlKids(doc.root, "topology").length > 0 ? "input-unsupported" : "input-invalid",
    );
  }
  const sv = checkAttrs(doc, system, "system", SystemAttrs).version;
  const version = sv === undefined ? undefined : cInt(sv);
  if (version !== undefined && version !== 1 && version !== 2)
    throw new InputError(
      { file },
      `NCCL topology version ${version}: only 1 (NCCL) and 2 (RCCL) are known`,
      "input-unsupported",
    );

  const functions: (Mut<FunctionDescription> & { osDevices?: string[] })[] = [];
  const seen = new Map<
    string,
    { key: string; parent: string | null; f: Mut<FunctionDescription> & { osDevices?: string[] } }
  >();
  const dropped: string[] = [];
  const roots = new Map<string, { numa: number | null | undefined; conflict: boolean }>();
  const cpu: Mut<CpuDescription> = {};
  let cpuConflict = false;
  const virtual: string[] = [];
  const inferred: string[] = [];
  const noClass: string[] = [];
  const oddSpeeds: string[] = [];
  const zeroWidth: string[] = [];
  const cpuNets: string[] = [];

  const netNames = (nics: readonly XmlNode[]): string[] =>
    nics.flatMap((nic) =>
      xmlKids(nic, "net").flatMap((net) => {
        const name = checkAttrs(doc, net, "net", NetAttrs).name;
        return name ? [decodeXmlText(name)] : [];
      }),
    );

  const walkPci = (node: XmlNode, parent: string | null, numa: number | null | undefined) => {
    const a = checkAttrs(doc, node, "pci", PciAttrs);
    const bdf = formatBdf(parseBdf(a.busid)!);
    const kids = xmlKids(node, "pci");
    const gpus = xmlKids(node, "gpu");
    const nics = xmlKids(node, "nic");
    const key = JSON.stringify(Object.entries(a).sort(([x], [y]) => (x < y ? -1 : 1)));
    const prev = seen.get(bdf);
    if (prev) {
      // the same node listed again under the same parent: its children add up (as ncclTopoFuseXml)
      if (prev.key === key && prev.parent === parent) {
        const more = netNames(nics);
        if (more.length > 0) prev.f.osDevices = [...(prev.f.osDevices ?? []), ...more];
        for (const k of kids) walkPci(k, bdf, numa);
        return;
      }
      const { place } = doc.where(node, "pci");
      if (kids.length > 0)
        failAt(doc, node, "pci", `busid ${bdf} appears twice with different attributes or parents`);
      dropped.push(`${bdf} at ${place}`);
      return;
    }
    const f: Mut<FunctionDescription> & { osDevices?: string[] } = {
      bdf,
      parent,
      classCode: UNKNOWN_CLASS,
    };
    if (a.class !== undefined) f.classCode = hexId(a.class);
    else if (kids.length > 0) {
      f.classCode = INFERRED_BRIDGE;
      inferred.push(`${bdf} bridge`);
    } else if (gpus.length > 0) {
      f.classCode = INFERRED_GPU;
      inferred.push(`${bdf} GPU`);
    } else if (nics.length > 0) {
      f.classCode = INFERRED_NIC;
      inferred.push(`${bdf} NIC`);
    } else noClass.push(bdf);
    if (kids.length > 0 && f.classCode >> 8 !== 0x0604 && f.classCode >> 8 !== 0x0609)
      failAt(
        doc,
        node,
        "pci",
        `busid ${bdf} holds other <pci> nodes but its class 0x${hex(f.classCode, 6)} is not a PCI bridge`,
      );
    if (a.vendor !== undefined) f.vendor = hexId(a.vendor);
    if (a.device !== undefined) f.device = hexId(a.device);
    if (a.subsystem_vendor !== undefined) f.subsystemVendor = hexId(a.subsystem_vendor);
    if (a.subsystem_device !== undefined) f.subsystemDevice = hexId(a.subsystem_device);
    // link_speed/link_width: the lower of the device's and its port's maximum (ncclTopoGetXmlFromSys)
    const link: Mut<LinkDescription> = {};
    if (a.link_speed !== undefined && a.link_speed.trim() !== "") {
      const sp = parseNcclSpeed(a.link_speed);
      if (sp === undefined) oddSpeeds.push(`${bdf} "${a.link_speed}"`);
      else link.maxSpeed = sp;
    }
    if (a.link_width !== undefined && a.link_width.trim() !== "") {
      const w = Number.parseInt(a.link_width, 10);
      if (w > 0) link.maxWidth = w;
      else zeroWidth.push(bdf);
    }
    if (Object.keys(link).length > 0) f.link = link;
    if (numa !== undefined) f.numaNode = numa;
    if (isVirtualSwitch(bdf)) virtual.push(bdf);
    const nets = netNames(nics);
    if (nets.length > 0) f.osDevices = nets;
    functions.push(f);
    seen.set(bdf, { key, parent, f });
    for (const k of kids) walkPci(k, bdf, numa);
  };

  for (const c of xmlKids(system, "cpu")) {
    const a = checkAttrs(doc, c, "cpu", CpuAttrs);
    const numaId = a.numaid !== undefined ? cInt(a.numaid) : undefined;
    const numa = numaId === undefined ? undefined : numaId < 0 ? null : numaId;
    const mine: Mut<CpuDescription> = {};
    if (a.vendor !== undefined && a.vendor !== "") mine.vendor = decodeXmlText(a.vendor);
    if (a.familyid !== undefined) mine.family = familyFromNccl(cInt(a.familyid));
    if (a.modelid !== undefined) mine.model = cInt(a.modelid);
    if (a.arch !== undefined && a.arch !== "") mine.arch = ARCH_FROM_NCCL[a.arch] ?? a.arch;
    for (const k of Object.keys(mine) as (keyof CpuDescription)[]) {
      if (cpu[k] === undefined) (cpu as Record<string, unknown>)[k] = mine[k];
      else if (cpu[k] !== mine[k]) cpuConflict = true;
    }
    for (const p of xmlKids(c, "pci")) {
      walkPci(p, null, numa);
      const b = parseBdf(checkAttrs(doc, p, "pci", PciAttrs).busid)!;
      if (seen.get(formatBdf(b))?.parent !== null) continue; // dropped: listed before elsewhere
      const id = formatBusId(b.domain, b.bus);
      const prev = roots.get(id);
      if (!prev) roots.set(id, { numa, conflict: false });
      else if (prev.numa !== numa) prev.conflict = true;
    }
    cpuNets.push(...netNames(xmlKids(c, "nic")));
  }

  const hostBridges: HostBridgeDescription[] = [...roots].map(([id, r]) => {
    const b = parseBdf(`${id}:00.0`)!;
    return {
      domain: b.domain,
      bus: b.bus,
      ...(r.numa !== undefined && !r.conflict ? { numaNode: r.numa } : {}),
    };
  });

  const unknowns: string[] = [
    "ACS capability and control of every function: NCCL topology XML carries no PCI config space",
    "root ports and switch downstream ports: NCCL XML omits them, so a function's parent here is the switch upstream port above it (NCCL's collapsed tree) and a function under <cpu> may sit below a root port",
    "current link speed and width: NCCL records only the lower of the device's and its port's maximum",
    "BAR addresses, IOMMU groups, drivers and the kernel command line: not in NCCL XML",
  ];
  if (dropped.length > 0)
    unknowns.push(
      `busids listed again with a different class or parent; kept the first, dropped ${dropped.join(", ")}`,
    );
  if (virtual.length > 0)
    unknowns.push(
      `virtual switches ${virtual.join(", ")}: made up by the file's author (bus ffff:ff does not exist); the real PCI path of the devices below them is unknown`,
    );
  const conflicted = [...roots].filter(([, r]) => r.conflict).map(([id]) => `pci${id}`);
  if (conflicted.length > 0)
    unknowns.push(
      `NUMA node of host bridge(s) ${conflicted.join(", ")}: its root devices are listed under different <cpu> nodes`,
    );
  if (inferred.length > 0)
    unknowns.push(
      `class codes of ${inferred.join(", ")}: not in the file, inferred from the child elements`,
    );
  if (noClass.length > 0)
    unknowns.push(
      `class codes of ${noClass.length} function(s) (${noClass.slice(0, 4).join(", ")}${noClass.length > 4 ? ", …" : ""}): not in the file, recorded as 0xff0000 (unassigned)`,
    );
  if (oddSpeeds.length > 0) unknowns.push(`link speeds not understood: ${oddSpeeds.join(", ")}`);
  if (zeroWidth.length > 0)
    unknowns.push(
      `link width of ${zeroWidth.join(", ")}: given as 0 (sysfs unreadable; NCCL assumes x16)`,
    );
  if (cpuConflict) unknowns.push("CPU: the <cpu> nodes disagree on vendor, family or model");
  if (cpuNets.length > 0)
    unknowns.push(
      `PCI address of network device(s) ${cpuNets.join(", ")}: listed under <cpu> without a <pci> node`,
    );

  return checkBuildable(file, {
    schemaVersion: MACHINE_SCHEMA_VERSION,
    source: { format: "nccl-xml", path: file },
    ...(Object.keys(cpu).length > 0 ? { cpu } : {}),
    hostBridges,
    functions,
    unknowns,
  });
}

// ------------------------------------------------------------------------------------------------
// Writer
// ------------------------------------------------------------------------------------------------

const hex = (n: number, w: number) => (n >>> 0).toString(16).padStart(w, "0");

/** Functions NCCL builds its XML from: GPUs (class 0x03, and 0x12 accelerators as RCCL lists MI300X) and NICs (0x02). */
function isNcclEndpoint(f: FunctionDescription): boolean {
  const base = f.classCode >>> 16;
  return base === 0x03 || base === 0x02 || base === 0x12;
}

export interface NcclWriteOptions {
  /** `gpu-nic` (default): only GPUs, NICs and the nodes above them, as NCCL dumps; `all`: every non-bridge function. */
  readonly devices?: "gpu-nic" | "all";
  /** `<system version>`: 1 for NCCL (default), 2 for RCCL. */
  readonly version?: 1 | 2;
}

/** Sysfs (≥ 5.7) speed text, which NCCL's kvDictPciGen matches. */
function speedText(s: number | null): string {
  if (s === null) return "Unknown";
  return `${Number.isInteger(s) ? s.toFixed(1) : `${s}`} GT/s PCIe`;
}

/**
 * Writes an NCCL topology file. The PCI tree is collapsed as ncclTopoGetXmlFromSys does: a node's
 * parent is its grandparent function when both exist, else the `<cpu>` of its NUMA node, so root
 * ports and switch downstream ports vanish. A description read from NCCL XML is collapsed
 * already and is written as it is. No `<gpu>` children and `<net>`s with a name only: NCCL fills
 * them in from the running system (matching `<pci>` by busid, `<net>` by name) and skips a
 * `<net>` it cannot match (no `dev`).
 */
export function writeNcclXml(m: MachineDescription, opts: NcclWriteOptions = {}): string {
  const machine = buildMachine(m);
  const collapsed = m.source?.format === "nccl-xml";
  const want = opts.devices ?? "gpu-nic";

  // NCCL's parent of each function that appears, by walking up from the endpoints
  const ncclParent = new Map<PciFunction, PciFunction | null>();
  const up = (f: PciFunction): PciFunction | null => {
    if (collapsed) return f.parent;
    const p1 = f.parent;
    const p2 = p1?.parent ?? null;
    return p1 && p2 ? p2 : null;
  };
  const endpoints = machine.functions.filter((f) =>
    want === "all" ? collapsed || !f.isBridge : isNcclEndpoint(f.desc),
  );
  for (const e of endpoints) {
    let f: PciFunction | null = e;
    while (f && !ncclParent.has(f)) {
      const p = up(f);
      ncclParent.set(f, p);
      f = p;
    }
  }
  const children = new Map<PciFunction | null, PciFunction[]>();
  for (const [f, p] of ncclParent) children.set(p, [...(children.get(p) ?? []), f]);
  for (const l of children.values())
    l.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

  const numaOf = (f: PciFunction): number => {
    const n = f.desc.numaNode ?? f.hostBridge.desc.numaNode;
    return typeof n === "number" ? n : -1;
  };
  const cpus = new Map<number, PciFunction[]>();
  for (const r of children.get(null) ?? [])
    cpus.set(numaOf(r), [...(cpus.get(numaOf(r)) ?? []), r]);

  // NCCL's link: lower of the device's and its real parent port's maximum
  const linkOf = (f: PciFunction): { speed?: number | null; width?: number } => {
    const l = f.desc.link;
    let speed = l?.maxSpeed ?? l?.speed;
    let width = l?.maxWidth ?? l?.width;
    if (!collapsed && f.parent) {
      const pl = f.parent.desc.link;
      const ps = pl?.maxSpeed ?? pl?.speed;
      const pw = pl?.maxWidth ?? pl?.width;
      if (typeof ps === "number" && (typeof speed !== "number" || ps < speed)) speed = ps;
      if (pw !== undefined && (width === undefined || pw < width)) width = pw;
    }
    return { ...(speed !== undefined ? { speed } : {}), ...(width !== undefined ? { width } : {}) };
  };

  const out: string[] = [`<system version="${opts.version ?? 1}">`];
  const c = m.cpu;
  const cpuAttrs: [string, string | undefined][] = [
    ["arch", c?.arch !== undefined ? (ARCH_TO_NCCL[c.arch] ?? c.arch) : undefined],
    ["vendor", c?.vendor],
    ["familyid", c?.family !== undefined ? `${familyToNccl(c.family)}` : undefined],
    ["modelid", c?.model !== undefined ? `${c.model}` : undefined],
  ];
  const writePci = (f: PciFunction, indent: number) => {
    const d = f.desc;
    const l = linkOf(f);
    const attrs: [string, string | undefined][] = [
      ["busid", f.name],
      ["class", `0x${hex(d.classCode, 6)}`],
      ["vendor", d.vendor !== undefined ? `0x${hex(d.vendor, 4)}` : undefined],
      ["device", d.device !== undefined ? `0x${hex(d.device, 4)}` : undefined],
      [
        "subsystem_vendor",
        d.subsystemVendor !== undefined ? `0x${hex(d.subsystemVendor, 4)}` : undefined,
      ],
      [
        "subsystem_device",
        d.subsystemDevice !== undefined ? `0x${hex(d.subsystemDevice, 4)}` : undefined,
      ],
      ["link_speed", l.speed !== undefined ? speedText(l.speed) : undefined],
      ["link_width", l.width !== undefined ? `${l.width}` : undefined],
    ];
    const kids = children.get(f) ?? [];
    const pad = " ".repeat(indent);
    const nets = collapsed || d.classCode >>> 16 === 0x02 ? (d.osDevices ?? []) : [];
    if (kids.length === 0 && nets.length === 0) {
      out.push(`${pad}${xmlOpen("pci", attrs)}/>`);
      return;
    }
    out.push(`${pad}${xmlOpen("pci", attrs)}>`);
    if (nets.length > 0) {
      out.push(`${pad}  <nic>`);
      for (const n of nets) out.push(`${pad}    ${xmlOpen("net", [["name", n]])}/>`);
      out.push(`${pad}  </nic>`);
    }
    for (const k of kids) writePci(k, indent + 2);
    out.push(`${pad}</pci>`);
  };
  for (const numa of [...cpus.keys()].sort((a, b) => a - b)) {
    out.push(`  ${xmlOpen("cpu", [["numaid", `${numa}`], ...cpuAttrs])}>`);
    for (const r of cpus.get(numa)!) writePci(r, 4);
    out.push("  </cpu>");
  }
  out.push("</system>", "");
  return out.join("\n");
}
