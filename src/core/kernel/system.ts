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
import {
  createIovaAllocator,
  dmaClient,
  type IovaAllocator,
  X86_MSI_REGION,
} from "./iommu/iova.ts";
import { P2pmemRegistry } from "./mm/p2pmem.ts";
import { PAGE_SHIFT, PAGE_SIZE_N, type Page } from "./mm/page.ts";
import { cpuSupportsP2pdma, hostBridgeAllowed, P2pdma, type PciView } from "./pci/p2pdma.ts";
import { type BootedPci, bootPci, type PciViewOptions } from "./pci/pci-view.ts";
import { NO_TRACE, type Tracer } from "./trace.ts";

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

export class System {
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
    return pages;
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

  /** Physical address of a page. */
  static phys(p: Page): PhysAddr {
    return physAddr(p.pfn << BigInt(PAGE_SHIFT));
  }
}
