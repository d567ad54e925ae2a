/**
 * Runs one benchmark in a fresh Node process (with --expose-gc), so gigabyte-sized buffers and
 * RSS readings of one benchmark do not disturb another.
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { BenchResult } from "./run.ts";

export function isolated(name: string): BenchResult {
  const child = fileURLToPath(new URL("./child.ts", import.meta.url));
  const r = spawnSync(process.execPath, [...process.execArgv, "--expose-gc", child, name], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
    maxBuffer: 1 << 20,
  });
  if (r.status !== 0) throw new Error(`${name}: child exited with ${r.status ?? r.signal}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1)!) as BenchResult;
}

/** Full collection where the process allows it (child processes run with --expose-gc). */
export function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Ends a benchmark whose check failed. */
export type Fail = (what: string, r?: { ok: boolean }) => never;

/** `fail(what, r)` for benchmark `name`: an Error naming the benchmark, the step and the failed result. */
export function failer(name: string): Fail {
  return (what, r) => {
    const detail =
      r && !r.ok
        ? `: ${JSON.stringify(r, (_k, v) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v))}`
        : "";
    throw new Error(`${name}: ${what}${detail}`);
  };
}
