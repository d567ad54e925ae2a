/**
 * @module dma-buf
 * The dma-buf core (drivers/dma-buf/dma-buf.c): objects and lifecycle (./dma-buf.ts), files and
 * fd tables (./file.ts), attach/map (./attachment.ts), fences and the reservation object
 * (./resv.ts), the phys_vec mapping helper for MMIO exporters (./phys-vec.ts), and a small
 * system-memory exporter (./sysmem-exporter.ts).
 */

export * from "./attachment.ts";
export * from "./dma-buf.ts";
export * from "./file.ts";
export * from "./phys-vec.ts";
export * from "./resv.ts";
export * from "./sysmem-exporter.ts";
