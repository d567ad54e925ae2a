/**
 * @module matrix
 * All-pairs verdicts over a set of functions, as `peerbuf matrix` shows them.
 */

import type { Machine, PciFunction } from "../hw/machine.ts";
import type { BootedPci } from "../kernel/pci/pci-view.ts";
import type { Finding } from "./findings.ts";
import { type DeviceKind, INTERESTING, kindIndex, kindOf } from "./kinds.ts";
import { pairVerdict } from "./p2p.ts";
import { type SmiLevel, smiLevel } from "./smi.ts";

export interface MatrixDevice {
  readonly bdf: string;
  readonly label: string;
  readonly kind: DeviceKind;
  readonly id: string;
}

export interface MatrixPair {
  readonly provider: string;
  readonly client: string;
  readonly mapType: "bus-address" | "through-host-bridge" | "not-supported";
  readonly distance: number;
  readonly smi: SmiLevel;
  readonly findings: readonly Finding[];
}

export interface MatrixResult {
  readonly devices: readonly MatrixDevice[];
  readonly pairs: readonly MatrixPair[];
}

/** Functions the kernel can be asked about: type-0 headers (endpoints, host-bridge functions). */
export function matrixFunctions(
  machine: Machine,
  kinds: readonly DeviceKind[] | "all",
): PciFunction[] {
  return machine.functions.filter((f) => {
    if (f.isBridge) return false;
    return kinds === "all" || kinds.includes(kindOf(f.desc));
  });
}

export function computeMatrix(view: BootedPci, fns: readonly PciFunction[]): MatrixResult {
  const labels = kindIndex(view.machine.functions);
  const devices = fns.map((f) => ({
    bdf: f.name,
    label: labels.get(f)!,
    kind: kindOf(f.desc),
    id: `${(f.desc.vendor ?? 0).toString(16).padStart(4, "0")}:${(f.desc.device ?? 0).toString(16).padStart(4, "0")}`,
  }));
  const pairs: MatrixPair[] = [];
  for (const p of fns)
    for (const c of fns) {
      const v = pairVerdict(view, p, c);
      const smi = smiLevel(p, c);
      const disagree = (smi === "PIX" || smi === "PXB") && v.mapType !== "bus-address";
      pairs.push({
        ...v,
        smi,
        findings: disagree
          ? [
              ...v.findings,
              {
                code: "smi-kernel-disagree",
                severity: "warning",
                path: [p.name, c.name],
                message: `nvidia-smi would call this ${smi} (no host bridge on the path), but the kernel does not give bus addresses: ${v.mapType}`,
              },
            ]
          : v.findings,
      });
    }
  return { devices, pairs };
}

export { INTERESTING };
