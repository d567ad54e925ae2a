/**
 * @module page
 * `struct page` as far as DMA cares: a page frame number and, for ZONE_DEVICE memory, the
 * `dev_pagemap` it belongs to. P2P pages (MEMORY_DEVICE_PCI_P2PDMA) point at their provider.
 * Memory with no `struct page` at all (a BAR mapped with dma_map_resource) has no Page.
 */

import type { BusAddr, PhysAddr } from "../../hw/address.ts";
import type { PciFunction } from "../../hw/machine.ts";

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PAGE_SIZE_N = 4096n;

/** `struct p2pdma_provider` / 6.1's per-pgmap provider: the BAR and its CPU→bus offset. */
export interface P2pProvider {
  readonly owner: PciFunction;
  readonly bar: number;
  /** `pci_bus_address(bar) - pci_resource_start(bar)`; 0 on x86 and in QEMU. */
  readonly busOffset: bigint;
}

/** `struct dev_pagemap` of type MEMORY_DEVICE_PCI_P2PDMA. */
export interface DevPagemap {
  /** Distinct per `pci_p2pdma_add_resource` call: pages of different pgmaps never merge. */
  readonly id: number;
  readonly type: "pci-p2pdma";
  readonly provider: P2pProvider;
  /** CPU physical range covered. */
  readonly start: PhysAddr;
  readonly end: PhysAddr;
}

export interface Page {
  readonly pfn: bigint;
  /** null for ordinary (RAM) pages. */
  readonly pgmap: DevPagemap | null;
}

export const pageToPhys = (p: Page): PhysAddr => (p.pfn << BigInt(PAGE_SHIFT)) as PhysAddr;

export function isP2pdmaPage(p: Page): boolean {
  return p.pgmap?.type === "pci-p2pdma";
}

/** `zone_device_pages_have_same_pgmap()` together with the ordinary-page rule of sg merging. */
export function samePageKind(a: Page, b: Page): boolean {
  return a.pgmap === b.pgmap;
}

export type { BusAddr };

/**
 * What the CPU can do with memory, the distinction the 2021 thread turns on:
 * - `direct-map`: ordinary RAM; `page_address()` works and an importer calling `sg_page()` gets
 *   a page it may kmap;
 * - `mmio-page`: ZONE_DEVICE P2P memory; there is a `struct page` (so `sg_page()` returns one), but
 *   the bytes are a device BAR: uncached MMIO, not memory the kernel may touch like RAM;
 * - `no-page`: a BAR handed out by address only (e.g. `dma_map_resource`): no `struct page`, so an
 *   importer that calls `sg_page()` gets NULL.
 */
export type CpuReach = "direct-map" | "mmio-page" | "no-page";

export function cpuReach(page: Page | null): CpuReach {
  if (!page) return "no-page";
  return page.pgmap ? "mmio-page" : "direct-map";
}
