/**
 * @module rdma
 * The RDMA importer of spec §5 and a libibverbs-like user API over it, with RDMA WRITE/READ that
 * move real bytes between machines.
 *
 * Kernel side (drivers/infiniband/core/umem_dmabuf.c, umem.c, uverbs_std_types_mr.c,
 * uverbs_cmd.c, hw/mlx5/mr.c + odp.c, hw/efa/efa_verbs.c):
 * - `ib_umem_dmabuf_get` (§5.2 checks in order), `ib_umem_dmabuf_get_pinned` (§5.4),
 *   `ib_umem_dmabuf_map_pages` / `unmap_pages` with the in-place trim of the first and last
 *   covering entries and its exact undo (§5.5), the KERNEL-usage fence wait, mainline's
 *   `ib_umem_dmabuf_revoke`, and `ib_umem_dmabuf_release` per profile;
 * - host memory: `ib_umem_get` (pin the user pages, build a table capped by the device's max
 *   segment size, `dma_map_sgtable`) and its release;
 * - two provider flavours, chosen per device (`RdmaOptions.odp`): mlx5's dynamic dma-buf MR
 *   (importer ops with `allow_peer2peer` and `mlx5_ib_dmabuf_invalidate_cb`; the translation is
 *   populated at registration through the page-fault path and zapped by move_notify, the next
 *   device access faults and re-maps), and the pinned flow of EFA / irdma / bnxt_re (pinned
 *   umem; move_notify only warns);
 * - uverbs REG_MR / REG_DMABUF_MR checks (§5.6) and the uverbs file whose release destroys every
 *   object of the context.
 *
 * The NIC's data path: a QP's RDMA WRITE has the requester NIC DMA-read the local MR through its
 * machine's fabric (addresses from the MR's translation, the MTT), ships the bytes, and the
 * responder NIC checks rkey, access and bounds, resolves the remote address through its MR
 * (faulting it in when a dynamic MR was invalidated) and DMA-writes the bytes. READ is the
 * mirror. The two QPs may sit on two `System`s (two machines on one link).
 *
 * Model choices (not kernel facts): the user buffer of `regMr` is allocated by the call and freed
 * by `deregMr`; posting on a QP that is not connected, or on a destroyed QP, throws (the C API
 * would fail the post or use freed memory); a QP that completes with an error moves to the error
 * state and later posts complete with IBV_WC_WR_FLUSH_ERR until `connect()` re-arms it.
 */

import { dmaAddr, hex, physAddr } from "../../hw/address.ts";
import type { DmaFault } from "../../hw/fabric.ts";
import { type DmaDevice, dmaSetMaskAndCoherent } from "../dma/device.ts";
import {
  type DmaBufAttachment,
  type DmaBufAttachOps,
  dmaBufDetach,
  dmaBufDynamicAttach,
  dmaBufMapAttachment,
  dmaBufPin,
  dmaBufUnmapAttachment,
  dmaBufUnpin,
} from "../dma-buf/attachment.ts";
import type { DmaBufCore } from "../dma-buf/dma-buf.ts";
import {
  dmaBufGet,
  dmaBufPut,
  type FileOperations,
  KFile,
  O_CLOEXEC,
  O_RDWR,
  type Process,
  sysClose,
} from "../dma-buf/file.ts";
import { KernelBug, type KResult, kerr, kok } from "../errno.ts";
import type { Leak, LeakSource } from "../leaks.ts";
import {
  for_each_sg,
  for_each_sgtable_dma_sg,
  type Scatterlist,
  type SgTable,
  sg_alloc_table_from_pages_segment,
  sg_free_table,
  UINT_MAX,
} from "../lib/scatterlist.ts";
import { PAGE_SIZE_N, type Page } from "../mm/page.ts";
import { System } from "../system.ts";
import { type DmaSeg, dmaSegOf } from "./dma-segs.ts";

// ── access flags ─────────────────────────────────────────────────────────────────────────────
// rdma-core libibverbs/verbs.h `enum ibv_access_flags`, equal to the kernel's
// include/uapi/rdma/ib_user_ioctl_verbs.h IB_UVERBS_ACCESS_* (IB_ACCESS_* in ib_verbs.h).

export const IBV_ACCESS_LOCAL_WRITE = 1;
export const IBV_ACCESS_REMOTE_WRITE = 2;
export const IBV_ACCESS_REMOTE_READ = 4;
export const IBV_ACCESS_REMOTE_ATOMIC = 8;
export const IBV_ACCESS_MW_BIND = 1 << 4;
export const IBV_ACCESS_ZERO_BASED = 1 << 5;
export const IBV_ACCESS_ON_DEMAND = 1 << 6;
export const IBV_ACCESS_HUGETLB = 1 << 7;
/** `IBV_ACCESS_OPTIONAL_FIRST` (1 << 20). */
export const IBV_ACCESS_RELAXED_ORDERING = 1 << 20;
/** `IB_UVERBS_ACCESS_OPTIONAL_RANGE`: bits 20..29, flags a device may ignore. */
export const IBV_ACCESS_OPTIONAL_RANGE = 0x3ff0_0000;
/** `IB_ACCESS_SUPPORTED` = ((IB_ACCESS_HUGETLB << 1) - 1) | IB_ACCESS_OPTIONAL. */
export const IB_ACCESS_SUPPORTED = ((IBV_ACCESS_HUGETLB << 1) - 1) | IBV_ACCESS_OPTIONAL_RANGE;
/** What UVERBS_METHOD_REG_DMABUF_MR passes to uverbs_get_flags32 as allowed bits. */
export const REG_DMABUF_MR_ACCESS_ALLOWED =
  IBV_ACCESS_LOCAL_WRITE |
  IBV_ACCESS_REMOTE_READ |
  IBV_ACCESS_REMOTE_WRITE |
  IBV_ACCESS_REMOTE_ATOMIC |
  IBV_ACCESS_RELAXED_ORDERING;

const U64_MAX = (1n << 64n) - 1n;
const PAGE_OFF = PAGE_SIZE_N - 1n;
const alignDown = (v: bigint, a: bigint): bigint => v - (v % a);
const alignUp = (v: bigint, a: bigint): bigint => ((v + a - 1n) / a) * a;
const GiB = 1 << 30;
const minBig = (a: bigint, b: bigint): bigint => (a < b ? a : b);

/** The page offset of an address (`addr & ~PAGE_MASK`). */
const pageOffset = (v: bigint): bigint => v & PAGE_OFF;

/**
 * Local write is needed for remote write or atomic; only IB_ACCESS_SUPPORTED bits; on-demand
 * paging only on a device that has it. All -EINVAL. models ib_check_mr_access()
 */
export function ibCheckMrAccess(dev: RdmaDevice, flags: number): KResult {
  if (
    flags & (IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_REMOTE_WRITE) &&
    !(flags & IBV_ACCESS_LOCAL_WRITE)
  )
    return kerr(
      "EINVAL",
      `access 0x${(flags >>> 0).toString(16)}: remote write/atomic needs IB_ACCESS_LOCAL_WRITE`,
    );
  if ((flags >>> 0) & ~IB_ACCESS_SUPPORTED)
    return kerr(
      "EINVAL",
      `access 0x${(flags >>> 0).toString(16)} has bits outside IB_ACCESS_SUPPORTED`,
    );
  if (flags & IBV_ACCESS_ON_DEMAND && !dev.odp)
    return kerr("EINVAL", `${dev.name} has no on-demand paging (IBK_ON_DEMAND_PAGING)`);
  return kok();
}

/** The MR memory may be written (local/remote write, atomic, MW bind). models ib_access_writable() */
export function ibAccessWritable(access: number): boolean {
  return (
    (access &
      (IBV_ACCESS_LOCAL_WRITE |
        IBV_ACCESS_REMOTE_WRITE |
        IBV_ACCESS_REMOTE_ATOMIC |
        IBV_ACCESS_MW_BIND)) !==
    0
  );
}

// ── umems ────────────────────────────────────────────────────────────────────────────────────

/** One DMA segment as the device sees it (the MTT keeps a copy of these). */
export type { DmaSeg };

/** A user buffer: pages of RAM behind a user virtual address (what malloc/mmap returned). */
export interface UserBuffer {
  readonly proc: Process;
  readonly va: bigint;
  readonly length: bigint;
  readonly pages: readonly Page[];
  freed: boolean;
}

/** `struct ib_umem` over pinned user memory (ib_umem_get). */
export class IbUmem {
  readonly ibdev: RdmaDevice;
  /** `umem->address`: the user virtual address. */
  readonly address: bigint;
  readonly length: bigint;
  iova: bigint;
  readonly writable: boolean;
  readonly is_dmabuf = false as const;
  /** The pinned pages (one reference each, from pin_user_pages). */
  readonly pages: readonly Page[];
  /** `umem->sgt_append.sgt`, DMA-mapped for the device. */
  readonly sgt: SgTable;
  released = false;

  constructor(
    ibdev: RdmaDevice,
    address: bigint,
    length: bigint,
    writable: boolean,
    pages: readonly Page[],
    sgt: SgTable,
  ) {
    this.ibdev = ibdev;
    this.address = address;
    this.length = length;
    this.iova = address;
    this.writable = writable;
    this.pages = pages;
    this.sgt = sgt;
  }

  describe(): string {
    return `umem of ${this.ibdev.name} over user ${hex(this.address)}+${hex(this.length)}`;
  }
}

/** `struct ib_umem_dmabuf` (with its embedded `struct ib_umem`). */
export class IbUmemDmabuf {
  readonly ibdev: RdmaDevice;
  /** `umem->address`: the offset into the dma-buf. */
  readonly address: bigint;
  readonly length: bigint;
  /** `umem->iova` (0 from kzalloc until the driver sets it). */
  iova = 0n;
  readonly writable: boolean;
  readonly is_dmabuf = true as const;
  attach: DmaBufAttachment | null = null;
  /** The table `dma_buf_map_attachment` returned, trimmed in place while mapped; null: unmapped. */
  sgt: SgTable | null = null;
  first_sg: Scatterlist | null = null;
  first_sg_offset = 0n;
  last_sg: Scatterlist | null = null;
  last_sg_trim = 0n;
  /** `umem->sgt_append.sgt.sgl` / `.nents`: the window of covering entries. */
  umem_sgl: Scatterlist | null = null;
  umem_nents = 0;
  pinned = false;
  /** Mainline only. */
  revoked = false;
  /** `umem_dmabuf->private`: the MR (mlx5 sets it after creating the mkey). */
  priv: IbMr | null = null;
  released = false;

  constructor(ibdev: RdmaDevice, address: bigint, length: bigint, writable: boolean) {
    this.ibdev = ibdev;
    this.address = address;
    this.length = length;
    this.writable = writable;
  }

  describe(): string {
    const d = this.attach?.dmabuf.describe() ?? "a dma-buf";
    return `dma-buf umem of ${this.ibdev.name} over ${d} [${hex(this.address)}+${hex(this.length)})`;
  }
}

export type Umem = IbUmem | IbUmemDmabuf;

/** PAGE_SIZE blocks covering [iova, iova + length). models ib_umem_num_pages() */
export function ibUmemNumPages(umem: Umem): bigint {
  return (
    (alignUp(umem.iova + umem.length, PAGE_SIZE_N) - alignDown(umem.iova, PAGE_SIZE_N)) /
    PAGE_SIZE_N
  );
}

/** The DMA segments the device is given: the mapped table, or a dma-buf umem's window. */
export function* umemDmaSgs(umem: Umem): Generator<Scatterlist, void, undefined> {
  if (!umem.is_dmabuf) {
    yield* for_each_sgtable_dma_sg(umem.sgt);
    return;
  }
  if (umem.umem_sgl) yield* for_each_sg(umem.umem_sgl, umem.umem_nents);
}

/** Bits needed for `n` (1 for 0 and 1). models bits_per() */
function bitsPer(n: bigint): number {
  return n <= 1n ? 1 : n.toString(2).length;
}

// models GENMASK_ULL(h, l)
const genmask = (h: number, l: number): bigint =>
  ((1n << BigInt(h + 1)) - 1n) & ~((1n << BigInt(l)) - 1n);

// models count_trailing_zeros() (n != 0)
function ctz(n: bigint): number {
  let i = 0;
  while (((n >> BigInt(i)) & 1n) === 0n) i++;
  return i;
}

/**
 * The largest page size of `pgszBitmap` through which the umem's DMA segments map `virt`: the
 * mask collects every bit where VA and DMA address differ at a discontinuity; 0 if none fits.
 * Sets `umem.iova = virt`. models ib_umem_find_best_pgsz()
 */
export function ibUmemFindBestPgsz(umem: Umem, pgszBitmap: bigint, virt: bigint): bigint {
  umem.iova = virt;
  let va = virt;
  const lastVa = umem.length - 1n + virt;
  if (umem.length === 0n || lastVa > U64_MAX) return 0n;
  const bits = bitsPer(virt ^ lastVa);
  let mask = bits < 64 ? pgszBitmap & genmask(63, bits) : 0n;
  let pgoff = pageOffset(umem.address);
  let currBase = U64_MAX;
  let currLen = 0n;
  let i = 0;
  for (const sg of umemDmaSgs(umem)) {
    const end = currBase + currLen;
    if (end > U64_MAX || end !== sg.dma_address) {
      currBase = sg.dma_address;
      currLen = 0n;
      mask |= ((currBase + pgoff) ^ va) & U64_MAX;
      if (i !== 0) mask |= va;
    }
    currLen += BigInt(sg.dma_length);
    va = (va + BigInt(sg.dma_length) - pgoff) & U64_MAX;
    pgoff = 0n;
    i++;
  }
  let bm = pgszBitmap;
  if (mask) bm &= genmask(ctz(mask), 0);
  if (bm === 0n) return 0n;
  return 1n << BigInt(bm.toString(2).length - 1);
}

/**
 * Pin and DMA-map user memory [addr, addr + size) of `buf`: overflow → -EINVAL; ON_DEMAND →
 * -EOPNOTSUPP; no pages → -EINVAL; an address outside the buffer → -EFAULT (what pinning an
 * unmapped address gives); the table merges contiguous pages up to the device's max segment
 * size and is mapped DMA_BIDIRECTIONAL. models ib_umem_get()
 */
export function ibUmemGet(
  ibdev: RdmaDevice,
  buf: UserBuffer,
  addr: bigint,
  size: bigint,
  access: number,
): KResult<IbUmem> {
  if (addr + size > U64_MAX || alignUp(addr + size, PAGE_SIZE_N) > U64_MAX)
    return kerr("EINVAL", `ib_umem_get: ${hex(addr)} + ${hex(size)} overflows`);
  if (access & IBV_ACCESS_ON_DEMAND)
    return kerr("EOPNOTSUPP", "ib_umem_get: IB_ACCESS_ON_DEMAND goes through ib_umem_odp_get");
  const first = alignDown(addr, PAGE_SIZE_N);
  const npages = (alignUp(addr + size, PAGE_SIZE_N) - first) / PAGE_SIZE_N;
  if (npages === 0n || npages > BigInt(UINT_MAX))
    return kerr("EINVAL", `ib_umem_get: ${npages} pages`);
  // models pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM): one reference per page
  const idx = (first - buf.va) / PAGE_SIZE_N;
  if (buf.freed || first < buf.va || idx + npages > BigInt(buf.pages.length))
    return kerr(
      "EFAULT",
      `ib_umem_get: ${hex(addr)}+${hex(size)} is not mapped in ${buf.proc.name}`,
    );
  const pages = buf.pages.slice(Number(idx), Number(idx + npages));
  const sys = ibdev.sys;
  for (const p of pages) sys.getPage(p);
  // sg_alloc_append_table_from_pages() in batches of 512 pages merges like one call
  const t = sg_alloc_table_from_pages_segment(
    pages,
    0,
    npages * PAGE_SIZE_N,
    ibdev.dev.maxSegSize,
    {
      name: `umem sgt of ${ibdev.name} at ${hex(addr)}`,
    },
  );
  if (!t.ok) {
    for (const p of pages) sys.putPage(p);
    return t;
  }
  // models ib_dma_map_sgtable_attrs(device, sgt, DMA_BIDIRECTIONAL, 0)
  const m = sys.dma.mapSgtable(ibdev.dev, t.value, "bidirectional");
  if (!m.ok) {
    sg_free_table(t.value);
    for (const p of pages) sys.putPage(p);
    return m;
  }
  const umem = new IbUmem(ibdev, addr, size, ibAccessWritable(access), pages, t.value);
  ibdev.umems.add(umem);
  return kok(umem);
}

/** Unmap, unpin (put) the pages, free the table; dma-buf umems go to their own release. models ib_umem_release() */
export function ibUmemRelease(umem: Umem | null): void {
  if (!umem) return;
  if (umem.is_dmabuf) {
    ibUmemDmabufRelease(umem);
    return;
  }
  if (umem.released) throw new KernelBug(`ib_umem_release() twice: ${umem.describe()}`);
  const sys = umem.ibdev.sys;
  // models __ib_umem_release(dev, umem, 1)
  sys.dma.unmapSgtable(umem.ibdev.dev, umem.sgt, "bidirectional");
  for (const p of umem.pages) sys.putPage(p);
  sg_free_table(umem.sgt);
  umem.released = true;
  umem.ibdev.umems.delete(umem);
}

// ── ib_umem_dmabuf ───────────────────────────────────────────────────────────────────────────

/**
 * A dma-buf umem, attached dynamically with `ops`, nothing mapped yet; it keeps the
 * dma_buf_get reference. Checks in order: offset + size overflows → -EINVAL; ops without
 * move_notify → -EINVAL; dma_buf_get's errno (-EBADF, -EINVAL); the buffer smaller than
 * offset + size → -EINVAL; no pages (size 0) → -EINVAL; the attach's errno.
 * models ib_umem_dmabuf_get()
 */
export function ibUmemDmabufGet(
  ibdev: RdmaDevice,
  proc: Process,
  offset: bigint,
  size: bigint,
  fd: number,
  access: number,
  ops: DmaBufAttachOps | null,
): KResult<IbUmemDmabuf> {
  const end = offset + size;
  if (end > U64_MAX)
    return kerr(
      "EINVAL",
      `ib_umem_dmabuf_get: offset ${hex(offset)} + size ${hex(size)} overflows`,
    );
  if (!ops?.move_notify)
    return kerr("EINVAL", "ib_umem_dmabuf_get: importer ops without move_notify");
  const d = dmaBufGet(proc, fd);
  if (!d.ok) return d;
  const dmabuf = d.value;
  if (dmabuf.size < end) {
    dmaBufPut(dmabuf);
    return kerr(
      "EINVAL",
      `ib_umem_dmabuf_get: [${hex(offset)}, ${hex(end)}) is beyond ${dmabuf.describe()}`,
    );
  }
  const umem = new IbUmemDmabuf(ibdev, offset, size, ibAccessWritable(access));
  if (ibUmemNumPages(umem) === 0n) {
    dmaBufPut(dmabuf);
    return kerr("EINVAL", "ib_umem_dmabuf_get: zero-length umem");
  }
  const a = dmaBufDynamicAttach(dmabuf, ibdev.dev, ops, umem);
  if (!a.ok) {
    dmaBufPut(dmabuf);
    return a;
  }
  umem.attach = a.value;
  ibdev.umems.add(umem);
  return kok(umem);
}

const PINNED_WARNING = "Invalidate callback should not be called when memory is pinned";

/**
 * The pinned importer's move_notify: it cannot invalidate, so it only logs (rate-limited in the
 * kernel). models ib_umem_dmabuf_unsupported_move_notify() (6.1) /
 * dma_buf_unsupported_invalidate_mappings() (mainline)
 */
function unsupportedMoveNotify(attach: DmaBufAttachment): void {
  const umem = attach.importer_priv as IbUmemDmabuf;
  const dev = umem.ibdev;
  const line = dev.core.profile.id === "6.1" ? `${dev.name}: ${PINNED_WARNING}` : PINNED_WARNING;
  dev.log.push(line);
  dev.sys.trace.emit("rdma:move_notify_pinned", `${line} (${umem.describe()}; mapping kept)`, {
    device: dev.name,
    dmabuf: attach.dmabuf.describe(),
  });
}

/** `ib_umem_dmabuf_attach_pinned_ops`. */
export const IB_UMEM_DMABUF_ATTACH_PINNED_OPS: DmaBufAttachOps = {
  allow_peer2peer: true,
  move_notify: unsupportedMoveNotify,
};

/**
 * Get with the pinned ops, then under the resv: dma_buf_pin (error: release, return it),
 * `pinned = 1`, map_pages (error: release, which unmaps and unpins). This is the form with the
 * 2026 double-unpin fix (no separate unpin before the release). models ib_umem_dmabuf_get_pinned()
 */
export function ibUmemDmabufGetPinned(
  ibdev: RdmaDevice,
  proc: Process,
  offset: bigint,
  size: bigint,
  fd: number,
  access: number,
): KResult<IbUmemDmabuf> {
  const r = ibUmemDmabufGet(
    ibdev,
    proc,
    offset,
    size,
    fd,
    access,
    IB_UMEM_DMABUF_ATTACH_PINNED_OPS,
  );
  if (!r.ok) return r;
  const umem = r.value;
  const attach = umem.attach!;
  const resv = attach.dmabuf.resv;
  resv.lock("ib_umem_dmabuf_get_pinned");
  const p = dmaBufPin(attach);
  if (!p.ok) {
    resv.unlock("ib_umem_dmabuf_get_pinned");
    ibUmemRelease(umem);
    return p;
  }
  umem.pinned = true;
  const m = ibUmemDmabufMapPages(umem);
  resv.unlock("ib_umem_dmabuf_get_pinned");
  if (!m.ok) {
    ibUmemRelease(umem);
    return m;
  }
  return kok(umem);
}

/**
 * With the resv held: mainline refuses a revoked umem (-EINVAL); if not mapped yet, map
 * DMA_BIDIRECTIONAL (its errno comes back) and trim the table in place to the page-rounded window
 * [ALIGN_DOWN(offset), ALIGN(offset + length)): the first covering entry's DMA address advances by
 * the leading excess and its length shrinks by it, the last covering entry's length shrinks by
 * the trailing excess; the umem's view starts at the first covering entry with nents = covering
 * entries. Then wait (uninterruptibly) for KERNEL-usage fences. models ib_umem_dmabuf_map_pages()
 */
export function ibUmemDmabufMapPages(umem: IbUmemDmabuf): KResult {
  const attach = umem.attach!;
  const dev = umem.ibdev;
  const resv = attach.dmabuf.resv;
  resv.assertHeld("ib_umem_dmabuf_map_pages");
  if (dev.core.profile.id !== "6.1" && umem.revoked)
    return kerr("EINVAL", `ib_umem_dmabuf_map_pages: ${umem.describe()} was revoked`);
  if (!umem.sgt) {
    const m = dmaBufMapAttachment(attach, "bidirectional");
    if (!m.ok) return m;
    const sgt = m.value;
    const start = alignDown(umem.address, PAGE_SIZE_N);
    const end = alignUp(umem.address + umem.length, PAGE_SIZE_N);
    let cur = 0n;
    let nmap = 0;
    for (const sg of for_each_sgtable_dma_sg(sgt)) {
      if (start < cur + BigInt(sg.dma_length) && cur < end) nmap++;
      if (cur <= start && start < cur + BigInt(sg.dma_length)) {
        const offset = start - cur;
        umem.first_sg = sg;
        umem.first_sg_offset = offset;
        sg.dma_address = dmaAddr(sg.dma_address + offset);
        sg.dma_length = Number(BigInt(sg.dma_length) - offset);
        cur += offset;
      }
      if (cur < end && end <= cur + BigInt(sg.dma_length)) {
        const trim = cur + BigInt(sg.dma_length) - end;
        umem.last_sg = sg;
        umem.last_sg_trim = trim;
        sg.dma_length = Number(BigInt(sg.dma_length) - trim);
        break;
      }
      cur += BigInt(sg.dma_length);
    }
    umem.umem_sgl = umem.first_sg;
    umem.umem_nents = nmap;
    umem.sgt = sgt;
    const segs = [...umemDmaSgs(umem)].map((sg) => dmaSegOf(dev.sys, dev.dev, sg));
    dev.sys.trace.emit(
      "rdma:map_pages",
      `${dev.name}: ib_umem_dmabuf_map_pages ${attach.dmabuf.describe()} window [${hex(start)}, ${hex(end)}): ${nmap} segment(s), peer2peer=${attach.peer2peer}`,
      {
        device: dev.name,
        dmabuf: attach.dmabuf.describe(),
        windowStart: start,
        windowEnd: end,
        nents: nmap,
        peer2peer: attach.peer2peer,
        firstSgOffset: umem.first_sg_offset,
        lastSgTrim: umem.last_sg_trim,
      },
    );
    for (const [i, s] of segs.entries())
      dev.sys.trace.emit(
        "rdma:map_seg",
        `${dev.name}: segment ${i}: ${hex(s.dma)} len ${hex(s.len)} (${s.kind})`,
        { device: dev.name, index: i, dma: s.dma, len: s.len, kind: s.kind },
      );
  }
  // wait for the exporter's moves and clears (DMA_RESV_USAGE_KERNEL), not interruptible
  const w = resv.waitTimeout("kernel", false);
  if (!w.ok) return w;
  return kok();
}

/**
 * With the resv held, if mapped: undo the trims exactly (first entry: address back, length back;
 * last entry: length back), give the table back (DMA_BIDIRECTIONAL), forget it.
 * models ib_umem_dmabuf_unmap_pages()
 */
export function ibUmemDmabufUnmapPages(umem: IbUmemDmabuf): void {
  const attach = umem.attach!;
  attach.dmabuf.resv.assertHeld("ib_umem_dmabuf_unmap_pages");
  if (!umem.sgt) return;
  if (umem.first_sg) {
    const sg = umem.first_sg;
    sg.dma_address = dmaAddr(sg.dma_address - umem.first_sg_offset);
    sg.dma_length = Number(BigInt(sg.dma_length) + umem.first_sg_offset);
    umem.first_sg = null;
    umem.first_sg_offset = 0n;
  }
  if (umem.last_sg) {
    const sg = umem.last_sg;
    sg.dma_length = Number(BigInt(sg.dma_length) + umem.last_sg_trim);
    umem.last_sg = null;
    umem.last_sg_trim = 0n;
  }
  dmaBufUnmapAttachment(attach, umem.sgt, "bidirectional");
  umem.sgt = null;
}

/**
 * Mainline only: under the resv, once: unmap, unpin if pinned, mark revoked (later map_pages:
 * -EINVAL). 6.1 has no such function (calling it there throws). models ib_umem_dmabuf_revoke()
 */
export function ibUmemDmabufRevoke(umem: IbUmemDmabuf): void {
  if (umem.ibdev.core.profile.id === "6.1")
    throw new Error("ib_umem_dmabuf_revoke() does not exist in Linux 6.1");
  const resv = umem.attach!.dmabuf.resv;
  resv.lock("ib_umem_dmabuf_revoke");
  if (!umem.revoked) {
    ibUmemDmabufUnmapPages(umem);
    if (umem.pinned) {
      dmaBufUnpin(umem.attach!);
      umem.pinned = false;
    }
    umem.revoked = true;
  }
  resv.unlock("ib_umem_dmabuf_revoke");
}

/**
 * Mainline: revoke; 6.1: unmap and unpin under the resv. Then detach, drop the dma-buf
 * reference, free. models ib_umem_dmabuf_release()
 */
export function ibUmemDmabufRelease(umem: IbUmemDmabuf): void {
  if (umem.released) throw new KernelBug(`ib_umem_release() twice: ${umem.describe()}`);
  const attach = umem.attach!;
  const dmabuf = attach.dmabuf;
  if (umem.ibdev.core.profile.id === "6.1") {
    dmabuf.resv.lock("ib_umem_dmabuf_release");
    ibUmemDmabufUnmapPages(umem);
    if (umem.pinned) dmaBufUnpin(attach);
    dmabuf.resv.unlock("ib_umem_dmabuf_release");
  } else ibUmemDmabufRevoke(umem);
  dmaBufDetach(dmabuf, attach);
  dmaBufPut(dmabuf, (m) => dmabuf.core.warn(m));
  umem.released = true;
  umem.ibdev.umems.delete(umem);
}

// ── the device ───────────────────────────────────────────────────────────────────────────────

export interface RdmaOptions {
  readonly name?: string | undefined;
  /**
   * true (default): mlx5 — dma-buf MRs are dynamic (ODP-style: invalidated by move_notify,
   * faulted back in on access). false: the pinned flow of EFA / irdma / bnxt_re.
   */
  readonly odp?: boolean | undefined;
  /** The provider implements reg_user_mr_dmabuf (default true); false: -EOPNOTSUPP. */
  readonly dmabuf?: boolean | undefined;
}

/** `struct ib_mr` with the provider's translation (mlx5's MTT / EFA's page list). */
export class IbMr {
  readonly device: RdmaDevice;
  readonly pd: IbvPd;
  readonly lkey: number;
  readonly rkey: number;
  readonly iova: bigint;
  readonly length: bigint;
  readonly access: number;
  readonly umem: Umem;
  /** Invalidated by move_notify and faulted back in (mlx5 dma-buf MRs). */
  readonly dynamic: boolean;
  /** The translation the NIC uses; null: not present (zapped, or not populated yet). */
  mtt: readonly DmaSeg[] | null = null;
  live = true;

  constructor(o: {
    device: RdmaDevice;
    pd: IbvPd;
    key: number;
    iova: bigint;
    length: bigint;
    access: number;
    umem: Umem;
    dynamic: boolean;
  }) {
    this.device = o.device;
    this.pd = o.pd;
    this.lkey = o.key;
    this.rkey = o.key;
    this.iova = o.iova;
    this.length = o.length;
    this.access = o.access;
    this.umem = o.umem;
    this.dynamic = o.dynamic;
  }

  describe(): string {
    return `MR 0x${this.lkey.toString(16)} of ${this.device.name} [${hex(this.iova)}+${hex(this.length)})`;
  }
}

const devicesPerSystem = new WeakMap<System, number>();

/**
 * An RDMA NIC with its provider driver. `odp` picks the dma-buf MR flow (mlx5 dynamic vs pinned);
 * probe sets a 64-bit DMA mask and the driver's max segment size (mlx5 set_dma_caps: 2 GiB;
 * EFA, irdma, bnxt_re: UINT_MAX).
 */
export class RdmaDevice implements LeakSource {
  readonly sys: System;
  readonly core: DmaBufCore;
  readonly name: string;
  readonly dev: DmaDevice;
  readonly odp: boolean;
  /** The provider has reg_user_mr_dmabuf. */
  readonly dmabufSupported: boolean;
  /** `/dev/infiniband/uverbsN`. */
  readonly minor: number;
  /** ibdev_* / pr_warn lines. */
  readonly log: string[] = [];
  /** Every umem not yet released. */
  readonly umems = new Set<Umem>();
  readonly #contexts = new Set<IbvContext>();
  readonly #mrs = new Map<number, IbMr>();
  #nextKey = 0x100;
  #nextQpn = 0x10;

  constructor(sys: System, core: DmaBufCore, bdf: string, opts: RdmaOptions = {}) {
    this.sys = sys;
    this.core = core;
    this.dev = sys.device(bdf);
    this.odp = opts.odp ?? true;
    this.dmabufSupported = opts.dmabuf ?? true;
    this.minor = devicesPerSystem.get(sys) ?? 0;
    devicesPerSystem.set(sys, this.minor + 1);
    this.name = opts.name ?? `${this.odp ? "mlx5" : "efa"}_${this.minor}`;
    // models the probe: dma_set_mask_and_coherent(64) + dma_set_max_seg_size()
    dmaSetMaskAndCoherent(this.dev, 64);
    this.dev.maxSegSize = this.odp ? 2 * GiB : UINT_MAX;
  }

  /** Live MRs by key. */
  get mrs(): ReadonlyMap<number, IbMr> {
    return this.#mrs;
  }

  /**
   * ibv_open_device: opens /dev/infiniband/uverbsN (O_RDWR | O_CLOEXEC) into `proc`'s table.
   * Closing the fd (or the process exiting) destroys every QP, MR and PD of the context.
   * models ib_uverbs_open() (+ ibv_open_device())
   */
  open(proc: Process): KResult<IbvContext> {
    const fd = proc.getUnusedFd();
    if (!fd.ok) return fd;
    let ctx: IbvContext | null = null;
    const fops: FileOperations = {
      name: "uverbs_fops",
      // models ib_uverbs_close() → uverbs_destroy_ufile_hw(file, RDMA_REMOVE_CLOSE)
      release: () => ctx?.destroyAll(),
    };
    const file = new KFile({
      name: `/dev/infiniband/uverbs${this.minor}`,
      fops,
      flags: O_RDWR,
    });
    proc.install(fd.value, file, O_CLOEXEC);
    ctx = new IbvContext(this, proc, fd.value);
    this.#contexts.add(ctx);
    return kok(ctx);
  }

  /** @internal the context was torn down. */
  contextGone(ctx: IbvContext): void {
    this.#contexts.delete(ctx);
  }

  #newKey(): number {
    const idx = this.#nextKey++;
    return ((idx << 8) | (idx & 0xff)) >>> 0; // mlx5-style mkey: index << 8 | variant byte
  }

  /** @internal */
  newQpn(): number {
    return this.#nextQpn++;
  }

  #emit(ev: string, msg: string, data?: Readonly<Record<string, unknown>>): void {
    this.sys.trace.emit(ev, msg, data);
  }

  /** Loads the MR's translation from its umem (UMR / create_mkey). models mlx5r_umr_update_mr_pas() */
  #updateMrPas(mr: IbMr): void {
    mr.mtt = [...umemDmaSgs(mr.umem)].map((sg) => dmaSegOf(this.sys, this.dev, sg));
  }

  /**
   * Under the resv: map_pages (its errno), check the page size, load the translation.
   * models pagefault_dmabuf_mr() (mlx5_ib_init_dmabuf_mr at registration, the ODP fault handler later)
   */
  #pagefaultDmabufMr(mr: IbMr): KResult {
    const umem = mr.umem as IbUmemDmabuf;
    const resv = umem.attach!.dmabuf.resv;
    resv.lock("pagefault_dmabuf_mr");
    try {
      const m = ibUmemDmabufMapPages(umem);
      if (!m.ok) return m;
      // mlx5_umem_dmabuf_find_best_pgsz(): dma-buf mkeys are fixed at PAGE_SIZE
      if (ibUmemFindBestPgsz(umem, PAGE_SIZE_N, umem.iova) === 0n) {
        ibUmemDmabufUnmapPages(umem);
        return kerr("EINVAL", `${this.name}: dma-buf segments are not PAGE_SIZE aligned`);
      }
      this.#updateMrPas(mr);
      return kok();
    } finally {
      resv.unlock("pagefault_dmabuf_mr");
    }
  }

  /** mlx5's importer ops for dynamic dma-buf MRs. */
  readonly #odpOps: DmaBufAttachOps = {
    allow_peer2peer: true,
    move_notify: (attach) => this.#invalidateCb(attach),
  };

  /**
   * move_notify of a dynamic MR (resv held): if mapped, zap the translation (the NIC faults on the
   * next access) and unmap. models mlx5_ib_dmabuf_invalidate_cb()
   */
  #invalidateCb(attach: DmaBufAttachment): void {
    const umem = attach.importer_priv as IbUmemDmabuf;
    attach.dmabuf.resv.assertHeld("mlx5_ib_dmabuf_invalidate_cb");
    if (!umem.sgt) return;
    const mr = umem.priv;
    if (!mr)
      throw new KernelBug(`${this.name}: invalidate of ${umem.describe()} with no MR (NULL)`);
    const old = mr.mtt ?? [];
    mr.mtt = null; // MLX5_IB_UPD_XLT_ZAP
    ibUmemDmabufUnmapPages(umem);
    this.#emit(
      "rdma:invalidate",
      `${this.name}: move_notify on ${attach.dmabuf.describe()}: ${mr.describe()} translation zapped, ${old.length} segment(s) unmapped`,
      { device: this.name, lkey: mr.lkey, dmabuf: attach.dmabuf.describe(), segments: old.length },
    );
  }

  /**
   * Host-memory MR: pin + map the user pages, create the mkey with the translation loaded.
   * models mlx5_ib_reg_user_mr() / efa_reg_mr() (non-ODP path)
   */
  regUserMr(
    pd: IbvPd,
    buf: UserBuffer,
    start: bigint,
    length: bigint,
    iova: bigint,
    access: number,
  ): KResult<IbMr> {
    if (access & IBV_ACCESS_ON_DEMAND)
      return kerr("EOPNOTSUPP", `${this.name}: host ODP MRs are not modelled`);
    const u = ibUmemGet(this, buf, start, length, access);
    if (!u.ok) return u;
    // sets umem->iova; mlx5 asks for its best HW page size here, the model keeps PAGE_SIZE
    ibUmemFindBestPgsz(u.value, PAGE_SIZE_N, iova);
    const mr = new IbMr({
      device: this,
      pd,
      key: this.#newKey(),
      iova,
      length,
      access,
      umem: u.value,
      dynamic: false,
    });
    this.#updateMrPas(mr);
    this.#mrs.set(mr.lkey, mr);
    this.#emit(
      "rdma:reg_mr",
      `${this.name}: reg_mr user ${hex(start)}+${hex(length)} iova ${hex(iova)} -> lkey 0x${mr.lkey.toString(16)}, ${mr.mtt!.length} DMA segment(s)`,
      { device: this.name, lkey: mr.lkey, rkey: mr.rkey, iova, length, access, segments: mr.mtt },
    );
    return kok(mr);
  }

  /**
   * dma-buf MR. mlx5 (odp): dynamic umem, mkey, then populated through the page-fault path
   * (mlx5_ib_init_dmabuf_mr), so a buffer the NIC cannot map fails registration with the map's
   * errno. Pinned providers: ib_umem_dmabuf_get_pinned, then the translation is loaded.
   * models mlx5_ib_reg_user_mr_dmabuf() / efa_reg_user_mr_dmabuf()
   */
  regUserMrDmabuf(
    pd: IbvPd,
    proc: Process,
    offset: bigint,
    length: bigint,
    iova: bigint,
    fd: number,
    access: number,
  ): KResult<IbMr> {
    const u = this.odp
      ? ibUmemDmabufGet(this, proc, offset, length, fd, access, this.#odpOps)
      : ibUmemDmabufGetPinned(this, proc, offset, length, fd, access);
    if (!u.ok) return u;
    const umem = u.value;
    // alloc_cacheable_mr → mlx5_umem_dmabuf_default_pgsz(): umem->iova = iova, PAGE_SIZE
    umem.iova = iova;
    const mr = new IbMr({
      device: this,
      pd,
      key: this.#newKey(),
      iova,
      length,
      access,
      umem,
      dynamic: this.odp,
    });
    umem.priv = mr;
    this.#mrs.set(mr.lkey, mr);
    if (this.odp) {
      const pf = this.#pagefaultDmabufMr(mr);
      if (!pf.ok) {
        this.deregMr(mr); // err_dereg_mr
        return pf;
      }
    } else this.#updateMrPas(mr);
    const attach = umem.attach!;
    this.#emit(
      "rdma:reg_dmabuf_mr",
      `${this.name}: reg_dmabuf_mr ${attach.dmabuf.describe()} offset ${hex(offset)} length ${hex(length)} iova ${hex(iova)} -> lkey 0x${mr.lkey.toString(16)} (${this.odp ? "dynamic" : "pinned"}, peer2peer=${attach.peer2peer})`,
      {
        device: this.name,
        dmabuf: attach.dmabuf.describe(),
        dmabufSize: attach.dmabuf.size,
        offset,
        length,
        iova,
        lkey: mr.lkey,
        rkey: mr.rkey,
        peer2peer: attach.peer2peer,
        flow: this.odp ? "dynamic" : "pinned",
      },
    );
    return kok(mr);
  }

  /** Destroy the mkey (stop DMA), release the umem. models mlx5_ib_dereg_mr() / efa_dereg_mr() */
  deregMr(mr: IbMr): void {
    if (!mr.live) throw new KernelBug(`dereg_mr twice: ${mr.describe()}`);
    mr.live = false;
    mr.mtt = null;
    this.#mrs.delete(mr.lkey);
    ibUmemRelease(mr.umem);
    this.#emit("rdma:dereg_mr", `${this.name}: dereg ${mr.describe()}`, {
      device: this.name,
      lkey: mr.lkey,
    });
  }

  /**
   * The NIC resolves [va, va + len) of `mr` to DMA segments through its translation; a dynamic MR
   * whose translation was zapped page-faults first (and re-maps: possibly new addresses).
   * models the HCA's MTT walk, and on a miss mlx5_ib_mr_rdma_pfault_handler() → pagefault_mr()
   */
  resolve(mr: IbMr, va: bigint, len: bigint): KResult<DmaSeg[]> {
    if (!mr.mtt) {
      if (!mr.dynamic || !mr.umem.is_dmabuf)
        throw new KernelBug(`${mr.describe()} has no translation and cannot fault`);
      this.#emit(
        "rdma:page_fault",
        `${this.name}: page fault on ${mr.describe()} at ${hex(va)}+${hex(len)}: re-mapping`,
        { device: this.name, lkey: mr.lkey, va, len },
      );
      const pf = this.#pagefaultDmabufMr(mr);
      if (!pf.ok) return pf;
    }
    const out: DmaSeg[] = [];
    let skip = pageOffset(mr.umem.address) + (va - mr.iova);
    let left = len;
    for (const s of mr.mtt!) {
      if (left === 0n) break;
      if (skip >= s.len) {
        skip -= s.len;
        continue;
      }
      const take = minBig(s.len - skip, left);
      out.push({ dma: s.dma + skip, len: take, kind: s.kind });
      left -= take;
      skip = 0n;
    }
    if (left > 0n)
      return kerr("EFAULT", `${mr.describe()}: ${hex(left)} byte(s) beyond its mapped segments`);
    return kok(out);
  }

  /** What this device still holds: contexts, PDs, QPs, MRs, umems attached / mapped / pinned. */
  leaks(): readonly Leak[] {
    const owner = `rdma ${this.name} (${this.dev.fn.name})`;
    const out: Leak[] = [];
    for (const c of this.#contexts) {
      out.push({
        kind: "rdma-context",
        owner,
        detail: `uverbs context fd ${c.fd} of ${c.proc.name} (pid ${c.proc.pid}) still open`,
      });
      for (const q of c.qps)
        out.push({
          kind: "qp",
          owner,
          detail: `QP 0x${q.qpNum.toString(16)} (${q.state}) not destroyed`,
        });
      for (const p of c.pds)
        out.push({ kind: "pd", owner, detail: `PD ${p.handle} not deallocated` });
    }
    for (const mr of this.#mrs.values())
      out.push({ kind: "mr", owner, detail: `${mr.describe()} still registered` });
    for (const u of this.umems) {
      if (!u.is_dmabuf) {
        out.push({
          kind: "page-ref",
          owner,
          detail: `${u.describe()}: ${u.pages.length} user page(s) pinned and DMA-mapped`,
        });
        continue;
      }
      if (u.attach?.state === "attached")
        out.push({ kind: "attachment", owner, detail: `${u.describe()} still attached` });
      if (u.sgt)
        out.push({
          kind: "sg-mapping",
          owner,
          detail: `${u.describe()}: ${u.umem_nents} segment(s) mapped`,
        });
      if (u.pinned) out.push({ kind: "pin", owner, detail: `${u.describe()} still pinned` });
    }
    return out;
  }
}

// ── user space (libibverbs) ──────────────────────────────────────────────────────────────────

/** The MR as `struct ibv_mr` shows it. */
export interface IbvMr {
  readonly lkey: number;
  readonly rkey: number;
  /** Host MRs: the buffer's address; dma-buf MRs: the offset (libibverbs sets addr = offset). */
  readonly addr: bigint;
  readonly iova: bigint;
  readonly length: bigint;
  readonly kind: "host" | "dmabuf";
}

interface MrState {
  readonly k: IbMr;
  readonly ctx: IbvContext;
  readonly buf: UserBuffer | null;
  deregistered: boolean;
}

const mrStates = new WeakMap<IbvMr, MrState>();

/** The kernel MR behind a user MR (for tests and the scenario runner). */
export function kernelMrOf(mr: IbvMr): IbMr | undefined {
  return mrStates.get(mr)?.k;
}

/** `struct ibv_pd`. */
export class IbvPd {
  readonly handle: number;
  readonly context: IbvContext;
  /** `pd->usecnt`: MRs and QPs using it. */
  usecnt = 0;
  destroyed = false;

  constructor(context: IbvContext, handle: number) {
    this.context = context;
    this.handle = handle;
  }
}

const nextUserVa = new WeakMap<Process, bigint>();

/** Anonymous user memory for a buffer (page-aligned), backed by RAM pages. models mmap(MAP_ANONYMOUS) */
function allocUserBuffer(sys: System, proc: Process, length: bigint): UserBuffer {
  const va = nextUserVa.get(proc) ?? 0x7f00_0000_0000n;
  const size = alignUp(length, PAGE_SIZE_N);
  nextUserVa.set(proc, va + size + PAGE_SIZE_N); // a guard page between buffers
  return { proc, va, length, pages: size > 0n ? sys.allocPages(size) : [], freed: false };
}

// models munmap() / free() of the buffer: the process drops its page references
function freeUserBuffer(sys: System, buf: UserBuffer): void {
  if (buf.freed) return;
  buf.freed = true;
  if (buf.pages.length > 0) sys.freePages(buf.pages);
}

let nextPdHandle = 1;

/** A device context: the open uverbs file of one process. */
export class IbvContext {
  readonly device: RdmaDevice;
  readonly proc: Process;
  readonly fd: number;
  readonly pds = new Set<IbvPd>();
  readonly qps = new Set<IbvQp>();
  readonly mrs = new Set<IbvMr>();
  #closed = false;

  constructor(device: RdmaDevice, proc: Process, fd: number) {
    this.device = device;
    this.proc = proc;
    this.fd = fd;
  }

  /** The uverbs file was released (close or exit): every object is gone. */
  get closed(): boolean {
    return this.#closed;
  }

  #live(what: string): void {
    if (this.#closed)
      throw new Error(`${what} on a closed context of ${this.device.name} (ibv_close_device)`);
  }

  /** models ibv_alloc_pd() → ib_uverbs_alloc_pd() */
  allocPd(): IbvPd {
    this.#live("ibv_alloc_pd");
    const pd = new IbvPd(this, nextPdHandle++);
    this.pds.add(pd);
    return pd;
  }

  /** -EBUSY while MRs or QPs use it. models ibv_dealloc_pd() → ib_dealloc_pd_user() */
  deallocPd(pd: IbvPd): KResult {
    if (this.#closed || pd.destroyed) return kok();
    if (pd.context !== this) return kerr("EINVAL", "PD of another context");
    if (pd.usecnt > 0) return kerr("EBUSY", `PD ${pd.handle} is used by ${pd.usecnt} object(s)`);
    pd.destroyed = true;
    this.pds.delete(pd);
    return kok();
  }

  #pdOk(pd: IbvPd): KResult {
    if (pd.context !== this || pd.destroyed)
      return kerr("EINVAL", `PD ${pd.handle} is not a live PD of this context`);
    return kok();
  }

  /**
   * Allocates a page-aligned buffer of `length` bytes in the process and registers it
   * (addr = iova = the buffer's address). Errors: the PD (-EINVAL), ib_check_mr_access (-EINVAL),
   * ib_umem_get. models malloc + ibv_reg_mr() → ib_uverbs_reg_mr() → reg_user_mr
   */
  regMr(pd: IbvPd, length: bigint, access: number): KResult<IbvMr> {
    if (this.#closed) return kerr("EBADF", "context closed");
    const dev = this.device;
    const p = this.#pdOk(pd);
    if (!p.ok) return p;
    const buf = allocUserBuffer(dev.sys, this.proc, length);
    const start = buf.va;
    const hcaVa = buf.va;
    const fail = <T>(r: KResult<T>): KResult<T> => {
      freeUserBuffer(dev.sys, buf);
      return r;
    };
    if (pageOffset(start) !== pageOffset(hcaVa))
      return fail(kerr("EINVAL", "start and hca_va have different page offsets"));
    const a = ibCheckMrAccess(dev, access);
    if (!a.ok) return fail(a);
    const r = dev.regUserMr(pd, buf, start, length, hcaVa, access);
    if (!r.ok) return fail(r);
    pd.usecnt++;
    const mr: IbvMr = {
      lkey: r.value.lkey,
      rkey: r.value.rkey,
      addr: start,
      iova: hcaVa,
      length,
      kind: "host",
    };
    mrStates.set(mr, { k: r.value, ctx: this, buf, deregistered: false });
    this.mrs.add(mr);
    return kok(mr);
  }

  /**
   * Registers [offset, offset + length) of the dma-buf `fd`; `iova` is the MR's address for
   * lkey/rkey. Provider without support → -EOPNOTSUPP (kernel and libibverbs' dummy op alike);
   * offset and iova with different page offsets → -EINVAL; access bits outside LOCAL_WRITE |
   * REMOTE_READ | REMOTE_WRITE | REMOTE_ATOMIC | RELAXED_ORDERING → -EINVAL
   * (uverbs_get_flags32); remote write/atomic without local write → -EINVAL
   * (ib_check_mr_access); then the provider. On success addr = offset.
   * models ibv_reg_dmabuf_mr() → UVERBS_METHOD_REG_DMABUF_MR → reg_user_mr_dmabuf
   */
  regDmabufMr(
    pd: IbvPd,
    offset: bigint,
    length: bigint,
    iova: bigint,
    fd: number,
    access: number,
  ): KResult<IbvMr> {
    if (this.#closed) return kerr("EBADF", "context closed");
    const dev = this.device;
    const p = this.#pdOk(pd);
    if (!p.ok) return p;
    if (!dev.dmabufSupported)
      return kerr("EOPNOTSUPP", `${dev.name}: the provider has no reg_user_mr_dmabuf`);
    if (pageOffset(offset) !== pageOffset(iova))
      return kerr(
        "EINVAL",
        `offset ${hex(offset)} and iova ${hex(iova)} have different page offsets`,
      );
    const flags = access >>> 0;
    if (access < 0 || !Number.isInteger(access) || flags & ~REG_DMABUF_MR_ACCESS_ALLOWED)
      return kerr(
        "EINVAL",
        `access 0x${flags.toString(16)} has bits outside 0x${REG_DMABUF_MR_ACCESS_ALLOWED.toString(16)}`,
      );
    const a = ibCheckMrAccess(dev, flags);
    if (!a.ok) return a;
    const r = dev.regUserMrDmabuf(pd, this.proc, offset, length, iova, fd, flags);
    if (!r.ok) return r;
    pd.usecnt++;
    const mr: IbvMr = {
      lkey: r.value.lkey,
      rkey: r.value.rkey,
      addr: offset,
      iova,
      length,
      kind: "dmabuf",
    };
    mrStates.set(mr, { k: r.value, ctx: this, buf: null, deregistered: false });
    this.mrs.add(mr);
    return kok(mr);
  }

  /**
   * Deregisters (and, for `regMr`, frees the buffer). A second dereg of the same MR, or one
   * destroyed with its context, is a no-op returning 0 (pyverbs' close(), which rdma-core's
   * test_dmabuf_dereg_mr_twice relies on). models ibv_dereg_mr() → ib_dereg_mr_user()
   */
  deregMr(mr: IbvMr): KResult {
    const st = mrStates.get(mr);
    if (!st || st.ctx !== this) return kerr("EINVAL", "not an MR of this context");
    if (st.deregistered) return kok();
    this.#dereg(mr, st);
    return kok();
  }

  #dereg(mr: IbvMr, st: MrState): void {
    st.deregistered = true;
    this.device.deregMr(st.k);
    st.k.pd.usecnt--;
    if (st.buf) freeUserBuffer(this.device.sys, st.buf);
    this.mrs.delete(mr);
  }

  /** models ibv_create_qp() (RC) → ib_uverbs_create_qp() */
  createQp(pd: IbvPd): IbvQp {
    this.#live("ibv_create_qp");
    const p = this.#pdOk(pd);
    if (!p.ok) throw new Error(`ibv_create_qp: ${p.reason}`);
    const qp = new IbvQp(this, pd, this.device.newQpn());
    pd.usecnt++;
    this.qps.add(qp);
    return qp;
  }

  /** models ibv_destroy_qp() */
  destroyQp(qp: IbvQp): KResult {
    if (qp.destroyed) return kok();
    if (qp.context !== this) return kerr("EINVAL", "QP of another context");
    qp.markDestroyed();
    qp.pd.usecnt--;
    this.qps.delete(qp);
    return kok();
  }

  /** ibv_close_device: close(fd). */
  close(): KResult {
    if (this.#closed) return kok();
    return sysClose(this.proc, this.fd);
  }

  /**
   * The uverbs file's last reference is gone: QPs, then MRs, then PDs are destroyed.
   * models uverbs_destroy_ufile_hw(ufile, RDMA_REMOVE_CLOSE)
   * @internal
   */
  destroyAll(): void {
    if (this.#closed) return;
    for (const qp of [...this.qps]) this.destroyQp(qp);
    for (const mr of [...this.mrs]) {
      const st = mrStates.get(mr);
      if (st && !st.deregistered) this.#dereg(mr, st);
    }
    for (const pd of [...this.pds]) {
      pd.destroyed = true;
      this.pds.delete(pd);
    }
    this.#closed = true;
    this.device.contextGone(this);
    this.device.sys.trace.emit(
      "rdma:close",
      `${this.device.name}: uverbs context of ${this.proc.name} closed: every QP, MR and PD destroyed`,
      { device: this.device.name, pid: this.proc.pid },
    );
  }
}

/** CPU store into the owning process's buffer of a host MR (offset from `mr.addr`). */
export function hostMrWrite(mr: IbvMr, offset: bigint, data: Uint8Array): void {
  const buf = hostBuffer(mr, offset, BigInt(data.length));
  const sys = mrStates.get(mr)!.ctx.device.sys;
  let done = 0;
  let at = mr.addr - buf.va + offset;
  while (done < data.length) {
    const page = buf.pages[Number(at / PAGE_SIZE_N)]!;
    const inPage = at % PAGE_SIZE_N;
    const n = Math.min(data.length - done, Number(PAGE_SIZE_N - inPage));
    sys.memory.write(physAddr(System.phys(page) + inPage), data.subarray(done, done + n));
    done += n;
    at += BigInt(n);
  }
}

/** CPU load from the owning process's buffer of a host MR (offset from `mr.addr`). */
export function hostMrRead(mr: IbvMr, offset: bigint, length: number): Uint8Array {
  const buf = hostBuffer(mr, offset, BigInt(length));
  const sys = mrStates.get(mr)!.ctx.device.sys;
  const out = new Uint8Array(length);
  let done = 0;
  let at = mr.addr - buf.va + offset;
  while (done < length) {
    const page = buf.pages[Number(at / PAGE_SIZE_N)]!;
    const inPage = at % PAGE_SIZE_N;
    const n = Math.min(length - done, Number(PAGE_SIZE_N - inPage));
    out.set(sys.memory.read(physAddr(System.phys(page) + inPage), n), done);
    done += n;
    at += BigInt(n);
  }
  return out;
}

function hostBuffer(mr: IbvMr, offset: bigint, len: bigint): UserBuffer {
  const st = mrStates.get(mr);
  if (!st?.buf) throw new Error("not a host MR of this model");
  if (st.buf.freed) throw new Error(`the buffer of MR 0x${mr.lkey.toString(16)} was freed`);
  if (offset < 0n || offset + len > mr.length)
    throw new RangeError(
      `[${hex(offset)}, ${hex(offset + len)}) is outside the ${hex(mr.length)}-byte buffer (SIGSEGV)`,
    );
  return st.buf;
}

// ── queue pairs and the data path ────────────────────────────────────────────────────────────

/** `enum ibv_wc_status`. */
export type IbvWcStatus =
  | "IBV_WC_SUCCESS"
  | "IBV_WC_LOC_LEN_ERR"
  | "IBV_WC_LOC_QP_OP_ERR"
  | "IBV_WC_LOC_EEC_OP_ERR"
  | "IBV_WC_LOC_PROT_ERR"
  | "IBV_WC_WR_FLUSH_ERR"
  | "IBV_WC_MW_BIND_ERR"
  | "IBV_WC_BAD_RESP_ERR"
  | "IBV_WC_LOC_ACCESS_ERR"
  | "IBV_WC_REM_INV_REQ_ERR"
  | "IBV_WC_REM_ACCESS_ERR"
  | "IBV_WC_REM_OP_ERR"
  | "IBV_WC_RETRY_EXC_ERR"
  | "IBV_WC_RNR_RETRY_EXC_ERR"
  | "IBV_WC_LOC_RDD_VIOL_ERR"
  | "IBV_WC_REM_INV_RD_REQ_ERR"
  | "IBV_WC_REM_ABORT_ERR"
  | "IBV_WC_INV_EECN_ERR"
  | "IBV_WC_INV_EEC_STATE_ERR"
  | "IBV_WC_FATAL_ERR"
  | "IBV_WC_RESP_TIMEOUT_ERR"
  | "IBV_WC_GENERAL_ERR";

export interface WorkCompletion {
  readonly status: IbvWcStatus;
  /** Bytes transferred (0 for an error completion, where ibv_wc.byte_len is undefined). */
  readonly byteLen: bigint;
  readonly opcode: "IBV_WC_RDMA_WRITE" | "IBV_WC_RDMA_READ";
  readonly detail?: string;
}

export interface RdmaWr {
  readonly local: IbvMr;
  readonly localAddr: bigint;
  readonly length: bigint;
  readonly remoteAddr: bigint;
  readonly rkey: number;
}

export type QpState = "RESET" | "RTS" | "ERR";

function faultText(f: DmaFault): string {
  return `${f.write ? "write" : "read"} of ${f.length} byte(s) at ${hex(f.address)} by ${f.requester} refused at ${f.at}: ${f.reason}`;
}

/** An RC queue pair. */
export class IbvQp {
  readonly context: IbvContext;
  readonly pd: IbvPd;
  readonly qpNum: number;
  state: QpState = "RESET";
  remote: IbvQp | null = null;
  /** Payload bytes this QP sent / received over its link. */
  bytesSent = 0n;
  bytesReceived = 0n;
  #destroyed = false;

  constructor(context: IbvContext, pd: IbvPd, qpNum: number) {
    this.context = context;
    this.pd = pd;
    this.qpNum = qpNum;
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** @internal */
  markDestroyed(): void {
    this.#destroyed = true;
    this.state = "RESET";
  }

  get device(): RdmaDevice {
    return this.context.device;
  }

  /**
   * Connects both ends (RC): each QP goes RESET → INIT → RTR → RTS with the other as destination.
   * The two may live on two machines. Also how a QP in the error state is re-armed.
   * models ibv_modify_qp() to RTS on both sides
   */
  connect(remote: IbvQp): void {
    if (this.#destroyed || remote.destroyed) throw new Error("ibv_modify_qp on a destroyed QP");
    this.remote = remote;
    remote.remote = this;
    this.state = "RTS";
    remote.state = "RTS";
  }

  #check(op: string): void {
    if (this.#destroyed) throw new Error(`${op} on destroyed QP 0x${this.qpNum.toString(16)}`);
    if (this.state === "RESET")
      throw new Error(`${op} on QP 0x${this.qpNum.toString(16)} in RESET (not connected): EINVAL`);
  }

  /** RDMA WRITE: local MR bytes → remote MR at remoteAddr. models ibv_post_send(IBV_WR_RDMA_WRITE) + ibv_poll_cq */
  postWrite(wr: RdmaWr): WorkCompletion {
    this.#check("ibv_post_send(IBV_WR_RDMA_WRITE)");
    return rdmaOp(this, "write", wr);
  }

  /** RDMA READ: remote MR bytes at remoteAddr → local MR. models ibv_post_send(IBV_WR_RDMA_READ) + ibv_poll_cq */
  postRead(wr: RdmaWr): WorkCompletion {
    this.#check("ibv_post_send(IBV_WR_RDMA_READ)");
    return rdmaOp(this, "read", wr);
  }
}

/** Bytes a NIC moves per step: the message is streamed, as a NIC sends it packet by packet. */
const STREAM_CHUNK = 1 << 22;
let streamBuf = new Uint8Array(0);

/**
 * Streams `total` bytes: the source NIC DMA-reads `srcSegs` and the destination NIC DMA-writes
 * `dstSegs`, one chunk at a time through a reused buffer. A read fault stops the stream (what was
 * already sent has landed: an RDMA WRITE is not atomic). Writes are posted: a write the IOMMU or
 * the root complex refuses is dropped (and logged there) while the NIC carries on, so the faults
 * are returned for the trace, not turned into an error completion.
 */
function streamSegs(
  src: RdmaDevice,
  srcSegs: readonly DmaSeg[],
  dst: RdmaDevice,
  dstSegs: readonly DmaSeg[],
  total: bigint,
): { readFault: DmaFault | null; dropped: DmaFault[] } {
  const dropped: DmaFault[] = [];
  let si = 0;
  let soff = 0n;
  let di = 0;
  let doff = 0n;
  let left = total;
  while (left > 0n) {
    const s = srcSegs[si];
    const d = dstSegs[di];
    if (!s || !d) throw new KernelBug(`rdma: segments cover less than the ${total} bytes to move`);
    let n = BigInt(STREAM_CHUNK);
    if (s.len - soff < n) n = s.len - soff;
    if (d.len - doff < n) n = d.len - doff;
    if (left < n) n = left;
    const len = Number(n);
    if (streamBuf.length < len) streamBuf = new Uint8Array(STREAM_CHUNK);
    const r = src.sys.fabric.dmaRead(src.dev.fn, s.dma + soff, len, streamBuf);
    if (!r.ok) return { readFault: r.fault, dropped };
    const w = dst.sys.deviceWrite(dst.dev, d.dma + doff, streamBuf.subarray(0, len));
    if (!w.ok) dropped.push(w.fault);
    soff += n;
    doff += n;
    left -= n;
    if (soff === s.len) {
      si++;
      soff = 0n;
    }
    if (doff === d.len) {
      di++;
      doff = 0n;
    }
  }
  return { readFault: null, dropped };
}

/** The trace of posted writes the fabric dropped; the completion still says success. */
function traceDropped(dev: RdmaDevice, faults: readonly DmaFault[]): string | undefined {
  if (faults.length === 0) return undefined;
  const bytes = faults.reduce((t, f) => t + f.length, 0);
  const detail = `${bytes} byte(s) of posted writes dropped, the NIC was not told: ${faults.map(faultText).join("; ")}`;
  dev.sys.trace.emit("rdma:write_dropped", `${dev.name}: ${detail}`, {
    device: dev.name,
    bytes,
  });
  return detail;
}

const segsText = (segs: readonly DmaSeg[]): string =>
  segs.map((s) => `${hex(s.dma)}+${hex(s.len)} (${s.kind})`).join(", ");

/**
 * One RDMA WRITE or READ on an RC connection, as the two NICs carry it out: local key, access and
 * bounds (IBV_WC_LOC_PROT_ERR), the remote QP gone (IBV_WC_RETRY_EXC_ERR), the responder's rkey,
 * access and bounds and a page fault it cannot resolve (IBV_WC_REM_ACCESS_ERR), read faults
 * (local: IBV_WC_LOC_PROT_ERR; responder: IBV_WC_REM_OP_ERR: a non-posted read gets an error
 * completion). Writes are posted: one the fabric drops still completes with success, with the
 * loss only in the trace and the fault logs. An error moves the QPs that saw it to the error state.
 */
function rdmaOp(qp: IbvQp, op: "write" | "read", wr: RdmaWr): WorkCompletion {
  const opcode = op === "write" ? "IBV_WC_RDMA_WRITE" : "IBV_WC_RDMA_READ";
  const L = qp.device;
  const fail = (status: IbvWcStatus, detail: string, responderToo = false): WorkCompletion => {
    qp.state = "ERR";
    if (responderToo && qp.remote) qp.remote.state = "ERR";
    L.sys.trace.emit(
      "rdma:wc_error",
      `${L.name} QP 0x${qp.qpNum.toString(16)} ${opcode}: ${status}: ${detail}`,
      {
        device: L.name,
        qp: qp.qpNum,
        status,
        detail,
      },
    );
    return { status, byteLen: 0n, opcode, detail };
  };
  if (qp.state === "ERR")
    return {
      status: "IBV_WC_WR_FLUSH_ERR",
      byteLen: 0n,
      opcode,
      detail: "QP is in the error state",
    };
  const len = wr.length;
  // local: the lkey must name a live MR of this device and PD covering the range
  const lst = mrStates.get(wr.local);
  const lmr = lst?.k;
  if (!lmr?.live || lmr.device !== L)
    return fail(
      "IBV_WC_LOC_PROT_ERR",
      `lkey 0x${wr.local.lkey.toString(16)} is not a live MR of ${L.name}`,
    );
  if (lmr.pd !== qp.pd)
    return fail("IBV_WC_LOC_PROT_ERR", `${lmr.describe()} belongs to another PD than the QP`);
  if (len > 0n && (wr.localAddr < lmr.iova || wr.localAddr + len > lmr.iova + lmr.length))
    return fail(
      "IBV_WC_LOC_PROT_ERR",
      `local [${hex(wr.localAddr)}, ${hex(wr.localAddr + len)}) is outside ${lmr.describe()}`,
    );
  if (op === "read" && len > 0n && !(lmr.access & IBV_ACCESS_LOCAL_WRITE))
    return fail(
      "IBV_WC_LOC_PROT_ERR",
      `${lmr.describe()} lacks IBV_ACCESS_LOCAL_WRITE for the read data`,
    );
  const rqp = qp.remote;
  if (!rqp || rqp.destroyed || rqp.state !== "RTS" || rqp.context.closed)
    return fail(
      "IBV_WC_RETRY_EXC_ERR",
      "the remote QP does not answer (destroyed, closed or not in RTS)",
    );
  const R = rqp.device;
  if (len === 0n) return { status: "IBV_WC_SUCCESS", byteLen: 0n, opcode };
  // the responder's checks
  const rmr = R.mrs.get(wr.rkey);
  const need = op === "write" ? IBV_ACCESS_REMOTE_WRITE : IBV_ACCESS_REMOTE_READ;
  if (!rmr || rmr.pd !== rqp.pd)
    return fail(
      "IBV_WC_REM_ACCESS_ERR",
      `rkey 0x${(wr.rkey >>> 0).toString(16)} is not a live MR of ${R.name} in the remote QP's PD`,
      true,
    );
  if (!(rmr.access & need))
    return fail(
      "IBV_WC_REM_ACCESS_ERR",
      `${rmr.describe()} lacks ${op === "write" ? "IBV_ACCESS_REMOTE_WRITE" : "IBV_ACCESS_REMOTE_READ"}`,
      true,
    );
  if (wr.remoteAddr < rmr.iova || wr.remoteAddr + len > rmr.iova + rmr.length)
    return fail(
      "IBV_WC_REM_ACCESS_ERR",
      `remote [${hex(wr.remoteAddr)}, ${hex(wr.remoteAddr + len)}) is outside ${rmr.describe()}`,
      true,
    );
  const from = op === "write" ? `${L.name} ${lmr.describe()}` : `${R.name} ${rmr.describe()}`;
  const to = op === "write" ? `${R.name} ${rmr.describe()}` : `${L.name} ${lmr.describe()}`;
  let srcSegs: DmaSeg[];
  let dstSegs: DmaSeg[];
  let dropped: string | undefined;
  if (op === "write") {
    const ls = L.resolve(lmr, wr.localAddr, len);
    if (!ls.ok)
      return fail(
        "IBV_WC_LOC_PROT_ERR",
        `local page fault failed: ${ls.errno} ${ls.reason ?? ""}`.trim(),
      );
    const rs = R.resolve(rmr, wr.remoteAddr, len);
    if (!rs.ok)
      return fail(
        "IBV_WC_REM_ACCESS_ERR",
        `remote page fault failed: ${rs.errno} ${rs.reason ?? ""}`.trim(),
        true,
      );
    const st = streamSegs(L, ls.value, R, rs.value, len);
    if (st.readFault)
      return fail("IBV_WC_LOC_PROT_ERR", `local DMA read faulted: ${faultText(st.readFault)}`);
    dropped = traceDropped(R, st.dropped);
    srcSegs = ls.value;
    dstSegs = rs.value;
  } else {
    const rs = R.resolve(rmr, wr.remoteAddr, len);
    if (!rs.ok)
      return fail(
        "IBV_WC_REM_ACCESS_ERR",
        `remote page fault failed: ${rs.errno} ${rs.reason ?? ""}`.trim(),
        true,
      );
    const ls = L.resolve(lmr, wr.localAddr, len);
    if (!ls.ok)
      return fail(
        "IBV_WC_LOC_PROT_ERR",
        `local page fault failed: ${ls.errno} ${ls.reason ?? ""}`.trim(),
      );
    const st = streamSegs(R, rs.value, L, ls.value, len);
    if (st.readFault)
      return fail("IBV_WC_REM_OP_ERR", `remote DMA read faulted: ${faultText(st.readFault)}`, true);
    dropped = traceDropped(L, st.dropped);
    srcSegs = rs.value;
    dstSegs = ls.value;
  }
  if (op === "write") {
    qp.bytesSent += len;
    rqp.bytesReceived += len;
  } else {
    rqp.bytesSent += len;
    qp.bytesReceived += len;
  }
  const msg = `${L.name} QP 0x${qp.qpNum.toString(16)} RDMA ${op.toUpperCase()} ${len} byte(s): ${from} [${segsText(srcSegs)}] -> ${to} [${segsText(dstSegs)}]`;
  const info = {
    op,
    bytes: len,
    from,
    to,
    src: srcSegs,
    dst: dstSegs,
    localAddr: wr.localAddr,
    remoteAddr: wr.remoteAddr,
  };
  L.sys.trace.emit(`rdma:${op}`, msg, info);
  if (R.sys.trace !== L.sys.trace) R.sys.trace.emit(`rdma:${op}`, msg, info);
  return {
    status: "IBV_WC_SUCCESS",
    byteLen: len,
    opcode,
    ...(dropped ? { detail: dropped } : {}),
  };
}
