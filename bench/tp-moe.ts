// bench/tp-moe.ts: how to split the MoE of a tensor-parallel engine, measured on one GPU as the work of one rank.
//
//   npm run bench:tp-moe [-- --tp 2,4,8] [--tokens 1,16,64,256,1024,4096] [--json out.json] [--iters N]
//
// gpt-oss-20b shapes (E 32, top-4, hidden 2880, intermediate 2880). Both splits are followed by the same all-reduce
// of [T, H] (not timed here), and both do T·k·I·3·H multiply-adds in all; they differ in how one rank's share runs:
//   intermediate  every rank runs every token's 4 experts on its I/tp slice (E 32, I/tp, top-4): the same work on
//                 every rank whatever the routing (src/model/tensor-parallel.ts does this);
//   experts       rank r owns experts r·E/tp.. whole and runs only the (token, expert) pairs routed to them. Timed as
//                 the rows of the busiest rank under the routing of a random router on random tokens, run as a MoE
//                 of E/tp experts with top-1 (each pair one row) - and as the balanced share T·k/tp for reference.
// A step waits for its slowest rank, so the split to keep is the one whose slowest rank is faster.
import { writeFileSync } from 'node:fs';
import { native } from '../src/native.ts';
import { Tensor, cudaDeviceCount } from '../src/tensor.ts';
import { moeForward, type MoeWeights } from '../src/ops/moe.ts';
import { msPerCall } from './timing.ts';
import { randBits } from './random.ts';

function args() {
  const a = process.argv.slice(2);
  const get = (k: string) => {
    const i = a.indexOf(k);
    return i >= 0 ? a[i + 1] : undefined;
  };
  return { json: get('--json'), tp: get('--tp'), tokens: get('--tokens'), iters: Number(get('--iters') ?? 0) };
}


function weights(E: number, H: number, I: number, device: string, seed: number): MoeWeights {
  const t = (shape: number[], std: number, s: number) => Tensor.from(randBits(shape.reduce((x, y) => x * y, 1), std, seed * 31 + s), shape, { dtype: 'bf16', device });
  return {
    routerW: t([E, H], 1 / Math.sqrt(H), 1),
    routerB: t([E], 0.5, 2),
    gateUpW: t([E, H, 2 * I], 1 / Math.sqrt(H), 3),
    gateUpB: t([E, 2 * I], 0.5, 4),
    downW: t([E, I, H], 1 / Math.sqrt(I), 5),
    downB: t([E, H], 0.5, 6),
  };
}

interface Row {
  tp: number;
  T: number;
  intermediateMs: number;
  expertsBusiestMs: number;
  expertsBalancedMs: number;
  busiestRows: number;
  balancedRows: number;
  faster: 'intermediate' | 'experts';
}

function main() {
  const o = args();
  const gpu = native().features.cuda && cudaDeviceCount() > 0;
  const device = gpu ? 'cuda:0' : 'cpu';
  // Without a GPU: a small shape, so the script runs (and is checked) anywhere.
  const E = gpu ? 32 : 8, k = 4, H = gpu ? 2880 : 128, I = gpu ? 2880 : 128;
  const tps = (o.tp ?? '2,4,8').split(',').map(Number);
  const tokens = (o.tokens ?? (gpu ? '1,16,64,256,1024,4096' : '1,16,64')).split(',').map(Number);
  const name = gpu ? native().ops.deviceName(0) : 'cpu';
  console.log(`tensor-parallel MoE split on ${name}: E ${E}, top-${k}, hidden ${H}, intermediate ${I}; one rank's forward`);

  const time = (iters: number, fn: () => void): number => msPerCall(device, iters, fn);
  const run = (x: Tensor, w: MoeWeights, topK: number) => () => {
    const f = moeForward(x, w, { topK });
    f.y.dispose();
    f.ctx.dispose();
  };

  // The full router decides which experts each token uses (for the busiest rank of the expert split).
  const router = weights(E, H, 8, device, 99);
  const rows: Row[] = [];
  for (const tp of tps) {
    if (E % tp || I % tp) throw new Error(`--tp ${tp} does not divide ${E} experts and intermediate ${I}`);
    const wInter = weights(E, H, I / tp, device, tp);
    const wExperts = weights(E / tp, H, I, device, 100 + tp);
    for (const T of tokens) {
      const iters = o.iters || (gpu ? (T >= 1024 ? 20 : 100) : 3);
      const x = Tensor.from(randBits(T * H, 1, 7 + T), [T, H], { dtype: 'bf16', device });
      const probe = moeForward(x, router, { topK: k });
      const perExpert = [...probe.counts];
      probe.y.dispose();
      probe.ctx.dispose();
      const perRank = Array.from({ length: tp }, (_, r) => perExpert.slice((r * E) / tp, ((r + 1) * E) / tp).reduce((a, b) => a + b, 0));
      const busiestRows = Math.max(...perRank);
      const balancedRows = Math.ceil((T * k) / tp);
      const intermediateMs = time(iters, run(x, wInter, k));
      const rowsOf = (n: number) => Tensor.from(randBits(Math.max(1, n) * H, 1, 11 + n), [Math.max(1, n), H], { dtype: 'bf16', device });
      const xb = rowsOf(busiestRows);
      const xe = rowsOf(balancedRows);
      const expertsBusiestMs = busiestRows === 0 ? 0 : time(iters, run(xb, wExperts, 1));
      const expertsBalancedMs = time(iters, run(xe, wExperts, 1));
      const r: Row = {
        tp, T, intermediateMs, expertsBusiestMs, expertsBalancedMs, busiestRows, balancedRows,
        faster: intermediateMs <= expertsBusiestMs ? 'intermediate' : 'experts',
      };
      rows.push(r);
      console.log(`  tp ${tp} T ${T}: intermediate ${intermediateMs.toFixed(3)} ms; experts busiest rank (${busiestRows} rows) ${expertsBusiestMs.toFixed(3)} ms, balanced (${balancedRows}) ${expertsBalancedMs.toFixed(3)} ms`);
      for (const t of [x, xb, xe]) t.dispose();
    }
    for (const t of [...Object.values(wInter), ...Object.values(wExperts)]) t.dispose();
  }
  for (const t of Object.values(router)) t.dispose();

  console.log('\n| tp | T | intermediate ms | experts: busiest rank ms (rows) | experts: balanced ms (rows) | faster |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    console.log(`| ${r.tp} | ${r.T} | ${r.intermediateMs.toFixed(3)} | ${r.expertsBusiestMs.toFixed(3)} (${r.busiestRows}) | ${r.expertsBalancedMs.toFixed(3)} (${r.balancedRows}) | ${r.faster} |`);
  }
  if (o.json) {
    writeFileSync(o.json, JSON.stringify({ device: name, E, topK: k, hidden: H, intermediate: I, rows }, null, 1));
    console.log(`wrote ${o.json}`);
  }
}

main();
