/**
 * @module resv
 * The parts of dma-fence and dma-resv the dma-buf core needs (drivers/dma-buf/dma-fence.c,
 * dma-resv.c, include/linux/dma-resv.h): a fence that signals on the simulated clock, the
 * reservation object with its four usage classes, and the resv lock as a plain mutex whose
 * misuse is reported like lockdep would. Spec: ../../../../../shared/specs/dma-buf.md §2.17.
 *
 * Single-threaded model: a wait on an unsignalled fence advances the simulated clock to the
 * fence's `signalAt`; a fence nobody will signal makes the wait a hang (`KernelBug`), unless a
 * signal is pending for the task, in which case an interruptible wait returns -ERESTARTSYS.
 */

import { KernelBug, type KResult, kerr, kok } from "../errno.ts";

/**
 * The simulated clock (ms), shared by a dma-buf core and its fences. Fences with callbacks are
 * watched: advancing past their `signalAt` signals them, which runs the callbacks.
 */
export class SimClock {
  #now = 0;
  readonly #watched = new Set<DmaFence>();
  get now(): number {
    return this.#now;
  }
  advanceTo(t: number): void {
    if (t > this.#now) this.#now = t;
    for (const f of [...this.#watched].sort((a, b) => (a.signalAt ?? 0) - (b.signalAt ?? 0))) {
      if (f.isSignaled(this)) this.#watched.delete(f);
    }
  }
  /** Signal `f` by itself when the clock reaches its `signalAt`. */
  watch(f: DmaFence): void {
    this.#watched.add(f);
  }
}

/** `struct dma_fence_cb`. */
export type DmaFenceCallback = (fence: DmaFence) => void;

let nextFenceSeq = 1;

/** `struct dma_fence`, reduced to: signalled or not, and when it will signal by itself. */
export class DmaFence {
  readonly seqno = nextFenceSeq++;
  readonly name: string;
  #signaled = false;
  /** Simulated time at which the "hardware" signals it; null: only `signal()` does. */
  readonly signalAt: number | null;

  constructor(opts: { name?: string; signalAt?: number | null } = {}) {
    this.name = opts.name ?? `fence#${this.seqno}`;
    this.signalAt = opts.signalAt ?? null;
  }

  /** A fence that is already signalled. models dma_fence_get_stub() */
  static stub(): DmaFence {
    const f = new DmaFence({ name: "stub" });
    f.signal();
    return f;
  }

  /** Fences this one contains (a dma_fence_array), empty for a plain fence. */
  components: readonly DmaFence[] = [];

  /**
   * A container that signals when all of `fences` have. models dma_fence_array_create()
   * (signal_on_any = false), as dma_resv_get_singleton builds it
   */
  static array(fences: readonly DmaFence[]): DmaFence {
    const at = fences.map((f) => f.signalAt);
    const f = new DmaFence({
      name: `array[${fences.map((x) => x.name).join(",")}]`,
      signalAt: at.some((t) => t === null) ? null : Math.max(...(at as number[])),
    });
    f.components = [...fences];
    return f;
  }

  /** models dma_fence_is_signaled(): also true once the clock passed `signalAt`. */
  isSignaled(clock: SimClock): boolean {
    if (
      this.components.length > 0 &&
      !this.#signaled &&
      this.components.every((c) => c.isSignaled(clock))
    )
      this.signal();
    if (!this.#signaled && this.signalAt !== null && clock.now >= this.signalAt) this.signal();
    return this.#signaled;
  }

  readonly #callbacks: DmaFenceCallback[] = [];

  /** Runs the callbacks once. models dma_fence_signal() */
  signal(): void {
    if (this.#signaled) return;
    this.#signaled = true;
    for (const cb of this.#callbacks.splice(0)) cb(this);
  }

  /**
   * Run `cb` when the fence signals: false (the kernel's -ENOENT) if it already has. A fence
   * array arms itself on its components. models dma_fence_add_callback()
   */
  addCallback(clock: SimClock, cb: DmaFenceCallback): boolean {
    if (this.isSignaled(clock)) return false;
    this.#callbacks.push(cb);
    if (this.components.length > 0)
      for (const c of this.components) c.addCallback(clock, () => this.isSignaled(clock));
    else clock.watch(this);
    return true;
  }
}

/** `enum dma_resv_usage`, ordered: asking for one class includes every lower one. */
export type DmaResvUsage = "kernel" | "write" | "read" | "bookkeep";
const USAGE_RANK: Readonly<Record<DmaResvUsage, number>> = {
  kernel: 0,
  write: 1,
  read: 2,
  bookkeep: 3,
};

/** A new writer waits for readers and writers (READ), a reader for writers (WRITE). models dma_resv_usage_rw() */
export function dmaResvUsageRw(write: boolean): DmaResvUsage {
  return write ? "read" : "write";
}

/** A lockdep-style report: a function that needs (or must not hold) a lock was called wrongly. */
export interface LockdepReport {
  readonly fn: string;
  readonly object: string;
  readonly message: string;
}

/** Where reports go (the dma-buf core's log). */
export interface LockReporter {
  lockdep(r: LockdepReport): void;
}

/** Where a task is: a pending signal makes interruptible waits fail. */
export interface TaskState {
  signalPending: boolean;
}

/** `struct dma_resv`: the ww_mutex (as a plain mutex) and the fence list with usages. */
export class DmaResv {
  readonly name: string;
  readonly #clock: SimClock;
  readonly #reporter: LockReporter;
  readonly #task: TaskState;
  #held = false;
  #fini = false;
  readonly #fences: { fence: DmaFence; usage: DmaResvUsage }[] = [];

  constructor(name: string, clock: SimClock, reporter: LockReporter, task: TaskState) {
    this.name = name;
    this.#clock = clock;
    this.#reporter = reporter;
    this.#task = task;
  }

  #live(fn: string): void {
    if (this.#fini)
      throw new KernelBug(`use-after-free: ${fn}() on ${this.name} after dma_resv_fini()`);
  }

  get held(): boolean {
    return this.#held;
  }

  /** Taking it while held deadlocks (no ww_acquire_ctx in these paths). models dma_resv_lock(obj, NULL) */
  lock(fn = "dma_resv_lock"): void {
    this.#live(fn);
    if (this.#held) {
      this.#reporter.lockdep({
        fn,
        object: this.name,
        message: `possible recursive locking detected: ${fn}() takes the reservation lock of ${this.name}, already held`,
      });
      throw new KernelBug(
        `deadlock: ${fn}() takes the reservation lock of ${this.name} while it is held`,
      );
    }
    this.#held = true;
  }

  // models dma_resv_unlock()
  unlock(fn = "dma_resv_unlock"): void {
    this.#live(fn);
    if (!this.#held) {
      this.#reporter.lockdep({
        fn,
        object: this.name,
        message: `bad unlock balance detected: ${fn}() releases the reservation lock of ${this.name}, not held`,
      });
      throw new KernelBug(`${fn}(): unlock of ${this.name}, which is not locked`);
    }
    this.#held = false;
  }

  /** Reports (does not fail) when the lock is not held, as lockdep does. models dma_resv_assert_held() */
  assertHeld(fn: string): void {
    this.#live(fn);
    if (!this.#held)
      this.#reporter.lockdep({
        fn,
        object: this.name,
        message: `${fn}() called without holding the reservation lock of ${this.name}`,
      });
  }

  /** The caller must not hold it (the function may take it). models might_lock() */
  mightLock(fn: string): void {
    this.#live(fn);
    if (this.#held)
      this.#reporter.lockdep({
        fn,
        object: this.name,
        message: `${fn}() called with the reservation lock of ${this.name} held; it may take it`,
      });
  }

  /**
   * Add a fence; adding one already present keeps the stronger usage (fences are upgraded,
   * never downgraded). models dma_resv_add_fence() (slots are not modelled: no reserve needed)
   */
  addFence(fence: DmaFence, usage: DmaResvUsage): void {
    this.assertHeld("dma_resv_add_fence");
    const cur = this.#fences.find((e) => e.fence === fence);
    if (cur) {
      if (USAGE_RANK[usage] < USAGE_RANK[cur.usage]) cur.usage = usage;
      return;
    }
    this.#fences.push({ fence, usage });
  }

  /** Unsignalled fences of `usage` and every lower class. */
  fences(usage: DmaResvUsage): DmaFence[] {
    this.#live("dma_resv_iter");
    return this.#fences
      .filter((e) => USAGE_RANK[e.usage] <= USAGE_RANK[usage] && !e.fence.isSignaled(this.#clock))
      .map((e) => e.fence);
  }

  /**
   * One fence standing for every unsignalled fence of `usage`: none → null, one → it, several →
   * a fence array. models dma_resv_get_singleton()
   */
  getSingleton(usage: DmaResvUsage): DmaFence | null {
    const fs = this.fences(usage);
    if (fs.length === 0) return null;
    if (fs.length === 1) return fs[0]!;
    return DmaFence.array(fs);
  }

  // models dma_resv_test_signaled()
  testSignaled(usage: DmaResvUsage): boolean {
    return this.fences(usage).length === 0;
  }

  /**
   * Wait for every fence of `usage` (and lower). Unbounded: the clock advances to the last
   * `signalAt`; a fence that never signals hangs the task (KernelBug) unless interruptible with
   * a signal pending (-ERESTARTSYS). Returns the remaining timeout (>0) or an errno.
   * models dma_resv_wait_timeout(obj, usage, intr, MAX_SCHEDULE_TIMEOUT)
   */
  waitTimeout(usage: DmaResvUsage, intr: boolean): KResult<number> {
    const pending = this.fences(usage);
    if (pending.length === 0) return kok(1);
    if (intr && this.#task.signalPending)
      return kerr("ERESTARTSYS", `interrupted while waiting for fences of ${this.name}`);
    for (const f of pending) {
      if (f.signalAt === null)
        throw new KernelBug(
          `hung task: waiting forever for ${f.name} on ${this.name}, which nothing will signal`,
        );
      this.#clock.advanceTo(f.signalAt);
      f.isSignaled(this.#clock);
    }
    return kok(1);
  }

  /** The embedded resv is finalised when its buffer is released. models dma_resv_fini() */
  fini(): void {
    this.#live("dma_resv_fini");
    this.#fini = true;
  }
}
