/**
 * One exporter contract (test/support/exporter-contract.ts) run against every exporter of the
 * model under every configuration of test/support/conformance-bed.ts, and once against a broken
 * exporter to show the contract catches what it must.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CONFIGS } from "../support/conformance-bed.ts";
import { checkExporter } from "../support/exporter-contract.ts";
import { BROKEN_EXPORTER, EXPORTERS } from "../support/exporters.ts";

const text = (vs: readonly { rule: string; detail: string }[]): string =>
  vs.map((x) => `  [${x.rule}] ${x.detail}`).join("\n");

for (const f of EXPORTERS)
  describe(`exporter contract: ${f.name}`, () => {
    for (const cfg of CONFIGS) {
      const skip = f.skip(cfg);
      it(cfg.name, { skip: skip ?? false }, () => {
        const vs = checkExporter(f, cfg);
        assert.equal(
          vs.length,
          0,
          `${f.name} under "${cfg.name}" breaks the contract:\n${text(vs)}`,
        );
      });
    }
  });

describe("exporter contract: catches a broken exporter", () => {
  for (const cfg of CONFIGS.slice(0, 2))
    it(cfg.name, () => {
      const vs = checkExporter(BROKEN_EXPORTER, cfg);
      const rules = new Set(vs.map((x) => x.rule));
      for (const r of ["lengths", "dma", "leaks"])
        assert.ok(
          rules.has(r as never),
          `the contract should report "${r}" for ${BROKEN_EXPORTER.name}; it reported:\n${text(vs)}`,
        );
    });
});

describe("exporter contract: holds an exporter to its promise", () => {
  it("a system heap that claimed to refuse static importers is caught mapping them", () => {
    const heap = EXPORTERS.find((f) => f.name === "system heap");
    assert.ok(heap, "the system heap is among the exporters");
    const refuse = { maps: false, errnos: ["EPERM"], at: "map" } as const;
    const lying = {
      ...heap,
      promise: () => ({ static: refuse, dynamic: refuse, pinned: refuse }),
    };
    const vs = checkExporter(lying, CONFIGS[0]!);
    assert.deepEqual(
      [...new Set(vs.map((x) => x.rule))],
      ["promise"],
      `only the promise is broken:\n${text(vs)}`,
    );
    assert.equal(vs.length, 2, `one violation per importer:\n${text(vs)}`);
  });
});
