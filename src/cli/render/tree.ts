/** Text rendering of the hierarchy tree (lspci -tv, with what P2P questions need). */

import { formatLink, PORT_NAMES as PORT } from "../../core/analysis/labels.ts";
import type { TreeNode, TreeRoot } from "../../core/analysis/tree.ts";
import type { Colors } from "../io.ts";

function label(n: TreeNode, c: Colors): string {
  const parts: string[] = [c.bold(n.bdf)];
  const port = n.pcieType ? PORT[n.pcieType] : "";
  parts.push(`[${n.id}]`);
  if (n.kind !== "other" && n.kind !== "bridge") parts.push(c.cyan(n.kind));
  if (port) parts.push(c.magenta(port));
  if (n.vf) parts.push(c.dim("VF"));
  if (n.name) parts.push(n.name);
  const link = formatLink(n.link, n.downtrained);
  if (link) parts.push(n.downtrained ? c.yellow(link) : c.dim(link));
  if (n.acs === null) {
    if (n.kind === "bridge") parts.push(c.dim("no ACS"));
  } else if (n.acs) {
    const redir = n.acs.ctrl !== null && (n.acs.ctrl & 0x2c) !== 0;
    parts.push((redir ? c.red : c.green)(`ACS ${n.acs.bits}`));
  }
  if (n.numaNode !== undefined && n.numaNode !== null) parts.push(c.dim(`NUMA ${n.numaNode}`));
  if (n.iommuGroup !== undefined && n.iommuGroup !== null)
    parts.push(c.dim(`group ${n.iommuGroup}`));
  if (n.driver) parts.push(c.dim(n.driver));
  if (n.collapsed)
    parts.push(
      c.yellow(
        `×${n.collapsed.count} (… ${n.collapsed.last}, identical; --no-collapse shows each)`,
      ),
    );
  return parts.join("  ");
}

function size(v: bigint): string {
  const units: [bigint, string][] = [
    [1n << 30n, "G"],
    [1n << 20n, "M"],
    [1n << 10n, "K"],
  ];
  for (const [u, n] of units) if (v >= u && v % u === 0n) return `${v / u}${n}`;
  return `${v}`;
}

export function renderTree(roots: readonly TreeRoot[], c: Colors, verbose = false): string {
  const lines: string[] = [];
  const walk = (nodes: readonly TreeNode[], prefix: string) => {
    nodes.forEach((n, i) => {
      const last = i === nodes.length - 1;
      lines.push(`${prefix}${last ? "└─ " : "├─ "}${label(n, c)}`);
      if (verbose)
        for (const b of n.bars ?? [])
          lines.push(
            `${prefix}${last ? "   " : "│  "}${n.children.length ? "│ " : "  "} ${c.dim(`BAR${b.index} ${b.mem ? "mem" : "io"}${b.is64 ? "64" : ""}${b.prefetchable ? " pref" : ""} 0x${b.start.toString(16)} [${size(b.size)}]`)}`,
          );
      walk(n.children, `${prefix}${last ? "   " : "│  "}`);
    });
  };
  for (const r of roots) {
    const numa =
      r.numaNode !== undefined && r.numaNode !== null ? c.dim(`  NUMA ${r.numaNode}`) : "";
    lines.push(`${c.bold(r.hostBridge)}${numa}`);
    walk(r.children, "");
  }
  return lines.join("\n");
}
