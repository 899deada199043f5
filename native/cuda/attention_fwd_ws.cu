// attention_fwd_ws.cu: the warp-specialized Hopper forward for head_dim 64 (chosen by plan_forward,
// attention_heuristics.h), the FlashAttention-3 structure: a producer warp loads Q once and streams K/V tiles by TMA
// into a ring of shared-memory slots guarded by mbarriers; two consumer warpgroups (64 query rows each, BM 128) run
// S = Q.K^T (wgmma, both operands in shared memory) and O += P.V (wgmma, P in registers), each at its own pace: no
// CTA-wide barrier in the loop. The producer warpgroup gives its registers to the consumers (setmaxnreg 24 / 240).
//
// Per consumer warpgroup, tiles t of its key range (S_{t-1} complete on entry of step t, PV_{t-1} maybe in flight):
//   wait full(t); issue S_t                                   (async)
//   wait_group 1 -> PV_{t-2} complete: release slot of t-2    (S_t stays in flight)
//   mask + online softmax of S_{t-1}, P_{t-1} in bf16          <- overlaps the tensor cores' S_t
//   O *= alpha; issue O += P_{t-1}.V_{t-1}                    (async)
//   wait_group 1 -> S_t complete                               (PV_{t-1} stays in flight into the next step)
// A warpgroup thus holds at most tiles t-2, t-1 while waiting for t: the ring needs STAGES >= 3.
//
// Masks, sinks, padding and packing follow fwd_kernel (attention_fwd.cu): the running max starts at the sink logit,
// e^{sink - m} joins the denominator at the end, key tiles outside the causal / window band are skipped per
// warpgroup, and only tiles that cross the band edge are masked element by element. K/V rows past a sequence's
// real length must read as zeros (padding may hold anything, and 0 * NaN is NaN): a tile that crosses the end is
// loaded with zero-filling cp.async by the producer warp instead of TMA.
#include <cuda.h>

#include "attention.h"
#include "attention_common.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace gptoss::cuda {
namespace attn {

// One shared-memory layout for the kernel and its launcher.
template <int BN, int STAGES>
struct FwdWsCfg {
  static_assert(STAGES >= 3, "a consumer holds two slots while it waits for the third");
  static constexpr int D = 64, NC = 2, BM = NC * 64, NT = (NC + 1) * 128;
  static constexpr int Q_BYTES = BM * D * 2, TILE_BYTES = BN * D * 2;  // Q block; one K or V tile
  // Q is double-buffered: the producer loads the next head's block while the consumers finish this one.
  static constexpr int OFF_K = 2 * Q_BYTES, OFF_V = OFF_K + STAGES * TILE_BYTES, OFF_BAR = OFF_V + STAGES * TILE_BYTES;
  static constexpr int NBAR = 2 * STAGES + 4;                     // full, empty per slot; q full, q empty per buffer
  static constexpr int SMEM = OFF_BAR + NBAR * 8 + 1024;          // + barriers, + 1024-byte alignment slack
};

struct FwdTmaMaps {
  CUtensorMap q, k, v;  // [T, Hq, 64] box BM x 64; [T, Hkv, 64] box BN x 64 (both)
};

// Grid (query blocks, Hq / hpc, nseq): one CTA = one 128-row query block of hpc query heads of one kv head.
//   HEADS = false (hpc 1): the K/V band streams through the ring, slots released as the consumers finish them.
//   HEADS = true (sliding windows; plan_forward guarantees the band's kb_hi - kb_lo <= STAGES tiles): the band is
//     loaded once and stays resident for all hpc heads; Q is double-buffered, so the producer loads head j+1's block
//     while the consumers work on head j, and each consumer warpgroup pipelines across head boundaries (below). A
//     window-128 band is two or three tiles per warpgroup, so with one head per CTA the start-up and epilogue
//     latency was a large share of a CTA's time. (HEADS = false compiles the head bookkeeping away.)
template <int BN, int STAGES, bool HEADS>
__global__ void __launch_bounds__(384, 1) fwd_ws_kernel(const __grid_constant__ FwdTmaMaps maps, Params p, int hpc) {
  using C = FwdWsCfg<BN, STAGES>;
  if constexpr (!HEADS) hpc = 1;  // a constant: the head loops below fold away
  constexpr int D = 64, BM = C::BM, NC = C::NC;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* base = smem_raw + ((((smem_u32(smem_raw) + 1023u) & ~1023u)) - smem_u32(smem_raw));
  const uint32_t sQ_a = smem_u32(base), sK_a = sQ_a + C::OFF_K, sV_a = sQ_a + C::OFF_V;
  const uint32_t bar_full = sQ_a + C::OFF_BAR, bar_empty = bar_full + STAGES * 8, bar_q = bar_empty + STAGES * 8,
                 bar_qe = bar_q + 16;  // bar_q, bar_qe: [2] (Q buffer b = head index & 1)

  const int mb = gridDim.x - 1 - blockIdx.x;  // longest (last) query blocks first
  const int h_first = blockIdx.y * hpc, s = blockIdx.z;
  const SeqInfo si = seq_info(p.cu, p.used, s);
  const int q0 = mb * BM;
  if (q0 >= si.len) return;
  if (q0 >= si.used) {
    const int rows_here = min(BM, si.len - q0);
    // zero rows + lse 0 (as zero_padding_block, per head)
    const int64_t qstride = static_cast<int64_t>(p.Hq) * D;
    for (int j = 0; j < hpc; j++) {
      const int h = h_first + j;
      for (int i = threadIdx.x; i < rows_here * D; i += C::NT)
        p.o[(si.start + q0 + i / D) * qstride + h * D + i % D] = __float2bfloat16(0.f);
      for (int r = threadIdx.x; r < rows_here; r += C::NT) p.lse[static_cast<int64_t>(h) * p.T + si.start + q0 + r] = 0.f;
    }
    return;
  }
  const int kvh = h_first / p.G;
  // Key tiles any real row of the CTA can see: [kb_lo, kb_hi). The producer loads all of them in order, once.
  // (key_tiles_seen, written out: through the helper, ptxas compiles this kernel differently.)
  const int n_lo = p.window > 0 ? max(0, q0 - p.window + 1) : 0;
  const int n_hi = min(q0 + BM, si.used);
  const int kb_lo = n_lo / BN, kb_hi = (n_hi + BN - 1) / BN;
  // HEADS: plan_forward guarantees kb_hi - kb_lo <= STAGES, so tile t sits in slot t - kb_lo (phase 0) for every
  // head and is never released. One head: the ring as usual (slot (t - kb_lo) % STAGES).

  if (threadIdx.x == 0) {
    for (int i = 0; i < STAGES; i++) {
      mbar_init(bar_full + 8 * i, 1);
      mbar_init(bar_empty + 8 * i, NC * 4);  // one arrival per consumer warp
    }
    for (int b = 0; b < 2; b++) {
      mbar_init(bar_q + 8 * b, 1);
      mbar_init(bar_qe + 8 * b, NC * 4);
    }
    fence_mbar_init();
  }
  __syncthreads();

  const int wg = warpgroup_uniform();
  const int wl = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;

  if (wg == NC) {  // ---- producer warpgroup: warp 0 loads, the other three only give their registers away
    regs_shrink<24>();
    if (wl != 0) return;
    const int64_t kstride = static_cast<int64_t>(p.Hkv) * D;
    if (lane == 0) {
      tma_prefetch_desc(&maps.k);
      tma_prefetch_desc(&maps.v);
    }
    for (int j = 0; j < hpc; j++) {
      const int b = j & 1;
      if (lane == 0) {
        if (HEADS) mbar_wait(bar_qe + 8 * b, ((j >> 1) & 1) ^ 1);  // the buffer's previous head is done
        mbar_arrive_expect_tx(bar_q + 8 * b, C::Q_BYTES);
        tma_load_3d(sQ_a + b * C::Q_BYTES, &maps.q, bar_q + 8 * b, 0, h_first + j, si.start + q0);
      }
      if (j > 0) continue;
      for (int kb = kb_lo; kb < kb_hi; kb++) {
        const int n = kb - kb_lo, slot = n % STAGES;
        const uint32_t full = bar_full + 8 * slot;
        const uint32_t dK = sK_a + slot * C::TILE_BYTES, dV = sV_a + slot * C::TILE_BYTES;
        mbar_wait(bar_empty + 8 * slot, ((n / STAGES) & 1) ^ 1);
        const int n0 = kb * BN;
        if (n0 + BN <= si.used) {
          if (lane == 0) {
            mbar_arrive_expect_tx(full, 2 * C::TILE_BYTES);
            tma_load_3d(dK, &maps.k, full, 0, kvh, si.start + n0);
            tma_load_3d(dV, &maps.v, full, 0, kvh, si.start + n0);
          }
        } else {
          // The tile crosses the sequence's real end: rows >= used are zero-filled (same swizzle as the TMA's).
          const __nv_bfloat16* gK = p.k + (si.start + n0) * kstride + kvh * D;
          const __nv_bfloat16* gV = p.v + (si.start + n0) * kstride + kvh * D;
          for (int c = lane; c < BN * 8; c += 32) {
            const int r = c >> 3, ch = c & 7;
            const bool ok = n0 + r < si.used;
            const int64_t go = ok ? r * kstride + ch * 8 : 0;
            const uint32_t so = r * 128 + ((ch ^ (r & 7)) << 4);
            cp_async16(dK + so, gK + go, ok);
            cp_async16(dV + so, gV + go, ok);
          }
          cp_async_commit();
          cp_async_wait<0>();
          fence_proxy_async();  // generic-proxy writes, read by wgmma (async proxy)
          __syncwarp();
          if (lane == 0) mbar_arrive(full);
        }
      }
    }
    return;
  }

  // ---- consumer warpgroup wg: query rows q0 + 64 wg .. +63 of each of the CTA's heads
  regs_grow<240>();
  const int g = lane >> 2, t4 = lane & 3;
  const int wq0 = q0 + wg * 64;     // first row of this warpgroup
  const int wrow0 = wq0 + wl * 16;  // first row of this warp; thread rows wrow0 + g (+8)
  // This warpgroup's key tiles [w_lo, w_hi) within the CTA's; none when all its rows are padding.
  const int wn_lo = p.window > 0 ? max(0, wq0 - p.window + 1) : 0;
  const int w_lo = max(kb_lo, wn_lo / BN);
  const int w_hi = wq0 < si.used ? min(kb_hi, (min(wq0 + 64, si.used) + BN - 1) / BN) : w_lo;

  auto full_wait = [&](int t) { mbar_wait(bar_full + 8 * ((t - kb_lo) % STAGES), ((t - kb_lo) / STAGES) & 1); };
  auto release = [&](int t) {  // this warp no longer reads tile t's slot (HEADS: kept for every head)
    if constexpr (!HEADS) {
      __syncwarp();
      if (lane == 0) mbar_arrive(bar_empty + 8 * ((t - kb_lo) % STAGES));
    }
  };
  auto q_wait = [&](int j) { mbar_wait(bar_q + 8 * (j & 1), (j >> 1) & 1); };
  auto release_q = [&](int j) {  // this warp's S products of head j are done: the producer may refill its Q buffer
    if constexpr (HEADS) {
      __syncwarp();
      if (lane == 0) mbar_arrive(bar_qe + 8 * (j & 1));
    }
  };

  const float scale2 = p.scale_log2;
  float sink2;           // the current head's sink logit (log2 domain)
  float m_r[2], l_r[2];  // running max (log2 domain, scaled) and sum, rows g, g+8
  float acc[D / 8][4];
  float sA[BN / 8][4], sB[BN / 8][4];  // ping-pong S accumulators (64 x BN per warpgroup)
  uint32_t pa[BN / 16][4];             // P of the current tile in bf16: the A fragments of P.V
  float alpha[2];

  auto start_head = [&](int j) {  // online-softmax state of head j: max at the sink logit, nothing summed
    sink2 = sink_log2(p, h_first + j);
    m_r[0] = m_r[1] = sink2;
    l_r[0] = l_r[1] = 0.f;
#pragma unroll
    for (int i = 0; i < D / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  };
  // Epilogue of head j (its last P.V complete): O / l (the sink in the denominator), lse = ln(sum) in natural log;
  // padding rows 0.
  auto finish_head = [&](int j) {
    fence_acc<D / 8>(acc);
    float lsum[2];
#pragma unroll
    for (int r = 0; r < 2; r++) lsum[r] = quad_sum(l_r[r]) + fast_exp2(sink2 - m_r[r]);
#pragma unroll
    for (int r = 0; r < 2; r++) store_out_row<D>(p, si, h_first + j, wrow0 + g + r * 8, r, t4, acc, m_r[r], lsum[r]);
  };
  auto issue_s = [&](float (&sn)[BN / 8][4], const int t, const int j) {  // sn = Q_j.K_t^T (async, one group)
    const uint64_t dQ = wg_desc(sQ_a + (HEADS ? j & 1 : 0) * C::Q_BYTES + wg * 64 * D * 2);
    const uint64_t dK = wg_desc(sK_a + ((t - kb_lo) % STAGES) * C::TILE_BYTES);
    acc_undef<BN / 8>(sn);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) wgmma_ss<BN>(sn, dQ + 2 * kk, dK + 2 * kk, kk > 0);  // +32 B per k step
    wgmma_commit();
  };
  // Mask and online softmax of the complete S of tile t (raw scores in sc; exponentiated in place): alpha, m_r, l_r.
  // The max is taken on raw scores (scale > 0) and the scale is folded into one FFMA per element.
  auto softmax = [&](float (&sc)[BN / 8][4], const int t) {
    const int n0 = t * BN;
    const bool need_mask = (n0 + BN - 1 > wrow0) || (p.window > 0 && n0 < wrow0 + 16 - p.window);
    if (need_mask) {
      // Query row sees keys max(row - window + 1, 0) .. row: per row a range of this thread's column offsets
      // c = 8 i + (e & 1) (keys n0 + 2 t4 + c), so each element costs two compares and a select.
      int c_lo[2], c_hi[2];
#pragma unroll
      for (int r = 0; r < 2; r++) {
        const int row = wrow0 + g + 8 * r, base = n0 + 2 * t4;
        c_lo[r] = (p.window > 0 ? row - p.window + 1 : INT_MIN / 2) - base;
        c_hi[r] = row + 1 - base;
      }
#pragma unroll
      for (int i = 0; i < BN / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int c = 8 * i + (e & 1), r = e >> 1;
          sc[i][e] = (c >= c_lo[r] && c < c_hi[r]) ? sc[i][e] : -INFINITY;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < BN / 8; i++) mx = fmaxf(mx, fmaxf(sc[i][2 * r], sc[i][2 * r + 1]));
      mx = fmaxf(m_r[r], quad_max(mx) * scale2);
      const float base = mx == -INFINITY ? 0.f : mx;
      alpha[r] = fast_exp2(m_r[r] - base);
      m_r[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < BN / 8; i++) {
        sc[i][2 * r] = fast_exp2(fmaf(sc[i][2 * r], scale2, -base));
        sc[i][2 * r + 1] = fast_exp2(fmaf(sc[i][2 * r + 1], scale2, -base));
        sum += sc[i][2 * r] + sc[i][2 * r + 1];
      }
      l_r[r] = l_r[r] * alpha[r] + sum;
    }
  };
  auto rescale_issue_pv = [&](const int t) {  // O *= alpha (O complete), then O += P.V_t (async, one group)
    fence_acc<D / 8>(acc);
#pragma unroll
    for (int i = 0; i < D / 8; i++) {
      acc[i][0] *= alpha[0];
      acc[i][1] *= alpha[0];
      acc[i][2] *= alpha[1];
      acc[i][3] *= alpha[1];
    }
    wgmma_rs_mn_chain(acc, pa, wg_desc(sV_a + ((t - kb_lo) % STAGES) * C::TILE_BYTES));
  };

  // The warpgroup walks one flat sequence of (head j, tile t) positions: heads in order, tiles w_lo .. w_hi - 1 of
  // each (the band is the same for every head). The pipeline runs across head boundaries: the next head's first
  // S is issued before the current head's last softmax, and a head's epilogue runs while the next head's S
  // products are on the tensor cores.
  struct Pos {
    int t, j;
  };
  auto advance = [&](Pos& x) {
    ++x.t;
    if (HEADS && x.t == w_hi) {  // one head: the positions are the tiles
      x.t = w_lo;
      x.j++;
    }
  };
  auto before = [&](const Pos& x) {  // the position before x (x is not the first)
    return HEADS && x.t == w_lo ? Pos{w_hi - 1, x.j - 1} : Pos{x.t - 1, x.j};
  };
  // Position u (S_u issued here) after position u - 1 (its S complete in sc).
  auto step = [&](float (&sn)[BN / 8][4], float (&sc)[BN / 8][4], const Pos& u) {
    const Pos prev = before(u);
    if (HEADS && u.t == w_lo) q_wait(u.j);
    full_wait(u.t);
    issue_s(sn, u.t, u.j);
    wgmma_wait<1>();  // PV_{u-2} complete (S_u, the newest group, stays in flight)
    if (!HEADS && u.t - 2 >= w_lo) release(u.t - 2);
    if (HEADS && prev.t == w_lo && prev.j > 0) {  // u - 1 opens a head: the previous one is complete
      finish_head(prev.j - 1);
      start_head(prev.j);
    }
    softmax(sc, prev.t);
    pack_a_frags(sc, pa);
    rescale_issue_pv(prev.t);
    wgmma_wait<1>();  // S_u complete (PV_{u-1} stays in flight)
    fence_acc<BN / 8>(sn);
    if (u.t == w_hi - 1) release_q(u.j);
  };
  // The final position (head j, tile w_hi - 1), its S complete; head j's epilogue follows.
  auto last = [&](float (&sc)[BN / 8][4], const int j) {
    if (HEADS && w_lo == w_hi - 1 && j > 0) {  // it opens head j: the previous one is complete
      wgmma_wait<0>();
      finish_head(j - 1);
      start_head(j);
    }
    softmax(sc, w_hi - 1);
    wgmma_wait<0>();  // PV of the position before
    if (!HEADS && w_hi - 2 >= w_lo) release(w_hi - 2);
    pack_a_frags(sc, pa);
    rescale_issue_pv(w_hi - 1);
    wgmma_wait<0>();
    release(w_hi - 1);
  };

  if constexpr (!HEADS) {
    // Tiles of the CTA range outside this warpgroup's band: wait until loaded (keeps the ring's phases in order),
    // then release at once. (HEADS: nothing is ever released.)
    for (int t = kb_lo; t < w_lo; t++) {
      full_wait(t);
      release(t);
    }
  }
  if (w_lo < w_hi) {
    // Position u's S lives in sA when u is even, in sB when odd.
    Pos u{w_lo, 0};
    start_head(0);
    q_wait(0);
    full_wait(w_lo);
    issue_s(sA, w_lo, 0);
    wgmma_wait<0>();
    fence_acc<BN / 8>(sA);
    if (w_lo == w_hi - 1) release_q(0);
    advance(u);
    // k = u's index of npos positions; pairs keep the sA / sB roles fixed in the code.
    const int npos = hpc * (w_hi - w_lo);
    int k = 1;
    for (; k + 1 < npos; k += 2) {
      step(sB, sA, u);
      advance(u);
      step(sA, sB, u);
      advance(u);
    }
    if (k < npos) {
      step(sB, sA, u);
      last(sB, hpc - 1);
    } else {
      last(sA, hpc - 1);
    }
  } else {
    // No key tile for this warpgroup (all its rows are padding): zero rows, lse 0 for every head.
    for (int j = 0; j < hpc; j++) {
      if (HEADS) q_wait(j);
      release_q(j);
      if (j > 0) finish_head(j - 1);
      start_head(j);
    }
  }
  if constexpr (!HEADS) {
    for (int t = w_hi; t < kb_hi; t++) {
      full_wait(t);
      release(t);
    }
  }
  finish_head(hpc - 1);
}

}  // namespace attn

// ---- host -----------------------------------------------------------------------------------------------------
namespace {
template <int BN, int STAGES>
bool launch_fwd_ws_t(const attn::Params& p, int nseq, int max_seqlen, int hpc, cudaStream_t st) {
  using C = attn::FwdWsCfg<BN, STAGES>;
  static_assert(C::BM == attn::kFwdWsQueryRows, "plan_forward's band arithmetic assumes this CTA height");
  attn::FwdTmaMaps maps;
  if (!encode_head_tile_map(&maps.q, p.q, p.T, p.Hq, C::BM) || !encode_head_tile_map(&maps.k, p.k, p.T, p.Hkv, BN) ||
      !encode_head_tile_map(&maps.v, p.v, p.T, p.Hkv, BN))
    return false;
  static bool configured = false;
  if (!configured) {
    GPTOSS_CUDA_CHECK(cudaFuncSetAttribute(attn::fwd_ws_kernel<BN, STAGES, false>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM),
                      "attentionForward: cudaFuncSetAttribute");
    GPTOSS_CUDA_CHECK(cudaFuncSetAttribute(attn::fwd_ws_kernel<BN, STAGES, true>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM),
                      "attentionForward: cudaFuncSetAttribute");
    configured = true;
  }
  dim3 grid(ceil_div(max_seqlen, C::BM), p.Hq / hpc, nseq);
  if (hpc > 1)
    attn::fwd_ws_kernel<BN, STAGES, true><<<grid, C::NT, C::SMEM, st>>>(maps, p, hpc);
  else
    attn::fwd_ws_kernel<BN, STAGES, false><<<grid, C::NT, C::SMEM, st>>>(maps, p, 1);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionForward: kernel launch");
  return true;
}
}  // namespace

// The two configurations plan_forward chooses: 64-key tiles in 5 slots (short windows), 128-key tiles in 4.
bool launch_fwd_ws(const attn::FwdPlan& plan, const attn::Params& p, int nseq, int max_seqlen, cudaStream_t st) {
  if (plan.key_tile == 64 && plan.stages == 5)
    return launch_fwd_ws_t<64, 5>(p, nseq, max_seqlen, plan.heads_per_cta, st);
  if (plan.key_tile == 128 && plan.stages == 4)
    return launch_fwd_ws_t<128, 4>(p, nseq, max_seqlen, plan.heads_per_cta, st);
  fail("attentionForward: no warp-specialized kernel for ", plan.key_tile, "-key tiles in ", plan.stages, " slots");
}

}  // namespace gptoss::cuda
