// local-generator.ts: the single-process Generator: static-batch generation (generate.ts) from the policy's own
// GptOssModel, so the policy's weight updates are seen at once and updateWeights has nothing to do.
import type { GptOssModel } from '../model/gptoss.ts';
import type { Completion, Generator, SamplingParams } from '../trainer/policy.ts';
import { generate } from './generate.ts';

/**
 * Generation from the policy's own weights (one process). Prompts are generated in chunks of `maxBatch`
 * sequences (memory: a KV cache per layer of [batch, longest prompt + maxTokens, kv heads, head dim]).
 */
export class LocalGenerator implements Generator {
  constructor(
    readonly model: GptOssModel,
    readonly maxBatch = 64,
  ) {}

  async generate(prompts: Int32Array[], p: SamplingParams, onProgress?: (doneTokens: number) => void): Promise<Completion[]> {
    const out: Completion[] = [];
    let done = 0;
    for (let i = 0; i < prompts.length; i += this.maxBatch) {
      const chunk = prompts.slice(i, i + this.maxBatch).map((x) => Array.from(x));
      const res = generate(this.model, chunk, {
        maxNewTokens: p.maxTokens,
        temperature: p.temperature,
        topP: p.topP,
        topK: p.topK !== undefined && p.topK > 0 ? p.topK : undefined,
        // A different seed per chunk so that repeated prompts in different chunks differ.
        seed: (p.seed + 7919 * (i / this.maxBatch)) >>> 0,
        stopTokens: p.stopTokenIds,
      });
      for (const r of res) {
        out.push({ tokens: Int32Array.from(r.tokens), logprobs: Float32Array.from(r.logprobs), finishReason: r.finishReason });
        done += r.tokens.length;
      }
      onProgress?.(done);
    }
    return out;
  }

  async updateWeights(): Promise<void> {
    // Same weights as the policy.
  }

  dispose(): void {}
}
