// Encoding APIs that every runtime the core targets (Node >= 20, browsers) provides. Declared
// here because the core compiles without DOM and Node types, so nothing else leaks in.
declare class TextDecoder {
  constructor(label?: string, options?: { fatal?: boolean; ignoreBOM?: boolean });
  decode(input?: Uint8Array): string;
}
declare class TextEncoder {
  encode(input?: string): Uint8Array;
}
