/**
 * @module memory
 * The physical address space: system RAM and every memory BAR, each backed lazily in large
 * chunks so a machine with terabytes of RAM and 96 GiB BARs costs only what is touched.
 * Copies run over maximal contiguous runs, so a large transfer costs close to a memcpy.
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
const CHUNK_N = BigInt(CHUNK);

export class PhysicalMemory {
  readonly #regions: Region[] = [];
  readonly #chunks = new Map<bigint, Uint8Array>();

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

  /** Bytes never written read as zero; reading does not allocate. */
  read(addr: PhysAddr, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.#each(
      addr,
      len,
      (chunk, off, at, n) => {
        if (chunk) out.set(chunk.subarray(off, off + n), at);
      },
      false,
    );
    return out;
  }

  write(addr: PhysAddr, data: Uint8Array): void {
    this.#each(
      addr,
      data.length,
      (chunk, off, at, n) => {
        chunk!.set(data.subarray(at, at + n), off);
      },
      true,
    );
  }

  /** memmove-safe copy inside physical memory. */
  copy(dst: PhysAddr, src: PhysAddr, len: number): void {
    this.write(dst, this.read(src, len));
  }

  /** Bytes actually backed (for tests of laziness and for the UI). */
  get backedBytes(): number {
    return this.#chunks.size * CHUNK;
  }

  #each(
    addr: bigint,
    len: number,
    fn: (chunk: Uint8Array | undefined, off: number, at: number, n: number) => void,
    alloc: boolean,
  ): void {
    let at = 0;
    let a = addr;
    while (at < len) {
      const idx = a / CHUNK_N;
      const off = Number(a % CHUNK_N);
      const n = Math.min(len - at, CHUNK - off);
      let chunk = this.#chunks.get(idx);
      if (!chunk && alloc) {
        chunk = new Uint8Array(CHUNK);
        this.#chunks.set(idx, chunk);
      }
      fn(chunk, off, at, n);
      at += n;
      a += BigInt(n);
    }
  }
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}
