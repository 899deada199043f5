// bench/decode-profile.ts (npm run bench:decode-profile): where one engine decode step's GPU time goes, per op
// family, at batch 1 / 8 / 64 (gpt-oss-20b shape, random BF16 weights, --layers N), and what the host costs.
//
// Method (GPU). Each measured decode step: LocalModelRunner uploads the step's metadata and sampling inputs (each
// upload waits for its copy), then its afterUpload hook enqueues a device-side spin (bf16 4096x4096 matmuls,
// --spin-ms 20 worth), so the host enqueues the whole step while the GPU is still busy with the spin. Every addon op
// the step calls is wrapped: a device-side profile mark (native profileMark: a timing event on the compute stream)
// before it names the family the following GPU time belongs to (the MoE op marks its router, experts and combine
// inside), so the time between marks is pure GPU time of back-to-back kernels. The host side: enqueue time from the
// spin to the sampling op's return (the step's readback comes after), kernel launches counted by the addon
// (launchCount) and addon op calls; an op call that takes more than --sync-ms (1) on the host while the spin runs
// waited for the device (a host synchronisation inside the step): listed by name. If the host enqueue outlasts the
// spin, the GPU times include host gaps: the JSON says so (hostAhead false) and the table warns.
// CPU (a smoke run: tiny preset, test/cpu/bench-decode-profile.test.ts): no spin; each op's host time is its time.
// Usage: npm run bench:decode-profile -- [--layers N] [--preset gpt-oss-20b] [--batches 1,8,64] [--steps 8]
//        [--prompt 128] [--spin-ms 20] [--sync-ms 1] [--json out.json]
import { writeFileSync } from 'node:fs';
import { Tensor, synchronize } from '../src/tensor.ts';
import { defaultDevice, deviceIndex, native } from '../src/native.ts';
import { presetConfig, type PresetName } from '../src/model/config.ts';
import { GptOssModel } from '../src/model/gptoss.ts';
import { DecoderLayer } from '../src/model/layer.ts';
import { createEngine } from '../src/inference/engine.ts';
import { LocalModelRunner, type StepInput } from '../src/inference/model-runner.ts';
import { matmul } from '../src/ops/gemm.ts';
import { mulberry32 } from '../src/data/synthetic.ts';

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
const spinMs = num('spin-ms', 20);
const syncMs = num('sync-ms', 1, 1e9); // the CPU's ops all "wait": no sync detection there
const jsonIdx = process.argv.indexOf('--json');
const jsonPath = jsonIdx >= 0 ? process.argv[jsonIdx + 1] ?? '' : '';

/** Families in table order (plus any op not listed, under its own name). */
const FAMILIES = ['embedding', 'rmsnorm', 'qkv GEMM', 'rope', 'kv write', 'paged attention', 'o_proj', 'residual add', 'moe router', 'moe experts', 'moe combine', 'moe (whole op)', 'LM head', 'row gather', 'sampling'];

/** The phase of the model the op runs in (set by wrapped model methods), which tells a GEMM's family. */
let phase: 'embed' | 'attn' | 'out' | 'head' | 'other' = 'other';
function family(op: string): string {
  switch (op) {
    case 'rmsnormForward':
      return 'rmsnorm';
    case 'matmul':
      return phase === 'attn' ? 'qkv GEMM' : phase === 'out' ? 'o_proj' : phase === 'head' ? 'LM head' : 'GEMM (other)';
    case 'ropeQkvSplit':
    case 'ropeForward':
      return 'rope';
    case 'scatterRows':
      return 'kv write';
    case 'pagedAttention':
      return 'paged attention';
    case 'elementwiseAdd':
      return 'residual add';
    case 'moeForward':
      return cpu ? 'moe (whole op)' : 'moe router'; // on a GPU the op marks 'moe experts' and 'moe combine' itself
    case 'embeddingForward':
      return phase === 'embed' ? 'embedding' : 'row gather';
    case 'sampleRows':
      return 'sampling';
    default:
      return op;
  }
}

// ---- instrumentation -------------------------------------------------------------------------------------------
interface StepRecord {
  gpuMs: Map<string, number>;
  hostEnqueueMs: number;
  spinGpuMs: number;
  launches: number;
  opCalls: number;
  syncs: { op: string; family: string; hostMs: number }[];
}
let measuring = false;
let current: StepRecord | null = null;
let stepT0 = 0;
let launch0 = 0;
const ops = native().ops as unknown as Record<string, (...a: unknown[]) => unknown>;
const wrapped = ['rmsnormForward', 'matmul', 'ropeQkvSplit', 'ropeForward', 'scatterRows', 'pagedAttention', 'elementwiseAdd', 'elementwiseCast', 'moeForward', 'embeddingForward', 'sampleRows', 'fromBuffer', 'empty'];
for (const name of wrapped) {
  const orig = ops[name]!;
  ops[name] = function (this: unknown, ...a: unknown[]) {
    if (!measuring || !current) return orig.apply(this, a);
    const fam = family(name);
    if (!cpu) native().ops.profileMark(dev, fam);
    current.opCalls++;
    const t0 = performance.now();
    const r = orig.apply(this, a);
    const ms = performance.now() - t0;
    if (cpu) current.gpuMs.set(fam, (current.gpuMs.get(fam) ?? 0) + ms);
    if (ms > syncMs) current.syncs.push({ op: name, family: fam, hostMs: ms });
    if (name === 'sampleRows') endStep();
    return r;
  };
}
function withPhase<T extends object>(proto: T, method: string, p: typeof phase): void {
  const rec = proto as unknown as Record<string, (...a: unknown[]) => unknown>;
  const orig = rec[method]!;
  rec[method] = function (this: unknown, ...a: unknown[]) {
    const prev = phase;
    phase = p;
    try {
      return orig.apply(this, a);
    } finally {
      phase = prev;
    }
  };
}
withPhase(DecoderLayer.prototype, 'cachedAttention', 'attn');
withPhase(DecoderLayer.prototype, 'outputAndMoe', 'out');
withPhase(GptOssModel.prototype, 'embed', 'embed');
withPhase(GptOssModel.prototype, 'logits', 'head');

const records: StepRecord[] = [];
let spin: (() => void) | null = null;

function beginStep(s: StepInput): void {
  if (!measuring || s.tokens.length !== s.contextLens.length) return; // decode-only steps only
  current = { gpuMs: new Map(), hostEnqueueMs: 0, spinGpuMs: 0, launches: 0, opCalls: 0, syncs: [] };
  if (!cpu) {
    native().ops.profileEnable(dev, true);
    native().ops.profileMark(dev, 'spin');
    // The spin's matmuls go through the wrapped ops: with no step current they are neither marked nor counted, so
    // their GPU time stays in the 'spin' segment.
    const step = current;
    current = null;
    spin!();
    current = step;
  }
  launch0 = native().ops.launchCount();
  stepT0 = performance.now();
}

function endStep(): void {
  const r = current!;
  current = null;
  r.hostEnqueueMs = performance.now() - stepT0;
  r.launches = native().ops.launchCount() - launch0;
  if (!cpu) {
    native().ops.profileMark(dev, 'end');
    for (const seg of native().ops.profileTake(dev)) {
      if (seg.name === 'spin') r.spinGpuMs += seg.ms;
      else r.gpuMs.set(seg.name, (r.gpuMs.get(seg.name) ?? 0) + seg.ms);
    }
    native().ops.profileEnable(dev, false);
  }
  records.push(r);
}

/** Enqueues about spinMs of GPU work (bf16 GEMMs into one output buffer). */
function makeSpin(): () => void {
  const n = 4096;
  const x = Tensor.from(new Float32Array(n * n).fill(1e-3), [n, n], { device, dtype: 'bf16' });
  const y = Tensor.empty([n, n], { device, dtype: 'bf16' });
  const once = (): void => void matmul(x, x, { out: y });
  for (let i = 0; i < 3; i++) once();
  synchronize(device);
  const t0 = performance.now();
  for (let i = 0; i < 10; i++) once();
  synchronize(device);
  const per = (performance.now() - t0) / 10;
  const count = Math.max(1, Math.ceil(spinMs / per));
  return () => {
    for (let i = 0; i < count; i++) once();
  };
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
  if (!cpu) spin = makeSpin();
  const r = mulberry32(7);
  const rows: Row[] = [];
  for (const B of batches) {
    const reqs = Array.from({ length: B }, (_, i) => ({ prompt: Array.from({ length: promptLen }, () => Math.floor(r() * CFG.vocabSize)), maxNewTokens: 3 + steps, temperature: 1, seed: i, stopTokens: [] }));
    runner.hooks.afterUpload = beginStep; // not measuring: a no-op
    await engine.generate(reqs.map((q) => ({ ...q, maxNewTokens: 3 }))); // warm-up at this batch (allocator, cuBLAS)
    records.length = 0;
    // Steps: one prefill (not measured), then 2 + steps decodes; the first two decodes are warm-up.
    let decodes = 0;
    runner.hooks.afterUpload = (s) => {
      if (s.tokens.length === s.contextLens.length && ++decodes > 2) measuring = true;
      beginStep(s);
    };
    await engine.generate(reqs);
    measuring = false;
    const n = records.length;
    if (n === 0) throw new Error(`bench:decode-profile: batch ${B}: no decode step was measured`);
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
      hostAhead: cpu || records.every((x) => x.hostEnqueueMs < x.spinGpuMs),
      launchesPerStep: mean((x) => x.launches),
      opCallsPerStep: mean((x) => x.opCalls),
      syncs: records.flatMap((x) => x.syncs),
    });
  }
  engine.dispose();
  model.dispose();
  print(rows);
  if (jsonPath) {
    writeFileSync(jsonPath, JSON.stringify({ device: cpu ? 'cpu' : native().ops.deviceName(dev), preset: presetName, layers: CFG.numLayers, prompt: promptLen, spinMs, syncMs: cpu ? null : syncMs, rows }, null, 2));
  }
}

function print(rows: Row[]): void {
  const fams = [...FAMILIES.filter((f) => rows.some((r) => f in r.familyMs)), ...new Set(rows.flatMap((r) => Object.keys(r.familyMs)).filter((f) => !FAMILIES.includes(f)))];
  const unit = cpu ? 'host ms (CPU)' : 'GPU ms';
  console.log(`decode step profile: ${presetName}, ${CFG.numLayers} layers, prompt ${promptLen}, ${cpu ? 'cpu' : native().ops.deviceName(dev)}; ${unit} per step`);
  console.log(`| family | ${rows.map((r) => `batch ${r.batch}`).join(' | ')} |`);
  console.log(`| --- | ${rows.map(() => '---:').join(' | ')} |`);
  for (const f of fams) console.log(`| ${f} | ${rows.map((r) => (r.familyMs[f] ?? 0).toFixed(3)).join(' | ')} |`);
  console.log(`| **total ${unit}** | ${rows.map((r) => r.gpuMsPerStep.toFixed(3)).join(' | ')} |`);
  console.log(`| tok/s at that time | ${rows.map((r) => ((1000 * r.batch) / r.gpuMsPerStep).toFixed(0)).join(' | ')} |`);
  console.log(`| host enqueue ms | ${rows.map((r) => r.hostEnqueueMs.toFixed(3)).join(' | ')} |`);
  console.log(`| kernel launches | ${rows.map((r) => r.launchesPerStep.toFixed(0)).join(' | ')} |`);
  console.log(`| addon op calls | ${rows.map((r) => r.opCallsPerStep.toFixed(0)).join(' | ')} |`);
  for (const r of rows) {
    if (!r.hostAhead) console.log(`warning: batch ${r.batch}: the host enqueue (${r.hostEnqueueMs.toFixed(2)} ms) outlasted the spin (${r.spinGpuMs.toFixed(2)} ms): raise --spin-ms`);
    const bad = new Map<string, number>();
    for (const s of r.syncs) bad.set(s.op, Math.max(bad.get(s.op) ?? 0, s.hostMs));
    if (!cpu) console.log(`batch ${r.batch}: host synchronisations inside the step: ${bad.size ? [...bad].map(([op, ms]) => `${op} (up to ${ms.toFixed(2)} ms)`).join(', ') : 'none'}`);
  }
}

await main();
