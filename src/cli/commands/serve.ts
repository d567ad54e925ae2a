/**
 * @module serve
 * `peerbuf serve`: loads `--input` (or this machine, when it has PCI sysfs), starts the local
 * server on 127.0.0.1, prints the URL on stdout and serves until SIGINT/SIGTERM.
 */

import { existsSync } from "node:fs";
import { join } from "node:path";
import { InputError, PeerbufError } from "../../core/errors.ts";
import { loadInput } from "../../node/load-input.ts";
import { machinePayload } from "../../server/examples.ts";
import { DEFAULT_UI_DIR, type RunningServer, startServer } from "../../server/server.ts";
import { machineFromInput } from "../context.ts";
import { log, UsageError, writeOut } from "../io.ts";

export const DEFAULT_PORT = 8380;

export interface ServeCliOptions {
  readonly input?: string[];
  readonly port?: string;
}

function parsePort(text: string | undefined): number {
  if (text === undefined) return DEFAULT_PORT;
  if (!/^[0-9]{1,5}$/.test(text) || Number(text) > 65535)
    throw new UsageError(`--port "${text}": expected a port number 0-65535 (0: any free port)`);
  return Number(text);
}

/** Starts serving; resolves with the running server (the caller decides how long it lives). */
export async function startServe(o: ServeCliOptions): Promise<RunningServer> {
  const port = parsePort(o.port);
  let input = null;
  if (o.input?.length) {
    const desc = await loadInput(o.input);
    machineFromInput(desc, o.input);
    input = machinePayload(o.input.join(" "), desc);
  } else {
    try {
      const desc = await loadInput([]);
      machineFromInput(desc);
      input = machinePayload("this machine", desc);
    } catch (e) {
      if (!(e instanceof InputError)) throw e;
      log(`note: ${e.reason}; the page opens the bundled examples`);
    }
  }
  if (!existsSync(join(DEFAULT_UI_DIR, "index.html")))
    throw new PeerbufError(
      "not-found",
      `the web page is not built (${DEFAULT_UI_DIR} has no index.html): run \`npm run build:ui\``,
    );
  try {
    return await startServer({ input, port });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE")
      throw new UsageError(`port ${port} is in use; give another with --port (0: any free port)`);
    if (code === "EACCES") throw new UsageError(`not allowed to listen on port ${port}`);
    throw e;
  }
}

export async function runServe(o: ServeCliOptions): Promise<void> {
  const s = await startServe(o);
  writeOut(s.url);
  log(`peerbuf serve: listening on ${s.url} (loopback only); Ctrl-C stops it`);
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  await s.close();
}
