/**
 * Kernel command-line parsing (spec §7.3, vectors #59–#61; §8 for the IOMMU switches).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { iommuFromCmdline, parseCmdline, parseConfigAcsBits, parseDeviceMatch } from "./cmdline.ts";

describe("§7.3 pci=disable_acs_redir=", () => {
  it("#59 `;` separates devices: both listed", () => {
    const c = parseCmdline("pci=disable_acs_redir=0000:02:00.0;0000:02:01.0");
    assert.deepEqual(
      c.disableAcsRedir.map((m) => ("invalid" in m ? m.invalid : m.text)),
      ["0000:02:00.0", "0000:02:01.0"],
    );
    assert.deepEqual(c.problems, []);
  });

  it("#60 `,` ends the option: only 0000:02:00.0, and `0000:02:01.0` is an unknown pci= option", () => {
    const c = parseCmdline("pci=disable_acs_redir=0000:02:00.0,0000:02:01.0");
    assert.deepEqual(
      c.disableAcsRedir.map((m) => ("invalid" in m ? m.invalid : m.text)),
      ["0000:02:00.0"],
    );
    assert.equal(c.problems.length, 1, JSON.stringify(c.problems));
    assert.equal(c.problems[0]!.param, "0000:02:01.0");
  });

  it("#61 `pci:10b5:0:0:0` is an ID match with wildcards", () => {
    const c = parseCmdline("pci=disable_acs_redir=pci:10b5:0:0:0");
    assert.deepEqual(c.disableAcsRedir, [
      { kind: "id", vendor: 0x10b5, device: 0, subVendor: 0, subDevice: 0, text: "pci:10b5:0:0:0" },
    ]);
  });

  it("other pci= options around it are still read (noats)", () => {
    const c = parseCmdline("pci=noats,disable_acs_redir=0000:02:00.0");
    assert.equal(c.noats, true);
    assert.equal(c.disableAcsRedir.length, 1);
    assert.equal(parseCmdline("pci=realloc").noats, false);
  });

  it("a known pci= option we do not model is not a problem; an unknown one is", () => {
    assert.deepEqual(parseCmdline("pci=realloc,nocrs").problems, []);
    assert.equal(parseCmdline("pci=frobnicate").problems.length, 1);
  });
});

describe("§7.3 <dev> syntax (pci_dev_str_match)", () => {
  it("BDF with and without domain", () => {
    assert.deepEqual(parseDeviceMatch("0000:02:00.0"), {
      kind: "path",
      domain: 0,
      bus: 2,
      devfns: [0x00],
      text: "0000:02:00.0",
    });
    const m = parseDeviceMatch("02:01.0");
    assert.ok(m?.kind === "path");
    assert.equal(m.domain, 0);
    assert.equal(m.bus, 2);
    assert.deepEqual(m.devfns, [0x08]);
  });

  it("path form `0000:00:1c.0/00.0`: the head's bus, then devfns from the top down", () => {
    const m = parseDeviceMatch("0000:00:1c.0/00.0");
    assert.ok(m?.kind === "path");
    assert.equal(m.domain, 0);
    assert.equal(m.bus, 0);
    assert.deepEqual(m.devfns, [(0x1c << 3) | 0, 0x00]);
    const deep = parseDeviceMatch("0001:00:01.0/00.0/1f.7");
    assert.ok(deep?.kind === "path");
    assert.equal(deep.domain, 1);
    assert.deepEqual(deep.devfns, [0x08, 0x00, (0x1f << 3) | 7]);
  });

  it("ID form with 2 or 4 fields", () => {
    assert.deepEqual(parseDeviceMatch("pci:10b5:8747"), {
      kind: "id",
      vendor: 0x10b5,
      device: 0x8747,
      subVendor: 0,
      subDevice: 0,
      text: "pci:10b5:8747",
    });
    const m = parseDeviceMatch("pci:8086:0:1028:1fe3");
    assert.ok(m?.kind === "id");
    assert.equal(m.subVendor, 0x1028);
    assert.equal(m.subDevice, 0x1fe3);
  });

  it("malformed: no bus, a path step without function, a lone vendor", () => {
    assert.equal(parseDeviceMatch("1c.0"), null);
    assert.equal(parseDeviceMatch("0000:00:1c.0/00"), null);
    assert.equal(parseDeviceMatch("pci:10b5"), null);
    assert.equal(parseDeviceMatch("zz"), null);
  });

  it("an unparsable disable_acs_redir entry is reported", () => {
    const c = parseCmdline("pci=disable_acs_redir=zz");
    assert.deepEqual(c.disableAcsRedir, [{ invalid: "zz" }]);
    assert.equal(c.problems.length, 1);
  });
});

describe("§7.3 pci=config_acs=<bits>@<dev>", () => {
  it("`1x0` → mask 0x05, flags 0x04 (rightmost is SV)", () => {
    assert.deepEqual(parseConfigAcsBits("1x0"), { mask: 0x05, flags: 0x04 });
    assert.deepEqual(parseConfigAcsBits("1X0"), { mask: 0x05, flags: 0x04 });
  });

  it("`1x0@0000:02:00.0` on the command line", () => {
    const c = parseCmdline("pci=config_acs=1x0@0000:02:00.0");
    assert.equal(c.configAcs.length, 1);
    const e = c.configAcs[0]!;
    assert.ok(!("invalid" in e));
    assert.equal(e.mask, 0x05);
    assert.equal(e.flags, 0x04);
    assert.ok(e.match.kind === "path");
    assert.equal(e.match.bus, 2);
    assert.deepEqual(e.match.devfns, [0]);
    assert.deepEqual(c.problems, []);
  });

  it("several entries separated by `;`", () => {
    const c = parseCmdline("pci=config_acs=1x0@0000:02:00.0;0000001@pci:10b5:0");
    assert.deepEqual(
      c.configAcs.map((e) => ("invalid" in e ? [e.invalid] : [e.mask, e.flags, e.match.text])),
      [
        [0x05, 0x04, "0000:02:00.0"],
        [0x7f, 0x01, "pci:10b5:0"],
      ],
    );
  });

  it("all seven bits", () => {
    assert.deepEqual(parseConfigAcsBits("1111111"), { mask: 0x7f, flags: 0x7f });
    assert.deepEqual(parseConfigAcsBits("xxxxxx1"), { mask: 0x01, flags: 0x01 });
  });

  it("invalid characters → invalid flags, entry not applied", () => {
    assert.equal(parseConfigAcsBits("1y0"), null);
    assert.equal(parseConfigAcsBits("1 0"), null);
    const c = parseCmdline("pci=config_acs=1y0@0000:02:00.0");
    assert.equal(c.configAcs.filter((e) => !("invalid" in e)).length, 0);
    assert.equal(c.problems.length, 1);
  });

  it("missing `@` → error, nothing applied", () => {
    const c = parseCmdline("pci=config_acs=1x0");
    assert.equal(c.configAcs.filter((e) => !("invalid" in e)).length, 0);
    assert.equal(c.problems.length, 1);
  });

  it("a forced bit beyond DT (8 positions with bit 7 = 0/1) → error", () => {
    assert.equal(parseConfigAcsBits("10000000"), null);
    assert.equal(parseConfigAcsBits("00000000"), null);
    const c = parseCmdline("pci=config_acs=10000000@0000:02:00.0");
    assert.equal(c.configAcs.filter((e) => !("invalid" in e)).length, 0);
    assert.equal(c.problems.length, 1);
  });

  it("an `x` beyond bit 6 sets no mask bit, so the kernel accepts it (mask & ~0x7f == 0)", () =>
    assert.deepEqual(parseConfigAcsBits("x0000000"), { mask: 0x7f, flags: 0 }));
});

describe("command-line words (next_arg)", () => {
  it("a fully quoted word", () => {
    const c = parseCmdline('"pci=disable_acs_redir=0000:02:00.0;0000:02:01.0" quiet');
    assert.equal(c.disableAcsRedir.length, 2);
  });

  it("a quoted value", () => {
    assert.equal(parseCmdline('pci="noats"').noats, true);
  });

  it("spaces inside quotes do not split words", () => {
    const c = parseCmdline('dyndbg="file drivers/pci/* +p" iommu=pt  pci=noats');
    assert.equal(c.iommu.passthrough, true);
    assert.equal(c.noats, true);
    assert.deepEqual(c.problems, []);
  });
});

describe("§8 IOMMU switches", () => {
  it("iommu=pt → passthrough; a translating IOMMU becomes identity", () => {
    const c = parseCmdline("iommu=pt");
    assert.equal(c.iommu.passthrough, true);
    assert.equal(iommuFromCmdline(c, "GenuineIntel", "dma-fq"), "identity");
    assert.equal(iommuFromCmdline(c, "AuthenticAMD", "dma"), "identity");
  });

  it("iommu=nopt / iommu.passthrough=0 → translated", () => {
    assert.equal(parseCmdline("iommu=nopt").iommu.passthrough, false);
    const c = parseCmdline("iommu.passthrough=0");
    assert.equal(c.iommu.passthrough, false);
    const mode = iommuFromCmdline(c, "GenuineIntel", "identity");
    assert.ok(mode === "dma" || mode === "dma-fq", `${mode}`);
    assert.equal(
      iommuFromCmdline(parseCmdline("iommu.passthrough=1"), "GenuineIntel", "dma"),
      "identity",
    );
  });

  it("intel_iommu=on,strict → Intel on + strict; strict turns DMA_FQ into DMA", () => {
    const c = parseCmdline("intel_iommu=on,strict");
    assert.equal(c.iommu.intel, "on");
    assert.equal(c.iommu.strict, true);
    assert.equal(iommuFromCmdline(c, "GenuineIntel", "dma-fq"), "dma");
    assert.equal(iommuFromCmdline(c, "GenuineIntel", "off"), "dma");
  });

  it("intel_iommu=on turns a machine without an IOMMU into a translating one", () => {
    const mode = iommuFromCmdline(parseCmdline("intel_iommu=on"), "GenuineIntel", "off");
    assert.ok(mode === "dma" || mode === "dma-fq", `${mode}`);
  });

  it("intel_iommu=off switches it off on Intel", () => {
    const c = parseCmdline("intel_iommu=off");
    assert.equal(c.iommu.intel, "off");
    assert.equal(iommuFromCmdline(c, "GenuineIntel", "dma-fq"), "off");
  });

  it("iommu.strict=1 / =0", () => {
    const c = parseCmdline("iommu.strict=1");
    assert.equal(c.iommu.strict, true);
    assert.equal(iommuFromCmdline(c, "GenuineIntel", "dma-fq"), "dma");
    const lazy = parseCmdline("iommu.strict=0");
    assert.equal(lazy.iommu.strict, false);
    assert.equal(iommuFromCmdline(lazy, "GenuineIntel", "dma-fq"), "dma-fq");
  });

  it("amd_iommu=off switches it off on AMD only", () => {
    const c = parseCmdline("amd_iommu=off");
    assert.equal(c.iommu.amd, "off");
    assert.equal(iommuFromCmdline(c, "AuthenticAMD", "dma-fq"), "off");
    assert.equal(iommuFromCmdline(c, "GenuineIntel", "dma-fq"), "dma-fq");
  });

  it("iommu=off → off", () => {
    const c = parseCmdline("iommu=off");
    assert.equal(c.iommu.off, true);
    assert.equal(iommuFromCmdline(c, "GenuineIntel", "dma"), "off");
  });

  it("nothing said → the captured mode stands", () => {
    assert.equal(iommuFromCmdline(parseCmdline("quiet"), "GenuineIntel", "dma-fq"), "dma-fq");
    assert.equal(iommuFromCmdline(parseCmdline("quiet"), "GenuineIntel", undefined), undefined);
  });
});
