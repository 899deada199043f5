// gptoss.ts: the GPT-OSS model composed in TypeScript from the ops (src/ops/*), on any device.
//
// A batch of sequences is packed token-major (src/model/batch.ts). forward: embedding -> the decoder layers
// (src/model/layer.ts) -> the final norm -> the fused LM head, which returns per-token log p(target) and entropy
// without materialising [T, V] logits (vocabulary chunked). Activations are bf16; the residual-stream gradient,
// norms and softmaxes are fp32; parameter gradients are fp32.
//
// backward(state, dLogprobs) takes dLoss/dLogprob per token and produces the gradient of every parameter (by
// checkpoint name). With `recompute`, forward keeps only each layer's input and backward re-runs the layer.
// With ForwardOptions.lossGradient (a per-token-local loss) the forward runs the LM head's backward itself, per
// chunk of tokens from that chunk's kept logits (no logits recompute), and backward(state, null) starts below it.
// Generation (prefill + KV-cache decode, sampling) lives in src/inference/ and runs the same layers through
// DecoderLayer.prefill/decode, embed() and logits().
import { Tensor } from '../tensor.ts';
import type { GptOssConfig } from './config.ts';
import { GptOssWeights, layerPrefix, QKV_PROJ, type RandomInitOptions } from './weights.ts';
import { disposeBatch, packSequences, type PackedBatch } from './batch.ts';
import { DecoderLayer, disposeLayerSaved, type KeptAttention, type LayerHost, type LayerSaved, type RopeTables } from './layer.ts';
import { accumulateGrad, disposeAll } from './tensor-helpers.ts';
import { embeddingForward, embeddingBackward } from '../ops/embedding.ts';
import { rmsnormForward, rmsnormBackward } from '../ops/rmsnorm.ts';
import { yarnInvFreq } from '../ops/rope.ts';
import {
  tokenLogprobs as lmHeadLogprobs,
  tokenLogprobsBackward,
  tokenLogprobsBackwardHidden,
  tokenChunkedLmHead,
  logits as lmLogits,
} from '../ops/logprob.ts';
import { matmul } from '../ops/gemm.ts';
import type { LoraAdapters } from './lora.ts';

// ---- forward state -------------------------------------------------------------------------------------------------
/** What backward needs; dispose() it if backward is not run (the batch stays the caller's unless releaseBatch). */
export interface ForwardState {
  batch: PackedBatch;
  /** Per layer: saved activations, or null under recompute (then `inputs` holds the layer inputs). */
  saved: (LayerSaved | null)[];
  inputs: (Tensor | null)[];
  /** Per layer under recompute with keepAttention: the attention output and LSE the recompute reuses (else null). */
  attention: (KeptAttention | null)[];
  /** Final residual stream, normalised output and its rstd. */
  xL: Tensor;
  hf: Tensor;
  rstdf: Tensor;
  /** f32 [T]: the LM head's log-sum-exp for its backward; null where the forward ran that backward (lossGradient). */
  lse: Tensor | null;
  /**
   * f32 [T, H]: dLoss/d(final norm output), where the forward ran the LM head's backward per token chunk
   * (ForwardOptions.lossGradient); backward then starts from it and skips the LM head.
   */
  dHidden?: Tensor;
  temperature: number;
  /** The forward's LoRA dropout seed (ForwardOptions.dropoutSeed): the recompute reruns the layers with it. */
  dropoutSeed?: number;
  dispose(): void;
}

export interface ForwardOptions {
  /** Keep what backward needs (default false). */
  train?: boolean;
  /** Divide logits by this before the softmax (default 1). */
  temperature?: number;
  /** Also return every hidden state (as HF: embeddings, after each layer, and the final norm output), as f32 host arrays. */
  collectHidden?: boolean;
  /** Also return the full f32 [T, V] logits (small models / tests only). */
  returnLogits?: boolean;
  /** With train: the state takes the batch over (state.dispose() and backward also dispose it). Default false. */
  releaseBatch?: boolean;
  /**
   * With train and adapters whose dropout is above 0 (required then): the seed of this forward's LoRA dropout masks
   * (an integer in [0, 2^53); the trainer derives it from the optimizer step and micro-batch, LoraPolicy). Backward
   * and the recompute regenerate the masks from it (src/model/layer.ts). Not taken without train: log-prob passes
   * and generation run without dropout, as PEFT's eval mode.
   */
  dropoutSeed?: number;
  /**
   * With train: the LM head's backward runs inside the forward, one chunk of tokens at a time (the fused LM-head
   * backward, trainer.fused_lm_head_backward): per chunk the full-vocabulary logits f32 [Tc, V] are computed and
   * kept (tokenLogprobsForwardKeep), the chunk's log-probs go to the host, `grad` turns them into dLoss/dlogp, and
   * tokenLogprobsBackwardFromLogits forms dHidden's rows and the LM head's gradient from the kept logits: 3 LM-head
   * GEMMs instead of the recomputing backward's 4. Only for a loss whose gradient at a token needs only that
   * token's log-prob (src/rl/loss.ts policyTokenGradient). The state then holds dHidden; backward(state, null,
   * grads) starts from it.
   */
  lossGradient?: LossGradient;
}

/** ForwardOptions.lossGradient. */
export interface LossGradient {
  /**
   * dLoss/dlogp (length logprobs.length) of the packed tokens tokenOffset .. tokenOffset + logprobs.length - 1,
   * given their log-probs (0 where a token does not count, e.g. prompt positions). Called once per token chunk,
   * in order.
   */
  grad: (tokenOffset: number, logprobs: Float32Array) => Float32Array;
  /**
   * The gradient map the LM head's gradient is accumulated into (lm_head.weight, or the lm_head adapter's
   * lora_A/lora_B; nothing for a frozen head): the map the backward of this forward then gets.
   */
  grads: Map<string, Tensor>;
}

export interface ForwardResult {
  /** f32 [T]: log p(targets[t]); meaningless at each sequence's last token. */
  logprobs: Tensor;
  /** f32 [T]: entropy of the predicted distribution at each token. */
  entropy: Tensor;
  hidden?: Float32Array[];
  logits?: Tensor;
  /** Present with train: true. */
  state?: ForwardState;
}

export interface ModelOptions {
  /** Re-run each layer's forward during backward instead of keeping its activations (default false). */
  recompute?: boolean;
  /**
   * With recompute: keep each layer's attention output and LSE (bf16 [T, Hq·D] + f32 [Hq, T]: 138 MB per layer at
   * 16k tokens and gpt-oss size, from the forward until that layer's backward) so the recompute skips the attention
   * forward (2.2 TFLOP per full-attention layer at 16k). Bitwise the same gradients. Default true (the memory
   * planner counts the kept tensors: src/trainer/memory-plan.ts; trainer.gradient_checkpointing_keep_attention).
   * Without recompute it changes nothing (every activation is kept anyway).
   */
  keepAttention?: boolean;
  /** Vocabulary rows per LM-head chunk (default: lmHeadChunk(T, V) of src/ops/logprob.ts, as the planner counts). */
  lmHeadChunk?: number;
  /** Tokens per chunk of the fused LM-head backward (ForwardOptions.lossGradient; default lmHeadTokenChunk(V)). */
  lmHeadTokenChunk?: number;
  /**
   * Bitwise-reproducible attention backward (default false). false: on CUDA (head_dim 64) dq is accumulated with
   * fp32 atomics inside the dK/dV kernel, as FlashAttention does by default (two fewer GEMMs per tile: ~24% less
   * attention fwd+bwd time at S 4096 causal on an H100); dq's rounding then varies from run to run, everything else
   * stays reproducible. true: no atomics (see attentionBackward's `deterministic`).
   */
  deterministic?: boolean;
}

/** The YaRN RoPE tables of a config on a device (every layer of a model, or a per-layer driver, shares one). */
export function ropeTables(c: GptOssConfig, device: string): RopeTables {
  const r = c.rope;
  const yf = yarnInvFreq({
    headDim: c.headDim,
    ropeTheta: r.theta,
    factor: r.type === 'yarn' ? r.factor : 1,
    betaFast: r.betaFast,
    betaSlow: r.betaSlow,
    originalMaxPositions: r.originalMaxPositions,
    truncate: r.truncate,
    attentionFactor: r.attentionFactor,
  });
  return { invFreq: Tensor.from(yf.invFreq, [c.headDim / 2], { device, dtype: 'f32' }), scaling: yf.attentionScaling };
}

/** A GPT-OSS model on one device. */
export class GptOssModel implements LayerHost {
  readonly config: GptOssConfig;
  readonly weights: GptOssWeights;
  readonly device: string;
  recompute: boolean;
  keepAttention: boolean;
  lmHeadChunk: number | undefined;
  lmHeadTokenChunk: number | undefined;
  deterministic: boolean;
  /** YaRN RoPE tables, shared by every layer. */
  readonly rope: RopeTables;
  /** The decoder layers, in order: per-layer drivers (sharded training, benchmarks, engines) run them directly. */
  readonly layers: readonly DecoderLayer[];
  /**
   * Active LoRA adapters (src/model/lora.ts), or null. Forward, generation (the engine's DecoderLayer.step) and
   * backward all read this one set, so the trainer and an engine over this model share base and adapters; while
   * set, backward trains the adapters only (the base is frozen). The model does not own them (not disposed).
   */
  lora: LoraAdapters | null = null;

  constructor(weights: GptOssWeights, opts: ModelOptions = {}) {
    this.weights = weights;
    this.config = weights.config;
    this.device = weights.device;
    this.recompute = opts.recompute ?? false;
    this.keepAttention = opts.keepAttention ?? true;
    this.lmHeadChunk = opts.lmHeadChunk;
    if (opts.lmHeadTokenChunk !== undefined && !(Number.isInteger(opts.lmHeadTokenChunk) && opts.lmHeadTokenChunk >= 1)) {
      throw new Error(`GptOssModel: lmHeadTokenChunk must be an integer >= 1, got ${opts.lmHeadTokenChunk}`);
    }
    this.lmHeadTokenChunk = opts.lmHeadTokenChunk;
    this.deterministic = opts.deterministic ?? false;
    this.rope = ropeTables(this.config, this.device);
    this.layers = Array.from({ length: this.config.numLayers }, (_, l) => new DecoderLayer(this, l));
  }

  /**
   * Runs f with the adapters switched off (the base model: LoRA's KL reference, without a second copy of the
   * weights). f must be synchronous: the adapters are off only until it returns, and an await inside would let
   * other work (an engine step) see the base.
   */
  withoutAdapters<R>(f: () => R): R {
    const saved = this.lora;
    this.lora = null;
    try {
      const r = f();
      if (r instanceof Promise) throw new Error('GptOssModel.withoutAdapters: f must be synchronous (it returned a Promise)');
      return r;
    } finally {
      this.lora = saved;
    }
  }

  static random(config: GptOssConfig, device: string, init: RandomInitOptions = {}, opts: ModelOptions = {}): GptOssModel {
    return new GptOssModel(GptOssWeights.random(config, device, init), opts);
  }

  // ---- the pieces around the layers ----------------------------------------------------------------------------------
  /**
   * Token embeddings: ids i32 [N] -> bf16 [N, H] (checked false: see embeddingForward; the engine's steps), with the
   * embed_tokens adapter added when there is one.
   */
  embed(ids: Tensor, opts: { checked?: boolean } = {}): Tensor {
    const x = embeddingForward(this.weights.embedding, ids, opts);
    return this.lora ? this.lora.embedAdapted(x, ids, opts) : x;
  }

  /**
   * The LM head [V, H] the forward uses: the base's, or with an lm_head adapter a fresh merged bf16(W + scale·B·A)
   * (`owned`: the caller frees it).
   */
  private lmHead(): { w: Tensor; owned: boolean } {
    const m = this.lora?.mergedHead(this.weights) ?? null;
    return m ? { w: m, owned: true } : { w: this.weights.lmHead, owned: false };
  }

  /**
   * Final norm + LM head of hidden rows x bf16 [N, H] -> f32 [N, V] logits (generation: N = sequences of a step).
   * An lm_head adapter is added in factor form, y·Wᵀ + scale·(y·Aᵀ)·Bᵀ (two thin GEMMs into the f32 logits), not
   * through the merged head: a decode step would otherwise write and read a fresh [V, H] head (1.16 GB at
   * gpt-oss-20b size). It differs from the trainer's merged bf16 head only by that head's bf16 rounding.
   */
  logits(x: Tensor): Tensor {
    const { y, rstd } = rmsnormForward(x, this.weights.finalNorm, this.config.rmsNormEps);
    const lg = lmLogits(y, this.weights.lmHead);
    const head = this.lora?.head;
    if (head) {
      const u = matmul(y, head.A, { transB: true, outDtype: this.lora!.dtype }); // [N, r]
      matmul(u, head.B, { transB: true, alpha: this.lora!.scale, out: lg, accumulate: true }); // += [N, V]
      u.dispose();
    }
    disposeAll(y, rstd);
    return lg;
  }

  // ---- whole model ----------------------------------------------------------------------------------------------
  /** Forward over a packed batch: per-token log-probs and entropy; with train: true, the state for backward. */
  forward(b: PackedBatch, opts: ForwardOptions = {}): ForwardResult {
    const c = this.config;
    const train = opts.train ?? false;
    const temperature = opts.temperature ?? 1;
    const dropoutSeed = this.checkDropoutSeed(train, opts.dropoutSeed);
    const hidden: Float32Array[] | undefined = opts.collectHidden ? [] : undefined;
    const saved: (LayerSaved | null)[] = [];
    const inputs: (Tensor | null)[] = [];
    const attention: (KeptAttention | null)[] = [];
    let x = this.embed(b.ids);
    hidden?.push(x.toFloat32());
    for (let l = 0; l < c.numLayers; l++) {
      const keep = train && !this.recompute;
      const r = this.layers[l]!.forward(x, b, keep, { keepAttention: train && this.recompute && this.keepAttention, dropoutSeed });
      if (train) {
        saved.push(r.saved);
        inputs.push(this.recompute ? x : null);
        attention.push(r.attention ?? null);
      } else x.dispose();
      x = r.y;
      if (hidden && l < c.numLayers - 1) hidden.push(x.toFloat32());
    }
    const { y: hf, rstd: rstdf } = rmsnormForward(x, this.weights.finalNorm, c.rmsNormEps);
    hidden?.push(hf.toFloat32());
    const head = this.lmHead();
    let lp: { logprobs: Tensor; entropy: Tensor; lse: Tensor | null };
    let dHidden: Tensor | undefined;
    try {
      if (opts.lossGradient) {
        if (!train) throw new Error('GptOssModel.forward: lossGradient (the fused LM-head backward) needs train: true');
        const f = this.fusedLmHead(hf, head.w, b, temperature, opts.lossGradient);
        lp = { logprobs: f.logprobs, entropy: f.entropy, lse: null };
        dHidden = f.dHidden;
      } else lp = lmHeadLogprobs(hf, head.w, b.targets, { temperature, chunk: this.lmHeadChunk });
    } catch (e) {
      // A failed LM head (e.g. lossGradient.grad throwing): free what a state would have owned (the batch stays the
      // caller's). With lossGradient, lossGradient.grads may hold part of the head's gradient: drop those buffers.
      if (head.owned) head.w.dispose();
      for (const sv of saved) {
        if (!sv) continue;
        disposeLayerSaved(sv);
        sv.x.dispose();
      }
      for (const t of inputs) disposeAll(t);
      for (const a of attention) if (a) disposeAll(a.attn, a.lse);
      disposeAll(hf, rstdf, x);
      throw e;
    }
    const logits = opts.returnLogits ? lmLogits(hf, head.w) : undefined;
    // The merged head is made again in backward (its adapters are the same until the optimizer step) rather than
    // kept [V, H] through the layers' backward.
    if (head.owned) head.w.dispose();
    const result: ForwardResult = { logprobs: lp.logprobs, entropy: lp.entropy, hidden, logits };
    if (train) {
      const releaseBatch = opts.releaseBatch ?? false;
      const state: ForwardState = {
        batch: b,
        saved,
        inputs,
        attention,
        xL: x,
        hf,
        rstdf,
        lse: lp.lse,
        dHidden,
        temperature,
        dropoutSeed,
        dispose() {
          for (const s of saved) {
            if (!s) continue;
            disposeLayerSaved(s);
            s.x.dispose();
          }
          saved.length = 0;
          for (const t of inputs) disposeAll(t);
          inputs.length = 0;
          for (const a of attention) if (a) disposeAll(a.attn, a.lse);
          attention.length = 0;
          disposeAll(this.xL, this.hf, this.rstdf, this.lse, this.dHidden);
          if (releaseBatch) disposeBatch(b);
        },
      };
      result.state = state;
    } else {
      disposeAll(x, hf, rstdf, lp.lse);
    }
    return result;
  }

  /**
   * The fused LM-head backward of ForwardOptions.lossGradient over hf bf16 [T, H] and the head w [V, H]: per token
   * chunk the kept-logits forward, the host's dLoss/dlogp, and the backward from the kept logits into dHidden's
   * rows and the head's gradient. The vocabulary chunk is the recomputing path's (lmHeadChunk(T, V)): on CPU the
   * log-probs and dHidden come out bit for bit the same, and the head's gradient too with one token chunk.
   */
  private fusedLmHead(hf: Tensor, w: Tensor, b: PackedBatch, temperature: number, lg: LossGradient): { logprobs: Tensor; entropy: Tensor; dHidden: Tensor } {
    const c = this.config;
    const H = c.hiddenSize;
    const V = w.shape[0]!;
    const grads = lg.grads;
    const headLora = this.lora?.head;
    const lmName = c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
    // The head's gradient: a frozen head (adapters without an lm_head one) has none; an lm_head adapter's comes
    // from the merged head's f32 [V, H] gradient (made here and freed); the base's accumulates into grads in place.
    let dW: Tensor | undefined;
    if (headLora) dW = Tensor.zeros([V, H], { dtype: 'f32', device: this.device });
    else if (!this.lora) {
      dW = grads.get(lmName);
      if (!dW) grads.set(lmName, (dW = Tensor.zeros([V, H], { dtype: 'f32', device: this.device })));
    }
    try {
      const r = tokenChunkedLmHead(hf, w, b.targets, {
        temperature,
        chunk: this.lmHeadChunk,
        tokenChunk: this.lmHeadTokenChunk,
        grad: lg.grad,
        dLmHead: dW,
        who: 'GptOssModel.forward',
      });
      if (headLora) {
        try {
          this.headLoraGrads(dW!, grads);
        } catch (e) {
          disposeAll(r.logprobs, r.entropy, r.dHidden);
          throw e;
        }
      }
      return r;
    } finally {
      if (headLora) dW!.dispose();
    }
  }

  /** The lm_head adapter's gradients from the merged head's dW f32 [V, H]: dB [V, r] = scale·dW·Aᵀ, dA [r, H] = scale·Bᵀ·dW. */
  private headLoraGrads(dW: Tensor, grads: Map<string, Tensor>): void {
    const headLora = this.lora!.head!;
    const s = this.lora!.scale;
    const put = (name: string, f: (o: { out?: Tensor; accumulate?: boolean; outDtype?: 'f32' }) => Tensor): void => {
      const g = grads.get(name);
      if (g) f({ out: g, accumulate: true });
      else grads.set(name, f({ outDtype: 'f32' }));
    };
    put('lm_head.lora_B', (o) => matmul(dW, headLora.A, { transB: true, alpha: s, ...o }));
    put('lm_head.lora_A', (o) => matmul(headLora.B, dW, { transA: true, alpha: s, ...o }));
  }

  /**
   * The LoRA dropout seed a forward runs with: undefined where no dropout applies (no adapters, dropout 0), the
   * seed of a training forward otherwise. Refused: a seed outside training (log-prob passes have no dropout) or
   * not an integer in [0, 2^53), and a training forward of dropout adapters without one (the adapters would
   * silently train without their dropout).
   */
  private checkDropoutSeed(train: boolean, seed: number | undefined): number | undefined {
    if (seed !== undefined) {
      if (!train) throw new Error('GptOssModel.forward: dropoutSeed is for training forwards (train: true); log-prob passes run without dropout');
      if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`GptOssModel.forward: dropoutSeed must be an integer in [0, 2^53), got ${seed}`);
    }
    const p = this.lora?.spec.dropout ?? 0;
    if (!train || p === 0) return undefined;
    if (seed === undefined) {
      throw new Error(`GptOssModel.forward: the LoRA adapters have dropout ${p} (trainer.policy.model.lora.dropout): a training forward needs opts.dropoutSeed`);
    }
    return seed;
  }

  /** Zeroed f32 gradient buffers for every parameter, by checkpoint name. */
  zeroGrads(): Map<string, Tensor> {
    const g = new Map<string, Tensor>();
    for (const [n, t] of this.weights.params) g.set(n, Tensor.zeros(t.shape, { dtype: 'f32', device: this.device }));
    // q/k/v: slices of one fused buffer per layer and kind, as backward makes them, so it accumulates with one GEMM.
    for (let l = 0; l < this.config.numLayers; l++) {
      for (const kind of ['weight', 'bias'] as const) {
        const ns = QKV_PROJ.map((n) => `${layerPrefix(l)}.${n}.${kind}`);
        const shapes = ns.map((n) => g.get(n)!.shape);
        const fused = Tensor.zeros([shapes.reduce((a, s) => a + s[0]!, 0), ...shapes[0]!.slice(1)], { dtype: 'f32', device: this.device });
        let r = 0;
        ns.forEach((n, i) => {
          g.get(n)!.dispose();
          g.set(n, fused.slice(r, r + shapes[i]![0]!));
          r += shapes[i]![0]!;
        });
        fused.dispose();
      }
    }
    return g;
  }

  /**
   * Backward from dLoss/dLogprob per token (f32 [T]; zero where a token does not count) to f32 gradients of
   * every parameter, added into `grads` (buffers it lacks are created; pass zeroGrads() or the previous
   * micro-batch's map to accumulate). Consumes and frees the state.
   */
  backward(state: ForwardState, dLogprobs: Tensor | null, grads: Map<string, Tensor> = new Map()): Map<string, Tensor> {
    const c = this.config;
    const b = state.batch;
    if (state.dHidden) {
      // The forward ran the LM head's backward (ForwardOptions.lossGradient, into the grads map it was given).
      if (dLogprobs) {
        throw new Error('GptOssModel.backward: this forward ran the LM head backward (lossGradient): pass dLogprobs null');
      }
    } else if (!dLogprobs || dLogprobs.numel !== b.numTokens) {
      throw new Error(`GptOssModel.backward: dLogprobs has ${dLogprobs?.numel ?? 'no'} values for ${b.numTokens} tokens`);
    }
    // With adapters the base is frozen: the LM head, final norm and embedding give no gradients (the [V, H] LM head
    // and embedding gradients are neither computed nor allocated), and the layers add only the adapters'.
    const frozen = this.lora !== null;
    const headLora = this.lora?.head;
    try {
      const lmName = c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
      let dHidden: Tensor;
      if (state.dHidden) {
        dHidden = state.dHidden;
        state.dHidden = undefined; // freed below, not by state.dispose()
      } else if (headLora) {
        // lm_head adapter: the fused op's gradient of the merged head W_eff = W + scale·B·A (f32 [V, H], made and
        // freed here) gives dB [V, r] = scale·dW·Aᵀ and dA [r, H] = scale·Bᵀ·dW, as for the router.
        const head = this.lmHead();
        const r = tokenLogprobsBackward(state.hf, head.w, b.targets, state.lse!, dLogprobs!, {
          temperature: state.temperature,
          chunk: this.lmHeadChunk,
        });
        head.w.dispose();
        this.headLoraGrads(r.dLmHead, grads);
        r.dLmHead.dispose();
        dHidden = r.dHidden;
      } else if (frozen) {
        dHidden = tokenLogprobsBackwardHidden(state.hf, this.weights.lmHead, b.targets, state.lse!, dLogprobs!, {
          temperature: state.temperature,
          chunk: this.lmHeadChunk,
        });
      } else {
        const head = tokenLogprobsBackward(state.hf, this.weights.lmHead, b.targets, state.lse!, dLogprobs!, {
          temperature: state.temperature,
          chunk: this.lmHeadChunk,
          dLmHead: grads.get(lmName),
        });
        accumulateGrad(grads, lmName, head.dLmHead); // a no-op where the op accumulated in place
        dHidden = head.dHidden;
      }
      const nf = rmsnormBackward(dHidden, state.xL, this.weights.finalNorm, state.rstdf);
      dHidden.dispose();
      if (frozen) nf.dw.dispose();
      else accumulateGrad(grads, 'model.norm.weight', nf.dw);
      let dx = nf.dx;
      for (let l = c.numLayers - 1; l >= 0; l--) {
        let s = state.saved[l] ?? null;
        if (!s) {
          const inp = state.inputs[l]!;
          const r = this.layers[l]!.forward(inp, b, true, { attention: state.attention[l] ?? undefined, dropoutSeed: state.dropoutSeed });
          r.y.dispose();
          s = r.saved!;
          state.inputs[l] = null;
          state.attention[l] = null; // taken over by s
        } else state.saved[l] = null;
        const dNext = this.layers[l]!.backward(s, dx, b, grads);
        dx.dispose();
        s.x.dispose();
        dx = dNext;
      }
      if (!frozen) {
        // Into the existing buffer (later micro-batches): no fresh [V, H] f32 gradient, no zeroing, no add pass.
        const g = grads.get('model.embed_tokens.weight');
        if (g) embeddingBackward(dx, b.ids, c.vocabSize, { into: g });
        else grads.set('model.embed_tokens.weight', embeddingBackward(dx, b.ids, c.vocabSize));
      }
      const emb = this.lora?.embed;
      if (emb) {
        // embed_tokens adapter (x += scale·A[ids]·Bᵀ): dU = scale·dx·B [N, r], dA [V, r] = the scatter-add of dU
        // by id, dB [H, r] = scale·dxᵀ·u with u = A[ids] [N, r] (gathered again: N·r values).
        const s = this.lora!.scale;
        const u = embeddingForward(emb.A, b.ids);
        const dU = matmul(dx, emb.B, { alpha: s, outDtype: 'f32' });
        accumulateGrad(grads, 'model.embed_tokens.lora_A', embeddingBackward(dU, b.ids, c.vocabSize));
        const gB = grads.get('model.embed_tokens.lora_B');
        if (gB) matmul(dx, u, { transA: true, alpha: s, out: gB, accumulate: true });
        else grads.set('model.embed_tokens.lora_B', matmul(dx, u, { transA: true, alpha: s, outDtype: 'f32' }));
        disposeAll(u, dU);
      }
      dx.dispose();
    } finally {
      state.dispose();
    }
    return grads;
  }

  // ---- convenience ------------------------------------------------------------------------------------------------
  /** For each sequence, log p(t[i+1] | t[0..i]) for i = 0..len-2 (a Float32Array of length len-1). */
  tokenLogprobs(sequences: readonly (readonly number[])[], opts: { temperature?: number } = {}): Float32Array[] {
    return this.tokenLogprobsAndEntropy(sequences, opts).map((r) => r.logprobs);
  }

  tokenLogprobsAndEntropy(sequences: readonly (readonly number[])[], opts: { temperature?: number } = {}): { logprobs: Float32Array; entropy: Float32Array }[] {
    const b = packSequences(sequences, this.device);
    try {
      const r = this.forward(b, { temperature: opts.temperature });
      const lp = r.logprobs.toFloat32();
      const ent = r.entropy.toFloat32();
      disposeAll(r.logprobs, r.entropy);
      return b.lengths.map((len, i) => ({
        logprobs: lp.slice(b.offsets[i]!, b.offsets[i]! + len - 1),
        entropy: ent.slice(b.offsets[i]!, b.offsets[i]! + len - 1),
      }));
    } finally {
      disposeBatch(b);
    }
  }

  dispose(): void {
    this.rope.invFreq.dispose();
    this.weights.dispose();
  }
}
