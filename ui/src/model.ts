/**
 * The page's machine: a description (from the server or a dropped file), linked into a Machine,
 * booted into the kernel's view with the what-if options — the same steps as the CLI's
 * context.ts, run in the browser on the same core.
 */

import { kindIndex } from "../../src/core/analysis/kinds.ts";
import type { Names } from "../../src/core/analysis/tree.ts";
import { InputError, TopologyError } from "../../src/core/errors.ts";
import { parseMachineDocument } from "../../src/core/formats/machine-doc.ts";
import {
  buildMachine,
  type IommuMode,
  type Machine,
  type MachineDescription,
  type PciFunction,
} from "../../src/core/hw/machine.ts";
import { type BootedPci, bootPci, CPU_PRESETS } from "../../src/core/kernel/pci/pci-view.ts";

export { formatLink, formatSpeed, PORT_NAMES as PORT } from "../../src/core/analysis/labels.ts";

export interface NameTable {
  readonly vendors: Readonly<Record<string, string>>;
  readonly devices: Readonly<Record<string, string>>;
}

/** What the server sends for a machine (src/server/examples.ts MachinePayload). */
export interface MachinePayload {
  readonly label: string;
  readonly document: string;
  readonly names: NameTable;
}

export const IOMMU_CHOICES: readonly IommuMode[] = ["off", "dma", "dma-fq", "identity"];

export interface WhatIf {
  readonly kernel?: string;
  /** A CPU_PRESETS key. */
  readonly cpu?: string;
  readonly iommu?: IommuMode;
  readonly cmdline?: string;
  /** Forced live ACS control words, by BDF. */
  readonly setAcs: ReadonlyMap<string, number>;
}

export const NO_WHAT_IF: WhatIf = { setAcs: new Map() };

export class Loaded {
  readonly label: string;
  readonly desc: MachineDescription;
  readonly machine: Machine;
  readonly names: Names;
  readonly labels: ReadonlyMap<PciFunction, string>;

  constructor(label: string, desc: MachineDescription, names: NameTable) {
    this.label = label;
    this.desc = desc;
    try {
      this.machine = buildMachine(desc);
    } catch (e) {
      if (e instanceof TopologyError) throw new InputError({ file: label }, e.message);
      throw e;
    }
    const hex4 = (v: number) => v.toString(16).padStart(4, "0");
    this.names = {
      vendor: (v) => names.vendors[hex4(v)],
      device: (v, d) => names.devices[`${hex4(v)}:${hex4(d)}`],
    };
    this.labels = kindIndex(this.machine.functions);
  }

  static fromPayload(p: MachinePayload): Loaded {
    return new Loaded(p.label, parseMachineDocument(p.label, p.document), p.names);
  }

  /** Vendor and device name, as the CLI's context.ts nameOf. */
  nameOf(f: PciFunction): string {
    const d = f.desc;
    const dev =
      (d.vendor !== undefined && d.device !== undefined
        ? this.names.device(d.vendor, d.device)
        : undefined) ?? d.deviceName;
    const ven = (d.vendor !== undefined ? this.names.vendor(d.vendor) : undefined) ?? d.vendorName;
    return [ven, dev].filter(Boolean).join(" ");
  }

  /** `gpu0`, `nic3`, as the CLI names devices. */
  labelOf(f: PciFunction): string {
    return this.labels.get(f) ?? f.name;
  }

  /** bootPci with the what-if options, as the CLI's contextFor applies them. */
  boot(w: WhatIf): BootedPci {
    const preset = w.cpu !== undefined ? CPU_PRESETS[w.cpu] : undefined;
    const setAcs = new Map([...w.setAcs].filter(([bdf]) => this.machine.byBdf(bdf)));
    return bootPci(this.machine, {
      ...(w.kernel !== undefined ? { profile: w.kernel } : {}),
      ...(preset
        ? {
            cpu: {
              ...(preset.vendor ? { vendor: preset.vendor } : {}),
              ...(preset.family !== undefined ? { family: preset.family } : {}),
            },
          }
        : {}),
      ...(w.iommu !== undefined ? { iommu: w.iommu } : {}),
      ...(w.cmdline !== undefined ? { cmdline: w.cmdline } : {}),
      setAcs,
    });
  }
}

/** PCIe generation names for link speeds in GT/s. */
const GEN: Readonly<Record<string, string>> = {
  "2.5": "Gen1",
  "5": "Gen2",
  "8": "Gen3",
  "16": "Gen4",
  "32": "Gen5",
  "64": "Gen6",
  "128": "Gen7",
};

export function shortLink(
  l: MachineDescription["functions"][number]["link"] | undefined,
): string | null {
  if (!l || (l.speed == null && l.width === undefined)) return null;
  if (l.width === 0) return "link down";
  const gen = l.speed != null ? (GEN[String(l.speed)] ?? `${l.speed} GT/s`) : "?";
  return `${gen} x${l.width ?? "?"}`;
}

/** An error as the page shows it: file, place, reason when the input was at fault. */
export interface ShownError {
  readonly title: string;
  readonly file?: string;
  readonly place?: string;
  readonly reason: string;
}

export function describeError(e: unknown, title: string): ShownError {
  if (e instanceof InputError)
    return {
      title,
      file: e.file,
      ...(e.place !== undefined ? { place: e.place } : {}),
      reason: e.reason,
    };
  if (e instanceof Error) return { title, reason: e.message };
  return { title, reason: String(e) };
}
