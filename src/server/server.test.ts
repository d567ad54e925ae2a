import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseMachineDocument } from "../core/formats/machine-doc.ts";
import { loadInput } from "../node/load-input.ts";
import { machinePayload } from "./examples.ts";
import { DEFAULT_UI_DIR, HOST, type RunningServer, startServer } from "./server.ts";

const REPO = new URL("../../", import.meta.url).pathname;

/** A raw GET: the path goes on the wire exactly as given (no URL normalisation). */
function get(
  port: number,
  path: string,
  host = `${HOST}:${port}`,
): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: HOST, port, path, method: "GET", headers: { host } }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        body += c;
      });
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          body,
          type: String(res.headers["content-type"] ?? ""),
        }),
      );
    });
    req.on("error", reject);
    req.end();
  });
}

describe("peerbuf serve: the HTTP server", () => {
  let dir: string;
  let outside: string;
  let s: RunningServer;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "peerbuf-serve-"));
    const ui = join(dir, "ui");
    mkdirSync(join(ui, "assets"), { recursive: true });
    writeFileSync(join(ui, "index.html"), "<!doctype html><title>peerbuf</title>");
    writeFileSync(join(ui, "assets", "app.js"), "export {};");
    outside = join(dir, "secret.txt");
    writeFileSync(outside, "secret");
    symlinkSync(outside, join(ui, "assets", "link.js"));
    symlinkSync(dir, join(ui, "up"));
    const desc = await loadInput([join(REPO, "examples/machines/workstation.yaml")]);
    s = await startServer({ uiDir: ui, port: 0, input: machinePayload("ws.yaml", desc) });
  });

  after(async () => {
    await s?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("listens on the loopback address only", () => {
    const a = s.server.address() as AddressInfo;
    assert.equal(a.address, "127.0.0.1");
    assert.equal(s.url, `http://127.0.0.1:${a.port}/`);
  });

  test("serves the page and its assets", async () => {
    const r = await get(s.port, "/");
    assert.equal(r.status, 200);
    assert.match(r.type, /text\/html/);
    assert.match(r.body, /peerbuf/);
    assert.equal((await get(s.port, "/assets/app.js")).status, 200);
    assert.equal((await get(s.port, "/index.html?x=1")).status, 200);
    assert.equal((await get(s.port, "/nope.js")).status, 404);
  });

  test("refuses paths that leave what it serves", async () => {
    for (const p of [
      "/../secret.txt",
      "/assets/../../secret.txt",
      "/%2e%2e/secret.txt",
      "/%2E%2E%2Fsecret.txt",
      "/assets/..%2f..%2fsecret.txt",
      "/..%5csecret.txt",
      "/assets/%00.js",
      "/C:%5cwindows",
      `/${encodeURIComponent(outside)}`,
      "/api/examples/machines/..%2f..%2fpackage.json",
      "/api/examples/machines/%2e%2e",
      "/api/examples/scenarios/../../package.json",
    ]) {
      const r = await get(s.port, p);
      assert.ok(r.status === 403 || r.status === 404 || r.status === 400, `${p}: ${r.status}`);
      assert.doesNotMatch(r.body, /secret|"name": "peerbuf"/, p);
    }
    // links inside the served tree that lead out of it
    assert.equal((await get(s.port, "/assets/link.js")).status, 403);
    assert.equal((await get(s.port, "/up/secret.txt")).status, 403);
    // double encoding is a literal name, not a way out
    assert.equal((await get(s.port, "/%252e%252e/secret.txt")).status, 404);
  });

  test("answers only to its own host name (no DNS rebinding)", async () => {
    assert.equal((await get(s.port, "/api/examples", "evil.example:80")).status, 403);
    assert.equal((await get(s.port, "/", `evil.example:${s.port}`)).status, 403);
    assert.equal((await get(s.port, "/api/input", `localhost:${s.port}`)).status, 200);
  });

  test("only GET and HEAD", async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(
        { host: HOST, port: s.port, path: "/api/input", method: "POST" },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on("error", reject);
      req.end("{}");
    });
    assert.equal(status, 405);
  });

  test("the JSON API: input, examples, names", async () => {
    const input = JSON.parse((await get(s.port, "/api/input")).body);
    assert.equal(input.input.label, "ws.yaml");
    const desc = parseMachineDocument("x", input.input.document);
    assert.ok(desc.functions.length > 0);
    const list = JSON.parse((await get(s.port, "/api/examples")).body);
    assert.ok(list.machines.some((m: { file: string }) => m.file === "flagship.yaml"));
    assert.ok(list.scenarios.some((m: { file: string }) => m.file === "flagship.yaml"));
    const m = JSON.parse((await get(s.port, "/api/examples/machines/flagship.yaml")).body);
    assert.equal(m.label, "examples/machines/flagship.yaml");
    const sc = JSON.parse((await get(s.port, "/api/examples/scenarios/flagship.yaml")).body);
    assert.deepEqual(Object.keys(sc.machines).sort(), ["peer", "server"]);
    assert.equal((await get(s.port, "/api/examples/machines/none.yaml")).status, 404);
    assert.equal((await get(s.port, "/api/nothing")).status, 404);
    const names = JSON.parse((await get(s.port, "/api/names?ids=zzzz,8086:0953")).body);
    assert.equal(typeof names.vendors, "object");
  });
});

describe("peerbuf serve: the command", () => {
  const cli = (args: string[]) => {
    const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: "1" };
    delete env["NODE_TEST_CONTEXT"];
    return spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", "serve", ...args], {
      cwd: REPO,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
  };

  test("prints its loopback URL, serves the input, and stops on SIGTERM", {
    skip: existsSync(join(DEFAULT_UI_DIR, "index.html")) ? false : "ui-dist/ not built",
  }, async () => {
    const p = cli(["--input", join(REPO, "examples/machines/workstation.yaml"), "--port", "0"]);
    const url = await new Promise<string>((resolve, reject) => {
      let out = "";
      p.stdout.on("data", (c: Buffer) => {
        out += c.toString();
        const m = /^(http:\/\/127\.0\.0\.1:\d+\/)$/m.exec(out);
        if (m) resolve(m[1]!);
      });
      p.on("close", (code) => reject(new Error(`serve exited with ${code} before its URL`)));
    });
    const r = await fetch(`${url}api/input`);
    assert.equal(r.status, 200);
    const body = (await r.json()) as { input: { label: string } };
    assert.match(body.input.label, /workstation\.yaml$/);
    assert.equal((await fetch(url)).status, 200);
    const closed = new Promise<number | null>((res) => p.on("close", res));
    p.kill("SIGTERM");
    assert.equal(await closed, 0);
  });

  test("a bad --input is the usual input error, exit 3", async () => {
    const p = cli(["--input", join(REPO, "no-such-capture.xml"), "--port", "0"]);
    let err = "";
    p.stderr.on("data", (c: Buffer) => {
      err += c.toString();
    });
    const code = await new Promise<number | null>((r) => p.on("close", r));
    assert.equal(code, 3);
    assert.match(err, /no-such-capture\.xml: cannot read/);
  });

  test("a bad --port is a usage error, exit 2", async () => {
    const p = cli(["--port", "99999"]);
    const code = await new Promise<number | null>((r) => p.on("close", r));
    assert.equal(code, 2);
  });
});
