/**
 * @module sysmem-exporter
 * A small, real system-memory exporter to drive the dma-buf core (in the manner of the system
 * heap, drivers/dma-buf/heaps/system_heap.c, without its per-attachment page-list copies):
 * RAM from `System.allocPages`, a fresh sg_table per map from `sg_alloc_table_from_pages`, mapped
 * for the importer with `DmaApi.mapSgtable`, so an importer's device really reaches the bytes.
 * Options make it dynamic (pin/unpin + `move()` with move_notify), give it the optional hooks, or
 * inject the failures the spec's scenarios need. It counts every callback for tests.
 */

import type { DmaDirection } from "../dma/mapping.ts";
import type { Errno, KResult } from "../errno.ts";
import { KernelBug, kerr, kok } from "../errno.ts";
import type { Leak, LeakSource } from "../leaks.ts";
import { type SgTable, sg_alloc_table_from_pages, sg_free_table } from "../lib/scatterlist.ts";
import type { Page } from "../mm/page.ts";
import { System } from "../system.ts";
import type { DmaBufAttachment } from "./attachment.ts";
import {
  type DmaBuf,
  type DmaBufCore,
  type DmaBufOps,
  dmaBufExport,
  dmaBufMoveNotify,
  type IosysMap,
  type Module,
} from "./dma-buf.ts";

export interface SysmemExporterOptions {
  readonly size: bigint;
  readonly name?: string;
  /** Has pin/unpin: a dynamic exporter that can `move()`. */
  readonly dynamic?: boolean;
  readonly mmap?: boolean;
  readonly vmap?: boolean;
  readonly cpuAccess?: boolean;
  /** ≤6.14 `cache_sgt_mapping`. */
  readonly cacheSgtMapping?: boolean;
  readonly owner?: Module | null;
  /** File flags for the export (O_RDWR, O_RDONLY, ...). */
  readonly flags?: number;
  /** The exporter's attach refuses with this errno. */
  readonly attachFails?: Errno;
  /** pin refuses with this errno. */
  readonly pinFails?: Errno;
  /** map_dma_buf returns NULL. */
  readonly mapReturnsNull?: boolean;
}

export type Callback =
  | "attach"
  | "detach"
  | "pin"
  | "unpin"
  | "map"
  | "unmap"
  | "release"
  | "begin_cpu_access"
  | "end_cpu_access"
  | "mmap"
  | "vmap"
  | "vunmap";

export class SysmemExporter implements LeakSource {
  readonly sys: System;
  readonly opts: SysmemExporterOptions;
  pages: Page[];
  /** Calls in order, with the direction where there is one ("map:to-device"). */
  readonly calls: string[] = [];
  /** Outstanding pins (pin − unpin). */
  pins = 0;
  /** Tables map_dma_buf returned and unmap_dma_buf has not taken back. */
  readonly outstanding = new Set<SgTable>();
  /** Whether the resv was held when each locked callback ran. */
  readonly lockedCalls: { cb: Callback; held: boolean }[] = [];
  dmabuf: DmaBuf | null = null;
  /** Buffers exported with these pages whose `release` has not run yet. */
  readonly #backing = new Set<DmaBuf>();
  /** `pages` were given back to the System (the last buffer backed by them was released). */
  #pagesFreed = false;

  constructor(sys: System, opts: SysmemExporterOptions) {
    this.sys = sys;
    this.opts = opts;
    this.pages = sys.allocPages(opts.size);
  }

  count(cb: Callback): number {
    return this.calls.filter((c) => c === cb || c.startsWith(`${cb}:`)).length;
  }

  #locked(cb: Callback, d: DmaBuf): void {
    this.lockedCalls.push({ cb, held: d.resv.held });
  }

  /** CPU physical address of byte `off` of the buffer. */
  phys(off: bigint): bigint {
    const page = this.pages[Number(off / 4096n)]!;
    return System.phys(page) + (off % 4096n);
  }

  ops(): DmaBufOps {
    const o = this.opts;
    const ops: {
      -readonly [K in keyof DmaBufOps]: DmaBufOps[K];
    } = {
      map_dma_buf: (attach, dir) => this.#map(attach, dir),
      unmap_dma_buf: (attach, sgt, dir) => this.#unmap(attach, sgt, dir),
      release: (d) => {
        this.calls.push("release");
        // the heap's release frees the pages once no buffer of this exporter uses them
        this.#backing.delete(d);
        if (this.#backing.size === 0 && !this.#pagesFreed) {
          this.#pagesFreed = true;
          this.sys.freePages(this.pages);
        }
      },
    };
    if (o.cacheSgtMapping) ops.cache_sgt_mapping = true;
    ops.attach = (_d, a) => {
      this.calls.push("attach");
      if (o.attachFails) return kerr(o.attachFails, `exporter refuses ${a.dev.name}`);
      return kok();
    };
    ops.detach = () => {
      this.calls.push("detach");
    };
    if (o.dynamic) {
      ops.pin = (a) => {
        this.calls.push("pin");
        this.#locked("pin", a.dmabuf);
        if (o.pinFails) return kerr(o.pinFails, "pin refused");
        this.pins++;
        return kok();
      };
      ops.unpin = (a) => {
        this.calls.push("unpin");
        this.#locked("unpin", a.dmabuf);
        if (this.pins === 0) throw new KernelBug("sysmem exporter: unpin without pin");
        this.pins--;
      };
    }
    if (o.cpuAccess) {
      ops.begin_cpu_access = (_d, dir) => {
        this.calls.push(`begin_cpu_access:${dir}`);
        return kok();
      };
      ops.end_cpu_access = (_d, dir) => {
        this.calls.push(`end_cpu_access:${dir}`);
        return kok();
      };
    }
    if (o.mmap)
      ops.mmap = () => {
        this.calls.push("mmap");
        return kok();
      };
    if (o.vmap) {
      ops.vmap = (): KResult<IosysMap> => {
        this.calls.push("vmap");
        return kok({ isIomem: false, addr: System.phys(this.pages[0]!) });
      };
      ops.vunmap = () => {
        this.calls.push("vunmap");
      };
    }
    return ops;
  }

  // the exporter's map_dma_buf: a fresh table of its pages, mapped for the importer's device
  #map(attach: DmaBufAttachment, dir: DmaDirection): KResult<SgTable> | null {
    this.calls.push(`map:${dir}`);
    this.#locked("map", attach.dmabuf);
    if (this.opts.mapReturnsNull) return null;
    const t = sg_alloc_table_from_pages(this.pages, 0, this.opts.size, {
      name: `${this.opts.name ?? "sysmem"} sgt for ${attach.dev.name}`,
    });
    if (!t.ok) return t;
    const m = this.sys.dma.mapSgtable(attach.dev, t.value, dir);
    if (!m.ok) {
      sg_free_table(t.value);
      return m;
    }
    this.outstanding.add(t.value);
    return t;
  }

  #unmap(attach: DmaBufAttachment, sgt: SgTable, dir: DmaDirection): void {
    this.calls.push(`unmap:${dir}`);
    this.#locked("unmap", attach.dmabuf);
    if (!this.outstanding.delete(sgt))
      throw new KernelBug(
        `sysmem exporter: unmap_dma_buf got ${sgt.name}, which it never handed out`,
      );
    this.sys.dma.unmapSgtable(attach.dev, sgt, dir);
    sg_free_table(sgt);
  }

  /** Exports with these ops (`priv` is this exporter). */
  export(core: DmaBufCore): KResult<DmaBuf> {
    if (this.#pagesFreed) {
      // exported again after the previous buffer was released: fresh backing
      this.pages = this.sys.allocPages(this.opts.size);
      this.#pagesFreed = false;
    }
    const r = dmaBufExport(core, {
      exp_name: this.opts.name ?? "sysmem",
      owner: this.opts.owner ?? null,
      ops: this.ops(),
      size: this.opts.size,
      flags: this.opts.flags ?? 2,
      priv: this,
    });
    if (r.ok) {
      this.dmabuf = r.value;
      this.#backing.add(r.value);
    }
    return r;
  }

  /** Buffers it still backs (exported, `release` not run yet), with what is outstanding on them. */
  leaks(): Leak[] {
    const owner = `sysmem exporter ${this.opts.name ?? "sysmem"}`;
    const first = this.pages[0];
    return [...this.#backing].map((d) => ({
      kind: "dma-buf",
      owner,
      detail: `still backs ${d.describe()}: ${this.pages.length} page(s)${first ? ` from phys 0x${System.phys(first).toString(16)}` : ""}, release not called${this.outstanding.size > 0 ? `, ${this.outstanding.size} table(s) mapped` : ""}${this.pins > 0 ? `, pinned ${this.pins} time(s)` : ""}`,
    }));
  }

  /**
   * Move the buffer to fresh pages (the caller holds the resv): refused while pinned; dynamic
   * importers are told first (move_notify), then the bytes are copied.
   */
  move(): KResult {
    const d = this.dmabuf!;
    if (!d.resv.held) throw new KernelBug("sysmem exporter: move() without the reservation lock");
    if (this.pins > 0) return kerr("EBUSY", `${d.describe()} is pinned ${this.pins} time(s)`);
    dmaBufMoveNotify(d);
    const next = this.sys.allocPages(this.opts.size);
    for (let i = 0; i < this.pages.length; i++)
      this.sys.memory.write(
        System.phys(next[i]!),
        this.sys.memory.read(System.phys(this.pages[i]!), 4096),
      );
    const old = this.pages;
    this.pages = next;
    this.sys.freePages(old);
    return kok();
  }
}
