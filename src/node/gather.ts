/**
 * @module gather
 * `peerbuf gather`: copies the PCI part of sysfs and the /proc files P2P analysis needs into one
 * tar.gz that `--input` loads anywhere. Serial numbers are redacted; nothing is written until the
 * archive is complete, and then atomically.
 */

import {
  lstatSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { gzipSync } from "node:zlib";
import { packTar, type TarEntry } from "modern-tar";
import { parseBdf } from "../core/hw/bdf.ts";

const FUNCTION_FILES = [
  "vendor",
  "device",
  "subsystem_vendor",
  "subsystem_device",
  "revision",
  "class",
  "config",
  "resource",
  "numa_node",
  "local_cpulist",
  "local_cpus",
  "max_link_speed",
  "max_link_width",
  "current_link_speed",
  "current_link_width",
  "secondary_bus_number",
  "subordinate_bus_number",
  "sriov_totalvfs",
  "sriov_numvfs",
  "sriov_offset",
  "sriov_stride",
  "label",
  "index",
  "acpi_index",
  "irq",
  "enable",
  "modalias",
  "dma_mask_bits",
  "consistent_dma_mask_bits",
  "d3cold_allowed",
  "ari_enabled",
  "reset_method",
  "power_state",
  "p2pmem/size",
  "p2pmem/available",
  "p2pmem/published",
];
const FUNCTION_LINKS = ["driver", "iommu_group", "physfn", "firmware_node"];
const PROC_FILES = ["proc/cpuinfo", "proc/cmdline", "proc/iomem", "proc/sys/kernel/osrelease"];
const HB_RE = /^pci[0-9a-f]{4,8}:[0-9a-f]{2}$/;

export interface GatherResult {
  readonly output: string;
  readonly functions: number;
  readonly files: number;
  readonly redacted: number;
  /** Whether config space came in full (root), so ACS is in the capture. */
  readonly fullConfig: boolean;
}

/** Zeroes the Device Serial Number extended capability (id 0x0003) in a config space copy. */
export function redactSerial(config: Uint8Array): { bytes: Uint8Array; redacted: boolean } {
  if (config.length < 0x1000) return { bytes: config, redacted: false };
  const b = config.slice();
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let ptr = 0x100;
  let redacted = false;
  const seen = new Set<number>();
  while (ptr >= 0x100 && ptr + 12 <= b.length && !seen.has(ptr)) {
    seen.add(ptr);
    const hdr = dv.getUint32(ptr, true);
    if (hdr === 0 || hdr === 0xffffffff) break;
    if ((hdr & 0xffff) === 0x0003) {
      b.fill(0, ptr + 4, ptr + 12);
      redacted = true;
    }
    ptr = (hdr >>> 20) & 0xffc;
  }
  return { bytes: b, redacted };
}

export async function gather(
  root: string,
  output: string,
  progress?: (n: number) => void,
): Promise<GatherResult> {
  const entries: TarEntry[] = [];
  const seenDirs = new Set<string>();
  let functions = 0;
  let redacted = 0;
  let fullConfig = false;
  const addDir = (rel: string) => {
    const parts = rel.split("/");
    for (let i = 1; i <= parts.length; i++) {
      const d = parts.slice(0, i).join("/");
      if (seenDirs.has(d)) continue;
      seenDirs.add(d);
      entries.push({ header: { name: `${d}/`, type: "directory", size: 0, mode: 0o755 } });
    }
  };
  const addFile = (rel: string, data: Uint8Array) => {
    addDir(dirname(rel));
    entries.push({
      header: { name: rel, type: "file", size: data.length, mode: 0o644 },
      body: data,
    });
  };
  const addLink = (rel: string, target: string) => {
    addDir(dirname(rel));
    entries.push({
      header: { name: rel, type: "symlink", size: 0, linkname: target, mode: 0o777 },
    });
  };
  const tryRead = (rel: string): Uint8Array | null => {
    try {
      return readFileSync(join(root, rel));
    } catch {
      return null;
    }
  };
  const tryLink = (rel: string): string | null => {
    try {
      return readlinkSync(join(root, rel));
    } catch {
      return null;
    }
  };
  const list = (rel: string): string[] => {
    try {
      return readdirSync(join(root, rel)).sort();
    } catch {
      return [];
    }
  };
  const isDir = (rel: string) => {
    try {
      return lstatSync(join(root, rel)).isDirectory();
    } catch {
      return false;
    }
  };

  for (const p of PROC_FILES) {
    const d = tryRead(p);
    if (d) addFile(p, d);
  }
  for (const name of list("sys/bus/pci/devices")) {
    const t = tryLink(`sys/bus/pci/devices/${name}`);
    if (t) addLink(`sys/bus/pci/devices/${name}`, t);
  }
  for (const slot of list("sys/bus/pci/slots")) {
    const d = tryRead(`sys/bus/pci/slots/${slot}/address`);
    if (d) addFile(`sys/bus/pci/slots/${slot}/address`, d);
  }
  const walk = (rel: string, depth: number) => {
    if (depth > 32) return;
    for (const name of list(rel)) {
      const child = `${rel}/${name}`;
      if (!isDir(child)) continue;
      if (HB_RE.test(name)) {
        addDir(child);
        walk(child, depth + 1);
      } else if (parseBdf(name) && name.length >= 12) {
        functions++;
        progress?.(functions);
        addDir(child);
        for (const f of FUNCTION_FILES) {
          let d = tryRead(`${child}/${f}`);
          if (!d) continue;
          if (f === "config") {
            if (d.length >= 256) fullConfig = true;
            const r = redactSerial(d);
            d = r.bytes;
            if (r.redacted) redacted++;
          }
          addFile(`${child}/${f}`, d);
        }
        for (const l of FUNCTION_LINKS) {
          const t = tryLink(`${child}/${l}`);
          if (t) addLink(`${child}/${l}`, t);
        }
        for (const v of list(child).filter((n) => /^virtfn\d+$/.test(n))) {
          const t = tryLink(`${child}/${v}`);
          if (t) addLink(`${child}/${v}`, t);
        }
        walk(child, depth + 1);
      }
    }
  };
  for (const name of list("sys/devices"))
    if (HB_RE.test(name)) {
      addDir(`sys/devices/${name}`);
      walk(`sys/devices/${name}`, 0);
    }
  for (const g of list("sys/kernel/iommu_groups")) {
    const t = tryRead(`sys/kernel/iommu_groups/${g}/type`);
    if (t) addFile(`sys/kernel/iommu_groups/${g}/type`, t);
    else addDir(`sys/kernel/iommu_groups/${g}`);
    for (const d of list(`sys/kernel/iommu_groups/${g}/devices`)) {
      const l = tryLink(`sys/kernel/iommu_groups/${g}/devices/${d}`);
      if (l) addLink(`sys/kernel/iommu_groups/${g}/devices/${d}`, l);
    }
  }
  if (isDir("sys/kernel/iommu_groups")) addDir("sys/kernel/iommu_groups");
  for (const n of list("sys/devices/system/node").filter((x) => /^node\d+$/.test(x))) {
    const d = tryRead(`sys/devices/system/node/${n}/cpulist`);
    if (d) addFile(`sys/devices/system/node/${n}/cpulist`, d);
  }
  addFile("peerbuf-capture.txt", new TextEncoder().encode("peerbuf gather capture, format 1\n"));
  const tar = await packTar(entries);
  const gz = gzipSync(tar, { level: 9 });
  const tmp = `${output}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, gz, { flag: "wx" });
    renameSync(tmp, output);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {}
    throw e;
  }
  return { output, functions, files: entries.length, redacted, fullConfig };
}
