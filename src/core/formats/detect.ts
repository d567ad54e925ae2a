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
    // the root element, after the declaration, comments and a DOCTYPE (licence headers can be long)
    const root = /<(?!\?|!)([A-Za-z_][\w.-]*)/.exec(t.replace(/<!--[\s\S]*?-->/g, ""))?.[1];
    if (root === "topology" || root === "root") return "hwloc-xml";
    if (root === "system" || root === "graphs") return "nccl-xml";
    return null;
  }
  if (t.startsWith("{")) return "json";
  if (/^schemaVersion\s*:/m.test(t.slice(0, 8192))) return "yaml";
  if (
    /^(\s*[-+\\|`]*\[[0-9a-f]{4}:[0-9a-f]{2}\]|([0-9a-f]{4,8}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\s)/im.test(
      t,
    )
  )
    return "lspci";
  return null;
}

/** Optional context a text parser can use: a names database for lspci output without `-n`. */
export interface TextParseOptions {
  readonly ids?: import("./pci-ids.ts").PciIds | null;
}

/**
 * Parses text inputs in the named or sniffed format. Parsers are imported on demand so that
 * loading a sysfs capture never pays for XML/YAML libraries.
 */
export async function parseTextInput(
  inputs: readonly { file: string; text: string }[],
  format?: string,
  opts: TextParseOptions = {},
): Promise<MachineDescription> {
  const first = inputs[0];
  if (!first) throw new InputError({ file: "(none)" }, "no input given");
  const fmt = (format as TextFormat | undefined) ?? detectTextFormat(first.text);
  if (fmt === null)
    throw new InputError(
      { file: first.file },
      "unrecognised format: expected a sysfs capture (directory or tarball), lspci output, hwloc or NCCL XML, or a peerbuf machine YAML/JSON",
      "input-unsupported",
    );
  if (fmt !== "lspci" && inputs.length > 1)
    throw new InputError(
      { file: inputs[1]!.file },
      `only lspci outputs combine; a ${fmt} input must be the only input`,
    );
  switch (fmt) {
    case "lspci": {
      const { parseLspci } = await import("./lspci.ts");
      return parseLspci(inputs, opts.ids ? { ids: opts.ids } : {});
    }
    case "hwloc-xml": {
      const { parseHwlocXml } = await import("./hwloc-xml.ts");
      return parseHwlocXml(first.file, first.text);
    }
    case "nccl-xml": {
      const { parseNcclXml } = await import("./nccl-xml.ts");
      return parseNcclXml(first.file, first.text);
    }
    case "yaml":
    case "json": {
      const { parseMachineDocument } = await import("./machine-doc.ts");
      return parseMachineDocument(first.file, first.text);
    }
    default:
      throw new InputError(
        { file: first.file },
        `unknown format "${format}" (known: lspci, hwloc-xml, nccl-xml, yaml, json)`,
        "input-unsupported",
      );
  }
}
