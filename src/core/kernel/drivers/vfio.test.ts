import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  connectQps,
  RW,
  remoteNicBed,
  switchMachine,
  writeFromHostMr,
} from "../../../../test/support/beds.ts";
import { clean, errnoOf, j, must, wcText, why } from "../../../../test/support/check.ts";
import { physAddr } from "../../hw/address.ts";
import type { IommuMode, MachineDescription } from "../../hw/machine.ts";
import { dmaSetMaskAndCoherent } from "../dma/device.ts";
import {
  type DmaBufAttachment,
  type DmaBufAttachOps,
  dmaBufAttach,
  dmaBufDetach,
  dmaBufDynamicAttach,
  dmaBufMapAttachment,
  dmaBufMapAttachmentUnlocked,
  dmaBufPin,
  dmaBufUnmapAttachmentUnlocked,
} from "../dma-buf/attachment.ts";
import { DmaBufCore, dmaBufIsDynamic, dmaBufVmapUnlocked } from "../dma-buf/dma-buf.ts";
import {
  MAP_SHARED,
  O_CLOEXEC,
  O_RDWR,
  PROT_READ,
  Process,
  sysClose,
  sysExit,
  sysIoctl,
  sysMmap,
} from "../dma-buf/file.ts";
import { physVecMapping } from "../dma-buf/phys-vec.ts";
import type { LeakSource } from "../leaks.ts";
import { for_each_sgtable_dma_sg, type SgTable, sg_page } from "../lib/scatterlist.ts";
import { type KernelProfile, PROFILES } from "../profile.ts";
import { System } from "../system.ts";
import { Tracer } from "../trace.ts";
import {
  IBV_ACCESS_LOCAL_WRITE,
  IBV_ACCESS_REMOTE_WRITE,
  type IbUmemDmabuf,
  kernelMrOf,
  RdmaDevice,
  type RdmaOptions,
} from "./rdma.ts";
import {
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_RESET,
  type VfioDeviceFeatureDmaBuf,
  VfioPciDevice,
  type VfioPciOptions,
  vfioDeviceFeatureDmaBuf,
} from "./vfio.ts";

const KiB = 1n << 10n;
const MiB = 1n << 20n;
const GiB = 1n << 30n;
const BAR0 = 0x90_0000_0000n;
const BAR2 = 0x80_0000_0000n;
const BAR4 = 0x100_0000_0000n;

const rd = (sys: System, addr: bigint, len: number): Uint8Array =>
  sys.memory.read(physAddr(addr), len);

interface MachineOpts {
  iommu?: IommuMode;
  /** Host bridge id: 8086:2020 is on the P2PDMA allowlist, 8086:1234 is not. */
  hostId?: string;
  /** Host-bridge window offset: bus = cpu + busOffset (for BAR2). */
  busOffset?: bigint;
}

/**
 * A PCIe switch below root port 00:01.0 with the vfio-bound function 03:00.0 (BAR0 16 MiB,
 * BAR2 64 MiB, BAR4 8 GiB; no BAR1/3/5) and an RDMA NIC 04:00.0 on two downstream ports (no
 * ACS: a switch-local pair); a second NIC 05:00.0 behind root port 00:02.0.
 */
function machine(o: MachineOpts = {}): MachineDescription {
  return switchMachine({
    exporter: {
      id: "10de:2330",
      driver: "vfio-pci",
      bars: [
        { index: 0, start: BAR0, size: 16n * MiB },
        { index: 2, start: BAR2, size: 64n * MiB },
        { index: 4, start: BAR4, size: 8n * GiB },
      ],
    },
    hostId: o.hostId ?? "8086:2020",
    iommu: o.iommu,
    window:
      o.busOffset === undefined
        ? undefined
        : { cpuStart: BAR2, size: 64n * MiB, busOffset: o.busOffset },
  });
}

interface BedOpts extends MachineOpts {
  profile?: KernelProfile;
  /** CONFIG_DMABUF_MOVE_NOTIFY (default y here: vfio needs it on mainline, see the pin tests). */
  moveNotify?: boolean;
  vfio?: VfioPciOptions;
}

function bed(o: BedOpts = {}) {
  const tracer = new Tracer(true);
  const sys = new System(machine(o), { tracer });
  const core = new DmaBufCore({
    profile: o.profile ?? PROFILES.mainline,
    moveNotify: o.moveNotify ?? true,
  });
  const vfio = new VfioPciDevice(sys, core, "03:00.0", o.vfio ?? {});
  const proc = new Process("vmm");
  const vfd = must(vfio.open(proc), "open the vfio device");
  return { sys, core, vfio, proc, vfd, tracer };
}
type Bed = ReturnType<typeof bed>;

const FLAGS = O_RDWR | O_CLOEXEC;
const req = (
  ranges: readonly (readonly [bigint, bigint])[],
  o: Partial<VfioDeviceFeatureDmaBuf> = {},
): VfioDeviceFeatureDmaBuf => ({
  region_index: 2,
  open_flags: FLAGS,
  flags: 0,
  nr_ranges: ranges.length,
  dma_ranges: ranges.map(([offset, length]) => ({ offset, length })),
  ...o,
});

/** Export `ranges` of BAR2: the fd and the buffer behind it. */
function exportBar(b: Bed, ranges: readonly (readonly [bigint, bigint])[] = [[0n, 64n * KiB]]) {
  const fd = must(
    vfioDeviceFeatureDmaBuf(b.proc, b.vfd, req(ranges)),
    "VFIO_DEVICE_FEATURE_DMA_BUF",
  );
  const dmabuf = b.proc.fds.get(fd)?.file.private_data;
  assert.ok(dmabuf, `fd ${fd} is a dma-buf`);
  return { fd, dmabuf };
}

function importerDev(b: Bed, bdf: string) {
  const dev = b.sys.device(bdf);
  dmaSetMaskAndCoherent(dev, 64);
  return dev;
}

/** A dynamic P2P importer that records its move_notify calls. */
function recorder() {
  const calls: { held: boolean }[] = [];
  const ops: DmaBufAttachOps = {
    allow_peer2peer: true,
    move_notify: (a) => calls.push({ held: a.dmabuf.resv.held }),
  };
  return { calls, ops };
}

const entries = (sgt: SgTable) => [...for_each_sgtable_dma_sg(sgt)];
const evs = (t: Tracer, ev: string) => t.events.filter((e) => e.ev === ev);

function sources(b: Bed, ...more: LeakSource[]): LeakSource[] {
  return [b.sys, b.core, b.vfio, b.proc, ...more];
}

// ─────────────────────────────────────────────────────────────────────────────────────────────

describe("vfio-pci: VFIO_DEVICE_FEATURE_DMA_BUF (§8.37)", () => {
  it("exports BAR ranges: a dma-buf of their total size in the caller's fd table, not revoked", () => {
    const b = bed();
    const { fd, dmabuf } = exportBar(b, [
      [0n, 64n * KiB],
      [1n * MiB, 128n * KiB],
    ]);
    assert.equal(dmabuf.size, 192n * KiB, "size is the sum of the ranges");
    assert.equal(
      dmabuf.exp_name,
      "vfio_pci_core",
      "exporter name (KBUILD_MODNAME of vfio-pci-core)",
    );
    assert.equal(b.proc.fds.get(fd)?.cloexec, true, "O_CLOEXEC from open_flags");
    assert.equal(dmaBufIsDynamic(dmabuf), true, "mainline vfio has pin: a dynamic exporter");
    const priv = [...b.vfio.exports][0]!;
    assert.equal(priv.revoked, false, "memory is enabled after open");
    assert.deepEqual(
      priv.phys_vec,
      [
        { paddr: BAR2, len: 64n * KiB },
        { paddr: BAR2 + MiB, len: 128n * KiB },
      ],
      "phys_vec = BAR start + offset",
    );
    assert.equal(b.vfio.registrations, 1, "the buffer holds a device registration");
    const ev = evs(b.tracer, "vfio:export")[0];
    assert.ok(ev, "vfio:export traced");
    assert.equal(ev.data?.["bar"], 2, "BAR traced");
    assert.equal(must(sysClose(b.proc, fd), "close"), undefined, "close the dma-buf fd");
    assert.equal(b.vfio.registrations, 0, "release dropped the registration");
    assert.equal(b.vfio.dmabufs.length, 0, "off the device's list");
    sysExit(b.proc);
    clean(sources(b));
  });

  it("nr_ranges 0 → EINVAL; flags ≠ 0 → EINVAL (nr_ranges is checked before region_index)", () => {
    const b = bed();
    const f = (r: VfioDeviceFeatureDmaBuf) => errnoOf(vfioDeviceFeatureDmaBuf(b.proc, b.vfd, r));
    assert.equal(f(req([], { nr_ranges: 0 })), "EINVAL", "nr_ranges 0");
    assert.equal(f(req([], { nr_ranges: 0, region_index: 9 })), "EINVAL", "nr 0 before region");
    assert.equal(f(req([[0n, 4096n]], { flags: 1 })), "EINVAL", "flags 1");
    assert.equal(f(req([[0n, 4096n]], { flags: 1, region_index: 9 })), "EINVAL", "flags first");
    assert.equal(b.core.buffers.size, 0, "nothing exported");
    sysExit(b.proc);
    clean(sources(b));
  });

  it("region_index ≥ VFIO_PCI_ROM_REGION_INDEX (6) → ENODEV, before the ranges are looked at; a BAR that is not a memory BAR → EINVAL", () => {
    const b = bed();
    const f = (r: VfioDeviceFeatureDmaBuf) => errnoOf(vfioDeviceFeatureDmaBuf(b.proc, b.vfd, r));
    assert.equal(f(req([[0n, 4096n]], { region_index: 6 })), "ENODEV", "ROM");
    assert.equal(f(req([[0n, 4096n]], { region_index: 7 })), "ENODEV", "config");
    assert.equal(f(req([[1n, 0n]], { region_index: 6 })), "ENODEV", "ENODEV before range checks");
    for (const bar of [1, 3, 5])
      assert.equal(f(req([[0n, 4096n]], { region_index: bar })), "EINVAL", `no BAR${bar}`);
    assert.ok(
      vfioDeviceFeatureDmaBuf(b.proc, b.vfd, req([[0n, 4096n]], { region_index: 0 })).ok,
      "BAR0 works",
    );
    sysExit(b.proc);
    clean(sources(b));
  });

  it("a range of length 0, or with an unaligned offset or length → EINVAL; past the BAR → EINVAL; wrapping → EOVERFLOW; bit 63 in the total → EINVAL", () => {
    const b = bed();
    const f = (ranges: [bigint, bigint][], region = 2) =>
      errnoOf(vfioDeviceFeatureDmaBuf(b.proc, b.vfd, req(ranges, { region_index: region })));
    assert.equal(f([[0n, 0n]]), "EINVAL", "length 0");
    assert.equal(f([[0x800n, 4096n]]), "EINVAL", "unaligned offset");
    assert.equal(f([[0n, 0x1800n]]), "EINVAL", "unaligned length");
    assert.equal(
      f([
        [0n, 4096n],
        [8192n, 0n],
      ]),
      "EINVAL",
      "second range empty",
    );
    assert.equal(f([[64n * MiB - 4096n, 8192n]]), "EINVAL", "ends past BAR2");
    assert.equal(f([[64n * MiB - 4096n, 4096n]]), undefined, "exactly to the end is fine");
    assert.equal(f([[(1n << 64n) - 4096n, 4096n]]), "EOVERFLOW", "BAR start + offset wraps");
    assert.equal(
      f([
        [0n, 1n << 62n],
        [0n, 1n << 62n],
      ]),
      "EINVAL",
      "total 2^63: DMA_IOVA_USE_SWIOTLB",
    );
    assert.equal(
      f([
        [0n, 1n << 63n],
        [0n, 1n << 63n],
      ]),
      "EINVAL",
      "total wraps",
    );
    sysExit(b.proc);
    clean(sources(b));
  });

  it("the feature header: argsz < 8, unknown flag bits, GET|SET, SET only, too little data → EINVAL; PROBE → 0 with no buffer; missing or short data → EFAULT; too many ranges → ENOMEM", () => {
    const b = bed();
    const r1 = req([[0n, 4096n]]);
    const raw = (argsz: number, flags: number, data: VfioDeviceFeatureDmaBuf | null = r1) =>
      sysIoctl(b.proc, b.vfd, VFIO_DEVICE_FEATURE, { argsz, flags, data });
    const GET = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF;
    assert.equal(errnoOf(raw(7, GET)), "EINVAL", "argsz < minsz");
    assert.equal(errnoOf(raw(40, GET | (1 << 19))), "EINVAL", "unknown flag bit");
    assert.equal(errnoOf(raw(40, GET | VFIO_DEVICE_FEATURE_SET)), "EINVAL", "GET and SET");
    assert.equal(
      errnoOf(raw(40, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_BUF)),
      "EINVAL",
      "SET is not supported",
    );
    assert.equal(errnoOf(raw(8 + 15, GET)), "EINVAL", "data smaller than the struct");
    const probe = raw(8, GET | VFIO_DEVICE_FEATURE_PROBE);
    assert.ok(probe.ok && probe.value === 0, `PROBE answers 0: ${why(probe)}`);
    assert.equal(b.core.buffers.size, 0, "PROBE exports nothing");
    assert.equal(errnoOf(raw(40, GET, null)), "EFAULT", "no data");
    assert.equal(
      errnoOf(sysIoctl(b.proc, b.vfd, VFIO_DEVICE_FEATURE, null)),
      "EFAULT",
      "no header",
    );
    assert.equal(
      errnoOf(raw(40, GET, { ...r1, nr_ranges: 2 })),
      "EFAULT",
      "ranges short of nr_ranges",
    );
    assert.equal(
      errnoOf(raw(40, GET, { ...r1, nr_ranges: 300_000 })),
      "ENOMEM",
      "more than kmalloc holds",
    );
    assert.equal(errnoOf(sysIoctl(b.proc, b.vfd, 0x3b99, null)), "ENOTTY", "another ioctl");
    sysExit(b.proc);
    clean(sources(b));
  });

  it("a driver without get_dmabuf_phys → EOPNOTSUPP before anything else (even PROBE and bad arguments)", () => {
    const b = bed({ vfio: { getDmabufPhys: false } });
    const GET = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF;
    assert.equal(
      errnoOf(vfioDeviceFeatureDmaBuf(b.proc, b.vfd, req([[0n, 4096n]]))),
      "EOPNOTSUPP",
      "export",
    );
    assert.equal(
      errnoOf(
        sysIoctl(b.proc, b.vfd, VFIO_DEVICE_FEATURE, {
          argsz: 8,
          flags: GET | VFIO_DEVICE_FEATURE_PROBE,
        }),
      ),
      "EOPNOTSUPP",
      "PROBE",
    );
    assert.equal(
      errnoOf(vfioDeviceFeatureDmaBuf(b.proc, b.vfd, req([], { nr_ranges: 0 }))),
      "EOPNOTSUPP",
      "bad arguments",
    );
    sysExit(b.proc);
    clean(sources(b));
  });

  it("Linux 6.1 has no VFIO_DEVICE_FEATURE_DMA_BUF: an unknown feature, -ENOTTY (vfio_pci_core_ioctl_feature default); mainline too for an unknown index", () => {
    const old = bed({ profile: PROFILES["6.1"] });
    assert.equal(
      errnoOf(vfioDeviceFeatureDmaBuf(old.proc, old.vfd, req([[0n, 4096n]]))),
      "ENOTTY",
      "6.1",
    );
    assert.equal(old.core.buffers.size, 0, "nothing exported on 6.1");
    sysExit(old.proc);
    clean(sources(old));
    const b = bed();
    assert.equal(
      errnoOf(
        vfioDeviceFeatureDmaBuf(b.proc, b.vfd, req([[0n, 4096n]]), {
          flags: VFIO_DEVICE_FEATURE_GET | 99,
        }),
      ),
      "ENOTTY",
      "mainline, feature 99",
    );
    sysExit(b.proc);
    clean(sources(b));
  });

  it("a full fd table → EMFILE: the buffer is put, its registration and list entry go (the fixed CVE-2026-31468 path)", () => {
    const tracer = new Tracer(true);
    const sys = new System(machine(), { tracer });
    const core = new DmaBufCore({ profile: PROFILES.mainline, moveNotify: true });
    const vfio = new VfioPciDevice(sys, core, "03:00.0");
    const proc = new Process("tiny", { rlimitNofile: 1 });
    const vfd = must(vfio.open(proc), "open");
    const r = vfioDeviceFeatureDmaBuf(proc, vfd, req([[0n, 4096n]]));
    assert.equal(errnoOf(r), "EMFILE", why(r));
    assert.equal(vfio.registrations, 0, "registration dropped once");
    assert.equal(vfio.dmabufs.length, 0, "off the list");
    assert.equal(vfio.exports.size, 0, "released");
    assert.equal(core.buffers.size, 0, "the dma-buf is gone");
    sysExit(proc);
    clean([sys, core, vfio, proc]);
  });

  it("no mmap and no vmap on a vfio dma-buf (§8.9): -EINVAL", () => {
    const b = bed();
    const { fd, dmabuf } = exportBar(b);
    const m = sysMmap(b.proc, fd, { length: 4096n, prot: PROT_READ, flags: MAP_SHARED });
    assert.equal(errnoOf(m), "EINVAL", why(m));
    assert.equal(errnoOf(dmaBufVmapUnlocked(dmabuf)), "EINVAL", "vmap");
    sysExit(b.proc);
    clean(sources(b));
  });
});

describe("vfio-pci: attach (§8.34)", () => {
  it("a static importer → EOPNOTSUPP; a dynamic one without allow_peer2peer → EOPNOTSUPP; with it → attached", () => {
    const b = bed();
    const { dmabuf } = exportBar(b);
    const nic = importerDev(b, "04:00.0");
    const s = dmaBufAttach(dmabuf, nic);
    assert.equal(errnoOf(s), "EOPNOTSUPP", `static: ${why(s)}`);
    const np = dmaBufDynamicAttach(dmabuf, nic, { allow_peer2peer: false, move_notify: () => {} });
    assert.equal(errnoOf(np), "EOPNOTSUPP", `no peer2peer: ${why(np)}`);
    assert.equal(dmabuf.attachments.length, 0, "nothing added");
    const refused = evs(b.tracer, "vfio:attach").filter((e) => e.data?.["errno"] === "EOPNOTSUPP");
    assert.equal(refused.length, 2, "both refusals traced");
    const ok = dmaBufDynamicAttach(dmabuf, nic, recorder().ops);
    assert.ok(ok.ok, `dynamic P2P importer: ${why(ok)}`);
    dmaBufDetach(dmabuf, ok.value);
    sysExit(b.proc);
    clean(sources(b));
  });
});

describe("vfio-pci: map through dma_buf_phys_vec_to_sgt (§8.38)", () => {
  function mapFor(b: Bed, bdf: string, ranges: [bigint, bigint][]) {
    const { dmabuf } = exportBar(b, ranges);
    const dev = importerDev(b, bdf);
    const a = must(dmaBufDynamicAttach(dmabuf, dev, recorder().ops), "attach");
    return { dmabuf, dev, a, m: dmaBufMapAttachmentUnlocked(a, "bidirectional") };
  }
  const done = (b: Bed, a: DmaBufAttachment, sgt: SgTable | null) => {
    if (sgt) dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
    dmaBufDetach(a.dmabuf, a);
    sysExit(b.proc);
    clean(sources(b));
  };

  it("switch-local pair: BUS_ADDR, one page-less entry per range at the BAR's bus address, orig_nents 0", () => {
    const b = bed();
    const { a, m } = mapFor(b, "04:00.0", [
      [0n, 64n * KiB],
      [1n * MiB, 128n * KiB],
    ]);
    const sgt = must(m, "map");
    assert.equal(physVecMapping(sgt)?.mapType, "bus-address", "map type");
    const e = entries(sgt);
    assert.deepEqual(
      e.map((s) => [s.dma_address as bigint, s.dma_length]),
      [
        [BAR2, 65536],
        [BAR2 + MiB, 131072],
      ],
      "bus addresses (no host-bridge offset here)",
    );
    assert.equal(sgt.orig_nents, 0, "no CPU entries");
    assert.equal(b.vfio.outstanding.size, 1, "one table outstanding");
    const ev = evs(b.tracer, "vfio:map").at(-1);
    assert.equal(
      ((ev?.data?.["entries"] ?? []) as { kind: string }[])[0]?.kind,
      "bus-address",
      "traced as bus addresses",
    );
    done(b, a, sgt);
  });

  it("a host-bridge window offset shows up in the bus address", () => {
    const b = bed({ busOffset: 0x10_0000_0000n });
    const { a, m } = mapFor(b, "04:00.0", [[0x2000n, 4096n]]);
    const sgt = must(m, "map");
    assert.equal(entries(sgt)[0]!.dma_address, BAR2 + 0x2000n + 0x10_0000_0000n, "cpu + offset");
    done(b, a, sgt);
  });

  it("a 5 GiB range of BAR4 is split into entries of at most ALIGN_DOWN(UINT_MAX, PAGE_SIZE)", () => {
    const b = bed();
    const fd = must(
      vfioDeviceFeatureDmaBuf(b.proc, b.vfd, req([[0n, 5n * GiB]], { region_index: 4 })),
      "export 5 GiB of BAR4",
    );
    const d = b.proc.fds.get(fd)!.file.private_data!;
    const a = must(dmaBufDynamicAttach(d, importerDev(b, "04:00.0"), recorder().ops), "attach");
    const sgt = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map");
    assert.deepEqual(
      entries(sgt).map((s) => [s.dma_address as bigint, s.dma_length]),
      [
        [BAR4, 0xffff_f000],
        [BAR4 + 0xffff_f000n, Number(5n * GiB - 0xffff_f000n)],
      ],
      "two entries",
    );
    done(b, a, sgt);
  });

  it("across a root complex that is not on the allowlist (no IOMMU): attach works, map → EINVAL", () => {
    const b = bed({ hostId: "8086:1234" });
    const { a, m } = mapFor(b, "05:00.0", [[0n, 4096n]]);
    assert.equal(errnoOf(m), "EINVAL", `not-supported map type: ${why(m)}`);
    assert.equal(b.vfio.outstanding.size, 0, "nothing handed out");
    done(b, a, null);
  });

  it("across an allowlisted root complex with an IOMMU: one IOVA range through the host bridge", () => {
    const b = bed({ iommu: "dma" });
    const { a, m } = mapFor(b, "05:00.0", [[0x10_0000n, 2n * MiB]]);
    const sgt = must(m, "map");
    assert.equal(physVecMapping(sgt)?.mapType, "through-host-bridge", "map type");
    assert.equal(physVecMapping(sgt)?.iova, true, "IOVA path");
    const e = entries(sgt);
    assert.equal(e.length, 1, "one entry");
    assert.notEqual(e[0]!.dma_address, BAR2 + 0x10_0000n, "an IOVA, not the BAR address");
    assert.equal(e[0]!.dma_length, Number(2n * MiB), "whole length");
    assert.equal(sg_page(e[0]!), null, "no page");
    done(b, a, sgt);
  });
});

describe("vfio-pci: pin (§8.36)", () => {
  const V619: KernelProfile = { ...PROFILES.mainline, vfioDmaBuf: { pinRefused: false } };

  it("mainline: dma_buf_pin → EOPNOTSUPP", () => {
    const b = bed();
    const { dmabuf } = exportBar(b);
    const a = must(
      dmaBufDynamicAttach(dmabuf, importerDev(b, "04:00.0"), recorder().ops),
      "attach",
    );
    dmabuf.resv.lock("test");
    const p = dmaBufPin(a);
    dmabuf.resv.unlock("test");
    assert.equal(errnoOf(p), "EOPNOTSUPP", why(p));
    assert.equal(a.pins, 0, "not pinned");
    assert.ok(evs(b.tracer, "vfio:pin").length === 1, "refusal traced");
    dmaBufDetach(dmabuf, a);
    sysExit(b.proc);
    clean(sources(b));
  });

  for (const profile of [PROFILES.mainline, V619])
    it(`${profile === V619 ? "v6.19 (before 61ceaf236115)" : "mainline"}: a pinned RDMA importer (ib_umem_dmabuf_get_pinned) ${profile === V619 ? "registers" : "fails with EOPNOTSUPP"}`, () => {
      const b = bed({ profile });
      const { fd, dmabuf } = exportBar(b);
      const nic = new RdmaDevice(b.sys, b.core, "04:00.0", { odp: false });
      const ctx = must(nic.open(b.proc), "ibv_open_device");
      const pd = ctx.allocPd();
      const r = ctx.regDmabufMr(
        pd,
        0n,
        64n * KiB,
        0n,
        fd,
        IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE,
      );
      if (profile === V619) {
        assert.ok(r.ok, `v6.19 has no pin: dma_buf_pin is a no-op: ${why(r)}`);
        assert.equal(dmaBufIsDynamic(dmabuf), false, "a static exporter");
      } else {
        assert.equal(errnoOf(r), "EOPNOTSUPP", `refused: ${why(r)}`);
        assert.equal(dmabuf.attachments.length, 0, "the umem was released (detached)");
        assert.equal(nic.umems.size, 0, "no umem left in the NIC");
        assert.equal(nic.mrs.size, 0, "no MR");
      }
      sysExit(b.proc);
      clean(sources(b, nic));
    });

  it("v6.19: a revoke only warns in the pinned importer; its mapping is kept (what the fix prevents)", () => {
    const A = bed({ profile: V619 });
    const { fd } = exportBar(A);
    const nic = new RdmaDevice(A.sys, A.core, "04:00.0", { odp: false });
    const ctx = must(nic.open(A.proc), "open");
    const mr = must(
      ctx.regDmabufMr(
        ctx.allocPd(),
        0n,
        64n * KiB,
        0n,
        fd,
        IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE,
      ),
      "pinned MR",
    );
    const k = kernelMrOf(mr)!;
    const before = k.mtt;
    must(A.vfio.configWrite(A.proc, A.vfd, PCI_COMMAND, PCI_COMMAND_MASTER), "memory off");
    assert.ok(
      nic.log.some((l) => /should not be called when memory is pinned/.test(l)),
      `warning logged: ${j(nic.log)}`,
    );
    assert.equal(k.mtt, before, "translation kept");
    assert.notEqual((k.umem as IbUmemDmabuf).sgt, null, "still mapped");
    sysExit(A.proc);
    clean(sources(A, nic));
  });

  it("mainline with CONFIG_DMABUF_MOVE_NOTIFY=n: even a dynamic importer is pinned on map, so map → EOPNOTSUPP; with =y it maps", () => {
    for (const moveNotify of [false, true]) {
      const b = bed({ moveNotify });
      const { dmabuf } = exportBar(b);
      const a = must(
        dmaBufDynamicAttach(dmabuf, importerDev(b, "04:00.0"), recorder().ops),
        "attach",
      );
      const m = dmaBufMapAttachmentUnlocked(a, "bidirectional");
      if (moveNotify) {
        assert.ok(m.ok, `MOVE_NOTIFY=y: ${why(m)}`);
        dmaBufUnmapAttachmentUnlocked(a, m.value, "bidirectional");
      } else assert.equal(errnoOf(m), "EOPNOTSUPP", `MOVE_NOTIFY=n: ${why(m)}`);
      dmaBufDetach(dmabuf, a);
      sysExit(b.proc);
      clean(sources(b), `moveNotify ${moveNotify}`);
    }
  });
});

describe("vfio-pci: revoke (§8.35)", () => {
  function attached(b: Bed) {
    const { fd, dmabuf } = exportBar(b);
    const rec = recorder();
    const a = must(dmaBufDynamicAttach(dmabuf, importerDev(b, "04:00.0"), rec.ops), "attach");
    return { fd, dmabuf, rec, a };
  }
  const mapErr = (a: DmaBufAttachment) => errnoOf(dmaBufMapAttachmentUnlocked(a, "bidirectional"));

  it("PCI_COMMAND memory cleared: move_notify (resv held) to the dynamic importer; new attach and map → ENODEV; memory enabled again: a second move_notify, then attach and map work", () => {
    const b = bed();
    const { dmabuf, rec, a } = attached(b);
    const dev = importerDev(b, "04:00.0");
    must(b.vfio.configWrite(b.proc, b.vfd, PCI_COMMAND, PCI_COMMAND_MASTER), "memory off");
    assert.deepEqual(rec.calls, [{ held: true }], "one move_notify, resv held");
    assert.equal(b.vfio.command & PCI_COMMAND_MEMORY, 0, "memory bit clear");
    assert.equal(errnoOf(dmaBufDynamicAttach(dmabuf, dev, recorder().ops)), "ENODEV", "attach");
    assert.equal(mapErr(a), "ENODEV", "map");
    assert.ok(evs(b.tracer, "vfio:revoke").length === 1, "revoke traced");
    must(b.vfio.configWrite(b.proc, b.vfd, PCI_COMMAND, PCI_COMMAND_MASTER), "still off");
    assert.equal(rec.calls.length, 1, "no state change: no notify");
    must(
      b.vfio.configWrite(b.proc, b.vfd, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER),
      "memory on",
    );
    assert.equal(rec.calls.length, 2, "restore notifies too");
    const m = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map after restore");
    const a2 = dmaBufDynamicAttach(dmabuf, dev, recorder().ops);
    assert.ok(a2.ok, `attach after restore: ${why(a2)}`);
    dmaBufUnmapAttachmentUnlocked(a, m, "bidirectional");
    dmaBufDetach(dmabuf, a2.value);
    dmaBufDetach(dmabuf, a);
    sysExit(b.proc);
    clean(sources(b));
  });

  it("the last close of the device revokes for good: move_notify, ENODEV even after the device is opened again", () => {
    const b = bed();
    const { dmabuf, rec, a } = attached(b);
    must(sysClose(b.proc, b.vfd), "close the device");
    assert.equal(rec.calls.length, 1, "move_notify at close");
    assert.equal(b.vfio.openCount, 0, "closed");
    assert.equal(b.vfio.registrations, 0, "registration dropped by the cleanup");
    assert.equal(b.vfio.dmabufs.length, 0, "no longer tied to the device");
    assert.equal(mapErr(a), "ENODEV", "map");
    const vfd2 = must(b.vfio.open(b.proc), "open again");
    assert.equal(b.vfio.command & PCI_COMMAND_MEMORY, PCI_COMMAND_MEMORY, "memory on again");
    assert.equal(mapErr(a), "ENODEV", "the old buffer stays revoked");
    assert.equal(errnoOf(dmaBufDynamicAttach(dmabuf, a.dev, recorder().ops)), "ENODEV", "attach");
    dmaBufDetach(dmabuf, a);
    must(sysClose(b.proc, vfd2), "close");
    sysExit(b.proc);
    clean(sources(b));
  });

  it("a second open file keeps the device open: closing one does not revoke", () => {
    const b = bed();
    const { rec, a, dmabuf } = attached(b);
    const vfd2 = must(b.vfio.open(b.proc), "second open");
    must(sysClose(b.proc, b.vfd), "close the first");
    assert.equal(rec.calls.length, 0, "no revoke");
    const m = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map");
    dmaBufUnmapAttachmentUnlocked(a, m, "bidirectional");
    must(sysClose(b.proc, vfd2), "close the second");
    assert.equal(rec.calls.length, 1, "now revoked");
    dmaBufDetach(dmabuf, a);
    sysExit(b.proc);
    clean(sources(b));
  });

  it("VFIO_DEVICE_RESET revokes around the reset and restores after it (two move_notify), so maps work afterwards; without a reset method → EINVAL and nothing happens", () => {
    const b = bed();
    const { rec, a, dmabuf } = attached(b);
    must(sysIoctl(b.proc, b.vfd, VFIO_DEVICE_RESET, null), "reset");
    assert.equal(rec.calls.length, 2, "revoke + restore");
    assert.deepEqual(
      [...evs(b.tracer, "vfio:revoke"), ...evs(b.tracer, "vfio:restore")].map(
        (e) => e.data?.["why"],
      ),
      ["device reset", "reset done, memory enabled"],
      "traced",
    );
    const m = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "map after reset");
    dmaBufUnmapAttachmentUnlocked(a, m, "bidirectional");
    must(b.vfio.configWrite(b.proc, b.vfd, PCI_COMMAND, 0), "memory off");
    must(sysIoctl(b.proc, b.vfd, VFIO_DEVICE_RESET, null), "reset with memory off");
    assert.equal(rec.calls.length, 3, "already revoked: no notify; memory off: no restore");
    assert.equal(mapErr(a), "ENODEV", "still revoked");
    dmaBufDetach(dmabuf, a);
    sysExit(b.proc);
    clean(sources(b));
    const n = bed({ vfio: { resetWorks: false } });
    const t = attached(n);
    assert.equal(errnoOf(sysIoctl(n.proc, n.vfd, VFIO_DEVICE_RESET, null)), "EINVAL", "no reset");
    assert.equal(t.rec.calls.length, 0, "no notify");
    dmaBufDetach(t.dmabuf, t.a);
    sysExit(n.proc);
    clean(sources(n));
  });

  it("a buffer exported while memory is disabled starts revoked (attach → ENODEV) and becomes usable when memory is enabled", () => {
    const b = bed();
    must(b.vfio.configWrite(b.proc, b.vfd, PCI_COMMAND, 0), "memory off");
    const { dmabuf } = exportBar(b);
    assert.equal([...b.vfio.exports][0]!.revoked, true, "revoked at export");
    const dev = importerDev(b, "04:00.0");
    assert.equal(errnoOf(dmaBufDynamicAttach(dmabuf, dev, recorder().ops)), "ENODEV", "attach");
    must(b.vfio.configWrite(b.proc, b.vfd, PCI_COMMAND, PCI_COMMAND_MEMORY), "memory on");
    const a = must(dmaBufDynamicAttach(dmabuf, dev, recorder().ops), "attach after enable");
    dmaBufDetach(dmabuf, a);
    sysExit(b.proc);
    clean(sources(b));
  });

  it("map asserts the reservation lock (called under it by the core); unlocked map is reported by lockdep", () => {
    const b = bed();
    const { a, dmabuf } = attached(b);
    const m = dmaBufMapAttachment(a, "bidirectional");
    assert.ok(m.ok, why(m));
    assert.ok(b.core.lockdep.length > 0, "lockdep report for the unlocked map");
    dmaBufUnmapAttachmentUnlocked(a, m.value, "bidirectional");
    dmaBufDetach(dmabuf, a);
    sysExit(b.proc);
    clean(sources(b));
  });
});

// ── RDMA end to end ─────────────────────────────────────────────────────────────────────────

const pattern = (n: number, seed: number): Uint8Array =>
  Uint8Array.from({ length: n }, (_, i) => (i * 13 + seed * 5 + 3) & 0xff);

/** A's NIC registers the vfio dma-buf; B's NIC gets a host MR; the QPs are connected. */
function e2e(o: BedOpts & { nic: string; ranges: [bigint, bigint][]; rdma?: RdmaOptions }) {
  const A = bed(o);
  const ex = exportBar(A, o.ranges);
  const nicA = new RdmaDevice(A.sys, A.core, o.nic, o.rdma ?? {});
  const B = remoteNicBed({ proc: "client" });
  const { ctxA, ctxB, pdA, pdB, qpA, qpB } = connectQps({ nic: nicA, proc: A.proc }, B);
  const size = ex.dmabuf.size;
  const mrA = must(ctxA.regDmabufMr(pdA, 0n, size, 0x7000_0000n, ex.fd, RW), "vfio dma-buf MR");
  const mrB = must(ctxB.regMr(pdB, size, IBV_ACCESS_LOCAL_WRITE), "host MR");
  const write = (off: bigint, data: Uint8Array) =>
    writeFromHostMr(qpB, mrB, data, mrA.iova + off, mrA.rkey);
  const done = () => {
    sysExit(A.proc);
    sysExit(B.proc);
    clean([...sources(A, nicA), B.sys, B.core, B.nic, B.proc]);
  };
  return { A, B, ex, nicA, qpA, qpB, mrA, mrB, write, done };
}

describe("vfio-pci + RDMA: writes into a BAR dma-buf", () => {
  it("switch-local pair (IOMMU off): the MR holds bus addresses of both ranges; a WRITE across them lands at the BAR addresses", () => {
    const t = e2e({
      nic: "04:00.0",
      ranges: [
        [0x10000n, 64n * KiB],
        [0x100000n, 64n * KiB],
      ],
    });
    const k = kernelMrOf(t.mrA)!;
    assert.deepEqual(
      k.mtt!.map((s) => [s.dma, s.kind]),
      [
        [BAR2 + 0x10000n, "bus-address"],
        [BAR2 + 0x100000n, "bus-address"],
      ],
      "bus addresses",
    );
    const data = pattern(10_000, 1);
    const off = 64n * KiB - 4000n;
    const wc = t.write(off, data);
    assert.equal(wc.status, "IBV_WC_SUCCESS", wcText(wc));
    assert.deepEqual(
      rd(t.A.sys, BAR2 + 0x10000n + off, 4000),
      data.subarray(0, 4000),
      "first range",
    );
    assert.deepEqual(rd(t.A.sys, BAR2 + 0x100000n, 6000), data.subarray(4000), "second range");
    assert.deepEqual(rd(t.A.sys, BAR2 + 0x10000n + off - 1n, 1), new Uint8Array(1), "not before");
    t.done();
  });

  it("across an allowlisted root complex with an IOMMU: the MR holds an IOVA; the write is translated and lands in the BAR", () => {
    const t = e2e({ nic: "05:00.0", iommu: "dma", ranges: [[0x20_0000n, 256n * KiB]] });
    const k = kernelMrOf(t.mrA)!;
    assert.equal(k.mtt!.length, 1, "one segment");
    assert.equal(k.mtt![0]!.kind, "iova", "IOVA");
    assert.notEqual(k.mtt![0]!.dma, BAR2 + 0x20_0000n, "not the BAR address");
    const data = pattern(100_000, 2);
    const wc = t.write(1000n, data);
    assert.equal(wc.status, "IBV_WC_SUCCESS", wcText(wc));
    assert.equal(wc.detail, undefined, `nothing dropped: ${wcText(wc)}`);
    assert.deepEqual(rd(t.A.sys, BAR2 + 0x20_0000n + 1000n, 100_000), data, "landed");
    t.done();
  });

  it("a vfio revoke while a dynamic MR is live: the MR is invalidated; B's next WRITE fails (IBV_WC_REM_ACCESS_ERR, the page fault gets ENODEV) and nothing lands; memory on again: the WRITE faults the MR back in and lands", () => {
    const t = e2e({ nic: "04:00.0", ranges: [[0n, 64n * KiB]] });
    const k = kernelMrOf(t.mrA)!;
    const umem = k.umem as IbUmemDmabuf;
    assert.equal(t.write(0x100n, pattern(16, 3)).status, "IBV_WC_SUCCESS", "first write");
    assert.deepEqual(rd(t.A.sys, BAR2 + 0x100n, 16), pattern(16, 3), "landed");
    must(t.A.vfio.configWrite(t.A.proc, t.A.vfd, PCI_COMMAND, PCI_COMMAND_MASTER), "memory off");
    assert.equal(k.mtt, null, "translation zapped");
    assert.equal(umem.sgt, null, "umem unmapped");
    assert.equal(t.A.vfio.outstanding.size, 0, "the table went back to vfio");
    assert.ok(evs(t.A.tracer, "rdma:invalidate").length === 1, "invalidate traced");
    const wc = t.write(0x200n, pattern(32, 4));
    assert.equal(wc.status, "IBV_WC_REM_ACCESS_ERR", wcText(wc));
    assert.match(wc.detail ?? "", /ENODEV/, "the fault's map got ENODEV");
    assert.deepEqual(rd(t.A.sys, BAR2 + 0x200n, 32), new Uint8Array(32), "nothing landed");
    assert.equal(t.qpB.state, "ERR", "requester in error");
    must(
      t.A.vfio.configWrite(t.A.proc, t.A.vfd, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER),
      "memory on",
    );
    t.qpB.connect(t.qpA);
    const again = t.write(0x200n, pattern(32, 5));
    assert.equal(again.status, "IBV_WC_SUCCESS", wcText(again));
    assert.deepEqual(rd(t.A.sys, BAR2 + 0x200n, 32), pattern(32, 5), "landed after restore");
    t.done();
  });

  it("a vfio device closed under a live dynamic MR: invalidated for good; every later WRITE fails", () => {
    const t = e2e({ nic: "04:00.0", ranges: [[0n, 64n * KiB]] });
    must(sysClose(t.A.proc, t.A.vfd), "close the vfio device");
    assert.equal(kernelMrOf(t.mrA)!.mtt, null, "zapped");
    for (const n of [1, 2]) {
      const wc = t.write(0n, pattern(8, n));
      assert.equal(wc.status, "IBV_WC_REM_ACCESS_ERR", `write ${n}: ${wcText(wc)}`);
      t.qpB.connect(t.qpA);
    }
    assert.deepEqual(rd(t.A.sys, BAR2, 8), new Uint8Array(8), "nothing landed");
    t.done();
  });
});
