/**
 * Assertion helpers the kernel-model tests share: results, completions and transfers as text for
 * assertion messages, `must` for a step that has to succeed, and the leak checks. The texts are
 * built only for messages: a passing test never reads them.
 */
import assert from "node:assert/strict";
import type { DmaBufCore } from "../../src/core/kernel/dma-buf/dma-buf.ts";
import type { WorkCompletion } from "../../src/core/kernel/drivers/rdma.ts";
import { type Leak, type LeakSource, leakReport } from "../../src/core/kernel/leaks.ts";

/** JSON with bigints in hex, for assertion messages. */
export function j(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? `0x${x.toString(16)}` : x));
}

/** A result for assertion messages: "ok", or the whole failure (errno and reason). */
export const why = (r: { ok: boolean }): string => (r.ok ? "ok" : j(r));

/** The errno of a failed result; undefined for a success. */
export const errnoOf = (r: { ok: boolean; errno?: string }): string | undefined =>
  r.ok ? undefined : r.errno;

/** A work completion for messages: its status and detail. */
export const wcText = (wc: WorkCompletion): string => `${wc.status} ${wc.detail ?? ""}`;

/** A fabric transfer's outcome for messages: "ok", or the fault. */
export const transferText = (w: { ok: true } | { ok: false; fault: unknown }): string =>
  w.ok ? "ok" : j(w.fault);

/** The value of a step that has to succeed; fails the test with `what` and the errno otherwise. */
export function must<T>(r: { ok: true; value: T } | { ok: false }, what: string): T {
  assert.ok(r.ok, `${what}: ${why(r)}`);
  return (r as { value: T }).value;
}

/** The leak check: nothing left in any of `sources` (the message lists what is). */
export function clean(sources: Iterable<LeakSource>, what = "leak check"): void {
  const leaks: Leak[] = leakReport(sources);
  assert.deepEqual(leaks, [], `${what}: ${j(leaks)}`);
}

/** The dma-buf core logged no WARN and no lockdep report. */
export function quietCore(core: DmaBufCore): void {
  assert.deepEqual(core.warnings, [], `no WARN: ${core.warnings.join("; ")}`);
  assert.deepEqual(core.lockdep, [], `no lockdep report: ${j(core.lockdep)}`);
}
