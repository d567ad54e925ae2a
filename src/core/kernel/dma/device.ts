/**
 * @module device
 * What the DMA mapping layer knows about a device (`struct device` DMA fields): masks, segment
 * limits, coherency, and which IOMMU domain (if any) translates for it.
 */

import type { IommuPageTable } from "../../hw/iommu.ts";
import type { PciFunction } from "../../hw/machine.ts";
import type { DmaClient, IovaAllocator } from "../iommu/iova.ts";

export const DMA_BIT_MASK = (n: number): bigint =>
  n >= 64 ? (1n << 64n) - 1n : (1n << BigInt(n)) - 1n;

/** How the device's DMA is translated: `dma_go_direct()` is true for none and identity. */
export type DmaTranslation =
  | { readonly kind: "none" }
  | { readonly kind: "identity"; readonly table: IommuPageTable; readonly group: string }
  | {
      readonly kind: "dma";
      readonly table: IommuPageTable;
      readonly iova: IovaAllocator;
      readonly group: string;
      readonly strict: boolean;
    };

export interface DmaDevice {
  readonly fn: PciFunction;
  readonly name: string;
  /** `*dev->dma_mask`: 32 bits until the driver calls dma_set_mask (PCI core default). */
  dmaMask: bigint;
  coherentDmaMask: bigint;
  /** `dev->bus_dma_limit`; 0 = none. */
  busDmaLimit: bigint;
  /** `dma_get_max_seg_size()`: PCI default 64 KiB (pci_device_add sets it). */
  maxSegSize: number;
  /** `dma_get_seg_boundary()`: PCI default 0xffffffff. */
  segBoundaryMask: bigint;
  /** Cache-coherent DMA (always on x86). */
  readonly coherent: boolean;
  /** External-facing / untrusted: dma-iommu bounces unaligned buffers. */
  readonly untrusted: boolean;
  readonly translation: DmaTranslation;
  /** iommu_dma_alloc_iova's per-device state. */
  readonly client: DmaClient;
}

/** `min_not_zero(*dev->dma_mask, dev->bus_dma_limit)`. */
export function dmaLimit(dev: DmaDevice): bigint {
  if (dev.busDmaLimit === 0n) return dev.dmaMask;
  if (dev.dmaMask === 0n) return dev.busDmaLimit;
  // biome-ignore lint/complexity/useMathMinMax: bigints
  return dev.dmaMask < dev.busDmaLimit ? dev.dmaMask : dev.busDmaLimit;
}

/** `dma_set_mask_and_coherent()`: what a driver does at probe. */
export function dmaSetMaskAndCoherent(dev: DmaDevice, bits: number): void {
  dev.dmaMask = DMA_BIT_MASK(bits);
  dev.coherentDmaMask = DMA_BIT_MASK(bits);
}
