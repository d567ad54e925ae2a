import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { topo } from "../../../test/support/topology.ts";
import type { IommuMode, MachineDescription } from "../hw/machine.ts";
import { Tracer } from "../kernel/trace.ts";
import { SimMachine } from "../sim/sim-machine.ts";
import {
  type CompatCell,
  type CompatOutcome,
  type CompatResult,
  compatMatrix,
  computeCompat,
  HOST,
} from "./compat.ts";
import { explainPair } from "./p2p.ts";

const MiB = 1n << 20n;

/** JSON with bigints in hex, for messages. */
const j = (v: unknown): string =>
  JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? `0x${x.toString(16)}` : x));

interface MachineOpts {
  readonly iommu: IommuMode;
  /** 8086:2020 is on the P2PDMA allowlist, 8086:1234 is not. */
  readonly hostId: string;
  /** ACS control of the switch's downstream ports (null: no ACS capability). */
  readonly acs: number | null;
}

/**
 * A switch below root port 00:01.0 carrying an accelerator (03:00.0), an amdgpu GPU (04:00.0)
 * and an NVMe drive (05:00.0); a second NVMe (07:00.0) behind root port 00:02.0 and an RDMA NIC
 * (09:00.0) behind root port 00:03.0.
 */
function machine(o: MachineOpts): MachineDescription {
  const acs = o.acs === null ? {} : { acs: o.acs };
  return topo()
    .hostFn("00:00.0", o.hostId)
    .rootPort("00:01.0")
    .usp("01:00.0", { parent: "00:01.0" })
    .dsp("02:00.0", { parent: "01:00.0", ...acs })
    .dsp("02:01.0", { parent: "01:00.0", ...acs })
    .dsp("02:02.0", { parent: "01:00.0", ...acs })
    .fn("03:00.0", {
      parent: "02:00.0",
      id: "1da3:1020",
      classCode: 0x120000,
      driver: "habanalabs",
      bars: [
        { index: 0, start: 0x90_0000_0000n, size: MiB },
        { index: 2, start: 0x80_0000_0000n, size: 64n * MiB },
      ],
    })
    .fn("04:00.0", {
      parent: "02:01.0",
      id: "1002:740f",
      classCode: 0x030000,
      driver: "amdgpu",
      bars: [{ index: 0, start: 0x81_0000_0000n, size: 64n * MiB }],
    })
    .ep("05:00.0", { parent: "02:02.0", id: "144d:a80a", driver: "nvme" })
    .rootPort("00:02.0")
    .ep("07:00.0", { parent: "00:02.0", id: "144d:a80a", driver: "nvme" })
    .rootPort("00:03.0")
    .fn("09:00.0", { parent: "00:03.0", id: "15b3:101d", driver: "mlx5_core", classCode: 0x020000 })
    .iommu(o.iommu)
    .build();
}

const M_OFF: MachineOpts = { iommu: "off", hostId: "8086:1234", acs: null };
const M_DMA: MachineOpts = { iommu: "dma", hostId: "8086:2020", acs: 0x1d };

function cell(r: CompatResult, exporter: string, importerBdf: string): CompatCell {
  const c = r.cells.find((x) => x.exporter === exporter && x.importerBdf === importerBdf);
  assert.ok(
    c,
    `a cell ${exporter} -> ${importerBdf} in ${j(r.cells.map((x) => `${x.exporter}->${x.importerBdf}`))}`,
  );
  return c;
}

/**
 * What a cell must be, from the kernel's P2PDMA verdict for the pair and the IOMMU mode alone:
 * host memory maps like RAM; the accelerator refuses a pair P2PDMA does not support (hl_map_dmabuf
 * -EPERM) and otherwise hands out its BAR through the DMA API; the GPU migrates to GTT for a pair
 * it cannot serve from VRAM, or whenever the import pins (CONFIG_DMABUF_MOVE_NOTIFY=n).
 */
function expected(
  c: CompatCell,
  translating: boolean,
  moveNotify: boolean,
): { outcome: CompatOutcome; errno?: string } {
  if (c.exporter === HOST) return { outcome: translating ? "iommu" : "physical" };
  const gpu = c.exporter.startsWith("gpu");
  if (c.mapType === "not-supported")
    return gpu ? { outcome: "migrated" } : { outcome: "refused", errno: "EPERM" };
  if (gpu && !moveNotify) return { outcome: "migrated" };
  return { outcome: translating ? "iommu" : "bus-address" };
}

describe("compat: cells agree with the P2PDMA verdict and the IOMMU mode", () => {
  for (const m of [M_OFF, M_DMA])
    for (const moveNotify of [true, false])
      it(`IOMMU ${m.iommu}, host bridge ${m.hostId}, MOVE_NOTIFY=${moveNotify ? "y" : "n"}`, () => {
        const desc = machine(m);
        const r = computeCompat(desc, { moveNotify, kernel: "mainline" });
        assert.deepEqual(r.leaks, [], `no leaks after the matrix: ${j(r.leaks)}`);
        assert.deepEqual(
          r.exporters.map((e) => e.name),
          ["accel0", "gpu0", HOST],
          "exporters: the accelerator, the GPU, host memory",
        );
        assert.equal(r.importers.length, 5, `importers: ${j(r.importers)}`);
        assert.equal(
          r.cells.length,
          3 * 5 - 2,
          "every exporter x importer but a device with itself",
        );
        const sim = new SimMachine(desc, { tracer: new Tracer(false), kernel: "mainline" });
        for (const c of r.cells) {
          const want = expected(c, m.iommu === "dma", moveNotify);
          const where = `${c.exporter} -> ${c.importer} (${c.importerBdf}): ${j(c)}`;
          assert.equal(c.outcome, want.outcome, `outcome of ${where}`);
          if (c.exporterBdf) {
            const e = explainPair(sim.sys.pci, sim.fn(c.exporterBdf), sim.fn(c.importerBdf));
            assert.equal(c.mapType, e.mapType, `mapType is explainPair's for ${where}`);
            assert.equal(c.distance, e.distance, `distance is explainPair's for ${where}`);
          } else assert.equal(c.mapType, null, `host memory has no P2PDMA verdict: ${where}`);
          if (c.outcome === "refused") {
            assert.equal(c.errno, want.errno, `errno of ${where}`);
            assert.equal(
              c.stage,
              c.via.startsWith("rdma") ? "registration" : "map",
              `stage of ${where}`,
            );
            assert.ok(c.findings.length > 0, `a refusal carries the findings: ${where}`);
            assert.equal(c.mappedBytes, 0n, `nothing mapped: ${where}`);
          } else {
            assert.equal(c.errno, undefined, `no errno unless refused: ${where}`);
            assert.equal(c.stage, "dma", `mapped cells reach the DMA: ${where}`);
            assert.equal(c.mappedBytes, r.bufferSize, `the table covers the buffer: ${where}`);
            assert.deepEqual(c.dma, { fault: null, landed: true }, `the write lands: ${where}`);
            const kind =
              c.outcome === "iommu" ? "iova" : c.outcome === "bus-address" ? "bus-address" : null;
            if (kind) assert.deepEqual(c.addressKinds, [kind], `address kinds of ${where}`);
          }
        }
        sim.shutdown();
      });
});

describe("compat: named cases", () => {
  it("a GPU exporter with an importer it cannot reach peer-to-peer migrates to system memory", () => {
    const r = computeCompat(machine(M_OFF), { moveNotify: true, kernel: "mainline" });
    const c = cell(r, "gpu0", "0000:07:00.0");
    assert.equal(c.mapType, "not-supported", `the pair is refused by P2PDMA: ${j(c)}`);
    assert.equal(c.outcome, "migrated", `the BO moved to GTT: ${j(c)}`);
    assert.equal(c.peer2peer, false, `amdgpu cleared peer2peer at attach: ${j(c)}`);
    assert.deepEqual(c.addressKinds, ["physical"], `GTT pages, no IOMMU: ${j(c)}`);
    assert.match(c.reason, /VRAM to system memory/, "the reason names the migration");
    const local = cell(r, "gpu0", "0000:05:00.0");
    assert.equal(local.outcome, "bus-address", `a switch-local importer keeps VRAM: ${j(local)}`);
  });

  it("an accelerator with a refused verdict is refused with EPERM at map, with the findings", () => {
    const r = computeCompat(machine(M_OFF), { kernel: "mainline" });
    const c = cell(r, "accel0", "0000:07:00.0");
    assert.equal(c.outcome, "refused", `refused: ${j(c)}`);
    assert.equal(c.errno, "EPERM", `hl_map_dmabuf's errno: ${j(c)}`);
    assert.equal(c.stage, "map", `refused at map: ${j(c)}`);
    assert.equal(c.peer2peer, false, `hl_dmabuf_attach cleared peer2peer: ${j(c)}`);
    assert.ok(
      c.findings.some((f) => f.code === "host-bridge-not-allowlisted"),
      `the findings say why: ${j(c.findings)}`,
    );
    const nic = cell(r, "accel0", "0000:09:00.0");
    assert.equal(nic.via, "rdma-odp", `the NIC imports through its RDMA driver: ${j(nic)}`);
    assert.deepEqual(
      [nic.outcome, nic.errno, nic.stage],
      ["refused", "EPERM", "registration"],
      `ibv_reg_dmabuf_mr fails: ${j(nic)}`,
    );
  });

  it("a mapping the root complex will not carry is reported as faults (dma_map_resource behind an IOMMU)", () => {
    // switch-local pair, no ACS: P2PDMA says bus-address, but habanalabs maps with
    // dma_map_resource, so the peer gets an IOVA whose writes go to a root complex that is not
    // on the allowlist and does not forward them
    const r = computeCompat(machine({ iommu: "dma", hostId: "8086:1234", acs: null }), {
      kernel: "mainline",
    });
    const c = cell(r, "accel0", "0000:05:00.0");
    assert.equal(c.mapType, "bus-address", `the verdict allows it: ${j(c)}`);
    assert.equal(c.outcome, "faults", `the write faults: ${j(c)}`);
    assert.deepEqual(c.addressKinds, ["iova"], `IOVAs: ${j(c)}`);
    assert.match(c.dma?.fault ?? "", /root complex/, `the fault names the root complex: ${j(c)}`);
    assert.deepEqual(r.leaks, [], `no leaks: ${j(r.leaks)}`);
  });

  it("static importers: the accelerator refuses every one, the GPU migrates, host memory maps", () => {
    const r = computeCompat(machine(M_DMA), { importerMode: "static", kernel: "mainline" });
    assert.deepEqual(r.leaks, [], `no leaks: ${j(r.leaks)}`);
    for (const c of r.cells) {
      assert.ok(c.via === "kernel-static", `every importer is static: ${j(c)}`);
      const want =
        c.exporter === "accel0" ? "refused" : c.exporter === "gpu0" ? "migrated" : "iommu";
      assert.equal(c.outcome, want, `${c.exporter} -> ${c.importer}: ${j(c)}`);
      if (c.outcome === "refused") assert.equal(c.errno, "EPERM", `EPERM: ${j(c)}`);
    }
  });

  it("--exporter keeps one row; an unknown exporter is refused with the list", () => {
    const desc = machine(M_OFF);
    const r = computeCompat(desc, { exporters: [HOST] });
    assert.deepEqual(
      [...new Set(r.cells.map((c) => c.exporter))],
      [HOST],
      "only host memory's row",
    );
    assert.equal(r.cells.length, 5, "host memory against every importer");
    const byBdf = computeCompat(desc, { exporters: ["03:00.0"] });
    assert.deepEqual(
      [...new Set(byBdf.cells.map((c) => c.exporter))],
      ["accel0"],
      "a short BDF names the accelerator",
    );
    assert.throws(
      () => computeCompat(desc, { exporters: ["nvme0"] }),
      /no exporter nvme0 \(exporters: accel0, gpu0, host\)/,
      "an importer-only device is not an exporter",
    );
  });

  it("runs on a caller's SimMachine and leaves it as it was", () => {
    const sim = new SimMachine(machine(M_OFF), { tracer: new Tracer(false) });
    const p = sim.process("app");
    const keep = p.heapAlloc(64n << 10n);
    const before = sim.leaks().length;
    const r = compatMatrix(sim);
    assert.deepEqual(r.leaks, [], `the run adds no leaks: ${j(r.leaks)}`);
    assert.equal(sim.leaks().length, before, "the caller's own objects are untouched");
    p.close(keep);
    sim.shutdown();
    assert.deepEqual(sim.leaks(), [], `clean after the caller's shutdown: ${j(sim.leaks())}`);
  });
});
