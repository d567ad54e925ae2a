import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { loadSystemPciIds, PCI_IDS_PATHS } from "../../node/pci-ids.ts";
import { InputError } from "../errors.ts";
import { parsePciIds } from "./pci-ids.ts";

const SAMPLE = `#
#	List of PCI ID's
#
#	Version: 2099.01.02
#
# Syntax:
# vendor  vendor_name
#	device  device_name				<-- single tab

0010  Allied Telesis, Inc (Wrong ID)
# This is a relabelled RTL-8139
	8139  AT-2500TX V3 Ethernet
10de  NVIDIA Corporation
	20b0  GA100 [A100 SXM4 40GB]
		10de 134f  A100-SXM4-40GB
	2330  GH100 [H100 SXM5 80GB]
1234  Twin Vendor
5678  Twin Vendor
8086  Intel Corporation
	1229  82557/8/9/0/1 Ethernet Pro 100
		8086 0001  EtherExpress PRO/100B (TX)
		8086 0002  82559 Fast Ethernet LAN on Motherboard
	1230  Twin Device
	1231  Twin Device
this line fits no shape
	9999  orphan device line after junk

# List of known device classes, subclasses and programming interfaces
C 01  Mass storage controller
	08  Non-Volatile memory controller
		01  NVMHCI
		02  NVM Express
	80  Mass storage controller
C 06  Bridge
	04  PCI bridge
		00  Normal decode
		01  Subtractive decode
	80  Bridge
C 0c  Serial bus controller
	03  USB controller
		30  XHCI
`;

describe("parsePciIds", () => {
  const ids = parsePciIds(SAMPLE);

  it("looks up vendors, devices and subsystems", () => {
    assert.equal(ids.version, "2099.01.02");
    assert.equal(ids.vendorName(0x10de), "NVIDIA Corporation");
    assert.equal(ids.vendorName(0x0010), "Allied Telesis, Inc (Wrong ID)");
    assert.equal(ids.vendorName(0xffff), undefined);
    assert.equal(ids.deviceName(0x10de, 0x20b0), "GA100 [A100 SXM4 40GB]");
    assert.equal(ids.deviceName(0x10de, 0x2330), "GH100 [H100 SXM5 80GB]");
    assert.equal(ids.deviceName(0x0010, 0x8139), "AT-2500TX V3 Ethernet"); // past a comment
    assert.equal(ids.deviceName(0x10de, 0x1229), undefined); // another vendor's device
    assert.equal(ids.deviceName(0x8086, 0x1229), "82557/8/9/0/1 Ethernet Pro 100");
    assert.equal(
      ids.subsystemName(0x8086, 0x1229, 0x8086, 0x0002),
      "82559 Fast Ethernet LAN on Motherboard",
    );
    assert.equal(ids.subsystemName(0x10de, 0x20b0, 0x10de, 0x134f), "A100-SXM4-40GB");
    assert.equal(ids.subsystemName(0x10de, 0x2330, 0x10de, 0x134f), undefined);
  });

  it("skips lines that fit no shape, ending the vendor they interrupt", () => {
    assert.equal(ids.deviceName(0x8086, 0x1231), "Twin Device");
    assert.equal(ids.deviceName(0x8086, 0x9999), undefined);
  });

  it("names classes: subclass first, base class when the subclass is unknown", () => {
    assert.equal(ids.className(0x060400), "PCI bridge");
    assert.equal(ids.className(0x060401), "PCI bridge");
    assert.equal(ids.className(0x0608ff), "Bridge");
    assert.equal(ids.className(0x010802), "Non-Volatile memory controller");
    assert.equal(ids.className(0x0c0330), "USB controller");
    assert.equal(ids.className(0x020000), undefined);
    assert.equal(ids.progIfName(0x010802), "NVM Express");
    assert.equal(ids.progIfName(0x060401), "Subtractive decode");
    assert.equal(ids.progIfName(0x060402), undefined);
    assert.equal(ids.progIfName(0x0c0330), "XHCI");
  });

  it("finds IDs by exact name, refusing ambiguous names", () => {
    assert.equal(ids.vendorByName("NVIDIA Corporation"), 0x10de);
    assert.equal(ids.vendorByName("Twin Vendor"), undefined);
    assert.equal(ids.vendorByName("NVIDIA"), undefined);
    assert.equal(ids.deviceByName(0x8086, "82557/8/9/0/1 Ethernet Pro 100"), 0x1229);
    assert.equal(ids.deviceByName(0x8086, "Twin Device"), undefined);
    assert.equal(ids.deviceByName(0x10de, "82557/8/9/0/1 Ethernet Pro 100"), undefined);
    assert.equal(ids.subclassByName("PCI bridge"), 0x0604);
    assert.equal(ids.subclassByName("Bridge"), 0x0680);
    assert.equal(ids.subclassByName("Mass storage controller"), 0x0180);
    assert.equal(ids.subclassByName("Serial bus controller"), undefined); // a base class only
  });

  it("reads CRLF files and never throws on junk", () => {
    const crlf = parsePciIds(SAMPLE.replace(/\n/g, "\r\n"));
    assert.equal(crlf.vendorName(0x10de), "NVIDIA Corporation");
    assert.equal(crlf.deviceName(0x10de, 0x20b0), "GA100 [A100 SXM4 40GB]");
    assert.equal(crlf.progIfName(0x010802), "NVM Express");
    const junk = parsePciIds("\0\x01\t\t\tzz\nC\nC zz\n\tqq  x\n1234\n");
    assert.equal(junk.vendorName(0x1234), undefined);
    assert.equal(junk.version, undefined);
  });
});

const SYSTEM = PCI_IDS_PATHS.find((p) => existsSync(p));

describe("the system pci.ids", () => {
  const skip = SYSTEM ? false : "no pci.ids on this system";

  it("parses fast and answers known IDs", { skip }, () => {
    const text = readFileSync(SYSTEM!, "utf8");
    const t0 = performance.now();
    const ids = parsePciIds(text);
    const parseMs = performance.now() - t0;
    assert.ok(parseMs < 500, `parse took ${parseMs.toFixed(0)} ms`);
    assert.match(ids.version ?? "", /^\d{4}\.\d{2}\.\d{2}$/);
    assert.equal(ids.vendorName(0x8086), "Intel Corporation");
    assert.equal(ids.vendorName(0x10de), "NVIDIA Corporation");
    assert.equal(ids.className(0x060400), "PCI bridge");
    assert.equal(ids.progIfName(0x010802), "NVM Express");
    const t1 = performance.now();
    let hits = 0;
    for (let i = 0; i < 100_000; i++) if (ids.deviceName(0x8086, i & 0xffff)) hits++;
    const lookupMs = performance.now() - t1;
    assert.ok(hits > 100);
    assert.ok(lookupMs < 500, `100k lookups took ${lookupMs.toFixed(0)} ms`);
  });

  const SHARED = fileURLToPath(new URL("../../../../shared", import.meta.url));
  const version = SYSTEM
    ? /Version:\s*(\S+)/.exec(readFileSync(SYSTEM, "utf8").slice(0, 400))?.[1]
    : undefined;
  it("gives the names pciutils 3.9 printed with the same database", {
    skip: !existsSync(SHARED)
      ? "../shared not present"
      : version !== "2023.04.10"
        ? "the derived outputs were made with pci.ids 2023.04.10"
        : false,
  }, () => {
    const ids = loadSystemPciIds()!;
    let compared = 0;
    for (const name of ["PCI-X-bridges-and-domains", "tree-asus-p6t6", "tree-fujitsu-p8010"]) {
      const text = readFileSync(
        `${SHARED}/fixtures/real/derived/pciutils/${name}.lspci-PPnn.txt`,
        "utf8",
      );
      for (const line of text.split("\n")) {
        const m = /^\S+ (.*) \[([0-9a-f]{4})\]: (.*) \[([0-9a-f]{4}):([0-9a-f]{4})\]/.exec(line);
        if (!m) continue;
        const v = Number.parseInt(m[4]!, 16);
        const d = Number.parseInt(m[5]!, 16);
        assert.equal(ids.className(Number.parseInt(m[2]!, 16) << 8), m[1], line);
        const dn = ids.deviceName(v, d);
        assert.equal(`${ids.vendorName(v)} ${dn ?? "Device"}`, m[3], line);
        compared++;
      }
    }
    assert.ok(compared > 80);
  });
});

describe("loadSystemPciIds", () => {
  it("returns null when no file exists, and loads the first that does", () => {
    const dir = mkdtempSync(join(tmpdir(), "peerbuf-ids-"));
    try {
      assert.equal(loadSystemPciIds([join(dir, "a"), join(dir, "b")]), null);
      const file = join(dir, "pci.ids");
      writeFileSync(file, SAMPLE);
      const ids = loadSystemPciIds([join(dir, "missing"), file]);
      assert.equal(ids?.vendorName(0x10de), "NVIDIA Corporation");
      assert.equal(loadSystemPciIds([join(dir, "missing"), file]), ids); // loaded once
      assert.throws(
        () => loadSystemPciIds([dir]),
        (e) => e instanceof InputError && /cannot read: EISDIR/.test(e.message),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("finds the system database", { skip: SYSTEM ? false : "no pci.ids on this system" }, () => {
    assert.equal(loadSystemPciIds()?.vendorName(0x8086), "Intel Corporation");
  });
});
