/**
 * lib/scatterlist model: the spec's examples (../shared/specs/p2pdma-iommu-dma.md §6.2, §6.3),
 * the kernel's chaining layout, the lifecycle and DMABUF_DEBUG poisoning, `__finalise_sg`
 * merging (§4.3), the real kernel's segment counts from the QEMU oracle's `dma.tsv`, and
 * fast-check properties.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import fc from "fast-check";
import { dmaAddr, physAddr } from "../../hw/address.ts";
import type { PciFunction } from "../../hw/machine.ts";
import { KernelBug, type KResult } from "../errno.ts";
import { type DevPagemap, isP2pdmaPage, PAGE_SIZE, type Page } from "../mm/page.ts";
import {
  DMA_MAPPING_ERROR,
  type DmaSegLimits,
  finaliseSg,
  for_each_sg,
  for_each_sgtable_dma_sg,
  for_each_sgtable_sg,
  invalidateSg,
  isPoisoned,
  poisonPages,
  type Scatterlist,
  SG_CHAIN,
  SG_DMA_BUS_ADDRESS,
  SG_END,
  SG_MAX_SINGLE_ALLOC,
  SgAppendTable,
  type SgMergeRule,
  type SgTable,
  sg_alloc_append_table_from_pages,
  sg_alloc_table,
  sg_alloc_table_from_pages,
  sg_alloc_table_from_pages_segment,
  sg_chain,
  sg_dma_address,
  sg_dma_is_bus_address,
  sg_dma_is_swiotlb,
  sg_dma_len,
  sg_dma_mark_bus_address,
  sg_dma_mark_swiotlb,
  sg_dma_unmark_bus_address,
  sg_free_append_table,
  sg_free_table,
  sg_init_table,
  sg_is_chain,
  sg_is_dma_bus_address,
  sg_is_last,
  sg_last,
  sg_mark_end,
  sg_nents,
  sg_next,
  sg_page,
  sg_phys,
  sg_set_page,
  sg_unmark_end,
  sgTableLayout,
  sgtableDmaSegments,
  unpoisonPages,
} from "./scatterlist.ts";

// ── helpers ───────────────────────────────────────────────────────────────────────────────────

const GRANULE = 4096;
const ram = (pfn: number | bigint): Page => ({ pfn: BigInt(pfn), pgmap: null });
const ramRun = (...pfns: number[]): Page[] => pfns.map(ram);

let pgmapIds = 1;
/** A P2P pgmap; the scatterlist never looks at the provider's PCI function. */
function pgmap(name = "0000:04:00.0", bar = 2, busOffset = 0n): DevPagemap {
  const owner = { name } as unknown as PciFunction;
  return {
    id: pgmapIds++,
    type: "pci-p2pdma",
    provider: { owner, bar, busOffset },
    start: physAddr(0n),
    end: physAddr((1n << 52n) - 1n),
  };
}
const p2p = (pm: DevPagemap, ...pfns: number[]): Page[] =>
  pfns.map((pfn) => ({ pfn: BigInt(pfn), pgmap: pm }));
const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);

function unwrap<T>(r: KResult<T>): T {
  if (!r.ok) assert.fail(`expected success, got -${r.errno} (${r.reason ?? ""})`);
  return r.value;
}

interface Ent {
  pfn: bigint;
  offset: number;
  length: number;
}
const ents = (t: SgTable): Ent[] =>
  Array.from(for_each_sgtable_sg(t), (sg) => ({
    pfn: sg_page(sg)!.pfn,
    offset: sg.offset,
    length: sg.length,
  }));
const lengths = (t: SgTable): number[] => ents(t).map((e) => e.length);
const nth = (t: SgTable, i: number): Scatterlist => Array.from(for_each_sgtable_sg(t))[i]!;

const alignUp = (v: number, a: number): number => Math.ceil(v / a) * a;

type Classify = (sg: Scatterlist) => { bus: false } | { bus: true; busOffset: bigint };
const allIova: Classify = () => ({ bus: false });

/**
 * The layout half of iommu_dma_map_sg() (spec §4.3, drivers/iommu/dma-iommu.c), as the DMA layer
 * will do it: bus entries get their final address and mark; the others stash their in-granule
 * offset and length and get a granule-aligned IOVA length, padded to the segment boundary.
 * Returns the IOVA length to allocate.
 */
function iommuLayout(sgl: Scatterlist, nents: number, mask: bigint, classify: Classify): bigint {
  let iovaLen = 0n;
  let prev: Scatterlist | null = null;
  for (const s of for_each_sg(sgl, nents)) {
    const off = s.offset & (GRANULE - 1);
    const len = s.length;
    const pad = (mask - iovaLen + 1n) & mask;
    const c = classify(s);
    if (c.bus) {
      s.dma_address = dmaAddr(sg_phys(s) + c.busOffset);
      s.dma_length = s.length;
      sg_dma_mark_bus_address(s);
      continue;
    }
    s.dma_address = dmaAddr(BigInt(off));
    s.dma_length = len;
    s.offset -= off;
    const iovaLenOfS = alignUp(len + off, GRANULE);
    s.length = iovaLenOfS;
    if (pad !== 0n && pad < BigInt(iovaLenOfS) - 1n) {
      prev!.length += Number(pad);
      iovaLen += pad;
    }
    iovaLen += BigInt(iovaLenOfS);
    prev = s;
  }
  return iovaLen;
}

/** Lay out, finalise from `base`, and set `nents` as dma_map_sgtable does. */
function mapIommu(
  t: SgTable,
  base: bigint,
  limits: DmaSegLimits,
  classify: Classify = allIova,
): { count: number; iovaLen: bigint } {
  const iovaLen = iommuLayout(t.sgl!, t.orig_nents, limits.segBoundaryMask, classify);
  const count = finaliseSg(t.sgl!, t.orig_nents, iovaLen === 0n ? 0n : base, limits);
  t.nents = count;
  return { count, iovaLen };
}

const segs = (t: SgTable): [bigint, number, boolean][] =>
  sgtableDmaSegments(t).map((s) => [s.dma_address as bigint, s.dma_length, s.bus]);

const PCI_DEFAULT: DmaSegLimits = { maxSegSize: 65536, segBoundaryMask: 0xffff_ffffn };

/** A table of separate page-aligned entries, built as the oracle module builds its tables. */
function tableOf(entries: { page: Page; len: number; offset?: number }[], name?: string): SgTable {
  const t = unwrap(sg_alloc_table(entries.length, name !== undefined ? { name } : {}));
  let sg = t.sgl;
  for (const e of entries) {
    sg_set_page(sg!, e.page, e.len, e.offset ?? 0);
    sg = sg_next(sg!);
  }
  return t;
}

// ── §6.1 layout, chaining, iteration ─────────────────────────────────────────────────────────

describe("scatterlist layout and chaining (include/linux/scatterlist.h)", () => {
  it("packs 128 entries per 4 KiB array", () => assert.equal(SG_MAX_SINGLE_ALLOC, 128));

  it("sg_alloc_table(0) is -EINVAL", () => {
    const r = sg_alloc_table(0);
    assert.equal(r.ok, false);
    assert.equal(!r.ok && r.errno, "EINVAL");
  });

  it("up to 128 entries: one array, the last entry END", () => {
    for (const n of [1, 2, 127, 128]) {
      const t = unwrap(sg_alloc_table(n));
      assert.deepEqual(sgTableLayout(t), [{ slots: n, chainAt: null }]);
      assert.equal(t.nents, n);
      assert.equal(t.orig_nents, n);
      const all = Array.from(for_each_sgtable_sg(t));
      assert.equal(all.length, n);
      assert.ok(sg_is_last(all[n - 1]!));
      assert.equal(all.filter(sg_is_last).length, 1);
      assert.equal(sg_nents(t.sgl), n);
    }
  });

  it("129 entries: two arrays, the first's 128th slot a chain link", () => {
    const t = unwrap(sg_alloc_table(129, { name: "t129" }));
    assert.deepEqual(sgTableLayout(t), [
      { slots: 128, chainAt: 127 },
      { slots: 2, chainAt: null },
    ]);
    const all = Array.from(for_each_sgtable_sg(t));
    assert.equal(all.length, 129);
    assert.equal(new Set(all).size, 129);
    assert.ok(all.every((sg) => !sg_is_chain(sg)));
    assert.equal(all[127]!.name, "entry 127 of t129");
    assert.equal(all[128]!.page_link, SG_END);
    assert.equal(sg_last(t.sgl!, 129), all[128]);
    assert.equal(sg_nents(t.sgl), 129);
  });

  it("follows the kernel's array sizes for longer tables", () => {
    const cases: [number, number[]][] = [
      [255, [128, 128]],
      [256, [128, 128, 2]],
      [127 * 3 + 1, [128, 128, 128]],
      [1000, [128, 128, 128, 128, 128, 128, 128, 111]],
    ];
    for (const [n, sizes] of cases) {
      const t = unwrap(sg_alloc_table(n));
      const layout = sgTableLayout(t);
      assert.deepEqual(
        layout.map((a) => a.slots),
        sizes,
        `n = ${n}`,
      );
      assert.deepEqual(
        layout.map((a) => a.chainAt),
        sizes.map((s, i) => (i < sizes.length - 1 ? s - 1 : null)),
      );
      assert.equal(Array.from(for_each_sgtable_sg(t)).length, n);
      assert.equal(sg_nents(t.sgl), n);
    }
  });

  it("a failed array allocation is -ENOMEM", () => {
    let calls = 0;
    const r = sg_alloc_table(300, { allocFails: () => ++calls === 2 });
    assert.equal(!r.ok && r.errno, "ENOMEM");
  });

  it("sg_chain, sg_next, sg_last, sg_mark_end, sg_unmark_end", () => {
    const a = sg_init_table(4, "list");
    const b = sg_init_table(3);
    assert.ok(sg_is_last(a[3]!));
    sg_chain(a, 4, b[0]!);
    assert.equal(a[3]!.page_link, SG_CHAIN);
    assert.ok(sg_is_chain(a[3]!));
    assert.equal(sg_next(a[2]!), b[0]);
    assert.equal(sg_nents(a[0]!), 6);
    assert.equal(sg_last(a[0]!, 6), b[2]);
    assert.equal(b[1]!.name, "entry 4 of list");
    assert.match(a[3]!.name, /^chain link \(slot 3 of array #\d+\) of list$/);
    sg_mark_end(b[0]!);
    assert.equal(sg_nents(a[0]!), 4);
    assert.equal(sg_next(b[0]!), null);
    sg_unmark_end(b[0]!);
    assert.equal(sg_nents(a[0]!), 6);
    assert.throws(() => sg_last(a[0]!, 5), KernelBug);
    assert.throws(() => Array.from(for_each_sg(a[0]!, 7)), /ended after 6 of 7/);
    assert.throws(() => sg_chain(a, 5, b[0]!), KernelBug);
    assert.throws(() => sg_page(a[3]!), /sg_page\(\) on chain link/);
    assert.throws(() => sg_set_page(a[3]!, ram(1), 4096, 0), /BUG_ON\(sg_is_chain/);
    // sg_mark_end on a link keeps the array pointer where the page would be.
    sg_mark_end(a[3]!);
    assert.throws(() => sg_page(a[3]!), /array pointer/);
  });

  it("sg_next past an array without END or link is an out-of-bounds read", () => {
    const a = sg_init_table(2);
    sg_unmark_end(a[1]!);
    assert.throws(() => sg_next(a[1]!), /out-of-bounds/);
  });

  it("sg_set_page, sg_page, sg_phys, the DMA accessors and flags", () => {
    const [sg] = sg_init_table(1);
    assert.equal(sg_page(sg!), null);
    assert.throws(() => sg_phys(sg!), /no page/);
    sg_set_page(sg!, ram(0x1234), 100, 0x10);
    assert.equal(sg_phys(sg!), 0x1234010n);
    assert.ok(sg_is_last(sg!), "sg_set_page keeps the END bit");
    sg!.dma_address = dmaAddr(0xfeed_0000n);
    sg!.dma_length = 100;
    assert.equal(sg_dma_address(sg!), 0xfeed_0000n);
    assert.equal(sg_dma_len(sg!), 100);
    assert.ok(!sg_dma_is_bus_address(sg!));
    sg_dma_mark_bus_address(sg!);
    assert.ok(sg_dma_is_bus_address(sg!));
    assert.ok(sg_is_dma_bus_address(sg!));
    assert.equal(sg!.dma_flags, SG_DMA_BUS_ADDRESS);
    sg_dma_unmark_bus_address(sg!);
    assert.ok(!sg_dma_is_bus_address(sg!));
    assert.ok(!sg_dma_is_swiotlb(sg!));
    sg_dma_mark_swiotlb(sg!);
    assert.ok(sg_dma_is_swiotlb(sg!));
    assert.throws(() => {
      sg!.length = -1;
    }, RangeError);
    assert.throws(() => {
      sg!.offset = 2 ** 32;
    }, RangeError);
  });

  it("dma flags live beside page_link, not in it", () => {
    const t = unwrap(sg_alloc_table(2));
    sg_dma_mark_bus_address(t.sgl!);
    assert.equal(t.sgl!.page_link, 0);
    assert.equal(sg_nents(t.sgl), 2);
  });
});

// ── lifecycle ────────────────────────────────────────────────────────────────────────────────

describe("sg_table lifecycle", () => {
  it("double free throws, naming the table", () => {
    const t = unwrap(sg_alloc_table(3, { name: "exporter sgt" }));
    sg_free_table(t);
    assert.ok(t.freed);
    assert.throws(() => sg_free_table(t), /double free: sg_free_table\(\) on exporter sgt/);
  });

  it("use after free throws, naming the table and entry", () => {
    const t = unwrap(sg_alloc_table(200, { name: "imp" }));
    const first = t.sgl!;
    const e150 = nth(t, 150);
    sg_free_table(t);
    assert.throws(() => t.sgl, /use-after-free: imp used after sg_free_table\(\)/);
    assert.throws(() => t.nents, KernelBug);
    assert.throws(() => first.length, /use-after-free: entry 0 of imp touched after/);
    assert.throws(() => e150.dma_address, /entry 150 of imp/);
    assert.throws(() => sg_next(first), KernelBug);
    assert.throws(() => sg_set_page(first, ram(1), 1, 0), KernelBug);
  });

  it("sg_free_append_table frees what the appends allocated", () => {
    const app = new SgAppendTable("app");
    unwrap(sg_alloc_append_table_from_pages(app, ramRun(1, 3, 5), 0, 3 * 4096, 0xffffffff, 0));
    const first = app.sgt.sgl!;
    sg_free_append_table(app);
    assert.throws(() => first.offset, /entry 0 of app/);
    assert.throws(() => sg_free_append_table(app), /double free: sg_free_append_table\(\) on app/);
  });
});

// ── CONFIG_DMABUF_DEBUG ──────────────────────────────────────────────────────────────────────

describe("poisonPages (mangle_sg_table)", () => {
  it("sg_page() on a poisoned entry throws, naming entry and table", () => {
    const t = unwrap(sg_alloc_table_from_pages(ramRun(10, 20, 30, 40, 50), 0, 5 * 4096));
    poisonPages(t);
    const e3 = nth(t, 3);
    assert.ok(isPoisoned(e3));
    assert.throws(
      () => sg_page(e3),
      (e: unknown) =>
        e instanceof KernelBug &&
        e.message ===
          `sg_page() on a poisoned entry 3 of ${t.name}: importers must not touch pages`,
    );
    assert.equal(e3.page, null);
    assert.throws(() => sg_phys(e3), /poisoned/);
    assert.throws(() => sg_set_page(e3, ram(1), 4096, 0), /poisoned/);
    // What importers may use still works.
    assert.equal(e3.length, 4096);
    assert.equal(Array.from(for_each_sgtable_sg(t)).length, 5);
    e3.dma_address = dmaAddr(0x1000n);
    assert.throws(() => poisonPages(t), /already poisoned/);
    unpoisonPages(t);
    assert.equal(sg_page(e3)!.pfn, 40n);
    assert.throws(() => unpoisonPages(t), /not poisoned/);
  });

  it("names entries across chain links", () => {
    const pages = range(0, 200).map((i) => ram(i * 2));
    const t = unwrap(sg_alloc_table_from_pages(pages, 0, 200 * 4096, { name: "big" }));
    assert.equal(sgTableLayout(t).length, 2);
    poisonPages(t);
    assert.throws(() => sg_page(nth(t, 150)), /poisoned entry 150 of big:/);
  });
});

// ── §6.2 sg_alloc_append_table_from_pages ────────────────────────────────────────────────────

describe("sg_alloc_table_from_pages (spec §6.2)", () => {
  it("4 pfn-contiguous pages -> 1 entry of 16384", () => {
    const t = unwrap(sg_alloc_table_from_pages(ramRun(10, 11, 12, 13), 0, 16384));
    assert.deepEqual(ents(t), [{ pfn: 10n, offset: 0, length: 16384 }]);
    assert.equal(t.nents, 1);
    assert.equal(t.orig_nents, 1);
    assert.ok(sg_is_last(t.sgl!));
  });

  it("pfns [10,11,13,14] -> 2 entries", () => {
    const t = unwrap(sg_alloc_table_from_pages(ramRun(10, 11, 13, 14), 0, 16384));
    assert.deepEqual(ents(t), [
      { pfn: 10n, offset: 0, length: 8192 },
      { pfn: 13n, offset: 0, length: 8192 },
    ]);
  });

  it("5 contiguous pages, max_segment 8192 -> 8192, 8192, 4096", () => {
    const t = unwrap(sg_alloc_table_from_pages_segment(ramRun(...range(10, 5)), 0, 20480, 8192));
    assert.deepEqual(lengths(t), [8192, 8192, 4096]);
    assert.deepEqual(
      ents(t).map((e) => e.pfn),
      [10n, 12n, 14n],
    );
  });

  it("pfns [10,11], offset 100, size 8000 -> one entry (offset 100, length 8000)", () => {
    const t = unwrap(sg_alloc_table_from_pages(ramRun(10, 11), 100, 8000));
    assert.deepEqual(ents(t), [{ pfn: 10n, offset: 100, length: 8000 }]);
  });

  it("max_segment 6000 aligns down to 4096: one entry per page", () => {
    const t = unwrap(sg_alloc_table_from_pages_segment(ramRun(...range(10, 4)), 0, 16384, 6000));
    assert.deepEqual(lengths(t), [4096, 4096, 4096, 4096]);
  });

  it("max_segment 2048 -> -EINVAL (with a WARN)", () => {
    const r = sg_alloc_table_from_pages_segment(ramRun(10), 0, 4096, 2048);
    assert.equal(r.ok, false);
    assert.equal(!r.ok && r.errno, "EINVAL");
    assert.equal(!r.ok && r.warn, true);
    assert.equal(sg_alloc_table_from_pages_segment(ramRun(10), 0, 4096, 4095).ok, false);
  });

  it("the first entry's bytes count from the offset", () => {
    // chunk = 2 pages - 100 bytes; the next chunk starts on a page.
    const t = unwrap(
      sg_alloc_table_from_pages_segment(ramRun(...range(10, 4)), 100, 4 * 4096 - 100, 8192),
    );
    assert.deepEqual(ents(t), [
      { pfn: 10n, offset: 100, length: 8092 },
      { pfn: 12n, offset: 0, length: 8192 },
    ]);
  });

  it("a size shorter than the pages: the kernel's unsigned size wraps, later entries stay full", () => {
    // size -= chunk_size on an unsigned long: 100 - 4096 wraps to ~2^64, so min(size, chunk)
    // gives full chunks after the first. The spec's pseudo-code does not say so.
    const t = unwrap(sg_alloc_table_from_pages(ramRun(10, 12, 14), 0, 100));
    assert.deepEqual(lengths(t), [100, 4096, 4096]);
  });

  it("no pages is the kernel's out-of-bounds read of pages[0]", () => {
    assert.throws(() => sg_alloc_table_from_pages([], 0, 0), KernelBug);
  });

  it("more than 128 entries chain exactly like the append allocator does", () => {
    const pages = range(0, 300).map((i) => ram(i * 2));
    const t = unwrap(sg_alloc_table_from_pages(pages, 0, 300 * 4096));
    assert.deepEqual(sgTableLayout(t), [
      { slots: 128, chainAt: 127 },
      { slots: 128, chainAt: 127 },
      { slots: 46, chainAt: null },
    ]);
    assert.deepEqual(
      ents(t).map((e) => e.pfn),
      pages.map((p) => p.pfn),
    );
  });

  describe("page kinds (pages_are_mergeable)", () => {
    const A = pgmap("0000:04:00.0", 2);
    const B = pgmap("0000:04:00.0", 4);

    it("P2P pages of one pgmap merge", () => {
      const t = unwrap(sg_alloc_table_from_pages(p2p(A, 100, 101, 102), 0, 3 * 4096));
      assert.deepEqual(lengths(t), [12288]);
      assert.ok(isP2pdmaPage(sg_page(t.sgl!)!));
    });

    it("P2P pages of two different pgmaps never merge (mainline); they do in 6.1", () => {
      const pages = [...p2p(A, 100, 101), ...p2p(B, 102, 103)];
      const t = unwrap(sg_alloc_table_from_pages(pages, 0, 4 * 4096));
      assert.deepEqual(lengths(t), [8192, 8192]);
      assert.equal(sg_page(nth(t, 1))!.pgmap, B);
      const t61 = unwrap(sg_alloc_table_from_pages(pages, 0, 4 * 4096, { mergeRule: "pfn" }));
      assert.deepEqual(lengths(t61), [16384]);
    });

    it("P2P next to RAM never merges (mainline); it does in 6.1", () => {
      const pages = [ram(99), ...p2p(A, 100), ram(101)];
      const t = unwrap(sg_alloc_table_from_pages(pages, 0, 3 * 4096));
      assert.deepEqual(lengths(t), [4096, 4096, 4096]);
      const t61 = unwrap(sg_alloc_table_from_pages(pages, 0, 3 * 4096, { mergeRule: "pfn" }));
      assert.deepEqual(lengths(t61), [12288]);
    });
  });

  describe("append (sg_alloc_append_table_from_pages)", () => {
    it("leading contiguous pages grow prv; the END mark waits for left_pages = 0", () => {
      const app = new SgAppendTable("app");
      unwrap(sg_alloc_append_table_from_pages(app, ramRun(10, 11), 0, 8192, 0xffffffff, 2));
      assert.equal(app.sgt.orig_nents, 1);
      assert.equal(app.total_nents, 3, "first array sized chunks + left_pages");
      assert.ok(!sg_is_last(app.prv!));
      unwrap(sg_alloc_append_table_from_pages(app, ramRun(12, 13), 0, 8192, 0xffffffff, 0));
      assert.deepEqual(ents(app.sgt), [{ pfn: 10n, offset: 0, length: 16384 }]);
      assert.ok(sg_is_last(app.prv!));
      assert.equal(app.sgt.nents, 1);
    });

    it("non-contiguous pages start a new entry", () => {
      const app = new SgAppendTable();
      unwrap(sg_alloc_append_table_from_pages(app, ramRun(10, 11), 0, 8192, 0xffffffff, 2));
      unwrap(sg_alloc_append_table_from_pages(app, ramRun(20, 21), 0, 8192, 0xffffffff, 0));
      assert.deepEqual(lengths(app.sgt), [8192, 8192]);
      assert.equal(sg_nents(app.sgt.sgl), 2);
    });

    it("prv grows only up to max_segment", () => {
      const app = new SgAppendTable();
      unwrap(sg_alloc_append_table_from_pages(app, ramRun(10), 0, 4096, 8192, 3));
      unwrap(sg_alloc_append_table_from_pages(app, ramRun(11, 12, 13), 0, 3 * 4096, 8192, 0));
      assert.deepEqual(lengths(app.sgt), [8192, 8192]);
    });

    it("prv and the next page of another pgmap: separate entries (mainline)", () => {
      const A = pgmap();
      const B = pgmap();
      for (const [rule, want] of [
        ["pfn+pgmap", [4096, 4096]],
        ["pfn", [8192]],
      ] as const) {
        const app = new SgAppendTable();
        const opts = { mergeRule: rule as SgMergeRule };
        unwrap(sg_alloc_append_table_from_pages(app, p2p(A, 50), 0, 4096, 0xffffffff, 1, opts));
        unwrap(sg_alloc_append_table_from_pages(app, p2p(B, 51), 0, 4096, 0xffffffff, 0, opts));
        assert.deepEqual(lengths(app.sgt), want, rule);
      }
    });

    it("an offset while appending is -EINVAL (with a WARN)", () => {
      const app = new SgAppendTable();
      unwrap(sg_alloc_append_table_from_pages(app, ramRun(10), 0, 4096, 0xffffffff, 1));
      const r = sg_alloc_append_table_from_pages(app, ramRun(11), 8, 4000, 0xffffffff, 0);
      assert.equal(!r.ok && r.errno, "EINVAL");
      assert.equal(!r.ok && r.warn, true);
    });

    it("appending after left_pages = 0 is the kernel's NULL dereference", () => {
      const app = new SgAppendTable();
      unwrap(sg_alloc_append_table_from_pages(app, ramRun(10), 0, 4096, 0xffffffff, 0));
      // Contiguous pages still merge into prv without needing a new entry.
      unwrap(sg_alloc_append_table_from_pages(app, ramRun(11), 0, 4096, 0xffffffff, 0));
      assert.throws(
        () => sg_alloc_append_table_from_pages(app, ramRun(30), 0, 4096, 0xffffffff, 0),
        /NULL dereference/,
      );
    });

    it("too small a left_pages estimate: the next call chains at the array's last slot", () => {
      const app = new SgAppendTable("under");
      unwrap(sg_alloc_append_table_from_pages(app, ramRun(0, 2, 4), 0, 3 * 4096, 0xffffffff, 1));
      const more = range(0, 200).map((i) => ram(1000 + 2 * i));
      unwrap(sg_alloc_append_table_from_pages(app, more, 0, 200 * 4096, 0xffffffff, 0));
      assert.deepEqual(sgTableLayout(app.sgt), [
        { slots: 4, chainAt: 3 },
        { slots: 128, chainAt: 127 },
        { slots: 73, chainAt: null },
      ]);
      assert.equal(app.sgt.orig_nents, 203);
      assert.equal(app.total_nents, 203);
      assert.equal(sg_nents(app.sgt.sgl), 203);
      assert.deepEqual(
        ents(app.sgt).map((e) => e.pfn),
        [0n, 2n, 4n, ...more.map((p) => p.pfn)],
      );
      // __sg_free_table() expects full 128-slot arrays: it reads slot 127 of the 4-slot one.
      assert.throws(() => sg_free_append_table(app), /out-of-bounds read/);
    });

    it("-ENOMEM restores prv's length", () => {
      const app = new SgAppendTable();
      unwrap(sg_alloc_append_table_from_pages(app, ramRun(10), 0, 4096, 0xffffffff, 1));
      const pages = [...ramRun(11), ...range(0, 130).map((i) => ram(100 + 2 * i))];
      const r = sg_alloc_append_table_from_pages(app, pages, 0, 131 * 4096, 0xffffffff, 0, {
        allocFails: () => true,
      });
      assert.equal(!r.ok && r.errno, "ENOMEM");
      assert.equal(app.prv!.length, 4096);
      sg_free_append_table(app);
    });
  });
});

// ── §4.3 / §6.3 __finalise_sg ────────────────────────────────────────────────────────────────

describe("finaliseSg (__finalise_sg, spec §4.3 and §6.3)", () => {
  const BASE = 0xfffe_0000n;

  it("20 separate page-aligned 4 KiB entries, 64 KiB max segment -> 65536 + 16384", () => {
    const t = unwrap(
      sg_alloc_table_from_pages(
        range(0, 20).map((i) => ram(100 + 2 * i)),
        0,
        20 * 4096,
      ),
    );
    assert.equal(t.orig_nents, 20);
    const { count, iovaLen } = mapIommu(t, BASE, PCI_DEFAULT);
    assert.equal(iovaLen, 20n * 4096n);
    assert.equal(count, 2);
    assert.deepEqual(segs(t), [
      [BASE, 65536, false],
      [BASE + 0x10000n, 16384, false],
    ]);
    // The CPU side is restored, and the unused entries say so.
    assert.deepEqual(lengths(t), Array(20).fill(4096));
    const rest = Array.from(for_each_sgtable_sg(t)).slice(2);
    assert.ok(rest.every((sg) => sg.dma_address === DMA_MAPPING_ERROR && sg.dma_length === 0));
  });

  it("three scattered pages -> one 12 KiB segment (spec §5.5)", () => {
    const t = tableOf([ram(7), ram(3), ram(90)].map((page) => ({ page, len: 4096 })));
    assert.equal(mapIommu(t, 0xffffc000n, PCI_DEFAULT).count, 1);
    assert.deepEqual(segs(t), [[0xffffc000n, 12288, false]]);
  });

  it("bus-address entries are their own segment and stop merging", () => {
    const pm = pgmap("0000:05:00.0", 2, 0x1000_0000n);
    const t = tableOf([
      { page: ram(1), len: 4096 },
      { page: ram(5), len: 4096 },
      { page: p2p(pm, 0x800)[0]!, len: 4096 },
      { page: ram(9), len: 4096 },
      { page: ram(11), len: 4096 },
      { page: p2p(pm, 0x900)[0]!, len: 8192 },
    ]);
    const classify: Classify = (sg) =>
      sg.page?.pgmap ? { bus: true, busOffset: sg.page.pgmap.provider.busOffset } : { bus: false };
    const { count, iovaLen } = mapIommu(t, BASE, PCI_DEFAULT, classify);
    assert.equal(iovaLen, 4n * 4096n);
    assert.equal(count, 4);
    assert.deepEqual(segs(t), [
      [BASE, 8192, false],
      [0x80_0000n + 0x1000_0000n, 4096, true],
      // IOVA-contiguous with the first segment, but the bus entry in between ended it.
      [BASE + 0x2000n, 8192, false],
      [0x90_0000n + 0x1000_0000n, 8192, true],
    ]);
    const all = Array.from(for_each_sgtable_sg(t));
    assert.deepEqual(
      all.map(sg_dma_is_bus_address),
      [false, true, false, true, false, false],
      "the marks moved to the output segments",
    );
  });

  it("a list of bus entries only needs no IOVA (base 0)", () => {
    const pm = pgmap();
    const t = tableOf(p2p(pm, 0x10, 0x11).map((page) => ({ page, len: 4096 })));
    const { count, iovaLen } = mapIommu(t, 0n, PCI_DEFAULT, () => ({ bus: true, busOffset: 0n }));
    assert.equal(iovaLen, 0n);
    assert.equal(count, 2);
    assert.deepEqual(segs(t), [
      [0x10000n, 4096, true],
      [0x11000n, 4096, true],
    ]);
  });

  it("an in-page offset breaks merging; the segment address keeps it", () => {
    const t = tableOf([
      { page: ram(1), len: 4096 },
      { page: ram(3), len: 0xf00, offset: 0x100 },
      { page: ram(5), len: 4096 },
    ]);
    assert.equal(mapIommu(t, BASE, PCI_DEFAULT).count, 2);
    assert.deepEqual(segs(t), [
      [BASE, 4096, false],
      [BASE + 0x1100n, 0xf00 + 4096, false],
    ]);
    assert.deepEqual(
      ents(t).map((e) => [e.offset, e.length]),
      [
        [0, 4096],
        [0x100, 0xf00],
        [0, 4096],
      ],
    );
  });

  it("an entry not ending on a granule ends its segment", () => {
    const t = tableOf([
      { page: ram(1), len: 4096 },
      { page: ram(3), len: 0x800 },
      { page: ram(5), len: 4096 },
    ]);
    assert.equal(mapIommu(t, BASE, PCI_DEFAULT).count, 2);
    assert.deepEqual(segs(t), [
      [BASE, 4096 + 0x800, false],
      [BASE + 0x2000n, 4096, false],
    ]);
  });

  it("segments never cross the segment boundary; entries are padded to it", () => {
    // 64 KiB boundary: 8 KiB, then 60 KiB which would cross it, so the first is padded.
    const limits: DmaSegLimits = { maxSegSize: 0xffff_ffff, segBoundaryMask: 0xffffn };
    const t = tableOf([
      { page: ram(1), len: 8192 },
      { page: ram(100), len: 60 * 1024 },
    ]);
    const { count, iovaLen } = mapIommu(t, 0x4000_0000n, limits);
    assert.equal(iovaLen, 0x10000n + 0xf000n);
    assert.equal(count, 2);
    assert.deepEqual(segs(t), [
      [0x4000_0000n, 8192, false],
      [0x4001_0000n, 60 * 1024, false],
    ]);
    assert.deepEqual(lengths(t), [8192, 60 * 1024], "the padding is not left in the CPU length");

    const u = tableOf(range(0, 20).map((i) => ({ page: ram(10 + 2 * i), len: 4096 })));
    mapIommu(u, 0x4000_0000n, limits);
    assert.deepEqual(segs(u), [
      [0x4000_0000n, 65536, false],
      [0x4001_0000n, 16384, false],
    ]);
  });

  it("a segment already over max_seg_size keeps growing (the kernel's u32 wrap, kept)", () => {
    // max_len - cur_len with cur_len > max_len wraps to ~4G in unsigned int arithmetic.
    const t = tableOf([
      { page: ram(0x1000), len: 0x100000 },
      { page: ram(1), len: 4096 },
    ]);
    assert.equal(mapIommu(t, 0xffe0_0000n, PCI_DEFAULT).count, 1);
    assert.deepEqual(segs(t), [[0xffe0_0000n, 0x101000, false]]);
  });

  it("invalidateSg undoes a layout", () => {
    const pm = pgmap();
    const t = tableOf([
      { page: ram(1), len: 0x900, offset: 0x200 },
      { page: p2p(pm, 7)[0]!, len: 4096 },
    ]);
    iommuLayout(t.sgl!, 2, 0xffff_ffffn, (sg) =>
      sg.page?.pgmap ? { bus: true, busOffset: 0n } : { bus: false },
    );
    invalidateSg(t.sgl!, 2);
    assert.deepEqual(
      ents(t).map((e) => [e.offset, e.length]),
      [
        [0x200, 0x900],
        [0, 4096],
      ],
    );
    const all = Array.from(for_each_sgtable_sg(t));
    assert.ok(all.every((sg) => !sg_dma_is_bus_address(sg) && sg.dma_length === 0));
  });
});

// ── the real kernel: oracle dma.tsv ──────────────────────────────────────────────────────────

/*
 * test/fixtures/kernel-oracle/<topology>/dma.tsv (Linux 6.1.192 under QEMU, `dma=1` mode). The
 * oracle module (oracle/module/p2poracle.c) builds each table with sg_alloc_table(nents) +
 * sg_set_page(): "4K"/"64K"/"1M" are one p2pmem entry, "mixed" is [p2pmem 4K, a RAM page,
 * p2pmem 64K], "ram3" three RAM pages; then dma_map_sgtable(client).
 *
 * Checked, for every table:
 *  - CPU side (`sg_cpu`): the same construction gives the same entries, kinds and count.
 *  - CPU side again, from pages: sg_alloc_table_from_pages() over the entries' pages gives the
 *    same entries whenever no two neighbouring entries are mergeable (under the rule checked);
 *    where they are (a "ram3" whose pages happen to be pfn-contiguous) the kernel module's
 *    construction is not a from-pages one, so there is nothing to compare.
 *  - DMA side (`sg_dma`), for clients in a DMA/DMA_FQ IOMMU domain with rc 0: the §4.3 layout
 *    (BUS_ADDR p2pmem -> bus address with the window's offset; THRU_HOST_BRIDGE p2pmem and RAM ->
 *    IOVA), then finaliseSg from the kernel's own base IOVA (the first non-bus segment's address
 *    minus its in-granule offset; 0 when all entries are bus addresses), with the client's
 *    max_seg and seg_boundary from its `mask` row: the count, every segment's address, length
 *    and bus flag, and the restored CPU entries.
 * Not checkable here:
 *  - rc = -121 (NOT_SUPPORTED pairs): the failure comes from the P2P classification before any
 *    layout (pci_p2pdma_map_segment), not from the scatterlist code.
 *  - clients with domain=none: dma-direct never merges or calls __finalise_sg (one segment per
 *    entry, the DMA layer's business).
 *  - the IOVA base values themselves (the IOVA allocator's job); they are taken from the rows.
 */

interface Row {
  op: string;
  provider: string;
  client: string;
  case: string;
  idx: string;
  kind: string;
  phys: string;
  len: string;
  dma: string;
  dma_len: string;
  bus_flag: string;
  rc: string;
  map_type: string;
  note: string;
}

interface Group {
  topo: string;
  cpu: Row[];
  sg: Row | null;
  dma: Row[];
}

const ORACLE = new URL("../../../../test/fixtures/kernel-oracle/", import.meta.url);

function readDmaTsv(topo: string): Row[] {
  let text: string;
  try {
    text = readFileSync(new URL(`${topo}/dma.tsv`, ORACLE), "utf8");
  } catch {
    return [];
  }
  const [head, ...rows] = text.trimEnd().split("\n");
  const cols = head!.split("\t");
  return rows.map(
    (r) => Object.fromEntries(r.split("\t").map((v, i) => [cols[i]!, v])) as unknown as Row,
  );
}

const note = (r: Row): Record<string, string> =>
  Object.fromEntries(r.note.split(",").map((kv) => kv.split("=") as [string, string]));
const hexBig = (s: string): bigint => (s.startsWith("-") ? -BigInt(s.slice(1)) : BigInt(s));

describe("the real kernel's segments (oracle dma.tsv, Linux 6.1.192)", () => {
  const topologies = readdirSync(ORACLE, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .filter((name) => readDmaTsv(name).length > 0)
    .sort();

  it("has the DMA captures", () => assert.equal(topologies.length, 6));

  it("reproduces the CPU entries and the IOMMU DMA segments of every table", (t) => {
    const stats = {
      tables: 0,
      cpuChecked: 0,
      fromPagesChecked: 0,
      fromPagesNotComparable: 0,
      dmaChecked: 0,
      dmaSegments: 0,
      busSegments: 0,
      merged: 0,
      notSupported: 0,
      dmaDirect: 0,
    };
    for (const topo of topologies) {
      const rows = readDmaTsv(topo);
      const masks = new Map<string, Record<string, string>>();
      const windows: { provider: string; bar: string; start: bigint; end: bigint; off: bigint }[] =
        [];
      const groups: Group[] = [];
      let g: Group | null = null;
      for (const r of rows) {
        if (r.op === "mask") masks.set(r.client, note(r));
        else if (r.op === "window") {
          const start = BigInt(r.phys);
          windows.push({
            provider: r.provider,
            bar: r.case,
            start,
            end: start + BigInt(r.len),
            off: hexBig(note(r)["offset"]!),
          });
        } else if (r.op === "sg_cpu") {
          if (r.idx === "0") {
            g = { topo, cpu: [], sg: null, dma: [] };
            groups.push(g);
          }
          g!.cpu.push(r);
        } else if (r.op === "sg") g!.sg = r;
        else if (r.op === "sg_dma") g!.dma.push(r);
      }

      const pgmaps = new Map<string, DevPagemap>();
      const windowOf = (provider: string, phys: bigint) => {
        const w = windows.find((x) => x.provider === provider && phys >= x.start && phys < x.end);
        assert.ok(w, `${topo}: no window of ${provider} holds ${phys.toString(16)}`);
        return w;
      };
      const pageOf = (g: Group, r: Row, phys: bigint): Page => {
        if (r.kind === "ram") return ram(phys >> 12n);
        const provider = g.sg!.provider;
        const w = windowOf(provider, phys);
        const key = `${provider}/${w.bar}`;
        if (!pgmaps.has(key)) pgmaps.set(key, pgmap(provider, Number(w.bar.slice(3)), w.off));
        return { pfn: phys >> 12n, pgmap: pgmaps.get(key)! };
      };

      for (const grp of groups) {
        const sgRow = grp.sg;
        assert.ok(sgRow, `${topo}: a table without its sg row`);
        const where = `${topo} ${sgRow.provider} -> ${sgRow.client} ${sgRow.case}`;
        stats.tables++;
        const cpu = grp.cpu.map((r) => {
          const phys = BigInt(r.phys);
          return { r, phys, len: Number(BigInt(r.len)), page: pageOf(grp, r, phys) };
        });
        assert.equal(Number(note(sgRow)["nents"]), cpu.length, where);

        // CPU side: sg_alloc_table + sg_set_page, as the module did.
        const table = tableOf(
          cpu.map((c) => ({ page: c.page, len: c.len, offset: Number(c.phys & 0xfffn) })),
          where,
        );
        const checkCpu = (tbl: SgTable, what: string) => {
          const got = Array.from(for_each_sgtable_sg(tbl));
          assert.equal(got.length, cpu.length, `${where}: ${what}`);
          for (const [i, sg] of got.entries()) {
            assert.equal(sg_phys(sg), cpu[i]!.phys, `${where}: ${what} entry ${i}`);
            assert.equal(sg.length, cpu[i]!.len, `${where}: ${what} entry ${i}`);
            assert.equal(isP2pdmaPage(sg_page(sg)!), cpu[i]!.r.kind === "p2p", where);
          }
        };
        checkCpu(table, "sg_alloc_table");
        stats.cpuChecked++;

        // CPU side from pages, under both merge rules.
        for (const rule of ["pfn+pgmap", "pfn"] as const) {
          const pages: Page[] = [];
          let comparable = true;
          for (const [i, c] of cpu.entries()) {
            assert.equal(c.phys % 4096n, 0n, where);
            assert.equal(c.len % 4096, 0, where);
            const n = c.len / 4096;
            const run = range(0, n).map((k) => ({
              pfn: c.page.pfn + BigInt(k),
              pgmap: c.page.pgmap,
            }));
            const prev = pages.at(-1);
            if (
              i > 0 &&
              prev !== undefined &&
              run[0]!.pfn === prev.pfn + 1n &&
              (rule === "pfn" || run[0]!.pgmap === prev.pgmap)
            ) {
              comparable = false;
            }
            pages.push(...run);
          }
          if (!comparable) {
            stats.fromPagesNotComparable++;
            continue;
          }
          const fp = unwrap(
            sg_alloc_table_from_pages(pages, 0, pages.length * 4096, { mergeRule: rule }),
          );
          checkCpu(fp, `from pages (${rule})`);
          sg_free_table(fp);
          stats.fromPagesChecked++;
        }

        // DMA side.
        const rc = Number(sgRow.rc);
        const m = masks.get(sgRow.client);
        assert.ok(m, `${where}: no mask row for the client`);
        if (rc !== 0) {
          assert.equal(rc, -121, where);
          assert.equal(sgRow.map_type, "NOT_SUPPORTED", where);
          stats.notSupported++;
          sg_free_table(table);
          continue;
        }
        if (m["domain"] === "none") {
          stats.dmaDirect++;
          sg_free_table(table);
          continue;
        }
        assert.match(m["domain"]!, /^DMA(_FQ)?$/, where);
        const limits: DmaSegLimits = {
          maxSegSize: Number(BigInt(m["max_seg"]!)),
          segBoundaryMask: BigInt(m["seg_boundary"]!),
        };
        const classify: Classify = (sg) => {
          const page = sg_page(sg)!;
          if (page.pgmap === null || sgRow.map_type !== "BUS_ADDR") return { bus: false };
          assert.equal(sgRow.map_type, "BUS_ADDR");
          return { bus: true, busOffset: page.pgmap.provider.busOffset };
        };
        const firstIova = grp.dma.find((r) => r.bus_flag === "0");
        const firstIovaEntry = cpu.find(
          (c) => c.page.pgmap === null || sgRow.map_type !== "BUS_ADDR",
        );
        const base =
          firstIova && firstIovaEntry
            ? BigInt(firstIova.dma) - (firstIovaEntry.phys & BigInt(GRANULE - 1))
            : 0n;
        const { count } = mapIommu(table, base, limits, classify);
        assert.equal(count, Number(note(sgRow)["mapped"]), `${where}: mapped count`);
        const want = grp.dma.map((r): [bigint, number, boolean] => [
          BigInt(r.dma),
          Number(BigInt(r.dma_len)),
          r.bus_flag === "1",
        ]);
        assert.deepEqual(segs(table), want, `${where}: segments`);
        checkCpu(table, "restored after finalise");
        stats.dmaChecked++;
        stats.dmaSegments += want.length;
        stats.busSegments += want.filter((w) => w[2]).length;
        if (want.length < cpu.length) stats.merged++;
        sg_free_table(table);
      }
    }
    t.diagnostic(JSON.stringify(stats));
    // Pinned so a change in the fixtures or the parser cannot silently skip tables.
    assert.deepEqual(stats, {
      tables: 1480,
      cpuChecked: 1480,
      fromPagesChecked: 2960,
      fromPagesNotComparable: 0,
      dmaChecked: 208,
      dmaSegments: 295,
      busSegments: 190,
      merged: 20,
      notSupported: 524,
      dmaDirect: 748,
    });
  });
});

// ── properties ───────────────────────────────────────────────────────────────────────────────

const PMS = [pgmap("0000:0a:00.0", 0), pgmap("0000:0b:00.0", 2)];

/** Runs of pfn-contiguous pages of one kind (0 = RAM, 1-2 = a pgmap), separated by 0-2 pfns. */
const pagesArb = fc
  .array(
    fc.record({
      gap: fc.integer({ min: 0, max: 2 }),
      len: fc.integer({ min: 1, max: 6 }),
      kind: fc.integer({ min: 0, max: 2 }),
    }),
    { minLength: 1, maxLength: 60 },
  )
  .map((runs) => {
    const pages: Page[] = [];
    let pfn = 1000n;
    for (const r of runs) {
      pfn += BigInt(r.gap);
      for (let i = 0; i < r.len; i++) {
        pages.push({ pfn, pgmap: r.kind === 0 ? null : PMS[r.kind - 1]! });
        pfn++;
      }
    }
    return pages;
  });

const maxSegArb = fc.oneof(
  fc.constantFrom(4096, 8192, 16384, 65536, 0xffff_ffff),
  fc.integer({ min: 4096, max: 64 * 4096 }),
);
const ruleArb = fc.constantFrom<SgMergeRule>("pfn+pgmap", "pfn");

const mergeable = (a: Page, b: Page, rule: SgMergeRule) =>
  a.pfn === b.pfn + 1n && (rule === "pfn" || a.pgmap === b.pgmap);

/** Independent reference: greedy runs of mergeable pages, at most max_segment bytes each. */
function referenceChunks(pages: readonly Page[], maxSeg: number, rule: SgMergeRule): number[][] {
  const per = Math.floor(maxSeg / PAGE_SIZE);
  const chunks: number[][] = [];
  for (const [i, p] of pages.entries()) {
    const cur = chunks.at(-1);
    if (cur && cur.length < per && mergeable(p, pages[i - 1]!, rule)) cur.push(i);
    else chunks.push([i]);
  }
  return chunks;
}

function checkStructure(t: SgTable): void {
  const layout = sgTableLayout(t);
  for (const [i, a] of layout.entries()) {
    assert.ok(a.slots <= SG_MAX_SINGLE_ALLOC);
    if (i < layout.length - 1) assert.equal(a.chainAt, a.slots - 1);
    else assert.equal(a.chainAt, null);
  }
  assert.equal(sg_nents(t.sgl), t.orig_nents);
  assert.equal(t.nents, t.orig_nents);
  assert.ok(sg_is_last(sg_last(t.sgl!, t.orig_nents)));
}

describe("properties", () => {
  it("from pages: exact bytes in order, within max_segment, merged only when mergeable", () => {
    fc.assert(
      fc.property(
        pagesArb,
        maxSegArb,
        ruleArb,
        fc.integer({ min: 0, max: 4095 }),
        fc.integer({ min: 0, max: 4095 }),
        (pages, maxSeg, rule, offset, short) => {
          const total = pages.length * PAGE_SIZE - offset;
          // The buffer ends in the last page (shorter sizes wrap, see the example above).
          const size = Math.max(1, total - Math.min(short, PAGE_SIZE - 1));
          const t = unwrap(
            sg_alloc_table_from_pages_segment(pages, offset, size, maxSeg, { mergeRule: rule }),
          );
          const aligned = maxSeg - (maxSeg % PAGE_SIZE);
          const want = referenceChunks(pages, aligned, rule);
          const got = Array.from(for_each_sgtable_sg(t));
          assert.equal(got.length, want.length);
          let left = size;
          for (const [k, sg] of got.entries()) {
            const chunk = want[k]!;
            const off = k === 0 ? offset : 0;
            assert.equal(sg_page(sg), pages[chunk[0]!]);
            assert.equal(sg.offset, off);
            const bytes = chunk.length * PAGE_SIZE - off;
            assert.equal(sg.length, Math.min(left, bytes));
            assert.ok(sg.length <= aligned);
            for (let j = 1; j < chunk.length; j++) {
              assert.ok(mergeable(pages[chunk[j]!]!, pages[chunk[j - 1]!]!, rule));
            }
            left -= sg.length;
          }
          assert.equal(left, 0, "covers exactly size bytes");
          checkStructure(t);
          // A chained table iterates the same entries as a flat copy of them.
          const flat = tableOf(
            got.map((sg) => ({ page: sg_page(sg)!, len: sg.length, offset: sg.offset })),
          );
          assert.deepEqual(ents(flat), ents(t));
          sg_free_table(t);
          sg_free_table(flat);
        },
      ),
      { numRuns: 300 },
    );
  });

  it("appending in pieces gives the one-shot table", () => {
    fc.assert(
      fc.property(
        pagesArb,
        maxSegArb,
        ruleArb,
        fc.array(fc.integer({ min: 1, max: 40 }), { maxLength: 8 }),
        (pages, maxSeg, rule, cuts) => {
          const opts = { mergeRule: rule };
          const once = unwrap(
            sg_alloc_table_from_pages_segment(pages, 0, pages.length * PAGE_SIZE, maxSeg, opts),
          );
          const app = new SgAppendTable();
          let at = 0;
          for (const c of [...cuts, pages.length]) {
            const piece = pages.slice(at, at + c);
            if (piece.length === 0) continue;
            at += piece.length;
            const left = pages.length - at;
            unwrap(
              sg_alloc_append_table_from_pages(
                app,
                piece,
                0,
                piece.length * PAGE_SIZE,
                maxSeg,
                left,
                opts,
              ),
            );
          }
          assert.deepEqual(ents(app.sgt), ents(once));
          assert.equal(app.sgt.orig_nents, once.orig_nents);
          assert.ok(sg_is_last(app.prv!));
          assert.equal(sg_nents(app.sgt.sgl), app.sgt.orig_nents);
          sg_free_append_table(app);
          sg_free_table(once);
        },
      ),
      { numRuns: 200 },
    );
  });

  it("finaliseSg: CPU side restored, bytes kept, limits honoured", () => {
    const entryArb = fc.record({
      bus: fc.boolean(),
      pages: fc.integer({ min: 1, max: 20 }),
      offset: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 4095 })),
      cut: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 4095 })),
    });
    fc.assert(
      fc.property(
        fc.array(entryArb, { minLength: 1, maxLength: 150 }),
        fc.constantFrom(4096, 8192, 65536, 0xffff_ffff),
        fc.constantFrom(0xffffn, 0xf_ffffn, 0xffff_ffffn),
        (spec, maxSegSize, segBoundaryMask) => {
          const pm = pgmap("0000:0c:00.0", 0, 0x100_0000_0000n);
          let pfn = 10;
          const entries = spec.map((e) => {
            const len = Math.max(1, e.pages * 4096 - e.offset - e.cut);
            const page: Page = e.bus ? { pfn: BigInt(pfn), pgmap: pm } : ram(pfn);
            pfn += e.pages + 1;
            return { page, len, offset: e.offset };
          });
          const t = tableOf(entries);
          const before = ents(t);
          const base = 0x1_0000_0000n;
          const limits = { maxSegSize, segBoundaryMask };
          const classify: Classify = (sg) =>
            sg.page?.pgmap ? { bus: true, busOffset: 0x100_0000_0000n } : { bus: false };
          const { count, iovaLen } = mapIommu(t, base, limits, classify);
          assert.deepEqual(ents(t), before, "CPU entries restored");
          const out = segs(t);
          assert.equal(out.length, count);
          assert.ok(count <= entries.length);
          const all = Array.from(for_each_sgtable_sg(t));
          for (const sg of all.slice(count)) {
            assert.equal(sg.dma_address, DMA_MAPPING_ERROR);
            assert.equal(sg.dma_length, 0);
            assert.ok(!sg_dma_is_bus_address(sg));
          }
          const busIn = entries
            .filter((e) => e.page.pgmap !== null)
            .map((e) => [(e.page.pfn << 12n) + BigInt(e.offset) + 0x100_0000_0000n, e.len]);
          assert.deepEqual(
            out.filter((s) => s[2]).map((s) => [s[0], s[1]]),
            busIn,
            "bus segments unchanged and in order",
          );
          const iovaSegs = out.filter((s) => !s[2]);
          const iovaIn = entries.filter((e) => e.page.pgmap === null);
          assert.equal(
            iovaSegs.reduce((a, s) => a + s[1], 0),
            iovaIn.reduce((a, e) => a + e.len, 0),
            "IOVA bytes kept",
          );
          let last = base;
          const boundary = segBoundaryMask + 1n;
          for (const [dma, len] of iovaSegs) {
            assert.ok(dma >= last && dma + BigInt(len) <= base + iovaLen, "in order, in range");
            last = dma + BigInt(len);
            if (iovaIn.every((e) => e.len <= maxSegSize)) assert.ok(len <= maxSegSize);
            if (iovaIn.every((e) => BigInt(alignUp(e.len + e.offset, GRANULE)) <= boundary)) {
              assert.equal(
                dma / boundary,
                (dma + BigInt(len) - 1n) / boundary,
                "no boundary crossed",
              );
            }
          }
          sg_free_table(t);
        },
      ),
      { numRuns: 200 },
    );
  });

  it("sg_alloc_table(n): n entries, kernel array sizes, one END", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2000 }), (n) => {
        const t = unwrap(sg_alloc_table(n));
        const sizes: number[] = [];
        let left = n;
        while (left > SG_MAX_SINGLE_ALLOC) {
          sizes.push(SG_MAX_SINGLE_ALLOC);
          left -= SG_MAX_SINGLE_ALLOC - 1;
        }
        sizes.push(left);
        assert.deepEqual(
          sgTableLayout(t).map((a) => a.slots),
          sizes,
        );
        const all = Array.from(for_each_sgtable_sg(t));
        assert.equal(all.length, n);
        assert.equal(all.filter(sg_is_last).length, 1);
        checkStructure(t);
        assert.deepEqual(Array.from(for_each_sgtable_dma_sg(t)), all);
        sg_free_table(t);
      }),
      { numRuns: 100 },
    );
  });
});
