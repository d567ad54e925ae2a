/**
 * @module iommu
 * IOMMU hardware: per-domain translation tables (IOVA → physical, with read/write/MMIO
 * permissions) and the fault log. The kernel side (kernel/iommu) decides what to map; this
 * side only translates or faults, as the DMA remapping unit does.
 */

import type { PhysAddr } from "./address.ts";

export interface IommuProt {
  readonly read: boolean;
  readonly write: boolean;
  /** IOMMU_MMIO: device memory, uncached. */
  readonly mmio: boolean;
}

export type DomainType = "blocked" | "identity" | "dma" | "dma-fq";

interface Mapping {
  iova: bigint;
  phys: bigint;
  size: bigint;
  prot: IommuProt;
}

export type Translation =
  | {
      readonly ok: true;
      readonly phys: PhysAddr /** bytes valid from here in this mapping */;
      readonly run: bigint;
      readonly prot: IommuProt | null;
    }
  | { readonly ok: false; readonly reason: "blocked" | "not-present" | "no-read" | "no-write" };

/** The translation structure of one IOMMU domain. */
export class IommuPageTable {
  readonly type: DomainType;
  readonly granule: bigint;
  readonly #maps: Mapping[] = [];

  constructor(type: DomainType, granule = 4096n) {
    this.type = type;
    this.granule = granule;
  }

  get mappedBytes(): bigint {
    return this.#maps.reduce((s, m) => s + m.size, 0n);
  }

  #find(iova: bigint): number {
    let lo = 0;
    let hi = this.#maps.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const m = this.#maps[mid]!;
      if (iova < m.iova) hi = mid - 1;
      else if (iova >= m.iova + m.size) lo = mid + 1;
      else return mid;
    }
    return -1 - lo;
  }

  /** `iommu_map()`: granule-aligned; an overlap is -EEXIST in the kernel, an error here. */
  map(iova: bigint, phys: bigint, size: bigint, prot: IommuProt): void {
    if (this.type === "blocked" || this.type === "identity")
      throw new Error(`iommu_map on a ${this.type} domain`);
    const g = this.granule - 1n;
    if ((iova & g) !== 0n || (phys & g) !== 0n || (size & g) !== 0n || size === 0n)
      throw new Error(
        `iommu_map: iova 0x${iova.toString(16)} phys 0x${phys.toString(16)} size 0x${size.toString(16)} not granule-aligned`,
      );
    const at = this.#find(iova);
    const idx = at >= 0 ? at : -1 - at;
    const next = this.#maps[idx];
    const prev = this.#maps[idx - 1];
    if (at >= 0 || (next && next.iova < iova + size) || (prev && prev.iova + prev.size > iova))
      throw new Error(
        `iommu_map: 0x${iova.toString(16)}+0x${size.toString(16)} is already mapped (EEXIST)`,
      );
    this.#maps.splice(idx, 0, { iova, phys, size, prot });
  }

  /** `iommu_unmap()`: removes whole or partial mappings in the range; returns bytes unmapped. */
  unmap(iova: bigint, size: bigint): bigint {
    let done = 0n;
    const end = iova + size;
    const keep: Mapping[] = [];
    for (const m of this.#maps) {
      const mEnd = m.iova + m.size;
      if (mEnd <= iova || m.iova >= end) {
        keep.push(m);
        continue;
      }
      if (m.iova < iova) keep.push({ ...m, size: iova - m.iova });
      if (mEnd > end)
        keep.push({ iova: end, phys: m.phys + (end - m.iova), size: mEnd - end, prot: m.prot });
      done += (mEnd < end ? mEnd : end) - (m.iova > iova ? m.iova : iova);
    }
    this.#maps.length = 0;
    this.#maps.push(...keep);
    return done;
  }

  /** What the remapping hardware does for one untranslated request. */
  translate(iova: bigint, write: boolean): Translation {
    if (this.type === "blocked") return { ok: false, reason: "blocked" };
    if (this.type === "identity")
      return { ok: true, phys: iova as PhysAddr, run: 1n << 62n, prot: null };
    const i = this.#find(iova);
    if (i < 0) return { ok: false, reason: "not-present" };
    const m = this.#maps[i]!;
    if (write && !m.prot.write) return { ok: false, reason: "no-write" };
    if (!write && !m.prot.read) return { ok: false, reason: "no-read" };
    return {
      ok: true,
      phys: (m.phys + (iova - m.iova)) as PhysAddr,
      run: m.iova + m.size - iova,
      prot: m.prot,
    };
  }
}
