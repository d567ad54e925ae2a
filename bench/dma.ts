/**
 * dma-1GiB-scattered-vs-copy / dma-1GiB-contiguous-vs-copy: a device behind a DMA-domain IOMMU
 * writes 1 GiB into RAM with `Fabric.dmaWrite`, one call per DMA segment of a buffer mapped
 * with dma_map_sgtable — 262,144 scattered 4 KiB pages, or 512 scattered 2 MiB runs — against a
 * plain `Uint8Array.set` of the same 1 GiB in the same process. Both write memory already
 * touched once (the first, page-faulting pass of each is reported in the note); median of 6
 * passes, their order rotated. A sample of pages is read back and compared. The note also gives
 * the floor: the same copies straight into PhysicalMemory, without IOMMU or fabric.
 */

import { dmaSetMaskAndCoherent } from "../src/core/kernel/dma/device.ts";
import {
  sg_alloc_table_from_pages,
  sgtableDmaSegments,
} from "../src/core/kernel/lib/scatterlist.ts";
import type { Page } from "../src/core/kernel/mm/page.ts";
import { System } from "../src/core/kernel/system.ts";
import { topo } from "../test/support/topology.ts";
import { gc, median } from "./isolate.ts";
import type { BenchResult } from "./run.ts";

const GiB = 1 << 30;
const PAGE = 4096;
const RUN = 512; // pages per 2 MiB run

/** A deterministic shuffle (xorshift), so every run maps the same layout. */
function shuffle(n: number, seed = 0x9e3779b9): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  let x = seed >>> 0;
  for (let i = n - 1; i > 0; i--) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const j = x % (i + 1);
    const t = a[i]!;
    a[i] = a[j]!;
    a[j] = t;
  }
  return a;
}

export function benchDma1GiB(layout: "scattered" | "contiguous"): BenchResult {
  const name = `dma-1GiB-${layout}-vs-copy`;
  const sys = new System(
    topo()
      .hostFn("00:00.0", "8086:2020")
      .rootPort("00:01.0")
      .ep("01:00.0", { parent: "00:01.0" })
      .iommu("dma")
      .build(),
  );
  const dev = sys.device("01:00.0");
  dmaSetMaskAndCoherent(dev, 64);
  // 1 GiB out of a 2 GiB pool: random pages, or random 2 MiB runs of which no two are adjacent
  const pool = sys.allocPages(2n * BigInt(GiB));
  const pages: Page[] = [];
  if (layout === "scattered") {
    const order = shuffle(pool.length);
    for (let i = 0; i < GiB / PAGE; i++) pages.push(pool[order[i]!]!);
  } else {
    const order = shuffle(pool.length / RUN / 2);
    for (let r = 0; r < GiB / PAGE / RUN; r++)
      for (let i = 0; i < RUN; i++) pages.push(pool[2 * order[r]! * RUN + i]!);
  }
  let t = performance.now();
  const sgt = sg_alloc_table_from_pages(pages, 0, GiB);
  if (!sgt.ok) throw new Error(`${name}: sg_alloc_table_from_pages failed`);
  const table = sgt.value;
  const tSg = performance.now() - t;
  t = performance.now();
  const mapped = sys.dma.mapSgtable(dev, table, "from-device");
  const tMap = performance.now() - t;
  if (!mapped.ok) throw new Error(`${name}: dma_map_sgtable failed: ${mapped.errno}`);
  const segs = sgtableDmaSegments(table);
  const iommu = dev.translation.kind === "dma" ? dev.translation.table : null;
  if (!iommu || iommu.mappedBytes !== BigInt(GiB))
    throw new Error(`${name}: the IOMMU does not map 1 GiB`);

  const src = new Uint8Array(GiB);
  const words = new Uint32Array(src.buffer);
  for (let i = 0; i < words.length; i++) words[i] = Math.imul(i, 0x9e3779b1) ^ (i >>> 7);
  const dst = new Uint8Array(GiB);
  const plain = (): number => {
    const t0 = performance.now();
    dst.set(src);
    return performance.now() - t0;
  };
  const ours = (): number => {
    const t0 = performance.now();
    let at = 0;
    for (const s of segs) {
      const r = sys.fabric.dmaWrite(dev.fn, s.dma_address, src.subarray(at, at + s.dma_length));
      if (!r.ok) throw new Error(`${name}: DMA fault: ${r.fault.reason}`);
      at += s.dma_length;
    }
    if (at !== GiB) throw new Error(`${name}: segments cover ${at} bytes`);
    return performance.now() - t0;
  };
  // the memory floor: the same copies, physically contiguous runs of the buffer straight into
  // PhysicalMemory, with no IOMMU, fabric or DMA segments in between
  const runs: [number, number, number][] = [];
  for (const [i, p] of pages.entries()) {
    const phys = Number(System.phys(p));
    const last = runs.at(-1);
    if (last && last[0] + last[2] === phys) last[2] += PAGE;
    else runs.push([phys, i * PAGE, PAGE]);
  }
  const floor = (): number => {
    const t0 = performance.now();
    for (const [phys, at, len] of runs) sys.memory.writeAt(phys, src, at, len);
    return performance.now() - t0;
  };
  gc();
  const coldOurs = ours();
  const coldPlain = plain();
  const a: number[] = [];
  const b: number[] = [];
  const c: number[] = [];
  // the first to run after a full GC shares the machine with its background sweeping: rotate
  const fns: [() => number, number[]][] = [
    [ours, a],
    [plain, b],
    [floor, c],
  ];
  for (let i = 0; i < 6; i++) {
    gc();
    for (let j = 0; j < fns.length; j++) {
      const [fn, out] = fns[(i + j) % fns.length]!;
      out.push(fn());
    }
  }
  // every 257th page, whole, where the mapping put it
  let checked = 0;
  for (let i = 0; i < pages.length; i += 257) {
    const got = sys.memory.read(System.phys(pages[i]!), PAGE);
    const want = src.subarray(i * PAGE, (i + 1) * PAGE);
    for (let j = 0; j < PAGE; j++)
      if (got[j] !== want[j])
        throw new Error(`${name}: byte ${i * PAGE + j} did not arrive at page ${i}`);
    checked++;
  }
  const used = new Set(pages);
  const outside = pool.find((p) => !used.has(p))!;
  if (sys.memory.read(System.phys(outside), PAGE).some((x) => x !== 0))
    throw new Error(`${name}: a page outside the buffer changed`);
  t = performance.now();
  sys.dma.unmapSgtable(dev, table, "from-device");
  const tUnmap = performance.now() - t;
  if (iommu.mappedBytes !== 0n) throw new Error(`${name}: unmap left IOMMU mappings`);
  const gbps = (ms: number) => GiB / 1e9 / (ms / 1000);
  const us = gbps(median(a));
  const them = gbps(median(b));
  return {
    name,
    value: us,
    unit: "GB/s",
    baseline: them,
    ratio: us / them,
    note:
      `${table.orig_nents} sg entries, ${segs.length} DMA segments; ` +
      `sg_alloc_table_from_pages ${tSg.toFixed(0)} ms, dma_map_sgtable ${tMap.toFixed(0)} ms, ` +
      `unmap ${tUnmap.toFixed(0)} ms; PhysicalMemory.writeAt alone on the same ${runs.length} ` +
      `runs ${gbps(median(c)).toFixed(2)} GB/s; ` +
      `first (page-faulting) pass ${gbps(coldOurs).toFixed(2)} vs ` +
      `${gbps(coldPlain).toFixed(2)} GB/s; ${checked} pages verified`,
  };
}
