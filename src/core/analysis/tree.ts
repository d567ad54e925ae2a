/**
 * @module tree
 * The hierarchy as a filtered, collapsible tree: what `peerbuf tree` prints and `--json` returns.
 */

import { formatAcsBits } from "../hw/config-space.ts";
import type { LinkDescription, Machine, PciFunction } from "../hw/machine.ts";
import type { BootedPci } from "../kernel/pci/pci-view.ts";
import { type DeviceKind, kindOf } from "./kinds.ts";

export interface Names {
  vendor(v: number): string | undefined;
  device(v: number, d: number): string | undefined;
}

export interface TreeNode {
  readonly bdf: string;
  readonly kind: DeviceKind;
  readonly id: string;
  readonly classCode: string;
  readonly name?: string;
  readonly pcieType: string | null;
  readonly link?: LinkDescription;
  /** Current link slower or narrower than its maximum. */
  readonly downtrained: boolean;
  readonly acs?: {
    readonly cap: number;
    readonly ctrl: number | null;
    readonly bits: string;
  } | null;
  readonly numaNode?: number | null;
  readonly iommuGroup?: number | null;
  readonly driver?: string | null;
  /** Memory and I/O BARs: CPU start and size. */
  readonly bars?: readonly {
    readonly index: number;
    readonly start: bigint;
    readonly size: bigint;
    readonly prefetchable: boolean;
    readonly is64: boolean;
    readonly mem: boolean;
  }[];
  readonly vf: boolean;
  readonly children: readonly TreeNode[];
  /** Set when this node stands for a run of identical siblings. */
  readonly collapsed?: { readonly count: number; readonly last: string };
}

export interface TreeRoot {
  readonly hostBridge: string;
  readonly numaNode?: number | null;
  readonly children: readonly TreeNode[];
}

export interface TreeOptions {
  readonly kinds?: readonly DeviceKind[];
  /** Only this function's subtree and its path to the root. */
  readonly device?: PciFunction;
  readonly collapse?: boolean;
  readonly names?: Names;
}

const hex4 = (v: number | undefined) => (v ?? 0).toString(16).padStart(4, "0");

/**
 * A link trained below what both of its ends support. `partner` is the other end's link
 * capability (the port above an endpoint, the device below a port), when known: a Gen4 device in
 * a Gen5 slot is not downtrained.
 */
export function isDowntrained(l: LinkDescription | undefined, partner?: LinkDescription): boolean {
  if (!l) return false;
  const cap = (a: number | null | undefined, b: number | null | undefined) =>
    a != null && b != null ? Math.min(a, b) : (a ?? undefined);
  const maxSpeed = cap(l.maxSpeed, partner?.maxSpeed);
  const maxWidth = cap(l.maxWidth, partner?.maxWidth);
  const slow = l.speed != null && maxSpeed != null && l.speed < maxSpeed;
  const narrow = l.width !== undefined && maxWidth != null && l.width > 0 && l.width < maxWidth;
  return slow || narrow;
}

/** The other end of a function's upstream link (port above), or of a port's downstream link. */
export function linkPartner(f: PciFunction): LinkDescription | undefined {
  const t = f.desc.pcieType;
  if (t === "root-port" || t === "downstream-port") return f.children[0]?.desc.link;
  return f.parent?.desc.link;
}

function deviceName(f: PciFunction, names?: Names): string | undefined {
  const d = f.desc;
  if (d.vendor === undefined) return undefined;
  const dev =
    (d.device !== undefined ? names?.device(d.vendor, d.device) : undefined) ?? d.deviceName;
  const ven = names?.vendor(d.vendor) ?? d.vendorName;
  if (ven && dev) return `${ven} ${dev}`;
  return dev ?? ven;
}

export function buildTree(
  machine: Machine,
  view: BootedPci | undefined,
  opts: TreeOptions = {},
): TreeRoot[] {
  const keep = new Set<PciFunction>();
  const want = (f: PciFunction) => !opts.kinds || opts.kinds.includes(kindOf(f.desc));
  const markUp = (f: PciFunction | null) => {
    for (let p = f; p; p = p.parent) keep.add(p);
  };
  const markDown = (f: PciFunction) => {
    keep.add(f);
    for (const c of f.children) markDown(c);
    for (const v of f.vfs) markDown(v);
  };
  if (opts.device) {
    markUp(opts.device);
    markDown(opts.device);
  } else {
    for (const f of machine.functions) if (want(f)) markUp(f);
  }
  const node = (f: PciFunction): TreeNode => {
    const ctrl = view?.acsCtrl(f);
    const acsDesc = f.desc.acs;
    const name = deviceName(f, opts.names);
    const kids = f.children.filter(
      (c) => keep.has(c) && (!opts.kinds || want(c) || c.children.length > 0),
    );
    return {
      bdf: f.name,
      kind: kindOf(f.desc),
      id: `${hex4(f.desc.vendor)}:${hex4(f.desc.device)}`,
      classCode: `0x${f.desc.classCode.toString(16).padStart(6, "0")}`,
      ...(name ? { name } : {}),
      pcieType: f.desc.pcieType ?? null,
      ...(f.desc.link ? { link: f.desc.link } : {}),
      downtrained: isDowntrained(f.desc.link, linkPartner(f)),
      ...(acsDesc === null
        ? { acs: null }
        : acsDesc
          ? {
              acs: {
                cap: acsDesc.cap,
                ctrl: ctrl ?? null,
                bits: ctrl == null ? "unknown" : formatAcsBits(ctrl),
              },
            }
          : {}),
      ...(f.desc.numaNode !== undefined ? { numaNode: f.desc.numaNode } : {}),
      ...(f.desc.iommuGroup !== undefined ? { iommuGroup: f.desc.iommuGroup } : {}),
      ...(f.desc.driver !== undefined ? { driver: f.desc.driver } : {}),
      ...(f.desc.bars?.length ? { bars: f.desc.bars } : {}),
      vf: f.physfn !== null,
      children: collapse(kids.map(node), opts.collapse ?? true),
    };
  };
  return machine.hostBridges
    .map((hb) => ({
      hostBridge: `pci${hb.id}`,
      ...(hb.desc.numaNode !== undefined ? { numaNode: hb.desc.numaNode } : {}),
      children: collapse(
        hb.rootFunctions.filter((f) => keep.has(f)).map(node),
        opts.collapse ?? true,
      ),
    }))
    .filter((r) => r.children.length > 0);
}

/** Runs of 4+ identical leaf siblings (same id, class, driver: typically VFs) become one node. */
function collapse(nodes: TreeNode[], enabled: boolean): TreeNode[] {
  if (!enabled) return nodes;
  const out: TreeNode[] = [];
  const sig = (n: TreeNode) =>
    n.children.length === 0
      ? `${n.id}|${n.classCode}|${n.driver}|${n.vf}|${n.link?.speed}|${n.link?.width}`
      : null;
  let i = 0;
  while (i < nodes.length) {
    const s = sig(nodes[i]!);
    let j = i + 1;
    while (s !== null && j < nodes.length && sig(nodes[j]!) === s) j++;
    if (j - i >= 4)
      out.push({ ...nodes[i]!, collapsed: { count: j - i, last: nodes[j - 1]!.bdf } });
    else out.push(...nodes.slice(i, j));
    i = j;
  }
  return out;
}
