/**
 * @module io
 * Output conventions shared by every command: one JSON document on stdout with `--json`,
 * everything else on stderr, colours decided once, EPIPE handled quietly, errors without traces.
 */

import { createColors } from "picocolors";
import type { Finding } from "../core/analysis/findings.ts";
import { InputError, PeerbufError } from "../core/errors.ts";
import { EXIT } from "./exit-codes.ts";

export const SCHEMA_VERSION = 1;
export const TOOL = { name: "peerbuf", version: "0.1.0" };

export type Colors = ReturnType<typeof createColors>;

/** `--no-color` gives false; otherwise colours follow the TTY, NO_COLOR and FORCE_COLOR. */
export function colors(
  opt: boolean | undefined,
  stream: NodeJS.WriteStream = process.stdout,
): Colors {
  let on = stream.isTTY === true && !process.env["NO_COLOR"];
  if (process.env["FORCE_COLOR"] && process.env["FORCE_COLOR"] !== "0") on = true;
  if (opt === false) on = false;
  return createColors(on);
}

let epipeHooked = false;
/** A reader that went away (`| head`) is not an error. */
export function hookEpipe(): void {
  if (epipeHooked) return;
  epipeHooked = true;
  process.stdout.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") process.exit(0);
    throw e;
  });
}

export function writeOut(text: string): void {
  hookEpipe();
  process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
}

export function log(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

export interface Envelope {
  readonly input: Record<string, unknown>;
  readonly data: unknown;
  readonly findings?: readonly Finding[];
}

/** JSON.stringify with bigint as hex strings and Uint8Array as hex. */
export function toJson(v: unknown): string {
  return JSON.stringify(
    v,
    (_k, x) => {
      if (typeof x === "bigint") return `0x${x.toString(16)}`;
      if (x instanceof Uint8Array) return Buffer.from(x).toString("hex");
      return x;
    },
    2,
  );
}

export function writeJson(e: Envelope): void {
  writeOut(
    toJson({
      schemaVersion: SCHEMA_VERSION,
      tool: TOOL,
      input: e.input,
      data: e.data,
      findings: e.findings ?? [],
    }),
  );
}

export class UsageError extends PeerbufError {
  constructor(message: string, data: Record<string, unknown> = {}) {
    super("usage", message, data);
    this.name = "UsageError";
  }
}

/** Maps any error to a message on stderr (JSON on stdout with --json) and an exit code. */
export function failure(e: unknown, json: boolean): number {
  let code: number = EXIT.INTERNAL;
  let msg: string;
  let data: unknown;
  if (
    e instanceof UsageError ||
    (e instanceof PeerbufError && (e.code === "usage" || e.code === "not-found"))
  ) {
    code = EXIT.USAGE;
    msg = e.message;
    data = e.toJSON();
  } else if (e instanceof PeerbufError && e.code === "output-failed") {
    code = EXIT.OUTPUT;
    msg = e.message;
    data = e.toJSON();
  } else if (e instanceof InputError || e instanceof PeerbufError) {
    code = EXIT.INPUT;
    msg = e.message;
    data = e.toJSON();
  } else {
    msg = `internal error: ${(e as Error)?.stack ?? String(e)}`;
    data = { code: "internal", message: String((e as Error)?.message ?? e) };
  }
  if (json) writeOut(toJson({ schemaVersion: SCHEMA_VERSION, tool: TOOL, error: data }));
  log(`peerbuf: ${msg}`);
  return code;
}
