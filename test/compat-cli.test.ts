/**
 * `peerbuf compat` as a user runs it: the JSON document (data.cells), the text matrix with its
 * legend, the options, exit codes, the flagship (8 accelerators and 2 host rows x 18 importers)
 * timed, and gpu-box's vfio-pci row (mainline) or its absence (6.1) and its amdgpu column.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { type CliResult, peerbuf, peerbufOnce, show, stackLines } from "./support/cli.ts";

const BOX = "examples/machines/accel-box.yaml";
const FLAGSHIP = "examples/machines/flagship.yaml";
const GPU_BOX = "examples/machines/gpu-box.yaml";

interface Cell {
  exporter: string;
  importer: string;
  outcome: string;
  errno?: string;
  stage: string;
  findings: { code: string }[];
  mapType: string | null;
  addressKinds: string[];
  via: string;
  importerBdf: string;
  exporterBdf: string | null;
  dma?: { fault: string | null; landed: boolean };
}

function json(r: CliResult): {
  schemaVersion: number;
  tool: { name: string };
  input: Record<string, unknown>;
  data: {
    exporters: { name: string; bdf: string | null; how: string }[];
    importers: { name: string; bdf: string; how: string }[];
    notExporting: {
      name: string;
      bdf: string | null;
      how: string;
      modelled: boolean;
      errno?: string;
      reason: string;
    }[];
    cells: Cell[];
    leaks: unknown[];
  };
} {
  assert.equal(r.code, 0, `exit 0: ${show(r)}`);
  try {
    return JSON.parse(r.stdout);
  } catch (e) {
    assert.fail(`stdout is one JSON document (${(e as Error).message}): ${show(r)}`);
  }
}

describe("peerbuf compat --json", () => {
  it("accel-box: one cell per exporter x importer, refusals with errno and findings", async () => {
    const r = await peerbufOnce(["compat", "--input", BOX, "--json"]);
    const doc = json(r);
    assert.equal(doc.schemaVersion, 1, "schemaVersion 1");
    assert.equal(doc.tool.name, "peerbuf", "tool name");
    assert.equal(r.stderr, "", `nothing on stderr: ${show(r)}`);
    const { exporters, importers, cells, leaks } = doc.data;
    assert.deepEqual(
      exporters.map((e) => e.name),
      ["accel0", "host", "host-udmabuf"],
      "the accelerator and host memory (system heap, udmabuf) export",
    );
    assert.deepEqual(
      importers.map((i) => i.name),
      ["accel0", "nic0", "nic1"],
      "the accelerator and both NICs import",
    );
    assert.equal(cells.length, 3 * 3 - 1, "every pair but the accelerator with itself");
    assert.deepEqual(leaks, [], "nothing left behind");
    for (const c of cells) {
      for (const k of ["exporter", "importer", "outcome", "findings"] as const)
        assert.ok(k in c, `cell has ${k}: ${JSON.stringify(c)}`);
      assert.ok(Array.isArray(c.findings), `findings is a list: ${JSON.stringify(c)}`);
      if (c.outcome === "refused")
        assert.ok(
          c.errno && c.findings.length > 0,
          `refused with errno and findings: ${JSON.stringify(c)}`,
        );
      else assert.ok(!("errno" in c), `errno only when refused: ${JSON.stringify(c)}`);
    }
    // the switch-local NIC: ACS redirect (IOMMU on) to a root complex not on the allowlist
    const nic0 = cells.find((c) => c.exporter === "accel0" && c.importer === "nic0");
    assert.deepEqual(
      [nic0?.outcome, nic0?.errno, nic0?.stage, nic0?.via],
      ["refused", "EPERM", "registration", "rdma-odp"],
      `accel0 -> nic0: ${JSON.stringify(nic0)}`,
    );
    assert.ok(
      nic0?.findings.some((f) => f.code === "acs-redirect"),
      `the findings name the ACS redirect: ${JSON.stringify(nic0?.findings)}`,
    );
    for (const c of cells.filter((x) => x.exporter.startsWith("host")))
      assert.equal(c.outcome, "iommu", `host memory through the IOMMU: ${JSON.stringify(c)}`);
    const hostToAccel = cells.find((c) => c.exporter === "host" && c.importer === "accel0");
    assert.equal(
      hostToAccel?.via,
      "accel-import",
      `the accelerator imports through its (modelled) import: ${JSON.stringify(hostToAccel)}`,
    );
  });

  it("what-ifs reach the model: --iommu off and --cmdline", async () => {
    const off = json(await peerbufOnce(["compat", "--input", BOX, "--json", "--iommu", "off"]));
    const local = off.data.cells.find((c) => c.exporter === "accel0" && c.importer === "nic0");
    assert.equal(
      local?.outcome,
      "bus-address",
      `no IOMMU, no ACS redirect: ${JSON.stringify(local)}`,
    );
    const host = off.data.cells.find((c) => c.exporter === "host");
    assert.equal(host?.outcome, "physical", `RAM by physical address: ${JSON.stringify(host)}`);
    assert.equal(
      off.input["iommu"],
      "off",
      `the input label records the what-if: ${JSON.stringify(off.input)}`,
    );
  });

  it("--exporter and --importer-mode static", async () => {
    const doc = json(
      await peerbuf([
        "compat",
        "--input",
        BOX,
        "--json",
        "--exporter",
        "accel0",
        "--importer-mode",
        "static",
      ]),
    );
    assert.deepEqual(
      [...new Set(doc.data.cells.map((c) => c.exporter))],
      ["accel0"],
      "one exporter's row",
    );
    for (const c of doc.data.cells) {
      assert.equal(c.via, "kernel-static", `static importers: ${JSON.stringify(c)}`);
      assert.deepEqual(
        [c.outcome, c.errno, c.stage],
        ["refused", "EPERM", "map"],
        `a static importer cannot map device memory: ${JSON.stringify(c)}`,
      );
    }
  });

  it("GPUs whose driver has no exporter model are columns only, and said so", async () => {
    const doc = json(
      await peerbuf(["compat", "--input", "examples/machines/workstation.yaml", "--json"]),
    );
    const d = doc.data;
    assert.deepEqual(
      d.exporters.map((e) => e.name),
      ["host", "host-udmabuf"],
      "only host memory exports",
    );
    assert.deepEqual(
      d.notExporting.map((e) => `${e.name} ${e.how}`),
      ["gpu0 driver nvidia", "gpu1 driver nvidia"],
      `the nvidia GPUs are listed: ${JSON.stringify(d.notExporting)}`,
    );
    assert.ok(
      d.notExporting.every((e) => !e.modelled && !("errno" in e)),
      `no exporter model, no errno: ${JSON.stringify(d.notExporting)}`,
    );
  });

  it("gpu-box, mainline: the Alveo on vfio-pci is a row (refused EOPNOTSUPP without MOVE_NOTIFY, IOVAs with it); the W7900 column imports through amdgpu", async () => {
    for (const moveNotify of [false, true]) {
      const args = ["compat", "--input", GPU_BOX, "--json", "--kernel", "mainline"];
      const doc = json(await peerbuf(moveNotify ? [...args, "--move-notify"] : args));
      const { exporters, importers, cells, leaks, notExporting } = doc.data;
      const what = `MOVE_NOTIFY=${moveNotify ? "y" : "n"}`;
      assert.deepEqual(leaks, [], `${what}: nothing left behind`);
      assert.deepEqual(notExporting, [], `${what}: every GPU and accelerator exports`);
      assert.deepEqual(
        exporters.map((e) => e.name),
        ["gpu0", "accel0", "accel1", "host", "host-udmabuf"],
        `${what}: the W7900, the Gaudi2, the Alveo (vfio-pci) and host memory`,
      );
      const alveo = exporters.find((e) => e.bdf === "0000:07:00.0");
      assert.match(alveo?.how ?? "", /^vfio-pci BAR0/, `${what}: ${JSON.stringify(alveo)}`);
      const gpu = importers.find((i) => i.name === "gpu0");
      assert.match(gpu?.how ?? "", /^amdgpu .*PRIME/, `${what}: ${JSON.stringify(gpu)}`);
      const row = cells.filter((c) => c.exporter === "accel1");
      assert.equal(row.length, 4, `${what}: the Alveo against 4 importers`);
      for (const c of row)
        if (moveNotify)
          assert.deepEqual(
            [c.outcome, c.mapType, c.dma?.landed],
            ["iommu", "through-host-bridge", true],
            `${what}: IOVAs into the BAR: ${JSON.stringify(c)}`,
          );
        else
          assert.deepEqual(
            [c.outcome, c.errno],
            ["refused", "EOPNOTSUPP"],
            `${what}: the pin at map is refused: ${JSON.stringify(c)}`,
          );
      const hbm = cells.find((c) => c.exporter === "accel0" && c.importer === "gpu0");
      assert.deepEqual(
        [hbm?.via, hbm?.outcome, hbm?.dma?.landed],
        ["amdgpu-prime", "iommu", true],
        `${what}: Gaudi2 HBM → W7900 by SDMA copy: ${JSON.stringify(hbm)}`,
      );
    }
  });

  it("gpu-box, its kernel (6.1): no vfio-pci dma-buf, so the Alveo is not a row; JSON and text say ENOTTY; --exporter says why", async () => {
    const doc = json(await peerbuf(["compat", "--input", GPU_BOX, "--json"]));
    assert.equal((doc.data as { kernel?: string }).kernel, "6.1", "gpu-box boots the 6.1 profile");
    assert.ok(
      !doc.data.exporters.some((e) => e.bdf === "0000:07:00.0"),
      `no Alveo row: ${JSON.stringify(doc.data.exporters)}`,
    );
    assert.deepEqual(
      doc.data.notExporting.map((d) => [d.name, d.how, d.modelled, d.errno]),
      [["accel1", "driver vfio-pci", true, "ENOTTY"]],
      `the Alveo's export failed: ${JSON.stringify(doc.data.notExporting)}`,
    );
    assert.deepEqual(doc.data.leaks, [], "nothing left behind");
    const text = await peerbuf(["compat", "--input", GPU_BOX]);
    assert.equal(text.code, 0, `exit 0: ${show(text)}`);
    assert.ok(!/^accel1 /m.test(text.stdout), `no accel1 row: ${show(text)}`);
    assert.match(
      text.stdout,
      /Not exporting \(kernel 6\.1; no buffer, so no row\):\n {2}accel1 +0000:07:00\.0 {2}driver vfio-pci: VFIO_DEVICE_FEATURE_DMA_BUF failed with ENOTTY/,
      `the text says why: ${show(text)}`,
    );
    const one = await peerbuf(["compat", "--input", GPU_BOX, "--exporter", "accel1"]);
    assert.equal(one.code, 2, `a usage error: ${show(one)}`);
    assert.match(one.stderr, /accel1 \(0000:07:00\.0\) does not export: .*ENOTTY/, show(one));
  });

  it("flagship: 8 accelerators and host memory (heap, udmabuf) against 18 importers, quickly", async () => {
    const r = await peerbufOnce(["compat", "--input", FLAGSHIP, "--json"]);
    const doc = json(r);
    assert.equal(
      doc.data.exporters.length,
      10,
      `8 accelerators + host + host-udmabuf: ${JSON.stringify(doc.data.exporters)}`,
    );
    assert.equal(doc.data.importers.length, 18, "8 accelerators, 8 NICs, 2 NVMe");
    assert.equal(
      doc.data.cells.length,
      10 * 18 - 8,
      "every pair but the accelerators with themselves",
    );
    for (const c of doc.data.cells.filter((x) => x.importer.startsWith("accel")))
      assert.equal(c.via, "accel-import", `accelerator columns import: ${JSON.stringify(c)}`);
    assert.deepEqual(doc.data.leaks, [], "nothing left behind");
    const outcomes = new Set(doc.data.cells.map((c) => c.outcome));
    assert.ok(!outcomes.has("faults"), `no faults on the flagship: ${[...outcomes]}`);
    // the whole process (start-up, loading, booting, 172 cells) on a busy 2-core machine
    assert.ok(r.ms < 30_000, `flagship compat took ${Math.round(r.ms)} ms`);
  });
});

describe("peerbuf compat (text)", () => {
  it("accel-box: the matrix, the legend, the refusals", async () => {
    const r = await peerbufOnce(["compat", "--input", BOX]);
    assert.equal(r.code, 0, `exit 0: ${show(r)}`);
    const lines = r.stdout.split("\n");
    const row = (name: string) =>
      lines
        .find((l) => l.startsWith(`${name} `))
        ?.trim()
        .split(/\s+/);
    assert.ok(/accel0\s+nic0\s+nic1/.test(r.stdout), `a header with the importers: ${show(r)}`);
    assert.deepEqual(row("accel0"), ["accel0", "X", "-", "-"], `accel0's row: ${show(r)}`);
    assert.deepEqual(row("host"), ["host", "I", "I", "I"], `host's row: ${show(r)}`);
    assert.deepEqual(
      row("host-udmabuf"),
      ["host-udmabuf", "I", "I", "I"],
      `host-udmabuf's row: ${show(r)}`,
    );
    for (const s of [
      "Legend:",
      "  B  ",
      "  I  ",
      "  M  ",
      "  -  ",
      "Refused:",
      "Exporters:",
      "Importers:",
    ])
      assert.ok(r.stdout.includes(s), `the output has "${s}": ${show(r)}`);
    assert.match(
      r.stdout,
      /accel0: EPERM at registration .*: nic0 nic1/,
      `refusals grouped: ${show(r)}`,
    );
  });

  it("flagship: a row per exporter, h marks the host bridge", async () => {
    const r = await peerbufOnce(["compat", "--input", FLAGSHIP]);
    assert.equal(r.code, 0, `exit 0: ${show(r)}`);
    const rows = r.stdout.split("\n").filter((l) => /^(accel\d|host|host-udmabuf)\s/.test(l));
    assert.equal(rows.length, 10, `10 rows: ${show(r)}`);
    assert.ok(
      rows.every((l) => l.length === "host-udmabuf ".length + 18 * "accel0 ".length),
      `host-udmabuf does not widen the columns: ${show(r)}`,
    );
    assert.match(r.stdout, /\bBh\b/, `through-host-bridge pairs are marked: ${show(r)}`);
  });
});

describe("peerbuf compat: exit codes", () => {
  const dir = mkdtempSync(join(tmpdir(), "peerbuf-compat-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("bad input exits 3 with a message, no stack", async () => {
    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, "schemaVersion: 1\nfunctions: [ { bdf: nonsense } ]\n");
    for (const args of [
      ["compat", "--input", bad],
      ["compat", "--input", join(dir, "missing.yaml")],
    ]) {
      const r = await peerbuf(args);
      assert.equal(r.code, 3, `exit 3: ${show(r)}`);
      assert.ok(r.stderr.length > 0, `a message: ${show(r)}`);
      assert.deepEqual(stackLines(r.stderr), [], `no stack trace: ${show(r)}`);
    }
  });

  it("usage errors exit 2: not an exporter, a bad mode", async () => {
    const r = await peerbuf(["compat", "--input", BOX, "--exporter", "nic0"]);
    assert.equal(r.code, 2, `nic0 exports nothing: ${show(r)}`);
    assert.match(
      r.stderr,
      /exporters: accel0, host, host-udmabuf/,
      `the exporters are listed: ${show(r)}`,
    );
    const m = await peerbuf(["compat", "--input", BOX, "--importer-mode", "pinned", "--json"]);
    assert.equal(m.code, 2, `unknown mode: ${show(m)}`);
  });
});
