/**
 * @module leaks
 * What is still alive once everything should be closed. A component that owns kernel objects
 * (a System with IOVAs and IOMMU mappings, the dma-buf core with buffers, attachments, mappings
 * and pins, a process with fds, a driver with its tables and MRs) implements `LeakSource`;
 * `leakReport()` asks each and returns findings as data. An empty report after a scenario is the
 * leak check.
 */

export interface Leak {
  /** The kind of object (`iova`, `iommu-mapping`, `dma-debug-entry`, `dma-buf`, `attachment`,
   *  `sg-mapping`, `pin`, `fd`, `page-ref`, `mr`, ...). */
  readonly kind: string;
  /** Who holds it (`system`, `dma-buf core`, `process trainer`, `habanalabs 0000:03:00.0`, ...). */
  readonly owner: string;
  /** One line naming the object and why it counts as leaked. */
  readonly detail: string;
}

/** A component that can say what it still holds. */
export interface LeakSource {
  leaks(): readonly Leak[];
}

/** Every leak of every source, in source order. */
export function leakReport(sources: Iterable<LeakSource>): Leak[] {
  const out: Leak[] = [];
  for (const s of sources) out.push(...s.leaks());
  return out;
}

/**
 * `sg-mapping` leaks of an exporter: each table its map_dma_buf handed out that no unmap_dma_buf
 * took back. `of(t)`, when given, names what the table maps (`bo#3 (vram)`).
 */
export function unmappedTableLeaks<T extends { readonly name: string; readonly nents: number }>(
  owner: string,
  tables: Iterable<T>,
  of?: (t: T) => string,
): Leak[] {
  return [...tables].map((t) => ({
    kind: "sg-mapping",
    owner,
    detail: `${t.name}: ${t.nents} DMA segment(s)${of ? ` of ${of(t)}` : ""} handed out by map_dma_buf and never unmapped`,
  }));
}
