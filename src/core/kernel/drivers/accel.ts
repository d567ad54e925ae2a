/**
 * @module accel
 * An accelerator driver modelled on habanalabs (drivers/accel/habanalabs/common/memory.c,
 * context.c, device.c), the device-memory dma-buf exporter of spec §4: device DRAM behind the
 * large prefetchable BAR of the accelerator's PCI function, the device file (/dev/accel/accelN)
 * whose open creates the single compute context and whose release drops it, a page allocator
 * (HL_MEM_OP_ALLOC/FREE), device-virtual mapping of allocations (HL_MEM_OP_MAP/UNMAP, the
 * context's VA hash), and HL_MEM_OP_EXPORT_DMABUF_FD with the validation of
 * `export_dmabuf_from_addr()` (§4.2).
 *
 * Two kinds of ASIC: with DRAM virtual memory (Gaudi2 and later, the default) `addr` is a device
 * VA returned by HL_MEM_OP_MAP; without it (Gaudi1, `dramVirtualMemory: false`) `addr` is a device
 * physical DRAM address, ALLOC/FREE only account, and the export is one "page" [addr, +size).
 *
 * dma_buf_ops (§4.3/4.4): `hl_dmabuf_attach` downgrades `peer2peer` when
 * `pci_p2pdma_distance()` is negative; `hl_map_dmabuf` refuses without peer2peer (-EPERM), else
 * builds a fresh page-less table. How it gets DMA addresses is `mapMode`:
 * - `map-resource` (habanalabs): chunks of the importer's max segment size, each mapped with
 *   `dma_map_resource()`, which never asks P2PDMA for a map type, so an importer the PCI core
 *   would refuse (ACS / host bridge not allowed) still gets addresses;
 * - `p2p-pages`: the BAR registered as ZONE_DEVICE P2P pages and the table mapped with
 *   `dma_map_sgtable()`, which classifies the pages and fails with -EREMOTEIO when the verdict is
 *   not-supported;
 * - `phys-vec` (the mainline way for MMIO exporters, as vfio-pci does it): the exported BAR ranges
 *   as a phys_vec list through `dma_buf_phys_vec_to_sgt()` (../dma-buf/phys-vec.ts), -EINVAL when
 *   not supported.
 *
 * `generation: "v3"` is the exporter of the June 2021 patch ([PATCH v3 2/2] "habanalabs: add
 * support for dma-buf exporter", spec §4.4 [H], §9): the table is built once at export with the
 * raw BAR addresses written into `dma_address` (no DMA API, no IOMMU mapping), the same table is
 * returned to every importer, attach checks nothing, chunks are capped at 512 MiB, and an
 * address/size export (no DRAM VM) must be 32 MiB aligned; with DRAM VM the first u64 of the
 * export args is the allocation handle.
 *
 * Lifetime: an export holds a context reference and (mainline) a reference on the device file;
 * the context is torn down (`hl_vm_ctx_fini`: every VA unmapped, every allocation freed) when its
 * last reference goes, so memory exported to another process outlives the exporter's exit.
 *
 * Importing (a MODEL CHOICE, not habanalabs behaviour): habanalabs has no dma-buf import path
 * (no dma_buf_get / dma_buf_attach anywhere in drivers/misc/habanalabs of 6.1; the driver only
 * exports). So that the accelerator can stand on the importer side of the exporter × importer
 * matrix, `importDmabuf` models a generic in-kernel importer with the behaviour an ODP-capable
 * RDMA device has: dma_buf_dynamic_attach with allow_peer2peer = true and a move_notify that
 * drops the mapping (no pin), mapped lazily at the first DMA and again after an invalidation;
 * `dmaCopy` is a DMA engine job copying between HBM (reached internally, no PCIe) and the imported
 * buffer (reached by DMA through the fabric from the accelerator's function, 64-bit mask; 48
 * without DRAM VM as Gaudi1 sets it). Imports are the driver's, not the context's: they live
 * until `releaseImport`, whatever happens to the device file.
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
  dmaBufMapAttachmentUnlocked,
  dmaBufUnmapAttachment,
  dmaBufUnmapAttachmentUnlocked,
} from "../dma-buf/attachment.ts";
import { type DmaBuf, type DmaBufCore, type DmaBufOps, dmaBufExport } from "../dma-buf/dma-buf.ts";
import {
  dmaBufFd,
  dmaBufGet,
  dmaBufPut,
  type FileOperations,
  KFile,
  O_CLOEXEC,
  O_RDWR,
  type Process,
  sysIoctl,
} from "../dma-buf/file.ts";
import { dmaBufFreeSgt, dmaBufPhysVecToSgt, type PhysVec } from "../dma-buf/phys-vec.ts";
import { KernelBug, type KResult, kerr, kok } from "../errno.ts";
import { type Leak, type LeakSource, unmappedTableLeaks } from "../leaks.ts";
import {
  for_each_sgtable_dma_sg,
  for_each_sgtable_sg,
  type SgTable,
  sg_alloc_table,
  sg_alloc_table_from_pages_segment,
  sg_dma_mark_bus_address,
  sg_free_table,
  sg_set_page,
} from "../lib/scatterlist.ts";
import { type P2pProvider, PAGE_SHIFT, PAGE_SIZE_N, type Page } from "../mm/page.ts";
import type { System } from "../system.ts";
import type { DmaAddrKind } from "../trace.ts";
import { dmaSegments, dmaSegsText, walkSegments } from "./dma-segs.ts";

// include/uapi/drm/habanalabs_accel.h
export const HL_MEM_OP_ALLOC = 0;
export const HL_MEM_OP_FREE = 1;
export const HL_MEM_OP_MAP = 2;
export const HL_MEM_OP_UNMAP = 3;
export const HL_MEM_OP_EXPORT_DMABUF_FD = 5;
/** The memory ioctl's number among the driver's ioctls. */
export const HL_IOCTL_MEMORY = 0x04;
/** include/uapi/drm/drm.h */
export const DRM_COMMAND_BASE = 0x40;
/** `sizeof(union hl_mem_args)`: a 24-byte union, four u32s (op, flags, ctx_id, num_of_elements). */
export const HL_MEM_ARGS_SIZE = 40;
/** `DRM_IOWR(DRM_COMMAND_BASE + HL_IOCTL_MEMORY, union hl_mem_args)`: the cmd for ioctl(2). */
export const DRM_IOCTL_HL_MEMORY =
  ((3 << 30) | (HL_MEM_ARGS_SIZE << 16) | (0x64 << 8) | (DRM_COMMAND_BASE + HL_IOCTL_MEMORY)) >>> 0;

/** The handle a userptr mapping's hash node carries (not an IDR handle: upper 32 bits set). */
export const HL_USERPTR_HANDLE = (1n << 64n) - 1n;

const MiB = 1n << 20n;
/** v3: `DMA_BUF_MEM_ADDR_ALIGNMENT` / `DMA_BUF_MEM_SIZE_ALIGNMENT` (SZ_32M). */
export const V3_EXPORT_ALIGNMENT = 32n * MiB;
/** v3: `DMA_BUF_CHUNK_MAX_SIZE` (SZ_512M). */
export const V3_CHUNK_MAX_SIZE = 512n * MiB;

/** `union hl_mem_args` input, by opcode. */
export type HlMemIn =
  | { readonly op: typeof HL_MEM_OP_ALLOC; readonly mem_size: bigint }
  /** Without DRAM VM the driver subtracts this u64 (it aliases `alloc.mem_size`) from its accounting. */
  | { readonly op: typeof HL_MEM_OP_FREE; readonly handle: bigint }
  | { readonly op: typeof HL_MEM_OP_MAP; readonly handle: bigint }
  | { readonly op: typeof HL_MEM_OP_UNMAP; readonly device_virt_addr: bigint }
  | {
      readonly op: typeof HL_MEM_OP_EXPORT_DMABUF_FD;
      /** Device VA (DRAM VM) or device physical address (none); v3 with DRAM VM: the handle. */
      readonly addr: bigint;
      readonly mem_size: bigint;
      /** Not in v3. */
      readonly offset: bigint;
      /** `hl_mem_in.flags`: the dma-buf file/fd flags (O_RDWR | O_CLOEXEC ...), not validated. */
      readonly flags: number;
    };

/** `hl_mem_out`: the union as the ioctl leaves it (zeroed, then one member written). */
export interface HlMemOut {
  handle: bigint;
  device_virt_addr: bigint;
  /** -EBADF (the initial value) unless an export succeeded. */
  fd: number;
}

/** The ioctl argument: `in` is read, `out` written back (copy_to_user), as with the real union. */
export interface HlMemArgs {
  readonly in: HlMemIn;
  out?: HlMemOut;
}

/** How `map_dma_buf` produces DMA addresses. */
export type AccelMapMode =
  /** What habanalabs does: page-less entries, `dma_map_resource()` per chunk. */
  | "map-resource"
  /** P2P pages of the BAR + `dma_map_sgtable()` (P2PDMA verdict applies, -EREMOTEIO). */
  | "p2p-pages"
  /** The BAR ranges through `dma_buf_phys_vec_to_sgt()` (P2PDMA verdict applies, -EINVAL). */
  | "phys-vec";

/** Which exporter: the merged one, or the June 2021 v3 patch. */
export type AccelGeneration = "mainline" | "v3";

export interface AccelOptions {
  /** Index of the DRAM BAR; default the largest memory BAR of the function. */
  readonly dramBar?: number | undefined;
  /** Device DRAM bytes (may exceed the BAR window); default the BAR size. */
  readonly dramSize?: bigint | undefined;
  /** `prop->dram_base_address` (device physical address of DRAM); default 0. */
  readonly dramBaseAddress?: bigint | undefined;
  /** `prop->dram_user_base_address` (first address users may use); default the DRAM base. */
  readonly dramUserBaseAddress?: bigint | undefined;
  /** `prop->dram_page_size`; default 64 KiB. A multiple of PAGE_SIZE. */
  readonly dramPageSize?: bigint | undefined;
  /** Start of the DRAM virtual range handed out by HL_MEM_OP_MAP. */
  readonly dramVaBase?: bigint | undefined;
  readonly mapMode?: AccelMapMode | undefined;
  /** `prop->dram_supports_virtual_memory`; false models Gaudi1. Default true. */
  readonly dramVirtualMemory?: boolean | undefined;
  /** Default "mainline". */
  readonly generation?: AccelGeneration | undefined;
  /**
   * false: attach does not check `pci_p2pdma_distance()` (as the v3 patch, which had no P2P
   * check): every dynamic importer keeps peer2peer. Default true (v3: always false).
   */
  readonly attachChecksDistance?: boolean | undefined;
  readonly name?: string | undefined;
  /** The device node, /dev/accel/<node>; default `name` when it looks like accelN, else accel0. */
  readonly node?: string | undefined;
}

/** `struct hl_vm_phys_pg_pack`: an allocation's device-physical pages. */
export interface PhysPgPack {
  readonly handle: bigint;
  /** VM_TYPE_PHYS_PACK for DRAM; VM_TYPE_USERPTR for host memory. */
  readonly vm_type: "phys-pack" | "userptr";
  /** Device physical address of each page. */
  readonly pages: readonly bigint[];
  readonly page_size: bigint;
  readonly total_size: bigint;
  mapping_cnt: number;
  /** v3: dma-bufs exported from this handle (blocks HL_MEM_OP_FREE). */
  exporting_cnt: number;
  /** The context the pack belongs to. */
  readonly asid: number;
}

/** `struct hl_vm_hash_node`: one mapping in the context's VA hash. */
export interface HlVmHashNode {
  readonly vaddr: bigint;
  readonly handle: bigint;
  readonly size: bigint;
  export_cnt: number;
}

/** `struct hl_ctx` with the parts of `struct hl_fpriv` the model needs. */
export interface HlCtx {
  readonly asid: number;
  /** `ctx->refcount`: the context manager's (dropped at file release), one per export. */
  refs: number;
  /** `hpriv->filp`: the device file the context was created for. */
  readonly file: KFile;
  /** The process that opened it (`hpriv->taskpid`). */
  readonly owner: Process;
  /** `hl_device_release` ran (the context manager's reference is gone). */
  fileReleased: boolean;
  /** `ctx->dram_phys_mem`: what a Gaudi1 user told the driver it allocated. */
  dram_phys_mem: bigint;
}

/** `struct hl_dmabuf_priv` (v3: `struct hl_dmabuf_wrapper`). */
export interface HlDmabufPriv {
  readonly dev: AccelDevice;
  /** Set after the fd is installed in v3, before in mainline. */
  ctx: HlCtx | null;
  /** null without DRAM VM (the export is [device_phys_addr, +size)). */
  readonly phys_pg_pack: PhysPgPack | null;
  readonly memhash_hnode: HlVmHashNode | null;
  readonly offset: bigint;
  readonly size: bigint;
  /** Without DRAM VM: the exported device physical address. */
  readonly device_phys_addr: bigint;
  /** v3: the one table built at export. */
  sgt: SgTable | null;
  /** Took a reference on the device file (mainline). */
  readonly holdsFile: boolean;
  dmabuf: DmaBuf | null;
}

interface Run {
  addr: bigint;
  len: bigint;
}

const alignUp = (v: bigint, a: bigint): bigint => ((v + a - 1n) / a) * a;
const minBig = (x: bigint, y: bigint): bigint => (x < y ? x : y);
const pageAligned = (v: bigint): boolean => v % PAGE_SIZE_N === 0n;
const EBADF_FD = -9;
const NO_SPLIT = 1n << 64n;

/** One accelerator (`struct hl_device` with at most one compute context). */
export class AccelDevice implements LeakSource {
  readonly sys: System;
  readonly core: DmaBufCore;
  readonly fn: PciFunction;
  readonly name: string;
  /** `/dev/accel/accelN`. */
  readonly devicePath: string;
  readonly mapMode: AccelMapMode;
  readonly generation: AccelGeneration;
  /** `prop->dram_supports_virtual_memory`. */
  readonly dramVirtualMemory: boolean;
  readonly attachChecksDistance: boolean;
  /** `hdev->dram_pci_bar_start`: `pci_resource_start()` of the DRAM BAR (CPU physical). */
  readonly dram_pci_bar_start: bigint;
  /** `prop->dram_pci_bar_size`. */
  readonly dram_pci_bar_size: bigint;
  readonly dram_base_address: bigint;
  readonly dram_user_base_address: bigint;
  /** `prop->dram_end_address` (exclusive). */
  readonly dram_end_address: bigint;
  readonly dram_size: bigint;
  readonly dram_page_size: bigint;
  /** `hl_device_operational()`: false → every memory op (and open) is -EBUSY. */
  operational = true;
  /** `hdev->dmabuf_export_cnt`. */
  dmabuf_export_cnt = 0;
  /** `hdev->dram_used_mem`. */
  dram_used_mem = 0n;
  /** The compute context, while the device is in use. */
  ctx: HlCtx | null = null;
  /** `vm->phys_pg_pack_handles` (IDR). */
  readonly idr = new Map<bigint, PhysPgPack>();
  /** `ctx->mem_hash` of the compute context. */
  readonly mem_hash = new Map<bigint, HlVmHashNode>();
  /** dev_dbg / dev_err lines. */
  readonly log: string[] = [];
  /** Tables map_dma_buf handed out and unmap_dma_buf has not taken back. */
  readonly outstanding = new Set<SgTable>();
  /** Exports whose dma-buf has not been released. */
  readonly exports = new Set<HlDmabufPriv>();
  /** The P2PDMA provider of the DRAM BAR (p2p-pages and phys-vec modes). */
  readonly provider: P2pProvider | null;
  readonly #used: Uint8Array;
  readonly #fops: FileOperations;
  #nextHandle = 1n;
  #nextVa: bigint;

  constructor(sys: System, core: DmaBufCore, bdf: string, opts: AccelOptions = {}) {
    const fn = sys.machine.byBdf(bdf);
    if (!fn) throw new Error(`accel: no function ${bdf}`);
    const bar = memoryBar(fn, opts.dramBar);
    if (!bar) throw new Error(`accel ${bdf}: no DRAM BAR`);
    this.sys = sys;
    this.core = core;
    this.fn = fn;
    this.name = opts.name ?? `habanalabs ${fn.name}`;
    const node = opts.node ?? (/^accel\d+$/.test(this.name) ? this.name : "accel0");
    this.devicePath = `/dev/accel/${node}`;
    this.mapMode = opts.mapMode ?? "map-resource";
    this.generation = opts.generation ?? "mainline";
    this.dramVirtualMemory = opts.dramVirtualMemory ?? true;
    this.attachChecksDistance =
      this.generation === "v3" ? false : (opts.attachChecksDistance ?? true);
    this.dram_pci_bar_start = bar.start;
    this.dram_pci_bar_size = bar.size;
    this.dram_base_address = opts.dramBaseAddress ?? 0n;
    this.dram_user_base_address = opts.dramUserBaseAddress ?? this.dram_base_address;
    this.dram_size = opts.dramSize ?? bar.size;
    this.dram_end_address = this.dram_base_address + this.dram_size;
    this.dram_page_size = opts.dramPageSize ?? 0x1_0000n;
    if (this.dram_page_size % PAGE_SIZE_N !== 0n)
      throw new Error("accel: DRAM page size must be a multiple of PAGE_SIZE");
    this.#used = new Uint8Array(Number(this.dram_size / this.dram_page_size));
    this.#nextVa = opts.dramVaBase ?? 0x1000_0000_0000n;
    this.provider = null;
    if (this.generation === "mainline" && this.mapMode !== "map-resource") {
      // p2p-pages: pci_p2pdma_add_resource(pdev, bar, size, 0). phys-vec needs only the provider
      // (pcim_p2pdma_provider); P2pmemRegistry has no public way to create the p2pdma state
      // without pages, so the BAR is registered the same way.
      const r = sys.p2pmem.addResource(fn, bar.index, bar.size, 0n);
      if (!r.ok) throw new Error(`accel ${bdf}: pci_p2pdma_add_resource failed: ${r.errno}`);
      this.provider = r.value.provider;
    }
    this.#fops = {
      name: "habanalabs accel fops",
      unlocked_ioctl: (file, cmd, arg, proc) => this.#ioctl(file, cmd, arg, proc),
      release: (file) => this.#fileRelease(file),
    };
  }

  /** The CPU physical (BAR) address of device DRAM address `d`: `dram_pci_bar_start + (d - dram_base_address)`. */
  barAddress(d: bigint): PhysAddr {
    return physAddr(this.dram_pci_bar_start + (d - this.dram_base_address));
  }

  /** The compute context's references (0 when there is none). */
  get ctx_refs(): number {
    return this.ctx?.refs ?? 0;
  }

  // ── the device file ───────────────────────────────────────────────────────────────────────

  /**
   * open(2) of /dev/accel/accelN: the compute context (one user at a time: -EBUSY while another
   * context lives, including one kept alive by exported dma-bufs) and an fd in `proc`.
   * models hl_device_open() + hl_ctx_create()
   */
  open(proc: Process, flags: number = O_RDWR | O_CLOEXEC): KResult<number> {
    if (!this.operational)
      return kerr(
        "EBUSY",
        `${this.name}: can't open ${this.devicePath}, device is not operational`,
      );
    if (this.ctx)
      return kerr(
        "EBUSY",
        `${this.name}: can't open ${this.devicePath} because another user is working on it`,
      );
    const fd = proc.getUnusedFd();
    if (!fd.ok) return fd;
    const file = new KFile({ name: this.devicePath, fops: this.#fops, flags });
    const asid = 1; // hl_asid_alloc(): the lowest free ASID above the kernel's 0
    this.ctx = { asid, refs: 1, file, owner: proc, fileReleased: false, dram_phys_mem: 0n };
    this.log.push(`create user context, comm="${proc.name}", asid=${asid}`);
    proc.install(fd.value, file, flags);
    this.sys.trace.emit("accel:open", `${this.name}: ${proc.name} opened ${this.devicePath}`, {
      device: this.fn.name,
      pid: proc.pid,
      fd: fd.value,
      asid,
    });
    return fd;
  }

  /** The context `proc` reaches through an fd of the device file, or null. */
  #ctxOf(proc: Process): HlCtx | null {
    const ctx = this.ctx;
    if (!ctx || ctx.fileReleased) return null;
    for (const e of proc.fds.values()) if (e.file === ctx.file) return ctx;
    return null;
  }

  /** `proc`'s context; a process with no fd of the device opens it first (when it is free). */
  #ctxFor(proc: Process): KResult<HlCtx> {
    const ctx = this.#ctxOf(proc);
    if (ctx) return kok(ctx);
    if (this.ctx)
      return kerr("EBADF", `${proc.name} has no open ${this.devicePath} (another user has it)`);
    const o = this.open(proc);
    if (!o.ok) return o;
    return kok(this.ctx!);
  }

  // models drm_ioctl() dispatch to the one driver ioctl modelled (hl_mem_ioctl)
  #ioctl(file: KFile, cmd: number, arg: unknown, proc: Process): KResult<number> {
    if (cmd !== DRM_IOCTL_HL_MEMORY)
      return kerr("EINVAL", `${this.devicePath}: ioctl 0x${cmd.toString(16)} is not modelled`);
    if (typeof arg !== "object" || arg === null)
      return kerr("EFAULT", "DRM_IOCTL_HL_MEMORY: copy_from_user failed");
    const holder = "in" in arg ? (arg as HlMemArgs) : null;
    const args = holder ? holder.in : (arg as HlMemIn);
    const ctx = this.ctx;
    if (!ctx || ctx.file !== file)
      throw new KernelBug(`${file.name}: ioctl on a file without context`);
    const r = this.#memIoctl(ctx, proc, args);
    if (holder) holder.out = r.ok ? r.value : { handle: 0n, device_virt_addr: 0n, fd: EBADF_FD };
    return r.ok ? kok(0) : r;
  }

  /**
   * The last reference to the device file: the context manager's context reference goes; if the
   * context lives on (v3 exports hold it) the driver says the device is still in use.
   * models hl_device_release()
   */
  #fileRelease(file: KFile): void {
    const ctx = this.ctx;
    if (!ctx || ctx.file !== file) return;
    ctx.fileReleased = true;
    this.sys.trace.emit("accel:close", `${this.name}: ${this.devicePath} released`, {
      device: this.fn.name,
      asid: ctx.asid,
    });
    this.#ctxPut(ctx); // hl_ctx_mgr_fini()
    if (this.ctx === ctx)
      this.log.push(
        `User process closed FD but device still in use${this.exports.size > 0 ? ` [${this.exports.size} exported dma-buf]` : ""}`,
      );
  }

  // models hl_ctx_get()
  #ctxGet(ctx: HlCtx): void {
    ctx.refs++;
  }

  // models hl_ctx_put(): the last reference tears the context down (hl_ctx_do_release)
  #ctxPut(ctx: HlCtx): void {
    if (ctx.refs <= 0) throw new KernelBug(`${this.name}: hl_ctx_put() on a dead context`);
    if (--ctx.refs > 0) return;
    this.#ctxFini(ctx);
    if (this.ctx === ctx) this.ctx = null;
  }

  /**
   * The context's VM teardown: every VA still mapped is unmapped, every allocation still alive is
   * freed (each logged), and without DRAM VM the DRAM accounting is reset.
   * models hl_ctx_fini() → hl_vm_ctx_fini()
   */
  #ctxFini(ctx: HlCtx): void {
    const { asid } = ctx;
    this.log.push(`closing user context, asid=${asid}`);
    const unmapped: bigint[] = [];
    const freed: bigint[] = [];
    if (this.mem_hash.size > 0)
      this.log.push("user released device without removing its memory mappings");
    for (const h of [...this.mem_hash.values()]) {
      this.log.push(`hl_mem_hash_node of vaddr ${hex(h.vaddr)} of asid ${asid} is still alive`);
      this.mem_hash.delete(h.vaddr); // unmap_device_va(ctx, args, true)
      const p = this.idr.get(h.handle);
      if (p) p.mapping_cnt--;
      unmapped.push(h.vaddr);
    }
    for (const p of [...this.idr.values()]) {
      if (p.asid !== asid) continue;
      this.log.push(
        `page list of handle ${p.handle} (${hex(p.total_size)} bytes) of asid ${asid} is still alive`,
      );
      this.dram_used_mem -= p.total_size;
      this.idr.delete(p.handle);
      this.#freePages(p);
      freed.push(p.handle);
    }
    if (!this.dramVirtualMemory) this.dram_used_mem = 0n;
    this.sys.trace.emit(
      "accel:ctx_fini",
      `${this.name}: context asid ${asid} torn down: ${unmapped.length} VA(s) unmapped, ${freed.length} allocation(s) freed`,
      { device: this.fn.name, asid, unmapped, freed },
    );
  }

  // ── the memory ioctl ─────────────────────────────────────────────────────────────────────

  /**
   * HL_IOCTL_MEMORY as `proc` issues it on its fd of the device (opening the device first when
   * `proc` has no fd of it and it is free). The union is zeroed, `out.fd` -EBADF until an export
   * succeeds. models hl_mem_ioctl()
   */
  memIoctl(proc: Process, args: HlMemIn): KResult<HlMemOut> {
    if (!this.operational)
      return kerr(
        "EBUSY",
        `${this.name}: device is disabled or in reset, can't execute MEMORY IOCTL`,
      );
    const ctx = this.#ctxFor(proc);
    if (!ctx.ok) return ctx;
    return this.#memIoctl(ctx.value, proc, args);
  }

  #memIoctl(ctx: HlCtx, proc: Process, args: HlMemIn): KResult<HlMemOut> {
    const out: HlMemOut = { handle: 0n, device_virt_addr: 0n, fd: EBADF_FD };
    if (!this.operational)
      return kerr(
        "EBUSY",
        `${this.name}: device is disabled or in reset, can't execute MEMORY IOCTL`,
      );
    switch (args.op) {
      case HL_MEM_OP_ALLOC: {
        if (args.mem_size === 0n) return kerr("EINVAL", "alloc size must be larger than 0");
        if (!this.dramVirtualMemory) {
          // the driver does not allocate Gaudi1 DRAM; it only accounts what the user says
          ctx.dram_phys_mem += args.mem_size;
          this.dram_used_mem += args.mem_size;
          this.log.push("DRAM alloc is not supported");
          return kok(out);
        }
        const r = this.allocDeviceMemory(args.mem_size, ctx.asid);
        if (!r.ok) return r;
        out.handle = r.value;
        return kok(out);
      }
      case HL_MEM_OP_FREE: {
        if (!this.dramVirtualMemory) {
          ctx.dram_phys_mem -= args.handle;
          this.dram_used_mem -= args.handle;
          this.log.push("DRAM alloc is not supported");
          return kok(out);
        }
        const r = this.freeDeviceMemory(args.handle);
        return r.ok ? kok(out) : r;
      }
      case HL_MEM_OP_MAP: {
        const r = this.mapDeviceVa(args.handle);
        if (!r.ok) return r;
        out.device_virt_addr = r.value;
        return kok(out);
      }
      case HL_MEM_OP_UNMAP: {
        const r = this.unmapDeviceVa(args.device_virt_addr);
        return r.ok ? kok(out) : r;
      }
      case HL_MEM_OP_EXPORT_DMABUF_FD: {
        const r =
          this.generation === "v3"
            ? this.#exportV3(ctx, proc, args.addr, args.mem_size, args.flags)
            : this.#exportDmabufFromAddr(
                ctx,
                proc,
                args.addr,
                args.mem_size,
                args.offset,
                args.flags,
              );
        if (!r.ok) return r;
        out.fd = r.value;
        return kok(out);
      }
    }
  }

  /** First-fit DRAM pages (not necessarily contiguous). models alloc_device_memory() */
  allocDeviceMemory(size: bigint, asid = this.ctx?.asid ?? 1): KResult<bigint> {
    if (size === 0n) return kerr("EINVAL", "alloc size 0");
    const ps = this.dram_page_size;
    const n = Number(alignUp(size, ps) / ps);
    const free: number[] = [];
    for (let i = 0; i < this.#used.length && free.length < n; i++) if (!this.#used[i]) free.push(i);
    if (free.length < n) return kerr("ENOMEM", `${this.name}: out of DRAM for ${size} bytes`);
    for (const i of free) this.#used[i] = 1;
    const handle = this.#nextHandle++;
    const pack: PhysPgPack = {
      handle,
      vm_type: "phys-pack",
      pages: free.map((i) => this.dram_base_address + BigInt(i) * ps),
      page_size: ps,
      total_size: BigInt(n) * ps,
      mapping_cnt: 0,
      exporting_cnt: 0,
      asid,
    };
    this.idr.set(handle, pack);
    this.dram_used_mem += pack.total_size;
    return kok(handle);
  }

  // models free_phys_pg_pack(): the pages go back to the DRAM pool
  #freePages(p: PhysPgPack): void {
    for (const a of p.pages)
      this.#used[Number((a - this.dram_base_address) / this.dram_page_size)] = 0;
  }

  /** models free_device_memory(): a mapped pack (or, in v3, an exported one) cannot be freed. */
  freeDeviceMemory(handle: bigint): KResult {
    const p = this.idr.get(handle);
    if (!p) return kerr("EINVAL", `free device memory failed, no match for handle ${handle}`);
    if (p.mapping_cnt > 0) return kerr("EINVAL", `handle ${handle} is mapped, cannot free`);
    if (p.exporting_cnt > 0) return kerr("EINVAL", `handle ${handle} is exported, cannot free`);
    this.#freePages(p);
    this.idr.delete(handle);
    this.dram_used_mem -= p.total_size;
    return kok();
  }

  /** Maps a DRAM pack at a fresh device VA. models map_device_va() (DRAM branch) */
  mapDeviceVa(handle: bigint): KResult<bigint> {
    const p = this.idr.get(handle);
    if (!p) return kerr("EINVAL", `no match for handle ${handle}`);
    const va = alignUp(this.#nextVa, this.dram_page_size);
    this.#nextVa = va + p.total_size;
    p.mapping_cnt++;
    this.mem_hash.set(va, { vaddr: va, handle, size: p.total_size, export_cnt: 0 });
    return kok(va);
  }

  /**
   * A host-memory (userptr) mapping: its hash node carries no IDR handle. Only what export
   * validation needs. models map_device_va() (userptr branch)
   */
  mapUserptr(size: bigint): bigint {
    const va = alignUp(this.#nextVa, this.dram_page_size);
    this.#nextVa = va + alignUp(size, PAGE_SIZE_N);
    this.mem_hash.set(va, { vaddr: va, handle: HL_USERPTR_HANDLE, size, export_cnt: 0 });
    return va;
  }

  /** models unmap_device_va(): refuses an exported mapping with -EINVAL. */
  unmapDeviceVa(va: bigint): KResult {
    const h = this.mem_hash.get(va);
    if (!h) return kerr("EINVAL", `unmap failed, no mem hnode for vaddr ${hex(va)}`);
    if (h.export_cnt > 0) return kerr("EINVAL", `failed to unmap ${hex(va)}, memory is exported`);
    this.mem_hash.delete(va);
    const p = this.idr.get(h.handle);
    if (p) p.mapping_cnt--;
    return kok();
  }

  // ── export (mainline) ────────────────────────────────────────────────────────────────────

  /** models memhash_node_export_get(): exact VA hit, 32-bit handle, then export_cnt++. */
  #memhashNodeExportGet(addr: bigint): KResult<HlVmHashNode> {
    const h = this.mem_hash.get(addr);
    if (!h) return kerr("EINVAL", `map address ${hex(addr)} not found`);
    if (h.handle >> 32n !== 0n)
      return kerr("EINVAL", `invalid handle ${hex(h.handle)} for map address ${hex(addr)}`);
    h.export_cnt++;
    return kok(h);
  }

  /** models get_phys_pg_pack_from_hash_node(). */
  #physPgPackFromHashNode(h: HlVmHashNode): KResult<PhysPgPack> {
    const p = this.idr.get(h.handle);
    if (!p) return kerr("EINVAL", `no match for handle ${hex(h.handle)}`);
    if (p.vm_type !== "phys-pack")
      return kerr("EINVAL", `handle ${hex(h.handle)} does not represent DRAM memory`);
    return kok(p);
  }

  /** models validate_export_params_common(). */
  #validateCommon(addr: bigint, size: bigint, offset: bigint): KResult {
    if (!pageAligned(addr))
      return kerr(
        "EINVAL",
        `exported device memory address ${hex(addr)} should be aligned to PAGE_SIZE 0x1000`,
      );
    if (size === 0n || !pageAligned(size))
      return kerr(
        "EINVAL",
        `exported device memory size ${size} should be a multiple of PAGE_SIZE 4096`,
      );
    if (!pageAligned(offset))
      return kerr(
        "EINVAL",
        `exported device memory offset ${offset} should be a multiple of PAGE_SIZE 4096`,
      );
    return kok();
  }

  /** models validate_export_params(): common, offset+size within the pack, every page in the BAR. */
  #validate(addr: bigint, size: bigint, offset: bigint, p: PhysPgPack): KResult {
    const c = this.#validateCommon(addr, size, offset);
    if (!c.ok) return c;
    if (offset + size > p.total_size)
      return kerr(
        "EINVAL",
        `offset ${hex(offset)} and size ${hex(size)} exceed total map size ${hex(p.total_size)}`,
      );
    const barEnd = this.dram_pci_bar_start + this.dram_pci_bar_size;
    for (const page of p.pages) {
      const bar = this.dram_pci_bar_start + (page - this.dram_base_address);
      if (bar + p.page_size > barEnd || bar + p.page_size < bar)
        return kerr(
          "EINVAL",
          `DRAM memory range ${hex(page)} (+${hex(p.page_size)}) is outside of PCI BAR boundaries`,
        );
    }
    return kok();
  }

  /**
   * Without DRAM VM: common checks (offset 0), [addr, addr+size) inside the user DRAM range and
   * its BAR translation inside the BAR window, both overflow-checked.
   * models validate_export_params_no_mmu()
   */
  #validateNoMmu(addr: bigint, size: bigint): KResult {
    const c = this.#validateCommon(addr, size, 0n);
    if (!c.ok) return c;
    const U64 = (1n << 64n) - 1n;
    if (
      addr < this.dram_user_base_address ||
      addr + size > this.dram_end_address ||
      addr + size > U64
    )
      return kerr(
        "EINVAL",
        `DRAM memory range ${hex(addr)} (+${hex(size)}) is outside of DRAM boundaries`,
      );
    const bar = this.dram_pci_bar_start + (addr - this.dram_base_address);
    if (bar + size > this.dram_pci_bar_start + this.dram_pci_bar_size || bar + size > U64)
      return kerr(
        "EINVAL",
        `DRAM memory range ${hex(addr)} (+${hex(size)}) is outside of PCI BAR boundaries`,
      );
    return kok();
  }

  /**
   * HL_MEM_OP_EXPORT_DMABUF_FD on `proc`'s context (opened first if `proc` has none).
   * models export_dmabuf_from_addr()
   */
  exportDmabufFromAddr(
    proc: Process,
    addr: bigint,
    size: bigint,
    offset: bigint,
    flags: number,
  ): KResult<number> {
    const ctx = this.#ctxFor(proc);
    if (!ctx.ok) return ctx;
    return this.#exportDmabufFromAddr(ctx.value, proc, addr, size, offset, flags);
  }

  /**
   * Validate, export, take the refs, install the fd last. Without DRAM VM a non-zero offset is
   * refused first. models export_dmabuf_from_addr() + export_dmabuf()
   */
  #exportDmabufFromAddr(
    ctx: HlCtx,
    proc: Process,
    addr: bigint,
    size: bigint,
    offset: bigint,
    flags: number,
  ): KResult<number> {
    if (!this.dramVirtualMemory && offset !== 0n)
      return kerr("EINVAL", "offset is not allowed in device without virtual memory");
    let pack: PhysPgPack | null = null;
    let hnode: HlVmHashNode | null = null;
    if (this.dramVirtualMemory) {
      const hn = this.#memhashNodeExportGet(addr);
      if (!hn.ok) return hn;
      hnode = hn.value;
      const p = this.#physPgPackFromHashNode(hnode);
      const v = p.ok ? this.#validate(addr, size, offset, p.value) : p;
      if (!p.ok || !v.ok) {
        hnode.export_cnt--; // memhash_node_export_put()
        return p.ok ? (v as KResult<never>) : p;
      }
      pack = p.value;
    } else {
      const v = this.#validateNoMmu(addr, size);
      if (!v.ok) return v;
    }
    const put = <T>(r: KResult<T>): KResult<T> => {
      if (hnode) hnode.export_cnt--;
      return r;
    };
    // export_dmabuf(): get_unused_fd_flags first, so a full fd table fails before the export
    const fd = proc.getUnusedFd();
    if (!fd.ok) return put(fd);
    const priv: HlDmabufPriv = {
      dev: this,
      ctx: null,
      phys_pg_pack: pack,
      memhash_hnode: hnode,
      offset,
      size,
      device_phys_addr: pack ? 0n : addr,
      sgt: null,
      holdsFile: true,
      dmabuf: null,
    };
    const d = dmaBufExport(this.core, {
      exp_name: "habanalabs",
      owner: null,
      ops: this.#ops(priv),
      size,
      flags,
      priv,
    });
    if (!d.ok) return put(d);
    priv.dmabuf = d.value;
    priv.ctx = ctx;
    this.#ctxGet(ctx);
    this.dmabuf_export_cnt++;
    ctx.file.get(); // released order: every dma-buf before the device file
    this.exports.add(priv);
    const r = dmaBufFd(proc, d.value, flags); // fd_install last
    if (!r.ok) throw new KernelBug("accel: the reserved fd could not be installed");
    this.#traceExport(priv, addr, r.value);
    return r;
  }

  #traceExport(priv: HlDmabufPriv, addr: bigint, fd: number): void {
    this.sys.trace.emit(
      "accel:export",
      `${this.name}: exported ${hex(priv.size)} bytes at ${hex(addr)}+${hex(priv.offset)} as ${priv.dmabuf!.describe()}, fd ${fd}`,
      {
        device: this.fn.name,
        generation: this.generation,
        addr,
        size: priv.size,
        offset: priv.offset,
        fd,
        ino: priv.dmabuf!.ino,
      },
    );
  }

  // ── export (v3, June 2021) ───────────────────────────────────────────────────────────────

  /**
   * v3: with DRAM VM the handle's whole allocation (`exporting_cnt` blocks its FREE); without it
   * [addr, +size) with addr and size 32 MiB aligned inside the user DRAM range.
   * models the v3 export_dmabuf_from_handle() / export_dmabuf_from_addr()
   */
  #exportV3(ctx: HlCtx, proc: Process, addr: bigint, size: bigint, flags: number): KResult<number> {
    if (this.dramVirtualMemory) {
      const handle = addr & 0xffff_ffffn;
      const p = this.idr.get(handle);
      if (!p) return kerr("EINVAL", `no match for handle ${hex(handle)}`);
      p.exporting_cnt++;
      if (p.vm_type !== "phys-pack") {
        p.exporting_cnt--;
        return kerr("EINVAL", `handle ${hex(addr)} is not for DRAM memory`);
      }
      const r = this.#exportV3Common(ctx, proc, p, p.pages, p.page_size, p.total_size, 0n, flags);
      if (!r.ok) p.exporting_cnt--;
      return r;
    }
    const A = V3_EXPORT_ALIGNMENT;
    if (addr % A !== 0n)
      return kerr(
        "EINVAL",
        `address of exported device memory should be aligned to ${hex(A)}, address ${hex(addr)}`,
      );
    if (size === 0n)
      return kerr("EINVAL", "size of exported device memory should be greater than 0");
    if (size % A !== 0n)
      return kerr(
        "EINVAL",
        `size of exported device memory should be aligned to ${hex(A)}, size ${hex(size)}`,
      );
    if (addr < this.dram_user_base_address || addr + size > this.dram_end_address)
      return kerr(
        "EINVAL",
        `DRAM memory range is outside of DRAM boundaries, address ${hex(addr)}, size ${hex(size)}`,
      );
    return this.#exportV3Common(ctx, proc, null, [addr], size, size, addr, flags);
  }

  /**
   * Pages larger than the chunk cap are split into 32 MiB ones; the table is built now, with the
   * BAR address of each chunk as its DMA address; then export, fd, and only then the context
   * reference (so a failed dma_buf_fd releases a buffer whose ctx is still NULL).
   * models the v3 export_dmabuf_common() + _export_dmabuf_common()
   */
  #exportV3Common(
    ctx: HlCtx,
    proc: Process,
    pack: PhysPgPack | null,
    pagesIn: readonly bigint[],
    pageSizeIn: bigint,
    size: bigint,
    physAddrIn: bigint,
    flags: number,
  ): KResult<number> {
    let pages = pagesIn;
    let pageSize = pageSizeIn;
    if (pageSize > V3_CHUNK_MAX_SIZE) {
      const f = pageSize / V3_EXPORT_ALIGNMENT;
      pages = pagesIn.flatMap((p) =>
        Array.from({ length: Number(f) }, (_, j) => p + BigInt(j) * V3_EXPORT_ALIGNMENT),
      );
      pageSize = V3_EXPORT_ALIGNMENT;
    }
    const t = this.#v3Sgt(pages, pageSize);
    if (!t.ok) return t;
    const priv: HlDmabufPriv = {
      dev: this,
      ctx: null,
      phys_pg_pack: pack,
      memhash_hnode: null,
      offset: 0n,
      size,
      device_phys_addr: physAddrIn,
      sgt: t.value,
      holdsFile: false,
      dmabuf: null,
    };
    const d = dmaBufExport(this.core, {
      exp_name: "habanalabs",
      owner: null,
      ops: this.#ops(priv),
      size,
      flags,
      priv,
    });
    if (!d.ok) {
      sg_free_table(t.value);
      return d;
    }
    priv.dmabuf = d.value;
    this.exports.add(priv);
    const fd = dmaBufFd(proc, d.value, flags);
    if (!fd.ok) {
      // err_dma_buf_put: the release callback runs with hl_dmabuf->ctx still NULL
      dmaBufPut(d.value);
      return fd;
    }
    priv.ctx = ctx;
    this.#ctxGet(ctx);
    this.#traceExport(priv, pack ? pack.handle : physAddrIn, fd.value);
    return fd;
  }

  /** models the v3 alloc_sgt_from_device_pages(): contiguous pages merged up to 512 MiB. */
  #v3Sgt(pages: readonly bigint[], pageSize: bigint): KResult<SgTable> {
    const chunks: Run[] = [];
    for (const p of pages) {
      const last = chunks[chunks.length - 1];
      if (last && last.addr + last.len === p && last.len + pageSize <= V3_CHUNK_MAX_SIZE)
        last.len += pageSize;
      else chunks.push({ addr: p, len: pageSize });
    }
    const t = sg_alloc_table(chunks.length, { name: `${this.name} v3 dmabuf sgt` });
    if (!t.ok) return t;
    const barEnd = this.dram_pci_bar_start + this.dram_pci_bar_size;
    const ents = [...for_each_sgtable_sg(t.value)];
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i]!;
      const bar = this.barAddress(c.addr);
      if (bar + c.len > barEnd) {
        sg_free_table(t.value);
        return kerr(
          "EINVAL",
          `DRAM memory range is outside of PCI BAR boundaries, address ${hex(c.addr)}, size ${hex(c.len)}`,
        );
      }
      const s = ents[i]!;
      sg_set_page(s, null, Number(c.len), 0);
      // the BAR's pci_resource_start-based address, as the DMA address: no DMA API
      s.dma_address = dmaAddr(bar);
      s.dma_length = Number(c.len);
      // the kernel of 2021 had no such flag; marked so traces see a raw bus address
      sg_dma_mark_bus_address(s);
    }
    return t;
  }

  // ── dma_buf_ops ──────────────────────────────────────────────────────────────────────────

  #ops(priv: HlDmabufPriv): DmaBufOps {
    if (this.generation === "v3")
      return {
        // models the v3 hl_dmabuf_attach() / hl_dmabuf_detach(): priv in, priv out, no checks
        attach: (_d, a) => {
          a.priv = priv;
          this.#traceAttach(a, null);
          return kok();
        },
        detach: (_d, a) => {
          a.priv = null;
        },
        map_dma_buf: (a, _dir) => this.#mapV3(a),
        // the v3 unmap: nothing to do, but the callback is mandatory
        unmap_dma_buf: (a, sgt) => this.#traceUnmap(a, sgt),
        release: () => this.#releaseV3(priv),
      };
    return {
      attach: (_d, a) => this.#attach(a),
      map_dma_buf: (a, dir) => this.#map(priv, a, dir),
      unmap_dma_buf: (a, sgt, dir) => this.#unmap(a, sgt, dir),
      release: () => this.#release(priv),
    };
  }

  #traceAttach(a: DmaBufAttachment, distance: number | null): void {
    this.sys.trace.emit(
      "accel:attach",
      `${this.name}: ${a.describe()}: ${distance === null ? "no P2P check" : `pci_p2pdma_distance ${distance}`}, peer2peer ${a.peer2peer}`,
      { device: a.dev.fn.name, distance, peer2peer: a.peer2peer },
    );
  }

  /** models hl_dmabuf_attach(): never fails; clears peer2peer when P2P is impossible. */
  #attach(a: DmaBufAttachment): KResult {
    if (!this.attachChecksDistance) {
      this.#traceAttach(a, null);
      return kok();
    }
    const dist = this.sys.p2pdma.distanceMany(this.fn, [a.dev.fn], true);
    if (dist < 0) a.peer2peer = false;
    this.#traceAttach(a, dist);
    return kok();
  }

  /**
   * The exported range as runs of contiguous device addresses, from `offset`, each at most
   * `maxSeg`. models the entry walk of alloc_sgt_from_device_pages()
   */
  #runs(
    pages: readonly bigint[],
    pageSize: bigint,
    offset: bigint,
    size: bigint,
    maxSeg: bigint,
  ): Run[] {
    const out: Run[] = [];
    let left = size;
    let skip = offset;
    for (const page of pages) {
      if (left === 0n) break;
      if (skip >= pageSize) {
        skip -= pageSize;
        continue;
      }
      let cur = page + skip;
      let avail = pageSize - skip;
      skip = 0n;
      while (avail > 0n && left > 0n) {
        const last = out[out.length - 1];
        const extend = last !== undefined && last.addr + last.len === cur && last.len < maxSeg;
        const take = [avail, left, extend ? maxSeg - last.len : maxSeg].reduce(minBig);
        if (extend) last.len += take;
        else out.push({ addr: cur, len: take });
        cur += take;
        avail -= take;
        left -= take;
      }
    }
    return out;
  }

  #exportedRuns(priv: HlDmabufPriv, maxSeg: bigint): Run[] {
    const p = priv.phys_pg_pack;
    // without DRAM VM: one "page" of the exported size at the physical address
    return p
      ? this.#runs(p.pages, p.page_size, priv.offset, priv.size, maxSeg)
      : this.#runs([priv.device_phys_addr], priv.size, 0n, priv.size, maxSeg);
  }

  /**
   * -EPERM without peer2peer; then by `mapMode`. map-resource: max_seg =
   * ALIGN_DOWN(dma_get_max_seg_size(importer), PAGE_SIZE) (< PAGE_SIZE: -EINVAL), entries split at
   * discontiguities and at max_seg, each page-less with a dma_map_resource() address (mapping
   * error: unwind, -ENOMEM), orig_nents = 0. p2p-pages: the same runs as P2P pages through
   * dma_map_sgtable(). phys-vec: the contiguous BAR ranges through dma_buf_phys_vec_to_sgt().
   * models hl_map_dmabuf() + alloc_sgt_from_device_pages()
   */
  #map(priv: HlDmabufPriv, a: DmaBufAttachment, dir: DmaDirection): KResult<SgTable> {
    if (!a.peer2peer) {
      this.log.push("Failed to map dmabuf because p2p is disabled");
      return this.#traceMapFail(
        a,
        kerr("EPERM", `${this.name}: Failed to map dmabuf because p2p is disabled`),
      );
    }
    const dev = a.dev;
    let r: KResult<SgTable>;
    if (this.mapMode === "phys-vec") {
      const vec: PhysVec[] = this.#exportedRuns(priv, NO_SPLIT).map((x) => ({
        paddr: this.barAddress(x.addr),
        len: x.len,
      }));
      r = dmaBufPhysVecToSgt(this.sys, a, this.provider, vec, priv.size, dir);
    } else {
      const maxSeg = (BigInt(dev.maxSegSize) / PAGE_SIZE_N) * PAGE_SIZE_N;
      if (maxSeg < PAGE_SIZE_N)
        return this.#traceMapFail(
          a,
          kerr("EINVAL", `dma_max_seg_size ${maxSeg} can't be smaller than PAGE_SIZE`),
        );
      const runs = this.#exportedRuns(priv, maxSeg);
      if (runs.reduce((s, x) => s + x.len, 0n) !== priv.size)
        return this.#traceMapFail(a, kerr("ENOMEM", "sg table does not cover the exported size"));
      r =
        this.mapMode === "p2p-pages"
          ? this.#mapPages(runs, dev, dir, maxSeg)
          : this.#mapResource(runs, dev, dir);
    }
    if (!r.ok) {
      this.log.push(`failed (-${r.errno}) to initialize sgt for dmabuf`);
      return this.#traceMapFail(a, r);
    }
    this.outstanding.add(r.value);
    this.#traceMap(a, r.value);
    return r;
  }

  #traceMapFail<T>(a: DmaBufAttachment, r: KResult<T>): KResult<T> {
    if (!r.ok)
      this.sys.trace.emit(
        "accel:map",
        `${this.name}: map for ${a.dev.name} (${this.generation === "v3" ? "v3" : this.mapMode}) failed: -${r.errno}`,
        { device: a.dev.fn.name, mode: this.mapMode, errno: r.errno },
      );
    return r;
  }

  #traceMap(a: DmaBufAttachment, sgt: SgTable): void {
    if (!this.sys.trace.enabled) return;
    const entries = dmaSegments(this.sys, a.dev, sgt);
    const mode = this.generation === "v3" ? "v3" : this.mapMode;
    this.sys.trace.emit(
      "accel:map",
      `${this.name}: mapped for ${a.dev.name} (${mode}): ${dmaSegsText(entries)}`,
      { device: a.dev.fn.name, mode, entries },
    );
  }

  #traceUnmap(a: DmaBufAttachment, sgt: SgTable): void {
    this.sys.trace.emit(
      "accel:unmap",
      `${this.name}: unmapped the table of ${a.dev.name} (${sgt.nents} segment(s))`,
      {
        device: a.dev.fn.name,
        mode: this.generation === "v3" ? "v3" : this.mapMode,
        nents: sgt.nents,
      },
    );
  }

  #mapResource(runs: Run[], dev: DmaDevice, dir: DmaDirection): KResult<SgTable> {
    const t = sg_alloc_table(runs.length, { name: `${this.name} dmabuf sgt for ${dev.name}` });
    if (!t.ok) return t;
    const sgt = t.value;
    const entries = [...for_each_sgtable_sg(sgt)];
    for (let i = 0; i < runs.length; i++) {
      const s = entries[i]!;
      const run = runs[i]!;
      const bar = this.barAddress(run.addr);
      // models dma_map_resource(dev, bar_address, chunk_size, dir, DMA_ATTR_SKIP_CPU_SYNC)
      const dma = this.sys.dma.mapPhys(dev, bar, run.len, dir, { mmio: true, skipCpuSync: true });
      if (this.sys.dma.mappingError(dev, dma)) {
        for (let j = 0; j < i; j++) {
          const e = entries[j]!;
          this.sys.dma.unmapPhys(dev, e.dma_address, BigInt(e.dma_length), dir, {
            mmio: true,
            skipCpuSync: true,
          });
        }
        sg_free_table(sgt);
        return kerr("ENOMEM", `dma_map_resource of ${hex(bar)} for ${dev.name} failed`);
      }
      sg_set_page(s, null, Number(run.len), 0);
      s.dma_address = dma;
      s.dma_length = Number(run.len);
    }
    // the CPU list is not usable: only the DMA side is
    sgt.orig_nents = 0;
    return kok(sgt);
  }

  /** The generalised way: P2P pages of the BAR, dma_map_sgtable() (P2PDMA map type decides). */
  #mapPages(runs: Run[], dev: DmaDevice, dir: DmaDirection, maxSeg: bigint): KResult<SgTable> {
    const pages: Page[] = [];
    for (const run of runs)
      for (let o = 0n; o < run.len; o += PAGE_SIZE_N) {
        const phys = this.barAddress(run.addr + o);
        pages.push({ pfn: phys >> BigInt(PAGE_SHIFT), pgmap: this.sys.p2pmem.pgmapOf(phys) });
      }
    const t = sg_alloc_table_from_pages_segment(
      pages,
      0,
      BigInt(pages.length) * PAGE_SIZE_N,
      Number(maxSeg),
      { name: `${this.name} p2p sgt for ${dev.name}` },
    );
    if (!t.ok) return t;
    const m = this.sys.dma.mapSgtable(dev, t.value, dir);
    if (!m.ok) {
      sg_free_table(t.value);
      return m;
    }
    return t;
  }

  /**
   * models hl_unmap_dmabuf(): dma_unmap_resource each entry, orig_nents = nents, free (p2p-pages:
   * dma_unmap_sgtable; phys-vec: dma_buf_free_sgt).
   */
  #unmap(a: DmaBufAttachment, sgt: SgTable, dir: DmaDirection): void {
    if (!this.outstanding.delete(sgt))
      throw new KernelBug(`${this.name}: unmap_dma_buf got ${sgt.name}, which it never handed out`);
    this.#traceUnmap(a, sgt);
    if (this.mapMode === "phys-vec") {
      dmaBufFreeSgt(this.sys, a, sgt, dir);
      return;
    }
    if (this.mapMode === "p2p-pages") {
      this.sys.dma.unmapSgtable(a.dev, sgt, dir);
      sg_free_table(sgt);
      return;
    }
    for (const s of for_each_sgtable_dma_sg(sgt))
      this.sys.dma.unmapPhys(a.dev, dmaAddr(s.dma_address), BigInt(s.dma_length), dir, {
        mmio: true,
        skipCpuSync: true,
      });
    sgt.orig_nents = sgt.nents;
    sg_free_table(sgt);
  }

  /** models the v3 hl_map_dmabuf(): the table built at export, whoever asks. */
  #mapV3(a: DmaBufAttachment): KResult<SgTable> {
    const priv = a.priv as HlDmabufPriv | null;
    if (!priv?.sgt) throw new KernelBug(`${this.name}: v3 map on ${a.describe()} with no priv`);
    this.#traceMap(a, priv.sgt);
    return kok(priv.sgt);
  }

  /**
   * models hl_release_dmabuf(): export_cnt--, device count--, ctx put, then the device file's
   * reference (whose release may tear the context down).
   */
  #release(priv: HlDmabufPriv): void {
    const ctx = priv.ctx;
    if (!ctx) throw new KernelBug(`${this.name}: hl_release_dmabuf() without a context`);
    this.exports.delete(priv);
    if (priv.memhash_hnode) priv.memhash_hnode.export_cnt--;
    this.dmabuf_export_cnt--;
    this.#traceRelease(priv);
    this.#ctxPut(ctx);
    if (priv.holdsFile) ctx.file.put(); // paired with get_file() in export_dmabuf()
  }

  /** models the v3 hl_release_dmabuf(): exporting_cnt--, ctx put, the table freed. */
  #releaseV3(priv: HlDmabufPriv): void {
    this.exports.delete(priv);
    const ctx = priv.ctx;
    if (!ctx)
      throw new KernelBug(
        `${this.name}: NULL pointer dereference in the v3 hl_release_dmabuf(): hl_dmabuf->ctx is set only after dma_buf_fd() succeeded`,
      );
    if (priv.phys_pg_pack) priv.phys_pg_pack.exporting_cnt--;
    this.#traceRelease(priv);
    this.#ctxPut(ctx);
    if (priv.sgt) sg_free_table(priv.sgt);
    priv.sgt = null;
  }

  #traceRelease(priv: HlDmabufPriv): void {
    this.sys.trace.emit(
      "accel:release",
      `${this.name}: ${priv.dmabuf?.describe() ?? "dma-buf"} released`,
      { device: this.fn.name, ino: priv.dmabuf?.ino, size: priv.size },
    );
  }

  // ── import (a model choice: habanalabs has no dma-buf import path) ───────────────────────

  /** The importer callbacks of every import (model): peer memory accepted, invalidation drops the mapping. */
  readonly #importOps: DmaBufAttachOps = {
    allow_peer2peer: true,
    move_notify: (a) => this.#importMoveNotify(a),
  };
  /** Imports not released yet. */
  readonly imports = new Set<AccelImport>();
  #dmaDevice: DmaDevice | null = null;
  #nextImport = 1;

  /**
   * The accelerator's own DMA view (the requester of its DMA engine). Created on first use with
   * the mask hl_pci_init() sets: prop->dma_mask, 64 bits on Gaudi2, 48 on Gaudi1 (no DRAM VM).
   */
  get dmaDev(): DmaDevice {
    if (!this.#dmaDevice) {
      this.#dmaDevice = this.sys.device(this.fn);
      dmaSetMaskAndCoherent(this.#dmaDevice, this.dramVirtualMemory ? 64 : 48);
    }
    return this.#dmaDevice;
  }

  /**
   * MODEL (no habanalabs counterpart): takes a reference on the dma-buf behind `proc`'s `fd`
   * (-EBADF / -EINVAL as dma_buf_get says) and attaches dynamically with allow_peer2peer; the
   * exporter's attach errno is returned (the reference dropped). Nothing is mapped yet.
   * Device not operational → -EBUSY. (dma_buf_get + dma_buf_dynamic_attach, as an ODP importer does)
   */
  importDmabuf(proc: Process, fd: number): KResult<AccelImport> {
    if (!this.operational)
      return kerr("EBUSY", `${this.name}: device is disabled or in reset, can't import`);
    const got = dmaBufGet(proc, fd);
    if (!got.ok) return got;
    const dmabuf = got.value;
    const priv: { imp: AccelImport | null } = { imp: null };
    const a = dmaBufDynamicAttach(dmabuf, this.dmaDev, this.#importOps, priv);
    if (!a.ok) {
      dmaBufPut(dmabuf);
      this.sys.trace.emit(
        "accel:import",
        `${this.name}: import of ${dmabuf.describe()} failed: the exporter's attach said -${a.errno}`,
        { device: this.fn.name, ino: dmabuf.ino, errno: a.errno },
      );
      return a;
    }
    const imp: AccelImport = {
      id: this.#nextImport++,
      dmabuf,
      attach: a.value,
      sgt: null,
      maps: 0,
      invalidations: 0,
    };
    priv.imp = imp;
    this.imports.add(imp);
    this.sys.trace.emit(
      "accel:import",
      `${this.name}: imported ${dmabuf.describe()} (import #${imp.id}), dynamic attachment, peer2peer ${a.value.peer2peer}`,
      { device: this.fn.name, ino: dmabuf.ino, import: imp.id, peer2peer: a.value.peer2peer },
    );
    return kok(imp);
  }

  /** MODEL: unmap if mapped, detach, and drop the dma-buf reference. (dma_buf_detach + dma_buf_put) */
  releaseImport(imp: AccelImport): void {
    if (!this.imports.delete(imp))
      throw new KernelBug(`${this.name}: import #${imp.id} is not live (released twice?)`);
    if (imp.sgt) {
      dmaBufUnmapAttachmentUnlocked(imp.attach, imp.sgt, "bidirectional");
      imp.sgt = null;
    }
    dmaBufDetach(imp.dmabuf, imp.attach);
    this.sys.trace.emit(
      "accel:import_release",
      `${this.name}: import #${imp.id} of ${imp.dmabuf.describe()} released`,
      { device: this.fn.name, import: imp.id },
    );
    dmaBufPut(imp.dmabuf);
  }

  /**
   * MODEL: the exporter moves (resv held): the mapping is handed back at once; the next DMA maps
   * again (what an ODP importer's invalidation does).
   */
  #importMoveNotify(a: DmaBufAttachment): void {
    const imp = (a.importer_priv as { imp: AccelImport | null }).imp;
    if (!imp) return;
    imp.invalidations++;
    if (imp.sgt) {
      dmaBufUnmapAttachment(a, imp.sgt, "bidirectional");
      imp.sgt = null;
    }
    this.sys.trace.emit(
      "accel:import_invalidate",
      `${this.name}: move_notify on ${a.dmabuf.describe()}: import #${imp.id} unmapped (re-mapped at the next DMA)`,
      { device: this.fn.name, import: imp.id, invalidations: imp.invalidations },
    );
  }

  /** MODEL: the import's table, mapped now (under the resv) if it is not; the exporter's errno. */
  #importMap(imp: AccelImport): KResult<SgTable> {
    if (imp.sgt) return kok(imp.sgt);
    const m = dmaBufMapAttachmentUnlocked(imp.attach, "bidirectional");
    if (!m.ok) {
      this.sys.trace.emit(
        "accel:import_map",
        `${this.name}: map of import #${imp.id} failed: ${imp.dmabuf.exp_name} said -${m.errno}${m.reason ? ` (${m.reason})` : ""}`,
        { device: this.fn.name, import: imp.id, errno: m.errno },
      );
      return m;
    }
    imp.sgt = m.value;
    imp.maps++;
    this.sys.trace.emit(
      "accel:import_map",
      `${this.name}: import #${imp.id} mapped (${m.value.nents} segment(s))`,
      { device: this.fn.name, import: imp.id, maps: imp.maps },
    );
    return m;
  }

  /**
   * `[addr, addr + length)` of HBM as CPU-physical (BAR) runs: with DRAM VM `addr` is a device VA
   * inside one HL_MEM_OP_MAP mapping of a DRAM allocation; without it a device physical address
   * in the user DRAM range. Anything else, or HBM beyond the BAR window (not backed in the model)
   * → -EINVAL.
   */
  #hbmRuns(addr: bigint, length: bigint): KResult<{ phys: PhysAddr; len: bigint }[]> {
    const barEnd = this.dram_pci_bar_start + this.dram_pci_bar_size;
    const out: { phys: PhysAddr; len: bigint }[] = [];
    const push = (dev: bigint, len: bigint): boolean => {
      const phys = this.barAddress(dev);
      if (phys < this.dram_pci_bar_start || phys + len > barEnd) return false;
      const last = out[out.length - 1];
      if (last && last.phys + last.len === phys) last.len += len;
      else out.push({ phys, len });
      return true;
    };
    if (!this.dramVirtualMemory) {
      if (addr < this.dram_user_base_address || addr + length > this.dram_end_address)
        return kerr("EINVAL", `${hex(addr)} (+${hex(length)}) is outside the user DRAM range`);
      if (!push(addr, length))
        return kerr("EINVAL", `${hex(addr)} (+${hex(length)}) is outside the DRAM BAR window`);
      return kok(out);
    }
    const node = [...this.mem_hash.values()].find(
      (h) => addr >= h.vaddr && addr + length <= h.vaddr + h.size,
    );
    const pack = node ? this.idr.get(node.handle) : undefined;
    if (!node || !pack || pack.vm_type !== "phys-pack")
      return kerr("EINVAL", `${hex(addr)} (+${hex(length)}) is not inside a DRAM mapping`);
    let off = addr - node.vaddr;
    let left = length;
    while (left > 0n) {
      const page = pack.pages[Number(off / pack.page_size)]!;
      const inPage = off % pack.page_size;
      const n = minBig(pack.page_size - inPage, left);
      if (!push(page + inPage, n))
        return kerr("EINVAL", `DRAM page ${hex(page)} is outside the DRAM BAR window`);
      off += n;
      left -= n;
    }
    return kok(out);
  }

  /**
   * MODEL: a DMA engine job copying `length` bytes between HBM at `hbmAddr` (see `#hbmRuns`) and
   * byte `importOffset` of an import, in `dir`. Range outside the import → -EINVAL; the import
   * is mapped first if it is not (the exporter's errno comes back: habanalabs-style -EPERM
   * without P2P, an amdgpu exporter migrating to GTT instead); the import side is reached by DMA
   * through the fabric, HBM internally. A fault → -EIO (a write fault may leave part written).
   */
  dmaCopy(
    imp: AccelImport,
    importOffset: bigint,
    hbmAddr: bigint,
    length: bigint,
    dir: "hbm-to-import" | "import-to-hbm",
  ): KResult<AccelCopyResult> {
    if (!this.imports.has(imp)) throw new KernelBug(`${this.name}: import #${imp.id} is not live`);
    if (importOffset < 0n || length < 0n || importOffset + length > imp.dmabuf.size)
      return kerr(
        "EINVAL",
        `[${hex(importOffset)}, ${hex(importOffset + length)}) outside ${imp.dmabuf.describe()}`,
      );
    const hbm = this.#hbmRuns(hbmAddr, length);
    if (!hbm.ok) return hbm;
    const m = this.#importMap(imp);
    if (!m.ok) return m;
    const segs = dmaSegments(this.sys, imp.attach.dev, m.value);
    const dev = this.dmaDev;
    let fault: DmaFault | null = null;
    if (dir === "hbm-to-import") {
      const data = new Uint8Array(Number(length));
      let at = 0;
      for (const r of hbm.value) {
        data.set(this.sys.memory.read(r.phys, Number(r.len)), at);
        at += Number(r.len);
      }
      fault = walkSegments(segs, importOffset, length, (dma, lo, hi) => {
        const w = this.sys.deviceWrite(dev, dma, data.subarray(lo, hi));
        return w.ok ? null : w.fault;
      });
    } else {
      const data = new Uint8Array(Number(length));
      fault = walkSegments(segs, importOffset, length, (dma, lo, hi) => {
        const r = this.sys.fabric.dmaRead(dev.fn, dma, hi - lo);
        if (!r.ok) return r.fault;
        data.set(r.data!, lo);
        return null;
      });
      if (!fault) {
        let at = 0;
        for (const r of hbm.value) {
          this.sys.memory.write(r.phys, data.subarray(at, at + Number(r.len)));
          at += Number(r.len);
        }
      }
    }
    if (fault) {
      const msg = `${this.name}: DMA ${dir} of import #${imp.id} faulted at ${hex(fault.address)}: ${fault.reason} (at ${fault.at})`;
      this.sys.trace.emit("accel:dma", msg, { device: this.fn.name, import: imp.id, errno: "EIO" });
      return kerr("EIO", msg);
    }
    const kinds = [...new Set(segs.map((x) => x.kind))];
    this.sys.trace.emit(
      "accel:dma",
      `${this.name}: DMA ${dir} ${length} bytes, HBM ${hex(hbmAddr)} <-> import #${imp.id}+${hex(importOffset)} (${kinds.join(", ")})`,
      { device: this.fn.name, import: imp.id, dir, bytes: length, kinds },
    );
    return kok({ bytes: length, kinds });
  }

  // ── leaks ────────────────────────────────────────────────────────────────────────────────

  /**
   * What the driver still holds: tables handed out and not unmapped, exports whose dma-buf was
   * not released, context references that neither the open device file nor an export explains,
   * and DRAM still allocated (or accounted) once no context is left.
   */
  /**
   * What HL_MEM_OP_EXPORT_DMABUF_FD's `addr` names for an allocation mapped at `va`: the v3 uAPI
   * exported a DRAM-VM allocation by its handle, the merged one by device VA.
   */
  exportAddr(handle: bigint, va: bigint): bigint {
    return this.generation === "v3" && this.dramVirtualMemory ? handle : va;
  }

  /** The CPU physical (BAR) address of byte `off` of an exported buffer, or null if not ours. */
  backingPhys(d: DmaBuf): ((off: bigint) => bigint) | null {
    const priv = [...this.exports].find((p) => p.dmabuf === d);
    if (!priv) return null;
    return (off) => {
      const pack = priv.phys_pg_pack;
      if (!pack) return this.barAddress(priv.device_phys_addr + off);
      const at = priv.offset + off;
      const page = pack.pages[Number(at / pack.page_size)]!;
      return this.barAddress(page + (at % pack.page_size));
    };
  }

  leaks(): Leak[] {
    const owner = `${this.name} ${this.fn.name}`;
    const out: Leak[] = [];
    out.push(...unmappedTableLeaks(owner, this.outstanding));
    for (const p of this.exports)
      out.push({
        kind: "accel-export",
        owner,
        detail: `${p.dmabuf?.describe() ?? "dma-buf"} of ${hex(p.size)} bytes (${p.phys_pg_pack ? `handle ${p.phys_pg_pack.handle}` : `phys ${hex(p.device_phys_addr)}`}) not released: holds a context reference${p.holdsFile ? ` and ${this.devicePath}` : ""}`,
      });
    for (const i of this.imports)
      out.push({
        kind: "accel-import",
        owner,
        detail: `import #${i.id} of ${i.dmabuf.describe()} not released${i.sgt ? " (still mapped)" : ""}: holds an attachment and a dma-buf reference`,
      });
    const ctx = this.ctx;
    if (ctx) {
      const explained =
        (ctx.fileReleased ? 0 : 1) + [...this.exports].filter((p) => p.ctx === ctx).length;
      if (ctx.refs > explained)
        out.push({
          kind: "ctx-ref",
          owner,
          detail: `context asid ${ctx.asid} of ${ctx.owner.name} has ${ctx.refs} reference(s), ${ctx.refs - explained} not held by its file or an export`,
        });
    } else {
      for (const p of this.idr.values())
        out.push({
          kind: "device-memory",
          owner,
          detail: `handle ${p.handle}: ${hex(p.total_size)} bytes of DRAM at ${hex(p.pages[0] ?? 0n)} still allocated with no context left`,
        });
      if (this.idr.size === 0 && this.dram_used_mem !== 0n)
        out.push({
          kind: "device-memory",
          owner,
          detail: `dram_used_mem is ${hex(this.dram_used_mem)} with no context left`,
        });
    }
    return out;
  }
}

/** One dma-buf the accelerator imported (model; see `AccelDevice.importDmabuf`). */
export interface AccelImport {
  readonly id: number;
  readonly dmabuf: DmaBuf;
  readonly attach: DmaBufAttachment;
  /** The table while mapped: null before the first DMA and after a move_notify. */
  sgt: SgTable | null;
  /** How many times it was mapped, and invalidated by move_notify. */
  maps: number;
  invalidations: number;
}

/** What `AccelDevice.dmaCopy` did. */
export interface AccelCopyResult {
  readonly bytes: bigint;
  /** The kinds of DMA address the engine used on the import side. */
  readonly kinds: readonly DmaAddrKind[];
}

/**
 * ioctl(fd, DRM_IOCTL_HL_MEMORY, args) from `proc` on its device fd: what the ioctl wrote back.
 */
export function hlMemIoctl(proc: Process, fd: number, args: HlMemIn): KResult<HlMemOut> {
  const holder: HlMemArgs = { in: args };
  const r = sysIoctl(proc, fd, DRM_IOCTL_HL_MEMORY, holder);
  if (!r.ok) return r;
  if (!holder.out) return kerr("ENOTTY", `fd ${fd} is not an accelerator device`);
  return kok(holder.out);
}
