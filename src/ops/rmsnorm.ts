// rmsnorm.ts: GPT-OSS RMSNorm.
//
// Per row, in fp32 (as transformers' GptOssRMSNorm does, including the weight multiply):
//   rstd = 1 / sqrt(mean(x^2) + eps),  y = round( w * (x * rstd) )
// rstd is saved for the backward.
import { native } from '../native.ts';
import { Tensor } from '../tensor.ts';

export interface RmsnormOutput {
  /** x's dtype (bf16 in the model) [T, H] */
  y: Tensor;
  /** f32 [T]: 1 / sqrt(mean(x^2) + eps) per row */
  rstd: Tensor;
}

export interface RmsnormGrads {
  /** f32 [T, H] */
  dx: Tensor;
  /** f32 [H] */
  dw: Tensor;
}

/**
 * @param x bf16 (or f32) [T, H] (any leading dims; rstd then has x.shape without the last dim)
 * @param w bf16 (or f32) [H]
 * @param eps rms_norm_eps (1e-5 for GPT-OSS)
 */
export function rmsnormForward(x: Tensor, w: Tensor, eps: number): RmsnormOutput {
  const r = native().ops.rmsnormForward(x.native, w.native, eps);
  return { y: new Tensor(r.y), rstd: new Tensor(r.rstd) };
}

export interface AddRmsnormOutput extends RmsnormOutput {
  /** x's dtype [T, H]: x + o, rounded to x's dtype once */
  h: Tensor;
}

/**
 * The residual add and the norm after it in one op: h = x + o (fp32 sum rounded to x's dtype, exactly as
 * add(x, o) or addInPlace(x.clone(), o) give it), y, rstd = rmsnormForward(h, w, eps), bitwise. On CUDA one launch
 * instead of two (and no re-read of h).
 * @param x bf16 (or f32) [T, H] (any leading dims)
 * @param o bf16 or f32, x's shape (the o_proj output, bf16, or a tensor-parallel all-reduced f32 sum)
 * @param w bf16 (or f32) [H]
 */
export function addRmsnorm(x: Tensor, o: Tensor, w: Tensor, eps: number): AddRmsnormOutput {
  const r = native().ops.addRmsnorm(x.native, o.native, w.native, eps);
  return { h: new Tensor(r.h), y: new Tensor(r.y), rstd: new Tensor(r.rstd) };
}

/**
 * With g = dy * w: dx = rstd * (g - x * rstd^2 * mean(g * x)) (+ residual), dw = sum over rows of dy * x * rstd.
 * dw is summed in a fixed order (deterministic on both backends).
 * @param dy bf16|f32 [T, H]
 * @param x, w the forward's inputs; rstd the forward's f32 [T]
 * @param residual optional f32 [T, H] added to dx (the gradient that reaches x around the norm, e.g. through a
 *   residual connection), in the same pass
 */
export function rmsnormBackward(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, residual?: Tensor): RmsnormGrads {
  const r = native().ops.rmsnormBackward(dy.native, x.native, w.native, rstd.native, residual?.native ?? null);
  return { dx: new Tensor(r.dx), dw: new Tensor(r.dw) };
}
