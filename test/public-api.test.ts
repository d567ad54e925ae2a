import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { bootPci, buildMachine, explainPair, loadInput } from "../src/index.ts";

describe("public API", () => {
  it("loads a capture and explains a pair, as the README example does", async () => {
    const m = buildMachine(
      await loadInput([
        new URL("./fixtures/kernel-oracle/switch_basic/sysfs.tar.gz", import.meta.url).pathname,
      ]),
    );
    const nvme = m.functions.find((f) => f.desc.classCode === 0x010802)!;
    const e = explainPair(bootPci(m), nvme, nvme);
    assert.equal(e.mapType, "bus-address");
    assert.equal(e.distance, 0);
  });
});

describe("public API: scripting a machine", () => {
  it("examples/scripts/rdma-into-hbm.ts: the remote write lands in HBM, reads back, nothing leaks", async () => {
    const { main } = await import("../examples/scripts/rdma-into-hbm.ts");
    const lines: string[] = [];
    const ok = await main((l) => lines.push(l));
    assert.equal(ok, true, lines.join("\n"));
    assert.deepEqual(
      lines,
      [
        "RDMA WRITE: IBV_WC_SUCCESS, 2097152 bytes",
        "RDMA READ:  IBV_WC_SUCCESS, 2097152 bytes",
        "read back equals what was written",
        "nothing leaked",
      ],
      "what the script prints",
    );
  });

  it("a failing kernel call throws ErrnoError with the errno", async () => {
    const { ErrnoError, SimMachine } = await import("../src/index.ts");
    const desc = await loadInput([
      new URL("../examples/machines/accel-box.yaml", import.meta.url).pathname,
    ]);
    const m = new SimMachine(desc);
    const p = m.process("p");
    assert.throws(
      () => p.open("/dev/accel/accel9"),
      (e: unknown) => e instanceof ErrnoError && e.errno === "ENOENT",
      "no such device node",
    );
    const fd = p.open("/dev/accel/accel0");
    assert.throws(
      () => p.accelExport(fd, { addr: 0x1234n, size: 4096n }),
      (e: unknown) => e instanceof ErrnoError && e.errno === "EINVAL",
      "export of an address that is not a mapped VA",
    );
    p.exit();
    assert.deepEqual(m.leaks(), [], "exit released everything");
  });
});
