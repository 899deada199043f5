// generate.ts: static-batch generation with a dense KV cache, from a GptOssModel.
//
// The baseline the engine (engine.ts) is measured and tested against. One packed prefill over all prompts runs
// every layer (DecoderLayer.step with varlen attention over the prompts), writing each token's roped k and v into a
// cache [B, Smax, Hkv, D] per layer (Smax = longest prompt + maxNewTokens); then one decode step per new token for
// all sequences (DecoderLayer.step again: each sequence's new token attends over its cache). Finished sequences ride
// along until all are done. Sampling noise is keyed by (seed, step, row), so n copies of one prompt in a batch
// sample differently.
import { Tensor } from '../tensor.ts';
import { packSequences, disposeBatch, type PackedBatch } from '../model/batch.ts';
import type { GptOssModel } from '../model/gptoss.ts';
import type { LayerKvCache } from '../model/layer.ts';
import { disposeAll } from '../model/tensor-helpers.ts';
import { attentionDecode, attentionForward } from '../ops/attention.ts';
import { scatterRows } from '../ops/kvcache.ts';
import { sample } from '../ops/sampling.ts';

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 = greedy (default 1). */
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  /** Generation of a sequence ends after it samples one of these (default: the config's eos ids). */
  stopTokens?: readonly number[];
}

export interface GenerateResult {
  /** New tokens (including the stop token, if one ended the sequence). */
  tokens: number[];
  /** log p of each new token under the sampling distribution. */
  logprobs: number[];
  finishReason: 'stop' | 'length';
}

/**
 * A dense KV cache: per layer, k and v bf16 [B, Smax, Hkv, D]; sequence b's token at position p lives in flat row
 * b*Smax + p of the [B*Smax, Hkv, D] view. Before each step, setStep() gives the rows the step's tokens go to and
 * either the prefill's packed prompts (attention over the step's own k/v) or, for decode, each sequence's cache
 * length after the step (attention over the cache).
 */
class DenseKvCache {
  private readonly k: Tensor[] = [];
  private readonly v: Tensor[] = [];
  /** i32 [N]: the flat cache row of each token of the current step. */
  private rows: Tensor | null = null;
  /** i32 [B]: each sequence's cache length including the current decode step's token. */
  private seqLens: Tensor | null = null;
  /** The prefill step's packed prompts (cuSeqlens, maxSeqlen). */
  private prompts: PackedBatch | null = null;
  /** One LayerKvCache per layer, reading the current step's rows and lengths. */
  readonly layers: LayerKvCache[];

  constructor(numLayers: number, batch: number, maxLen: number, numKvHeads: number, headDim: number, device: string) {
    for (let l = 0; l < numLayers; l++) {
      this.k.push(Tensor.zeros([batch, maxLen, numKvHeads, headDim], { dtype: 'bf16', device }));
      this.v.push(Tensor.zeros([batch, maxLen, numKvHeads, headDim], { dtype: 'bf16', device }));
    }
    this.layers = this.k.map((kc, l) => {
      const vc = this.v[l]!;
      return {
        write: (k: Tensor, v: Tensor): void => {
          DenseKvCache.scatter(kc, k, this.step('rows', this.rows));
          DenseKvCache.scatter(vc, v, this.step('rows', this.rows));
        },
        attend: (q: Tensor, k: Tensor, v: Tensor, o: { window: number; sinks: Tensor }): Tensor => {
          if (this.prompts) {
            const b = this.prompts;
            const r = attentionForward(q, k, v, { cuSeqlens: b.cuSeqlens, maxSeqlen: b.maxSeqlen, window: o.window, sinks: o.sinks });
            r.lse.dispose();
            return r.out;
          }
          return attentionDecode(q, kc, vc, { seqLens: this.step('seqLens', this.seqLens), window: o.window, sinks: o.sinks });
        },
      };
    });
  }

  /**
   * The rows (i32 [N]) of the next step and either its packed prompts (prefill) or the sequence lengths (i32 [B],
   * decode); the caller owns them (and clears them with nulls before freeing them).
   */
  setStep(rows: Tensor | null, step: { prompts: PackedBatch } | { seqLens: Tensor } | null): void {
    this.rows = rows;
    this.prompts = step && 'prompts' in step ? step.prompts : null;
    this.seqLens = step && 'seqLens' in step ? step.seqLens : null;
  }

  private step(what: string, t: Tensor | null): Tensor {
    if (!t) throw new Error(`DenseKvCache: no ${what} for this step (setStep first)`);
    return t;
  }

  /** Writes src rows ([N, Hkv, D]) into cache [B, Smax, Hkv, D] at flat rows b*Smax + position. */
  private static scatter(cache: Tensor, src: Tensor, rows: Tensor): void {
    const [b, smax, hkv, d] = cache.shape as [number, number, number, number];
    const flat = cache.view([b * smax, hkv, d]);
    scatterRows(flat, src, rows);
    flat.dispose();
  }

  dispose(): void {
    disposeAll(...this.k, ...this.v);
  }
}

/**
 * Batched generation: one packed prefill over all prompts fills a KV cache [B, Smax, Hkv, D] per layer, then
 * one decode step per new token for all sequences (finished ones are carried along and ignored).
 */
export function generate(model: GptOssModel, prompts: readonly (readonly number[])[], opts: GenerateOptions): GenerateResult[] {
  const c = model.config;
  const B = prompts.length;
  const maxNew = opts.maxNewTokens;
  if (B === 0) return [];
  if (!(maxNew >= 1)) throw new Error(`generate: maxNewTokens must be >= 1, got ${maxNew}`);
  const stop = new Set(opts.stopTokens ?? c.eosTokenIds);
  const sampling = { temperature: opts.temperature ?? 1, topP: opts.topP, topK: opts.topK, seed: opts.seed ?? 0 };
  const smax = Math.max(...prompts.map((p) => p.length)) + maxNew;
  const dev = model.device;
  const cache = new DenseKvCache(c.numLayers, B, smax, c.numKvHeads, c.headDim, dev);
  const results: GenerateResult[] = prompts.map(() => ({ tokens: [], logprobs: [], finishReason: 'length' }));
  const done = new Array<boolean>(B).fill(false);
  const lens = prompts.map((p) => p.length);
  const pb = packSequences(prompts, dev);
  // Cache row (b * smax + position) of every prompt token.
  const rowsHost = new Int32Array(pb.numTokens);
  pb.offsets.forEach((o, b) => {
    for (let j = 0; j < pb.lengths[b]!; j++) rowsHost[o + j] = b * smax + j;
  });
  const prefillRows = Tensor.from(rowsHost, [pb.numTokens], { device: dev });
  try {
    // Prefill: the whole prompts, caching k (after rope) and v per layer.
    cache.setStep(prefillRows, { prompts: pb });
    let x = model.embed(pb.ids);
    for (let l = 0; l < c.numLayers; l++) {
      const y = model.layers[l]!.step(x, pb.positions, cache.layers[l]!);
      x.dispose();
      x = y;
    }
    // Last prompt token of each sequence.
    const last = Tensor.empty([B, c.hiddenSize], { dtype: 'bf16', device: dev });
    for (let i = 0; i < B; i++) {
      const end = pb.offsets[i]! + pb.lengths[i]!;
      const src = x.slice(end - 1, end);
      const dst = last.slice(i, i + 1);
      dst.copyFrom(src);
      disposeAll(src, dst);
    }
    x.dispose();
    cache.setStep(null, null);
    let next = sampleNext(model, last, { ...sampling, step: 0 });
    last.dispose();
    for (let step = 0; ; step++) {
      for (let i = 0; i < B; i++) {
        if (done[i]) continue;
        const t = next.tokens[i]!;
        results[i]!.tokens.push(t);
        results[i]!.logprobs.push(next.logprobs[i]!);
        if (stop.has(t)) {
          done[i] = true;
          results[i]!.finishReason = 'stop';
        } else if (results[i]!.tokens.length >= maxNew) done[i] = true;
      }
      if (done.every(Boolean)) break;
      // Decode one token for every sequence at position lens[i] (its new cache length is lens[i] + 1).
      const ids = Tensor.from(Int32Array.from(next.tokens), [B], { device: dev });
      const pos = Tensor.from(Int32Array.from(lens), [B], { device: dev });
      for (let i = 0; i < B; i++) lens[i]! += 1;
      const seqLens = Tensor.from(Int32Array.from(lens), [B], { device: dev });
      const rows = Tensor.from(Int32Array.from(lens, (n, b) => b * smax + n - 1), [B], { device: dev });
      cache.setStep(rows, { seqLens });
      let h = model.embed(ids);
      for (let l = 0; l < c.numLayers; l++) {
        const y = model.layers[l]!.step(h, pos, cache.layers[l]!);
        h.dispose();
        h = y;
      }
      cache.setStep(null, null);
      disposeAll(ids, pos, seqLens, rows);
      next = sampleNext(model, h, { ...sampling, step: step + 1 });
      h.dispose();
    }
  } finally {
    disposeBatch(pb);
    prefillRows.dispose();
    cache.dispose();
  }
  return results;
}

/**
 * One sampling step: final norm + LM head logits of hidden rows x bf16 [B, H] (x stays the caller's), then a token
 * per row with its log-prob under the sampling distribution. Noise is keyed by (seed, step, row).
 */
export function sampleNext(
  model: GptOssModel,
  x: Tensor,
  o: { temperature: number; topP?: number; topK?: number; seed: number; step: number },
): { tokens: Int32Array; logprobs: Float32Array } {
  const lg = model.logits(x);
  const s = sample(lg, { temperature: o.temperature, topP: o.topP, topK: o.topK, seed: o.seed, step: o.step });
  lg.dispose();
  const r = { tokens: s.tokens.toInt32(), logprobs: s.logprobs.toFloat32() };
  disposeAll(s.tokens, s.logprobs);
  return r;
}
