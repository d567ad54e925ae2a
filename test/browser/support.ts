/**
 * Browser-test plumbing: build the page when it is older than its sources, find Debian's
 * Chromium (playwright-core downloads nothing), and read a PNG screenshot's pixels.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { inflateSync } from "node:zlib";
import { REPO } from "../support/cli.ts";

export const CHROMIUM = process.env["PEERBUF_CHROMIUM"] ?? "/usr/bin/chromium";
/**
 * Skipped, saying why, where there is no Chromium; never in CI (CI=true), whose .ci/run installs
 * it: there a missing browser fails the tests instead of hiding them.
 */
export const skipBrowser: string | false =
  existsSync(CHROMIUM) || process.env["CI"] === "true"
    ? false
    : `no Chromium at ${CHROMIUM} (apt-get install chromium; .ci/run does)`;

const UI_INDEX = join(REPO, "ui-dist", "index.html");

function newest(path: string): number {
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) return 0;
  if (!st.isDirectory()) return st.mtimeMs;
  let n = st.mtimeMs;
  for (const e of readdirSync(path))
    if (!e.endsWith(".test.ts")) n = Math.max(n, newest(join(path, e)));
  return n;
}

/** Builds ui-dist/ with Vite when a source of the page (ui/, the core, the lock file) is newer. */
export function ensureUiBuilt(): void {
  const built = statSync(UI_INDEX, { throwIfNoEntry: false })?.mtimeMs ?? 0;
  const sources = Math.max(
    newest(join(REPO, "ui")),
    newest(join(REPO, "src", "core")),
    newest(join(REPO, "package-lock.json")),
  );
  if (built >= sources) return;
  const r = spawnSync(
    process.execPath,
    [
      join(REPO, "node_modules", "vite", "bin", "vite.js"),
      "build",
      "--config",
      "ui/vite.config.mjs",
    ],
    { cwd: REPO, encoding: "utf8" },
  );
  if (r.status !== 0) throw new Error(`vite build failed:\n${r.stdout}\n${r.stderr}`);
}

export interface Pixels {
  readonly width: number;
  readonly height: number;
  /** RGBA, 4 bytes a pixel. */
  readonly rgba: Uint8Array;
}

/** Decodes an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium's screenshots are). */
export function decodePng(png: Uint8Array): Pixels {
  const dv = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let off = 8;
  let width = 0;
  let height = 0;
  let channels = 0;
  const idat: Uint8Array[] = [];
  while (off < png.length) {
    const len = dv.getUint32(off);
    const type = String.fromCharCode(...png.subarray(off + 4, off + 8));
    const data = png.subarray(off + 8, off + 8 + len);
    if (type === "IHDR") {
      width = dv.getUint32(off + 8);
      height = dv.getUint32(off + 12);
      const depth = data[8];
      const color = data[9];
      if (depth !== 8 || data[12] !== 0 || (color !== 2 && color !== 6))
        throw new Error(`unsupported PNG: depth ${depth}, colour type ${color}`);
      channels = color === 6 ? 4 : 3;
    } else if (type === "IDAT") idat.push(data);
    else if (type === "IEND") break;
    off += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const cur = new Uint8Array(stride);
  const prev = new Uint8Array(stride);
  const rgba = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)]!;
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? cur[i - channels]! : 0;
      const b = prev[i]!;
      const c = i >= channels ? prev[i - channels]! : 0;
      let v = line[i]!;
      if (f === 1) v += a;
      else if (f === 2) v += b;
      else if (f === 3) v += (a + b) >> 1;
      else if (f === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      cur[i] = v & 0xff;
    }
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 4;
      rgba[o] = cur[x * channels]!;
      rgba[o + 1] = cur[x * channels + 1]!;
      rgba[o + 2] = cur[x * channels + 2]!;
      rgba[o + 3] = channels === 4 ? cur[x * channels + 3]! : 255;
    }
    prev.set(cur);
  }
  return { width, height, rgba };
}

/** How many pixels differ from the most common colour (the background) by more than `tol`. */
export function nonBackground(p: Pixels, tol = 24): { count: number; colours: number } {
  const freq = new Map<number, number>();
  const n = p.width * p.height;
  for (let i = 0; i < n; i++) {
    const o = i * 4;
    const key = (p.rgba[o]! << 16) | (p.rgba[o + 1]! << 8) | p.rgba[o + 2]!;
    freq.set(key, (freq.get(key) ?? 0) + 1);
  }
  const bg = [...freq].sort((a, b) => b[1] - a[1])[0]![0];
  const br = bg >> 16;
  const bgG = (bg >> 8) & 0xff;
  const bb = bg & 0xff;
  let count = 0;
  for (let i = 0; i < n; i++) {
    const o = i * 4;
    const d =
      Math.abs(p.rgba[o]! - br) + Math.abs(p.rgba[o + 1]! - bgG) + Math.abs(p.rgba[o + 2]! - bb);
    if (d > tol) count++;
  }
  return { count, colours: freq.size };
}
