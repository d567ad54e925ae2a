/**
 * @module acs
 * How the kernel programs each port's ACS Control register at enumeration: pci_enable_acs()
 * when an IOMMU driver called pci_request_acs(), then `disable_acs_redir` / `config_acs`.
 */

import { ACS } from "../../hw/config-space.ts";
import type { PciFunction } from "../../hw/machine.ts";
import { type DeviceMatch, firstMatch, type ParsedCmdline } from "../cmdline.ts";
import type { KernelProfile } from "../profile.ts";

/** Bits pci_std_enable_acs() turns on where the capability has them. */
export const KERNEL_ACS_BITS = ACS.SV | ACS.RR | ACS.CR | ACS.UF;
const REDIR_BITS = ACS.RR | ACS.CR | ACS.EC;

/** Models pci_dev_str_match(): a path checked from the device upward, or an ID match. */
export function deviceMatches(m: DeviceMatch, fn: PciFunction): boolean {
  if (m.kind === "id") {
    const d = fn.desc;
    return (
      (m.vendor === 0 || m.vendor === d.vendor) &&
      (m.device === 0 || m.device === d.device) &&
      (m.subVendor === 0 || m.subVendor === d.subsystemVendor) &&
      (m.subDevice === 0 || m.subDevice === d.subsystemDevice)
    );
  }
  // path form: last devfn is the device, earlier ones its bridges upward; the first carries bus
  let cur: PciFunction | null = fn;
  for (let i = m.devfns.length - 1; i >= 0; i--) {
    if (!cur) return false;
    if (((cur.bdf.dev << 3) | cur.bdf.fn) !== m.devfns[i]) return false;
    if (i === 0) return cur.bdf.bus === m.bus && cur.bdf.domain === m.domain;
    cur = cur.parent;
  }
  return false;
}

export interface AcsBootInput {
  readonly fn: PciFunction;
  /** ACS Capability register. */
  readonly cap: number;
  /** The control word as firmware left it. */
  readonly firmware: number;
}

export interface AcsBootResult {
  readonly ctrl: number;
  /** What changed it, in order (for explanations). */
  readonly steps: readonly string[];
}

/**
 * Models pci_acs_init() → pci_enable_acs(): the control word the kernel leaves on a function with
 * an ACS capability. `acsRequested` is pci_acs_enable (an IOMMU driver asked for ACS).
 */
export function bootAcsCtrl(
  input: AcsBootInput,
  acsRequested: boolean,
  cmdline: ParsedCmdline,
  profile: KernelProfile,
): AcsBootResult {
  const steps: string[] = [];
  let ctrl = input.firmware;
  if (acsRequested) {
    let add = input.cap & KERNEL_ACS_BITS;
    if (cmdline.noats) add |= input.cap & ACS.TB;
    ctrl |= add;
    steps.push("IOMMU requested ACS: SV|RR|CR|UF enabled where capable");
  }
  const disable = firstMatch(cmdline.disableAcsRedir, (m) => deviceMatches(m, input.fn));
  if (disable) {
    ctrl =
      profile.disableAcsRedirFrom === "current" ? ctrl & ~REDIR_BITS : input.firmware & ~REDIR_BITS;
    steps.push(`pci=disable_acs_redir=${disable.text}: RR|CR|EC cleared`);
  }
  if (profile.hasConfigAcs) {
    const cfg = firstMatch(cmdline.configAcs, (e) => deviceMatches(e.match, input.fn));
    if (cfg) {
      ctrl = (input.firmware & ~cfg.mask) | (cfg.flags & cfg.mask);
      steps.push(`pci=config_acs=...@${cfg.match.text}: recomputed from firmware`);
    }
  }
  return { ctrl, steps };
}
