// bench/decode-profile.ts (npm run bench:decode-profile): where one engine decode step's GPU time goes, per op
// family, at batch 1 / 8 / 64 (gpt-oss-20b shape, random BF16 weights, --layers N), and what the host costs.
// --phase prefill profiles the prefill step instead: B fresh prompts of --prompt tokens (new ones each time, so the
// prefix cache never hits), one output token, --steps of them measured after one warm-up (the batch-1 time to the
// first token is this step: at 128 tokens it reads every expert's weights once).
//
// Method (GPU; bench/op-profile.ts, shared with the training step's --profile). Each measured decode step:
// LocalModelRunner uploads the step's metadata and sampling inputs (each upload waits for its copy), then its
// afterUpload hook opens a profiler region, which enqueues a device-side spin (bf16 4096x4096 matmuls, --spin-ms 20
// worth), so the host enqueues the whole step while the GPU is still busy with the spin. Every addon op the step
// calls is wrapped: a device-side profile mark (native profileMark: a timing event on the compute stream) before it
// names the family the following GPU time belongs to (the MoE op marks its router, experts and combine inside), so
// the time between marks is pure GPU time of back-to-back kernels. The host side: enqueue time from the spin to the
// sampling op's return (the step's readback comes after), kernel launches counted by the addon (launchCount) and
// addon op calls; an op call that takes more than --sync-ms (1) on the host waited for the device (a host
// synchronisation inside the step): listed by name. If the host fell behind the GPU at any mark (op-profile's lead
// check), the GPU times include host gaps: the JSON says so (hostAhead false) and the table warns.
// CPU (a smoke run: tiny preset, test/cpu/bench-decode-profile.test.ts): no spin; each op's host time is its time.
// Usage: npm run bench:decode-profile -- [--layers N] [--preset gpt-oss-20b] [--batches 1,8,64] [--steps 8]
//        [--prompt 128] [--phase decode|prefill] [--spin-ms 20] [--sync-ms 1] [--json out.json]
import { writeFileSync } from 'node:fs';
import { defaultDevice, deviceIndex, native } from '../src/native.ts';
import { presetConfig, type PresetName } from '../src/model/config.ts';
import { GptOssModel } from '../src/model/gptoss.ts';
import { DecoderLayer } from '../src/model/layer.ts';
import { createEngine } from '../src/inference/engine.ts';
import { LocalModelRunner, type StepInput } from '../src/inference/model-runner.ts';
import { mulberry32 } from '../src/data/synthetic.ts';
import { OpProfiler } from './op-profile.ts';

const device = process.env.GPTOSS_DEVICE ?? defaultDevice();
const cpu = device === 'cpu';
const dev = cpu ? -1 : deviceIndex(device);
function arg(name: string, gpuDefault: string, cpuDefault = gpuDefault): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : cpu ? cpuDefault : gpuDefault;
}
const num = (name: string, gpuDefault: number, cpuDefault = gpuDefault): number => {
  const v = Number(arg(name, String(gpuDefault), String(cpuDefault)));
  if (!Number.isFinite(v)) throw new Error(`bench:decode-profile: --${name} must be a number`);
  return v;
};
const presetName = arg('preset', 'gpt-oss-20b', 'gpt-oss-tiny-256') as PresetName;
const CFG = presetConfig(presetName, { numLayers: num('layers', presetConfig(presetName).numLayers) });
const batches = arg('batches', '1,8,64', '1,4').split(',').map(Number);
const steps = num('steps', 8, 3);
const promptLen = num('prompt', 128, 8);
const phase = arg('phase', 'decode');
if (phase !== 'decode' && phase !== 'prefill') throw new Error(`bench:decode-profile: --phase must be decode or prefill, got ${phase}`);
const spinMs = num('spin-ms', phase === 'prefill' ? 40 : 20);
const syncMs = num('sync-ms', 1, 1e9); // the CPU's ops all "wait": no sync detection there
const jsonIdx = process.argv.indexOf('--json');
const jsonPath = jsonIdx >= 0 ? process.argv[jsonIdx + 1] ?? '' : '';

/** Families in table order (plus any op not listed, under its own name). */
const FAMILIES = ['embedding', 'rmsnorm', 'qkv GEMM', 'rope', 'kv write', 'paged attention', 'o_proj', 'residual add', 'moe router', 'moe experts', 'moe combine', 'moe (whole op)', 'LM head', 'row gather', 'sampling'];

/** The family of an op call; the phase of the model it runs in (profiler.phase, set by wrapped model methods:
 *  embed, attn, out, head) tells a GEMM's family. */
function family(op: string): string {
  const phase = profiler.phase;
  switch (op) {
    case 'rmsnormForward':
    case 'addRmsnorm': // the post-attention norm with the residual add before it (one op, one kernel when fused)
      return 'rmsnorm';
    case 'matmul':
      return phase === 'attn' ? 'qkv GEMM' : phase === 'out' ? 'o_proj' : phase === 'head' ? 'LM head' : 'GEMM (other)';
    case 'ropeQkvProject': // on CUDA at decode sizes the q/k/v GEMM, the rope and the KV-cache write in one kernel
      return 'qkv GEMM';
    case 'ropeQkvSplit': // without k/v adapters it also writes the KV cache (the paged pools)
    case 'ropeForward':
      return 'rope';
    case 'scatterRows': // the KV-cache write of layers with k/v adapters
      return 'kv write';
    case 'pagedAttention':
      return 'paged attention';
    case 'elementwiseAdd':
      return 'residual add';
    case 'moeForward':
      // on a GPU the op marks 'moe experts' and 'moe combine' itself; its first part, 'moe router', holds the
      // residual add + post-attention norm too (moeForward's preNorm: in the fused router's launch at decode sizes)
      return cpu ? 'moe (whole op)' : 'moe router';
    case 'embeddingForward':
      return phase === 'embed' ? 'embedding' : 'row gather';
    case 'sampleRows':
      return 'sampling';
    default:
      return op;
  }
}

// ---- instrumentation (bench/op-profile.ts) ---------------------------------------------------------------------
interface StepRecord {
  gpuMs: Map<string, number>;
  hostEnqueueMs: number;
  spinGpuMs: number;
  hostAhead: boolean;
  launches: number;
  opCalls: number;
  syncs: { op: string; family: string; hostMs: number }[];
}
let measuring = false;
const profiler = new OpProfiler({
  device,
  ops: ['rmsnormForward', 'addRmsnorm', 'matmul', 'ropeQkvProject', 'ropeQkvSplit', 'ropeForward', 'scatterRows', 'pagedAttention', 'elementwiseAdd', 'elementwiseCast', 'moeForward', 'embeddingForward', 'sampleRows', 'fromBuffer', 'empty'],
  family: (op) => family(op),
  spinMs,
  syncMs,
  afterOp: (op) => {
    if (op === 'sampleRows') endStep();
  },
}).install();
profiler.withScope(DecoderLayer.prototype, 'cachedAttention', 'phase', 'attn');
profiler.withScope(DecoderLayer.prototype, 'outputAndMoe', 'phase', 'out');
profiler.withScope(GptOssModel.prototype, 'embed', 'phase', 'embed');
profiler.withScope(GptOssModel.prototype, 'logits', 'phase', 'head');

const records: StepRecord[] = [];
let inStep = false;

/** A step that only decodes: one query row per sequence. */
const isDecode = (s: StepInput): boolean => s.tokens.length === s.contextLens.length;

function beginStep(s: StepInput): void {
  if (!measuring || isDecode(s) !== (phase === 'decode')) return; // the profiled phase's steps only
  profiler.begin();
  inStep = true;
}

function endStep(): void {
  if (!inStep) return;
  inStep = false;
  const r = profiler.end();
  const gpuMs = new Map<string, number>();
  for (const f of r.families) gpuMs.set(f.family, (gpuMs.get(f.family) ?? 0) + f.ms);
  records.push({ gpuMs, hostEnqueueMs: r.hostMs, spinGpuMs: r.spinGpuMs, hostAhead: r.hostAhead, launches: r.launches, opCalls: r.opCalls, syncs: r.syncs });
}

// ---- run -------------------------------------------------------------------------------------------------------
interface Row {
  batch: number;
  steps: number;
  gpuMsPerStep: number;
  familyMs: Record<string, number>;
  hostEnqueueMs: number;
  spinGpuMs: number;
  hostAhead: boolean;
  launchesPerStep: number;
  opCallsPerStep: number;
  syncs: { op: string; family: string; hostMs: number }[];
}

async function main(): Promise<void> {
  const model = GptOssModel.random(CFG, device, { seed: 1, fast: true, biasStd: 0.02 });
  const engine = await createEngine(model, { blockSize: cpu ? 4 : 16, maxNumSeqs: Math.max(...batches), maxNumBatchedTokens: Math.max(8192, Math.max(...batches) * promptLen), gpuMemoryUtilization: 0.85, numBlocks: cpu ? 512 : undefined });
  const runner = engine.runner as LocalModelRunner;
  const r = mulberry32(7);
  const rows: Row[] = [];
  const prompt = (): number[] => Array.from({ length: promptLen }, () => Math.floor(r() * CFG.vocabSize));
  for (const B of batches) {
    const reqs = Array.from({ length: B }, (_, i) => ({ prompt: prompt(), maxNewTokens: 3 + steps, temperature: 1, seed: i, stopTokens: [] }));
    runner.hooks.afterUpload = beginStep; // not measuring: a no-op
    await engine.generate(reqs.map((q) => ({ ...q, maxNewTokens: 3 }))); // warm-up at this batch (allocator, cuBLAS)
    records.length = 0;
    if (phase === 'prefill') {
      // Each measured step: B prompts never seen before (no prefix-cache hit), one output token.
      measuring = true;
      for (let k = 0; k < steps; k++) await engine.generate(reqs.map((q) => ({ ...q, prompt: prompt(), maxNewTokens: 1 })));
    } else {
      // Steps: one prefill (not measured), then 2 + steps decodes; the first two decodes are warm-up.
      let decodes = 0;
      runner.hooks.afterUpload = (s) => {
        if (isDecode(s) && ++decodes > 2) measuring = true;
        beginStep(s);
      };
      await engine.generate(reqs);
    }
    measuring = false;
    const n = records.length;
    if (n === 0) throw new Error(`bench:decode-profile: batch ${B}: no ${phase} step was measured`);
    const familyMs: Record<string, number> = {};
    for (const rec of records) for (const [k, v] of rec.gpuMs) familyMs[k] = (familyMs[k] ?? 0) + v / n;
    const mean = (f: (x: StepRecord) => number): number => records.reduce((a, x) => a + f(x), 0) / n;
    const gpu = Object.values(familyMs).reduce((a, b) => a + b, 0);
    const spinGpu = mean((x) => x.spinGpuMs);
    rows.push({
      batch: B,
      steps: n,
      gpuMsPerStep: gpu,
      familyMs,
      hostEnqueueMs: mean((x) => x.hostEnqueueMs),
      spinGpuMs: spinGpu,
      hostAhead: records.every((x) => x.hostAhead),
      launchesPerStep: mean((x) => x.launches),
      opCallsPerStep: mean((x) => x.opCalls),
      syncs: records.flatMap((x) => x.syncs),
    });
  }
  engine.dispose();
  model.dispose();
  print(rows);
  if (jsonPath) {
    writeFileSync(jsonPath, JSON.stringify({ device: cpu ? 'cpu' : native().ops.deviceName(dev), phase, preset: presetName, layers: CFG.numLayers, prompt: promptLen, spinMs, syncMs: cpu ? null : syncMs, rows }, null, 2));
  }
}

function print(rows: Row[]): void {
  const fams = [...FAMILIES.filter((f) => rows.some((r) => f in r.familyMs)), ...new Set(rows.flatMap((r) => Object.keys(r.familyMs)).filter((f) => !FAMILIES.includes(f)))];
  const unit = cpu ? 'host ms (CPU)' : 'GPU ms';
  console.log(`${phase} step profile: ${presetName}, ${CFG.numLayers} layers, prompt ${promptLen}, ${cpu ? 'cpu' : native().ops.deviceName(dev)}; ${unit} per step`);
  console.log(`| family | ${rows.map((r) => `batch ${r.batch}`).join(' | ')} |`);
  console.log(`| --- | ${rows.map(() => '---:').join(' | ')} |`);
  for (const f of fams) console.log(`| ${f} | ${rows.map((r) => (r.familyMs[f] ?? 0).toFixed(3)).join(' | ')} |`);
  console.log(`| **total ${unit}** | ${rows.map((r) => r.gpuMsPerStep.toFixed(3)).join(' | ')} |`);
  console.log(`| tok/s at that time | ${rows.map((r) => ((1000 * r.batch) / r.gpuMsPerStep).toFixed(0)).join(' | ')} |`);
  console.log(`| host enqueue ms | ${rows.map((r) => r.hostEnqueueMs.toFixed(3)).join(' | ')} |`);
  console.log(`| kernel launches | ${rows.map((r) => r.launchesPerStep.toFixed(0)).join(' | ')} |`);
  console.log(`| addon op calls | ${rows.map((r) => r.opCallsPerStep.toFixed(0)).join(' | ')} |`);
  for (const r of rows) {
    if (!r.hostAhead) console.log(`warning: batch ${r.batch}: the host fell behind the GPU (host enqueue ${r.hostEnqueueMs.toFixed(2)} ms, spin ${r.spinGpuMs.toFixed(2)} ms): GPU times include host gaps; raise --spin-ms`);
    const bad = new Map<string, number>();
    for (const s of r.syncs) bad.set(s.op, Math.max(bad.get(s.op) ?? 0, s.hostMs));
    if (!cpu) console.log(`batch ${r.batch}: host synchronisations inside the step: ${bad.size ? [...bad].map(([op, ms]) => `${op} (up to ${ms.toFixed(2)} ms)`).join(', ') : 'none'}`);
  }
}

await main();
