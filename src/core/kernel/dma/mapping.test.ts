import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AMD_ZEN, topo } from "../../../../test/support/topology.ts";
import { physAddr } from "../../hw/address.ts";
import {
  sg_alloc_table_from_pages,
  sg_dma_is_bus_address,
  sgtableDmaSegments,
} from "../lib/scatterlist.ts";
import { cpuReach } from "../mm/page.ts";
import { System } from "../system.ts";
import { DmaDebugError } from "./debug.ts";
import { dmaSetMaskAndCoherent } from "./device.ts";
import { DMA_MAPPING_ERROR } from "./mapping.ts";

const GiB = 1n << 30n;
const MiB = 1n << 20n;
const BAR_A = 0x38_0000_0000n;
const BAR_B = 0x38_4000_0000n;

/** Two endpoints below one switch (A 03:00.0 provider, B 04:00.0 client), one under another root port. */
function desc(dspAcs: number, cpu = "intel") {
  const t = topo()
    .hostFn("00:00.0", "8086:1234")
    .rootPort("00:01.0")
    .usp("01:00.0", { parent: "00:01.0" })
    .dsp("02:00.0", { parent: "01:00.0", acs: dspAcs })
    .dsp("02:01.0", { parent: "01:00.0", acs: dspAcs })
    .ep("03:00.0", { parent: "02:00.0", bars: [{ index: 2, start: BAR_A, size: GiB }] })
    .ep("04:00.0", { parent: "02:01.0", bars: [{ index: 0, start: BAR_B, size: 32n * MiB }] })
    .rootPort("00:02.0")
    .ep("05:00.0", { parent: "00:02.0" });
  if (cpu === "amd") t.cpu(AMD_ZEN);
  return t;
}

const bytes = (n: number, seed = 5) =>
  Uint8Array.from({ length: n }, (_, i) => (i * 13 + seed) & 0xff);

function p2pTable(sys: System, provider: string, size: bigint) {
  const fn = sys.machine.byBdf(provider)!;
  assert.ok(sys.p2pmem.addResource(fn, 2, 2n * MiB, 0n).ok);
  const va = sys.p2pmem.alloc(fn, size)!;
  const pages = [];
  for (let off = 0n; off < size; off += 4096n)
    pages.push(sys.p2pmem.pageOf((va + off) as typeof va)!);
  const t = sg_alloc_table_from_pages(pages, 0, Number(size));
  assert.ok(t.ok);
  return { table: t.value, phys: BAR_A };
}

describe("DMA API with a real data plane", () => {
  it("a NIC DMAs into a RAM buffer mapped through the IOMMU; the bytes arrive; the IOVA is the kernel's first", () => {
    const sys = new System(desc(0).iommu("dma").build());
    const nic = sys.device("04:00.0");
    dmaSetMaskAndCoherent(nic, 64);
    const [page] = sys.allocPages(4096n);
    const phys = System.phys(page!);
    const dma = sys.dma.mapPhys(nic, physAddr(phys + 0x10n), 256n, "from-device");
    assert.equal(dma, 0xffff_f010n, "top-down from 4 GiB, page offset kept (spec §5.5 step 1)");
    const data = bytes(256);
    assert.ok(sys.fabric.dmaWrite(nic.fn, dma, data).ok);
    assert.deepEqual(sys.memory.read(physAddr(phys + 0x10n), 256), data);
    sys.dma.unmapPhys(nic, dma, 256n, "from-device");
    assert.equal(sys.fabric.dmaWrite(nic.fn, dma, data).ok, false, "after unmap the IOVA faults");
  });

  it("dma_map_sgtable on P2P pages below one switch gives bus addresses, and the peer's DMA lands in the BAR", () => {
    const sys = new System(desc(0).iommu("dma").build());
    const { table } = p2pTable(sys, "03:00.0", 8192n);
    const client = sys.device("04:00.0");
    const r = sys.dma.mapSgtable(client, table, "bidirectional");
    assert.ok(r.ok);
    const segs = sgtableDmaSegments(table);
    assert.equal(segs.length, 1);
    assert.equal(segs[0]!.dma_address, BAR_A, "bus address = CPU address + 0 offset");
    assert.ok(sg_dma_is_bus_address(table.sgl!));
    const data = bytes(8192, 9);
    const w = sys.fabric.dmaWrite(client.fn, segs[0]!.dma_address, data);
    assert.ok(w.ok);
    assert.equal(w.ok && w.route.kind, "peer");
    assert.deepEqual(sys.memory.read(physAddr(BAR_A), 8192), data);
  });

  it("with ACS redirect and a host bridge the kernel does not allowlist, mapping fails with -EREMOTEIO", () => {
    const sys = new System(desc(0x1d).iommu("dma").build());
    const { table } = p2pTable(sys, "03:00.0", 4096n);
    const r = sys.dma.mapSgtable(sys.device("04:00.0"), table, "bidirectional");
    assert.deepEqual(r.ok ? "ok" : r.errno, "EREMOTEIO");
    assert.ok(
      sys.p2pdma.log.some((l) => l.includes("ACS redirect is set")),
      "the kernel logged why",
    );
  });

  it("on AMD Zen the same pair maps through the host bridge: an IOVA, and the DMA goes via the root complex", () => {
    const sys = new System(desc(0x1d, "amd").iommu("dma").build());
    const { table } = p2pTable(sys, "03:00.0", 4096n);
    const client = sys.device("04:00.0");
    const r = sys.dma.mapSgtable(client, table, "bidirectional");
    assert.ok(r.ok);
    const seg = sgtableDmaSegments(table)[0]!;
    assert.equal(sg_dma_is_bus_address(table.sgl!), false);
    assert.equal(seg.dma_address, 0xffff_f000n, "mapped like RAM: an IOVA");
    const w = sys.fabric.dmaWrite(client.fn, seg.dma_address, bytes(4096, 1));
    assert.ok(w.ok);
    assert.equal(w.ok && w.route.kind, "root-complex");
    assert.deepEqual(sys.memory.read(physAddr(BAR_A), 4096), bytes(4096, 1));
  });

  it("dma_map_resource programs the IOMMU and never asks P2PDMA (the thread's point)", () => {
    const sys = new System(desc(0x1d).iommu("dma").build());
    const client = sys.device("04:00.0");
    // a pair the P2P code refuses still gets an address
    const dma = sys.dma.mapResource(client, physAddr(BAR_A + 0x2000n), 4096n, "bidirectional");
    assert.notEqual(dma, DMA_MAPPING_ERROR);
    assert.equal(dma, 0xffff_f000n);
    // ... but the hardware route then needs the root complex to forward P2P, which it does not here
    const w = sys.fabric.dmaWrite(client.fn, dma, bytes(64));
    assert.equal(w.ok, false);
  });

  it("dma_map_resource without an IOMMU returns the CPU address, or an error past a 32-bit mask", () => {
    const sys = new System(desc(0).build());
    const client = sys.device("04:00.0");
    assert.equal(
      sys.dma.mapResource(client, physAddr(BAR_A), 4096n, "bidirectional"),
      DMA_MAPPING_ERROR,
    );
    assert.ok(sys.log.some((l) => /overflow/.test(l)));
    dmaSetMaskAndCoherent(client, 64);
    assert.equal(sys.dma.mapResource(client, physAddr(BAR_A), 4096n, "bidirectional"), BAR_A);
  });

  it("dma-direct bounces RAM above a 32-bit mask through swiotlb and copies back at unmap", () => {
    const sys = new System(desc(0).build());
    const dev = sys.device("05:00.0");
    const [page] = sys.allocPages(4096n);
    const phys = System.phys(page!);
    assert.ok(phys >= 4n * GiB);
    const dma = sys.dma.mapPhys(dev, phys, 4096n, "from-device");
    assert.ok(dma < 4n * GiB && sys.swiotlb.isBounce(dma));
    assert.ok(sys.fabric.dmaWrite(dev.fn, dma, bytes(4096, 2)).ok);
    assert.notDeepEqual(sys.memory.read(phys, 16), bytes(16, 2), "not yet copied back");
    sys.dma.unmapPhys(dev, dma, 4096n, "from-device");
    assert.deepEqual(sys.memory.read(phys, 4096), bytes(4096, 2));
  });

  it("dma_map_page maps RAM; with dma-debug it refuses a P2P (ZONE_DEVICE) page, which only sg mapping classifies", () => {
    const plain = new System(desc(0).iommu("dma").build());
    const [ram] = plain.allocPages(4096n);
    assert.equal(
      plain.dma.mapPage(plain.device("05:00.0"), ram!, 0x80, 64n, "to-device"),
      0xffff_f080n,
    );
    assert.equal(cpuReach(ram!), "direct-map");
    const sys = new System(desc(0).iommu("dma").build(), { dmaDebug: true });
    const fn = sys.machine.byBdf("03:00.0")!;
    assert.ok(sys.p2pmem.addResource(fn, 2, 2n * MiB, 0n).ok);
    const p2p = sys.p2pmem.pageOf(sys.p2pmem.alloc(fn, 4096n)!)!;
    assert.equal(cpuReach(p2p), "mmio-page");
    assert.equal(cpuReach(null), "no-page");
    assert.equal(
      sys.dma.mapPage(sys.device("04:00.0"), p2p, 0, 4096n, "to-device"),
      DMA_MAPPING_ERROR,
    );
    assert.deepEqual(
      sys.debug!.reports.map((r) => r.code),
      ["map-page-zone-device"],
    );
  });

  it("dma-debug reports a CPU read of device-written memory before dma_sync_single_for_cpu", () => {
    const sys = new System(desc(0).iommu("dma").build(), { dmaDebug: true });
    const dev = sys.device("05:00.0");
    const [page] = sys.allocPages(4096n);
    const phys = System.phys(page!);
    const dma = sys.dma.mapPhys(dev, phys, 4096n, "from-device");
    sys.dma.mappingError(dev, dma);
    assert.ok(sys.deviceWrite(dev, dma, bytes(64)).ok);
    sys.cpuRead(phys, 64);
    assert.deepEqual(
      sys.debug!.reports.map((r) => r.code),
      ["cpu-access-without-sync"],
    );
    sys.dma.syncSingleForCpu(dev, dma, 4096n, "from-device");
    assert.deepEqual(sys.cpuRead(phys, 64), bytes(64));
    assert.equal(sys.debug!.reports.length, 1, "after the sync the read is fine");
    sys.dma.unmapPhys(dev, dma, 4096n, "from-device");
    assert.equal(sys.debug!.released(dev), 0);
  });

  it("dma-debug reports unmapping what was not mapped, wrong sizes, double unmaps and leaks", () => {
    const sys = new System(desc(0).iommu("dma").build(), { dmaDebug: true });
    const dev = sys.device("05:00.0");
    const [page] = sys.allocPages(8192n);
    const dma = sys.dma.mapPhys(dev, System.phys(page!), 8192n, "to-device");
    assert.equal(sys.dma.mappingError(dev, dma), false);
    sys.dma.unmapPhys(dev, dma, 4096n, "to-device");
    sys.dma.unmapPhys(dev, dma, 8192n, "to-device");
    const other = sys.dma.mapPhys(dev, System.phys(page!), 4096n, "bidirectional");
    sys.debug!.released(dev);
    assert.deepEqual(
      sys.debug!.reports.map((r) => r.code),
      ["unmap-wrong-size", "double-unmap", "leak-at-release"],
    );
    void other;
    const strict = new System(desc(0).iommu("dma").build(), { dmaDebug: "strict" });
    const d2 = strict.device("05:00.0");
    assert.throws(
      () => strict.dma.unmapPhys(d2, 0x1234_0000n as typeof dma, 4096n, "to-device"),
      DmaDebugError,
    );
  });
});
