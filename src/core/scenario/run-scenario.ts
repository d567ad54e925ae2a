/**
 * @module run-scenario
 * Runs a scenario on SimMachines: each step is a system call or a device action; its outcome
 * (a value or an errno) is checked against the step's expectation, the kernel trace it produced
 * is kept with it, and at the end every machine is shut down (processes killed, in-kernel
 * importers unloaded) and checked for leaks. Pure: machine descriptions come in loaded.
 */

import type { MachineDescription } from "../hw/machine.ts";
import type { DmaBuf } from "../kernel/dma-buf/dma-buf.ts";
import { dmaBufIsDynamic } from "../kernel/dma-buf/dma-buf.ts";
import { O_CLOEXEC, O_RDONLY, O_RDWR, O_WRONLY } from "../kernel/dma-buf/file.ts";
import { SysmemExporter } from "../kernel/dma-buf/sysmem-exporter.ts";
import type { AccelDevice, AccelImport } from "../kernel/drivers/accel.ts";
import {
  hostMrRead,
  hostMrWrite,
  IBV_ACCESS_LOCAL_WRITE,
  IBV_ACCESS_RELAXED_ORDERING,
  IBV_ACCESS_REMOTE_ATOMIC,
  IBV_ACCESS_REMOTE_READ,
  IBV_ACCESS_REMOTE_WRITE,
  type IbvContext,
  type IbvMr,
  type IbvPd,
  type IbvQp,
} from "../kernel/drivers/rdma.ts";
import type { Errno } from "../kernel/errno.ts";
import type { Leak } from "../kernel/leaks.ts";
import { type TraceEvent, Tracer } from "../kernel/trace.ts";
import type { Import, KernelImporter } from "../sim/kernel-importer.ts";
import {
  ErrnoError,
  must,
  readPhys,
  SimMachine,
  type SimProcess,
  SimUsageError,
} from "../sim/sim-machine.ts";
import type { Scenario, ScenarioMachine, ScenarioStep, StepExpect } from "./scenario-doc.ts";

/** What one step did and whether that is what the scenario expected. */
export interface StepResult {
  readonly index: number;
  readonly do: ScenarioStep["do"];
  readonly line?: number;
  readonly machine: string;
  readonly process?: string;
  readonly note?: string;
  /** `ok` or the errno the kernel returned. */
  readonly outcome: "ok" | Errno;
  /** A one-line summary of the result (`fd 5`, `3 segments, iova`, `IBV_WC_SUCCESS, 2 MiB`). */
  readonly summary: string;
  /** Expectations that failed, one line each; empty when the step passed. */
  readonly failures: readonly string[];
  readonly events: readonly TraceEvent[];
  /** Bytes this step moved by DMA. */
  readonly bytes: bigint;
}

export interface ScenarioResult {
  readonly name: string;
  readonly file: string;
  readonly steps: readonly StepResult[];
  /** Events of the end-of-scenario shutdown (process exit, importer unload). */
  readonly shutdown: readonly TraceEvent[];
  /** What was still alive after shutdown, by machine. */
  readonly leaks: readonly (Leak & { readonly machine: string })[];
  readonly passed: boolean;
  readonly bytesMoved: bigint;
}

type Binding =
  | { readonly kind: "fd"; readonly m: SimMachine; readonly p: SimProcess; readonly fd: number }
  | {
      readonly kind: "mem";
      readonly m: SimMachine;
      readonly accel: AccelDevice;
      readonly handle: bigint;
      readonly va: bigint;
      readonly size: bigint;
    }
  | {
      readonly kind: "import";
      readonly m: SimMachine;
      readonly imp: Import;
      readonly importer: KernelImporter;
    }
  | {
      readonly kind: "accel-import";
      readonly m: SimMachine;
      readonly p: SimProcess;
      readonly fd: number;
      readonly imp: AccelImport;
    }
  | {
      readonly kind: "ctx";
      readonly m: SimMachine;
      readonly p: SimProcess;
      readonly fd: number;
      readonly ctx: IbvContext;
    }
  | {
      readonly kind: "mr";
      readonly m: SimMachine;
      readonly ctx: IbvContext;
      readonly mr: IbvMr;
      readonly dmabuf?: DmaBuf;
    }
  | { readonly kind: "qp"; readonly m: SimMachine; readonly qp: IbvQp }
  | {
      readonly kind: "bo";
      readonly m: SimMachine;
      readonly p: SimProcess;
      readonly fd: number;
      readonly handle: number;
      readonly size: bigint;
    };

const ACCESS: Record<string, number> = {
  LOCAL_WRITE: IBV_ACCESS_LOCAL_WRITE,
  REMOTE_WRITE: IBV_ACCESS_REMOTE_WRITE,
  REMOTE_READ: IBV_ACCESS_REMOTE_READ,
  REMOTE_ATOMIC: IBV_ACCESS_REMOTE_ATOMIC,
  RELAXED_ORDERING: IBV_ACCESS_RELAXED_ORDERING,
};
const OFLAGS: Record<string, number> = { O_RDWR, O_RDONLY, O_WRONLY, O_CLOEXEC };

/** A step's value as the checks see it. */
interface Outcome {
  summary: string;
  bytes?: bigint;
  peer2peer?: boolean;
  segments?: { kind: string }[];
  oops?: boolean;
  fault?: boolean;
  status?: string;
  equal?: boolean;
}

/** Deterministic bytes for fills and DMA writes (xorshift32 from `seed`). */
export function patternBytes(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

const MAX_CHECK_BYTES = 1 << 30;

class Runner {
  readonly machines = new Map<string, SimMachine>();
  readonly names = new Map<string, Binding>();
  readonly tracer = new Tracer(true);
  readonly first: string;
  readonly #pds = new Map<IbvContext, IbvPd>();

  constructor(sc: Scenario, descs: ReadonlyMap<string, MachineDescription>) {
    for (const [name, m] of sc.machines) {
      const desc = descs.get(name);
      if (!desc) throw new Error(`scenario machine "${name}" was not loaded`);
      this.machines.set(name, new SimMachine(desc, machineOptions(name, m, this.tracer)));
    }
    this.first = [...sc.machines.keys()][0]!;
  }

  machine(s: ScenarioStep): SimMachine {
    return this.machines.get(s.machine ?? this.first)!;
  }

  get<K extends Binding["kind"]>(name: string, kind: K): Extract<Binding, { kind: K }> {
    const b = this.names.get(name);
    if (!b) throw new SimUsageError(`"${name}" is not bound: the step that binds it failed`);
    if (b.kind !== kind)
      throw new SimUsageError(`"${name}" is ${article(b.kind)}, this step needs ${article(kind)}`);
    return b as Extract<Binding, { kind: K }>;
  }

  proc(s: ScenarioStep): SimProcess {
    return this.machine(s).process(s.process ?? "main");
  }

  /** One protection domain per verbs context, allocated on first use. */
  pd(ctx: IbvContext): IbvPd {
    let pd = this.#pds.get(ctx);
    if (!pd) {
      pd = ctx.allocPd();
      this.#pds.set(ctx, pd);
    }
    return pd;
  }

  bind(s: ScenarioStep, b: Binding): void {
    if (s.as !== undefined) this.names.set(s.as, b);
  }

  run(s: ScenarioStep): Outcome {
    const m = this.machine(s);
    switch (s.do) {
      case "open": {
        const p = this.proc(s);
        const fd = p.open(s.path);
        if (s.path.startsWith("/dev/infiniband/"))
          this.bind(s, { kind: "ctx", m, p, fd, ctx: p.ibv(fd) });
        else this.bind(s, { kind: "fd", m, p, fd });
        return { summary: `fd ${fd}` };
      }
      case "close": {
        const b = this.names.get(s.fd);
        if (b?.kind === "ctx" || b?.kind === "fd") b.p.close(b.fd);
        else throw new SimUsageError(`"${s.fd}" is not a file descriptor`);
        return { summary: `closed fd ${b.fd}` };
      }
      case "send-fd": {
        const b = this.get(s.fd, "fd");
        const to = b.m.process(s.to);
        const fd = b.p.sendFd(b.fd, to);
        this.bind(s, { kind: "fd", m: b.m, p: to, fd });
        return { summary: `${s.to} received fd ${fd}` };
      }
      case "exit": {
        this.proc(s).exit();
        return { summary: `${s.process ?? "main"} exited` };
      }
      case "accel-alloc": {
        const b = this.get(s.fd, "fd");
        const { handle, va } = b.p.accelAlloc(b.fd, s.size);
        const accel = b.p.accelOf(b.fd);
        this.bind(s, { kind: "mem", m: b.m, accel, handle, va, size: s.size });
        return { summary: `handle ${handle}, device VA 0x${va.toString(16)}` };
      }
      case "accel-export": {
        const b = this.get(s.fd, "fd");
        const mem = this.get(s.mem, "mem");
        const flags = s.flags?.reduce((f, n) => f | OFLAGS[n]!, 0);
        const fd = b.p.accelExport(b.fd, {
          addr: mem.accel.exportAddr(mem.handle, mem.va),
          size: s.size ?? mem.size,
          ...(s.offset !== undefined ? { offset: s.offset } : {}),
          ...(flags !== undefined ? { flags } : {}),
        });
        this.bind(s, { kind: "fd", m: b.m, p: b.p, fd });
        return { summary: `dma-buf fd ${fd}` };
      }
      case "accel-unmap": {
        const b = this.get(s.fd, "fd");
        const mem = this.get(s.mem, "mem");
        b.p.accelUnmap(b.fd, mem.va);
        return { summary: `unmapped 0x${mem.va.toString(16)}` };
      }
      case "heap-alloc": {
        const p = this.proc(s);
        const fd = p.heapAlloc(s.size, { movable: s.movable ?? false });
        this.bind(s, { kind: "fd", m, p, fd });
        return { summary: `dma-buf fd ${fd}` };
      }
      case "import": {
        const b = this.get(s.fd, "fd");
        const importer = b.m.importer(s.device, {
          ...(s.dynamic !== undefined ? { dynamic: s.dynamic } : {}),
          ...(s.allowPeer2peer !== undefined ? { allowPeer2peer: s.allowPeer2peer } : {}),
        });
        const imp = importer.attach(b.p, b.fd);
        this.bind(s, { kind: "import", m: b.m, imp, importer });
        return {
          summary: `${importer.name} attached, peer2peer=${imp.attach.peer2peer ? 1 : 0}`,
          peer2peer: imp.attach.peer2peer,
        };
      }
      case "map": {
        const b = this.get(s.import, "import");
        const segs = b.importer.map(b.imp);
        return { summary: segmentSummary(segs), segments: segs };
      }
      case "touch-pages": {
        const b = this.get(s.import, "import");
        const r = b.importer.touchPages(b.imp);
        return r.ok
          ? { summary: `read ${r.pages} page(s) through sg_page()`, oops: false }
          : { summary: r.oops, oops: true };
      }
      case "dma-write": {
        const b = this.get(s.import, "import");
        const data = patternBytes(s.pattern?.seed ?? 1, Number(s.length));
        const fault = b.importer.write(b.imp, s.offset ?? 0n, data);
        return fault
          ? { summary: fault, fault: true }
          : { summary: `wrote ${s.length} bytes`, fault: false, bytes: s.length };
      }
      case "unmap": {
        const b = this.get(s.import, "import");
        b.importer.unmap(b.imp);
        return { summary: "unmapped" };
      }
      case "detach": {
        const b = this.get(s.import, "import");
        b.importer.detach(b.imp);
        return { summary: "detached, reference dropped" };
      }
      case "ibv-reg-mr": {
        const c = this.get(s.ctx, "ctx");
        const pd = this.pd(c.ctx);
        const mr = must(c.ctx.regMr(pd, s.length, accessBits(s.access)), "ibv_reg_mr");
        if (s.fill) hostMrWrite(mr, 0n, patternBytes(s.fill.seed, Number(s.length)));
        this.bind(s, { kind: "mr", m: c.m, ctx: c.ctx, mr });
        return { summary: `lkey 0x${mr.lkey.toString(16)} rkey 0x${mr.rkey.toString(16)}` };
      }
      case "ibv-reg-dmabuf-mr": {
        const c = this.get(s.ctx, "ctx");
        const f = this.get(s.fd, "fd");
        if (f.p !== c.p)
          throw new SimUsageError(
            `"${s.fd}" is an fd of ${f.p.name}, the verbs context belongs to ${c.p.name}: send-fd it first`,
          );
        const dmabuf = f.p.dmabuf(f.fd);
        const provider = f.m.providerOf(dmabuf);
        const nic = c.ctx.device.dev.fn;
        if (provider) f.m.traceVerdict(provider, nic);
        const pd = this.pd(c.ctx);
        const offset = s.offset ?? 0n;
        const mr = must(
          c.ctx.regDmabufMr(pd, offset, s.length, s.iova ?? offset, f.fd, accessBits(s.access)),
          "ibv_reg_dmabuf_mr",
        );
        this.bind(s, { kind: "mr", m: c.m, ctx: c.ctx, mr, dmabuf });
        const att = dmabuf.attachments.find((a) => a.dev.fn === nic);
        return {
          summary: `lkey 0x${mr.lkey.toString(16)} rkey 0x${mr.rkey.toString(16)} over ${dmabuf.describe()}`,
          ...(att ? { peer2peer: att.peer2peer } : {}),
        };
      }
      case "ibv-dereg-mr": {
        const b = this.get(s.mr, "mr");
        must(b.ctx.deregMr(b.mr), "ibv_dereg_mr");
        return { summary: "deregistered" };
      }
      case "ibv-create-qp": {
        const c = this.get(s.ctx, "ctx");
        const qp = c.ctx.createQp(this.pd(c.ctx));
        this.bind(s, { kind: "qp", m: c.m, qp });
        return { summary: `QP created on ${c.ctx.device.name}` };
      }
      case "ibv-connect": {
        const a = this.get(s.a, "qp");
        const b = this.get(s.b, "qp");
        a.qp.connect(b.qp);
        return { summary: "RC connection up" };
      }
      case "rdma-write":
      case "rdma-read": {
        const q = this.get(s.qp, "qp");
        const local = this.get(s.local, "mr");
        const remote = this.get(s.remote, "mr");
        const lo = s.localOffset ?? 0n;
        const ro = s.remoteOffset ?? 0n;
        const length = s.length ?? minBig(local.mr.length - lo, remote.mr.length - ro);
        const wr = {
          local: local.mr,
          localAddr: local.mr.iova + lo,
          length,
          remoteAddr: remote.mr.iova + ro,
          rkey: remote.mr.rkey,
        };
        const wc = s.do === "rdma-write" ? q.qp.postWrite(wr) : q.qp.postRead(wr);
        const ok = wc.status === "IBV_WC_SUCCESS";
        return {
          summary: `${wc.status}${ok ? `, ${wc.byteLen} bytes` : wc.detail ? `: ${wc.detail}` : ""}`,
          status: wc.status,
          ...(ok ? { bytes: wc.byteLen } : {}),
        };
      }
      case "check": {
        const a = this.read(s.a, s.aOffset ?? 0n, s.length);
        const b = this.read(s.b, s.bOffset ?? 0n, s.length);
        const n = Math.min(a.length, b.length);
        let diff = -1;
        for (let i = 0; i < n && diff < 0; i++) if (a[i] !== b[i]) diff = i;
        if (diff < 0 && a.length !== b.length) diff = n;
        return diff < 0
          ? { summary: `${n} bytes equal`, equal: true }
          : { summary: `differ at byte ${diff}`, equal: false };
      }
      case "gpu-alloc": {
        const b = this.get(s.fd, "fd");
        const handle = b.p.gpuCreateBo(b.fd, s.size, s.domain);
        this.bind(s, { kind: "bo", m: b.m, p: b.p, fd: b.fd, handle, size: s.size });
        const bo = b.p.gpuFile(b.fd).bo(handle);
        return { summary: `GEM handle ${handle}${bo ? `, placed in ${bo.placement}` : ""}` };
      }
      case "gpu-export": {
        const b = this.get(s.fd, "fd");
        const bo = this.get(s.bo, "bo");
        const fd = b.p.gpuExport(b.fd, bo.handle);
        this.bind(s, { kind: "fd", m: b.m, p: b.p, fd });
        return { summary: `dma-buf fd ${fd}` };
      }
      case "vfio-export": {
        const b = this.get(s.fd, "fd");
        const fd = b.p.vfioExport(b.fd, s.bar, s.offset ?? 0n, s.length);
        this.bind(s, { kind: "fd", m: b.m, p: b.p, fd });
        return { summary: `dma-buf fd ${fd} over BAR${s.bar}` };
      }
      case "vfio-memory": {
        const b = this.get(s.fd, "fd");
        b.p.vfioMemory(b.fd, s.enable);
        return { summary: `memory decode ${s.enable ? "on" : "off"}` };
      }
      case "gpu-import": {
        const g = this.get(s.fd, "fd");
        const b = this.get(s.buf, "fd");
        if (b.p !== g.p)
          throw new SimUsageError(`"${s.buf}" is an fd of ${b.p.name}, not of ${g.p.name}`);
        const handle = g.p.gpuImport(g.fd, b.fd);
        const size = g.p.dmabuf(b.fd).size;
        this.bind(s, { kind: "bo", m: g.m, p: g.p, fd: g.fd, handle, size });
        return { summary: `GEM handle ${handle} for ${g.p.dmabuf(b.fd).describe()}` };
      }
      case "gpu-copy": {
        const g = this.get(s.fd, "fd");
        const src = this.get(s.src, "bo");
        const dst = this.get(s.dst, "bo");
        const r = g.p.gpuCopy(g.fd, src.handle, dst.handle, s.length);
        const kinds = [...new Set([...r.src.kinds, ...r.dst.kinds])];
        return {
          summary: `SDMA copied ${r.bytes} bytes: ${r.src.via} -> ${r.dst.via}`,
          bytes: r.bytes,
          segments: kinds.map((kind) => ({ kind })),
        };
      }
      case "accel-import": {
        const a = this.get(s.fd, "fd");
        const b = this.get(s.buf, "fd");
        if (b.p !== a.p)
          throw new SimUsageError(`"${s.buf}" is an fd of ${b.p.name}, not of ${a.p.name}`);
        const imp = a.p.accelImport(a.fd, b.fd);
        this.bind(s, { kind: "accel-import", m: a.m, p: a.p, fd: a.fd, imp });
        return {
          summary: `import #${imp.id} of ${imp.dmabuf.describe()}`,
          peer2peer: imp.attach.peer2peer,
        };
      }
      case "accel-copy": {
        const a = this.get(s.fd, "fd");
        const imp = this.get(s.import, "accel-import");
        const mem = this.get(s.mem, "mem");
        const r = a.p.accelCopy(a.fd, imp.imp, mem.va, s.length, s.direction);
        return {
          summary: `DMA engine copied ${r.bytes} bytes (${s.direction})`,
          bytes: r.bytes,
          segments: [...new Set(r.kinds)].map((kind) => ({ kind })),
        };
      }
      case "gpu-evict": {
        const gpu =
          s.device !== undefined
            ? [...m.gpus.values()].find((g) => g.fn === m.fn(s.device!))
            : [...m.gpus.values()][0];
        if (!gpu) throw new SimUsageError(`${m.name}: no GPU${s.device ? ` "${s.device}"` : ""}`);
        const bo = must(gpu.evictFirst(), "ttm_bo_evict_first");
        return { summary: `evicted ${bo.describe()} to ${bo.placement}` };
      }
      case "evict": {
        const b = this.get(s.fd, "fd");
        const d = b.p.dmabuf(b.fd);
        if (!(d.priv instanceof SysmemExporter) || !dmaBufIsDynamic(d))
          throw new SimUsageError(`"${s.fd}" is not a buffer its exporter can move`);
        d.resv.lock("evict");
        const r = d.priv.move();
        d.resv.unlock("evict");
        must(r, "evict");
        return { summary: `${d.describe()} moved to new pages` };
      }
    }
  }

  /** The bytes behind a name: a host MR's buffer, a dma-buf MR's or fd's backing, accel memory. */
  read(name: string, offset: bigint, length: bigint | undefined): Uint8Array {
    const b = this.names.get(name);
    if (!b) throw new SimUsageError(`"${name}" is not bound: the step that binds it failed`);
    const want = (size: bigint) => {
      const n = length ?? size - offset;
      if (offset + n > size || n > BigInt(MAX_CHECK_BYTES))
        throw new SimUsageError(`check of ${n} bytes at ${offset} is outside "${name}"`);
      return n;
    };
    if (b.kind === "mr" && !b.dmabuf) return hostMrRead(b.mr, offset, Number(want(b.mr.length)));
    if (b.kind === "mr" && b.dmabuf)
      return readDmabuf(b.m, b.dmabuf, b.mr.addr + offset, want(b.mr.length));
    if (b.kind === "fd") {
      const d = b.p.dmabuf(b.fd);
      return readDmabuf(b.m, d, offset, want(d.size));
    }
    if (b.kind === "mem")
      return readPhys(b.m.sys, accelPhys(b.accel, b.handle), offset, Number(want(b.size)));
    if (b.kind === "bo") return b.p.gpuFile(b.fd).cpuRead(b.handle, offset, Number(want(b.size)));
    throw new SimUsageError(`"${name}" holds no bytes (it is ${article(b.kind)})`);
  }
}

function article(kind: Binding["kind"]): string {
  const n: Record<Binding["kind"], string> = {
    fd: "a file descriptor",
    mem: "accelerator memory",
    import: "an in-kernel import",
    ctx: "a verbs context",
    mr: "a memory region",
    qp: "a queue pair",
    bo: "a GPU buffer object",
    "accel-import": "an accelerator import",
  };
  return n[kind];
}

function minBig(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

function accessBits(names: readonly string[]): number {
  return names.reduce((f, n) => f | ACCESS[n]!, 0);
}

function segmentSummary(segs: readonly { kind: string; len: bigint }[]): string {
  const kinds = [...new Set(segs.map((s) => s.kind))].join("+");
  return `${segs.length} DMA segment(s)${kinds ? `, ${kinds}` : ""}`;
}

/** Accelerator memory by allocation handle: its DRAM pages through the BAR. */
function accelPhys(accel: AccelDevice, handle: bigint): (off: bigint) => bigint {
  const pack = accel.idr.get(handle);
  if (!pack) throw new SimUsageError(`accelerator memory handle ${handle} was freed`);
  return (off) =>
    accel.barAddress(pack.pages[Number(off / pack.page_size)]! + (off % pack.page_size));
}

/** The backing bytes of a dma-buf (the model's view, not an importer's). */
function readDmabuf(m: SimMachine, d: DmaBuf, offset: bigint, length: bigint): Uint8Array {
  const phys = m.backingPhys(d);
  if (!phys) throw new SimUsageError(`cannot read the backing of ${d.describe()}`);
  return readPhys(m.sys, phys, offset, Number(length));
}

function machineOptions(name: string, m: ScenarioMachine, tracer: Tracer) {
  return {
    name,
    tracer,
    ...(m.kernel !== undefined ? { kernel: m.kernel } : {}),
    ...(m.iommu !== undefined ? { iommu: m.iommu } : {}),
    ...(m.cmdline !== undefined ? { cmdline: m.cmdline } : {}),
    ...(m.dmabufDebug !== undefined ? { dmabufDebug: m.dmabufDebug } : {}),
    ...(m.moveNotify !== undefined ? { moveNotify: m.moveNotify } : {}),
    ...(m.dmaDebug !== undefined ? { dmaDebug: m.dmaDebug } : {}),
    ...(m.accel !== undefined ? { accel: m.accel } : {}),
    ...(m.rdma !== undefined ? { rdma: m.rdma } : {}),
  };
}

function check(e: StepExpect | undefined, outcome: "ok" | Errno, o: Outcome | null): string[] {
  const f: string[] = [];
  const wantErr = e?.errno;
  if (wantErr !== undefined && outcome !== wantErr)
    f.push(`expected ${wantErr}, got ${outcome === "ok" ? "success" : outcome}`);
  if (wantErr === undefined && outcome !== "ok") f.push(`expected success, got ${outcome}`);
  if (!o || !e) return f;
  if (e.peer2peer !== undefined && o.peer2peer !== e.peer2peer)
    f.push(
      `expected peer2peer=${e.peer2peer ? 1 : 0}, got ${o.peer2peer === undefined ? "no attachment" : o.peer2peer ? 1 : 0}`,
    );
  if (e.addressKind !== undefined) {
    const kinds = [...new Set((o.segments ?? []).map((s) => s.kind))];
    if (kinds.length !== 1 || kinds[0] !== e.addressKind)
      f.push(`expected every segment to be ${e.addressKind}, got ${kinds.join("+") || "none"}`);
  }
  if (e.segments !== undefined && (o.segments?.length ?? -1) !== e.segments)
    f.push(`expected ${e.segments} segment(s), got ${o.segments?.length ?? "none"}`);
  if (e.oops !== undefined && o.oops !== e.oops)
    f.push(e.oops ? "expected the importer to oops; it did not" : `unexpected oops: ${o.summary}`);
  if (e.fault !== undefined && o.fault !== e.fault)
    f.push(e.fault ? "expected the DMA to fault; it did not" : `unexpected fault: ${o.summary}`);
  if (e.status !== undefined && o.status !== e.status)
    f.push(`expected ${e.status}, got ${o.status ?? "no completion"}`);
  if (e.equal !== undefined && o.equal !== e.equal)
    f.push(e.equal ? `expected equal bytes: ${o.summary}` : "expected the bytes to differ");
  return f;
}

/** Runs `sc` on machines built from `descs` (by scenario machine name). */
export function runScenario(
  sc: Scenario,
  descs: ReadonlyMap<string, MachineDescription>,
): ScenarioResult {
  const r = new Runner(sc, descs);
  const steps: StepResult[] = [];
  sc.steps.forEach((s, index) => {
    const from = r.tracer.events.length;
    let outcome: "ok" | Errno = "ok";
    let o: Outcome | null = null;
    let summary: string;
    let usage: string | null = null;
    try {
      o = r.run(s);
      summary = o.summary;
    } catch (e) {
      if (e instanceof SimUsageError) {
        outcome = "EINVAL";
        summary = e.message;
        usage = e.message;
      } else if (e instanceof ErrnoError) {
        outcome = e.errno;
        summary = e.message;
      } else throw e;
    }
    const verdict = r.tracer.events.slice(from).find((ev) => ev.ev === "p2pdma:verdict")?.data?.[
      "mapType"
    ];
    const failures = usage !== null ? [`scenario error: ${usage}`] : check(s.expect, outcome, o);
    if (s.expect?.verdict !== undefined && verdict !== s.expect.verdict)
      failures.push(`expected P2PDMA verdict ${s.expect.verdict}, got ${verdict ?? "none"}`);
    steps.push({
      index: index + 1,
      do: s.do,
      ...(s.line !== undefined ? { line: s.line } : {}),
      machine: s.machine ?? r.first,
      ...(s.process !== undefined ? { process: s.process } : {}),
      ...(s.note !== undefined ? { note: s.note } : {}),
      outcome,
      summary,
      failures,
      events: r.tracer.events.slice(from),
      bytes: o?.bytes ?? 0n,
    });
  });
  const from = r.tracer.events.length;
  const leaks: (Leak & { machine: string })[] = [];
  for (const [name, m] of r.machines) {
    m.shutdown();
    for (const l of m.leaks()) leaks.push({ ...l, machine: name });
  }
  return {
    name: sc.name,
    file: sc.file,
    steps,
    shutdown: r.tracer.events.slice(from),
    leaks,
    passed: leaks.length === 0 && steps.every((s) => s.failures.length === 0),
    bytesMoved: steps.reduce((t, s) => t + s.bytes, 0n),
  };
}
