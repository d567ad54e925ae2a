/**
 * @module errno
 * Linux errno values (include/uapi/asm-generic/errno-base.h, errno.h) and the result shape the
 * kernel model uses where the kernel returns `0` or `-errno`: an expected "no" is a value
 * (`{ ok: false, errno: "EINVAL" }`), never an exception. Exceptions are for what would be a
 * kernel bug or oops (`KernelBug`): misuse of the model, not an answer.
 */

/** The errno values the model uses, by Linux name, with their x86/generic numbers. */
export const ERRNO = {
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
  /** File descriptor in bad state. */
  EBADFD: 77,
  EOPNOTSUPP: 95,
  EALREADY: 114,
  EREMOTEIO: 121,
  /** Kernel-internal: never reaches user space. */
  ERESTARTSYS: 512,
} as const;

export type Errno = keyof typeof ERRNO;

/** What `strerror()` (glibc) prints for each, for messages. */
export const ERRNO_MESSAGE: Readonly<Record<Errno, string>> = {
  EPERM: "Operation not permitted",
  ENOENT: "No such file or directory",
  EINTR: "Interrupted system call",
  EIO: "Input/output error",
  EBADF: "Bad file descriptor",
  EAGAIN: "Resource temporarily unavailable",
  ENOMEM: "Cannot allocate memory",
  EACCES: "Permission denied",
  EFAULT: "Bad address",
  EBUSY: "Device or resource busy",
  EEXIST: "File exists",
  ENODEV: "No such device",
  EINVAL: "Invalid argument",
  EMFILE: "Too many open files",
  ENOTTY: "Inappropriate ioctl for device",
  ENOSPC: "No space left on device",
  ESPIPE: "Illegal seek",
  EDEADLK: "Resource deadlock avoided",
  EOVERFLOW: "Value too large for defined data type",
  EBADFD: "File descriptor in bad state",
  EOPNOTSUPP: "Operation not supported",
  EALREADY: "Operation already in progress",
  EREMOTEIO: "Remote I/O error",
  ERESTARTSYS: "Interrupted system call (restart)",
};

/** The positive number of an errno name (`EINVAL` -> 22). */
export function errnoNumber(e: Errno): number {
  return ERRNO[e];
}

/** The kernel's return-value form: `-22` for EINVAL. */
export function negErrno(e: Errno): number {
  return -ERRNO[e];
}

/** The name of an errno number; negative kernel return values are accepted (`-121` -> EREMOTEIO). */
export function errnoName(n: number): Errno | undefined {
  const abs = Math.abs(n);
  for (const [name, value] of Object.entries(ERRNO) as [Errno, number][]) {
    if (value === abs) return name;
  }
  return undefined;
}

export function isErrno(s: string): s is Errno {
  return Object.hasOwn(ERRNO, s);
}

/** A kernel call that failed with an errno. `reason` says why, in the model's words. */
export interface KErr {
  readonly ok: false;
  readonly errno: Errno;
  readonly reason?: string;
  /** The kernel also printed a WARN splat (WARN_ON) on this path. */
  readonly warn?: boolean;
}

export interface KOk<T> {
  readonly ok: true;
  readonly value: T;
}

/** `0` / a value, or `-errno`. */
export type KResult<T = undefined> = KOk<T> | KErr;

export function kok(): KOk<undefined>;
export function kok<T>(value: T): KOk<T>;
export function kok<T>(value?: T): KOk<T | undefined> {
  return { ok: true, value };
}

export function kerr(errno: Errno, reason?: string, opts: { warn?: boolean } = {}): KErr {
  return {
    ok: false,
    errno,
    ...(reason !== undefined ? { reason } : {}),
    ...(opts.warn === true ? { warn: true } : {}),
  };
}

/** `0` or `-errno`, as the kernel function would have returned it. */
export function kretval(r: KResult<unknown>): number {
  return r.ok ? 0 : -ERRNO[r.errno];
}

/**
 * What the kernel would do with BUG_ON(), a NULL or wild pointer, or KASAN would report
 * (use-after-free, double free): the caller broke a kernel rule. Never an expected answer;
 * the message names the object and the rule.
 */
export class KernelBug extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KernelBug";
  }
}
