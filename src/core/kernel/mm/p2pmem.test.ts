import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { topo } from "../../../../test/support/topology.ts";
import { buildMachine } from "../../hw/machine.ts";
import { P2pmemRegistry, physToVirt } from "./p2pmem.ts";

const MiB = 1n << 20n;
const BAR = 0xf800_0000n;

function setup(offset = 0n) {
  const m = buildMachine(
    topo()
      .rootPort("00:01.0")
      .ep("01:00.0", { parent: "00:01.0", bars: [{ index: 2, start: BAR, size: 8n * MiB }] })
      .build(),
  );
  const fn = m.byBdf("01:00.0")!;
  return { fn, reg: new P2pmemRegistry({ busOffset: () => offset }) };
}

describe("pci_p2pdma_add_resource and the p2pmem pool (spec §3)", () => {
  it("refuses what the kernel refuses with -EINVAL", () => {
    const { fn, reg } = setup();
    assert.deepEqual(
      reg.addResource(fn, 0, 0n, 0n),
      { ok: false, errno: "EINVAL" },
      "no such memory BAR",
    );
    assert.deepEqual(
      reg.addResource(fn, 2, 0n, 8n * MiB),
      { ok: false, errno: "EINVAL" },
      "offset >= len",
    );
    assert.deepEqual(
      reg.addResource(fn, 2, 4n * MiB, 6n * MiB),
      { ok: false, errno: "EINVAL" },
      "size + offset > len",
    );
    assert.equal(reg.state(fn), undefined, "a refused call leaves no p2pdma state");
  });

  it("size 0 means the rest of the BAR; sysfs shows size/available/published", () => {
    const { fn, reg } = setup();
    assert.ok(reg.addResource(fn, 2, 0n, 2n * MiB).ok);
    assert.deepEqual(reg.sysfs(fn), { size: 6n * MiB, available: 6n * MiB, published: false });
    reg.publish(fn, true);
    assert.equal(reg.hasPublished(fn, true), true);
  });

  it("allocates first-fit in whole pages, newest chunk first, and frees back", () => {
    const { fn, reg } = setup();
    assert.ok(reg.addResource(fn, 2, 2n * MiB, 0n).ok);
    assert.ok(reg.addResource(fn, 2, 2n * MiB, 4n * MiB).ok); // added last: searched first
    const a = reg.alloc(fn, 100n)!;
    assert.equal(a, physToVirt(BAR + 4n * MiB));
    const b = reg.alloc(fn, 4097n)!;
    assert.equal(b, physToVirt(BAR + 4n * MiB + 4096n), "rounded to whole pages, next free page");
    assert.equal(reg.sysfs(fn)!.available, 4n * MiB - 3n * 4096n);
    reg.free(fn, a, 100n);
    assert.equal(reg.alloc(fn, 4096n), a, "first fit reuses the freed page");
    assert.throws(() => reg.free(fn, (a + 8192n) as typeof a, 4096n), /not an allocation/);
    assert.throws(() => reg.free(fn, b, 4096n), /does not match/);
    assert.equal(reg.alloc(fn, 3n * MiB), null, "no chunk holds 3 MiB in one piece");
  });

  it("virt_to_bus gives the bus address (CPU address + window offset); pages carry their pgmap", () => {
    const { fn, reg } = setup(-0x4000_0000n);
    const pg = reg.addResource(fn, 2, MiB, 0n);
    assert.ok(pg.ok);
    const va = reg.alloc(fn, 4096n)!;
    assert.equal(reg.virtToBus(fn, va), BAR - 0x4000_0000n);
    const page = reg.pageOf(va)!;
    assert.equal(page.pfn, BAR >> 12n);
    assert.equal(page.pgmap, pg.ok ? pg.value : null);
    assert.equal(page.pgmap?.provider.busOffset, -0x4000_0000n);
  });
});
