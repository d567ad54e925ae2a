/**
 * Runs the CLI as a user does: `node --import tsx src/cli/main.ts ...args` from the repository
 * root, with NO_COLOR=1, capturing stdout, stderr and the exit code. At most `PARALLEL` children
 * run at once (tests may start many concurrently); each has a timeout after which it is killed.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";

export const REPO = fileURLToPath(new URL("../../", import.meta.url));
const MAIN = "src/cli/main.ts";

export interface CliResult {
  readonly args: readonly string[];
  /** Exit code; null when the process was killed by a signal. */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
  readonly ms: number;
}

export interface CliOptions {
  /** Added to the environment (NO_COLOR=1 is always set, FORCE_COLOR removed). */
  readonly env?: Readonly<Record<string, string>>;
  /** Kill the child after this long (default 90 s: the test machine may be busy). */
  readonly timeoutMs?: number;
  /** Close our end of the child's stdout after its first chunk, like `| head -1`. */
  readonly closeStdoutEarly?: boolean;
}

const PARALLEL = Math.max(2, availableParallelism());
let running = 0;
const waiting: (() => void)[] = [];

async function slot(): Promise<() => void> {
  if (running >= PARALLEL) await new Promise<void>((r) => waiting.push(r));
  running++;
  return () => {
    running--;
    waiting.shift()?.();
  };
}

/** Runs `peerbuf ...args`. Never rejects: a spawn failure shows as code null and a message. */
export async function peerbuf(args: readonly string[], opts: CliOptions = {}): Promise<CliResult> {
  const release = await slot();
  try {
    return await run(args, opts);
  } finally {
    release();
  }
}

function run(args: readonly string[], opts: CliOptions): Promise<CliResult> {
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: "1", ...opts.env };
  delete env["FORCE_COLOR"];
  // the test runner's own flags must not leak into the child
  delete env["NODE_TEST_CONTEXT"];
  const t0 = performance.now();
  return new Promise((resolve) => {
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, ["--import", "tsx", MAIN, ...args], {
        cwd: REPO,
        env,
        stdio: ["ignore", "pipe", "pipe"],
      });
    } catch (e) {
      resolve({
        args,
        code: null,
        signal: null,
        stdout: "",
        stderr: `spawn failed: ${(e as Error).message}`,
        timedOut: false,
        ms: 0,
      });
      return;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, opts.timeoutMs ?? 90_000);
    child.stdout!.on("data", (b: Buffer) => {
      out.push(b);
      if (opts.closeStdoutEarly) child.stdout!.destroy();
    });
    child.stderr!.on("data", (b: Buffer) => err.push(b));
    child.on("error", (e) => err.push(Buffer.from(`spawn error: ${e.message}`)));
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({
        args,
        code,
        signal,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
        timedOut,
        ms: performance.now() - t0,
      });
    });
  });
}

const memo = new Map<string, Promise<CliResult>>();

/** `peerbuf(args)`, run once per distinct argument list (for read-only commands several tests share). */
export function peerbufOnce(args: readonly string[]): Promise<CliResult> {
  const key = JSON.stringify(args);
  let p = memo.get(key);
  if (!p) {
    p = peerbuf(args);
    memo.set(key, p);
  }
  return p;
}

/** A one-line description of a run for assertion messages. */
export function show(r: CliResult): string {
  const cut = (s: string) => (s.length > 2000 ? `${s.slice(0, 2000)}…` : s);
  return `peerbuf ${r.args.join(" ")} → exit ${r.code}${r.signal ? ` (${r.signal})` : ""}${r.timedOut ? " TIMED OUT" : ""}\n--- stdout\n${cut(r.stdout)}\n--- stderr\n${cut(r.stderr)}`;
}

/** Stack frames (`    at f (file:1:2)`) in stderr mean an error escaped without a message. */
export function stackLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => /^\s+at /.test(l));
}

/** Reads a TSV with a header row into records. */
export function parseTsv(text: string): Record<string, string>[] {
  const [head, ...rows] = text.trimEnd().split("\n");
  const cols = head!.split("\t");
  return rows.map((r) => Object.fromEntries(r.split("\t").map((v, i) => [cols[i]!, v])));
}
