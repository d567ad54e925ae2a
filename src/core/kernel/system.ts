/**
 * @module system
 * A booted machine you can run: the hardware (physical memory with RAM and every BAR, the fabric,
 * IOMMU tables) and the kernel on top (the PCI view, P2PDMA with its map-type cache, p2pmem,
 * IOMMU groups with their default domains and IOVA allocators, the DMA API, dma-debug).
 */

import { type PhysAddr, physAddr } from "../hw/address.ts";
import { Fabric } from "../hw/fabric.ts";
import { IommuPageTable } from "../hw/iommu.ts";
import {
  buildMachine,
  type HostBridge,
  type Machine,
  type MachineDescription,
  type PciFunction,
} from "../hw/machine.ts";
import { PhysicalMemory } from "../hw/memory.ts";
import { DmaDebug } from "./dma/debug.ts";
import { DMA_BIT_MASK, type DmaDevice, type DmaTranslation } from "./dma/device.ts";
import { DmaApi } from "./dma/mapping.ts";
import { Swiotlb } from "./dma/swiotlb.ts";
import { KernelBug } from "./errno.ts";
import {
  createIovaAllocator,
  dmaClient,
  type IovaAllocator,
  X86_MSI_REGION,
} from "./iommu/iova.ts";
import type { Leak, LeakSource } from "./leaks.ts";
import { P2pmemRegistry } from "./mm/p2pmem.ts";
import { PAGE_SHIFT, PAGE_SIZE_N, type Page } from "./mm/page.ts";
import { cpuSupportsP2pdma, hostBridgeAllowed, P2pdma, type PciView } from "./pci/p2pdma.ts";
import { type BootedPci, bootPci, type PciViewOptions } from "./pci/pci-view.ts";
import { type DmaAddrKind, dmaAddrKind, NO_TRACE, type Tracer } from "./trace.ts";

export interface SystemOptions extends PciViewOptions {
  /** Bytes of RAM above 4 GiB (plus 2 GiB below); default 64 GiB. Backed lazily. */
  readonly ramAbove4G?: bigint;
  /** Report DMA API misuse (CONFIG_DMA_API_DEBUG); `strict` throws at the first report. */
  readonly dmaDebug?: boolean | "strict";
  /** Simulated clock in ms for flush queues and delayed work. */
  readonly clock?: () => number;
  /** Where the kernel-style trace goes (`peerbuf run`); default: nothing is recorded. */
  readonly tracer?: Tracer;
}

const GiB = 1n << 30n;
const hex = (v: bigint): string => `0x${v.toString(16)}`;

/**
 * One `allocPages` call: per-page reference counts (`page_ref_count`); `refs` is null once every
 * page of the run is free. Runs are kept after they are freed so a put on a freed page is caught.
 */
interface PageRun {
  readonly start: bigint;
  readonly n: number;
  refs: Uint32Array | null;
  live: number;
}

export class System implements LeakSource {
  readonly machine: Machine;
  readonly pci: BootedPci;
  /** The view the P2P code reads, with p2pdma state as the running kernel has it. */
  readonly view: PciView;
  readonly memory = new PhysicalMemory();
  readonly fabric: Fabric;
  readonly p2pmem: P2pmemRegistry;
  readonly p2pdma: P2pdma;
  readonly dma: DmaApi;
  readonly debug: DmaDebug | null;
  readonly swiotlb: Swiotlb;
  readonly log: string[] = [];
  readonly trace: Tracer;
  readonly #devices = new Map<PciFunction, DmaDevice>();
  readonly #groups = new Map<string, { translation: DmaTranslation }>();
  #ramNext: bigint;
  #lowNext: bigint;
  /** Every `allocPages` run, sorted by first pfn. */
  readonly #runs: PageRun[] = [];

  constructor(desc: MachineDescription, opts: SystemOptions = {}) {
    this.machine = buildMachine(desc);
    this.trace = opts.tracer ?? NO_TRACE;
    this.pci = bootPci(this.machine, opts);
    const busOffset = (hb: HostBridge) => {
      const w = hb.desc.windows?.[0];
      return w ? w.busStart - w.cpuStart : 0n;
    };
    this.p2pmem = new P2pmemRegistry({ busOffset: (fn) => busOffset(fn.hostBridge) });
    const pci = this.pci;
    const reg = this.p2pmem;
    this.view = {
      machine: pci.machine,
      profile: pci.profile,
      cpu: pci.cpu,
      acsCtrl: (fn) => pci.acsCtrl(fn),
      hasP2pdmaState: (fn) => reg.state(fn) !== undefined || pci.hasP2pdmaState(fn),
      hasPublishedP2pmem: (fn) =>
        reg.hasPublished(fn, pci.profile.findNeedsPool) || pci.hasPublishedP2pmem(fn),
    };
    this.p2pdma = new P2pdma(this.view);
    // RAM: [0, 2 GiB) and [4 GiB, 4 GiB + ramAbove4G), minus anything a BAR occupies
    const bars: { start: bigint; end: bigint; fn: PciFunction; index: number }[] = [];
    for (const fn of this.machine.functions)
      for (const b of fn.desc.bars ?? [])
        if (b.mem && b.size > 0n)
          bars.push({ start: b.start, end: b.start + b.size, fn, index: b.index });
    for (const b of bars)
      this.memory.addRegion({
        kind: "bar",
        start: physAddr(b.start),
        end: physAddr(b.end),
        name: `${b.fn.name} BAR${b.index}`,
        owner: b.fn,
        bar: b.index,
      });
    const ram: [bigint, bigint][] = [
      [0x10_0000n, 2n * GiB],
      [4n * GiB, 4n * GiB + (opts.ramAbove4G ?? 64n * GiB)],
    ];
    for (const [s, e] of ram) {
      let cur = s;
      for (const b of [...bars].sort((x, y) => (x.start < y.start ? -1 : 1))) {
        if (b.end <= cur || b.start >= e) continue;
        if (b.start > cur)
          this.memory.addRegion({
            kind: "ram",
            start: physAddr(cur),
            end: physAddr(b.start),
            name: "System RAM",
          });
        // biome-ignore lint/complexity/useMathMinMax: bigints
        cur = b.end > cur ? b.end : cur;
      }
      if (cur < e)
        this.memory.addRegion({
          kind: "ram",
          start: physAddr(cur),
          end: physAddr(e),
          name: "System RAM",
        });
    }
    this.#lowNext = 0x10_0000n;
    this.#ramNext = 4n * GiB;
    // swiotlb: 64 MiB of low memory, as the default pool sits below 4 GiB
    this.swiotlb = new Swiotlb(
      this.memory,
      physAddr(2n * GiB - 64n * 1024n * 1024n),
      64n * 1024n * 1024n,
    );
    const cpuOk = cpuSupportsP2pdma(this.pci.cpu) === true;
    this.fabric = new Fabric(this.machine, this.memory, {
      acsCtrl: (fn) => this.pci.acsCtrl(fn),
      rootComplexP2p: (a, b) => {
        if (cpuOk) return true;
        const fa = a.rootFunctions[0];
        const fb = b.rootFunctions[0];
        return (
          !!fa && !!fb && hostBridgeAllowed(this.view, fa, fb, false, []).every((c) => c.allowed)
        );
      },
      busOffset,
    });
    this.debug = opts.dmaDebug ? new DmaDebug({ strict: opts.dmaDebug === "strict" }) : null;
    this.dma = new DmaApi({
      p2pdma: this.p2pdma,
      swiotlb: this.swiotlb,
      debug: this.debug,
      log: this.log,
    });
    this.#clock = opts.clock;
  }

  readonly #clock: (() => number) | undefined;

  /** The IOMMU group of a function: from the capture, else one group per function. */
  groupOf(fn: PciFunction): string {
    return fn.desc.iommuGroup != null ? String(fn.desc.iommuGroup) : `fn-${fn.name}`;
  }

  #translationFor(fn: PciFunction): DmaTranslation {
    const mode = this.pci.iommu;
    if (mode === undefined || mode === "off") return { kind: "none" };
    // a function outside every IOMMU group (the IOMMU's own PCI function) is not translated
    if (fn.desc.iommuGroup == null && this.machine.functions.some((f) => f.desc.iommuGroup != null))
      return { kind: "none" };
    const group = this.groupOf(fn);
    let g = this.#groups.get(group);
    if (!g) {
      if (mode === "identity")
        g = { translation: { kind: "identity", table: new IommuPageTable("identity"), group } };
      else {
        const strict = mode === "dma";
        const iova: IovaAllocator = createIovaAllocator({
          group,
          type: strict ? "DMA" : "DMA_FQ",
          profile: this.pci.profile,
          ...(this.#clock ? { clock: this.#clock } : {}),
          hostBridgeWindows: fn.hostBridge.desc.windows ?? [],
          resvRegions:
            this.pci.cpu.vendor === undefined || /Intel|AMD|Hygon/i.test(this.pci.cpu.vendor)
              ? [X86_MSI_REGION]
              : [],
        });
        g = {
          translation: {
            kind: "dma",
            table: new IommuPageTable(strict ? "dma" : "dma-fq"),
            iova,
            group,
            strict,
          },
        };
      }
      this.#groups.set(group, g);
    }
    return g.translation;
  }

  /** The DMA view of a function, created on first use with the PCI core's defaults. */
  device(bdf: string | PciFunction): DmaDevice {
    const fn = typeof bdf === "string" ? this.machine.byBdf(bdf) : bdf;
    if (!fn) throw new Error(`no function ${bdf} in this machine`);
    let dev = this.#devices.get(fn);
    if (!dev) {
      const translation = this.#translationFor(fn);
      dev = {
        fn,
        name: `${fn.desc.driver ?? "pci"} ${fn.name}`,
        dmaMask: DMA_BIT_MASK(32),
        coherentDmaMask: DMA_BIT_MASK(32),
        busDmaLimit: 0n,
        maxSegSize: 65536,
        segBoundaryMask: 0xffff_ffffn,
        coherent: true,
        untrusted: false,
        translation,
        client: dmaClient(fn.name),
      };
      this.#devices.set(fn, dev);
      this.fabric.attach(fn, translation.kind === "none" ? null : translation.table);
    }
    return dev;
  }

  /** Allocates physically contiguous RAM pages (above 4 GiB unless `low`); returns their Pages. */
  allocPages(bytes: bigint, opts: { low?: boolean } = {}): Page[] {
    const n = (bytes + PAGE_SIZE_N - 1n) / PAGE_SIZE_N;
    const start = opts.low ? this.#lowNext : this.#ramNext;
    if (opts.low) this.#lowNext += n * PAGE_SIZE_N;
    else this.#ramNext += n * PAGE_SIZE_N;
    const pages: Page[] = [];
    for (let i = 0n; i < n; i++)
      pages.push({ pfn: (start >> BigInt(PAGE_SHIFT)) + i, pgmap: null });
    if (n > 0n) {
      const first = start >> BigInt(PAGE_SHIFT);
      const refs = new Uint32Array(Number(n)).fill(1);
      const run: PageRun = { start: first, n: Number(n), refs, live: Number(n) };
      this.#runs.splice(this.#runIndex(first), 0, run);
    }
    return pages;
  }

  /** Index of the first run starting above `pfn` (runs never overlap). */
  #runIndex(pfn: bigint): number {
    let lo = 0;
    let hi = this.#runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#runs[mid]!.start <= pfn) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The `allocPages` run holding `pfn` and the page's index in it, if any. */
  #runOf(pfn: bigint): { run: PageRun; i: number } | null {
    const run = this.#runs[this.#runIndex(pfn) - 1];
    if (!run || pfn >= run.start + BigInt(run.n)) return null;
    return { run, i: Number(pfn - run.start) };
  }

  /**
   * `page_ref_count()` of a RAM page from `allocPages`: 0 once freed; null for a page the model
   * does not count (ZONE_DEVICE P2P pages, memory that never came from `allocPages`).
   */
  pageRefCount(page: Page): number | null {
    if (page.pgmap) return null;
    const at = this.#runOf(page.pfn);
    if (!at) return null;
    return at.run.refs?.[at.i] ?? 0;
  }

  /**
   * `get_page()` (what pinning a user page takes, e.g. pin_user_pages): +1 on a RAM page from
   * `allocPages`. A freed page is a KernelBug; pages the model does not count are ignored.
   */
  getPage(page: Page): void {
    if (page.pgmap) return;
    const at = this.#runOf(page.pfn);
    if (!at) return;
    const refs = at.run.refs;
    if (!refs || refs[at.i] === 0)
      throw new KernelBug(`get_page(pfn ${hex(page.pfn)}): the page is free (refcount 0)`);
    refs[at.i]!++;
  }

  /**
   * `put_page()`: -1; the last reference frees the page. A put on a free page is a KernelBug
   * (the kernel's VM_BUG_ON_PAGE); pages the model does not count are ignored.
   */
  putPage(page: Page): void {
    if (page.pgmap) return;
    const at = this.#runOf(page.pfn);
    if (!at) return;
    const { run, i } = at;
    const refs = run.refs;
    if (!refs || refs[i] === 0)
      throw new KernelBug(`put_page(pfn ${hex(page.pfn)}): the page is already free (refcount 0)`);
    if (--refs[i]! === 0 && --run.live === 0) run.refs = null;
  }

  /** `__free_pages()` of what `allocPages` returned: the allocation's reference on each page. */
  freePages(pages: readonly Page[]): void {
    for (const p of pages) this.putPage(p);
  }

  /** A device writes at a DMA address (through the fabric); dma-debug notes what it touched. */
  deviceWrite(dev: DmaDevice, dma: bigint, data: Uint8Array): ReturnType<Fabric["dmaWrite"]> {
    const r = this.fabric.dmaWrite(dev.fn, dma, data);
    if (r.ok) this.debug?.deviceWrote(dev, dma, BigInt(data.length));
    return r;
  }

  /** The CPU reads memory (kernel direct map); dma-debug checks it synced what devices wrote. */
  cpuRead(phys: PhysAddr, len: number): Uint8Array {
    this.debug?.cpuRead(phys, BigInt(len));
    return this.memory.read(phys, len);
  }

  /**
   * What the machine still holds: IOVA ranges allocated in each DMA domain (not the reserved
   * MSI/host-bridge ranges, nor ranges cached in the rcaches or waiting in the flush queue),
   * IOMMU page-table mappings, dma-debug entries (with dma-debug on), swiotlb slots in use,
   * p2pmem allocations, and RAM pages from `allocPages` with a reference left.
   */
  leaks(): Leak[] {
    const out: Leak[] = [];
    const owner = "system";
    const devsOf = (group: string): string => {
      const names = [...this.#devices.values()]
        .filter((d) => d.translation.kind !== "none" && d.translation.group === group)
        .map((d) => d.name);
      return names.length > 0 ? ` [${names.join(", ")}]` : "";
    };
    const where = (phys: bigint): string => {
      const r = this.memory.regionAt(phys);
      return r ? r.name : "unbacked";
    };
    for (const [group, { translation: t }] of this.#groups) {
      if (t.kind !== "dma") continue;
      const d = t.iova.domain;
      const shift = d.iovad.shift;
      for (const r of d.liveRanges()) {
        const pages = r.pfnHi - r.pfnLo + 1n;
        out.push({
          kind: "iova",
          owner,
          detail: `IOMMU group ${group} (${d.type})${devsOf(group)}: IOVA ${hex(r.pfnLo << shift)}-${hex(((r.pfnHi + 1n) << shift) - 1n)} (${pages} page${pages === 1n ? "" : "s"}) allocated and never freed`,
        });
      }
      for (const m of t.table.mappings()) {
        const prot = `${m.prot.read ? "R" : "-"}${m.prot.write ? "W" : "-"}${m.prot.mmio ? " MMIO" : ""}`;
        out.push({
          kind: "iommu-mapping",
          owner,
          detail: `IOMMU group ${group} (${d.type})${devsOf(group)}: IOVA ${hex(m.iova)}-${hex(m.iova + m.size - 1n)} -> phys ${hex(m.phys)} (${where(m.phys)}) ${prot} still mapped`,
        });
      }
    }
    for (const e of this.debug?.allLive() ?? [])
      out.push({
        kind: "dma-debug-entry",
        owner,
        detail: `DMA-API: ${e.device}: ${e.kind} mapping not unmapped [device address=${hex(e.dma)}] [size=${e.size} bytes] [${e.dir}]${e.phys !== undefined ? ` [phys=${hex(e.phys)}]` : ""}`,
      });
    for (const b of this.swiotlb.bounces())
      out.push({
        kind: "swiotlb-slot",
        owner,
        detail: `swiotlb: ${b.slots} slot(s) at ${hex(b.tlb)} bouncing phys ${hex(b.orig)} (${b.size} bytes) not unmapped`,
      });
    for (const a of this.p2pmem.allocations())
      out.push({
        kind: "p2pmem",
        owner,
        detail: `${a.owner.desc.driver ?? "pci"} ${a.owner.name}: pci_alloc_p2pmem() of ${a.pages} page(s) at ${hex(a.va)} (bus ${hex(a.bus)}) not freed with pci_free_p2pmem()`,
      });
    for (const run of this.#runs) {
      const refs = run.refs;
      if (!refs) continue;
      for (let i = 0; i < run.n; ) {
        const c = refs[i]!;
        let j = i + 1;
        while (j < run.n && refs[j] === c) j++;
        if (c > 0) {
          const lo = run.start + BigInt(i);
          const hi = run.start + BigInt(j - 1);
          const n = j - i;
          out.push({
            kind: "page-ref",
            owner,
            detail: `pfn ${hex(lo)}${n > 1 ? `-${hex(hi)}` : ""} (${n} page${n === 1 ? "" : "s"} at phys ${hex(lo << BigInt(PAGE_SHIFT))}, ${where(lo << BigInt(PAGE_SHIFT))}): refcount ${c}, never freed`,
          });
        }
        i = j;
      }
    }
    return out;
  }

  /**
   * What a DMA address handed to `dev` is on the wire: a bus address when marked so (P2PDMA
   * BUS_ADDR) or when, untranslated, it lands in a peer's BAR; an IOVA behind a translating
   * domain; else a CPU physical address of RAM.
   */
  dmaAddrKind(dev: DmaDevice, dma: bigint, busMarked: boolean): DmaAddrKind {
    const t = dev.translation.kind;
    const rawBar = t !== "dma" && this.memory.regionAt(dma)?.kind === "bar";
    return dmaAddrKind(t, busMarked || rawBar);
  }

  /** Physical address of a page. */
  static phys(p: Page): PhysAddr {
    return physAddr(p.pfn << BigInt(PAGE_SHIFT));
  }
}
