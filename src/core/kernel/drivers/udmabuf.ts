/**
 * @module udmabuf
 * System-memory dma-bufs made from user space (spec dma-buf.md §8.49–51):
 * - memfds (mm/memfd.c, mm/shmem.c, as far as udmabuf needs them): a shmem inode whose pages
 *   come from `System.allocPages` one page at a time when first touched, `ftruncate`, the seals
 *   (F_ADD_SEALS / F_GET_SEALS), pread/pwrite;
 * - udmabuf (drivers/dma-buf/udmabuf.c): /dev/udmabuf, UDMABUF_CREATE and UDMABUF_CREATE_LIST
 *   with the checks in the kernel's order, the pages held for the buffer's life, a page-backed
 *   table per map mapped with `dma_map_sgtable()` for the importer's device (so any importer works,
 *   peer-to-peer capable or not), CPU access through a table the driver maps for its own misc
 *   device, mmap (MAP_SHARED only), and what differs between 6.1 and mainline (`profile.udmabuf`);
 * - the system heap (drivers/dma-buf/dma-heap.c, heaps/system_heap.c): /dev/dma_heap/system,
 *   DMA_HEAP_IOCTL_ALLOC, 1 MiB / 64 KiB / 4 KiB chunks, a private copy of the page list per
 *   attachment mapped and unmapped in place, and CPU access that syncs only the attachments that
 *   are mapped.
 *
 * Model choices: no hugetlbfs memfds; shmem pages are never swapped or migrated; mmap of a memfd
 * and the faults of a udmabuf mapping are not simulated (pread/pwrite stand for CPU access);
 * mainline's FOLL_PIN of memfd folios counts as one page reference; `vmap` hands out a made-up
 * vmalloc address. The udmabuf misc device is a DMA device without a PCI function, dma-direct,
 * 64-bit mask (dma_coerce_mask_and_coherent at init).
 */

import { hex, physAddr } from "../../hw/address.ts";
import type { PciFunction } from "../../hw/machine.ts";
import { DMA_BIT_MASK, type DmaDevice } from "../dma/device.ts";
import type { DmaDirection } from "../dma/mapping.ts";
import type { DmaBufAttachment } from "../dma-buf/attachment.ts";
import {
  type DmaBuf,
  type DmaBufCore,
  type DmaBufOps,
  dmaBufExport,
  type IosysMap,
} from "../dma-buf/dma-buf.ts";
import {
  dmaBufFd,
  dmaBufPut,
  type FileOperations,
  FMODE_WRITE,
  KFile,
  O_ACCMODE,
  O_CLOEXEC,
  O_RDWR,
  type Process,
  sysIoctl,
  type Vma,
} from "../dma-buf/file.ts";
import { KernelBug, type KResult, kerr, kok } from "../errno.ts";
import { dmaClient } from "../iommu/iova.ts";
import { type Leak, type LeakSource, unmappedTableLeaks } from "../leaks.ts";
import {
  for_each_sgtable_dma_sg,
  for_each_sgtable_sg,
  type SgTable,
  sg_alloc_table,
  sg_alloc_table_from_pages,
  sg_free_table,
  sg_page,
  sg_set_page,
} from "../lib/scatterlist.ts";
import { PAGE_SHIFT, PAGE_SIZE, PAGE_SIZE_N, type Page } from "../mm/page.ts";
import { System } from "../system.ts";

const MiB = 1n << 20n;
const IOC = (dir: number, type: number, nr: number, size: number): number =>
  ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;

// ── shmem / memfd ────────────────────────────────────────────────────────────────────────────

// include/uapi/linux/fcntl.h, memfd.h
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 0x0001;
export const F_SEAL_SHRINK = 0x0002;
export const F_SEAL_GROW = 0x0004;
export const F_SEAL_WRITE = 0x0008;
export const F_SEAL_FUTURE_WRITE = 0x0010;
const F_ALL_SEALS = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE;
export const MFD_CLOEXEC = 0x0001;
export const MFD_ALLOW_SEALING = 0x0002;
export const MFD_HUGETLB = 0x0004;

let nextIno = 1;

/** A shmem inode (a memfd's): its size, seals and page cache. */
export class ShmemInode {
  readonly ino = nextIno++;
  readonly name: string;
  /** `i_size`. */
  size = 0n;
  /** `info->seals`. */
  seals: number;
  /** The page cache: page index → page (one reference each, the cache's). */
  readonly pages = new Map<number, Page>();
  /** Open files (the inode is evicted, its page cache dropped, when the last one closes). */
  files = 0;
  evicted = false;

  constructor(name: string, seals: number) {
    this.name = name;
    this.seals = seals;
  }

  describe(): string {
    return `memfd:${this.name} (ino ${this.ino}, ${this.size} bytes)`;
  }
}

/** tmpfs as memfds see it, on one `System`. */
export class ShmemFs implements LeakSource {
  readonly sys: System;
  readonly #inodes = new Map<KFile, ShmemInode>();
  readonly #live = new Set<ShmemInode>();
  readonly #fops: FileOperations;

  constructor(sys: System) {
    this.sys = sys;
    this.#fops = {
      name: "shmem_file_operations",
      release: (file) => this.#release(file),
    };
  }

  /** The shmem inode behind a file, or null for any other file. models shmem_file() */
  inodeOf(file: KFile): ShmemInode | null {
    return this.#inodes.get(file) ?? null;
  }

  /**
   * A new memfd in `proc`: size 0; F_SEAL_SEAL unless MFD_ALLOW_SEALING; MFD_HUGETLB is not
   * modelled (throws); unknown flags → -EINVAL. models memfd_create(2)
   */
  memfdCreate(
    proc: Process,
    name: string,
    flags = MFD_CLOEXEC | MFD_ALLOW_SEALING,
  ): KResult<number> {
    if (flags & MFD_HUGETLB)
      throw new Error("memfd_create(MFD_HUGETLB): hugetlbfs is not modelled");
    if (flags & ~(MFD_CLOEXEC | MFD_ALLOW_SEALING))
      return kerr("EINVAL", `memfd_create: unknown flags 0x${flags.toString(16)}`);
    const fd = proc.getUnusedFd();
    if (!fd.ok) return fd;
    const inode = new ShmemInode(name, flags & MFD_ALLOW_SEALING ? 0 : F_SEAL_SEAL);
    const file = new KFile({ name: `/memfd:${name} (deleted)`, fops: this.#fops, flags: O_RDWR });
    this.#inodes.set(file, inode);
    this.#live.add(inode);
    inode.files++;
    proc.install(fd.value, file, flags & MFD_CLOEXEC ? O_CLOEXEC : 0);
    return fd;
  }

  // the last close of the file: the inode goes, and with it the page cache's references
  #release(file: KFile): void {
    const inode = this.#inodes.get(file);
    if (!inode) return;
    this.#inodes.delete(file);
    if (--inode.files > 0) return;
    // models shmem_evict_inode() → truncate_inode_pages()
    for (const p of inode.pages.values()) this.sys.putPage(p);
    inode.pages.clear();
    inode.evicted = true;
    this.#live.delete(inode);
  }

  #fileInode(proc: Process, fd: number): KResult<{ file: KFile; inode: ShmemInode | null }> {
    const file = proc.peek(fd);
    if (!file) return kerr("EBADF", `${proc.name}: fd ${fd} is not open`);
    return kok({ file, inode: this.inodeOf(file) });
  }

  /**
   * ftruncate(2) of a memfd: shrinking with F_SEAL_SHRINK or growing with F_SEAL_GROW → -EPERM;
   * shrinking drops the page cache beyond the new size. models shmem_setattr()
   */
  ftruncate(proc: Process, fd: number, length: bigint): KResult {
    const r = this.#fileInode(proc, fd);
    if (!r.ok) return r;
    const inode = r.value.inode;
    if (!inode) throw new Error("ftruncate of a file that is not a memfd is not modelled");
    if (length < 0n) return kerr("EINVAL", "negative length");
    if (length < inode.size && inode.seals & F_SEAL_SHRINK)
      return kerr("EPERM", `${inode.describe()}: F_SEAL_SHRINK`);
    if (length > inode.size && inode.seals & F_SEAL_GROW)
      return kerr("EPERM", `${inode.describe()}: F_SEAL_GROW`);
    inode.size = length;
    for (const [i, p] of [...inode.pages]) {
      if (BigInt(i) * PAGE_SIZE_N < length) continue;
      inode.pages.delete(i);
      this.sys.putPage(p); // truncate_inode_pages_range(): the cache's reference
    }
    return kok();
  }

  /**
   * fcntl(fd, F_ADD_SEALS, seals). models memfd_add_seals(): not open for writing → -EPERM;
   * unknown seal bits → -EINVAL; not a memfd → -EINVAL; F_SEAL_SEAL already set → -EPERM;
   * F_SEAL_WRITE while pages are held by someone besides the page cache → -EBUSY (what
   * memfd_wait_for_pins returns once it gives up waiting).
   */
  addSeals(proc: Process, fd: number, seals: number): KResult {
    const r = this.#fileInode(proc, fd);
    if (!r.ok) return r;
    const { file, inode } = r.value;
    if (!(file.f_mode & FMODE_WRITE)) return kerr("EPERM", `${file.name} is not open for writing`);
    if (seals & ~F_ALL_SEALS) return kerr("EINVAL", `unknown seals 0x${seals.toString(16)}`);
    if (!inode) return kerr("EINVAL", `${file.name} does not support seals`);
    if (inode.seals & F_SEAL_SEAL) return kerr("EPERM", `${inode.describe()}: F_SEAL_SEAL`);
    if (seals & F_SEAL_WRITE && !(inode.seals & F_SEAL_WRITE)) {
      const pinned = [...inode.pages.values()].filter((p) => (this.sys.pageRefCount(p) ?? 1) > 1);
      if (pinned.length > 0)
        return kerr(
          "EBUSY",
          `${inode.describe()}: ${pinned.length} page(s) still referenced beyond the page cache`,
        );
    }
    inode.seals |= seals;
    return kok();
  }

  /** fcntl(fd, F_GET_SEALS): the seals, or -EINVAL for a file without them. models memfd_get_seals() */
  getSeals(proc: Process, fd: number): KResult<number> {
    const r = this.#fileInode(proc, fd);
    if (!r.ok) return r;
    if (!r.value.inode) return kerr("EINVAL", `${r.value.file.name} does not support seals`);
    return kok(r.value.inode.seals);
  }

  /**
   * The page at `index`, allocated on first use, with a reference for the caller. Beyond i_size
   * → -EINVAL. models shmem_read_mapping_page() (shmem_get_folio_gfp with SGP_CACHE)
   */
  readMappingPage(inode: ShmemInode, index: number): KResult<Page> {
    if (BigInt(index) * PAGE_SIZE_N >= inode.size)
      return kerr("EINVAL", `${inode.describe()}: page ${index} is beyond the end of the file`);
    const p = this.#page(inode, index);
    this.sys.getPage(p);
    return kok(p);
  }

  #page(inode: ShmemInode, index: number): Page {
    let p = inode.pages.get(index);
    if (!p) {
      p = this.sys.allocPages(PAGE_SIZE_N)[0]!;
      inode.pages.set(index, p);
    }
    return p;
  }

  /**
   * pwrite(2): F_SEAL_WRITE / F_SEAL_FUTURE_WRITE → -EPERM; past the end grows the file (unless
   * F_SEAL_GROW: -EPERM); pages allocated as touched. The bytes written.
   */
  pwrite(proc: Process, fd: number, offset: bigint, data: Uint8Array): KResult<number> {
    const r = this.#fileInode(proc, fd);
    if (!r.ok) return r;
    const inode = r.value.inode;
    if (!inode) throw new Error("pwrite of a file that is not a memfd is not modelled");
    if (inode.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
      return kerr("EPERM", `${inode.describe()}: write-sealed`);
    const end = offset + BigInt(data.length);
    if (end > inode.size && inode.seals & F_SEAL_GROW)
      return kerr("EPERM", `${inode.describe()}: F_SEAL_GROW`);
    let done = 0;
    while (done < data.length) {
      const at = offset + BigInt(done);
      const idx = Number(at / PAGE_SIZE_N);
      const inPage = Number(at % PAGE_SIZE_N);
      const n = Math.min(data.length - done, PAGE_SIZE - inPage);
      const p = this.#page(inode, idx);
      this.sys.memory.write(
        physAddr(System.phys(p) + BigInt(inPage)),
        data.subarray(done, done + n),
      );
      done += n;
    }
    if (end > inode.size) inode.size = end;
    return kok(data.length);
  }

  /** pread(2): up to the end of the file; holes read as zeros without allocating. */
  pread(proc: Process, fd: number, offset: bigint, length: number): KResult<Uint8Array> {
    const r = this.#fileInode(proc, fd);
    if (!r.ok) return r;
    const inode = r.value.inode;
    if (!inode) throw new Error("pread of a file that is not a memfd is not modelled");
    const avail = inode.size > offset ? inode.size - offset : 0n;
    const len = Number(BigInt(length) < avail ? BigInt(length) : avail);
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const at = offset + BigInt(done);
      const idx = Number(at / PAGE_SIZE_N);
      const inPage = Number(at % PAGE_SIZE_N);
      const n = Math.min(len - done, PAGE_SIZE - inPage);
      const p = inode.pages.get(idx);
      if (p) out.set(this.sys.memory.read(physAddr(System.phys(p) + BigInt(inPage)), n), done);
      done += n;
    }
    return kok(out);
  }

  /** CPU physical address of byte `offset` of the memfd behind `fd` (its page must exist). */
  phys(proc: Process, fd: number, offset: bigint): bigint {
    const f = proc.peek(fd);
    const inode = f ? this.inodeOf(f) : null;
    const p = inode?.pages.get(Number(offset / PAGE_SIZE_N));
    if (!p) throw new Error(`no page at ${hex(offset)} of fd ${fd}`);
    return System.phys(p) + (offset % PAGE_SIZE_N);
  }

  /** Inodes still alive (a file open). */
  leaks(): Leak[] {
    return [...this.#live].map((i) => ({
      kind: "memfd",
      owner: "shmem",
      detail: `${i.describe()}: ${i.files} file(s) open, ${i.pages.size} page(s) in its page cache`,
    }));
  }
}

// ── shared helpers ───────────────────────────────────────────────────────────────────────────

/**
 * A DMA device that is not a PCI function (a misc device's `this_device`): dma-direct, 64-bit
 * masks, the default 64 KiB segments and no boundary. Asking for its PCI function is a model bug.
 */
export function miscDmaDevice(name: string): DmaDevice {
  return {
    get fn(): PciFunction {
      throw new KernelBug(`${name} is a misc device, not a PCI function`);
    },
    name,
    dmaMask: DMA_BIT_MASK(64),
    coherentDmaMask: DMA_BIT_MASK(64),
    busDmaLimit: 0n,
    maxSegSize: 65536,
    segBoundaryMask: DMA_BIT_MASK(64),
    coherent: true,
    untrusted: false,
    translation: { kind: "none" },
    client: dmaClient(name, { isPci: false }),
  };
}

/**
 * Sync every DMA segment of a mapped table for the CPU or the device (bounce buffers copied,
 * dma-debug told). models dma_sync_sgtable_for_cpu() / dma_sync_sgtable_for_device()
 */
export function dmaSyncSgtable(
  sys: System,
  dev: DmaDevice,
  sgt: SgTable,
  dir: DmaDirection,
  to: "cpu" | "device",
): void {
  for (const s of for_each_sgtable_dma_sg(sgt)) {
    if (to === "cpu") sys.dma.syncSingleForCpu(dev, s.dma_address, BigInt(s.dma_length), dir);
    else sys.dma.syncSingleForDevice(dev, s.dma_address, BigInt(s.dma_length), dir);
  }
}

const VMALLOC_START = 0xffff_c900_0000_0000n;
let nextVmalloc = VMALLOC_START;

/** A made-up vmalloc range of `bytes` (plus a guard page). */
function vmallocRange(bytes: bigint): bigint {
  const va = nextVmalloc;
  nextVmalloc += ((bytes + PAGE_SIZE_N - 1n) / PAGE_SIZE_N + 1n) * PAGE_SIZE_N;
  return va;
}

// ── udmabuf ──────────────────────────────────────────────────────────────────────────────────

// include/uapi/linux/udmabuf.h
export const UDMABUF_FLAGS_CLOEXEC = 0x01;
/** `_IOW('u', 0x42, struct udmabuf_create)` (24 bytes). */
export const UDMABUF_CREATE = IOC(1, 0x75, 0x42, 24);
/** `_IOW('u', 0x43, struct udmabuf_create_list)` (8 bytes; the items follow). */
export const UDMABUF_CREATE_LIST = IOC(1, 0x75, 0x43, 8);

/** `struct udmabuf_create`. */
export interface UdmabufCreate {
  readonly memfd: number;
  /** Only UDMABUF_FLAGS_CLOEXEC means something; other bits are ignored, not refused. */
  readonly flags: number;
  readonly offset: bigint;
  readonly size: bigint;
}

/** `struct udmabuf_create_item`. */
export interface UdmabufCreateItem {
  readonly memfd: number;
  readonly offset: bigint;
  readonly size: bigint;
}

/** `struct udmabuf_create_list`; `list` shorter than `count` is a copy fault. */
export interface UdmabufCreateList {
  readonly flags: number;
  readonly count: number;
  readonly list: readonly UdmabufCreateItem[];
}

/** `struct udmabuf`. */
export interface Udmabuf {
  readonly pagecount: number;
  /** The pages, each held once (6.1: get_page; mainline: a folio pin). */
  readonly pages: readonly Page[];
  /** The table begin_cpu_access mapped for the misc device, kept until release. */
  sg: SgTable | null;
  /** 6.1 `sg_dir`: the direction `sg` was mapped with. */
  sgDir: DmaDirection;
  dmabuf: DmaBuf | null;
  vmapAddr: bigint | null;
}

export interface UdmabufOptions {
  /** Module parameter `size_limit_mb` (default 64). */
  readonly sizeLimitMb?: number | undefined;
  /** Module parameter `list_limit` (default 1024). */
  readonly listLimit?: number | undefined;
}

/** The udmabuf misc device (/dev/udmabuf). */
export class UdmabufDevice implements LeakSource {
  readonly sys: System;
  readonly core: DmaBufCore;
  readonly shmem: ShmemFs;
  /** `size_limit_mb` and `list_limit` (0644 module parameters: writable). */
  sizeLimitMb: number;
  listLimit: number;
  /** `udmabuf_misc.this_device`: the device CPU-access tables are mapped for. */
  readonly miscDev: DmaDevice;
  /** Buffers whose release has not run. */
  readonly bufs = new Set<Udmabuf>();
  /** Tables map_dma_buf handed out and unmap has not taken back. */
  readonly outstanding = new Set<SgTable>();
  readonly #fops: FileOperations;

  constructor(sys: System, core: DmaBufCore, shmem: ShmemFs, opts: UdmabufOptions = {}) {
    this.sys = sys;
    this.core = core;
    this.shmem = shmem;
    this.sizeLimitMb = opts.sizeLimitMb ?? 64;
    this.listLimit = opts.listLimit ?? 1024;
    this.miscDev = miscDmaDevice("misc udmabuf");
    this.#fops = {
      name: "udmabuf_fops",
      unlocked_ioctl: (_f, cmd, arg, proc) => this.#ioctl(cmd, arg, proc),
    };
  }

  #emit(ev: string, msg: string, data?: Readonly<Record<string, unknown>>): void {
    this.sys.trace.emit(ev, `udmabuf: ${msg}`, data);
  }

  /** open(2) of /dev/udmabuf. */
  open(proc: Process, flags: number = O_RDWR | O_CLOEXEC): KResult<number> {
    const fd = proc.getUnusedFd();
    if (!fd.ok) return fd;
    proc.install(fd.value, new KFile({ name: "/dev/udmabuf", fops: this.#fops, flags }), flags);
    return fd;
  }

  /** models udmabuf_ioctl(): CREATE, CREATE_LIST, anything else -ENOTTY. */
  #ioctl(cmd: number, arg: unknown, proc: Process): KResult<number> {
    if (cmd === UDMABUF_CREATE) return this.#ioctlCreate(arg, proc);
    if (cmd === UDMABUF_CREATE_LIST) return this.#ioctlCreateList(arg, proc);
    return kerr("ENOTTY", `udmabuf: ioctl 0x${cmd.toString(16)} unknown`);
  }

  /** One item, `count` 1. models udmabuf_ioctl_create() */
  #ioctlCreate(arg: unknown, proc: Process): KResult<number> {
    const c = arg as Partial<UdmabufCreate> | null;
    if (
      !c ||
      typeof c.memfd !== "number" ||
      typeof c.flags !== "number" ||
      typeof c.offset !== "bigint" ||
      typeof c.size !== "bigint"
    )
      return kerr("EFAULT", "UDMABUF_CREATE: copy_from_user failed");
    return this.#create(proc, c.flags, [{ memfd: c.memfd, offset: c.offset, size: c.size }]);
  }

  /** count > list_limit → -EINVAL; the items copied (short → -EFAULT). models udmabuf_ioctl_create_list() */
  #ioctlCreateList(arg: unknown, proc: Process): KResult<number> {
    const h = arg as Partial<UdmabufCreateList> | null;
    if (!h || typeof h.flags !== "number" || typeof h.count !== "number")
      return kerr("EFAULT", "UDMABUF_CREATE_LIST: copy_from_user failed");
    const count = h.count >>> 0;
    if (count > this.listLimit)
      return kerr("EINVAL", `count ${count} > list_limit ${this.listLimit}`);
    if (!Array.isArray(h.list) || h.list.length < count)
      return kerr("EFAULT", `fewer than ${count} items: copy_from_user failed`);
    return this.#create(proc, h.flags, h.list.slice(0, count));
  }

  /**
   * In the kernel's order: every item's offset and size page aligned and the running page count
   * within size_limit_mb (-EINVAL); no pages at all → -EINVAL; then per item: fd not open or not
   * a shmem file → -EBADFD; seals without F_SEAL_SHRINK, or with F_SEAL_WRITE /
   * F_SEAL_FUTURE_WRITE → -EINVAL; each page held (beyond the end of the memfd → -EINVAL). On
   * failure every page taken so far is given back. Then export (O_RDWR) and the fd (O_CLOEXEC
   * from UDMABUF_FLAGS_CLOEXEC). models udmabuf_create()
   */
  #create(proc: Process, flags: number, list: readonly UdmabufCreateItem[]): KResult<number> {
    const prof = this.core.profile.udmabuf;
    const fail = (r: KResult<never>, pages: readonly Page[] = []): KResult<never> => {
      for (const p of pages) this.sys.putPage(p);
      if (!r.ok)
        this.#emit("udmabuf:create", `create failed: -${r.errno} (${r.reason})`, {
          errno: r.errno,
        });
      return r;
    };
    const pglimit = (BigInt(this.sizeLimitMb) * MiB) >> BigInt(PAGE_SHIFT);
    let pgcnt = 0n;
    for (const [i, it] of list.entries()) {
      if (it.offset % PAGE_SIZE_N !== 0n)
        return fail(kerr("EINVAL", `item ${i}: offset ${hex(it.offset)} not page aligned`));
      if (it.size % PAGE_SIZE_N !== 0n)
        return fail(kerr("EINVAL", `item ${i}: size ${hex(it.size)} not page aligned`));
      pgcnt += it.size >> BigInt(PAGE_SHIFT);
      if (pgcnt > pglimit)
        return fail(kerr("EINVAL", `${pgcnt} pages exceed size_limit_mb ${this.sizeLimitMb} MiB`));
    }
    if (pgcnt === 0n) return fail(kerr("EINVAL", "no pages"));
    const pages: Page[] = [];
    for (const [i, it] of list.entries()) {
      const file = proc.peek(it.memfd);
      if (!file) return fail(kerr("EBADFD", `item ${i}: fd ${it.memfd} is not open`), pages);
      const inode = this.shmem.inodeOf(file);
      if (!inode)
        return fail(
          kerr("EBADFD", `item ${i}: ${file.name} is not a shmem or hugetlbfs file`),
          pages,
        );
      // models check_memfd_seals()
      if ((inode.seals & F_SEAL_SHRINK) === 0 || inode.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
        return fail(
          kerr(
            "EINVAL",
            `item ${i}: seals 0x${inode.seals.toString(16)} (F_SEAL_SHRINK required, F_SEAL_WRITE and F_SEAL_FUTURE_WRITE refused)`,
          ),
          pages,
        );
      const first = Number(it.offset >> BigInt(PAGE_SHIFT));
      const n = Number(it.size >> BigInt(PAGE_SHIFT));
      for (let k = 0; k < n; k++) {
        // 6.1: shmem_read_mapping_page(); mainline: memfd_pin_folios() (both -EINVAL past EOF)
        const p = this.shmem.readMappingPage(inode, first + k);
        if (!p.ok) return fail(p, pages);
        pages.push(p.value);
      }
    }
    const ubuf: Udmabuf = {
      pagecount: pages.length,
      pages,
      sg: null,
      sgDir: "bidirectional",
      dmabuf: null,
      vmapAddr: null,
    };
    const d = dmaBufExport(this.core, {
      exp_name: "udmabuf",
      owner: null,
      ops: this.#ops(ubuf),
      size: BigInt(pages.length) * PAGE_SIZE_N,
      flags: O_RDWR,
      priv: ubuf,
    });
    if (!d.ok) return fail(d, pages);
    ubuf.dmabuf = d.value;
    this.bufs.add(ubuf);
    const fd = dmaBufFd(proc, d.value, flags & UDMABUF_FLAGS_CLOEXEC ? O_CLOEXEC : 0);
    if (!fd.ok) {
      dmaBufPut(d.value); // release gives the pages back
      return fd;
    }
    this.#emit(
      "udmabuf:create",
      `${d.value.describe()} from ${list.length} memfd range(s), ${pages.length} page(s) (${prof.pageHold}), fd ${fd.value}`,
      { ino: d.value.ino, pages: pages.length, items: list.length, fd: fd.value },
    );
    return fd;
  }

  #ops(ubuf: Udmabuf): DmaBufOps {
    const prof = this.core.profile;
    const ops: { -readonly [K in keyof DmaBufOps]: DmaBufOps[K] } = {
      map_dma_buf: (a, dir) => this.#map(ubuf, a, dir),
      unmap_dma_buf: (a, sgt, dir) => this.#unmap(a, sgt, dir),
      release: () => this.#release(ubuf),
      mmap: (_d, vma) => this.#mmap(vma),
      begin_cpu_access: (_d, dir) => this.#beginCpu(ubuf, dir),
      end_cpu_access: (_d, dir) => this.#endCpu(ubuf, dir),
    };
    // 6.1 sets cache_sgt_mapping; mainline's core no longer has it
    if (prof.dmaBuf.cacheSgtMapping) ops.cache_sgt_mapping = true;
    if (prof.udmabuf.vmap) {
      ops.vmap = (d) => this.#vmap(ubuf, d);
      ops.vunmap = (d) => this.#vunmap(ubuf, d);
    }
    return ops;
  }

  /**
   * A fresh table of the buffer's pages, DMA-mapped for `dev`. 6.1: sg_alloc_table_from_pages
   * (contiguous pages merged), DMA_ATTR_SKIP_CPU_SYNC; mainline: one entry per page, no
   * attributes. models get_sg_table()
   */
  #getSgTable(ubuf: Udmabuf, dev: DmaDevice, dir: DmaDirection): KResult<SgTable> {
    const prof = this.core.profile.udmabuf;
    const name = `udmabuf sgt of ${ubuf.dmabuf?.describe() ?? "udmabuf"} for ${dev.name}`;
    let t: KResult<SgTable>;
    if (prof.sgTable === "from-pages")
      t = sg_alloc_table_from_pages(ubuf.pages, 0, BigInt(ubuf.pagecount) * PAGE_SIZE_N, {
        name,
        mergeRule: "pfn",
      });
    else {
      t = sg_alloc_table(ubuf.pagecount, { name });
      if (t.ok) {
        let i = 0;
        for (const s of for_each_sgtable_sg(t.value))
          sg_set_page(s, ubuf.pages[i++]!, PAGE_SIZE, 0);
      }
    }
    if (!t.ok) return t;
    const m = this.sys.dma.mapSgtable(dev, t.value, dir, { skipCpuSync: prof.mapSkipCpuSync });
    if (!m.ok) {
      sg_free_table(t.value);
      return m;
    }
    return t;
  }

  // models put_sg_table()
  #putSgTable(dev: DmaDevice, sgt: SgTable, dir: DmaDirection): void {
    const prof = this.core.profile.udmabuf;
    this.sys.dma.unmapSgtable(dev, sgt, dir, { skipCpuSync: prof.mapSkipCpuSync });
    sg_free_table(sgt);
  }

  /** models map_udmabuf(): get_sg_table() for the importer's device; peer2peer is not looked at. */
  #map(ubuf: Udmabuf, a: DmaBufAttachment, dir: DmaDirection): KResult<SgTable> {
    const r = this.#getSgTable(ubuf, a.dev, dir);
    if (!r.ok) {
      this.#emit("udmabuf:map", `map for ${a.dev.name} failed: -${r.errno}`, { errno: r.errno });
      return r;
    }
    this.outstanding.add(r.value);
    this.#emit(
      "udmabuf:map",
      `${a.dmabuf.describe()} mapped for ${a.dev.name}: ${r.value.orig_nents} entr(ies), ${r.value.nents} DMA segment(s)`,
      { device: a.dev.name, orig_nents: r.value.orig_nents, nents: r.value.nents },
    );
    return r;
  }

  /** models unmap_udmabuf(): put_sg_table() for the importer's device. */
  #unmap(a: DmaBufAttachment, sgt: SgTable, dir: DmaDirection): void {
    if (!this.outstanding.delete(sgt))
      throw new KernelBug(`udmabuf: unmap_dma_buf got ${sgt.name}, which it never handed out`);
    this.#emit("udmabuf:unmap", `unmapped ${sgt.name}`, { device: a.dev.name });
    this.#putSgTable(a.dev, sgt, dir);
  }

  /** VM_SHARED / VM_MAYSHARE required, else -EINVAL. models mmap_udmabuf() */
  #mmap(vma: Vma): KResult {
    if (!vma.shared) return kerr("EINVAL", "udmabuf mmap needs MAP_SHARED");
    return kok();
  }

  /**
   * First call: map a table for the misc device (its error comes back). 6.1 then syncs it for
   * the CPU (and on every later call); mainline syncs only on later calls.
   * models begin_cpu_udmabuf()
   */
  #beginCpu(ubuf: Udmabuf, dir: DmaDirection): KResult {
    const prof = this.core.profile.udmabuf;
    let created = false;
    if (!ubuf.sg) {
      const t = this.#getSgTable(ubuf, this.miscDev, dir);
      if (!t.ok) return t;
      ubuf.sg = t.value;
      ubuf.sgDir = dir;
      created = true;
    }
    if (!created || prof.beginSyncsNewTable)
      dmaSyncSgtable(this.sys, this.miscDev, ubuf.sg, dir, "cpu");
    this.#emit(
      "udmabuf:cpu_access",
      `begin_cpu_access(${dir}) on ${ubuf.dmabuf?.describe()}${created ? ": CPU table mapped for the misc device" : ""}`,
      { dir, created },
    );
    return kok();
  }

  /** No table yet (no begin_cpu_access before) → -EINVAL; else sync for the device. models end_cpu_udmabuf() */
  #endCpu(ubuf: Udmabuf, dir: DmaDirection): KResult {
    if (!ubuf.sg)
      return kerr(
        "EINVAL",
        `end_cpu_access on ${ubuf.dmabuf?.describe()} without begin_cpu_access`,
      );
    dmaSyncSgtable(this.sys, this.miscDev, ubuf.sg, dir, "device");
    this.#emit("udmabuf:cpu_access", `end_cpu_access(${dir}) on ${ubuf.dmabuf?.describe()}`, {
      dir,
    });
    return kok();
  }

  /** Mainline: the pages in one vmalloc range (resv held). models vmap_udmabuf() */
  #vmap(ubuf: Udmabuf, d: DmaBuf): KResult<IosysMap> {
    d.resv.assertHeld("vmap_udmabuf");
    const addr = vmallocRange(BigInt(ubuf.pagecount) * PAGE_SIZE_N);
    ubuf.vmapAddr = addr;
    return kok({ isIomem: false, addr });
  }

  // models vunmap_udmabuf()
  #vunmap(ubuf: Udmabuf, d: DmaBuf): void {
    d.resv.assertHeld("vunmap_udmabuf");
    ubuf.vmapAddr = null;
  }

  /**
   * The CPU-access table unmapped (6.1 with its own direction, mainline DMA_BIDIRECTIONAL), every
   * page given back. models release_udmabuf()
   */
  #release(ubuf: Udmabuf): void {
    const prof = this.core.profile.udmabuf;
    if (ubuf.sg) {
      this.#putSgTable(
        this.miscDev,
        ubuf.sg,
        prof.releaseDir === "creating-begin" ? ubuf.sgDir : "bidirectional",
      );
      ubuf.sg = null;
    }
    for (const p of ubuf.pages) this.sys.putPage(p);
    this.bufs.delete(ubuf);
    this.#emit(
      "udmabuf:release",
      `${ubuf.dmabuf?.describe()} released: ${ubuf.pagecount} page(s) given back`,
      {
        ino: ubuf.dmabuf?.ino,
      },
    );
  }

  /** Buffers not released and importer tables not unmapped. */
  leaks(): Leak[] {
    const out: Leak[] = unmappedTableLeaks("udmabuf", this.outstanding);
    for (const b of this.bufs)
      out.push({
        kind: "udmabuf",
        owner: "udmabuf",
        detail: `${b.dmabuf?.describe() ?? "udmabuf"} not released: holds ${b.pagecount} memfd page(s)${b.sg ? " and a CPU-access mapping" : ""}`,
      });
    return out;
  }
}

/** ioctl(fd, UDMABUF_CREATE, arg) from `proc`: the new dma-buf fd. */
export function udmabufCreate(proc: Process, fd: number, arg: UdmabufCreate): KResult<number> {
  return sysIoctl(proc, fd, UDMABUF_CREATE, arg);
}

/** ioctl(fd, UDMABUF_CREATE_LIST, arg) from `proc`: the new dma-buf fd. */
export function udmabufCreateList(
  proc: Process,
  fd: number,
  arg: UdmabufCreateList,
): KResult<number> {
  return sysIoctl(proc, fd, UDMABUF_CREATE_LIST, arg);
}

// ── the system heap ──────────────────────────────────────────────────────────────────────────

/** `_IOWR('H', 0x0, struct dma_heap_allocation_data)` (24 bytes). */
export const DMA_HEAP_IOCTL_ALLOC = IOC(3, 0x48, 0x0, 24);
/** `DMA_HEAP_VALID_FD_FLAGS`: O_CLOEXEC | O_ACCMODE. */
export const DMA_HEAP_VALID_FD_FLAGS = O_CLOEXEC | O_ACCMODE;
/** Chunk orders the system heap tries, largest first (1 MiB, 64 KiB, 4 KiB). */
export const SYSTEM_HEAP_ORDERS = [8, 4, 0] as const;

/** `struct dma_heap_allocation_data`; `fd` is written back. */
export interface DmaHeapAllocationData {
  readonly len: bigint;
  fd: number;
  readonly fd_flags: number;
  readonly heap_flags: bigint;
}

/** One chunk of a heap buffer (a compound page of `PAGE_SIZE << order`). */
export interface HeapChunk {
  readonly pages: readonly Page[];
  readonly order: number;
}

/** `struct dma_heap_attachment`. */
export interface HeapAttachment {
  readonly dev: DmaDevice;
  readonly attach: DmaBufAttachment;
  /** The private copy of the buffer's page list (dup_sg_table). */
  readonly table: SgTable;
  mapped: boolean;
}

/** `struct system_heap_buffer`. */
export interface SystemHeapBuffer {
  readonly len: bigint;
  readonly chunks: readonly HeapChunk[];
  /** The buffer's own table: one entry per chunk. */
  readonly sg_table: SgTable;
  /** `attachments`, newest first (list_add). */
  readonly attachments: HeapAttachment[];
  vmap_cnt: number;
  vaddr: bigint | null;
  dmabuf: DmaBuf | null;
}

/** One sync begin/end_cpu_access did, for tests and traces. */
export interface HeapSync {
  readonly device: string;
  readonly dir: DmaDirection;
  readonly to: "cpu" | "device";
}

/** The "system" dma-buf heap (/dev/dma_heap/system). */
export class SystemHeap implements LeakSource {
  readonly sys: System;
  readonly core: DmaBufCore;
  readonly buffers = new Set<SystemHeapBuffer>();
  /** Every per-attachment sync begin/end_cpu_access did, in order. */
  readonly syncs: HeapSync[] = [];
  readonly #fops: FileOperations;

  constructor(sys: System, core: DmaBufCore) {
    this.sys = sys;
    this.core = core;
    this.#fops = {
      name: "dma_heap_fops",
      unlocked_ioctl: (_f, cmd, arg, proc) =>
        cmd === DMA_HEAP_IOCTL_ALLOC
          ? this.#ioctlAllocate(arg, proc)
          : kerr("ENOTTY", `dma_heap: ioctl 0x${cmd.toString(16)} unknown`),
    };
  }

  #emit(ev: string, msg: string, data?: Readonly<Record<string, unknown>>): void {
    this.sys.trace.emit(ev, `system heap: ${msg}`, data);
  }

  /** open(2) of /dev/dma_heap/system. models dma_heap_open() */
  open(proc: Process, flags: number = O_RDWR | O_CLOEXEC): KResult<number> {
    const fd = proc.getUnusedFd();
    if (!fd.ok) return fd;
    proc.install(
      fd.value,
      new KFile({ name: "/dev/dma_heap/system", fops: this.#fops, flags }),
      flags,
    );
    return fd;
  }

  /**
   * `fd` not 0, fd_flags outside O_CLOEXEC | O_ACCMODE, any heap flag, or a length that is 0
   * once page aligned → -EINVAL; then the allocation and the fd (written back in `fd`).
   * models dma_heap_ioctl_allocate() + dma_heap_buffer_alloc()
   */
  #ioctlAllocate(arg: unknown, proc: Process): KResult<number> {
    const a = arg as Partial<DmaHeapAllocationData> | null;
    if (
      !a ||
      typeof a.len !== "bigint" ||
      typeof a.fd !== "number" ||
      typeof a.fd_flags !== "number" ||
      typeof a.heap_flags !== "bigint"
    )
      return kerr("EFAULT", "DMA_HEAP_IOCTL_ALLOC: copy_from_user failed");
    if (a.fd !== 0) return kerr("EINVAL", "fd must be 0 on input");
    if (a.fd_flags & ~DMA_HEAP_VALID_FD_FLAGS)
      return kerr("EINVAL", `fd_flags 0x${a.fd_flags.toString(16)} outside O_CLOEXEC | O_ACCMODE`);
    if (a.heap_flags !== 0n) return kerr("EINVAL", "no heap flags are valid");
    const len = ((a.len + PAGE_SIZE_N - 1n) / PAGE_SIZE_N) * PAGE_SIZE_N;
    if (len === 0n) return kerr("EINVAL", "length 0");
    const d = this.#allocate(len, a.fd_flags);
    if (!d.ok) return d;
    const fd = dmaBufFd(proc, d.value, a.fd_flags);
    if (!fd.ok) {
      dmaBufPut(d.value);
      return fd;
    }
    (a as DmaHeapAllocationData).fd = fd.value;
    return kok(fd.value);
  }

  /**
   * Chunks of the largest order that fits what is left (never larger than the previous one),
   * one table entry each, exported with `fd_flags`. models system_heap_allocate() +
   * alloc_largest_available()
   */
  #allocate(len: bigint, fdFlags: number): KResult<DmaBuf> {
    const chunks: HeapChunk[] = [];
    let left = len;
    let maxOrder: number = SYSTEM_HEAP_ORDERS[0];
    while (left > 0n) {
      const order = SYSTEM_HEAP_ORDERS.find(
        (o) => left >= PAGE_SIZE_N << BigInt(o) && o <= maxOrder,
      );
      if (order === undefined)
        throw new KernelBug("system heap: no order fits a page-aligned rest");
      const pages = this.sys.allocPages(PAGE_SIZE_N << BigInt(order));
      chunks.push({ pages, order });
      left -= PAGE_SIZE_N << BigInt(order);
      maxOrder = order;
    }
    const t = sg_alloc_table(chunks.length, { name: "system heap sg_table" });
    if (!t.ok) {
      for (const c of chunks) this.sys.freePages(c.pages);
      return t;
    }
    let i = 0;
    for (const s of for_each_sgtable_sg(t.value)) {
      const c = chunks[i++]!;
      sg_set_page(s, c.pages[0]!, PAGE_SIZE << c.order, 0);
    }
    const buffer: SystemHeapBuffer = {
      len,
      chunks,
      sg_table: t.value,
      attachments: [],
      vmap_cnt: 0,
      vaddr: null,
      dmabuf: null,
    };
    const d = dmaBufExport(this.core, {
      exp_name: "system",
      owner: null,
      ops: this.#ops(buffer),
      size: len,
      flags: fdFlags,
      priv: buffer,
    });
    if (!d.ok) {
      sg_free_table(t.value);
      for (const c of chunks) this.sys.freePages(c.pages);
      return d;
    }
    buffer.dmabuf = d.value;
    this.buffers.add(buffer);
    this.#emit(
      "dma_heap:alloc",
      `${d.value.describe()}: ${chunks.length} chunk(s) of order ${chunks.map((c) => c.order).join("/")}`,
      { ino: d.value.ino, len, orders: chunks.map((c) => c.order) },
    );
    return d;
  }

  /** CPU physical address of byte `off` of a heap buffer. */
  static phys(buffer: SystemHeapBuffer, off: bigint): bigint {
    let left = off;
    for (const c of buffer.chunks) {
      const size = PAGE_SIZE_N << BigInt(c.order);
      if (left < size) return System.phys(c.pages[0]!) + left;
      left -= size;
    }
    throw new RangeError(`${hex(off)} is beyond the buffer`);
  }

  #ops(buffer: SystemHeapBuffer): DmaBufOps {
    return {
      attach: (_d, a) => this.#attach(buffer, a),
      detach: (_d, a) => this.#detach(buffer, a),
      map_dma_buf: (a, dir) => this.#map(a, dir),
      unmap_dma_buf: (a, sgt, dir) => this.#unmap(a, sgt, dir),
      begin_cpu_access: (_d, dir) => this.#cpuAccess(buffer, dir, "cpu"),
      end_cpu_access: (_d, dir) => this.#cpuAccess(buffer, dir, "device"),
      // models system_heap_mmap(): remap_pfn_range of the chunks (the faults are not simulated)
      mmap: () => kok(),
      vmap: () => this.#vmap(buffer),
      vunmap: () => this.#vunmap(buffer),
      release: () => this.#release(buffer),
    };
  }

  /** A private copy of the page list, not mapped, at the head of the list. models system_heap_attach() + dup_sg_table() */
  #attach(buffer: SystemHeapBuffer, a: DmaBufAttachment): KResult {
    const t = sg_alloc_table(buffer.sg_table.orig_nents, {
      name: `system heap copy for ${a.dev.name}`,
    });
    if (!t.ok) return t;
    const src = [...for_each_sgtable_sg(buffer.sg_table)];
    let i = 0;
    for (const s of for_each_sgtable_sg(t.value)) {
      const from = src[i++]!;
      sg_set_page(s, sg_page(from), from.length, from.offset);
    }
    const ha: HeapAttachment = { dev: a.dev, attach: a, table: t.value, mapped: false };
    a.priv = ha;
    buffer.attachments.unshift(ha);
    return kok();
  }

  // models system_heap_detach()
  #detach(buffer: SystemHeapBuffer, a: DmaBufAttachment): void {
    const ha = a.priv as HeapAttachment;
    buffer.attachments.splice(buffer.attachments.indexOf(ha), 1);
    sg_free_table(ha.table);
  }

  /** The attachment's own copy, mapped in place, returned (the same table every time). models system_heap_map_dma_buf() */
  #map(a: DmaBufAttachment, dir: DmaDirection): KResult<SgTable> {
    const ha = a.priv as HeapAttachment;
    const m = this.sys.dma.mapSgtable(a.dev, ha.table, dir);
    if (!m.ok) return m;
    ha.mapped = true;
    this.#emit("dma_heap:map", `${a.describe()}: ${ha.table.nents} DMA segment(s)`, {
      device: a.dev.name,
      nents: ha.table.nents,
    });
    return kok(ha.table);
  }

  // models system_heap_unmap_dma_buf()
  #unmap(a: DmaBufAttachment, sgt: SgTable, dir: DmaDirection): void {
    const ha = a.priv as HeapAttachment;
    if (sgt !== ha.table)
      throw new KernelBug(`system heap: unmap of ${sgt.name}, not ${a.describe()}'s table`);
    ha.mapped = false;
    this.sys.dma.unmapSgtable(a.dev, sgt, dir);
  }

  /**
   * Sync, for the CPU (begin) or the devices (end), every attachment that is mapped now; the
   * others are skipped. models system_heap_dma_buf_begin_cpu_access() / _end_cpu_access()
   */
  #cpuAccess(buffer: SystemHeapBuffer, dir: DmaDirection, to: "cpu" | "device"): KResult {
    for (const ha of buffer.attachments) {
      if (!ha.mapped) continue;
      dmaSyncSgtable(this.sys, ha.dev, ha.table, dir, to);
      this.syncs.push({ device: ha.dev.name, dir, to });
    }
    this.#emit(
      "dma_heap:sync",
      `${to === "cpu" ? "begin" : "end"}_cpu_access(${dir}): ${buffer.attachments.filter((x) => x.mapped).length} of ${buffer.attachments.length} attachment(s) synced`,
      { dir, to },
    );
    return kok();
  }

  // models system_heap_vmap(): its own count, one vmalloc range
  #vmap(buffer: SystemHeapBuffer): KResult<IosysMap> {
    if (buffer.vmap_cnt === 0) buffer.vaddr = vmallocRange(buffer.len);
    buffer.vmap_cnt++;
    return kok({ isIomem: false, addr: buffer.vaddr! });
  }

  // models system_heap_vunmap()
  #vunmap(buffer: SystemHeapBuffer): void {
    if (--buffer.vmap_cnt === 0) buffer.vaddr = null;
  }

  /** Every chunk freed, the table freed. models system_heap_dma_buf_release() */
  #release(buffer: SystemHeapBuffer): void {
    for (const c of buffer.chunks) this.sys.freePages(c.pages);
    sg_free_table(buffer.sg_table);
    this.buffers.delete(buffer);
    this.#emit("dma_heap:release", `${buffer.dmabuf?.describe()} released`, {
      ino: buffer.dmabuf?.ino,
    });
  }

  /** Buffers not released, attachments still mapped. */
  leaks(): Leak[] {
    const out: Leak[] = [];
    for (const b of this.buffers) {
      out.push({
        kind: "heap-buffer",
        owner: "system heap",
        detail: `${b.dmabuf?.describe() ?? "buffer"} of ${b.len} bytes not released`,
      });
      for (const a of b.attachments)
        if (a.mapped)
          out.push({
            kind: "sg-mapping",
            owner: "system heap",
            detail: `${a.attach.describe()}: its table is still mapped`,
          });
    }
    return out;
  }
}

/** ioctl(fd, DMA_HEAP_IOCTL_ALLOC) from `proc`: the new dma-buf fd. */
export function dmaHeapAlloc(
  proc: Process,
  fd: number,
  len: bigint,
  opts: { fdFlags?: number; heapFlags?: bigint } = {},
): KResult<number> {
  const arg: DmaHeapAllocationData = {
    len,
    fd: 0,
    fd_flags: opts.fdFlags ?? O_RDWR | O_CLOEXEC,
    heap_flags: opts.heapFlags ?? 0n,
  };
  return sysIoctl(proc, fd, DMA_HEAP_IOCTL_ALLOC, arg);
}
