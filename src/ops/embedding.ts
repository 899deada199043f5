// embedding.ts: token embedding lookup and its gradient.
//
// Forward is a row gather. Backward scatter-adds the output gradient rows into a fresh fp32 [V, H] gradient,
// deterministically on both backends (tokens grouped by id, each vocabulary row summed in token order; no
// atomics). On CUDA both directions copy the ids to the host once (one wait on the stream) so that an id out of
// range fails with an error naming it instead of reading out of bounds, and so the backward can group the ids.
import { native } from '../native.ts';
import { Tensor } from '../tensor.ts';

/**
 * out[t, :] = weight[ids[t], :].
 * @param weight bf16 (or f32) [V, H]
 * @param ids i32 [T] (any shape; the output gets ids.shape + [H]); every id must be in [0, V)
 * @param opts.checked (default true) false: on CUDA, no host copy of the ids (no wait for the device: the engine's
 *   steps and CUDA-graph captures, whose ids the engine validated); an id out of range then gives a zero row
 *   instead of an error. The CPU always checks.
 * @returns weight's dtype [T, H]
 */
export function embeddingForward(weight: Tensor, ids: Tensor, opts: { checked?: boolean } = {}): Tensor {
  return new Tensor(native().ops.embeddingForward(weight.native, ids.native, opts.checked ?? true));
}

/**
 * The lookup of one rank of a vocabulary-parallel embedding (src/model/tensor-parallel.ts): out[t, :] =
 * weight[ids[t] - vocabStart, :] for the ids in [vocabStart, vocabStart + W), zero rows for the others, so the sum
 * over the ranks (an all-reduce) is the full lookup, bit for bit. The ids are not range-checked (each belongs to
 * some rank's slice; the caller checks them against the whole vocabulary) and on CUDA nothing waits for the device.
 * @param weight bf16 (or f32) [W, H]: vocabulary rows vocabStart .. vocabStart + W - 1
 * @param ids i32 [T] (any shape; the output gets ids.shape + [H])
 * @returns weight's dtype [T, H]
 */
export function embeddingForwardSlice(weight: Tensor, ids: Tensor, vocabStart: number): Tensor {
  return new Tensor(native().ops.embeddingForwardSlice(weight.native, ids.native, vocabStart));
}

/**
 * dWeight[v, :] = sum over t with ids[t] == v of dOut[t, :], in fp32.
 * @param dOut bf16|f32 [T, H]
 * @param ids i32 [T], the ids of the forward
 * @param vocabSize V
 * @param opts.into f32 [V, H]: add the gradient into this buffer instead (gradient accumulation): each row's sum,
 *   formed from zero in token order, is added once, the same bits as `addInPlace(into, embeddingBackward(...))`
 *   without the fresh [V, H] buffer, its zeroing and the separate add pass (2.3 GB each at gpt-oss size).
 * @returns f32 [V, H] (rows of ids that do not occur are zero), or `into`
 */
export function embeddingBackward(dOut: Tensor, ids: Tensor, vocabSize: number, opts: { into?: Tensor } = {}): Tensor {
  const r = native().ops.embeddingBackward(dOut.native, ids.native, vocabSize, opts.into?.native ?? null);
  return opts.into ?? new Tensor(r); // with into, r is into's own handle
}
