// Real hwloc (`lstopo-no-graphics`, Debian hwloc-nox 2.9) must load what writeHwlocXml writes and
// keep every PCI function in place when it writes the topology back out.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { parseHwlocXml, writeHwlocXml } from "../src/core/formats/hwloc-xml.ts";
import { parseNcclXml } from "../src/core/formats/nccl-xml.ts";
import type { MachineDescription } from "../src/core/hw/machine.ts";
import { MACHINE_SCHEMA_VERSION } from "../src/core/hw/machine.ts";
import { loadInput } from "../src/node/load-input.ts";
import { real, skipReal as skipRealFixtures } from "./support/real.ts";

const LSTOPO = "lstopo-no-graphics";
const probe = spawnSync(LSTOPO, ["--version"], { encoding: "utf8" });
const skipLstopo = probe.error || probe.status !== 0 ? `${LSTOPO} is not installed` : false;
const skipReal = skipLstopo || skipRealFixtures;

const dir = mkdtempSync(join(tmpdir(), "peerbuf-lstopo-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Writes `m`, has lstopo load it and export whole-I/O XML, and reads that back. */
function throughLstopo(
  name: string,
  m: MachineDescription,
): { back: MachineDescription; stderr: string } {
  const file = join(dir, `${name}.xml`);
  writeFileSync(file, writeHwlocXml(m));
  const r = spawnSync(LSTOPO, ["--input", file, "--whole-io", "--of", "xml", "-"], {
    encoding: "utf8",
    env: { ...process.env, HWLOC_XML_VERBOSE: "1", HWLOC_THISSYSTEM: "0" },
  });
  assert.equal(r.status, 0, `${name}: lstopo exited ${r.status}: ${r.stderr}`);
  // with HWLOC_XML_VERBOSE hwloc names every attribute or object it ignores; only the 32-bit
  // domain notice (see in16bitDomain) is expected
  const other = r.stderr
    .split("\n")
    .filter((l) => !/non-16bit domain|32bits-pci-domain|library ABI/.test(l))
    .join("\n");
  assert.doesNotMatch(other, /ignor|invalid|fail|error/i, `${name}: ${r.stderr}`);
  return { back: parseHwlocXml(`${name} (lstopo)`, r.stdout), stderr: r.stderr };
}

/** Debian's hwloc has no 32-bit PCI domains (no --enable-32bits-pci-domain) and drops them. */
const in16bitDomain = (bdf: string) => /^[0-9a-f]{4}:/.test(bdf);

function assertSamePci(name: string, m: MachineDescription, back: MachineDescription): void {
  const want = m.functions.filter((f) => in16bitDomain(f.bdf));
  const got = new Map(back.functions.map((f) => [f.bdf, f]));
  assert.equal(got.size, want.length, `${name}: function count`);
  for (const f of want) {
    const g = got.get(f.bdf);
    assert.ok(g, `${name}: lstopo lost ${f.bdf}`);
    assert.equal(g.parent, f.parent, `${name}: parent of ${f.bdf}`);
    if (f.vendor !== undefined) {
      assert.equal(g.vendor, f.vendor, `${name}: vendor of ${f.bdf}`);
      assert.equal(g.device, f.device, `${name}: device of ${f.bdf}`);
    }
    // hwloc 2 keeps class and sub-class, not the programming interface
    assert.equal(g.classCode >> 8, f.classCode >> 8, `${name}: class of ${f.bdf}`);
    assert.deepEqual(g.link, f.link, `${name}: link of ${f.bdf}`);
    assert.deepEqual(g.osDevices ?? [], f.osDevices ?? [], `${name}: OS devices of ${f.bdf}`);
  }
}

describe("writeHwlocXml output in real hwloc", { skip: skipLstopo }, () => {
  it("loads a made-up machine with three NUMA nodes, one unplaced host bridge and VFs", () => {
    const m: MachineDescription = {
      schemaVersion: MACHINE_SCHEMA_VERSION,
      cpu: { vendor: "AuthenticAMD", family: 25, model: 17, arch: "x86_64" },
      hostBridges: [
        { domain: 0, bus: 0, numaNode: 0 },
        { domain: 0, bus: 0x40, numaNode: 2 },
        { domain: 1, bus: 0 },
        { domain: 0, bus: 0x80, numaNode: 1 },
      ],
      functions: [
        {
          bdf: "0000:00:01.1",
          parent: null,
          classCode: 0x060400,
          vendor: 0x1022,
          device: 0x1483,
          secondaryBus: 1,
          subordinateBus: 1,
          link: { speed: 16, width: 16, maxSpeed: 16, maxWidth: 16 },
        },
        {
          bdf: "0000:01:00.0",
          parent: "0000:00:01.1",
          classCode: 0x020000,
          vendor: 0x15b3,
          device: 0x101d,
          revision: 0,
          subsystemVendor: 0x15b3,
          subsystemDevice: 0x0040,
          osDevices: ["ens1f0", "mlx5_0"],
          sriov: { totalVfs: 2, numVfs: 2 },
        },
        {
          bdf: "0000:01:00.2",
          parent: "0000:00:01.1",
          classCode: 0x020000,
          vendor: 0x15b3,
          device: 0x101e,
          physfn: "0000:01:00.0",
        },
        {
          bdf: "0000:01:00.3",
          parent: "0000:00:01.1",
          classCode: 0x020000,
          vendor: 0x15b3,
          device: 0x101e,
          physfn: "0000:01:00.0",
        },
        { bdf: "0000:40:01.1", parent: null, classCode: 0x060400, vendor: 0x1022, device: 0x1483 },
        {
          bdf: "0000:41:00.0",
          parent: "0000:40:01.1",
          classCode: 0x030200,
          vendor: 0x10de,
          device: 0x2330,
          link: { speed: 32, width: 16 },
        },
        {
          bdf: "0001:00:00.0",
          parent: null,
          classCode: 0x010802,
          vendor: 0x144d,
          device: 0xa80a,
          osDevices: ["nvme0n1"],
        },
        { bdf: "0000:80:00.0", parent: null, classCode: 0x060000, vendor: 0x1022, device: 0x14a4 },
      ],
    };
    const { back } = throughLstopo("made-up", m);
    assertSamePci("made-up", m, back);
    const node = (bdf: string) => back.functions.find((f) => f.bdf === bdf)!.numaNode;
    assert.deepEqual(["0000:00:01.1", "0000:40:01.1", "0000:80:00.0", "0001:00:00.0"].map(node), [
      0,
      2,
      1,
      undefined,
    ]);
    assert.equal(back.numaNodes, 3);
  });

  it("loads real machines read from hwloc XML, sysfs captures and NCCL files", {
    skip: skipReal,
  }, async () => {
    const xml = (p: string) => parseHwlocXml(p, readFileSync(real(p), "utf8"));
    const cases: [string, MachineDescription][] = [
      ["dgx2", xml("hwloc-tests/nvidiaDGX2.xml")],
      ["power8", xml("hwloc-tests/power8gpudistances.xml")],
      ["p5en", xml("aws-ofi-nccl-fixtures/p5en/topology.pci-excerpt.xml")],
      ["ve", await loadInput([real("hwloc-tests/32intel64-2p8co2t+8ve.tar.bz2")])],
      ["dax", await loadInput([real("hwloc-tests/32em64t-2n8c+dax+nvme+mic+dimms.tar.bz2")])],
      ["vmd", await loadInput([real("hwloc-tests/2pa-pcidomain32bits.tar.bz2")])],
      [
        "p4d-nccl",
        parseNcclXml("p4d", readFileSync(real("aws-ofi-nccl/p4d-24xl-topo.xml"), "utf8")),
      ],
      [
        "mi300x-rccl",
        parseNcclXml("940", readFileSync(real("rccl-topo-models/topo_8p_940.xml"), "utf8")),
      ],
    ];
    for (const [name, m] of cases) {
      const { back } = throughLstopo(name, m);
      assertSamePci(name, m, back);
    }
  });
});
