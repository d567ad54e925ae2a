declare module "seek-bzip" {
  interface OutputStream {
    writeByte(byte: number): void;
  }
  const Bunzip: {
    decode(
      input: Uint8Array,
      output?: OutputStream | Uint8Array | number,
      multistream?: boolean,
    ): Uint8Array | undefined;
  };
  export default Bunzip;
}
