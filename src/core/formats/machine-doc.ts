/**
 * @module machine-doc
 * peerbuf's own machine description: a versioned YAML or JSON document a person can write by
 * hand, and the lossless serialisation of a `MachineDescription`. Values are written the way
 * Linux tools print them: IDs, classes and bus numbers in hex, BDFs as strings, addresses in hex,
 * sizes with binary units, links as `32GT/s x16`, ACS bits by name. Functions may be nested under
 * their bridge (`children:`) or listed flat with `parent:`.
 *
 * Order: a flat document keeps its function order; once any function has `children`, the
 * functions load in BDF order (the tree carries no order of its own). The writer nests when the
 * description is in BDF order and writes flat otherwise, so `parse(write(m))` equals `m`.
 */

import { Document, isMap, isScalar, isSeq, visit } from "yaml";
import { z } from "zod";
import { InputError, TopologyError } from "../errors.ts";
import { compareBdf, formatBdf, formatBusId, parseBdf } from "../hw/bdf.ts";
import { ACS, ACS_BIT_NAMES, type AcsBitName, type PcieType } from "../hw/config-space.ts";
import {
  type AcsDescription,
  type BarDescription,
  buildMachine,
  type FunctionDescription,
  type HostBridgeDescription,
  type IommuMode,
  type LinkDescription,
  MACHINE_SCHEMA_VERSION,
  type MachineDescription,
} from "../hw/machine.ts";
import { editDistance } from "../text.ts";
import {
  collectIssues,
  fail,
  type Located,
  type Path,
  placeOf,
  readLocatedYaml,
  type ZIssue,
} from "./located-yaml.ts";

/** Document versions this build reads. */
export const SUPPORTED_SCHEMA_VERSIONS: readonly number[] = [MACHINE_SCHEMA_VERSION];

const U64_LIMIT = 1n << 64n;

// ---------------------------------------------------------------------------------------------
// value codecs

/** Renders an input value for an error message. */
function show(v: unknown): string {
  if (v === undefined) return "nothing";
  if (v === null) return "null";
  if (typeof v === "string") return JSON.stringify(v.length > 48 ? `${v.slice(0, 45)}...` : v);
  if (typeof v === "number") return `the number ${v}`;
  if (typeof v === "boolean") return String(v);
  if (Array.isArray(v)) return "a list";
  if (v instanceof Uint8Array) return "binary data";
  return "a mapping";
}

type IssueLike = { readonly input?: unknown };

/** Zod error callback: `expected <what>, got <input>`, with a hint when YAML made a number. */
function expected(what: string, hexHint = false) {
  return (iss: IssueLike): string => {
    if (iss.input === undefined) return `missing: expected ${what}`;
    const hint =
      hexHint && typeof iss.input === "number"
        ? ` (write hex values as strings such as "0x10de": YAML reads unquoted digits as decimal)`
        : "";
    return `expected ${what}, got ${show(iss.input)}${hint}`;
  };
}

const HEX_RE = /^(?:0[xX])?[0-9a-fA-F]+$/;

function hexInt(what: string, bits: number) {
  const max = 2 ** bits - 1;
  return z
    .string({ error: expected(what, true) })
    .regex(HEX_RE, { error: expected(what) })
    .transform((s, ctx) => {
      const v = Number.parseInt(s.replace(/^0[xX]/, ""), 16);
      if (v > max) {
        ctx.issues.push({
          code: "custom",
          input: s,
          message: `${show(s)} does not fit in ${bits} bits (${what})`,
        });
        return z.NEVER;
      }
      return v;
    });
}

function intIn(what: string, min: number, max: number) {
  const e = expected(`${what} (an integer ${min}..${max})`);
  return z.number({ error: e }).int({ error: e }).min(min, { error: e }).max(max, { error: e });
}

const text = (what = "a string") => z.string({ error: expected(what) });
const bool = z.boolean({ error: expected("true or false") });

const ID_PAIR_RE = /^[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}$/;
const idPair = (what: string) =>
  z
    .string({ error: expected(what) })
    .regex(ID_PAIR_RE, { error: expected(what) })
    .transform((s) => {
      const [v, d] = s.split(":") as [string, string];
      return { vendor: Number.parseInt(v, 16), device: Number.parseInt(d, 16) };
    });

const BDF_RE = /^(?:[0-9a-fA-F]{1,8}:)?[0-9a-fA-F]{1,2}:[0-9a-fA-F]{1,2}\.[0-7]$/;
const BDF_WHAT = 'a PCI address such as "0000:15:00.0"';
const bdfText = z
  .string({ error: expected(BDF_WHAT) })
  .regex(BDF_RE, { error: expected(BDF_WHAT) })
  .transform((s, ctx) => {
    const b = parseBdf(s);
    if (!b) {
      ctx.issues.push({ code: "custom", input: s, message: `${show(s)}: device number above 1f` });
      return z.NEVER;
    }
    return formatBdf(b);
  });

const BUS_ID_RE = /^(?:[0-9a-fA-F]{1,8}:)?[0-9a-fA-F]{1,2}$/;
const BUS_ID_WHAT = 'a root bus such as "0000:15" (domain:bus, hex)';
const busId = z
  .string({ error: expected(BUS_ID_WHAT) })
  .regex(BUS_ID_RE, { error: expected(BUS_ID_WHAT) })
  .transform((s) => {
    const parts = s.split(":");
    const bus = Number.parseInt(parts.pop()!, 16);
    const domain = parts.length > 0 ? Number.parseInt(parts[0]!, 16) : 0;
    return { domain, bus };
  });

const UNIT_SHIFT: Readonly<Record<string, bigint>> = {
  B: 0n,
  K: 10n,
  KiB: 10n,
  M: 20n,
  MiB: 20n,
  G: 30n,
  GiB: 30n,
  T: 40n,
  TiB: 40n,
  P: 50n,
  PiB: 50n,
  E: 60n,
  EiB: 60n,
};
const BYTES_RE = /^(?:0[xX][0-9a-fA-F_]+|[0-9]+(?:\.[0-9]+)?\s*(?:[KMGTPE]iB|[KMGTPE]|B))$/;
const BYTES_WHAT =
  'hex ("0x38000000000") or a number with a binary unit ("96GiB", "2MiB", "4096B")';

/** Parses `0x...`, `96GiB`, `1.5 MiB`, `64M` (lspci's binary M); returns a reason on failure. */
function parseBytes(input: string): bigint | string {
  const t = input.trim();
  const hexm = /^0[xX]([0-9a-fA-F_]+)$/.exec(t);
  if (hexm) {
    const digits = hexm[1]!.replaceAll("_", "");
    if (digits === "") return `${show(input)} is not a hex number`;
    return BigInt(`0x${digits}`);
  }
  if (/^0[xX]/.test(t)) return `${show(input)} is not a hex number`;
  const m = /^([0-9]+)(?:\.([0-9]+))?\s*([A-Za-z]*)$/.exec(t);
  if (!m) return `expected ${BYTES_WHAT}, got ${show(input)}`;
  const unit = m[3]!;
  if (unit === "")
    return `${show(input)} has no unit: write "0x..." for hex or add a unit ("${t}B" for bytes)`;
  const shift = UNIT_SHIFT[unit];
  if (shift === undefined) {
    if (/^[kKMGTPE]B$/.test(unit))
      return `${show(input)}: ${unit} is a decimal unit; PCI sizes are binary, write "${m[1]}${m[2] ? `.${m[2]}` : ""}${unit[0]!.toUpperCase()}iB"`;
    return `${show(input)}: unknown unit "${unit}"; use B, KiB, MiB, GiB, TiB, PiB or EiB`;
  }
  const frac = m[2] ?? "";
  const scale = 10n ** BigInt(frac.length);
  const num = BigInt(m[1]! + frac) << shift;
  if (num % scale !== 0n) return `${show(input)} is not a whole number of bytes`;
  return num / scale;
}

/** `0x1000`, `4KiB`, `1.5GiB` → bytes; null when not a size. */
export function parseByteSize(input: string): bigint | null {
  const v = parseBytes(input);
  return typeof v === "bigint" ? v : null;
}

const UNITS_DESC: readonly [string, bigint][] = [
  ["EiB", 60n],
  ["PiB", 50n],
  ["TiB", 40n],
  ["GiB", 30n],
  ["MiB", 20n],
  ["KiB", 10n],
];

/** Sizes the way a person writes them: `32GiB`, `16KiB`, `128B`; hex when no unit fits. */
export function formatByteSize(v: bigint): string {
  if (v > 0n && v < 1024n) return `${v}B`;
  if (v > 0n)
    for (const [unit, shift] of UNITS_DESC)
      if (v % (1n << shift) === 0n) return `${v >> shift}${unit}`;
  return hexBig(v);
}

const hexBig = (v: bigint): string => `0x${v.toString(16)}`;
const hexNum = (v: number, width: number): string => `0x${v.toString(16).padStart(width, "0")}`;
const hex4 = (v: number): string => v.toString(16).padStart(4, "0");

function bytes(what: "address" | "size", allowZero: boolean) {
  const max = what === "size" ? U64_LIMIT : U64_LIMIT - 1n;
  const label = `${what === "size" ? "a size" : "an address"}: ${BYTES_WHAT}`;
  return z
    .string({ error: expected(label) })
    .regex(BYTES_RE, {
      error: (iss) => {
        const r = typeof iss.input === "string" ? parseBytes(iss.input) : null;
        return typeof r === "string" ? r : expected(label)(iss);
      },
    })
    .transform((s, ctx) => {
      const v = parseBytes(s);
      const bad =
        typeof v === "string"
          ? v
          : v > max
            ? `${show(s)} is beyond the 64-bit address space`
            : v === 0n && !allowZero
              ? `a ${what} cannot be zero`
              : null;
      if (bad !== null || typeof v === "string") {
        ctx.issues.push({ code: "custom", input: s, message: bad ?? "" });
        return z.NEVER;
      }
      return v;
    });
}

const SPEED_WHAT = "a link speed in GT/s (2.5, 5, 8, 16, 32, 64) or null for unknown";
const speed = z
  .number({ error: expected(SPEED_WHAT) })
  .min(0, { error: expected(SPEED_WHAT) })
  .refine(Number.isFinite, { error: expected(SPEED_WHAT) })
  .nullable();
const width = intIn("a link width", 0, 63);

const GEN_SPEED: Readonly<Record<string, number>> = {
  "1": 2.5,
  "2": 5,
  "3": 8,
  "4": 16,
  "5": 32,
  "6": 64,
};
const LINK_RE = /^(?:([0-9]+(?:\.[0-9]+)?)\s*GT\/s|Gen([1-6]))\s+x([0-9]{1,2})$/;
const LINK_WHAT = 'a link such as "32GT/s x16" or "Gen4 x8", or {maxSpeed, maxWidth, speed, width}';
const link = z.union(
  [
    z
      .string()
      .regex(LINK_RE, { error: expected(LINK_WHAT) })
      .transform((s, ctx): LinkDescription => {
        const m = LINK_RE.exec(s)!;
        const sp = m[1] !== undefined ? Number(m[1]) : GEN_SPEED[m[2]!]!;
        const w = Number(m[3]);
        if (w > 63) {
          ctx.issues.push({ code: "custom", input: s, message: `link width x${w} is above x63` });
          return z.NEVER;
        }
        return { maxSpeed: sp, maxWidth: w, speed: sp, width: w };
      }),
    z
      .strictObject({
        maxSpeed: speed.optional(),
        maxWidth: width.optional(),
        speed: speed.optional(),
        width: width.optional(),
      })
      .transform((o): LinkDescription => compact(o)),
  ],
  { error: expected(LINK_WHAT) },
);

const ACS_NAME = "(?:SV|TB|RR|CR|UF|EC|DT)";
const ACS_RE = new RegExp(
  `^\\s*(?:0[xX][0-9a-fA-F]{1,4}|none|${ACS_NAME}(?:[\\s,|+]+${ACS_NAME})*)\\s*$`,
);
const ACS_WHAT = 'ACS bits by name ("SV RR CR UF"), "none", or hex ("0x1d")';
const acsBits = z
  .string({ error: expected(ACS_WHAT) })
  .regex(ACS_RE, { error: expected(ACS_WHAT) })
  .transform((s) => {
    const t = s.trim();
    if (t === "none") return 0;
    if (/^0[xX]/.test(t)) return Number.parseInt(t.slice(2), 16);
    let v = 0;
    for (const name of t.split(/[\s,|+]+/)) v |= ACS[name as AcsBitName];
    return v;
  });

/** ACS register word as names in lspci order, `none`, or hex when reserved bits are set. */
export function formatAcsWord(v: number): string {
  if (v === 0) return "none";
  if (v & ~0x7f) return hexNum(v, 1);
  return ACS_BIT_NAMES.filter((n) => v & ACS[n]).join(" ");
}

const CONFIG_WHAT = "config space as hex bytes (whitespace allowed)";
const configHex = z
  .string({ error: expected(CONFIG_WHAT) })
  .regex(/^[0-9a-fA-F\s]*$/, { error: expected(CONFIG_WHAT) })
  .transform((s, ctx) => {
    const h = s.replace(/\s+/g, "");
    if (h.length % 2 !== 0) {
      ctx.issues.push({
        code: "custom",
        input: s,
        message: "config hex has an odd number of digits",
      });
      return z.NEVER;
    }
    if (h.length > 2 * 4096) {
      ctx.issues.push({ code: "custom", input: s, message: "config space is at most 4096 bytes" });
      return z.NEVER;
    }
    const out = new Uint8Array(h.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(h.slice(2 * i, 2 * i + 2), 16);
    return out;
  });

function configText(b: Uint8Array, lineBytes: number): string {
  let hexs = "";
  for (const x of b) hexs += x.toString(16).padStart(2, "0");
  if (lineBytes <= 0) return hexs;
  const lines: string[] = [];
  for (let i = 0; i < hexs.length; i += 2 * lineBytes) lines.push(hexs.slice(i, i + 2 * lineBytes));
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// document schema

const PCIE_TYPES = [
  "endpoint",
  "legacy-endpoint",
  "root-port",
  "upstream-port",
  "downstream-port",
  "pcie-to-pci-bridge",
  "pci-to-pcie-bridge",
  "rc-endpoint",
  "rc-event-collector",
] as const satisfies readonly PcieType[];
const IOMMU_MODES = ["off", "dma", "dma-fq", "identity"] as const satisfies readonly IommuMode[];

const oneOf = <T extends readonly [string, ...string[]]>(values: T) =>
  z.enum(values, { error: expected(`one of ${values.join(", ")}`) });

const BAR_KIND_RE = /^(mem|io)(32|64)?(-pref)?$/;
const BAR_KIND_WHAT = "mem32, mem64, mem32-pref, mem64-pref or io";

const barSchema = z
  .strictObject({
    index: intIn("a BAR index", 0, 16),
    start: bytes("address", true),
    size: bytes("size", false),
    kind: z
      .string({ error: expected(BAR_KIND_WHAT) })
      .regex(BAR_KIND_RE, { error: expected(BAR_KIND_WHAT) }),
  })
  .transform((b, ctx): BarDescription => {
    if (b.start + b.size > U64_LIMIT)
      ctx.issues.push({
        code: "custom",
        path: ["size"],
        input: formatByteSize(b.size),
        message: `the BAR runs past the end of the 64-bit address space`,
      });
    const m = BAR_KIND_RE.exec(b.kind)!;
    return {
      index: b.index,
      start: b.start,
      size: b.size,
      mem: m[1] === "mem",
      prefetchable: m[3] !== undefined,
      is64: m[2] === "64",
    };
  });

const barList = z.array(barSchema, { error: expected("a list of BARs") }).check((ctx) => {
  const seen = new Set<number>();
  ctx.value.forEach((b, i) => {
    if (seen.has(b.index))
      ctx.issues.push({
        code: "custom",
        path: [i, "index"],
        input: b.index,
        message: `BAR ${b.index} is listed twice`,
      });
    seen.add(b.index);
  });
});

const acsSchema = z
  .strictObject({
    cap: acsBits,
    ctrl: acsBits.optional(),
    offset: hexInt("a config-space offset", 12).optional(),
  })
  .transform((a): AcsDescription => compact(a))
  .nullable();

const windowSchema = z
  .strictObject({
    cpuStart: bytes("address", true),
    size: bytes("size", false),
    busStart: bytes("address", true).optional(),
  })
  .transform((w, ctx) => {
    const busStart = w.busStart ?? w.cpuStart;
    for (const [key, start] of [
      ["size", w.cpuStart],
      ["busStart", busStart],
    ] as const)
      if (start + w.size > U64_LIMIT)
        ctx.issues.push({
          code: "custom",
          path: [key],
          input: w,
          message: "the window runs past the end of the 64-bit address space",
        });
    return { cpuStart: w.cpuStart, size: w.size, busStart };
  });

const hostBridgeSchema = z
  .strictObject({
    bus: busId,
    busEnd: hexInt("a bus number", 8).optional(),
    numaNode: intIn("a NUMA node", 0, 65535).nullable().optional(),
    windows: z.array(windowSchema, { error: expected("a list of windows") }).optional(),
  })
  .check((ctx) => {
    const v = ctx.value;
    if (v.busEnd !== undefined && v.busEnd < v.bus.bus)
      ctx.issues.push({
        code: "custom",
        path: ["busEnd"],
        input: v.busEnd,
        message: `busEnd ${hexNum(v.busEnd, 2)} is below the root bus ${hexNum(v.bus.bus, 2)}`,
      });
  });

const sriovSchema = z
  .strictObject({
    totalVfs: intIn("a VF count", 0, 65535),
    numVfs: intIn("a VF count", 0, 65535),
  })
  .nullable();

const p2pmemSchema = z.strictObject({
  size: bytes("size", true),
  available: bytes("size", true),
  published: bool,
});

/** A function as written: the parsed values before flattening. */
interface FnDoc {
  bdf: string;
  parent?: string | null | undefined;
  id?: { vendor: number; device: number } | undefined;
  vendor?: number | undefined;
  device?: number | undefined;
  subsystem?: { vendor: number; device: number } | undefined;
  subsystemVendor?: number | undefined;
  subsystemDevice?: number | undefined;
  revision?: number | undefined;
  class: number;
  headerType?: number | undefined;
  multifunction?: boolean | undefined;
  pcieType?: PcieType | null | undefined;
  vendorName?: string | undefined;
  deviceName?: string | undefined;
  driver?: string | null | undefined;
  link?: LinkDescription | undefined;
  secondaryBus?: number | undefined;
  subordinateBus?: number | undefined;
  numaNode?: number | null | undefined;
  iommuGroup?: number | null | undefined;
  acs?: AcsDescription | null | undefined;
  bars?: BarDescription[] | undefined;
  sriov?: { totalVfs: number; numVfs: number } | null | undefined;
  physfn?: string | undefined;
  p2pmem?: { size: bigint; available: bigint; published: boolean } | undefined;
  slot?: string | undefined;
  label?: string | undefined;
  osDevices?: string[] | undefined;
  config?: Uint8Array | undefined;
  children?: FnDoc[] | undefined;
}

const functionShape = {
  bdf: bdfText,
  parent: bdfText.nullable().optional(),
  id: idPair('vendor:device IDs in hex, such as "10de:2330"').optional(),
  vendor: hexInt("a vendor ID", 16).optional(),
  device: hexInt("a device ID", 16).optional(),
  subsystem: idPair('subsystem vendor:device in hex, such as "10de:16c1"').optional(),
  subsystemVendor: hexInt("a subsystem vendor ID", 16).optional(),
  subsystemDevice: hexInt("a subsystem device ID", 16).optional(),
  revision: hexInt("a revision ID", 8).optional(),
  class: hexInt('a 24-bit class code such as "0x030200"', 24),
  headerType: intIn("a header type", 0, 127).optional(),
  multifunction: bool.optional(),
  pcieType: oneOf(PCIE_TYPES).nullable().optional(),
  vendorName: text().optional(),
  deviceName: text().optional(),
  driver: text("a driver name or null").nullable().optional(),
  link: link.optional(),
  secondaryBus: hexInt("a bus number", 8).optional(),
  subordinateBus: hexInt("a bus number", 8).optional(),
  numaNode: intIn("a NUMA node", 0, 65535).nullable().optional(),
  iommuGroup: intIn("an IOMMU group", 0, 2 ** 31 - 1)
    .nullable()
    .optional(),
  acs: acsSchema.optional(),
  bars: barList.optional(),
  sriov: sriovSchema.optional(),
  physfn: bdfText.optional(),
  p2pmem: p2pmemSchema.optional(),
  slot: text().optional(),
  label: text().optional(),
  osDevices: z.array(text(), { error: expected("a list of names") }).optional(),
  config: configHex.optional(),
  get children(): z.ZodOptional<z.ZodArray<z.ZodType<FnDoc>>> {
    return z.array(functionSchema, { error: expected("a list of functions") }).optional();
  },
};

const functionSchema: z.ZodType<FnDoc> = z.strictObject(functionShape).check((ctx) => {
  const f = ctx.value;
  const clash = (short: string, longs: readonly string[]) => {
    const rec = f as unknown as Record<string, unknown>;
    if (rec[short] === undefined) return;
    for (const l of longs)
      if (rec[l] !== undefined)
        ctx.issues.push({
          code: "custom",
          path: [l],
          input: rec[l],
          message: `give either ${short} or ${longs.join("/")}, not both`,
        });
  };
  clash("id", ["vendor", "device"]);
  clash("subsystem", ["subsystemVendor", "subsystemDevice"]);
});

const cpuShape = {
  vendor: text('a CPUID vendor such as "GenuineIntel"').optional(),
  family: intIn("a CPU family", 0, 2 ** 31 - 1).optional(),
  model: intIn("a CPU model", 0, 2 ** 31 - 1).optional(),
  modelName: text().optional(),
  arch: text().optional(),
  sockets: intIn("a socket count", 0, 65535).optional(),
};
const sourceShape = { format: text(), path: text().optional() };
const kernelShape = { release: text().optional(), profile: text().optional() };
const iommuShape = { mode: oneOf(IOMMU_MODES).optional(), driver: text().optional() };

const machineShape = {
  $schema: text().optional(),
  schemaVersion: z.literal(MACHINE_SCHEMA_VERSION),
  name: text().optional(),
  source: z.strictObject(sourceShape).optional(),
  cpu: z.strictObject(cpuShape).optional(),
  kernel: z.strictObject(kernelShape).optional(),
  cmdline: text().optional(),
  iommu: z.strictObject(iommuShape).optional(),
  numaNodes: intIn("a NUMA node count", 0, 65535).optional(),
  unknowns: z.array(text(), { error: expected("a list of strings") }).optional(),
  hostBridges: z.array(hostBridgeSchema, { error: expected("a list of host bridges") }).optional(),
  functions: z.array(functionSchema, { error: expected("a list of functions") }),
};

const machineSchema = z.strictObject(machineShape).meta({
  title: "peerbuf machine description",
  description:
    "A machine's PCI hierarchy for peerbuf. Functions nest under their bridge with `children` or list `parent`.",
});

/** Field names per object kind, keyed by the list or field that holds the object. */
const FIELDS_BY_HOLDER: Readonly<Record<string, readonly string[]>> = {
  "": Object.keys(machineShape),
  functions: Object.keys(functionShape),
  children: Object.keys(functionShape),
  hostBridges: Object.keys(hostBridgeSchema.shape),
  windows: ["cpuStart", "size", "busStart"],
  bars: ["index", "start", "size", "kind"],
  link: ["maxSpeed", "maxWidth", "speed", "width"],
  acs: ["cap", "ctrl", "offset"],
  sriov: ["totalVfs", "numVfs"],
  p2pmem: Object.keys(p2pmemSchema.shape),
  cpu: Object.keys(cpuShape),
  source: Object.keys(sourceShape),
  kernel: Object.keys(kernelShape),
  iommu: Object.keys(iommuShape),
};

/** JSON Schema of the document (what a person writes), for editors and validators. */
export function machineJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(machineSchema, { io: "input", target: "draft-2020-12" }) as Record<
    string,
    unknown
  >;
}

// ---------------------------------------------------------------------------------------------
// parsing

function suggest(key: string, path: Path): string {
  const holder = [...path].reverse().find((p): p is string => typeof p === "string") ?? "";
  const fields = FIELDS_BY_HOLDER[holder] ?? [];
  let best: string | undefined;
  let bestD = Number.POSITIVE_INFINITY;
  for (const f of fields) {
    const d = f.toLowerCase() === key.toLowerCase() ? 0 : editDistance(key, f);
    if (d < bestD) {
      best = f;
      bestD = d;
    }
  }
  return best !== undefined && bestD <= Math.max(1, Math.floor(key.length / 3))
    ? ` (did you mean "${best}"?)`
    : "";
}

/** Drops undefined entries, so optional fields are absent rather than present-but-undefined. */
type Compact<T> = { [K in keyof T as undefined extends T[K] ? never : K]: T[K] } & {
  [K in keyof T as undefined extends T[K] ? K : never]?: Exclude<T[K], undefined>;
};
function compact<T extends object>(o: T): Compact<T> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out as Compact<T>;
}

function toFunction(d: FnDoc, parent: string | null): FunctionDescription {
  return compact({
    bdf: d.bdf,
    parent,
    vendor: d.id?.vendor ?? d.vendor,
    device: d.id?.device ?? d.device,
    subsystemVendor: d.subsystem?.vendor ?? d.subsystemVendor,
    subsystemDevice: d.subsystem?.device ?? d.subsystemDevice,
    revision: d.revision,
    classCode: d.class,
    headerType: d.headerType,
    multifunction: d.multifunction,
    pcieType: d.pcieType,
    link: d.link,
    secondaryBus: d.secondaryBus,
    subordinateBus: d.subordinateBus,
    bars: d.bars,
    numaNode: d.numaNode,
    iommuGroup: d.iommuGroup,
    driver: d.driver,
    acs: d.acs,
    sriov: d.sriov,
    physfn: d.physfn,
    p2pmem: d.p2pmem,
    slot: d.slot,
    label: d.label,
    config: d.config,
    vendorName: d.vendorName,
    deviceName: d.deviceName,
    osDevices: d.osDevices,
  });
}

/**
 * Parses a machine description from YAML or JSON text. Throws InputError naming the file, the
 * line and the field path of the first problem (and a few more); topology problems (duplicate
 * BDFs, missing or non-bridge parents, cycles) are reported the same way.
 */
export function parseMachineDocument(file: string, text: string): MachineDescription {
  const { js, loc } = readLocatedYaml(file, text, "machine description");
  if (js === null || js === undefined)
    fail(file, [loc([], "the document is empty: expected `schemaVersion: 1`, then functions")]);
  if (typeof js !== "object" || Array.isArray(js))
    fail(file, [loc([], `expected a mapping with schemaVersion and functions, got ${show(js)}`)]);
  const version = (js as Record<string, unknown>)["schemaVersion"];
  const supported = SUPPORTED_SCHEMA_VERSIONS.join(", ");
  if (version === undefined)
    fail(file, [loc([], `schemaVersion is missing: add \`schemaVersion: 1\` at the top`)]);
  if (typeof version !== "number")
    fail(file, [
      loc(
        ["schemaVersion"],
        `schemaVersion must be a number (this peerbuf reads version ${supported}), got ${show(version)}`,
      ),
    ]);
  if (!SUPPORTED_SCHEMA_VERSIONS.includes(version)) {
    const l = loc(["schemaVersion"], "");
    throw new InputError(
      { file, place: placeOf(l)! },
      `schemaVersion ${version} is not supported: this peerbuf reads version ${supported}`,
      "input-unsupported",
    );
  }

  let parsed: z.output<typeof machineSchema>;
  try {
    const r = machineSchema.safeParse(js, { reportInput: true });
    if (!r.success) {
      const out: Located[] = [];
      collectIssues(r.error.issues as unknown as ZIssue[], [], loc, out, suggest);
      fail(file, out);
    }
    parsed = r.data;
  } catch (e) {
    if (e instanceof RangeError) throw new InputError({ file }, "the document nests too deeply");
    throw e;
  }

  // flatten: nested children take their parent from the tree
  const functions: FunctionDescription[] = [];
  const where = new Map<string, { path: Path; explicitParent: boolean }>();
  const problems: Located[] = [];
  let nested = false;
  const walk = (list: readonly FnDoc[], path: Path, enclosing: string | null) => {
    list.forEach((d, i) => {
      const p: Path = [...path, i];
      if (enclosing !== null && d.parent !== undefined && d.parent !== enclosing)
        problems.push(
          loc(
            p,
            `parent ${d.parent ?? "null"} contradicts the nesting under ${enclosing}`,
            "parent",
          ),
        );
      const prior = where.get(d.bdf);
      if (prior) {
        const first = loc(prior.path, "");
        problems.push(
          loc(p, `${d.bdf} is listed twice (first at ${placeOf(first) ?? "?"})`, "bdf"),
        );
      } else where.set(d.bdf, { path: p, explicitParent: d.parent !== undefined });
      functions.push(toFunction(d, enclosing ?? d.parent ?? null));
      if (d.children && d.children.length > 0) {
        nested = true;
        walk(d.children, [...p, "children"], d.bdf);
      }
    });
  };
  walk(parsed.functions, ["functions"], null);
  if (problems.length > 0) fail(file, problems);
  if (nested) {
    const key = new Map(functions.map((f) => [f, parseBdf(f.bdf)!]));
    functions.sort((a, b) => compareBdf(key.get(a)!, key.get(b)!));
  }

  const hostBridges: HostBridgeDescription[] = (parsed.hostBridges ?? []).map((h) =>
    compact({
      domain: h.bus.domain,
      bus: h.bus.bus,
      busEnd: h.busEnd,
      numaNode: h.numaNode,
      windows: h.windows,
    }),
  );
  const desc: MachineDescription = {
    schemaVersion: MACHINE_SCHEMA_VERSION,
    hostBridges,
    functions,
    ...compact({
      name: parsed.name,
      source: parsed.source === undefined ? undefined : compact(parsed.source),
      cpu: parsed.cpu === undefined ? undefined : compact(parsed.cpu),
      kernel: parsed.kernel === undefined ? undefined : compact(parsed.kernel),
      cmdline: parsed.cmdline,
      iommu: parsed.iommu === undefined ? undefined : compact(parsed.iommu),
      numaNodes: parsed.numaNodes,
      unknowns: parsed.unknowns,
    }),
  };

  try {
    buildMachine(desc);
  } catch (e) {
    if (!(e instanceof TopologyError)) throw e;
    const bdf = typeof e.data["bdf"] === "string" ? e.data["bdf"] : undefined;
    const hb = typeof e.data["hostBridge"] === "string" ? e.data["hostBridge"] : undefined;
    const w = bdf !== undefined ? where.get(bdf) : undefined;
    const reason = /not a bridge/.test(e.message)
      ? `${e.message} (a bridge has headerType 1, or a class 0x0604xx/0x0609xx without headerType)`
      : e.message;
    if (w) {
      const key = / names PF /.test(e.message) ? "physfn" : w.explicitParent ? "parent" : "bdf";
      fail(file, [loc(w.path, reason, key)]);
    }
    if (hb !== undefined) {
      const idx = (parsed.hostBridges ?? [])
        .map((h, i) => (formatBusId(h.bus.domain, h.bus.bus) === hb ? i : -1))
        .filter((i) => i >= 0);
      fail(file, [loc(["hostBridges", idx[1] ?? idx[0] ?? 0], reason, "bus")]);
    }
    throw new InputError({ file }, reason);
  }
  return desc;
}

// ---------------------------------------------------------------------------------------------
// writing

function linkDoc(l: LinkDescription): unknown {
  const { maxSpeed, maxWidth, speed: sp, width: w } = l;
  if (
    typeof maxSpeed === "number" &&
    maxSpeed === sp &&
    maxWidth !== undefined &&
    maxWidth === w &&
    /^[0-9]+(?:\.[0-9]+)?$/.test(String(maxSpeed))
  )
    return `${maxSpeed}GT/s x${maxWidth}`;
  return compact({ maxSpeed, maxWidth, speed: sp, width: w });
}

function barDoc(b: BarDescription) {
  const kind = `${b.mem ? "mem" : "io"}${b.is64 ? "64" : b.mem ? "32" : ""}${b.prefetchable ? "-pref" : ""}`;
  return { index: b.index, start: hexBig(b.start), size: formatByteSize(b.size), kind };
}

function functionDoc(
  f: FunctionDescription,
  withParent: boolean,
  children: readonly unknown[],
  configLineBytes: number,
): Record<string, unknown> {
  const both = <A, B>(a: A | undefined, b: B | undefined) => a !== undefined && b !== undefined;
  const ids = both(f.vendor, f.device);
  const subs = both(f.subsystemVendor, f.subsystemDevice);
  return compact({
    bdf: f.bdf,
    parent: withParent && f.parent !== null ? f.parent : undefined,
    id: ids ? `${hex4(f.vendor!)}:${hex4(f.device!)}` : undefined,
    vendor: ids || f.vendor === undefined ? undefined : hex4(f.vendor),
    device: ids || f.device === undefined ? undefined : hex4(f.device),
    subsystem: subs ? `${hex4(f.subsystemVendor!)}:${hex4(f.subsystemDevice!)}` : undefined,
    subsystemVendor: subs || f.subsystemVendor === undefined ? undefined : hex4(f.subsystemVendor),
    subsystemDevice: subs || f.subsystemDevice === undefined ? undefined : hex4(f.subsystemDevice),
    revision: f.revision === undefined ? undefined : hexNum(f.revision, 2),
    class: hexNum(f.classCode, 6),
    headerType: f.headerType,
    multifunction: f.multifunction,
    pcieType: f.pcieType,
    vendorName: f.vendorName,
    deviceName: f.deviceName,
    driver: f.driver,
    link: f.link === undefined ? undefined : linkDoc(f.link),
    secondaryBus: f.secondaryBus === undefined ? undefined : hexNum(f.secondaryBus, 2),
    subordinateBus: f.subordinateBus === undefined ? undefined : hexNum(f.subordinateBus, 2),
    numaNode: f.numaNode,
    iommuGroup: f.iommuGroup,
    acs:
      f.acs === undefined || f.acs === null
        ? f.acs
        : compact({
            cap: formatAcsWord(f.acs.cap),
            ctrl: f.acs.ctrl === undefined ? undefined : formatAcsWord(f.acs.ctrl),
            offset: f.acs.offset === undefined ? undefined : hexNum(f.acs.offset, 3),
          }),
    bars: f.bars?.map(barDoc),
    sriov: f.sriov === undefined || f.sriov === null ? f.sriov : { ...f.sriov },
    physfn: f.physfn,
    p2pmem:
      f.p2pmem === undefined
        ? undefined
        : {
            size: formatByteSize(f.p2pmem.size),
            available: formatByteSize(f.p2pmem.available),
            published: f.p2pmem.published,
          },
    slot: f.slot,
    label: f.label,
    osDevices: f.osDevices === undefined ? undefined : [...f.osDevices],
    config: f.config === undefined ? undefined : configText(f.config, configLineBytes),
    children: children.length > 0 ? children : undefined,
  });
}

/** True when every function's BDF parses and they are in strictly ascending BDF order. */
function inBdfOrder(fs: readonly FunctionDescription[]): boolean {
  let prev = null as ReturnType<typeof parseBdf>;
  for (const f of fs) {
    const b = parseBdf(f.bdf);
    if (!b || (prev && compareBdf(prev, b) >= 0)) return false;
    prev = b;
  }
  return true;
}

export interface WriteMachineOptions {
  /** List functions flat with `parent:` even when they could nest. */
  readonly flat?: boolean;
}

function machineDoc(
  m: MachineDescription,
  opts: WriteMachineOptions,
  configLineBytes: number,
): Record<string, unknown> {
  const name = (bdf: string) => {
    const b = parseBdf(bdf);
    return b ? formatBdf(b) : null;
  };
  const names = new Set(m.functions.map((f) => name(f.bdf)));
  const nestable =
    !opts.flat &&
    inBdfOrder(m.functions) &&
    m.functions.every((f) => f.parent === null || names.has(name(f.parent)));
  const flat = () => m.functions.map((f) => functionDoc(f, true, [], configLineBytes));
  let functions: unknown[] = [];
  if (nestable) {
    const kids = new Map<string, FunctionDescription[]>();
    const roots: FunctionDescription[] = [];
    for (const f of m.functions) {
      if (f.parent === null) roots.push(f);
      else {
        const p = name(f.parent)!;
        kids.set(p, [...(kids.get(p) ?? []), f]);
      }
    }
    // a parent chain that loops never reaches a root: such descriptions are written flat
    const reached = new Set<FunctionDescription>();
    const mark = (f: FunctionDescription) => {
      reached.add(f);
      for (const c of kids.get(name(f.bdf)!) ?? []) if (!reached.has(c)) mark(c);
    };
    roots.forEach(mark);
    const build = (f: FunctionDescription): Record<string, unknown> =>
      functionDoc(f, false, (kids.get(name(f.bdf)!) ?? []).map(build), configLineBytes);
    functions = reached.size === m.functions.length ? roots.map(build) : flat();
  } else functions = flat();
  return compact({
    schemaVersion: m.schemaVersion,
    name: m.name,
    source: m.source === undefined ? undefined : compact({ ...m.source }),
    cpu: m.cpu === undefined ? undefined : compact({ ...m.cpu }),
    kernel: m.kernel === undefined ? undefined : compact({ ...m.kernel }),
    cmdline: m.cmdline,
    iommu: m.iommu === undefined ? undefined : compact({ ...m.iommu }),
    numaNodes: m.numaNodes,
    unknowns: m.unknowns === undefined ? undefined : [...m.unknowns],
    hostBridges:
      m.hostBridges.length === 0
        ? undefined
        : m.hostBridges.map((h) =>
            compact({
              bus: formatBusId(h.domain, h.bus),
              busEnd: h.busEnd === undefined ? undefined : hexNum(h.busEnd, 2),
              numaNode: h.numaNode,
              windows: h.windows?.map((w) =>
                compact({
                  cpuStart: hexBig(w.cpuStart),
                  size: formatByteSize(w.size),
                  busStart: w.busStart === w.cpuStart ? undefined : hexBig(w.busStart),
                }),
              ),
            }),
          ),
    functions,
  });
}

/** Keys whose mapping values are short enough to read on one line. */
const FLOW_KEYS = new Set(["cpu", "kernel", "iommu", "source", "link", "acs", "sriov", "p2pmem"]);
const FLOW_ITEMS = new Set(["bars", "windows", "osDevices"]);

/** The description as YAML: nested when possible, flow style for small records. */
export function writeMachineYaml(m: MachineDescription, opts: WriteMachineOptions = {}): string {
  const doc = new Document(machineDoc(m, opts, 32));
  visit(doc, {
    Scalar(_k, node) {
      const v = node.value;
      if (typeof v !== "string") return;
      // yaml writes some multi-line text as plain or block scalars that do not read back the
      // same (leading spaces, "-" or "?" in flow maps): quote it, config hex excepted
      if (/[\n\r\u0085\u2028\u2029]/.test(v) && !/^[0-9a-f]+(?:\n[0-9a-f]+)*$/.test(v))
        node.type = "QUOTE_DOUBLE";
      // YAML 1.1 readers take 0000:15:00.0 for a base-60 number: quote anything with a colon
      else if (/^[0-9a-fA-F][0-9a-fA-F:._]*:[0-9a-fA-F:._]*$/.test(v)) node.type = "QUOTE_DOUBLE";
    },
    Pair(_k, pair) {
      const key = isScalar(pair.key) ? String(pair.key.value) : "";
      if (FLOW_KEYS.has(key) && isMap(pair.value)) pair.value.flow = true;
      if (FLOW_ITEMS.has(key) && isSeq(pair.value)) {
        if (key === "osDevices") pair.value.flow = true;
        for (const item of pair.value.items) if (isMap(item)) item.flow = true;
      }
    },
  });
  doc.commentBefore = ` peerbuf machine description (schemaVersion ${m.schemaVersion})`;
  return doc.toString({ lineWidth: 0 });
}

/** The description as JSON, same structure as the YAML. */
export function writeMachineJson(m: MachineDescription, opts: WriteMachineOptions = {}): string {
  return `${JSON.stringify(machineDoc(m, opts, 0), null, 2)}\n`;
}
