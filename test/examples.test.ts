import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { detectTextFormat } from "../src/core/formats/detect.ts";
import { writeDot } from "../src/core/formats/dot.ts";
import { parseMachineDocument, writeMachineYaml } from "../src/core/formats/machine-doc.ts";
import { parseBdf } from "../src/core/hw/bdf.ts";
import { buildMachine, type Machine, type PciFunction } from "../src/core/hw/machine.ts";

const DIR = fileURLToPath(new URL("../examples/machines/", import.meta.url));

function load(name: string): Machine {
  const file = `examples/machines/${name}`;
  return buildMachine(parseMachineDocument(file, readFileSync(`${DIR}${name}`, "utf8")));
}

const byClass = (m: Machine, test: (c: number) => boolean) =>
  m.functions.filter((f) => test(f.desc.classCode));
const ids = (f: PciFunction) =>
  `${f.desc.vendor?.toString(16).padStart(4, "0")}:${f.desc.device?.toString(16).padStart(4, "0")}`;
const busOf = (f: PciFunction) => parseBdf(f.desc.bdf)!.bus;

/** Structural facts every shipped example must satisfy. */
function checkWellFormed(m: Machine) {
  const mem: { f: PciFunction; start: bigint; end: bigint }[] = [];
  const io: { f: PciFunction; start: bigint; end: bigint }[] = [];
  for (const f of m.functions) {
    for (const b of f.desc.bars ?? []) {
      assert.ok(
        b.size > 0n && (b.size & (b.size - 1n)) === 0n,
        `${f.name} BAR${b.index}: size not a power of two`,
      );
      assert.equal(b.start % b.size, 0n, `${f.name} BAR${b.index}: not naturally aligned`);
      (b.mem ? mem : io).push({ f, start: b.start, end: b.start + b.size });
      if (!b.mem) continue;
      const windows = f.hostBridge.desc.windows ?? [];
      assert.ok(windows.length > 0, `${f.name}: its host bridge lists no windows`);
      assert.ok(
        windows.some((w) => b.start >= w.cpuStart && b.start + b.size <= w.cpuStart + w.size),
        `${f.name} BAR${b.index} at 0x${b.start.toString(16)} is outside every window of pci${f.hostBridge.id}`,
      );
    }
    const hb = f.hostBridge.desc;
    const bus = busOf(f);
    assert.ok(
      bus >= hb.bus && bus <= (hb.busEnd ?? 0xff),
      `${f.name} is outside pci${f.hostBridge.id}'s buses`,
    );
    if (f.parent) {
      assert.equal(
        bus,
        f.parent.desc.secondaryBus,
        `${f.name} is not on ${f.parent.name}'s secondary bus`,
      );
      assert.ok(f.parent.desc.subordinateBus !== undefined && bus <= f.parent.desc.subordinateBus);
    }
  }
  for (const list of [mem, io]) {
    const sorted = [...list].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    for (let i = 1; i < sorted.length; i++)
      assert.ok(
        sorted[i]!.start >= sorted[i - 1]!.end,
        `BARs of ${sorted[i - 1]!.f.name} and ${sorted[i]!.f.name} overlap`,
      );
  }
}

/** Every endpoint below a bridge reaches a root port by walking its parents. */
function checkEndpointsUnderRootPorts(m: Machine) {
  const endpoints = m.functions.filter((f) => !f.isBridge && f.parent !== null);
  assert.ok(endpoints.length > 0);
  for (const f of endpoints) {
    let p: PciFunction | null = f.parent;
    while (p && p.desc.pcieType !== "root-port") p = p.parent;
    assert.ok(p, `${f.name} has no root port above it`);
    assert.equal(p.parent, null, `${f.name}'s root port ${p.name} is not on a root bus`);
  }
}

describe("example machines", () => {
  const files = readdirSync(DIR)
    .filter((n) => n.endsWith(".yaml"))
    .sort();

  it("ships the three promised examples", () => {
    for (const name of ["cloud-vm.yaml", "flagship.yaml", "workstation.yaml"])
      assert.ok(files.includes(name), name);
  });

  for (const name of files) {
    it(`${name} loads, is well formed, round-trips and renders`, () => {
      const text = readFileSync(`${DIR}${name}`, "utf8");
      assert.match(text, /^# .+\n#/, "starts with a comment header");
      assert.equal(detectTextFormat(text), "yaml", "the CLI recognises it as our YAML");
      const m = load(name);
      checkWellFormed(m);
      assert.deepStrictEqual(parseMachineDocument(name, writeMachineYaml(m.desc)), m.desc);
      const dot = writeDot(m.desc);
      for (const f of m.functions)
        assert.ok(dot.includes(`"${f.name}" [`), `${f.name} missing from DOT`);
    });
  }

  it("flagship: 2-socket Sapphire Rapids, 8 accelerators and 8 RDMA NICs behind 4 Gen5 switches", () => {
    const m = load("flagship.yaml");
    const d = m.desc;
    assert.deepEqual(
      [d.cpu?.vendor, d.cpu?.family, d.cpu?.model, d.cpu?.sockets],
      ["GenuineIntel", 6, 143, 2],
    );
    assert.equal(d.numaNodes, 2);
    assert.equal(d.iommu?.mode, "identity");
    assert.equal(d.cmdline, "BOOT_IMAGE=/vmlinuz intel_iommu=on iommu=pt");

    const accels = byClass(m, (c) => c >> 16 === 0x12);
    const nics = byClass(m, (c) => c >> 8 === 0x0207);
    assert.equal(accels.length, 8);
    assert.equal(nics.length, 8);
    assert.ok(accels.every((f) => ids(f) === "1da3:1020" && f.desc.driver === "habanalabs"));
    assert.ok(nics.every((f) => ids(f) === "15b3:1021" && f.desc.driver === "mlx5_core"));
    checkEndpointsUnderRootPorts(m);

    // each accelerator: a 32 GiB prefetchable 64-bit BAR above 4 GiB; each NIC a 32 MiB BAR
    for (const a of accels) {
      const big = a.desc.bars?.find((b) => b.size === 32n << 30n);
      assert.ok(big?.prefetchable && big.is64 && big.start >= 1n << 32n, a.name);
      assert.ok(
        a.desc.bars?.some((b) => b.size === 256n << 20n),
        a.name,
      );
    }
    for (const n of nics)
      assert.ok(n.desc.bars?.some((b) => b.size === 32n << 20n && b.start >= 1n << 32n));

    // 4 switches, 2 per socket, each with 2 accelerators and 2 NICs below its downstream ports
    const usps = m.functions.filter((f) => f.desc.pcieType === "upstream-port");
    assert.equal(usps.length, 4);
    assert.deepEqual(usps.map((u) => u.desc.numaNode).sort(), [0, 0, 1, 1]);
    for (const u of usps) {
      assert.equal(ids(u), "1000:c030");
      assert.equal(u.parent?.desc.pcieType, "root-port");
      assert.equal(u.parent?.parent, null);
      const below = u.children.flatMap((dsp) => dsp.children);
      assert.equal(below.filter((f) => f.desc.classCode >> 16 === 0x12).length, 2, u.name);
      assert.equal(below.filter((f) => f.desc.classCode >> 8 === 0x0207).length, 2, u.name);
      for (const dsp of u.children) {
        assert.equal(dsp.desc.pcieType, "downstream-port");
        assert.deepEqual(dsp.desc.acs, { cap: 0x7f, ctrl: 0x1d });
      }
      for (const f of below) assert.equal(f.desc.link?.width, 16);
    }

    // one root port per host bridge, and 8086:09a2 at devfn 00.0 of every root bus
    const rootPorts = m.functions.filter((f) => f.desc.pcieType === "root-port");
    assert.equal(rootPorts.length, 8);
    assert.equal(new Set(rootPorts.map((r) => r.hostBridge.id)).size, 8);
    for (const hb of m.hostBridges) {
      const first = hb.rootFunctions[0];
      assert.equal(first?.bdf.dev, 0);
      assert.equal(first?.bdf.fn, 0);
      assert.equal(ids(first!), "8086:09a2", `pci${hb.id}`);
    }
    assert.ok(byClass(m, (c) => c >> 8 === 0x0108).length >= 1, "an NVMe drive");
  });

  it("workstation: Threadripper PRO, 2 GPUs on separate root ports of one host bridge", () => {
    const m = load("workstation.yaml");
    assert.deepEqual([m.desc.cpu?.vendor, m.desc.cpu?.family], ["AuthenticAMD", 25]);
    assert.equal(m.desc.iommu?.mode, "dma");
    assert.equal(m.hostBridges.length, 1);
    assert.equal(ids(m.byBdf("0000:00:00.0")!), "1022:14a4");
    const gpus = byClass(m, (c) => c >> 8 === 0x0300);
    assert.equal(gpus.length, 2);
    assert.ok(gpus.every((g) => ids(g) === "10de:2684"));
    const ports = gpus.map((g) => g.parent!);
    assert.notEqual(ports[0], ports[1]);
    assert.ok(ports.every((p) => p.desc.pcieType === "root-port" && ids(p) === "1022:14ab"));
    assert.ok(gpus.every((g) => g.desc.bars?.some((b) => b.size === 32n << 30n && b.prefetchable)));
    assert.equal(byClass(m, (c) => c === 0x010802).length, 1);
    assert.equal(byClass(m, (c) => c >> 16 === 0x02).length, 1);
    checkEndpointsUnderRootPorts(m);
  });

  it("cloud-vm: 8 GPUs, 4 EFA NICs and NVMe flat on the 440FX root bus, no switches, no IOMMU", () => {
    const m = load("cloud-vm.yaml");
    assert.equal(m.desc.cpu?.vendor, "GenuineIntel");
    assert.equal(m.desc.iommu?.mode, "off");
    assert.equal(m.hostBridges.length, 1);
    assert.equal(m.hostBridges[0]!.id, "0000:00");
    assert.equal(ids(m.byBdf("0000:00:00.0")!), "8086:1237");
    assert.ok(m.functions.every((f) => f.parent === null && !f.isBridge));
    assert.equal(m.functions.filter((f) => ids(f) === "10de:20b0").length, 8);
    assert.equal(m.functions.filter((f) => ids(f) === "1d0f:efa1").length, 4);
    assert.ok(byClass(m, (c) => c === 0x010802).length >= 1);
    assert.ok(m.functions.every((f) => f.desc.acs === undefined || f.desc.acs === null));
  });
});
