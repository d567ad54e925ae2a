/**
 * @module vfio
 * vfio-pci as a dma-buf exporter of MMIO (drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_core.c,
 * vfio_pci_config.c, drivers/vfio/vfio_main.c; spec dma-buf.md §3.1, §3.4, §8.34–38): a PCI
 * function bound to vfio-pci, opened by a user process (the device fd of the group path), the
 * VFIO_DEVICE_FEATURE ioctl with VFIO_DEVICE_FEATURE_DMA_BUF exporting ranges of one BAR as a
 * dma-buf, and the revocation of those buffers when the BARs stop decoding.
 *
 * dma_buf_ops: attach refuses an importer without `peer2peer` (-EOPNOTSUPP: every static
 * importer) and a revoked buffer (-ENODEV); map refuses a revoked buffer (-ENODEV) and otherwise
 * hands the ranges to `dma_buf_phys_vec_to_sgt()` (../dma-buf/phys-vec.ts) with the BAR's P2PDMA
 * provider, which decides bus address / IOVA / -EINVAL by the map type; unmap is
 * `dma_buf_free_sgt()`. Where the profile says so (`vfioDmaBuf.pinRefused`, v6.19-rc8 on) there is
 * a pin that always fails with -EOPNOTSUPP, so pinned importers (and pin-on-map) are refused.
 *
 * Revocation (`vfio_pci_dma_buf_move` / `vfio_pci_dma_buf_cleanup`), under the buffer's resv with
 * `dma_buf_move_notify()` to dynamic importers:
 * - a config write clearing PCI_COMMAND_MEMORY revokes; a write leaving memory enabled restores
 *   (a second move_notify, after which maps work again);
 * - VFIO_DEVICE_RESET revokes around the reset and restores after it when memory is enabled;
 * - the last close of the device revokes for good (the buffer forgets the device).
 * A buffer exported while memory is disabled starts revoked.
 *
 * On a profile without vfio dma-buf (6.1) the feature does not exist: VFIO_DEVICE_FEATURE with
 * index 11 ends in vfio_pci_core_ioctl_feature()'s default, -ENOTTY.
 *
 * Model choices: only the group path's device fd (no iommufd cdev binding, no VFIO container or
 * DMA mapping of user memory), the PCI_COMMAND register of the emulated config space, no power
 * states (D3hot, runtime PM entry also revoke in the kernel), no hot reset of a device set, no
 * unbind (vfio_device_try_get_registration never fails).
 */

import { hex } from "../../hw/address.ts";
import type { PciFunction } from "../../hw/machine.ts";
import type { DmaDirection } from "../dma/mapping.ts";
import type { DmaBufAttachment } from "../dma-buf/attachment.ts";
import {
  type DmaBuf,
  type DmaBufCore,
  type DmaBufOps,
  dmaBufExport,
  dmaBufMoveNotify,
} from "../dma-buf/dma-buf.ts";
import {
  dmaBufFd,
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
import type { SgTable } from "../lib/scatterlist.ts";
import { type P2pProvider, PAGE_SIZE_N } from "../mm/page.ts";
import type { System } from "../system.ts";
import { dmaSegments, dmaSegsText } from "./dma-segs.ts";

// include/uapi/linux/vfio.h
/** `VFIO_TYPE` (';') and `VFIO_BASE`. */
export const VFIO_TYPE = 0x3b;
export const VFIO_BASE = 100;
const IO = (type: number, nr: number): number => ((type << 8) | nr) >>> 0;
/** `_IO(VFIO_TYPE, VFIO_BASE + 11)`. */
export const VFIO_DEVICE_RESET = IO(VFIO_TYPE, VFIO_BASE + 11);
/** `_IO(VFIO_TYPE, VFIO_BASE + 17)`. */
export const VFIO_DEVICE_FEATURE = IO(VFIO_TYPE, VFIO_BASE + 17);
export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;
/** Features vfio-pci implements besides the dma-buf one (not modelled: using them throws). */
export const VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0;
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3;
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4;
export const VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5;
export const VFIO_DEVICE_FEATURE_BUS_MASTER = 10;
export const VFIO_DEVICE_FEATURE_DMA_BUF = 11;
/** BARs are regions 0..5; the ROM is region 6. */
export const VFIO_PCI_ROM_REGION_INDEX = 6;
/** `offsetofend(struct vfio_device_feature, flags)`: argsz + flags. */
export const VFIO_DEVICE_FEATURE_MINSZ = 8;
/** `sizeof(struct vfio_device_feature_dma_buf)` (the flexible dma_ranges[] not counted). */
export const VFIO_DEVICE_FEATURE_DMA_BUF_SIZE = 16;
/** `sizeof(struct vfio_region_dma_range)`. */
export const VFIO_REGION_DMA_RANGE_SIZE = 16;

// include/uapi/linux/pci_regs.h
export const PCI_COMMAND = 0x04;
export const PCI_COMMAND_IO = 0x1;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;

/** `DMA_IOVA_USE_SWIOTLB` (bit 63 of a dma_iova_state size): a dma-buf length may not have it. */
export const DMA_IOVA_USE_SWIOTLB = 1n << 63n;
/** What kmalloc can give memdup_user (KMALLOC_MAX_SIZE, x86-64 SLUB: 4 MiB). */
export const KMALLOC_MAX_SIZE = 4n << 20n;

const U64 = (1n << 64n) - 1n;

/** `struct vfio_region_dma_range`. */
export interface VfioRegionDmaRange {
  readonly offset: bigint;
  readonly length: bigint;
}

/** `struct vfio_device_feature_dma_buf`; `dma_ranges` shorter than `nr_ranges` is a copy fault. */
export interface VfioDeviceFeatureDmaBuf {
  readonly region_index: number;
  /** Flags for the new file and fd (O_RDWR, O_CLOEXEC, ...). */
  readonly open_flags: number;
  /** Must be 0. */
  readonly flags: number;
  readonly nr_ranges: number;
  readonly dma_ranges: readonly VfioRegionDmaRange[];
}

/** `struct vfio_device_feature` as the ioctl receives it; `data` missing is a copy fault. */
export interface VfioDeviceFeature {
  readonly argsz: number;
  readonly flags: number;
  readonly data?: VfioDeviceFeatureDmaBuf | null;
}

export interface VfioPciOptions {
  readonly name?: string | undefined;
  /**
   * The driver has `pci_ops->get_dmabuf_phys` (vfio-pci does; default true). false models a
   * variant driver without it: the dma-buf feature is -EOPNOTSUPP.
   */
  readonly getDmabufPhys?: boolean | undefined;
  /** `vdev->reset_works` (a function reset exists); default true. */
  readonly resetWorks?: boolean | undefined;
}

/** `struct vfio_pci_dma_buf`. */
export interface VfioPciDmaBuf {
  dmabuf: DmaBuf | null;
  /** Cleared by vfio_pci_dma_buf_cleanup() (the device was closed). */
  vdev: VfioPciDevice | null;
  readonly size: bigint;
  readonly phys_vec: readonly PhysVec[];
  readonly provider: P2pProvider;
  readonly nr_ranges: number;
  readonly region_index: number;
  revoked: boolean;
}

/** A PCI function bound to vfio-pci (`struct vfio_pci_core_device`). */
export class VfioPciDevice implements LeakSource {
  readonly sys: System;
  readonly core: DmaBufCore;
  readonly fn: PciFunction;
  readonly name: string;
  readonly getDmabufPhys: boolean;
  readonly resetWorks: boolean;
  /** `vdev->dmabufs`: exported buffers still tied to the device, in export order. */
  readonly dmabufs: VfioPciDmaBuf[] = [];
  /** Buffers whose release has not run (tied to the device or not). */
  readonly exports = new Set<VfioPciDmaBuf>();
  /** Tables map handed out and unmap has not taken back. */
  readonly outstanding = new Set<SgTable>();
  /** `vfio_device_try_get_registration()` references held by dma-bufs. */
  registrations = 0;
  /** dev_dbg / pci_info lines. */
  readonly log: string[] = [];
  /** The open device files (`open_count` is their number). */
  readonly #files = new Set<KFile>();
  readonly #fops: FileOperations;
  /** The emulated PCI_COMMAND of `vdev->vconfig` (valid while open). */
  #vcmd = 0;
  /** Per memory BAR, `pcim_p2pdma_provider()`; empty on a profile without vfio dma-buf. */
  readonly #providers = new Map<number, P2pProvider>();

  constructor(sys: System, core: DmaBufCore, bdf: string, opts: VfioPciOptions = {}) {
    const fn = sys.machine.byBdf(bdf);
    if (!fn) throw new Error(`vfio-pci: no function ${bdf}`);
    this.sys = sys;
    this.core = core;
    this.fn = fn;
    this.name = opts.name ?? `vfio-pci ${fn.name}`;
    this.getDmabufPhys = opts.getDmabufPhys ?? true;
    this.resetWorks = opts.resetWorks ?? true;
    if (core.profile.vfioDmaBuf) {
      // models pcim_p2pdma_init() at probe ("vfio/pci: Enable peer-to-peer DMA transactions by
      // default"): a provider for every memory BAR, no ZONE_DEVICE pages
      for (const [bar, p] of sys.p2pmem.init(fn).providers)
        if (fn.desc.bars?.some((b) => b.index === bar && b.size > 0n)) this.#providers.set(bar, p);
    }
    this.#fops = {
      name: "vfio_device_fops",
      unlocked_ioctl: (file, cmd, arg, proc) => this.#ioctl(file, cmd, arg, proc),
      release: (file) => this.#release(file),
    };
  }

  /** `open_count`: device files open. */
  get openCount(): number {
    return this.#files.size;
  }

  /** The emulated PCI_COMMAND register. */
  get command(): number {
    return this.#vcmd;
  }

  /** CPU physical address of byte `offset` of BAR `bar` (`pci_resource_start() + offset`). */
  barAddress(bar: number, offset = 0n): bigint {
    const b = this.fn.desc.bars?.find((x) => x.index === bar);
    if (!b) throw new Error(`${this.name}: no BAR ${bar}`);
    return b.start + offset;
  }

  #emit(ev: string, msg: string, data?: Readonly<Record<string, unknown>>): void {
    this.sys.trace.emit(ev, `${this.name}: ${msg}`, { device: this.fn.name, ...data });
  }

  // ── the device file ───────────────────────────────────────────────────────────────────────

  /**
   * The device fd (VFIO_GROUP_GET_DEVICE_FD). The first open enables the device: memory decoding
   * on, so the emulated PCI_COMMAND has PCI_COMMAND_MEMORY (vfio_config_init copies it).
   * models vfio_device_open() → vfio_pci_core_open_device() → vfio_pci_core_enable()
   */
  open(proc: Process, flags: number = O_RDWR | O_CLOEXEC): KResult<number> {
    const fd = proc.getUnusedFd();
    if (!fd.ok) return fd;
    if (this.#files.size === 0) this.#vcmd = PCI_COMMAND_MEMORY;
    const file = new KFile({ name: `vfio ${this.fn.name}`, fops: this.#fops, flags });
    this.#files.add(file);
    proc.install(fd.value, file, flags);
    this.#emit("vfio:open", `${proc.name} opened the device (open_count ${this.#files.size})`, {
      pid: proc.pid,
      fd: fd.value,
      openCount: this.#files.size,
    });
    return fd;
  }

  /**
   * The last close of the device: every exported buffer is revoked for good and forgets the
   * device; memory decoding goes off. models vfio_pci_core_close_device() (vfio_pci_dma_buf_cleanup
   * + vfio_pci_core_disable)
   */
  #release(file: KFile): void {
    if (!this.#files.delete(file)) return;
    if (this.#files.size > 0) return;
    this.#dmaBufCleanup();
    this.#vcmd = 0;
    this.#emit("vfio:close", "device closed (last file): vfio_pci_core_close_device");
  }

  #ioctl(file: KFile, cmd: number, arg: unknown, proc: Process): KResult<number> {
    if (!this.#files.has(file))
      throw new KernelBug(`${this.name}: ioctl on a file it never opened`);
    switch (cmd) {
      case VFIO_DEVICE_FEATURE:
        return this.#ioctlDeviceFeature(arg, proc);
      case VFIO_DEVICE_RESET:
        return this.#ioctlReset();
      default:
        // vfio_pci_core_ioctl(): the other VFIO_DEVICE_* ioctls are not modelled
        return kerr("ENOTTY", `${this.name}: ioctl 0x${cmd.toString(16)} is not modelled`);
    }
  }

  /**
   * Header checks, then dispatch by feature index. models vfio_ioctl_device_feature(): fault →
   * -EFAULT; argsz < 8 → -EINVAL; unknown flag bits → -EINVAL; GET and SET without PROBE →
   * -EINVAL; then vfio_pci_core_ioctl_feature(): DMA_BUF where the kernel has it, anything
   * unknown → -ENOTTY.
   */
  #ioctlDeviceFeature(arg: unknown, proc: Process): KResult<number> {
    if (typeof arg !== "object" || arg === null)
      return kerr("EFAULT", "VFIO_DEVICE_FEATURE: copy_from_user failed");
    const f = arg as VfioDeviceFeature;
    if (typeof f.argsz !== "number" || typeof f.flags !== "number")
      return kerr("EFAULT", "VFIO_DEVICE_FEATURE: copy_from_user failed");
    if (f.argsz < VFIO_DEVICE_FEATURE_MINSZ)
      return kerr("EINVAL", `VFIO_DEVICE_FEATURE: argsz ${f.argsz} < ${VFIO_DEVICE_FEATURE_MINSZ}`);
    const known =
      VFIO_DEVICE_FEATURE_MASK |
      VFIO_DEVICE_FEATURE_SET |
      VFIO_DEVICE_FEATURE_GET |
      VFIO_DEVICE_FEATURE_PROBE;
    if ((f.flags >>> 0) & ~known)
      return kerr("EINVAL", `VFIO_DEVICE_FEATURE: unknown flag bits 0x${f.flags.toString(16)}`);
    if (
      !(f.flags & VFIO_DEVICE_FEATURE_PROBE) &&
      f.flags & VFIO_DEVICE_FEATURE_SET &&
      f.flags & VFIO_DEVICE_FEATURE_GET
    )
      return kerr("EINVAL", "VFIO_DEVICE_FEATURE: GET and SET together without PROBE");
    const index = f.flags & VFIO_DEVICE_FEATURE_MASK;
    const argsz = f.argsz - VFIO_DEVICE_FEATURE_MINSZ;
    if (index === VFIO_DEVICE_FEATURE_DMA_BUF && this.core.profile.vfioDmaBuf)
      return this.#featureDmaBuf(f.flags, f.data, argsz, proc);
    if (
      [
        VFIO_DEVICE_FEATURE_PCI_VF_TOKEN,
        VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
        VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP,
        VFIO_DEVICE_FEATURE_LOW_POWER_EXIT,
      ].includes(index) ||
      (index === VFIO_DEVICE_FEATURE_BUS_MASTER && this.core.profile.id !== "6.1")
    )
      throw new Error(`${this.name}: VFIO_DEVICE_FEATURE ${index} exists but is not modelled`);
    // the migration and dirty-tracking features of vfio_main.c need mig/log ops vfio-pci lacks
    return kerr(
      "ENOTTY",
      `${this.name}: VFIO_DEVICE_FEATURE ${index} is not a feature of this kernel's vfio-pci`,
    );
  }

  /**
   * Which of GET/SET the feature supports, PROBE, and the minimum size. 1: go on; 0: PROBE
   * answered; else the error. models vfio_check_feature()
   */
  static checkFeature(
    flags: number,
    argsz: number,
    supported: number,
    minsz: number,
  ): KResult<0 | 1> {
    if (flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET) & ~supported)
      return kerr("EINVAL", "VFIO_DEVICE_FEATURE: operation not supported by this feature");
    if (flags & VFIO_DEVICE_FEATURE_PROBE) return kok(0);
    if (!(flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET)))
      return kerr("EINVAL", "VFIO_DEVICE_FEATURE: neither GET nor SET");
    if (argsz < minsz)
      return kerr("EINVAL", `VFIO_DEVICE_FEATURE: ${argsz} bytes of data, needs ${minsz}`);
    return kok(1);
  }

  /**
   * VFIO_DEVICE_FEATURE_DMA_BUF, in the kernel's order: no get_dmabuf_phys → -EOPNOTSUPP;
   * vfio_check_feature (GET only, 16 bytes; PROBE → 0); copy fault → -EFAULT; nr_ranges 0 or
   * flags ≠ 0 → -EINVAL; region_index ≥ ROM → -ENODEV; the ranges copied (more than kmalloc can
   * hold → -ENOMEM, short → -EFAULT); validate_dmabuf_input; get_dmabuf_phys; the export; the
   * buffer starts revoked if memory is disabled; the fd. Returns the new fd.
   * models vfio_pci_core_feature_dma_buf()
   */
  #featureDmaBuf(
    flags: number,
    data: VfioDeviceFeatureDmaBuf | null | undefined,
    argsz: number,
    proc: Process,
  ): KResult<number> {
    const fail = (r: KResult<never>): KResult<never> => {
      if (!r.ok)
        this.#emit("vfio:export", `VFIO_DEVICE_FEATURE_DMA_BUF failed: -${r.errno} (${r.reason})`, {
          errno: r.errno,
        });
      return r;
    };
    if (!this.getDmabufPhys)
      return fail(kerr("EOPNOTSUPP", `${this.name}: the driver has no get_dmabuf_phys`));
    const c = VfioPciDevice.checkFeature(
      flags,
      argsz,
      VFIO_DEVICE_FEATURE_GET,
      VFIO_DEVICE_FEATURE_DMA_BUF_SIZE,
    );
    if (!c.ok) return fail(c);
    if (c.value === 0) return kok(0);
    if (!data || typeof data !== "object")
      return fail(kerr("EFAULT", "VFIO_DEVICE_FEATURE_DMA_BUF: copy_from_user failed"));
    const nr = data.nr_ranges >>> 0;
    if (nr === 0 || data.flags !== 0)
      return fail(
        kerr(
          "EINVAL",
          nr === 0 ? "nr_ranges is 0" : `flags 0x${(data.flags >>> 0).toString(16)} (must be 0)`,
        ),
      );
    const region = data.region_index >>> 0;
    if (region >= VFIO_PCI_ROM_REGION_INDEX)
      return fail(kerr("ENODEV", `region_index ${region} is not a BAR`));
    // models memdup_array_user(): kmalloc of nr * 16 bytes, then the copy
    if (BigInt(nr) * BigInt(VFIO_REGION_DMA_RANGE_SIZE) > KMALLOC_MAX_SIZE)
      return fail(kerr("ENOMEM", `${nr} ranges: more than kmalloc can hold`));
    if (!Array.isArray(data.dma_ranges) || data.dma_ranges.length < nr)
      return fail(kerr("EFAULT", `dma_ranges has fewer than ${nr} entries: copy_from_user failed`));
    const ranges = data.dma_ranges.slice(0, nr);
    const v = VfioPciDevice.validateDmabufInput(ranges);
    if (!v.ok) return fail(v);
    const size = v.value;
    const phys = this.#getDmabufPhys(region, ranges);
    if (!phys.ok) return fail(phys);
    // vfio_device_try_get_registration(): the device is registered while bound (no unbind here)
    this.registrations++;
    const priv: VfioPciDmaBuf = {
      dmabuf: null,
      vdev: this,
      size,
      phys_vec: phys.value.vec,
      provider: phys.value.provider,
      nr_ranges: nr,
      region_index: region,
      revoked: false,
    };
    const d = dmaBufExport(this.core, {
      exp_name: "vfio_pci_core", // KBUILD_MODNAME: vfio_pci_dmabuf.o is part of vfio-pci-core.ko
      owner: null,
      ops: this.#ops(priv),
      size,
      flags: data.open_flags,
      priv,
    });
    if (!d.ok) {
      this.registrations--;
      return fail(d);
    }
    const dmabuf = d.value;
    priv.dmabuf = dmabuf;
    this.exports.add(priv);
    dmabuf.resv.lock("vfio_pci_core_feature_dma_buf");
    priv.revoked = !this.#memoryEnabled();
    this.dmabufs.push(priv);
    dmabuf.resv.unlock("vfio_pci_core_feature_dma_buf");
    const fd = dmaBufFd(proc, dmabuf, data.open_flags);
    if (!fd.ok) {
      // after the export only dma_buf_put() unwinds (release takes the list entry, the
      // registration and priv). v6.19..6.19.10 fell through the whole unwind chain here: a
      // second registration put and a double free (CVE-2026-31468, "vfio/pci: Fix double free
      // in dma-buf feature"); mainline has the fix
      dmaBufPut(dmabuf);
      return fail(fd);
    }
    this.#emit(
      "vfio:export",
      `exported ${nr} range(s) of BAR${region} (${size} bytes) as ${dmabuf.describe()}, fd ${fd.value}${priv.revoked ? " (memory disabled: revoked)" : ""}`,
      {
        ino: dmabuf.ino,
        bar: region,
        size,
        ranges: priv.phys_vec.map((p) => ({ paddr: p.paddr, len: p.len })),
        revoked: priv.revoked,
        fd: fd.value,
      },
    );
    return fd;
  }

  /**
   * Every range non-empty with a page-aligned offset and length, the total not wrapping and
   * without bit 63 (DMA_IOVA_USE_SWIOTLB); all -EINVAL. The total size. models validate_dmabuf_input()
   */
  static validateDmabufInput(ranges: readonly VfioRegionDmaRange[]): KResult<bigint> {
    let length = 0n;
    for (const [i, r] of ranges.entries()) {
      if (r.length === 0n || r.offset % PAGE_SIZE_N !== 0n || r.length % PAGE_SIZE_N !== 0n)
        return kerr(
          "EINVAL",
          `range ${i}: offset ${hex(r.offset)} length ${hex(r.length)} (empty or not page aligned)`,
        );
      length += r.length;
      if (length > U64) return kerr("EINVAL", `range ${i}: the total length overflows`);
    }
    if (length & DMA_IOVA_USE_SWIOTLB)
      return kerr("EINVAL", `total length ${hex(length)} has DMA_IOVA_USE_SWIOTLB (bit 63) set`);
    return kok(length);
  }

  /**
   * The BAR's provider (none for a region that is not a memory BAR: -EINVAL) and the ranges as
   * CPU physical addresses inside it: an address that wraps → -EOVERFLOW, past the BAR's end →
   * -EINVAL. models vfio_pci_core_get_dmabuf_phys() + vfio_pci_core_fill_phys_vec()
   */
  #getDmabufPhys(
    region: number,
    ranges: readonly VfioRegionDmaRange[],
  ): KResult<{ provider: P2pProvider; vec: PhysVec[] }> {
    const provider = this.#providers.get(region);
    const bar = this.fn.desc.bars?.find((b) => b.index === region && b.mem && b.size > 0n);
    if (!provider || !bar)
      return kerr("EINVAL", `BAR${region} is not a memory BAR (pcim_p2pdma_provider is NULL)`);
    const maxAddr = bar.start + bar.size;
    const vec: PhysVec[] = [];
    for (const [i, r] of ranges.entries()) {
      if (r.length === 0n) return kerr("EINVAL", `range ${i} is empty`);
      const paddr = bar.start + r.offset;
      const end = paddr + r.length;
      if (paddr > U64 || end > U64)
        return kerr("EOVERFLOW", `range ${i}: BAR start + ${hex(r.offset)} + length wraps`);
      if (end > maxAddr)
        return kerr(
          "EINVAL",
          `range ${i}: [${hex(paddr)}, ${hex(end)}) ends past BAR${region} [${hex(bar.start)}, ${hex(maxAddr)})`,
        );
      vec.push({ paddr, len: r.length });
    }
    return kok({ provider, vec });
  }

  /** Memory decoding is on in the emulated config space. models __vfio_pci_memory_enabled() */
  #memoryEnabled(): boolean {
    return this.#files.size > 0 && (this.#vcmd & PCI_COMMAND_MEMORY) !== 0;
  }

  // ── revocation ───────────────────────────────────────────────────────────────────────────

  /**
   * Every buffer still tied to the device whose state differs: under its resv, set `revoked`
   * and tell the dynamic importers (move_notify). models vfio_pci_dma_buf_move()
   */
  #dmaBufMove(revoked: boolean, why: string): void {
    for (const priv of [...this.dmabufs]) {
      const d = priv.dmabuf!;
      if (d.file.state === "released" || d.file.count === 0) continue; // get_file_active()
      if (priv.revoked === revoked) continue;
      d.resv.lock("vfio_pci_dma_buf_move");
      priv.revoked = revoked;
      this.#emit(
        revoked ? "vfio:revoke" : "vfio:restore",
        `${d.describe()} ${revoked ? "revoked" : "usable again"} (${why}): move_notify to ${d.attachments.filter((a) => a.importer_ops).length} dynamic importer(s)`,
        { ino: d.ino, revoked, why },
      );
      dmaBufMoveNotify(d);
      d.resv.unlock("vfio_pci_dma_buf_move");
    }
  }

  /** At the last close: every buffer revoked for good and detached from the device. models vfio_pci_dma_buf_cleanup() */
  #dmaBufCleanup(): void {
    for (const priv of [...this.dmabufs]) {
      const d = priv.dmabuf!;
      if (d.file.state === "released" || d.file.count === 0) continue;
      d.resv.lock("vfio_pci_dma_buf_cleanup");
      this.dmabufs.splice(this.dmabufs.indexOf(priv), 1);
      priv.vdev = null;
      priv.revoked = true;
      this.#emit(
        "vfio:revoke",
        `${d.describe()} revoked for good (device closed): move_notify to ${d.attachments.filter((a) => a.importer_ops).length} dynamic importer(s)`,
        { ino: d.ino, revoked: true, why: "close" },
      );
      dmaBufMoveNotify(d);
      d.resv.unlock("vfio_pci_dma_buf_cleanup");
      this.registrations--; // vfio_device_put_registration()
    }
  }

  /**
   * pwrite(2) of `size` bytes at `offset` of the device's config region from `proc`'s fd. Only
   * PCI_COMMAND is modelled: clearing PCI_COMMAND_MEMORY revokes every buffer first; afterwards,
   * with memory enabled, they are restored (a second move_notify). Returns the bytes written.
   * models vfio_pci_config_rw() → vfio_basic_config_write()
   */
  configWrite(proc: Process, fd: number, offset: number, value: number, size = 2): KResult<number> {
    const f = proc.peek(fd);
    if (!f) return kerr("EBADF", `${proc.name}: fd ${fd} is not open`);
    if (!this.#files.has(f)) return kerr("EINVAL", `fd ${fd} is not ${this.name}'s device file`);
    if (offset !== PCI_COMMAND || size !== 2)
      throw new Error(
        `${this.name}: config write at 0x${offset.toString(16)}/${size} is not modelled`,
      );
    const newMem = (value & PCI_COMMAND_MEMORY) !== 0;
    // vfio_pci_zap_and_down_write_memory_lock(): user mmaps of the BARs zapped (not modelled)
    if (!newMem) this.#dmaBufMove(true, "PCI_COMMAND memory disabled");
    const mask = PCI_COMMAND_MEMORY | PCI_COMMAND_IO;
    this.#vcmd = (this.#vcmd & ~mask) | (value & mask) | (value & PCI_COMMAND_MASTER);
    this.#emit("vfio:config_write", `PCI_COMMAND <- 0x${value.toString(16)}`, {
      command: this.#vcmd,
    });
    if (this.#memoryEnabled()) this.#dmaBufMove(false, "PCI_COMMAND memory enabled");
    return kok(size);
  }

  /**
   * VFIO_DEVICE_RESET: -EINVAL without a reset method; else the buffers are revoked around the
   * reset and restored after it when memory is (still) enabled in the emulated config space.
   * models vfio_pci_ioctl_reset()
   */
  #ioctlReset(): KResult<number> {
    if (!this.resetWorks) return kerr("EINVAL", `${this.name}: no reset method (reset_works)`);
    this.#dmaBufMove(true, "device reset");
    this.#emit("vfio:reset", "pci_try_reset_function()");
    if (this.#memoryEnabled()) this.#dmaBufMove(false, "reset done, memory enabled");
    return kok(0);
  }

  // ── dma_buf_ops ──────────────────────────────────────────────────────────────────────────

  #ops(priv: VfioPciDmaBuf): DmaBufOps {
    const ops: { -readonly [K in keyof DmaBufOps]: DmaBufOps[K] } = {
      attach: (_d, a) => this.#attach(priv, a),
      map_dma_buf: (a, dir) => this.#map(priv, a, dir),
      unmap_dma_buf: (a, sgt, dir) => this.#unmap(a, sgt, dir),
      release: () => this.#releaseDmaBuf(priv),
    };
    if (this.core.profile.vfioDmaBuf?.pinRefused) {
      ops.pin = (a) => this.#pin(a);
      // models vfio_pci_dma_buf_unpin(): nothing to do (pin never succeeds)
      ops.unpin = () => {};
    }
    return ops;
  }

  /** models vfio_pci_dma_buf_pin(): the memory can be revoked at any time, so never. */
  #pin(a: DmaBufAttachment): KResult {
    this.#emit("vfio:pin", `${a.describe()}: pin refused (-EOPNOTSUPP): revocable MMIO`, {
      importer: a.dev.fn.name,
      errno: "EOPNOTSUPP",
    });
    return kerr("EOPNOTSUPP", `${this.name}: a vfio dma-buf cannot be pinned (it can be revoked)`);
  }

  /** No peer2peer → -EOPNOTSUPP; revoked → -ENODEV. models vfio_pci_dma_buf_attach() */
  #attach(priv: VfioPciDmaBuf, a: DmaBufAttachment): KResult {
    let r: KResult = kok();
    if (!a.peer2peer)
      r = kerr(
        "EOPNOTSUPP",
        `${this.name}: ${a.dev.name} is not a peer-to-peer capable importer (static, or allow_peer2peer unset)`,
      );
    else if (priv.revoked)
      r = kerr("ENODEV", `${this.name}: ${priv.dmabuf?.describe() ?? "dma-buf"} is revoked`);
    this.#emit(
      "vfio:attach",
      `${a.dev.name} ${r.ok ? "attached" : `refused: -${r.errno}`} (${a.importer_ops ? "dynamic" : "static"}, peer2peer ${a.peer2peer})`,
      { importer: a.dev.fn.name, peer2peer: a.peer2peer, errno: r.ok ? null : r.errno },
    );
    return r;
  }

  /** Resv held; revoked → -ENODEV; else the phys_vec helper. models vfio_pci_dma_buf_map() */
  #map(priv: VfioPciDmaBuf, a: DmaBufAttachment, dir: DmaDirection): KResult<SgTable> {
    a.dmabuf.resv.assertHeld("vfio_pci_dma_buf_map");
    const r = priv.revoked
      ? kerr("ENODEV", `${this.name}: ${a.dmabuf.describe()} is revoked`)
      : dmaBufPhysVecToSgt(this.sys, a, priv.provider, priv.phys_vec, priv.size, dir);
    if (!r.ok) {
      this.#emit("vfio:map", `map for ${a.dev.name} failed: -${r.errno}`, {
        importer: a.dev.fn.name,
        errno: r.errno,
      });
      return r;
    }
    this.outstanding.add(r.value);
    if (this.sys.trace.enabled) {
      const entries = dmaSegments(this.sys, a.dev, r.value);
      this.#emit("vfio:map", `mapped for ${a.dev.name}: ${dmaSegsText(entries)}`, {
        importer: a.dev.fn.name,
        entries,
      });
    }
    return r;
  }

  /** models vfio_pci_dma_buf_unmap(): dma_buf_free_sgt(). */
  #unmap(a: DmaBufAttachment, sgt: SgTable, dir: DmaDirection): void {
    if (!this.outstanding.delete(sgt))
      throw new KernelBug(`${this.name}: unmap_dma_buf got ${sgt.name}, which it never handed out`);
    this.#emit("vfio:unmap", `unmapped ${sgt.nents} segment(s) of ${a.dev.name}`, {
      importer: a.dev.fn.name,
    });
    dmaBufFreeSgt(this.sys, a, sgt, dir);
  }

  /**
   * The buffer is gone: still tied to the device → off the list, registration dropped.
   * models vfio_pci_dma_buf_release()
   */
  #releaseDmaBuf(priv: VfioPciDmaBuf): void {
    if (priv.vdev) {
      const i = this.dmabufs.indexOf(priv);
      if (i >= 0) this.dmabufs.splice(i, 1);
      this.registrations--;
    }
    this.exports.delete(priv);
    this.#emit("vfio:release", `${priv.dmabuf?.describe() ?? "dma-buf"} released`, {
      ino: priv.dmabuf?.ino,
    });
  }

  // ── leaks ────────────────────────────────────────────────────────────────────────────────

  /** Tables handed out and not unmapped, buffers not released, device files still open. */
  /** The CPU physical address of byte `off` of an exported buffer (its ranges back to back). */
  backingPhys(d: DmaBuf): ((off: bigint) => bigint) | null {
    const priv = this.dmabufs.find((p) => p.dmabuf === d);
    if (!priv) return null;
    return (off) => {
      let at = off;
      for (const r of priv.phys_vec) {
        if (at < r.len) return r.paddr + at;
        at -= r.len;
      }
      throw new RangeError(`${this.name}: offset ${hex(off)} past ${d.describe()}`);
    };
  }

  leaks(): Leak[] {
    const owner = this.name;
    const out: Leak[] = [];
    out.push(...unmappedTableLeaks(owner, this.outstanding));
    for (const p of this.exports)
      out.push({
        kind: "vfio-dmabuf",
        owner,
        detail: `${p.dmabuf?.describe() ?? "dma-buf"} of BAR${p.region_index} (${p.nr_ranges} range(s)) not released${p.vdev ? ": holds a device registration" : " (revoked at close)"}`,
      });
    if (this.#files.size > 0)
      out.push({
        kind: "vfio-device",
        owner,
        detail: `device still open by ${this.#files.size} file(s)`,
      });
    return out;
  }
}

/**
 * ioctl(fd, VFIO_DEVICE_FEATURE, GET | DMA_BUF) from `proc`: the new dma-buf fd. `argsz`
 * defaults to the header plus the struct plus the ranges.
 */
export function vfioDeviceFeatureDmaBuf(
  proc: Process,
  fd: number,
  req: VfioDeviceFeatureDmaBuf,
  opts: { flags?: number; argsz?: number } = {},
): KResult<number> {
  const feature: VfioDeviceFeature = {
    argsz:
      opts.argsz ??
      VFIO_DEVICE_FEATURE_MINSZ +
        VFIO_DEVICE_FEATURE_DMA_BUF_SIZE +
        VFIO_REGION_DMA_RANGE_SIZE * req.dma_ranges.length,
    flags: opts.flags ?? VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF,
    data: req,
  };
  return sysIoctl(proc, fd, VFIO_DEVICE_FEATURE, feature);
}

/** The default open flags of an export (O_RDWR | O_CLOEXEC). */
export const VFIO_DMABUF_OPEN_FLAGS = O_RDWR | O_CLOEXEC;
