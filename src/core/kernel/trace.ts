/**
 * @module trace
 * A structured, kernel-style trace of what the model does, for `peerbuf run` and the web page's
 * timeline: one event per step a user would want to see (an export, an attach with its
 * `peer2peer`, a P2PDMA verdict, a map with each DMA address and what kind of address it is,
 * bytes moved, a fault). Components emit into the `Tracer` they were given; nothing is recorded
 * when no one listens, so the hot paths stay cheap.
 */

/** What a DMA address is, as an importer's device puts it on the wire. */
export type DmaAddrKind =
  /** A PCI bus address of a peer's BAR (P2PDMA BUS_ADDR, or a raw BAR address): no IOMMU. */
  | "bus-address"
  /** An I/O virtual address the IOMMU translates. */
  | "iova"
  /** A CPU physical address used as is (no IOMMU, or identity / passthrough). */
  | "physical";

export interface TraceEvent {
  /** Subsystem and event, `subsys:event` (`dma_buf:export`, `p2pdma:verdict`, `dma:map`, ...). */
  readonly ev: string;
  /** The line as the trace prints it. */
  readonly msg: string;
  /** Machine-readable details (bigints allowed). */
  readonly data?: Readonly<Record<string, unknown>>;
}

/** Collects events while enabled. */
export class Tracer {
  readonly events: TraceEvent[] = [];
  enabled: boolean;

  constructor(enabled = false) {
    this.enabled = enabled;
  }

  emit(ev: string, msg: string, data?: Readonly<Record<string, unknown>>): void {
    if (!this.enabled) return;
    this.events.push(data === undefined ? { ev, msg } : { ev, msg, data });
  }
}

/** A tracer that records nothing, for components built without one. */
export const NO_TRACE: Tracer = new Tracer(false);

/**
 * What kind of address a device was handed: a P2PDMA bus address (marked so in the table, or
 * written raw by an exporter that bypasses the DMA API), an IOVA when the device sits behind a
 * translating IOMMU domain, else a CPU physical address.
 */
export function dmaAddrKind(
  translation: "none" | "identity" | "dma",
  busAddress: boolean,
): DmaAddrKind {
  if (busAddress) return "bus-address";
  return translation === "dma" ? "iova" : "physical";
}
