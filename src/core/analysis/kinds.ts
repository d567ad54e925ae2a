/**
 * @module kinds
 * What a function is, for people: by PCI class code only (vendor quirks never decide a kind).
 */

import type { FunctionDescription, PciFunction } from "../hw/machine.ts";

export type DeviceKind =
  | "gpu"
  | "nic"
  | "nvme"
  | "storage"
  | "accel"
  | "bridge"
  | "host-bridge"
  | "other";

/** Kinds `--class` accepts, with what they cover. */
export const KIND_HELP: Readonly<Record<DeviceKind, string>> = {
  gpu: "display and 3D controllers (class 03xx)",
  nic: "network and InfiniBand controllers (class 02xx)",
  nvme: "NVMe controllers (class 010802)",
  storage: "other mass-storage controllers (class 01xx)",
  accel: "processing accelerators and co-processors (class 12xx, 0b40)",
  bridge: "PCI-to-PCI bridges: root ports and switch ports (class 0604, 0609)",
  "host-bridge": "host bridges (class 0600)",
  other: "everything else",
};

export function kindOf(f: Pick<FunctionDescription, "classCode">): DeviceKind {
  const base = f.classCode >> 16;
  const sub = (f.classCode >> 8) & 0xff;
  if (base === 0x03) return "gpu";
  if (base === 0x02) return "nic";
  if (base === 0x01) return sub === 0x08 ? "nvme" : "storage";
  if (base === 0x12 || (base === 0x0b && sub === 0x40)) return "accel";
  if (base === 0x06 && (sub === 0x04 || sub === 0x09)) return "bridge";
  if (base === 0x06 && sub === 0x00) return "host-bridge";
  return "other";
}

/** Kinds shown by default in matrices: the devices people move data between. */
export const INTERESTING: readonly DeviceKind[] = ["gpu", "nic", "nvme", "accel"];

/** `gpu0`, `nic3`: index among functions of that kind in BDF order (PFs and VFs alike). */
export function kindIndex(functions: readonly PciFunction[]): Map<PciFunction, string> {
  const counters = new Map<DeviceKind, number>();
  const out = new Map<PciFunction, string>();
  for (const f of functions) {
    const k = kindOf(f.desc);
    const n = counters.get(k) ?? 0;
    counters.set(k, n + 1);
    out.set(f, `${k}${n}`);
  }
  return out;
}

export function parseKinds(text: string): DeviceKind[] | string {
  const out: DeviceKind[] = [];
  for (const part of text
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)) {
    if (!(part in KIND_HELP)) return part;
    out.push(part as DeviceKind);
  }
  return out;
}
