/**
 * @module fabric
 * Devices issuing DMA: a memory request from a requester at an address goes through the PCIe
 * hierarchy the way hardware routes it — straight across a switch to a peer's BAR, or up to the
 * root complex when no bridge below claims it or an ACS port redirects it — then through the
 * requester's IOMMU domain (translate or fault) to RAM or to a BAR. A faulting transfer changes no
 * byte. Every transfer is counted per link it crosses.
 *
 * A request is translated whole into physically contiguous runs, every run is checked, and then
 * each run is one copy: a 1 GiB transfer over 262,144 scattered pages is 262,144 memcpys with no
 * bigint arithmetic between them.
 */

import type { PhysAddr } from "./address.ts";
import { ACS } from "./config-space.ts";
import type { IommuPageTable, RunSink } from "./iommu.ts";
import type { HostBridge, Machine, PciFunction } from "./machine.ts";
import { MAX_EXACT_ADDR, type PhysicalMemory, type Region } from "./memory.ts";

export interface FabricPlatform {
  /** Live ACS control word of a function (null: no capability; undefined: unknown, taken as 0). */
  acsCtrl(fn: PciFunction): number | null | undefined;
  /** Whether the root complex forwards a peer request from one host bridge's device to another's BAR. */
  rootComplexP2p(from: HostBridge, to: HostBridge): boolean;
  /** `pci_bus_address - resource_start` for BARs below this host bridge (0 on x86). */
  busOffset(hb: HostBridge): bigint;
}

export interface DmaFault {
  readonly requester: string;
  readonly address: bigint;
  readonly write: boolean;
  readonly length: number;
  readonly reason: string;
  /** Where it was refused: an IOMMU domain, the root complex, a port. */
  readonly at: string;
}

export type Route =
  | { readonly kind: "peer"; readonly target: PciFunction; readonly via: PciFunction }
  | { readonly kind: "root-complex"; readonly redirectedAt?: PciFunction };

export type DmaResult =
  | {
      readonly ok: true;
      readonly route: Route;
      readonly target: Region;
      readonly data?: Uint8Array;
    }
  | { readonly ok: false; readonly fault: DmaFault };

interface BarBus {
  readonly fn: PciFunction;
  readonly bar: number;
  readonly busStart: bigint;
  readonly busEnd: bigint;
}

export class Fabric {
  readonly machine: Machine;
  readonly memory: PhysicalMemory;
  readonly faults: DmaFault[] = [];
  /** Bytes per link, keyed by the function below the link: `up` toward the root, `down` away. */
  readonly traffic = new Map<string, { up: bigint; down: bigint }>();
  readonly #platform: FabricPlatform;
  readonly #domains = new Map<PciFunction, IommuPageTable>();
  readonly #bars = new Map<HostBridge, BarBus[]>();

  constructor(machine: Machine, memory: PhysicalMemory, platform: FabricPlatform) {
    this.machine = machine;
    this.memory = memory;
    this.#platform = platform;
    for (const fn of machine.functions)
      for (const b of fn.desc.bars ?? []) {
        if (!b.mem) continue;
        const off = platform.busOffset(fn.hostBridge);
        const list = this.#bars.get(fn.hostBridge) ?? [];
        list.push({ fn, bar: b.index, busStart: b.start + off, busEnd: b.start + off + b.size });
        this.#bars.set(fn.hostBridge, list);
      }
  }

  /** Puts a requester behind an IOMMU domain (the kernel attaches its group's domain). null: none. */
  attach(fn: PciFunction, table: IommuPageTable | null): void {
    if (table) this.#domains.set(fn, table);
    else this.#domains.delete(fn);
  }

  domainOf(fn: PciFunction): IommuPageTable | undefined {
    return this.#domains.get(fn);
  }

  dmaWrite(requester: PciFunction, addr: bigint, data: Uint8Array): DmaResult {
    return this.#dma(requester, addr, data.length, true, data);
  }

  /** A read; the bytes land in `into` (at least `length` long) when given, else a new array. */
  dmaRead(requester: PciFunction, addr: bigint, length: number, into?: Uint8Array): DmaResult {
    return this.#dma(requester, addr, length, false, into);
  }

  #fault(
    requester: PciFunction,
    address: bigint,
    write: boolean,
    length: number,
    reason: string,
    at: string,
  ): DmaResult {
    const fault = { requester: requester.name, address, write, length, reason, at };
    this.faults.push(fault);
    return { ok: false, fault };
  }

  /** The BAR below `hb` that decodes bus address `addr`, if any. */
  #barAt(hb: HostBridge, addr: bigint): BarBus | undefined {
    return this.#bars.get(hb)?.find((b) => addr >= b.busStart && addr < b.busEnd);
  }

  #chain(fn: PciFunction): PciFunction[] {
    const out: PciFunction[] = [];
    for (let p: PciFunction | null = fn; p; p = p.parent) out.push(p);
    return out;
  }

  #redirects(fn: PciFunction, bits: number): boolean {
    const c = this.#platform.acsCtrl(fn);
    return c != null && (c & bits) !== 0;
  }

  /** How the hierarchy routes a request for bus address `addr` (before any IOMMU). */
  route(requester: PciFunction, addr: bigint, write: boolean): Route {
    const bar = this.#barAt(requester.hostBridge, addr);
    if (!bar || bar.fn === requester) return { kind: "root-complex" };
    const up = this.#chain(requester);
    const down = new Set(this.#chain(bar.fn));
    const lca = up.find((p) => p !== requester && down.has(p));
    if (!lca) return { kind: "root-complex" };
    // ingress ACS on the requester's side: P2P Request Redirect (and egress control) send the
    // request to the root complex; on the completer's side egress control and, for reads, the
    // completion redirect do the same
    for (const p of up) {
      if (p === lca) break;
      if (this.#redirects(p, ACS.RR | ACS.EC)) return { kind: "root-complex", redirectedAt: p };
    }
    for (const p of this.#chain(bar.fn)) {
      if (p === lca) break;
      if (this.#redirects(p, ACS.EC | (write ? 0 : ACS.CR)))
        return { kind: "root-complex", redirectedAt: p };
    }
    return { kind: "peer", target: bar.fn, via: lca };
  }

  #count(fn: PciFunction, upTo: PciFunction | null, dir: "up" | "down", bytes: number): void {
    const n = BigInt(bytes);
    for (let p: PciFunction | null = fn; p && p !== upTo; p = p.parent) {
      const t = this.traffic.get(p.name);
      if (t) t[dir] += n;
      else this.traffic.set(p.name, dir === "up" ? { up: n, down: 0n } : { up: 0n, down: n });
    }
  }

  // The runs of the request being served, as the IOMMU (or the absence of one) delivered them:
  // [first granule, offset into it, bytes] triples over granules of #runGranule bytes. Kept
  // between requests (it grows to the largest one) so a request allocates nothing per page.
  #runs = new Float64Array(3 * 64);
  #nRuns = 0;
  #runGranule = 4096;
  readonly #sink: RunSink = (g, off, len) => {
    let r = this.#runs;
    const k = 3 * this.#nRuns++;
    if (k + 3 > r.length) {
      r = new Float64Array(2 * r.length);
      r.set(this.#runs);
      this.#runs = r;
    }
    r[k] = g;
    r[k + 1] = off;
    r[k + 2] = len;
  };

  /** Physical address `skip` bytes into run `k` (an index into #runs), exactly. */
  #bigPhys(k: number, skip: number): bigint {
    return BigInt(this.#runs[k]!) * BigInt(this.#runGranule) + BigInt(this.#runs[k + 1]! + skip);
  }

  #dma(
    requester: PciFunction,
    addr: bigint,
    length: number,
    write: boolean,
    /** Write: the bytes to write. Read: where to put them (optional). */
    data?: Uint8Array,
  ): DmaResult {
    const route = this.route(requester, addr, write);
    if (route.kind === "peer") {
      const phys = addr - this.#platform.busOffset(requester.hostBridge);
      const region = this.memory.contains(phys, BigInt(length));
      if (!region || region.owner !== route.target)
        return this.#fault(
          requester,
          addr,
          write,
          length,
          "request runs past the end of the peer's BAR",
          route.target.name,
        );
      this.#count(requester, route.via, "up", length);
      this.#count(route.target, route.via, "down", length);
      if (write) {
        this.memory.write(phys as PhysAddr, data!);
        return { ok: true, route, target: region };
      }
      const buf = data ? data.subarray(0, length) : new Uint8Array(length);
      if (phys + BigInt(length) <= BigInt(MAX_EXACT_ADDR))
        this.memory.readAt(Number(phys), buf, 0, length);
      else buf.set(this.memory.read(phys as PhysAddr, length));
      return { ok: true, route, target: region, data: buf };
    }
    // up to the root complex: IOMMU translation of the whole request into physically contiguous
    // runs, every run checked against the memory map, and only then any byte moved
    const table = this.#domains.get(requester);
    // a zero-length request is checked as if it were one byte long, and moves nothing
    const probe = Math.max(length, 1);
    this.#nRuns = 0;
    let iommuFault: { readonly at: number; readonly reason: string } | null = null;
    if (table) {
      this.#runGranule = Number(table.granule);
      iommuFault = table.translateRuns(addr, probe, write, this.#sink);
    } else {
      const phys = addr - this.#platform.busOffset(requester.hostBridge);
      if (phys < 0n)
        return this.#fault(
          requester,
          addr,
          write,
          length,
          `no memory or BAR at physical 0x${phys.toString(16)} (unsupported request)`,
          "root complex",
        );
      this.#runGranule = 4096;
      this.#sink(Number(phys >> 12n), Number(phys & 4095n), probe);
    }
    const mem = this.memory;
    const G = this.#runGranule;
    const runs = this.#runs;
    const nRuns = 3 * this.#nRuns;
    const regions = mem.regions;
    let first: Region | undefined;
    let bars: Map<PciFunction, number> | undefined;
    let at = 0;
    for (let k = 0; k < nRuns; k += 3) {
      const len = runs[k + 2]!;
      const p = runs[k]! * G + runs[k + 1]!;
      const exact = p + len <= MAX_EXACT_ADDR;
      for (let done = 0; done < len; ) {
        let region: Region | undefined;
        let n = 0;
        if (exact) {
          const i = mem.indexAt(p + done);
          region = regions[i];
          if (region) n = Math.min(len - done, mem.endOf(i) - (p + done));
        } else {
          const bp = this.#bigPhys(k, done);
          region = mem.regionAt(bp);
          if (region)
            n = Number(region.end - bp < BigInt(len - done) ? region.end - bp : len - done);
        }
        if (!region)
          return this.#fault(
            requester,
            addr + BigInt(at + done),
            write,
            length,
            `no memory or BAR at physical 0x${this.#bigPhys(k, done).toString(16)} (unsupported request)`,
            "root complex",
          );
        if (region.kind === "bar") {
          const to = region.owner!;
          if (
            to !== requester &&
            !this.#platform.rootComplexP2p(requester.hostBridge, to.hostBridge)
          )
            return this.#fault(
              requester,
              addr + BigInt(at + done),
              write,
              length,
              `the root complex does not forward peer-to-peer requests to ${to.name}`,
              `pci${requester.hostBridge.id}`,
            );
          bars ??= new Map();
          bars.set(to, (bars.get(to) ?? 0) + n);
        }
        first ??= region;
        done += n;
      }
      at += len;
    }
    if (iommuFault)
      return this.#fault(
        requester,
        addr + BigInt(iommuFault.at),
        write,
        length,
        `IOMMU fault: ${iommuFault.reason}`,
        `IOMMU domain of ${requester.name}`,
      );
    this.#count(requester, null, "up", length);
    if (bars) for (const [fn, n] of bars) this.#count(fn, null, "down", n);
    const out = write ? undefined : data ? data.subarray(0, length) : new Uint8Array(length);
    at = 0;
    for (let k = 0; k < (length > 0 ? nRuns : 0); k += 3) {
      const len = runs[k + 2]!;
      const p = runs[k]! * G + runs[k + 1]!;
      if (p + len <= MAX_EXACT_ADDR) {
        if (write) mem.writeAt(p, data!, at, len);
        else mem.readAt(p, out!, at, len);
      } else if (write) mem.write(this.#bigPhys(k, 0) as PhysAddr, data!.subarray(at, at + len));
      else out!.set(mem.read(this.#bigPhys(k, 0) as PhysAddr, len), at);
      at += len;
    }
    return { ok: true, route, target: first!, ...(out ? { data: out } : {}) };
  }
}
