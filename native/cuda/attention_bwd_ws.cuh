// attention_bwd_ws.cuh: the warp-specialized Hopper backward for head_dim 64 with fused dQ (deterministic: false
// on sm_90, plan_backward in attention_heuristics.h). Per 64-query step each consumer warpgroup computes, for its
// 64 keys: S^T = K Q^T, dP^T = V dO^T, P^T, dV += P^T dO, dS^T = P^T (dP^T - D_i), dK += dS^T Q, and the dQ^T partial
// over the CTA's 128 keys, added to an fp32 accumulator by red.global.add.v4 (so no dQ kernel recomputes S and dP:
// 5 GEMM-equivalents per (query block, key block) instead of the deterministic pair's 7). The forward's
// (attention_fwd_ws.cu) structure:
//   - a producer warp loads K and V once (TMA) and streams, per 64-query step, the Q and dO tiles (TMA, [T, Hq, 64]
//     maps) and the step's lse and D_i rows (TMA on one-row maps of [Hq, T]) into a ring of STAGES slots guarded by
//     full / empty mbarriers; a step whose rows cross the sequence's real end is loaded with zero-filling cp.async
//     instead (padding may hold anything, and 0 * NaN is NaN);
//   - the two consumer warpgroups (64 keys each) wait only on mbarriers at the top of a step, with no CTA barrier and
//     no load instructions of their own; the only meeting point left is the dS exchange the dQ product needs
//     (named barrier over the 256 consumer threads);
//   - the producer warpgroup gives its registers to the consumers (setmaxnreg 24 / 240).
// The exponent is ex2.approx.ftz (dkdv_wgmma_kernel: exp2f), so dK / dV equal the deterministic pair's to rounding,
// not bitwise; dsinks comes from the shared pre kernel and is bitwise the same.
//
// Shared memory (1024-aligned): K, V [128][64] bf16; ring: Q, dO [STAGES][64][64] bf16, lse, D_i [STAGES][64] f32;
// dS [2 buffers][2 warpgroups][64 q][64 k] bf16 (128-byte swizzle, K-major); dQ staging [2 warpgroups][32][68] f32;
// the mbarriers.
#pragma once
#include "attention_bwd_kernels.cuh"
#include "tma.cuh"

namespace gptoss::cuda {
namespace attn {

// dQ staging: [2 warpgroups][32 query rows][kDqStgLd] f32, rows padded by 4 floats so that the transposed stores
// of the dQ^T accumulator are bank-conflict free.
constexpr int kDqStgLd = 68;

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
// its staging rows stg[q][d].
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

// Ring slots of the launched kernel: 3 measured 0-2% faster than 2 on an H100 (sliding windows, B8 S2048).
constexpr int kBwdWsStages = 3;

template <int STAGES>
struct BwdWsCfg {
  static_assert(STAGES >= 2, "the producer loads step t+1 while the consumers run step t");
  static constexpr int D = 64, BN = 128, BM = 64, NC = 2, NT = (NC + 1) * 128;
  // lse / D_i: a TMA box starts on a 16-byte aligned element (the step's first row rounded down to a multiple of
  // 4, so BM + 4 elements cover it); slots of 96 floats keep every box 128-byte aligned in shared memory.
  static constexpr int ROW_BOX = BM + 4, ROW_SLOT = 96;
  static constexpr int KV_BYTES = BN * D * 2, QT_BYTES = BM * D * 2, ROW_BYTES = ROW_SLOT * 4;
  static constexpr int OFF_V = KV_BYTES, OFF_Q = 2 * KV_BYTES, OFF_DO = OFF_Q + STAGES * QT_BYTES,
                       OFF_DS = OFF_DO + STAGES * QT_BYTES, OFF_L = OFF_DS + 2 * NC * BM * 64 * 2,
                       OFF_DL = OFF_L + STAGES * ROW_BYTES, OFF_STG = OFF_DL + STAGES * ROW_BYTES,
                       OFF_BAR = OFF_STG + NC * 32 * kDqStgLd * 4;
  static constexpr int SMEM = OFF_BAR + (2 * STAGES + 1) * 8 + 1024;  // + barriers, + 1024-byte alignment slack
  static constexpr uint32_t STEP_TX = 2 * QT_BYTES + 2 * ROW_BOX * 4;  // TMA bytes of one ring slot
};

struct BwdTmaMaps {
  CUtensorMap q, dout;  // [T, Hq, 64] bf16, box 64 rows
  CUtensorMap k, v;     // [T, Hkv, 64] bf16, box 128 rows
  CUtensorMap lse, dlt; // [Hq * T] f32, box BM + 4
};

// Host: the launched configuration's tensor maps over p's tensors; false when one cannot be made (no TMA in the
// driver, or an unaligned tensor).
inline bool encode_bwd_ws_maps(BwdTmaMaps* m, const Params& p) {
  using C = BwdWsCfg<kBwdWsStages>;
  const int64_t rows = static_cast<int64_t>(p.Hq) * p.T;
  return encode_head_tile_map(&m->q, p.q, p.T, p.Hq, C::BM) && encode_head_tile_map(&m->dout, p.dout, p.T, p.Hq, C::BM) &&
         encode_head_tile_map(&m->k, p.k, p.T, p.Hkv, C::BN) && encode_head_tile_map(&m->v, p.v, p.T, p.Hkv, C::BN) &&
         encode_f32_vector_map(&m->lse, p.lse, rows, C::ROW_BOX) && encode_f32_vector_map(&m->dlt, p.dlt, rows, C::ROW_BOX);
}

// Grid (nkb * Hkv, 1, nseq), kv head fastest (key block 0, the heaviest under a causal mask, of every head first);
// 384 threads: warpgroups 0, 1 consume (keys n0 + 64 wg ..), warpgroup 2 produces (one warp loads).
template <int STAGES>
__global__ void __launch_bounds__(384, 1) bwd_ws_kernel(const __grid_constant__ BwdTmaMaps maps, Params p) {
  using C = BwdWsCfg<STAGES>;
  constexpr int D = 64, BN = C::BN, BM = C::BM;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* base = smem_raw + ((((smem_u32(smem_raw) + 1023u) & ~1023u)) - smem_u32(smem_raw));
  const uint32_t sK_a = smem_u32(base), sV_a = sK_a + C::OFF_V, sQ_a = sK_a + C::OFF_Q, sdO_a = sK_a + C::OFF_DO,
                 sdS_a = sK_a + C::OFF_DS;
  float* sL = reinterpret_cast<float*>(base + C::OFF_L);    // [STAGES][ROW_SLOT] lse (natural log)
  float* sDl = reinterpret_cast<float*>(base + C::OFF_DL);  // [STAGES][ROW_SLOT] D_i
  float* sStg = reinterpret_cast<float*>(base + C::OFF_STG);
  const uint32_t bar_full = sK_a + C::OFF_BAR, bar_empty = bar_full + 8 * STAGES, bar_kv = bar_empty + 8 * STAGES;

  const int kb = static_cast<int>(blockIdx.x) / p.Hkv, kvh = static_cast<int>(blockIdx.x) % p.Hkv, s = blockIdx.z;
  const SeqInfo si = seq_info(p.cu, p.used, s);
  const int n0 = kb * BN;
  if (n0 >= si.len) return;
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D, kstride = static_cast<int64_t>(p.Hkv) * D;
  const int keys_here = min(BN, si.len - n0);
  // The query blocks that see any of this CTA's keys, for each query head of the group: niter steps.
  const KeyBlockBand band = key_block_band(p, si, n0, BN, BM);
  const int qb_lo = band.qb_lo, qb_hi = band.qb_lo + band.nqb, niter = band.niter;

  const int wg = warpgroup_uniform();
  const int wl = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  float dk[D / 8][4], dv[D / 8][4];
  auto zero_dkdv = [&] {
#pragma unroll
    for (int i = 0; i < D / 8; i++)
#pragma unroll
      for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0.f;
  };
  auto store_dkdv = [&] {
    store_dkdv_frags<D>(p, p.grad_f32, (si.start + n0) * kstride + kvh * D, kstride, wg * 64 + wl * 16 + g, keys_here,
                        dk, dv);
  };
  if (niter == 0) {  // keys no real query sees (padding): zero gradients
    if (wg < C::NC) {
      zero_dkdv();
      store_dkdv();
    }
    return;
  }

  if (threadIdx.x == 0) {
    for (int i = 0; i < STAGES; i++) {
      mbar_init(bar_full + 8 * i, 1);
      mbar_init(bar_empty + 8 * i, C::NC * 4);  // one arrival per consumer warp
    }
    mbar_init(bar_kv, 1);
    fence_mbar_init();
  }
  __syncthreads();

  // Step it: query head kvh * G + it / nqb, query rows i0 .. i0 + 63 of the sequence.
  // Steps in order: query heads kvh * G .. (outer), query blocks qb_lo .. qb_hi - 1 (inner). A Step walks them
  // (no per-step integer division).
  struct Step {
    int h, qb;
  };
  auto first_step = [&] { return Step{kvh * p.G, qb_lo}; };
  auto next_step = [&](Step& st) {
    if (++st.qb == qb_hi) {
      st.qb = qb_lo;
      st.h++;
    }
  };
  // Element of [Hq, T] holding the step's first lse / D_i; the row sits at element (that & 3) of its slot.
  auto step_row = [&](const Step& st) { return static_cast<int64_t>(st.h) * p.T + si.start + st.qb * BM; };

  if (wg == C::NC) {  // ---- producer warpgroup: warp 0 loads, the other three only give their registers away
    regs_shrink<24>();
    if (wl != 0) return;
    // Copies `rows` x 64 bf16 rows (global row stride `stride`) into a 128-byte swizzled tile by cp.async, rows at
    // or past `nvalid` zero-filled: tiles that cross the sequence's real end.
    auto copy_rows = [&](uint32_t dst, const __nv_bfloat16* src, int64_t stride, int rows, int nvalid) {
      for (int c = lane; c < rows * 8; c += 32) {
        const int r = c >> 3, ch = c & 7;
        const bool ok = r < nvalid;
        cp_async16(dst + r * 128 + ((ch ^ (r & 7)) << 4), src + (ok ? r * stride + ch * 8 : 0), ok);
      }
    };
    auto finish_copies = [&](uint32_t bar) {  // cp.async writes (generic proxy) -> visible to wgmma, then arrive
      cp_async_commit();
      cp_async_wait<0>();
      fence_proxy_async();
      __syncwarp();
      if (lane == 0) mbar_arrive(bar);
    };
    if (n0 + BN <= si.used) {
      if (lane == 0) {
        tma_prefetch_desc(&maps.q);
        tma_prefetch_desc(&maps.dout);
        mbar_arrive_expect_tx(bar_kv, 2 * C::KV_BYTES);
        tma_load_3d(sK_a, &maps.k, bar_kv, 0, kvh, si.start + n0);
        tma_load_3d(sV_a, &maps.v, bar_kv, 0, kvh, si.start + n0);
      }
    } else {
      const int64_t off = (si.start + n0) * kstride + kvh * D;
      copy_rows(sK_a, p.k + off, kstride, BN, si.used - n0);
      copy_rows(sV_a, p.v + off, kstride, BN, si.used - n0);
      finish_copies(bar_kv);
    }
    Step stp = first_step();
    for (int it = 0; it < niter; it++) {
      const int slot = it % STAGES;
      const uint32_t full = bar_full + 8 * slot, dQ = sQ_a + slot * C::QT_BYTES, dO = sdO_a + slot * C::QT_BYTES;
      float* dL = sL + slot * C::ROW_SLOT;
      float* dD = sDl + slot * C::ROW_SLOT;
      mbar_wait(bar_empty + 8 * slot, ((it / STAGES) & 1) ^ 1);
      const int h = stp.h, i0 = stp.qb * BM;
      const int64_t row = step_row(stp);
      next_step(stp);
      if (i0 + BM <= si.used) {
        if (lane == 0) {
          mbar_arrive_expect_tx(full, C::STEP_TX);
          tma_load_3d(dQ, &maps.q, full, 0, h, si.start + i0);
          tma_load_3d(dO, &maps.dout, full, 0, h, si.start + i0);
          tma_load_row(smem_u32(dL), &maps.lse, full, static_cast<int>(row & ~int64_t{3}));
          tma_load_row(smem_u32(dD), &maps.dlt, full, static_cast<int>(row & ~int64_t{3}));
        }
      } else {
        const int nv = si.used - i0;
        const int64_t off = (si.start + i0) * qstride + h * D;
        copy_rows(dQ, p.q + off, qstride, BM, nv);
        copy_rows(dO, p.dout + off, qstride, BM, nv);
        for (int r = lane; r < BM; r += 32) {
          const bool ok = r < nv;
          cp_async4(dL + (row & 3) + r, p.lse + row + (ok ? r : 0), ok);
          cp_async4(dD + (row & 3) + r, p.dlt + row + (ok ? r : 0), ok);
        }
        finish_copies(full);
      }
    }
    return;
  }

  // ---- consumer warpgroup wg: keys n0 + 64 wg .. + 63
  regs_grow<240>();
  const int kmin = n0 + wg * 64 + wl * 16;  // this warp's keys: kmin .. kmin + 15
  // dQ^T partial of the last issued step, in flight until the next step's S^T wait (rows of query head pend_h from
  // pend_r0; before the first step zeros at pend_r0 = si.used, so nothing is added).
  float dqt[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++) dqt[i][0] = dqt[i][1] = dqt[i][2] = dqt[i][3] = 0.f;
  int pend_h = 0, pend_r0 = si.used;
  float* stg = sStg + wg * (32 * kDqStgLd);
  // The finished dQ^T partial (rows d = 16 wl + g (+8), cols q = 8 i + 2 t4 (+1) of this warpgroup's 32 query rows)
  // -> staging rows [q][d] -> p.dq_acc ([Hq, T, 64] f32) by red.global.add.v4, rows past the real length left out.
  auto dq_out = [&](int hq, int r0) {
    stage_dq(stg, dqt, wl, g, t4);
    bar_sync(2 + wg, 128);
    red_staged_dq(p.dq_acc + (static_cast<int64_t>(hq) * p.T + si.start + r0) * D, stg, min(32, si.used - r0),
                  threadIdx.x & 127);
  };

  zero_dkdv();
  mbar_wait(bar_kv, 0);
  int it = 0;
  Step stp = first_step();
  do {  // niter >= 1; with a for loop ptxas serializes the wgmmas (C7515: it sees the final dq_out's path from an
        // empty loop)
    const int slot = it % STAGES, dsb = it & 1;
    mbar_wait(bar_full + 8 * slot, (it / STAGES) & 1);
    const int i0 = stp.qb * BM;
    const int lo = static_cast<int>(step_row(stp) & 3);
    const float* cL = sL + slot * C::ROW_SLOT + lo;
    const float* cDl = sDl + slot * C::ROW_SLOT + lo;
    const uint64_t dQk = wg_desc(sQ_a + slot * C::QT_BYTES), dOk = wg_desc(sdO_a + slot * C::QT_BYTES);

    float st[BM / 8][4], dpt[BM / 8][4];  // fresh products (scale_d 0 on their first k step): no zeroing
    acc_undef<BM / 8>(st);
    acc_undef<BM / 8>(dpt);
    const bool need_mask =
        (i0 < kmin + 15) || (p.window > 0 && i0 + BM - 1 - kmin >= p.window) || (i0 + BM > si.used);
    uint32_t pa[BM / 16][4], da[BM / 16][4];
    // S^T = K Q^T and dP^T = V dO^T with both operands in shared memory (A = this warpgroup's 64 K / V rows,
    // K-major): no per-step ldmatrix of K / V fragments, and 32 registers fewer.
    const uint64_t dKw = wg_desc(sK_a + wg * 64 * 128), dVw = wg_desc(sV_a + wg * 64 * 128);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) wgmma_ss<BM>(st, dKw + 2 * kk, dQk + 2 * kk, kk > 0);
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) wgmma_ss<BM>(dpt, dVw + 2 * kk, dOk + 2 * kk, kk > 0);
    wgmma_commit();
    // The previous step's dQ product ran over the S^T and dP^T issue; written out now. wait_group 0 (so also S^T
    // and dP^T: the softmax then no longer overlaps dP^T, but the two products issue back to back, ~2% faster on an
    // H100) and no branch: with wait_group 1, or a branch around wgmmas, ptxas serializes every wgmma (C7514 /
    // C7518).
    wgmma_wait<0>();
    fence_acc<4>(dqt);
    dq_out(pend_h, pend_r0);
    fence_acc<BM / 8>(st);
    // P^T: keys kmin + g (+8), queries i0 + cl. Masked entries are set to -inf first, in one branch around the
    // whole tile (the branch per element that a select inside the exponent loop compiles to costs ~100
    // instructions per step even when nothing is masked); then P^T = 2^(S^T scale log2(e) - lse log2(e)).
    if (need_mask) {
      // Key krow sees queries krow .. min(krow + window, used) - 1: per key row a range of this thread's column
      // offsets c = 8 i + (e & 1) (queries i0 + 2 t4 + c), so each element costs two compares and a select.
      int c_lo[2], c_hi[2];
#pragma unroll
      for (int r = 0; r < 2; r++) {
        const int krow = kmin + g + 8 * r, base = i0 + 2 * t4;
        c_lo[r] = krow - base;
        c_hi[r] = (p.window > 0 ? min(si.used, krow + p.window) : si.used) - base;
      }
#pragma unroll
      for (int i = 0; i < BM / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int c = 8 * i + (e & 1), r = e >> 1;
          st[i][e] = (c >= c_lo[r] && c < c_hi[r]) ? st[i][e] : -INFINITY;
        }
    }
#pragma unroll
    for (int i = 0; i < BM / 8; i++)
#pragma unroll
      for (int c = 0; c < 2; c++) {
        const float l2 = __fmul_rn(cL[i * 8 + 2 * t4 + c], kLog2e);
        st[i][c] = fast_exp2(fmaf(st[i][c], p.scale_log2, -l2));
        st[i][c + 2] = fast_exp2(fmaf(st[i][c + 2], p.scale_log2, -l2));
      }
    pack_a_frags(st, pa);
    wgmma_rs_mn_chain(dv, pa, dOk);  // dV += P^T dO
    wgmma_wait<1>();  // dP^T ready, the dV group may still run
    fence_acc<BM / 8>(dpt);
    ds_from_p(dpt, st, cDl, t4);
    pack_a_frags(dpt, da);
    store_ds_tile(sdS_a + dsb * 16384 + wg * 8192, da, wl, lane);  // dS tile (dsb, wg)
    wgmma_rs_mn_chain(dk, da, dQk);  // dK += dS^T Q
    fence_proxy_async();  // dS written by stmatrix (generic proxy), read by wgmma (async proxy)
    bar_sync(1, C::NC * 128);
    // dQ^T[64 d x 32 q] = K^T[64 d x 128 k] . dS^T[128 k x 32 q] for this warpgroup's 32 query rows.
    acc_undef<4>(dqt);
    wgmma_fence();
    const uint64_t ak = wg_desc(sK_a), bq = wg_desc(sdS_a + dsb * 16384 + wg * 32 * 128);
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++)
      wgmma_ss_n32<1, 0>(dqt, ak + 128 * kk, bq + (kk >> 2) * (8192 >> 4) + 2 * (kk & 3), kk > 0);
    wgmma_commit();
    wgmma_wait<1>();  // the dK group (it reads this slot's Q); the dQ product stays in flight
    fence_acc<D / 8>(dv);
    fence_acc<D / 8>(dk);
    __syncwarp();
    if (lane == 0) mbar_arrive(bar_empty + 8 * slot);  // this warp no longer reads the slot
    pend_h = stp.h;
    next_step(stp);
    pend_r0 = i0 + wg * 32;
  } while (++it < niter);
  wgmma_wait<0>();
  fence_acc<4>(dqt);
  dq_out(pend_h, pend_r0);
  store_dkdv();
}

}  // namespace attn
}  // namespace gptoss::cuda
