/**
 * @module swiotlb
 * Bounce buffering (kernel/dma/swiotlb.c), as far as device-visible behaviour goes: a pool of
 * 2 KiB slots in low memory, allocated first-fit inside 128-slot segments; data is copied in at map
 * (to the device) and out at unmap or sync (from the device). MMIO is never bounced.
 */

import type { DmaAddr, PhysAddr } from "../../hw/address.ts";
import { dmaAddr } from "../../hw/address.ts";
import type { PhysicalMemory } from "../../hw/memory.ts";
import { DMA_MAPPING_ERROR } from "../lib/scatterlist.ts";
import type { DmaDevice } from "./device.ts";
import { dmaLimit } from "./device.ts";
import type { DmaDirection } from "./mapping.ts";

/** IO_TLB_SHIFT 11: 2 KiB slots. */
export const IO_TLB_SIZE = 2048n;
/** IO_TLB_SEGSIZE: an allocation never crosses a 128-slot segment. */
export const IO_TLB_SEGSIZE = 128;

interface Bounce {
  readonly tlb: bigint;
  readonly orig: bigint;
  readonly size: bigint;
  readonly slots: number;
  readonly first: number;
}

export class Swiotlb {
  readonly start: PhysAddr;
  readonly slots: number;
  readonly #used: Uint8Array;
  readonly #live = new Map<bigint, Bounce>();
  readonly #memory: PhysicalMemory;

  constructor(memory: PhysicalMemory, start: PhysAddr, bytes: bigint) {
    this.#memory = memory;
    this.start = start;
    this.slots = Number(bytes / IO_TLB_SIZE);
    this.#used = new Uint8Array(this.slots);
  }

  /** models swiotlb_tbl_map_single() + the copy to the device. */
  map(dev: DmaDevice, orig: PhysAddr, size: bigint, dir: DmaDirection): DmaAddr {
    const n = Number((size + IO_TLB_SIZE - 1n) / IO_TLB_SIZE);
    for (let seg = 0; seg + n <= this.slots; seg += IO_TLB_SEGSIZE) {
      const end = Math.min(seg + IO_TLB_SEGSIZE, this.slots);
      let run = 0;
      for (let i = seg; i < end; i++) {
        run = this.#used[i] ? 0 : run + 1;
        if (run === n) {
          const first = i - n + 1;
          const tlb = this.start + BigInt(first) * IO_TLB_SIZE;
          if (tlb + size - 1n > dmaLimit(dev)) return DMA_MAPPING_ERROR;
          this.#used.fill(1, first, i + 1);
          this.#live.set(tlb, { tlb, orig, size, slots: n, first });
          // every direction: a from-device slot must not leak stale bytes back at unmap
          // (6.1 bounces unconditionally since "swiotlb: rework fix info leak")
          void dir;
          this.#memory.write(tlb as PhysAddr, this.#memory.read(orig, Number(size)));
          return dmaAddr(tlb);
        }
      }
    }
    return DMA_MAPPING_ERROR;
  }

  isBounce(dma: bigint): boolean {
    return dma >= this.start && dma < this.start + BigInt(this.slots) * IO_TLB_SIZE;
  }

  /** models swiotlb_tbl_unmap_single(): copy back what the device wrote, free the slots. */
  unmapIfBounced(
    _dev: DmaDevice,
    dma: bigint,
    _size: bigint,
    dir: DmaDirection,
    skipCpuSync = false,
  ): void {
    const b = this.#live.get(dma);
    if (!b) return;
    if (!skipCpuSync && (dir === "from-device" || dir === "bidirectional"))
      this.#memory.write(b.orig as PhysAddr, this.#memory.read(b.tlb as PhysAddr, Number(b.size)));
    this.#used.fill(0, b.first, b.first + b.slots);
    this.#live.delete(dma);
  }

  /** models swiotlb_sync_single_for_cpu/device(). */
  sync(_dev: DmaDevice, dma: bigint, size: bigint, dir: DmaDirection, to: "cpu" | "device"): void {
    const b = this.#live.get(dma);
    if (!b) return;
    const n = Number(size < b.size ? size : b.size);
    if (to === "cpu" && (dir === "from-device" || dir === "bidirectional"))
      this.#memory.write(b.orig as PhysAddr, this.#memory.read(b.tlb as PhysAddr, n));
    if (to === "device" && (dir === "to-device" || dir === "bidirectional"))
      this.#memory.write(b.tlb as PhysAddr, this.#memory.read(b.orig as PhysAddr, n));
  }

  get liveBounces(): number {
    return this.#live.size;
  }

  /** Every bounce slot run in use: its address in the pool, the original buffer, the slots. */
  bounces(): { tlb: bigint; orig: bigint; size: bigint; slots: number }[] {
    return [...this.#live.values()].map((b) => ({
      tlb: b.tlb,
      orig: b.orig,
      size: b.size,
      slots: b.slots,
    }));
  }
}
