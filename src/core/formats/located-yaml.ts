/**
 * @module located-yaml
 * YAML/JSON documents checked by a zod schema, with every problem located: the line and the field
 * path (`line 12, functions[3].bars[0].size`), a "did you mean" for unknown keys, and one
 * InputError naming the file, the place and the reason. Shared by our machine and scenario files.
 */

import {
  type Document,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  type Node,
  parseDocument,
  visit,
} from "yaml";
import { InputError } from "../errors.ts";

export type Path = readonly (string | number)[];

export function formatPath(path: Path): string {
  let s = "";
  for (const p of path) s += typeof p === "number" ? `[${p}]` : s === "" ? p : `.${p}`;
  return s;
}

/** The YAML node at a path, or the deepest one found; `key` marks a map key's own node. */
export function nodeAt(doc: Document, path: Path, key?: string): Node | null {
  let node: unknown = doc.contents;
  let found: Node | null = (doc.contents as Node | null) ?? null;
  const steps: (string | number)[] = [...path];
  if (key !== undefined) steps.push(key);
  for (let i = 0; i < steps.length; i++) {
    const step = steps[i]!;
    if (isAlias(node)) node = node.resolve(doc);
    let next: unknown;
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(step));
      if (!pair) break;
      next = key !== undefined && i === steps.length - 1 ? pair.key : pair.value;
    } else if (isSeq(node) && typeof step === "number") {
      next = node.items[step];
    } else break;
    if (next === null || next === undefined) break;
    node = next;
    found = next as Node;
  }
  return found;
}

export interface Located {
  readonly line: number | undefined;
  readonly col: number;
  readonly path: string;
  readonly reason: string;
}

export type Locate = (path: Path, reason: string, key?: string) => Located;

export function locator(doc: Document, lc: LineCounter): Locate {
  return (path, reason, key) => {
    const node = nodeAt(doc, path, key);
    const pos = node?.range?.[0];
    const lp = pos === undefined ? undefined : lc.linePos(pos);
    const full = key === undefined ? path : [...path, key];
    return { line: lp?.line, col: lp?.col ?? 0, path: formatPath(full), reason };
  };
}

export const placeOf = (l: Located): string | undefined => {
  const parts = [l.line !== undefined ? `line ${l.line}` : "", l.path].filter((p) => p !== "");
  return parts.length > 0 ? parts.join(", ") : undefined;
};

export interface ZIssue {
  readonly code: string;
  readonly path: readonly PropertyKey[];
  readonly message: string;
  readonly keys?: readonly string[];
  readonly errors?: readonly (readonly ZIssue[])[];
  readonly input?: unknown;
}

/** Flattens zod issues into located messages; a union reports the branch that matched the type. */
export function collectIssues(
  issues: readonly ZIssue[],
  prefix: Path,
  loc: Locate,
  out: Located[],
  suggest: (key: string, path: Path) => string = () => "",
) {
  for (const iss of issues) {
    const path: Path = [...prefix, ...iss.path.filter((p) => typeof p !== "symbol")] as Path;
    if (iss.code === "unrecognized_keys") {
      for (const k of iss.keys ?? [])
        out.push(loc(path, `unknown field "${k}"${suggest(k, path)}`, k));
    } else if (iss.code === "invalid_union" && iss.errors) {
      const branch = iss.errors.find(
        (b) => !b.some((e) => e.code === "invalid_type" && e.path.length === 0),
      );
      if (branch) collectIssues(branch, path, loc, out, suggest);
      else out.push(loc(path, iss.message));
    } else {
      out.push(loc(path, iss.message));
    }
  }
}

export function fail(file: string, located: readonly Located[]): never {
  const sorted = [...located].sort(
    (a, b) =>
      (a.line ?? Number.MAX_SAFE_INTEGER) - (b.line ?? Number.MAX_SAFE_INTEGER) || a.col - b.col,
  );
  const first = sorted[0]!;
  const more = sorted.slice(1, 4).map((l) => `${placeOf(l) ?? "?"}: ${l.reason}`);
  const rest = sorted.length - 1 - more.length;
  const tail =
    more.length > 0
      ? `; also ${more.join("; ")}${rest > 0 ? `; and ${rest} more problem${rest > 1 ? "s" : ""}` : ""}`
      : "";
  const place = placeOf(first);
  throw new InputError({ file, ...(place !== undefined ? { place } : {}) }, first.reason + tail);
}

/** C0 controls other than tab, LF and CR cannot appear raw in YAML or JSON text: binary data. */
export function firstControlChar(s: string): number {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) return i;
  }
  return -1;
}

/**
 * Reads YAML or JSON text into plain values, refusing binary data, oversize text, bad syntax and
 * documents nested too deeply; an unquoted `0x...` stays a string so large addresses stay exact.
 * Returns the values and a locator for the problems the caller finds in them.
 */
export function readLocatedYaml(
  file: string,
  text: string,
  what: string,
  maxText = 64 * 1024 * 1024,
): { js: unknown; loc: Locate } {
  const src = text.startsWith("\uFEFF") ? text.slice(1) : text;
  if (src.length > maxText)
    throw new InputError({ file }, `${what} larger than ${maxText >> 20} MiB`, "input-too-large");
  const at = firstControlChar(src);
  if (at >= 0) {
    const line = src.slice(0, at).split("\n").length;
    throw new InputError(
      { file, place: `line ${line}` },
      `not a text file: control character 0x${src.charCodeAt(at).toString(16).padStart(2, "0")}; expected YAML or JSON`,
    );
  }
  const lc = new LineCounter();
  let doc: Document;
  let js: unknown;
  try {
    doc = parseDocument(src, {
      lineCounter: lc,
      merge: true,
      // yaml reports warnings through process.emitWarning/console: core code stays silent
      logLevel: "error",
      prettyErrors: false,
      uniqueKeys: true,
    }) as Document;
    const err = doc.errors[0];
    if (err) {
      const lp = lc.linePos(err.pos[0]);
      throw new InputError(
        { file, place: `line ${lp.line}, column ${lp.col}` },
        /call stack/i.test(err.message)
          ? "the document nests too deeply"
          : `not valid YAML/JSON: ${err.message}`,
      );
    }
    // an unquoted 0x... is a YAML int: keep the hex text so large addresses stay exact
    visit(doc, {
      Scalar(_key, node) {
        if (node.format === "HEX" && typeof node.value === "number" && node.source !== undefined)
          node.value = node.source;
      },
    });
    js = doc.toJS();
  } catch (e) {
    if (e instanceof InputError) throw e;
    // yaml throws plain Errors for content it cannot turn into values (bad merge sources, alias
    // bombs, nesting deeper than the stack): all are problems of the input
    const why = e instanceof Error ? e.message : String(e);
    throw new InputError(
      { file },
      /call stack/i.test(why)
        ? "the document nests too deeply"
        : `cannot read the document: ${why}`,
    );
  }
  return { js, loc: locator(doc, lc) };
}
