import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import fc from "fast-check";
import { real, skipReal } from "../../../test/support/real.ts";
import { mutateXml, xmlMutations } from "../../../test/support/xml-mutate.ts";
import { InputError } from "../errors.ts";
import type { FunctionDescription, MachineDescription } from "../hw/machine.ts";
import { buildMachine, MACHINE_SCHEMA_VERSION } from "../hw/machine.ts";
import { detectTextFormat } from "./detect.ts";
import { parseHwlocXml } from "./hwloc-xml.ts";
import {
  familyFromNccl,
  familyToNccl,
  parseNcclSpeed,
  parseNcclXml,
  writeNcclXml,
} from "./nccl-xml.ts";

const NCCL_DIRS = ["aws-ofi-nccl", "azhpc-images", "rccl-topo-models"];
const ncclFiles = () =>
  NCCL_DIRS.flatMap((d) =>
    existsSync(real(d))
      ? readdirSync(real(d))
          .filter((f) => f.endsWith(".xml"))
          .map((f) => join(d, f))
      : [],
  );
const load = (p: string) => parseNcclXml(p, readFileSync(real(p), "utf8"));
const byBdf = (m: MachineDescription) => new Map(m.functions.map((f) => [f.bdf, f]));

function inputError(fn: () => unknown): InputError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof InputError, `expected InputError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected an InputError");
}

const DUMP = `<system version="1">
  <cpu numaid="1" affinity="ffff0000" arch="x86_64" vendor="GenuineIntel" familyid="6" modelid="143">
    <pci busid="0000:17:00.0" class="0x060400" vendor="0x1000" device="0xc030" subsystem_vendor="0x1000" subsystem_device="0x100b" link_speed="32.0 GT/s PCIe" link_width="16">
      <pci busid="0000:1A:00.0" class="0x030200" vendor="0x10de" device="0x2330" subsystem_vendor="0x10de" subsystem_device="0x16c1" link_speed="32.0 GT/s PCIe" link_width="16">
        <gpu dev="0" sm="90" rank="0" gdr="1">
          <nvlink target="0000:05:00.0" count="18" tclass="0x068000"/>
        </gpu>
      </pci>
      <pci busid="0000:18:00.0" class="0x020700" vendor="0x15b3" device="0x1021" subsystem_vendor="0x15b3" subsystem_device="0x0041" link_speed="16 GT/s" link_width="8">
        <nic>
          <net name="mlx5_0" dev="0" speed="400000" port="1" latency="0.000000" guid="0x1" maxconn="131072" gdr="1"/>
          <net name="mlx5_1" dev="1" speed="400000" port="2" latency="0.000000" guid="0x2" maxconn="131072" gdr="1"/>
        </nic>
      </pci>
    </pci>
    <pci busid="0000:20:00.0" class="0x010802" link_speed="Unknown" link_width="4"/>
  </cpu>
  <cpu numaid="-1" arch="x86_64" vendor="GenuineIntel" familyid="0x6" modelid="143">
    <pci busid="0000:c0:01.0" class="0x020000" vendor="0x8086" device="0x1593"/>
  </cpu>
</system>
`;

describe("parseNcclXml: reading", () => {
  it("keeps NCCL's nesting: a <pci> names the <pci> around it, roots have parent null", () => {
    const m = parseNcclXml("dump.xml", DUMP);
    const f = byBdf(m);
    assert.equal(m.schemaVersion, MACHINE_SCHEMA_VERSION);
    assert.equal(f.get("0000:17:00.0")!.parent, null);
    assert.equal(f.get("0000:1a:00.0")!.parent, "0000:17:00.0");
    assert.equal(f.get("0000:18:00.0")!.parent, "0000:17:00.0");
    assert.equal(f.get("0000:20:00.0")!.parent, null);
    assert.equal(f.get("0000:c0:01.0")!.parent, null);
    assert.equal(m.functions.length, 5);
    assert.doesNotThrow(() => buildMachine(m));
  });

  it("makes one host bridge per root bus, on the cpu's NUMA node", () => {
    const m = parseNcclXml("dump.xml", DUMP);
    const hb = new Map(m.hostBridges.map((h) => [`${h.domain}:${h.bus}`, h.numaNode]));
    assert.deepEqual(
      hb,
      new Map<string, number | null | undefined>([
        ["0:23", 1],
        ["0:32", 1],
        ["0:192", null],
      ]),
    );
    const f = byBdf(m);
    assert.equal(f.get("0000:1a:00.0")!.numaNode, 1);
    assert.equal(f.get("0000:c0:01.0")!.numaNode, null);
  });

  it("reads IDs, class, link maxima and net names", () => {
    const f = byBdf(parseNcclXml("dump.xml", DUMP));
    const gpu = f.get("0000:1a:00.0")!;
    assert.equal(gpu.classCode, 0x030200);
    assert.equal(gpu.vendor, 0x10de);
    assert.equal(gpu.device, 0x2330);
    assert.equal(gpu.subsystemVendor, 0x10de);
    assert.equal(gpu.subsystemDevice, 0x16c1);
    assert.deepEqual(gpu.link, { maxSpeed: 32, maxWidth: 16 });
    assert.deepEqual(f.get("0000:18:00.0")!.link, { maxSpeed: 16, maxWidth: 8 });
    assert.deepEqual(f.get("0000:18:00.0")!.osDevices, ["mlx5_0", "mlx5_1"]);
    assert.deepEqual(f.get("0000:20:00.0")!.link, { maxSpeed: null, maxWidth: 4 });
    assert.equal(f.get("0000:20:00.0")!.vendor, undefined);
    assert.equal(f.get("0000:c0:01.0")!.link, undefined);
  });

  it("says what NCCL XML cannot: ACS, left-out ports, current link", () => {
    const m = parseNcclXml("dump.xml", DUMP);
    for (const f of m.functions) assert.equal(f.acs, undefined);
    const u = m.unknowns!.join("\n");
    assert.match(u, /ACS/);
    assert.match(u, /downstream ports/);
    assert.match(u, /current link/);
  });

  it("decodes NCCL's family encoding and reads cpu attributes as strtol does", () => {
    const m = parseNcclXml("dump.xml", DUMP);
    assert.deepEqual(m.cpu, { vendor: "GenuineIntel", family: 6, model: 143, arch: "x86_64" });
    // AMD: cpuid family 0xF + extended family; NCCL writes base + (ext << 4)
    assert.equal(familyFromNccl(143), 0x17); // Rome, ext 8
    assert.equal(familyFromNccl(175), 0x19); // Milan/Genoa, ext 0xA
    assert.equal(familyFromNccl(6), 6);
    assert.equal(familyFromNccl(23), 23); // some hand-written files give the real family
    assert.equal(familyToNccl(0x19), 175);
    assert.equal(familyToNccl(0x17), 143);
    assert.equal(familyToNccl(6), 6);
    const arm = parseNcclXml(
      "a.xml",
      `<system version="1"><cpu numaid="0" arch="arm64"/></system>`,
    );
    assert.equal(arm.cpu?.arch, "aarch64");
  });

  it("understands the link-speed spellings found in real files", () => {
    assert.equal(parseNcclSpeed("32 GT/s PCIe/s"), 32);
    assert.equal(parseNcclSpeed("16.0 GT/s PCIe"), 16);
    assert.equal(parseNcclSpeed("8 GT/s"), 8);
    assert.equal(parseNcclSpeed("2.5 GT/s PCIe"), 2.5);
    assert.equal(parseNcclSpeed("Unknown"), null);
    assert.equal(parseNcclSpeed(""), undefined);
    assert.equal(parseNcclSpeed("fast"), undefined);
    const odd = parseNcclXml(
      "o.xml",
      `<system version="1"><cpu numaid="0"><pci busid="0000:01:00.0" class="0x020000" link_speed="fast" link_width="0"/></cpu></system>`,
    );
    assert.equal(odd.functions[0]!.link, undefined);
    assert.ok(odd.unknowns!.some((u) => u.includes('0000:01:00.0 "fast"')));
    assert.ok(odd.unknowns!.some((u) => /link width of 0000:01:00\.0/.test(u)));
  });

  it("infers missing classes from the children and says so", () => {
    const m = parseNcclXml(
      "c.xml",
      `<system version="1"><cpu numaid="0">
        <pci busid="0000:45:00.0"><pci busid="0000:4f:00.0"/><pci busid="0000:50:00.0"><gpu dev="0"/></pci></pci>
        <pci busid="0000:60:00.0"><nic><net name="rdmap1"/></nic></pci>
      </cpu></system>`,
    );
    const f = byBdf(m);
    assert.equal(f.get("0000:45:00.0")!.classCode, 0x060400);
    assert.equal(f.get("0000:50:00.0")!.classCode >> 16, 0x03);
    assert.equal(f.get("0000:60:00.0")!.classCode >> 16, 0x02);
    assert.equal(f.get("0000:4f:00.0")!.classCode, 0xff0000);
    assert.ok(m.unknowns!.some((u) => u.includes("0000:45:00.0 bridge")));
    assert.ok(m.unknowns!.some((u) => u.includes("0000:4f:00.0") && /0xff0000/.test(u)));
  });

  it("keeps virtual switches as bridges and flags them", () => {
    const m = parseNcclXml(
      "v.xml",
      `<system version="1">
        <cpu numaid="0"><pci busid="ffff:ff:01.0" class="0x060400"><pci busid="0001:00:00.0" class="0x030200"/></pci></cpu>
        <cpu numaid="1"><pci busid="ffff:ff:02.0" class="0x060400"><pci busid="0002:00:00.0" class="0x030200"/></pci></cpu>
      </system>`,
    );
    const f = byBdf(m);
    assert.equal(f.get("0001:00:00.0")!.parent, "ffff:ff:01.0");
    assert.equal(f.get("0002:00:00.0")!.numaNode, 1);
    assert.ok(m.unknowns!.some((u) => /virtual switches ffff:ff:01\.0, ffff:ff:02\.0/.test(u)));
    // one made-up bus under two cpus: its host bridge has no single NUMA node
    assert.equal(m.hostBridges.length, 1);
    assert.equal(m.hostBridges[0]!.numaNode, undefined);
    assert.ok(m.unknowns!.some((u) => u.includes("pciffff:ff")));
  });

  it("fuses a node listed again under the same parent; drops a conflicting leaf", () => {
    const sw = `class="0x060400" vendor="0x1000" device="0xa096"`;
    const m = parseNcclXml(
      "d.xml",
      `<system version="2"><cpu numaid="0"><pci busid="0000:c1:00.0" class="0x060400">
        <pci busid="0000:c5:00.0" ${sw}><pci busid="0000:cf:00.0" class="0x038000"/></pci>
        <pci busid="0000:c5:00.0" ${sw}><pci busid="0000:d0:00.0" class="0x038000"/></pci>
        <pci busid="0000:c1:00.0" class="0x020700"/>
      </pci></cpu></system>`,
    );
    const f = byBdf(m);
    assert.equal(m.functions.length, 4);
    assert.equal(f.get("0000:d0:00.0")!.parent, "0000:c5:00.0");
    assert.equal(f.get("0000:c1:00.0")!.classCode, 0x060400);
    assert.ok(m.unknowns!.some((u) => /dropped 0000:c1:00\.0 at line 4, column 9/.test(u)));
    const clash = `<system version="1"><cpu numaid="0">
      <pci busid="0000:01:00.0" class="0x060400"><pci busid="0000:02:00.0" class="0x030200"/></pci>
      <pci busid="0000:03:00.0" class="0x060400"><pci busid="0000:01:00.0" class="0x060400"><pci busid="0000:04:00.0" class="0x030200"/></pci></pci>
    </cpu></system>`;
    const e = inputError(() => parseNcclXml("clash.xml", clash));
    assert.match(e.reason, /^pci\[3\]: busid 0000:01:00\.0 appears twice/);
  });
});

describe("parseNcclXml: bad input", () => {
  it("refuses entity declarations and DOCTYPE internal subsets", () => {
    const xxe = `<?xml version="1.0"?>\n<!DOCTYPE system [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<system version="1"><cpu numaid="&x;"/></system>`;
    assert.equal(inputError(() => parseNcclXml("x.xml", xxe)).code, "input-unsafe");
    assert.equal(
      inputError(() => parseNcclXml("x.xml", `<!ENTITY a "b"><system version="1"/>`)).code,
      "input-unsafe",
    );
  });

  it("names the place of truncated and malformed XML, refuses garbage", () => {
    const e = inputError(() => parseNcclXml("t.xml", DUMP.slice(0, 600)));
    assert.match(e.reason, /ends inside <system>, <cpu>, <pci>/);
    assert.match(e.place!, /^line \d+, column \d+$/);
    const q = inputError(() =>
      parseNcclXml("q.xml", `<system version="1">\n<cpu numaid=0/>\n</system>`),
    );
    assert.match(q.place!, /^line 2, column \d+$/);
    const junk = String.fromCharCode(...Array.from({ length: 300 }, (_, i) => (i * 91) & 0xff));
    assert.equal(inputError(() => parseNcclXml("j.bin", junk)).code, "input-invalid");
  });

  it("gives path-qualified errors for wrong attribute values", () => {
    const bus = inputError(() => parseNcclXml("b.xml", DUMP.replace("0000:18:00.0", "0000:18:00")));
    assert.match(bus.reason, /^pci\[2\]\.busid: not a PCI address \(got "0000:18:00"\)$/);
    assert.match(bus.place!, /^line 9, column 7$/);
    const ven = inputError(() =>
      parseNcclXml("v.xml", DUMP.replace('vendor="0x8086"', 'vendor="intel"')),
    );
    assert.match(ven.reason, /^pci\[4\]\.vendor: not a 16-bit hex ID/);
    const numa = inputError(() =>
      parseNcclXml("n.xml", DUMP.replace('numaid="-1"', 'numaid="one"')),
    );
    assert.match(numa.reason, /^cpu\[1\]\.numaid: not an integer/);
    const cls = inputError(() =>
      parseNcclXml("c.xml", DUMP.replace('class="0x010802"', 'class="storage"')),
    );
    assert.match(cls.reason, /^pci\[3\]\.class: not a hex class code/);
    const nest = inputError(() =>
      parseNcclXml(
        "n.xml",
        DUMP.replace('class="0x060400" vendor="0x1000"', 'class="0x020000" vendor="0x1000"'),
      ),
    );
    assert.match(nest.reason, /is not a PCI bridge/);
  });

  it("refuses other documents with the reason", () => {
    assert.match(
      inputError(() => parseNcclXml("g.xml", `<graphs version="1"><graph id="0"/></graphs>`))
        .reason,
      /graph file/,
    );
    assert.equal(
      inputError(() => parseNcclXml("h.xml", `<topology version="2.0"/>`)).code,
      "input-unsupported",
    );
    assert.equal(
      inputError(() => parseNcclXml("v.xml", `<system version="3"/>`)).code,
      "input-unsupported",
    );
  });
});

describe("writeNcclXml", () => {
  // RP → switch (USP → DSP) → GPU; RP → NIC; NVMe on a root port; a host bridge on node 1
  const tree: MachineDescription = {
    schemaVersion: MACHINE_SCHEMA_VERSION,
    cpu: { vendor: "AuthenticAMD", family: 0x19, model: 1, arch: "x86_64" },
    hostBridges: [
      { domain: 0, bus: 0, numaNode: 0 },
      { domain: 0, bus: 0x80, numaNode: 1 },
    ],
    functions: [
      {
        bdf: "0000:00:01.1",
        parent: null,
        classCode: 0x060400,
        link: { maxSpeed: 16, maxWidth: 16 },
      },
      {
        bdf: "0000:01:00.0",
        parent: "0000:00:01.1",
        classCode: 0x060400,
        vendor: 0x1000,
        device: 0xc010,
        link: { maxSpeed: 16, maxWidth: 16 },
      },
      {
        bdf: "0000:02:08.0",
        parent: "0000:01:00.0",
        classCode: 0x060400,
        link: { maxSpeed: 8, maxWidth: 16 },
      },
      {
        bdf: "0000:03:00.0",
        parent: "0000:02:08.0",
        classCode: 0x030200,
        vendor: 0x10de,
        device: 0x20b5,
        subsystemVendor: 0x10de,
        subsystemDevice: 0x1533,
        link: { maxSpeed: 16, maxWidth: 16 },
      },
      {
        bdf: "0000:00:03.1",
        parent: null,
        classCode: 0x060400,
        link: { maxSpeed: 16, maxWidth: 8 },
      },
      {
        bdf: "0000:04:00.0",
        parent: "0000:00:03.1",
        classCode: 0x020700,
        vendor: 0x15b3,
        device: 0x101b,
        link: { maxSpeed: 16, maxWidth: 16 },
      },
      { bdf: "0000:00:08.1", parent: null, classCode: 0x060400 },
      {
        bdf: "0000:05:00.0",
        parent: "0000:00:08.1",
        classCode: 0x010802,
        vendor: 0x144d,
        device: 0xa80a,
      },
      { bdf: "0000:80:01.1", parent: null, classCode: 0x060400 },
      {
        bdf: "0000:81:00.0",
        parent: "0000:80:01.1",
        classCode: 0x030200,
        vendor: 0x10de,
        device: 0x20b5,
      },
    ],
  };

  it("collapses the tree as NCCL does: grandparent or cpu, GPUs and NICs only", () => {
    const xml = writeNcclXml(tree);
    const m = parseNcclXml("w.xml", xml);
    const f = byBdf(m);
    assert.deepEqual([...f.keys()].sort(), [
      "0000:01:00.0",
      "0000:03:00.0",
      "0000:04:00.0",
      "0000:81:00.0",
    ]);
    assert.equal(f.get("0000:03:00.0")!.parent, "0000:01:00.0");
    assert.equal(f.get("0000:01:00.0")!.parent, null);
    assert.equal(f.get("0000:04:00.0")!.parent, null);
    assert.equal(f.get("0000:81:00.0")!.numaNode, 1);
    assert.equal(f.get("0000:03:00.0")!.numaNode, 0);
    // link: the lower of the device's and its port's maximum
    assert.deepEqual(f.get("0000:03:00.0")!.link, { maxSpeed: 8, maxWidth: 16 });
    assert.deepEqual(f.get("0000:04:00.0")!.link, { maxSpeed: 16, maxWidth: 8 });
    assert.match(
      xml,
      /^<system version="1">\n {2}<cpu numaid="0" arch="x86_64" vendor="AuthenticAMD" familyid="175" modelid="1">\n/,
    );
    assert.match(
      xml,
      /<pci busid="0000:03:00\.0" class="0x030200" vendor="0x10de" device="0x20b5" subsystem_vendor="0x10de" subsystem_device="0x1533" link_speed="8\.0 GT\/s PCIe" link_width="16"\/>/,
    );
    assert.doesNotMatch(xml, /<gpu|<nic/);
  });

  it("keeps every non-bridge function in `all` mode", () => {
    const f = byBdf(parseNcclXml("w.xml", writeNcclXml(tree, { devices: "all", version: 2 })));
    assert.equal(f.get("0000:05:00.0")!.parent, null);
    assert.equal(f.size, 5);
    assert.match(writeNcclXml(tree, { version: 2 }), /^<system version="2">/);
  });

  it("writes what it read from NCCL XML as it was (already collapsed)", { skip: skipReal }, () => {
    for (const p of ncclFiles()) {
      if (p.endsWith("ncv4-graph.xml")) continue;
      const m = load(p);
      const back = parseNcclXml("back.xml", writeNcclXml(m, { devices: "all" }));
      assert.deepEqual(sorted(back.functions), sorted(m.functions), p);
      assert.deepEqual(back.cpu, m.cpu, p);
    }
  });

  it("turns an hwloc reading of the DGX-2 into NCCL's tree", { skip: skipReal }, () => {
    const m = parseHwlocXml("dgx2", readFileSync(real("hwloc-tests/nvidiaDGX2.xml"), "utf8"));
    const n = parseNcclXml("dgx2-nccl.xml", writeNcclXml(m));
    const f = byBdf(n);
    const gpus = n.functions.filter((g) => g.device === 0x1db8);
    assert.equal(gpus.length, 16);
    for (const g of gpus) {
      // PLX: GPU → DSP → USP → DSP → USP → root port: NCCL keeps the two USPs
      const usp = f.get(g.parent!)!;
      assert.equal(usp.vendor, 0x10b5, g.bdf);
      assert.equal(f.get(usp.parent!)!.vendor, 0x10b5, g.bdf);
      assert.equal(f.get(usp.parent!)!.parent, null, g.bdf);
    }
  });
});

const sorted = (fs: readonly FunctionDescription[]) =>
  [...fs].sort((a, b) => (a.bdf < b.bdf ? -1 : 1));

// ------------------------------------------------------------------------------------------------
// Real data
// ------------------------------------------------------------------------------------------------

const TAG =
  /<!--[\s\S]*?-->|<(\/?)([A-Za-z_][\w.-]*)((?:\s+[\w:.-]+\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(\/?)>/g;

/** busid → parent of its first occurrence, by plain tag nesting (null under <cpu>). */
function nestingParents(text: string): Map<string, string | null> {
  const stack: (string | null)[] = [];
  const out = new Map<string, string | null>();
  for (const m of text.matchAll(TAG)) {
    if (m[2] !== "pci" && m[2] !== "cpu") continue;
    if (m[1]) {
      stack.pop();
      continue;
    }
    let me: string | null = null;
    if (m[2] === "pci") {
      me = /busid="([^"]+)"/.exec(m[3] ?? "")![1]!.toLowerCase();
      if (!out.has(me)) out.set(me, stack.at(-1) ?? null);
    }
    if (!m[4]) stack.push(me);
  }
  return out;
}

describe("parseNcclXml: real NCCL/RCCL files", { skip: skipReal }, () => {
  it("loads every topology file; the graph file is refused for what it is", () => {
    const files = ncclFiles();
    assert.ok(files.length >= 60, `only ${files.length} files`);
    for (const p of files) {
      const text = readFileSync(real(p), "utf8");
      if (p.endsWith("ncv4-graph.xml")) {
        // routed to the NCCL parser, which refuses it with a message that says what it is
        assert.equal(detectTextFormat(text), "nccl-xml");
        const e = inputError(() => parseNcclXml(p, text));
        assert.equal(e.code, "input-unsupported");
        continue;
      }
      assert.equal(detectTextFormat(text), "nccl-xml", p);
      const m = parseNcclXml(p, text);
      const nested = nestingParents(text);
      assert.deepEqual(new Set(m.functions.map((f) => f.bdf)), new Set(nested.keys()), p);
      for (const f of m.functions) assert.equal(f.parent, nested.get(f.bdf), `${p}: ${f.bdf}`);
      assert.doesNotThrow(() => buildMachine(m), p);
      assert.ok(
        m.unknowns!.some((u) => /ACS/.test(u)),
        p,
      );
    }
  });

  it("EC2 p4d: 8 A100 and 4 EFA behind four virtual switches, two per socket", () => {
    const m = load("aws-ofi-nccl/p4d-24xl-topo.xml");
    const f = byBdf(m);
    const gpus = m.functions.filter((g) => g.vendor === 0x10de && g.device === 0x20b0);
    const efa = m.functions.filter((g) => g.vendor === 0x1d0f && g.device === 0xefa0);
    assert.equal(gpus.length, 8);
    assert.equal(efa.length, 4);
    const switches = new Set([...gpus, ...efa].map((g) => g.parent));
    assert.deepEqual([...switches].sort(), [
      "ffff:ff:01.0",
      "ffff:ff:02.0",
      "ffff:ff:03.0",
      "ffff:ff:04.0",
    ]);
    for (const s of switches) {
      assert.equal(f.get(s!)!.classCode, 0x060400);
      assert.equal(gpus.filter((g) => g.parent === s).length, 2);
      assert.equal(efa.filter((g) => g.parent === s).length, 1);
    }
    assert.deepEqual(gpus.map((g) => g.numaNode).sort(), [0, 0, 0, 0, 1, 1, 1, 1]);
    for (const g of gpus) assert.deepEqual(g.link, { maxSpeed: 8, maxWidth: 16 });
    assert.ok(m.unknowns!.some((u) => /virtual switches/.test(u)));
    assert.deepEqual(m.cpu, { vendor: "GenuineIntel", family: 6, model: 85, arch: "x86_64" });
  });

  it("EC2 p5: the `32 GT/s PCIe/s` typo still reads as 32 GT/s", () => {
    const m = load("aws-ofi-nccl/p5.48xl-topo.xml");
    const leaves = m.functions.filter((f) => f.parent !== null);
    assert.equal(leaves.length, 32);
    for (const f of leaves) assert.deepEqual(f.link, { maxSpeed: 32, maxWidth: 16 });
    for (const f of m.functions.filter((g) => g.parent === null))
      assert.equal(f.classCode, 0x060400);
  });

  it("Azure NC A100 v4: empty link attributes, Milan family 175 → 0x19, eth0 without PCI", () => {
    const m = load("azhpc-images/ncv4-topo.xml");
    assert.equal(m.functions.length, 4);
    for (const f of m.functions) assert.equal(f.link, undefined);
    assert.equal(m.cpu?.family, 0x19);
    assert.deepEqual(
      m.hostBridges.map((h) => h.numaNode),
      [0, 1, 2, 3],
    );
    assert.ok(m.unknowns!.some((u) => u.includes("eth0")));
  });

  it("RCCL MI300X model: GPUs behind three bridge levels, one NIC per switch", () => {
    const m = load("rccl-topo-models/topo_8p_940.xml");
    const f = byBdf(m);
    const gpus = m.functions.filter((g) => g.vendor === 0x1002 && g.device === 0x74a1);
    assert.equal(gpus.length, 8);
    for (const g of gpus) {
      assert.equal(g.classCode, 0x120000);
      const a = f.get(g.parent!)!;
      const b = f.get(a.parent!)!;
      const c = f.get(b.parent!)!;
      assert.deepEqual([a.vendor, b.vendor, c.vendor], [0x1022, 0x15b3, 0x15b3], g.bdf);
      assert.equal(c.parent, null);
      const nics = m.functions.filter((n) => n.parent === c.bdf && n.classCode === 0x020700);
      assert.equal(nics.length, 1, c.bdf);
    }
    const names = m.functions.flatMap((n) => n.osDevices ?? []).sort();
    assert.deepEqual(names, [
      "mlx5_0",
      "mlx5_1",
      "mlx5_2",
      "mlx5_3",
      "mlx5_4",
      "mlx5_5",
      "mlx5_6",
      "mlx5_7",
    ]);
  });

  it("RCCL models with repeated and clashing busids", () => {
    const fused = load("rccl-topo-models/topo_4p4h.xml");
    const text = readFileSync(real("rccl-topo-models/topo_4p4h.xml"), "utf8");
    const repeats = (text.match(/<pci busid="0000:c5:00\.0"/g) ?? []).length;
    assert.ok(repeats > 1);
    const under = fused.functions.filter((f) => f.parent === "0000:c5:00.0").length;
    // every repeat brings a GPU and a NIC
    assert.equal(under, repeats * 2);
    const clash = load("rccl-topo-models/topo_8p1h_1.xml");
    const a1 = byBdf(clash).get("0000:a1:00.0")!;
    assert.equal(a1.classCode, 0x060400);
    assert.ok(clash.unknowns!.some((u) => /dropped 0000:a1:00\.0/.test(u)));
  });

  it("EC2 g5: bus ids only; root bus split across sockets", () => {
    const m = load("aws-ofi-nccl/g5.48xl-topo.xml");
    assert.equal(m.functions.length, 9);
    assert.equal(m.hostBridges.length, 1);
    assert.equal(m.hostBridges[0]!.numaNode, undefined);
    assert.equal(byBdf(m).get("0000:00:1a.0")!.numaNode, 1);
    assert.equal(byBdf(m).get("0000:00:16.0")!.numaNode, 0);
  });
});

// ------------------------------------------------------------------------------------------------
// Property: mutated real XML gives a machine or an InputError, nothing else
// ------------------------------------------------------------------------------------------------

const TOKENS = [
  "<",
  ">",
  "/>",
  "</pci>",
  "</cpu>",
  '"',
  "&",
  "&lt;",
  "<!DOCTYPE system [",
  "<!ENTITY a 'b'>",
  "<![CDATA[x]]>",
  "<!-- x -->",
  '<pci busid="0000:00:00.0"/>',
  '<pci busid="0000:01:00.0" class="0x030200">',
  '<cpu numaid="0">',
  '<nic><net name="x"/></nic>',
  ' class="0x060400"',
  ' busid="ffff:ff:01.0"',
  ' link_width="999"',
  ' version="2"',
  "\u0000",
];

const mutations = xmlMutations({
  tokens: TOKENS,
  attrValues: ["", "-1", "0x", "0xfffffff", "08", "zz", "0000:00:20.0"],
  maxCut: 200,
});

describe("parseNcclXml: mutated real XML", { skip: skipReal }, () => {
  it("returns a buildable machine or throws InputError, never anything else", () => {
    const texts = [
      "aws-ofi-nccl/p4d-24xl-topo.xml",
      "azhpc-images/ndv5-topo.xml",
      "rccl-topo-models/topo_4p4h.xml",
      "rccl-topo-models/topo_8p1h_1.xml",
    ].map((p) => readFileSync(real(p), "utf8"));
    fc.assert(
      fc.property(fc.nat({ max: texts.length - 1 }), mutations, (i, ops) => {
        let m: MachineDescription;
        try {
          m = parseNcclXml("mutated.xml", mutateXml(texts[i]!, ops));
        } catch (e) {
          if (!(e instanceof InputError)) throw e;
          return;
        }
        buildMachine(m);
        // what we read, we can write and read back
        const back = parseNcclXml("again.xml", writeNcclXml(m, { devices: "all" }));
        assert.equal(back.functions.length, m.functions.length);
      }),
      { numRuns: 400 },
    );
  });
});
