// Runs the whole suite: type-check, lint, then every *.test.ts under src/ and test/ in one
// node:test run (Node 20's --test does not expand globs).
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

function find(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) find(p, out);
    else if (name.endsWith(".test.ts")) out.push(p);
  }
  return out;
}

const only = process.argv.slice(2);
const run = (cmd, args) => spawnSync(cmd, args, { stdio: "inherit" }).status ?? 1;

if (only.length === 0) {
  if (run("npx", ["tsc", "-p", "tsconfig.test.json"]) !== 0) process.exit(1);
  if (run("npx", ["tsc", "-b"]) !== 0) process.exit(1);
  if (run("npx", ["biome", "check", "."]) !== 0) process.exit(1);
}
const files = only.length > 0 ? only : [...find("src"), ...find("test")].sort();
process.exit(run(process.execPath, ["--import", "tsx", "--test", ...files]));
