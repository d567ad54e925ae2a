import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { topo } from "../../../test/support/topology.ts";
import { buildMachine, type MachineDescription } from "../hw/machine.ts";
import { bootPci } from "../kernel/pci/pci-view.ts";
import { explainPair } from "./p2p.ts";

/** Two endpoints below one switch whose ports have ACS capabilities with unknown control words. */
function unknownAcs(cpu: boolean): MachineDescription {
  const d = topo()
    .hostFn("00:00.0", "8086:1234")
    .rootPort("00:01.0")
    .usp("01:00.0", { parent: "00:01.0" })
    .dsp("02:00.0", { parent: "01:00.0" })
    .dsp("02:01.0", { parent: "01:00.0" })
    .ep("03:00.0", { parent: "02:00.0" })
    .ep("04:00.0", { parent: "02:01.0" })
    .build();
  const functions = d.functions.map((f) =>
    f.bdf.startsWith("02:") ? (({ acs: _a, ...rest }) => rest)(f) : f,
  );
  const { cpu: _c, ...rest } = d;
  return { ...(cpu ? d : rest), functions };
}

describe("explainPair with facts the input lacks", () => {
  it("states the ACS assumption and gives the other answer, without a CPU condition when the CPU is known", () => {
    const m = buildMachine(unknownAcs(true));
    const e = explainPair(bootPci(m), m.byBdf("03:00.0")!, m.byBdf("04:00.0")!);
    assert.equal(e.mapType, "bus-address");
    assert.ok(e.findings.some((f) => f.code === "assumption-unknown-acs"));
    assert.equal(e.alternative?.mapType, "not-supported");
    assert.match(e.alternative!.if, /did redirect/);
    assert.doesNotMatch(e.alternative!.if, /AMD/);
  });

  it("with the CPU unknown too, the other answer is the host-bridge path an AMD Zen would allow", () => {
    const m = buildMachine(unknownAcs(false));
    const e = explainPair(bootPci(m), m.byBdf("03:00.0")!, m.byBdf("04:00.0")!);
    assert.equal(e.alternative?.mapType, "through-host-bridge");
    assert.match(e.alternative!.if, /AMD Zen/);
  });

  it("warns when the path crosses a virtual switch from a topology file", () => {
    const d = topo()
      .usp("ffff:ff:01.0")
      .ep("0000:10:1c.0", { parent: "ffff:ff:01.0" })
      .ep("0000:10:1b.0", { parent: "ffff:ff:01.0" })
      .build();
    const v = buildMachine(d);
    const e = explainPair(bootPci(v), v.byBdf("0000:10:1c.0")!, v.byBdf("0000:10:1b.0")!);
    assert.ok(
      e.findings.some(
        (f) => f.code === "assumption-virtual-switch" && f.path.includes("ffff:ff:01.0"),
      ),
    );
    const plain = buildMachine(
      topo()
        .usp("0000:0f:00.0")
        .ep("0000:10:1c.0", { parent: "0000:0f:00.0" })
        .ep("0000:10:1b.0", { parent: "0000:0f:00.0" })
        .build(),
    );
    const p = explainPair(
      bootPci(plain),
      plain.byBdf("0000:10:1c.0")!,
      plain.byBdf("0000:10:1b.0")!,
    );
    assert.ok(!p.findings.some((f) => f.code === "assumption-virtual-switch"));
  });
});
