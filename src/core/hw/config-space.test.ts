import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ACS, formatAcsBits, parseAcsBits, parseConfigSpace } from "./config-space.ts";

/** Builds a 4 KiB config space: a root port with a PCIe cap at 0x40 and ACS at 0x100. */
function rootPort(acsCtrl: number): Uint8Array {
  const b = new Uint8Array(4096);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, 0x1b36, true);
  dv.setUint16(2, 0x000c, true);
  dv.setUint16(6, 0x0010, true); // status: capability list
  b[0x0b] = 0x06;
  b[0x0a] = 0x04;
  b[0x0e] = 0x01;
  b[0x19] = 0x01;
  b[0x1a] = 0x03;
  b[0x34] = 0x40;
  b[0x40] = 0x10; // PCIe cap
  b[0x41] = 0x00;
  dv.setUint16(0x42, 0x0042, true); // version 2, type 4 = root port
  dv.setUint32(0x4c, 0x00000104, true); // lnkcap: 8 GT/s? code 4 = 16 GT/s, width x16
  dv.setUint32(0x4c, (16 << 4) | 4, true);
  dv.setUint16(0x52, (8 << 4) | 3, true); // lnksta: 8 GT/s x8
  dv.setUint32(0x100, 0x0d | (1 << 16), true); // ACS v1, next 0
  dv.setUint16(0x104, 0x005f, true);
  dv.setUint16(0x106, acsCtrl, true);
  return b;
}

describe("parseConfigSpace", () => {
  it("reads the PCIe port type, links and the live ACS control word", () => {
    const c = parseConfigSpace(rootPort(0x001d));
    assert.equal(c.vendor, 0x1b36);
    assert.equal(c.headerType, 1);
    assert.equal(c.secondaryBus, 1);
    assert.equal(c.subordinateBus, 3);
    assert.equal(c.pcie?.type, "root-port");
    assert.deepEqual(c.pcie?.linkCap, { speed: 16, width: 16 });
    assert.deepEqual(c.pcie?.linkStatus, { speed: 8, width: 8 });
    assert.deepEqual(c.acs, { offset: 0x100, cap: 0x5f, ctrl: 0x1d });
  });

  it("says ACS is unknown for a 64-byte (non-root) read and absent when the chain has none", () => {
    const full = rootPort(0);
    assert.equal(parseConfigSpace(full.subarray(0, 64)).acs, undefined);
    assert.equal(parseConfigSpace(full.subarray(0, 256)).acs, undefined);
    const noAcs = full.slice();
    noAcs.fill(0, 0x100, 0x108);
    assert.equal(parseConfigSpace(noAcs).acs, null);
  });

  it("survives capability loops", () => {
    const b = rootPort(0);
    b[0x41] = 0x40; // next points at itself
    b[0x102] = 0x00;
    b[0x103] = 0x10; // ext next = 0x100: loop
    const c = parseConfigSpace(b);
    assert.equal(c.capabilities.filter((x) => !x.extended).length, 1);
    assert.equal(c.capabilities.filter((x) => x.extended).length, 1);
  });
});

describe("ACS bit helpers", () => {
  it("formats and parses both ways", () => {
    assert.equal(formatAcsBits(0x1d), "SV+ TB- RR+ CR+ UF+ EC- DT-");
    assert.equal(parseAcsBits("RR|CR"), ACS.RR | ACS.CR);
    assert.equal(parseAcsBits("EC"), ACS.EC);
    assert.equal(parseAcsBits("0x1d"), 0x1d);
    assert.equal(parseAcsBits("XX"), null);
  });
});
