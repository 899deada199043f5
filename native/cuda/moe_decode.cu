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
// The fused path (GPTOSS_UNVERIFIED_KERNELS=1, common.cuh: written without a GPU, awaiting its first GPU test;
// otherwise the two kernels above run unchanged): fused_kernel does a product in ONE launch, so a layer is 2
// launches instead of 4, with the same products, the same split order and the same rounding points (bitwise the
// same gu, h, yp). reduce_kernel's fixed order is: lane l (0..7) sums the splits s = l, l+8, l+16, ... in increasing
// order starting from 0.f, then the 8 lane sums are added in increasing l starting from 0.f. fused_kernel gives each
// block one whole lane: block (tile, l, slot) computes the split partials s = l, l+8, ... one after the other
// (each from 0.f, the same FMAs in the same k order as partial_kernel) and folds them into its lane sum as it goes,
// writes the lane sum (f32 [8, N, Nc], S/8 times less than the S partials), and takes a ticket; the last of the
// tile's lane blocks adds the 8 lane sums in order and applies reduce_kernel's epilogue. Why lanes rather than one
// block per split with the last of S blocks summing all S partials: that last block would read S fp32 per column
// alone (S 40 at gpt-oss-20b's gate_up: 160 KB per row by 128 threads, several µs of serial tail per product,
// about what the launch it saves costs); here it reads 8 per column (one round trip). Fewer, longer blocks
// instead: each thread keeps more loads in flight (fused_unroll) and streams across its splits without a break.
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

// The K split of a product, shared by both paths (the fused path must split exactly as the two-kernel path to
// give the same sums): ks rows of K per split (a multiple of 8), S = ceil(K / ks) splits.
struct Split {
  int S, ks;
};
Split split_of(int dev, int slots, int K, int Nc) {
  const int tiles = ceil_div(Nc / 8, kThreads);
  // K splits: enough blocks for kBlocksPerSm per SM over the expected routed experts' tiles (one row chunk each),
  // at most kMaxSplitK rows of K per block, at least 8 (one unrolled step).
  const int64_t per_split = static_cast<int64_t>(slots) * tiles;
  int64_t S = (static_cast<int64_t>(kBlocksPerSm) * sm_count(dev, "moeForward decode") + per_split - 1) / per_split;
  S = std::max<int64_t>(S, (K + kMaxSplitK - 1) / kMaxSplitK);
  S = std::min<int64_t>(S, K / 8);
  const int ks = static_cast<int>(((K + S - 1) / S + 7) / 8 * 8);
  return {static_cast<int>((K + ks - 1) / ks), ks};
}

// ---- The fused path (GPTOSS_UNVERIFIED_KERNELS=1; see the header) ----

// fused_kernel's block is one warp: 32 threads x 8 columns = a 256-column tile. Why so narrow: a product has
// slots·(Nc/8)·8 lane threads whatever the block shape (gpt-oss-20b at one token: 4·720·8 = 23,040 for gate_up,
// 4·360·8 = 11,520 for down, 3-6 warps per SM), so narrow tiles spread them over every SM (gate_up 23 tiles x 8
// lanes x 4 experts = 736 blocks, down 12 x 8 x 4 = 384) instead of leaving SMs idle, and a one-warp block needs no
// block barrier (its x staging and ticket are warp-synchronous).
constexpr int kFusedThreads = 32;
// Weight rows in flight per thread (16-byte loads issued together before their FMAs), by R (rows per chunk).
// Bytes in flight must cover HBM bandwidth x latency: ~3.35 TB/s x ~1 µs loaded latency ≈ 3.4 MB on an H100
// (the two-kernel path has far more, ~15 MB, and still reaches only 58-70%: its cost is the launches, the
// dependent start of every short block and the reduce pass, not the loads in flight). With one block per lane the
// product has few threads (above), so each keeps more loads in flight:
//  - R 1 (one token): 32 rows = 512 B per thread: gate_up 23,040 threads = 11.8 MB, down 11,520 = 5.9 MB (a 16-row
//    step would leave down at 2.9 MB, under the ~3.4 MB needed). 128 registers of loads (~180 in all, no spills):
//    8 one-warp blocks per SM fit, the grid needs 5.6 (gate_up) and 2.9 (down), so it is one wave.
//  - R 2 (two tokens, up to 8 experts): 16 rows (12 MB in flight for gate_up).
//  - R 4 and 8: 8 rows (the R·8 accumulators and lane sums take the registers; more chunks and experts give more
//    threads: 12 MB in flight at T 4).
// Blocks per SM: fused_min_blocks below.
// The loads stream across the lane's splits without a break (a step may end one split and start the next:
// 8-row groups, ks % 8 == 0). To be re-measured with bench/moe.ts --decode.
template <int R>
constexpr int fused_unroll() {
  return R == 1 ? 32 : R == 2 ? 16 : 8;
}
// One-warp blocks resident per SM that ptxas must allow (__launch_bounds__' second argument caps the registers:
// 16 -> 128 per thread, 8 -> 255; registers are allocated per SM sub-partition, 16,384 each, in 256-register warp
// units). R 2 and 4 have the larger grids (more experts: gate_up up to 23 x 8 x 8 = 1,472 blocks at T 2 and
// 23 x 8 x 16 = 2,944 at T 4), so they are held to 128 registers, 16 blocks per SM (2,112 on an H100: one wave at
// T 2, ~1.4 at T 4 with 16 experts routed, as the two-kernel path's partial_kernel is ~1.6 there); R 1 needs its 128
// registers of loads (~180 in all: 8 per SM, 1,056, and one token's gate_up needs 736) and R 8 its 128 of sums.
template <int R>
constexpr int fused_min_blocks() {
  return R == 2 || R == 4 ? 16 : 8;
}
// Tickets: one counter per (expert slot, row chunk, column tile) = per block of a lane's grid plane, static device
// memory (zeroed when the module loads, fixed address: nothing to allocate or clear at capture or replay). Each
// launch draws exactly `lanes` tickets from each counter of a live tile, and atomicInc with limit lanes - 1 wraps
// it back to 0 at the last one (as router_fused_kernel's ticket in moe.cu), so the next launch, eager or replayed
// from a CUDA graph, finds 0 with no memset; tiles of slots without an expert or chunks past an expert's rows draw
// none (all their lane blocks exit before the ticket). Safe for the reason the router's is: every launch on a device
// goes to that device's one compute stream, so two launches never overlap. Products needing more counters (far
// past decode sizes: slots·chunks·tiles > kMaxTickets) take the two-kernel path.
constexpr int kMaxTickets = 16384;  // 64 KB; gpt-oss-20b forced to decode at T 64: 32 x 8 x 23 = 5,888
__device__ unsigned int g_decode_tickets[kMaxTickets];
constexpr size_t kFusedMaxSmem = 48 * 1024;  // the x staging of one lane (R·ceil(S/8)·ks fp32); more: two kernels

// 8 consecutive weight rows of the lane's flattened K sequence (group g: rows 8g .. 8g+7 of the lane's splits
// y, y+8, ... laid end to end; a group never straddles a split since ks % 8 == 0) -> the W row index in K.
__device__ __forceinline__ int lane_row(int g, int y, int ks) {
  const int f = g * 8, j = f / ks;
  return (y + kReduceLanes * j) * ks + (f - j * ks);
}

// One product for one (row chunk, column tile) of one routed expert and one lane y of reduce_kernel's fixed order:
//   lacc[r, n .. n+7] = 0.f + part_y + part_{y+8} + ...   (part_s as partial_kernel computes it: from 0.f, fmaf over
//                                                          k in split s in increasing order, x as fp32 from bf16)
// written to lane_part f32 [lanes, N, Nc]; then the last lane block of the tile (ticket) computes
//   out[r, c] = bf16(0.f + lacc_0 + ... + lacc_7 + bias_e)   (lanes >= `lanes`, i.e. >= S, add 0.f, as there)
//   h[r, c/2] = bf16(swiglu(out[r, c], out[r, c+1]))        (SWIGLU)
// for the chunk's rows: reduce_kernel's sums and epilogue, bit for bit. Grid: x = row chunk + chunk_slots·(tile),
// y = lane (lanes = min(S, 8)), z = expert slot. A, perm, W, offsets, R as partial_kernel; bias bf16 [E, Nc];
// out bf16 [N, Nc], h bf16 [N, Nc/2]. Dynamic shared memory: R·ceil(S/8)·ks fp32 (x of the lane's splits).
template <int R, bool SWIGLU>
__global__ void __launch_bounds__(kFusedThreads, fused_min_blocks<R>()) fused_kernel(
    const bf* __restrict__ A, int64_t lda, const int32_t* __restrict__ perm, const bf* __restrict__ W,
    const bf* __restrict__ bias, const int32_t* __restrict__ offsets, int E, int K, int Nc, int ks, int S, int lanes,
    int chunk_slots, int64_t N, float limit, float* __restrict__ lane_part, bf* __restrict__ out, bf* __restrict__ h) {
  constexpr int U = fused_unroll<R>();
  static_assert(U % 8 == 0, "steps are whole 8-row groups");
  extern __shared__ __align__(16) float xs[];  // [R][nj·ks]: the chunk's x rows over the lane's splits, fp32
  const int lane = threadIdx.x;
  // The routed expert of slot blockIdx.z (slot_expert's scan, warp-synchronous: every lane gets it).
  int e = -1;
  {
    int seen = 0;
    for (int base = 0; base < E && e < 0; base += 32) {
      const int ex = base + lane;
      const bool has = ex < E && offsets[ex + 1] > offsets[ex];
      const unsigned m = __ballot_sync(0xffffffffu, has);
      const int rank = seen + __popc(m & ((1u << lane) - 1u));
      const unsigned hit = __ballot_sync(0xffffffffu, has && rank == (int)blockIdx.z);
      if (hit) e = base + __ffs(hit) - 1;
      seen += __popc(m);
    }
  }
  if (e < 0) return;
  const int chunk = blockIdx.x % chunk_slots, tile = blockIdx.x / chunk_slots;
  const int seg = offsets[e], count = offsets[e + 1] - seg, r0 = chunk * R;
  if (r0 >= count) return;
  const int rows = min(R, count - r0);
  const int y = blockIdx.y;
  const int nj = (S - y + kReduceLanes - 1) / kReduceLanes;  // this lane's splits y, y+8, ... < S (y < S: >= 1)
  const int groups = ((nj - 1) * ks + min(ks, K - (y + kReduceLanes * (nj - 1)) * ks)) / 8;  // 8-row groups
  const int n = (tile * kFusedThreads + lane) * 8;
  const bool active = n < Nc;  // lanes past Nc (the last tile) load nothing but stay for the warp's steps
  const bf* wp = W + (int64_t)e * K * Nc + n;

  // The first step's weight loads go out before the x staging (they need only e), so the staging's two dependent
  // round trips (perm, then x) overlap them instead of preceding them.
  uint4 wv[U];
  auto load_step = [&](int g0) {
#pragma unroll
    for (int q = 0; q < U / 8; q++) {
      if (!active || g0 + q >= groups) break;  // uniform per thread; warp-uniform but for the last tile's tail
      const bf* p = wp + (int64_t)lane_row(g0 + q, y, ks) * Nc;
#pragma unroll
      for (int u = 0; u < 8; u++) wv[q * 8 + u] = ld_stream(p + (int64_t)u * Nc);
    }
  };
  load_step(0);

  // Stage x over the lane's splits (16-byte loads; zeros past the count or past K), as partial_kernel does per split.
  const int xlen = nj * ks, kc = ks / 8;
  for (int c = lane; c < R * nj * kc; c += kFusedThreads) {
    const int r = c / (nj * kc), rem = c % (nj * kc), j = rem / kc, k = (rem % kc) * 8;
    const int k0 = (y + kReduceLanes * j) * ks;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (r < rows && k < min(ks, K - k0)) {
      const int64_t pr = seg + r0 + r;
      const int64_t src = perm ? perm[pr] : pr;
      load8(A + src * lda + k0 + k, v);
    }
    float4* d = reinterpret_cast<float4*>(xs + r * xlen + j * ks + k);
    d[0] = make_float4(v[0], v[1], v[2], v[3]);
    d[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
  __syncwarp();

  float acc[R][8], lacc[R][8];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int j = 0; j < 8; j++) acc[r][j] = lacc[r][j] = 0.f;
  const int gps = ks / 8;  // groups per split
  for (int g0 = 0; g0 < groups; g0 += U / 8) {
    if (g0 > 0) load_step(g0);
#pragma unroll
    for (int q = 0; q < U / 8; q++) {
      const int g = g0 + q;
      if (g >= groups) break;  // uniform
      if (active) {
        const float* xg = xs + g * 8;  // the flattened index f = 8g is j·ks + kk, xs's column
#pragma unroll
        for (int u = 0; u < 8; u++) {
          float wf[8];
          unpack8(wv[q * 8 + u], wf);
#pragma unroll
          for (int r = 0; r < R; r++) {
            if (r >= rows) break;  // block-uniform
            const float xr = xg[r * xlen + u];
#pragma unroll
            for (int j = 0; j < 8; j++) acc[r][j] = fmaf(xr, wf[j], acc[r][j]);
          }
        }
      }
      // The end of a split (its last group, or the lane's last): fold its partial into the lane sum, restart.
      if ((g + 1) % gps == 0 || g + 1 == groups) {
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
          for (int j = 0; j < 8; j++) {
            lacc[r][j] += acc[r][j];
            acc[r][j] = 0.f;
          }
      }
    }
  }

  const int64_t row0 = seg + r0;
  if (active) {
#pragma unroll
    for (int r = 0; r < R; r++) {
      if (r >= rows) break;
      float4* o = reinterpret_cast<float4*>(lane_part + ((int64_t)y * N + row0 + r) * Nc + n);
      o[0] = make_float4(lacc[r][0], lacc[r][1], lacc[r][2], lacc[r][3]);
      o[1] = make_float4(lacc[r][4], lacc[r][5], lacc[r][6], lacc[r][7]);
    }
  }
  // The ticket (router_fused_kernel's pattern): each writer fences its lane sums (release), lane 0 draws after the
  // warp's fences; the last drawer fences again (acquire) and reads the others' sums through L2 (__ldcg).
  __threadfence();
  __syncwarp();
  unsigned last = 0;
  if (lane == 0) {
    const unsigned ticket = atomicInc(&g_decode_tickets[blockIdx.z * gridDim.x + blockIdx.x], lanes - 1);
    last = ticket == (unsigned)(lanes - 1);
  }
  last = __shfl_sync(0xffffffffu, last, 0);
  if (!last) return;
  __threadfence();
  if (!active) return;
  float b[8];
  load8(bias + (int64_t)e * Nc + n, b);
#pragma unroll
  for (int r = 0; r < R; r++) {
    if (r >= rows) break;
    // All 8 lanes' loads first (16 independent 16-byte L2 reads), then the sums in reduce_kernel's order.
    float4 p[kReduceLanes][2];
#pragma unroll
    for (int l = 0; l < kReduceLanes; l++) {
      if (l < lanes) {
        const float4* src = reinterpret_cast<const float4*>(lane_part + ((int64_t)l * N + row0 + r) * Nc + n);
        p[l][0] = __ldcg(src);
        p[l][1] = __ldcg(src + 1);
      } else {  // a lane without splits (S < 8): reduce_kernel adds its 0.f too
        p[l][0] = p[l][1] = make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int l = 0; l < kReduceLanes; l++) {
      v[0] += p[l][0].x;
      v[1] += p[l][0].y;
      v[2] += p[l][0].z;
      v[3] += p[l][0].w;
      v[4] += p[l][1].x;
      v[5] += p[l][1].y;
      v[6] += p[l][1].z;
      v[7] += p[l][1].w;
    }
#pragma unroll
    for (int q = 0; q < 8; q++) v[q] = __bfloat162float(__float2bfloat16(v[q] + b[q]));
    store8(out + (row0 + r) * Nc + n, v);
    if constexpr (SWIGLU) {
      // h[r, n/2 .. n/2+3], packed as reduce_kernel packs them: (swiglu(v0, v1), swiglu(v2, v3)) per bf16x2.
      __nv_bfloat162 hv[2];
#pragma unroll
      for (int q = 0; q < 2; q++)
        hv[q] = __floats2bfloat162_rn(swiglu1(v[4 * q], v[4 * q + 1], limit, kSwigluAlpha),
                                      swiglu1(v[4 * q + 2], v[4 * q + 3], limit, kSwigluAlpha));
      *reinterpret_cast<uint2*>(h + (row0 + r) * (Nc / 2) + n / 2) = *reinterpret_cast<const uint2*>(hv);
    }
  }
}

// Whether the fused kernel takes a product of these sizes (ticket counters and x staging within their bounds).
bool fused_fits(int R, int chunk_slots, int slots, int Nc, Split sp) {
  const int64_t tickets = static_cast<int64_t>(chunk_slots) * ceil_div(Nc / 8, kFusedThreads) * slots;
  const size_t smem = sizeof(float) * R * ((sp.S + kReduceLanes - 1) / kReduceLanes) * sp.ks;
  return tickets <= kMaxTickets && smem <= kFusedMaxSmem;
}

template <int R, bool SWIGLU>
void launch_fused(const bf* A, int64_t lda, const int32_t* perm, const bf* W, const bf* bias, const int32_t* offsets,
                  int E, int K, int Nc, Split sp, int chunk_slots, int slots, int64_t N, float limit, float* lane_part,
                  bf* out, bf* h, cudaStream_t st) {
  const int tiles = ceil_div(Nc / 8, kFusedThreads), lanes = std::min(sp.S, kReduceLanes);
  const size_t smem = sizeof(float) * R * ((sp.S + kReduceLanes - 1) / kReduceLanes) * sp.ks;
  fused_kernel<R, SWIGLU><<<dim3(chunk_slots * tiles, lanes, slots), kFusedThreads, smem, st>>>(
      A, lda, perm, W, bias, offsets, E, K, Nc, sp.ks, sp.S, lanes, chunk_slots, N, limit, lane_part, out, h);
}

template <bool SWIGLU>
void launch_fused_r(int R, const bf* A, int64_t lda, const int32_t* perm, const bf* W, const bf* bias,
                    const int32_t* offsets, int E, int K, int Nc, Split sp, int chunk_slots, int slots, int64_t N,
                    float limit, float* lp, bf* out, bf* h, cudaStream_t st) {
  switch (R) {
    case 1: launch_fused<1, SWIGLU>(A, lda, perm, W, bias, offsets, E, K, Nc, sp, chunk_slots, slots, N, limit, lp, out, h, st); break;
    case 2: launch_fused<2, SWIGLU>(A, lda, perm, W, bias, offsets, E, K, Nc, sp, chunk_slots, slots, N, limit, lp, out, h, st); break;
    case 4: launch_fused<4, SWIGLU>(A, lda, perm, W, bias, offsets, E, K, Nc, sp, chunk_slots, slots, N, limit, lp, out, h, st); break;
    default: launch_fused<8, SWIGLU>(A, lda, perm, W, bias, offsets, E, K, Nc, sp, chunk_slots, slots, N, limit, lp, out, h, st); break;
  }
}

void product(int dev, const bf* A, int64_t lda, const int32_t* perm, const bf* W, const bf* bias,
             const int32_t* offsets, int E, int K, int Nc, int64_t T, int64_t N, float limit, bf* out, bf* h,
             cudaStream_t st, const char* what) {
  const int R = T >= 5 ? 8 : T >= 3 ? 4 : T == 2 ? 2 : 1;
  const int chunk_slots = static_cast<int>((T + R - 1) / R);
  const int slots = static_cast<int>(std::min<int64_t>(E, N));
  const Split sp = split_of(dev, slots, K, Nc);
  if (unverified_kernels() && fused_fits(R, chunk_slots, slots, Nc, sp)) {
    // One launch: the lane sums [min(S, 8), N, Nc] f32 and the last lane block's epilogue (see the header).
    Tensor lane_part = make_tensor({std::min(sp.S, kReduceLanes), N, Nc}, DType::F32, dev);
    if (h)
      launch_fused_r<true>(R, A, lda, perm, W, bias, offsets, E, K, Nc, sp, chunk_slots, slots, N, limit,
                           lane_part.data<float>(), out, h, st);
    else
      launch_fused_r<false>(R, A, lda, perm, W, bias, offsets, E, K, Nc, sp, chunk_slots, slots, N, limit,
                            lane_part.data<float>(), out, nullptr, st);
    GPTOSS_CUDA_LAUNCH_CHECK(what);
    return;  // lane_part goes back to the caching allocator; the stream orders its reuse after the kernel
  }
  const int64_t S = sp.S;
  const int ks = sp.ks;
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
