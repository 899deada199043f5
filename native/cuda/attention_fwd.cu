// attention_fwd.cu: FlashAttention-2 style forward with sinks (see attention.h).
//
// One CTA = 128 queries (8 warps x 16 rows) of one query head of one sequence. K/V tiles of 64 keys stream
// through shared memory with cp.async double buffering; S = Q K^T and O += P V run on tensor cores
// (mma.sync m16n8k16, fp32 accumulate). Online softmax in the log2 domain, with the running max started at the
// sink logit and the sink's e^{sink - m} added to the denominator at the end. Key tiles outside the causal /
// sliding-window band are skipped, so a window W costs O(S*W); only the tiles that cross the band edge are
// masked element by element.
#include <cstdlib>

#include "attention.h"
#include "attention_common.cuh"
#include "wgmma.cuh"

namespace gptoss::cuda {
namespace attn {

// A query block past the sequence's real tokens (padding): zero output rows and lse 0, by all NT threads.
template <int D, int NT>
__device__ __forceinline__ void zero_padding_block(const Params& p, const SeqInfo& si, int q0, int rows, int h) {
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D;
  for (int i = threadIdx.x; i < rows * D; i += NT) {
    const int r = i / D, d = i % D;
    p.o[(si.start + q0 + r) * qstride + h * D + d] = __float2bfloat16(0.f);
  }
  for (int r = threadIdx.x; r < rows; r += NT) p.lse[static_cast<int64_t>(h) * p.T + si.start + q0 + r] = 0.f;
}

// MT = 16-row MMA tiles per warp. With MT = 2 every K/V fragment loaded from shared memory feeds two MMAs,
// which halves the ldmatrix traffic per MMA (shared-memory bandwidth is the limit of mma.sync at MT = 1).
template <int D, int MT>
struct FwdCfg {
  static constexpr int NW = MT == 1 ? 8 : 4, NT = NW * 32, BM = NW * 16 * MT, BN = 64;
  static constexpr int SMEM = (BM * D + 4 * BN * D) * 2;  // Q + 2 stages of K and V
};

template <int D, int MT>
__global__ void __launch_bounds__(FwdCfg<D, MT>::NT) fwd_kernel(Params p) {
  using C = FwdCfg<D, MT>;
  constexpr int BM = C::BM, BN = C::BN, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sK = sQ + BM * D;   // [2][BN*D]
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

  if (q0 >= si.used) {
    zero_padding_block<D, NT>(p, si, q0, rows_here, h);
    return;
  }

  const __nv_bfloat16* gQ = p.q + (si.start + q0) * qstride + h * D;
  const __nv_bfloat16* gK = p.k + si.start * kstride + kvh * D;
  const __nv_bfloat16* gV = p.v + si.start * kstride + kvh * D;

  // Key range that any real query of this block can see.
  const int n_lo = p.window > 0 ? max(0, q0 - p.window + 1) : 0;
  const int n_hi = min(q0 + BM, si.used);
  const int kb_lo = n_lo / BN, kb_hi = (n_hi + BN - 1) / BN;

  load_tile<BM, D, NT>(sQ, gQ, qstride, min(rows_here, si.used - q0));
  auto load_kv = [&](int kb, int stage) {
    const int n0 = kb * BN;
    load_tile<BN, D, NT>(sK + stage * BN * D, gK + n0 * kstride, kstride, si.used - n0);
    load_tile<BN, D, NT>(sV + stage * BN * D, gV + n0 * kstride, kstride, si.used - n0);
  };
  load_kv(kb_lo, 0);
  cp_async_commit();

  const float sink2 = sink_log2(p, h);
  float m_r[MT][2], l_r[MT][2];
  float acc[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    m_r[mt][0] = m_r[mt][1] = sink2;
    l_r[mt][0] = l_r[mt][1] = 0.f;
#pragma unroll
    for (int i = 0; i < D / 8; i++) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.f;
  }
  uint32_t qf[MT][D / 16][4];
  const int wrow0 = q0 + warp * 16 * MT;  // first row of this warp; thread rows wrow0 + 16 mt + g (+8)

  for (int kb = kb_lo; kb < kb_hi; kb++) {
    const int stage = (kb - kb_lo) & 1;
    cp_async_wait<0>();
    __syncthreads();
    if (kb == kb_lo) {
#pragma unroll
      for (int mt = 0; mt < MT; mt++) load_a_frags<D>(sQ, warp * 16 * MT + mt * 16, qf[mt]);
    }
    if (kb + 1 < kb_hi) load_kv(kb + 1, stage ^ 1);
    cp_async_commit();
    const __nv_bfloat16* cK = sK + stage * BN * D;
    const __nv_bfloat16* cV = sV + stage * BN * D;

    float sc[MT][BN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int i = 0; i < BN / 8; i++) sc[mt][i][0] = sc[mt][i][1] = sc[mt][i][2] = sc[mt][i][3] = 0.f;
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
      }
    }
    const int n0 = kb * BN;
    const bool need_mask =
        (n0 + BN - 1 > wrow0) || (p.window > 0 && n0 < wrow0 + 16 * MT - p.window);
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
      for (int i = 0; i < BN / 8; i++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          float x = sc[mt][i][e] * p.scale_log2;
          if (need_mask) {
            const int row = wrow0 + mt * 16 + g + (e >> 1) * 8, col = n0 + i * 8 + 2 * t4 + (e & 1);
            const bool ok = col <= row && (p.window <= 0 || col > row - p.window);
            x = ok ? x : -INFINITY;
          }
          sc[mt][i][e] = x;
        }
      }
#pragma unroll
      for (int r = 0; r < 2; r++) {
        float mx = m_r[mt][r];
#pragma unroll
        for (int i = 0; i < BN / 8; i++) mx = fmaxf(mx, fmaxf(sc[mt][i][2 * r], sc[mt][i][2 * r + 1]));
        mx = quad_max(mx);
        const float base = mx == -INFINITY ? 0.f : mx;
        const float alpha = exp2f(m_r[mt][r] - base);
        m_r[mt][r] = mx;
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < BN / 8; i++) {
          sc[mt][i][2 * r] = exp2f(sc[mt][i][2 * r] - base);
          sc[mt][i][2 * r + 1] = exp2f(sc[mt][i][2 * r + 1] - base);
          sum += sc[mt][i][2 * r] + sc[mt][i][2 * r + 1];
        }
        l_r[mt][r] = l_r[mt][r] * alpha + sum;
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
          acc[mt][i][2 * r] *= alpha;
          acc[mt][i][2 * r + 1] *= alpha;
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
        load_b_frags<D>(cV, kk * 16, np, b);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          mma16816(acc[mt][2 * np], a[mt], b[0], b[1]);
          mma16816(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();

  // Finish: fold in the sink (reduce across the quad first: shuffles need every lane), normalise, write.
  // Rows past the real length get zeros and lse 0.
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    float lsum[2];
#pragma unroll
    for (int r = 0; r < 2; r++) lsum[r] = quad_sum(l_r[mt][r]) + exp2f(sink2 - m_r[mt][r]);
#pragma unroll
    for (int r = 0; r < 2; r++) store_out_row<D>(p, si, h, wrow0 + mt * 16 + g + r * 8, r, t4, acc[mt], m_r[mt][r], lsum[r]);
  }
}


// ---- head_dim 64 on Hopper: wgmma ------------------------------------------------------------------------------
// NWG warpgroups of 128 threads, each owning 64 query rows (BM = 64 NWG). Per key tile of BN keys a warpgroup runs
// S = Q K^T as 4 wgmma m64nBNk16 (A = its Q rows, loaded once into registers with ldmatrix; B = the K tile, K-major)
// and O += P V as BN/16 wgmma m64n64k16 (A = P in registers, converted from the S accumulator; B = the V tile,
// MN-major). The softmax, masks, sink and padding rules are those of fwd_kernel (same fragment layout per warp).
// Tiles that no row of a warpgroup can see are skipped by that warpgroup.
template <int BN, int NWG>
struct FwdWgCfg {
  static constexpr int D = 64, NT = NWG * 128, BM = NWG * 64;
  static constexpr int SMEM = (BM * D + 4 * BN * D) * 2 + 1024;  // Q + 2 stages of K and V, + alignment slack
};

__device__ __forceinline__ unsigned char* align1024(unsigned char* p) {
  const uint32_t a = smem_u32(p);
  return p + (((a + 1023u) & ~1023u) - a);
}

template <int BN, int NWG>
__global__ void __launch_bounds__(NWG * 128, 1) fwd_wgmma_kernel(Params p) {
  using C = FwdWgCfg<BN, NWG>;
  constexpr int D = 64, BM = C::BM, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(align1024(smem_raw));
  __nv_bfloat16* sK = sQ + BM * D;  // [2][BN*D]
  __nv_bfloat16* sV = sK + 2 * BN * D;

  const int mb = gridDim.x - 1 - blockIdx.x;  // longest (last) query blocks first
  const int h = blockIdx.y, s = blockIdx.z;
  const SeqInfo si = seq_info(p.cu, p.used, s);
  const int q0 = mb * BM;
  if (q0 >= si.len) return;
  const int kvh = h / p.G;
  const int wg = threadIdx.x >> 7, wl = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2,
            t4 = lane & 3;
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D, kstride = static_cast<int64_t>(p.Hkv) * D;
  const int rows_here = min(BM, si.len - q0);

  if (q0 >= si.used) {
    zero_padding_block<D, NT>(p, si, q0, rows_here, h);
    return;
  }

  const __nv_bfloat16* gQ = p.q + (si.start + q0) * qstride + h * D;
  const __nv_bfloat16* gK = p.k + si.start * kstride + kvh * D;
  const __nv_bfloat16* gV = p.v + si.start * kstride + kvh * D;

  const int n_lo = p.window > 0 ? max(0, q0 - p.window + 1) : 0;
  const int n_hi = min(q0 + BM, si.used);
  const int kb_lo = n_lo / BN, kb_hi = (n_hi + BN - 1) / BN;

  load_tile<BM, D, NT>(sQ, gQ, qstride, min(rows_here, si.used - q0));
  auto load_kv = [&](int kb, int stage) {
    const int n0 = kb * BN;
    load_tile<BN, D, NT>(sK + stage * BN * D, gK + n0 * kstride, kstride, si.used - n0);
    load_tile<BN, D, NT>(sV + stage * BN * D, gV + n0 * kstride, kstride, si.used - n0);
  };
  load_kv(kb_lo, 0);
  cp_async_commit();

  const float sink2 = sink_log2(p, h);
  float m_r[2] = {sink2, sink2}, l_r[2] = {0.f, 0.f};
  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  uint32_t qf[D / 16][4];
  const int wq0 = q0 + wg * 64;       // first row of this warpgroup
  const int wrow0 = wq0 + wl * 16;    // first row of this warp; thread rows wrow0 + g (+8)
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
    // Q's A fragments are re-read per tile (4 ldmatrix.x4 per warp): A registers that only wgmma reads were not
    // kept intact across loop iterations in the backward kernels (attention_bwd_kernels.cuh), so none are
    // carried across iterations here either.
    load_a_frags<D>(sQ, wg * 64 + wl * 16, qf);
    const uint64_t dK = wg_desc(sK_a + stage * BN * D * 2), dV = wg_desc(sV_a + stage * BN * D * 2);

    float sc[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; i++) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.f;
    fence_acc<BN / 8>(sc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) wgmma_rs<BN, 0>(sc, qf[kk], dK + 2 * kk);  // +32 bytes per k step
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc<BN / 8>(sc);

    const bool need_mask = (n0 + BN - 1 > wrow0) || (p.window > 0 && n0 < wrow0 + 16 - p.window);
#pragma unroll
    for (int i = 0; i < BN / 8; i++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float x = sc[i][e] * p.scale_log2;
        if (need_mask) {
          const int row = wrow0 + g + (e >> 1) * 8, col = n0 + i * 8 + 2 * t4 + (e & 1);
          const bool ok = col <= row && (p.window <= 0 || col > row - p.window);
          x = ok ? x : -INFINITY;
        }
        sc[i][e] = x;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = m_r[r];
#pragma unroll
      for (int i = 0; i < BN / 8; i++) mx = fmaxf(mx, fmaxf(sc[i][2 * r], sc[i][2 * r + 1]));
      mx = quad_max(mx);
      const float base = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(m_r[r] - base);
      m_r[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < BN / 8; i++) {
        sc[i][2 * r] = exp2f(sc[i][2 * r] - base);
        sc[i][2 * r + 1] = exp2f(sc[i][2 * r + 1] - base);
        sum += sc[i][2 * r] + sc[i][2 * r + 1];
      }
      l_r[r] = l_r[r] * alpha + sum;
#pragma unroll
      for (int i = 0; i < D / 8; i++) {
        acc[i][2 * r] *= alpha;
        acc[i][2 * r + 1] *= alpha;
      }
    }
    uint32_t pa[BN / 16][4];
    pack_a_frags(sc, pa);
    fence_acc<D / 8>(acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) wgmma_rs<64, 1>(acc, pa[kk], dV + 128 * kk);  // +2048 bytes per k step
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc<D / 8>(acc);
  }
  cp_async_wait<0>();

  float lsum[2];
#pragma unroll
  for (int r = 0; r < 2; r++) lsum[r] = quad_sum(l_r[r]) + exp2f(sink2 - m_r[r]);
#pragma unroll
  for (int r = 0; r < 2; r++) store_out_row<D>(p, si, h, wrow0 + g + r * 8, r, t4, acc, m_r[r], lsum[r]);
}


}  // namespace attn

namespace {
template <int D, int MT>
void launch_fwd(const attn::Params& p, int nseq, int max_seqlen, cudaStream_t st) {
  using C = attn::FwdCfg<D, MT>;
  static bool configured = false;  // per process and instantiation; every device gets the same attribute
  if (!configured) {
    GPTOSS_CUDA_CHECK(
        cudaFuncSetAttribute(attn::fwd_kernel<D, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM),
        "attentionForward: cudaFuncSetAttribute");
    configured = true;
  }
  dim3 grid(ceil_div(max_seqlen, C::BM), p.Hq, nseq);
  attn::fwd_kernel<D, MT><<<grid, C::NT, C::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionForward: kernel launch");
}

template <int BN, int NWG>
void launch_fwd_wgmma(const attn::Params& p, int nseq, int max_seqlen, cudaStream_t st) {
  using C = attn::FwdWgCfg<BN, NWG>;
  static bool configured = false;
  if (!configured) {
    GPTOSS_CUDA_CHECK(cudaFuncSetAttribute(attn::fwd_wgmma_kernel<BN, NWG>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM),
                      "attentionForward: cudaFuncSetAttribute");
    configured = true;
  }
  dim3 grid(ceil_div(max_seqlen, C::BM), p.Hq, nseq);
  attn::fwd_wgmma_kernel<BN, NWG><<<grid, C::NT, C::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionForward: kernel launch");
}

// 128-key tiles, GPTOSS_ATTN_FWD_NWG = 2 | 3 warpgroups per CTA (default 3: measured fastest on an H100). Only
// causal rows come here: with 128-key tiles a 128-wide window wastes more than it gains, and the 64-key variant
// (FwdWgCfg<64, .>, wgmma m64n64k16 for S) fails the GPU tests (see docs/attention.md), so it is not dispatched.
void launch_fwd64_wgmma(const attn::Params& p, int nseq, int max_seqlen, cudaStream_t st) {
  static const int nwg = attn::env_int("GPTOSS_ATTN_FWD_NWG", 3);
  nwg == 2 ? launch_fwd_wgmma<128, 2>(p, nseq, max_seqlen, st) : launch_fwd_wgmma<128, 3>(p, nseq, max_seqlen, st);
}

// GPTOSS_ATTN_FWD picks the head_dim-64 forward on sm_90, read on every call: unset or "ws" = the warp-specialized
// TMA kernel (attention_fwd_ws.cu; causal and windows; 2.0-2.4x the v2 kernels on an H100), "v2" = the earlier
// kernels (wgmma fwd_wgmma_kernel for causal rows, mma.sync for windows; also the fallback when no tensor map can be
// made). Other devices run mma.sync. Unknown values are an error.
enum class FwdMode { V2, WS };
FwdMode fwd_mode() {
  const char* e = std::getenv("GPTOSS_ATTN_FWD");
  const std::string mode = e ? e : "";
  if (mode.empty() || mode == "ws") return FwdMode::WS;
  if (mode == "v2") return FwdMode::V2;
  fail("GPTOSS_ATTN_FWD: unknown value '", mode, "' (ws, v2; unset = ws)");
}

// GPTOSS_ATTN_FWD_MT=1|2 picks the 16-row tiles per warp for head_dim 64 (A/B measurements). Default 1: on an
// H100, MT = 2 (fewer ldmatrix per MMA but half the warps per SM) measured ~12% slower.
int fwd_mt() {
  static int mt = [] {
    const char* e = std::getenv("GPTOSS_ATTN_FWD_MT");
    return e && e[0] == '2' ? 2 : 1;
  }();
  return mt;
}
}  // namespace

attn::Params make_attn_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* sinks,
                              const Tensor& cu, const Tensor* used, int window, float scale) {
  attn::Params p{};
  p.q = q.data<__nv_bfloat16>();
  p.k = k.data<__nv_bfloat16>();
  p.v = v.data<__nv_bfloat16>();
  p.cu = cu.data<int>();
  p.used = used ? used->data<int>() : nullptr;
  p.nseq = static_cast<int>(cu.dim(0) - 1);
  p.sinks = sinks ? sinks->raw() : nullptr;
  p.sinks_bf16 = sinks && sinks->dtype == DType::BF16;
  p.T = static_cast<int>(q.dim(0));
  p.Hq = static_cast<int>(q.dim(1));
  p.Hkv = static_cast<int>(k.dim(1));
  p.G = p.Hq / p.Hkv;
  p.window = window;
  p.scale = scale;
  p.scale_log2 = scale * attn::kLog2e;
  return p;
}

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* sinks, const Tensor& cu,
                       const Tensor* used, int max_seqlen, int window, float scale, const Tensor& out,
                       const Tensor& lse) {
  DeviceGuard guard(q.device);
  if (q.dim(0) == 0) return;
  attn::Params p = make_attn_params(q, k, v, sinks, cu, used, window, scale);
  p.o = out.data<__nv_bfloat16>();
  p.lse = lse.data<float>();
  const int nseq = static_cast<int>(cu.dim(0) - 1);
  cudaStream_t st = stream_of(q.device);
  switch (q.dim(2)) {  // head_dim: 64 (gpt-oss), 128, and 16/32 for tiny models
    case 16: launch_fwd<16, 1>(p, nseq, max_seqlen, st); break;
    case 32: launch_fwd<32, 1>(p, nseq, max_seqlen, st); break;
    case 64: {
      const FwdMode mode = fwd_mode();
      const bool hopper = (attn::wgmma_mode_env() & 1) && attn::device_is_sm90(q.device);
      if (hopper && mode == FwdMode::WS && launch_fwd64_ws(p, nseq, max_seqlen, st))
        break;
      if (hopper && window <= 0)
        launch_fwd64_wgmma(p, nseq, max_seqlen, st);
      else if (fwd_mt() == 2)
        launch_fwd<64, 2>(p, nseq, max_seqlen, st);
      else
        launch_fwd<64, 1>(p, nseq, max_seqlen, st);
      break;
    }
    default: launch_fwd<128, 1>(p, nseq, max_seqlen, st);
  }
}

}  // namespace gptoss::cuda
