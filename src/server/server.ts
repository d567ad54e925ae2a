/**
 * @module server
 * `peerbuf serve`'s HTTP server: node:http bound to 127.0.0.1 only, a small router for the JSON
 * API, and the built page (ui-dist/) as static files. The server only reads inputs and serves
 * files; the page runs the analysis itself.
 *
 * API (GET only):
 * - `/api/input`: the machine of `--input` (`{ input: MachinePayload | null }`)
 * - `/api/examples`: bundled machines and scenarios
 * - `/api/examples/machines/<file>`: one machine (`MachinePayload`)
 * - `/api/examples/scenarios/<file>`: a scenario's text and its machines
 * - `/api/names?ids=vvvv:dddd,...`: display names from the system's pci.ids
 *
 * Requests whose Host header is not this loopback address are refused (DNS rebinding), and so is
 * every path that would leave the served trees.
 */

import { createReadStream } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { extname } from "node:path";
import { fileURLToPath } from "node:url";
import { PeerbufError } from "../core/errors.ts";
import { systemNames } from "../node/names.ts";
import { type ExampleKind, Examples, type MachinePayload, NotServed } from "./examples.ts";
import { resolveInside, safeSegments } from "./files.ts";

/** The only address the server listens on. */
export const HOST = "127.0.0.1";

/** Where the built page lives: ui-dist/ at the package root (two levels up from src/ or dist/). */
export const DEFAULT_UI_DIR = fileURLToPath(new URL("../../ui-dist/", import.meta.url));
export const DEFAULT_EXAMPLES_DIR = fileURLToPath(new URL("../../examples/", import.meta.url));

export interface ServeOptions {
  /** The machine given with --input, already loaded; null: none. */
  readonly input?: MachinePayload | null;
  /** 0: any free port. */
  readonly port?: number;
  readonly uiDir?: string;
  readonly examplesDir?: string;
}

export interface RunningServer {
  readonly url: string;
  readonly port: number;
  readonly server: Server;
  close(): Promise<void>;
}

const TYPES: Readonly<Record<string, string>> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".map": "application/json; charset=utf-8",
  ".txt": "text/plain; charset=utf-8",
  ".wasm": "application/wasm",
};

const SECURITY_HEADERS = {
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "Cross-Origin-Resource-Policy": "same-origin",
  "X-Frame-Options": "DENY",
  "Content-Security-Policy":
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
} as const;

function send(res: ServerResponse, status: number, type: string, body: string | Buffer): void {
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    "Content-Type": type,
    "Content-Length": Buffer.byteLength(body),
    "Cache-Control": "no-store",
  });
  res.end(res.req.method === "HEAD" ? undefined : body);
}

function sendJson(res: ServerResponse, status: number, v: unknown): void {
  send(res, status, TYPES[".json"]!, JSON.stringify(v));
}

function sendError(res: ServerResponse, status: number, message: string): void {
  sendJson(res, status, { error: { status, message } });
}

type Handler = (res: ServerResponse, params: readonly string[], query: URLSearchParams) => unknown;

/** `[pattern, handler]`: a pattern is segments, `*` matching one segment (passed as a param). */
type Route = readonly [readonly string[], Handler];

function match(pattern: readonly string[], segs: readonly string[]): string[] | null {
  if (pattern.length !== segs.length) return null;
  const params: string[] = [];
  for (let i = 0; i < pattern.length; i++) {
    if (pattern[i] === "*") params.push(segs[i]!);
    else if (pattern[i] !== segs[i]) return null;
  }
  return params;
}

function allowedHost(host: string | undefined, port: number): boolean {
  if (host === undefined) return false;
  return host === `${HOST}:${port}` || host === `localhost:${port}`;
}

export async function startServer(opts: ServeOptions = {}): Promise<RunningServer> {
  const uiDir = opts.uiDir ?? DEFAULT_UI_DIR;
  const examples = new Examples(opts.examplesDir ?? DEFAULT_EXAMPLES_DIR);
  const input = opts.input ?? null;
  const example = (kind: ExampleKind) => async (res: ServerResponse, p: readonly string[]) => {
    const file = p[0]!;
    sendJson(
      res,
      200,
      kind === "machines" ? await examples.machine(file) : await examples.scenario(file),
    );
  };
  const routes: readonly Route[] = [
    [["api", "input"], (res) => sendJson(res, 200, { input })],
    [["api", "examples"], (res) => sendJson(res, 200, examples.list())],
    [["api", "examples", "machines", "*"], example("machines")],
    [["api", "examples", "scenarios", "*"], example("scenarios")],
    [
      ["api", "names"],
      (res, _p, q) => {
        const ids = (q.get("ids") ?? "").split(",").filter(Boolean).slice(0, 4096);
        const n = systemNames();
        const vendors: Record<string, string> = {};
        const devices: Record<string, string> = {};
        for (const id of ids) {
          const m = /^([0-9a-f]{4}):([0-9a-f]{4})$/.exec(id);
          if (!m) continue;
          const v = Number.parseInt(m[1]!, 16);
          const vn = n.vendor(v);
          if (vn) vendors[m[1]!] = vn;
          const dn = n.device(v, Number.parseInt(m[2]!, 16));
          if (dn) devices[id] = dn;
        }
        sendJson(res, 200, { vendors, devices });
      },
    ],
  ];

  let port = 0;
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (!allowedHost(req.headers.host, port)) {
      sendError(res, 403, "this server answers only to its loopback address");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("Allow", "GET, HEAD");
      sendError(res, 405, "only GET and HEAD");
      return;
    }
    const raw = req.url ?? "/";
    const q = raw.indexOf("?");
    const path = q < 0 ? raw : raw.slice(0, q);
    const query = new URLSearchParams(q < 0 ? "" : raw.slice(q + 1));
    const segs = safeSegments(path);
    if (!Array.isArray(segs)) {
      sendError(res, segs.status, segs.reason);
      return;
    }
    if (segs[0] === "api") {
      for (const [pattern, h] of routes) {
        const params = match(pattern, segs);
        if (params) {
          await h(res, params, query);
          return;
        }
      }
      sendError(res, 404, `no API ${path}`);
      return;
    }
    const r = resolveInside(uiDir, segs.length === 0 ? ["index.html"] : segs);
    if (!r.ok) {
      sendError(
        res,
        r.status,
        segs.length === 0 ? "the page is not built: run `npm run build:ui`" : r.reason,
      );
      return;
    }
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      "Content-Type": TYPES[extname(r.path)] ?? "application/octet-stream",
      "Content-Length": r.size,
      // hashed asset names may be cached; the page itself may not
      "Cache-Control": segs[0] === "assets" ? "max-age=3600" : "no-store",
    });
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    createReadStream(r.path)
      .on("error", () => res.destroy())
      .pipe(res);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (e instanceof NotServed) sendError(res, e.status, e.message);
      else if (e instanceof PeerbufError)
        sendJson(res, 422, { error: { status: 422, ...e.toJSON() } });
      else sendError(res, 500, `internal error: ${(e as Error)?.message ?? String(e)}`);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, HOST, () => {
      server.off("error", reject);
      resolve();
    });
  });
  port = (server.address() as AddressInfo).port;
  return {
    url: `http://${HOST}:${port}/`,
    port,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
