/**
 * @module findings
 * Every answer carries coded findings: text, tables, JSON and the web page render this one
 * structure. Codes are stable; add, never rename.
 */

export type Severity = "info" | "warning" | "error";

export type FindingCode =
  | "same-function"
  | "common-upstream-bridge"
  | "acs-redirect"
  | "iommu-requested-acs"
  | "no-common-upstream"
  | "cpu-allows-host-bridge"
  | "host-bridge-allowlisted"
  | "host-bridge-not-allowlisted"
  | "host-bridge-requires-same"
  | "no-host-bridge-representative"
  | "through-host-bridge"
  | "assumption-unknown-acs"
  | "assumption-unknown-cpu"
  | "assumption-virtual-switch"
  | "smi-kernel-disagree";

export interface Finding {
  readonly code: FindingCode;
  readonly severity: Severity;
  /** BDFs (or `pciDDDD:BB`) the finding is about, in path order. */
  readonly path: readonly string[];
  readonly message: string;
  /** What would change it: a boot parameter, a BIOS setting, a slot move. */
  readonly hint?: string;
  readonly data?: Readonly<Record<string, unknown>>;
}

export const SEVERITY_RANK: Readonly<Record<Severity, number>> = { info: 0, warning: 1, error: 2 };
