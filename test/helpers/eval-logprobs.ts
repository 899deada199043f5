// The flat log-probs of an inference forward (no training state) over a few sequences: what the LoRA tests compare
// between base, adapted and merged models.
import type { GptOssModel } from '../../src/model/gptoss.ts';
import { packSequences, disposeBatch } from '../../src/model/batch.ts';

/** f32 log-probs of every predicted token of `seqs`, in order, on the model's device. */
export function evalLogprobs(m: GptOssModel, seqs: number[][]): Float32Array {
  const b = packSequences(seqs, m.device);
  const r = m.forward(b);
  const lp = r.logprobs.toFloat32();
  r.logprobs.dispose();
  r.entropy.dispose();
  disposeBatch(b);
  return lp;
}
