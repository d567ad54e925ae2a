/**
 * @module memory
 * The physical address space: system RAM and every memory BAR, each backed lazily in large
 * chunks so a machine with terabytes of RAM and 96 GiB BARs costs only what is touched.
 * Copies run over maximal contiguous runs, so a large transfer costs close to a memcpy.
 *
 * Two entry points per operation: bigint addresses (any 64-bit value), and numbers for the
 * fabric's per-run loop (`readAt`, `writeAt`, `indexAt`), valid for addresses below 2^53 — every
 * real physical address, since CPUs implement at most 52 address bits.
 */

import type { PhysAddr } from "./address.ts";
import type { PciFunction } from "./machine.ts";

export type RegionKind = "ram" | "bar";

export interface Region {
  readonly kind: RegionKind;
  readonly start: PhysAddr;
  /** Exclusive end. */
  readonly end: PhysAddr;
  readonly name: string;
  /** For BARs: the function and BAR index. */
  readonly owner?: PciFunction;
  readonly bar?: number;
}

/** 2 MiB: large enough that a big transfer touches few chunks, small enough to stay sparse. */
export const CHUNK = 2 * 1024 * 1024;
const CHUNK_SHIFT = 21n;
const CHUNK_MASK = BigInt(CHUNK - 1);
/** Above this a double no longer holds every integer: the numeric paths stay below it. */
export const MAX_EXACT_ADDR = Number.MAX_SAFE_INTEGER;
const EXACT_N = BigInt(MAX_EXACT_ADDR);

/** A bigint bound as a double for the numeric paths: beyond 2^53 nothing numeric reaches it. */
const bound = (v: bigint): number => (v > EXACT_N ? Number.POSITIVE_INFINITY : Number(v));

export class PhysicalMemory {
  readonly #regions: Region[] = [];
  /** Region bounds as doubles, parallel to #regions. */
  #starts: number[] = [];
  #ends: number[] = [];
  #lastRegion = -1;
  /** Chunk index (address >> 21, below 2^43 so always exact) → its bytes. */
  readonly #chunks = new Map<number, Uint8Array>();
  #lastIdx = -1;
  #lastChunk: Uint8Array | undefined;

  /** Adds a region; refuses overlaps, which would make an address ambiguous. */
  addRegion(r: Region): void {
    if (r.end <= r.start) throw new Error(`region ${r.name}: empty or inverted range`);
    for (const o of this.#regions)
      if (r.start < o.end && o.start < r.end)
        throw new Error(
          `region ${r.name} [${hex(r.start)}, ${hex(r.end)}) overlaps ${o.name} [${hex(o.start)}, ${hex(o.end)})`,
        );
    this.#regions.push(r);
    this.#regions.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    this.#starts = this.#regions.map((x) => bound(x.start));
    this.#ends = this.#regions.map((x) => bound(x.end));
    this.#lastRegion = -1;
  }

  get regions(): readonly Region[] {
    return this.#regions;
  }

  /** The region holding `addr`, by binary search. */
  regionAt(addr: bigint): Region | undefined {
    let lo = 0;
    let hi = this.#regions.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.#regions[mid]!;
      if (addr < r.start) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else return r;
    }
    return undefined;
  }

  /** Whether [addr, addr+len) lies inside one region. */
  contains(addr: bigint, len: bigint): Region | undefined {
    const r = this.regionAt(addr);
    return r && addr + len <= r.end ? r : undefined;
  }

  /** Index into `regions` of the one holding `addr` (a double below 2^53), or -1. */
  indexAt(addr: number): number {
    const last = this.#lastRegion;
    if (last >= 0 && addr >= this.#starts[last]! && addr < this.#ends[last]!) return last;
    let lo = 0;
    let hi = this.#starts.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (addr < this.#starts[mid]!) hi = mid - 1;
      else if (addr >= this.#ends[mid]!) lo = mid + 1;
      else {
        this.#lastRegion = mid;
        return mid;
      }
    }
    return -1;
  }

  /** Exclusive end of region `i` as a double (infinite when beyond 2^53). */
  endOf(i: number): number {
    return this.#ends[i]!;
  }

  /** Bytes never written read as zero; reading does not allocate. */
  read(addr: PhysAddr, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.#copyOut(Number(addr >> CHUNK_SHIFT), Number(addr & CHUNK_MASK), out, 0, len);
    return out;
  }

  write(addr: PhysAddr, data: Uint8Array): void {
    this.#copyIn(Number(addr >> CHUNK_SHIFT), Number(addr & CHUNK_MASK), data, 0, data.length);
  }

  /** `len` bytes from physical `addr` (a double below 2^53) into `dst` at `dstOff`. */
  readAt(addr: number, dst: Uint8Array, dstOff: number, len: number): void {
    const idx = Math.floor(addr / CHUNK);
    this.#copyOut(idx, addr - idx * CHUNK, dst, dstOff, len);
  }

  /** `len` bytes of `src` from `srcOff` to physical `addr` (a double below 2^53). */
  writeAt(addr: number, src: Uint8Array, srcOff: number, len: number): void {
    const idx = Math.floor(addr / CHUNK);
    const off = addr - idx * CHUNK;
    if (off + len > CHUNK) {
      this.#copyIn(idx, off, src, srcOff, len);
      return;
    }
    // the common case, a run inside one chunk, without the loop
    let c = this.#lastChunk;
    if (idx !== this.#lastIdx || !c) {
      c = this.#chunks.get(idx);
      if (!c) {
        c = new Uint8Array(CHUNK);
        this.#chunks.set(idx, c);
      }
      this.#lastIdx = idx;
      this.#lastChunk = c;
    }
    c.set(src.subarray(srcOff, srcOff + len), off);
  }

  /** memmove-safe copy inside physical memory. */
  copy(dst: PhysAddr, src: PhysAddr, len: number): void {
    this.write(dst, this.read(src, len));
  }

  /** Bytes actually backed (for tests of laziness and for the UI). */
  get backedBytes(): number {
    return this.#chunks.size * CHUNK;
  }

  #chunk(idx: number, alloc: boolean): Uint8Array | undefined {
    if (idx === this.#lastIdx) return this.#lastChunk;
    let c = this.#chunks.get(idx);
    if (!c) {
      if (!alloc) return undefined;
      c = new Uint8Array(CHUNK);
      this.#chunks.set(idx, c);
    }
    this.#lastIdx = idx;
    this.#lastChunk = c;
    return c;
  }

  #copyIn(idx: number, off: number, src: Uint8Array, at: number, len: number): void {
    const end = at + len;
    while (at < end) {
      const n = Math.min(end - at, CHUNK - off);
      const c = this.#chunk(idx, true)!;
      c.set(at === 0 && n === src.length ? src : src.subarray(at, at + n), off);
      at += n;
      idx++;
      off = 0;
    }
  }

  #copyOut(idx: number, off: number, dst: Uint8Array, at: number, len: number): void {
    const end = at + len;
    while (at < end) {
      const n = Math.min(end - at, CHUNK - off);
      const c = this.#chunk(idx, false);
      if (c) dst.set(off === 0 && n === CHUNK ? c : c.subarray(off, off + n), at);
      else dst.fill(0, at, at + n); // `dst` may be reused: unbacked bytes read as zero
      at += n;
      idx++;
      off = 0;
    }
  }
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}
