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
}

/**
 * One AdamW step in place: p *= 1 - lr·wd; m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²;
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
  );
}

/** acc (f32 [1], on the tensors' device) += Σ x² over the tensors, without a host sync (the sharded trainer all-reduces acc). */
export function sumOfSquaresInto(tensors: readonly Tensor[], acc: Tensor): void {
  for (const t of tensors) native().ops.sumOfSquaresInto(t.native, acc.native);
}

/** Multiplies every tensor in place by s (the grad-clip factor). */
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
  /** Whether the gradients were scaled. */
  clipped: boolean;
  /** False when the norm is NaN or infinite (the gradients are then left alone; skip the step). */
  finite: boolean;
}

/** Global L2 norm of the gradients; scales them in place by maxNorm/(norm+1e-6) when norm > maxNorm. */
export function gradNormAndClip(grads: Tensor[], maxNorm: number): ClipResult {
  const norm = Math.sqrt(sumOfSquares(grads));
  const finite = Number.isFinite(norm);
  const clipped = finite && norm > maxNorm;
  if (clipped) {
    const s = maxNorm / (norm + 1e-6);
    scaleGradsInPlace(grads, s);
  }
  return { norm, clipped, finite };
}
