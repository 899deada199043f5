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
