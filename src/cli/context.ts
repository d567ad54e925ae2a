/**
 * @module context
 * What every analysing command does first: load the input, build the machine, boot the kernel
 * view with the what-if options, and resolve device names.
 */

import { kindIndex, kindOf } from "../core/analysis/kinds.ts";
import type { Names } from "../core/analysis/tree.ts";
import { InputError, TopologyError } from "../core/errors.ts";
import { formatBdf, parseBdf } from "../core/hw/bdf.ts";
import { parseAcsBits } from "../core/hw/config-space.ts";
import {
  buildMachine,
  type IommuMode,
  type Machine,
  type MachineDescription,
  type PciFunction,
} from "../core/hw/machine.ts";
import {
  type BootedPci,
  bootPci,
  CPU_PRESETS,
  UnknownProfileError,
} from "../core/kernel/pci/pci-view.ts";
import { PROFILES } from "../core/kernel/profile.ts";
import { editDistance } from "../core/text.ts";
import { loadInput } from "../node/load-input.ts";
import { systemNames } from "../node/names.ts";
import { UsageError } from "./io.ts";

export interface WhatIf {
  kernel?: string;
  cpu?: string;
  iommu?: string;
  cmdline?: string;
  setAcs?: string[];
}

export interface Context {
  readonly desc: MachineDescription;
  readonly machine: Machine;
  readonly view: BootedPci;
  readonly names: Names;
  readonly inputLabel: Record<string, unknown>;
  nameOf(f: PciFunction): string;
}

export const IOMMU_CHOICES = ["off", "dma", "dma-fq", "identity"] as const;

export async function loadContext(inputs: string[] | undefined, w: WhatIf): Promise<Context> {
  const desc = await loadInput(inputs ?? []);
  return contextFor(desc, w, inputs);
}

/**
 * buildMachine for an input the user named: a hierarchy that cannot be (duplicate BDFs, a parent
 * that is missing or not a bridge, a loop) is bad input (exit 3) naming the input, not a usage error.
 */
export function machineFromInput(desc: MachineDescription, inputs?: readonly string[]): Machine {
  try {
    return buildMachine(desc);
  } catch (e) {
    if (e instanceof TopologyError)
      throw new InputError(
        { file: inputs?.length ? inputs.join(", ") : (desc.source?.path ?? "this machine") },
        e.message,
      );
    throw e;
  }
}

export function contextFor(desc: MachineDescription, w: WhatIf, inputs?: string[]): Context {
  const machine = machineFromInput(desc, inputs);
  if (w.kernel !== undefined && !(w.kernel in PROFILES))
    throw new UsageError(
      `unknown kernel profile "${w.kernel}" (known: ${Object.keys(PROFILES).join(", ")})`,
    );
  let cpu: { vendor?: string; family?: number } | undefined;
  if (w.cpu !== undefined) {
    const preset = CPU_PRESETS[w.cpu];
    if (!preset)
      throw new UsageError(
        `unknown --cpu "${w.cpu}" (known: ${Object.keys(CPU_PRESETS).join(", ")})`,
      );
    cpu = {
      ...(preset.vendor ? { vendor: preset.vendor } : {}),
      ...(preset.family !== undefined ? { family: preset.family } : {}),
    };
  }
  if (w.iommu !== undefined && !(IOMMU_CHOICES as readonly string[]).includes(w.iommu))
    throw new UsageError(`unknown --iommu "${w.iommu}" (known: ${IOMMU_CHOICES.join(", ")})`);
  const setAcs = new Map<string, number>();
  for (const s of w.setAcs ?? []) {
    const eq = s.indexOf("=");
    const bdf = eq > 0 ? parseBdf(s.slice(0, eq)) : null;
    const bits = eq > 0 ? parseAcsBits(s.slice(eq + 1)) : null;
    if (!bdf || bits === null)
      throw new UsageError(
        `--set-acs "${s}": expected BDF=bits, e.g. 0000:02:00.0=0x1d or 02:00.0=SV,UF`,
      );
    const name = formatBdf(bdf);
    if (!machine.byBdf(name)) throw new UsageError(`--set-acs: ${name} is not in the machine`);
    setAcs.set(name, bits);
  }
  let view: BootedPci;
  try {
    view = bootPci(machine, {
      ...(w.kernel !== undefined ? { profile: w.kernel } : {}),
      ...(cpu ? { cpu } : {}),
      ...(w.iommu !== undefined ? { iommu: w.iommu as IommuMode } : {}),
      ...(w.cmdline !== undefined ? { cmdline: w.cmdline } : {}),
      setAcs,
    });
  } catch (e) {
    if (e instanceof UnknownProfileError) throw new UsageError(e.message);
    throw e;
  }
  const names = systemNames();
  const nameOf = (f: PciFunction): string => {
    const d = f.desc;
    const dev =
      (d.vendor !== undefined && d.device !== undefined
        ? names.device(d.vendor, d.device)
        : undefined) ?? d.deviceName;
    const ven = (d.vendor !== undefined ? names.vendor(d.vendor) : undefined) ?? d.vendorName;
    return [ven, dev].filter(Boolean).join(" ");
  };
  return {
    desc,
    machine,
    view,
    names,
    nameOf,
    inputLabel: {
      source: desc.source?.path ?? inputs?.join(", ") ?? "this machine",
      format: desc.source?.format,
      kernelProfile: view.profile.id,
      ...(w.cpu ? { cpu: w.cpu } : {}),
      ...(w.iommu ? { iommu: w.iommu } : {}),
      ...(w.cmdline !== undefined ? { cmdline: w.cmdline } : {}),
      ...(w.setAcs?.length ? { setAcs: w.setAcs } : {}),
      ...(desc.unknowns?.length ? { unknowns: desc.unknowns } : {}),
    },
  };
}

/** Resolves `0000:03:00.0`, `03:00.0`, `gpu0`, or a unique name fragment (`ConnectX-7`). */
export function resolveDevice(ctx: Context, text: string): PciFunction {
  const b = parseBdf(text);
  if (b) {
    const f = ctx.machine.byBdf(formatBdf(b));
    if (f) return f;
    throw new UsageError(`no function ${formatBdf(b)} in this machine${suggest(ctx, text)}`);
  }
  const labels = kindIndex(ctx.machine.functions);
  for (const [f, l] of labels) if (l === text.toLowerCase()) return f;
  const needle = text.toLowerCase();
  const matches = ctx.machine.functions.filter(
    (f) => ctx.nameOf(f).toLowerCase().includes(needle) || f.desc.driver === text,
  );
  if (matches.length === 1) return matches[0]!;
  if (matches.length > 1) {
    const nonBridge = matches.filter((f) => !f.isBridge);
    if (nonBridge.length === 1) return nonBridge[0]!;
    throw new UsageError(
      `"${text}" is ambiguous; it matches:\n${matches
        .slice(0, 12)
        .map((f) => `  ${f.name}  ${labels.get(f)}  ${ctx.nameOf(f)}`)
        .join("\n")}${matches.length > 12 ? `\n  … and ${matches.length - 12} more` : ""}`,
    );
  }
  throw new UsageError(`no device matches "${text}"${suggest(ctx, text)}`);
}

function suggest(ctx: Context, text: string): string {
  const labels = kindIndex(ctx.machine.functions);
  const t = text.toLowerCase();
  const scored = ctx.machine.functions
    .filter((f) => !f.isBridge)
    .map((f) => {
      const cands = [f.name, f.name.slice(5), labels.get(f)!, ctx.nameOf(f).toLowerCase()];
      return {
        f,
        d: Math.min(...cands.map((c) => editDistance(t, c.slice(0, Math.max(t.length, 1) + 2)))),
      };
    })
    .sort((a, b) => a.d - b.d)
    .slice(0, 5);
  if (scored.length === 0) return "";
  return `; close matches:\n${scored.map(({ f }) => `  ${f.name}  ${labels.get(f)}  ${kindOf(f.desc)}  ${ctx.nameOf(f)}`).join("\n")}`;
}
