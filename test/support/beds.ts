/**
 * Machines and setups the driver tests (src/core/kernel/drivers, dma-buf, leaks) and the
 * benchmarks share, built on `topo()`:
 *
 * - endpoints: `MLX5`, `habanalabs(bar, size)`, `amdgpu(bars)`;
 * - `switchMachine`: an exporter and a peer on two downstream ports of one PCIe switch, a third
 *   device behind another root port — the flagship P2P layout;
 * - `rootPortMachine`: one endpoint behind each of a few root ports (machine B of the RDMA tests);
 * - `remoteNicBed` + `connectQps`: the remote side of the two-machine RDMA tests and the QP pair;
 * - `exportAccelMemory`: accelerator DRAM allocated, mapped and exported as a dma-buf fd;
 * - `writeFromHostMr`: an RDMA WRITE of bytes put into a host MR first;
 * - `P2P_IMPORTER`, `RW`: the importer ops and MR access most tests use.
 *
 * Only what several files build the same way lives here; a machine that is one test file's
 * subject stays in that file.
 */
import type { IommuMode, MachineDescription } from "../../src/core/hw/machine.ts";
import type { DmaBufAttachOps } from "../../src/core/kernel/dma-buf/attachment.ts";
import { DmaBufCore } from "../../src/core/kernel/dma-buf/dma-buf.ts";
import { O_CLOEXEC, O_RDWR, Process } from "../../src/core/kernel/dma-buf/file.ts";
import {
  type AccelDevice,
  HL_MEM_OP_ALLOC,
  HL_MEM_OP_EXPORT_DMABUF_FD,
  HL_MEM_OP_MAP,
} from "../../src/core/kernel/drivers/accel.ts";
import {
  hostMrWrite,
  IBV_ACCESS_LOCAL_WRITE,
  IBV_ACCESS_REMOTE_READ,
  IBV_ACCESS_REMOTE_WRITE,
  type IbvMr,
  type IbvQp,
  RdmaDevice,
  type RdmaOptions,
  type WorkCompletion,
} from "../../src/core/kernel/drivers/rdma.ts";
import { PROFILES } from "../../src/core/kernel/profile.ts";
import { System } from "../../src/core/kernel/system.ts";
import { Tracer } from "../../src/core/kernel/trace.ts";
import { must } from "./check.ts";
import { type FnOpts, topo } from "./topology.ts";

const MiB = 1n << 20n;

// ── endpoints ────────────────────────────────────────────────────────────────────────────────

/** An endpoint's identity, driver and BARs: `topo().ep()` options without the parent. */
export type Endpoint = Omit<FnOpts, "parent">;

/** A Mellanox ConnectX NIC bound to mlx5_core. */
export const MLX5: Endpoint = { id: "15b3:101d", driver: "mlx5_core" };

/** A habanalabs accelerator: 1 MiB of registers at BAR 0, its DRAM window (`bar`, `size`) at BAR 2. */
export function habanalabs(bar: bigint, size: bigint): Endpoint {
  return {
    id: "1da3:1020",
    driver: "habanalabs",
    bars: [
      { index: 0, start: 0x90_0000_0000n, size: MiB },
      { index: 2, start: bar, size },
    ],
  };
}

/** An amdgpu GPU with these memory BARs (VRAM at BAR 0 where the tests give one). */
export function amdgpu(bars?: FnOpts["bars"]): Endpoint {
  return { id: "1002:740f", driver: "amdgpu", ...(bars ? { bars } : {}) };
}

// ── machines ─────────────────────────────────────────────────────────────────────────────────

export interface SwitchMachineOpts {
  /** 03:00.0, below downstream port 02:00.0: the device under test (usually the exporter). */
  readonly exporter: Endpoint;
  /** 04:00.0, below downstream port 02:01.0 of the same switch; default an mlx5 NIC. */
  readonly peer?: Endpoint;
  /** 05:00.0, behind root port 00:02.0; default an mlx5 NIC; null: no second root port. */
  readonly far?: Endpoint | null;
  /** The host bridge: 8086:2020 is on the P2PDMA allowlist, 8086:1234 (the default) is not. */
  readonly hostId?: string | undefined;
  /** ACS control word of both downstream ports; default none (no ACS capability). */
  readonly acs?: number | null | undefined;
  /** Default "off". */
  readonly iommu?: IommuMode | undefined;
  /** A host-bridge window over [cpuStart, cpuStart + size) with bus = cpu + busOffset. */
  readonly window?:
    | { readonly cpuStart: bigint; readonly size: bigint; readonly busOffset: bigint }
    | undefined;
}

/**
 * A PCIe switch (01:00.0) below root port 00:01.0 with `exporter` (03:00.0) and `peer`
 * (04:00.0) on two downstream ports, and `far` (05:00.0) behind root port 00:02.0: exporter and
 * peer are a switch-local pair (P2P unless ACS redirects), exporter and far meet only at the root
 * complex (P2P only through an allowlisted host bridge).
 */
export function switchMachine(o: SwitchMachineOpts): MachineDescription {
  let t = topo()
    .hostFn("00:00.0", o.hostId ?? "8086:1234")
    .rootPort("00:01.0")
    .usp("01:00.0", { parent: "00:01.0" })
    .dsp("02:00.0", { parent: "01:00.0", acs: o.acs ?? null })
    .dsp("02:01.0", { parent: "01:00.0", acs: o.acs ?? null })
    .ep("03:00.0", { ...o.exporter, parent: "02:00.0" })
    .ep("04:00.0", { ...(o.peer ?? MLX5), parent: "02:01.0" });
  const far = o.far === undefined ? MLX5 : o.far;
  if (far) t = t.rootPort("00:02.0").ep("05:00.0", { ...far, parent: "00:02.0" });
  const d = t.iommu(o.iommu ?? "off").build();
  if (!o.window) return d;
  const { cpuStart, size, busOffset } = o.window;
  const windows = [{ cpuStart, size, busStart: cpuStart + busOffset }];
  return { ...d, hostBridges: [{ domain: 0, bus: 0, windows }] };
}

/**
 * One endpoint behind each root port: the n-th (from 0) at 0N:00.0 behind root port 00:0N.0
 * (N = n + 1), no switch; host bridge `hostId` (default 8086:2020, allowlisted), IOMMU default
 * "dma".
 */
export function rootPortMachine(
  eps: readonly Endpoint[],
  o: { hostId?: string; iommu?: IommuMode } = {},
): MachineDescription {
  const t = topo().hostFn("00:00.0", o.hostId ?? "8086:2020");
  eps.forEach((ep, i) => {
    const n = (i + 1).toString(16).padStart(2, "0");
    t.rootPort(`00:${n}.0`).ep(`${n}:00.0`, { ...ep, parent: `00:${n}.0` });
  });
  return t.iommu(o.iommu ?? "dma").build();
}

// ── RDMA between two machines ────────────────────────────────────────────────────────────────

/** LOCAL_WRITE | REMOTE_WRITE | REMOTE_READ: what a peer's MR needs for WRITE and READ. */
export const RW = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

export interface RemoteNicOpts {
  /** Default mainline. */
  readonly profile?: "6.1" | "mainline";
  /** CONFIG_DMABUF_MOVE_NOTIFY of B's dma-buf core (its default when not given). */
  readonly moveNotify?: boolean;
  readonly rdma?: RdmaOptions;
  /** The process name; default "trainer-b". */
  readonly proc?: string;
}

/**
 * Machine B of the two-machine RDMA tests: one mlx5 NIC (01:00.0) behind one root port of an
 * allowlisted host bridge, IOMMU on (DMA domain); its own dma-buf core, a traced system, a process.
 */
export function remoteNicBed(o: RemoteNicOpts = {}) {
  const tracer = new Tracer(true);
  const sys = new System(rootPortMachine([MLX5]), { tracer });
  const core = new DmaBufCore({
    profile: PROFILES[o.profile ?? "mainline"],
    ...(o.moveNotify !== undefined ? { moveNotify: o.moveNotify } : {}),
  });
  const nic = new RdmaDevice(sys, core, "01:00.0", o.rdma ?? {});
  const proc = new Process(o.proc ?? "trainer-b");
  return { sys, core, nic, proc, tracer };
}

/**
 * Opens both NICs' uverbs devices (A's, then B's), allocates a PD and creates a QP on each, and
 * connects B's QP to A's: B posts, A's memory is the remote side.
 */
export function connectQps(
  a: { readonly nic: RdmaDevice; readonly proc: Process },
  b: { readonly nic: RdmaDevice; readonly proc: Process },
) {
  const ctxA = must(a.nic.open(a.proc), "open A");
  const ctxB = must(b.nic.open(b.proc), "open B");
  const pdA = ctxA.allocPd();
  const pdB = ctxB.allocPd();
  const qpA = ctxA.createQp(pdA);
  const qpB = ctxB.createQp(pdB);
  qpB.connect(qpA);
  return { ctxA, ctxB, pdA, pdB, qpA, qpB };
}

/**
 * An RDMA WRITE of `data`: put at the start of the host MR `local` (hostMrWrite), then written by
 * `qp` from there to `remoteAddr` of the remote MR with `rkey`.
 */
export function writeFromHostMr(
  qp: IbvQp,
  local: IbvMr,
  data: Uint8Array,
  remoteAddr: bigint,
  rkey: number,
): WorkCompletion {
  hostMrWrite(local, 0n, data);
  return qp.postWrite({
    local,
    localAddr: local.addr,
    length: BigInt(data.length),
    remoteAddr,
    rkey,
  });
}

// ── exporters and importers ──────────────────────────────────────────────────────────────────

/** A dynamic importer that may do P2P and ignores move_notify. */
export const P2P_IMPORTER: DmaBufAttachOps = { allow_peer2peer: true, move_notify: () => {} };

/**
 * HL_MEM_OP_ALLOC of `mapSize` bytes of device DRAM, HL_MEM_OP_MAP, and HL_MEM_OP_EXPORT_DMABUF_FD
 * of its first `size` bytes (O_RDWR | O_CLOEXEC), by `proc`: the handle and device VA, the fd and
 * its dma-buf, the DRAM pages behind the export (`pack`) and `barOf(off)`, the CPU physical (BAR)
 * address of byte `off` of the export.
 */
export function exportAccelMemory(hl: AccelDevice, proc: Process, size: bigint, mapSize = size) {
  const a = must(hl.memIoctl(proc, { op: HL_MEM_OP_ALLOC, mem_size: mapSize }), "HL_MEM_OP_ALLOC");
  const m = must(hl.memIoctl(proc, { op: HL_MEM_OP_MAP, handle: a.handle }), "HL_MEM_OP_MAP");
  const e = must(
    hl.memIoctl(proc, {
      op: HL_MEM_OP_EXPORT_DMABUF_FD,
      addr: m.device_virt_addr,
      mem_size: size,
      offset: 0n,
      flags: O_RDWR | O_CLOEXEC,
    }),
    "HL_MEM_OP_EXPORT_DMABUF_FD",
  );
  const pack = hl.idr.get(a.handle)!;
  const barOf = (off: bigint) => {
    const page = pack.pages[Number(off / pack.page_size)]!;
    return hl.barAddress(page + (off % pack.page_size));
  };
  const dmabuf = proc.fds.get(e.fd)!.file.private_data!;
  return { handle: a.handle, va: m.device_virt_addr, fd: e.fd, dmabuf, pack, barOf };
}
