/**
 * `npm run bench`: every benchmark, each against a baseline measured in the same run; prints a
 * table and writes bench/results.json as [{ name, value, unit, baseline, ratio }]. Names are stable.
 */
import { writeFileSync } from "node:fs";
import { isolated } from "./isolate.ts";
import { benchLoadCapture } from "./load-capture.ts";
import { benchMatrix } from "./matrix.ts";

export interface BenchResult {
  readonly name: string;
  /** Our measurement. */
  readonly value: number;
  readonly unit: string;
  /** The baseline's measurement, same unit. */
  readonly baseline: number;
  /** How many times better we are than the baseline (> 1: faster). */
  readonly ratio: number;
  readonly note?: string;
}

const only = process.argv.slice(2);
const all: [string, () => Promise<BenchResult>][] = [
  ["load-capture-vs-hwloc", benchLoadCapture],
  ["matrix-4096-vs-naive", benchMatrix],
  // gigabyte buffers and RSS readings: each in its own process
  ...(
    [
      "dma-1GiB-scattered-vs-copy",
      "dma-1GiB-contiguous-vs-copy",
      "iova-alloc-free-vs-no-cache",
      "bar-96GiB-touch-1GiB-rss",
    ] as const
  ).map((n): [string, () => Promise<BenchResult>] => [n, async () => isolated(n)]),
];
const results: BenchResult[] = [];
for (const [name, fn] of all) {
  if (only.length > 0 && !only.includes(name)) continue;
  process.stderr.write(`running ${name}…\n`);
  results.push(await fn());
}
const rows = results.map((r) => [
  r.name,
  `${r.value.toFixed(1)} ${r.unit}`,
  `${r.baseline.toFixed(1)} ${r.unit}`,
  `${r.ratio.toFixed(2)}×`,
  r.note ?? "",
]);
const head = ["benchmark", "peerbuf", "baseline", "ratio", "note"];
const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
for (const r of [head, ...rows])
  process.stdout.write(`${r.map((c, i) => c.padEnd(w[i]!)).join("  ")}\n`);
writeFileSync(new URL("./results.json", import.meta.url), `${JSON.stringify(results, null, 2)}\n`);
