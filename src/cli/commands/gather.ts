import { existsSync } from "node:fs";
import { PeerbufError } from "../../core/errors.ts";
import { type GatherResult, gather } from "../../node/gather.ts";
import { log, UsageError } from "../io.ts";

export async function runGather(root: string, output: string): Promise<GatherResult> {
  if (!existsSync(`${root}/sys/bus/pci`))
    throw new UsageError(`${root}: no sys/bus/pci here; gather runs on a Linux machine with PCI`);
  const tty = process.stderr.isTTY === true;
  try {
    return await gather(root, output, (n) => {
      if (tty && n % 16 === 0) process.stderr.write(`\rgathering: ${n} PCI functions`);
    });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code) throw new PeerbufError("output-failed", `cannot write ${output}: ${code}`);
    throw e;
  } finally {
    if (tty) process.stderr.write("\r\x1b[K");
    log("");
  }
}
