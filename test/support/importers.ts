/**
 * Every dma-buf importer of the model as a factory the importer conformance suite runs: the
 * generic in-kernel importer (dynamic and static) and the RDMA NIC's dma-buf MRs (mlx5-style
 * ODP and the pinned flow of EFA / irdma / bnxt_re), plus a deliberately broken one.
 */

import { type DmaDevice, dmaSetMaskAndCoherent } from "../../src/core/kernel/dma/device.ts";
import {
  dmaBufDetach,
  dmaBufDynamicAttach,
  dmaBufMapAttachmentUnlocked,
  dmaBufUnmapAttachmentUnlocked,
} from "../../src/core/kernel/dma-buf/attachment.ts";
import { dmaBufGet, dmaBufPut } from "../../src/core/kernel/dma-buf/file.ts";
import {
  hostMrWrite,
  IBV_ACCESS_LOCAL_WRITE,
  IBV_ACCESS_REMOTE_READ,
  IBV_ACCESS_REMOTE_WRITE,
  kernelMrOf,
  type RdmaOptions,
} from "../../src/core/kernel/drivers/rdma.ts";
import type { KResult } from "../../src/core/kernel/errno.ts";
import { for_each_sgtable_dma_sg } from "../../src/core/kernel/lib/scatterlist.ts";
import type { System } from "../../src/core/kernel/system.ts";
import { ErrnoError } from "../../src/core/sim/sim-machine.ts";
import { type Bed, type Cfg, importerBdf, nicBdf } from "./conformance-bed.ts";

/** One imported buffer. */
export interface Imported {
  /** The importer's device writes `data` at `off` of the buffer: the fault (or dropped write), or null. */
  write(off: bigint, data: Uint8Array): string | null;
  /** The importer has dropped its mapping after move_notify and not re-mapped it yet. */
  invalidated(): boolean;
  /** Unmap, detach, put (or deregister). */
  release(): void;
}

export interface ImporterUnderTest {
  /** Attach and map (or register): throws ErrnoError when refused. */
  import(fd: number): Imported;
  /** Everything the importer opened for itself. */
  close(): void;
}

export interface ImporterFactory {
  readonly name: string;
  /** Which of an exporter's promises applies to it (test/support/exporters.ts `Promises`). */
  readonly kind: "static" | "dynamic" | "pinned";
  /** The device it imports on. */
  bdf(cfg: Cfg): string;
  /** Machine options the importer needs. */
  readonly rdma?: RdmaOptions;
  /** Under `cfg` the importer keeps the buffer pinned while it holds it (a move is refused). */
  pins(cfg: Cfg): boolean;
  open(b: Bed): ImporterUnderTest;
}

function must<T>(r: KResult<T>, what: string): T {
  if (r.ok) return r.value;
  throw new ErrnoError(r.errno, r.reason ?? "", what);
}

const RW = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

function kernel(dynamic: boolean): ImporterFactory {
  return {
    name: `in-kernel ${dynamic ? "dynamic" : "static"} importer`,
    kind: dynamic ? "dynamic" : "static",
    bdf: importerBdf,
    // map pins unless the importer is dynamic and CONFIG_DMABUF_MOVE_NOTIFY is set (both profiles)
    pins: (cfg) => !dynamic || !cfg.moveNotify,
    open(b) {
      const imp = b.sim.importer(importerBdf(b.cfg), { dynamic });
      return {
        import(fd) {
          const h = imp.attach(b.proc, fd);
          try {
            imp.map(h);
          } catch (e) {
            imp.detach(h);
            throw e;
          }
          return {
            write: (off, data) => imp.write(h, off, data),
            invalidated: () => h.sgt === null,
            release: () => imp.detach(h),
          };
        },
        close: () => imp.unload(),
      };
    },
  };
}

function rdma(odp: boolean): ImporterFactory {
  return {
    name: odp ? "RDMA NIC, ODP-style dynamic MR (mlx5)" : "RDMA NIC, pinned MR (efa/irdma/bnxt_re)",
    rdma: { odp },
    kind: odp ? "dynamic" : "pinned",
    bdf: nicBdf,
    // ODP attaches dynamically (pinned on map without CONFIG_DMABUF_MOVE_NOTIFY); the pinned flow pins
    pins: (cfg) => !odp || !cfg.moveNotify,
    open(b) {
      const nic = [...b.sim.nics.values()].find((n) => n.dev.fn.name === nicBdf(b.cfg))!;
      const minor = [...b.sim.nics.values()].indexOf(nic);
      const ufd = b.proc.open(`/dev/infiniband/uverbs${minor}`);
      const ibv = b.proc.ibv(ufd);
      const pd = ibv.allocPd();
      const size = 1n << 20n;
      const host = must(ibv.regMr(pd, size, RW), "ibv_reg_mr");
      const qa = ibv.createQp(pd);
      const qb = ibv.createQp(pd);
      return {
        import(fd) {
          const len = b.proc.dmabuf(fd).size;
          if (len > size) throw new Error("conformance: buffer larger than the host MR");
          const mr = must(ibv.regDmabufMr(pd, 0n, len, 0n, fd, RW), "ibv_reg_dmabuf_mr");
          const k = kernelMrOf(mr)!;
          return {
            write(off, data) {
              qa.connect(qb); // re-arms the QP after an error completion
              hostMrWrite(host, off, data);
              const wc = qa.postWrite({
                local: host,
                localAddr: host.iova + off,
                length: BigInt(data.length),
                remoteAddr: mr.iova + off,
                rkey: mr.rkey,
              });
              if (wc.status !== "IBV_WC_SUCCESS") return `${wc.status} ${wc.detail ?? ""}`;
              return wc.detail ?? null;
            },
            invalidated: () => k.mtt === null,
            release: () => must(ibv.deregMr(mr), "ibv_dereg_mr"),
          };
        },
        close() {
          must(ibv.destroyQp(qa), "ibv_destroy_qp");
          must(ibv.destroyQp(qb), "ibv_destroy_qp");
          must(ibv.deregMr(host), "ibv_dereg_mr");
          must(ibv.deallocPd(pd), "ibv_dealloc_pd");
          b.proc.close(ufd);
        },
      };
    },
  };
}

/** Every importer of the model. */
export const IMPORTERS: readonly ImporterFactory[] = [
  kernel(true),
  kernel(false),
  rdma(true),
  rdma(false),
];

/** Writes `data` at `off` of the buffer over DMA segments, as a device does; the first fault. */
function writeSegs(
  sys: System,
  dev: DmaDevice,
  segs: readonly { dma: bigint; len: bigint }[],
  off: bigint,
  data: Uint8Array,
): string | null {
  let pos = 0n;
  let done = 0;
  for (const s of segs) {
    const at = off + BigInt(done);
    if (done < data.length && at < pos + s.len) {
      const n = Math.min(data.length - done, Number(pos + s.len - at));
      const r = sys.deviceWrite(dev, s.dma + (at - pos), data.subarray(done, done + n));
      if (!r.ok) return `${r.fault.reason} (at ${r.fault.at})`;
      done += n;
    }
    pos += s.len;
  }
  return done === data.length ? null : "write beyond the mapped buffer";
}

/**
 * A deliberately broken importer: it attaches as a dynamic importer but its move_notify does
 * nothing, so it keeps DMA-ing to the addresses it mapped first.
 */
export const BROKEN_IMPORTER: ImporterFactory = {
  name: "broken: ignores move_notify",
  kind: "dynamic",
  bdf: importerBdf,
  pins: (cfg) => !cfg.moveNotify,
  open(b) {
    const dev = b.sim.sys.device(importerBdf(b.cfg));
    dmaSetMaskAndCoherent(dev, 64);
    return {
      import(fd) {
        const d = must(dmaBufGet(b.proc.proc, fd), "dma_buf_get");
        const ops = { allow_peer2peer: true, move_notify: () => {} };
        const a = must(dmaBufDynamicAttach(d, dev, ops, null), "dma_buf_dynamic_attach");
        const sgt = must(dmaBufMapAttachmentUnlocked(a, "bidirectional"), "dma_buf_map_attachment");
        const segs = [...for_each_sgtable_dma_sg(sgt)].map((s) => ({
          dma: s.dma_address as bigint,
          len: BigInt(s.dma_length),
        }));
        return {
          write: (off, data) => writeSegs(b.sim.sys, dev, segs, off, data),
          invalidated: () => false,
          release() {
            dmaBufUnmapAttachmentUnlocked(a, sgt, "bidirectional");
            dmaBufDetach(d, a);
            dmaBufPut(d);
          },
        };
      },
      close() {},
    };
  },
};
