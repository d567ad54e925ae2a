/**
 * The scenario view: a bundled scenario run in the browser (runScenario is pure; the machines
 * come from the server as descriptions), its steps on a timeline to step through, each step's
 * kernel trace as `peerbuf run` prints it, and the buffer's path — the last P2PDMA verdict so
 * far — drawn on the topology of the machine it happened on.
 */

import type { DeviceKind } from "../../src/core/analysis/kinds.ts";
import { explainPair } from "../../src/core/analysis/p2p.ts";
import type { MachineDescription } from "../../src/core/hw/machine.ts";
import { bootPci } from "../../src/core/kernel/pci/pci-view.ts";
import type { TraceEvent } from "../../src/core/kernel/trace.ts";
import {
  runScenario,
  type ScenarioResult,
  type StepResult,
} from "../../src/core/scenario/run-scenario.ts";
import { parseScenario, type Scenario } from "../../src/core/scenario/scenario-doc.ts";
import { clear, h } from "./dom.ts";
import { VERDICT } from "./explain-view.ts";
import { Loaded, type MachinePayload } from "./model.ts";
import { TopologyView, type TreeFilter } from "./topology.ts";

export interface ScenarioPayload {
  readonly file: string;
  readonly text: string;
  readonly machines: Readonly<Record<string, MachinePayload>>;
}

const MAX_SEGMENTS = 8;

/** Large machines are drawn with the devices that move data and the bridges above them. */
function treeFilter(l: Loaded): TreeFilter {
  const kinds: readonly DeviceKind[] = ["gpu", "nic", "nvme", "accel", "storage"];
  return l.machine.functions.length > 60 ? { collapse: true, kinds } : { collapse: true };
}

function sizeText(n: bigint): string {
  const units: [bigint, string][] = [
    [1n << 30n, "GiB"],
    [1n << 20n, "MiB"],
    [1n << 10n, "KiB"],
  ];
  for (const [u, name] of units) if (n >= u && n % u === 0n) return `${n / u} ${name}`;
  return `${n} bytes`;
}

/** One trace event as `peerbuf run` prints it (cli/render/run.ts), as DOM. */
function eventEl(ev: TraceEvent): HTMLElement {
  const [subsys] = ev.ev.split(":");
  const el = h(
    "div",
    { class: "event", "data-event": ev.ev },
    h("span", { class: "subsys" }, `${subsys}:`),
    " ",
    ev.msg,
  );
  const raw = ev.data?.["segments"];
  const segs = Array.isArray(raw) ? (raw as { dma: bigint; len: bigint; kind: string }[]) : null;
  if (segs) {
    const list = h("div", { class: "segments" });
    for (const sg of segs.slice(0, MAX_SEGMENTS))
      list.append(
        h(
          "div",
          { class: `seg seg-${sg.kind}`, "data-segment-kind": sg.kind },
          h("code", {}, `0x${sg.dma.toString(16).padStart(12, "0")}`),
          ` +${sizeText(sg.len)} ${sg.kind}`,
        ),
      );
    if (segs.length > MAX_SEGMENTS)
      list.append(h("div", { class: "dim" }, `... ${segs.length - MAX_SEGMENTS} more segment(s)`));
    el.append(list);
  }
  const findings = ev.data?.["findings"] as { code: string; message: string }[] | undefined;
  if (findings && ev.data?.["mapType"] === "not-supported")
    for (const f of findings) el.append(h("div", { class: "warn" }, f.message));
  return el;
}

interface Verdict {
  readonly step: number;
  readonly provider: string;
  readonly client: string;
  readonly mapType: string;
  readonly distance: number;
}

export class ScenarioView {
  readonly el: HTMLElement;
  readonly #topo = new TopologyView("scenario");
  readonly #head = h("div", { class: "sc-head" });
  readonly #timeline = h("div", { class: "timeline", "data-timeline": "" });
  readonly #detail = h("div", { class: "sc-detail", "data-step-detail": "" });
  readonly #pathInfo = h("div", { class: "sc-path", "data-buffer-path": "" });
  #result: ScenarioResult | undefined;
  #scenario: Scenario | undefined;
  #loaded = new Map<string, Loaded>();
  #current = 0;

  constructor() {
    const prev = h("button", { type: "button", "data-step-nav": "prev" }, "◀ prev");
    const next = h("button", { type: "button", "data-step-nav": "next" }, "next ▶");
    prev.addEventListener("click", () => this.go(this.#current - 1));
    next.addEventListener("click", () => this.go(this.#current + 1));
    this.el = h(
      "div",
      { class: "scenario", "data-scenario": "", "data-state": "empty" },
      this.#head,
      h("div", { class: "sc-nav" }, prev, this.#timeline, next),
      h(
        "div",
        { class: "sc-body" },
        h("div", { class: "sc-topo" }, this.#pathInfo, this.#topo.el),
        this.#detail,
      ),
    );
    this.el.tabIndex = 0;
    this.el.addEventListener("keydown", (ev) => {
      if (ev.key === "ArrowRight") this.go(this.#current + 1);
      else if (ev.key === "ArrowLeft") this.go(this.#current - 1);
    });
  }

  /** Parses and runs the scenario; throws InputError for a bad scenario file. */
  async open(p: ScenarioPayload): Promise<void> {
    this.el.dataset["state"] = "running";
    const sc = parseScenario(p.file, p.text);
    const descs = new Map<string, MachineDescription>();
    this.#loaded = new Map();
    for (const [name] of sc.machines) {
      const mp = p.machines[name];
      if (!mp) throw new Error(`the server sent no machine "${name}"`);
      const l = Loaded.fromPayload(mp);
      this.#loaded.set(name, l);
      descs.set(name, l.desc);
    }
    const r = runScenario(sc, descs);
    this.#scenario = sc;
    this.#result = r;
    const failed = r.steps.filter((st) => st.failures.length > 0).length;
    clear(this.#head);
    this.#head.append(
      h("h2", {}, r.name),
      h(
        "div",
        { class: "dim" },
        `${p.file}: ${[...sc.machines].map(([n, m]) => `${n} = ${this.#loaded.get(n)!.label} (${m.kernel ?? "mainline"}${m.iommu ? `, iommu ${m.iommu}` : ""})`).join("; ")}`,
      ),
      h(
        "div",
        {
          class: `sc-summary ${r.passed ? "ok" : "fail"}`,
          "data-scenario-passed": String(r.passed),
          "data-steps": r.steps.length,
        },
        `${r.steps.length} steps, ${failed === 0 ? "all as expected" : `${failed} not as expected`}; ${sizeText(r.bytesMoved)} moved by DMA; ${r.leaks.length === 0 ? "no leaks" : `${r.leaks.length} leak(s) after shutdown`}`,
      ),
    );
    clear(this.#timeline);
    r.steps.forEach((st, i) => {
      const b = h(
        "button",
        {
          type: "button",
          class: `tick ${st.failures.length ? "fail" : "ok"} ${st.outcome === "ok" ? "" : "errno"}`,
          "data-step": i,
          "data-do": st.do,
          title: `[${st.index}] ${st.do} → ${st.summary}`,
        },
        h("span", { class: "n" }, String(i)),
        h("span", { class: "do" }, st.do),
      );
      b.addEventListener("click", () => this.go(i));
      this.#timeline.append(b);
    });
    this.el.dataset["state"] = "ready";
    await this.go(0);
  }

  #verdictUpTo(i: number, r: ScenarioResult): Verdict | null {
    for (let k = i; k >= 0; k--) {
      const evs = r.steps[k]!.events;
      for (let j = evs.length - 1; j >= 0; j--) {
        const d = evs[j]!.data;
        if (evs[j]!.ev === "p2pdma:verdict" && d)
          return {
            step: k,
            provider: String(d["provider"]),
            client: String(d["client"]),
            mapType: String(d["mapType"]),
            distance: Number(d["distance"]),
          };
      }
    }
    return null;
  }

  async go(i: number): Promise<void> {
    const r = this.#result;
    const sc = this.#scenario;
    if (!r || !sc || r.steps.length === 0) return;
    i = Math.max(0, Math.min(r.steps.length - 1, i));
    this.#current = i;
    this.el.dataset["step"] = String(i);
    for (const b of this.#timeline.querySelectorAll<HTMLElement>("[data-step]"))
      b.classList.toggle("current", b.dataset["step"] === String(i));
    this.#timeline.querySelector<HTMLElement>(`[data-step="${i}"]`)?.scrollIntoView({
      block: "nearest",
      inline: "nearest",
    });
    const st = r.steps[i]!;
    this.#renderDetail(st, i === r.steps.length - 1 ? r : null);
    // the buffer's path: the last verdict so far, on the machine that has both devices
    const v = this.#verdictUpTo(i, r);
    const has = (l: Loaded | undefined): boolean =>
      v !== null &&
      l?.machine.byBdf(v.provider) !== undefined &&
      l.machine.byBdf(v.client) !== undefined;
    let mname = st.machine;
    if (v && !has(this.#loaded.get(mname)))
      mname = [...this.#loaded].find(([, l]) => has(l))?.[0] ?? mname;
    const l = this.#loaded.get(mname);
    const m = sc.machines.get(mname);
    if (!l || !m) return;
    const view = bootPci(l.machine, {
      profile: m.kernel ?? "mainline",
      ...(m.iommu !== undefined ? { iommu: m.iommu } : {}),
      ...(m.cmdline !== undefined ? { cmdline: m.cmdline } : {}),
    });
    clear(this.#pathInfo);
    this.#pathInfo.dataset["machine"] = mname;
    if (v && has(l)) {
      const e = explainPair(view, l.machine.byBdf(v.provider)!, l.machine.byBdf(v.client)!);
      this.#pathInfo.dataset["provider"] = v.provider;
      this.#pathInfo.dataset["client"] = v.client;
      this.#pathInfo.dataset["mapType"] = v.mapType;
      this.#pathInfo.append(
        h("b", {}, `${mname}: `),
        `the buffer in ${v.provider} (${l.labelOf(l.machine.byBdf(v.provider)!)}) reached by ${v.client} (${l.labelOf(l.machine.byBdf(v.client)!)}): `,
        h("span", { class: `v-${v.mapType}` }, VERDICT[v.mapType] ?? v.mapType),
        v.mapType === "not-supported" ? "" : `, distance ${v.distance}`,
        v.step === i ? "" : h("span", { class: "dim" }, ` (verdict of step ${v.step})`),
      );
      await this.#topo.show(l, view, treeFilter(l));
      this.#topo.mark({
        provider: v.provider,
        client: v.client,
        hops: e.hops,
        hostBridges: [
          l.machine.byBdf(v.provider)!.hostBridge.id,
          l.machine.byBdf(v.client)!.hostBridge.id,
        ],
        mapType: e.mapType,
      });
    } else {
      delete this.#pathInfo.dataset["provider"];
      delete this.#pathInfo.dataset["client"];
      delete this.#pathInfo.dataset["mapType"];
      this.#pathInfo.append(
        h("b", {}, `${mname}: `),
        "no P2PDMA verdict yet (the buffer has not been mapped for a peer)",
      );
      await this.#topo.show(l, view, treeFilter(l));
      this.#topo.mark({});
    }
  }

  #renderDetail(st: StepResult, last: ScenarioResult | null): void {
    clear(this.#detail);
    const ok = st.failures.length === 0;
    const who = [this.#loaded.size > 1 ? st.machine : null, st.process].filter(Boolean).join("/");
    if (st.note) this.#detail.append(h("div", { class: "note" }, `# ${st.note}`));
    this.#detail.append(
      h(
        "div",
        {
          class: `step-head ${ok ? "ok" : "fail"}`,
          "data-step-outcome": st.outcome,
          "data-step-ok": String(ok),
        },
        ok ? "✓ " : "✗ ",
        `[${st.index}] ${who ? `${who} ` : ""}`,
        h("b", {}, st.do),
        " → ",
        h("span", { class: st.outcome === "ok" ? "" : "errno" }, st.summary),
      ),
      ...st.events.map(eventEl),
      ...st.failures.map((f) =>
        h(
          "div",
          { class: "failure" },
          `✗ ${f}${st.line !== undefined ? ` (line ${st.line})` : ""}`,
        ),
      ),
    );
    if (last) {
      if (last.shutdown.length > 0) {
        this.#detail.append(
          h("div", { class: "dim" }, "[end] processes killed, in-kernel importers unloaded"),
          ...last.shutdown.map(eventEl),
        );
      }
      for (const lk of last.leaks)
        this.#detail.append(
          h(
            "div",
            { class: "failure" },
            `leak: ${lk.machine}: ${lk.owner}: ${lk.kind}: ${lk.detail}`,
          ),
        );
    }
  }
}
