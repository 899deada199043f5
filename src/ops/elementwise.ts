// elementwise.ts: small elementwise ops on bf16/f32 tensors (fp32 math, results rounded to the output dtype).
// Output tensors are on the input's device; the in-place forms write into their first argument.
import { native, type DType } from '../native.ts';
import { Tensor } from '../tensor.ts';

/** a + b; same shape and dtype (bf16 or f32). */
export function add(a: Tensor, b: Tensor): Tensor {
  return new Tensor(native().ops.elementwiseAdd(a.native, b.native));
}

/** a += b; a bf16 or f32, b bf16 or f32 of the same shape (e.g. an f32 gradient into an f32 accumulator). */
export function addInPlace(a: Tensor, b: Tensor): void {
  native().ops.elementwiseAddInPlace(a.native, b.native);
}

/** a * s (a's dtype). */
export function scale(a: Tensor, s: number): Tensor {
  return new Tensor(native().ops.elementwiseScale(a.native, s));
}

/** a *= s. */
export function scaleInPlace(a: Tensor, s: number): void {
  native().ops.elementwiseScaleInPlace(a.native, s);
}

/** A converted copy: bf16 <-> f32 (round to nearest even), i32 -> f32, or a plain copy for the same dtype. */
export function cast(a: Tensor, dtype: DType): Tensor {
  return new Tensor(native().ops.elementwiseCast(a.native, dtype));
}

/** Sets every element to value (rounded for bf16; i32/u8 need an integer in range). */
export function fill(a: Tensor, value: number): void {
  native().ops.elementwiseFill(a.native, value);
}

/** A fresh zero tensor with a's shape, dtype and device. */
export function zerosLike(a: Tensor): Tensor {
  return Tensor.zeros(a.shape, { dtype: a.dtype, device: a.device });
}

/**
 * Inverted dropout: x·mask/(1-p), a fresh tensor of x's shape and dtype (bf16|f32), p in [0, 1). The mask is a
 * counter-based hash of (seed, salt, element index) (native/cpu/dropout_rng.h; the same bits on the CPU and CUDA),
 * so the same (seed, salt) regenerates it: the backward is this call on the gradient with the same seed and salt.
 * seed, salt: non-negative integers below 2^53.
 */
export function dropoutForward(x: Tensor, p: number, seed: number, salt: number): Tensor {
  return new Tensor(native().ops.dropoutForward(x.native, p, seed, salt));
}

/**
 * The R column slices of parts [R, S, W] side by side: out [S, columns] with out[s, r·W + j] = parts[r, s, j] (any
 * dtype), cut at `columns` (default R·W; more than ·W: only the last slice may lose its padding). A
 * vocabulary-parallel LM head's all-gathered logit slices [tp, S, ceil(V/tp)] as whole rows [S, V].
 */
export function concatColumns(parts: Tensor, columns?: number): Tensor {
  return new Tensor(native().ops.concatColumns(parts.native, columns));
}
