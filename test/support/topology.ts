/**
 * A tiny builder for synthetic machines in tests. Every function is named by BDF; a function
 * without `parent` sits on a root bus. `acs: 0x1d` means an ACS capability (cap 0x5f, as QEMU's)
 * whose control word is 0x1d; `acs: null` or no `acs` means no ACS capability.
 *
 *   topo()
 *     .fn("00:00.0", { id: "8086:2020" })
 *     .rootPort("00:01.0", { acs: 0 })
 *     .usp("01:00.0", { parent: "00:01.0" })
 *     .dsp("02:00.0", { parent: "01:00.0", acs: 0x1d })
 *     .ep("03:00.0", { parent: "02:00.0", p2pmem: true })
 *     .vf("03:00.4", { pf: "03:00.0" })
 *     .build();
 */
import type { PcieType } from "../../src/core/hw/config-space.ts";
import type {
  CpuDescription,
  FunctionDescription,
  HostBridgeDescription,
  IommuMode,
  MachineDescription,
} from "../../src/core/hw/machine.ts";

export const INTEL: CpuDescription = { vendor: "GenuineIntel", family: 6 };
export const AMD_ZEN: CpuDescription = { vendor: "AuthenticAMD", family: 0x17 };

export interface FnOpts {
  /** BDF of the bridge above; omitted: the function sits on a root bus. */
  readonly parent?: string;
  /** `vvvv:dddd` in hex. */
  readonly id?: string;
  /** ACS control word; null/omitted: no ACS capability. */
  readonly acs?: number | null;
  /** ACS capability register when `acs` is a number (default 0x5f). */
  readonly acsCap?: number;
  /** true: 1 MiB published pool; or the exact p2pmem state. */
  readonly p2pmem?: boolean | { size: bigint; available: bigint; published: boolean };
  readonly driver?: string;
  readonly pcieType?: PcieType | null;
  /** Memory BARs: index, CPU start, size (64-bit prefetchable). */
  readonly bars?: readonly {
    readonly index: number;
    readonly start: bigint;
    readonly size: bigint;
  }[];
}

const BRIDGE_CLASS = 0x060400;

export class Topo {
  readonly #fns: FunctionDescription[] = [];
  readonly #hbs: HostBridgeDescription[] = [];
  #cpu: CpuDescription = INTEL;
  #iommu: IommuMode | undefined;
  #cmdline: string | undefined;

  cpu(cpu: CpuDescription): this {
    this.#cpu = cpu;
    return this;
  }

  /** The IOMMU mode the machine was captured with (drives what-if re-boots). */
  iommu(mode: IommuMode): this {
    this.#iommu = mode;
    return this;
  }

  cmdline(line: string): this {
    this.#cmdline = line;
    return this;
  }

  /** `DDDD:BB`: a host bridge and its root bus (root buses of functions are added anyway). */
  hostBridge(id: string): this {
    const [d, b] = id.split(":");
    this.#hbs.push({ domain: Number.parseInt(d!, 16), bus: Number.parseInt(b!, 16) });
    return this;
  }

  fn(
    bdf: string,
    o: FnOpts & { bridge?: boolean; classCode?: number; physfn?: string } = {},
  ): this {
    const [vendor, device] = (o.id ?? "1af4:1000").split(":").map((h) => Number.parseInt(h, 16));
    const p2pmem =
      o.p2pmem === true
        ? { size: 1n << 20n, available: 1n << 20n, published: true }
        : o.p2pmem || undefined;
    this.#fns.push({
      bdf,
      parent: o.parent ?? null,
      vendor: vendor!,
      device: device!,
      classCode: o.classCode ?? (o.bridge ? BRIDGE_CLASS : 0x010802),
      headerType: o.bridge ? 1 : 0,
      pcieType: o.pcieType === undefined ? "endpoint" : o.pcieType,
      acs: typeof o.acs === "number" ? { cap: o.acsCap ?? 0x5f, ctrl: o.acs } : null,
      ...(o.physfn !== undefined ? { physfn: o.physfn } : {}),
      ...(p2pmem ? { p2pmem } : {}),
      ...(o.driver !== undefined ? { driver: o.driver } : {}),
      ...(o.bars
        ? { bars: o.bars.map((b) => ({ ...b, mem: true, prefetchable: true, is64: true })) }
        : {}),
    });
    return this;
  }

  /** A host-bridge function (class 0x0600, no PCIe capability), usually at 00.0. */
  hostFn(bdf: string, id: string): this {
    return this.fn(bdf, { id, classCode: 0x060000, pcieType: null });
  }

  rootPort(bdf: string, o: FnOpts = {}): this {
    return this.fn(bdf, { id: "1b36:000c", ...o, bridge: true, pcieType: "root-port" });
  }

  usp(bdf: string, o: FnOpts = {}): this {
    return this.fn(bdf, { id: "10b5:8747", ...o, bridge: true, pcieType: "upstream-port" });
  }

  dsp(bdf: string, o: FnOpts = {}): this {
    return this.fn(bdf, { id: "10b5:8747", ...o, bridge: true, pcieType: "downstream-port" });
  }

  /** PCIe-to-PCI bridge. */
  pciBridge(bdf: string, o: FnOpts = {}): this {
    return this.fn(bdf, { id: "1b36:000e", ...o, bridge: true, pcieType: "pcie-to-pci-bridge" });
  }

  ep(bdf: string, o: FnOpts = {}): this {
    return this.fn(bdf, o);
  }

  /** Root-complex integrated endpoint (on a root bus). */
  rciep(bdf: string, o: FnOpts = {}): this {
    return this.fn(bdf, { ...o, pcieType: "rc-endpoint" });
  }

  /** A VF: the kernel's upstream bridge of a VF is its PF's, so it gets the PF's parent. */
  vf(bdf: string, o: FnOpts & { pf: string }): this {
    const pf = this.#fns.find((f) => f.bdf === o.pf);
    if (!pf) throw new Error(`VF ${bdf}: PF ${o.pf} must be added first`);
    const { pf: _pf, ...rest } = o;
    return this.fn(bdf, {
      ...rest,
      physfn: o.pf,
      ...(pf.parent !== null ? { parent: pf.parent } : {}),
    });
  }

  build(): MachineDescription {
    return {
      schemaVersion: 1,
      name: "synthetic",
      cpu: this.#cpu,
      ...(this.#iommu !== undefined ? { iommu: { mode: this.#iommu } } : {}),
      ...(this.#cmdline !== undefined ? { cmdline: this.#cmdline } : {}),
      hostBridges: this.#hbs,
      functions: this.#fns,
    };
  }
}

export const topo = (): Topo => new Topo();
