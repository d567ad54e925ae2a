/**
 * The web page of `peerbuf serve`, in Debian's Chromium driven by playwright-core: it loads a real
 * capture, a click on two devices shows the verdict the core (and so the CLI) gives for that pair,
 * what-ifs recompute it, the matrix opens the same path, dropped files load or fail with file,
 * place and reason, a scenario runs and steps, and a screenshot is not blank.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { gzipSync } from "node:zlib";
import { type Browser, chromium, type Page } from "playwright-core";
import { loadScenario } from "../../src/cli/commands/run.ts";
import { kindIndex } from "../../src/core/analysis/kinds.ts";
import { explainPair } from "../../src/core/analysis/p2p.ts";
import { InputError } from "../../src/core/errors.ts";
import { parseTextInput } from "../../src/core/formats/detect.ts";
import { ACS } from "../../src/core/hw/config-space.ts";
import { buildMachine, type Machine } from "../../src/core/hw/machine.ts";
import { bootPci, CPU_PRESETS, type PciViewOptions } from "../../src/core/kernel/pci/pci-view.ts";
import { runScenario } from "../../src/core/scenario/run-scenario.ts";
import { loadInput } from "../../src/node/load-input.ts";
import { machinePayload } from "../../src/server/examples.ts";
import { type RunningServer, startServer } from "../../src/server/server.ts";
import { REPO } from "../support/cli.ts";
import { real, skipReal } from "../support/real.ts";
import { CHROMIUM, decodePng, ensureUiBuilt, nonBackground, skipBrowser } from "./support.ts";

/** A real hwloc XML capture with 136 PCI functions on two host bridges. */
const CAPTURE = "hwloc-tests/32em64t-2n8c+dax+nvme+mic+dimms.xml";
const LSPCI = "derived/pciutils/tree-asus-p6t6.lspci-vvvnn.txt";

async function launch(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"], timeout: 60_000 });
}

async function openPage(browser: Browser, url: string): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()}`);
  });
  (page as unknown as { errors: string[] }).errors = errors;
  await page.goto(url);
  await page.waitForSelector('#app[data-state="ready"]', { timeout: 60_000 });
  await page.waitForSelector('[data-topology="main"][data-state="ready"]', { timeout: 60_000 });
  return page;
}

const pageErrors = (p: Page): string[] => (p as unknown as { errors: string[] }).errors;

/** Finds a device with the page's search box and clicks its node. */
async function clickDevice(page: Page, bdf: string): Promise<void> {
  await page.fill("[data-find]", bdf);
  await page.press("[data-find]", "Enter");
  const node = page.locator(`[data-topology="main"] g.node[data-bdf="${bdf}"]`);
  await node.waitFor({ state: "visible" });
  await node.click();
}

interface Shown {
  verdict: string | null;
  distance: string | null;
  provider: string | null;
  client: string | null;
  findings: string[];
  hops: string[];
}

async function shown(page: Page, provider: string, client: string): Promise<Shown> {
  const v = page.locator(`[data-verdict][data-provider="${provider}"][data-client="${client}"]`);
  await v.waitFor();
  return {
    verdict: await v.getAttribute("data-verdict"),
    distance: await v.getAttribute("data-distance"),
    provider: await v.getAttribute("data-provider"),
    client: await v.getAttribute("data-client"),
    findings: await page
      .locator("[data-explain] [data-finding]")
      .evaluateAll((els) => els.map((e) => e.getAttribute("data-finding") ?? "")),
    hops: await page
      .locator("[data-explain] [data-hop-bdf]")
      .evaluateAll((els) => els.map((e) => e.getAttribute("data-hop-bdf") ?? "")),
  };
}

function expected(m: Machine, opts: PciViewOptions, provider: string, client: string): Shown {
  const e = explainPair(bootPci(m, opts), m.byBdf(provider)!, m.byBdf(client)!);
  return {
    verdict: e.mapType,
    distance: String(e.distance),
    provider,
    client,
    findings: e.findings.map((f) => f.code),
    hops: e.hops.map((h) => h.bdf),
  };
}

describe("page on a real capture", { skip: skipBrowser || skipReal }, () => {
  let server: RunningServer;
  let browser: Browser;
  let page: Page;
  let machine: Machine;

  before(async () => {
    ensureUiBuilt();
    const desc = await loadInput([real(CAPTURE)]);
    machine = buildMachine(desc);
    server = await startServer({ input: machinePayload(CAPTURE, desc), port: 0 });
    browser = await launch();
    page = await openPage(browser, server.url);
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  test("the capture is drawn: every function placed, repeated devices collapsed", async () => {
    assert.equal(await page.getAttribute("#app", "data-machine"), CAPTURE);
    const svg = page.locator('[data-topology="main"] svg.topo-svg');
    assert.equal(await svg.getAttribute("data-functions"), String(machine.functions.length));
    // the whole tree (the filter of large machines off), collapse on
    await page.uncheck("[data-data-only]");
    await page.waitForSelector('[data-topology="main"][data-state="ready"]');
    const drawn = await page
      .locator('[data-topology="main"] g.node.fn')
      .evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-collapsed-count") ?? "1")));
    assert.equal(
      drawn.reduce((a, b) => a + b, 0),
      machine.functions.length,
    );
    assert.ok(drawn.length < machine.functions.length || drawn.every((n) => n === 1));
    assert.deepEqual(pageErrors(page), []);
  });

  test("clicking two devices shows the verdict the CLI gives for that pair", async () => {
    for (const [p, c] of [
      ["0000:02:00.0", "0000:02:00.3"],
      ["0000:00:02.0", "0000:02:00.0"],
      ["0000:00:02.0", "0000:82:00.0"],
    ] as const) {
      await page.keyboard.press("Escape");
      await clickDevice(page, p);
      await page.waitForSelector(`[data-prompt="client"]`);
      await clickDevice(page, c);
      assert.deepEqual(await shown(page, p, c), expected(machine, {}, p, c), `${p} -> ${c}`);
      // the path is lit on the tree, provider and client marked
      assert.ok((await page.locator('[data-topology="main"] g.node.on-path').count()) >= 2);
      assert.equal(
        await page.locator(`[data-topology="main"] g.node.sel-provider[data-bdf="${p}"]`).count(),
        1,
      );
    }
  });

  test("a what-if recomputes the verdict at once, where it should change", async () => {
    const [p, c] = ["0000:00:02.0", "0000:82:00.0"];
    const zen = CPU_PRESETS["amd-zen"]!;
    const before = expected(machine, {}, p, c);
    const after = expected(machine, { cpu: { vendor: zen.vendor!, family: zen.family! } }, p, c);
    assert.notEqual(before.verdict, after.verdict, "the fixture pair must be one the CPU decides");
    assert.deepEqual(await shown(page, p, c), before);
    await page.selectOption('[data-whatif="cpu"]', "amd-zen");
    await page.waitForSelector(`[data-verdict="${after.verdict}"]`);
    assert.deepEqual(await shown(page, p, c), after);
    // kernel profile and IOMMU mode: whatever they do, the page agrees with the core
    await page.selectOption('[data-whatif="cpu"]', "");
    for (const [sel, val, opts] of [
      ["kernel", "mainline", { profile: "mainline" }],
      ["iommu", "dma", { profile: "mainline", iommu: "dma" }],
    ] as const) {
      await page.selectOption(`[data-whatif="${sel}"]`, val);
      await page.waitForSelector(`#app[data-${sel}="${val}"]`);
      assert.deepEqual(await shown(page, p, c), expected(machine, opts, p, c), `${sel}=${val}`);
    }
    await page.click("[data-whatif-reset]");
    await page.waitForSelector('#app[data-kernel="6.1"]');
    assert.deepEqual(await shown(page, p, c), before);
  });

  test("a matrix cell opens the same path view", async () => {
    await page.click('[data-tab="matrix"]');
    const cells = page.locator("[data-matrix] g.mcell");
    const n = Number(await page.getAttribute("[data-matrix]", "data-devices"));
    assert.equal(await cells.count(), n * n);
    const [p, c] = ["0000:02:00.3", "0000:82:00.0"];
    const cell = page.locator(`[data-matrix] g.mcell[data-provider="${p}"][data-client="${c}"]`);
    const want = expected(machine, {}, p, c);
    assert.equal(await cell.getAttribute("data-map-type"), want.verdict);
    assert.equal(await cell.getAttribute("data-distance"), want.distance);
    await cell.click();
    assert.deepEqual(await shown(page, p, c), want);
    await page.click('[data-tab="topology"]');
  });

  test("a screenshot of the page is not blank", async () => {
    await page.waitForTimeout(1500); // the path animation
    const shot = decodePng(await page.screenshot());
    const { count, colours } = nonBackground(shot);
    assert.ok(count > shot.width * shot.height * 0.02, `only ${count} non-background pixels`);
    assert.ok(colours > 50, `only ${colours} colours`);
    const tree = decodePng(await page.locator('[data-topology-stage="main"]').screenshot());
    assert.ok(nonBackground(tree).count > 2000, "the tree area is blank");
  });
});

describe("page: files, examples and scenarios", { skip: skipBrowser }, () => {
  let server: RunningServer;
  let browser: Browser;
  let page: Page;

  before(async () => {
    ensureUiBuilt();
    server = await startServer({ input: null, port: 0 });
    browser = await launch();
    page = await openPage(browser, server.url);
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  async function drop(name: string, bytes: Uint8Array): Promise<void> {
    const b64 = Buffer.from(bytes).toString("base64");
    const dt = await page.evaluateHandle(`(() => {
      const bin = atob(${JSON.stringify(b64)});
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], ${JSON.stringify(name)}));
      return dt;
    })()`);
    await page.dispatchEvent("#app", "dragenter", { dataTransfer: dt });
    await page.dispatchEvent("#app", "drop", { dataTransfer: dt });
  }

  test("without --input the page opens the bundled flagship example", async () => {
    assert.equal(
      await page.getAttribute("#app", "data-machine"),
      "examples/machines/flagship.yaml",
    );
    const desc = await loadInput([`${REPO}examples/machines/flagship.yaml`]);
    assert.equal(
      await page.getAttribute('[data-topology="main"] svg.topo-svg', "data-functions"),
      String(desc.functions.length),
    );
  });

  test("dropping a malformed file shows the file, the place and the reason", async () => {
    const good = readFileSync(`${REPO}examples/machines/workstation.yaml`, "utf8");
    const bad = good.replace(/^(\s*)bdf: .*$/m, "$1bdf: [unclosed");
    const want = await parseTextInput([{ file: "broken.yaml", text: bad }]).then(
      () => assert.fail("the broken file parsed"),
      (e: unknown) => e as InputError,
    );
    assert.ok(want instanceof InputError);
    await drop("broken.yaml", new TextEncoder().encode(bad));
    const box = page.locator("[data-error]");
    await box.waitFor({ state: "visible" });
    assert.equal(await box.getAttribute("data-error-file"), "broken.yaml");
    assert.equal(await box.getAttribute("data-error-place"), want.place ?? null);
    assert.equal(await box.getAttribute("data-error-reason"), want.reason);
    assert.match((await box.textContent()) ?? "", /broken\.yaml/);
    // the page still shows the machine it had
    assert.equal((await page.locator('[data-topology="main"] g.node.fn').count()) > 0, true);
    // binary junk is refused the same way
    await drop("junk.bin", new Uint8Array([0x50, 0x4b, 0x03, 0x04, 0, 0, 1, 2, 3]));
    await page.waitForSelector('[data-error][data-error-file="junk.bin"]');
  });

  test("a dropped lspci capture (also gzipped) loads as on the command line", async () => {
    if (skipReal) return;
    const text = readFileSync(real(LSPCI));
    const desc = await loadInput([real(LSPCI)]);
    for (const [name, bytes] of [
      ["asus.lspci.txt", text],
      ["asus.lspci.txt.gz", gzipSync(text)],
    ] as const) {
      await drop(name, bytes);
      await page.waitForSelector(`#app[data-machine="${name}"][data-state="ready"]`);
      assert.equal(
        await page.getAttribute('[data-topology="main"] svg.topo-svg', "data-functions"),
        String(desc.functions.length),
      );
      assert.equal(await page.locator("[data-error]").isVisible(), false);
    }
  });

  test("a dropped hwloc-gather-topology .tar.bz2 loads as on the command line", async () => {
    if (skipReal) return;
    const file = real("hwloc-tests/32em64t-2n8c+dax+nvme+mic+dimms.tar.bz2");
    const desc = await loadInput([file]);
    await drop("gathered.tar.bz2", readFileSync(file));
    await page.waitForSelector('#app[data-machine="gathered.tar.bz2"][data-state="ready"]');
    assert.equal(
      await page.getAttribute('[data-topology="main"] svg.topo-svg', "data-functions"),
      String(desc.functions.length),
      "the same functions as loadInput",
    );
    assert.equal(await page.locator("[data-error]").isVisible(), false, "no error shown");
  });

  test("a dropped sysfs tarball (Linux 6.1 capture): IOMMU and ACS what-ifs as the core says", async () => {
    const file = `${REPO}test/fixtures/kernel-oracle/switch_acs_dsp_iommu/sysfs.tar.gz`;
    const m = buildMachine(await loadInput([file]));
    const labels = kindIndex(m.functions);
    const fn = (label: string) => [...labels].find(([, l]) => l === label)![0].name;
    const [p, c] = [fn("nvme0"), fn("nic0")];
    await drop("capture.tar.gz", readFileSync(file));
    await page.waitForSelector('#app[data-machine="capture.tar.gz"][data-state="ready"]');
    await page.click('[data-tab="topology"]');
    await page.keyboard.press("Escape");
    await clickDevice(page, p);
    await clickDevice(page, c);
    const captured = expected(m, {}, p, c);
    assert.deepEqual(await shown(page, p, c), captured);
    // IOMMU off: Linux leaves ACS redirect clear, the switch turns the requests around
    const off = expected(m, { iommu: "off" }, p, c);
    assert.notEqual(off.verdict, captured.verdict);
    await page.selectOption('[data-whatif="iommu"]', "off");
    await page.waitForSelector(`[data-verdict="${off.verdict}"][data-provider="${p}"]`);
    assert.deepEqual(await shown(page, p, c), off);
    await page.selectOption('[data-whatif="iommu"]', "");
    await page.waitForSelector(`[data-verdict="${captured.verdict}"][data-provider="${p}"]`);
    // clearing the redirect bits of the redirecting port, one toggle at a time
    const view = bootPci(m);
    const e = explainPair(view, m.byBdf(p)!, m.byBdf(c)!);
    const port = e.hops.find((h) => h.redirects === true);
    assert.ok(port, "the captured path has a redirecting port");
    let word = view.acsCtrl(m.byBdf(port.bdf)!)!;
    for (const bit of ["RR", "CR", "EC"] as const) {
      if ((word & ACS[bit]) === 0) continue;
      word &= ~ACS[bit];
      await page.uncheck(`[data-explain] [data-acs-bdf="${port.bdf}"][data-acs-bit="${bit}"]`);
      await page.waitForSelector(`[data-acs-override="${port.bdf}"]`);
    }
    const cleared = expected(m, { setAcs: new Map([[port.bdf, word]]) }, p, c);
    assert.deepEqual(await shown(page, p, c), cleared);
    assert.equal(
      await page.getAttribute(`[data-explain] [data-acs-bits="${port.bdf}"]`, "data-acs-bits"),
      port.bdf,
    );
    assert.match(
      (await page.textContent(`[data-explain] [data-acs-bits="${port.bdf}"]`)) ?? "",
      /RR- CR-/,
    );
  });

  test("a scenario runs in the page and steps through its trace and the buffer's path", async () => {
    const loaded = await loadScenario(`${REPO}examples/scenarios/flagship.yaml`);
    const r = runScenario(loaded.scenario, loaded.descs);
    await page.click('[data-tab="scenario"]');
    await page.selectOption("[data-scenario-select]", "flagship.yaml");
    await page.waitForSelector('[data-scenario][data-state="ready"]', { timeout: 60_000 });
    assert.equal(await page.getAttribute("[data-steps]", "data-steps"), String(r.steps.length));
    assert.equal(
      await page.getAttribute("[data-scenario-passed]", "data-scenario-passed"),
      String(r.passed),
    );
    const k = r.steps.findIndex((s) => s.events.some((e) => e.ev === "p2pdma:verdict"));
    assert.ok(k >= 0, "the flagship scenario has a P2PDMA verdict");
    const v = r.steps[k]!.events.find((e) => e.ev === "p2pdma:verdict")!.data!;
    await page.click(`[data-timeline] [data-step="${k}"]`);
    await page.waitForSelector(`[data-scenario][data-step="${k}"]`);
    const path = page.locator("[data-buffer-path]");
    await page.waitForSelector(`[data-buffer-path][data-provider="${v["provider"]}"]`);
    assert.equal(await path.getAttribute("data-client"), String(v["client"]));
    assert.equal(await path.getAttribute("data-map-type"), String(v["mapType"]));
    await page.waitForSelector('[data-topology="scenario"][data-state="ready"]');
    assert.ok((await page.locator('[data-topology="scenario"] g.node.on-path').count()) >= 2);
    // the step's trace lines are the ones the CLI prints
    const lines = await page.locator("[data-step-detail] [data-event]").count();
    assert.equal(lines, r.steps[k]!.events.length);
    // stepping on with the button
    await page.click('[data-step-nav="next"]');
    await page.waitForSelector(`[data-scenario][data-step="${k + 1}"]`);
    assert.deepEqual(pageErrors(page), []);
  });
});
