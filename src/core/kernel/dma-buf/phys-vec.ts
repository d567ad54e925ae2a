/**
 * @module phys-vec
 * The 2025 generic mapping helper for MMIO exporters (drivers/dma-buf/dma-buf-mapping.c):
 * `dma_buf_phys_vec_to_sgt()` turns a list of physical ranges of a PCI BAR into a page-less
 * sg_table for one attachment, deciding by the P2PDMA map type between the exporting function's
 * provider and the importer: PCI bus addresses (BUS_ADDR), one IOVA range through the host bridge
 * (THRU_HOST_BRIDGE behind a translating IOMMU), per-range `dma_map_phys(DMA_ATTR_MMIO)`
 * (THRU_HOST_BRIDGE without one), or -EINVAL. `dma_buf_free_sgt()` undoes it.
 * Spec: ../../../../../shared/specs/dma-buf.md §3.4, p2pdma-iommu-dma.md §9.
 *
 * What the source says and the spec does not (checked in torvalds/linux @0b9828c7):
 * - every range is linked at offset 0 of the IOVA (`dma_iova_link(..., paddr, 0, len, ...)`), so
 *   with an IOMMU and more than one range the second link hits an IOVA already mapped and the
 *   whole mapping fails (here -EEXIST, the model's iommu_map overlap error);
 * - the table is returned with `orig_nents = 0` and `dma_buf_free_sgt()` calls `sg_free_table()`
 *   without restoring it, and `__sg_free_table()` walks `orig_nents`: the kernel frees none of the
 *   scatterlist arrays. The model frees them and says so in `core.modelReports`;
 * - `fill_sg_entry()` does not set SG_DMA_BUS_ADDRESS. The model marks BUS_ADDR entries anyway,
 *   so traces classify them as bus addresses (nothing in the kernel reads the flag on these
 *   tables);
 * - when the first `dma_iova_link()` fails (only an untrusted device with an unaligned range),
 *   the unwind does nothing and the IOVA from `dma_iova_try_alloc()` is never freed.
 */

import { dmaAddr, physAddr } from "../../hw/address.ts";
import type { DmaApi, DmaDirection, DmaIovaState } from "../dma/mapping.ts";
import { dmaUseIova } from "../dma/mapping.ts";
import { type KErr, KernelBug, type KResult, kerr, kok } from "../errno.ts";
import {
  for_each_sg,
  for_each_sgtable_dma_sg,
  type Scatterlist,
  type SgTable,
  sg_alloc_table,
  sg_dma_mark_bus_address,
  sg_free_table,
  sg_set_page,
  UINT_MAX,
} from "../lib/scatterlist.ts";
import { type P2pProvider, PAGE_SIZE_N } from "../mm/page.ts";
import type { P2pdma, P2pMapType } from "../pci/p2pdma.ts";
import type { DmaBufAttachment } from "./attachment.ts";

/** `struct phys_vec`: one physical range (CPU physical address of MMIO, length in bytes). */
export interface PhysVec {
  readonly paddr: bigint;
  readonly len: bigint;
}

/** What the helper needs from the running kernel (a `System` has both). */
export interface PhysVecDeps {
  readonly dma: DmaApi;
  readonly p2pdma: P2pdma;
}

/** `ALIGN_DOWN(UINT_MAX, PAGE_SIZE)`: the longest entry the helper writes (0xfffff000). */
export const MAX_SG_ENT_SZ: bigint = BigInt(UINT_MAX) & ~(PAGE_SIZE_N - 1n);

/** `struct dma_buf_dma`: the table with how it was mapped. */
interface DmaBufDma {
  readonly attach: DmaBufAttachment;
  /** null: BUS_ADDR (no DMA API at all). */
  readonly state: DmaIovaState | null;
  readonly size: bigint;
  readonly mapType: P2pMapType;
}

const mappings = new WeakMap<SgTable, DmaBufDma>();

/** How a table from `dmaBufPhysVecToSgt` was mapped (for tests and traces); null if it was not. */
export function physVecMapping(
  sgt: SgTable,
): { readonly mapType: P2pMapType; readonly iova: boolean } | null {
  const d = mappings.get(sgt);
  return d ? { mapType: d.mapType, iova: d.state !== null && dmaUseIova(d.state) } : null;
}

// models fill_sg_entry(): page-less entries of at most MAX_SG_ENT_SZ from `addr`; the next free slot.
function fillSgEntry(
  ents: readonly Scatterlist[],
  at: number,
  length: bigint,
  addr: bigint,
): number {
  let left = length;
  let a = addr;
  let i = at;
  while (left > 0n) {
    const len = left < MAX_SG_ENT_SZ ? left : MAX_SG_ENT_SZ;
    left -= len;
    const s = ents[i];
    // the kernel writes through sg_next() of the last entry: NULL dereference
    if (!s) throw new KernelBug("fill_sg_entry(): ran past the end of the table");
    sg_set_page(s, null, 0, 0);
    s.dma_address = dmaAddr(a);
    s.dma_length = Number(len);
    a += len;
    i++;
  }
  return i;
}

// models calc_sg_nents(): per range without an IOVA, one span with it; u32 overflow gives 0.
function calcSgNents(state: DmaIovaState | null, ranges: readonly PhysVec[], size: bigint): bigint {
  const div = (v: bigint): bigint => (v + MAX_SG_ENT_SZ - 1n) / MAX_SG_ENT_SZ;
  if (state === null || !dmaUseIova(state)) {
    let n = 0n;
    for (const r of ranges) {
      n += div(r.len);
      if (n > BigInt(UINT_MAX)) return 0n;
    }
    return n;
  }
  return div(size);
}

/**
 * A page-less table of `physVec` for `attach.dev`: resv must be held (lockdep report otherwise);
 * no provider: WARN, -EINVAL; map type BUS_ADDR: bus addresses (`paddr + bus_offset`), no IOMMU;
 * THRU_HOST_BRIDGE: one IOVA for `size` (`dma_iova_try_alloc`, each range linked with
 * DMA_ATTR_MMIO, one sync) or, without a translating IOMMU, `dma_map_phys(DMA_ATTR_MMIO)` per
 * range; anything else -EINVAL. Entries are split at MAX_SG_ENT_SZ, have no page, CPU length 0,
 * and `orig_nents` is 0. A failure unwinds what was mapped. models dma_buf_phys_vec_to_sgt()
 */
export function dmaBufPhysVecToSgt(
  deps: PhysVecDeps,
  attach: DmaBufAttachment | null,
  provider: P2pProvider | null,
  physVec: readonly PhysVec[],
  size: bigint,
  dir: DmaDirection,
): KResult<SgTable> {
  // the kernel reads attach->dmabuf->resv before its WARN_ON(!attach): an oops; the model WARNs
  if (!attach) return kerr("EINVAL", "dma_buf_phys_vec_to_sgt(NULL attachment)", { warn: true });
  const { dmabuf, dev } = attach.live("dma_buf_phys_vec_to_sgt()");
  const core = dmabuf.core;
  dmabuf.resv.assertHeld("dma_buf_phys_vec_to_sgt");
  if (!provider) {
    const msg = `dma_buf_phys_vec_to_sgt(${attach.describe()}): no p2pdma provider (MMIO only)`;
    core.warn(msg);
    return kerr("EINVAL", msg, { warn: true });
  }
  const mapType = deps.p2pdma.mapType(provider.owner, dev.fn);
  let state: DmaIovaState | null = null;
  switch (mapType) {
    case "bus-address":
      break;
    case "through-host-bridge":
      state = { addr: dmaAddr(0n), size: 0n };
      deps.dma.iovaTryAlloc(dev, state, 0n, size);
      break;
    default:
      return kerr(
        "EINVAL",
        `${dev.name} cannot reach ${provider.owner.name} BAR${provider.bar} (P2PDMA map type ${mapType})`,
      );
  }
  const useIova = state !== null && dmaUseIova(state);
  const nents = calcSgNents(state, physVec, size);
  const t = sg_alloc_table(Number(nents), {
    name: `dma-buf phys_vec sgt of ${dmabuf.describe()} for ${dev.name}`,
  });
  if (!t.ok) return t; // the kernel frees the state, not an IOVA it allocated (none when nents is 0)
  const sgt = t.value;
  const ents = [...for_each_sg(sgt.sgl, sgt.nents)];
  let at = 0;
  let mappedLen = 0n;
  let failed: { i: number; err: KErr } | null = null;
  for (let i = 0; i < physVec.length; i++) {
    const r = physVec[i]!;
    let addr = 0n;
    if (state === null) {
      // models pci_p2pdma_bus_addr_map()
      addr = r.paddr + provider.busOffset;
    } else if (useIova) {
      // the kernel links every range at offset 0 of the IOVA (see the module comment)
      const l = deps.dma.iovaLink(dev, state, r.paddr, 0n, r.len, dir, { mmio: true });
      if (!l.ok) {
        failed = { i, err: l };
        break;
      }
      mappedLen += r.len;
    } else {
      const d = deps.dma.mapPhys(dev, physAddr(r.paddr), r.len, dir, { mmio: true });
      if (deps.dma.mappingError(dev, d)) {
        failed = {
          i,
          err: kerr("ENOMEM", `dma_map_phys of 0x${r.paddr.toString(16)} for ${dev.name} failed`),
        };
        break;
      }
      addr = d;
    }
    if (!useIova) {
      const from = at;
      at = fillSgEntry(ents, at, r.len, addr);
      if (state === null) for (let k = from; k < at; k++) sg_dma_mark_bus_address(ents[k]!);
    }
  }
  if (!failed && useIova) {
    if (mappedLen !== size)
      core.warnOnce(
        "dma_buf_phys_vec_to_sgt:mapped_len",
        `dma_buf_phys_vec_to_sgt: linked ${mappedLen} bytes of ${size}`,
      );
    const s = deps.dma.iovaSync(dev, state!, 0n, mappedLen);
    if (!s.ok) failed = { i: physVec.length, err: s };
    else at = fillSgEntry(ents, at, mappedLen, state!.addr);
  }
  if (failed) {
    // models the err_unmap_dma unwind: nothing when the first range failed or for bus addresses
    if (failed.i !== 0 && state !== null) {
      if (useIova) deps.dma.iovaDestroy(dev, state, mappedLen);
      else {
        // the kernel also passes the never-filled entries (address 0, length 0): a no-op
        for (const s of for_each_sgtable_dma_sg(sgt))
          if (s.dma_length !== 0)
            deps.dma.unmapPhys(dev, s.dma_address, BigInt(s.dma_length), dir, { mmio: true });
      }
    }
    sg_free_table(sgt);
    return failed.err;
  }
  if (at !== ents.length)
    core.warnOnce(
      "dma_buf_phys_vec_to_sgt:sgl",
      `dma_buf_phys_vec_to_sgt: ${ents.length - at} entr(ies) of ${ents.length} left unused`,
    );
  // no CPU list: importers must walk nents
  sgt.orig_nents = 0;
  mappings.set(sgt, { attach, state, size, mapType });
  return kok(sgt);
}

/**
 * Undo `dmaBufPhysVecToSgt`: resv must be held; the IOVA destroyed, or each entry unmapped with
 * `dma_unmap_phys(DMA_ATTR_MMIO)`, or nothing for bus addresses; then the table freed. A table
 * the helper did not make throws. models dma_buf_free_sgt()
 */
export function dmaBufFreeSgt(
  deps: PhysVecDeps,
  attach: DmaBufAttachment,
  sgt: SgTable,
  dir: DmaDirection,
): void {
  const { dmabuf, dev } = attach;
  dmabuf.resv.assertHeld("dma_buf_free_sgt");
  const d = mappings.get(sgt);
  if (!d || d.attach !== attach)
    throw new KernelBug(
      `dma_buf_free_sgt(): ${sgt.name} was not made by dma_buf_phys_vec_to_sgt() for ${attach.describe()} (or was already freed)`,
    );
  mappings.delete(sgt);
  if (d.state !== null) {
    if (dmaUseIova(d.state)) deps.dma.iovaDestroy(dev, d.state, d.size);
    else
      for (const s of for_each_sgtable_dma_sg(sgt))
        deps.dma.unmapPhys(dev, s.dma_address, BigInt(s.dma_length), dir, { mmio: true });
  }
  if (sgt.orig_nents === 0)
    dmabuf.core.modelReports.push(
      `dma_buf_free_sgt(${sgt.name}): sg_free_table() with orig_nents 0 frees none of its ${sgt.nents} entr(ies) in the kernel (__sg_free_table walks orig_nents): the scatterlist array is leaked`,
    );
  sg_free_table(sgt);
}
