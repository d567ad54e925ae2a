import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  connectQps,
  exportAccelMemory,
  habanalabs,
  P2P_IMPORTER,
  RW,
  remoteNicBed,
  switchMachine,
  writeFromHostMr,
} from "../../../../test/support/beds.ts";
import { errnoOf, must, wcText, why } from "../../../../test/support/check.ts";
import { dmaAddr, type PhysAddr } from "../../hw/address.ts";
import { DMA_BIT_MASK } from "../dma/device.ts";
import type { DmaBufAttachOps } from "../dma-buf/attachment.ts";
import {
  type DmaBuf,
  DmaBufCore,
  type DmaBufOps,
  dmaBufExport,
  dmaBufMoveNotify,
} from "../dma-buf/dma-buf.ts";
import {
  dmaBufFd,
  dmaBufGet,
  dmaBufPut,
  O_CLOEXEC,
  openRegular,
  Process,
  sysClose,
  sysExit,
} from "../dma-buf/file.ts";
import { DmaFence } from "../dma-buf/resv.ts";
import { SysmemExporter } from "../dma-buf/sysmem-exporter.ts";
import {
  for_each_sgtable_dma_sg,
  for_each_sgtable_sg,
  type SgTable,
  sg_alloc_table,
  sg_free_table,
  sg_set_page,
  UINT_MAX,
} from "../lib/scatterlist.ts";
import { PROFILES } from "../profile.ts";
import { System } from "../system.ts";
import { Tracer } from "../trace.ts";
import { AccelDevice, HL_MEM_OP_ALLOC } from "./accel.ts";
import {
  hostMrRead,
  hostMrWrite,
  IBV_ACCESS_LOCAL_WRITE,
  IBV_ACCESS_MW_BIND,
  IBV_ACCESS_ON_DEMAND,
  IBV_ACCESS_RELAXED_ORDERING,
  IBV_ACCESS_REMOTE_ATOMIC,
  IBV_ACCESS_REMOTE_READ,
  IBV_ACCESS_REMOTE_WRITE,
  type IbUmemDmabuf,
  type IbvContext,
  type IbvMr,
  ibUmemDmabufGet,
  ibUmemDmabufGetPinned,
  ibUmemDmabufMapPages,
  ibUmemDmabufRevoke,
  ibUmemDmabufUnmapPages,
  ibUmemRelease,
  kernelMrOf,
  RdmaDevice,
  type RdmaOptions,
} from "./rdma.ts";

const KiB = 1n << 10n;
const MiB = 1n << 20n;
const BAR_START = 0x80_0000_0000n;
const BAR_SIZE = 16n * MiB;
type Profile = "6.1" | "mainline";

/**
 * Machine A: the accelerator (03:00.0) and an RDMA NIC (04:00.0) below one switch, a second NIC
 * (05:00.0) behind another root port. The host bridge id decides whether the root complex
 * forwards P2P (8086:2020 is on the allowlist).
 */
const machineA = (iommu: "dma" | "off", hostId: string) =>
  switchMachine({ exporter: habanalabs(BAR_START, BAR_SIZE), hostId, iommu });

interface AOpts {
  iommu?: "dma" | "off";
  hostId?: string;
  profile?: Profile;
  moveNotify?: boolean;
  rdma?: RdmaOptions;
  nic?: string;
}

function bedA(o: AOpts = {}) {
  const tracer = new Tracer(true);
  const sys = new System(machineA(o.iommu ?? "off", o.hostId ?? "8086:2020"), { tracer });
  const core = new DmaBufCore({
    profile: PROFILES[o.profile ?? "mainline"],
    moveNotify: o.moveNotify ?? false,
  });
  const hl = new AccelDevice(sys, core, "03:00.0");
  const nic = new RdmaDevice(sys, core, o.nic ?? "04:00.0", o.rdma ?? {});
  const proc = new Process("trainer-a");
  return { sys, core, hl, nic, proc, tracer };
}
type BedA = ReturnType<typeof bedA>;

/** HL_MEM_OP_ALLOC + MAP + EXPORT_DMABUF_FD by A's process: the fd, the dma-buf, `barOf`. */
const exportAccel = (b: BedA, size: bigint, mapSize = size) =>
  exportAccelMemory(b.hl, b.proc, size, mapSize);

/** Device DRAM fragmented so a 128 KiB allocation gets two discontiguous 64 KiB runs. */
function fragment(b: BedA): void {
  must(b.hl.memIoctl(b.proc, { op: HL_MEM_OP_ALLOC, mem_size: 64n * KiB }), "a1");
  const h2 = must(b.hl.memIoctl(b.proc, { op: HL_MEM_OP_ALLOC, mem_size: 64n * KiB }), "a2");
  must(b.hl.memIoctl(b.proc, { op: HL_MEM_OP_ALLOC, mem_size: 64n * KiB }), "a3");
  assert.ok(b.hl.freeDeviceMemory(h2.handle).ok, "free the middle allocation");
}

const pattern = (n: number, seed: number): Uint8Array =>
  Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 7 + 1) & 0xff);

/**
 * A static exporter whose map hands out the DMA entries it was given (page-less, as a BAR exporter
 * does) and records, at each unmap, the entries it got back.
 */
function tableExporter(core: DmaBufCore, entries: { dma: bigint; len: number }[], size: bigint) {
  const rec = {
    maps: 0,
    handed: [] as SgTable[],
    unmapped: [] as { dma: bigint; len: number }[][],
  };
  const ops: DmaBufOps = {
    map_dma_buf: () => {
      rec.maps++;
      const t = sg_alloc_table(entries.length, { name: "table exporter sgt" });
      if (!t.ok) return t;
      let i = 0;
      for (const sg of for_each_sgtable_sg(t.value)) {
        const e = entries[i++]!;
        sg_set_page(sg, null, 0, 0);
        sg.dma_address = dmaAddr(e.dma);
        sg.dma_length = e.len;
      }
      t.value.nents = entries.length;
      t.value.orig_nents = 0;
      rec.handed.push(t.value);
      return t;
    },
    unmap_dma_buf: (_a, sgt) => {
      rec.unmapped.push(
        [...for_each_sgtable_dma_sg(sgt)].map((sg) => ({
          dma: sg.dma_address,
          len: sg.dma_length,
        })),
      );
      sgt.orig_nents = sgt.nents;
      sg_free_table(sgt);
    },
    release: () => {},
  };
  const d = dmaBufExport(core, { exp_name: "table", ops, size, priv: rec });
  assert.ok(d.ok, "table exporter exports");
  return { rec, dmabuf: d.value };
}

function installFd(proc: Process, d: DmaBuf): number {
  return must(dmaBufFd(proc, d, O_CLOEXEC), "dma_buf_fd");
}

// ─────────────────────────────────────────────────────────────────────────────────────────────

describe("rdma: probe", () => {
  it("sets a 64-bit DMA mask and the driver's max segment size (mlx5: 2 GiB; EFA/irdma/bnxt_re: UINT_MAX)", () => {
    const a = bedA();
    assert.equal(a.nic.dev.dmaMask, DMA_BIT_MASK(64), "64-bit mask");
    assert.equal(a.nic.dev.coherentDmaMask, DMA_BIT_MASK(64), "64-bit coherent mask");
    assert.equal(a.nic.dev.maxSegSize, 2 ** 31, "mlx5 set_dma_caps: 2 GiB");
    const p = bedA({ rdma: { odp: false } });
    assert.equal(p.nic.dev.maxSegSize, UINT_MAX, "pinned providers: UINT_MAX");
    assert.equal(a.nic.name, "mlx5_0", "default name");
  });
});

describe("rdma: ib_umem_dmabuf_get (§5.2, scenario 42)", () => {
  function setup(profile: Profile = "mainline") {
    const a = bedA({ profile });
    const ex = new SysmemExporter(a.sys, { size: 16n * KiB });
    const d = must(ex.export(a.core), "sysmem export");
    const fd = installFd(a.proc, d);
    return { ...a, ex, d, fd };
  }

  it("offset + length beyond the buffer → EINVAL, and the dma_buf_get reference is dropped", () => {
    const s = setup();
    const before = s.d.file.count;
    const r = ibUmemDmabufGet(s.nic, s.proc, 8n * KiB, 8n * KiB + 1n, s.fd, 0, P2P_IMPORTER);
    assert.equal(errnoOf(r), "EINVAL", why(r));
    assert.equal(s.d.file.count, before, "reference dropped");
    assert.equal(s.d.attachments.length, 0, "nothing attached");
    const ok = ibUmemDmabufGet(s.nic, s.proc, 8n * KiB, 8n * KiB, s.fd, 0, P2P_IMPORTER);
    assert.ok(ok.ok, `exactly to the end is fine: ${why(ok)}`);
    ibUmemRelease(ok.value);
  });

  it("length 0 → EINVAL", () => {
    const s = setup();
    assert.equal(errnoOf(ibUmemDmabufGet(s.nic, s.proc, 0n, 0n, s.fd, 0, P2P_IMPORTER)), "EINVAL");
    assert.equal(s.d.attachments.length, 0, "nothing attached");
  });

  it("offset + length overflowing 64 bits → EINVAL, checked before the fd (a bad fd still says EINVAL)", () => {
    const s = setup();
    const off = (1n << 64n) - 4096n;
    assert.equal(
      errnoOf(ibUmemDmabufGet(s.nic, s.proc, off, 8192n, s.fd, 0, P2P_IMPORTER)),
      "EINVAL",
    );
    assert.equal(
      errnoOf(ibUmemDmabufGet(s.nic, s.proc, off, 8192n, 99, 0, P2P_IMPORTER)),
      "EINVAL",
    );
  });

  it("ops without move_notify (or none) → EINVAL before the fd is looked at", () => {
    const s = setup();
    const noMove = { allow_peer2peer: true } as DmaBufAttachOps;
    assert.equal(errnoOf(ibUmemDmabufGet(s.nic, s.proc, 0n, 4096n, s.fd, 0, noMove)), "EINVAL");
    assert.equal(errnoOf(ibUmemDmabufGet(s.nic, s.proc, 0n, 4096n, 99, 0, null)), "EINVAL");
    assert.equal(errnoOf(ibUmemDmabufGet(s.nic, s.proc, 0n, 4096n, 99, 0, P2P_IMPORTER)), "EBADF");
  });

  it("a regular file → EINVAL (dma_buf_get), its reference untouched", () => {
    const s = setup();
    const rfd = must(openRegular(s.proc, "notes.txt"), "open");
    const f = s.proc.fds.get(rfd)!.file;
    assert.equal(
      errnoOf(ibUmemDmabufGet(s.nic, s.proc, 0n, 4096n, rfd, 0, P2P_IMPORTER)),
      "EINVAL",
    );
    assert.equal(f.count, 1, "regular file count unchanged");
  });

  it("success attaches dynamically, maps nothing, keeps one reference until release", () => {
    const s = setup();
    const before = s.d.file.count;
    const u = must(
      ibUmemDmabufGet(s.nic, s.proc, 4096n, 8192n, s.fd, IBV_ACCESS_LOCAL_WRITE, P2P_IMPORTER),
      "get",
    );
    assert.equal(s.d.attachments.length, 1, "attached");
    assert.equal(s.d.attachments[0]!.peer2peer, true, "allow_peer2peer copied");
    assert.equal(s.ex.count("map"), 0, "no map yet");
    assert.equal(u.sgt, null, "unmapped");
    assert.equal(u.writable, true, "LOCAL_WRITE makes it writable");
    assert.equal(s.d.file.count, before + 1, "umem holds a reference");
    ibUmemRelease(u);
    assert.equal(s.d.attachments.length, 0, "detached at release");
    assert.equal(s.d.file.count, before, "reference dropped at release");
    assert.deepEqual(s.nic.leaks(), [], "nothing left in the device");
  });
});

describe("rdma: ib_umem_dmabuf_map_pages / unmap_pages (§5.5, scenario 47)", () => {
  const A0 = 0x1_0000_0000n;
  const A1 = 0x2_0000_0000n;
  const ENTRIES = [
    { dma: A0, len: 0x2000 },
    { dma: A1, len: 0x2000 },
  ];

  function mapped(offset: bigint, length: bigint, profile: Profile = "mainline") {
    const a = bedA({ profile });
    const { rec, dmabuf } = tableExporter(a.core, ENTRIES, 0x4000n);
    const fd = installFd(a.proc, dmabuf);
    const u = must(ibUmemDmabufGet(a.nic, a.proc, offset, length, fd, 0, P2P_IMPORTER), "get");
    dmabuf.resv.lock("test");
    const m = ibUmemDmabufMapPages(u);
    dmabuf.resv.unlock("test");
    assert.ok(m.ok, `map_pages: ${why(m)}`);
    return { a, rec, dmabuf, u };
  }
  const entry = (sgt: SgTable, i: number) => [...for_each_sgtable_dma_sg(sgt)][i]!;
  const unmap = (u: IbUmemDmabuf, d: DmaBuf) => {
    d.resv.lock("test");
    ibUmemDmabufUnmapPages(u);
    d.resv.unlock("test");
  };

  it("offset 0x1800 length 0x2000: window [0x1000, 0x4000), first entry +0x1000 / 0x1000 long, last trim 0, nents 2; unmap restores both exactly", () => {
    const { rec, dmabuf, u } = mapped(0x1800n, 0x2000n);
    const t = rec.handed[0]!;
    assert.equal(u.first_sg, entry(t, 0), "first covering entry is entry 0");
    assert.equal(u.first_sg_offset, 0x1000n, "first_sg_offset");
    assert.equal(entry(t, 0).dma_address, A0 + 0x1000n, "first entry advanced by 0x1000");
    assert.equal(entry(t, 0).dma_length, 0x1000, "first entry cut to 0x1000");
    assert.equal(u.last_sg, entry(t, 1), "last covering entry is entry 1");
    assert.equal(u.last_sg_trim, 0n, "last trim 0");
    assert.equal(entry(t, 1).dma_address, A1, "last entry address untouched");
    assert.equal(entry(t, 1).dma_length, 0x2000, "last entry length untouched");
    assert.equal(u.umem_nents, 2, "umem nents");
    assert.equal(u.umem_sgl, entry(t, 0), "umem view starts at the first covering entry");
    unmap(u, dmabuf);
    assert.deepEqual(rec.unmapped, [ENTRIES], "exporter gets its entries back exactly");
    assert.equal(u.sgt, null, "forgotten");
    assert.equal(u.first_sg, null, "first_sg cleared");
    assert.equal(u.last_sg, null, "last_sg cleared");
    ibUmemRelease(u);
  });

  it("offset 0 length 0x2800: first entry untouched, the last trimmed by 0x1000", () => {
    const { rec, dmabuf, u } = mapped(0n, 0x2800n);
    const t = rec.handed[0]!;
    assert.equal(u.first_sg_offset, 0n, "no leading excess");
    assert.equal(entry(t, 0).dma_address, A0, "first address");
    assert.equal(entry(t, 0).dma_length, 0x2000, "first length");
    assert.equal(u.last_sg_trim, 0x1000n, "trailing excess");
    assert.equal(entry(t, 1).dma_length, 0x1000, "last entry shortened");
    assert.equal(u.umem_nents, 2, "nents");
    unmap(u, dmabuf);
    assert.deepEqual(rec.unmapped, [ENTRIES], "restored");
    ibUmemRelease(u);
  });

  it("a window inside one entry: that entry is first and last, advanced and trimmed, nents 1", () => {
    const { rec, dmabuf, u } = mapped(0x2800n, 0x100n);
    const t = rec.handed[0]!;
    assert.equal(u.first_sg, entry(t, 1), "first = entry 1");
    assert.equal(u.last_sg, entry(t, 1), "last = entry 1");
    assert.equal(entry(t, 1).dma_address, A1, "window [0x2000, 0x3000) starts exactly at entry 1");
    assert.equal(u.first_sg_offset, 0n, "window [0x2000,0x3000) starts on entry 1");
    assert.equal(u.last_sg_trim, 0x1000n, "trim 0x1000");
    assert.equal(entry(t, 1).dma_length, 0x1000, "one page");
    assert.equal(u.umem_nents, 1, "nents 1");
    unmap(u, dmabuf);
    assert.deepEqual(rec.unmapped, [ENTRIES], "restored");
    ibUmemRelease(u);
  });

  it("mapping twice does not map again; the exporter sees one map", () => {
    const { rec, dmabuf, u } = mapped(0x1800n, 0x2000n);
    dmabuf.resv.lock("test");
    assert.ok(ibUmemDmabufMapPages(u).ok, "second map_pages");
    dmabuf.resv.unlock("test");
    assert.equal(rec.maps, 1, "one exporter map");
    assert.equal(u.first_sg_offset, 0x1000n, "trim not applied twice");
    assert.equal(entry(rec.handed[0]!, 0).dma_address, A0 + 0x1000n, "address advanced once");
    ibUmemRelease(u);
    assert.deepEqual(rec.unmapped, [ENTRIES], "release unmaps and restores");
  });

  it("6.1 core: the attach already mapped (dynamic importer, static exporter); map_pages trims the cached table and unmap_pages restores it in place", () => {
    const { a, rec, dmabuf, u } = mapped(0x1800n, 0x2000n, "6.1");
    assert.equal(rec.maps, 1, "mapped once, at attach");
    const t = rec.handed[0]!;
    assert.equal(entry(t, 0).dma_address, A0 + 0x1000n, "cached table trimmed");
    unmap(u, dmabuf);
    assert.equal(rec.unmapped.length, 0, "the cached mapping is not given back at unmap");
    assert.equal(entry(t, 0).dma_address, A0, "restored in place");
    assert.equal(entry(t, 0).dma_length, 0x2000, "length restored in place");
    ibUmemRelease(u);
    assert.deepEqual(rec.unmapped, [ENTRIES], "detach unmaps the cached table, intact");
    assert.deepEqual(a.nic.leaks(), [], "no leaks");
  });

  it("waits for KERNEL fences (clock advances to their signal) but not for WRITE fences", () => {
    const a = bedA();
    const { dmabuf } = tableExporter(a.core, ENTRIES, 0x4000n);
    const fd = installFd(a.proc, dmabuf);
    const u = must(ibUmemDmabufGet(a.nic, a.proc, 0n, 0x4000n, fd, 0, P2P_IMPORTER), "get");
    dmabuf.resv.lock("test");
    dmabuf.resv.addFence(new DmaFence({ name: "render", signalAt: 500 }), "write");
    assert.ok(ibUmemDmabufMapPages(u).ok, "map with a WRITE fence");
    assert.equal(a.core.clock.now, 0, "a WRITE fence is not waited for");
    dmabuf.resv.addFence(new DmaFence({ name: "move", signalAt: 50 }), "kernel");
    assert.ok(ibUmemDmabufMapPages(u).ok, "map again with a KERNEL fence");
    assert.equal(a.core.clock.now, 50, "waited for the KERNEL fence");
    dmabuf.resv.unlock("test");
    ibUmemRelease(u);
  });
});

describe("rdma: revoke (mainline UMEM-new, scenario 48)", () => {
  it("after revoke map_pages → EINVAL; revoke unmapped and unpinned", () => {
    const a = bedA({ moveNotify: true });
    const ex = new SysmemExporter(a.sys, { size: 16n * KiB, dynamic: true });
    const fd = installFd(a.proc, must(ex.export(a.core), "export"));
    const u = must(ibUmemDmabufGetPinned(a.nic, a.proc, 0n, 8192n, fd, 0), "pinned get");
    const d = u.attach!.dmabuf;
    assert.equal(ex.pins, 1, "pinned");
    assert.notEqual(u.sgt, null, "mapped");
    ibUmemDmabufRevoke(u);
    assert.equal(u.revoked, true, "revoked");
    assert.equal(u.sgt, null, "unmapped");
    assert.equal(u.pinned, false, "pinned cleared");
    assert.equal(ex.pins, 0, "unpinned");
    assert.equal(ex.outstanding.size, 0, "table given back");
    d.resv.lock("test");
    const m = ibUmemDmabufMapPages(u);
    d.resv.unlock("test");
    assert.equal(errnoOf(m), "EINVAL", why(m));
    ibUmemDmabufRevoke(u); // second revoke: nothing
    ibUmemRelease(u);
    assert.equal(d.attachments.length, 0, "detached");
  });

  it("6.1 has no ib_umem_dmabuf_revoke", () => {
    const a = bedA({ profile: "6.1" });
    const ex = new SysmemExporter(a.sys, { size: 16n * KiB });
    const fd = installFd(a.proc, must(ex.export(a.core), "export"));
    const u = must(ibUmemDmabufGet(a.nic, a.proc, 0n, 4096n, fd, 0, P2P_IMPORTER), "get");
    assert.throws(() => ibUmemDmabufRevoke(u), /does not exist in Linux 6.1/);
    ibUmemRelease(u);
  });
});

describe("rdma: UVERBS_METHOD_REG_DMABUF_MR checks (§5.6, scenarios 43–45)", () => {
  function setup(rdma: RdmaOptions = {}) {
    const a = bedA({ rdma });
    const ex = exportAccel(a, 64n * KiB);
    const ctx = must(a.nic.open(a.proc), "open");
    const pd = ctx.allocPd();
    return { ...a, ...ex, ctx, pd };
  }

  it("a provider without reg_user_mr_dmabuf → EOPNOTSUPP (before any other check)", () => {
    const s = setup({ dmabuf: false });
    assert.equal(errnoOf(s.ctx.regDmabufMr(s.pd, 0n, 4096n, 0n, s.fd, RW)), "EOPNOTSUPP");
    assert.equal(
      errnoOf(s.ctx.regDmabufMr(s.pd, 0n, 4096n, 0x800n, s.fd, IBV_ACCESS_REMOTE_WRITE)),
      "EOPNOTSUPP",
      "EOPNOTSUPP comes first",
    );
    // rdma-core's probe: DmaBufMR(pd, 1, 0, dmabuf)
    assert.equal(errnoOf(s.ctx.regDmabufMr(s.pd, 0n, 1n, 0n, s.fd, 0)), "EOPNOTSUPP", "probe");
    assert.equal(s.dmabuf.attachments.length, 0, "nothing attached");
  });

  it("rdma-core's probe DmaBufMR(pd, 1, 0, dmabuf) succeeds on a supporting provider", () => {
    const s = setup();
    const mr = must(s.ctx.regDmabufMr(s.pd, 0n, 1n, 0n, s.fd, 0), "probe");
    assert.equal(mr.length, 1n, "length 1");
    assert.ok(s.ctx.deregMr(mr).ok, "dereg");
  });

  it("offset and iova with different page offsets → EINVAL; same page offset is fine", () => {
    const s = setup();
    assert.equal(errnoOf(s.ctx.regDmabufMr(s.pd, 0x1000n, 4096n, 0x1800n, s.fd, RW)), "EINVAL");
    assert.equal(errnoOf(s.ctx.regDmabufMr(s.pd, 0x800n, 4096n, 0n, s.fd, RW)), "EINVAL");
    const mr = must(s.ctx.regDmabufMr(s.pd, 0x800n, 4096n, 0x7000_0800n, s.fd, RW), "same pgoff");
    assert.equal(mr.addr, 0x800n, "addr = offset");
    assert.equal(mr.iova, 0x7000_0800n, "iova as given");
    assert.equal(s.dmabuf.attachments.length, 1, "only the good one attached");
  });

  it("access bits outside LOCAL_WRITE|REMOTE_READ|REMOTE_WRITE|REMOTE_ATOMIC|RELAXED_ORDERING → EINVAL", () => {
    const s = setup();
    for (const bad of [IBV_ACCESS_MW_BIND, IBV_ACCESS_ON_DEMAND, 1 << 21, 1 << 8])
      assert.equal(
        errnoOf(s.ctx.regDmabufMr(s.pd, 0n, 4096n, 0n, s.fd, IBV_ACCESS_LOCAL_WRITE | bad)),
        "EINVAL",
        `bit 0x${bad.toString(16)}`,
      );
    assert.equal(s.dmabuf.attachments.length, 0, "nothing attached");
  });

  it("REMOTE_WRITE / REMOTE_ATOMIC without LOCAL_WRITE → EINVAL (ib_check_mr_access); with it → ok", () => {
    const s = setup();
    for (const f of [
      IBV_ACCESS_REMOTE_WRITE,
      IBV_ACCESS_REMOTE_ATOMIC,
      IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC,
      IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ,
    ])
      assert.equal(
        errnoOf(s.ctx.regDmabufMr(s.pd, 0n, 4096n, 0n, s.fd, f)),
        "EINVAL",
        `0x${f.toString(16)}`,
      );
    const mr = must(
      s.ctx.regDmabufMr(
        s.pd,
        0n,
        4096n,
        0n,
        s.fd,
        IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC,
      ),
      "legal",
    );
    assert.ok(mr.lkey > 0, "lkey set");
  });
});

describe("rdma: rdma-core test_dmabuf_mr.py cases (§5.8)", () => {
  const FLAGS = [
    IBV_ACCESS_LOCAL_WRITE,
    IBV_ACCESS_REMOTE_WRITE,
    IBV_ACCESS_REMOTE_READ,
    IBV_ACCESS_REMOTE_ATOMIC,
    IBV_ACCESS_RELAXED_ORDERING,
  ];
  const legal = (f: number) =>
    !(f & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) ||
    (f & IBV_ACCESS_LOCAL_WRITE) !== 0;
  const combos: number[] = [];
  for (let m = 1; m < 1 << FLAGS.length; m++) {
    const f = FLAGS.reduce((acc, x, i) => (m & (1 << i) ? acc | x : acc), 0);
    combos.push(f);
  }

  for (const odp of [true, false])
    it(`${odp ? "mlx5 (dynamic)" : "pinned provider"}: every legal flag combination × offsets {0, len/2} registers and deregisters; dereg twice is fine; illegal ones fail`, () => {
      const a = bedA({ rdma: { odp } });
      const ctx = must(a.nic.open(a.proc), "open");
      const pd = ctx.allocPd();
      const len = 64n * KiB;
      let registered = 0;
      for (const off of [0n, len / 2n]) {
        const ex = exportAccel(a, len + off);
        for (const f of combos) {
          const r = ctx.regDmabufMr(pd, off, len, off, ex.fd, f);
          if (!legal(f)) {
            assert.equal(errnoOf(r), "EINVAL", `illegal 0x${f.toString(16)} must fail`);
            continue;
          }
          const mr = must(r, `flags 0x${f.toString(16)} off ${off}`);
          registered++;
          assert.equal(mr.addr, off, "mr.addr = offset (libibverbs)");
          assert.equal(mr.length, len, "length");
          assert.equal(mr.kind, "dmabuf", "kind");
          assert.equal(mr.lkey, mr.rkey, "mlx5-style key");
          assert.ok(ctx.deregMr(mr).ok, "dereg");
          assert.ok(ctx.deregMr(mr).ok, "dereg twice: a no-op, as pyverbs' close()");
        }
        assert.equal(ex.dmabuf.attachments.length, 0, "every MR detached");
        assert.ok(sysClose(a.proc, ex.fd).ok, "close the dma-buf");
      }
      assert.equal(registered, 2 * combos.filter(legal).length, "all legal ones registered");
      assert.equal(combos.filter(legal).length, 19, "19 legal combinations of 5 flags");
      assert.equal(a.hl.dmabuf_export_cnt, 0, "every dma-buf released");
      assert.equal(a.hl.outstanding.size, 0, "every exporter table returned");
      assert.deepEqual(
        a.nic
          .leaks()
          .map((l) => l.kind)
          .sort(),
        ["pd", "rdma-context"],
        "only the context and PD remain",
      );
    });
});

describe("rdma: end to end — machine B writes into machine A's accelerator memory", () => {
  function e2e(iommu: "dma" | "off", hostId: string, odp = true) {
    const A = bedA({ iommu, hostId, rdma: { odp } });
    fragment(A);
    const ex = exportAccel(A, 128n * KiB);
    const B = remoteNicBed();
    const l = connectQps(A, B);
    const mrA = must(
      l.ctxA.regDmabufMr(l.pdA, 0n, 128n * KiB, 0x5000_0000n, ex.fd, RW),
      "dmabuf MR",
    );
    const mrB = must(l.ctxB.regMr(l.pdB, 128n * KiB, IBV_ACCESS_LOCAL_WRITE), "host MR");
    return { A, B, ex, ...l, mrA, mrB };
  }

  for (const odp of [true, false])
    it(`IOMMU off (${odp ? "mlx5" : "pinned"}): switch-local bus addresses; a WRITE across the two DRAM runs lands in the BAR; READ brings it back`, () => {
      const t = e2e("off", "8086:1234", odp);
      const k = kernelMrOf(t.mrA)!;
      assert.equal(k.mtt!.length, 2, "two discontiguous runs → two segments");
      assert.equal(k.mtt![0]!.dma, t.ex.barOf(0n), "first segment is the BAR address");
      assert.equal(k.mtt![1]!.dma, t.ex.barOf(64n * KiB), "second segment too");
      for (const s of k.mtt!) assert.equal(s.kind, "bus-address", "peer BAR without IOMMU");
      const data = pattern(10_000, 1);
      hostMrWrite(t.mrB, 0x100n, data);
      const off = 64n * KiB - 3000n;
      const wc = t.qpB.postWrite({
        local: t.mrB,
        localAddr: t.mrB.addr + 0x100n,
        length: BigInt(data.length),
        remoteAddr: t.mrA.iova + off,
        rkey: t.mrA.rkey,
      });
      assert.equal(wc.status, "IBV_WC_SUCCESS", wcText(wc));
      assert.equal(wc.byteLen, 10_000n, "byte_len");
      assert.deepEqual(
        t.A.sys.memory.read(t.ex.barOf(off), 3000),
        data.subarray(0, 3000),
        "first run",
      );
      assert.deepEqual(
        t.A.sys.cpuRead(t.ex.barOf(64n * KiB), 7000),
        data.subarray(3000),
        "second (discontiguous) run",
      );
      assert.deepEqual(
        t.A.sys.memory.read(t.ex.barOf(off - 1n), 1),
        new Uint8Array([0]),
        "nothing before",
      );
      // the accelerator computes: the CPU pokes new bytes into device memory; B reads them
      const fresh = pattern(5000, 9);
      t.A.sys.memory.write(t.ex.barOf(off), fresh.subarray(0, 3000));
      t.A.sys.memory.write(t.ex.barOf(64n * KiB), fresh.subarray(3000));
      const rd = t.qpB.postRead({
        local: t.mrB,
        localAddr: t.mrB.addr + 0x8000n,
        length: 5000n,
        remoteAddr: t.mrA.iova + off,
        rkey: t.mrA.rkey,
      });
      assert.equal(rd.status, "IBV_WC_SUCCESS", wcText(rd));
      assert.deepEqual(hostMrRead(t.mrB, 0x8000n, 5000), fresh, "READ brought the device bytes");
      assert.equal(t.qpB.bytesSent, 10_000n, "sent");
      assert.equal(t.qpB.bytesReceived, 5000n, "received");
      const evs = t.A.tracer.events.map((e) => e.ev);
      for (const ev of [
        "rdma:reg_dmabuf_mr",
        "rdma:map_pages",
        "rdma:map_seg",
        "rdma:write",
        "rdma:read",
      ])
        assert.ok(evs.includes(ev), `trace has ${ev}`);
      const reg = t.A.tracer.events.find((e) => e.ev === "rdma:reg_dmabuf_mr")!;
      assert.equal(reg.data?.["peer2peer"], true, "peer2peer traced");
      assert.equal(reg.data?.["dmabufSize"], 128n * KiB, "dma-buf size traced");
      assert.equal(reg.data?.["flow"], odp ? "dynamic" : "pinned", "flow traced");
    });

  it("IOMMU on, allowlisted root complex: the MR holds IOVAs; the write goes up, is translated, lands in the BAR", () => {
    const t = e2e("dma", "8086:2020");
    const k = kernelMrOf(t.mrA)!;
    for (const s of k.mtt!) assert.equal(s.kind, "iova", "IOVA");
    assert.notEqual(k.mtt![0]!.dma, t.ex.barOf(0n), "not the BAR address");
    const seg = t.A.tracer.events.find((e) => e.ev === "rdma:map_seg")!;
    assert.equal(seg.data?.["kind"], "iova", "map_seg traces the kind");
    const data = pattern(70_000, 2);
    const wc = writeFromHostMr(t.qpB, t.mrB, data, t.mrA.iova, t.mrA.rkey);
    assert.equal(wc.status, "IBV_WC_SUCCESS", wcText(wc));
    assert.deepEqual(t.A.sys.memory.read(t.ex.barOf(0n), 65536), data.subarray(0, 65536), "run 1");
    assert.deepEqual(
      t.A.sys.memory.read(t.ex.barOf(65536n), 70_000 - 65536),
      data.subarray(65536),
      "run 2",
    );
    const rd = t.qpB.postRead({
      local: t.mrB,
      localAddr: t.mrB.addr + 100_000n,
      length: 1000n,
      remoteAddr: t.mrA.iova + 65_000n,
      rkey: t.mrA.rkey,
    });
    assert.equal(rd.status, "IBV_WC_SUCCESS", wcText(rd));
    assert.deepEqual(hostMrRead(t.mrB, 100_000n, 1000), data.subarray(65_000, 66_000), "read back");
  });

  it("IOMMU on, root complex not forwarding P2P: registration works, the posted write is dropped by the fabric yet completes with success; a read gets an error completion", () => {
    const t = e2e("dma", "8086:1234");
    const data = pattern(4096, 3);
    hostMrWrite(t.mrB, 0n, data);
    const wr = {
      local: t.mrB,
      localAddr: t.mrB.addr,
      length: 4096n,
      remoteAddr: t.mrA.iova,
      rkey: t.mrA.rkey,
    };
    const wc = t.qpB.postWrite(wr);
    assert.equal(wc.status, "IBV_WC_SUCCESS", `posted writes are not acknowledged: ${wcText(wc)}`);
    assert.match(wc.detail ?? "", /posted writes dropped/, "the loss is in detail");
    assert.ok(t.A.sys.fabric.faults.length > 0, "the fabric recorded the fault");
    assert.deepEqual(
      t.A.sys.memory.read(t.ex.barOf(0n), 4096),
      new Uint8Array(4096),
      "nothing landed",
    );
    const rd = t.qpB.postRead(wr);
    assert.equal(rd.status, "IBV_WC_REM_OP_ERR", `a read needs a completion: ${wcText(rd)}`);
    assert.equal(t.qpB.state, "ERR", "requester QP in error");
    assert.equal(t.qpA.state, "ERR", "responder QP in error");
    assert.equal(t.qpB.postWrite(wr).status, "IBV_WC_WR_FLUSH_ERR", "flushed while in error");
    t.qpB.connect(t.qpA);
    assert.equal(t.qpB.postWrite({ ...wr, length: 0n }).status, "IBV_WC_SUCCESS", "re-armed");
  });

  it("an MR over [0x1800, +0x3000) of the dma-buf at iova 0x9000_0800: iova + n is dma-buf byte 0x1800 + n", () => {
    const A = bedA();
    const ex = exportAccel(A, 64n * KiB);
    const B = remoteNicBed();
    const l = connectQps(A, B);
    const mrA = must(l.ctxA.regDmabufMr(l.pdA, 0x1800n, 0x3000n, 0x9000_0800n, ex.fd, RW), "MR");
    assert.equal(mrA.addr, 0x1800n, "addr = offset");
    const mrB = must(l.ctxB.regMr(l.pdB, 0x3000n, IBV_ACCESS_LOCAL_WRITE), "host");
    const data = pattern(0x3000, 8);
    const wc = writeFromHostMr(l.qpB, mrB, data, 0x9000_0800n, mrA.rkey);
    assert.equal(wc.status, "IBV_WC_SUCCESS", wcText(wc));
    assert.deepEqual(
      A.sys.memory.read(ex.barOf(0x1800n), 0x3000),
      data,
      "landed at dma-buf offset 0x1800",
    );
    assert.deepEqual(A.sys.memory.read(ex.barOf(0x17ffn), 1), new Uint8Array(1), "not before it");
    assert.deepEqual(A.sys.memory.read(ex.barOf(0x4800n), 1), new Uint8Array(1), "not after it");
    const k = kernelMrOf(mrA)!;
    const umem = k.umem as IbUmemDmabuf;
    assert.equal(umem.first_sg_offset, 0x1000n, "window starts at 0x1000");
    assert.equal(k.mtt![0]!.dma, ex.barOf(0x1000n), "the translation starts at the window");
    const past = l.qpB.postWrite({
      local: mrB,
      localAddr: mrB.addr,
      length: 2n,
      remoteAddr: 0x9000_37ffn,
      rkey: mrA.rkey,
    });
    assert.equal(past.status, "IBV_WC_REM_ACCESS_ERR", "one byte past the MR");
  });

  it("an RDMA WRITE from A's device memory into B's host MR (A is the requester)", () => {
    const t = e2e("off", "8086:2020");
    const mrB = must(
      t.ctxB.regMr(t.pdB, 8192n, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE),
      "B target",
    );
    const data = pattern(6000, 4);
    t.A.sys.memory.write(t.ex.barOf(0n), data);
    const wc = t.qpA.postWrite({
      local: t.mrA,
      localAddr: t.mrA.iova,
      length: 6000n,
      remoteAddr: mrB.addr + 100n,
      rkey: mrB.rkey,
    });
    assert.equal(wc.status, "IBV_WC_SUCCESS", wcText(wc));
    assert.deepEqual(hostMrRead(mrB, 100n, 6000), data, "device bytes in B's host memory");
  });
});

describe("rdma: work-request errors", () => {
  function setup() {
    const A = bedA();
    const ex = exportAccel(A, 64n * KiB);
    const B = remoteNicBed();
    const l = connectQps(A, B);
    const mrB = must(l.ctxB.regMr(l.pdB, 16n * KiB, IBV_ACCESS_LOCAL_WRITE), "host MR");
    return { A, B, ex, ...l, mrB };
  }
  const wr = (
    local: IbvMr,
    remote: IbvMr,
    o: Partial<{ len: bigint; l: bigint; r: bigint; rkey: number }> = {},
  ) => ({
    local,
    localAddr: local.addr + (o.l ?? 0n),
    length: o.len ?? 4096n,
    remoteAddr: remote.iova + (o.r ?? 0n),
    rkey: o.rkey ?? remote.rkey,
  });

  it("remote MR without REMOTE_WRITE → IBV_WC_REM_ACCESS_ERR; with it → success", () => {
    const t = setup();
    const ro = must(
      t.ctxA.regDmabufMr(
        t.pdA,
        0n,
        4096n,
        0n,
        t.ex.fd,
        IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ,
      ),
      "ro",
    );
    const wc = t.qpB.postWrite(wr(t.mrB, ro));
    assert.equal(wc.status, "IBV_WC_REM_ACCESS_ERR", wcText(wc));
    t.qpB.connect(t.qpA);
    assert.equal(
      t.qpB.postRead(wr(t.mrB, ro)).status,
      "IBV_WC_SUCCESS",
      "REMOTE_READ allows a read",
    );
    const rw = must(t.ctxA.regDmabufMr(t.pdA, 0n, 4096n, 0n, t.ex.fd, RW), "rw");
    assert.equal(
      t.qpB.postWrite(wr(t.mrB, rw)).status,
      "IBV_WC_SUCCESS",
      "REMOTE_WRITE allows a write",
    );
  });

  it("remote MR without REMOTE_READ → READ fails with IBV_WC_REM_ACCESS_ERR", () => {
    const t = setup();
    const wo = must(
      t.ctxA.regDmabufMr(
        t.pdA,
        0n,
        4096n,
        0n,
        t.ex.fd,
        IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE,
      ),
      "wo",
    );
    assert.equal(t.qpB.postRead(wr(t.mrB, wo)).status, "IBV_WC_REM_ACCESS_ERR", "no REMOTE_READ");
  });

  it("wrong rkey and out-of-bounds remote range → IBV_WC_REM_ACCESS_ERR", () => {
    const t = setup();
    const mrA = must(t.ctxA.regDmabufMr(t.pdA, 0n, 8192n, 0n, t.ex.fd, RW), "mrA");
    assert.equal(
      t.qpB.postWrite(wr(t.mrB, mrA, { rkey: mrA.rkey + 1 })).status,
      "IBV_WC_REM_ACCESS_ERR",
      "rkey",
    );
    t.qpB.connect(t.qpA);
    assert.equal(
      t.qpB.postWrite(wr(t.mrB, mrA, { r: 4097n })).status,
      "IBV_WC_REM_ACCESS_ERR",
      "past the end",
    );
    t.qpB.connect(t.qpA);
    assert.equal(
      t.qpB.postWrite(wr(t.mrB, mrA, { r: 4096n })).status,
      "IBV_WC_SUCCESS",
      "exactly to the end",
    );
  });

  it("deregistered or out-of-range local MR → IBV_WC_LOC_PROT_ERR; READ into an MR without LOCAL_WRITE too", () => {
    const t = setup();
    const mrA = must(t.ctxA.regDmabufMr(t.pdA, 0n, 8192n, 0n, t.ex.fd, RW), "mrA");
    assert.equal(
      t.qpB.postWrite(wr(t.mrB, mrA, { l: 16n * KiB - 100n })).status,
      "IBV_WC_LOC_PROT_ERR",
      "local range",
    );
    t.qpB.connect(t.qpA);
    const gone = must(t.ctxB.regMr(t.pdB, 4096n, IBV_ACCESS_LOCAL_WRITE), "gone");
    assert.ok(t.ctxB.deregMr(gone).ok, "dereg");
    assert.equal(t.qpB.postWrite(wr(gone, mrA)).status, "IBV_WC_LOC_PROT_ERR", "deregistered lkey");
    t.qpB.connect(t.qpA);
    const noLw = must(t.ctxB.regMr(t.pdB, 4096n, IBV_ACCESS_REMOTE_READ), "no local write");
    assert.equal(
      t.qpB.postRead(wr(noLw, mrA)).status,
      "IBV_WC_LOC_PROT_ERR",
      "READ needs LOCAL_WRITE",
    );
    t.qpB.connect(t.qpA);
    assert.equal(t.qpB.postWrite(wr(noLw, mrA)).status, "IBV_WC_SUCCESS", "WRITE from it is fine");
  });

  it("the remote context closed → IBV_WC_RETRY_EXC_ERR", () => {
    const t = setup();
    const mrA = must(t.ctxA.regDmabufMr(t.pdA, 0n, 8192n, 0n, t.ex.fd, RW), "mrA");
    assert.ok(t.ctxA.close().ok, "close A's context");
    assert.equal(t.qpB.postWrite(wr(t.mrB, mrA)).status, "IBV_WC_RETRY_EXC_ERR", "no answer");
  });

  it("posting on a QP that was never connected throws (ibv_post_send would refuse it)", () => {
    const t = setup();
    const lone = t.ctxB.createQp(t.pdB);
    assert.throws(() => lone.postWrite(wr(t.mrB, t.mrB)), /not connected/);
  });
});

describe("rdma: a NIC that cannot reach the accelerator (habanalabs map → -EPERM)", () => {
  for (const profile of ["mainline", "6.1"] as const)
    for (const odp of [true, false])
      it(`${profile}, ${odp ? "mlx5 (maps at registration via mlx5_ib_init_dmabuf_mr)" : "pinned"}: registration fails with EPERM, nothing left behind`, () => {
        const a = bedA({ profile, nic: "05:00.0", hostId: "8086:1234", rdma: { odp } });
        const ex = exportAccel(a, 64n * KiB);
        const ctx = must(a.nic.open(a.proc), "open");
        const pd = ctx.allocPd();
        const before = ex.dmabuf.file.count;
        const r = ctx.regDmabufMr(pd, 0n, 64n * KiB, 0n, ex.fd, RW);
        assert.equal(errnoOf(r), "EPERM", why(r));
        assert.equal(ex.dmabuf.attachments.length, 0, "detached");
        assert.equal(ex.dmabuf.file.count, before, "dma_buf_get reference dropped");
        assert.equal(a.hl.outstanding.size, 0, "no table outstanding");
        assert.deepEqual(a.nic.mrs.size, 0, "no MR");
        assert.deepEqual(
          a.nic
            .leaks()
            .map((l) => l.kind)
            .sort(),
          ["pd", "rdma-context"],
          "only the context and PD",
        );
        assert.equal(pd.usecnt, 0, "PD unused");
      });
});

describe("rdma: dynamic MR invalidation (scenario 46, mlx5)", () => {
  function setup(moveNotify: boolean, profile: Profile = "mainline") {
    const A = bedA({ moveNotify, profile });
    const ex = new SysmemExporter(A.sys, { size: 64n * KiB, dynamic: true, name: "vram" });
    const d = must(ex.export(A.core), "export");
    const fd = installFd(A.proc, d);
    const B = remoteNicBed();
    const l = connectQps(A, B);
    const mrA = must(l.ctxA.regDmabufMr(l.pdA, 0n, 64n * KiB, 0n, fd, RW), "dmabuf MR");
    const mrB = must(l.ctxB.regMr(l.pdB, 64n * KiB, IBV_ACCESS_LOCAL_WRITE), "host MR");
    return { A, B, ex, d, fd, ...l, mrA, mrB };
  }

  for (const profile of ["mainline", "6.1"] as const)
    it(`${profile}: move_notify zaps the MTT and unmaps; the next WRITE faults, re-maps to the new pages and lands there`, () => {
      const t = setup(true, profile);
      const k = kernelMrOf(t.mrA)!;
      assert.equal(t.ex.count("map"), 1, "populated at registration");
      assert.equal(t.ex.pins, 0, "not pinned (CONFIG_DMABUF_MOVE_NOTIFY=y)");
      const oldMtt = k.mtt!;
      const oldPhys = t.ex.phys(0x100n);
      const w1 = writeFromHostMr(
        t.qpB,
        t.mrB,
        new TextEncoder().encode("first"),
        0x100n,
        t.mrA.rkey,
      );
      assert.equal(w1.status, "IBV_WC_SUCCESS", wcText(w1));
      assert.deepEqual(
        t.A.sys.memory.read(oldPhys as PhysAddr, 5),
        new TextEncoder().encode("first"),
        "first write",
      );
      t.d.resv.lock("exporter");
      assert.ok(t.ex.move().ok, "exporter moves the buffer");
      t.d.resv.unlock("exporter");
      const umem = k.umem as IbUmemDmabuf;
      assert.equal(k.mtt, null, "translation zapped");
      assert.equal(umem.sgt, null, "umem unmapped");
      assert.equal(t.ex.outstanding.size, 0, "table given back to the exporter");
      assert.ok(
        t.A.tracer.events.some((e) => e.ev === "rdma:invalidate"),
        "invalidate traced",
      );
      const newPhys = t.ex.phys(0x100n);
      assert.notEqual(newPhys, oldPhys, "the buffer moved");
      const w2 = writeFromHostMr(
        t.qpB,
        t.mrB,
        new TextEncoder().encode("again"),
        0x100n,
        t.mrA.rkey,
      );
      assert.equal(w2.status, "IBV_WC_SUCCESS", wcText(w2));
      assert.ok(
        t.A.tracer.events.some((e) => e.ev === "rdma:page_fault"),
        "page fault traced",
      );
      assert.equal(t.ex.count("map"), 2, "re-mapped");
      assert.notEqual(k.mtt![0]!.dma, oldMtt[0]!.dma, "new DMA addresses");
      assert.deepEqual(
        t.A.sys.memory.read(newPhys as PhysAddr, 5),
        new TextEncoder().encode("again"),
        "lands in the new place",
      );
      // a READ after another move faults again and sees the moved bytes
      t.d.resv.lock("exporter");
      assert.ok(t.ex.move().ok, "second move");
      t.d.resv.unlock("exporter");
      const r = t.qpB.postRead({
        local: t.mrB,
        localAddr: t.mrB.addr + 64n,
        length: 5n,
        remoteAddr: 0x100n,
        rkey: t.mrA.rkey,
      });
      assert.equal(r.status, "IBV_WC_SUCCESS", wcText(r));
      assert.deepEqual(
        hostMrRead(t.mrB, 64n, 5),
        new TextEncoder().encode("again"),
        "read the moved bytes",
      );
      assert.equal(t.ex.count("map"), 3, "faulted again");
    });

  it("a move_notify before anything is mapped again is a no-op (no sgt)", () => {
    const t = setup(true);
    t.d.resv.lock("exporter");
    assert.ok(t.ex.move().ok, "move 1");
    assert.ok(t.ex.move().ok, "move 2: the MR is not mapped, nothing to zap");
    t.d.resv.unlock("exporter");
    assert.equal(t.ex.count("unmap"), 1, "unmapped once");
  });

  it("with CONFIG_DMABUF_MOVE_NOTIFY=n the dynamic importer is pinned by map: the exporter cannot move (EBUSY)", () => {
    const t = setup(false);
    assert.equal(t.ex.pins, 1, "pin on map");
    t.d.resv.lock("exporter");
    const m = t.ex.move();
    t.d.resv.unlock("exporter");
    assert.equal(errnoOf(m), "EBUSY", why(m));
    assert.notEqual(kernelMrOf(t.mrA)!.mtt, null, "translation intact");
  });
});

describe("rdma: pinned MR (EFA / irdma / bnxt_re style)", () => {
  for (const profile of ["mainline", "6.1"] as const)
    it(`${profile}: dma_buf_pin at registration; move_notify only warns, the mapping is kept and writes land in the same place`, () => {
      const A = bedA({ profile, moveNotify: true, rdma: { odp: false } });
      const ex = new SysmemExporter(A.sys, { size: 32n * KiB, dynamic: true });
      const d = must(ex.export(A.core), "export");
      const fd = installFd(A.proc, d);
      const B = remoteNicBed();
      const l = connectQps(A, B);
      const mrA = must(l.ctxA.regDmabufMr(l.pdA, 0n, 32n * KiB, 0n, fd, RW), "pinned MR");
      const mrB = must(l.ctxB.regMr(l.pdB, 4096n, IBV_ACCESS_LOCAL_WRITE), "host");
      const k = kernelMrOf(mrA)!;
      const umem = k.umem as IbUmemDmabuf;
      assert.equal(umem.pinned, true, "pinned");
      assert.equal(d.attachments[0]!.pins, 1, "dma_buf_pin once");
      assert.equal(ex.pins, 1, "exporter pinned");
      d.resv.lock("exporter");
      assert.equal(errnoOf(ex.move()), "EBUSY", "pinned memory does not move");
      const mtt = k.mtt;
      dmaBufMoveNotify(d); // an exporter that invalidates anyway
      d.resv.unlock("exporter");
      const warning = "Invalidate callback should not be called when memory is pinned";
      assert.deepEqual(
        A.nic.log,
        [profile === "6.1" ? `${A.nic.name}: ${warning}` : warning],
        "only a warning",
      );
      assert.equal(k.mtt, mtt, "translation kept");
      assert.notEqual(umem.sgt, null, "still mapped");
      const wc = writeFromHostMr(l.qpB, mrB, pattern(100, 5), 0x2000n, mrA.rkey);
      assert.equal(wc.status, "IBV_WC_SUCCESS", wcText(wc));
      assert.deepEqual(
        A.sys.memory.read(ex.phys(0x2000n) as PhysAddr, 100),
        pattern(100, 5),
        "same place",
      );
      assert.ok(!A.tracer.events.some((e) => e.ev === "rdma:page_fault"), "no fault");
      assert.ok(l.ctxA.deregMr(mrA).ok, "dereg");
      assert.equal(ex.pins, 0, "unpinned at release");
      assert.equal(d.attachments.length, 0, "detached");
    });

  it("a pin the exporter refuses fails registration with its errno and releases the umem", () => {
    const A = bedA({ rdma: { odp: false } });
    const ex = new SysmemExporter(A.sys, {
      size: 16n * KiB,
      dynamic: true,
      pinFails: "EOPNOTSUPP",
    });
    const d = must(ex.export(A.core), "export");
    const fd = installFd(A.proc, d);
    const u = ibUmemDmabufGetPinned(A.nic, A.proc, 0n, 4096n, fd, 0);
    assert.equal(errnoOf(u), "EOPNOTSUPP", why(u));
    assert.equal(d.attachments.length, 0, "detached");
    assert.equal(ex.count("map"), 0, "never mapped");
  });

  it("dma_buf_pin on a static exporter is a no-op (habanalabs): the pinned flow maps at registration", () => {
    const A = bedA({ rdma: { odp: false } });
    const ex = exportAccel(A, 64n * KiB);
    const u = must(ibUmemDmabufGetPinned(A.nic, A.proc, 0n, 64n * KiB, ex.fd, 0), "pinned");
    assert.equal(A.hl.outstanding.size, 1, "mapped");
    assert.equal(u.pinned, true, "marked pinned");
    ibUmemRelease(u);
    assert.equal(A.hl.outstanding.size, 0, "unmapped at release");
  });
});

describe("rdma: page-size check (mlx5_umem_dmabuf_find_best_pgsz)", () => {
  it("an exporter handing out a segment that is not page aligned: mlx5 registration → EINVAL, unmapped and detached", () => {
    const a = bedA();
    const { rec, dmabuf } = tableExporter(
      a.core,
      [
        { dma: 0x1_0000_0000n, len: 0x1000 },
        { dma: 0x3_0000_0800n, len: 0x1000 },
      ],
      0x2000n,
    );
    const fd = installFd(a.proc, dmabuf);
    const ctx = must(a.nic.open(a.proc), "open");
    const r = ctx.regDmabufMr(ctx.allocPd(), 0n, 0x2000n, 0n, fd, RW);
    assert.equal(errnoOf(r), "EINVAL", why(r));
    assert.equal(rec.unmapped.length, 1, "unmapped");
    assert.equal(dmabuf.attachments.length, 0, "detached");
    // the pinned flow does not check (EFA's own page-size logic is not modelled)
    const p = bedA({ rdma: { odp: false } });
    const t2 = tableExporter(p.core, [{ dma: 0x1_0000_0000n, len: 0x2000 }], 0x2000n);
    const fd2 = installFd(p.proc, t2.dmabuf);
    const ctx2 = must(p.nic.open(p.proc), "open");
    assert.ok(
      ctx2.regDmabufMr(ctx2.allocPd(), 0n, 0x2000n, 0n, fd2, RW).ok,
      "aligned table registers",
    );
  });
});

describe("rdma: host MRs (ib_umem_get)", () => {
  it("pins the user pages (refcount 2) and maps them; dereg unpins and frees the buffer", () => {
    const B = remoteNicBed();
    const ctx = must(B.nic.open(B.proc), "open");
    const pd = ctx.allocPd();
    const mr = must(ctx.regMr(pd, 3n * 4096n + 10n, IBV_ACCESS_LOCAL_WRITE), "reg");
    const k = kernelMrOf(mr)!;
    const umem = k.umem;
    assert.ok(!umem.is_dmabuf, "host umem");
    if (umem.is_dmabuf) return;
    assert.equal(umem.pages.length, 4, "4 pages");
    for (const p of umem.pages) assert.equal(B.sys.pageRefCount(p), 2, "allocation + pin");
    assert.equal(k.mtt!.length, 1, "contiguous pages merge into one IOVA segment");
    assert.equal(k.mtt![0]!.kind, "iova", "IOMMU on B");
    assert.equal(pd.usecnt, 1, "PD in use");
    assert.equal(errnoOf(ctx.deallocPd(pd)), "EBUSY", "PD busy");
    assert.ok(ctx.deregMr(mr).ok, "dereg");
    for (const p of umem.pages) assert.equal(B.sys.pageRefCount(p), 0, "unpinned and freed");
    assert.throws(() => hostMrRead(mr, 0n, 1), /freed/, "buffer gone");
    assert.ok(ctx.deallocPd(pd).ok, "PD free now");
    assert.deepEqual(
      B.sys.leaks().filter((l) => l.kind === "iova" || l.kind === "iommu-mapping"),
      [],
      "IOVAs and IOMMU mappings returned",
    );
  });

  it("REMOTE_WRITE without LOCAL_WRITE → EINVAL; length 0 → EINVAL; ON_DEMAND on a non-ODP device → EINVAL", () => {
    const B = remoteNicBed({ rdma: { odp: false } });
    const ctx = must(B.nic.open(B.proc), "open");
    const pd = ctx.allocPd();
    assert.equal(errnoOf(ctx.regMr(pd, 4096n, IBV_ACCESS_REMOTE_WRITE)), "EINVAL", "remote write");
    assert.equal(errnoOf(ctx.regMr(pd, 0n, IBV_ACCESS_LOCAL_WRITE)), "EINVAL", "length 0");
    assert.equal(errnoOf(ctx.regMr(pd, 4096n, IBV_ACCESS_ON_DEMAND)), "EINVAL", "no ODP cap");
    assert.equal(pd.usecnt, 0, "nothing registered");
    assert.deepEqual(
      B.sys.leaks().filter((l) => l.kind === "page-ref"),
      [],
      "failed registrations freed their buffers",
    );
  });
});

describe("rdma: lifetime — process exit, fds, leaks", () => {
  function setup() {
    const A = bedA({ iommu: "dma", hostId: "8086:2020" });
    const ex = exportAccel(A, 64n * KiB);
    const B = remoteNicBed();
    const l = connectQps(A, B);
    const mrA = must(l.ctxA.regDmabufMr(l.pdA, 0n, 64n * KiB, 0n, ex.fd, RW), "dmabuf MR");
    const hostA = must(l.ctxA.regMr(l.pdA, 8192n, IBV_ACCESS_LOCAL_WRITE), "host MR on A");
    const mrB = must(l.ctxB.regMr(l.pdB, 8192n, IBV_ACCESS_LOCAL_WRITE), "host MR on B");
    return { A, B, ex, ...l, mrA, hostA, mrB };
  }

  it("leaks() names the live MR, its umem (attached, mapped), the QP, PD and context", () => {
    const t = setup();
    const kinds = new Set(t.A.nic.leaks().map((l) => l.kind));
    for (const k of ["mr", "attachment", "sg-mapping", "qp", "pd", "rdma-context", "page-ref"])
      assert.ok(kinds.has(k), `leaks() has ${k}`);
  });

  it("process exit with MRs open: every MR, umem, QP and PD released; the dma-buf freed; core, device and IOMMU clean", () => {
    const t = setup();
    sysExit(t.A.proc);
    assert.equal(t.ctxA.closed, true, "context destroyed with the uverbs file");
    assert.deepEqual(t.A.nic.leaks(), [], "device holds nothing");
    assert.deepEqual(t.A.core.leaks(), [], "dma-buf core holds nothing");
    assert.equal(t.A.core.buffers.size, 0, "no dma-buf left");
    assert.equal(t.A.hl.dmabuf_export_cnt, 0, "exporter released the buffer");
    assert.equal(t.A.hl.outstanding.size, 0, "no exporter table outstanding");
    assert.deepEqual(
      t.A.sys.leaks().filter((l) => ["iova", "iommu-mapping", "dma-debug-entry"].includes(l.kind)),
      [],
      "IOVAs and IOMMU mappings returned",
    );
    assert.equal(t.A.proc.fds.size, 0, "no fd left");
    const wc = t.qpB.postWrite({
      local: t.mrB,
      localAddr: t.mrB.addr,
      length: 16n,
      remoteAddr: 0n,
      rkey: t.mrA.rkey,
    });
    assert.equal(wc.status, "IBV_WC_RETRY_EXC_ERR", wcText(wc));
    assert.ok(
      t.A.tracer.events.some((e) => e.ev === "rdma:close"),
      "close traced",
    );
  });

  it("closing the dma-buf fd keeps the buffer alive for the MR; deregistering drops the last reference", () => {
    const t = setup();
    assert.ok(sysClose(t.A.proc, t.ex.fd).ok, "close dma-buf fd");
    assert.equal(t.A.hl.dmabuf_export_cnt, 1, "still exported: the umem holds a reference");
    const wc = writeFromHostMr(t.qpB, t.mrB, pattern(64, 6), 0n, t.mrA.rkey);
    assert.equal(wc.status, "IBV_WC_SUCCESS", wcText(wc));
    assert.deepEqual(t.A.sys.memory.read(t.ex.barOf(0n), 64), pattern(64, 6), "write landed");
    assert.ok(t.ctxA.deregMr(t.mrA).ok, "dereg");
    assert.equal(t.A.hl.dmabuf_export_cnt, 0, "released with the MR");
    assert.equal(t.A.core.buffers.size, 0, "off db_list");
  });

  it("closing the uverbs fd destroys everything; later deregs are no-ops and new registrations EBADF", () => {
    const t = setup();
    assert.ok(t.ctxA.close().ok, "close");
    assert.ok(t.ctxA.deregMr(t.mrA).ok, "dereg after close: no-op");
    assert.equal(errnoOf(t.ctxA.regDmabufMr(t.pdA, 0n, 4096n, 0n, t.ex.fd, RW)), "EBADF", "closed");
    assert.equal(t.ex.dmabuf.attachments.length, 0, "detached");
    assert.equal(t.A.nic.leaks().length, 0, "nothing left");
    assert.throws(() => (t.ctxA as IbvContext).allocPd(), /closed context/);
  });

  it("dma_buf_get/put balance: the umem's reference is the only extra one", () => {
    const t = setup();
    const d = must(dmaBufGet(t.A.proc, t.ex.fd), "get");
    assert.equal(d.file.count, 3, "fd + umem + this get");
    dmaBufPut(d);
  });
});
