import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { topo } from "../../../test/support/topology.ts";
import type { IommuMode } from "../hw/machine.ts";
import { dmaSetMaskAndCoherent } from "./dma/device.ts";
import {
  type DmaBufAttachment,
  dmaBufAttach,
  dmaBufDetach,
  dmaBufDynamicAttach,
  dmaBufMapAttachmentUnlocked,
  dmaBufPin,
  dmaBufUnmapAttachmentUnlocked,
  dmaBufUnpin,
} from "./dma-buf/attachment.ts";
import { DmaBufCore, dmaBufVmapUnlocked, dmaBufVunmapUnlocked } from "./dma-buf/dma-buf.ts";
import {
  dmaBufFd,
  dmaBufGet,
  dmaBufPut,
  O_CLOEXEC,
  O_RDWR,
  openRegular,
  Process,
  sysClose,
  sysExit,
} from "./dma-buf/file.ts";
import { DmaFence } from "./dma-buf/resv.ts";
import { SysmemExporter, type SysmemExporterOptions } from "./dma-buf/sysmem-exporter.ts";
import { KernelBug } from "./errno.ts";
import { type Leak, leakReport } from "./leaks.ts";
import { sg_alloc_table_from_pages, sgtableDmaSegments } from "./lib/scatterlist.ts";
import { PROFILES } from "./profile.ts";
import { System } from "./system.ts";

const MiB = 1n << 20n;
const BAR = 0xf800_0000n;

/** Two endpoints on two root ports; 02:00.0 has a BAR that can become p2pmem. */
function machine(iommu: IommuMode) {
  return topo()
    .hostFn("00:00.0", "8086:1234")
    .rootPort("00:01.0")
    .ep("01:00.0", { driver: "mlx5_core" })
    .rootPort("00:02.0")
    .ep("02:00.0", { driver: "nvme", bars: [{ index: 2, start: BAR, size: 8n * MiB }] })
    .iommu(iommu)
    .build();
}

function sysOf(iommu: IommuMode, dmaDebug = false) {
  const sys = new System(machine(iommu), { dmaDebug });
  const dev = sys.device("01:00.0");
  dmaSetMaskAndCoherent(dev, 64);
  return { sys, dev };
}

function bed(
  exp: Partial<SysmemExporterOptions> = {},
  o: { iommu?: IommuMode; dmaDebug?: boolean } = {},
) {
  const { sys, dev } = sysOf(o.iommu ?? "dma", o.dmaDebug ?? false);
  const core = new DmaBufCore({ profile: PROFILES.mainline });
  const ex = new SysmemExporter(sys, { size: 16384n, name: "heap", ...exp });
  const r = ex.export(core);
  assert.ok(r.ok, "export succeeds");
  const proc = new Process("trainer");
  return { sys, dev, core, ex, dmabuf: r.value, proc };
}

const kinds = (ls: readonly Leak[]): string[] => ls.map((l) => l.kind).sort();
const show = (ls: readonly Leak[]): string =>
  ls.map((l) => `${l.kind} [${l.owner}] ${l.detail}`).join("\n");
const dynOps = { move_notify: (_a: DmaBufAttachment) => {} };

describe("System leaks", () => {
  it("a fresh system with an IOMMU reports nothing: reserved ranges (MSI window) are not leaks", () => {
    const { sys } = sysOf("dma");
    sys.device("02:00.0");
    const t = sys.device("01:00.0").translation;
    assert.ok(t.kind === "dma", "the device sits in a DMA domain");
    assert.ok(t.iova.domain.iovad.reservedRanges().length > 0, "the MSI window is reserved");
    assert.deepEqual(sys.leaks(), [], show(sys.leaks()));
  });

  it("dma_map_sgtable through the IOMMU leaves an IOVA and an IOMMU mapping until dma_unmap_sgtable", () => {
    const { sys, dev } = sysOf("dma", true);
    const pages = sys.allocPages(8192n);
    const t = sg_alloc_table_from_pages(pages, 0, 8192);
    assert.ok(t.ok, "sg table allocated");
    const m = sys.dma.mapSgtable(dev, t.value, "bidirectional");
    assert.ok(m.ok, "mapped");
    const dma = sgtableDmaSegments(t.value)[0]!.dma_address;
    const ls = sys.leaks();
    assert.deepEqual(kinds(ls), ["dma-debug-entry", "iommu-mapping", "iova", "page-ref"], show(ls));
    const iova = ls.find((l) => l.kind === "iova")!;
    assert.match(iova.detail, new RegExp(`IOVA 0x${dma.toString(16)}-`), "names the IOVA in hex");
    assert.match(iova.detail, /mlx5_core 0000:01:00\.0/, "names the device of the group");
    assert.match(
      ls.find((l) => l.kind === "iommu-mapping")!.detail,
      new RegExp(`phys 0x${System.phys(pages[0]!).toString(16)} \\(System RAM\\) RW`),
      "names the physical target and its region",
    );
    assert.match(
      ls.find((l) => l.kind === "page-ref")!.detail,
      /\(2 pages at phys 0x[0-9a-f]+, System RAM\): refcount 1/,
      "one run of two pages",
    );
    sys.dma.unmapSgtable(dev, t.value, "bidirectional");
    assert.deepEqual(kinds(sys.leaks()), ["page-ref"], show(sys.leaks()));
    sys.freePages(pages);
    assert.deepEqual(sys.leaks(), [], show(sys.leaks()));
  });

  it("a lazy (DMA_FQ) domain: IOVAs waiting in the flush queue or cached in the rcache are free", () => {
    const { sys, dev } = sysOf("dma-fq");
    const [page] = sys.allocPages(4096n);
    const dma = sys.dma.mapPhys(dev, System.phys(page!), 4096n, "to-device");
    assert.ok(!sys.dma.mappingError(dev, dma), "mapped");
    assert.deepEqual(kinds(sys.leaks()), ["iommu-mapping", "iova", "page-ref"], show(sys.leaks()));
    sys.dma.unmapPhys(dev, dma, 4096n, "to-device");
    const t = dev.translation;
    assert.ok(t.kind === "dma", "DMA domain");
    assert.equal(t.iova.domain.queuedFrees().length, 1, "the IOVA waits in the flush queue");
    assert.deepEqual(kinds(sys.leaks()), ["page-ref"], show(sys.leaks()));
    t.iova.domain.flushQueueNow();
    assert.equal(t.iova.domain.queuedFrees().length, 0, "the flush queue is empty");
    assert.ok(t.iova.domain.iovad.cachedPfns().length > 0, "the IOVA sits in an rcache magazine");
    assert.deepEqual(kinds(sys.leaks()), ["page-ref"], show(sys.leaks()));
    sys.putPage(page!);
    assert.deepEqual(sys.leaks(), [], show(sys.leaks()));
  });

  it("dma-debug reports a direct mapping (no IOMMU) until it is unmapped", () => {
    const { sys, dev } = sysOf("off", true);
    const [page] = sys.allocPages(4096n);
    const dma = sys.dma.mapPhys(dev, System.phys(page!), 256n, "from-device");
    assert.ok(!sys.dma.mappingError(dev, dma), "mapped");
    const ls = sys.leaks().filter((l) => l.kind !== "page-ref");
    assert.deepEqual(kinds(ls), ["dma-debug-entry"], show(ls));
    assert.match(
      ls[0]!.detail,
      /mlx5_core 0000:01:00\.0: single mapping not unmapped \[device address=0x[0-9a-f]+\] \[size=256 bytes\] \[from-device\]/,
      "a dma-debug style line",
    );
    sys.dma.unmapPhys(dev, dma, 256n, "from-device");
    sys.freePages([page!]);
    assert.deepEqual(sys.leaks(), [], show(sys.leaks()));
  });

  it("swiotlb slots in use are reported until the bounce is unmapped", () => {
    const { sys, dev } = sysOf("off");
    dmaSetMaskAndCoherent(dev, 32);
    const [page] = sys.allocPages(4096n); // above 4 GiB: a 32-bit device needs a bounce
    const dma = sys.dma.mapPhys(dev, System.phys(page!), 4096n, "bidirectional");
    assert.ok(!sys.dma.mappingError(dev, dma), "bounced");
    assert.ok(sys.swiotlb.isBounce(dma), "the mapping is a bounce buffer");
    const ls = sys.leaks().filter((l) => l.kind !== "page-ref");
    assert.deepEqual(kinds(ls), ["swiotlb-slot"], show(ls));
    assert.match(ls[0]!.detail, /2 slot\(s\) at 0x[0-9a-f]+ bouncing phys 0x1[0-9a-f]{8}/, "hex");
    sys.dma.unmapPhys(dev, dma, 4096n, "bidirectional");
    sys.freePages([page!]);
    assert.deepEqual(sys.leaks(), [], show(sys.leaks()));
  });

  it("p2pmem allocations are reported until pci_free_p2pmem", () => {
    const { sys } = sysOf("dma");
    const fn = sys.machine.byBdf("02:00.0")!;
    assert.ok(sys.p2pmem.addResource(fn, 2, 2n * MiB, 0n).ok, "p2pmem resource added");
    assert.deepEqual(sys.leaks(), [], "a registered pool is not a leak");
    const va = sys.p2pmem.alloc(fn, 8192n);
    assert.ok(va !== null, "allocated");
    const ls = sys.leaks();
    assert.deepEqual(kinds(ls), ["p2pmem"], show(ls));
    assert.match(
      ls[0]!.detail,
      /nvme 0000:02:00\.0: pci_alloc_p2pmem\(\) of 2 page\(s\) at 0x[0-9a-f]+ \(bus 0xf8000000\)/,
      "names the provider, the kernel VA and the bus address",
    );
    sys.p2pmem.free(fn, va, 8192n);
    assert.deepEqual(sys.leaks(), [], show(sys.leaks()));
  });

  it("page references: get_page/put_page count, the last put frees, a put on a free page is a bug", () => {
    const { sys } = sysOf("off");
    const pages = sys.allocPages(3n * 4096n);
    assert.equal(sys.pageRefCount(pages[1]!), 1, "allocated with one reference");
    sys.getPage(pages[1]!); // a driver pins the middle page
    const ls = sys.leaks();
    assert.deepEqual(kinds(ls), ["page-ref", "page-ref", "page-ref"], show(ls));
    assert.match(ls[1]!.detail, /refcount 2/, "the pinned page has two references");
    sys.freePages(pages);
    assert.equal(sys.pageRefCount(pages[0]!), 0, "freed");
    const left = sys.leaks();
    assert.equal(left.length, 1, show(left));
    assert.match(left[0]!.detail, /^pfn 0x[0-9a-f]+ \(1 page at phys .*refcount 1/, "the pin");
    sys.putPage(pages[1]!); // the driver unpins
    assert.deepEqual(sys.leaks(), [], show(sys.leaks()));
    assert.throws(() => sys.putPage(pages[1]!), KernelBug, "put_page on a free page");
    assert.throws(() => sys.getPage(pages[0]!), KernelBug, "get_page on a free page");
    assert.equal(
      sys.pageRefCount({ pfn: 0x12345n, pgmap: null }),
      null,
      "pages that did not come from allocPages are not counted",
    );
  });
});

describe("DmaBufCore leaks", () => {
  it("closing the fd with an importer's reference and an attachment left: attachment and buffer leak", () => {
    const { sys, dev, core, ex, dmabuf, proc } = bed();
    const fd = dmaBufFd(proc, dmabuf, O_CLOEXEC | O_RDWR);
    assert.ok(fd.ok, "fd installed");
    const got = dmaBufGet(proc, fd.value); // the importer's reference
    assert.ok(got.ok, "dma_buf_get");
    const a = dmaBufAttach(dmabuf, dev);
    assert.ok(a.ok, "attached");
    assert.ok(sysClose(proc, fd.value).ok, "close");
    assert.equal(dmabuf.state, "live", "the importer's reference keeps the buffer alive");
    const ls = core.leaks();
    assert.deepEqual(kinds(ls), ["attachment", "dma-buf"], show(ls));
    assert.match(
      ls.find((l) => l.kind === "attachment")!.detail,
      new RegExp(`attachment #\\d+ of mlx5_core 0000:01:00\\.0 to dmabuf:${dmabuf.ino} \\(heap`),
      "names the device and the buffer",
    );
    assert.match(
      ls.find((l) => l.kind === "dma-buf")!.detail,
      new RegExp(`dmabuf:${dmabuf.ino} .*still on db_list: file dmabuf:${dmabuf.ino} holds 1`),
      "names the buffer by inode",
    );
    assert.deepEqual(kinds(ex.leaks()), ["dma-buf"], show(ex.leaks()));
    dmaBufDetach(dmabuf, a.value);
    dmaBufPut(got.value);
    assert.deepEqual(
      leakReport([sys, core, proc, ex]),
      [],
      show(leakReport([sys, core, proc, ex])),
    );
  });

  it("releasing a buffer with an attachment left: the attachment leaks for good", () => {
    const { dev, core, dmabuf, proc } = bed();
    const fd = dmaBufFd(proc, dmabuf, O_RDWR);
    assert.ok(fd.ok, "fd installed");
    const a = dmaBufAttach(dmabuf, dev);
    assert.ok(a.ok, "attached");
    assert.ok(sysClose(proc, fd.value).ok, "close drops the last reference");
    assert.equal(dmabuf.state, "released", "released");
    assert.equal(core.warnings.length, 1, "the kernel's WARN_ON");
    const ls = core.leaks();
    assert.deepEqual(kinds(ls), ["attachment"], show(ls));
    assert.match(ls[0]!.detail, /released with it attached/, "explains why");
  });

  it("a mapping not unmapped is an sg-mapping leak until unmapped; detached without unmap it stays", () => {
    const { sys, dev, core, ex, dmabuf } = bed();
    const a = dmaBufAttach(dmabuf, dev);
    assert.ok(a.ok, "attached");
    const m = dmaBufMapAttachmentUnlocked(a.value, "to-device");
    assert.ok(m.ok, "mapped");
    const ls = core.leaks();
    assert.deepEqual(kinds(ls), ["attachment", "dma-buf", "sg-mapping"], show(ls));
    assert.match(
      ls.find((l) => l.kind === "sg-mapping")!.detail,
      /heap sgt for mlx5_core 0000:01:00\.0: 1 DMA segment\(s\) from 0x[0-9a-f]+, mapped to-device/,
      "names the table, its DMA address and direction",
    );
    assert.deepEqual(kinds(sys.leaks()), ["iommu-mapping", "iova", "page-ref"], show(sys.leaks()));
    dmaBufUnmapAttachmentUnlocked(a.value, m.value, "to-device");
    assert.deepEqual(kinds(core.leaks()), ["attachment", "dma-buf"], show(core.leaks()));
    // map again, then detach without unmapping (mainline leaks the table)
    const m2 = dmaBufMapAttachmentUnlocked(a.value, "to-device");
    assert.ok(m2.ok, "mapped again");
    dmaBufDetach(dmabuf, a.value);
    dmaBufPut(dmabuf);
    const after = core.leaks();
    assert.deepEqual(kinds(after), ["sg-mapping"], show(after));
    assert.match(after[0]!.detail, /detached without unmapping: leaked/, "explains");
    assert.deepEqual(ex.leaks(), [], "the exporter's buffer was released");
    assert.deepEqual(kinds(sys.leaks()), ["iommu-mapping", "iova"], show(sys.leaks()));
  });

  it("dma_buf_pin without dma_buf_unpin is a pin leak", () => {
    const { sys, dev, core, ex, dmabuf } = bed({ dynamic: true });
    const a = dmaBufDynamicAttach(dmabuf, dev, dynOps);
    assert.ok(a.ok, "attached");
    dmabuf.resv.lock();
    assert.ok(dmaBufPin(a.value).ok, "pinned");
    dmabuf.resv.unlock();
    const ls = core.leaks();
    assert.deepEqual(kinds(ls), ["attachment", "dma-buf", "pin"], show(ls));
    assert.match(ls.find((l) => l.kind === "pin")!.detail, /pinned 1 time\(s\)/, "counts pins");
    assert.match(ex.leaks()[0]!.detail, /pinned 1 time\(s\)/, "the exporter sees the pin too");
    dmabuf.resv.lock();
    dmaBufUnpin(a.value);
    dmabuf.resv.unlock();
    assert.deepEqual(kinds(core.leaks()), ["attachment", "dma-buf"], show(core.leaks()));
    dmaBufDetach(dmabuf, a.value);
    dmaBufPut(dmabuf);
    assert.deepEqual(leakReport([sys, core, ex]), [], show(leakReport([sys, core, ex])));
  });

  it("vmaps, a held reservation lock and unsignalled fences are reported", () => {
    const { core, dmabuf } = bed({ vmap: true });
    const v = dmaBufVmapUnlocked(dmabuf);
    assert.ok(v.ok, "vmapped");
    dmabuf.resv.lock();
    const fence = new DmaFence({ name: "render#1" });
    dmabuf.resv.addFence(fence, "write");
    const ls = core.leaks();
    assert.deepEqual(kinds(ls), ["dma-buf", "fence", "resv-lock", "vmap"], show(ls));
    assert.match(ls.find((l) => l.kind === "vmap")!.detail, /vmapped 1 time\(s\) at 0x/, "hex");
    assert.match(
      ls.find((l) => l.kind === "fence")!.detail,
      /render#1 \(write\) on resv of dmabuf:\d+ unsignalled: nothing will signal it/,
      "names the fence and its usage",
    );
    dmabuf.resv.unlock();
    fence.signal();
    dmaBufVunmapUnlocked(dmabuf, v.value);
    assert.deepEqual(kinds(core.leaks()), ["dma-buf"], show(core.leaks()));
    dmaBufPut(dmabuf);
    assert.deepEqual(core.leaks(), [], show(core.leaks()));
  });
});

describe("Process leaks", () => {
  it("open fds are reported by name; exit closes them and releases the dma-buf", () => {
    const { sys, core, ex, dmabuf, proc } = bed();
    const fd = dmaBufFd(proc, dmabuf, O_RDWR);
    assert.ok(fd.ok, "fd installed");
    assert.ok(openRegular(proc, "/tmp/log").ok, "regular file opened");
    const ls = proc.leaks();
    assert.deepEqual(kinds(ls), ["fd", "fd"], show(ls));
    assert.equal(ls[0]!.owner, `process trainer (pid ${proc.pid})`, "owner names the process");
    assert.match(
      ls[0]!.detail,
      new RegExp(`^fd ${fd.value} -> dmabuf:${dmabuf.ino} \\(heap, 16384 bytes\\) \\(dma_buf_fops`),
      "the dma-buf fd names the buffer",
    );
    assert.match(ls[1]!.detail, /-> \/tmp\/log \(regular file/, "the regular file by name");
    sysExit(proc);
    assert.deepEqual(proc.leaks(), [], "an exited process has no fds");
    assert.equal(dmabuf.state, "released", "the last reference went with the fd");
    assert.equal(ex.count("release"), 1, "the exporter released it");
    assert.deepEqual(leakReport([sys, core, ex]), [], show(leakReport([sys, core, ex])));
  });
});

describe("SysmemExporter leaks", () => {
  it("reports the buffer it backs until release, then its pages are free", () => {
    const { sys, ex, dmabuf } = bed({}, { iommu: "off" });
    const ls = ex.leaks();
    assert.deepEqual(kinds(ls), ["dma-buf"], show(ls));
    assert.equal(ls[0]!.owner, "sysmem exporter heap", "owner names the exporter");
    assert.match(
      ls[0]!.detail,
      new RegExp(`still backs dmabuf:${dmabuf.ino} .*: 4 page\\(s\\) from phys 0x1[0-9a-f]{8}`),
      "names the buffer and its pages",
    );
    assert.deepEqual(kinds(sys.leaks()), ["page-ref"], "its pages are referenced");
    dmaBufPut(dmabuf);
    assert.deepEqual(ex.leaks(), [], show(ex.leaks()));
    assert.deepEqual(sys.leaks(), [], show(sys.leaks()));
  });

  it("move() gives the old pages back", () => {
    const { sys, dev, core, ex, dmabuf } = bed({ dynamic: true });
    const a = dmaBufDynamicAttach(dmabuf, dev, dynOps);
    assert.ok(a.ok, "attached");
    const old = ex.pages[0]!;
    dmabuf.resv.lock();
    assert.ok(ex.move().ok, "moved");
    dmabuf.resv.unlock();
    assert.equal(sys.pageRefCount(old), 0, "the old page is free");
    assert.equal(sys.pageRefCount(ex.pages[0]!), 1, "the new page is referenced");
    dmaBufDetach(dmabuf, a.value);
    dmaBufPut(dmabuf);
    assert.deepEqual(leakReport([sys, core, ex]), [], show(leakReport([sys, core, ex])));
  });
});

describe("a full cycle leaves nothing behind", () => {
  for (const iommu of ["dma", "dma-fq", "off"] as const)
    it(`export → fd → attach → map → DMA → unmap → detach → close (IOMMU ${iommu}, dma-debug on)`, () => {
      const { sys, dev, core, ex, dmabuf, proc } = bed({}, { iommu, dmaDebug: true });
      const fd = dmaBufFd(proc, dmabuf, O_CLOEXEC | O_RDWR);
      assert.ok(fd.ok, "fd installed");
      const got = dmaBufGet(proc, fd.value);
      assert.ok(got.ok, "the importer takes a reference");
      const a = dmaBufAttach(got.value, dev);
      assert.ok(a.ok, "attached");
      const m = dmaBufMapAttachmentUnlocked(a.value, "from-device");
      assert.ok(m.ok, "mapped");
      const seg = sgtableDmaSegments(m.value)[0]!;
      assert.ok(sys.deviceWrite(dev, seg.dma_address, new Uint8Array(64).fill(7)).ok, "DMA");
      const during = kinds(leakReport([sys, core, proc, ex]));
      for (const k of ["attachment", "dma-buf", "dma-debug-entry", "fd", "page-ref", "sg-mapping"])
        assert.ok(during.includes(k), `${k} is reported while the buffer is in use`);
      assert.equal(
        during.includes("iova"),
        iommu !== "off",
        "an IOVA is held exactly when the IOMMU translates",
      );
      dmaBufUnmapAttachmentUnlocked(a.value, m.value, "from-device");
      dmaBufDetach(got.value, a.value);
      dmaBufPut(got.value);
      assert.ok(sysClose(proc, fd.value).ok, "close");
      const report = leakReport([sys, core, proc, ex]);
      assert.deepEqual(report, [], show(report));
      assert.deepEqual(sys.debug?.reports, [], "dma-debug saw no misuse");
    });
});
