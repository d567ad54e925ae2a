/**
 * peerbuf's public API: load a machine, ask the kernel model, run the DMA stack, script
 * processes that export, import and move bytes (SimMachine), or run scenario files.
 *
 * @example
 * import { loadInput, buildMachine, bootPci, explainPair } from "peerbuf";
 * const m = buildMachine(await loadInput(["capture.tar.gz"]));
 * const v = explainPair(bootPci(m), m.byBdf("0000:18:00.0")!, m.byBdf("0000:1a:00.0")!);
 */

export type { Finding, FindingCode, Severity } from "./core/analysis/findings.ts";
export { computeMatrix, matrixFunctions } from "./core/analysis/matrix.ts";
export { explainPair, pairVerdict } from "./core/analysis/p2p.ts";
export { smiLevel } from "./core/analysis/smi.ts";
export { buildTree } from "./core/analysis/tree.ts";
export { InputError, PeerbufError, TopologyError } from "./core/errors.ts";
export {
  parseMachineDocument,
  writeMachineJson,
  writeMachineYaml,
} from "./core/formats/machine-doc.ts";
export type { BusAddr, DmaAddr, Iova, PhysAddr } from "./core/hw/address.ts";
export { formatBdf, parseBdf } from "./core/hw/bdf.ts";
export type { Machine, MachineDescription, PciFunction } from "./core/hw/machine.ts";
export { buildMachine } from "./core/hw/machine.ts";
export { DmaApi } from "./core/kernel/dma/mapping.ts";
export * as dmaBuf from "./core/kernel/dma-buf/index.ts";
export {
  AccelDevice,
  type AccelOptions,
  HL_MEM_OP_ALLOC,
  HL_MEM_OP_EXPORT_DMABUF_FD,
  HL_MEM_OP_MAP,
  HL_MEM_OP_UNMAP,
} from "./core/kernel/drivers/accel.ts";
export {
  hostMrRead,
  hostMrWrite,
  IBV_ACCESS_LOCAL_WRITE,
  IBV_ACCESS_REMOTE_ATOMIC,
  IBV_ACCESS_REMOTE_READ,
  IBV_ACCESS_REMOTE_WRITE,
  type IbvContext,
  type IbvMr,
  type IbvQp,
  RdmaDevice,
  type RdmaOptions,
  type WorkCompletion,
} from "./core/kernel/drivers/rdma.ts";
export { type Leak, type LeakSource, leakReport } from "./core/kernel/leaks.ts";
export { calcMapTypeAndDist, P2pdma } from "./core/kernel/pci/p2pdma.ts";
export { bootPci } from "./core/kernel/pci/pci-view.ts";
export { PROFILES } from "./core/kernel/profile.ts";
export { System } from "./core/kernel/system.ts";
export { type DmaAddrKind, type TraceEvent, Tracer } from "./core/kernel/trace.ts";
export {
  patternBytes,
  runScenario,
  type ScenarioResult,
  type StepResult,
} from "./core/scenario/run-scenario.ts";
export { parseScenario, type Scenario } from "./core/scenario/scenario-doc.ts";
export {
  type Import,
  KernelImporter,
  type KernelImporterOptions,
} from "./core/sim/kernel-importer.ts";
export {
  ErrnoError,
  must,
  SimMachine,
  type SimMachineOptions,
  SimProcess,
  SimUsageError,
} from "./core/sim/sim-machine.ts";
export { loadInput } from "./node/load-input.ts";
