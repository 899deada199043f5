// moe_decode.cu: the MoE expert MLPs for few routed rows (decode: 1-16 tokens, top-4), as split-K GEMV kernels
// that stream each routed expert's weights once at HBM speed.
//
// Why: at one token the four routed experts' weights (gate_up [H, 2I] + down [I, H] bf16, ~50 MB each at
// gpt-oss-20b size) are the whole cost, and the grouped mma.sync kernels (moe_gemm.cuh, 16x64 DecodeTiles)
// launch only (rows/16 + E)·(N/64) tiles that each walk the full K = 2880: too few independent loads in flight
// to saturate HBM (~35% of it at one row on an H100). Here every thread owns 8 contiguous output columns (one
// 16-byte vector of a weight row) for up to R rows, and K is split across blocks so that the grid fills every SM
// with independent 16-byte loads; a second tiny pass sums the K splits in a fixed order (deterministic, no fp32
// atomics) and applies the grouped path's epilogue (bias, bf16 rounding, clamped SwiGLU).
//
// Per product (gate_up: A = x rows gathered through perm_tok, K = H, Nc = 2I; down: A = h rows, K = I, Nc = H):
//   partial_kernel: part f32 [S, N, Nc], part[s, r] = Σ_{k in split s} A[r, k]·W_e[k, :]   (W_e [K, Nc] row-major)
//   reduce_kernel:  out[r] = bf16(Σ_s part[s, r] + bias_e)  (+ h[r] = bf16(swiglu(out[r])) for gate_up)
// Rounding points are those of moe_gemm.cuh's kEpiGuSwiglu / kEpiBiasBf16 epilogues: gu rounded to bf16 with its
// bias before the SwiGLU reads it, h rounded, yp rounded with its bias. The SwiGLU is swiglu_math.cuh's (expf),
// as the flat SwiGLU of the cuBLAS strategies and the CPU reference use.
//
// Tried and dropped: one launch per product (one block per reduce lane summing its splits, the last lane block of a
// tile adding the lane sums and applying the epilogue via a self-resetting ticket; the same bits) was slower at
// every size measured on an H100 (bench/results/moe-decode-fused-ab-h100.json: T 1 0.1014 ms vs 0.0914 ms here,
// T 8 0.477 vs 0.366; with CUDA graphs too). Not profiled further; its code is in git history
// (`git log -S fused_kernel -- native/cuda/moe_decode.cu`) should a profile suggest a fix.
//
// Experts with no rows cost nothing: the grid's expert dimension has min(E, N) slots, slot j takes the j-th
// expert with rows (read from the device offsets in-kernel), and slots beyond the routed experts exit at once.
#include <algorithm>

#include "moe_decode.h"
#include "swiglu_math.cuh"
#include "vec_io.cuh"

namespace gptoss::cuda::moe_decode {

namespace {

using bf = __nv_bfloat16;

constexpr int kThreads = 128;  // partial_kernel: threads per block, 8 columns each (1024 columns, 2 KB of a W row)
constexpr int kUnroll = 8;     // weight rows per thread in flight (8 independent 16-byte loads)
constexpr int kMaxSplitK = 512;  // rows of K per block at most (x rows staged in shared memory: R·512·4 = 16 KB)
// Target blocks of partial_kernel per SM: at 128 threads and 8 loads of 16 bytes in flight each, 8 blocks per SM
// keep ~128 KB in flight per SM, well above what HBM latency x bandwidth needs (~25-30 KB per SM on an H100).
// To be re-measured with bench/moe.ts --decode.
constexpr int kBlocksPerSm = 8;

// Split sums: reduce_kernel's block is (32, kReduceLanes): 32 threads x 4 columns, kReduceLanes lanes over splits.
constexpr int kReduceLanes = 8;

// The routed expert of grid slot `slot` (the slot-th expert with rows, in id order), or -1. Warp 0 of the block
// scans the device offsets [E+1] with ballots (E <= 256: at most 8 steps); the block reads the result.
__device__ __forceinline__ int slot_expert(const int32_t* __restrict__ offsets, int E, int slot) {
  __shared__ int s_e;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int seen = 0, found = -1;
    for (int base = 0; base < E && found < 0; base += 32) {
      const int e = base + lane;
      const bool has = e < E && offsets[e + 1] > offsets[e];
      const unsigned m = __ballot_sync(0xffffffffu, has);
      const int rank = seen + __popc(m & ((1u << lane) - 1u));
      const int hit = __ballot_sync(0xffffffffu, has && rank == slot);
      if (hit) found = base + __ffs(hit) - 1;
      seen += __popc(m);
    }
    if (lane == 0) s_e = found;
  }
  __syncthreads();
  return s_e;
}

// 16 bytes of a weight row, streamed (ld.global.cs: evict first; each weight byte is read once per forward).
__device__ __forceinline__ uint4 ld_stream(const bf* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }

// part[s, r, n .. n+7] = Σ_{k in [k0, k0+klen)} A[row(r), k]·W_e[k, n .. n+7] for the rows r of one row chunk of
// one routed expert e. A bf16 [*, K] (row(r) = perm ? perm[r] : r), W bf16 [E, K, Nc], part f32 [S, N, Nc].
// Grid: x = row chunk + chunk_slots·(column tile), y = K split s (klen = min(ks, K - s·ks), a multiple of 8),
// z = expert slot. R (1, 2, 4 or 8): rows per chunk; the host picks the smallest that holds T (an expert has at
// most T rows), so chunk_slots = ceil(T / R) and chunks past an expert's count exit. Rows past the count within
// a chunk skip their FMAs (a block-uniform branch).
template <int R>
__global__ void __launch_bounds__(kThreads) partial_kernel(const bf* __restrict__ A, int64_t lda,
                                                          const int32_t* __restrict__ perm, const bf* __restrict__ W,
                                                          const int32_t* __restrict__ offsets, int E, int K, int Nc,
                                                          int ks, int chunk_slots, int64_t N,
                                                          float* __restrict__ part) {
  extern __shared__ __align__(16) float xs[];  // [R][ks]: the chunk's A rows over this split, fp32
  const int e = slot_expert(offsets, E, blockIdx.z);
  if (e < 0) return;
  const int chunk = blockIdx.x % chunk_slots, tile = blockIdx.x / chunk_slots;
  const int seg = offsets[e], count = offsets[e + 1] - seg, r0 = chunk * R;
  if (r0 >= count) return;
  const int rows = min(R, count - r0);
  const int k0 = blockIdx.y * ks, klen = min(ks, K - k0);

  // The first step's weight loads go out before the x staging (they need only e): the staging's two dependent
  // round trips (perm, then x) and the barrier then overlap them instead of preceding them. klen is a multiple of 8
  // (K and ks are), so every step is a whole kUnroll-row step.
  const int n = (tile * kThreads + threadIdx.x) * 8;
  const bool active = n < Nc;  // columns past Nc (the last tile) load nothing and leave after the barrier
  const bf* wp = W + ((int64_t)e * K + k0) * Nc + n;
  uint4 wv[kUnroll];
  if (active) {
#pragma unroll
    for (int u = 0; u < kUnroll; u++) wv[u] = ld_stream(wp + (int64_t)u * Nc);
  }

  // Stage the rows' K slice (16-byte loads; zeros past the count).
  const int kc = ks / 8;
  for (int c = threadIdx.x; c < R * kc; c += kThreads) {
    const int r = c / kc, k = (c % kc) * 8;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (r < rows && k < klen) {
      const int64_t pr = seg + r0 + r;
      const int64_t src = perm ? perm[pr] : pr;
      load8(A + src * lda + k0 + k, v);
    }
    float4* d = reinterpret_cast<float4*>(xs + r * ks + k);
    d[0] = make_float4(v[0], v[1], v[2], v[3]);
    d[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
  __syncthreads();
  if (!active) return;  // after the block's only barrier

  float acc[R][8];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int j = 0; j < 8; j++) acc[r][j] = 0.f;

  // Not double-buffered: a second set of kUnroll loads in registers (56 -> 95 at R 1) would cut the resident blocks
  // per SM below kBlocksPerSm; the other resident warps hide each step's latency instead.
  for (int kk = 0; kk < klen; kk += kUnroll) {
    if (kk > 0) {
#pragma unroll
      for (int u = 0; u < kUnroll; u++) wv[u] = ld_stream(wp + (int64_t)(kk + u) * Nc);
    }
    // One weight row at a time: unpack its 8 values once, then one broadcast shared-memory read of x per row.
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      float wf[8];
      unpack8(wv[u], wf);
#pragma unroll
      for (int r = 0; r < R; r++) {
        if (r >= rows) break;  // block-uniform
        const float xr = xs[r * ks + kk + u];
#pragma unroll
        for (int j = 0; j < 8; j++) acc[r][j] = fmaf(xr, wf[j], acc[r][j]);
      }
    }
  }

  float* out = part + ((int64_t)blockIdx.y * N + seg + r0) * Nc + n;
#pragma unroll
  for (int r = 0; r < R; r++) {
    if (r >= rows) break;
    float4* o = reinterpret_cast<float4*>(out + (int64_t)r * Nc);
    o[0] = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
    o[1] = make_float4(acc[r][4], acc[r][5], acc[r][6], acc[r][7]);
  }
}

// out[r, c] = bf16(Σ_{s < S} part[s, r, c] + bias[e(r), c]) for one permuted row r = blockIdx.x (e(r): the expert
// whose segment holds r) and 128 columns (blockIdx.y); with SWIGLU also h[r, c/2] = bf16(swiglu(out[r, c],
// out[r, c+1])) (gate/up interleaved). Block (32, kReduceLanes): threadIdx.x owns 4 columns, threadIdx.y sums the
// splits s ≡ y (mod kReduceLanes) in increasing order, then row 0 adds the lanes in increasing y: a fixed order.
// part f32 [S, N, Nc], bias bf16 [E, Nc], out bf16 [N, Nc], h bf16 [N, Nc/2]; Nc % 4 == 0.
template <bool SWIGLU>
__global__ void __launch_bounds__(32 * kReduceLanes) reduce_kernel(const float* __restrict__ part, int S, int64_t N,
                                                                   int Nc, const int32_t* __restrict__ offsets, int E,
                                                                   const bf* __restrict__ bias, float limit,
                                                                   bf* __restrict__ out, bf* __restrict__ h) {
  __shared__ float4 red[kReduceLanes][32];
  const int64_t r = blockIdx.x;
  const int c = (blockIdx.y * 32 + threadIdx.x) * 4;
  float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
  if (c < Nc)
    for (int s = threadIdx.y; s < S; s += kReduceLanes) {
      const float4 v = *reinterpret_cast<const float4*>(part + ((int64_t)s * N + r) * Nc + c);
      a.x += v.x;
      a.y += v.y;
      a.z += v.z;
      a.w += v.w;
    }
  red[threadIdx.y][threadIdx.x] = a;
  __syncthreads();
  if (threadIdx.y != 0 || c >= Nc) return;
  float v[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int y = 0; y < kReduceLanes; y++) {
    const float4 p = red[y][threadIdx.x];
    v[0] += p.x;
    v[1] += p.y;
    v[2] += p.z;
    v[3] += p.w;
  }
  // e(r): the largest e with offsets[e] <= r (empty experts share their offset with the next one).
  int lo = 0, hi = E;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (offsets[mid] <= r) lo = mid;
    else hi = mid;
  }
  float b[4];
  load4(bias + (int64_t)lo * Nc + c, b);
#pragma unroll
  for (int q = 0; q < 4; q++) v[q] = __bfloat162float(__float2bfloat16(v[q] + b[q]));
  store4(out + r * Nc + c, v);
  if constexpr (SWIGLU) {
    const __nv_bfloat162 o = __floats2bfloat162_rn(swiglu1(v[0], v[1], limit, kSwigluAlpha),
                                                   swiglu1(v[2], v[3], limit, kSwigluAlpha));
    *reinterpret_cast<__nv_bfloat162*>(h + r * (Nc / 2) + c / 2) = o;
  }
}

// One product: out [N, Nc] (+ h) from A rows times W [E, K, Nc] plus bias [E, Nc], over the routing in offsets.
// T bounds the rows of any one expert (a token picks an expert at most once).
template <int R>
void launch_partial(const bf* A, int64_t lda, const int32_t* perm, const bf* W, const int32_t* offsets, int E, int K,
                    int Nc, int ks, int S, int chunk_slots, int slots, int64_t N, float* part, cudaStream_t st) {
  const int tiles = ceil_div(Nc / 8, kThreads);
  const size_t smem = sizeof(float) * R * ks;
  partial_kernel<R><<<dim3(chunk_slots * tiles, S, slots), kThreads, smem, st>>>(A, lda, perm, W, offsets, E, K, Nc,
                                                                                 ks, chunk_slots, N, part);
}

void product(int dev, const bf* A, int64_t lda, const int32_t* perm, const bf* W, const bf* bias,
             const int32_t* offsets, int E, int K, int Nc, int64_t T, int64_t N, float limit, bf* out, bf* h,
             cudaStream_t st, const char* what) {
  const int R = T >= 5 ? 8 : T >= 3 ? 4 : T == 2 ? 2 : 1;
  const int chunk_slots = static_cast<int>((T + R - 1) / R);
  const int slots = static_cast<int>(std::min<int64_t>(E, N));
  const int tiles = ceil_div(Nc / 8, kThreads);
  // K splits: enough blocks for kBlocksPerSm per SM over the expected routed experts' tiles (one row chunk each),
  // at most kMaxSplitK rows of K per block, at least 8 (one unrolled step).
  const int64_t per_split = static_cast<int64_t>(slots) * tiles;
  int64_t S = (static_cast<int64_t>(kBlocksPerSm) * sm_count(dev, "moeForward decode") + per_split - 1) / per_split;
  S = std::max<int64_t>(S, (K + kMaxSplitK - 1) / kMaxSplitK);
  S = std::min<int64_t>(S, K / 8);
  const int ks = static_cast<int>(((K + S - 1) / S + 7) / 8 * 8);
  S = (K + ks - 1) / ks;
  Tensor part = make_tensor({S, N, Nc}, DType::F32, dev);
  float* p = part.data<float>();
  switch (R) {
    case 1: launch_partial<1>(A, lda, perm, W, offsets, E, K, Nc, ks, (int)S, chunk_slots, slots, N, p, st); break;
    case 2: launch_partial<2>(A, lda, perm, W, offsets, E, K, Nc, ks, (int)S, chunk_slots, slots, N, p, st); break;
    case 4: launch_partial<4>(A, lda, perm, W, offsets, E, K, Nc, ks, (int)S, chunk_slots, slots, N, p, st); break;
    default: launch_partial<8>(A, lda, perm, W, offsets, E, K, Nc, ks, (int)S, chunk_slots, slots, N, p, st); break;
  }
  GPTOSS_CUDA_LAUNCH_CHECK(what);
  const dim3 grid(static_cast<unsigned>(N), ceil_div(Nc / 4, 32)), block(32, kReduceLanes);
  if (h) reduce_kernel<true><<<grid, block, 0, st>>>(p, (int)S, N, Nc, offsets, E, bias, limit, out, h);
  else reduce_kernel<false><<<grid, block, 0, st>>>(p, (int)S, N, Nc, offsets, E, bias, limit, out, nullptr);
  GPTOSS_CUDA_LAUNCH_CHECK(what);
  // part goes back to the caching allocator; the stream orders its reuse after reduce_kernel.
}

}  // namespace

static_assert(kMaxSplitK % kUnroll == 0 && kMaxSplitK % 8 == 0, "splits are whole unrolled steps");

void expert_mlp(const Tensor& x, const Tensor& perm_tok, const Tensor& offsets, const MoeWeights& w, int64_t T,
                int64_t N, float limit, const Tensor& gu, const Tensor& h, const Tensor& yp, cudaStream_t st) {
  const int dev = x.device;
  const int64_t H = x.dim(1), E = w.gate_up_w.dim(0), I = w.down_w.dim(1);
  const int32_t* off = offsets.data<int32_t>();
  product(dev, x.data<bf>(), H, perm_tok.data<int32_t>(), w.gate_up_w.data<bf>(), w.gate_up_b.data<bf>(), off, (int)E,
          (int)H, (int)(2 * I), T, N, limit, gu.data<bf>(), h.data<bf>(), st, "moeForward decode gate_up");
  product(dev, h.data<bf>(), I, nullptr, w.down_w.data<bf>(), w.down_b.data<bf>(), off, (int)E, (int)I, (int)H, T, N,
          limit, yp.data<bf>(), nullptr, st, "moeForward decode down");
}

}  // namespace gptoss::cuda::moe_decode
