/**
 * Mutations of real XML for fuzzing the parsers: cut, insert, truncate, duplicate a span, or
 * replace an attribute value. Each parser's test supplies the tokens and values it cares about.
 */
import fc from "fast-check";

export type XmlOp =
  | { op: "cut"; at: number; len: number }
  | { op: "put"; at: number; s: string }
  | { op: "end"; at: number }
  | { op: "dup"; at: number; len: number }
  | { op: "attr"; n: number; s: string };

export function xmlMutations(o: {
  tokens: readonly string[];
  attrValues: readonly string[];
  maxCut: number;
  dup?: boolean;
}): fc.Arbitrary<XmlOp[]> {
  const ops: fc.Arbitrary<XmlOp>[] = [
    fc.record({
      op: fc.constant("cut" as const),
      at: fc.nat(),
      len: fc.integer({ min: 1, max: o.maxCut }),
    }),
    fc.record({
      op: fc.constant("put" as const),
      at: fc.nat(),
      s: fc.oneof(fc.constantFrom(...o.tokens), fc.string({ maxLength: 12, unit: "binary" })),
    }),
    fc.record({ op: fc.constant("end" as const), at: fc.nat() }),
    fc.record({
      op: fc.constant("attr" as const),
      n: fc.nat(),
      s: fc.oneof(fc.constantFrom(...o.attrValues), fc.string({ maxLength: 8 })),
    }),
  ];
  if (o.dup)
    ops.push(
      fc.record({
        op: fc.constant("dup" as const),
        at: fc.nat(),
        len: fc.integer({ min: 1, max: 400 }),
      }),
    );
  return fc.array(fc.oneof(...ops), { minLength: 1, maxLength: 6 });
}

export function mutateXml(text: string, ops: readonly XmlOp[]): string {
  let t = text;
  for (const o of ops) {
    if (o.op === "attr") {
      const values = [...t.matchAll(/="([^"]*)"/g)];
      const v = values.length > 0 ? values[o.n % values.length]! : undefined;
      if (v)
        t = t.slice(0, v.index + 2) + o.s.replace(/"/g, "") + t.slice(v.index + 2 + v[1]!.length);
      continue;
    }
    const at = o.at % (t.length + 1);
    if (o.op === "cut") t = t.slice(0, at) + t.slice(at + o.len);
    else if (o.op === "put") t = t.slice(0, at) + o.s + t.slice(at);
    else if (o.op === "end") t = t.slice(0, at);
    else t = t.slice(0, at) + t.slice(at, at + o.len) + t.slice(at);
  }
  return t;
}
