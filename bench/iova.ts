/**
 * iova-alloc-free-vs-no-cache: IOVA alloc+free pairs per second in a strict DMA domain, the way a
 * driver with a ring of 64 outstanding mappings of mixed small sizes (1–16 pages) uses them —
 * through the per-CPU magazines (`iommu_dma_alloc_iova` / `iommu_dma_free_iova`) against the
 * same sequence straight on the tree (`alloc_iova` / `remove_iova`), which is what the kernel did
 * before the rcache. Median of 3 alternating rounds of 400,000 pairs each.
 */
import {
  dmaClient,
  IommuDmaDomain,
  IovaDomain,
  iommuDmaAllocIova,
  iommuDmaFreeIova,
  iovaReserveIommuRegions,
  X86_MSI_REGION,
} from "../src/core/kernel/iommu/iova.ts";
import { gc, median } from "./isolate.ts";
import type { BenchResult } from "./run.ts";

const RING = 64;
const PAIRS = 400_000;
const PAGES = [1, 1, 1, 2, 2, 3, 4, 4, 8, 16, 1, 2, 5, 1, 12, 2];
const U64 = (1n << 64n) - 1n;
const LIMIT32 = 0xffff_ffffn >> 12n;

function sizes(): bigint[] {
  let x = 12345;
  return Array.from({ length: 4096 }, () => {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    return BigInt(PAGES[x % PAGES.length]!);
  });
}

export function benchIova(): BenchResult {
  const sz = sizes();
  const dom = new IommuDmaDomain({ type: "DMA", group: "bench", resvRegions: [X86_MSI_REGION] });
  const dev = dmaClient("0000:01:00.0");
  const ours = (): number => {
    const ring: [bigint, bigint][] = [];
    const t0 = performance.now();
    for (let i = 0; i < PAIRS + RING; i++) {
      if (ring.length === RING || (i >= PAIRS && ring.length > 0)) {
        const [iova, len] = ring.shift()!;
        iommuDmaFreeIova(dom, iova, len);
      }
      if (i >= PAIRS) continue;
      const len = sz[i & 4095]! << 12n;
      const iova = iommuDmaAllocIova(dom, dev, len, U64);
      if (iova === null) throw new Error("iova-alloc-free-vs-no-cache: rcache path ran out");
      ring.push([iova, len]);
    }
    return performance.now() - t0;
  };
  const tree = new IovaDomain();
  iovaReserveIommuRegions(tree, [X86_MSI_REGION]);
  const baseline = (): number => {
    const ring: { pfnLo: bigint; pfnHi: bigint }[] = [];
    const t0 = performance.now();
    for (let i = 0; i < PAIRS + RING; i++) {
      if (ring.length === RING || (i >= PAIRS && ring.length > 0)) tree.removeIova(ring.shift()!);
      if (i >= PAIRS) continue;
      const r = tree.allocIova(sz[i & 4095]!, LIMIT32, true);
      if (r === null) throw new Error("iova-alloc-free-vs-no-cache: tree path ran out");
      ring.push(r);
    }
    return performance.now() - t0;
  };
  const treeNodes = tree.nodes().length;
  ours();
  baseline();
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < 3; i++) {
    gc();
    a.push(ours());
    gc();
    b.push(baseline());
  }
  if (tree.nodes().length !== treeNodes) throw new Error("the tree baseline leaked IOVA ranges");
  // everything freed: what the tree still holds is the reservation plus the magazines' pfns
  const cached = dom.iovad.cachedPfns().length;
  if (dom.iovad.nodes().length !== treeNodes + cached)
    throw new Error("the rcache path leaked IOVA ranges");
  const us = PAIRS / (median(a) / 1000);
  const them = PAIRS / (median(b) / 1000);
  return {
    name: "iova-alloc-free-vs-no-cache",
    value: us,
    unit: "pairs/s",
    baseline: them,
    ratio: us / them,
    note: `ring of ${RING}, 1-16 pages, strict domain, 32-bit-first PCI device; ${cached} pfns left in magazines`,
  };
}
