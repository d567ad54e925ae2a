import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { topo } from "../../../../test/support/topology.ts";
import { dmaSetMaskAndCoherent } from "../dma/device.ts";
import {
  type DmaBufAttachment,
  dmaBufAttach,
  dmaBufDynamicAttach,
  dmaBufMapAttachmentUnlocked,
  dmaBufUnmapAttachmentUnlocked,
} from "../dma-buf/attachment.ts";
import { type DmaBuf, DmaBufCore } from "../dma-buf/dma-buf.ts";
import { dmaBufGet, dmaBufPut, O_CLOEXEC, O_RDWR, Process, sysClose } from "../dma-buf/file.ts";
import { for_each_sgtable_dma_sg, type SgTable, sg_page } from "../lib/scatterlist.ts";
import { PROFILES } from "../profile.ts";
import { System } from "../system.ts";
import {
  AccelDevice,
  type AccelOptions,
  HL_MEM_OP_ALLOC,
  HL_MEM_OP_EXPORT_DMABUF_FD,
  HL_MEM_OP_MAP,
  HL_MEM_OP_UNMAP,
} from "./accel.ts";

const MiB = 1n << 20n;
const BAR_START = 0x80_0000_0000n;
const BAR_SIZE = 16n * MiB;

/**
 * Flagship-like: a PCIe switch below root port 00:01.0 with the accelerator (03:00.0) and an
 * RDMA NIC (04:00.0) on two downstream ports; a second NIC (05:00.0) behind another root port.
 * The host bridge 8086:1234 is not on the P2PDMA allowlist.
 */
function machine(iommu: "dma" | "off", acs: number | null = null, hostId = "8086:1234") {
  return topo()
    .hostFn("00:00.0", hostId)
    .rootPort("00:01.0")
    .usp("01:00.0", { parent: "00:01.0" })
    .dsp("02:00.0", { parent: "01:00.0", acs })
    .dsp("02:01.0", { parent: "01:00.0", acs })
    .ep("03:00.0", {
      parent: "02:00.0",
      id: "1da3:1020",
      driver: "habanalabs",
      bars: [
        { index: 0, start: 0x90_0000_0000n, size: MiB },
        { index: 2, start: BAR_START, size: BAR_SIZE },
      ],
    })
    .ep("04:00.0", { parent: "02:01.0", id: "15b3:101d", driver: "mlx5_core" })
    .rootPort("00:02.0")
    .ep("05:00.0", { parent: "00:02.0", id: "15b3:101d", driver: "mlx5_core" })
    .iommu(iommu)
    .build();
}

function bed(
  o: {
    iommu?: "dma" | "off";
    acs?: number | null;
    hostId?: string;
    accel?: AccelOptions;
    profile?: "6.1" | "mainline";
  } = {},
) {
  const sys = new System(machine(o.iommu ?? "off", o.acs ?? null, o.hostId));
  const core = new DmaBufCore({ profile: PROFILES[o.profile ?? "mainline"] });
  const hl = new AccelDevice(sys, core, "03:00.0", o.accel ?? {});
  const proc = new Process("hl-test");
  return { sys, core, hl, proc };
}

type Bed = ReturnType<typeof bed>;

function allocMap(b: Bed, size: bigint): { handle: bigint; va: bigint } {
  const a = b.hl.memIoctl(b.proc, { op: HL_MEM_OP_ALLOC, mem_size: size });
  assert.ok(a.ok, "expected ok");
  const m = b.hl.memIoctl(b.proc, { op: HL_MEM_OP_MAP, handle: a.value.handle });
  assert.ok(m.ok, "expected ok");
  return { handle: a.value.handle, va: m.value.device_virt_addr };
}

function exportFd(b: Bed, addr: bigint, size: bigint, offset = 0n, flags = O_RDWR | O_CLOEXEC) {
  return b.hl.memIoctl(b.proc, {
    op: HL_MEM_OP_EXPORT_DMABUF_FD,
    addr,
    mem_size: size,
    offset,
    flags,
  });
}

/** The failure, for assertion messages (only built when the result is an error). */
function why(r: { ok: boolean }): string {
  return r.ok
    ? ""
    : JSON.stringify(r, (_k, v) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v));
}

function errnoOf(r: { ok: boolean; errno?: string }): string | undefined {
  return r.ok ? undefined : r.errno;
}

const P2P_IMPORTER = { allow_peer2peer: true, move_notify: () => {} };

function importer(b: Bed, bdf: string, maxSeg = 65536) {
  const dev = b.sys.device(bdf);
  dmaSetMaskAndCoherent(dev, 64);
  dev.maxSegSize = maxSeg;
  return dev;
}

function exported(b: Bed, size = 256n * 1024n, offset = 0n, mapSize = 512n * 1024n): DmaBuf {
  const { va } = allocMap(b, mapSize);
  const r = exportFd(b, va, size, offset);
  assert.ok(r.ok, why(r));
  const d = dmaBufGet(b.proc, r.value.fd);
  assert.ok(d.ok, "expected ok");
  dmaBufPut(d.value); // the fd keeps it
  return d.value;
}

function entries(sgt: SgTable) {
  return [...for_each_sgtable_dma_sg(sgt)];
}

describe("accel: HL_MEM_OP_EXPORT_DMABUF_FD validation (export_dmabuf_from_addr)", () => {
  it("a mapped allocation exports: an fd in the caller, O_CLOEXEC on the fd, refs taken", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    const r = exportFd(b, va, 64n * 1024n, 64n * 1024n);
    assert.ok(r.ok, "expected ok");
    const e = b.proc.fds.get(r.value.fd);
    assert.ok(e, "expected ok");
    assert.equal(e.cloexec, true);
    assert.equal(e.file.private_data?.size, 64n * 1024n);
    assert.equal(b.hl.mem_hash.get(va)?.export_cnt, 1);
    assert.equal(b.hl.dmabuf_export_cnt, 1);
    assert.equal(b.hl.ctx_refs, 2);
  });

  it("address not page aligned → EINVAL", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    assert.equal(errnoOf(exportFd(b, va + 0x800n, 4096n)), "EINVAL");
  });

  it("address inside a mapping but not its start → EINVAL (the VA hash must hit exactly)", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    assert.equal(errnoOf(exportFd(b, va + 0x1000n, 4096n)), "EINVAL");
    assert.equal(errnoOf(exportFd(b, 0x1234_0000n, 4096n)), "EINVAL");
  });

  it("size 0 or not a PAGE_SIZE multiple → EINVAL", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    assert.equal(errnoOf(exportFd(b, va, 0n)), "EINVAL");
    assert.equal(errnoOf(exportFd(b, va, 4097n)), "EINVAL");
    assert.equal(errnoOf(exportFd(b, va, 2048n)), "EINVAL");
    assert.ok(exportFd(b, va, 8192n).ok, "expected ok");
  });

  it("offset not a PAGE_SIZE multiple → EINVAL", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    assert.equal(errnoOf(exportFd(b, va, 4096n, 512n)), "EINVAL");
    assert.ok(exportFd(b, va, 4096n, 4096n).ok, "expected ok");
  });

  it("offset + size beyond the allocation → EINVAL; exactly to its end is fine", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    assert.equal(errnoOf(exportFd(b, va, 128n * 1024n, 4096n)), "EINVAL");
    assert.equal(errnoOf(exportFd(b, va, 132n * 1024n)), "EINVAL");
    assert.ok(exportFd(b, va, 124n * 1024n, 4096n).ok, "expected ok");
  });

  it("a host-memory (userptr) mapping: its handle has upper bits set → EINVAL", () => {
    const b = bed();
    const va = b.hl.mapUserptr(64n * 1024n);
    assert.equal(errnoOf(exportFd(b, va, 4096n)), "EINVAL");
  });

  it("pages outside the DRAM BAR window → EINVAL", () => {
    const b = bed({ accel: { dramSize: 2n * BAR_SIZE } });
    const inside = allocMap(b, BAR_SIZE);
    const outside = allocMap(b, 64n * 1024n);
    assert.equal(errnoOf(exportFd(b, outside.va, 4096n)), "EINVAL");
    assert.ok(exportFd(b, inside.va, 4096n).ok, "expected ok");
  });

  it("device not operational → EBUSY", () => {
    const b = bed();
    const { va } = allocMap(b, 64n * 1024n);
    b.hl.operational = false;
    assert.equal(errnoOf(exportFd(b, va, 4096n)), "EBUSY");
  });

  it("a failed export leaves export_cnt as it was (memhash_node_export_put)", () => {
    const b = bed();
    const { va } = allocMap(b, 64n * 1024n);
    assert.equal(errnoOf(exportFd(b, va, 4096n, 512n)), "EINVAL");
    assert.equal(b.hl.mem_hash.get(va)?.export_cnt, 0);
    assert.ok(
      b.hl.memIoctl(b.proc, { op: HL_MEM_OP_UNMAP, device_virt_addr: va }).ok,
      "expected ok",
    );
  });

  it("exported memory cannot be unmapped (EINVAL) until the dma-buf is released", () => {
    const b = bed();
    const { va } = allocMap(b, 64n * 1024n);
    const r = exportFd(b, va, 4096n);
    assert.ok(r.ok, "expected ok");
    const unmap = () => b.hl.memIoctl(b.proc, { op: HL_MEM_OP_UNMAP, device_virt_addr: va });
    assert.equal(errnoOf(unmap()), "EINVAL");
    assert.ok(sysClose(b.proc, r.value.fd).ok, "expected ok"); // last reference: hl_release_dmabuf
    assert.equal(b.hl.dmabuf_export_cnt, 0);
    assert.equal(b.hl.ctx_refs, 1);
    assert.ok(unmap().ok, "expected ok");
  });
});

describe("accel: attach / map / unmap (hl_dmabuf_attach, hl_map_dmabuf, hl_unmap_dmabuf)", () => {
  it("an RDMA NIC below the same switch, no IOMMU: bus = CPU physical BAR address; writes land at the offset", () => {
    const b = bed();
    const d = exported(b, 256n * 1024n, 64n * 1024n);
    const nic = importer(b, "04:00.0");
    const a = dmaBufDynamicAttach(d, nic, P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    assert.equal(a.value.peer2peer, true);
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    const es = entries(m.value);
    assert.equal(m.value.orig_nents, 0);
    // the allocation is contiguous: the exported 256 KiB start 64 KiB into it, 64 KiB entries
    assert.equal(es.length, 4);
    const pack = b.hl.idr.get(1n)!;
    const first = BAR_START + pack.pages[0]! + 64n * 1024n;
    assert.equal(es[0]!.dma_address, first);
    assert.equal(
      es.reduce((s, e) => s + e.dma_length, 0),
      256 * 1024,
    );
    for (const e of es) assert.equal(sg_page(e), null);
    const data = new TextEncoder().encode("peer write");
    const w = b.sys.deviceWrite(nic, es[1]!.dma_address + 16n, data);
    assert.ok(w.ok, why(w));
    const at = first + 64n * 1024n + 16n;
    assert.deepEqual(b.sys.memory.read(at as never, data.length), data);
    assert.equal(b.hl.outstanding.size, 1);
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
    assert.equal(b.hl.outstanding.size, 0);
  });

  it("with an IOMMU (DMA domain) the NIC gets an IOVA, and its write (via the allowlisted root complex) lands in the BAR", () => {
    // the IOVA matches no BAR, so the switch sends it up: the root complex must forward P2P
    const b = bed({ iommu: "dma", hostId: "8086:2020" });
    const d = exported(b, 64n * 1024n);
    const nic = importer(b, "04:00.0");
    const a = dmaBufDynamicAttach(d, nic, P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    const [e] = entries(m.value);
    const phys = BAR_START + b.hl.idr.get(1n)!.pages[0]!;
    assert.notEqual(e!.dma_address, phys);
    const data = new Uint8Array([1, 2, 3, 4]);
    const w = b.sys.deviceWrite(nic, e!.dma_address + 4096n, data);
    assert.ok(w.ok, why(w));
    assert.deepEqual(b.sys.memory.read((phys + 4096n) as never, 4), data);
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
  });

  it("chunks by the importer's max segment size and splits at discontiguous DRAM pages", () => {
    const b = bed();
    // fragment DRAM: a, hole, c; then a 128 KiB allocation gets the hole and a page after c
    const h1 = b.hl.allocDeviceMemory(64n * 1024n);
    const h2 = b.hl.allocDeviceMemory(64n * 1024n);
    const h3 = b.hl.allocDeviceMemory(64n * 1024n);
    assert.ok(h1.ok && h2.ok && h3.ok, "expected ok");
    assert.ok(b.hl.freeDeviceMemory(h2.value).ok, "expected ok");
    const d = exported(b, 128n * 1024n, 0n, 128n * 1024n);
    const nic = importer(b, "04:00.0", 32768 + 100); // ALIGN_DOWN → 32 KiB
    const a = dmaBufDynamicAttach(d, nic, P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    const m = dmaBufMapAttachmentUnlocked(a.value, "to-device");
    assert.ok(m.ok, "expected ok");
    const es = entries(m.value);
    assert.equal(es.length, 4);
    for (const e of es) assert.equal(e.dma_length, 32768);
    assert.equal(es[0]!.dma_address, BAR_START + 64n * 1024n);
    assert.equal(es[2]!.dma_address, BAR_START + 192n * 1024n);
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "to-device");
  });

  it("an importer whose max segment is below PAGE_SIZE → EINVAL", () => {
    const b = bed();
    const d = exported(b);
    const a = dmaBufDynamicAttach(d, importer(b, "04:00.0", 2048), P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    assert.equal(errnoOf(dmaBufMapAttachmentUnlocked(a.value, "bidirectional")), "EINVAL");
  });

  it("an importer that cannot reach P2P (other root port, host bridge not allowed): attach clears peer2peer, map → EPERM", () => {
    const b = bed();
    const d = exported(b);
    const a = dmaBufDynamicAttach(d, importer(b, "05:00.0"), P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    assert.equal(a.value.peer2peer, false);
    assert.equal(errnoOf(dmaBufMapAttachmentUnlocked(a.value, "bidirectional")), "EPERM");
  });

  it("6.1 core: a dynamic importer on this static exporter is mapped at attach, so EPERM comes from attach", () => {
    const b = bed({ profile: "6.1" });
    const d = exported(b);
    const a = dmaBufDynamicAttach(d, importer(b, "05:00.0"), P2P_IMPORTER);
    assert.equal(errnoOf(a), "EPERM");
    assert.equal(d.attachments.length, 0);
  });

  it("IOMMU + same switch but the root complex does not forward P2P: the IOVA write faults", () => {
    // dma_map_resource gives an IOVA, which no BAR decodes: the switch sends it to the root complex
    const b = bed({ iommu: "dma" });
    const d = exported(b, 64n * 1024n);
    const nic = importer(b, "04:00.0");
    const a = dmaBufDynamicAttach(d, nic, P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, "expected ok");
    const [e] = entries(m.value);
    const w = b.sys.deviceWrite(nic, e!.dma_address, new Uint8Array([9]));
    assert.equal(w.ok, false);
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
  });

  it("a static importer (no allow_peer2peer) gets EPERM at map", () => {
    const b = bed();
    const d = exported(b);
    const a = dmaBufAttach(d, importer(b, "04:00.0"));
    assert.ok(a.ok, "expected ok");
    assert.equal(errnoOf(dmaBufMapAttachmentUnlocked(a.value, "bidirectional")), "EPERM");
  });
});

describe("accel: dma_map_resource vs P2P pages + dma_map_sgtable", () => {
  // Without the attach distance check (as in the June 2021 v3 patch), the ACS-redirected,
  // host-bridge-refused pair reaches map: the two ways answer differently.
  function attachAcrossHostBridge(mapMode: "map-resource" | "p2p-pages"): {
    b: Bed;
    a: DmaBufAttachment;
  } {
    const b = bed({ iommu: "dma", accel: { mapMode, attachChecksDistance: false } });
    const d = exported(b, 64n * 1024n);
    assert.equal(
      b.sys.p2pdma.calc(b.hl.fn, b.sys.device("05:00.0").fn, false).mapType,
      "not-supported",
    );
    const a = dmaBufDynamicAttach(d, importer(b, "05:00.0"), P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    assert.equal(a.value.peer2peer, true);
    return { b, a: a.value };
  }

  it("dma_map_resource hands out IOVAs although the P2P verdict is not-supported", () => {
    const { b, a } = attachAcrossHostBridge("map-resource");
    const m = dmaBufMapAttachmentUnlocked(a, "bidirectional");
    assert.ok(m.ok, "expected ok");
    const [e] = entries(m.value);
    assert.notEqual(e!.dma_address, BAR_START + b.hl.idr.get(1n)!.pages[0]!);
    assert.equal(sg_page(e!), null);
    dmaBufUnmapAttachmentUnlocked(a, m.value, "bidirectional");
  });

  it("P2P pages + dma_map_sgtable respect the verdict: EREMOTEIO", () => {
    const { a } = attachAcrossHostBridge("p2p-pages");
    assert.equal(errnoOf(dmaBufMapAttachmentUnlocked(a, "bidirectional")), "EREMOTEIO");
  });

  it("P2P pages below the same switch: bus-address entries (no IOMMU programming)", () => {
    const b = bed({ iommu: "dma", accel: { mapMode: "p2p-pages" } });
    const d = exported(b, 64n * 1024n);
    const a = dmaBufDynamicAttach(d, importer(b, "04:00.0"), P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    const [e] = entries(m.value);
    assert.equal(e!.dma_address, BAR_START + b.hl.idr.get(1n)!.pages[0]!);
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
  });
});
