/**
 * @module dot
 * Graphviz DOT of a machine's PCI hierarchy: one cluster per host bridge, a node per function
 * (BDF, IDs, class, driver, ACS control on ports that have ACS), edges labelled with the link's
 * speed and width (red when trained below what both ends support). Output depends only on the
 * hierarchy: functions appear in BDF order whatever order the description lists them in.
 */

import { ACS, ACS_BIT_NAMES, type AcsBitName } from "../hw/config-space.ts";
import {
  buildMachine,
  type LinkDescription,
  type MachineDescription,
  type PciFunction,
} from "../hw/machine.ts";

/** Escapes text for a DOT double-quoted string; line breaks are flattened. */
const esc = (s: string): string =>
  s
    .replace(/\\/g, "\\\\")
    .replace(/"/g, '\\"')
    .replace(/[\r\n]+/g, " ");

const q = (s: string): string => `"${esc(s)}"`;

/** Label lines joined with DOT's centred line break. */
const label = (lines: readonly string[]): string => `"${lines.map(esc).join("\\n")}"`;

const hex4 = (v: number | undefined): string =>
  v === undefined ? "????" : v.toString(16).padStart(4, "0");

/** Fill colours by PCI base class, for reading the picture at a glance. */
const CLASS_FILL: ReadonlyMap<number, string> = new Map([
  [0x01, "#d9ead3"], // storage
  [0x02, "#cfe2f3"], // network
  [0x03, "#fff2cc"], // display
  [0x06, "#eeeeee"], // bridge
  [0x12, "#f4cccc"], // processing accelerator
]);

function acsNames(word: number): string {
  const names = ACS_BIT_NAMES.filter((n: AcsBitName) => word & ACS[n]);
  return names.length > 0 ? names.join(" ") : "none";
}

const gts = (s: number | null | undefined): string =>
  s === null || s === undefined ? "?" : `${s}GT/s`;

const firstNumber = (...xs: (number | null | undefined)[]): number | undefined =>
  xs.find((x): x is number => typeof x === "number");

const minNumber = (...xs: (number | null | undefined)[]): number | undefined => {
  const ns = xs.filter((x): x is number => typeof x === "number");
  return ns.length > 0 ? Math.min(...ns) : undefined;
};

/** Ports and RC-integrated functions sit on an internal bus: no physical link above them. */
const INTERNAL: ReadonlySet<string> = new Set([
  "root-port",
  "downstream-port",
  "rc-endpoint",
  "rc-event-collector",
]);

/**
 * The link between a port and the function below it: the function's own view of it, else the
 * port's. Degraded when trained below what both ends can do.
 */
function edgeLink(
  parent: PciFunction,
  child: PciFunction,
): { text: string; degraded: boolean } | null {
  if (child.desc.pcieType && INTERNAL.has(child.desc.pcieType)) return null;
  const pt = parent.desc.pcieType;
  const port: LinkDescription | undefined =
    pt === "root-port" || pt === "downstream-port" ? parent.desc.link : undefined;
  const own = child.desc.link;
  const speed = firstNumber(own?.speed, port?.speed);
  const width = firstNumber(own?.width, port?.width);
  if (speed === undefined && width === undefined) return null;
  const maxSpeed = minNumber(own?.maxSpeed, port?.maxSpeed);
  const maxWidth = minNumber(own?.maxWidth, port?.maxWidth);
  const now = `${gts(speed)} x${width ?? "?"}`;
  const degraded =
    (speed !== undefined && maxSpeed !== undefined && speed < maxSpeed) ||
    (width !== undefined && maxWidth !== undefined && width < maxWidth);
  return degraded
    ? { text: `${now} (max ${gts(maxSpeed)} x${maxWidth ?? "?"})`, degraded }
    : { text: now, degraded };
}

function nodeLines(f: PciFunction): string[] {
  const d = f.desc;
  const lines = [
    f.name,
    `${hex4(d.vendor)}:${hex4(d.device)}  class 0x${d.classCode.toString(16).padStart(6, "0")}`,
  ];
  if (d.deviceName !== undefined) lines.push(d.deviceName);
  const role = [
    d.pcieType ?? undefined,
    d.driver === null ? "no driver" : d.driver,
    d.iommuGroup === undefined || d.iommuGroup === null ? undefined : `group ${d.iommuGroup}`,
  ].filter((x): x is string => x !== undefined);
  if (role.length > 0) lines.push(role.join(" · "));
  if (d.acs)
    lines.push(d.acs.ctrl === undefined ? "ACS ctrl unknown" : `ACS ${acsNames(d.acs.ctrl)}`);
  return lines;
}

/** Graphviz DOT text for the machine; throws TopologyError when the hierarchy is invalid. */
export function writeDot(m: MachineDescription): string {
  const machine = buildMachine(m);
  const out: string[] = [];
  const title = [m.name ?? "machine"];
  const cpu = m.cpu;
  if (cpu?.vendor !== undefined)
    title.push(
      `${cpu.vendor}${cpu.family !== undefined ? ` family ${cpu.family}` : ""}${cpu.model !== undefined ? ` model ${cpu.model}` : ""}`,
    );
  if (m.iommu?.mode !== undefined) title.push(`IOMMU ${m.iommu.mode}`);
  out.push(`digraph ${q("peerbuf")} {`);
  out.push(
    `  graph [rankdir=LR, fontname="Helvetica", fontsize=11, labelloc=t, label=${label(title)}];`,
  );
  out.push(`  node [fontname="Helvetica", fontsize=9, shape=box];`);
  out.push(`  edge [fontname="Helvetica", fontsize=8];`);
  const edges: string[] = [];
  const byHb = new Map<string, PciFunction[]>();
  for (const f of machine.functions) {
    const list = byHb.get(f.hostBridge.id) ?? [];
    list.push(f);
    byHb.set(f.hostBridge.id, list);
  }
  for (const hb of machine.hostBridges) {
    const hbNode = `pci${hb.id}`;
    const numa = hb.desc.numaNode;
    const head = [hbNode];
    if (hb.desc.busEnd !== undefined)
      head.push(
        `buses ${hb.bus.toString(16).padStart(2, "0")}-${hb.desc.busEnd.toString(16).padStart(2, "0")}`,
      );
    if (numa !== undefined) head.push(numa === null ? "no NUMA node" : `NUMA ${numa}`);
    out.push(`  subgraph ${q(`cluster_${hbNode}`)} {`);
    out.push(`    label=${q(hbNode)}; style=dashed; color="#999999";`);
    out.push(
      `    ${q(hbNode)} [shape=box, style=filled, fillcolor="#dddddd", label=${label(head)}];`,
    );
    for (const f of byHb.get(hb.id) ?? []) {
      const fill = CLASS_FILL.get(f.desc.classCode >> 16) ?? "#ffffff";
      const style = f.isBridge ? "filled" : "rounded,filled";
      out.push(
        `    ${q(f.name)} [style=${q(style)}, fillcolor=${q(fill)}, label=${label(nodeLines(f))}];`,
      );
      if (f.parent === null) edges.push(`  ${q(hbNode)} -> ${q(f.name)};`);
      else {
        const l = edgeLink(f.parent, f);
        const attrs = l
          ? ` [label=${q(l.text)}${l.degraded ? `, color="#cc0000", fontcolor="#cc0000"` : ""}]`
          : "";
        edges.push(`  ${q(f.parent.name)} -> ${q(f.name)}${attrs};`);
      }
      if (f.physfn) edges.push(`  ${q(f.physfn.name)} -> ${q(f.name)} [style=dashed, label="VF"];`);
    }
    out.push("  }");
  }
  out.push(...edges);
  out.push("}");
  return `${out.join("\n")}\n`;
}
