/** Exit codes, documented in README.md and `peerbuf --help`. */
export const EXIT = {
  /** Success; for `explain`, P2P is possible. */
  OK: 0,
  /** The answer is "no": `explain` found the pair not supported; `run`: a step did not do what the scenario expected, or something leaked. */
  NEGATIVE: 1,
  /** Usage error: unknown option, bad value, unknown or ambiguous device name. */
  USAGE: 2,
  /** Input unreadable, malformed, unsafe or too large. */
  INPUT: 3,
  /** Writing the output failed (disk full, permission). */
  OUTPUT: 4,
  /** A bug in peerbuf: please report it with the input. */
  INTERNAL: 70,
} as const;

export const EXIT_HELP = `Exit codes:
  0   success (explain: P2P possible)
  1   explain: the pair is not supported by the kernel;
      run: a step did not do what the scenario expected, or something leaked
  2   usage error (bad option, unknown or ambiguous device)
  3   input unreadable, malformed, unsafe or too large
  4   could not write the output
  70  internal error (a bug: please report it)`;
