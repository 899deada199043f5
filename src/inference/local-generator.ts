// local-generator.ts: the trainer's single-process Generator: an engine (engine.ts) over the policy's own
// GptOssModel, so the policy's weight updates are seen at once and updateWeights has nothing to copy. The KV pool
// lives only while generating (wake before, sleep after), so the training phase has that memory.
import type { GptOssModel } from '../model/gptoss.ts';
import type { Config } from '../config/schema.ts';
import type { Completion, Generator, SamplingParams } from '../trainer/policy.ts';
import { Engine, type EngineOptions, type EngineStats, type GenerateRequest, type GenerateResponse } from './engine.ts';
import { LocalModelRunner } from './model-runner.ts';

/**
 * The engine options a run's config asks for (generator.* keys; the seed framework's names). The model length is
 * the longest sequence the run can make: for one-turn tasks the prompt limit (longer prompts are dropped when the
 * task loads) plus the longest generation (training or evaluation); for multi-turn ones the model's own (the episode
 * loop enforces generator.max_input_length itself). It bounds the auto-sized KV pool (engine.ts poolSizes).
 */
export function engineOptionsFromConfig(c: Config): EngineOptions {
  const g = c.generator;
  const longestGeneration = Math.max(g.sampling_params.max_generate_length, g.eval_sampling_params.max_generate_length ?? 0);
  const maxModelLen = g.max_turns > 1 ? undefined : c.trainer.max_prompt_length + longestGeneration;
  return {
    maxModelLen,
    gpuMemoryUtilization: g.gpu_memory_utilization,
    maxNumSeqs: g.max_num_seqs,
    maxNumBatchedTokens: g.max_num_batched_tokens,
    enablePrefixCaching: g.enable_prefix_caching,
    enforceEager: g.enforce_eager,
  };
}

/** How often (generated tokens) generate() reports progress. */
const PROGRESS_EVERY = 256;

/** Generation from the policy's own weights (one process, one engine). */
export class LocalGenerator implements Generator {
  private engine: Engine | null = null;
  /** Open session() calls: while > 0, generate() leaves the KV pool (and its prefix cache) allocated. */
  private sessions = 0;

  constructor(
    readonly model: GptOssModel,
    readonly engineOptions: EngineOptions = {},
  ) {}

  /**
   * One completion per prompt. Consecutive equal prompts (a GRPO group) become one request with n samples, so the
   * prompt is prefilled once; group g samples with seed (params.seed + 1000003·g) + k.
   */
  async generate(prompts: Int32Array[], p: SamplingParams, onProgress?: (doneTokens: number) => void): Promise<Completion[]> {
    let done = 0;
    const res = await this.runRequests(requestsFor(prompts, p), () => {
      if (++done % PROGRESS_EVERY === 0) onProgress?.(done);
    });
    onProgress?.(done);
    return completionsOf(res);
  }

  /** Runs requests on this generator's engine (woken before, put to sleep after unless a session holds it). */
  async runRequests(requests: readonly GenerateRequest[], onToken?: () => void): Promise<GenerateResponse[]> {
    if (requests.length === 0) return []; // e.g. an engine of a pool with no share of a small batch
    await this.ready();
    const res = await this.engine!.generate(requests, { onToken });
    // Inside a session (multi-turn episodes) the pool stays: the next turn's prompt finds its blocks cached.
    if (this.sessions === 0) await this.engine!.sleep();
    return res;
  }

  /**
   * Concurrent generate() calls inside `f` (the turns of multi-turn episodes) join one running batch, and the pool
   * is freed only when the last session ends: a turn's prompt then finds the conversation's blocks in the cache.
   */
  async session<T>(f: () => Promise<T>): Promise<T> {
    await this.ready();
    this.sessions++;
    try {
      return await f();
    } finally {
      if (--this.sessions === 0) await this.engine?.sleep();
    }
  }

  /** The engine's counters (prefill/decode tokens, prefix-cache hit rate), or null before the first generate(). */
  stats(): EngineStats | null {
    return this.engine?.stats() ?? null;
  }

  private async ready(): Promise<void> {
    if (!this.engine) this.engine = new Engine(new LocalModelRunner(this.model), this.engineOptions);
    else await this.engine.wake();
  }

  async updateWeights(): Promise<void> {
    // Same weights as the policy (and, in a LoRA run, the same adapters): the engine reads the model's parameters and
    // adapters at every step. Cached prompt blocks hold keys/values of the old ones, but the pool is emptied by
    // sleep() after every generate() (Engine.dropCachedPrefixes is the call for an engine kept awake).
  }

  dispose(): void {
    this.engine?.dispose();
    this.engine = null;
  }
}

/**
 * The engine requests of a prompt list: consecutive equal prompts (a GRPO group) become one request with n samples,
 * so the prompt is prefilled once; request g samples with seed (params.seed + 1000003·g) + k. Every generator (one
 * engine or a pool) numbers requests this way, so a sample's seed does not depend on which engine runs it.
 */
export function requestsFor(prompts: readonly Int32Array[], p: SamplingParams): GenerateRequest[] {
  const requests: GenerateRequest[] = [];
  for (let i = 0; i < prompts.length; ) {
    let j = i + 1;
    while (j < prompts.length && sameTokens(prompts[j]!, prompts[i]!)) j++;
    requests.push({
      prompt: Array.from(prompts[i]!),
      n: j - i,
      maxNewTokens: p.maxTokens,
      temperature: p.temperature,
      topP: p.topP,
      topK: p.topK !== undefined && p.topK > 0 ? p.topK : undefined,
      seed: (p.seed + 1000003 * requests.length) >>> 0,
      stopTokens: p.stopTokenIds,
    });
    i = j;
  }
  return requests;
}

/** The completions of engine responses, in request then sample order; a failed sample throws. */
export function completionsOf(res: readonly { samples: readonly { tokens: ArrayLike<number>; logprobs: ArrayLike<number>; finishReason: GenerateResponse['samples'][number]['finishReason']; error?: string }[] }[]): Completion[] {
  const out: Completion[] = [];
  res.forEach((r, i) => {
    for (const s of r.samples) {
      if (s.finishReason === 'error' || s.finishReason === 'abort') {
        throw new Error(`generator: prompt ${out.length} (request ${i}) failed: ${s.error ?? s.finishReason}`);
      }
      out.push({ tokens: Int32Array.from(s.tokens), logprobs: Float32Array.from(s.logprobs), finishReason: s.finishReason as Completion['finishReason'] });
    }
  });
  return out;
}

function sameTokens(a: Int32Array, b: Int32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
