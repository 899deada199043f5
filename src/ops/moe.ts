// moe.ts: the GPT-OSS mixture-of-experts block (router, dropless permutation, expert MLPs with the clamped
// SwiGLU, weighted combine), forward and backward, on 'cpu' or 'cuda:N'.
//
//   logits = x·Wrᵀ + br [T,E]; top-k (ties -> lower expert id); w = softmax over the k chosen logits
//   for each chosen expert e: gu = x·W_gu[e] + b_gu[e] [2I] (interleaved: gate = gu[0::2], up = gu[1::2]),
//     gate = min(gate, limit), up = clamp(up, ±limit), h = (up + 1)·gate·σ(1.702·gate) [I],
//     out_e = h·W_down[e] + b_down[e] [H]
//   y = Σ_j w_j·out_{e_j} (bf16 [T,H])
// Expert weights keep the checkpoint layout [E, in, out]; BF16 in, fp32 accumulation; weight gradients fp32.
import { native, type ExpertGemmsRun, type NativeMoeForward, type NativeTensor } from '../native.ts';
import { Tensor } from '../tensor.ts';

/** The MoE block's parameters, bf16, checkpoint layout. */
export interface MoeWeights {
  routerW: Tensor /* [E,H] */;
  routerB: Tensor /* [E] */;
  gateUpW: Tensor /* [E,H,2I] */;
  gateUpB: Tensor /* [E,2I] */;
  downW: Tensor /* [E,I,H] */;
  downB: Tensor /* [E,H] */;
}

export interface MoeOptions {
  topK: number;
  /** SwiGLU clamp (GPT-OSS: 7). */
  limit?: number;
  /**
   * CPU only: keep every intermediate in fp32 instead of rounding it to bf16 where a plain BF16 implementation
   * stores it. The "fp32 truth" for error bounds in tests.
   */
  exact?: boolean;
  /** bf16 [T,H]: return y = residual + moe(x) (one pass; equal to add(residual, moe(x))). */
  residual?: Tensor;
  /**
   * CUDA only: 'auto' (default) lets the plan pick the expert kernels from the sizes and the routing
   * (native/cuda/moe.cu, plan_expert_gemms); 'decode' / 'grouped' force the split-K GEMV kernels or the grouped
   * mma.sync kernels at any size, so tests and benchmarks can compare them. The CPU accepts only 'auto'.
   */
  expertGemms?: 'auto' | 'decode' | 'grouped';
  /**
   * Low-rank adapters on the expert weights. On CUDA the op then runs its per-expert cuBLAS path with the adapters'
   * per-expert GEMMs (native/cuda/moe.cu, "expert adapters"), whatever the batch size.
   */
  lora?: MoeExpertLora;
  /**
   * The residual add and norm before the MoE, in the same op: x is then the residual stream (bf16 [T,H]), the op
   * computes h = x + o and normed = rmsnorm(h)·weight (addRmsnorm's bits), runs the MoE on normed and returns
   * y = h + moe(normed) with h, normed and rstd (no `residual` with it). On CUDA at decode sizes (T <= 16) the fused
   * router does the add + norm in its own launch: one graph node a layer fewer than addRmsnorm + moeForward.
   */
  preNorm?: MoePreNorm;
}

/** moeForward's preNorm: o bf16|f32 [T,H] (o_proj's output), the norm's weight [H] and eps. */
export interface MoePreNorm {
  o: Tensor;
  weight: Tensor;
  eps: number;
}

/**
 * LoRA adapters on the experts, applied to each expert's routed rows in factor form (src/model/lora.ts makes them):
 *   gu  = x·W_gu[e]   + b + scale·(x·gateUpA[e])·gateUpB[e]     gateUpA [E,H,r], gateUpB [E,r,2I]
 *   out = h·W_down[e] + b + scale·(h·downA[e])·downB[e]         downA [E,I,r],   downB [E,r,H]
 * Each pair is optional (both tensors or neither); bf16 or f32. The x·A products stay fp32 inside the op.
 */
export interface MoeExpertLora {
  gateUpA?: Tensor;
  gateUpB?: Tensor;
  downA?: Tensor;
  downB?: Tensor;
  scale: number;
}

/** The expert adapters' gradients (f32, the factors' shapes), for the pairs that were given. */
export interface MoeLoraGrads {
  dLoraGateUpA?: Tensor;
  dLoraGateUpB?: Tensor;
  dLoraDownA?: Tensor;
  dLoraDownB?: Tensor;
}

export interface MoeGrads {
  dx: Tensor /* f32 [T,H] */;
  dRouterW: Tensor /* f32 [E,H] */;
  dRouterB: Tensor /* f32 [E] */;
  dGateUpW: Tensor /* f32 [E,H,2I] */;
  dGateUpB: Tensor /* f32 [E,2I] */;
  dDownW: Tensor /* f32 [E,I,H] */;
  dDownB: Tensor /* f32 [E,H] */;
}

/**
 * What forward saves for backward. N = T·topK routed rows in expert order: rows of expert e are
 * offsets[e] .. offsets[e]+counts[e]-1, tokens increasing within an expert (on CUDA possibly followed by padding
 * rows up to offsets[e+1], see permTok). dispose() frees all of it; read `counts`
 * before (it stays readable afterwards once read). Nothing stays behind on the device, so a training loop
 * that disposes its contexts reuses cached blocks and never calls cudaMalloc in steady state.
 */
export class MoeContext {
  readonly topK: number;
  readonly limit: number;
  readonly exact: boolean;
  readonly x: Tensor /* bf16 [T,H]: the input (a view, not a copy) */;
  readonly topkIdx: Tensor /* i32 [T,k] chosen experts, largest logit first */;
  readonly topkW: Tensor /* f32 [T,k] routing weights */;
  readonly countsTensor: Tensor /* i32 [E] rows per expert (on the device) */;
  readonly offsets: Tensor /* i32 [E+1] first row of each expert */;
  // Np = N = T*k rows, or on CUDA with fairly even routing more: each expert's rows padded to its range's slab
  // size (padding rows have permTok -1) so one batched GEMM runs a range of experts (native/cpu/moe.h, MoeSaved).
  readonly permTok: Tensor /* i32 [Np] token of each permuted row (-1: padding) */;
  readonly slotPos: Tensor /* i32 [T*k] permuted row of assignment (t, j) */;
  readonly gu: Tensor /* bf16 [Np,2I] gate_up incl. bias (f32 in exact mode) */;
  readonly h: Tensor /* bf16 [Np,I] SwiGLU output */;
  readonly yp: Tensor /* bf16 [Np,H] expert outputs incl. bias, before routing weights */;
  // CUDA cuBLAS paths only: the gathered input rows (so backward does not gather again) and the offsets on the
  // host (so backward does not wait for the device to read them).
  readonly xp: Tensor | undefined /* bf16 [Np,H] x[permTok], zero rows for padding */;
  readonly offsetsHost: Tensor | undefined /* i32 [E+1] on the cpu */;
  /** The expert-GEMM strategy the forward ran ('cpu' on the CPU; docs/moe.md). */
  readonly expertGemms: ExpertGemmsRun;
  /** The weights forward used (the caller's tensors; not disposed with the context). */
  readonly weights: MoeWeights;
  /** The expert adapters forward used (the caller's tensors), which backward differentiates. */
  readonly lora: MoeExpertLora | undefined;
  private countsHost: Int32Array | undefined;

  constructor(r: NativeMoeForward, weights: MoeWeights, topK: number, limit: number, exact: boolean, lora?: MoeExpertLora) {
    this.weights = weights;
    this.lora = lora;
    this.topK = topK;
    this.limit = limit;
    this.exact = exact;
    this.x = new Tensor(r.x);
    this.topkIdx = new Tensor(r.topkIdx);
    this.topkW = new Tensor(r.topkW);
    this.countsTensor = new Tensor(r.counts);
    this.offsets = new Tensor(r.offsets);
    this.permTok = new Tensor(r.permTok);
    this.slotPos = new Tensor(r.slotPos);
    this.gu = new Tensor(r.gu);
    this.h = new Tensor(r.h);
    this.yp = new Tensor(r.yp);
    this.xp = r.xp ? new Tensor(r.xp) : undefined;
    this.offsetsHost = r.offsetsHost ? new Tensor(r.offsetsHost) : undefined;
    this.expertGemms = r.expertGemms;
  }

  /** Tokens routed to each expert (load-balance statistics). Read lazily: the first read waits for the device. */
  get counts(): Int32Array {
    if (!this.countsHost) {
      if (this.countsTensor.disposed) {
        throw new Error('MoeContext.counts: read the token counts before dispose() (they live on the device until read)');
      }
      this.countsHost = this.countsTensor.toInt32();
    }
    return this.countsHost;
  }

  get disposed(): boolean {
    return this.gu.disposed;
  }

  dispose(): void {
    for (const t of [this.x, this.topkIdx, this.topkW, this.countsTensor, this.offsets, this.permTok, this.slotPos, this.gu, this.h, this.yp]) {
      t.dispose();
    }
    this.xp?.dispose();
    this.offsetsHost?.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

export interface MoeForwardResult {
  y: Tensor /* bf16 [T,H] */;
  ctx: MoeContext;
  /** With opts.preNorm: h = x + o (bf16 [T,H]), the normed rows (bf16 [T,H], the MoE's input) and rstd (f32 [T]). */
  preNorm?: { h: Tensor; normed: Tensor; rstd: Tensor };
  /** Tokens per expert [E] (lazy: reading it waits for the device; read it before ctx.dispose()). */
  readonly counts: Int32Array;
}

/**
 * MoE block forward. x bf16 [T,H]; returns y bf16 [T,H] (plus opts.residual when given) and the context for
 * moeBackward.
 */
export function moeForward(x: Tensor, w: MoeWeights, opts: MoeOptions): MoeForwardResult {
  const limit = opts.limit ?? 7;
  const exact = opts.exact ?? false;
  const r = native().ops.moeForward(
    x.native, w.routerW.native, w.routerB.native, w.gateUpW.native, w.gateUpB.native, w.downW.native, w.downB.native,
    opts.topK, limit, exact, opts.residual?.native ?? null, opts.expertGemms ?? 'auto', ...loraArgs(opts.lora),
    opts.preNorm?.o.native ?? null, opts.preNorm?.weight.native ?? null, opts.preNorm?.eps ?? 0,
  );
  const ctx = new MoeContext(r, w, opts.topK, limit, exact, opts.lora);
  const y = new Tensor(r.y);
  const preNorm = r.normH && r.normY && r.normRstd ? { h: new Tensor(r.normH), normed: new Tensor(r.normY), rstd: new Tensor(r.normRstd) } : undefined;
  return {
    y,
    ctx,
    preNorm,
    get counts(): Int32Array {
      return ctx.counts;
    },
  };
}

/**
 * Existing f32 buffers the expert weight gradients are added to (gradient accumulation): dGateUpW [E,H,2I],
 * dDownW [E,I,H]. The CUDA cuBLASLt path accumulates in the GEMMs (no fresh 3 GB tensor at gpt-oss-20b size).
 */
export interface MoeWeightGradBuffers {
  dGateUpW: Tensor;
  dDownW: Tensor;
  /**
   * The buffers hold no gradient yet (e.g. uninitialised memory): the gradients are written into them, not added, so
   * they need no zeroing and are never read (3.2 GB f32 each way per gpt-oss-20b layer). Default false: added.
   */
  overwrite?: boolean;
}

/** The native moe ops' trailing adapter arguments (gateUpA, gateUpB, downA, downB, scale). */
function loraArgs(l: MoeExpertLora | undefined): [NativeTensor | null, NativeTensor | null, NativeTensor | null, NativeTensor | null, number] {
  if (!l) return [null, null, null, null, 1];
  if (!l.gateUpA !== !l.gateUpB || !l.downA !== !l.downB) throw new Error('moe lora: gateUpA/gateUpB and downA/downB come in pairs (both or neither)');
  return [l.gateUpA?.native ?? null, l.gateUpB?.native ?? null, l.downA?.native ?? null, l.downB?.native ?? null, l.scale];
}

/** The gradients of a frozen-base backward (weightGrads false): no expert weight matrices' gradients. */
export type MoeFrozenGrads = Omit<MoeGrads, 'dGateUpW' | 'dDownW'> & MoeLoraGrads;

export interface MoeBackwardOptions {
  /**
   * false: a frozen base (LoRA): the expert weight matrices' gradients (dGateUpW, dDownW: 3.2 GB f32 per gpt-oss-20b
   * layer) are neither computed nor allocated; the small router and bias gradients still come out. Default true.
   */
  weightGrads?: boolean;
}

/**
 * MoE block backward. dy bf16|f32 [T,H]; all gradients are fresh f32 tensors, except dGateUpW/dDownW which are
 * `into`'s tensors (accumulated, or written with `into.overwrite`) when it is given. ctx stays alive (dispose it).
 * `w` defaults to the weights forward used (pass re-gathered copies of the same values when sharding).
 * With adapters in the forward (ctx.lora), their gradients come back too (dLoraGateUpA ...).
 */
export function moeBackward(dy: Tensor, ctx: MoeContext, w?: MoeWeights, into?: MoeWeightGradBuffers, opts?: { weightGrads?: true }): MoeGrads & MoeLoraGrads;
export function moeBackward(dy: Tensor, ctx: MoeContext, w: MoeWeights | undefined, into: undefined, opts: { weightGrads: false }): MoeFrozenGrads;
export function moeBackward(dy: Tensor, ctx: MoeContext, w: MoeWeights = ctx.weights, into?: MoeWeightGradBuffers, opts: MoeBackwardOptions = {}): MoeFrozenGrads & Partial<MoeGrads> {
  if (ctx.disposed) throw new Error('moeBackward: the MoeContext was disposed');
  const weightGrads = opts.weightGrads ?? true;
  if (!weightGrads && into) throw new Error('moeBackward: gradient buffers (into) were given with weightGrads false');
  const r = native().ops.moeBackward(
    dy.native, w.routerW.native, w.routerB.native, w.gateUpW.native, w.gateUpB.native, w.downW.native, w.downB.native,
    ctx.x.native, ctx.topkIdx.native, ctx.topkW.native, ctx.countsTensor.native, ctx.offsets.native, ctx.permTok.native,
    ctx.slotPos.native, ctx.gu.native, ctx.h.native, ctx.yp.native,
    ctx.topK, ctx.limit, ctx.exact, into?.dGateUpW.native ?? null, into?.dDownW.native ?? null, ctx.xp?.native ?? null,
    ctx.offsetsHost?.native ?? null, weightGrads, ...loraArgs(ctx.lora), into?.overwrite ?? false,
  );
  // With `into`, the native side returns new handles on the caller's buffers: hand back the caller's tensors.
  const own = (h: NativeTensor, buf?: Tensor): Tensor => {
    if (!buf) return new Tensor(h);
    h.dispose();
    return buf;
  };
  const opt = (h: NativeTensor | undefined): Tensor | undefined => (h ? new Tensor(h) : undefined);
  return {
    dx: new Tensor(r.dx),
    dRouterW: new Tensor(r.dRouterW),
    dRouterB: new Tensor(r.dRouterB),
    dGateUpW: r.dGateUpW ? own(r.dGateUpW, into?.dGateUpW) : undefined,
    dGateUpB: new Tensor(r.dGateUpB),
    dDownW: r.dDownW ? own(r.dDownW, into?.dDownW) : undefined,
    dDownB: new Tensor(r.dDownB),
    dLoraGateUpA: opt(r.dLoraGateUpA),
    dLoraGateUpB: opt(r.dLoraGateUpB),
    dLoraDownA: opt(r.dLoraDownA),
    dLoraDownB: opt(r.dLoraDownB),
  };
}
