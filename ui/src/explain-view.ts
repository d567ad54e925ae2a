/**
 * The path view: what `peerbuf explain` prints for a pair, as a panel — the hops with port type,
 * link, ACS bits (each bit a what-if toggle on ports with an ACS capability), the verdict with the
 * kernel's distance, the coded findings with hints, and the kernel's log lines.
 */

import type { PairExplanation } from "../../src/core/analysis/p2p.ts";
import { ACS, ACS_BIT_NAMES } from "../../src/core/hw/config-space.ts";
import type { PciFunction } from "../../src/core/hw/machine.ts";
import type { BootedPci } from "../../src/core/kernel/pci/pci-view.ts";
import { h } from "./dom.ts";
import { formatLink, type Loaded } from "./model.ts";

/** The CLI's verdict words (cli/render/explain.ts). */
export const VERDICT: Readonly<Record<string, string>> = {
  "bus-address": "BUS ADDRESS (PCI_P2PDMA_MAP_BUS_ADDR)",
  "through-host-bridge": "THROUGH HOST BRIDGE (PCI_P2PDMA_MAP_THRU_HOST_BRIDGE)",
  "not-supported": "NOT SUPPORTED (PCI_P2PDMA_MAP_NOT_SUPPORTED)",
};

export interface ExplainHandlers {
  /** A port's ACS control word was toggled to `word`. */
  readonly onAcs: (bdf: string, word: number) => void;
  readonly onSwap: () => void;
  readonly onClear: () => void;
}

function acsToggles(
  view: BootedPci,
  fn: PciFunction,
  on: ExplainHandlers["onAcs"],
): HTMLElement | null {
  const cap = view.acsCap(fn);
  if (cap === null || cap === undefined) return null;
  const ctrl = view.acsCtrl(fn) ?? 0;
  const box = h("span", { class: "acs-toggles", "data-acs-toggles": fn.name });
  for (const b of ACS_BIT_NAMES) {
    const bit = ACS[b];
    const supported = (cap & bit) !== 0;
    const input = h("input", {
      type: "checkbox",
      "data-acs-bdf": fn.name,
      "data-acs-bit": b,
      checked: (ctrl & bit) !== 0,
      disabled: !supported,
      title: supported ? `${b}: toggle (what-if)` : `${b}: not in this port's ACS capability`,
    });
    input.addEventListener("change", () => on(fn.name, input.checked ? ctrl | bit : ctrl & ~bit));
    box.append(
      h(
        "label",
        { class: `acs-bit${(ctrl & bit) !== 0 ? " set" : ""}${supported ? "" : " unsupported"}` },
        input,
        b,
      ),
    );
  }
  return box;
}

/** A panel for a chosen pair (or the prompt to choose one). */
export function renderExplain(
  l: Loaded,
  view: BootedPci,
  e: PairExplanation,
  handlers: ExplainHandlers,
): HTMLElement {
  const p = l.machine.byBdf(e.provider)!;
  const c = l.machine.byBdf(e.client)!;
  const who = (f: PciFunction, role: string) =>
    h(
      "div",
      { class: "who", "data-role": role },
      h("b", {}, role),
      " ",
      h("code", {}, f.name),
      " ",
      h("span", { class: "label" }, l.labelOf(f)),
      " ",
      l.nameOf(f),
    );
  const swap = h("button", { type: "button", "data-action": "swap" }, "swap");
  swap.addEventListener("click", handlers.onSwap);
  const close = h("button", { type: "button", "data-action": "clear" }, "clear");
  close.addEventListener("click", handlers.onClear);

  const hops = h(
    "table",
    { class: "hops" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", {}, "#"),
        h("th", {}, "role"),
        h("th", {}, "BDF"),
        h("th", {}, "type"),
        h("th", {}, "ACS control"),
        h("th", {}, "link"),
      ),
    ),
  );
  const body = h("tbody", {});
  e.hops.forEach((hop, i) => {
    const fn = l.machine.byBdf(hop.bdf)!;
    const mark =
      hop.redirects === true
        ? h("span", { class: "redir" }, "redirects")
        : hop.redirects === undefined
          ? h("span", { class: "unknown" }, "unknown")
          : null;
    body.append(
      h(
        "tr",
        {
          "data-hop-bdf": hop.bdf,
          "data-hop-role": hop.role,
          "data-redirects": String(hop.redirects),
          "data-tested": String(hop.tested),
          class: `${hop.tested ? "" : "untested"} ${hop.redirects ? "redirects" : ""}`,
          style: `--hop:${i}`,
        },
        h("td", {}, String(i)),
        h("td", {}, hop.role),
        h("td", {}, h("code", {}, hop.bdf)),
        h("td", {}, hop.pcieType ?? ""),
        h(
          "td",
          { class: "acs" },
          h("code", { "data-acs-bits": hop.bdf }, hop.acsBits),
          " ",
          mark,
          hop.tested ? null : h("span", { class: "dim" }, " (not examined by the kernel)"),
          acsToggles(view, fn, handlers.onAcs),
        ),
        h(
          "td",
          { class: hop.downtrained ? "downtrained" : "" },
          hop.link ? formatLink(hop.link, hop.downtrained) : "",
        ),
      ),
    );
  });
  hops.append(body);

  const hbs = e.hostBridges.map((hb) =>
    h(
      "div",
      { class: "hb-check", "data-host-bridge-check": hb.hostBridge, "data-reason": hb.reason },
      `host bridge ${hb.hostBridge}: represented by ${hb.representative ?? "nothing"} ${hb.representativeId ?? ""} → ${hb.reason}`,
    ),
  );

  const verdict = h(
    "div",
    {
      class: `verdict v-${e.mapType}`,
      "data-verdict": e.mapType,
      "data-distance": e.distance,
      "data-provider": e.provider,
      "data-client": e.client,
    },
    h("span", { class: "k" }, `Verdict (kernel ${view.profile.id}): `),
    h("strong", {}, VERDICT[e.mapType] ?? e.mapType),
    `, distance ${e.distance}`,
  );
  const alt = e.alternative
    ? h(
        "div",
        {
          class: "alternative",
          "data-alternative": e.alternative.mapType,
          "data-alternative-distance": e.alternative.distance,
        },
        `if ${e.alternative.if}: ${VERDICT[e.alternative.mapType]}, distance ${e.alternative.distance}`,
      )
    : null;

  const findings = h("ul", { class: "findings" });
  for (const f of e.findings)
    findings.append(
      h(
        "li",
        { class: `sev-${f.severity}`, "data-finding": f.code, "data-severity": f.severity },
        h("span", { class: "sev" }, f.severity),
        " ",
        h("b", {}, f.code),
        ": ",
        f.message,
        f.hint ? h("div", { class: "hint" }, h("b", {}, "hint: "), f.hint) : null,
      ),
    );

  return h(
    "section",
    { class: "explain", "data-explain": "", "data-map-type": e.mapType },
    h("div", { class: "explain-head" }, who(p, "provider"), who(c, "client"), swap, close),
    verdict,
    alt,
    h("h3", {}, "Path"),
    hops,
    ...hbs,
    h("h3", {}, "Findings"),
    findings,
    e.kernelMessages.length > 0
      ? h(
          "details",
          { class: "kmsg", open: true },
          h("summary", {}, "What the kernel logs for this pair"),
          h("pre", {}, e.kernelMessages.join("\n")),
        )
      : null,
  );
}
