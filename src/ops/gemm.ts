// gemm.ts: matrix products (cuBLASLt on CUDA, a blocked multi-threaded kernel or system BLAS on CPU) and the
// linear layer built on them. Row-major, fp32 accumulation, bf16 or f32 in and out.
import { native, type FloatDType } from '../native.ts';
import { Tensor } from '../tensor.ts';
import { cast, fill } from './elementwise.ts';

export interface MatmulOptions {
  /** a is stored [K, M] (use its transpose). */
  transA?: boolean;
  /** b is stored [N, K] (use its transpose). */
  transB?: boolean;
  /** [N], bf16 or f32: added to every row of the product. */
  bias?: Tensor;
  /** Write into this [M, N] tensor instead of a fresh one. */
  out?: Tensor;
  /** out += result (needs out); used to accumulate fp32 weight gradients. */
  accumulate?: boolean;
  /** Dtype of a fresh output (default: a's dtype). */
  outDtype?: FloatDType;
  /** Scale of the product (the bias and the accumulated value are not scaled). */
  alpha?: number;
}

/**
 * out[M, N] = alpha * op(a) · op(b) + bias (+ out when accumulate).
 * a: [M, K] (or [K, M] with transA); b: [K, N] (or [N, K] with transB); bf16 or f32. Mixed bf16/f32 inputs are
 * allowed: the CPU computes them exactly in fp32, CUDA rounds the f32 one to bf16 first (as autocast does).
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const r = native().ops.matmul(
    a.native,
    b.native,
    opts.bias?.native ?? null,
    opts.out?.native ?? null,
    opts.transA ?? false,
    opts.transB ?? false,
    opts.alpha ?? 1,
    opts.accumulate ?? false,
    opts.outDtype ?? null,
  );
  return opts.out ?? new Tensor(r);
}

/** y[T, out] = x[T, in] · w[out, in]ᵀ + b[out], in bf16 (the layout of GPT-OSS's q/k/v/o/router/lm_head). */
export function linearForward(x: Tensor, w: Tensor, b?: Tensor): Tensor {
  return matmul(x, w, { transB: true, bias: b, outDtype: 'bf16' });
}

export interface LinearBackwardOptions {
  /** f32 [out, in]: dW is accumulated into it (gradient accumulation across micro-batches). */
  dW?: Tensor;
  /** f32 [out]: db is accumulated into it. */
  db?: Tensor;
  /** Compute dx (default true). */
  needDx?: boolean;
  /** Dtype of dx (default f32). */
  dxDtype?: FloatDType;
  /**
   * f32 [T, in]: dx is added into it (and it is returned as dx) instead of being written to a fresh tensor; sums
   * the input gradients of layers that share an input (q/k/v) inside the GEMM, without an extra pass.
   */
  dxAcc?: Tensor;
}

export interface LinearGrads {
  dx?: Tensor;
  dW: Tensor;
  db: Tensor;
}

/**
 * The input gradient alone of y = x·Wᵀ + b (a frozen weight: no dW, db): dx = dy·W [T, in], dy [T, out], w [out, in].
 * dxDtype (default f32) or, with dxAcc (f32 [T, in]), added into it and returned.
 */
export function linearBackwardInput(dy: Tensor, w: Tensor, opts: { dxDtype?: FloatDType; dxAcc?: Tensor } = {}): Tensor {
  return opts.dxAcc ? matmul(dy, w, { out: opts.dxAcc, accumulate: true }) : matmul(dy, w, { outDtype: opts.dxDtype ?? 'f32' });
}

/**
 * Gradients of y = x·Wᵀ + b. dy [T, out] (bf16 or f32), x [T, in], w [out, in].
 * dx = dy·W ([T, in]), dW += dyᵀ·x ([out, in], f32), db += Σ_t dy ([out], f32).
 */
export function linearBackward(dy: Tensor, x: Tensor, w: Tensor, opts: LinearBackwardOptions = {}): LinearGrads {
  const [T, nOut] = dy.shape as [number, number];
  const dev = dy.device;
  // CUDA rounds an f32 operand next to a bf16 one to bf16 inside every GEMM; round dy once for both products
  // (same bits, one cast pass instead of two). The CPU multiplies mixed operands exactly, so it keeps dy.
  const dyMm = dy.dtype === 'f32' && dev !== 'cpu' && (x.dtype === 'bf16' || w.dtype === 'bf16') ? cast(dy, 'bf16') : dy;
  let dx: Tensor | undefined;
  if (opts.needDx !== false) {
    dx = linearBackwardInput(w.dtype === 'bf16' ? dyMm : dy, w, { dxDtype: opts.dxDtype, dxAcc: opts.dxAcc });
  }
  // No buffer yet (the first micro-batch after zero_grad): write the gradient instead of adding it to zeros, which
  // saves a fill and a read of the buffer.
  const dyW = x.dtype === 'bf16' ? dyMm : dy;
  const dW = opts.dW
    ? matmul(dyW, x, { transA: true, out: opts.dW, accumulate: true })
    : matmul(dyW, x, { transA: true, outDtype: 'f32' });
  if (dyMm !== dy) dyMm.dispose();
  const db = opts.db ?? Tensor.empty([nOut], { dtype: 'f32', device: dev });
  // Column sums of dy as a [1, T] x [T, out] product with a row of ones (in dy's dtype, so no rounding).
  // Filled on the device (a host upload would wait for the stream on every backward).
  const ones = Tensor.empty([1, T], { dtype: dy.dtype, device: dev });
  fill(ones, 1);
  const dbRow = db.view([1, nOut]);
  matmul(ones, dy, { out: dbRow, accumulate: opts.db !== undefined });
  dbRow.dispose();
  ones.dispose();
  return dx ? { dx, dW, db } : { dW, db };
}
