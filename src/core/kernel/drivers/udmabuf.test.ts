import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  amdgpu,
  connectQps,
  MLX5,
  RW,
  remoteNicBed,
  rootPortMachine,
  writeFromHostMr,
} from "../../../../test/support/beds.ts";
import { clean, errnoOf, j, must, wcText, why } from "../../../../test/support/check.ts";
import type { IommuMode } from "../../hw/machine.ts";
import { dmaSetMaskAndCoherent } from "../dma/device.ts";
import {
  dmaBufAttach,
  dmaBufDetach,
  dmaBufDynamicAttach,
  dmaBufMapAttachmentUnlocked,
  dmaBufUnmapAttachmentUnlocked,
} from "../dma-buf/attachment.ts";
import {
  DMA_BUF_IOCTL_SYNC,
  DMA_BUF_SYNC_END,
  DMA_BUF_SYNC_READ,
  DMA_BUF_SYNC_RW,
  DMA_BUF_SYNC_START,
  DMA_BUF_SYNC_WRITE,
  type DmaBuf,
  DmaBufCore,
  dmaBufIsDynamic,
  dmaBufVmapUnlocked,
  dmaBufVunmapUnlocked,
} from "../dma-buf/dma-buf.ts";
import {
  MAP_PRIVATE,
  MAP_SHARED,
  O_RDONLY,
  O_RDWR,
  openRegular,
  PROT_READ,
  PROT_WRITE,
  Process,
  sysClose,
  sysExit,
  sysIoctl,
  sysMmap,
} from "../dma-buf/file.ts";
import type { LeakSource } from "../leaks.ts";
import { for_each_sgtable_dma_sg, for_each_sgtable_sg, type SgTable } from "../lib/scatterlist.ts";
import { PAGE_SIZE_N } from "../mm/page.ts";
import { type KernelProfile, PROFILES } from "../profile.ts";
import { System } from "../system.ts";
import { Tracer } from "../trace.ts";
import { IBV_ACCESS_LOCAL_WRITE, kernelMrOf, RdmaDevice } from "./rdma.ts";
import {
  DMA_HEAP_IOCTL_ALLOC,
  dmaHeapAlloc,
  F_SEAL_FUTURE_WRITE,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  F_SEAL_WRITE,
  MFD_CLOEXEC,
  ShmemFs,
  SystemHeap,
  type SystemHeapBuffer,
  UDMABUF_CREATE,
  UDMABUF_FLAGS_CLOEXEC,
  type UdmabufCreateItem,
  UdmabufDevice,
  udmabufCreate,
  udmabufCreateList,
} from "./udmabuf.ts";

const KiB = 1n << 10n;
const MiB = 1n << 20n;
type ProfileId = "6.1" | "mainline";

const pattern = (n: number, seed: number): Uint8Array =>
  Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed * 11 + 1) & 0xff);

/** An mlx5 NIC (01:00.0) behind root port 00:01.0 and a GPU-like device (02:00.0) behind 00:02.0. */
function bed(
  o: { profile?: ProfileId | KernelProfile; iommu?: IommuMode; dmaDebug?: boolean } = {},
) {
  const tracer = new Tracer(true);
  const desc = rootPortMachine([MLX5, amdgpu()], { iommu: o.iommu ?? "off" });
  const sys = new System(desc, { tracer, ...(o.dmaDebug ? { dmaDebug: true } : {}) });
  const profile = typeof o.profile === "object" ? o.profile : PROFILES[o.profile ?? "mainline"];
  const core = new DmaBufCore({ profile });
  const shmem = new ShmemFs(sys);
  const udev = new UdmabufDevice(sys, core, shmem);
  const proc = new Process("qemu");
  const ufd = must(udev.open(proc), "open /dev/udmabuf");
  return { sys, core, shmem, udev, proc, ufd, tracer };
}
type Bed = ReturnType<typeof bed>;

/** A memfd of `size` bytes, written with `data` (or zeros touched), sealed with `seals`. */
function memfd(b: Bed, size: bigint, seals = F_SEAL_SHRINK, data?: Uint8Array): number {
  const fd = must(b.shmem.memfdCreate(b.proc, "guest-ram"), "memfd_create");
  must(b.shmem.ftruncate(b.proc, fd, size), "ftruncate");
  if (data) must(b.shmem.pwrite(b.proc, fd, 0n, data), "pwrite");
  if (seals) must(b.shmem.addSeals(b.proc, fd, seals), "F_ADD_SEALS");
  return fd;
}

function create(b: Bed, fd: number, offset: bigint, size: bigint, flags = 0) {
  return udmabufCreate(b.proc, b.ufd, { memfd: fd, flags, offset, size });
}

function dmabufOf(b: Bed, fd: number): DmaBuf {
  const d = b.proc.fds.get(fd)?.file.private_data;
  assert.ok(d, `fd ${fd} is a dma-buf`);
  return d;
}

function sources(b: Bed, ...more: LeakSource[]): LeakSource[] {
  return [b.sys, b.core, b.shmem, b.udev, b.proc, ...more];
}

const done = (b: Bed, ...more: LeakSource[]) => {
  sysExit(b.proc);
  clean(sources(b, ...more));
};

const entries = (t: SgTable) => [...for_each_sgtable_dma_sg(t)];

// ─────────────────────────────────────────────────────────────────────────────────────────────

describe("udmabuf: UDMABUF_CREATE / CREATE_LIST checks (§8.49)", () => {
  it("offset or size not page aligned → EINVAL, before the fd is looked at", () => {
    const b = bed();
    const fd = memfd(b, 64n * KiB);
    assert.equal(errnoOf(create(b, fd, 0x800n, 4096n)), "EINVAL", "offset");
    assert.equal(errnoOf(create(b, fd, 0n, 0x1800n)), "EINVAL", "size");
    assert.equal(errnoOf(create(b, 999, 0x800n, 4096n)), "EINVAL", "a bad fd is not reached");
    assert.equal(b.core.buffers.size, 0, "nothing exported");
    done(b);
  });

  it("more than size_limit_mb (default 64 MiB), counted over the whole list → EINVAL; exactly the limit is fine", () => {
    const b = bed();
    assert.equal(b.udev.sizeLimitMb, 64, "default size_limit_mb");
    const fd = memfd(b, 64n * KiB);
    assert.equal(errnoOf(create(b, fd, 0n, 64n * MiB + 4096n)), "EINVAL", "64 MiB + 4 KiB");
    const two = udmabufCreateList(b.proc, b.ufd, {
      flags: 0,
      count: 2,
      list: [
        { memfd: fd, offset: 0n, size: 40n * MiB },
        { memfd: fd, offset: 0n, size: 40n * MiB },
      ],
    });
    assert.equal(errnoOf(two), "EINVAL", "40 + 40 MiB");
    b.udev.sizeLimitMb = 1;
    const big = memfd(b, 2n * MiB);
    assert.equal(errnoOf(create(b, big, 0n, MiB + 4096n)), "EINVAL", "over 1 MiB");
    const ok = create(b, big, 0n, MiB);
    assert.ok(ok.ok, `exactly 1 MiB: ${why(ok)}`);
    done(b);
  });

  it("CREATE_LIST: count > list_limit (1024) → EINVAL first; a list shorter than count → EFAULT", () => {
    const b = bed();
    assert.equal(b.udev.listLimit, 1024, "default list_limit");
    const fd = memfd(b, 64n * KiB);
    const one: UdmabufCreateItem = { memfd: fd, offset: 0n, size: 4096n };
    assert.equal(
      errnoOf(udmabufCreateList(b.proc, b.ufd, { flags: 0, count: 1025, list: [] })),
      "EINVAL",
      "1025 items",
    );
    assert.equal(
      errnoOf(udmabufCreateList(b.proc, b.ufd, { flags: 0, count: 1024, list: [one] })),
      "EFAULT",
      "1024 items announced, 1 given",
    );
    const r = udmabufCreateList(b.proc, b.ufd, {
      flags: 0,
      count: 3,
      list: [one, { ...one, offset: 8192n }, { ...one, offset: 16384n, size: 8192n }],
    });
    assert.ok(r.ok, `three items: ${why(r)}`);
    assert.equal(dmabufOf(b, r.value).size, 16384n, "4 + 4 + 8 KiB");
    done(b);
  });

  it("seals: F_SEAL_SHRINK required; F_SEAL_WRITE or F_SEAL_FUTURE_WRITE refused → EINVAL (also a memfd without MFD_ALLOW_SEALING)", () => {
    const b = bed();
    const cases: [number, string | undefined, string][] = [
      [0, "EINVAL", "no seals"],
      [F_SEAL_GROW, "EINVAL", "GROW only"],
      [F_SEAL_SHRINK | F_SEAL_WRITE, "EINVAL", "WRITE"],
      [F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE, "EINVAL", "FUTURE_WRITE"],
      [F_SEAL_SHRINK, undefined, "SHRINK"],
      [F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, undefined, "SHRINK|GROW|SEAL"],
    ];
    for (const [seals, want, what] of cases)
      assert.equal(errnoOf(create(b, memfd(b, 8192n, seals), 0n, 8192n)), want, what);
    const unsealable = must(b.shmem.memfdCreate(b.proc, "plain", MFD_CLOEXEC), "memfd_create");
    must(b.shmem.ftruncate(b.proc, unsealable, 8192n), "ftruncate");
    assert.equal(
      must(b.shmem.getSeals(b.proc, unsealable), "F_GET_SEALS"),
      F_SEAL_SEAL,
      "F_SEAL_SEAL",
    );
    assert.equal(errnoOf(b.shmem.addSeals(b.proc, unsealable, F_SEAL_SHRINK)), "EPERM", "sealed");
    assert.equal(errnoOf(create(b, unsealable, 0n, 8192n)), "EINVAL", "no F_SEAL_SHRINK");
    done(b);
  });

  it("an fd that is not a shmem file (a regular file) or not open → EBADFD", () => {
    const b = bed();
    const reg = must(openRegular(b.proc, "disk.img"), "open");
    const r = create(b, reg, 0n, 4096n);
    assert.equal(errnoOf(r), "EBADFD", why(r));
    assert.equal(errnoOf(create(b, 77, 0n, 4096n)), "EBADFD", "fd not open");
    assert.equal(b.proc.fds.get(reg)?.file.count, 1, "the regular file's count is unchanged");
    done(b);
  });

  it("zero pages → EINVAL (size 0, an empty list)", () => {
    const b = bed();
    const fd = memfd(b, 8192n);
    assert.equal(errnoOf(create(b, fd, 0n, 0n)), "EINVAL", "size 0");
    assert.equal(
      errnoOf(udmabufCreateList(b.proc, b.ufd, { flags: 0, count: 0, list: [] })),
      "EINVAL",
      "count 0",
    );
    done(b);
  });

  it("a range past the end of the memfd → EINVAL; pages already taken for earlier items are given back", () => {
    const b = bed();
    const fd = memfd(b, 16n * KiB, F_SEAL_SHRINK, pattern(16 * 1024, 1));
    const pages = [...b.shmem.inodeOf(b.proc.fds.get(fd)!.file)!.pages.values()];
    const r = udmabufCreateList(b.proc, b.ufd, {
      flags: 0,
      count: 2,
      list: [
        { memfd: fd, offset: 0n, size: 16n * KiB },
        { memfd: fd, offset: 8n * KiB, size: 16n * KiB },
      ],
    });
    assert.equal(errnoOf(r), "EINVAL", why(r));
    assert.deepEqual(
      pages.map((p) => b.sys.pageRefCount(p)),
      [1, 1, 1, 1],
      "only the page cache's references left",
    );
    const r2 = udmabufCreateList(b.proc, b.ufd, {
      flags: 0,
      count: 2,
      list: [
        { memfd: fd, offset: 0n, size: 4096n },
        { memfd: 99, offset: 0n, size: 4096n },
      ],
    });
    assert.equal(errnoOf(r2), "EBADFD", `item 1's fd: ${why(r2)}`);
    assert.equal(b.sys.pageRefCount(pages[0]!), 1, "item 0's page given back");
    done(b);
  });

  it("success: the pages are held (refcount 2), F_SEAL_WRITE is then refused (EBUSY), the memfd can be closed and the buffer keeps its pages; UDMABUF_FLAGS_CLOEXEC sets O_CLOEXEC, other flag bits are ignored", () => {
    const b = bed();
    const data = pattern(32 * 1024, 2);
    const fd = memfd(b, 32n * KiB, F_SEAL_SHRINK, data);
    const inode = b.shmem.inodeOf(b.proc.fds.get(fd)!.file)!;
    const pages = [...inode.pages.values()];
    const u = must(create(b, fd, 0n, 32n * KiB, UDMABUF_FLAGS_CLOEXEC | 0x80), "create");
    const d = dmabufOf(b, u);
    assert.equal(d.size, 32n * KiB, "size");
    assert.equal(d.exp_name, "udmabuf", "exp_name");
    assert.equal(dmaBufIsDynamic(d), false, "a static exporter");
    assert.equal(b.proc.fds.get(u)?.cloexec, true, "O_CLOEXEC");
    assert.deepEqual(
      pages.map((p) => b.sys.pageRefCount(p)),
      Array(8).fill(2),
      "page cache + udmabuf",
    );
    assert.equal(errnoOf(b.shmem.addSeals(b.proc, fd, F_SEAL_WRITE)), "EBUSY", "pages are pinned");
    assert.ok(
      b.tracer.events.some((e) => e.ev === "udmabuf:create"),
      "create traced",
    );
    must(sysClose(b.proc, fd), "close the memfd");
    assert.deepEqual(
      pages.map((p) => b.sys.pageRefCount(p)),
      Array(8).fill(1),
      "the udmabuf's reference keeps them",
    );
    const a = must(dmaBufAttach(d, b.sys.device("02:00.0")), "attach");
    const sgt = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map");
    const first = entries(sgt)[0]!;
    assert.deepEqual(
      b.sys.memory.read(first.dma_address as never, 16),
      data.subarray(0, 16),
      "the device sees the memfd bytes (no IOMMU: physical addresses)",
    );
    dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
    dmaBufDetach(d, a);
    must(sysClose(b.proc, u), "close the dma-buf");
    assert.deepEqual(
      pages.map((p) => b.sys.pageRefCount(p)),
      Array(8).fill(0),
      "freed at release",
    );
    done(b);
  });

  it("an unknown ioctl → ENOTTY; a bad argument → EFAULT", () => {
    const b = bed();
    assert.equal(errnoOf(sysIoctl(b.proc, b.ufd, 0x1234, null)), "ENOTTY", "unknown");
    assert.equal(errnoOf(sysIoctl(b.proc, b.ufd, UDMABUF_CREATE, null)), "EFAULT", "no argument");
    done(b);
  });
});

describe("udmabuf: mmap and CPU access (§8.50)", () => {
  for (const profile of ["6.1", "mainline"] as const)
    it(`${profile}: mmap without MAP_SHARED → EINVAL, with it fine; SYNC END before any START → EINVAL, START then END fine`, () => {
      const b = bed({ profile });
      const u = must(create(b, memfd(b, 16n * KiB), 0n, 16n * KiB), "create");
      const priv = sysMmap(b.proc, u, { length: 16n * KiB, prot: PROT_READ, flags: MAP_PRIVATE });
      assert.equal(errnoOf(priv), "EINVAL", `MAP_PRIVATE: ${why(priv)}`);
      const shared = sysMmap(b.proc, u, {
        length: 16n * KiB,
        prot: PROT_READ | PROT_WRITE,
        flags: MAP_SHARED,
      });
      assert.ok(shared.ok, `MAP_SHARED: ${why(shared)}`);
      const sync = (flags: bigint) => sysIoctl(b.proc, u, DMA_BUF_IOCTL_SYNC, { flags });
      const end = sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW);
      assert.equal(errnoOf(end), "EINVAL", `END first: ${why(end)}`);
      assert.ok(sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ).ok, "START");
      assert.ok(sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ).ok, "END after START");
      assert.ok(sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ).ok, "START again");
      const cpu = b.tracer.events.filter((e) => e.ev === "udmabuf:cpu_access");
      assert.deepEqual(
        cpu.map((e) => e.data?.["created"]),
        [true, undefined, false],
        "the CPU table is mapped once, at the first START",
      );
      done(b);
    });

  it("6.1 releases the CPU table with the direction it was mapped with; mainline with DMA_BIDIRECTIONAL, which dma-debug reports after a READ-only START", () => {
    for (const profile of ["6.1", "mainline"] as const) {
      const b = bed({ profile, dmaDebug: true });
      const u = must(create(b, memfd(b, 8192n), 0n, 8192n), "create");
      must(sysIoctl(b.proc, u, DMA_BUF_IOCTL_SYNC, { flags: DMA_BUF_SYNC_READ }), "START|READ");
      must(sysClose(b.proc, u), "close: release");
      const codes = b.sys.debug!.reports.map((r) => r.code);
      if (profile === "6.1") assert.deepEqual(codes, [], `6.1: ${j(b.sys.debug!.reports)}`);
      else
        assert.deepEqual(
          codes,
          ["unmap-wrong-direction", "unmap-wrong-direction"],
          `mainline, one report per page entry: ${j(b.sys.debug!.reports)}`,
        );
      done(b);
    }
  });

  it("vmap: 6.1 has none (EINVAL); mainline maps the pages into a vmalloc range", () => {
    for (const profile of ["6.1", "mainline"] as const) {
      const b = bed({ profile });
      const d = dmabufOf(b, must(create(b, memfd(b, 8192n), 0n, 8192n), "create"));
      const v = dmaBufVmapUnlocked(d);
      if (profile === "6.1") assert.equal(errnoOf(v), "EINVAL", `6.1: ${why(v)}`);
      else {
        assert.ok(v.ok, `mainline: ${why(v)}`);
        assert.equal(v.value.isIomem, false, "system memory");
        assert.ok(v.value.addr >= 0xffff_c900_0000_0000n, "a vmalloc address");
        dmaBufVunmapUnlocked(d, v.value);
      }
      done(b);
    }
  });
});

describe("udmabuf: map_dma_buf (any importer)", () => {
  /** 16 pages with a foreign page allocated between pages 7 and 8: two physically contiguous runs. */
  function split(b: Bed) {
    const fd = must(b.shmem.memfdCreate(b.proc, "split"), "memfd");
    must(b.shmem.ftruncate(b.proc, fd, 64n * KiB), "ftruncate");
    must(b.shmem.pwrite(b.proc, fd, 0n, pattern(32 * 1024, 3)), "first half");
    const spacer = b.sys.allocPages(PAGE_SIZE_N);
    must(b.shmem.pwrite(b.proc, fd, 32n * KiB, pattern(32 * 1024, 4)), "second half");
    must(b.shmem.addSeals(b.proc, fd, F_SEAL_SHRINK), "seal");
    return { fd, spacer };
  }

  it("6.1 merges contiguous pages (sg_alloc_table_from_pages): 2 entries; mainline has one entry per page: 16", () => {
    for (const profile of ["6.1", "mainline"] as const) {
      const b = bed({ profile });
      const { fd, spacer } = split(b);
      const d = dmabufOf(b, must(create(b, fd, 0n, 64n * KiB), "create"));
      const a = must(dmaBufAttach(d, b.sys.device("02:00.0")), "static importer");
      const sgt = must(dmaBufMapAttachmentUnlocked(a, "to-device"), "map");
      const cpu = [...for_each_sgtable_sg(sgt)];
      assert.equal(cpu.length, profile === "6.1" ? 2 : 16, `${profile}: CPU entries`);
      assert.ok(
        cpu.every((s) => s.page !== null),
        "page-backed",
      );
      assert.equal(
        entries(sgt).reduce((n, s) => n + s.dma_length, 0),
        64 * 1024,
        "the whole buffer is mapped",
      );
      dmaBufUnmapAttachmentUnlocked(a, sgt, "to-device");
      dmaBufDetach(d, a);
      b.sys.freePages(spacer);
      done(b);
    }
  });

  it("a static importer and a dynamic one without allow_peer2peer both map (system memory needs no P2P); behind an IOMMU they get IOVAs", () => {
    const b = bed({ iommu: "dma" });
    const fd = memfd(b, 16n * KiB, F_SEAL_SHRINK, pattern(16 * 1024, 5));
    const d = dmabufOf(b, must(create(b, fd, 0n, 16n * KiB), "create"));
    const gpu = b.sys.device("02:00.0");
    dmaSetMaskAndCoherent(gpu, 64);
    const s = must(dmaBufAttach(d, gpu), "static");
    const n = must(
      dmaBufDynamicAttach(d, b.sys.device("01:00.0"), {
        allow_peer2peer: false,
        move_notify: () => {},
      }),
      "dynamic, no P2P",
    );
    const ts = must(dmaBufMapAttachmentUnlocked(s, "bidirectional"), "static map");
    const tn = must(dmaBufMapAttachmentUnlocked(n, "bidirectional"), "dynamic map");
    const phys0 = b.shmem.phys(b.proc, fd, 0n);
    for (const [t, what] of [
      [ts, "static"],
      [tn, "dynamic"],
    ] as const) {
      const e = entries(t);
      assert.ok(e.length >= 1, `${what}: mapped`);
      assert.notEqual(e[0]!.dma_address, phys0, `${what}: an IOVA, not the physical address`);
    }
    const w = b.sys.deviceWrite(gpu, entries(ts)[0]!.dma_address, pattern(100, 6));
    assert.ok(w.ok, `the GPU writes through its IOVA: ${j(w)}`);
    assert.deepEqual(
      must(b.shmem.pread(b.proc, fd, 0n, 100), "pread"),
      pattern(100, 6),
      "the write is in the memfd",
    );
    dmaBufUnmapAttachmentUnlocked(s, ts, "bidirectional");
    dmaBufUnmapAttachmentUnlocked(n, tn, "bidirectional");
    dmaBufDetach(d, s);
    dmaBufDetach(d, n);
    done(b);
  });
});

// ── RDMA ─────────────────────────────────────────────────────────────────────────────────────

describe("udmabuf + RDMA: a NIC imports a udmabuf and a remote WRITE lands in the memfd", () => {
  const cases = [
    { profile: "6.1", odp: true },
    { profile: "mainline", odp: true },
    { profile: "mainline", odp: false },
  ] as const;
  for (const c of cases)
    it(`${c.profile}, ${c.odp ? "mlx5 (dynamic)" : "pinned provider"}, IOMMU on: the MR holds IOVAs of the memfd pages; B's WRITE lands in them`, () => {
      const A = bed({ profile: c.profile, iommu: "dma" });
      const memfdFd = memfd(A, 64n * KiB, F_SEAL_SHRINK, new Uint8Array(64 * 1024));
      const u = must(create(A, memfdFd, 0n, 64n * KiB), "udmabuf");
      const nicA = new RdmaDevice(A.sys, A.core, "01:00.0", { odp: c.odp });
      const B = remoteNicBed({ proc: "client" });
      const { ctxA, ctxB, pdA, pdB, qpB } = connectQps({ nic: nicA, proc: A.proc }, B);
      const mrA = must(ctxA.regDmabufMr(pdA, 0n, 64n * KiB, 0x1000_0000n, u, RW), "udmabuf MR");
      const k = kernelMrOf(mrA)!;
      assert.ok(k.mtt!.length >= 1, "translation loaded");
      for (const s of k.mtt!) assert.equal(s.kind, "iova", "IOVA");
      const mrB = must(ctxB.regMr(pdB, 64n * KiB, IBV_ACCESS_LOCAL_WRITE), "host MR");
      const data = pattern(20_000, 7);
      const wc = writeFromHostMr(qpB, mrB, data, mrA.iova + 5000n, mrA.rkey);
      assert.equal(wc.status, "IBV_WC_SUCCESS", wcText(wc));
      assert.equal(wc.detail, undefined, `nothing dropped: ${wcText(wc)}`);
      assert.deepEqual(
        must(A.shmem.pread(A.proc, memfdFd, 5000n, 20_000), "pread"),
        data,
        "the bytes are in the memfd pages",
      );
      assert.deepEqual(
        must(A.shmem.pread(A.proc, memfdFd, 4999n, 1), "pread"),
        new Uint8Array(1),
        "nothing before",
      );
      sysExit(A.proc);
      sysExit(B.proc);
      clean([...sources(A, nicA), B.sys, B.core, B.nic, B.proc]);
    });
});

// ── the system heap ──────────────────────────────────────────────────────────────────────────

describe("system heap (§8.51)", () => {
  function heapBed(profile: ProfileId = "mainline") {
    const b = bed({ profile, iommu: "dma", dmaDebug: true });
    const heap = new SystemHeap(b.sys, b.core);
    const hfd = must(heap.open(b.proc), "open /dev/dma_heap/system");
    return { ...b, heap, hfd };
  }
  const bufOf = (h: ReturnType<typeof heapBed>, fd: number): SystemHeapBuffer =>
    dmabufOf(h, fd).priv as SystemHeapBuffer;

  it("DMA_HEAP_IOCTL_ALLOC: fd ≠ 0, fd_flags outside O_CLOEXEC|O_ACCMODE, heap flags, length 0 → EINVAL; chunks of 1 MiB, 64 KiB, 4 KiB; the length is page aligned", () => {
    const h = heapBed();
    const raw = (a: object) => errnoOf(sysIoctl(h.proc, h.hfd, DMA_HEAP_IOCTL_ALLOC, a));
    const base = { len: 4096n, fd: 0, fd_flags: O_RDWR, heap_flags: 0n };
    assert.equal(raw({ ...base, fd: 3 }), "EINVAL", "fd set");
    assert.equal(raw({ ...base, fd_flags: O_RDWR | 0o4000 }), "EINVAL", "O_NONBLOCK");
    assert.equal(raw({ ...base, heap_flags: 1n }), "EINVAL", "heap flag");
    assert.equal(raw({ ...base, len: 0n }), "EINVAL", "length 0");
    const fd = must(dmaHeapAlloc(h.proc, h.hfd, MiB + 64n * KiB + 5000n), "alloc");
    const buf = bufOf(h, fd);
    assert.deepEqual(
      buf.chunks.map((c) => c.order),
      [8, 4, 0, 0],
      "1 MiB, 64 KiB, 4 KiB, 4 KiB",
    );
    assert.equal(buf.len, MiB + 64n * KiB + 8192n, "page aligned");
    assert.equal(h.proc.fds.get(fd)?.cloexec, true, "O_CLOEXEC from fd_flags");
    const ro = must(dmaHeapAlloc(h.proc, h.hfd, 4096n, { fdFlags: O_RDONLY }), "read-only");
    assert.equal(h.proc.fds.get(ro)?.file.f_mode, 1, "FMODE_READ only");
    done(h, h.heap);
  });

  it("each attachment gets its own copy of the page list; begin/end_cpu_access sync only the attachments that are mapped", () => {
    const h = heapBed();
    const fd = must(dmaHeapAlloc(h.proc, h.hfd, 128n * KiB), "alloc");
    const d = dmabufOf(h, fd);
    const buf = d.priv as SystemHeapBuffer;
    const nic = h.sys.device("01:00.0");
    const gpu = h.sys.device("02:00.0");
    const a = must(dmaBufAttach(d, nic), "attach NIC");
    const g = must(dmaBufAttach(d, gpu), "attach GPU");
    assert.equal(buf.attachments.length, 2, "two copies");
    const [cg, cn] = buf.attachments.map((x) => x.table);
    assert.notEqual(cg, cn, "distinct tables");
    assert.notEqual(cn, buf.sg_table, "not the buffer's own table");
    assert.deepEqual(
      [...for_each_sgtable_sg(cn!)].map((s) => s.page),
      [...for_each_sgtable_sg(buf.sg_table)].map((s) => s.page),
      "same pages",
    );
    const sync = (flags: bigint) =>
      must(sysIoctl(h.proc, fd, DMA_BUF_IOCTL_SYNC, { flags }), `SYNC ${flags}`);
    sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ);
    assert.equal(h.heap.syncs.length, 0, "nothing mapped: nothing synced");
    const ta = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map NIC");
    assert.equal(ta, buf.attachments.find((x) => x.attach === a)?.table, "the attachment's copy");
    sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ);
    sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE);
    assert.deepEqual(
      h.heap.syncs.map((s) => [s.device, s.to, s.dir]),
      [
        [nic.name, "cpu", "from-device"],
        [nic.name, "device", "to-device"],
      ],
      "only the mapped NIC",
    );
    const tg = must(dmaBufMapAttachmentUnlocked(g, "bidirectional"), "map GPU");
    assert.notEqual(tg, ta, "each device maps its own copy");
    assert.equal(tg.nents > 0 && ta.nents > 0, true, "both mapped");
    dmaBufUnmapAttachmentUnlocked(a, ta, "bidirectional");
    h.heap.syncs.length = 0;
    sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW);
    assert.deepEqual(
      h.heap.syncs.map((s) => s.device),
      [gpu.name],
      "after the NIC unmapped: only the GPU",
    );
    assert.deepEqual(h.sys.debug!.reports, [], "dma-debug is happy with the syncs");
    dmaBufUnmapAttachmentUnlocked(g, tg, "bidirectional");
    dmaBufDetach(d, a);
    dmaBufDetach(d, g);
    assert.equal(buf.attachments.length, 0, "copies freed at detach");
    done(h, h.heap);
  });

  it("6.1 too: same per-attachment copies and syncs (a dynamic importer is mapped at attach there)", () => {
    const h = heapBed("6.1");
    const fd = must(dmaHeapAlloc(h.proc, h.hfd, 64n * KiB), "alloc");
    const d = dmabufOf(h, fd);
    const a = must(
      dmaBufDynamicAttach(d, h.sys.device("01:00.0"), {
        allow_peer2peer: true,
        move_notify: () => {},
      }),
      "dynamic attach",
    );
    const g = must(dmaBufAttach(d, h.sys.device("02:00.0")), "static attach");
    must(sysIoctl(h.proc, fd, DMA_BUF_IOCTL_SYNC, { flags: DMA_BUF_SYNC_READ }), "START");
    assert.deepEqual(
      h.heap.syncs.map((s) => s.device),
      [h.sys.device("01:00.0").name],
      "only the dynamic importer, mapped at attach (6.1), is synced",
    );
    dmaBufDetach(d, a);
    dmaBufDetach(d, g);
    done(h, h.heap);
  });
});
