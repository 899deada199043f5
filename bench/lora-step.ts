// bench/lora-step.ts: one LoRA GRPO step of gpt-oss-20b on one GPU (issue 23), run by `npm run bench:train-step --
// --lora` (bench/train-step.ts hands over to runLoraStepBench). The full 24-layer shape with random bf16 weights
// (the frozen base), LoRA adapters (default rank 16, alpha 32 on q/k/v/o; bf16 on a GPU as `train` makes them; B
// drawn small and non-zero so the adapters change the numbers the way trained ones do), a LoraPolicy and its
// LocalGenerator over the same model.
//
// A step, timed by phase (the device drained at each boundary):
//   generate     --prompts x --samples sequences: prompts of --prompt-len random tokens, --gen-len new tokens each
//                (no stop token, so every sequence runs to the limit; temperature 1)
//   log-probs    the old log-probs (adapters on) and the KL reference's (the base: adapters off), micro-batches of
//                --micro-forward sequences
//   train        forward + backward over micro-batches of --micro-train sequences (activation recompute), grad-norm
//                clip, AdamW on the adapters
//   adapter sync generator.updateWeights(policy): nothing moves (the engine reads the policy's adapters)
// Reported: each phase's ms, the step's, peak GiB allocated (and per phase), generated tokens/s, trained tokens/s
// (prompt + response tokens over the train phase), the adapters' parameter count. --steps steps after one warm-up.
// Usage: npm run bench:train-step -- --lora [--layers 24] [--lora-rank 16] [--lora-alpha 32]
//        [--lora-targets q_proj,k_proj,v_proj,o_proj] [--prompts 16] [--samples 4] [--prompt-len 512]
//        [--gen-len 1024] [--warmup-gen-len N] [--micro-train 2] [--micro-forward 2] [--steps 1] [--json out.json]
// --warmup-gen-len: the warm-up step's generation length (default --gen-len); shorter saves GPU time at long
// lengths, and the measured step then also pays its first allocations at the longer shapes (its time is an upper bound).
// The seed's generation length is 4096 (--gen-len 4096: about 4x the generate phase of the default 1024).
// CPU smoke form (CI): --lora --preset gpt-oss-tiny-256 --prompts 2 --samples 2 --prompt-len 8 --gen-len 4.
import { writeFileSync } from 'node:fs';
import { memoryStats, resetPeakMemory, synchronize } from '../src/tensor.ts';
import { presetConfig, type GptOssConfig, type PresetName } from '../src/model/config.ts';
import { GptOssModel } from '../src/model/gptoss.ts';
import { GptOssWeights } from '../src/model/weights.ts';
import { LoraAdapters, LORA_TARGETS, type LoraTarget } from '../src/model/lora.ts';
import { LoraPolicy } from '../src/trainer/lora-policy.ts';
import { LocalGenerator } from '../src/inference/local-generator.ts';
import type { SequenceBatch } from '../src/trainer/policy.ts';
import { mulberry32 } from '../src/data/synthetic.ts';

export interface LoraBenchArgs {
  arg(name: string, def: string): string;
  posInt(name: string, def: string): number;
  device: string;
}

interface Phases {
  generateMs: number;
  logprobsMs: number;
  trainMs: number;
  syncMs: number;
  stepMs: number;
  peakGiB: { generate: number | null; logprobs: number | null; train: number | null };
}

export async function runLoraStepBench(a: LoraBenchArgs): Promise<void> {
  const presetName = a.arg('preset', 'gpt-oss-20b') as PresetName;
  const base = presetConfig(presetName);
  const layers = a.posInt('layers', String(base.numLayers));
  const cfg: GptOssConfig = presetConfig(presetName, { numLayers: layers });
  const rank = a.posInt('lora-rank', '16');
  const alpha = Number(a.arg('lora-alpha', String(2 * rank)));
  const targets = a.arg('lora-targets', 'q_proj,k_proj,v_proj,o_proj').split(',') as LoraTarget[];
  for (const t of targets) if (!LORA_TARGETS.includes(t)) throw new Error(`bench:train-step --lora-targets: unknown target '${t}' (${LORA_TARGETS.join(', ')})`);
  const prompts = a.posInt('prompts', '16');
  const samples = a.posInt('samples', '4');
  const promptLen = a.posInt('prompt-len', '512');
  const genLen = a.posInt('gen-len', '1024');
  const warmupGenLen = Math.min(genLen, a.posInt('warmup-gen-len', String(genLen)));
  const microTrain = a.posInt('micro-train', '2');
  const microForward = a.posInt('micro-forward', '2');
  const steps = a.posInt('steps', '1');
  const jsonPath = a.arg('json', '');
  const device = a.device;
  const onGpu = device !== 'cpu';
  const peak = (): number | null => (onGpu ? memoryStats(device).peakAllocated / 2 ** 30 : null);

  const t0 = performance.now();
  const model = new GptOssModel(GptOssWeights.random(cfg, device, { seed: 1, fast: true, biasStd: 0.02 }), { recompute: true });
  const adapters = LoraAdapters.init(cfg, { rank, alpha, dropout: 0, targets }, device, { seed: 2, bStd: 0.01, dtype: onGpu ? 'bf16' : 'f32' });
  const policy = new LoraPolicy(model, adapters);
  const generator = new LocalGenerator(model, { gpuMemoryUtilization: 0.8, maxNumSeqs: Math.max(256, prompts * samples), maxModelLen: promptLen + genLen });
  const ref = await policy.frozenCopy();
  synchronize(device);
  console.error(`model ready in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${model.weights.numParameters()} base parameters, ${adapters.numParameters()} adapter parameters`);

  const rnd = mulberry32(7);
  const promptIds = Array.from({ length: prompts }, () => Int32Array.from({ length: promptLen }, () => Math.floor(rnd() * cfg.vocabSize)));

  const oneStep = async (stepNo: number): Promise<Phases & { generated: number; trained: number }> => {
    const ph: Phases = { generateMs: 0, logprobsMs: 0, trainMs: 0, syncMs: 0, stepMs: 0, peakGiB: { generate: null, logprobs: null, train: null } };
    const mark = async <R>(key: 'generate' | 'logprobs' | 'train' | 'sync', f: () => Promise<R>): Promise<R> => {
      synchronize(device);
      if (onGpu) resetPeakMemory(device);
      const s = performance.now();
      const r = await f();
      synchronize(device);
      ph[`${key}Ms` as const] = performance.now() - s;
      if (key !== 'sync') ph.peakGiB[key] = peak();
      return r;
    };
    const s0 = performance.now();
    const groups = promptIds.flatMap((p) => Array.from({ length: samples }, () => p));
    const completions = await mark('generate', () => generator.generate(groups, { maxTokens: stepNo === 1 ? warmupGenLen : genLen, temperature: 1, seed: stepNo, stopTokenIds: [] }));
    const batch: SequenceBatch = {
      sequences: groups.map((p, i) => {
        const s = new Int32Array(p.length + completions[i]!.tokens.length);
        s.set(p);
        s.set(completions[i]!.tokens, p.length);
        return s;
      }),
      promptLens: groups.map((p) => p.length),
    };
    const slices = (n: number): SequenceBatch[] =>
      Array.from({ length: Math.ceil(batch.sequences.length / n) }, (_, i) => ({
        sequences: batch.sequences.slice(i * n, (i + 1) * n),
        promptLens: batch.promptLens.slice(i * n, (i + 1) * n),
      }));
    await mark('logprobs', async () => {
      for (const mb of slices(microForward)) {
        await policy.logprobs(mb);
        await ref.logprobs(mb);
      }
    });
    await mark('train', async () => {
      policy.zeroGrad();
      const total = batch.sequences.reduce((s, q, i) => s + q.length - batch.promptLens[i]!, 0);
      for (const mb of slices(microTrain)) {
        const f = await policy.forward(mb);
        await f.backward(f.logprobs.map((l) => new Float32Array(l.length).fill(-1 / total)));
      }
      policy.clipGradNorm(1.0);
      policy.optimizerStep({ lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 }, stepNo);
    });
    await mark('sync', () => generator.updateWeights());
    ph.stepMs = performance.now() - s0;
    return {
      ...ph,
      generated: completions.reduce((s, c) => s + c.tokens.length, 0),
      trained: batch.sequences.reduce((s, q) => s + q.length, 0),
    };
  };

  const results: Awaited<ReturnType<typeof oneStep>>[] = [];
  const warmup = await oneStep(1); // warm-up: allocator growth, GEMM algorithm choices, KV pool sizing
  console.error('warm-up step done');
  for (let s = 0; s < steps; s++) results.push(await oneStep(s + 2));
  const mean = (f: (r: (typeof results)[number]) => number): number => results.reduce((x, r) => x + f(r), 0) / results.length;
  const row = {
    generateMs: mean((r) => r.generateMs),
    logprobsMs: mean((r) => r.logprobsMs),
    trainMs: mean((r) => r.trainMs),
    syncMs: mean((r) => r.syncMs),
    stepMs: mean((r) => r.stepMs),
    generatedTokens: mean((r) => r.generated),
    trainedTokens: mean((r) => r.trained),
    generatedTokensPerS: mean((r) => r.generated / (r.generateMs / 1000)),
    trainedTokensPerS: mean((r) => r.trained / (r.trainMs / 1000)),
    peakGiB: results[results.length - 1]!.peakGiB,
  };
  const f = (v: number | null, d = 1): string => (v === null ? '-' : v.toFixed(d));
  console.log(
    `LoRA GRPO step: ${presetName} with ${layers} layers on ${device}; rank ${rank}, alpha ${alpha} on ${targets.join(', ')} (${adapters.numParameters()} adapter parameters); ` +
      `${prompts} prompts x ${samples} samples, prompt ${promptLen} + generation ${genLen} tokens; micro-batches ${microTrain} (train), ${microForward} (log-probs); recompute on`,
  );
  console.log('| phase | ms | tokens | tokens/s | peak GiB |');
  console.log('| --- | --- | --- | --- | --- |');
  console.log(`| generate | ${f(row.generateMs)} | ${row.generatedTokens} | ${f(row.generatedTokensPerS, 0)} | ${f(row.peakGiB.generate)} |`);
  console.log(`| log-probs (old + ref) | ${f(row.logprobsMs)} | ${row.trainedTokens} x 2 | ${f((2 * row.trainedTokens) / (row.logprobsMs / 1000), 0)} | ${f(row.peakGiB.logprobs)} |`);
  console.log(`| train (fwd + bwd + AdamW) | ${f(row.trainMs)} | ${row.trainedTokens} | ${f(row.trainedTokensPerS, 0)} | ${f(row.peakGiB.train)} |`);
  console.log(`| adapter sync | ${f(row.syncMs, 3)} | - | - | - |`);
  console.log(`| step | ${f(row.stepMs)} | - | - | ${f(Math.max(...[row.peakGiB.generate, row.peakGiB.logprobs, row.peakGiB.train].map((x) => x ?? 0)) || null)} |`);
  if (jsonPath) {
    writeFileSync(
      jsonPath,
      JSON.stringify({ bench: 'train-step-lora', preset: presetName, layers, device, rank, alpha, targets, adapterParams: adapters.numParameters(), prompts, samples, promptLen, genLen, warmupGenLen, warmupGenerated: warmup.generated, microTrain, microForward, steps, row, steps_detail: results }, null, 2) + '\n',
    );
  }
  ref.dispose();
  generator.dispose();
  policy.dispose();
}
