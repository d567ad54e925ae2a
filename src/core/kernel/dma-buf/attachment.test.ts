import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { topo } from "../../../../test/support/topology.ts";
import { dmaSetMaskAndCoherent } from "../dma/device.ts";
import {
  isPoisoned,
  type SgTable,
  sg_page,
  sg_phys,
  sgtableDmaSegments,
} from "../lib/scatterlist.ts";
import { type KernelProfile, PROFILES } from "../profile.ts";
import { System } from "../system.ts";
import {
  type DmaBufAttachment,
  dmaBufAttach,
  dmaBufDetach,
  dmaBufDynamicAttach,
  dmaBufMapAttachment,
  dmaBufMapAttachmentUnlocked,
  dmaBufPin,
  dmaBufUnmapAttachment,
  dmaBufUnmapAttachmentUnlocked,
  dmaBufUnpin,
} from "./attachment.ts";
import { type DmaBuf, DmaBufCore, dmaBufMoveNotify } from "./dma-buf.ts";
import { dmaBufPut } from "./file.ts";
import { DmaFence } from "./resv.ts";
import { SysmemExporter, type SysmemExporterOptions } from "./sysmem-exporter.ts";

const P61 = PROFILES["6.1"];
const PML = PROFILES.mainline;

function machine(iommu: "dma" | "off" = "dma") {
  return topo()
    .hostFn("00:00.0", "8086:1234")
    .rootPort("00:01.0")
    .ep("01:00.0", {})
    .rootPort("00:02.0")
    .ep("02:00.0", {})
    .iommu(iommu)
    .build();
}

function bed(
  profile: KernelProfile,
  exp: Partial<SysmemExporterOptions> = {},
  cfg: { debug?: boolean; moveNotify?: boolean; iommu?: "dma" | "off" } = {},
) {
  const sys = new System(machine(cfg.iommu ?? "dma"));
  const core = new DmaBufCore({
    profile,
    debug: cfg.debug ?? false,
    moveNotify: cfg.moveNotify ?? false,
  });
  const ex = new SysmemExporter(sys, { size: 16384n, ...exp });
  const r = ex.export(core);
  assert.ok(r.ok);
  const dev = sys.device("01:00.0");
  dmaSetMaskAndCoherent(dev, 64);
  return { sys, core, ex, dmabuf: r.value, dev };
}

const dynOps = (calls: DmaBufAttachment[] = [], p2p = false) => ({
  allow_peer2peer: p2p,
  move_notify: (a: DmaBufAttachment) => {
    assert.ok(a.dmabuf.resv.held, "move_notify runs with the resv held");
    calls.push(a);
  },
});

function teardown(dmabuf: DmaBuf, ...attachments: DmaBufAttachment[]) {
  for (const a of attachments) dmaBufDetach(dmabuf, a);
  dmaBufPut(dmabuf);
}

const bytes = (n: number, seed = 3) =>
  Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

for (const profile of [P61, PML]) {
  describe(`dma-buf attach/map (${profile.id})`, () => {
    it("a static importer maps: the device's DMA reaches the exporter's pages; unmap gives the exporter its own table", () => {
      const { sys, core, ex, dmabuf, dev } = bed(profile);
      const a = dmaBufAttach(dmabuf, dev);
      assert.ok(a.ok);
      assert.equal(a.value.peer2peer, false);
      const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
      assert.ok(m.ok);
      const segs = sgtableDmaSegments(m.value);
      const data = bytes(8192);
      let off = 0n;
      for (const s of segs) {
        const chunk = data.subarray(Number(off), Number(off) + s.dma_length);
        if (chunk.length === 0) break;
        assert.ok(sys.deviceWrite(dev, s.dma_address, chunk).ok);
        off += BigInt(s.dma_length);
      }
      assert.deepEqual(sys.memory.read(System.phys(ex.pages[0]!), 4096), data.subarray(0, 4096));
      dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
      assert.equal(ex.outstanding.size, 0, "every table the exporter handed out came back");
      dmaBufDetach(dmabuf, a.value);
      assert.equal(
        sys.deviceWrite(dev, segs[0]!.dma_address, data.subarray(0, 64)).ok,
        false,
        "after unmap the IOVA faults",
      );
      dmaBufPut(dmabuf);
      assert.equal(ex.count("release"), 1);
      assert.deepEqual(core.lockdep, []);
    });

    it("18: dynamic_attach with importer_ops lacking move_notify → -EINVAL with WARN; static attach has peer2peer false", () => {
      const { dmabuf, dev, core, ex } = bed(profile);
      const r = dmaBufDynamicAttach(dmabuf, dev, { allow_peer2peer: true }, null);
      assert.equal(r.ok ? "ok" : r.errno, "EINVAL");
      assert.equal(!r.ok && r.warn, true);
      assert.equal(core.warnings.length, 1);
      assert.equal(dmabuf.attachments.length, 0);
      assert.equal(ex.count("attach"), 0, "refused before the exporter is asked");
      const s = dmaBufAttach(dmabuf, dev);
      assert.ok(s.ok && s.value.peer2peer === false);
      const d = dmaBufDynamicAttach(dmabuf, dev, dynOps([], true));
      assert.ok(
        d.ok && d.value.peer2peer === true,
        "allow_peer2peer is copied for dynamic importers",
      );
      teardown(dmabuf, s.value, d.value);
    });

    it("19: the exporter's attach returns -EBUSY → attach fails with -EBUSY, the list unchanged", () => {
      const { dmabuf, dev, ex } = bed(profile, { attachFails: "EBUSY" });
      const r = dmaBufAttach(dmabuf, dev);
      assert.equal(r.ok ? "ok" : r.errno, "EBUSY");
      assert.equal(dmabuf.attachments.length, 0);
      assert.equal(ex.count("detach"), 0);
      dmaBufPut(dmabuf);
    });

    it("20: the exporter's map returns NULL → -ENOMEM; a pin taken for the map is undone", () => {
      const { dmabuf, dev, ex } = bed(profile, { dynamic: true, mapReturnsNull: true });
      const a = dmaBufDynamicAttach(dmabuf, dev, dynOps());
      assert.ok(a.ok);
      dmabuf.resv.lock();
      const m = dmaBufMapAttachment(a.value, "to-device");
      dmabuf.resv.unlock();
      assert.equal(m.ok ? "ok" : m.errno, "ENOMEM");
      assert.equal(ex.count("pin"), 1, "MOVE_NOTIFY=n: the dynamic importer is pinned on map");
      assert.equal(ex.pins, 0, "and unpinned on failure");
      teardown(dmabuf, a.value);
    });

    it("21: static importer on a dynamic exporter is pinned while mapped and never move-notified", () => {
      const { dmabuf, dev, ex, core } = bed(profile, { dynamic: true });
      const notified: DmaBufAttachment[] = [];
      const a = dmaBufAttach(dmabuf, dev);
      assert.ok(a.ok);
      const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
      assert.ok(m.ok);
      assert.equal(ex.pins, 1);
      const order = ex.calls.filter((c) => c !== "attach");
      assert.deepEqual(order.slice(0, 2), ["pin", "map:bidirectional"], "pin then map");
      if (profile.dmaBuf.mapOnAttachIfMismatch)
        assert.equal(ex.count("map"), 1, "6.1: mapped at attach, map returned the cached table");
      dmabuf.resv.lock();
      dmaBufMoveNotify(dmabuf);
      assert.equal(ex.move().ok, false, "the exporter cannot move a pinned buffer");
      dmabuf.resv.unlock();
      assert.deepEqual(notified, []);
      dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
      if (profile.dmaBuf.mapOnAttachIfMismatch) {
        assert.equal(
          ex.pins,
          1,
          "6.1: unmap of the cached table is a no-op; detach unmaps and unpins",
        );
        dmaBufDetach(dmabuf, a.value);
      } else {
        const tail = ex.calls.slice(-2);
        assert.deepEqual(tail, ["unmap:bidirectional", "unpin"], "unmap then unpin");
        dmaBufDetach(dmabuf, a.value);
      }
      assert.equal(ex.pins, 0);
      assert.ok(
        ex.lockedCalls.every((c) => c.held),
        "pin/unpin/map/unmap ran with the resv held",
      );
      assert.deepEqual(core.lockdep, []);
      dmaBufPut(dmabuf);
    });

    it("22: dynamic importer with MOVE_NOTIFY=y: map does not pin; move_notify reaches it once per call, locked", () => {
      const { dmabuf, dev, ex, core } = bed(profile, { dynamic: true }, { moveNotify: true });
      const notified: DmaBufAttachment[] = [];
      const a = dmaBufDynamicAttach(dmabuf, dev, dynOps(notified));
      const s = dmaBufAttach(dmabuf, dev);
      assert.ok(a.ok && s.ok);
      dmabuf.resv.lock();
      const m = dmaBufMapAttachment(a.value, "from-device");
      assert.ok(m.ok);
      const pinsBefore = ex.pins;
      assert.equal(
        pinsBefore,
        profile.dmaBuf.mapOnAttachIfMismatch ? 1 : 0,
        "only the static attachment's pin (6.1: at attach)",
      );
      dmaBufUnmapAttachment(a.value, m.value, "from-device");
      dmabuf.resv.unlock();
      dmaBufDetach(dmabuf, s.value);
      dmabuf.resv.lock();
      dmaBufMoveNotify(dmabuf);
      dmaBufMoveNotify(dmabuf);
      assert.ok(ex.move().ok);
      dmabuf.resv.unlock();
      assert.equal(notified.length, 3, "twice by hand, once by the exporter's move");
      assert.ok(notified.every((n) => n === a.value));
      assert.deepEqual(core.lockdep, []);
      teardown(dmabuf, a.value);
    });

    it("22 (no): with MOVE_NOTIFY=n a dynamic importer of a dynamic exporter is pinned on map", () => {
      const { dmabuf, dev, ex } = bed(profile, { dynamic: true }, { moveNotify: false });
      const a = dmaBufDynamicAttach(dmabuf, dev, dynOps());
      assert.ok(a.ok);
      dmabuf.resv.lock();
      const m = dmaBufMapAttachment(a.value, "to-device");
      assert.ok(m.ok);
      assert.equal(ex.pins, 1);
      dmaBufUnmapAttachment(a.value, m.value, "to-device");
      assert.equal(ex.pins, 0);
      dmabuf.resv.unlock();
      teardown(dmabuf, a.value);
    });

    it("23: the exporter's pin returns -EBUSY during map → -EBUSY (mainline also WARN_ON_ONCE)", () => {
      const { dmabuf, dev, core } = bed(profile, { dynamic: true, pinFails: "EBUSY" });
      const a = dmaBufDynamicAttach(dmabuf, dev, dynOps());
      assert.ok(a.ok);
      dmabuf.resv.lock();
      const m = dmaBufMapAttachment(a.value, "to-device");
      const m2 = dmaBufMapAttachment(a.value, "to-device");
      dmabuf.resv.unlock();
      assert.equal(m.ok ? "ok" : m.errno, "EBUSY");
      assert.equal(m2.ok ? "ok" : m2.errno, "EBUSY");
      const warned = core.warnings.filter((w) => w.includes("inaccessible")).length;
      assert.equal(warned, profile.dmaBuf.warnOnPinBusy ? 1 : 0, "once only");
      teardown(dmabuf, a.value);
    });

    it("dma_buf_pin: dynamic importers only (WARN otherwise); no-op 0 on a static exporter", () => {
      const { dmabuf, dev, core, ex } = bed(profile);
      const a = dmaBufDynamicAttach(dmabuf, dev, dynOps());
      const s = dmaBufAttach(dmabuf, dev);
      assert.ok(a.ok && s.ok);
      dmabuf.resv.lock();
      assert.ok(dmaBufPin(a.value).ok);
      dmaBufUnpin(a.value);
      assert.equal(core.warnings.length, 0);
      dmaBufPin(s.value);
      dmabuf.resv.unlock();
      assert.equal(core.warnings.length, 1);
      assert.equal(ex.count("pin"), 0);
      teardown(dmabuf, a.value, s.value);
    });

    it("locking: map of a dynamic attachment without the resv is reported naming the function and buffer", () => {
      const { dmabuf, dev, core } = bed(profile, { dynamic: true }, { moveNotify: true });
      const a = dmaBufDynamicAttach(dmabuf, dev, { move_notify: () => {} });
      assert.ok(a.ok);
      const m = dmaBufMapAttachment(a.value, "to-device");
      assert.ok(m.ok, "lockdep reports, the call goes on");
      assert.equal(core.lockdep.length >= 1, true);
      assert.equal(core.lockdep[0]!.fn, "dma_buf_map_attachment");
      assert.match(core.lockdep[0]!.message, new RegExp(`dmabuf:${dmabuf.ino}`));
      dmaBufPin(a.value);
      assert.ok(core.lockdep.some((r) => r.fn === "dma_buf_pin"));
      dmaBufMoveNotify(dmabuf);
      assert.ok(core.lockdep.some((r) => r.fn === "dma_buf_move_notify"));
      dmabuf.resv.lock();
      assert.throws(() => dmaBufMapAttachmentUnlocked(a.value, "to-device"), /deadlock/);
      assert.throws(
        () => dmaBufDetach(dmabuf, a.value),
        /deadlock/,
        "detach takes the lock itself",
      );
      dmaBufUnpin(a.value);
      dmaBufUnmapAttachment(a.value, m.value, "to-device");
      dmabuf.resv.unlock();
      teardown(dmabuf, a.value);
    });

    it("locking: static importer on a static exporter needs the resv for map only in mainline", () => {
      const { dmabuf, dev, core } = bed(profile);
      const a = dmaBufAttach(dmabuf, dev);
      assert.ok(a.ok);
      const m = dmaBufMapAttachment(a.value, "to-device");
      assert.ok(m.ok);
      assert.equal(core.lockdep.length, profile.dmaBuf.mapAssertsResv === "always" ? 1 : 0);
      dmaBufUnmapAttachmentUnlocked(a.value, m.value, "to-device");
      teardown(dmabuf, a.value);
    });

    it("26: CONFIG_DMABUF_DEBUG: the importer sees no pages, the same DMA segments; the exporter gets its own table back", () => {
      const { dmabuf, dev, ex } = bed(profile, {}, { debug: true });
      const a = dmaBufAttach(dmabuf, dev);
      assert.ok(a.ok);
      const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
      assert.ok(m.ok);
      const [exporterTable] = [...ex.outstanding];
      const imp = m.value;
      assert.deepEqual(
        sgtableDmaSegments(imp).map((s) => [s.dma_address, s.dma_length]),
        sgtableDmaSegments(exporterTable!).map((s) => [s.dma_address, s.dma_length]),
      );
      if (profile.dmaBuf.debugSgt === "xor-page-link") {
        assert.equal(imp, exporterTable, "6.1 mangles the exporter's table in place");
        assert.ok(isPoisoned(imp.sgl!));
        assert.throws(
          () => sg_page(imp.sgl!),
          /poisoned/,
          "sg_page() on a mangled entry fails loudly",
        );
      } else {
        assert.notEqual(imp, exporterTable, "mainline hands a copy");
        assert.equal(sg_page(imp.sgl!), null, "sg_page() is NULL");
        assert.throws(() => sg_phys(imp.sgl!), /NULL dereference/);
        assert.equal(imp.sgl!.length, 0);
        assert.ok(sg_page(exporterTable!.sgl!) !== null, "the exporter's table keeps its pages");
      }
      dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
      assert.equal(
        ex.outstanding.size,
        0,
        "unmap_dma_buf received the pointer map_dma_buf returned",
      );
      teardown(dmabuf, a.value);
    });

    it("26 (no): without CONFIG_DMABUF_DEBUG the importer can read page pointers", () => {
      const { dmabuf, dev } = bed(profile);
      const a = dmaBufAttach(dmabuf, dev);
      assert.ok(a.ok);
      const m = dmaBufMapAttachmentUnlocked(a.value, "bidirectional");
      assert.ok(m.ok && sg_page(m.value.sgl!) !== null);
      dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
      teardown(dmabuf, a.value);
    });

    it("static importers wait for KERNEL fences at map; an interrupted wait unmaps and fails", () => {
      const { dmabuf, dev, core, ex } = bed(profile);
      dmabuf.resv.lock();
      dmabuf.resv.addFence(new DmaFence({ signalAt: 50 }), "kernel");
      dmabuf.resv.addFence(new DmaFence(), "read"); // never signalled; not waited on by map
      dmabuf.resv.unlock();
      const a = dmaBufAttach(dmabuf, dev);
      assert.ok(a.ok);
      core.task.signalPending = true;
      const bad = dmaBufMapAttachmentUnlocked(a.value, "to-device");
      assert.equal(bad.ok ? "ok" : bad.errno, "ERESTARTSYS");
      assert.equal(ex.outstanding.size, 0);
      core.task.signalPending = false;
      const m = dmaBufMapAttachmentUnlocked(a.value, "to-device");
      assert.ok(m.ok);
      assert.equal(core.clock.now, 50, "the map waited until the move finished");
      dmaBufUnmapAttachmentUnlocked(a.value, m.value, "to-device");
      teardown(dmabuf, a.value);
    });

    it("lifecycle: detached attachments and unknown tables fail loudly; attachments left at release are a WARN", () => {
      const { dmabuf, dev, core, ex } = bed(profile);
      const a = dmaBufAttach(dmabuf, dev);
      assert.ok(a.ok);
      const m = dmaBufMapAttachmentUnlocked(a.value, "to-device");
      assert.ok(m.ok);
      const other = [...ex.outstanding][0]!;
      dmaBufUnmapAttachmentUnlocked(a.value, m.value, "to-device");
      assert.throws(() => dmaBufUnmapAttachmentUnlocked(a.value, other as SgTable, "to-device"));
      const b = dmaBufAttach(dmabuf, dev);
      assert.ok(b.ok);
      dmaBufDetach(dmabuf, a.value);
      assert.throws(
        () => dmaBufDetach(dmabuf, a.value),
        new RegExp(`attachment #${a.value.id}.*already detached`),
      );
      assert.throws(() => dmaBufMapAttachmentUnlocked(a.value, "to-device"), /already detached/);
      dmaBufPut(dmabuf);
      assert.ok(core.warnings.some((w) => w.includes("list_empty(&dmabuf->attachments)")));
      assert.equal(ex.count("release"), 1);
    });
  });
}

describe("≤6.14 sg-table caching (6.1 profile)", () => {
  it("25: cache_sgt_mapping: second map with another non-bidirectional direction → -EBUSY; same direction → same table", () => {
    const { dmabuf, dev, ex } = bed(P61, { cacheSgtMapping: true });
    const a = dmaBufAttach(dmabuf, dev);
    assert.ok(a.ok);
    const m1 = dmaBufMapAttachment(a.value, "to-device");
    assert.ok(m1.ok);
    const m2 = dmaBufMapAttachment(a.value, "to-device");
    assert.ok(m2.ok && m2.value === m1.value);
    const m3 = dmaBufMapAttachment(a.value, "from-device");
    assert.equal(m3.ok ? "ok" : m3.errno, "EBUSY");
    assert.equal(ex.count("map"), 1);
    dmaBufUnmapAttachment(a.value, m1.value, "to-device");
    assert.equal(ex.count("unmap"), 0, "unmap of the cached table is a no-op");
    dmaBufDetach(dmabuf, a.value);
    assert.equal(ex.count("unmap"), 1, "detach unmaps it");
    dmaBufPut(dmabuf);
  });

  it("25 (mainline): no caching: each map calls the exporter and gives a new table, any direction", () => {
    const { dmabuf, dev, ex } = bed(PML, { cacheSgtMapping: true });
    const a = dmaBufAttach(dmabuf, dev);
    assert.ok(a.ok);
    const m1 = dmaBufMapAttachmentUnlocked(a.value, "to-device");
    const m2 = dmaBufMapAttachmentUnlocked(a.value, "from-device");
    assert.ok(m1.ok && m2.ok && m1.value !== m2.value);
    assert.equal(ex.count("map"), 2);
    dmaBufUnmapAttachmentUnlocked(a.value, m1.value, "to-device");
    dmaBufUnmapAttachmentUnlocked(a.value, m2.value, "from-device");
    teardown(dmabuf, a.value);
  });

  it("6.1: a dynamic importer of a static exporter is mapped bidirectionally at attach and cached", () => {
    const { dmabuf, dev, ex } = bed(P61);
    const a = dmaBufDynamicAttach(dmabuf, dev, dynOps());
    assert.ok(a.ok);
    assert.deepEqual(ex.calls, ["attach", "map:bidirectional"]);
    dmabuf.resv.lock();
    const m = dmaBufMapAttachment(a.value, "from-device");
    dmabuf.resv.unlock();
    assert.ok(m.ok && m.value === a.value.sgt);
    teardown(dmabuf, a.value);
    assert.deepEqual(ex.calls.slice(-3), ["unmap:bidirectional", "detach", "release"]);
  });

  it("6.1: a failed pin at attach (mismatch path) unwinds: attach fails, nothing left attached", () => {
    const { dmabuf, dev, ex } = bed(P61, { dynamic: true, pinFails: "ENOMEM" });
    const r = dmaBufAttach(dmabuf, dev);
    assert.equal(r.ok ? "ok" : r.errno, "ENOMEM");
    assert.equal(dmabuf.attachments.length, 0);
    assert.deepEqual(ex.calls, ["attach", "pin", "detach"]);
    dmaBufPut(dmabuf);
  });
});

describe("6.1 lock asserts around the cache", () => {
  it("a static importer of a dynamic exporter gets its cached table unlocked without a report (6.1); mainline reports", () => {
    for (const profile of [P61, PML]) {
      const { dmabuf, dev, core } = bed(profile, { dynamic: true });
      const a = dmaBufAttach(dmabuf, dev);
      assert.ok(a.ok);
      const m = dmaBufMapAttachment(a.value, "bidirectional");
      assert.ok(m.ok);
      assert.equal(core.lockdep.length, profile.id === "6.1" ? 0 : 1, profile.id);
      dmaBufUnmapAttachmentUnlocked(a.value, m.value, "bidirectional");
      teardown(dmabuf, a.value);
    }
  });
});

describe("move with a dynamic importer (data plane)", () => {
  it("after move_notify the importer re-maps and its DMA lands in the new pages; the old mapping no longer reaches them", () => {
    const { sys, dmabuf, dev, ex, core } = bed(PML, { dynamic: true }, { moveNotify: true });
    let invalidated = 0;
    const a = dmaBufDynamicAttach(dmabuf, dev, { move_notify: () => invalidated++ });
    assert.ok(a.ok);
    dmabuf.resv.lock();
    const m1 = dmaBufMapAttachment(a.value, "from-device");
    assert.ok(m1.ok);
    const seg1 = sgtableDmaSegments(m1.value)[0]!;
    assert.ok(sys.deviceWrite(dev, seg1.dma_address, bytes(64, 1)).ok);
    const oldPage = ex.pages[0]!;
    assert.ok(ex.move().ok);
    assert.equal(invalidated, 1);
    dmaBufUnmapAttachment(a.value, m1.value, "from-device");
    const m2 = dmaBufMapAttachment(a.value, "from-device");
    assert.ok(m2.ok);
    dmabuf.resv.unlock();
    const seg2 = sgtableDmaSegments(m2.value)[0]!;
    assert.deepEqual(
      sys.memory.read(System.phys(ex.pages[0]!), 64),
      bytes(64, 1),
      "the move copied the bytes",
    );
    assert.ok(sys.deviceWrite(dev, seg2.dma_address, bytes(64, 2)).ok);
    assert.deepEqual(sys.memory.read(System.phys(ex.pages[0]!), 64), bytes(64, 2));
    assert.deepEqual(
      sys.memory.read(System.phys(oldPage), 64),
      bytes(64, 1),
      "old pages untouched",
    );
    assert.deepEqual(core.lockdep, []);
    dmaBufUnmapAttachmentUnlocked(a.value, m2.value, "from-device");
    teardown(dmabuf, a.value);
  });

  it("detach with a mapping still out (mainline) is a leak the model reports and the kernel does not", () => {
    const { dmabuf, dev, core } = bed(PML);
    const a = dmaBufAttach(dmabuf, dev);
    assert.ok(a.ok);
    assert.ok(dmaBufMapAttachmentUnlocked(a.value, "to-device").ok);
    dmaBufDetach(dmabuf, a.value);
    assert.equal(core.warnings.length, 0);
    assert.equal(core.modelReports.length, 1);
    dmaBufPut(dmabuf);
  });
});

describe("CONFIG_DMABUF_DEBUG with cached tables and copies", () => {
  it("6.1: the table cached at attach stays mangled while attached; detach unmangles it before the exporter's unmap", () => {
    const { dmabuf, dev, ex } = bed(P61, {}, { debug: true });
    const a = dmaBufDynamicAttach(dmabuf, dev, dynOps());
    assert.ok(a.ok);
    const cached = a.value.sgt!;
    assert.ok(isPoisoned(cached.sgl!));
    dmaBufDetach(dmabuf, a.value);
    assert.equal(
      ex.outstanding.size,
      0,
      "the exporter freed it: it was unmangled first (no KernelBug)",
    );
    dmaBufPut(dmabuf);
  });

  it("mainline: the importer's copy is freed at unmap; touching it afterwards is a use-after-free", () => {
    const { dmabuf, dev } = bed(PML, {}, { debug: true });
    const a = dmaBufAttach(dmabuf, dev);
    assert.ok(a.ok);
    const m = dmaBufMapAttachmentUnlocked(a.value, "to-device");
    assert.ok(m.ok);
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "to-device");
    assert.ok(m.value.freed);
    assert.throws(() => m.value.sgl, /use-after-free/);
    teardown(dmabuf, a.value);
  });
});
