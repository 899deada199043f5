// bench/generate.ts (npm run bench:generate): generation throughput of the engine (src/inference/engine.ts) against
// the old static path (src/inference/generate.ts) and transformers' generate (bench/generate_peer.py), same run.
//
// gpt-oss-20b shape, random BF16 weights (or --preset), random prompt tokens; stop tokens off, so every sequence
// runs to its length.
//   (a) fixed lengths: prompt --prompt (128) tokens, --new (128) new tokens, batches --batches (1,64,256,512):
//       output tokens/s of each side.
//   (b) GRPO-like: --grpo-prompts (256) prompts x --grpo-samples (8) samples, prompt lengths uniform in
//       [--grpo-prompt-min, --grpo-prompt-max] (100-200), output lengths log-normal (median --grpo-median 300,
//       sigma --grpo-sigma 0.8, capped at --grpo-cap 2048) enforced per sequence: the engine gets each sample as a
//       request with its own maxNewTokens (equal prompts share their blocks); the static path runs batches of
//       --static-batch (256) sequences, each until its longest sequence is done (what it does in training). Output
//       tokens/s (drawn lengths only) and the time until the last sequence ends; then the engine-vs-trainer
//       log-prob gap: mean |engine log-prob - GptOssModel.tokenLogprobs| over the first --gap-seqs (64) samples.
// --lora: the same engine with LoRA adapters active (src/model/lora.ts: rank --lora-rank 16, alpha 2x rank, on
// --lora-targets q_proj,k_proj,v_proj,o_proj; B small and non-zero), against the same engine without them, in the
// same run: (a) gains an "engine + LoRA" column and the LoRA/base time ratio (issue 23's target: <= 1.15 at 64-512
// sequences); (b) runs the workload again with the adapters and measures the log-prob gap on that run (engine and
// trainer both applying the adapters).
// --cuda-graphs: (a) also runs a second engine with enforceEager: false (decode steps replayed from CUDA graphs,
// src/inference/cuda-graphs.ts) in the same run, the two engines taking turns on the GPU (sleep/wake): an
// "engine + CUDA graphs" column and its speedup. Both engines then warm up on a full batch of other prompts (3 new
// tokens: the graphs of the batch's bucket get captured there, and no prompt of the measured run is in the prefix
// cache). (b) runs the eager engine only.
// On the CPU the defaults shrink to the tiny preset (a smoke run; test/cpu/bench-generate.test.ts runs it).
// Launcher mode (WORLD_SIZE > 1: `npx gptoss-launch --nproc-per-node N bench/generate.ts [--tp T] ...`): a pool of
// N/T engines of tensor-parallel size T (--tp, default N: one engine over every rank; T must divide N), engine e on
// ranks e*T .. e*T+T-1 (their own sub-group unless one engine spans all; tp 1: each rank a whole engine). Every rank
// draws the same seeded random weights (randomSource: a TP rank draws only what its slices need) or reads --model.
// Each engine takes its share of the same workload: (a) each batch's sequences split evenly over the engines, (b)
// the GRPO-like prompts (with all their samples) split over the engines. The engines start each measurement
// together (a barrier of the engines' first ranks); rank 0 reports the pool's output tokens/s (all engines'
// tokens / the slowest engine's time) and each engine's time, layout ("2 x tp=2") in the header and the JSON. The
// static path, the transformers peer and the log-prob gap are not run there (the output says so); --lora,
// --cuda-graphs, --static-batch(es) and --gap-seqs are refused.
// Usage: npm run bench:generate -- [--layers N] [--preset gpt-oss-20b] [--batches 1,64,256,512] [--no-peer]
//        [--no-static] [--no-fixed] [--no-grpo] [--static-batches K] [--json out.json] [--block-size 16] [--num-blocks N] [--num-sliding-blocks N]
//        [--max-num-seqs 512] [--max-num-batched-tokens 8192] [--gpu-memory-utilization 0.85]
//        [--lora] [--lora-rank 16] [--lora-targets q_proj,k_proj,v_proj,o_proj] [--cuda-graphs] [--router-std S] (random routers drawn with std S)
//        [--scaled-init] (random weights with GPT-2's residual scaling and a unit embedding: see RANDOM_INIT)
//        [--model <dir | hub id>] (a real checkpoint instead of random weights, for the engine, the static path and the
//        transformers peer alike; the model's own shape replaces --preset/--layers: the log-prob gap of part (b) is
//        only meaningful on trained weights)
//        [--heads Q] [--kv-heads KV] (the preset's attention heads overridden)
//        [--batch-invariant] (the whole run in batch-invariant mode, setBatchInvariant: engine, static path and
//        trainer log-probs alike; the log-prob gap then measures what is left of the engine-vs-trainer difference)
//        npx gptoss-launch --nproc-per-node 4 bench/generate.ts --tp 2 [options above] (launcher mode: 2 x tp=2)
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { synchronize, setBatchInvariant } from '../src/tensor.ts';
import { defaultDevice } from '../src/native.ts';
import { presetConfig, type PresetName } from '../src/model/config.ts';
import { GptOssModel } from '../src/model/gptoss.ts';
import { generate as staticGenerate } from '../src/inference/generate.ts';
import { createEngine, type Engine, type EngineStats, type GenerateRequest } from '../src/inference/engine.ts';
import { peerScript } from './peer.ts';
import { mulberry32 } from '../src/data/synthetic.ts';
import { LoraAdapters, LORA_TARGETS, type LoraTarget } from '../src/model/lora.ts';
import { loadModel } from '../src/model/index.ts';
import { resolveModelSource } from '../src/model/hub.ts';
import { readConfigFile } from '../src/model/config.ts';
import { distEnv, initDistributed } from '../src/distributed/launch.ts';
import type { Collectives } from '../src/distributed/collectives.ts';
import type { GroupChannel } from '../src/distributed/tcp-group.ts';
import { randomSource } from '../src/model/param-source.ts';
import type { RandomInitOptions } from '../src/model/weights.ts';
import { createTensorParallelEngine } from '../src/inference/tensor-parallel-runner.ts';

/** This process's device (launcher mode: its rank's, from initDistributed; the same kind as this default). */
let device = process.env.GPTOSS_DEVICE ?? defaultDevice();
const cpu = device === 'cpu';
function arg(name: string, gpuDefault: string, cpuDefault = gpuDefault): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : cpu ? cpuDefault : gpuDefault;
}
const flag = (name: string): boolean => process.argv.includes(`--${name}`);
const num = (name: string, gpuDefault: number, cpuDefault = gpuDefault): number => {
  const v = Number(arg(name, String(gpuDefault), String(cpuDefault)));
  if (!Number.isFinite(v)) throw new Error(`bench:generate: --${name} must be a number`);
  return v;
};

const presetName = arg('preset', 'gpt-oss-20b', 'gpt-oss-tiny-256') as PresetName;
const modelSource = flag('model') ? arg('model', '') : '';
if (flag('model') && !modelSource) throw new Error('bench:generate: --model needs a directory or hub id');
/** A checkpoint's directory (--model; resolved in main), else null: random weights of the preset. */
let modelDir: string | null = null;
let layers = num('layers', presetConfig(presetName).numLayers);
// --heads / --kv-heads: the preset's attention heads overridden (e.g. the tiny preset's 4 / 2 as 8 / 4, so that a CPU
// rehearsal can run tp=4 engines: tp must divide both).
if (modelSource && (flag('heads') || flag('kv-heads'))) throw new Error('bench:generate: --heads / --kv-heads shape random weights; --model brings its own shape');
let CFG = presetConfig(presetName, {
  numLayers: layers,
  numHeads: num('heads', presetConfig(presetName).numHeads),
  numKvHeads: num('kv-heads', presetConfig(presetName).numKvHeads),
});
if (!Number.isInteger(CFG.numHeads) || !Number.isInteger(CFG.numKvHeads) || CFG.numKvHeads < 1 || CFG.numHeads % CFG.numKvHeads !== 0) {
  throw new Error(`bench:generate: --heads ${CFG.numHeads} must be a multiple of --kv-heads ${CFG.numKvHeads}`);
}
let V = CFG.vocabSize;
/** What the tables say the weights are. */
const headsOverridden = flag('heads') || flag('kv-heads');
const weightsLabel = (): string =>
  modelDir ? `checkpoint ${modelSource}` : `${presetName} shape${headsOverridden ? ` (${CFG.numHeads} query / ${CFG.numKvHeads} key-value heads)` : ''}, random BF16 weights${routerStd !== undefined ? ` (router std ${routerStd})` : ''}${scaledInit ? ' (scaled init)' : ''}`;
const batches = arg('batches', '1,64,256,512', '1,4').split(',').map(Number);
const promptLen = num('prompt', 128, 8);
const newTokens = num('new', 128, 8);
const grpo = {
  prompts: num('grpo-prompts', 256, 3),
  samples: num('grpo-samples', 8, 3),
  promptMin: num('grpo-prompt-min', 100, 5),
  promptMax: num('grpo-prompt-max', 200, 12),
  median: num('grpo-median', 300, 6),
  sigma: num('grpo-sigma', 0.8),
  cap: num('grpo-cap', 2048, 24),
};
const staticBatch = num('static-batch', 256, 4);
// The static path on the GRPO-like workload runs every batch until its longest sequence ends (2,048 steps at the
// default cap): on gpt-oss-20b about two minutes a batch. --static-batches K measures only the first K batches and
// projects the whole workload's time from their mean (each batch has the same shape: 256 sequences to the cap);
// the JSON keeps measured and projected apart.
const staticBatchesMeasured = flag('static-batches') ? num('static-batches', 0) : Number.POSITIVE_INFINITY;
const gapSeqs = num('gap-seqs', 64, 4);
const engineOpts = {
  blockSize: num('block-size', 16, 4),
  numBlocks: flag('num-blocks') ? num('num-blocks', 0) : undefined,
  numSlidingBlocks: flag('num-sliding-blocks') ? num('num-sliding-blocks', 0) : undefined,
  maxNumSeqs: num('max-num-seqs', 512, 16),
  maxNumBatchedTokens: num('max-num-batched-tokens', 8192, 64),
  gpuMemoryUtilization: num('gpu-memory-utilization', 0.85),
};
const jsonPath = flag('json') ? arg('json', '') : '';
const runPeerSide = !flag('no-peer') && !cpu;
// The peer builds its model from --preset and --layers alone.
if (headsOverridden && runPeerSide && !flag('no-fixed') && distEnv().worldSize === 1) throw new Error('bench:generate: --heads / --kv-heads: the transformers peer knows only the preset\'s heads; pass --no-peer');
const runStatic = !flag('no-static');
const lora = flag('lora')
  ? { rank: num('lora-rank', 16), targets: arg('lora-targets', 'q_proj,k_proj,v_proj,o_proj').split(',') as LoraTarget[] }
  : null;
for (const t of lora?.targets ?? []) if (!LORA_TARGETS.includes(t)) throw new Error(`bench:generate: --lora-targets: unknown target '${t}' (${LORA_TARGETS.join(', ')})`);
const cudaGraphs = flag('cuda-graphs');
// --batch-invariant: every kernel of the run in batch-invariant mode (native/common/device.h), set before any runs.
const batchInvariantMode = flag('batch-invariant');
if (batchInvariantMode && lora && !cpu) throw new Error('bench:generate: --batch-invariant does not cover LoRA adapters on CUDA (drop --lora)');
if (cudaGraphs && lora) throw new Error('bench:generate: --cuda-graphs and --lora together are not supported (steps with adapters run eagerly)');
/** The adapters of --lora (made in main once the model exists). */
let adapters: LoraAdapters | null = null;
/** The random weights' draw: every rank (launcher mode) and the single-process run draw the same values. */
// --router-std S: the router weights drawn with std S instead of the matrices' 0.02 (RandomInitOptions.routerStd),
// for a random model whose routing is not near-tied, on which the log-prob gap measures the engine's kernels
// rather than the amplification of bf16 noise by expert flips (docs/inference.md, "Log-prob gap").
const routerStd = flag('router-std') ? num('router-std', 0.02) : undefined;
if (routerStd !== undefined && !(routerStd > 0)) throw new Error(`bench:generate: --router-std must be a positive number, got ${routerStd}`);
if (routerStd !== undefined && modelSource) throw new Error('bench:generate: --router-std shapes random weights; --model brings its own');
// --scaled-init: GPT-2's scaled init for the matrices that write into the residual stream (o_proj, down_proj at
// 0.02 / sqrt(2 · layers)) and a unit-std embedding, so that each layer adds a small part to the stream, as in a
// trained model: with every matrix at 0.02 each layer rewrites the stream, and a bf16-level difference (an expert
// flipped by a near-tied router) grows layer by layer, which the log-prob gap then measures instead of the kernels.
const scaledInit = flag('scaled-init');
if (scaledInit && modelSource) throw new Error('bench:generate: --scaled-init shapes random weights; --model brings its own');
const RANDOM_INIT: RandomInitOptions = {
  seed: 1,
  fast: true,
  biasStd: 0.02,
  routerStd,
  ...(scaledInit ? { residualStd: 0.02 / Math.sqrt(2 * layers), embedStd: 1 } : {}),
};

// Launcher mode (see the header): the processes the launcher started, and the engines' tensor-parallel size.
const worldSize = distEnv().worldSize;
const launcherMode = worldSize > 1;
const tp = flag('tp') ? num('tp', 0) : launcherMode ? worldSize : 1;
if (!Number.isInteger(tp) || tp < 1) throw new Error(`bench:generate: --tp must be a positive integer (got '${arg('tp', '')}')`);
if (!launcherMode && tp !== 1) {
  throw new Error(`bench:generate: --tp ${tp} needs ${tp} or more processes: run it under the launcher (npx gptoss-launch --nproc-per-node N bench/generate.ts --tp ${tp} ...)`);
}
if (batchInvariantMode && tp > 1) throw new Error(`bench:generate: --batch-invariant with --tp ${tp}: a tensor-parallel engine sums its ranks' partials in another order (tp 1 only)`);
if (batchInvariantMode) setBatchInvariant(true);
if (worldSize % tp !== 0) {
  throw new Error(`bench:generate: --tp ${tp} does not divide the ${worldSize} launched processes (the ranks form world size / tp engines of tp ranks each)`);
}
if (launcherMode) {
  const unused = ['lora', 'lora-rank', 'lora-targets', 'cuda-graphs', 'static-batch', 'static-batches', 'gap-seqs'].filter(flag);
  if (unused.length) {
    throw new Error(`bench:generate: ${unused.map((f) => `--${f}`).join(', ')} not supported in launcher mode (a pool of engines: no LoRA, CUDA-graph, static-path or log-prob-gap runs)`);
  }
}
/** "E x tp=T": the engines and their size. */
const layout = `${worldSize / tp} x tp=${tp}`;

const randomTokens = (r: () => number, n: number): number[] => Array.from({ length: n }, () => Math.floor(r() * V));

function seconds<T>(f: () => T | Promise<T>): Promise<{ value: T; s: number }> {
  synchronize(device);
  const t0 = performance.now();
  return Promise.resolve(f()).then((value) => {
    synchronize(device);
    return { value, s: (performance.now() - t0) / 1000 };
  });
}

/**
 * Latency of a fixed-length batch, as vLLM's latency benchmarks report it: ttftMs, from the call to the first token
 * (the prompt's prefill and first sample); tpotMs, the time per output token after it, (last token - first token) /
 * (tokens - 1) over the batch's lockstep decode. The throughput figures (tok/s) include the prefill; tpotMs does not.
 */
interface Latency {
  ttftMs: number;
  tpotMs: number;
}

/** An onToken callback that timestamps the first and last tokens of a generate() call started now (inside seconds(), after its synchronize). */
function latencyProbe(tokensPerSequence: number): { onToken: () => void; result: () => Latency | null } {
  const t0 = performance.now();
  let first = -1, last = -1;
  return {
    onToken: () => {
      last = performance.now();
      if (first < 0) first = last;
    },
    result: () => (first < 0 || tokensPerSequence < 2 ? null : { ttftMs: first - t0, tpotMs: (last - first) / (tokensPerSequence - 1) }),
  };
}

const latencyText = (l: Latency | null): string => (l ? `, first token ${l.ttftMs.toFixed(1)} ms, then ${l.tpotMs.toFixed(3)} ms a token (${(1000 / l.tpotMs).toFixed(1)} tok/s a sequence)` : '');

interface FixedRow {
  batch: number;
  engineTokS: number;
  /** The engine's latency on this batch (null in launcher mode). */
  engineLatency: Latency | null;
  /** --cuda-graphs: the graph engine's latency (null without --cuda-graphs). */
  engineGraphsLatency: Latency | null;
  /** --lora: the same engine with the adapters active (null without --lora). */
  engineLoraTokS: number | null;
  /** --cuda-graphs: the engine with enforceEager false (null without --cuda-graphs). */
  engineGraphsTokS: number | null;
  /** --cuda-graphs: that engine's graph counters after the batch. */
  graphs: EngineStats['graphs'];
  staticTokS: number | 'oom' | null;
  peerTokS: number | null | 'oom';
  /** Launcher mode: each engine's sequences and seconds (engineTokS is then the pool's: tokens / slowest time). */
  perEngine?: { sequences: number; outputTokens: number; seconds: number }[];
}

async function fixed(model: GptOssModel, engine: Engine, graphEngine: Engine | null, peer: Map<number, number | 'oom'> | null): Promise<FixedRow[]> {
  const rows: FixedRow[] = [];
  const r = mulberry32(1);
  for (const B of batches) {
    const prompts = Array.from({ length: B }, () => randomTokens(r, promptLen));
    const reqs: GenerateRequest[] = prompts.map((prompt, i) => ({ prompt, maxNewTokens: newTokens, temperature: 1, seed: i, stopTokens: [] }));
    // Warm-up: one short request; with --cuda-graphs a full batch of other prompts for both engines (see the header).
    const warm: GenerateRequest[] = graphEngine
      ? Array.from({ length: B }, (_, i) => ({ prompt: randomTokens(r, promptLen), maxNewTokens: 3, temperature: 1, seed: 9000 + i, stopTokens: [] }))
      : reqs.slice(0, 1).map((q) => ({ ...q, maxNewTokens: 2 }));
    await engine.generate(warm);
    let probe = latencyProbe(newTokens);
    const e = await seconds(() => ((probe = latencyProbe(newTokens)), engine.generate(reqs, { onToken: probe.onToken })));
    const engineLatency = probe.result();
    const produced = e.value.reduce((a, x) => a + x.samples[0]!.tokens.length, 0);
    let engineLoraTokS: number | null = null;
    if (adapters) {
      // The base run's prompt blocks are cached: without dropping them the LoRA run would reuse keys/values computed
      // without the adapters (and skip its prefill).
      model.lora = adapters;
      await engine.dropCachedPrefixes();
      await engine.generate(reqs.slice(0, 1).map((q) => ({ ...q, maxNewTokens: 2 }))); // warm-up, as the base run's
      const el = await seconds(() => engine.generate(reqs));
      model.lora = null;
      await engine.dropCachedPrefixes();
      engineLoraTokS = el.value.reduce((a, x) => a + x.samples[0]!.tokens.length, 0) / el.s;
      console.error(`fixed batch ${B}: engine + LoRA ${engineLoraTokS.toFixed(1)} tok/s (${((produced / e.s) / engineLoraTokS).toFixed(3)}x the time)`);
    }
    let engineGraphsTokS: number | null = null;
    let engineGraphsLatency: Latency | null = null;
    let graphs: EngineStats['graphs'] = null;
    if (graphEngine) {
      await engine.sleep();
      await graphEngine.wake();
      await graphEngine.generate(warm);
      const g0 = graphEngine.stats().graphs!;
      const eg = await seconds(() => ((probe = latencyProbe(newTokens)), graphEngine.generate(reqs, { onToken: probe.onToken })));
      engineGraphsLatency = probe.result();
      engineGraphsTokS = eg.value.reduce((a, x) => a + x.samples[0]!.tokens.length, 0) / eg.s;
      graphs = graphEngine.stats().graphs;
      // Where a replayed decode step's time goes over the measured batch: the graph on the GPU, the host's part of
      // the replay call (inputs, launch, readback), and the rest of the engine step (scheduler, bookkeeping).
      const n = graphs!.timedReplays - g0.timedReplays;
      if (n > 0) {
        const steps = graphs!.replays - g0.replays + graphs!.eager - g0.eager;
        console.error(
          `fixed batch ${B}, per replayed decode step: GPU ${((graphs!.replayGpuMs - g0.replayGpuMs) / n).toFixed(3)} ms, ` +
            `replay call ${((graphs!.replayCallMs - g0.replayCallMs) / n).toFixed(3)} ms, ` +
            `engine step (all ${steps} steps, prefill included) ${((1000 * eg.s) / steps).toFixed(3)} ms`,
        );
      }
      await graphEngine.sleep();
      await engine.wake();
      console.error(`fixed batch ${B}: engine + CUDA graphs ${engineGraphsTokS.toFixed(1)} tok/s (${(engineGraphsTokS / (produced / e.s)).toFixed(3)}x eager)${latencyText(engineGraphsLatency)}, graphs ${JSON.stringify(graphs)}`);
    }
    let staticTokS: number | 'oom' | null = null;
    if (runStatic) {
      await engine.sleep(); // the static path's dense cache takes the pool's memory
      const st = await outOfMemoryAsNull(() => seconds(() => staticGenerate(model, prompts, { maxNewTokens: newTokens, temperature: 1, seed: 1, stopTokens: [] })));
      await engine.wake();
      staticTokS = st ? (B * newTokens) / st.s : 'oom';
    }
    rows.push({ batch: B, engineTokS: produced / e.s, engineLatency, engineGraphsLatency, engineLoraTokS, engineGraphsTokS, graphs, staticTokS, peerTokS: peer?.get(B) ?? null });
    console.error(`fixed batch ${B}: engine ${(produced / e.s).toFixed(1)} tok/s${latencyText(engineLatency)}, static ${typeof staticTokS === 'number' ? `${staticTokS.toFixed(1)} tok/s` : (staticTokS ?? '-')}`);
  }
  return rows;
}

interface GrpoResult {
  sequences: number;
  outputTokens: number;
  longestOutput: number;
  engine: { seconds: number; tokS: number; preemptions: number; prefixCacheHitRate: number; steps: number };
  /** --lora: the same workload with the adapters active (the log-prob gap is then measured on this run). */
  engineLora: { seconds: number; tokS: number } | null;
  /**
   * null: not run; 'oom': a batch did not fit. seconds: the whole workload's (projected from measuredBatches of
   * batches when --static-batches cut it short, else measured).
   */
  static: { seconds: number; tokS: number; generatedIncludingPadding: number; batches: number; measuredBatches: number; measuredSeconds: number } | 'oom' | null;
  /** null in launcher mode (not measured there). */
  logprobGap: {
    sequences: number;
    tokens: number;
    meanAbs: number;
    maxAbs: number;
    early: number;
    late: number;
    prefilling: number;
    siblings: number;
    staticControl: { sequences: number; tokens: number; meanAbs: number; early: number; late: number } | null;
    /** The trainer's tokenLogprobs of the same sequences packed vs one by one: the model's bf16 noise floor. */
    trainerPackedVsAlone: number;
  } | null;
  /** Launcher mode: each engine's share (engine.seconds is then the slowest engine's, tokS the pool's). */
  perEngine?: EngineShare[];
}

/** Launcher mode: one engine's part of a measurement. */
interface EngineShare {
  sequences: number;
  outputTokens: number;
  seconds: number;
  preemptions: number;
  steps: number;
  prefixCacheHitRate: number;
}

/** Part (b)'s requests: grpo.prompts x grpo.samples, sample k of prompt p at index p * samples + k (seeded draw). */
function grpoWorkload(): GenerateRequest[] {
  const r = mulberry32(2);
  const gauss = (): number => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  const reqs: GenerateRequest[] = [];
  for (let p = 0; p < grpo.prompts; p++) {
    const len = grpo.promptMin + Math.floor(r() * (grpo.promptMax - grpo.promptMin + 1));
    const prompt = randomTokens(r, len);
    for (let k = 0; k < grpo.samples; k++) {
      const out = Math.max(1, Math.min(grpo.cap, Math.round(grpo.median * Math.exp(grpo.sigma * gauss()))));
      reqs.push({ prompt, maxNewTokens: out, temperature: 1, seed: p * grpo.samples + k, stopTokens: [] });
    }
  }
  return reqs;
}

async function grpoLike(model: GptOssModel, engine: Engine): Promise<GrpoResult> {
  const reqs = grpoWorkload();
  const outputTokens = reqs.reduce((a, q) => a + q.maxNewTokens, 0);
  const before = engine.stats();
  const e = await seconds(() => engine.generate(reqs));
  const after = engine.stats();
  const got = e.value.reduce((a, x) => a + x.samples[0]!.tokens.length, 0);
  if (got !== outputTokens) throw new Error(`bench:generate: the engine produced ${got} tokens, the drawn lengths sum to ${outputTokens}`);
  console.error(`grpo-like: engine ${e.s.toFixed(2)} s, ${(outputTokens / e.s).toFixed(1)} tok/s, ${after.preemptions - before.preemptions} preemptions`);
  let staticSide: GrpoResult['static'] = null;
  if (runStatic) {
    await engine.sleep();
    let total = 0;
    let padded = 0;
    let measured = 0;
    const batchesAll = Math.ceil(reqs.length / staticBatch);
    for (let i = 0; i < reqs.length; i += staticBatch) {
      const chunk = reqs.slice(i, i + staticBatch);
      const longest = Math.max(...chunk.map((q) => q.maxNewTokens));
      padded += chunk.length * longest;
      if (measured >= staticBatchesMeasured) continue;
      const st = await outOfMemoryAsNull(() =>
        seconds(() => staticGenerate(model, chunk.map((q) => q.prompt), { maxNewTokens: longest, temperature: 1, seed: i, stopTokens: [] })),
      );
      if (!st) {
        total = NaN;
        break;
      }
      total += st.s;
      measured++;
      console.error(`grpo-like: static batch ${measured}/${batchesAll} (longest ${longest}): ${st.s.toFixed(2)} s`);
    }
    await engine.wake();
    const projected = (total / measured) * batchesAll;
    staticSide = Number.isNaN(total)
      ? 'oom'
      : { seconds: projected, tokS: outputTokens / projected, generatedIncludingPadding: padded, batches: batchesAll, measuredBatches: measured, measuredSeconds: total };
    console.error(`grpo-like: static ${Number.isNaN(total) ? 'out of memory' : `${projected.toFixed(2)} s${measured < batchesAll ? ` (projected from ${measured} of ${batchesAll} batches: ${total.toFixed(2)} s)` : ''}`}`);
  }
  let engineLora: GrpoResult['engineLora'] = null;
  let gapRun = e.value;
  if (adapters) {
    model.lora = adapters;
    await engine.dropCachedPrefixes(); // the base run's cached prompt blocks hold keys/values without the adapters
    const el = await seconds(() => engine.generate(reqs));
    engineLora = { seconds: el.s, tokS: outputTokens / el.s };
    gapRun = el.value;
    console.error(`grpo-like: engine + LoRA ${el.s.toFixed(2)} s (${(el.s / e.s).toFixed(3)}x the time)`);
  }
  // Engine vs trainer log-probs on the first gapSeqs samples (prompt + output through GptOssModel.tokenLogprobs),
  // split by output position (the first 128 tokens, where no sliding window has moved yet, and the rest) and by
  // sample (sample 0 of a prompt prefills it; the others take its blocks). The static path's gap on its own
  // outputs for the same requests is the control: a path-independent cause (bf16 noise a deep random model
  // amplifies, router near-ties) shows in both; a paged-attention fault only in the engine's.
  const gapOf = (outs: { tokens: number[]; logprobs: number[] }[], idx: number[]): { sum: number; count: number; max: number; early: [number, number]; late: [number, number]; first: [number, number]; siblings: [number, number] } => {
    const acc = { sum: 0, count: 0, max: 0, early: [0, 0] as [number, number], late: [0, 0] as [number, number], first: [0, 0] as [number, number], siblings: [0, 0] as [number, number] };
    for (let i = 0; i < idx.length; i += 8) {
      const part = idx.slice(i, i + 8);
      const lps = model.tokenLogprobs(part.map((j, t) => [...reqs[j]!.prompt, ...outs[i + t]!.tokens]));
      part.forEach((j, t) => {
        const P = reqs[j]!.prompt.length;
        outs[i + t]!.logprobs.forEach((x, k) => {
          const d = Math.abs(x - lps[t]![P - 1 + k]!);
          acc.sum += d;
          acc.max = Math.max(acc.max, d);
          acc.count++;
          const pos = k < 128 ? acc.early : acc.late;
          pos[0] += d;
          pos[1]++;
          const who = j % grpo.samples === 0 ? acc.first : acc.siblings;
          who[0] += d;
          who[1]++;
        });
      });
    }
    return acc;
  };
  const mean = (p: [number, number]): number => (p[1] ? p[0] / p[1] : NaN);
  const n = Math.min(gapSeqs, reqs.length);
  const gapIdx = Array.from({ length: n }, (_, j) => j);
  const g = gapOf(gapIdx.map((j) => gapRun[j]!.samples[0]!), gapIdx);
  const sum = g.sum;
  const max = g.max;
  const count = g.count;
  console.error(`log-prob gap: engine mean ${(sum / count).toExponential(3)} (first 128 output tokens ${mean(g.early).toExponential(3)}, later ${mean(g.late).toExponential(3)}; prefilling samples ${mean(g.first).toExponential(3)}, siblings ${mean(g.siblings).toExponential(3)})`);
  // The trainer against itself: the same 8 sequences' tokenLogprobs packed together and one by one (other kernel
  // tilings and reduction orders of the same bf16 math): the noise floor any two implementations share on this model.
  const selfIdx = gapIdx.slice(0, Math.min(8, n));
  const selfSeqs = selfIdx.map((j) => [...reqs[j]!.prompt, ...gapRun[j]!.samples[0]!.tokens]);
  const packed = model.tokenLogprobs(selfSeqs);
  let selfSum = 0;
  let selfCount = 0;
  selfSeqs.forEach((sq, t) => {
    const alone = model.tokenLogprobs([sq])[0]!;
    const P = reqs[selfIdx[t]!]!.prompt.length;
    for (let k = P - 1; k < alone.length; k++) {
      selfSum += Math.abs(alone[k]! - packed[t]![k]!);
      selfCount++;
    }
  });
  const trainerSelf = selfCount ? selfSum / selfCount : NaN;
  console.error(`log-prob gap: trainer packed-vs-alone mean ${trainerSelf.toExponential(3)} over ${selfIdx.length} sequences (the model's bf16 noise floor)`);
  let staticGap: { sequences: number; tokens: number; meanAbs: number; early: number; late: number } | null = null;
  if (runStatic && n > 0) {
    // The control on the first 8 requests' own static outputs (each request to its drawn length).
    await engine.sleep();
    const sIdx = gapIdx.slice(0, Math.min(8, n));
    const outs = sIdx.map((j) => staticGenerate(model, [reqs[j]!.prompt], { maxNewTokens: reqs[j]!.maxNewTokens, temperature: 1, seed: 1000 + j, stopTokens: [] })[0]!);
    await engine.wake();
    const sg = gapOf(outs, sIdx);
    staticGap = { sequences: sIdx.length, tokens: sg.count, meanAbs: sg.sum / sg.count, early: mean(sg.early), late: mean(sg.late) };
    console.error(`log-prob gap: static path mean ${staticGap.meanAbs.toExponential(3)} (first 128 ${staticGap.early.toExponential(3)}, later ${staticGap.late.toExponential(3)}) over ${sIdx.length} sequences`);
  }
  return {
    sequences: reqs.length,
    outputTokens,
    longestOutput: Math.max(...reqs.map((q) => q.maxNewTokens)),
    engine: {
      seconds: e.s,
      tokS: outputTokens / e.s,
      preemptions: after.preemptions - before.preemptions,
      prefixCacheHitRate: after.prefixCacheHitRate,
      steps: after.steps - before.steps,
    },
    engineLora,
    static: staticSide,
    logprobGap: { sequences: n, tokens: count, meanAbs: count ? sum / count : 0, maxAbs: max, early: mean(g.early), late: mean(g.late), prefilling: mean(g.first), siblings: mean(g.siblings), staticControl: staticGap, trainerPackedVsAlone: trainerSelf },
  };
}

/** f's result, or null when it ran out of device memory (the static path's dense cache at large batches). */
async function outOfMemoryAsNull<T>(f: () => Promise<T>): Promise<T | null> {
  try {
    return await f();
  } catch (e) {
    if (/out of memory/i.test((e as Error).message)) {
      console.error(`out of memory: ${(e as Error).message.split('\n')[0]}`);
      return null;
    }
    throw e;
  }
}

/** transformers generate per batch (bench/generate_peer.py), before our model takes the GPU. */
function runPeer(): { peer: string; tokS: Map<number, number | 'oom'> } | null {
  const script = peerScript('generate_peer.py');
  if (!script) {
    console.error('peer skipped: bench/generate_peer.py not found');
    return null;
  }
  const probe = spawnSync('python3', ['-c', 'import torch, transformers; assert torch.cuda.is_available()'], { encoding: 'utf8' });
  if (probe.status !== 0) {
    console.error('peer skipped: python3 with torch+transformers+CUDA not found');
    return null;
  }
  const out = join(mkdtempSync(join(tmpdir(), 'generate-peer-')), 'peer.json');
  const shape = modelDir ? ['--model', modelDir] : ['--preset', presetName, '--layers', String(layers)];
  const args = [script, ...shape, '--batches', batches.join(','), '--prompt', String(promptLen), '--new', String(newTokens), '--json', out];
  const r = spawnSync('python3', args, { encoding: 'utf8', stdio: ['ignore', 'inherit', 'pipe'], env: { ...process.env, CUDA_VISIBLE_DEVICES: process.env.CUDA_VISIBLE_DEVICES ?? String(Number(device.split(':')[1] ?? 0)) } });
  if (r.status !== 0 || !existsSync(out)) {
    console.error(`peer failed (status ${r.status}): ${(r.stderr ?? '').slice(-2000)}`);
    return null;
  }
  const j = JSON.parse(readFileSync(out, 'utf8')) as { peer: string; results: { batch: number; tokS?: number; oom?: boolean }[] };
  return { peer: j.peer, tokS: new Map(j.results.map((x) => [x.batch, x.oom ? 'oom' : x.tokS!])) };
}

async function main(): Promise<void> {
  if (modelSource) {
    // The checkpoint's shape replaces the preset's (the peer reads the same directory).
    modelDir = await resolveModelSource(modelSource);
    CFG = readConfigFile(join(modelDir, 'config.json'));
    layers = CFG.numLayers;
    V = CFG.vocabSize;
  }
  const peer = !flag('no-fixed') && runPeerSide ? runPeer() : null;
  const t0 = performance.now();
  const model = modelDir ? await loadModel(modelDir, { device }) : GptOssModel.random(CFG, device, RANDOM_INIT);
  console.error(`model: ${weightsLabel()}, ${layers} layers on ${device} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  if (lora) adapters = LoraAdapters.init(CFG, { rank: lora.rank, alpha: 2 * lora.rank, dropout: 0, targets: lora.targets }, device, { seed: 3, bStd: 0.01, dtype: cpu ? 'f32' : 'bf16' });
  const engine = await createEngine(model, engineOpts);
  const st = engine.stats();
  let graphEngine: Engine | null = null;
  if (cudaGraphs) {
    // The two engines take turns: each one's pool is sized from the memory free when it wakes.
    await engine.sleep();
    graphEngine = await createEngine(model, { ...engineOpts, enforceEager: false });
    await graphEngine.sleep();
    await engine.wake();
  }
  console.error(`engine: ${st.numBlocks} full-attention blocks of ${st.blockSize} tokens (${st.numBlocks * st.blockSize} tokens of KV), ${st.numSlidingBlocks} sliding-window blocks`);
  const fixedRows = flag('no-fixed') ? [] : await fixed(model, engine, graphEngine, peer?.tokS ?? null);
  graphEngine?.dispose();
  const grpoRes = flag('no-grpo') ? null : await grpoLike(model, engine);
  model.lora = null;
  engine.dispose();
  adapters?.dispose();
  model.dispose();
  report(fixedRows, grpoRes, st, peer?.peer ?? null);
}

/** The table (stdout) and the --json file of a run (single-process or, on rank 0, the launcher mode's pool). */
function report(fixedRows: FixedRow[], grpoRes: GrpoResult | null, st: EngineStats, peerName: string | null): void {
  const f = (x: number | null | 'oom'): string => (x === null ? '-' : x === 'oom' ? 'OOM' : x.toFixed(1));
  const secs = (xs: { seconds: number }[]): string => xs.map((x) => x.seconds.toFixed(2)).join(' / ');
  const lines: string[] = [];
  lines.push(`gpt-oss generation, ${weightsLabel()}, ${layers} layers, ${device}${launcherMode ? `, ${layout} (launcher mode, ${worldSize} ranks)` : ''}${batchInvariantMode ? ', batch-invariant kernels' : ''}`);
  if (launcherMode) {
    lines.push(`launcher mode: a pool of ${layout} engines, each with its share of the workload; tokens/s = all engines' output tokens / the slowest engine's time; the static path, the transformers peer and the log-prob gap are not run`);
  }
  if (fixedRows.length) {
    lines.push('', `(a) prompt ${promptLen}, ${newTokens} new tokens: output tokens/s`);
    if (launcherMode) {
      lines.push(`| batch | engine (${layout}) | seconds per engine |`, '|---:|---:|---:|');
      for (const r of fixedRows) lines.push(`| ${r.batch} | ${f(r.engineTokS)} | ${secs(r.perEngine!)} |`);
    } else if (lora) {
      lines.push(`LoRA: rank ${lora.rank} on ${lora.targets.join(', ')}; "LoRA time" = engine time with the adapters / without`);
      lines.push('| batch | engine | engine + LoRA | LoRA time | static path | transformers |', '|---:|---:|---:|---:|---:|---:|');
      for (const r of fixedRows) lines.push(`| ${r.batch} | ${f(r.engineTokS)} | ${f(r.engineLoraTokS)} | ${(r.engineTokS / r.engineLoraTokS!).toFixed(3)}x | ${f(r.staticTokS)} | ${f(r.peerTokS)} |`);
    } else if (cudaGraphs) {
      lines.push('| batch | engine (eager) | engine + CUDA graphs | graphs speedup | static path | transformers |', '|---:|---:|---:|---:|---:|---:|');
      for (const r of fixedRows) lines.push(`| ${r.batch} | ${f(r.engineTokS)} | ${f(r.engineGraphsTokS)} | ${(r.engineGraphsTokS! / r.engineTokS).toFixed(3)}x | ${f(r.staticTokS)} | ${f(r.peerTokS)} |`);
    } else {
      lines.push('| batch | engine | static path | transformers |', '|---:|---:|---:|---:|');
      for (const r of fixedRows) lines.push(`| ${r.batch} | ${f(r.engineTokS)} | ${f(r.staticTokS)} | ${f(r.peerTokS)} |`);
    }
  }
  if (grpoRes) {
    const g = grpoRes;
    lines.push('', `(b) GRPO-like: ${grpo.prompts} prompts x ${grpo.samples} samples, prompts ${grpo.promptMin}-${grpo.promptMax}, outputs log-normal median ${grpo.median} cap ${grpo.cap} (${g.outputTokens} tokens, longest ${g.longestOutput})`);
    lines.push('| side | seconds | output tokens/s |', '|---|---:|---:|');
    lines.push(`| ${g.perEngine ? `engine (${layout}; the slowest engine's time; per engine ${secs(g.perEngine)} s)` : 'engine'} | ${g.engine.seconds.toFixed(2)} | ${g.engine.tokS.toFixed(1)} |`);
    if (g.engineLora) lines.push(`| engine + LoRA (${(g.engineLora.seconds / g.engine.seconds).toFixed(3)}x the time) | ${g.engineLora.seconds.toFixed(2)} | ${g.engineLora.tokS.toFixed(1)} |`);
    if (g.static === 'oom') lines.push(`| static path (batches of ${staticBatch}) | OOM | OOM |`);
    else if (g.static) {
      const proj = g.static.measuredBatches < g.static.batches ? ` (projected from ${g.static.measuredBatches} of ${g.static.batches} batches, measured ${g.static.measuredSeconds.toFixed(2)} s)` : '';
      lines.push(`| static path (batches of ${staticBatch})${proj} | ${g.static.seconds.toFixed(2)} | ${g.static.tokS.toFixed(1)} |`);
      lines.push('', `engine time / static time: ${(g.engine.seconds / g.static.seconds).toFixed(3)}`);
    }
    lines.push(`engine${g.perEngine ? 's (summed)' : ''}: ${g.engine.steps} steps, ${g.engine.preemptions} preemptions, prefix cache hit rate ${(100 * g.engine.prefixCacheHitRate).toFixed(1)}%${g.perEngine ? ' (mean over the engines)' : ''}`);
    if (g.logprobGap) {
      lines.push(`log-prob gap engine vs tokenLogprobs${g.engineLora ? ' (LoRA run)' : ''} (${g.logprobGap.sequences} sequences, ${g.logprobGap.tokens} tokens): mean ${g.logprobGap.meanAbs.toExponential(3)}, max ${g.logprobGap.maxAbs.toExponential(3)}`);
    }
  }
  console.log(lines.join('\n'));
  const json = {
    bench: 'generate',
    device,
    preset: presetName,
    model: modelDir ? modelSource : null,
    routerStd: routerStd ?? null,
    scaledInit,
    batchInvariant: batchInvariantMode,
    layers,
    /** "E x tp=T" (one process: "1 x tp=1"); launcher mode: the ranks and the engines. */
    layout,
    worldSize,
    tensorParallelSize: tp,
    engines: worldSize / tp,
    engineOptions: { ...engineOpts, numBlocks: st.numBlocks, numSlidingBlocks: st.numSlidingBlocks },
    peer: peerName,
    lora,
    cudaGraphs,
    fixed: { promptLen, newTokens, rows: fixedRows },
    grpo: grpoRes ? { workload: { ...grpo, staticBatch }, ...grpoRes } : null,
  };
  if (jsonPath) writeFileSync(jsonPath, JSON.stringify(json, null, 2));
}

/** [lo, hi) of engine e's share of n items split evenly over E engines (contiguous; sizes differ by at most one). */
const shareOf = (n: number, e: number, E: number): [number, number] => [Math.floor((e * n) / E), Math.floor(((e + 1) * n) / E)];

/**
 * Launcher mode (see the header). Every rank calls it. An engine's first rank (its "leader") runs the Engine and the
 * measurements; the engine's other ranks serve its steps inside createTensorParallelEngine until the leader disposes
 * it. The leaders meet over their own sub-group (a barrier before each measurement, an all-gather of the results).
 */
async function poolMain(): Promise<void> {
  const ctx = await initDistributed({ backend: cpu ? 'cpu' : 'auto' });
  device = ctx.device;
  const E = ctx.worldSize / tp;
  const e = Math.floor(ctx.rank / tp);
  const engineRanks = Array.from({ length: tp }, (_, i) => e * tp + i);
  const leaders = Array.from({ length: E }, (_, i) => i * tp);
  const isLeader = ctx.rank === e * tp;
  if (modelSource) {
    // Rank 0 resolves first (a hub id downloads once), then the others find it cached.
    if (ctx.rank === 0) modelDir = await resolveModelSource(modelSource);
    await ctx.group.barrier();
    if (ctx.rank !== 0) modelDir = await resolveModelSource(modelSource);
    CFG = readConfigFile(join(modelDir!, 'config.json'));
    layers = CFG.numLayers;
    V = CFG.vocabSize;
  }
  if (CFG.numKvHeads % tp !== 0 || CFG.numHeads % tp !== 0) {
    throw new Error(`bench:generate: --tp ${tp} must divide the model's ${CFG.numHeads} query and ${CFG.numKvHeads} key/value heads`);
  }
  const t0 = performance.now();
  // tp 1: this rank's whole engine; tp T: the engine over this rank's sub-group (the whole group when E = 1).
  let model: GptOssModel | null = null;
  let own: Collectives | null = null;
  let engine: Engine | null;
  if (tp === 1) {
    model = modelDir ? await loadModel(modelDir, { device }) : GptOssModel.random(CFG, device, RANDOM_INIT);
    engine = await createEngine(model, engineOpts);
  } else {
    own = E > 1 ? await ctx.collectives.subGroup(engineRanks) : null;
    const channel: GroupChannel = E > 1 ? ctx.group.subGroup(engineRanks) : ctx.group;
    const sub = { rank: ctx.rank - e * tp, worldSize: tp, device, collectives: own ?? ctx.collectives, group: channel };
    engine = await createTensorParallelEngine(modelDir ?? randomSource(CFG, RANDOM_INIT), sub, engineOpts);
  }
  if (!isLeader) {
    // Served the engine until its leader disposed it.
    await own?.destroy();
    await ctx.destroy();
    return;
  }
  const eng = engine!;
  const lead: GroupChannel | null = E > 1 ? ctx.group.subGroup(leaders) : null;
  const together = async (): Promise<void> => void (await lead?.barrier());
  const gather = async <T>(x: T): Promise<T[]> => (lead ? lead.allGatherObject(x) : [x]);
  const st = eng.stats();
  console.error(`engine ${e} (ranks ${engineRanks.join(', ')}): ${weightsLabel()} on ${device} in ${((performance.now() - t0) / 1000).toFixed(1)} s; ${st.numBlocks} full-attention blocks of ${st.blockSize} tokens, ${st.numSlidingBlocks} sliding-window blocks`);

  const fixedRows: FixedRow[] = [];
  if (!flag('no-fixed')) {
    // The single-process run's prompts (mulberry32(1), B prompts per batch), engine e taking its contiguous share.
    const r = mulberry32(1);
    for (const B of batches) {
      const prompts = Array.from({ length: B }, () => randomTokens(r, promptLen));
      const [lo, hi] = shareOf(B, e, E);
      const reqs: GenerateRequest[] = prompts.slice(lo, hi).map((prompt, i) => ({ prompt, maxNewTokens: newTokens, temperature: 1, seed: lo + i, stopTokens: [] }));
      if (reqs.length) await eng.generate(reqs.slice(0, 1).map((q) => ({ ...q, maxNewTokens: 2 }))); // warm-up
      await together();
      const m = await seconds(() => eng.generate(reqs));
      const mine = { sequences: reqs.length, outputTokens: m.value.reduce((a, x) => a + x.samples[0]!.tokens.length, 0), seconds: m.s };
      const all = await gather(mine);
      const tokS = all.reduce((a, x) => a + x.outputTokens, 0) / Math.max(...all.map((x) => x.seconds));
      fixedRows.push({ batch: B, engineTokS: tokS, engineLatency: null, engineGraphsLatency: null, engineLoraTokS: null, engineGraphsTokS: null, graphs: null, staticTokS: null, peerTokS: null, perEngine: all });
      if (ctx.rank === 0) console.error(`fixed batch ${B}: ${layout} ${tokS.toFixed(1)} tok/s (per engine ${all.map((x) => `${x.sequences} seqs ${x.seconds.toFixed(2)} s`).join(', ')})`);
    }
  }
  let grpoRes: GrpoResult | null = null;
  if (!flag('no-grpo')) {
    // Engine e takes a contiguous block of prompts with all their samples (siblings share the prompt's blocks).
    const all = grpoWorkload();
    const [pLo, pHi] = shareOf(grpo.prompts, e, E);
    const reqs = all.slice(pLo * grpo.samples, pHi * grpo.samples);
    const want = reqs.reduce((a, q) => a + q.maxNewTokens, 0);
    const before = eng.stats();
    await together();
    const m = await seconds(() => eng.generate(reqs));
    const after = eng.stats();
    const got = m.value.reduce((a, x) => a + x.samples[0]!.tokens.length, 0);
    if (got !== want) throw new Error(`bench:generate: engine ${e} produced ${got} tokens, its drawn lengths sum to ${want}`);
    const shares = await gather<EngineShare>({
      sequences: reqs.length,
      outputTokens: got,
      seconds: m.s,
      preemptions: after.preemptions - before.preemptions,
      steps: after.steps - before.steps,
      prefixCacheHitRate: after.prefixCacheHitRate,
    });
    const outputTokens = shares.reduce((a, x) => a + x.outputTokens, 0);
    const slowest = Math.max(...shares.map((x) => x.seconds));
    grpoRes = {
      sequences: shares.reduce((a, x) => a + x.sequences, 0),
      outputTokens,
      longestOutput: Math.max(...all.map((q) => q.maxNewTokens)),
      engine: {
        seconds: slowest,
        tokS: outputTokens / slowest,
        preemptions: shares.reduce((a, x) => a + x.preemptions, 0),
        prefixCacheHitRate: shares.reduce((a, x) => a + x.prefixCacheHitRate, 0) / shares.length,
        steps: shares.reduce((a, x) => a + x.steps, 0),
      },
      engineLora: null,
      static: null,
      logprobGap: null,
      perEngine: shares,
    };
    if (ctx.rank === 0) console.error(`grpo-like: ${layout} ${slowest.toFixed(2)} s (slowest engine), ${(outputTokens / slowest).toFixed(1)} tok/s`);
  }
  eng.dispose(); // releases the engine's other ranks
  model?.dispose();
  if (ctx.rank === 0) report(fixedRows, grpoRes, st, null);
  await lead?.destroy();
  await own?.destroy();
  await ctx.destroy();
}

await (launcherMode ? poolMain() : main());
