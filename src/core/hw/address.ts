/**
 * @module address
 * 64-bit addresses as bigint with distinct brands: the bug this project explains is handing a
 * device one kind of address where it needed another.
 */

declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

/** CPU physical address (what /proc/iomem and sysfs `resource` show). */
export type PhysAddr = Brand<bigint, "PhysAddr">;
/** PCI bus address (what a peer device puts on the wire without an IOMMU). */
export type BusAddr = Brand<bigint, "BusAddr">;
/** I/O virtual address allocated in an IOMMU domain. */
export type Iova = Brand<bigint, "Iova">;
/** Whatever the DMA API handed a device: one of the above, by mapping path. */
export type DmaAddr = Brand<bigint, "DmaAddr">;

export const physAddr = (v: bigint): PhysAddr => v as PhysAddr;
export const busAddr = (v: bigint): BusAddr => v as BusAddr;
export const iova = (v: bigint): Iova => v as Iova;
export const dmaAddr = (v: bigint): DmaAddr => v as DmaAddr;

export function hex(v: bigint, width = 0): string {
  return `0x${v.toString(16).padStart(width, "0")}`;
}
