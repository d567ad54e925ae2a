/**
 * @module scatterlist
 * Model of lib/scatterlist.c and include/linux/scatterlist.h: entries with the `page_link`
 * CHAIN/END bits, arrays of SG_MAX_SINGLE_ALLOC entries chained through their last slot,
 * `struct sg_table` / `struct sg_append_table`, the page-merging table constructors, and the
 * DMA-side pieces the dma-iommu model needs (`__finalise_sg`, `__invalidate_sg`).
 *
 * Sources: Linux 6.1.192 (the QEMU oracle's kernel) for everything; mainline differs only in the
 * page-merge rule (`SgMergeRule`, commit 1567b49d1a40 in 6.2, fixed by 0f097f08c9b3) and in the
 * name of the bus-address test (`sg_is_dma_bus_address` in 6.1, `sg_dma_is_bus_address` later;
 * both exported). Spec: ../shared/specs/p2pdma-iommu-dma.md §4.3, §6.
 *
 * Lifecycle: `sg_free_table` frees the table and every array it allocated; touching any of them
 * afterwards, or freeing twice, throws `KernelBug` naming the table (what KASAN would report; the
 * model treats an `SgTable` as a kmalloc'd `struct sg_table` that is freed with its arrays, as
 * dma-buf exporters do).
 *
 * Integer widths follow the C types: offsets, lengths, dma lengths and `max_segment` are u32
 * (`number`, range-checked), `size` is unsigned long and DMA addresses are dma_addr_t (`bigint`,
 * wrapping modulo 2^64 where the C arithmetic wraps).
 */

import { type DmaAddr, dmaAddr, type PhysAddr, physAddr } from "../../hw/address.ts";
import { KernelBug, type KResult, kerr, kok } from "../errno.ts";
import { PAGE_SHIFT, PAGE_SIZE, PAGE_SIZE_N, type Page, pageToPhys } from "../mm/page.ts";

/** `page_link` bit 0: the entry is a link to another array (include/linux/scatterlist.h). */
export const SG_CHAIN = 0x01;
/** `page_link` bit 1: the entry is the last of the list. */
export const SG_END = 0x02;
export const SG_PAGE_LINK_MASK = SG_CHAIN | SG_END;

/** `dma_flags` bit 0: `dma_address` is a PCI bus address (P2PDMA): never unmapped, never merged. */
export const SG_DMA_BUS_ADDRESS = 1 << 0;
/** `dma_flags` bit 1 (mainline): the list went through the dma-iommu swiotlb path. */
export const SG_DMA_SWIOTLB = 1 << 1;

/** `sizeof(struct scatterlist)` on 64-bit with dma_length and dma_flags. */
export const SCATTERLIST_SIZE = 32;
/** `SG_MAX_SINGLE_ALLOC` = PAGE_SIZE / sizeof(struct scatterlist): slots per array. */
export const SG_MAX_SINGLE_ALLOC = PAGE_SIZE / SCATTERLIST_SIZE;

export const UINT_MAX = 0xffff_ffff;
/** `DMA_MAPPING_ERROR` (include/linux/dma-mapping.h): all ones. */
export const DMA_MAPPING_ERROR: DmaAddr = dmaAddr((1n << 64n) - 1n);

const U64 = (1n << 64n) - 1n;
const u32 = (v: number): number => v >>> 0;
const u64 = (v: bigint): bigint => v & U64;

function checkU32(what: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > UINT_MAX) {
    throw new RangeError(`${what} must be an unsigned 32-bit integer, got ${v}`);
  }
  return v;
}

function checkU64(what: string, v: bigint): bigint {
  if (v < 0n || v > U64) throw new RangeError(`${what} must be an unsigned 64-bit value, got ${v}`);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Arrays and entries

let nextArrayId = 1;
let nextTableId = 1;

/** One kmalloc'd array of `struct scatterlist` (`sg_kmalloc`). */
class SgArray {
  readonly id = nextArrayId++;
  readonly slots: Scatterlist[] = [];
  /** Name of the list it belongs to (the table's name), for messages. */
  owner: string;
  /** Position in its list of slot 0 (entries counted as for_each_sg counts them). */
  firstIndex = 0;
  /** Set when freed: by what. */
  freedBy: string | null = null;

  constructor(nents: number, owner: string) {
    this.owner = owner;
    for (let i = 0; i < nents; i++) this.slots.push(newEntry(this, i));
  }
}

interface SgState {
  readonly arr: SgArray;
  readonly slot: number;
  page: Page | null;
  /** The array pointer held in `page_link` by a chain entry (`sg_chain_ptr`). */
  chain: Scatterlist | null;
  /** `page_link & SG_PAGE_LINK_MASK`. */
  link: number;
  /** `mangle_sg_table()` has scrambled the page pointer. */
  poisoned: boolean;
  offset: number;
  length: number;
  dmaAddress: DmaAddr;
  dmaLength: number;
  dmaFlags: number;
}

let stateOf!: (sg: Scatterlist) => SgState;
let newEntry!: (arr: SgArray, slot: number) => Scatterlist;

function entryName(s: SgState): string {
  if (s.link & SG_CHAIN)
    return `chain link (slot ${s.slot} of array #${s.arr.id}) of ${s.arr.owner}`;
  return `entry ${s.arr.firstIndex + s.slot} of ${s.arr.owner}`;
}

/** The entry's state, after checking that its array is still allocated. */
function live(sg: Scatterlist): SgState {
  const s = stateOf(sg);
  if (s.arr.freedBy !== null) {
    throw new KernelBug(`use-after-free: ${entryName(s)} touched after ${s.arr.freedBy}`);
  }
  return s;
}

/**
 * `struct scatterlist`. Create entries with `sg_init_table`, `sg_alloc_table` or the
 * from-pages constructors; the fields are the kernel's, with the C widths checked on write.
 */
export class Scatterlist {
  readonly #s: SgState;

  static {
    stateOf = (sg) => sg.#s;
    newEntry = (arr, slot) => new Scatterlist(arr, slot);
  }

  private constructor(arr: SgArray, slot: number) {
    this.#s = {
      arr,
      slot,
      page: null,
      chain: null,
      link: 0,
      poisoned: false,
      offset: 0,
      length: 0,
      dmaAddress: dmaAddr(0n),
      dmaLength: 0,
      dmaFlags: 0,
    };
  }

  /** "entry 3 of <table>", for messages. */
  get name(): string {
    return entryName(this.#s);
  }

  /**
   * The page pointer without going through `sg_page()`: null when there is none, when the entry
   * is a chain link, or when `poisonPages()` has scrambled it.
   */
  get page(): Page | null {
    const s = live(this);
    return s.poisoned || s.link & SG_CHAIN ? null : s.page;
  }

  /** `page_link & (SG_CHAIN | SG_END)`; the pointer part is `page` or the chained array. */
  get page_link(): number {
    return live(this).link;
  }

  get offset(): number {
    return live(this).offset;
  }
  set offset(v: number) {
    live(this).offset = checkU32("scatterlist.offset", v);
  }

  get length(): number {
    return live(this).length;
  }
  set length(v: number) {
    live(this).length = checkU32("scatterlist.length", v);
  }

  get dma_address(): DmaAddr {
    return live(this).dmaAddress;
  }
  set dma_address(v: DmaAddr) {
    live(this).dmaAddress = dmaAddr(checkU64("scatterlist.dma_address", v));
  }

  get dma_length(): number {
    return live(this).dmaLength;
  }
  set dma_length(v: number) {
    live(this).dmaLength = checkU32("scatterlist.dma_length", v);
  }

  get dma_flags(): number {
    return live(this).dmaFlags;
  }
  set dma_flags(v: number) {
    live(this).dmaFlags = checkU32("scatterlist.dma_flags", v);
  }
}

// models sg_kmalloc() + sg_init_table(): a fresh array, zeroed, its last slot marked END.
function allocArray(nents: number, owner: string): SgArray {
  const arr = new SgArray(nents, owner);
  stateOf(arr.slots[nents - 1]!).link = SG_END;
  return arr;
}

/**
 * A fresh array of `nents` entries, zeroed, the last marked END. `name` names it in messages.
 * models sg_init_table() (on memory the caller allocated)
 */
export function sg_init_table(nents: number, name?: string): readonly Scatterlist[] {
  checkU32("nents", nents);
  if (nents === 0) {
    throw new KernelBug("sg_init_table() with 0 entries marks the end one slot before the array");
  }
  return allocArray(nents, name ?? `sg array #${nextArrayId}`).slots;
}

// models sg_is_chain()
export function sg_is_chain(sg: Scatterlist): boolean {
  return (live(sg).link & SG_CHAIN) !== 0;
}

// models sg_is_last()
export function sg_is_last(sg: Scatterlist): boolean {
  return (live(sg).link & SG_END) !== 0;
}

// models sg_chain_ptr()
export function sg_chain_ptr(sg: Scatterlist): Scatterlist {
  const s = live(sg);
  if (!(s.link & SG_CHAIN) || s.chain === null) {
    throw new KernelBug(`sg_chain_ptr() on ${entryName(s)}, which is not a chain link`);
  }
  return s.chain;
}

// models __sg_chain(): turn `chainSg` into a link to `sgl`.
function chainTo(chainSg: Scatterlist, sgl: Scatterlist): void {
  const c = live(chainSg);
  const n = live(sgl);
  c.offset = 0;
  c.length = 0;
  c.page = null;
  c.poisoned = false;
  c.chain = sgl;
  c.link = (c.link | SG_CHAIN) & ~SG_END;
  // The chained array continues the list: number its entries after the link's position.
  n.arr.owner = c.arr.owner;
  n.arr.firstIndex = c.arr.firstIndex + c.slot - n.slot;
}

/** Make `prv[prv_nents - 1]` a link to `sgl`. models sg_chain() */
export function sg_chain(prv: readonly Scatterlist[], prv_nents: number, sgl: Scatterlist): void {
  checkU32("prv_nents", prv_nents);
  const link = prv[prv_nents - 1];
  if (prv_nents === 0 || link === undefined) {
    throw new KernelBug(
      `sg_chain(prv, ${prv_nents}, ...) on an array of ${prv.length} entries: out of bounds`,
    );
  }
  chainTo(link, sgl);
}

/** The next entry, following chain links; null after the END entry. models sg_next() */
export function sg_next(sg: Scatterlist): Scatterlist | null {
  const s = live(sg);
  if (s.link & SG_END) return null;
  const following = s.arr.slots[s.slot + 1];
  if (following === undefined) {
    throw new KernelBug(
      `sg_next() past the end of the array holding ${entryName(s)}: no END mark and no chain link (out-of-bounds read)`,
    );
  }
  const f = live(following);
  if (f.link & SG_CHAIN) {
    const next = sg_chain_ptr(following);
    live(next);
    return next;
  }
  return following;
}

/** Entries from `sg` to the END mark. models sg_nents() */
export function sg_nents(sg: Scatterlist | null): number {
  let n = 0;
  for (let s = sg; s !== null; s = sg_next(s)) n++;
  return n;
}

/** The `nents`-th entry, which must carry the END mark. models sg_last() */
export function sg_last(sgl: Scatterlist, nents: number): Scatterlist {
  let ret: Scatterlist | null = null;
  for (const sg of for_each_sg(sgl, nents)) ret = sg;
  if (ret === null || !sg_is_last(ret)) {
    throw new KernelBug(
      `sg_last(): entry ${nents - 1} is not marked END (BUG_ON(!sg_is_last(ret)))`,
    );
  }
  return ret;
}

// models sg_mark_end()
export function sg_mark_end(sg: Scatterlist): void {
  const s = live(sg);
  s.link = (s.link | SG_END) & ~SG_CHAIN;
}

// models sg_unmark_end()
export function sg_unmark_end(sg: Scatterlist): void {
  const s = live(sg);
  s.link &= ~SG_END;
}

// models sg_assign_page()
export function sg_assign_page(sg: Scatterlist, page: Page | null): void {
  const s = live(sg);
  if (s.link & SG_CHAIN) {
    throw new KernelBug(`sg_assign_page() on ${entryName(s)} (BUG_ON(sg_is_chain(sg)))`);
  }
  if (s.poisoned) {
    throw new KernelBug(
      `sg_set_page() on a poisoned ${entryName(s)}: importers must not touch pages`,
    );
  }
  s.page = page;
  s.chain = null;
}

// models sg_set_page()
export function sg_set_page(sg: Scatterlist, page: Page | null, len: number, offset: number): void {
  checkU32("len", len);
  checkU32("offset", offset);
  sg_assign_page(sg, page);
  const s = live(sg);
  s.offset = offset;
  s.length = len;
}

/** The entry's page (null when none was set); throws on a chain link or a poisoned entry. models sg_page() */
export function sg_page(sg: Scatterlist): Page | null {
  const s = live(sg);
  if (s.link & SG_CHAIN || s.chain !== null) {
    throw new KernelBug(`sg_page() on ${entryName(s)}: its page_link holds an array pointer`);
  }
  if (s.poisoned) {
    throw new KernelBug(`sg_page() on a poisoned ${entryName(s)}: importers must not touch pages`);
  }
  return s.page;
}

/** `page_to_phys(sg_page(sg)) + sg->offset`. models sg_phys() */
export function sg_phys(sg: Scatterlist): PhysAddr {
  const page = sg_page(sg);
  if (page === null) {
    throw new KernelBug(`sg_phys() on ${sg.name}, which has no page (NULL dereference)`);
  }
  return physAddr(pageToPhys(page) + BigInt(sg.offset));
}

// models sg_dma_address()
export function sg_dma_address(sg: Scatterlist): DmaAddr {
  return sg.dma_address;
}

/** `dma_length` (x86 has CONFIG_NEED_SG_DMA_LENGTH). models sg_dma_len() */
export function sg_dma_len(sg: Scatterlist): number {
  return sg.dma_length;
}

// models sg_dma_is_bus_address()
export function sg_dma_is_bus_address(sg: Scatterlist): boolean {
  return (sg.dma_flags & SG_DMA_BUS_ADDRESS) !== 0;
}

/** 6.1's name for `sg_dma_is_bus_address`. models sg_is_dma_bus_address() */
export const sg_is_dma_bus_address = sg_dma_is_bus_address;

// models sg_dma_mark_bus_address()
export function sg_dma_mark_bus_address(sg: Scatterlist): void {
  sg.dma_flags = sg.dma_flags | SG_DMA_BUS_ADDRESS;
}

// models sg_dma_unmark_bus_address()
export function sg_dma_unmark_bus_address(sg: Scatterlist): void {
  sg.dma_flags = sg.dma_flags & ~SG_DMA_BUS_ADDRESS;
}

// models sg_dma_is_swiotlb()
export function sg_dma_is_swiotlb(sg: Scatterlist): boolean {
  return (sg.dma_flags & SG_DMA_SWIOTLB) !== 0;
}

/** Set on the first entry by the dma-iommu swiotlb path. models sg_dma_mark_swiotlb() */
export function sg_dma_mark_swiotlb(sg: Scatterlist): void {
  sg.dma_flags = sg.dma_flags | SG_DMA_SWIOTLB;
}

// ---------------------------------------------------------------------------------------------
// Iteration

/**
 * `nents` entries from `sgl`, following chain links. Running out of entries before `nents` is
 * the kernel's NULL dereference. models for_each_sg()
 */
export function* for_each_sg(
  sgl: Scatterlist | null,
  nents: number,
): Generator<Scatterlist, void, undefined> {
  let sg = sgl;
  for (let i = 0; i < nents; i++) {
    if (sg === null) {
      throw new KernelBug(
        `for_each_sg(): the list ended after ${i} of ${nents} entries (NULL dereference)`,
      );
    }
    yield sg;
    if (i + 1 < nents) sg = sg_next(sg);
  }
}

/** The CPU entries: `orig_nents` of them. models for_each_sgtable_sg() */
export function for_each_sgtable_sg(sgt: SgTable): Generator<Scatterlist, void, undefined> {
  return for_each_sg(sgt.sgl, sgt.orig_nents);
}

/** The DMA segments: `nents` of them. models for_each_sgtable_dma_sg() */
export function for_each_sgtable_dma_sg(sgt: SgTable): Generator<Scatterlist, void, undefined> {
  return for_each_sg(sgt.sgl, sgt.nents);
}

// ---------------------------------------------------------------------------------------------
// Tables

interface TableState {
  sgl: Scatterlist | null;
  nents: number;
  origNents: number;
  freed: boolean;
  readonly arrays: SgArray[];
}

let tableState!: (t: SgTable) => TableState;

/**
 * `struct sg_table { sgl, nents, orig_nents }`: `orig_nents` CPU entries, `nents` DMA segments
 * after mapping (equal before). `new SgTable()` is a zeroed header (`= {}`).
 */
export class SgTable {
  readonly name: string;
  readonly #t: TableState = { sgl: null, nents: 0, origNents: 0, freed: false, arrays: [] };

  static {
    tableState = (t) => t.#t;
  }

  constructor(name?: string) {
    this.name = name ?? `sg_table#${nextTableId++}`;
  }

  #live(): TableState {
    if (this.#t.freed) {
      throw new KernelBug(`use-after-free: ${this.name} used after sg_free_table()`);
    }
    return this.#t;
  }

  /** Freed by `sg_free_table` (reading this never throws). */
  get freed(): boolean {
    return this.#t.freed;
  }

  get sgl(): Scatterlist | null {
    return this.#live().sgl;
  }

  /** Mapped DMA segments (`dma_map_sgtable` writes it). */
  get nents(): number {
    return this.#live().nents;
  }
  set nents(v: number) {
    this.#live().nents = checkU32("sg_table.nents", v);
  }

  /** CPU entries. */
  get orig_nents(): number {
    return this.#live().origNents;
  }
  set orig_nents(v: number) {
    this.#live().origNents = checkU32("sg_table.orig_nents", v);
  }
}

/** `struct sg_append_table { sgt, prv, total_nents }`, zeroed (`= {}`) when new. */
export class SgAppendTable {
  readonly sgt: SgTable;
  /** Last populated entry. */
  prv: Scatterlist | null = null;
  /** Entries allocated, chain links excluded. */
  total_nents = 0;

  constructor(name?: string) {
    this.sgt = new SgTable(name);
  }
}

export interface SgAllocOptions {
  /** Names the table in messages (default `sg_table#N`). */
  readonly name?: string;
  /** Fault injection: return true to make the allocation of an array of `nents` slots fail. */
  readonly allocFails?: (nents: number) => boolean;
}

// models sg_kmalloc() for a table: null on (injected) failure.
function tableAlloc(t: SgTable, nents: number, opts: SgAllocOptions): SgArray | null {
  if (opts.allocFails?.(nents) === true) return null;
  const arr = allocArray(nents, t.name);
  tableState(t).arrays.push(arr);
  return arr;
}

/**
 * A table of `nents` entries: arrays of up to SG_MAX_SINGLE_ALLOC slots, each full array but the
 * last spending its last slot on the link, the last entry marked END. 0 entries: -EINVAL;
 * a failed array allocation: -ENOMEM (what was allocated is freed).
 * models sg_alloc_table() / __sg_alloc_table()
 */
export function sg_alloc_table(nents: number, opts: SgAllocOptions = {}): KResult<SgTable> {
  checkU32("nents", nents);
  const table = new SgTable(opts.name);
  const t = tableState(table);
  if (nents === 0) return kerr("EINVAL", "sg_alloc_table() with 0 entries");
  const maxEnts = SG_MAX_SINGLE_ALLOC;
  let left = nents;
  let prv: SgArray | null = null;
  do {
    let allocSize = left;
    let sgSize: number;
    if (allocSize > maxEnts) {
      allocSize = maxEnts;
      sgSize = allocSize - 1;
    } else {
      sgSize = allocSize;
    }
    left -= sgSize;
    const arr = tableAlloc(table, allocSize, opts);
    if (arr === null) {
      // The last slot of the previous array will not be used for linkage.
      if (prv !== null) t.nents = ++t.origNents;
      sg_free_table(table);
      return kerr("ENOMEM", `allocating an array of ${allocSize} scatterlist entries failed`);
    }
    t.origNents += sgSize;
    t.nents = t.origNents;
    if (prv !== null) sg_chain(prv.slots, maxEnts, arr.slots[0]!);
    else t.sgl = arr.slots[0]!;
    if (left === 0) sg_mark_end(arr.slots[sgSize - 1]!);
    prv = arr;
  } while (left > 0);
  return kok(table);
}

/**
 * The walk of `__sg_free_table()` over `numEnts` entries: it takes every array but the last to be
 * a full SG_MAX_SINGLE_ALLOC array chained through its last slot. A list built otherwise (an
 * append whose `left_pages` was too small chains a shorter first array) makes it read past an
 * array or follow a non-link as a pointer. Arrays it never reaches would leak; the model frees
 * them anyway.
 */
function checkFreeWalk(table: SgTable, numEnts: number, fn: string): void {
  let sg = tableState(table).sgl;
  let left = numEnts;
  while (left > 0 && sg !== null) {
    if (left <= SG_MAX_SINGLE_ALLOC) return;
    const s = live(sg);
    const link = s.arr.slots[s.slot + SG_MAX_SINGLE_ALLOC - 1];
    if (link === undefined || !(live(link).link & SG_CHAIN)) {
      throw new KernelBug(
        `${fn}(${table.name}): walking ${numEnts} entries it takes slot ${SG_MAX_SINGLE_ALLOC - 1} of array #${s.arr.id} (${s.arr.slots.length} slots) for a chain link: ${link === undefined ? "out-of-bounds read" : "wild pointer"} (a list not made of full ${SG_MAX_SINGLE_ALLOC}-slot arrays, e.g. appended with too small a left_pages)`,
      );
    }
    sg = sg_chain_ptr(link);
    left -= SG_MAX_SINGLE_ALLOC - 1;
  }
}

function freeTable(table: SgTable, numEnts: () => number, fn: string): void {
  const t = tableState(table);
  if (t.freed) throw new KernelBug(`double free: ${fn}() on ${table.name}, already freed`);
  checkFreeWalk(table, numEnts(), fn);
  for (const arr of t.arrays) arr.freedBy = `${fn}(${table.name})`;
  t.freed = true;
  t.sgl = null;
}

/**
 * Free the table and its arrays. Freeing twice, or touching the table or its entries after,
 * throws (the kernel NULLs `sgl`, so a second call on a still-allocated `struct sg_table` is
 * harmless there; the model's `SgTable` is a kmalloc'd header freed with its arrays, as dma-buf
 * exporters do). models sg_free_table() / __sg_free_table()
 */
export function sg_free_table(table: SgTable): void {
  freeTable(table, () => tableState(table).origNents, "sg_free_table");
}

/** Walks `total_nents` instead of `orig_nents`. models sg_free_append_table() */
export function sg_free_append_table(app: SgAppendTable): void {
  freeTable(app.sgt, () => app.total_nents, "sg_free_append_table");
}

/** One array of a list, as `sgTableLayout` shows it. */
export interface SgArrayLayout {
  /** Slots allocated. */
  readonly slots: number;
  /** Slot holding the link to the next array, or null for the last array. */
  readonly chainAt: number | null;
}

/** The arrays behind a table, from `sgl` along the chain links (for tests and explanations). */
export function sgTableLayout(sgt: SgTable): SgArrayLayout[] {
  const out: SgArrayLayout[] = [];
  let sg = sgt.sgl;
  while (sg !== null) {
    const arr = live(sg).arr;
    let chainAt: number | null = null;
    let next: Scatterlist | null = null;
    for (const [i, slot] of arr.slots.entries()) {
      const s = live(slot);
      if (s.link & SG_CHAIN) {
        chainAt = i;
        next = s.chain;
        break;
      }
      if (s.link & SG_END) break;
    }
    out.push({ slots: arr.slots.length, chainAt });
    sg = next;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tables from pages

/**
 * When two pfn-contiguous pages may share an entry.
 * - "pfn+pgmap": and both are ordinary pages, or both ZONE_DEVICE pages of the same pgmap
 *   (`pages_are_mergeable` / `zone_device_pages_have_same_pgmap`, since 6.2; mainline).
 * - "pfn": pfn contiguity only (6.1 and before: P2P pages of different pgmaps, or P2P next to
 *   RAM, merge when their pfns are contiguous).
 */
export type SgMergeRule = "pfn+pgmap" | "pfn";

export interface SgPagesOptions extends SgAllocOptions {
  /** Default "pfn+pgmap" (mainline). The 6.1 kernel uses "pfn". */
  readonly mergeRule?: SgMergeRule;
  /**
   * `pfn_to_page()` for the append path (the page before the next pfn of `prv`). The model has
   * no memmap: by default that page is taken to be of the same kind as `prv`'s page.
   */
  readonly pfnToPage?: (pfn: bigint) => Page;
}

// models pages_are_mergeable(): `a` directly follows `b`.
function pagesAreMergeable(a: Page, b: Page, rule: SgMergeRule): boolean {
  if (a.pfn !== b.pfn + 1n) return false;
  // models zone_device_pages_have_same_pgmap(): both ordinary, or same dev_pagemap.
  return rule === "pfn" || a.pgmap === b.pgmap;
}

// models get_next_sg()
function getNextSg(
  app: SgAppendTable,
  cur: Scatterlist | null,
  neededSges: number,
  opts: SgAllocOptions,
): Scatterlist | null {
  let nextSg: Scatterlist | null = null;
  if (cur !== null) {
    nextSg = sg_next(cur);
    if (nextSg === null) {
      throw new KernelBug(
        `get_next_sg(): ${cur.name} is marked END (an earlier append passed left_pages = 0), sg_next() is NULL (NULL dereference)`,
      );
    }
    // Keep the array's last slot for chaining unless exactly one entry is still needed.
    if (!sg_is_last(nextSg) || neededSges === 1) return nextSg;
  }
  const allocSize = Math.min(neededSges, SG_MAX_SINGLE_ALLOC);
  const arr = tableAlloc(app.sgt, allocSize, opts);
  if (arr === null) return null;
  const first = arr.slots[0]!;
  if (cur !== null && nextSg !== null) {
    app.total_nents += allocSize - 1;
    chainTo(nextSg, first);
  } else {
    tableState(app.sgt).sgl = first;
    app.total_nents = allocSize;
  }
  return first;
}

/**
 * Append `pages` (the buffer starts `offset` bytes into the first page and is `size` bytes long)
 * to `app`, merging pages per `mergeRule` into entries of at most `max_segment` (aligned down to
 * PAGE_SIZE) bytes. With `app.prv` set, leading pages first grow `prv`. `left_pages` says how
 * many pages later calls will add (0: mark the end). Errors: -EINVAL for a `max_segment` below a
 * page or an `offset` while appending (both WARN), -ENOMEM on allocation failure (then the caller
 * must `sg_free_append_table`).
 *
 * Kernel arithmetic kept: `size` is unsigned long and decreases by whole chunks, so when `size`
 * is shorter than the pages, it wraps and later entries keep their full chunk length; the last
 * entry's length is `min(size, chunk)` only for the chunk where `size` runs out.
 * models sg_alloc_append_table_from_pages()
 */
export function sg_alloc_append_table_from_pages(
  app: SgAppendTable,
  pages: readonly Page[],
  offset: number,
  size: number | bigint,
  max_segment: number,
  left_pages: number,
  opts: SgPagesOptions = {},
): KResult {
  checkU32("offset", offset);
  checkU32("max_segment", max_segment);
  checkU32("left_pages", left_pages);
  let remaining = checkU64("size", BigInt(size));
  const rule = opts.mergeRule ?? "pfn+pgmap";
  if (pages.length === 0) {
    throw new KernelBug(
      "sg_alloc_append_table_from_pages() with n_pages = 0 reads pages[0] out of bounds",
    );
  }
  const t = tableState(app.sgt);
  if (t.freed) throw new KernelBug(`use-after-free: ${app.sgt.name} used after sg_free_table()`);

  // The algorithm needs max_segment aligned to PAGE_SIZE, otherwise it can overshoot.
  const maxSegment = max_segment - (max_segment % PAGE_SIZE);
  if (maxSegment < PAGE_SIZE) {
    return kerr(
      "EINVAL",
      `max_segment ${max_segment} aligns down to ${maxSegment}, below PAGE_SIZE`,
      { warn: true },
    );
  }

  let s: Scatterlist | null = app.prv;
  let first = 0;
  const n = pages.length;
  let prvLen = 0;
  let done = false;
  if (app.prv !== null) {
    const prv = app.prv;
    const prvPage = sg_page(prv);
    if (prvPage === null) {
      throw new KernelBug(`sg_alloc_append_table_from_pages(): ${prv.name} has no page`);
    }
    const nextPfn = (pageToPhys(prvPage) + BigInt(prv.offset + prv.length)) / PAGE_SIZE_N;
    if (offset !== 0) {
      return kerr("EINVAL", "offset must be 0 when appending to a table", { warn: true });
    }
    // Merge contiguous pages into the last entry.
    prvLen = prv.length;
    if (pages[0]!.pfn === nextPfn) {
      let lastPg: Page = opts.pfnToPage?.(nextPfn - 1n) ?? {
        pfn: nextPfn - 1n,
        pgmap: prvPage.pgmap,
      };
      while (first < n && pagesAreMergeable(pages[first]!, lastPg, rule)) {
        if (prv.length + PAGE_SIZE > maxSegment) break;
        prv.length += PAGE_SIZE;
        lastPg = pages[first]!;
        first++;
      }
      if (first === n) done = true;
    }
  }

  if (!done) {
    // Count the chunks.
    let chunks = 1;
    let segLen = 0;
    for (let i = first + 1; i < n; i++) {
      segLen += PAGE_SIZE;
      if (segLen >= maxSegment || !pagesAreMergeable(pages[i]!, pages[i - 1]!, rule)) {
        chunks++;
        segLen = 0;
      }
    }
    // Put each chunk into an entry.
    let curPage = first;
    let off = offset;
    let added = 0;
    for (let i = 0; i < chunks; i++) {
      let j = curPage + 1;
      segLen = 0;
      for (; j < n; j++) {
        segLen += PAGE_SIZE;
        if (segLen >= maxSegment || !pagesAreMergeable(pages[j]!, pages[j - 1]!, rule)) break;
      }
      // Pass how many chunks might be left.
      s = getNextSg(app, s, chunks - i + left_pages, opts);
      if (s === null) {
        if (app.prv !== null) app.prv.length = prvLen;
        return kerr("ENOMEM", "allocating a scatterlist array failed");
      }
      const chunkSize = u32(((j - curPage) << PAGE_SHIFT) - off);
      const len = remaining < BigInt(chunkSize) ? Number(remaining) : chunkSize;
      sg_set_page(s, pages[curPage]!, len, off);
      added++;
      remaining = u64(remaining - BigInt(chunkSize));
      off = 0;
      curPage = j;
    }
    t.nents += added;
    t.origNents = t.nents;
    app.prv = s;
  }
  if (left_pages === 0 && s !== null) sg_mark_end(s);
  return kok();
}

/**
 * A new table from `pages`, merged per `mergeRule` into entries of at most `max_segment` bytes.
 * models sg_alloc_table_from_pages_segment()
 */
export function sg_alloc_table_from_pages_segment(
  pages: readonly Page[],
  offset: number,
  size: number | bigint,
  max_segment: number,
  opts: SgPagesOptions = {},
): KResult<SgTable> {
  const app = new SgAppendTable(opts.name);
  const r = sg_alloc_append_table_from_pages(app, pages, offset, size, max_segment, 0, opts);
  if (!r.ok) {
    sg_free_append_table(app);
    return r;
  }
  // The kernel WARNs if total_nents != orig_nents; with left_pages = 0 they are always equal.
  return kok(app.sgt);
}

/** `max_segment` = UINT_MAX (0xFFFFF000 after alignment). models sg_alloc_table_from_pages() */
export function sg_alloc_table_from_pages(
  pages: readonly Page[],
  offset: number,
  size: number | bigint,
  opts: SgPagesOptions = {},
): KResult<SgTable> {
  return sg_alloc_table_from_pages_segment(pages, offset, size, UINT_MAX, opts);
}

// ---------------------------------------------------------------------------------------------
// CONFIG_DMABUF_DEBUG

/**
 * Scramble the page pointers of the table's CPU entries, as dma-buf does before handing a
 * mapping to an importer: `sg_page()` (and `sg_set_page()`, `sg_phys()`) on them then throws;
 * `page` reads null; the CHAIN/END bits, lengths and DMA fields stay usable.
 * models mangle_sg_table() (drivers/dma-buf/dma-buf.c)
 */
export function poisonPages(table: SgTable): void {
  for (const sg of for_each_sgtable_sg(table)) {
    const s = live(sg);
    if (s.poisoned) {
      throw new KernelBug(`poisonPages(${table.name}): ${entryName(s)} is already poisoned`);
    }
    s.poisoned = true;
  }
}

/** Undo `poisonPages` (dma-buf does it before the sgt goes back to the exporter). */
export function unpoisonPages(table: SgTable): void {
  for (const sg of for_each_sgtable_sg(table)) {
    const s = live(sg);
    if (!s.poisoned) {
      throw new KernelBug(`unpoisonPages(${table.name}): ${entryName(s)} is not poisoned`);
    }
    s.poisoned = false;
  }
}

export function isPoisoned(sg: Scatterlist): boolean {
  return live(sg).poisoned;
}

// ---------------------------------------------------------------------------------------------
// DMA side (dma-iommu)

/** The device limits `__finalise_sg` reads. */
export interface DmaSegLimits {
  /** `dma_get_max_seg_size(dev)`: u32, PCI default 65536. */
  readonly maxSegSize: number;
  /** `dma_get_seg_boundary(dev)`: an all-ones-below mask, PCI default 0xFFFFFFFF. */
  readonly segBoundaryMask: bigint;
}

/**
 * Turn a laid-out list into DMA segments and return their count. Input: `nents` entries as
 * `iommu_dma_map_sg` leaves them after laying the IOVA space out from `dmaAddr` (the base IOVA;
 * 0 when every entry is a bus address): each non-bus entry holds its in-granule offset in
 * `dma_address`, its byte length in `dma_length`, its granule-aligned IOVA length (with any
 * boundary padding) in `length` and `offset` rounded down to the granule; bus-address entries
 * hold their final address and length and the bus mark. Output, in place: the CPU fields
 * restored, segment k's address and length in the k-th entry (bus segments keep the mark),
 * every other entry's `dma_address` = DMA_MAPPING_ERROR and `dma_length` = 0.
 *
 * A segment grows by the next entry when it is not empty, the entry starts on a granule, the
 * IOVA is not on a segment boundary and `max - cur >= len` in u32 arithmetic (so a segment that
 * already exceeds `maxSegSize` keeps growing: the kernel's unsigned wrap, kept). An entry not
 * ending on a granule, or a bus entry, ends the segment.
 * models __finalise_sg() (drivers/iommu/dma-iommu.c)
 */
export function finaliseSg(
  sgl: Scatterlist,
  nents: number,
  dmaAddress: DmaAddr | bigint,
  limits: DmaSegLimits,
): number {
  checkU32("nents", nents);
  const maxLen = checkU32("maxSegSize", limits.maxSegSize);
  const segMask = checkU64("segBoundaryMask", limits.segBoundaryMask);
  let dma = checkU64("dma_addr", BigInt(dmaAddress));
  let cur = sgl;
  let curLen = 0;
  let count = 0;
  let i = 0;
  const advance = (from: Scatterlist): Scatterlist => {
    const next = sg_next(from);
    if (next === null) throw new KernelBug(`__finalise_sg(): sg_next(${from.name}) is NULL`);
    return next;
  };
  for (const s of for_each_sg(sgl, nents)) {
    // Restore this entry's original unaligned fields first.
    const sDmaAddr = s.dma_address;
    const sIovaOff = Number(BigInt.asUintN(32, sDmaAddr));
    const sLength = s.dma_length;
    const sIovaLen = s.length;
    s.dma_address = DMA_MAPPING_ERROR;
    s.dma_length = 0;

    if (sg_dma_is_bus_address(s)) {
      if (i > 0) cur = advance(cur);
      sg_dma_unmark_bus_address(s);
      cur.dma_address = sDmaAddr;
      cur.dma_length = sLength;
      sg_dma_mark_bus_address(cur);
      count++;
      curLen = 0;
      i++;
      continue;
    }

    s.offset = u32(s.offset + sIovaOff);
    s.length = sLength;

    if (
      curLen !== 0 &&
      sIovaOff === 0 &&
      (dma & segMask) !== 0n &&
      u32(maxLen - curLen) >= sLength
    ) {
      // Concatenate with the current segment.
      curLen = u32(curLen + sLength);
    } else {
      // Start the next segment.
      if (i > 0) cur = advance(cur);
      curLen = sLength;
      count++;
      cur.dma_address = dmaAddr(u64(dma + BigInt(sIovaOff)));
    }
    cur.dma_length = curLen;
    dma = u64(dma + BigInt(sIovaLen));
    if (u32(sLength + sIovaOff) < sIovaLen) curLen = 0;
    i++;
  }
  return count;
}

/**
 * Undo a partial layout on failure: bus marks cleared, stashed offsets and lengths restored,
 * every entry's DMA fields reset. models __invalidate_sg() (drivers/iommu/dma-iommu.c)
 */
export function invalidateSg(sgl: Scatterlist, nents: number): void {
  for (const s of for_each_sg(sgl, nents)) {
    if (sg_dma_is_bus_address(s)) {
      sg_dma_unmark_bus_address(s);
    } else {
      if (s.dma_address !== DMA_MAPPING_ERROR) {
        s.offset = u32(s.offset + Number(BigInt.asUintN(32, s.dma_address)));
      }
      if (s.dma_length !== 0) s.length = s.dma_length;
    }
    s.dma_address = DMA_MAPPING_ERROR;
    s.dma_length = 0;
  }
}

export interface DmaSegment {
  readonly dma_address: DmaAddr;
  readonly dma_length: number;
  readonly bus: boolean;
}

/** The table's `nents` DMA segments, as `for_each_sgtable_dma_sg` reads them. */
export function sgtableDmaSegments(sgt: SgTable): DmaSegment[] {
  return Array.from(for_each_sgtable_dma_sg(sgt), (sg) => ({
    dma_address: sg.dma_address,
    dma_length: sg.dma_length,
    bus: sg_dma_is_bus_address(sg),
  }));
}
