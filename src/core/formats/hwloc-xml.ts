/**
 * @module hwloc-xml
 * Reads and writes hwloc topology XML (`hwloc2.dtd`): v2 (`<topology version="2.0">`), v3
 * (`version="3.0"`) and v1 (no version). Only the I/O part becomes a machine: `Bridge` objects
 * (host and PCI-to-PCI), `PCIDev` and their `OSDev` names, placed on the NUMA node of the CPU-side
 * object they hang from. Also holds the guarded XML reader the NCCL loader shares.
 */

import { XMLParser, XMLValidator } from "fast-xml-parser";
import { z } from "zod";
import { InputError, TopologyError } from "../errors.ts";
import { formatBdf, formatBusId, parseBdf } from "../hw/bdf.ts";
import type {
  CpuDescription,
  FunctionDescription,
  HostBridgeDescription,
  LinkDescription,
  MachineDescription,
  PciFunction,
} from "../hw/machine.ts";
import { buildMachine, MACHINE_SCHEMA_VERSION } from "../hw/machine.ts";

// ------------------------------------------------------------------------------------------------
// Guarded XML reading (shared with nccl-xml.ts)
// ------------------------------------------------------------------------------------------------

/** Largest XML text accepted (64 Mi characters); real hwloc/NCCL files are a few MB at most. */
export const MAX_XML_CHARS = 64 * 1024 * 1024;

/** A parsed element: attributes under `@`, child elements as arrays under their tag name. */
export type XmlNode = Readonly<Record<string, unknown>>;

const ATTRS = "@";
const META = XMLParser.getMetaDataSymbol() as unknown as string;

/** A document read by `readXml`: its root and a way to name an element's place in the text. */
export interface XmlDoc {
  readonly file: string;
  readonly root: XmlNode;
  /** `line L, column C` of an element and its label `tag[i]` (i-th such tag in the file). */
  where(node: XmlNode, tag: string): { readonly place: string; readonly label: string };
}

/** `line:column` (1-based) of a character offset. */
export function lineCol(text: string, index: number): { line: number; col: number } {
  let line = 1;
  let start = 0;
  for (let i = text.indexOf("\n"); i !== -1 && i < index; i = text.indexOf("\n", i + 1)) {
    line++;
    start = i + 1;
  }
  return { line, col: index - start + 1 };
}

// A DOCTYPE that names an external DTD and declares nothing itself (hwloc writes
// `<!DOCTYPE topology SYSTEM "hwloc2.dtd">`); we never fetch the DTD.
const QUOTED = String.raw`(?:"[^"<>\[\]]*"|'[^'<>\[\]]*')`;
const SAFE_DOCTYPE = new RegExp(
  String.raw`^<!DOCTYPE\s+[A-Za-z_][\w.:-]*(?:\s+(?:SYSTEM\s+${QUOTED}|PUBLIC\s+${QUOTED}\s+${QUOTED}))?\s*>`,
);
const DECLARATION = /<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)/gi;

/**
 * Refuses markup declarations before any parser sees them: entity declarations (billion-laughs,
 * external entities) and DOCTYPEs with an internal subset. A bare external-id DOCTYPE is allowed.
 */
function refuseDeclarations(file: string, text: string): void {
  let doctypes = 0;
  for (const m of text.matchAll(DECLARATION)) {
    const { line, col } = lineCol(text, m.index);
    const at = { file, place: `line ${line}, column ${col}` };
    const kind = m[1]!.toUpperCase();
    if (kind !== "DOCTYPE")
      throw new InputError(at, `refusing XML with a <!${kind}> declaration`, "input-unsafe");
    if (++doctypes > 1) throw new InputError(at, "refusing XML with two DOCTYPEs", "input-unsafe");
    if (!SAFE_DOCTYPE.test(text.slice(m.index, m.index + 1024)))
      throw new InputError(
        at,
        'refusing a DOCTYPE with an internal subset or unusual form (only <!DOCTYPE name SYSTEM "x.dtd"> is accepted)',
        "input-unsafe",
      );
  }
}

/**
 * Checks, validates and parses XML text into `XmlNode`s. Every element becomes an array entry,
 * attributes stay strings, entities stay unexpanded. Throws InputError with line and column.
 */
export function readXml(file: string, text: string): XmlDoc {
  if (text.length > MAX_XML_CHARS)
    throw new InputError(
      { file },
      `${text.length} characters of XML, more than the ${MAX_XML_CHARS} accepted`,
      "input-too-large",
    );
  const src = text.replace(/^\uFEFF/, "");
  refuseDeclarations(file, src);
  const nul = src.indexOf("\u0000");
  if (nul !== -1) {
    const { line, col } = lineCol(src, nul);
    throw new InputError({ file, place: `line ${line}, column ${col}` }, "binary data, not XML");
  }
  if (src.trim() === "") throw new InputError({ file }, "empty file, not XML");
  const valid = XMLValidator.validate(src, { allowBooleanAttributes: false });
  if (valid !== true) {
    const e = valid.err;
    // the validator reports elements left open at the end as a JSON list at 1:1
    const open = /^Invalid '\[([\s\S]*)\]' found/.exec(e.msg);
    if (open) {
      const names = [...open[1]!.matchAll(/"([^"]*)"/g)].map((m) => `<${m[1]}>`);
      const end = lineCol(src, src.length);
      throw new InputError(
        { file, place: `line ${end.line}, column ${end.col}` },
        `malformed XML: the text ends inside ${names.join(", ")} (truncated?)`,
      );
    }
    const where = Number.isInteger(e.line) && Number.isInteger(e.col);
    throw new InputError(
      { file, ...(where ? { place: `line ${e.line}, column ${e.col}` } : {}) },
      `malformed XML: ${e.msg}`,
    );
  }
  let root: XmlNode;
  try {
    const parser = new XMLParser({
      ignoreAttributes: false,
      attributeNamePrefix: "",
      attributesGroupName: ATTRS,
      parseTagValue: false,
      parseAttributeValue: false,
      processEntities: false,
      ignoreDeclaration: true,
      ignorePiTags: true,
      captureMetaData: true,
      isArray: (_name: string, _path: unknown, _leaf: boolean, isAttribute: boolean) =>
        !isAttribute,
    });
    root = parser.parse(src) as XmlNode;
  } catch (e) {
    throw new InputError({ file }, `malformed XML: ${(e as Error).message}`);
  }
  if (typeof root !== "object" || root === null)
    throw new InputError({ file }, "malformed XML: no document element");
  let byTag: Map<string, number[]> | undefined;
  return {
    file,
    root,
    where(node: XmlNode, tag: string) {
      const start = startOf(node);
      if (start === undefined) return { place: "", label: tag };
      if (!byTag) byTag = indexStarts(root);
      const list = byTag.get(tag) ?? [];
      const { line, col } = lineCol(src, start);
      return { place: `line ${line}, column ${col}`, label: `${tag}[${list.indexOf(start)}]` };
    },
  };
}

function startOf(node: XmlNode): number | undefined {
  const meta = node[META] as { startIndex?: unknown } | undefined;
  return typeof meta?.startIndex === "number" ? meta.startIndex : undefined;
}

/** Start offsets of every element by tag, in document order. */
function indexStarts(root: XmlNode): Map<string, number[]> {
  const out = new Map<string, number[]>();
  const stack: XmlNode[] = [root];
  while (stack.length > 0) {
    const node = stack.pop()!;
    for (const [tag, v] of Object.entries(node)) {
      if (tag === ATTRS || !Array.isArray(v)) continue;
      for (const child of v) {
        if (typeof child !== "object" || child === null) continue;
        const s = startOf(child as XmlNode);
        if (s !== undefined) {
          const l = out.get(tag);
          if (l) l.push(s);
          else out.set(tag, [s]);
        }
        stack.push(child as XmlNode);
      }
    }
  }
  for (const l of out.values()) l.sort((a, b) => a - b);
  return out;
}

/** An element's attributes (raw strings, entities not expanded). */
export function xmlAttrs(node: XmlNode): Readonly<Record<string, string>> {
  const a = Object.hasOwn(node, ATTRS) ? node[ATTRS] : undefined;
  return typeof a === "object" && a !== null ? (a as Record<string, string>) : {};
}

/** Child elements with one tag, in document order. */
export function xmlKids(node: XmlNode, tag: string): readonly XmlNode[] {
  const v = Object.hasOwn(node, tag) ? node[tag] : undefined;
  if (!Array.isArray(v)) return [];
  return v.filter((c): c is XmlNode => typeof c === "object" && c !== null);
}

/** Validates an element's attributes; a failure names the element, attribute and value. */
export function checkAttrs<T>(doc: XmlDoc, node: XmlNode, tag: string, schema: z.ZodType<T>): T {
  const attrs = xmlAttrs(node);
  const r = schema.safeParse(attrs);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const key = issue.path.map(String).join(".");
  const { place, label } = doc.where(node, tag);
  const got = key in attrs ? ` (got "${printable(attrs[key] ?? "")}")` : "";
  throw new InputError(
    { file: doc.file, ...(place ? { place } : {}) },
    `${label}${key ? `.${key}` : ""}: ${issue.message}${got}`,
  );
}

/** Fails at an element with a reason. */
export function failAt(doc: XmlDoc, node: XmlNode, tag: string, reason: string): never {
  const { place, label } = doc.where(node, tag);
  throw new InputError({ file: doc.file, ...(place ? { place } : {}) }, `${label}: ${reason}`);
}

function printable(s: string): string {
  const t = s.length > 60 ? `${s.slice(0, 60)}…` : s;
  let o = "";
  for (const c of t) {
    const code = c.codePointAt(0)!;
    o += code < 0x20 || code === 0x7f || c === '"' || c === "\\" ? `\\u${hex(code, 4)}` : c;
  }
  return o;
}

/** Decodes the five predefined entities and character references (no declared entities exist). */
export function decodeXmlText(s: string): string {
  if (!s.includes("&")) return s;
  return s.replace(/&(#x[0-9a-fA-F]{1,6}|#[0-9]{1,7}|lt|gt|amp|quot|apos);/g, (all, e: string) => {
    if (e[0] === "#") {
      const cp = e[1] === "x" ? Number.parseInt(e.slice(2), 16) : Number.parseInt(e.slice(1), 10);
      return cp > 0 && cp <= 0x10ffff ? String.fromCodePoint(cp) : all;
    }
    return { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" }[e as "lt"] ?? all;
  });
}

/** Escapes text for a double-quoted attribute value; control characters XML forbids become U+FFFD. */
export function escapeXmlAttr(s: string): string {
  let o = "";
  for (const c of s) {
    const code = c.codePointAt(0)!;
    o +=
      (
        { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" } as Record<
          string,
          string
        >
      )[c] ??
      (code < 0x20
        ? code === 9 || code === 10 || code === 13
          ? `&#x${code.toString(16)};`
          : "\uFFFD"
        : c);
  }
  return o;
}

/** Builds `<tag a="v" …` from defined attribute values, in the given order. */
export function xmlOpen(
  tag: string,
  attrs: readonly (readonly [string, string | undefined])[],
): string {
  let s = `<${tag}`;
  for (const [k, v] of attrs) if (v !== undefined) s += ` ${k}="${escapeXmlAttr(v)}"`;
  return s;
}

/**
 * Maps the loader's result through `buildMachine` so a description that cannot be a hierarchy is
 * reported as bad input rather than later as a TopologyError.
 */
export function checkBuildable(file: string, m: MachineDescription): MachineDescription {
  try {
    buildMachine(m);
  } catch (e) {
    if (e instanceof TopologyError) throw new InputError({ file }, e.message);
    throw e;
  }
  return m;
}

// ------------------------------------------------------------------------------------------------
// PCIe link bandwidth as hwloc computes it (hwloc_pcidisc_find_linkspeed)
// ------------------------------------------------------------------------------------------------

/** Line-code efficiency per generation: 8b/10b to Gen2, 128b/130b to Gen5, 242/256 FLIT after. */
function encoding(gts: number): number {
  if (gts <= 5) return 0.8;
  if (gts < 64) return 128 / 130;
  return 242 / 256;
}

/** GB/s of a link as hwloc reports it: per-lane rate × encoding × lanes / 8. */
export function hwlocLinkGBps(gts: number, width: number): number {
  return (gts * encoding(gts) * width) / 8;
}

const GEN_RATES = [2.5, 5, 8, 16, 32, 64, 128] as const;
const LINK_WIDTHS = [1, 2, 4, 8, 12, 16, 32] as const;

/** Every (rate, width) pair that gives `gbps`; one pair means the link is known. */
export function linkCandidates(gbps: number): { speed: number; width: number }[] {
  const out: { speed: number; width: number }[] = [];
  if (!(gbps > 0)) return out;
  for (const speed of GEN_RATES)
    for (const width of LINK_WIDTHS)
      if (Math.abs(hwlocLinkGBps(speed, width) - gbps) <= 1e-4 * gbps) out.push({ speed, width });
  return out;
}

// ------------------------------------------------------------------------------------------------
// hwloc XML reader
// ------------------------------------------------------------------------------------------------

const HEXN = (n: number) => `[0-9a-fA-F]{1,${n}}`;
const PCI_TYPE_RE = new RegExp(
  String.raw`^\s*(${HEXN(4)})\s+\[(${HEXN(4)}):(${HEXN(4)})\]\s+\[(${HEXN(4)}):(${HEXN(4)})\]\s+(${HEXN(2)})(?:\s+(${HEXN(2)}))?\s*$`,
);
const BRIDGE_PCI_RE = new RegExp(String.raw`^\s*(${HEXN(8)}):\[(${HEXN(2)})-(${HEXN(2)})\]\s*$`);
const FLOAT_RE = /^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$/;
const BITMAP_RE = /^(?:0xf\.\.\.f|0x[0-9a-fA-F]{1,8}|)(?:,(?:0x[0-9a-fA-F]{1,8})?)*$/;
const DEC_RE = /^\s*\d{1,10}\s*$/;

const isBusId = (s: string) => parseBdf(s) !== null;

const TopologyAttrs = z.looseObject({
  version: z
    .string()
    .regex(/^\d+(?:\.\d+)?$/, "not a version number")
    .optional(),
});

const ObjectAttrs = z.looseObject({
  type: z
    .string({ error: "missing the type attribute" })
    .regex(/^[A-Za-z][A-Za-z0-9]*$/, "not an object type"),
  os_index: z.string().regex(DEC_RE, "not a decimal index").optional(),
  nodeset: z.string().regex(BITMAP_RE, "not an hwloc bitmap").optional(),
  name: z.string().optional(),
  pci_busid: z.string().refine(isBusId, "not a PCI address").optional(),
  pci_type: z.string().regex(PCI_TYPE_RE, 'not "CCCC [VVVV:DDDD] [SVVV:SDDD] RR [PP]"').optional(),
  pci_link_speed: z.string().regex(FLOAT_RE, "not a number of GB/s").optional(),
  bridge_type: z
    .string()
    .regex(/^\s*[01]-1\s*$/, 'not a bridge type ("0-1" host, "1-1" PCI)')
    .optional(),
  bridge_pci: z.string().regex(BRIDGE_PCI_RE, 'not "DDDD:[SS-UU]"').optional(),
  depth: z.string().regex(DEC_RE, "not a decimal depth").optional(),
  osdev_type: z.string().regex(DEC_RE, "not a decimal OS device type").optional(),
});
type ObjectAttrs = z.infer<typeof ObjectAttrs>;

const InfoAttrs = z.looseObject({
  name: z.string({ error: "missing the name attribute" }),
  value: z.string().optional(),
});

/** Our own `<info>` carrying the exact link, which `pci_link_speed` cannot (see writeHwlocXml). */
export const PEERBUF_LINK_INFO = "PeerbufLink";
/** Our own `<info>` naming fields written as placeholders because the description lacked them. */
export const PEERBUF_UNKNOWN_INFO = "PeerbufUnknown";
const LINK_INFO_RE =
  /^speed=(\d+(?:\.\d+)?|Unknown|-) width=(\d{1,2}|-) maxSpeed=(\d+(?:\.\d+)?|Unknown|-) maxWidth=(\d{1,2}|-)$/;

type Mut<T> = { -readonly [K in keyof T]: T[K] };

interface Anchor {
  readonly type: string;
  readonly osIndex?: number;
  readonly nodeset?: string;
  readonly numaChildren: number[];
}

interface Ctx {
  /** CPU-side objects above, innermost last. */
  readonly anchors: readonly Anchor[];
  /** Set once inside an I/O subtree. */
  readonly io?: {
    /** BDF of the PCI bridge above; null directly under a host bridge or a CPU-side object. */
    readonly parent: string | null;
    readonly numa: number | undefined;
    /** Bus range below the parent (bridge_pci), when known. */
    readonly range?: readonly [number, number];
  };
  /** Nearest PCI function above (OS devices attach to it). */
  readonly fn?: Mut<FunctionDescription> & { osDevices?: string[] };
}

const NORMAL_IO = new Set(["Bridge", "PCIDev", "OSDev"]);
const NUMA_TYPES = new Set(["NUMANode", "Node"]);
const PACKAGE_TYPES = new Set(["Package", "Socket"]);

/** Bits set in an hwloc bitmap string: indexes, or "many" for an infinite set. */
function bitmapBits(text: string): number[] | "many" {
  if (text.startsWith("0xf...f")) return "many";
  const words = text.split(",");
  const bits: number[] = [];
  words.forEach((w, i) => {
    if (w === "") return;
    const v = Number.parseInt(w.replace(/^0x/, ""), 16);
    const base = (words.length - 1 - i) * 32;
    for (let b = 0; b < 32; b++) if (((v >>> b) & 1) === 1) bits.push(base + b);
  });
  return bits;
}

/** NUMA node of an I/O subtree: the nearest CPU-side ancestor that names exactly one. */
function numaOf(anchors: readonly Anchor[]): number | undefined {
  for (let i = anchors.length - 1; i >= 0; i--) {
    const a = anchors[i]!;
    if (NUMA_TYPES.has(a.type) && a.osIndex !== undefined) return a.osIndex; // v1: I/O under NUMANode
    if (a.nodeset !== undefined) {
      const bits = bitmapBits(a.nodeset);
      if (bits === "many" || bits.length > 1) return undefined;
      if (bits.length === 1) return bits[0];
    }
    if (a.numaChildren.length > 1) return undefined;
    if (a.numaChildren.length === 1) return a.numaChildren[0];
  }
  return undefined;
}

/**
 * Parses hwloc XML. PCI functions keep their nesting: a function's parent is the PCI bridge object
 * it sits in, null under a host bridge. Facts hwloc XML lacks (ACS, exact link) go to `unknowns`.
 */
export function parseHwlocXml(file: string, text: string): MachineDescription {
  const doc = readXml(file, text);
  const top = xmlKids(doc.root, "topology")[0];
  if (!top)
    throw new InputError(
      { file },
      "not hwloc XML: no <topology> element",
      xmlKids(doc.root, "system").length > 0 ? "input-unsupported" : "input-invalid",
    );
  const tv = checkAttrs(doc, top, "topology", TopologyAttrs).version;
  const major = tv === undefined ? 1 : Number.parseInt(tv, 10);
  if (major > 3)
    throw new InputError(
      { file },
      `hwloc XML version ${tv} is newer than the 1.x–3.x this reader knows`,
      "input-unsupported",
    );
  const roots = xmlKids(top, "object");
  if (roots.length !== 1)
    failAt(doc, top, "topology", `expected one root object, found ${roots.length}`);

  const functions: (Mut<FunctionDescription> & { osDevices?: string[] })[] = [];
  /** Where each function came from, to settle BDFs listed twice (hand-edited test files). */
  const origin = new Map<FunctionDescription, { node: XmlNode; fits: boolean; pciKids: number }>();
  const hostBridges = new Map<string, Mut<HostBridgeDescription>>();
  const hbNumaConflict = new Set<string>();
  const noNuma = new Set<string>();
  /** Per function: what the XML did not say, collected after duplicates are settled. */
  const gaps = new Map<FunctionDescription, { link?: string; noProgIf?: true; noIds?: true }>();
  const cpu: Mut<CpuDescription> = {};
  let packages = 0;
  const numaIds = new Set<number>();
  const infos = new Map<string, string>();

  const readInfos = (node: XmlNode): Map<string, string> => {
    const out = new Map<string, string>();
    for (const i of xmlKids(node, "info")) {
      const a = checkAttrs(doc, i, "info", InfoAttrs);
      if (a.value !== undefined && !out.has(a.name)) out.set(a.name, decodeXmlText(a.value));
    }
    return out;
  };
  for (const [k, v] of readInfos(top)) infos.set(k, v); // v3 keeps root infos here

  const addHostBridge = (
    domain: number,
    bus: number,
    busEnd: number | undefined,
    numa?: number,
  ) => {
    const id = formatBusId(domain, bus);
    const prev = hostBridges.get(id);
    if (prev) {
      if (prev.numaNode !== numa) {
        hbNumaConflict.add(id);
        delete prev.numaNode;
      }
      if (busEnd !== undefined && (prev.busEnd === undefined || busEnd > prev.busEnd))
        prev.busEnd = busEnd;
      return;
    }
    hostBridges.set(id, {
      domain,
      bus,
      ...(busEnd !== undefined ? { busEnd } : {}),
      ...(numa !== undefined ? { numaNode: numa } : {}),
    });
    if (numa === undefined) noNuma.add(id);
  };

  const pciFunction = (
    node: XmlNode,
    a: ObjectAttrs,
    io: NonNullable<Ctx["io"]>,
    bridge: boolean,
  ): Mut<FunctionDescription> & { osDevices?: string[] } => {
    if (a.pci_busid === undefined)
      failAt(doc, node, "object", `${a.type} object without a pci_busid attribute`);
    const b = parseBdf(a.pci_busid)!;
    const bdf = formatBdf(b);
    const parent = io.parent;
    const numa = io.numa;
    const f: Mut<FunctionDescription> & { osDevices?: string[] } = { bdf, parent, classCode: 0 };
    const gap: { link?: string; noProgIf?: true; noIds?: true } = {};
    gaps.set(f, gap);
    if (a.pci_type !== undefined) {
      const m = PCI_TYPE_RE.exec(a.pci_type)!;
      const h = (i: number) => Number.parseInt(m[i]!, 16);
      if (m[7] === undefined) gap.noProgIf = true;
      f.classCode = (h(1) << 8) | (m[7] !== undefined ? h(7) : 0);
      if (h(2) === 0 && h(3) === 0) gap.noIds = true;
      else {
        f.vendor = h(2);
        f.device = h(3);
        f.subsystemVendor = h(4);
        f.subsystemDevice = h(5);
        f.revision = h(6);
      }
    } else gap.noIds = true;
    if (bridge) {
      // hwloc makes a Bridge only of class 0x0604 with a type-1 header (hwloc_pcidisc_check_bridge_type)
      f.headerType = 1;
      if (a.bridge_pci !== undefined) {
        const m = BRIDGE_PCI_RE.exec(a.bridge_pci)!;
        f.secondaryBus = Number.parseInt(m[2]!, 16);
        f.subordinateBus = Number.parseInt(m[3]!, 16);
      }
    }
    const info = readInfos(node);
    const placeholders = new Set((info.get(PEERBUF_UNKNOWN_INFO) ?? "").split(/\s+/));
    if (placeholders.has("revision")) delete f.revision;
    if (placeholders.has("subsystem")) {
      delete f.subsystemVendor;
      delete f.subsystemDevice;
    }
    if (placeholders.has("bus-range")) {
      delete f.secondaryBus;
      delete f.subordinateBus;
    }
    const exact = info.get(PEERBUF_LINK_INFO);
    const lm = exact !== undefined ? LINK_INFO_RE.exec(exact) : null;
    if (lm) {
      const sp = (s: string) => (s === "Unknown" ? null : Number.parseFloat(s));
      const link: Mut<LinkDescription> = {};
      if (lm[1] !== "-") link.speed = sp(lm[1]!);
      if (lm[2] !== "-") link.width = Number.parseInt(lm[2]!, 10);
      if (lm[3] !== "-") link.maxSpeed = sp(lm[3]!);
      if (lm[4] !== "-") link.maxWidth = Number.parseInt(lm[4]!, 10);
      if (Object.keys(link).length > 0) f.link = link;
    } else if (a.pci_link_speed !== undefined) {
      const gbps = Number.parseFloat(a.pci_link_speed);
      const c = linkCandidates(gbps);
      if (c.length === 1) f.link = { speed: c[0]!.speed, width: c[0]!.width };
      else gap.link = gbps > 0 ? `${bdf} ${gbps.toFixed(2)} GB/s` : "";
    }
    const vendorName = info.get("PCIVendor");
    const deviceName = info.get("PCIDevice");
    const slot = info.get("PCISlot");
    if (vendorName) f.vendorName = vendorName;
    if (deviceName) f.deviceName = deviceName;
    if (slot) f.slot = slot;
    if (numa !== undefined) f.numaNode = numa;
    functions.push(f);
    const fits = !io.range || (b.bus >= io.range[0] && b.bus <= io.range[1]);
    origin.set(f, { node, fits, pciKids: 0 });
    return f;
  };

  // a PCI object straight under a CPU-side object: its root bus is its host bridge
  const rootHostBridge = (bdf: string, numa: number | undefined) => {
    const b = parseBdf(bdf)!;
    addHostBridge(b.domain, b.bus, undefined, numa);
  };

  const walk = (node: XmlNode, ctx: Ctx): void => {
    const a = checkAttrs(doc, node, "object", ObjectAttrs);
    const type = a.type;
    const kids = xmlKids(node, "object");
    if (!NORMAL_IO.has(type)) {
      if (type === "Misc") return; // Misc holds no PCI objects (hwloc refuses I/O below Misc)
      if (ctx.io) failAt(doc, node, "object", `${type} object inside an I/O object`);
      const osIndex = a.os_index !== undefined ? Number.parseInt(a.os_index, 10) : undefined;
      if (NUMA_TYPES.has(type) && osIndex !== undefined) numaIds.add(osIndex);
      const own = readInfos(node);
      if (PACKAGE_TYPES.has(type) || type === "Machine") {
        if (PACKAGE_TYPES.has(type)) packages++;
        const vendor = own.get("CPUVendor");
        const fam = own.get("CPUFamilyNumber");
        const model = own.get("CPUModelNumber");
        const name = own.get("CPUModel");
        if (vendor !== undefined && cpu.vendor === undefined) cpu.vendor = vendor;
        if (fam !== undefined && /^\d+$/.test(fam) && cpu.family === undefined)
          cpu.family = Number.parseInt(fam, 10);
        if (model !== undefined && /^\d+$/.test(model) && cpu.model === undefined)
          cpu.model = Number.parseInt(model, 10);
        if (name !== undefined && cpu.modelName === undefined) cpu.modelName = name;
      }
      if (type === "Machine") for (const [k, v] of own) if (!infos.has(k)) infos.set(k, v);
      const numaChildren: number[] = [];
      for (const k of kids) {
        const ka = xmlAttrs(k);
        if (ka["type"] !== undefined && NUMA_TYPES.has(ka["type"]) && ka["os_index"] !== undefined)
          if (DEC_RE.test(ka["os_index"])) numaChildren.push(Number.parseInt(ka["os_index"], 10));
      }
      const anchor: Anchor = {
        type,
        ...(osIndex !== undefined ? { osIndex } : {}),
        ...(a.nodeset !== undefined ? { nodeset: a.nodeset } : {}),
        numaChildren,
      };
      const next: Ctx = { anchors: [...ctx.anchors, anchor] };
      for (const k of kids) walk(k, next);
      return;
    }
    if (type === "OSDev") {
      if (a.name !== undefined && ctx.fn) {
        ctx.fn.osDevices ??= [];
        ctx.fn.osDevices.push(decodeXmlText(a.name));
      }
      for (const k of kids) walk(k, ctx);
      return;
    }
    const io: NonNullable<Ctx["io"]> = ctx.io ?? { parent: null, numa: numaOf(ctx.anchors) };
    let range: [number, number] | undefined;
    if (a.bridge_pci !== undefined) {
      const m = BRIDGE_PCI_RE.exec(a.bridge_pci)!;
      range = [Number.parseInt(m[2]!, 16), Number.parseInt(m[3]!, 16)];
    }
    if (type === "Bridge") {
      const bt = (a.bridge_type ?? (a.pci_busid !== undefined ? "1-1" : "0-1")).trim();
      if (bt === "0-1") {
        if (a.bridge_pci === undefined || !range)
          failAt(doc, node, "object", "host bridge without a bridge_pci attribute");
        const domain = Number.parseInt(BRIDGE_PCI_RE.exec(a.bridge_pci)![1]!, 16);
        addHostBridge(domain, range[0], range[1], io.numa);
        const next: Ctx = { anchors: ctx.anchors, io: { parent: null, numa: io.numa, range } };
        for (const k of kids) walk(k, next);
        return;
      }
    }
    const f = pciFunction(node, a, io, type === "Bridge");
    if (!ctx.io) rootHostBridge(f.bdf, io.numa);
    if (ctx.fn) origin.get(ctx.fn)!.pciKids++;
    const next: Ctx = {
      anchors: ctx.anchors,
      io: { parent: f.bdf, numa: io.numa, ...(range ? { range } : {}) },
      fn: f,
    };
    for (const k of kids) walk(k, next);
  };
  walk(roots[0]!, { anchors: [] });

  // A BDF listed twice cannot be one machine. Keep the copy whose bus lies in its parent's range
  // (hwloc nests by bus range when it discovers, so a copy outside it was edited in); else refuse.
  const dropped: string[] = [];
  const outOfRange: string[] = [];
  const groups = new Map<string, FunctionDescription[]>();
  for (const f of functions) groups.set(f.bdf, [...(groups.get(f.bdf) ?? []), f]);
  const drop = new Set<FunctionDescription>();
  for (const [bdf, list] of groups) {
    if (list.length === 1) {
      if (!origin.get(list[0]!)!.fits) outOfRange.push(bdf);
      continue;
    }
    const keep = list.filter((f) => origin.get(f)!.fits);
    const lines = list.map((f) => doc.where(origin.get(f)!.node, "object").place);
    if (keep.length !== 1 || list.some((f) => f !== keep[0] && origin.get(f)!.pciKids > 0))
      failAt(
        doc,
        origin.get(list[1]!)!.node,
        "object",
        `PCI function ${bdf} appears ${list.length} times (${lines.join("; ")})`,
      );
    for (const f of list) if (f !== keep[0]) drop.add(f);
    dropped.push(`${bdf} at ${lines.filter((_, i) => list[i] !== keep[0]).join("; ")}`);
  }
  const kept = functions.filter((f) => !drop.has(f));
  const keptGaps = kept.map((f) => ({ bdf: f.bdf, ...gaps.get(f) }));
  const ambiguousLinks = keptGaps.flatMap((g) => (g.link ? [g.link] : []));
  const zeroLinks = keptGaps.filter((g) => g.link === "").map((g) => g.bdf);
  const noProgIf = keptGaps.filter((g) => g.noProgIf).length;
  const zeroIds = keptGaps.filter((g) => g.noIds).map((g) => g.bdf);

  const arch = infos.get("Architecture");
  if (arch !== undefined) cpu.arch = arch;
  if (packages > 0 && (cpu.vendor !== undefined || cpu.modelName !== undefined))
    cpu.sockets = packages;
  const release = infos.get("OSRelease");

  const unknowns: string[] = [
    "ACS capability and control of every function: hwloc XML carries no PCI config space",
    "BAR addresses, IOMMU groups, drivers and the kernel command line: not in hwloc XML",
  ];
  if (ambiguousLinks.length > 0)
    unknowns.push(
      `PCIe link speed and width of ${ambiguousLinks.length} function(s): hwloc XML gives only the bandwidth (lanes × per-lane rate), which several generation × width pairs fit (${ambiguousLinks.slice(0, 4).join(", ")}${ambiguousLinks.length > 4 ? ", …" : ""})`,
    );
  if (zeroLinks.length > 0)
    unknowns.push(
      `PCIe link of ${zeroLinks.length} function(s): hwloc recorded no link speed (0 GB/s)`,
    );
  if (noProgIf > 0)
    unknowns.push(
      `programming interface (low byte of the class code) of ${noProgIf} function(s): hwloc < 3 XML omits it, recorded as 00`,
    );
  if (dropped.length > 0)
    unknowns.push(
      `PCI functions listed more than once; dropped the copies whose bus lies outside their parent bridge's bus range: ${dropped.join(", ")}`,
    );
  if (outOfRange.length > 0)
    unknowns.push(
      `placement of ${outOfRange.join(", ")}: bus number outside the bus range of the bridge it is nested in`,
    );
  if (zeroIds.length > 0)
    unknowns.push(
      `vendor/device IDs of ${zeroIds.join(", ")}: hwloc wrote 0000:0000 (config space not read)`,
    );
  const unplaced = [...noNuma, ...hbNumaConflict].filter((id) => hostBridges.has(id));
  if (unplaced.length > 0)
    unknowns.push(
      `NUMA node of the PCI trees under host bridge(s) ${[...new Set(unplaced)].map((i) => `pci${i}`).join(", ")}: hwloc attached them to an object that does not name a single NUMA node`,
    );

  return checkBuildable(file, {
    schemaVersion: MACHINE_SCHEMA_VERSION,
    source: { format: "hwloc-xml", path: file },
    ...(Object.keys(cpu).length > 0 ? { cpu } : {}),
    ...(release !== undefined ? { kernel: { release } } : {}),
    ...(numaIds.size > 0 ? { numaNodes: numaIds.size } : {}),
    hostBridges: [...hostBridges.values()],
    functions: kept,
    unknowns,
  });
}

// ------------------------------------------------------------------------------------------------
// hwloc XML writer
// ------------------------------------------------------------------------------------------------

/** hwloc bitmap string: 32-bit words, most significant first (hwloc_bitmap_snprintf). */
function bitmap(bits: readonly number[]): string {
  const max = Math.max(0, ...bits);
  const words = new Array<number>(Math.floor(max / 32) + 1).fill(0);
  for (const b of bits) words[Math.floor(b / 32)]! |= 1 << (b % 32);
  return words
    .reverse()
    .map((w) => `0x${(w >>> 0).toString(16).padStart(8, "0")}`)
    .join(",");
}

const hex = (n: number, w: number) => n.toString(16).padStart(w, "0");

/** v2 `osdev_type` guessed from a Linux device name; undefined when the name says nothing. */
function osdevType(name: string): number | undefined {
  if (/^(mlx\d+_\d+|rdmap|hfi1_|qib\d|irdma|efa_|bnxt_re|rxe|siw|erdma|ionic_|hns_)/.test(name))
    return 3;
  if (/^(eth|en[ops]|ens|ib\d|ib[a-z]|wl|bond|hsn|em\d|p\d+p\d)/.test(name)) return 2;
  if (/^(nvme\d+n\d+|sd[a-z]|vd[a-z]|hd[a-z]|mmcblk\d|dax\d|pmem\d)/.test(name)) return 0;
  if (/^(card\d|renderD\d|nvml\d|rsmi\d)/.test(name)) return 1;
  if (/^dma\d+chan/.test(name)) return 4;
  if (/^(cuda\d|opencl\d|ve\d|mic\d)/.test(name)) return 5;
  return undefined;
}

function linkInfo(l: LinkDescription | undefined): string | undefined {
  if (!l) return undefined;
  const sp = (v: number | null | undefined) =>
    v === undefined ? "-" : v === null ? "Unknown" : `${v}`;
  const w = (v: number | undefined) => (v === undefined ? "-" : `${v}`);
  if (
    l.speed === undefined &&
    l.width === undefined &&
    l.maxSpeed === undefined &&
    l.maxWidth === undefined
  )
    return undefined;
  return `speed=${sp(l.speed)} width=${w(l.width)} maxSpeed=${sp(l.maxSpeed)} maxWidth=${w(l.maxWidth)}`;
}

/**
 * Writes hwloc v2 XML that `lstopo --input` loads. hwloc needs CPU and memory objects, which a
 * machine description does not have: the writer makes one placeholder NUMA node and PU per NUMA
 * node the description uses (node 0 when none), each in its own Group that also holds the host
 * bridges of that node; host bridges of unknown locality hang from the Machine. `pci_link_speed`
 * is hwloc's bandwidth figure; the exact link goes into an `<info name="PeerbufLink">` hwloc keeps
 * but ignores. The programming interface is appended to `pci_type` as hwloc 3 does (hwloc 2
 * reads the first six fields and ignores the rest).
 */
export function writeHwlocXml(m: MachineDescription): string {
  const machine = buildMachine(m);
  let gp = 1;
  const out: string[] = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<!DOCTYPE topology SYSTEM "hwloc2.dtd">',
    '<topology version="2.0">',
  ];
  const line = (indent: number, s: string) => out.push(`${"  ".repeat(indent)}${s}`);
  const info = (indent: number, name: string, value: string | undefined) => {
    if (value !== undefined && value !== "")
      line(
        indent,
        `${xmlOpen("info", [
          ["name", name],
          ["value", value],
        ])}/>`,
      );
  };

  // hwloc places whole host bridges; root functions of one bus on different nodes (virtual
  // switches in cloud NCCL files) get one host bridge object per node
  const numaOfRoot = (f: PciFunction): number | undefined => {
    const n = f.desc.numaNode ?? f.hostBridge.desc.numaNode;
    return typeof n === "number" ? n : undefined;
  };
  const placed: {
    hb: (typeof machine.hostBridges)[number];
    node?: number;
    roots: PciFunction[];
  }[] = [];
  for (const h of machine.hostBridges) {
    const byNode = new Map<number | undefined, PciFunction[]>();
    for (const f of h.rootFunctions)
      byNode.set(numaOfRoot(f), [...(byNode.get(numaOfRoot(f)) ?? []), f]);
    for (const [node, roots] of byNode)
      placed.push({ hb: h, ...(node !== undefined ? { node } : {}), roots });
  }
  const nodes = new Set<number>();
  for (const p of placed) if (p.node !== undefined) nodes.add(p.node);
  for (let i = 0; i < (m.numaNodes ?? 0); i++) nodes.add(i);
  if (nodes.size === 0) nodes.add(0);
  const sorted = [...nodes].sort((a, b) => a - b);
  // one PU per NUMA node, numbered in node order
  const pu = new Map(sorted.map((n, i) => [n, i]));
  const allCpus = bitmap(sorted.map((_, i) => i));
  const allNodes = bitmap(sorted);

  const writeFunction = (f: PciFunction, indent: number, depth: number): void => {
    const d = f.desc;
    const b = f.bdf;
    const busid = `${hex(b.domain, 4)}:${hex(b.bus, 2)}:${hex(b.dev, 2)}.${b.fn}`;
    const cls = d.classCode >>> 0;
    const pciType = `${hex((cls >> 8) & 0xffff, 4)} [${hex(d.vendor ?? 0, 4)}:${hex(d.device ?? 0, 4)}] [${hex(d.subsystemVendor ?? 0, 4)}:${hex(d.subsystemDevice ?? 0, 4)}] ${hex(d.revision ?? 0, 2)} ${hex(cls & 0xff, 2)}`;
    const l = d.link;
    const gbps =
      typeof l?.speed === "number" && l.width !== undefined ? hwlocLinkGBps(l.speed, l.width) : 0;
    const unknown: string[] = [];
    if (d.revision === undefined) unknown.push("revision");
    if (d.subsystemVendor === undefined || d.subsystemDevice === undefined)
      unknown.push("subsystem");
    let range: [number, number] | undefined;
    if (f.isBridge) {
      if (d.secondaryBus !== undefined && d.subordinateBus !== undefined)
        range = [d.secondaryBus, d.subordinateBus];
      else if (f.children.length > 0) {
        // hwloc needs a bus range to keep a Bridge; the children's buses give one
        const buses = f.children.flatMap((c) => [c.bdf.bus, c.desc.subordinateBus ?? c.bdf.bus]);
        range = [Math.min(...buses), Math.max(...buses)];
        unknown.push("bus-range");
      }
    }
    // with no vendor the whole pci_type reads back as unknown (0000:0000)
    const marked = d.vendor === undefined ? unknown.filter((u) => u === "bus-range") : unknown;
    const placeholders = marked.length > 0 ? marked.join(" ") : undefined;
    const attrs: [string, string | undefined][] = [
      ["type", range ? "Bridge" : "PCIDev"],
      ["gp_index", `${gp++}`],
    ];
    if (range)
      attrs.push(
        ["bridge_type", "1-1"],
        ["depth", `${depth}`],
        ["bridge_pci", `${hex(b.domain, 4)}:[${hex(range[0], 2)}-${hex(range[1], 2)}]`],
      );
    attrs.push(["pci_busid", busid], ["pci_type", pciType], ["pci_link_speed", gbps.toFixed(6)]);
    const kids = f.children;
    const os = d.osDevices ?? [];
    const li = linkInfo(l);
    const empty =
      kids.length === 0 &&
      os.length === 0 &&
      !li &&
      !placeholders &&
      !d.vendorName &&
      !d.deviceName &&
      !d.slot;
    if (empty) {
      line(indent, `${xmlOpen("object", attrs)}/>`);
      return;
    }
    line(indent, `${xmlOpen("object", attrs)}>`);
    info(indent + 1, "PCIVendor", d.vendorName);
    info(indent + 1, "PCIDevice", d.deviceName);
    info(indent + 1, "PCISlot", d.slot);
    info(indent + 1, PEERBUF_LINK_INFO, li);
    info(indent + 1, PEERBUF_UNKNOWN_INFO, placeholders);
    for (const k of kids) writeFunction(k, indent + 1, depth + 1);
    for (const name of os) {
      const t = osdevType(name);
      line(
        indent + 1,
        `${xmlOpen("object", [
          ["type", "OSDev"],
          ["gp_index", `${gp++}`],
          ["name", name],
          ["osdev_type", t !== undefined ? `${t}` : undefined],
        ])}/>`,
      );
    }
    line(indent, "</object>");
  };

  const writeHostBridge = (p: (typeof placed)[number], indent: number) => {
    const h = p.hb;
    let end = h.desc.busEnd ?? h.bus;
    const visit = (f: PciFunction) => {
      end = Math.max(end, f.bdf.bus, f.desc.subordinateBus ?? 0);
      for (const c of f.children) visit(c);
    };
    for (const f of p.roots) visit(f);
    line(
      indent,
      `${xmlOpen("object", [
        ["type", "Bridge"],
        ["gp_index", `${gp++}`],
        ["bridge_type", "0-1"],
        ["depth", "0"],
        ["bridge_pci", `${hex(h.domain, 4)}:[${hex(h.bus, 2)}-${hex(Math.min(end, 0xff), 2)}]`],
      ])}>`,
    );
    for (const f of p.roots) writeFunction(f, indent + 1, 1);
    line(indent, "</object>");
  };

  line(
    1,
    `${xmlOpen("object", [
      ["type", "Machine"],
      ["os_index", "0"],
      ["cpuset", allCpus],
      ["complete_cpuset", allCpus],
      ["allowed_cpuset", allCpus],
      ["nodeset", allNodes],
      ["complete_nodeset", allNodes],
      ["allowed_nodeset", allNodes],
      ["gp_index", `${gp++}`],
    ])}>`,
  );
  info(2, "Architecture", m.cpu?.arch);
  info(2, "OSRelease", m.kernel?.release);
  info(2, "CPUVendor", m.cpu?.vendor);
  info(2, "CPUFamilyNumber", m.cpu?.family?.toString());
  info(2, "CPUModelNumber", m.cpu?.model?.toString());
  info(2, "CPUModel", m.cpu?.modelName);
  for (const n of sorted) {
    const cs = bitmap([pu.get(n)!]);
    const ns = bitmap([n]);
    const sets: [string, string][] = [
      ["cpuset", cs],
      ["complete_cpuset", cs],
      ["nodeset", ns],
      ["complete_nodeset", ns],
    ];
    const group = sorted.length > 1;
    const ind = group ? 3 : 2;
    if (group)
      line(2, `${xmlOpen("object", [["type", "Group"], ...sets, ["gp_index", `${gp++}`]])}>`);
    line(
      ind,
      `${xmlOpen("object", [["type", "NUMANode"], ["os_index", `${n}`], ...sets, ["gp_index", `${gp++}`]])}/>`,
    );
    line(
      ind,
      `${xmlOpen("object", [["type", "PU"], ["os_index", `${pu.get(n)}`], ...sets, ["gp_index", `${gp++}`]])}/>`,
    );
    for (const p of placed)
      if (p.node === n || (!group && p.node === undefined)) writeHostBridge(p, ind);
    if (group) line(2, "</object>");
  }
  if (sorted.length > 1) for (const p of placed) if (p.node === undefined) writeHostBridge(p, 2);
  line(1, "</object>");
  out.push("</topology>", "");
  return out.join("\n");
}
