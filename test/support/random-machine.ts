/**
 * fast-check arbitrary for random but valid PCI hierarchies: host bridges with allowlisted or
 * unknown representatives, root ports, switches, multi-function endpoints, VFs, random ACS words.
 */
import fc from "fast-check";
import type { FunctionDescription, MachineDescription } from "../../src/core/hw/machine.ts";

const hex2 = (n: number) => n.toString(16).padStart(2, "0");

export const arbMachine: fc.Arbitrary<MachineDescription> = fc
  .record({
    hbs: fc.integer({ min: 1, max: 3 }),
    rep: fc.array(fc.constantFrom(0x2020, 0x3c00, 0x29c0, 0x09a2, 0x1234), {
      minLength: 3,
      maxLength: 3,
    }),
    repAtZero: fc.array(fc.boolean(), { minLength: 3, maxLength: 3 }),
    cpu: fc.constantFrom<[string, number] | null>(
      ["GenuineIntel", 6],
      ["AuthenticAMD", 0x17],
      ["AuthenticAMD", 0x16],
      ["HygonGenuine", 0x18],
      null,
    ),
    shape: fc.array(fc.integer({ min: 0, max: 1_000_000 }), { minLength: 40, maxLength: 40 }),
    acs: fc.array(
      fc.constantFrom<number | null | undefined>(
        0,
        0x1d,
        0x11,
        0x04,
        0x08,
        0x20,
        0x53,
        null,
        undefined,
      ),
      { minLength: 64, maxLength: 64 },
    ),
  })
  .map(({ hbs, rep, repAtZero, cpu, shape, acs }) => {
    const functions: FunctionDescription[] = [];
    let bus = 0;
    let r = 0;
    const rnd = () => shape[r++ % shape.length]!;
    let a = 0;
    const acsOf = () => {
      const v = acs[a++ % acs.length];
      return v === undefined ? {} : { acs: v === null ? null : { cap: 0x5f, ctrl: v } };
    };
    const ep = (b: number, parent: string | null, fns: number, vfs: number) => {
      for (let f = 0; f < fns; f++) {
        const bdf = `0000:${hex2(b)}:00.${f}`;
        functions.push({
          bdf,
          parent,
          vendor: 0x15b3,
          device: 0x1021,
          classCode: 0x020700,
          headerType: 0,
          pcieType: "endpoint",
          multifunction: fns > 1,
          ...acsOf(),
        });
        if (f === 0)
          for (let v = 0; v < vfs; v++)
            functions.push({
              bdf: `0000:${hex2(b)}:01.${v}`,
              parent,
              vendor: 0x15b3,
              device: 0x101e,
              classCode: 0x020700,
              headerType: 0,
              pcieType: "endpoint",
              physfn: bdf,
              acs: null,
            });
      }
    };
    const bridge = (
      bdf: string,
      parent: string | null,
      type: "root-port" | "upstream-port" | "downstream-port",
    ) => {
      functions.push({
        bdf,
        parent,
        vendor: 0x1000,
        device: 0xc030,
        classCode: 0x060400,
        headerType: 1,
        pcieType: type,
        ...acsOf(),
      });
    };
    const subtree = (parent: string, depth: number) => {
      const kind = rnd() % 3;
      const b = ++bus;
      if (kind === 0 || depth > 1 || bus > 200) ep(b, parent, 1 + (rnd() % 3), rnd() % 3);
      else {
        const usp = `0000:${hex2(b)}:00.0`;
        bridge(usp, parent, "upstream-port");
        const dsb = ++bus;
        const n = 1 + (rnd() % 3);
        for (let d = 0; d < n; d++) {
          const dsp = `0000:${hex2(dsb)}:${hex2(d)}.0`;
          bridge(dsp, usp, "downstream-port");
          subtree(dsp, depth + 1);
        }
      }
    };
    const hostBridges = [];
    for (let h = 0; h < hbs; h++) {
      const root = bus === 0 && h === 0 ? 0 : ++bus;
      hostBridges.push({ domain: 0, bus: root });
      if (repAtZero[h])
        functions.push({
          bdf: `0000:${hex2(root)}:00.0`,
          parent: null,
          vendor: 0x8086,
          device: rep[h]!,
          classCode: 0x060000,
          headerType: 0,
          pcieType: null,
          acs: null,
        });
      const rps = 1 + (rnd() % 3);
      for (let p = 0; p < rps; p++) {
        const rp = `0000:${hex2(root)}:${hex2(p + 1)}.0`;
        bridge(rp, null, "root-port");
        subtree(rp, 0);
      }
      if (rnd() % 2) ep(root, null, 1, 0); // an RCiEP-like function at 00:00.x of the root bus? keep at dev 0
    }
    return {
      schemaVersion: 1 as const,
      ...(cpu ? { cpu: { vendor: cpu[0], family: cpu[1] } } : {}),
      hostBridges,
      functions: dedupe(functions),
    };
  });

function dedupe(fns: FunctionDescription[]): FunctionDescription[] {
  const seen = new Set<string>();
  return fns.filter((f) => {
    if (seen.has(f.bdf)) return false;
    seen.add(f.bdf);
    return true;
  });
}
