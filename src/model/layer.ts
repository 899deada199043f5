// layer.ts: one GPT-OSS decoder layer (Hugging Face's GptOssDecoderLayer), forward and backward, composed from the
// ops. Over the T tokens of a packed batch (bf16 [T, H] in and out):
//   a1 = rmsnorm(x) ; qkv = a1·Wqkvᵀ + b (q/k/v stacked) ; q,k = rope(q,k), v split off ; o = attn(q,k,v; sinks, window)
//   h  = x + o·Woᵀ + bo ; a2 = rmsnorm(h) ; y = h + moe(a2)
// Activations are bf16; norms, softmaxes and the residual-stream gradient are fp32; parameter gradients are fp32.
//
// The layer is cut into the pieces every driver composes: the attention prologue (attentionInputs), the attention
// itself (varlen over a packed batch, or over a KV cache the caller lays out: LayerKvCache) and the block after it
// (outputAndMoe: o_proj, residual, norm, MoE, residual). Training's forward, generation's steps (DecoderLayer.step,
// driven by src/inference/) and per-layer drivers (sharded training, benchmarks) all run these same pieces.
//
// LoRA (src/model/lora.ts): when the host carries adapters (host.lora), the pieces apply them at run time in factor
// form (q/k/v/o: two thin GEMMs each; the router: a merged [E, H] weight per call; the experts: inside the MoE op),
// for training and generation alike, and backward treats the base as frozen: it computes the activations' chain
// and the adapters' gradients only (no base weight gradient is computed or allocated).
// LoRA dropout (PEFT's lora_dropout, q/k/v/o only: checkLoraSpec): a training forward given a dropout seed feeds
// each adapter dropout(input) instead of its input, y += scale·B·A·dropout(x), one mask per (layer, module) from
// the counter-based hash of dropoutForward (loraDropoutSalt); backward regenerates the masks from the seed kept in
// the saved activations (the recompute reruns the forward with the same seed). Without a seed (generation,
// log-prob passes) or with dropout 0 the adapters see their inputs as they are.
import { gpuProfile } from '../log/gpu-profile.ts';
import { Tensor, batchInvariant } from '../tensor.ts';
import type { GptOssConfig } from './config.ts';
import type { PackedBatch } from './batch.ts';
import { layerPrefix, qkvRows, QKV_PROJ, type GptOssWeights, type LayerWeights } from './weights.ts';
import { accumulateGrad, disposeAll, reshape, withView } from './tensor-helpers.ts';
import { addRmsnorm, rmsnormForward, rmsnormBackward } from '../ops/rmsnorm.ts';
import { ropeQkvProject, ropeQkvPack, type RopeCacheWrite } from '../ops/rope.ts';
import { addInPlace, cast, dropoutForward } from '../ops/elementwise.ts';
import { linearForward, linearBackward, linearBackwardInput, matmul } from '../ops/gemm.ts';
import { attentionForward, attentionBackward } from '../ops/attention.ts';
import { moeForward, moeBackward, type MoeContext, type MoeExpertLora, type MoeWeights } from '../ops/moe.ts';
import { ropeForward, ropeBackward } from '../ops/rope.ts';
import { loraModulePath, type LayerLora, type LoraAdapters, type LoraPair, type LoraTarget } from './lora.ts';

/** YaRN RoPE tables of a model: inverse frequencies (f32 [D/2] on the model's device) and the cos/sin scaling. */
export interface RopeTables {
  invFreq: Tensor;
  scaling: number;
}

/** What a layer reads from the model that owns it, at each call (so weights and options may change between calls). */
export interface LayerHost {
  readonly config: GptOssConfig;
  readonly weights: GptOssWeights;
  readonly device: string;
  readonly rope: RopeTables;
  /** Bitwise-reproducible attention backward (see ModelOptions.deterministic). */
  readonly deterministic: boolean;
  /**
   * Set when this host holds one rank's shard of a tensor-parallel model (src/model/tensor-parallel.ts): its
   * layers then run only through outputAndMoeParallel (generation), never the single-device paths.
   */
  readonly tp?: TensorParallelGroup;
  /**
   * Active LoRA adapters (null/absent: the plain model). While set, every piece applies them and backward trains
   * only them (the base is frozen).
   */
  readonly lora?: LoraAdapters | null;
}

/**
 * Tensor parallelism as a layer sees it: `size` ranks each hold a shard (heads, expert intermediate slice) and
 * produce partial sums of the o_proj and MoE outputs, which allReduce adds up across the ranks.
 */
export interface TensorParallelGroup {
  readonly rank: number;
  readonly size: number;
  /** In place: t (bf16 [T, H]) <- sum over the ranks of t. */
  allReduce(t: Tensor): Promise<void>;
  /** out [size, ...input.shape] <- every rank's input in rank order (the vocabulary-parallel LM head's slices). */
  allGather(out: Tensor, input: Tensor): Promise<void>;
}

/** The attention prologue's outputs: the normalised input a1 bf16 [T, H] with its rstd (backward keeps both), q, k roped. */
export interface AttentionInputs {
  a1: Tensor;
  rstd1: Tensor;
  /** bf16 [T, Hq, D] after rope. */
  qr: Tensor;
  /** bf16 [T, Hkv, D] after rope. */
  kr: Tensor;
  /** bf16 [T, Hkv, D]. */
  v: Tensor;
}

/** The activations of the block after attention that backward needs. */
export interface OutputSaved {
  /** bf16 [T, Hq, D]: the attention output. */
  attn: Tensor;
  /** x + attention branch, bf16 [T, H]. */
  h: Tensor;
  a2: Tensor;
  rstd2: Tensor;
  moe: MoeContext;
  /** With a router adapter: the merged router weight bf16 [E, H] the MoE used (freed with the rest). */
  routerEff?: Tensor;
  /** The LoRA dropout seed of the forward (absent: no dropout): backward regenerates the masks from it. */
  dropoutSeed?: number;
}

/**
 * A layer's attention output and LSE kept from the training forward under recompute with keepAttention: the
 * backward's recompute of the layer takes them instead of running the attention forward again (out bf16
 * [T, Hq, D], 134 MB at 16k tokens and gpt-oss size; lse f32). The attention forward is deterministic, so the
 * recomputed layer is bitwise what it would be otherwise.
 */
export interface KeptAttention {
  attn: Tensor;
  lse: Tensor;
}

export interface LayerBackwardOptions {
  /**
   * grads' expert weight buffers (mlp.experts.gate_up_proj, down_proj: both must be there) hold no gradient yet
   * (uninitialised memory): the MoE backward writes them instead of adding into them, so they need no zeroing and
   * are never read back (3.2 GB f32 each way per gpt-oss-20b layer; the sharded trainer's fresh per-unit buffers).
   */
  freshExpertGrads?: boolean;
}

/** The activations one layer's backward needs. */
export interface LayerSaved extends AttentionInputs, OutputSaved {
  /** The layer input, bf16 [T, H] (the caller's: backward does not free it). */
  x: Tensor;
  lse: Tensor;
}

/**
 * Where generation keeps one layer's keys and values, and how the query rows of a generation step attend over
 * them. The layout and the step's metadata (which sequence each row belongs to, where its keys live) are the
 * cache's: a dense [B, Smax, Hkv, D] cache in src/inference/generate.ts (the static baseline), the paged pool of
 * src/inference/paged-kv-cache.ts in the engine. A step may mix prefill chunks and single decode tokens.
 */
export interface LayerKvCache {
  /** Stores the roped keys and the values (bf16 [N, Hkv, D] each) of the N query rows of the step. */
  write(k: Tensor, v: Tensor): void;
  /**
   * Optional: where write() would put this step's rows (the pools as [M, Hkv, D] rows and each row's slot), so the
   * layer's rope writes them in its own pass (ropeQkvSplit's cache) and write() is not called. A cache without it
   * gets write().
   */
  writeTarget?(): RopeCacheWrite;
  /**
   * Attention of the step's query rows q bf16 [N, Hq, D] (roped) over their sequences' cached keys (this step's
   * included: written first), causal, within `window` (0 = all), with the per-head sink logits. k and v are this
   * step's own rows (bf16 [N, Hkv, D]), for a cache that attends over them directly (a whole-prompt prefill).
   * Returns bf16 [N, Hq, D].
   */
  attend(q: Tensor, k: Tensor, v: Tensor, opts: { window: number; sinks: Tensor }): Tensor;
}

export class DecoderLayer {
  constructor(
    private readonly host: LayerHost,
    /** Index in the model (checkpoint names model.layers.<index>.*). */
    readonly index: number,
  ) {}

  get weights(): LayerWeights {
    return this.host.weights.layers[this.index]!;
  }

  /** This layer's active adapters (undefined: none). */
  get lora(): LayerLora | undefined {
    return this.host.lora?.layers[this.index];
  }

  /** Sliding-window width of this layer's attention (0 = full causal). */
  get window(): number {
    const c = this.host.config;
    return c.layerTypes[this.index] === 'sliding_attention' ? c.slidingWindow : 0;
  }

  // ---- the pieces ---------------------------------------------------------------------------------------------------
  /**
   * a1 = rmsnorm(x), q/k/v = a1·Wᵀ + b as [T, heads, D], RoPE on q and k at `positions` (i32 [T]). x: bf16 [T, H].
   * cacheWrite: the rotated k and v rows also go to a KV cache in the rope's pass (layers without k/v adapters
   * only: those change k and v after it). dropoutSeed: a training forward's LoRA dropout seed (see the header).
   */
  attentionInputs(x: Tensor, positions: Tensor, cacheWrite?: RopeCacheWrite, dropoutSeed?: number): AttentionInputs {
    const c = this.host.config;
    const w = this.weights;
    const { y: a1, rstd: rstd1 } = rmsnormForward(x, w.inputNorm, c.rmsNormEps);
    // One GEMM for the three projections (bf16 [T, Hq*D + 2*Hkv*D]), then one pass that ropes q and k out of it
    // and copies v, each into the contiguous [T, heads, D] the attention kernels take (at decode sizes on CUDA,
    // one kernel for both: ropeQkvProject).
    const { invFreq, scaling } = this.host.rope;
    const ll = this.lora;
    if (ll && this.host.device !== 'cpu' && batchInvariant()) {
      throw new Error(`layer ${this.index}: LoRA adapters are not covered by batch-invariant mode on CUDA (their GEMMs and the MoE's per-expert adapter path are cuBLAS); setBatchInvariant(false), or train without adapters`);
    }
    if (cacheWrite && (ll?.k || ll?.v)) throw new Error(`layer ${this.index}: attentionInputs cannot write the KV cache in the rope pass with k/v LoRA adapters (they change k and v after it)`);
    const { q: qr, k: kr, v } = ropeQkvProject(a1, w.qkvW, w.qkvB, positions, invFreq, scaling, c.numHeads, c.numKvHeads, cacheWrite);
    if (ll) this.qkvLoraForward(ll, a1, positions, qr, kr, v, dropoutSeed);
    return { a1, rstd1, qr, kr, v };
  }

  /**
   * Adds the q/k/v adapters' outputs to the roped q, k and to v (in place). RoPE is linear per position, so
   * rope(q + Δq) = rope(q) + rope(Δq): Δq = scale·(a1·Aᵀ)·Bᵀ ([T, Hq·D]) is roped on its own and added; v has
   * no rope (the thin GEMM adds into it directly). a1 bf16 [T, H]; qr [T, Hq, D], kr/v [T, Hkv, D] bf16. The
   * products u [T, r] and Δ are in the adapters' dtype (bf16 adapters: no casts in the GEMMs; f32: exact on the CPU).
   * With a dropout seed each adapter reads its own dropout(a1) (loraInput).
   */
  private qkvLoraForward(ll: LayerLora, a1: Tensor, positions: Tensor, qr: Tensor, kr: Tensor, v: Tensor, dropoutSeed?: number): void {
    const s = this.host.lora!.scale;
    const T = a1.shape[0]!;
    const { invFreq, scaling } = this.host.rope;
    for (const [pair, dst, t] of [[ll.q, qr, 'q_proj'], [ll.k, kr, 'k_proj']] as const) {
      if (!pair) continue;
      const xin = this.loraInput(a1, t, dropoutSeed);
      const u = matmul(xin, pair.A, { transB: true, outDtype: this.host.lora!.dtype }); // [T, r]
      if (xin !== a1) xin.dispose();
      const d = matmul(u, pair.B, { transB: true, alpha: s, outDtype: this.host.lora!.dtype }); // [T, heads*D]
      u.dispose();
      const dr = withView(d, dst.shape, (dv) => ropeForward(dv, positions, invFreq, scaling));
      d.dispose();
      addInPlace(dst, dr);
      dr.dispose();
    }
    if (ll.v) {
      const xin = this.loraInput(a1, 'v_proj', dropoutSeed);
      const u = matmul(xin, ll.v.A, { transB: true, outDtype: this.host.lora!.dtype });
      if (xin !== a1) xin.dispose();
      withView(v, [T, v.shape[1]! * v.shape[2]!], (vv) => matmul(u, ll.v!.B, { transB: true, alpha: s, out: vv, accumulate: true }));
      u.dispose();
    }
  }

  /** out [T, n] += scale·(x'·Aᵀ)·Bᵀ for a linear target t's adapter pair (x [T, in]; x' = loraInput(x)). */
  private linearLoraForward(pair: LoraPair, t: LoraTarget, x: Tensor, out: Tensor, dropoutSeed?: number): void {
    const xin = this.loraInput(x, t, dropoutSeed);
    const u = matmul(xin, pair.A, { transB: true, outDtype: this.host.lora!.dtype });
    if (xin !== x) xin.dispose();
    matmul(u, pair.B, { transB: true, alpha: this.host.lora!.scale, out, accumulate: true });
    u.dispose();
  }

  /** Whether this call drops adapter inputs: a dropout seed given and the adapters' dropout above 0. */
  private dropping(dropoutSeed: number | undefined): dropoutSeed is number {
    return dropoutSeed !== undefined && (this.host.lora?.spec.dropout ?? 0) > 0;
  }

  /**
   * What target t's adapter reads of its input x [T, in]: x itself, or with dropping() a fresh dropout(x) (the
   * caller frees it when it is not x) with this layer's and module's mask (loraDropoutSalt). The backward calls it
   * again to regenerate the same dropout(x).
   */
  private loraInput(x: Tensor, t: LoraTarget, dropoutSeed: number | undefined): Tensor {
    if (!this.dropping(dropoutSeed)) return x;
    return dropoutForward(x, this.host.lora!.spec.dropout, dropoutSeed, loraDropoutSalt(this.index, t));
  }

  /**
   * dx [T, in] (bf16|f32) += the adapter's share of the input gradient, dU·A [T, in] (dU f32 [T, r]), through the
   * input's dropout (the same mask: dropout's backward is dropout of the gradient) when dropping().
   */
  private addLoraInputGrad(dx: Tensor, dU: Tensor, A: Tensor, t: LoraTarget, dropoutSeed: number | undefined): void {
    if (!this.dropping(dropoutSeed)) {
      matmul(dU, A, { out: dx, accumulate: true });
      return;
    }
    const g = matmul(dU, A, { outDtype: 'f32' });
    const gd = dropoutForward(g, this.host.lora!.spec.dropout, dropoutSeed, loraDropoutSalt(this.index, t));
    g.dispose();
    addInPlace(dx, gd);
    gd.dispose();
  }

  /**
   * The MoE's weights and expert adapters under this layer's adapters: with a router adapter, a merged router
   * weight bf16(W + scale·B·A) [E, H] (the caller frees routerEff); expert adapters go to the op in factor form.
   */
  private moeInputs(w: LayerWeights): { weights: MoeWeights; routerEff?: Tensor; lora?: MoeExpertLora } {
    const base = moeWeights(w);
    const ll = this.lora;
    if (!ll) return { weights: base };
    const s = this.host.lora!.scale;
    let routerEff: Tensor | undefined;
    if (ll.router) {
      routerEff = w.routerW.clone();
      matmul(ll.router.B, ll.router.A, { out: routerEff, accumulate: true, alpha: s });
    }
    const lora: MoeExpertLora | undefined =
      ll.gateUp || ll.down ? { gateUpA: ll.gateUp?.A, gateUpB: ll.gateUp?.B, downA: ll.down?.A, downB: ll.down?.B, scale: s } : undefined;
    return { weights: routerEff ? { ...base, routerW: routerEff } : base, routerEff, lora };
  }

  /** Attention of a packed batch, causal within each sequence: out bf16 [T, Hq, D] and the LSE backward needs. */
  attention(qr: Tensor, kr: Tensor, v: Tensor, b: PackedBatch): { out: Tensor; lse: Tensor } {
    return attentionForward(qr, kr, v, { cuSeqlens: b.cuSeqlens, maxSeqlen: b.maxSeqlen, window: this.window, sinks: this.weights.sinks });
  }

  /**
   * The block after attention: h = x + o_proj(attn); y = h + moe(rmsnorm(h)). x bf16 [T, H] stays the caller's;
   * attn bf16 [T, Hq, D] is taken over: kept in `saved` with save, freed otherwise. `profile` records the
   * gpuProfile phases (training's layer forward, which opens a profile region; generation does not). dropoutSeed:
   * a training forward's LoRA dropout seed (see the header; kept in `saved`).
   */
  outputAndMoe(x: Tensor, attn: Tensor, opts: { save: boolean; profile: boolean; keepAttn?: boolean; dropoutSeed?: number }): { y: Tensor; saved: OutputSaved | null } {
    this.checkSingleDevice('outputAndMoe');
    const c = this.host.config;
    const w = this.weights;
    const dev = this.host.device;
    const T = x.shape[0]!;
    const o = withView(attn, [T, c.numHeads * c.headDim], (a) => {
      const r = linearForward(a, w.oW, w.oB);
      const lo = this.lora?.o;
      if (lo) this.linearLoraForward(lo, 'o_proj', a, r, opts.dropoutSeed);
      return r;
    });
    if (!opts.save && !opts.keepAttn) attn.dispose();
    if (opts.profile) gpuProfile.mark(dev, 'fwd o_proj');
    // h = x + o, a2 = rmsnorm(h) (addRmsnorm's bits) and y = h + moe(a2) in one op: the add + norm run inside the
    // MoE (on CUDA at decode sizes, in the fused router's launch; else addRmsnorm's kernel first), and the residual
    // add rides the MoE's combine pass. h is kept: the norm's backward input when saved.
    const mi = this.moeInputs(w);
    const m = moeForward(x, mi.weights, { topK: c.topK, limit: c.swigluLimit, preNorm: { o, weight: w.postNorm, eps: c.rmsNormEps }, lora: mi.lora });
    o.dispose();
    const { h, normed: a2, rstd: rstd2 } = m.preNorm!;
    if (opts.profile) gpuProfile.mark(dev, 'fwd residual+norm+moe+residual');
    if (opts.save) {
      const dropoutSeed = this.dropping(opts.dropoutSeed) ? opts.dropoutSeed : undefined;
      return { y: m.y, saved: { attn, h, a2, rstd2, moe: m.ctx, routerEff: mi.routerEff, dropoutSeed } };
    }
    m.ctx.dispose();
    disposeAll(h, a2, rstd2, mi.routerEff);
    return { y: m.y, saved: null };
  }

  /**
   * outputAndMoe on one rank of a tensor-parallel model (generation; the host's `tp` is set). This rank's o_proj
   * (its heads' columns; the bias only on rank 0) and MoE (its slice of every expert's intermediate dimension; the
   * down bias only on rank 0) each give a partial sum of their branch, and an all-reduce adds the partials up
   * before the residual add: h = x + Σ_r o_r, y = h + Σ_r moe_r. The partials travel in f32 (o_proj writes f32
   * straight from its GEMM; the MoE's bf16 output is widened), so the sum is rounded to bf16 once, in the residual
   * add, as on one device (bf16 partials add a rounding of each rank's share: on the CPU fixture model at tp=2,
   * the logits' relative L2 error against its fp32 reference is 0.0105 with f32 partials, 0.0123 with bf16 ones,
   * 0.0115 on one device). x bf16 [T, H] stays the caller's; attn bf16 [T, Hq_local, D] is taken over. Returns
   * y bf16 [T, H], the same on every rank.
   */
  async outputAndMoeParallel(x: Tensor, attn: Tensor): Promise<Tensor> {
    const tp = this.host.tp;
    if (!tp) throw new Error(`DecoderLayer ${this.index}: outputAndMoeParallel needs a tensor-parallel host (tp unset)`);
    if (this.host.lora) {
      throw new Error(`DecoderLayer ${this.index}: LoRA adapters are not supported on a tensor-parallel engine (serve the adapted model on one device)`);
    }
    const c = this.host.config;
    const w = this.weights;
    const T = x.shape[0]!;
    const o = withView(attn, [T, c.numHeads * c.headDim], (a) => matmul(a, w.oW, { transB: true, bias: w.oB, outDtype: 'f32' }));
    attn.dispose();
    await tp.allReduce(o);
    // h = x + Σ_r o_r (f32 sum rounded to bf16 once) and its norm in one op.
    const { h, y: a2, rstd: rstd2 } = addRmsnorm(x, o, w.postNorm, c.rmsNormEps);
    o.dispose();
    const m = moeForward(a2, moeWeights(w), { topK: c.topK, limit: c.swigluLimit });
    m.ctx.dispose();
    disposeAll(a2, rstd2);
    const mf = cast(m.y, 'f32');
    m.y.dispose();
    await tp.allReduce(mf);
    addInPlace(h, mf); // h becomes the layer output y
    mf.dispose();
    return h;
  }

  /** The single-device paths would silently return one rank's partial sums on a tensor-parallel shard. */
  private checkSingleDevice(what: string): void {
    const tp = this.host.tp;
    if (tp) {
      throw new Error(
        `DecoderLayer ${this.index}: ${what} runs on one device, but this layer is rank ${tp.rank}'s shard of a ` +
          `tensor-parallel model (tp=${tp.size}); use outputAndMoeParallel`,
      );
    }
  }

  // ---- training -----------------------------------------------------------------------------------------------------
  /**
   * The layer over a packed batch x (bf16 [T,H]); returns the output and (if save) the activations backward needs.
   * x stays owned by the caller. Under recompute: keepAttention (with save false) also returns the attention output
   * and LSE (`attention`, the caller's), and the backward's recompute passes them back as opts.attention (taken
   * over) instead of running the attention forward again. dropoutSeed: the LoRA dropout seed of a training forward
   * (the recompute passes the same one, so it regenerates the same masks).
   */
  forward(
    x: Tensor,
    b: PackedBatch,
    save: boolean,
    opts: { keepAttention?: boolean; attention?: KeptAttention; dropoutSeed?: number } = {},
  ): { y: Tensor; saved: LayerSaved | null; attention?: KeptAttention } {
    const dev = this.host.device;
    gpuProfile.start(dev);
    const inputs = this.attentionInputs(x, b.positions, undefined, opts.dropoutSeed);
    gpuProfile.mark(dev, 'fwd norm+qkv+rope');
    let attn: Tensor, lse: Tensor;
    if (opts.attention) ({ attn, lse } = opts.attention);
    else {
      const a = this.attention(inputs.qr, inputs.kr, inputs.v, b);
      attn = a.out;
      lse = a.lse;
      gpuProfile.mark(dev, this.window > 0 ? 'fwd attention (sliding)' : 'fwd attention (full)');
    }
    const keep = !save && (opts.keepAttention ?? false);
    const r = this.outputAndMoe(x, attn, { save, profile: true, keepAttn: keep, dropoutSeed: opts.dropoutSeed });
    if (r.saved) return { y: r.y, saved: { x, lse, ...inputs, ...r.saved } };
    disposeAll(inputs.a1, inputs.rstd1, inputs.qr, inputs.kr, inputs.v);
    if (keep) return { y: r.y, saved: null, attention: { attn, lse } };
    lse.dispose();
    return { y: r.y, saved: null };
  }

  /**
   * Backward: dy (f32 [T,H]) -> dx (f32 [T,H]); parameter gradients are added into `grads` (f32, by checkpoint
   * name; missing entries are created). Frees the saved activations (not s.x, the caller's).
   * With adapters (host.lora) the base is frozen: only the adapters' gradients go into `grads` (by adapter name,
   * src/model/lora.ts), and no base weight gradient is computed (the GEMMs run for the input gradients only; the
   * MoE skips its expert weight gradients; the small norm, sink and router/bias gradients the fused ops produce on
   * the way are dropped).
   */
  backward(s: LayerSaved, dy: Tensor, b: PackedBatch, grads: Map<string, Tensor>, opts: LayerBackwardOptions = {}): Tensor {
    const c = this.host.config;
    const w = this.weights;
    const T = b.numTokens;
    const D = c.headDim;
    const p = layerPrefix(this.index);
    const acc = (name: string, t: Tensor): void => accumulateGrad(grads, `${p}.${name}`, t);
    // linearBackward accumulates into existing buffers; fresh ones it returns are kept.
    const lin = (name: string, dy2: Tensor, x2: Tensor, w2: Tensor, dxDtype: 'bf16' | 'f32'): Tensor => {
      const r = linearBackward(dy2, x2, w2, { dW: grads.get(`${p}.${name}.weight`), db: grads.get(`${p}.${name}.bias`), dxDtype });
      grads.set(`${p}.${name}.weight`, r.dW);
      grads.set(`${p}.${name}.bias`, r.db);
      return r.dx!;
    };
    const dev = this.host.device;
    const ll = this.lora;
    const frozen = !!this.host.lora;
    if (opts.freshExpertGrads && frozen) throw new Error(`DecoderLayer ${this.index}: freshExpertGrads with a frozen base (no expert weight gradients are written)`);
    const accL = (t: LoraTarget, ab: 'A' | 'B', g: Tensor | undefined): void => {
      if (!g) throw new Error(`DecoderLayer ${this.index}: the MoE returned no gradient for the ${t} adapter's ${ab}`);
      accumulateGrad(grads, `${loraModulePath(this.index, t)}.lora_${ab}`, g);
    };
    gpuProfile.start(dev);
    // MoE branch: y = h + moe(rmsnorm2(h)).
    let moeDx: Tensor;
    if (frozen) {
      // No expert weight gradients; the router's (small) is what its adapter's gradients are made of.
      const mg = moeBackward(dy, s.moe, undefined, undefined, { weightGrads: false });
      s.moe.dispose();
      if (ll?.router) this.routerLoraBackward(ll.router, mg.dRouterW, grads);
      if (ll?.gateUp) (accL('gate_up_proj', 'A', mg.dLoraGateUpA), accL('gate_up_proj', 'B', mg.dLoraGateUpB));
      if (ll?.down) (accL('down_proj', 'A', mg.dLoraDownA), accL('down_proj', 'B', mg.dLoraDownB));
      disposeAll(mg.dRouterW, mg.dRouterB, mg.dGateUpB, mg.dDownB);
      moeDx = mg.dx;
      gpuProfile.mark(dev, 'bwd moe');
    } else {
      // Expert weight gradients (3 GB f32 per layer at 20b size) accumulate inside the op when buffers exist.
      const accGU = grads.get(`${p}.mlp.experts.gate_up_proj`), accDown = grads.get(`${p}.mlp.experts.down_proj`);
      if (opts.freshExpertGrads && !(accGU && accDown)) throw new Error(`DecoderLayer ${this.index}: freshExpertGrads without both expert gradient buffers in grads`);
      const mg = moeBackward(dy, s.moe, undefined, accGU && accDown ? { dGateUpW: accGU, dDownW: accDown, overwrite: opts.freshExpertGrads } : undefined);
      s.moe.dispose();
      gpuProfile.mark(dev, 'bwd moe');
      acc('mlp.router.weight', mg.dRouterW);
      acc('mlp.router.bias', mg.dRouterB);
      acc('mlp.experts.gate_up_proj', mg.dGateUpW);
      acc('mlp.experts.gate_up_proj_bias', mg.dGateUpB);
      acc('mlp.experts.down_proj', mg.dDownW);
      acc('mlp.experts.down_proj_bias', mg.dDownB);
      moeDx = mg.dx;
    }
    // dy also reaches h through the residual: dH = dy + d(rmsnorm2 branch), added inside the norm's backward.
    const n2 = rmsnormBackward(moeDx, s.h, w.postNorm, s.rstd2, dy);
    moeDx.dispose();
    if (frozen) n2.dw.dispose();
    else acc('post_attention_layernorm.weight', n2.dw);
    const dH = n2.dx; // f32 [T,H], gradient w.r.t. h (and the residual input x)
    disposeAll(s.a2, s.rstd2, s.h, s.routerEff);
    gpuProfile.mark(dev, 'bwd moe grads+norm');
    // Attention branch: h = x + o_proj(attn(...)).
    // dOut goes to the attention backward in bf16 (its native input dtype, as a BF16 autograd would store it).
    const dAttn = reshape(
      withView(s.attn, [T, c.numHeads * D], (a) => {
        if (!frozen) return lin('self_attn.o_proj', dH, a, w.oW, 'bf16');
        const da = linearBackwardInput(dH, w.oW, { dxDtype: 'bf16' });
        if (ll?.o) {
          const xin = this.loraInput(a, 'o_proj', s.dropoutSeed);
          const dU = this.linearLoraBackward(ll.o, 'o_proj', xin, dH, grads);
          if (xin !== a) xin.dispose();
          this.addLoraInputGrad(da, dU, ll.o.A, 'o_proj', s.dropoutSeed);
          dU.dispose();
        }
        return da;
      }),
      [T, c.numHeads, D],
    );
    gpuProfile.mark(dev, 'bwd o_proj');
    const ab = attentionBackward(dAttn, s.qr, s.kr, s.v, s.attn, s.lse, {
      cuSeqlens: b.cuSeqlens,
      maxSeqlen: b.maxSeqlen,
      window: this.window,
      sinks: w.sinks,
      deterministic: this.host.deterministic,
    });
    gpuProfile.mark(dev, this.window > 0 ? 'bwd attention (sliding)' : 'bwd attention (full)');
    disposeAll(dAttn, s.attn, s.lse, s.qr, s.kr);
    if (ab.dsinks) {
      if (frozen) ab.dsinks.dispose();
      else acc('self_attn.sinks', ab.dsinks);
    }
    // q/k/v adapters: their outputs' gradients are the pre-rope dq, dk (rope is linear) and dv; each gives the
    // adapter's gradients and dU [T, r], whose share of dA1 (dU·A) is added once dA1 exists.
    const qkvDU: [Tensor, Tensor, LoraTarget][] = [];
    if (ll && (ll.q || ll.k || ll.v)) {
      const { invFreq, scaling } = this.host.rope;
      const parts: [LoraPair | undefined, LoraTarget, Tensor, boolean][] = [[ll.q, 'q_proj', ab.dq, true], [ll.k, 'k_proj', ab.dk, true], [ll.v, 'v_proj', ab.dv, false]];
      for (const [pair, t, d, roped] of parts) {
        if (!pair) continue;
        const dPre = roped ? ropeBackward(d, b.positions, invFreq, scaling) : d; // [T, heads, D]
        const xin = this.loraInput(s.a1, t, s.dropoutSeed);
        const dU = withView(dPre, [T, dPre.shape[1]! * D], (dv) => this.linearLoraBackward(pair, t, xin, dv, grads));
        if (xin !== s.a1) xin.dispose();
        if (roped) dPre.dispose();
        qkvDU.push([dU, pair.A, t]);
      }
    }
    // The fused projection's output gradient dQKV [T, Hq*D + 2*Hkv*D]: dq and dk through the backward rope, dv
    // copied, in one pass. bf16 on CUDA (the GEMMs would round an f32 one to bf16 anyway); f32 on the CPU, whose
    // GEMM multiplies mixed operands exactly, so its numerics stay those of separate f32 rope outputs.
    const { invFreq, scaling } = this.host.rope;
    const dqkv = ropeQkvPack(ab.dq, ab.dk, ab.dv, b.positions, invFreq, scaling, dev === 'cpu' ? 'f32' : 'bf16');
    disposeAll(ab.dq, ab.dk, ab.dv, s.v);
    gpuProfile.mark(dev, 'bwd rope');
    const dA1 = frozen ? linearBackwardInput(dqkv, w.qkvW) : this.qkvBackward(dqkv, s.a1, grads);
    dqkv.dispose();
    for (const [dU, A, t] of qkvDU) {
      this.addLoraInputGrad(dA1, dU, A, t, s.dropoutSeed);
      dU.dispose();
    }
    gpuProfile.mark(dev, 'bwd qkv proj');
    const n1 = rmsnormBackward(dA1, s.x, w.inputNorm, s.rstd1, dH); // + dH: the residual around attention
    dA1.dispose();
    if (frozen) n1.dw.dispose();
    else acc('input_layernorm.weight', n1.dw);
    dH.dispose();
    disposeAll(s.a1, s.rstd1);
    gpuProfile.mark(dev, 'bwd norm1+residual');
    return n1.dx;
  }

  /**
   * The adapter gradients of out += scale·(x·Aᵀ)·Bᵀ (a linear target t) from dOut [T, n] (bf16|f32), x [T, in]
   * (what the adapter read: its input, or under dropout the regenerated dropout(input), loraInput):
   * dB [n, r] = scale·dOutᵀ·u and dA [r, in] = dUᵀ·x, with u = x·Aᵀ (recomputed: [T, r], cheap) and
   * dU = scale·dOut·B [T, r], added into `grads` by adapter name. Returns dU (f32; the caller adds dU·A to dx).
   */
  private linearLoraBackward(pair: LoraPair, t: LoraTarget, x: Tensor, dOut: Tensor, grads: Map<string, Tensor>): Tensor {
    const s = this.host.lora!.scale;
    const path = loraModulePath(this.index, t);
    const u = matmul(x, pair.A, { transB: true, outDtype: this.host.lora!.dtype });
    const dU = matmul(dOut, pair.B, { alpha: s, outDtype: 'f32' });
    const into = (name: string, a: Tensor, b2: Tensor, alpha: number): void => {
      const g = grads.get(name);
      if (g) matmul(a, b2, { transA: true, alpha, out: g, accumulate: true });
      else grads.set(name, matmul(a, b2, { transA: true, alpha, outDtype: 'f32' }));
    };
    into(`${path}.lora_B`, dOut, u, s);
    into(`${path}.lora_A`, dU, x, 1);
    u.dispose();
    return dU;
  }

  /**
   * The router adapter's gradients from the merged router weight's (W_eff = W + scale·B·A, dW f32 [E, H]):
   * dB [E, r] = scale·dW·Aᵀ, dA [r, H] = scale·Bᵀ·dW.
   */
  private routerLoraBackward(pair: LoraPair, dW: Tensor, grads: Map<string, Tensor>): void {
    const s = this.host.lora!.scale;
    const path = loraModulePath(this.index, 'router');
    const put = (name: string, f: (o: { out?: Tensor; accumulate?: boolean; outDtype?: 'f32' }) => Tensor): void => {
      const g = grads.get(name);
      if (g) f({ out: g, accumulate: true });
      else grads.set(name, f({ outDtype: 'f32' }));
    };
    put(`${path}.lora_B`, (o) => matmul(dW, pair.A, { transB: true, alpha: s, ...o }));
    put(`${path}.lora_A`, (o) => matmul(pair.B, dW, { transA: true, alpha: s, ...o }));
  }

  /**
   * Backward of the fused q/k/v projection: dqkv [T, Hq*D + 2*Hkv*D] (bf16|f32), a1 bf16 [T, H].
   * Returns dA1 f32 [T, H] (one GEMM with K = Hq*D + 2*Hkv*D) and puts the weight and bias gradients (one GEMM and
   * one column sum for the three) into `grads` under the q/k/v checkpoint names:
   * - no buffers yet (set-to-none): fresh fused f32 buffers are written, and the names get their row slices;
   * - buffers that are consecutive slices of one fused buffer (made here or by zeroGrads()): added into in place;
   * - anything else (separate buffers, some missing): the fused gradient is computed fresh and added into each
   *   buffer (or its slice kept where there is none).
   */
  private qkvBackward(dqkv: Tensor, a1: Tensor, grads: Map<string, Tensor>): Tensor {
    const w = this.weights;
    const p = layerPrefix(this.index);
    const rows = qkvRows(this.host.config);
    type Kind = 'weight' | 'bias';
    const names = (kind: Kind): string[] => QKV_PROJ.map((n) => `${p}.${n}.${kind}`);
    // For each of weight/bias: the fused buffer to accumulate into (a view joining the existing slices), if any.
    const target = (kind: Kind): { names: string[]; have: (Tensor | undefined)[]; fused: Tensor | null } => {
      const ns = names(kind);
      const have = ns.map((n) => grads.get(n));
      const fused = have.every((t) => t && t.dtype === 'f32') ? Tensor.joinRows(have as Tensor[]) : null;
      return { names: ns, have, fused };
    };
    const tw = target('weight'), tb = target('bias');
    const r = linearBackward(dqkv, a1, w.qkvW, { dW: tw.fused ?? undefined, db: tb.fused ?? undefined, dxDtype: 'f32' });
    for (const [t, g] of [[tw, r.dW], [tb, r.db]] as const) {
      // Accumulated in place into the existing buffers: nothing to hand out.
      if (t.fused) {
        t.fused.dispose();
        continue;
      }
      let r0 = 0;
      t.names.forEach((n, i) => {
        const part = g.slice(r0, r0 + rows[i]!);
        r0 += rows[i]!;
        const old = t.have[i];
        if (old) {
          addInPlace(old, part);
          part.dispose();
        } else grads.set(n, part); // the slice keeps the fused storage alive; the other names hold the rest
      });
      g.dispose();
    }
    return r.dx!;
  }

  // ---- generation ---------------------------------------------------------------------------------------------------
  /**
   * One generation step of the layer: x bf16 [N, H] (the caller's) holds the step's query rows at `positions`
   * (i32 [N]): prefill chunks and decode tokens of any number of sequences, as `cache` lays them out. Writes each
   * row's roped k and v to the cache, attends over it, and returns y bf16 [N, H].
   */
  step(x: Tensor, positions: Tensor, cache: LayerKvCache): Tensor {
    return this.outputAndMoe(x, this.cachedAttention(x, positions, cache), { save: false, profile: false }).y;
  }

  /** step on one rank of a tensor-parallel model: the same, with outputAndMoeParallel's all-reduces (a collective). */
  stepParallel(x: Tensor, positions: Tensor, cache: LayerKvCache): Promise<Tensor> {
    return this.outputAndMoeParallel(x, this.cachedAttention(x, positions, cache));
  }

  /** The attention half of a generation step: attn bf16 [N, Hq, D] of the step's rows over the cache. */
  private cachedAttention(x: Tensor, positions: Tensor, cache: LayerKvCache): Tensor {
    // Without k/v adapters the rope pass writes the cache itself (one launch instead of rope + two scatters).
    const ll = this.lora;
    const target = ll?.k || ll?.v ? undefined : cache.writeTarget?.();
    const { a1, rstd1, qr, kr, v } = this.attentionInputs(x, positions, target);
    disposeAll(a1, rstd1);
    if (!target) cache.write(kr, v);
    const attn = cache.attend(qr, kr, v, { window: this.window, sinks: this.weights.sinks });
    disposeAll(qr, kr, v);
    return attn;
  }

}

/** The module ids of the LoRA dropout masks within a layer (PEFT: one dropout module per adapted module). */
const DROPOUT_MODULE: Partial<Record<LoraTarget, number>> = { q_proj: 0, k_proj: 1, v_proj: 2, o_proj: 3 };

/**
 * The dropoutForward salt of the mask of target t's adapter input in layer l: layer·4 + module (q 0, k 1, v 2,
 * o 3), distinct for every (layer, module) of a forward. Only the targets PEFT drops for (checkLoraSpec).
 */
export function loraDropoutSalt(l: number, t: LoraTarget): number {
  const m = DROPOUT_MODULE[t];
  if (m === undefined) throw new Error(`loraDropoutSalt: no dropout mask for target '${t}' (q/k/v/o_proj only)`);
  return l * 4 + m;
}

/** Disposes what a forward saved for backward (not s.x, the caller's). */
export function disposeLayerSaved(s: LayerSaved): void {
  s.moe.dispose();
  disposeAll(s.a1, s.rstd1, s.qr, s.kr, s.v, s.attn, s.lse, s.h, s.a2, s.rstd2, s.routerEff);
}

function moeWeights(w: LayerWeights): { routerW: Tensor; routerB: Tensor; gateUpW: Tensor; gateUpB: Tensor; downW: Tensor; downB: Tensor } {
  return { routerW: w.routerW, routerB: w.routerB, gateUpW: w.gateUpW, gateUpB: w.gateUpB, downW: w.downW, downB: w.downB };
}
