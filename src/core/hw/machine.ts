/**
 * @module machine
 * The machine model. `MachineDescription` is plain data: what every loader produces, what our
 * YAML/JSON holds, what `convert` writes. `Machine` is the linked, validated form the kernel model
 * and the analysis walk.
 *
 * Unknown vs absent: an optional field that is `undefined` means the source did not say; `null`
 * means the source said there is none. Analysis must report verdicts that rest on unknowns.
 */

import { TopologyError } from "../errors.ts";
import { type Bdf, compareBdf, devfn, formatBdf, formatBusId, parseBdf } from "./bdf.ts";
import { type ParsedConfig, type PcieType, parseConfigSpace } from "./config-space.ts";

export const MACHINE_SCHEMA_VERSION = 1;

export type IommuMode = "off" | "dma" | "dma-fq" | "identity";

export interface CpuDescription {
  /** CPUID vendor string as /proc/cpuinfo `vendor_id` shows it (`AuthenticAMD`, `GenuineIntel`). */
  readonly vendor?: string;
  /** `cpu family`, decimal as /proc/cpuinfo prints it. */
  readonly family?: number;
  readonly model?: number;
  readonly modelName?: string;
  /** `x86_64`, `aarch64`, `ppc64le`, ... */
  readonly arch?: string;
  readonly sockets?: number;
}

export interface BarDescription {
  readonly index: number;
  /** CPU physical start address. */
  readonly start: bigint;
  readonly size: bigint;
  readonly mem: boolean;
  readonly prefetchable: boolean;
  readonly is64: boolean;
}

export interface LinkDescription {
  /** GT/s; null when the source printed `Unknown`. */
  readonly maxSpeed?: number | null;
  readonly maxWidth?: number;
  readonly speed?: number | null;
  readonly width?: number;
}

export interface AcsDescription {
  /** ACS Capability register. */
  readonly cap: number;
  /** ACS Control register as the running kernel left it; undefined when not read. */
  readonly ctrl?: number;
  /** Config offset of the capability, when known. */
  readonly offset?: number;
}

export interface FunctionDescription {
  readonly bdf: string;
  /** BDF of the bridge whose secondary bus this function sits on; null on a root bus. */
  readonly parent: string | null;
  /** undefined when the source lacks the IDs (trimmed captures); shown as 0000. */
  readonly vendor?: number;
  readonly device?: number;
  readonly subsystemVendor?: number;
  readonly subsystemDevice?: number;
  readonly revision?: number;
  /** 24-bit class code: base, sub, prog-if. */
  readonly classCode: number;
  /** 0 normal, 1 PCI-to-PCI bridge, 2 CardBus bridge. */
  readonly headerType?: number;
  readonly multifunction?: boolean;
  /** null: not a PCI Express function (no PCIe capability). */
  readonly pcieType?: PcieType | null;
  readonly link?: LinkDescription;
  readonly secondaryBus?: number;
  readonly subordinateBus?: number;
  readonly bars?: readonly BarDescription[];
  readonly numaNode?: number | null;
  readonly iommuGroup?: number | null;
  readonly driver?: string | null;
  /** null: the function has no ACS capability. */
  readonly acs?: AcsDescription | null;
  readonly sriov?: { readonly totalVfs: number; readonly numVfs: number } | null;
  /** For a VF: the BDF of its PF. */
  readonly physfn?: string;
  readonly p2pmem?: {
    readonly size: bigint;
    readonly available: bigint;
    readonly published: boolean;
  };
  readonly slot?: string;
  readonly label?: string;
  /** Raw config space, as much as the source had (64, 256 or 4096 bytes). */
  readonly config?: Uint8Array;
  /** Free-form names a source gave (hwloc `PCIVendor`, lspci names). */
  readonly vendorName?: string;
  readonly deviceName?: string;
  /** OS device names attached to the function (`mlx5_0`, `nvme0n1`, `eth0`). */
  readonly osDevices?: readonly string[];
}

export interface HostBridgeDescription {
  readonly domain: number;
  readonly bus: number;
  /** Last bus number decoded below it, when known. */
  readonly busEnd?: number;
  readonly numaNode?: number | null;
  /** CPU→bus windows (from /proc/iomem or a description); bus = cpu - offset. */
  readonly windows?: readonly {
    readonly cpuStart: bigint;
    readonly size: bigint;
    readonly busStart: bigint;
  }[];
}

export interface MachineDescription {
  readonly schemaVersion: typeof MACHINE_SCHEMA_VERSION;
  readonly name?: string;
  readonly source?: { readonly format: string; readonly path?: string };
  readonly cpu?: CpuDescription;
  readonly kernel?: { readonly release?: string; readonly profile?: string };
  /** Kernel command line (/proc/cmdline); undefined when unknown. */
  readonly cmdline?: string;
  /** Active DMA translation, when the source tells it (IOMMU groups present, `iommu=pt`, ...). */
  readonly iommu?: { readonly mode?: IommuMode; readonly driver?: string };
  readonly numaNodes?: number;
  readonly hostBridges: readonly HostBridgeDescription[];
  readonly functions: readonly FunctionDescription[];
  /** Facts the loader could not establish, in words: shown with every analysis. */
  readonly unknowns?: readonly string[];
}

/** A host bridge and its root bus: the kernel's `struct pci_host_bridge` + root `pci_bus`. */
export interface HostBridge {
  readonly id: string;
  readonly domain: number;
  readonly bus: number;
  readonly desc: HostBridgeDescription;
  /** Functions on the root bus in kernel list order (ascending devfn at boot scan). */
  readonly rootFunctions: readonly PciFunction[];
}

/** One PCI function, linked into the hierarchy. */
export interface PciFunction {
  readonly bdf: Bdf;
  readonly name: string;
  readonly desc: FunctionDescription;
  readonly hostBridge: HostBridge;
  /** Bridge above (the bus's `self`), null on a root bus. VFs: their PF's parent. */
  readonly parent: PciFunction | null;
  readonly children: readonly PciFunction[];
  /** The PF, for a VF. */
  readonly physfn: PciFunction | null;
  readonly vfs: readonly PciFunction[];
  readonly isBridge: boolean;
  /** Depth below the host bridge: root-bus functions are 0. */
  readonly depth: number;
  readonly config: ParsedConfig | null;
}

export interface Machine {
  readonly desc: MachineDescription;
  readonly hostBridges: readonly HostBridge[];
  /** Every function in BDF order. */
  readonly functions: readonly PciFunction[];
  byBdf(bdf: string): PciFunction | undefined;
}

/** Bridges by header type, else by class: PCI-to-PCI 0x0604/0x0609, CardBus 0x0607. */
export function isBridgeDescription(f: FunctionDescription): boolean {
  if (f.headerType !== undefined) return f.headerType === 1 || f.headerType === 2;
  const sub = f.classCode >> 8;
  return sub === 0x0604 || sub === 0x0609 || sub === 0x0607;
}

/**
 * Links and validates a description: unique BDFs, parents that exist and are bridges, no cycles,
 * PFs that exist. Throws TopologyError naming the offending function.
 */
export function buildMachine(desc: MachineDescription): Machine {
  type Mut = {
    -readonly [K in keyof PciFunction]: PciFunction[K];
  } & { children: PciFunction[]; vfs: PciFunction[] };
  const byName = new Map<string, Mut>();
  const hbs = new Map<string, HostBridge & { rootFunctions: PciFunction[] }>();
  for (const h of desc.hostBridges) {
    const id = formatBusId(h.domain, h.bus);
    if (hbs.has(id))
      throw new TopologyError(`host bridge pci${id} is listed twice`, { hostBridge: id });
    hbs.set(id, { id, domain: h.domain, bus: h.bus, desc: h, rootFunctions: [] });
  }
  for (const f of desc.functions) {
    const bdf = parseBdf(f.bdf);
    if (!bdf)
      throw new TopologyError(`function "${f.bdf}" does not have a PCI address`, { bdf: f.bdf });
    const name = formatBdf(bdf);
    if (byName.has(name))
      throw new TopologyError(`function ${name} is listed twice`, { bdf: name });
    let config: ParsedConfig | null = null;
    if (f.config && f.config.length >= 64) config = parseConfigSpace(f.config);
    byName.set(name, {
      bdf,
      name,
      desc: f,
      hostBridge: undefined as unknown as HostBridge,
      parent: null,
      children: [],
      physfn: null,
      vfs: [],
      isBridge: isBridgeDescription(f),
      depth: 0,
      config,
    });
  }
  for (const fn of byName.values()) {
    const p = fn.desc.parent;
    if (p !== null) {
      const pn = parseBdf(p);
      const parent = pn ? byName.get(formatBdf(pn)) : undefined;
      if (!parent)
        throw new TopologyError(
          `function ${fn.name} names parent ${p}, which is not in the machine`,
          {
            bdf: fn.name,
            parent: p,
          },
        );
      if (!parent.isBridge)
        throw new TopologyError(
          `function ${fn.name} names parent ${parent.name}, which is not a bridge`,
          { bdf: fn.name, parent: parent.name },
        );
      fn.parent = parent;
    }
    if (fn.desc.physfn !== undefined) {
      const pn = parseBdf(fn.desc.physfn);
      const pf = pn ? byName.get(formatBdf(pn)) : undefined;
      if (!pf)
        throw new TopologyError(
          `VF ${fn.name} names PF ${fn.desc.physfn}, which is not in the machine`,
          {
            bdf: fn.name,
          },
        );
      fn.physfn = pf;
      pf.vfs.push(fn);
    }
  }
  // depth, cycles, host bridge: walk each function to its root
  const sorted = [...byName.values()].sort((a, b) => compareBdf(a.bdf, b.bdf));
  for (const fn of sorted) {
    const seen = new Set<Mut>();
    let top: Mut = fn;
    let depth = 0;
    while (top.parent) {
      if (seen.has(top))
        throw new TopologyError(`the parent chain of ${fn.name} loops`, { bdf: fn.name });
      seen.add(top);
      top = top.parent as Mut;
      depth++;
    }
    fn.depth = depth;
    const id = formatBusId(top.bdf.domain, top.bdf.bus);
    let hb = hbs.get(id);
    if (!hb) {
      // a root-bus function whose host bridge the source did not list: synthesise it
      hb = {
        id,
        domain: top.bdf.domain,
        bus: top.bdf.bus,
        desc: { domain: top.bdf.domain, bus: top.bdf.bus },
        rootFunctions: [],
      };
      hbs.set(id, hb);
    }
    fn.hostBridge = hb;
    if (fn.parent) (fn.parent as Mut).children.push(fn);
    else hb.rootFunctions.push(fn);
  }
  for (const hb of hbs.values()) hb.rootFunctions.sort((a, b) => devfn(a.bdf) - devfn(b.bdf));
  const hostBridges = [...hbs.values()].sort((a, b) => a.domain - b.domain || a.bus - b.bus);
  const functions = sorted as PciFunction[];
  return {
    desc,
    hostBridges,
    functions,
    byBdf(bdf: string) {
      const b = parseBdf(bdf);
      return b ? byName.get(formatBdf(b)) : undefined;
    },
  };
}

/** A function's memory BAR `index`, or without one its largest memory BAR (a device's memory window). */
export function memoryBar(fn: PciFunction, index?: number): BarDescription | undefined {
  let best: BarDescription | undefined;
  for (const b of fn.desc.bars ?? []) {
    if (!b.mem || b.size === 0n) continue;
    if (index !== undefined) {
      if (b.index === index) return b;
    } else if (!best || b.size > best.size) best = b;
  }
  return best;
}
