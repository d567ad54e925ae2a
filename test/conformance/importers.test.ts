/**
 * One importer contract (test/support/importer-contract.ts) run against every importer of the
 * model, with every exporter that moves buffers, under every configuration; and once against a
 * broken importer to show the contract catches what it must.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CONFIGS } from "../support/conformance-bed.ts";
import { MOVABLE } from "../support/exporters.ts";
import { checkImporter } from "../support/importer-contract.ts";
import { BROKEN_IMPORTER, IMPORTERS } from "../support/importers.ts";

const text = (vs: readonly { rule: string; detail: string }[]): string =>
  vs.map((x) => `  [${x.rule}] ${x.detail}`).join("\n");

for (const f of IMPORTERS)
  describe(`importer contract: ${f.name}`, () => {
    for (const e of MOVABLE)
      for (const cfg of CONFIGS)
        it(`${e.name}; ${cfg.name}`, () => {
          const vs = checkImporter(f, e, cfg);
          assert.equal(
            vs.length,
            0,
            `${f.name} with ${e.name} under "${cfg.name}" breaks the contract:\n${text(vs)}`,
          );
        });
  });

describe("importer contract: catches a broken importer", () => {
  it("an importer that ignores move_notify keeps writing to the old pages", () => {
    const cfg = CONFIGS.find((c) => c.moveNotify && c.iommu === "off");
    assert.ok(cfg, "a configuration with CONFIG_DMABUF_MOVE_NOTIFY=y and no IOMMU");
    const vs = checkImporter(BROKEN_IMPORTER, MOVABLE[0]!, cfg);
    const rules = new Set(vs.map((x) => x.rule));
    for (const r of ["move", "dma"])
      assert.ok(
        rules.has(r as never),
        `the contract should report "${r}" for ${BROKEN_IMPORTER.name}; it reported:\n${text(vs)}`,
      );
  });
});
