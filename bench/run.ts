/**
 * `npm run bench`: every benchmark, each against a baseline measured in the same run; prints a
 * table and writes bench/results.json as [{ name, value, unit, baseline, ratio }]. Names are stable.
 * `npm run bench -- NAME...` runs only those and replaces just their entries in results.json.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
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
      "dmabuf-map-cycle-2MiB",
      "rdma-write-1GiB-vs-copy",
    ] as const
  ).map((n): [string, () => Promise<BenchResult>] => [n, async () => isolated(n)]),
];
const unknown = only.filter((n) => !all.some(([name]) => name === n));
if (unknown.length > 0) throw new Error(`unknown benchmark(s): ${unknown.join(", ")}`);
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
const file = new URL("./results.json", import.meta.url);
const order = (n: string): number => {
  const i = all.findIndex(([name]) => name === n);
  return i < 0 ? all.length : i;
};
// a partial run keeps the other benchmarks' last results
const kept =
  only.length > 0 && existsSync(file)
    ? (JSON.parse(readFileSync(file, "utf8")) as BenchResult[]).filter(
        (r) => !results.some((x) => x.name === r.name),
      )
    : [];
const merged = [...kept, ...results].sort((x, y) => order(x.name) - order(y.name));
writeFileSync(file, `${JSON.stringify(merged, null, 2)}\n`);
