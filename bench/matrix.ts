/**
 * matrix-4096-vs-naive: all-pairs verdicts for a 4,096-endpoint machine (two switch levels,
 * ACS on some ports), VerdictMatrix against the per-pair kernel walk, results compared row by row.
 */
import { MAP_CODE, VerdictMatrix } from "../src/core/analysis/fast-matrix.ts";
import { matrixFunctions } from "../src/core/analysis/matrix.ts";
import { defaultAssumptions } from "../src/core/analysis/p2p.ts";
import { buildMachine } from "../src/core/hw/machine.ts";
import { calcMapTypeAndDist } from "../src/core/kernel/pci/p2pdma.ts";
import { bootPci } from "../src/core/kernel/pci/pci-view.ts";
import type { BenchResult } from "./run.ts";
import { syntheticDescription } from "./synthetic.ts";

export async function benchMatrix(): Promise<BenchResult> {
  const m = buildMachine(syntheticDescription(4096));
  const view = bootPci(m);
  const fns = matrixFunctions(m, "all").filter((f) => f.desc.classCode !== 0x060000);
  const n = fns.length;
  const assume = defaultAssumptions(view);
  const mt = new Uint8Array(n);
  const dist = new Int32Array(n);
  let t = performance.now();
  const vm = new VerdictMatrix(view, fns, assume);
  let fast = performance.now() - t;
  let naive = 0;
  let mismatch = 0;
  for (let i = 0; i < n; i++) {
    t = performance.now();
    vm.row(i, mt, dist);
    fast += performance.now() - t;
    t = performance.now();
    for (let j = 0; j < n; j++) {
      const r = calcMapTypeAndDist(view, fns[i]!, fns[j]!, false, assume);
      const d = r.mapType === "not-supported" ? -1 : r.distance;
      if (d !== dist[j] || MAP_CODE[r.mapType] !== mt[j]) mismatch++;
    }
    naive += performance.now() - t;
  }
  if (mismatch > 0)
    throw new Error(
      `matrix-4096-vs-naive: ${mismatch} rows differ between the fast matrix and the per-pair walk`,
    );
  return {
    name: "matrix-4096-vs-naive",
    value: fast,
    unit: "ms",
    baseline: naive,
    ratio: naive / fast,
    note: `${n} endpoints, ${n * n} pairs, identical results`,
  };
}
