// attention_bwd_kernels.cuh: the device code of the attention backward (kernels and their configs), split from
// attention_bwd.cu so that standalone nvcc harnesses (bench/attn_bwd_harness: kernel-vs-kernel checks, timings) can
// include it without the project's runtime. attention_bwd.cu holds the launchers; attention_heuristics.h the choice.
//   bwd_pre_kernel, dsinks_reduce_kernel   D_i = dO_i . O_i and the dsinks partials; their fixed-order sum (every path)
//   dkdv_kernel<D>, dq_kernel<D>           mma.sync, any head_dim (deterministic)
//   dkdv_wgmma_kernel, dq_wgmma_kernel     wgmma, head_dim 64 on sm_90 (deterministic)
//   dq_convert_ht_kernel                   dq = scale * the fused kernel's accumulator (attention_bwd_ws.cuh)
#pragma once
#include "attention_common.cuh"
#include "wgmma.cuh"

namespace gptoss::cuda {
namespace attn {

constexpr int kPreTokens = 32;  // tokens per pre-kernel block (8 warps x 4)

// Is token t a padding row (at or past its sequence's `used`)? Those rows' dO may hold anything (NaN included), so
// their D_i is written as 0 and they add nothing to dsinks. Binary search over cu (only when there is padding).
__device__ __forceinline__ bool is_padding_row(const Params& p, int t) {
  if (!p.used || p.nseq <= 0) return false;
  int lo = 0, hi = p.nseq - 1;  // the sequence s with cu[s] <= t < cu[s + 1]
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (p.cu[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  return t - p.cu[lo] >= seq_info(p.cu, p.used, lo).used;
}

template <int D>
__global__ void __launch_bounds__(256) bwd_pre_kernel(Params p, float* partial) {
  const int h = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float sink2 = sink_log2(p, h);
  float contrib = 0.f;
  for (int j = 0; j < kPreTokens / 8; j++) {
    const int t = blockIdx.x * kPreTokens + warp * (kPreTokens / 8) + j;
    if (t >= p.T) break;
    if (is_padding_row(p, t)) {
      if (lane == 0) p.dlt[static_cast<int64_t>(h) * p.T + t] = 0.f;
      continue;
    }
    const int64_t off = (static_cast<int64_t>(t) * p.Hq + h) * D;
    float acc = 0.f;
#pragma unroll
    for (int d = lane * 2; d < D; d += 64) {
      __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(p.dout + off + d);
      __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(p.o + off + d);
      acc += __bfloat162float(a.x) * __bfloat162float(b.x) + __bfloat162float(a.y) * __bfloat162float(b.y);
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      p.dlt[static_cast<int64_t>(h) * p.T + t] = acc;
      if (p.sinks && acc != 0.f) contrib += exp2f(sink2 - p.lse[static_cast<int64_t>(h) * p.T + t] * kLog2e) * acc;
    }
  }
  __shared__ float red[8];
  if (lane == 0) red[warp] = contrib;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int w = 0; w < 8; w++) s += red[w];
    partial[static_cast<int64_t>(h) * gridDim.x + blockIdx.x] = s;
  }
}

__global__ void dsinks_reduce_kernel(const float* partial, int nblk, float* dsinks) {
  const int h = blockIdx.x;
  float s = 0.f;
  for (int i = threadIdx.x; i < nblk; i += blockDim.x) s += partial[static_cast<int64_t>(h) * nblk + i];
  s = block_sum(s);
  if (threadIdx.x == 0) dsinks[h] = -s;
}

template <typename T>
__device__ __forceinline__ void store2(T* dst, float a, float b);
template <>
__device__ __forceinline__ void store2<float>(float* dst, float a, float b) {
  *reinterpret_cast<float2*>(dst) = make_float2(a, b);
}
template <>
__device__ __forceinline__ void store2<__nv_bfloat16>(__nv_bfloat16* dst, float a, float b) {
  *reinterpret_cast<uint32_t*>(dst) = pack_bf16(a, b);
}

// Writes a 16-row x D accumulator fragment (rows row_a, row_a+8 relative to `base` row 0) scaled by s.
template <int D, typename T>
__device__ __forceinline__ void store_frag(T* base, int64_t stride, int row_a, int nrows, const float (*acc)[4],
                                           float s) {
  const int t4 = threadIdx.x & 3;
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = row_a + r * 8;
    if (row >= nrows) continue;
    T* dst = base + row * stride;
#pragma unroll
    for (int i = 0; i < D / 8; i++) store2<T>(dst + i * 8 + 2 * t4, acc[i][2 * r] * s, acc[i][2 * r + 1] * s);
  }
}

// A warp's finished dQ fragment (this thread's rows wr0 + g, wr0 + g + 8 of a query block whose first row is element
// qoff of dq, rows qstride elements apart) in the gradient dtype, scale * acc: rows at or past nreal (the block's real
// rows) are written as zeros, rows at or past rows_here (the block's rows inside the sequence) not at all.
template <int D>
__device__ __forceinline__ void store_dq_frags(const Params& p, int64_t qoff, int64_t qstride, int wr0, int g,
                                               int nreal, int rows_here, float (&acc)[D / 8][4]) {
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int lr = wr0 + g + r * 8;
    if (lr >= nreal)
#pragma unroll
      for (int i = 0; i < D / 8; i++) acc[i][2 * r] = acc[i][2 * r + 1] = 0.f;
  }
  const int r0 = wr0 + g;
  if (p.grad_f32)
    store_frag<D, float>(static_cast<float*>(p.dq) + qoff, qstride, r0, rows_here, acc, p.scale);
  else
    store_frag<D, __nv_bfloat16>(static_cast<__nv_bfloat16*>(p.dq) + qoff, qstride, r0, rows_here, acc, p.scale);
}

// The query blocks (bm rows each) that see any of keys n0 .. n0 + bn - 1 of sequence si: qb_lo .. qb_lo + nqb - 1.
// A dK/dV CTA steps through them once per query head of its kv group, head-major: niter = nqb * G steps, step it =
// query head kvh * G + it / nqb, block qb_lo + it % nqb. Keys that no real query sees (padding) get niter 0.
struct KeyBlockBand {
  int qb_lo, nqb, niter;
};
__device__ __forceinline__ KeyBlockBand key_block_band(const Params& p, const SeqInfo& si, int n0, int bn, int bm) {
  const int i_lo = n0;
  const int i_hi = p.window > 0 ? min(si.used, n0 + bn - 1 + p.window) : si.used;
  const int qb_lo = i_lo / bm, qb_hi = i_hi > i_lo ? (i_hi + bm - 1) / bm : qb_lo;
  return {qb_lo, qb_hi - qb_lo, (qb_hi - qb_lo) * p.G};
}

// A warp's finished dK, dV fragments (key rows r0, r0 + 8 of the block whose first row is element koff of dk / dv,
// rows kstride elements apart; rows at or past keys_here are not stored) as f32 (f32out) or bf16: dk = scale * acc,
// dv = acc.
template <int D>
__device__ __forceinline__ void store_dkdv_frags(const Params& p, bool f32out, int64_t koff, int64_t kstride, int r0,
                                                 int keys_here, const float (&dk)[D / 8][4],
                                                 const float (&dv)[D / 8][4]) {
  if (f32out) {
    store_frag<D, float>(static_cast<float*>(p.dk) + koff, kstride, r0, keys_here, dk, p.scale);
    store_frag<D, float>(static_cast<float*>(p.dv) + koff, kstride, r0, keys_here, dv, 1.f);
  } else {
    store_frag<D, __nv_bfloat16>(static_cast<__nv_bfloat16*>(p.dk) + koff, kstride, r0, keys_here, dk, p.scale);
    store_frag<D, __nv_bfloat16>(static_cast<__nv_bfloat16*>(p.dv) + koff, kstride, r0, keys_here, dv, 1.f);
  }
}

// ---- dK, dV (mma.sync) ------------------------------------------------------------------------------------------
// One CTA = 64 keys (4 warps x 16) of one kv head; loops over the query heads of its GQA group and the query blocks
// that can see its keys, BM queries per step. Warps compute the transposed scores S^T = K Q^T, so P^T and dS^T stay
// in registers and feed dV += P^T dO and dK += dS^T Q directly. P is recomputed from the saved lse (sink included).
template <int D>
struct DkdvCfg {
  static constexpr int NW = 4, NT = 128, BN = NW * 16;
  static constexpr int BM = D == 64 ? 64 : 32;
  static constexpr bool KV_REG = D == 64;  // K/V fragments kept in registers
  static constexpr int SMEM = (2 * BN * D + 4 * BM * D) * 2 + 4 * BM * 4;
};

template <int D>
__global__ void __launch_bounds__(128) dkdv_kernel(Params p) {
  using C = DkdvCfg<D>;
  constexpr int BN = C::BN, BM = C::BM, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sV = sK + BN * D;
  __nv_bfloat16* sQ = sV + BN * D;     // [2][BM*D]
  __nv_bfloat16* sdO = sQ + 2 * BM * D;  // [2][BM*D]
  float* sL = reinterpret_cast<float*>(sdO + 2 * BM * D);  // [2][BM] lse (natural log)
  float* sDl = sL + 2 * BM;                                 // [2][BM]

  const int kb = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z;
  const SeqInfo si = seq_info(p.cu, p.used, s);
  const int n0 = kb * BN;
  if (n0 >= si.len) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D, kstride = static_cast<int64_t>(p.Hkv) * D;
  const int keys_here = min(BN, si.len - n0);
  const bool f32out = p.grad_f32;  // loaded up front: ptxas allocates the loop's registers differently otherwise

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0.f;

  const KeyBlockBand band = key_block_band(p, si, n0, BN, BM);
  const int wk0 = warp * 16;  // first key row of this warp within the block

  if (band.niter > 0) {
    load_tile<BN, D, NT>(sK, p.k + (si.start + n0) * kstride + kvh * D, kstride, si.used - n0);
    load_tile<BN, D, NT>(sV, p.v + (si.start + n0) * kstride + kvh * D, kstride, si.used - n0);
    auto load_q = [&](int it, int stage) {
      const int h = kvh * p.G + it / band.nqb, i0 = (band.qb_lo + it % band.nqb) * BM;
      const int nv = si.used - i0;
      load_tile<BM, D, NT>(sQ + stage * BM * D, p.q + (si.start + i0) * qstride + h * D, qstride, nv);
      load_tile<BM, D, NT>(sdO + stage * BM * D, p.dout + (si.start + i0) * qstride + h * D, qstride, nv);
      const float* gl = p.lse + static_cast<int64_t>(h) * p.T + si.start + i0;
      const float* gd = p.dlt + static_cast<int64_t>(h) * p.T + si.start + i0;
      // lse and D_i ride the same cp.async group (4-byte copies, zero-filled past nv): a plain load here would hold
      // the loading warps for a global-memory latency every step.
      for (int r = threadIdx.x; r < BM; r += NT) {
        const bool ok = r < nv;
        cp_async4(sL + stage * BM + r, ok ? gl + r : gl, ok);
        cp_async4(sDl + stage * BM + r, ok ? gd + r : gd, ok);
      }
    };
    load_q(0, 0);
    cp_async_commit();

    uint32_t kf[C::KV_REG ? D / 16 : 1][4], vf[C::KV_REG ? D / 16 : 1][4];
    const int kmin = n0 + wk0;  // this warp's keys: kmin .. kmin + 15

    for (int it = 0; it < band.niter; it++) {
      const int stage = it & 1;
      cp_async_wait<0>();
      __syncthreads();
      if (it + 1 < band.niter) load_q(it + 1, stage ^ 1);
      cp_async_commit();
      if constexpr (C::KV_REG) {
        if (it == 0) {
          load_a_frags<D>(sK, wk0, kf);
          load_a_frags<D>(sV, wk0, vf);
        }
      }
      const int i0 = (band.qb_lo + it % band.nqb) * BM;
      const __nv_bfloat16* cQ = sQ + stage * BM * D;
      const __nv_bfloat16* cdO = sdO + stage * BM * D;
      const float* cL = sL + stage * BM;
      const float* cDl = sDl + stage * BM;

      // S^T = K Q^T and dP^T = V dO^T: 16 keys x BM queries per warp.
      float st[BM / 8][4], dpt[BM / 8][4];
#pragma unroll
      for (int i = 0; i < BM / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) st[i][e] = dpt[i][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        uint32_t ka[4], va[4];
        if constexpr (C::KV_REG) {
#pragma unroll
          for (int e = 0; e < 4; e++) ka[e] = kf[kk][e], va[e] = vf[kk][e];
        } else {
          const int r = wk0 + (lane & 15), ch = kk * 2 + (lane >> 4);
          ldsm_x4(smem_u32(sK + swz<D>(r, ch)), ka[0], ka[1], ka[2], ka[3]);
          ldsm_x4(smem_u32(sV + swz<D>(r, ch)), va[0], va[1], va[2], va[3]);
        }
#pragma unroll
        for (int np = 0; np < BM / 16; np++) {
          uint32_t b[4];
          load_bT_frags<D>(cQ, np * 16, kk, b);
          mma16816(st[2 * np], ka, b[0], b[1]);
          mma16816(st[2 * np + 1], ka, b[2], b[3]);
          load_bT_frags<D>(cdO, np * 16, kk, b);
          mma16816(dpt[2 * np], va, b[0], b[1]);
          mma16816(dpt[2 * np + 1], va, b[2], b[3]);
        }
      }
      // P^T and dS^T (rows = keys, cols = queries).
      const bool need_mask = (i0 < kmin + 15) || (p.window > 0 && i0 + BM - 1 - kmin >= p.window) ||
                             (i0 + BM > si.used);
#pragma unroll
      for (int i = 0; i < BM / 8; i++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int cl = i * 8 + 2 * t4 + (e & 1);
          float pv = exp2f(st[i][e] * p.scale_log2 - __fmul_rn(cL[cl], kLog2e));
          if (need_mask) {
            const int krow = kmin + g + (e >> 1) * 8, col = i0 + cl;
            const bool ok = col >= krow && (p.window <= 0 || col - krow < p.window) && col < si.used;
            pv = ok ? pv : 0.f;
          }
          st[i][e] = pv;
          dpt[i][e] = pv * (dpt[i][e] - cDl[cl]);
        }
      }
      mma16816_chain2<D, BM>(dv, st, cdO, dk, dpt, cQ);  // dV += P^T dO, dK += dS^T Q
    }
    cp_async_wait<0>();
  }
  store_dkdv_frags<D>(p, f32out, (si.start + n0) * kstride + kvh * D, kstride, wk0 + g, keys_here, dk, dv);
}

// ---- dQ (mma.sync) ----------------------------------------------------------------------------------------------
// One CTA = 128 queries (8 warps x 16 rows) of one query head, streaming 64-key K/V tiles like the forward:
// S = Q K^T, dP = dO V^T, dS = P (dP - D), dQ += dS K.
template <int D>
struct DqCfg {
  static constexpr int NW = 8, NT = NW * 32, BM = NW * 16, BN = 64;
  static constexpr int SMEM = (2 * BM * D + 4 * BN * D) * 2;
};

template <int D>
__global__ void __launch_bounds__(DqCfg<D>::NT) dq_kernel(Params p) {
  using C = DqCfg<D>;
  constexpr int BM = C::BM, BN = C::BN, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sdO = sQ + BM * D;
  __nv_bfloat16* sK = sdO + BM * D;  // [2][BN*D]
  __nv_bfloat16* sV = sK + 2 * BN * D;

  const int mb = gridDim.x - 1 - blockIdx.x;  // longest (last) query blocks first
  const int h = blockIdx.y, s = blockIdx.z;
  const SeqInfo si = seq_info(p.cu, p.used, s);
  const int q0 = mb * BM;
  if (q0 >= si.len) return;
  const int kvh = h / p.G;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D, kstride = static_cast<int64_t>(p.Hkv) * D;
  const int rows_here = min(BM, si.len - q0);
  const int64_t qoff = (si.start + q0) * qstride + h * D;
  const int wr0 = warp * 16;   // first row of this warp within the block
  const int wrow0 = q0 + wr0;  // ... as a sequence position

  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

  if (q0 < si.used) {
    const __nv_bfloat16* gK = p.k + si.start * kstride + kvh * D;
    const __nv_bfloat16* gV = p.v + si.start * kstride + kvh * D;
    const KeyTiles band = key_tiles_seen(p, si, q0, BM, BN);
    const int kb_lo = band.lo, kb_hi = band.hi;
    const int nv = min(rows_here, si.used - q0);
    load_tile<BM, D, NT>(sQ, p.q + qoff, qstride, nv);
    load_tile<BM, D, NT>(sdO, p.dout + qoff, qstride, nv);
    auto load_kv = [&](int kb, int stage) {
      const int n0 = kb * BN;
      load_tile<BN, D, NT>(sK + stage * BN * D, gK + n0 * kstride, kstride, si.used - n0);
      load_tile<BN, D, NT>(sV + stage * BN * D, gV + n0 * kstride, kstride, si.used - n0);
    };
    load_kv(kb_lo, 0);
    cp_async_commit();

    float lse2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int row = wrow0 + g + r * 8;
      const bool ok = row < si.used;
      lse2[r] = ok ? p.lse[static_cast<int64_t>(h) * p.T + si.start + row] * kLog2e : 0.f;
      dl[r] = ok ? p.dlt[static_cast<int64_t>(h) * p.T + si.start + row] : 0.f;
    }
    uint32_t qf[D / 16][4], of[D / 16][4];

    for (int kb = kb_lo; kb < kb_hi; kb++) {
      const int stage = (kb - kb_lo) & 1;
      cp_async_wait<0>();
      __syncthreads();
      if (kb == kb_lo) {
        load_a_frags<D>(sQ, wr0, qf);
        load_a_frags<D>(sdO, wr0, of);
      }
      if (kb + 1 < kb_hi) load_kv(kb + 1, stage ^ 1);
      cp_async_commit();
      const __nv_bfloat16* cK = sK + stage * BN * D;
      const __nv_bfloat16* cV = sV + stage * BN * D;

      // S = Q K^T and dP = dO V^T: 16 rows x BN keys per warp.
      float sc[BN / 8][4], dp[BN / 8][4];
#pragma unroll
      for (int i = 0; i < BN / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) sc[i][e] = dp[i][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
        for (int np = 0; np < BN / 16; np++) {
          uint32_t b[4];
          load_bT_frags<D>(cK, np * 16, kk, b);
          mma16816(sc[2 * np], qf[kk], b[0], b[1]);
          mma16816(sc[2 * np + 1], qf[kk], b[2], b[3]);
          load_bT_frags<D>(cV, np * 16, kk, b);
          mma16816(dp[2 * np], of[kk], b[0], b[1]);
          mma16816(dp[2 * np + 1], of[kk], b[2], b[3]);
        }
      }
      const int n0 = kb * BN;
      const bool need_mask = (n0 + BN - 1 > wrow0) || (p.window > 0 && n0 < wrow0 + 16 - p.window);
#pragma unroll
      for (int i = 0; i < BN / 8; i++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int r = e >> 1;
          float pv = exp2f(sc[i][e] * p.scale_log2 - lse2[r]);
          if (need_mask) {
            const int row = wrow0 + g + r * 8, col = n0 + i * 8 + 2 * t4 + (e & 1);
            const bool ok = col <= row && (p.window <= 0 || col > row - p.window);
            pv = ok ? pv : 0.f;
          }
          sc[i][e] = pv * (dp[i][e] - dl[r]);
        }
      }
      mma16816_chain<D, BN>(acc, sc, cK);  // dQ += dS K
    }
    cp_async_wait<0>();
  }
  store_dq_frags<D>(p, qoff, qstride, wr0, g, max(0, min(rows_here, si.used - q0)), rows_here, acc);
}

// ---- head_dim 64 on Hopper: wgmma (deterministic) ---------------------------------------------------------------
// dK/dV: two warpgroups per CTA, each owning 64 keys (BN 128), 64 queries per step: S^T = K Q^T and dP^T = V dO^T
// (wgmma m64n64k16, A = the warpgroup's K / V rows in registers, B = the Q / dO tile, K-major), then dV += P^T dO and
// dK += dS^T Q (A = P^T / dS^T in registers, B = the dO / Q tile, MN-major). dQ: two warpgroups each owning 64 query
// rows (BM 128), 64 keys per step: S = Q K^T, dP = dO V^T (B K-major), dQ += dS K (B = the K tile, MN-major). Masks,
// padding and a fixed summation order as the mma.sync kernels: bitwise reproducible (not bitwise equal to them: the
// order differs). Both kernels put the heaviest CTAs first (below) and are launched concurrently.
__device__ __forceinline__ unsigned char* align1024(unsigned char* p) {
  const uint32_t a = smem_u32(p);
  return p + (((a + 1023u) & ~1023u) - a);
}

// dS^T = P^T (dP^T - D_i) in place in dpt; dl = this step's D_i by query column (lane column 2 t4 (+1) of 8 i).
template <int NB>
__device__ __forceinline__ void ds_from_p(float (&dpt)[NB][4], const float (&pt)[NB][4], const float* dl, int t4) {
#pragma unroll
  for (int i = 0; i < NB; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) dpt[i][e] = pt[i][e] * (dpt[i][e] - dl[i * 8 + 2 * t4 + (e & 1)]);
}

struct DkdvWgCfg {
  static constexpr int D = 64, NWG = 2, NT = NWG * 128, BN = NWG * 64, BM = 64;
  static constexpr int SMEM = (2 * BN * D + 4 * BM * D) * 2 + 4 * BM * 4 + 1024;  // + 1024-byte alignment slack
};

// Grid (nkb * Hkv, 1, nseq) with the kv head fastest: key block 0 (the heaviest under a causal mask) of every head
// first. Per step S^T and dP^T are two wgmma groups: P^T is computed while dP^T still runs, and dV += P^T dO is issued
// before dS^T is computed, so the tensor cores work during the softmax.
__global__ void __launch_bounds__(DkdvWgCfg::NT, 1) dkdv_wgmma_kernel(Params p) {
  using C = DkdvWgCfg;
  constexpr int D = 64, BN = C::BN, BM = C::BM, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(align1024(smem_raw));  // [BN][D]
  __nv_bfloat16* sV = sK + BN * D;                                            // [BN][D]
  __nv_bfloat16* sQ = sV + BN * D;       // [2][BM*D]
  __nv_bfloat16* sdO = sQ + 2 * BM * D;  // [2][BM*D]
  float* sL = reinterpret_cast<float*>(sdO + 2 * BM * D);  // [2][BM] lse (natural log)
  float* sDl = sL + 2 * BM;                                 // [2][BM]

  const int kb = static_cast<int>(blockIdx.x) / p.Hkv, kvh = static_cast<int>(blockIdx.x) % p.Hkv, s = blockIdx.z;
  const SeqInfo si = seq_info(p.cu, p.used, s);
  const int n0 = kb * BN;
  if (n0 >= si.len) return;
  const int wg = threadIdx.x >> 7, wl = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2,
            t4 = lane & 3;
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D, kstride = static_cast<int64_t>(p.Hkv) * D;
  const int keys_here = min(BN, si.len - n0);

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0.f;

  const KeyBlockBand band = key_block_band(p, si, n0, BN, BM);
  const int wk0 = n0 + wg * 64;    // first key of this warpgroup
  const int kmin = wk0 + wl * 16;  // this warp's keys: kmin .. kmin + 15

  if (band.niter > 0) {
    load_tile<BN, D, NT>(sK, p.k + (si.start + n0) * kstride + kvh * D, kstride, si.used - n0);
    load_tile<BN, D, NT>(sV, p.v + (si.start + n0) * kstride + kvh * D, kstride, si.used - n0);
    auto load_q = [&](int it, int stage) {
      const int h = kvh * p.G + it / band.nqb, i0 = (band.qb_lo + it % band.nqb) * BM;
      const int nv = si.used - i0;
      load_tile<BM, D, NT>(sQ + stage * BM * D, p.q + (si.start + i0) * qstride + h * D, qstride, nv);
      load_tile<BM, D, NT>(sdO + stage * BM * D, p.dout + (si.start + i0) * qstride + h * D, qstride, nv);
      const float* gl = p.lse + static_cast<int64_t>(h) * p.T + si.start + i0;
      const float* gd = p.dlt + static_cast<int64_t>(h) * p.T + si.start + i0;
      // lse and D_i ride the same cp.async group (4-byte copies, zero-filled past nv): a plain load here would hold
      // the loading warps, and with them their warpgroup's next wgmma, for a global-memory latency every step.
      for (int r = threadIdx.x; r < BM; r += NT) {
        const bool ok = r < nv;
        cp_async4(sL + stage * BM + r, ok ? gl + r : gl, ok);
        cp_async4(sDl + stage * BM + r, ok ? gd + r : gd, ok);
      }
    };
    load_q(0, 0);
    cp_async_commit();

    // The K/V (dQ kernel: Q/dO) A fragments are re-read from shared memory (ldmatrix, 8 x4 per warp per step) right
    // before each use. Loaded once and kept in registers across steps that only wgmma reads, they gave wrong results
    // from a warpgroup's second live step on (every step's products exact when dumped; a plain read of those
    // registers in the loop made it right): ptxas does not keep loop-carried, wgmma-only A registers intact.
    const uint32_t sQ_a = smem_u32(sQ), sdO_a = smem_u32(sdO);

    for (int it = 0; it < band.niter; it++) {
      const int stage = it & 1;
      cp_async_wait<0>();
      fence_proxy_async();
      __syncthreads();
      if (it + 1 < band.niter) load_q(it + 1, stage ^ 1);
      cp_async_commit();
      const int i0 = (band.qb_lo + it % band.nqb) * BM;
      // No (query, key) pair of this query block and this warpgroup's keys counts: skip the step.
      auto skip_of = [&](int w) {
        const int k0 = n0 + w * 64;
        return k0 >= si.used || i0 + BM - 1 < k0 || (p.window > 0 && i0 - (k0 + 63) >= p.window);
      };
      if (skip_of(wg)) continue;
      const float* cL = sL + stage * BM;
      const float* cDl = sDl + stage * BM;
      const uint64_t dQk = wg_desc(sQ_a + stage * BM * D * 2), dOk = wg_desc(sdO_a + stage * BM * D * 2);

      float st[BM / 8][4], dpt[BM / 8][4];  // S^T then P^T; dP^T then dS^T: 64 keys x 64 queries per warpgroup
#pragma unroll
      for (int i = 0; i < BM / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) st[i][e] = dpt[i][e] = 0.f;
      fence_acc<BM / 8>(st);
      fence_acc<BM / 8>(dpt);
      const bool need_mask =
          (i0 < kmin + 15) || (p.window > 0 && i0 + BM - 1 - kmin >= p.window) || (i0 + BM > si.used);
      // P^T (in st) for this thread's 8 x 4 accumulator entries: keys kmin + g (+8), queries i0 + cl. The band
      // test and exponent are dkdv_kernel's; a shared device function for them changed both kernels' machine code
      // (and the forward's and dQ's for their band test), so each kernel keeps its copy.
      auto softmax_p = [&] {
#pragma unroll
        for (int i = 0; i < BM / 8; i++)
#pragma unroll
          for (int e = 0; e < 4; e++) {
            const int cl = i * 8 + 2 * t4 + (e & 1);
            float pv = exp2f(st[i][e] * p.scale_log2 - __fmul_rn(cL[cl], kLog2e));
            if (need_mask) {
              const int krow = kmin + g + (e >> 1) * 8, col = i0 + cl;
              const bool ok = col >= krow && (p.window <= 0 || col - krow < p.window) && col < si.used;
              pv = ok ? pv : 0.f;
            }
            st[i][e] = pv;
          }
      };
      uint32_t pa[BM / 16][4], da[BM / 16][4];
      uint32_t kf[D / 16][4], vf[D / 16][4];  // reloaded every step: see above
      load_a_frags<D>(sK, wg * 64 + wl * 16, kf);
      load_a_frags<D>(sV, wg * 64 + wl * 16, vf);
      wgmma_fence();
      // group 1: S^T = K Q^T; group 2: dP^T = V dO^T.
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) wgmma_rs<BM, 0>(st, kf[kk], dQk + 2 * kk);
      wgmma_commit();
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) wgmma_rs<BM, 0>(dpt, vf[kk], dOk + 2 * kk);
      wgmma_commit();
      wgmma_wait<1>();  // S^T ready, dP^T may still run
      fence_acc<BM / 8>(st);
      softmax_p();
      pack_a_frags(st, pa);
      wgmma_rs_mn_chain(dv, pa, dOk);  // dV += P^T dO
      wgmma_wait<1>();  // dP^T ready, the dV group may still run
      fence_acc<BM / 8>(dpt);
      ds_from_p(dpt, st, cDl, t4);
      pack_a_frags(dpt, da);
      wgmma_rs_mn_chain(dk, da, dQk);  // dK += dS^T Q
      wgmma_wait<0>();  // nothing may read this stage's tiles after the next barrier
      fence_acc<D / 8>(dv);
      fence_acc<D / 8>(dk);
    }
    cp_async_wait<0>();
  }
  store_dkdv_frags<D>(p, p.grad_f32, (si.start + n0) * kstride + kvh * D, kstride, wg * 64 + wl * 16 + g, keys_here,
                      dk, dv);
}

struct DqWgCfg {
  static constexpr int D = 64, NWG = 2, NT = NWG * 128, BM = NWG * 64, BN = 64;
  static constexpr int SMEM = (2 * BM * D + 4 * BN * D) * 2 + 1024;  // + 1024-byte alignment slack
};

// Grid (nmb * Hq, 1, nseq) with the head fastest, latest (heaviest causal) query blocks first; S and dP are two wgmma
// groups, so P is computed while dP still runs.
__global__ void __launch_bounds__(DqWgCfg::NT, 1) dq_wgmma_kernel(Params p) {
  using C = DqWgCfg;
  constexpr int D = 64, BM = C::BM, BN = C::BN, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(align1024(smem_raw));  // [BM][D]
  __nv_bfloat16* sdO = sQ + BM * D;                                           // [BM][D]
  __nv_bfloat16* sK = sdO + BM * D;  // [2][BN*D]
  __nv_bfloat16* sV = sK + 2 * BN * D;

  const int mb = static_cast<int>(gridDim.x) / p.Hq - 1 - static_cast<int>(blockIdx.x) / p.Hq;
  const int h = static_cast<int>(blockIdx.x) % p.Hq, s = blockIdx.z;
  const SeqInfo si = seq_info(p.cu, p.used, s);
  const int q0 = mb * BM;
  if (q0 >= si.len) return;
  const int kvh = h / p.G;
  const int wg = threadIdx.x >> 7, wl = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2,
            t4 = lane & 3;
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D, kstride = static_cast<int64_t>(p.Hkv) * D;
  const int rows_here = min(BM, si.len - q0);
  const int64_t qoff = (si.start + q0) * qstride + h * D;
  const int wr0 = wg * 64 + wl * 16;  // first row of this warp within the block
  const int wq0 = q0 + wg * 64;       // first row of this warpgroup as a sequence position
  const int wrow0 = q0 + wr0;

  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

  if (q0 < si.used) {
    const __nv_bfloat16* gK = p.k + si.start * kstride + kvh * D;
    const __nv_bfloat16* gV = p.v + si.start * kstride + kvh * D;
    const KeyTiles band = key_tiles_seen(p, si, q0, BM, BN);
    const int kb_lo = band.lo, kb_hi = band.hi;
    const int nv = min(rows_here, si.used - q0);
    load_tile<BM, D, NT>(sQ, p.q + qoff, qstride, nv);
    load_tile<BM, D, NT>(sdO, p.dout + qoff, qstride, nv);
    auto load_kv = [&](int kb, int stage) {
      const int n0 = kb * BN;
      load_tile<BN, D, NT>(sK + stage * BN * D, gK + n0 * kstride, kstride, si.used - n0);
      load_tile<BN, D, NT>(sV + stage * BN * D, gV + n0 * kstride, kstride, si.used - n0);
    };
    load_kv(kb_lo, 0);
    cp_async_commit();

    float lse2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int row = wrow0 + g + r * 8;
      const bool ok = row < si.used;
      lse2[r] = ok ? p.lse[static_cast<int64_t>(h) * p.T + si.start + row] * kLog2e : 0.f;
      dl[r] = ok ? p.dlt[static_cast<int64_t>(h) * p.T + si.start + row] : 0.f;
    }
    const bool wg_live = wq0 < si.used;
    const uint32_t sK_a = smem_u32(sK), sV_a = smem_u32(sV);

    for (int kb = kb_lo; kb < kb_hi; kb++) {
      const int stage = (kb - kb_lo) & 1;
      cp_async_wait<0>();
      fence_proxy_async();
      __syncthreads();
      if (kb + 1 < kb_hi) load_kv(kb + 1, stage ^ 1);
      cp_async_commit();
      const int n0 = kb * BN;
      const bool skip = !wg_live || n0 > wq0 + 63 || (p.window > 0 && n0 + BN - 1 < wq0 - p.window + 1);
      if (skip) continue;
      const uint64_t dKd = wg_desc(sK_a + stage * BN * D * 2), dVd = wg_desc(sV_a + stage * BN * D * 2);

      float sc[BN / 8][4], dp[BN / 8][4];  // S then P then dS; dP: 64 rows x 64 keys per warpgroup
#pragma unroll
      for (int i = 0; i < BN / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) sc[i][e] = dp[i][e] = 0.f;
      fence_acc<BN / 8>(sc);
      fence_acc<BN / 8>(dp);
      const bool need_mask = (n0 + BN - 1 > wrow0) || (p.window > 0 && n0 < wrow0 + 16 - p.window);
      uint32_t qf[D / 16][4], of[D / 16][4];  // reloaded every step: see dkdv_wgmma_kernel
      load_a_frags<D>(sQ, wr0, qf);
      load_a_frags<D>(sdO, wr0, of);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) wgmma_rs<BN, 0>(sc, qf[kk], dKd + 2 * kk);  // S = Q K^T
      wgmma_commit();
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) wgmma_rs<BN, 0>(dp, of[kk], dVd + 2 * kk);  // dP = dO V^T
      wgmma_commit();
      wgmma_wait<1>();  // S ready, dP may still run
      fence_acc<BN / 8>(sc);
#pragma unroll
      for (int i = 0; i < BN / 8; i++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int r = e >> 1;
          float pv = exp2f(sc[i][e] * p.scale_log2 - lse2[r]);
          if (need_mask) {
            const int row = wrow0 + g + r * 8, col = n0 + i * 8 + 2 * t4 + (e & 1);
            const bool ok = col <= row && (p.window <= 0 || col > row - p.window);
            pv = ok ? pv : 0.f;
          }
          sc[i][e] = pv;
        }
      }
      wgmma_wait<0>();
      fence_acc<BN / 8>(dp);
#pragma unroll
      for (int i = 0; i < BN / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) sc[i][e] *= dp[i][e] - dl[e >> 1];  // dS = P (dP - D)
      uint32_t a[BN / 16][4];
      pack_a_frags(sc, a);
      wgmma_rs_mn_chain(acc, a, dKd);  // dQ += dS K
      wgmma_wait<0>();
      fence_acc<D / 8>(acc);
    }
    cp_async_wait<0>();
  }
  store_dq_frags<D>(p, qoff, qstride, wr0, g, max(0, min(rows_here, si.used - q0)), rows_here, acc);
}

// Fused-dQ backward (attention_bwd_ws.cuh): dq[t][h][:] = scale * acc[h][t][:] (acc [Hq, T, 64] f32,
// dq [T, Hq, 64]); 4 elements per thread.
template <typename T>
__global__ void dq_convert_ht_kernel(const float* acc, T* dq, int Tn, int Hq, float scale) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;  // index into dq
  if (i >= static_cast<int64_t>(Tn) * Hq * 64) return;
  const int d = static_cast<int>(i & 63);
  const int64_t th = i >> 6;
  const int h = static_cast<int>(th % Hq);
  const int64_t t = th / Hq;
  const float4 v = *reinterpret_cast<const float4*>(acc + ((static_cast<int64_t>(h) * Tn + t) << 6) + d);
  store2<T>(dq + i, v.x * scale, v.y * scale);
  store2<T>(dq + i + 2, v.z * scale, v.w * scale);
}

}  // namespace attn
}  // namespace gptoss::cuda
