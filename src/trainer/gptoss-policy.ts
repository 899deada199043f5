// gptoss-policy.ts: the single-process Policy over a GptOssModel (CPU or one GPU); its Generator is
// LocalGenerator (src/inference/local-generator.ts).
//
// Policy: packed forward (varlen attention: sequences back to back, no padding) returning the response tokens'
// log-probs and entropy; backward from per-token dLoss/dlogp into fp32 gradient buffers that accumulate across
// micro-batches; global grad-norm clipping (a factor the AdamW step applies, not a pass over the gradients); AdamW
// on fp32 master weights (the BF16 weights are refreshed from them); save/load of weights (HF layout, loadable by
// loadModel) plus optimizer state (fp32 master, m, v).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Tensor } from '../tensor.ts';
import { Tensor as T } from '../tensor.ts';
import { GptOssModel, GptOssWeights, packSequences, disposeBatch, Checkpoint, saveCheckpoint as saveTensors, tensorToSave, type ForwardOptions } from '../model/index.ts';
import { adamwStep, gradNormAndClipFactor, scaleGradsInPlace } from '../ops/optim.ts';
import { cast } from '../ops/elementwise.ts';
import type {
  GradClipResult,
  LogprobModel,
  LogprobOptions,
  LogprobOutput,
  OptimizerHyper,
  Policy,
  SequenceBatch,
  TrainForward,
  TrainForwardOptions,
  LossGradientFn,
} from './policy.ts';

function checkBatch(b: SequenceBatch, who: string): void {
  if (b.sequences.length !== b.promptLens.length) throw new Error(`${who}: ${b.sequences.length} sequences but ${b.promptLens.length} prompt lengths`);
  b.sequences.forEach((s, i) => {
    const p = b.promptLens[i]!;
    if (p < 1 || p > s.length) throw new Error(`${who}: sequence ${i} has ${s.length} tokens and prompt length ${p} (need 1 <= prompt <= length)`);
  });
}

/** Slices each sequence's response log-probs out of a packed [T] array (position t holds log p(token t+1)). */
function responseSlices(all: Float32Array, offsets: number[], b: SequenceBatch): Float32Array[] {
  return b.sequences.map((s, i) => {
    const o = offsets[i]!;
    // Response tokens are positions promptLen..len-1; their log-probs sit at positions promptLen-1..len-2.
    return all.slice(o + b.promptLens[i]! - 1, o + s.length - 1);
  });
}

/**
 * A packed-token loss gradient (GptOssModel's lossGradient.grad) from one over response tokens: packed position p
 * holds log p(token p+1), so sequence i's response token r sits at offsets[i] + promptLens[i] - 1 + r; every
 * other position (prompts, each sequence's last token) gets 0.
 */
export function packedLossGradient(fn: LossGradientFn, offsets: number[], b: SequenceBatch): (t0: number, lp: Float32Array) => Float32Array {
  return (t0, lp) => {
    const t1 = t0 + lp.length;
    const d = new Float32Array(lp.length);
    b.sequences.forEach((s, i) => {
      const r0 = offsets[i]! + b.promptLens[i]! - 1; // packed position of response token 0
      const r1 = offsets[i]! + s.length - 1;
      const a = Math.max(t0, r0);
      const e = Math.min(t1, r1);
      if (a >= e) return;
      const g = fn(i, a - r0, lp.subarray(a - t0, e - t0));
      if (g.length !== e - a) throw new Error(`forward: lossGradient gave ${g.length} values for ${e - a} tokens of sequence ${i}`);
      d.set(g, a - t0);
    });
    return d;
  };
}

function toArrays(b: SequenceBatch): number[][] {
  return b.sequences.map((s) => Array.from(s));
}

/** Log-probs (no grad) of a GptOssModel (with its active adapters, if any). */
export function modelLogprobs(model: GptOssModel, batch: SequenceBatch, opts: LogprobOptions = {}): LogprobOutput {
  checkBatch(batch, 'logprobs');
  if (batch.sequences.length === 0) return { logprobs: [], entropy: opts.entropy ? [] : undefined };
  const pb = packSequences(toArrays(batch), model.device);
  try {
    const r = model.forward(pb, { temperature: opts.temperature ?? 1 });
    const lp = r.logprobs.toFloat32();
    const en = opts.entropy ? r.entropy.toFloat32() : undefined;
    r.logprobs.dispose();
    r.entropy.dispose();
    return { logprobs: responseSlices(lp, pb.offsets, batch), entropy: en ? responseSlices(en, pb.offsets, batch) : undefined };
  } finally {
    disposeBatch(pb);
  }
}

/** A frozen model that only computes log-probs (the KL reference). */
export class FrozenGptOss implements LogprobModel {
  constructor(readonly model: GptOssModel) {}
  get device(): string {
    return this.model.device;
  }
  async logprobs(batch: SequenceBatch, opts?: LogprobOptions): Promise<LogprobOutput> {
    return modelLogprobs(this.model, batch, opts);
  }
  dispose(): void {
    this.model.dispose();
  }
}

export interface OptState {
  master: Tensor;
  m: Tensor;
  v: Tensor;
}

export class GptOssPolicy implements Policy {
  readonly model: GptOssModel;
  protected grads: Map<string, Tensor> | null = null;
  /**
   * The clip factor clipGradNorm recorded (1: none): the effective gradients are grads x gradScale. optimizerStep's
   * AdamW applies it on the fly; zeroGrad resets it; a backward or clipGradNorm after it applies it first.
   */
  protected gradScale = 1;
  protected opt = new Map<string, OptState>();
  /** Optimizer steps taken (also saved). */
  optimizerSteps = 0;

  constructor(model: GptOssModel) {
    this.model = model;
  }

  get device(): string {
    return this.model.device;
  }

  async logprobs(batch: SequenceBatch, opts?: LogprobOptions): Promise<LogprobOutput> {
    return modelLogprobs(this.model, batch, opts);
  }

  /** forward() takes lossGradient (GptOssModel's fused LM-head backward). */
  readonly fusedLmHeadBackward = true;

  async forward(batch: SequenceBatch, opts: TrainForwardOptions = {}): Promise<TrainForward> {
    checkBatch(batch, 'forward');
    const pb = packSequences(toArrays(batch), this.device);
    const fused = opts.lossGradient !== undefined;
    let r: ReturnType<GptOssModel['forward']>;
    try {
      let lossGradient: ForwardOptions['lossGradient'];
      if (opts.lossGradient) {
        // The LM head's gradient accumulates during the forward: the buffers must exist, with any pending clip
        // factor applied first (as backward does).
        if (!this.grads) this.grads = new Map();
        this.applyGradScale();
        lossGradient = { grad: packedLossGradient(opts.lossGradient, pb.offsets, batch), grads: this.grads };
      }
      r = this.model.forward(pb, { ...this.trainForwardOptions(), train: true, temperature: opts.temperature ?? 1, lossGradient });
    } catch (e) {
      disposeBatch(pb);
      throw e;
    }
    const lp = r.logprobs.toFloat32();
    const en = opts.entropy ? r.entropy.toFloat32() : undefined;
    r.logprobs.dispose();
    r.entropy.dispose();
    const state = r.state!;
    let consumed = false;
    const release = (): void => {
      if (consumed) return;
      consumed = true;
      state.dispose(); // also frees the packed batch
    };
    return {
      logprobs: responseSlices(lp, pb.offsets, batch),
      entropy: en ? responseSlices(en, pb.offsets, batch) : undefined,
      backward: async (d?: Float32Array[]) => {
        if (consumed) throw new Error('TrainForward.backward: already consumed');
        if (fused) {
          if (d !== undefined) throw new Error('TrainForward.backward: this forward took lossGradient (the LM head backward ran in it): call backward() without dLogprobs');
          consumed = true;
          if (!this.grads) {
            state.dispose();
            throw new Error('TrainForward.backward: zeroGrad() ran between this forward (lossGradient) and its backward: the LM head gradient taken in the forward is gone');
          }
          this.applyGradScale();
          this.model.backward(state, null, this.grads);
          return;
        }
        if (!d) throw new Error('TrainForward.backward: dLogprobs missing (only a forward with lossGradient takes none)');
        if (d.length !== batch.sequences.length) throw new Error(`backward: ${d.length} gradient rows for ${batch.sequences.length} sequences`);
        const full = new Float32Array(pb.numTokens);
        batch.sequences.forEach((s, i) => {
          const n = s.length - batch.promptLens[i]!;
          if (d[i]!.length !== n) throw new Error(`backward: sequence ${i} has ${n} response tokens but ${d[i]!.length} gradients`);
          full.set(d[i]!, pb.offsets[i]! + batch.promptLens[i]! - 1);
        });
        const dt = T.from(full, [pb.numTokens], { device: this.device, dtype: 'f32' });
        consumed = true;
        try {
          // After zeroGrad() there are no buffers: the first micro-batch writes its gradients (no fill, no read).
          if (!this.grads) this.grads = new Map();
          this.applyGradScale(); // new gradients add onto the clipped ones, as after torch's clip_grad_norm_
          this.model.backward(state, dt, this.grads);
        } finally {
          dt.dispose();
        }
      },
      release,
    };
  }

  /** Model forward options of a training forward beyond train/temperature (LoraPolicy: the dropout seed). */
  protected trainForwardOptions(): Partial<ForwardOptions> {
    return {};
  }

  /** Drops the gradient buffers (set-to-none, as torch's zero_grad does): the next backward writes fresh ones. */
  zeroGrad(): void {
    if (this.grads) for (const g of this.grads.values()) g.dispose();
    this.grads = null;
    this.gradScale = 1;
  }

  /** Rewrites the gradients as their effective values (grads x gradScale) when a clip factor is pending. */
  protected applyGradScale(): void {
    if (this.gradScale === 1) return;
    if (this.grads) scaleGradsInPlace([...this.grads.values()], this.gradScale);
    this.gradScale = 1;
  }

  /** The norm of the effective gradients; when above maxNorm, records the factor that optimizerStep applies. */
  clipGradNorm(maxNorm: number): GradClipResult {
    if (!this.grads) return { norm: 0, finite: true, clipped: false };
    this.applyGradScale(); // a second clip measures the clipped gradients, as a second clip_grad_norm_ would
    const { norm, finite, clipped, scale } = gradNormAndClipFactor([...this.grads.values()], maxNorm);
    this.gradScale = scale;
    return { norm, finite, clipped };
  }

  private optState(name: string, p: Tensor): OptState {
    let s = this.opt.get(name);
    if (!s) {
      s = { master: cast(p, 'f32'), m: T.zeros(p.shape, { dtype: 'f32', device: this.device }), v: T.zeros(p.shape, { dtype: 'f32', device: this.device }) };
      this.opt.set(name, s);
    }
    return s;
  }

  optimizerStep(h: OptimizerHyper, step: number): void {
    if (!this.grads) throw new Error('optimizerStep: no gradients (run forward + backward first)');
    for (const [name, p] of this.model.weights.params) {
      const s = this.optState(name, p);
      // A parameter the loss did not reach has no buffer: its gradient is zero (momentum and decay still apply).
      let g = this.grads.get(name);
      if (!g) this.grads.set(name, (g = T.zeros(p.shape, { dtype: 'f32', device: this.device })));
      adamwStep({ master: s.master, grad: g, m: s.m, v: s.v, bf16: p }, { lr: h.lr, beta1: h.beta1, beta2: h.beta2, eps: h.eps, weightDecay: h.weightDecay, step, gradScale: this.gradScale });
    }
    this.optimizerSteps = step;
  }

  resetOptimizer(): void {
    for (const s of this.opt.values()) [s.master, s.m, s.v].forEach((t) => t.dispose());
    this.opt.clear();
    this.optimizerSteps = 0;
  }

  async frozenCopy(): Promise<LogprobModel> {
    const w = this.model.weights;
    const params = new Map<string, Tensor>();
    for (const [n, t] of w.params) params.set(n, t.clone());
    return new FrozenGptOss(new GptOssModel(new GptOssWeights(w.config, w.device, params), { recompute: this.model.recompute, lmHeadChunk: this.model.lmHeadChunk, deterministic: this.model.deterministic }));
  }

  async save(dir: string): Promise<void> {
    this.model.weights.save(dir);
    if (this.opt.size) {
      const od = join(dir, 'optimizer');
      mkdirSync(od, { recursive: true });
      const tensors = [...this.opt].flatMap(([n, s]) => [tensorToSave(`master.${n}`, s.master), tensorToSave(`m.${n}`, s.m), tensorToSave(`v.${n}`, s.v)]);
      saveTensors(od, tensors);
      writeFileSync(join(od, 'optimizer.json'), JSON.stringify({ step: this.optimizerSteps, kind: 'adamw', params: this.opt.size }));
    }
  }

  async load(dir: string): Promise<void> {
    const ck = Checkpoint.open(dir);
    try {
      for (const [n, p] of this.model.weights.params) {
        const t = ck.load(n, { device: this.device, dtype: 'bf16', shape: p.shape });
        p.copyFrom(t);
        t.dispose();
      }
    } finally {
      ck.close();
    }
    for (const s of this.opt.values()) [s.master, s.m, s.v].forEach((t) => t.dispose());
    this.opt.clear();
    const od = join(dir, 'optimizer');
    if (existsSync(join(od, 'optimizer.json'))) {
      const meta = JSON.parse(readFileSync(join(od, 'optimizer.json'), 'utf8')) as { step: number };
      const ock = Checkpoint.open(od);
      try {
        for (const [n, p] of this.model.weights.params) {
          const load = (k: string) => ock.load(`${k}.${n}`, { device: this.device, dtype: 'f32', shape: p.shape });
          this.opt.set(n, { master: load('master'), m: load('m'), v: load('v') });
        }
      } finally {
        ock.close();
      }
      this.optimizerSteps = meta.step;
    }
  }

  numParameters(): number {
    return this.model.weights.numParameters();
  }

  dispose(): void {
    this.zeroGrad();
    for (const s of this.opt.values()) [s.master, s.m, s.v].forEach((t) => t.dispose());
    this.opt.clear();
    this.model.dispose();
  }
}
