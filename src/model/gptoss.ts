// gptoss.ts: the GPT-OSS model composed in TypeScript from the ops (src/ops/*), on any device.
//
// Layout: a batch of sequences is packed token-major: T tokens, cuSeqlens [nSeq+1] delimiting sequences, positions
// restarting at 0 in each sequence. (A padded [B, S] batch is packed first: see packPadded.) Per layer:
//   a1 = rmsnorm(x) ; qkv = a1·Wqkvᵀ + b (q/k/v stacked) ; q,k = rope(q,k), v split off ; o = attn(q,k,v; sinks, window)
//   h  = x + o·Woᵀ + bo ; a2 = rmsnorm(h) ; y = h + moe(a2)
// then the final norm and the fused LM head, which returns per-token log p(target) and entropy without
// materialising [T, V] logits (vocabulary chunked). Activations are bf16; the residual-stream gradient, norms and
// softmaxes are fp32; parameter gradients are fp32.
//
// backward(state, dLogprobs) takes dLoss/dLogprob per token and produces the gradient of every parameter (by
// checkpoint name). With `recompute`, forward keeps only each layer's input and backward re-runs the layer.
import { gpuProfile } from '../log/gpu-profile.ts';
import { Tensor } from '../tensor.ts';
import type { GptOssConfig } from './config.ts';
import { GptOssWeights, layerPrefix, qkvRows, QKV_PROJ, type LayerWeights, type RandomInitOptions } from './weights.ts';
import { embeddingForward, embeddingBackward } from '../ops/embedding.ts';
import { rmsnormForward, rmsnormBackward } from '../ops/rmsnorm.ts';
import { yarnInvFreq, ropeQkvSplit, ropeQkvPack } from '../ops/rope.ts';
import { addInPlace, add } from '../ops/elementwise.ts';
import { linearForward, linearBackward } from '../ops/gemm.ts';
import { tokenLogprobs as lmHeadLogprobs, tokenLogprobsBackward, logits as lmLogits } from '../ops/logprob.ts';
import { sample } from '../ops/sampling.ts';
import { attentionForward, attentionBackward, attentionDecode } from '../ops/attention.ts';
import { moeForward, moeBackward, type MoeContext } from '../ops/moe.ts';
import { scatterRows } from '../ops/kvcache.ts';

// ---- batches -------------------------------------------------------------------------------------------------------
/** A packed batch on a device, plus its host-side bookkeeping. */
export interface PackedBatch {
  /** i32 [T] token ids. */
  ids: Tensor;
  /** i32 [T] position of each token within its sequence. */
  positions: Tensor;
  /** i32 [T] next token of the same sequence (0 at each sequence's last token, whose log-prob is meaningless). */
  targets: Tensor;
  /** i32 [nSeq+1]. */
  cuSeqlens: Tensor;
  maxSeqlen: number;
  /** Host copies. */
  lengths: number[];
  offsets: number[];
  numTokens: number;
}

/** Packs token sequences into one batch (each sequence needs at least one token). */
export function packSequences(seqs: readonly (readonly number[])[], device: string): PackedBatch {
  if (seqs.length === 0) throw new Error('packSequences: no sequences');
  const lengths = seqs.map((s) => s.length);
  const bad = lengths.findIndex((l) => l < 1);
  if (bad >= 0) throw new Error(`packSequences: sequence ${bad} is empty`);
  const T = lengths.reduce((a, b) => a + b, 0);
  const ids = new Int32Array(T);
  const pos = new Int32Array(T);
  const tgt = new Int32Array(T);
  const cu = new Int32Array(seqs.length + 1);
  const offsets: number[] = [];
  let o = 0;
  seqs.forEach((s, i) => {
    offsets.push(o);
    for (let j = 0; j < s.length; j++) {
      ids[o + j] = s[j]!;
      pos[o + j] = j;
      tgt[o + j] = j + 1 < s.length ? s[j + 1]! : 0;
    }
    o += s.length;
    cu[i + 1] = o;
  });
  return {
    ids: Tensor.from(ids, [T], { device }),
    positions: Tensor.from(pos, [T], { device }),
    targets: Tensor.from(tgt, [T], { device }),
    cuSeqlens: Tensor.from(cu, [seqs.length + 1], { device }),
    maxSeqlen: Math.max(...lengths),
    lengths,
    offsets,
    numTokens: T,
  };
}

/** Packs a right-padded [B, S] id matrix with per-row lengths (padding is dropped). */
export function packPadded(ids: Int32Array | number[], batch: number, seqLen: number, lengths: readonly number[], device: string): PackedBatch {
  if (ids.length !== batch * seqLen) throw new Error(`packPadded: ${ids.length} ids do not fill [${batch}, ${seqLen}]`);
  if (lengths.length !== batch) throw new Error(`packPadded: ${lengths.length} lengths for batch ${batch}`);
  const seqs: number[][] = [];
  for (let b = 0; b < batch; b++) {
    const l = lengths[b]!;
    if (l < 1 || l > seqLen) throw new Error(`packPadded: length ${l} of row ${b} not in 1..${seqLen}`);
    seqs.push(Array.from(ids.slice(b * seqLen, b * seqLen + l)));
  }
  return packSequences(seqs, device);
}

/**
 * Per-token values of a packed batch (e.g. forward's logprobs.toFloat32()) laid out as a right-padded [nSeq, S]
 * matrix, `fill` in the padding.
 */
export function unpackToPadded(b: PackedBatch, values: Float32Array, seqLen = b.maxSeqlen, fill = 0): Float32Array {
  if (values.length !== b.numTokens) throw new Error(`unpackToPadded: ${values.length} values for ${b.numTokens} tokens`);
  const out = new Float32Array(b.lengths.length * seqLen).fill(fill);
  b.lengths.forEach((len, i) => {
    if (len > seqLen) throw new Error(`unpackToPadded: sequence ${i} has ${len} tokens > ${seqLen}`);
    out.set(values.subarray(b.offsets[i]!, b.offsets[i]! + len), i * seqLen);
  });
  return out;
}

export function disposeBatch(b: PackedBatch): void {
  for (const t of [b.ids, b.positions, b.targets, b.cuSeqlens]) if (!t.disposed) t.dispose();
}

// ---- forward state -------------------------------------------------------------------------------------------------
/** The activations one layer's backward needs (opaque outside this file). */
export interface LayerSaved {
  x: Tensor; // layer input (bf16 [T,H])
  a1: Tensor;
  rstd1: Tensor;
  qr: Tensor; // [T,Hq,D] after rope
  kr: Tensor; // [T,Hkv,D] after rope
  v: Tensor; // [T,Hkv,D]
  attn: Tensor; // [T,Hq,D]
  lse: Tensor;
  h: Tensor; // x + attention branch
  a2: Tensor;
  rstd2: Tensor;
  moe: MoeContext;
}

/** What backward needs; dispose() it if backward is not run (the batch stays the caller's unless releaseBatch). */
export interface ForwardState {
  batch: PackedBatch;
  /** Per layer: saved activations, or null under recompute (then `inputs` holds the layer inputs). */
  saved: (LayerSaved | null)[];
  inputs: (Tensor | null)[];
  /** Final residual stream, normalised output and its rstd. */
  xL: Tensor;
  hf: Tensor;
  rstdf: Tensor;
  lse: Tensor;
  temperature: number;
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
  /** Vocabulary rows per LM-head chunk (default: the op's). */
  lmHeadChunk?: number;
  /**
   * Bitwise-reproducible attention backward (default false). false: on CUDA (head_dim 64) dq is accumulated with
   * fp32 atomics inside the dK/dV kernel, as FlashAttention does by default (two fewer GEMMs per tile: ~24% less
   * attention fwd+bwd time at S 4096 causal on an H100); dq's rounding then varies from run to run, everything else
   * stays reproducible. true: no atomics (see attentionBackward's `deterministic`).
   */
  deterministic?: boolean;
}

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

function disposeAll(...ts: (Tensor | null | undefined)[]): void {
  for (const t of ts) if (t && !t.disposed) t.dispose();
}

// Views share storage but each handle holds a reference until disposed (or garbage-collected, which may be late
// for device memory), so every view made here is released explicitly.
/** t viewed as `shape`; the original handle is released (the view now owns the storage reference). */
function reshape(t: Tensor, shape: readonly number[]): Tensor {
  const v = t.view(shape);
  t.dispose();
  return v;
}

/** Runs fn on a temporary view of t (t stays as it is). */
function withView<R>(t: Tensor, shape: readonly number[], fn: (v: Tensor) => R): R {
  const v = t.view(shape);
  try {
    return fn(v);
  } finally {
    v.dispose();
  }
}

/** A GPT-OSS model on one device. */
export class GptOssModel {
  readonly config: GptOssConfig;
  readonly weights: GptOssWeights;
  readonly device: string;
  recompute: boolean;
  lmHeadChunk: number | undefined;
  deterministic: boolean;
  private readonly invFreq: Tensor;
  private readonly attnScaling: number;

  constructor(weights: GptOssWeights, opts: ModelOptions = {}) {
    this.weights = weights;
    this.config = weights.config;
    this.device = weights.device;
    this.recompute = opts.recompute ?? false;
    this.lmHeadChunk = opts.lmHeadChunk;
    this.deterministic = opts.deterministic ?? false;
    const c = this.config;
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
    this.invFreq = Tensor.from(yf.invFreq, [c.headDim / 2], { device: this.device, dtype: 'f32' });
    this.attnScaling = yf.attentionScaling;
  }

  static random(config: GptOssConfig, device: string, init: RandomInitOptions = {}, opts: ModelOptions = {}): GptOssModel {
    return new GptOssModel(GptOssWeights.random(config, device, init), opts);
  }

  private window(l: number): number {
    return this.config.layerTypes[l] === 'sliding_attention' ? this.config.slidingWindow : 0;
  }

  // ---- one layer ------------------------------------------------------------------------------------------------
  /**
   * Layer l over a packed batch x (bf16 [T,H]); returns the output and (if save) the activations backward needs.
   * Public for per-layer drivers (sharded training, benchmarks); x stays owned by the caller.
   */
  layerForward(l: number, x: Tensor, b: PackedBatch, save: boolean): { y: Tensor; saved: LayerSaved | null } {
    const c = this.config;
    const w = this.weights.layers[l]!;
    const T = b.numTokens;
    const D = c.headDim;
    const dev = this.device;
    gpuProfile.start(dev);
    const { a1, rstd1, qr, kr, v } = this.attentionInputs(w, x, b.positions);
    gpuProfile.mark(dev, 'fwd norm+qkv+rope');
    const { out: attn, lse } = attentionForward(qr, kr, v, {
      cuSeqlens: b.cuSeqlens,
      maxSeqlen: b.maxSeqlen,
      window: this.window(l),
      sinks: w.sinks,
    });
    gpuProfile.mark(dev, this.window(l) > 0 ? 'fwd attention (sliding)' : 'fwd attention (full)');
    const o = withView(attn, [T, c.numHeads * D], (a) => linearForward(a, w.oW, w.oB));
    const h = add(x, o);
    o.dispose();
    const { y: a2, rstd: rstd2 } = rmsnormForward(h, w.postNorm, c.rmsNormEps);
    gpuProfile.mark(dev, 'fwd o_proj+residual+norm');
    // y = h + moe(a2): the residual add rides the MoE's combine pass.
    const m = moeForward(a2, moeWeights(w), { topK: c.topK, limit: c.swigluLimit, residual: h });
    const y = m.y;
    gpuProfile.mark(dev, 'fwd moe+residual');
    if (save) return { y, saved: { x, a1, rstd1, qr, kr, v, attn, lse, h, a2, rstd2, moe: m.ctx } };
    m.ctx.dispose();
    disposeAll(a1, rstd1, qr, kr, v, attn, lse, h, a2, rstd2);
    return { y, saved: null };
  }

  /**
   * Backward of layer l: dy (f32 [T,H]) -> dx (f32 [T,H]); parameter gradients are added into `grads` (f32,
   * by checkpoint name; missing entries are created). Frees the saved activations (not s.x, the caller's).
   */
  layerBackward(l: number, s: LayerSaved, dy: Tensor, b: PackedBatch, grads: Map<string, Tensor>): Tensor {
    const c = this.config;
    const w = this.weights.layers[l]!;
    const T = b.numTokens;
    const D = c.headDim;
    const p = layerPrefix(l);
    const acc = (name: string, t: Tensor): void => {
      const g = grads.get(`${p}.${name}`);
      if (g === t) return; // accumulated in place by the op
      if (g) {
        addInPlace(g, t);
        t.dispose();
      } else grads.set(`${p}.${name}`, t);
    };
    // linearBackward accumulates into existing buffers; fresh ones it returns are kept.
    const lin = (name: string, dy2: Tensor, x2: Tensor, w2: Tensor, dxDtype: 'bf16' | 'f32'): Tensor => {
      const r = linearBackward(dy2, x2, w2, { dW: grads.get(`${p}.${name}.weight`), db: grads.get(`${p}.${name}.bias`), dxDtype });
      grads.set(`${p}.${name}.weight`, r.dW);
      grads.set(`${p}.${name}.bias`, r.db);
      return r.dx!;
    };
    const dev = this.device;
    gpuProfile.start(dev);
    // MoE branch: y = h + moe(rmsnorm2(h)).
    // Expert weight gradients (3 GB f32 per layer at 20b size) accumulate inside the op when buffers exist.
    const accGU = grads.get(`${p}.mlp.experts.gate_up_proj`), accDown = grads.get(`${p}.mlp.experts.down_proj`);
    const mg = moeBackward(dy, s.moe, undefined, accGU && accDown ? { dGateUpW: accGU, dDownW: accDown } : undefined);
    s.moe.dispose();
    gpuProfile.mark(dev, 'bwd moe');
    acc('mlp.router.weight', mg.dRouterW);
    acc('mlp.router.bias', mg.dRouterB);
    acc('mlp.experts.gate_up_proj', mg.dGateUpW);
    acc('mlp.experts.gate_up_proj_bias', mg.dGateUpB);
    acc('mlp.experts.down_proj', mg.dDownW);
    acc('mlp.experts.down_proj_bias', mg.dDownB);
    // dy also reaches h through the residual: dH = dy + d(rmsnorm2 branch), added inside the norm's backward.
    const n2 = rmsnormBackward(mg.dx, s.h, w.postNorm, s.rstd2, dy);
    mg.dx.dispose();
    acc('post_attention_layernorm.weight', n2.dw);
    const dH = n2.dx; // f32 [T,H], gradient w.r.t. h (and the residual input x)
    disposeAll(s.a2, s.rstd2, s.h);
    gpuProfile.mark(dev, 'bwd moe grads+norm');
    // Attention branch: h = x + o_proj(attn(...)).
    // dOut goes to the attention backward in bf16 (its native input dtype, as a BF16 autograd would store it).
    const dAttn = reshape(
      withView(s.attn, [T, c.numHeads * D], (a) => lin('self_attn.o_proj', dH, a, w.oW, 'bf16')),
      [T, c.numHeads, D],
    );
    gpuProfile.mark(dev, 'bwd o_proj');
    const ab = attentionBackward(dAttn, s.qr, s.kr, s.v, s.attn, s.lse, {
      cuSeqlens: b.cuSeqlens,
      maxSeqlen: b.maxSeqlen,
      window: this.window(l),
      sinks: w.sinks,
      deterministic: this.deterministic,
    });
    gpuProfile.mark(dev, this.window(l) > 0 ? 'bwd attention (sliding)' : 'bwd attention (full)');
    disposeAll(dAttn, s.attn, s.lse, s.qr, s.kr);
    if (ab.dsinks) acc('self_attn.sinks', ab.dsinks);
    // The fused projection's output gradient dQKV [T, Hq*D + 2*Hkv*D]: dq and dk through the backward rope, dv
    // copied, in one pass. bf16 on CUDA (the GEMMs would round an f32 one to bf16 anyway); f32 on the CPU, whose
    // GEMM multiplies mixed operands exactly, so its numerics stay those of separate f32 rope outputs.
    const dqkv = ropeQkvPack(ab.dq, ab.dk, ab.dv, b.positions, this.invFreq, this.attnScaling, dev === 'cpu' ? 'f32' : 'bf16');
    disposeAll(ab.dq, ab.dk, ab.dv, s.v);
    gpuProfile.mark(dev, 'bwd rope');
    const dA1 = this.qkvBackward(l, dqkv, s.a1, grads);
    dqkv.dispose();
    gpuProfile.mark(dev, 'bwd qkv proj');
    const n1 = rmsnormBackward(dA1, s.x, w.inputNorm, s.rstd1, dH); // + dH: the residual around attention
    dA1.dispose();
    acc('input_layernorm.weight', n1.dw);
    dH.dispose();
    disposeAll(s.a1, s.rstd1);
    gpuProfile.mark(dev, 'bwd norm1+residual');
    return n1.dx;
  }

  /**
   * Backward of the fused q/k/v projection of layer l: dqkv [T, Hq*D + 2*Hkv*D] (bf16|f32), a1 bf16 [T, H].
   * Returns dA1 f32 [T, H] (one GEMM with K = Hq*D + 2*Hkv*D) and puts the weight and bias gradients (one GEMM and
   * one column sum for the three) into `grads` under the q/k/v checkpoint names:
   * - no buffers yet (set-to-none): fresh fused f32 buffers are written, and the names get their row slices;
   * - buffers that are consecutive slices of one fused buffer (made here or by zeroGrads()): added into in place;
   * - anything else (separate buffers, some missing): the fused gradient is computed fresh and added into each
   *   buffer (or its slice kept where there is none).
   */
  private qkvBackward(l: number, dqkv: Tensor, a1: Tensor, grads: Map<string, Tensor>): Tensor {
    const w = this.weights.layers[l]!;
    const p = layerPrefix(l);
    const rows = qkvRows(this.config);
    type Kind = 'weight' | 'bias';
    const names = (kind: Kind): string[] => QKV_PROJ.map((n) => `${p}.${n}.${kind}`);
    // For each of weight/bias: the fused buffer to accumulate into (a view joining the existing slices), if any.
    const target = (kind: Kind): { names: string[]; have: (Tensor | undefined)[]; fused: Tensor | null } => {
      const ns = names(kind);
      const have = ns.map((n) => grads.get(n));
      const fused = have.every((t) => t && t.dtype === 'f32') ? Tensor.joinRows(have as Tensor[]) : null;
      return { names: ns, have, fused };
    };
    const tw = target('weight'), tb = target('bias');
    const r = linearBackward(dqkv, a1, w.qkvW, { dW: tw.fused ?? undefined, db: tb.fused ?? undefined, dxDtype: 'f32' });
    for (const [t, g] of [[tw, r.dW], [tb, r.db]] as const) {
      // Accumulated in place into the existing buffers: nothing to hand out.
      if (t.fused) {
        t.fused.dispose();
        continue;
      }
      let r0 = 0;
      t.names.forEach((n, i) => {
        const part = g.slice(r0, r0 + rows[i]!);
        r0 += rows[i]!;
        const old = t.have[i];
        if (old) {
          addInPlace(old, part);
          part.dispose();
        } else grads.set(n, part); // the slice keeps the fused storage alive; the other names hold the rest
      });
      g.dispose();
    }
    return r.dx!;
  }

  // ---- whole model ----------------------------------------------------------------------------------------------
  /** Forward over a packed batch: per-token log-probs and entropy; with train: true, the state for backward. */
  forward(b: PackedBatch, opts: ForwardOptions = {}): ForwardResult {
    const c = this.config;
    const train = opts.train ?? false;
    const temperature = opts.temperature ?? 1;
    const hidden: Float32Array[] | undefined = opts.collectHidden ? [] : undefined;
    const saved: (LayerSaved | null)[] = [];
    const inputs: (Tensor | null)[] = [];
    let x = embeddingForward(this.weights.embedding, b.ids);
    hidden?.push(x.toFloat32());
    for (let l = 0; l < c.numLayers; l++) {
      const keep = train && !this.recompute;
      const r = this.layerForward(l, x, b, keep);
      if (train) {
        saved.push(r.saved);
        inputs.push(this.recompute ? x : null);
      } else x.dispose();
      x = r.y;
      if (hidden && l < c.numLayers - 1) hidden.push(x.toFloat32());
    }
    const { y: hf, rstd: rstdf } = rmsnormForward(x, this.weights.finalNorm, c.rmsNormEps);
    hidden?.push(hf.toFloat32());
    const lp = lmHeadLogprobs(hf, this.weights.lmHead, b.targets, { temperature, chunk: this.lmHeadChunk });
    const logits = opts.returnLogits ? lmLogits(hf, this.weights.lmHead) : undefined;
    const result: ForwardResult = { logprobs: lp.logprobs, entropy: lp.entropy, hidden, logits };
    if (train) {
      const releaseBatch = opts.releaseBatch ?? false;
      const state: ForwardState = {
        batch: b,
        saved,
        inputs,
        xL: x,
        hf,
        rstdf,
        lse: lp.lse,
        temperature,
        dispose() {
          for (const s of saved) {
            if (!s) continue;
            s.moe.dispose();
            disposeAll(s.x, s.a1, s.rstd1, s.qr, s.kr, s.v, s.attn, s.lse, s.h, s.a2, s.rstd2);
          }
          saved.length = 0;
          for (const t of inputs) disposeAll(t);
          inputs.length = 0;
          disposeAll(this.xL, this.hf, this.rstdf, this.lse);
          if (releaseBatch) disposeBatch(b);
        },
      };
      result.state = state;
    } else {
      disposeAll(x, hf, rstdf, lp.lse);
    }
    return result;
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
  backward(state: ForwardState, dLogprobs: Tensor, grads: Map<string, Tensor> = new Map()): Map<string, Tensor> {
    const c = this.config;
    const b = state.batch;
    if (dLogprobs.numel !== b.numTokens) throw new Error(`GptOssModel.backward: dLogprobs has ${dLogprobs.numel} values for ${b.numTokens} tokens`);
    try {
      const lmName = c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
      const head = tokenLogprobsBackward(state.hf, this.weights.lmHead, b.targets, state.lse, dLogprobs, {
        temperature: state.temperature,
        chunk: this.lmHeadChunk,
        dLmHead: grads.get(lmName),
      });
      if (head.dLmHead !== grads.get(lmName)) accumulate(grads, lmName, head.dLmHead);
      const nf = rmsnormBackward(head.dHidden, state.xL, this.weights.finalNorm, state.rstdf);
      head.dHidden.dispose();
      accumulate(grads, 'model.norm.weight', nf.dw);
      let dx = nf.dx;
      for (let l = c.numLayers - 1; l >= 0; l--) {
        let s = state.saved[l] ?? null;
        if (!s) {
          const inp = state.inputs[l]!;
          const r = this.layerForward(l, inp, b, true);
          r.y.dispose();
          s = r.saved!;
          state.inputs[l] = null;
        } else state.saved[l] = null;
        const dNext = this.layerBackward(l, s, dx, b, grads);
        dx.dispose();
        s.x.dispose();
        dx = dNext;
      }
      const dEmb = embeddingBackward(dx, b.ids, c.vocabSize);
      dx.dispose();
      accumulate(grads, 'model.embed_tokens.weight', dEmb);
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

  // ---- generation -------------------------------------------------------------------------------------------------
  /**
   * Batched generation: one packed prefill over all prompts fills a KV cache [B, Smax, Hkv, D] per layer, then
   * one decode step per new token for all sequences (finished ones are carried along and ignored).
   */
  generate(prompts: readonly (readonly number[])[], opts: GenerateOptions): GenerateResult[] {
    const c = this.config;
    const B = prompts.length;
    const D = c.headDim;
    const maxNew = opts.maxNewTokens;
    if (B === 0) return [];
    if (!(maxNew >= 1)) throw new Error(`generate: maxNewTokens must be >= 1, got ${maxNew}`);
    const stop = new Set(opts.stopTokens ?? c.eosTokenIds);
    const temperature = opts.temperature ?? 1;
    const seed = opts.seed ?? 0;
    const smax = Math.max(...prompts.map((p) => p.length)) + maxNew;
    const dev = this.device;
    const kCache: Tensor[] = [];
    const vCache: Tensor[] = [];
    for (let l = 0; l < c.numLayers; l++) {
      kCache.push(Tensor.zeros([B, smax, c.numKvHeads, D], { dtype: 'bf16', device: dev }));
      vCache.push(Tensor.zeros([B, smax, c.numKvHeads, D], { dtype: 'bf16', device: dev }));
    }
    const results: GenerateResult[] = prompts.map(() => ({ tokens: [], logprobs: [], finishReason: 'length' }));
    const done = new Array<boolean>(B).fill(false);
    const lens = prompts.map((p) => p.length);
    const pb = packSequences(prompts, dev);
    // Cache row (b * smax + position) of every prompt token, for scatterRows into cache.view([B*smax, Hkv, D]).
    const rowsHost = new Int32Array(pb.numTokens);
    pb.offsets.forEach((o, b) => {
      for (let j = 0; j < pb.lengths[b]!; j++) rowsHost[o + j] = b * smax + j;
    });
    const prefillRows = Tensor.from(rowsHost, [pb.numTokens], { device: dev });
    try {
      // Prefill: the whole prompts, caching k (after rope) and v per layer.
      let x = embeddingForward(this.weights.embedding, pb.ids);
      for (let l = 0; l < c.numLayers; l++) {
        const y = this.prefillLayer(l, x, pb, kCache[l]!, vCache[l]!, prefillRows);
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
      let next = this.sampleNext(last, { temperature, topP: opts.topP, topK: opts.topK, seed, step: 0 });
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
        let h = embeddingForward(this.weights.embedding, ids);
        for (let l = 0; l < c.numLayers; l++) {
          const y = this.decodeLayer(l, h, pos, seqLens, kCache[l]!, vCache[l]!, rows);
          h.dispose();
          h = y;
        }
        disposeAll(ids, pos, seqLens, rows);
        next = this.sampleNext(h, { temperature, topP: opts.topP, topK: opts.topK, seed, step: step + 1 });
        h.dispose();
      }
    } finally {
      disposeBatch(pb);
      prefillRows.dispose();
      for (const t of [...kCache, ...vCache]) t.dispose();
    }
    return results;
  }

  /** Final norm + LM head logits of [B, H] hidden rows, then one sampling step. */
  private sampleNext(x: Tensor, o: { temperature: number; topP?: number; topK?: number; seed: number; step: number }): { tokens: Int32Array; logprobs: Float32Array } {
    const { y, rstd } = rmsnormForward(x, this.weights.finalNorm, this.config.rmsNormEps);
    const lg = lmLogits(y, this.weights.lmHead);
    disposeAll(y, rstd);
    const s = sample(lg, { temperature: o.temperature, topP: o.topP, topK: o.topK, seed: o.seed, step: o.step });
    lg.dispose();
    const r = { tokens: s.tokens.toInt32(), logprobs: s.logprobs.toFloat32() };
    disposeAll(s.tokens, s.logprobs);
    return r;
  }

  /** Writes src rows ([N, Hkv, D]) into cache [B, Smax, Hkv, D] at flat rows b*Smax + position. */
  private static cacheScatter(cache: Tensor, src: Tensor, rows: Tensor): void {
    const [b, smax, hkv, d] = cache.shape as [number, number, number, number];
    const flat = cache.view([b * smax, hkv, d]);
    scatterRows(flat, src, rows);
    flat.dispose();
  }

  /**
   * The attention prologue of a layer: a1 = rmsnorm(x), q/k/v = a1·Wᵀ + b as [T, heads, D], RoPE on q and k at
   * `positions` (i32 [T]). Returns the normalised input and rstd (kept for backward) with q, k roped and v.
   */
  private attentionInputs(
    w: GptOssWeights['layers'][number],
    x: Tensor,
    positions: Tensor,
  ): { a1: Tensor; rstd1: Tensor; qr: Tensor; kr: Tensor; v: Tensor } {
    const c = this.config;
    const T = x.shape[0]!;
    const D = c.headDim;
    const { y: a1, rstd: rstd1 } = rmsnormForward(x, w.inputNorm, c.rmsNormEps);
    // One GEMM for the three projections (bf16 [T, Hq*D + 2*Hkv*D]), then one pass that ropes q and k out of it
    // and copies v, each into the contiguous [T, heads, D] the attention kernels take.
    const qkv = linearForward(a1, w.qkvW, w.qkvB);
    const { q: qr, k: kr, v } = ropeQkvSplit(qkv, positions, this.invFreq, this.attnScaling, c.numHeads, c.numKvHeads);
    qkv.dispose();
    return { a1, rstd1, qr, kr, v };
  }

  private prefillLayer(l: number, x: Tensor, b: PackedBatch, kc: Tensor, vc: Tensor, rows: Tensor): Tensor {
    const w = this.weights.layers[l]!;
    const T = b.numTokens;
    const { a1, rstd1, qr, kr, v } = this.attentionInputs(w, x, b.positions);
    disposeAll(a1, rstd1);
    GptOssModel.cacheScatter(kc, kr, rows);
    GptOssModel.cacheScatter(vc, v, rows);
    const { out: attn, lse } = attentionForward(qr, kr, v, { cuSeqlens: b.cuSeqlens, maxSeqlen: b.maxSeqlen, window: this.window(l), sinks: w.sinks });
    disposeAll(qr, kr, v, lse);
    return this.attnOutAndMoe(w, x, attn, T);
  }

  private decodeLayer(l: number, x: Tensor, pos: Tensor, seqLens: Tensor, kc: Tensor, vc: Tensor, rows: Tensor): Tensor {
    const w = this.weights.layers[l]!;
    const B = x.shape[0]!;
    const { a1, rstd1, qr, kr, v } = this.attentionInputs(w, x, pos);
    disposeAll(a1, rstd1);
    GptOssModel.cacheScatter(kc, kr, rows);
    GptOssModel.cacheScatter(vc, v, rows);
    const attn = attentionDecode(qr, kc, vc, { seqLens, window: this.window(l), sinks: w.sinks });
    disposeAll(qr, kr, v);
    return this.attnOutAndMoe(w, x, attn, B);
  }

  /** h = x + o_proj(attn); y = h + moe(rmsnorm(h)). Frees attn. */
  private attnOutAndMoe(w: LayerWeights, x: Tensor, attn: Tensor, T: number): Tensor {
    const c = this.config;
    const o = withView(attn, [T, c.numHeads * c.headDim], (a) => linearForward(a, w.oW, w.oB));
    attn.dispose();
    const h = add(x, o);
    o.dispose();
    const { y: a2, rstd: rstd2 } = rmsnormForward(h, w.postNorm, c.rmsNormEps);
    const m = moeForward(a2, moeWeights(w), { topK: c.topK, limit: c.swigluLimit, residual: h });
    m.ctx.dispose();
    disposeAll(h, a2, rstd2);
    return m.y;
  }

  dispose(): void {
    this.invFreq.dispose();
    this.weights.dispose();
  }
}

function moeWeights(w: LayerWeights): { routerW: Tensor; routerB: Tensor; gateUpW: Tensor; gateUpB: Tensor; downW: Tensor; downB: Tensor } {
  return { routerW: w.routerW, routerB: w.routerB, gateUpW: w.gateUpW, gateUpB: w.gateUpB, downW: w.downW, downB: w.downB };
}

/** grads[name] += t (t is consumed), or grads[name] = t when there is no buffer yet. */
function accumulate(grads: Map<string, Tensor>, name: string, t: Tensor): void {
  const g = grads.get(name);
  if (g) {
    addInPlace(g, t);
    t.dispose();
  } else grads.set(name, t);
}
