/**
 * @module file
 * The VFS as far as dma-buf fds need it: `struct file` with its reference count, per-process fd
 * tables, close/dup/exec/exit, passing an fd over a unix socket (SCM_RIGHTS), and the syscalls
 * that reach a dma-buf's `file_operations` (llseek, mmap, ioctl). Plus `dma_buf_fd`,
 * `dma_buf_get`, `dma_buf_put` (drivers/dma-buf/dma-buf.c), which are fd-table operations.
 * Spec: ../../../../../shared/specs/dma-buf.md §1.7, §2.2, §2.10, §2.12.
 *
 * Lifecycle: a file is `open` while its count is > 0; the final `fput` runs `f_op.release` and
 * then the dentry's `d_release` (where dma-buf frees the buffer) and makes it `released`.
 * Another `fput`, or any use after that, throws `KernelBug` naming the file.
 */

import { KernelBug, type KResult, kerr, kok } from "../errno.ts";
import type { Leak, LeakSource } from "../leaks.ts";
import { PAGE_SHIFT } from "../mm/page.ts";
import type { DmaBuf } from "./dma-buf.ts";
import type { DmaFence } from "./resv.ts";

// include/uapi/asm-generic/fcntl.h
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_ACCMODE = 3;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;

// include/uapi/asm-generic/mman-common.h, mman.h
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const MAP_SHARED_VALIDATE = 3;
export const MAP_TYPE = 0x0f;

// include/uapi/linux/eventpoll.h
export const EPOLLIN = 0x1;
export const EPOLLOUT = 0x4;
export const EPOLLERR = 0x8;

// include/uapi/linux/fs.h
export const SEEK_SET = 0;
export const SEEK_CUR = 1;
export const SEEK_END = 2;

/** `file->f_mode` bits derived from the open flags: FMODE_READ = 1, FMODE_WRITE = 2. */
export const FMODE_READ = 1;
export const FMODE_WRITE = 2;

/** A VMA handed to `f_op->mmap`. */
export interface Vma {
  /** `vm_pgoff` (dma_buf_mmap sets it). */
  pgoff: bigint;
  /** `vma_pages(vma)`. */
  readonly pages: bigint;
  readonly prot: number;
  readonly shared: boolean;
  /** `vma->vm_file` (dma_buf_mmap re-points it at the dma-buf file). */
  file: KFile;
}

/** `struct file_operations`, the members dma-buf implements. */
export interface FileOperations {
  readonly name: string;
  release?(file: KFile): void;
  llseek?(file: KFile, offset: bigint, whence: number): KResult<bigint>;
  mmap?(file: KFile, vma: Vma): KResult;
  /** The ready events among `events` (EPOLLIN/EPOLLOUT/...). */
  poll?(file: KFile, events: number): number;
  /** `proc` is `current`: ioctls that install fds install them there. */
  unlocked_ioctl?(file: KFile, cmd: number, arg: unknown, proc: Process): KResult<number>;
}

export type FileState = "open" | "released";

let nextFileId = 1;

/** `struct file`. `private_data` holds the dma-buf for dma-buf files. */
export class KFile {
  readonly id = nextFileId++;
  readonly name: string;
  readonly f_op: FileOperations;
  /** `f_flags`: what survived of the open flags. */
  readonly f_flags: number;
  /** `f_mode`: FMODE_READ | FMODE_WRITE from the access mode. */
  readonly f_mode: number;
  readonly private_data: DmaBuf | null;
  /** A sync_file's fence (`sync_file->fence`), else null. */
  readonly fence: DmaFence | null;
  /** The dentry's `d_release`, run after `f_op.release` on the final fput. */
  readonly dRelease: (() => void) | null;
  #count = 1;
  #state: FileState = "open";

  constructor(opts: {
    name: string;
    fops: FileOperations;
    flags: number;
    privateData?: DmaBuf | null;
    fence?: DmaFence | null;
    dRelease?: (() => void) | null;
  }) {
    this.name = opts.name;
    this.f_op = opts.fops;
    this.f_flags = opts.flags;
    // models OPEN_FMODE(): ((flags + 1) & O_ACCMODE)
    this.f_mode = (opts.flags + 1) & O_ACCMODE;
    this.private_data = opts.privateData ?? null;
    this.fence = opts.fence ?? null;
    this.dRelease = opts.dRelease ?? null;
  }

  get state(): FileState {
    return this.#state;
  }

  /** `file_count(file)`. */
  get count(): number {
    return this.#count;
  }

  /** Throws if the file was already released. */
  live(what: string): this {
    if (this.#state === "released")
      throw new KernelBug(
        `use-after-free: ${what} on ${this.name} (file #${this.id}), already released`,
      );
    return this;
  }

  // models get_file()
  get(): this {
    this.live("get_file()");
    this.#count++;
    return this;
  }

  /** Drop a reference; the last one runs release. models fput() / __fput() */
  put(): void {
    if (this.#state === "released" || this.#count <= 0)
      throw new KernelBug(`double fput: ${this.name} (file #${this.id}) has no references left`);
    this.#count--;
    if (this.#count > 0) return;
    this.f_op.release?.(this);
    this.dRelease?.();
    this.#state = "released";
  }
}

/** Regular files, to have something that is not a dma-buf in an fd table. */
export const REGULAR_FOPS: FileOperations = { name: "regular file" };

export interface FdEntry {
  readonly file: KFile;
  /** FD_CLOEXEC, from O_CLOEXEC. */
  cloexec: boolean;
}

let nextPid = 100;

/** A task with its fd table (`files_struct`); `rlimitNofile` is RLIMIT_NOFILE. */
export class Process implements LeakSource {
  readonly pid = nextPid++;
  readonly name: string;
  readonly rlimitNofile: number;
  readonly fds = new Map<number, FdEntry>();
  #exited = false;

  constructor(name: string, opts: { rlimitNofile?: number } = {}) {
    this.name = name;
    this.rlimitNofile = opts.rlimitNofile ?? 1024;
  }

  get exited(): boolean {
    return this.#exited;
  }

  /** The task is gone: its table must not be used again. */
  markExited(): void {
    this.#exited = true;
  }

  live(what: string): this {
    if (this.#exited)
      throw new KernelBug(`${what} on ${this.name} (pid ${this.pid}), which exited`);
    return this;
  }

  /** The lowest free fd below RLIMIT_NOFILE, or -EMFILE. models get_unused_fd_flags() */
  getUnusedFd(): KResult<number> {
    this.live("get_unused_fd_flags()");
    for (let fd = 0; fd < this.rlimitNofile; fd++) if (!this.fds.has(fd)) return kok(fd);
    return kerr("EMFILE", `${this.name}: all ${this.rlimitNofile} fds in use`);
  }

  /** Installs `file` (consuming the caller's reference). models fd_install() */
  install(fd: number, file: KFile, flags: number): void {
    this.live("fd_install()");
    if (this.fds.has(fd)) throw new KernelBug(`fd_install(): fd ${fd} of ${this.name} is in use`);
    this.fds.set(fd, { file: file.live("fd_install()"), cloexec: (flags & O_CLOEXEC) !== 0 });
  }

  /** +1 on the file behind `fd`, or null. models fget() */
  fget(fd: number): KFile | null {
    this.live("fget()");
    const e = this.fds.get(fd);
    return e ? e.file.get() : null;
  }

  /** The file behind `fd` without a reference (the syscall paths' fdget), or null. */
  peek(fd: number): KFile | null {
    return this.live("fdget()").fds.get(fd)?.file ?? null;
  }

  /** Every fd still open, lowest first (a process that exited has none). */
  leaks(): Leak[] {
    const owner = `process ${this.name} (pid ${this.pid})`;
    return [...this.fds]
      .sort(([a], [b]) => a - b)
      .map(([fd, e]) => ({
        kind: "fd",
        owner,
        detail: `fd ${fd} -> ${e.file.private_data ? e.file.private_data.describe() : e.file.name} (${e.file.f_op.name}, file #${e.file.id}, ${e.file.count} reference(s)${e.cloexec ? ", O_CLOEXEC" : ""}) still open`,
      }));
  }
}

/** Opens a regular file into the lowest free fd. models open(2) of an ordinary file */
export function openRegular(proc: Process, name: string, flags = O_RDWR): KResult<number> {
  const fd = proc.getUnusedFd();
  if (!fd.ok) return fd;
  proc.install(fd.value, new KFile({ name, fops: REGULAR_FOPS, flags }), flags);
  return fd;
}

// models close(2) / close_fd(): -EBADF if not open, else drop the table's reference.
export function sysClose(proc: Process, fd: number): KResult {
  const e = proc.live("close()").fds.get(fd);
  if (!e) return kerr("EBADF", `${proc.name}: fd ${fd} is not open`);
  proc.fds.delete(fd);
  e.file.put();
  return kok();
}

// models dup(2): lowest free fd, same file (+1), FD_CLOEXEC cleared on the copy (fs/file.c do_dup2).
export function sysDup(proc: Process, fd: number): KResult<number> {
  const e = proc.live("dup()").fds.get(fd);
  if (!e) return kerr("EBADF", `${proc.name}: fd ${fd} is not open`);
  const nfd = proc.getUnusedFd();
  if (!nfd.ok) return nfd;
  proc.install(nfd.value, e.file.get(), 0);
  return nfd;
}

/**
 * Pass `fd` over a unix socket to `to` (SCM_RIGHTS): the sender's file gains a reference in the
 * receiver's table; `cloexec` is MSG_CMSG_CLOEXEC. If the receiver's table is full the file is
 * dropped (the kernel sets MSG_CTRUNC; here: -EMFILE). models scm_fp_copy() + scm_detach_fds()
 */
export function sendFd(
  from: Process,
  fd: number,
  to: Process,
  opts: { cloexec?: boolean } = {},
): KResult<number> {
  const file = from.live("sendmsg()").fget(fd); // scm_fp_copy: the skb holds a reference
  if (!file) return kerr("EBADF", `${from.name}: fd ${fd} is not open`);
  const nfd = to.live("recvmsg()").getUnusedFd();
  if (!nfd.ok) {
    file.put(); // __scm_destroy drops what was not received
    return nfd;
  }
  to.install(nfd.value, file, opts.cloexec ? O_CLOEXEC : 0);
  return nfd;
}

// models do_close_on_exec(): every FD_CLOEXEC fd is closed at execve(2).
export function sysExec(proc: Process): void {
  for (const [fd, e] of [...proc.live("execve()").fds]) if (e.cloexec) sysClose(proc, fd);
}

// models exit_files(): every fd is closed when the task exits.
export function sysExit(proc: Process): void {
  for (const fd of [...proc.live("exit()").fds.keys()]) sysClose(proc, fd);
  proc.markExited();
}

// models ksys_lseek(): -EBADF, -ESPIPE without llseek (no_llseek), else f_op->llseek.
export function sysLseek(
  proc: Process,
  fd: number,
  offset: bigint,
  whence: number,
): KResult<bigint> {
  const f = proc.peek(fd);
  if (!f) return kerr("EBADF", `${proc.name}: fd ${fd} is not open`);
  if (!f.f_op.llseek) return kok(0n); // ordinary files: position handling not modelled
  return f.f_op.llseek(f, offset, whence);
}

/**
 * mmap(2) of a file: the VFS checks, then `f_op->mmap`. models ksys_mmap_pgoff() + do_mmap()
 * (mm/mmap.c): -EBADF; len 0 -> -EINVAL; MAP_SHARED with PROT_WRITE on a file not opened for
 * writing -> -EACCES; any mapping of a file not opened for reading -> -EACCES; no f_op->mmap ->
 * -ENODEV.
 */
export function sysMmap(
  proc: Process,
  fd: number,
  req: { length: bigint; prot: number; flags: number; pgoff?: bigint },
): KResult<Vma> {
  const f = proc.peek(fd);
  if (!f) return kerr("EBADF", `${proc.name}: fd ${fd} is not open`);
  if (req.length === 0n) return kerr("EINVAL", "mmap of length 0");
  const type = req.flags & MAP_TYPE;
  const shared = type === MAP_SHARED || type === MAP_SHARED_VALIDATE;
  if (!shared && type !== MAP_PRIVATE)
    return kerr("EINVAL", "mmap needs MAP_SHARED, MAP_SHARED_VALIDATE or MAP_PRIVATE");
  // do_mmap: MAP_SHARED + PROT_WRITE needs FMODE_WRITE, then (fallthrough) every mapping needs FMODE_READ
  if (shared && req.prot & PROT_WRITE && !(f.f_mode & FMODE_WRITE))
    return kerr("EACCES", `${f.name} is not open for writing; MAP_SHARED with PROT_WRITE refused`);
  if (!(f.f_mode & FMODE_READ))
    return kerr("EACCES", `${f.name} is not open for reading; it cannot be mapped`);
  if (!f.f_op.mmap) return kerr("ENODEV", `${f.name} has no mmap`);
  const pageMask = (1n << BigInt(PAGE_SHIFT)) - 1n;
  const vma: Vma = {
    pgoff: req.pgoff ?? 0n,
    pages: (req.length + pageMask) >> BigInt(PAGE_SHIFT),
    prot: req.prot,
    shared,
    file: f,
  };
  const r = f.f_op.mmap(f, vma);
  return r.ok ? kok(vma) : r;
}

/**
 * One poll(2) round on `fd` for `events`: the ready ones; a file without poll is always ready
 * for reading and writing (DEFAULT_POLLMASK). models do_pollfd() + vfs_poll()
 */
export function sysPoll(proc: Process, fd: number, events: number): KResult<number> {
  const f = proc.peek(fd);
  if (!f) return kerr("EBADF", `${proc.name}: fd ${fd} is not open`);
  if (!f.f_op.poll) return kok(events & (EPOLLIN | EPOLLOUT));
  return kok(f.f_op.poll(f, events));
}

// models ksys_ioctl() → vfs_ioctl(): -EBADF, -ENOTTY without unlocked_ioctl.
export function sysIoctl(proc: Process, fd: number, cmd: number, arg: unknown): KResult<number> {
  const f = proc.peek(fd);
  if (!f) return kerr("EBADF", `${proc.name}: fd ${fd} is not open`);
  if (!f.f_op.unlocked_ioctl) return kerr("ENOTTY", `${f.name} has no ioctls`);
  return f.f_op.unlocked_ioctl(f, cmd, arg, proc);
}

/** `is_dma_buf_file()`: the file's operations are dma-buf's. */
export function isDmaBufFile(file: KFile): boolean {
  return file.private_data !== null && file.f_op === file.private_data.file.f_op;
}

/**
 * Installs the buffer's file in a new fd of `proc`, consuming the creator's reference; on
 * failure (-EMFILE) the caller keeps it. Only O_CLOEXEC of `flags` matters.
 * models dma_buf_fd()
 */
export function dmaBufFd(proc: Process, dmabuf: DmaBuf | null, flags: number): KResult<number> {
  if (!dmabuf) return kerr("EINVAL", "dma_buf_fd(NULL)");
  const file = dmabuf.live("dma_buf_fd()").file;
  const fd = proc.getUnusedFd();
  if (!fd.ok) return fd;
  proc.install(fd.value, file, flags);
  return fd;
}

/** +1 on the buffer behind `fd`. -EBADF: not open; -EINVAL: not a dma-buf (ref dropped). models dma_buf_get() */
export function dmaBufGet(proc: Process, fd: number): KResult<DmaBuf> {
  const file = proc.fget(fd);
  if (!file) return kerr("EBADF", `${proc.name}: fd ${fd} is not open`);
  if (!isDmaBufFile(file)) {
    file.put();
    return kerr("EINVAL", `${proc.name}: fd ${fd} (${file.name}) is not a dma-buf`);
  }
  return kok(file.private_data!);
}

/** -1 on the buffer's file; WARN and nothing on NULL. models dma_buf_put() */
export function dmaBufPut(dmabuf: DmaBuf | null, warn?: (msg: string) => void): void {
  if (!dmabuf) {
    warn?.("dma_buf_put(NULL)");
    return;
  }
  if (dmabuf.file.state === "released")
    throw new KernelBug(`dma_buf_put() on ${dmabuf.describe()}, already released (double put)`);
  dmabuf.file.put();
}

/** `sync_file_fops` (drivers/dma-buf/sync_file.c); its ioctls are not modelled. */
export const SYNC_FILE_FOPS: FileOperations = { name: "sync_file_fops" };

/** A new sync_file holding `fence` (count 1). models sync_file_create() */
export function syncFileCreate(fence: DmaFence): KFile {
  return new KFile({
    name: `sync_file(${fence.name})`,
    fops: SYNC_FILE_FOPS,
    flags: O_RDONLY,
    fence,
  });
}

/** The fence of the sync_file behind `fd`, or null (not open, not a sync_file). models sync_file_get_fence() */
export function syncFileGetFence(proc: Process, fd: number): DmaFence | null {
  const f = proc.peek(fd);
  return f && f.f_op === SYNC_FILE_FOPS ? f.fence : null;
}
