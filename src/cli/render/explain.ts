/** Text rendering of one pair's explanation: hops, verdict, findings with hints. */

import { formatLink } from "../../core/analysis/labels.ts";
import type { PairExplanation } from "../../core/analysis/p2p.ts";
import type { Colors } from "../io.ts";

const VERDICT: Record<string, string> = {
  "bus-address": "BUS ADDRESS (PCI_P2PDMA_MAP_BUS_ADDR)",
  "through-host-bridge": "THROUGH HOST BRIDGE (PCI_P2PDMA_MAP_THRU_HOST_BRIDGE)",
  "not-supported": "NOT SUPPORTED (PCI_P2PDMA_MAP_NOT_SUPPORTED)",
};

export function renderExplain(
  e: PairExplanation,
  c: Colors,
  names: Map<string, string>,
  kernel: string,
): string {
  const lines: string[] = [];
  lines.push(`${c.bold("provider")} ${e.provider} ${names.get(e.provider) ?? ""}`.trimEnd());
  lines.push(`${c.bold("client")}   ${e.client} ${names.get(e.client) ?? ""}`.trimEnd());
  lines.push("");
  lines.push(c.bold("Path"));
  for (const h of e.hops) {
    const mark = h.redirects
      ? c.red("redirects")
      : h.redirects === undefined
        ? c.yellow("unknown")
        : "";
    const tested = h.tested ? "" : c.dim(" (not examined by the kernel)");
    const link = h.link ? formatLink(h.link, h.downtrained) : "";
    lines.push(
      `  ${h.role.padEnd(8)} ${h.bdf}  ${(h.pcieType ?? "").padEnd(15)} ${h.acsBits.padEnd(27)} ${mark}${tested}  ${c.dim(link)}`.trimEnd(),
    );
  }
  if (e.hostBridges.length > 0)
    for (const hb of e.hostBridges)
      lines.push(
        `  host bridge ${hb.hostBridge}: represented by ${hb.representative ?? "nothing"} ${hb.representativeId ?? ""} → ${hb.reason}`,
      );
  lines.push("");
  const color =
    e.mapType === "bus-address" ? c.green : e.mapType === "through-host-bridge" ? c.yellow : c.red;
  lines.push(
    `${c.bold("Verdict")} (kernel ${kernel}): ${color(VERDICT[e.mapType]!)}, distance ${e.distance}`,
  );
  if (e.alternative)
    lines.push(
      c.yellow(
        `  if ${e.alternative.if}: ${VERDICT[e.alternative.mapType]}, distance ${e.alternative.distance}`,
      ),
    );
  lines.push("");
  lines.push(c.bold("Findings"));
  for (const f of e.findings) {
    const sev =
      f.severity === "error"
        ? c.red("error  ")
        : f.severity === "warning"
          ? c.yellow("warning")
          : c.dim("info   ");
    lines.push(`  ${sev} ${c.bold(f.code)}: ${f.message}`);
    if (f.hint) lines.push(`          ${c.cyan("hint:")} ${f.hint}`);
  }
  if (e.kernelMessages.length > 0) {
    lines.push("");
    lines.push(c.bold("What the kernel logs for this pair"));
    for (const m of e.kernelMessages) lines.push(`  ${c.dim(m)}`);
  }
  return lines.join("\n");
}
