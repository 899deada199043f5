// moe_gemm.cuh: grouped BF16 GEMM for the MoE experts (mma.sync m16n8k16 tensor cores, cp.async multi-stage
// pipeline, ldmatrix from XOR-swizzled shared memory), with fused epilogues.
//
// Two grouping modes over the expert segments offsets[e] .. offsets[e+1]-1 of the permuted rows:
//  - rows (MODE_K = false): C[off_e + m, n] = Σ_k A[off_e + m, k] · B_e[k, n], one M tile never spans two
//    experts. A is [rows, K] (K contiguous, the rows in expert order); B_e is the expert's weight, stored
//    [K, N] (forward: x·W) or [N, K] (B_KMAJOR, backward data: dy·Wᵀ).
//  - reduction (MODE_K = true): C_e[m, n] = Σ_{r in segment e} A[r, m] · B[r, n] (weight gradients): A stored
//    [rows, M], B [rows, N]; f32 output per expert.
//  - dense (rows mode with offsets null): one segment of M rows, C[m, n] = Σ_k A[m, k] · B[k, n] (E = 1): a plain
//    linear, the batch-invariant one (invariant_linear.cu).
// All of M/N/K are multiples of 8 (16-byte chunks); partial tiles are zero-filled.
#pragma once
#include <cstdint>

#include "common.cuh"

namespace gptoss::cuda::moe_gemm {

enum Epi : int {
  kEpiBiasBf16 = 0,   // C = bf16(acc + bias_e[n])
  kEpiGuSwiglu = 1,   // gu = bf16(acc + bias_e[n]) (C); h = bf16(swiglu(gate, up)) (C2, column n/2)
  kEpiDSwiglu = 2,    // acc = dh at column n of I; C = dgu (bf16, 2I columns) from gu (aux)
  kEpiBf16 = 3,       // C = bf16(acc)
  kEpiF32 = 4,        // C_e = acc (f32; MODE_K, or the dense rows mode)
  kEpiBiasF32 = 5,    // C = acc + bias_e[n] (f32)
};

struct Params {
  const __nv_bfloat16* A = nullptr;
  int64_t lda = 0;
  const __nv_bfloat16* B = nullptr;
  int64_t ldb = 0, b_expert_stride = 0;
  int M = 0, N = 0, K = 0;  // rows mode: N, K (and M, dense); reduction mode: M, N
  const int32_t* offsets = nullptr;  // [E+1] on the device; null in rows mode: one dense segment of M rows
  int E = 0;
  void* C = nullptr;
  int64_t ldc = 0, c_expert_stride = 0;
  const __nv_bfloat16* bias = nullptr;  // [E, N]
  __nv_bfloat16* C2 = nullptr;
  int64_t ldc2 = 0;
  const __nv_bfloat16* aux = nullptr;
  int64_t ld_aux = 0;
  float limit = 7.f;
  int m_slots = 0;  // rows mode: M tiles in the grid (upper bound of the real count)
  int n_tiles = 0, m_tiles = 0;
};

constexpr float kAlpha = 1.702f;

// Element (row, col) of a [rows][W] bf16 tile stored with its 16-byte chunks XOR-permuted per row, so that the
// 8 row addresses of an ldmatrix (and the cp.async writes) fall in distinct bank groups.
template <int W>
__device__ __forceinline__ int swz(int row, int col) {
  static_assert(W >= 64, "tiles need 8 or more 16-byte chunks per row (a 128-byte bank line)");
  return row * W + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float rbf(float v) { return __bfloat162float(__float2bfloat16(v)); }

__device__ __forceinline__ float swiglu_f(float g, float u, float limit) {
  g = fminf(g, limit);
  u = fmaxf(-limit, fminf(u, limit));
  return (u + 1.f) * g / (1.f + __expf(-kAlpha * g));
}

__device__ __forceinline__ void swiglu_grad_f(float g, float u, float limit, float dh, float& dg, float& du) {
  const float gc = fminf(g, limit), uc = fmaxf(-limit, fminf(u, limit));
  const float s = 1.f / (1.f + __expf(-kAlpha * gc));
  dg = g <= limit ? dh * (uc + 1.f) * (s + gc * kAlpha * s * (1.f - s)) : 0.f;
  du = (u >= -limit && u <= limit) ? dh * gc * s : 0.f;
}

template <int BM, int BN, int BK, int WARPS_M, int WARPS_N, int STAGES, bool MODE_K, bool A_MMAJOR, bool B_KMAJOR,
          int EPI>
struct Gemm {
  static constexpr int kThreads = WARPS_M * WARPS_N * 32;
  static constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;
  static constexpr int MI = WTM / 16, NI = WTN / 8;
  static constexpr int kAStage = BM * BK, kBStage = BK * BN;
  static constexpr size_t kSmem = size_t(STAGES) * (kAStage + kBStage) * 2;
  static constexpr int kGroupM = 8;
  static_assert(NI % 2 == 0 && MI >= 1, "warp tile");
  static_assert(!A_MMAJOR || BM >= 64, "M-major A tiles need 8 chunks per row");
  static_assert(A_MMAJOR || BK >= 64, "K-major A tiles need 8 chunks per row");
  static_assert(B_KMAJOR ? BK >= 64 : BN >= 64, "B tiles need 8 chunks per row");
};

template <int BM, int BN, int BK, int WARPS_M, int WARPS_N, int STAGES, int MINB, bool MODE_K, bool A_MMAJOR,
          bool B_KMAJOR, int EPI>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32, MINB)
    grouped_gemm_kernel(const Params p) {
  using G = Gemm<BM, BN, BK, WARPS_M, WARPS_N, STAGES, MODE_K, A_MMAJOR, B_KMAJOR, EPI>;
  constexpr int NT = G::kThreads, MI = G::MI, NI = G::NI;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sA = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sB = sA + STAGES * G::kAStage;

  // ---- which tile ----
  const int L = blockIdx.x;
  const int m_count = MODE_K ? p.m_tiles : p.m_slots;
  const int per_group = G::kGroupM * p.n_tiles;
  const int group = L / per_group;
  const int first_m = group * G::kGroupM;
  const int gsize = min(m_count - first_m, G::kGroupM);
  const int in_group = L % per_group;
  const int m_tile = first_m + in_group % gsize;
  const int n_tile = in_group / gsize;

  int e, seg_off, seg_len, m0;
  if constexpr (MODE_K) {
    e = blockIdx.y;
    seg_off = p.offsets[e];
    seg_len = p.offsets[e + 1] - seg_off;
    m0 = m_tile * BM;
  } else if (p.offsets == nullptr) {
    e = 0;
    seg_off = 0;
    seg_len = p.M;
    m0 = m_tile * BM;
    if (m0 >= seg_len) return;  // the grid's spare slot (launch counts E = 1 extra)
  } else {
    int acc = 0;
    e = -1;
    for (int i = 0; i < p.E; i++) {
      const int o = p.offsets[i], c = p.offsets[i + 1] - o;
      const int tiles = (c + BM - 1) / BM;
      if (m_tile < acc + tiles) {
        e = i;
        seg_off = o;
        seg_len = c;
        m0 = (m_tile - acc) * BM;
        break;
      }
      acc += tiles;
    }
    if (e < 0) return;
  }
  const int n0 = n_tile * BN;
  const int Kg = MODE_K ? seg_len : p.K;
  const int ktiles = (Kg + BK - 1) / BK;
  const int tid = threadIdx.x;
  const __nv_bfloat16* Bbase = MODE_K ? p.B : p.B + (int64_t)e * p.b_expert_stride;

  // Rows-mode A rows are fixed for the block: resolve their addresses once.
  constexpr int A_CHUNKS = BM * BK / 8;
  constexpr int A_ITERS = (A_CHUNKS + NT - 1) / NT;
  const __nv_bfloat16* a_row[MODE_K ? 1 : A_ITERS];
  bool a_ok[MODE_K ? 1 : A_ITERS];
  if constexpr (!MODE_K) {
#pragma unroll
    for (int it = 0; it < A_ITERS; it++) {
      const int c = tid + it * NT;
      const int row = c / (BK / 8);
      const int m = m0 + row;
      a_ok[it] = c < A_CHUNKS && m < seg_len;
      const int64_t src_row = a_ok[it] ? seg_off + m : 0;
      a_row[it] = p.A + src_row * p.lda;
    }
  }

  auto load_stage = [&](int stage, int kt) {
    const int k0 = kt * BK;
    __nv_bfloat16* a = sA + stage * G::kAStage;
    __nv_bfloat16* b = sB + stage * G::kBStage;
    if constexpr (!MODE_K) {
#pragma unroll
      for (int it = 0; it < A_ITERS; it++) {
        const int c = tid + it * NT;
        if (c < A_CHUNKS) {
          const int row = c / (BK / 8), kc = c % (BK / 8);
          const int k = k0 + kc * 8;
          const bool ok = a_ok[it] && k < p.K;
          cp_async16(a + swz<BK>(row, kc * 8), ok ? a_row[it] + k : p.A, ok);
        }
      }
    } else {
      // A stored [rows, M]: tile [BK][BM], rows are reduction indices.
#pragma unroll
      for (int it = 0; it < A_ITERS; it++) {
        const int c = tid + it * NT;
        if (c < A_CHUNKS) {
          const int row = c / (BM / 8), mc = c % (BM / 8);
          const int kk = k0 + row, m = m0 + mc * 8;
          const bool ok = kk < Kg && m < p.M;
          const __nv_bfloat16* src = p.A;
          if (ok) {
            const int64_t r = seg_off + kk;
            src = p.A + r * p.lda + m;
          }
          cp_async16(a + swz<BM>(row, mc * 8), src, ok);
        }
      }
    }
    constexpr int B_CHUNKS = BK * BN / 8;
#pragma unroll
    for (int it = 0; it < (B_CHUNKS + NT - 1) / NT; it++) {
      const int c = tid + it * NT;
      if (c < B_CHUNKS) {
        if constexpr (B_KMAJOR) {
          const int row = c / (BK / 8), kc = c % (BK / 8);
          const int n = n0 + row, k = k0 + kc * 8;
          const bool ok = n < p.N && k < Kg;
          cp_async16(b + swz<BK>(row, kc * 8), ok ? Bbase + (int64_t)n * p.ldb + k : p.B, ok);
        } else {
          const int row = c / (BN / 8), nc = c % (BN / 8);
          const int k = k0 + row, n = n0 + nc * 8;
          const bool ok = k < Kg && n < p.N;
          const int64_t krow = MODE_K ? (int64_t)seg_off + k : k;
          cp_async16(b + swz<BN>(row, nc * 8), ok ? Bbase + krow * p.ldb + n : p.B, ok);
        }
      }
    }
  };

  const int warp = tid >> 5, lane = tid & 31;
  const int wm0 = (warp / WARPS_N) * G::WTM, wn0 = (warp % WARPS_N) * G::WTN;
  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; i++)
#pragma unroll
    for (int j = 0; j < NI; j++)
#pragma unroll
      for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }

  const int lr = lane & 7, li = lane >> 3;
  for (int kt = 0; kt < ktiles; kt++) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const int nk = kt + STAGES - 1;
      if (nk < ktiles) load_stage(nk % STAGES, nk);
      cp_async_commit();
    }
    const __nv_bfloat16* a = sA + (kt % STAGES) * G::kAStage;
    const __nv_bfloat16* b = sB + (kt % STAGES) * G::kBStage;
    auto load_frags = [&](int kk, uint32_t(&af)[MI][4], uint32_t(&bfr)[NI][2]) {
#pragma unroll
      for (int mi = 0; mi < MI; mi++) {
        if constexpr (!A_MMAJOR) {
          const int row = wm0 + mi * 16 + lr + (li & 1) * 8, col = kk + (li >> 1) * 8;
          ldsm_x4(af[mi], a + swz<BK>(row, col));
        } else {
          const int krow = kk + (li >> 1) * 8 + lr, mcol = wm0 + mi * 16 + (li & 1) * 8;
          ldsm_x4_t(af[mi], a + swz<BM>(krow, mcol));
        }
      }
#pragma unroll
      for (int nj = 0; nj < NI / 2; nj++) {
        uint32_t r[4];
        if constexpr (B_KMAJOR) {
          const int nrow = wn0 + nj * 16 + (li >> 1) * 8 + lr, kcol = kk + (li & 1) * 8;
          ldsm_x4(r, b + swz<BK>(nrow, kcol));
        } else {
          const int krow = kk + (li & 1) * 8 + lr, ncol = wn0 + nj * 16 + (li >> 1) * 8;
          ldsm_x4_t(r, b + swz<BN>(krow, ncol));
        }
        bfr[2 * nj][0] = r[0];
        bfr[2 * nj][1] = r[1];
        bfr[2 * nj + 1][0] = r[2];
        bfr[2 * nj + 1][1] = r[3];
      }
    };
    auto mmas = [&](const uint32_t(&af)[MI][4], const uint32_t(&bfr)[NI][2]) {
#pragma unroll
      for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int ni = 0; ni < NI; ni++) mma_bf16(acc[mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
    };
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[MI][4], bfr[NI][2];
      load_frags(kk, af, bfr);
      mmas(af, bfr);
    }
  }
  cp_async_wait<0>();

  // ---- epilogue ----
  const int M_lim = MODE_K ? p.M : seg_len;
#pragma unroll
  for (int mi = 0; mi < MI; mi++) {
#pragma unroll
    for (int half = 0; half < 2; half++) {
      const int m = m0 + wm0 + mi * 16 + (lane >> 2) + half * 8;
      if (m >= M_lim) continue;
      const int64_t row = MODE_K ? m : (int64_t)seg_off + m;
#pragma unroll
      for (int ni = 0; ni < NI; ni++) {
        const int n = n0 + wn0 + ni * 8 + (lane & 3) * 2;
        if (n >= p.N) continue;
        const float v0 = acc[mi][ni][half * 2], v1 = acc[mi][ni][half * 2 + 1];
        if constexpr (EPI == kEpiF32) {
          float* C = static_cast<float*>(p.C) + (int64_t)e * p.c_expert_stride;
          *reinterpret_cast<float2*>(C + row * p.ldc + n) = make_float2(v0, v1);
        } else if constexpr (EPI == kEpiBiasF32) {
          float* C = static_cast<float*>(p.C);
          const __nv_bfloat162 bb = *reinterpret_cast<const __nv_bfloat162*>(p.bias + (int64_t)e * p.N + n);
          *reinterpret_cast<float2*>(C + row * p.ldc + n) = make_float2(v0 + __low2float(bb), v1 + __high2float(bb));
        } else if constexpr (EPI == kEpiBf16) {
          __nv_bfloat16* C = static_cast<__nv_bfloat16*>(p.C);
          *reinterpret_cast<__nv_bfloat162*>(C + row * p.ldc + n) = __floats2bfloat162_rn(v0, v1);
        } else if constexpr (EPI == kEpiBiasBf16) {
          __nv_bfloat16* C = static_cast<__nv_bfloat16*>(p.C);
          const __nv_bfloat162 bb = *reinterpret_cast<const __nv_bfloat162*>(p.bias + (int64_t)e * p.N + n);
          *reinterpret_cast<__nv_bfloat162*>(C + row * p.ldc + n) =
              __floats2bfloat162_rn(v0 + __low2float(bb), v1 + __high2float(bb));
        } else if constexpr (EPI == kEpiGuSwiglu) {
          __nv_bfloat16* C = static_cast<__nv_bfloat16*>(p.C);
          const __nv_bfloat162 bb = *reinterpret_cast<const __nv_bfloat162*>(p.bias + (int64_t)e * p.N + n);
          const __nv_bfloat162 gu = __floats2bfloat162_rn(v0 + __low2float(bb), v1 + __high2float(bb));
          *reinterpret_cast<__nv_bfloat162*>(C + row * p.ldc + n) = gu;
          p.C2[row * p.ldc2 + (n >> 1)] =
              __float2bfloat16(swiglu_f(__low2float(gu), __high2float(gu), p.limit));
        } else if constexpr (EPI == kEpiDSwiglu) {
          // dh at columns n, n+1 of I; gu columns 2n .. 2n+3.
          const uint2 graw = *reinterpret_cast<const uint2*>(p.aux + row * p.ld_aux + 2 * n);
          const __nv_bfloat162 g01 = *reinterpret_cast<const __nv_bfloat162*>(&graw.x);
          const __nv_bfloat162 g23 = *reinterpret_cast<const __nv_bfloat162*>(&graw.y);
          float dg0, du0, dg1, du1;
          swiglu_grad_f(__low2float(g01), __high2float(g01), p.limit, v0, dg0, du0);
          swiglu_grad_f(__low2float(g23), __high2float(g23), p.limit, v1, dg1, du1);
          __nv_bfloat162 o01 = __floats2bfloat162_rn(dg0, du0), o23 = __floats2bfloat162_rn(dg1, du1);
          uint2 out;
          out.x = *reinterpret_cast<uint32_t*>(&o01);
          out.y = *reinterpret_cast<uint32_t*>(&o23);
          __nv_bfloat16* C = static_cast<__nv_bfloat16*>(p.C);
          *reinterpret_cast<uint2*>(C + row * p.ldc + 2 * n) = out;
        }
      }
    }
  }
}

// The two tile shapes (block tile BM x BN x BK, WARPS_M x WARPS_N warps, STAGES cp.async stages, MINB blocks per
// SM for __launch_bounds__). Which one runs: rows_gemm, for the reasons in moe.cu's plan_expert_gemms.
// Small batches (at most kDecodeRowsPerExpert rows per expert on average: a prompt's prefill, decode of 5-256
// sequences), where reading the weights is the cost: 32x128 tiles, 8 warps of 16x32, 3 stages (72 KB, 3 blocks an
// SM). The fastest of 11 shapes timed by bench/moe_grouped_harness on an H100 (bench/results/
// moe-grouped-tiles-ab-h100.txt; gate_up + down µs at T 32 / 64 / 128 / 256: 537 / 542 / 549 / 622 against 583 /
// 588 / 661 / 930 for the 16x64x64 2-warp 4-stage tiles before): a 32-row tile covers most experts' rows at 16-32
// rows each, so the second M tile (which re-read the weights through L2) is gone, and 128 columns halve the
// re-reads of the A rows. Every shape sums an output over k in the same order: the same bits.
struct DecodeTiles {
  static constexpr int BM = 32, BN = 128, BK = 64, WARPS_M = 2, WARPS_N = 4, STAGES = 3, MINB = 3;
};
// Larger batches (and every weight gradient): the fastest of five shapes measured on an H100 at T 4096 and 16384
// (docs/moe.md).
struct LargeTiles {
  static constexpr int BM = 128, BN = 128, BK = 64, WARPS_M = 2, WARPS_N = 4, STAGES = 3, MINB = 2;
};

// Launches one configuration. Rows mode: total_rows = N routed rows (upper bound of M tiles =
// ceil(total_rows / BM) + E). Reduction mode: grid over M x N tiles per expert.
template <typename Tiles, bool MODE_K, bool A_MMAJOR, bool B_KMAJOR, int EPI>
void launch(Params p, int64_t total_rows, cudaStream_t stream, const char* what) {
  constexpr int BM = Tiles::BM, BN = Tiles::BN;
  using G = Gemm<BM, BN, Tiles::BK, Tiles::WARPS_M, Tiles::WARPS_N, Tiles::STAGES, MODE_K, A_MMAJOR, B_KMAJOR, EPI>;
  auto kernel = grouped_gemm_kernel<BM, BN, Tiles::BK, Tiles::WARPS_M, Tiles::WARPS_N, Tiles::STAGES, Tiles::MINB,
                                    MODE_K, A_MMAJOR, B_KMAJOR, EPI>;
  static bool configured = false;  // per instantiation (one device kind per process)
  if (!configured) {
    GPTOSS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)G::kSmem),
                      what);
    configured = true;
  }
  p.n_tiles = (p.N + BN - 1) / BN;
  dim3 grid;
  if constexpr (MODE_K) {
    p.m_tiles = (p.M + BM - 1) / BM;
    grid = dim3(p.m_tiles * p.n_tiles, p.E);
  } else {
    p.m_slots = static_cast<int>((total_rows + BM - 1) / BM + p.E);
    grid = dim3(p.m_slots * p.n_tiles);
  }
  if (grid.x == 0 || grid.y == 0) return;
  kernel<<<grid, G::kThreads, G::kSmem, stream>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK(what);
}

// Rows at or below this many per expert on average take DecodeTiles.
constexpr int64_t kDecodeRowsPerExpert = 32;

// Rows mode (expert rows x weights).
template <bool B_KMAJOR, int EPI>
void rows_gemm(const Params& p, int64_t rows, cudaStream_t s, const char* what) {
  if (rows <= kDecodeRowsPerExpert * p.E) launch<DecodeTiles, false, false, B_KMAJOR, EPI>(p, rows, s, what);
  else launch<LargeTiles, false, false, B_KMAJOR, EPI>(p, rows, s, what);
}

// One translation unit each (moe_gemm_*.cu), so the instantiations compile in parallel.
void gemm_gate_up(const Params& p, int64_t rows, cudaStream_t s);   // rows, NN, bias + SwiGLU
void gemm_down(const Params& p, int64_t rows, cudaStream_t s);      // rows, NN, bias
void gemm_dgu(const Params& p, int64_t rows, cudaStream_t s);       // rows, NT, SwiGLU backward
void gemm_dx(const Params& p, int64_t rows, cudaStream_t s);        // rows, NT, bf16 out
void gemm_wgrad(const Params& p, int64_t rows, cudaStream_t s, const char* what);  // reduction, f32 out

}  // namespace gptoss::cuda::moe_gemm
