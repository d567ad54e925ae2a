/**
 * dmabuf-map-cycle-2MiB: full dma-buf lifecycles per second of a 2 MiB accelerator buffer —
 * HL_MEM_OP_EXPORT_DMABUF_FD → dma_buf_get → dma_buf_dynamic_attach (a NIC, allow_peer2peer) →
 * dma_buf_map_attachment_unlocked → unmap → dma_buf_detach → dma_buf_put + close(fd) — with the
 * NIC behind a strict DMA-domain IOMMU, against the same cycle on the same machine booted with
 * the IOMMU off (baseline). The accelerator and the NIC sit below two root ports of an
 * allowlisted host bridge (8086:09a2), so the attach keeps peer2peer and, with the IOMMU on, the
 * exporter's dma_map_resource() really allocates and maps IOVAs. The allocation (ALLOC + MAP) is
 * made once. Mainline kernel profile (the map happens at map, not cached at attach). Median of
 * 41 short rounds each, interleaved, their order alternated.
 *
 * Checked once, outside the timing: with the IOMMU on every entry is an IOVA (not the BAR
 * address), the IOMMU maps exactly 2 MiB while mapped and nothing after, a NIC write through the
 * table lands in the accelerator's BAR; with it off the entries are the BAR addresses; after the
 * timed rounds nothing is left (`leakReport` of system, dma-buf core, process and driver, once
 * the allocation is unmapped, freed and the device file closed). The note's per-phase split
 * (µs, IOMMU on/off) comes from a separate pass with a clock read between phases.
 */
import type { IommuMode } from "../src/core/hw/machine.ts";
import { type DmaDevice, dmaSetMaskAndCoherent } from "../src/core/kernel/dma/device.ts";
import {
  dmaBufDetach,
  dmaBufDynamicAttach,
  dmaBufMapAttachmentUnlocked,
  dmaBufUnmapAttachmentUnlocked,
} from "../src/core/kernel/dma-buf/attachment.ts";
import { DmaBufCore } from "../src/core/kernel/dma-buf/dma-buf.ts";
import {
  dmaBufGet,
  dmaBufPut,
  O_CLOEXEC,
  O_RDWR,
  Process,
  sysClose,
} from "../src/core/kernel/dma-buf/file.ts";
import {
  AccelDevice,
  HL_MEM_OP_ALLOC,
  HL_MEM_OP_EXPORT_DMABUF_FD,
  HL_MEM_OP_FREE,
  HL_MEM_OP_MAP,
  HL_MEM_OP_UNMAP,
} from "../src/core/kernel/drivers/accel.ts";
import { leakReport } from "../src/core/kernel/leaks.ts";
import { for_each_sgtable_dma_sg, type SgTable } from "../src/core/kernel/lib/scatterlist.ts";
import { PROFILES } from "../src/core/kernel/profile.ts";
import { System } from "../src/core/kernel/system.ts";
import { habanalabs, MLX5, P2P_IMPORTER, rootPortMachine } from "../test/support/beds.ts";
import { type Fail, failer, gc, median } from "./isolate.ts";
import type { BenchResult } from "./run.ts";

const NAME = "dmabuf-map-cycle-2MiB";
const MiB = 1n << 20n;
const SIZE = 2n * MiB;
const BAR = 0x80_0000_0000n;
const BAR_SIZE = 64n * MiB;
const ACCEL = "01:00.0";
const NIC = "02:00.0";
/** Many short rounds, interleaved, so load from elsewhere hits both sides alike. */
const ROUNDS = 41;
/** Cycles on each side before anything is timed. */
const WARMUP = 3000;
/** Target length of one pair of rounds (IOMMU on + off). */
const ROUND_MS = 60;

/** What `cycle`'s `lap` accumulates, in order. */
const PHASES = ["export+get", "attach", "map", "unmap", "detach", "put+close"] as const;

const fail: Fail = failer(NAME);

interface Bed {
  readonly sys: System;
  readonly core: DmaBufCore;
  readonly hl: AccelDevice;
  readonly proc: Process;
  readonly nic: DmaDevice;
  readonly devFd: number;
  readonly handle: bigint;
  readonly va: bigint;
  /**
   * One export → … → close; `check` sees the mapped table; `lap` accumulates the milliseconds of
   * each phase (PHASES). Returns the number of DMA entries.
   */
  cycle(check?: (sgt: SgTable) => void, lap?: Float64Array): number;
}

function bed(iommu: IommuMode): Bed {
  // the accelerator at 01:00.0 (ACCEL) and the NIC at 02:00.0 (NIC), each behind its root port
  const machine = rootPortMachine([habanalabs(BAR, BAR_SIZE), MLX5], {
    hostId: "8086:09a2",
    iommu,
  });
  const sys = new System(machine, { profile: "mainline" });
  const core = new DmaBufCore({ profile: PROFILES.mainline });
  const hl = new AccelDevice(sys, core, ACCEL);
  const proc = new Process("bench");
  const devFd = hl.open(proc);
  if (!devFd.ok) fail("open /dev/accel", devFd);
  const a = hl.memIoctl(proc, { op: HL_MEM_OP_ALLOC, mem_size: SIZE });
  if (!a.ok) fail("HL_MEM_OP_ALLOC", a);
  const m = hl.memIoctl(proc, { op: HL_MEM_OP_MAP, handle: a.value.handle });
  if (!m.ok) fail("HL_MEM_OP_MAP", m);
  const va = m.value.device_virt_addr;
  const nic = sys.device(NIC);
  dmaSetMaskAndCoherent(nic, 64);
  const cycle = (check?: (sgt: SgTable) => void, lap?: Float64Array): number => {
    let last = lap ? performance.now() : 0;
    const tick = (phase: number): void => {
      if (!lap) return;
      const now = performance.now();
      lap[phase]! += now - last;
      last = now;
    };
    const e = hl.memIoctl(proc, {
      op: HL_MEM_OP_EXPORT_DMABUF_FD,
      addr: va,
      mem_size: SIZE,
      offset: 0n,
      flags: O_RDWR | O_CLOEXEC,
    });
    if (!e.ok) fail("HL_MEM_OP_EXPORT_DMABUF_FD", e);
    const d = dmaBufGet(proc, e.value.fd);
    if (!d.ok) fail("dma_buf_get", d);
    tick(0);
    const at = dmaBufDynamicAttach(d.value, nic, P2P_IMPORTER);
    if (!at.ok) fail("dma_buf_dynamic_attach", at);
    tick(1);
    const sgt = dmaBufMapAttachmentUnlocked(at.value, "bidirectional");
    if (!sgt.ok) fail("dma_buf_map_attachment_unlocked", sgt);
    tick(2);
    const n = sgt.value.nents;
    if (check) {
      check(sgt.value);
      last = lap ? performance.now() : 0;
    }
    dmaBufUnmapAttachmentUnlocked(at.value, sgt.value, "bidirectional");
    tick(3);
    dmaBufDetach(d.value, at.value);
    tick(4);
    dmaBufPut(d.value);
    const c = sysClose(proc, e.value.fd);
    if (!c.ok) fail("close(dma-buf fd)", c);
    tick(5);
    return n;
  };
  return {
    sys,
    core,
    hl,
    proc,
    nic,
    devFd: devFd.value,
    handle: a.value.handle,
    va,
    cycle,
  };
}

/** One checked cycle: IOVAs with the IOMMU on, BAR addresses with it off; a NIC write lands. */
function verify(b: Bed, iommu: boolean): { entries: number; iovaPages: bigint } {
  const pack = b.hl.idr.get(b.handle);
  if (!pack) fail("the allocation's handle is gone");
  const barStart = b.hl.barAddress(pack.pages[0]!);
  const table = b.nic.translation.kind === "dma" ? b.nic.translation.table : null;
  const t = b.nic.translation;
  if (iommu !== (t.kind === "dma" && t.strict))
    fail(`the NIC's translation is ${t.kind}${t.kind === "dma" && !t.strict ? " (lazy)" : ""}`);
  let iovaPages = 0n;
  const entries = b.cycle((sgt) => {
    const es = [...for_each_sgtable_dma_sg(sgt)];
    const total = es.reduce((s, e) => s + BigInt(e.dma_length), 0n);
    if (total !== SIZE) fail(`the table covers ${total} bytes`);
    for (const [i, e] of es.entries()) {
      const bar = barStart + BigInt(i) * BigInt(es[0]!.dma_length);
      const inBar = e.dma_address >= BAR && e.dma_address < BAR + BAR_SIZE;
      if (iommu && inBar) fail(`entry ${i} is the BAR address, not an IOVA`);
      if (!iommu && e.dma_address !== bar) fail(`entry ${i} is not the BAR address`);
    }
    if (table) {
      if (table.mappedBytes !== SIZE) fail(`the IOMMU maps ${table.mappedBytes} bytes`);
      const dom = b.nic.translation.kind === "dma" ? b.nic.translation.iova.domain : null;
      if (!dom) fail("no DMA domain");
      iovaPages = dom.liveRanges().reduce((s, r) => s + r.pfnHi - r.pfnLo + 1n, 0n);
      if (iovaPages << dom.iovad.shift !== SIZE)
        fail(`${iovaPages} IOVA pages allocated while mapped`);
    }
    // the NIC writes into the last entry; it must land at the matching BAR byte
    const last = es.at(-1)!;
    const data = Uint8Array.from({ length: 64 }, (_, i) => (i * 37 + 5) & 0xff);
    const w = b.sys.deviceWrite(b.nic, last.dma_address + 128n, data);
    if (!w.ok) fail(`NIC write faulted: ${w.fault.reason}`);
    const got = b.sys.memory.read(
      b.hl.barAddress(pack.pages[0]! + SIZE - BigInt(last.dma_length) + 128n),
      data.length,
    );
    if (!got.every((x, i) => x === data[i])) fail("the NIC's write did not land in the BAR");
  });
  if (table && table.mappedBytes !== 0n) fail("unmap left IOMMU mappings");
  return { entries, iovaPages };
}

/** Unmaps and frees the allocation, closes the device file: then nothing may be left. */
function teardown(b: Bed): void {
  const pre = leakReport([b.sys, b.core, b.hl]);
  if (pre.length > 0) fail(`left after the cycles: ${pre.map((l) => l.detail).join("; ")}`);
  if (b.proc.fds.size !== 1) fail(`${b.proc.fds.size} fds open, expected the device's`);
  const u = b.hl.memIoctl(b.proc, { op: HL_MEM_OP_UNMAP, device_virt_addr: b.va });
  if (!u.ok) fail("HL_MEM_OP_UNMAP", u);
  const f = b.hl.memIoctl(b.proc, { op: HL_MEM_OP_FREE, handle: b.handle });
  if (!f.ok) fail("HL_MEM_OP_FREE", f);
  const c = sysClose(b.proc, b.devFd);
  if (!c.ok) fail("close(/dev/accel)", c);
  const leaks = leakReport([b.sys, b.core, b.proc, b.hl]);
  if (leaks.length > 0) fail(`leaks: ${leaks.map((l) => l.detail).join("; ")}`);
}

export function benchDmabufCycle(): BenchResult {
  const on = bed("dma");
  const off = bed("off");
  const vOn = verify(on, true);
  const vOff = verify(off, false);
  // warm up (JIT tiers), then size a pair of rounds to about ROUND_MS
  for (let i = 0; i < WARMUP; i++) {
    on.cycle();
    off.cycle();
  }
  const t0 = performance.now();
  let pairs = 0;
  while (performance.now() - t0 < 300) {
    on.cycle();
    off.cycle();
    pairs++;
  }
  const perRound = Math.max(50, Math.round((pairs * ROUND_MS) / (performance.now() - t0)));
  const round = (b: Bed): number => {
    const s = performance.now();
    for (let i = 0; i < perRound; i++) b.cycle();
    return perRound / ((performance.now() - s) / 1000);
  };
  const a: number[] = [];
  const z: number[] = [];
  // no forced GC between rounds: its background sweeping would land in the next short round;
  // the cycles' own garbage is collected (and paid for) as they run
  gc();
  for (let i = 0; i < ROUNDS; i++) {
    if (i % 2 === 0) {
      a.push(round(on));
      z.push(round(off));
    } else {
      z.push(round(off));
      a.push(round(on));
    }
  }
  // where the time goes: the same cycles with a clock read between phases (not the timed rounds)
  const lapOn = new Float64Array(PHASES.length);
  const lapOff = new Float64Array(PHASES.length);
  const lapCycles = 4 * perRound;
  for (let i = 0; i < lapCycles; i++) {
    on.cycle(undefined, lapOn);
    off.cycle(undefined, lapOff);
  }
  const us1 = (ms: number): string => ((ms * 1000) / lapCycles).toFixed(1);
  const split = PHASES.map((p, i) => `${p} ${us1(lapOn[i]!)}/${us1(lapOff[i]!)}`).join(", ");
  teardown(on);
  teardown(off);
  const us = median(a);
  const them = median(z);
  return {
    name: NAME,
    value: us,
    unit: "cycles/s",
    baseline: them,
    ratio: us / them,
    note:
      `${vOn.entries} DMA entries of ${Number(SIZE) / vOn.entries / 1024} KiB per map ` +
      `(importer max segment ${on.nic.maxSegSize / 1024} KiB), ${vOn.iovaPages} IOVA pages ` +
      "mapped per cycle with the IOMMU " +
      `on, ${vOff.entries} bus addresses with it off; ${perRound} cycles per round, ` +
      `${ROUNDS} rounds; µs per phase on/off: ${split}; ` +
      "verified IOVAs, a NIC write landing in the BAR, no leaks",
  };
}
