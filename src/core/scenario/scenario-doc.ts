/**
 * @module scenario-doc
 * The scenario file: YAML for people who do not write TypeScript. Machines (each loaded from an
 * input the CLI can read, with kernel options), then steps, each one system call or device action
 * with an optional expectation. Every problem is reported with the file, the line and the field.
 *
 * ```yaml
 * schemaVersion: 1
 * name: a NIC writes into accelerator memory
 * machines:
 *   server: { input: ../machines/flagship.yaml, kernel: mainline }
 * steps:
 *   - { do: open, process: trainer, path: /dev/accel/accel0, as: accel }
 *   - { do: accel-alloc, fd: accel, size: 2MiB, as: hbm }
 *   - { do: accel-export, fd: accel, mem: hbm, as: buf }
 *   - { do: import, device: mlx5_0, fd: buf, as: imp }
 *   - { do: map, import: imp, expect: { errno: EPERM } }
 * ```
 */

import { z } from "zod";
import { InputError } from "../errors.ts";
import {
  collectIssues,
  fail,
  type Located,
  type Path,
  readLocatedYaml,
  type ZIssue,
} from "../formats/located-yaml.ts";
import { parseByteSize } from "../formats/machine-doc.ts";
import { ERRNO } from "../kernel/errno.ts";
import { PROFILES } from "../kernel/profile.ts";
import { editDistance } from "../text.ts";

export const SCENARIO_SCHEMA_VERSION = 1;

const ERRNO_NAMES = Object.keys(ERRNO);

const name = z
  .string()
  .regex(/^[A-Za-z_][\w.-]*$/, "a name: letters, digits, _ . - (not starting with a digit)");

const size = z.union([z.string(), z.number().int().nonnegative()]).transform((v, ctx) => {
  if (typeof v === "number") return BigInt(v);
  const b = parseByteSize(v);
  if (b === null) {
    ctx.issues.push({
      code: "custom",
      input: v,
      message: `"${v}" is not a size (e.g. 4096, 0x1000, 2MiB)`,
    });
    return z.NEVER;
  }
  return b;
});

const errno = z.string().refine((e) => ERRNO_NAMES.includes(e), {
  message: `an errno name (${["EPERM", "EINVAL", "EOPNOTSUPP", "EREMOTEIO", "..."].join(", ")})`,
});

export const ACCESS_FLAGS = [
  "LOCAL_WRITE",
  "REMOTE_WRITE",
  "REMOTE_READ",
  "REMOTE_ATOMIC",
  "RELAXED_ORDERING",
] as const;

export const WC_STATUSES = [
  "IBV_WC_SUCCESS",
  "IBV_WC_LOC_PROT_ERR",
  "IBV_WC_LOC_ACCESS_ERR",
  "IBV_WC_REM_ACCESS_ERR",
  "IBV_WC_REM_OP_ERR",
  "IBV_WC_REM_INV_REQ_ERR",
] as const;

/** What a step must do; absent: it must succeed. */
const expectSchema = z
  .strictObject({
    /** The step must fail with this errno. */
    errno: errno.optional(),
    /** The attachment's peer2peer after the exporter's attach. */
    peer2peer: z.boolean().optional(),
    /** The kernel's P2PDMA verdict for exporter → importer. */
    verdict: z.enum(["bus-address", "through-host-bridge", "not-supported"]).optional(),
    /** Every DMA segment is of this kind. */
    addressKind: z.enum(["bus-address", "iova", "physical"]).optional(),
    /** Number of DMA segments. */
    segments: z.number().int().nonnegative().optional(),
    /** touch-pages: the importer oopses. */
    oops: z.boolean().optional(),
    /** dma-write: the write faults. */
    fault: z.boolean().optional(),
    /** rdma-write / rdma-read: the work completion status. */
    status: z.enum(WC_STATUSES).optional(),
    /** check: the bytes are equal. */
    equal: z.boolean().optional(),
  })
  .optional();

const base = {
  machine: name.optional(),
  process: name.optional(),
  as: name.optional(),
  /** Shown in the trace above the step. */
  note: z.string().optional(),
  expect: expectSchema,
};

const access = z.array(z.enum(ACCESS_FLAGS));
const pattern = z.strictObject({ seed: z.number().int().default(1) });

const stepSchema = z.discriminatedUnion("do", [
  z.strictObject({ do: z.literal("open"), path: z.string(), ...base }),
  z.strictObject({ do: z.literal("close"), fd: name, ...base }),
  z.strictObject({ do: z.literal("send-fd"), fd: name, to: name, ...base }),
  z.strictObject({ do: z.literal("exit"), ...base }),
  z.strictObject({ do: z.literal("accel-alloc"), fd: name, size, ...base }),
  z.strictObject({
    do: z.literal("accel-export"),
    fd: name,
    mem: name,
    size: size.optional(),
    offset: size.optional(),
    flags: z.array(z.enum(["O_RDWR", "O_RDONLY", "O_WRONLY", "O_CLOEXEC"])).optional(),
    ...base,
  }),
  z.strictObject({ do: z.literal("accel-unmap"), fd: name, mem: name, ...base }),
  z.strictObject({
    do: z.literal("heap-alloc"),
    size,
    /** A buffer its exporter may move (pin/unpin, move_notify), like a GPU's GTT buffer. */
    movable: z.boolean().optional(),
    ...base,
  }),
  z.strictObject({
    do: z.literal("import"),
    device: z.string(),
    fd: name,
    dynamic: z.boolean().optional(),
    allowPeer2peer: z.boolean().optional(),
    ...base,
  }),
  z.strictObject({ do: z.literal("map"), import: name, ...base }),
  z.strictObject({ do: z.literal("touch-pages"), import: name, ...base }),
  z.strictObject({
    do: z.literal("dma-write"),
    import: name,
    offset: size.optional(),
    length: size,
    pattern: pattern.optional(),
    ...base,
  }),
  z.strictObject({ do: z.literal("unmap"), import: name, ...base }),
  z.strictObject({ do: z.literal("detach"), import: name, ...base }),
  z.strictObject({
    do: z.literal("ibv-reg-mr"),
    ctx: name,
    length: size,
    access,
    fill: pattern.optional(),
    ...base,
  }),
  z.strictObject({
    do: z.literal("ibv-reg-dmabuf-mr"),
    ctx: name,
    fd: name,
    offset: size.optional(),
    length: size,
    iova: size.optional(),
    access,
    ...base,
  }),
  z.strictObject({ do: z.literal("ibv-dereg-mr"), mr: name, ...base }),
  z.strictObject({ do: z.literal("ibv-create-qp"), ctx: name, ...base }),
  z.strictObject({ do: z.literal("ibv-connect"), a: name, b: name, ...base }),
  z.strictObject({
    do: z.enum(["rdma-write", "rdma-read"]),
    qp: name,
    local: name,
    remote: name,
    length: size.optional(),
    localOffset: size.optional(),
    remoteOffset: size.optional(),
    ...base,
  }),
  z.strictObject({
    do: z.literal("check"),
    a: name,
    b: name,
    length: size.optional(),
    aOffset: size.optional(),
    bOffset: size.optional(),
    ...base,
  }),
  z.strictObject({ do: z.literal("evict"), fd: name, ...base }),
  z.strictObject({
    do: z.literal("gpu-alloc"),
    fd: name,
    size,
    domain: z.enum(["vram", "gtt"]).default("vram"),
    ...base,
  }),
  z.strictObject({ do: z.literal("gpu-export"), fd: name, bo: name, ...base }),
  z.strictObject({
    do: z.literal("vfio-export"),
    fd: name,
    bar: z.number().int().min(0).max(7),
    offset: size.optional(),
    length: size,
    ...base,
  }),
  z.strictObject({
    do: z.literal("vfio-memory"),
    fd: name,
    /** PCI_COMMAND memory decode: false revokes the device's dma-bufs, true restores them. */
    enable: z.boolean(),
    ...base,
  }),
  z.strictObject({
    do: z.literal("gpu-import"),
    fd: name,
    /** A dma-buf fd of the same process. */
    buf: name,
    ...base,
  }),
  z.strictObject({
    do: z.literal("gpu-copy"),
    fd: name,
    src: name,
    dst: name,
    length: size,
    ...base,
  }),
  z.strictObject({ do: z.literal("accel-import"), fd: name, buf: name, ...base }),
  z.strictObject({
    do: z.literal("accel-copy"),
    fd: name,
    import: name,
    mem: name,
    length: size,
    direction: z.enum(["hbm-to-import", "import-to-hbm"]),
    ...base,
  }),
  z.strictObject({
    do: z.literal("gpu-evict"),
    /** The GPU (renderD128, a BDF); default the machine's first GPU. */
    device: z.string().optional(),
    ...base,
  }),
]);

export type ScenarioStep = z.output<typeof stepSchema> & { readonly line?: number };
export type StepKind = ScenarioStep["do"];
export type StepExpect = NonNullable<ScenarioStep["expect"]>;

const machineSchema = z.strictObject({
  /** Path (relative to the scenario file) of any input the CLI reads. */
  input: z.string(),
  kernel: z
    .string()
    .refine((k) => k in PROFILES, {
      message: `a kernel profile (${Object.keys(PROFILES).join(", ")})`,
    })
    .optional(),
  iommu: z.enum(["off", "dma", "dma-fq", "identity"]).optional(),
  cmdline: z.string().optional(),
  dmabufDebug: z.boolean().optional(),
  moveNotify: z.boolean().optional(),
  dmaDebug: z.boolean().optional(),
  accel: z
    .strictObject({
      mapMode: z.enum(["map-resource", "p2p-pages", "phys-vec"]).optional(),
      generation: z.enum(["v3", "mainline"]).optional(),
    })
    .optional(),
  rdma: z.strictObject({ odp: z.boolean().optional() }).optional(),
});

export type ScenarioMachine = z.output<typeof machineSchema>;

const scenarioSchema = z.strictObject({
  schemaVersion: z.literal(SCENARIO_SCHEMA_VERSION),
  name: z.string(),
  description: z.string().optional(),
  machines: z.record(name, machineSchema).refine((m) => Object.keys(m).length > 0, {
    message: "at least one machine",
  }),
  steps: z.array(stepSchema).min(1),
});

export interface Scenario {
  readonly file: string;
  readonly name: string;
  readonly description?: string;
  readonly machines: ReadonlyMap<string, ScenarioMachine>;
  readonly steps: readonly ScenarioStep[];
}

const STEP_FIELDS = [
  ...new Set(stepSchema.options.flatMap((o) => Object.keys((o as { shape: object }).shape))),
];
const STEP_KINDS = stepSchema.options.flatMap((o) => {
  const d = (o as { shape: { do: { values?: Set<string>; value?: string; options?: string[] } } })
    .shape.do;
  return d.options ?? (d.value !== undefined ? [d.value] : []);
});

function closest(key: string, among: readonly string[]): string {
  let best: string | undefined;
  let bestD = Number.POSITIVE_INFINITY;
  for (const f of among) {
    const d = editDistance(key, f);
    if (d < bestD) {
      best = f;
      bestD = d;
    }
  }
  return best !== undefined && bestD <= Math.max(1, Math.floor(key.length / 3))
    ? ` (did you mean "${best}"?)`
    : "";
}

function suggest(key: string, path: Path): string {
  if (path[0] === "steps") return closest(key, STEP_FIELDS);
  if (path[0] === "machines") return closest(key, Object.keys(machineSchema.shape));
  return closest(key, Object.keys(scenarioSchema.shape));
}

/**
 * Parses a scenario file. Throws InputError naming the file, the line and the field of the first
 * problem; names used before they are bound (`fd: buf` before a step `as: buf`) are problems too.
 */
export function parseScenario(file: string, text: string): Scenario {
  const { js, loc } = readLocatedYaml(file, text, "scenario", 4 * 1024 * 1024);
  if (js === null || typeof js !== "object" || Array.isArray(js))
    fail(file, [loc([], "expected a mapping with schemaVersion, name, machines and steps")]);
  const steps = (js as { steps?: unknown }).steps;
  if (Array.isArray(steps))
    steps.forEach((s, i) => {
      const d = (s as { do?: unknown } | null)?.do;
      if (typeof d === "string" && !STEP_KINDS.includes(d))
        fail(file, [
          loc(
            ["steps", i, "do"],
            `unknown step "${d}"${closest(d, STEP_KINDS)}; steps: ${STEP_KINDS.join(", ")}`,
          ),
        ]);
    });
  const r = scenarioSchema.safeParse(js, { reportInput: true });
  if (!r.success) {
    const out: Located[] = [];
    collectIssues(r.error.issues as unknown as ZIssue[], [], loc, out, suggest);
    fail(file, out);
  }
  const doc = r.data;
  const machineNames = Object.keys(doc.machines);
  const bound = new Set<string>();
  const problems: Located[] = [];
  const withLines: ScenarioStep[] = doc.steps.map((s, i) => {
    const l = loc(["steps", i], "");
    const refs: [string, string][] = [];
    for (const k of [
      "fd",
      "mem",
      "bo",
      "buf",
      "src",
      "dst",
      "import",
      "ctx",
      "mr",
      "qp",
      "a",
      "b",
      "local",
      "remote",
    ])
      if (k in s) refs.push([k, (s as unknown as Record<string, string>)[k]!]);
    for (const [k, v] of refs)
      if (!bound.has(v))
        problems.push(loc(["steps", i, k], `"${v}" is not bound by an earlier step's \`as:\``));
    if (s.machine !== undefined && !machineNames.includes(s.machine))
      problems.push(
        loc(
          ["steps", i, "machine"],
          `no machine "${s.machine}" (machines: ${machineNames.join(", ")})`,
        ),
      );
    if (s.as !== undefined) bound.add(s.as);
    return l.line !== undefined ? { ...s, line: l.line } : s;
  });
  if (problems.length > 0) fail(file, problems);
  if (withLines.length === 0) throw new InputError({ file }, "no steps");
  return {
    file,
    name: doc.name,
    ...(doc.description !== undefined ? { description: doc.description } : {}),
    machines: new Map(Object.entries(doc.machines)),
    steps: withLines,
  };
}
