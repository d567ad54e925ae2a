import { renameSync, unlinkSync, writeFileSync } from "node:fs";
import { PeerbufError } from "../../core/errors.ts";
import { writeDot } from "../../core/formats/dot.ts";
import { writeHwlocXml } from "../../core/formats/hwloc-xml.ts";
import { writeMachineJson, writeMachineYaml } from "../../core/formats/machine-doc.ts";
import { writeNcclXml } from "../../core/formats/nccl-xml.ts";
import { loadInput } from "../../node/load-input.ts";
import { machineFromInput } from "../context.ts";
import { writeOut } from "../io.ts";

type Target = "yaml" | "json" | "hwloc-xml" | "nccl-xml" | "dot";

/** Writes the converted document to stdout, or atomically to a file. */
export async function runConvert(inputs: string[], to: Target, output?: string): Promise<void> {
  const desc = await loadInput(inputs);
  machineFromInput(desc, inputs); // refuse to convert what is not a valid hierarchy
  const text =
    to === "yaml"
      ? writeMachineYaml(desc)
      : to === "json"
        ? writeMachineJson(desc)
        : to === "hwloc-xml"
          ? writeHwlocXml(desc)
          : to === "nccl-xml"
            ? writeNcclXml(desc)
            : writeDot(desc);
  if (output === undefined || output === "-") {
    writeOut(text);
    return;
  }
  const tmp = `${output}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, text.endsWith("\n") ? text : `${text}\n`, { flag: "wx" });
    renameSync(tmp, output);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {}
    throw new PeerbufError(
      "output-failed",
      `cannot write ${output}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
}
