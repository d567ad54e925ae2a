import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { InputError } from "../errors.ts";
import { compareBdf, formatBdf, parseBdf } from "../hw/bdf.ts";
import type { PcieType } from "../hw/config-space.ts";
import type {
  BarDescription,
  FunctionDescription,
  HostBridgeDescription,
  MachineDescription,
} from "../hw/machine.ts";
import {
  formatAcsWord,
  formatByteSize,
  machineJsonSchema,
  parseByteSize,
  parseMachineDocument,
  writeMachineJson,
  writeMachineYaml,
} from "./machine-doc.ts";

const NESTED = `# a root port with a switch below it
schemaVersion: 1
name: tiny
cpu: { vendor: GenuineIntel, family: 6, model: 143 }
iommu: { mode: identity }
hostBridges:
  - bus: "0000:15"
    busEnd: 0x25
    numaNode: 0
    windows:
      - { cpuStart: 0x202000000000, size: 128GiB }
      - { cpuStart: 0x9d000000, size: 16MiB, busStart: 0x1d000000 }
functions:
  - bdf: "0000:15:00.0"
    id: "8086:09a2"
    class: 0x088000
    pcieType: rc-endpoint
  - bdf: "0000:15:01.0"
    id: "8086:352a"
    class: "0x060400"
    headerType: 1
    pcieType: root-port
    link: 32GT/s x16
    secondaryBus: "16"
    subordinateBus: 0x18
    acs: { cap: SV TB RR CR UF, ctrl: SV RR CR UF }
    children:
      - bdf: "0000:16:00.0"
        id: "1000:c030"
        class: 0x060400
        pcieType: upstream-port
        acs: null
        secondaryBus: 0x17
        subordinateBus: 0x18
        children:
          - bdf: "0000:17:00.0"
            id: "1000:c030"
            class: 0x060400
            pcieType: downstream-port
            link: { maxSpeed: 32, maxWidth: 16, speed: 16, width: 16 }
            acs: { cap: "0x7f", ctrl: "SV,RR,CR,UF", offset: 0x148 }
            children:
              - bdf: "0000:18:00.0"
                id: "1da3:1020"
                subsystem: "1da3:0001"
                revision: 0x01
                class: 0x120000
                link: Gen4 x16
                driver: habanalabs
                numaNode: 0
                iommuGroup: 12
                osDevices: [accel0]
                bars:
                  - { index: 0, start: 0x202000000000, size: 256MiB, kind: mem64-pref }
                  - { index: 2, start: 0x202010000000, size: 16KiB, kind: mem64 }
                  - { index: 4, start: 0x202800000000, size: 32GiB, kind: mem64-pref }
                config: |
                  a3 1d 20 10
                  06 00 10 00
`;

/** The same machine written flat, in BDF order, with BDFs spelled differently. */
const FLAT = `schemaVersion: 1
name: tiny
cpu: { vendor: GenuineIntel, family: 6, model: 143 }
iommu: { mode: identity }
hostBridges:
  - bus: "15"
    busEnd: "0x25"
    numaNode: 0
    windows:
      - { cpuStart: "0x2020_0000_0000", size: "0x2000000000" }
      - { cpuStart: "0x9d000000", size: "16 MiB", busStart: "0x1d000000" }
functions:
  - { bdf: "15:00.0", vendor: "8086", device: "09a2", class: "0x088000", pcieType: rc-endpoint }
  - bdf: "15:01.0"
    id: "8086:352a"
    class: "060400"
    headerType: 1
    pcieType: root-port
    link: { maxSpeed: 32, maxWidth: 16, speed: 32, width: 16 }
    secondaryBus: "0x16"
    subordinateBus: "0x18"
    acs: { cap: "0x1f", ctrl: "0x1d" }
  - bdf: "16:00.0"
    parent: "15:01.0"
    id: "1000:c030"
    class: "0x060400"
    pcieType: upstream-port
    acs: null
    secondaryBus: "0x17"
    subordinateBus: "0x18"
  - bdf: "17:00.0"
    parent: "0000:16:00.0"
    id: "1000:c030"
    class: "0x060400"
    pcieType: downstream-port
    link: { maxSpeed: 32, maxWidth: 16, speed: 16, width: 16 }
    acs: { cap: SV TB RR CR UF EC DT, ctrl: SV RR CR UF, offset: "0x148" }
  - bdf: "18:00.0"
    parent: "17:00.0"
    vendor: "1da3"
    device: "0x1020"
    subsystemVendor: "1da3"
    subsystemDevice: "0001"
    revision: "0x01"
    class: "0x120000"
    link: 16GT/s x16
    driver: habanalabs
    numaNode: 0
    iommuGroup: 12
    osDevices: [accel0]
    bars:
      - { index: 0, start: "0x202000000000", size: 256M, kind: mem64-pref }
      - { index: 2, start: "0x202010000000", size: 16K, kind: mem64 }
      - { index: 4, start: "0x202800000000", size: 0.03125TiB, kind: mem64-pref }
    config: "a31d2010 06001000"
`;

/** Runs `fn`, asserts it throws an InputError and returns it. */
function inputError(fn: () => unknown): InputError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof InputError, `expected an InputError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected an InputError, nothing was thrown");
}

const parse = (text: string) => parseMachineDocument("m.yaml", text);

/** 1-based line of the first occurrence of `needle`, counted independently of the parser. */
function lineOf(text: string, needle: string): number {
  const i = text.indexOf(needle);
  assert.ok(i >= 0, `${needle} not in text`);
  return text.slice(0, i).split("\n").length;
}

describe("parseMachineDocument", () => {
  it("reads a nested hand-written machine into model values", () => {
    const m = parse(NESTED);
    assert.equal(m.schemaVersion, 1);
    assert.deepEqual(m.hostBridges, [
      {
        domain: 0,
        bus: 0x15,
        busEnd: 0x25,
        numaNode: 0,
        windows: [
          { cpuStart: 0x202000000000n, size: 128n << 30n, busStart: 0x202000000000n },
          { cpuStart: 0x9d000000n, size: 16n << 20n, busStart: 0x1d000000n },
        ],
      },
    ]);
    assert.deepEqual(
      m.functions.map((f) => [f.bdf, f.parent]),
      [
        ["0000:15:00.0", null],
        ["0000:15:01.0", null],
        ["0000:16:00.0", "0000:15:01.0"],
        ["0000:17:00.0", "0000:16:00.0"],
        ["0000:18:00.0", "0000:17:00.0"],
      ],
    );
    const rp = m.functions[1]!;
    assert.equal(rp.classCode, 0x060400);
    assert.equal(rp.secondaryBus, 0x16);
    assert.deepEqual(rp.link, { maxSpeed: 32, maxWidth: 16, speed: 32, width: 16 });
    assert.deepEqual(rp.acs, { cap: 0x1f, ctrl: 0x1d });
    assert.equal(m.functions[2]!.acs, null);
    assert.deepEqual(m.functions[3]!.acs, { cap: 0x7f, ctrl: 0x1d, offset: 0x148 });
    const acc = m.functions[4]!;
    assert.deepEqual(acc, {
      bdf: "0000:18:00.0",
      parent: "0000:17:00.0",
      vendor: 0x1da3,
      device: 0x1020,
      subsystemVendor: 0x1da3,
      subsystemDevice: 0x0001,
      revision: 1,
      classCode: 0x120000,
      link: { maxSpeed: 16, maxWidth: 16, speed: 16, width: 16 },
      driver: "habanalabs",
      numaNode: 0,
      iommuGroup: 12,
      osDevices: ["accel0"],
      bars: [
        {
          index: 0,
          start: 0x202000000000n,
          size: 256n << 20n,
          mem: true,
          prefetchable: true,
          is64: true,
        },
        {
          index: 2,
          start: 0x202010000000n,
          size: 16384n,
          mem: true,
          prefetchable: false,
          is64: true,
        },
        {
          index: 4,
          start: 0x202800000000n,
          size: 32n << 30n,
          mem: true,
          prefetchable: true,
          is64: true,
        },
      ],
      config: new Uint8Array([0xa3, 0x1d, 0x20, 0x10, 0x06, 0x00, 0x10, 0x00]),
    });
  });

  it("loads the nested and the flat form to the same description", () => {
    assert.deepEqual(parse(FLAT), parse(NESTED));
  });

  it("loads nested functions in BDF order whatever order the tree lists them in", () => {
    const m = parse(`schemaVersion: 1
functions:
  - { bdf: "00:02.0", class: "0x060400", children: [{ bdf: "02:00.0", class: "0x020000" }] }
  - { bdf: "00:01.0", class: "0x060400", children: [{ bdf: "01:00.0", class: "0x020000" }] }
`);
    assert.deepEqual(
      m.functions.map((f) => f.bdf),
      ["0000:00:01.0", "0000:00:02.0", "0000:01:00.0", "0000:02:00.0"],
    );
  });

  it("keeps the order of a flat document", () => {
    const m = parse(`schemaVersion: 1
functions:
  - { bdf: "00:02.0", class: "0x020000" }
  - { bdf: "00:01.0", class: "0x020000" }
`);
    assert.deepEqual(
      m.functions.map((f) => f.bdf),
      ["0000:00:02.0", "0000:00:01.0"],
    );
  });

  it("keeps unquoted hex addresses above 2^53 exact", () => {
    const m = parse(`schemaVersion: 1
functions:
  - bdf: "00:01.0"
    class: 0x020000
    bars: [{ index: 0, start: 0xfffffffffff00001, size: 0xfffff, kind: mem64 }]
`);
    assert.equal(m.functions[0]!.bars![0]!.start, 0xfffffffffff00001n);
  });

  it("reads JSON, and the JSON writer's output equals the YAML writer's after loading", () => {
    const m = parse(NESTED);
    const json = writeMachineJson(m);
    assert.equal(json.trimStart()[0], "{");
    assert.doesNotThrow(() => JSON.parse(json));
    assert.deepEqual(parseMachineDocument("m.json", json), m);
  });

  it("accepts YAML anchors and merge keys for repeated devices", () => {
    const m = parse(`schemaVersion: 1
functions:
  - &nic { bdf: "00:01.0", id: "15b3:1021", class: "0x020700", driver: mlx5_core }
  - { <<: *nic, bdf: "00:02.0" }
`);
    assert.deepEqual(m.functions[1], {
      bdf: "0000:00:02.0",
      parent: null,
      vendor: 0x15b3,
      device: 0x1021,
      classCode: 0x020700,
      driver: "mlx5_core",
    });
  });

  it("ignores a $schema key, which editors use to find the JSON Schema", () => {
    const m = parse(`$schema: ./machine.schema.json\nschemaVersion: 1\nfunctions: []\n`);
    assert.deepEqual(m, { schemaVersion: 1, hostBridges: [], functions: [] });
  });
});

describe("value formats", () => {
  it("parses sizes with binary units, hex, and fractions that are whole bytes", () => {
    const cases: [string, bigint | null][] = [
      ["0x1000", 4096n],
      ["0x380_0000_0000", 0x38000000000n],
      ["96GiB", 96n << 30n],
      ["2 MiB", 2n << 20n],
      ["64M", 64n << 20n],
      ["1.5KiB", 1536n],
      ["4096B", 4096n],
      ["16EiB", 1n << 64n],
      ["96GB", null],
      ["2XB", null],
      ["4096", null],
      ["1.3B", null],
      ["0x", null],
      ["", null],
    ];
    for (const [text, want] of cases) assert.equal(parseByteSize(text), want, text);
  });

  it("writes sizes with the largest binary unit that divides them, else hex", () => {
    assert.equal(formatByteSize(32n << 30n), "32GiB");
    assert.equal(formatByteSize(1536n), "0x600");
    assert.equal(formatByteSize(128n), "128B");
    assert.equal(formatByteSize(0n), "0x0");
    assert.equal(formatByteSize(3n << 20n), "3MiB");
  });

  it("writes ACS words as names in lspci order, none, or hex with reserved bits", () => {
    assert.equal(formatAcsWord(0x1d), "SV RR CR UF");
    assert.equal(formatAcsWord(0x7f), "SV TB RR CR UF EC DT");
    assert.equal(formatAcsWord(0), "none");
    assert.equal(formatAcsWord(0x105), "0x105");
  });
});

describe("writeMachineYaml", () => {
  it("nests children under bridges when the description is in BDF order", () => {
    const y = writeMachineYaml(parse(NESTED));
    assert.match(y, /children:/);
    assert.doesNotMatch(y, /parent:/);
    assert.match(y, /link: 32GT\/s x16/);
    assert.match(y, /acs: \{ cap: SV TB RR CR UF, ctrl: SV RR CR UF \}/);
    assert.match(y, /size: 32GiB, kind: mem64-pref/);
    assert.match(y, /bdf: "0000:18:00.0"/);
  });

  it("writes flat with parent when asked or when the order is not BDF order", () => {
    const m = parse(NESTED);
    const flat = writeMachineYaml(m, { flat: true });
    assert.doesNotMatch(flat, /children:/);
    assert.match(flat, /parent: "0000:17:00.0"/);
    assert.deepEqual(parse(flat), m);
    const reversed: MachineDescription = { ...m, functions: [...m.functions].reverse() };
    const y = writeMachineYaml(reversed);
    assert.doesNotMatch(y, /children:/);
    assert.deepEqual(parse(y), reversed);
  });
});

describe("parse errors", () => {
  it("refuses another schemaVersion and says which versions it reads", () => {
    const e = inputError(() => parse(NESTED.replace("schemaVersion: 1", "schemaVersion: 2")));
    assert.equal(e.code, "input-unsupported");
    assert.equal(e.place, "line 2, schemaVersion");
    assert.match(e.reason, /schemaVersion 2 is not supported: this peerbuf reads version 1/);
  });

  it("requires schemaVersion", () => {
    const e = inputError(() => parse("functions: []\n"));
    assert.match(e.reason, /schemaVersion is missing/);
  });

  it("names unknown fields with their line, path and a suggestion", () => {
    const e = inputError(() =>
      parse(NESTED.replace("    busEnd: 0x25", "    busEnd: 0x25\n    bsEnd: 3")),
    );
    assert.equal(e.place, "line 9, hostBridges[0].bsEnd");
    assert.match(e.reason, /unknown field "bsEnd" \(did you mean "busEnd"\?\)/);
    const top = inputError(() => parse(`${NESTED}colour: blue\n`));
    assert.match(top.message, /^m\.yaml: line \d+, colour: unknown field "colour"$/);
  });

  it("reports bad hex with the path into nested children", () => {
    const e = inputError(() => parse(NESTED.replace("class: 0x120000", "class: 0xZZ")));
    assert.equal(
      e.place,
      `line ${lineOf(NESTED, "class: 0x120000")}, functions[1].children[0].children[0].children[0].class`,
    );
    assert.match(e.reason, /expected a 24-bit class code such as "0x030200", got "0xZZ"/);
  });

  it("explains that unquoted digits are decimal when a hex value is expected", () => {
    const e = inputError(() => parse(NESTED.replace("class: 0x120000", "class: 120000")));
    assert.match(e.reason, /got the number 120000 \(write hex values as strings/);
  });

  it("refuses sizes with decimal or unknown units, and sizes without a unit", () => {
    const gb = inputError(() => parse(NESTED.replace("size: 32GiB", "size: 32GB")));
    assert.equal(
      gb.place,
      `line ${lineOf(NESTED, "size: 32GiB")}, functions[1].children[0].children[0].children[0].bars[2].size`,
    );
    assert.match(gb.reason, /GB is a decimal unit; PCI sizes are binary, write "32GiB"/);
    const xb = inputError(() => parse(NESTED.replace("size: 32GiB", "size: 32XB")));
    assert.match(xb.reason, /unknown unit "XB"/);
    const bare = inputError(() => parse(NESTED.replace("size: 32GiB", 'size: "4096"')));
    assert.match(bare.reason, /has no unit/);
  });

  it("refuses a BAR that runs past 2^64 and a duplicate BAR index", () => {
    const past = inputError(() =>
      parse(
        NESTED.replace(
          "start: 0x202800000000, size: 32GiB",
          "start: 0xfffffffff0000000, size: 32GiB",
        ),
      ),
    );
    assert.match(past.reason, /runs past the end of the 64-bit address space/);
    const dup = inputError(() => parse(NESTED.replace("index: 2,", "index: 0,")));
    assert.match(dup.reason, /BAR 0 is listed twice/);
    assert.match(dup.place ?? "", /bars\[1\]\.index$/);
  });

  it("refuses id together with vendor, and busEnd below the root bus", () => {
    const both = inputError(() =>
      parse(NESTED.replace('id: "8086:09a2"', 'id: "8086:09a2"\n    vendor: "8086"')),
    );
    assert.match(both.reason, /give either id or vendor\/device, not both/);
    const low = inputError(() => parse(NESTED.replace("busEnd: 0x25", "busEnd: 0x10")));
    assert.match(low.reason, /busEnd 0x10 is below the root bus 0x15/);
  });

  it("reports duplicate BDFs with both places", () => {
    const e = inputError(() => parse(NESTED.replace('bdf: "0000:18:00.0"', 'bdf: "0000:15:01.0"')));
    assert.equal(
      e.place,
      `line ${lineOf(NESTED, 'bdf: "0000:18:00.0"')}, functions[1].children[0].children[0].children[0].bdf`,
    );
    const first = lineOf(NESTED, 'bdf: "0000:15:01.0"');
    assert.match(
      e.reason,
      new RegExp(`0000:15:01.0 is listed twice \\(first at line ${first}, functions\\[1\\]\\)`),
    );
  });

  it("reports a missing parent, a parent that is not a bridge, and a parent chain that loops", () => {
    const missing = inputError(() =>
      parse(
        `schemaVersion: 1\nfunctions:\n  - { bdf: "00:01.0", class: "0x020000", parent: "00:09.0" }\n`,
      ),
    );
    assert.equal(missing.place, "line 3, functions[0].parent");
    assert.match(missing.reason, /names parent 0000:00:09.0, which is not in the machine/);
    const notBridge = inputError(() =>
      parse(`schemaVersion: 1
functions:
  - bdf: "00:01.0"
    class: "0x020000"
    children:
      - { bdf: "01:00.0", class: "0x020000" }
`),
    );
    assert.equal(notBridge.place, "line 6, functions[0].children[0].bdf");
    assert.match(notBridge.reason, /which is not a bridge \(a bridge has headerType 1/);
    const loop = inputError(() =>
      parse(`schemaVersion: 1
functions:
  - { bdf: "00:01.0", class: "0x060400", parent: "00:02.0" }
  - { bdf: "00:02.0", class: "0x060400", parent: "00:01.0" }
`),
    );
    assert.match(loop.reason, /the parent chain of 0000:00:0[12].0 loops/);
    assert.match(loop.place ?? "", /^line [34], functions\[[01]\]\.parent$/);
  });

  it("points at physfn when a VF names a PF that is not in the machine", () => {
    const e = inputError(() =>
      parse(
        `schemaVersion: 1\nfunctions:\n  - bdf: "00:01.1"\n    class: "0x020000"\n    physfn: "00:01.0"\n`,
      ),
    );
    assert.equal(e.place, "line 5, functions[0].physfn");
    assert.match(e.reason, /VF 0000:00:01.1 names PF 0000:00:01.0, which is not in the machine/);
  });

  it("refuses a nested child whose parent field contradicts its place in the tree", () => {
    const e = inputError(() =>
      parse(
        NESTED.replace(
          'bdf: "0000:18:00.0"',
          'bdf: "0000:18:00.0"\n                parent: "0000:15:01.0"',
        ),
      ),
    );
    assert.match(e.reason, /parent 0000:15:01.0 contradicts the nesting under 0000:17:00.0/);
  });

  it("reports a host bridge listed twice", () => {
    const e = inputError(() =>
      parse(
        `schemaVersion: 1\nhostBridges:\n  - { bus: "00" }\n  - { bus: "0000:00" }\nfunctions: []\n`,
      ),
    );
    assert.equal(e.place, "line 4, hostBridges[1].bus");
    assert.match(e.reason, /host bridge pci0000:00 is listed twice/);
  });

  it("gives the line of a YAML syntax error", () => {
    const e = inputError(() => parse("schemaVersion: 1\nfunctions:\n  - { bdf: 00:01.0\n"));
    assert.match(e.place ?? "", /^line [34], column \d+$/);
    assert.match(e.reason, /^not valid YAML\/JSON: /);
    const json = inputError(() =>
      parseMachineDocument("m.json", '{\n  "schemaVersion": 1,\n  "functions": [\n}\n'),
    );
    assert.match(json.message, /^m\.json: line \d, column \d+: not valid YAML\/JSON/);
  });

  it("refuses binary data, empty documents and documents that are not mappings", () => {
    const bin = inputError(() => parse("schemaVersion: 1\n\u0000\u0001\u00ff"));
    assert.equal(bin.place, "line 2");
    assert.match(bin.reason, /not a text file: control character 0x00/);
    assert.match(inputError(() => parse("")).reason, /the document is empty/);
    assert.match(inputError(() => parse("- 1\n- 2\n")).reason, /expected a mapping.*got a list/);
    assert.match(inputError(() => parse("42\n")).reason, /got the number 42/);
  });

  it("lists further problems after the first, in document order", () => {
    const e = inputError(() =>
      parse(`schemaVersion: 1
functions:
  - { bdf: "00:01.0", class: "0xZZ" }
  - { bdf: "nope", class: "0x020000", colour: red }
`),
    );
    assert.equal(e.place, "line 3, functions[0].class");
    assert.match(e.reason, /; also line 4, functions\[1\]\.bdf: expected a PCI address/);
    assert.match(e.reason, /line 4, functions\[1\]\.colour: unknown field "colour"/);
  });

  it("turns YAML's own value errors into InputError, without printing warnings", () => {
    const warnings: unknown[] = [];
    const emit = process.emitWarning;
    process.emitWarning = ((w: unknown) => void warnings.push(w)) as typeof process.emitWarning;
    try {
      const merge = inputError(() => parse("<<: 5\nschemaVersion: 1\nfunctions: []\n"));
      assert.match(merge.reason, /cannot read the document: Merge sources must be maps/);
      const key = inputError(() => parse("schemaVersion: 1\nfunctions: []\n? [a, b]\n: c\n"));
      assert.match(key.reason, /unknown field/);
    } finally {
      process.emitWarning = emit;
    }
    assert.deepEqual(warnings, []);
  });

  it("never throws anything but InputError on random bytes", () => {
    const decoder = new TextDecoder("utf-8", { fatal: false });
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 512 }), (bytes) => {
        inputError(() => parse(decoder.decode(bytes)));
      }),
    );
  });
});

// ---------------------------------------------------------------------------------------------
// random valid descriptions

const U64 = 1n << 64n;
const PCIE_TYPES: readonly (PcieType | null)[] = [
  "endpoint",
  "legacy-endpoint",
  "root-port",
  "upstream-port",
  "downstream-port",
  "pcie-to-pci-bridge",
  "pci-to-pcie-bridge",
  "rc-endpoint",
  "rc-event-collector",
  null,
];

const opt = { noNullPrototype: true, requiredKeys: [] as never[] };
const str = fc.oneof(
  fc.string({ unit: "binary", maxLength: 12 }),
  fc.string({ unit: "binary-ascii", maxLength: 12 }),
);
const u16 = fc.integer({ min: 0, max: 0xffff });
const u8 = fc.integer({ min: 0, max: 0xff });
const sizeArb = fc.oneof(
  fc.integer({ min: 0, max: 64 }).map((k) => 1n << BigInt(k)),
  fc.bigInt({ min: 1n, max: U64 }),
);
const sizedAt = <T>(f: (size: bigint, start: bigint) => T) =>
  sizeArb.chain((size) => fc.bigInt({ min: 0n, max: U64 - size }).map((start) => f(size, start)));
const bigOrZero = fc.oneof(fc.constant(0n), sizeArb);
const speedArb = fc.oneof(
  fc.constantFrom(2.5, 5, 8, 16, 32, 64),
  fc.double({ min: 0, max: 1e6, noNaN: true, noDefaultInfinity: true }),
  fc.constant(null),
);

const barArb = fc
  .record(
    {
      index: fc.integer({ min: 0, max: 16 }),
      geometry: sizedAt((size, start) => ({ size, start })),
      mem: fc.boolean(),
      prefetchable: fc.boolean(),
      is64: fc.boolean(),
    },
    { noNullPrototype: true },
  )
  .map(
    (b): BarDescription => ({
      index: b.index,
      start: b.geometry.start,
      size: b.geometry.size,
      mem: b.mem,
      prefetchable: b.prefetchable,
      is64: b.is64,
    }),
  );

const extraArb = fc.record(
  {
    vendor: u16,
    device: u16,
    subsystemVendor: u16,
    subsystemDevice: u16,
    revision: u8,
    multifunction: fc.boolean(),
    pcieType: fc.constantFrom(...PCIE_TYPES),
    link: fc.oneof(
      fc.record(
        {
          maxSpeed: speedArb,
          maxWidth: fc.integer({ min: 0, max: 63 }),
          speed: speedArb,
          width: fc.integer({ min: 0, max: 63 }),
        },
        opt,
      ),
      // trained at its maximum: written in the short "32GT/s x16" form
      fc
        .tuple(speedArb, fc.integer({ min: 0, max: 63 }))
        .map(([sp, w]) => ({ maxSpeed: sp, maxWidth: w, speed: sp, width: w })),
    ),
    secondaryBus: u8,
    subordinateBus: u8,
    bars: fc.uniqueArray(barArb, { selector: (b) => b.index, maxLength: 4 }),
    numaNode: fc.option(fc.integer({ min: 0, max: 8 }), { nil: null }),
    iommuGroup: fc.option(fc.integer({ min: 0, max: 2 ** 31 - 1 }), { nil: null }),
    driver: fc.option(str, { nil: null }),
    acs: fc.option(
      fc.record(
        { cap: u16, ctrl: u16, offset: fc.integer({ min: 0, max: 0xfff }) },
        { noNullPrototype: true, requiredKeys: ["cap"] },
      ),
      { nil: null },
    ),
    sriov: fc.option(fc.record({ totalVfs: u16, numVfs: u16 }, { noNullPrototype: true }), {
      nil: null,
    }),
    p2pmem: fc.record(
      { size: bigOrZero, available: bigOrZero, published: fc.boolean() },
      { noNullPrototype: true },
    ),
    slot: str,
    label: str,
    config: fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      fc.uint8Array({ minLength: 4096, maxLength: 4096 }),
    ),
    vendorName: str,
    deviceName: str,
    osDevices: fc.array(str, { maxLength: 3 }),
  },
  opt,
);

const bdfArb = fc.record(
  {
    domain: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffffffff })),
    bus: u8,
    dev: fc.integer({ min: 0, max: 31 }),
    fn: fc.integer({ min: 0, max: 7 }),
  },
  { noNullPrototype: true },
);

const nodeArb = fc.record(
  {
    bdf: bdfArb,
    bridge: fc.boolean(),
    bridgeBy: fc.constantFrom("class", "header1", "header2"),
    classCode: fc.integer({ min: 0, max: 0xffffff }),
    explicitHeader: fc.boolean(),
    parentPick: fc.nat(),
    physfnPick: fc.option(fc.nat(), { nil: undefined }),
    extra: extraArb,
  },
  { noNullPrototype: true },
);

const hostBridgeArb = fc
  .record(
    {
      domain: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffffffff })),
      bus: u8,
      span: fc.option(u8, { nil: undefined }),
      numaNode: fc.option(fc.option(fc.integer({ min: 0, max: 65535 }), { nil: null }), {
        nil: undefined,
      }),
      windows: fc.option(
        fc.array(
          sizeArb.chain((size) =>
            fc
              .tuple(
                fc.bigInt({ min: 0n, max: U64 - size }),
                fc.bigInt({ min: 0n, max: U64 - size }),
                fc.boolean(),
              )
              .map(([cpuStart, busStart, same]) => ({
                cpuStart,
                size,
                busStart: same ? cpuStart : busStart,
              })),
          ),
          { maxLength: 3 },
        ),
        { nil: undefined },
      ),
    },
    { noNullPrototype: true },
  )
  .map((h): HostBridgeDescription => {
    const out: { -readonly [K in keyof HostBridgeDescription]: HostBridgeDescription[K] } = {
      domain: h.domain,
      bus: h.bus,
    };
    if (h.span !== undefined) out.busEnd = Math.min(255, h.bus + h.span);
    if (h.numaNode !== undefined) out.numaNode = h.numaNode;
    if (h.windows !== undefined) out.windows = h.windows;
    return out;
  });

const metaArb = fc.record(
  {
    name: str,
    source: fc.record(
      { format: str, path: str },
      { noNullPrototype: true, requiredKeys: ["format"] },
    ),
    cpu: fc.record(
      {
        vendor: str,
        family: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        model: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        modelName: str,
        arch: str,
        sockets: fc.integer({ min: 0, max: 65535 }),
      },
      opt,
    ),
    kernel: fc.record({ release: str, profile: str }, opt),
    cmdline: str,
    iommu: fc.record(
      { mode: fc.constantFrom("off", "dma", "dma-fq", "identity" as const), driver: str },
      opt,
    ),
    numaNodes: fc.integer({ min: 0, max: 65535 }),
    unknowns: fc.array(str, { maxLength: 3 }),
  },
  opt,
);

/** Random valid descriptions: unique BDFs, parents that are earlier bridges, PFs that exist. */
const machineArb: fc.Arbitrary<MachineDescription> = fc
  .record(
    {
      meta: metaArb,
      hostBridges: fc.uniqueArray(hostBridgeArb, {
        selector: (h) => `${h.domain}:${h.bus}`,
        maxLength: 3,
      }),
      nodes: fc.uniqueArray(nodeArb, { selector: (n) => formatBdf(n.bdf), maxLength: 10 }),
      bdfOrder: fc.boolean(),
    },
    { noNullPrototype: true },
  )
  .map(({ meta, hostBridges, nodes, bdfOrder }) => {
    const names = nodes.map((n) => formatBdf(n.bdf));
    const bridges: number[] = [];
    const functions = nodes.map((n, i): FunctionDescription => {
      let classCode = n.classCode;
      let headerType: number | undefined;
      if (n.bridge) {
        if (n.bridgeBy === "class") {
          classCode = ((classCode & 1 ? 0x0609 : 0x0604) << 8) | (classCode & 0xff);
          if (n.explicitHeader) headerType = 1;
        } else headerType = n.bridgeBy === "header1" ? 1 : 2;
      } else if (n.explicitHeader || [0x0604, 0x0609].includes(classCode >> 8)) headerType = 0;
      const pick = n.parentPick % (bridges.length + 1);
      const parent = pick === 0 ? null : names[bridges[pick - 1]!]!;
      if (n.bridge) bridges.push(i);
      const others = names.filter((_, j) => j !== i);
      const physfn =
        n.physfnPick === undefined || others.length === 0
          ? undefined
          : others[n.physfnPick % others.length];
      return {
        bdf: names[i]!,
        parent,
        classCode,
        ...(headerType !== undefined ? { headerType } : {}),
        ...(physfn !== undefined ? { physfn } : {}),
        ...n.extra,
      };
    });
    if (bdfOrder) {
      const key = new Map(functions.map((f) => [f, parseBdf(f.bdf)!]));
      functions.sort((a, b) => compareBdf(key.get(a)!, key.get(b)!));
    }
    return { schemaVersion: 1 as const, ...meta, hostBridges, functions };
  });

describe("round trip", () => {
  it("parse(writeMachineYaml(m)) equals m for random valid descriptions", () => {
    fc.assert(
      fc.property(machineArb, (m) => {
        assert.deepStrictEqual(parse(writeMachineYaml(m)), m);
      }),
      { numRuns: 200 },
    );
  });

  it("keeps strings that YAML writers get wrong: control characters, multi-line text in flow maps", () => {
    const m: MachineDescription = {
      schemaVersion: 1,
      cpu: { arch: "-\n!", vendor: "a\u007fb\u0000c" },
      kernel: { release: "?\n!", profile: "\ufeffd\u0085e\u2028f\r\n" },
      hostBridges: [],
      functions: [
        { bdf: "0000:00:00.0", parent: null, classCode: 0, label: " \n", slot: "\u007f" },
      ],
    };
    assert.deepStrictEqual(parse(writeMachineYaml(m)), m);
    assert.deepStrictEqual(parseMachineDocument("m.json", writeMachineJson(m)), m);
  });

  it("parse(writeMachineJson(m)) equals m, and so does the flat YAML", () => {
    fc.assert(
      fc.property(machineArb, (m) => {
        assert.deepStrictEqual(parseMachineDocument("m.json", writeMachineJson(m)), m);
        assert.deepStrictEqual(parse(writeMachineYaml(m, { flat: true })), m);
      }),
      { numRuns: 100 },
    );
  });

  it("nested and flat writings of one description load the same", () => {
    fc.assert(
      fc.property(machineArb, (m) => {
        const nested = writeMachineYaml(m);
        const flat = writeMachineYaml(m, { flat: true });
        assert.deepStrictEqual(parse(nested), parse(flat));
      }),
      { numRuns: 50 },
    );
  });
});

describe("fuzz", () => {
  const base = writeMachineYaml(parse(NESTED));
  const edit = fc.record(
    {
      at: fc.nat(),
      cut: fc.integer({ min: 0, max: 12 }),
      insert: fc.oneof(
        fc.string({ maxLength: 8 }),
        fc.constantFrom(
          ...[":", "- ", "{", "}", "[", "]", '"', "\n", "  ", "? ", "|\n", "~", "null", "0x"],
          ...["&a ", "*a", "<<: ", "<<: *a\n", "!!binary ", "!!omap ", "!!timestamp ", "!foo "],
          ...["%YAML 1.1\n---\n", "---\n", "__proto__: "],
        ),
      ),
    },
    { noNullPrototype: true },
  );
  const mutate = (text: string, edits: readonly { at: number; cut: number; insert: string }[]) =>
    edits.reduce((t, e) => {
      const at = e.at % (t.length + 1);
      return t.slice(0, at) + e.insert + t.slice(at + e.cut);
    }, text);

  it("mutated YAML documents either load or throw InputError", () => {
    fc.assert(
      fc.property(fc.array(edit, { minLength: 1, maxLength: 6 }), (edits) => {
        try {
          parse(mutate(base, edits));
        } catch (e) {
          assert.ok(e instanceof InputError, `threw ${String(e)}`);
        }
      }),
      { numRuns: 1000 },
    );
  });

  it("mutated JSON documents either load or throw InputError", () => {
    const json = writeMachineJson(parse(NESTED));
    fc.assert(
      fc.property(fc.array(edit, { minLength: 1, maxLength: 6 }), (edits) => {
        try {
          parseMachineDocument("m.json", mutate(json, edits));
        } catch (e) {
          assert.ok(e instanceof InputError, `threw ${String(e)}`);
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe("machineJsonSchema", () => {
  it("describes the written form: required fields, no extra keys, hex and size patterns", () => {
    const s = machineJsonSchema() as {
      type: string;
      required: string[];
      additionalProperties: boolean;
      properties: Record<string, { items?: unknown }>;
    };
    assert.equal(s.type, "object");
    assert.deepEqual([...s.required].sort(), ["functions", "schemaVersion"]);
    assert.equal(s.additionalProperties, false);
    const text = JSON.stringify(s);
    // the function schema is recursive through children, so it must be a shared definition
    assert.match(
      text,
      /"children":\{"type":"array","items":\{"\$ref":"#\/\$defs\/__schema\d+"\}\}/,
    );
    assert.match(
      text,
      /"kind":\{"type":"string","pattern":"\^\(mem\|io\)\(32\|64\)\?\(-pref\)\?\$"\}/,
    );
    assert.ok(text.includes('"schemaVersion":{"type":"number","const":1}'));
  });
});
