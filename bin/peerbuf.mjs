#!/usr/bin/env node
// Runs the compiled CLI (dist/, built by `npm ci`/`npm run build`) when it is newer than every
// source file; otherwise the TypeScript sources through tsx, so a stale build is never used.
import { existsSync, readdirSync, statSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const dist = `${root}dist/cli/main.js`;

function newestSource(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) newest = Math.max(newest, newestSource(p));
    else if (e.name.endsWith(".ts") && !e.name.endsWith(".test.ts"))
      newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

function distIsFresh() {
  if (!existsSync(dist) || process.env.PEERBUF_FROM_SOURCE) return false;
  if (!existsSync(`${root}src`)) return true;
  return (
    statSync(`${root}dist/.tsbuild/edge.tsbuildinfo`, { throwIfNoEntry: false })?.mtimeMs >=
    newestSource(`${root}src`)
  );
}

let mod;
if (distIsFresh()) {
  mod = await import(pathToFileURL(dist).href);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  mod = await import(pathToFileURL(`${root}src/cli/main.ts`).href);
}
process.exitCode = await mod.main(process.argv.slice(2));
