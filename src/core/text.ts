/**
 * @module text
 * Small text helpers shared by parsers and the CLI.
 */

/** Levenshtein distance, for "did you mean" suggestions. */
export function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

/** A size for people: `2 MiB` when it is a whole number of GiB/MiB/KiB, else `N` + `unit`. */
export function sizeText(n: bigint, unit = " bytes"): string {
  for (const [u, name] of [
    [1n << 30n, "GiB"],
    [1n << 20n, "MiB"],
    [1n << 10n, "KiB"],
  ] as const)
    if (n >= u && n % u === 0n) return `${n / u} ${name}`;
  return `${n}${unit}`;
}
