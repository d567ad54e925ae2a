import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { IommuPageTable, type IommuProt } from "./iommu.ts";

const G = 4096n;
const RW: IommuProt = { read: true, write: true, mmio: false };
const RO: IommuProt = { read: true, write: false, mmio: false };

/** The reference: one entry per mapped granule. */
type Ref = Map<number, { phys: number; prot: IommuProt }>;

function check(t: IommuPageTable, ref: Ref, space: number): void {
  assert.equal(t.mappedBytes, BigInt(ref.size) * G);
  let last = -1n;
  let n = 0;
  for (const m of t.mappings()) {
    assert.ok(m.iova >= last, "extents sorted and disjoint");
    last = m.iova + m.size;
    for (let i = 0n; i < m.size / G; i++) {
      const r = ref.get(Number(m.iova / G + i));
      assert.ok(r, `granule ${m.iova / G + i} mapped in the table only`);
      assert.equal(BigInt(r.phys), m.phys / G + i);
      assert.equal(r.prot.write, m.prot.write);
    }
    n += Number(m.size / G);
  }
  assert.equal(n, ref.size);
  for (let g = 0; g < space; g++) {
    const r = ref.get(g);
    const tr = t.translate(BigInt(g) * G + 5n, false);
    assert.equal(tr.ok, r !== undefined, `granule ${g}`);
    if (tr.ok && r) assert.equal(tr.phys, BigInt(r.phys) * G + 5n);
  }
  // a request over the whole space: runs up to the first hole, physically contiguous each
  const runs: [number, number, number][] = [];
  const f = t.translateRuns(0n, space * 4096, false, (p, o, l) => runs.push([p, o, l]));
  let g = 0;
  for (const [p, o, l] of runs) {
    assert.equal(o, 0);
    for (let i = 0; i < l / 4096; i++, g++) assert.equal(ref.get(g)?.phys, p + i);
  }
  if (f) assert.equal(f.at, g * 4096);
  assert.equal(ref.has(g), false, "the walk stopped at the first hole");
}

function apply(
  t: IommuPageTable,
  ref: Ref,
  op: { map: boolean; at: number; n: number; phys: number; ro: boolean },
): void {
  if (op.map) {
    let free = true;
    for (let i = 0; i < op.n; i++) if (ref.has(op.at + i)) free = false;
    const prot = op.ro ? RO : RW;
    const call = () => t.map(BigInt(op.at) * G, BigInt(op.phys) * G, BigInt(op.n) * G, prot);
    if (!free) {
      assert.throws(call, /EEXIST/);
      return;
    }
    call();
    for (let i = 0; i < op.n; i++) ref.set(op.at + i, { phys: op.phys + i, prot });
  } else {
    let want = 0;
    for (let i = 0; i < op.n; i++) if (ref.delete(op.at + i)) want++;
    assert.equal(t.unmap(BigInt(op.at) * G, BigInt(op.n) * G), BigInt(want) * G);
  }
}

describe("IOMMU page table", () => {
  it("agrees with a per-granule reference under random maps and unmaps", () => {
    const space = 64;
    const op = fc.record({
      map: fc.boolean(),
      at: fc.integer({ min: 0, max: space - 1 }),
      n: fc.integer({ min: 1, max: 8 }),
      // phys near at: neighbours often continue each other, so extents merge and split
      phys: fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 1000 })),
      ro: fc.boolean(),
    });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const t = new IommuPageTable("dma");
        const ref: Ref = new Map();
        for (const o of ops) {
          const n = Math.min(o.n, space - o.at);
          apply(t, ref, { ...o, n, phys: o.phys < 0 ? 5000 + o.at : o.phys });
          check(t, ref, space);
        }
      }),
      { numRuns: 300 },
    );
  });

  it("stays right across block splits and merges with thousands of extents", () => {
    const space = 6000;
    let seed = 12345;
    const rnd = (k: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % k;
    };
    const t = new IommuPageTable("dma");
    const ref: Ref = new Map();
    for (let step = 0; step < 6000; step++) {
      const at = rnd(space);
      const n = Math.min(1 + rnd(step < 4000 ? 2 : 40), space - at);
      const map = step < 4000 || rnd(3) > 0;
      const phys = rnd(4) === 0 ? 100_000 + at : 10 * at + rnd(7);
      apply(t, ref, { map: map && step % 50 !== 49, at, n, phys, ro: rnd(8) === 0 });
      if (step % 1000 === 999) check(t, ref, space);
    }
    check(t, ref, space);
    t.unmap(0n, BigInt(space) * G);
    assert.equal(t.mappedBytes, 0n);
    assert.equal(t.extents, 0);
  });

  it("maps 262,144 scattered pages in near-linear time and merges contiguous ones", () => {
    const n = 262_144;
    const t = new IommuPageTable("dma");
    const t0 = performance.now();
    // descending IOVAs: every insertion lands at the front, the worst case for an array
    for (let i = n - 1; i >= 0; i--) t.map(BigInt(i) * G, BigInt(2 * i) * G, G, RW);
    assert.equal(t.extents, n);
    assert.ok(
      performance.now() - t0 < 10_000,
      "not quadratic (a sorted array with splice takes ~45 s)",
    );
    const c = new IommuPageTable("dma");
    for (let i = 0; i < 512; i++) c.map(BigInt(i) * G, BigInt(1000 + i) * G, G, RW);
    assert.equal(c.extents, 1, "physically contiguous pages become one extent");
    assert.equal(c.unmap(100n * G, 10n * G), 10n * G);
    assert.equal(c.extents, 2, "unmapping the middle splits it");
  });
});
