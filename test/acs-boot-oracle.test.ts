/**
 * The ACS boot model against the real kernel: QEMU's firmware leaves every ACS control word 0, so
 * for each oracle capture, pci_enable_acs() + the captured command line (disable_acs_redir in its
 * ID, path and plain forms, bad entries, commas, repeats) must give exactly the words Linux 6.1
 * left in config space.
 */
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { describe, it } from "node:test";
import { buildMachine } from "../src/core/hw/machine.ts";
import { parseCmdline } from "../src/core/kernel/cmdline.ts";
import { bootAcsCtrl } from "../src/core/kernel/pci/acs.ts";
import { PROFILES } from "../src/core/kernel/profile.ts";
import { loadInput } from "../src/node/load-input.ts";

const ROOT = new URL("./fixtures/kernel-oracle/", import.meta.url);
const topologies = readdirSync(ROOT, { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name)
  .sort();

describe("ACS words Linux 6.1 wrote at boot", () => {
  for (const name of topologies) {
    it(name, async () => {
      const desc = await loadInput([new URL(`${name}/sysfs.tar.gz`, ROOT).pathname]);
      const m = buildMachine(desc);
      assert.ok(desc.cmdline !== undefined, "the capture has /proc/cmdline");
      assert.ok(
        desc.iommu?.mode !== undefined || !/iommu/.test(desc.cmdline ?? ""),
        "IOMMU state known",
      );
      const requested = desc.iommu?.mode !== undefined && desc.iommu.mode !== "off";
      const profile = PROFILES["6.1"];
      const cmdline = parseCmdline(desc.cmdline ?? "", { hasConfigAcs: profile.hasConfigAcs });
      let checked = 0;
      for (const fn of m.functions) {
        const acs = fn.desc.acs;
        if (!acs || acs.ctrl === undefined) continue;
        const r = bootAcsCtrl({ fn, cap: acs.cap, firmware: 0 }, requested, cmdline, profile);
        assert.equal(
          `0x${r.ctrl.toString(16)}`,
          `0x${acs.ctrl.toString(16)}`,
          `${name} ${fn.name}: model ${r.steps.join("; ") || "no change"}`,
        );
        checked++;
      }
      assert.ok(checked > 0 || !m.functions.some((f) => f.desc.acs), `${name}: nothing checked`);
    });
  }
});
