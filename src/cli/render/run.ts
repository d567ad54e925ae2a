/**
 * @module render/run
 * The kernel-style trace of a scenario run: each step with what it did, the kernel events it
 * caused (export, attach and peer2peer, the P2PDMA verdict, every DMA segment and its kind,
 * bytes moved, faults), whether it did what the scenario expected, and a summary with leaks.
 */

import type { TraceEvent } from "../../core/kernel/trace.ts";
import type { ScenarioResult, StepResult } from "../../core/scenario/run-scenario.ts";
import { sizeText } from "../../core/text.ts";
import type { Colors } from "../io.ts";

const MAX_SEGMENTS = 8;

function eventLines(ev: TraceEvent, c: Colors): string[] {
  const [subsys] = ev.ev.split(":");
  const lines = [`      ${c.dim(`${subsys}:`)} ${ev.msg}`];
  const raw = ev.data?.["segments"];
  const segs = Array.isArray(raw) ? (raw as { dma: bigint; len: bigint; kind: string }[]) : null;
  if (segs) {
    for (const s of segs.slice(0, MAX_SEGMENTS))
      lines.push(
        `          ${c.cyan(`0x${s.dma.toString(16).padStart(12, "0")}`)} +${sizeText(s.len).padEnd(9)} ${s.kind}`,
      );
    if (segs.length > MAX_SEGMENTS)
      lines.push(c.dim(`          ... ${segs.length - MAX_SEGMENTS} more segment(s)`));
  }
  const findings = ev.data?.["findings"] as { code: string; message: string }[] | undefined;
  if (findings && ev.data?.["mapType"] === "not-supported")
    for (const f of findings) lines.push(c.yellow(`          ${f.message}`));
  return lines;
}

function stepLines(s: StepResult, multiMachine: boolean, c: Colors): string[] {
  const who = [multiMachine ? s.machine : null, s.process].filter((x) => x).join("/");
  const head = `[${s.index}] ${who ? `${who} ` : ""}${c.bold(s.do)}`;
  const ok = s.failures.length === 0;
  const res = s.outcome === "ok" ? s.summary : c.red(s.summary);
  const out: string[] = [];
  if (s.note) out.push(c.dim(`    # ${s.note}`));
  out.push(`${ok ? c.green("✓") : c.red("✗")} ${head} ${c.dim("→")} ${res}`);
  for (const ev of s.events) out.push(...eventLines(ev, c));
  for (const f of s.failures)
    out.push(c.red(`      ✗ ${f}${s.line !== undefined ? ` (line ${s.line})` : ""}`));
  return out;
}

export function renderRun(r: ScenarioResult, machines: readonly string[], c: Colors): string {
  const out: string[] = [c.bold(r.name), c.dim(`  ${r.file}: ${machines.join("; ")}`), ""];
  const multi = machines.length > 1;
  for (const s of r.steps) out.push(...stepLines(s, multi, c));
  if (r.shutdown.length > 0) {
    out.push(c.dim("[end] processes killed, in-kernel importers unloaded"));
    for (const ev of r.shutdown) out.push(...eventLines(ev, c));
  }
  out.push("");
  const failed = r.steps.filter((s) => s.failures.length > 0).length;
  const stepsText =
    failed === 0
      ? c.green(`${r.steps.length} steps, all as expected`)
      : c.red(`${r.steps.length} steps, ${failed} not as expected`);
  const leakText =
    r.leaks.length === 0 ? c.green("no leaks") : c.red(`${r.leaks.length} leak(s) after shutdown`);
  out.push(`summary: ${stepsText}; ${sizeText(r.bytesMoved)} moved by DMA; ${leakText}`);
  for (const l of r.leaks)
    out.push(c.red(`  leak: ${l.machine}: ${l.owner}: ${l.kind}: ${l.detail}`));
  return out.join("\n");
}
