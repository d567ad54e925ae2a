/**
 * @module smi
 * The `nvidia-smi topo -m` view (X, PIX, PXB, PHB, NODE, SYS) computed from the same hierarchy,
 * so users can compare it with the kernel's verdict.
 */

import type { PciFunction } from "../hw/machine.ts";
import { upstreamBridge } from "../kernel/pci/p2pdma.ts";

export type SmiLevel = "X" | "PIX" | "PXB" | "PHB" | "NODE" | "SYS";

export const SMI_LEGEND: Readonly<Record<SmiLevel, string>> = {
  X: "self",
  PIX: "at most a single PCIe bridge (one switch) between them",
  PXB: "multiple PCIe bridges, without crossing the host bridge",
  PHB: "through a PCIe host bridge (typically the CPU)",
  NODE: "across host bridges within one NUMA node",
  SYS: "across NUMA nodes (QPI/UPI/Infinity Fabric)",
};

function chain(f: PciFunction): PciFunction[] {
  const out: PciFunction[] = [];
  for (let p = upstreamBridge(f); p; p = upstreamBridge(p)) out.push(p);
  return out;
}

/** One switch counts once: a downstream port stands for its upstream port. */
function switchOf(b: PciFunction): PciFunction {
  return b.desc.pcieType === "downstream-port" && b.parent?.desc.pcieType === "upstream-port"
    ? b.parent
    : b;
}

function numaOf(f: PciFunction): number | null | undefined {
  let n = f.desc.numaNode;
  for (let p = f.parent; n === undefined && p; p = p.parent) n = p.desc.numaNode;
  return n ?? f.hostBridge.desc.numaNode;
}

export function smiLevel(a: PciFunction, b: PciFunction): SmiLevel {
  if (a === b || (a.physfn ?? a) === (b.physfn ?? b)) return "X";
  const ca = chain(a);
  const cb = chain(b);
  const inB = new Set(cb);
  const lca = ca.find((x) => inB.has(x));
  if (lca) {
    const nodes = new Set<PciFunction>([switchOf(lca)]);
    for (const x of ca) {
      if (x === lca) break;
      nodes.add(switchOf(x));
    }
    for (const x of cb) {
      if (x === lca) break;
      nodes.add(switchOf(x));
    }
    return nodes.size <= 1 ? "PIX" : "PXB";
  }
  if (a.hostBridge === b.hostBridge) return "PHB";
  const na = numaOf(a);
  const nb = numaOf(b);
  if (na != null && nb != null && na !== nb) return "SYS";
  return "NODE";
}
