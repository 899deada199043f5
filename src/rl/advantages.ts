// advantages.ts: GRPO group advantages.
//
// Each prompt gets n responses (a group); a response's advantage is its reward relative to its group:
//   grpo:     A = (r - mean_g) / (std_g + eps), std unbiased (n - 1), eps = 1e-6
//   dr_grpo:  A = r - mean_g   (Dr. GRPO: no std normalisation)
// A group of one has mean 0 and std 1 (its advantage is its reward), as the peer does.

export interface AdvantageOptions {
  /** Divide by the group's std (GRPO); false gives Dr. GRPO. */
  normByStd: boolean;
  eps?: number;
}

export interface AdvantageResult {
  /** One advantage per response, in input order. */
  advantages: Float32Array;
  /** Per group: mean and (unbiased) std of the rewards. */
  groupMean: Float32Array;
  groupStd: Float32Array;
  /** Groups whose rewards are all equal (no learning signal). */
  zeroVarianceGroups: number;
}

/**
 * rewards[i] belongs to group groupIds[i] (any integers; typically prompt indices). Rewards are combined in
 * float64 and returned as float32.
 */
export function groupAdvantages(rewards: ArrayLike<number>, groupIds: ArrayLike<number>, opts: AdvantageOptions): AdvantageResult {
  const n = rewards.length;
  if (groupIds.length !== n) throw new Error(`groupAdvantages: ${n} rewards but ${groupIds.length} group ids`);
  const eps = opts.eps ?? 1e-6;
  const index = new Map<number, number>();
  const gid = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const g = groupIds[i]!;
    let k = index.get(g);
    if (k === undefined) {
      k = index.size;
      index.set(g, k);
    }
    gid[i] = k;
  }
  const G = index.size;
  const sum = new Float64Array(G);
  const cnt = new Float64Array(G);
  for (let i = 0; i < n; i++) {
    const r = rewards[i]!;
    if (!Number.isFinite(r)) throw new Error(`groupAdvantages: reward ${i} is ${r}`);
    sum[gid[i]!] += r;
    cnt[gid[i]!] += 1;
  }
  const mean = new Float64Array(G);
  const std = new Float64Array(G);
  for (let g = 0; g < G; g++) mean[g] = cnt[g]! > 1 ? sum[g]! / cnt[g]! : 0;
  const ss = new Float64Array(G);
  for (let i = 0; i < n; i++) {
    const d = rewards[i]! - mean[gid[i]!]!;
    ss[gid[i]!] += d * d;
  }
  let zeroVar = 0;
  for (let g = 0; g < G; g++) {
    std[g] = cnt[g]! > 1 ? Math.sqrt(ss[g]! / (cnt[g]! - 1)) : 1;
    if (cnt[g]! > 1 && ss[g]! === 0) zeroVar++;
  }
  const adv = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const g = gid[i]!;
    const centred = rewards[i]! - mean[g]!;
    adv[i] = opts.normByStd ? centred / (std[g]! + eps) : centred;
  }
  return { advantages: adv, groupMean: Float32Array.from(mean), groupStd: Float32Array.from(std), zeroVarianceGroups: zeroVar };
}

/** Convenience: n consecutive responses per prompt. */
export function contiguousGroupIds(numResponses: number, groupSize: number): Int32Array {
  if (numResponses % groupSize !== 0) throw new Error(`contiguousGroupIds: ${numResponses} responses do not split into groups of ${groupSize}`);
  const ids = new Int32Array(numResponses);
  for (let i = 0; i < numResponses; i++) ids[i] = Math.floor(i / groupSize);
  return ids;
}

export interface Stats {
  mean: number;
  std: number;
  min: number;
  max: number;
}

/** Mean, population std, min, max of a list (NaN-free input assumed; empty gives zeros). */
export function stats(x: ArrayLike<number>): Stats {
  const n = x.length;
  if (n === 0) return { mean: 0, std: 0, min: 0, max: 0 };
  let s = 0;
  let mn = Infinity;
  let mx = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    s += v;
    if (v < mn) mn = v;
    if (v > mx) mx = v;
  }
  const m = s / n;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += (x[i]! - m) ** 2;
  return { mean: m, std: Math.sqrt(ss / n), min: mn, max: mx };
}
