import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { topo } from "../../../../test/support/topology.ts";
import { PROFILES } from "../profile.ts";
import { System } from "../system.ts";
import { dmaBufAttach, dmaBufDetach } from "./attachment.ts";
import {
  type DmaBufCore as Core,
  DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
  DMA_BUF_IOCTL_IMPORT_SYNC_FILE,
  DMA_BUF_IOCTL_SYNC,
  DMA_BUF_SET_NAME,
  DMA_BUF_SET_NAME_A,
  DmaBufCore,
  type DmaBufOps,
  dmaBufBeginCpuAccess,
  dmaBufExport,
  dmaBufFdinfo,
  dmaBufMmap,
  dmaBufVmap,
  dmaBufVmapUnlocked,
  dmaBufVunmap,
  dmaBufVunmapUnlocked,
  getDmaBuf,
  Module,
} from "./dma-buf.ts";
import {
  dmaBufFd,
  dmaBufGet,
  dmaBufPut,
  EPOLLIN,
  EPOLLOUT,
  MAP_PRIVATE,
  MAP_SHARED,
  O_CLOEXEC,
  O_RDONLY,
  O_RDWR,
  O_WRONLY,
  PROT_READ,
  PROT_WRITE,
  Process,
  SEEK_CUR,
  SEEK_END,
  SEEK_SET,
  syncFileCreate,
  syncFileGetFence,
  sysClose,
  sysIoctl,
  sysLseek,
  sysMmap,
  sysPoll,
  type Vma,
} from "./file.ts";
import { DmaFence } from "./resv.ts";
import { SysmemExporter, type SysmemExporterOptions } from "./sysmem-exporter.ts";

const sysOf = () =>
  new System(topo().hostFn("00:00.0", "8086:1234").rootPort("00:01.0").ep("01:00.0", {}).build());

function setup(exp: Partial<SysmemExporterOptions> = {}, profile = PROFILES["6.1"]) {
  const core = new DmaBufCore({ profile });
  const ex = new SysmemExporter(sysOf(), { size: 8192n, ...exp });
  const r = ex.export(core);
  assert.ok(r.ok);
  const proc = new Process("app");
  return { core, ex, dmabuf: r.value, proc };
}

const minimalOps = (): DmaBufOps => ({
  map_dma_buf: () => null,
  unmap_dma_buf: () => {},
  release: () => {},
});

const errno = (r: { ok: boolean; errno?: string }) => (r.ok ? "ok" : r.errno);

describe("dma_buf_export", () => {
  it("1: release, map, unmap or priv missing → -EINVAL with WARN; nothing allocated", () => {
    const core = new DmaBufCore();
    for (const drop of ["release", "map_dma_buf", "unmap_dma_buf"] as const) {
      const ops = { ...minimalOps(), [drop]: undefined };
      const r = dmaBufExport(core, { size: 4096n, ops, priv: {} });
      assert.equal(errno(r), "EINVAL");
      assert.equal(!r.ok && r.warn, true);
    }
    assert.equal(errno(dmaBufExport(core, { size: 4096n, ops: minimalOps() })), "EINVAL");
    assert.equal(errno(dmaBufExport(core, { size: 4096n, ops: null, priv: 1 })), "EINVAL");
    assert.equal(core.buffers.size, 0);
    assert.equal(core.warnings.length, 5);
  });

  it("2: pin without unpin (or unpin without pin) → -EINVAL; both → ok", () => {
    const core = new DmaBufCore();
    const pin = () => ({ ok: true as const, value: undefined });
    assert.equal(
      errno(dmaBufExport(core, { size: 0n, ops: { ...minimalOps(), pin }, priv: 1 })),
      "EINVAL",
    );
    assert.equal(
      errno(dmaBufExport(core, { size: 0n, ops: { ...minimalOps(), unpin: () => {} }, priv: 1 })),
      "EINVAL",
    );
    const ok = dmaBufExport(core, {
      size: 0n,
      ops: { ...minimalOps(), pin, unpin: () => {} },
      priv: 1,
    });
    assert.ok(ok.ok, "size 0 is not rejected by the core");
  });

  it("6.1: cache_sgt_mapping with pin/unpin → -EINVAL (WARN); mainline has no such field", () => {
    const pin = () => ({ ok: true as const, value: undefined });
    const ops = { ...minimalOps(), pin, unpin: () => {}, cache_sgt_mapping: true };
    assert.equal(
      errno(dmaBufExport(new DmaBufCore({ profile: PROFILES["6.1"] }), { size: 0n, ops, priv: 1 })),
      "EINVAL",
    );
    assert.ok(
      dmaBufExport(new DmaBufCore({ profile: PROFILES.mainline }), { size: 0n, ops, priv: 1 }).ok,
    );
  });

  it("3: owner module cannot be referenced → -ENOENT; otherwise the module is held until release", () => {
    const core = new DmaBufCore();
    const mod = new Module("exporter");
    mod.unloading = true;
    assert.equal(
      errno(dmaBufExport(core, { size: 0n, ops: minimalOps(), priv: 1, owner: mod })),
      "ENOENT",
    );
    mod.unloading = false;
    const r = dmaBufExport(core, { size: 0n, ops: minimalOps(), priv: 1, owner: mod });
    assert.ok(r.ok);
    assert.equal(mod.refs, 1);
    dmaBufPut(r.value);
    assert.equal(mod.refs, 0);
  });

  it("the file keeps only O_ACCMODE|O_NONBLOCK of the flags", () => {
    const { dmabuf } = setup({ flags: O_RDWR | O_CLOEXEC | 0o4000 });
    assert.equal(dmabuf.file.f_flags, O_RDWR | 0o4000);
  });
});

describe("lifecycle", () => {
  it("4: export → fd → close: release exactly once; a second close of the stale fd is -EBADF", () => {
    const { dmabuf, ex, proc, core } = setup();
    const fd = dmaBufFd(proc, dmabuf, O_CLOEXEC);
    assert.ok(fd.ok);
    assert.equal(dmabuf.file.count, 1, "the fd consumed the creator's reference");
    assert.ok(sysClose(proc, fd.value).ok);
    assert.equal(ex.count("release"), 1);
    assert.equal(dmabuf.state, "released");
    assert.equal(core.buffers.size, 0, "unlinked from the global list");
    assert.equal(errno(sysClose(proc, fd.value)), "EBADF");
    assert.equal(ex.count("release"), 1);
  });

  it("5: fd + dma_buf_get + close keeps it alive; dma_buf_put releases", () => {
    const { dmabuf, ex, proc } = setup();
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    const g = dmaBufGet(proc, fd.value);
    assert.ok(g.ok && g.value === dmabuf);
    assert.ok(sysClose(proc, fd.value).ok);
    assert.equal(ex.count("release"), 0);
    dmaBufPut(g.value);
    assert.equal(ex.count("release"), 1);
  });

  it("double put and use after release throw, naming the buffer", () => {
    const { dmabuf } = setup();
    getDmaBuf(dmabuf);
    dmaBufPut(dmabuf);
    dmaBufPut(dmabuf);
    const name = new RegExp(`dmabuf:${dmabuf.ino}`);
    assert.throws(() => dmaBufPut(dmabuf), name);
    assert.throws(() => getDmaBuf(dmabuf), name);
    assert.throws(() => dmaBufBeginCpuAccess(dmabuf, "to-device"), name);
    assert.throws(() => dmaBufAttach(dmabuf, sysOf().device("01:00.0")), name);
  });

  it("release with a kernel vmap outstanding is the kernel's BUG_ON (KernelBug), before ops->release", () => {
    const { dmabuf, ex } = setup({ vmap: true });
    assert.ok(dmaBufVmap(dmabuf).ok);
    assert.throws(() => dmaBufPut(dmabuf), /vmapping_counter/);
    assert.equal(ex.count("release"), 0);
  });

  it("dma_buf_put(NULL) warns and does nothing; dma_buf_fd(NULL) is -EINVAL", () => {
    const warnings: string[] = [];
    dmaBufPut(null, (m) => warnings.push(m));
    assert.equal(warnings.length, 1);
    assert.equal(errno(dmaBufFd(new Process("p"), null, 0)), "EINVAL");
  });
});

describe("file operations", () => {
  it("8: llseek: SEEK_END → size, SEEK_SET → 0, SEEK_CUR or non-zero offset → -EINVAL", () => {
    const { dmabuf, proc } = setup();
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    const v = (o: bigint, w: number) => {
      const r = sysLseek(proc, fd.value, o, w);
      return r.ok ? r.value : r.errno;
    };
    assert.equal(v(0n, SEEK_END), 8192n);
    assert.equal(v(0n, SEEK_SET), 0n);
    assert.equal(v(0n, SEEK_CUR), "EINVAL");
    assert.equal(v(4096n, SEEK_SET), "EINVAL");
    assert.equal(v(0n, 99), "EINVAL");
  });

  it("9: mmap of an exporter without mmap → -EINVAL; with mmap → the exporter's mmap runs", () => {
    const a = setup();
    const fd = dmaBufFd(a.proc, a.dmabuf, 0);
    assert.ok(fd.ok);
    assert.equal(
      errno(sysMmap(a.proc, fd.value, { length: 4096n, prot: PROT_READ, flags: MAP_SHARED })),
      "EINVAL",
    );
    const b = setup({ mmap: true });
    const fdb = dmaBufFd(b.proc, b.dmabuf, 0);
    assert.ok(fdb.ok);
    assert.ok(
      sysMmap(b.proc, fdb.value, { length: 8192n, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED })
        .ok,
    );
    assert.equal(b.ex.count("mmap"), 1);
  });

  it("10: mmap with pgoff + length beyond the size → -EINVAL, exporter not called", () => {
    const { dmabuf, proc, ex } = setup({ mmap: true });
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    assert.equal(
      errno(
        sysMmap(proc, fd.value, { length: 4096n, prot: PROT_READ, flags: MAP_SHARED, pgoff: 2n }),
      ),
      "EINVAL",
    );
    assert.equal(
      errno(sysMmap(proc, fd.value, { length: 12288n, prot: PROT_READ, flags: MAP_SHARED })),
      "EINVAL",
    );
    assert.equal(ex.count("mmap"), 0);
    assert.ok(
      sysMmap(proc, fd.value, { length: 4096n, prot: PROT_READ, flags: MAP_SHARED, pgoff: 1n }).ok,
    );
  });

  it("access modes: a read-only dma-buf refuses MAP_SHARED PROT_WRITE (-EACCES), allows PROT_READ; write-only refuses any mmap", () => {
    const ro = setup({ mmap: true, flags: O_RDONLY });
    const fd = dmaBufFd(ro.proc, ro.dmabuf, 0);
    assert.ok(fd.ok);
    assert.equal(
      errno(
        sysMmap(ro.proc, fd.value, {
          length: 4096n,
          prot: PROT_READ | PROT_WRITE,
          flags: MAP_SHARED,
        }),
      ),
      "EACCES",
    );
    assert.ok(sysMmap(ro.proc, fd.value, { length: 4096n, prot: PROT_READ, flags: MAP_SHARED }).ok);
    assert.ok(
      sysMmap(ro.proc, fd.value, {
        length: 4096n,
        prot: PROT_READ | PROT_WRITE,
        flags: MAP_PRIVATE,
      }).ok,
      "a private writable mapping is the VFS's business, allowed",
    );
    const wo = setup({ mmap: true, flags: O_WRONLY });
    const fdw = dmaBufFd(wo.proc, wo.dmabuf, 0);
    assert.ok(fdw.ok);
    assert.equal(
      errno(sysMmap(wo.proc, fdw.value, { length: 4096n, prot: PROT_WRITE, flags: MAP_SHARED })),
      "EACCES",
    );
  });

  it("dma_buf_mmap (kernel): no op → -EINVAL; overflow → -EOVERFLOW; beyond size → -EINVAL; re-points the VMA", () => {
    const { dmabuf } = setup({ mmap: true });
    const other = setup();
    const vma = (pages: bigint): Vma => ({
      pgoff: 0n,
      pages,
      prot: PROT_READ,
      shared: true,
      file: other.dmabuf.file,
    });
    assert.equal(errno(dmaBufMmap(other.dmabuf, vma(1n), 0n)), "EINVAL");
    assert.equal(errno(dmaBufMmap(dmabuf, vma(2n), (1n << 64n) - 1n)), "EOVERFLOW");
    assert.equal(errno(dmaBufMmap(dmabuf, vma(2n), 1n)), "EINVAL");
    const v = vma(1n);
    assert.ok(dmaBufMmap(dmabuf, v, 1n).ok);
    assert.equal(v.file, dmabuf.file);
    assert.equal(v.pgoff, 1n);
  });

  it("11: SYNC flags 0, an unknown bit (8) or END alone (4) → -EINVAL; a bad pointer → -EFAULT", () => {
    const { dmabuf, proc, ex } = setup({ cpuAccess: true });
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    for (const flags of [0n, 8n, 4n, 9n, 1n << 40n])
      assert.equal(
        errno(sysIoctl(proc, fd.value, DMA_BUF_IOCTL_SYNC, { flags })),
        "EINVAL",
        `flags ${flags}`,
      );
    assert.equal(errno(sysIoctl(proc, fd.value, DMA_BUF_IOCTL_SYNC, null)), "EFAULT");
    assert.equal(ex.calls.filter((c) => c.includes("cpu_access")).length, 0);
  });

  it("12: SYNC START|WRITE → begin(to-device); END|READ → end(from-device); RW → bidirectional", () => {
    const { dmabuf, proc, ex } = setup({ cpuAccess: true });
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    for (const flags of [2n, 4n | 1n, 3n, 4n | 3n])
      assert.ok(sysIoctl(proc, fd.value, DMA_BUF_IOCTL_SYNC, { flags }).ok);
    assert.deepEqual(
      ex.calls.filter((c) => c.includes("cpu_access")),
      [
        "begin_cpu_access:to-device",
        "end_cpu_access:from-device",
        "begin_cpu_access:bidirectional",
        "end_cpu_access:bidirectional",
      ],
    );
  });

  it("13: SYNC on an exporter without hooks → 0 after waiting for the implicit fences of the direction", () => {
    const { dmabuf, proc, core } = setup();
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    dmabuf.resv.lock();
    dmabuf.resv.addFence(new DmaFence({ signalAt: 10 }), "write");
    dmabuf.resv.addFence(new DmaFence({ signalAt: 30 }), "read");
    dmabuf.resv.unlock();
    assert.ok(
      sysIoctl(proc, fd.value, DMA_BUF_IOCTL_SYNC, { flags: 1n }).ok,
      "READ waits for writers only",
    );
    assert.equal(core.clock.now, 10);
    assert.ok(
      sysIoctl(proc, fd.value, DMA_BUF_IOCTL_SYNC, { flags: 2n }).ok,
      "WRITE waits for readers too",
    );
    assert.equal(core.clock.now, 30);
    dmabuf.resv.lock();
    dmabuf.resv.addFence(new DmaFence(), "write");
    dmabuf.resv.unlock();
    core.task.signalPending = true;
    assert.equal(errno(sysIoctl(proc, fd.value, DMA_BUF_IOCTL_SYNC, { flags: 1n })), "ERESTARTSYS");
    assert.ok(
      sysIoctl(proc, fd.value, DMA_BUF_IOCTL_SYNC, { flags: 4n | 1n }).ok,
      "END does not wait",
    );
  });

  it("14: unknown ioctl → -ENOTTY; ioctl on a closed fd → -EBADF", () => {
    const { dmabuf, proc } = setup();
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    assert.equal(errno(sysIoctl(proc, fd.value, 0x1234, null)), "ENOTTY");
    assert.equal(errno(sysIoctl(proc, 77, DMA_BUF_IOCTL_SYNC, { flags: 1n })), "EBADF");
  });

  it("15: SET_NAME while attached → 0, name replaced; 31 bytes fit, 32 → -EINVAL; fault → -EFAULT", () => {
    const { dmabuf, proc, ex, core } = setup();
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    const a = dmaBufAttach(dmabuf, ex.sys.device("01:00.0"));
    assert.ok(a.ok);
    assert.ok(sysIoctl(proc, fd.value, DMA_BUF_SET_NAME, "first").ok);
    assert.ok(sysIoctl(proc, fd.value, DMA_BUF_SET_NAME_A, "x".repeat(31)).ok);
    assert.equal(dmabuf.name, "x".repeat(31));
    assert.equal(errno(sysIoctl(proc, fd.value, DMA_BUF_SET_NAME, "y".repeat(32))), "EINVAL");
    assert.equal(dmabuf.name, "x".repeat(31), "unchanged after a failure");
    assert.equal(errno(sysIoctl(proc, fd.value, DMA_BUF_SET_NAME, null)), "EFAULT");
    assert.deepEqual(dmaBufFdinfo(dmabuf), {
      size: 8192n,
      count: 1,
      exp_name: "sysmem",
      name: "x".repeat(31),
    });
    dmaBufDetach(dmabuf, a.value);
    assert.equal(core.warnings.length, 0);
  });
});

function vmapCase(core: Core, profile: (typeof PROFILES)[keyof typeof PROFILES]) {
  const ex = new SysmemExporter(sysOf(), { size: 8192n, vmap: true });
  const r = ex.export(core);
  assert.ok(r.ok);
  const d = r.value;
  const [m1, m2] =
    profile.dmaBuf.vmapLock === "resv"
      ? [dmaBufVmapUnlocked(d), dmaBufVmapUnlocked(d)]
      : [dmaBufVmap(d), dmaBufVmap(d)];
  assert.ok(m1.ok && m2.ok);
  assert.deepEqual(m1.value, m2.value);
  if (profile.dmaBuf.vmapLock === "resv") {
    dmaBufVunmapUnlocked(d, m1.value);
    dmaBufVunmapUnlocked(d, m2.value);
  } else {
    dmaBufVunmap(d, m1.value);
    dmaBufVunmap(d, m2.value);
  }
  assert.deepEqual(ex.calls, ["vmap", "vunmap"]);
  assert.deepEqual(core.lockdep, []);
  assert.throws(() => dmaBufVunmap(d, m1.value), /not vmapped/);
  return d;
}

describe("vmap", () => {
  for (const profile of [PROFILES["6.1"], PROFILES.mainline])
    it(`24 (${profile.id}): vmap twice, vunmap twice → exporter vmap once, vunmap once; no vmap op → -EINVAL`, () => {
      const core = new DmaBufCore({ profile });
      vmapCase(core, profile);
      const { dmabuf } = setup({}, profile);
      assert.equal(errno(dmaBufVmap(dmabuf)), "EINVAL");
    });

  it("mainline: dma_buf_vmap without the resv is reported; 6.1 takes dmabuf->lock itself", () => {
    const ml = setup({ vmap: true }, PROFILES.mainline);
    const m = dmaBufVmap(ml.dmabuf);
    assert.ok(m.ok);
    assert.equal(ml.core.lockdep[0]?.fn, "dma_buf_vmap");
    const v61 = setup({ vmap: true }, PROFILES["6.1"]);
    assert.ok(dmaBufVmap(v61.dmabuf).ok);
    assert.deepEqual(v61.core.lockdep, []);
  });
});

describe("sync_file ioctls", () => {
  it("16: EXPORT_SYNC_FILE flags 0 or bit 2 → -EINVAL; idle buffer → an O_CLOEXEC fd of a signalled fence", () => {
    const { dmabuf, proc, core } = setup();
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    for (const flags of [0, 4, 5]) {
      const arg = { flags, fd: -1 };
      assert.equal(errno(sysIoctl(proc, fd.value, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, arg)), "EINVAL");
    }
    const arg = { flags: 2, fd: -1 };
    assert.ok(sysIoctl(proc, fd.value, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, arg).ok);
    assert.ok(arg.fd >= 0);
    assert.ok(proc.fds.get(arg.fd)!.cloexec);
    const fence = syncFileGetFence(proc, arg.fd);
    assert.ok(fence?.isSignaled(core.clock));
  });

  it("16: EXPORT with busy fences: READ gives the writers, WRITE all of them (one fence array)", () => {
    const { dmabuf, proc, core } = setup();
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    const w = new DmaFence({ signalAt: 10 });
    const r = new DmaFence({ signalAt: 20 });
    dmabuf.resv.lock();
    dmabuf.resv.addFence(w, "write");
    dmabuf.resv.addFence(r, "read");
    dmabuf.resv.unlock();
    const rd = { flags: 1, fd: -1 };
    const wr = { flags: 2, fd: -1 };
    assert.ok(sysIoctl(proc, fd.value, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, rd).ok);
    assert.ok(sysIoctl(proc, fd.value, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, wr).ok);
    assert.equal(syncFileGetFence(proc, rd.fd), w);
    const all = syncFileGetFence(proc, wr.fd)!;
    assert.deepEqual(all.components, [w, r]);
    core.clock.advanceTo(15);
    assert.equal(all.isSignaled(core.clock), false);
    core.clock.advanceTo(20);
    assert.equal(all.isSignaled(core.clock), true);
  });

  it("17: IMPORT_SYNC_FILE with an fd that is not a sync_file → -EINVAL; a sync_file's fences are added, unwrapped", () => {
    const { dmabuf, proc, core } = setup();
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    assert.equal(
      errno(sysIoctl(proc, fd.value, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, { flags: 2, fd: fd.value })),
      "EINVAL",
    );
    assert.equal(
      errno(sysIoctl(proc, fd.value, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, { flags: 0, fd: 0 })),
      "EINVAL",
    );
    const a = new DmaFence({ signalAt: 5 });
    const b = new DmaFence({ signalAt: 7 });
    const sf = syncFileCreate(DmaFence.array([a, b]));
    const sfd = proc.getUnusedFd();
    assert.ok(sfd.ok);
    proc.install(sfd.value, sf, 0);
    assert.ok(
      sysIoctl(proc, fd.value, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, { flags: 2, fd: sfd.value }).ok,
    );
    assert.deepEqual(dmabuf.resv.fences("write"), [a, b], "each component added as WRITE");
    assert.ok(sysIoctl(proc, fd.value, DMA_BUF_IOCTL_SYNC, { flags: 1n }).ok);
    assert.equal(core.clock.now, 7);
  });
});

describe("poll", () => {
  it("EPOLLIN waits for writers, EPOLLOUT for everyone; an armed callback holds a file reference until its fence signals", () => {
    const { dmabuf, proc, core, ex } = setup();
    const fd = dmaBufFd(proc, dmabuf, 0);
    assert.ok(fd.ok);
    const both = EPOLLIN | EPOLLOUT;
    const poll = () => {
      const r = sysPoll(proc, fd.value, both);
      assert.ok(r.ok);
      return r.value;
    };
    assert.equal(poll(), both, "idle: both ready");
    assert.equal(dmabuf.file.count, 1, "callbacks that fire at once drop their reference");
    dmabuf.resv.lock();
    dmabuf.resv.addFence(new DmaFence({ signalAt: 10 }), "read");
    dmabuf.resv.unlock();
    assert.equal(poll(), EPOLLIN, "a reader blocks writers only");
    assert.equal(dmabuf.file.count, 2, "the EPOLLOUT callback holds the file");
    assert.equal(poll(), EPOLLIN, "while armed, EPOLLOUT is not reported");
    assert.equal(dmabuf.file.count, 2, "one slot per direction");
    assert.ok(sysClose(proc, fd.value).ok);
    assert.equal(ex.count("release"), 0, "the armed callback keeps the buffer alive (spec §1.7)");
    core.clock.advanceTo(10);
    assert.equal(ex.count("release"), 1, "the fence signalled, the callback's fput released it");
  });
});
