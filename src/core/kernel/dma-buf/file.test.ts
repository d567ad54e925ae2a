import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { KernelBug } from "../errno.ts";
import { type DmaBuf, DmaBufCore, type DmaBufOps, dmaBufExport, getDmaBuf } from "./dma-buf.ts";
import {
  dmaBufFd,
  dmaBufGet,
  dmaBufPut,
  EPOLLIN,
  EPOLLOUT,
  O_CLOEXEC,
  openRegular,
  Process,
  sendFd,
  sysClose,
  sysDup,
  sysExec,
  sysExit,
  sysPoll,
} from "./file.ts";
import { DmaFence } from "./resv.ts";

const errno = (r: { ok: boolean; errno?: string }) => (r.ok ? "ok" : r.errno);

function exportOne(core = new DmaBufCore()) {
  const released: number[] = [];
  const ops: DmaBufOps = {
    map_dma_buf: () => null,
    unmap_dma_buf: () => {},
    release: (d) => released.push(d.ino),
  };
  const r = dmaBufExport(core, { size: 4096n, ops, priv: 1, exp_name: "test" });
  assert.ok(r.ok);
  return { dmabuf: r.value, released, core };
}

describe("fd tables", () => {
  it("6: dma_buf_get of -1 or a closed fd → -EBADF; of a regular file → -EINVAL with its count unchanged", () => {
    const p = new Process("p");
    assert.equal(errno(dmaBufGet(p, -1)), "EBADF");
    const f = openRegular(p, "/etc/passwd");
    assert.ok(f.ok);
    const file = p.peek(f.value)!;
    assert.equal(errno(dmaBufGet(p, f.value)), "EINVAL");
    assert.equal(file.count, 1);
    assert.ok(sysClose(p, f.value).ok);
    assert.equal(errno(dmaBufGet(p, f.value)), "EBADF");
    assert.equal(file.state, "released");
  });

  it("7: dma_buf_fd with a full table → -EMFILE, no fd installed, the caller still owns the reference", () => {
    const p = new Process("p", { rlimitNofile: 2 });
    assert.ok(openRegular(p, "a").ok && openRegular(p, "b").ok);
    const { dmabuf, released } = exportOne();
    assert.equal(errno(dmaBufFd(p, dmabuf, O_CLOEXEC)), "EMFILE");
    assert.equal(p.fds.size, 2);
    assert.equal(dmabuf.file.count, 1);
    dmaBufPut(dmabuf);
    assert.deepEqual(released, [dmabuf.ino]);
  });

  it("dup shares the file (+1) and clears close-on-exec; exec closes only O_CLOEXEC fds", () => {
    const p = new Process("p");
    const { dmabuf, released } = exportOne();
    const fd = dmaBufFd(p, dmabuf, O_CLOEXEC);
    assert.ok(fd.ok);
    const d = sysDup(p, fd.value);
    assert.ok(d.ok);
    assert.equal(dmabuf.file.count, 2);
    assert.equal(p.fds.get(d.value)!.cloexec, false);
    sysExec(p);
    assert.equal(p.fds.has(fd.value), false);
    assert.equal(p.fds.has(d.value), true);
    assert.equal(released.length, 0);
    assert.ok(sysClose(p, d.value).ok);
    assert.equal(released.length, 1);
  });

  it("passing an fd to another process gives the receiver its own reference; the sender may close", () => {
    const a = new Process("a");
    const b = new Process("b");
    const { dmabuf, released } = exportOne();
    const fd = dmaBufFd(a, dmabuf, 0);
    assert.ok(fd.ok);
    const r = sendFd(a, fd.value, b, { cloexec: true });
    assert.ok(r.ok);
    assert.equal(dmabuf.file.count, 2);
    assert.ok(b.fds.get(r.value)!.cloexec);
    assert.ok(sysClose(a, fd.value).ok);
    assert.equal(released.length, 0);
    const g = dmaBufGet(b, r.value);
    assert.ok(g.ok && g.value === dmabuf);
    sysExit(b);
    assert.equal(released.length, 0, "the kernel reference from dma_buf_get keeps it");
    dmaBufPut(dmabuf);
    assert.equal(released.length, 1);
    assert.throws(() => sysClose(b, 0), /exited/);
  });

  it("sending to a full table drops the in-flight reference (-EMFILE); sending a closed fd → -EBADF", () => {
    const a = new Process("a");
    const b = new Process("b", { rlimitNofile: 0 });
    const { dmabuf } = exportOne();
    const fd = dmaBufFd(a, dmabuf, 0);
    assert.ok(fd.ok);
    assert.equal(errno(sendFd(a, fd.value, b)), "EMFILE");
    assert.equal(dmabuf.file.count, 1);
    assert.equal(errno(sendFd(a, 9, b)), "EBADF");
  });
});

// ── property: the refcount model of spec §1.7 ──────────────────────────────────────────────

type Op =
  | { k: "fd"; p: number; cloexec: boolean }
  | { k: "dup"; p: number; i: number }
  | { k: "send"; p: number; i: number; to: number }
  | { k: "close"; p: number; i: number }
  | { k: "get"; p: number; i: number }
  | { k: "put"; i: number }
  | { k: "kget" }
  | { k: "exec"; p: number }
  | { k: "fence"; write: boolean; dt: number }
  | { k: "poll"; p: number; i: number; events: number }
  | { k: "tick"; dt: number };

const P = 3;
const pf = { p: fc.nat(P - 1), i: fc.nat(20) };
const w = <T>(weight: number, arbitrary: fc.Arbitrary<T>) => ({ weight, arbitrary });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  w(3, fc.record({ k: fc.constant("fd" as const), p: fc.nat(P - 1), cloexec: fc.boolean() })),
  w(2, fc.record({ k: fc.constant("dup" as const), ...pf })),
  w(2, fc.record({ k: fc.constant("send" as const), ...pf, to: fc.nat(P - 1) })),
  w(2, fc.record({ k: fc.constant("close" as const), ...pf })),
  w(2, fc.record({ k: fc.constant("get" as const), ...pf })),
  w(1, fc.record({ k: fc.constant("put" as const), i: fc.nat(20) })),
  w(1, fc.record({ k: fc.constant("kget" as const) })),
  w(1, fc.record({ k: fc.constant("exec" as const), p: fc.nat(P - 1) })),
  w(
    2,
    fc.record({
      k: fc.constant("fence" as const),
      write: fc.boolean(),
      dt: fc.integer({ min: 1, max: 20 }),
    }),
  ),
  w(
    3,
    fc.record({
      k: fc.constant("poll" as const),
      ...pf,
      events: fc.constantFrom(EPOLLIN, EPOLLOUT, EPOLLIN | EPOLLOUT),
    }),
  ),
  w(1, fc.record({ k: fc.constant("tick" as const), dt: fc.integer({ min: 1, max: 20 }) })),
);

describe("refcount model (spec §1.7), property", () => {
  it("release runs exactly once, exactly when fds + kernel refs + the uninstalled creator ref + armed poll callbacks reach 0", () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 60 }), (tail) => {
        // start installed and busy, so that sequences live long enough to arm poll callbacks
        const ops: Op[] = [
          { k: "fd", p: 0, cloexec: false },
          { k: "fence", write: true, dt: 15 },
          ...tail,
        ];
        const core = new DmaBufCore();
        const procs = Array.from(
          { length: P },
          (_, i) => new Process(`p${i}`, { rlimitNofile: 6 }),
        );
        const { dmabuf, released } = exportOne(core);
        // the model: who holds a reference
        let creator = 1; // un-installed creation reference
        let kernelRefs = 0; // dma_buf_get + get_dma_buf
        const heldByKernel: DmaBuf[] = [];
        const installed = () =>
          procs.reduce(
            (n, p) => n + [...p.fds.values()].filter((e) => e.file === dmabuf.file).length,
            0,
          );
        const fdsOf = (p: Process) => [...p.fds.keys()].sort((x, y) => x - y);
        const pick = (p: Process, i: number) => {
          const fds = fdsOf(p);
          return fds.length === 0 ? 99 : fds[i % fds.length]!;
        };
        for (const op of ops) {
          const alive = released.length === 0;
          if (!alive) {
            // everything that touches the buffer now must fail loudly
            if (op.k === "kget") assert.throws(() => getDmaBuf(dmabuf), KernelBug);
            if (op.k === "put") assert.throws(() => dmaBufPut(dmabuf), KernelBug);
            continue;
          }
          const p = procs[(op as { p?: number }).p ?? 0]!;
          switch (op.k) {
            case "fd": {
              if (creator === 0) break; // the creator's reference can be installed once
              const r = dmaBufFd(p, dmabuf, op.cloexec ? O_CLOEXEC : 0);
              if (r.ok) creator = 0;
              else assert.equal(r.errno, "EMFILE");
              break;
            }
            case "dup":
              sysDup(p, pick(p, op.i));
              break;
            case "send":
              sendFd(p, pick(p, op.i), procs[op.to]!);
              break;
            case "close":
              sysClose(p, pick(p, op.i));
              break;
            case "get": {
              const r = dmaBufGet(p, pick(p, op.i));
              if (r.ok) {
                kernelRefs++;
                heldByKernel.push(r.value);
              }
              break;
            }
            case "put":
              if (kernelRefs > 0) {
                kernelRefs--;
                dmaBufPut(heldByKernel.pop()!);
              } else if (creator > 0) {
                creator = 0;
                dmaBufPut(dmabuf);
              }
              break;
            case "kget":
              getDmaBuf(dmabuf);
              kernelRefs++;
              heldByKernel.push(dmabuf);
              break;
            case "exec":
              sysExec(p);
              break;
            case "fence":
              dmabuf.resv.lock();
              dmabuf.resv.addFence(
                new DmaFence({ signalAt: core.clock.now + op.dt }),
                op.write ? "write" : "read",
              );
              dmabuf.resv.unlock();
              break;
            case "poll":
              sysPoll(p, pick(p, op.i), op.events);
              break;
            case "tick":
              core.clock.advanceTo(core.clock.now + op.dt);
              break;
          }
          // §1.7: fds + kernel refs + creator ref + armed poll callbacks
          const armed = (dmabuf.cb_in ? 1 : 0) + (dmabuf.cb_out ? 1 : 0);
          const expected = installed() + kernelRefs + creator + armed;
          if (expected === 0) {
            assert.equal(released.length, 1, "released when the count reached 0");
            assert.equal(dmabuf.state, "released");
            assert.equal(core.buffers.size, 0);
          } else {
            assert.equal(released.length, 0, "not released while references remain");
            assert.equal(dmabuf.file.count, expected);
          }
        }
        assert.ok(released.length <= 1, "never released twice");
      }),
      { numRuns: 300, seed: 0x1ee7 },
    );
  });
});
