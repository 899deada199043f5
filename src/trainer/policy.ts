// policy.ts: the two interfaces the trainer loop is written against.
//
// Policy: the model being trained (log-probs with entropy, backward from per-token dLoss/dlogp, gradient
// clipping, the optimizer step, save/load). The single-process implementation wraps the GPT-OSS model
// (src/trainer/gptoss-policy.ts); the sharded trainer across ranks (src/trainer/sharded-policy.ts) implements the
// same interface, its data-moving methods collective (every rank calls them in the same order).
// Generator: produces completions with the log-probs of their sampled tokens. The local implementation samples
// from the policy's own weights; a pool of inference engines (tensor-parallel, continuous batching) implements
// the same interface later and gets new weights through updateWeights().

import type { PolicyLossInput, PolicyLossOptions } from '../rl/loss.ts';

/** A batch of sequences for log-probs: each is prompt tokens followed by response tokens. */
export interface SequenceBatch {
  sequences: Int32Array[];
  /**
   * Per sequence: how many leading tokens are prompt. Log-probs are returned for the tokens after it, i.e. for
   * positions promptLens[i] .. sequences[i].length - 1 (log p(token_t | tokens_<t)).
   */
  promptLens: number[];
  /**
   * Per sequence, optional: 1 where a response token enters the loss, 0 where it does not (a multi-turn episode's
   * tool results, user turns and harmony framing injected by the environment) [len - promptLen]. Log-probs are
   * still computed for every response token; the loss and the metrics read only the unmasked ones.
   */
  lossMasks?: Uint8Array[];
}

export interface LogprobOptions {
  /** Also return per-token entropy of the (temperature-scaled) distribution. */
  entropy?: boolean;
  /** Divide logits by this before the softmax (the sampling temperature: log-probs then match the sampler's). */
  temperature?: number;
  /** Pack the sequences back to back (varlen attention) instead of padding them to the longest. */
  packed?: boolean;
}

export interface LogprobOutput {
  /** Per sequence: log-probs of its response tokens [len - promptLen]. */
  logprobs: Float32Array[];
  /** Per sequence: entropy at each response position (when asked). */
  entropy?: Float32Array[];
}

/**
 * dLoss/dlogp of response tokens t0 .. t0 + logprobs.length - 1 of sequence `seq` from their log-probs (a
 * per-token-local loss: src/rl/loss.ts policyTokenGradient), 0 where a token does not count. `source`: the loss
 * inputs it was made from (policyTokenGradient sets it), as data: a policy that computes in other processes (the
 * distributed run's DriverPolicy) sends them and rebuilds the function there for each rank's sequences.
 */
export type LossGradientFn = ((seq: number, t0: number, logprobs: Float32Array) => Float32Array) & { readonly source?: TokenLossSource };

/**
 * policyTokenGradient's arguments: per-sequence rows (old/ref log-probs, advantages, masks) and the loss options,
 * whose `norm` (the mini-batch's counts) must be set for a subset of the rows to give the same gradients.
 */
export interface TokenLossSource {
  input: Omit<PolicyLossInput, 'logprobs'>;
  opts: PolicyLossOptions;
}

export interface TrainForwardOptions extends LogprobOptions {
  /**
   * The fused LM-head backward (trainer.fused_lm_head_backward): the forward calls this per chunk of tokens and
   * runs the LM head's backward while the chunk's logits are in memory; the result's backward() then takes no
   * dLogprobs. Only for policies with fusedLmHeadBackward: true. The LM head's gradient is accumulated during the
   * forward: should the forward fail (or its loss be non-finite), zeroGrad() before the next mini-batch.
   */
  lossGradient?: LossGradientFn;
}

/** A forward pass that kept its activations; backward() consumes them. */
export interface TrainForward extends LogprobOutput {
  /**
   * Accumulates parameter gradients of Σ dLogprobs·logprobs (same layout as logprobs); frees the activations.
   * After a forward with lossGradient: called without dLogprobs (the loss gradient was taken during the forward).
   */
  backward(dLogprobs?: Float32Array[]): Promise<void>;
  /** Frees the activations without a backward pass (e.g. a NaN loss). */
  release(): void;
}

export interface OptimizerHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export interface GradClipResult {
  norm: number;
  finite: boolean;
  clipped: boolean;
}

/** Log-probs only (the frozen reference policy). */
export interface LogprobModel {
  readonly device: string;
  logprobs(batch: SequenceBatch, opts?: LogprobOptions): Promise<LogprobOutput>;
  dispose(): void;
}

export interface Policy extends LogprobModel {
  /**
   * Ranks each call's batch is split over (a distributed run's driver; absent: 1). The loops pass this many times
   * the per-GPU micro-batch sizes (trainer.micro_*_batch_size_per_gpu) per call, so each rank gets its configured share.
   */
  readonly dataParallelSize?: number;
  /** True where forward() takes TrainForwardOptions.lossGradient (the fused LM-head backward); absent: it does not. */
  readonly fusedLmHeadBackward?: boolean;
  /** A forward pass that keeps activations for backward(). */
  forward(batch: SequenceBatch, opts?: TrainForwardOptions): Promise<TrainForward>;
  zeroGrad(): void;
  /**
   * Global grad norm; when above maxNorm the gradients are clipped to it (torch's clip_grad_norm_ factor
   * maxNorm/(norm+1e-6)); finite=false means skip the step. A sharded policy returns a promise (the norm needs an
   * all-reduce across ranks): callers await the result.
   * The implementations record the factor instead of rewriting every gradient: optimizerStep's AdamW reads g x factor
   * (bitwise the clipped values), zeroGrad drops it, and a later backward or clipGradNorm applies it to the stored
   * gradients first. Code inside a policy that reads its raw gradient buffers between clipGradNorm and zeroGrad must
   * apply the pending factor (GptOssPolicy.gradScale, ShardedPolicy's) itself.
   */
  clipGradNorm(maxNorm: number): GradClipResult | Promise<GradClipResult>;
  /** One AdamW step on the accumulated gradients (step is 1-based, for bias correction). */
  optimizerStep(h: OptimizerHyper, step: number): void;
  /** Drops the optimizer state (moments; fp32 masters are re-taken from the weights at the next step). */
  resetOptimizer(): void;
  /** A frozen copy of the current weights (the KL reference). */
  frozenCopy(): Promise<LogprobModel>;
  /** Writes model weights and optimizer state into dir (an existing empty folder). */
  save(dir: string): Promise<void>;
  /** Restores what save() wrote (weights and optimizer state). */
  load(dir: string): Promise<void>;
  numParameters(): number;
}

export interface SamplingParams {
  maxTokens: number;
  /** 0 = greedy. */
  temperature: number;
  topP?: number;
  /** <= 0: no top-k cut. */
  topK?: number;
  seed: number;
  /** Generation of a sequence stops after any of these tokens (included in the completion). */
  stopTokenIds: number[];
}

export interface Completion {
  tokens: Int32Array;
  /** Log-prob of each sampled token under the sampler's (temperature-scaled) distribution. */
  logprobs: Float32Array;
  finishReason: 'stop' | 'length';
}

/** What each rank's device held at most, and what the engines did, since the previous sample (per-step metrics). */
export interface ResourceSample {
  /**
   * Per rank, in rank order: the device allocator's peak bytes since the previous sample (the CUDA caching
   * allocator's high-water mark; on cpu, the host tensors'). Sampling resets the peaks.
   */
  peakBytes: number[];
  /** Sequences the engines preempted (KV pool full) since the previous sample, over the pool. */
  preemptions: number;
}

/** Takes a ResourceSample (collective over the ranks of a distributed run). */
export type ResourceSampler = () => Promise<ResourceSample>;

export interface Generator {
  /** One completion per prompt (repeat a prompt for n samples). */
  generate(prompts: Int32Array[], params: SamplingParams, onProgress?: (doneTokens: number) => void): Promise<Completion[]>;
  /**
   * Optional: runs `f` with the generator kept ready between its generate() calls (the KV pool, and with it the
   * prefix cache, stays allocated), so that the turns of multi-turn episodes, each a generate() call whose prompt
   * extends the previous turn's, reuse the cached conversation instead of prefilling it again.
   */
  session?<T>(f: () => Promise<T>): Promise<T>;
  /** Pulls the policy's current weights (a no-op where the generator samples from the policy itself). */
  updateWeights(policy: Policy): Promise<void>;
  dispose(): void;
}
