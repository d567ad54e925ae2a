/** Text rendering of the pairwise matrix, `nvidia-smi topo -m` style, legend always printed. */

import type { MatrixResult } from "../../core/analysis/matrix.ts";
import { SMI_LEGEND, type SmiLevel } from "../../core/analysis/smi.ts";
import type { Colors } from "../io.ts";

export function renderMatrix(
  m: MatrixResult,
  view: "kernel" | "smi",
  c: Colors,
  names: Map<string, string>,
): string {
  const n = m.devices.length;
  const byPair = new Map(m.pairs.map((p) => [`${p.provider}|${p.client}`, p]));
  const labels = m.devices.map((d) => d.label);
  const w = Math.max(4, ...labels.map((l) => l.length)) + 1;
  const lines: string[] = [];
  lines.push(`${"".padEnd(w)}${labels.map((l) => l.padStart(w)).join("")}`);
  for (let i = 0; i < n; i++) {
    const p = m.devices[i]!;
    let row = p.label.padEnd(w);
    for (let j = 0; j < n; j++) {
      const q = m.devices[j]!;
      const v = byPair.get(`${p.bdf}|${q.bdf}`)!;
      let cell: string;
      if (view === "smi") {
        cell = v.smi;
        const disagree = v.findings.some((f) => f.code === "smi-kernel-disagree");
        row += (disagree ? c.yellow : (s: string) => s)(cell.padStart(w));
        continue;
      }
      if (v.mapType === "bus-address") cell = c.green(`B${v.distance}`.padStart(w));
      else if (v.mapType === "through-host-bridge") cell = c.yellow(`H${v.distance}`.padStart(w));
      else cell = c.red("-".padStart(w));
      row += cell;
    }
    lines.push(row);
  }
  lines.push("");
  lines.push(
    "Rows are providers (whose memory is the target), columns are clients (the device doing DMA).",
  );
  if (view === "kernel") {
    lines.push("Legend (Linux pci_p2pdma, distance = the kernel's hop count):");
    lines.push(
      `  B<n>  bus address: peers reach each other below a common switch; the DMA address is the PCI bus address`,
    );
    lines.push(
      `  H<n>  through the host bridge: allowed, mapped like RAM (IOVA with an IOMMU); crosses the root complex`,
    );
    lines.push(
      `  -     not supported: mapping fails with -EREMOTEIO; 'peerbuf explain A B' says why`,
    );
  } else {
    lines.push(
      "Legend (nvidia-smi topo -m classes, from the same hierarchy; yellow: the kernel disagrees):",
    );
    for (const [k, v] of Object.entries(SMI_LEGEND))
      lines.push(`  ${(k as SmiLevel).padEnd(5)} ${v}`);
  }
  lines.push("Devices:");
  for (const d of m.devices)
    lines.push(`  ${d.label.padEnd(w)} ${d.bdf}  [${d.id}]  ${names.get(d.bdf) ?? ""}`.trimEnd());
  return lines.join("\n");
}
