/**
 * The flagship story as a script (run: `npx tsx examples/scripts/rdma-into-hbm.ts`): a process on
 * the Gaudi2 server exports 2 MiB of HBM, a second process registers it on the ConnectX-7 next to
 * the accelerator, a workstation RDMA-writes into it, and the bytes are checked. Every kernel call
 * that fails throws an ErrnoError with the errno and the kernel's reason.
 */
import {
  hostMrRead,
  hostMrWrite,
  IBV_ACCESS_LOCAL_WRITE,
  IBV_ACCESS_REMOTE_READ,
  IBV_ACCESS_REMOTE_WRITE,
  loadInput,
  must,
  patternBytes,
  SimMachine,
} from "../../src/index.ts";

const MiB = 1n << 20n;
const here = (p: string) => new URL(p, import.meta.url).pathname;

export async function main(log: (line: string) => void = console.log): Promise<boolean> {
  const server = new SimMachine(await loadInput([here("../machines/flagship.yaml")]), {
    name: "server",
  });
  const peer = new SimMachine(await loadInput([here("../machines/workstation.yaml")]), {
    name: "peer",
    tracer: server.tracer,
  });

  // the trainer: allocate HBM on accel0 and export it as a dma-buf
  const trainer = server.process("trainer");
  const accel = trainer.open("/dev/accel/accel0");
  const { va } = trainer.accelAlloc(accel, 2n * MiB);
  const buf = trainer.accelExport(accel, { addr: va, size: 2n * MiB });

  // the RDMA service: receive the fd, register it on mlx5_0
  const svc = server.process("rdma-svc");
  const sbuf = trainer.sendFd(buf, svc);
  const ctx = svc.ibv(svc.open("/dev/infiniband/uverbs0"));
  const pd = ctx.allocPd();
  const access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
  const hbm = must(ctx.regDmabufMr(pd, 0n, 2n * MiB, 0n, sbuf, access), "ibv_reg_dmabuf_mr");
  const sq = ctx.createQp(pd);

  // the remote peer: a host buffer with a pattern, RDMA WRITE into the HBM MR
  const client = peer.process("client");
  const pctx = client.ibv(client.open("/dev/infiniband/uverbs0"));
  const ppd = pctx.allocPd();
  const src = must(pctx.regMr(ppd, 2n * MiB, IBV_ACCESS_LOCAL_WRITE), "ibv_reg_mr");
  const back = must(pctx.regMr(ppd, 2n * MiB, IBV_ACCESS_LOCAL_WRITE), "ibv_reg_mr");
  const data = patternBytes(2021, Number(2n * MiB));
  hostMrWrite(src, 0n, data);
  const cq = pctx.createQp(ppd);
  cq.connect(sq);
  const wr = { length: 2n * MiB, remoteAddr: hbm.iova, rkey: hbm.rkey };
  const w = cq.postWrite({ ...wr, local: src, localAddr: src.iova });
  log(`RDMA WRITE: ${w.status}, ${w.byteLen} bytes`);
  const r = cq.postRead({ ...wr, local: back, localAddr: back.iova });
  log(`RDMA READ:  ${r.status}, ${r.byteLen} bytes`);
  const same = Buffer.compare(hostMrRead(back, 0n, data.length), data) === 0;
  log(`read back ${same ? "equals" : "DIFFERS from"} what was written`);

  for (const p of [svc, trainer]) p.exit();
  client.exit();
  const leaks = [...server.leaks(), ...peer.leaks()];
  log(leaks.length === 0 ? "nothing leaked" : `${leaks.length} leak(s)`);
  return (
    w.status === "IBV_WC_SUCCESS" && r.status === "IBV_WC_SUCCESS" && same && leaks.length === 0
  );
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().then((ok) => {
    process.exitCode = ok ? 0 : 1;
  });
}
