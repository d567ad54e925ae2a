/**
 * The CLI as a user runs it (a child process per command, see support/cli.ts): help, usage
 * errors, the JSON contract, verdicts checked against the kernel-oracle captures, name
 * resolution, what-ifs (checked against captures the oracle booted with those settings),
 * views and filters, shell completion, convert (round trip, atomic writes), demo, EPIPE.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { gunzipSync } from "node:zlib";
import { unpackTar } from "modern-tar";
import { parse as parseYaml } from "yaml";
import { loadInput } from "../src/node/load-input.ts";
import {
  type CliResult,
  parseTsv,
  peerbuf,
  peerbufOnce,
  REPO,
  show,
  stackLines,
} from "./support/cli.ts";

const ORACLE = fileURLToPath(new URL("./fixtures/kernel-oracle/", import.meta.url));
const capture = (name: string) => join(ORACLE, name, "sysfs.tar.gz");
const tsv = (name: string, file: string) =>
  parseTsv(readFileSync(join(ORACLE, name, file), "utf8"));

const BASE = "switch_acs_dsp_iommu";
const BASE_CAP = capture(BASE);
const PKG = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string };
const SUBCOMMANDS = ["tree", "matrix", "explain", "gather", "convert", "completion", "demo"];
const REPORTING = ["tree", "matrix", "explain", "gather"];
const MAP: Record<string, string> = {
  BUS_ADDR: "bus-address",
  THRU_HOST_BRIDGE: "through-host-bridge",
  NOT_SUPPORTED: "not-supported",
};
const BDF_RE = /\b[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\b/g;

const tmp = mkdtempSync(join(tmpdir(), "peerbuf-cli-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** The kernel's view of each function of an oracle topology (devices.tsv), by BDF. */
function devices(name: string): Map<string, Record<string, string>> {
  return new Map(tsv(name, "devices.tsv").map((r) => [r["bdf"]!, r]));
}

/** Parent of each function as the kernel saw it (`upstream` = pci_upstream_bridge), or null. */
function kernelParents(name: string): Map<string, string | null> {
  return new Map(
    [...devices(name).values()].map((r) => [
      r["bdf"]!,
      r["upstream"] === "-" ? null : r["upstream"]!,
    ]),
  );
}

function assertExit(r: CliResult, code: number): void {
  assert.equal(r.timedOut, false, show(r));
  assert.equal(r.code, code, show(r));
  assert.deepEqual(stackLines(r.stderr), [], `stack trace on stderr:\n${show(r)}`);
}

interface Envelope {
  schemaVersion: number;
  tool: { name: string; version: string };
  input: Record<string, unknown>;
  data: unknown;
  findings: unknown[];
}

/** stdout is exactly one JSON document with our envelope, and nothing else. */
function envelope(r: CliResult): Envelope {
  let doc: Envelope;
  try {
    doc = JSON.parse(r.stdout) as Envelope;
  } catch (e) {
    assert.fail(`stdout is not one JSON document (${(e as Error).message}):\n${show(r)}`);
  }
  assert.equal(typeof doc, "object");
  assert.equal(doc.schemaVersion, 1);
  assert.equal(doc.tool.name, "peerbuf");
  assert.equal(doc.tool.version, PKG.version);
  assert.equal(typeof doc.input, "object");
  assert.ok("data" in doc, "no data");
  assert.ok(Array.isArray(doc.findings), "findings is not an array");
  return doc;
}

/** With --json, a failure still prints one JSON document: `{schemaVersion, tool, error}`. */
function errorDoc(r: CliResult): { code: string; message: string } {
  const doc = JSON.parse(r.stdout) as {
    schemaVersion: number;
    tool: { name: string };
    error: { code: string; message: string };
  };
  assert.equal(doc.schemaVersion, 1);
  assert.equal(doc.tool.name, "peerbuf");
  assert.equal(typeof doc.error.message, "string");
  return doc.error;
}

interface TreeNode {
  bdf: string;
  children: TreeNode[];
  collapsed?: { count: number; last: string };
}

/** Every function of `tree --json` data with the BDF of the node above it (null: a root bus). */
function flattenTree(data: unknown): Map<string, string | null> {
  const out = new Map<string, string | null>();
  const walk = (n: TreeNode, parent: string | null) => {
    assert.ok(!n.collapsed, `${n.bdf} is collapsed; use --no-collapse`);
    assert.ok(!out.has(n.bdf), `${n.bdf} listed twice`);
    out.set(n.bdf, parent);
    for (const c of n.children) walk(c, n.bdf);
  };
  for (const hb of (data as { hostBridges: { children: TreeNode[] }[] }).hostBridges)
    for (const c of hb.children) walk(c, null);
  return out;
}

interface Pair {
  provider: string;
  client: string;
  mapType: string;
  distance: number;
  findings: unknown[];
}

/** `matrix --json` pairs must be the kernel's answers in verdicts.tsv, pair for pair. */
function assertMatchesKernel(r: CliResult, oracle: string): void {
  assertExit(r, 0);
  const doc = envelope(r);
  const pairs = (doc.data as { pairs: Pair[] }).pairs;
  assert.ok(Array.isArray(pairs));
  const bdf = /^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;
  for (const p of pairs) {
    assert.match(p.provider, bdf, "provider is not a full BDF");
    assert.match(p.client, bdf, "client is not a full BDF");
    assert.ok(
      ["bus-address", "through-host-bridge", "not-supported"].includes(p.mapType),
      p.mapType,
    );
    assert.ok(Number.isInteger(p.distance), `distance ${p.distance}`);
    assert.equal(p.distance === -1, p.mapType === "not-supported", `${p.provider} -> ${p.client}`);
    assert.ok(Array.isArray(p.findings));
  }
  const ours = new Map(pairs.map((p) => [`${p.provider} ${p.client}`, p]));
  const rows = tsv(oracle, "verdicts.tsv");
  assert.equal(ours.size, pairs.length, "a pair is listed twice");
  assert.deepEqual(
    [...ours.keys()].sort(),
    rows.map((r) => `${r["provider"]} ${r["client"]}`).sort(),
    "the pairs are not the kernel's pairs",
  );
  const wrong: string[] = [];
  for (const row of rows) {
    const p = ours.get(`${row["provider"]} ${row["client"]}`)!;
    const want = Number(row["distance"]);
    if (p.distance !== want)
      wrong.push(`${p.provider} -> ${p.client}: distance ${p.distance}, kernel ${want}`);
    // NA: the provider had no p2pdma state, so the kernel cached no map type to observe
    const mt = row["map_type"]!;
    if (mt !== "NA" && p.mapType !== MAP[mt])
      wrong.push(`${p.provider} -> ${p.client}: ${p.mapType}, kernel ${mt}`);
  }
  assert.deepEqual(wrong, []);
}

/** The verdicts.tsv row of one pair. */
function verdict(oracle: string, provider: string, client: string): Record<string, string> {
  const row = tsv(oracle, "verdicts.tsv").find(
    (r) => r["provider"] === provider && r["client"] === client,
  );
  assert.ok(row, `${oracle}: no verdict for ${provider} -> ${client}`);
  return row;
}

async function captureFile(name: string, path: string): Promise<string> {
  const entries = await unpackTar(gunzipSync(readFileSync(capture(name))));
  const e = entries.find((x) => x.header.name.replace(/^\.\//, "") === path);
  assert.ok(e?.data, `${name}: no ${path} in the capture`);
  return new TextDecoder().decode(e.data);
}

// one suite, everything concurrent: the children queue in support/cli.ts
describe("peerbuf CLI", { concurrency: true }, () => {
  describe("help, version and usage errors", { concurrency: true }, () => {
    it("--help lists every command and the exit codes", async () => {
      const r = await peerbufOnce(["--help"]);
      assertExit(r, 0);
      assert.match(r.stdout, /^Usage: peerbuf/);
      for (const c of SUBCOMMANDS) assert.match(r.stdout, new RegExp(`^\\s+${c}\\b`, "m"), c);
      assert.match(r.stdout, /Exit codes:/);
    });

    for (const c of SUBCOMMANDS)
      it(`${c} --help`, async () => {
        const r = await peerbufOnce([c, "--help"]);
        assertExit(r, 0);
        assert.match(r.stdout, new RegExp(`^Usage: peerbuf ${c}\\b`));
        assert.equal(r.stderr, "");
      });

    it("the commands offering --json are the reporting ones (each tested below)", async () => {
      const offering: string[] = [];
      for (const c of SUBCOMMANDS)
        if ((await peerbufOnce([c, "--help"])).stdout.includes("--json")) offering.push(c);
      assert.deepEqual(offering, REPORTING);
    });

    it("--version prints package.json's version", async () => {
      const r = await peerbuf(["--version"]);
      assertExit(r, 0);
      assert.equal(r.stdout, `${PKG.version}\n`);
    });

    it("an unknown command is a usage error (exit 2) with a message", async () => {
      const r = await peerbuf(["frobnicate"]);
      assertExit(r, 2);
      assert.match(r.stderr, /unknown command 'frobnicate'/);
      assert.equal(r.stdout, "");
    });

    it("an unknown option is a usage error (exit 2); --json still gets an error document", async () => {
      const r = await peerbuf(["tree", "--frobnicate", "--json"]);
      assertExit(r, 2);
      assert.match(r.stderr, /unknown option '--frobnicate'/);
      const e = errorDoc(r);
      assert.equal(e.code, "usage");
      assert.match(e.message, /--frobnicate/);
    });
  });

  describe("JSON output and verdicts against the kernel oracle", { concurrency: true }, () => {
    it("tree --json: the capture's functions with the kernel's parents", async () => {
      const r = await peerbufOnce(["tree", "--json", "--input", BASE_CAP]);
      assertExit(r, 0);
      const doc = envelope(r);
      assert.deepEqual(flattenTree(doc.data), kernelParents(BASE));
    });

    it(`matrix --all --json equals ${BASE}/verdicts.tsv`, async () => {
      assertMatchesKernel(
        await peerbufOnce(["matrix", "--all", "--json", "--input", BASE_CAP]),
        BASE,
      );
    });

    it("explain --json names the pair, gives the kernel's verdict and its exact messages (exit 1)", async () => {
      // nvme0 by kind+index, the NIC by its driver; both resolve per devices.tsv
      const r = await peerbufOnce(["explain", "nvme0", "e1000e", "--json", "--input", BASE_CAP]);
      assertExit(r, 1);
      const doc = envelope(r);
      const nvme = [...devices(BASE).values()].filter((d) => d["class"]!.startsWith("0x0108"));
      const nic = [...devices(BASE).values()].filter((d) => d["driver"] === "e1000e");
      assert.equal(nvme.length, 1);
      assert.equal(nic.length, 1);
      const d = doc.data as Pair & { kernelMessages: string[] };
      assert.equal(d.provider, nvme[0]!["bdf"]);
      assert.equal(d.client, nic[0]!["bdf"]);
      const v = verdict(BASE, d.provider, d.client);
      assert.equal(d.distance, Number(v["distance"]));
      assert.equal(d.mapType, MAP[v["map_type"]!]);
      assert.equal(d.kernelMessages.join(" | "), v["kernel_messages"]);
      assert.deepEqual(doc.findings, d.findings);
    });

    it("gather --json from a capture's root writes a capture of every function", async () => {
      const root = join(tmp, "gather-root");
      mkdirSync(root);
      const x = spawnSync("tar", ["-xzf", BASE_CAP, "-C", root]);
      assert.equal(x.status, 0, String(x.stderr));
      const out = join(tmp, "gathered.tar.gz");
      const r = await peerbuf(["gather", "--root", root, "-o", out, "--json"]);
      assertExit(r, 0);
      const data = envelope(r).data as { output: string; functions: number; fullConfig: boolean };
      assert.equal(data.output, out);
      assert.equal(data.functions, devices(BASE).size);
      assert.equal(data.fullConfig, true);
      const back = await loadInput([out]);
      assert.deepEqual(new Map(back.functions.map((f) => [f.bdf, f.parent])), kernelParents(BASE));
    });
  });

  describe("explain: exit codes and device names", { concurrency: true }, () => {
    const ACSR = "switch_acs_dsp_iommu_disable_acs_redir";

    it("a supported pair exits 0 (full BDF and short BDF)", async () => {
      const v = verdict(ACSR, "0000:03:00.0", "0000:06:00.0");
      assert.equal(v["map_type"], "BUS_ADDR");
      const r = await peerbuf(["explain", "0000:03:00.0", "06:00.0", "--input", capture(ACSR)]);
      assertExit(r, 0);
      assert.match(r.stdout, /^provider\s+0000:03:00\.0\b/m);
      assert.match(r.stdout, /^client\s+0000:06:00\.0\b/m);
      assert.match(
        r.stdout,
        new RegExp(`PCI_P2PDMA_MAP_BUS_ADDR\\), distance ${v["distance"]}\\b`),
      );
    });

    it("a name fragment from pci.ids resolves", { skip: pciIdsSkip() }, async () => {
      const r = await peerbuf(["explain", "82574L", "nvme0", "--input", BASE_CAP]);
      assertExit(r, Number(verdict(BASE, "0000:05:00.0", "0000:03:00.0")["distance"]) < 0 ? 1 : 0);
      assert.match(r.stdout, /^provider\s+0000:05:00\.0\b/m);
    });

    it("an ambiguous name exits 2 and lists what it matches", async () => {
      const r = await peerbuf(["explain", "pcieport", "nvme0", "--json", "--input", BASE_CAP]);
      assertExit(r, 2);
      assert.match(r.stderr, /"pcieport" is ambiguous/);
      const ports = [...devices(BASE).values()].filter((d) => d["driver"] === "pcieport");
      assert.ok(ports.length > 1);
      for (const p of ports) assert.match(r.stderr, new RegExp(`^\\s+${p["bdf"]}\\b`, "m"));
      assert.equal(errorDoc(r).code, "usage");
    });

    it("an unknown name exits 2 and suggests close matches, nearest first", async () => {
      const r = await peerbuf(["explain", "nvme9", "nic0", "--input", BASE_CAP]);
      assertExit(r, 2);
      assert.match(r.stderr, /no device matches "nvme9"; close matches:/);
      const nvme = [...devices(BASE).values()].find((d) => d["class"]!.startsWith("0x0108"))!;
      const first = r.stderr.split("close matches:\n")[1]!.split("\n")[0]!;
      assert.match(first, new RegExp(`^\\s+${nvme["bdf"]}\\b`));
      assert.equal(r.stdout, "");
    });

    it("an unknown BDF exits 2", async () => {
      const r = await peerbuf(["explain", "0000:09:00.0", "nic0", "--input", BASE_CAP]);
      assertExit(r, 2);
      assert.match(r.stderr, /no function 0000:09:00\.0/);
    });
  });

  describe("what-ifs", { concurrency: true }, () => {
    const PAIR = ["explain", "0000:03:00.0", "0000:05:00.0", "--json", "--input", BASE_CAP];
    const ACSR = "switch_acs_dsp_iommu_disable_acs_redir";

    it("the pair is refused as captured", () => {
      assert.equal(verdict(BASE, "0000:03:00.0", "0000:05:00.0")["map_type"], "NOT_SUPPORTED");
    });

    it("--cpu amd-zen: through the host bridge", async () => {
      const r = await peerbuf([...PAIR, "--cpu", "amd-zen"]);
      assertExit(r, 0);
      const d = envelope(r).data as Pair;
      assert.equal(d.mapType, "through-host-bridge");
      assert.ok(d.distance > 0);
      assert.equal(envelope(r).input["cpu"], "amd-zen");
    });

    it("--cpu amd-zen on two_root_ports gives what the kernel said on an EPYC (two_root_ports_epyc)", async () => {
      assert.equal(
        JSON.parse(readFileSync(join(ORACLE, "two_root_ports_epyc", "summary.json"), "utf8")).cpu
          .vendor_id,
        "AuthenticAMD",
      );
      const r = await peerbuf([
        "matrix",
        "--all",
        "--json",
        "--cpu",
        "amd-zen",
        "--input",
        capture("two_root_ports"),
      ]);
      assertMatchesKernel(r, "two_root_ports_epyc");
    });

    it("--cmdline with the oracle's disable_acs_redir boot gives that boot's verdicts", async () => {
      const cmdline = (await captureFile(ACSR, "proc/cmdline")).trim();
      assert.match(cmdline, /pci=disable_acs_redir=/);
      const r = await peerbuf([
        "matrix",
        "--all",
        "--json",
        "--cmdline",
        cmdline,
        "--input",
        BASE_CAP,
      ]);
      assertMatchesKernel(r, ACSR);
    });

    // With ACS redirect cleared on both downstream ports the path is the one the oracle measured
    // for 03:00.0 -> 06:00.0 below the same switch (06:00.0's port has no ACS): same distance.
    const redirOff = () => Number(verdict(ACSR, "0000:03:00.0", "0000:06:00.0")["distance"]);

    it("--cmdline 'intel_iommu=on pci=disable_acs_redir=A;B': bus address", async () => {
      const r = await peerbuf([
        ...PAIR,
        "--cmdline",
        "intel_iommu=on pci=disable_acs_redir=0000:02:00.0;0000:02:02.0",
      ]);
      assertExit(r, 0);
      const d = envelope(r).data as Pair;
      assert.equal(d.mapType, "bus-address");
      assert.equal(d.distance, redirOff());
    });

    it("--set-acs on both ports: bus address", async () => {
      const r = await peerbuf([
        ...PAIR,
        "--set-acs",
        "0000:02:00.0=0",
        "--set-acs",
        "0000:02:02.0=0",
      ]);
      assertExit(r, 0);
      const d = envelope(r).data as Pair;
      assert.equal(d.mapType, "bus-address");
      assert.equal(d.distance, redirOff());
    });

    it("--kernel nope is a usage error naming the known profiles", async () => {
      const r = await peerbuf([...PAIR, "--kernel", "nope"]);
      assertExit(r, 2);
      assert.match(r.stderr, /unknown kernel profile "nope" \(known: .*6\.1/);
    });
  });

  /**
   * nvidia-smi's class of a pair, derived from the kernel's devices.tsv: PIX when the path crosses
   * at most one PCIe switch (a switch counted once, by its upstream port), PXB for more, PHB when
   * the two meet only at the host bridge.
   */
  function smiClass(devs: Map<string, Record<string, string>>, a: string, b: string): string {
    if (a === b) return "X";
    const chain = (x: string) => {
      const out: string[] = [];
      for (let u = devs.get(x)!["upstream"]!; u !== "-"; u = devs.get(u)!["upstream"]!) out.push(u);
      return out;
    };
    const ca = chain(a);
    const cb = chain(b);
    const common = ca.find((x) => cb.includes(x));
    if (common === undefined) {
      assert.equal(devs.get(a)!["host"], devs.get(b)!["host"], "not covered: two host bridges");
      return "PHB";
    }
    const below = [...ca.slice(0, ca.indexOf(common)), ...cb.slice(0, cb.indexOf(common))];
    const usp = (x: string) => devs.get(x)!["pcie_type"] === "5";
    const switches = below.filter(usp).length + (usp(common) ? 1 : 0);
    return switches <= 1 ? "PIX" : "PXB";
  }

  describe("views and filters", { concurrency: true }, () => {
    it("matrix --view smi prints nvidia-smi's PIX/PXB/PHB classes (nested_switches)", async () => {
      const name = "nested_switches";
      const r = await peerbuf(["matrix", "--view", "smi", "--all", "--input", capture(name)]);
      assertExit(r, 0);
      const lines = r.stdout.split("\n");
      const labels = lines[0]!.trim().split(/\s+/);
      const bdfOf = new Map<string, string>();
      for (const l of lines.slice(lines.indexOf("Devices:") + 1)) {
        const m = /^\s+(\S+)\s+([0-9a-f:.]+)\s/.exec(l);
        if (m) bdfOf.set(m[1]!, m[2]!);
      }
      const devs = devices(name);
      const endpoints = [...devs.values()].filter((d) => d["hdr"] === "0").map((d) => d["bdf"]!);
      assert.deepEqual(labels.map((l) => bdfOf.get(l)).sort(), endpoints.sort());
      const seen = new Set<string>();
      for (const [i, rowLabel] of labels.entries()) {
        const cells = lines[i + 1]!.trim().split(/\s+/);
        assert.equal(cells[0], rowLabel);
        for (const [j, colLabel] of labels.entries()) {
          const a = bdfOf.get(rowLabel)!;
          const b = bdfOf.get(colLabel)!;
          assert.equal(cells[j + 1], smiClass(devs, a, b), `${a} -> ${b}`);
          seen.add(cells[j + 1]!);
        }
      }
      for (const c of ["PIX", "PXB", "PHB"]) assert.ok(seen.has(c), `no ${c} in this topology`);
    });

    // the NVMe drive and the bridges above it, from devices.tsv
    const nvmePath = () => {
      const devs = devices(BASE);
      const nvme = [...devs.values()].filter((d) => d["class"]!.startsWith("0x0108"));
      assert.equal(nvme.length, 1);
      const want = [nvme[0]!["bdf"]!];
      for (let u = nvme[0]!["upstream"]!; u !== "-"; u = devs.get(u)!["upstream"]!) want.push(u);
      return want.sort();
    };
    const bdfs = (text: string) => [...new Set(text.match(BDF_RE) ?? [])].sort();

    it("tree --class nvme: the drive and the bridges above it, nothing else", async () => {
      const r = await peerbuf(["tree", "--class", "nvme", "--input", BASE_CAP]);
      assertExit(r, 0);
      assert.deepEqual(bdfs(r.stdout), nvmePath());
    });

    it("tree --device 03:00.0: its subtree and path to the root", async () => {
      const r = await peerbuf(["tree", "--device", "03:00.0", "--input", BASE_CAP]);
      assertExit(r, 0);
      assert.deepEqual(bdfs(r.stdout), nvmePath());
    });
  });

  function pciIdsSkip(): string | false {
    for (const p of ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"])
      if (existsSync(p) && /^\t10d3 {2}82574L/m.test(readFileSync(p, "utf8"))) return false;
    return "no pci.ids naming 8086:10d3 82574L on this system";
  }

  function shellSkip(shell: string): string | false {
    const r = spawnSync(shell, ["-c", "exit 0"]);
    return r.error || r.status !== 0 ? `${shell} is not installed` : false;
  }

  describe("completion", { concurrency: true }, () => {
    const check: Record<string, { args: string[]; skip: string | false }> = {
      bash: { args: ["-n"], skip: shellSkip("bash") },
      zsh: { args: ["-n"], skip: shellSkip("zsh") },
      fish: { args: ["--no-execute"], skip: shellSkip("fish") },
    };
    for (const [shell, c] of Object.entries(check))
      it(`completion ${shell}: mentions every command${c.skip ? "" : `, and ${shell} parses it`}`, async () => {
        const r = await peerbuf(["completion", shell]);
        assertExit(r, 0);
        for (const cmd of SUBCOMMANDS) assert.match(r.stdout, new RegExp(`\\b${cmd}\\b`), cmd);
        if (c.skip) return;
        const s = spawnSync(shell, c.args, { input: r.stdout, encoding: "utf8" });
        assert.equal(s.status, 0, `${shell} ${c.args.join(" ")}: ${s.stderr}`);
      });
  });

  describe("convert", { concurrency: true }, () => {
    const convert = (to: string) => peerbuf(["convert", "--to", to, "--input", BASE_CAP]);
    const parentsOf = async (file: string, text: string) => {
      const path = join(tmp, file);
      writeFileSync(path, text);
      const m = await loadInput([path]);
      return new Map(m.functions.map((f) => [f.bdf, f.parent]));
    };

    it("--to yaml -o FILE writes atomically, and loading it gives the capture's tree --json", async () => {
      const dir = join(tmp, "yaml-out");
      mkdirSync(dir);
      const out = join(dir, "machine.yaml");
      const r = await peerbuf(["convert", "--to", "yaml", "-o", out, "--input", BASE_CAP]);
      assertExit(r, 0);
      assert.equal(r.stdout, "");
      assert.deepEqual(readdirSync(dir), ["machine.yaml"], "a temporary file was left behind");
      const [fromYaml, fromCapture] = await Promise.all([
        peerbuf(["tree", "--json", "--input", out]),
        peerbufOnce(["tree", "--json", "--input", BASE_CAP]),
      ]);
      assertExit(fromYaml, 0);
      assertExit(fromCapture, 0);
      assert.deepEqual(envelope(fromYaml).data, envelope(fromCapture).data);
    });

    it("--to json: our JSON, every function with the kernel's parent", async () => {
      const r = await convert("json");
      assertExit(r, 0);
      assert.equal(JSON.parse(r.stdout).schemaVersion, 1);
      assert.deepEqual(await parentsOf("m.json", r.stdout), kernelParents(BASE));
    });

    it("--to hwloc-xml: every function with the kernel's parent", async () => {
      const r = await convert("hwloc-xml");
      assertExit(r, 0);
      assert.match(r.stdout, /^<\?xml[^>]*\?>\s*<!DOCTYPE topology/);
      assert.deepEqual(await parentsOf("m.xml", r.stdout), kernelParents(BASE));
    });

    it("--to nccl-xml: NCCL's <system> with the NIC, only known BDFs", async () => {
      const r = await convert("nccl-xml");
      assertExit(r, 0);
      assert.match(r.stdout, /^<system version="1">/);
      const busids = [...r.stdout.matchAll(/busid="([^"]+)"/g)].map((m) => m[1]!);
      const devs = devices(BASE);
      for (const b of busids) assert.ok(devs.has(b), `unknown busid ${b}`);
      const nic = [...devs.values()].find((d) => d["class"]!.startsWith("0x02"))!;
      assert.ok(busids.includes(nic["bdf"]!), "the NIC is missing");
      await parentsOf("nccl.xml", r.stdout); // loads back
    });

    it("--to dot: a digraph naming every function", async () => {
      const r = await convert("dot");
      assertExit(r, 0);
      assert.match(r.stdout, /^digraph\b/);
      assert.equal((r.stdout.match(/\{/g) ?? []).length, (r.stdout.match(/\}/g) ?? []).length);
      for (const b of devices(BASE).keys()) assert.ok(r.stdout.includes(b), b);
    });

    it("-o into a missing directory: exit 4 and nothing written", async () => {
      const dir = join(tmp, "no-write");
      mkdirSync(dir);
      const r = await peerbuf([
        "convert",
        "--to",
        "yaml",
        "-o",
        join(dir, "missing", "m.yaml"),
        "--input",
        BASE_CAP,
      ]);
      assertExit(r, 4);
      assert.match(r.stderr, /^peerbuf: cannot write .*missing\/m\.yaml: ENOENT/m);
      assert.equal(r.stdout, "");
      assert.deepEqual(readdirSync(dir), []);
    });
  });

  describe("demo and EPIPE", { concurrency: true }, () => {
    it("demo prints the flagship machine's tree and matrix", async () => {
      const r = await peerbuf(["demo"]);
      assertExit(r, 0);
      const doc = parseYaml(readFileSync(join(REPO, "examples/machines/flagship.yaml"), "utf8"));
      const shown: string[] = [];
      const walk = (v: unknown) => {
        if (Array.isArray(v)) v.forEach(walk);
        else if (v && typeof v === "object") {
          const o = v as Record<string, unknown>;
          const cls = typeof o["class"] === "string" ? Number.parseInt(o["class"], 16) : -1;
          // gpu, nic, nvme, accel: the kinds the demo shows
          if (typeof o["bdf"] === "string" && [0x03, 0x02, 0x12].includes(cls >> 16))
            shown.push(o["bdf"]);
          else if (typeof o["bdf"] === "string" && cls >> 8 === 0x0108) shown.push(o["bdf"]);
          Object.values(o).forEach(walk);
        }
      };
      walk(doc);
      assert.ok(shown.length >= 16, `only ${shown.length} devices in flagship.yaml`);
      assert.match(r.stdout, /Rows are providers/);
      const legend = r.stdout.slice(r.stdout.indexOf("Devices:"));
      for (const b of shown) assert.ok(legend.includes(b), `${b} is not in the matrix`);
    });

    it("a reader that goes away early (| head -1) gets no stack trace", async () => {
      // 2,048 functions: the tree is far larger than a pipe's buffer
      const functions: { bdf: string; class: string; id: string }[] = [];
      const hostBridges: { bus: string }[] = [];
      for (let b = 0; b < 8; b++) {
        const bus = (b * 16).toString(16).padStart(2, "0");
        hostBridges.push({ bus: `0000:${bus}` });
        for (let d = 0; d < 32; d++)
          for (let f = 0; f < 8; f++)
            functions.push({
              bdf: `0000:${bus}:${d.toString(16).padStart(2, "0")}.${f}`,
              class: "0x020000",
              id: "8086:10d3",
            });
      }
      const big = join(tmp, "big.json");
      writeFileSync(big, JSON.stringify({ schemaVersion: 1, hostBridges, functions }));
      const r = await peerbuf(["tree", "--no-collapse", "--input", big], {
        closeStdoutEarly: true,
      });
      assert.equal(r.timedOut, false);
      const got = (r.stdout.match(BDF_RE) ?? []).length;
      assert.ok(got > 0 && got < functions.length, `read ${got} of ${functions.length} functions`);
      assert.deepEqual(stackLines(r.stderr), [], show(r));
      assert.doesNotMatch(r.stderr, /EPIPE|Error/, show(r));
      assert.equal(r.code, 0, show(r));
    });
  });
});
