/**
 * @module kernel-importer
 * A generic in-kernel dma-buf importer (a GPU, NIC or capture driver) for scripts and scenarios:
 * it takes a dma-buf fd from a process, attaches statically or dynamically, maps, lets its device
 * DMA into the buffer through the fabric, and — to show what the 2021 thread argued about — can
 * walk the table with `sg_page()` as importers that use the CPU list do. That walk oopses on
 * page-less entries (NULL page: mainline debug copies, device-memory exporters) and on pages
 * scrambled by 6.1's CONFIG_DMABUF_DEBUG, as the kernel would.
 */

import type { DmaFault } from "../hw/fabric.ts";
import type { PciFunction } from "../hw/machine.ts";
import { DMA_BIT_MASK, type DmaDevice, dmaSetMaskAndCoherent } from "../kernel/dma/device.ts";
import {
  type DmaBufAttachment,
  dmaBufDetach,
  dmaBufDynamicAttach,
  dmaBufMapAttachmentUnlocked,
  dmaBufUnmapAttachment,
  dmaBufUnmapAttachmentUnlocked,
} from "../kernel/dma-buf/attachment.ts";
import type { DmaBuf } from "../kernel/dma-buf/dma-buf.ts";
import { dmaBufGet, dmaBufPut } from "../kernel/dma-buf/file.ts";
import { dmaSegments } from "../kernel/drivers/dma-segs.ts";
import { KernelBug } from "../kernel/errno.ts";
import type { Leak, LeakSource } from "../kernel/leaks.ts";
import { for_each_sg, type SgTable, sg_page } from "../kernel/lib/scatterlist.ts";
import { cpuReach } from "../kernel/mm/page.ts";
import type { DmaAddrKind } from "../kernel/trace.ts";
import { must, type SimMachine, type SimProcess } from "./sim-machine.ts";

export interface KernelImporterOptions {
  /** Dynamic importer (importer_ops with move_notify); default true. */
  readonly dynamic?: boolean;
  /** `allow_peer2peer` of a dynamic importer; default true. */
  readonly allowPeer2peer?: boolean;
  /** 64-bit DMA mask at probe (default true). */
  readonly dma64?: boolean;
}

/** One DMA segment as the importer's device sees it. */
export interface ImportedSegment {
  readonly dma: bigint;
  readonly len: bigint;
  readonly kind: DmaAddrKind;
}

/** An imported buffer: the attachment and, while mapped, the table. */
export interface Import {
  readonly dmabuf: DmaBuf;
  readonly attach: DmaBufAttachment;
  sgt: SgTable | null;
  /** move_notify arrived since the last map (dynamic importers drop their mapping then). */
  invalidations: number;
}

/** What `touchPages` found: every page reachable by the CPU, or the oops it caused. */
export type TouchResult =
  | { readonly ok: true; readonly pages: number; readonly mmioPages: number }
  | { readonly ok: false; readonly oops: string };

export class KernelImporter implements LeakSource {
  readonly machine: SimMachine;
  readonly fn: PciFunction;
  readonly dev: DmaDevice;
  readonly dynamic: boolean;
  readonly allowPeer2peer: boolean;
  readonly imports = new Set<Import>();

  constructor(machine: SimMachine, fn: PciFunction, opts: KernelImporterOptions = {}) {
    this.machine = machine;
    this.fn = fn;
    this.dev = machine.sys.device(fn);
    // the device's driver may have set its mask already (amdgpu: 44 bits): keep it
    if ((opts.dma64 ?? true) && this.dev.dmaMask === DMA_BIT_MASK(32))
      dmaSetMaskAndCoherent(this.dev, 64);
    this.dynamic = opts.dynamic ?? true;
    this.allowPeer2peer = this.dynamic && (opts.allowPeer2peer ?? true);
  }

  get name(): string {
    return this.dev.name;
  }

  /** dma_buf_get(fd) + dma_buf_dynamic_attach (or dma_buf_attach for a static importer). */
  attach(proc: SimProcess, fd: number): Import {
    const dmabuf = must(dmaBufGet(proc.proc, fd), `dma_buf_get(${fd})`);
    const provider = this.machine.providerOf(dmabuf);
    if (provider) this.machine.traceVerdict(provider, this.fn);
    const imp: Partial<Import> & { invalidations: number } = { invalidations: 0, sgt: null };
    const ops = this.dynamic
      ? {
          allow_peer2peer: this.allowPeer2peer,
          // the importer's move_notify: drop the mapping (resv held by the exporter)
          move_notify: (a: DmaBufAttachment) => {
            const i = a.importer_priv as Import;
            i.invalidations++;
            if (i.sgt) {
              dmaBufUnmapAttachment(a, i.sgt, "bidirectional");
              i.sgt = null;
            }
          },
        }
      : null;
    const r = dmaBufDynamicAttach(dmabuf, this.dev, ops, imp);
    if (!r.ok) {
      dmaBufPut(dmabuf);
      must(r, `dma_buf_dynamic_attach(${this.name})`);
    }
    const full = Object.assign(imp, { dmabuf, attach: r.ok ? r.value : null }) as Import;
    this.imports.add(full);
    return full;
  }

  /** dma_buf_map_attachment_unlocked(DMA_BIDIRECTIONAL); the segments the device will use. */
  map(imp: Import): ImportedSegment[] {
    if (!imp.sgt)
      imp.sgt = must(
        dmaBufMapAttachmentUnlocked(imp.attach, "bidirectional"),
        `dma_buf_map_attachment(${this.name})`,
      );
    return this.segments(imp);
  }

  segments(imp: Import): ImportedSegment[] {
    if (!imp.sgt) return [];
    return dmaSegments(this.machine.sys, this.dev, imp.sgt);
  }

  /**
   * The importer walks the table's `nents` entries with sg_page() and reads each page, as the
   * drivers Jason listed (rxe, siw, hfi1, qib) do with for_each_sg(sgl, sg, nents). The first bad
   * page is the oops. (An exporter's `orig_nents = 0` only empties for_each_sgtable_sg walks.)
   */
  touchPages(imp: Import): TouchResult {
    if (!imp.sgt) throw new Error(`${this.name}: touchPages before map`);
    let pages = 0;
    let mmioPages = 0;
    for (const sg of for_each_sg(imp.sgt.sgl, imp.sgt.nents)) {
      let page: ReturnType<typeof sg_page>;
      try {
        page = sg_page(sg);
      } catch (e) {
        if (!(e instanceof KernelBug)) throw e;
        return this.#oops(
          "general protection fault, probably for non-canonical address (sg_page() of a mangled entry)",
        );
      }
      const reach = cpuReach(page);
      if (reach === "no-page")
        return this.#oops("BUG: kernel NULL pointer dereference (sg_page() returned NULL)");
      pages++;
      if (reach === "mmio-page") mmioPages++;
    }
    this.machine.tracer.emit(
      "importer:sg_page",
      `${this.name}: sg_page() walk read ${pages} page(s)${mmioPages ? `, ${mmioPages} of them device memory (MMIO)` : ""}`,
    );
    return { ok: true, pages, mmioPages };
  }

  #oops(msg: string): TouchResult {
    this.machine.tracer.emit("importer:oops", `${this.name}: ${msg}`);
    return { ok: false, oops: msg };
  }

  /**
   * The device writes `data` at byte `offset` of the mapped buffer, segment by segment through the
   * fabric. Returns the first fault (nothing after it is written), or null.
   */
  write(imp: Import, offset: bigint, data: Uint8Array): string | null {
    if (!imp.sgt) this.map(imp);
    let pos = 0n;
    let done = 0;
    for (const s of this.segments(imp)) {
      if (done >= data.length) break;
      const start = offset + BigInt(done);
      if (start >= pos + s.len) {
        pos += s.len;
        continue;
      }
      const within = start - pos;
      const n = Math.min(data.length - done, Number(s.len - within));
      const r = this.machine.sys.deviceWrite(
        this.dev,
        s.dma + within,
        data.subarray(done, done + n),
      );
      if (!r.ok) {
        const msg = `${this.name}: DMA write to 0x${(s.dma + within).toString(16)} faulted: ${describeFault(r.fault)}`;
        this.machine.tracer.emit("importer:fault", msg);
        return msg;
      }
      this.machine.tracer.emit(
        "importer:dma",
        `${this.name}: wrote ${n} bytes at ${s.kind} 0x${(s.dma + within).toString(16)}`,
      );
      done += n;
      pos += s.len;
    }
    if (done < data.length) return `${this.name}: write beyond the mapped buffer`;
    return null;
  }

  unmap(imp: Import): void {
    if (!imp.sgt) return;
    dmaBufUnmapAttachmentUnlocked(imp.attach, imp.sgt, "bidirectional");
    imp.sgt = null;
  }

  /** dma_buf_detach + dma_buf_put. */
  detach(imp: Import): void {
    this.unmap(imp);
    dmaBufDetach(imp.dmabuf, imp.attach);
    dmaBufPut(imp.dmabuf);
    this.imports.delete(imp);
  }

  /** Driver unload: every import unmapped, detached and put. */
  unload(): void {
    for (const imp of [...this.imports]) this.detach(imp);
  }

  leaks(): readonly Leak[] {
    return [...this.imports].map((i) => ({
      kind: "import",
      owner: this.name,
      detail: `${i.dmabuf.describe()} still imported${i.sgt ? " and mapped" : ""}`,
    }));
  }
}

function describeFault(f: DmaFault): string {
  return `${f.reason} (at ${f.at})`;
}
