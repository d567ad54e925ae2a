/**
 * @module main
 * The `peerbuf` command line. Every command: `--help`; reporting commands: `--json` (one document
 * on stdout); progress and logs on stderr; exit codes in exit-codes.ts.
 */

import { Argument, Command, CommanderError, Option } from "commander";
import { type DeviceKind, INTERESTING, KIND_HELP, parseKinds } from "../core/analysis/kinds.ts";
import { computeMatrix, matrixFunctions } from "../core/analysis/matrix.ts";
import { explainPair } from "../core/analysis/p2p.ts";
import { buildTree } from "../core/analysis/tree.ts";
import { CPU_PRESETS } from "../core/kernel/pci/pci-view.ts";
import { PROFILES } from "../core/kernel/profile.ts";
import { compatCommand } from "./commands/compat.ts";
import { loadScenario, run } from "./commands/run.ts";
import { completionScript } from "./completion.ts";
import { IOMMU_CHOICES, loadContext, resolveDevice, type WhatIf } from "./context.ts";
import { EXIT, EXIT_HELP } from "./exit-codes.ts";
import {
  colors,
  failure,
  log,
  SCHEMA_VERSION,
  TOOL,
  toJson,
  UsageError,
  writeJson,
  writeOut,
} from "./io.ts";
import { renderExplain } from "./render/explain.ts";
import { renderMatrix } from "./render/matrix.ts";
import { renderRun } from "./render/run.ts";
import { renderTree } from "./render/tree.ts";

const CONVERT_TARGETS = ["yaml", "json", "hwloc-xml", "nccl-xml", "dot"] as const;

import { fileURLToPath } from "node:url";

interface Common extends WhatIf {
  input?: string[];
  json?: boolean;
  color?: boolean;
}

/** `report`: the command's output is a report, so `--json` and colours apply (not to convert). */
function common(cmd: Command, whatIf = true, report = true): Command {
  cmd.option(
    "-i, --input <source...>",
    "sysfs capture (dir/.tar/.tar.gz/.tar.bz2), lspci output, hwloc or NCCL XML, or peerbuf YAML/JSON; default: this machine",
  );
  if (report)
    cmd
      .option("--json", "print one JSON document on stdout")
      .option("--no-color", "no colours (also NO_COLOR=1; FORCE_COLOR=1 forces them)");
  if (whatIf)
    cmd
      .option(
        "--kernel <profile>",
        `kernel profile: ${Object.keys(PROFILES).join(", ")} (default 6.1)`,
      )
      .option("--cpu <cpu>", `pretend the CPU is: ${Object.keys(CPU_PRESETS).join(", ")}`)
      .addOption(
        new Option("--iommu <mode>", "pretend the IOMMU is").choices(
          IOMMU_CHOICES as unknown as string[],
        ),
      )
      .option(
        "--cmdline <line>",
        "pretend the kernel booted with this command line (e.g. 'intel_iommu=on pci=disable_acs_redir=0000:02:00.0')",
      )
      .option(
        "--set-acs <bdf=bits...>",
        "force a port's live ACS control word (0x1d, or names: SV,RR,CR,UF)",
      );
  return cmd;
}

function kindsOpt(text: string | undefined): DeviceKind[] | undefined {
  if (text === undefined) return undefined;
  const k = parseKinds(text);
  if (typeof k === "string")
    throw new UsageError(`unknown class "${k}" (known: ${Object.keys(KIND_HELP).join(", ")})`);
  return k;
}

export function buildProgram(): Command {
  const program = new Command("peerbuf")
    .description(
      "Can device A DMA straight into device B's memory? The Linux kernel's P2PDMA answer for any machine, and why.",
    )
    .version(TOOL.version)
    .addHelpText(
      "after",
      `\n${EXIT_HELP}\n\nExamples:\n  peerbuf tree --input capture.tar.gz --class gpu,nic\n  peerbuf matrix --input lspci-vvv.txt --view smi\n  peerbuf explain gpu0 nic1 --iommu dma\n  peerbuf gather -o myhost.tar.gz`,
    )
    .showSuggestionAfterError()
    .exitOverride();

  common(program.command("tree"))
    .description(
      "the PCI hierarchy with port types, links (current vs max), ACS bits, NUMA node, IOMMU group",
    )
    .option(
      "--class <kinds>",
      `only these kinds and the bridges above them: ${Object.keys(KIND_HELP).join(",")}`,
    )
    .option("--device <bdf>", "only this device's subtree and its path to the root")
    .option("--no-collapse", "list every one of repeated identical devices (VFs)")
    .option("-v, --verbose", "also show each function's BARs")
    .action(
      async (
        o: Common & { class?: string; device?: string; collapse?: boolean; verbose?: boolean },
      ) => {
        const ctx = await loadContext(o.input, o);
        const device = o.device !== undefined ? resolveDevice(ctx, o.device) : undefined;
        const kinds = kindsOpt(o.class);
        const roots = buildTree(ctx.machine, ctx.view, {
          ...(kinds ? { kinds } : {}),
          ...(device ? { device } : {}),
          collapse: o.collapse !== false,
          names: ctx.names,
        });
        if (o.json) writeJson({ input: ctx.inputLabel, data: { hostBridges: roots } });
        else {
          writeOut(renderTree(roots, colors(o.color), o.verbose === true));
          for (const u of ctx.desc.unknowns ?? []) log(`note: unknown: ${u}`);
        }
      },
    );

  common(program.command("matrix"))
    .description("pairwise P2P verdicts (map type + the kernel's distance), or the nvidia-smi view")
    .option("--class <kinds>", `device kinds to include (default ${INTERESTING.join(",")})`)
    .option("--all", "every function with a type-0 header (host-bridge and chipset functions too)")
    .addOption(
      new Option("--view <view>", "kernel verdicts or nvidia-smi classes")
        .choices(["kernel", "smi"])
        .default("kernel"),
    )
    .action(async (o: Common & { class?: string; all?: boolean; view: "kernel" | "smi" }) => {
      const ctx = await loadContext(o.input, o);
      const kinds = o.all ? "all" : (kindsOpt(o.class) ?? [...INTERESTING]);
      const fns = matrixFunctions(ctx.machine, kinds);
      const m = computeMatrix(ctx.view, fns);
      if (o.json) {
        writeJson({
          input: ctx.inputLabel,
          data: {
            view: o.view,
            devices: m.devices.map((d) => ({ ...d, name: ctx.nameOf(ctx.machine.byBdf(d.bdf)!) })),
            pairs: m.pairs,
          },
        });
        return;
      }
      if (fns.length === 0) {
        log(
          `no devices of kinds ${Array.isArray(kinds) ? kinds.join(",") : "all"} in this machine; try --all`,
        );
        return;
      }
      const names = new Map(fns.map((f) => [f.name, ctx.nameOf(f)]));
      writeOut(renderMatrix(m, o.view, colors(o.color), names));
      for (const u of ctx.desc.unknowns ?? []) log(`note: unknown: ${u}`);
    });

  compatCommand(common(program.command("compat")));

  common(program.command("explain"))
    .description(
      "why the kernel allows or refuses P2P from provider A's memory to client B, hop by hop, and what to change",
    )
    .argument(
      "<provider>",
      "device whose memory is the DMA target: BDF, gpu0/nic1/..., or a name fragment",
    )
    .argument("<client>", "device doing the DMA")
    .action(async (a: string, b: string, o: Common) => {
      const ctx = await loadContext(o.input, o);
      const p = resolveDevice(ctx, a);
      const c = resolveDevice(ctx, b);
      const e = explainPair(ctx.view, p, c);
      if (o.json) writeJson({ input: ctx.inputLabel, data: e, findings: e.findings });
      else {
        const names = new Map([p, c].map((f) => [f.name, ctx.nameOf(f)]));
        writeOut(renderExplain(e, colors(o.color), names, ctx.view.profile.id));
      }
      process.exitCode = e.mapType === "not-supported" ? EXIT.NEGATIVE : EXIT.OK;
    });

  program
    .command("gather")
    .description(
      "capture this machine's PCI sysfs (+ /proc/cpuinfo, cmdline, iomem) into a tarball that loads anywhere",
    )
    .option("-o, --output <file>", "output file (.tar.gz)", "peerbuf-capture.tar.gz")
    .option("--root <dir>", "read sysfs/proc from this root instead of / (testing)", "/")
    .option("--json", "print a JSON summary on stdout")
    .action(async (o: { output: string; root: string; json?: boolean }) => {
      const { runGather } = await import("./commands/gather.ts");
      const r = await runGather(o.root, o.output);
      if (o.json) writeJson({ input: { root: o.root }, data: r });
      else
        log(
          `wrote ${r.output}: ${r.functions} PCI functions, ${r.files} files${r.redacted ? `, ${r.redacted} serial number(s) redacted` : ""}${r.fullConfig ? "" : "; not root: config space is 64 bytes, so ACS is unknown (run with sudo)"}`,
        );
    });

  common(program.command("convert"), false, false)
    .description("convert any input into our YAML/JSON, hwloc XML, NCCL XML or Graphviz DOT")
    .addOption(
      new Option("--to <format>", "output format")
        .choices([...CONVERT_TARGETS])
        .makeOptionMandatory(),
    )
    .option("-o, --output <file>", "write here (atomically) instead of stdout")
    .action(async (o: Common & { to: (typeof CONVERT_TARGETS)[number]; output?: string }) => {
      const { runConvert } = await import("./commands/convert.ts");
      await runConvert(o.input ?? [], o.to, o.output);
    });

  program
    .command("completion")
    .description("print a shell completion script")
    .addArgument(new Argument("<shell>", "bash, zsh or fish").choices(["bash", "zsh", "fish"]))
    .action((shell: "bash" | "zsh" | "fish") => {
      writeOut(completionScript(program, shell));
    });

  program
    .command("run")
    .description(
      "run a scenario file: processes export, import, map and DMA; prints the kernel trace and checks each step's expectation",
    )
    .argument("<scenario...>", "scenario YAML file(s), e.g. examples/scenarios/*.yaml")
    .option(
      "-i, --input <source...>",
      "replace the first machine of the scenario with this input (any format tree/matrix read)",
    )
    .option("--json", "print one JSON document on stdout")
    .option("--no-color", "no colours (also NO_COLOR=1; FORCE_COLOR=1 forces them)")
    .action(async (files: string[], o: { input?: string[]; json?: boolean; color?: boolean }) => {
      const results = [];
      const c = colors(o.color);
      for (const f of files) {
        const l = await loadScenario(f, o.input);
        const r = run(l);
        results.push({ machines: l.labels, ...r });
        if (!o.json) {
          if (results.length > 1) writeOut("");
          writeOut(renderRun(r, l.labels, c));
        }
      }
      if (o.json)
        writeJson({
          input: { scenarios: files, ...(o.input ? { override: o.input } : {}) },
          data: { scenarios: results },
        });
      process.exitCode = results.every((r) => r.passed) ? EXIT.OK : EXIT.NEGATIVE;
    });

  program
    .command("serve")
    .description(
      "a local web page (127.0.0.1 only): the topology drawn, click two devices for the path and the verdict, what-ifs, scenarios",
    )
    .option("-i, --input <source...>", "the machine to open (any input tree/matrix read)")
    .option("-p, --port <n>", "port on 127.0.0.1 (0: any free port)", "8380")
    .action(async (o: { input?: string[]; port?: string }) => {
      const { runServe } = await import("./commands/serve.ts");
      await runServe(o);
    });

  program
    .command("demo")
    .description(
      "the bundled flagship server: its tree, its P2P matrix, and a remote peer RDMA-writing into accelerator memory (what `npm start` runs)",
    )
    .option("--no-color", "no colours")
    .action(async (o: { color?: boolean }) => {
      const path = fileURLToPath(new URL("../../examples/machines/flagship.yaml", import.meta.url));
      const ctx = await loadContext([path], {});
      const c = colors(o.color);
      writeOut(c.bold(`peerbuf demo: ${ctx.desc.name ?? "flagship"} (${path})\n`));
      writeOut(
        renderTree(
          buildTree(ctx.machine, ctx.view, {
            kinds: ["accel", "nic", "gpu", "nvme"],
            names: ctx.names,
          }),
          c,
        ),
      );
      writeOut("");
      const fns = matrixFunctions(ctx.machine, [...INTERESTING]);
      const names = new Map(fns.map((f) => [f.name, ctx.nameOf(f)]));
      writeOut(renderMatrix(computeMatrix(ctx.view, fns), "kernel", c, names));
      // the story: accel0 exports HBM, mlx5_0 registers it, a remote peer RDMA-writes into it
      const sc = fileURLToPath(new URL("../../examples/scenarios/flagship.yaml", import.meta.url));
      writeOut(c.bold("\nThe flagship scenario: peerbuf run examples/scenarios/flagship.yaml\n"));
      const l = await loadScenario(sc);
      const r = run(l);
      writeOut(renderRun(r, l.labels, c));
      writeOut(
        c.dim(
          "\nTry: peerbuf explain accel0 nic0 --input examples/machines/flagship.yaml\n     peerbuf run examples/scenarios/*.yaml",
        ),
      );
      process.exitCode = r.passed ? EXIT.OK : EXIT.NEGATIVE;
    });
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  const json = argv.includes("--json");
  try {
    await program.parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : EXIT.OK;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (
        e.code === "commander.helpDisplayed" ||
        e.code === "commander.version" ||
        e.code === "commander.help"
      )
        return EXIT.OK;
      // commander has printed its message on stderr; --json still gets its error document
      if (json)
        writeOut(
          toJson({
            schemaVersion: SCHEMA_VERSION,
            tool: TOOL,
            error: { code: "usage", message: e.message.replace(/^error: /, ""), data: {} },
          }),
        );
      return EXIT.USAGE;
    }
    return failure(e, json);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
