/**
 * @module nvme
 * NVMe with peer-to-peer memory, the p2pmem consumer of the P2PDMA core:
 *
 * - `NvmeController`: the PCI NVMe driver's view of one controller (drivers/nvme/host/pci.c).
 *   At probe its Controller Memory Buffer (CMBSZ/CMBLOC registers) is registered as P2P memory
 *   with `pci_p2pdma_add_resource` and published with `pci_p2pmem_publish` when it supports both
 *   read and write data (`nvme_map_cmb`). Namespace 1 is a byte store; READ and WRITE commands
 *   take a block request's data (pages: RAM or ZONE_DEVICE P2P), map it for the controller with
 *   `dma_map_sgtable` (`nvme_map_data`: an unsupported P2P path fails the request with
 *   BLK_STS_TARGET, -EREMOTEIO), DMA through the fabric, and unmap (`nvme_unmap_data`).
 * - `P2pmemUser`: a driver using p2pmem (drivers/pci/p2pdma.c client side):
 *   `pci_p2pmem_find_many` over the one P2PDMA model (`System.p2pdma`, oracle-checked),
 *   `pci_p2pmem_alloc_sgl` / `pci_p2pmem_free_sgl` over `System.p2pmem`, and a buffer mapped for
 *   each client with `dma_map_sgtable` (the P2PDMA map type decides: bus address, host-bridge
 *   mapping, or -EREMOTEIO).
 * - `NvmetP2pNs`: the p2pmem half of an NVMe-oF target namespace (drivers/nvme/target/core.c):
 *   the enable-time check (`nvmet_p2pmem_ns_enable`), the provider chosen for a fabric
 *   controller whose port device is the RDMA NIC (`nvmet_p2pmem_ns_add_p2p`: the configured
 *   device, else `pci_p2pmem_find_many([NIC, namespace device])`), and request data allocated
 *   from it, or from RAM when there is none (`nvmet_req_alloc_sgls`).
 *
 * Model choices and gaps: the controller recognises bus addresses inside its own CMB and serves
 * them internally (as the NVMe specification has controllers do) instead of sending them out;
 * commands complete synchronously (no queues, no PRP lists: the mapped table's segments are used
 * directly); one namespace; metadata, the CMB for SQs (`use_cmb_sqes`), NVMe 1.4's CMBMSC beyond
 * recording what is written, and the sysfs `cmb` attribute are not modelled.
 */

import { type BusAddr, hex, physAddr } from "../../hw/address.ts";
import type { DmaFault } from "../../hw/fabric.ts";
import type { PciFunction } from "../../hw/machine.ts";
import { type DmaDevice, dmaSetMaskAndCoherent } from "../dma/device.ts";
import type { DmaDirection } from "../dma/mapping.ts";
import { KernelBug, type KResult, kerr, kok } from "../errno.ts";
import type { Leak, LeakSource } from "../leaks.ts";
import { type SgTable, sg_alloc_table_from_pages, sg_free_table } from "../lib/scatterlist.ts";
import type { KernelVa } from "../mm/p2pmem.ts";
import { PAGE_SIZE_N, type Page, pageToPhys } from "../mm/page.ts";
import { System } from "../system.ts";
import { type DmaSeg, dmaSegments, dmaSegsText } from "./dma-segs.ts";

export type { DmaSeg } from "./dma-segs.ts";

// ── registers (include/linux/nvme.h) ─────────────────────────────────────────────────────────

export const NVME_CMBSZ_SQS = 1 << 0;
export const NVME_CMBSZ_CQS = 1 << 1;
export const NVME_CMBSZ_LISTS = 1 << 2;
export const NVME_CMBSZ_RDS = 1 << 3;
export const NVME_CMBSZ_WDS = 1 << 4;
export const NVME_CMBSZ_SZ_SHIFT = 12;
export const NVME_CMBSZ_SZ_MASK = 0xfffff;
export const NVME_CMBSZ_SZU_SHIFT = 8;
export const NVME_CMBSZ_SZU_MASK = 0xf;
export const NVME_CMBMSC_CRE = 1n << 0n;
export const NVME_CMBMSC_CMSE = 1n << 1n;
/** `memremap_compat_align()` on x86-64: SUBSECTION_SIZE, 2 MiB. */
export const MEMREMAP_COMPAT_ALIGN = 2n << 20n;

/** A CMBSZ value: `size` units of 4 KiB × 16^`szu`, with the supported-use bits. */
export function nvmeCmbsz(o: {
  readonly size: number;
  readonly szu: number;
  readonly sqs?: boolean;
  readonly cqs?: boolean;
  readonly lists?: boolean;
  readonly rds?: boolean;
  readonly wds?: boolean;
}): number {
  return (
    (((o.size & NVME_CMBSZ_SZ_MASK) << NVME_CMBSZ_SZ_SHIFT) |
      ((o.szu & NVME_CMBSZ_SZU_MASK) << NVME_CMBSZ_SZU_SHIFT) |
      (o.sqs ? NVME_CMBSZ_SQS : 0) |
      (o.cqs ? NVME_CMBSZ_CQS : 0) |
      (o.lists ? NVME_CMBSZ_LISTS : 0) |
      (o.rds ? NVME_CMBSZ_RDS : 0) |
      (o.wds ? NVME_CMBSZ_WDS : 0)) >>>
    0
  );
}

/** A CMBLOC value: BAR indicator `bir`, offset `ofst` in CMBSZ size units. */
export function nvmeCmbloc(bir: number, ofst: number): number {
  return (((ofst & 0xfffff) << 12) | (bir & 0x7)) >>> 0;
}

const minBig = (a: bigint, b: bigint): bigint => (a < b ? a : b);

// ── request data and its DMA mapping ─────────────────────────────────────────────────────────

/** A block request's data: its pages (RAM, or ZONE_DEVICE P2P pages), the offset into the first, the length. */
export interface NvmeData {
  readonly pages: readonly Page[];
  readonly offset: number;
  readonly length: bigint;
}

/**
 * A table of `data`'s pages mapped for `dev`: sg_alloc_table_from_pages, then dma_map_sgtable,
 * whose P2PDMA classification gives bus addresses, host-bridge mappings or -EREMOTEIO.
 * models blk_rq_map_sg + dma_map_sgtable (what nvme_map_data and rdma_rw_ctx_init do)
 */
export function dmaMapData(
  sys: System,
  dev: DmaDevice,
  data: NvmeData,
  dir: DmaDirection,
  name: string,
): KResult<SgTable> {
  const t = sg_alloc_table_from_pages(data.pages, data.offset, data.length, { name });
  if (!t.ok) return t;
  const m = sys.dma.mapSgtable(dev, t.value, dir);
  if (!m.ok) {
    sg_free_table(t.value);
    return kerr(
      m.errno,
      `dma_map_sgtable for ${dev.name}: ${m.errno}${m.reason ? ` (${m.reason})` : ""}`,
    );
  }
  return t;
}

/** models dma_unmap_sgtable + freeing the table. */
export function dmaUnmapData(sys: System, dev: DmaDevice, sgt: SgTable, dir: DmaDirection): void {
  sys.dma.unmapSgtable(dev, sgt, dir);
  sg_free_table(sgt);
}

// ── p2pmem users ─────────────────────────────────────────────────────────────────────────────

let nextBufferId = 1;

/** One `pci_p2pmem_alloc_sgl` allocation: kernel VA, bus address, its ZONE_DEVICE pages. */
export class P2pmemBuffer {
  readonly id = nextBufferId++;
  readonly provider: PciFunction;
  readonly va: KernelVa;
  readonly length: bigint;
  /** `pci_p2pmem_virt_to_bus()` of the first byte. */
  readonly bus: BusAddr;
  /** CPU physical (BAR) address of the first byte. */
  readonly phys: bigint;
  readonly pages: readonly Page[];
  /** Client mappings not unmapped yet. */
  readonly mappings = new Map<SgTable, { dev: DmaDevice; dir: DmaDirection }>();
  freed = false;

  constructor(
    provider: PciFunction,
    va: KernelVa,
    length: bigint,
    bus: BusAddr,
    pages: readonly Page[],
  ) {
    this.provider = provider;
    this.va = va;
    this.length = length;
    this.bus = bus;
    this.pages = pages;
    this.phys = pageToPhys(pages[0]!);
  }

  /** The buffer (or part of it) as block-request data. */
  data(offset = 0n, length: bigint = this.length - offset): NvmeData {
    if (offset < 0n || offset + length > this.length)
      throw new RangeError(`p2pmem buffer #${this.id}: [${offset}, +${length}) outside it`);
    const first = Number(offset / PAGE_SIZE_N);
    const last = Number((offset + length + PAGE_SIZE_N - 1n) / PAGE_SIZE_N);
    return {
      pages: this.pages.slice(first, Math.max(last, first + 1)),
      offset: Number(offset % PAGE_SIZE_N),
      length,
    };
  }

  describe(): string {
    return `p2pmem buffer #${this.id} (${this.length} bytes of ${this.provider.name}, bus ${hex(this.bus)})`;
  }
}

/** Who chose what in `pci_p2pmem_find_many`. */
export interface FindManyResult {
  /** The pick (uniformly random among the candidates), or null: no published provider reaches every client. */
  readonly provider: PciFunction | null;
  /** Every published provider at the smallest summed distance. */
  readonly candidates: readonly PciFunction[];
  /** That distance, -1 when there is no candidate. */
  readonly distance: number;
}

/**
 * A driver's use of P2P memory (what nvmet and the NVMe driver call in drivers/pci/p2pdma.c):
 * choosing a provider, allocating from it, mapping the memory for each client. It tracks what it
 * allocated and mapped for the leak check.
 */
export class P2pmemUser implements LeakSource {
  readonly sys: System;
  readonly name: string;
  readonly buffers = new Set<P2pmemBuffer>();

  constructor(sys: System, name: string) {
    this.sys = sys;
    this.name = name;
  }

  /**
   * Every published provider (`pci_has_p2pmem`) scored by `pci_p2pdma_distance_many(provider,
   * clients, false)`; negative scores skipped; the lowest kept (up to 512 tied); one picked at
   * random. A null client stands for a device with no PCI ancestor (every provider scores -1).
   * models pci_p2pmem_find_many() (pci_p2pmem_find() is the one-client form)
   */
  findMany(
    clients: readonly (PciFunction | null)[],
    random: () => number = Math.random,
  ): FindManyResult {
    const { best, candidates } = this.sys.p2pdma.findManyCandidates(clients);
    const provider =
      candidates.length === 0
        ? null
        : (candidates[Math.floor(random() * candidates.length)] ?? null);
    this.sys.trace.emit(
      "p2pmem:find_many",
      `${this.name}: pci_p2pmem_find_many(${clients.map((c) => c?.name ?? "non-PCI").join(", ")}) -> ${provider ? `${provider.name} (distance ${best}${candidates.length > 1 ? `, ${candidates.length} tied` : ""})` : "none"}`,
      {
        clients: clients.map((c) => c?.name ?? null),
        provider: provider?.name ?? null,
        candidates: candidates.map((c) => c.name),
        distance: best,
      },
    );
    return { provider, candidates, distance: best };
  }

  /**
   * `length` bytes from `provider`'s pool as one scatterlist entry: no p2pdma state, an empty
   * pool or no room → -ENOMEM (the kernel returns NULL). models pci_p2pmem_alloc_sgl() → pci_alloc_p2pmem()
   */
  alloc(provider: PciFunction, length: bigint): KResult<P2pmemBuffer> {
    if (length <= 0n) return kerr("EINVAL", `pci_p2pmem_alloc_sgl: length ${length}`);
    const reg = this.sys.p2pmem;
    const va = reg.alloc(provider, length);
    if (va === null) {
      this.sys.trace.emit(
        "p2pmem:alloc",
        `${this.name}: pci_alloc_p2pmem(${provider.name}, ${length}) failed`,
        { provider: provider.name, length, ok: false },
      );
      return kerr("ENOMEM", `pci_alloc_p2pmem(${provider.name}, ${length}): no p2pmem available`);
    }
    const pages: Page[] = [];
    for (let off = 0n; off < length; off += PAGE_SIZE_N) {
      const p = reg.pageOf((va + off) as KernelVa);
      if (!p) throw new KernelBug(`virt_to_page(${hex(va + off)}): not a p2pmem page`);
      pages.push(p);
    }
    const bus = reg.virtToBus(provider, va);
    const buf = new P2pmemBuffer(provider, va, length, bus as BusAddr, pages);
    this.buffers.add(buf);
    this.sys.trace.emit(
      "p2pmem:alloc",
      `${this.name}: ${buf.describe()} allocated at ${hex(buf.phys)}`,
      { provider: provider.name, length, ok: true, bus: buf.bus, phys: buf.phys },
    );
    return kok(buf);
  }

  /**
   * Gives the allocation back; mappings still outstanding are a bug of the caller (KernelBug).
   * models pci_p2pmem_free_sgl() → pci_free_p2pmem()
   */
  free(buf: P2pmemBuffer): void {
    if (buf.freed || !this.buffers.has(buf))
      throw new KernelBug(`pci_p2pmem_free_sgl: ${buf.describe()} is not live`);
    if (buf.mappings.size > 0)
      throw new KernelBug(
        `pci_p2pmem_free_sgl: ${buf.describe()} freed while mapped for ${[...buf.mappings.values()].map((m) => m.dev.name).join(", ")}`,
      );
    this.sys.p2pmem.free(buf.provider, buf.va, buf.length);
    buf.freed = true;
    this.buffers.delete(buf);
    this.sys.trace.emit("p2pmem:free", `${this.name}: ${buf.describe()} freed`, {
      provider: buf.provider.name,
    });
  }

  /**
   * The buffer mapped for client `dev`: its P2P pages through dma_map_sgtable, where the P2PDMA
   * map type of (provider, client) decides — BUS_ADDR: the bus address, marked, no IOMMU;
   * THRU_HOST_BRIDGE: mapped like RAM (physical, or an IOVA); NOT_SUPPORTED: -EREMOTEIO.
   * models dma_map_sgtable() → pci_p2pdma_map_segment() / the 6.1 pci_p2pdma_map_sg path
   */
  map(buf: P2pmemBuffer, dev: DmaDevice, dir: DmaDirection = "bidirectional"): KResult<SgTable> {
    if (buf.freed) throw new KernelBug(`map of freed ${buf.describe()}`);
    const r = dmaMapData(this.sys, dev, buf.data(), dir, `${buf.describe()} for ${dev.name}`);
    const mapType = this.sys.p2pdma.mapType(buf.provider, dev.fn);
    if (!r.ok) {
      this.sys.trace.emit(
        "p2pmem:map",
        `${this.name}: ${buf.describe()} for ${dev.name} (${mapType}) failed: -${r.errno}`,
        { provider: buf.provider.name, device: dev.fn.name, mapType, errno: r.errno },
      );
      return r;
    }
    buf.mappings.set(r.value, { dev, dir });
    const segs = dmaSegments(this.sys, dev, r.value);
    this.sys.trace.emit(
      "p2pmem:map",
      `${this.name}: ${buf.describe()} for ${dev.name} (${mapType}): ${dmaSegsText(segs)}`,
      { provider: buf.provider.name, device: dev.fn.name, mapType, segments: segs },
    );
    return r;
  }

  /** The DMA segments of a mapping made by `map`, with their kinds. */
  segments(buf: P2pmemBuffer, sgt: SgTable): DmaSeg[] {
    const m = buf.mappings.get(sgt);
    if (!m) throw new KernelBug(`${sgt.name} is not a live mapping of ${buf.describe()}`);
    return dmaSegments(this.sys, m.dev, sgt);
  }

  /** models dma_unmap_sgtable() of a mapping made by `map`. */
  unmap(buf: P2pmemBuffer, sgt: SgTable): void {
    const m = buf.mappings.get(sgt);
    if (!m) throw new KernelBug(`unmap of ${sgt.name}: not a live mapping of ${buf.describe()}`);
    buf.mappings.delete(sgt);
    dmaUnmapData(this.sys, m.dev, sgt, m.dir);
  }

  /** Buffers not freed, mappings not unmapped. */
  leaks(): Leak[] {
    const out: Leak[] = [];
    for (const b of this.buffers) {
      out.push({
        kind: "p2pmem-buffer",
        owner: this.name,
        detail: `${b.describe()} not freed with pci_p2pmem_free_sgl()`,
      });
      for (const [t, m] of b.mappings)
        out.push({
          kind: "sg-mapping",
          owner: this.name,
          detail: `${t.name}: mapped for ${m.dev.name} and never unmapped`,
        });
    }
    return out;
  }
}

// ── the NVMe controller ──────────────────────────────────────────────────────────────────────

export interface NvmeOptions {
  readonly name?: string | undefined;
  /** The CMBSZ register (see `nvmeCmbsz`); 0 or absent: no CMB. */
  readonly cmbsz?: number | undefined;
  /** The CMBLOC register (see `nvmeCmbloc`); default BAR 2, offset 0. */
  readonly cmbloc?: number | undefined;
  /** CAP.CMBS: the NVMe 1.4 CMB memory-space control (the driver writes CMBMSC). */
  readonly capCmbs?: boolean | undefined;
  /** Namespace 1 size in logical blocks (default 2^21) and the block size (default 512). */
  readonly nsBlocks?: bigint | undefined;
  readonly lbaSize?: number | undefined;
}

/** What one READ or WRITE did. */
export interface NvmeIoResult {
  readonly bytes: bigint;
  /** The segments the controller was handed (nvme_map_data), with their kinds. */
  readonly segments: readonly DmaSeg[];
  /** Bytes served inside the controller's own CMB (never on the link). */
  readonly cmbBytes: bigint;
}

/** One NVMe controller (`struct nvme_dev`) with namespace 1. */
export class NvmeController implements LeakSource {
  readonly sys: System;
  readonly fn: PciFunction;
  readonly name: string;
  /** The controller's DMA view: 64-bit mask (dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64))). */
  readonly dev: DmaDevice;
  readonly cmbsz: number;
  readonly cmbloc: number;
  readonly capCmbs: boolean;
  /** `dev->cmb_size`: the registered CMB bytes, 0 without one. */
  cmb_size = 0n;
  /** The CMB's BAR and offset in it (meaningful when cmb_size > 0). */
  cmbBar = 0;
  cmbOffset = 0n;
  /** PCI bus address of the CMB's first byte. */
  cmbBus = 0n;
  /** CPU physical address of the CMB's first byte. */
  cmbPhys = 0n;
  /** Published with pci_p2pmem_publish (RDS and WDS both supported). */
  cmbPublished = false;
  /** The last value written to CMBMSC (CAP.CMBS controllers). */
  cmbmsc = 0n;
  readonly lbaSize: number;
  readonly nsBlocks: bigint;
  /** dev_warn / dev_info lines. */
  readonly log: string[] = [];
  readonly #blocks = new Map<bigint, Uint8Array>();
  #inflight = 0;

  /**
   * Probe: the 64-bit DMA mask, then the CMB. models nvme_pci_enable() (6.1: its
   * dma_set_mask_and_coherent and, at its end, nvme_map_cmb)
   */
  constructor(sys: System, bdf: string, opts: NvmeOptions = {}) {
    const fn = sys.machine.byBdf(bdf);
    if (!fn) throw new Error(`nvme: no function ${bdf}`);
    this.sys = sys;
    this.fn = fn;
    this.name = opts.name ?? `nvme ${fn.name}`;
    this.dev = sys.device(fn);
    dmaSetMaskAndCoherent(this.dev, 64);
    this.cmbsz = opts.cmbsz ?? 0;
    this.cmbloc = opts.cmbloc ?? nvmeCmbloc(2, 0);
    this.capCmbs = opts.capCmbs ?? false;
    this.lbaSize = opts.lbaSize ?? 512;
    this.nsBlocks = opts.nsBlocks ?? 1n << 21n;
    this.#mapCmb();
  }

  #emit(ev: string, msg: string, data?: Readonly<Record<string, unknown>>): void {
    this.sys.trace.emit(ev, msg, data);
  }

  /**
   * CMBSZ 0 → no CMB. Size = SZ × unit, offset = OFST × unit (unit 4 KiB × 16^SZU), in BAR BIR;
   * offset past the BAR → none; size clipped to the BAR; size or BAR start not a multiple of
   * memremap_compat_align() (2 MiB) → none; CAP.CMBS → CMBMSC = CRE | CMSE | bus address; then
   * pci_p2pdma_add_resource (failure: "failed to register the CMB", CMBMSC cleared) and
   * pci_p2pmem_publish when both RDS and WDS are set. models nvme_map_cmb()
   */
  #mapCmb(): void {
    if (this.capCmbs) this.cmbmsc = NVME_CMBMSC_CRE;
    if (!this.cmbsz) return;
    const szu = (this.cmbsz >>> NVME_CMBSZ_SZU_SHIFT) & NVME_CMBSZ_SZU_MASK;
    const unit = 1n << BigInt(12 + 4 * szu);
    let size = unit * BigInt((this.cmbsz >>> NVME_CMBSZ_SZ_SHIFT) & NVME_CMBSZ_SZ_MASK);
    const offset = unit * BigInt((this.cmbloc >>> 12) & 0xfffff);
    const bar = this.cmbloc & 0x7;
    const barDesc = this.fn.desc.bars?.find((b) => b.index === bar && b.mem && b.size > 0n);
    const barSize = barDesc?.size ?? 0n; // pci_resource_len()
    const skip = (why: string): void => {
      this.log.push(`CMB not used: ${why}`);
      this.#emit("nvme:cmb", `${this.name}: CMB not used: ${why}`, {
        device: this.fn.name,
        registered: false,
      });
    };
    if (offset > barSize) {
      skip(`offset ${hex(offset)} beyond BAR ${bar} (${hex(barSize)})`);
      return;
    }
    size = minBig(size, barSize - offset);
    const start = barDesc?.start ?? 0n;
    if (size % MEMREMAP_COMPAT_ALIGN !== 0n || start % MEMREMAP_COMPAT_ALIGN !== 0n) {
      skip(
        `size ${hex(size)} or BAR ${bar} start ${hex(start)} not aligned to memremap_compat_align() ${hex(MEMREMAP_COMPAT_ALIGN)}`,
      );
      return;
    }
    const r = this.sys.p2pmem.addResource(this.fn, bar, size, offset);
    const bus = start + offset + (r.ok ? r.value.provider.busOffset : 0n);
    if (this.capCmbs) this.cmbmsc = NVME_CMBMSC_CRE | NVME_CMBMSC_CMSE | bus;
    if (!r.ok) {
      this.log.push("failed to register the CMB");
      this.cmbmsc = 0n;
      this.#emit("nvme:cmb", `${this.name}: failed to register the CMB (-${r.errno})`, {
        device: this.fn.name,
        registered: false,
        errno: r.errno,
      });
      return;
    }
    this.cmb_size = size;
    this.cmbBar = bar;
    this.cmbOffset = offset;
    this.cmbBus = bus;
    this.cmbPhys = start + offset;
    const both = NVME_CMBSZ_WDS | NVME_CMBSZ_RDS;
    if ((this.cmbsz & both) === both) {
      this.sys.p2pmem.publish(this.fn, true);
      this.cmbPublished = true;
    }
    this.#emit(
      "nvme:cmb",
      `${this.name}: CMB of ${hex(size)} bytes at BAR ${bar}+${hex(offset)} (phys ${hex(this.cmbPhys)}, bus ${hex(bus)}) registered as p2pmem${this.cmbPublished ? ", published" : ", not published (needs RDS and WDS)"}`,
      {
        device: this.fn.name,
        registered: true,
        size,
        bar,
        offset,
        bus,
        published: this.cmbPublished,
      },
    );
  }

  // ── the medium ─────────────────────────────────────────────────────────────────────────────

  /** What the medium holds at `slba` for `nlb` blocks (zeros where never written). */
  mediaRead(slba: bigint, nlb: number): Uint8Array {
    const out = new Uint8Array(nlb * this.lbaSize);
    for (let i = 0; i < nlb; i++) {
      const b = this.#blocks.get(slba + BigInt(i));
      if (b) out.set(b, i * this.lbaSize);
    }
    return out;
  }

  /** Stores whole blocks from `slba` on the medium (a pre-filled namespace). */
  mediaWrite(slba: bigint, data: Uint8Array): void {
    if (data.length % this.lbaSize !== 0)
      throw new RangeError(
        `${this.name}: ${data.length} bytes is not whole ${this.lbaSize}-byte blocks`,
      );
    for (let i = 0; i * this.lbaSize < data.length; i++)
      this.#blocks.set(slba + BigInt(i), data.slice(i * this.lbaSize, (i + 1) * this.lbaSize));
  }

  // ── I/O ────────────────────────────────────────────────────────────────────────────────────

  /** NVMe READ of `nlb` blocks at `slba` into `data` (the controller DMA-writes). */
  read(slba: bigint, nlb: number, data: NvmeData): KResult<NvmeIoResult> {
    return this.#io("read", slba, nlb, data);
  }

  /** NVMe WRITE of `nlb` blocks at `slba` from `data` (the controller DMA-reads). */
  write(slba: bigint, nlb: number, data: NvmeData): KResult<NvmeIoResult> {
    return this.#io("write", slba, nlb, data);
  }

  /**
   * One request: beyond the namespace → -EIO (bio_check_eod); data length not nlb blocks →
   * -EINVAL (model); nvme_map_data maps the pages with dma_map_sgtable (-EREMOTEIO:
   * BLK_STS_TARGET, the P2P path is not supported; other errors as they come); the controller
   * moves the bytes (addresses in its own CMB served internally, the rest by DMA through the
   * fabric: a fault completes the command with Data Transfer Error, -EIO); nvme_unmap_data.
   * models nvme_queue_rq() → nvme_map_data() … nvme_pci_complete_rq() → nvme_unmap_data()
   */
  #io(op: "read" | "write", slba: bigint, nlb: number, data: NvmeData): KResult<NvmeIoResult> {
    const fail = (r: KResult<never>): KResult<NvmeIoResult> => {
      if (!r.ok)
        this.#emit(
          "nvme:io",
          `${this.name}: ${op.toUpperCase()} slba ${slba} nlb ${nlb} failed: -${r.errno}${r.reason ? ` (${r.reason})` : ""}`,
          { device: this.fn.name, op, slba, nlb, errno: r.errno },
        );
      return r;
    };
    if (nlb <= 0 || slba < 0n || slba + BigInt(nlb) > this.nsBlocks)
      return fail(
        kerr(
          "EIO",
          `attempt to access beyond end of device: slba ${slba} nlb ${nlb} of ${this.nsBlocks}`,
        ),
      );
    const bytes = BigInt(nlb * this.lbaSize);
    if (data.length !== bytes)
      return fail(kerr("EINVAL", `data of ${data.length} bytes for ${bytes} bytes of blocks`));
    const dir: DmaDirection = op === "read" ? "from-device" : "to-device";
    const m = dmaMapData(this.sys, this.dev, data, dir, `${this.name} ${op} slba ${slba}`);
    if (!m.ok) return fail(m);
    this.#inflight++;
    try {
      const segs = dmaSegments(this.sys, this.dev, m.value);
      const buf = op === "read" ? this.mediaRead(slba, nlb) : new Uint8Array(Number(bytes));
      let cmbBytes = 0n;
      let pos = 0;
      let fault: DmaFault | null = null;
      for (const s of segs) {
        const n = Number(s.len);
        const inCmb =
          this.cmb_size > 0n &&
          s.dma >= this.cmbBus &&
          s.dma + s.len <= this.cmbBus + this.cmb_size;
        if (inCmb) {
          // the controller's own memory: no transaction leaves it
          const phys = this.cmbPhys + (s.dma - this.cmbBus);
          if (op === "read") this.sys.memory.write(physAddr(phys), buf.subarray(pos, pos + n));
          else buf.set(this.sys.memory.read(physAddr(phys), n), pos);
          cmbBytes += s.len;
        } else if (op === "read") {
          const w = this.sys.deviceWrite(this.dev, s.dma, buf.subarray(pos, pos + n));
          if (!w.ok) fault = w.fault;
        } else {
          const r = this.sys.fabric.dmaRead(this.fn, s.dma, n);
          if (r.ok) buf.set(r.data!, pos);
          else fault = r.fault;
        }
        if (fault) break;
        pos += n;
      }
      if (fault)
        return fail(
          kerr(
            "EIO",
            `Data Transfer Error: DMA ${op === "read" ? "write" : "read"} at ${hex(fault.address)} faulted: ${fault.reason} (at ${fault.at})`,
          ),
        );
      if (op === "write") this.mediaWrite(slba, buf);
      this.#emit(
        "nvme:io",
        `${this.name}: ${op.toUpperCase()} slba ${slba} nlb ${nlb}: ${dmaSegsText(segs)}${cmbBytes > 0n ? ` (${cmbBytes} bytes inside its CMB)` : ""}`,
        { device: this.fn.name, op, slba, nlb, segments: segs, cmbBytes },
      );
      return kok({ bytes, segments: segs, cmbBytes });
    } finally {
      dmaUnmapData(this.sys, this.dev, m.value, dir);
      this.#inflight--;
    }
  }

  /** Requests still in flight (none between calls: commands complete synchronously). */
  leaks(): Leak[] {
    return this.#inflight > 0
      ? [
          {
            kind: "nvme-request",
            owner: this.name,
            detail: `${this.#inflight} request(s) in flight`,
          },
        ]
      : [];
  }
}

// ── NVMe-oF target: p2pmem for a namespace ───────────────────────────────────────────────────

/** Request data as nvmet allocates it: from the chosen p2pmem, or RAM when there is none. */
export type NvmetReqData =
  | { readonly kind: "p2pmem"; readonly buf: P2pmemBuffer; readonly data: NvmeData }
  | { readonly kind: "ram"; readonly pages: readonly Page[]; readonly data: NvmeData };

/**
 * A target namespace with `use_p2pmem` on an NvmeController (its device is the namespace's
 * device), served to fabric controllers through a port whose device is the RDMA NIC.
 */
export class NvmetP2pNs implements LeakSource {
  readonly sys: System;
  readonly nvme: NvmeController;
  /** `ns->p2p_dev`: configured with `p2pmem=<device>`, else null (chosen per controller). */
  readonly configured: PciFunction | null;
  readonly p2pmem: P2pmemUser;
  /** `ctrl->p2p_ns_map` entry of the controller set up last: the provider, or null (RAM). */
  p2pDev: PciFunction | null = null;
  /** pr_err / pr_info lines. */
  readonly log: string[] = [];
  readonly #ram = new Set<readonly Page[]>();

  private constructor(nvme: NvmeController, configured: PciFunction | null) {
    this.sys = nvme.sys;
    this.nvme = nvme;
    this.configured = configured;
    this.p2pmem = new P2pmemUser(nvme.sys, `nvmet ns on ${nvme.name}`);
  }

  /**
   * Enabling a namespace with use_p2pmem: with a configured device, `pci_p2pdma_distance(dev,
   * nsdev, verbose)` < 0 → -EINVAL; without one, `pci_p2pmem_find(nsdev)` must find published
   * p2pmem somewhere (else "no peer-to-peer memory is available", -EINVAL); the actual provider
   * is chosen per controller. models nvmet_p2pmem_ns_enable()
   */
  static enable(
    nvme: NvmeController,
    opts: { readonly p2pDev?: string | undefined } = {},
  ): KResult<NvmetP2pNs> {
    const sys = nvme.sys;
    let configured: PciFunction | null = null;
    if (opts.p2pDev !== undefined) {
      const fn = sys.machine.byBdf(opts.p2pDev);
      if (!fn) throw new Error(`nvmet: no function ${opts.p2pDev}`);
      if (sys.p2pdma.distanceMany(fn, [nvme.fn], true) < 0)
        return kerr("EINVAL", `${fn.name} cannot do P2P with ${nvme.name}`);
      configured = fn;
    } else if (sys.p2pdma.findManyCandidates([nvme.fn]).candidates.length === 0)
      return kerr("EINVAL", `no peer-to-peer memory is available for ${nvme.name}`);
    return kok(new NvmetP2pNs(nvme, configured));
  }

  /**
   * A fabric controller arrives on a port whose device is `client` (the NIC): with a configured
   * device, it is used if `pci_p2pdma_distance(dev, client, verbose) >= 0`; else
   * `pci_p2pmem_find_many([client, nsdev])` chooses. No provider → pr_err, no map entry (requests
   * use RAM). Returns the provider. models nvmet_setup_p2p_ns_map() → nvmet_p2pmem_ns_add_p2p()
   */
  addCtrl(client: PciFunction, random: () => number = Math.random): PciFunction | null {
    let dev: PciFunction | null;
    if (this.configured) {
      dev =
        this.sys.p2pdma.distanceMany(this.configured, [client], true) < 0 ? null : this.configured;
    } else {
      dev = this.p2pmem.findMany([client, this.nvme.fn], random).provider;
      if (!dev)
        this.log.push(
          `no peer-to-peer memory is available that's supported by ${client.name} and ${this.nvme.name}`,
        );
    }
    this.p2pDev = dev;
    if (dev) this.log.push(`using p2pmem on ${dev.name} for nsid 1`);
    return dev;
  }

  /**
   * Data for a request of `length` bytes: from the provider in the map (pci_p2pmem_alloc_sgl), or
   * RAM (sgl_alloc) when there is none or its pool is exhausted.
   * models nvmet_req_alloc_sgls() / nvmet_req_alloc_p2pmem_sgls()
   */
  allocSgls(length: bigint): KResult<NvmetReqData> {
    if (this.p2pDev) {
      const b = this.p2pmem.alloc(this.p2pDev, length);
      if (b.ok) return kok({ kind: "p2pmem", buf: b.value, data: b.value.data() });
    }
    const pages = this.sys.allocPages(length);
    this.#ram.add(pages);
    return kok({ kind: "ram", pages, data: { pages, offset: 0, length } });
  }

  /** models nvmet_req_free_sgls(). */
  freeSgls(d: NvmetReqData): void {
    if (d.kind === "p2pmem") this.p2pmem.free(d.buf);
    else {
      if (!this.#ram.delete(d.pages))
        throw new KernelBug("nvmet_req_free_sgls: not allocated here");
      this.sys.freePages(d.pages);
    }
  }

  leaks(): Leak[] {
    const out = this.p2pmem.leaks();
    for (const pages of this.#ram)
      out.push({
        kind: "nvmet-sgl",
        owner: this.p2pmem.name,
        detail: `${pages.length} RAM page(s) of request data at ${hex(System.phys(pages[0]!))} not freed`,
      });
    return out;
  }
}
