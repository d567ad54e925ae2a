/**
 * load-capture-vs-hwloc: a 1,000-function sysfs capture loaded by a whole process —
 * `peerbuf tree --input X --json` against hwloc's `lstopo-no-graphics --input X --whole-io --of xml`
 * (Debian hwloc-nox) on the same tree in the same run. Ratio = hwloc time / our time.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BenchResult } from "./run.ts";
import { syntheticSysfs, writeSyntheticTree } from "./synthetic.ts";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function time(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): number {
  const t = performance.now();
  const r = spawnSync(cmd, args, { stdio: ["ignore", "ignore", "pipe"], env });
  const ms = performance.now() - t;
  if (r.status !== 0)
    throw new Error(`${cmd} ${args.join(" ")} failed: ${r.stderr?.toString() ?? r.error}`);
  return ms;
}

export async function benchLoadCapture(): Promise<BenchResult> {
  const dir = mkdtempSync(join(tmpdir(), "peerbuf-bench-"));
  try {
    const t = syntheticSysfs({
      hostBridges: 4,
      rootPortsPerHostBridge: 4,
      downstreamPortsPerSwitch: 8,
      functionsPerDevice: 7,
      acsEvery: 3,
    });
    writeSyntheticTree(t, dir);
    // the compiled CLI (npm run bench builds it first), as an installed peerbuf runs
    const bin = new URL("../dist/cli/main.js", import.meta.url).pathname;
    const ours = () => time(process.execPath, [bin, "tree", "--input", dir, "--json"]);
    const hwloc = () =>
      time("lstopo-no-graphics", ["--input", dir, "--whole-io", "--of", "xml", "-"], {
        ...process.env,
        HWLOC_THISSYSTEM: "0",
      });
    ours();
    hwloc(); // warm the page cache and any compile cache
    const a: number[] = [];
    const b: number[] = [];
    for (let i = 0; i < 9; i++) {
      a.push(ours());
      b.push(hwloc());
    }
    const us = median(a);
    const them = median(b);
    return {
      name: "load-capture-vs-hwloc",
      value: us,
      unit: "ms",
      baseline: them,
      ratio: them / us,
      note: `${t.functions} functions, median of 9 runs each`,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
