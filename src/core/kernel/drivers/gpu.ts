/**
 * @module gpu
 * A GPU driver modelled on amdgpu (drivers/gpu/drm/amd/amdgpu: amdgpu_dma_buf.c, amdgpu_object.c,
 * amdgpu_ttm.c, amdgpu_vram_mgr.c, amdgpu_gem.c, amdgpu_cs.c) over TTM (drivers/gpu/drm/ttm) and
 * DRM PRIME (drivers/gpu/drm/drm_prime.c, drm_gem.c): the migrating dma-buf exporter of spec
 * dma-buf.md §6.
 *
 * Memory: VRAM is the GPU's large BAR (resizable BAR: the whole VRAM is CPU-visible, VRAM bytes
 * live at `BAR start + VRAM offset` in the System's physical memory); GTT buffers are System RAM
 * pages. Buffer objects (BOs) have preferred and allowed domains (VRAM | GTT), live in one place
 * at a time, and move by TTM validation: `amdgpu_bo_placement_from_domain` → `ttm_bo_validate`
 * (compatible placement: stay; else allocate, first without eviction, then evicting the VRAM LRU
 * head), `amdgpu_bo_move` (move_notify first, then the bytes are copied: the SDMA blit). Eviction
 * sends VRAM BOs to GTT (`amdgpu_evict_flags`); pinned BOs are off the LRU and never move.
 *
 * dma-buf (PRIME export, dynamic exporter: it has pin/unpin): attach clears `peer2peer` when
 * `pci_p2pdma_distance(gpu, importer, false) < 0`; map validates the BO into GTT (+ VRAM when it
 * prefers VRAM and the attachment is P2P: the migration) and returns either a page-backed table
 * of the GTT pages mapped with `dma_map_sgtable` or a page-less table of VRAM blocks each mapped
 * with `dma_map_resource` (`amdgpu_vram_mgr_alloc_sgt`); every move of an exported BO out of a
 * non-SYSTEM placement calls `dma_buf_move_notify` under the resv before the move.
 *
 * User API (`GpuFile`, the /dev/dri/renderD128-style device file): GEM_CREATE, PRIME
 * HANDLE_TO_FD, PRIME FD_TO_HANDLE, GEM_CLOSE, CPU access through a mapping, a command submission
 * that validates BOs back into their preferred domains, and an SDMA copy between two BOs. Kernel
 * API (`GpuDevice`): evict (memory pressure, the debugfs amdgpu_evict_vram), kernel pins
 * (scanout-style).
 *
 * As an importer (amdgpu_dma_buf.c import side, amdgpu_ttm.c backend bind/unbind, drm_prime.c):
 * PRIME fd-to-handle of a dma-buf this device exported returns the same GEM object; any other
 * dma-buf becomes an SG BO (GTT only, sharing the dma-buf's resv, SYSTEM until bound) with a
 * dynamic attachment (allow_peer2peer = true, move_notify = amdgpu_dma_buf_move_notify). The
 * attachment is mapped when the BO is validated (bound) by a submission; move_notify unbinds it
 * (table handed back) and invalidates the VM mappings, so the next submission maps again. The copy
 * engine reaches its VRAM directly and GTT pages and imports by DMA through the fabric, from the
 * GPU's own DMA device (44-bit mask).
 *
 * What differs between 6.1 and mainline is in `AMDGPU_PROFILES`, chosen by the dma-buf core's
 * kernel profile (it belongs in `KernelProfile` once that file takes driver sections).
 *
 * Not modelled (documented gaps): CPU-invisible VRAM (small-BAR GPUs; `vramSize` must fit the
 * BAR); XGMI (no importer is ever XGMI-reachable, so the mainline WARN/-EINVAL for DMA-mapping
 * XGMI-accessible VRAM never fires); the mainline GFX12 DCC rule (`AMDGPU_GEM_CREATE_GFX12_DCC`
 * clears peer2peer at attach); the SYSTEM placement (GTT is never evicted to system memory, GTT
 * beyond `gttSize` fails); the drm_buddy allocator itself (VRAM is allocated first-fit in 4 KiB
 * pages, top-down unless CPU access is required; a contiguous run becomes the naturally aligned
 * power-of-two blocks a buddy allocator would hand out, each one sg entry); the CS move budget
 * (bytes_moved_threshold is treated as unlimited); GPU VMs, fences of the blit (moves complete at
 * once), userptr BOs, DISCARDABLE BOs, TMZ. On 6.1 a validation that
 * would move a pinned BO fails before allocating (the kernel allocates, possibly evicting, and
 * only then does amdgpu_bo_move refuse). vmap returns the BO's first byte (no kernel mapping).
 * Import gaps: imported BOs are not counted in the GTT manager and never evicted from GTT under
 * GTT pressure; CPU mmap of an imported BO (redirected to the exporter) is not modelled; the
 * copy engine has no GPU VM: it uses DMA addresses directly, and a fault fails the copy with -EIO.
 */

import { dmaAddr, hex, type PhysAddr, physAddr } from "../../hw/address.ts";
import type { DmaFault } from "../../hw/fabric.ts";
import { memoryBar, type PciFunction } from "../../hw/machine.ts";
import { type DmaDevice, dmaSetMaskAndCoherent } from "../dma/device.ts";
import type { DmaDirection } from "../dma/mapping.ts";
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
import {
  type DmaBuf,
  type DmaBufCore,
  type DmaBufOps,
  dmaBufExport,
  dmaBufMoveNotify,
  getDmaBuf,
  type IosysMap,
  Module,
} from "../dma-buf/dma-buf.ts";
import {
  dmaBufFd,
  dmaBufGet,
  dmaBufPut,
  type FileOperations,
  KFile,
  O_CLOEXEC,
  O_RDWR,
  type Process,
  sysClose,
} from "../dma-buf/file.ts";
import { DmaResv } from "../dma-buf/resv.ts";
import { KernelBug, type KResult, kerr, kok } from "../errno.ts";
import { type Leak, type LeakSource, unmappedTableLeaks } from "../leaks.ts";
import {
  for_each_sgtable_sg,
  type SgTable,
  sg_alloc_table,
  sg_alloc_table_from_pages,
  sg_free_table,
  sg_page,
  sg_set_page,
} from "../lib/scatterlist.ts";
import { PAGE_SIZE_N, type Page } from "../mm/page.ts";
import type { KernelProfile } from "../profile.ts";
import { System } from "../system.ts";
import type { DmaAddrKind } from "../trace.ts";
import { type DmaSeg, dmaSegments, dmaSegsText, walkSegments } from "./dma-segs.ts";

// ── uAPI (include/uapi/drm/amdgpu_drm.h, drm.h) ──────────────────────────────────────────────

export const AMDGPU_GEM_DOMAIN_CPU = 0x1;
export const AMDGPU_GEM_DOMAIN_GTT = 0x2;
export const AMDGPU_GEM_DOMAIN_VRAM = 0x4;
export const AMDGPU_GEM_CREATE_CPU_ACCESS_REQUIRED = 1 << 0;
export const AMDGPU_GEM_CREATE_NO_CPU_ACCESS = 1 << 1;
export const AMDGPU_GEM_CREATE_CPU_GTT_USWC = 1 << 2;
export const AMDGPU_GEM_CREATE_VRAM_CLEARED = 1 << 3;
export const AMDGPU_GEM_CREATE_VRAM_CONTIGUOUS = 1 << 5;
export const AMDGPU_GEM_CREATE_VM_ALWAYS_VALID = 1 << 6;
export const AMDGPU_GEM_CREATE_EXPLICIT_SYNC = 1 << 7;
export const AMDGPU_GEM_CREATE_ENCRYPTED = 1 << 10;
export const AMDGPU_GEM_CREATE_DISCARDABLE = 1 << 12;
/** `DRM_CLOEXEC` / `DRM_RDWR`: the PRIME HANDLE_TO_FD flags, equal to O_CLOEXEC / O_RDWR. */
export const DRM_CLOEXEC = O_CLOEXEC;
export const DRM_RDWR = O_RDWR;
/** `AMDGPU_MAX_SG_SEGMENT_SIZE` (mainline; 6.1 caps buddy blocks at the same 2 GiB). */
export const AMDGPU_MAX_SG_SEGMENT_SIZE = 2n << 30n;

/** GEM_CREATE flags 6.1 accepts (amdgpu_gem_create_ioctl); anything else is -EINVAL. */
const GEM_CREATE_FLAGS =
  AMDGPU_GEM_CREATE_CPU_ACCESS_REQUIRED |
  AMDGPU_GEM_CREATE_NO_CPU_ACCESS |
  AMDGPU_GEM_CREATE_CPU_GTT_USWC |
  AMDGPU_GEM_CREATE_VRAM_CLEARED |
  AMDGPU_GEM_CREATE_VM_ALWAYS_VALID |
  AMDGPU_GEM_CREATE_EXPLICIT_SYNC |
  AMDGPU_GEM_CREATE_ENCRYPTED |
  AMDGPU_GEM_CREATE_DISCARDABLE;

// ── what differs between kernels ─────────────────────────────────────────────────────────────

/** amdgpu and TTM behaviour that differs between kernel versions. */
export interface AmdgpuProfile {
  /**
   * `amdgpu_dma_buf_pin`: `gtt` (6.1: always `amdgpu_bo_pin(bo, GTT)`); `p2p-aware` (mainline:
   * the allowed domains, minus VRAM when CONFIG_DMABUF_MOVE_NOTIFY is off or any attachment has
   * peer2peer false; CPU_ACCESS_REQUIRED when VRAM stays; no domain left → WARN, -EINVAL).
   */
  readonly dmaBufPin: "gtt" | "p2p-aware";
  /**
   * `amdgpu_dma_buf_map` on a pinned BO: `gtt-or-ebusy` (6.1: -EBUSY unless it sits in GTT);
   * `current` (mainline: whatever placement it is pinned in, VRAM included, for any importer).
   */
  readonly mapPinned: "gtt-or-ebusy" | "current";
  /**
   * `amdgpu_bo_placement_from_domain` marks GTT `TTM_PL_FLAG_FALLBACK` when the BO already has a
   * resource and VRAM is both requested and preferred (mainline): a BO in GTT then moves back to
   * VRAM whenever VRAM has free space, and stays in GTT (no eviction) when it has none.
   */
  readonly gttFallback: boolean;
  /**
   * Evicting the VRAM LRU head when nothing is evictable: 6.1 `ttm_mem_evict_first` → -EBUSY;
   * mainline `ttm_bo_evict_first` → -ENOENT (pinned BOs sit on the unevictable list).
   */
  readonly evictFirstNone: "EBUSY" | "ENOENT";
  /** `dma_buf_ops.detach` exists (6.1: the runtime-PM put); mainline has none. */
  readonly detachOp: boolean;
  /** attach takes the resv lock (mainline: amdgpu_vm_bo_update_shared under it). */
  readonly attachLocksResv: boolean;
  /** `vmap` pins the BO in GTT | VRAM first (mainline amdgpu_dma_buf_vmap); 6.1 does not. */
  readonly vmapPins: boolean;
  /**
   * Validating a pinned BO somewhere else: 6.1 reaches `amdgpu_bo_move`, WARN_ON_ONCE, -EINVAL;
   * mainline `ttm_bo_validate` refuses with -EINVAL before moving.
   */
  readonly movePinnedWarns: boolean;
}

export const AMDGPU_PROFILES: Readonly<Record<KernelProfile["id"], AmdgpuProfile>> = {
  "6.1": {
    dmaBufPin: "gtt",
    mapPinned: "gtt-or-ebusy",
    gttFallback: false,
    evictFirstNone: "EBUSY",
    detachOp: true,
    attachLocksResv: false,
    vmapPins: false,
    movePinnedWarns: true,
  },
  mainline: {
    dmaBufPin: "p2p-aware",
    mapPinned: "current",
    gttFallback: true,
    evictFirstNone: "ENOENT",
    detachOp: false,
    attachLocksResv: true,
    vmapPins: true,
    movePinnedWarns: false,
  },
};

// ── buffer objects ───────────────────────────────────────────────────────────────────────────

export type BoPlacement = "vram" | "gtt";

/** A run of VRAM, as an offset from the start of VRAM. */
export interface VramRun {
  readonly offset: bigint;
  readonly size: bigint;
}

const alignUp = (v: bigint, a: bigint): bigint => ((v + a - 1n) / a) * a;
const GiB = 1n << 30n;

/** Domain bits as text: "VRAM|GTT". */
export function domainText(domain: number): string {
  const parts = [
    domain & AMDGPU_GEM_DOMAIN_VRAM ? "VRAM" : null,
    domain & AMDGPU_GEM_DOMAIN_GTT ? "GTT" : null,
    domain & AMDGPU_GEM_DOMAIN_CPU ? "CPU" : null,
  ].filter((x) => x !== null);
  return parts.length > 0 ? parts.join("|") : "none";
}

/**
 * The naturally aligned power-of-two blocks of a contiguous VRAM run, each at most
 * AMDGPU_MAX_SG_SEGMENT_SIZE: the blocks drm_buddy hands out, one sg entry each.
 */
export function buddyBlocks(run: VramRun): VramRun[] {
  const out: VramRun[] = [];
  let off = run.offset;
  let left = run.size;
  while (left > 0n) {
    let size = PAGE_SIZE_N;
    while (size * 2n <= left && off % (size * 2n) === 0n && size * 2n <= AMDGPU_MAX_SG_SEGMENT_SIZE)
      size *= 2n;
    out.push({ offset: off, size });
    off += size;
    left -= size;
  }
  return out;
}

let nextBoId = 1;

/** `struct amdgpu_bo` with its `ttm_buffer_object` and `drm_gem_object`. */
export class GpuBo {
  readonly id = nextBoId++;
  readonly gpu: GpuDevice;
  /** Page-aligned size. */
  readonly size: bigint;
  readonly preferred_domains: number;
  readonly allowed_domains: number;
  /** `bo->flags` (AMDGPU_GEM_CREATE_*); map and pin add CPU_ACCESS_REQUIRED, moves into VRAM clear it. */
  flags: number;
  /** `bo->tbo.base.resv` (the GEM object's embedded reservation object). */
  readonly resv: DmaResv;
  /** Where it lives; null before the first validation and after it was freed. */
  placement: BoPlacement | null = null;
  /** Its VRAM, in BO byte order (placement "vram"). */
  vram: readonly VramRun[] = [];
  /** The resource was allocated with TTM_PL_FLAG_CONTIGUOUS. */
  vramContiguous = false;
  /** Its GTT pages, in BO byte order (placement "gtt"). */
  gttPages: readonly Page[] = [];
  /** `tbo.pin_count`. */
  pin_count = 0;
  /** `base.refcount` (kref of the GEM object). */
  kref = 1;
  /** `base.handle_count`: user handles naming it. */
  handle_count = 0;
  /** `base.dma_buf`: the exported buffer while a handle exists (NULL after the last GEM_CLOSE). */
  dma_buf: DmaBuf | null = null;
  /** How many times it moved, and how many of those were evictions. */
  moves = 0;
  evictions = 0;
  freed = false;
  /**
   * The foreign dma-buf an imported BO (a `ttm_bo_type_sg` BO made by amdgpu_dma_buf_create_obj)
   * stands for; null for BOs with memory of their own. Its `placement` is null while it sits in
   * the SYSTEM domain (unbound) and "gtt" while bound (its attachment mapped, `ttmSg` set).
   */
  readonly importOf: DmaBuf | null;
  /** `base.import_attach`: the dynamic attachment of an imported BO. */
  import_attach: DmaBufAttachment | null = null;
  /** `ttm->sg` of an imported BO: the table dma_buf_map_attachment returned when it was bound. */
  ttmSg: SgTable | null = null;
  /** Imported: how many times the attachment was mapped (bound), and invalidated by move_notify. */
  importMaps = 0;
  vmInvalidations = 0;

  constructor(
    gpu: GpuDevice,
    size: bigint,
    domain: number,
    flags: number,
    importOf: DmaBuf | null = null,
  ) {
    this.gpu = gpu;
    this.size = size;
    this.preferred_domains = domain;
    // models amdgpu_bo_create(): a user BO that may only live in VRAM may still be evicted to GTT
    this.allowed_domains =
      domain === AMDGPU_GEM_DOMAIN_VRAM ? domain | AMDGPU_GEM_DOMAIN_GTT : domain;
    this.flags = flags;
    this.importOf = importOf;
    // an imported BO shares the dma-buf's reservation object (bp.resv = dma_buf->resv)
    this.resv =
      importOf?.resv ??
      new DmaResv(
        `resv of bo#${this.id}`,
        gpu.core.clock,
        { lockdep: (r) => gpu.core.lockdep.push(r) },
        gpu.core.task,
      );
  }

  describe(): string {
    if (this.importOf)
      return `bo#${this.id} (${this.size} bytes, import of dmabuf:${this.importOf.ino}, ${this.freed ? "freed" : this.ttmSg ? "bound in GTT" : "unbound (SYSTEM)"})`;
    return `bo#${this.id} (${this.size} bytes, ${this.placement ?? (this.freed ? "freed" : "unplaced")}, prefers ${domainText(this.preferred_domains)})`;
  }

  /** CPU physical address of byte `off` (the BAR for VRAM, the RAM page for GTT). */
  phys(off: bigint): PhysAddr {
    if (this.importOf)
      throw new Error(
        `${this.describe()}: an imported BO has no memory of its own (CPU access to it is not modelled)`,
      );
    if (off < 0n || off >= this.size)
      throw new RangeError(`${this.describe()}: offset ${hex(off)}`);
    if (this.placement === "vram") {
      let at = off;
      for (const r of this.vram) {
        if (at < r.size) return physAddr(this.gpu.aper_base + r.offset + at);
        at -= r.size;
      }
    } else if (this.placement === "gtt") {
      const page = this.gttPages[Number(off / PAGE_SIZE_N)]!;
      return physAddr(System.phys(page) + (off % PAGE_SIZE_N));
    }
    throw new KernelBug(`${this.describe()} has no backing store`);
  }

  /** The backing store as [phys, len] runs in BO order. */
  segments(): { phys: bigint; len: bigint }[] {
    if (this.importOf) return [];
    if (this.placement === "vram")
      return this.vram.map((r) => ({ phys: this.gpu.aper_base + r.offset, len: r.size }));
    if (this.placement === "gtt")
      return this.gttPages.map((p) => ({ phys: System.phys(p) as bigint, len: PAGE_SIZE_N }));
    return [];
  }
}

/** One TTM place: a memory type and the flags amdgpu puts on it. */
interface Place {
  readonly mem: BoPlacement;
  /** TTM_PL_FLAG_FALLBACK (mainline): used only once eviction is allowed. */
  readonly fallback: boolean;
  /** TTM_PL_FLAG_TOPDOWN (VRAM without CPU_ACCESS_REQUIRED). */
  readonly topdown: boolean;
  /** TTM_PL_FLAG_CONTIGUOUS. */
  readonly contiguous: boolean;
}

/** A new resource, not yet assigned to the BO. */
type Resource =
  | { readonly mem: "vram"; readonly runs: VramRun[]; readonly contiguous: boolean }
  | { readonly mem: "gtt"; readonly pages: Page[] };

// ── the device file ──────────────────────────────────────────────────────────────────────────

/** An open /dev/dri/renderD* (`struct drm_file` with its handle table and PRIME cache). */
export class GpuFile {
  readonly gpu: GpuDevice;
  readonly proc: Process;
  readonly fd: number;
  readonly file: KFile;
  /** `object_idr`: handle → BO. */
  readonly handles = new Map<number, GpuBo>();
  /** `prime.handles`: handle → the dma-buf exported through it (one reference each). */
  readonly prime = new Map<number, DmaBuf>();
  #nextHandle = 1;
  #released = false;

  constructor(gpu: GpuDevice, proc: Process, fd: number, file: KFile) {
    this.gpu = gpu;
    this.proc = proc;
    this.fd = fd;
    this.file = file;
  }

  get released(): boolean {
    return this.#released;
  }

  #live(what: string): void {
    if (this.#released) throw new Error(`${what} on a closed ${this.file.name}`);
  }

  /** The BO behind `handle`, or undefined. */
  bo(handle: number): GpuBo | undefined {
    return this.handles.get(handle);
  }

  /**
   * DRM_IOCTL_AMDGPU_GEM_CREATE: flags outside what 6.1 accepts or domains outside CPU|GTT|VRAM
   * → -EINVAL; ENCRYPTED without TMZ → -EINVAL; then create, retrying without
   * CPU_ACCESS_REQUIRED and, for VRAM-only, with VRAM|GTT. Returns the new handle.
   * models amdgpu_gem_create_ioctl()
   */
  createBo(size: bigint, domain: number, flags = 0): KResult<number> {
    this.#live("GEM_CREATE");
    if (flags & ~GEM_CREATE_FLAGS)
      return kerr("EINVAL", `GEM_CREATE: flags ${hex(BigInt(flags >>> 0))} not accepted`);
    if (domain & ~(AMDGPU_GEM_DOMAIN_CPU | AMDGPU_GEM_DOMAIN_GTT | AMDGPU_GEM_DOMAIN_VRAM))
      return kerr("EINVAL", `GEM_CREATE: domain ${hex(BigInt(domain >>> 0))} not modelled`);
    if (flags & AMDGPU_GEM_CREATE_ENCRYPTED)
      return kerr("EINVAL", "Cannot allocate secure buffer since TMZ is disabled");
    if (flags & AMDGPU_GEM_CREATE_DISCARDABLE)
      throw new Error("gpu: AMDGPU_GEM_CREATE_DISCARDABLE is not modelled");
    if (!(domain & (AMDGPU_GEM_DOMAIN_GTT | AMDGPU_GEM_DOMAIN_VRAM)))
      throw new Error(`gpu: domain ${domainText(domain)} (SYSTEM placement) is not modelled`);
    let dom = domain;
    let fl = flags;
    let r: KResult<GpuBo>;
    for (;;) {
      r = this.gpu.boCreate(size, dom, fl);
      if (r.ok) break;
      if (r.errno === "ERESTARTSYS") return r;
      if (fl & AMDGPU_GEM_CREATE_CPU_ACCESS_REQUIRED) {
        fl &= ~AMDGPU_GEM_CREATE_CPU_ACCESS_REQUIRED;
        continue;
      }
      if (dom === AMDGPU_GEM_DOMAIN_VRAM) {
        dom |= AMDGPU_GEM_DOMAIN_GTT;
        continue;
      }
      return r;
    }
    const bo = r.value;
    // models drm_gem_handle_create(): the handle takes a reference, the allocation's is dropped
    const handle = this.#nextHandle++;
    this.handles.set(handle, bo);
    bo.handle_count++;
    bo.kref++;
    this.gpu.gemPut(bo);
    return kok(handle);
  }

  /**
   * DRM_IOCTL_PRIME_HANDLE_TO_FD: flags outside DRM_CLOEXEC | DRM_RDWR → -EINVAL; unknown handle
   * → -ENOENT; the dma-buf cached for this handle, else the BO's exported one, else a new export
   * (amdgpu refuses VM_ALWAYS_VALID BOs with -EPERM); the file's PRIME cache and the BO each keep
   * a reference; the new fd takes one. models drm_gem_prime_handle_to_fd()
   */
  exportFd(handle: number, flags: number = DRM_CLOEXEC | DRM_RDWR): KResult<number> {
    this.#live("PRIME_HANDLE_TO_FD");
    if (flags & ~(DRM_CLOEXEC | DRM_RDWR))
      return kerr("EINVAL", `PRIME_HANDLE_TO_FD: flags ${hex(BigInt(flags >>> 0))}`);
    const bo = this.handles.get(handle);
    if (!bo) return kerr("ENOENT", `PRIME_HANDLE_TO_FD: no handle ${handle}`);
    bo.kref++; // drm_gem_object_lookup
    try {
      let dmabuf = this.prime.get(handle);
      if (dmabuf) getDmaBuf(dmabuf);
      else {
        if (bo.import_attach) {
          // re-export of an imported BO: the original dma-buf
          dmabuf = bo.import_attach.dmabuf;
          getDmaBuf(dmabuf);
        } else if (bo.dma_buf) {
          dmabuf = bo.dma_buf;
          getDmaBuf(dmabuf);
        } else {
          // models export_and_register_object()
          if (bo.handle_count === 0) return kerr("ENOENT", `${bo.describe()} has no handle`);
          const e = this.gpu.gemPrimeExport(bo, flags);
          if (!e.ok) return e;
          dmabuf = e.value;
          bo.dma_buf = dmabuf;
          getDmaBuf(dmabuf);
        }
        // models drm_prime_add_buf_handle()
        getDmaBuf(dmabuf);
        this.prime.set(handle, dmabuf);
      }
      const fd = dmaBufFd(this.proc, dmabuf, flags);
      if (!fd.ok) {
        dmaBufPut(dmabuf);
        return fd;
      }
      return fd;
    } finally {
      this.gpu.gemPut(bo);
    }
  }

  /**
   * DRM_IOCTL_PRIME_FD_TO_HANDLE: fd not open → -EBADF, not a dma-buf → -EINVAL. The handle this
   * file already has for the dma-buf (its PRIME cache: an export or an earlier import through this
   * file) is returned as is; otherwise amdgpu imports it (`GpuDevice.gemPrimeImport`: the same BO
   * for a dma-buf this device exported, else a new SG BO attached dynamically, the exporter's
   * attach errno returned), `obj->dma_buf` takes a reference if unset, a new handle names the BO
   * and the PRIME cache keeps a reference. Nothing is mapped yet: the attachment is mapped when
   * the BO is first validated (a command submission or `copy`).
   * models drm_gem_prime_fd_to_handle() (drm_prime.c)
   */
  importFd(fd: number): KResult<number> {
    this.#live("PRIME_FD_TO_HANDLE");
    const got = dmaBufGet(this.proc, fd);
    if (!got.ok) return got;
    const dmabuf = got.value;
    try {
      for (const [h, d] of this.prime) if (d === dmabuf) return kok(h); // drm_prime_lookup_buf_handle
      const imp = this.gpu.gemPrimeImport(dmabuf);
      if (!imp.ok) return imp;
      const bo = imp.value;
      if (bo.dma_buf) {
        if (bo.dma_buf !== dmabuf)
          this.gpu.core.warn(
            `WARN_ON(obj->dma_buf != dma_buf): ${bo.describe()} is already exported as ${bo.dma_buf.describe()}`,
          );
      } else {
        bo.dma_buf = dmabuf;
        getDmaBuf(dmabuf);
      }
      // models drm_gem_handle_create_tail() (the first handle takes a GEM reference), then the
      // import's reference is dropped
      const handle = this.#nextHandle++;
      this.handles.set(handle, bo);
      if (bo.handle_count++ === 0) bo.kref++;
      this.gpu.gemPut(bo);
      // models drm_prime_add_buf_handle()
      getDmaBuf(dmabuf);
      this.prime.set(handle, dmabuf);
      this.gpu.traceImportHandle(this, handle, bo, dmabuf);
      return kok(handle);
    } finally {
      dmaBufPut(dmabuf);
    }
  }

  /**
   * An AMDGPU_CS whose IB is one SDMA COPY_LINEAR of `length` bytes from `srcHandle` at
   * `srcOffset` to `dstHandle` at `dstOffset`: unknown handle → -ENOENT; a range outside a BO →
   * -EINVAL (model: the kernel does not look inside the IB, the GPU would VM-fault); then every
   * BO of the submission is reserved and validated as the CS does (an imported BO is bound: its
   * attachment mapped, again after a move_notify unbound it; the exporter's map errno comes back)
   * and the copy engine moves the bytes (see `GpuDevice.sdmaCopy`).
   * models amdgpu_cs_ioctl() with an SDMA copy (amdgpu_cs_parser_bos + the engine)
   */
  copy(
    srcHandle: number,
    srcOffset: bigint,
    dstHandle: number,
    dstOffset: bigint,
    length: bigint,
  ): KResult<GpuCopyResult> {
    this.#live("AMDGPU_CS (SDMA copy)");
    const src = this.handles.get(srcHandle);
    if (!src) return kerr("ENOENT", `AMDGPU_CS: no handle ${srcHandle}`);
    const dst = this.handles.get(dstHandle);
    if (!dst) return kerr("ENOENT", `AMDGPU_CS: no handle ${dstHandle}`);
    return this.gpu.sdmaCopy(src, srcOffset, dst, dstOffset, length);
  }

  /** DRM_IOCTL_GEM_CLOSE: unknown handle → -EINVAL. models drm_gem_handle_delete() */
  closeHandle(handle: number): KResult {
    this.#live("GEM_CLOSE");
    const bo = this.handles.get(handle);
    if (!bo) return kerr("EINVAL", `GEM_CLOSE: no handle ${handle}`);
    this.#releaseHandle(handle, bo);
    return kok();
  }

  /**
   * The handle's PRIME cache entry goes (dma_buf_put), then the handle: the last one drops the
   * BO's reference on its exported dma-buf (`obj->dma_buf = NULL`) and the handle's BO reference.
   * models drm_gem_object_release_handle()
   */
  #releaseHandle(handle: number, bo: GpuBo): void {
    this.handles.delete(handle);
    const d = this.prime.get(handle);
    if (d) {
      this.prime.delete(handle);
      dmaBufPut(d);
    }
    // models drm_gem_object_handle_put_unlocked()
    if (--bo.handle_count === 0) {
      const exported = bo.dma_buf;
      bo.dma_buf = null;
      if (exported) dmaBufPut(exported);
      this.gpu.gemPut(bo);
    }
  }

  /** close(fd) of the device file. */
  close(): KResult {
    if (this.#released) return kok();
    return sysClose(this.proc, this.fd);
  }

  /** @internal the file's last reference went: every handle is released. models drm_gem_release() */
  release(): void {
    if (this.#released) return;
    for (const [h, bo] of [...this.handles]) this.#releaseHandle(h, bo);
    this.#released = true;
    this.gpu.fileGone(this);
  }

  /** A CPU store through a mapping of the BO (mmap of the render node). */
  cpuWrite(handle: number, offset: bigint, data: Uint8Array): void {
    this.#live("CPU write");
    const bo = this.handles.get(handle);
    if (!bo) throw new Error(`no handle ${handle}`);
    this.gpu.cpuWrite(bo, offset, data);
  }

  /** A CPU load through a mapping of the BO. */
  cpuRead(handle: number, offset: bigint, length: number): Uint8Array {
    this.#live("CPU read");
    const bo = this.handles.get(handle);
    if (!bo) throw new Error(`no handle ${handle}`);
    return this.gpu.cpuRead(bo, offset, length);
  }

  /**
   * DRM_IOCTL_AMDGPU_CS with these BOs in its list: each is reserved and validated into its
   * preferred domains (allowed domains if it is shared with attachments, or when the preferred
   * ones fail with -ENOMEM); pinned BOs stay. models amdgpu_cs_bo_validate()
   */
  submit(handles: readonly number[]): KResult {
    this.#live("AMDGPU_CS");
    const bos: GpuBo[] = [];
    for (const h of handles) {
      const bo = this.handles.get(h);
      if (!bo) return kerr("ENOENT", `AMDGPU_CS: no handle ${h}`);
      bos.push(bo);
    }
    for (const bo of bos) {
      const r = this.gpu.csValidate(bo);
      if (!r.ok) return r;
    }
    return kok();
  }
}

// ── the device ───────────────────────────────────────────────────────────────────────────────

export interface GpuOptions {
  readonly name?: string | undefined;
  /** Index of the VRAM aperture BAR; default the largest memory BAR. */
  readonly vramBar?: number | undefined;
  /** VRAM bytes; default the BAR size. Must fit the BAR (only CPU-visible VRAM is modelled). */
  readonly vramSize?: bigint | undefined;
  /** GTT manager size; default max(3 GiB, half of system RAM) as amdgpu_ttm_init() picks it. */
  readonly gttSize?: bigint | undefined;
  /** Override the per-kernel behaviour (default: from the dma-buf core's profile). */
  readonly profile?: AmdgpuProfile | undefined;
}

const devicesPerSystem = new WeakMap<System, number>();

/** What a table handed to an importer is made of. */
interface Handed {
  readonly bo: GpuBo;
  readonly kind: "pages" | "vram";
}

/** One amdgpu device (`struct amdgpu_device` with its TTM device and VRAM/GTT managers). */
export class GpuDevice implements LeakSource {
  readonly sys: System;
  readonly core: DmaBufCore;
  readonly fn: PciFunction;
  readonly name: string;
  /** `/dev/dri/renderD<128 + n>`. */
  readonly devicePath: string;
  readonly profile: AmdgpuProfile;
  /** The amdgpu module (the dma-bufs' owner). */
  readonly module = new Module("amdgpu");
  /** `adev->gmc.aper_base`: CPU physical start of the VRAM BAR. */
  readonly aper_base: bigint;
  /** `adev->gmc.real_vram_size` (= visible_vram_size here). */
  readonly vram_size: bigint;
  readonly gtt_size: bigint;
  /** Every BO not yet freed. */
  readonly bos = new Set<GpuBo>();
  /** The VRAM manager's LRU (head = least recently used); pinned BOs are not on it. */
  readonly lru: GpuBo[] = [];
  /** Tables map_dma_buf handed out and unmap_dma_buf has not taken back. */
  readonly outstanding = new Map<SgTable, Handed>();
  /** dev_err / DRM_DEBUG lines. */
  readonly log: string[] = [];
  readonly #files = new Set<GpuFile>();
  readonly #vramUsed: Uint8Array;
  #gttUsed = 0n;
  readonly #fops: FileOperations;

  constructor(sys: System, core: DmaBufCore, bdf: string, opts: GpuOptions = {}) {
    const fn = sys.machine.byBdf(bdf);
    if (!fn) throw new Error(`gpu: no function ${bdf}`);
    const bar = memoryBar(fn, opts.vramBar);
    if (!bar) throw new Error(`gpu ${bdf}: no VRAM BAR`);
    const vramSize = opts.vramSize ?? bar.size;
    if (vramSize > bar.size)
      throw new Error(
        `gpu ${bdf}: VRAM ${hex(vramSize)} larger than the BAR ${hex(bar.size)}: CPU-invisible VRAM is not modelled`,
      );
    if (vramSize % PAGE_SIZE_N !== 0n || vramSize === 0n)
      throw new Error(`gpu ${bdf}: VRAM size must be a non-zero multiple of PAGE_SIZE`);
    this.sys = sys;
    this.core = core;
    this.fn = fn;
    this.profile = opts.profile ?? AMDGPU_PROFILES[core.profile.id];
    const minor = devicesPerSystem.get(sys) ?? 0;
    devicesPerSystem.set(sys, minor + 1);
    this.name = opts.name ?? `amdgpu ${fn.name}`;
    this.devicePath = `/dev/dri/renderD${128 + minor}`;
    this.aper_base = bar.start;
    this.vram_size = vramSize;
    const ram = sys.memory.regions
      .filter((r) => r.kind === "ram")
      .reduce((t, r) => t + (r.end - r.start), 0n);
    this.gtt_size = opts.gttSize ?? (ram / 2n > 3n * GiB ? ram / 2n : 3n * GiB);
    this.#vramUsed = new Uint8Array(Number(vramSize / PAGE_SIZE_N));
    this.#fops = { name: "amdgpu_driver_kms_fops", release: (f) => this.#fileRelease(f) };
  }

  #emit(ev: string, msg: string, data?: Readonly<Record<string, unknown>>): void {
    this.sys.trace.emit(ev, msg, data);
  }

  /** VRAM bytes in use. */
  get vramUsed(): bigint {
    return BigInt(this.#vramUsed.reduce((n, u) => n + u, 0)) * PAGE_SIZE_N;
  }

  get gttUsed(): bigint {
    return this.#gttUsed;
  }

  // ── files ──────────────────────────────────────────────────────────────────────────────────

  /** open(2) of the render node into `proc`'s fd table. models drm_open() + amdgpu_driver_open_kms() */
  open(proc: Process, flags: number = O_RDWR | O_CLOEXEC): KResult<GpuFile> {
    const fd = proc.getUnusedFd();
    if (!fd.ok) return fd;
    const file = new KFile({ name: this.devicePath, fops: this.#fops, flags });
    const f = new GpuFile(this, proc, fd.value, file);
    proc.install(fd.value, file, flags);
    this.#files.add(f);
    this.#emit("gpu:open", `${this.name}: ${proc.name} opened ${this.devicePath}`, {
      device: this.fn.name,
      pid: proc.pid,
      fd: fd.value,
    });
    return kok(f);
  }

  #fileRelease(file: KFile): void {
    const f = [...this.#files].find((x) => x.file === file);
    f?.release();
  }

  /** @internal */
  fileGone(f: GpuFile): void {
    this.#files.delete(f);
    this.#emit("gpu:close", `${this.name}: ${this.devicePath} of ${f.proc.name} released`, {
      device: this.fn.name,
      pid: f.proc.pid,
    });
  }

  // ── BO lifetime ────────────────────────────────────────────────────────────────────────────

  /**
   * A new BO placed by validation into `domain` (its resv held meanwhile, as
   * ttm_bo_init_reserved does): size page-aligned; size not below the manager's size of the
   * first of GTT, VRAM in the domain → -ENOMEM. models amdgpu_bo_create()
   */
  boCreate(size: bigint, domain: number, flags: number): KResult<GpuBo> {
    const sz = alignUp(size, PAGE_SIZE_N);
    if (sz === 0n) return kerr("EINVAL", "GEM_CREATE: size 0 (model: refused)");
    // models amdgpu_bo_validate_size()
    const man = domain & AMDGPU_GEM_DOMAIN_GTT ? this.gtt_size : this.vram_size;
    if (!(sz < man)) {
      this.log.push(`BO size ${sz} > total memory in domain: ${man}`);
      return kerr("ENOMEM", `BO size ${sz} > total memory in ${domainText(domain)}: ${man}`);
    }
    const bo = new GpuBo(this, sz, domain, flags);
    this.bos.add(bo);
    bo.resv.lock("ttm_bo_init_reserved");
    const v = this.#validate(bo, domain, "create");
    if (v.ok && bo.flags & AMDGPU_GEM_CREATE_VRAM_CLEARED && bo.placement === "vram")
      for (const s of bo.segments())
        this.sys.memory.write(physAddr(s.phys), new Uint8Array(Number(s.len)));
    bo.resv.unlock("ttm_bo_init_reserved");
    if (!v.ok) {
      this.gemPut(bo);
      return v;
    }
    this.#emit(
      "gpu:bo_create",
      `${this.name}: ${bo.describe()} created in ${bo.placement} (domain ${domainText(domain)})`,
      { device: this.fn.name, bo: bo.id, size: bo.size, domain, placement: bo.placement },
    );
    return kok(bo);
  }

  /** @internal -1 on the GEM object; the last reference frees it. models drm_gem_object_put() */
  gemPut(bo: GpuBo): void {
    if (bo.kref <= 0) throw new KernelBug(`drm_gem_object_put() on freed ${bo.describe()}`);
    if (--bo.kref > 0) return;
    this.#boFree(bo);
  }

  /** The backing store goes back to its manager. models amdgpu_bo_destroy() via ttm_bo_release() */
  #boFree(bo: GpuBo): void {
    if (bo.pin_count > 0)
      this.core.warn(`WARN_ON(bo->pin_count): ${bo.describe()} freed while pinned ${bo.pin_count}`);
    const from = bo.placement;
    this.#lruDel(bo);
    if (bo.importOf) this.#importDestroy(bo);
    else this.#releaseBacking(bo);
    bo.placement = null;
    bo.freed = true;
    this.bos.delete(bo);
    // an imported BO's resv is the dma-buf's: it lives on with the buffer
    if (!bo.importOf && !bo.resv.held) bo.resv.fini();
    this.#emit("gpu:bo_free", `${this.name}: bo#${bo.id} freed (was in ${from ?? "nothing"})`, {
      device: this.fn.name,
      bo: bo.id,
    });
  }

  #releaseBacking(bo: GpuBo): void {
    if (bo.placement === "vram") {
      for (const r of bo.vram) this.#vramFree(r);
      bo.vram = [];
    } else if (bo.placement === "gtt") {
      this.sys.freePages(bo.gttPages);
      this.#gttUsed -= bo.size;
      bo.gttPages = [];
    }
  }

  // ── VRAM manager ───────────────────────────────────────────────────────────────────────────

  /**
   * `pages` pages of VRAM: one contiguous run if there is one (first fit, from the top when
   * `topdown`), else (unless `contiguous`) free pages gathered in address order; null: no space.
   * models amdgpu_vram_mgr_new() (drm_buddy's placement is not modelled)
   */
  #vramAlloc(pages: number, topdown: boolean, contiguous: boolean): VramRun[] | null {
    const used = this.#vramUsed;
    const n = used.length;
    let found = -1;
    if (topdown) {
      let run = 0;
      for (let i = n - 1; i >= 0; i--) {
        run = used[i] ? 0 : run + 1;
        if (run === pages) {
          found = i;
          break;
        }
      }
    } else {
      let run = 0;
      for (let i = 0; i < n; i++) {
        run = used[i] ? 0 : run + 1;
        if (run === pages) {
          found = i - pages + 1;
          break;
        }
      }
    }
    if (found >= 0) {
      used.fill(1, found, found + pages);
      return [{ offset: BigInt(found) * PAGE_SIZE_N, size: BigInt(pages) * PAGE_SIZE_N }];
    }
    if (contiguous) return null;
    const free: number[] = [];
    for (let i = 0; i < n; i++) if (!used[i]) free.push(i);
    if (free.length < pages) return null;
    const take = topdown ? free.slice(free.length - pages) : free.slice(0, pages);
    const runs: VramRun[] = [];
    for (const i of take) {
      used[i] = 1;
      const off = BigInt(i) * PAGE_SIZE_N;
      const last = runs[runs.length - 1];
      if (last && last.offset + last.size === off)
        runs[runs.length - 1] = { offset: last.offset, size: last.size + PAGE_SIZE_N };
      else runs.push({ offset: off, size: PAGE_SIZE_N });
    }
    return runs;
  }

  #vramFree(r: VramRun): void {
    this.#vramUsed.fill(
      0,
      Number(r.offset / PAGE_SIZE_N),
      Number((r.offset + r.size) / PAGE_SIZE_N),
    );
  }

  #lruDel(bo: GpuBo): void {
    const i = this.lru.indexOf(bo);
    if (i >= 0) this.lru.splice(i, 1);
  }

  /** models ttm_bo_move_to_lru_tail(): VRAM BOs that are not pinned, most recent last. */
  #lruTail(bo: GpuBo): void {
    this.#lruDel(bo);
    if (bo.placement === "vram" && bo.pin_count === 0 && !bo.freed) this.lru.push(bo);
  }

  // ── TTM validation ─────────────────────────────────────────────────────────────────────────

  /** models amdgpu_bo_placement_from_domain(): VRAM first, then GTT. */
  #placementFromDomain(bo: GpuBo, domain: number): Place[] {
    const out: Place[] = [];
    if (domain & AMDGPU_GEM_DOMAIN_VRAM)
      out.push({
        mem: "vram",
        fallback: false,
        topdown: !(bo.flags & AMDGPU_GEM_CREATE_CPU_ACCESS_REQUIRED),
        contiguous: (bo.flags & AMDGPU_GEM_CREATE_VRAM_CONTIGUOUS) !== 0,
      });
    if (domain & AMDGPU_GEM_DOMAIN_GTT)
      out.push({
        mem: "gtt",
        fallback:
          this.profile.gttFallback &&
          bo.placement !== null &&
          (domain & bo.preferred_domains & AMDGPU_GEM_DOMAIN_VRAM) !== 0,
        topdown: false,
        contiguous: false,
      });
    if (out.length === 0)
      throw new Error(`gpu: placement ${domainText(domain)} (SYSTEM) is not modelled`);
    return out;
  }

  /** models ttm_resource_compatible(): the current resource satisfies a place. */
  #compatible(bo: GpuBo, places: readonly Place[], evicting: boolean): boolean {
    return places.some(
      (p) =>
        p.mem === bo.placement && (evicting || !p.fallback) && (!p.contiguous || bo.vramContiguous),
    );
  }

  /** A resource at `place` without evicting anything, or null (-ENOSPC). */
  #allocAt(bo: GpuBo, place: Place): Resource | null {
    if (place.mem === "vram") {
      const runs = this.#vramAlloc(Number(bo.size / PAGE_SIZE_N), place.topdown, place.contiguous);
      return runs ? { mem: "vram", runs, contiguous: place.contiguous } : null;
    }
    if (this.#gttUsed + bo.size > this.gtt_size) return null;
    this.#gttUsed += bo.size;
    return { mem: "gtt", pages: this.sys.allocPages(bo.size) };
  }

  #freeResource(res: Resource, size: bigint): void {
    if (res.mem === "vram") for (const r of res.runs) this.#vramFree(r);
    else {
      this.sys.freePages(res.pages);
      this.#gttUsed -= size;
    }
  }

  /**
   * Space at `place`, evicting VRAM LRU BOs (never `bo` itself, nor a BO whose resv is held)
   * until it fits; nothing left to evict → -EBUSY. GTT is never evicted (SYSTEM not modelled).
   * models ttm_bo_mem_force_space() (6.1) / ttm_bo_evict_alloc() (mainline)
   */
  #forceSpace(bo: GpuBo, place: Place, why: string): KResult<Resource> {
    for (;;) {
      const res = this.#allocAt(bo, place);
      if (res) return kok(res);
      if (place.mem !== "vram")
        return kerr("EBUSY", `GTT full (${hex(this.#gttUsed)} of ${hex(this.gtt_size)})`);
      const v = this.#evictOne(bo, `make room for bo#${bo.id} (${why})`);
      if (!v) return kerr("EBUSY", `no VRAM BO can be evicted for bo#${bo.id}`);
      if (!v.ok) return v;
    }
  }

  /**
   * Place `bo` (resv held) somewhere in `domain`. Pass 1: a compatible current placement stays;
   * else allocate without eviction (FALLBACK places skipped). Pass 2: compatible counting FALLBACK
   * places; else allocate evicting. A pinned BO that has to move → -EINVAL (6.1: WARN from
   * amdgpu_bo_move). No space → -ENOMEM. models ttm_bo_validate()
   */
  #validate(bo: GpuBo, domain: number, why: string): KResult {
    bo.resv.assertHeld("ttm_bo_validate");
    if (bo.importOf) return this.#importBind(bo, domain, why);
    const places = this.#placementFromDomain(bo, domain);
    for (const evicting of [false, true]) {
      if (bo.placement !== null && this.#compatible(bo, places, evicting)) return kok();
      if (bo.pin_count > 0) {
        if (this.profile.movePinnedWarns)
          this.core.warnOnce(
            "amdgpu_bo_move:pin_count",
            `WARN_ON_ONCE(abo->tbo.pin_count > 0) in amdgpu_bo_move: ${bo.describe()} to ${domainText(domain)}`,
          );
        return kerr("EINVAL", `${bo.describe()} is pinned and would have to move (${why})`);
      }
      for (const place of places) {
        if (!evicting && place.fallback) continue;
        let res: Resource | null;
        if (evicting) {
          const f = this.#forceSpace(bo, place, why);
          if (!f.ok) {
            if (f.errno === "EBUSY") continue;
            return f;
          }
          res = f.value;
        } else res = this.#allocAt(bo, place);
        if (!res) continue;
        return this.#move(bo, res, false, why);
      }
    }
    return kerr(
      "ENOMEM",
      `no space for ${bo.describe()} in ${domainText(domain)} (${why}): VRAM ${hex(this.vramUsed)} of ${hex(this.vram_size)} used`,
    );
  }

  /**
   * Moves `bo` to `res`: amdgpu_bo_move_notify first (an exported, non-imported BO leaving a
   * non-SYSTEM placement: dma_buf_move_notify, resv held), then the bytes are copied (the SDMA
   * blit), the old store freed, the LRU updated; a move into VRAM clears CPU_ACCESS_REQUIRED.
   * models ttm_bo_handle_move_mem() → amdgpu_bo_move()
   */
  #move(bo: GpuBo, res: Resource, evict: boolean, why: string): KResult {
    const from = bo.placement;
    if (from === null) {
      // the first placement (ttm_bo_move_null): nothing to notify, nothing to copy
      this.#assign(bo, res);
      this.#lruTail(bo);
      return kok();
    }
    if (bo.pin_count > 0) {
      this.#freeResource(res, bo.size);
      if (this.profile.movePinnedWarns)
        this.core.warnOnce(
          "amdgpu_bo_move:pin_count",
          `WARN_ON_ONCE(abo->tbo.pin_count > 0) in amdgpu_bo_move: ${bo.describe()}`,
        );
      return kerr("EINVAL", `can't move a pinned BO: ${bo.describe()}`);
    }
    this.#moveNotify(bo, evict, res.mem, why);
    const old = bo.segments();
    const data = new Uint8Array(Number(bo.size));
    let at = 0;
    for (const s of old) {
      data.set(this.sys.memory.read(physAddr(s.phys), Number(s.len)), at);
      at += Number(s.len);
    }
    this.#releaseBacking(bo);
    this.#assign(bo, res);
    at = 0;
    for (const s of bo.segments()) {
      this.sys.memory.write(physAddr(s.phys), data.subarray(at, at + Number(s.len)));
      at += Number(s.len);
    }
    if (res.mem === "vram" && from !== "vram") bo.flags &= ~AMDGPU_GEM_CREATE_CPU_ACCESS_REQUIRED;
    bo.moves++;
    if (evict) bo.evictions++;
    this.#lruTail(bo);
    this.#emit(
      "gpu:migrate",
      `${this.name}: bo#${bo.id} ${from} -> ${res.mem} (${evict ? "evicted: " : ""}${why})`,
      { device: this.fn.name, bo: bo.id, from, to: res.mem, why, evict },
    );
    return kok();
  }

  #assign(bo: GpuBo, res: Resource): void {
    bo.placement = res.mem;
    if (res.mem === "vram") {
      bo.vram = res.runs;
      bo.vramContiguous = res.contiguous;
      bo.gttPages = [];
    } else {
      bo.gttPages = res.pages;
      bo.vram = [];
      bo.vramContiguous = false;
    }
  }

  /** models amdgpu_bo_move_notify() (before the move): the dma-buf part. */
  #moveNotify(bo: GpuBo, evict: boolean, to: BoPlacement, why: string): void {
    const d = bo.dma_buf;
    if (!d) {
      // an export outlives the last GEM handle, but obj->dma_buf does not
      const orphan = this.#exportOf(bo);
      if (orphan)
        this.#emit(
          "gpu:move_notify",
          `${this.name}: bo#${bo.id} ${bo.placement} -> ${to}: obj->dma_buf is NULL (last GEM handle closed), ${orphan.describe()} importers are NOT notified`,
          {
            device: this.fn.name,
            bo: bo.id,
            notified: false,
            attachments: orphan.attachments.length,
          },
        );
      return;
    }
    this.#emit(
      "gpu:move_notify",
      `${this.name}: bo#${bo.id} ${bo.placement} -> ${to} (${evict ? "eviction" : why}): dma_buf_move_notify(${d.describe()})`,
      { device: this.fn.name, bo: bo.id, notified: true, attachments: d.attachments.length },
    );
    dmaBufMoveNotify(d);
  }

  /** The live dma-buf exported from `bo` (whether or not `obj->dma_buf` still points at it). */
  #exportOf(bo: GpuBo): DmaBuf | null {
    for (const d of this.core.buffers) if (d.priv === bo && d.state === "live") return d;
    return null;
  }

  /**
   * Evicts the VRAM LRU head that can be locked (skipping `except`), to GTT, with its resv held.
   * null: nothing evictable. models ttm_mem_evict_first() → ttm_bo_evict() with amdgpu_evict_flags()
   */
  #evictOne(except: GpuBo | null, why: string): KResult<GpuBo> | null {
    const victim = this.lru.find((b) => b !== except && !b.resv.held);
    if (!victim) return null;
    victim.resv.lock("ttm_bo_evict");
    try {
      // amdgpu_evict_flags(): VRAM → GTT | CPU (CPU never needed: GTT is not modelled as full)
      const res = this.#allocAt(victim, {
        mem: "gtt",
        fallback: false,
        topdown: false,
        contiguous: false,
      });
      if (!res) {
        this.log.push(`Failed to find memory space for buffer bo#${victim.id} eviction`);
        return kerr("ENOMEM", `GTT full: cannot evict bo#${victim.id}`);
      }
      this.#emit("gpu:evict", `${this.name}: evicting bo#${victim.id} from VRAM (${why})`, {
        device: this.fn.name,
        bo: victim.id,
        why,
        exported: victim.dma_buf !== null,
      });
      const m = this.#move(victim, res, true, why);
      return m.ok ? kok(victim) : m;
    } finally {
      victim.resv.unlock("ttm_bo_evict");
    }
  }

  /**
   * Memory pressure: evict the least recently used VRAM BO that is not pinned. Nothing
   * evictable → the profile's errno (6.1 -EBUSY, mainline -ENOENT).
   * models ttm_mem_evict_first() (6.1) / ttm_bo_evict_first() (mainline) on the VRAM manager
   */
  evictFirst(): KResult<GpuBo> {
    const r = this.#evictOne(null, "memory pressure");
    if (r) return r;
    return kerr(
      this.profile.evictFirstNone,
      `nothing evictable in VRAM (${this.lru.length} BO(s) on the LRU, ${[...this.bos].filter((b) => b.pin_count > 0).length} pinned)`,
    );
  }

  /**
   * Evict every VRAM BO that can be (pinned ones stay); the number evicted.
   * models amdgpu_ttm_evict_resources(adev, TTM_PL_VRAM) (debugfs amdgpu_evict_vram)
   */
  evict(): KResult<number> {
    let n = 0;
    for (;;) {
      const r = this.#evictOne(null, "evict all VRAM");
      if (!r) return kok(n);
      if (!r.ok) return r;
      n++;
    }
  }

  // ── pinning ────────────────────────────────────────────────────────────────────────────────

  /**
   * Pin (resv held): restricted to the preferred domains when they intersect; already pinned →
   * -EINVAL unless it sits in `domain`, else +1; otherwise CPU_ACCESS_REQUIRED (unless
   * NO_CPU_ACCESS), validate into `domain` (its errno), pin (off the LRU). models amdgpu_bo_pin()
   */
  boPin(bo: GpuBo, domainIn: number, why = "pin"): KResult {
    bo.resv.assertHeld("amdgpu_bo_pin");
    let domain = domainIn;
    if (bo.preferred_domains & domain) domain = bo.preferred_domains & domain;
    // a shared (imported) BO cannot be migrated to VRAM: GTT or nothing
    if (bo.importOf) {
      if (!(domain & AMDGPU_GEM_DOMAIN_GTT))
        return kerr("EINVAL", `${bo.describe()} is imported: it can only be pinned in GTT`);
      domain = AMDGPU_GEM_DOMAIN_GTT;
    }
    if (bo.pin_count > 0) {
      const cur = bo.placement === "vram" ? AMDGPU_GEM_DOMAIN_VRAM : AMDGPU_GEM_DOMAIN_GTT;
      if (!(domain & cur))
        return kerr(
          "EINVAL",
          `${bo.describe()} is pinned in ${bo.placement}, ${domainText(domain)} requested`,
        );
      bo.pin_count++;
      this.#tracePin(bo, domain, why);
      return kok();
    }
    // the exporter is asked to pin first; amdgpu ignores what dma_buf_pin returns (and does not
    // unpin when the validation below fails)
    if (bo.import_attach) dmaBufPin(bo.import_attach);
    if (!(bo.flags & AMDGPU_GEM_CREATE_NO_CPU_ACCESS))
      bo.flags |= AMDGPU_GEM_CREATE_CPU_ACCESS_REQUIRED;
    const v = this.#validate(bo, domain, why);
    if (!v.ok) {
      this.log.push(`bo#${bo.id} pin failed`);
      return v;
    }
    bo.pin_count++;
    this.#lruDel(bo);
    this.#tracePin(bo, domain, why);
    return kok();
  }

  #tracePin(bo: GpuBo, domain: number, why: string): void {
    this.#emit(
      "gpu:pin",
      `${this.name}: bo#${bo.id} pinned in ${bo.placement} (asked ${domainText(domain)}, ${why}), pin_count ${bo.pin_count}`,
      {
        device: this.fn.name,
        bo: bo.id,
        placement: bo.placement,
        domain,
        pin_count: bo.pin_count,
        why,
      },
    );
  }

  /** models amdgpu_bo_unpin(): the last unpin puts it back on the LRU. */
  boUnpin(bo: GpuBo, why = "unpin"): void {
    bo.resv.assertHeld("amdgpu_bo_unpin");
    if (bo.pin_count === 0) {
      this.core.warnOnce("ttm_bo_unpin", `WARN_ON_ONCE(!bo->pin_count): ${bo.describe()}`);
      return;
    }
    bo.pin_count--;
    if (bo.pin_count === 0 && bo.import_attach) dmaBufUnpin(bo.import_attach);
    if (bo.pin_count === 0) this.#lruTail(bo);
    this.#emit(
      "gpu:unpin",
      `${this.name}: bo#${bo.id} unpinned (${why}), pin_count ${bo.pin_count}`,
      { device: this.fn.name, bo: bo.id, pin_count: bo.pin_count },
    );
  }

  /** A kernel pin the way display code does it: reserve, amdgpu_bo_pin, unreserve. */
  pinKernel(bo: GpuBo, domain: number): KResult {
    bo.resv.lock("amdgpu_bo_reserve");
    try {
      return this.boPin(bo, domain, "kernel pin");
    } finally {
      bo.resv.unlock("amdgpu_bo_unreserve");
    }
  }

  unpinKernel(bo: GpuBo): void {
    bo.resv.lock("amdgpu_bo_reserve");
    try {
      this.boUnpin(bo, "kernel unpin");
    } finally {
      bo.resv.unlock("amdgpu_bo_unreserve");
    }
  }

  /** @internal models amdgpu_cs_bo_validate() for one BO (reserved around it). */
  csValidate(bo: GpuBo): KResult {
    bo.resv.lock("amdgpu_cs_parser_bos");
    try {
      return this.#csValidateLocked(bo);
    } finally {
      bo.resv.unlock("amdgpu_cs_parser_fini");
    }
  }

  // models amdgpu_cs_bo_validate() with the BO reserved by the caller
  #csValidateLocked(bo: GpuBo): KResult {
    if (bo.pin_count > 0) return kok();
    const shared = bo.dma_buf;
    let domain =
      shared && shared.attachments.length > 0 ? bo.allowed_domains : bo.preferred_domains;
    for (;;) {
      const r = this.#validate(bo, domain, "command submission");
      if (r.ok || r.errno !== "ENOMEM" || domain === bo.allowed_domains) {
        if (r.ok) this.#lruTail(bo);
        return r;
      }
      domain = bo.allowed_domains;
    }
  }

  // ── CPU access ─────────────────────────────────────────────────────────────────────────────

  /** A CPU store into the BO where it lives now (VRAM through the BAR, GTT through its pages). */
  cpuWrite(bo: GpuBo, offset: bigint, data: Uint8Array): void {
    this.#cpuRange(bo, offset, BigInt(data.length), (phys, at, n) =>
      this.sys.memory.write(phys, data.subarray(at, at + n)),
    );
  }

  /** A CPU load from the BO where it lives now. */
  cpuRead(bo: GpuBo, offset: bigint, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.#cpuRange(bo, offset, BigInt(length), (phys, at, n) =>
      out.set(this.sys.memory.read(phys, n), at),
    );
    return out;
  }

  #cpuRange(
    bo: GpuBo,
    offset: bigint,
    len: bigint,
    fn: (phys: PhysAddr, at: number, n: number) => void,
  ): void {
    if (bo.freed) throw new Error(`CPU access to freed ${bo.describe()}`);
    if (offset < 0n || offset + len > bo.size)
      throw new RangeError(
        `[${hex(offset)}, ${hex(offset + len)}) outside ${bo.describe()} (SIGBUS)`,
      );
    let done = 0n;
    while (done < len) {
      const off = offset + done;
      const inPage = PAGE_SIZE_N - (off % PAGE_SIZE_N);
      // biome-ignore lint/complexity/useMathMinMax: bigints
      const n = inPage < len - done ? inPage : len - done;
      fn(bo.phys(off), Number(done), Number(n));
      done += n;
    }
  }

  // ── PRIME export and dma_buf_ops ───────────────────────────────────────────────────────────

  /** The BO a dma-buf exported by this device stands for, or null. */
  boOf(dmabuf: DmaBuf): GpuBo | null {
    const p = dmabuf.priv;
    return p instanceof GpuBo && p.gpu === this ? p : null;
  }

  /**
   * VM_ALWAYS_VALID BOs → -EPERM; else export with the GEM object's resv and size, the dma-buf
   * holding a BO reference (released by the dma-buf's release). exp_name "drm" (the PRIME
   * helper's KBUILD_MODNAME); mainline's ttm_bo_setup_export populates GTT pages, which the model
   * always has. models amdgpu_gem_prime_export() → drm_gem_prime_export() → drm_gem_dmabuf_export()
   */
  gemPrimeExport(bo: GpuBo, flags: number): KResult<DmaBuf> {
    if (bo.flags & AMDGPU_GEM_CREATE_VM_ALWAYS_VALID)
      return kerr("EPERM", `${bo.describe()} is VM_ALWAYS_VALID: cannot be exported`);
    const r = dmaBufExport(this.core, {
      exp_name: "drm",
      owner: this.module,
      ops: this.#ops(),
      size: bo.size,
      flags,
      resv: bo.resv,
      priv: bo,
    });
    if (!r.ok) return r;
    bo.kref++; // drm_gem_object_get() in drm_gem_dmabuf_export()
    this.#emit(
      "gpu:export",
      `${this.name}: bo#${bo.id} exported as ${r.value.describe()} (in ${bo.placement})`,
      { device: this.fn.name, bo: bo.id, ino: r.value.ino, placement: bo.placement },
    );
    return r;
  }

  #ops(): DbBufOpsTable {
    const ops: DbBufOpsTable = {
      attach: (d, a) => this.#attach(d, a),
      pin: (a) => this.#pin(a),
      unpin: (a) => this.#unpin(a),
      map_dma_buf: (a, dir) => this.#map(a, dir),
      unmap_dma_buf: (a, sgt, dir) => this.#unmap(a, sgt, dir),
      release: (d) => this.#release(d),
      begin_cpu_access: (d, dir) => this.#beginCpuAccess(d, dir),
      // drm_gem_dmabuf_mmap → the GEM mmap of the BO (the VMA itself is not modelled)
      mmap: () => kok(),
      vmap: (d) => this.#vmap(d),
      vunmap: (d) => this.#vunmap(d),
    };
    if (this.profile.detachOp) ops.detach = (_d, a) => this.#detach(a);
    return ops;
  }

  #bo(d: DmaBuf): GpuBo {
    const bo = this.boOf(d);
    if (!bo || bo.freed) throw new KernelBug(`${this.name}: ${d.describe()} has no live BO`);
    return bo;
  }

  /**
   * Clears peer2peer when the importer cannot reach the GPU over PCIe (`pci_p2pdma_distance(...,
   * false) < 0`; XGMI never applies here); mainline then takes the resv to mark the BO shared
   * for its VMs. Never fails. models amdgpu_dma_buf_attach()
   */
  #attach(d: DmaBuf, a: DmaBufAttachment): KResult {
    const bo = this.#bo(d);
    const asked = a.peer2peer;
    const dist = this.sys.p2pdma.distanceMany(this.fn, [a.dev.fn], false);
    if (dist < 0) a.peer2peer = false;
    if (this.profile.attachLocksResv) {
      bo.resv.lock("amdgpu_dma_buf_attach");
      bo.resv.unlock("amdgpu_dma_buf_attach");
    }
    this.#emit(
      "gpu:attach",
      `${this.name}: ${a.describe()}: pci_p2pdma_distance ${dist}, peer2peer ${asked ? (a.peer2peer ? "kept" : "cleared") : "off (not asked)"}`,
      { device: a.dev.fn.name, bo: bo.id, distance: dist, asked, peer2peer: a.peer2peer },
    );
    return kok();
  }

  // models amdgpu_dma_buf_detach() (6.1): the runtime-PM reference goes; nothing else
  #detach(a: DmaBufAttachment): void {
    this.#emit("gpu:detach", `${this.name}: ${a.describe()} detached`, {
      device: a.dev.fn.name,
    });
  }

  /**
   * 6.1: pin into GTT. Mainline: the allowed domains; drop VRAM if CONFIG_DMABUF_MOVE_NOTIFY is
   * off or any attachment cannot do P2P; VRAM left → CPU_ACCESS_REQUIRED; nothing left → WARN,
   * -EINVAL. models amdgpu_dma_buf_pin()
   */
  #pin(a: DmaBufAttachment): KResult {
    const d = a.dmabuf;
    const bo = this.#bo(d);
    d.resv.assertHeld("amdgpu_dma_buf_pin");
    if (this.profile.dmaBufPin === "gtt")
      return this.boPin(bo, AMDGPU_GEM_DOMAIN_GTT, `dma_buf_pin by ${a.dev.name}`);
    let domains = bo.allowed_domains;
    let why: string;
    if (!this.core.moveNotify) {
      domains &= ~AMDGPU_GEM_DOMAIN_VRAM;
      why = "CONFIG_DMABUF_MOVE_NOTIFY=n";
    } else {
      const blocking = d.attachments.filter((x) => !x.peer2peer);
      if (blocking.length > 0) domains &= ~AMDGPU_GEM_DOMAIN_VRAM;
      why =
        blocking.length > 0
          ? `attachment(s) without peer2peer: ${blocking.map((x) => x.dev.name).join(", ")}`
          : "every attachment can do P2P";
    }
    if (domains & AMDGPU_GEM_DOMAIN_VRAM) bo.flags |= AMDGPU_GEM_CREATE_CPU_ACCESS_REQUIRED;
    if (!domains) {
      const msg = `amdgpu_dma_buf_pin: no domain left for ${bo.describe()} (${why})`;
      this.core.warn(msg);
      return kerr("EINVAL", msg, { warn: true });
    }
    return this.boPin(bo, domains, `dma_buf_pin by ${a.dev.name}: ${why}`);
  }

  // models amdgpu_dma_buf_unpin()
  #unpin(a: DmaBufAttachment): void {
    this.boUnpin(this.#bo(a.dmabuf), `dma_buf_unpin by ${a.dev.name}`);
  }

  /**
   * Not pinned: validate into GTT, plus VRAM when the BO prefers VRAM and the attachment can do
   * P2P (then CPU_ACCESS_REQUIRED); this is where a BO migrates to system memory; its errno is
   * returned. Pinned: 6.1 -EBUSY unless in GTT; mainline keeps the placement. Then GTT: the pages
   * as a table (merged up to UINT_MAX per entry) mapped with dma_map_sgtable (failure → -EBUSY);
   * VRAM: one page-less entry per buddy block, each dma_map_resource'd (failure: unwind, -ENOMEM).
   * models amdgpu_dma_buf_map() (+ drm_prime_pages_to_sg, amdgpu_vram_mgr_alloc_sgt)
   */
  #map(a: DmaBufAttachment, dir: DmaDirection): KResult<SgTable> {
    const d = a.dmabuf;
    const bo = this.#bo(d);
    d.resv.assertHeld("amdgpu_dma_buf_map");
    if (bo.pin_count === 0) {
      let domains = AMDGPU_GEM_DOMAIN_GTT;
      if (bo.preferred_domains & AMDGPU_GEM_DOMAIN_VRAM && a.peer2peer) {
        bo.flags |= AMDGPU_GEM_CREATE_CPU_ACCESS_REQUIRED;
        domains |= AMDGPU_GEM_DOMAIN_VRAM;
      }
      const v = this.#validate(
        bo,
        domains,
        `map for ${a.dev.name}${a.peer2peer ? "" : " (no peer2peer)"}`,
      );
      if (!v.ok) return this.#traceMapFail(a, bo, v);
    } else if (this.profile.mapPinned === "gtt-or-ebusy" && bo.placement !== "gtt")
      return this.#traceMapFail(a, bo, kerr("EBUSY", `${bo.describe()} is pinned outside GTT`));
    let r: KResult<SgTable>;
    if (bo.placement === "gtt") {
      const t = sg_alloc_table_from_pages(bo.gttPages, 0, bo.size, {
        name: `${this.name} bo#${bo.id} GTT sgt for ${a.dev.name}`,
      });
      if (!t.ok) return this.#traceMapFail(a, bo, t);
      const m = this.sys.dma.mapSgtable(a.dev, t.value, dir, { skipCpuSync: true });
      if (!m.ok) {
        sg_free_table(t.value);
        return this.#traceMapFail(
          a,
          bo,
          kerr("EBUSY", `dma_map_sgtable for ${a.dev.name} failed: ${m.errno}`),
        );
      }
      r = t;
    } else if (bo.placement === "vram") r = this.#vramMgrAllocSgt(bo, a, dir);
    else return this.#traceMapFail(a, bo, kerr("EINVAL", `${bo.describe()} has no placement`));
    if (!r.ok) return this.#traceMapFail(a, bo, r);
    this.outstanding.set(r.value, { bo, kind: bo.placement === "vram" ? "vram" : "pages" });
    this.#traceMap(a, bo, r.value);
    return r;
  }

  /** models amdgpu_vram_mgr_alloc_sgt(): one page-less entry per block, dma_map_resource each. */
  #vramMgrAllocSgt(bo: GpuBo, a: DmaBufAttachment, dir: DmaDirection): KResult<SgTable> {
    const blocks = bo.vram.flatMap((r) => buddyBlocks(r));
    const t = sg_alloc_table(blocks.length, {
      name: `${this.name} bo#${bo.id} VRAM sgt for ${a.dev.name}`,
    });
    if (!t.ok) return t;
    const sgt = t.value;
    const ents = [...for_each_sgtable_sg(sgt)];
    for (const s of ents) sg_set_page(s, null, 0, 0);
    for (let i = 0; i < blocks.length; i++) {
      const b = blocks[i]!;
      const phys = physAddr(this.aper_base + b.offset);
      const dma = this.sys.dma.mapPhys(a.dev, phys, b.size, dir, {
        mmio: true,
        skipCpuSync: true,
      });
      if (this.sys.dma.mappingError(a.dev, dma)) {
        for (const e of ents) {
          if (!e.length) continue;
          this.sys.dma.unmapPhys(a.dev, e.dma_address, BigInt(e.length), dir, {
            mmio: true,
            skipCpuSync: true,
          });
        }
        sg_free_table(sgt);
        return kerr("ENOMEM", `dma_map_resource of ${hex(phys)} for ${a.dev.name} failed`);
      }
      const s = ents[i]!;
      sg_set_page(s, null, Number(b.size), 0);
      s.dma_address = dma;
      s.dma_length = Number(b.size);
    }
    return kok(sgt);
  }

  /**
   * Page-backed tables: dma_unmap_sgtable and free; page-less (VRAM) ones: dma_unmap_resource
   * per entry and free. Decided by the first entry's page, as the kernel does.
   * models amdgpu_dma_buf_unmap() (+ amdgpu_vram_mgr_free_sgt)
   */
  #unmap(a: DmaBufAttachment, sgt: SgTable, dir: DmaDirection): void {
    const h = this.outstanding.get(sgt);
    if (!h)
      throw new KernelBug(`${this.name}: unmap_dma_buf got ${sgt.name}, which it never handed out`);
    this.outstanding.delete(sgt);
    const pageBacked = sg_page(sgt.sgl!) !== null;
    this.#emit(
      "gpu:unmap",
      `${this.name}: bo#${h.bo.id} ${pageBacked ? "GTT" : "VRAM"} table of ${a.dev.name} unmapped`,
      { device: a.dev.fn.name, bo: h.bo.id, nents: sgt.nents },
    );
    if (pageBacked) {
      this.sys.dma.unmapSgtable(a.dev, sgt, dir);
      sg_free_table(sgt);
      return;
    }
    for (const s of for_each_sgtable_sg(sgt))
      this.sys.dma.unmapPhys(a.dev, dmaAddr(s.dma_address), BigInt(s.length), dir, {
        mmio: true,
        skipCpuSync: true,
      });
    sg_free_table(sgt);
  }

  #traceMapFail<T>(a: DmaBufAttachment, bo: GpuBo, r: KResult<T>): KResult<T> {
    if (!r.ok)
      this.#emit(
        "gpu:map",
        `${this.name}: map of bo#${bo.id} for ${a.dev.name} failed: -${r.errno}${r.reason ? ` (${r.reason})` : ""}`,
        { device: a.dev.fn.name, bo: bo.id, errno: r.errno },
      );
    return r;
  }

  /** Each DMA entry handed to `a` and what kind of address it is. */
  entries(a: DmaBufAttachment, sgt: SgTable): { dma: bigint; len: bigint; kind: DmaAddrKind }[] {
    return dmaSegments(this.sys, a.dev, sgt);
  }

  #traceMap(a: DmaBufAttachment, bo: GpuBo, sgt: SgTable): void {
    if (!this.sys.trace.enabled) return;
    const entries = this.entries(a, sgt);
    this.#emit(
      "gpu:map",
      `${this.name}: bo#${bo.id} mapped from ${bo.placement} for ${a.dev.name} (peer2peer ${a.peer2peer}): ${dmaSegsText(entries)}`,
      {
        device: a.dev.fn.name,
        bo: bo.id,
        placement: bo.placement,
        peer2peer: a.peer2peer,
        pageBacked: bo.placement === "gtt",
        entries,
      },
    );
  }

  /**
   * For reads (bidirectional / from-device) of a BO whose display-supported domains include GTT
   * (only CPU_GTT_USWC BOs: amdgpu_display_supported_domains), not pinned and allowed in GTT:
   * reserve and validate into GTT (its errno). Otherwise nothing. models amdgpu_dma_buf_begin_cpu_access()
   */
  #beginCpuAccess(d: DmaBuf, dir: DmaDirection): KResult {
    const bo = this.#bo(d);
    const reads = dir === "bidirectional" || dir === "from-device";
    const domain =
      AMDGPU_GEM_DOMAIN_VRAM |
      (bo.flags & AMDGPU_GEM_CREATE_CPU_GTT_USWC ? AMDGPU_GEM_DOMAIN_GTT : 0);
    if (!reads || !(domain & AMDGPU_GEM_DOMAIN_GTT)) return kok();
    bo.resv.lock("amdgpu_bo_reserve");
    try {
      if (bo.pin_count === 0 && bo.allowed_domains & AMDGPU_GEM_DOMAIN_GTT)
        return this.#validate(bo, AMDGPU_GEM_DOMAIN_GTT, "CPU read (begin_cpu_access)");
      return kok();
    } finally {
      bo.resv.unlock("amdgpu_bo_unreserve");
    }
  }

  /** Mainline pins in GTT | VRAM first; the map is the BAR (iomem) or the first GTT page. */
  #vmap(d: DmaBuf): KResult<IosysMap> {
    const bo = this.#bo(d);
    if (this.profile.vmapPins) {
      const p = this.boPin(bo, AMDGPU_GEM_DOMAIN_GTT | AMDGPU_GEM_DOMAIN_VRAM, "vmap");
      if (!p.ok) return p;
    }
    return kok({ isIomem: bo.placement === "vram", addr: bo.phys(0n) as bigint });
  }

  #vunmap(d: DmaBuf): void {
    if (this.profile.vmapPins) this.boUnpin(this.#bo(d), "vunmap");
  }

  /** The dma-buf's reference on the GEM object goes. models drm_gem_dmabuf_release() */
  #release(d: DmaBuf): void {
    const bo = this.#bo(d);
    this.#emit("gpu:release", `${this.name}: ${d.describe()} of bo#${bo.id} released`, {
      device: this.fn.name,
      bo: bo.id,
      ino: d.ino,
    });
    this.gemPut(bo);
  }

  // ── PRIME import: amdgpu as an importer ────────────────────────────────────────────────────

  /** `amdgpu_dma_buf_attach_ops`: one table for every import of this device. */
  readonly #importOps: DmaBufAttachOps = {
    allow_peer2peer: true,
    move_notify: (a) => this.#importMoveNotify(a),
  };
  #dmaDevice: DmaDevice | null = null;

  /**
   * The GPU's own DMA view: what importers' tables are mapped for and where the copy engine's
   * requests come from. Created on first use with the 44-bit mask gmc v10 (and most v9 parts)
   * set at probe (dma_set_mask_and_coherent(adev->dev, DMA_BIT_MASK(44))).
   */
  get dmaDev(): DmaDevice {
    if (!this.#dmaDevice) {
      this.#dmaDevice = this.sys.device(this.fn);
      dmaSetMaskAndCoherent(this.#dmaDevice, 44);
    }
    return this.#dmaDevice;
  }

  /**
   * A dma-buf this very device exported → its own BO with one reference more (no attachment: the
   * GPU uses its memory directly). Anything else → a new SG BO (`#dmaBufCreateObj`) attached with
   * dma_buf_dynamic_attach(allow_peer2peer = true, move_notify = amdgpu_dma_buf_move_notify): the
   * exporter's attach errno is returned and the BO dropped; the attachment keeps a reference on
   * the dma-buf. Nothing is mapped here. models amdgpu_gem_prime_import()
   */
  gemPrimeImport(dmabuf: DmaBuf): KResult<GpuBo> {
    const own = this.boOf(dmabuf);
    if (own) {
      own.kref++; // drm_gem_object_get(): the GEM object, not the dma-buf's file
      this.#emit(
        "gpu:import",
        `${this.name}: ${dmabuf.describe()} is its own bo#${own.id}: same GEM object, no attachment`,
        { device: this.fn.name, bo: own.id, ino: dmabuf.ino, self: true },
      );
      return kok(own);
    }
    const bo = this.#dmaBufCreateObj(dmabuf);
    const a = dmaBufDynamicAttach(dmabuf, this.dmaDev, this.#importOps, bo);
    if (!a.ok) {
      this.#emit(
        "gpu:import",
        `${this.name}: import of ${dmabuf.describe()} failed: the exporter's attach said -${a.errno}`,
        { device: this.fn.name, ino: dmabuf.ino, errno: a.errno },
      );
      this.gemPut(bo);
      return a;
    }
    getDmaBuf(dmabuf);
    bo.import_attach = a.value;
    this.#emit(
      "gpu:import",
      `${this.name}: ${dmabuf.describe()} imported as bo#${bo.id} (SG BO, GTT only), dynamic attachment, peer2peer ${a.value.peer2peer}`,
      { device: this.fn.name, bo: bo.id, ino: dmabuf.ino, peer2peer: a.value.peer2peer },
    );
    return kok(bo);
  }

  /**
   * An empty SG BO for `dmabuf`, made under the dma-buf's resv (which it shares): created in the
   * CPU domain (SYSTEM, no backing), then allowed and preferred domains set to GTT; CPU_GTT_USWC
   * is copied from an amdgpu exporter's BO. Not counted against the GTT manager (model).
   * models amdgpu_dma_buf_create_obj()
   */
  #dmaBufCreateObj(dmabuf: DmaBuf): GpuBo {
    dmabuf.resv.lock("amdgpu_dma_buf_create_obj");
    try {
      const other = dmabuf.priv instanceof GpuBo ? dmabuf.priv : null;
      const flags = other ? other.flags & AMDGPU_GEM_CREATE_CPU_GTT_USWC : 0;
      const size = alignUp(dmabuf.size, PAGE_SIZE_N);
      const bo = new GpuBo(this, size, AMDGPU_GEM_DOMAIN_GTT, flags, dmabuf);
      this.bos.add(bo);
      return bo;
    } finally {
      dmabuf.resv.unlock("amdgpu_dma_buf_create_obj");
    }
  }

  /** @internal the trace line of a PRIME fd-to-handle. */
  traceImportHandle(f: GpuFile, handle: number, bo: GpuBo, dmabuf: DmaBuf): void {
    this.#emit(
      "gpu:prime_import",
      `${this.name}: ${f.proc.name} fd-to-handle ${dmabuf.describe()} -> handle ${handle} (bo#${bo.id})`,
      { device: this.fn.name, pid: f.proc.pid, handle, bo: bo.id, ino: dmabuf.ino },
    );
  }

  /**
   * Validating an imported BO: GTT is its only domain (anything else → -EINVAL). Bound already →
   * nothing; else the attachment is mapped (the resv, shared with the dma-buf, is held) and the
   * table kept as `ttm->sg`: this is where the exporter decides (migrates, refuses with its errno).
   * models ttm_bo_validate() → amdgpu_ttm_backend_bind() for a TTM_TT_FLAG_EXTERNAL BO
   */
  #importBind(bo: GpuBo, domain: number, why: string): KResult {
    if (!(domain & AMDGPU_GEM_DOMAIN_GTT))
      return kerr("EINVAL", `${bo.describe()} is imported: ${domainText(domain)} is not allowed`);
    if (bo.ttmSg) return kok();
    const a = bo.import_attach;
    if (!a) throw new KernelBug(`${bo.describe()}: an imported BO without an attachment`);
    const m = dmaBufMapAttachment(a, "bidirectional");
    if (!m.ok) {
      this.#emit(
        "gpu:import_map",
        `${this.name}: binding bo#${bo.id} (${why}) failed: ${a.dmabuf.exp_name} map said -${m.errno}${m.reason ? ` (${m.reason})` : ""}`,
        { device: this.fn.name, bo: bo.id, errno: m.errno },
      );
      return m;
    }
    bo.ttmSg = m.value;
    bo.placement = "gtt";
    bo.importMaps++;
    if (this.sys.trace.enabled) {
      const entries = dmaSegments(this.sys, this.dmaDev, m.value);
      this.#emit(
        "gpu:import_map",
        `${this.name}: bo#${bo.id} bound (${why}): ${dmaSegsText(entries)}`,
        { device: this.fn.name, bo: bo.id, maps: bo.importMaps, entries },
      );
    }
    return kok();
  }

  // models amdgpu_ttm_backend_unbind() for an imported BO: the table goes back to the exporter
  #importUnbind(bo: GpuBo): void {
    const a = bo.import_attach;
    const sgt = bo.ttmSg;
    if (!a || !sgt) return;
    dmaBufUnmapAttachment(a, sgt, "bidirectional");
    bo.ttmSg = null;
    bo.placement = null;
  }

  /**
   * The exporter is about to move the buffer (resv held): an imported BO that is bound is
   * validated into no placement — unbound, its table handed back (the gutting of TTM: this
   * happens even if the BO is pinned) — and the VMs that map it are told to update their page
   * tables, so the next use binds (maps) again. Unbound (SYSTEM): nothing to do.
   * models amdgpu_dma_buf_move_notify()
   */
  #importMoveNotify(a: DmaBufAttachment): void {
    const bo = a.importer_priv as GpuBo;
    if (!bo.ttmSg) return;
    this.#importUnbind(bo);
    bo.vmInvalidations++;
    this.#emit(
      "gpu:import_invalidate",
      `${this.name}: move_notify on ${a.dmabuf.describe()}: bo#${bo.id} unbound, its VM mappings invalidated (re-mapped at the next use)`,
      { device: this.fn.name, bo: bo.id, invalidations: bo.vmInvalidations },
    );
  }

  /**
   * The end of an imported BO: still bound → unbound under the resv (TTM's teardown), then the
   * attachment detached and its dma-buf reference dropped.
   * models drm_prime_gem_destroy() from amdgpu_bo_destroy()
   */
  #importDestroy(bo: GpuBo): void {
    const a = bo.import_attach;
    if (!a) return;
    if (bo.ttmSg) {
      a.dmabuf.resv.lock("ttm_bo_release");
      try {
        this.#importUnbind(bo);
      } finally {
        a.dmabuf.resv.unlock("ttm_bo_release");
      }
    }
    bo.import_attach = null;
    dmaBufDetach(a.dmabuf, a);
    dmaBufPut(a.dmabuf);
  }

  // ── the copy engine ────────────────────────────────────────────────────────────────────────

  /**
   * One SDMA COPY_LINEAR as a submission: a freed BO or a range outside a BO → -EINVAL (model);
   * every BO reserved at once (as the CS's ww acquire context does, so none can evict another)
   * and validated as amdgpu_cs_bo_validate does (an imported BO bound: its attachment mapped;
   * the exporter's errno comes back), then the source read whole and the destination written.
   * The engine reaches its own VRAM directly (no PCIe), its GTT pages through its DMA mapping of
   * them (model: mapped for the copy and unmapped after; the kernel keeps the TTM pool mapping
   * for the BO's life) and an imported BO at the DMA addresses of the attachment's table, each
   * request routed by the fabric. A fault → -EIO (model: hardware would raise a VM fault or
   * hang, and amdgpu reset the ring); a write fault may leave part of the destination written.
   * models amdgpu_cs_ioctl() → amdgpu_cs_parser_bos() + the SDMA engine's copy
   */
  sdmaCopy(
    src: GpuBo,
    srcOffset: bigint,
    dst: GpuBo,
    dstOffset: bigint,
    length: bigint,
  ): KResult<GpuCopyResult> {
    for (const [bo, off] of [
      [src, srcOffset],
      [dst, dstOffset],
    ] as const) {
      if (bo.freed) return kerr("EINVAL", `${bo.describe()} is freed`);
      const size = bo.importOf?.size ?? bo.size;
      if (off < 0n || length < 0n || off + length > size)
        return kerr(
          "EINVAL",
          `copy range [${hex(off)}, ${hex(off + length)}) outside ${bo.describe()}`,
        );
    }
    const bos = src === dst ? [src] : [src, dst];
    const resvs = [...new Set(bos.map((b) => b.resv))];
    for (const r of resvs) r.lock("amdgpu_cs_parser_bos");
    try {
      for (const bo of bos) {
        const v = this.#csValidateLocked(bo);
        if (!v.ok) return this.#copyFail(src, dst, v);
      }
      const read = this.#engineAccess(src, srcOffset, length, "to-device", null);
      if (!read.ok) return this.#copyFail(src, dst, read);
      const data = read.value.data!;
      const write = this.#engineAccess(dst, dstOffset, length, "from-device", data);
      if (!write.ok) return this.#copyFail(src, dst, write);
      const result: GpuCopyResult = { bytes: length, src: read.value.end, dst: write.value.end };
      this.#emit(
        "gpu:copy",
        `${this.name}: SDMA copy ${length} bytes bo#${src.id}+${hex(srcOffset)} (${result.src.via}) -> bo#${dst.id}+${hex(dstOffset)} (${result.dst.via})`,
        {
          device: this.fn.name,
          src: src.id,
          dst: dst.id,
          bytes: length,
          srcVia: result.src.via,
          dstVia: result.dst.via,
          srcKinds: result.src.kinds,
          dstKinds: result.dst.kinds,
        },
      );
      return kok(result);
    } finally {
      for (const r of resvs.reverse()) r.unlock("amdgpu_cs_parser_fini");
    }
  }

  #copyFail<T>(src: GpuBo, dst: GpuBo, r: KResult<T>): KResult<T> {
    if (!r.ok)
      this.#emit(
        "gpu:copy",
        `${this.name}: SDMA copy bo#${src.id} -> bo#${dst.id} failed: -${r.errno}${r.reason ? ` (${r.reason})` : ""}`,
        { device: this.fn.name, src: src.id, dst: dst.id, errno: r.errno },
      );
    return r;
  }

  /**
   * The engine reads (`data` null) or writes `length` bytes at `offset` of a validated BO: VRAM
   * directly, GTT through a DMA mapping of its pages for this device, an import through the
   * bound table.
   */
  #engineAccess(
    bo: GpuBo,
    offset: bigint,
    length: bigint,
    dir: DmaDirection,
    data: Uint8Array | null,
  ): KResult<{ end: GpuCopyEnd; data?: Uint8Array }> {
    if (bo.placement === "vram") {
      const out = data ? undefined : new Uint8Array(Number(length));
      this.#cpuRange(bo, offset, length, (phys, at, n) => {
        if (data) this.sys.memory.write(phys, data.subarray(at, at + n));
        else out!.set(this.sys.memory.read(phys, n), at);
      });
      return kok({ end: { via: "vram", kinds: [] }, ...(out ? { data: out } : {}) });
    }
    let segs: DmaSeg[];
    let done = (): void => {};
    let via: GpuCopyEnd["via"];
    if (bo.importOf) {
      if (!bo.ttmSg) throw new KernelBug(`${bo.describe()}: copy from an unbound import`);
      segs = dmaSegments(this.sys, this.dmaDev, bo.ttmSg);
      via = "import";
    } else if (bo.placement === "gtt") {
      const t = sg_alloc_table_from_pages(bo.gttPages, 0, bo.size, {
        name: `${this.name} bo#${bo.id} GTT pages for the copy engine`,
      });
      if (!t.ok) return t;
      const dev = this.dmaDev;
      const m = this.sys.dma.mapSgtable(dev, t.value, dir);
      if (!m.ok) {
        sg_free_table(t.value);
        return kerr(m.errno, `mapping bo#${bo.id}'s GTT pages for ${dev.name}: ${m.errno}`);
      }
      segs = dmaSegments(this.sys, this.dmaDev, t.value);
      done = () => {
        this.sys.dma.unmapSgtable(dev, t.value, dir);
        sg_free_table(t.value);
      };
      via = "gtt";
    } else throw new KernelBug(`${bo.describe()}: copy on a BO with no placement`);
    try {
      const out = data ? undefined : new Uint8Array(Number(length));
      const fault = this.#dmaRange(segs, offset, length, data, out);
      if (fault)
        return kerr(
          "EIO",
          `${this.name} ${data ? "write to" : "read from"} bo#${bo.id} faulted at 0x${fault.address.toString(16)}: ${fault.reason} (at ${fault.at})`,
        );
      const kinds = [...new Set(segs.map((s) => s.kind))];
      return kok({ end: { via, kinds }, ...(out ? { data: out } : {}) });
    } finally {
      done();
    }
  }

  /** DMA through the fabric over `segs` from byte `offset`: writes `data`, or reads into `out`. */
  #dmaRange(
    segs: readonly DmaSeg[],
    offset: bigint,
    length: bigint,
    data: Uint8Array | null,
    out: Uint8Array | undefined,
  ): DmaFault | null {
    const dev = this.dmaDev;
    return walkSegments(
      segs,
      offset,
      length,
      (dma, lo, hi) => {
        if (data) {
          const r = this.sys.deviceWrite(dev, dma, data.subarray(lo, hi));
          return r.ok ? null : r.fault;
        }
        const r = this.sys.fabric.dmaRead(dev.fn, dma, hi - lo);
        if (!r.ok) return r.fault;
        out!.set(r.data!, lo);
        return null;
      },
      this.name,
    );
  }

  // ── leaks ──────────────────────────────────────────────────────────────────────────────────

  /** Open device files, BOs still allocated (with why), tables handed out, resv locks held. */
  leaks(): Leak[] {
    const owner = `${this.name}`;
    const out: Leak[] = [];
    for (const f of this.#files)
      out.push({
        kind: "gpu-file",
        owner,
        detail: `${this.devicePath} fd ${f.fd} of ${f.proc.name} (pid ${f.proc.pid}) still open with ${f.handles.size} handle(s)`,
      });
    out.push(
      ...unmappedTableLeaks(owner, this.outstanding.keys(), (t) => {
        const h = this.outstanding.get(t)!;
        return `bo#${h.bo.id} (${h.kind})`;
      }),
    );
    for (const bo of this.bos) {
      const exp = this.#exportOf(bo);
      out.push({
        kind: "gpu-bo",
        owner,
        detail: `${bo.describe()} still allocated: ${bo.kref} reference(s), ${bo.handle_count} handle(s)${exp ? `, exported as ${exp.describe()}` : ""}${bo.pin_count > 0 ? `, pinned ${bo.pin_count} time(s)` : ""}`,
      });
      if (bo.resv.held)
        out.push({ kind: "resv-lock", owner, detail: `reservation lock of ${bo.describe()} held` });
    }
    return out;
  }
}

/** How the copy engine reached one side of a copy. */
export interface GpuCopyEnd {
  /** Its own VRAM (no PCIe), its GTT pages, or an imported buffer (both by DMA through the fabric). */
  readonly via: "vram" | "gtt" | "import";
  /** The kinds of DMA address used (none for VRAM). */
  readonly kinds: readonly DmaAddrKind[];
}

/** What `GpuFile.copy` / `GpuDevice.sdmaCopy` did. */
export interface GpuCopyResult {
  readonly bytes: bigint;
  readonly src: GpuCopyEnd;
  readonly dst: GpuCopyEnd;
}

/** `dma_buf_ops` with mutable members while it is built. */
type DbBufOpsTable = { -readonly [K in keyof DmaBufOps]: DmaBufOps[K] };
