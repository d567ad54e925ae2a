/**
 * The PCI hierarchy drawn as a tree: machine → host bridges → root ports → switches → devices,
 * laid out by elkjs and rendered to our own SVG, with zoom and pan. Runs of identical devices
 * (VFs) are one node with a count, as `peerbuf tree` collapses them. A path (from explainPair) is
 * lit hop by hop.
 */

import type { ElkExtendedEdge, ElkNode } from "elkjs/lib/elk-api";
import type { DeviceKind } from "../../src/core/analysis/kinds.ts";
import type { Hop } from "../../src/core/analysis/p2p.ts";
import { buildTree, type TreeNode } from "../../src/core/analysis/tree.ts";
import { ACS, ACS_BIT_NAMES } from "../../src/core/hw/config-space.ts";
import type { PciFunction } from "../../src/core/hw/machine.ts";
import type { BootedPci } from "../../src/core/kernel/pci/pci-view.ts";
import { clear, h, s } from "./dom.ts";
import { layout, TREE_LAYOUT } from "./layout.ts";
import { type Loaded, PORT, shortLink } from "./model.ts";

/** Below this zoom the labels cannot be read: a wider tree is panned instead. */
const MIN_READABLE_SCALE = 0.45;

const NODE_W = 232;
const NODE_H = 50;
const HB_W = 132;
const HB_H = 34;
const MAX_NAME = 36;

export interface TreeFilter {
  readonly collapse: boolean;
  /** Only these kinds and the bridges above them. */
  readonly kinds?: readonly DeviceKind[];
}

export interface PathMark {
  readonly provider?: string;
  readonly client?: string;
  readonly hops?: readonly Hop[];
  /** `pciDDDD:BB` host bridges the path crosses (no common upstream bridge). */
  readonly hostBridges?: readonly string[];
  readonly mapType?: string;
}

interface Drawn {
  readonly key: string;
  readonly svg: SVGSVGElement;
  readonly viewport: SVGGElement;
  readonly width: number;
  readonly height: number;
  /** Function BDF → node id it is drawn in (collapsed runs map to their first node). */
  readonly nodeOf: ReadonlyMap<string, string>;
  readonly nodes: ReadonlyMap<string, SVGGElement>;
  /** `parentId>childId` → edge element. */
  readonly edges: ReadonlyMap<string, SVGGElement>;
  /** Node id → parent node id. */
  readonly parentOf: ReadonlyMap<string, string>;
}

const fnId = (bdf: string) => `f:${bdf}`;
const hbId = (id: string) => `hb:${id}`;

function truncate(t: string, n: number): string {
  return t.length <= n ? t : `${t.slice(0, n - 1)}…`;
}

function acsSet(word: number): string {
  return ACS_BIT_NAMES.filter((b) => word & ACS[b]).join(" ") || "none";
}

export class TopologyView {
  readonly el: HTMLDivElement;
  readonly #stage: HTMLDivElement;
  readonly #status: HTMLDivElement;
  #drawn: Drawn | undefined;
  #loaded: Loaded | undefined;
  #mark: PathMark = {};
  #zoom = { x: 0, y: 0, k: 1 };
  #seq = 0;
  /** Called with the function a click picked (a collapsed run: its first function). */
  onPick: ((f: PciFunction) => void) | undefined;

  constructor(name: string) {
    this.#stage = h("div", { class: "stage", "data-topology-stage": name });
    this.#status = h("div", { class: "topo-status", "data-topology-status": "" });
    const btn = (label: string, title: string, f: () => void) => {
      const b = h("button", { type: "button", title, "data-zoom": label }, label);
      b.addEventListener("click", f);
      return b;
    };
    this.el = h(
      "div",
      { class: "topology", "data-topology": name, "data-state": "empty" },
      h(
        "div",
        { class: "topo-tools" },
        btn("+", "zoom in", () => this.#zoomBy(1.25)),
        btn("−", "zoom out", () => this.#zoomBy(0.8)),
        btn("fit", "fit the whole tree", () => this.fit()),
        this.#status,
      ),
      this.#stage,
    );
    this.#wirePanZoom();
  }

  /** Lays out and draws `loaded` (cached by machine and filter), then re-applies marks. */
  async show(loaded: Loaded, view: BootedPci, filter: TreeFilter): Promise<void> {
    const key = `${loaded.label}|${filter.collapse}|${filter.kinds?.join(",") ?? "all"}`;
    this.#loaded = loaded;
    if (this.#drawn?.key !== key || this.#drawn.svg.parentElement !== this.#stage) {
      const seq = ++this.#seq;
      this.el.dataset["state"] = "layout";
      this.#status.textContent = "laying out…";
      const drawn = await this.#draw(key, loaded, view, filter);
      if (seq !== this.#seq) return; // a newer show() won
      clear(this.#stage);
      this.#stage.append(drawn.svg);
      this.#drawn = drawn;
      this.fit("width");
    }
    this.#status.textContent = `${loaded.machine.functions.length} functions`;
    this.update(view);
    this.mark(this.#mark);
    this.el.dataset["state"] = "ready";
  }

  /** Refreshes what depends on the booted view (ACS words), without a new layout. */
  update(view: BootedPci): void {
    const d = this.#drawn;
    const l = this.#loaded;
    if (!d || !l) return;
    for (const [id, g] of d.nodes) {
      if (!id.startsWith("f:")) continue;
      const f = l.machine.byBdf(id.slice(2));
      const acs = g.querySelector<SVGTextElement>("text.acs");
      if (!f || !acs) continue;
      const ctrl = view.acsCtrl(f);
      const redirects = ctrl != null && (ctrl & (ACS.RR | ACS.CR | ACS.EC)) !== 0;
      acs.textContent =
        ctrl === null ? "no ACS" : ctrl === undefined ? "ACS unknown" : `ACS ${acsSet(ctrl)}`;
      g.classList.toggle("redirects", redirects);
      g.dataset["acs"] = ctrl == null ? String(ctrl) : `0x${ctrl.toString(16)}`;
    }
  }

  /** Lights up a selection and a path, hop by hop. */
  mark(m: PathMark): void {
    this.#mark = m;
    const d = this.#drawn;
    if (!d) return;
    for (const g of d.nodes.values()) {
      g.classList.remove("on-path", "sel-provider", "sel-client");
      delete g.dataset["hop"];
      g.style.removeProperty("--hop");
    }
    for (const e of d.edges.values()) {
      e.classList.remove("on-path");
      e.style.removeProperty("--hop");
    }
    d.svg.dataset["mapType"] = m.mapType ?? "";
    const node = (bdf: string | undefined) =>
      bdf === undefined ? undefined : d.nodes.get(d.nodeOf.get(bdf) ?? "");
    node(m.provider)?.classList.add("sel-provider");
    node(m.client)?.classList.add("sel-client");
    if (!m.hops) return;
    // the drawn path: hop nodes in order, with host bridges between the two halves
    const ids: string[] = [];
    const push = (id: string | undefined) => {
      if (id && ids[ids.length - 1] !== id) ids.push(id);
    };
    const hops = m.hops.map((hp) => d.nodeOf.get(hp.bdf));
    let i = 0;
    for (; i < hops.length; i++) {
      push(hops[i]);
      const next = hops[i + 1];
      const cur = hops[i];
      if (cur && next && d.parentOf.get(cur) !== next && d.parentOf.get(next) !== cur) break;
    }
    if (i < hops.length) {
      // up to the host bridge(s), across, and down
      // across the root complex: between two host bridges the path goes through the machine
      (m.hostBridges ?? []).forEach((hb, k) => {
        if (k > 0) push("machine");
        push(hbId(hb.replace(/^pci/, "")));
      });
      for (i = i + 1; i < hops.length; i++) push(hops[i]);
    }
    ids.forEach((id, n) => {
      const g = d.nodes.get(id);
      if (!g) return;
      g.classList.add("on-path");
      g.dataset["hop"] = String(n);
      g.style.setProperty("--hop", String(n));
      const prev = ids[n - 1];
      if (prev === undefined) return;
      const e = d.edges.get(`${prev}>${id}`) ?? d.edges.get(`${id}>${prev}`);
      if (e) {
        e.classList.add("on-path");
        e.style.setProperty("--hop", String(n));
      }
    });
  }

  /**
   * Fits the tree into the view: `all` the whole of it; `width` only its width (a tall tree then
   * starts at the top, readable, and is panned), never below a readable scale.
   */
  fit(mode: "all" | "width" = "all"): void {
    const d = this.#drawn;
    if (!d) return;
    const w = this.#stage.clientWidth || 800;
    const hgt = this.#stage.clientHeight || 600;
    const byWidth = (w - 20) / d.width;
    const k =
      mode === "all"
        ? Math.min(1.2, byWidth, (hgt - 20) / d.height)
        : Math.min(1.2, Math.max(byWidth, MIN_READABLE_SCALE));
    const y = d.height * k < hgt ? (hgt - d.height * k) / 2 : 10;
    this.#zoom = { k, x: Math.max(10, (w - d.width * k) / 2), y };
    this.#apply();
  }

  /** Whether a function is drawn (itself or in a collapsed run). */
  has(bdf: string): boolean {
    return this.#drawn?.nodeOf.has(bdf) ?? false;
  }

  /** Scrolls and zooms so that a node is in view. */
  reveal(bdf: string): void {
    const d = this.#drawn;
    const g = d?.nodes.get(d.nodeOf.get(bdf) ?? "");
    if (!d || !g) return;
    const x = Number(g.dataset["x"]);
    const y = Number(g.dataset["y"]);
    const k = Math.max(this.#zoom.k, 0.6);
    const w = this.#stage.clientWidth || 800;
    const hgt = this.#stage.clientHeight || 600;
    this.#zoom = { k, x: w / 2 - x * k, y: hgt / 2 - y * k };
    this.#apply();
  }

  #apply(): void {
    const z = this.#zoom;
    this.#drawn?.viewport.setAttribute("transform", `translate(${z.x} ${z.y}) scale(${z.k})`);
    this.el.dataset["zoom"] = z.k.toFixed(3);
  }

  #zoomBy(f: number, cx?: number, cy?: number): void {
    const z = this.#zoom;
    const px = cx ?? (this.#stage.clientWidth || 800) / 2;
    const py = cy ?? (this.#stage.clientHeight || 600) / 2;
    const k = Math.min(4, Math.max(0.05, z.k * f));
    this.#zoom = { k, x: px - ((px - z.x) * k) / z.k, y: py - ((py - z.y) * k) / z.k };
    this.#apply();
  }

  #wirePanZoom(): void {
    const st = this.#stage;
    st.addEventListener(
      "wheel",
      (ev) => {
        ev.preventDefault();
        const r = st.getBoundingClientRect();
        this.#zoomBy(Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
      },
      { passive: false },
    );
    let drag: { x: number; y: number; zx: number; zy: number; moved: boolean } | null = null;
    st.addEventListener("pointerdown", (ev) => {
      if (ev.button !== 0) return;
      drag = { x: ev.clientX, y: ev.clientY, zx: this.#zoom.x, zy: this.#zoom.y, moved: false };
    });
    st.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      const dx = ev.clientX - drag.x;
      const dy = ev.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) < 4) return;
      if (!drag.moved) st.setPointerCapture(ev.pointerId);
      drag.moved = true;
      st.classList.add("panning");
      this.#zoom = { ...this.#zoom, x: drag.zx + dx, y: drag.zy + dy };
      this.#apply();
    });
    const end = (ev: PointerEvent) => {
      const d = drag;
      drag = null;
      st.classList.remove("panning");
      if (!d || d.moved || ev.type !== "pointerup") return;
      const g = (ev.target as Element | null)?.closest<SVGGElement>("g.node[data-bdf]");
      const f = g ? this.#loaded?.machine.byBdf(g.dataset["bdf"]!) : undefined;
      if (f) this.onPick?.(f);
    };
    st.addEventListener("pointerup", end);
    st.addEventListener("pointercancel", end);
  }

  async #draw(key: string, l: Loaded, view: BootedPci, filter: TreeFilter): Promise<Drawn> {
    const roots = buildTree(l.machine, view, {
      collapse: filter.collapse,
      names: l.names,
      ...(filter.kinds ? { kinds: filter.kinds } : {}),
    });
    const children: ElkNode[] = [];
    const edges: ElkExtendedEdge[] = [];
    const info = new Map<string, { tree?: TreeNode; hb?: string; numa?: number | null }>();
    const parentOf = new Map<string, string>();
    const nodeOf = new Map<string, string>();
    const edge = (from: string, to: string, label: string | null) => {
      parentOf.set(to, from);
      edges.push({
        id: `${from}>${to}`,
        sources: [from],
        targets: [to],
        ...(label ? { labels: [{ text: label, width: label.length * 6.3 + 4, height: 13 }] } : {}),
      });
    };
    const ROOT = "machine";
    children.push({ id: ROOT, width: HB_W + 30, height: HB_H + 8 });
    /** BDFs a collapsed run stands for: the siblings from its first to its last function. */
    const runOf = (n: TreeNode): string[] => {
      const f = l.machine.byBdf(n.bdf);
      if (!f || !n.collapsed) return [n.bdf];
      const sibs = f.parent ? f.parent.children : f.hostBridge.rootFunctions;
      const a = sibs.indexOf(f);
      const b = sibs.findIndex((x) => x.name === n.collapsed!.last);
      return a >= 0 && b >= a ? sibs.slice(a, b + 1).map((x) => x.name) : [n.bdf];
    };
    const addNode = (n: TreeNode, parent: string) => {
      const id = fnId(n.bdf);
      info.set(id, { tree: n });
      for (const bdf of runOf(n)) nodeOf.set(bdf, id);
      children.push({ id, width: NODE_W, height: NODE_H });
      const t = n.pcieType;
      // a port's own link is the one below it; an endpoint's or upstream port's is the one above
      const label =
        t === "root-port" || t === "downstream-port" ? null : shortLink(n.link ?? undefined);
      edge(parent, id, label ? `${label}${n.downtrained ? " ↓" : ""}` : null);
      for (const c of n.children) addNode(c, id);
    };
    for (const r of roots) {
      const id = hbId(r.hostBridge.replace(/^pci/, ""));
      info.set(id, { hb: r.hostBridge, numa: r.numaNode ?? null });
      children.push({ id, width: HB_W, height: HB_H });
      edge(ROOT, id, null);
      for (const c of r.children) addNode(c, id);
    }
    const g = await layout({
      id: "root",
      layoutOptions: TREE_LAYOUT,
      children,
      edges,
    });
    const width = (g.width ?? 0) + 20;
    const height = (g.height ?? 0) + 20;
    const viewport = s("g", { class: "viewport" });
    const edgeLayer = s("g", { class: "edges" });
    const nodeLayer = s("g", { class: "nodes" });
    viewport.append(edgeLayer, nodeLayer);
    const edgeEls = new Map<string, SVGGElement>();
    for (const e of (g.edges ?? []) as ElkExtendedEdge[]) {
      const ge = s("g", { class: "edge", "data-edge": e.id });
      for (const sec of e.sections ?? []) {
        const pts = [sec.startPoint, ...(sec.bendPoints ?? []), sec.endPoint];
        ge.append(
          s("path", {
            d: pts.map((p, i) => `${i ? "L" : "M"}${p.x + 10} ${p.y + 10}`).join(" "),
          }),
        );
      }
      for (const lb of e.labels ?? [])
        ge.append(
          s(
            "text",
            { class: "edge-label", x: (lb.x ?? 0) + 12, y: (lb.y ?? 0) + 20 },
            lb.text ?? "",
          ),
        );
      edgeLayer.append(ge);
      edgeEls.set(e.id, ge);
    }
    const nodeEls = new Map<string, SVGGElement>();
    for (const n of g.children ?? []) {
      const x = (n.x ?? 0) + 10;
      const y = (n.y ?? 0) + 10;
      const w = n.width ?? NODE_W;
      const hh = n.height ?? NODE_H;
      const meta = info.get(n.id);
      let el: SVGGElement;
      if (n.id === ROOT) {
        const cpu = l.desc.cpu;
        el = s(
          "g",
          { class: "node machine", "data-node": ROOT },
          s("rect", { width: w, height: hh, rx: 6 }),
          s("text", { x: 8, y: 17, class: "l1" }, truncate(l.desc.name ?? "machine", 24)),
          s(
            "text",
            { x: 8, y: 32, class: "l2" },
            truncate(
              cpu?.modelName ?? [cpu?.vendor, cpu?.family].filter((v) => v !== undefined).join(" "),
              26,
            ) || "CPU unknown",
          ),
        );
      } else if (meta?.hb) {
        el = s(
          "g",
          { class: "node host-bridge", "data-node": n.id, "data-host-bridge": meta.hb },
          s("rect", { width: w, height: hh, rx: 4 }),
          s("text", { x: 8, y: 14, class: "l1" }, meta.hb),
          s(
            "text",
            { x: 8, y: 28, class: "l2" },
            `host bridge${meta.numa != null ? ` · NUMA ${meta.numa}` : ""}`,
          ),
        );
      } else {
        const t = meta!.tree!;
        const f = l.machine.byBdf(t.bdf)!;
        const port = t.pcieType ? PORT[t.pcieType] : "";
        const bridge = t.kind === "bridge";
        const head = bridge
          ? `${port || "bridge"}`
          : `${l.labelOf(f)}${port && t.pcieType !== "endpoint" ? ` · ${port}` : ""}`;
        const l2 = t.name ?? t.id;
        const extra = bridge
          ? ""
          : [t.driver, ...(f.desc.osDevices ?? [])].filter(Boolean).slice(0, 3).join(" ");
        el = s(
          "g",
          {
            class: `node fn kind-${t.kind}${t.vf ? " vf" : ""}${t.collapsed ? " collapsed" : ""}`,
            "data-node": n.id,
            "data-bdf": t.bdf,
            "data-kind": t.kind,
            "data-label": l.labelOf(f),
            "data-pcie-type": t.pcieType ?? "",
            "data-collapsed-count": t.collapsed?.count,
            tabindex: 0,
            role: "button",
            "aria-label": `${l.labelOf(f)} ${t.bdf} ${l2}`,
          },
          t.collapsed
            ? s("rect", { class: "stack", x: 4, y: -4, width: w, height: hh, rx: 5 })
            : null,
          s("rect", { class: "body", width: w, height: hh, rx: 5 }),
          s("rect", { class: "kind-bar", width: 5, height: hh, rx: 2 }),
          s("text", { x: 11, y: 14, class: "l1" }, head, s("tspan", { class: "bdf" }, ` ${t.bdf}`)),
          s("text", { x: 11, y: 29, class: "l2" }, truncate(l2, MAX_NAME)),
          bridge
            ? s("text", { x: 11, y: 43, class: "l3 acs" }, "")
            : s("text", { x: 11, y: 43, class: "l3" }, truncate(extra, MAX_NAME)),
          t.collapsed
            ? s(
                "text",
                { x: w - 6, y: 14, class: "count", "text-anchor": "end" },
                `×${t.collapsed.count}`,
              )
            : null,
          s(
            "title",
            {},
            `${t.bdf} [${t.id}] ${t.name ?? ""}${t.collapsed ? `\n${t.collapsed.count} identical functions, ${t.bdf} … ${t.collapsed.last}` : ""}`,
          ),
        );
      }
      el.setAttribute("transform", `translate(${x} ${y})`);
      el.dataset["x"] = String(x + w / 2);
      el.dataset["y"] = String(y + hh / 2);
      nodeLayer.append(el);
      nodeEls.set(n.id, el);
    }
    const svg = s(
      "svg",
      {
        class: "topo-svg",
        xmlns: "http://www.w3.org/2000/svg",
        "data-functions": l.machine.functions.length,
        "data-nodes": nodeEls.size,
      },
      viewport,
    );
    return {
      key,
      svg,
      viewport,
      width,
      height,
      nodeOf,
      nodes: nodeEls,
      edges: edgeEls,
      parentOf,
    };
  }
}
