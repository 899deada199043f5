// attention_bwd_kernels.cuh: the device code of the attention backward (kernels and their configs), split from
// attention_bwd.cu so that standalone nvcc harnesses (kernel-vs-kernel checks, timings) can include it without the
// project's runtime. attention_bwd.cu holds the launchers and the dispatch.
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

// ---- dK, dV --------------------------------------------------------------------------------------------------
// MT = 16-key MMA tiles per warp (2 halves the shared-memory fragment traffic per MMA); BM = queries per step.
// ATOMIC (head_dim 64, MT 1 only): the CTA also computes dQ += dS K for its keys from dS^T staged in shared
// memory and adds it to an fp32 buffer with atomics, so no separate dq pass recomputes S and dP (5 GEMMs
// instead of 7, but the summation order of dq varies from run to run).
template <int D, int MT, bool ATOMIC = false>
struct DkdvCfg {
  static constexpr int NW = 4, NT = 128, BN = NW * 16 * MT;
  static constexpr int BM = (D == 64 && MT == 1) ? 64 : 32;
  static constexpr bool KV_REG = D == 64 && MT == 1 && !ATOMIC;  // K/V fragments kept in registers
  static constexpr int SMEM = (2 * BN * D + 4 * BM * D) * 2 + 4 * BM * 4 + (ATOMIC ? BN * BM * 2 : 0);
};

template <int D, int MT, bool ATOMIC>
__global__ void __launch_bounds__(128) dkdv_kernel(Params p) {
  using C = DkdvCfg<D, MT, ATOMIC>;
  static_assert(!ATOMIC || (D == 64 && MT == 1 && C::BM == 64 && C::BN == 64), "atomic dq: head_dim 64, MT 1");
  constexpr int BN = C::BN, BM = C::BM, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sV = sK + BN * D;
  __nv_bfloat16* sQ = sV + BN * D;     // [2][BM*D]
  __nv_bfloat16* sdO = sQ + 2 * BM * D;  // [2][BM*D]
  float* sL = reinterpret_cast<float*>(sdO + 2 * BM * D);  // [2][BM] lse (natural log)
  float* sDl = sL + 2 * BM;                                 // [2][BM]
  __nv_bfloat16* sdS = reinterpret_cast<__nv_bfloat16*>(sDl + 2 * BM);  // [BN][BM] dS^T (ATOMIC only)

  const int kb = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z;
  const SeqInfo si = seq_info(p.cu, p.used, s);
  const int n0 = kb * BN;
  if (n0 >= si.len) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D, kstride = static_cast<int64_t>(p.Hkv) * D;
  const int keys_here = min(BN, si.len - n0);
  const bool f32out = p.grad_f32;

  float dk[MT][D / 8][4], dv[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int i = 0; i < D / 8; i++)
#pragma unroll
      for (int e = 0; e < 4; e++) dk[mt][i][e] = dv[mt][i][e] = 0.f;

  const int i_lo = n0;
  const int i_hi = p.window > 0 ? min(si.used, n0 + BN - 1 + p.window) : si.used;
  const int qb_lo = i_lo / BM, qb_hi = i_hi > i_lo ? (i_hi + BM - 1) / BM : qb_lo;
  const int nqb = qb_hi - qb_lo, niter = nqb * p.G;
  const int wk0 = warp * 16 * MT;  // first key row of this warp within the block

  if (niter > 0) {
    load_tile<BN, D, NT>(sK, p.k + (si.start + n0) * kstride + kvh * D, kstride, si.used - n0);
    load_tile<BN, D, NT>(sV, p.v + (si.start + n0) * kstride + kvh * D, kstride, si.used - n0);
    auto load_q = [&](int it, int stage) {
      const int h = kvh * p.G + it / nqb, i0 = (qb_lo + it % nqb) * BM;
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

    uint32_t kf[C::KV_REG ? D / 16 : 1][4], vf[C::KV_REG ? D / 16 : 1][4];
    const int kmin = n0 + wk0;  // this warp's keys: kmin .. kmin + 16 MT - 1

    for (int it = 0; it < niter; it++) {
      const int stage = it & 1;
      cp_async_wait<0>();
      __syncthreads();
      if (it + 1 < niter) load_q(it + 1, stage ^ 1);
      cp_async_commit();
      if constexpr (C::KV_REG) {
        if (it == 0) {
          load_a_frags<D>(sK, wk0, kf);
          load_a_frags<D>(sV, wk0, vf);
        }
      }
      const int i0 = (qb_lo + it % nqb) * BM;
      const __nv_bfloat16* cQ = sQ + stage * BM * D;
      const __nv_bfloat16* cdO = sdO + stage * BM * D;
      const float* cL = sL + stage * BM;
      const float* cDl = sDl + stage * BM;

      float st[MT][BM / 8][4], dpt[MT][BM / 8][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int i = 0; i < BM / 8; i++)
#pragma unroll
          for (int e = 0; e < 4; e++) st[mt][i][e] = dpt[mt][i][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        uint32_t ka[MT][4], va[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          if constexpr (C::KV_REG) {
#pragma unroll
            for (int e = 0; e < 4; e++) ka[mt][e] = kf[kk][e], va[mt][e] = vf[kk][e];
          } else {
            const int r = wk0 + mt * 16 + (lane & 15), ch = kk * 2 + (lane >> 4);
            ldsm_x4(smem_u32(sK + swz<D>(r, ch)), ka[mt][0], ka[mt][1], ka[mt][2], ka[mt][3]);
            ldsm_x4(smem_u32(sV + swz<D>(r, ch)), va[mt][0], va[mt][1], va[mt][2], va[mt][3]);
          }
        }
#pragma unroll
        for (int np = 0; np < BM / 16; np++) {
          uint32_t b[4];
          load_bT_frags<D>(cQ, np * 16, kk, b);
#pragma unroll
          for (int mt = 0; mt < MT; mt++) {
            mma16816(st[mt][2 * np], ka[mt], b[0], b[1]);
            mma16816(st[mt][2 * np + 1], ka[mt], b[2], b[3]);
          }
          load_bT_frags<D>(cdO, np * 16, kk, b);
#pragma unroll
          for (int mt = 0; mt < MT; mt++) {
            mma16816(dpt[mt][2 * np], va[mt], b[0], b[1]);
            mma16816(dpt[mt][2 * np + 1], va[mt], b[2], b[3]);
          }
        }
      }
      // P^T and dS^T (rows = keys, cols = queries).
      const bool need_mask = (i0 < kmin + 16 * MT - 1) || (p.window > 0 && i0 + BM - 1 - kmin >= p.window) ||
                             (i0 + BM > si.used);
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int i = 0; i < BM / 8; i++) {
#pragma unroll
          for (int e = 0; e < 4; e++) {
            const int cl = i * 8 + 2 * t4 + (e & 1);
            float pv = exp2f(st[mt][i][e] * p.scale_log2 - __fmul_rn(cL[cl], kLog2e));
            if (need_mask) {
              const int krow = kmin + mt * 16 + g + (e >> 1) * 8, col = i0 + cl;
              const bool ok = col >= krow && (p.window <= 0 || col - krow < p.window) && col < si.used;
              pv = ok ? pv : 0.f;
            }
            st[mt][i][e] = pv;
            dpt[mt][i][e] = pv * (dpt[mt][i][e] - cDl[cl]);
          }
        }
      }
#pragma unroll
      for (int kk = 0; kk < BM / 16; kk++) {
        uint32_t pa[MT][4], da[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          pa[mt][0] = pack_bf16(st[mt][2 * kk][0], st[mt][2 * kk][1]);
          pa[mt][1] = pack_bf16(st[mt][2 * kk][2], st[mt][2 * kk][3]);
          pa[mt][2] = pack_bf16(st[mt][2 * kk + 1][0], st[mt][2 * kk + 1][1]);
          pa[mt][3] = pack_bf16(st[mt][2 * kk + 1][2], st[mt][2 * kk + 1][3]);
          da[mt][0] = pack_bf16(dpt[mt][2 * kk][0], dpt[mt][2 * kk][1]);
          da[mt][1] = pack_bf16(dpt[mt][2 * kk][2], dpt[mt][2 * kk][3]);
          da[mt][2] = pack_bf16(dpt[mt][2 * kk + 1][0], dpt[mt][2 * kk + 1][1]);
          da[mt][3] = pack_bf16(dpt[mt][2 * kk + 1][2], dpt[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int np = 0; np < D / 16; np++) {
          uint32_t b[4];
          load_b_frags<D>(cdO, kk * 16, np, b);
#pragma unroll
          for (int mt = 0; mt < MT; mt++) {
            mma16816(dv[mt][2 * np], pa[mt], b[0], b[1]);
            mma16816(dv[mt][2 * np + 1], pa[mt], b[2], b[3]);
          }
          load_b_frags<D>(cQ, kk * 16, np, b);
#pragma unroll
          for (int mt = 0; mt < MT; mt++) {
            mma16816(dk[mt][2 * np], da[mt], b[0], b[1]);
            mma16816(dk[mt][2 * np + 1], da[mt], b[2], b[3]);
          }
        }
      }
      if constexpr (ATOMIC) {
        // Stage dS^T (bf16, rows = keys, cols = queries), then warp w computes dQ rows 16w..16w+15 of this
        // query block over the block's 64 keys and adds them to the fp32 buffer.
#pragma unroll
        for (int i = 0; i < BM / 8; i++)
#pragma unroll
          for (int r = 0; r < 2; r++) {
            const int kr = wk0 + g + r * 8, col = i * 8 + 2 * t4;
            *reinterpret_cast<uint32_t*>(sdS + swz<BM>(kr, col >> 3) + (col & 7)) =
                pack_bf16(dpt[0][i][2 * r], dpt[0][i][2 * r + 1]);
          }
        __syncthreads();
        float dqa[D / 8][4];
#pragma unroll
        for (int i = 0; i < D / 8; i++) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
          uint32_t a[4];
          const int m = lane >> 3;
          const int r = kk * 16 + (lane & 7) + ((m >> 1) << 3), ch = warp * 2 + (m & 1);
          ldsm_x4_t(smem_u32(sdS + swz<BM>(r, ch)), a[0], a[1], a[2], a[3]);
#pragma unroll
          for (int np = 0; np < D / 16; np++) {
            uint32_t b[4];
            load_b_frags<D>(sK, kk * 16, np, b);
            mma16816(dqa[2 * np], a, b[0], b[1]);
            mma16816(dqa[2 * np + 1], a, b[2], b[3]);
          }
        }
        const int h = kvh * p.G + it / nqb;
#pragma unroll
        for (int r = 0; r < 2; r++) {
          const int row = i0 + warp * 16 + g + r * 8;
          if (row >= si.used) continue;
          float* dst = p.dq_acc + (si.start + row) * qstride + h * D + 2 * t4;
#pragma unroll
          for (int i = 0; i < D / 8; i++) {
            atomicAdd(dst + i * 8, dqa[i][2 * r]);
            atomicAdd(dst + i * 8 + 1, dqa[i][2 * r + 1]);
          }
        }
      }
    }
    cp_async_wait<0>();
  }
  const int64_t koff = (si.start + n0) * kstride + kvh * D;
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    const int r0 = wk0 + mt * 16 + g;
    if (f32out) {
      store_frag<D, float>(static_cast<float*>(p.dk) + koff, kstride, r0, keys_here, dk[mt], p.scale);
      store_frag<D, float>(static_cast<float*>(p.dv) + koff, kstride, r0, keys_here, dv[mt], 1.f);
    } else {
      store_frag<D, __nv_bfloat16>(static_cast<__nv_bfloat16*>(p.dk) + koff, kstride, r0, keys_here, dk[mt], p.scale);
      store_frag<D, __nv_bfloat16>(static_cast<__nv_bfloat16*>(p.dv) + koff, kstride, r0, keys_here, dv[mt], 1.f);
    }
  }
}

// ---- dQ --------------------------------------------------------------------------------------------------------
template <int D, int MT>
struct DqCfg {
  static constexpr int NW = MT == 1 ? 8 : 4, NT = NW * 32, BM = NW * 16 * MT, BN = MT == 1 ? 64 : 32;
  static constexpr int SMEM = (2 * BM * D + 4 * BN * D) * 2;
};

// V2 (GPTOSS_ATTN_BWD=v2): grid (nmb * Hq, 1, nseq) with the head fastest, so the heaviest (latest, causal)
// query blocks of every head start first; warps skip key blocks none of their 16 rows can see.
template <int D, int MT, bool V2 = false>
__global__ void __launch_bounds__(DqCfg<D, MT>::NT) dq_kernel(Params p) {
  using C = DqCfg<D, MT>;
  constexpr int BM = C::BM, BN = C::BN, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sdO = sQ + BM * D;
  __nv_bfloat16* sK = sdO + BM * D;  // [2][BN*D]
  __nv_bfloat16* sV = sK + 2 * BN * D;

  const int mb = V2 ? static_cast<int>(gridDim.x) / p.Hq - 1 - static_cast<int>(blockIdx.x) / p.Hq
                    : gridDim.x - 1 - blockIdx.x;
  const int h = V2 ? static_cast<int>(blockIdx.x) % p.Hq : blockIdx.y, s = blockIdx.z;
  const SeqInfo si = seq_info(p.cu, p.used, s);
  const int q0 = mb * BM;
  if (q0 >= si.len) return;
  const int kvh = h / p.G;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D, kstride = static_cast<int64_t>(p.Hkv) * D;
  const int rows_here = min(BM, si.len - q0);
  const int64_t qoff = (si.start + q0) * qstride + h * D;
  const int wr0 = warp * 16 * MT;     // first row of this warp within the block
  const int wrow0 = q0 + wr0;         // ... as a sequence position

  float acc[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int i = 0; i < D / 8; i++) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.f;

  if (q0 < si.used) {
    const __nv_bfloat16* gK = p.k + si.start * kstride + kvh * D;
    const __nv_bfloat16* gV = p.v + si.start * kstride + kvh * D;
    const int n_lo = p.window > 0 ? max(0, q0 - p.window + 1) : 0;
    const int n_hi = min(q0 + BM, si.used);
    const int kb_lo = n_lo / BN, kb_hi = (n_hi + BN - 1) / BN;
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

    float lse2[MT][2], dl[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int r = 0; r < 2; r++) {
        const int row = wrow0 + mt * 16 + g + r * 8;
        const bool ok = row < si.used;
        lse2[mt][r] = ok ? p.lse[static_cast<int64_t>(h) * p.T + si.start + row] * kLog2e : 0.f;
        dl[mt][r] = ok ? p.dlt[static_cast<int64_t>(h) * p.T + si.start + row] : 0.f;
      }
    uint32_t qf[MT][D / 16][4], of[MT][D / 16][4];

    for (int kb = kb_lo; kb < kb_hi; kb++) {
      const int stage = (kb - kb_lo) & 1;
      cp_async_wait<0>();
      __syncthreads();
      if (kb == kb_lo) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          load_a_frags<D>(sQ, wr0 + mt * 16, qf[mt]);
          load_a_frags<D>(sdO, wr0 + mt * 16, of[mt]);
        }
      }
      if (kb + 1 < kb_hi) load_kv(kb + 1, stage ^ 1);
      cp_async_commit();
      const __nv_bfloat16* cK = sK + stage * BN * D;
      const __nv_bfloat16* cV = sV + stage * BN * D;
      if constexpr (V2) {
        // Fully masked for this warp's rows (or its rows are padding): contributes exact zeros, so skip.
        const int n0 = kb * BN, wlast = wrow0 + 16 * MT - 1;
        if (wrow0 >= si.used || n0 > wlast || (p.window > 0 && n0 + BN - 1 <= wrow0 - p.window)) continue;
      }

      float sc[MT][BN / 8][4], dp[MT][BN / 8][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int i = 0; i < BN / 8; i++)
#pragma unroll
          for (int e = 0; e < 4; e++) sc[mt][i][e] = dp[mt][i][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
        for (int np = 0; np < BN / 16; np++) {
          uint32_t b[4];
          load_bT_frags<D>(cK, np * 16, kk, b);
#pragma unroll
          for (int mt = 0; mt < MT; mt++) {
            mma16816(sc[mt][2 * np], qf[mt][kk], b[0], b[1]);
            mma16816(sc[mt][2 * np + 1], qf[mt][kk], b[2], b[3]);
          }
          load_bT_frags<D>(cV, np * 16, kk, b);
#pragma unroll
          for (int mt = 0; mt < MT; mt++) {
            mma16816(dp[mt][2 * np], of[mt][kk], b[0], b[1]);
            mma16816(dp[mt][2 * np + 1], of[mt][kk], b[2], b[3]);
          }
        }
      }
      const int n0 = kb * BN;
      const bool need_mask = (n0 + BN - 1 > wrow0) || (p.window > 0 && n0 < wrow0 + 16 * MT - p.window);
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int i = 0; i < BN / 8; i++) {
#pragma unroll
          for (int e = 0; e < 4; e++) {
            const int r = e >> 1;
            float pv = exp2f(sc[mt][i][e] * p.scale_log2 - lse2[mt][r]);
            if (need_mask) {
              const int row = wrow0 + mt * 16 + g + r * 8, col = n0 + i * 8 + 2 * t4 + (e & 1);
              const bool ok = col <= row && (p.window <= 0 || col > row - p.window);
              pv = ok ? pv : 0.f;
            }
            sc[mt][i][e] = pv * (dp[mt][i][e] - dl[mt][r]);
          }
        }
      }
#pragma unroll
      for (int kk = 0; kk < BN / 16; kk++) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          a[mt][0] = pack_bf16(sc[mt][2 * kk][0], sc[mt][2 * kk][1]);
          a[mt][1] = pack_bf16(sc[mt][2 * kk][2], sc[mt][2 * kk][3]);
          a[mt][2] = pack_bf16(sc[mt][2 * kk + 1][0], sc[mt][2 * kk + 1][1]);
          a[mt][3] = pack_bf16(sc[mt][2 * kk + 1][2], sc[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int np = 0; np < D / 16; np++) {
          uint32_t b[4];
          load_b_frags<D>(cK, kk * 16, np, b);
#pragma unroll
          for (int mt = 0; mt < MT; mt++) {
            mma16816(acc[mt][2 * np], a[mt], b[0], b[1]);
            mma16816(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
          }
        }
      }
    }
    cp_async_wait<0>();
  }
  // Rows past the real length get zeros.
  const int nreal = max(0, min(rows_here, si.used - q0));
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int lr = wr0 + mt * 16 + g + r * 8;
      if (lr >= nreal)
#pragma unroll
        for (int i = 0; i < D / 8; i++) acc[mt][i][2 * r] = acc[mt][i][2 * r + 1] = 0.f;
    }
    const int r0 = wr0 + mt * 16 + g;
    if (p.grad_f32)
      store_frag<D, float>(static_cast<float*>(p.dq) + qoff, qstride, r0, rows_here, acc[mt], p.scale);
    else
      store_frag<D, __nv_bfloat16>(static_cast<__nv_bfloat16*>(p.dq) + qoff, qstride, r0, rows_here, acc[mt],
                                   p.scale);
  }
}

// ---- dK, dV v2 (GPTOSS_ATTN_BWD=v2, head_dim 64) ------------------------------------------------------------------
// NW warps x 16 keys per CTA (BN = 16 NW keys of one kv head; NW 8 by default), 64 queries per step: each Q/dO tile
// staged in shared memory feeds NW warps, so NW = 8 halves the L2 -> smem traffic per MMA of the 4-warp kernel.
// K/V A fragments stay in registers. Grid (nkb * Hkv, 1, nseq) with the kv head fastest: key block 0 (the most
// query blocks under a causal mask) of every head starts first. Per warp, the arithmetic and the summation order
// over (head, query block) are those of dkdv_kernel<64, 1>; iterations a warp cannot see are skipped (they would
// add exact zeros), so dK/dV equal the default path bitwise.
template <int NW>
struct DkdvV2Cfg {
  static constexpr int D = 64, NT = NW * 32, BN = NW * 16, BM = 64;
  static constexpr int SMEM = (2 * BN * D + 4 * BM * D) * 2 + 4 * BM * 4;
};


template <int NW>
__global__ void __launch_bounds__(NW * 32) dkdv_v2_kernel(Params p) {
  using C = DkdvV2Cfg<NW>;
  constexpr int D = 64, BN = C::BN, BM = C::BM, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [BN][D]
  __nv_bfloat16* sV = sK + BN * D;                                  // [BN][D]
  __nv_bfloat16* sQ = sV + BN * D;                                  // [2][BM][D]
  __nv_bfloat16* sdO = sQ + 2 * BM * D;                             // [2][BM][D]
  float* sL = reinterpret_cast<float*>(sdO + 2 * BM * D);           // [2][BM] lse (natural log)
  float* sDl = sL + 2 * BM;                                         // [2][BM] D_i

  const int kb = static_cast<int>(blockIdx.x) / p.Hkv, kvh = static_cast<int>(blockIdx.x) % p.Hkv, s = blockIdx.z;
  const SeqInfo si = seq_info(p.cu, p.used, s);
  const int n0 = kb * BN;
  if (n0 >= si.len) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D, kstride = static_cast<int64_t>(p.Hkv) * D;
  const int keys_here = min(BN, si.len - n0);

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0.f;

  const int i_lo = n0;
  const int i_hi = p.window > 0 ? min(si.used, n0 + BN - 1 + p.window) : si.used;
  const int qb_lo = i_lo / BM, qb_hi = i_hi > i_lo ? (i_hi + BM - 1) / BM : qb_lo;
  const int nqb = qb_hi - qb_lo, niter = nqb * p.G;
  const int wk0 = warp * 16;   // first key row of this warp within the block
  const int kmin = n0 + wk0;  // this warp's keys: kmin .. kmin + 15

  if (niter > 0) {
    load_tile<BN, D, NT>(sK, p.k + (si.start + n0) * kstride + kvh * D, kstride, si.used - n0);
    load_tile<BN, D, NT>(sV, p.v + (si.start + n0) * kstride + kvh * D, kstride, si.used - n0);
    auto load_q = [&](int it, int stage) {
      const int h = kvh * p.G + it / nqb, i0 = (qb_lo + it % nqb) * BM;
      const int nv = si.used - i0;
      load_tile<BM, D, NT>(sQ + stage * BM * D, p.q + (si.start + i0) * qstride + h * D, qstride, nv);
      load_tile<BM, D, NT>(sdO + stage * BM * D, p.dout + (si.start + i0) * qstride + h * D, qstride, nv);
      const float* gl = p.lse + static_cast<int64_t>(h) * p.T + si.start + i0;
      const float* gd = p.dlt + static_cast<int64_t>(h) * p.T + si.start + i0;
      for (int r = threadIdx.x; r < 2 * BM; r += NT) {
        const int rr = r & (BM - 1);
        const bool ok = rr < nv;
        if (r < BM)
          cp_async4(sL + stage * BM + rr, ok ? gl + rr : gl, ok);
        else
          cp_async4(sDl + stage * BM + rr, ok ? gd + rr : gd, ok);
      }
    };
    load_q(0, 0);
    cp_async_commit();

    uint32_t kf[D / 16][4], vf[D / 16][4];

    for (int it = 0; it < niter; it++) {
      const int stage = it & 1;
      cp_async_wait<0>();
      __syncthreads();
      if (it + 1 < niter) load_q(it + 1, stage ^ 1);
      cp_async_commit();
      if (it == 0) {
        load_a_frags<D>(sK, wk0, kf);
        load_a_frags<D>(sV, wk0, vf);
      }
      const int i0 = (qb_lo + it % nqb) * BM;
      // No (query, key) pair of this step is visible to this warp's keys (or they are padding): skip.
      if (kmin >= si.used || i0 + BM - 1 < kmin || (p.window > 0 && i0 - (kmin + 15) >= p.window)) continue;
      const __nv_bfloat16* cQ = sQ + stage * BM * D;
      const __nv_bfloat16* cdO = sdO + stage * BM * D;
      const float* cL = sL + stage * BM;
      const float* cDl = sDl + stage * BM;

      // S^T = K Q^T and dP^T = V dO^T for 16 keys x BM queries.
      float st[BM / 8][4], dpt[BM / 8][4];
#pragma unroll
      for (int i = 0; i < BM / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) st[i][e] = dpt[i][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
        for (int np = 0; np < BM / 16; np++) {
          uint32_t b[4];
          load_bT_frags<D>(cQ, np * 16, kk, b);
          mma16816(st[2 * np], kf[kk], b[0], b[1]);
          mma16816(st[2 * np + 1], kf[kk], b[2], b[3]);
          load_bT_frags<D>(cdO, np * 16, kk, b);
          mma16816(dpt[2 * np], vf[kk], b[0], b[1]);
          mma16816(dpt[2 * np + 1], vf[kk], b[2], b[3]);
        }
      }
      const bool need_mask =
          (i0 < kmin + 15) || (p.window > 0 && i0 + BM - 1 - kmin >= p.window) || (i0 + BM > si.used);
#pragma unroll
      for (int i = 0; i < BM / 8; i++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int cl = i * 8 + 2 * t4 + (e & 1);
          // __fmul_rn: the same rounded lse*log2e as the default kernel (never contracted into the FMA below).
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
      // dV += P^T dO, dK += dS^T Q (P^T / dS^T accumulators re-packed as A fragments).
#pragma unroll
      for (int kk = 0; kk < BM / 16; kk++) {
        uint32_t pa[4], da[4];
        pa[0] = pack_bf16(st[2 * kk][0], st[2 * kk][1]);
        pa[1] = pack_bf16(st[2 * kk][2], st[2 * kk][3]);
        pa[2] = pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]);
        pa[3] = pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3]);
        da[0] = pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]);
        da[1] = pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]);
        da[2] = pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
        da[3] = pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
#pragma unroll
        for (int np = 0; np < D / 16; np++) {
          uint32_t b[4];
          load_b_frags<D>(cdO, kk * 16, np, b);
          mma16816(dv[2 * np], pa, b[0], b[1]);
          mma16816(dv[2 * np + 1], pa, b[2], b[3]);
          load_b_frags<D>(cQ, kk * 16, np, b);
          mma16816(dk[2 * np], da, b[0], b[1]);
          mma16816(dk[2 * np + 1], da, b[2], b[3]);
        }
      }
    }
    cp_async_wait<0>();
  }
  const int64_t koff = (si.start + n0) * kstride + kvh * D;
  const int r0 = wk0 + g;
  if (p.grad_f32) {
    store_frag<D, float>(static_cast<float*>(p.dk) + koff, kstride, r0, keys_here, dk, p.scale);
    store_frag<D, float>(static_cast<float*>(p.dv) + koff, kstride, r0, keys_here, dv, 1.f);
  } else {
    store_frag<D, __nv_bfloat16>(static_cast<__nv_bfloat16*>(p.dk) + koff, kstride, r0, keys_here, dk, p.scale);
    store_frag<D, __nv_bfloat16>(static_cast<__nv_bfloat16*>(p.dv) + koff, kstride, r0, keys_here, dv, 1.f);
  }
}

// ---- head_dim 64 on Hopper: wgmma ------------------------------------------------------------------------------
// dK/dV: NWG warpgroups per CTA, each owning 64 keys (BN = 64 NWG), 64 queries per step. A warpgroup keeps its K and
// V rows in registers as A operands and runs S^T = K Q^T and dP^T = V dO^T (wgmma m64n64k16, B = the Q / dO tile,
// K-major), then dV += P^T dO and dK += dS^T Q (A = P^T / dS^T in registers, B = the dO / Q tile, MN-major).
// dQ: NWG warpgroups each owning 64 query rows, 64 keys per step: S = Q K^T, dP = dO V^T (B K-major), dQ += dS K
// (B = the K tile, MN-major). Masks, padding and the fixed summation order are those of the mma.sync kernels, so the
// results stay bitwise reproducible.
__device__ __forceinline__ unsigned char* align1024(unsigned char* p) {
  const uint32_t a = smem_u32(p);
  return p + (((a + 1023u) & ~1023u) - a);
}

// FDQ (fused dQ, non-deterministic; NWG 2 with the V3 schedule only): 0 = none; 1 = partials added by bulk async
// reductions (cp.reduce.async.bulk ... add.f32, one per 256-byte row); 2 = by red.global.add.v4.f32 from every
// thread; 3 = as 2, with the dQ product left in flight into the next step (its partial is written out after the next
// step's S^T wait, so the product's latency hides behind S^T; dS double-buffered).
// Extra shared memory: dS as two [64 queries][64 keys] bf16 K-major tiles (one per warpgroup's keys, 16 KB; x2 for
// FDQ 3) and the f32 staging of the dQ partials, [2 buffers][NWG][32 rows][68] (rows padded by 4 floats:
// conflict-free stores of the transposed accumulator).
constexpr int kDqStgLd = 68;
// ---- step pieces shared by the fused-dQ wgmma kernels (dkdv_wgmma_kernel FDQ != 0, bwd_ws_kernel) ----
// dS^T = P^T (dP^T - D_i) in place in dpt; dl = this step's D_i by query column (lane column 2 t4 (+1) of 8 i).
template <int NB>
__device__ __forceinline__ void ds_from_p(float (&dpt)[NB][4], const float (&pt)[NB][4], const float* dl, int t4) {
#pragma unroll
  for (int i = 0; i < NB; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) dpt[i][e] = pt[i][e] * (dpt[i][e] - dl[i * 8 + 2 * t4 + (e & 1)]);
}
// This warp's dS^T (bf16 A fragments: keys 16 wl .. 16 wl + 15 of its warpgroup x 16 NKK queries) stored transposed
// into the warpgroup's dS tile at `tile` ([queries][64 keys] bf16, 128-byte swizzle, 1024-aligned): register j of
// da[kk] is the 8x8 block (keys +8 (j & 1), queries 16 kk + 8 (j >> 1)); stored, its rows are queries and its 16
// bytes are 8 keys (chunk 2 wl + (j & 1) of the swizzled row). Before the dK product is issued: the A registers of an
// in-flight wgmma must not be accessed.
template <int NKK>
__device__ __forceinline__ void store_ds_tile(uint32_t tile, const uint32_t (&da)[NKK][4], int wl, int lane) {
  const int j = lane >> 3, r = lane & 7, ch = 2 * wl + (j & 1);
#pragma unroll
  for (int kk = 0; kk < NKK; kk++) {
    const int q = 16 * kk + 8 * (j >> 1) + r;
    stsm_x4_t(tile + q * 128 + ((ch ^ (q & 7)) << 4), da[kk][0], da[kk][1], da[kk][2], da[kk][3]);
  }
}
// A warpgroup's finished dQ^T partial (rows d = 16 wl + g (+8), cols q = 8 i + 2 t4 (+1) of its 32 query rows) ->
// its staging rows stg[q][d] (kDqStgLd floats apart: conflict-free transposed stores).
__device__ __forceinline__ void stage_dq(float* stg, const float (&acc)[4][4], int wl, int g, int t4) {
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) stg[(8 * i + 2 * t4 + (e & 1)) * kDqStgLd + 16 * wl + g + 8 * (e >> 1)] = acc[i][e];
}
// The staged rows (after the warpgroup's barrier) added to the f32 accumulator rows gacc[0 .. nrows) by
// red.global.add.v4, 4 per thread.
__device__ __forceinline__ void red_staged_dq(float* gacc, const float* stg, int nrows, int tid) {
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const int row = (tid + 128 * j) >> 4, c = (tid + 128 * j) & 15;
    if (row < nrows)
      red_add_v4(gacc + row * 64 + 4 * c, *reinterpret_cast<const float4*>(stg + row * kDqStgLd + 4 * c));
  }
}

template <int NWG, int FDQ = 0>
struct DkdvWgCfg {
  static constexpr int D = 64, NT = NWG * 128, BN = NWG * 64, BM = 64;
  static constexpr int DS_BUFS = FDQ == 3 ? 2 : 1;
  static constexpr int SMEM = (2 * BN * D + 4 * BM * D) * 2 + 4 * BM * 4 + 1024 +
                              (FDQ ? DS_BUFS * BN * BM * 2 + 2 * NWG * 32 * kDqStgLd * 4 : 0);
};

// V3 (GPTOSS_ATTN_BWD=v3): grid (nkb * Hkv, 1, nseq) with the kv head fastest (key block 0, the heaviest under a
// causal mask, of every head first), and per step S^T and dP^T are two wgmma groups: P^T is computed while dP^T
// still runs, dV += P^T dO is issued before dS^T is computed, so the tensor cores work during the softmax.
//
// FDQ != 0 (deterministic: false on sm_90): the CTA also produces dQ, FlashAttention-3 style, so no dQ kernel
// recomputes S and dP (5 GEMM-equivalents per (query block, key block) instead of 7). Per step each warpgroup
// stores its dS^T (64 keys x 64 queries, registers) transposed into its dS tile with stmatrix (dS [64 q][64 k],
// K-major); after a CTA barrier, warpgroup w computes the transposed partial for its 32 query rows over all 128 keys:
//   dQ^T[64 d x 32 q] = K^T[64 d x 128 k] . dS^T[128 k x 32 q]    (8 x wgmma m64n32k16, both operands in smem:
//   A = the K tile read MN-major (transpose bit), B = rows 32w..32w+31 of the dS tiles, K-major)
// writes it to shared memory as [32 q][64 d] f32 rows and adds the rows to p.dq_acc ([Hq, T, 64] f32, unscaled,
// zeroed by the launcher; a 32-row tile of one head is one 8 KB block) by bulk async reductions (FDQ 1) or
// red.global.add.v4 (FDQ 2, 3; FDQ 3 leaves the dQ product in flight into the next step). dK and dV use exactly the
// v3 arithmetic (FDQ 3 adds exact zeros on the steps v3 skips), so they equal v3's bitwise.
template <int NWG, bool V3 = false, int FDQ = 0>
__global__ void __launch_bounds__(NWG * 128, 1) dkdv_wgmma_kernel(Params p) {
  static_assert(FDQ == 0 || (NWG == 2 && V3), "fused dq: two warpgroups, v3 schedule");
  using C = DkdvWgCfg<NWG, FDQ>;
  constexpr int D = 64, BN = C::BN, BM = C::BM, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sK = reinterpret_cast<__nv_bfloat16*>(align1024(smem_raw));
  __nv_bfloat16* sV = sK + BN * D;
  __nv_bfloat16* sQ = sV + BN * D;       // [2][BM*D]
  __nv_bfloat16* sdO = sQ + 2 * BM * D;  // [2][BM*D]
  float* sL = reinterpret_cast<float*>(sdO + 2 * BM * D);  // [2][BM] lse (natural log)
  float* sDl = sL + 2 * BM;                                 // [2][BM]
  // FDQ only: 1024-aligned (sK is, and everything before is a multiple of 1024 bytes).
  __nv_bfloat16* sdS = reinterpret_cast<__nv_bfloat16*>(sDl + 2 * BM);  // [DS_BUFS][NWG][64 q][64 k], 128B swizzle
  float* sStg = reinterpret_cast<float*>(sdS + C::DS_BUFS * BN * BM);   // [2][NWG][32][kDqStgLd]

  const int kb = V3 ? static_cast<int>(blockIdx.x) / p.Hkv : blockIdx.x;
  const int kvh = V3 ? static_cast<int>(blockIdx.x) % p.Hkv : blockIdx.y, s = blockIdx.z;
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

  const int i_lo = n0;
  const int i_hi = p.window > 0 ? min(si.used, n0 + BN - 1 + p.window) : si.used;
  const int qb_lo = i_lo / BM, qb_hi = i_hi > i_lo ? (i_hi + BM - 1) / BM : qb_lo;
  const int nqb = qb_hi - qb_lo, niter = nqb * p.G;
  const int wk0 = n0 + wg * 64;        // first key of this warpgroup
  const int kmin = wk0 + wl * 16;      // this warp's keys: kmin .. kmin + 15

  if (niter > 0) {
    load_tile<BN, D, NT>(sK, p.k + (si.start + n0) * kstride + kvh * D, kstride, si.used - n0);
    load_tile<BN, D, NT>(sV, p.v + (si.start + n0) * kstride + kvh * D, kstride, si.used - n0);
    auto load_q = [&](int it, int stage) {
      const int h = kvh * p.G + it / nqb, i0 = (qb_lo + it % nqb) * BM;
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

    // The bug of the first version: the K/V (dQ kernel: Q/dO) A fragments were loaded once (under `if (it == 0)`)
    // and then kept in registers across steps that only wgmma reads. Every step's products were exact when dumped,
    // yet the results were wrong from a warpgroup's second live step on, and the outcome changed with unrelated
    // code (a plain read of those registers in the loop made it right): ptxas does not keep loop-carried,
    // wgmma-only A registers intact. Hoisting the load out of the loop fixed dK/dV but not dQ, and an empty asm
    // "+r" pin per step fixed neither, so the fragments are now re-read from shared memory (ldmatrix, 8 x4 per warp
    // per step) right before each use: exact for every GPU-tested shape.
    const uint32_t sQ_a = smem_u32(sQ), sdO_a = smem_u32(sdO);
    const uint32_t sK_a = smem_u32(sK), sdS_a = smem_u32(sdS);
    int nred = 0;  // FDQ: steps whose dQ partial was issued (staging buffer = nred & 1; FDQ 3: dS buffer too)
    // FDQ 3: the dQ^T partial of the last issued step, still in flight (rows of query head pend_h from pend_r0).
    float dqt[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++) dqt[i][0] = dqt[i][1] = dqt[i][2] = dqt[i][3] = 0.f;
    int pend_h = 0, pend_r0 = si.used;
    // Writes a finished dQ^T partial (rows d = 16 wl + g (+8), cols q = 8 i + 2 t4 (+1) of this warpgroup's 32 rows)
    // to this warpgroup's staging rows [q][d] and adds them to p.dq_acc (rows past the real length are left out).
    auto dq_out = [&](const float (&acc)[4][4], int hq, int r0, int buf) {
      float* stg = sStg + (buf * NWG + wg) * (32 * kDqStgLd);
      stage_dq(stg, acc, wl, g, t4);
      const int nrows = min(32, si.used - r0);
      float* gacc = p.dq_acc + (static_cast<int64_t>(hq) * p.T + si.start + r0) * D;
      if constexpr (FDQ == 1) {
        fence_proxy_async();  // staging written by st.shared, read by the bulk reductions (async proxy)
        bar_sync(2 + wg, 128);
        if (wl == 0) {
          if (lane < nrows) bulk_reduce_add_f32(gacc + lane * D, smem_u32(stg + lane * kDqStgLd), D * 4);
          bulk_commit();
        }
      } else {
        bar_sync(2 + wg, 128);
        red_staged_dq(gacc, stg, nrows, threadIdx.x & 127);
      }
    };

    for (int it = 0; it < niter; it++) {
      const int stage = it & 1;
      cp_async_wait<0>();
      // FDQ 1: the staging buffer written this step was the source of the bulk reductions two issued steps ago;
      // the issuing lanes wait until those have read it, and the barrier below tells the other threads.
      if constexpr (FDQ == 1)
        if (wl == 0) bulk_wait_read<1>();
      fence_proxy_async();
      __syncthreads();
      if (it + 1 < niter) load_q(it + 1, stage ^ 1);
      cp_async_commit();
      const int i0 = (qb_lo + it % nqb) * BM;
      // Does any (query, key) pair of this query block and warpgroup w's keys count?
      auto skip_of = [&](int w) {
        const int k0 = n0 + w * 64;
        return k0 >= si.used || i0 + BM - 1 < k0 || (p.window > 0 && i0 - (k0 + 63) >= p.window);
      };
      // FDQ 3 skips nothing: a branch around its wgmmas (which ptxas cannot prove uniform) while the previous step's
      // dQ product is in flight makes ptxas serialize every wgmma (C7518). A warpgroup whose keys cannot see this
      // query block then computes exact zeros (all of P^T masked: dS^T = 0, dK/dV += 0). That costs little: no step
      // has both warpgroups blind (the query blocks are those the first warpgroup's live keys see, or the second's),
      // and the one-blind steps are the causal diagonal block (1 of ~S/64 per head) and a window's last block.
      const bool skip = FDQ == 3 ? false : skip_of(wg);
      if constexpr (FDQ == 1 || FDQ == 2) {
        // dQ needs both warpgroups' dS: a skipped warpgroup zero-fills its tile instead; only a step that neither
        // warpgroup sees is left out (uniform over the CTA, so the barriers below stay matched).
        if (skip && skip_of(wg ^ 1)) continue;
      } else if constexpr (FDQ == 0) {
        if (skip) continue;
      }
      if (!skip) {
      const float* cL = sL + stage * BM;
      const float* cDl = sDl + stage * BM;
      const uint64_t dQk = wg_desc(sQ_a + stage * BM * D * 2), dOk = wg_desc(sdO_a + stage * BM * D * 2);

      float st[BM / 8][4], dpt[BM / 8][4];
#pragma unroll
      for (int i = 0; i < BM / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) st[i][e] = dpt[i][e] = 0.f;
      fence_acc<BM / 8>(st);
      fence_acc<BM / 8>(dpt);
      const bool need_mask =
          (i0 < kmin + 15) || (p.window > 0 && i0 + BM - 1 - kmin >= p.window) || (i0 + BM > si.used);
      // P^T (in st) for this thread's 8 x 4 accumulator entries: keys kmin + g (+8), queries i0 + cl.
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
      uint32_t kf[D / 16][4], vf[D / 16][4];  // reloaded every step: see the comment above the loop
      load_a_frags<D>(sK, wg * 64 + wl * 16, kf);
      load_a_frags<D>(sV, wg * 64 + wl * 16, vf);
      wgmma_fence();
      if constexpr (V3) {
        // group 1: S^T = K Q^T (64 keys x 64 queries); group 2: dP^T = V dO^T.
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) wgmma_rs<BM, 0>(st, kf[kk], dQk + 2 * kk);
        wgmma_commit();
        if constexpr (FDQ == 3) {
          // The previous step's dQ product ran over the loop's barrier and the S^T issue; write it out now, before
          // dP^T is issued (so dP^T still runs during the softmax). Always (a branch here would serialize the
          // wgmmas, see above): before the first step dqt is zero and pend_r0 = si.used, so nothing is added.
          // wait_group 0 (also S^T): with wait_group 1 here, or after dP^T's issue, ptxas does not see the dQ group
          // retired and serializes every wgmma (C7514).
          wgmma_wait<0>();
          fence_acc<4>(dqt);
          dq_out(dqt, pend_h, pend_r0, 0);
        }
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
        if constexpr (FDQ != 0) store_ds_tile(sdS_a + (FDQ == 3 ? (nred & 1) * 16384 : 0) + wg * 8192, da, wl, lane);
        wgmma_rs_mn_chain(dk, da, dQk);  // dK += dS^T Q
        // nothing may read this stage's tiles after the next barrier (FDQ: waited for after the dQ product)
        if constexpr (FDQ == 0) wgmma_wait<0>();
      } else {
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) wgmma_rs<BM, 0>(st, kf[kk], dQk + 2 * kk);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) wgmma_rs<BM, 0>(dpt, vf[kk], dOk + 2 * kk);
        wgmma_commit();
        wgmma_wait<0>();
        fence_acc<BM / 8>(st);
        fence_acc<BM / 8>(dpt);
        softmax_p();
#pragma unroll
        for (int i = 0; i < BM / 8; i++)
#pragma unroll
          for (int e = 0; e < 4; e++) dpt[i][e] = st[i][e] * (dpt[i][e] - cDl[i * 8 + 2 * t4 + (e & 1)]);
        pack_a_frags(st, pa);
        pack_a_frags(dpt, da);
        fence_acc<D / 8>(dv);
        fence_acc<D / 8>(dk);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++) wgmma_rs<64, 1>(dv, pa[kk], dOk + 128 * kk);
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++) wgmma_rs<64, 1>(dk, da[kk], dQk + 128 * kk);
        wgmma_commit();
        wgmma_wait<0>();
      }
      if constexpr (FDQ == 0) {
        fence_acc<D / 8>(dv);
        fence_acc<D / 8>(dk);
      }
      } else if constexpr (FDQ == 1 || FDQ == 2) {
        // Skipped warpgroup: its keys contribute nothing to dQ; zero its dS tile (8 KB, 4 x 16 bytes per thread).
        const int tid = threadIdx.x & 127;
        __nv_bfloat16* mine = sdS + (FDQ == 3 ? (nred & 1) * BN * BM : 0) + wg * 64 * 64;
#pragma unroll
        for (int j = 0; j < 4; j++) reinterpret_cast<uint4*>(mine)[tid + 128 * j] = make_uint4(0u, 0u, 0u, 0u);
      }
      if constexpr (FDQ != 0) {
        fence_proxy_async();  // dS written by st/stmatrix (generic proxy), read by wgmma (async proxy)
        bar_sync(1, NT);
        acc_undef<4>(dqt);
        wgmma_fence();
        const uint32_t dsb = sdS_a + (FDQ == 3 ? (nred & 1) * 16384 : 0);
        const uint64_t ak = wg_desc(sK_a), bq = wg_desc(dsb + wg * 32 * 128);
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++)  // 16 keys per product: +2048 bytes in K (MN-major), +32 in dS (K-major)
          wgmma_ss_n32<1, 0>(dqt, ak + 128 * kk, bq + (kk >> 2) * (8192 >> 4) + 2 * (kk & 3), kk > 0);
        wgmma_commit();
        const int hq = kvh * p.G + it / nqb, r0 = i0 + wg * 32;  // this warpgroup's query head and first row
        if constexpr (FDQ == 3) {
          wgmma_wait<1>();  // the dK group (it reads this stage's Q tile); the dQ product stays in flight
          fence_acc<D / 8>(dv);
          fence_acc<D / 8>(dk);
          pend_h = hq;
          pend_r0 = r0;
        } else {
          wgmma_wait<0>();  // also the dK group
          fence_acc<4>(dqt);
          fence_acc<D / 8>(dv);
          fence_acc<D / 8>(dk);
          dq_out(dqt, hq, r0, nred & 1);
        }
        nred++;
      }
    }
    if constexpr (FDQ == 3) {  // the last step's dQ (niter > 0 and no step is skipped: there is one)
      wgmma_wait<0>();
      fence_acc<4>(dqt);
      dq_out(dqt, pend_h, pend_r0, 0);
    }
    cp_async_wait<0>();
    if constexpr (FDQ == 1)
      if (wl == 0) bulk_wait<0>();  // the reductions are done (and their source reads) before the CTA exits
  }
  const int64_t koff = (si.start + n0) * kstride + kvh * D;
  const int r0 = wg * 64 + wl * 16 + g;
  if (p.grad_f32) {
    store_frag<D, float>(static_cast<float*>(p.dk) + koff, kstride, r0, keys_here, dk, p.scale);
    store_frag<D, float>(static_cast<float*>(p.dv) + koff, kstride, r0, keys_here, dv, 1.f);
  } else {
    store_frag<D, __nv_bfloat16>(static_cast<__nv_bfloat16*>(p.dk) + koff, kstride, r0, keys_here, dk, p.scale);
    store_frag<D, __nv_bfloat16>(static_cast<__nv_bfloat16*>(p.dv) + koff, kstride, r0, keys_here, dv, 1.f);
  }
}

template <int NWG>
struct DqWgCfg {
  static constexpr int D = 64, NT = NWG * 128, BM = NWG * 64, BN = 64;
  static constexpr int SMEM = (2 * BM * D + 4 * BN * D) * 2 + 1024;
};

// V3 (GPTOSS_ATTN_BWD=v3): grid (nmb * Hq, 1, nseq) with the head fastest, latest (heaviest causal) query blocks
// first; S and dP are two wgmma groups so P is computed while dP still runs.
template <int NWG, bool V3 = false>
__global__ void __launch_bounds__(NWG * 128, 1) dq_wgmma_kernel(Params p) {
  using C = DqWgCfg<NWG>;
  constexpr int D = 64, BM = C::BM, BN = C::BN, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(align1024(smem_raw));
  __nv_bfloat16* sdO = sQ + BM * D;
  __nv_bfloat16* sK = sdO + BM * D;  // [2][BN*D]
  __nv_bfloat16* sV = sK + 2 * BN * D;

  const int mb = V3 ? static_cast<int>(gridDim.x) / p.Hq - 1 - static_cast<int>(blockIdx.x) / p.Hq
                    : gridDim.x - 1 - blockIdx.x;
  const int h = V3 ? static_cast<int>(blockIdx.x) % p.Hq : blockIdx.y, s = blockIdx.z;
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
    const int n_lo = p.window > 0 ? max(0, q0 - p.window + 1) : 0;
    const int n_hi = min(q0 + BM, si.used);
    const int kb_lo = n_lo / BN, kb_hi = (n_hi + BN - 1) / BN;
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

      float sc[BN / 8][4], dp[BN / 8][4];
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
      if constexpr (V3) wgmma_commit();
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) wgmma_rs<BN, 0>(dp, of[kk], dVd + 2 * kk);  // dP = dO V^T
      wgmma_commit();
      if constexpr (V3) {
        wgmma_wait<1>();  // S ready, dP may still run
      } else {
        wgmma_wait<0>();
      }
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
      if constexpr (V3) wgmma_wait<0>();
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
  const int nreal = max(0, min(rows_here, si.used - q0));
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

// Fused-dQ path: dq[t][h][:] = scale * acc[h][t][:] (acc [Hq, T, 64] f32, dq [T, Hq, 64]); 4 elements per thread.
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

// dq = scale * dq_acc in the gradient dtype.
template <typename T>
__global__ void dq_convert_kernel(const float* acc, T* dq, int64_t n, float scale) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (i >= n) return;
  const float4 v = *reinterpret_cast<const float4*>(acc + i);
  store2<T>(dq + i, v.x * scale, v.y * scale);
  store2<T>(dq + i + 2, v.z * scale, v.w * scale);
}

}  // namespace attn
}  // namespace gptoss::cuda
