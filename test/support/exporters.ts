/**
 * Every dma-buf exporter of the model as a factory the conformance suites run (one contract, every
 * implementation: Hono's router suite is the model): how to boot the machine it needs, export a
 * buffer of N bytes, read its backing bytes where they are now, move it the way the exporter
 * moves buffers (if it ever does), and — the contract's other half — what it promises a static
 * and a dynamic peer-to-peer capable importer, stated from the kernel's rules with the P2PDMA
 * verdict of the pair as input (never per cell).
 */

import type { PciFunction } from "../../src/core/hw/machine.ts";
import { type DmaBufOps, dmaBufExport } from "../../src/core/kernel/dma-buf/dma-buf.ts";
import {
  dmaBufFd,
  O_CLOEXEC,
  O_RDWR,
  sysClose,
  sysIoctl,
} from "../../src/core/kernel/dma-buf/file.ts";
import type { SysmemExporter } from "../../src/core/kernel/dma-buf/sysmem-exporter.ts";
import type { AccelMapMode, HlDmabufPriv } from "../../src/core/kernel/drivers/accel.ts";
import type { GpuBo } from "../../src/core/kernel/drivers/gpu.ts";
import {
  dmaHeapAlloc,
  F_SEAL_SHRINK,
  ShmemFs,
  SystemHeap,
  type SystemHeapBuffer,
  UdmabufDevice,
  udmabufCreate,
} from "../../src/core/kernel/drivers/udmabuf.ts";
import {
  VFIO_DEVICE_RESET,
  VfioPciDevice,
  vfioDeviceFeatureDmaBuf,
} from "../../src/core/kernel/drivers/vfio.ts";
import type { Errno, KResult } from "../../src/core/kernel/errno.ts";
import { sg_alloc_table_from_pages, sg_free_table } from "../../src/core/kernel/lib/scatterlist.ts";
import type { P2pMapType } from "../../src/core/kernel/pci/p2pdma.ts";
import { ErrnoError } from "../../src/core/sim/sim-machine.ts";
import { BAR, BDF, type Bed, bed, type Cfg, fnOf, readAt, readPages } from "./conformance-bed.ts";

/** What an importer gets: a table (and whether a DMA through it reaches the bytes), or an errno. */
export type Expect =
  | { readonly maps: true; readonly dma: "lands" | "faults" }
  | { readonly maps: false; readonly errnos: readonly Errno[]; readonly at: "attach" | "map" };

export interface Promises {
  /** A static importer (dma_buf_attach: no importer ops, peer2peer=0). */
  readonly static: Expect;
  /** A dynamic peer-to-peer capable importer (allow_peer2peer, move_notify). */
  readonly dynamic: Expect;
  /** A dynamic peer-to-peer capable importer that pins with dma_buf_pin() (the RDMA pinned flow). */
  readonly pinned: Expect;
}

/** What a promise may depend on: the configuration and the kernel's verdict for the pair. */
export interface PromiseCtx {
  readonly cfg: Cfg;
  /** P2PDMA map type for (the exporter's memory, the importer); null: host memory. */
  readonly verdict: P2pMapType | null;
  /** The importer's DMA is translated by an IOMMU (dma / dma-fq domains). */
  readonly translating: boolean;
  /** A static importer already holds a mapping (the exporter suite maps its static one first). */
  readonly staticFirst: boolean;
}

/** A buffer exported for one suite run. */
export interface ExportedBuffer {
  readonly fd: number;
  /** The buffer's bytes as the exporter holds them now. */
  read(off: bigint, len: number): Uint8Array;
  /**
   * The exporter moves the buffer the way it does (eviction, revoke and restore), calling
   * move_notify as it does: `moved`, or `stayed` when it could not (pinned). Absent: this exporter
   * never moves a buffer.
   */
  readonly move?: () => "moved" | "stayed";
  /** Closes every fd and handle the export itself needed (device files, GEM handles, memfds). */
  close(): void;
}

export interface ExporterFactory {
  readonly name: string;
  /** Why this exporter does not exist under `cfg` (a reasoned skip), or null. */
  skip(cfg: Cfg): string | null;
  bed(cfg: Cfg): Bed;
  /** The function whose memory backs the buffer (null: host RAM). */
  provider(b: Bed): PciFunction | null;
  export(b: Bed, size: bigint): ExportedBuffer;
  promise(p: PromiseCtx): Promises;
  /** `move()` always moves a buffer no importer has pinned (a GPU moves only what sits in VRAM). */
  readonly movesUnlessPinned?: boolean;
}

function must<T>(r: KResult<T>, what: string): T {
  if (r.ok) return r.value;
  throw new ErrnoError(r.errno, r.reason ?? "", what);
}

const MAPS_LANDS: Expect = { maps: true, dma: "lands" };
const all = (e: Expect): Promises => ({ static: e, dynamic: e, pinned: e });

/**
 * Where a refusal comes from: ≤6.14 kernels map (and pin) at attach when the importer's and the
 * exporter's dynamic-ness differ (dma_buf_dynamic_attach), so the map's errno comes back there.
 */
function refusedAt(cfg: Cfg, exporterDynamic: boolean, importerDynamic: boolean): "attach" | "map" {
  return cfg.kernel === "6.1" && exporterDynamic !== importerDynamic ? "attach" : "map";
}

/**
 * Addresses from dma_map_resource() (habanalabs, amdgpu VRAM): it never asks P2PDMA, so behind a
 * translating IOMMU the peer gets an IOVA and its writes go up to the root complex, which forwards
 * them to the BAR only when it does peer-to-peer (here: the allowlisted host bridge). Without
 * translation the address is the BAR's, routed as the verdict says.
 */
function mapResourceDma(p: PromiseCtx): "lands" | "faults" {
  return p.translating && !p.cfg.hostAllowlisted ? "faults" : "lands";
}

function accel(mode: AccelMapMode | "v3"): ExporterFactory {
  const v3 = mode === "v3";
  return {
    name: v3 ? "accel v3 (raw BAR addresses)" : `accel ${mode}`,
    skip: () => null,
    bed: (cfg) => bed(cfg, { accel: v3 ? { generation: "v3" } : { mapMode: mode } }),
    provider: (b) => fnOf(b, BDF.accel),
    export(b, size) {
      const dev = [...b.sim.accels.values()][0]!;
      const afd = b.proc.open(dev.devicePath);
      const { va, handle } = b.proc.accelAlloc(afd, size);
      // the v3 uAPI takes the allocation handle where mainline takes the device VA
      const fd = b.proc.accelExport(afd, { addr: v3 ? handle : va, size });
      const priv = b.proc.dmabuf(fd).priv as HlDmabufPriv;
      const phys = (off: bigint): bigint => {
        const pack = priv.phys_pg_pack;
        if (!pack) return dev.barAddress(priv.device_phys_addr + off);
        const at = priv.offset + off;
        return dev.barAddress(pack.pages[Number(at / pack.page_size)]! + (at % pack.page_size));
      };
      return {
        fd,
        read: (off, len) => readAt(b.sim.sys, phys, off, len),
        close: () => b.proc.close(afd),
      };
    },
    promise(p) {
      if (v3)
        // v3 checks nothing and hands every importer the raw BAR addresses it built at export
        return all({
          maps: true,
          dma:
            p.verdict === "bus-address" || (p.verdict === "through-host-bridge" && !p.translating)
              ? "lands"
              : "faults",
        });
      // hl_dmabuf_attach clears peer2peer when pci_p2pdma_distance() < 0; hl_map_dmabuf: -EPERM
      const eperm = (dyn: boolean): Expect => ({
        maps: false,
        errnos: ["EPERM"],
        at: refusedAt(p.cfg, false, dyn),
      });
      const dynamic: Expect =
        p.verdict === "not-supported"
          ? eperm(true)
          : { maps: true, dma: mode === "map-resource" ? mapResourceDma(p) : "lands" };
      // not a dynamic exporter: dma_buf_pin() is a no-op, so pinning changes nothing
      return { static: eperm(false), dynamic, pinned: dynamic };
    },
  };
}

function gpu(domain: "vram" | "gtt"): ExporterFactory {
  return {
    name: `GPU ${domain === "vram" ? "VRAM" : "GTT"} BO`,
    skip: () => null,
    bed: (cfg) => bed(cfg),
    provider: (b) => fnOf(b, BDF.gpu),
    export(b, size) {
      const dev = [...b.sim.gpus.values()][0]!;
      const gfd = b.proc.open(dev.devicePath);
      const file = b.proc.gpuFile(gfd);
      const handle = b.proc.gpuCreateBo(gfd, size, domain);
      const bo: GpuBo = file.bo(handle)!;
      const fd = b.proc.gpuExport(gfd, handle);
      return {
        fd,
        read: (off, len) => readAt(b.sim.sys, (at) => bo.phys(at), off, len),
        // VRAM BOs are evicted to GTT under memory pressure (amdgpu_evict_vram); GTT BOs never move
        ...(domain === "vram"
          ? { move: () => (must(dev.evict(), "amdgpu_evict_vram") > 0 ? "moved" : "stayed") }
          : {}),
        close() {
          must(file.closeHandle(handle), "GEM_CLOSE");
          b.proc.close(gfd);
        },
      };
    },
    promise(p) {
      if (domain === "gtt") return all(MAPS_LANDS);
      // amdgpu maps VRAM (dma_map_resource) for a P2P attachment while the BO may stay there:
      // not pinned (a dynamic importer with CONFIG_DMABUF_MOVE_NOTIFY), or pinned by mainline's
      // p2p-aware pin (with MOVE_NOTIFY and every attachment P2P; 6.1 always pins in GTT). A pin
      // by a static importer (peer2peer=0) puts it in GTT for good: the migration, which every
      // importer reaches, so after the exporter suite's static importer everyone gets GTT pages
      const vram = p.verdict !== "not-supported" && p.cfg.moveNotify && !p.staticFirst;
      const dma = (inVram: boolean): Expect => ({
        maps: true,
        dma: inVram ? mapResourceDma(p) : "lands",
      });
      return {
        static: MAPS_LANDS,
        dynamic: dma(vram),
        pinned: dma(vram && p.cfg.kernel === "mainline"),
      };
    },
  };
}

const vfio: ExporterFactory = {
  name: "vfio-pci BAR range",
  skip: (cfg) =>
    cfg.kernel === "6.1"
      ? "6.1's vfio-pci has no VFIO_DEVICE_FEATURE_DMA_BUF (the ioctl is -ENOTTY)"
      : null,
  bed: (cfg) => bed(cfg),
  provider: (b) => fnOf(b, BDF.vfio),
  export(b, size) {
    const dev = new VfioPciDevice(b.sim.sys, b.sim.core, BDF.vfio);
    b.extra.push(dev);
    const vfd = must(dev.open(b.proc.proc), "open vfio device");
    const fd = must(
      vfioDeviceFeatureDmaBuf(b.proc.proc, vfd, {
        region_index: 2,
        open_flags: O_RDWR | O_CLOEXEC,
        flags: 0,
        nr_ranges: 1,
        dma_ranges: [{ offset: 0n, length: size }],
      }),
      "VFIO_DEVICE_FEATURE_DMA_BUF",
    );
    return {
      fd,
      read: (off, len) => readAt(b.sim.sys, (at) => BAR.vfio + at, off, len),
      // a function reset revokes every export (move_notify) and restores it afterwards
      move: () => {
        must(sysIoctl(b.proc.proc, vfd, VFIO_DEVICE_RESET, null), "VFIO_DEVICE_RESET");
        return "moved";
      },
      close: () => must(sysClose(b.proc.proc, vfd), "close vfio device"),
    };
  },
  promise(p) {
    // vfio_pci_dma_buf_attach: -EOPNOTSUPP without peer2peer; pin always -EOPNOTSUPP (pin-on-map
    // without CONFIG_DMABUF_MOVE_NOTIFY); dma_buf_phys_vec_to_sgt: -EINVAL when not supported
    const dynamic: Expect = !p.cfg.moveNotify
      ? { maps: false, errnos: ["EOPNOTSUPP"], at: "map" }
      : p.verdict === "not-supported"
        ? { maps: false, errnos: ["EINVAL"], at: "map" }
        : MAPS_LANDS;
    // a pinning importer is refused by the pin itself
    const pinned: Expect = { maps: false, errnos: ["EOPNOTSUPP"], at: "map" };
    return { static: { maps: false, errnos: ["EOPNOTSUPP"], at: "attach" }, dynamic, pinned };
  },
};

const udmabuf: ExporterFactory = {
  name: "udmabuf",
  skip: () => null,
  bed: (cfg) => bed(cfg),
  provider: () => null,
  export(b, size) {
    const shmem = new ShmemFs(b.sim.sys);
    const dev = new UdmabufDevice(b.sim.sys, b.sim.core, shmem);
    b.extra.push(shmem, dev);
    const p = b.proc.proc;
    const ufd = must(dev.open(p), "open /dev/udmabuf");
    const memfd = must(shmem.memfdCreate(p, "conformance"), "memfd_create");
    must(shmem.ftruncate(p, memfd, size), "ftruncate");
    must(shmem.addSeals(p, memfd, F_SEAL_SHRINK), "F_ADD_SEALS");
    const fd = must(udmabufCreate(p, ufd, { memfd, flags: 0, offset: 0n, size }), "UDMABUF_CREATE");
    return {
      fd,
      read: (off, len) => readAt(b.sim.sys, (at) => shmem.phys(p, memfd, at), off, len),
      close() {
        must(sysClose(p, memfd), "close memfd");
        must(sysClose(p, ufd), "close /dev/udmabuf");
      },
    };
  },
  promise: () => all(MAPS_LANDS),
};

const systemHeap: ExporterFactory = {
  name: "system heap",
  skip: () => null,
  bed: (cfg) => bed(cfg),
  provider: () => null,
  export(b, size) {
    const heap = new SystemHeap(b.sim.sys, b.sim.core);
    b.extra.push(heap);
    const hfd = must(heap.open(b.proc.proc), "open /dev/dma_heap/system");
    const fd = must(dmaHeapAlloc(b.proc.proc, hfd, size), "DMA_HEAP_IOCTL_ALLOC");
    const buffer = b.proc.dmabuf(fd).priv as SystemHeapBuffer;
    return {
      fd,
      read: (off, len) => readAt(b.sim.sys, (at) => SystemHeap.phys(buffer, at), off, len),
      close: () => must(sysClose(b.proc.proc, hfd), "close /dev/dma_heap/system"),
    };
  },
  promise: () => all(MAPS_LANDS),
};

/** The small system-memory exporter, dynamic (pin/unpin): it moves to fresh pages on demand. */
const sysmem: ExporterFactory = {
  name: "sysmem exporter (movable)",
  movesUnlessPinned: true,
  skip: () => null,
  bed: (cfg) => bed(cfg),
  provider: () => null,
  export(b, size) {
    const fd = b.proc.heapAlloc(size, { movable: true });
    const d = b.proc.dmabuf(fd);
    const h = d.priv as SysmemExporter;
    return {
      fd,
      read: (off, len) => readAt(b.sim.sys, (at) => h.phys(at), off, len),
      move() {
        d.resv.lock("conformance: move");
        try {
          const r = h.move();
          if (r.ok) return "moved";
          if (r.errno === "EBUSY") return "stayed";
          throw new ErrnoError(r.errno, r.reason ?? "", "sysmem move");
        } finally {
          d.resv.unlock("conformance: move");
        }
      },
      close: () => {},
    };
  },
  promise: () => all(MAPS_LANDS),
};

/** Every exporter of the model. */
export const EXPORTERS: readonly ExporterFactory[] = [
  accel("map-resource"),
  accel("p2p-pages"),
  accel("phys-vec"),
  accel("v3"),
  gpu("vram"),
  gpu("gtt"),
  vfio,
  udmabuf,
  systemHeap,
  sysmem,
];

/** Exporters that move buffers (for the importer suite's move_notify checks). */
export const MOVABLE: readonly ExporterFactory[] = [sysmem, gpu("vram")];

/**
 * A deliberately broken exporter, to show the contract catches what it must: map_dma_buf hands
 * out a table covering half the buffer, and release never frees the pages.
 */
export const BROKEN_EXPORTER: ExporterFactory = {
  name: "broken: half-size tables, release leaks the pages",
  skip: () => null,
  bed: (cfg) => bed(cfg),
  provider: () => null,
  export(b, size) {
    const sys = b.sim.sys;
    const pages = sys.allocPages(size);
    const ops: DmaBufOps = {
      map_dma_buf: (a, dir) => {
        const t = sg_alloc_table_from_pages(pages, 0, size / 2n, { name: "broken sgt" });
        if (!t.ok) return t;
        const m = sys.dma.mapSgtable(a.dev, t.value, dir);
        if (!m.ok) {
          sg_free_table(t.value);
          return m;
        }
        return t;
      },
      unmap_dma_buf: (a, sgt, dir) => {
        sys.dma.unmapSgtable(a.dev, sgt, dir);
        sg_free_table(sgt);
      },
      release: () => {},
    };
    const d = must(
      dmaBufExport(b.sim.core, { exp_name: "broken", ops, size, flags: O_RDWR, priv: pages }),
      "dma_buf_export",
    );
    const fd = must(dmaBufFd(b.proc.proc, d, O_RDWR | O_CLOEXEC), "dma_buf_fd");
    return { fd, read: (off, len) => readPages(sys, pages, off, len), close: () => {} };
  },
  promise: () => all(MAPS_LANDS),
};
