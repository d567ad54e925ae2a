/**
 * The dma-buf exporter contract, checked against one exporter under one configuration. It returns
 * the violations (a list, empty when the exporter keeps the contract) instead of asserting, so a
 * test can also run it against a deliberately broken exporter and see it fail.
 *
 * The contract (drivers/dma-buf/dma-buf.c and include/linux/dma-buf.h, spec dma-buf.md §1–§3):
 * 1. promise: a static and a dynamic peer-to-peer capable importer each get either a table whose
 *    DMA lengths sum to the buffer size, or an errno from the set the exporter promises, at the
 *    step it promises (attach or map);
 * 2. dma: a device write through the mapped addresses lands in the backing bytes, or faults
 *    where the exporter promises it does (a mapping the P2PDMA verdict does not allow);
 * 3. unmap: every table map_dma_buf returns comes back to unmap_dma_buf exactly once, and
 *    unmap_dma_buf gets nothing else;
 * 4. move_notify reaches only dynamic importers: a move the exporter makes notifies each dynamic
 *    importer, leaves a static importer's mapping alone (a buffer a static importer has mapped is
 *    pinned and must not move), and every importer's DMA lands afterwards;
 * 5. release runs exactly once, when the last reference goes (not while one is held);
 * 6. detach + put leave the machine's leak report empty.
 */

import { explainPair } from "../../src/core/analysis/p2p.ts";
import {
  type DmaBuf,
  type DmaBufOps,
  dmaBufMoveNotify,
  getDmaBuf,
} from "../../src/core/kernel/dma-buf/dma-buf.ts";
import { dmaBufPut } from "../../src/core/kernel/dma-buf/file.ts";
import type { SgTable } from "../../src/core/kernel/lib/scatterlist.ts";
import type { Import, KernelImporter } from "../../src/core/sim/kernel-importer.ts";
import { ErrnoError } from "../../src/core/sim/sim-machine.ts";
import {
  type Bed,
  type Cfg,
  fnOf,
  importerBdf,
  j,
  PROBE,
  PROBES,
  pattern,
  SIZE,
  same,
} from "./conformance-bed.ts";
import type { Expect, ExportedBuffer, ExporterFactory } from "./exporters.ts";

export type ExporterRule =
  | "setup"
  | "promise"
  | "lengths"
  | "dma"
  | "unmap"
  | "move"
  | "release"
  | "leaks"
  | "threw";

export interface Violation {
  readonly rule: ExporterRule;
  readonly detail: string;
}

export { SIZE } from "./conformance-bed.ts";

/** What the spy saw of the exporter's ops. */
interface Spy {
  /** Tables map_dma_buf returned and unmap_dma_buf has not had back (a table may be handed out twice). */
  readonly given: Map<SgTable, number>;
  readonly foreign: string[];
  releases: number;
}

/** Wraps the buffer's ops table so every map, unmap and release is seen (members stay as present as they were). */
function spyOn(d: DmaBuf): Spy {
  const spy: Spy = { given: new Map(), foreign: [], releases: 0 };
  const o = d.ops;
  const ops: { -readonly [K in keyof DmaBufOps]: DmaBufOps[K] } = { ...o };
  ops.map_dma_buf = (a, dir) => {
    const r = o.map_dma_buf!(a, dir);
    if (r?.ok) spy.given.set(r.value, (spy.given.get(r.value) ?? 0) + 1);
    return r;
  };
  ops.unmap_dma_buf = (a, sgt, dir) => {
    const n = spy.given.get(sgt) ?? 0;
    if (n === 0) spy.foreign.push(`${sgt.name} for ${a.dev.name}`);
    else if (n === 1) spy.given.delete(sgt);
    else spy.given.set(sgt, n - 1);
    o.unmap_dma_buf!(a, sgt, dir);
  };
  ops.release = (x) => {
    spy.releases++;
    o.release!(x);
  };
  (d as { ops: DmaBufOps }).ops = ops;
  return spy;
}

interface Imported {
  readonly kind: "static" | "dynamic";
  readonly imp: KernelImporter;
  readonly h: Import;
  readonly expect: Expect;
}

export function checkExporter(f: ExporterFactory, cfg: Cfg): Violation[] {
  const out: Violation[] = [];
  const v = (rule: ExporterRule, detail: string): void => {
    out.push({ rule, detail });
  };
  let b: Bed;
  try {
    b = f.bed(cfg);
  } catch (e) {
    v("setup", `cannot boot the machine: ${(e as Error).stack ?? e}`);
    return out;
  }
  try {
    run(f, b, v);
  } catch (e) {
    v("threw", (e as Error).stack ?? String(e));
  }
  return out;
}

function run(f: ExporterFactory, b: Bed, v: (rule: ExporterRule, detail: string) => void): void {
  const cfg = b.cfg;
  const buf: ExportedBuffer = f.export(b, SIZE);
  const d = b.proc.dmabuf(buf.fd);
  const spy = spyOn(d);
  getDmaBuf(d); // the suite's own reference: release must wait for it
  const provider = f.provider(b);
  const client = fnOf(b, importerBdf(cfg));
  const verdict = provider ? explainPair(b.sim.sys.pci, provider, client).mapType : null;
  const translating = b.sim.sys.device(client).translation.kind === "dma";
  const promises = f.promise({ cfg, verdict, translating, staticFirst: true });
  let seed = 1;

  const probe = (x: Imported, when: string): void => {
    if (!x.expect.maps) return;
    for (const off of PROBES) {
      const data = pattern(PROBE, seed++);
      const fault = x.imp.write(x.h, off, data);
      const landed = fault === null && same(buf.read(off, PROBE), data);
      if (x.expect.dma === "lands" && !landed)
        v(
          "dma",
          `${x.kind} importer ${when}: write at ${off} ${fault ? `faulted: ${fault}` : "did not reach the buffer's bytes"}`,
        );
      if (x.expect.dma === "faults" && fault === null)
        v(
          "dma",
          `${x.kind} importer ${when}: write at ${off} did not fault, though the exporter promises it does (verdict ${verdict})${landed ? "" : ", and missed the buffer"}`,
        );
    }
  };

  // 1–2: a static and a dynamic importer attach and map
  const imported: Imported[] = [];
  for (const kind of ["static", "dynamic"] as const) {
    const expect = promises[kind];
    const imp = b.sim.importer(client.name, { dynamic: kind === "dynamic" });
    let h: Import | null = null;
    try {
      h = imp.attach(b.proc, buf.fd);
      const segs = imp.map(h);
      const total = segs.reduce((t, s) => t + s.len, 0n);
      if (total !== SIZE)
        v(
          "lengths",
          `${kind} importer: DMA lengths sum to ${total}, the buffer is ${SIZE} bytes (${j(segs)})`,
        );
    } catch (e) {
      if (!(e instanceof ErrnoError)) throw e;
      const stage = h ? "map" : "attach";
      if (h) imp.detach(h);
      if (expect.maps)
        v(
          "promise",
          `${kind} importer: refused with ${e.errno} at ${stage} (${e.reason}); the exporter promises a mapping`,
        );
      else if (!expect.errnos.includes(e.errno) || expect.at !== stage)
        v(
          "promise",
          `${kind} importer: refused with ${e.errno} at ${stage}; the exporter promises ${expect.errnos.join("/")} at ${expect.at}`,
        );
      continue;
    }
    if (!expect.maps)
      v(
        "promise",
        `${kind} importer: mapped; the exporter promises ${expect.errnos.join("/")} at ${expect.at}`,
      );
    const x: Imported = {
      kind,
      imp,
      h: h!,
      expect: expect.maps ? expect : { maps: true, dma: "lands" },
    };
    imported.push(x);
    probe(x, "after map");
  }

  // 4: move_notify reaches only dynamic importers
  const dyn = imported.find((x) => x.kind === "dynamic");
  const stat = imported.find((x) => x.kind === "static");
  const staticTable = stat?.h.sgt ?? null;
  if (buf.move) {
    const before = dyn?.h.invalidations ?? 0;
    const moved = buf.move();
    if (moved === "moved" && dyn && dyn.h.invalidations === before)
      v("move", "the exporter moved the buffer without move_notify to the dynamic importer");
    if (moved === "moved" && stat)
      v("move", "the exporter moved a buffer a static importer has mapped (it must stay pinned)");
    if (moved === "stayed" && dyn && dyn.h.invalidations !== before)
      v("move", "move_notify reached the dynamic importer, yet the buffer did not move");
  }
  // the notification the exporter sends, through the core, with the reservation held
  const before = dyn?.h.invalidations ?? 0;
  d.resv.lock("conformance: move_notify");
  dmaBufMoveNotify(d);
  d.resv.unlock("conformance: move_notify");
  if (dyn && dyn.h.invalidations !== before + 1)
    v(
      "move",
      `dma_buf_move_notify reached the dynamic importer ${dyn.h.invalidations - before} time(s), not once`,
    );
  if (stat && stat.h.sgt !== staticTable)
    v("move", "the static importer's mapping changed under move_notify");
  for (const x of imported) probe(x, "after move_notify");

  // 3, 5, 6: detach, the fd, the exporter's own handles; release only with the last reference
  for (const x of imported) x.imp.detach(x.h);
  if (spy.given.size > 0)
    v(
      "unmap",
      `${[...spy.given.values()].reduce((t, n) => t + n, 0)} table(s) map_dma_buf gave were never given back to unmap_dma_buf`,
    );
  if (spy.foreign.length > 0)
    v("unmap", `unmap_dma_buf got tables map_dma_buf never gave: ${spy.foreign.join(", ")}`);
  b.proc.close(buf.fd);
  buf.close();
  if (spy.releases !== 0 || d.state !== "live")
    v(
      "release",
      `release ran ${spy.releases} time(s) while a reference was still held (${d.state})`,
    );
  dmaBufPut(d);
  if (spy.releases !== 1 || d.releaseCount !== 1 || d.state !== "released")
    v(
      "release",
      `release ran ${spy.releases} time(s) after the last reference went (buffer ${d.state})`,
    );
  const leaks = b.leaks();
  if (leaks.length > 0)
    v("leaks", leaks.map((l) => `${l.kind} (${l.owner}): ${l.detail}`).join("; "));
}
