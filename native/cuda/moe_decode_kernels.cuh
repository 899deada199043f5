// moe_decode_kernels.cuh: the decode MoE kernels of moe_decode.cu (see its header for the design), with the
// launch shape as template and function parameters: moe_decode.cu launches them with the product's (kThreads,
// kUnroll, blocks_per_sm, kMaxSplitK there) and bench/moe_decode_harness/ calls them directly with others, to tune
// those on a GPU in one run instead of one rebuild per guess.
#pragma once
#include <algorithm>
#include <cstdint>

#include "../cpu/moe.h"  // kSwigluAlpha
#include "common.cuh"
#include "swiglu_math.cuh"
#include "vec_io.cuh"

namespace gptoss::cuda::moe_decode {

using bf = __nv_bfloat16;

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
template <int R, int THREADS, int UNROLL>
__global__ void __launch_bounds__(THREADS) partial_kernel(const bf* __restrict__ A, int64_t lda,
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
  // (K and ks are), so every step is a whole UNROLL-row step.
  const int n = (tile * THREADS + threadIdx.x) * 8;
  const bool active = n < Nc;  // columns past Nc (the last tile) load nothing and leave after the barrier
  const bf* wp = W + ((int64_t)e * K + k0) * Nc + n;
  uint4 wv[UNROLL];
  if (active) {
#pragma unroll
    for (int u = 0; u < UNROLL; u++) wv[u] = ld_stream(wp + (int64_t)u * Nc);
  }

  // Stage the rows' K slice (16-byte loads; zeros past the count).
  const int kc = ks / 8;
  for (int c = threadIdx.x; c < R * kc; c += THREADS) {
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

  // Not double-buffered: a second set of UNROLL loads in registers (56 -> 95 at R 1) would cut the resident blocks
  // per SM below blocks_per_sm; the other resident warps hide each step's latency instead.
  for (int kk = 0; kk < klen; kk += UNROLL) {
    if (kk > 0) {
#pragma unroll
      for (int u = 0; u < UNROLL; u++) wv[u] = ld_stream(wp + (int64_t)(kk + u) * Nc);
    }
    // One weight row at a time: unpack its 8 values once, then one broadcast shared-memory read of x per row.
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
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

// The reduces' shared pieces. lane_sum: lane threadIdx.y's share of Σ_s part[s, r, c..c+3] (s = y, y +
// kReduceLanes, ... in increasing order); lanes_total: the lane sums added in increasing lane (the fixed order that
// makes the reduce deterministic); expert_of: e(r), the largest e with offsets[e] <= r (empty experts share their
// offset with the next one).
__device__ __forceinline__ float4 lane_sum(const float* __restrict__ part, int S, int64_t N, int Nc, int64_t r,
                                           int c) {
  float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int s = threadIdx.y; s < S; s += kReduceLanes) {
    const float4 v = *reinterpret_cast<const float4*>(part + ((int64_t)s * N + r) * Nc + c);
    a.x += v.x;
    a.y += v.y;
    a.z += v.z;
    a.w += v.w;
  }
  return a;
}

__device__ __forceinline__ void lanes_total(const float4 (&red)[kReduceLanes][32], float (&v)[4]) {
  v[0] = v[1] = v[2] = v[3] = 0.f;
#pragma unroll
  for (int y = 0; y < kReduceLanes; y++) {
    const float4 p = red[y][threadIdx.x];
    v[0] += p.x;
    v[1] += p.y;
    v[2] += p.z;
    v[3] += p.w;
  }
}

__device__ __forceinline__ int expert_of(const int32_t* __restrict__ offsets, int E, int64_t r) {
  int lo = 0, hi = E;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (offsets[mid] <= r) lo = mid;
    else hi = mid;
  }
  return lo;
}

// The reduced row both reduces store: v = bf16(lanes_total + bias[e(r), c .. c+3]), the one rounding point of the
// grouped path's bias epilogue (threadIdx.y == 0 after the lane sums are in red).
__device__ __forceinline__ void biased_row(const float4 (&red)[kReduceLanes][32], const int32_t* __restrict__ offsets,
                                           int E, const bf* __restrict__ bias, int Nc, int64_t r, int c,
                                           float (&v)[4]) {
  lanes_total(red, v);
  float b[4];
  load4(bias + (int64_t)expert_of(offsets, E, r) * Nc + c, b);
#pragma unroll
  for (int q = 0; q < 4; q++) v[q] = __bfloat162float(__float2bfloat16(v[q] + b[q]));
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
  red[threadIdx.y][threadIdx.x] = c < Nc ? lane_sum(part, S, N, Nc, r, c) : make_float4(0.f, 0.f, 0.f, 0.f);
  __syncthreads();
  if (threadIdx.y != 0 || c >= Nc) return;
  float v[4];
  biased_row(red, offsets, E, bias, Nc, r, c, v);
  store4(out + r * Nc + c, v);
  if constexpr (SWIGLU) {
    const __nv_bfloat162 o = __floats2bfloat162_rn(swiglu1(v[0], v[1], limit, kSwigluAlpha),
                                                   swiglu1(v[2], v[3], limit, kSwigluAlpha));
    *reinterpret_cast<__nv_bfloat162*>(h + r * (Nc / 2) + c / 2) = o;
  }
}

// The down product's reduce with the MoE combine folded in (decode: one launch fewer per layer). Per token t =
// blockIdx.x and 128 columns (blockIdx.y): for j < k in order, r = slot_pos[t, j]: yp[r, c] = bf16(Σ_s part[s, r, c]
// + bias[e(r), c]) (reduce_kernel's sums, order and rounding; yp is still written, the backward reads it), and
// acc += w[t, j]·yp[r, c]; then y[t, c] = bf16(acc), with a residual bf16(res[t, c] + bf16(acc)): combine_kernel's
// arithmetic (moe.cu), so y has the same bits as reduce_kernel + combine_kernel. part f32 [S, N, H], slot_pos i32
// [T, k], tw f32 [T, k], res bf16 [T, H] or null, yp bf16 [N, H], y bf16 [T, H]; H % 4 == 0, k <= 32.
__global__ void __launch_bounds__(32 * kReduceLanes) reduce_combine_kernel(
    const float* __restrict__ part, int S, int64_t N, int H, const int32_t* __restrict__ offsets, int E,
    const bf* __restrict__ bias, const int32_t* __restrict__ slot_pos, const float* __restrict__ tw, int k,
    const bf* __restrict__ res, bf* __restrict__ yp, bf* __restrict__ y) {
  __shared__ float4 red[kReduceLanes][32];
  __shared__ int pos[32];
  __shared__ float w[32];
  const int64_t t = blockIdx.x;
  const int tid = threadIdx.y * 32 + threadIdx.x;
  if (tid < k) {
    pos[tid] = slot_pos[t * k + tid];
    w[tid] = tw[t * k + tid];
  }
  const int c = (blockIdx.y * 32 + threadIdx.x) * 4;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int j = 0; j < k; j++) {
    __syncthreads();  // pos / w written; the previous row's lane sums read
    const int64_t r = pos[j];
    red[threadIdx.y][threadIdx.x] = c < H ? lane_sum(part, S, N, H, r, c) : make_float4(0.f, 0.f, 0.f, 0.f);
    __syncthreads();
    if (threadIdx.y != 0 || c >= H) continue;
    float v[4];
    biased_row(red, offsets, E, bias, H, r, c, v);
#pragma unroll
    for (int q = 0; q < 4; q++) acc[q] += w[j] * v[q];
    store4(yp + r * H + c, v);
  }
  if (threadIdx.y != 0 || c >= H) return;
  float o[4];
#pragma unroll
  for (int q = 0; q < 4; q++) o[q] = __bfloat162float(__float2bfloat16(acc[q]));
  if (res) {
    float rv[4];
    load4(res + t * H + c, rv);
#pragma unroll
    for (int q = 0; q < 4; q++) o[q] = rv[q] + o[q];
  }
  store4(y + t * H + c, o);
}

// The K split of a product: ks rows of K per block (a multiple of 8), S = ceil(K / ks) splits. Enough blocks for
// blocks_per_sm per SM over the routed experts' column tiles (slots experts, one row chunk each), at most
// max_split_k rows of K per block, at least 8 (one unrolled step of 8 rows).
struct Split {
  int S, ks;
};
inline Split split_k(int sms, int slots, int K, int Nc, int threads, int blocks_per_sm, int max_split_k) {
  const int tiles = ceil_div(Nc / 8, threads);
  const int64_t per_split = static_cast<int64_t>(slots) * tiles;
  int64_t S = (static_cast<int64_t>(blocks_per_sm) * sms + per_split - 1) / per_split;
  S = std::max<int64_t>(S, (K + max_split_k - 1) / max_split_k);
  S = std::min<int64_t>(S, K / 8);
  const int ks = static_cast<int>(((K + S - 1) / S + 7) / 8 * 8);
  return {static_cast<int>((K + ks - 1) / ks), ks};
}

// partial_kernel over grid (chunk_slots x column tiles, S, slots) with R·ks fp32 of shared memory.
template <int R, int THREADS, int UNROLL>
void launch_partial(const bf* A, int64_t lda, const int32_t* perm, const bf* W, const int32_t* offsets, int E, int K,
                    int Nc, Split sp, int chunk_slots, int slots, int64_t N, float* part, cudaStream_t st) {
  static_assert(8 % UNROLL == 0, "a split (ks rows, a multiple of 8) is whole unrolled steps");
  const int tiles = ceil_div(Nc / 8, THREADS);
  const size_t smem = sizeof(float) * R * sp.ks;
  partial_kernel<R, THREADS, UNROLL><<<dim3(chunk_slots * tiles, sp.S, slots), THREADS, smem, st>>>(
      A, lda, perm, W, offsets, E, K, Nc, sp.ks, chunk_slots, N, part);
}

// reduce_kernel over grid (N rows, Nc/128): out (+ h with SWIGLU) from the S split partials.
inline void launch_reduce(const float* part, int S, int64_t N, int Nc, const int32_t* offsets, int E, const bf* bias,
                          float limit, bf* out, bf* h, cudaStream_t st) {
  const dim3 grid(static_cast<unsigned>(N), ceil_div(Nc / 4, 32)), block(32, kReduceLanes);
  if (h) reduce_kernel<true><<<grid, block, 0, st>>>(part, S, N, Nc, offsets, E, bias, limit, out, h);
  else reduce_kernel<false><<<grid, block, 0, st>>>(part, S, N, Nc, offsets, E, bias, limit, out, nullptr);
}

// reduce_combine_kernel over grid (T tokens, H/128).
inline void launch_reduce_combine(const float* part, int S, int64_t N, int H, const int32_t* offsets, int E,
                                  const bf* bias, int64_t T, const int32_t* slot_pos, const float* tw, int k,
                                  const bf* res, bf* yp, bf* y, cudaStream_t st) {
  reduce_combine_kernel<<<dim3(static_cast<unsigned>(T), ceil_div(H / 4, 32)), dim3(32, kReduceLanes), 0, st>>>(
      part, S, N, H, offsets, E, bias, slot_pos, tw, k, res, yp, y);
}

}  // namespace gptoss::cuda::moe_decode
