/**
 * The pairwise verdicts as a heat map, rows = provider (whose memory), columns = client (who does
 * the DMA), as `peerbuf matrix` lays them out: bus address (green, darker = farther), through the
 * host bridge (amber), refused (red). A click on a cell opens the path view for that pair.
 */

import { INTERESTING, matrixFunctions } from "../../src/core/analysis/matrix.ts";
import { pairVerdict } from "../../src/core/analysis/p2p.ts";
import type { PciFunction } from "../../src/core/hw/machine.ts";
import type { BootedPci } from "../../src/core/kernel/pci/pci-view.ts";
import { h, s } from "./dom.ts";
import type { Loaded } from "./model.ts";

/** More devices than this are not drawn (the CLI's --json has every pair). */
export const MAX_MATRIX_DEVICES = 160;

const CODE: Readonly<Record<string, string>> = {
  "bus-address": "B",
  "through-host-bridge": "H",
  "not-supported": "-",
};

function color(mapType: string, distance: number, maxDist: number): string {
  if (mapType === "not-supported") return "#d9534f";
  if (mapType === "through-host-bridge") return "#f0ad4e";
  const t = maxDist > 0 ? Math.min(1, distance / maxDist) : 0;
  const l = 78 - t * 45;
  return `hsl(140 55% ${l}%)`;
}

export function renderMatrix(
  l: Loaded,
  view: BootedPci,
  selected: { provider?: string; client?: string },
  onPick: (provider: PciFunction, client: PciFunction) => void,
): HTMLElement {
  let fns = matrixFunctions(l.machine, [...INTERESTING]);
  let scope = "GPUs, NICs, NVMe and accelerators";
  if (fns.length === 0) {
    fns = matrixFunctions(l.machine, "all");
    scope = "every function with a type-0 header (no GPU, NIC, NVMe or accelerator here)";
  }
  const total = fns.length;
  const cut = fns.length > MAX_MATRIX_DEVICES;
  if (cut) fns = fns.slice(0, MAX_MATRIX_DEVICES);
  const n = fns.length;
  const cell = n <= 16 ? 30 : n <= 40 ? 18 : n <= 80 ? 11 : 7;
  const labelW = 70;
  const cells: { p: PciFunction; c: PciFunction; mapType: string; distance: number }[] = [];
  let maxDist = 0;
  for (const p of fns)
    for (const c of fns) {
      const v = pairVerdict(view, p, c, false);
      if (v.mapType === "bus-address") maxDist = Math.max(maxDist, v.distance);
      cells.push({ p, c, mapType: v.mapType, distance: v.distance });
    }
  const svg = s("svg", {
    class: "matrix-svg",
    width: labelW + n * cell + 10,
    height: labelW + n * cell + 10,
    "data-devices": n,
  });
  fns.forEach((f, i) => {
    const lab = l.labelOf(f);
    svg.append(
      s(
        "text",
        {
          class: "mlabel",
          x: labelW - 4,
          y: labelW + i * cell + cell / 2 + 4,
          "text-anchor": "end",
        },
        lab,
        s("title", {}, `${f.name} ${l.nameOf(f)}`),
      ),
      s(
        "text",
        {
          class: "mlabel",
          transform: `translate(${labelW + i * cell + cell / 2 + 4} ${labelW - 4}) rotate(-60)`,
        },
        lab,
        s("title", {}, `${f.name} ${l.nameOf(f)}`),
      ),
    );
  });
  const index = new Map(fns.map((f, i) => [f, i]));
  for (const x of cells) {
    const r = index.get(x.p)!;
    const col = index.get(x.c)!;
    const sel = selected.provider === x.p.name && selected.client === x.c.name;
    const g = s(
      "g",
      {
        class: `mcell${sel ? " selected" : ""}`,
        "data-provider": x.p.name,
        "data-client": x.c.name,
        "data-map-type": x.mapType,
        "data-distance": x.distance,
      },
      s("rect", {
        x: labelW + col * cell,
        y: labelW + r * cell,
        width: cell - 1,
        height: cell - 1,
        fill: color(x.mapType, x.distance, maxDist),
      }),
      cell >= 18
        ? s(
            "text",
            {
              x: labelW + col * cell + cell / 2 - 0.5,
              y: labelW + r * cell + cell / 2 + 3.5,
              "text-anchor": "middle",
            },
            x.p === x.c
              ? "X"
              : `${CODE[x.mapType]}${x.mapType === "not-supported" ? "" : x.distance}`,
          )
        : null,
      s(
        "title",
        {},
        `${l.labelOf(x.p)} ${x.p.name} → ${l.labelOf(x.c)} ${x.c.name}: ${x.mapType}, distance ${x.distance}`,
      ),
    );
    g.addEventListener("click", () => onPick(x.p, x.c));
    svg.append(g);
  }
  const legend = h(
    "div",
    { class: "legend" },
    h("span", { class: "sw", style: `background:${color("bus-address", 0, 1)}` }),
    " B<n> bus address (PCI_P2PDMA_MAP_BUS_ADDR), n = the kernel's distance; darker = farther ",
    h("span", { class: "sw", style: `background:${color("through-host-bridge", 0, 1)}` }),
    " H<n> through the host bridge ",
    h("span", { class: "sw", style: `background:${color("not-supported", 0, 1)}` }),
    " - not supported. Rows: provider (whose memory); columns: client (who does the DMA).",
  );
  return h(
    "section",
    { class: "matrix", "data-matrix": "", "data-devices": n },
    h(
      "p",
      { class: "dim" },
      `${scope}: ${n} devices${cut ? ` (the first ${n} of ${total}; peerbuf matrix --json has all)` : ""}. Kernel ${view.profile.id}. Click a cell for the path.`,
    ),
    h("div", { class: "matrix-scroll" }, svg),
    legend,
  );
}
