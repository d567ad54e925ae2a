import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { TopologyError } from "../errors.ts";
import type { FunctionDescription, MachineDescription } from "../hw/machine.ts";
import { writeDot } from "./dot.ts";
import { parseMachineDocument } from "./machine-doc.ts";

const SWITCH = parseMachineDocument(
  "switch.yaml",
  `schemaVersion: 1
name: one switch
cpu: { vendor: GenuineIntel, family: 6, model: 143 }
iommu: { mode: identity }
hostBridges:
  - { bus: "0000:15", busEnd: "0x25", numaNode: 0 }
functions:
  - { bdf: "0000:15:00.0", id: "8086:09a2", class: "0x088000", pcieType: rc-endpoint }
  - bdf: "0000:15:01.0"
    id: "8086:352a"
    class: "0x060400"
    pcieType: root-port
    driver: pcieport
    link: 32GT/s x16
    acs: { cap: SV TB RR CR UF, ctrl: SV RR CR UF }
    children:
      - bdf: "0000:16:00.0"
        id: "1000:c030"
        class: "0x060400"
        pcieType: upstream-port
        link: 32GT/s x16
        acs: null
        children:
          - bdf: "0000:17:00.0"
            id: "1000:c030"
            class: "0x060400"
            pcieType: downstream-port
            link: { maxSpeed: 32, maxWidth: 16, speed: 16, width: 16 }
            acs: { cap: SV TB RR CR UF EC DT, ctrl: none }
            children:
              - bdf: "0000:18:00.0"
                id: "1da3:1020"
                class: "0x120000"
                deviceName: Gaudi2 "HL-225"
                driver: habanalabs
                iommuGroup: 6
                link: 16GT/s x16
          - bdf: "0000:17:01.0"
            id: "1000:c030"
            class: "0x060400"
            pcieType: downstream-port
            link: { maxSpeed: 32, maxWidth: 16, speed: 8, width: 4 }
            acs: { cap: SV TB RR CR UF EC DT }
            children:
              - { bdf: "0000:19:00.0", id: "15b3:1021", class: "0x020700", link: { maxSpeed: 32, maxWidth: 16, speed: 8, width: 4 } }
              - { bdf: "0000:19:00.1", id: "15b3:101e", class: "0x020700", physfn: "0000:19:00.0" }
  - { bdf: "0000:40:00.0", class: "0x010802", label: "on a root bus nobody listed" }
`,
);

/** The statement for `id` (a node) or `a -> b` (an edge). */
function statement(dot: string, head: string): string {
  const line = dot
    .split("\n")
    .find((l) => l.trim().startsWith(`${head} [`) || l.trim() === `${head};`);
  assert.ok(line, `no statement for ${head}`);
  return line;
}

describe("writeDot", () => {
  it("draws one cluster per host bridge, synthesised ones included", () => {
    const dot = writeDot(SWITCH);
    assert.match(dot, /^digraph "peerbuf" \{\n/);
    assert.match(dot, /\n\}\n$/);
    assert.match(dot, /subgraph "cluster_pci0000:15" \{/);
    assert.match(dot, /subgraph "cluster_pci0000:40" \{/);
    assert.match(statement(dot, '"pci0000:15"'), /label="pci0000:15\\nbuses 15-25\\nNUMA 0"/);
    assert.match(dot, /label="one switch\\nGenuineIntel family 6 model 143\\nIOMMU identity"/);
  });

  it("labels functions with BDF, IDs, class, name, role and ACS control", () => {
    const dot = writeDot(SWITCH);
    assert.match(
      statement(dot, '"0000:15:01.0"'),
      /label="0000:15:01.0\\n8086:352a {2}class 0x060400\\nroot-port · pcieport\\nACS SV RR CR UF"/,
    );
    assert.match(statement(dot, '"0000:17:00.0"'), /\\nACS none"/);
    assert.match(statement(dot, '"0000:17:01.0"'), /\\nACS ctrl unknown"/);
    assert.doesNotMatch(statement(dot, '"0000:16:00.0"'), /ACS/);
    assert.match(
      statement(dot, '"0000:18:00.0"'),
      /label="0000:18:00.0\\n1da3:1020 {2}class 0x120000\\nGaudi2 \\"HL-225\\"\\nhabanalabs · group 6"/,
    );
    assert.match(statement(dot, '"0000:40:00.0"'), /\?\?\?\?:\?\?\?\? {2}class 0x010802/);
  });

  it("puts the link on the edge below a port, marks degraded links, and none inside a switch", () => {
    const dot = writeDot(SWITCH);
    assert.equal(
      statement(dot, '"pci0000:15" -> "0000:15:01.0"').trim(),
      '"pci0000:15" -> "0000:15:01.0";',
    );
    assert.match(statement(dot, '"0000:15:01.0" -> "0000:16:00.0"'), /\[label="32GT\/s x16"\];$/);
    assert.equal(
      statement(dot, '"0000:16:00.0" -> "0000:17:00.0"').trim(),
      '"0000:16:00.0" -> "0000:17:00.0";',
    );
    // a Gen4 device under a Gen5 port runs at its own maximum: not degraded
    assert.match(statement(dot, '"0000:17:00.0" -> "0000:18:00.0"'), /\[label="16GT\/s x16"\];$/);
    assert.match(
      statement(dot, '"0000:17:01.0" -> "0000:19:00.0"'),
      /\[label="8GT\/s x4 \(max 32GT\/s x16\)", color="#cc0000", fontcolor="#cc0000"\];$/,
    );
    // without a link of its own, the function shows the port's view of the link
    assert.match(
      statement(dot, '"0000:17:01.0" -> "0000:19:00.1"'),
      /\[label="8GT\/s x4 \(max 32GT\/s x16\)"/,
    );
    assert.match(statement(dot, '"0000:19:00.0" -> "0000:19:00.1"'), /style=dashed, label="VF"/);
  });

  it("is deterministic and independent of the order functions are listed in", () => {
    const dot = writeDot(SWITCH);
    assert.equal(writeDot(SWITCH), dot);
    fc.assert(
      fc.property(
        fc.shuffledSubarray([...SWITCH.functions], { minLength: SWITCH.functions.length }),
        (fs) => {
          assert.equal(writeDot({ ...SWITCH, functions: fs }), dot);
        },
      ),
      { numRuns: 30 },
    );
  });

  it("escapes quotes, backslashes and line breaks in every string it copies", () => {
    const str = fc.string({ unit: "binary", maxLength: 10 });
    const DOT_STRING = /"(?:[^"\\\n]|\\.)*"/g;
    fc.assert(
      fc.property(str, str, str, (name, dev, drv) => {
        const f: FunctionDescription = {
          bdf: "0000:00:01.0",
          parent: null,
          classCode: 0x020000,
          deviceName: dev,
          driver: drv,
        };
        const m: MachineDescription = { schemaVersion: 1, name, hostBridges: [], functions: [f] };
        for (const line of writeDot(m).split("\n")) {
          // once every well-formed string is removed, no quote or line break may remain
          assert.doesNotMatch(line.replace(DOT_STRING, "S"), /["\r]/, line);
        }
      }),
    );
  });

  it("refuses a description that is not a hierarchy", () => {
    const bad: MachineDescription = {
      schemaVersion: 1,
      hostBridges: [],
      functions: [{ bdf: "0000:00:01.0", parent: "0000:00:09.0", classCode: 0 }],
    };
    assert.throws(() => writeDot(bad), TopologyError);
  });
});
