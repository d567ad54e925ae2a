/**
 * @module sim-machine
 * The scripting API: a booted machine with its drivers bound and processes that make system
 * calls, for people who write TypeScript instead of scenario files.
 *
 * @example
 * const server = new SimMachine(desc, { name: "server" });
 * const trainer = server.process("trainer");
 * const accel = trainer.open("/dev/accel/accel0");
 * const { va } = trainer.accelAlloc(accel, 2n << 20n);
 * const buf = trainer.accelExport(accel, { addr: va, size: 2n << 20n });
 *
 * Calls that fail in the kernel throw `ErrnoError` (errno name, the kernel's reason); nothing else
 * throws for a "no" answer. Drivers are bound by what a function is (its driver, else its class):
 * habanalabs-style accelerators appear as /dev/accel/accelN, amdgpu-style GPUs as /dev/dri/renderDN,
 * functions bound to vfio-pci as /dev/vfio/devices/vfioN, RDMA NICs as /dev/infiniband/uverbsN.
 */

import { explainPair } from "../analysis/p2p.ts";
import { physAddr } from "../hw/address.ts";
import type { MachineDescription, PciFunction } from "../hw/machine.ts";
import { type DmaBuf, DmaBufCore } from "../kernel/dma-buf/dma-buf.ts";
import {
  dmaBufFd,
  dmaBufGet,
  dmaBufPut,
  O_CLOEXEC,
  O_RDWR,
  Process,
  sendFd,
  sysClose,
  sysDup,
  sysExit,
} from "../kernel/dma-buf/file.ts";
import { SysmemExporter } from "../kernel/dma-buf/sysmem-exporter.ts";
import {
  type AccelCopyResult,
  AccelDevice,
  type AccelImport,
  type AccelOptions,
  HL_MEM_OP_ALLOC,
  HL_MEM_OP_EXPORT_DMABUF_FD,
  HL_MEM_OP_MAP,
  HL_MEM_OP_UNMAP,
  hlMemIoctl,
} from "../kernel/drivers/accel.ts";
import {
  AMDGPU_GEM_DOMAIN_GTT,
  AMDGPU_GEM_DOMAIN_VRAM,
  type GpuCopyResult,
  GpuDevice,
  type GpuFile,
  type GpuOptions,
} from "../kernel/drivers/gpu.ts";
import { type IbvContext, RdmaDevice, type RdmaOptions } from "../kernel/drivers/rdma.ts";
import {
  PCI_COMMAND,
  PCI_COMMAND_MEMORY,
  VfioPciDevice,
  vfioDeviceFeatureDmaBuf,
} from "../kernel/drivers/vfio.ts";
import type { Errno, KResult } from "../kernel/errno.ts";
import { type Leak, type LeakSource, leakReport } from "../kernel/leaks.ts";
import { PAGE_SIZE_N } from "../kernel/mm/page.ts";
import type { PciViewOptions } from "../kernel/pci/pci-view.ts";
import { PROFILES } from "../kernel/profile.ts";
import { System } from "../kernel/system.ts";
import { Tracer } from "../kernel/trace.ts";
import { KernelImporter, type KernelImporterOptions } from "./kernel-importer.ts";

/** A system call or kernel call that failed: the errno and the kernel's reason. */
export class ErrnoError extends Error {
  readonly errno: Errno;
  readonly reason: string;

  constructor(errno: Errno, reason: string, what: string) {
    super(`${what}: ${errno}${reason ? ` (${reason})` : ""}`);
    this.name = "ErrnoError";
    this.errno = errno;
    this.reason = reason;
  }
}

/** A script or scenario asked for something that does not exist (a device, an fd of the wrong kind). */
export class SimUsageError extends Error {
  override name = "SimUsageError";
}

/** The value of a kernel result, or an ErrnoError naming `what` failed. */
export function must<T>(r: KResult<T>, what: string): T {
  if (r.ok) return r.value;
  throw new ErrnoError(r.errno, r.reason ?? "", what);
}

export interface SimMachineOptions extends Omit<PciViewOptions, "profile"> {
  /** Shown in traces and reports; default the description's name. */
  readonly name?: string;
  /** Kernel profile id (`6.1`, `mainline`); default mainline. */
  readonly kernel?: string;
  /** CONFIG_DMABUF_DEBUG: importers get page-less tables (how depends on the profile). */
  readonly dmabufDebug?: boolean;
  /** CONFIG_DMABUF_MOVE_NOTIFY: dynamic importers are not pinned on map. */
  readonly moveNotify?: boolean;
  /** CONFIG_DMA_API_DEBUG. */
  readonly dmaDebug?: boolean;
  /** How the accelerator driver maps and validates (every accelerator of the machine). */
  readonly accel?: AccelOptions;
  /** How the RDMA driver registers dma-buf MRs (every NIC of the machine). */
  readonly rdma?: RdmaOptions;
  /** VRAM/GTT sizes of every GPU of the machine. */
  readonly gpu?: GpuOptions;
  /** Share a tracer (two machines in one scenario); default a new, enabled one. */
  readonly tracer?: Tracer;
}

/** PCI class codes (base class, subclass) the driver binding falls back on. */
const CLASS_ACCEL = 0x12; // processing accelerators
const CLASS_NET_INFINIBAND = 0x0207;

const isAccel = (fn: PciFunction): boolean =>
  fn.desc.driver === "habanalabs" ||
  (fn.desc.driver == null && (fn.desc.classCode ?? 0) >> 16 === CLASS_ACCEL);
const CLASS_DISPLAY = 0x03;
const VENDOR_AMD_ATI = 0x1002;
const isGpu = (fn: PciFunction): boolean =>
  fn.desc.driver === "amdgpu" ||
  (fn.desc.driver == null &&
    fn.desc.vendor === VENDOR_AMD_ATI &&
    (fn.desc.classCode ?? 0) >> 16 === CLASS_DISPLAY);
/**
 * RDMA NICs the machine binds, with the flow of their dma-buf MRs: mlx5 registers ODP-style
 * (move_notify invalidates). An InfiniBand-class function without a driver is taken as mlx5-like.
 * Not bound: irdma (no dma-buf MRs in 6.1; mainline patches show both a pinned and a dynamic
 * form) and bnxt (bnxt_en is the Ethernet driver; bnxt_re is an auxiliary device a capture does
 * not show). `rdma: { odp: false }` gives any NIC the pinned flow of EFA-style drivers.
 */
const RDMA_DRIVERS: Readonly<Record<string, { odp: boolean }>> = {
  mlx5_core: { odp: true },
};
const rdmaFlavour = (fn: PciFunction): { odp: boolean } | undefined =>
  fn.desc.driver != null
    ? RDMA_DRIVERS[fn.desc.driver]
    : (fn.desc.classCode ?? 0) >> 8 === CLASS_NET_INFINIBAND
      ? { odp: true }
      : undefined;

/** One booted machine: the System, the dma-buf core, its bound drivers and its processes. */
export class SimMachine implements LeakSource {
  readonly name: string;
  readonly sys: System;
  readonly core: DmaBufCore;
  readonly tracer: Tracer;
  /** Accelerators by node name (accel0, ...). */
  readonly accels = new Map<string, AccelDevice>();
  /** RDMA devices by ibv name (mlx5_0, ...). */
  readonly nics = new Map<string, RdmaDevice>();
  /** amdgpu-style GPUs by render node name (renderD128, ...). */
  readonly gpus = new Map<string, GpuDevice>();
  /** Functions bound to vfio-pci, by cdev name (vfio0, ...). */
  readonly vfio = new Map<string, VfioPciDevice>();
  readonly #procs = new Map<string, SimProcess>();
  readonly #importers: KernelImporter[] = [];
  readonly #heaps: SysmemExporter[] = [];
  /** Which PCI function provides each exported buffer's memory (null: host RAM). */
  readonly #providers = new WeakMap<DmaBuf, PciFunction | null>();
  readonly #opts: SimMachineOptions;

  constructor(desc: MachineDescription, opts: SimMachineOptions = {}) {
    this.#opts = opts;
    this.name = opts.name ?? desc.name ?? "machine";
    this.tracer = opts.tracer ?? new Tracer(true);
    const profile = PROFILES[(opts.kernel ?? "mainline") as keyof typeof PROFILES];
    if (!profile)
      throw new SimUsageError(
        `unknown kernel profile "${opts.kernel}" (known: ${Object.keys(PROFILES).join(", ")})`,
      );
    const { name: _n, kernel: _k, accel: _a, rdma: _r, gpu: _g, tracer: _t, ...pci } = opts;
    this.sys = new System(desc, {
      ...pci,
      profile: profile.id,
      tracer: this.tracer,
      ...(opts.dmaDebug ? { dmaDebug: true } : {}),
    });
    this.core = new DmaBufCore({
      profile,
      tracer: this.tracer,
      addrKind: (dev, dma, bus) => this.sys.dmaAddrKind(dev, dma, bus),
      debug: opts.dmabufDebug ?? false,
      moveNotify: opts.moveNotify ?? false,
    });
    const accels = this.sys.machine.functions.filter(isAccel);
    const nics = this.sys.machine.functions.filter((fn) => rdmaFlavour(fn) !== undefined);
    accels.forEach((fn, i) => {
      const node = fn.desc.osDevices?.find((d) => /^accel\d+$/.test(d)) ?? `accel${i}`;
      this.accels.set(node, this.#bindAccel(fn, node));
    });
    for (const fn of this.sys.machine.functions.filter(isGpu)) {
      const g = new GpuDevice(this.sys, this.core, fn.name, opts.gpu ?? {});
      this.gpus.set(g.devicePath.slice("/dev/dri/".length), g);
    }
    this.sys.machine.functions
      .filter((fn) => fn.desc.driver === "vfio-pci")
      .forEach((fn, i) => {
        this.vfio.set(`vfio${i}`, new VfioPciDevice(this.sys, this.core, fn.name));
      });
    nics.forEach((fn, i) => {
      const node = fn.desc.osDevices?.find((d) => /^\w+_\d+$/.test(d)) ?? `rdma${i}`;
      this.nics.set(
        node,
        new RdmaDevice(this.sys, this.core, fn.name, {
          ...rdmaFlavour(fn),
          ...opts.rdma,
          name: node,
        }),
      );
    });
  }

  #bindAccel(fn: PciFunction, node: string): AccelDevice {
    return new AccelDevice(this.sys, this.core, fn.name, { ...this.#opts.accel, name: node });
  }

  /** A function by BDF (`0000:18:00.0`, `18:00.0`) or by node name (`accel0`, `mlx5_0`). */
  fn(name: string): PciFunction {
    const a = this.accels.get(name) ?? this.gpus.get(name) ?? this.vfio.get(name);
    if (a) return a.fn;
    const n = this.nics.get(name);
    if (n) return n.dev.fn;
    const full = /^[0-9a-f]{4}:/i.test(name) ? name : `0000:${name}`;
    const f =
      this.sys.machine.byBdf(full.toLowerCase()) ??
      this.sys.machine.functions.find((x) => x.desc.osDevices?.includes(name));
    if (!f) {
      const known = [
        ...this.accels.keys(),
        ...this.gpus.keys(),
        ...this.vfio.keys(),
        ...this.nics.keys(),
      ].join(", ");
      throw new SimUsageError(
        `${this.name}: no device "${name}" (bound devices: ${known || "none"})`,
      );
    }
    return f;
  }

  /** The process named `name`, created (pid assigned) on first use. */
  process(name: string): SimProcess {
    let p = this.#procs.get(name);
    if (!p || p.exited) {
      p = new SimProcess(this, name);
      this.#procs.set(name, p);
    }
    return p;
  }

  get processes(): readonly SimProcess[] {
    return [...this.#procs.values()];
  }

  /** An in-kernel importer driver on `device` (a GPU, NIC or other DMA master). */
  importer(device: string, opts: KernelImporterOptions = {}): KernelImporter {
    const imp = new KernelImporter(this, this.fn(device), opts);
    this.#importers.push(imp);
    return imp;
  }

  /** A device file path to its driver: /dev/accel/accelN, /dev/dri/renderDN, /dev/infiniband/uverbsN. */
  deviceNode(path: string): AccelDevice | RdmaDevice | GpuDevice | VfioPciDevice | undefined {
    const v = /^\/dev\/vfio\/devices\/(vfio\d+)$/.exec(path);
    if (v) return this.vfio.get(v[1]!);
    const a = /^\/dev\/accel\/(accel\d+)$/.exec(path);
    if (a) return this.accels.get(a[1]!);
    const g = /^\/dev\/dri\/(renderD\d+)$/.exec(path);
    if (g) return this.gpus.get(g[1]!);
    const u = /^\/dev\/infiniband\/uverbs(\d+)$/.exec(path);
    if (u) return [...this.nics.values()][Number(u[1])];
    return undefined;
  }

  /**
   * The CPU physical address of byte `off` of a dma-buf's backing, for the exporters this machine
   * binds (the model's view of where the bytes are, not an importer's), or null.
   */
  backingPhys(d: DmaBuf): ((off: bigint) => bigint) | null {
    if (d.priv instanceof SysmemExporter) {
      const ex = d.priv;
      return (off) => ex.phys(off);
    }
    for (const g of this.gpus.values()) {
      const bo = g.boOf(d);
      if (bo) return (off) => bo.phys(off);
    }
    for (const a of this.accels.values()) {
      const f = a.backingPhys(d);
      if (f) return f;
    }
    for (const v of this.vfio.values()) {
      const f = v.backingPhys(d);
      if (f) return f;
    }
    return null;
  }

  /** Remember which function provides an exported buffer (for verdicts in the trace). */
  noteProvider(d: DmaBuf, fn: PciFunction | null): void {
    this.#providers.set(d, fn);
  }

  providerOf(d: DmaBuf): PciFunction | null {
    return this.#providers.get(d) ?? null;
  }

  /** Trace the kernel's P2PDMA verdict for `importer` reaching `provider`'s memory. */
  traceVerdict(provider: PciFunction, importer: PciFunction): void {
    if (!this.tracer.enabled) return;
    const e = explainPair(this.sys.pci, provider, importer);
    const refused = e.mapType === "not-supported";
    this.tracer.emit(
      "p2pdma:verdict",
      `${provider.name} -> ${importer.name}: ${e.mapType}${refused ? "" : `, distance ${e.distance}`}`,
      {
        provider: provider.name,
        client: importer.name,
        mapType: e.mapType,
        distance: e.distance,
        findings: e.findings.map((f) => ({ code: f.code, message: f.message })),
      },
    );
  }

  /** A dma-heap style host buffer (system memory exporter) owned by the kernel until released. */
  newHeapBuffer(size: bigint, flags: number, movable: boolean): SysmemExporter {
    const h = new SysmemExporter(this.sys, {
      size,
      dynamic: movable,
      name: "system",
      flags,
      mmap: true,
      vmap: true,
      cpuAccess: true,
    });
    this.#heaps.push(h);
    return h;
  }

  /** Everything the machine still holds: System, core, drivers, processes, importers. */
  leaks(): Leak[] {
    const sources: LeakSource[] = [
      this.sys,
      this.core,
      ...this.accels.values(),
      ...this.gpus.values(),
      ...this.vfio.values(),
    ];
    sources.push(...this.nics.values(), ...this.#importers, ...this.#heaps, ...this.processes);
    return leakReport(sources);
  }

  /**
   * Unload in-kernel importers, drop the accelerators' imports (they belong to the driver, not to
   * a process) and kill every process still running (end of a scenario).
   */
  shutdown(): void {
    for (const imp of this.#importers) imp.unload();
    for (const a of this.accels.values()) for (const i of [...a.imports]) a.releaseImport(i);
    for (const p of this.#procs.values()) if (!p.exited) p.exit();
  }
}

/** Flags of an accelerator export, as the uAPI takes them. */
export interface AccelExportArgs {
  readonly addr: bigint;
  readonly size: bigint;
  readonly offset?: bigint;
  /** O_RDWR | O_CLOEXEC by default (what hlthunk passes). */
  readonly flags?: number;
}

/** A user process on a SimMachine. Failing calls throw ErrnoError. */
export class SimProcess implements LeakSource {
  readonly machine: SimMachine;
  readonly proc: Process;
  readonly #ibv = new Map<number, IbvContext>();
  readonly #accelFds = new Map<number, AccelDevice>();
  readonly #gpuFiles = new Map<number, GpuFile>();
  readonly #vfioFds = new Map<number, VfioPciDevice>();

  constructor(machine: SimMachine, name: string) {
    this.machine = machine;
    this.proc = new Process(name);
  }

  get name(): string {
    return this.proc.name;
  }

  get exited(): boolean {
    return this.proc.exited;
  }

  /** open(2) of a device node. */
  open(path: string): number {
    const drv = this.machine.deviceNode(path);
    if (!drv) throw new ErrnoError("ENOENT", `no such device node on ${this.machine.name}`, path);
    if (drv instanceof GpuDevice) {
      const f = must(drv.open(this.proc), `open(${path})`);
      this.#gpuFiles.set(f.fd, f);
      return f.fd;
    }
    if (drv instanceof RdmaDevice) {
      const ctx = must(drv.open(this.proc), `open(${path})`);
      this.#ibv.set(ctx.fd, ctx);
      return ctx.fd;
    }
    const fd = must(drv.open(this.proc), `open(${path})`);
    if (drv instanceof VfioPciDevice) this.#vfioFds.set(fd, drv);
    else this.#accelFds.set(fd, drv);
    return fd;
  }

  close(fd: number): void {
    must(sysClose(this.proc, fd), `close(${fd})`);
    this.#ibv.delete(fd);
    this.#accelFds.delete(fd);
    this.#gpuFiles.delete(fd);
    this.#vfioFds.delete(fd);
  }

  dup(fd: number): number {
    return must(sysDup(this.proc, fd), `dup(${fd})`);
  }

  /** Pass `fd` to `to` over a unix socket (SCM_RIGHTS); returns the receiver's fd. */
  sendFd(fd: number, to: SimProcess, opts: { cloexec?: boolean } = {}): number {
    return must(sendFd(this.proc, fd, to.proc, opts), `sendmsg(fd ${fd} -> ${to.name})`);
  }

  exit(): void {
    sysExit(this.proc);
    this.#ibv.clear();
    this.#accelFds.clear();
    this.#gpuFiles.clear();
    this.#vfioFds.clear();
  }

  /** HL_MEM_OP_ALLOC then HL_MEM_OP_MAP through the accelerator fd. */
  accelAlloc(fd: number, size: bigint): { handle: bigint; va: bigint } {
    this.#accel(fd);
    const a = must(
      hlMemIoctl(this.proc, fd, { op: HL_MEM_OP_ALLOC, mem_size: size }),
      "HL_MEM_OP_ALLOC",
    );
    const m = must(
      hlMemIoctl(this.proc, fd, { op: HL_MEM_OP_MAP, handle: a.handle }),
      "HL_MEM_OP_MAP",
    );
    return { handle: a.handle, va: m.device_virt_addr };
  }

  /** HL_MEM_OP_EXPORT_DMABUF_FD: the dma-buf fd. */
  accelExport(fd: number, args: AccelExportArgs): number {
    const dev = this.#accel(fd);
    const out = must(
      hlMemIoctl(this.proc, fd, {
        op: HL_MEM_OP_EXPORT_DMABUF_FD,
        addr: args.addr,
        mem_size: args.size,
        offset: args.offset ?? 0n,
        flags: args.flags ?? O_RDWR | O_CLOEXEC,
      }),
      "HL_MEM_OP_EXPORT_DMABUF_FD",
    );
    const d = this.dmabuf(out.fd);
    this.machine.noteProvider(d, dev.fn);
    return out.fd;
  }

  /** DRM_IOCTL_AMDGPU_GEM_CREATE on a render node fd: the GEM handle. */
  gpuCreateBo(fd: number, size: bigint, domain: "vram" | "gtt"): number {
    const d = domain === "vram" ? AMDGPU_GEM_DOMAIN_VRAM : AMDGPU_GEM_DOMAIN_GTT;
    return must(this.gpuFile(fd).createBo(size, d), "AMDGPU_GEM_CREATE");
  }

  /** DRM_IOCTL_PRIME_HANDLE_TO_FD: the dma-buf fd. */
  gpuExport(fd: number, handle: number): number {
    const f = this.gpuFile(fd);
    const out = must(f.exportFd(handle), "PRIME_HANDLE_TO_FD");
    this.machine.noteProvider(this.dmabuf(out), f.gpu.fn);
    return out;
  }

  /** DRM_IOCTL_PRIME_FD_TO_HANDLE: a dma-buf fd of this process imported on the GPU. */
  gpuImport(fd: number, dmabufFd: number): number {
    return must(this.gpuFile(fd).importFd(dmabufFd), "PRIME_FD_TO_HANDLE");
  }

  /** A copy job on the GPU's SDMA engine between two GEM handles of `fd`. */
  gpuCopy(fd: number, src: number, dst: number, length: bigint): GpuCopyResult {
    return must(this.gpuFile(fd).copy(src, 0n, dst, 0n, length), "AMDGPU_CS (SDMA copy)");
  }

  /** The open render node behind `fd`. */
  gpuFile(fd: number): GpuFile {
    const f = this.#gpuFiles.get(fd);
    if (!f) throw new ErrnoError("ENOTTY", `fd ${fd} is not an open GPU render node`, "ioctl");
    return f;
  }

  /** VFIO_DEVICE_FEATURE_DMA_BUF: one range of a BAR as a dma-buf; the dma-buf fd. */
  vfioExport(fd: number, bar: number, offset: bigint, length: bigint): number {
    const dev = this.#vfio(fd);
    const out = must(
      vfioDeviceFeatureDmaBuf(this.proc, fd, {
        region_index: bar,
        open_flags: O_RDWR | O_CLOEXEC,
        flags: 0,
        nr_ranges: 1,
        dma_ranges: [{ offset, length }],
      }),
      "VFIO_DEVICE_FEATURE_DMA_BUF",
    );
    this.machine.noteProvider(this.dmabuf(out), dev.fn);
    return out;
  }

  /** Writes PCI_COMMAND through the vfio config region: memory decode on or off. */
  vfioMemory(fd: number, enable: boolean): void {
    const dev = this.#vfio(fd);
    const cmd = enable ? dev.command | PCI_COMMAND_MEMORY : dev.command & ~PCI_COMMAND_MEMORY;
    must(dev.configWrite(this.proc, fd, PCI_COMMAND, cmd), "pwrite(PCI_COMMAND)");
  }

  #vfio(fd: number): VfioPciDevice {
    const d = this.#vfioFds.get(fd);
    if (!d) throw new ErrnoError("ENOTTY", `fd ${fd} is not an open vfio device`, "ioctl");
    return d;
  }

  /** A system-memory dma-buf (DMA_HEAP_IOCTL_ALLOC on /dev/dma_heap/system). */
  heapAlloc(size: bigint, opts: { flags?: number; movable?: boolean } = {}): number {
    const flags = opts.flags ?? O_RDWR | O_CLOEXEC;
    const h = this.machine.newHeapBuffer(size, flags, opts.movable ?? false);
    const d = must(h.export(this.machine.core), "DMA_HEAP_IOCTL_ALLOC");
    const fd = dmaBufFd(this.proc, d, flags);
    if (!fd.ok) dmaBufPut(d);
    this.machine.noteProvider(d, null);
    return must(fd, "DMA_HEAP_IOCTL_ALLOC");
  }

  /** The dma-buf behind `fd` (a kernel peek: no reference is kept). */
  dmabuf(fd: number): DmaBuf {
    const d = must(dmaBufGet(this.proc, fd), `dma_buf_get(${fd})`);
    dmaBufPut(d);
    return d;
  }

  /** The verbs context opened on `fd`. */
  ibv(fd: number): IbvContext {
    const c = this.#ibv.get(fd);
    if (!c) throw new ErrnoError("EBADF", `fd ${fd} is not an open uverbs device`, "ibv");
    return c;
  }

  /** The accelerator imports the dma-buf behind `dmabufFd` (a model: habanalabs cannot). */
  accelImport(fd: number, dmabufFd: number): AccelImport {
    return must(this.#accel(fd).importDmabuf(this.proc, dmabufFd), "accel import");
  }

  /** A DMA engine job between HBM at device VA `va` and an import. */
  accelCopy(
    fd: number,
    imp: AccelImport,
    va: bigint,
    length: bigint,
    dir: "hbm-to-import" | "import-to-hbm",
  ): AccelCopyResult {
    return must(this.#accel(fd).dmaCopy(imp, 0n, va, length, dir), "accel DMA copy");
  }

  /** HL_MEM_OP_UNMAP of a device VA. */
  accelUnmap(fd: number, va: bigint): void {
    this.#accel(fd);
    must(
      hlMemIoctl(this.proc, fd, { op: HL_MEM_OP_UNMAP, device_virt_addr: va }),
      "HL_MEM_OP_UNMAP",
    );
  }

  /** The accelerator an fd was opened on. */
  accelOf(fd: number): AccelDevice {
    return this.#accel(fd);
  }

  #accel(fd: number): AccelDevice {
    if (!this.proc.peek(fd))
      throw new ErrnoError("EBADF", `fd ${fd} is not open in ${this.name}`, "ioctl");
    const a = this.#accelFds.get(fd);
    if (!a) throw new ErrnoError("ENOTTY", `fd ${fd} is not an accelerator device`, "ioctl");
    return a;
  }

  leaks(): readonly Leak[] {
    return this.proc.leaks();
  }
}

/** `length` bytes from `off` of a backing given by `phys` (contiguous within each 4 KiB page). */
export function readPhys(
  sys: System,
  phys: (off: bigint) => bigint,
  off: bigint,
  length: number,
): Uint8Array {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const at = off + BigInt(done);
    const n = Math.min(length - done, Number(PAGE_SIZE_N - (at % PAGE_SIZE_N)));
    out.set(sys.memory.read(physAddr(phys(at)), n), done);
    done += n;
  }
  return out;
}
