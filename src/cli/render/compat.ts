/**
 * @module render/compat
 * Text rendering of the exporter × importer matrix (`peerbuf compat`): one short code per cell,
 * `peerbuf matrix` style, the legend always printed, then the refusals grouped by exporter and
 * errno, the faults one per line, what each row and column is, and the devices that are not rows
 * (no exporter model for their driver, or the kernel refused the export: vfio-pci on 6.1).
 */

import type { CompatCell, CompatOutcome, CompatResult } from "../../core/analysis/compat.ts";
import { sizeText } from "../../core/text.ts";
import type { Colors } from "../io.ts";

const CODE: Readonly<Record<CompatOutcome, string>> = {
  "bus-address": "B",
  iommu: "I",
  physical: "P",
  migrated: "M",
  faults: "F",
  refused: "-",
};

/** Most fault lines listed before "… more". */
const MAX_FAULTS = 20;

export function cellCode(c: CompatCell): string {
  return `${CODE[c.outcome]}${c.mapType === "through-host-bridge" && c.outcome !== "refused" ? "h" : ""}`;
}

export function renderCompat(r: CompatResult, c: Colors, names: Map<string, string>): string {
  const byPair = new Map(r.cells.map((x) => [`${x.exporter}|${x.importer}`, x]));
  const cols = r.importers.map((d) => d.name);
  const rows = r.exporters.map((d) => d.name);
  // row labels and columns sized apart: `host-udmabuf` must not widen every column
  const rw = Math.max(4, ...rows.map((l) => l.length)) + 1;
  const w = Math.max(4, ...cols.map((l) => l.length)) + 1;
  const lw = Math.max(rw, w);
  const paint: Readonly<Record<CompatOutcome, (s: string) => string>> = {
    "bus-address": c.green,
    iommu: c.green,
    physical: c.green,
    migrated: c.yellow,
    faults: c.red,
    refused: c.red,
  };
  const lines: string[] = [
    c.bold(
      `${r.machine}: kernel ${r.kernel}, IOMMU ${r.iommu}, ${r.importerMode} importers${r.moveNotify ? ", CONFIG_DMABUF_MOVE_NOTIFY=y" : ""}, ${sizeText(r.bufferSize, "-byte")} buffers`,
    ),
    "",
    `${"".padEnd(rw)}${cols.map((l) => l.padStart(w)).join("")}`,
  ];
  for (const e of r.exporters) {
    let row = e.name.padEnd(rw);
    for (const i of r.importers) {
      const cell = byPair.get(`${e.name}|${i.name}`);
      row += cell ? paint[cell.outcome](cellCode(cell).padStart(w)) : c.dim("X".padStart(w));
    }
    lines.push(row);
  }
  lines.push(
    "",
    "Rows are exporters (whose dma-buf is imported), columns are importers (the device doing DMA).",
    "Each cell: export a buffer, import it, map it, let the importer DMA-write it, read the bytes back.",
    "Legend:",
    "  B  mapped with PCI bus addresses of the exporter's BAR (no IOMMU translation)",
    "  I  mapped through the IOMMU (IOVAs)",
    "  P  mapped with CPU physical addresses of RAM (no IOMMU translation)",
    "  M  migrated: the exporter moved the buffer to system memory to serve this importer",
    "  F  mapped, but the importer's DMA write faulted or missed the buffer (listed below)",
    "  -  refused: an errno at attach, map or registration (listed below)",
    "  X  the device itself: drivers take back their own buffers without dma-buf",
    "  h  (suffix) the P2PDMA verdict is through the host bridge: the traffic crosses the root complex",
  );
  const refused = new Map<string, string[]>();
  for (const x of r.cells) {
    if (x.outcome !== "refused") continue;
    const k = `${x.exporter}: ${x.errno} at ${x.stage} (${x.reason})`;
    refused.set(k, [...(refused.get(k) ?? []), x.importer]);
  }
  if (refused.size > 0) {
    lines.push("Refused:");
    for (const [k, imps] of refused) lines.push(`  ${k}: ${imps.join(" ")}`);
  }
  const faults = r.cells.filter((x) => x.outcome === "faults");
  if (faults.length > 0) {
    lines.push("Faults:");
    for (const x of faults.slice(0, MAX_FAULTS))
      lines.push(`  ${x.exporter} -> ${x.importer} (${x.addressKinds.join("+")}): ${x.reason}`);
    if (faults.length > MAX_FAULTS)
      lines.push(c.dim(`  … ${faults.length - MAX_FAULTS} more (--json has every cell)`));
  }
  lines.push("Exporters:");
  for (const d of r.exporters)
    lines.push(
      `  ${d.name.padEnd(lw)} ${d.bdf ?? "".padEnd(12)}  ${d.how}${d.bdf && names.get(d.bdf) ? `  ${names.get(d.bdf)}` : ""}`,
    );
  const refusing = r.notExporting.filter((d) => d.modelled);
  const unmodelled = r.notExporting.filter((d) => !d.modelled);
  if (unmodelled.length > 0)
    lines.push(
      c.dim(
        `  (not modelled as exporters: ${unmodelled.map((d) => `${d.name} (${d.how})`).join(", ")}; the model has habanalabs-style accelerator, amdgpu-style GPU and vfio-pci exporters)`,
      ),
    );
  if (refusing.length > 0) {
    lines.push(`Not exporting (kernel ${r.kernel}; no buffer, so no row):`);
    for (const d of refusing)
      lines.push(
        `  ${d.name.padEnd(lw)} ${d.bdf ?? "".padEnd(12)}  ${d.how}: ${d.reason}${d.bdf && names.get(d.bdf) ? `  ${names.get(d.bdf)}` : ""}`,
      );
  }
  lines.push("Importers:");
  for (const d of r.importers)
    lines.push(
      `  ${d.name.padEnd(lw)} ${d.bdf}  ${d.how}${d.bdf && names.get(d.bdf) ? `  ${names.get(d.bdf)}` : ""}`,
    );
  return lines.join("\n");
}
