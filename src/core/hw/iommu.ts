/**
 * @module iommu
 * IOMMU hardware: per-domain translation tables (IOVA → physical, with read/write/MMIO
 * permissions) and the fault log. The kernel side (kernel/iommu) decides what to map; this
 * side only translates or faults, as the DMA remapping unit does.
 *
 * The table holds extents rather than page-table entries: runs of granules contiguous in both
 * IOVA and physical space with one permission, merged as they are mapped. That is what a
 * remapping walk sees, and a 1 GiB scatterlist of 262,144 pages costs 262,144 entries at most,
 * each inserted and looked up in logarithmic time. Granule indices are numbers: a 64-bit address
 * over a granule of at least 2 KiB always fits a double exactly.
 */

import type { PhysAddr } from "./address.ts";

export interface IommuProt {
  readonly read: boolean;
  readonly write: boolean;
  /** IOMMU_MMIO: device memory, uncached. */
  readonly mmio: boolean;
}

export type DomainType = "blocked" | "identity" | "dma" | "dma-fq";

interface Extent {
  /** First IOVA granule. */
  iova: number;
  /** First physical granule. */
  phys: number;
  /** Granules. */
  n: number;
  readonly prot: IommuProt;
}

export type Translation =
  | {
      readonly ok: true;
      readonly phys: PhysAddr /** bytes valid from here in this mapping */;
      readonly run: bigint;
      readonly prot: IommuProt | null;
    }
  | { readonly ok: false; readonly reason: "blocked" | "not-present" | "no-read" | "no-write" };

export type TranslationFault = Extract<Translation, { ok: false }>["reason"];

/**
 * Receives one physically contiguous run of a request: its first physical granule, the byte
 * offset into that granule, and its length in bytes.
 */
export type RunSink = (physGranule: number, offset: number, bytes: number) => void;

/** Extents per block: blocks split above twice this, so an insertion moves at most that many. */
const BLOCK = 512;

const sameProt = (a: IommuProt, b: IommuProt): boolean =>
  a === b || (a.read === b.read && a.write === b.write && a.mmio === b.mmio);

/** The translation structure of one IOMMU domain. */
export class IommuPageTable {
  readonly type: DomainType;
  readonly granule: bigint;
  readonly #shift: bigint;
  readonly #g: number;
  /** Extents sorted by IOVA, in blocks sorted by their first extent; no block is empty. */
  readonly #blocks: Extent[][] = [];
  /** Granules mapped. */
  #mapped = 0;

  constructor(type: DomainType, granule = 4096n) {
    if (granule < 1n || (granule & (granule - 1n)) !== 0n)
      throw new Error(`IOMMU granule 0x${granule.toString(16)} is not a power of two`);
    this.type = type;
    this.granule = granule;
    this.#shift = BigInt(granule.toString(2).length - 1);
    this.#g = Number(granule);
  }

  get mappedBytes(): bigint {
    return BigInt(this.#mapped) * this.granule;
  }

  /** Number of extents (merged mappings) in the table. */
  get extents(): number {
    let n = 0;
    for (const b of this.#blocks) n += b.length;
    return n;
  }

  /** Every extent as [iova, phys, size), in IOVA order (for tests and the UI). */
  *mappings(): Generator<{ iova: bigint; phys: bigint; size: bigint; prot: IommuProt }> {
    for (const b of this.#blocks)
      for (const e of b)
        yield {
          iova: BigInt(e.iova) << this.#shift,
          phys: BigInt(e.phys) << this.#shift,
          size: BigInt(e.n) << this.#shift,
          prot: e.prot,
        };
  }

  #granules(what: string, v: bigint): number {
    const n = Number(v >> this.#shift);
    if (!Number.isSafeInteger(n) || v < 0n)
      throw new Error(`IOMMU ${what} 0x${v.toString(16)} is outside what this table models`);
    return n;
  }

  #aligned(op: string, iova: bigint, phys: bigint, size: bigint): void {
    const g = this.granule - 1n;
    if ((iova & g) !== 0n || (phys & g) !== 0n || (size & g) !== 0n || size === 0n)
      throw new Error(
        `${op}: iova 0x${iova.toString(16)} phys 0x${phys.toString(16)} size 0x${size.toString(16)} not granule-aligned`,
      );
  }

  /** Index of the block holding the last extent that starts at or below `g` (0 if none does). */
  #blockOf(g: number): number {
    const bs = this.#blocks;
    let lo = 0;
    let hi = bs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (bs[mid]![0]!.iova <= g) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Index in `b` of the last extent starting at or below `g`, -1 if none. */
  static #indexIn(b: Extent[], g: number): number {
    let lo = 0;
    let hi = b.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (b[mid]!.iova <= g) lo = mid + 1;
      else hi = mid - 1;
    }
    return hi;
  }

  /** `iommu_map()`: granule-aligned; an overlap is -EEXIST in the kernel, an error here. */
  map(iova: bigint, phys: bigint, size: bigint, prot: IommuProt): void {
    if (this.type === "blocked" || this.type === "identity")
      throw new Error(`iommu_map on a ${this.type} domain`);
    this.#aligned("iommu_map", iova, phys, size);
    const vi = this.#granules("iova", iova);
    const pi = this.#granules("physical address", phys);
    const n = this.#granules("size", size);
    if (!Number.isSafeInteger(vi + n) || !Number.isSafeInteger(pi + n))
      throw new Error(`IOMMU mapping 0x${iova.toString(16)}+0x${size.toString(16)} is too large`);
    const bs = this.#blocks;
    if (bs.length === 0) {
      bs.push([{ iova: vi, phys: pi, n, prot }]);
      this.#mapped += n;
      return;
    }
    const bi = this.#blockOf(vi);
    const b = bs[bi]!;
    const i = IommuPageTable.#indexIn(b, vi);
    const prev = i >= 0 ? b[i] : undefined;
    const nextBlock = i + 1 < b.length ? b : bs[bi + 1];
    const ni = i + 1 < b.length ? i + 1 : 0;
    const next = nextBlock?.[ni];
    if ((prev && prev.iova + prev.n > vi) || (next && next.iova < vi + n))
      throw new Error(
        `iommu_map: 0x${iova.toString(16)}+0x${size.toString(16)} is already mapped (EEXIST)`,
      );
    this.#mapped += n;
    const joinsNext =
      next !== undefined &&
      next.iova === vi + n &&
      next.phys === pi + n &&
      sameProt(next.prot, prot);
    if (
      prev &&
      prev.iova + prev.n === vi &&
      prev.phys + prev.n === pi &&
      sameProt(prev.prot, prot)
    ) {
      prev.n += n;
      if (joinsNext) {
        prev.n += next.n;
        nextBlock!.splice(ni, 1);
        if (nextBlock!.length === 0) bs.splice(bs.indexOf(nextBlock!), 1);
      }
      return;
    }
    if (joinsNext) {
      next.iova = vi;
      next.phys = pi;
      next.n += n;
      return;
    }
    b.splice(i + 1, 0, { iova: vi, phys: pi, n, prot });
    if (b.length > 2 * BLOCK) bs.splice(bi + 1, 0, b.splice(BLOCK));
  }

  /**
   * `iommu_unmap()`: removes whole or partial mappings in the granule-aligned range; returns
   * bytes unmapped.
   */
  unmap(iova: bigint, size: bigint): bigint {
    if (size === 0n) return 0n;
    this.#aligned("iommu_unmap", iova, 0n, size);
    const lo = this.#granules("iova", iova);
    const hi = lo + this.#granules("size", size);
    const bs = this.#blocks;
    let done = 0;
    let bi = bs.length === 0 ? 0 : this.#blockOf(lo);
    let i = bs.length === 0 ? 0 : Math.max(0, IommuPageTable.#indexIn(bs[bi]!, lo));
    // fully covered extents are consecutive: only the first and the last can stick out
    while (bi < bs.length) {
      const b = bs[bi]!;
      let from = -1;
      let to = -1;
      let ended = false;
      for (; i < b.length; i++) {
        const e = b[i]!;
        if (e.iova >= hi) {
          ended = true;
          break;
        }
        const end = e.iova + e.n;
        if (end <= lo) continue;
        if (e.iova < lo) {
          done += Math.min(end, hi) - lo;
          e.n = lo - e.iova;
          if (end > hi) {
            b.splice(i + 1, 0, {
              iova: hi,
              phys: e.phys + (hi - e.iova),
              n: end - hi,
              prot: e.prot,
            });
            if (b.length > 2 * BLOCK) bs.splice(bi + 1, 0, b.splice(BLOCK));
            ended = true;
            break;
          }
          continue;
        }
        if (end > hi) {
          done += hi - e.iova;
          e.phys += hi - e.iova;
          e.n = end - hi;
          e.iova = hi;
          ended = true;
          break;
        }
        done += e.n;
        if (from < 0) from = i;
        to = i + 1;
      }
      if (from >= 0) b.splice(from, to - from);
      if (b.length === 0) bs.splice(bi, 1);
      else bi++;
      if (ended) break;
      i = 0;
    }
    this.#mapped -= done;
    return BigInt(done) << this.#shift;
  }

  /** What the remapping hardware does for one untranslated request. */
  translate(iova: bigint, write: boolean): Translation {
    if (this.type === "blocked") return { ok: false, reason: "blocked" };
    if (this.type === "identity")
      return { ok: true, phys: iova as PhysAddr, run: 1n << 62n, prot: null };
    const g = Number(iova >> this.#shift);
    const e = Number.isSafeInteger(g) ? this.#find(g) : undefined;
    if (!e) return { ok: false, reason: "not-present" };
    if (write && !e.prot.write) return { ok: false, reason: "no-write" };
    if (!write && !e.prot.read) return { ok: false, reason: "no-read" };
    const off = iova - (BigInt(e.iova) << this.#shift);
    return {
      ok: true,
      phys: ((BigInt(e.phys) << this.#shift) + off) as PhysAddr,
      run: (BigInt(e.n) << this.#shift) - off,
      prot: e.prot,
    };
  }

  /**
   * The remapping unit on a whole request of `length` bytes at `iova`: `sink` receives each
   * physically contiguous run in order. On the first byte that does not translate, stops and
   * returns its offset into the request and why (the runs before it were delivered).
   */
  translateRuns(
    iova: bigint,
    length: number,
    write: boolean,
    sink: RunSink,
  ): { readonly at: number; readonly reason: TranslationFault } | null {
    if (length <= 0) return null;
    if (this.type === "blocked") return { at: 0, reason: "blocked" };
    const gs = this.#g;
    let g = Number(iova >> this.#shift);
    let off = Number(iova & (this.granule - 1n));
    if (!Number.isSafeInteger(g)) return { at: 0, reason: "not-present" };
    if (this.type === "identity") {
      sink(g, off, length);
      return null;
    }
    const bs = this.#blocks;
    let bi = this.#blockOf(g);
    let i = bs.length === 0 ? -1 : IommuPageTable.#indexIn(bs[bi]!, g);
    let runPhys = -1; // first granule of the run being gathered
    let runOff = 0;
    let runLen = 0;
    let runEnd = -1; // granule just past the run, when it ends on a granule boundary
    let done = 0;
    let fault: TranslationFault | null = null;
    while (done < length) {
      const b = bs[bi];
      const e = b?.[i];
      if (!e || g < e.iova || g >= e.iova + e.n) {
        fault = "not-present";
        break;
      }
      if (write ? !e.prot.write : !e.prot.read) {
        fault = write ? "no-write" : "no-read";
        break;
      }
      const phys = e.phys + (g - e.iova);
      const avail = (e.iova + e.n - g) * gs - off;
      const take = Math.min(avail, length - done);
      if (off === 0 && phys === runEnd) runLen += take;
      else {
        if (runLen > 0) sink(runPhys, runOff, runLen);
        runPhys = phys;
        runOff = off;
        runLen = take;
      }
      done += take;
      if (take < avail) break;
      runEnd = e.phys + e.n;
      g = e.iova + e.n;
      off = 0;
      if (++i >= b!.length) {
        bi++;
        i = 0;
      }
    }
    if (runLen > 0) sink(runPhys, runOff, runLen);
    return fault ? { at: done, reason: fault } : null;
  }

  #find(g: number): Extent | undefined {
    const bs = this.#blocks;
    if (bs.length === 0) return undefined;
    const b = bs[this.#blockOf(g)]!;
    const e = b[IommuPageTable.#indexIn(b, g)];
    return e && g < e.iova + e.n ? e : undefined;
  }
}
