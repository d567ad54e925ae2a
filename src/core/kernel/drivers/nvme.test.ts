import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { errnoOf, j, why } from "../../../../test/support/check.ts";
import { topo } from "../../../../test/support/topology.ts";
import { explainPair } from "../../analysis/p2p.ts";
import { physAddr } from "../../hw/address.ts";
import type { IommuMode, PciFunction } from "../../hw/machine.ts";
import { dmaSetMaskAndCoherent } from "../dma/device.ts";
import { type LeakSource, leakReport } from "../leaks.ts";
import { System } from "../system.ts";
import { Tracer } from "../trace.ts";
import {
  MEMREMAP_COMPAT_ALIGN,
  NVME_CMBMSC_CMSE,
  NVME_CMBMSC_CRE,
  NvmeController,
  NvmetP2pNs,
  nvmeCmbloc,
  nvmeCmbsz,
  P2pmemUser,
} from "./nvme.ts";

const MiB = 1n << 20n;
const KiB = 1n << 10n;
const A_CMB = 0x80_0000_0000n;
const C_CMB = 0x80_0040_0000n;
const B_CMB = 0x80_0080_0000n;
const E_CMB = 0x80_0110_0000n;
const A = "03:00.0";
const NIC = "04:00.0";
const C = "05:00.0";
const B = "06:00.0";
const NIC2 = "07:00.0";
const E = "08:00.0";

const RW = { rds: true, wds: true };
/** 64 KiB units (SZU 1). */
const cmb = (mib: number, bits: { rds?: boolean; wds?: boolean; sqs?: boolean; cqs?: boolean }) =>
  nvmeCmbsz({ size: mib * 16, szu: 1, ...bits });

const pattern = (n: number, seed: number): Uint8Array =>
  Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

/**
 * Root port 00:01.0 → a switch with NVMe A (published 4 MiB CMB), the NIC and NVMe C (2 MiB CMB
 * for queues only: registered, not published) on three downstream ports; NVMe B (published
 * 4 MiB CMB) behind root port 00:02.0; NIC2 behind 00:03.0; NVMe E behind 00:04.0 with a CMB BAR
 * that is not 2 MiB aligned.
 */
function bed(hostId: string, iommu: IommuMode = "off") {
  const nvme = (start: bigint, size: bigint, regs: bigint) => [
    { index: 0, start: regs, size: 16n * KiB },
    { index: 2, start, size },
  ];
  const d = topo()
    .hostFn("00:00.0", hostId)
    .rootPort("00:01.0")
    .usp("01:00.0", { parent: "00:01.0" })
    .dsp("02:00.0", { parent: "01:00.0" })
    .dsp("02:01.0", { parent: "01:00.0" })
    .dsp("02:02.0", { parent: "01:00.0" })
    .ep(A, { parent: "02:00.0", driver: "nvme", bars: nvme(A_CMB, 4n * MiB, 0x90_0000_0000n) })
    .ep(NIC, { parent: "02:01.0", id: "15b3:101d", driver: "mlx5_core" })
    .ep(C, { parent: "02:02.0", driver: "nvme", bars: nvme(C_CMB, 2n * MiB, 0x90_0001_0000n) })
    .rootPort("00:02.0")
    .ep(B, { parent: "00:02.0", driver: "nvme", bars: nvme(B_CMB, 4n * MiB, 0x90_0002_0000n) })
    .rootPort("00:03.0")
    .ep(NIC2, { parent: "00:03.0", id: "15b3:101d", driver: "mlx5_core" })
    .rootPort("00:04.0")
    .ep(E, { parent: "00:04.0", driver: "nvme", bars: nvme(E_CMB, 1n * MiB, 0x90_0003_0000n) })
    .iommu(iommu)
    .build();
  const tracer = new Tracer(true);
  const sys = new System(d, { tracer });
  const a = new NvmeController(sys, A, { cmbsz: cmb(4, RW), capCmbs: true });
  const c = new NvmeController(sys, C, { cmbsz: cmb(2, { sqs: true, cqs: true }) });
  const b = new NvmeController(sys, B, { cmbsz: cmb(4, RW) });
  const e = new NvmeController(sys, E, { cmbsz: cmb(1, RW) });
  const fn = (bdf: string): PciFunction => sys.machine.byBdf(bdf)!;
  const nic = (bdf: string) => {
    const dev = sys.device(bdf);
    dmaSetMaskAndCoherent(dev, 64);
    return dev;
  };
  return { sys, tracer, a, b, c, e, fn, nic };
}
type Bed = ReturnType<typeof bed>;

function clean(t: Bed, extra: LeakSource[]): void {
  const leaks = leakReport([t.sys, t.a, t.b, t.c, t.e, ...extra]);
  assert.deepEqual(leaks, [], `leaks: ${j(leaks)}`);
}

/** The kernel's summed distance of `provider` to `clients` by the analyser (-1: some pair unsupported). */
function summed(t: Bed, provider: PciFunction, clients: readonly PciFunction[]): number {
  let total = 0;
  for (const c of clients) {
    const d = explainPair(t.sys.pci, provider, c).distance;
    if (d < 0) return -1;
    total += d;
  }
  return total;
}

describe("nvme: the CMB as p2pmem (nvme_map_cmb)", () => {
  it("a CMB supporting read and write data is registered and published; one for queues only is registered, not published; one whose BAR is not 2 MiB aligned is not used", () => {
    const t = bed("8086:2020");
    assert.equal(t.a.cmb_size, 4n * MiB, "A: the whole 4 MiB CMB");
    assert.equal(t.a.cmbPublished, true, "A: RDS and WDS → published");
    assert.deepEqual(
      t.sys.p2pmem.sysfs(t.fn(A)),
      { size: 4n * MiB, available: 4n * MiB, published: true },
      "A: p2pmem/ sysfs",
    );
    assert.equal(
      t.a.cmbmsc,
      NVME_CMBMSC_CRE | NVME_CMBMSC_CMSE | A_CMB,
      "A (CAP.CMBS): CMBMSC = CRE | CMSE | the CMB's bus address",
    );
    assert.equal(t.c.cmb_size, 2n * MiB, "C: registered");
    assert.equal(t.c.cmbPublished, false, "C: SQS|CQS only → not published");
    assert.equal(t.sys.p2pmem.sysfs(t.fn(C))?.published, false, "C: sysfs published 0");
    assert.equal(t.e.cmb_size, 0n, "E: not registered");
    assert.equal(t.sys.p2pmem.state(t.fn(E)), undefined, "E: no p2pdma state at all");
    assert.ok(
      t.e.log.some((l) => l.includes("memremap_compat_align")),
      `E: the alignment rule is why (${t.e.log.join("; ")})`,
    );
    assert.equal(
      E_CMB % MEMREMAP_COMPAT_ALIGN !== 0n,
      true,
      "E's BAR is 1 MiB but not 2 MiB aligned",
    );
  });

  it("CMBLOC's offset and a CMB larger than its BAR: registered from the offset, clipped to the BAR", () => {
    const d = topo()
      .hostFn("00:00.0", "8086:2020")
      .rootPort("00:01.0")
      .ep("01:00.0", {
        parent: "00:01.0",
        bars: [{ index: 4, start: 0x80_0000_0000n, size: 8n * MiB }],
      })
      .build();
    const sys = new System(d);
    // 16 MiB of CMB at offset 2 MiB (32 units of 64 KiB) of BAR 4: clipped to 6 MiB
    const n = new NvmeController(sys, "01:00.0", {
      cmbsz: cmb(16, RW),
      cmbloc: nvmeCmbloc(4, 32),
    });
    assert.equal(n.cmb_size, 6n * MiB, "size = min(16 MiB, BAR - offset)");
    assert.equal(n.cmbPhys, 0x80_0020_0000n, "starts at the offset");
    const user = new P2pmemUser(sys, "test");
    const buf = user.alloc(n.fn, 4096n);
    assert.ok(buf.ok, `alloc: ${why(buf)}`);
    assert.equal(buf.value.phys, 0x80_0020_0000n, "the pool begins at the CMB");
    user.free(buf.value);
    assert.deepEqual(leakReport([sys, user]), [], "nothing left");
  });
});

describe("nvme: pci_p2pmem_find_many chooses the closest provider", () => {
  it("allowlisted host bridge: the provider with the smallest summed distance, as the analyser's per-pair distances add up", () => {
    const t = bed("8086:2020");
    const user = new P2pmemUser(t.sys, "test");
    const published = [t.fn(A), t.fn(B)];
    for (const clients of [
      [t.fn(NIC), t.fn(C)],
      [t.fn(NIC2), t.fn(B)],
      [t.fn(NIC), t.fn(A)],
      [t.fn(NIC2), t.fn(E)],
    ]) {
      const names = clients.map((c) => c.name).join(", ");
      const scores = published.map((p) => ({ p, d: summed(t, p, clients) }));
      const ok = scores.filter((s) => s.d >= 0);
      const best = Math.min(...ok.map((s) => s.d));
      const r = user.findMany(clients);
      assert.equal(
        r.distance,
        best,
        `[${names}]: best distance ${best} (${j(scores.map((s) => [s.p.name, s.d]))})`,
      );
      assert.deepEqual(
        r.candidates.map((c) => c.name),
        ok.filter((s) => s.d === best).map((s) => s.p.name),
        `[${names}]: the candidates`,
      );
      assert.equal(r.provider, r.candidates[0], `[${names}]: no tie, the one candidate`);
      for (const s of ok)
        assert.equal(
          t.sys.p2pdma.distanceMany(s.p, clients, false),
          s.d,
          `[${names}]: pci_p2pdma_distance_many(${s.p.name}) is the sum`,
        );
    }
    assert.equal(
      user.findMany([t.fn(NIC), t.fn(C)]).provider,
      t.fn(A),
      "NIC + C → A (4 + 4 < 6 + 6)",
    );
    assert.equal(user.findMany([t.fn(NIC2), t.fn(B)]).provider, t.fn(B), "NIC2 + B → B (4 + 0)");
    assert.equal(user.findMany([t.fn(C)]).provider, t.fn(A), "C's own CMB is not published: A");
    const tie = [t.fn(NIC2), t.fn(C)];
    assert.deepEqual(
      [summed(t, t.fn(A), tie), summed(t, t.fn(B), tie)],
      [10, 10],
      "NIC2 + C: A and B both score 10",
    );
    const both = user.findMany(tie, () => 0);
    assert.deepEqual(
      both.candidates.map((c) => c.name),
      [t.fn(A).name, t.fn(B).name],
      "a tie: both are candidates, in PCI order",
    );
    assert.equal(both.provider, t.fn(A), "random 0 → the first");
    assert.equal(user.findMany(tie, () => 0.99).provider, t.fn(B), "random 0.99 → the second");
    clean(t, [user]);
  });

  it("host bridge not allowlisted: no provider reaches clients on two root ports → none; below the switch A still wins", () => {
    const t = bed("8086:1234");
    const user = new P2pmemUser(t.sys, "test");
    const clients = [t.fn(NIC2), t.fn(C)];
    for (const p of [t.fn(A), t.fn(B)])
      assert.equal(summed(t, p, clients), -1, `${p.name}: some client is not supported`);
    const r = user.findMany(clients);
    assert.equal(r.provider, null, "no common provider → none");
    assert.deepEqual(r.candidates, [], "no candidates");
    assert.equal(r.distance, -1, "distance -1");
    assert.equal(user.findMany([t.fn(NIC), t.fn(C)]).provider, t.fn(A), "A: 8 (B scores -1)");
    assert.equal(user.findMany([t.fn(NIC), null]).provider, null, "a non-PCI client → none");
    const ev = t.tracer.events.filter((e) => e.ev === "p2pmem:find_many");
    assert.equal(ev.length, 3, "each find_many is traced");
    clean(t, [user]);
  });
});

describe("nvme: READ/WRITE through p2pmem", () => {
  it("nvmet puts the namespace of C on A's CMB for the NIC; C reads the medium into the CMB peer to peer, the NIC reads it out; the NIC fills it and C writes it to the medium", () => {
    const t = bed("8086:2020");
    const ns = NvmetP2pNs.enable(t.c);
    assert.ok(ns.ok, `nvmet_p2pmem_ns_enable: ${why(ns)}`);
    assert.equal(ns.value.addCtrl(t.fn(NIC)), t.fn(A), "find_many([NIC, C]) → A");
    const len = 64n * KiB;
    const req = ns.value.allocSgls(len);
    assert.ok(req.ok && req.value.kind === "p2pmem", `p2pmem request data: ${why(req)}`);
    const buf = req.value.buf;
    assert.equal(buf.phys >= A_CMB && buf.phys < A_CMB + 4n * MiB, true, "the data is in A's CMB");

    const medium = pattern(Number(len), 7);
    t.c.mediaWrite(16n, medium);
    const r = t.c.read(16n, 128, req.value.data);
    assert.ok(r.ok, `READ: ${why(r)}`);
    assert.deepEqual(
      r.value.segments.map((s) => s.kind),
      ["bus-address"],
      "C was handed A's bus address (P2PDMA BUS_ADDR)",
    );
    assert.deepEqual(
      t.sys.memory.read(physAddr(buf.phys), Number(len)),
      medium,
      "bytes in the CMB",
    );

    const nic = t.nic(NIC);
    const m = ns.value.p2pmem.map(buf, nic);
    assert.ok(m.ok, `map for the NIC: ${why(m)}`);
    const segs = ns.value.p2pmem.segments(buf, m.value);
    assert.deepEqual(
      segs.map((s) => [s.kind, s.dma]),
      [["bus-address", buf.bus]],
      "the NIC gets the bus address",
    );
    const out = t.sys.fabric.dmaRead(nic.fn, segs[0]!.dma, Number(len));
    assert.ok(out.ok, "the NIC reads the CMB");
    assert.deepEqual(out.data, medium, "the NIC read what C put there");

    const incoming = pattern(Number(len), 99);
    assert.ok(t.sys.deviceWrite(nic, segs[0]!.dma, incoming).ok, "the NIC writes the CMB");
    const w = t.c.write(1000n, 128, req.value.data);
    assert.ok(w.ok, `WRITE: ${why(w)}`);
    assert.deepEqual(t.c.mediaRead(1000n, 128), incoming, "the medium holds what the NIC sent");
    assert.equal(
      t.sys.fabric.traffic.get("0000:01:00.0"),
      undefined,
      "every transfer stayed below the switch",
    );
    ns.value.p2pmem.unmap(buf, m.value);
    ns.value.freeSgls(req.value);
    clean(t, [ns.value]);
  });

  it("A on its own CMB: the controller serves its CMB addresses internally", () => {
    const t = bed("8086:2020");
    const user = new P2pmemUser(t.sys, "test");
    const buf = user.alloc(t.fn(A), 8n * KiB);
    assert.ok(buf.ok, `alloc: ${why(buf)}`);
    t.a.mediaWrite(0n, pattern(8192, 3));
    const r = t.a.read(0n, 16, buf.value.data());
    assert.ok(r.ok, `READ: ${why(r)}`);
    assert.equal(r.value.cmbBytes, 8192n, "all of it inside the CMB");
    assert.equal(t.sys.fabric.traffic.get("0000:03:00.0"), undefined, "nothing on A's link");
    assert.deepEqual(
      t.sys.memory.read(physAddr(buf.value.phys), 8192),
      pattern(8192, 3),
      "bytes in the CMB",
    );
    user.free(buf.value);
    clean(t, [user]);
  });

  it("a client that cannot reach the provider cannot map it: -EREMOTEIO for the NIC's mapping and for B's request (BLK_STS_TARGET); nvmet falls back to RAM", () => {
    const t = bed("8086:1234");
    const user = new P2pmemUser(t.sys, "test");
    const buf = user.alloc(t.fn(A), 16n * KiB);
    assert.ok(buf.ok, `alloc: ${why(buf)}`);
    assert.equal(
      t.sys.p2pdma.mapType(t.fn(A), t.fn(NIC2)),
      "not-supported",
      "A → NIC2: not supported",
    );
    const m = user.map(buf.value, t.nic(NIC2));
    assert.equal(errnoOf(m), "EREMOTEIO", `NIC2's dma_map_sgtable: ${why(m)}`);
    const io = t.b.read(0n, 32, buf.value.data());
    assert.equal(errnoOf(io), "EREMOTEIO", `B's READ: ${why(io)}`);
    const ok = user.map(buf.value, t.nic(NIC));
    assert.ok(ok.ok, `the NIC below the switch maps it: ${why(ok)}`);
    user.unmap(buf.value, ok.value);
    user.free(buf.value);

    const ns = NvmetP2pNs.enable(t.c);
    assert.ok(ns.ok, `enable: ${why(ns)}`);
    assert.equal(ns.value.addCtrl(t.fn(NIC2)), null, "no provider for NIC2 + C");
    assert.ok(
      ns.value.log.some((l) => l.startsWith("no peer-to-peer memory is available")),
      "pr_err logged",
    );
    const req = ns.value.allocSgls(4096n);
    assert.ok(req.ok && req.value.kind === "ram", "the request data comes from RAM");
    t.c.mediaWrite(5n, pattern(4096, 1));
    const r = t.c.read(5n, 8, req.value.data);
    assert.ok(r.ok, `READ into RAM: ${why(r)}`);
    assert.deepEqual(
      r.value.segments.map((s) => s.kind),
      ["physical"],
      "RAM, no IOMMU",
    );
    ns.value.freeSgls(req.value);
    clean(t, [user, ns.value]);
  });

  it("behind an IOMMU: a BUS_ADDR mapping stays a bus address, a host-bridge one becomes an IOVA", () => {
    const t = bed("8086:2020", "dma");
    const user = new P2pmemUser(t.sys, "test");
    const a = user.alloc(t.fn(A), 8n * KiB);
    const b = user.alloc(t.fn(B), 8n * KiB);
    assert.ok(a.ok && b.ok, "allocations");
    const nic = t.nic(NIC);
    const ma = user.map(a.value, nic);
    const mb = user.map(b.value, nic);
    assert.ok(ma.ok && mb.ok, `maps: ${why(ma)} ${why(mb)}`);
    assert.deepEqual(
      user.segments(a.value, ma.value).map((s) => s.kind),
      ["bus-address"],
      "A: BUS_ADDR",
    );
    assert.deepEqual(
      user.segments(b.value, mb.value).map((s) => s.kind),
      ["iova"],
      "B: THRU_HOST_BRIDGE → IOVA",
    );
    const data = pattern(8192, 5);
    const seg = user.segments(b.value, mb.value)[0]!;
    assert.ok(t.sys.deviceWrite(nic, seg.dma, data).ok, "the NIC writes B's CMB through the IOMMU");
    const w = t.b.write(64n, 16, b.value.data());
    assert.ok(w.ok, `B writes its CMB to the medium: ${why(w)}`);
    assert.deepEqual(t.b.mediaRead(64n, 16), data, "bytes on B's medium");
    user.unmap(a.value, ma.value);
    user.unmap(b.value, mb.value);
    user.free(a.value);
    user.free(b.value);
    clean(t, [user]);
  });

  it("nvmet_p2pmem_ns_enable: a configured device the namespace cannot reach, or no published p2pmem reachable at all → -EINVAL", () => {
    const t = bed("8086:1234");
    assert.equal(errnoOf(NvmetP2pNs.enable(t.e)), "EINVAL", "E reaches no published CMB");
    assert.equal(
      errnoOf(NvmetP2pNs.enable(t.c, { p2pDev: B })),
      "EINVAL",
      "B is not reachable from C",
    );
    const ns = NvmetP2pNs.enable(t.c, { p2pDev: A });
    assert.ok(ns.ok, `A is: ${why(ns)}`);
    assert.equal(
      ns.value.addCtrl(t.fn(NIC)),
      t.fn(A),
      "the configured device, reachable by the NIC",
    );
    assert.equal(ns.value.addCtrl(t.fn(NIC2)), null, "not reachable by NIC2: no map entry");
    const tooBig = new P2pmemUser(t.sys, "test").alloc(t.fn(A), 8n * MiB);
    assert.equal(errnoOf(tooBig), "ENOMEM", "more than the pool → -ENOMEM");
    clean(t, [ns.value]);
  });

  it("leak check: a buffer not freed and a mapping not unmapped are reported", () => {
    const t = bed("8086:2020");
    const user = new P2pmemUser(t.sys, "leaky");
    const buf = user.alloc(t.fn(A), 4096n);
    assert.ok(buf.ok, `alloc: ${why(buf)}`);
    const m = user.map(buf.value, t.nic(NIC));
    assert.ok(m.ok, `map: ${why(m)}`);
    assert.deepEqual(
      leakReport([user, t.sys]).map((l) => l.kind),
      ["p2pmem-buffer", "sg-mapping", "p2pmem"],
      "the user's buffer and mapping, the system's p2pmem allocation",
    );
    assert.throws(
      () => user.free(buf.value),
      /freed while mapped/,
      "freeing while mapped is a bug",
    );
    user.unmap(buf.value, m.value);
    user.free(buf.value);
    clean(t, [user]);
  });
});
