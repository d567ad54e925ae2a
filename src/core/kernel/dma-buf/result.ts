/**
 * @module result
 * The dma-buf core returns errnos that `../errno.ts` does not list yet (ENOTTY from ioctl,
 * EACCES from mmap, EMFILE from the fd table, EOVERFLOW from dma_buf_mmap, ERESTARTSYS from an
 * interrupted fence wait). Until they move into `ERRNO`, this module widens the result type:
 * `DbResult` is a `KResult` whose errno may also be one of these. Every `KResult` is a `DbResult`.
 */

import type { Errno, KOk } from "../errno.ts";

/** Numbers from include/uapi/asm-generic/errno-base.h and include/linux/errno.h. */
export const EXTRA_ERRNO = {
  EINTR: 4,
  EAGAIN: 11,
  EACCES: 13,
  ENOTTY: 25,
  EMFILE: 24,
  ESPIPE: 29,
  EOVERFLOW: 75,
  /** File descriptor in bad state (udmabuf: the memfd is not a shmem/hugetlbfs file). */
  EBADFD: 77,
  ERESTARTSYS: 512,
} as const;

export type DbErrno = Errno | keyof typeof EXTRA_ERRNO;

export interface DbErr {
  readonly ok: false;
  readonly errno: DbErrno;
  readonly reason?: string;
  /** The kernel also printed a WARN splat on this path. */
  readonly warn?: boolean;
}

export type DbResult<T = undefined> = KOk<T> | DbErr;

export function dbErr(errno: DbErrno, reason?: string, opts: { warn?: boolean } = {}): DbErr {
  return {
    ok: false,
    errno,
    ...(reason !== undefined ? { reason } : {}),
    ...(opts.warn === true ? { warn: true } : {}),
  };
}
