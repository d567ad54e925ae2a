import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { bootPci, buildMachine, explainPair, loadInput } from "../src/index.ts";

describe("public API", () => {
  it("loads a capture and explains a pair, as the README example does", async () => {
    const m = buildMachine(
      await loadInput([
        new URL("./fixtures/kernel-oracle/switch_basic/sysfs.tar.gz", import.meta.url).pathname,
      ]),
    );
    const nvme = m.functions.find((f) => f.desc.classCode === 0x010802)!;
    const e = explainPair(bootPci(m), nvme, nvme);
    assert.equal(e.mapType, "bus-address");
    assert.equal(e.distance, 0);
  });
});
