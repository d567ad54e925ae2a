/**
 * Properties of the DMA API over a whole System, for random sequences of dma_map_phys,
 * dma_map_resource and dma_map_sgtable (RAM page lists of random sizes, offsets and layouts, P2P
 * pages, BAR ranges) interleaved with unmaps in random order, under a strict and a lazy IOMMU
 * domain, an identity domain and dma-direct (with and without swiotlb bouncing):
 *
 * 1. live IOVA ranges never overlap, each sits in its own allocated IOVA node (not in a magazine
 *    or the flush queue) and is mapped in the IOMMU table;
 * 2. an unmap takes out of the IOMMU table exactly what its map put in;
 * 3. once everything is unmapped nothing is mapped, and dma-debug reported nothing at all;
 * 4. what a device writes through a mapping lands in exactly the pages mapped (every other byte
 *    of the pools is unchanged), and what it reads through a to-device mapping is their content;
 * 5. with dma-debug strict, a misused unmap throws DmaDebugError naming the device.
 *
 * Pages of live mappings are kept disjoint: 6.1's dma-debug reports overlapping device-writable
 * mappings ("cacheline tracking EEXIST"), which the model does not model yet.
 * The swiotlb and dma-debug bugs the properties found have regression tests
 * at the end.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type DmaAddr, type PhysAddr, physAddr } from "../src/core/hw/address.ts";
import type { Fabric } from "../src/core/hw/fabric.ts";
import type { IommuMode } from "../src/core/hw/machine.ts";
import { DmaDebugError } from "../src/core/kernel/dma/debug.ts";
import { type DmaDevice, dmaSetMaskAndCoherent } from "../src/core/kernel/dma/device.ts";
import { DMA_MAPPING_ERROR, type DmaDirection } from "../src/core/kernel/dma/mapping.ts";
import {
  type SgTable,
  sg_alloc_table_from_pages,
  sgtableDmaSegments,
} from "../src/core/kernel/lib/scatterlist.ts";
import type { Page } from "../src/core/kernel/mm/page.ts";
import { System } from "../src/core/kernel/system.ts";
import { AMD_ZEN, INTEL, topo } from "./support/topology.ts";

const PAGE = 4096;
const PAGE_N = 4096n;
const MiB = 1n << 20n;
const BAR = 0x38_0000_0000n;
/** BAR pages handed to dma_map_resource: past the 2 MiB given to p2pmem. */
const RES = BAR + 4n * MiB;
const RAM_HIGH = 24;
const RAM_LOW = 8;
const P2P = 12;
const RES_PAGES = 8;
const CLIENTS = ["04:00.0", "05:00.0"] as const;

type Cpu = "amd" | "intel";

/**
 * Provider 03:00.0 and client 04:00.0 below one switch (bus addresses, or through the host bridge
 * when the switch ports redirect), client 05:00.0 below another root port (through the host
 * bridge). AMD Zen's root complex forwards P2P; this Intel host bridge is on no allowlist, so
 * P2P through it is refused (-EREMOTEIO) and dma_map_resource'd BARs fault there.
 */
function boot(mode: IommuMode, acs: number, cpu: Cpu, debug: boolean | "strict") {
  const t = topo();
  if (cpu === "amd") t.cpu(AMD_ZEN).hostFn("00:00.0", "1022:1480");
  else t.cpu(INTEL).hostFn("00:00.0", "8086:1234");
  const sys = new System(
    t
      .rootPort("00:01.0")
      .usp("01:00.0", { parent: "00:01.0" })
      .dsp("02:00.0", { parent: "01:00.0", acs })
      .dsp("02:01.0", { parent: "01:00.0", acs })
      .ep("03:00.0", { parent: "02:00.0", bars: [{ index: 2, start: BAR, size: 1n << 30n }] })
      .ep("04:00.0", { parent: "02:01.0" })
      .rootPort("00:02.0")
      .ep("05:00.0", { parent: "00:02.0" })
      .iommu(mode)
      .build(),
    { dmaDebug: debug },
  );
  const provider = sys.machine.byBdf("03:00.0")!;
  assert.ok(sys.p2pmem.addResource(provider, 2, 2n * MiB, 0n).ok);
  const va = sys.p2pmem.alloc(provider, BigInt(P2P) * PAGE_N)!;
  const p2p: Page[] = [];
  for (let i = 0n; i < BigInt(P2P); i++)
    p2p.push(sys.p2pmem.pageOf((va + i * PAGE_N) as typeof va)!);
  const res: Page[] = [];
  // no struct page behind a BAR: only the address is used
  for (let i = 0n; i < BigInt(RES_PAGES); i++) res.push({ pfn: (RES >> 12n) + i, pgmap: null });
  return {
    sys,
    pools: {
      high: sys.allocPages(BigInt(RAM_HIGH) * PAGE_N),
      low: sys.allocPages(BigInt(RAM_LOW) * PAGE_N, { low: true }),
      p2p,
      res,
    },
  };
}

type PoolName = "high" | "low" | "p2p" | "res";

interface Op {
  readonly kind: "single" | "resource" | "sg" | "unmap";
  readonly dev: number;
  readonly dir: DmaDirection;
  /** Pools an sg list draws from, page by page. */
  readonly pools: readonly ("high" | "low" | "p2p")[];
  /** Physically contiguous pages, or scattered in random order. */
  readonly contiguous: boolean;
  readonly picks: readonly number[];
  readonly offset: number;
  /** Which byte of the last page ends the buffer (1..4096). */
  readonly tail: number;
}

const opArb: fc.Arbitrary<Op> = fc.record({
  kind: fc.constantFrom("single", "resource", "sg", "sg", "unmap", "unmap"),
  dev: fc.nat(1),
  dir: fc.constantFrom<DmaDirection>("to-device", "from-device", "bidirectional"),
  pools: fc.array(fc.constantFrom("high", "low", "p2p"), { minLength: 1, maxLength: 5 }),
  contiguous: fc.boolean(),
  picks: fc.array(fc.nat(1000), { minLength: 5, maxLength: 5 }),
  offset: fc.oneof(fc.constant(0), fc.nat(PAGE - 1)),
  tail: fc.oneof(fc.constant(PAGE), fc.integer({ min: 1, max: PAGE })),
});

/** A physically contiguous piece of a mapped buffer. */
interface Piece {
  readonly phys: bigint;
  readonly len: number;
}

interface Live {
  readonly kind: "single" | "resource" | "sg";
  readonly dev: DmaDevice;
  readonly dir: DmaDirection;
  readonly dma: DmaAddr;
  readonly size: bigint;
  readonly table?: SgTable;
  /** The buffer, in the order the device sees it. */
  readonly pieces: readonly Piece[];
  /** Pool pages it holds: [pool, index]. */
  readonly held: readonly [PoolName, number][];
  /** IOVA ranges [lo, hi) it owns in its IOMMU domain, granule-aligned. */
  readonly iova: readonly [bigint, bigint][];
  /** What the IOMMU table gained when it was mapped. */
  readonly delta: bigint;
  /** Bytes the device wrote into swiotlb slots, which reach memory at unmap. */
  readonly pending: { pieces: Piece[]; bytes: Uint8Array }[];
}

let seed = 1;
const pattern = (n: number): Uint8Array => {
  const s = seed++;
  return Uint8Array.from({ length: n }, (_, i) => (i * 151 + s * 29 + (i >> 8)) & 0xff);
};

/** The pieces covering bytes [from, from + len) of a buffer made of `pieces`. */
function slice(pieces: readonly Piece[], from: number, len: number): Piece[] {
  const out: Piece[] = [];
  let at = 0;
  for (const p of pieces) {
    const lo = Math.max(from, at);
    const hi = Math.min(from + len, at + p.len);
    if (lo < hi) out.push({ phys: p.phys + BigInt(lo - at), len: hi - lo });
    at += p.len;
  }
  return out;
}

class Harness {
  readonly sys: System;
  readonly pools: Record<PoolName, Page[]>;
  readonly devs: DmaDevice[];
  readonly free: Record<PoolName, boolean[]>;
  /** What every pool page should hold. */
  readonly shadow = new Map<bigint, Uint8Array>();
  readonly live: Live[] = [];

  readonly cpu: Cpu;

  constructor(
    mode: IommuMode,
    acs: number,
    cpu: Cpu,
    masks: readonly number[],
    debug: boolean | "strict",
  ) {
    const { sys, pools } = boot(mode, acs, cpu, debug);
    this.sys = sys;
    this.cpu = cpu;
    this.pools = pools;
    this.devs = CLIENTS.map((bdf, i) => {
      const d = sys.device(bdf);
      dmaSetMaskAndCoherent(d, masks[i]!);
      return d;
    });
    this.free = {
      high: pools.high.map(() => true),
      low: pools.low.map(() => true),
      p2p: pools.p2p.map(() => true),
      res: pools.res.map(() => true),
    };
    // known, distinct content everywhere, so a stray write shows
    for (const [name, list] of Object.entries(pools))
      for (const [i, p] of list.entries()) {
        const bytes = Uint8Array.from(
          { length: PAGE },
          (_, j) => (j * 7 + i * 13 + name.length) & 0xff,
        );
        sys.memory.write(System.phys(p), bytes);
        this.shadow.set(System.phys(p), bytes);
      }
  }

  /** Takes free pool pages: `n` physically contiguous ones, or `n` scattered in `picks` order. */
  #take(pool: PoolName, n: number, contiguous: boolean, picks: readonly number[]): number[] | null {
    const f = this.free[pool];
    if (contiguous) {
      const starts: number[] = [];
      for (let s = 0; s + n <= f.length; s++) if (f.slice(s, s + n).every(Boolean)) starts.push(s);
      if (starts.length === 0) return null;
      const s = starts[picks[0]! % starts.length]!;
      f.fill(false, s, s + n);
      return Array.from({ length: n }, (_, i) => s + i);
    }
    const avail = f.flatMap((ok, i) => (ok ? [i] : []));
    if (avail.length < n) return null;
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(avail.splice(picks[i]! % avail.length, 1)[0]!);
    for (const i of out) f[i] = false;
    return out;
  }

  #release(held: readonly [PoolName, number][]): void {
    for (const [p, i] of held) this.free[p][i] = true;
  }

  #iommu(dev: DmaDevice) {
    return dev.translation.kind === "dma" ? dev.translation : null;
  }

  mapped(): bigint {
    const tables = new Set(this.devs.map((d) => this.#iommu(d)?.table).filter((t) => t));
    let n = 0n;
    for (const t of tables) n += t!.mappedBytes;
    return n;
  }

  run(op: Op): void {
    if (op.kind === "unmap") {
      if (this.live.length > 0) this.unmap(this.live[op.picks[0]! % this.live.length]!);
      return;
    }
    const dev = this.devs[op.dev]!;
    const before = this.mapped();
    let held: [PoolName, number][];
    let pieces: Piece[];
    let dma: DmaAddr;
    let size: bigint;
    let table: SgTable | undefined;
    if (op.kind === "sg") {
      // one pool for a contiguous list (contiguity is per pool), a page per pool entry otherwise
      const n = op.pools.length;
      const len = (n - 1) * PAGE + op.tail - op.offset;
      if (len <= 0) return;
      if (op.contiguous) {
        const idx = this.#take(op.pools[0]!, n, true, op.picks);
        if (!idx) return;
        held = idx.map((i) => [op.pools[0]!, i]);
      } else {
        held = [];
        for (const [k, pool] of op.pools.entries()) {
          const idx = this.#take(pool, 1, false, [op.picks[k]!]);
          if (!idx) {
            this.#release(held);
            return;
          }
          held.push([pool, idx[0]!]);
        }
      }
      const pages = held.map(([p, i]) => this.pools[p][i]!);
      const t = sg_alloc_table_from_pages(pages, op.offset, len);
      assert.ok(t.ok);
      table = t.value;
      pieces = slice(
        pages.map((p) => ({ phys: System.phys(p), len: PAGE })),
        op.offset,
        len,
      );
      const r = this.sys.dma.mapSgtable(dev, table, op.dir);
      if (!r.ok) {
        // a P2P page this client cannot reach: nothing may be left behind
        assert.equal(r.errno, "EREMOTEIO");
        assert.equal(this.mapped(), before);
        this.#release(held);
        // and no byte of the pages changed (the error path skips the swiotlb copy-back)
        for (const pg of pages) {
          const a = System.phys(pg);
          const want = this.shadow.get(a);
          if (want)
            assert.deepEqual(
              this.sys.memory.read(a, PAGE),
              want,
              `page 0x${a.toString(16)} changed by a failed map`,
            );
        }
        return;
      }
      dma = sgtableDmaSegments(table)[0]!.dma_address;
      size = BigInt(len);
    } else {
      const pool: PoolName = op.kind === "resource" ? "res" : op.picks[1]! % 2 ? "high" : "low";
      const n = 1 + (op.picks[2]! % 3);
      const len = (n - 1) * PAGE + op.tail - op.offset;
      if (len <= 0) return;
      const idx = this.#take(pool, n, true, op.picks);
      if (!idx) return;
      held = idx.map((i) => [pool, i]);
      const phys = physAddr(System.phys(this.pools[pool][idx[0]!]!) + BigInt(op.offset));
      pieces = [{ phys, len }];
      size = BigInt(len);
      dma =
        op.kind === "resource"
          ? this.sys.dma.mapResource(dev, phys, size, op.dir)
          : this.sys.dma.mapPhys(dev, phys, size, op.dir);
      if (this.sys.dma.mappingError(dev, dma)) {
        // only dma-direct refuses (a BAR above a 32-bit mask); nothing may be left behind
        assert.equal(this.#iommu(dev), null);
        assert.equal(this.mapped(), before);
        this.#release(held);
        return;
      }
    }
    const l: Live = {
      kind: op.kind,
      dev,
      dir: op.dir,
      dma,
      size,
      ...(table ? { table } : {}),
      pieces,
      held,
      iova: this.#iovaOf(dev, op.kind, dma, size, table),
      delta: this.mapped() - before,
      pending: [],
    };
    // (2) the table grew by exactly the IOVA space the mapping owns
    assert.equal(
      l.delta,
      l.iova.reduce((s, [lo, hi]) => s + hi - lo, 0n),
    );
    this.live.push(l);
    this.#access(l);
  }

  #iovaOf(
    dev: DmaDevice,
    kind: Live["kind"],
    dma: DmaAddr,
    size: bigint,
    table?: SgTable,
  ): [bigint, bigint][] {
    if (!this.#iommu(dev)) return [];
    const up = (v: bigint) => (v + PAGE_N - 1n) & ~(PAGE_N - 1n);
    if (kind !== "sg") return [[dma & ~(PAGE_N - 1n), up(dma + size)]];
    const segs = sgtableDmaSegments(table!).filter((s) => !s.bus);
    if (segs.length === 0) return [];
    const last = segs.at(-1)!;
    return [
      [segs[0]!.dma_address & ~(PAGE_N - 1n), up(last.dma_address + BigInt(last.dma_length))],
    ];
  }

  /** (4) the device writes every DMA segment (or reads it back, for to-device). */
  #access(l: Live): void {
    const segs =
      l.kind === "sg"
        ? sgtableDmaSegments(l.table!)
        : [{ dma_address: l.dma, dma_length: Number(l.size), bus: false }];
    const total = segs.reduce((s, x) => s + x.dma_length, 0);
    assert.equal(total, Number(l.size), "the DMA segments cover the buffer");
    const inBar = (where: readonly Piece[]) =>
      where.every((p) => this.sys.memory.regionAt(p.phys)?.kind === "bar");
    const iommu = this.#iommu(l.dev);
    let at = 0;
    for (const s of segs) {
      const where = slice(l.pieces, at, s.dma_length);
      at += s.dma_length;
      const bounced = this.sys.swiotlb.isBounce(s.dma_address);
      // a refusal is right only for BAR memory behind a root complex that does not forward P2P
      const refused = (r: ReturnType<Fabric["dmaRead"]>): boolean => {
        if (r.ok) return false;
        assert.ok(
          this.cpu === "intel" &&
            inBar(where) &&
            /does not forward peer-to-peer/.test(r.fault.reason),
          `${l.kind} ${l.dir}: ${r.fault.reason}`,
        );
        return true;
      };
      if (l.dir === "to-device") {
        const r = this.sys.fabric.dmaRead(l.dev.fn, s.dma_address, s.dma_length);
        if (!refused(r)) assert.deepEqual(r.ok && r.data, this.#expected(where));
        // the IOMMU maps it read-only: a write faults and changes nothing
        if (iommu && !s.bus) {
          const w = this.sys.fabric.dmaWrite(l.dev.fn, s.dma_address, pattern(s.dma_length));
          assert.ok(
            !w.ok && /no-write/.test(w.fault.reason),
            "a write through a to-device mapping",
          );
        }
        continue;
      }
      const bytes = pattern(s.dma_length);
      if (refused(this.sys.fabric.dmaWrite(l.dev.fn, s.dma_address, bytes))) continue;
      if (bounced) l.pending.push({ pieces: where, bytes });
      else this.#store(where, bytes);
      if (l.dir === "bidirectional") {
        const back = this.sys.fabric.dmaRead(l.dev.fn, s.dma_address, s.dma_length);
        assert.ok(back.ok);
        assert.deepEqual(back.data, bytes);
      }
    }
  }

  /** Calls `fn(page, offset in page, offset in the pieces' bytes, length)` page by page. */
  static #pages(
    where: readonly Piece[],
    fn: (page: Uint8Array, off: number, at: number, n: number) => void,
    shadow: Map<bigint, Uint8Array>,
  ): void {
    let at = 0;
    for (const p of where)
      for (let done = 0; done < p.len; ) {
        const a = p.phys + BigInt(done);
        const page = a & ~(PAGE_N - 1n);
        const off = Number(a - page);
        const n = Math.min(p.len - done, PAGE - off);
        fn(shadow.get(page)!, off, at, n);
        done += n;
        at += n;
      }
  }

  #expected(where: readonly Piece[]): Uint8Array {
    const out = new Uint8Array(where.reduce((s, p) => s + p.len, 0));
    Harness.#pages(
      where,
      (page, off, at, n) => out.set(page.subarray(off, off + n), at),
      this.shadow,
    );
    return out;
  }

  #store(where: readonly Piece[], bytes: Uint8Array): void {
    Harness.#pages(
      where,
      (page, off, at, n) => page.set(bytes.subarray(at, at + n), off),
      this.shadow,
    );
  }

  unmap(l: Live): void {
    const before = this.mapped();
    if (l.kind === "sg") this.sys.dma.unmapSgtable(l.dev, l.table!, l.dir);
    else this.sys.dma.unmapPhys(l.dev, l.dma, l.size, l.dir, { mmio: l.kind === "resource" });
    // (2) exactly what the map added is gone, and none of it translates any more
    assert.equal(before - this.mapped(), l.delta);
    const tbl = this.#iommu(l.dev)?.table;
    for (const [lo] of l.iova) assert.equal(tbl!.translate(lo, l.dir !== "to-device").ok, false);
    for (const p of l.pending) this.#store(p.pieces, p.bytes);
    this.#release(l.held);
    this.live.splice(this.live.indexOf(l), 1);
  }

  /** (1) and (4): run after every operation. */
  check(): void {
    for (const d of this.devs) {
      const t = this.#iommu(d);
      if (!t) continue;
      const mine = this.live.filter((l) => this.#iommu(l.dev) === t);
      const ranges = mine
        .flatMap((l) => l.iova.map((r) => ({ r, l })))
        .sort((a, b) => (a.r[0] < b.r[0] ? -1 : 1));
      for (let i = 1; i < ranges.length; i++)
        assert.ok(ranges[i - 1]!.r[1] <= ranges[i]!.r[0], "live IOVA ranges overlap");
      const iovad = t.iova.domain.iovad;
      const cached = new Set(iovad.cachedPfns());
      const queued = new Set(t.iova.domain.queuedFrees().map((q) => q.pfn));
      const nodes = new Set<bigint>();
      for (const { r, l } of ranges) {
        const node = iovad.findIova(r[0] >> 12n);
        assert.ok(node, "a live IOVA range has no node in the allocator");
        assert.ok(node.pfnHi >= (r[1] >> 12n) - 1n, "a live IOVA range runs past its node");
        assert.ok(!nodes.has(node.pfnLo), "two live mappings share an IOVA node");
        nodes.add(node.pfnLo);
        assert.ok(!cached.has(node.pfnLo), "a live IOVA range sits in an rcache magazine");
        assert.ok(!queued.has(node.pfnLo), "a live IOVA range waits in the flush queue");
        const f = t.table.translateRuns(r[0], Number(r[1] - r[0]), l.dir !== "to-device", () => {});
        assert.equal(f, null, "a live IOVA range is not mapped in the IOMMU table");
      }
      const sum = mine.reduce((s, l) => s + l.delta, 0n);
      assert.equal(t.table.mappedBytes, sum, "the IOMMU table maps more than the live mappings");
    }
    for (const [page, want] of this.shadow) {
      const got = this.sys.memory.read(page as PhysAddr, PAGE);
      if (!Buffer.from(got).equals(want))
        assert.deepEqual(got, want, `page 0x${page.toString(16)}`);
    }
  }
}

const MODES: readonly IommuMode[] = ["dma", "dma-fq", "identity", "off"];

describe("DMA API properties over random map/unmap sequences", () => {
  for (const mode of MODES)
    it(`${mode}: disjoint IOVAs, exact unmaps, no leaks, bytes land where mapped`, () => {
      fc.assert(
        fc.property(
          fc.constantFrom(0, 0x1d),
          fc.constantFrom<Cpu>("amd", "intel"),
          fc.constantFrom(32, 64),
          fc.constantFrom(32, 64),
          fc.array(opArb, { maxLength: 24 }),
          fc.array(fc.nat(), { maxLength: 8 }),
          (acs, cpu, maskA, maskB, ops, order) => {
            const h = new Harness(mode, acs, cpu, [maskA, maskB], true);
            for (const op of ops) {
              h.run(op);
              h.check();
            }
            // everything else in random order
            for (let k = 0; h.live.length > 0; k++) {
              h.unmap(h.live[(order[k % Math.max(1, order.length)] ?? 0) % h.live.length]!);
              h.check();
            }
            // (3)
            assert.equal(h.mapped(), 0n);
            for (const d of h.devs) assert.equal(h.sys.debug!.released(d), 0);
            assert.deepEqual(h.sys.debug!.reports, []);
            assert.equal(h.sys.swiotlb.liveBounces, 0);
          },
        ),
        { numRuns: 40 },
      );
    });

  it("dma-debug strict: unmapping what is not mapped, with the wrong size, or twice throws naming the device", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...MODES),
        fc.array(opArb, { minLength: 1, maxLength: 6 }),
        fc.constantFrom("not-mapped", "wrong-size", "double"),
        fc.nat(),
        fc.integer({ min: 1, max: 3 * PAGE }),
        (mode, ops, misuse, pick, newSize) => {
          const h = new Harness(mode, 0, "amd", [64, 64], "strict");
          for (const op of ops) if (op.kind !== "unmap") h.run(op);
          const candidates =
            misuse === "wrong-size" ? h.live.filter((l) => l.kind !== "sg") : h.live;
          const dev = h.devs[pick % 2]!;
          const expect = (fn: () => void, code: string, who: DmaDevice) =>
            assert.throws(fn, (e: unknown) => {
              assert.ok(e instanceof DmaDebugError);
              assert.equal(e.report.device, who.name);
              assert.ok(e.message.includes(who.name));
              assert.equal(e.report.code, code);
              return true;
            });
          if (misuse === "not-mapped" || candidates.length === 0) {
            const dma = (0xdead_0000n + BigInt(pick % 64) * PAGE_N) as DmaAddr;
            assert.notEqual(dma, DMA_MAPPING_ERROR);
            expect(
              () => h.sys.dma.unmapPhys(dev, dma, PAGE_N, "to-device"),
              "unmap-not-mapped",
              dev,
            );
            return;
          }
          const l = candidates[pick % candidates.length]!;
          const attrs = { mmio: l.kind === "resource" };
          if (misuse === "wrong-size") {
            const size = BigInt(newSize) === l.size ? l.size + 1n : BigInt(newSize);
            expect(
              () => h.sys.dma.unmapPhys(l.dev, l.dma, size, l.dir, attrs),
              "unmap-wrong-size",
              l.dev,
            );
            return;
          }
          h.unmap(l);
          expect(
            () =>
              l.kind === "sg"
                ? h.sys.dma.unmapSgtable(l.dev, l.table!, l.dir)
                : h.sys.dma.unmapPhys(l.dev, l.dma, l.size, l.dir, attrs),
            "double-unmap",
            l.dev,
          );
        },
      ),
      { numRuns: 80 },
    );
  });
});

describe("DMA API model bugs the properties found", () => {
  it("dma-direct + swiotlb: bytes of a from-device buffer the device does not write survive unmap", {}, () => {
    const { sys, pools } = boot("off", 0, "amd", true);
    const dev = sys.device("05:00.0"); // 32-bit mask: RAM above 4 GiB bounces
    const phys = System.phys(pools.high[0]!);
    sys.memory.write(phys, new Uint8Array(PAGE).fill(0xaa));
    const dma = sys.dma.mapPhys(dev, phys, PAGE_N, "from-device");
    assert.equal(sys.dma.mappingError(dev, dma), false);
    assert.ok(sys.swiotlb.isBounce(dma));
    assert.ok(sys.fabric.dmaWrite(dev.fn, dma, new Uint8Array(16).fill(1)).ok);
    sys.dma.unmapPhys(dev, dma, PAGE_N, "from-device");
    const got = sys.memory.read(phys, PAGE);
    assert.deepEqual(got.subarray(0, 16), new Uint8Array(16).fill(1));
    assert.deepEqual(got.subarray(16), new Uint8Array(PAGE - 16).fill(0xaa));
  });

  it("dma-direct: a dma_map_sgtable that fails with -EREMOTEIO leaves the pages it bounced untouched", {}, () => {
    const { sys, pools } = boot("off", 0, "intel", true);
    const dev = sys.device("05:00.0"); // no path to 03:00.0's P2P memory on this Intel host
    // leave stale bytes in the first swiotlb slot
    const other = System.phys(pools.high[1]!);
    const d0 = sys.dma.mapPhys(dev, other, PAGE_N, "to-device");
    assert.equal(sys.dma.mappingError(dev, d0), false);
    sys.dma.unmapPhys(dev, d0, PAGE_N, "to-device");
    const phys = System.phys(pools.high[0]!);
    sys.memory.write(phys, new Uint8Array(PAGE).fill(0xaa));
    const t = sg_alloc_table_from_pages([pools.high[0]!, pools.p2p[0]!], 0, 2 * PAGE);
    assert.ok(t.ok);
    const r = sys.dma.mapSgtable(dev, t.value, "from-device");
    assert.equal(r.ok ? "ok" : r.errno, "EREMOTEIO");
    assert.deepEqual(sys.memory.read(phys, PAGE), new Uint8Array(PAGE).fill(0xaa));
  });

  it("dma-debug: two live mappings at the same DMA address are two entries", {}, () => {
    const { sys, pools } = boot("off", 0, "amd", true);
    const dev = sys.device("04:00.0");
    dmaSetMaskAndCoherent(dev, 64);
    const phys = System.phys(pools.high[0]!);
    const a = sys.dma.mapPhys(dev, phys, PAGE_N, "to-device");
    const b = sys.dma.mapPhys(dev, phys, PAGE_N, "to-device");
    assert.equal(a, b);
    assert.equal(sys.dma.mappingError(dev, a), false);
    assert.equal(sys.dma.mappingError(dev, b), false);
    sys.dma.unmapPhys(dev, a, PAGE_N, "to-device");
    sys.dma.unmapPhys(dev, b, PAGE_N, "to-device");
    assert.equal(sys.debug!.released(dev), 0);
    assert.deepEqual(sys.debug!.reports, []);
  });
});
