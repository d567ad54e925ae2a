import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { P2P_IMPORTER, switchMachine } from "../../../../test/support/beds.ts";
import { j, transferText } from "../../../../test/support/check.ts";
import type { IommuMode, MachineDescription } from "../../hw/machine.ts";
import { dmaSetMaskAndCoherent } from "../dma/device.ts";
import { KernelBug, kerr } from "../errno.ts";
import { leakReport } from "../leaks.ts";
import {
  for_each_sgtable_dma_sg,
  sg_alloc_table,
  sg_dma_is_bus_address,
  sg_page,
} from "../lib/scatterlist.ts";
import type { P2pProvider } from "../mm/page.ts";
import { PROFILES } from "../profile.ts";
import { System } from "../system.ts";
import { type DmaBufAttachment, dmaBufDetach, dmaBufDynamicAttach } from "./attachment.ts";
import { type DmaBuf, DmaBufCore, dmaBufExport } from "./dma-buf.ts";
import { dmaBufPut } from "./file.ts";
import {
  dmaBufFreeSgt,
  dmaBufPhysVecToSgt,
  MAX_SG_ENT_SZ,
  type PhysVec,
  physVecMapping,
} from "./phys-vec.ts";

const GiB = 1n << 30n;
const MiB = 1n << 20n;
const BAR = 0x200_0000_0000n;
const BAR_SIZE = 8n * GiB;

/**
 * The exporter 03:00.0 (an 8 GiB BAR) and a NIC 04:00.0 on two downstream ports of one switch
 * below root port 00:01.0; a second NIC 05:00.0 below root port 00:02.0. `busOffset` gives the
 * host bridge a CPU→bus window offset (bus = cpu + busOffset).
 */
function machine(
  o: { iommu?: IommuMode; acs?: number | null; hostId?: string; busOffset?: bigint } = {},
): MachineDescription {
  return switchMachine({
    exporter: { bars: [{ index: 0, start: BAR, size: BAR_SIZE }] },
    hostId: o.hostId,
    acs: o.acs,
    iommu: o.iommu,
    window:
      o.busOffset === undefined
        ? undefined
        : { cpuStart: BAR, size: BAR_SIZE, busOffset: o.busOffset },
  });
}

function bed(
  o: {
    iommu?: IommuMode;
    acs?: number | null;
    hostId?: string;
    busOffset?: bigint;
    nic?: string;
  } = {},
) {
  const sys = new System(machine(o));
  const core = new DmaBufCore({ profile: PROFILES.mainline });
  const fn = sys.machine.byBdf("03:00.0")!;
  // pcim_p2pdma_provider(): the BAR's provider and the p2pdma state that map types need
  const reg = sys.p2pmem.addResource(fn, 0, BAR_SIZE, 0n);
  assert.ok(reg.ok, "pci_p2pdma_add_resource of the exporter's BAR");
  const provider: P2pProvider = reg.value.provider;
  const d = dmaBufExport(core, {
    exp_name: "mmio",
    ops: { map_dma_buf: () => kerr("EINVAL"), unmap_dma_buf: () => {}, release: () => {} },
    size: BAR_SIZE,
    priv: {},
  });
  assert.ok(d.ok, "dma_buf_export of the test exporter");
  const nic = sys.device(o.nic ?? "04:00.0");
  dmaSetMaskAndCoherent(nic, 64);
  const a = dmaBufDynamicAttach(d.value, nic, P2P_IMPORTER);
  assert.ok(a.ok, "dynamic attach of the NIC");
  return { sys, core, provider, dmabuf: d.value, a: a.value, nic };
}

type Bed = ReturnType<typeof bed>;

function locked<T>(b: Bed, f: () => T): T {
  b.dmabuf.resv.lock("test");
  try {
    return f();
  } finally {
    b.dmabuf.resv.unlock("test");
  }
}

function toSgt(b: Bed, vec: PhysVec[], size?: bigint) {
  const total = size ?? vec.reduce((s, r) => s + r.len, 0n);
  return locked(b, () => dmaBufPhysVecToSgt(b.sys, b.a, b.provider, vec, total, "bidirectional"));
}

function free(b: Bed, sgt: Parameters<typeof dmaBufFreeSgt>[2]): void {
  locked(b, () => dmaBufFreeSgt(b.sys, b.a, sgt, "bidirectional"));
}

function done(b: Bed): void {
  dmaBufDetach(b.dmabuf, b.a as DmaBufAttachment);
  dmaBufPut(b.dmabuf as DmaBuf);
  const leaks = leakReport([b.sys, b.core]);
  assert.deepEqual(leaks, [], `nothing left behind: ${j(leaks)}`);
}

/** The failure, for assertion messages (empty for a success). */
const why = (r: { ok: boolean }): string => (r.ok ? "" : j(r));

describe("dma_buf_phys_vec_to_sgt: map types", () => {
  it("BUS_ADDR (one switch, IOMMU on): bus addresses, marked, page-less, orig_nents 0, no IOVA", () => {
    const b = bed({ iommu: "dma" });
    const vec = [
      { paddr: BAR + 0x10000n, len: 0x20000n },
      { paddr: BAR + 0x80000n, len: 0x1000n },
    ];
    const r = toSgt(b, vec);
    assert.ok(r.ok, why(r));
    const es = [...for_each_sgtable_dma_sg(r.value)];
    assert.equal(es.length, 2, "one entry per range");
    assert.equal(r.value.orig_nents, 0, "no CPU list");
    for (const [i, e] of es.entries()) {
      assert.equal(e.dma_address, vec[i]!.paddr, `entry ${i} is the BAR's bus address`);
      assert.equal(BigInt(e.dma_length), vec[i]!.len, `entry ${i} DMA length`);
      assert.equal(e.length, 0, `entry ${i} has CPU length 0`);
      assert.equal(sg_page(e), null, `entry ${i} has no page`);
      assert.equal(sg_dma_is_bus_address(e), true, `entry ${i} is marked as a bus address`);
    }
    assert.deepEqual(
      physVecMapping(r.value),
      { mapType: "bus-address", iova: false },
      "how it was mapped",
    );
    const t = b.nic.translation;
    assert.ok(t.kind === "dma", "the NIC is behind a DMA domain");
    assert.equal(t.iova.domain.liveRanges().length, 0, "no IOVA was allocated");
    const w = b.sys.deviceWrite(b.nic, es[0]!.dma_address + 8n, new Uint8Array([1, 2, 3]));
    assert.ok(w.ok, `the NIC's write is decoded in the switch: ${transferText(w)}`);
    assert.deepEqual(
      b.sys.memory.read((BAR + 0x10008n) as never, 3),
      new Uint8Array([1, 2, 3]),
      "the bytes are in the BAR",
    );
    free(b, r.value);
    done(b);
  });

  it("BUS_ADDR adds the provider's bus offset (host bridge window offset)", () => {
    const off = -0x100_0000_0000n;
    const b = bed({ busOffset: off });
    const r = toSgt(b, [{ paddr: BAR + 0x4000n, len: 0x4000n }]);
    assert.ok(r.ok, why(r));
    const [e] = [...for_each_sgtable_dma_sg(r.value)];
    assert.equal(
      e!.dma_address,
      BAR + 0x4000n + off,
      "pci_p2pdma_bus_addr_map: paddr + bus_offset",
    );
    const w = b.sys.deviceWrite(b.nic, e!.dma_address, new Uint8Array([7]));
    assert.ok(w.ok, `the bus address is decoded by the BAR: ${transferText(w)}`);
    assert.deepEqual(b.sys.memory.read((BAR + 0x4000n) as never, 1), new Uint8Array([7]), "landed");
    free(b, r.value);
    done(b);
  });

  it("not supported (ACS redirect, host bridge not allowlisted) → EINVAL, nothing allocated", () => {
    for (const iommu of ["off", "dma"] as const) {
      const b = bed({ iommu, acs: 0x1d });
      assert.equal(
        b.sys.p2pdma.calc(b.provider.owner, b.nic.fn, false).mapType,
        "not-supported",
        `${iommu}: the verdict`,
      );
      const r = toSgt(b, [{ paddr: BAR, len: 0x1000n }]);
      assert.equal(r.ok ? "ok" : r.errno, "EINVAL", `${iommu}: EINVAL, not EREMOTEIO`);
      done(b);
    }
  });

  it("through the host bridge, no IOMMU: dma_map_phys(MMIO) per range, CPU physical addresses", () => {
    const b = bed({ hostId: "8086:2020", nic: "05:00.0" });
    const vec = [
      { paddr: BAR + 0x1000n, len: 0x3000n },
      { paddr: BAR + 0x100000n, len: 0x2000n },
    ];
    const r = toSgt(b, vec);
    assert.ok(r.ok, why(r));
    assert.deepEqual(
      physVecMapping(r.value),
      { mapType: "through-host-bridge", iova: false },
      "no IOVA",
    );
    const es = [...for_each_sgtable_dma_sg(r.value)];
    assert.deepEqual(
      es.map((e) => [e.dma_address as bigint, BigInt(e.dma_length), sg_dma_is_bus_address(e)]),
      vec.map((v) => [v.paddr, v.len, false]),
      "physical addresses, unmarked",
    );
    const w = b.sys.deviceWrite(b.nic, es[1]!.dma_address, new Uint8Array([5]));
    assert.ok(w.ok, `the write crosses the allowlisted root complex: ${transferText(w)}`);
    free(b, r.value);
    done(b);
  });

  it("through the host bridge, identity domain: dma_iova_try_alloc fails, physical addresses", () => {
    const b = bed({ hostId: "8086:2020", nic: "05:00.0", iommu: "identity" });
    const r = toSgt(b, [{ paddr: BAR, len: 0x1000n }]);
    assert.ok(r.ok, why(r));
    assert.equal([...for_each_sgtable_dma_sg(r.value)][0]!.dma_address, BAR, "dma-direct: phys");
    free(b, r.value);
    done(b);
  });

  it("through the host bridge, IOMMU on: one IOVA span linked MMIO, synced; writes land; free destroys it", () => {
    const b = bed({ hostId: "8086:2020", nic: "05:00.0", iommu: "dma" });
    const r = toSgt(b, [{ paddr: BAR + 0x2000n, len: 0x6000n }]);
    assert.ok(r.ok, why(r));
    assert.deepEqual(
      physVecMapping(r.value),
      { mapType: "through-host-bridge", iova: true },
      "IOVA path",
    );
    const es = [...for_each_sgtable_dma_sg(r.value)];
    assert.equal(es.length, 1, "one span");
    assert.notEqual(es[0]!.dma_address, BAR + 0x2000n, "an IOVA, not the BAR address");
    assert.equal(sg_dma_is_bus_address(es[0]!), false, "not a bus address");
    const t = b.nic.translation;
    assert.ok(t.kind === "dma", "DMA domain");
    const maps = [...t.table.mappings()];
    assert.equal(maps.length, 1, "one IOMMU mapping");
    assert.equal(maps[0]!.prot.mmio, true, "mapped with IOMMU_MMIO");
    assert.equal(maps[0]!.phys, BAR + 0x2000n, "to the BAR");
    const w = b.sys.deviceWrite(b.nic, es[0]!.dma_address + 0x10n, new Uint8Array([9, 9]));
    assert.ok(w.ok, `IOVA → BAR through the root complex: ${transferText(w)}`);
    assert.deepEqual(
      b.sys.memory.read((BAR + 0x2010n) as never, 2),
      new Uint8Array([9, 9]),
      "landed",
    );
    free(b, r.value);
    assert.equal([...t.table.mappings()].length, 0, "dma_iova_destroy unmapped it");
    done(b);
  });

  it("through the host bridge, IOMMU on, two ranges: each is linked at offset 0, the second collides → EEXIST, unwound", () => {
    const b = bed({ hostId: "8086:2020", nic: "05:00.0", iommu: "dma" });
    const r = toSgt(b, [
      { paddr: BAR, len: 0x2000n },
      { paddr: BAR + 0x10000n, len: 0x2000n },
    ]);
    assert.equal(
      r.ok ? "ok" : r.errno,
      "EEXIST",
      "dma_iova_link(paddr, offset 0) of the second range",
    );
    done(b); // dma_iova_destroy(mapped_len) took back the first link and the IOVA
  });
});

describe("dma_buf_phys_vec_to_sgt: splitting, checks, unwinding", () => {
  it("MAX_SG_ENT_SZ is ALIGN_DOWN(UINT_MAX, PAGE_SIZE)", () => {
    assert.equal(MAX_SG_ENT_SZ, 0xffff_f000n, "0xfffff000");
  });

  it("a 5 GiB range is split into entries of at most MAX_SG_ENT_SZ (bus addresses)", () => {
    const b = bed();
    const r = toSgt(b, [{ paddr: BAR, len: 5n * GiB }]);
    assert.ok(r.ok, why(r));
    const es = [...for_each_sgtable_dma_sg(r.value)];
    assert.deepEqual(
      es.map((e) => [e.dma_address as bigint, BigInt(e.dma_length)]),
      [
        [BAR, MAX_SG_ENT_SZ],
        [BAR + MAX_SG_ENT_SZ, 5n * GiB - MAX_SG_ENT_SZ],
      ],
      "two entries, back to back",
    );
    free(b, r.value);
    done(b);
  });

  it("a 5 GiB IOVA span is split the same way", () => {
    const b = bed({ hostId: "8086:2020", nic: "05:00.0", iommu: "dma" });
    const r = toSgt(b, [{ paddr: BAR, len: 5n * GiB }]);
    assert.ok(r.ok, why(r));
    const es = [...for_each_sgtable_dma_sg(r.value)];
    assert.equal(es.length, 2, "two entries");
    assert.equal(es[1]!.dma_address, es[0]!.dma_address + MAX_SG_ENT_SZ, "contiguous IOVA");
    assert.equal(BigInt(es[0]!.dma_length) + BigInt(es[1]!.dma_length), 5n * GiB, "covers 5 GiB");
    free(b, r.value);
    done(b);
  });

  it("resv not held: lockdep reports for map and free, the calls go on", () => {
    const b = bed();
    const r = dmaBufPhysVecToSgt(
      b.sys,
      b.a,
      b.provider,
      [{ paddr: BAR, len: 0x1000n }],
      0x1000n,
      "to-device",
    );
    assert.ok(r.ok, "lockdep does not stop the call");
    dmaBufFreeSgt(b.sys, b.a, r.value, "to-device");
    assert.deepEqual(
      b.core.lockdep.map((l) => l.fn),
      ["dma_buf_phys_vec_to_sgt", "dma_buf_free_sgt"],
      "both reported",
    );
    done(b);
  });

  it("no provider: WARN and EINVAL", () => {
    const b = bed();
    const r = locked(b, () =>
      dmaBufPhysVecToSgt(b.sys, b.a, null, [{ paddr: BAR, len: 0x1000n }], 0x1000n, "to-device"),
    );
    assert.equal(r.ok ? "ok" : r.errno, "EINVAL", "MMIO only");
    assert.equal(!r.ok && r.warn, true, "with a WARN");
    assert.equal(b.core.warnings.length, 1, "recorded");
    done(b);
  });

  it("no ranges: 0 entries, sg_alloc_table says EINVAL", () => {
    const b = bed();
    const r = toSgt(b, [], 0n);
    assert.equal(r.ok ? "ok" : r.errno, "EINVAL", "nents 0");
    done(b);
  });

  it("free: a table the helper did not make throws; the kernel's leaked sg array is reported", () => {
    const b = bed();
    const other = sg_alloc_table(1);
    assert.ok(other.ok, "a table");
    assert.throws(() => free(b, other.value), KernelBug, "not made by the helper");
    const r = toSgt(b, [{ paddr: BAR, len: MiB }]);
    assert.ok(r.ok, why(r));
    free(b, r.value);
    assert.equal(r.value.freed, true, "the model frees it");
    assert.match(b.core.modelReports.join("\n"), /orig_nents 0/, "and says the kernel would not");
    assert.throws(() => free(b, r.value), KernelBug, "a second free throws");
    done(b);
  });
});
