/**
 * bar-96GiB-touch-1GiB-rss: a peer below the same switch writes 1 GiB into a 96 GiB BAR — 512
 * writes of 2 MiB spread 192 MiB apart — and the process's resident set grows by about what was
 * touched, not by the BAR's size. value = RSS growth in MiB, baseline = the 1024 MiB touched,
 * ratio = 1024 / growth (1: no overhead).
 */
import { physAddr } from "../src/core/hw/address.ts";
import { System } from "../src/core/kernel/system.ts";
import { topo } from "../test/support/topology.ts";
import { gc } from "./isolate.ts";
import type { BenchResult } from "./run.ts";

const MiB = 1 << 20;
const GiB = 1n << 30n;
const BAR = 0x40_0000_0000n;
const SIZE = 96n * GiB;

export function benchBarRss(): BenchResult {
  const sys = new System(
    topo()
      .hostFn("00:00.0", "8086:2020")
      .rootPort("00:01.0")
      .usp("01:00.0", { parent: "00:01.0" })
      .dsp("02:00.0", { parent: "01:00.0", acs: 0 })
      .dsp("02:01.0", { parent: "01:00.0", acs: 0 })
      .ep("03:00.0", { parent: "02:00.0", bars: [{ index: 0, start: BAR, size: SIZE }] })
      .ep("04:00.0", { parent: "02:01.0" })
      .build(),
  );
  const peer = sys.machine.byBdf("04:00.0")!;
  const data = new Uint8Array(2 * MiB);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 1) & 0xff;
  const writes = 512;
  const stride = SIZE / BigInt(writes);
  gc();
  const before = process.memoryUsage().rss;
  const t0 = performance.now();
  for (let k = 0; k < writes; k++) {
    const r = sys.fabric.dmaWrite(peer, BAR + BigInt(k) * stride, data);
    if (!r.ok || r.route.kind !== "peer")
      throw new Error(`bar-96GiB-touch-1GiB-rss: write ${k} did not go peer-to-peer`);
  }
  const ms = performance.now() - t0;
  gc();
  const growth = (process.memoryUsage().rss - before) / MiB;
  if (sys.memory.backedBytes !== 1024 * MiB)
    throw new Error(`bar-96GiB-touch-1GiB-rss: ${sys.memory.backedBytes} bytes backed`);
  const last = sys.memory.read(physAddr(BAR + BigInt(writes - 1) * stride), data.length);
  if (!last.every((x, i) => x === data[i]))
    throw new Error("bar-96GiB-touch-1GiB-rss: the last write did not land");
  if (sys.memory.read(physAddr(BAR + stride / 2n), 4096).some((x) => x !== 0))
    throw new Error("bar-96GiB-touch-1GiB-rss: untouched BAR memory is not zero");
  return {
    name: "bar-96GiB-touch-1GiB-rss",
    value: growth,
    unit: "MiB",
    baseline: 1024,
    ratio: 1024 / growth,
    note: `${writes} peer writes of 2 MiB in ${ms.toFixed(0)} ms; ${sys.memory.backedBytes / MiB} MiB backed of a ${SIZE / GiB} GiB BAR`,
  };
}
