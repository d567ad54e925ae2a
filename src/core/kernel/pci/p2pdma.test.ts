/**
 * The numbered test vectors #1–#49 of the P2PDMA spec (/work/shared/specs/p2pdma-iommu-dma.md §10,
 * topologies A–E), plus the cache (§1.8), hint-list (§1.7), CPU (§1.5) and host-bridge (§1.6)
 * rules. Expected values are the spec's; kernel message texts are those of drivers/pci/p2pdma.c
 * (identical in 6.1.192, per the oracle, and in the PCI tree the spec calls P-new).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AMD_ZEN, type Topo, topo } from "../../../../test/support/topology.ts";
import type { CpuDescription, MachineDescription, PciFunction } from "../../hw/machine.ts";
import { buildMachine } from "../../hw/machine.ts";
import {
  acsHintList,
  cpuSupportsP2pdma,
  hostBridgeRepresentative,
  MapTypeCache,
  P2pdma,
  type P2pMapType,
  type PciView,
} from "./p2pdma.ts";
import { bootPci } from "./pci-view.ts";

type Profile = "6.1" | "mainline";
const PROFILES: readonly Profile[] = ["6.1", "mainline"];
const BUS: P2pMapType = "bus-address";
const THB: P2pMapType = "through-host-bridge";
const NS: P2pMapType = "not-supported";

const HYGON: CpuDescription = { vendor: "HygonGenuine", family: 0x18 };

// ── topologies of §10 ──────────────────────────────────────────────────────────────────────────

interface AOpts {
  r1?: number;
  a0?: number;
  a1?: number;
  a2?: number;
  r3?: number;
  /** USP ACS control; default: no ACS capability. */
  usp?: number;
  /** EPa ACS control; default: no ACS capability. */
  epa?: number;
  /** vendor:device of 00:00.0, the first function on root bus 00. */
  hb?: string;
  cpu?: CpuDescription;
}

/** Topology A. Names: EPa 03:00.0 (VFs 03:00.4/.5), EPb 04:00.0, EPc0/1 05:00.0/1, EPd 06:00.0, EPe0/1 07:00.0/1, Rx 00:04.0, Ry 00:05.0. */
function topologyA(o: AOpts = {}): Topo {
  const t = topo()
    .hostFn("00:00.0", o.hb ?? "8086:2020")
    .rootPort("00:01.0", { acs: o.r1 ?? 0 })
    .usp("01:00.0", { parent: "00:01.0", acs: o.usp ?? null })
    .dsp("02:00.0", { parent: "01:00.0", acs: o.a0 ?? 0 })
    .dsp("02:01.0", { parent: "01:00.0", acs: o.a1 ?? 0 })
    .dsp("02:02.0", { parent: "01:00.0", acs: o.a2 ?? 0 })
    .ep("03:00.0", { parent: "02:00.0", acs: o.epa ?? null })
    .vf("03:00.4", { pf: "03:00.0" })
    .vf("03:00.5", { pf: "03:00.0" })
    .ep("04:00.0", { parent: "02:01.0" })
    .ep("05:00.0", { parent: "02:02.0" })
    .ep("05:00.1", { parent: "02:02.0" })
    .rootPort("00:02.0", { acs: 0x001d })
    .ep("06:00.0", { parent: "00:02.0" })
    .rootPort("00:03.0", { acs: o.r3 ?? 0x001d })
    .ep("07:00.0", { parent: "00:03.0" })
    .ep("07:00.1", { parent: "00:03.0" })
    .rciep("00:04.0")
    .rciep("00:05.0");
  if (o.cpu) t.cpu(o.cpu);
  return t;
}
const EPa = "03:00.0";
const EPb = "04:00.0";
const EPc0 = "05:00.0";
const EPc1 = "05:00.1";
const EPd = "06:00.0";
const EPe0 = "07:00.0";
const EPe1 = "07:00.1";
const Rx = "00:04.0";
const Ry = "00:05.0";
const PF = "03:00.0";
const VF4 = "03:00.4";
const VF5 = "03:00.5";

/** Topology B: A on HB0 plus a second host bridge, root bus 0000:80, RP 80:01.0 ── EPf 81:00.0. */
function topologyB(hb0: string, hb1: string | ((t: Topo) => Topo), cpu?: CpuDescription): Topo {
  const t = topologyA({ hb: hb0, ...(cpu ? { cpu } : {}) }).hostBridge("0000:80");
  if (typeof hb1 === "string") t.hostFn("80:00.0", hb1).rootPort("80:01.0", { acs: 0 });
  else hb1(t);
  return t.ep("81:00.0", { parent: "80:01.0" });
}
const EPf = "81:00.0";

/** Topology C: a switch cascade under RP1; every port has ACS, control 0 unless set. */
function topologyC(p = 0, q = 0): Topo {
  return topo()
    .hostFn("00:00.0", "8086:2020")
    .rootPort("00:01.0", { acs: 0 })
    .usp("01:00.0", { parent: "00:01.0", acs: 0 }) // USP1
    .dsp("02:00.0", { parent: "01:00.0", acs: p }) // DSP1a
    .usp("03:00.0", { parent: "02:00.0", acs: 0 }) // USP2
    .dsp("04:00.0", { parent: "03:00.0", acs: 0 }) // DSP2a
    .ep("05:00.0", { parent: "04:00.0" }) // X
    .dsp("04:01.0", { parent: "03:00.0", acs: 0 }) // DSP2b
    .ep("06:00.0", { parent: "04:01.0" }) // Y
    .dsp("02:01.0", { parent: "01:00.0", acs: q }) // DSP1b
    .ep("07:00.0", { parent: "02:01.0" }); // Z
}
const X = "05:00.0";
const Y = "06:00.0";
const Z = "07:00.0";

/** Topology E: C below a switch under RP2, Q behind a second switch below it, R an RCiEP; Q and R publish p2pmem. */
function topologyE(hb = "8086:2020"): Topo {
  return topo()
    .hostFn("00:00.0", hb)
    .rootPort("00:02.0", { acs: 0 })
    .usp("10:00.0", { parent: "00:02.0", acs: 0 }) // USP_S
    .dsp("11:00.0", { parent: "10:00.0", acs: 0 }) // DSP_S0
    .ep("12:00.0", { parent: "11:00.0" }) // C
    .dsp("11:01.0", { parent: "10:00.0", acs: 0 }) // DSP_S1
    .usp("13:00.0", { parent: "11:01.0", acs: 0 }) // USP_T
    .dsp("14:00.0", { parent: "13:00.0", acs: 0 }) // DSP_T0
    .ep("15:00.0", { parent: "14:00.0", p2pmem: true }) // Q
    .rciep("00:04.0", { p2pmem: true }); // R
}
const C = "12:00.0";
const Q = "15:00.0";
const R = "00:04.0";
const DSP_S0 = "11:00.0";

// ── helpers ────────────────────────────────────────────────────────────────────────────────────

function boot(desc: MachineDescription, profile: Profile, cpu?: CpuDescription) {
  const machine = buildMachine({ ...desc, kernel: { profile } });
  const view = bootPci(machine, cpu ? { cpu } : {});
  assert.equal(view.profile.id, profile);
  const f = (bdf: string): PciFunction => {
    const fn = machine.byBdf(bdf);
    assert.ok(fn, `${bdf} is not in the machine`);
    return fn;
  };
  return { machine, view, f };
}

const full = (bdf: string): string => (bdf.length === 7 ? `0000:${bdf}` : bdf);

interface Want {
  map: P2pMapType;
  dist: number;
  /** Redirecting nodes in the kernel's order (the hint list). */
  hits?: readonly string[];
  /** Nodes the kernel tests for redirect, in order. */
  tested?: readonly string[];
}

/** calc() result, and distance_many with that single client (§1.10: dist, or -1 when NS). */
function expectPair(
  t: Topo,
  profile: Profile,
  provider: string,
  client: string,
  want: Want,
  cpu?: CpuDescription,
): void {
  const { view, f } = boot(t.build(), profile, cpu);
  const r = new P2pdma(view).calc(f(provider), f(client), false);
  assert.equal(r.mapType, want.map, "map type");
  assert.equal(r.distance, want.dist, "distance");
  if (want.hits)
    assert.deepEqual(
      r.acsRedirect.map((x) => x.name),
      want.hits.map(full),
      "ACS redirect hits",
    );
  if (want.tested)
    assert.deepEqual(
      r.tested.map((x) => x.name),
      want.tested.map(full),
      "tested nodes",
    );
  const dm = new P2pdma(view).distanceMany(f(provider), [f(client)], false);
  assert.equal(dm, want.map === NS ? -1 : want.dist, "distance_many");
}

/** A verbose single-client distance_many: its result and the lines the kernel prints. */
function verbose(
  t: Topo,
  profile: Profile,
  provider: string,
  client: string,
  cpu?: CpuDescription,
) {
  const { view, f } = boot(t.build(), profile, cpu);
  const k = new P2pdma(view);
  const dm = k.distanceMany(f(provider), [f(client)], true);
  return { dm, log: k.log };
}

// Kernel message texts (drivers/pci/p2pdma.c; "whitelist" in both 6.1.192 and the P-new tree).
const acsWarn = (c: string, p: string) =>
  `pci ${full(c)}: ACS redirect is set between the client and provider (${full(p)})`;
const acsHint = (c: string, list: string) =>
  `pci ${full(c)}: to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir=${list}`;
const hbMiss = (rep: string, id: string) =>
  `pci ${full(rep)}: Host bridge not in P2PDMA whitelist: ${id}`;
const nsWarn = (c: string, p: string) =>
  `pci ${full(c)}: cannot be used for peer-to-peer DMA as the client and provider (${full(p)}) do not share an upstream bridge or whitelisted host bridge`;

/** Both profiles print "whitelist": P-new's p2pdma.c (cd2698d) still says it. */
const wordingOpts = (_profile: Profile) => ({});

/** mulberry32: a tiny deterministic PRNG in [0, 1). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ── Topology A ─────────────────────────────────────────────────────────────────────────────────

describe("§10 Topology A (one host bridge 8086:2020, Intel CPU)", () => {
  for (const profile of PROFILES) {
    describe(`[${profile}]`, () => {
      it("#1 EPa→EPb: common USP, nothing redirects → BUS, 4", () =>
        expectPair(topologyA(), profile, EPa, EPb, {
          map: BUS,
          dist: 4,
          hits: [],
          tested: [EPa, "02:00.0", "01:00.0", EPb, "02:01.0"],
        }));

      it("#2 EPa→EPb, a0=a1=0x001d → THB, 4", () =>
        expectPair(topologyA({ a0: 0x1d, a1: 0x1d }), profile, EPa, EPb, {
          map: THB,
          dist: 4,
          hits: ["02:00.0", "02:01.0"],
        }));

      it("#2 verbose: ACS warning and hint `0000:02:00.0;0000:02:01.0`, nothing else", () => {
        const { dm, log } = verbose(topologyA({ a0: 0x1d, a1: 0x1d }), profile, EPa, EPb);
        assert.equal(dm, 4);
        assert.deepEqual(log, [acsWarn(EPb, EPa), acsHint(EPb, "0000:02:00.0;0000:02:01.0")]);
      });

      it("#3 #2 with HB0 root device 8086:1234 → NS (dm −1)", () =>
        expectPair(topologyA({ a0: 0x1d, a1: 0x1d, hb: "8086:1234" }), profile, EPa, EPb, {
          map: NS,
          dist: 4,
        }));

      it(
        "#3 verbose: ACS warning, hint, allowlist miss 8086:1234 on 00:00.0, NS warning (in that order)",
        wordingOpts(profile),
        () => {
          const { dm, log } = verbose(
            topologyA({ a0: 0x1d, a1: 0x1d, hb: "8086:1234" }),
            profile,
            EPa,
            EPb,
          );
          assert.equal(dm, -1);
          assert.deepEqual(log, [
            acsWarn(EPb, EPa),
            acsHint(EPb, "0000:02:00.0;0000:02:01.0"),
            hbMiss("00:00.0", "8086:1234"),
            nsWarn(EPb, EPa),
          ]);
        },
      );

      it("#4 EPa→EPb, a0=0x0004 (RR only) → THB, 4", () =>
        expectPair(topologyA({ a0: 0x0004 }), profile, EPa, EPb, {
          map: THB,
          dist: 4,
          hits: ["02:00.0"],
        }));

      it("#5 EPa→EPb, a0=0x0008 (CR only) → THB, 4", () =>
        expectPair(topologyA({ a0: 0x0008 }), profile, EPa, EPb, {
          map: THB,
          dist: 4,
          hits: ["02:00.0"],
        }));

      it("#6 EPa→EPb, a1=0x0020 (EC only, client side) → THB, 4", () =>
        expectPair(topologyA({ a1: 0x0020 }), profile, EPa, EPb, {
          map: THB,
          dist: 4,
          hits: ["02:01.0"],
        }));

      it("#7 EPa→EPb, a0=a1=0x0053 (SV+TB+UF+DT) → BUS, 4", () =>
        expectPair(topologyA({ a0: 0x53, a1: 0x53 }), profile, EPa, EPb, {
          map: BUS,
          dist: 4,
          hits: [],
        }));

      it("#8 EPa→EPb, r1=0x001d: RP1 is above the common USP, never tested → BUS, 4", () =>
        expectPair(topologyA({ r1: 0x1d }), profile, EPa, EPb, {
          map: BUS,
          dist: 4,
          tested: [EPa, "02:00.0", "01:00.0", EPb, "02:01.0"],
        }));

      it("#9 EPa→EPb, USP has ACS ctrl 0x0004: common ancestor tested → THB, 4", () =>
        expectPair(topologyA({ usp: 0x0004 }), profile, EPa, EPb, {
          map: THB,
          dist: 4,
          hits: ["01:00.0"],
        }));

      it("#10 EPa→EPb, EPa has ACS ctrl 0x0020: provider itself tested → THB, 4", () =>
        expectPair(topologyA({ epa: 0x0020 }), profile, EPa, EPb, {
          map: THB,
          dist: 4,
          hits: [EPa],
        }));

      it("#11 EPc0→EPc1: common DSP2, 1+1 → BUS, 2", () =>
        expectPair(topologyA(), profile, EPc0, EPc1, { map: BUS, dist: 2 }));

      it("#12 EPc0→EPc1, a2=0x001d: common DSP2 tested → THB, 2", () =>
        expectPair(topologyA({ a2: 0x1d }), profile, EPc0, EPc1, {
          map: THB,
          dist: 2,
          hits: ["02:02.0"],
        }));

      it("#13 EPe0→EPe1, r3=0x001d: common RP3 tested → THB, 2", () =>
        expectPair(topologyA(), profile, EPe0, EPe1, { map: THB, dist: 2, hits: ["00:03.0"] }));

      it("#13 EPe0→EPe1, r3=0 → BUS, 2", () =>
        expectPair(topologyA({ r3: 0 }), profile, EPe0, EPe1, { map: BUS, dist: 2 }));

      it("#14 EPa→EPa → BUS, 0", () =>
        expectPair(topologyA(), profile, EPa, EPa, { map: BUS, dist: 0 }));

      it("#15 EPa→EPa, EPa ACS ctrl 0x000c → THB, 0", () =>
        expectPair(topologyA({ epa: 0x000c }), profile, EPa, EPa, {
          map: THB,
          dist: 0,
          hits: [EPa],
        }));

      it("#15 EPa→EPa, EPa ACS ctrl 0x000c, HB not allowlisted (8086:1234) → NS", () =>
        expectPair(topologyA({ epa: 0x000c, hb: "8086:1234" }), profile, EPa, EPa, {
          map: NS,
          dist: 0,
        }));

      it("#16 PF 03:00.0 → VF 03:00.4: up(VF)=DSP0 → BUS, 2", () =>
        expectPair(topologyA(), profile, PF, VF4, {
          map: BUS,
          dist: 2,
          tested: [PF, "02:00.0", VF4],
        }));

      it("#17 VF 03:00.4 → VF 03:00.5 → BUS, 2", () =>
        expectPair(topologyA(), profile, VF4, VF5, { map: BUS, dist: 2 }));

      it("#18 VF 03:00.4 → EPb: common USP → BUS, 4", () =>
        expectPair(topologyA(), profile, VF4, EPb, {
          map: BUS,
          dist: 4,
          tested: [VF4, "02:00.0", "01:00.0", EPb, "02:01.0"],
        }));

      it("#19 PF→VF, a0=0x001d: common DSP0 tested → THB, 2", () =>
        expectPair(topologyA({ a0: 0x1d }), profile, PF, VF4, {
          map: THB,
          dist: 2,
          hits: ["02:00.0"],
        }));

      it("#20 EPa→EPd: no common ancestor, len 4 + len 2, ACS ignored → THB, 6", () =>
        expectPair(topologyA(), profile, EPa, EPd, { map: THB, dist: 6, hits: [] }));

      it("#21 EPa→EPd, HB0 8086:3c00 (REQ_SAME, same HB) → THB, 6", () =>
        expectPair(topologyA({ hb: "8086:3c00" }), profile, EPa, EPd, { map: THB, dist: 6 }));

      it("#22 EPa→EPd, HB0 8086:1234 → NS (dm −1)", () =>
        expectPair(topologyA({ hb: "8086:1234" }), profile, EPa, EPd, { map: NS, dist: 6 }));

      it("#22 verbose: no allowlist message (warn=false), only the NS warning", () => {
        const { dm, log } = verbose(topologyA({ hb: "8086:1234" }), profile, EPa, EPd);
        assert.equal(dm, -1);
        assert.equal(log.length, 1, log.join("\n"));
        assert.ok(!log.some((l) => l.includes("Host bridge not in")), log.join("\n"));
        assert.ok(log[0]!.startsWith(`pci 0000:06:00.0: cannot be used for peer-to-peer DMA`));
      });

      it("#22 verbose: exact NS warning text", wordingOpts(profile), () => {
        const { log } = verbose(topologyA({ hb: "8086:1234" }), profile, EPa, EPd);
        assert.deepEqual(log, [nsWarn(EPd, EPa)]);
      });

      it("#23 #22 on an AMD family 0x17 CPU → THB, 6", () =>
        expectPair(topologyA({ hb: "8086:1234", cpu: AMD_ZEN }), profile, EPa, EPd, {
          map: THB,
          dist: 6,
        }));

      it("#23 #22 on an AMD family 0x19 CPU → THB, 6", () =>
        expectPair(
          topologyA({ hb: "8086:1234", cpu: { vendor: "AuthenticAMD", family: 0x19 } }),
          profile,
          EPa,
          EPd,
          { map: THB, dist: 6 },
        ));

      it("#24 #22 on Hygon family 0x18 → NS", () =>
        expectPair(topologyA({ hb: "8086:1234", cpu: HYGON }), profile, EPa, EPd, {
          map: NS,
          dist: 6,
        }));

      it("#25 Rx→Ry: two root-bus RCiEPs, 1+1 → THB, 2", () =>
        expectPair(topologyA(), profile, Rx, Ry, { map: THB, dist: 2, tested: [Rx] }));

      it("#25 Rx→Ry on a Q35 host (00.0 = 8086:29c0), Intel → NS (dm −1)", () =>
        expectPair(topologyA({ hb: "8086:29c0" }), profile, Rx, Ry, { map: NS, dist: 2 }));

      it("#25 Rx→Ry on a Q35 host, AMD family 0x17 → THB, 2", () =>
        expectPair(topologyA({ hb: "8086:29c0", cpu: AMD_ZEN }), profile, Rx, Ry, {
          map: THB,
          dist: 2,
        }));

      it("#26 Rx→Rx → BUS, 0", () =>
        expectPair(topologyA(), profile, Rx, Rx, { map: BUS, dist: 0 }));

      it("#27 Rx→EPd: 1 + 2 → THB, 3", () =>
        expectPair(topologyA(), profile, Rx, EPd, { map: THB, dist: 3 }));

      it("#28 EPa→EPb, a0=a1=0x001d, HB0 8086:1234, AMD Zen → THB, 4", () =>
        expectPair(
          topologyA({ a0: 0x1d, a1: 0x1d, hb: "8086:1234", cpu: AMD_ZEN }),
          profile,
          EPa,
          EPb,
          { map: THB, dist: 4, hits: ["02:00.0", "02:01.0"] },
        ));
    });
  }
});

// ── Topology B ─────────────────────────────────────────────────────────────────────────────────

describe("§10 Topology B (two host bridges; EPd on HB0, EPf on HB1)", () => {
  for (const profile of PROFILES) {
    describe(`[${profile}]`, () => {
      it("#29 both representatives 8086:2020 (flags 0) → THB, 4", () =>
        expectPair(topologyB("8086:2020", "8086:2020"), profile, EPd, EPf, { map: THB, dist: 4 }));

      it("#30 both representatives 8086:3c00 (REQ_SAME_HOST_BRIDGE), cross-HB → NS", () =>
        expectPair(topologyB("8086:3c00", "8086:3c00"), profile, EPd, EPf, { map: NS, dist: 4 }));

      it("#31 HB0 8086:2020, HB1 8086:abcd → NS", () =>
        expectPair(topologyB("8086:2020", "8086:abcd"), profile, EPd, EPf, { map: NS, dist: 4 }));

      it("#31 verbose: no allowlist message (warn false)", () => {
        const { dm, log } = verbose(topologyB("8086:2020", "8086:abcd"), profile, EPd, EPf);
        assert.equal(dm, -1);
        assert.equal(log.length, 1, log.join("\n"));
        assert.ok(!log.some((l) => l.includes("Host bridge not in")), log.join("\n"));
      });

      // §1.6: 6.1 uses the same three steps as P-new (Root Port fallback), and has entry 2030.
      it("#32 HB1 has no 80:00.0, first device RP 80:01.0 = 8086:2030: Root Port fallback → THB, 4", () =>
        expectPair(
          topologyB("8086:2020", (t) => t.rootPort("80:01.0", { acs: 0, id: "8086:2030" })),
          profile,
          EPd,
          EPf,
          { map: THB, dist: 4 },
        ));

      // The first device 80:00.2 carries an allowlisted ID on purpose: it must still not count.
      const t33 = () =>
        topologyB("8086:2020", (t) =>
          t.hostFn("80:00.2", "8086:2020").rootPort("80:01.0", { acs: 0, id: "8086:2030" }),
        );
      it("#33 HB1's first device is 80:00.2, not a Root Port: no representative → NS", () =>
        expectPair(t33(), profile, EPd, EPf, { map: NS, dist: 4 }));

      it("#33 ... unless AMD Zen → THB, 4", () =>
        expectPair(t33(), profile, EPd, EPf, { map: THB, dist: 4 }, AMD_ZEN));

      // §1.6: 6.1 has entries 1–10 only, exact (vendor, device) match, no PCI_ANY_ID.
      it(`#34 representatives 1ae0:0042 and 1ae0:00ff (Google, PCI_ANY_ID) → ${profile === "mainline" ? "THB, 4" : "NS (6.1 has no Google entry)"}`, () =>
        expectPair(
          topologyB("1ae0:0042", "1ae0:00ff"),
          profile,
          EPd,
          EPf,
          profile === "mainline" ? { map: THB, dist: 4 } : { map: NS, dist: 4 },
        ));

      it("#35 HB0 10de:2f96, HB1 10de:2f99 (not listed) → NS", () =>
        expectPair(topologyB("10de:2f96", "10de:2f99"), profile, EPd, EPf, { map: NS, dist: 4 }));

      it(`#36 both 1d17:1008 → ${profile === "mainline" ? "THB, 4" : "NS (not in 6.1's entries 1–10)"}`, () =>
        expectPair(
          topologyB("1d17:1008", "1d17:1008"),
          profile,
          EPd,
          EPf,
          profile === "mainline" ? { map: THB, dist: 4 } : { map: NS, dist: 4 },
        ));

      it("#36 both 1d17:1003 (REQ_SAME_HOST_BRIDGE), cross-HB → NS", () =>
        expectPair(topologyB("1d17:1003", "1d17:1003"), profile, EPd, EPf, { map: NS, dist: 4 }));

      it(`#36 same-HB pair (EPa→EPd) under a single 1d17:1003 → ${profile === "mainline" ? "THB, 6" : "NS (6.1)"}`, () =>
        expectPair(
          topologyA({ hb: "1d17:1003" }),
          profile,
          EPa,
          EPd,
          profile === "mainline" ? { map: THB, dist: 6 } : { map: NS, dist: 6 },
        ));
    });
  }
});

// ── Topologies C and D ─────────────────────────────────────────────────────────────────────────

describe("§10 Topology C (switch cascade) and D (conventional PCI)", () => {
  for (const profile of PROFILES) {
    describe(`[${profile}]`, () => {
      it("#37 X→Y: common USP2, 2+2 → BUS, 4", () =>
        expectPair(topologyC(), profile, X, Y, { map: BUS, dist: 4 }));

      it("#37 X→Y with p=0x001d: DSP1a never tested → BUS, 4", () =>
        expectPair(topologyC(0x1d), profile, X, Y, {
          map: BUS,
          dist: 4,
          tested: [X, "04:00.0", "03:00.0", Y, "04:01.0"],
        }));

      it("#38 X→Z: common USP1, distA 4, distB 2 → BUS, 6", () =>
        expectPair(topologyC(), profile, X, Z, { map: BUS, dist: 6 }));

      it("#39 X→Z with p=0x001d: hit DSP1a → THB, 6", () =>
        expectPair(topologyC(0x1d), profile, X, Z, { map: THB, dist: 6, hits: ["02:00.0"] }));

      it("#40 X→Z with q=0x0004: hit DSP1b (client side) → THB, 6", () =>
        expectPair(topologyC(0, 0x0004), profile, X, Z, { map: THB, dist: 6, hits: ["02:01.0"] }));

      it("#41 M→N behind a PCIe-to-PCI bridge: common BR, 1+1 → BUS, 2", () => {
        const d = topo()
          .hostFn("00:00.0", "8086:2020")
          .rootPort("00:1c.0", { acs: 0 })
          .pciBridge("01:00.0", { parent: "00:1c.0" })
          .ep("02:01.0", { parent: "01:00.0", pcieType: null })
          .ep("02:02.0", { parent: "01:00.0", pcieType: null });
        expectPair(d, profile, "02:01.0", "02:02.0", { map: BUS, dist: 2 });
      });
    });
  }
});

// ── Topology E ─────────────────────────────────────────────────────────────────────────────────

describe("§10 Topology E (provider selection)", () => {
  for (const profile of PROFILES) {
    describe(`[${profile}]`, () => {
      it("#42 Q→C: common USP_S, 4 + 2 → BUS, 6", () =>
        expectPair(topologyE(), profile, Q, C, { map: BUS, dist: 6 }));

      it("#43 R→C: no common, 1 + 4 → THB, 5", () =>
        expectPair(topologyE(), profile, R, C, { map: THB, dist: 5 }));

      it("#44 find_many([C]) → R (5 < 6)", () => {
        const { view, f } = boot(topologyE().build(), profile);
        const k = new P2pdma(view);
        const { best, candidates } = k.findManyCandidates([f(C)]);
        assert.equal(best, 5);
        assert.deepEqual(
          candidates.map((x) => x.name),
          [full(R)],
        );
        assert.equal(k.findMany([f(C)], prng(44)), f(R));
      });

      it("#45 find_many([C, Q]) → Q (Q: 6 + 0; R: 5 + 7 = 12)", () => {
        const { view, f } = boot(topologyE().build(), profile);
        const k = new P2pdma(view);
        assert.equal(k.distanceMany(f(R), [f(C), f(Q)], false), 12);
        assert.equal(k.distanceMany(f(Q), [f(C), f(Q)], false), 6);
        const { best, candidates } = k.findManyCandidates([f(C), f(Q)]);
        assert.equal(best, 6);
        assert.deepEqual(
          candidates.map((x) => x.name),
          [full(Q)],
        );
        assert.equal(k.findMany([f(C), f(Q)], prng(45)), f(Q));
      });

      it("#46 find_many([C]) with HB0 not allowlisted, Intel: R scores −1 → Q", () => {
        const { view, f } = boot(topologyE("8086:1234").build(), profile);
        const k = new P2pdma(view);
        assert.equal(k.distanceMany(f(R), [f(C)], false), -1);
        const { best, candidates } = k.findManyCandidates([f(C)]);
        assert.equal(best, 6);
        assert.deepEqual(
          candidates.map((x) => x.name),
          [full(Q)],
        );
        assert.equal(k.findMany([f(C)], prng(46)), f(Q));
      });

      it("#47 two providers at equal minimum distance: both candidates, uniform random pick", () => {
        // R2 is a second published RCiEP on root bus 00: R2→C = 1 + 4 = 5, like R.
        const { view, f } = boot(topologyE().rciep("00:05.0", { p2pmem: true }).build(), profile);
        const k = new P2pdma(view);
        const { best, candidates } = k.findManyCandidates([f(C)]);
        assert.equal(best, 5);
        assert.deepEqual(candidates.map((x) => x.name).sort(), [full(R), "0000:00:05.0"]);
        const random = prng(47);
        const counts = new Map<string, number>();
        const draws = 400;
        for (let i = 0; i < draws; i++) {
          const pick = k.findMany([f(C)], random);
          assert.ok(pick && candidates.includes(pick), `pick ${pick?.name} not in the tie set`);
          counts.set(pick.name, (counts.get(pick.name) ?? 0) + 1);
        }
        for (const c of candidates) {
          const n = counts.get(c.name) ?? 0;
          assert.ok(n > draws * 0.35 && n < draws * 0.65, `${c.name} picked ${n}/${draws} times`);
        }
      });

      it("#48 distance_many(Q, [C, R]) = 6 + 7 = 13", () => {
        const { view, f } = boot(topologyE().build(), profile);
        assert.equal(new P2pdma(view).distanceMany(f(Q), [f(C), f(R)], false), 13);
        assert.equal(new P2pdma(view).distanceMany(f(Q), [f(C), f(R)], true), 13);
      });

      it("#49 distance_many(R, [C, non-PCI device]) = −1", () => {
        const { view, f } = boot(topologyE().build(), profile);
        assert.equal(new P2pdma(view).distanceMany(f(R), [f(C), null], false), -1);
        const k = new P2pdma(view);
        assert.equal(k.distanceMany(f(R), [f(C), null], true), -1);
        assert.ok(
          k.log.some((l) =>
            l.includes("cannot be used for peer-to-peer DMA as it is not a PCI device"),
          ),
          k.log.join("\n"),
        );
      });

      it("§1.10 distance_many with no clients = −1", () => {
        const { view, f } = boot(topologyE().build(), profile);
        assert.equal(new P2pdma(view).distanceMany(f(R), [], true), -1);
      });

      it("§2 an unpublished provider is never a candidate", () => {
        const t = topologyE().rciep("00:05.0", {
          p2pmem: { size: 1n << 20n, available: 1n << 20n, published: false },
        });
        const { view, f } = boot(t.build(), profile);
        const names = new P2pdma(view).findManyCandidates([f(C)]).candidates.map((x) => x.name);
        assert.deepEqual(names, [full(R)]);
      });

      it(`§2 [ver] published state without a pool: ${profile === "mainline" ? "not a candidate (state && pool && published)" : "a candidate (6.1: state && published)"}`, () => {
        // R publishes but has no pool (size 0); Q is the only other provider, at 6.
        const t = topo()
          .hostFn("00:00.0", "8086:2020")
          .rootPort("00:02.0", { acs: 0 })
          .usp("10:00.0", { parent: "00:02.0", acs: 0 })
          .dsp("11:00.0", { parent: "10:00.0", acs: 0 })
          .ep("12:00.0", { parent: "11:00.0" })
          .dsp("11:01.0", { parent: "10:00.0", acs: 0 })
          .usp("13:00.0", { parent: "11:01.0", acs: 0 })
          .dsp("14:00.0", { parent: "13:00.0", acs: 0 })
          .ep("15:00.0", { parent: "14:00.0", p2pmem: true })
          .rciep("00:04.0", { p2pmem: { size: 0n, available: 0n, published: true } });
        const { view, f } = boot(t.build(), profile);
        const { candidates } = new P2pdma(view).findManyCandidates([f(C)]);
        assert.deepEqual(
          candidates.map((x) => x.name),
          [full(profile === "mainline" ? Q : R)],
        );
      });
    });
  }
});

// ── §1.5 / §1.6 helpers ────────────────────────────────────────────────────────────────────────

describe("§1.5 cpu_supports_p2pdma", () => {
  it("AuthenticAMD family ≥ 0x17 only", () => {
    assert.equal(cpuSupportsP2pdma({ vendor: "AuthenticAMD", family: 0x17 }), true);
    assert.equal(cpuSupportsP2pdma({ vendor: "AuthenticAMD", family: 0x1a }), true);
    assert.equal(cpuSupportsP2pdma({ vendor: "AuthenticAMD", family: 0x16 }), false);
    assert.equal(cpuSupportsP2pdma({ vendor: "HygonGenuine", family: 0x18 }), false);
    assert.equal(cpuSupportsP2pdma({ vendor: "GenuineIntel", family: 6 }), false);
  });
});

describe("§1.6 pci_host_bridge_dev (representative)", () => {
  for (const profile of PROFILES) {
    it(`[${profile}] 00.0 first; else a Root Port first; else none`, () => {
      const t = topo()
        .hostFn("00:00.0", "8086:2020")
        .rciep("00:04.0")
        .hostBridge("0000:40")
        .rootPort("40:01.0", { id: "8086:2030" })
        .rootPort("40:02.0")
        .hostBridge("0000:80")
        .hostFn("80:00.2", "8086:2020")
        .rootPort("80:01.0");
      const { view, f } = boot(t.build(), profile);
      assert.equal(hostBridgeRepresentative(view, f("00:04.0")), f("00:00.0"));
      assert.equal(hostBridgeRepresentative(view, f("40:02.0")), f("40:01.0"));
      assert.equal(hostBridgeRepresentative(view, f("80:01.0")), null);
    });
  }
});

// ── §1.7 hint list ─────────────────────────────────────────────────────────────────────────────

describe("§1.7 acsHintList (128-byte seq_buf, `;` joined, final `;` dropped)", () => {
  const names = (n: number) =>
    Array.from({ length: n }, (_, i) => `0000:${(i + 1).toString(16).padStart(2, "0")}:00.0`);

  it("one and two entries", () => {
    assert.equal(acsHintList(["0000:02:00.0"]), "0000:02:00.0");
    assert.equal(acsHintList(["0000:02:00.0", "0000:02:01.0"]), "0000:02:00.0;0000:02:01.0");
  });

  it("9 entries (117 bytes with `;`) fit whole", () => {
    const s = acsHintList(names(9));
    assert.equal(s.length, 9 * 13 - 1);
    assert.equal(s, names(9).join(";"));
  });

  it("10 entries (130 bytes) are cut to the 127 bytes that fit before the NUL", () => {
    const s = acsHintList(names(10));
    assert.equal(s.length, 127);
    assert.equal(s, `${names(9).join(";")};0000:0a:00`);
  });
});

// ── §1.8 map-type cache ────────────────────────────────────────────────────────────────────────

describe("§1.8 map-type cache", () => {
  /** Topology E (HB0 `hb`) whose live ACS words can be changed after boot. */
  function mutable(hb = "8086:2020") {
    const { machine, view: base, f } = boot(topologyE(hb).build(), "mainline");
    const over = new Map<PciFunction, number>();
    const view: PciView = {
      ...base,
      acsCtrl: (fn) => (over.has(fn) ? over.get(fn) : base.acsCtrl(fn)),
    };
    return { machine, view, f, over, k: new P2pdma(view) };
  }

  it("every calc of a provider with p2pdma state writes the cache, verbose or not", () => {
    const { k, f } = mutable();
    assert.equal(k.cache.lookup(f(Q), f(C)), undefined);
    assert.equal(k.distanceMany(f(Q), [f(C)], false), 6);
    assert.equal(k.cache.lookup(f(Q), f(C)), BUS);
    assert.equal(k.distanceMany(f(R), [f(C)], true), 5);
    assert.equal(k.cache.lookup(f(R), f(C)), THB);
  });

  it("a provider without p2pdma state caches nothing, and map_type() says NOT_SUPPORTED", () => {
    const { k, f } = mutable();
    assert.equal(k.distanceMany(f(C), [f(Q)], true), 6);
    assert.equal(k.cache.lookup(f(C), f(Q)), undefined);
    assert.equal(k.mapType(f(C), f(Q)), NS);
  });

  it("map_type() on a miss runs a verbose calc and stores it", () => {
    const { k, f, over } = mutable();
    over.set(f(DSP_S0), 0x1d);
    assert.equal(k.mapType(f(Q), f(C)), THB);
    assert.equal(k.cache.lookup(f(Q), f(C)), THB);
    assert.deepEqual(k.log, [acsWarn(C, Q), acsHint(C, "0000:11:00.0")]);
  });

  it("map_type() reads the cache: an ACS change after the first lookup is not seen", () => {
    const { k, f, over } = mutable();
    assert.equal(k.mapType(f(Q), f(C)), BUS);
    over.set(f(DSP_S0), 0x1d);
    assert.equal(k.mapType(f(Q), f(C)), BUS);
    assert.deepEqual(k.log, []);
  });

  it("distance queries recompute and overwrite the entry; map_type() then sees the new value", () => {
    const { k, f, over } = mutable();
    assert.equal(k.mapType(f(Q), f(C)), BUS);
    over.set(f(DSP_S0), 0x1d);
    assert.equal(k.distanceMany(f(Q), [f(C)], false), 6);
    assert.equal(k.cache.lookup(f(Q), f(C)), THB);
    assert.equal(k.mapType(f(Q), f(C)), THB);
    // and find_many (non-verbose distance_many) refreshes it too
    over.delete(f(DSP_S0));
    k.findManyCandidates([f(C)]);
    assert.equal(k.cache.lookup(f(Q), f(C)), BUS);
  });

  it("a non-verbose distance_many stops at the first unsupported client: later clients are not refreshed", () => {
    // HB0 not allowlisted, Intel: Q→R is NS (no common ancestor).
    const { k, f, over } = mutable("8086:1234");
    assert.equal(k.distanceMany(f(Q), [f(C)], false), 6);
    assert.equal(k.cache.lookup(f(Q), f(C)), BUS);
    over.set(f(DSP_S0), 0x1d); // Q→C would now be NS (redirect + HB miss)
    assert.equal(k.distanceMany(f(Q), [f(R), f(C)], false), -1);
    assert.equal(k.cache.lookup(f(Q), f(R)), NS);
    assert.equal(k.cache.lookup(f(Q), f(C)), BUS, "stale: C was not reached");
    assert.equal(k.distanceMany(f(Q), [f(R), f(C)], true), -1);
    assert.equal(k.cache.lookup(f(Q), f(C)), NS, "verbose walks every client");
  });

  it("key = (domain << 16) | (bus << 8) | devfn; a client reusing a BDF inherits the entry", () => {
    const one = buildMachine(
      topo().hostBridge("0001:00").rciep("0001:00:04.0", { p2pmem: true }).build(),
    );
    const two = buildMachine(
      topo()
        .hostBridge("0001:00")
        .rootPort("0001:00:01.0")
        .ep("0001:02:00.4", { parent: "0001:00:01.0" })
        .build(),
    );
    const renumbered = buildMachine(
      topo()
        .hostBridge("0001:00")
        .rootPort("0001:00:1c.0")
        .ep("0001:02:00.4", { parent: "0001:00:1c.0" })
        .build(),
    );
    const client = two.byBdf("0001:02:00.4")!;
    assert.equal(MapTypeCache.key(client), 0x10204);
    const cache = new MapTypeCache();
    const provider = one.byBdf("0001:00:04.0")!;
    cache.store(provider, client, BUS);
    assert.equal(cache.lookup(provider, renumbered.byBdf("0001:02:00.4")!), BUS);
    cache.release(provider);
    assert.equal(cache.lookup(provider, client), undefined);
  });
});
