// optim.ts: AdamW on fp32 master weights (torch.optim.AdamW semantics) and global grad-norm clipping.
import { native } from '../native.ts';
import { Tensor } from '../tensor.ts';

export interface AdamwParam {
  /** f32: the master weights, updated in place. */
  master: Tensor;
  /** f32, same shape. */
  grad: Tensor;
  /** f32 first and second moments, same shape (start at zero). */
  m: Tensor;
  v: Tensor;
  /** bf16 working copy, rewritten from the updated master. */
  bf16?: Tensor;
}

export interface AdamwHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step count (for the bias corrections). */
  step: number;
  /**
   * The pending grad-clip factor (ClipResult.scale; default 1): the step reads g' = fp32(g * gradScale) on the fly,
   * bitwise what scaling the gradients in place first gave, without that extra read+write pass. grad is not changed.
   */
  gradScale?: number;
}

/**
 * One AdamW step in place: g' = g·gradScale; p *= 1 - lr·wd; m = β1 m + (1-β1) g'; v = β2 v + (1-β2) g'²;
 * p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps); bf16 = bf16(p).
 */
export function adamwStep(p: AdamwParam, h: AdamwHyper): void {
  native().ops.adamwStep(
    p.master.native,
    p.grad.native,
    p.m.native,
    p.v.native,
    p.bf16?.native ?? null,
    h.lr,
    h.beta1,
    h.beta2,
    h.eps,
    h.weightDecay,
    h.step,
    h.gradScale ?? 1,
  );
}

/** acc (f32 [1], on the tensors' device) += Σ x² over the tensors, without a host sync (the sharded trainer all-reduces acc). */
export function sumOfSquaresInto(tensors: readonly Tensor[], acc: Tensor): void {
  for (const t of tensors) native().ops.sumOfSquaresInto(t.native, acc.native);
}

/**
 * Multiplies every tensor in place by s. The policies fuse the grad-clip factor into adamwStep (gradScale) instead;
 * they use this only to apply a pending factor before a backward accumulates more gradients onto clipped ones.
 */
export function scaleGradsInPlace(tensors: readonly Tensor[], s: number): void {
  for (const g of tensors) native().ops.optimScaleInPlace(g.native, s);
}

/** Σ x² over all the tensors (f32 or bf16, all on one device); one host sync. */
export function sumOfSquares(tensors: Tensor[]): number {
  if (tensors.length === 0) return 0;
  const device = tensors[0]!.device;
  const acc = Tensor.zeros([1], { dtype: 'f32', device });
  try {
    sumOfSquaresInto(tensors, acc);
    return acc.item();
  } finally {
    acc.dispose();
  }
}

export interface ClipResult {
  /** The global L2 norm before clipping. */
  norm: number;
  /** Whether the norm is above maxNorm (the step then reads the gradients times scale). */
  clipped: boolean;
  /** False when the norm is NaN or infinite (scale is then 1; skip the step). */
  finite: boolean;
  /** The clip factor for adamwStep's gradScale: maxNorm/(norm+1e-6) when clipped (torch's clip_grad_norm_), else 1. */
  scale: number;
}

/** The clip decision for a global gradient norm (every policy's, single-process and sharded). */
export function clipFactor(norm: number, maxNorm: number): ClipResult {
  const finite = Number.isFinite(norm);
  const clipped = finite && norm > maxNorm;
  return { norm, clipped, finite, scale: clipped ? maxNorm / (norm + 1e-6) : 1 };
}

/**
 * Global L2 norm of the gradients and the clip factor; the gradients are not changed (pass scale to adamwStep as
 * gradScale: the step then sees torch's clip_grad_norm_ result without a pass rewriting every gradient).
 */
export function gradNormAndClipFactor(grads: Tensor[], maxNorm: number): ClipResult {
  return clipFactor(Math.sqrt(sumOfSquares(grads)), maxNorm);
}
