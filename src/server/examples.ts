/**
 * @module examples
 * The bundled examples the page can open: machine descriptions (examples/machines/*.yaml) and
 * scenarios (examples/scenarios/*.yaml). Only names that a directory listing returns are ever
 * opened, and a scenario's machine inputs must stay inside the examples tree.
 */

import { readdirSync, readFileSync, realpathSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { InputError, PeerbufError } from "../core/errors.ts";
import { writeMachineJson } from "../core/formats/machine-doc.ts";
import type { MachineDescription } from "../core/hw/machine.ts";
import { parseScenario } from "../core/scenario/scenario-doc.ts";
import { loadInput } from "../node/load-input.ts";
import { systemNames } from "../node/names.ts";
import { isInside } from "./files.ts";

export type ExampleKind = "machines" | "scenarios";

export interface ExampleEntry {
  /** File name inside its folder, e.g. `flagship.yaml`. */
  readonly file: string;
  /** The document's `name:`. */
  readonly title: string;
  /** The comment block the file opens with, as one paragraph per blank-line group. */
  readonly summary: string;
}

/** A machine as the page receives it: our JSON description and display names for its IDs. */
export interface MachinePayload {
  readonly label: string;
  /** `writeMachineJson` text; the page parses it with `parseMachineDocument`. */
  readonly document: string;
  readonly names: NameTable;
}

export interface NameTable {
  /** `vvvv` → vendor name. */
  readonly vendors: Readonly<Record<string, string>>;
  /** `vvvv:dddd` → device name. */
  readonly devices: Readonly<Record<string, string>>;
}

export interface ScenarioPayload {
  readonly file: string;
  readonly text: string;
  /** By scenario machine name. */
  readonly machines: Readonly<Record<string, MachinePayload>>;
}

/** Refusals the server turns into HTTP statuses. */
export class NotServed extends PeerbufError {
  readonly status: 403 | 404;
  constructor(status: 403 | 404, message: string) {
    super("not-found", message);
    this.name = "NotServed";
    this.status = status;
  }
}

const hex4 = (v: number) => v.toString(16).padStart(4, "0");

/** Names from the system's pci.ids for the IDs a description uses (only those). */
export function namesFor(desc: MachineDescription): NameTable {
  const n = systemNames();
  const vendors: Record<string, string> = {};
  const devices: Record<string, string> = {};
  for (const f of desc.functions) {
    if (f.vendor === undefined) continue;
    const v = n.vendor(f.vendor);
    if (v) vendors[hex4(f.vendor)] = v;
    if (f.device === undefined) continue;
    const d = n.device(f.vendor, f.device);
    if (d) devices[`${hex4(f.vendor)}:${hex4(f.device)}`] = d;
  }
  return { vendors, devices };
}

export function machinePayload(label: string, desc: MachineDescription): MachinePayload {
  return { label, document: writeMachineJson(desc), names: namesFor(desc) };
}

function leadingComment(text: string): string {
  const lines: string[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith("#")) break;
    lines.push(line.replace(/^#\s?/, ""));
  }
  return lines
    .join("\n")
    .split(/\n\s*\n/)
    .map((p) => p.replace(/\s*\n\s*/g, " ").trim())
    .filter(Boolean)
    .join("\n\n");
}

function titleOf(text: string): string {
  const m = /^name:\s*(.+)$/m.exec(text);
  if (!m) return "";
  const t = m[1]!.trim();
  return /^(["']).*\1$/.test(t) ? t.slice(1, -1) : t;
}

export class Examples {
  readonly root: string;

  constructor(root: string) {
    this.root = root;
  }

  /** YAML files directly in `examples/<kind>/`, sorted. */
  #files(kind: ExampleKind): string[] {
    try {
      return readdirSync(join(this.root, kind), { withFileTypes: true })
        .filter((e) => (e.isFile() || e.isSymbolicLink()) && /^[\w.-]+\.ya?ml$/.test(e.name))
        .map((e) => e.name)
        .sort();
    } catch {
      return [];
    }
  }

  /** The real path of a listed example; refuses names not listed and links leading out. */
  #path(kind: ExampleKind, file: string): string {
    if (!this.#files(kind).includes(file)) throw new NotServed(404, `no ${kind} example ${file}`);
    const real = realpathSync(join(this.root, kind, file));
    if (!isInside(realpathSync(this.root), real))
      throw new NotServed(403, `${kind}/${file} leads out of the examples`);
    return real;
  }

  list(): Record<ExampleKind, ExampleEntry[]> {
    const entries = (kind: ExampleKind) =>
      this.#files(kind).flatMap((file) => {
        try {
          const text = readFileSync(this.#path(kind, file), "utf8");
          return [{ file, title: titleOf(text) || file, summary: leadingComment(text) }];
        } catch {
          return [];
        }
      });
    return { machines: entries("machines"), scenarios: entries("scenarios") };
  }

  async machine(file: string): Promise<MachinePayload> {
    const path = this.#path("machines", file);
    return machinePayload(`examples/machines/${file}`, await loadInput([path]));
  }

  async scenario(file: string): Promise<ScenarioPayload> {
    const path = this.#path("scenarios", file);
    const text = readFileSync(path, "utf8");
    const label = `examples/scenarios/${file}`;
    const sc = parseScenario(label, text);
    const rootReal = realpathSync(this.root);
    const machines: Record<string, MachinePayload> = {};
    for (const [name, m] of sc.machines) {
      const input = resolve(dirname(path), m.input);
      let real: string;
      try {
        real = realpathSync(input);
      } catch {
        throw new InputError({ file: label, place: `machines.${name}.input` }, "not found");
      }
      if (!isInside(rootReal, real))
        throw new NotServed(403, `${label}: machine ${name} reads outside the examples`);
      const rel = real.slice(rootReal.length + 1);
      machines[name] = machinePayload(`examples/${rel}`, await loadInput([real]));
    }
    return { file: label, text, machines };
  }
}
