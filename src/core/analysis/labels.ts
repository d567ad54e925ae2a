/**
 * @module labels
 * How ports and links are named for people, the same in the CLI and on the web page: PCIe port
 * types, link speeds, and a link with its maximum when it trained below it.
 */

import type { LinkDescription } from "../hw/machine.ts";

/** PCIe port types as lspci names them (endpoints stay unnamed). */
export const PORT_NAMES: Readonly<Record<string, string>> = {
  "root-port": "Root Port",
  "upstream-port": "Upstream Port",
  "downstream-port": "Downstream Port",
  "pcie-to-pci-bridge": "PCIe-to-PCI Bridge",
  "pci-to-pcie-bridge": "PCI-to-PCIe Bridge",
  "rc-endpoint": "RC Integrated Endpoint",
  "rc-event-collector": "RC Event Collector",
  endpoint: "",
  "legacy-endpoint": "Legacy Endpoint",
};

/** A link speed in GT/s; `?` when the source did not say, `Unknown` when the device did not. */
export function formatSpeed(s: number | null | undefined): string {
  if (s === undefined) return "?";
  if (s === null) return "Unknown";
  return `${s}GT/s`;
}

/** The current link, and the maximum when the link is down or downtrained. */
export function formatLink(l: LinkDescription | undefined, downtrained: boolean): string {
  if (!l) return "";
  if (l.width === 0) return `link down (max ${formatSpeed(l.maxSpeed)} x${l.maxWidth ?? "?"})`;
  const cur =
    l.speed !== undefined || l.width !== undefined
      ? `${formatSpeed(l.speed)} x${l.width ?? "?"}`
      : "";
  const max = `${formatSpeed(l.maxSpeed)} x${l.maxWidth ?? "?"}`;
  if (!cur) return `max ${max}`;
  if (downtrained) return `${cur} (downtrained, max ${max})`;
  return cur;
}
