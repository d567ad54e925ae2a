/**
 * The IOVA allocator (drivers/iommu/iova.c + the IOVA parts of dma-iommu.c): the spec's worked
 * sequence (§5.5) and 32-bit-first rule (§4.6), the allocator's corner cases read from the
 * Linux 6.1.192 source, the real kernel's IOVAs from the QEMU oracle (`dma.tsv`), and property
 * tests.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import fc from "fast-check";
import { loadInput } from "../../../node/load-input.ts";
import type { Iova } from "../../hw/address.ts";
import { buildMachine } from "../../hw/machine.ts";
import { PROFILES } from "../profile.ts";
import {
  AMD_HT_REGION,
  createIovaAllocator,
  type DmaClient,
  dmaClient,
  fls,
  IommuDmaDomain,
  IovaDomain,
  iommuDmaAllocIova,
  iovaAlign,
  iovaReservePciWindows,
  manualClock,
  orderBase2,
  type ResvRegion,
  roundupPowOfTwo,
  VTD_ISA_FLOPPY_REGION,
  X86_MSI_REGION,
} from "./iova.ts";

const P61 = PROFILES["6.1"];
const PML = PROFILES.mainline;
const MASK32 = 0xffff_ffffn;
const MASK64 = 0xffff_ffff_ffff_ffffn;
const PAGE = 4096n;
const hex = (v: bigint | null): string => (v === null ? "null" : `0x${v.toString(16)}`);

function strict(opts: Partial<ConstructorParameters<typeof IommuDmaDomain>[0]> = {}) {
  return new IommuDmaDomain({ type: "DMA", profile: P61, ...opts });
}

describe("helpers", () => {
  it("fls, order_base_2, roundup_pow_of_two", () => {
    assert.deepEqual([0n, 1n, 2n, 3n, 4n, 5n].map(fls), [0, 1, 2, 2, 3, 3]);
    assert.deepEqual([1n, 2n, 3n, 4n, 5n, 32n, 33n].map(orderBase2), [0, 1, 2, 2, 3, 5, 6]);
    assert.deepEqual([1n, 2n, 3n, 17n, 32n].map(roundupPowOfTwo), [1n, 2n, 4n, 32n, 32n]);
  });

  it("init_iova_domain: 4 KiB granule, dma_32bit_pfn, anchor, cached nodes", () => {
    const d = new IovaDomain();
    assert.equal(d.dma32bitPfn, 0x100000n);
    assert.equal(d.max32AllocSize, 0x100000n);
    assert.equal(d.startPfn, 1n);
    assert.deepEqual(d.nodes(), [{ pfnLo: MASK64, pfnHi: MASK64 }]);
    assert.equal(d.cached.pfnLo, MASK64);
    assert.equal(d.cached32.pfnLo, MASK64);
    assert.equal(new IovaDomain({ granule: 1024n }).dma32bitPfn, 0x400000n);
    assert.throws(() => new IovaDomain({ granule: 8192n }), /granule/);
  });
});

describe("spec §5.5 worked sequence (strict, start_pfn 1, 64-bit mask, PCI 32-bit-first)", () => {
  it("steps 1-5 give the spec's IOVAs", () => {
    const d = strict();
    const dev = dmaClient("ep");
    const map = (pages: bigint) => d.allocIova(dev, pages * PAGE, MASK64);
    const s1 = map(1n);
    assert.equal(hex(s1), "0xfffff000"); // 1
    assert.equal(hex(map(3n)), "0xffff8000"); // 2: size 4, aligned 4; 0xffffc-0xffffe unused
    assert.deepEqual(d.iovad.findIova(0xffff8n), { pfnLo: 0xffff8n, pfnHi: 0xffffbn });
    assert.equal(d.iovad.findIova(0xffffcn), null);
    assert.equal(hex(map(1n)), "0xffff7000"); // 3: below the cached node, not in the hole
    assert.equal(hex(map(64n)), "0xfff80000"); // 4
    d.freeIova(s1!, PAGE); // 5: strict unmap -> bin 0, still in the tree
    assert.deepEqual(d.iovad.findIova(0xfffffn), { pfnLo: 0xfffffn, pfnHi: 0xfffffn });
    assert.deepEqual(d.iovad.rcacheView()[0]!.cpu[0]!.loaded, [0xfffffn]);
    assert.equal(hex(map(1n)), "0xfffff000");
  });

  it("step 6: a reserved MSI node is skipped (0xfef00 -> 0xfedff)", () => {
    const d = strict({ resvRegions: [X86_MSI_REGION] });
    const dev = dmaClient("ep");
    let last: Iova | null = null;
    for (let pfn = 0xfffffn; pfn >= 0xfef00n; pfn--) {
      last = d.allocIova(dev, PAGE, MASK64);
      assert.equal(last, pfn << 12n);
    }
    assert.equal(hex(last), "0xfef00000");
    assert.equal(hex(d.allocIova(dev, PAGE, MASK64)), "0xfedff000");
  });

  it("three scattered pages in one table: 3 pages -> size 4, 16 KiB-aligned base", () => {
    const d = strict();
    d.allocIova(dmaClient("x"), PAGE, MASK32);
    const base = d.allocIova(dmaClient("x"), 3n * PAGE, MASK32)!;
    assert.equal(base % (4n * PAGE), 0n);
    assert.equal(hex(base), "0xffff8000");
  });
});

describe("spec §4.6: limits and PCI 32-bit-first", () => {
  /** A domain whose whole 32-bit space is reserved, so a 32-bit attempt fails. */
  function full32(profile = P61) {
    const d = new IommuDmaDomain({ type: "DMA", profile });
    const r = d.iovad.reserveIova(1n, 0xfffffn)!;
    return { d, r };
  }

  it("6.1: tries below 4 GiB on every allocation and never gives up on it", () => {
    const { d, r } = full32(P61);
    const dev = dmaClient("nvme");
    const a = d.allocIova(dev, PAGE, MASK64);
    assert.equal(hex(a), "0xfffffffffffff000"); // top of the 64-bit space
    assert.equal(d.iovad.max32AllocSize, 1n); // the failed 32-bit search left its hint
    assert.equal(dev.pci32bitWorkaround, true);
    assert.deepEqual(dev.notes, []);
    d.freeIova(a!, PAGE); // bin 0 now holds a 64-bit pfn
    d.iovad.removeIova(r); // the 32-bit space frees up
    assert.equal(hex(d.allocIova(dev, PAGE, MASK64)), "0xfffff000");
  });

  it("mainline: first failure clears pci_32bit_workaround for good, with the notice", () => {
    const { d, r } = full32(PML);
    const dev = dmaClient("nvme");
    const a = d.allocIova(dev, PAGE, MASK64);
    assert.equal(hex(a), "0xfffffffffffff000");
    assert.equal(dev.pci32bitWorkaround, false);
    assert.deepEqual(dev.notes, ["nvme: Using 64-bit DMA addresses"]);
    d.freeIova(a!, PAGE);
    d.iovad.removeIova(r);
    assert.equal(hex(d.allocIova(dev, PAGE, MASK64)), "0xfffffffffffff000"); // from the rcache
    assert.equal(hex(d.allocIova(dev, PAGE, MASK64)), "0xffffffffffffe000");
    assert.equal(dev.notes.length, 1);
    // Another device of the same domain still starts below 4 GiB.
    assert.equal(hex(d.allocIova(dmaClient("other"), PAGE, MASK64)), "0xfffff000");
    const bits48 = dmaClient("dev48");
    d.iovad.reserveIova(1n, 0xfffefn);
    for (let i = 0; i < 16; i++) d.allocIova(bits48, PAGE, (1n << 48n) - 1n);
    assert.deepEqual(bits48.notes, ["dev48: Using 48-bit DMA addresses"]);
  });

  it("no 32-bit-first for non-PCI devices, iommu.forcedac, or limits of 32 bits and less", () => {
    for (const dev of [dmaClient("plat", { isPci: false }), dmaClient("f", { forcedac: true })]) {
      const d = strict();
      assert.equal(hex(d.allocIova(dev, PAGE, MASK64)), "0xfffffffffffff000");
    }
    const d = strict();
    const dev = dmaClient("ep");
    assert.equal(hex(d.allocIova(dev, PAGE, 0xfff_ffffn)), "0xffff000"); // 28-bit mask
    // The search starts below cached32 (now pfn 0xffff), not at the top of the space.
    assert.equal(hex(d.allocIova(dev, PAGE, MASK32)), "0xfffe000");
  });

  it("limit = min_not_zero(mask, bus_dma_limit), then the aperture when it is forced", () => {
    const d = strict();
    const dev = dmaClient("x", { isPci: false, busDmaLimit: 0xf_ffff_ffffn });
    assert.equal(hex(d.allocIova(dev, PAGE, MASK64)), "0xffffff000");
    assert.equal(hex(d.allocIova(dev, PAGE, 0n)), "0xfffffe000"); // mask 0 -> bus limit
    const ap = strict({ forceAperture: true, apertureStart: 0n, apertureEnd: 0xff_ffff_ffffn });
    assert.equal(hex(ap.allocIova(dmaClient("y", { isPci: false }), PAGE, MASK64)), "0xfffffff000");
  });

  it("the final attempt flushes the rcache on failure; the 32-bit-first one does not", () => {
    const d = strict();
    d.iovad.reserveIova(1n, 0xfffefn); // 16 free pfns below 4 GiB
    const dev = dmaClient("ep");
    const pages = Array.from({ length: 16 }, () => d.allocIova(dev, PAGE, MASK32)!);
    assert.equal(d.allocIova(dev, PAGE, MASK32), null);
    for (const p of pages) d.freeIova(p, PAGE); // all 16 sit in bin 0, still in the tree
    assert.equal(d.iovad.allocIovaFast(2n, 0xfffffn, false), 0n);
    // 64-bit device: the 32-bit try fails (no flush), then the 64-bit space is used.
    assert.equal(hex(d.allocIova(dev, 2n * PAGE, MASK64)), "0xffffffffffffe000");
    // 32-bit device: the tree fails, the flush returns the 16 pfns, the retry succeeds.
    assert.equal(hex(d.allocIova(dev, 2n * PAGE, MASK32)), "0xffffe000");
    assert.equal(d.iovad.cachedPfns().length, 0);
  });
});

describe("__alloc_and_insert_iova_range (6.1 source)", () => {
  it("retry path: alignment slack above the cached node is found only after a failure", () => {
    const d = new IovaDomain();
    d.reserveIova(1n, 0xfffefn); // leaves 0xffff0-0xfffff
    assert.equal(d.allocIovaFast(1n, 0xfffffn, false), 0xfffffn);
    assert.equal(d.allocIovaFast(4n, 0xfffffn, false), 0xffff8n); // slack 0xffffc-0xffffe
    assert.equal(d.allocIovaFast(8n, 0xfffffn, false), 0xffff0n);
    assert.equal(d.cached32.pfnLo, 0xffff0n);
    // Below the cached node there is nothing; the retry searches above pfn_hi 0xffff7.
    assert.equal(d.allocIovaFast(2n, 0xfffffn, false), 0xffffcn);
    // Next: the retry starts above 0xffffd and finds no 4 aligned pfns: the hint drops to 4.
    assert.equal(d.allocIovaFast(4n, 0xfffffn, false), 0n);
    assert.equal(d.max32AllocSize, 4n);
    assert.equal(d.allocIova(8n, 0xfffffn, true), null); // fails on the hint, no search
    assert.deepEqual(d.allocIova(1n, 0xfffffn, true), { pfnLo: 0xffffen, pfnHi: 0xffffen });
    // Freeing anything below 4 GiB resets the hint.
    d.freeIova(0xffffen);
    assert.equal(d.max32AllocSize, 0x100000n);
  });

  it("a failure with a 64-bit limit also sets max32_alloc_size (6.1)", () => {
    const d = new IovaDomain({ startPfn: 0xf_ffff_ffff_fff0n });
    assert.equal(d.allocIova(32n, 0xf_ffff_ffff_ffffn, true), null);
    assert.equal(d.max32AllocSize, 32n);
  });

  it("unaligned allocation (alloc_iova size_aligned=false) and exact sizes >= 32", () => {
    const d = new IovaDomain();
    assert.deepEqual(d.allocIova(3n, 0xfffffn, false), { pfnLo: 0xffffdn, pfnHi: 0xfffffn });
    assert.equal(d.allocIovaFast(33n, 0xfffffn, false), 0xfffc0n); // 33 pfns, 64-aligned
    assert.deepEqual(d.findIova(0xfffc0n), { pfnLo: 0xfffc0n, pfnHi: 0xfffe0n });
    assert.equal(d.allocIovaFast(17n, 0xfffffn, false), 0xfffa0n); // rounded to 32
  });

  it("64-bit allocations use cached_node, 32-bit ones cached32_node", () => {
    const d = new IovaDomain();
    const top = 0xf_ffff_ffff_ffffn;
    assert.equal(d.allocIovaFast(1n, top, false), top);
    assert.equal(d.cached.pfnLo, top);
    assert.equal(d.cached32.pfnLo, MASK64);
    assert.equal(d.allocIovaFast(1n, 0xfffffn, false), 0xfffffn);
    assert.equal(d.cached32.pfnLo, 0xfffffn);
    assert.equal(d.allocIovaFast(1n, top, false), top - 1n);
  });
});

describe("__cached_rbnode_delete_update", () => {
  function three() {
    const d = new IovaDomain();
    for (let i = 0; i < 3; i++) d.allocIova(1n, 0xfffffn, true); // 0xfffff, 0xffffe, 0xffffd
    return d;
  }

  it("freeing the cached32 node moves it to its successor", () => {
    const d = three();
    assert.equal(d.cached32.pfnLo, 0xffffdn);
    d.freeIova(0xffffdn);
    assert.equal(d.cached32.pfnLo, 0xffffen);
  });

  it("freeing above cached32 moves it to the successor of the freed node", () => {
    const d = three();
    d.freeIova(0xffffen);
    assert.equal(d.cached32.pfnLo, 0xfffffn);
    d.freeIova(0xfffffn);
    assert.equal(d.cached32.pfnLo, MASK64);
  });

  it("freeing below cached32 leaves it; cached_node follows 64-bit frees only", () => {
    const d = three();
    d.freeIova(0xffffen);
    const low = d.allocIova(1n, 0xfffffn, true)!; // below 0xfffff? no: from cached32 -> 0xffffe
    assert.equal(low.pfnLo, 0xffffen);
    const d2 = three();
    d2.allocIova(1n, 0xffff0n, true); // 0xffff0, becomes cached32
    d2.freeIova(0xffff0n);
    assert.equal(d2.cached32.pfnLo, 0xffffdn);
    const top = 0xf_ffff_ffff_ffffn;
    d2.allocIova(1n, top, true);
    d2.allocIova(1n, top, true);
    assert.equal(d2.cached.pfnLo, top - 1n);
    d2.freeIova(0xffffdn); // pfn_lo < cached.pfn_lo: cached stays
    assert.equal(d2.cached.pfnLo, top - 1n);
    d2.freeIova(top);
    assert.equal(d2.cached.pfnLo, MASK64);
  });
});

describe("reserve_iova", () => {
  it("widens an overlapped node downwards and inserts what sticks out above it", () => {
    const d = new IovaDomain();
    d.reserveIova(10n, 20n);
    d.reserveIova(15n, 30n);
    assert.deepEqual(d.nodes().slice(0, 2), [
      { pfnLo: 10n, pfnHi: 20n },
      { pfnLo: 21n, pfnHi: 30n },
    ]);
    const r = d.reserveIova(5n, 12n)!;
    assert.deepEqual(r, { pfnLo: 5n, pfnHi: 20n }); // the existing node, widened
    assert.equal(d.nodes().length, 3);
    d.reserveIova(40n, 50n);
    d.reserveIova(35n, 60n); // [40,50] widened to [35,50], then [51,60]
    assert.deepEqual(d.nodes().slice(2, 4), [
      { pfnLo: 35n, pfnHi: 50n },
      { pfnLo: 51n, pfnHi: 60n },
    ]);
    assert.deepEqual(d.reserveIova(36n, 40n), { pfnLo: 35n, pfnHi: 50n });
    assert.equal(d.reserveIova(0n, 1n << 52n), null); // nonsensical pfn: WARN, no node
  });

  it("does not move the cached nodes", () => {
    const d = new IovaDomain();
    d.allocIova(1n, 0xfffffn, true);
    d.reserveIova(0xfee00n, 0xfeeffn);
    assert.equal(d.cached32.pfnLo, 0xfffffn);
    d.reserveIova(0xffff0n, 0xffffen);
    assert.equal(d.cached32.pfnLo, 0xfffffn);
    assert.equal(d.allocIovaFast(1n, 0xfffffn, false), 0xfffefn); // walks past the reservation
  });
});

describe("iova_reserve_pci_windows / iova_reserve_iommu_regions", () => {
  it("reserves [start - offset, end - offset] of each window in pfns", () => {
    const d = new IovaDomain();
    iovaReservePciWindows(d, [
      { cpuStart: 0xc000_0000n, size: 0x3ec0_0000n, busStart: 0xc000_0000n },
      { cpuStart: 0x40_0000_0000n, size: 0x1000_0000n, busStart: 0x8000_0000n },
    ]);
    assert.deepEqual(d.nodes().slice(0, 2), [
      { pfnLo: 0x80000n, pfnHi: 0x8ffffn },
      { pfnLo: 0xc0000n, pfnHi: 0xfebffn },
    ]);
  });

  it("dma-ranges: the gaps around them are reserved, up to the top", () => {
    const d = new IovaDomain();
    const ok = iovaReservePciWindows(
      d,
      [],
      [
        { cpuStart: 0x1_0000_0000n, size: 0x1_0000_0000n, busStart: 0x1_0000_0000n },
        { cpuStart: 0n, size: 0x8000_0000n, busStart: 0n },
      ],
    );
    assert.ok(ok);
    assert.deepEqual(d.nodes().slice(0, 2), [
      { pfnLo: 0x80000n, pfnHi: 0x100000n },
      { pfnLo: 0x200000n, pfnHi: MASK64 >> 12n },
    ]);
    const bad = new IovaDomain();
    const overlapping = [
      { cpuStart: 0n, size: 0x2000_0000n, busStart: 0n },
      { cpuStart: 0x1000_0000n, size: 0x2000_0000n, busStart: 0x1000_0000n },
    ];
    assert.equal(iovaReservePciWindows(bad, [], overlapping), false);
  });

  it("reserved regions: SW_MSI is skipped, the others become nodes", () => {
    const d = strict({
      resvRegions: [
        X86_MSI_REGION,
        AMD_HT_REGION,
        { start: 0x1000n, length: 0x1000n, type: "sw-msi" },
      ],
    });
    assert.deepEqual(d.iovad.nodes().slice(0, 2), [
      { pfnLo: 0xfee00n, pfnHi: 0xfeeffn },
      { pfnLo: 0xfd00000n, pfnHi: 0xfffffffn },
    ]);
  });
});

describe("rcache (alloc_iova_fast / free_iova_fast)", () => {
  it("iova_magazine_pop skips pfns above the limit and fills the hole with the last one", () => {
    const d = new IovaDomain();
    const top = 0xf_ffff_ffff_ffffn;
    const lo = d.allocIovaFast(1n, 0xfffffn, false);
    const hi = d.allocIovaFast(1n, top, false);
    d.freeIovaFast(lo, 1n);
    d.freeIovaFast(0xfffffn - 1n, 1n); // not allocated: still cached (the kernel does not check)
    d.freeIovaFast(hi, 1n);
    assert.deepEqual(d.rcacheView()[0]!.cpu[0]!.loaded, [lo, 0xffffen, hi]);
    assert.equal(d.allocIovaFast(1n, 0xfffffn, false), 0xffffen);
    assert.deepEqual(d.rcacheView()[0]!.cpu[0]!.loaded, [lo, hi]);
    assert.equal(d.allocIovaFast(1n, 0xfffffn, false), lo);
    assert.equal(d.allocIovaFast(1n, 0xfffffn, false), 0xffffen); // none fits: tree
    assert.equal(d.allocIovaFast(1n, top, false), hi);
  });

  it("a cached range is handed out only if all of it lies below the limit", () => {
    const d = new IovaDomain();
    d.reserveIova(0xff000n, 0xfffffn);
    const a = d.allocIovaFast(4n, 0xfffffn, false);
    assert.equal(a, 0xfeffcn);
    d.freeIovaFast(a, 4n);
    // limit 0xfeffe: 0xfeffc <= limit, but 0xfeffc + 3 is not (the kernel pops p <= limit+1-size)
    assert.equal(d.allocIovaFast(4n, 0xfeffen, false), 0xfeff8n);
    assert.equal(d.allocIovaFast(4n, 0xfefffn, false), 0xfeffcn);
  });

  it("per-CPU magazines: a free on CPU 1 is seen only by CPU 1", () => {
    const d = new IovaDomain({ cpus: 2 });
    const p = d.allocIovaFast(1n, 0xfffffn, false, 1);
    d.freeIovaFast(p, 1n, 1);
    assert.equal(d.allocIovaFast(1n, 0xfffffn, false, 0), p - 1n);
    assert.equal(d.allocIovaFast(1n, 0xfffffn, false, 1), p);
    assert.throws(() => d.allocIovaFast(1n, 0xfffffn, false, 2), /not online/);
  });

  it("sizes 1..32 pfns are cached by order_base_2; larger ones go back to the tree", () => {
    const d = new IovaDomain();
    const a = d.allocIovaFast(3n, 0xfffffn, false); // reserves 4
    d.freeIovaFast(a, 3n); // order_base_2(3) = 2: same bin as 4
    assert.deepEqual(d.rcacheView()[2]!.cpu[0]!.loaded, [a]);
    const b = d.allocIovaFast(33n, 0xfffffn, false);
    d.freeIovaFast(b, 33n);
    assert.equal(d.findIova(b), null);
  });

  /** Allocate n single pages from the tree and free them all to CPU 0's rcache. */
  function churn(d: IovaDomain, n: number): bigint[] {
    const pfns = Array.from({ length: n }, () => d.allocIova(1n, 0xfffffn, true)!.pfnLo);
    for (const p of pfns) d.freeIovaFast(p, 1n);
    return pfns;
  }

  it("6.1: 127-pfn magazines, swap with prev, 32-magazine depot, overflow freed to the tree", () => {
    const d = new IovaDomain({ profile: P61 });
    churn(d, 127);
    let v = d.rcacheView()[0]!;
    assert.deepEqual([v.cpu[0]!.loaded.length, v.cpu[0]!.prev.length], [127, 0]);
    churn(d, 1);
    v = d.rcacheView()[0]!;
    assert.deepEqual([v.cpu[0]!.loaded.length, v.cpu[0]!.prev.length], [1, 127]);
    const d2 = new IovaDomain({ profile: P61 });
    const pfns = churn(d2, 254 + 32 * 127 + 1);
    v = d2.rcacheView()[0]!;
    assert.equal(v.depot.length, 32);
    assert.deepEqual([v.cpu[0]!.loaded.length, v.cpu[0]!.prev.length], [1, 127]);
    // The loaded magazine that found the depot full (pfns 4192..4318) left the tree.
    assert.equal(d2.findIova(pfns[4191]!), null);
    assert.equal(d2.findIova(pfns[4317]!), null);
    assert.notEqual(d2.findIova(pfns[4318]!), null);
    assert.equal(d2.nodes().length, 1 + 4192);
    assert.equal(d2.cachedPfns().length, 4192);
    // Get: loaded, then prev, then a depot magazine (the newest).
    d2.allocIovaFast(1n, 0xfffffn, false);
    d2.allocIovaFast(1n, 0xfffffn, false);
    assert.equal(d2.rcacheView()[0]!.cpu[0]!.loaded.length, 126);
  });

  it("mainline: list depot trimmed by delayed work, one magazine per 100 ms of simulated time", () => {
    const clock = manualClock();
    const d = new IovaDomain({ profile: PML, clock: clock.now });
    churn(d, 254 + 32 * 127 + 1);
    assert.equal(d.rcacheView()[0]!.depot.length, 33); // unbounded
    const nodes = d.nodes().length;
    clock.advance(99);
    d.tick();
    assert.equal(d.rcacheView()[0]!.depot.length, 33);
    clock.advance(1);
    d.tick();
    assert.equal(d.rcacheView()[0]!.depot.length, 32);
    assert.equal(d.nodes().length, nodes - 127);
    clock.advance(1000);
    d.tick();
    assert.equal(d.rcacheView()[0]!.depot.length, 22);
    clock.advance(60_000);
    d.tick(); // stops at num_online_cpus()
    assert.equal(d.rcacheView()[0]!.depot.length, 1);
    assert.equal(d.timers.pending({}), false);
  });

  it("flush_rcache: 6.1 frees the depot oldest first, mainline newest first", () => {
    for (const profile of [P61, PML]) {
      const d = new IovaDomain({ profile, cpus: 2 });
      churn(d, 254 + 2 * 127 + 1);
      const p = d.allocIovaFast(2n, 0xfffffn, false, 1);
      d.freeIovaFast(p, 2n, 1);
      d.flushRcache();
      assert.equal(d.cachedPfns().length, 0);
      assert.deepEqual(d.nodes(), [{ pfnLo: MASK64, pfnHi: MASK64 }]);
      assert.deepEqual(d.warnings, []);
    }
  });
});

describe("flush queue (DMA_FQ) vs strict", () => {
  it("strict: an unmapped IOVA is handed out again at once", () => {
    const d = strict();
    const dev = dmaClient("ep");
    const a = d.allocIova(dev, PAGE, MASK32)!;
    d.freeIova(a + 0x123n, 0x10n); // offset and length are widened to the granule
    assert.equal(d.allocIova(dev, PAGE, MASK32), a);
  });

  it("lazy: frees wait in the per-CPU ring until the 10 ms timer flushes", () => {
    const clock = manualClock();
    const d = new IommuDmaDomain({ type: "DMA_FQ", profile: P61, clock: clock.now });
    const dev = dmaClient("ep");
    const a = d.allocIova(dev, PAGE, MASK32)!;
    d.freeIova(a, PAGE);
    assert.deepEqual(d.queuedFrees(), [{ pfn: a >> 12n, pages: 1n }]);
    const b = d.allocIova(dev, PAGE, MASK32)!;
    assert.equal(b, a - PAGE); // a new, lower IOVA
    clock.advance(9);
    assert.equal(d.allocIova(dev, PAGE, MASK32), a - 2n * PAGE);
    clock.advance(1);
    d.tick();
    assert.deepEqual(d.queuedFrees(), []);
    assert.equal(d.allocIova(dev, PAGE, MASK32), a);
  });

  it("a full ring (255 entries) flushes and frees before queueing", () => {
    const d = new IommuDmaDomain({ type: "DMA_FQ", profile: P61 });
    const dev = dmaClient("ep");
    const iovas = Array.from({ length: 256 }, () => d.allocIova(dev, PAGE, MASK32)!);
    for (const v of iovas.slice(0, 255)) d.freeIova(v, PAGE);
    assert.equal(d.queuedFrees().length, 255);
    d.freeIova(iovas[255]!, PAGE);
    assert.deepEqual(d.queuedFrees(), [{ pfn: iovas[255]! >> 12n, pages: 1n }]);
    assert.equal(d.iovad.cachedPfns().length, 255);
  });

  it("the timer frees every CPU's ring on the CPU that armed it; flushQueueNow", () => {
    const clock = manualClock();
    const d = new IommuDmaDomain({ type: "DMA_FQ", profile: P61, cpus: 2, clock: clock.now });
    const dev = dmaClient("ep");
    const a = d.allocIova(dev, PAGE, MASK32, 0)!;
    const b = d.allocIova(dev, PAGE, MASK32, 1)!;
    d.freeIova(a, PAGE, { cpu: 0 }); // arms the timer on CPU 0
    d.freeIova(b, PAGE, { cpu: 1 });
    clock.advance(10);
    d.tick();
    assert.deepEqual(d.iovad.rcacheView()[0]!.cpu[0]!.loaded, [a >> 12n, b >> 12n]);
    assert.deepEqual(d.iovad.rcacheView()[0]!.cpu[1]!.loaded, []);
    const c = d.allocIova(dev, PAGE, MASK32, 1)!;
    d.freeIova(c, PAGE, { cpu: 1 });
    d.flushQueueNow(1);
    assert.deepEqual(d.iovad.rcacheView()[0]!.cpu[1]!.loaded, [c >> 12n]);
  });

  it("an entry covered by another CPU's flush is freed at this CPU's next queue_iova", () => {
    const d = new IommuDmaDomain({ type: "DMA_FQ", profile: P61, cpus: 2 });
    const dev = dmaClient("ep");
    const x = d.allocIova(dev, PAGE, MASK32)!;
    d.freeIova(x, PAGE, { cpu: 0 });
    const many = Array.from({ length: 256 }, () => d.allocIova(dev, PAGE, MASK32)!);
    for (const v of many) d.freeIova(v, PAGE, { cpu: 1 }); // the 256th flushes (CPU 1's ring)
    assert.ok(d.queuedFrees().some((e) => e.pfn === x >> 12n)); // still queued on CPU 0
    const y = d.allocIova(dev, PAGE, MASK32)!;
    d.freeIova(y, PAGE, { cpu: 0 });
    assert.ok(!d.queuedFrees().some((e) => e.pfn === x >> 12n));
  });

  it("error-path frees (no gather) skip the queue; no deferred flush means strict", () => {
    const d = new IommuDmaDomain({ type: "DMA_FQ", profile: P61 });
    const a = d.allocIova(dmaClient("ep"), PAGE, MASK32)!;
    d.freeIova(a, PAGE, { queued: false });
    assert.deepEqual(d.queuedFrees(), []);
    assert.equal(new IommuDmaDomain({ type: "DMA_FQ", noDeferredFlush: true }).type, "DMA");
  });

  it("mainline single queue: 32768 slots, 1000 ms timer; 6.1 has none", () => {
    const clock = manualClock();
    const d = new IommuDmaDomain({
      type: "DMA_FQ",
      profile: PML,
      cpus: 2,
      singleFlushQueue: true,
      clock: clock.now,
    });
    const dev = dmaClient("ep");
    const vs = Array.from({ length: 300 }, (_, i) => d.allocIova(dev, PAGE, MASK32, i % 2)!);
    for (const [i, v] of vs.entries()) d.freeIova(v, PAGE, { cpu: i % 2 });
    assert.equal(d.queuedFrees().length, 300); // one ring for both CPUs, no overflow
    clock.advance(999);
    d.tick();
    assert.equal(d.queuedFrees().length, 300);
    clock.advance(1);
    d.tick();
    assert.equal(d.queuedFrees().length, 0);
    const old = new IommuDmaDomain({ type: "DMA_FQ", profile: P61, singleFlushQueue: true });
    const w = Array.from({ length: 256 }, () => old.allocIova(dev, PAGE, MASK32)!);
    for (const v of w) old.freeIova(v, PAGE);
    assert.equal(old.queuedFrees().length, 1); // per-CPU 256-slot ring
  });
});

// ── the real kernel: Linux 6.1.192 in QEMU (test/fixtures/kernel-oracle/*/dma.tsv) ─────────────

const ORACLE = new URL("../../../../test/fixtures/kernel-oracle/", import.meta.url);
type Row = Record<string, string>;

function readTsv(url: URL): Row[] {
  const [head, ...lines] = readFileSync(url, "utf8").trimEnd().split("\n");
  const cols = head!.split("\t");
  return lines.map((l) => Object.fromEntries(l.split("\t").map((v, i) => [cols[i]!, v])));
}

interface ClientInfo {
  readonly mask: bigint;
  readonly group: string;
  readonly domain: string;
  readonly driver: string;
  readonly segBoundary: bigint;
}

interface SgCall {
  readonly row: Row;
  readonly entries: Row[];
  readonly segs: Row[];
}
type Call = SgCall | { readonly row: Row };

function parseDma(name: string) {
  const rows = readTsv(new URL(`${name}/dma.tsv`, ORACLE));
  const clients = new Map<string, ClientInfo>();
  const calls: Call[] = [];
  let entries: Row[] = [];
  let last: SgCall | null = null;
  for (const r of rows) {
    if (r["op"] === "mask" && !clients.has(r["client"]!)) {
      const note = Object.fromEntries(r["note"]!.split(",").map((kv) => kv.split("=")));
      clients.set(r["client"]!, {
        mask: BigInt(r["dma"]!),
        group: note["iommu_group"]!,
        domain: note["domain"]!,
        driver: note["driver"]!,
        segBoundary: BigInt(note["seg_boundary"]!),
      });
    } else if (r["op"] === "sg_cpu") entries.push(r);
    else if (r["op"] === "sg") {
      last = { row: r, entries, segs: [] };
      calls.push(last);
      entries = [];
    } else if (r["op"] === "sg_dma") last!.segs.push(r);
    else if (["resource", "ram_map", "ram_unmap"].includes(r["op"]!)) calls.push({ row: r });
  }
  const qemuArgs = readFileSync(new URL(`${name}/qemu.args`, ORACLE), "utf8");
  const iommu = /amd-iommu/.test(qemuArgs) ? "amd" : /intel-iommu/.test(qemuArgs) ? "vtd" : "none";
  return { clients, calls, iommu };
}

/**
 * Why a group's IOVAs cannot be reproduced from a fresh domain, or null. The oracle's README:
 * only strict domains in which nothing but the oracle module maps repeat from boot to boot.
 */
function notReproducible(members: [string, ClientInfo][]): string | null {
  const type = members[0]![1].domain;
  if (type === "DMA_FQ")
    return "lazy (DMA_FQ) domain: frees wait in the flush queue and its 10 ms timer races the module, so IOVAs vary from boot to boot";
  if (type !== "DMA") return `no DMA domain (${type}): dma-direct, no IOVA`;
  const bound = members.filter(([, c]) => c.driver !== "-");
  if (bound.length > 0)
    return `driver-bound (${bound.map(([b, c]) => `${b} ${c.driver}`).join(", ")}): the driver's own mappings share the domain and move its IOVAs`;
  // A function no driver touched keeps the 32-bit default mask (and 64 KiB segments).
  const touched = members.filter(([, c]) => c.mask > MASK32);
  if (touched.length > 0)
    return `${touched.map(([b]) => b).join(", ")} has no driver now but a ${fls(touched[0]![1].mask)}-bit mask: a driver probed it earlier and used the domain before the module ran`;
  return null;
}

interface ReplayResult {
  matched: number;
  mismatches: string[];
}

/**
 * Replay, in file order, every call of the oracle module that takes an IOVA from this group's
 * domain: `dma_map_sgtable` (its single IOVA range: the granule-aligned lengths of the entries
 * the IOMMU maps, i.e. all of them for THRU_HOST_BRIDGE and RAM tables, only the RAM entry of a
 * BUS_ADDR `mixed` table), `dma_map_resource` (64 KiB) and the RAM `dma_map_page` sequence, with
 * the unmap that follows each one (unmap_sg frees from the first to the end of the last
 * non-bus DMA segment).
 */
function replay(
  domain: IommuDmaDomain,
  calls: Call[],
  clients: Map<string, ClientInfo>,
  members: Set<string>,
): ReplayResult {
  const devs = new Map<string, DmaClient>();
  const dev = (bdf: string) => {
    let d = devs.get(bdf);
    if (!d) {
      d = dmaClient(bdf);
      devs.set(bdf, d);
    }
    return d;
  };
  const ram = new Map<string, bigint>();
  const out: ReplayResult = { matched: 0, mismatches: [] };
  const check = (what: string, got: bigint | null, want: bigint) => {
    if (got === want) out.matched++;
    else out.mismatches.push(`${what}: ${hex(got)}, kernel ${hex(want)}`);
  };
  for (const call of calls) {
    const r = call.row;
    const bdf = r["client"]!;
    if (!members.has(bdf) || r["rc"] !== "0") continue;
    const info = clients.get(bdf)!;
    const what = `${r["op"]} ${r["provider"]}->${bdf} ${r["case"]}`;
    if ("entries" in call) {
      // iommu_dma_map_sg: which entries need IOVA space, and how much (with boundary padding)
      const mapped = call.entries.filter(
        (e) => r["map_type"] !== "BUS_ADDR" || e["kind"] === "ram",
      );
      let iovaLen = 0n;
      for (const e of mapped) {
        const sLen = iovaAlign(domain.iovad, BigInt(e["len"]!) + (BigInt(e["phys"]!) & 0xfffn));
        const pad = (info.segBoundary - iovaLen + 1n) & info.segBoundary;
        if (pad !== 0n && pad < sLen - 1n) iovaLen += pad;
        iovaLen += sLen;
      }
      if (iovaLen === 0n) continue;
      const got = iommuDmaAllocIova(domain, dev(bdf), iovaLen, info.mask);
      const segs = call.segs.filter((s) => s["bus_flag"] === "0");
      const first = BigInt(segs[0]!["dma"]!);
      const lastSeg = segs[segs.length - 1]!;
      check(what, got, first - (BigInt(mapped[0]!["phys"]!) & 0xfffn));
      const end = BigInt(lastSeg["dma"]!) + BigInt(lastSeg["dma_len"]!);
      if (got !== null) domain.freeIova(got + (first & 0xfffn), end - first);
    } else if (r["op"] === "ram_unmap") {
      const at = ram.get(`${bdf} ${r["case"]}`);
      if (at !== undefined) domain.freeIova(at, BigInt(r["len"]!));
    } else {
      const off = BigInt(r["phys"]!) & 0xfffn;
      const len = BigInt(r["len"]!);
      const got = iommuDmaAllocIova(
        domain,
        dev(bdf),
        iovaAlign(domain.iovad, len + off),
        info.mask,
      );
      check(what, got, BigInt(r["dma"]!) - off);
      if (got === null) continue;
      if (r["op"] === "resource") domain.freeIova(got + off, len);
      else ram.set(`${bdf} ${r["case"]}`, got + off);
    }
  }
  return out;
}

const ORACLE_RUNS = [
  "switch_basic_iommu_strict",
  "two_root_ports_epyc_amdvi",
  "multifunction_iommu",
  "switch_basic_iommu",
  "dgx_like_epyc",
  "switch_basic",
];

describe("kernel oracle: IOVAs Linux 6.1.192 handed out (QEMU, dma.tsv)", async () => {
  let total = 0;
  for (const name of ORACLE_RUNS) {
    const { clients, calls, iommu } = parseDma(name);
    const desc = await loadInput([new URL(`${name}/sysfs.tar.gz`, ORACLE).pathname]);
    const machine = buildMachine(desc);
    const groups = new Map<string, [string, ClientInfo][]>();
    for (const [bdf, c] of clients) {
      const g = groups.get(c.group) ?? [];
      g.push([bdf, c]);
      groups.set(c.group, g);
    }
    for (const [group, members] of groups) {
      const label = `${name} group ${group} (${members.map(([b]) => b).join(" ")})`;
      const why = group === "-1" ? "no IOMMU group: dma-direct, no IOVA" : notReproducible(members);
      if (why) {
        it(label, { skip: why }, () => {});
        continue;
      }
      it(label, () => {
        // iommu_dma_init_domain for the group's first device (lowest BDF, probed first)
        const firstBdf = members.map(([b]) => b).sort()[0]!;
        const first = machine.byBdf(firstBdf)!;
        const resv: ResvRegion[] = [];
        if (iommu === "vtd" && first.desc.classCode >> 8 === 0x0601)
          resv.push(VTD_ISA_FLOPPY_REGION);
        resv.push(X86_MSI_REGION);
        if (iommu === "amd") resv.push(AMD_HT_REGION);
        const domain = new IommuDmaDomain({
          type: "DMA",
          group,
          profile: P61,
          hostBridgeWindows: first.hostBridge.desc.windows ?? [],
          resvRegions: resv,
        });
        const res = replay(domain, calls, clients, new Set(members.map(([b]) => b)));
        assert.deepEqual(res.mismatches, []);
        assert.ok(res.matched > 0, "no IOVA to compare");
        total += res.matched;
      });
    }
  }
  // 46 dma_map_sgtable ranges, 38 dma_map_resource and 24 RAM dma_map_page IOVAs
  it("compared 108 IOVAs in all", () => assert.equal(total, 108));
});

// ── properties ─────────────────────────────────────────────────────────────────────────────────

type Op =
  | {
      kind: "alloc";
      pages: number;
      bits: 32 | 40 | 64;
      cpu: number;
      /** Device: PCI (32-bit-first) or not, with or without a bus_dma_limit. */
      pci: boolean;
      busLimit: bigint;
    }
  | { kind: "free"; pick: number; cpu: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant("alloc" as const),
    pages: fc.integer({ min: 1, max: 300 }),
    bits: fc.constantFrom(32 as const, 40 as const, 64 as const),
    cpu: fc.integer({ min: 0, max: 1 }),
    pci: fc.boolean(),
    busLimit: fc.oneof(
      fc.constant(0n),
      fc.constant(0n),
      fc.bigInt({ min: 0xfe00_0000n, max: 0xffff_ffffn }),
      fc.bigInt({ min: 0x1_0000_0000n, max: 0x1_0100_0000n }),
    ),
  }),
  fc.record({
    kind: fc.constant("free" as const),
    pick: fc.nat(),
    cpu: fc.integer({ min: 0, max: 1 }),
  }),
);

/** Reserved ranges inside the top 8192 pfns below 4 GiB (the rest below is reserved whole). */
const resvArb = fc.array(
  fc.tuple(fc.integer({ min: 0xfe000, max: 0xfffff }), fc.integer({ min: 0, max: 64 })),
  { maxLength: 6 },
);

describe("properties (strict mode)", () => {
  for (const profile of [P61, PML])
    it(`${profile.id}: live ranges are disjoint, aligned, in bounds, clear of reservations; freeing all restores the tree`, () => {
      fc.assert(
        fc.property(
          fc.array(opArb, { minLength: 1, maxLength: 120 }),
          resvArb,
          fc.boolean(),
          fc.integer({ min: 1, max: 64 }),
          (ops, resv, squeeze, startPfn) => {
            const d = new IommuDmaDomain({
              type: "DMA",
              profile,
              cpus: 2,
              startPfn: BigInt(startPfn),
            });
            if (squeeze) d.iovad.reserveIova(BigInt(startPfn), 0xfdfffn);
            const reserved: [bigint, bigint][] = [];
            for (const [lo, len] of resv) {
              const hi = BigInt(Math.min(lo + len, 0xfffff));
              d.iovad.reserveIova(BigInt(lo), hi);
            }
            for (const n of d.iovad.nodes().slice(0, -1)) reserved.push([n.pfnLo, n.pfnHi]);
            const initial = d.iovad.nodes();
            const devs = new Map<string, DmaClient>();
            const live: { pfn: bigint; pages: bigint; span: bigint; iova: Iova }[] = [];
            for (const op of ops) {
              if (op.kind === "alloc") {
                const key = `${op.pci} ${op.busLimit}`;
                let dev = devs.get(key);
                if (!dev) {
                  dev = dmaClient(key, { isPci: op.pci, busDmaLimit: op.busLimit });
                  devs.set(key, dev);
                }
                const pages = BigInt(op.pages);
                const mask = op.bits === 64 ? MASK64 : (1n << BigInt(op.bits)) - 1n;
                const limit = op.busLimit !== 0n && op.busLimit < mask ? op.busLimit : mask;
                const v = d.allocIova(dev, pages * PAGE, mask, op.cpu);
                if (v === null) continue;
                const pfn = v >> 12n;
                const span = pages < 32n ? roundupPowOfTwo(pages) : pages;
                assert.equal(pfn % roundupPowOfTwo(pages), 0n, "size-aligned");
                assert.ok(pfn >= BigInt(startPfn), "at or above start_pfn");
                assert.ok(pfn + span - 1n <= limit >> 12n, "within the limit");
                assert.deepEqual(d.iovad.findIova(pfn), { pfnLo: pfn, pfnHi: pfn + span - 1n });
                for (const l of live)
                  assert.ok(pfn + span <= l.pfn || l.pfn + l.span <= pfn, "overlaps a live range");
                for (const [lo, hi] of reserved)
                  assert.ok(pfn + span - 1n < lo || pfn > hi, "overlaps a reserved range");
                live.push({ pfn, pages, span, iova: v });
              } else if (live.length > 0) {
                const [l] = live.splice(op.pick % live.length, 1);
                d.freeIova(l!.iova, l!.pages * PAGE, { cpu: op.cpu });
              }
            }
            for (const l of live) d.freeIova(l.iova, l.pages * PAGE);
            d.iovad.flushRcache();
            assert.deepEqual(d.iovad.nodes(), initial);
            assert.deepEqual(d.iovad.warnings, []);
          },
        ),
        { numRuns: 150 },
      );
    });

  it("createIovaAllocator: alloc/free round trip with page offsets", () => {
    const a = createIovaAllocator({ group: 7, type: "DMA", profile: P61 });
    const v = a.alloc(0x123n + 0x2000n, MASK32)!; // 2 pages + offset -> 3 pages -> size 4
    assert.equal(hex(v), "0xffffc000");
    a.free((v + 0x123n) as Iova, 0x2000n);
    assert.equal(a.alloc(0x3000n, MASK32), v);
    assert.equal(a.group, "7");
  });
});

describe("speed", () => {
  it("100k alloc/free operations take well under a second", () => {
    const d = strict();
    const dev = dmaClient("ep");
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const live: [Iova, bigint][] = [];
    const t0 = performance.now();
    for (let i = 0; i < 100_000; i++) {
      if (live.length < 64 && (live.length === 0 || rnd(2) === 0)) {
        const len = BigInt(1 + rnd(300)) * PAGE;
        const v = d.allocIova(dev, len, rnd(2) ? MASK32 : MASK64);
        if (v !== null) live.push([v, len]);
      } else {
        const [v, len] = live.splice(rnd(live.length), 1)[0]!;
        d.freeIova(v, len);
      }
    }
    const ms = performance.now() - t0;
    assert.ok(ms < 1000, `${ms.toFixed(0)} ms`);
  });
});
