import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { topo } from "../../../test/support/topology.ts";
import type { PhysAddr } from "./address.ts";
import { Fabric } from "./fabric.ts";
import { IommuPageTable } from "./iommu.ts";
import { buildMachine, type Machine } from "./machine.ts";
import { PhysicalMemory } from "./memory.ts";

const GiB = 1n << 30n;
const BAR_A = 0x38_0000_0000n;
const BAR_B = 0x38_4000_0000n;

/** RP 00:01.0 → switch 01:00.0 → DSPs 02:00.0 / 02:01.0 → endpoints A 03:00.0 and B 04:00.0. */
function machine(dspAcs: number) {
  const m = buildMachine(
    topo()
      .hostFn("00:00.0", "8086:2020")
      .rootPort("00:01.0")
      .usp("01:00.0", { parent: "00:01.0" })
      .dsp("02:00.0", { parent: "01:00.0", acs: dspAcs })
      .dsp("02:01.0", { parent: "01:00.0", acs: dspAcs })
      .ep("03:00.0", { parent: "02:00.0", bars: [{ index: 2, start: BAR_A, size: GiB }] })
      .ep("04:00.0", { parent: "02:01.0", bars: [{ index: 2, start: BAR_B, size: GiB }] })
      .build(),
  );
  return m;
}

function hardware(m: Machine, rcP2p = true) {
  const mem = new PhysicalMemory();
  mem.addRegion({
    kind: "ram",
    start: 0n as PhysAddr,
    end: (2n * GiB) as PhysAddr,
    name: "System RAM",
  });
  for (const f of m.functions)
    for (const b of f.desc.bars ?? [])
      mem.addRegion({
        kind: "bar",
        start: b.start as PhysAddr,
        end: (b.start + b.size) as PhysAddr,
        name: `${f.name} BAR${b.index}`,
        owner: f,
        bar: b.index,
      });
  const fabric = new Fabric(m, mem, {
    acsCtrl: (f) => (f.desc.acs === null ? null : f.desc.acs?.ctrl),
    rootComplexP2p: () => rcP2p,
    busOffset: () => 0n,
  });
  return { mem, fabric };
}

const bytes = (n: number, seed = 7) =>
  Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

describe("fabric: DMA that really moves bytes", () => {
  it("a NIC-like device writes RAM through its IOMMU domain and the bytes arrive", () => {
    const m = machine(0);
    const { mem, fabric } = hardware(m);
    const nic = m.byBdf("04:00.0")!;
    const dom = new IommuPageTable("dma");
    dom.map(0xfff0_0000n, 0x10_0000n, 0x2000n, { read: true, write: true, mmio: false });
    fabric.attach(nic, dom);
    const data = bytes(6000);
    const r = fabric.dmaWrite(nic, 0xfff0_0100n, data);
    assert.ok(r.ok);
    assert.deepEqual(mem.read(0x10_0100n as PhysAddr, data.length), data);
    assert.equal(r.route.kind, "root-complex");
  });

  it("a DMA to an unmapped IOVA faults, is logged with requester and reason, and changes nothing", () => {
    const m = machine(0);
    const { mem, fabric } = hardware(m);
    const nic = m.byBdf("04:00.0")!;
    const dom = new IommuPageTable("dma");
    dom.map(0xfff0_0000n, 0x10_0000n, 0x1000n, { read: true, write: true, mmio: false });
    fabric.attach(nic, dom);
    // the second page is unmapped: the whole transfer must fail before any byte moves
    const r = fabric.dmaWrite(nic, 0xfff0_0800n, bytes(4096));
    assert.equal(r.ok, false);
    assert.equal(fabric.faults.length, 1);
    assert.equal(fabric.faults[0]!.requester, "0000:04:00.0");
    assert.match(fabric.faults[0]!.reason, /not-present/);
    assert.deepEqual(mem.read(0x10_0800n as PhysAddr, 2048), new Uint8Array(2048));
    const ro = new IommuPageTable("dma");
    ro.map(0xfff0_0000n, 0x10_0000n, 0x1000n, { read: true, write: false, mmio: false });
    fabric.attach(nic, ro);
    assert.equal(fabric.dmaWrite(nic, 0xfff0_0000n, bytes(16)).ok, false);
    assert.match(fabric.faults[1]!.reason, /no-write/);
  });

  it("a peer below the same switch writes straight into the other's BAR by bus address", () => {
    const m = machine(0);
    const { mem, fabric } = hardware(m);
    const b = m.byBdf("04:00.0")!;
    fabric.attach(b, new IommuPageTable("dma")); // an IOMMU does not see switch-local P2P
    const data = bytes(1 << 20, 3);
    const r = fabric.dmaWrite(b, BAR_A + 0x1000n, data);
    assert.ok(r.ok);
    assert.equal(r.route.kind, "peer");
    if (r.route.kind === "peer") assert.equal(r.route.via.name, "0000:01:00.0");
    assert.deepEqual(mem.read((BAR_A + 0x1000n) as PhysAddr, data.length), data);
    // the root port's link carried nothing; both endpoint links did
    assert.equal(fabric.traffic.get("0000:01:00.0"), undefined);
    assert.equal(fabric.traffic.get("0000:04:00.0")?.up, BigInt(data.length));
    assert.equal(fabric.traffic.get("0000:03:00.0")?.down, BigInt(data.length));
    assert.ok(mem.backedBytes < 8 * 1024 * 1024, "only touched chunks are backed");
  });

  it("with ACS redirect the same request goes up to the root complex and its IOMMU", () => {
    const m = machine(0x1d);
    const { mem, fabric } = hardware(m);
    const b = m.byBdf("04:00.0")!;
    assert.equal(fabric.route(b, BAR_A, true).kind, "root-complex");
    // without an IOMMU the root complex forwards it to the BAR (if it does peer-to-peer at all)
    const data = bytes(4096, 9);
    const r = fabric.dmaWrite(b, BAR_A, data);
    assert.ok(r.ok);
    assert.deepEqual(mem.read(BAR_A as PhysAddr, 4096), data);
    assert.equal(
      fabric.traffic.get("0000:01:00.0")?.up,
      4096n,
      "the upstream port's link carried it",
    );
    // with an IOMMU the bus address is an unmapped IOVA: fault
    fabric.attach(b, new IommuPageTable("dma"));
    assert.equal(fabric.dmaWrite(b, BAR_A, data).ok, false);
    // with an IOVA mapped onto the peer's BAR it works again, through the root complex
    const dom = new IommuPageTable("dma");
    dom.map(0xffff_0000n, BAR_A, 0x1000n, { read: true, write: true, mmio: true });
    fabric.attach(b, dom);
    assert.ok(fabric.dmaWrite(b, 0xffff_0000n, data).ok);
  });

  it("a root complex that does not forward peer-to-peer refuses it", () => {
    const m = machine(0x1d);
    const { fabric } = hardware(m, false);
    const r = fabric.dmaWrite(m.byBdf("04:00.0")!, BAR_A, bytes(64));
    assert.equal(r.ok, false);
    if (!r.ok) assert.match(r.fault.reason, /does not forward peer-to-peer/);
  });

  it("reads return the bytes at the target", () => {
    const m = machine(0);
    const { mem, fabric } = hardware(m);
    mem.write((BAR_B + 8n) as PhysAddr, bytes(32, 1));
    const r = fabric.dmaRead(m.byBdf("03:00.0")!, BAR_B + 8n, 32);
    assert.ok(r.ok);
    if (r.ok) assert.deepEqual(r.data, bytes(32, 1));
  });
});
