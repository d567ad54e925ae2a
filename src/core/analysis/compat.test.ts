import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { topo } from "../../../test/support/topology.ts";
import { loadInput } from "../../node/load-input.ts";
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
  HOST_UDMABUF,
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

/** How each column of `machine()` imports in dynamic mode. */
const VIA: Readonly<Record<string, string>> = {
  accel0: "accel-import",
  gpu0: "amdgpu-prime",
  nvme0: "kernel-dynamic",
  nvme1: "kernel-dynamic",
  nic0: "rdma-odp",
};

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
  if (c.exporter === HOST || c.exporter === HOST_UDMABUF)
    return { outcome: translating ? "iommu" : "physical" };
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
          ["accel0", "gpu0", HOST, HOST_UDMABUF],
          "exporters: the accelerator, the GPU, host memory from the heap and from udmabuf",
        );
        assert.equal(r.importers.length, 5, `importers: ${j(r.importers)}`);
        assert.deepEqual(
          r.importers.map((i) => i.name),
          ["accel0", "gpu0", "nvme0", "nvme1", "nic0"],
          "importers in BDF order",
        );
        assert.equal(
          r.cells.length,
          4 * 5 - 2,
          "every exporter x importer but a device with itself",
        );
        const sim = new SimMachine(desc, { tracer: new Tracer(false), kernel: "mainline" });
        for (const c of r.cells) {
          const want = expected(c, m.iommu === "dma", moveNotify);
          const where = `${c.exporter} -> ${c.importer} (${c.importerBdf}): ${j(c)}`;
          assert.equal(c.outcome, want.outcome, `outcome of ${where}`);
          assert.equal(c.via, VIA[c.importer], `each importer through its driver's path: ${where}`);
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
      /no exporter nvme0 \(exporters: accel0, gpu0, host, host-udmabuf\)/,
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

  it("an accelerator the caller holds open cannot import for the run (one user context): EBUSY in its column, nothing else disturbed", () => {
    const sim = new SimMachine(machine(M_OFF), { tracer: new Tracer(false) });
    const p = sim.process("trainer");
    const fd = p.open("/dev/accel/accel0");
    const r = compatMatrix(sim, { exporters: [HOST] });
    assert.deepEqual(r.leaks, [], `the run adds no leaks: ${j(r.leaks)}`);
    const c = cell(r, HOST, "0000:03:00.0");
    assert.deepEqual(
      [c.via, c.outcome, c.errno, c.stage],
      ["accel-import", "refused", "EBUSY", "attach"],
      `the device is another process's: ${j(c)}`,
    );
    assert.match(c.reason, /open\(\/dev\/accel\/accel0\)/, `the reason names the open: ${j(c)}`);
    assert.ok(
      r.cells.filter((x) => x !== c).every((x) => x.outcome === "physical"),
      `the other columns map host memory: ${j(r.cells)}`,
    );
    p.close(fd);
    sim.shutdown();
    assert.deepEqual(sim.leaks(), [], `clean after the caller's shutdown: ${j(sim.leaks())}`);
  });
});

/**
 * A function bound to vfio-pci (03:00.0, class 0x12: `accel0`; BAR0 16 MiB, BAR2 64 KiB) below
 * the switch of root port 00:01.0 with an amdgpu GPU (04:00.0) and an NVMe drive (05:00.0); a
 * habanalabs accelerator (07:00.0, `accel1`) behind root port 00:02.0, an RDMA NIC (09:00.0)
 * behind 00:03.0. No IOMMU, a host bridge that is not on the P2PDMA allowlist: switch-local pairs
 * are bus-address, the others not supported.
 */
function vfioMachine(): MachineDescription {
  return topo()
    .hostFn("00:00.0", "8086:1234")
    .rootPort("00:01.0")
    .usp("01:00.0", { parent: "00:01.0" })
    .dsp("02:00.0", { parent: "01:00.0" })
    .dsp("02:01.0", { parent: "01:00.0" })
    .dsp("02:02.0", { parent: "01:00.0" })
    .fn("03:00.0", {
      parent: "02:00.0",
      id: "10ee:505c",
      classCode: 0x120000,
      driver: "vfio-pci",
      bars: [
        { index: 0, start: 0x90_0000_0000n, size: 16n * MiB },
        { index: 2, start: 0x90_1000_0000n, size: 64n << 10n },
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
    .fn("07:00.0", {
      parent: "00:02.0",
      id: "1da3:1020",
      classCode: 0x120000,
      driver: "habanalabs",
      bars: [
        { index: 0, start: 0xa0_0000_0000n, size: MiB },
        { index: 2, start: 0xb0_0000_0000n, size: 64n * MiB },
      ],
    })
    .rootPort("00:03.0")
    .fn("09:00.0", { parent: "00:03.0", id: "15b3:101d", driver: "mlx5_core", classCode: 0x020000 })
    .iommu("off")
    .build();
}

const VFIO = "0000:03:00.0";

function vfioRow(r: CompatResult): CompatCell[] {
  const row = r.cells.filter((c) => c.exporterBdf === VFIO);
  assert.equal(row.length, r.importers.length - 1, `a vfio cell per other importer: ${j(row)}`);
  return row;
}

describe("compat: vfio-pci and udmabuf exporters", () => {
  it("mainline, MOVE_NOTIFY=y: the vfio-pci row maps switch-local peers with bus addresses and is refused (EINVAL) where P2PDMA says no, as explainPair says", () => {
    const desc = vfioMachine();
    const r = computeCompat(desc, { kernel: "mainline", moveNotify: true });
    assert.deepEqual(r.leaks, [], `no leaks: ${j(r.leaks)}`);
    assert.deepEqual(
      r.exporters.map((e) => e.name),
      ["accel0", "gpu0", "accel1", HOST, HOST_UDMABUF],
      "exporters in BDF order (the vfio-pci function is accel0 by its class), then host memory",
    );
    const row = r.exporters.find((e) => e.bdf === VFIO);
    assert.match(row?.how ?? "", /^vfio-pci BAR0 \(16 MiB\)/, `the largest BAR: ${j(row)}`);
    assert.match(row?.how ?? "", /VFIO_DEVICE_FEATURE_DMA_BUF/, `the export call: ${j(row)}`);
    assert.deepEqual(r.notExporting, [], `everything exports: ${j(r.notExporting)}`);
    const sim = new SimMachine(desc, { tracer: new Tracer(false), kernel: "mainline" });
    for (const c of vfioRow(r)) {
      const where = `${c.exporter} -> ${c.importer}: ${j(c)}`;
      const e = explainPair(sim.sys.pci, sim.fn(VFIO), sim.fn(c.importerBdf));
      assert.equal(c.mapType, e.mapType, `mapType is explainPair's: ${where}`);
      assert.equal(c.distance, e.distance, `distance is explainPair's: ${where}`);
      if (e.mapType === "not-supported") {
        assert.deepEqual(
          [c.outcome, c.errno, c.stage],
          ["refused", "EINVAL", c.via.startsWith("rdma") ? "registration" : "map"],
          `dma_buf_phys_vec_to_sgt refuses a pair P2PDMA does not support: ${where}`,
        );
        assert.ok(c.findings.length > 0, `the refusal carries the findings: ${where}`);
      } else {
        assert.equal(c.outcome, "bus-address", `a switch-local peer: bus addresses: ${where}`);
        assert.deepEqual(c.dma, { fault: null, landed: true }, `the bytes land in BAR0: ${where}`);
        assert.equal(c.mappedBytes, r.bufferSize, `the table covers the buffer: ${where}`);
      }
    }
    sim.shutdown();
    const gpu = cell(r, "accel0", "0000:04:00.0");
    assert.deepEqual(
      [gpu.via, gpu.outcome],
      ["amdgpu-prime", "bus-address"],
      `amdgpu imports the BAR and its SDMA engine writes it peer to peer: ${j(gpu)}`,
    );
    const accel = cell(r, "accel0", "0000:07:00.0");
    assert.deepEqual(
      [accel.via, accel.outcome, accel.errno, accel.stage],
      ["accel-import", "refused", "EINVAL", "map"],
      `the accelerator's import is refused when its DMA job maps: ${j(accel)}`,
    );
  });

  it("mainline, MOVE_NOTIFY=n: every import of the vfio-pci buffer is pinned at map, which vfio-pci refuses (EOPNOTSUPP)", () => {
    const r = computeCompat(vfioMachine(), { kernel: "mainline", moveNotify: false });
    assert.deepEqual(r.leaks, [], `no leaks: ${j(r.leaks)}`);
    for (const c of vfioRow(r)) {
      const where = `${c.exporter} -> ${c.importer}: ${j(c)}`;
      assert.deepEqual(
        [c.outcome, c.errno, c.stage],
        ["refused", "EOPNOTSUPP", c.via.startsWith("rdma") ? "registration" : "map"],
        `pin refused: ${where}`,
      );
      assert.match(c.reason, /CONFIG_DMABUF_MOVE_NOTIFY=n/, `the reason says why: ${where}`);
    }
  });

  it("static importers: vfio-pci refuses every attach without peer2peer (EOPNOTSUPP); udmabuf maps for anyone", () => {
    const r = computeCompat(vfioMachine(), {
      kernel: "mainline",
      moveNotify: true,
      importerMode: "static",
    });
    assert.deepEqual(r.leaks, [], `no leaks: ${j(r.leaks)}`);
    for (const c of vfioRow(r))
      assert.deepEqual(
        [c.via, c.outcome, c.errno, c.stage],
        ["kernel-static", "refused", "EOPNOTSUPP", "attach"],
        `vfio_pci_dma_buf_attach: ${j(c)}`,
      );
    for (const c of r.cells.filter((x) => x.exporter === HOST_UDMABUF))
      assert.deepEqual(
        [c.via, c.outcome, c.dma?.landed],
        ["kernel-static", "physical", true],
        `a page-backed table mapped for the importer: ${j(c)}`,
      );
  });

  it("6.1: no VFIO_DEVICE_FEATURE_DMA_BUF, so the vfio-pci function is not a row: notExporting says ENOTTY", () => {
    const desc = vfioMachine();
    const r = computeCompat(desc, { kernel: "6.1", moveNotify: true });
    assert.deepEqual(r.leaks, [], `no leaks: ${j(r.leaks)}`);
    assert.ok(
      !r.exporters.some((e) => e.bdf === VFIO) && !r.cells.some((c) => c.exporterBdf === VFIO),
      `no vfio-pci row: ${j(r.exporters)}`,
    );
    assert.equal(r.notExporting.length, 1, `one device does not export: ${j(r.notExporting)}`);
    const n = r.notExporting[0]!;
    assert.deepEqual(
      [n.name, n.bdf, n.how, n.modelled, n.errno],
      ["accel0", VFIO, "driver vfio-pci", true, "ENOTTY"],
      `the export was tried and failed: ${j(n)}`,
    );
    assert.match(n.reason, /VFIO_DEVICE_FEATURE_DMA_BUF failed with ENOTTY/, `why: ${j(n)}`);
    assert.ok(
      r.cells.some((c) => c.importerBdf === VFIO),
      "the function is still a column (a stand-in importer)",
    );
    assert.throws(
      () => computeCompat(desc, { kernel: "6.1", exporters: ["03:00.0"] }),
      /accel0 \(0000:03:00\.0\) does not export: VFIO_DEVICE_FEATURE_DMA_BUF failed with ENOTTY/,
      "asking for its row says why there is none",
    );
  });

  it("a vfio-pci function with no memory BAR large enough for the buffer is not a row, without an errno", () => {
    const r = computeCompat(vfioMachine(), {
      kernel: "mainline",
      bufferSize: 32n * MiB,
      exporters: [HOST],
    });
    assert.deepEqual(r.leaks, [], `no leaks: ${j(r.leaks)}`);
    assert.deepEqual(
      r.notExporting.map((d) => [d.bdf, d.modelled, d.errno, d.reason]),
      [[VFIO, true, undefined, "no memory BAR of at least 32 MiB"]],
      `a 16 MiB BAR cannot hold 32 MiB: ${j(r.notExporting)}`,
    );
  });

  it("host-udmabuf: a memfd's pages, mapped like the heap's (IOVAs behind an IOMMU), the bytes in the memfd", () => {
    const r = computeCompat(machine(M_DMA), { kernel: "mainline", exporters: [HOST_UDMABUF] });
    assert.deepEqual(r.leaks, [], `no leaks (memfds, udmabuf, pages): ${j(r.leaks)}`);
    const row = r.exporters[0];
    assert.deepEqual(
      [row?.name, row?.bdf, row?.kind],
      [HOST_UDMABUF, null, "host"],
      `one row, host memory: ${j(r.exporters)}`,
    );
    assert.match(row?.how ?? "", /memfd.*UDMABUF_CREATE/, `what it is: ${j(row)}`);
    assert.equal(r.cells.length, 5, "against every importer");
    for (const c of r.cells) {
      assert.deepEqual(
        [c.outcome, c.addressKinds, c.mapType],
        ["iommu", ["iova"], null],
        `through the importer's IOMMU domain, no P2PDMA verdict: ${j(c)}`,
      );
      assert.deepEqual(c.dma, { fault: null, landed: true }, `the bytes land: ${j(c)}`);
    }
  });
});

describe("compat: importers through their drivers", () => {
  it("a GPU column imports through amdgpu (PRIME + SDMA copy): accelerator HBM → GPU moves bytes peer to peer; refused with the exporter's EPERM when P2PDMA says no", () => {
    const r = computeCompat(machine(M_OFF), { kernel: "mainline", moveNotify: true });
    assert.deepEqual(r.leaks, [], `no leaks: ${j(r.leaks)}`);
    const gpu = r.importers.find((i) => i.name === "gpu0");
    assert.match(gpu?.how ?? "", /^amdgpu .*PRIME fd-to-handle.*SDMA copy/, `${j(gpu)}`);
    const c = cell(r, "accel0", "0000:04:00.0");
    assert.deepEqual(
      [c.via, c.outcome, c.addressKinds, c.peer2peer],
      ["amdgpu-prime", "bus-address", ["bus-address"], true],
      `HBM below the same switch: ${j(c)}`,
    );
    assert.deepEqual(c.dma, { fault: null, landed: true }, `the bytes are in HBM: ${j(c)}`);
    assert.equal(c.mappedBytes, r.bufferSize, `the bound table covers the buffer: ${j(c)}`);
    const host = cell(r, HOST, "0000:04:00.0");
    assert.deepEqual(
      [host.via, host.outcome, host.dma?.landed],
      ["amdgpu-prime", "physical", true],
      `host memory into the GPU's SDMA engine: ${j(host)}`,
    );
    // 6.1's habanalabs refuses at attach, mainline's at map (hl_dmabuf_attach only clears p2p)
    const far = computeCompat(machine({ ...M_OFF, acs: 0x1d }), {
      kernel: "mainline",
      exporters: ["accel0"],
    });
    assert.deepEqual(far.leaks, [], `no leaks: ${j(far.leaks)}`);
    const x = cell(far, "accel0", "0000:04:00.0");
    assert.deepEqual(
      [x.via, x.outcome, x.errno, x.stage, x.peer2peer],
      ["amdgpu-prime", "refused", "EPERM", "map", false],
      `ACS redirect without an IOMMU and a host bridge off the allowlist: the submission's bind fails with habanalabs' errno: ${j(x)}`,
    );
  });

  it("an accelerator column imports through its (modelled) import with a DMA-engine copy from HBM, and says habanalabs has no such path", () => {
    const r = computeCompat(machine(M_DMA), { kernel: "mainline", moveNotify: true });
    assert.deepEqual(r.leaks, [], `no leaks: ${j(r.leaks)}`);
    const accel = r.importers.find((i) => i.name === "accel0");
    assert.match(
      accel?.how ?? "",
      /habanalabs has no dma-buf import upstream; model:.*DMA-engine copy from HBM/,
      `the description owns up to the model: ${j(accel)}`,
    );
    const c = cell(r, "gpu0", "0000:03:00.0");
    assert.deepEqual(
      [c.via, c.outcome, c.addressKinds, c.dma?.landed],
      ["accel-import", "iommu", ["iova"], true],
      `GPU VRAM into the accelerator's DMA engine, through the IOMMU: ${j(c)}`,
    );
  });
});

describe("compat: gpu-box (examples/machines/gpu-box.yaml)", () => {
  it("mainline: the Alveo on vfio-pci is a row whose cells agree with explainPair; the GPU column imports through amdgpu; 6.1: not a row (ENOTTY)", async () => {
    const desc = await loadInput([
      new URL("../../../examples/machines/gpu-box.yaml", import.meta.url).pathname,
    ]);
    const alveo = "0000:07:00.0";
    for (const moveNotify of [true, false]) {
      const r = computeCompat(desc, { kernel: "mainline", moveNotify });
      assert.deepEqual(r.leaks, [], `no leaks: ${j(r.leaks)}`);
      const row = r.exporters.find((e) => e.bdf === alveo);
      assert.match(
        row?.how ?? "",
        /^vfio-pci BAR0 \(64 MiB\)/,
        `the Alveo's row: ${j(r.exporters)}`,
      );
      const sim = new SimMachine(desc, { tracer: new Tracer(false), kernel: "mainline" });
      const cells = r.cells.filter((c) => c.exporterBdf === alveo);
      assert.equal(cells.length, 4, `against the GPU, the Gaudi2 and both NICs: ${j(cells)}`);
      for (const c of cells) {
        const where = `MOVE_NOTIFY=${moveNotify}: ${c.exporter} -> ${c.importer}: ${j(c)}`;
        const e = explainPair(sim.sys.pci, sim.fn(alveo), sim.fn(c.importerBdf));
        assert.equal(c.mapType, e.mapType, `mapType is explainPair's: ${where}`);
        assert.equal(c.distance, e.distance, `distance is explainPair's: ${where}`);
        assert.equal(e.mapType, "through-host-bridge", `AMD Zen routes P2P: ${where}`);
        if (moveNotify)
          assert.deepEqual(
            [c.outcome, c.dma?.landed],
            ["iommu", true],
            `through the IOMMU into the BAR: ${where}`,
          );
        else
          assert.deepEqual(
            [c.outcome, c.errno],
            ["refused", "EOPNOTSUPP"],
            `pinned at map, refused: ${where}`,
          );
      }
      sim.shutdown();
      const g = cell(r, "accel0", "0000:03:00.0");
      assert.deepEqual(
        [g.via, g.outcome, g.dma?.landed],
        ["amdgpu-prime", "iommu", true],
        `Gaudi2 HBM → W7900 through amdgpu, the bytes in HBM: ${j(g)}`,
      );
    }
    const old = computeCompat(desc, { kernel: "6.1" });
    assert.deepEqual(old.leaks, [], `no leaks: ${j(old.leaks)}`);
    assert.ok(
      !old.exporters.some((e) => e.bdf === alveo),
      `6.1: no Alveo row: ${j(old.exporters)}`,
    );
    assert.deepEqual(
      old.notExporting.map((d) => [d.name, d.bdf, d.errno]),
      [["accel1", alveo, "ENOTTY"]],
      `6.1: the Alveo does not export: ${j(old.notExporting)}`,
    );
  });
});
