// fsdp-common.ts: what test/cpu/sharded-policy.test.ts and its worker (fsdp-worker.ts) share: the tiny model, the
// per-step mini-batches, a token-mean policy-gradient loss normalised by the whole mini-batch, the hyper-parameters.
import { presetConfig } from '../../src/model/index.ts';
import type { OptimizerHyper, SequenceBatch } from '../../src/trainer/policy.ts';

export const CFG = presetConfig('gpt-oss-tiny-256');
export const SEED = 11;
/** Sequences per micro-batch (per rank for the sharded policy, of the whole mini-batch for one process). */
export const MICRO = 2;
/** Small enough that every step clips (the tiny model's grad norms are around 1). */
export const MAX_NORM = 0.05;
export const HYPER: OptimizerHyper = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };

export interface MiniBatch extends SequenceBatch {
  advantages: number[];
}

/** Step s's mini-batch: 9 sequences of 5..16 tokens (prompts of 1..4), advantages of both signs. */
export function stepBatch(step: number): MiniBatch {
  let s = (step * 2654435761) >>> 0 || 1;
  const next = (): number => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
  const sequences: Int32Array[] = [];
  const promptLens: number[] = [];
  const advantages: number[] = [];
  for (let i = 0; i < 9; i++) {
    const len = 5 + Math.floor(next() * 12);
    sequences.push(Int32Array.from({ length: len }, () => Math.floor(next() * 250)));
    promptLens.push(1 + Math.floor(next() * 4));
    advantages.push(next() * 2 - 0.8);
  }
  return { sequences, promptLens, advantages };
}

/** Response tokens of the whole mini-batch: the token_mean normaliser every rank uses. */
export function normTokens(b: SequenceBatch): number {
  return b.sequences.reduce((a, s, i) => a + s.length - b.promptLens[i]!, 0);
}

/** loss = -Σ adv_i · logp_it / normTokens over the given sequences, and dLoss/dlogp. */
export function pgLoss(logprobs: Float32Array[], advantages: number[], norm: number): { loss: number; d: Float32Array[] } {
  let loss = 0;
  const d = logprobs.map((lp, i) => {
    const w = -advantages[i]! / norm;
    for (const v of lp) loss += w * v;
    return new Float32Array(lp.length).fill(w);
  });
  return { loss, d };
}

export interface StepRecord {
  step: number;
  loss: number;
  norm: number;
  clipped: boolean;
}

/** What rank 0 of the worker writes. */
export interface WorkerResult {
  steps: StepRecord[];
  /** fp32 masters by checkpoint name. */
  masters: Record<string, number[]>;
  /** Log-probs of step 1's mini-batch after training (with `export`). */
  logprobs?: number[][];
  /** With offloadAfterStep: per step, where the optimizer state was [after the step, after the next forward]. */
  onHost?: [boolean, boolean][];
  /** With offloadAfterStep and load: where the loaded optimizer state was right after the load. */
  loadedOnHost?: boolean;
}
