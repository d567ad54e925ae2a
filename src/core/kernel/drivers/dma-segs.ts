/**
 * @module dma-segs
 * The DMA side of a mapped table as the driver models use it: its segments with the kind of
 * address each is (bus address, IOVA, physical), as the drivers trace them, and a walk over a
 * byte range of them for the models that act as DMA engines (the accelerator's and the GPU's copy
 * engines). Model helpers, not kernel functions.
 */

import { hex } from "../../hw/address.ts";
import type { DmaFault } from "../../hw/fabric.ts";
import type { DmaDevice } from "../dma/device.ts";
import { KernelBug } from "../errno.ts";
import {
  for_each_sgtable_dma_sg,
  type Scatterlist,
  type SgTable,
  sg_dma_is_bus_address,
} from "../lib/scatterlist.ts";
import type { System } from "../system.ts";
import type { DmaAddrKind } from "../trace.ts";

/** One DMA segment a device was handed, and what kind of address it is. */
export interface DmaSeg {
  readonly dma: bigint;
  readonly len: bigint;
  readonly kind: DmaAddrKind;
}

/** The DMA side of one mapped entry handed to `dev`, and what kind of address it is. */
export function dmaSegOf(sys: System, dev: DmaDevice, sg: Scatterlist): DmaSeg {
  return {
    dma: sg.dma_address as bigint,
    len: BigInt(sg.dma_length),
    kind: sys.dmaAddrKind(dev, sg.dma_address, sg_dma_is_bus_address(sg)),
  };
}

/** The DMA segments of `sgt` as mapped for `dev`, each with the kind of address it is. */
export function dmaSegments(sys: System, dev: DmaDevice, sgt: SgTable): DmaSeg[] {
  return [...for_each_sgtable_dma_sg(sgt)].map((s) => dmaSegOf(sys, dev, s));
}

/** Segments for a trace line: `0x<dma>+0x<len> <kind>`, comma-separated. */
export function dmaSegsText(segs: readonly DmaSeg[]): string {
  return segs.map((s) => `${hex(s.dma)}+${hex(s.len)} ${s.kind}`).join(", ");
}

/**
 * Calls `io(dma, lo, hi)` for each piece of `[offset, offset + length)` of the segments (bytes
 * `lo..hi` of the transfer); stops at the first fault. Segments that end short of the range are
 * a bug of the caller (a KernelBug, its message prefixed with `owner` when given).
 */
export function walkSegments(
  segs: readonly { readonly dma: bigint; readonly len: bigint }[],
  offset: bigint,
  length: bigint,
  io: (dma: bigint, lo: number, hi: number) => DmaFault | null,
  owner?: string,
): DmaFault | null {
  let pos = 0n;
  let done = 0n;
  for (const s of segs) {
    if (done >= length) break;
    const end = pos + s.len;
    const at = offset + done;
    if (at >= end) {
      pos = end;
      continue;
    }
    const within = at - pos;
    // biome-ignore lint/complexity/useMathMinMax: bigints
    const n = length - done < s.len - within ? length - done : s.len - within;
    const f = io(s.dma + within, Number(done), Number(done + n));
    if (f) return f;
    done += n;
    pos = end;
  }
  if (done < length)
    throw new KernelBug(
      `${owner ? `${owner}: ` : ""}the DMA table covers ${done} of ${length} bytes`,
    );
  return null;
}
