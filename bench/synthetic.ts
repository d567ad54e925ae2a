/**
 * Synthetic machines for benchmarks and scale tests: a sysfs tree in the layout Linux exposes
 * (device paths, bus/pci/devices links, 4 KiB config spaces with PCIe and ACS capabilities).
 */

import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";

export interface SyntheticOptions {
  readonly hostBridges: number;
  readonly rootPortsPerHostBridge: number;
  readonly downstreamPortsPerSwitch: number;
  readonly functionsPerDevice: number;
  /** Every n-th downstream port gets ACS redirect (RR|CR). 0: none. */
  readonly acsEvery?: number;
}

export interface SyntheticTree {
  readonly files: Map<string, Uint8Array | string>;
  readonly links: Map<string, string>;
  readonly functions: number;
}

const hex = (v: number, w: number) => v.toString(16).padStart(w, "0");

function config(
  vendor: number,
  device: number,
  cls: number,
  hdr: number,
  pcieType: number,
  acsCtrl: number | null,
  bus?: [number, number, number],
  multi = false,
): Uint8Array {
  const b = new Uint8Array(4096);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, vendor, true);
  dv.setUint16(2, device, true);
  dv.setUint16(6, 0x10, true);
  b[0x09] = cls & 0xff;
  b[0x0a] = (cls >> 8) & 0xff;
  b[0x0b] = (cls >> 16) & 0xff;
  b[0x0e] = hdr | (multi ? 0x80 : 0);
  if (bus) {
    b[0x18] = bus[0];
    b[0x19] = bus[1];
    b[0x1a] = bus[2];
  }
  b[0x34] = 0x40;
  b[0x40] = 0x10;
  dv.setUint16(0x42, (pcieType << 4) | 2, true);
  dv.setUint32(0x4c, (16 << 4) | 5, true);
  dv.setUint16(0x52, (16 << 4) | 5, true);
  if (acsCtrl !== null) {
    dv.setUint32(0x100, 0x0d | (1 << 16), true);
    dv.setUint16(0x104, 0x5f, true);
    dv.setUint16(0x106, acsCtrl, true);
  }
  return b;
}

export function syntheticSysfs(o: SyntheticOptions): SyntheticTree {
  const files = new Map<string, Uint8Array | string>();
  const links = new Map<string, string>();
  let count = 0;
  const addFn = (
    path: string,
    bdf: string,
    vendor: number,
    device: number,
    cls: number,
    cfg: Uint8Array,
    extra: Record<string, string> = {},
  ) => {
    count++;
    const dir = `sys/devices/${path}`;
    files.set(`${dir}/vendor`, `0x${hex(vendor, 4)}\n`);
    files.set(`${dir}/device`, `0x${hex(device, 4)}\n`);
    files.set(`${dir}/class`, `0x${hex(cls, 6)}\n`);
    files.set(`${dir}/subsystem_vendor`, `0x${hex(vendor, 4)}\n`);
    files.set(`${dir}/subsystem_device`, "0x0000\n");
    files.set(`${dir}/config`, cfg);
    files.set(`${dir}/numa_node`, "0\n");
    files.set(`${dir}/max_link_speed`, "32.0 GT/s PCIe\n");
    files.set(`${dir}/current_link_speed`, "32.0 GT/s PCIe\n");
    files.set(`${dir}/max_link_width`, "16\n");
    files.set(`${dir}/current_link_width`, "16\n");
    files.set(
      `${dir}/resource`,
      `${"0x0000000000000000 0x0000000000000000 0x0000000000000000\n".repeat(13)}`,
    );
    for (const [k, v] of Object.entries(extra)) files.set(`${dir}/${k}`, v);
    links.set(`sys/bus/pci/devices/${bdf}`, `../../../devices/${path}`);
  };
  let bus = 0;
  let dsp = 0;
  for (let h = 0; h < o.hostBridges; h++) {
    const root = bus;
    const hb = `pci0000:${hex(root, 2)}`;
    bus++;
    addFn(
      `${hb}/0000:${hex(root, 2)}:00.0`,
      `0000:${hex(root, 2)}:00.0`,
      0x8086,
      0x09a2,
      0x060000,
      config(0x8086, 0x09a2, 0x060000, 0, 9, null),
    );
    for (let r = 0; r < o.rootPortsPerHostBridge; r++) {
      const rpBdf = `0000:${hex(root, 2)}:${hex(r + 1, 2)}.0`;
      const rpPath = `${hb}/${rpBdf}`;
      const uspBus = bus++;
      const dspBus = bus++;
      const first = bus;
      const last = first + o.downstreamPortsPerSwitch - 1;
      addFn(
        rpPath,
        rpBdf,
        0x8086,
        0x352a,
        0x060400,
        config(0x8086, 0x352a, 0x060400, 1, 4, 0, [root, uspBus, last]),
        {
          secondary_bus_number: `${uspBus}\n`,
          subordinate_bus_number: `${last}\n`,
        },
      );
      const uspBdf = `0000:${hex(uspBus, 2)}:00.0`;
      const uspPath = `${rpPath}/${uspBdf}`;
      addFn(
        uspPath,
        uspBdf,
        0x1000,
        0xc030,
        0x060400,
        config(0x1000, 0xc030, 0x060400, 1, 5, null, [uspBus, dspBus, last]),
        {
          secondary_bus_number: `${dspBus}\n`,
          subordinate_bus_number: `${last}\n`,
        },
      );
      for (let d = 0; d < o.downstreamPortsPerSwitch; d++) {
        const epBus = bus++;
        const acs = o.acsEvery && dsp++ % o.acsEvery === 0 ? 0x1d : 0x11;
        const dBdf = `0000:${hex(dspBus, 2)}:${hex(d, 2)}.0`;
        const dPath = `${uspPath}/${dBdf}`;
        addFn(
          dPath,
          dBdf,
          0x1000,
          0xc030,
          0x060400,
          config(0x1000, 0xc030, 0x060400, 1, 6, acs, [dspBus, epBus, epBus]),
          {
            secondary_bus_number: `${epBus}\n`,
            subordinate_bus_number: `${epBus}\n`,
          },
        );
        for (let f = 0; f < o.functionsPerDevice; f++) {
          const eBdf = `0000:${hex(epBus, 2)}:00.${f}`;
          const cls = f === 0 ? 0x120000 : 0x020700;
          addFn(
            `${dPath}/${eBdf}`,
            eBdf,
            0x15b3,
            0x1021,
            cls,
            config(0x15b3, 0x1021, cls, 0, 0, null, undefined, o.functionsPerDevice > 1),
          );
        }
      }
    }
  }
  if (bus > 256)
    throw new Error(`synthetic machine needs ${bus} buses; use more domains or fewer ports`);
  files.set(
    "proc/cpuinfo",
    "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Synthetic\n\n",
  );
  // enough of a CPU topology for hwloc to accept the tree as a machine
  files.set("sys/devices/system/cpu/online", "0\n");
  files.set("sys/devices/system/cpu/possible", "0\n");
  files.set("sys/devices/system/cpu/cpu0/online", "1\n");
  files.set("sys/devices/system/cpu/cpu0/topology/physical_package_id", "0\n");
  files.set("sys/devices/system/cpu/cpu0/topology/core_id", "0\n");
  files.set("sys/devices/system/cpu/cpu0/topology/core_cpus", "1\n");
  files.set("sys/devices/system/cpu/cpu0/topology/thread_siblings", "1\n");
  files.set("sys/devices/system/cpu/cpu0/topology/core_siblings", "1\n");
  files.set("sys/devices/system/cpu/cpu0/topology/package_cpus", "1\n");
  files.set("sys/devices/system/node/node0/cpumap", "1\n");
  files.set("sys/devices/system/node/node0/meminfo", "Node 0 MemTotal:       1048576 kB\n");
  files.set("proc/cmdline", "BOOT_IMAGE=/vmlinuz intel_iommu=on\n");
  return { files, links, functions: count };
}

export function writeSyntheticTree(t: SyntheticTree, dir: string): void {
  for (const [p, data] of t.files) {
    const full = join(dir, p);
    mkdirSync(dirname(full), { recursive: true });
    writeFileSync(full, data);
  }
  for (const [p, target] of t.links) {
    const full = join(dir, p);
    mkdirSync(dirname(full), { recursive: true });
    symlinkSync(target, full);
  }
}

/**
 * A large machine as a description (no files): several domains, each host bridge with root ports,
 * two levels of switches, and endpoints; every `acsEvery`-th downstream port redirects.
 */
export function syntheticDescription(
  endpoints: number,
  acsEvery = 5,
): import("../src/core/hw/machine.ts").MachineDescription {
  type F = import("../src/core/hw/machine.ts").FunctionDescription;
  const functions: F[] = [];
  const hostBridges: { domain: number; bus: number }[] = [];
  let made = 0;
  let dspCount = 0;
  let domain = 0;
  const bdf = (d: number, b: number, dev: number, fn: number) =>
    `${hex(d, 4)}:${hex(b, 2)}:${hex(dev, 2)}.${fn}`;
  const bridge = (
    name: string,
    parent: string | null,
    type: "root-port" | "upstream-port" | "downstream-port",
    acs: number | null,
  ): void => {
    functions.push({
      bdf: name,
      parent,
      vendor: 0x1000,
      device: 0xc030,
      classCode: 0x060400,
      headerType: 1,
      pcieType: type,
      acs: acs === null ? null : { cap: 0x5f, ctrl: acs },
    });
  };
  while (made < endpoints) {
    hostBridges.push({ domain, bus: 0 });
    functions.push({
      bdf: bdf(domain, 0, 0, 0),
      parent: null,
      vendor: 0x8086,
      device: 0x09a2,
      classCode: 0x060000,
      headerType: 0,
      pcieType: null,
      acs: null,
    });
    let bus = 1;
    for (let rp = 1; rp <= 8 && made < endpoints && bus < 240; rp++) {
      const rpName = bdf(domain, 0, rp, 0);
      bridge(rpName, null, "root-port", 0x1d);
      const usp = bdf(domain, bus++, 0, 0);
      bridge(usp, rpName, "upstream-port", null);
      const dspBus = bus++;
      for (let d = 0; d < 4 && made < endpoints && bus < 250; d++) {
        const dsp = bdf(domain, dspBus, d, 0);
        bridge(dsp, usp, "downstream-port", dspCount++ % acsEvery === 0 ? 0x1d : 0x11);
        const usp2 = bdf(domain, bus++, 0, 0);
        bridge(usp2, dsp, "upstream-port", null);
        const dsp2Bus = bus++;
        for (let e = 0; e < 4 && made < endpoints && bus < 254; e++) {
          const dsp2 = bdf(domain, dsp2Bus, e, 0);
          bridge(dsp2, usp2, "downstream-port", dspCount++ % acsEvery === 0 ? 0x1d : 0x11);
          const epBus = bus++;
          for (let f = 0; f < 2 && made < endpoints; f++, made++)
            functions.push({
              bdf: bdf(domain, epBus, 0, f),
              parent: dsp2,
              vendor: 0x1da3,
              device: 0x1020,
              classCode: f === 0 ? 0x120000 : 0x020700,
              headerType: 0,
              pcieType: "endpoint",
              multifunction: true,
              acs: null,
            });
        }
      }
    }
    domain++;
  }
  return {
    schemaVersion: 1,
    cpu: { vendor: "GenuineIntel", family: 6 },
    iommu: { mode: "dma" },
    hostBridges,
    functions,
  };
}
