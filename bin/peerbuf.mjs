#!/usr/bin/env node
// Runs the compiled CLI when built (npm run build), else the TypeScript sources through tsx.
import { existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";

const dist = fileURLToPath(new URL("../dist/cli/main.js", import.meta.url));
let mod;
if (existsSync(dist) && !process.env.PEERBUF_FROM_SOURCE) {
  mod = await import(pathToFileURL(dist).href);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  mod = await import("../src/cli/main.ts");
}
process.exitCode = await mod.main(process.argv.slice(2));
