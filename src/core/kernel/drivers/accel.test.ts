import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { amdgpu, habanalabs, P2P_IMPORTER, switchMachine } from "../../../../test/support/beds.ts";
import { errnoOf, j, quietCore, transferText } from "../../../../test/support/check.ts";
import { physAddr } from "../../hw/address.ts";
import type { IommuMode, MachineDescription } from "../../hw/machine.ts";
import { dmaSetMaskAndCoherent } from "../dma/device.ts";
import {
  type DmaBufAttachment,
  dmaBufAttach,
  dmaBufDetach,
  dmaBufDynamicAttach,
  dmaBufMapAttachmentUnlocked,
  dmaBufUnmapAttachmentUnlocked,
} from "../dma-buf/attachment.ts";
import {
  DMA_BUF_IOCTL_SYNC,
  DMA_BUF_SYNC_RW,
  DMA_BUF_SYNC_START,
  type DmaBuf,
  DmaBufCore,
  dmaBufVmapUnlocked,
} from "../dma-buf/dma-buf.ts";
import {
  dmaBufFd,
  dmaBufGet,
  dmaBufPut,
  MAP_SHARED,
  O_CLOEXEC,
  O_RDWR,
  PROT_READ,
  Process,
  sendFd,
  sysClose,
  sysExit,
  sysIoctl,
  sysMmap,
} from "../dma-buf/file.ts";
import { SysmemExporter } from "../dma-buf/sysmem-exporter.ts";
import { type LeakSource, leakReport } from "../leaks.ts";
import { for_each_sgtable_dma_sg, type SgTable, sg_page } from "../lib/scatterlist.ts";
import { PROFILES } from "../profile.ts";
import { System } from "../system.ts";
import { type DmaAddrKind, Tracer } from "../trace.ts";
import {
  AccelDevice,
  type AccelMapMode,
  type AccelOptions,
  DRM_IOCTL_HL_MEMORY,
  HL_MEM_OP_ALLOC,
  HL_MEM_OP_EXPORT_DMABUF_FD,
  HL_MEM_OP_FREE,
  HL_MEM_OP_MAP,
  HL_MEM_OP_UNMAP,
  type HlMemArgs,
  hlMemIoctl,
} from "./accel.ts";
import { AMDGPU_GEM_DOMAIN_VRAM, GpuDevice } from "./gpu.ts";

const MiB = 1n << 20n;
const GiB = 1n << 30n;
const BAR_START = 0x80_0000_0000n;
const BAR_SIZE = 16n * MiB;

interface MachineOpts {
  iommu?: IommuMode;
  /** ACS control word of the two downstream ports (null: no ACS capability). */
  acs?: number | null;
  hostId?: string;
  barSize?: bigint;
  /** Host-bridge window offset: bus = cpu + busOffset. */
  busOffset?: bigint;
}

/**
 * Flagship-like: a PCIe switch below root port 00:01.0 with the accelerator (03:00.0) and an
 * RDMA NIC (04:00.0) on two downstream ports; a second NIC (05:00.0) behind another root port.
 * The host bridge 8086:1234 is not on the P2PDMA allowlist; 8086:2020 is.
 */
function machine(o: MachineOpts = {}): MachineDescription {
  const barSize = o.barSize ?? BAR_SIZE;
  return switchMachine({
    exporter: habanalabs(BAR_START, barSize),
    hostId: o.hostId,
    acs: o.acs,
    iommu: o.iommu,
    window:
      o.busOffset === undefined
        ? undefined
        : { cpuStart: BAR_START, size: barSize, busOffset: o.busOffset },
  });
}

function bed(o: MachineOpts & { accel?: AccelOptions; profile?: "6.1" | "mainline" } = {}) {
  const tracer = new Tracer(true);
  const sys = new System(machine(o), { tracer });
  const core = new DmaBufCore({ profile: PROFILES[o.profile ?? "mainline"] });
  const hl = new AccelDevice(sys, core, "03:00.0", o.accel ?? {});
  const proc = new Process("hl-test");
  return { sys, core, hl, proc, tracer };
}

type Bed = ReturnType<typeof bed>;

function allocMap(b: Bed, size: bigint, proc = b.proc): { handle: bigint; va: bigint } {
  const a = b.hl.memIoctl(proc, { op: HL_MEM_OP_ALLOC, mem_size: size });
  assert.ok(a.ok, `HL_MEM_OP_ALLOC: ${why(a)}`);
  const m = b.hl.memIoctl(proc, { op: HL_MEM_OP_MAP, handle: a.value.handle });
  assert.ok(m.ok, `HL_MEM_OP_MAP: ${why(m)}`);
  return { handle: a.value.handle, va: m.value.device_virt_addr };
}

function exportFd(
  b: Bed,
  addr: bigint,
  size: bigint,
  offset = 0n,
  flags = O_RDWR | O_CLOEXEC,
  proc = b.proc,
) {
  return b.hl.memIoctl(proc, {
    op: HL_MEM_OP_EXPORT_DMABUF_FD,
    addr,
    mem_size: size,
    offset,
    flags,
  });
}

/** The failure, for assertion messages (empty for a success). */
const why = (r: { ok: boolean }): string => (r.ok ? "" : j(r));

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
  return dmabufOf(b.proc, r.value.fd);
}

/** The buffer behind `fd` (no reference kept). */
function dmabufOf(proc: Process, fd: number): DmaBuf {
  const d = dmaBufGet(proc, fd);
  assert.ok(d.ok, `dma_buf_get(${fd}): ${why(d)}`);
  dmaBufPut(d.value); // the fd keeps it
  return d.value;
}

function entries(sgt: SgTable) {
  return [...for_each_sgtable_dma_sg(sgt)];
}

/** The BAR address of the first exported byte of handle `h` at `offset`. */
function barOf(b: Bed, h: bigint, offset = 0n): bigint {
  const p = b.hl.idr.get(h);
  assert.ok(p, `handle ${h} exists`);
  return b.hl.barAddress(p.pages[0]! + offset);
}

describe("accel: HL_MEM_OP_EXPORT_DMABUF_FD validation (export_dmabuf_from_addr)", () => {
  it("a mapped allocation exports: an fd in the caller, O_CLOEXEC on the fd, refs taken", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    const r = exportFd(b, va, 64n * 1024n, 64n * 1024n);
    assert.ok(r.ok, "expected ok");
    const e = b.proc.fds.get(r.value.fd);
    assert.ok(e, "expected ok");
    assert.equal(e.cloexec, true, "e.cloexec: true");
    assert.equal(e.file.private_data?.size, 64n * 1024n, "e.file.private_data?.size: 64n * 1024n");
    assert.equal(b.hl.mem_hash.get(va)?.export_cnt, 1, "b.hl.mem_hash.get(va)?.export_cnt: 1");
    assert.equal(b.hl.dmabuf_export_cnt, 1, "b.hl.dmabuf_export_cnt: 1");
    assert.equal(b.hl.ctx_refs, 2, "b.hl.ctx_refs: 2");
  });

  it("address not page aligned → EINVAL", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    assert.equal(
      errnoOf(exportFd(b, va + 0x800n, 4096n)),
      "EINVAL",
      'exportFd(b, va + 0x800n, 4096n): "EINVAL"',
    );
  });

  it("address inside a mapping but not its start → EINVAL (the VA hash must hit exactly)", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    assert.equal(
      errnoOf(exportFd(b, va + 0x1000n, 4096n)),
      "EINVAL",
      'exportFd(b, va + 0x1000n, 4096n): "EINVAL"',
    );
    assert.equal(
      errnoOf(exportFd(b, 0x1234_0000n, 4096n)),
      "EINVAL",
      'exportFd(b, 0x1234_0000n, 4096n): "EINVAL"',
    );
  });

  it("size 0 or not a PAGE_SIZE multiple → EINVAL", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    assert.equal(errnoOf(exportFd(b, va, 0n)), "EINVAL", 'exportFd(b, va, 0n): "EINVAL"');
    assert.equal(errnoOf(exportFd(b, va, 4097n)), "EINVAL", 'exportFd(b, va, 4097n): "EINVAL"');
    assert.equal(errnoOf(exportFd(b, va, 2048n)), "EINVAL", 'exportFd(b, va, 2048n): "EINVAL"');
    assert.ok(exportFd(b, va, 8192n).ok, "expected ok");
  });

  it("offset not a PAGE_SIZE multiple → EINVAL", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    assert.equal(
      errnoOf(exportFd(b, va, 4096n, 512n)),
      "EINVAL",
      'exportFd(b, va, 4096n, 512n): "EINVAL"',
    );
    assert.ok(exportFd(b, va, 4096n, 4096n).ok, "expected ok");
  });

  it("offset + size beyond the allocation → EINVAL; exactly to its end is fine", () => {
    const b = bed();
    const { va } = allocMap(b, 128n * 1024n);
    assert.equal(
      errnoOf(exportFd(b, va, 128n * 1024n, 4096n)),
      "EINVAL",
      'exportFd(b, va, 128n * 1024n, 4096n): "EINVAL"',
    );
    assert.equal(
      errnoOf(exportFd(b, va, 132n * 1024n)),
      "EINVAL",
      'exportFd(b, va, 132n * 1024n): "EINVAL"',
    );
    assert.ok(exportFd(b, va, 124n * 1024n, 4096n).ok, "expected ok");
  });

  it("a host-memory (userptr) mapping: its handle has upper bits set → EINVAL", () => {
    const b = bed();
    const va = b.hl.mapUserptr(64n * 1024n);
    assert.equal(errnoOf(exportFd(b, va, 4096n)), "EINVAL", 'exportFd(b, va, 4096n): "EINVAL"');
  });

  it("pages outside the DRAM BAR window → EINVAL", () => {
    const b = bed({ accel: { dramSize: 2n * BAR_SIZE } });
    const inside = allocMap(b, BAR_SIZE);
    const outside = allocMap(b, 64n * 1024n);
    assert.equal(
      errnoOf(exportFd(b, outside.va, 4096n)),
      "EINVAL",
      'exportFd(b, outside.va, 4096n): "EINVAL"',
    );
    assert.ok(exportFd(b, inside.va, 4096n).ok, "expected ok");
  });

  it("device not operational → EBUSY", () => {
    const b = bed();
    const { va } = allocMap(b, 64n * 1024n);
    b.hl.operational = false;
    assert.equal(errnoOf(exportFd(b, va, 4096n)), "EBUSY", 'exportFd(b, va, 4096n): "EBUSY"');
  });

  it("a failed export leaves export_cnt as it was (memhash_node_export_put)", () => {
    const b = bed();
    const { va } = allocMap(b, 64n * 1024n);
    assert.equal(
      errnoOf(exportFd(b, va, 4096n, 512n)),
      "EINVAL",
      'exportFd(b, va, 4096n, 512n): "EINVAL"',
    );
    assert.equal(b.hl.mem_hash.get(va)?.export_cnt, 0, "b.hl.mem_hash.get(va)?.export_cnt: 0");
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
    assert.equal(errnoOf(unmap()), "EINVAL", 'unmap(): "EINVAL"');
    assert.ok(sysClose(b.proc, r.value.fd).ok, "expected ok"); // last reference: hl_release_dmabuf
    assert.equal(b.hl.dmabuf_export_cnt, 0, "b.hl.dmabuf_export_cnt: 0");
    assert.equal(b.hl.ctx_refs, 1, "b.hl.ctx_refs: 1");
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
    assert.equal(a.value.peer2peer, true, "a.value.peer2peer: true");
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    const es = entries(m.value);
    assert.equal(m.value.orig_nents, 0, "m.value.orig_nents: 0");
    // the allocation is contiguous: the exported 256 KiB start 64 KiB into it, 64 KiB entries
    assert.equal(es.length, 4, "es.length: 4");
    const pack = b.hl.idr.get(1n)!;
    const first = BAR_START + pack.pages[0]! + 64n * 1024n;
    assert.equal(es[0]!.dma_address, first, "es[0]!.dma_address: first");
    assert.equal(
      es.reduce((s, e) => s + e.dma_length, 0),
      256 * 1024,
      "es.reduce((s, e) => s + e.dma_length, 0): 256 * 1024",
    );
    for (const e of es) assert.equal(sg_page(e), null, "sg_page(e): null");
    const data = new TextEncoder().encode("peer write");
    const w = b.sys.deviceWrite(nic, es[1]!.dma_address + 16n, data);
    assert.ok(w.ok, why(w));
    const at = first + 64n * 1024n + 16n;
    assert.deepEqual(
      b.sys.memory.read(at as never, data.length),
      data,
      "b.sys.memory.read(at as never, data.length): data",
    );
    assert.equal(b.hl.outstanding.size, 1, "b.hl.outstanding.size: 1");
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
    assert.equal(b.hl.outstanding.size, 0, "b.hl.outstanding.size: 0");
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
    assert.notEqual(e!.dma_address, phys, "e!.dma_address: phys");
    const data = new Uint8Array([1, 2, 3, 4]);
    const w = b.sys.deviceWrite(nic, e!.dma_address + 4096n, data);
    assert.ok(w.ok, why(w));
    assert.deepEqual(
      b.sys.memory.read((phys + 4096n) as never, 4),
      data,
      "b.sys.memory.read((phys + 4096n) as never, 4): data",
    );
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
    assert.equal(es.length, 4, "es.length: 4");
    for (const e of es) assert.equal(e.dma_length, 32768, "e.dma_length: 32768");
    assert.equal(
      es[0]!.dma_address,
      BAR_START + 64n * 1024n,
      "es[0]!.dma_address: BAR_START + 64n * 1024n",
    );
    assert.equal(
      es[2]!.dma_address,
      BAR_START + 192n * 1024n,
      "es[2]!.dma_address: BAR_START + 192n * 1024n",
    );
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "to-device");
  });

  it("an importer whose max segment is below PAGE_SIZE → EINVAL", () => {
    const b = bed();
    const d = exported(b);
    const a = dmaBufDynamicAttach(d, importer(b, "04:00.0", 2048), P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    assert.equal(
      errnoOf(dmaBufMapAttachmentUnlocked(a.value, "bidirectional")),
      "EINVAL",
      'dmaBufMapAttachmentUnlocked(a.value, "bidirectional"): "EINVAL"',
    );
  });

  it("an importer that cannot reach P2P (other root port, host bridge not allowed): attach clears peer2peer, map → EPERM", () => {
    const b = bed();
    const d = exported(b);
    const a = dmaBufDynamicAttach(d, importer(b, "05:00.0"), P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    assert.equal(a.value.peer2peer, false, "a.value.peer2peer: false");
    assert.equal(
      errnoOf(dmaBufMapAttachmentUnlocked(a.value, "bidirectional")),
      "EPERM",
      'dmaBufMapAttachmentUnlocked(a.value, "bidirectional"): "EPERM"',
    );
  });

  it("6.1 core: a dynamic importer on this static exporter is mapped at attach, so EPERM comes from attach", () => {
    const b = bed({ profile: "6.1" });
    const d = exported(b);
    const a = dmaBufDynamicAttach(d, importer(b, "05:00.0"), P2P_IMPORTER);
    assert.equal(errnoOf(a), "EPERM", 'a: "EPERM"');
    assert.equal(d.attachments.length, 0, "d.attachments.length: 0");
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
    assert.equal(w.ok, false, "w.ok: false");
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
  });

  it("a static importer (no allow_peer2peer) gets EPERM at map", () => {
    const b = bed();
    const d = exported(b);
    const a = dmaBufAttach(d, importer(b, "04:00.0"));
    assert.ok(a.ok, "expected ok");
    assert.equal(
      errnoOf(dmaBufMapAttachmentUnlocked(a.value, "bidirectional")),
      "EPERM",
      'dmaBufMapAttachmentUnlocked(a.value, "bidirectional"): "EPERM"',
    );
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
      'b.sys.p2pdma.calc(b.hl.fn, b.sys.device("05:00.0").fn, false).mapType: "not-supported"',
    );
    const a = dmaBufDynamicAttach(d, importer(b, "05:00.0"), P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    assert.equal(a.value.peer2peer, true, "a.value.peer2peer: true");
    return { b, a: a.value };
  }

  it("dma_map_resource hands out IOVAs although the P2P verdict is not-supported", () => {
    const { b, a } = attachAcrossHostBridge("map-resource");
    const m = dmaBufMapAttachmentUnlocked(a, "bidirectional");
    assert.ok(m.ok, "expected ok");
    const [e] = entries(m.value);
    assert.notEqual(
      e!.dma_address,
      BAR_START + b.hl.idr.get(1n)!.pages[0]!,
      "e!.dma_address: BAR_START + b.hl.idr.get(1n)!.pages[0]!",
    );
    assert.equal(sg_page(e!), null, "sg_page(e!): null");
    dmaBufUnmapAttachmentUnlocked(a, m.value, "bidirectional");
  });

  it("P2P pages + dma_map_sgtable respect the verdict: EREMOTEIO", () => {
    const { a } = attachAcrossHostBridge("p2p-pages");
    assert.equal(
      errnoOf(dmaBufMapAttachmentUnlocked(a, "bidirectional")),
      "EREMOTEIO",
      'dmaBufMapAttachmentUnlocked(a, "bidirectional"): "EREMOTEIO"',
    );
  });

  it("P2P pages below the same switch: bus-address entries (no IOMMU programming)", () => {
    const b = bed({ iommu: "dma", accel: { mapMode: "p2p-pages" } });
    const d = exported(b, 64n * 1024n);
    const a = dmaBufDynamicAttach(d, importer(b, "04:00.0"), P2P_IMPORTER);
    assert.ok(a.ok, "expected ok");
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    const [e] = entries(m.value);
    assert.equal(
      e!.dma_address,
      BAR_START + b.hl.idr.get(1n)!.pages[0]!,
      "e!.dma_address: BAR_START + b.hl.idr.get(1n)!.pages[0]!",
    );
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
  });
});

describe("accel: §8 scenarios not covered above (29, 31, 33)", () => {
  it("29: max segment 64 KiB, 8 MiB contiguous export → 128 page-less 64 KiB entries, orig_nents 0", () => {
    const b = bed();
    const d = exported(b, 8n * MiB, 0n, 8n * MiB);
    const a = dmaBufDynamicAttach(d, importer(b, "04:00.0", 65536), P2P_IMPORTER);
    assert.ok(a.ok, why(a));
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    const es = entries(m.value);
    assert.equal(es.length, 128, "8 MiB / 64 KiB entries");
    assert.ok(
      es.every((e) => e.dma_length === 65536),
      "each 64 KiB",
    );
    assert.ok(
      es.every((e) => sg_page(e) === null),
      "no pages",
    );
    assert.equal(m.value.orig_nents, 0, "no CPU list");
    assert.ok(
      es.every((e, i) => e.dma_address === BAR_START + BigInt(i) * 65536n),
      "contiguous BAR addresses",
    );
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
  });

  it("31: Gaudi1 (no DRAM VM) with offset ≠ 0 → EINVAL, whatever the offset; offset 0 exports", () => {
    const b = bed({ accel: { dramVirtualMemory: false } });
    assert.ok(b.hl.open(b.proc).ok, "open");
    assert.equal(
      errnoOf(exportFd(b, 0x10000n, 0x10000n, 0x1000n)),
      "EINVAL",
      "page-aligned offset",
    );
    assert.equal(errnoOf(exportFd(b, 0x10000n, 0x10000n, 0x10n)), "EINVAL", "unaligned offset");
    assert.ok(exportFd(b, 0x10000n, 0x10000n, 0n).ok, "offset 0");
  });

  it("33: mmap of the exported fd → EINVAL; dma_buf_vmap → EINVAL; SYNC ioctl → 0", () => {
    const b = bed();
    const { va } = allocMap(b, 64n * 1024n);
    const r = exportFd(b, va, 64n * 1024n);
    assert.ok(r.ok, why(r));
    const fd = r.value.fd;
    const mm = sysMmap(b.proc, fd, { length: 4096n, prot: PROT_READ, flags: MAP_SHARED });
    assert.equal(errnoOf(mm), "EINVAL", "no mmap in habanalabs_dmabuf_ops");
    assert.equal(errnoOf(dmaBufVmapUnlocked(dmabufOf(b.proc, fd))), "EINVAL", "no vmap");
    const s = sysIoctl(b.proc, fd, DMA_BUF_IOCTL_SYNC, {
      flags: DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW,
    });
    assert.deepEqual(s, { ok: true, value: 0 }, "SYNC is not refused");
  });
});

// ── the three map modes side by side ────────────────────────────────────────────────────────

type TopoName = "switch-local" | "host-bridge" | "acs-redirect";

/** The three topologies: importer, host bridge, ACS word of the switch's downstream ports. */
const TOPOS: Record<TopoName, { nic: string; hostId: string; acs: number | null }> = {
  // below one switch without ACS: P2PDMA says BUS_ADDR; the host bridge is not allowlisted
  "switch-local": { nic: "04:00.0", hostId: "8086:1234", acs: null },
  // across the root complex on an allowlisted host bridge: THRU_HOST_BRIDGE
  "host-bridge": { nic: "05:00.0", hostId: "8086:2020", acs: null },
  // below one switch whose ports redirect (RR|CR), host bridge not allowlisted: NOT_SUPPORTED
  "acs-redirect": { nic: "04:00.0", hostId: "8086:1234", acs: 0x1d },
};

type Outcome = { kind: DmaAddrKind; write: "lands" | "faults" } | { errno: string };

// without an IOMMU, an address that lands in a peer BAR is a bus address (x86: bus offset 0)
const EXPECT: Record<TopoName, Record<"off" | "dma", Record<AccelMapMode, Outcome>>> = {
  "switch-local": {
    off: {
      "map-resource": { kind: "bus-address", write: "lands" },
      "p2p-pages": { kind: "bus-address", write: "lands" },
      "phys-vec": { kind: "bus-address", write: "lands" },
    },
    dma: {
      // the IOVA matches no BAR in the switch: up to a root complex that does not forward P2P
      "map-resource": { kind: "iova", write: "faults" },
      "p2p-pages": { kind: "bus-address", write: "lands" },
      "phys-vec": { kind: "bus-address", write: "lands" },
    },
  },
  "host-bridge": {
    off: {
      "map-resource": { kind: "bus-address", write: "lands" },
      "p2p-pages": { kind: "bus-address", write: "lands" },
      "phys-vec": { kind: "bus-address", write: "lands" },
    },
    dma: {
      "map-resource": { kind: "iova", write: "lands" },
      "p2p-pages": { kind: "iova", write: "lands" },
      "phys-vec": { kind: "iova", write: "lands" },
    },
  },
  "acs-redirect": {
    off: {
      "map-resource": { kind: "bus-address", write: "faults" },
      "p2p-pages": { errno: "EREMOTEIO" },
      "phys-vec": { errno: "EINVAL" },
    },
    dma: {
      "map-resource": { kind: "iova", write: "faults" },
      "p2p-pages": { errno: "EREMOTEIO" },
      "phys-vec": { errno: "EINVAL" },
    },
  },
};

const MODES: AccelMapMode[] = ["map-resource", "p2p-pages", "phys-vec"];

describe("accel: map-resource vs p2p-pages vs phys-vec on three topologies, IOMMU off and on", () => {
  for (const t of Object.keys(TOPOS) as TopoName[])
    for (const iommu of ["off", "dma"] as const)
      for (const mode of MODES) {
        const want = EXPECT[t][iommu][mode];
        const label = `${t}, IOMMU ${iommu}, ${mode}`;
        it(`${label}: ${"errno" in want ? want.errno : `${want.kind}, write ${want.write}`}`, () => {
          const { nic, hostId, acs } = TOPOS[t];
          // without the attach check, so the NOT_SUPPORTED pair reaches map
          const b = bed({
            iommu,
            hostId,
            acs,
            accel: { mapMode: mode, attachChecksDistance: false },
          });
          const { handle, va } = allocMap(b, 256n * 1024n);
          const r = exportFd(b, va, 128n * 1024n, 64n * 1024n);
          assert.ok(r.ok, `${label}: export ${why(r)}`);
          const dev = importer(b, nic);
          const a = dmaBufDynamicAttach(dmabufOf(b.proc, r.value.fd), dev, P2P_IMPORTER);
          assert.ok(a.ok, `${label}: attach ${why(a)}`);
          const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
          if ("errno" in want) {
            assert.equal(errnoOf(m), want.errno, `${label}: map refused`);
            assert.equal(b.hl.outstanding.size, 0, `${label}: nothing handed out`);
            return;
          }
          assert.ok(m.ok, `${label}: map ${why(m)}`);
          const ev = b.tracer.events.filter((e) => e.ev === "accel:map").at(-1);
          const kinds = (ev?.data?.["entries"] as { kind: DmaAddrKind }[] | undefined)?.map(
            (e) => e.kind,
          );
          assert.ok(kinds && kinds.length > 0, `${label}: the map is traced with its entries`);
          assert.ok(
            kinds.every((k) => k === want.kind),
            `${label}: every entry is ${want.kind}: ${j(kinds)}`,
          );
          const es = entries(m.value);
          const bar = barOf(b, handle, 64n * 1024n);
          if (want.kind === "iova")
            assert.notEqual(es[0]!.dma_address, bar, `${label}: an IOVA is not the BAR address`);
          else assert.equal(es[0]!.dma_address, bar, `${label}: the BAR address (offset 0 on x86)`);
          const data = new Uint8Array([0xa5, 0x5a, 0x01, 0x02]);
          const before = b.sys.memory.read((bar + 16n) as never, 4);
          const w = b.sys.deviceWrite(dev, es[0]!.dma_address + 16n, data);
          const after = b.sys.memory.read((bar + 16n) as never, 4);
          if (want.write === "lands") {
            assert.ok(w.ok, `${label}: the write lands: ${transferText(w)}`);
            assert.deepEqual(after, data, `${label}: the bytes are in the BAR`);
          } else {
            assert.equal(w.ok, false, `${label}: the write faults`);
            assert.deepEqual(after, before, `${label}: the BAR is unchanged`);
          }
          dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
          dmaBufDetach(a.value.dmabuf, a.value);
          assert.ok(sysClose(b.proc, r.value.fd).ok, `${label}: close the dma-buf`);
          sysExit(b.proc);
          const leaks = leakReport([b.sys, b.core, b.proc, b.hl]);
          assert.deepEqual(leaks, [], `${label}: nothing left: ${j(leaks)}`);
        });
      }

  it("with the mainline attach check the not-supported pair gets EPERM in every mode", () => {
    for (const mode of MODES) {
      const b = bed({ hostId: "8086:1234", acs: 0x1d, accel: { mapMode: mode } });
      const d = exported(b, 64n * 1024n);
      const a = dmaBufDynamicAttach(d, importer(b, "04:00.0"), P2P_IMPORTER);
      assert.ok(a.ok, `${mode}: attach never fails`);
      assert.equal(a.value.peer2peer, false, `${mode}: peer2peer cleared`);
      assert.equal(
        errnoOf(dmaBufMapAttachmentUnlocked(a.value, "bidirectional")),
        "EPERM",
        `${mode}: EPERM`,
      );
    }
  });

  it("phys-vec ignores the importer's max segment size: one entry per contiguous range", () => {
    const b = bed({ accel: { mapMode: "phys-vec" } });
    const d = exported(b, 256n * 1024n);
    const a = dmaBufDynamicAttach(d, importer(b, "04:00.0", 4096), P2P_IMPORTER);
    assert.ok(a.ok, why(a));
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    assert.deepEqual(
      entries(m.value).map((e) => e.dma_length),
      [256 * 1024],
      "one 256 KiB entry although the importer's max segment is 4 KiB",
    );
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
  });

  it("phys-vec, host bridge, IOMMU on, discontiguous DRAM: the helper links both ranges at IOVA offset 0 → EEXIST", () => {
    const b = bed({ iommu: "dma", hostId: "8086:2020", accel: { mapMode: "phys-vec" } });
    const h1 = b.hl.allocDeviceMemory(64n * 1024n);
    const h2 = b.hl.allocDeviceMemory(64n * 1024n);
    assert.ok(h1.ok && h2.ok, "two allocations");
    assert.ok(b.hl.freeDeviceMemory(h1.value).ok, "a hole at the start of DRAM");
    const d = exported(b, 128n * 1024n, 0n, 128n * 1024n); // the hole + a page after h2
    const a = dmaBufDynamicAttach(d, importer(b, "05:00.0"), P2P_IMPORTER);
    assert.ok(a.ok, why(a));
    assert.equal(
      errnoOf(dmaBufMapAttachmentUnlocked(a.value, "bidirectional")),
      "EEXIST",
      "IOVA collision",
    );
    dmaBufDetach(d, a.value);
    assert.deepEqual(leakReport([b.sys]), [], "the unwind gave the IOVA back");
  });
});

// ── the v3 exporter of June 2021 ────────────────────────────────────────────────────────────

describe("accel: the v3 exporter (static table of raw BAR addresses, no P2P check)", () => {
  it("the table is built once at export with raw BAR addresses and handed to every importer", () => {
    const b = bed({ accel: { generation: "v3" } });
    const { handle } = allocMap(b, 256n * 1024n);
    const r = exportFd(b, handle, 0n);
    assert.ok(r.ok, why(r));
    const d = dmabufOf(b.proc, r.value.fd);
    assert.equal(d.size, 256n * 1024n, "the whole allocation");
    const a1 = dmaBufDynamicAttach(d, importer(b, "04:00.0"), P2P_IMPORTER);
    const a2 = dmaBufAttach(d, importer(b, "05:00.0"));
    assert.ok(a1.ok && a2.ok, "both attach");
    const m1 = dmaBufMapAttachmentUnlocked(a1.value, "bidirectional");
    const m2 = dmaBufMapAttachmentUnlocked(a2.value, "to-device");
    assert.ok(m1.ok && m2.ok, "even the static importer behind the refused host bridge maps");
    assert.equal(m1.value, m2.value, "the same table");
    assert.deepEqual(
      entries(m1.value).map((e) => [e.dma_address as bigint, e.dma_length]),
      [[barOf(b, handle), 256 * 1024]],
      "one chunk at the raw BAR address",
    );
    const ev = b.tracer.events.filter((e) => e.ev === "accel:map");
    assert.ok(
      ev.every((e) =>
        ((e.data?.["entries"] ?? []) as { kind: string }[]).every((x) => x.kind === "bus-address"),
      ),
      "traced as raw bus addresses",
    );
    dmaBufUnmapAttachmentUnlocked(a1.value, m1.value, "bidirectional");
    dmaBufUnmapAttachmentUnlocked(a2.value, m2.value, "to-device");
  });

  it("IOMMU off, both below one switch: the importer's write lands in the BAR", () => {
    const b = bed({ accel: { generation: "v3" } });
    const { handle } = allocMap(b, 64n * 1024n);
    const r = exportFd(b, handle, 0n);
    assert.ok(r.ok, why(r));
    const nic = importer(b, "04:00.0");
    const a = dmaBufDynamicAttach(dmabufOf(b.proc, r.value.fd), nic, P2P_IMPORTER);
    assert.ok(a.ok, why(a));
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    const w = b.sys.deviceWrite(nic, entries(m.value)[0]!.dma_address + 8n, new Uint8Array([1, 2]));
    assert.ok(w.ok, `routed peer to peer in the switch: ${transferText(w)}`);
    assert.deepEqual(
      b.sys.memory.read((barOf(b, handle) + 8n) as never, 2),
      new Uint8Array([1, 2]),
      "landed",
    );
  });

  it("IOMMU on: the raw BAR address faults in the importer's IOMMU domain, the BAR is unchanged", () => {
    // with the IOMMU on the kernel sets RR|CR on the switch's downstream ports (0x1d): peer
    // requests go up to the root complex, where the IOMMU has no mapping for a BAR address
    for (const [nicBdf, acs] of [
      ["04:00.0", 0x1d],
      ["05:00.0", null],
    ] as const) {
      const b = bed({ iommu: "dma", acs, hostId: "8086:2020", accel: { generation: "v3" } });
      const { handle } = allocMap(b, 64n * 1024n);
      const r = exportFd(b, handle, 0n);
      assert.ok(r.ok, why(r));
      const nic = importer(b, nicBdf);
      const a = dmaBufDynamicAttach(dmabufOf(b.proc, r.value.fd), nic, P2P_IMPORTER);
      assert.ok(a.ok && a.value.peer2peer, `${nicBdf}: attached, no P2P check`);
      const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
      assert.ok(m.ok, why(m));
      const bar = barOf(b, handle);
      const before = b.sys.memory.read(bar as never, 4);
      const w = b.sys.deviceWrite(
        nic,
        entries(m.value)[0]!.dma_address,
        new Uint8Array([9, 9, 9, 9]),
      );
      assert.equal(w.ok, false, `${nicBdf}: faults`);
      assert.match(w.ok ? "" : w.fault.reason, /IOMMU fault/, `${nicBdf}: in the IOMMU domain`);
      assert.deepEqual(b.sys.memory.read(bar as never, 4), before, `${nicBdf}: BAR unchanged`);
    }
  });

  it("the DMA address is pci_resource_start-based: with a host-bridge bus offset the write misses the BAR", () => {
    const b = bed({ busOffset: -0x40_0000_0000n, accel: { generation: "v3" } });
    const { handle } = allocMap(b, 64n * 1024n);
    const r = exportFd(b, handle, 0n);
    assert.ok(r.ok, why(r));
    const nic = importer(b, "04:00.0");
    const a = dmaBufDynamicAttach(dmabufOf(b.proc, r.value.fd), nic, P2P_IMPORTER);
    assert.ok(a.ok, why(a));
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    const dma = entries(m.value)[0]!.dma_address;
    assert.equal(dma, barOf(b, handle), "the CPU physical BAR address, not the bus address");
    const w = b.sys.deviceWrite(nic, dma, new Uint8Array([1]));
    assert.ok(
      !w.ok || w.target.owner !== b.hl.fn,
      `the BAR does not decode it: ${transferText(w)}`,
    );
  });

  it("chunks are capped at 512 MiB", () => {
    const b = bed({ barSize: 2n * GiB, accel: { generation: "v3", dramPageSize: 32n * MiB } });
    const { handle } = allocMap(b, GiB);
    const r = exportFd(b, handle, 0n);
    assert.ok(r.ok, why(r));
    const a = dmaBufDynamicAttach(
      dmabufOf(b.proc, r.value.fd),
      importer(b, "04:00.0"),
      P2P_IMPORTER,
    );
    assert.ok(a.ok, why(a));
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    assert.deepEqual(
      entries(m.value).map((e) => [e.dma_address as bigint, BigInt(e.dma_length)]),
      [
        [BAR_START, 512n * MiB],
        [BAR_START + 512n * MiB, 512n * MiB],
      ],
      "two 512 MiB chunks",
    );
  });

  it("without DRAM VM: address and size must be 32 MiB aligned and inside user DRAM", () => {
    const b = bed({ barSize: GiB, accel: { generation: "v3", dramVirtualMemory: false } });
    assert.ok(b.hl.open(b.proc).ok, "open");
    assert.equal(
      errnoOf(exportFd(b, 16n * MiB, 32n * MiB)),
      "EINVAL",
      "address not 32 MiB aligned",
    );
    assert.equal(errnoOf(exportFd(b, 32n * MiB, 0n)), "EINVAL", "size 0");
    assert.equal(
      errnoOf(exportFd(b, 32n * MiB, 16n * MiB)),
      "EINVAL",
      "size not a 32 MiB multiple",
    );
    assert.equal(
      errnoOf(exportFd(b, GiB - 32n * MiB, 64n * MiB)),
      "EINVAL",
      "past the end of DRAM",
    );
    const r = exportFd(b, 32n * MiB, 64n * MiB);
    assert.ok(r.ok, why(r));
    const a = dmaBufDynamicAttach(
      dmabufOf(b.proc, r.value.fd),
      importer(b, "04:00.0"),
      P2P_IMPORTER,
    );
    assert.ok(a.ok, why(a));
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    assert.deepEqual(
      entries(m.value).map((e) => [e.dma_address as bigint, BigInt(e.dma_length)]),
      [[BAR_START + 32n * MiB, 64n * MiB]],
      "one chunk at the BAR address of the physical DRAM address",
    );
  });

  it("an exported handle cannot be freed until its dma-buf is released", () => {
    const b = bed({ accel: { generation: "v3" } });
    const a = b.hl.memIoctl(b.proc, { op: HL_MEM_OP_ALLOC, mem_size: 64n * 1024n });
    assert.ok(a.ok, why(a));
    const r = exportFd(b, a.value.handle, 0n);
    assert.ok(r.ok, why(r));
    const free = () => b.hl.memIoctl(b.proc, { op: HL_MEM_OP_FREE, handle: a.value.handle });
    assert.equal(errnoOf(free()), "EINVAL", "exporting_cnt > 0");
    assert.ok(sysClose(b.proc, r.value.fd).ok, "close the dma-buf");
    assert.ok(free().ok, "then FREE works");
  });

  it("dma_buf_fd failing releases a buffer whose ctx is still NULL: the kernel oopses", () => {
    const b = bed({ accel: { generation: "v3" } });
    const proc = new Process("tiny", { rlimitNofile: 1 });
    assert.ok(b.hl.open(proc).ok, "the accel fd takes the only slot");
    const a = b.hl.memIoctl(proc, { op: HL_MEM_OP_ALLOC, mem_size: 64n * 1024n });
    assert.ok(a.ok, why(a));
    assert.throws(
      () => exportFd(b, a.value.handle, 0n, 0n, O_RDWR, proc),
      /NULL pointer dereference/,
      "oops",
    );
  });
});

// ── Gaudi1: no virtual memory over DRAM ─────────────────────────────────────────────────────

describe("accel: Gaudi1 physical mode (dramVirtualMemory: false)", () => {
  const gaudi1 = (extra: AccelOptions = {}) =>
    bed({
      accel: {
        dramVirtualMemory: false,
        dramSize: 32n * MiB,
        dramUserBaseAddress: 0x10000n,
        ...extra,
      },
    });

  it("ALLOC and FREE only account; MAP of a handle fails; teardown resets the accounting", () => {
    const b = gaudi1();
    const a = b.hl.memIoctl(b.proc, { op: HL_MEM_OP_ALLOC, mem_size: MiB });
    assert.ok(a.ok, why(a));
    assert.equal(a.value.handle, 0n, "no handle");
    assert.equal(b.hl.dram_used_mem, MiB, "dram_used_mem accounts it");
    assert.equal(b.hl.ctx?.dram_phys_mem, MiB, "and ctx->dram_phys_mem");
    assert.equal(b.hl.idr.size, 0, "nothing allocated");
    assert.equal(
      errnoOf(b.hl.memIoctl(b.proc, { op: HL_MEM_OP_MAP, handle: 0n })),
      "EINVAL",
      "MAP: no such handle",
    );
    assert.ok(b.hl.memIoctl(b.proc, { op: HL_MEM_OP_ALLOC, mem_size: MiB }).ok, "again");
    assert.ok(
      b.hl.memIoctl(b.proc, { op: HL_MEM_OP_FREE, handle: MiB }).ok,
      "FREE subtracts the aliased u64",
    );
    assert.equal(b.hl.dram_used_mem, MiB, "one left");
    sysExit(b.proc);
    assert.equal(b.hl.dram_used_mem, 0n, "hl_vm_ctx_fini zeroes it");
    assert.deepEqual(leakReport([b.hl]), [], "nothing left");
  });

  it("validate_export_params_no_mmu: alignment, size, user DRAM range, BAR window", () => {
    const b = bed({
      accel: { dramVirtualMemory: false, dramSize: 2n * BAR_SIZE, dramUserBaseAddress: 0x10000n },
    });
    assert.ok(b.hl.open(b.proc).ok, "open");
    assert.equal(errnoOf(exportFd(b, 0x10800n, 0x1000n)), "EINVAL", "address not page aligned");
    assert.equal(errnoOf(exportFd(b, 0x10000n, 0n)), "EINVAL", "size 0");
    assert.equal(errnoOf(exportFd(b, 0x10000n, 0x1800n)), "EINVAL", "size not a page multiple");
    assert.equal(errnoOf(exportFd(b, 0x0n, 0x1000n)), "EINVAL", "below dram_user_base_address");
    assert.equal(
      errnoOf(exportFd(b, 2n * BAR_SIZE - 0x1000n, 0x2000n)),
      "EINVAL",
      "past dram_end_address",
    );
    assert.equal(
      errnoOf(exportFd(b, BAR_SIZE, 0x1000n)),
      "EINVAL",
      "in DRAM but outside the BAR window",
    );
    assert.ok(exportFd(b, BAR_SIZE - 0x1000n, 0x1000n).ok, "the last page of the BAR window");
  });

  it("map: a single 'page' [addr, +size) chunked by the importer's max segment; writes land", () => {
    const b = gaudi1();
    assert.ok(b.hl.open(b.proc).ok, "open");
    const r = exportFd(b, 0x10000n, 256n * 1024n);
    assert.ok(r.ok, why(r));
    const nic = importer(b, "04:00.0", 65536);
    const a = dmaBufDynamicAttach(dmabufOf(b.proc, r.value.fd), nic, P2P_IMPORTER);
    assert.ok(a.ok, why(a));
    const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
    assert.ok(m.ok, why(m));
    assert.deepEqual(
      entries(m.value).map((e) => [e.dma_address as bigint, e.dma_length]),
      [0n, 1n, 2n, 3n].map((i) => [BAR_START + 0x10000n + i * 65536n, 65536]),
      "four 64 KiB entries from the BAR address of 0x10000",
    );
    const w = b.sys.deviceWrite(nic, BAR_START + 0x10000n + 65536n, new Uint8Array([3]));
    assert.ok(w.ok, transferText(w));
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
  });
});

// ── the device file and the context's lifetime ──────────────────────────────────────────────

describe("accel: the device file (hl_device_open / hl_device_release) and the context's lifetime", () => {
  it("open: /dev/accel/accel0 in the fd table; one user at a time; close tears the context down", () => {
    const b = bed({ accel: { name: "accel0" } });
    const fd = b.hl.open(b.proc);
    assert.ok(fd.ok, why(fd));
    assert.equal(b.proc.fds.get(fd.value)?.file.name, "/dev/accel/accel0", "the device node");
    assert.equal(b.hl.ctx_refs, 1, "the context manager's reference");
    const other = new Process("other");
    assert.equal(errnoOf(b.hl.open(other)), "EBUSY", "another user is working on it");
    assert.equal(
      errnoOf(b.hl.memIoctl(other, { op: HL_MEM_OP_ALLOC, mem_size: 4096n })),
      "EBADF",
      "no fd of the device in that process",
    );
    assert.ok(sysClose(b.proc, fd.value).ok, "close");
    assert.equal(b.hl.ctx, null, "context gone");
    assert.ok(b.hl.log.includes("closing user context, asid=1"), "hl_ctx_fini logged");
    assert.ok(b.hl.open(other).ok, "free again");
  });

  it("the memory ioctl through the fd: DRM_IOCTL_HL_MEMORY writes the union back", () => {
    const b = bed();
    const fd = b.hl.open(b.proc);
    assert.ok(fd.ok, why(fd));
    const a = hlMemIoctl(b.proc, fd.value, { op: HL_MEM_OP_ALLOC, mem_size: 64n * 1024n });
    assert.ok(a.ok, why(a));
    const m = hlMemIoctl(b.proc, fd.value, { op: HL_MEM_OP_MAP, handle: a.value.handle });
    assert.ok(m.ok, why(m));
    const args: HlMemArgs = {
      in: {
        op: HL_MEM_OP_EXPORT_DMABUF_FD,
        addr: m.value.device_virt_addr,
        mem_size: 4096n,
        offset: 0n,
        flags: O_RDWR,
      },
    };
    assert.deepEqual(
      sysIoctl(b.proc, fd.value, DRM_IOCTL_HL_MEMORY, args),
      { ok: true, value: 0 },
      "ioctl returns 0",
    );
    assert.ok(args.out && args.out.fd > fd.value, `out.fd is the new dma-buf fd: ${j(args.out)}`);
    const bad: HlMemArgs = {
      in: {
        op: HL_MEM_OP_EXPORT_DMABUF_FD,
        addr: 0x1234n,
        mem_size: 4096n,
        offset: 0n,
        flags: O_RDWR,
      },
    };
    assert.equal(
      errnoOf(sysIoctl(b.proc, fd.value, DRM_IOCTL_HL_MEMORY, bad)),
      "EINVAL",
      "no such VA",
    );
    assert.equal(bad.out?.fd, -9, "out.fd stays -EBADF");
    assert.equal(
      errnoOf(sysIoctl(b.proc, fd.value, 0xdead, args)),
      "EINVAL",
      "not a modelled ioctl",
    );
  });

  it("exit with mappings and no export: hl_vm_ctx_fini unmaps and frees, logging each", () => {
    const b = bed();
    const { handle, va } = allocMap(b, 128n * 1024n);
    const loose = b.hl.memIoctl(b.proc, { op: HL_MEM_OP_ALLOC, mem_size: 64n * 1024n });
    assert.ok(loose.ok, why(loose));
    sysExit(b.proc);
    assert.equal(b.hl.ctx, null, "context gone");
    assert.equal(b.hl.idr.size, 0, "allocations freed");
    assert.equal(b.hl.mem_hash.size, 0, "VAs unmapped");
    assert.equal(b.hl.dram_used_mem, 0n, "DRAM accounting back to 0");
    for (const line of [
      "user released device without removing its memory mappings",
      `hl_mem_hash_node of vaddr 0x${va.toString(16)} of asid 1 is still alive`,
      `page list of handle ${handle} (0x20000 bytes) of asid 1 is still alive`,
      `page list of handle ${loose.value.handle} (0x10000 bytes) of asid 1 is still alive`,
    ])
      assert.ok(b.hl.log.includes(line), `logged: ${line}`);
    assert.ok(b.hl.allocDeviceMemory(BAR_SIZE).ok, "all of DRAM is free again");
  });

  it("exit with an exported dma-buf held by another process: memory stays alive until it is released", () => {
    const b = bed({ accel: { name: "accel0" } });
    const a = new Process("exporter");
    const c = new Process("importer");
    const fd = b.hl.open(a);
    assert.ok(fd.ok, why(fd));
    const { handle, va } = allocMap(b, 128n * 1024n, a);
    const e = exportFd(b, va, 64n * 1024n, 0n, O_RDWR | O_CLOEXEC, a);
    assert.ok(e.ok, why(e));
    const cfd = sendFd(a, e.value.fd, c);
    assert.ok(cfd.ok, why(cfd));
    assert.equal(b.hl.ctx_refs, 2, "file + export");
    sysExit(a);
    assert.ok(b.hl.ctx !== null, "the context lives on");
    assert.equal(b.hl.ctx?.fileReleased, false, "the export holds the device file too");
    assert.ok(b.hl.idr.has(handle), "the allocation is alive");
    assert.ok(b.hl.mem_hash.has(va), "and mapped");
    assert.equal(
      errnoOf(b.hl.open(new Process("late"))),
      "EBUSY",
      "nobody else can open the device",
    );
    const nic = importer(b, "04:00.0");
    const at = dmaBufDynamicAttach(dmabufOf(c, cfd.value), nic, P2P_IMPORTER);
    assert.ok(at.ok, why(at));
    const m = dmaBufMapAttachmentUnlocked(at.value, "bidirectional");
    assert.ok(m.ok, why(m));
    const w = b.sys.deviceWrite(nic, entries(m.value)[0]!.dma_address, new Uint8Array([4, 2]));
    assert.ok(w.ok, `the NIC still writes into the accelerator's memory: ${transferText(w)}`);
    assert.deepEqual(
      b.sys.memory.read(barOf(b, handle) as never, 2),
      new Uint8Array([4, 2]),
      "landed",
    );
    dmaBufUnmapAttachmentUnlocked(at.value, m.value, "bidirectional");
    dmaBufDetach(at.value.dmabuf, at.value);
    assert.ok(b.hl.ctx !== null, "still alive while the fd is open");
    assert.ok(sysClose(c, cfd.value).ok, "the importer closes the dma-buf");
    assert.equal(b.hl.ctx, null, "last reference: torn down");
    assert.equal(b.hl.idr.size, 0, "the allocation freed");
    assert.ok(
      b.hl.log.includes(`hl_mem_hash_node of vaddr 0x${va.toString(16)} of asid 1 is still alive`),
      "the VA was unmapped at teardown",
    );
    const evs = b.tracer.events.map((x) => x.ev).filter((x) => x.startsWith("accel:"));
    assert.deepEqual(
      evs.slice(-3),
      ["accel:release", "accel:close", "accel:ctx_fini"],
      "release, then the device file, then the context",
    );
    sysExit(c);
    const leaks = leakReport([b.sys, b.core, a, c, b.hl]);
    assert.deepEqual(leaks, [], `nothing left: ${j(leaks)}`);
  });

  it("v3: the export holds the context but not the file: exit closes the file, the context waits", () => {
    const b = bed({ accel: { generation: "v3" } });
    const a = new Process("exporter");
    const c = new Process("importer");
    assert.ok(b.hl.open(a).ok, "open");
    const { handle } = allocMap(b, 64n * 1024n, a);
    const e = exportFd(b, handle, 0n, 0n, O_RDWR, a);
    assert.ok(e.ok, why(e));
    const cfd = sendFd(a, e.value.fd, c);
    assert.ok(cfd.ok, why(cfd));
    sysExit(a);
    assert.equal(b.hl.ctx?.fileReleased, true, "the device file is gone");
    assert.ok(
      b.hl.log.includes("User process closed FD but device still in use [1 exported dma-buf]"),
      "noticed",
    );
    assert.ok(b.hl.idr.has(handle), "memory alive");
    assert.ok(sysClose(c, cfd.value).ok, "release");
    assert.equal(b.hl.ctx, null, "torn down");
    assert.deepEqual(leakReport([b.sys, b.core, a, c, b.hl]), [], "nothing left");
  });

  it("leaks(): a table not unmapped, an export not released, DRAM without a context", () => {
    const b = bed();
    const d = exported(b, 64n * 1024n);
    const at = dmaBufDynamicAttach(d, importer(b, "04:00.0"), P2P_IMPORTER);
    assert.ok(at.ok, why(at));
    const m = dmaBufMapAttachmentUnlocked(at.value, "bidirectional");
    assert.ok(m.ok, why(m));
    assert.deepEqual(
      b.hl
        .leaks()
        .map((l) => l.kind)
        .sort(),
      ["accel-export", "sg-mapping"],
      "the mapping and the export",
    );
    const lone = bed();
    assert.ok(lone.hl.allocDeviceMemory(64n * 1024n).ok, "allocated with no context at all");
    assert.deepEqual(
      lone.hl.leaks().map((l) => l.kind),
      ["device-memory"],
      "DRAM with no context",
    );
  });
});

describe("accel: trace", () => {
  it("open, export, attach, map (entries with kinds), unmap, release, close, ctx_fini", () => {
    const b = bed({ accel: { mapMode: "p2p-pages" } });
    const fd = b.hl.open(b.proc);
    assert.ok(fd.ok, why(fd));
    const { va } = allocMap(b, 128n * 1024n);
    const e = exportFd(b, va, 64n * 1024n, 64n * 1024n);
    assert.ok(e.ok, why(e));
    const at = dmaBufDynamicAttach(
      dmabufOf(b.proc, e.value.fd),
      importer(b, "04:00.0"),
      P2P_IMPORTER,
    );
    assert.ok(at.ok, why(at));
    const m = dmaBufMapAttachmentUnlocked(at.value, "to-device");
    assert.ok(m.ok, why(m));
    dmaBufUnmapAttachmentUnlocked(at.value, m.value, "to-device");
    dmaBufDetach(at.value.dmabuf, at.value);
    sysExit(b.proc);
    const ev = b.tracer.events.filter((x) => x.ev.startsWith("accel:"));
    assert.deepEqual(
      ev.map((x) => x.ev),
      [
        "accel:open",
        "accel:export",
        "accel:attach",
        "accel:map",
        "accel:unmap",
        "accel:release",
        "accel:close",
        "accel:ctx_fini",
      ],
      "the events in order",
    );
    const data = (name: string) => ev.find((x) => x.ev === name)?.data ?? {};
    assert.deepEqual(
      [
        data("accel:export")["addr"],
        data("accel:export")["size"],
        data("accel:export")["offset"],
        data("accel:export")["fd"],
      ],
      [va, 64n * 1024n, 64n * 1024n, e.value.fd],
      "export: addr, size, offset, fd",
    );
    assert.deepEqual(
      [data("accel:attach")["distance"], data("accel:attach")["peer2peer"]],
      [4, true],
      "attach: the distance through the switch and peer2peer",
    );
    assert.equal(data("accel:map")["mode"], "p2p-pages", "map: the mode");
    assert.deepEqual(
      (data("accel:map")["entries"] as { kind: string; len: bigint }[]).map((x) => [x.kind, x.len]),
      [["bus-address", 65536n]],
      "map: each entry's kind and length",
    );
  });
});

// ── the accelerator as an importer (a model choice: habanalabs has no import path) ──────────────

const GPU_VRAM = 0xc0_0000_0000n;
const GPU2_VRAM = 0xd0_0000_0000n;
const enc = (x: string): Uint8Array => new TextEncoder().encode(x);

/**
 * The accelerator (03:00.0) and a GPU (04:00.0) on two downstream ports of one switch below root
 * port 00:01.0; a second GPU (05:00.0) behind root port 00:02.0. Host bridge 8086:1234 is not on
 * the P2PDMA allowlist, so 05:00.0 and the accelerator cannot do P2P.
 */
function importerBed(iommu: IommuMode = "off") {
  const d = switchMachine({
    exporter: habanalabs(BAR_START, BAR_SIZE),
    peer: amdgpu([{ index: 0, start: GPU_VRAM, size: 16n * MiB }]),
    far: amdgpu([{ index: 0, start: GPU2_VRAM, size: 16n * MiB }]),
    iommu,
  });
  const tracer = new Tracer(true);
  const sys = new System(d, { tracer });
  const core = new DmaBufCore({ profile: PROFILES.mainline, moveNotify: true, tracer });
  const hl = new AccelDevice(sys, core, "03:00.0");
  const gpu = new GpuDevice(sys, core, "04:00.0", { vramSize: 4n * MiB });
  const gpu2 = new GpuDevice(sys, core, "05:00.0", { vramSize: 4n * MiB, name: "amdgpu#2" });
  const proc = new Process("accel-importer");
  return { sys, core, hl, gpu, gpu2, proc, tracer };
}
type ImporterBed = ReturnType<typeof importerBed>;

/** A GPU VRAM BO exported into the process: the render-node file, handle, BO, dma-buf fd. */
function gpuExport(b: ImporterBed, gpu: GpuDevice, size: bigint) {
  const f = gpu.open(b.proc);
  assert.ok(f.ok, `open ${gpu.devicePath}: ${why(f)}`);
  const h = f.value.createBo(size, AMDGPU_GEM_DOMAIN_VRAM);
  assert.ok(h.ok, `GEM_CREATE: ${why(h)}`);
  const fd = f.value.exportFd(h.value);
  assert.ok(fd.ok, `PRIME_HANDLE_TO_FD: ${why(fd)}`);
  return { file: f.value, handle: h.value, bo: f.value.bo(h.value)!, fd: fd.value };
}

/** HBM the test copies to/from: a mapped DRAM allocation (device VA) and its BAR address. */
function hbm(b: ImporterBed, size: bigint) {
  const a = b.hl.memIoctl(b.proc, { op: HL_MEM_OP_ALLOC, mem_size: size });
  assert.ok(a.ok, `HL ALLOC: ${why(a)}`);
  const m = b.hl.memIoctl(b.proc, { op: HL_MEM_OP_MAP, handle: a.value.handle });
  assert.ok(m.ok, `HL MAP: ${why(m)}`);
  const pack = b.hl.idr.get(a.value.handle)!;
  return { va: m.value.device_virt_addr, bar: b.hl.barAddress(pack.pages[0]!) as bigint };
}

function exitClean(b: ImporterBed, extra: LeakSource[] = []): void {
  sysExit(b.proc);
  const leaks = leakReport([b.sys, b.core, b.hl, b.gpu, b.gpu2, b.proc, ...extra]);
  assert.deepEqual(leaks, [], `leaks: ${j(leaks)}`);
  quietCore(b.core);
}

describe("accel as an importer (model: dynamic attach with allow_peer2peer, DMA engine copies)", () => {
  it("imports a GPU VRAM buffer below the same switch: the GPU keeps it in VRAM, the engine copies VRAM → HBM and HBM → VRAM peer to peer", () => {
    const b = importerBed();
    const g = gpuExport(b, b.gpu, 256n * 1024n);
    g.file.cpuWrite(g.handle, 0x40n, enc("gpu-vram"));
    const h = hbm(b, 256n * 1024n);
    const imp = b.hl.importDmabuf(b.proc, g.fd);
    assert.ok(imp.ok, `import: ${why(imp)}`);
    assert.equal(imp.value.attach.peer2peer, true, "amdgpu kept peer2peer (distance 4)");
    assert.equal(imp.value.sgt, null, "nothing mapped at import");
    const r = b.hl.dmaCopy(imp.value, 0x40n, h.va + 0x100n, 8n, "import-to-hbm");
    assert.ok(r.ok, `VRAM → HBM: ${why(r)}`);
    assert.deepEqual(r.value.kinds, ["bus-address"], "the GPU's VRAM BAR by bus address");
    assert.deepEqual(
      b.sys.memory.read(physAddr(h.bar + 0x100n), 8),
      enc("gpu-vram"),
      "the bytes are in HBM",
    );
    assert.equal(g.bo.placement, "vram", "a P2P importer: the BO stayed in VRAM");
    b.sys.memory.write(physAddr(h.bar + 0x2000n), enc("from-hbm"));
    const w = b.hl.dmaCopy(imp.value, 0x1000n, h.va + 0x2000n, 8n, "hbm-to-import");
    assert.ok(w.ok, `HBM → VRAM: ${why(w)}`);
    assert.deepEqual(g.file.cpuRead(g.handle, 0x1000n, 8), enc("from-hbm"), "bytes in VRAM");
    assert.equal(imp.value.maps, 1, "mapped once, reused");
    assert.equal(
      b.sys.fabric.traffic.get("0000:01:00.0"),
      undefined,
      "peer to peer: nothing crossed the switch's upstream link",
    );
    b.hl.releaseImport(imp.value);
    exitClean(b);
  });

  it("imports a host heap buffer behind an IOMMU: IOVAs, HBM → host memory", () => {
    const b = importerBed("dma");
    const exp = new SysmemExporter(b.sys, { size: 64n * 1024n, name: "system-heap" });
    const d = exp.export(b.core);
    assert.ok(d.ok, `export: ${why(d)}`);
    const fd = dmaBufFd(b.proc, d.value, O_RDWR | O_CLOEXEC);
    assert.ok(fd.ok, `fd: ${why(fd)}`);
    const h = hbm(b, 64n * 1024n);
    b.sys.memory.write(physAddr(h.bar), enc("hbm-data"));
    const imp = b.hl.importDmabuf(b.proc, fd.value);
    assert.ok(imp.ok, `import: ${why(imp)}`);
    const r = b.hl.dmaCopy(imp.value, 0x3000n, h.va, 8n, "hbm-to-import");
    assert.ok(r.ok, `HBM → host: ${why(r)}`);
    assert.deepEqual(r.value.kinds, ["iova"], "through the accelerator's IOMMU domain");
    assert.deepEqual(b.sys.memory.read(physAddr(exp.phys(0x3000n)), 8), enc("hbm-data"), "bytes");
    b.hl.releaseImport(imp.value);
    exitClean(b, [exp]);
  });

  it("the GPU evicting the buffer calls move_notify: the import is unmapped and mapped again (now GTT pages) at the next copy, same bytes", () => {
    const b = importerBed();
    const g = gpuExport(b, b.gpu, 64n * 1024n);
    g.file.cpuWrite(g.handle, 0n, enc("survives"));
    const h = hbm(b, 64n * 1024n);
    const imp = b.hl.importDmabuf(b.proc, g.fd);
    assert.ok(imp.ok, `import: ${why(imp)}`);
    const r1 = b.hl.dmaCopy(imp.value, 0n, h.va, 8n, "import-to-hbm");
    assert.ok(r1.ok, `first copy: ${why(r1)}`);
    const ev = b.gpu.evictFirst();
    assert.ok(ev.ok && ev.value === g.bo, `the GPU evicts the BO: ${why(ev)}`);
    assert.equal(imp.value.invalidations, 1, "move_notify reached the accelerator");
    assert.equal(imp.value.sgt, null, "its mapping was handed back");
    assert.equal(b.gpu.outstanding.size, 0, "the GPU has no table out");
    b.sys.memory.write(physAddr(h.bar), new Uint8Array(8));
    const r2 = b.hl.dmaCopy(imp.value, 0n, h.va, 8n, "import-to-hbm");
    assert.ok(r2.ok, `second copy: ${why(r2)}`);
    assert.equal(imp.value.maps, 2, "mapped again");
    assert.deepEqual(b.sys.memory.read(physAddr(h.bar), 8), enc("survives"), "same bytes");
    b.hl.releaseImport(imp.value);
    exitClean(b);
  });

  it("a GPU the accelerator cannot reach: amdgpu clears peer2peer and migrates the BO to GTT, the copy goes through system memory", () => {
    const b = importerBed();
    assert.equal(
      b.sys.p2pdma.distanceMany(b.gpu2.fn, [b.hl.fn], false),
      -1,
      "GPU 05:00.0 → accelerator: not supported",
    );
    const g = gpuExport(b, b.gpu2, 64n * 1024n);
    g.file.cpuWrite(g.handle, 0x10n, enc("migrated"));
    const h = hbm(b, 64n * 1024n);
    const imp = b.hl.importDmabuf(b.proc, g.fd);
    assert.ok(imp.ok, `import: ${why(imp)}`);
    assert.equal(imp.value.attach.peer2peer, false, "the exporter cleared peer2peer");
    const r = b.hl.dmaCopy(imp.value, 0x10n, h.va, 8n, "import-to-hbm");
    assert.ok(r.ok, `copy: ${why(r)}`);
    assert.equal(g.bo.placement, "gtt", "map migrated the BO to system memory");
    assert.deepEqual(r.value.kinds, ["physical"], "RAM by physical address (no IOMMU)");
    assert.deepEqual(b.sys.memory.read(physAddr(h.bar), 8), enc("migrated"), "bytes");
    b.hl.releaseImport(imp.value);
    exitClean(b);
  });

  it("bad fds, bad ranges, and an import never released is a leak", () => {
    const b = importerBed();
    assert.equal(errnoOf(b.hl.importDmabuf(b.proc, 42)), "EBADF", "fd not open → -EBADF");
    const g = gpuExport(b, b.gpu, 64n * 1024n);
    const imp = b.hl.importDmabuf(b.proc, g.fd);
    assert.ok(imp.ok, `import: ${why(imp)}`);
    const h = hbm(b, 64n * 1024n);
    assert.equal(
      errnoOf(b.hl.dmaCopy(imp.value, 64n * 1024n - 4n, h.va, 8n, "import-to-hbm")),
      "EINVAL",
      "a range past the imported buffer → -EINVAL",
    );
    assert.equal(
      errnoOf(b.hl.dmaCopy(imp.value, 0n, 0x1234n, 8n, "import-to-hbm")),
      "EINVAL",
      "an HBM address outside every mapping → -EINVAL",
    );
    assert.deepEqual(
      b.hl.leaks().map((l) => l.kind),
      ["accel-import"],
      "a live import is reported",
    );
    b.hl.releaseImport(imp.value);
    exitClean(b);
  });
});
