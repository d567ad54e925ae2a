/**
 * @module dma-buf
 * The dma-buf object and its lifecycle (drivers/dma-buf/dma-buf.c, include/linux/dma-buf.h):
 * `dma_buf_export` with the ops table validated at the door, the pseudo-file whose refcount is
 * the buffer's, release exactly once when the last file reference goes, the file operations
 * (llseek, mmap, the SYNC and SET_NAME ioctls), CPU access, vmap, move_notify.
 * Spec: ../../../../../shared/specs/dma-buf.md §1, §2 (attach/map: ./attachment.ts; fds: ./file.ts).
 *
 * Lifecycle: `live` → `released` (dma_buf_release, run by the final fput of the file). Any use
 * of a released buffer, and a second put, throws `KernelBug` naming the buffer. At release a
 * kernel vmap still held is the kernel's BUG_ON (thrown as `KernelBug` before ops.release); an
 * attachment still present is the kernel's WARN_ON (recorded in `core.warnings`; release goes on).
 */

import type { DmaDevice } from "../dma/device.ts";
import type { DmaDirection } from "../dma/mapping.ts";
import { KernelBug, type KResult, kerr, kok } from "../errno.ts";
import type { Leak, LeakSource } from "../leaks.ts";
import type { SgTable } from "../lib/scatterlist.ts";
import { PAGE_SHIFT } from "../mm/page.ts";
import { DEFAULT_PROFILE, type KernelProfile, PROFILES } from "../profile.ts";
import { type DmaAddrKind, dmaAddrKind, NO_TRACE, type Tracer } from "../trace.ts";
import type { DmaBufAttachment } from "./attachment.ts";
import {
  EPOLLERR,
  EPOLLIN,
  EPOLLOUT,
  type FileOperations,
  KFile,
  O_ACCMODE,
  O_CLOEXEC,
  O_NONBLOCK,
  type Process,
  SEEK_END,
  SEEK_SET,
  syncFileCreate,
  syncFileGetFence,
  type Vma,
} from "./file.ts";
import {
  DmaFence,
  DmaResv,
  type DmaResvUsage,
  dmaResvUsageRw,
  type LockdepReport,
  SimClock,
  type TaskState,
} from "./resv.ts";

/** Kernel configuration the core reads. */
export interface DmaBufConfig {
  /** CONFIG_DMABUF_DEBUG (default y when CONFIG_DMA_API_DEBUG): importers get page-less tables. */
  readonly debug?: boolean;
  /** CONFIG_DMABUF_MOVE_NOTIFY (EXPERIMENTAL, default n): dynamic importers are not pinned. */
  readonly moveNotify?: boolean;
}

/** The dma-buf subsystem of one kernel: profile, config, global list, log. */
export class DmaBufCore implements LeakSource {
  readonly profile: KernelProfile;
  readonly debug: boolean;
  readonly moveNotify: boolean;
  readonly clock: SimClock;
  /** The current task (single-threaded model): a pending signal interrupts waits. */
  readonly task: TaskState = { signalPending: false };
  /** `db_list`: every buffer whose file has not been released, in export order. */
  readonly buffers = new Set<DmaBuf>();
  /** WARN splats, as dmesg would show them. */
  readonly warnings: string[] = [];
  /** lockdep-style reports (a locked-only function called unlocked, and the like). */
  readonly lockdep: LockdepReport[] = [];
  /** What the model notices and the kernel does not report (e.g. mappings leaked at detach). */
  readonly modelReports: string[] = [];
  /** pr_debug lines. */
  readonly log: string[] = [];
  /**
   * Attachments no longer reachable through `buffers` that still hold something: still attached
   * when their buffer was released (the WARN_ON), or detached with tables not unmapped (mainline
   * leaks them). Neither can be undone any more; the leak check reports them.
   */
  readonly leftovers = new Set<DmaBufAttachment>();
  readonly trace: Tracer;
  /** Names the kind of each DMA address in the trace (the System knows where BARs are). */
  readonly addrKind: (dev: DmaDevice, dma: bigint, busMarked: boolean) => DmaAddrKind;
  readonly #warnedOnce = new Set<string>();
  #nextIno = 1;

  constructor(
    opts: {
      profile?: KernelProfile;
      clock?: SimClock;
      tracer?: Tracer;
      addrKind?: (dev: DmaDevice, dma: bigint, busMarked: boolean) => DmaAddrKind;
    } & DmaBufConfig = {},
  ) {
    this.trace = opts.tracer ?? NO_TRACE;
    this.addrKind = opts.addrKind ?? ((dev, _dma, bus) => dmaAddrKind(dev.translation.kind, bus));
    this.profile = opts.profile ?? PROFILES[DEFAULT_PROFILE];
    this.debug = opts.debug ?? false;
    this.moveNotify = opts.moveNotify ?? false;
    this.clock = opts.clock ?? new SimClock();
  }

  /** WARN / WARN_ON: recorded, execution continues. */
  warn(msg: string): void {
    this.warnings.push(`WARNING: ${msg}`);
  }

  /** WARN_ON_ONCE: recorded the first time for a given site. */
  warnOnce(site: string, msg: string): void {
    if (this.#warnedOnce.has(site)) return;
    this.#warnedOnce.add(site);
    this.warn(msg);
  }

  nextIno(): number {
    return this.#nextIno++;
  }

  /**
   * What the subsystem still holds: buffers on db_list (file not released), attachments not
   * detached, tables mapped and not unmapped, the importers' own pins, kernel vmaps, reservation
   * locks held, and unsignalled fences on the buffers' reservation objects.
   */
  leaks(): Leak[] {
    const owner = "dma-buf core";
    const out: Leak[] = [];
    const resvs = new Set<DmaResv>();
    const attachmentLeaks = (a: DmaBufAttachment): void => {
      const released = a.dmabuf.state === "released";
      if (a.state === "attached")
        out.push({
          kind: "attachment",
          owner,
          detail: `${a.describe()} not detached${released ? " (the buffer was released with it attached; it can no longer be detached)" : ""}`,
        });
      for (const h of a.handed) {
        const first = h.importer.sgl?.dma_address;
        out.push({
          kind: "sg-mapping",
          owner,
          detail: `${h.importer.name}: ${h.importer.nents} DMA segment(s)${first !== undefined ? ` from ${hex(first)}` : ""}, mapped ${h.dir} through ${a.describe()}, not unmapped${a.sgt === h.importer ? " (the cached mapping, unmapped at detach)" : ""}${a.state === "detached" ? " (detached without unmapping: leaked)" : ""}`,
        });
      }
      if (a.pins > 0)
        out.push({
          kind: "pin",
          owner,
          detail: `${a.describe()} pinned ${a.pins} time(s) with dma_buf_pin() and not unpinned`,
        });
    };
    for (const b of this.buffers) {
      const polls = [b.cb_in ? "EPOLLIN" : null, b.cb_out ? "EPOLLOUT" : null].filter(
        (x) => x !== null,
      );
      out.push({
        kind: "dma-buf",
        owner,
        detail: `${b.describe()} still on db_list: file ${b.file.name} holds ${b.file.count} reference(s)${polls.length > 0 ? ` (poll callback armed for ${polls.join(", ")})` : ""}, ${b.attachments.length} attachment(s)`,
      });
      if (b.vmapping_counter > 0)
        out.push({
          kind: "vmap",
          owner,
          detail: `${b.describe()} vmapped ${b.vmapping_counter} time(s)${b.vmap_ptr ? ` at ${b.vmap_ptr.isIomem ? "iomem " : ""}${hex(b.vmap_ptr.addr)}` : ""}, not vunmapped`,
        });
      for (const a of b.attachments) attachmentLeaks(a);
      if (resvs.has(b.resv)) continue;
      resvs.add(b.resv);
      if (b.resv.held)
        out.push({
          kind: "resv-lock",
          owner,
          detail: `reservation lock of ${b.resv.name} (${b.describe()}) still held`,
        });
      const usages: DmaResvUsage[] = ["kernel", "write", "read", "bookkeep"];
      const byUsage = usages.map((u) => [u, b.resv.fences(u)] as const);
      for (const f of b.resv.fences("bookkeep")) {
        const usage = byUsage.find(([, fs]) => fs.includes(f))?.[0] ?? "bookkeep";
        out.push({
          kind: "fence",
          owner,
          detail: `${f.name} (${usage}) on ${b.resv.name} unsignalled: ${f.signalAt === null ? "nothing will signal it" : `signals at t=${f.signalAt} ms (now ${this.clock.now} ms)`}`,
        });
      }
    }
    for (const a of this.leftovers) attachmentLeaks(a);
    return out;
  }
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

/** `struct module` as try_module_get sees it. */
export class Module {
  readonly name: string;
  refs = 0;
  /** Being unloaded (or gone): try_module_get fails. */
  unloading = false;
  constructor(name: string) {
    this.name = name;
  }
}

/** `struct iosys_map`: where a kernel vmap points. */
export interface IosysMap {
  readonly isIomem: boolean;
  readonly addr: bigint;
}

/** `struct dma_buf_ops`. The mandatory members are optional in the type: the core checks them. */
export interface DmaBufOps {
  /** ≤6.14 only (`profile.dmaBuf.cacheSgtMapping`). */
  readonly cache_sgt_mapping?: boolean;
  readonly attach?: (dmabuf: DmaBuf, attach: DmaBufAttachment) => KResult;
  readonly detach?: (dmabuf: DmaBuf, attach: DmaBufAttachment) => void;
  readonly pin?: (attach: DmaBufAttachment) => KResult;
  readonly unpin?: (attach: DmaBufAttachment) => void;
  /** A table mapped for `attach.dev`, an error, or null (the kernel's NULL return). */
  readonly map_dma_buf?: (attach: DmaBufAttachment, dir: DmaDirection) => KResult<SgTable> | null;
  readonly unmap_dma_buf?: (attach: DmaBufAttachment, sgt: SgTable, dir: DmaDirection) => void;
  readonly release?: (dmabuf: DmaBuf) => void;
  readonly begin_cpu_access?: (dmabuf: DmaBuf, dir: DmaDirection) => KResult;
  readonly end_cpu_access?: (dmabuf: DmaBuf, dir: DmaDirection) => KResult;
  readonly mmap?: (dmabuf: DmaBuf, vma: Vma) => KResult;
  readonly vmap?: (dmabuf: DmaBuf) => KResult<IosysMap>;
  readonly vunmap?: (dmabuf: DmaBuf, map: IosysMap) => void;
}

/** `struct dma_buf_export_info`. */
export interface DmaBufExportInfo {
  readonly exp_name?: string;
  /** NULL owner: built-in code, try_module_get always succeeds. */
  readonly owner?: Module | null;
  readonly ops?: DmaBufOps | null;
  readonly size: bigint;
  /** File flags; only O_ACCMODE | O_NONBLOCK survive on the file. */
  readonly flags?: number;
  /** NULL: the buffer embeds its own. */
  readonly resv?: DmaResv | null;
  /** Exporter private data; must not be NULL (undefined/null). */
  readonly priv?: unknown;
}

export type DmaBufState = "live" | "released";

/** `struct dma_buf`. */
export class DmaBuf {
  readonly core: DmaBufCore;
  /** Inode number of the pseudo-file (unique; names the buffer in messages). */
  readonly ino: number;
  readonly size: bigint;
  readonly exp_name: string;
  readonly owner: Module | null;
  readonly ops: DmaBufOps;
  readonly priv: unknown;
  readonly resv: DmaResv;
  readonly embeddedResv: boolean;
  readonly file: KFile;
  /** `attachments` in list order: list_add puts the newest first. */
  readonly attachments: DmaBufAttachment[] = [];
  /** `DMA_BUF_SET_NAME` name, or null. */
  name: string | null = null;
  vmapping_counter = 0;
  vmap_ptr: IosysMap | null = null;
  /** `cb_in.active` / `cb_out.active`: a poll callback is armed (and holds a file reference). */
  cb_in = false;
  cb_out = false;
  /** How many times `ops.release` ran (0 or 1). */
  releaseCount = 0;
  #state: DmaBufState = "live";

  constructor(core: DmaBufCore, info: DmaBufExportInfo, ops: DmaBufOps, fops: FileOperations) {
    this.core = core;
    this.ino = core.nextIno();
    this.size = info.size;
    this.exp_name = info.exp_name ?? "unknown";
    this.owner = info.owner ?? null;
    this.ops = ops;
    this.priv = info.priv;
    this.embeddedResv = !info.resv;
    this.resv =
      info.resv ??
      new DmaResv(
        `resv of dmabuf:${this.ino}`,
        core.clock,
        { lockdep: (r) => core.lockdep.push(r) },
        core.task,
      );
    this.file = new KFile({
      name: `dmabuf:${this.ino}`,
      fops,
      flags: (info.flags ?? 0) & (O_ACCMODE | O_NONBLOCK),
      privateData: this,
      dRelease: () => dmaBufRelease(this),
    });
  }

  get state(): DmaBufState {
    return this.#state;
  }

  /** "dmabuf:7 (exp sysmem, 8192 bytes)". */
  describe(): string {
    return `dmabuf:${this.ino} (${this.exp_name}, ${this.size} bytes${this.name !== null ? `, "${this.name}"` : ""})`;
  }

  /** Throws if released (use-after-free, naming the buffer). */
  live(what: string): this {
    if (this.#state === "released")
      throw new KernelBug(`use-after-free: ${what} on ${this.describe()}, already released`);
    return this;
  }

  markReleased(): void {
    this.#state = "released";
  }
}

/** The exporter can move its memory (has pin/unpin). models dma_buf_is_dynamic() */
export function dmaBufIsDynamic(dmabuf: DmaBuf): boolean {
  return dmabuf.ops.pin !== undefined;
}

/**
 * A new buffer whose file holds the creator's reference (count 1), on the global list. Checks,
 * in the kernel's order: priv/ops/map/unmap/release present (WARN, -EINVAL); with the profile's
 * cache_sgt_mapping, not together with pin/unpin (WARN, -EINVAL); pin and unpin as a pair (WARN,
 * -EINVAL); try_module_get(owner) (-ENOENT). Size is not checked (0 is accepted).
 * models dma_buf_export()
 */
export function dmaBufExport(core: DmaBufCore, info: DmaBufExportInfo): KResult<DmaBuf> {
  const ops = info.ops;
  if (
    info.priv === undefined ||
    info.priv === null ||
    !ops ||
    !ops.map_dma_buf ||
    !ops.unmap_dma_buf ||
    !ops.release
  ) {
    const missing = [
      info.priv === undefined || info.priv === null ? "priv" : null,
      !ops ? "ops" : null,
      ops && !ops.map_dma_buf ? "ops->map_dma_buf" : null,
      ops && !ops.unmap_dma_buf ? "ops->unmap_dma_buf" : null,
      ops && !ops.release ? "ops->release" : null,
    ].filter((x) => x !== null);
    const msg = `dma_buf_export(${info.exp_name ?? "?"}): ${missing.join(", ")} missing`;
    core.warn(msg);
    return kerr("EINVAL", msg, { warn: true });
  }
  if (core.profile.dmaBuf.cacheSgtMapping && ops.cache_sgt_mapping && (ops.pin || ops.unpin)) {
    const msg = `dma_buf_export(${info.exp_name ?? "?"}): cache_sgt_mapping together with pin/unpin`;
    core.warn(msg);
    return kerr("EINVAL", msg, { warn: true });
  }
  if (!ops.pin !== !ops.unpin) {
    const msg = `dma_buf_export(${info.exp_name ?? "?"}): ${ops.pin ? "pin without unpin" : "unpin without pin"}`;
    core.warn(msg);
    return kerr("EINVAL", msg, { warn: true });
  }
  const owner = info.owner ?? null;
  if (owner) {
    // models try_module_get()
    if (owner.unloading)
      return kerr("ENOENT", `module ${owner.name} is being unloaded; try_module_get failed`);
    owner.refs++;
  }
  const dmabuf = new DmaBuf(core, info, ops, DMA_BUF_FOPS);
  core.buffers.add(dmabuf);
  core.trace.emit("dma_buf:export", `${dmabuf.describe()} exported`, {
    ino: dmabuf.ino,
    exporter: dmabuf.exp_name,
    size: dmabuf.size,
  });
  return kok(dmabuf);
}

/** +1 on the buffer's file (a kernel-side reference). models get_dma_buf() */
export function getDmaBuf(dmabuf: DmaBuf): void {
  dmabuf.live("get_dma_buf()").file.get();
}

/**
 * The dentry's release: BUG if a vmap is outstanding, ops->release, finalise the embedded resv,
 * WARN if attachments remain, drop the module. models dma_buf_release() (d_release)
 */
function dmaBufRelease(dmabuf: DmaBuf): void {
  const core = dmabuf.core;
  if (dmabuf.state === "released" || dmabuf.releaseCount > 0)
    throw new KernelBug(`dma_buf_release() twice on ${dmabuf.describe()}`);
  if (dmabuf.vmapping_counter !== 0)
    throw new KernelBug(
      `BUG_ON(dmabuf->vmapping_counter): ${dmabuf.describe()} released with ${dmabuf.vmapping_counter} kernel vmap(s) outstanding`,
    );
  if (dmabuf.cb_in || dmabuf.cb_out)
    throw new KernelBug(
      `BUG_ON(dmabuf->cb_in.active || dmabuf->cb_out.active) on ${dmabuf.describe()}`,
    );
  dmabuf.releaseCount++;
  dmabuf.core.trace.emit("dma_buf:release", `${dmabuf.describe()} released`, { ino: dmabuf.ino });
  dmabuf.ops.release!(dmabuf);
  if (dmabuf.embeddedResv) dmabuf.resv.fini();
  for (const a of dmabuf.attachments) core.leftovers.add(a);
  if (dmabuf.attachments.length > 0)
    core.warn(
      `WARN_ON(!list_empty(&dmabuf->attachments)): ${dmabuf.describe()} released with ${dmabuf.attachments.length} attachment(s) (${dmabuf.attachments.map((a) => a.dev.name).join(", ")})`,
    );
  if (dmabuf.owner) dmabuf.owner.refs--;
  dmabuf.markReleased();
}

// models dma_buf_file_release(): the file's release only unlinks from the global list.
function dmaBufFileRelease(file: KFile): void {
  const dmabuf = file.private_data;
  if (dmabuf) dmabuf.core.buffers.delete(dmabuf);
}

/** Only offset 0: SEEK_END → size, SEEK_SET → 0, else -EINVAL. models dma_buf_llseek() */
function dmaBufLlseek(file: KFile, offset: bigint, whence: number): KResult<bigint> {
  const dmabuf = file.private_data;
  if (!dmabuf) return kerr("EBADF", `${file.name} is not a dma-buf`);
  let base: bigint;
  if (whence === SEEK_END) base = dmabuf.live("llseek").size;
  else if (whence === SEEK_SET) base = 0n;
  else return kerr("EINVAL", `dma_buf_llseek: whence ${whence} (only SEEK_SET and SEEK_END)`);
  if (offset !== 0n) return kerr("EINVAL", `dma_buf_llseek: offset ${offset} (only 0)`);
  return kok(base + offset);
}

/** No ops->mmap → -EINVAL; pgoff + pages beyond size → -EINVAL; else ops->mmap. models dma_buf_mmap_internal() */
function dmaBufMmapInternal(file: KFile, vma: Vma): KResult {
  const dmabuf = file.private_data;
  if (!dmabuf) return kerr("EINVAL", `${file.name} is not a dma-buf`);
  dmabuf.live("mmap");
  if (!dmabuf.ops.mmap) return kerr("EINVAL", `${dmabuf.describe()}: exporter has no mmap`);
  if (vma.pgoff + vma.pages > dmabuf.size >> BigInt(PAGE_SHIFT))
    return kerr(
      "EINVAL",
      `${dmabuf.describe()}: pgoff ${vma.pgoff} + ${vma.pages} pages is beyond its size`,
    );
  return dmabuf.ops.mmap(dmabuf, vma);
}

/**
 * Kernel-side mmap into an existing VMA at `pgoff`. models dma_buf_mmap(): NULL → -EINVAL (WARN);
 * no op → -EINVAL; pgoff + pages wraps → -EOVERFLOW; beyond size → -EINVAL; re-points the VMA.
 */
export function dmaBufMmap(dmabuf: DmaBuf | null, vma: Vma, pgoff: bigint): KResult {
  if (!dmabuf) return kerr("EINVAL", "dma_buf_mmap(NULL)", { warn: true });
  dmabuf.live("dma_buf_mmap()");
  if (!dmabuf.ops.mmap) return kerr("EINVAL", `${dmabuf.describe()}: exporter has no mmap`);
  const ULONG = (1n << 64n) - 1n;
  if (pgoff + vma.pages > ULONG) return kerr("EOVERFLOW", "pgoff + pages overflows");
  if (pgoff + vma.pages > dmabuf.size >> BigInt(PAGE_SHIFT))
    return kerr(
      "EINVAL",
      `${dmabuf.describe()}: pgoff ${pgoff} + ${vma.pages} pages is beyond its size`,
    );
  vma.file = dmabuf.file; // vma_set_file (its reference juggling is not modelled)
  vma.pgoff = pgoff;
  return dmabuf.ops.mmap(dmabuf, vma);
}

// include/uapi/linux/dma-buf.h
export const DMA_BUF_SYNC_READ = 1n;
export const DMA_BUF_SYNC_WRITE = 2n;
export const DMA_BUF_SYNC_RW = 3n;
export const DMA_BUF_SYNC_START = 0n;
export const DMA_BUF_SYNC_END = 4n;
export const DMA_BUF_SYNC_VALID_FLAGS_MASK = DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END;
export const DMA_BUF_NAME_LEN = 32;
const IOW = (type: number, nr: number, size: number): number =>
  ((1 << 30) | (size << 16) | (type << 8) | nr) >>> 0;
const DMA_BUF_BASE = 0x62; // 'b'
/** `_IOW('b', 0, struct dma_buf_sync)`. */
export const DMA_BUF_IOCTL_SYNC = IOW(DMA_BUF_BASE, 0, 8);
/** `_IOW('b', 1, const char *)` = SET_NAME_B on 64-bit. */
export const DMA_BUF_SET_NAME_A = IOW(DMA_BUF_BASE, 1, 4);
export const DMA_BUF_SET_NAME_B = IOW(DMA_BUF_BASE, 1, 8);
export const DMA_BUF_SET_NAME = DMA_BUF_SET_NAME_B;
export const DMA_BUF_IOCTL_EXPORT_SYNC_FILE =
  ((3 << 30) | (8 << 16) | (DMA_BUF_BASE << 8) | 2) >>> 0;
export const DMA_BUF_IOCTL_IMPORT_SYNC_FILE = IOW(DMA_BUF_BASE, 3, 8);

/** The SYNC ioctl's argument (`struct dma_buf_sync`); anything else is a copy_from_user fault. */
export interface DmaBufSyncArg {
  readonly flags: bigint;
}

/**
 * The dma-buf ioctls. SYNC: bits outside RW|END or no RW bit → -EINVAL; END → end_cpu_access,
 * else begin_cpu_access (READ → from-device, WRITE → to-device, RW → bidirectional). SET_NAME:
 * `arg` is the user string (null: fault). Unknown cmd → -ENOTTY. models dma_buf_ioctl()
 */
function dmaBufIoctl(file: KFile, cmd: number, arg: unknown, proc: Process): KResult<number> {
  const dmabuf = file.private_data!.live("ioctl");
  switch (cmd) {
    case DMA_BUF_IOCTL_SYNC: {
      if (
        typeof arg !== "object" ||
        arg === null ||
        typeof (arg as DmaBufSyncArg).flags !== "bigint"
      )
        return kerr("EFAULT", "DMA_BUF_IOCTL_SYNC: copy_from_user failed");
      const flags = (arg as DmaBufSyncArg).flags;
      if (flags & ~DMA_BUF_SYNC_VALID_FLAGS_MASK)
        return kerr(
          "EINVAL",
          `DMA_BUF_IOCTL_SYNC: unknown flag bits 0x${(flags & ~DMA_BUF_SYNC_VALID_FLAGS_MASK).toString(16)}`,
        );
      let dir: DmaDirection;
      switch (flags & DMA_BUF_SYNC_RW) {
        case DMA_BUF_SYNC_READ:
          dir = "from-device";
          break;
        case DMA_BUF_SYNC_WRITE:
          dir = "to-device";
          break;
        case DMA_BUF_SYNC_RW:
          dir = "bidirectional";
          break;
        default:
          return kerr("EINVAL", "DMA_BUF_IOCTL_SYNC: neither READ nor WRITE");
      }
      const r =
        flags & DMA_BUF_SYNC_END
          ? dmaBufEndCpuAccess(dmabuf, dir)
          : dmaBufBeginCpuAccess(dmabuf, dir);
      return r.ok ? kok(0) : r;
    }
    case DMA_BUF_SET_NAME_A:
    case DMA_BUF_SET_NAME_B: {
      const r = dmaBufSetName(dmabuf, typeof arg === "string" ? arg : null);
      return r.ok ? kok(0) : r;
    }
    case DMA_BUF_IOCTL_EXPORT_SYNC_FILE:
      return dmaBufExportSyncFile(dmabuf, arg, proc);
    case DMA_BUF_IOCTL_IMPORT_SYNC_FILE:
      return dmaBufImportSyncFile(dmabuf, arg, proc);
    default:
      return kerr("ENOTTY", `dma-buf ioctl 0x${cmd.toString(16)} unknown`);
  }
}

/** `struct dma_buf_export_sync_file` / `struct dma_buf_import_sync_file`; `fd` is written back by export. */
export interface DmaBufSyncFileArg {
  flags: number;
  fd: number;
}

function syncFileArg(arg: unknown): DmaBufSyncFileArg | null {
  if (typeof arg !== "object" || arg === null) return null;
  const a = arg as Partial<DmaBufSyncFileArg>;
  return typeof a.flags === "number" && typeof a.fd === "number"
    ? (arg as DmaBufSyncFileArg)
    : null;
}

/**
 * A sync_file for the buffer's implicit fences: flags must be a non-empty subset of RW (-EINVAL);
 * an O_CLOEXEC fd in the caller's table; WRITE → every read and write fence, READ → write fences;
 * none → a signalled stub. models dma_buf_export_sync_file()
 */
function dmaBufExportSyncFile(dmabuf: DmaBuf, argIn: unknown, proc: Process): KResult<number> {
  const arg = syncFileArg(argIn);
  if (!arg) return kerr("EFAULT", "DMA_BUF_IOCTL_EXPORT_SYNC_FILE: copy_from_user failed");
  const flags = BigInt(arg.flags >>> 0);
  if (flags & ~DMA_BUF_SYNC_RW)
    return kerr("EINVAL", `EXPORT_SYNC_FILE: flags 0x${flags.toString(16)} outside RW`);
  if ((flags & DMA_BUF_SYNC_RW) === 0n)
    return kerr("EINVAL", "EXPORT_SYNC_FILE: neither READ nor WRITE");
  const fd = proc.getUnusedFd();
  if (!fd.ok) return fd;
  const fence =
    dmabuf.resv.getSingleton(dmaResvUsageRw((flags & DMA_BUF_SYNC_WRITE) !== 0n)) ??
    DmaFence.stub();
  proc.install(fd.value, syncFileCreate(fence), O_CLOEXEC);
  arg.fd = fd.value;
  return kok(0);
}

/**
 * Add the fences of a sync_file to the buffer: same flag checks; `fd` not a sync_file → -EINVAL;
 * containers are unwrapped (6.1 already does), each added as WRITE if WRITE is set, else READ.
 * models dma_buf_import_sync_file()
 */
function dmaBufImportSyncFile(dmabuf: DmaBuf, argIn: unknown, proc: Process): KResult<number> {
  const arg = syncFileArg(argIn);
  if (!arg) return kerr("EFAULT", "DMA_BUF_IOCTL_IMPORT_SYNC_FILE: copy_from_user failed");
  const flags = BigInt(arg.flags >>> 0);
  if (flags & ~DMA_BUF_SYNC_RW)
    return kerr("EINVAL", `IMPORT_SYNC_FILE: flags 0x${flags.toString(16)} outside RW`);
  if ((flags & DMA_BUF_SYNC_RW) === 0n)
    return kerr("EINVAL", "IMPORT_SYNC_FILE: neither READ nor WRITE");
  const fence = syncFileGetFence(proc, arg.fd);
  if (!fence) return kerr("EINVAL", `IMPORT_SYNC_FILE: fd ${arg.fd} is not a sync_file`);
  const usage = flags & DMA_BUF_SYNC_WRITE ? "write" : "read";
  const parts = fence.components.length > 0 ? fence.components : [fence];
  dmabuf.resv.lock("dma_buf_import_sync_file");
  for (const f of parts) dmabuf.resv.addFence(f, usage);
  dmabuf.resv.unlock("dma_buf_import_sync_file");
  return kok(0);
}

/**
 * Replace the name with a copy of `name` (at most 31 bytes + NUL, else -EINVAL as strndup_user
 * returns; null = fault, -EFAULT). No attachment check (6.1 and mainline). models dma_buf_set_name()
 */
export function dmaBufSetName(dmabuf: DmaBuf, name: string | null): KResult {
  if (name === null) return kerr("EFAULT", "DMA_BUF_SET_NAME: bad user pointer");
  const bytes = new TextEncoder().encode(name);
  const nul = bytes.indexOf(0);
  const len = nul >= 0 ? nul : bytes.length;
  // models strndup_user(buf, DMA_BUF_NAME_LEN): strnlen_user counts the NUL; more than n → -EINVAL
  if (len + 1 > DMA_BUF_NAME_LEN)
    return kerr(
      "EINVAL",
      `name of ${len} bytes does not fit DMA_BUF_NAME_LEN (${DMA_BUF_NAME_LEN}) with its NUL`,
    );
  dmabuf.live("DMA_BUF_SET_NAME").name = new TextDecoder().decode(bytes.subarray(0, len));
  return kok();
}

/** The fdinfo lines: size, count, exp_name, name. models dma_buf_show_fdinfo() */
export function dmaBufFdinfo(dmabuf: DmaBuf): {
  size: bigint;
  count: number;
  exp_name: string;
  name: string | null;
} {
  dmabuf.live("fdinfo");
  return {
    size: dmabuf.size,
    count: dmabuf.file.count,
    exp_name: dmabuf.exp_name,
    name: dmabuf.name,
  };
}

/**
 * EPOLLIN is ready when the writers' fences have signalled, EPOLLOUT when every reader's and
 * writer's has. A direction that is not ready arms its one callback slot, which holds a file
 * reference until a fence signals (then fput); while armed that direction is not reported.
 * models dma_buf_poll() + dma_buf_poll_add_cb() + dma_buf_poll_cb()
 */
function dmaBufPoll(file: KFile, requested: number): number {
  const dmabuf = file.private_data;
  if (!dmabuf) return EPOLLERR;
  dmabuf.live("poll");
  let events = requested & (EPOLLIN | EPOLLOUT);
  if (!events) return 0;
  const { resv, core } = dmabuf;
  resv.lock("dma_buf_poll");
  for (const [bit, slot, write] of [
    [EPOLLOUT, "cb_out", true],
    [EPOLLIN, "cb_in", false],
  ] as const) {
    if (!(events & bit)) continue;
    if (dmabuf[slot]) {
      events &= ~bit;
      continue;
    }
    dmabuf[slot] = true;
    file.get(); // paired with the fput in the callback
    const done = () => {
      dmabuf[slot] = false;
      file.put();
    };
    const armed = resv.fences(dmaResvUsageRw(write)).some((f) => f.addCallback(core.clock, done));
    if (armed) events &= ~bit;
    else done(); // nothing to wait for: wake up at once
  }
  resv.unlock("dma_buf_poll");
  return events;
}

/** `dma_buf_fops`. */
export const DMA_BUF_FOPS: FileOperations = {
  name: "dma_buf_fops",
  poll: dmaBufPoll,
  release: dmaBufFileRelease,
  llseek: dmaBufLlseek,
  mmap: dmaBufMmapInternal,
  unlocked_ioctl: dmaBufIoctl,
};

/**
 * Exporter's begin hook (if any), then, if it returned 0, wait for the implicit fences a CPU
 * access in `dir` must wait for (writes wait for readers and writers). models dma_buf_begin_cpu_access()
 */
export function dmaBufBeginCpuAccess(dmabuf: DmaBuf | null, dir: DmaDirection): KResult {
  if (!dmabuf) return kerr("EINVAL", "dma_buf_begin_cpu_access(NULL)", { warn: true });
  dmabuf.live("dma_buf_begin_cpu_access()").resv.mightLock("dma_buf_begin_cpu_access");
  if (dmabuf.ops.begin_cpu_access) {
    const r = dmabuf.ops.begin_cpu_access(dmabuf, dir);
    if (!r.ok) return r;
  }
  const write = dir === "bidirectional" || dir === "to-device";
  const w = dmabuf.resv.waitTimeout(dmaResvUsageRw(write), true);
  return w.ok ? kok() : w;
}

/** Exporter's end hook, or 0. models dma_buf_end_cpu_access() */
export function dmaBufEndCpuAccess(dmabuf: DmaBuf, dir: DmaDirection): KResult {
  dmabuf.live("dma_buf_end_cpu_access()").resv.mightLock("dma_buf_end_cpu_access");
  return dmabuf.ops.end_cpu_access ? dmabuf.ops.end_cpu_access(dmabuf, dir) : kok();
}

/**
 * Kernel vmap, refcounted: the exporter's vmap runs for the first user only (its error comes back
 * with WARN_ON_ONCE); no op → -EINVAL. Lock per profile: 6.1 takes dmabuf->lock itself; mainline
 * needs the caller to hold the resv. models dma_buf_vmap()
 */
export function dmaBufVmap(dmabuf: DmaBuf | null): KResult<IosysMap> {
  if (!dmabuf) return kerr("EINVAL", "dma_buf_vmap(NULL)", { warn: true });
  dmabuf.live("dma_buf_vmap()");
  if (!dmabuf.ops.vmap) return kerr("EINVAL", `${dmabuf.describe()}: exporter has no vmap`);
  if (dmabuf.core.profile.dmaBuf.vmapLock === "resv") dmabuf.resv.assertHeld("dma_buf_vmap");
  if (dmabuf.vmapping_counter > 0) {
    if (!dmabuf.vmap_ptr)
      throw new KernelBug(`BUG_ON(iosys_map_is_null(&dmabuf->vmap_ptr)) on ${dmabuf.describe()}`);
    dmabuf.vmapping_counter++;
    return kok(dmabuf.vmap_ptr);
  }
  if (dmabuf.vmap_ptr)
    throw new KernelBug(`BUG_ON(iosys_map_is_set(&dmabuf->vmap_ptr)) on ${dmabuf.describe()}`);
  const r = dmabuf.ops.vmap(dmabuf);
  if (!r.ok) {
    dmabuf.core.warnOnce(
      "dma_buf_vmap",
      `dma_buf_vmap: exporter vmap of ${dmabuf.describe()} failed with ${r.errno}`,
    );
    return { ...r, warn: true };
  }
  dmabuf.vmap_ptr = r.value;
  dmabuf.vmapping_counter = 1;
  return r;
}

/** Drops one vmap; the last calls ops->vunmap. BUG on imbalance or a foreign map. models dma_buf_vunmap() */
export function dmaBufVunmap(dmabuf: DmaBuf, map: IosysMap): void {
  dmabuf.live("dma_buf_vunmap()");
  if (dmabuf.core.profile.dmaBuf.vmapLock === "resv") dmabuf.resv.assertHeld("dma_buf_vunmap");
  if (!dmabuf.vmap_ptr || dmabuf.vmapping_counter === 0)
    throw new KernelBug(`BUG_ON: dma_buf_vunmap() on ${dmabuf.describe()}, which is not vmapped`);
  if (dmabuf.vmap_ptr.addr !== map.addr || dmabuf.vmap_ptr.isIomem !== map.isIomem)
    throw new KernelBug(
      `BUG_ON(!iosys_map_is_equal()): dma_buf_vunmap() on ${dmabuf.describe()} with a map it did not hand out`,
    );
  if (--dmabuf.vmapping_counter === 0) {
    dmabuf.ops.vunmap?.(dmabuf, map);
    dmabuf.vmap_ptr = null;
  }
}

/** Lock, vmap, unlock (mainline). models dma_buf_vmap_unlocked() */
export function dmaBufVmapUnlocked(dmabuf: DmaBuf): KResult<IosysMap> {
  dmabuf.live("dma_buf_vmap_unlocked()").resv.lock("dma_buf_vmap_unlocked");
  try {
    return dmaBufVmap(dmabuf);
  } finally {
    dmabuf.resv.unlock("dma_buf_vmap_unlocked");
  }
}

// models dma_buf_vunmap_unlocked()
export function dmaBufVunmapUnlocked(dmabuf: DmaBuf, map: IosysMap): void {
  dmabuf.live("dma_buf_vunmap_unlocked()").resv.lock("dma_buf_vunmap_unlocked");
  try {
    dmaBufVunmap(dmabuf, map);
  } finally {
    dmabuf.resv.unlock("dma_buf_vunmap_unlocked");
  }
}

/**
 * The exporter, holding the resv, tells every dynamic importer that the buffer moves; static
 * attachments are skipped (they are pinned). models dma_buf_move_notify()
 */
export function dmaBufMoveNotify(dmabuf: DmaBuf): void {
  dmabuf.live("dma_buf_move_notify()").resv.assertHeld("dma_buf_move_notify");
  dmabuf.core.trace.emit(
    "dma_buf:move_notify",
    `${dmabuf.describe()}: move_notify to ${dmabuf.attachments.filter((a) => a.importer_ops).length} dynamic importer(s)`,
  );
  for (const a of [...dmabuf.attachments]) if (a.importer_ops) a.importer_ops.move_notify!(a);
}
