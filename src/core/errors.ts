/**
 * @module errors
 * One error base with a stable `code` and a JSON-safe `data` payload. Expected "no" answers
 * (P2P refused, mapping failed) are values, never these; these are for bad input and misuse.
 */

export type ErrorCode =
  | "input-invalid"
  | "input-unsupported"
  | "input-too-large"
  | "input-unsafe"
  | "topology-invalid"
  | "usage"
  | "not-found"
  | "output-failed";

export class PeerbufError extends Error {
  readonly code: ErrorCode;
  readonly data: Readonly<Record<string, unknown>>;

  constructor(code: ErrorCode, message: string, data: Record<string, unknown> = {}) {
    super(message);
    this.name = "PeerbufError";
    this.code = code;
    this.data = data;
  }

  toJSON(): { code: ErrorCode; message: string; data: Readonly<Record<string, unknown>> } {
    return { code: this.code, message: this.message, data: this.data };
  }
}

/** Where in the user's input a problem sits: file, then a line/offset/path inside it. */
export interface InputPlace {
  readonly file: string;
  readonly place?: string;
}

/** Bad input: names the file, the place in it and the reason. */
export class InputError extends PeerbufError {
  readonly file: string;
  readonly place: string | undefined;
  readonly reason: string;

  constructor(
    at: InputPlace,
    reason: string,
    code:
      | "input-invalid"
      | "input-unsupported"
      | "input-too-large"
      | "input-unsafe" = "input-invalid",
  ) {
    super(code, `${at.file}${at.place ? `: ${at.place}` : ""}: ${reason}`, {
      file: at.file,
      ...(at.place ? { place: at.place } : {}),
      reason,
    });
    this.name = "InputError";
    this.file = at.file;
    this.place = at.place;
    this.reason = reason;
  }
}

/** A machine description that parses but cannot be a PCI hierarchy (duplicates, cycles, orphans). */
export class TopologyError extends PeerbufError {
  constructor(reason: string, data: Record<string, unknown> = {}) {
    super("topology-invalid", reason, data);
    this.name = "TopologyError";
  }
}
