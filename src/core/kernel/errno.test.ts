import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
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
  it("has the numbers the kernel headers define", (t) => {
    // the uapi headers (Debian's linux-libc-dev) and, for kernel-internal ones like ERESTARTSYS,
    // include/linux/errno.h of the oracle's kernel tree when it is there
    const kernelTree = join(homedir(), ".cache/peerbuf-oracle/linux-source-6.1");
    const headers = [
      "/usr/include/asm-generic/errno-base.h",
      "/usr/include/asm-generic/errno.h",
      join(kernelTree, "include/linux/errno.h"),
    ].filter((f) => existsSync(f));
    if (headers.length === 0) {
      t.skip(
        "no errno headers on this machine (/usr/include/asm-generic, the oracle's kernel tree)",
      );
      return;
    }
    const defined = new Map<string, number>();
    for (const h of headers)
      for (const m of readFileSync(h, "utf8").matchAll(/^#define\s+(E[A-Z0-9]+)\s+(\d+)\b/gm))
        defined.set(m[1]!, Number(m[2]));
    let checked = 0;
    for (const [name, n] of Object.entries(ERRNO)) {
      if (!defined.has(name)) continue;
      assert.equal(n, defined.get(name), `${name} in ${headers.join(", ")}`);
      checked++;
    }
    const internal = Object.keys(ERRNO).filter((e) => !defined.has(e));
    assert.ok(
      internal.every((e) => e === "ERESTARTSYS"),
      `only kernel-internal errnos may be missing from the headers, missing: ${internal.join(", ")}`,
    );
    assert.ok(checked >= Object.keys(ERRNO).length - 1, `checked ${checked} errnos`);
  });

  it("negates, names and describes", () => {
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
