/**
 * @module fast-matrix
 * All-pairs P2P verdicts in O(depth) per pair with no per-pair objects, row by row, so a
 * 4,096-endpoint machine costs seconds and bounded memory. It computes exactly what
 * calcMapTypeAndDist() does (the bench checks this against the per-pair walk):
 * - the common ancestor is the lowest node of P's upstream chain that contains C (Euler intervals);
 * - redirect counts come from prefix sums along each chain (P's side includes the common node);
 * - host-bridge verdicts are cached per (host bridge, host bridge, with-ACS) triple.
 */

import { ACS } from "../hw/config-space.ts";
import type { PciFunction } from "../hw/machine.ts";
import {
  type Assumptions,
  cpuSupportsP2pdma,
  hostBridgeAllowed,
  type P2pMapType,
  upstreamBridge,
} from "../kernel/pci/p2pdma.ts";
import type { BootedPci } from "../kernel/pci/pci-view.ts";

export const MAP_CODE: Readonly<Record<P2pMapType, number>> = {
  "not-supported": 0,
  "bus-address": 1,
  "through-host-bridge": 2,
};
export const MAP_NAME: readonly P2pMapType[] = [
  "not-supported",
  "bus-address",
  "through-host-bridge",
];

export class VerdictMatrix {
  readonly functions: readonly PciFunction[];
  readonly #view: BootedPci;
  /** Per endpoint: its upstream chain as node ids, self first. */
  readonly #chains: Int32Array[];
  /** Per endpoint: prefix count of redirecting nodes along the chain (length+1). */
  readonly #redirPrefix: Int32Array[];
  readonly #tin: Int32Array;
  readonly #tout: Int32Array;
  readonly #hbOf: Int32Array;
  readonly #hbVerdict = new Map<number, boolean>();
  readonly #hbFns: PciFunction[];
  readonly #cpu: boolean;

  constructor(view: BootedPci, functions: readonly PciFunction[], assume: Assumptions) {
    this.#view = view;
    this.functions = functions;
    const all = view.machine.functions;
    const id = new Map<PciFunction, number>();
    for (const [i, f] of all.entries()) id.set(f, i);
    // Euler tour over the upstream-bridge forest (a VF hangs where its PF's parent is)
    const kids = new Map<number, number[]>();
    const roots: number[] = [];
    for (const f of all) {
      const up = upstreamBridge(f);
      if (up) {
        const k = kids.get(id.get(up)!) ?? [];
        k.push(id.get(f)!);
        kids.set(id.get(up)!, k);
      } else roots.push(id.get(f)!);
    }
    this.#tin = new Int32Array(all.length);
    this.#tout = new Int32Array(all.length);
    let t = 0;
    const stack: [number, number][] = roots.map((r) => [r, 0] as [number, number]).reverse();
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const [n, i] = top;
      if (i === 0) this.#tin[n] = t++;
      const k = kids.get(n) ?? [];
      if (i < k.length) {
        top[1]++;
        stack.push([k[i]!, 0]);
      } else {
        this.#tout[n] = t++;
        stack.pop();
      }
    }
    const redir = new Uint8Array(all.length);
    for (const f of all) {
      const ctrl = view.acsCtrl(f);
      const r =
        ctrl === null
          ? false
          : ctrl === undefined
            ? assume.unknownAcsRedirects(f)
            : (ctrl & (ACS.RR | ACS.CR | ACS.EC)) !== 0;
      redir[id.get(f)!] = r ? 1 : 0;
    }
    this.#chains = [];
    this.#redirPrefix = [];
    const hbIndex = new Map<string, number>();
    this.#hbFns = [];
    this.#hbOf = new Int32Array(functions.length);
    functions.forEach((f, i) => {
      const chain: number[] = [];
      for (let a: PciFunction | null = f; a; a = upstreamBridge(a)) chain.push(id.get(a)!);
      this.#chains.push(Int32Array.from(chain));
      const pre = new Int32Array(chain.length + 1);
      for (let j = 0; j < chain.length; j++) pre[j + 1] = pre[j]! + redir[chain[j]!]!;
      this.#redirPrefix.push(pre);
      let h = hbIndex.get(f.hostBridge.id);
      if (h === undefined) {
        h = this.#hbFns.length;
        hbIndex.set(f.hostBridge.id, h);
        this.#hbFns.push(f);
      }
      this.#hbOf[i] = h;
    });
    this.#cpu = cpuSupportsP2pdma(view.cpu) ?? assume.unknownCpuSupports;
  }

  /** The host-bridge part of calc, once per (bridge, bridge, redirect) combination. */
  #hostBridgeOk(p: number, c: number): boolean {
    if (this.#cpu) return true;
    const hp = this.#hbOf[p]!;
    const hc = this.#hbOf[c]!;
    const key = hp * 65536 + hc;
    let ok = this.#hbVerdict.get(key);
    if (ok === undefined) {
      // the allowlist verdict depends only on the two host bridges
      ok = hostBridgeAllowed(this.#view, this.#hbFns[hp]!, this.#hbFns[hc]!, false, []).every(
        (x) => x.allowed,
      );
      this.#hbVerdict.set(key, ok);
    }
    return ok;
  }

  /** Fills one provider row: map-type codes and distances (-1 when not supported). */
  row(p: number, mapType: Uint8Array, distance: Int32Array): void {
    const chainP = this.#chains[p]!;
    const preP = this.#redirPrefix[p]!;
    const tin = this.#tin;
    const tout = this.#tout;
    const n = this.functions.length;
    for (let c = 0; c < n; c++) {
      const chainC = this.#chains[c]!;
      const self = chainC[0]!;
      const tc = tin[self]!;
      let ia = -1;
      for (let i = 0; i < chainP.length; i++) {
        const a = chainP[i]!;
        if (tin[a]! <= tc && tout[self]! <= tout[a]!) {
          ia = i;
          break;
        }
      }
      let dist: number;
      let hits = 0;
      if (ia >= 0) {
        const common = chainP[ia]!;
        let ib = 0;
        while (chainC[ib] !== common) ib++;
        dist = ia + ib;
        hits = preP[ia + 1]! + this.#redirPrefix[c]![ib]!;
        if (hits === 0) {
          mapType[c] = 1;
          distance[c] = dist;
          continue;
        }
      } else dist = chainP.length + chainC.length;
      if (this.#cpu || this.#hostBridgeOk(p, c)) {
        mapType[c] = 2;
        distance[c] = dist;
      } else {
        mapType[c] = 0;
        distance[c] = -1;
      }
    }
  }
}
