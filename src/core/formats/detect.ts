/**
 * @module detect
 * Sniffs which text format an input is in and dispatches to its parser.
 */

import { InputError } from "../errors.ts";
import type { MachineDescription } from "../hw/machine.ts";

export type TextFormat = "lspci" | "hwloc-xml" | "nccl-xml" | "yaml" | "json";

export function detectTextFormat(text: string): TextFormat | null {
  const t = text.replace(/^\uFEFF/, "").trimStart();
  if (t.startsWith("<")) {
    if (/<topology[\s>]/.test(t.slice(0, 4096))) return "hwloc-xml";
    if (/<system[\s>]/.test(t.slice(0, 4096))) return "nccl-xml";
    return null;
  }
  if (t.startsWith("{")) return "json";
  if (/^schemaVersion\s*:/m.test(t.slice(0, 4096))) return "yaml";
  if (
    /^(\s*[-+\\|`]*\[[0-9a-f]{4}:[0-9a-f]{2}\]|([0-9a-f]{4,8}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\s)/im.test(
      t,
    )
  )
    return "lspci";
  return null;
}

export function parseTextInput(
  inputs: readonly { file: string; text: string }[],
  format?: string,
): MachineDescription {
  const first = inputs[0];
  if (!first) throw new InputError({ file: "(none)" }, "no input given");
  const fmt = (format as TextFormat | undefined) ?? detectTextFormat(first.text);
  if (fmt === null)
    throw new InputError(
      { file: first.file },
      "unrecognised format: expected a sysfs capture, lspci output, hwloc or NCCL XML, or a peerbuf machine YAML/JSON",
      "input-unsupported",
    );
  throw new InputError(
    { file: first.file },
    `${fmt} input is not supported by this build`,
    "input-unsupported",
  );
}
