/**
 * The dma-buf importer contract, checked against one importer with one (movable) exporter under
 * one configuration. Like the exporter contract it returns violations instead of asserting, so a
 * test can show it failing on a broken importer.
 *
 * The contract (include/linux/dma-buf.h `dma_buf_attach_ops`, spec dma-buf.md §1.4, §2.7, §5):
 * 1. import: it attaches and maps (or registers) the buffer, or is refused exactly as the
 *    exporter promises an importer of its kind (test/support/exporters.ts);
 * 2. dma: its device's writes land in the buffer's bytes (or fault, where the exporter promises
 *    addresses this device cannot use);
 * 3. move: a buffer it pins stays put (the exporter's move is refused); a buffer it does not pin
 *    may move, and then it was told (move_notify) and dropped its mapping;
 * 4. dma after the move, and after a bare move_notify from the exporter: it re-maps (or faults
 *    the MR back in) and its writes land where the buffer is now — or it keeps a pinned mapping
 *    that is still right (with the same fault/land expectation as before);
 * 5. release + close leave the machine's leak report empty.
 */

import { explainPair } from "../../src/core/analysis/p2p.ts";
import { dmaBufMoveNotify } from "../../src/core/kernel/dma-buf/dma-buf.ts";
import { ErrnoError } from "../../src/core/sim/sim-machine.ts";
import { bed, type Cfg, fnOf, PROBE, PROBES, pattern, SIZE, same } from "./conformance-bed.ts";
import type { ExporterFactory } from "./exporters.ts";
import type { Imported, ImporterFactory } from "./importers.ts";

export type ImporterRule = "setup" | "import" | "dma" | "move" | "leaks" | "threw";

export interface ImporterViolation {
  readonly rule: ImporterRule;
  readonly detail: string;
}

export { SIZE } from "./conformance-bed.ts";

export function checkImporter(
  f: ImporterFactory,
  exporter: ExporterFactory,
  cfg: Cfg,
): ImporterViolation[] {
  const out: ImporterViolation[] = [];
  const v = (rule: ImporterRule, detail: string): void => {
    out.push({ rule, detail });
  };
  let b: ReturnType<typeof bed>;
  try {
    b = bed(cfg, f.rdma ? { rdma: f.rdma } : {});
  } catch (e) {
    v("setup", `cannot boot the machine: ${(e as Error).stack ?? e}`);
    return out;
  }
  try {
    const buf = exporter.export(b, SIZE);
    if (!buf.move) throw new Error(`${exporter.name} cannot move buffers: not for this suite`);
    const d = b.proc.dmabuf(buf.fd);
    const provider = exporter.provider(b);
    const client = fnOf(b, f.bdf(cfg));
    const expect = exporter.promise({
      cfg,
      verdict: provider ? explainPair(b.sim.sys.pci, provider, client).mapType : null,
      translating: b.sim.sys.device(client).translation.kind === "dma",
      staticFirst: false,
    })[f.kind];
    const imp = f.open(b);
    let h: Imported | null = null;
    try {
      h = imp.import(buf.fd);
      if (!expect.maps)
        v(
          "import",
          `imported; ${exporter.name} promises ${expect.errnos.join("/")} to an importer of this kind`,
        );
    } catch (e) {
      if (!(e instanceof ErrnoError)) throw e;
      if (expect.maps || !expect.errnos.includes(e.errno))
        v(
          "import",
          `refused with ${e.errno} (${e.reason}); ${exporter.name} promises ${expect.maps ? "a mapping" : expect.errnos.join("/")}`,
        );
    }
    if (h) {
      const lands = !expect.maps || expect.dma === "lands";
      let seed = 1;
      const probe = (when: string): void => {
        for (const off of PROBES) {
          const data = pattern(PROBE, seed++);
          const fault = h!.write(off, data);
          const landed = fault === null && same(buf.read(off, PROBE), data);
          if (lands && fault !== null) v("dma", `${when}: the write at ${off} faulted: ${fault}`);
          else if (lands && !landed)
            v("dma", `${when}: the write at ${off} did not reach the buffer's bytes`);
          else if (!lands && fault === null)
            v(
              "dma",
              `${when}: the write at ${off} did not fault, though ${exporter.name} hands this device addresses it cannot use`,
            );
        }
      };
      probe("after import");

      const pins = f.pins(cfg);
      const moved = buf.move() === "moved";
      if (pins && moved) v("move", "the buffer moved while the importer has it pinned");
      if (!pins && !moved && exporter.movesUnlessPinned)
        v("move", "the buffer could not move, yet the importer does not pin it");
      if (moved && !h.invalidated())
        v(
          "move",
          "the buffer moved and the importer did not drop its mapping (move_notify ignored)",
        );
      if (!moved && h.invalidated())
        v("move", "the importer dropped its mapping though nothing moved");
      probe(moved ? "after the move" : "after the refused move");

      // what an exporter sends when it is about to move: the importer must cope either way
      d.resv.lock("conformance: move_notify");
      dmaBufMoveNotify(d);
      d.resv.unlock("conformance: move_notify");
      probe("after a bare move_notify");
      h.release();
    }
    imp.close();
    b.proc.close(buf.fd);
    buf.close();
    const leaks = b.leaks();
    if (leaks.length > 0)
      v("leaks", leaks.map((l) => `${l.kind} (${l.owner}): ${l.detail}`).join("; "));
  } catch (e) {
    v("threw", (e as Error).stack ?? String(e));
  }
  return out;
}
