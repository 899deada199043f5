// loss.ts: the PPO-clip policy loss, the k3 KL loss, the three loss reductions, and their gradient with respect
// to each token's log-prob, computed analytically.
//
// The model's backward pass starts from dLoss/dlogp per token (the fused log-prob op's backward takes it), so the
// whole loss lives here in plain TypeScript over the response tokens' log-probs (small arrays: one float per
// token), for every backend alike.
//
// Per token t of response s with advantage A_s:
//   ratio   = exp(clamp(logp - old, -20, 20))
//   loss_t  = -min(ratio·A, clip(ratio, 1 - eps_low, 1 + eps_high)·A)
//   dual clip (A < 0): loss_t = min(loss_t, -A·c)      (c = clip_ratio_c, bounds the loss of a negative advantage)
//   k3 KL:  x = clamp(ref - logp, -20, 20), kl_t = clamp(e^x - x - 1, -10, 10), added as kl_coef·kl_t
// Reductions (over the tokens of a mini-batch; normalisers may be passed in so that micro-batches with gradient
// accumulation add up to exactly the mini-batch's loss):
//   token_mean               Σ_t loss_t / (tokens in the mini-batch)
//   sequence_mean            mean over sequences of (mean over the sequence's tokens)
//   seq_mean_token_sum_norm  mean over sequences of (Σ_t loss_t / max_seq_len)   (Dr. GRPO's constant normaliser)

export type LossReduction = 'token_mean' | 'sequence_mean' | 'seq_mean_token_sum_norm';
export type PolicyLossType = 'regular' | 'dual_clip';

export interface PolicyLossOptions {
  epsClipLow: number;
  epsClipHigh: number;
  policyLossType: PolicyLossType;
  /** Dual-clip bound c (> 1). */
  clipRatioC: number;
  lossReduction: LossReduction;
  /** The constant normaliser of seq_mean_token_sum_norm (the generator's max response length). */
  maxSeqLen: number;
  /** k3 KL coefficient; 0 (or no refLogprobs) disables the KL term. */
  klCoef: number;
  /**
   * Normalisers for the reduction: the number of (unmasked) tokens and of sequences in the whole mini-batch.
   * Defaults to this call's own counts.
   */
  norm?: { tokens: number; sequences: number };
}

export interface PolicyLossInput {
  /** Per response: log-probs of its tokens under the policy being trained [len_s]. */
  logprobs: Float32Array[];
  /** Per response: log-probs under the policy that generated the batch (recomputed by the trainer). */
  oldLogprobs: Float32Array[];
  /** Per response: log-probs under the frozen reference policy (needed when klCoef > 0). */
  refLogprobs?: Float32Array[];
  /** One advantage per response. */
  advantages: ArrayLike<number>;
  /** Per response: 1 where the token counts in the loss (default: every token). */
  mask?: Uint8Array[];
}

export interface PolicyLossResult {
  /** Reduced total loss (policy + kl_coef·kl) of this call's sequences under the given normalisers. */
  loss: number;
  policyLoss: number;
  klLoss: number;
  /** dLoss/dlogp per token, same layout as logprobs. */
  dLogprobs: Float32Array[];
  /** Sums for metrics (add them over micro-batches, then divide by `tokens`). */
  sums: { tokens: number; clipped: number; dualClipped: number; kl: number; ratio: number; ratioMax: number; ratioMin: number; nonFinite: number };
}

const LOG_RATIO_CLAMP = 20;
const KL_CLAMP = 10;

/** k3 KL estimate of one token and its derivative with respect to logp. */
export function k3(logp: number, ref: number): { kl: number; dlogp: number } {
  const raw = ref - logp;
  const x = Math.min(LOG_RATIO_CLAMP, Math.max(-LOG_RATIO_CLAMP, raw));
  const ex = Math.exp(x);
  const v = ex - x - 1;
  const kl = Math.min(KL_CLAMP, Math.max(-KL_CLAMP, v));
  const inside = raw > -LOG_RATIO_CLAMP && raw < LOG_RATIO_CLAMP && v < KL_CLAMP;
  // d/dlogp (e^x - x - 1) with x = ref - logp: -(e^x - 1).
  return { kl, dlogp: inside ? 1 - ex : 0 };
}

/** The per-token PPO-clip loss and its derivative with respect to logp. */
export function ppoTokenLoss(
  logp: number,
  old: number,
  A: number,
  o: Pick<PolicyLossOptions, 'epsClipLow' | 'epsClipHigh' | 'policyLossType' | 'clipRatioC'>,
): { loss: number; dlogp: number; clipped: boolean; dualClipped: boolean; ratio: number } {
  const d = logp - old;
  const dc = Math.min(LOG_RATIO_CLAMP, Math.max(-LOG_RATIO_CLAMP, d));
  const ratio = Math.exp(dc);
  const dRatio = d > -LOG_RATIO_CLAMP && d < LOG_RATIO_CLAMP ? ratio : 0; // d ratio / d logp
  const lo = 1 - o.epsClipLow;
  const hi = 1 + o.epsClipHigh;
  const rc = Math.min(hi, Math.max(lo, ratio));
  const surr1 = ratio * A;
  const surr2 = rc * A;
  let loss: number;
  let dlogp: number;
  // -min(surr1, surr2) = max(-surr1, -surr2); the clipped branch wins when -surr2 > -surr1.
  const clipped = -surr2 > -surr1;
  if (!clipped) {
    loss = -surr1;
    dlogp = -A * dRatio;
  } else {
    loss = -surr2;
    // Inside the clip range rc == ratio (then surr1 == surr2, not "clipped"); outside it rc is constant.
    dlogp = ratio > lo && ratio < hi ? -A * dRatio : 0;
  }
  let dualClipped = false;
  if (o.policyLossType === 'dual_clip' && A < 0) {
    const bound = -A * o.clipRatioC;
    if (bound < loss) {
      loss = bound;
      dlogp = 0;
      dualClipped = true;
    }
  }
  return { loss, dlogp, clipped, dualClipped, ratio };
}

/** The policy_loss_type values whose loss is a sum of per-token terms (every current one). */
const TOKEN_LOCAL_LOSS_TYPES: readonly string[] = ['regular', 'dual_clip'];
/** The loss_reduction values whose per-token weight is known before any log-prob is (every current one). */
const TOKEN_LOCAL_REDUCTIONS: readonly string[] = ['token_mean', 'sequence_mean', 'seq_mean_token_sum_norm'];

/** What a token's loss term needs beyond its log-prob: the batch's other inputs, resolved once (policyLossContext). */
interface PolicyLossContext {
  input: Omit<PolicyLossInput, 'logprobs'>;
  o: PolicyLossOptions;
  useKl: boolean;
  /** Per response: its reduction weight (every counted token's loss enters the total times this). */
  weights: Float64Array;
}

/**
 * Checks the inputs and resolves the reduction weight of each response from the counts (the old log-probs'
 * lengths and the masks) and the normalisers: what makes the loss per-token local, so that a token's gradient
 * needs nothing but that token's log-prob. `who` names the caller in errors.
 */
function policyLossContext(input: Omit<PolicyLossInput, 'logprobs'>, o: PolicyLossOptions, who: string, lengths?: readonly number[]): PolicyLossContext {
  if (!TOKEN_LOCAL_LOSS_TYPES.includes(o.policyLossType)) {
    throw new Error(`${who}: policy_loss_type '${o.policyLossType}' is not a per-token loss (supported: ${TOKEN_LOCAL_LOSS_TYPES.join(', ')})`);
  }
  if (!TOKEN_LOCAL_REDUCTIONS.includes(o.lossReduction)) {
    throw new Error(`${who}: loss_reduction '${o.lossReduction}' has no per-token weight (supported: ${TOKEN_LOCAL_REDUCTIONS.join(', ')})`);
  }
  const S = input.oldLogprobs.length;
  if (input.advantages.length !== S || (lengths && lengths.length !== S)) {
    throw new Error(`${who}: ${lengths?.length ?? S} responses, ${S} old log-prob rows, ${input.advantages.length} advantages`);
  }
  const useKl = o.klCoef > 0 && !!input.refLogprobs;
  if (o.klCoef > 0 && !input.refLogprobs) throw new Error(`${who}: klCoef > 0 needs refLogprobs`);
  // Own counts (used unless the caller passes mini-batch normalisers).
  let ownTokens = 0;
  const seqTokens = new Int32Array(S);
  for (let s = 0; s < S; s++) {
    const n = input.oldLogprobs[s]!.length;
    if (lengths && lengths[s] !== n) throw new Error(`${who}: response ${s} has ${lengths[s]} log-probs but ${n} old ones`);
    if (useKl && input.refLogprobs![s]!.length !== n) throw new Error(`${who}: response ${s} has ${n} log-probs but ${input.refLogprobs![s]!.length} reference ones`);
    const m = input.mask?.[s];
    let c = 0;
    for (let t = 0; t < n; t++) if (!m || m[t]) c++;
    seqTokens[s] = c;
    ownTokens += c;
  }
  const normTokens = o.norm?.tokens ?? ownTokens;
  const normSeqs = o.norm?.sequences ?? S;
  const weights = new Float64Array(S);
  for (let s = 0; s < S; s++) {
    switch (o.lossReduction) {
      case 'token_mean':
        weights[s] = normTokens > 0 ? 1 / normTokens : 0;
        break;
      case 'sequence_mean':
        weights[s] = seqTokens[s]! > 0 && normSeqs > 0 ? 1 / (normSeqs * seqTokens[s]!) : 0;
        break;
      case 'seq_mean_token_sum_norm':
        weights[s] = normSeqs > 0 ? 1 / (normSeqs * o.maxSeqLen) : 0;
        break;
    }
  }
  return { input, o, useKl, weights };
}

/** One counted token t of response s at log-prob x: its PPO term, its KL term (when on) and w·dLoss/dlogp. */
function tokenTerm(c: PolicyLossContext, s: number, t: number, x: number): { ppo: ReturnType<typeof ppoTokenLoss>; kl: number; grad: number } {
  const r = ppoTokenLoss(x, c.input.oldLogprobs[s]![t]!, c.input.advantages[s]!, c.o);
  let dl = r.dlogp;
  let kl = 0;
  if (c.useKl) {
    const k = k3(x, c.input.refLogprobs![s]![t]!);
    kl = k.kl;
    dl += c.o.klCoef * k.dlogp;
  }
  return { ppo: r, kl, grad: c.weights[s]! * dl };
}

/**
 * dLoss/dlogp of any tokens of any response, from their log-probs alone: `grad(s, t0, logprobs)` gives the
 * gradients of tokens t0 .. t0 + logprobs.length - 1 of response s (f32, 0 where masked), the same values as
 * policyLoss's dLogprobs bit for bit. For the fused LM-head backward (the model forms the LM head's gradient per
 * chunk of tokens during the forward, src/model/gptoss.ts ForwardOptions.lossGradient). Refuses a loss that is
 * not per-token local (none of the current policy_loss_type / loss_reduction values is).
 */
export function policyTokenGradient(
  input: Omit<PolicyLossInput, 'logprobs'>,
  o: PolicyLossOptions,
): ((s: number, t0: number, logprobs: ArrayLike<number>) => Float32Array) & { readonly source: { input: Omit<PolicyLossInput, 'logprobs'>; opts: PolicyLossOptions } } {
  const c = policyLossContext(input, o, 'policyTokenGradient');
  const fn = (s: number, t0: number, lp: ArrayLike<number>): Float32Array => {
    const old = input.oldLogprobs[s];
    if (!old) throw new Error(`policyTokenGradient: response ${s} of ${input.oldLogprobs.length}`);
    if (!(Number.isInteger(t0) && t0 >= 0 && t0 + lp.length <= old.length)) {
      throw new Error(`policyTokenGradient: tokens ${t0}..${t0 + lp.length} of response ${s}, which has ${old.length}`);
    }
    const m = input.mask?.[s];
    const g = new Float32Array(lp.length);
    for (let i = 0; i < lp.length; i++) {
      if (m && !m[t0 + i]) continue;
      g[i] = tokenTerm(c, s, t0 + i, lp[i]!).grad;
    }
    return g;
  };
  // Its inputs as data (src/trainer/policy.ts LossGradientFn.source): the distributed run sends them to its ranks.
  return Object.assign(fn, { source: { input, opts: o } });
}

/**
 * The rows `idx` of policyTokenGradient's inputs (a rank's share of a micro-batch): with the mini-batch's
 * normalisers in the options (o.norm), policyTokenGradient(lossRows(input, idx), o) gives those sequences the
 * gradients the whole input gives them.
 */
export function lossRows(input: Omit<PolicyLossInput, 'logprobs'>, idx: readonly number[]): Omit<PolicyLossInput, 'logprobs'> {
  const pick = <T>(a: ArrayLike<T>): T[] => idx.map((i) => {
    if (!(i >= 0 && i < a.length)) throw new Error(`lossRows: row ${i} of ${a.length}`);
    return a[i]!;
  });
  return {
    oldLogprobs: pick(input.oldLogprobs),
    refLogprobs: input.refLogprobs ? pick(input.refLogprobs) : undefined,
    advantages: pick(input.advantages),
    mask: input.mask ? pick(input.mask) : undefined,
  };
}

export function policyLoss(input: PolicyLossInput, o: PolicyLossOptions): PolicyLossResult {
  const c = policyLossContext(input, o, 'policyLoss', input.logprobs.map((l) => l.length));
  const S = input.logprobs.length;
  const useKl = c.useKl;
  const sums = { tokens: 0, clipped: 0, dualClipped: 0, kl: 0, ratio: 0, ratioMax: -Infinity, ratioMin: Infinity, nonFinite: 0 };
  let pl = 0;
  let kll = 0;
  const dLogprobs: Float32Array[] = [];
  for (let s = 0; s < S; s++) {
    const lp = input.logprobs[s]!;
    const old = input.oldLogprobs[s]!;
    const m = input.mask?.[s];
    const n = lp.length;
    const g = new Float32Array(n);
    const w = c.weights[s]!;
    for (let t = 0; t < n; t++) {
      if (m && !m[t]) continue;
      const x = lp[t]!;
      if (!Number.isFinite(x) || !Number.isFinite(old[t]!)) sums.nonFinite++;
      const { ppo: r, kl, grad } = tokenTerm(c, s, t, x);
      pl += w * r.loss;
      sums.tokens++;
      if (r.clipped) sums.clipped++;
      if (r.dualClipped) sums.dualClipped++;
      sums.ratio += r.ratio;
      if (r.ratio > sums.ratioMax) sums.ratioMax = r.ratio;
      if (r.ratio < sums.ratioMin) sums.ratioMin = r.ratio;
      if (useKl) {
        kll += w * kl;
        sums.kl += kl;
      }
      g[t] = grad;
    }
    dLogprobs.push(g);
  }
  const loss = sums.nonFinite > 0 ? NaN : pl + (useKl ? o.klCoef * kll : 0);
  return { loss, policyLoss: pl, klLoss: kll, dLogprobs, sums };
}

/** Mean over tokens of the k3 KL between two log-prob lists (a metric when the KL loss is off). */
export function meanK3(logprobs: Float32Array[], ref: Float32Array[]): number {
  let s = 0;
  let n = 0;
  for (let i = 0; i < logprobs.length; i++) {
    const a = logprobs[i]!;
    const b = ref[i]!;
    for (let t = 0; t < a.length; t++) {
      s += k3(a[t]!, b[t]!).kl;
      n++;
    }
  }
  return n ? s / n : 0;
}

/**
 * Cross-entropy (SFT) over target tokens: loss = -Σ logp / tokens; dLoss/dlogp = -1/tokens on each counted token.
 */
export function crossEntropyLoss(logprobs: Float32Array[], mask?: Uint8Array[], normTokens?: number): { loss: number; dLogprobs: Float32Array[]; tokens: number } {
  let tokens = 0;
  for (let s = 0; s < logprobs.length; s++) {
    const m = mask?.[s];
    for (let t = 0; t < logprobs[s]!.length; t++) if (!m || m[t]) tokens++;
  }
  const norm = normTokens ?? tokens;
  let loss = 0;
  const d = logprobs.map((lp, s) => {
    const m = mask?.[s];
    const g = new Float32Array(lp.length);
    for (let t = 0; t < lp.length; t++) {
      if (m && !m[t]) continue;
      loss -= lp[t]! / norm;
      g[t] = -1 / norm;
    }
    return g;
  });
  return { loss, dLogprobs: d, tokens };
}
