/**
 * peerbuf's web page: the machine's topology, the path and verdict for any pair, the pairwise
 * matrix, what-if controls and scenarios — computed here, in the browser, by the same core as
 * the CLI. The server (peerbuf serve) only hands over machine descriptions and examples.
 */

import "./zod-setup.ts";
import "./style.css";
import { type DeviceKind, kindOf } from "../../src/core/analysis/kinds.ts";
import { explainPair } from "../../src/core/analysis/p2p.ts";
import { InputError } from "../../src/core/errors.ts";
import { formatAcsBits } from "../../src/core/hw/config-space.ts";
import type { IommuMode, PciFunction } from "../../src/core/hw/machine.ts";
import { type BootedPci, CPU_PRESETS } from "../../src/core/kernel/pci/pci-view.ts";
import { PROFILES } from "../../src/core/kernel/profile.ts";
import { clear, h } from "./dom.ts";
import { renderExplain } from "./explain-view.ts";
import { loadFiles, readPicked } from "./load-file.ts";
import { renderMatrix } from "./matrix-view.ts";
import {
  describeError,
  IOMMU_CHOICES,
  Loaded,
  type MachinePayload,
  type NameTable,
  NO_WHAT_IF,
  type ShownError,
  type WhatIf,
} from "./model.ts";
import { type ScenarioPayload, ScenarioView } from "./scenario-view.ts";
import { TopologyView } from "./topology.ts";

interface ExampleEntry {
  readonly file: string;
  readonly title: string;
  readonly summary: string;
}

type Tab = "topology" | "matrix" | "scenario";

/** Kinds kept by the "devices that move data" filter (bridges above them are kept too). */
const DATA_KINDS: readonly DeviceKind[] = ["gpu", "nic", "nvme", "accel", "storage"];

async function getJson<T>(path: string): Promise<T> {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  const body = (await r.json().catch(() => null)) as {
    error?: { message?: string; data?: { file?: string; place?: string; reason?: string } };
  } | null;
  if (!r.ok) {
    const d = body?.error?.data;
    if (d?.file && d.reason)
      throw new InputError({ file: d.file, ...(d.place ? { place: d.place } : {}) }, d.reason);
    throw new Error(body?.error?.message ?? `${path}: HTTP ${r.status}`);
  }
  return body as T;
}

class App {
  readonly root: HTMLElement;
  loaded: Loaded | undefined;
  view: BootedPci | undefined;
  whatIf: WhatIf = NO_WHAT_IF;
  provider: string | undefined;
  client: string | undefined;
  tab: Tab = "topology";
  collapse = true;
  dataOnly = false;
  matrixDirty = true;
  inputPayload: MachinePayload | null = null;
  examples: { machines: ExampleEntry[]; scenarios: ExampleEntry[] } = {
    machines: [],
    scenarios: [],
  };

  readonly topo = new TopologyView("main");
  readonly scenario = new ScenarioView();
  readonly source = h("select", { "data-source": "", "aria-label": "machine" });
  readonly fileInput = h("input", {
    type: "file",
    multiple: true,
    hidden: true,
    "data-file-input": "",
  });
  readonly sourceLabel = h("span", { class: "source-label", "data-source-label": "" });
  readonly errorBox = h("div", { class: "error", "data-error": "", hidden: true, role: "alert" });
  readonly notes = h("div", { class: "notes", "data-notes": "" });
  readonly whatIfBar = h("div", { class: "whatif", "data-whatif-bar": "" });
  readonly side = h("aside", { class: "side", "data-side": "" });
  readonly matrixPane = h("div", { class: "pane", "data-pane": "matrix" });
  readonly topoPane = h("div", { class: "pane", "data-pane": "topology" });
  readonly scenarioPane = h("div", { class: "pane", "data-pane": "scenario" });
  readonly scenarioSelect = h("select", { "data-scenario-select": "" });
  readonly tabs = h("nav", { class: "tabs" });
  readonly dataOnlyBox = h("input", { type: "checkbox", "data-data-only": "" });
  readonly overlay = h("div", { class: "drop-overlay", "data-drop-overlay": "" }, "Drop a capture");

  constructor(root: HTMLElement) {
    this.root = root;
    this.topo.onPick = (f) => this.pick(f);
    const open = h("button", { type: "button", "data-open-file": "" }, "Open file…");
    open.addEventListener("click", () => this.fileInput.click());
    this.fileInput.addEventListener("change", () => {
      const files = [...(this.fileInput.files ?? [])];
      this.fileInput.value = "";
      if (files.length) void this.openFiles(files);
    });
    this.source.addEventListener("change", () => void this.openSource(this.source.value));
    const collapse = h("input", { type: "checkbox", checked: true, "data-collapse": "" });
    collapse.addEventListener("change", () => {
      this.collapse = collapse.checked;
      void this.redraw();
    });
    const dataOnly = this.dataOnlyBox;
    dataOnly.addEventListener("change", () => {
      this.dataOnly = dataOnly.checked;
      void this.redraw();
    });
    for (const t of ["topology", "matrix", "scenario"] as const) {
      const b = h("button", { type: "button", "data-tab": t }, t[0]!.toUpperCase() + t.slice(1));
      b.addEventListener("click", () => this.showTab(t));
      this.tabs.append(b);
    }
    const find = h("input", {
      type: "search",
      "data-find": "",
      placeholder: "find: BDF, gpu0, name…",
      size: 18,
    });
    find.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") this.find(find.value);
    });
    this.topoPane.append(
      h(
        "div",
        { class: "topo-options" },
        find,
        h("label", {}, collapse, " collapse repeated devices"),
        h("label", {}, dataOnly, " only GPUs, NICs, NVMe, storage, accelerators"),
        h(
          "span",
          { class: "dim" },
          "Click a device (provider: whose memory), then another (client: who does the DMA). Scroll to zoom, drag to pan.",
        ),
      ),
      this.topo.el,
    );
    this.scenarioSelect.addEventListener("change", () => void this.openScenario());
    this.scenarioPane.append(
      h(
        "div",
        { class: "sc-pick" },
        h("label", {}, "scenario ", this.scenarioSelect),
        h(
          "span",
          { class: "dim" },
          " runs in this page: step through its kernel trace; the buffer's path is drawn on the topology (flagship.yaml is what npm start shows)",
        ),
      ),
      this.scenario.el,
    );
    clear(root);
    root.append(
      h(
        "header",
        {},
        h("h1", {}, "peerbuf"),
        h("label", {}, "machine ", this.source),
        open,
        this.fileInput,
        this.sourceLabel,
      ),
      this.whatIfBar,
      this.errorBox,
      this.notes,
      this.tabs,
      h("main", {}, this.topoPane, this.matrixPane, this.scenarioPane, this.side),
      this.overlay,
    );
    this.wireDrop();
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") this.clearPair();
      if (ev.key === "Enter") {
        const g = (ev.target as Element | null)?.closest?.<SVGGElement>("g.node[data-bdf]");
        const f = g ? this.loaded?.machine.byBdf(g.dataset["bdf"]!) : undefined;
        if (f) this.pick(f);
      }
    });
    this.showTab("topology");
  }

  async start(): Promise<void> {
    this.root.dataset["state"] = "loading";
    try {
      const [input, examples] = await Promise.all([
        getJson<{ input: MachinePayload | null }>("api/input"),
        getJson<{ machines: ExampleEntry[]; scenarios: ExampleEntry[] }>("api/examples"),
      ]);
      this.inputPayload = input.input;
      this.examples = examples;
    } catch (e) {
      this.showError(describeError(e, "Could not reach the peerbuf server"));
    }
    this.fillSources();
    const first = this.inputPayload
      ? "input"
      : this.examples.machines.some((m) => m.file === "flagship.yaml")
        ? "machines/flagship.yaml"
        : this.examples.machines[0]
          ? `machines/${this.examples.machines[0].file}`
          : null;
    if (first) await this.openSource(first);
    else this.root.dataset["state"] = "ready";
  }

  fillSources(): void {
    clear(this.source);
    if (this.inputPayload)
      this.source.append(h("option", { value: "input" }, `--input: ${this.inputPayload.label}`));
    const g = h("optgroup", { label: "bundled examples" });
    for (const m of this.examples.machines)
      g.append(h("option", { value: `machines/${m.file}`, title: m.summary }, m.title));
    this.source.append(g);
    this.source.append(h("option", { value: "file", hidden: true }, "(a file)"));
    clear(this.scenarioSelect);
    this.scenarioSelect.append(h("option", { value: "" }, "— pick a bundled scenario —"));
    for (const s of this.examples.scenarios)
      this.scenarioSelect.append(h("option", { value: s.file, title: s.summary }, s.title));
  }

  async openSource(value: string): Promise<void> {
    try {
      this.root.dataset["state"] = "loading";
      let payload: MachinePayload;
      if (value === "input" && this.inputPayload) payload = this.inputPayload;
      else if (value.startsWith("machines/"))
        payload = await getJson<MachinePayload>(
          `api/examples/machines/${encodeURIComponent(value.slice(9))}`,
        );
      else return;
      this.source.value = value;
      await this.setLoaded(Loaded.fromPayload(payload));
    } catch (e) {
      this.showError(describeError(e, "Could not open this machine"));
      this.root.dataset["state"] = "error";
    }
  }

  async openFiles(files: readonly File[]): Promise<void> {
    const label = files.map((f) => f.name).join(", ");
    try {
      this.root.dataset["state"] = "loading";
      const desc = await loadFiles(await readPicked(files));
      const ids = [
        ...new Set(
          desc.functions
            .filter((f) => f.vendor !== undefined && f.device !== undefined)
            .map(
              (f) =>
                `${f.vendor!.toString(16).padStart(4, "0")}:${f.device!.toString(16).padStart(4, "0")}`,
            ),
        ),
      ];
      let names: NameTable = { vendors: {}, devices: {} };
      try {
        names = await getJson<NameTable>(`api/names?ids=${ids.slice(0, 2000).join(",")}`);
      } catch {
        // names are a nicety; the analysis does not need them
      }
      const loaded = new Loaded(label, desc, names);
      this.source.value = "file";
      await this.setLoaded(loaded);
    } catch (e) {
      this.showError(describeError(e, `Could not load ${label}`));
      this.root.dataset["state"] = "error";
    }
  }

  async setLoaded(l: Loaded): Promise<void> {
    this.hideError();
    this.loaded = l;
    this.whatIf = NO_WHAT_IF;
    this.provider = undefined;
    this.client = undefined;
    this.root.dataset["machine"] = l.label;
    this.sourceLabel.textContent = `${l.desc.name ?? ""} · ${l.machine.functions.length} functions · ${l.desc.source?.format ?? ""}`;
    clear(this.notes);
    const unknowns = l.desc.unknowns ?? [];
    if (unknowns.length > 0)
      this.notes.append(
        h(
          "details",
          {},
          h(
            "summary",
            {},
            `${unknowns.length} fact(s) this input does not have: verdicts that rest on them say so`,
          ),
          ...unknowns.map((u) => h("div", { class: "note", "data-unknown": "" }, `unknown: ${u}`)),
        ),
      );
    // large machines open on the devices that move data (and the bridges above them)
    const data = l.machine.functions.filter((f) => DATA_KINDS.includes(kindOf(f.desc))).length;
    this.dataOnly = data > 0 && l.machine.functions.length > 60;
    this.dataOnlyBox.checked = this.dataOnly;
    this.recompute();
    await this.redraw();
    this.root.dataset["state"] = "ready";
  }

  /** Boots the view with the what-ifs and refreshes everything that depends on it. */
  recompute(): void {
    const l = this.loaded;
    if (!l) return;
    try {
      this.view = l.boot(this.whatIf);
      this.hideError();
    } catch (e) {
      this.showError(describeError(e, "This what-if cannot be applied"));
      return;
    }
    const v = this.view;
    this.root.dataset["kernel"] = v.profile.id;
    this.root.dataset["iommu"] = v.iommu ?? "unknown";
    this.renderWhatIf();
    this.topo.update(v);
    this.matrixDirty = true;
    if (this.tab === "matrix") this.renderMatrixPane();
    this.renderSide();
  }

  async redraw(): Promise<void> {
    if (!this.loaded || !this.view) return;
    await this.topo.show(this.loaded, this.view, {
      collapse: this.collapse,
      ...(this.dataOnly ? { kinds: DATA_KINDS } : {}),
    });
  }

  setWhatIf(w: { [K in keyof WhatIf]?: WhatIf[K] | undefined }): void {
    const next: Record<string, unknown> = { ...this.whatIf, ...w };
    for (const k of Object.keys(next)) if (next[k] === undefined) delete next[k];
    this.whatIf = next as unknown as WhatIf;
    this.recompute();
  }

  renderWhatIf(): void {
    const l = this.loaded;
    const v = this.view;
    if (!l || !v) return;
    const w = this.whatIf;
    const sel = (
      name: string,
      current: string | undefined,
      captured: string,
      options: readonly (readonly [string, string])[],
      set: (v: string | undefined) => void,
    ) => {
      const el = h("select", { "data-whatif": name });
      el.append(h("option", { value: "" }, `as captured (${captured})`));
      for (const [val, text] of options)
        el.append(h("option", { value: val, selected: val === current }, text));
      el.addEventListener("change", () => set(el.value === "" ? undefined : el.value));
      return h("label", {}, `${name} `, el);
    };
    const cpu = l.desc.cpu;
    const cmd = h("input", {
      type: "text",
      "data-whatif": "cmdline",
      size: 40,
      placeholder: l.desc.cmdline ?? "(captured command line unknown)",
      value: w.cmdline ?? "",
    });
    const applyCmd = () =>
      this.setWhatIf({ cmdline: cmd.value.trim() === "" ? undefined : cmd.value });
    cmd.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") applyCmd();
    });
    cmd.addEventListener("change", applyCmd);
    const reset = h("button", { type: "button", "data-whatif-reset": "" }, "reset what-ifs");
    reset.addEventListener("click", () => {
      this.whatIf = NO_WHAT_IF;
      this.recompute();
    });
    const acs = h("span", { class: "acs-overrides", "data-acs-overrides": w.setAcs.size });
    for (const [bdf, word] of w.setAcs) {
      const x = h("button", { type: "button", title: "remove this override" }, "×");
      x.addEventListener("click", () => {
        const m = new Map(w.setAcs);
        m.delete(bdf);
        this.setWhatIf({ setAcs: m });
      });
      acs.append(
        h("span", { class: "chip", "data-acs-override": bdf }, `${bdf}=${formatAcsBits(word)} `, x),
      );
    }
    clear(this.whatIfBar);
    this.whatIfBar.append(
      h("b", {}, "what if: "),
      sel(
        "kernel",
        w.kernel,
        l.desc.kernel?.profile ?? "6.1",
        Object.keys(PROFILES).map((k) => [k, k] as const),
        (x) => this.setWhatIf({ kernel: x }),
      ),
      sel(
        "cpu",
        w.cpu,
        cpu?.vendor
          ? `${cpu.vendor}${cpu.family !== undefined ? ` family ${cpu.family}` : ""}`
          : "unknown",
        Object.entries(CPU_PRESETS).map(([k, p]) => [k, p.label] as const),
        (x) => this.setWhatIf({ cpu: x }),
      ),
      sel(
        "iommu",
        w.iommu,
        l.desc.iommu?.mode ?? "unknown",
        IOMMU_CHOICES.map((k) => [k, k] as const),
        (x) => this.setWhatIf({ iommu: x as IommuMode | undefined }),
      ),
      h("label", {}, "cmdline ", cmd),
      acs,
      reset,
      h(
        "span",
        { class: "dim", "data-effective": "" },
        ` kernel ${v.profile.id} · IOMMU ${v.iommu ?? "unknown"} · CPU ${v.cpu.vendor ?? "unknown"}${v.cpu.family !== undefined ? ` 0x${v.cpu.family.toString(16)}` : ""}`,
      ),
    );
  }

  /** Shows a device given as a BDF (full or bus:dev.fn), a label (gpu0) or a name fragment. */
  find(text: string): void {
    const l = this.loaded;
    const t = text.trim().toLowerCase();
    if (!l || t === "") return;
    const f =
      l.machine.byBdf(t) ??
      l.machine.byBdf(`0000:${t}`) ??
      l.machine.functions.find((x) => l.labelOf(x) === t) ??
      l.machine.functions.find((x) => l.nameOf(x).toLowerCase().includes(t));
    if (!f) {
      this.showError({ title: "Not found", reason: `no device matches "${text}"` });
      return;
    }
    this.hideError();
    if (this.dataOnly && !this.topo.has(f.name)) {
      this.dataOnly = false;
      this.dataOnlyBox.checked = false;
      void this.redraw().then(() => this.topo.reveal(f.name));
    } else this.topo.reveal(f.name);
  }

  pick(f: PciFunction): void {
    if (this.provider === undefined || this.client !== undefined) {
      this.provider = f.name;
      this.client = undefined;
    } else this.client = f.name;
    this.renderSide();
    if (this.tab === "matrix") this.renderMatrixPane();
  }

  pickPair(p: PciFunction, c: PciFunction): void {
    this.provider = p.name;
    this.client = c.name;
    this.renderSide();
    if (this.tab === "matrix") this.renderMatrixPane();
    this.topo.reveal(p.name);
  }

  clearPair(): void {
    this.provider = undefined;
    this.client = undefined;
    this.renderSide();
  }

  renderSide(): void {
    clear(this.side);
    const l = this.loaded;
    const v = this.view;
    if (!l || !v) return;
    const p = this.provider ? l.machine.byBdf(this.provider) : undefined;
    const c = this.client ? l.machine.byBdf(this.client) : undefined;
    if (!p || !c) {
      this.topo.mark(p ? { provider: p.name } : {});
      this.side.append(
        h(
          "div",
          { class: "prompt", "data-prompt": p ? "client" : "provider" },
          p
            ? h(
                "span",
                {},
                "Provider ",
                h("code", {}, p.name),
                ` ${l.labelOf(p)} ${l.nameOf(p)}. Now click the client: the device that does the DMA.`,
              )
            : "Click a device to choose the provider (whose memory is the DMA target), then a second one, the client. Or click a cell of the matrix.",
        ),
      );
      return;
    }
    const e = explainPair(v, p, c);
    this.side.append(
      renderExplain(l, v, e, {
        onAcs: (bdf, word) => {
          const m = new Map(this.whatIf.setAcs);
          m.set(bdf, word);
          this.setWhatIf({ setAcs: m });
        },
        onSwap: () => {
          this.provider = c.name;
          this.client = p.name;
          this.renderSide();
        },
        onClear: () => this.clearPair(),
      }),
    );
    this.topo.mark({
      provider: p.name,
      client: c.name,
      hops: e.hops,
      hostBridges: [...new Set([p.hostBridge.id, c.hostBridge.id])],
      mapType: e.mapType,
    });
  }

  renderMatrixPane(): void {
    const l = this.loaded;
    const v = this.view;
    clear(this.matrixPane);
    if (!l || !v) return;
    this.matrixPane.append(
      renderMatrix(
        l,
        v,
        {
          ...(this.provider ? { provider: this.provider } : {}),
          ...(this.client ? { client: this.client } : {}),
        },
        (p, c) => this.pickPair(p, c),
      ),
    );
    this.matrixDirty = false;
  }

  showTab(t: Tab): void {
    this.tab = t;
    this.root.dataset["tab"] = t;
    for (const b of this.tabs.querySelectorAll<HTMLElement>("[data-tab]"))
      b.classList.toggle("active", b.dataset["tab"] === t);
    this.topoPane.hidden = t !== "topology";
    this.matrixPane.hidden = t !== "matrix";
    this.scenarioPane.hidden = t !== "scenario";
    this.side.hidden = t === "scenario";
    if (t === "matrix") this.renderMatrixPane();
    if (t === "topology") requestAnimationFrame(() => this.topo.fit("width"));
  }

  async openScenario(): Promise<void> {
    const file = this.scenarioSelect.value;
    if (!file) return;
    try {
      this.scenario.el.dataset["state"] = "loading";
      const p = await getJson<ScenarioPayload>(
        `api/examples/scenarios/${encodeURIComponent(file)}`,
      );
      await this.scenario.open(p);
      this.hideError();
    } catch (e) {
      this.scenario.el.dataset["state"] = "error";
      this.showError(describeError(e, `Could not run scenario ${file}`));
    }
  }

  showError(e: ShownError): void {
    clear(this.errorBox);
    this.errorBox.hidden = false;
    if (e.file !== undefined) this.errorBox.dataset["errorFile"] = e.file;
    else delete this.errorBox.dataset["errorFile"];
    if (e.place !== undefined) this.errorBox.dataset["errorPlace"] = e.place;
    else delete this.errorBox.dataset["errorPlace"];
    this.errorBox.dataset["errorReason"] = e.reason;
    const close = h("button", { type: "button", class: "close", "data-error-close": "" }, "×");
    close.addEventListener("click", () => this.hideError());
    this.errorBox.append(
      close,
      h("b", {}, e.title),
      h(
        "dl",
        {},
        e.file !== undefined ? h("dt", {}, "file") : null,
        e.file !== undefined ? h("dd", { "data-error-field": "file" }, e.file) : null,
        e.place !== undefined ? h("dt", {}, "place") : null,
        e.place !== undefined ? h("dd", { "data-error-field": "place" }, e.place) : null,
        h("dt", {}, "reason"),
        h("dd", { "data-error-field": "reason" }, e.reason),
      ),
    );
  }

  hideError(): void {
    this.errorBox.hidden = true;
    clear(this.errorBox);
  }

  wireDrop(): void {
    let depth = 0;
    const has = (ev: DragEvent) => [...(ev.dataTransfer?.types ?? [])].includes("Files");
    window.addEventListener("dragenter", (ev) => {
      if (!has(ev)) return;
      ev.preventDefault();
      depth++;
      this.root.classList.add("dragging");
    });
    window.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) this.root.classList.remove("dragging");
    });
    window.addEventListener("dragover", (ev) => {
      if (has(ev)) ev.preventDefault();
    });
    window.addEventListener("drop", (ev) => {
      ev.preventDefault();
      depth = 0;
      this.root.classList.remove("dragging");
      const files = [...(ev.dataTransfer?.files ?? [])];
      if (files.length) void this.openFiles(files);
    });
  }
}

const root = document.getElementById("app")!;
const app = new App(root);
void app.start();
// exposed for debugging in the console and for tests that need more than the DOM shows
(window as unknown as { peerbuf: App }).peerbuf = app;
