// toy.ts: a test double for the trainer: a bigram policy in plain TypeScript (logits = W[previous token]) with an
// exact backward and AdamW, a sampler over it, and a one-token task. It exercises the GRPO loop, checkpoints and
// bad-input paths without the native model.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Completion, GradClipResult, Generator, LogprobModel, LogprobOptions, LogprobOutput, OptimizerHyper, Policy, SamplingParams, SequenceBatch, TrainForward } from '../../src/trainer/policy.ts';
import type { TaskEnv, TaskExample } from '../../src/trainer/task.ts';
import { Rng } from '../../src/trainer/rng.ts';

export const TOY_V = 12;
export const TOY_STOP = 11;

export class ToyPolicy implements Policy {
  readonly device = 'cpu';
  W: Float64Array;
  grad: Float64Array;
  m: Float64Array;
  v: Float64Array;
  /** Forward calls (train) at which log-probs come back NaN (to test skipped steps). */
  nanOnForward = new Set<number>();
  forwardCalls = 0;
  failSave = false;

  constructor(seed = 1, readonly V = TOY_V) {
    const r = new Rng(seed);
    this.W = Float64Array.from({ length: V * V }, () => (r.next() - 0.5) * 0.1);
    this.grad = new Float64Array(V * V);
    this.m = new Float64Array(V * V);
    this.v = new Float64Array(V * V);
  }

  probs(prev: number, temperature: number): Float64Array {
    const V = this.V;
    const p = new Float64Array(V);
    let mx = -Infinity;
    for (let j = 0; j < V; j++) mx = Math.max(mx, this.W[prev * V + j]! / temperature);
    let s = 0;
    for (let j = 0; j < V; j++) s += p[j] = Math.exp(this.W[prev * V + j]! / temperature - mx);
    for (let j = 0; j < V; j++) p[j]! /= s;
    return p;
  }

  private compute(batch: SequenceBatch, opts: LogprobOptions = {}): LogprobOutput {
    const T = opts.temperature ?? 1;
    const lps: Float32Array[] = [];
    const ents: Float32Array[] = [];
    batch.sequences.forEach((seq, i) => {
      const p0 = batch.promptLens[i]!;
      const lp = new Float32Array(seq.length - p0);
      const en = new Float32Array(seq.length - p0);
      for (let t = p0; t < seq.length; t++) {
        const p = this.probs(seq[t - 1]!, T);
        lp[t - p0] = Math.log(p[seq[t]!]!);
        let e = 0;
        for (const x of p) if (x > 0) e -= x * Math.log(x);
        en[t - p0] = e;
      }
      lps.push(lp);
      ents.push(en);
    });
    return { logprobs: lps, entropy: opts.entropy ? ents : undefined };
  }

  async logprobs(batch: SequenceBatch, opts?: LogprobOptions): Promise<LogprobOutput> {
    return this.compute(batch, opts);
  }

  async forward(batch: SequenceBatch, opts: LogprobOptions = {}): Promise<TrainForward> {
    const out = this.compute(batch, opts);
    const call = this.forwardCalls++;
    if (this.nanOnForward.has(call)) out.logprobs = out.logprobs.map((l) => l.map(() => NaN));
    const T = opts.temperature ?? 1;
    const V = this.V;
    return {
      ...out,
      backward: async (d: Float32Array[]) => {
        batch.sequences.forEach((seq, i) => {
          const p0 = batch.promptLens[i]!;
          for (let t = p0; t < seq.length; t++) {
            const g = d[i]![t - p0]!;
            if (g === 0) continue;
            const prev = seq[t - 1]!;
            const p = this.probs(prev, T);
            for (let j = 0; j < V; j++) this.grad[prev * V + j]! += (g * ((j === seq[t] ? 1 : 0) - p[j]!)) / T;
          }
        });
      },
      release: () => {},
    };
  }

  zeroGrad(): void {
    this.grad.fill(0);
  }

  clipGradNorm(maxNorm: number): GradClipResult {
    let s = 0;
    for (const x of this.grad) s += x * x;
    const norm = Math.sqrt(s);
    if (!Number.isFinite(norm)) return { norm, finite: false, clipped: false };
    if (norm > maxNorm) {
      const k = maxNorm / (norm + 1e-6);
      for (let i = 0; i < this.grad.length; i++) this.grad[i]! *= k;
      return { norm, finite: true, clipped: true };
    }
    return { norm, finite: true, clipped: false };
  }

  optimizerStep(h: OptimizerHyper, step: number): void {
    const b1c = 1 - h.beta1 ** step;
    const b2c = 1 - h.beta2 ** step;
    for (let i = 0; i < this.W.length; i++) {
      const g = this.grad[i]!;
      this.m[i] = h.beta1 * this.m[i]! + (1 - h.beta1) * g;
      this.v[i] = h.beta2 * this.v[i]! + (1 - h.beta2) * g * g;
      this.W[i] = this.W[i]! * (1 - h.lr * h.weightDecay) - (h.lr * (this.m[i]! / b1c)) / (Math.sqrt(this.v[i]! / b2c) + h.eps);
    }
  }

  resetOptimizer(): void {
    this.m.fill(0);
    this.v.fill(0);
  }

  async frozenCopy(): Promise<LogprobModel> {
    const c = new ToyPolicy(0, this.V);
    c.W = Float64Array.from(this.W);
    return c;
  }

  async save(dir: string): Promise<void> {
    if (this.failSave) {
      const e = new Error(`ENOSPC: no space left on device, write '${join(dir, 'model.json')}'`) as NodeJS.ErrnoException;
      e.code = 'ENOSPC';
      writeFileSync(join(dir, 'partial.bin'), 'x');
      throw e;
    }
    writeFileSync(join(dir, 'model.json'), JSON.stringify({ W: Array.from(this.W), m: Array.from(this.m), v: Array.from(this.v) }));
  }

  async load(dir: string): Promise<void> {
    const j = JSON.parse(readFileSync(join(dir, 'model.json'), 'utf8')) as { W: number[]; m: number[]; v: number[] };
    this.W = Float64Array.from(j.W);
    this.m = Float64Array.from(j.m);
    this.v = Float64Array.from(j.v);
  }

  numParameters(): number {
    return this.W.length;
  }

  dispose(): void {}
}

export class ToyGenerator implements Generator {
  constructor(readonly policy: ToyPolicy) {}

  async generate(prompts: Int32Array[], params: SamplingParams, onProgress?: (n: number) => void): Promise<Completion[]> {
    const rng = new Rng(params.seed);
    let done = 0;
    return prompts.map((prompt) => {
      const toks: number[] = [];
      const lps: number[] = [];
      let prev = prompt[prompt.length - 1]!;
      let finish: 'stop' | 'length' = 'length';
      for (let k = 0; k < params.maxTokens; k++) {
        const T = params.temperature > 0 ? params.temperature : 1;
        const p = this.policy.probs(prev, T);
        let tok = 0;
        if (params.temperature === 0) {
          for (let j = 1; j < p.length; j++) if (p[j]! > p[tok]!) tok = j;
        } else {
          let u = rng.next();
          tok = p.length - 1;
          for (let j = 0; j < p.length; j++) {
            u -= p[j]!;
            if (u < 0) {
              tok = j;
              break;
            }
          }
        }
        toks.push(tok);
        lps.push(Math.log(p[tok]!));
        done++;
        prev = tok;
        if (params.stopTokenIds.includes(tok)) {
          finish = 'stop';
          break;
        }
      }
      onProgress?.(done);
      return { tokens: Int32Array.from(toks), logprobs: Float32Array.from(lps), finishReason: finish };
    });
  }

  async updateWeights(): Promise<void> {}
  dispose(): void {}
}

/** Prompt [0, a] (a in 1..4); the right answer is token 5 + (a mod 4) (in 5..8), then the stop token. */
export function toyTask(numTrain = 64, numVal = 16): TaskEnv {
  const mk = (i: number, prefix: string): TaskExample => {
    const a = 1 + (i % 4);
    const ans = 5 + (a % 4);
    return { id: `${prefix}${i}`, prompt: Int32Array.from([0, a]), answer: String(ans), reference: Int32Array.from([ans, TOY_STOP]) };
  };
  return {
    name: 'toy',
    train: Array.from({ length: numTrain }, (_, i) => mk(i, 'train')),
    val: Array.from({ length: numVal }, (_, i) => mk(i, 'val')),
    stopTokenIds: [TOY_STOP],
    reward: (ex, c) => {
      const ok = c.length > 0 && String(c[0]) === ex.answer;
      return { reward: ok ? 1 : 0, correct: ok };
    },
  };
}
