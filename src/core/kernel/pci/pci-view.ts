/**
 * @module pci-view
 * Boots the kernel's PCI view of a machine: the ACS control word each function ends up with,
 * the CPU identity the P2P code reads, which functions have p2pdma state. What-if options
 * (another kernel, CPU, IOMMU mode, command line, ACS bits) re-boot the view from the capture.
 */

import { formatBdf, parseBdf } from "../../hw/bdf.ts";
import { ACS } from "../../hw/config-space.ts";
import type { IommuMode, Machine, PciFunction } from "../../hw/machine.ts";
import { iommuFromCmdline, type ParsedCmdline, parseCmdline } from "../cmdline.ts";
import { DEFAULT_PROFILE, type KernelProfile, kernelProfile } from "../profile.ts";
import { bootAcsCtrl, KERNEL_ACS_BITS } from "./acs.ts";
import type { CpuIdentity, PciView } from "./p2pdma.ts";

/** CPU presets for `--cpu`. */
export const CPU_PRESETS: Readonly<Record<string, CpuIdentity & { label: string }>> = {
  "amd-zen": { vendor: "AuthenticAMD", family: 0x19, label: "AMD Zen (family 0x19)" },
  "amd-pre-zen": { vendor: "AuthenticAMD", family: 0x16, label: "AMD family 0x16 (before Zen)" },
  hygon: { vendor: "HygonGenuine", family: 0x18, label: "Hygon Dhyana (family 0x18)" },
  intel: { vendor: "GenuineIntel", family: 6, label: "Intel (family 6)" },
  zhaoxin: { vendor: "CentaurHauls", family: 7, label: "Zhaoxin" },
  arm: { vendor: "ARM", label: "Arm (not x86)" },
};

export interface PciViewOptions {
  readonly profile?: string;
  readonly cpu?: CpuIdentity;
  readonly iommu?: IommuMode;
  /** Replaces the machine's kernel command line. */
  readonly cmdline?: string;
  /** Live ACS control words to force, by BDF. */
  readonly setAcs?: ReadonlyMap<string, number>;
  /** Functions that have p2pdma state besides those the capture shows (p2pmem/). */
  readonly p2pdmaState?: ReadonlySet<string>;
  /** Functions with published p2pmem besides those the capture shows. */
  readonly published?: ReadonlySet<string>;
}

export interface AcsOrigin {
  /** `capture`: read from config space; `boot`: computed as the kernel would set it. */
  readonly source: "capture" | "boot" | "set" | "unknown" | "none";
  readonly steps: readonly string[];
  readonly assumption?: string;
}

export interface BootedPci extends PciView {
  readonly iommu: IommuMode | undefined;
  readonly cmdline: ParsedCmdline;
  readonly acsRequested: boolean | undefined;
  acsCap(fn: PciFunction): number | null | undefined;
  acsOrigin(fn: PciFunction): AcsOrigin;
}

export class UnknownProfileError extends Error {}

export function bootPci(machine: Machine, opts: PciViewOptions = {}): BootedPci {
  const profile: KernelProfile | undefined = kernelProfile(
    opts.profile ?? machine.desc.kernel?.profile ?? DEFAULT_PROFILE,
  );
  if (!profile)
    throw new UnknownProfileError(
      `unknown kernel profile "${opts.profile}" (known: 6.1, mainline)`,
    );
  const cpu: CpuIdentity = opts.cpu ?? {
    ...(machine.desc.cpu?.vendor !== undefined ? { vendor: machine.desc.cpu.vendor } : {}),
    ...(machine.desc.cpu?.family !== undefined ? { family: machine.desc.cpu.family } : {}),
  };
  const capturedIommu = machine.desc.iommu?.mode;
  const cmdlineOpts = { hasConfigAcs: profile.hasConfigAcs };
  const capturedCmdline = parseCmdline(machine.desc.cmdline ?? "", cmdlineOpts);
  const cmdline =
    opts.cmdline !== undefined ? parseCmdline(opts.cmdline, cmdlineOpts) : capturedCmdline;
  let iommu: IommuMode | undefined = opts.iommu ?? capturedIommu;
  if (opts.iommu === undefined && opts.cmdline !== undefined)
    iommu = iommuFromCmdline(cmdline, cpu.vendor, capturedIommu);
  // a live word already reflects the IOMMU and command line it booted with (spec §12)
  const reboot = opts.iommu !== undefined || opts.cmdline !== undefined;
  const acsRequested = iommu === undefined ? undefined : iommu !== "off";
  const capturedRequested = capturedIommu === undefined ? undefined : capturedIommu !== "off";

  const ctrl = new Map<PciFunction, number | null | undefined>();
  const origin = new Map<PciFunction, AcsOrigin>();
  for (const fn of machine.functions) {
    const acs = fn.desc.acs;
    if (acs === null) {
      ctrl.set(fn, null);
      origin.set(fn, { source: "none", steps: [] });
      continue;
    }
    if (acs === undefined) {
      ctrl.set(fn, undefined);
      origin.set(fn, { source: "unknown", steps: [] });
      continue;
    }
    if (acs.ctrl !== undefined && !reboot) {
      ctrl.set(fn, acs.ctrl);
      origin.set(fn, { source: "capture", steps: [] });
      continue;
    }
    // re-boot: estimate the firmware word, then redo what the kernel does
    let firmware = 0;
    let assumption = "firmware left the ACS control word 0";
    if (acs.ctrl !== undefined) {
      if (capturedRequested === false) {
        firmware = acs.ctrl;
        assumption = "firmware word = the captured word (no IOMMU when captured)";
      } else {
        firmware = acs.ctrl & ~(acs.cap & (KERNEL_ACS_BITS | ACS.TB));
        assumption = "firmware word = the captured word without the bits the kernel sets";
      }
    }
    if (acsRequested === undefined) {
      ctrl.set(fn, undefined);
      origin.set(fn, {
        source: "unknown",
        steps: [],
        assumption: "IOMMU state unknown, so the kernel's ACS setting is unknown",
      });
      continue;
    }
    const r = bootAcsCtrl({ fn, cap: acs.cap, firmware }, acsRequested, cmdline, profile);
    ctrl.set(fn, r.ctrl);
    origin.set(fn, { source: "boot", steps: r.steps, assumption });
  }
  for (const [bdf, word] of opts.setAcs ?? []) {
    const fn = machine.byBdf(bdf);
    if (!fn) continue;
    ctrl.set(fn, word);
    origin.set(fn, { source: "set", steps: [`--set-acs ${fn.name}=0x${word.toString(16)}`] });
  }
  const extraState = new Set([...(opts.p2pdmaState ?? [])].map((b) => normal(b)));
  const extraPublished = new Set([...(opts.published ?? [])].map((b) => normal(b)));
  return {
    machine,
    profile,
    cpu,
    iommu,
    cmdline,
    acsRequested,
    acsCtrl: (fn) => ctrl.get(fn),
    acsCap: (fn) => (fn.desc.acs === null ? null : fn.desc.acs?.cap),
    acsOrigin: (fn) => origin.get(fn) ?? { source: "unknown", steps: [] },
    hasP2pdmaState: (fn) => fn.desc.p2pmem !== undefined || extraState.has(fn.name),
    hasPublishedP2pmem: (fn) =>
      (fn.desc.p2pmem?.published === true &&
        (!profile.findNeedsPool || fn.desc.p2pmem.size > 0n)) ||
      extraPublished.has(fn.name),
  };
}

function normal(bdf: string): string {
  const b = parseBdf(bdf);
  return b ? formatBdf(b) : bdf;
}
