/**
 * @module p2pmem
 * Model of the provider half of drivers/pci/p2pdma.c: registering BAR memory as ZONE_DEVICE P2P
 * pages (`pci_p2pdma_add_resource`), the per-device gen_pool, `pci_alloc_p2pmem` /
 * `pci_free_p2pmem`, publishing, and the `p2pmem/` sysfs attributes.
 */

import type { BusAddr, PhysAddr } from "../../hw/address.ts";
import type { PciFunction } from "../../hw/machine.ts";
import type { DevPagemap, P2pProvider, Page } from "./page.ts";
import { PAGE_SHIFT, PAGE_SIZE_N } from "./page.ts";

/** x86-64 direct map base: the kernel virtual address of physical 0 (page_offset_base). */
export const PAGE_OFFSET = 0xffff_8880_0000_0000n;
export type KernelVa = bigint & { readonly __kva: true };
export const physToVirt = (p: bigint): KernelVa => (p + PAGE_OFFSET) as KernelVa;
export const virtToPhys = (v: bigint): PhysAddr => (v - PAGE_OFFSET) as PhysAddr;

export type P2pResult<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly errno: "EINVAL" | "ENOMEM" | "EOPNOTSUPP" | "ENODEV" };

/** One `gen_pool_add_owner` chunk: page-granular bitmap, first fit. */
interface PoolChunk {
  readonly va: KernelVa;
  readonly bus: BusAddr;
  readonly pages: number;
  readonly used: Uint8Array;
  readonly pgmap: DevPagemap;
}

/** `struct pci_p2pdma` of one provider. */
export interface P2pdmaState {
  readonly owner: PciFunction;
  /** Chunks, most recently added first (list_add_rcu puts new ones at the head). */
  readonly chunks: PoolChunk[];
  published: boolean;
  readonly providers: Map<number, P2pProvider>;
  /** Live allocations (va → pages): the percpu reference count of the kernel. */
  readonly live: Map<bigint, number>;
}

export interface BusWindowOffset {
  /** `pci_bus_address(pdev, bar) - pci_resource_start(pdev, bar)` for this function. */
  busOffset(fn: PciFunction): bigint;
}

let nextPgmapId = 1;

export class P2pmemRegistry {
  readonly #states = new Map<PciFunction, P2pdmaState>();
  readonly #pgmaps: DevPagemap[] = [];
  readonly #offsets: BusWindowOffset;

  constructor(offsets: BusWindowOffset) {
    this.#offsets = offsets;
  }

  state(fn: PciFunction): P2pdmaState | undefined {
    return this.#states.get(fn);
  }

  /** Models pcim_p2pdma_init(): p2pdma state with a provider for every memory BAR, no pages. */
  init(fn: PciFunction): P2pdmaState {
    let st = this.#states.get(fn);
    if (st) return st;
    const providers = new Map<number, P2pProvider>();
    for (const b of fn.desc.bars ?? [])
      if (b.mem)
        providers.set(b.index, { owner: fn, bar: b.index, busOffset: this.#offsets.busOffset(fn) });
    st = { owner: fn, chunks: [], published: false, providers, live: new Map() };
    this.#states.set(fn, st);
    return st;
  }

  /** Models pci_p2pdma_add_resource(pdev, bar, size, offset). */
  addResource(
    fn: PciFunction,
    barIndex: number,
    size: bigint,
    offset: bigint,
  ): P2pResult<DevPagemap> {
    const bar = fn.desc.bars?.find((b) => b.index === barIndex);
    if (!bar?.mem) return { ok: false, errno: "EINVAL" };
    if (offset >= bar.size) return { ok: false, errno: "EINVAL" };
    const sz = size === 0n ? bar.size - offset : size;
    if (sz + offset > bar.size) return { ok: false, errno: "EINVAL" };
    // devm_memremap_pages works on whole pages
    if ((bar.start + offset) % PAGE_SIZE_N !== 0n || sz % PAGE_SIZE_N !== 0n)
      return { ok: false, errno: "EINVAL" };
    const st = this.init(fn);
    const provider = st.providers.get(barIndex)!;
    const start = (bar.start + offset) as PhysAddr;
    const pgmap: DevPagemap = {
      id: nextPgmapId++,
      type: "pci-p2pdma",
      provider,
      start,
      end: (start + sz - 1n) as PhysAddr,
    };
    this.#pgmaps.push(pgmap);
    const pages = Number(sz / PAGE_SIZE_N);
    st.chunks.unshift({
      va: physToVirt(start),
      bus: (start + provider.busOffset) as BusAddr,
      pages,
      used: new Uint8Array(pages),
      pgmap,
    });
    return { ok: true, value: pgmap };
  }

  /** Models pci_p2pmem_publish(). */
  publish(fn: PciFunction, on: boolean): void {
    const st = this.#states.get(fn);
    if (st) st.published = on;
  }

  /** Models pci_alloc_p2pmem(): first fit over the chunks, whole pages; null when it cannot. */
  alloc(fn: PciFunction, size: bigint): KernelVa | null {
    const st = this.#states.get(fn);
    if (!st || size <= 0n) return null;
    const n = Number((size + PAGE_SIZE_N - 1n) / PAGE_SIZE_N);
    for (const c of st.chunks) {
      let run = 0;
      for (let i = 0; i < c.pages; i++) {
        run = c.used[i] ? 0 : run + 1;
        if (run === n) {
          const first = i - n + 1;
          c.used.fill(1, first, i + 1);
          const va = (c.va + BigInt(first) * PAGE_SIZE_N) as KernelVa;
          st.live.set(va, n);
          return va;
        }
      }
    }
    return null;
  }

  /** Models pci_free_p2pmem(); freeing what was not allocated is a bug, reported loudly. */
  free(fn: PciFunction, va: KernelVa, size: bigint): void {
    const st = this.#states.get(fn);
    const n = st?.live.get(va);
    const want = Number((size + PAGE_SIZE_N - 1n) / PAGE_SIZE_N);
    if (!st || n === undefined)
      throw new Error(
        `pci_free_p2pmem(${fn.name}, 0x${va.toString(16)}): not an allocation of this device`,
      );
    if (n !== want)
      throw new Error(
        `pci_free_p2pmem(${fn.name}, 0x${va.toString(16)}): size ${size} does not match the allocation (${n} pages)`,
      );
    const c = st.chunks.find((x) => va >= x.va && va < x.va + BigInt(x.pages) * PAGE_SIZE_N)!;
    const first = Number((va - c.va) / PAGE_SIZE_N);
    c.used.fill(0, first, first + n);
    st.live.delete(va);
  }

  /** Models pci_p2pmem_virt_to_bus(): the pool's "phys" is the PCI bus address. */
  virtToBus(fn: PciFunction, va: KernelVa): BusAddr | 0n {
    const st = this.#states.get(fn);
    const c = st?.chunks.find((x) => va >= x.va && va < x.va + BigInt(x.pages) * PAGE_SIZE_N);
    return c ? ((c.bus + (va - c.va)) as BusAddr) : 0n;
  }

  /** `virt_to_page()` for P2P memory: the ZONE_DEVICE page with its pgmap. */
  pageOf(va: KernelVa): Page | null {
    const phys = virtToPhys(va);
    const pgmap = this.#pgmaps.find((p) => phys >= p.start && phys <= p.end);
    return pgmap ? { pfn: phys >> BigInt(PAGE_SHIFT), pgmap } : null;
  }

  pgmapOf(phys: bigint): DevPagemap | null {
    return this.#pgmaps.find((p) => phys >= p.start && phys <= p.end) ?? null;
  }

  /** The `p2pmem/` sysfs group: size, available, published. */
  sysfs(fn: PciFunction): { size: bigint; available: bigint; published: boolean } | null {
    const st = this.#states.get(fn);
    if (!st || st.chunks.length === 0) return null;
    let size = 0n;
    let avail = 0n;
    for (const c of st.chunks) {
      size += BigInt(c.pages) * PAGE_SIZE_N;
      avail += BigInt(c.used.reduce((a, u) => a + (u ? 0 : 1), 0)) * PAGE_SIZE_N;
    }
    return { size, available: avail, published: st.published };
  }

  /** Every live `pci_alloc_p2pmem` allocation: provider, kernel VA, pages, bus address. */
  allocations(): { owner: PciFunction; va: KernelVa; pages: number; bus: BusAddr | 0n }[] {
    const out: { owner: PciFunction; va: KernelVa; pages: number; bus: BusAddr | 0n }[] = [];
    for (const [fn, st] of this.#states)
      for (const [va, pages] of st.live)
        out.push({ owner: fn, va: va as KernelVa, pages, bus: this.virtToBus(fn, va as KernelVa) });
    return out;
  }

  /** `pci_has_p2pmem` as the profile defines it. */
  hasPublished(fn: PciFunction, needPool: boolean): boolean {
    const st = this.#states.get(fn);
    return !!st && st.published && (!needPool || st.chunks.length > 0);
  }
}
