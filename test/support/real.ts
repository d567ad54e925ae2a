/**
 * Where the real-machine fixtures live (`../shared/fixtures/real`, beside the repo), and the skip
 * reason tests give when they are absent. They are read in place, never copied into the repo.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const REAL = fileURLToPath(new URL("../../../shared/fixtures/real/", import.meta.url));
export const skipReal: string | false = existsSync(REAL)
  ? false
  : `real fixtures not found at ${REAL}`;
export const real = (p: string): string => join(REAL, p);
