import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  amdgpu,
  connectQps,
  exportAccelMemory,
  RW,
  remoteNicBed,
  switchMachine,
  writeFromHostMr,
} from "../../../../test/support/beds.ts";
import { errnoOf, must, quietCore, wcText, why } from "../../../../test/support/check.ts";
import { topo } from "../../../../test/support/topology.ts";
import { physAddr } from "../../hw/address.ts";
import type { IommuMode } from "../../hw/machine.ts";
import { dmaSetMaskAndCoherent } from "../dma/device.ts";
import {
  type DmaBufAttachment,
  type DmaBufAttachOps,
  dmaBufAttach,
  dmaBufDetach,
  dmaBufDynamicAttach,
  dmaBufMapAttachmentUnlocked,
  dmaBufUnmapAttachment,
  dmaBufUnmapAttachmentUnlocked,
} from "../dma-buf/attachment.ts";
import { DmaBufCore, dmaBufBeginCpuAccess } from "../dma-buf/dma-buf.ts";
import {
  dmaBufFd,
  dmaBufGet,
  dmaBufPut,
  O_CLOEXEC,
  O_RDWR,
  Process,
  sysClose,
  sysExit,
} from "../dma-buf/file.ts";
import { SysmemExporter } from "../dma-buf/sysmem-exporter.ts";
import { type Leak, type LeakSource, leakReport } from "../leaks.ts";
import { for_each_sgtable_dma_sg, type SgTable, sg_page } from "../lib/scatterlist.ts";
import { PROFILES } from "../profile.ts";
import { System } from "../system.ts";
import { Tracer } from "../trace.ts";
import { AccelDevice } from "./accel.ts";
import {
  AMDGPU_GEM_CREATE_CPU_GTT_USWC,
  AMDGPU_GEM_CREATE_ENCRYPTED,
  AMDGPU_GEM_CREATE_VM_ALWAYS_VALID,
  AMDGPU_GEM_DOMAIN_GTT,
  AMDGPU_GEM_DOMAIN_VRAM,
  buddyBlocks,
  DRM_CLOEXEC,
  DRM_RDWR,
  type GpuBo,
  GpuDevice,
} from "./gpu.ts";
import {
  hostMrRead,
  IBV_ACCESS_LOCAL_WRITE,
  kernelMrOf,
  RdmaDevice,
  type WorkCompletion,
} from "./rdma.ts";

const KiB = 1n << 10n;
const MiB = 1n << 20n;
const VRAM_BAR = 0x80_0000_0000n;
const BAR_SIZE = 16n * MiB;
const VRAM = AMDGPU_GEM_DOMAIN_VRAM;
const GTT = AMDGPU_GEM_DOMAIN_GTT;
type Profile = "6.1" | "mainline";

const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const leakText = (l: readonly Leak[]): string => l.map((x) => `${x.kind}: ${x.detail}`).join("\n");

/**
 * A PCIe switch below root port 00:01.0 with the GPU (03:00.0, VRAM BAR 0) and an RDMA NIC
 * (04:00.0) on two downstream ports; a second NIC (05:00.0) behind root port 00:02.0. The host
 * bridge 8086:1234 is not on the P2PDMA allowlist (05:00.0 cannot reach the GPU); 8086:2020 is.
 */
function machine(hostId: string) {
  const gpu = amdgpu([
    { index: 0, start: VRAM_BAR, size: BAR_SIZE },
    { index: 2, start: 0x90_0000_0000n, size: 2n * MiB },
    { index: 5, start: 0x90_1000_0000n, size: 512n * KiB },
  ]);
  return switchMachine({ exporter: gpu, hostId });
}

interface BedOpts {
  profile?: Profile;
  moveNotify?: boolean;
  vramSize?: bigint;
  hostId?: string;
}

function bed(o: BedOpts = {}) {
  const tracer = new Tracer(true);
  const sys = new System(machine(o.hostId ?? "8086:1234"), { tracer });
  const core = new DmaBufCore({
    profile: PROFILES[o.profile ?? "mainline"],
    moveNotify: o.moveNotify ?? true,
    tracer,
  });
  const gpu = new GpuDevice(sys, core, "03:00.0", { vramSize: o.vramSize ?? 4n * MiB });
  const proc = new Process("gpu-app");
  const file = must(gpu.open(proc), "open render node");
  return { sys, core, gpu, proc, file, tracer };
}
type Bed = ReturnType<typeof bed>;

/** A 64-bit capable importer device (a plain driver, not the RDMA model). */
function importerDev(b: Bed, bdf: string) {
  const dev = b.sys.device(bdf);
  dmaSetMaskAndCoherent(dev, 64);
  return dev;
}

/** GEM_CREATE + PRIME export: the handle, the BO, the dma-buf fd and the dma-buf. */
function exportBo(b: Bed, size: bigint, domain = VRAM, flags = 0) {
  const handle = must(b.file.createBo(size, domain, flags), "GEM_CREATE");
  const fd = must(b.file.exportFd(handle), "PRIME_HANDLE_TO_FD");
  const dmabuf = b.proc.fds.get(fd)!.file.private_data!;
  return { handle, bo: b.file.bo(handle)!, fd, dmabuf };
}

function newBo(
  b: Pick<Bed, "file">,
  size: bigint,
  domain = VRAM,
  flags = 0,
): { handle: number; bo: GpuBo } {
  const handle = must(b.file.createBo(size, domain, flags), "GEM_CREATE");
  return { handle, bo: b.file.bo(handle)! };
}

/** A dynamic importer that records each move_notify (and what the BO looked like then). */
function recordingImporter(peer2peer = true, onNotify?: (a: DmaBufAttachment) => void) {
  const seen: { placement: string | null; resvHeld: boolean }[] = [];
  const ops: DmaBufAttachOps = {
    allow_peer2peer: peer2peer,
    move_notify: (a) => {
      const bo = (a.dmabuf.priv as GpuBo) ?? null;
      seen.push({ placement: bo?.placement ?? null, resvHeld: a.dmabuf.resv.held });
      onNotify?.(a);
    },
  };
  return { ops, seen };
}

const evs = (t: Tracer, ev: string) => t.events.filter((e) => e.ev === ev);

function pageBacked(sgt: SgTable): boolean {
  return sgt.sgl !== null && sg_page(sgt.sgl) !== null;
}

function dmaEntries(sgt: SgTable) {
  return [...for_each_sgtable_dma_sg(sgt)].map((s) => ({
    dma: s.dma_address as bigint,
    len: BigInt(s.dma_length),
  }));
}

/** Everything closed: fds, handles, the device file; then nothing may be left anywhere. */
function closeAll(b: Bed, fds: number[], extra: LeakSource[] = []): void {
  for (const fd of fds) assert.ok(sysClose(b.proc, fd).ok, `close fd ${fd}`);
  assert.ok(b.file.close().ok, "close the render node");
  const leaks = leakReport([b.sys, b.core, b.gpu, b.proc, ...extra]);
  assert.deepEqual(leaks, [], `leaks:\n${leakText(leaks)}`);
  assert.equal(b.gpu.bos.size, 0, "every BO freed");
  assert.equal(b.gpu.vramUsed, 0n, "VRAM empty");
  assert.equal(b.gpu.gttUsed, 0n, "GTT empty");
  quietCore(b.core);
}

const inRam = (b: Bed, dma: bigint): boolean => b.sys.memory.regionAt(dma)?.kind === "ram";
const inVramBar = (dma: bigint): boolean => dma >= VRAM_BAR && dma < VRAM_BAR + BAR_SIZE;

// ─────────────────────────────────────────────────────────────────────────────────────────────

describe("gpu: scenario 39 — map places the BO where the importer can reach it", () => {
  for (const profile of ["mainline", "6.1"] as const)
    it(`${profile}: importer that cannot do P2P (downgraded at attach): map migrates the VRAM BO to GTT, returns a page-backed table, its DMA lands in RAM`, () => {
      const b = bed({ profile });
      const x = exportBo(b, 1n * MiB);
      assert.equal(x.bo.placement, "vram", "created in VRAM");
      b.file.cpuWrite(x.handle, 0x100n, text("hello"));
      const oldPhys = x.bo.phys(0x200n);
      const dev = importerDev(b, "05:00.0");
      const imp = recordingImporter(true);
      const a = must(dmaBufDynamicAttach(x.dmabuf, dev, imp.ops), "attach");
      assert.equal(a.peer2peer, false, "peer2peer cleared: pci_p2pdma_distance < 0");
      const att = evs(b.tracer, "gpu:attach").at(-1)!;
      assert.ok((att.data?.["distance"] as number) < 0, "attach traced the negative distance");
      const sgt = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map");
      assert.equal(x.bo.placement, "gtt", "migrated to GTT");
      assert.equal(x.bo.pin_count, 0, "dynamic importer with MOVE_NOTIFY=y: not pinned");
      const mig = evs(b.tracer, "gpu:migrate");
      assert.equal(mig.length, 1, "one migration");
      assert.equal(mig[0]!.data?.["from"], "vram", "from VRAM");
      assert.equal(mig[0]!.data?.["to"], "gtt", "to GTT");
      assert.match(
        String(mig[0]!.data?.["why"]),
        /no peer2peer/,
        "why: the importer cannot do P2P",
      );
      assert.ok(pageBacked(sgt), "page-backed table (struct pages of system RAM)");
      assert.ok(sgt.orig_nents > 0, "CPU entries present");
      for (const e of dmaEntries(sgt)) assert.ok(inRam(b, e.dma), `entry ${e.dma} is in RAM`);
      const map = evs(b.tracer, "gpu:map").at(-1)!;
      const kinds = ((map.data?.["entries"] ?? []) as { kind: string }[]).map((e) => e.kind);
      assert.deepEqual([...new Set(kinds)], ["physical"], "gpu:map traces physical addresses");
      assert.deepEqual(
        b.file.cpuRead(x.handle, 0x100n, 5),
        text("hello"),
        "bytes survived the move",
      );
      assert.equal(imp.seen.length, 1, "the mapping importer itself was told of the move");
      // the NIC DMA-writes through its table: the bytes land in the BO's RAM pages
      const first = dmaEntries(sgt)[0]!;
      const w = b.sys.deviceWrite(dev, first.dma + 0x200n, text("from-nic"));
      assert.ok(w.ok, "device write accepted by the fabric");
      assert.deepEqual(b.file.cpuRead(x.handle, 0x200n, 8), text("from-nic"), "lands in the BO");
      assert.ok(inRam(b, x.bo.phys(0x200n)), "which is RAM now");
      assert.notDeepEqual(b.sys.memory.read(oldPhys, 8), text("from-nic"), "not in the old VRAM");
      dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
      dmaBufDetach(x.dmabuf, a);
      closeAll(b, [x.fd]);
    });

  for (const profile of ["mainline", "6.1"] as const)
    it(`${profile}: P2P-capable dynamic importer on the same switch: the BO stays in VRAM, the table is page-less with BAR bus addresses, its DMA lands in VRAM`, () => {
      const b = bed({ profile });
      const x = exportBo(b, 1n * MiB);
      const dev = importerDev(b, "04:00.0");
      const imp = recordingImporter(true);
      const a = must(dmaBufDynamicAttach(x.dmabuf, dev, imp.ops), "attach");
      assert.equal(a.peer2peer, true, "peer2peer kept: same switch");
      const sgt = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map");
      assert.equal(x.bo.placement, "vram", "still in VRAM");
      assert.equal(evs(b.tracer, "gpu:migrate").length, 0, "no migration");
      assert.equal(imp.seen.length, 0, "no move, no move_notify");
      assert.equal(pageBacked(sgt), false, "page-less table");
      let covered = 0n;
      for (const e of dmaEntries(sgt)) {
        assert.ok(inVramBar(e.dma), `entry 0x${e.dma.toString(16)} is in the VRAM BAR`);
        covered += e.len;
      }
      assert.equal(covered, x.bo.size, "the entries cover the BO");
      assert.equal(dmaEntries(sgt)[0]!.dma, x.bo.phys(0n), "first entry is the BO's BAR address");
      const map = evs(b.tracer, "gpu:map").at(-1)!;
      const kinds = ((map.data?.["entries"] ?? []) as { kind: string }[]).map((e) => e.kind);
      assert.deepEqual([...new Set(kinds)], ["bus-address"], "gpu:map traces bus addresses");
      const w = b.sys.deviceWrite(dev, dmaEntries(sgt)[0]!.dma + 0x40n, text("p2p"));
      assert.ok(w.ok, "switch-local P2P write accepted");
      assert.deepEqual(b.file.cpuRead(x.handle, 0x40n, 3), text("p2p"), "landed in VRAM");
      dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
      dmaBufDetach(x.dmabuf, a);
      closeAll(b, [x.fd]);
    });

  it("a BO created in GTT mapped by a P2P importer stays in GTT (map only allows VRAM for BOs preferring it)", () => {
    const b = bed();
    const x = exportBo(b, 64n * KiB, GTT);
    assert.equal(x.bo.placement, "gtt", "created in GTT");
    const a = must(
      dmaBufDynamicAttach(x.dmabuf, importerDev(b, "04:00.0"), recordingImporter().ops),
      "attach",
    );
    const sgt = must(dmaBufMapAttachmentUnlocked(a, "to-device"), "map");
    assert.equal(x.bo.placement, "gtt", "still GTT");
    assert.ok(pageBacked(sgt), "page-backed");
    dmaBufUnmapAttachmentUnlocked(a, sgt, "to-device");
    dmaBufDetach(x.dmabuf, a);
    closeAll(b, [x.fd]);
  });

  for (const profile of ["mainline", "6.1"] as const)
    it(`${profile}: a static importer (peer2peer always false) gets the BO pinned in GTT and a page-backed table`, () => {
      const b = bed({ profile });
      const x = exportBo(b, 256n * KiB);
      const a = must(dmaBufAttach(x.dmabuf, importerDev(b, "04:00.0")), "static attach");
      assert.equal(a.peer2peer, false, "static importers never get peer2peer");
      const sgt = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map");
      assert.equal(x.bo.placement, "gtt", "migrated to GTT");
      assert.equal(x.bo.pin_count, 1, "pinned (pin on map / 6.1: pinned at attach)");
      assert.ok(pageBacked(sgt), "page-backed");
      assert.equal(
        evs(b.tracer, "gpu:pin").at(-1)?.data?.["placement"],
        "gtt",
        "pin traced in GTT",
      );
      dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
      if (profile === "mainline") assert.equal(x.bo.pin_count, 0, "unmap unpinned");
      else assert.equal(x.bo.pin_count, 1, "6.1: the cached mapping keeps the attach-time pin");
      dmaBufDetach(x.dmabuf, a);
      assert.equal(x.bo.pin_count, 0, "unpinned by now");
      closeAll(b, [x.fd]);
    });
});

describe("gpu: scenario 40 — where a dma_buf_pin puts the BO", () => {
  function pinnedMr(b: Bed, fd: number) {
    const nic = new RdmaDevice(b.sys, b.core, "04:00.0", { odp: false });
    const ctx = must(nic.open(b.proc), "ibv_open_device");
    const pd = ctx.allocPd();
    const mr = must(ctx.regDmabufMr(pd, 0n, 256n * KiB, 0n, fd, RW), "pinned dma-buf MR");
    return { nic, ctx, pd, mr };
  }

  it("mainline, MOVE_NOTIFY=y: a pinned P2P importer (RDMA without ODP) alone → pinned in VRAM, MR holds BAR addresses", () => {
    const b = bed();
    const x = exportBo(b, 256n * KiB);
    const r = pinnedMr(b, x.fd);
    assert.equal(x.bo.placement, "vram", "VRAM kept");
    assert.equal(x.bo.pin_count, 1, "pinned");
    assert.ok(!b.gpu.lru.includes(x.bo), "off the LRU");
    for (const s of kernelMrOf(r.mr)!.mtt!) assert.equal(s.kind, "bus-address", "BAR address");
    assert.match(
      String(evs(b.tracer, "gpu:pin").at(-1)?.data?.["why"]),
      /every attachment can do P2P/,
      "pin reason traced",
    );
    assert.ok(r.ctx.deregMr(r.mr).ok, "dereg");
    assert.equal(x.bo.pin_count, 0, "unpinned");
    assert.ok(r.ctx.close().ok, "close uverbs");
    closeAll(b, [x.fd], [r.nic]);
  });

  it("mainline, MOVE_NOTIFY=y: with one non-P2P attachment present the pin lands in GTT (never VRAM)", () => {
    const b = bed();
    const x = exportBo(b, 256n * KiB);
    const other = must(dmaBufAttach(x.dmabuf, importerDev(b, "05:00.0")), "static attach");
    const r = pinnedMr(b, x.fd);
    assert.equal(x.bo.placement, "gtt", "pinned in GTT");
    assert.equal(x.bo.pin_count, 1, "pinned once");
    for (const s of kernelMrOf(r.mr)!.mtt!) assert.equal(s.kind, "physical", "RAM addresses");
    assert.match(
      String(evs(b.tracer, "gpu:pin").at(-1)?.data?.["why"]),
      /without peer2peer/,
      "pin reason names the blocking attachment",
    );
    assert.ok(r.ctx.deregMr(r.mr).ok, "dereg");
    dmaBufDetach(x.dmabuf, other);
    assert.ok(r.ctx.close().ok, "close uverbs");
    closeAll(b, [x.fd], [r.nic]);
  });

  it("mainline, MOVE_NOTIFY=n: even an all-P2P pin is never in VRAM", () => {
    const b = bed({ moveNotify: false });
    const x = exportBo(b, 256n * KiB);
    const r = pinnedMr(b, x.fd);
    assert.equal(x.bo.placement, "gtt", "GTT");
    assert.match(
      String(evs(b.tracer, "gpu:pin").at(0)?.data?.["why"]),
      /CONFIG_DMABUF_MOVE_NOTIFY=n/,
      "reason traced",
    );
    assert.ok(r.ctx.deregMr(r.mr).ok, "dereg");
    assert.ok(r.ctx.close().ok, "close uverbs");
    closeAll(b, [x.fd], [r.nic]);
  });

  it("6.1: amdgpu_dma_buf_pin always pins into GTT, even for an all-P2P importer", () => {
    const b = bed({ profile: "6.1" });
    const x = exportBo(b, 256n * KiB);
    const r = pinnedMr(b, x.fd);
    assert.equal(x.bo.placement, "gtt", "GTT");
    for (const s of kernelMrOf(r.mr)!.mtt!) assert.equal(s.kind, "physical", "RAM addresses");
    assert.ok(r.ctx.deregMr(r.mr).ok, "dereg");
    assert.ok(r.ctx.close().ok, "close uverbs");
    closeAll(b, [x.fd], [r.nic]);
  });
});

describe("gpu: scenario 41 — eviction of an exported BO", () => {
  for (const profile of ["mainline", "6.1"] as const)
    it(`${profile}: dma_buf_move_notify is issued under the resv before the move; the bytes survive; a plain BO moves silently`, () => {
      const b = bed({ profile });
      const x = exportBo(b, 2n * MiB);
      b.file.cpuWrite(x.handle, 0x1234n, text("payload"));
      let sgt: SgTable | null = null;
      let a: DmaBufAttachment | null = null;
      // a well-behaved dynamic importer: tears its mapping down in move_notify
      const imp = recordingImporter(true, (att) => {
        assert.deepEqual(
          b.gpu.cpuRead(x.bo, 0x1234n, 7),
          text("payload"),
          "bytes still at the old place",
        );
        if (sgt) dmaBufUnmapAttachment(att, sgt, "bidirectional");
        sgt = null;
      });
      a = must(dmaBufDynamicAttach(x.dmabuf, importerDev(b, "04:00.0"), imp.ops), "attach");
      sgt = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map");
      const plain = newBo(b, 1n * MiB);
      const ev = must(b.gpu.evictFirst(), "evict the LRU head");
      assert.equal(ev, x.bo, "the least recently used BO went first");
      assert.deepEqual(
        imp.seen,
        [{ placement: "vram", resvHeld: true }],
        "notified once, while still in VRAM, under the resv",
      );
      assert.equal(x.bo.placement, "gtt", "evicted to GTT");
      assert.equal(x.bo.evictions, 1, "counted as an eviction");
      const names = b.tracer.events.map((e) => e.ev);
      const notify = names.lastIndexOf("dma_buf:move_notify");
      const migrate = names.lastIndexOf("gpu:migrate");
      assert.ok(notify >= 0 && notify < migrate, "move_notify traced before the migration");
      assert.equal(sgt, null, "the importer unmapped in its callback");
      assert.deepEqual(b.file.cpuRead(x.handle, 0x1234n, 7), text("payload"), "bytes copied");
      const before = evs(b.tracer, "dma_buf:move_notify").length;
      assert.equal(must(b.gpu.evictFirst(), "evict next"), plain.bo, "the plain BO next");
      assert.equal(plain.bo.placement, "gtt", "plain BO evicted");
      assert.equal(evs(b.tracer, "dma_buf:move_notify").length, before, "no move_notify for it");
      const none = b.gpu.evictFirst();
      assert.equal(
        errnoOf(none),
        profile === "6.1" ? "EBUSY" : "ENOENT",
        `nothing evictable: ttm evict-first errno (${why(none)})`,
      );
      dmaBufDetach(x.dmabuf, a);
      closeAll(b, [x.fd]);
    });

  it("LRU: a command submission touching a BO moves it to the LRU tail, so pressure evicts the other one", () => {
    const b = bed();
    const p = newBo(b, 2n * MiB);
    const q = newBo(b, 2n * MiB);
    assert.deepEqual(
      b.gpu.lru.map((x) => x.id),
      [p.bo.id, q.bo.id],
      "LRU in creation order",
    );
    assert.ok(b.file.submit([p.handle]).ok, "CS with p");
    const r = newBo(b, 2n * MiB); // VRAM is full: the create evicts the LRU head
    assert.equal(r.bo.placement, "vram", "new BO in VRAM");
    assert.equal(q.bo.placement, "gtt", "q (least recently used) evicted");
    assert.equal(p.bo.placement, "vram", "p stayed");
    assert.ok(b.file.submit([q.handle]).ok, "CS with q: back to its preferred VRAM");
    assert.equal(q.bo.placement, "vram", "q validated back into VRAM");
    assert.equal(p.bo.placement, "gtt", "evicting p, now the LRU head");
    closeAll(b, []);
  });
});

describe("gpu: eviction invalidates a dynamic RDMA MR, which re-faults to the new location", () => {
  for (const profile of ["mainline", "6.1"] as const)
    it(`${profile}: WRITE lands in VRAM; VRAM pressure evicts the BO (MR zapped); the next WRITE faults, maps the GTT pages and lands in RAM; bytes survive`, () => {
      const A = bed({ profile });
      const nicA = new RdmaDevice(A.sys, A.core, "04:00.0", { odp: true });
      const x = exportBo(A, 2n * MiB);
      const y = newBo(A, 2n * MiB); // VRAM (4 MiB) is now full
      const B = remoteNicBed({ moveNotify: true });
      const { ctxA, ctxB, pdA, pdB, qpB } = connectQps({ nic: nicA, proc: A.proc }, B);
      const mrA = must(ctxA.regDmabufMr(pdA, 0n, 2n * MiB, 0n, x.fd, RW), "dynamic dma-buf MR");
      const mrB = must(ctxB.regMr(pdB, 64n * KiB, IBV_ACCESS_LOCAL_WRITE), "host MR on B");
      const k = kernelMrOf(mrA)!;
      assert.equal(k.dynamic, true, "mlx5 dynamic MR");
      for (const s of k.mtt!) assert.equal(s.kind, "bus-address", "MR points at the VRAM BAR");
      const write = (off: bigint, s: string): WorkCompletion =>
        writeFromHostMr(qpB, mrB, text(s), off, mrA.rkey);
      const w1 = write(0x1000n, "first");
      assert.equal(w1.status, "IBV_WC_SUCCESS", wcText(w1));
      assert.ok(inVramBar(x.bo.phys(0x1000n)), "BO in VRAM");
      assert.deepEqual(A.file.cpuRead(x.handle, 0x1000n, 5), text("first"), "landed in VRAM");

      // memory pressure: another VRAM-only BO; x is the LRU head
      const z = newBo(A, 2n * MiB);
      assert.equal(z.bo.placement, "vram", "the new BO got VRAM");
      assert.equal(x.bo.placement, "gtt", "x evicted to GTT");
      assert.equal(y.bo.placement, "vram", "y stayed (more recently used)");
      assert.equal(k.mtt, null, "MR translation zapped by move_notify");
      assert.ok(evs(A.tracer, "gpu:evict").length === 1, "eviction traced");
      assert.ok(evs(A.tracer, "rdma:invalidate").length === 1, "invalidation traced");
      assert.deepEqual(A.file.cpuRead(x.handle, 0x1000n, 5), text("first"), "bytes copied to GTT");

      const w2 = write(0x2000n, "again");
      assert.equal(w2.status, "IBV_WC_SUCCESS", wcText(w2));
      assert.ok(evs(A.tracer, "rdma:page_fault").length >= 1, "the NIC faulted");
      assert.equal(x.bo.placement, "gtt", "the re-map kept it in GTT (VRAM is full)");
      for (const s of k.mtt!) assert.equal(s.kind, "physical", "MR now points at RAM");
      assert.ok(inRam(A, x.bo.phys(0x2000n)), "the BO's bytes are in RAM");
      assert.deepEqual(A.file.cpuRead(x.handle, 0x2000n, 5), text("again"), "landed in GTT");
      const rd = qpB.postRead({
        local: mrB,
        localAddr: mrB.addr + 0x100n,
        length: 5n,
        remoteAddr: 0x1000n,
        rkey: mrA.rkey,
      });
      assert.equal(rd.status, "IBV_WC_SUCCESS", wcText(rd));
      assert.deepEqual(hostMrRead(mrB, 0x100n, 5), text("first"), "READ sees the moved bytes");

      // VRAM frees up; a command submission validates x (shared: allowed domains VRAM|GTT)
      assert.ok(A.file.closeHandle(z.handle).ok, "free the pressure BO");
      const invalidations = evs(A.tracer, "rdma:invalidate").length;
      assert.ok(A.file.submit([x.handle]).ok, "CS with x");
      if (profile === "mainline") {
        assert.equal(x.bo.placement, "vram", "mainline: GTT is only a FALLBACK: back to VRAM");
        assert.equal(k.mtt, null, "that move zapped the MR again");
        assert.equal(evs(A.tracer, "rdma:invalidate").length, invalidations + 1, "one more");
      } else {
        assert.equal(x.bo.placement, "gtt", "6.1: GTT is compatible, the BO stays");
        assert.notEqual(k.mtt, null, "MR untouched");
      }
      const w3 = write(0x3000n, "third");
      assert.equal(w3.status, "IBV_WC_SUCCESS", wcText(w3));
      assert.deepEqual(A.file.cpuRead(x.handle, 0x3000n, 5), text("third"), "third write");
      assert.deepEqual(A.file.cpuRead(x.handle, 0x1000n, 5), text("first"), "first survived");
      for (const s of k.mtt!)
        assert.equal(
          s.kind,
          profile === "mainline" ? "bus-address" : "physical",
          "the MR follows the BO",
        );

      assert.ok(ctxA.deregMr(mrA).ok, "dereg A");
      assert.ok(ctxB.deregMr(mrB).ok, "dereg B");
      assert.ok(ctxA.close().ok, "close A");
      assert.ok(ctxB.close().ok, "close B");
      closeAll(A, [x.fd], [nicA, B.sys, B.core, B.nic, B.proc]);
    });
});

describe("gpu: a pinned BO blocks eviction", () => {
  it("mainline: a static importer's mapping pins the BO (in GTT); CS cannot move it back until unmapped", () => {
    const b = bed();
    const x = exportBo(b, 2n * MiB);
    const a = must(dmaBufAttach(x.dmabuf, importerDev(b, "04:00.0")), "static attach");
    const sgt = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map");
    assert.equal(x.bo.placement, "gtt", "pinned in GTT");
    assert.ok(b.file.submit([x.handle]).ok, "CS");
    assert.equal(x.bo.placement, "gtt", "a pinned BO is not validated elsewhere");
    assert.equal(b.gpu.evict().ok, true, "evict all VRAM");
    assert.equal(x.bo.placement, "gtt", "and not touched by eviction");
    dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
    dmaBufDetach(x.dmabuf, a);
    assert.ok(b.file.submit([x.handle]).ok, "CS after unpin");
    assert.equal(x.bo.placement, "vram", "back to its preferred VRAM");
    closeAll(b, [x.fd]);
  });

  it("mainline: a BO pinned in VRAM by a P2P importer is skipped; pressure evicts the others, then ttm evict-first says -ENOENT; a VRAM-only create falls back to GTT", () => {
    const b = bed();
    const x = exportBo(b, 2n * MiB);
    const nic = new RdmaDevice(b.sys, b.core, "04:00.0", { odp: false });
    const ctx = must(nic.open(b.proc), "open");
    const pd = ctx.allocPd();
    const mr = must(ctx.regDmabufMr(pd, 0n, 2n * MiB, 0n, x.fd, RW), "pinned MR");
    assert.equal(x.bo.placement, "vram", "pinned in VRAM");
    const y = newBo(b, 2n * MiB);
    const z = newBo(b, 2n * MiB); // VRAM full: evicts y, not the pinned x
    assert.equal(x.bo.placement, "vram", "pinned x stayed");
    assert.equal(y.bo.placement, "gtt", "y was evicted instead");
    assert.equal(z.bo.placement, "vram", "z in VRAM");
    assert.equal(must(b.gpu.evictFirst(), "evict"), z.bo, "z is evictable");
    const none = b.gpu.evictFirst();
    assert.equal(errnoOf(none), "ENOENT", `only the pinned BO is left: ${why(none)}`);
    // a kernel pin fills the rest of VRAM: nothing can be evicted for a VRAM-only create
    const k = newBo(b, 2n * MiB, GTT);
    assert.ok(b.gpu.pinKernel(k.bo, VRAM).ok, "kernel pin moves k into VRAM");
    assert.equal(k.bo.placement, "vram", "k pinned in VRAM");
    const w = newBo(b, 1n * MiB);
    assert.equal(w.bo.placement, "gtt", "GEM_CREATE retried with VRAM|GTT after -ENOMEM");
    assert.equal(w.bo.preferred_domains, VRAM | GTT, "the retried domain is what it prefers");
    assert.ok(ctx.deregMr(mr).ok, "dereg");
    assert.equal(x.bo.pin_count, 0, "unpinned");
    b.gpu.unpinKernel(k.bo);
    assert.deepEqual(
      b.gpu.lru.map((o) => o.id),
      [x.bo.id, k.bo.id],
      "unpinned BOs rejoin the LRU at the tail, in unpin order",
    );
    assert.equal(must(b.gpu.evictFirst(), "evict after unpin").id, x.bo.id, "x evictable again");
    assert.ok(ctx.close().ok, "close uverbs");
    closeAll(b, [x.fd], [nic]);
  });

  it("6.1: a kernel pin in VRAM blocks eviction; ttm_mem_evict_first says -EBUSY; a kernel pin elsewhere is -EINVAL", () => {
    const b = bed({ profile: "6.1" });
    const p = newBo(b, 2n * MiB);
    assert.ok(b.gpu.pinKernel(p.bo, VRAM).ok, "pin");
    const none = b.gpu.evictFirst();
    assert.equal(errnoOf(none), "EBUSY", why(none));
    assert.equal(errnoOf(b.gpu.pinKernel(p.bo, GTT)), "EINVAL", "already pinned in VRAM");
    b.gpu.unpinKernel(p.bo);
    assert.equal(must(b.gpu.evictFirst(), "evict").id, p.bo.id, "evictable once unpinned");
    closeAll(b, []);
  });
});

describe("gpu: kernel-profile differences in amdgpu_dma_buf_map", () => {
  for (const profile of ["mainline", "6.1"] as const)
    it(`${profile}: a BO pinned in VRAM mapped by an importer without peer2peer`, () => {
      const b = bed({ profile });
      const x = exportBo(b, 256n * KiB);
      assert.ok(b.gpu.pinKernel(x.bo, VRAM).ok, "scanout-style pin in VRAM");
      const a = must(
        dmaBufDynamicAttach(x.dmabuf, importerDev(b, "05:00.0"), recordingImporter().ops),
        "attach",
      );
      assert.equal(a.peer2peer, false, "downgraded");
      const m = dmaBufMapAttachmentUnlocked(a, "bidirectional");
      if (profile === "6.1")
        assert.equal(errnoOf(m), "EBUSY", `6.1: pinned outside GTT (${why(m)})`);
      else {
        const sgt = must(m, "mainline map");
        assert.equal(pageBacked(sgt), false, "mainline: the pinned VRAM is handed out page-less");
        for (const e of dmaEntries(sgt))
          assert.ok(inVramBar(e.dma), "BAR addresses despite peer2peer false");
        dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
      }
      dmaBufDetach(x.dmabuf, a);
      b.gpu.unpinKernel(x.bo);
      closeAll(b, [x.fd]);
    });

  it("6.1 core: a static importer is pinned (into GTT) and mapped at attach; detach unmaps and unpins", () => {
    const b = bed({ profile: "6.1" });
    const x = exportBo(b, 256n * KiB);
    const a = must(dmaBufAttach(x.dmabuf, importerDev(b, "04:00.0")), "attach");
    assert.equal(x.bo.placement, "gtt", "moved to GTT at attach");
    assert.equal(x.bo.pin_count, 1, "pinned at attach");
    assert.equal(b.gpu.outstanding.size, 1, "mapped at attach");
    const sgt = must(
      dmaBufMapAttachmentUnlocked(a, "bidirectional"),
      "map returns the cached table",
    );
    assert.equal(b.gpu.outstanding.size, 1, "no second exporter map");
    dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
    dmaBufDetach(x.dmabuf, a);
    assert.equal(x.bo.pin_count, 0, "unpinned at detach");
    assert.equal(b.gpu.outstanding.size, 0, "unmapped at detach");
    assert.ok(evs(b.tracer, "gpu:detach").length === 1, "6.1 has the detach op");
    closeAll(b, [x.fd]);
  });
});

describe("gpu: VRAM tables and CPU access", () => {
  it("buddyBlocks: naturally aligned power-of-two blocks", () => {
    assert.deepEqual(
      buddyBlocks({ offset: 0n, size: 3n * MiB }),
      [
        { offset: 0n, size: 2n * MiB },
        { offset: 2n * MiB, size: 1n * MiB },
      ],
      "3 MiB at 0",
    );
    assert.deepEqual(
      buddyBlocks({ offset: 1n * MiB, size: 3n * MiB }),
      [
        { offset: 1n * MiB, size: 1n * MiB },
        { offset: 2n * MiB, size: 2n * MiB },
      ],
      "3 MiB at 1 MiB",
    );
    assert.equal(buddyBlocks({ offset: 0n, size: 6n << 30n }).length, 3, "2 GiB cap per entry");
  });

  it("a 3 MiB VRAM BO maps as one dma_map_resource'd entry per block, covering it in order", () => {
    const b = bed({ vramSize: 16n * MiB });
    const x = exportBo(b, 3n * MiB);
    const a = must(
      dmaBufDynamicAttach(x.dmabuf, importerDev(b, "04:00.0"), recordingImporter().ops),
      "attach",
    );
    const sgt = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map");
    const ents = dmaEntries(sgt);
    assert.equal(ents.length, 2, "two buddy blocks");
    let off = 0n;
    for (const e of ents) {
      assert.equal(e.dma, x.bo.phys(off), `entry at BO offset ${off} is its BAR address`);
      assert.equal((e.dma - VRAM_BAR) % e.len, 0n, "naturally aligned");
      off += e.len;
    }
    assert.equal(off, 3n * MiB, "covers the BO");
    dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
    dmaBufDetach(x.dmabuf, a);
    closeAll(b, [x.fd]);
  });

  it("begin_cpu_access (read) migrates only BOs whose display domains include GTT (CPU_GTT_USWC); writes never", () => {
    const b = bed();
    const plain = exportBo(b, 64n * KiB);
    const uswc = exportBo(b, 64n * KiB, VRAM, AMDGPU_GEM_CREATE_CPU_GTT_USWC);
    assert.ok(dmaBufBeginCpuAccess(plain.dmabuf, "from-device").ok, "plain read");
    assert.equal(plain.bo.placement, "vram", "plain BO stays (display domain VRAM only)");
    assert.ok(dmaBufBeginCpuAccess(uswc.dmabuf, "to-device").ok, "USWC write");
    assert.equal(uswc.bo.placement, "vram", "writes do not migrate");
    assert.ok(dmaBufBeginCpuAccess(uswc.dmabuf, "bidirectional").ok, "USWC read");
    assert.equal(uswc.bo.placement, "gtt", "USWC BO migrated to GTT for the CPU read");
    closeAll(b, [plain.fd, uswc.fd]);
  });
});

describe("gpu: GEM / PRIME user API and lifetime", () => {
  it("GEM_CREATE checks flags and domains; PRIME export checks flags, handles and VM_ALWAYS_VALID", () => {
    const b = bed();
    assert.equal(errnoOf(b.file.createBo(4096n, VRAM, 1 << 30)), "EINVAL", "unknown flag");
    assert.equal(errnoOf(b.file.createBo(4096n, 0x100)), "EINVAL", "unknown domain");
    assert.equal(
      errnoOf(b.file.createBo(4096n, VRAM, AMDGPU_GEM_CREATE_ENCRYPTED)),
      "EINVAL",
      "TMZ off",
    );
    const h = must(b.file.createBo(4096n, VRAM), "create");
    assert.equal(errnoOf(b.file.exportFd(h, 0x10)), "EINVAL", "bad PRIME flags");
    assert.equal(errnoOf(b.file.exportFd(999)), "ENOENT", "no such handle");
    const v = must(b.file.createBo(4096n, VRAM, AMDGPU_GEM_CREATE_VM_ALWAYS_VALID), "create");
    assert.equal(errnoOf(b.file.exportFd(v)), "EPERM", "VM_ALWAYS_VALID cannot be exported");
    assert.equal(errnoOf(b.file.closeHandle(999)), "EINVAL", "GEM_CLOSE of nothing");
    const big = must(b.file.createBo(4n * MiB, VRAM), "VRAM-sized BO: retried as VRAM|GTT");
    assert.equal(b.file.bo(big)!.preferred_domains, VRAM | GTT, "the retry's domain");
    closeAll(b, []);
  });

  it("exporting twice gives two fds of one dma-buf; it holds the BO past GEM_CLOSE; the last fd frees it", () => {
    const b = bed();
    const x = exportBo(b, 64n * KiB);
    const fd2 = must(b.file.exportFd(x.handle, DRM_CLOEXEC | DRM_RDWR), "second export");
    assert.notEqual(fd2, x.fd, "a new fd");
    assert.equal(b.proc.fds.get(fd2)!.file.private_data, x.dmabuf, "the same dma-buf");
    assert.equal(b.proc.fds.get(fd2)!.cloexec, true, "DRM_CLOEXEC honoured");
    assert.equal(x.dmabuf.file.count, 4, "two fds + obj->dma_buf + the PRIME cache");
    assert.equal(x.bo.kref, 2, "the handle + the dma-buf");
    assert.ok(b.file.closeHandle(x.handle).ok, "GEM_CLOSE");
    assert.equal(x.bo.dma_buf, null, "obj->dma_buf dropped with the last handle");
    assert.equal(x.dmabuf.file.count, 2, "the two fds");
    assert.equal(x.bo.freed, false, "the dma-buf keeps the BO");
    b.gpu.cpuWrite(x.bo, 0n, text("still here"));
    assert.ok(sysClose(b.proc, x.fd).ok, "close fd 1");
    assert.equal(x.bo.freed, false, "one fd left");
    assert.ok(sysClose(b.proc, fd2).ok, "close fd 2");
    assert.equal(x.bo.freed, true, "released with the dma-buf");
    assert.ok(evs(b.tracer, "gpu:bo_free").length === 1, "free traced");
    closeAll(b, []);
  });

  it("closing the render node releases every handle; importers keep their buffers alive", () => {
    const b = bed();
    const x = exportBo(b, 64n * KiB);
    const d = must(dmaBufGet(b.proc, x.fd), "kernel reference");
    assert.ok(sysClose(b.proc, x.fd).ok, "close the dma-buf fd");
    assert.ok(b.file.close().ok, "close the render node");
    assert.equal(b.file.released, true, "file released");
    assert.equal(x.bo.freed, false, "the kernel reference keeps BO and dma-buf");
    dmaBufPut(d);
    assert.equal(x.bo.freed, true, "freed with the last dma-buf reference");
    const leaks = leakReport([b.sys, b.core, b.gpu, b.proc]);
    assert.deepEqual(leaks, [], leakText(leaks));
  });

  it("leaks() names an open render node, a live BO and a table still mapped", () => {
    const b = bed();
    const x = exportBo(b, 64n * KiB);
    const a = must(
      dmaBufDynamicAttach(x.dmabuf, importerDev(b, "04:00.0"), recordingImporter().ops),
      "attach",
    );
    const sgt = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map");
    const kinds = new Set(b.gpu.leaks().map((l) => l.kind));
    for (const k of ["gpu-file", "gpu-bo", "sg-mapping"]) assert.ok(kinds.has(k), `leaks has ${k}`);
    dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
    dmaBufDetach(x.dmabuf, a);
    closeAll(b, [x.fd]);
  });

  it("kernel fact: after the last GEM handle is closed obj->dma_buf is NULL, so an eviction does not notify the importers (amdgpu_bo_move_notify tests obj->dma_buf)", () => {
    const b = bed();
    const x = exportBo(b, 2n * MiB);
    const imp = recordingImporter(true);
    const a = must(dmaBufDynamicAttach(x.dmabuf, importerDev(b, "04:00.0"), imp.ops), "attach");
    const sgt = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map");
    const stale = dmaEntries(sgt)[0]!.dma;
    assert.ok(b.file.closeHandle(x.handle).ok, "the exporter closes its handle");
    assert.equal(must(b.gpu.evictFirst(), "evict"), x.bo, "evicted");
    assert.equal(imp.seen.length, 0, "the importer was not told");
    const mn = evs(b.tracer, "gpu:move_notify").at(-1)!;
    assert.equal(mn.data?.["notified"], false, "traced as not notified");
    assert.ok(inVramBar(stale), "its table still points at the old VRAM");
    dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
    dmaBufDetach(x.dmabuf, a);
    closeAll(b, [x.fd]);
  });
});

// ── amdgpu as an importer ──────────────────────────────────────────────────────────────────────

const HBM_BAR = 0x90_0000_0000n;
const HBM2_BAR = 0xa0_0000_0000n;
const VRAM2_BAR = 0xb0_0000_0000n;

/**
 * One switch below root port 00:01.0 with GPU 03:00.0, accelerator 04:00.0 (habanalabs, HBM
 * behind BAR 2) and a second GPU 06:00.0 on three downstream ports; a second accelerator 05:00.0
 * behind root port 00:02.0. Host bridge 8086:1234 is not on the P2PDMA allowlist.
 */
function importMachine(iommu: IommuMode) {
  const hbm = (start: bigint) => [
    { index: 0, start: start + 0x800_0000n, size: MiB },
    { index: 2, start, size: 16n * MiB },
  ];
  return topo()
    .hostFn("00:00.0", "8086:1234")
    .rootPort("00:01.0")
    .usp("01:00.0", { parent: "00:01.0" })
    .dsp("02:00.0", { parent: "01:00.0" })
    .dsp("02:01.0", { parent: "01:00.0" })
    .dsp("02:02.0", { parent: "01:00.0" })
    .ep("03:00.0", {
      parent: "02:00.0",
      id: "1002:740f",
      driver: "amdgpu",
      bars: [{ index: 0, start: VRAM_BAR, size: BAR_SIZE }],
    })
    .ep("04:00.0", { parent: "02:01.0", id: "1da3:1020", driver: "habanalabs", bars: hbm(HBM_BAR) })
    .ep("06:00.0", {
      parent: "02:02.0",
      id: "1002:740f",
      driver: "amdgpu",
      bars: [{ index: 0, start: VRAM2_BAR, size: BAR_SIZE }],
    })
    .rootPort("00:02.0")
    .ep("05:00.0", {
      parent: "00:02.0",
      id: "1da3:1020",
      driver: "habanalabs",
      bars: hbm(HBM2_BAR),
    })
    .iommu(iommu)
    .build();
}

function importBed(iommu: IommuMode = "off") {
  const tracer = new Tracer(true);
  const sys = new System(importMachine(iommu), { tracer });
  const core = new DmaBufCore({ profile: PROFILES.mainline, moveNotify: true, tracer });
  const gpu = new GpuDevice(sys, core, "03:00.0", { vramSize: 4n * MiB });
  const gpu2 = new GpuDevice(sys, core, "06:00.0", { vramSize: 4n * MiB, name: "amdgpu#2" });
  const hl = new AccelDevice(sys, core, "04:00.0");
  const hl2 = new AccelDevice(sys, core, "05:00.0", { name: "accel1" });
  const proc = new Process("gpu-importer");
  const file = must(gpu.open(proc), "open render node");
  return { sys, core, gpu, gpu2, hl, hl2, proc, file, tracer };
}
type ImportBed = ReturnType<typeof importBed>;

/** ALLOC + MAP + EXPORT_DMABUF_FD of `size` bytes of HBM; the fd, the dma-buf, its BAR address. */
function hbmExport(b: ImportBed, hl: AccelDevice, size: bigint) {
  const { fd, dmabuf, pack, barOf } = exportAccelMemory(hl, b.proc, size);
  const contiguous = pack.pages.every((p, i) => p === pack.pages[0]! + BigInt(i) * pack.page_size);
  assert.ok(contiguous, "the test wants physically contiguous HBM");
  return { fd, dmabuf, bar: barOf(0n) as bigint };
}

/** A host (system-heap style) buffer exported into the process: exporter, fd, dma-buf. */
function heapExport(b: ImportBed, size: bigint, dynamic = false) {
  const exp = new SysmemExporter(b.sys, { size, dynamic, name: "system-heap" });
  const d = must(exp.export(b.core), "heap export");
  const fd = must(dmaBufFd(b.proc, d, O_RDWR | O_CLOEXEC), "dma_buf_fd");
  return { exp, fd, dmabuf: d };
}

/** Exit the process (every fd closed), then nothing may be left anywhere. */
function exitAndCheck(b: ImportBed, extra: LeakSource[] = []): void {
  sysExit(b.proc);
  const leaks = leakReport([b.sys, b.core, b.gpu, b.gpu2, b.hl, b.hl2, b.proc, ...extra]);
  assert.deepEqual(leaks, [], `leaks:\n${leakText(leaks)}`);
  assert.equal(b.gpu.bos.size, 0, "every BO of the importing GPU freed");
  quietCore(b.core);
}

describe("gpu: amdgpu as an importer (PRIME fd-to-handle, SDMA copy)", () => {
  it("imports accelerator HBM below the same switch: dynamic attach with peer2peer, mapped at first use, HBM → VRAM and VRAM → HBM copies move the bytes across the switch", () => {
    const b = importBed();
    const x = hbmExport(b, b.hl, 128n * KiB);
    b.sys.memory.write(physAddr(x.bar + 0x1000n), text("from-hbm"));
    const ih = must(b.file.importFd(x.fd), "PRIME_FD_TO_HANDLE");
    const ibo = b.file.bo(ih)!;
    assert.equal(ibo.importOf, x.dmabuf, "the handle names an SG BO standing for the dma-buf");
    assert.equal(ibo.allowed_domains, GTT, "an import may only live in GTT");
    const a = ibo.import_attach;
    assert.ok(a, "the import holds an attachment");
    assert.ok(a.importer_ops?.allow_peer2peer, "amdgpu's attach ops set allow_peer2peer");
    assert.equal(a.peer2peer, true, "habanalabs kept peer2peer (pci_p2pdma_distance 4)");
    assert.equal(ibo.resv, x.dmabuf.resv, "the BO shares the dma-buf's reservation object");
    assert.equal(ibo.ttmSg, null, "nothing is mapped at import");
    assert.equal(b.hl.outstanding.size, 0, "the exporter handed out no table yet");

    const v = newBo(b, 128n * KiB, VRAM);
    const r = must(b.file.copy(ih, 0x1000n, v.handle, 0x2000n, 8n), "copy HBM → VRAM");
    assert.deepEqual(b.file.cpuRead(v.handle, 0x2000n, 8), text("from-hbm"), "bytes in VRAM");
    assert.equal(r.src.via, "import", "read through the import");
    assert.deepEqual(r.src.kinds, ["bus-address"], "the GPU used the HBM BAR's bus address");
    assert.equal(r.dst.via, "vram", "written into its own VRAM directly");
    assert.equal(ibo.importMaps, 1, "bound (mapped) by the first submission");
    assert.equal(b.hl.outstanding.size, 1, "habanalabs handed out one table");

    b.file.cpuWrite(v.handle, 0n, text("to-hbm!"));
    must(b.file.copy(v.handle, 0n, ih, 0x8000n, 7n), "copy VRAM → HBM");
    assert.deepEqual(
      b.sys.memory.read(physAddr(x.bar + 0x8000n), 7),
      text("to-hbm!"),
      "bytes landed in HBM",
    );
    assert.equal(ibo.importMaps, 1, "the bound table is reused");
    assert.equal(
      b.sys.fabric.traffic.get("0000:01:00.0"),
      undefined,
      "nothing crossed the switch's upstream link: the copies went peer to peer",
    );
    assert.ok(
      (b.sys.fabric.traffic.get("0000:03:00.0")?.up ?? 0n) >= 15n,
      "the GPU's link carried the requests",
    );
    exitAndCheck(b);
    assert.equal(b.hl.outstanding.size, 0, "the import's table went back at exit");
  });

  it("imports a host heap buffer behind an IOMMU: IOVAs, copies to VRAM and into a GTT BO", () => {
    const b = importBed("dma");
    const h = heapExport(b, 64n * KiB);
    b.sys.memory.write(physAddr(h.exp.phys(0x100n)), text("host-bytes"));
    const ih = must(b.file.importFd(h.fd), "PRIME_FD_TO_HANDLE");
    const v = newBo(b, 64n * KiB, VRAM);
    const g = newBo(b, 64n * KiB, GTT);
    const r1 = must(b.file.copy(ih, 0x100n, v.handle, 0n, 10n), "heap → VRAM");
    assert.deepEqual(r1.src.kinds, ["iova"], "the heap pages were mapped through the IOMMU");
    assert.deepEqual(b.file.cpuRead(v.handle, 0n, 10), text("host-bytes"), "bytes in VRAM");
    const r2 = must(b.file.copy(ih, 0x100n, g.handle, 0x40n, 10n), "heap → GTT");
    assert.equal(r2.dst.via, "gtt", "the GTT BO is reached by DMA");
    assert.deepEqual(r2.dst.kinds, ["iova"], "through the GPU's IOMMU domain");
    assert.deepEqual(b.file.cpuRead(g.handle, 0x40n, 10), text("host-bytes"), "bytes in GTT");
    b.file.cpuWrite(v.handle, 0x10n, text("back"));
    must(b.file.copy(v.handle, 0x10n, ih, 0x2000n, 4n), "VRAM → heap");
    assert.deepEqual(
      b.sys.memory.read(physAddr(h.exp.phys(0x2000n)), 4),
      text("back"),
      "bytes in host memory",
    );
    exitAndCheck(b, [h.exp]);
  });

  it("move_notify on the imported buffer unbinds it (table handed back, VM mappings invalidated); the next copy maps again and reads the new location", () => {
    const b = importBed();
    const h = heapExport(b, 16n * KiB, true);
    b.sys.memory.write(physAddr(h.exp.phys(0n)), text("old-place"));
    const ih = must(b.file.importFd(h.fd), "import");
    const ibo = b.file.bo(ih)!;
    const v = newBo(b, 16n * KiB, VRAM);
    must(b.file.copy(ih, 0n, v.handle, 0n, 9n), "first copy");
    assert.equal(ibo.importMaps, 1, "mapped once");
    assert.equal(h.exp.pins, 0, "a dynamic importer with move_notify does not pin");
    const before = h.exp.phys(0n);
    h.dmabuf.resv.lock("test: exporter moves");
    must(h.exp.move(), "the exporter moves the buffer");
    h.dmabuf.resv.unlock("test: exporter moves");
    assert.notEqual(h.exp.phys(0n), before, "the buffer lives elsewhere now");
    assert.equal(ibo.vmInvalidations, 1, "amdgpu_dma_buf_move_notify invalidated the BO");
    assert.equal(ibo.ttmSg, null, "unbound: the table went back to the exporter");
    assert.equal(h.exp.count("unmap"), 1, "the exporter got its table back during move_notify");
    b.sys.memory.write(physAddr(h.exp.phys(0n)), text("new-place"));
    must(b.file.copy(ih, 0n, v.handle, 0x100n, 9n), "second copy");
    assert.equal(ibo.importMaps, 2, "the next submission mapped the attachment again");
    assert.equal(h.exp.count("map"), 2, "the exporter mapped twice");
    assert.deepEqual(b.file.cpuRead(v.handle, 0x100n, 9), text("new-place"), "read the new pages");
    assert.ok(
      evs(b.tracer, "gpu:import_invalidate").length === 1,
      "the invalidation is in the trace",
    );
    exitAndCheck(b, [h.exp]);
  });

  it("another amdgpu as the moving exporter: GPU#2 evicts its VRAM BO, GPU#1's import is invalidated and re-mapped before its next copy", () => {
    const b = importBed();
    const f2 = must(b.gpu2.open(b.proc), "open GPU#2");
    const h2 = must(f2.createBo(64n * KiB, VRAM), "GPU#2 GEM_CREATE");
    f2.cpuWrite(h2, 0x30n, text("vram-of-2"));
    const fd = must(f2.exportFd(h2), "GPU#2 export");
    const ih = must(b.file.importFd(fd), "GPU#1 import");
    const ibo = b.file.bo(ih)!;
    const bo2 = f2.bo(h2)!;
    const v = newBo(b, 64n * KiB, VRAM);
    const r1 = must(b.file.copy(ih, 0x30n, v.handle, 0n, 9n), "copy from GPU#2's VRAM");
    assert.equal(ibo.import_attach?.peer2peer, true, "GPU#2 kept peer2peer (same switch)");
    assert.deepEqual(r1.src.kinds, ["bus-address"], "GPU#2's VRAM BAR, peer to peer");
    assert.equal(bo2.placement, "vram", "the exporter's BO stayed in VRAM for a P2P importer");
    assert.equal(must(b.gpu2.evictFirst(), "GPU#2 evicts"), bo2, "GPU#2 evicted its BO");
    assert.equal(bo2.placement, "gtt", "evicted to GTT");
    assert.equal(ibo.vmInvalidations, 1, "GPU#1 was told before the move");
    assert.equal(ibo.ttmSg, null, "GPU#1's import is unbound");
    const r2 = must(b.file.copy(ih, 0x30n, v.handle, 0x40n, 9n), "copy after the move");
    assert.equal(ibo.importMaps, 2, "mapped again");
    assert.deepEqual(b.file.cpuRead(v.handle, 0x40n, 9), text("vram-of-2"), "same bytes");
    assert.ok(r2.src.kinds.length > 0, "the copy went through the new table");
    exitAndCheck(b);
  });

  it("an importer that cannot reach the exporter gets the exporter's errno: habanalabs clears peer2peer at attach and its map refuses with -EPERM", () => {
    const b = importBed();
    assert.equal(
      b.sys.p2pdma.distanceMany(b.hl2.fn, [b.gpu.fn], false),
      -1,
      "accelerator 05:00.0 → GPU: not supported (different root ports, host bridge not allowlisted)",
    );
    const x = hbmExport(b, b.hl2, 64n * KiB);
    const ih = must(b.file.importFd(x.fd), "the import itself succeeds (nothing is mapped yet)");
    const ibo = b.file.bo(ih)!;
    assert.equal(ibo.import_attach?.peer2peer, false, "habanalabs cleared peer2peer");
    const v = newBo(b, 64n * KiB, VRAM);
    const r = b.file.copy(ih, 0n, v.handle, 0n, 16n);
    assert.equal(errnoOf(r), "EPERM", `the submission fails with the exporter's errno: ${why(r)}`);
    assert.equal(ibo.ttmSg, null, "nothing bound");
    assert.deepEqual(b.file.cpuRead(v.handle, 0n, 16), new Uint8Array(16), "no byte moved");
    const ev = evs(b.tracer, "gpu:import_map").at(-1);
    assert.equal(ev?.data?.["errno"], "EPERM", "the failed bind is traced");
    exitAndCheck(b);
  });

  it("an exporter refusing the attach fails the import with its errno and leaves nothing behind", () => {
    const b = importBed();
    const exp = new SysmemExporter(b.sys, { size: 8n * KiB, attachFails: "EOPNOTSUPP" });
    const d = must(exp.export(b.core), "export");
    const fd = must(dmaBufFd(b.proc, d, O_RDWR), "fd");
    const r = b.file.importFd(fd);
    assert.equal(errnoOf(r), "EOPNOTSUPP", `PRIME_FD_TO_HANDLE: ${why(r)}`);
    assert.equal(b.file.handles.size, 0, "no handle");
    assert.equal(b.gpu.bos.size, 0, "the SG BO was dropped");
    assert.equal(errnoOf(b.file.importFd(999)), "EBADF", "an fd that is not open → -EBADF");
    exitAndCheck(b, [exp]);
  });

  it("self-import returns the same GEM object: the same handle through the exporting file, a new handle on the same BO through another file, no attachment", () => {
    const b = importBed();
    const h = must(b.file.createBo(64n * KiB, VRAM), "GEM_CREATE");
    const bo = b.file.bo(h)!;
    b.file.cpuWrite(h, 0n, text("mine"));
    const fd = must(b.file.exportFd(h), "export");
    assert.equal(
      must(b.file.importFd(fd), "re-import"),
      h,
      "the PRIME cache gives the handle back",
    );
    const f2 = must(b.gpu.open(b.proc), "second render node file");
    const h2 = must(f2.importFd(fd), "import through another file");
    assert.equal(f2.bo(h2), bo, "amdgpu_gem_prime_import returned its own GEM object");
    assert.equal(bo.handle_count, 2, "two handles on one BO");
    assert.equal(bo.import_attach, null, "no attachment on its own buffer");
    const dmabuf = b.proc.fds.get(fd)!.file.private_data!;
    assert.equal(dmabuf.attachments.length, 0, "nobody attached");
    const v2 = must(f2.createBo(64n * KiB, VRAM), "GEM_CREATE in file 2");
    const r = must(f2.copy(h2, 0n, v2, 0n, 4n), "copy from the self-import");
    assert.equal(r.src.via, "vram", "the GPU reads its own VRAM directly");
    assert.deepEqual(f2.cpuRead(v2, 0n, 4), text("mine"), "bytes copied");
    exitAndCheck(b);
  });

  it("pinning an imported BO pins the exporter (dma_buf_pin) and blocks its moves; VRAM is refused", () => {
    const b = importBed();
    const hx = heapExport(b, 16n * KiB, true);
    const ih = must(b.file.importFd(hx.fd), "import");
    const ibo = b.file.bo(ih)!;
    assert.equal(
      errnoOf(b.gpu.pinKernel(ibo, VRAM)),
      "EINVAL",
      "an import cannot be pinned in VRAM",
    );
    must(b.gpu.pinKernel(ibo, GTT | VRAM), "pin in GTT");
    assert.equal(hx.exp.pins, 1, "the exporter was pinned");
    assert.ok(ibo.ttmSg, "pinning bound the import");
    hx.dmabuf.resv.lock("test");
    const mv = hx.exp.move();
    hx.dmabuf.resv.unlock("test");
    assert.equal(errnoOf(mv), "EBUSY", "the exporter cannot move a pinned buffer");
    b.gpu.unpinKernel(ibo);
    assert.equal(hx.exp.pins, 0, "unpinned with the last amdgpu_bo_unpin");
    exitAndCheck(b, [hx.exp]);
  });
});
