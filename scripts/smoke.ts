import { buildMachine } from "../src/core/hw/machine.ts";
import { loadInput } from "../src/node/load-input.ts";

for (const p of process.argv.slice(2)) {
  const t = performance.now();
  try {
    const d = await loadInput([p]);
    const m = buildMachine(d);
    console.log(
      p.split("/").slice(-2).join("/"),
      m.functions.length,
      m.hostBridges.length,
      d.cpu?.vendor,
      d.cpu?.family,
      d.iommu?.mode,
      JSON.stringify(d.unknowns),
      (performance.now() - t).toFixed(0) + "ms",
    );
  } catch (e) {
    console.log(p, "ERR", (e as Error).message);
  }
}
