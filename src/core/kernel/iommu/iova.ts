/**
 * @module iova
 * The IOVA allocator of drivers/iommu/iova.c (rbtree of allocated ranges, per-CPU magazine
 * caches, depot) and the IOVA parts of drivers/iommu/dma-iommu.c (`iommu_dma_alloc_iova`,
 * `iommu_dma_free_iova`, the flush queue, `iova_reserve_pci_windows`,
 * `iova_reserve_iommu_regions`). Checked against the Linux 6.1.192 source and its QEMU oracle.
 *
 * PFNs and addresses are bigint. Where C relies on `unsigned long` wrapping, the arithmetic is
 * done modulo 2^64. Time is simulated: a domain reads a clock function (milliseconds) and runs
 * due timers and delayed work lazily, before each operation, in due-time order.
 */

import { PeerbufError } from "../../errors.ts";
import { type Iova, iova as toIova } from "../../hw/address.ts";
import { DEFAULT_PROFILE, type KernelProfile, PROFILES } from "../profile.ts";

const U64 = (1n << 64n) - 1n;
const u64 = (v: bigint): bigint => BigInt.asUintN(64, v);
const view = (n: IovaRange): IovaRange => ({ pfnLo: n.pfnLo, pfnHi: n.pfnHi });

/** IOVA_ANCHOR: the anchor node sits above the top of the usable address space. */
export const IOVA_ANCHOR = U64;
/** IOVA_RANGE_CACHE_MAX_SIZE: bins 0..5 cache ranges of 1..32 pages. */
export const IOVA_RANGE_CACHE_MAX_SIZE = 6;
const DMA_BIT_MASK_32 = 0xffff_ffffn;

/** fls_long(): 1-based index of the highest set bit, 0 for 0. */
export function fls(v: bigint): number {
  return v <= 0n ? 0 : v.toString(2).length;
}

/** order_base_2(): ceil(log2(n)), 0 for n <= 1. */
export function orderBase2(n: bigint): number {
  return n > 1n ? fls(n - 1n) : 0;
}

/** roundup_pow_of_two(). */
export function roundupPowOfTwo(n: bigint): bigint {
  return 1n << BigInt(fls(n - 1n));
}

/** A range of page frames, both ends inclusive (`struct iova`). */
export interface IovaRange {
  readonly pfnLo: bigint;
  readonly pfnHi: bigint;
}

/** `struct iova`. Mutable because `reserve_iova` widens an existing node downwards. */
class IovaNode implements IovaRange {
  pfnLo: bigint;
  pfnHi: bigint;
  /** Inserted by `reserve_iova` (MSI window, host-bridge windows): never handed out or freed. */
  reserved = false;
  constructor(pfnLo: bigint, pfnHi: bigint) {
    this.pfnLo = pfnLo;
    this.pfnHi = pfnHi;
  }
}

// ── simulated time ─────────────────────────────────────────────────────────────────────────────

interface TimerItem {
  due: number;
  seq: number;
  readonly key: object;
  readonly fn: () => void;
}

/**
 * Timers and delayed work on a simulated clock. `run()` fires everything due, earliest first; an
 * item that re-arms itself does so relative to its own due time, as `schedule_delayed_work` from
 * inside a work function does relative to the jiffies it ran at.
 */
export class SimTimers {
  private items: TimerItem[] = [];
  private seq = 0;
  private runningAt: number | null = null;
  readonly clock: () => number;

  constructor(clock: () => number) {
    this.clock = clock;
  }

  /** Current simulated time (the due time of the item being run, while one runs). */
  now(): number {
    return this.runningAt ?? this.clock();
  }

  pending(key: object): boolean {
    return this.items.some((t) => t.key === key);
  }

  /** `schedule_delayed_work`: does nothing if the work is already pending. */
  schedule(key: object, delayMs: number, fn: () => void): void {
    if (this.pending(key)) return;
    this.items.push({ due: this.now() + delayMs, seq: this.seq++, key, fn });
  }

  /** `mod_timer`: (re)arm at an absolute time. */
  modTimer(key: object, due: number, fn: () => void): void {
    this.cancel(key);
    this.items.push({ due, seq: this.seq++, key, fn });
  }

  /** `del_timer` / `cancel_delayed_work`. */
  cancel(key: object): void {
    this.items = this.items.filter((t) => t.key !== key);
  }

  /** Fire every item due at the current clock. Re-entrant calls (from a firing item) do nothing. */
  run(): void {
    if (this.items.length === 0 || this.runningAt !== null) return;
    const now = this.clock();
    for (;;) {
      let best: TimerItem | undefined;
      for (const t of this.items)
        if (t.due <= now && (!best || t.due < best.due || (t.due === best.due && t.seq < best.seq)))
          best = t;
      if (!best) return;
      const item = best;
      this.items = this.items.filter((t) => t !== item);
      this.runningAt = item.due;
      try {
        item.fn();
      } finally {
        this.runningAt = null;
      }
    }
  }
}

/** A clock for simulations: time moves only when told to. */
export function manualClock(start = 0): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return {
    now: () => t,
    advance: (ms: number) => {
      if (ms < 0) throw new PeerbufError("usage", "simulated time cannot go backwards");
      t += ms;
    },
  };
}

// ── the allocator (drivers/iommu/iova.c) ───────────────────────────────────────────────────────

/** `struct iova_cpu_rcache`: a magazine is an array of pfns used as a stack. */
interface CpuRcache {
  loaded: bigint[];
  prev: bigint[];
}

/** `struct iova_rcache`. */
interface Rcache {
  /** 6.1: `depot[0..depot_size)`, popped from the end; mainline: the list, head = last element. */
  depot: bigint[][];
  readonly cpu: CpuRcache[];
}

export interface IovaDomainOptions {
  /** Smallest IOMMU page size; a power of two, at most PAGE_SIZE (4 KiB). Default 4 KiB. */
  readonly granule?: bigint;
  /** First usable pfn (`start_pfn`); at least 1. Default 1. */
  readonly startPfn?: bigint;
  readonly profile?: KernelProfile;
  /** Online (= possible) CPUs: per-CPU magazines, flushes, the depot-trim threshold. Default 1. */
  readonly cpus?: number;
  /** Simulated milliseconds. Default: time never passes. */
  readonly clock?: () => number;
}

/** Read-only view of one bin of the rcache (for tests and the UI). */
export interface RcacheView {
  readonly cpu: readonly { readonly loaded: readonly bigint[]; readonly prev: readonly bigint[] }[];
  readonly depot: readonly (readonly bigint[])[];
}

/** `struct iova_domain` with its rcaches (`init_iova_domain` + `iova_domain_init_rcaches`). */
export class IovaDomain {
  readonly granule: bigint;
  readonly shift: bigint;
  readonly startPfn: bigint;
  readonly dma32bitPfn: bigint;
  /** Hint: a 32-bit-limited allocation of at least this many pfns fails without a search. */
  max32AllocSize: bigint;
  readonly profile: KernelProfile;
  readonly cpus: number;
  readonly timers: SimTimers;
  /** Kernel WARN_ONs that fired (e.g. a magazine pfn missing from the tree). */
  readonly warnings: string[] = [];
  private readonly anchor: IovaNode;
  /** The rbtree, as an array sorted by pfn_lo (ranges never overlap). */
  private readonly tree: IovaNode[];
  private cachedNode: IovaNode;
  private cached32Node: IovaNode;
  private readonly rcaches: Rcache[];

  constructor(opts: IovaDomainOptions = {}) {
    const granule = opts.granule ?? 4096n;
    // BUG_ON((granule > PAGE_SIZE) || !is_power_of_2(granule))
    if (granule <= 0n || granule > 4096n || (granule & (granule - 1n)) !== 0n)
      throw new PeerbufError("usage", `IOVA granule ${granule} is not a power of two <= 4096`);
    const cpus = opts.cpus ?? 1;
    if (!Number.isInteger(cpus) || cpus < 1)
      throw new PeerbufError("usage", `cpus must be a positive integer, got ${cpus}`);
    this.granule = granule;
    this.shift = BigInt(fls(granule) - 1);
    this.startPfn = opts.startPfn ?? 1n;
    if (this.startPfn < 1n) throw new PeerbufError("usage", "start_pfn must be at least 1");
    this.dma32bitPfn = 1n << (32n - this.shift);
    this.max32AllocSize = this.dma32bitPfn;
    this.profile = opts.profile ?? PROFILES[DEFAULT_PROFILE];
    this.cpus = cpus;
    this.timers = new SimTimers(opts.clock ?? (() => 0));
    this.anchor = new IovaNode(IOVA_ANCHOR, IOVA_ANCHOR);
    this.tree = [this.anchor];
    this.cachedNode = this.anchor;
    this.cached32Node = this.anchor;
    this.rcaches = Array.from({ length: IOVA_RANGE_CACHE_MAX_SIZE }, () => ({
      depot: [],
      cpu: Array.from({ length: cpus }, () => ({ loaded: [], prev: [] })),
    }));
  }

  // ── tree helpers ──

  /** Index of the first node with pfn_lo >= pfn (tree.length if none). */
  private lowerBound(pfn: bigint): number {
    let lo = 0;
    let hi = this.tree.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.tree[mid]!.pfnLo < pfn) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private indexOf(node: IovaNode): number {
    const i = this.lowerBound(node.pfnLo);
    if (this.tree[i] !== node) throw new PeerbufError("usage", "IOVA node is not in this domain");
    return i;
  }

  /** Every node in address order, the anchor last. */
  nodes(): IovaRange[] {
    return this.tree.map(view);
  }

  get cached(): IovaRange {
    return view(this.cachedNode);
  }

  get cached32(): IovaRange {
    return view(this.cached32Node);
  }

  /** `__get_cached_rbnode`. */
  private getCachedNode(limitPfn: bigint): IovaNode {
    return limitPfn <= this.dma32bitPfn ? this.cached32Node : this.cachedNode;
  }

  /** `__cached_rbnode_insert_update`. */
  private cachedInsertUpdate(n: IovaNode): void {
    if (n.pfnHi < this.dma32bitPfn) this.cached32Node = n;
    else this.cachedNode = n;
  }

  /** `__cached_rbnode_delete_update`; `idx` is the freed node's index. */
  private cachedDeleteUpdate(free: IovaNode, idx: number): void {
    const next = this.tree[idx + 1]!; // rb_next(): the anchor is never freed, so there is one
    const c32 = this.cached32Node;
    if (free === c32 || (free.pfnHi < this.dma32bitPfn && free.pfnLo >= c32.pfnLo))
      this.cached32Node = next;
    if (free.pfnLo < this.dma32bitPfn) this.max32AllocSize = this.dma32bitPfn;
    if (free.pfnLo >= this.cachedNode.pfnLo) this.cachedNode = next;
  }

  /**
   * `iova_find_limit`: the anchor above the 32-bit boundary, else the first node (in address
   * order) whose pfn_hi >= limit. The kernel's rbtree walk may instead return the node after a
   * range that straddles `limit`; the search below then steps into that range first and reaches
   * the same state, so the results are identical.
   */
  private findLimit(limitPfn: bigint): number {
    if (limitPfn > this.dma32bitPfn) return this.tree.length - 1;
    let lo = 0;
    let hi = this.tree.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.tree[mid]!.pfnHi < limitPfn) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** `__alloc_and_insert_iova_range`; `limitPfn` is exclusive here (alloc_iova passes limit + 1). */
  private allocAndInsertIovaRange(
    size: bigint,
    limitPfn: bigint,
    sizeAligned: boolean,
  ): IovaNode | null {
    const alignMask = sizeAligned ? u64(U64 << BigInt(fls(size - 1n))) : U64;
    let highPfn = limitPfn;
    let lowPfn = this.startPfn;
    if (limitPfn <= this.dma32bitPfn && size >= this.max32AllocSize) return null; // iova32_full
    let currIdx = this.indexOf(this.getCachedNode(limitPfn));
    let curr: IovaNode | undefined = this.tree[currIdx]!;
    const retryPfn = curr.pfnHi;
    let newPfn: bigint;
    let prevIdx: number;
    for (;;) {
      // Walk the tree backwards from curr.
      do {
        if (curr.pfnLo < highPfn) highPfn = curr.pfnLo;
        newPfn = u64(highPfn - size) & alignMask;
        prevIdx = currIdx;
        currIdx--;
        curr = this.tree[currIdx];
      } while (curr && newPfn <= curr.pfnHi && newPfn >= lowPfn);
      if (highPfn < size || newPfn < lowPfn) {
        if (lowPfn === this.startPfn && retryPfn < limitPfn) {
          // One retry: the space above the node the search started from.
          highPfn = limitPfn;
          lowPfn = retryPfn + 1n;
          currIdx = this.findLimit(limitPfn);
          curr = this.tree[currIdx]!;
          continue;
        }
        this.max32AllocSize = size; // set on any failure in this version, 64-bit limits too
        return null;
      }
      break;
    }
    const node = new IovaNode(newPfn, newPfn + size - 1n);
    this.tree.splice(prevIdx, 0, node); // between curr and prev, which is where it sorts
    this.cachedInsertUpdate(node);
    return node;
  }

  /**
   * `alloc_iova`: `size` pfns at or below `limitPfn` (inclusive), searching top-down from the
   * cached node; with `sizeAligned`, aligned to roundup_pow_of_two(size).
   */
  allocIova(size: bigint, limitPfn: bigint, sizeAligned: boolean): IovaRange | null {
    this.timers.run();
    if (size < 1n) throw new PeerbufError("usage", `IOVA size must be at least 1 pfn, got ${size}`);
    const n = this.allocAndInsertIovaRange(size, limitPfn + 1n, sizeAligned);
    return n ? view(n) : null;
  }

  /** `private_find_iova` / `find_iova`: the node containing `pfn`. */
  findIova(pfn: bigint): IovaRange | null {
    const n = this.findNode(pfn);
    return n ? view(n) : null;
  }

  private findNode(pfn: bigint): IovaNode | undefined {
    const i = this.lowerBound(pfn + 1n) - 1;
    const n = this.tree[i];
    return n && n.pfnHi >= pfn ? n : undefined;
  }

  /** `remove_iova` (= `__free_iova` here): unlink the node with exactly these bounds. */
  removeIova(range: IovaRange): void {
    this.timers.run();
    const n = this.findNode(range.pfnLo);
    if (!n || n === this.anchor || n.pfnLo !== range.pfnLo || n.pfnHi !== range.pfnHi)
      throw new PeerbufError("usage", "no such IOVA node in this domain");
    this.removeNode(n, this.indexOf(n));
  }

  private removeNode(node: IovaNode, idx: number): void {
    this.cachedDeleteUpdate(node, idx);
    this.tree.splice(idx, 1);
  }

  /** `free_iova`: find the node holding `pfn` and remove it; nothing if there is none. */
  freeIova(pfn: bigint): void {
    this.timers.run();
    this.freeIovaNow(pfn);
  }

  private freeIovaNow(pfn: bigint): void {
    const n = this.findNode(pfn);
    if (!n || n === this.anchor) return;
    this.removeNode(n, this.indexOf(n));
  }

  /**
   * `reserve_iova`: mark [lo, hi] unusable. Walks the tree in order; an overlapping node is
   * widened down to `lo`, and whatever sticks out above it becomes the remainder; the remainder
   * is inserted as a new node. Cached nodes do not move.
   */
  reserveIova(pfnLo: bigint, pfnHi: bigint): IovaRange | null {
    this.timers.run();
    // Don't allow nonsensical pfns
    if ((pfnHi | pfnLo) > U64 >> this.shift) {
      this.warnings.push(`reserve_iova: pfns ${pfnLo}-${pfnHi} out of range`);
      return null;
    }
    let lo = pfnLo;
    const hi = pfnHi;
    let overlap = false;
    for (const node of this.tree) {
      if (lo <= node.pfnHi && hi >= node.pfnLo) {
        // __adjust_overlap_range
        if (lo < node.pfnLo) node.pfnLo = lo;
        if (hi > node.pfnHi) lo = node.pfnHi + 1n;
        if (lo >= node.pfnLo && hi <= node.pfnHi) return view(node);
        overlap = true;
      } else if (overlap) break;
    }
    // __insert_new_range
    const node = new IovaNode(lo, hi);
    node.reserved = true;
    this.tree.splice(this.lowerBound(lo), 0, node);
    return view(node);
  }

  // ── rcache ──

  private cpuRcache(rcache: Rcache, cpu: number): CpuRcache {
    const c = rcache.cpu[cpu];
    if (!c) throw new PeerbufError("usage", `cpu ${cpu} is not online (domain has ${this.cpus})`);
    return c;
  }

  /** `iova_magazine_free_pfns`: return every pfn of a magazine to the tree, in slot order. */
  private magazineFreePfns(mag: bigint[]): void {
    for (const pfn of mag) {
      const n = this.findNode(pfn);
      if (!n) {
        this.warnings.push(`iova_magazine_free_pfns: pfn 0x${pfn.toString(16)} not in the tree`);
        continue;
      }
      this.removeNode(n, this.indexOf(n));
    }
    mag.length = 0;
  }

  /** `iova_magazine_pop`: newest pfn <= limit; the last slot fills the hole. */
  private static magazinePop(mag: bigint[], limitPfn: bigint): bigint {
    let i = mag.length - 1;
    while (mag[i]! > limitPfn) {
      if (i === 0) return 0n;
      i--;
    }
    const pfn = mag[i]!;
    mag[i] = mag[mag.length - 1]!;
    mag.pop();
    return pfn;
  }

  /** `iova_depot_work_func` (mainline): trim one magazine while the depot exceeds the CPU count. */
  private depotWork(rcache: Rcache, delayMs: number): void {
    if (rcache.depot.length <= this.cpus) return;
    const mag = rcache.depot.pop()!; // iova_depot_pop: the list head
    this.magazineFreePfns(mag);
    this.timers.schedule(rcache, delayMs, () => this.depotWork(rcache, delayMs));
  }

  /** `__iova_rcache_insert`. */
  private rcacheInsert(rcache: Rcache, pfn: bigint, cpu: number): boolean {
    const c = this.cpuRcache(rcache, cpu);
    const { magSize, depot } = this.profile.iovaRcache;
    let magToFree: bigint[] | null = null;
    if (c.loaded.length < magSize) {
      // room in the loaded magazine
    } else if (c.prev.length < magSize) {
      [c.loaded, c.prev] = [c.prev, c.loaded];
    } else {
      // A fresh magazine (GFP_ATOMIC; its allocation failing is not modelled).
      if (depot.kind === "array") {
        if (rcache.depot.length < depot.maxGlobalMags) rcache.depot.push(c.loaded);
        else magToFree = c.loaded;
      } else {
        rcache.depot.push(c.loaded); // iova_depot_push
        const delay = depot.depotDelayMs;
        this.timers.schedule(rcache, delay, () => this.depotWork(rcache, delay));
      }
      c.loaded = [];
    }
    c.loaded.push(pfn);
    if (magToFree) this.magazineFreePfns(magToFree);
    return true;
  }

  /** `__iova_rcache_get`. */
  private rcacheGet(rcache: Rcache, limitPfn: bigint, cpu: number): bigint {
    const c = this.cpuRcache(rcache, cpu);
    let hasPfn = false;
    if (c.loaded.length > 0) hasPfn = true;
    else if (c.prev.length > 0) {
      [c.loaded, c.prev] = [c.prev, c.loaded];
      hasPfn = true;
    } else if (rcache.depot.length > 0) {
      c.loaded = rcache.depot.pop()!;
      hasPfn = true;
    }
    return hasPfn ? IovaDomain.magazinePop(c.loaded, limitPfn) : 0n;
  }

  /**
   * `alloc_iova_fast`: sizes under 32 pfns are rounded up to a power of two; the rcache of
   * `cpu` is tried first; then the tree; on failure, with `flushRcache`, every cached pfn is
   * returned to the tree and the tree is tried once more. Returns the pfn, 0 on failure.
   */
  allocIovaFast(size: bigint, limitPfn: bigint, flushRcache: boolean, cpu = 0): bigint {
    this.timers.run();
    if (size < 1n) throw new PeerbufError("usage", `IOVA size must be at least 1 pfn, got ${size}`);
    this.cpuRcache(this.rcaches[0]!, cpu);
    if (size < 1n << BigInt(IOVA_RANGE_CACHE_MAX_SIZE - 1)) size = roundupPowOfTwo(size);
    // iova_rcache_get(iovad, size, limit_pfn + 1): pfns <= (limit + 1) - size, modulo 2^64
    const logSize = orderBase2(size);
    if (logSize < IOVA_RANGE_CACHE_MAX_SIZE) {
      const pfn = this.rcacheGet(this.rcaches[logSize]!, u64(limitPfn + 1n - size), cpu);
      if (pfn !== 0n) return pfn;
    }
    for (;;) {
      const node = this.allocAndInsertIovaRange(size, limitPfn + 1n, true);
      if (node) return node.pfnLo;
      if (!flushRcache) return 0n;
      flushRcache = false;
      this.flushRcacheNow();
    }
  }

  /**
   * `free_iova_fast`: cache the range in bin order_base_2(size) of `cpu` (it stays in the tree),
   * or free it to the tree when the bin is too big.
   */
  freeIovaFast(pfn: bigint, size: bigint, cpu = 0): void {
    this.timers.run(); // a no-op inside a firing timer, which is where the flush queue calls this
    const logSize = orderBase2(size);
    if (logSize < IOVA_RANGE_CACHE_MAX_SIZE && this.rcacheInsert(this.rcaches[logSize]!, pfn, cpu))
      return;
    this.freeIovaNow(pfn);
  }

  /** `free_cpu_cached_iovas`: the loaded then prev magazine of each bin. */
  freeCpuCachedIovas(cpu: number): void {
    this.timers.run();
    for (const r of this.rcaches) {
      const c = this.cpuRcache(r, cpu);
      this.magazineFreePfns(c.loaded);
      this.magazineFreePfns(c.prev);
    }
  }

  /** `free_global_cached_iovas`: 6.1 empties the depot array oldest first, mainline pops the list. */
  freeGlobalCachedIovas(): void {
    this.timers.run();
    for (const r of this.rcaches) {
      const mags =
        this.profile.iovaRcache.depot.kind === "array" ? r.depot : [...r.depot].reverse();
      for (const m of mags) this.magazineFreePfns(m);
      r.depot = [];
    }
  }

  /** The flush `alloc_iova_fast` does on failure: every online CPU, then the depot. */
  flushRcache(): void {
    this.timers.run();
    this.flushRcacheNow();
  }

  private flushRcacheNow(): void {
    for (let cpu = 0; cpu < this.cpus; cpu++) this.freeCpuCachedIovas(cpu);
    this.freeGlobalCachedIovas();
  }

  /** What each bin holds (copies). */
  rcacheView(): RcacheView[] {
    return this.rcaches.map((r) => ({
      cpu: r.cpu.map((c) => ({ loaded: [...c.loaded], prev: [...c.prev] })),
      depot: r.depot.map((m) => [...m]),
    }));
  }

  /** Every pfn held by any magazine or the depot. */
  cachedPfns(): bigint[] {
    return this.rcaches.flatMap((r) => [
      ...r.cpu.flatMap((c) => [...c.loaded, ...c.prev]),
      ...r.depot.flat(),
    ]);
  }

  /** Run timers and delayed work that are due at the current clock. */
  tick(): void {
    this.timers.run();
  }

  /** Ranges `reserve_iova` put in the tree (an allocation it widened is not counted here). */
  reservedRanges(): IovaRange[] {
    return this.tree.filter((n) => n.reserved).map(view);
  }

  /**
   * Ranges handed out and not given back, as the user of the allocator sees it: every tree node
   * except the anchor, the reserved ranges, and the ranges parked in a per-CPU magazine or the
   * depot (those stay in the tree but are free). Does not run due timers.
   */
  allocatedRanges(): IovaRange[] {
    const cached = new Set(this.cachedPfns());
    return this.tree
      .filter((n) => n !== this.anchor && !n.reserved && !cached.has(n.pfnLo))
      .map(view);
  }
}

// ── address helpers (include/linux/iova.h) ─────────────────────────────────────────────────────

/** `iova_offset`. */
export const iovaOffset = (d: IovaDomain, addr: bigint): bigint => addr & (d.granule - 1n);
/** `iova_align`. */
export const iovaAlign = (d: IovaDomain, size: bigint): bigint =>
  (size + d.granule - 1n) & ~(d.granule - 1n);
/** `iova_pfn`. */
export const iovaPfn = (d: IovaDomain, addr: bigint): bigint => addr >> d.shift;

// ── reservations (dma-iommu.c) ─────────────────────────────────────────────────────────────────

/** A host-bridge window, in the shape `HostBridgeDescription.windows` uses: bus = cpu - offset. */
export interface BridgeWindow {
  readonly cpuStart: bigint;
  readonly size: bigint;
  readonly busStart: bigint;
}

/**
 * `iova_reserve_pci_windows`: reserve every MEM window of the device's host bridge, as the bus
 * sees it (`[start - offset, end - offset]`), and, when the bridge has `dma-ranges`, the gaps
 * around them (none on x86, where host bridges have no dma_ranges). Returns false where the
 * kernel returns -EINVAL (overlapping dma-ranges).
 */
export function iovaReservePciWindows(
  iovad: IovaDomain,
  windows: readonly BridgeWindow[],
  dmaRanges: readonly BridgeWindow[] = [],
): boolean {
  for (const w of windows) {
    const offset = w.cpuStart - w.busStart;
    const start = w.cpuStart - offset;
    const end = w.cpuStart + w.size - 1n - offset;
    iovad.reserveIova(iovaPfn(iovad, start), iovaPfn(iovad, end));
  }
  const sorted = [...dmaRanges].sort((a, b) => (a.cpuStart < b.cpuStart ? -1 : 1));
  let start = 0n;
  for (let i = 0; i < sorted.length; i++) {
    const w = sorted[i]!;
    const offset = w.cpuStart - w.busStart;
    let end = w.cpuStart - offset;
    for (;;) {
      // resv_iova:
      if (end > start) iovad.reserveIova(iovaPfn(iovad, start), iovaPfn(iovad, end));
      else if (end < start) return false; // "Failed to reserve IOVA"
      start = u64(w.cpuStart + w.size - 1n - offset + 1n);
      if (i === sorted.length - 1 && end !== U64) {
        end = U64; // the gap above the last window
        continue;
      }
      break;
    }
  }
  return true;
}

/** `enum iommu_resv_type`, as far as IOVA reservation cares. */
export type ResvRegionType = "direct" | "direct-relaxable" | "reserved" | "msi" | "sw-msi";

export interface ResvRegion {
  readonly start: bigint;
  readonly length: bigint;
  readonly type: ResvRegionType;
}

/** x86 interrupt window (`IOAPIC_RANGE_*` in VT-d, `MSI_RANGE_*` in AMD-Vi), IOMMU_RESV_MSI. */
export const X86_MSI_REGION: ResvRegion = { start: 0xfee0_0000n, length: 0x10_0000n, type: "msi" };
/** AMD-Vi HyperTransport range 0xfd_0000_0000-0xff_ffff_ffff (`HT_RANGE_*`), IOMMU_RESV_RESERVED. */
export const AMD_HT_REGION: ResvRegion = {
  start: 0xfd_0000_0000n,
  length: 0x3_0000_0000n,
  type: "reserved",
};
/** VT-d CONFIG_INTEL_IOMMU_FLOPPY_WA: the low 16 MiB of an ISA bridge, DIRECT_RELAXABLE. */
export const VTD_ISA_FLOPPY_REGION: ResvRegion = {
  start: 0n,
  length: 0x100_0000n,
  type: "direct-relaxable",
};

/** The loop of `iova_reserve_iommu_regions` over the IOMMU's reserved regions (SW_MSI skipped). */
export function iovaReserveIommuRegions(iovad: IovaDomain, regions: readonly ResvRegion[]): void {
  for (const r of regions) {
    if (r.type === "sw-msi") continue; // "We ARE the software that manages these!"
    iovad.reserveIova(iovaPfn(iovad, r.start), iovaPfn(iovad, r.start + r.length - 1n));
  }
}

// ── dma-iommu.c: domains, devices, alloc/free, flush queue ─────────────────────────────────────

/** `IOMMU_DOMAIN_DMA` (strict: IOVAs freed at unmap) or `IOMMU_DOMAIN_DMA_FQ` (lazy). */
export type DmaDomainType = "DMA" | "DMA_FQ";

/** What `iommu_dma_alloc_iova` reads from `struct device`. */
export interface DmaClient {
  readonly name: string;
  readonly isPci: boolean;
  /** `dev->bus_dma_limit`; 0 = none. */
  readonly busDmaLimit: bigint;
  /**
   * Whether PCI 32-bit-first applies: mainline's `dev->iommu->pci_32bit_workaround`, cleared on
   * the first failure; 6.1's `dev_is_pci(dev) && !iommu_dma_forcedac`, never cleared.
   */
  pci32bitWorkaround: boolean;
  /** `dev_notice` lines the model printed for this device. */
  readonly notes: string[];
}

/** A device as `iommu_setup_dma_ops` leaves it. */
export function dmaClient(
  name: string,
  opts: { isPci?: boolean; busDmaLimit?: bigint; forcedac?: boolean } = {},
): DmaClient {
  const isPci = opts.isPci ?? true;
  return {
    name,
    isPci,
    busDmaLimit: opts.busDmaLimit ?? 0n,
    pci32bitWorkaround: isPci && !(opts.forcedac ?? false),
    notes: [],
  };
}

interface FqEntry {
  pfn: bigint;
  pages: bigint;
  counter: number;
}

/** `struct iova_fq`: a ring of `size` slots holding at most size - 1 entries. */
class IovaFq {
  readonly entries: (FqEntry | undefined)[];
  head = 0;
  tail = 0;
  readonly size: number;
  constructor(size: number) {
    this.size = size;
    this.entries = new Array<FqEntry | undefined>(size);
  }
  /** `fq_full`. */
  full(): boolean {
    return (this.tail + 1) % this.size === this.head;
  }
}

export interface IommuDmaDomainOptions extends IovaDomainOptions {
  /** IOMMU group this default domain belongs to (for messages). */
  readonly group?: string | number;
  readonly type: DmaDomainType;
  /** `domain->geometry`: with `forceAperture`, limits are clamped to `apertureEnd`. */
  readonly apertureStart?: bigint;
  readonly apertureEnd?: bigint;
  readonly forceAperture?: boolean;
  /** Mainline `shadow_on_flush` IOMMUs: one big queue instead of per-CPU rings (not in 6.1). */
  readonly singleFlushQueue?: boolean;
  /** The IOMMU cannot defer IOTLB flushes (no flush-queue support): DMA_FQ becomes DMA. */
  readonly noDeferredFlush?: boolean;
  /** Host-bridge MEM windows of the first device (`iova_reserve_pci_windows`). */
  readonly hostBridgeWindows?: readonly BridgeWindow[];
  readonly hostBridgeDmaRanges?: readonly BridgeWindow[];
  /** The IOMMU driver's reserved regions for the first device (`iova_reserve_iommu_regions`). */
  readonly resvRegions?: readonly ResvRegion[];
}

/**
 * An `iommu_domain` of type DMA or DMA_FQ with its IOVA cookie, set up as
 * `iommu_dma_init_domain` does for the first device of its group (later devices find it
 * initialised and add no reservations).
 */
export class IommuDmaDomain {
  readonly group: string;
  /** DMA_FQ falls back to DMA when the flush queue cannot be used. */
  readonly type: DmaDomainType;
  readonly iovad: IovaDomain;
  readonly apertureEnd: bigint;
  readonly forceAperture: boolean;
  private readonly fqs: IovaFq[] = [];
  private readonly singleQueue: boolean;
  private readonly fqTimeoutMs: number;
  private fqFlushStartCnt = 0;
  private fqFlushFinishCnt = 0;
  private fqTimerOn = false;
  private readonly fqTimerKey = {};

  constructor(opts: IommuDmaDomainOptions) {
    const granule = opts.granule ?? 4096n;
    const order = BigInt(fls(granule) - 1);
    // base_pfn = max(1, base >> order), then at least aperture_start >> order
    let startPfn = opts.startPfn ?? 1n;
    if (startPfn < 1n) startPfn = 1n;
    if (opts.forceAperture && opts.apertureStart !== undefined) {
      const a = opts.apertureStart >> order;
      if (a > startPfn) startPfn = a;
    }
    this.iovad = new IovaDomain({ ...opts, granule, startPfn });
    this.group = String(opts.group ?? "?");
    this.apertureEnd = opts.apertureEnd ?? U64;
    this.forceAperture = opts.forceAperture ?? false;
    const fq = this.iovad.profile.iovaFlushQueue;
    const single = (opts.singleFlushQueue ?? false) && fq.single !== null;
    this.singleQueue = single;
    let type = opts.type;
    if (type === "DMA_FQ" && opts.noDeferredFlush) type = "DMA";
    this.type = type;
    if (type === "DMA_FQ") {
      // iommu_dma_init_fq
      const geo = single && fq.single ? fq.single : fq.perCpu;
      this.fqTimeoutMs = geo.timeoutMs;
      const rings = single ? 1 : this.iovad.cpus;
      for (let i = 0; i < rings; i++) this.fqs.push(new IovaFq(geo.size));
    } else this.fqTimeoutMs = 0;
    // iova_reserve_iommu_regions: PCI windows first, then the driver's regions
    iovaReservePciWindows(this.iovad, opts.hostBridgeWindows ?? [], opts.hostBridgeDmaRanges);
    iovaReserveIommuRegions(this.iovad, opts.resvRegions ?? []);
  }

  private fqFor(cpu: number): IovaFq {
    const fq = this.singleQueue ? this.fqs[0] : this.fqs[cpu];
    if (!fq) throw new PeerbufError("usage", `cpu ${cpu} is not online`);
    return fq;
  }

  /** `fq_ring_free`: free, on `cpu`, every entry a finished flush has covered. */
  private fqRingFree(fq: IovaFq, cpu: number): void {
    const counter = this.fqFlushFinishCnt;
    while (fq.head !== fq.tail) {
      const e = fq.entries[fq.head]!;
      if (e.counter >= counter) break;
      this.iovad.freeIovaFast(e.pfn, e.pages, cpu);
      fq.entries[fq.head] = undefined;
      fq.head = (fq.head + 1) % fq.size;
    }
  }

  /** `fq_flush_iotlb`: the IOTLB flush itself is instantaneous here. */
  private fqFlushIotlb(): void {
    this.fqFlushStartCnt++;
    this.fqFlushFinishCnt++;
  }

  /** `fq_flush_timeout`, running on `cpu` (the CPU that armed the timer). */
  private fqFlushTimeout(cpu: number): void {
    this.fqTimerOn = false;
    this.fqFlushIotlb();
    for (const fq of this.fqs) this.fqRingFree(fq, cpu);
  }

  /** `queue_iova`. */
  private queueIova(pfn: bigint, pages: bigint, cpu: number): void {
    const fq = this.fqFor(cpu);
    this.fqRingFree(fq, cpu);
    if (fq.full()) {
      this.fqFlushIotlb();
      this.fqRingFree(fq, cpu);
    }
    const idx = fq.tail;
    fq.tail = (idx + 1) % fq.size;
    fq.entries[idx] = { pfn, pages, counter: this.fqFlushStartCnt };
    if (!this.fqTimerOn) {
      this.fqTimerOn = true;
      const timers = this.iovad.timers;
      timers.modTimer(this.fqTimerKey, timers.now() + this.fqTimeoutMs, () =>
        this.fqFlushTimeout(cpu),
      );
    }
  }

  /**
   * Model helper, no kernel API: the flush-queue timer fires now (on `cpu`), as it would
   * `IOVA_FQ_TIMEOUT` ms after the first queued free.
   */
  flushQueueNow(cpu = 0): void {
    this.iovad.timers.run();
    if (this.type !== "DMA_FQ") return;
    this.iovad.timers.cancel(this.fqTimerKey);
    this.fqFlushTimeout(cpu);
  }

  /** Frees waiting in the flush queue(s). */
  queuedFrees(): { pfn: bigint; pages: bigint }[] {
    const out: { pfn: bigint; pages: bigint }[] = [];
    for (const fq of this.fqs)
      for (let i = fq.head; i !== fq.tail; i = (i + 1) % fq.size) {
        const e = fq.entries[i]!;
        out.push({ pfn: e.pfn, pages: e.pages });
      }
    return out;
  }

  /** Run timers and delayed work that are due. */
  tick(): void {
    this.iovad.timers.run();
  }

  /**
   * IOVA ranges still allocated from the caller's point of view: `IovaDomain.allocatedRanges`
   * minus the ranges waiting in the flush queue (unmapped, freed once the IOTLB is flushed).
   */
  liveRanges(): IovaRange[] {
    const queued = new Set(this.queuedFrees().map((q) => q.pfn));
    return this.iovad.allocatedRanges().filter((r) => !queued.has(r.pfnLo));
  }

  /** `iommu_dma_alloc_iova`; see the free function of the same name. */
  allocIova(dev: DmaClient, sizeBytes: bigint, dmaLimit: bigint, cpu = 0): Iova | null {
    return iommuDmaAllocIova(this, dev, sizeBytes, dmaLimit, cpu);
  }

  /**
   * `iommu_dma_free_iova` as `__iommu_dma_unmap` calls it: `iova` may carry the page offset and
   * `sizeBytes` is the mapped length; both are widened to granules as the kernel does. In a
   * DMA_FQ domain the range waits in the flush queue of `cpu` (`queue_iova`) unless `queued` is
   * false (the error paths, which pass no gather); otherwise it goes to the rcache or the tree.
   */
  freeIova(iova: bigint, sizeBytes: bigint, opts: { cpu?: number; queued?: boolean } = {}): void {
    const iovad = this.iovad;
    iovad.tick();
    const cpu = opts.cpu ?? 0;
    const off = iovaOffset(iovad, iova);
    const size = iovaAlign(iovad, sizeBytes + off);
    const pfn = iovaPfn(iovad, iova - off);
    const pages = size >> iovad.shift;
    if (this.type === "DMA_FQ" && (opts.queued ?? true)) this.queueIova(pfn, pages, cpu);
    else iovad.freeIovaFast(pfn, pages, cpu);
  }
}

/** Bits needed to hold `v` (`bits_per`). */
function bitsPer(v: bigint): number {
  return v === 0n ? 1 : fls(v);
}

/**
 * `iommu_dma_alloc_iova`: `sizeBytes` (the kernel's callers pass it granule-aligned; it is
 * aligned here too) below `min_not_zero(dmaLimit, bus_dma_limit)`, clamped to the aperture. A PCI
 * device whose limit exceeds 32 bits first tries below 4 GiB without flushing the rcache. 6.1
 * does that on every allocation; mainline stops for good after its first failure and prints
 * "Using N-bit DMA addresses". The last attempt flushes the rcache on failure. null = failure
 * (the kernel's 0).
 */
export function iommuDmaAllocIova(
  domain: IommuDmaDomain,
  dev: DmaClient,
  sizeBytes: bigint,
  dmaLimit: bigint,
  cpu = 0,
): Iova | null {
  const iovad = domain.iovad;
  iovad.tick();
  const shift = iovad.shift;
  const iovaLen = iovaAlign(iovad, sizeBytes) >> shift;
  if (iovaLen < 1n) throw new PeerbufError("usage", "cannot allocate an empty IOVA range");
  let limit = dmaLimit === 0n ? dev.busDmaLimit : dmaLimit;
  if (dev.busDmaLimit !== 0n && dev.busDmaLimit < limit) limit = dev.busDmaLimit;
  if (domain.forceAperture && domain.apertureEnd < limit) limit = domain.apertureEnd;
  let pfn = 0n;
  if (limit > DMA_BIT_MASK_32 && dev.pci32bitWorkaround) {
    pfn = iovad.allocIovaFast(iovaLen, DMA_BIT_MASK_32 >> shift, false, cpu);
    if (pfn === 0n && iovad.profile.pciSacFirst === "until-first-failure") {
      dev.pci32bitWorkaround = false;
      dev.notes.push(`${dev.name}: Using ${bitsPer(limit)}-bit DMA addresses`);
    }
  }
  if (pfn === 0n) pfn = iovad.allocIovaFast(iovaLen, limit >> shift, true, cpu);
  return pfn === 0n ? null : toIova(pfn << shift);
}

/** `iommu_dma_free_iova` (after `__iommu_dma_unmap`'s widening); see `IommuDmaDomain.freeIova`. */
export function iommuDmaFreeIova(
  domain: IommuDmaDomain,
  iova: bigint,
  sizeBytes: bigint,
  opts: { cpu?: number; queued?: boolean } = {},
): void {
  domain.freeIova(iova, sizeBytes, opts);
}

// ── the interface the DMA layer uses ───────────────────────────────────────────────────────────

/** One IOMMU group's IOVA space, as the DMA mapping layer sees it. */
export interface IovaAllocator {
  readonly group: string;
  readonly domain: IommuDmaDomain;
  /**
   * IOVA for `len` bytes (including the buffer's offset into its first granule, as
   * `__iommu_dma_map` adds it) below `mask`; granule-aligned; null on failure. `dev` defaults to
   * one PCI device of the group (32-bit-first state is per device).
   */
  alloc(len: bigint, mask: bigint, opts?: { dev?: DmaClient; cpu?: number }): Iova | null;
  /** Give back what `alloc` returned; `iova` may carry the page offset, `len` is the mapped length. */
  free(iova: Iova, len: bigint, opts?: { cpu?: number }): void;
}

/** A default DMA domain for an IOMMU group. */
export function createIovaAllocator(
  opts: IommuDmaDomainOptions & { readonly group: string | number },
): IovaAllocator {
  const domain = new IommuDmaDomain(opts);
  const fallback = dmaClient(`group ${domain.group} device`);
  return {
    group: domain.group,
    domain,
    alloc: (len, mask, o = {}) => iommuDmaAllocIova(domain, o.dev ?? fallback, len, mask, o.cpu),
    free: (iova, len, o = {}) =>
      iommuDmaFreeIova(domain, iova, len, o.cpu === undefined ? {} : { cpu: o.cpu }),
  };
}
