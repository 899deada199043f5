// moe_decode_kernels.cuh: the decode MoE kernels of moe_decode.cu (see its header for the design), with the
// launch shape as template and function parameters: moe_decode.cu launches them with the product's (kThreads,
// kUnroll, blocks_per_sm, kMaxSplitK there) and bench/moe_decode_harness/ calls them directly with others, to tune
// those on a GPU in one run instead of one rebuild per guess.
#pragma once
#include <algorithm>
#include <climits>
#include <cstdint>

#include "../cpu/moe.h"  // kSwigluAlpha
#include "common.cuh"
#include "swiglu_math.cuh"
#include "vec_io.cuh"

namespace gptoss::cuda::moe_decode {

using bf = __nv_bfloat16;

// Split sums: the reduces' blocks have kReduceLanes split lanes, a warp each (reduce_kernel's threadIdx.y,
// reduce_combine_kernel's threadIdx.z), over threads of 4 columns each.
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

// A partial kernel block's task (grid: x = row chunk + chunk_slots·(column tile), y = K split, z = expert slot): its
// routed expert e, column tile, first routed row (its chunk's start in the expert's segment), rows (<= R; 0 when the
// slot has no expert or the chunk no rows: the block has nothing to do) and K range [k0, k0 + klen).
struct PartialTask {
  int e, tile, first, rows, k0, klen;
};
template <int R>
__device__ __forceinline__ PartialTask partial_task(const int32_t* __restrict__ offsets, int E, int K, int ks,
                                                    int chunk_slots) {
  PartialTask t{};
  t.e = slot_expert(offsets, E, blockIdx.z);  // a block barrier: every thread calls it
  if (t.e < 0) return t;
  const int chunk = blockIdx.x % chunk_slots;
  const int seg = offsets[t.e], count = offsets[t.e + 1] - seg, r0 = chunk * R;
  t.tile = blockIdx.x / chunk_slots;
  t.first = seg + r0;
  t.rows = max(0, min(R, count - r0));
  t.k0 = blockIdx.y * ks;
  t.klen = min(ks, K - t.k0);
  return t;
}

// The partial kernels' x staging: rows first .. first + rows - 1 of the routed order (row(r) = perm ? perm[r] : r)
// of A bf16 [*, lda], columns k0 .. k0 + klen - 1, into xs f32 [R][ks] (16-byte loads; zeros past rows and klen).
template <int R, int THREADS>
__device__ __forceinline__ void stage_rows(const bf* __restrict__ A, int64_t lda, const int32_t* __restrict__ perm,
                                           int first, int rows, int k0, int klen, int ks, float* xs) {
  const int kc = ks / 8;
  for (int c = threadIdx.x; c < R * kc; c += THREADS) {
    const int r = c / kc, k = (c % kc) * 8;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (r < rows && k < klen) {
      const int64_t pr = first + r;
      const int64_t src = perm ? perm[pr] : pr;
      load8(A + src * lda + k0 + k, v);
    }
    float4* d = reinterpret_cast<float4*>(xs + r * ks + k);
    d[0] = make_float4(v[0], v[1], v[2], v[3]);
    d[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

// A thread's 8 columns of its first `rows` rows' partial sums to out f32 (row stride Nc).
template <int R>
__device__ __forceinline__ void store_partials(const float (&acc)[R][8], int rows, float* out, int Nc) {
#pragma unroll
  for (int r = 0; r < R; r++) {
    if (r >= rows) break;
    float4* o = reinterpret_cast<float4*>(out + (int64_t)r * Nc);
    o[0] = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
    o[1] = make_float4(acc[r][4], acc[r][5], acc[r][6], acc[r][7]);
  }
}

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
  const PartialTask t = partial_task<R>(offsets, E, K, ks, chunk_slots);
  if (t.rows <= 0) return;  // block-uniform: no routed expert in this slot, or no rows in this chunk
  const int e = t.e, tile = t.tile, first = t.first, rows = t.rows, k0 = t.k0, klen = t.klen;

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

  stage_rows<R, THREADS>(A, lda, perm, first, rows, k0, klen, ks, xs);
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

  store_partials<R>(acc, rows, part + ((int64_t)blockIdx.y * N + first) * Nc + n, Nc);
}

// The reduces' shared pieces. Both reduces are latency-bound at decode (a few µs for at most a few MB, mostly L2
// hits of the partials just written, plus bias rows cold in HBM), so each sends its independent loads out together
// and waits on them once: the split partials (lane_loads), the expert lookup's offsets (offsets_load) and, as soon
// as e(r) is known, the bias rows; only then does it add.
//
// The sums per column have one fixed order (deterministic; the same bits whatever the launch shape): split lane y
// sums the splits s ≡ y (mod kReduceLanes) in increasing s from 0.f (lane_sum), the lanes are added in increasing y
// from 0.f (lanes_total), then one bf16 rounding with the bias (biased_row). Loading ahead changes none of it: the
// adds run in that order whatever order the loads land in.
//
// L (a template parameter of both reduces): a lane's split loads in flight at once, a batch (a lane with more
// splits waits once per batch). The launchers take kLaneLoads[0] where it holds ceil(S / kReduceLanes), else
// kLaneLoads[1]. 12 covers every split count of the product on an H100 (S 72 at T 1 down: 9 per lane; S 40 at T 1
// gate_up: 5) and on a 148-SM GPU (S 90: up to 12), so a reduce waits on its partials once; 4 covers T >= 2 there
// (S <= 22: at most 3 per lane) in fewer registers, so more blocks stay resident where the grid is large (T 16: 2880
// reduce_kernel blocks).
constexpr int kLaneLoads[2] = {4, 12};

// part[s, r, c .. c+3] for split lane y's splits s = s0, s0 + kReduceLanes, ... (L of them; zeros for those at or
// past S, or for all where !ok: lane_sum adds none of those).
template <int L>
__device__ __forceinline__ void lane_loads(const float* __restrict__ part, int S, int64_t N, int Nc, int64_t r, int c,
                                           int s0, bool ok, float4 (&v)[L]) {
  // The addresses outside the conditions: each guarded load is then a one-instruction branch (PTX), which ptxas can
  // predicate, so the L loads go out back to back before the first add waits.
  const float4* p = reinterpret_cast<const float4*>(part + ((int64_t)s0 * N + r) * Nc + c);
  const int64_t step = (int64_t)kReduceLanes * N * Nc / 4;
#pragma unroll
  for (int u = 0; u < L; u++)
    v[u] = ok && s0 + u * kReduceLanes < S ? __ldg(p + u * step) : make_float4(0.f, 0.f, 0.f, 0.f);
}

// Split lane y's share of Σ_s part[s, r, c..c+3]: 0.f, then += part[s] for s = y, y + kReduceLanes, ... < S in
// increasing s (0.f where !ok). v: its first batch (lane_loads at s0 = y), which the caller issues so that its
// other loads go out beside it; splits past that batch are loaded here, a batch at a time.
template <int L>
__device__ __forceinline__ float4 lane_sum(const float* __restrict__ part, int S, int64_t N, int Nc, int64_t r, int c,
                                           int y, bool ok, const float4 (&v)[L]) {
  float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
  const auto add = [&](int s0, const float4(&b)[L]) {
#pragma unroll
    for (int u = 0; u < L; u++) {
      if (!ok || s0 + u * kReduceLanes >= S) break;
      a.x += b[u].x;
      a.y += b[u].y;
      a.z += b[u].z;
      a.w += b[u].w;
    }
  };
  add(y, v);
  for (int s0 = y + L * kReduceLanes; ok && s0 < S; s0 += L * kReduceLanes) {
    float4 w[L];
    lane_loads(part, S, N, Nc, r, c, s0, true, w);
    add(s0, w);
  }
  return a;
}

// Column quad x's lane sums (red[y][x]: split lane y's) added in increasing lane from 0.f.
__device__ __forceinline__ void lanes_total(const float4 (&red)[kReduceLanes][32], int x, float (&v)[4]) {
  v[0] = v[1] = v[2] = v[3] = 0.f;
#pragma unroll
  for (int y = 0; y < kReduceLanes; y++) {
    const float4 p = red[y][x];
    v[0] += p.x;
    v[1] += p.y;
    v[2] += p.z;
    v[3] += p.w;
  }
}

// e(r), the largest e with offsets[e] <= r (offsets [E+1] non-decreasing from 0 and r < offsets[E]; empty experts
// share their offset with the next one), is the count of e in [1, E) with offsets[e] <= r: a warp counts it after
// one round trip of independent loads, where a binary search waits on log2(E) dependent ones. offsets_load: lane
// l's offsets[1 + l + 32i] for i < kLookupChunks (INT_MAX past E - 1); expert_of: the warp's count, called by all 32
// lanes with the same r. kLookupChunks covers E <= 257 (moe.cu's kMaxSlabExperts, 256, bounds the routing); a larger
// E (a harness) takes the binary search.
constexpr int kLookupChunks = 8;

__device__ __forceinline__ void offsets_load(const int32_t* __restrict__ offsets, int E, int lane,
                                             int (&off)[kLookupChunks]) {
#pragma unroll
  for (int i = 0; i < kLookupChunks; i++) {
    const int e = 1 + lane + 32 * i;
    off[i] = e < E ? __ldg(offsets + e) : INT_MAX;
  }
}

__device__ __forceinline__ int expert_of(const int (&off)[kLookupChunks], const int32_t* __restrict__ offsets, int E,
                                         int64_t r) {
  if (E > 1 + 32 * kLookupChunks) {
    int lo = 0, hi = E;
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (offsets[mid] <= r) lo = mid;
      else hi = mid;
    }
    return lo;
  }
  unsigned n = 0;
#pragma unroll
  for (int i = 0; i < kLookupChunks; i++) n += off[i] <= r;
  return static_cast<int>(__reduce_add_sync(0xffffffffu, n));
}

// 4 bf16 values (loaded ahead as raw bits: half the registers while they wait) -> fp32.
__device__ __forceinline__ uint2 ld_bf4(const bf* p) { return __ldg(reinterpret_cast<const uint2*>(p)); }
__device__ __forceinline__ void unpack4(uint2 u, float (&v)[4]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
  const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
  v[0] = a.x;
  v[1] = a.y;
  v[2] = b.x;
  v[3] = b.y;
}

// The reduced row both reduces store: v = bf16(lanes_total + bias[e(r), c .. c+3]) (bias: those 4 bf16, loaded
// ahead by the caller), the one rounding point of the grouped path's bias epilogue.
__device__ __forceinline__ void biased_row(const float4 (&red)[kReduceLanes][32], int x, uint2 bias, float (&v)[4]) {
  lanes_total(red, x, v);
  float b[4];
  unpack4(bias, b);
#pragma unroll
  for (int q = 0; q < 4; q++) v[q] = __bfloat162float(__float2bfloat16(v[q] + b[q]));
}

// out[r, c] = bf16(Σ_{s < S} part[s, r, c] + bias[e(r), c]) for one permuted row r = blockIdx.x (e(r): the expert
// whose segment holds r) and 128 columns (blockIdx.y); with SWIGLU also h[r, c/2] = bf16(swiglu(out[r, c],
// out[r, c+1])) (gate/up interleaved). Block (32, kReduceLanes): threadIdx.x owns 4 columns, threadIdx.y sums the
// splits s ≡ y (mod kReduceLanes) in increasing order, then row 0 adds the lanes in increasing y: a fixed order.
// Warp 0 (threadIdx.y 0, the threads that finish the row) sends its offsets load out beside its partials and its
// bias load as soon as the offsets land, so the block waits on about max(partials, offsets + bias) rather than on
// the partials, a barrier, log2(E) dependent offsets loads and then the bias.
// part f32 [S, N, Nc], bias bf16 [E, Nc], out bf16 [N, Nc], h bf16 [N, Nc/2]; Nc % 4 == 0.
template <bool SWIGLU, int L>
__global__ void __launch_bounds__(32 * kReduceLanes) reduce_kernel(const float* __restrict__ part, int S, int64_t N,
                                                                   int Nc, const int32_t* __restrict__ offsets, int E,
                                                                   const bf* __restrict__ bias, float limit,
                                                                   bf* __restrict__ out, bf* __restrict__ h) {
  __shared__ float4 red[kReduceLanes][32];
  const int64_t r = blockIdx.x;
  const int c = (blockIdx.y * 32 + threadIdx.x) * 4;
  const bool col = c < Nc, fin = threadIdx.y == 0;  // fin: warp 0
  int off[kLookupChunks];
  if (fin) offsets_load(offsets, E, threadIdx.x, off);
  float4 v[L];
  lane_loads(part, S, N, Nc, r, c, threadIdx.y, col, v);
  uint2 b = make_uint2(0u, 0u);
  if (fin) {
    const int e = expert_of(off, offsets, E, r);  // all of warp 0 (the last block's threads past Nc too)
    if (col) b = ld_bf4(bias + (int64_t)e * Nc + c);
  }
  red[threadIdx.y][threadIdx.x] = lane_sum(part, S, N, Nc, r, c, threadIdx.y, col, v);
  __syncthreads();
  if (!fin || !col) return;
  float o[4];
  biased_row(red, threadIdx.x, b, o);
  store4(out + r * Nc + c, o);
  if constexpr (SWIGLU) {
    const __nv_bfloat162 g = __floats2bfloat162_rn(swiglu1(o[0], o[1], limit, kSwigluAlpha),
                                                   swiglu1(o[2], o[3], limit, kSwigluAlpha));
    *reinterpret_cast<__nv_bfloat162*>(h + r * (Nc / 2) + c / 2) = g;
  }
}

// reduce_combine_kernel's block (kCombineCols, kCombineRows, kReduceLanes): warp y (threadIdx.z) is split lane y
// for kCombineCols column quads x kCombineRows routed rows, so a group's rows are reduced side by side rather than one
// after another, and warp 0 (split lane 0) has a thread for every column quad and row of the group: it finishes the
// rows and hands them to the combine by shuffles, with no second barrier. 32 columns (not reduce_kernel's 128) keep
// the block at 256 threads and spread a token's partials over H/32 blocks (90 at H 2880) rather than 23.
constexpr int kCombineCols = 8;  // column quads
constexpr int kCombineRows = 4;  // routed rows per group: gpt-oss's top-4 is one group, one barrier
static_assert(kCombineCols * kCombineRows == 32, "a warp is one split lane of the block's columns and group rows");

// The down product's reduce with the MoE combine folded in (decode: one launch fewer per layer). Per token t =
// blockIdx.x and 32 columns (blockIdx.y): for j < k in order, r = slot_pos[t, j]: yp[r, c] = bf16(Σ_s part[s, r, c]
// + bias[e(r), c]) (reduce_kernel's sums, order and rounding; yp is still written, the backward reads it), and
// acc += w[t, j]·yp[r, c]; then y[t, c] = bf16(acc), with a residual bf16(res[t, c] + bf16(acc)): combine_kernel's
// arithmetic (moe.cu), so y has the same bits as reduce_kernel + combine_kernel.
// Thread (x, q, y) owns columns c .. c+3 (x), row j = j0 + q of the group of kCombineRows rows from j0, and split
// lane y. Its loads wait in two dependent round trips: (1) slot_pos in every warp (lane j holds r of row j; the
// threads take theirs by shuffle: no shared copy, no barrier) and, in warp 0, tw, the offsets and the residual;
// (2) in warp 0 the bias rows of the group (sent first: the cold loads; e(r) counted by expert_of), then every
// thread's partials. One barrier per group (the lane sums), after which warp 0's thread (x, q, 0) finishes row
// j0 + q (yp) and the rows reach acc in increasing j by shuffles; thread (x, 0, 0) stores y.
// part f32 [S, N, H], slot_pos i32 [T, k], tw f32 [T, k], res bf16 [T, H] or null, yp bf16 [N, H], y bf16 [T, H];
// H % 4 == 0, k <= 32.
template <int L>
__global__ void __launch_bounds__(32 * kReduceLanes) reduce_combine_kernel(
    const float* __restrict__ part, int S, int64_t N, int H, const int32_t* __restrict__ offsets, int E,
    const bf* __restrict__ bias, const int32_t* __restrict__ slot_pos, const float* __restrict__ tw, int k,
    const bf* __restrict__ res, bf* __restrict__ yp, bf* __restrict__ y) {
  // red[g][y][x + kCombineCols·q]: lane sums, two buffers: the next group's go into one while warp 0 still reads
  // this group's from the other.
  __shared__ float4 red[2][kReduceLanes][32];
  const int64_t t = blockIdx.x;
  const int x = threadIdx.x, q = threadIdx.y, ly = threadIdx.z, lane = x + kCombineCols * q;
  const bool w0 = ly == 0;
  const int c = (blockIdx.y * kCombineCols + x) * 4;
  const bool col = c < H;
  const int pos = lane < k ? __ldg(slot_pos + t * k + lane) : 0;  // k <= 32
  float wl = 0.f;
  int off[kLookupChunks];
  uint2 rv = make_uint2(0u, 0u);
  if (w0) {
    wl = lane < k ? __ldg(tw + t * k + lane) : 0.f;
    offsets_load(offsets, E, lane, off);
    if (q == 0 && col && res) rv = ld_bf4(res + t * H + c);
  }
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int j0 = 0, g = 0; j0 < k; j0 += kCombineRows, g ^= 1) {
    const int j = j0 + q;  // <= 31: j0 is a multiple of kCombineRows below k <= 32
    const int64_t r = __shfl_sync(0xffffffffu, pos, j);
    const bool ok = col && j < k;
    uint2 b = make_uint2(0u, 0u);
    if (w0) {
      int e = 0;
#pragma unroll
      for (int i = 0; i < kCombineRows; i++) {
        const int ei = expert_of(off, offsets, E, __shfl_sync(0xffffffffu, pos, j0 + i));
        if (i == q) e = ei;
      }
      if (ok) b = ld_bf4(bias + (int64_t)e * H + c);
    }
    float4 v[L];
    lane_loads(part, S, N, H, r, c, ly, ok, v);
    red[g][ly][lane] = lane_sum(part, S, N, H, r, c, ly, ok, v);
    __syncthreads();
    if (w0) {
      float o[4];
      biased_row(red[g], lane, b, o);
      if (ok) store4(yp + r * H + c, o);
      // Every thread (x, q, 0) adds the group's rows i of quad x, from threads (x, i, 0); (x, 0, 0)'s acc is stored.
#pragma unroll
      for (int i = 0; i < kCombineRows; i++) {
        if (j0 + i >= k) break;
        const float wi = __shfl_sync(0xffffffffu, wl, j0 + i);
#pragma unroll
        for (int z = 0; z < 4; z++) acc[z] += wi * __shfl_sync(0xffffffffu, o[z], x + kCombineCols * i);
      }
    }
  }
  if (!w0 || q != 0 || !col) return;
  float o[4];
#pragma unroll
  for (int z = 0; z < 4; z++) o[z] = __bfloat162float(__float2bfloat16(acc[z]));
  if (res) {
    float rf[4];
    unpack4(rv, rf);
#pragma unroll
    for (int z = 0; z < 4; z++) o[z] = rf[z] + o[z];
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

// Whether a reduce over S splits takes the many-loads instantiation (kLaneLoads[1]): a lane has more splits than
// kLaneLoads[0].
inline bool many_lane_loads(int S) { return ceil_div(S, kReduceLanes) > kLaneLoads[0]; }

// reduce_kernel over grid (N rows, Nc/128): out (+ h with SWIGLU) from the S split partials.
inline void launch_reduce(const float* part, int S, int64_t N, int Nc, const int32_t* offsets, int E, const bf* bias,
                          float limit, bf* out, bf* h, cudaStream_t st) {
  const dim3 grid(static_cast<unsigned>(N), ceil_div(Nc / 4, 32)), block(32, kReduceLanes);
  const bool many = many_lane_loads(S);
  auto kernel = h ? (many ? reduce_kernel<true, kLaneLoads[1]> : reduce_kernel<true, kLaneLoads[0]>)
                  : (many ? reduce_kernel<false, kLaneLoads[1]> : reduce_kernel<false, kLaneLoads[0]>);
  kernel<<<grid, block, 0, st>>>(part, S, N, Nc, offsets, E, bias, limit, out, h);
}

// reduce_combine_kernel over grid (T tokens, H/32), block (kCombineCols, kCombineRows, kReduceLanes).
inline void launch_reduce_combine(const float* part, int S, int64_t N, int H, const int32_t* offsets, int E,
                                  const bf* bias, int64_t T, const int32_t* slot_pos, const float* tw, int k,
                                  const bf* res, bf* yp, bf* y, cudaStream_t st) {
  const dim3 grid(static_cast<unsigned>(T), ceil_div(H / 4, kCombineCols)),
      block(kCombineCols, kCombineRows, kReduceLanes);
  auto kernel = many_lane_loads(S) ? reduce_combine_kernel<kLaneLoads[1]> : reduce_combine_kernel<kLaneLoads[0]>;
  kernel<<<grid, block, 0, st>>>(part, S, N, H, offsets, E, bias, slot_pos, tw, k, res, yp, y);
}

}  // namespace gptoss::cuda::moe_decode
