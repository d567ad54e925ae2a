import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { InputError } from "../../core/errors.ts";
import type { MachineDescription } from "../../core/hw/machine.ts";
import { runScenario, type ScenarioResult } from "../../core/scenario/run-scenario.ts";
import { parseScenario, type Scenario } from "../../core/scenario/scenario-doc.ts";
import { loadInput } from "../../node/load-input.ts";
import { machineFromInput } from "../context.ts";

export interface LoadedScenario {
  readonly scenario: Scenario;
  readonly descs: ReadonlyMap<string, MachineDescription>;
  /** One line per machine: name, input, kernel options. */
  readonly labels: readonly string[];
}

/**
 * Reads a scenario file and the machines it names (inputs relative to the file); `input`
 * replaces the first machine's input.
 */
export async function loadScenario(file: string, input?: string[]): Promise<LoadedScenario> {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new InputError({ file }, `cannot read: ${(e as NodeJS.ErrnoException).code ?? e}`);
  }
  const scenario = parseScenario(file, text);
  const descs = new Map<string, MachineDescription>();
  const labels: string[] = [];
  let first = true;
  for (const [name, m] of scenario.machines) {
    const paths = first && input ? input : [resolve(dirname(file), m.input)];
    first = false;
    const desc = await loadInput(paths);
    machineFromInput(desc, paths);
    descs.set(name, desc);
    const opts = [
      m.kernel ?? "mainline",
      m.iommu !== undefined ? `iommu ${m.iommu}` : `iommu ${desc.iommu?.mode ?? "off"}`,
      m.dmabufDebug ? "CONFIG_DMABUF_DEBUG" : null,
      m.moveNotify ? "CONFIG_DMABUF_MOVE_NOTIFY" : null,
    ].filter((x) => x);
    labels.push(`${name} = ${paths.join(" ")} (${opts.join(", ")})`);
  }
  return { scenario, descs, labels };
}

export function run(l: LoadedScenario): ScenarioResult {
  return runScenario(l.scenario, l.descs);
}
