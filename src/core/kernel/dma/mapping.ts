/**
 * @module mapping
 * The DMA mapping API (kernel/dma/mapping.c) with its two back ends: dma-direct
 * (kernel/dma/direct.c, no IOMMU or an identity domain) and dma-iommu (drivers/iommu/dma-iommu.c,
 * DMA/DMA_FQ domains). Scatterlist mapping classifies P2P pages with the one P2PDMA model:
 * bus-address entries get the provider's bus address and the bus-address mark, host-bridge ones
 * are mapped like RAM, unsupported ones fail the whole table with -EREMOTEIO.
 */

import type { DmaAddr, PhysAddr } from "../../hw/address.ts";
import { dmaAddr, iova, physAddr } from "../../hw/address.ts";
import { type Errno, type KResult, kerr, kok } from "../errno.ts";
import {
  DMA_MAPPING_ERROR,
  finaliseSg,
  for_each_sg,
  invalidateSg,
  type Scatterlist,
  type SgTable,
  sg_dma_is_bus_address,
  sg_dma_mark_bus_address,
  sg_dma_unmark_bus_address,
  sg_page,
  sg_phys,
} from "../lib/scatterlist.ts";
import type { Page } from "../mm/page.ts";
import type { P2pdma, P2pMapType } from "../pci/p2pdma.ts";
import type { DmaDebug } from "./debug.ts";
import { type DmaDevice, dmaLimit } from "./device.ts";
import type { Swiotlb } from "./swiotlb.ts";

export type DmaDirection = "bidirectional" | "to-device" | "from-device" | "none";

export interface DmaAttrs {
  /** DMA_ATTR_MMIO (what dma_map_resource adds): device memory, no translation, no bounce. */
  readonly mmio?: boolean;
  readonly skipCpuSync?: boolean;
}

export { DMA_MAPPING_ERROR };

const align = (v: bigint, g: bigint): bigint => (v + g - 1n) & ~(g - 1n);

/** The per-call state of `pci_p2pdma_map_state`: the last pgmap looked up, and its map type. */
interface P2pState {
  pgmap: Page["pgmap"];
  map: P2pMapType | "none";
}

/** `struct dma_iova_state`: the IOVA and the size allocated (0: the IOVA path is not in use). */
export interface DmaIovaState {
  addr: DmaAddr;
  size: bigint;
}

/** models dma_use_iova() */
export function dmaUseIova(state: DmaIovaState): boolean {
  return state.size !== 0n;
}

export interface DmaApiDeps {
  readonly p2pdma: P2pdma;
  readonly swiotlb: Swiotlb | null;
  readonly debug: DmaDebug | null;
  /** Kernel log (dev_err / dev_warn lines). */
  readonly log: string[];
}

export class DmaApi {
  readonly #d: DmaApiDeps;

  constructor(deps: DmaApiDeps) {
    this.#d = deps;
  }

  /** `dma_go_direct()`. */
  static goDirect(dev: DmaDevice): boolean {
    return dev.translation.kind !== "dma";
  }

  /** `pci_p2pdma_state()` / 6.1's `pci_p2pdma_map_segment` lookup, cached per call by pgmap. */
  #p2pState(dev: DmaDevice, page: Page | null, st: P2pState): P2pMapType | "none" {
    if (!page?.pgmap) return "none";
    if (page.pgmap !== st.pgmap) {
      st.pgmap = page.pgmap;
      st.map = this.#d.p2pdma.mapType(page.pgmap.provider.owner, dev.fn);
    }
    return st.map;
  }

  // ── single mappings ─────────────────────────────────────────────────────────────────────────

  /** `dma_capable()`. */
  static capable(dev: DmaDevice, addr: bigint, size: bigint): boolean {
    if (addr === DMA_MAPPING_ERROR) return false;
    return addr + size - 1n <= dmaLimit(dev);
  }

  /** models dma_map_phys() / dma_map_page_attrs(): DMA_MAPPING_ERROR on failure. */
  mapPhys(
    dev: DmaDevice,
    phys: PhysAddr,
    size: bigint,
    dir: DmaDirection,
    attrs: DmaAttrs = {},
  ): DmaAddr {
    const dma = DmaApi.goDirect(dev)
      ? this.#directMapPhys(dev, phys, size, dir, attrs)
      : this.#iommuMapPhys(dev, phys, size, dir, attrs);
    this.#d.debug?.mapped(dev, { kind: attrs.mmio ? "resource" : "single", dma, size, dir, phys });
    return dma;
  }

  /**
   * models dma_map_page_attrs(): `dma_map_phys(page_to_phys(page) + offset)`. It does not classify
   * P2P pages (map those with an sg table); with dma-debug on, a ZONE_DEVICE page is refused.
   */
  mapPage(dev: DmaDevice, page: Page, offset: number, size: bigint, dir: DmaDirection): DmaAddr {
    if (page.pgmap && this.#d.debug) {
      this.#d.debug.zoneDevicePage(dev, page.pfn);
      return DMA_MAPPING_ERROR;
    }
    return this.mapPhys(dev, physAddr((page.pfn << 12n) + BigInt(offset)), size, dir);
  }

  /** models dma_mapping_error(); dma-debug notes that the driver checked. */
  mappingError(dev: DmaDevice, dma: DmaAddr): boolean {
    this.#d.debug?.checkedError(dev, dma);
    return dma === DMA_MAPPING_ERROR;
  }

  /** models dma_map_resource(): dma_map_phys with DMA_ATTR_MMIO. It never consults P2PDMA. */
  mapResource(dev: DmaDevice, phys: PhysAddr, size: bigint, dir: DmaDirection): DmaAddr {
    return this.mapPhys(dev, phys, size, dir, { mmio: true });
  }

  /** models dma_unmap_phys() / dma_unmap_page_attrs() / dma_unmap_resource(). */
  unmapPhys(
    dev: DmaDevice,
    dma: DmaAddr,
    size: bigint,
    dir: DmaDirection,
    attrs: DmaAttrs = {},
  ): void {
    this.#d.debug?.unmapped(dev, { kind: attrs.mmio ? "resource" : "single", dma, size, dir });
    if (DmaApi.goDirect(dev)) {
      this.#d.swiotlb?.unmapIfBounced(dev, dma, size, dir, attrs.skipCpuSync === true);
      return;
    }
    this.#iommuUnmap(dev, dma, size);
  }

  /** models dma_direct_map_phys(). */
  #directMapPhys(
    dev: DmaDevice,
    phys: PhysAddr,
    size: bigint,
    dir: DmaDirection,
    attrs: DmaAttrs,
  ): DmaAddr {
    const dma = dmaAddr(phys); // x86: no dma_range_map
    if (attrs.mmio) {
      if (!DmaApi.capable(dev, dma, size)) {
        this.#d.log.push(
          `${dev.name}: DMA addr 0x${dma.toString(16)}+${size} overflow (mask 0x${dmaLimit(dev).toString(16)}, bus limit 0x${dev.busDmaLimit.toString(16)}).`,
        );
        return DMA_MAPPING_ERROR;
      }
      return dma;
    }
    if (!DmaApi.capable(dev, dma, size)) {
      const tlb = this.#d.swiotlb;
      if (tlb) return tlb.map(dev, phys, size, dir);
      this.#d.log.push(
        `${dev.name}: DMA addr 0x${dma.toString(16)}+${size} overflow (no swiotlb to bounce through)`,
      );
      return DMA_MAPPING_ERROR;
    }
    return dma;
  }

  /** models iommu_dma_map_phys() → __iommu_dma_map(). */
  #iommuMapPhys(
    dev: DmaDevice,
    phys: PhysAddr,
    size: bigint,
    dir: DmaDirection,
    attrs: DmaAttrs,
  ): DmaAddr {
    const t = dev.translation;
    if (t.kind !== "dma") return DMA_MAPPING_ERROR;
    const g = t.table.granule;
    const off = phys & (g - 1n);
    const len = align(size + off, g);
    const iova = t.iova.alloc(len, dmaLimit(dev), { dev: dev.client });
    if (iova === null) return DMA_MAPPING_ERROR;
    t.table.map(iova, phys - off, len, prot(dir, attrs));
    return dmaAddr(iova + off);
  }

  /** models __iommu_dma_unmap(). */
  #iommuUnmap(dev: DmaDevice, dma: DmaAddr, size: bigint): void {
    const t = dev.translation;
    if (t.kind !== "dma") return;
    const g = t.table.granule;
    const off = dma & (g - 1n);
    const len = align(size + off, g);
    t.table.unmap(dma - off, len);
    t.iova.free(iova(dma), size);
  }

  // ── scatterlists ────────────────────────────────────────────────────────────────────────────

  /**
   * models dma_map_sgtable(): maps `orig_nents` entries; 0 and `nents` set, or -errno
   * (EINVAL, ENOMEM, EIO, EREMOTEIO).
   */
  mapSgtable(
    dev: DmaDevice,
    sgt: SgTable,
    dir: DmaDirection,
    attrs: DmaAttrs = {},
  ): KResult<number> {
    const r = this.mapSgRaw(dev, sgt.sgl!, sgt.orig_nents, dir, attrs);
    if (!r.ok) return r;
    sgt.nents = r.value;
    this.#d.debug?.mappedSg(dev, sgt, r.value, dir);
    return r;
  }

  /** models dma_map_sg_attrs(): the mapped count, or 0 on any error. */
  mapSg(
    dev: DmaDevice,
    sgl: Scatterlist,
    nents: number,
    dir: DmaDirection,
    attrs: DmaAttrs = {},
  ): number {
    const r = this.mapSgRaw(dev, sgl, nents, dir, attrs);
    return r.ok ? r.value : 0;
  }

  /** models __dma_map_sg_attrs(). */
  mapSgRaw(
    dev: DmaDevice,
    sgl: Scatterlist,
    nents: number,
    dir: DmaDirection,
    attrs: DmaAttrs = {},
  ): KResult<number> {
    const r = DmaApi.goDirect(dev)
      ? this.#directMapSg(dev, sgl, nents, dir, attrs)
      : this.#iommuMapSg(dev, sgl, nents, dir, attrs);
    if (!r.ok && !(["EINVAL", "ENOMEM", "EIO", "EREMOTEIO"] as Errno[]).includes(r.errno))
      return kerr("EIO", `${r.errno} is not a permitted map_sg error`, { warn: true });
    return r;
  }

  /** models dma_unmap_sgtable(). */
  unmapSgtable(dev: DmaDevice, sgt: SgTable, dir: DmaDirection, attrs: DmaAttrs = {}): void {
    this.#d.debug?.unmappedSg(dev, sgt, dir);
    this.unmapSg(dev, sgt.sgl!, sgt.orig_nents, dir, attrs);
  }

  /** models dma_unmap_sg_attrs(). */
  unmapSg(
    dev: DmaDevice,
    sgl: Scatterlist,
    nents: number,
    dir: DmaDirection,
    attrs: DmaAttrs = {},
  ): void {
    if (DmaApi.goDirect(dev)) {
      for (const s of for_each_sg(sgl, nents)) {
        if (sg_dma_is_bus_address(s)) sg_dma_unmark_bus_address(s);
        else
          this.#d.swiotlb?.unmapIfBounced(
            dev,
            s.dma_address,
            BigInt(s.dma_length),
            dir,
            attrs.skipCpuSync === true,
          );
      }
      return;
    }
    this.#iommuUnmapSg(dev, sgl, nents);
  }

  /** models dma_direct_map_sg(). */
  #directMapSg(
    dev: DmaDevice,
    sgl: Scatterlist,
    nents: number,
    dir: DmaDirection,
    attrs: DmaAttrs,
  ): KResult<number> {
    const st: P2pState = { pgmap: null, map: "none" };
    let i = 0;
    for (const s of for_each_sg(sgl, nents)) {
      const kind = this.#p2pState(dev, sg_page(s), st);
      if (kind === "bus-address") {
        s.dma_address = dmaAddr(sg_phys(s) + st.pgmap!.provider.busOffset);
        s.dma_length = s.length;
        sg_dma_mark_bus_address(s);
        i++;
        continue;
      }
      if (kind === "not-supported") {
        this.unmapSg(dev, sgl, i, dir, { ...attrs, skipCpuSync: true });
        return kerr(
          "EREMOTEIO",
          `${dev.name} cannot reach the P2P memory of ${st.pgmap!.provider.owner.name}`,
        );
      }
      const dma = this.#directMapPhys(dev, sg_phys(s), BigInt(s.length), dir, {
        ...attrs,
        mmio: false,
      });
      if (dma === DMA_MAPPING_ERROR) {
        this.unmapSg(dev, sgl, i, dir, { ...attrs, skipCpuSync: true });
        return kerr("EIO", `entry ${i} could not be mapped for ${dev.name}`);
      }
      s.dma_address = dma;
      s.dma_length = s.length;
      i++;
    }
    return kok(nents);
  }

  /** models iommu_dma_map_sg() + __finalise_sg(). */
  #iommuMapSg(
    dev: DmaDevice,
    sgl: Scatterlist,
    nents: number,
    dir: DmaDirection,
    attrs: DmaAttrs,
  ): KResult<number> {
    const t = dev.translation;
    if (t.kind !== "dma") return kerr("EINVAL");
    const g = t.table.granule;
    const mask = dev.segBoundaryMask;
    const st: P2pState = { pgmap: null, map: "none" };
    let iovaLen = 0n;
    let prev: Scatterlist | null = null;
    const restore = (n: number) => invalidateSg(sgl, n);
    let i = 0;
    for (const s of for_each_sg(sgl, nents)) {
      const off = BigInt(s.offset) & (g - 1n);
      const len = BigInt(s.length);
      const pad = (mask - iovaLen + 1n) & mask;
      const kind = this.#p2pState(dev, sg_page(s), st);
      if (kind === "bus-address") {
        s.dma_address = dmaAddr(sg_phys(s) + st.pgmap!.provider.busOffset);
        s.dma_length = s.length;
        sg_dma_mark_bus_address(s);
        i++;
        continue;
      }
      if (kind === "not-supported") {
        restore(i);
        return kerr(
          "EREMOTEIO",
          `${dev.name} cannot reach the P2P memory of ${st.pgmap!.provider.owner.name}`,
        );
      }
      // stash the in-granule offset and the length; lay the entry out on granules
      s.dma_address = dmaAddr(off);
      s.dma_length = Number(len);
      s.offset = Number(BigInt(s.offset) - off);
      s.length = Number(align(len + off, g));
      if (pad !== 0n && pad < BigInt(s.length) - 1n && prev) {
        prev.length = Number(BigInt(prev.length) + pad);
        iovaLen += pad;
      }
      iovaLen += BigInt(s.length);
      prev = s;
      i++;
    }
    const limits = { maxSegSize: dev.maxSegSize, segBoundaryMask: dev.segBoundaryMask };
    if (iovaLen === 0n) return kok(finaliseSg(sgl, nents, 0n, limits));
    const base = t.iova.alloc(iovaLen, dmaLimit(dev), { dev: dev.client });
    if (base === null) {
      restore(nents);
      return kerr("ENOMEM", "out of IOVA space");
    }
    // iommu_map_sg: non-bus entries back to back from base, in list order
    let at = base as bigint;
    const p = prot(dir, attrs);
    for (const s of for_each_sg(sgl, nents)) {
      if (sg_dma_is_bus_address(s)) continue;
      t.table.map(at, sg_phys(s), BigInt(s.length), p);
      at += BigInt(s.length);
    }
    return kok(finaliseSg(sgl, nents, base, limits));
  }

  /** models iommu_dma_unmap_sg(): one IOVA range from the first non-bus segment to the last. */
  #iommuUnmapSg(dev: DmaDevice, sgl: Scatterlist, nents: number): void {
    const t = dev.translation;
    if (t.kind !== "dma") return;
    let start: bigint | null = null;
    let end = 0n;
    for (const s of for_each_sg(sgl, nents)) {
      if (sg_dma_is_bus_address(s)) {
        sg_dma_unmark_bus_address(s);
        continue;
      }
      if (s.dma_length === 0) break;
      if (start === null) start = s.dma_address;
      end = s.dma_address + BigInt(s.dma_length);
    }
    if (start !== null) this.#iommuUnmap(dev, dmaAddr(start), end - start);
  }

  // ── the two-step IOVA API (dma_iova_*) ──────────────────────────────────────────────────────

  /**
   * One IOVA range for `size` bytes, aligned like `phys` within a granule; false (state zeroed)
   * when the device is not on dma-iommu, `size` is 0 or the allocation fails.
   * models dma_iova_try_alloc()
   */
  iovaTryAlloc(dev: DmaDevice, state: DmaIovaState, phys: bigint, size: bigint): boolean {
    state.addr = dmaAddr(0n);
    state.size = 0n;
    const t = dev.translation;
    if (t.kind !== "dma" || size === 0n) return false;
    const off = phys & (t.table.granule - 1n);
    const base = t.iova.alloc(align(size + off, t.table.granule), dmaLimit(dev), {
      dev: dev.client,
    });
    if (base === null) return false;
    state.addr = dmaAddr(base + off);
    state.size = size;
    return true;
  }

  /**
   * Maps `phys` at `state.addr + offset` (no IOTLB sync). A sub-granule `phys` with a non-zero
   * offset: WARN, -EIO; an untrusted device with an unaligned MMIO range: -EPERM; an IOVA already
   * mapped: the IOMMU driver's error (-EEXIST here). models dma_iova_link()
   */
  iovaLink(
    dev: DmaDevice,
    state: DmaIovaState,
    phys: bigint,
    offset: bigint,
    size: bigint,
    dir: DmaDirection,
    attrs: DmaAttrs = {},
  ): KResult {
    const t = dev.translation;
    if (t.kind !== "dma" || !dmaUseIova(state)) return kerr("EINVAL", "no IOVA state");
    const g = t.table.granule;
    const pad = phys & (g - 1n);
    if (pad !== 0n && offset !== 0n)
      return kerr(
        "EIO",
        `dma_iova_link: unaligned phys 0x${phys.toString(16)} at offset ${offset}`,
        {
          warn: true,
        },
      );
    if (dev.untrusted && ((phys | size) & (g - 1n)) !== 0n) {
      if (attrs.mmio) return kerr("EPERM", "unaligned MMIO cannot be bounced");
      throw new Error("dma_iova_link: swiotlb bouncing of an IOVA link is not modelled");
    }
    const at = state.addr + offset - pad;
    const len = align(size + pad, g);
    try {
      t.table.map(at, phys - pad, len, prot(dir, attrs));
    } catch (e) {
      if (e instanceof Error && /already mapped/.test(e.message))
        return kerr("EEXIST", `IOVA 0x${at.toString(16)}+0x${len.toString(16)} is already mapped`);
      throw e;
    }
    return kok();
  }

  /** The IOTLB sync after links; nothing to do in the model. models dma_iova_sync() */
  iovaSync(_dev: DmaDevice, _state: DmaIovaState, _offset: bigint, _size: bigint): KResult {
    return kok();
  }

  /**
   * Unlinks `[0, mappedLen)` and frees the IOVA (that length, as the kernel passes it); with
   * `mappedLen` 0 only frees the whole allocation. models dma_iova_destroy()
   */
  iovaDestroy(dev: DmaDevice, state: DmaIovaState, mappedLen: bigint): void {
    const t = dev.translation;
    if (t.kind !== "dma" || !dmaUseIova(state)) return;
    const g = t.table.granule;
    const pad = state.addr & (g - 1n);
    const start = state.addr - pad;
    const len = align((mappedLen === 0n ? state.size : mappedLen) + pad, g);
    if (mappedLen !== 0n) t.table.unmap(start, len);
    t.iova.free(iova(start), len);
    state.addr = dmaAddr(0n);
    state.size = 0n;
  }

  // ── syncs ───────────────────────────────────────────────────────────────────────────────────

  /** models dma_sync_single_for_cpu(): bounce buffers are copied back; coherent devices need nothing else. */
  syncSingleForCpu(dev: DmaDevice, dma: DmaAddr, size: bigint, dir: DmaDirection): void {
    this.#d.debug?.synced(dev, dma, size, dir, "cpu");
    if (DmaApi.goDirect(dev)) this.#d.swiotlb?.sync(dev, dma, size, dir, "cpu");
  }

  /** models dma_sync_single_for_device(). */
  syncSingleForDevice(dev: DmaDevice, dma: DmaAddr, size: bigint, dir: DmaDirection): void {
    this.#d.debug?.synced(dev, dma, size, dir, "device");
    if (DmaApi.goDirect(dev)) this.#d.swiotlb?.sync(dev, dma, size, dir, "device");
  }
}

/** models dma_info_to_prot(). */
function prot(
  dir: DmaDirection,
  attrs: DmaAttrs,
): { read: boolean; write: boolean; mmio: boolean } {
  return {
    read: dir === "to-device" || dir === "bidirectional",
    write: dir === "from-device" || dir === "bidirectional",
    mmio: attrs.mmio === true,
  };
}
