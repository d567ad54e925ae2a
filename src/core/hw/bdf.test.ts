import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatBdf, normalizeBdf, parseBdf } from "./bdf.ts";

describe("BDF", () => {
  it("parses full, short and 32-bit-domain forms", () => {
    assert.deepEqual(parseBdf("0000:3b:00.1"), { domain: 0, bus: 0x3b, dev: 0, fn: 1 });
    assert.equal(normalizeBdf("3b:1f.7"), "0000:3b:1f.7");
    assert.equal(normalizeBdf("10000:00:02.0"), "10000:00:02.0");
  });
  it("rejects what is not a BDF", () => {
    for (const bad of ["", "00:20.0", "00:00.8", "0000:00:00", "pci0000:00", "zz:00.0"])
      assert.equal(parseBdf(bad), null, bad);
  });
  it("round-trips", () => {
    assert.equal(formatBdf(parseBdf("abcd:ef:1f.3")!), "abcd:ef:1f.3");
  });
});
