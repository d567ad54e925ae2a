/** Child side of `isolated()`: runs the benchmark named on the command line, prints its JSON. */
import { benchBarRss } from "./bar-rss.ts";
import { benchDma1GiB } from "./dma.ts";
import { benchDmabufCycle } from "./dmabuf-cycle.ts";
import { benchIova } from "./iova.ts";
import { benchRdmaWrite } from "./rdma.ts";
import type { BenchResult } from "./run.ts";

const table: Record<string, () => BenchResult> = {
  "dma-1GiB-scattered-vs-copy": () => benchDma1GiB("scattered"),
  "dma-1GiB-contiguous-vs-copy": () => benchDma1GiB("contiguous"),
  "iova-alloc-free-vs-no-cache": benchIova,
  "bar-96GiB-touch-1GiB-rss": benchBarRss,
  "dmabuf-map-cycle-2MiB": benchDmabufCycle,
  "rdma-write-1GiB-vs-copy": benchRdmaWrite,
};
const name = process.argv[2] ?? "";
const fn = table[name];
if (!fn) throw new Error(`unknown isolated benchmark ${name}`);
process.stdout.write(`${JSON.stringify(fn())}\n`);
