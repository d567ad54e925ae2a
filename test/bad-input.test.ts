/**
 * Bad input, as a user meets it: every case must end with exit code 3, one clear line on stderr
 * naming the file (and the place in it when there is one), no stack trace, nothing on stdout and
 * no output file. Then fast-check fuzzing of loadInput with random bytes and mutated captures:
 * only PeerbufError (InputError, TopologyError) may come out, and quickly.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { gunzipSync, gzipSync } from "node:zlib";
import fc from "fast-check";
import { packTar, type TarEntry } from "modern-tar";
import { PeerbufError } from "../src/core/errors.ts";
import { buildMachine } from "../src/core/hw/machine.ts";
import { loadInput, MAX_UNPACKED_BYTES, unpackLimit } from "../src/node/load-input.ts";
import { type CliResult, peerbuf, show, stackLines } from "./support/cli.ts";

const ORACLE = fileURLToPath(new URL("./fixtures/kernel-oracle/", import.meta.url));
const CAPTURE = join(ORACLE, "switch_acs_dsp_iommu", "sysfs.tar.gz");
const SMALL = join(ORACLE, "root_bus_endpoints", "sysfs.tar.gz");

const tmp = mkdtempSync(join(tmpdir(), "peerbuf-bad-"));
after(() => rmSync(tmp, { recursive: true, force: true }));
const inputs = join(tmp, "in");
mkdirSync(inputs);

function file(name: string, data: Uint8Array | string): string {
  const p = join(inputs, name);
  writeFileSync(p, data);
  return p;
}

const tar = (entries: TarEntry[]) => packTar(entries);
const body = (name: string, text: string): TarEntry => ({
  header: { name, type: "file", size: Buffer.byteLength(text) },
  body: text,
});

/** A capture directory with bus/pci/devices and one host bridge; `build` adds the rest. */
function captureDir(name: string, build: (root: string) => void): string {
  const root = join(inputs, name);
  mkdirSync(join(root, "sys/bus/pci/devices"), { recursive: true });
  mkdirSync(join(root, "sys/devices/pci0000:00"), { recursive: true });
  build(root);
  return root;
}

/** A function directory with a class file, linked from bus/pci/devices as sysfs does. */
function fn(root: string, rel: string, files: Record<string, string> = {}): void {
  const dir = join(root, "sys/devices", rel);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "class"), "0x020000\n");
  for (const [k, v] of Object.entries(files)) writeFileSync(join(dir, k), v);
  const bdf = rel.split("/").pop()!;
  symlinkSync(`../../../devices/${rel}`, join(root, "sys/bus/pci/devices", bdf));
}

const captureGz = readFileSync(CAPTURE);
const bzip2 = spawnSync("bzip2", ["--version"]);

function corruptBz2(): string {
  if (bzip2.error) {
    // no bzip2 here: a stream header followed by garbage
    const junk = Uint8Array.from({ length: 2000 }, (_, i) => (i * 31 + 7) % 256);
    return file("corrupt.tar.bz2", Buffer.concat([Buffer.from("BZh91AY&SY"), junk]));
  }
  const r = spawnSync("bzip2", ["-9c"], { input: gunzipSync(captureGz) });
  assert.equal(r.status, 0);
  const b = Buffer.from(r.stdout);
  b.fill(0x55, b.length >> 1, (b.length >> 1) + 64);
  return file("corrupt.tar.bz2", b);
}

interface Case {
  readonly name: string;
  readonly input: () => Promise<string> | string;
  /** Strings the one-line message must contain: the file, the place, the reason. */
  readonly says: readonly (string | RegExp)[];
  readonly env?: Record<string, string>;
  readonly todo?: string;
}

const CASES: Case[] = [
  {
    name: "a missing path",
    input: () => join(inputs, "no-such-capture.tar.gz"),
    says: [join(inputs, "no-such-capture.tar.gz"), "ENOENT"],
  },
  {
    name: "an empty file",
    input: () => file("empty.txt", ""),
    says: [/empty\.txt: /, "unrecognised format"],
  },
  {
    name: "binary garbage",
    input: () =>
      file(
        "garbage.bin",
        Uint8Array.from({ length: 4096 }, (_, i) => (i * 7919) % 256),
      ),
    says: [/garbage\.bin: /, "binary data"],
  },
  {
    name: "a truncated .tar.gz (an oracle capture cut in half)",
    input: () => file("half.tar.gz", captureGz.subarray(0, captureGz.length >> 1)),
    says: [/half\.tar\.gz: /, "corrupt gzip"],
  },
  {
    name: "corrupt gzip",
    input: () =>
      file(
        "corrupt.gz",
        Buffer.concat([
          Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]),
          Buffer.from("not deflate"),
        ]),
      ),
    says: [/corrupt\.gz: /, "corrupt gzip"],
  },
  {
    name: "a .tar.bz2 with corrupt data",
    input: corruptBz2,
    says: [/corrupt\.tar\.bz2: /, "corrupt bzip2"],
  },
  {
    name: "a gzip bomb (3 GiB of zeros; limit lowered to 32 MiB by PEERBUF_MAX_UNPACKED_BYTES)",
    // 3,072 gzip members of 1 MiB of zeros each: 3 MB on disk, 3 GiB unpacked
    input: () => {
      const member = gzipSync(Buffer.alloc(1 << 20), { level: 9 });
      return file("bomb.tar.gz", Buffer.concat(Array<Buffer>(3072).fill(member)));
    },
    env: { PEERBUF_MAX_UNPACKED_BYTES: String(32 << 20) },
    says: [/bomb\.tar\.gz: /, `more than ${32 << 20} bytes`, "decompression bomb"],
  },
  {
    name: "a tar with a ../evil entry",
    input: async () => file("dotdot.tar.gz", gzipSync(await tar([body("../evil", "evil")]))),
    says: ["dotdot.tar.gz: ../evil:", 'contains ".."'],
  },
  {
    name: "a tar with an absolute /etc/passwd entry",
    input: async () =>
      file("absolute.tar", await tar([body("/etc/passwd", "root::0:0::/:/bin/sh")])),
    says: ["absolute.tar: /etc/passwd:", "absolute path"],
  },
  {
    name: "a tar with a symlink pointing outside (../../../../etc)",
    input: async () =>
      file(
        "symlink-out.tar",
        await tar([
          {
            header: {
              name: "sys/devices/evil",
              type: "symlink",
              size: 0,
              linkname: "../../../../etc",
            },
          },
        ]),
      ),
    says: ["symlink-out.tar: sys/devices/evil:", "outside the archive", "../../../../etc"],
  },
  {
    name: "a capture directory with a symlink loop in sys/bus/pci/devices (X -> X)",
    input: () =>
      captureDir("loop", (root) =>
        symlinkSync("0000:00:00.0", join(root, "sys/bus/pci/devices/0000:00:00.0")),
      ),
    says: [/loop: sys\/bus\/pci\/devices\/0000:00:00\.0: /, "symbolic link loop"],
  },
  {
    name: "a broken bus/pci/devices link",
    input: () =>
      captureDir("broken", (root) =>
        symlinkSync(
          "../../../devices/pci0000:00/0000:00:05.0",
          join(root, "sys/bus/pci/devices/0000:00:05.0"),
        ),
      ),
    says: [/broken: sys\/bus\/pci\/devices\/0000:00:05\.0: /, "broken link"],
  },
  {
    name: "a function with a garbage resource file",
    input: () =>
      captureDir("resource", (root) =>
        fn(root, "pci0000:00/0000:00:02.0", { resource: "hello world\n" }),
      ),
    says: [/resource: sys\/devices\/pci0000:00\/0000:00:02\.0\/resource: line 1: /, "hello world"],
  },
  {
    name: "a device whose parent directory is named like a function but is not one",
    input: () =>
      captureDir("fake-parent", (root) => fn(root, "pci0000:00/0000:00:01.0/0000:01:00.0")),
    says: [/fake-parent: /, "0000:01:00.0", "0000:00:01.0", "not in the machine"],
  },
  {
    name: "a device whose parent directory is not a PCI device at all",
    input: () => captureDir("usb-parent", (root) => fn(root, "pci0000:00/usb1/0000:01:00.0")),
    says: [/usb-parent: /, "usb1"],
  },
  {
    name: "XML with <!ENTITY",
    input: () =>
      file(
        "entity.xml",
        '<?xml version="1.0"?>\n<!DOCTYPE topology [ <!ENTITY x "y"> ]>\n<topology version="2.0">&x;</topology>\n',
      ),
    says: [/entity\.xml: line 2/, "refusing"],
  },
  {
    name: "a YAML with duplicate BDFs",
    input: () =>
      file(
        "dup.yaml",
        'schemaVersion: 1\nhostBridges:\n  - bus: "0000:00"\nfunctions:\n  - { bdf: "0000:00:01.0", class: "0x020000" }\n  - { bdf: "0000:00:01.0", class: "0x020000" }\n',
      ),
    says: [/dup\.yaml: line 6/, "listed twice"],
  },
  {
    name: "a YAML with a cycle",
    input: () =>
      file(
        "cycle.yaml",
        'schemaVersion: 1\nhostBridges:\n  - bus: "0000:00"\nfunctions:\n  - { bdf: "0000:01:00.0", parent: "0000:02:00.0", class: "0x060400", headerType: 1 }\n  - { bdf: "0000:02:00.0", parent: "0000:01:00.0", class: "0x060400", headerType: 1 }\n',
      ),
    says: [/cycle\.yaml: line 5/, "loops"],
  },
  {
    name: "a YAML with a missing parent",
    input: () =>
      file(
        "orphan.yaml",
        'schemaVersion: 1\nhostBridges:\n  - bus: "0000:00"\nfunctions:\n  - { bdf: "0000:01:00.0", parent: "0000:00:1c.0", class: "0x020000" }\n',
      ),
    says: [/orphan\.yaml: line 5/, "0000:00:1c.0", "not in the machine"],
  },
  {
    name: "an lspci file with garbage",
    input: () =>
      file("garbage.lspci", "00:00.0 Host bridge: Intel\n\tgarbage ### line\n%%%% !!!\n"),
    says: [/garbage\.lspci: line 3: /, "%%%% !!!"],
  },
];

function assertClearInputError(r: CliResult, says: Case["says"]): void {
  assert.equal(r.timedOut, false, show(r));
  assert.deepEqual(stackLines(r.stderr), [], `stack trace:\n${show(r)}`);
  assert.equal(r.code, 3, show(r));
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `not one line:\n${show(r)}`);
  assert.match(lines[0]!, /^peerbuf: /);
  for (const s of says)
    if (typeof s === "string") assert.ok(lines[0]!.includes(s), `"${s}" not in: ${lines[0]}`);
    else assert.match(lines[0]!, s);
}

describe("bad input: exit 3, one clear line, no trace, nothing written", {
  concurrency: true,
}, () => {
  for (const c of CASES)
    it(c.name, c.todo ? { todo: c.todo } : {}, async () => {
      const path = await c.input();
      const outDir = mkdtempSync(join(tmp, "out-"));
      const r = await peerbuf(
        ["convert", "--to", "yaml", "--input", path, "-o", join(outDir, "out.yaml")],
        c.env ? { env: c.env } : {},
      );
      assertClearInputError(r, c.says);
      assert.equal(r.stdout, "");
      assert.deepEqual(readdirSync(outDir), [], "something was written");
    });

  it("with --json the error is also one JSON document on stdout", async () => {
    const path = join(inputs, "no-such-capture.tar.gz");
    const r = await peerbuf(["tree", "--json", "--input", path]);
    assertClearInputError(r, [path]);
    const doc = JSON.parse(r.stdout) as {
      schemaVersion: number;
      tool: { name: string };
      error: { code: string; data: { file: string } };
    };
    assert.equal(doc.schemaVersion, 1);
    assert.equal(doc.tool.name, "peerbuf");
    assert.equal(doc.error.code, "input-invalid");
    assert.equal(doc.error.data.file, path);
  });
});

describe("PEERBUF_MAX_UNPACKED_BYTES", () => {
  it("only ever lowers the decompression limit", () => {
    assert.equal(unpackLimit({}), MAX_UNPACKED_BYTES);
    assert.equal(unpackLimit({ PEERBUF_MAX_UNPACKED_BYTES: "1048576" }), 1048576);
    for (const v of ["", "0", "-5", "1e9", "lots", String(MAX_UNPACKED_BYTES * 2)])
      assert.equal(unpackLimit({ PEERBUF_MAX_UNPACKED_BYTES: v }), MAX_UNPACKED_BYTES, v);
  });
});

/** Offsets of the tar headers in an uncompressed archive. */
function tarHeaders(bytes: Uint8Array): number[] {
  const out: number[] = [];
  for (let off = 0; off + 512 <= bytes.length; ) {
    if (bytes.subarray(off, off + 512).every((b) => b === 0)) break;
    out.push(off);
    const size = Number.parseInt(
      new TextDecoder()
        .decode(bytes.subarray(off + 124, off + 136))
        .replace(/\0.*$/, "")
        .trim() || "0",
      8,
    );
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

describe("fuzzing loadInput", () => {
  const fuzzDir = join(tmp, "fuzz");
  mkdirSync(fuzzDir);
  let n = 0;
  const slowest = { ms: 0, what: "" };

  /** Loads bytes as a file; only PeerbufError may escape, and no run may be slow. */
  async function check(bytes: Uint8Array, ext: string): Promise<void> {
    const path = join(fuzzDir, `in-${n++}${ext}`);
    writeFileSync(path, bytes);
    const t0 = performance.now();
    try {
      buildMachine(await loadInput([path]));
    } catch (e) {
      if (!(e instanceof PeerbufError))
        throw new Error(`${(e as Error)?.name}: ${(e as Error)?.message}`, { cause: e });
    } finally {
      rmSync(path);
      const ms = performance.now() - t0;
      if (ms > slowest.ms) Object.assign(slowest, { ms, what: `${bytes.length} bytes as ${ext}` });
    }
  }

  after(() => assert.ok(slowest.ms < 5000, `a load took ${slowest.ms} ms (${slowest.what})`));

  const PREFIXES = [
    "",
    "\x1f\x8b",
    "BZh9",
    "schemaVersion: 1\n",
    "{",
    "<topology>",
    "<system>",
    "00:00.0 ",
  ].map((s) => Uint8Array.from(s, (ch) => ch.charCodeAt(0)));

  it("random bytes", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...PREFIXES),
        fc.uint8Array({ maxLength: 2048 }),
        async (prefix, rest) => check(Buffer.concat([prefix, rest]), ".bin"),
      ),
      { numRuns: 200 },
    );
  });

  it("mutations of a real capture", async () => {
    const raw = new Uint8Array(gunzipSync(readFileSync(SMALL)));
    const headers = tarHeaders(raw);
    assert.ok(headers.length > 50, `${headers.length} tar headers`);
    const piece = fc.oneof(
      fc.uint8Array({ minLength: 1, maxLength: 16 }),
      fc
        .constantFrom("../", "/", "..", "2", "5", "0", "\0", "0000:00:00.0", "sys/bus/pci/devices/")
        .map((s) => Uint8Array.from(s, (ch) => ch.charCodeAt(0))),
    );
    const mutation = fc.record({
      kind: fc.constantFrom("overwrite", "header", "truncate", "insert"),
      at: fc.nat(),
      field: fc.constantFrom(0, 100, 124, 156, 157, 257),
      bytes: piece,
    });
    await fc.assert(
      fc.asyncProperty(
        fc.array(mutation, { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        async (muts, gz) => {
          let b = raw.slice();
          for (const m of muts) {
            if (b.length === 0) break;
            if (m.kind === "truncate") b = b.slice(0, m.at % b.length);
            else if (m.kind === "insert") {
              const at = m.at % (b.length + 1);
              b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
            } else {
              const at =
                m.kind === "header" ? headers[m.at % headers.length]! + m.field : m.at % b.length;
              if (at < b.length) b.set(m.bytes.subarray(0, b.length - at), at);
            }
          }
          await check(gz ? gzipSync(b, { level: 1 }) : b, gz ? ".tar.gz" : ".tar");
        },
      ),
      { numRuns: 300 },
    );
  });
});
