/**
 * Golden test against a real Linux 6.1 kernel: for every topology the oracle booted under QEMU,
 * peerbuf, given only the sysfs capture, must give the kernel's distance, map type and messages
 * for every (provider, client) pair, its multi-client sums and its provider choices.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { buildMachine, type PciFunction } from "../src/core/hw/machine.ts";
import { P2pdma } from "../src/core/kernel/pci/p2pdma.ts";
import { bootPci } from "../src/core/kernel/pci/pci-view.ts";
import { loadInput } from "../src/node/load-input.ts";

const ROOT = new URL("./fixtures/kernel-oracle/", import.meta.url);
const MAP: Record<string, string> = {
  BUS_ADDR: "bus-address",
  THRU_HOST_BRIDGE: "through-host-bridge",
  NOT_SUPPORTED: "not-supported",
};

function tsv(dir: URL, name: string): Record<string, string>[] {
  let text: string;
  try {
    text = readFileSync(new URL(name, dir), "utf8");
  } catch {
    return [];
  }
  const [head, ...rows] = text.trimEnd().split("\n");
  const cols = head!.split("\t");
  return rows.map((r) => Object.fromEntries(r.split("\t").map((v, i) => [cols[i]!, v])));
}

const topologies = readdirSync(ROOT, { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name)
  .sort();

describe("kernel oracle (Linux 6.1.192 under QEMU)", () => {
  it("has the captures", () =>
    assert.ok(topologies.length >= 18, `only ${topologies.length} topologies`));

  for (const name of topologies) {
    it(name, async () => {
      const dir = new URL(`${name}/`, ROOT);
      const desc = await loadInput([new URL("sysfs.tar.gz", dir).pathname]);
      const machine = buildMachine(desc);
      const registered = new Set(
        tsv(dir, "registrations.tsv")
          .filter((r) => r["rc"] === "0")
          .map((r) => r["bdf"]!),
      );
      const view = bootPci(machine, { p2pdmaState: registered });
      const fn = (bdf: string): PciFunction => {
        const f = machine.byBdf(bdf);
        assert.ok(f, `${name}: ${bdf} is in the kernel's answers but not in the loaded capture`);
        return f;
      };
      const verdicts = tsv(dir, "verdicts.tsv");
      assert.ok(verdicts.length > 0);
      let mismatches: string[] = [];
      for (const row of verdicts) {
        const k = new P2pdma(view);
        const p = fn(row["provider"]!);
        const c = fn(row["client"]!);
        const d = k.distanceMany(p, [c], true);
        const pair = `${p.name} -> ${c.name}`;
        if (d !== Number(row["distance"]))
          mismatches.push(`${pair}: distance ${d}, kernel ${row["distance"]}`);
        const mt = row["map_type"]!;
        const cached = k.cache.lookup(p, c);
        if (mt === "NA") {
          if (cached !== undefined)
            mismatches.push(`${pair}: we cached a map type, the kernel had no p2pdma state`);
        } else if (cached !== MAP[mt]) mismatches.push(`${pair}: map type ${cached}, kernel ${mt}`);
        const msgs = k.log.join(" | ") || "-";
        if (msgs !== row["kernel_messages"])
          mismatches.push(
            `${pair}: messages\n  ours:   ${msgs}\n  kernel: ${row["kernel_messages"]}`,
          );
      }
      assert.deepEqual(mismatches.slice(0, 10), [], `${mismatches.length} mismatches`);

      const queried = [...new Set(verdicts.map((r) => r["provider"]!))];
      mismatches = [];
      for (const row of tsv(dir, "many.tsv")) {
        const p = fn(row["provider"]!);
        const clients = queried.filter((b) => b !== p.name).map(fn);
        assert.equal(
          clients.length,
          Number(row["num_clients"]),
          `${name}: client list size for ${p.name}`,
        );
        const d = new P2pdma(view).distanceMany(p, clients, false);
        if (d !== Number(row["distance_many_all_others"]))
          mismatches.push(`${p.name}: many ${d}, kernel ${row["distance_many_all_others"]}`);
      }
      for (const row of tsv(dir, "find.tsv")) {
        const c = fn(row["client"]!);
        const { candidates } = new P2pdma(view).findManyCandidates([c]);
        const want = row["pci_p2pmem_find_many"]!;
        const names = candidates.map((x) => x.name);
        if (want === "-" ? names.length > 0 : !names.includes(want))
          mismatches.push(
            `find_many([${c.name}]): candidates [${names.join(", ")}], kernel picked ${want}`,
          );
      }
      assert.deepEqual(mismatches.slice(0, 10), [], `${mismatches.length} mismatches`);
    });
  }
});
