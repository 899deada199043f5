// gemv.cu: the small-M bf16 linear, C[M,N] = alpha * A[M,K] · W[N,K]ᵀ + bias[N] + beta * C, for M <= 8 rows
// (batch-1..8 decode). gpt-oss-20b shapes: qkv 2880 -> 5120, o_proj 4096 -> 2880, MoE router 2880 -> 32, LM head
// 2880 -> 201,088. At these M the product is a matrix-vector one: the time is reading W (N*K*2 bytes: 29.5 MB for
// qkv, 1.16 GB for the LM head) once from HBM, and cuBLAS's tensor-core tiles (sized for M >= 64) reach only ~50% of
// HBM bandwidth there (docs/inference.md, "Batch 1"). This kernel streams W with 16-byte loads and does the math
// on the CUDA cores in fp32.
//
// Why M <= 8 (kGemvMaxRows): each 16-byte chunk of W (8 bf16) costs 8*M fp32 FMAs (plus the bf16 -> f32
// conversions). An H100 SM must take ~14 bytes of W per clock to keep HBM (~3.35 TB/s over 132 SMs at ~1.75 GHz)
// busy, i.e. 14/16*8*M = 7*M FMAs per clock of its 128: 56 at M = 8 (under half the FP32 pipe, room for the
// conversions and the x loads), 112 at M = 16 (saturated: the CUDA cores, not HBM, would set the speed). Above 8
// rows cuBLAS's tensor cores win, and the caller keeps it.
//
// Layout: one block of kThreads threads computes ROWS (1, 2 or 4) consecutive output columns n0..n0+ROWS-1 for all M rows. Its
// threads split K in 16-byte chunks (thread t takes chunks t, t + kThreads, ...), so a warp reads 512 contiguous
// bytes of each W row per step (full coalescing) and a row of K = 2880 is read by ~3 steps of the block. Per chunk a
// thread loads the ROWS W chunks (streaming, evict-first: W is read once) and the M x chunks (through L1: every
// block of the SM reads the same x, M*K*2 bytes <= 64 KB at K = 4096), then accumulates M*ROWS fp32 dot products.
// The M*ROWS partial sums are reduced across the warp (shuffles) and then across the block's warps in a fixed
// order through shared memory (so the result is deterministic run to run), and one thread per output applies
// alpha, the bias and beta*C in fp32 and rounds once to C's dtype. The summation order differs from cuBLAS's, so
// results agree with it within bf16 rounding, not bitwise.
//
// ROWS (rows of W a block reads) trades x reuse against the number of blocks: x's L1 traffic is M/ROWS times W's,
// kept at <= 2 by ROWS = 1 at M <= 2, 2 at M <= 4 and 4 at M <= 8, while smaller blocks (more of them: 5120 at the
// qkv shape at ROWS = 1, several waves over 132 SMs) shorten the tail of the last wave. When ROWS > 1 leaves fewer
// than two blocks per SM (the router's N = 32, a LoRA A's N = r), ROWS = 1 spreads the rows over more blocks.
//
// CUDA graphs: no allocation, no host synchronisation; the launch goes on the stream the caller passes (the
// device's compute stream, or a GEMM lane's).
#include <type_traits>

#include "common.cuh"
#include "gemm.h"
#include "rope_math.cuh"
#include "vec_io.cuh"

namespace gptoss::cuda {

namespace {

constexpr int kThreads = 128;  // 4 warps: K = 2880 is 360 chunks, ~2.8 per thread
constexpr int kWarps = kThreads / 32;

// The block's M x ROWS dot products x[m]·w_r over K (K % 8 == 0), summed in a fixed order: per thread over its
// chunks (t, t + kThreads, ...), then warp shuffles, then the warps in order. Returns, for threads < M·ROWS, sum
// (m = tid / ROWS, r = tid % ROWS); other threads get 0. The order depends only on (K, kThreads), not on ROWS or on
// which rows of W the block reads, so every kernel built on it gives an output column the same bits.
template <int M, int ROWS>
__device__ __forceinline__ float block_dots(int64_t K, const __nv_bfloat16* __restrict x, int64_t ldx,
                                            const uint4* (&wrow)[ROWS]) {
  const int64_t chunks = K / 8;
  float acc[M][ROWS];
#pragma unroll
  for (int m = 0; m < M; m++)
#pragma unroll
    for (int r = 0; r < ROWS; r++) acc[m][r] = 0.f;

  // Two steps unrolled while a step has few loads (small M*ROWS: more bytes in flight per thread); one at larger
  // M*ROWS, where ROWS + M loads a step are already in flight and the registers of a second step would cut the
  // blocks per SM (136 registers at M = 8, ROWS = 4 unrolled: 3 blocks of 128 threads).
  constexpr int kUnroll = M * ROWS <= 8 ? 2 : 1;
#pragma unroll kUnroll
  for (int64_t c = threadIdx.x; c < chunks; c += kThreads) {
    // Issue every load of the step before any math, so ROWS + M 16-byte loads are in flight per thread.
    uint4 wv[ROWS], xv[M];
#pragma unroll
    for (int r = 0; r < ROWS; r++) wv[r] = __ldcs(wrow[r] + c);
#pragma unroll
    for (int m = 0; m < M; m++) xv[m] = __ldg(reinterpret_cast<const uint4*>(x + m * ldx) + c);
    float wf[ROWS][8];
#pragma unroll
    for (int r = 0; r < ROWS; r++) unpack8(wv[r], wf[r]);
#pragma unroll
    for (int m = 0; m < M; m++) {
      float xf[8];
      unpack8(xv[m], xf);
#pragma unroll
      for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int k = 0; k < 8; k++) acc[m][r] = fmaf(xf[k], wf[r][k], acc[m][r]);
    }
  }

  // Warp sums (every lane ends with every sum), then lane j of each warp parks sum j for the cross-warp pass.
  __shared__ float part[kWarps][M * ROWS];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m < M; m++)
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
      const float s = warp_sum(acc[m][r]);
      if (lane == m * ROWS + r) part[warp][m * ROWS + r] = s;  // M*ROWS <= 32 (checked at the launch)
    }
  __syncthreads();
  float s = 0.f;
  if (threadIdx.x < M * ROWS)
#pragma unroll
    for (int i = 0; i < kWarps; i++) s += part[i][threadIdx.x];  // fixed order: deterministic
  return s;
}

// Rows of W for a block reading rows n0 .. n0 + ROWS - 1: rows past N (the last block when ROWS does not divide N)
// read row N-1 again and are never stored, so the loads stay in bounds without a branch in the loop.
template <int ROWS>
__device__ __forceinline__ void w_rows(const __nv_bfloat16* w, int64_t ldw, int64_t n0, int64_t N,
                                       const uint4* (&wrow)[ROWS]) {
#pragma unroll
  for (int r = 0; r < ROWS; r++) {
    const int64_t n = n0 + r < N ? n0 + r : N - 1;
    wrow[r] = reinterpret_cast<const uint4*>(w + n * ldw);
  }
}

__device__ __forceinline__ float bias_at(const void* bias, bool bias_bf16, int64_t n) {
  if (!bias) return 0.f;
  return bias_bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[n]) : static_cast<const float*>(bias)[n];
}

// x [M, K] bf16 (row stride ldx, 16-byte aligned rows), w [N, K] bf16 (row stride ldw, 16-byte aligned rows),
// bias [N] (bf16 when bias_bf16, else f32; may be null), C [M, N] (row stride ldc) of TC. K % 8 == 0.
template <int M, int ROWS, typename TC>
__global__ void __launch_bounds__(kThreads) gemv_kernel(int64_t N, int64_t K, const __nv_bfloat16* __restrict x,
                                                        int64_t ldx, const __nv_bfloat16* __restrict w, int64_t ldw,
                                                        const void* __restrict bias, bool bias_bf16, float alpha,
                                                        float beta, TC* __restrict C, int64_t ldc) {
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * ROWS;
  const uint4* wrow[ROWS];
  w_rows<ROWS>(w, ldw, n0, N, wrow);
  const float s = block_dots<M, ROWS>(K, x, ldx, wrow);
  if (threadIdx.x < M * ROWS) {
    const int m = threadIdx.x / ROWS, r = threadIdx.x % ROWS;
    const int64_t n = n0 + r;
    if (n < N) {
      float v = alpha * s;
      if (bias) v += bias_at(bias, bias_bf16, n);
      TC* c = C + m * ldc + n;
      if (beta != 0.f) v += beta * ldf(c);
      stf(c, v);
    }
  }
}

// The decode q/k/v projection with the rope split and the KV-cache write in its epilogue (rope.cu's rope_qkv after
// this file's gemv, in one launch: a decode step's rope kernel ran one block per token, a few µs a layer at batch 1).
// Block b serves head hh = b / half, frequency j = b % half of the fused layout [q heads | k heads | v heads] (D each):
// it reads W rows hh·D + j and hh·D + j + half, so the pair a rotation mixes is in one block. Each value is the
// linear's bf16 output (the same sum as gemv_kernel: block_dots), rounded, then rotated (q, k) or copied (v) with
// rope_math's cos/sin and rotation, as rope_parts_kernel does: the same bits as gemv + ropeQkvSplit.
// x bf16 [M, K], w bf16 [(hq + 2 hkv)·D, K], bias [(hq + 2 hkv)·D] or null, pos i32 [M], inv_freq f32 [D/2];
// q bf16 [M, hq, D], k / v bf16 [M, hkv, D]; kc / vc bf16 [cache_rows, hkv, D] or null, slots i32 [M].
template <int M>
__global__ void __launch_bounds__(kThreads) gemv_rope_qkv_kernel(
    int64_t K, const __nv_bfloat16* __restrict x, int64_t ldx, const __nv_bfloat16* __restrict w, int64_t ldw,
    const void* __restrict bias, bool bias_bf16, const int32_t* __restrict pos, const float* __restrict inv_freq,
    float scaling, int d, int hq, int hkv, __nv_bfloat16* __restrict q, __nv_bfloat16* __restrict k,
    __nv_bfloat16* __restrict v, __nv_bfloat16* __restrict kc, __nv_bfloat16* __restrict vc,
    const int32_t* __restrict slots, int64_t cache_rows) {
  const int half = d / 2, hh = blockIdx.x / half, j = blockIdx.x % half;
  const int64_t na = int64_t(hh) * d + j, nb = na + half;
  const uint4* wrow[2] = {reinterpret_cast<const uint4*>(w + na * ldw), reinterpret_cast<const uint4*>(w + nb * ldw)};
  const float s = block_dots<M, 2>(K, x, ldx, wrow);
  __shared__ float val[M][2];
  if (threadIdx.x < M * 2) {
    const int m = threadIdx.x / 2, r = threadIdx.x % 2;
    // gemv_kernel's epilogue at alpha 1, beta 0, then the bf16 rounding of the stored qkv.
    val[m][r] = __bfloat162float(__float2bfloat16(s + bias_at(bias, bias_bf16, r ? nb : na)));
  }
  __syncthreads();
  if (threadIdx.x >= M) return;
  const int m = threadIdx.x;
  float o1 = val[m][0], o2 = val[m][1];
  __nv_bfloat16* y;
  __nv_bfloat16* yc = nullptr;
  const int64_t slot = slots ? slots[m] : -1;
  const bool to_cache = kc && slot >= 0 && slot < cache_rows;
  if (hh < hq + hkv) {
    float c, sn;
    rope_math::cos_sin(static_cast<float>(pos[m]), inv_freq[j], scaling, 1.f, c, sn);
    rope_math::rotate(val[m][0], val[m][1], c, sn, o1, o2);
  }
  if (hh < hq) {
    y = q + (int64_t(m) * hq + hh) * d;
  } else if (hh < hq + hkv) {
    y = k + (int64_t(m) * hkv + hh - hq) * d;
    if (to_cache) yc = kc + (slot * hkv + hh - hq) * d;
  } else {
    y = v + (int64_t(m) * hkv + hh - hq - hkv) * d;
    if (to_cache) yc = vc + (slot * hkv + hh - hq - hkv) * d;
  }
  y[j] = __float2bfloat16(o1);
  y[j + half] = __float2bfloat16(o2);
  if (yc) yc[j] = __float2bfloat16(o1), yc[j + half] = __float2bfloat16(o2);
}

template <int M, int ROWS>
void launch_rows(cudaStream_t s, int64_t N, int64_t K, const void* A, int64_t lda, const void* B, int64_t ldb,
                 const void* bias, bool bias_bf16, float alpha, float beta, void* C, DType c_dtype, int64_t ldc) {
  static_assert(M * ROWS <= 32, "gemv: one lane per partial sum");
  const unsigned blocks = ceil_div(N, ROWS);
  const auto* x = static_cast<const __nv_bfloat16*>(A);
  const auto* w = static_cast<const __nv_bfloat16*>(B);
  if (c_dtype == DType::BF16)
    gemv_kernel<M, ROWS, __nv_bfloat16><<<blocks, kThreads, 0, s>>>(N, K, x, lda, w, ldb, bias, bias_bf16, alpha,
                                                                     beta, static_cast<__nv_bfloat16*>(C), ldc);
  else
    gemv_kernel<M, ROWS, float><<<blocks, kThreads, 0, s>>>(N, K, x, lda, w, ldb, bias, bias_bf16, alpha, beta,
                                                            static_cast<float*>(C), ldc);
}

template <int M>
void launch_m(int device, cudaStream_t s, int64_t N, int64_t K, const void* A, int64_t lda, const void* B,
              int64_t ldb, const void* bias, bool bias_bf16, float alpha, float beta, void* C, DType c_dtype,
              int64_t ldc) {
  // ROWS rows a block (see the header) unless that gives fewer than two blocks per SM (sm_count is cached per
  // device, so a captured launch keeps its configuration).
  constexpr int R = M <= 2 ? 1 : (M <= 4 ? 2 : 4);
  if (R > 1 && ceil_div(N, R) >= 2 * static_cast<int64_t>(sm_count(device, "gemv")))
    launch_rows<M, R>(s, N, K, A, lda, B, ldb, bias, bias_bf16, alpha, beta, C, c_dtype, ldc);
  else
    launch_rows<M, 1>(s, N, K, A, lda, B, ldb, bias, bias_bf16, alpha, beta, C, c_dtype, ldc);
}

}  // namespace

bool gemv_applies(int64_t M, int64_t N, int64_t K, const void* A, int64_t lda, bool transA, const void* B,
                  int64_t ldb, bool transB, DType ab_dtype, DType c_dtype) {
  // K >= 64: a row of at least 8 chunks. A LoRA B's K = r (8..32) would leave 124+ of a block's 128 threads idle
  // on a product of a few KB, which cuBLAS does as well; 64 keeps the toy models of the GPU tests (hidden 64, the
  // fixture's) on this kernel, so the end-to-end engine tests run it. N < 2^31 blocks (grid x limit) at any ROWS.
  return M >= 1 && M <= kGemvMaxRows && N >= 1 && N < (int64_t(1) << 31) && K >= 64 && K % 8 == 0 &&
         ab_dtype == DType::BF16 && (c_dtype == DType::BF16 || c_dtype == DType::F32) && !transA && transB &&
         lda % 8 == 0 && ldb % 8 == 0 && lda >= K && ldb >= K && aligned16(A) && aligned16(B);
}

void gemv_bf16(int device, void* stream, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
               const void* B, int64_t ldb, const void* bias, DType bias_dtype, float beta, void* C, DType c_dtype,
               int64_t ldc) {
  GPTOSS_CHECK(M >= 1 && M <= kGemvMaxRows && K % 8 == 0 && aligned16(A) && aligned16(B) && lda % 8 == 0 &&
                   ldb % 8 == 0,
               "gemv: needs 1..", kGemvMaxRows, " rows, K % 8 == 0 and 16-byte aligned rows (M=", M, " K=", K,
               " lda=", lda, " ldb=", ldb, ")");
  if (N == 0) return;
  DeviceGuard g(device);
  auto s = static_cast<cudaStream_t>(stream);
  const bool bb = bias_dtype == DType::BF16;
  switch (M) {
    case 1: launch_m<1>(device, s, N, K, A, lda, B, ldb, bias, bb, alpha, beta, C, c_dtype, ldc); break;
    case 2: launch_m<2>(device, s, N, K, A, lda, B, ldb, bias, bb, alpha, beta, C, c_dtype, ldc); break;
    case 3: launch_m<3>(device, s, N, K, A, lda, B, ldb, bias, bb, alpha, beta, C, c_dtype, ldc); break;
    case 4: launch_m<4>(device, s, N, K, A, lda, B, ldb, bias, bb, alpha, beta, C, c_dtype, ldc); break;
    case 5: launch_m<5>(device, s, N, K, A, lda, B, ldb, bias, bb, alpha, beta, C, c_dtype, ldc); break;
    case 6: launch_m<6>(device, s, N, K, A, lda, B, ldb, bias, bb, alpha, beta, C, c_dtype, ldc); break;
    case 7: launch_m<7>(device, s, N, K, A, lda, B, ldb, bias, bb, alpha, beta, C, c_dtype, ldc); break;
    default: launch_m<8>(device, s, N, K, A, lda, B, ldb, bias, bb, alpha, beta, C, c_dtype, ldc); break;
  }
  GPTOSS_CUDA_LAUNCH_CHECK("gemv");
}

bool gemv_rope_qkv_applies(const Tensor& x, const Tensor& w, int64_t d) {
  const int64_t M = x.dim(0), K = x.dim(1);
  // Not in batch-invariant mode (device.h): the GEMV splits K, so rows would differ from the GEMM's.
  return !batch_invariant() && M >= 1 && M <= kGemvMaxRows && K >= 64 && K % 8 == 0 && d % 2 == 0 &&
         x.dtype == DType::BF16 &&
         w.dtype == DType::BF16 && aligned16(x.raw()) && aligned16(w.raw()) &&
         w.dim(0) / d * (d / 2) < (int64_t(1) << 31);
}

void gemv_rope_qkv(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& positions,
                   const Tensor& inv_freq, float scaling, const Tensor& q, const Tensor& k, const Tensor& v,
                   const RopeCacheWrite* cache) {
  const int64_t M = x.dim(0), K = x.dim(1);
  const int hq = static_cast<int>(q.dim(1)), hkv = static_cast<int>(k.dim(1)), d = static_cast<int>(q.dim(2));
  GPTOSS_CHECK(gemv_rope_qkv_applies(x, w, d), "gemv_rope_qkv: needs 1..", kGemvMaxRows,
               " bf16 rows of K % 8 == 0 (>= 64), 16-byte aligned, got x ", x.describe(), ", w ", w.describe());
  DeviceGuard g(x.device);
  auto s = stream_of(x.device);
  const unsigned blocks = static_cast<unsigned>((hq + 2 * hkv) * (d / 2));
  const auto* xp = x.data<__nv_bfloat16>();
  const auto* wp = w.data<__nv_bfloat16>();
  const void* bp = bias ? bias->raw() : nullptr;
  const bool bb = bias && bias->dtype == DType::BF16;
  auto* kc = cache ? cache->k.data<__nv_bfloat16>() : nullptr;
  auto* vc = cache ? cache->v.data<__nv_bfloat16>() : nullptr;
  const int32_t* sl = cache ? cache->slots.data<int32_t>() : nullptr;
  const int64_t rows = cache ? cache->k.dim(0) : 0;
  auto launch = [&](auto m) {
    gemv_rope_qkv_kernel<decltype(m)::value><<<blocks, kThreads, 0, s>>>(
        K, xp, K, wp, K, bp, bb, positions.data<int32_t>(), inv_freq.data<float>(), scaling, d, hq, hkv,
        q.data<__nv_bfloat16>(), k.data<__nv_bfloat16>(), v.data<__nv_bfloat16>(), kc, vc, sl, rows);
  };
  switch (M) {
    case 1: launch(std::integral_constant<int, 1>{}); break;
    case 2: launch(std::integral_constant<int, 2>{}); break;
    case 3: launch(std::integral_constant<int, 3>{}); break;
    case 4: launch(std::integral_constant<int, 4>{}); break;
    case 5: launch(std::integral_constant<int, 5>{}); break;
    case 6: launch(std::integral_constant<int, 6>{}); break;
    case 7: launch(std::integral_constant<int, 7>{}); break;
    default: launch(std::integral_constant<int, 8>{}); break;
  }
  GPTOSS_CUDA_LAUNCH_CHECK("gemvRopeQkv");
}

}  // namespace gptoss::cuda
