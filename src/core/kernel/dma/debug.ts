/**
 * @module debug
 * A model of CONFIG_DMA_API_DEBUG (kernel/dma/debug.c): every mapping is recorded, and misuse is
 * reported as data — unmapping what was not mapped (or twice), with another size, direction or
 * function, syncing outside a mapping, unchecked mapping errors, mappings leaked at release. In
 * strict mode the first report throws.
 */

import type { DmaAddr, PhysAddr } from "../../hw/address.ts";
import { DMA_MAPPING_ERROR, for_each_sg, type SgTable } from "../lib/scatterlist.ts";
import type { DmaDevice } from "./device.ts";
import type { DmaDirection } from "./mapping.ts";

export type DmaDebugCode =
  | "unmap-not-mapped"
  | "double-unmap"
  | "unmap-wrong-size"
  | "unmap-wrong-direction"
  | "unmap-wrong-function"
  | "sync-not-mapped"
  | "sync-out-of-range"
  | "sync-wrong-direction"
  | "map-error-not-checked"
  | "leak-at-release"
  | "cpu-access-without-sync"
  | "map-page-zone-device";

export interface DmaDebugReport {
  readonly code: DmaDebugCode;
  readonly device: string;
  readonly message: string;
}

export class DmaDebugError extends Error {
  readonly report: DmaDebugReport;
  constructor(r: DmaDebugReport) {
    super(`DMA-API: ${r.device}: ${r.message}`);
    this.name = "DmaDebugError";
    this.report = r;
  }
}

type Kind = "single" | "resource" | "sg";

interface Entry {
  readonly kind: Kind;
  readonly dma: bigint;
  readonly size: bigint;
  readonly dir: DmaDirection;
  readonly phys?: PhysAddr;
  checked: boolean;
  /** The device wrote into it since the last sync for the CPU. */
  deviceDirty: boolean;
}

const hex = (v: bigint) => `0x${v.toString(16).padStart(16, "0")}`;

export class DmaDebug {
  readonly reports: DmaDebugReport[] = [];
  readonly strict: boolean;
  /** Per device, per DMA address: every live mapping there (the same page may be mapped twice). */
  readonly #live = new Map<string, Map<bigint, Entry[]>>();
  readonly #freed = new Map<string, Set<bigint>>();

  constructor(opts: { strict?: boolean } = {}) {
    this.strict = opts.strict ?? false;
  }

  #report(dev: DmaDevice, code: DmaDebugCode, message: string): void {
    const r = { code, device: dev.name, message };
    this.reports.push(r);
    if (this.strict) throw new DmaDebugError(r);
  }

  #of(dev: DmaDevice): Map<bigint, Entry[]> {
    let m = this.#live.get(dev.name);
    if (!m) {
      m = new Map();
      this.#live.set(dev.name, m);
    }
    return m;
  }

  #add(dev: DmaDevice, e: Entry): void {
    const m = this.#of(dev);
    const list = m.get(e.dma);
    if (list) list.push(e);
    else m.set(e.dma, [e]);
  }

  *#entries(dev: DmaDevice): Generator<Entry> {
    for (const list of this.#of(dev).values()) yield* list;
  }

  /** models debug_dma_map_phys(). A failed mapping is not recorded. */
  mapped(
    dev: DmaDevice,
    e: { kind: Kind; dma: DmaAddr; size: bigint; dir: DmaDirection; phys?: PhysAddr },
  ): void {
    if (e.dma === DMA_MAPPING_ERROR) return;
    this.#add(dev, { ...e, checked: false, deviceDirty: false });
    this.#freed.get(dev.name)?.delete(e.dma);
  }

  /** models debug_dma_mapping_error(): the driver looked at the result. */
  checkedError(dev: DmaDevice, dma: DmaAddr): void {
    for (const e of this.#of(dev).get(dma) ?? []) e.checked = true;
  }

  mappedSg(dev: DmaDevice, sgt: SgTable, nents: number, dir: DmaDirection): void {
    for (const s of for_each_sg(sgt.sgl!, nents)) {
      this.#add(dev, {
        kind: "sg",
        dma: s.dma_address,
        size: BigInt(s.dma_length),
        dir,
        checked: true,
        deviceDirty: false,
      });
      this.#freed.get(dev.name)?.delete(s.dma_address);
    }
  }

  /** models check_unmap(). */
  unmapped(dev: DmaDevice, u: { kind: Kind; dma: DmaAddr; size: bigint; dir: DmaDirection }): void {
    const live = this.#of(dev);
    const list = live.get(u.dma);
    // the kernel's bucket_find_exact: prefer the entry that matches size, direction and kind
    const e =
      list?.find((x) => x.size === u.size && x.dir === u.dir && x.kind === u.kind) ??
      list?.find((x) => x.size === u.size) ??
      list?.[0];
    if (!e || !list) {
      const twice = this.#freed.get(dev.name)?.has(u.dma);
      this.#report(
        dev,
        twice ? "double-unmap" : "unmap-not-mapped",
        `device driver tries to free DMA memory it has not allocated [device address=${hex(u.dma)}] [size=${u.size} bytes]${twice ? " (already unmapped)" : ""}`,
      );
      return;
    }
    if (e.size !== u.size)
      this.#report(
        dev,
        "unmap-wrong-size",
        `device driver frees DMA memory with different size [device address=${hex(u.dma)}] [map size=${e.size} bytes] [unmap size=${u.size} bytes]`,
      );
    if (e.dir !== u.dir)
      this.#report(
        dev,
        "unmap-wrong-direction",
        `device driver frees DMA memory with different direction [device address=${hex(u.dma)}] [size=${u.size} bytes] [mapped with ${e.dir}] [unmapped with ${u.dir}]`,
      );
    if (e.kind !== u.kind)
      this.#report(
        dev,
        "unmap-wrong-function",
        `device driver frees DMA memory with wrong function [device address=${hex(u.dma)}] [size=${u.size} bytes] [mapped as ${e.kind}] [unmapped as ${u.kind}]`,
      );
    if (!e.checked && e.kind !== "sg")
      this.#report(
        dev,
        "map-error-not-checked",
        `device driver failed to check map error [device address=${hex(u.dma)}] [size=${u.size} bytes] [mapped as ${e.kind}]`,
      );
    list.splice(list.indexOf(e), 1);
    if (list.length === 0) live.delete(u.dma);
    let f = this.#freed.get(dev.name);
    if (!f) {
      f = new Set();
      this.#freed.set(dev.name, f);
    }
    f.add(u.dma);
  }

  unmappedSg(dev: DmaDevice, sgt: SgTable, dir: DmaDirection): void {
    for (const s of for_each_sg(sgt.sgl!, sgt.nents))
      this.unmapped(dev, { kind: "sg", dma: s.dma_address, size: BigInt(s.dma_length), dir });
  }

  /** models check_sync(). */
  synced(
    dev: DmaDevice,
    dma: DmaAddr,
    size: bigint,
    dir: DmaDirection,
    to: "cpu" | "device",
  ): void {
    let hit: Entry | undefined;
    for (const e of this.#entries(dev)) if (dma >= e.dma && dma < e.dma + e.size) hit = e;
    if (!hit) {
      this.#report(
        dev,
        "sync-not-mapped",
        `device driver tries to sync DMA memory it has not allocated [device address=${hex(dma)}] [size=${size} bytes]`,
      );
      return;
    }
    if (dma + size > hit.dma + hit.size)
      this.#report(
        dev,
        "sync-out-of-range",
        `device driver syncs DMA memory outside allocated range [device address=${hex(dma)}] [allocation size=${hit.size} bytes] [sync offset+size=${dma - hit.dma + size}]`,
      );
    if (to === "cpu") hit.deviceDirty = false;
    if (hit.dir !== dir && hit.dir !== "bidirectional")
      this.#report(
        dev,
        "sync-wrong-direction",
        `device driver syncs DMA memory with different direction for ${to} [mapped with ${hit.dir}] [synced with ${dir}]`,
      );
  }

  /** dma_map_page_attrs() under DMA_API_DEBUG refuses ZONE_DEVICE (e.g. P2P) pages. */
  zoneDevicePage(dev: DmaDevice, pfn: bigint): void {
    this.#report(
      dev,
      "map-page-zone-device",
      `dma_map_page of a ZONE_DEVICE page (pfn 0x${pfn.toString(16)}): P2P memory must be mapped with an sg table so its map type is checked`,
    );
  }

  /** The device wrote [dma, dma+len): the CPU must sync before it reads the memory behind it. */
  deviceWrote(dev: DmaDevice, dma: bigint, len: bigint): void {
    for (const e of this.#entries(dev))
      if (dma < e.dma + e.size && e.dma < dma + len) e.deviceDirty = true;
  }

  /**
   * The CPU reads physical [phys, phys+len): any streaming single mapping over it that the device
   * wrote and nobody synced for the CPU is a report (the kernel's rule; with a non-coherent device
   * or a bounce buffer the CPU would read stale data).
   */
  cpuRead(phys: bigint, len: bigint): void {
    for (const [name, live] of this.#live)
      for (const e of [...live.values()].flat()) {
        if (!e.deviceDirty || e.phys === undefined || e.kind === "resource") continue;
        if (phys < e.phys + e.size && e.phys < phys + len) {
          const r = {
            code: "cpu-access-without-sync" as const,
            device: name,
            message: `CPU reads DMA memory the device wrote without dma_sync_*_for_cpu() or unmap [device address=${hex(e.dma)}] [size=${e.size} bytes]`,
          };
          this.reports.push(r);
          if (this.strict) throw new DmaDebugError(r);
        }
      }
  }

  /** models dma_debug_device_change(BUS_NOTIFY_UNBOUND_DRIVER): leaks at release. */
  released(dev: DmaDevice): number {
    const all = [...this.#entries(dev)];
    const n = all.length;
    if (n > 0)
      this.#report(
        dev,
        "leak-at-release",
        `device driver has pending DMA allocations while released from device [count=${n}]; one of them: [device address=${hex(all[0]!.dma)}] [size=${all[0]!.size} bytes]`,
      );
    return n;
  }

  liveMappings(dev: DmaDevice): number {
    return [...this.#entries(dev)].length;
  }

  /** Every live entry of every device (the leak check's view of `dma_entry_hash`). */
  allLive(): {
    device: string;
    kind: Kind;
    dma: bigint;
    size: bigint;
    dir: DmaDirection;
    phys?: PhysAddr;
  }[] {
    const out: ReturnType<DmaDebug["allLive"]> = [];
    for (const [device, live] of this.#live)
      for (const list of live.values())
        for (const e of list)
          out.push({
            device,
            kind: e.kind,
            dma: e.dma,
            size: e.size,
            dir: e.dir,
            ...(e.phys !== undefined ? { phys: e.phys } : {}),
          });
    return out;
  }
}
