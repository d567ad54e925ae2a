/**
 * @module proc
 * The /proc files a capture carries besides /sys: cpuinfo (vendor and family decide P2P on AMD),
 * cmdline (ACS and IOMMU boot parameters), iomem (host-bridge windows).
 */

import type { CpuDescription } from "../hw/machine.ts";

/** First processor block of /proc/cpuinfo: `cpu_data(0)` is what the kernel consults. */
export function parseCpuinfo(text: string): CpuDescription {
  const first = text.split(/\n\s*\n/)[0] ?? "";
  const fields = new Map<string, string>();
  for (const line of first.split("\n")) {
    const i = line.indexOf(":");
    if (i < 0) continue;
    const k = line.slice(0, i).trim();
    if (!fields.has(k)) fields.set(k, line.slice(i + 1).trim());
  }
  const num = (k: string): number | undefined => {
    const v = fields.get(k);
    if (v === undefined || !/^\d+$/.test(v)) return undefined;
    return Number.parseInt(v, 10);
  };
  const vendor = fields.get("vendor_id");
  const family = num("cpu family");
  const model = num("model");
  const modelName = fields.get("model name") ?? fields.get("cpu");
  let arch: string | undefined;
  if (vendor !== undefined) arch = "x86_64";
  else if (fields.has("CPU implementer")) arch = "aarch64";
  else if (/POWER/i.test(fields.get("cpu") ?? "")) arch = "ppc64le";
  const sockets = new Set([...text.matchAll(/^physical id\s*:\s*(\d+)/gm)].map((m) => m[1])).size;
  return {
    ...(vendor !== undefined ? { vendor } : {}),
    ...(family !== undefined ? { family } : {}),
    ...(model !== undefined ? { model } : {}),
    ...(modelName !== undefined ? { modelName } : {}),
    ...(arch !== undefined ? { arch } : {}),
    ...(sockets > 0 ? { sockets } : {}),
  };
}

export interface IomemRange {
  readonly start: bigint;
  readonly end: bigint;
  readonly name: string;
  readonly depth: number;
}

/** /proc/iomem lines: `  start-end : name`, nesting by two-space indent. */
export function parseIomem(text: string): IomemRange[] {
  const out: IomemRange[] = [];
  for (const line of text.split("\n")) {
    const m = /^(\s*)([0-9a-fA-F]+)-([0-9a-fA-F]+)\s*:\s*(.*)$/.exec(line);
    if (!m) continue;
    out.push({
      depth: m[1]!.length / 2,
      start: BigInt(`0x${m[2]}`),
      end: BigInt(`0x${m[3]}`),
      name: m[4]!.trim(),
    });
  }
  return out;
}

/** Host-bridge windows from iomem: top-level `PCI Bus DDDD:BB` entries. */
export function hostBridgeWindows(
  ranges: readonly IomemRange[],
): Map<string, { start: bigint; end: bigint }[]> {
  const out = new Map<string, { start: bigint; end: bigint }[]>();
  for (const r of ranges) {
    const m = /^PCI Bus ([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2})$/.exec(r.name);
    if (!m || r.start === 0n) continue;
    const id = `${m[1]!.toLowerCase().padStart(4, "0")}:${m[2]!.toLowerCase()}`;
    const list = out.get(id) ?? [];
    list.push({ start: r.start, end: r.end });
    out.set(id, list);
  }
  return out;
}
