/**
 * The machine the tests run on: `tree` without --input must show exactly what /sys/bus/pci/devices
 * lists, each function under the bridge its /sys path names; `gather` must capture the same tree,
 * and its tarball must hold only sys/, proc/ and peerbuf-capture.txt.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { after, describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import { unpackTar } from "modern-tar";
import { type CliResult, peerbuf, peerbufOnce, show, stackLines } from "./support/cli.ts";

const DEVICES = "/sys/bus/pci/devices";
const BDF = /^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

function liveSkip(): string | false {
  try {
    return readdirSync(DEVICES).length > 0 ? false : `${DEVICES} is empty`;
  } catch {
    return `${DEVICES} does not exist (not Linux, or no PCI)`;
  }
}
const skip = liveSkip();

/** What /sys says: each function and the PCI function its directory sits in (null: a host bridge). */
function sysParents(): Map<string, string | null> {
  const out = new Map<string, string | null>();
  for (const name of readdirSync(DEVICES)) {
    const parent = basename(dirname(realpathSync(join(DEVICES, name))));
    out.set(name, BDF.test(parent) ? parent : null);
  }
  return out;
}

interface TreeNode {
  bdf: string;
  children: TreeNode[];
}

function treeParents(r: CliResult): Map<string, string | null> {
  assert.equal(r.code, 0, show(r));
  assert.deepEqual(stackLines(r.stderr), []);
  const doc = JSON.parse(r.stdout) as {
    schemaVersion: number;
    data: { hostBridges: { children: TreeNode[] }[] };
  };
  assert.equal(doc.schemaVersion, 1);
  const out = new Map<string, string | null>();
  const walk = (n: TreeNode, parent: string | null) => {
    assert.ok(!out.has(n.bdf), `${n.bdf} twice`);
    out.set(n.bdf, parent);
    for (const c of n.children) walk(c, n.bdf);
  };
  for (const hb of doc.data.hostBridges) for (const c of hb.children) walk(c, null);
  return out;
}

describe("this machine", { skip, concurrency: true }, () => {
  const tmp = mkdtempSync(join(tmpdir(), "peerbuf-live-"));
  after(() => rmSync(tmp, { recursive: true, force: true }));
  const out = join(tmp, "capture.tar.gz");
  // started by the first test that needs them, shared by the others
  const live = () => peerbufOnce(["tree", "--json", "--no-collapse"]);
  let gatherRun: Promise<CliResult> | undefined;
  const gathered = async () => {
    gatherRun ??= peerbuf(["gather", "-o", out]);
    const g = await gatherRun;
    assert.equal(g.code, 0, show(g));
    assert.deepEqual(stackLines(g.stderr), []);
  };

  it("tree --json without --input lists every function of /sys/bus/pci/devices under its /sys parent", async () => {
    assert.deepEqual(treeParents(await live()), sysParents());
  });

  it("gather, then tree --input on the tarball: the same functions and parents", async () => {
    await gathered();
    const fromCapture = treeParents(
      await peerbuf(["tree", "--json", "--no-collapse", "--input", out]),
    );
    assert.deepEqual(fromCapture, treeParents(await live()));
  });

  it("the gathered tarball holds nothing outside sys/, proc/ and peerbuf-capture.txt", async () => {
    await gathered();
    const entries = await unpackTar(gunzipSync(readFileSync(out)));
    assert.ok(entries.length > readdirSync(DEVICES).length);
    const outside: string[] = [];
    for (const e of entries) {
      const name = e.header.name.replace(/^\.\//, "").replace(/\/$/, "");
      if (name === "" && e.header.type === "directory") continue; // "./", the archive's root
      if (name === "peerbuf-capture.txt" && e.header.type === "file") continue;
      if (!/^(sys|proc)(\/|$)/.test(name) || name.split("/").includes(".."))
        outside.push(`${e.header.type} ${e.header.name}`);
      if (e.header.type === "link" || e.header.name.startsWith("/"))
        outside.push(`${e.header.type} ${e.header.name}`);
      if (e.header.type === "symlink") {
        // a link target must stay inside the archive
        const target = e.header.linkname ?? "";
        let depth = name.split("/").length - 1;
        for (const seg of target.split("/")) {
          if (seg === "..") depth--;
          else if (seg !== "" && seg !== ".") depth++;
          if (depth < 0 || target.startsWith("/")) {
            outside.push(`symlink ${name} -> ${target}`);
            break;
          }
        }
      }
    }
    assert.deepEqual(outside, []);
    const names = new Set(entries.map((e) => e.header.name.replace(/^\.\//, "")));
    for (const bdf of readdirSync(DEVICES))
      assert.ok(names.has(`sys/bus/pci/devices/${bdf}`), `${bdf} is not in the capture`);
  });
});
