/**
 * @module files
 * Resolving a request path to a file inside one served directory, refusing everything else:
 * `..` and `.` segments, absolute or drive paths, backslashes, NUL, encoded forms of those
 * (the path is decoded once, then checked), and symbolic links that lead out of the directory.
 */

import { realpathSync, statSync } from "node:fs";
import { isAbsolute, join, relative, sep } from "node:path";

export type Resolved =
  | { readonly ok: true; readonly path: string; readonly size: number }
  | { readonly ok: false; readonly status: 400 | 403 | 404; readonly reason: string };

/** True when `child` is `root` or lies below it (both absolute, normalised). */
export function isInside(root: string, child: string): boolean {
  const r = relative(root, child);
  return r === "" || (!r.startsWith(`..${sep}`) && r !== ".." && !isAbsolute(r));
}

/**
 * Splits a URL path (still percent-encoded, without the query) into safe segments, or says why
 * not. `%2f` inside a segment is refused rather than taken as a separator.
 */
export function safeSegments(rawPath: string): string[] | { status: 400 | 403; reason: string } {
  if (!rawPath.startsWith("/")) return { status: 400, reason: "path must start with /" };
  const out: string[] = [];
  for (const raw of rawPath.split("/")) {
    if (raw === "") continue;
    let seg: string;
    try {
      seg = decodeURIComponent(raw);
    } catch {
      return { status: 400, reason: "malformed percent-encoding" };
    }
    if (seg === "." || seg === "..") return { status: 403, reason: "path leaves the served tree" };
    if (/[/\\\0]/.test(seg) || /^[A-Za-z]:/.test(seg))
      return { status: 403, reason: "path leaves the served tree" };
    out.push(seg);
  }
  return out;
}

/** A regular file at `segments` below `root`, following links only while they stay inside. */
export function resolveInside(root: string, segments: readonly string[]): Resolved {
  let realRoot: string;
  try {
    realRoot = realpathSync(root);
  } catch {
    return { ok: false, status: 404, reason: "nothing is served here" };
  }
  const full = join(realRoot, ...segments);
  if (!isInside(realRoot, full))
    return { ok: false, status: 403, reason: "path leaves the served tree" };
  let real: string;
  try {
    real = realpathSync(full);
  } catch {
    return { ok: false, status: 404, reason: "not found" };
  }
  if (!isInside(realRoot, real))
    return { ok: false, status: 403, reason: "a link leads out of the served tree" };
  try {
    const st = statSync(real);
    if (!st.isFile()) return { ok: false, status: 404, reason: "not found" };
    return { ok: true, path: real, size: st.size };
  } catch {
    return { ok: false, status: 404, reason: "not found" };
  }
}
