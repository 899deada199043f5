// swiglu.ts: the GPT-OSS expert activation, a SwiGLU with clamp on interleaved gate/up columns.
//
// For gu [N, 2I]: gate = gu[:, 0::2] clamped above at limit, up = gu[:, 1::2] clamped to [-limit, limit],
//   h = (up + 1) * gate * sigmoid(alpha * gate)                       (fp32 math, h rounded to gu's dtype)
// The backward follows torch.clamp: the gradient passes where min <= x <= max (inclusive, so an input exactly
// at the limit still gets its gradient) and is zero where the input was clamped or is NaN.
import { native } from '../native.ts';
import { Tensor } from '../tensor.ts';

/** GPT-OSS swiglu_limit. */
export const SWIGLU_LIMIT = 7;
/** GPT-OSS sigmoid slope (alpha). */
export const SWIGLU_ALPHA = 1.702;

/**
 * @param gu bf16 (or f32) [N, 2I], gate and up interleaved
 * @returns gu's dtype [N, I]
 */
export function swigluForward(gu: Tensor, limit = SWIGLU_LIMIT, alpha = SWIGLU_ALPHA): Tensor {
  return new Tensor(native().ops.swigluForward(gu.native, limit, alpha));
}

/**
 * @param dh bf16|f32 [N, I]
 * @param gu the forward's input [N, 2I]
 * @returns f32 [N, 2I] (interleaved like gu)
 */
export function swigluBackward(dh: Tensor, gu: Tensor, limit = SWIGLU_LIMIT, alpha = SWIGLU_ALPHA): Tensor {
  return new Tensor(native().ops.swigluBackward(dh.native, gu.native, limit, alpha));
}
