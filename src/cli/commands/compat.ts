/**
 * @module commands/compat
 * `peerbuf compat`: for the given machine, every exporter device × importer device run through the
 * model (export, import, map, DMA write, read back), with the outcome and the reason.
 */

import { type Command, Option } from "commander";
import { InputError } from "../../core/errors.ts";
import { formatBdf, parseBdf } from "../../core/hw/bdf.ts";
import { parseAcsBits } from "../../core/hw/config-space.ts";
import type { IommuMode } from "../../core/hw/machine.ts";
import { KernelBug } from "../../core/kernel/errno.ts";
import { Tracer } from "../../core/kernel/trace.ts";
import { SimMachine } from "../../core/sim/sim-machine.ts";
import { type Context, loadContext, resolveDevice, type WhatIf } from "../context.ts";
import { colors, log, UsageError, writeJson, writeOut } from "../io.ts";
import { renderCompat } from "../render/compat.ts";

export interface CompatCliOptions extends WhatIf {
  input?: string[];
  json?: boolean;
  color?: boolean;
  exporter?: string;
  importerMode: "dynamic" | "static";
  moveNotify?: boolean;
}

/** Adds the compat options and action to `cmd` (which already has the common options). */
export function compatCommand(cmd: Command): Command {
  return cmd
    .description(
      "what happens when each device exports a dma-buf and each other device imports it: bus addresses, IOMMU, migrated to RAM, or refused (and why)",
    )
    .option(
      "--exporter <name>",
      "only this exporter: BDF, accel0/gpu1/..., a name fragment, host (system heap) or host-udmabuf (memfd)",
    )
    .addOption(
      new Option(
        "--importer-mode <mode>",
        "dynamic: each driver's own import (RDMA MRs on NICs, amdgpu PRIME + SDMA copy on GPUs, the accelerator import model), P2P-capable generic importers with move_notify elsewhere; static: dma_buf_attach on every device",
      )
        .choices(["dynamic", "static"])
        .default("dynamic"),
    )
    .option(
      "--move-notify",
      "CONFIG_DMABUF_MOVE_NOTIFY=y: dynamic importers are not pinned (amdgpu then keeps VRAM for P2P importers)",
    )
    .addHelpText(
      "after",
      "\nCodes: B bus addresses, I IOMMU (IOVAs), P CPU physical addresses, M migrated to system memory,\nF mapped but the DMA faulted, - refused (errno listed), X the device itself; suffix h: through the host bridge.",
    )
    .action(async (o: CompatCliOptions) => {
      await runCompat(o);
    });
}

export async function runCompat(o: CompatCliOptions): Promise<void> {
  const ctx = await loadContext(o.input, o);
  const exporter = o.exporter !== undefined ? exporterName(ctx, o.exporter) : undefined;
  const { compatMatrix } = await import("../../core/analysis/compat.ts");
  let sim: SimMachine;
  try {
    sim = new SimMachine(ctx.desc, {
      kernel: ctx.view.profile.id,
      cpu: ctx.view.cpu,
      ...(o.iommu !== undefined ? { iommu: o.iommu as IommuMode } : {}),
      ...(o.cmdline !== undefined ? { cmdline: o.cmdline } : {}),
      ...(o.setAcs?.length ? { setAcs: setAcsMap(o.setAcs) } : {}),
      moveNotify: o.moveNotify === true,
      tracer: new Tracer(false),
    });
  } catch (e) {
    if (e instanceof KernelBug || !(e instanceof Error)) throw e;
    // a driver cannot bind (an accelerator or GPU without its memory BAR in the input)
    throw new InputError(
      { file: String(ctx.inputLabel["source"]) },
      `the machine model cannot boot this input: ${e.message}`,
    );
  }
  let r: ReturnType<typeof compatMatrix>;
  try {
    r = compatMatrix(sim, {
      importerMode: o.importerMode,
      ...(exporter ? { exporters: [exporter] } : {}),
    });
  } catch (e) {
    if (e instanceof RangeError)
      throw new UsageError(`--exporter ${o.exporter}: ${e.message.replace(/^compat: /, "")}`);
    throw e;
  } finally {
    sim.shutdown();
  }
  if (o.json)
    writeJson({
      input: {
        ...ctx.inputLabel,
        importerMode: r.importerMode,
        moveNotify: r.moveNotify,
        ...(exporter ? { exporter } : {}),
      },
      data: {
        machine: r.machine,
        kernel: r.kernel,
        iommu: r.iommu,
        importerMode: r.importerMode,
        moveNotify: r.moveNotify,
        bufferSize: r.bufferSize,
        exporters: r.exporters.map((d) => ({ ...d, ...label(ctx, d.bdf) })),
        importers: r.importers.map((d) => ({ ...d, ...label(ctx, d.bdf) })),
        notExporting: r.notExporting.map((d) => ({ ...d, ...label(ctx, d.bdf) })),
        cells: r.cells,
        leaks: r.leaks,
      },
    });
  else {
    const names = new Map<string, string>();
    for (const d of [...r.exporters, ...r.importers, ...r.notExporting])
      if (d.bdf) names.set(d.bdf, label(ctx, d.bdf).label ?? "");
    writeOut(renderCompat(r, colors(o.color), names));
    for (const u of ctx.desc.unknowns ?? []) log(`note: unknown: ${u}`);
  }
  for (const l of r.leaks)
    log(`peerbuf: internal: the compat run left behind ${l.kind} (${l.owner}): ${l.detail}`);
}

/** `host`, `host-udmabuf`, or the BDF of the device the user named (checked against the exporters later). */
function exporterName(ctx: Context, text: string): string {
  const t = text.toLowerCase();
  // the analysis module is loaded lazily: its HOST and HOST_UDMABUF, spelled out
  if (t === "host" || t === "host-udmabuf") return t;
  return resolveDevice(ctx, text).name;
}

function label(ctx: Context, bdf: string | null): { label?: string } {
  const f = bdf ? ctx.machine.byBdf(bdf) : undefined;
  const n = f ? ctx.nameOf(f) : "";
  return n ? { label: n } : {};
}

/** `--set-acs` as contextFor validated it. */
function setAcsMap(specs: readonly string[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const s of specs) {
    const eq = s.indexOf("=");
    const bdf = parseBdf(s.slice(0, eq));
    const bits = parseAcsBits(s.slice(eq + 1));
    if (bdf && bits !== null) out.set(formatBdf(bdf), bits);
  }
  return out;
}
