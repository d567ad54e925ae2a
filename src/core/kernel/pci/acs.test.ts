/**
 * How the kernel programs ACS Control at boot (spec §7.2, vectors #59–#61) and how
 * `pci_dev_str_match()` device strings match (§7.3), then the end-to-end what-if: re-booting a
 * captured machine with an IOMMU and with `pci=disable_acs_redir=` (§10 #59/#60, oracle O2–O5).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AMD_ZEN, INTEL, topo } from "../../../../test/support/topology.ts";
import type { MachineDescription, PciFunction } from "../../hw/machine.ts";
import { buildMachine } from "../../hw/machine.ts";
import { parseCmdline, parseDeviceMatch } from "../cmdline.ts";
import { type KernelProfile, PROFILES } from "../profile.ts";
import { bootAcsCtrl, deviceMatches } from "./acs.ts";
import { P2pdma } from "./p2pdma.ts";
import { bootPci } from "./pci-view.ts";

const P61 = PROFILES["6.1"];
const MAIN = PROFILES.mainline;
const BOTH: readonly KernelProfile[] = [P61, MAIN];

/**
 * A Q35-like machine: 00:00.0 = 8086:29c0 (not allowlisted), RP 00:01.0 (ACS cap 0x5f),
 * switch USP 01:00.0 (no ACS) with ACS-capable DSPs 02:00.0 / 02:01.0 (vendor 10b5),
 * EPa 03:00.0 and EPb 04:00.0. Captured without an IOMMU: every ACS control word is 0.
 */
function switchMachine(hb = "8086:29c0"): MachineDescription {
  return topo()
    .cpu(INTEL)
    .iommu("off")
    .hostFn("00:00.0", hb)
    .rootPort("00:01.0", { acs: 0 })
    .usp("01:00.0", { parent: "00:01.0" })
    .dsp("02:00.0", { parent: "01:00.0", acs: 0 })
    .dsp("02:01.0", { parent: "01:00.0", acs: 0 })
    .ep("03:00.0", { parent: "02:00.0" })
    .ep("04:00.0", { parent: "02:01.0" })
    .build();
}

function machine(desc: MachineDescription, profile?: KernelProfile) {
  const m = buildMachine(profile ? { ...desc, kernel: { profile: profile.id } } : desc);
  const f = (bdf: string): PciFunction => {
    const fn = m.byBdf(bdf);
    assert.ok(fn, bdf);
    return fn;
  };
  return { m, f };
}

/** bootAcsCtrl() on one function with ACS cap 0x5f. */
function ctrl(
  fn: PciFunction,
  firmware: number,
  iommu: boolean,
  cmdline: string,
  profile: KernelProfile,
  cap = 0x5f,
): number {
  return bootAcsCtrl({ fn, cap, firmware }, iommu, parseCmdline(cmdline), profile).ctrl;
}

describe("§7.2 pci_enable_acs: the control word the kernel writes", () => {
  const { f } = machine(switchMachine());
  const dsp0 = f("02:00.0");

  for (const p of BOTH) {
    describe(`[${p.id}]`, () => {
      it("IOMMU on, cap 0x5f, firmware 0 → 0x001d (SV|RR|CR|UF)", () =>
        assert.equal(ctrl(dsp0, 0, true, "", p), 0x001d));

      it("IOMMU on and pci=noats → TB too: 0x001f", () =>
        assert.equal(ctrl(dsp0, 0, true, "pci=noats", p), 0x001f));

      it("IOMMU on: bits ORed into the firmware word (DT 0x40 stays) → 0x005d", () =>
        assert.equal(ctrl(dsp0, 0x40, true, "", p), 0x005d));

      it("IOMMU on: only bits the capability has (cap SV|UF) → 0x0011", () =>
        assert.equal(ctrl(dsp0, 0, true, "", p, 0x11), 0x0011));

      it("no IOMMU: the firmware word is left alone", () => {
        assert.equal(ctrl(dsp0, 0, false, "", p), 0);
        assert.equal(ctrl(dsp0, 0x001d, false, "", p), 0x001d);
      });

      it("disable_acs_redir applies without an IOMMU too: firmware 0x001d → 0x0011", () =>
        assert.equal(ctrl(dsp0, 0x001d, false, "pci=disable_acs_redir=0000:02:00.0", p), 0x0011));

      it("a function the list does not name is not touched", () =>
        assert.equal(ctrl(f("02:01.0"), 0, true, "pci=disable_acs_redir=0000:02:00.0", p), 0x1d));
    });
  }

  it("#59 [6.1] IOMMU on + disable_acs_redir: current word minus RR|CR|EC, SV/UF kept → 0x0011", () => {
    const line = "pci=disable_acs_redir=0000:02:00.0;0000:02:01.0";
    assert.equal(ctrl(dsp0, 0, true, line, P61), 0x0011);
    assert.equal(ctrl(f("02:01.0"), 0, true, line, P61), 0x0011);
  });

  it("#59 [mainline] IOMMU on + disable_acs_redir: recomputed from firmware 0 → 0x0000", () => {
    const line = "pci=disable_acs_redir=0000:02:00.0;0000:02:01.0";
    assert.equal(ctrl(dsp0, 0, true, line, MAIN), 0x0000);
    assert.equal(ctrl(f("02:01.0"), 0, true, line, MAIN), 0x0000);
  });

  it("#59 firmware TB (0x0002), IOMMU on: 6.1 → 0x0013 (0x001f minus redirect); mainline → fw & ~(RR|CR|EC) = 0x0002", () => {
    const line = "pci=disable_acs_redir=0000:02:00.0";
    assert.equal(ctrl(dsp0, 0x0002, true, line, P61), 0x0013);
    assert.equal(ctrl(dsp0, 0x0002, true, line, MAIN), 0x0002);
  });

  it("#61 pci=disable_acs_redir=pci:10b5:0:0:0: every 10b5 function gets fw & ~(RR|CR|EC)", () => {
    const line = "pci=disable_acs_redir=pci:10b5:0:0:0";
    // no IOMMU, firmware SV|RR|UF|EC = 0x0035 → 0x0011 in both versions
    for (const p of BOTH) {
      assert.equal(ctrl(dsp0, 0x0035, false, line, p), 0x0011, p.id);
      assert.equal(ctrl(f("02:01.0"), 0x0035, false, line, p), 0x0011, p.id);
      // the Root Port is 1b36:000c: not matched
      assert.equal(ctrl(f("00:01.0"), 0x0035, false, line, p), 0x0035, p.id);
    }
    // IOMMU on, firmware 0: mainline → 0, 6.1 → 0x0011; the RP keeps 0x001d
    assert.equal(ctrl(dsp0, 0, true, line, MAIN), 0);
    assert.equal(ctrl(dsp0, 0, true, line, P61), 0x0011);
    assert.equal(ctrl(f("00:01.0"), 0, true, line, MAIN), 0x001d);
  });

  it("config_acs [mainline] `1x0@0000:02:00.0`: (fw & ~0x05) | 0x04, from firmware even with an IOMMU", () => {
    const line = "pci=config_acs=1x0@0000:02:00.0";
    assert.equal(ctrl(dsp0, 0x0003, true, line, MAIN), 0x0006);
    assert.equal(ctrl(dsp0, 0x0000, false, line, MAIN), 0x0004);
    assert.equal(ctrl(f("02:01.0"), 0, true, line, MAIN), 0x001d);
  });

  it("config_acs [6.1]: the parameter does not exist, the kernel default stands", () =>
    assert.equal(ctrl(dsp0, 0x0003, true, "pci=config_acs=1x0@0000:02:00.0", P61), 0x001f));

  it("config_acs [mainline] wins over disable_acs_redir when both match (applied second)", () =>
    assert.equal(
      ctrl(dsp0, 0, true, "pci=disable_acs_redir=0000:02:00.0,config_acs=1x0@0000:02:00.0", MAIN),
      0x0004,
    ));
});

describe("§7.3 pci_dev_str_match: which functions a <dev> names", () => {
  // RP 00:1c.0 ── EP 03:00.0 (PF; VF 03:00.4); RP 00:1d.0 ── EP 04:00.0;
  // RP 00:01.0 ── USP 05:00.0 ── DSP 06:01.0 ── EP 07:00.0
  const { f } = machine(
    topo()
      .hostFn("00:00.0", "8086:2020")
      .rootPort("00:1c.0")
      .ep("03:00.0", { parent: "00:1c.0", id: "10b5:8747" })
      .vf("03:00.4", { pf: "03:00.0", id: "10b5:8748" })
      .rootPort("00:1d.0")
      .ep("04:00.0", { parent: "00:1d.0", id: "8086:0953" })
      .rootPort("00:01.0")
      .usp("05:00.0", { parent: "00:01.0" })
      .dsp("06:01.0", { parent: "05:00.0" })
      .ep("07:00.0", { parent: "06:01.0" })
      .build(),
  );
  // the same devices after renumbering: 00:1c.0's endpoint is now on bus 09
  const renum = machine(
    topo()
      .hostFn("00:00.0", "8086:2020")
      .rootPort("00:1c.0")
      .ep("09:00.0", { parent: "00:1c.0" })
      .rootPort("00:1d.0")
      .ep("0a:00.0", { parent: "00:1d.0" })
      .build(),
  ).f;
  const match = (text: string, bdf: string, fn = f) => {
    const m = parseDeviceMatch(text);
    assert.ok(m, `"${text}" should parse`);
    return deviceMatches(m, fn(bdf));
  };

  it("a plain BDF names exactly that function", () => {
    assert.equal(match("0000:03:00.0", "03:00.0"), true);
    assert.equal(match("03:00.0", "03:00.0"), true);
    assert.equal(match("0000:03:00.0", "04:00.0"), false);
    assert.equal(match("0001:03:00.0", "03:00.0"), false);
  });

  it("path `0000:00:1c.0/00.0` matches by devfn chain, so it survives renumbering", () => {
    assert.equal(match("0000:00:1c.0/00.0", "03:00.0"), true);
    assert.equal(match("0000:00:1c.0/00.0", "09:00.0", renum), true);
    assert.equal(match("0000:00:1c.0/00.0", "04:00.0"), false);
    assert.equal(match("0000:00:1c.0/00.0", "0a:00.0", renum), false);
    assert.equal(match("0000:00:1c.0/00.1", "03:00.0"), false);
  });

  it("path of several hops is checked from the device up", () => {
    assert.equal(match("0000:00:01.0/00.0/01.0/00.0", "07:00.0"), true);
    assert.equal(match("0000:00:01.0/00.0/01.0", "06:01.0"), true);
    assert.equal(match("0000:05:00.0/01.0/00.0", "07:00.0"), true);
    assert.equal(match("0000:00:01.0/00.0/00.0/00.0", "07:00.0"), false);
    // longer than the chain: runs out of upstream bridges
    assert.equal(match("0000:00:00.0/01.0/00.0/01.0/00.0", "07:00.0"), false);
  });

  it("a VF's path goes through its PF's upstream bridge (pci_upstream_bridge)", () =>
    assert.equal(match("0000:00:1c.0/00.4", "03:00.4"), true));

  it("`pci:<vendor>:<device>[:<subvendor>:<subdevice>]`, 0 = wildcard", () => {
    assert.equal(match("pci:10b5:8747", "03:00.0"), true);
    assert.equal(match("pci:10b5:0:0:0", "03:00.0"), true);
    assert.equal(match("pci:10b5:0:0:0", "03:00.4"), true);
    assert.equal(match("pci:10b5:0:0:0", "04:00.0"), false);
    assert.equal(match("pci:10b5:8748", "03:00.0"), false);
    assert.equal(match("pci:0:0953", "04:00.0"), true);
  });
});

describe("what-if: re-booting a captured machine with an IOMMU / a command line", () => {
  const EPA = "03:00.0";
  const EPB = "04:00.0";

  for (const p of BOTH) {
    describe(`[${p.id}]`, () => {
      it("O2: as captured (no IOMMU, ACS ctrl 0 on the DSPs) → BUS, 4", () => {
        const { m, f } = machine(switchMachine(), p);
        const view = bootPci(m);
        const r = new P2pdma(view).calc(f(EPA), f(EPB), false);
        assert.deepEqual([r.mapType, r.distance], ["bus-address", 4]);
      });

      it("O3: bootPci(m, {iommu: 'dma'}), Intel → DSPs 0x001d, NS (dm −1)", () => {
        const { m, f } = machine(switchMachine(), p);
        const view = bootPci(m, { iommu: "dma" });
        assert.equal(view.acsCtrl(f("02:00.0")), 0x001d);
        assert.equal(view.acsCtrl(f("02:01.0")), 0x001d);
        assert.equal(view.acsCtrl(f("00:01.0")), 0x001d);
        assert.equal(view.acsCtrl(f("01:00.0")), null);
        const k = new P2pdma(view);
        assert.equal(k.calc(f(EPA), f(EPB), false).mapType, "not-supported");
        assert.equal(k.distanceMany(f(EPA), [f(EPB)], false), -1);
      });

      it("O4: bootPci(m, {iommu: 'dma'}) on AMD Zen → THB, 4", () => {
        const { m, f } = machine(switchMachine(), p);
        const view = bootPci(m, { iommu: "dma", cpu: AMD_ZEN });
        const r = new P2pdma(view).calc(f(EPA), f(EPB), false);
        assert.deepEqual([r.mapType, r.distance], ["through-host-bridge", 4]);
      });

      it("#59 / O5: intel_iommu=on pci=disable_acs_redir=0000:02:00.0;0000:02:01.0 → BUS, 4", () => {
        const { m, f } = machine(switchMachine(), p);
        const view = bootPci(m, {
          cmdline: "intel_iommu=on pci=disable_acs_redir=0000:02:00.0;0000:02:01.0",
        });
        assert.ok(view.iommu === "dma" || view.iommu === "dma-fq", `iommu ${view.iommu}`);
        const want = p.id === "6.1" ? 0x0011 : 0x0000;
        assert.equal(view.acsCtrl(f("02:00.0")), want);
        assert.equal(view.acsCtrl(f("02:01.0")), want);
        assert.equal(view.acsCtrl(f("00:01.0")), 0x001d);
        const k = new P2pdma(view);
        const r = k.calc(f(EPA), f(EPB), false);
        assert.deepEqual([r.mapType, r.distance], ["bus-address", 4]);
        assert.equal(k.distanceMany(f(EPA), [f(EPB)], true), 4);
      });

      it("#60: `,` instead of `;` → only DSP0 is cleared, DSP1 keeps RR → THB, 4 (HB 8086:2020)", () => {
        const { m, f } = machine(switchMachine("8086:2020"), p);
        const view = bootPci(m, {
          cmdline: "intel_iommu=on pci=disable_acs_redir=0000:02:00.0,0000:02:01.0",
        });
        assert.equal(view.acsCtrl(f("02:00.0")), p.id === "6.1" ? 0x0011 : 0x0000);
        assert.equal(view.acsCtrl(f("02:01.0")), 0x001d);
        assert.ok(
          view.cmdline.problems.some((x) => x.param === "0000:02:01.0"),
          JSON.stringify(view.cmdline.problems),
        );
        const r = new P2pdma(view).calc(f(EPA), f(EPB), true);
        assert.deepEqual([r.mapType, r.distance], ["through-host-bridge", 4]);
        assert.deepEqual(
          r.acsRedirect.map((x) => x.name),
          ["0000:02:01.0"],
        );
      });
    });
  }
});

// Kernel-source facts beyond the §10 table (drivers/pci/pci.c: pci_setup, __pci_config_acs,
// 6.1 pci_disable_acs_redir): the device list is walked per device at enumeration.
describe("pci.c per-device parameter walk", () => {
  const { f } = machine(switchMachine());
  const dsp0 = f("02:00.0");
  const dsp1 = f("02:01.0");

  it("config_acs: an invalid entry reached before the match ignores the parameter (§7.3 'the whole parameter is ignored')", () =>
    assert.equal(
      ctrl(dsp0, 0, true, "pci=config_acs=1y0@0000:02:01.0;1x0@0000:02:00.0", MAIN),
      0x001d,
    ));

  it("config_acs: an invalid entry after the match does not stop that device", () =>
    assert.equal(ctrl(dsp0, 0, true, "pci=config_acs=1x0@0000:02:00.0;1y0@0000:02:01.0", MAIN), 4));

  for (const p of BOTH)
    it(`[${p.id}] disable_acs_redir: an unparsable entry ends the walk (pci_dev_str_match < 0 → break)`, () =>
      assert.equal(ctrl(dsp1, 0, true, "pci=disable_acs_redir=zz;0000:02:01.0", p), 0x001d));

  for (const p of BOTH)
    it(`[${p.id}] a second pci=disable_acs_redir= replaces the first (pci_setup stores one pointer)`, () => {
      const line = "pci=disable_acs_redir=0000:02:00.0 pci=disable_acs_redir=0000:02:01.0";
      assert.equal(ctrl(dsp0, 0, true, line, p), 0x001d);
      assert.equal(ctrl(dsp1, 0, true, line, p), p.id === "6.1" ? 0x0011 : 0);
    });
});
