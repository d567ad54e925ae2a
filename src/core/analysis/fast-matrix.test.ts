import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { arbMachine } from "../../../test/support/random-machine.ts";
import { buildMachine } from "../hw/machine.ts";
import { calcMapTypeAndDist } from "../kernel/pci/p2pdma.ts";
import { bootPci } from "../kernel/pci/pci-view.ts";
import { MAP_NAME, VerdictMatrix } from "./fast-matrix.ts";
import { matrixFunctions } from "./matrix.ts";
import { defaultAssumptions } from "./p2p.ts";

describe("VerdictMatrix", () => {
  it("gives exactly the per-pair kernel walk's verdict on random hierarchies", () => {
    fc.assert(
      fc.property(arbMachine, fc.constantFrom("6.1", "mainline"), (desc, profile) => {
        const m = buildMachine(desc);
        const view = bootPci(m, { profile });
        const fns = matrixFunctions(m, "all");
        const assume = defaultAssumptions(view);
        const vm = new VerdictMatrix(view, fns, assume);
        const mt = new Uint8Array(fns.length);
        const dist = new Int32Array(fns.length);
        fns.forEach((p, i) => {
          vm.row(i, mt, dist);
          fns.forEach((c, j) => {
            const r = calcMapTypeAndDist(view, p, c, false, assume);
            assert.equal(MAP_NAME[mt[j]!], r.mapType, `${p.name} -> ${c.name}`);
            assert.equal(
              dist[j],
              r.mapType === "not-supported" ? -1 : r.distance,
              `${p.name} -> ${c.name} distance`,
            );
          });
        });
      }),
      { numRuns: 150 },
    );
  });
});
