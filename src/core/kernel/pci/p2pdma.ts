/**
 * @module p2pdma
 * Model of drivers/pci/p2pdma.c: the P2P decision (map type and distance) between a provider
 * and a client, multi-client distances, provider selection, and the per-provider map-type cache.
 * One implementation, used by the analyser and by the DMA model alike.
 */

import { devfn } from "../../hw/bdf.ts";
import { ACS } from "../../hw/config-space.ts";
import type { Machine, PciFunction } from "../../hw/machine.ts";
import {
  ANY_DEVICE,
  type KernelProfile,
  type MapTypeName,
  REQ_SAME_HOST_BRIDGE,
} from "../profile.ts";

export type P2pMapType = "not-supported" | "bus-address" | "through-host-bridge";

/** How to treat facts the input did not carry. */
export interface Assumptions {
  /** ACS control of a tested node whose word is unknown: redirecting or not. */
  readonly unknownAcsRedirects: (fn: PciFunction) => boolean;
  /** CPU vendor/family unknown: does `cpu_supports_p2pdma()` say yes. */
  readonly unknownCpuSupports: boolean;
}

export interface CpuIdentity {
  readonly vendor?: string;
  readonly family?: number;
}

/** The kernel's PCI view the decision reads: live ACS control words, CPU, p2pdma state. */
export interface PciView {
  readonly machine: Machine;
  readonly profile: KernelProfile;
  readonly cpu: CpuIdentity;
  /** Live ACS control word; null: no ACS capability; undefined: unknown. */
  acsCtrl(fn: PciFunction): number | null | undefined;
  /** Whether the provider has `struct pci_p2pdma` state (it registered p2pmem). */
  hasP2pdmaState(fn: PciFunction): boolean;
  /** `pci_has_p2pmem()`: state and published (and, per profile, a pool). */
  hasPublishedP2pmem(fn: PciFunction): boolean;
}

export interface HostBridgeCheck {
  readonly hostBridge: string;
  /** `pci_host_bridge_dev()`: the function that stands for it, or null. */
  readonly representative: string | null;
  readonly representativeId: string | null;
  readonly allowed: boolean;
  readonly reason:
    | "allowlisted"
    | "not-allowlisted"
    | "requires-same-host-bridge"
    | "no-representative";
}

export interface CalcResult {
  readonly mapType: P2pMapType;
  readonly distance: number;
  /** Common upstream bridge (or the function itself), null when none. */
  readonly common: PciFunction | null;
  /** Nodes whose ACS control redirects, in the kernel's order (provider side first). */
  readonly acsRedirect: readonly PciFunction[];
  /** Every node the kernel tested for redirect, in order. */
  readonly tested: readonly PciFunction[];
  /** Tested nodes whose ACS word is unknown. */
  readonly unknownAcs: readonly PciFunction[];
  readonly cpuSupports: boolean | undefined;
  readonly hostBridges: readonly HostBridgeCheck[];
  /** What a verbose call prints (dev_warn/pci_warn/pci_info lines). */
  readonly messages: readonly string[];
}

export const NO_ASSUMPTIONS: Assumptions = {
  unknownAcsRedirects: () => false,
  unknownCpuSupports: false,
};

/** `pci_upstream_bridge()`: a VF's is its PF's; null on a root bus. */
export function upstreamBridge(fn: PciFunction): PciFunction | null {
  const dev = fn.physfn ?? fn;
  return dev.parent;
}

/** `pci_name()` prefixed with the bound driver or `pci`, as dev_warn prints it. */
function devPrefix(fn: PciFunction): string {
  return `${fn.desc.driver ?? "pci"} ${fn.name}`;
}

const hex4 = (v: number | undefined): string => (v ?? 0).toString(16).padStart(4, "0");

/** `cpu_supports_p2pdma()`: x86 AMD (not Hygon) family 0x17 and later, read from CPU 0. */
export function cpuSupportsP2pdma(cpu: CpuIdentity): boolean | undefined {
  if (cpu.vendor === undefined) return undefined;
  if (cpu.vendor !== "AuthenticAMD") return false;
  if (cpu.family === undefined) return undefined;
  return cpu.family >= 0x17;
}

/** `pci_host_bridge_dev()`: first root-bus function if it is 00.0, else if it is a Root Port. */
export function hostBridgeRepresentative(view: PciView, fn: PciFunction): PciFunction | null {
  const first = fn.hostBridge.rootFunctions[0];
  if (!first) return null;
  if (devfn(first.bdf) === 0) return first;
  if (view.profile.hostBridgeRootPortFallback && first.desc.pcieType === "root-port") return first;
  return null;
}

/** `__host_bridge_whitelist()` for one host bridge. */
function checkHostBridge(view: PciView, fn: PciFunction, sameHostBridge: boolean): HostBridgeCheck {
  const hb = `pci${fn.hostBridge.id}`;
  const rep = hostBridgeRepresentative(view, fn);
  if (!rep)
    return {
      hostBridge: hb,
      representative: null,
      representativeId: null,
      allowed: false,
      reason: "no-representative",
    };
  const id = `${hex4(rep.desc.vendor)}:${hex4(rep.desc.device)}`;
  for (const e of view.profile.allowlist) {
    if (e.vendor !== rep.desc.vendor) continue;
    if (e.device !== ANY_DEVICE && e.device !== rep.desc.device) continue;
    const needSame = (e.flags & REQ_SAME_HOST_BRIDGE) !== 0;
    if (needSame && !sameHostBridge)
      return {
        hostBridge: hb,
        representative: rep.name,
        representativeId: id,
        allowed: false,
        reason: "requires-same-host-bridge",
      };
    return {
      hostBridge: hb,
      representative: rep.name,
      representativeId: id,
      allowed: true,
      reason: "allowlisted",
    };
  }
  return {
    hostBridge: hb,
    representative: rep.name,
    representativeId: id,
    allowed: false,
    reason: "not-allowlisted",
  };
}

/** `host_bridge_whitelist()`: one check when both share a host bridge, else both must pass. */
export function hostBridgeAllowed(
  view: PciView,
  provider: PciFunction,
  client: PciFunction,
  warn: boolean,
  messages: string[],
): HostBridgeCheck[] {
  const checks: HostBridgeCheck[] = [];
  const note = (c: HostBridgeCheck) => {
    checks.push(c);
    if (!c.allowed && c.reason === "not-allowlisted" && warn && c.representative) {
      const rep = view.machine.byBdf(c.representative)!;
      messages.push(
        `${devPrefix(rep)}: Host bridge not in P2PDMA ${view.profile.allowlistWord}: ${c.representativeId}`,
      );
    }
    return c.allowed;
  };
  if (provider.hostBridge === client.hostBridge) note(checkHostBridge(view, provider, true));
  else if (note(checkHostBridge(view, provider, false))) note(checkHostBridge(view, client, false));
  return checks;
}

/** `pci_bridge_has_acs_redir()` on any node: RR, CR or EC set in the live control word. */
function redirects(
  view: PciView,
  fn: PciFunction,
  assume: Assumptions,
  unknown: PciFunction[],
): boolean {
  const ctrl = view.acsCtrl(fn);
  if (ctrl === null) return false;
  if (ctrl === undefined) {
    unknown.push(fn);
    return assume.unknownAcsRedirects(fn);
  }
  return (ctrl & (ACS.RR | ACS.CR | ACS.EC)) !== 0;
}

/** The `pci=disable_acs_redir=` list as the kernel prints it: 128-byte buffer, `;` joined. */
export function acsHintList(names: readonly string[]): string {
  const full = names.map((n) => `${n};`).join("");
  if (full.length >= 128) return full.slice(0, 127);
  return full.slice(0, -1);
}

/** Models calc_map_type_and_dist(): the decision for one (provider, client) pair. */
export function calcMapTypeAndDist(
  view: PciView,
  provider: PciFunction,
  client: PciFunction,
  verbose: boolean,
  assume: Assumptions = NO_ASSUMPTIONS,
): CalcResult {
  const messages: string[] = [];
  const hits: PciFunction[] = [];
  const tested: PciFunction[] = [];
  const unknown: PciFunction[] = [];
  let common: PciFunction | null = null;
  let distA = 0;
  let distB = 0;
  for (let a: PciFunction | null = provider; a; a = upstreamBridge(a)) {
    distB = 0;
    tested.push(a);
    if (redirects(view, a, assume, unknown)) hits.push(a);
    let b: PciFunction | null = client;
    while (b) {
      if (a === b) {
        common = a;
        break;
      }
      b = upstreamBridge(b);
      distB++;
    }
    if (common) break;
    distA++;
  }
  let acsRedirect = false;
  let mapType: P2pMapType = "through-host-bridge";
  const distance = distA + distB;
  let done = false;
  if (common) {
    for (let b: PciFunction | null = client; b && b !== common; b = upstreamBridge(b)) {
      tested.push(b);
      if (redirects(view, b, assume, unknown)) hits.push(b);
    }
    if (hits.length === 0) {
      mapType = "bus-address";
      done = true;
    } else {
      if (verbose) {
        messages.push(
          `${devPrefix(client)}: ACS redirect is set between the client and provider (${provider.name})`,
        );
        messages.push(
          `${devPrefix(client)}: to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir=${acsHintList(hits.map((h) => h.name))}`,
        );
      }
      acsRedirect = true;
    }
  } else {
    // hits collected without a common ancestor are never used by the kernel
    hits.length = 0;
  }
  let cpu: boolean | undefined;
  let hostBridges: HostBridgeCheck[] = [];
  if (!done) {
    cpu = cpuSupportsP2pdma(view.cpu);
    const cpuOk = cpu ?? assume.unknownCpuSupports;
    if (!cpuOk) {
      hostBridges = hostBridgeAllowed(view, provider, client, acsRedirect, verbose ? messages : []);
      if (!hostBridges.every((c) => c.allowed)) {
        if (verbose)
          messages.push(
            `${devPrefix(client)}: cannot be used for peer-to-peer DMA as the client and provider (${provider.name}) do not share an upstream bridge or ${view.profile.allowlistWord}ed host bridge`,
          );
        mapType = "not-supported";
      }
    }
  }
  return {
    mapType,
    distance,
    common,
    acsRedirect: hits,
    tested,
    unknownAcs: unknown,
    cpuSupports: cpu,
    hostBridges,
    messages,
  };
}

/** Per-provider map-type cache (`p2pdma->map_types`), keyed by the client's domain/bus/devfn. */
export class MapTypeCache {
  readonly #byProvider = new Map<PciFunction, Map<number, P2pMapType>>();

  /** `(domain << 16) | (bus << 8) | devfn`, as pci_p2pdma's xarray index. */
  static key(client: PciFunction): number {
    return client.bdf.domain * 0x10000 + (client.bdf.bus << 8) + devfn(client.bdf);
  }

  store(provider: PciFunction, client: PciFunction, t: P2pMapType): void {
    let m = this.#byProvider.get(provider);
    if (!m) {
      m = new Map();
      this.#byProvider.set(provider, m);
    }
    m.set(MapTypeCache.key(client), t);
  }

  lookup(provider: PciFunction, client: PciFunction): P2pMapType | undefined {
    return this.#byProvider.get(provider)?.get(MapTypeCache.key(client));
  }

  /** Releasing the provider's p2pdma state drops its cache. */
  release(provider: PciFunction): void {
    this.#byProvider.delete(provider);
  }
}

/** The kernel state the P2P code keeps between calls. */
export class P2pdma {
  readonly view: PciView;
  readonly cache = new MapTypeCache();
  readonly log: string[] = [];

  constructor(view: PciView) {
    this.view = view;
  }

  /** calc + cache write-back, as every caller in the kernel does. */
  calc(
    provider: PciFunction,
    client: PciFunction,
    verbose: boolean,
    assume?: Assumptions,
  ): CalcResult {
    const r = calcMapTypeAndDist(this.view, provider, client, verbose, assume);
    if (this.view.hasP2pdmaState(provider)) this.cache.store(provider, client, r.mapType);
    if (verbose) this.log.push(...r.messages);
    return r;
  }

  /** Models pci_p2pdma_distance_many(); clients are PCI functions (null = a non-PCI device). */
  distanceMany(
    provider: PciFunction,
    clients: readonly (PciFunction | null)[],
    verbose: boolean,
  ): number {
    if (clients.length === 0) return -1;
    let total = 0;
    let bad = false;
    for (const c of clients) {
      if (!c) {
        if (verbose) this.log.push("cannot be used for peer-to-peer DMA as it is not a PCI device");
        return -1;
      }
      const r = this.calc(provider, c, verbose);
      if (r.mapType === "not-supported") bad = true;
      if (bad && !verbose) break;
      total += r.distance;
    }
    return bad ? -1 : total;
  }

  /** `pci_p2pdma_map_type()` from the DMA path: cached value, else a verbose calc. */
  mapType(provider: PciFunction, client: PciFunction): P2pMapType {
    if (!this.view.hasP2pdmaState(provider)) return "not-supported";
    return this.cache.lookup(provider, client) ?? this.calc(provider, client, true).mapType;
  }

  /**
   * Models pci_p2pmem_find_many(): every published provider at the smallest total distance, in
   * `for_each_pci_dev` order. The kernel picks one uniformly at random; `pick` takes the seed.
   */
  findManyCandidates(clients: readonly (PciFunction | null)[]): {
    best: number;
    candidates: PciFunction[];
  } {
    let best = Number.MAX_SAFE_INTEGER;
    let cands: PciFunction[] = [];
    for (const p of this.view.machine.functions) {
      if (!this.view.hasPublishedP2pmem(p)) continue;
      const d = this.distanceMany(p, clients, false);
      if (d < 0 || d > best) continue;
      if (d === best && cands.length >= 512) continue;
      if (d < best) {
        cands = [];
        best = d;
      }
      cands.push(p);
    }
    return { best: cands.length > 0 ? best : -1, candidates: cands };
  }

  findMany(clients: readonly (PciFunction | null)[], random: () => number): PciFunction | null {
    const { candidates } = this.findManyCandidates(clients);
    if (candidates.length === 0) return null;
    return candidates[Math.floor(random() * candidates.length)] ?? null;
  }
}

export function mapTypeEnumValue(profile: KernelProfile, t: MapTypeName): number | undefined {
  return profile.mapTypeEnum[t];
}
