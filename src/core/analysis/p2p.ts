/**
 * @module p2p
 * The analyser's P2P answer for a pair: the kernel's verdict (the one implementation in
 * kernel/pci/p2pdma.ts), the path hop by hop, coded findings with hints, and — when the input
 * lacked a fact — what the verdict would be the other way.
 */

import { ACS, formatAcsBits } from "../hw/config-space.ts";
import type { LinkDescription, PciFunction } from "../hw/machine.ts";
import { KERNEL_ACS_BITS } from "../kernel/pci/acs.ts";
import {
  type Assumptions,
  acsHintList,
  type CalcResult,
  calcMapTypeAndDist,
  cpuSupportsP2pdma,
  type P2pMapType,
  upstreamBridge,
} from "../kernel/pci/p2pdma.ts";
import type { BootedPci } from "../kernel/pci/pci-view.ts";
import type { Finding } from "./findings.ts";
import { isDowntrained, linkPartner } from "./tree.ts";

export interface Hop {
  readonly bdf: string;
  readonly role: "provider" | "client" | "bridge" | "common";
  readonly pcieType: string | null;
  /** Live ACS control; null: no capability; undefined: unknown. */
  readonly acsCtrl: number | null | undefined;
  readonly acsBits: string;
  readonly redirects: boolean | undefined;
  readonly tested: boolean;
  readonly link?: LinkDescription;
  /** Trained below what both ends of the link support. */
  readonly downtrained: boolean;
}

export interface PairVerdict {
  readonly provider: string;
  readonly client: string;
  readonly mapType: P2pMapType;
  /** The kernel's distance; -1 when not supported (as pci_p2pdma_distance returns). */
  readonly distance: number;
  readonly findings: readonly Finding[];
}

export interface PairExplanation extends PairVerdict {
  /** Provider up to the common bridge (or host bridge), then down to the client. */
  readonly hops: readonly Hop[];
  readonly hostBridges: CalcResult["hostBridges"];
  readonly kernelMessages: readonly string[];
  /** The verdict if the unknown facts went the other way. */
  readonly alternative?: {
    readonly mapType: P2pMapType;
    readonly distance: number;
    readonly if: string;
  };
}

/** Default assumptions: unknown ACS redirects only on ports an active IOMMU would have set. */
export function defaultAssumptions(view: BootedPci): Assumptions {
  return {
    unknownAcsRedirects: (fn) =>
      view.acsRequested === true &&
      (fn.desc.pcieType === "root-port" || fn.desc.pcieType === "downstream-port"),
    unknownCpuSupports: false,
  };
}

/** The other answer for each fact the input lacks (and only those). */
function flipped(base: Assumptions, acs: boolean, cpu: boolean): Assumptions {
  return {
    unknownAcsRedirects: acs ? (fn) => !base.unknownAcsRedirects(fn) : base.unknownAcsRedirects,
    unknownCpuSupports: cpu ? !base.unknownCpuSupports : base.unknownCpuSupports,
  };
}

const distOf = (r: CalcResult): number => (r.mapType === "not-supported" ? -1 : r.distance);

/** Quick verdict for matrices: no hops, findings only as codes that matter. */
export function pairVerdict(
  view: BootedPci,
  provider: PciFunction,
  client: PciFunction,
  withFindings = true,
): PairVerdict {
  const assume = defaultAssumptions(view);
  const r = calcMapTypeAndDist(view, provider, client, false, assume);
  return {
    provider: provider.name,
    client: client.name,
    mapType: r.mapType,
    distance: distOf(r),
    findings: withFindings ? findingsFor(view, provider, client, r, assume) : [],
  };
}

export function explainPair(
  view: BootedPci,
  provider: PciFunction,
  client: PciFunction,
): PairExplanation {
  const assume = defaultAssumptions(view);
  const r = calcMapTypeAndDist(view, provider, client, true, assume);
  const findings = findingsFor(view, provider, client, r, assume);
  let alternative: PairExplanation["alternative"];
  const acsUnknown = r.unknownAcs.length > 0;
  const cpuUnknown = cpuSupportsP2pdma(view.cpu) === undefined;
  if (acsUnknown || cpuUnknown) {
    const alt = calcMapTypeAndDist(
      view,
      provider,
      client,
      false,
      flipped(assume, acsUnknown, cpuUnknown),
    );
    if (alt.mapType !== r.mapType || distOf(alt) !== distOf(r)) {
      const conds: string[] = [];
      if (acsUnknown)
        conds.push(
          `the ACS control of ${r.unknownAcs.map((f) => f.name).join(", ")} ${assume.unknownAcsRedirects(r.unknownAcs[0]!) ? "did not" : "did"} redirect`,
        );
      if (cpuUnknown && alt.mapType !== "bus-address")
        conds.push("the CPU were an AMD Zen (family 0x17 or later)");
      alternative = { mapType: alt.mapType, distance: distOf(alt), if: conds.join(" and ") };
    }
  }
  return {
    provider: provider.name,
    client: client.name,
    mapType: r.mapType,
    distance: distOf(r),
    findings,
    hops: hopsFor(view, provider, client, r),
    hostBridges: r.hostBridges,
    kernelMessages: r.messages,
    ...(alternative ? { alternative } : {}),
  };
}

function hopsFor(
  view: BootedPci,
  provider: PciFunction,
  client: PciFunction,
  r: CalcResult,
): Hop[] {
  const tested = new Set(r.tested);
  const hop = (fn: PciFunction, role: Hop["role"]): Hop => {
    const ctrl = view.acsCtrl(fn);
    return {
      bdf: fn.name,
      role,
      pcieType: fn.desc.pcieType ?? null,
      acsCtrl: ctrl,
      acsBits: ctrl === null ? "no ACS" : ctrl === undefined ? "ACS unknown" : formatAcsBits(ctrl),
      redirects:
        ctrl === null
          ? false
          : ctrl === undefined
            ? undefined
            : (ctrl & (ACS.RR | ACS.CR | ACS.EC)) !== 0,
      tested: tested.has(fn),
      ...(fn.desc.link ? { link: fn.desc.link } : {}),
      downtrained: isDowntrained(fn.desc.link, linkPartner(fn)),
    };
  };
  const up: Hop[] = [];
  for (let a: PciFunction | null = provider; a; a = upstreamBridge(a)) {
    if (a === r.common) break;
    up.push(hop(a, a === provider ? "provider" : "bridge"));
  }
  const down: Hop[] = [];
  for (let b: PciFunction | null = client; b; b = upstreamBridge(b)) {
    if (b === r.common) break;
    down.unshift(hop(b, b === client ? "client" : "bridge"));
  }
  if (r.common) {
    const role = r.common === provider ? "provider" : "common";
    return [...up, hop(r.common, role), ...down];
  }
  return [...up, ...down];
}

function findingsFor(
  view: BootedPci,
  provider: PciFunction,
  client: PciFunction,
  r: CalcResult,
  assume: Assumptions,
): Finding[] {
  const out: Finding[] = [];
  const word = "allowlist (the kernel's messages say whitelist)";
  if (provider === client && r.mapType === "bus-address") {
    out.push({
      code: "same-function",
      severity: "info",
      path: [provider.name],
      message: "provider and client are the same function",
    });
  } else if (r.common && r.acsRedirect.length === 0) {
    out.push({
      code: "common-upstream-bridge",
      severity: "info",
      path: [r.common.name],
      message: `both sit below ${r.common.name}, and no port on the path redirects peer requests: TLPs turn around there, and the DMA address is the PCI bus address`,
    });
  }
  if (r.acsRedirect.length > 0) {
    const names = r.acsRedirect.map((f) => f.name);
    const list = acsHintList(names);
    out.push({
      code: "acs-redirect",
      severity: r.mapType === "not-supported" ? "error" : "warning",
      path: names,
      message: `ACS redirect (RR, CR or EC) is set on ${names.join(", ")}: peer requests are sent up to the root complex instead of across ${r.common?.name ?? "the switch"}`,
      hint: `boot with pci=disable_acs_redir=${list} (this clears RR/CR/EC on ${names.length === 1 ? "that port" : "those ports"}; devices below them may then share an IOMMU group)`,
      data: { ports: names, kernelParameter: `pci=disable_acs_redir=${list}` },
    });
    const byKernel = r.acsRedirect.filter((f) => {
      const o = view.acsOrigin(f);
      const ctrl = view.acsCtrl(f) ?? 0;
      const cap = view.acsCap(f) ?? 0;
      return o.source === "boot"
        ? o.steps.some((s) => s.startsWith("IOMMU"))
        : view.acsRequested === true &&
            (ctrl & KERNEL_ACS_BITS) === (cap & KERNEL_ACS_BITS) &&
            (ctrl & ACS.EC) === 0;
    });
    if (byKernel.length > 0)
      out.push({
        code: "iommu-requested-acs",
        severity: "info",
        path: byKernel.map((f) => f.name),
        message: `the redirect bits on ${byKernel.map((f) => f.name).join(", ")} are what Linux sets when an IOMMU driver requests ACS (pci_enable_acs: SV|RR|CR|UF); iommu=pt does not change that`,
        hint: "booting without the IOMMU (intel_iommu=off / amd_iommu=off) also leaves them clear, at the cost of DMA isolation; pci=disable_acs_redir keeps the IOMMU",
      });
  }
  if (!r.common) {
    const hbNote =
      provider.hostBridge === client.hostBridge
        ? `they share host bridge pci${provider.hostBridge.id} but sit below different root ports (or on the root bus), and root ports have no upstream bridge`
        : `they sit below different host bridges (pci${provider.hostBridge.id}, pci${client.hostBridge.id})`;
    out.push({
      code: "no-common-upstream",
      severity: r.mapType === "not-supported" ? "error" : "info",
      path: [provider.name, client.name],
      message: `no common upstream bridge: ${hbNote}; traffic must cross the host bridge`,
      hint: "the slot placement is the cause: put both devices below one PCIe switch to get bus-address P2P",
    });
  }
  if (r.mapType !== "bus-address") {
    if (r.cpuSupports === true)
      out.push({
        code: "cpu-allows-host-bridge",
        severity: "info",
        path: [],
        message: `the CPU (${view.cpu.vendor} family 0x${(view.cpu.family ?? 0).toString(16)}) is AMD Zen or later: Linux allows P2P through any host bridge (cpu_supports_p2pdma)`,
      });
    for (const hb of r.hostBridges) {
      const path = [hb.hostBridge, ...(hb.representative ? [hb.representative] : [])];
      if (hb.reason === "allowlisted")
        out.push({
          code: "host-bridge-allowlisted",
          severity: "info",
          path,
          message: `host bridge ${hb.hostBridge} (${hb.representative} ${hb.representativeId}) is in the kernel's P2PDMA ${word}`,
        });
      else if (hb.reason === "not-allowlisted")
        out.push({
          code: "host-bridge-not-allowlisted",
          severity: "error",
          path,
          message: `host bridge ${hb.hostBridge} is represented by ${hb.representative} [${hb.representativeId}], which is not in kernel ${view.profile.id}'s P2PDMA ${word}`,
          hint: "no boot parameter changes this: it takes a kernel whose allowlist has this host bridge, an AMD Zen CPU, or devices placed below one PCIe switch",
          data: { representative: hb.representative, id: hb.representativeId },
        });
      else if (hb.reason === "requires-same-host-bridge")
        out.push({
          code: "host-bridge-requires-same",
          severity: "error",
          path,
          message: `host bridge ${hb.hostBridge} [${hb.representativeId}] is allowlisted only for peers below the same host bridge`,
          hint: "place both devices below the same host bridge (same root complex)",
        });
      else
        out.push({
          code: "no-host-bridge-representative",
          severity: "error",
          path,
          message: `host bridge ${hb.hostBridge} has no function the allowlist can look at (the first root-bus function is neither 00.0 nor a Root Port)`,
        });
    }
    if (r.mapType === "through-host-bridge")
      out.push({
        code: "through-host-bridge",
        severity: "info",
        path: [],
        message: `P2P crosses the root complex: the exporter's pages are mapped like RAM (${view.iommu === "dma" || view.iommu === "dma-fq" ? "an IOVA through the IOMMU" : view.iommu === "off" || view.iommu === "identity" ? "the CPU physical address" : "an IOVA with an IOMMU, the physical address without"}); bandwidth depends on the root complex`,
      });
  }
  const virtual = r.tested.filter((f) => f.bdf.domain === 0xffff);
  if (virtual.length > 0)
    out.push({
      code: "assumption-virtual-switch",
      severity: "warning",
      path: virtual.map((f) => f.name),
      message: `the path crosses ${virtual.map((f) => f.name).join(", ")}, a virtual switch that a topology file (NCCL_TOPO_FILE style) inserted; the kernel sees the machine's real PCI tree, where these devices may share no bridge at all`,
      hint: "analyse a sysfs capture or lspci output taken inside the machine (peerbuf gather) for the kernel's real answer",
    });
  if (r.unknownAcs.length > 0) {
    const names = r.unknownAcs.map((f) => f.name);
    out.push({
      code: "assumption-unknown-acs",
      severity: "warning",
      path: names,
      message: `the input has no ACS control word for ${names.join(", ")}; assumed ${assume.unknownAcsRedirects(r.unknownAcs[0]!) ? "redirecting (an IOMMU is on and Linux sets RR/CR on capable ports)" : "not redirecting"}`,
      hint: "capture as root (sudo peerbuf gather, or lspci -vvv as root) so config space includes the ACS capability",
    });
  }
  if (r.cpuSupports === undefined && r.mapType !== "bus-address")
    out.push({
      code: "assumption-unknown-cpu",
      severity: "warning",
      path: [],
      message:
        "the input does not say which CPU the machine has; assumed not AMD Zen (an AMD Zen CPU would allow the host-bridge path)",
      hint: "give --cpu amd-zen|intel|..., or a capture with /proc/cpuinfo",
    });
  return out;
}
