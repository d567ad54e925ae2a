/**
 * The machines and configurations the conformance suites run on (test/conformance/): one synthetic
 * server whose PCIe switch carries every exporting device (an accelerator, an amdgpu-style GPU, a
 * function bound to vfio-pci) next to an RDMA NIC and a plain DMA master, with a second NIC and a
 * second DMA master behind other root ports; booted as a SimMachine with the kernel options of a
 * `Cfg`. The suites read only what a Cfg says; which P2P verdict a pair gets is asked of
 * explainPair, never assumed here.
 */

import { physAddr } from "../../src/core/hw/address.ts";
import type { IommuMode, MachineDescription, PciFunction } from "../../src/core/hw/machine.ts";
import type { AccelOptions } from "../../src/core/kernel/drivers/accel.ts";
import type { RdmaOptions } from "../../src/core/kernel/drivers/rdma.ts";
import { type Leak, type LeakSource, leakReport } from "../../src/core/kernel/leaks.ts";
import { PAGE_SIZE_N, type Page } from "../../src/core/kernel/mm/page.ts";
import { System } from "../../src/core/kernel/system.ts";
import { Tracer } from "../../src/core/kernel/trace.ts";
import { SimMachine, type SimProcess } from "../../src/core/sim/sim-machine.ts";
import { topo } from "./topology.ts";

const MiB = 1n << 20n;

export const BDF = {
  accel: "0000:03:00.0",
  gpu: "0000:04:00.0",
  vfio: "0000:05:00.0",
  /** RDMA NIC on the exporters' switch. */
  nicLocal: "0000:06:00.0",
  /** A plain DMA master (NVMe class) on the exporters' switch: the generic importers' device. */
  dmaLocal: "0000:07:00.0",
  /** A plain DMA master behind root port 00:02.0. */
  dmaRemote: "0000:0a:00.0",
  /** RDMA NIC behind root port 00:03.0. */
  nicRemote: "0000:0b:00.0",
} as const;

export const BAR = {
  accel: 0x80_0000_0000n,
  gpu: 0x81_0000_0000n,
  vfio: 0x82_0000_0000n,
} as const;

/** One kernel configuration and where the importers sit. */
export interface Cfg {
  readonly name: string;
  readonly kernel: "6.1" | "mainline";
  readonly iommu: IommuMode;
  /** CONFIG_DMABUF_MOVE_NOTIFY. */
  readonly moveNotify: boolean;
  /** The host bridge is on the P2PDMA allowlist (8086:2020) or not (8086:1234): the root complex forwards peer-to-peer requests only when it is. */
  readonly hostAllowlisted: boolean;
  /** The importers sit on the exporters' switch, or behind other root ports. */
  readonly importerAt: "local" | "remote";
}

export const CONFIGS: readonly Cfg[] = [
  {
    name: "mainline, no IOMMU, switch-local importers, MOVE_NOTIFY=y",
    kernel: "mainline",
    iommu: "off",
    moveNotify: true,
    hostAllowlisted: true,
    importerAt: "local",
  },
  {
    name: "mainline, IOMMU (dma), importers across an allowlisted root complex",
    kernel: "mainline",
    iommu: "dma",
    moveNotify: false,
    hostAllowlisted: true,
    importerAt: "remote",
  },
  {
    name: "mainline, no IOMMU, importers across a root complex not on the allowlist",
    kernel: "mainline",
    iommu: "off",
    moveNotify: false,
    hostAllowlisted: false,
    importerAt: "remote",
  },
  {
    name: "mainline, IOMMU (dma), switch-local importers, root complex not on the allowlist",
    kernel: "mainline",
    iommu: "dma",
    moveNotify: true,
    hostAllowlisted: false,
    importerAt: "local",
  },
  {
    name: "6.1, no IOMMU, switch-local importers",
    kernel: "6.1",
    iommu: "off",
    moveNotify: false,
    hostAllowlisted: true,
    importerAt: "local",
  },
];

export function machine(cfg: Cfg): MachineDescription {
  return topo()
    .hostFn("0000:00:00.0", cfg.hostAllowlisted ? "8086:2020" : "8086:1234")
    .rootPort("0000:00:01.0")
    .usp("0000:01:00.0", { parent: "0000:00:01.0" })
    .dsp("0000:02:00.0", { parent: "0000:01:00.0" })
    .dsp("0000:02:01.0", { parent: "0000:01:00.0" })
    .dsp("0000:02:02.0", { parent: "0000:01:00.0" })
    .dsp("0000:02:03.0", { parent: "0000:01:00.0" })
    .dsp("0000:02:04.0", { parent: "0000:01:00.0" })
    .ep(BDF.accel, {
      parent: "0000:02:00.0",
      id: "1da3:1020",
      driver: "habanalabs",
      bars: [
        { index: 0, start: 0x90_0000_0000n, size: MiB },
        { index: 2, start: BAR.accel, size: 64n * MiB },
      ],
    })
    .ep(BDF.gpu, {
      parent: "0000:02:01.0",
      id: "1002:740f",
      driver: "amdgpu",
      bars: [{ index: 0, start: BAR.gpu, size: 64n * MiB }],
    })
    .ep(BDF.vfio, {
      parent: "0000:02:02.0",
      id: "10de:2330",
      driver: "vfio-pci",
      bars: [{ index: 2, start: BAR.vfio, size: 16n * MiB }],
    })
    .ep(BDF.nicLocal, { parent: "0000:02:03.0", id: "15b3:101d", driver: "mlx5_core" })
    .ep(BDF.dmaLocal, { parent: "0000:02:04.0", id: "144d:a80a", driver: "nvme" })
    .rootPort("0000:00:02.0")
    .ep(BDF.dmaRemote, { parent: "0000:00:02.0", id: "144d:a80a", driver: "nvme" })
    .rootPort("0000:00:03.0")
    .ep(BDF.nicRemote, { parent: "0000:00:03.0", id: "15b3:101d", driver: "mlx5_core" })
    .iommu(cfg.iommu)
    .build();
}

/** The device the generic importers of a Cfg run on. */
export const importerBdf = (cfg: Cfg): string =>
  cfg.importerAt === "local" ? BDF.dmaLocal : BDF.dmaRemote;
/** The RDMA NIC of a Cfg. */
export const nicBdf = (cfg: Cfg): string =>
  cfg.importerAt === "local" ? BDF.nicLocal : BDF.nicRemote;

/** A booted machine for one suite run. */
export interface Bed {
  readonly cfg: Cfg;
  readonly sim: SimMachine;
  readonly proc: SimProcess;
  /** Kernel objects the suite created outside the SimMachine (heaps, vfio, udmabuf, shmem). */
  readonly extra: LeakSource[];
  leaks(): Leak[];
}

export function bed(cfg: Cfg, opts: { accel?: AccelOptions; rdma?: RdmaOptions } = {}): Bed {
  const sim = new SimMachine(machine(cfg), {
    kernel: cfg.kernel,
    moveNotify: cfg.moveNotify,
    tracer: new Tracer(false),
    ...(opts.accel ? { accel: opts.accel } : {}),
    ...(opts.rdma ? { rdma: opts.rdma } : {}),
  });
  const extra: LeakSource[] = [];
  return {
    cfg,
    sim,
    proc: sim.process("conformance"),
    extra,
    leaks: () => [...sim.leaks(), ...leakReport(extra)],
  };
}

export function fnOf(b: Bed, bdf: string): PciFunction {
  const f = b.sim.sys.machine.byBdf(bdf);
  if (!f) throw new Error(`no ${bdf} in the conformance machine`);
  return f;
}

/** Bytes of `pages` (a buffer's backing store in order) from `off`, page by page. */
export function readPages(
  sys: System,
  pages: readonly Page[],
  off: bigint,
  len: number,
): Uint8Array {
  return readAt(
    sys,
    (at) => System.phys(pages[Number(at / PAGE_SIZE_N)]!) + (at % PAGE_SIZE_N),
    off,
    len,
  );
}

/** Bytes of a buffer whose byte `at` lives at `phys(at)`, read page by page. */
export function readAt(
  sys: System,
  phys: (at: bigint) => bigint,
  off: bigint,
  len: number,
): Uint8Array {
  const out = new Uint8Array(len);
  let done = 0;
  while (done < len) {
    const at = off + BigInt(done);
    const n = Math.min(len - done, Number(PAGE_SIZE_N - (at % PAGE_SIZE_N)));
    out.set(sys.memory.read(physAddr(phys(at)), n), done);
    done += n;
  }
  return out;
}

/** Bytes of every buffer the contracts export (a multiple of the accelerators' 64 KiB DRAM pages). */
export const SIZE = 256n << 10n;
/** Bytes of one DMA probe of a contract. */
export const PROBE = 64;
/** Where the contracts probe a buffer: its first, middle and last PROBE bytes. */
export const PROBES: readonly bigint[] = [0n, SIZE / 2n - BigInt(PROBE / 2), SIZE - BigInt(PROBE)];

/** A probe pattern that differs by seed and position (never all zero). */
export function pattern(len: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: len }, (_, i) => (seed * 37 + i * 11 + 1) & 0xff || 0xa5);
}

export const same = (a: Uint8Array, b: Uint8Array): boolean =>
  a.length === b.length && a.every((x, i) => x === b[i]);

/** JSON with bigints in hex, for messages. */
export function j(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? `0x${x.toString(16)}` : x));
}
