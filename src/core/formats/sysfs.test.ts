import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { InputError } from "../errors.ts";
import { buildMachine } from "../hw/machine.ts";
import { MemorySnapshot, realpath } from "./snapshot.ts";
import { loadSysfs, parentsByBusRange, parseResourceFile, parseSysfsSpeed } from "./sysfs.ts";

/** A root port 00:01.0 with an endpoint 01:00.0 (PF) and its VF 01:00.2, as Linux lays them out. */
function capture(withPaths: boolean): MemorySnapshot {
  const s = new MemorySnapshot("cap");
  const rp = "sys/devices/pci0000:00/0000:00:01.0";
  const ep = `${rp}/0000:01:00.0`;
  const vf = `${rp}/0000:01:00.2`;
  const fn = (
    dir: string,
    cls: string,
    vendor: string,
    device: string,
    extra: Record<string, string> = {},
  ) => {
    s.addFile(`${dir}/class`, `${cls}\n`)
      .addFile(`${dir}/vendor`, `${vendor}\n`)
      .addFile(`${dir}/device`, `${device}\n`);
    for (const [k, v] of Object.entries(extra)) s.addFile(`${dir}/${k}`, v);
  };
  fn(rp, "0x060400", "0x8086", "0x352a", {
    secondary_bus_number: "1\n",
    subordinate_bus_number: "1\n",
    current_link_speed: "16.0 GT/s PCIe\n",
    max_link_speed: "32.0 GT/s PCIe\n",
    current_link_width: "16\n",
    max_link_width: "16\n",
  });
  fn(ep, "0x020700", "0x15b3", "0x1021", {
    numa_node: "1\n",
    sriov_totalvfs: "8\n",
    sriov_numvfs: "1\n",
    resource: "0x000038c000000000 0x000038c001ffffff 0x000000000014220c\n",
  });
  fn(vf, "0x020700", "0x15b3", "0x101e", { numa_node: "-1\n" });
  s.addLink(`${vf}/physfn`, "../0000:01:00.0");
  s.addLink(`${ep}/driver`, "../../../../bus/pci/drivers/mlx5_core");
  s.addFile(
    "proc/cpuinfo",
    "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n\n",
  );
  if (withPaths) {
    for (const [b, d] of [
      ["0000:00:01.0", rp],
      ["0000:01:00.0", ep],
      ["0000:01:00.2", vf],
    ])
      s.addLink(`sys/bus/pci/devices/${b}`, `../../../${d!.slice(4)}`);
  } else {
    // hwloc-style flattened capture: device directories without paths
    for (const [b, d] of [
      ["0000:00:01.0", rp],
      ["0000:01:00.0", ep],
      ["0000:01:00.2", vf],
    ]) {
      const flat = `sys/bus/pci/devices/${b}`;
      for (const f of [
        "class",
        "vendor",
        "device",
        "secondary_bus_number",
        "subordinate_bus_number",
      ]) {
        const data = s.readFile(`${d}/${f}`);
        if (data) s.addFile(`${flat}/${f}`, data);
      }
    }
  }
  return s;
}

describe("loadSysfs", () => {
  it("derives parents from device paths, VFs from physfn, CPU from cpuinfo", () => {
    const d = loadSysfs(capture(true));
    const m = buildMachine(d);
    assert.equal(m.functions.length, 3);
    assert.equal(m.byBdf("01:00.0")?.parent?.name, "0000:00:01.0");
    assert.equal(m.byBdf("01:00.2")?.physfn?.name, "0000:01:00.0");
    assert.equal(m.byBdf("01:00.0")?.desc.driver, "mlx5_core");
    assert.equal(m.byBdf("01:00.0")?.desc.numaNode, 1);
    assert.equal(m.byBdf("01:00.2")?.desc.numaNode, null);
    assert.deepEqual(m.byBdf("01:00.0")?.desc.sriov, { totalVfs: 8, numVfs: 1 });
    assert.deepEqual(m.byBdf("00:01.0")?.desc.link, {
      maxSpeed: 32,
      speed: 16,
      maxWidth: 16,
      width: 16,
    });
    const bar = m.byBdf("01:00.0")?.desc.bars?.[0];
    assert.equal(bar?.start, 0x38c000000000n);
    assert.equal(bar?.size, 32n << 20n);
    assert.ok(bar?.mem && bar.prefetchable && bar.is64);
    assert.equal(d.cpu?.vendor, "AuthenticAMD");
    assert.equal(d.cpu?.family, 25);
    assert.ok(
      d.unknowns?.some((u) => u.includes("ACS")),
      "ACS is unknown without config space",
    );
    assert.ok(d.unknowns?.some((u) => u.includes("command line")));
  });

  it("falls back to bridge bus ranges when the capture has no device paths, with the same answer", () => {
    const flat = buildMachine(loadSysfs(capture(false)));
    assert.equal(flat.byBdf("01:00.0")?.parent?.name, "0000:00:01.0");
    assert.equal(flat.byBdf("00:01.0")?.parent, null);
  });

  it("refuses what is not a capture, and a broken device link, naming the place", () => {
    assert.throws(
      () => loadSysfs(new MemorySnapshot("empty")),
      (e) => e instanceof InputError && /not a sysfs capture/.test(e.message),
    );
    const s = new MemorySnapshot("broken")
      .addDir("sys/devices")
      .addLink("sys/bus/pci/devices/0000:00:01.0", "../../../devices/pci0000:00/0000:00:01.0");
    assert.throws(
      () => loadSysfs(s),
      (e) =>
        e instanceof InputError &&
        e.message.includes("0000:00:01.0") &&
        /broken link/.test(e.message),
    );
  });

  it("reports a symlink loop instead of hanging", () => {
    const s = new MemorySnapshot("loop").addLink("a", "b").addLink("b", "a");
    assert.throws(
      () => realpath(s, "a/x"),
      (e) => e instanceof InputError && /loop/.test(e.message),
    );
  });
});

describe("sysfs attribute formats", () => {
  it("reads both speed vocabularies and typos", () => {
    assert.equal(parseSysfsSpeed("8.0 GT/s PCIe\n"), 8);
    assert.equal(parseSysfsSpeed("2.5 GT/s\n"), 2.5);
    assert.equal(parseSysfsSpeed("32 GT/s PCIe/s"), 32);
    assert.equal(parseSysfsSpeed("Unknown"), null);
    assert.equal(parseSysfsSpeed("Unknown speed"), null);
    assert.equal(parseSysfsSpeed("fast"), undefined);
  });
  it("rejects a malformed resource line with its line number", () => {
    assert.throws(
      () => parseResourceFile("0x0 0x1\n", "f"),
      (e) => e instanceof InputError && e.message.includes("line 1"),
    );
    assert.deepEqual(
      parseResourceFile("0x0000000000000000 0x0000000000000000 0x0000000000000000\n", "f"),
      [],
    );
  });
  it("nests by secondary bus and ignores a bridge whose secondary bus is not above its own", () => {
    const p = parentsByBusRange([
      {
        bdf: "0000:00:01.0",
        parent: null,
        classCode: 0x060400,
        secondaryBus: 1,
        subordinateBus: 2,
      },
      {
        bdf: "0000:01:00.0",
        parent: null,
        classCode: 0x060400,
        secondaryBus: 0,
        subordinateBus: 0,
      },
      { bdf: "0000:02:00.0", parent: null, classCode: 0x020000 },
      { bdf: "0000:01:00.1", parent: null, classCode: 0x020000 },
    ]);
    assert.equal(p.get("0000:01:00.1"), "0000:00:01.0");
    assert.equal(p.get("0000:02:00.0"), null);
  });
});
