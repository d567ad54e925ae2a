import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { InputError } from "../errors.ts";
import { buildMachine, type FunctionDescription, type MachineDescription } from "../hw/machine.ts";
import { LSPCI_CLASS_NAMES, looksLikeLspci, parseLspci } from "./lspci.ts";
import { parsePciIds } from "./pci-ids.ts";

const SHARED = fileURLToPath(new URL("../../../../shared", import.meta.url));
const absent = !existsSync(SHARED);
const skip = absent ? "../shared not present" : false;
const REAL = `${SHARED}/fixtures/real`;
const read = (path: string): string => readFileSync(`${REAL}/${path}`, "utf8");

const one = (text: string, file = "in.txt"): MachineDescription => parseLspci([{ file, text }]);
const byBdf = (m: MachineDescription): Map<string, FunctionDescription> =>
  new Map(m.functions.map((f) => [f.bdf, f]));
const parentMap = (m: MachineDescription): Record<string, string | null> =>
  Object.fromEntries(m.functions.map((f) => [f.bdf, f.parent]));

/** Asserts `fn` throws an InputError whose message contains every fragment. */
function rejects(fn: () => unknown, ...fragments: string[]): InputError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof InputError, `expected InputError, got ${String(e)}`);
    for (const f of fragments) assert.match(e.message, new RegExp(escapeRe(f)));
    return e;
  }
  assert.fail("expected an InputError");
}
const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** The `lspci -xxxx` part of a `-vvvxxxx` dump: headers and hex rows, no verbose lines. */
const hexOnly = (dump: string): string =>
  dump
    .split("\n")
    .filter((l) => !/^\s/.test(l))
    .join("\n");
/** The `lspci -vvv` part of a `-vvvxxxx` dump. */
const textOnly = (dump: string): string =>
  dump
    .split("\n")
    .filter((l) => !/^[0-9a-f]{2,3}: /.test(l))
    .join("\n");

const MACHINES = [
  "PCI-X-bridges-and-domains",
  "cap-exp-lnkcap2",
  "tree-asus-p6t6",
  "tree-fsl-p2020",
  "tree-fujitsu-p8010",
];

describe("parseLspci on pciutils 3.9 output for the pciutils test dumps", () => {
  for (const name of MACHINES) {
    it(`${name}: -xxxx, -tv, -vvvnn and -PPnn give the same functions and parents`, {
      skip,
    }, () => {
      const dump = read(`pciutils-tests/${name}`);
      const views = {
        hex: one(hexOnly(dump), name),
        dump: one(dump, name),
        tv: one(read(`derived/pciutils/${name}.lspci-tv.txt`), `${name}.tv`),
        vvvnn: one(read(`derived/pciutils/${name}.lspci-vvvnn.txt`), `${name}.vvvnn`),
        PPnn: one(read(`derived/pciutils/${name}.lspci-PPnn.txt`), `${name}.PPnn`),
      };
      const headers = dump
        .split("\n")
        .filter((l) => /^([0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] /.test(l));
      const want = parentMap(views.hex);
      assert.equal(Object.keys(want).length, headers.length);
      for (const [view, m] of Object.entries(views)) {
        assert.deepEqual(parentMap(m), want, `${view} disagrees with the hex dump`);
        buildMachine(m);
      }
      // at least one function sits below a bridge, so the parent check has teeth
      assert.ok(Object.values(want).some((p) => p !== null));
      // the hex dump and the -vvvnn text agree on the facts both carry
      const hex = byBdf(views.hex);
      for (const t of views.vvvnn.functions) {
        const h = hex.get(t.bdf)!;
        assert.equal(t.vendor, h.vendor, t.bdf);
        assert.equal(t.device, h.device, t.bdf);
        assert.equal(t.classCode, h.classCode, t.bdf);
        assert.equal(t.revision, h.revision, t.bdf);
        assert.equal(t.headerType, h.headerType, t.bdf);
        if (t.pcieType !== undefined) assert.equal(t.pcieType, h.pcieType, t.bdf);
        if (t.link) assert.deepEqual(t.link, h.link, t.bdf);
        assert.equal(t.secondaryBus, h.secondaryBus, t.bdf);
      }
      // all views of one machine combine without conflicts
      const all = parseLspci([
        { file: "dump", text: dump },
        { file: "tv", text: read(`derived/pciutils/${name}.lspci-tv.txt`) },
        { file: "vvvnn", text: read(`derived/pciutils/${name}.lspci-vvvnn.txt`) },
        { file: "PPnn", text: read(`derived/pciutils/${name}.lspci-PPnn.txt`) },
      ]);
      assert.deepEqual(parentMap(all), want);
    });
  }

  it("ACS words decoded from the hex dumps equal lspci's ACSCap/ACSCtl text", { skip }, () => {
    const pairs: [string, string, string][] = [
      [
        "cap-exp-lnkcap2",
        hexOnly(read("pciutils-tests/cap-exp-lnkcap2")),
        read("derived/pciutils/cap-exp-lnkcap2.lspci-vvvnn.txt"),
      ],
      [
        "cap-pcie-1",
        hexOnly(read("pciutils-tests/cap-pcie-1")),
        textOnly(read("pciutils-tests/cap-pcie-1")),
      ],
      [
        "tree-asus-p6t6",
        read("pciutils-tests/tree-asus-p6t6"),
        read("derived/pciutils/tree-asus-p6t6.lspci-vvvnn.txt"),
      ],
    ];
    let compared = 0;
    for (const [name, hexText, vvv] of pairs) {
      const hex = byBdf(one(hexText, `${name} hex`));
      const text = one(vvv, `${name} text`);
      for (const t of text.functions) {
        if (t.acs === undefined) continue;
        const h = hex.get(t.bdf)!;
        if (t.acs === null) {
          assert.equal(h.acs, null, `${name} ${t.bdf}`);
          continue;
        }
        assert.ok(h.acs, `${name} ${t.bdf}: the dump has no ACS`);
        // lspci shows the seven defined flags; the word can carry more
        assert.equal(h.acs.cap & 0x7f, t.acs.cap, `${name} ${t.bdf} cap`);
        assert.equal((h.acs.ctrl ?? -1) & 0x7f, t.acs.ctrl, `${name} ${t.bdf} ctrl`);
        assert.equal(h.acs.offset, t.acs.offset, `${name} ${t.bdf} offset`);
        compared++;
      }
    }
    assert.ok(compared >= 6, `only ${compared} ACS capabilities compared`);
  });

  it("reads the lspci -F artefacts: no BAR sizes, an empty root bus", { skip }, () => {
    const m = one(read("derived/pciutils/tree-fsl-p2020.lspci-vvvnn.txt"));
    assert.ok(m.functions.every((f) => f.bars === undefined));
    assert.ok(m.unknowns?.some((u) => u.startsWith("BARs of 6 function(s)")));
    // the tree draws an empty [0000:00] for pciutils' default host bridge; no function is there
    const tv = one(read("derived/pciutils/tree-fsl-p2020.lspci-tv.txt"));
    assert.ok(tv.functions.every((f) => !f.bdf.startsWith("0000:00:")));
    assert.deepEqual(
      tv.hostBridges.map((h) => `${h.domain}:${h.bus}`),
      ["0:4", "1:2", "2:0"],
    );
  });
});

/** lspci command blocks of a stelline hardware note: command line, then output. */
function stellineBlocks(md: string): { cmd: string; text: string }[] {
  const out: { cmd: string; text: string }[] = [];
  const lines = md.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] !== "```") continue;
    let j = i + 1;
    while (j < lines.length && lines[j] !== "```") j++;
    const [cmd = "", ...body] = lines.slice(i + 1, j);
    if (/\blspci -(?:tv|vvv -s \S+)$/.test(cmd))
      out.push({ cmd, text: body.filter((l) => !l.startsWith("[sudo]")).join("\n") });
    i = j;
  }
  return out;
}

describe("parseLspci on real servers (stelline notes: -tv plus sudo -vvv -s per device)", () => {
  const load = (name: string, ids = false) => {
    const blocks = stellineBlocks(read(`stelline/${name}.md`));
    const m = parseLspci(
      blocks.map((b, i) => ({ file: `${name}.md#${i}`, text: b.text })),
      ids ? { ids: parsePciIds(readFileSync(systemIds!, "utf8")) } : {},
    );
    return { blocks, m, machine: buildMachine(m) };
  };
  const systemIds = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"].find((p) =>
    existsSync(p),
  );

  it("ASUS ESC8000A-E12: every drawn device, the NVMe switch cascade, GPUs and NICs", {
    skip,
  }, () => {
    const { blocks, m, machine } = load("asus-esc8000a-e12");
    assert.equal(blocks.length, 9);
    const tree = blocks.find((b) => b.cmd.endsWith("-tv"))!.text;
    assert.equal(m.functions.length, tree.match(/[0-9a-f]{2}\.[0-7]/g)!.length);
    assert.equal(machine.hostBridges.length, 8);
    // 60:01.1 → 61:00.0 (switch upstream) → four downstream ports, the first with a second switch
    const up = machine.byBdf("0000:61:00.0")!;
    assert.equal(up.parent?.name, "0000:60:01.1");
    assert.deepEqual(
      up.children.map((c) => c.name),
      ["0000:62:00.0", "0000:62:04.0", "0000:62:0c.0", "0000:62:1c.0"],
    );
    // 62:00.0 → 63:00.0 (second switch) → four ports, an NVMe below each
    assert.deepEqual(
      machine.byBdf("0000:63:00.0")!.children.map((c) => c.name),
      ["0000:64:10.0", "0000:64:14.0", "0000:64:18.0", "0000:64:1c.0"],
    );
    assert.equal(machine.byBdf("0000:65:00.0")!.parent?.name, "0000:64:10.0");
    assert.equal(machine.byBdf("0000:63:00.0")!.desc.secondaryBus, 0x64);
    assert.equal(machine.byBdf("0000:62:00.0")!.desc.subordinateBus, 0x68);
    // from the -vvv blocks
    const gpu = machine.byBdf("0000:01:00.0")!.desc;
    assert.equal(gpu.classCode, 0x030000);
    assert.equal(gpu.pcieType, "legacy-endpoint");
    assert.deepEqual(gpu.link, { maxSpeed: 16, maxWidth: 16, speed: 2.5, width: 16 });
    assert.equal(gpu.driver, "nvidia");
    assert.equal(gpu.numaNode, 0);
    assert.equal(gpu.acs, null); // extended capabilities shown, none of them ACS
    assert.equal(gpu.bars?.find((b) => b.index === 1)?.size, 64n << 30n);
    const nic = machine.byBdf("0000:81:00.0")!.desc;
    assert.equal(nic.numaNode, 1);
    assert.deepEqual(nic.sriov, { totalVfs: 16, numVfs: 0 });
    assert.deepEqual(nic.acs, { cap: 0, ctrl: 0, offset: 0x230 });
    assert.equal(machine.byBdf("0000:71:00.0")!.desc.classCode, 0x010400); // RAID bus controller
    // devices only in the tree: class and ACS unknown, and said so
    const port = machine.byBdf("0000:62:04.0")!.desc;
    assert.equal(port.acs, undefined);
    assert.equal(port.headerType, 1);
    assert.ok(m.unknowns?.some((u) => /^ACS of \d+ function/.test(u)));
    assert.ok(m.unknowns?.some((u) => /^class codes of \d+ function/.test(u)));
  });

  it("Puget WRX90: the Thunderbolt/USB switch and the GPU root ports", { skip }, () => {
    const { blocks, m, machine } = load("puget-threadripper-pro-wrx90");
    const tree = blocks.find((b) => b.cmd.endsWith("-tv"))!.text;
    assert.equal(m.functions.length, tree.match(/[0-9a-f]{2}\.[0-7]/g)!.length);
    assert.deepEqual(machine.byBdf("0000:23:00.0")!.parent?.name, "0000:22:00.0");
    assert.deepEqual(
      machine.byBdf("0000:22:00.0")!.children.map((c) => c.name),
      ["0000:23:00.0", "0000:23:01.0", "0000:23:02.0", "0000:23:03.0"],
    );
    assert.equal(machine.byBdf("0000:c2:00.0")!.parent?.name, "0000:c0:03.1");
    assert.equal(machine.byBdf("0000:c1:00.0")!.desc.driver, "nvidia");
  });

  it("with pci.ids, vendor IDs and class codes come from the names", {
    skip: skip || (systemIds ? false : "no pci.ids on this system"),
  }, () => {
    const { m, machine } = load("asus-esc8000a-e12", true);
    assert.equal(machine.byBdf("0000:01:00.0")!.desc.vendor, 0x10de);
    assert.equal(machine.byBdf("0000:81:00.0")!.desc.vendor, 0x15b3);
    assert.equal(machine.byBdf("0000:00:00.0")!.desc.vendor, 0x1022);
    assert.equal(machine.byBdf("0000:00:00.0")!.desc.device, 0x14a4);
    assert.ok(m.unknowns?.some((u) => u.includes("looked up from their names")));
  });
});

// ------------------------------------------------------------------------------------------

const ROOT_PORT = `00:01.0 PCI bridge [0604]: Intel Corporation Root Port [8086:3408] (rev 12) (prog-if 00 [Normal decode])
	Control: I/O+ Mem+ BusMaster+
	Status: Cap+ 66MHz-
	Bus: primary=00, secondary=01, subordinate=02, sec-latency=0
	Capabilities: [40] Express (v2) Root Port (Slot+), MSI 00
		LnkCap:	Port #1, Speed 16GT/s, Width x16, ASPM L1
		LnkSta:	Speed 8GT/s, Width x8
	Capabilities: [100 v1] Advanced Error Reporting
	Capabilities: [150 v1] Access Control Services
		ACSCap:	SrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-
		ACSCtl:	SrcValid+ TransBlk- ReqRedir+ CmpltRedir- UpstreamFwd- EgressCtrl- DirectTrans+
	Kernel driver in use: pcieport

01:00.0 3D controller [0302]: NVIDIA Corporation GA100 [10de:20b0] (rev a1)
	Subsystem: NVIDIA Corporation Device [10de:134f]
	Control: I/O- Mem+ BusMaster+
	Status: Cap+ 66MHz-
	NUMA node: 1
	IOMMU group: 17
	Region 0: Memory at e0000000 (32-bit, non-prefetchable) [size=16M]
	Region 1: Memory at 38000000000 (64-bit, prefetchable) [disabled] [size=64G]
	Region 3: Memory at <unassigned> (64-bit, prefetchable)
	Capabilities: [60] Express (v2) Endpoint, MSI 00
		LnkCap:	Port #0, Speed 16GT/s, Width x16
		LnkSta:	Speed 2.5GT/s (downgraded), Width x16
	Capabilities: [100 v1] Virtual Channel
	Capabilities: [bb0 v1] Single Root I/O Virtualization (SR-IOV)
		Initial VFs: 4, Total VFs: 4, Number of VFs: 2, Function Dependency Link: 00
		Region 0: Memory at 0000000000000000 (64-bit, prefetchable)
	Kernel modules: nvidia
`;

describe("parseLspci on -vvvnn text", () => {
  it("reads ids, class, bus numbers, PCIe type, link, ACS bits, SR-IOV, BARs", () => {
    const m = one(ROOT_PORT);
    const [rp, gpu] = m.functions;
    assert.equal(rp!.bdf, "0000:00:01.0");
    assert.equal(rp!.parent, null);
    assert.equal(rp!.vendor, 0x8086);
    assert.equal(rp!.classCode, 0x060400);
    assert.equal(rp!.revision, 0x12);
    assert.equal(rp!.headerType, 1);
    assert.equal(rp!.secondaryBus, 1);
    assert.equal(rp!.subordinateBus, 2);
    assert.equal(rp!.pcieType, "root-port");
    assert.deepEqual(rp!.link, { maxSpeed: 16, maxWidth: 16, speed: 8, width: 8 });
    // SV RR CR UF = 0x01|0x04|0x08|0x10; ctl SV RR DT = 0x01|0x04|0x40
    assert.deepEqual(rp!.acs, { cap: 0x1d, ctrl: 0x45, offset: 0x150 });
    assert.equal(rp!.sriov, null);
    assert.equal(rp!.driver, "pcieport");
    assert.equal(gpu!.parent, "0000:00:01.0"); // by the bridge's secondary bus
    assert.equal(gpu!.classCode, 0x030200);
    assert.equal(gpu!.headerType, 0);
    assert.equal(gpu!.subsystemVendor, 0x10de);
    assert.equal(gpu!.subsystemDevice, 0x134f);
    assert.equal(gpu!.numaNode, 1);
    assert.equal(gpu!.iommuGroup, 17);
    assert.equal(gpu!.driver, null); // modules listed, none in use
    assert.equal(gpu!.acs, null); // extended capabilities listed, no ACS among them
    assert.deepEqual(gpu!.sriov, { totalVfs: 4, numVfs: 2 });
    assert.deepEqual(gpu!.bars, [
      {
        index: 0,
        start: 0xe0000000n,
        size: 16n << 20n,
        mem: true,
        prefetchable: false,
        is64: false,
      },
      {
        index: 1,
        start: 0x38000000000n,
        size: 64n << 30n,
        mem: true,
        prefetchable: true,
        is64: true,
      },
    ]);
    assert.ok(m.unknowns?.some((u) => u.includes("derived from bridge bus numbers")));
    buildMachine(m);
  });

  it("leaves ACS unknown when lspci ran without root, and says why", () => {
    const m = one(`00:01.0 PCI bridge [0604]: Intel Corporation Root Port [8086:3408]
	Control: I/O+ Mem+ BusMaster+
	Status: Cap+ 66MHz-
	Bus: primary=00, secondary=01, subordinate=01, sec-latency=0
	Capabilities: <access denied>
`);
    const f = m.functions[0]!;
    assert.equal(f.acs, undefined);
    assert.equal(f.pcieType, undefined);
    assert.ok(m.unknowns?.some((u) => u.includes("access denied")));
  });

  it("leaves ACS unknown when only standard capabilities are shown", () => {
    const m = one(`00:01.0 PCI bridge [0604]: Intel Corporation Root Port [8086:3408]
	Control: I/O+ Mem+ BusMaster+
	Status: Cap+ 66MHz-
	Capabilities: [40] Express (v2) Root Port (Slot+), MSI 00
`);
    assert.equal(m.functions[0]!.acs, undefined);
    assert.equal(m.functions[0]!.pcieType, "root-port");
  });

  it("says conventional PCI has no ACS", () => {
    const m =
      one(`00:1e.0 PCI bridge [0604]: Intel Corporation 82801 PCI Bridge [8086:244e] (rev 90) (prog-if 01 [Subtractive decode])
	Control: I/O+ Mem+ BusMaster+
	Status: Cap+ 66MHz-
	Bus: primary=00, secondary=0a, subordinate=0a, sec-latency=32
	Capabilities: [50] Subsystem: ASUSTeK Computer Inc. Device [1043:8383]
`);
    const f = m.functions[0]!;
    assert.equal(f.pcieType, null);
    assert.equal(f.acs, null);
    assert.equal(f.classCode, 0x060401);
    assert.equal(f.subsystemVendor, undefined); // a capability, not the Subsystem field
  });

  it("maps class names of output without -n, with the built-in table or pci.ids", () => {
    const text = `41:00.0 VGA compatible controller: NVIDIA Corporation AD102GL (rev a1) (prog-if 00 [VGA controller])
42:00.0 Multimedia video controller: Some Vendor Capture Card
43:00.0 Class 0b40: Device 1014:00e0`;
    const m = one(text);
    assert.equal(m.functions[0]!.classCode, 0x030000);
    assert.equal(m.functions[1]!.classCode, 0); // not in the table: unknown
    assert.equal(m.functions[2]!.classCode, 0x0b4000);
    assert.equal(m.functions[2]!.vendor, 0x1014);
    assert.equal(m.functions[2]!.device, 0x00e0);
    assert.ok(m.unknowns?.some((u) => u.startsWith("class codes of 1 function(s)")));
    const ids = parsePciIds(
      "10de  NVIDIA Corporation\nC 04  Multimedia controller\n\t00  Multimedia video controller\n",
    );
    const withIds = parseLspci([{ file: "x", text }], { ids });
    assert.equal(withIds.functions[1]!.classCode, 0x040000);
    assert.equal(withIds.functions[0]!.vendor, 0x10de);
    assert.equal(withIds.functions[0]!.vendorName, "NVIDIA Corporation");
    assert.equal(withIds.functions[0]!.deviceName, "AD102GL");
  });

  it("combines a -tv tree with -vvv blocks of some devices", () => {
    const m = parseLspci([
      {
        file: "tv",
        text: `-[0000:00]-+-00.0  Intel Corporation Host Bridge
           \\-01.0-[01-02]----00.0  NVIDIA Corporation GA100`,
      },
      { file: "vvv", text: ROOT_PORT },
    ]);
    assert.equal(m.functions.length, 3);
    const f = byBdf(m);
    assert.equal(f.get("0000:01:00.0")!.parent, "0000:00:01.0");
    assert.equal(f.get("0000:01:00.0")!.numaNode, 1);
    assert.equal(f.get("0000:00:00.0")!.classCode, 0); // the tree carries no class
    assert.ok(!m.unknowns?.some((u) => u.includes("derived from bridge bus numbers")));
  });

  it("reads -P paths through the secondary bus numbers, and -PP paths directly", () => {
    const vvv = `00:03.0 PCI bridge [0604]: Intel Corporation Port [8086:340a]
	Control: I/O+
	Bus: primary=00, secondary=02, subordinate=03, sec-latency=0
00:03.0/00.0 PCI bridge [0604]: NVIDIA Corporation NF200 [10de:05b1] (rev a3)
	Control: I/O+
	Bus: primary=02, secondary=03, subordinate=03, sec-latency=0
00:03.0/00.0/00.0 Serial Attached SCSI controller [0107]: LSI SAS2008 [1000:0072] (rev 02)
`;
    const p = byBdf(one(vvv));
    assert.equal(p.get("0000:03:00.0")!.parent, "0000:02:00.0");
    assert.equal(p.get("0000:02:00.0")!.parent, "0000:00:03.0");
    rejects(
      () =>
        one(
          "00:03.0 PCI bridge [0604]: X [8086:340a]\n00:03.0/00.0 Ethernet controller [0200]: Y [8086:1229]",
        ),
      "line 2",
      "give -PP output",
    );
    const pp = byBdf(
      one(`00:1c.0 PCI bridge [0604]: Intel Port [8086:9d10]
00:1c.0/02:00.0 3D controller [0302]: NVIDIA GP108M [10de:1d10] (rev a1)`),
    );
    assert.equal(pp.get("0000:02:00.0")!.parent, "0000:00:1c.0");
    assert.equal(pp.get("0000:00:1c.0")!.headerType, 1); // a path hop above a function
    assert.equal(pp.get("0000:00:1c.0")!.classCode, 0x060400);
  });

  it("reads -tvnn ids and the domains of a multi-root tree", () => {
    const m = one(`-+-[0000:00]-+-00.0  Intel Corporation Host Bridge [8086:3405]
 |           \\-03.0-[02-05]----00.0-[03-05]--+-00.0-[04]----00.0  LSI SAS2008 [1000:0072]
 |                                           \\-02.0-[05]--
 \\-[0001:00]---02.0-[01-10]--`);
    const f = byBdf(m);
    assert.deepEqual(
      [...f.keys()],
      [
        "0000:00:00.0",
        "0000:00:03.0",
        "0000:02:00.0",
        "0000:03:00.0",
        "0000:03:02.0",
        "0000:04:00.0",
        "0001:00:02.0",
      ],
    );
    assert.equal(f.get("0000:04:00.0")!.parent, "0000:03:00.0");
    assert.equal(f.get("0000:03:02.0")!.parent, "0000:02:00.0");
    assert.equal(f.get("0000:03:02.0")!.secondaryBus, 5);
    assert.equal(f.get("0000:02:00.0")!.subordinateBus, 5);
    assert.equal(f.get("0000:04:00.0")!.vendor, 0x1000);
    assert.equal(f.get("0000:04:00.0")!.device, 0x0072);
    assert.equal(f.get("0001:00:02.0")!.parent, null);
    assert.equal(m.hostBridges.length, 2);
  });

  it("reads a -xxx hex dump with parseConfigSpace, and checks it against the header", () => {
    const rows = (bytes: number[]): string => {
      const b = [...bytes, ...new Array<number>(256 - bytes.length).fill(0)];
      const out: string[] = [];
      for (let o = 0; o < 256; o += 16)
        out.push(
          `${o.toString(16).padStart(2, "0")}: ${b
            .slice(o, o + 16)
            .map((x) => x.toString(16).padStart(2, "0"))
            .join(" ")}`,
        );
      return out.join("\n");
    };
    // 8086:1229, class 020000, rev 0d, header type 0
    const cfg = [0x86, 0x80, 0x29, 0x12, 0, 0, 0, 0, 0x0d, 0, 0, 2, 0, 0, 0, 0];
    const m = one(`01:00.0 Ethernet controller: Intel Corporation 82557 (rev 0d)\n${rows(cfg)}\n`);
    const f = m.functions[0]!;
    assert.equal(f.vendor, 0x8086);
    assert.equal(f.classCode, 0x020000);
    assert.equal(f.config?.length, 256);
    assert.equal(f.pcieType, null); // 256 bytes read, no capability list
    assert.equal(f.acs, null);
    rejects(
      () => one(`01:00.0 Ethernet controller: Intel Corporation 82557 (rev 0c)\n${rows(cfg)}\n`),
      "line 1",
      "revision is 0xd here but 0xc",
    );
  });

  it("recognises lspci text", () => {
    assert.equal(looksLikeLspci(ROOT_PORT), true);
    assert.equal(looksLikeLspci("lspci: Unable to load libkmod\n-[0000:00]-+-00.0\n"), true);
    assert.equal(looksLikeLspci("0000:00:01.0/02:00.0 PCI bridge: X"), true);
    assert.equal(looksLikeLspci("<topology>\n"), false);
    assert.equal(looksLikeLspci("schemaVersion: 1\n00:01.0 x"), false);
    assert.equal(looksLikeLspci(""), false);
  });

  it("skips lspci's own warnings, even one spliced into a stdout line", () => {
    const m = one(`lspci: Unable to load libkmod resources: error -2
00:01.0 PCI bridge [0604]: Intel Root Port [8086:3408]
	Control: I/O+
	Capabilities: [40] Express (v2) Root Port (Slot+), MSI 00
		LnkCap:	Port #1, Speed 8GT/s, Width x4lspci: Unable to load libkmod resources: error -2

		LnkSta:	Speed 8GT/s, Width x4
`);
    assert.deepEqual(m.functions[0]!.link, { maxSpeed: 8, maxWidth: 4, speed: 8, width: 4 });
  });

  it("has a built-in class table that agrees with pci.ids", {
    skip: existsSync("/usr/share/misc/pci.ids") ? false : "no /usr/share/misc/pci.ids",
  }, () => {
    const ids = parsePciIds(readFileSync("/usr/share/misc/pci.ids", "utf8"));
    for (const [name, code] of LSPCI_CLASS_NAMES)
      assert.equal(ids.subclassByName(name), code, name);
  });
});

describe("parseLspci refuses bad input with the file, line and reason", () => {
  it("binary garbage", () => {
    const e = rejects(() => one("\x7fELF\x02\x01\x01\0\0\0garbage\n", "a.out"), "a.out", "line 1");
    assert.equal(e.file, "a.out");
    rejects(() => one("\u00ff\u00fe\u0001\u0002 nothing like lspci"), "not lspci output");
  });

  it("truncated lines", () => {
    rejects(() => one("00:1c.0 PCI bri"), "line 1", "class: vendor device");
    rejects(() => one("00:1c.0"), "line 1", "truncated");
    rejects(
      () => one("00:01.0 PCI bridge [0604]: X [8086:3408]\n00: 86 80 08 34"),
      "line 2",
      "4 byte(s)",
    );
    rejects(
      () => one("00:01.0 PCI bridge [0604]: X [8086:3408]\n\tBus: primary=00, secondary=0"),
      "line 2",
      "Bus line",
    );
    rejects(
      () =>
        one(
          "00:01.0 PCI bridge [0604]: X [8086:3408]\n\tCapabilities: [150 v1] Access Control Services\n\t\tACSCap:\tSrcValid+ TransBlk+ ReqRedir+",
        ),
      "line 3",
      "CmpltRedir",
    );
    rejects(
      () =>
        one(
          "00:01.0 PCI bridge [0604]: X [8086:3408]\n\tCapabilities: [40] Express (v2) Root Port (Slot+)\n\t\tLnkCap:\tPort #1, Speed 8GT/s, Wi",
        ),
      "line 3",
      "LnkCap",
    );
    rejects(
      () => one("-[0000:00]-+-00.0\n           +-01.0-[01-0"),
      "line 2",
      "after 0000:00:01.0",
    );
    rejects(() => one("-[0000:00]-+-00.0\n           +-01.0"), "line 2", "truncated");
  });

  it("a -tv tree with inconsistent indentation", () => {
    const good = `-[0000:00]-+-00.0
           +-01.0-[01]--+-00.0
           |            \\-00.1
           \\-02.0`;
    assert.equal(one(good).functions.length, 5);
    rejects(() => one(good.replace("|            \\", "|           \\")), "line 3", "column");
    rejects(() => one(good.replace("           |  ", "            | ")), "line 3", "indentation");
    rejects(() => one(good.replace("           \\-02.0", "            \\-02.0")), "line 4");
    rejects(() => one(`${good}\n           +-03.0`), "line 5", "after its branch's last");
    rejects(() => one(good.replace("+-00.0\n           |", "--00.0\n           |")), "line 3");
  });

  it("conflicting duplicates, orphans and loops", () => {
    const e = rejects(
      () =>
        parseLspci([
          { file: "a.txt", text: "01:00.0 Ethernet controller [0200]: X [8086:1229]" },
          { file: "b.txt", text: "01:00.0 Ethernet controller [0200]: X [8086:100f]" },
        ]),
      "b.txt: line 1",
      "device ID is 0x100f here but 0x1229 at a.txt line 1",
    );
    assert.equal(e.place, "line 1");
    rejects(
      () => one("00:03.0/02:00.0 Ethernet controller [0200]: X [8086:1229]"),
      "names bridge 0000:00:03.0, which no input lists",
    );
    rejects(
      () =>
        one(
          "00:01.0/01:00.0 PCI bridge [0604]: X [8086:1]\n01:00.0/00:01.0 PCI bridge [0604]: Y [8086:2]",
        ),
      "loop",
    );
    rejects(
      () =>
        one(
          "00:01.0 Ethernet controller [0200]: X [8086:1229]\n\tControl: I/O+\n00:01.0/01:00.0 Ethernet controller [0200]: Y [8086:100f]",
        ),
      "header type is 0",
    );
    rejects(
      () =>
        parseLspci([
          { file: "tv", text: "-[0000:00]-+-01.0-[01]----00.0\n           \\-02.0-[02]--" },
          { file: "pp", text: "00:02.0/01:00.0 Ethernet controller [0200]: Y [8086:100f]" },
        ]),
      "pp: line 1",
      "below 0000:00:02.0",
    );
  });

  it("-m output, empty input and no functions", () => {
    rejects(() => one('00:00.0 "Host bridge" "Intel Corporation" "Device"'), "-m/-mm");
    rejects(() => parseLspci([]), "no lspci input");
    rejects(() => one("\n\n"), "no PCI functions");
    rejects(() => one("\tControl: I/O+"), "before any device header");
  });
});

describe("parseLspci under random input", () => {
  const check = (texts: string[]): void => {
    const t0 = performance.now();
    try {
      const m = parseLspci(texts.map((text, i) => ({ file: `f${i}`, text })));
      buildMachine(m); // whatever parses is a valid hierarchy
    } catch (e) {
      if (!(e instanceof InputError)) throw e;
    }
    const ms = performance.now() - t0;
    assert.ok(ms < 2000, `took ${ms.toFixed(0)} ms`);
  };

  it("random strings throw nothing but InputError", () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.string(), fc.string({ unit: "binary" }), fc.constantFrom(...PIECES)), {
          maxLength: 30,
        }),
        (parts) => check([parts.join("\n")]),
      ),
      { numRuns: 300 },
    );
  });

  const mutate = (text: string) =>
    fc
      .array(
        fc.record({
          at: fc.nat(),
          len: fc.nat({ max: 200 }),
          with: fc.oneof(fc.constant(""), fc.string(), fc.constantFrom(...PIECES)),
        }),
        { minLength: 1, maxLength: 6 },
      )
      .map((edits) => {
        let s = text;
        for (const e of edits) {
          const at = e.at % (s.length + 1);
          s = s.slice(0, at) + e.with + s.slice(at + e.len);
        }
        return s;
      });

  it("mutations of a written dump throw nothing but InputError", () => {
    fc.assert(
      fc.property(mutate(ROOT_PORT), (s) => check([s])),
      { numRuns: 400 },
    );
  });

  it("mutations of real dumps throw nothing but InputError", { skip }, () => {
    const texts = [
      read("derived/pciutils/tree-asus-p6t6.lspci-tv.txt"),
      read("derived/pciutils/cap-exp-lnkcap2.lspci-vvvnn.txt"),
      read("derived/pciutils/PCI-X-bridges-and-domains.lspci-PPnn.txt"),
      read("pciutils-tests/cap-exp-lnkcap2"),
    ];
    for (const text of texts)
      fc.assert(
        fc.property(mutate(text), (s) => check([s])),
        { numRuns: 150 },
      );
  });

  it("a long hostile line finishes quickly", () => {
    check([`${" ".repeat(200_000)}x`]);
    check([`-[0000:00]-+-00.0${"-".repeat(200_000)}`]);
    check([`00:01.0 ${"a".repeat(200_000)}`]);
    check([`00:01.0 X: ${"Device ".repeat(30_000)}(rev`]);
    check([`-[0000:00]-+-00.0\n${" |".repeat(50_000)}`]);
    check([`00:01.0 ${" ".repeat(200_000)}x: y`]);
    check([`00:01.0 X: ${"a ".repeat(100_000)} (rev 01)`]);
    check([
      `00:01.0 X [0604]: Y\n\tCapabilities: [150 v1] Access Control Services\n\t\tACSCap: ${"a".repeat(200_000)}`,
    ]);
    check([
      `00:01.0 X: Y\n\tSubsystem: ${" ".repeat(200_000)}Z\n\tNUMA node: ${"9".repeat(200_000)}`,
    ]);
    const ids = parsePciIds("10de  NVIDIA Corporation\n");
    const t0 = performance.now();
    parseLspci([{ file: "x", text: `00:01.0 X: ${"NVIDIA Corporation ".repeat(20_000)}` }], {
      ids,
    });
    assert.ok(performance.now() - t0 < 2000);
  });
});

const PIECES = [
  "-[0000:00]-+-00.0",
  "           +-01.0-[01-02]--+-00.0",
  "           |            \\-00.1",
  " \\-[0001:00]---02.0",
  "00:01.0 PCI bridge [0604]: X [8086:3408]",
  "00:01.0/01:00.0 PCI bridge [0604]: X [8086:3408]",
  "00:01.0/00.0 Ethernet controller: X",
  "\tBus: primary=00, secondary=01, subordinate=01, sec-latency=0",
  "\tBus: primary=01, secondary=00, subordinate=00, sec-latency=0",
  "\tCapabilities: [150 v1] Access Control Services",
  "\t\tACSCap:\tSrcValid+ TransBlk+ ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-",
  "\tRegion 0: Memory at fff (64-bit, prefetchable) [size=16M]",
  "00: 86 80 08 34 00 00 10 00 12 00 04 06 00 00 01 00",
  "10: 00 00 00 00 00 00 00 00 00 01 02 00 00 00 00 00",
  "lspci: warning",
];
