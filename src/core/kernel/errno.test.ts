import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  ERRNO,
  ERRNO_MESSAGE,
  errnoName,
  errnoNumber,
  isErrno,
  KernelBug,
  kerr,
  kok,
  kretval,
  negErrno,
} from "./errno.ts";

describe("errno", () => {
  it("has the Linux numbers", () => {
    // asm-generic/errno-base.h and errno.h (x86 uses the generic numbers)
    assert.deepEqual(ERRNO, {
      EPERM: 1,
      ENOENT: 2,
      EINTR: 4,
      EIO: 5,
      EBADF: 9,
      EAGAIN: 11,
      ENOMEM: 12,
      EACCES: 13,
      EFAULT: 14,
      EBUSY: 16,
      EEXIST: 17,
      ENODEV: 19,
      EINVAL: 22,
      EMFILE: 24,
      ENOTTY: 25,
      ENOSPC: 28,
      ESPIPE: 29,
      EDEADLK: 35,
      EOVERFLOW: 75,
      EOPNOTSUPP: 95,
      EALREADY: 114,
      EREMOTEIO: 121,
      ERESTARTSYS: 512,
    });
    assert.equal(errnoNumber("EREMOTEIO"), 121);
    assert.equal(negErrno("EINVAL"), -22);
    assert.equal(ERRNO_MESSAGE.EREMOTEIO, "Remote I/O error");
  });

  it("maps numbers back, kernel-negative ones too", () => {
    assert.equal(errnoName(-121), "EREMOTEIO");
    assert.equal(errnoName(12), "ENOMEM");
    assert.equal(errnoName(-3), undefined);
    assert.ok(isErrno("EIO"));
    assert.ok(!isErrno("EWHATEVER"));
    assert.ok(!isErrno("toString"));
  });

  it("builds results", () => {
    assert.deepEqual(kok(), { ok: true, value: undefined });
    assert.deepEqual(kok(3), { ok: true, value: 3 });
    assert.deepEqual(kerr("EINVAL"), { ok: false, errno: "EINVAL" });
    assert.deepEqual(kerr("EINVAL", "why", { warn: true }), {
      ok: false,
      errno: "EINVAL",
      reason: "why",
      warn: true,
    });
    assert.equal(kretval(kerr("EREMOTEIO")), -121);
    assert.equal(kretval(kok()), 0);
    const bug = new KernelBug("x");
    assert.ok(bug instanceof Error);
    assert.equal(bug.name, "KernelBug");
  });
});
