// moe.cu: the GPT-OSS MoE block on the GPU. Router (logits, top-k, softmax; at T <= 16 tokens one fused
// multi-block launch with the placement, else a cuBLAS GEMM and two kernels), deterministic dropless permutation, the expert MLPs, weighted combine, and the backward's reductions. The expert GEMMs run one of four
// strategies, chosen by plan_expert_gemms (below, with the reasons): split-K GEMV kernels for a few routed rows
// (moe_decode.cu; forward only), our grouped mma.sync kernels (moe_gemm.cuh, bias + clamped SwiGLU fused into the
// gate_up epilogue, the SwiGLU backward into the dh epilogue), per-expert cuBLASLt GEMMs on concurrent lanes, or
// strided-batched cuBLASLt GEMMs over a padded "slab" layout. Everything is enqueued on the device's compute
// stream; only the cuBLAS strategies wait once per forward, to read the offsets.
//
// Layout of this file: the plan (host code, pure functions of the sizes and routing counts); the kernels; the
// host helpers; the four forward strategies; the three backward strategies; the expert adapters (LoRA);
// moe_forward and moe_backward.
//
// Expert adapters (MoeLora, native/cpu/moe.h): with them the forward and backward take their own path, the
// per-expert one (unpadded rows, offsets on the host) with the adapters' low-rank products added by per-expert
// cuBLAS GEMMs: gu += scale·(xp·A)·B before the SwiGLU (recomputed from the updated gu), yp += scale·(h·A)·B before
// the combine; the backward adds the adapters' input-gradient shares (to dh before the SwiGLU backward, to dxp) and
// writes their gradients. The factors are rounded to bf16 copies per call (as autocast does; they are small).
#include <algorithm>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.cuh"
#include "elementwise.h"
#include "gemm.h"
#include "moe.h"
#include "moe_decode.h"
#include "moe_gemm.cuh"
#include "rmsnorm.h"
#include "rmsnorm_row.cuh"
#include "swiglu.h"
#include "swiglu_math.cuh"
#include "vec_io.cuh"

namespace gptoss::cuda {

namespace {

using bf = __nv_bfloat16;
namespace mg = moe_gemm;

constexpr int kMaxSlabExperts = 256;  // experts per layer the CUDA routing supports (checked by moe_forward)
constexpr int kColsumChunk = 64;      // rows per block of the slab layout's chunk kernels
constexpr int64_t kPadRows = 64;      // slab sizes are multiples of this
static_assert(kPadRows % kColsumChunk == 0, "slabs must start on the chunk kernels' row chunks");

// ==== the plan: which strategy runs the expert GEMMs ============================================================

// Experts [e0, e1) padded to Mp rows each, the first at padded row `base`.
struct SlabRange {
  int64_t e0, e1, Mp, base;
};
// Padded rows of a slab plan (its last range's end).
int64_t slab_rows(const std::vector<SlabRange>& v) { return v.back().base + (v.back().e1 - v.back().e0) * v.back().Mp; }

// Splits the experts into 1, 2, 4 or 8 ranges of consecutive ids, each padded to its own largest count (rounded
// up to kPadRows): with uneven routing, a range's maximum is closer to its experts' counts than the global one.
// Takes the fewest ranges within 2% of the fewest padded rows (each range costs a launch per product).
// off: the unpadded offsets [E+1] on the host.
std::vector<SlabRange> plan_slabs(const std::vector<int32_t>& off) {
  const int64_t E = static_cast<int64_t>(off.size()) - 1;
  auto plan = [&](int64_t R) {
    std::vector<SlabRange> v;
    int64_t base = 0;
    for (int64_t r = 0; r < R; r++) {
      const int64_t e0 = E * r / R, e1 = E * (r + 1) / R;
      int64_t m = 0;
      for (int64_t e = e0; e < e1; e++) m = std::max<int64_t>(m, off[e + 1] - off[e]);
      const int64_t Mp = std::max<int64_t>(kPadRows, (m + kPadRows - 1) / kPadRows * kPadRows);
      v.push_back({e0, e1, Mp, base});
      base += (e1 - e0) * Mp;
    }
    return v;
  };
  std::vector<std::vector<SlabRange>> plans;
  for (int64_t R : {1, 2, 4, 8})
    if (R <= E) plans.push_back(plan(R));
  int64_t best = slab_rows(plans[0]);
  for (const auto& p : plans) best = std::min(best, slab_rows(p));
  for (const auto& p : plans)
    if (slab_rows(p) * 100 <= best * 102) return p;
  return plans.back();
}

// The ranges of a saved slab layout (padded offsets [E+1]): runs of consecutive experts with the same slab size.
std::vector<SlabRange> slabs_of(const std::vector<int32_t>& off) {
  std::vector<SlabRange> v;
  const int64_t E = static_cast<int64_t>(off.size()) - 1;
  for (int64_t e = 0; e < E; e++) {
    const int64_t Mp = off[e + 1] - off[e];
    if (!v.empty() && v.back().Mp == Mp) v.back().e1 = e + 1;
    else v.push_back({e, e + 1, Mp, off[e]});
  }
  return v;
}

// How the expert GEMMs run (forward and backward: the backward follows the forward's choice, see
// saved_strategy). With N = T·k routed rows and E experts:
//
//  kDecode     N <= kDecodeMaxRows (decode: 1-4 tokens at top-4). Split-K GEMV kernels (moe_decode.cu): each
//              routed expert's weights stream once, K split over enough blocks to fill every SM, the splits summed
//              in a fixed order with the grouped path's epilogue; same saved rows (gu, h, yp) as kGrouped, so the
//              backward (rarely wanted at these sizes) runs the grouped kernels. At one token the grouped kernels'
//              16x64 tiles reach only ~35% of HBM (188 us for o_proj + MoE of a gpt-oss-20b layer on an H100,
//              against ~60 us for the routed weights at HBM speed).
//  kGrouped    kDecodeMaxRows < N < 128·E (fewer than 128 rows per expert on average: small batches). Our grouped
//              kernels (moe_gemm.cuh): one launch per product for all experts, bias + SwiGLU fused into the
//              gate_up epilogue and the SwiGLU backward into the dh epilogue, no host round trip. Reading the
//              weights is the cost here; per-expert cuBLAS calls would add a launch per expert and a host read of
//              the offsets. Within it, rows_gemm (moe_gemm.cuh) takes DecodeTiles (32x128) at N <= 32·E, so the
//              weights stream near HBM speed (T 128: 87% of HBM on an H100), and LargeTiles (128x128x64, 3 stages)
//              otherwise and for the weight gradients (the fastest of five tile shapes measured at T 4096 and
//              16384: 42.2 ms fwd+bwd at T 16384 against 49.5-50.9, bench/results/moe-h100-tune.txt).
//  kSlabs      N >= 128·E and padding every expert's rows to its range's slab (plan_slabs) adds at most 50% rows
//              (fairly even routing, as a load-balanced router gives). One strided-batched cuBLASLt GEMM per
//              product and expert range; cuBLASLt's Hopper kernels are about twice our mma.sync kernels'
//              throughput at 512-2048 rows per expert, and a batch keeps the whole GPU busy. Needs the offsets on
//              the host (one wait per forward; the backward reuses the copy).
//  kPerExpert  N >= 128·E with more padding than that (skewed routing): one cuBLASLt GEMM per expert, spread
//              over kGemmLanes concurrent streams (one expert's GEMM fills only part of the GPU).
//
// Measured on an H100 (docs/moe.md, bench/results/moe-h100.json): at T 16384 (E 32, top-4, gpt-oss-20b sizes)
// the grouped kernels take 41.7 ms fwd+bwd against 18.5 ms for cuBLASLt; gpt-oss-20b layers at 4096 tokens run
// 9.78 ms with slabs against 10.27 ms per expert, even for a layer whose router padded by more than 25%; the
// per-expert GEMMs on 4 lanes took 18.5 ms fwd+bwd at T 16384 against 20.0 ms one after another, 6.52 against
// 7.53 ms at T 4096 (measured before the slab strategy existed). Gathering x inside the grouped GEMMs instead
// of materialising xp lost (44.4 against 42.2 ms fwd+bwd at T 16384).
//
// The device does not enter: the kernels are built for sm_90a only. Fallbacks that the shapes or the library
// impose, not choices: gemm_strided_batched runs a batch one GEMM at a time where cuBLASLt has no batched
// algorithm, and gemm_raw calls cublasGemmEx where cuBLASLt has no algorithm at all (gemm_cublas.cc); the slab
// backward column-sums with seg_colsum_kernel when the context carries no gathered rows xp (optional in the
// binding), and gathers them again for the weight gradient.
enum class ExpertGemms { kDecode, kGrouped, kSlabs, kPerExpert };

// Routed rows at or below which the decode kernels run: 4 tokens at top-4. Measured with bench/moe.ts --decode
// (gpt-oss-20b sizes, H100, bench/results/moe-decode-h100.json), decode against grouped ms: T 1 0.103 / 0.151
// (1.47x), T 2 0.150 / 0.168, T 4 0.243 / 0.250; from T 8 the grouped kernels are as fast or faster (0.366 / 0.353,
// T 16 0.506 / 0.491, T 64 0.864 / 0.600), since an expert then sees several rows and the 16x64 tiles stream. (Measured with those 16x64 tiles; with the
// 32x128 tiles since, bench/moe_grouped_harness gives the grouped forward 302 µs at T 5 and bench/moe_decode_harness
// the decode kernels 278 µs at T 4 on an H100: the threshold still holds there, T 2-4 not re-measured.)
constexpr int64_t kDecodeMaxRows = 16;

constexpr int64_t kCublasRowsPerExpert = 128;
// The cuBLAS strategies' size condition (N >= 128·E).
bool cublas_sized(int64_t N, int64_t E) { return N >= kCublasRowsPerExpert * E; }

struct ExpertGemmPlan {
  ExpertGemms strategy = ExpertGemms::kGrouped;
  std::vector<int32_t> offsets;   // cuBLAS strategies: the unpadded offsets [E+1], on the host
  std::vector<SlabRange> slabs;   // kSlabs: the expert ranges and their slab sizes
};

// The forward's plan for N routed rows over E experts. read_offsets returns the routing's offsets [E+1] on the
// host; it is called (and the device waited for) only when the sizes call for cuBLAS. choice: kAuto plans as
// above; kDecode / kGrouped force that kernel family at any size (tests and benchmarks compare them).
ExpertGemmPlan plan_expert_gemms(int64_t N, int64_t E, ExpertGemmChoice choice,
                                 const std::function<std::vector<int32_t>()>& read_offsets) {
  ExpertGemmPlan plan;
  // Batch-invariant mode (device.h): the grouped kernels at every size, whose rows sum over k in one order at
  // every tile shape (the decode kernels split K; the cuBLAS strategies pick their algorithms by rows).
  if (choice == ExpertGemmChoice::kAuto && batch_invariant()) return plan;
  if (choice == ExpertGemmChoice::kDecode || (choice == ExpertGemmChoice::kAuto && N <= kDecodeMaxRows)) {
    plan.strategy = ExpertGemms::kDecode;
    return plan;
  }
  if (choice == ExpertGemmChoice::kGrouped || !cublas_sized(N, E)) return plan;
  plan.offsets = read_offsets();
  std::vector<SlabRange> slabs = plan_slabs(plan.offsets);
  if (slab_rows(slabs) * 2 <= N * 3) {
    plan.strategy = ExpertGemms::kSlabs;
    plan.slabs = std::move(slabs);
  } else {
    plan.strategy = ExpertGemms::kPerExpert;
  }
  return plan;
}

// The backward's strategy for a saved context of Np rows: a padded layout (Np > N) means slabs; otherwise the
// forward's size condition decides, as it did there. (kDecode saves what kGrouped saves and has no backward of
// its own: its contexts take the grouped kernels, or per expert where a forced decode forward ran at cuBLAS sizes.
// A slab plan without padding rows, every count a multiple of 64 and equal within its range, saves the plain
// layout, so its backward runs per expert: the same products.)
ExpertGemms saved_strategy(int64_t Np, int64_t N, int64_t E) {
  if (Np != N) return ExpertGemms::kSlabs;
  return cublas_sized(N, E) ? ExpertGemms::kPerExpert : ExpertGemms::kGrouped;
}

// ==== kernels ===================================================================================================

// Per token: top-k of the router logits [T, E] f32 (ties to the lower id; -inf logits only when nothing else
// is left) and the softmax over the k chosen -> topk_idx i32 [T, k], topk_w f32 [T, k]. One warp per token.
// The logits come from one cuBLAS GEMM (x·Wrᵀ + b), which reads x once at full bandwidth.
//
// One token's top-k + softmax over its logits l [E] (E <= 256, 1 <= k <= min(E, 32)) by one warp (all 32 lanes
// call it; l may be global or shared) -> oi [k], ow [k]; returns choice `lane` to lanes below k (else -1). The
// choice of each of the k rounds is a sequential scan's over the unchosen experts in id order: the first one,
// replaced by any later one with a strictly larger logit (the CPU reference's rule, and what this kernel computed
// with one thread per token before). That is the largest non-NaN logit, the lowest id among equal ones, except
// when the first unchosen logit is NaN: nothing compares larger, so the scan keeps it. Lane L holds ids L, L+32, ...
// (in registers): its best by that rule, then a butterfly over (logit, id) (a total order, so every lane gets the
// same winner whatever the order of combination), and the first unchosen id (a min) for the NaN case. The softmax
// runs in the scan's order (Σ expf(l_j - l_0) over the choices in order, then expf(l_j - l_0) / Σ), so the
// weights are the same bits too.
__device__ int router_topk_warp(const float* l, int E, int k, int32_t* oi, float* ow) {
  constexpr int kPer = kMaxSlabExperts / 32;
  const int lane = threadIdx.x & 31;
  float v[kPer];
#pragma unroll
  for (int i = 0; i < kPer; i++) v[i] = lane + 32 * i < E ? l[lane + 32 * i] : 0.f;
  uint32_t taken = 0;  // bit i: expert lane + 32 i already chosen
  float first = 0.f, sum = 0.f, my_v = 0.f;
  int my_e = -1;
  for (int j = 0; j < k; j++) {
    float bv = 0.f;
    int be = -1, fe = E;  // the lane's best non-NaN (-1: none) and first unchosen (E: none)
#pragma unroll
    for (int i = 0; i < kPer; i++) {
      const int e = lane + 32 * i;
      if (e >= E || (taken >> i & 1u)) continue;
      if (fe == E) fe = e;
      if (isnan(v[i])) continue;
      if (be < 0 || v[i] > bv) {
        be = e;
        bv = v[i];
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oe = __shfl_xor_sync(0xffffffffu, be, o), ofe = __shfl_xor_sync(0xffffffffu, fe, o);
      if (oe >= 0 && (be < 0 || ov > bv || (ov == bv && oe < be))) {
        be = oe;
        bv = ov;
      }
      fe = min(fe, ofe);
    }
    const float fv = l[fe];  // k <= E: some expert is unchosen
    if (isnan(fv)) {
      be = fe;
      bv = fv;
    }
    if ((be & 31) == lane) taken |= 1u << (be >> 5);
    if (j == 0) first = bv;
    if (lane == j) {
      my_e = be;
      my_v = bv;  // logit for now
    }
    sum += expf(bv - first);
  }
  if (lane < k) {
    oi[lane] = my_e;
    ow[lane] = expf(my_v - first) / sum;
  }
  return my_e;
}

__global__ void router_topk_kernel(const float* __restrict__ logits, int64_t T, int E, int k,
                                   int32_t* __restrict__ topk_idx, float* __restrict__ topk_w) {
  const int64_t t = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  if (t >= T) return;  // warp-uniform
  router_topk_warp(logits + t * E, E, k, topk_idx + t * k, topk_w + t * k);
}

// ---- the fused router for decode-sized T -------------------------------------------------------------------------
// At decode (T <= 16 tokens) the router as three launches (a cuBLAS GEMM, top-k, placement) took ~24 µs a layer for
// ~1 µs of work; then one block did all of it, 18.6 µs a layer at one token (H100 decode profile): one SM cannot
// pull gpt-oss-20b's router weight (E 32 x H 2880 bf16, 184 KB) fast, having too few loads in flight. Now one
// launch of many blocks: block b computes one task's partial logits (below) into a per-device scratch, and the last
// block to finish (a ticket counter) sums them, then runs router_topk_warp per token (a warp each) and
// route_place_kernel's placement (offsets by a warp scan). Logits in fp32; the sum order differs from cuBLAS's, so
// top-k can differ from the unfused path only at near ties.
//
// Tasks: (expert pair p, H slice sl), pairs x slices of them with slices = fused_router_slices(E) — the split of the
// earlier one-block kernel (its 32 warps one task each), kept so that every logit is the same fp32 sum, bitwise:
// lane L of a task accumulates its 8-element vectors c = c0+L, c0+L+32, ... in that order with fmaf, the warp
// sums with warp_sum, the slices add in slice order, then the bias. What changed is where the tasks run (one
// block each, on its own SM), that a lane issues the loads of up to kFusedRouterPrefetch of its vectors before
// using them, and that the top-k takes a warp per token instead of a thread (the same choices and weights: see
// router_topk_warp) (gpt-oss's H 2880 at two slices: 180 vectors per task, at most 6 per lane, so one round trip to
// memory for the whole weight). The block's 8 warps split the tokens (warp w: tokens w and w+8); a token's sums do
// not depend on which warp computes them.
//
// Why one launch and not two (logits, then top-k + placement): a launch costs ~2-3 µs even inside a CUDA graph,
// about what the whole router should cost. The last-block pattern is sound here: every block writes its partials,
// fences (__threadfence), then takes a ticket (atomicInc); the block that draws the last ticket knows every other
// block's partials are visible (it fences after its ticket and reads them through L2, __ldcg). atomicInc with limit
// gridDim.x - 1 wraps the counter back to 0 at that last ticket, so the next launch starts from 0 with no memset,
// and a graph replays the kernel as it is.
//
// Scratch (g_router_part, g_router_ticket): static device memory, one copy per device (zeroed when the module
// loads, fixed addresses, so no allocation, no host work, nothing to do at graph capture). Safe because every
// launch of this kernel on a device goes to that device's one compute stream (device.h; moe_forward enqueues on
// stream_of(dev), graph replays run there too), so two launches never overlap; a second stream running the router
// concurrently would need its own scratch.
constexpr int kFusedRouterMaxT = 16;
constexpr int kFusedRouterTasks = 32;  // the task split's target: the earlier one-block kernel's 32 warps
constexpr int kFusedRouterThreads = 256;
constexpr int kFusedRouterWarps = kFusedRouterThreads / 32;
constexpr int kFusedRouterTokPerWarp = kFusedRouterMaxT / kFusedRouterWarps;  // tokens w, w+8 for warp w
constexpr int kFusedRouterPrefetch = 6;  // vectors per lane loaded before their FMAs (see above: 6 for H 2880)
static_assert(kFusedRouterMaxT % kFusedRouterWarps == 0, "each warp takes the same number of token slots");
static_assert(kMaxSlabExperts <= kFusedRouterThreads, "a block loads the bias with one thread per expert");

// The add + norm the fused router may run first (moeForward's preNorm at decode sizes): x [T, H] bf16 the residual
// stream, o [T, H] (O: bf16, or f32 from a tensor-parallel all-reduce), w [H] bf16; outputs h = x + o, y (the normed
// rows, which the kernel's x parameter then points at: the experts' input) and rstd [T]. O = void: no pre-norm.
template <typename O>
struct RouterPreNorm {
  const bf* x = nullptr;
  const O* o = nullptr;
  const bf* w = nullptr;
  float eps = 0.f;
  bool ld16 = false;  // x and o 16-byte aligned (addRmsnorm's flag: how a group of 8 is loaded)
  bf* h = nullptr;
  bf* y = nullptr;
  float* rstd = nullptr;
};

// Partial logits [slices, T, E] (slices * E <= 256: slices is 1 once E > 64, so it fits 16 x 256) and the ticket.
__device__ float g_router_part[kFusedRouterMaxT * kMaxSlabExperts];
__device__ unsigned int g_router_ticket;

// Whether the fused router takes T tokens of width H: decode sizes, rows of whole 16-byte vectors.
// Not in batch-invariant mode (device.h): its H-sliced partial logits sum in another order than the router GEMM's.
bool fused_router_fits(int64_t T, int64_t H) {
  return !batch_invariant() && T >= 1 && T <= kFusedRouterMaxT && H % 8 == 0;
}

// H slices per expert pair: enough (expert pair, H slice) tasks to make kFusedRouterTasks when the pairs are few.
int fused_router_slices(int64_t E) {
  const int pairs = static_cast<int>((E + 1) / 2);
  return std::max(1, kFusedRouterTasks / pairs);
}

// x bf16 [T, H], Wr bf16 [E, H], br bf16 [E] (16-byte aligned, H % 8 == 0, 1 <= T <= 16, E <= 256, k <= 32)
// -> topk_idx i32 [T, k], topk_w f32 [T, k], counts [E], offsets [E+1], perm_tok [T*k], slot_pos [T*k], as
// router_topk_kernel + route_place_kernel define them. Grid: one block per task, block b = task (pair b / slices,
// slice b % slices); the task dots rows 2p and 2p+1 of Wr with every token over the slice (each x vector loaded
// once for two experts), lane-strided in 8-element vectors, then a warp sum per token and expert.
// (__launch_bounds__ with 1 block per SM: a block per SM is all the grid asks, and ptxas then takes the ~140
// registers the prefetch needs instead of spilling at 128.)
template <typename O>
__global__ void __launch_bounds__(kFusedRouterThreads, 1) router_fused_kernel(
    const bf* __restrict__ x, const bf* __restrict__ Wr, const bf* __restrict__ br, int T, int H, int E, int k,
    int slices, int32_t* __restrict__ topk_idx, float* __restrict__ topk_w, int32_t* __restrict__ counts,
    int32_t* __restrict__ offsets, int32_t* __restrict__ perm_tok, int32_t* __restrict__ slot_pos,
    RouterPreNorm<O> pre) {
  __shared__ float logits[kFusedRouterMaxT * kMaxSlabExperts];  // [T, E], the last block only
  __shared__ int32_t sidx[kFusedRouterMaxT * 32];
  __shared__ int hist[kMaxSlabExperts], first[kMaxSlabExperts];
  __shared__ float bias[kMaxSlabExperts];
  __shared__ bool last;
  extern __shared__ __align__(16) unsigned char router_rows[];  // with the pre-norm: the normed rows, bf16 [T, H]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  {
    const int H8 = H / 8, per = (H8 + slices - 1) / slices;
    const int e0 = 2 * (blockIdx.x / slices), sl = blockIdx.x % slices;
    const bool has1 = e0 + 1 < E;
    const int c0 = sl * per, c1 = min(H8, c0 + per);
    bool x_shared = false;
    if constexpr (!std::is_void_v<O>) {
      // The add + norm (addRmsnorm's row code, block size and order: its bits) of every token, in every block: a
      // block needs the whole row's sum of squares before the first of its columns, and T rows of H are a few KB
      // of L2 reads, where a separate add + norm launch costs a graph node and its ramp a layer. This task's router
      // rows are sent to L2 first (the dot products below then hit L2 instead of waiting on HBM after the norm).
      const int lines = ((c1 - c0) * 16 + 127) / 128;  // 128-byte lines of one Wr row's slice
      for (int i = threadIdx.x; i < 2 * lines; i += blockDim.x) {
        const int row = e0 + i / lines;
        if (row < E) asm volatile("prefetch.global.L2 [%0];" ::"l"(Wr + (int64_t)row * H + c0 * 8 + (i % lines) * 64));
      }
      bf* rows = reinterpret_cast<bf*>(router_rows);
      const bool first_block = blockIdx.x == 0;  // writes the op's outputs h, y (the normed rows) and rstd
      for (int t = 0; t < T; t++) {
        const int64_t r0 = (int64_t)t * H;
        rms::norm_row(rms::RowSum<bf, O>{pre.x + r0, pre.o + r0, first_block ? pre.h + r0 : nullptr, pre.ld16}, pre.w,
                      rows + r0, first_block ? pre.y + r0 : nullptr, first_block ? pre.rstd + t : nullptr, H,
                      pre.eps, true);
      }
      __syncthreads();
      x = rows;
      x_shared = true;
    }
    // x rows: from global memory (read-only path) or, normed in this block, from shared memory.
    auto ldx = [&](const bf* p) -> uint4 {
      return x_shared ? *reinterpret_cast<const uint4*>(p) : __ldg(reinterpret_cast<const uint4*>(p));
    };
    float acc[kFusedRouterTokPerWarp][2];
#pragma unroll
    for (int j = 0; j < kFusedRouterTokPerWarp; j++) acc[j][0] = acc[j][1] = 0.f;
    if (warp < T) {  // warp-uniform: warps without a token skip to the ticket
      for (int cb = c0 + lane; cb < c1; cb += 32 * kFusedRouterPrefetch) {
        // Loads first (Wr from memory, x mostly from L2), so they are all in flight at once ...
        uint4 wv0[kFusedRouterPrefetch], wv1[kFusedRouterPrefetch], xv[kFusedRouterTokPerWarp][kFusedRouterPrefetch];
#pragma unroll
        for (int u = 0; u < kFusedRouterPrefetch; u++) {
          const int c = cb + 32 * u;
          if (c < c1) {
            wv0[u] = __ldg(reinterpret_cast<const uint4*>(Wr + (int64_t)e0 * H + c * 8));
            wv1[u] = has1 ? __ldg(reinterpret_cast<const uint4*>(Wr + (int64_t)(e0 + 1) * H + c * 8))
                          : make_uint4(0, 0, 0, 0);  // bf16 zeros: the missing expert's sums stay 0, unused
#pragma unroll
            for (int j = 0; j < kFusedRouterTokPerWarp; j++) {
              const int t = warp + j * kFusedRouterWarps;
              if (t < T) xv[j][u] = ldx(x + (int64_t)t * H + c * 8);
            }
          }
        }
        // ... then the FMAs in vector order c, as one chain per (token, expert) and lane.
#pragma unroll
        for (int u = 0; u < kFusedRouterPrefetch; u++) {
          if (cb + 32 * u < c1) {
            float w0[8], w1[8];
            unpack8(wv0[u], w0);
            unpack8(wv1[u], w1);
#pragma unroll
            for (int j = 0; j < kFusedRouterTokPerWarp; j++) {
              if (warp + j * kFusedRouterWarps < T) {
                float xf[8];
                unpack8(xv[j][u], xf);
#pragma unroll
                for (int i = 0; i < 8; i++) {
                  acc[j][0] = fmaf(xf[i], w0[i], acc[j][0]);
                  acc[j][1] = fmaf(xf[i], w1[i], acc[j][1]);
                }
              }
            }
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kFusedRouterTokPerWarp; j++) {
        const int t = warp + j * kFusedRouterWarps;
        if (t < T) {  // warp-uniform
          const float a0 = warp_sum(acc[j][0]), a1 = warp_sum(acc[j][1]);
          if (lane == 0) {
            g_router_part[(sl * T + t) * E + e0] = a0;
            if (has1) g_router_part[(sl * T + t) * E + e0 + 1] = a1;
          }
        }
      }
    }
  }
  // The bias, loaded by every block before its ticket (E <= blockDim.x values), so the last block does not wait
  // for it after.
  if (threadIdx.x < E) bias[threadIdx.x] = __bfloat162float(br[threadIdx.x]);
  // The ticket. The partials' writers fence, the barrier orders them before thread 0's fence and ticket (release);
  // the fence after the ticket orders the last block's reads after every other block's release (acquire).
  if (warp < T) __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned ticket = atomicInc(&g_router_ticket, gridDim.x - 1);  // wraps to 0 at the last ticket
    __threadfence();
    last = ticket == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  for (int i = threadIdx.x; i < T * E; i += blockDim.x) {
    const int t = i / E, e = i % E;
    float v = 0.f;
    for (int sl = 0; sl < slices; sl++) v += __ldcg(&g_router_part[(sl * T + t) * E + e]);  // L2: others' writes
    logits[i] = v + bias[e];
  }
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  for (int t = warp; t < T; t += kFusedRouterWarps) {  // warp w: tokens w, w+8
    const int e = router_topk_warp(logits + t * E, E, k, topk_idx + t * k, topk_w + t * k);
    if (lane < k) sidx[t * k + lane] = e;
  }
  __syncthreads();
  // Placement (route_place_kernel's layout): experts in id order, each expert's assignments in increasing order.
  const int n = T * k;
  for (int a = threadIdx.x; a < n; a += blockDim.x) atomicAdd(&hist[sidx[a]], 1);
  __syncthreads();
  if (warp == 0) {  // offsets: an exclusive scan of the counts, 32 experts at a time (shuffles)
    int base = 0;
    for (int e0 = 0; e0 < E; e0 += 32) {
      const int e = e0 + lane, h = e < E ? hist[e] : 0;
      int incl = h;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      if (e < E) {
        first[e] = base + incl - h;
        counts[e] = h;
        offsets[e] = base + incl - h;
      }
      base += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) offsets[E] = base;
  }
  __syncthreads();
  for (int a = threadIdx.x; a < n; a += blockDim.x) {
    const int e = sidx[a];
    int rank = 0;
#pragma unroll 8
    for (int b = 0; b < a; b++) rank += sidx[b] == e;
    const int pos = first[e] + rank;
    perm_tok[pos] = a / k;
    slot_pos[a] = pos;
  }
}

// Block e: every expert's count (a shared-memory histogram of the n = T*k assignments, so no separate count
// pass), expert e's first row (the sum of the counts before it), then expert e's assignments placed in increasing
// order (a stable, deterministic permutation): warp w takes the w-th contiguous slice of the assignments, counts
// its hits with ballots, and writes them after the hits of the warps before it. Two block-wide barriers in all.
// idx i32 [n] -> counts [E], offsets [E+1], perm_tok [n] (token of each permuted row), slot_pos [n].
__global__ void __launch_bounds__(1024) route_place_kernel(const int32_t* __restrict__ idx, int64_t n, int k, int E,
                                                           int32_t* __restrict__ counts,
                                                           int32_t* __restrict__ offsets,
                                                           int32_t* __restrict__ perm_tok,
                                                           int32_t* __restrict__ slot_pos) {
  __shared__ int hist[kMaxSlabExperts];
  __shared__ int warp_hits[32];
  const int e = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int i = threadIdx.x; i < E; i += blockDim.x) hist[i] = 0;
  __syncthreads();
  for (int64_t a = threadIdx.x; a < n; a += blockDim.x) atomicAdd(&hist[idx[a]], 1);
  const int64_t per = (n + nw - 1) / nw, a0 = warp * per < n ? warp * per : n, a1 = a0 + per < n ? a0 + per : n;
  int hits = 0;
  for (int64_t s = a0; s < a1; s += 32) hits += __popc(__ballot_sync(0xffffffffu, s + lane < a1 && idx[s + lane] == e));
  if (lane == 0) warp_hits[warp] = hits;
  __syncthreads();
  int base = 0;
  for (int i = 0; i < e; i++) base += hist[i];
  if (threadIdx.x == 0) {
    counts[e] = hist[e];
    offsets[e] = base;
    if (e == E - 1) offsets[E] = base + hist[e];
  }
  for (int w = 0; w < warp; w++) base += warp_hits[w];
  for (int64_t s = a0; s < a1; s += 32) {
    const int64_t a = s + lane;
    const bool f = a < a1 && idx[a] == e;
    const unsigned m = __ballot_sync(0xffffffffu, f);
    if (f) {
      const int pos = base + __popc(m & ((1u << lane) - 1u));
      perm_tok[pos] = static_cast<int32_t>(a / k);
      slot_pos[a] = pos;
    }
    base += __popc(m);
  }
}

// Padded ("slab") layout: expert e's rows move to off_pad[e] .. off_pad[e]+count_e-1 and rows up to off_pad[e+1]
// are padding (perm_pad -1, zero input rows). Experts are grouped in ranges of consecutive ids that share one slab
// size, so each range is one strided-batched GEMM per product (plan_slabs).
// slot_pad [n] = padded row of assignment a; perm_pad [Np] (pre-filled with -1); off_pad [E+1] from `slabs`.
struct SlabOffsets {
  int32_t v[kMaxSlabExperts + 1];
};
__global__ void pad_layout_kernel(const int32_t* __restrict__ topk_idx, const int32_t* __restrict__ slot_pos,
                                  const int32_t* __restrict__ offsets, int64_t n, int k, int E, SlabOffsets slabs,
                                  int32_t* __restrict__ slot_pad, int32_t* __restrict__ perm_pad,
                                  int32_t* __restrict__ off_pad) {
  const int64_t a = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (a <= E) off_pad[a] = slabs.v[a];
  if (a < n) {
    const int e = topk_idx[a];
    const int64_t p = slabs.v[e] + (slot_pos[a] - offsets[e]);
    slot_pad[a] = static_cast<int32_t>(p);
    perm_pad[p] = static_cast<int32_t>(a / k);
  }
}

// xp[r] = x[perm_tok[r]] (16-byte copies; zero rows where perm_tok is -1): the expert-ordered input rows, so the
// gate_up GEMM and its weight gradient read contiguous rows.
__global__ void gather_rows_kernel(const bf* __restrict__ x, const int32_t* __restrict__ perm_tok, int64_t n,
                                   int H, bf* __restrict__ xp) {
  const int chunks = H / 8;
  const int64_t total = n * chunks;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / chunks, c = i % chunks;
    const int32_t t = perm_tok[r];  // -1: a padding row (zeros)
    *reinterpret_cast<uint4*>(xp + r * H + c * 8) =
        t >= 0 ? *reinterpret_cast<const uint4*>(x + (int64_t)t * H + c * 8) : make_uint4(0, 0, 0, 0);
  }
}

// y[t] = Σ_j w[t,j]·yp[slot_pos[t,j]] (fp32 sum, bf16 out); with a residual, y[t] = bf16(res[t] + bf16(Σ)), what
// add(res, moe(x)) gives, without a separate pass.
__global__ void combine_kernel(const bf* __restrict__ yp, const int32_t* __restrict__ slot_pos,
                               const float* __restrict__ tw, const bf* __restrict__ res, int H, int k,
                               bf* __restrict__ y) {
  const int t = blockIdx.x;
  __shared__ int pos[32];
  __shared__ float w[32];
  if (threadIdx.x < k) {
    pos[threadIdx.x] = slot_pos[(int64_t)t * k + threadIdx.x];
    w[threadIdx.x] = tw[(int64_t)t * k + threadIdx.x];
  }
  __syncthreads();
  for (int c = threadIdx.x * 2; c < H; c += blockDim.x * 2) {
    float a0 = 0.f, a1 = 0.f;
    for (int j = 0; j < k; j++) {
      const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(yp + (int64_t)pos[j] * H + c);
      a0 += w[j] * __low2float(v);
      a1 += w[j] * __high2float(v);
    }
    __nv_bfloat162 o = __floats2bfloat162_rn(a0, a1);
    if (res) {
      const __nv_bfloat162 r = *reinterpret_cast<const __nv_bfloat162*>(res + (int64_t)t * H + c);
      o = __floats2bfloat162_rn(__low2float(r) + __low2float(o), __high2float(r) + __high2float(o));
    }
    *reinterpret_cast<__nv_bfloat162*>(y + (int64_t)t * H + c) = o;
  }
}

// Per token: dw_j = dy·yp_j; dyp_j = bf16(w_j·dy); softmax backward dl_j = w_j (dw_j - Σ_i w_i dw_i).
template <typename DT>
__global__ void route_bwd_kernel(const DT* __restrict__ dy, const bf* __restrict__ yp,
                                 const int32_t* __restrict__ slot_pos, const float* __restrict__ tw, int H, int k,
                                 bf* __restrict__ dyp, float* __restrict__ dlp, float* __restrict__ dl) {
  const int t = blockIdx.x;
  __shared__ float dw[32];
  for (int j = 0; j < k; j++) {
    const int64_t r = slot_pos[(int64_t)t * k + j];
    const float wj = tw[(int64_t)t * k + j];
    float acc = 0.f;
    for (int c = threadIdx.x * 2; c < H; c += blockDim.x * 2) {
      const float d0 = ldf(dy + (int64_t)t * H + c), d1 = ldf(dy + (int64_t)t * H + c + 1);
      const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(yp + r * H + c);
      acc += d0 * __low2float(v) + d1 * __high2float(v);
      *reinterpret_cast<__nv_bfloat162*>(dyp + r * H + c) = __floats2bfloat162_rn(wj * d0, wj * d1);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) dw[j] = acc;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float dot = 0.f;
    for (int j = 0; j < k; j++) dot += tw[(int64_t)t * k + j] * dw[j];
    for (int j = 0; j < k; j++) {
      const float d = tw[(int64_t)t * k + j] * (dw[j] - dot);
      dl[(int64_t)t * k + j] = d;
      dlp[slot_pos[(int64_t)t * k + j]] = d;
    }
  }
}

// Padding rows (perm_tok -1) of a slab-layout [Np, H] buffer set to zero; one block per row (valid rows return).
// Cheaper than clearing the whole buffer before a pass that writes only the valid rows.
__global__ void zero_pad_rows_kernel(const int32_t* __restrict__ perm_tok, int H, bf* __restrict__ out) {
  const int64_t r = blockIdx.x;
  if (perm_tok[r] >= 0) return;
  for (int c = threadIdx.x * 8; c < H; c += blockDim.x * 8)
    *reinterpret_cast<uint4*>(out + r * H + c) = make_uint4(0, 0, 0, 0);
}

// The slab-layout chunk kernels below run blocks of (32, 8) threads over one 64-row chunk each.
// Rows of the chunk at r0 that are not padding: they come first (an expert's rows, then its padding). A block-wide
// count, so every thread of the block must call it.
__device__ __forceinline__ int chunk_valid_rows(const int32_t* __restrict__ perm_tok, int64_t r0) {
  const int tid = threadIdx.y * 32 + threadIdx.x;
  return __syncthreads_count(tid < kColsumChunk && perm_tok[r0 + tid] >= 0);
}

// Sums each thread's 8 column partials acc (columns c0 + 8·threadIdx.x + q) over the block's 8 row lanes in a fixed
// order and stores the block's 256 columns (those below C) at part_row[c0 ..]. Every thread must call it.
__device__ __forceinline__ void chunk_colsum_store(const float (&acc)[8], int64_t c0, int64_t C,
                                                   float* __restrict__ part_row) {
  __shared__ float red[8][32 * 8 + 4];
  const int tid = threadIdx.y * 32 + threadIdx.x;
#pragma unroll
  for (int q = 0; q < 8; q++) red[threadIdx.y][threadIdx.x * 8 + q] = acc[q];
  __syncthreads();
  if (c0 + tid < C) {
    float a = 0.f;
#pragma unroll
    for (int y = 0; y < 8; y++) a += red[y][tid];
    part_row[c0 + tid] = a;
  }
}

// SwiGLU backward and the gate_up bias gradient's partial sums in one pass over the slab layout.
// dh bf16 [Np, I], gu bf16 [Np, 2I] (interleaved gate/up) -> dgu bf16 [Np, 2I] (zero on padding rows, which are
// not read) and part f32 [Np/64, 2I] = per 64-row chunk, the column sums of the bf16 dgu values (what a colsum
// of the stored dgu gives). Slabs start at multiples of 64 rows, so a chunk never mixes two experts, and its
// valid rows come first (an expert's rows, then its padding).
// Grid (Np/64, ceil(I/4 / 32)), block (32, 8): threadIdx.x owns 8 dgu columns (4 dh columns), threadIdx.y rows
// y, y+8, ..., y+56 of the chunk (8 independent loads in flight per thread); the 8 row lanes meet in shared memory.
__global__ void __launch_bounds__(256) swiglu_bwd_colsum_kernel(const bf* __restrict__ dh, const bf* __restrict__ gu,
                                                                const int32_t* __restrict__ perm_tok, int I,
                                                                float limit, float alpha, bf* __restrict__ dgu,
                                                                float* __restrict__ part) {
  const int64_t r0 = (int64_t)blockIdx.x * kColsumChunk, I2 = 2 * (int64_t)I;
  const int nvalid = chunk_valid_rows(perm_tok, r0);
  const int cg = blockIdx.y * 32 + threadIdx.x;
  const bool live = cg * 4 < I;
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = threadIdx.y; i < kColsumChunk; i += 8) {
    const int64_t r = r0 + i;
    float out[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (live && i < nvalid) {
      float d[4], in[8];
      load4(dh + r * I + 4 * cg, d);
      load8(gu + r * I2 + 8 * cg, in);
#pragma unroll
      for (int q = 0; q < 4; q++) {
        swiglu1_bwd(d[q], in[2 * q], in[2 * q + 1], limit, alpha, out[2 * q], out[2 * q + 1]);
        out[2 * q] = __bfloat162float(__float2bfloat16(out[2 * q]));
        out[2 * q + 1] = __bfloat162float(__float2bfloat16(out[2 * q + 1]));
      }
    }
    if (live) store8(dgu + r * I2 + 8 * cg, out);
#pragma unroll
    for (int q = 0; q < 8; q++) acc[q] += out[q];
  }
  chunk_colsum_store(acc, (int64_t)blockIdx.y * 256, I2, part + (int64_t)blockIdx.x * I2);
}

// Slab-layout SwiGLU forward: h[r] = swiglu(gu[r]) on an expert's rows, zeros on its padding rows (not read).
// gu bf16 [Np, 2I] -> h bf16 [Np, I]; grid (Np/64, ceil(I/4 / 32)), block (32, 8) as swiglu_bwd_colsum_kernel.
__global__ void __launch_bounds__(256) swiglu_fwd_slab_kernel(const bf* __restrict__ gu,
                                                              const int32_t* __restrict__ perm_tok, int I, float limit,
                                                              float alpha, bf* __restrict__ h) {
  const int64_t r0 = (int64_t)blockIdx.x * kColsumChunk, I2 = 2 * (int64_t)I;
  const int nvalid = chunk_valid_rows(perm_tok, r0);
  const int cg = blockIdx.y * 32 + threadIdx.x;
  if (cg * 4 >= I) return;
#pragma unroll
  for (int i = threadIdx.y; i < kColsumChunk; i += 8) {
    const int64_t r = r0 + i;
    float out[4] = {0.f, 0.f, 0.f, 0.f};
    if (i < nvalid) {
      float in[8];
      load8(gu + r * I2 + 8 * cg, in);
#pragma unroll
      for (int q = 0; q < 4; q++) out[q] = swiglu1(in[2 * q], in[2 * q + 1], limit, alpha);
    }
    store4(h + r * I + 4 * cg, out);
  }
}

// Slab-layout column sums: part[chunk, c] = Σ over the chunk's valid rows r of (scale ? scale[r] : 1)·in[r, c]
// (fp32; the padding rows are not read). in bf16 [Np, C] with C % 8 == 0; grid (Np/64, ceil(C/8 / 32)), block
// (32, 8): a thread owns 8 columns and every 8th row; the row lanes meet in shared memory in a fixed order.
__global__ void __launch_bounds__(256) chunk_colsum_kernel(const bf* __restrict__ in, const float* __restrict__ scale,
                                                           const int32_t* __restrict__ perm_tok, int C,
                                                           float* __restrict__ part) {
  const int64_t r0 = (int64_t)blockIdx.x * kColsumChunk;
  const int nvalid = chunk_valid_rows(perm_tok, r0);
  const int cg = blockIdx.y * 32 + threadIdx.x;
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (cg * 8 < C)
    for (int i = threadIdx.y; i < nvalid; i += 8) {
      const int64_t r = r0 + i;
      float v[8];
      load8(in + r * C + 8 * cg, v);
      const float s = scale ? scale[r] : 1.f;
#pragma unroll
      for (int q = 0; q < 8; q++) acc[q] += s * v[q];
    }
  chunk_colsum_store(acc, (int64_t)blockIdx.y * 256, C, part + (int64_t)blockIdx.x * C);
}

// out[e, c] = Σ over expert e's 64-row chunks (offsets[e]/64 .. offsets[e+1]/64) of part[chunk, c], in chunk
// order (deterministic). Grid (ceil(C/256), E), block 256.
__global__ void chunk_colsum_reduce_kernel(const float* __restrict__ part, int C, const int32_t* __restrict__ offsets,
                                           float* __restrict__ out) {
  const int e = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float a = 0.f;
  for (int q = offsets[e] / kColsumChunk; q < offsets[e + 1] / kColsumChunk; q++) a += part[(int64_t)q * C + c];
  out[(int64_t)e * C + c] = a;
}

// out[e, c] = Σ_{r in segment e} scale[r]·in[row(r), c] (f32), row(r) = idx ? idx[r] : r. Block (32, 8):
// 64 columns, 8 row lanes.
__global__ void seg_colsum_kernel(const bf* __restrict__ in, int64_t ld, int C, const int32_t* __restrict__ idx,
                                  const float* __restrict__ scale, const int32_t* __restrict__ offsets,
                                  float* __restrict__ out) {
  const int e = blockIdx.y;
  const int c = blockIdx.x * 64 + threadIdx.x * 2;
  const int r0 = offsets[e], r1 = offsets[e + 1];
  float a0 = 0.f, a1 = 0.f;
  if (c < C) {
    for (int r = r0 + threadIdx.y; r < r1; r += 8) {
      const int64_t row = idx ? idx[r] : r;
      if (row < 0) continue;  // a padding row
      const float s = scale ? scale[r] : 1.f;
      const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(in + row * ld + c);
      a0 += s * __low2float(v);
      a1 += s * __high2float(v);
    }
  }
  __shared__ float part[8][64];
  part[threadIdx.y][threadIdx.x * 2] = a0;
  part[threadIdx.y][threadIdx.x * 2 + 1] = a1;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float s0 = 0.f, s1 = 0.f;
    for (int q = 0; q < 8; q++) {
      s0 += part[q][threadIdx.x * 2];
      s1 += part[q][threadIdx.x * 2 + 1];
    }
    out[(int64_t)e * C + c] = s0;
    out[(int64_t)e * C + c + 1] = s1;
  }
}

__global__ void seg_sum_kernel(const float* __restrict__ v, const int32_t* __restrict__ offsets,
                               float* __restrict__ out) {
  const int e = blockIdx.x;
  float a = 0.f;
  for (int r = offsets[e] + threadIdx.x; r < offsets[e + 1]; r += blockDim.x) a += v[r];
  a = block_sum(a);
  if (threadIdx.x == 0) out[e] = a;
}

// dx[t] = Σ_j dxp[slot_pos[t,j]] + Σ_j dl[t,j]·Wr[idx[t,j]].
__global__ void dx_kernel(const bf* __restrict__ dxp, const int32_t* __restrict__ slot_pos,
                          const int32_t* __restrict__ topk_idx, const float* __restrict__ dl,
                          const bf* __restrict__ wr, int H, int k, float* __restrict__ dx) {
  const int t = blockIdx.x;
  __shared__ int pos[32], ex[32];
  __shared__ float g[32];
  if (threadIdx.x < k) {
    pos[threadIdx.x] = slot_pos[(int64_t)t * k + threadIdx.x];
    ex[threadIdx.x] = topk_idx[(int64_t)t * k + threadIdx.x];
    g[threadIdx.x] = dl[(int64_t)t * k + threadIdx.x];
  }
  __syncthreads();
  for (int c = threadIdx.x * 2; c < H; c += blockDim.x * 2) {
    float a0 = 0.f, a1 = 0.f;
    for (int j = 0; j < k; j++) {
      const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(dxp + (int64_t)pos[j] * H + c);
      const __nv_bfloat162 w = *reinterpret_cast<const __nv_bfloat162*>(wr + (int64_t)ex[j] * H + c);
      a0 += __low2float(v) + g[j] * __low2float(w);
      a1 += __high2float(v) + g[j] * __high2float(w);
    }
    *reinterpret_cast<float2*>(dx + (int64_t)t * H + c) = make_float2(a0, a1);
  }
}

// ==== host helpers ==============================================================================================

// One call's sizes: T tokens of hidden size H, E experts of intermediate size I, top-k, N = T·k routed rows; the
// device and its compute stream.
struct Sizes {
  int dev;
  cudaStream_t st;
  int64_t T, H, E, I, k, N;
};

const bf* B(const Tensor& t) { return t.data<bf>(); }
bf* Bm(const Tensor& t) { return t.data<bf>(); }

// Element `elems` of a tensor's data as T* (an expert's first row, an expert's weight matrix).
template <typename T>
T* at(const Tensor& t, int64_t elems) { return t.data<T>() + elems; }

void check_aligned(const char* op, const char* name, const Tensor& t) {
  GPTOSS_CHECK(reinterpret_cast<uintptr_t>(t.raw()) % 16 == 0, op, ": ", name, " must be 16-byte aligned on the GPU, got ",
               t.describe());
}

std::vector<int32_t> host_offsets(const Tensor& offsets) {
  std::vector<int32_t> h(offsets.numel());
  copy(h.data(), -1, offsets.raw(), offsets.device, h.size() * sizeof(int32_t));
  return h;
}
// The offsets the forward kept on the host, or (a context without them) a copy from the device, which waits.
std::vector<int32_t> saved_offsets(const MoeSaved& s) {
  if (!s.offsets_host.storage) return host_offsets(s.offsets);
  const int32_t* p = s.offsets_host.data<int32_t>();
  return std::vector<int32_t>(p, p + s.offsets_host.numel());
}
// A host i32 tensor holding v.
Tensor host_tensor(const std::vector<int32_t>& v) {
  Tensor t = make_tensor({static_cast<int64_t>(v.size())}, DType::I32, kCpu);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

// xp = x[perm_tok]: bf16 [rows, H], zero rows where perm_tok is -1.
Tensor gathered_rows(const Tensor& x, const Tensor& perm_tok, cudaStream_t st) {
  const int64_t n = perm_tok.dim(0), H = x.dim(1);
  Tensor xp = make_tensor({n, H}, DType::BF16, x.device);
  const int64_t total = n * (H / 8);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 132 * 16));
  gather_rows_kernel<<<blocks, 256, 0, st>>>(x.data<bf>(), perm_tok.data<int32_t>(), n, (int)H, xp.data<bf>());
  GPTOSS_CUDA_LAUNCH_CHECK("moe gather");
  return xp;
}

// The forward's saved expert rows: gu bf16 [rows, 2I], h bf16 [rows, I], yp bf16 [rows, H].
void alloc_expert_rows(const Sizes& d, int64_t rows, MoeSaved& s) {
  s.gu = make_tensor({rows, 2 * d.I}, DType::BF16, d.dev);
  s.h = make_tensor({rows, d.I}, DType::BF16, d.dev);
  s.yp = make_tensor({rows, d.H}, DType::BF16, d.dev);
}

// out f32 [E, C] = per expert, the column sums of its rows of in (bf16 [rows, C], segments `offsets` on the device).
void segment_colsum(const Sizes& d, const Tensor& in, int64_t C, const int32_t* offsets, const Tensor& out,
                    const char* what) {
  seg_colsum_kernel<<<dim3(ceil_div(C, 64), d.E), dim3(32, 8), 0, d.st>>>(B(in), C, (int)C, nullptr, nullptr, offsets,
                                                                          out.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK(what);
}

// ---- grouped kernels (moe_gemm.cuh) ----

// Rows mode: C[rows, N] = A[rows, K] · W[e] over the expert segments `offsets` (device), W[e] at W + e·K·N, stored
// [K, N] (the forward's x·W) or [N, K] (w_kmajor: the backward's dy·Wᵀ).
mg::Params rows_params(const Sizes& d, const int32_t* offsets, const Tensor& A, int64_t K, const Tensor& W, int64_t N,
                       bool w_kmajor, void* C, int64_t ldc) {
  mg::Params p;
  p.offsets = offsets;
  p.E = (int)d.E;
  p.A = B(A);
  p.lda = K;
  p.B = B(W);
  p.ldb = w_kmajor ? K : N;
  p.b_expert_stride = K * N;
  p.N = (int)N;
  p.K = (int)K;
  p.C = C;
  p.ldc = ldc;
  return p;
}

// Reduction mode (weight gradients): dW[e] f32 [M, N] = A_eᵀ · B_e, A [rows, M] and Bt [rows, N] over the
// expert segments `offsets` (device).
mg::Params wgrad_params(const Sizes& d, const int32_t* offsets, const Tensor& A, int64_t M, const Tensor& Bt,
                        int64_t N, const Tensor& dW) {
  mg::Params p;
  p.offsets = offsets;
  p.E = (int)d.E;
  p.A = B(A);
  p.lda = M;
  p.B = B(Bt);
  p.ldb = N;
  p.M = (int)M;
  p.N = (int)N;
  p.C = dW.raw();
  p.ldc = N;
  p.c_expert_stride = M * N;
  return p;
}

// ---- per-expert cuBLASLt GEMMs ----

// Sends expert e's GEMM to the least-loaded of the kGemmLanes concurrent lanes (gemm.h; by rows, deterministic),
// inside a fork/join scope: one expert's GEMM (a few hundred rows) fills only part of the GPU.
struct Lanes {
  int dev;
  bool joined = false;
  int64_t load[kGemmLanes] = {};
  explicit Lanes(int device) : dev(device) { gemm_lanes_fork(dev); }
  void pick(int64_t rows) {
    int best = 0;
    for (int i = 1; i < kGemmLanes; i++)
      if (load[i] < load[best]) best = i;
    load[best] += rows;
    gemm_lane(best);
  }
  // The normal end: errors of the join propagate.
  void join() {
    if (!joined) {
      joined = true;
      gemm_lanes_join(dev);
    }
  }
  ~Lanes() {  // a GEMM threw before join(): join anyway, but nothing may escape a destructor during unwinding
    if (joined) return;
    try {
      gemm_lanes_join(dev);
    } catch (...) {
      gemm_lane(-1);
    }
  }
};

// Row-major Y_e[rows_e, n] = X_e[rows_e, kdim] · W[e] (W[e] stored [kdim, n], or [n, kdim] when trans_w) + bias[e],
// for every expert with rows; X, Y indexed by the permuted row offsets.
void per_expert_xw(int dev, const std::vector<int32_t>& off, const Tensor& X, int64_t kdim, const Tensor& W,
                   bool trans_w, int64_t n, const Tensor* bias, const Tensor& Y) {
  const int64_t E = static_cast<int64_t>(off.size()) - 1;
  Lanes lanes(dev);
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = off[e], rows = off[e + 1] - r0;
    if (rows == 0) continue;
    lanes.pick(rows);
    gemm_raw(dev, rows, n, kdim, 1.f, at<bf>(X, r0 * kdim), kdim, false, at<bf>(W, e * kdim * n), trans_w ? kdim : n,
             trans_w, DType::BF16, bias ? at<bf>(*bias, e * n) : nullptr, DType::BF16, 0.f, at<bf>(Y, r0 * n),
             DType::BF16, n, GemmBucket::M);
  }
  lanes.join();
}

// dW[e] (f32 [m, n]) (+)= A_eᵀ · B_e with A [rows, m], B [rows, n] in permuted row order (beta 0: experts with no
// rows get 0; beta 1: accumulate).
void per_expert_wgrad(int dev, const std::vector<int32_t>& off, const Tensor& A, int64_t m, const Tensor& Bt, int64_t n,
                      const Tensor& dW, float beta) {
  const int64_t E = static_cast<int64_t>(off.size()) - 1;
  Lanes lanes(dev);
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = off[e], rows = off[e + 1] - r0;
    if (rows == 0 && beta == 1.f) continue;
    lanes.pick(rows);
    gemm_raw(dev, m, n, rows, 1.f, at<bf>(A, r0 * m), m, true, at<bf>(Bt, r0 * n), n, false, DType::BF16, nullptr,
             DType::F32, beta, at<float>(dW, e * m * n), DType::F32, n, GemmBucket::K);
  }
  lanes.join();
}

// ---- strided-batched cuBLASLt GEMMs over the slab layout ----

// Per slab range, one batched GEMM over its experts: Y_e[Mp, n] = X_e[Mp, kdim] · W[e] (W[e] stored [kdim, n], or
// [n, kdim] when trans_w) + bias[e], with X, Y the slab rows of expert e (bf16).
void slab_xw(const Sizes& d, const std::vector<SlabRange>& slabs, const Tensor& X, int64_t kdim, const Tensor& W,
             bool trans_w, int64_t n, const Tensor* bias, const Tensor& Y) {
  for (const auto& r : slabs)
    gemm_strided_batched(d.dev, r.e1 - r.e0, r.Mp, n, kdim, 1.f, B(X) + r.base * kdim, kdim, r.Mp * kdim, false,
                         B(W) + r.e0 * kdim * n, trans_w ? kdim : n, kdim * n, trans_w, DType::BF16,
                         bias ? B(*bias) + r.e0 * n : nullptr, bias ? n : 0, 0.f, Bm(Y) + r.base * n, DType::BF16, n,
                         r.Mp * n, GemmBucket::M);
}

// Per slab range, one batched GEMM over its experts: dW[e] (f32 [m, n]) (+)= A_eᵀ · B_e with A [Np, m], B [Np, n]
// in slab rows (K = Mp: padding rows are zero in A or B, so they add nothing; beta 0 writes, 1 accumulates).
void slab_wgrad(const Sizes& d, const std::vector<SlabRange>& slabs, const Tensor& A, int64_t m, const Tensor& Bt,
                int64_t n, const Tensor& dW, float beta) {
  for (const auto& r : slabs)
    gemm_strided_batched(d.dev, r.e1 - r.e0, m, n, r.Mp, 1.f, B(A) + r.base * m, m, r.Mp * m, true,
                         B(Bt) + r.base * n, n, r.Mp * n, false, DType::BF16, nullptr, 0, beta,
                         dW.data<float>() + r.e0 * m * n, DType::F32, n, m * n, GemmBucket::K);
}

// ==== forward strategies ========================================================================================
// Each computes the saved expert rows from the routing in s (offsets, perm_tok): gu = x[perm]·W_gu[e] + b,
// h = swiglu(gu), yp = h·W_down[e] + b.

// The rows as kGrouped saves them (N rows, no xp), from the split-K GEMV kernels; x is gathered in-kernel. The
// combine (y, with the residual) comes out of the down product's reduce: moe_forward launches no combine after it.
void forward_decode(const Sizes& d, const Tensor& x, const MoeWeights& w, float limit, const Tensor* residual,
                    const Tensor& y, MoeSaved& s) {
  alloc_expert_rows(d, d.N, s);
  moe_decode::expert_mlp(x, s.perm_tok, s.offsets, w, d.T, d.N, limit, s.gu, s.h, s.yp,
                         {s.slot_pos, s.topk_w, residual, d.k, y}, d.st);
}

void forward_grouped(const Sizes& d, const Tensor& x, const MoeWeights& w, float limit, MoeSaved& s) {
  alloc_expert_rows(d, d.N, s);
  profile_mark(d.dev, "moe gather");  // profiling phases (bench:train-step --profile); no-ops unless enabled
  const Tensor xp = gathered_rows(x, s.perm_tok, d.st);
  profile_mark(d.dev, "moe experts");
  const int32_t* offsets = s.offsets.data<int32_t>();
  // gu and h = swiglu(gu) from one GEMM (the SwiGLU in its epilogue)
  mg::Params gate_up = rows_params(d, offsets, xp, d.H, w.gate_up_w, 2 * d.I, false, s.gu.raw(), 2 * d.I);
  gate_up.limit = limit;
  gate_up.bias = B(w.gate_up_b);
  gate_up.C2 = Bm(s.h);
  gate_up.ldc2 = d.I;
  mg::gemm_gate_up(gate_up, d.N, d.st);
  mg::Params down = rows_params(d, offsets, s.h, d.I, w.down_w, d.H, false, s.yp.raw(), d.H);
  down.bias = B(w.down_b);
  mg::gemm_down(down, d.N, d.st);
}

// off: the offsets on the host (from the plan); kept in s for the backward, with the gathered rows.
void forward_per_expert(const Sizes& d, const Tensor& x, const MoeWeights& w, float limit,
                        const std::vector<int32_t>& off, MoeSaved& s) {
  alloc_expert_rows(d, d.N, s);
  s.offsets_host = host_tensor(off);
  profile_mark(d.dev, "moe gather");  // profiling phases (bench:train-step --profile)
  s.xp = gathered_rows(x, s.perm_tok, d.st);
  profile_mark(d.dev, "moe experts");
  per_expert_xw(d.dev, off, s.xp, d.H, w.gate_up_w, false, 2 * d.I, &w.gate_up_b, s.gu);  // bias in the epilogue
  swiglu_forward(s.gu, limit, kSwigluAlpha, s.h);
  per_expert_xw(d.dev, off, s.h, d.I, w.down_w, false, d.H, &w.down_b, s.yp);
}

// Moves the routing in s to the slab layout of `slabs` (pad_layout_kernel): the saved offsets, perm_tok and slot_pos
// describe the padded rows, and the host keeps the padded offsets and the gathered rows for the backward.
void forward_slabs(const Sizes& d, const Tensor& x, const MoeWeights& w, float limit,
                   const std::vector<SlabRange>& slabs, MoeSaved& s) {
  const int64_t E = d.E, H = d.H, I = d.I, N = d.N;
  SlabOffsets so{};
  for (const auto& r : slabs)
    for (int64_t e = r.e0; e <= r.e1; e++) so.v[e] = static_cast<int32_t>(r.base + (e - r.e0) * r.Mp);
  const int64_t Np = slab_rows(slabs);
  Tensor perm_pad = make_tensor({Np}, DType::I32, d.dev), slot_pad = make_tensor({N}, DType::I32, d.dev),
         off_pad = make_tensor({E + 1}, DType::I32, d.dev);
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(perm_pad.raw(), 0xFF, Np * sizeof(int32_t), d.st), "moeForward pad");
  pad_layout_kernel<<<ceil_div(std::max(N, E + 1), 256), 256, 0, d.st>>>(
      s.topk_idx.data<int32_t>(), s.slot_pos.data<int32_t>(), s.offsets.data<int32_t>(), N, (int)d.k, (int)E, so,
      slot_pad.data<int32_t>(), perm_pad.data<int32_t>(), off_pad.data<int32_t>());
  GPTOSS_CUDA_LAUNCH_CHECK("moeForward pad layout");
  s.perm_tok = perm_pad;
  s.slot_pos = slot_pad;
  s.offsets = off_pad;
  s.offsets_host = host_tensor(std::vector<int32_t>(so.v, so.v + E + 1));
  alloc_expert_rows(d, Np, s);
  profile_mark(d.dev, "moe gather");  // profiling phases (bench:train-step --profile)
  s.xp = gathered_rows(x, s.perm_tok, d.st);
  profile_mark(d.dev, "moe experts");
  slab_xw(d, slabs, s.xp, H, w.gate_up_w, false, 2 * I, &w.gate_up_b, s.gu);  // bias in the epilogue
  // h = swiglu(gu) on the experts' rows, zeros on the padding rows (not read); I % 8 == 0 (the binding checks).
  swiglu_fwd_slab_kernel<<<dim3(Np / kColsumChunk, ceil_div(I / 4, 32)), dim3(32, 8), 0, d.st>>>(
      B(s.gu), s.perm_tok.data<int32_t>(), (int)I, limit, kSwigluAlpha, Bm(s.h));
  GPTOSS_CUDA_LAUNCH_CHECK("moeForward swiglu");
  slab_xw(d, slabs, s.h, I, w.down_w, false, H, &w.down_b, s.yp);
}

// ==== backward strategies =======================================================================================
// Each computes, from dyp (bf16 [rows, H], the routed output gradient scaled by the routing weights; zeros on
// padding rows): g.d_down_w and g.d_gate_up_w (written with wbeta 0, added into with wbeta 1), g.d_gate_up_b, and
// returns dxp (bf16 [rows, H], the input gradient of each routed row):
//   dW_down[e] = h_eᵀ·dyp_e; dh = dyp·W_down[e]ᵀ; dgu = swiglu'(gu)·dh; dW_gu[e] = xp_eᵀ·dgu_e; dxp = dgu·W_gu[e]ᵀ.

Tensor backward_grouped(const Sizes& d, const MoeWeights& w, const MoeSaved& s, const Tensor& dyp, MoeGrads& g) {
  const int64_t H = d.H, I = d.I, N = d.N;
  const int32_t* offsets = s.offsets.data<int32_t>();
  profile_mark(d.dev, "moe experts wgrad");  // profiling phases (bench:train-step --profile)
  if (g.weight_grads) mg::gemm_wgrad(wgrad_params(d, offsets, s.h, I, dyp, H, g.d_down_w), N, d.st, "moeBackward dDownW");
  // dgu from one GEMM (the SwiGLU backward in its epilogue, reading gu)
  profile_mark(d.dev, "moe experts dgrad");
  Tensor dgu = make_tensor({N, 2 * I}, DType::BF16, d.dev);
  mg::Params dh = rows_params(d, offsets, dyp, H, w.down_w, I, true, dgu.raw(), 2 * I);
  dh.limit = s.limit;
  dh.aux = B(s.gu);
  dh.ld_aux = 2 * I;
  mg::gemm_dgu(dh, N, d.st);
  profile_mark(d.dev, "moe bias/router grads");
  segment_colsum(d, dgu, 2 * I, offsets, g.d_gate_up_b, "moeBackward dGateUpB");
  if (g.weight_grads) {
    profile_mark(d.dev, "moe gather");
    const Tensor xp = gathered_rows(s.x, s.perm_tok, d.st);
    profile_mark(d.dev, "moe experts wgrad");
    mg::gemm_wgrad(wgrad_params(d, offsets, xp, H, dgu, 2 * I, g.d_gate_up_w), N, d.st, "moeBackward dGateUpW");
  }
  profile_mark(d.dev, "moe experts dgrad");
  Tensor dxp = make_tensor({N, H}, DType::BF16, d.dev);
  mg::gemm_dx(rows_params(d, offsets, dgu, 2 * I, w.gate_up_w, H, true, dxp.raw(), H), N, d.st);
  return dxp;
}

Tensor backward_per_expert(const Sizes& d, const MoeWeights& w, const MoeSaved& s, const Tensor& dyp, float wbeta,
                           MoeGrads& g) {
  const int64_t H = d.H, I = d.I, N = d.N;
  const std::vector<int32_t> off = saved_offsets(s);
  profile_mark(d.dev, "moe experts wgrad");  // profiling phases (bench:train-step --profile)
  if (g.weight_grads) per_expert_wgrad(d.dev, off, s.h, I, dyp, H, g.d_down_w, wbeta);
  profile_mark(d.dev, "moe experts dgrad");
  Tensor dh = make_tensor({N, I}, DType::BF16, d.dev);
  per_expert_xw(d.dev, off, dyp, H, w.down_w, true, I, nullptr, dh);
  Tensor dgu = make_tensor({N, 2 * I}, DType::BF16, d.dev);
  swiglu_backward(dh, s.gu, s.limit, kSwigluAlpha, dgu);
  profile_mark(d.dev, "moe bias/router grads");
  segment_colsum(d, dgu, 2 * I, s.offsets.data<int32_t>(), g.d_gate_up_b, "moeBackward dGateUpB");
  if (g.weight_grads) {
    const Tensor xp = s.xp.storage ? s.xp : gathered_rows(s.x, s.perm_tok, d.st);
    profile_mark(d.dev, "moe experts wgrad");
    per_expert_wgrad(d.dev, off, xp, H, dgu, 2 * I, g.d_gate_up_w, wbeta);
  }
  profile_mark(d.dev, "moe experts dgrad");
  Tensor dxp = make_tensor({N, H}, DType::BF16, d.dev);
  per_expert_xw(d.dev, off, dgu, 2 * I, w.gate_up_w, true, H, nullptr, dxp);
  return dxp;
}

// The per-expert products as one strided-batched GEMM per expert range (slab_xw, slab_wgrad).
Tensor backward_slabs(const Sizes& d, const MoeWeights& w, const MoeSaved& s, const Tensor& dyp, float wbeta,
                      MoeGrads& g) {
  const char* op = "moeBackward";
  const int64_t E = d.E, H = d.H, I = d.I, Np = s.perm_tok.dim(0);
  const std::vector<int32_t> off = saved_offsets(s);
  GPTOSS_CHECK(off[E] == Np, op, ": ctx.offsets end at ", off[E], " but ctx.permTok has ", Np, " rows");
  for (int64_t e = 0; e <= E; e++)
    GPTOSS_CHECK(off[e] % kPadRows == 0 && (e == 0 || off[e] >= off[e - 1]), op, ": ctx.offsets[", e, "] = ", off[e],
                 " is not a slab boundary (multiples of ", kPadRows, ", non-decreasing)");
  const std::vector<SlabRange> slabs = slabs_of(off);
  profile_mark(d.dev, "moe experts wgrad");  // profiling phases (bench:train-step --profile)
  if (g.weight_grads) slab_wgrad(d, slabs, s.h, I, dyp, H, g.d_down_w, wbeta);
  profile_mark(d.dev, "moe experts dgrad");
  Tensor dh = make_tensor({Np, I}, DType::BF16, d.dev);
  slab_xw(d, slabs, dyp, H, w.down_w, true, I, nullptr, dh);
  // dgu and the gate_up bias gradient in one pass over the slab layout's 64-row chunks (padding rows not read).
  Tensor dgu = make_tensor({Np, 2 * I}, DType::BF16, d.dev);
  Tensor part = make_tensor({Np / kColsumChunk, 2 * I}, DType::F32, d.dev);
  swiglu_bwd_colsum_kernel<<<dim3(Np / kColsumChunk, ceil_div(I / 4, 32)), dim3(32, 8), 0, d.st>>>(
      B(dh), B(s.gu), s.perm_tok.data<int32_t>(), (int)I, s.limit, kSwigluAlpha, Bm(dgu), part.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("moeBackward swiglu");
  chunk_colsum_reduce_kernel<<<dim3(ceil_div(2 * I, 256), E), 256, 0, d.st>>>(
      part.data<float>(), (int)(2 * I), s.offsets.data<int32_t>(), g.d_gate_up_b.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("moeBackward dGateUpB");
  if (g.weight_grads) {
    const Tensor xp = s.xp.storage ? s.xp : gathered_rows(s.x, s.perm_tok, d.st);
    profile_mark(d.dev, "moe experts wgrad");
    slab_wgrad(d, slabs, xp, H, dgu, 2 * I, g.d_gate_up_w, wbeta);
  }
  profile_mark(d.dev, "moe experts dgrad");
  Tensor dxp = make_tensor({Np, H}, DType::BF16, d.dev);
  slab_xw(d, slabs, dgu, 2 * I, w.gate_up_w, true, H, nullptr, dxp);
  return dxp;
}

// ==== expert adapters (LoRA) =====================================================================================

// The adapters as bf16 GEMM operands: f32 factors are rounded into fresh bf16 copies, bf16 ones used as they are.
struct LoraOps {
  Tensor gu_a, gu_b, down_a, down_b;
  float scale = 1.f;
  bool gu = false, down = false;
};

Tensor bf16_of(const Tensor& t) {
  if (t.dtype == DType::BF16) return t;
  Tensor b = make_tensor(t.shape, DType::BF16, t.device);
  ew_cast(t, b);
  return b;
}

LoraOps lora_ops(const MoeLora& l) {
  LoraOps o;
  o.scale = l.scale;
  o.gu = l.has_gu();
  o.down = l.has_down();
  if (o.gu) o.gu_a = bf16_of(l.gu_a), o.gu_b = bf16_of(l.gu_b);
  if (o.down) o.down_a = bf16_of(l.down_a), o.down_b = bf16_of(l.down_b);
  return o;
}

// Y_e[rows_e, C] += scale·(X_e[rows_e, K]·A[e])·B[e] for every expert with rows (A [E,K,r], B [E,r,C] bf16; X, Y
// bf16 in permuted row order). The r values per row go through a bf16 temporary U [rows, r].
void lora_xw(int dev, const std::vector<int32_t>& off, const Tensor& X, int64_t K, const Tensor& A, const Tensor& Bt,
             int64_t C, float scale, const Tensor& Y) {
  const int64_t E = static_cast<int64_t>(off.size()) - 1, r = A.dim(2);
  Tensor U = make_tensor({std::max<int64_t>(off[E], 1), r}, DType::BF16, dev);
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = off[e], rows = off[e + 1] - r0;
    if (rows == 0) continue;
    gemm_raw(dev, rows, r, K, 1.f, at<bf>(X, r0 * K), K, false, at<bf>(A, e * K * r), r, false, DType::BF16, nullptr,
             DType::BF16, 0.f, at<bf>(U, r0 * r), DType::BF16, r, GemmBucket::M);
    gemm_raw(dev, rows, C, r, scale, at<bf>(U, r0 * r), r, false, at<bf>(Bt, e * r * C), C, false, DType::BF16, nullptr,
             DType::BF16, 1.f, at<bf>(Y, r0 * C), DType::BF16, C, GemmBucket::M);
  }
}

// The backward of lora_xw for each expert e with rows, from dOut_e [rows, C] (bf16):
//   U = X_e·A[e], dU = scale·dOut_e·B[e]ᵀ [rows, r] (bf16 temporaries);
//   dA[e] (f32 [K, r]) = X_eᵀ·dU, dB[e] (f32 [r, C]) = scale·Uᵀ·dOut_e (experts without rows: zeros);
//   dIn_e [rows, K] (bf16) += dU·A[e]ᵀ.
void lora_xw_backward(int dev, cudaStream_t st, const std::vector<int32_t>& off, const Tensor& X, int64_t K,
                      const Tensor& dOut, int64_t C, const Tensor& A, const Tensor& Bt, float scale, const Tensor& dA,
                      const Tensor& dB, const Tensor& dIn) {
  const int64_t E = static_cast<int64_t>(off.size()) - 1, r = A.dim(2);
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(dA.raw(), 0, dA.numel() * sizeof(float), st), "moeBackward lora dA");
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(dB.raw(), 0, dB.numel() * sizeof(float), st), "moeBackward lora dB");
  Tensor U = make_tensor({std::max<int64_t>(off[E], 1), r}, DType::BF16, dev);
  Tensor dU = make_tensor({std::max<int64_t>(off[E], 1), r}, DType::BF16, dev);
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = off[e], rows = off[e + 1] - r0;
    if (rows == 0) continue;
    const bf* Xe = at<bf>(X, r0 * K);
    const bf* dOe = at<bf>(dOut, r0 * C);
    const bf* Ae = at<bf>(A, e * K * r);
    const bf* Be = at<bf>(Bt, e * r * C);
    bf* Ue = at<bf>(U, r0 * r);
    bf* dUe = at<bf>(dU, r0 * r);
    gemm_raw(dev, rows, r, K, 1.f, Xe, K, false, Ae, r, false, DType::BF16, nullptr, DType::BF16, 0.f, Ue, DType::BF16,
             r, GemmBucket::M);
    // dU = scale·dOut_e·B[e]ᵀ: B[e] is stored [r, C] = [N, K] of this product (transB).
    gemm_raw(dev, rows, r, C, scale, dOe, C, false, Be, C, true, DType::BF16, nullptr, DType::BF16, 0.f, dUe,
             DType::BF16, r, GemmBucket::M);
    gemm_raw(dev, r, C, rows, scale, Ue, r, true, dOe, C, false, DType::BF16, nullptr, DType::F32, 0.f,
             at<float>(dB, e * r * C), DType::F32, C, GemmBucket::K);
    gemm_raw(dev, K, r, rows, 1.f, Xe, K, true, dUe, r, false, DType::BF16, nullptr, DType::F32, 0.f,
             at<float>(dA, e * K * r), DType::F32, r, GemmBucket::K);
    // dIn_e += dU·A[e]ᵀ: A[e] is stored [K, r] = [N, K] of this product (transB).
    gemm_raw(dev, rows, K, r, 1.f, dUe, r, false, Ae, r, true, DType::BF16, nullptr, DType::BF16, 1.f,
             at<bf>(dIn, r0 * K), DType::BF16, K, GemmBucket::M);
  }
}

// The forward with adapters: the per-expert strategy's products (off: the unpadded offsets on the host) with the
// adapters' shares added to gu (before the SwiGLU) and to yp.
void forward_lora(const Sizes& d, const Tensor& x, const MoeWeights& w, float limit, const std::vector<int32_t>& off,
                  const LoraOps& l, MoeSaved& s) {
  alloc_expert_rows(d, d.N, s);
  s.offsets_host = host_tensor(off);
  s.xp = gathered_rows(x, s.perm_tok, d.st);
  per_expert_xw(d.dev, off, s.xp, d.H, w.gate_up_w, false, 2 * d.I, &w.gate_up_b, s.gu);
  if (l.gu) lora_xw(d.dev, off, s.xp, d.H, l.gu_a, l.gu_b, 2 * d.I, l.scale, s.gu);
  swiglu_forward(s.gu, limit, kSwigluAlpha, s.h);
  per_expert_xw(d.dev, off, s.h, d.I, w.down_w, false, d.H, &w.down_b, s.yp);
  if (l.down) lora_xw(d.dev, off, s.h, d.I, l.down_a, l.down_b, d.H, l.scale, s.yp);
}

// The backward with adapters (the forward_lora layout): backward_per_expert's products plus the adapters'.
Tensor backward_lora(const Sizes& d, const MoeWeights& w, const MoeSaved& s, const Tensor& dyp, float wbeta,
                     const LoraOps& l, MoeGrads& g) {
  const int64_t H = d.H, I = d.I, N = d.N, E = d.E;
  const std::vector<int32_t> off = saved_offsets(s);
  GPTOSS_CHECK(off[E] == N, "moeBackward: with expert adapters the context must hold the unpadded layout of their "
               "forward (", N, " rows), got offsets ending at ", off[E]);
  if (g.weight_grads) per_expert_wgrad(d.dev, off, s.h, I, dyp, H, g.d_down_w, wbeta);
  Tensor dh = make_tensor({N, I}, DType::BF16, d.dev);
  per_expert_xw(d.dev, off, dyp, H, w.down_w, true, I, nullptr, dh);
  if (l.down) {
    const int64_t r = l.down_a.dim(2);
    g.d_lora_down_a = make_tensor({E, I, r}, DType::F32, d.dev);
    g.d_lora_down_b = make_tensor({E, r, H}, DType::F32, d.dev);
    lora_xw_backward(d.dev, d.st, off, s.h, I, dyp, H, l.down_a, l.down_b, l.scale, g.d_lora_down_a, g.d_lora_down_b, dh);
  }
  Tensor dgu = make_tensor({N, 2 * I}, DType::BF16, d.dev);
  swiglu_backward(dh, s.gu, s.limit, kSwigluAlpha, dgu);
  segment_colsum(d, dgu, 2 * I, s.offsets.data<int32_t>(), g.d_gate_up_b, "moeBackward dGateUpB");
  const Tensor xp = s.xp.storage ? s.xp : gathered_rows(s.x, s.perm_tok, d.st);
  if (g.weight_grads) per_expert_wgrad(d.dev, off, xp, H, dgu, 2 * I, g.d_gate_up_w, wbeta);
  Tensor dxp = make_tensor({N, H}, DType::BF16, d.dev);
  per_expert_xw(d.dev, off, dgu, 2 * I, w.gate_up_w, true, H, nullptr, dxp);
  if (l.gu) {
    const int64_t r = l.gu_a.dim(2);
    g.d_lora_gu_a = make_tensor({E, H, r}, DType::F32, d.dev);
    g.d_lora_gu_b = make_tensor({E, r, 2 * I}, DType::F32, d.dev);
    lora_xw_backward(d.dev, d.st, off, xp, H, dgu, 2 * I, l.gu_a, l.gu_b, l.scale, g.d_lora_gu_a, g.d_lora_gu_b, dxp);
  }
  return dxp;
}

}  // namespace

namespace {

// The fused router's add + norm (moe_forward_prenorm): the op's x is the output buffer of the normed rows.
struct FusedPreNorm {
  const Tensor* x;  // the residual stream, bf16 [T, H]
  const Tensor* o;  // bf16 | f32 [T, H]
  const Tensor* w;  // bf16 [H]
  float eps;
  const Tensor* h;     // bf16 [T, H] out
  const Tensor* rstd;  // f32 [T] out
};

template <typename O>
void launch_router_fused(const Tensor& x, const MoeWeights& w, int64_t T, int64_t H, int64_t E, int64_t k, int slices,
                         int tasks, MoeSaved& s, const FusedPreNorm* fp, cudaStream_t st) {
  RouterPreNorm<O> pre;
  size_t smem = 0;
  if constexpr (!std::is_void_v<O>) {
    pre.x = B(*fp->x);
    pre.o = fp->o->data<O>();
    pre.w = B(*fp->w);
    pre.eps = fp->eps;
    pre.ld16 = aligned16(fp->x->raw()) && aligned16(fp->o->raw());
    pre.h = fp->h->data<bf>();
    pre.y = x.data<bf>();
    pre.rstd = fp->rstd->data<float>();
    smem = static_cast<size_t>(T * H) * sizeof(bf);
    static size_t opted = 0;  // the dynamic shared memory this instantiation may take (past 48 KB needs opting in)
    if (smem > opted) {
      GPTOSS_CUDA_CHECK(cudaFuncSetAttribute(router_fused_kernel<O>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem)),
                        "moeForward fused router: cudaFuncSetAttribute");
      opted = smem;
    }
  }
  router_fused_kernel<O><<<tasks, kFusedRouterThreads, smem, st>>>(
      B(x), B(w.router_w), B(w.router_b), (int)T, (int)H, (int)E, (int)k, slices, s.topk_idx.data<int32_t>(),
      s.topk_w.data<float>(), s.counts.data<int32_t>(), s.offsets.data<int32_t>(), s.perm_tok.data<int32_t>(),
      s.slot_pos.data<int32_t>(), pre);
  GPTOSS_CUDA_LAUNCH_CHECK("moeForward fused router");
}

void moe_forward_impl(const Tensor& x, const MoeWeights& w, int64_t k, float limit, const Tensor* residual, Tensor& y,
                      MoeSaved& s, ExpertGemmChoice choice, const MoeLora* lora, const FusedPreNorm* fp) {
  const char* op = "moeForward";
  const int dev = x.device;
  DeviceGuard guard(dev);
  cudaStream_t st = stream_of(dev);
  const int64_t T = x.dim(0), H = x.dim(1), E = w.router_w.dim(0), I = w.down_w.dim(1), N = T * k;
  const Sizes d{dev, st, T, H, E, I, k, N};
  for (const Tensor* t : {&x, &w.router_w, &w.gate_up_w, &w.gate_up_b, &w.down_w, &w.down_b})
    check_aligned(op, "tensor", *t);
  GPTOSS_CHECK(E <= kMaxSlabExperts, op, ": at most ", kMaxSlabExperts, " experts on CUDA, got routerW ",
               w.router_w.describe());
  s.x = x;
  s.top_k = k;
  s.limit = limit;
  s.topk_idx = make_tensor({T, k}, DType::I32, dev);
  s.topk_w = make_tensor({T, k}, DType::F32, dev);
  s.counts = make_tensor({E}, DType::I32, dev);
  s.offsets = make_tensor({E + 1}, DType::I32, dev);
  s.perm_tok = make_tensor({N}, DType::I32, dev);
  s.slot_pos = make_tensor({N}, DType::I32, dev);
  y = make_tensor({T, H}, DType::BF16, dev);

  profile_mark(dev, "moe router");  // profiling phases (bench:decode-profile); no-ops unless enabled
  if (fused_router_fits(T, H)) {
    const int slices = fused_router_slices(E), tasks = static_cast<int>((E + 1) / 2) * slices;
    GPTOSS_CHECK(slices * E <= kMaxSlabExperts, op, ": fused router scratch holds ", kMaxSlabExperts,
                 " partial logits per token, needs ", slices * E);  // holds for every E <= 256 (see g_router_part)
    if (!fp) launch_router_fused<void>(x, w, T, H, E, k, slices, tasks, s, nullptr, st);
    else if (fp->o->dtype == DType::F32) launch_router_fused<float>(x, w, T, H, E, k, slices, tasks, s, fp, st);
    else launch_router_fused<bf>(x, w, T, H, E, k, slices, tasks, s, fp, st);
  } else {
    // logits [T, E] = x·Wrᵀ + b (fp32 accumulation and output), then top-k + softmax per token.
    Tensor logits = make_tensor({T, E}, DType::F32, dev);
    gemm_raw(dev, T, E, H, 1.f, x.raw(), H, false, w.router_w.raw(), H, true, DType::BF16, w.router_b.raw(),
             DType::BF16, 0.f, logits.raw(), DType::F32, E);
    router_topk_kernel<<<ceil_div(T * 32, 128), 128, 0, st>>>(logits.data<float>(), T, (int)E, (int)k,
                                                              s.topk_idx.data<int32_t>(), s.topk_w.data<float>());
    GPTOSS_CUDA_LAUNCH_CHECK("moeForward router");
    route_place_kernel<<<E, 1024, 0, st>>>(s.topk_idx.data<int32_t>(), N, (int)k, (int)E, s.counts.data<int32_t>(),
                                           s.offsets.data<int32_t>(), s.perm_tok.data<int32_t>(),
                                           s.slot_pos.data<int32_t>());
    GPTOSS_CUDA_LAUNCH_CHECK("moeForward place");
  }

  // The cuBLAS strategies (and the adapters' path) read the routing's offsets on the host: a copy that waits for
  // the stream, so the GPU idles until the expert GEMMs are enqueued. The profile books that under "(host sync)".
  profile_mark(dev, "(host sync)");
  if (lora && lora->any()) {
    const std::vector<int32_t> off = host_offsets(s.offsets);
    profile_mark(dev, "moe experts");
    forward_lora(d, x, w, limit, off, lora_ops(*lora), s);
    s.expert_gemms = "per-expert";  // the per-expert path, with the adapters' products
  } else {
    const ExpertGemmPlan plan = plan_expert_gemms(N, E, choice, [&] { return host_offsets(s.offsets); });
    profile_mark(dev, "moe experts");
    switch (plan.strategy) {
      case ExpertGemms::kDecode:
        forward_decode(d, x, w, limit, residual, y, s);
        s.expert_gemms = "decode";
        return;  // combined by the decode kernels
      case ExpertGemms::kGrouped: forward_grouped(d, x, w, limit, s); s.expert_gemms = "grouped"; break;
      case ExpertGemms::kSlabs: forward_slabs(d, x, w, limit, plan.slabs, s); s.expert_gemms = "slabs"; break;
      case ExpertGemms::kPerExpert:
        forward_per_expert(d, x, w, limit, plan.offsets, s);
        s.expert_gemms = "per-expert";
        break;
    }
  }
  profile_mark(dev, "moe combine");
  combine_kernel<<<T, 256, 0, st>>>(B(s.yp), s.slot_pos.data<int32_t>(), s.topk_w.data<float>(),
                                    residual ? B(*residual) : nullptr, (int)H, (int)k, Bm(y));
  GPTOSS_CUDA_LAUNCH_CHECK("moeForward combine");
}

}  // namespace

void moe_forward(const Tensor& x, const MoeWeights& w, int64_t k, float limit, const Tensor* residual, Tensor& y,
                 MoeSaved& s, ExpertGemmChoice choice, const MoeLora* lora) {
  moe_forward_impl(x, w, k, limit, residual, y, s, choice, lora, nullptr);
}

void moe_forward_prenorm(const Tensor& x, const MoePreNorm& pre, const MoeWeights& w, int64_t k, float limit,
                         Tensor& y, Tensor& h, Tensor& normed, Tensor& rstd, MoeSaved& s, ExpertGemmChoice choice,
                         const MoeLora* lora) {
  const int dev = x.device;
  DeviceGuard guard(dev);
  const int64_t T = x.dim(0), H = x.dim(1);
  h = make_tensor({T, H}, DType::BF16, dev);
  normed = make_tensor({T, H}, DType::BF16, dev);
  rstd = make_tensor({T}, DType::F32, dev);
  // The router norms the rows itself when it runs fused (decode sizes) and in its blocks the norm is
  // add_rmsnorm_forward's: the same row code with the same vec choice and 256 threads (kFusedRouterThreads) a row.
  const bool vec = H % 8 == 0 && aligned16(h.raw()) && aligned16(pre.w.raw()) && aligned16(normed.raw());
  const bool fuse = fused_router_fits(T, H) && vec && rms::row_threads(H, true) == kFusedRouterThreads &&
                    pre.w.dtype == DType::BF16 && (pre.o.dtype == DType::BF16 || pre.o.dtype == DType::F32);
  if (!fuse) {
    add_rmsnorm_forward(x, pre.o, pre.w, pre.eps, h, normed, rstd);
    moe_forward_impl(normed, w, k, limit, &h, y, s, choice, lora, nullptr);
    return;
  }
  const FusedPreNorm fp{&x, &pre.o, &pre.w, pre.eps, &h, &rstd};
  moe_forward_impl(normed, w, k, limit, &h, y, s, choice, lora, &fp);
}

void moe_backward(const Tensor& dy, const MoeWeights& w, const MoeSaved& s, MoeGrads& g, const MoeLora* lora) {
  const bool with_lora = lora && lora->any();
  const char* op = "moeBackward";
  const int dev = dy.device;
  DeviceGuard guard(dev);
  cudaStream_t st = stream_of(dev);
  const int64_t T = s.x.dim(0), H = s.x.dim(1), E = w.router_w.dim(0), I = w.down_w.dim(1), k = s.top_k,
                N = T * k;
  const Sizes d{dev, st, T, H, E, I, k, N};
  for (const Tensor* t : {&dy, &s.x, &s.gu, &s.h, &s.yp, &w.router_w, &w.gate_up_w, &w.down_w})
    check_aligned(op, "tensor", *t);
  const int32_t* offsets = s.offsets.data<int32_t>();

  // Slab layout (the forward's kSlabs): Np > N rows, padding rows must hold zero gradients.
  const int64_t Np = s.perm_tok.dim(0);
  GPTOSS_CHECK(Np >= N, op, ": ctx.permTok has ", Np, " rows; expected ", N, " or a padded layout above it");
  const ExpertGemms strategy = saved_strategy(Np, N, E);
  const bool padded = strategy == ExpertGemms::kSlabs;
  GPTOSS_CHECK(!with_lora || !padded, op, ": expert adapters were given, but the context holds a padded layout (its ",
               "forward ran without them)");

  Tensor dyp = make_tensor({Np, H}, DType::BF16, dev);
  Tensor dlp = make_tensor({Np}, DType::F32, dev);
  if (padded) {  // route_bwd writes the valid rows; padding rows must hold zeros
    zero_pad_rows_kernel<<<Np, 128, 0, st>>>(s.perm_tok.data<int32_t>(), (int)H, Bm(dyp));
    GPTOSS_CUDA_LAUNCH_CHECK("moeBackward pad");
    GPTOSS_CUDA_CHECK(cudaMemsetAsync(dlp.raw(), 0, Np * sizeof(float), st), "moeBackward pad");
  }
  Tensor dl = make_tensor({T, k}, DType::F32, dev);
  profile_mark(dev, "moe route bwd");  // profiling phases (bench:train-step --profile); no-ops unless enabled
  if (dy.dtype == DType::BF16)
    route_bwd_kernel<bf><<<T, 256, 0, st>>>(B(dy), B(s.yp), s.slot_pos.data<int32_t>(), s.topk_w.data<float>(),
                                            (int)H, (int)k, Bm(dyp), dlp.data<float>(), dl.data<float>());
  else
    route_bwd_kernel<float><<<T, 256, 0, st>>>(dy.data<float>(), B(s.yp), s.slot_pos.data<int32_t>(),
                                               s.topk_w.data<float>(), (int)H, (int)k, Bm(dyp), dlp.data<float>(),
                                               dl.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("moeBackward route");

  profile_mark(dev, "moe bias/router grads");
  g.d_down_b = make_tensor({E, H}, DType::F32, dev);
  g.d_router_w = make_tensor({E, H}, DType::F32, dev);
  // Slab layout: both column sums per 64-row chunk of contiguous rows (padding rows not read), then a fixed-order
  // sum per expert; dRouterW reads the forward's gathered rows xp. Otherwise per-segment sums (dRouterW below,
  // gathering x through perm_tok).
  const bool chunk_sums = padded && s.xp.storage;
  auto chunk_colsum = [&](const Tensor& in, const float* scale, const Tensor& out) {
    Tensor part = make_tensor({Np / kColsumChunk, H}, DType::F32, dev);
    chunk_colsum_kernel<<<dim3(Np / kColsumChunk, ceil_div(H / 8, 32)), dim3(32, 8), 0, st>>>(
        B(in), scale, s.perm_tok.data<int32_t>(), (int)H, part.data<float>());
    chunk_colsum_reduce_kernel<<<dim3(ceil_div(H, 256), E), 256, 0, st>>>(part.data<float>(), (int)H, offsets,
                                                                         out.data<float>());
  };
  if (chunk_sums) {
    chunk_colsum(dyp, nullptr, g.d_down_b);
    chunk_colsum(s.xp, dlp.data<float>(), g.d_router_w);
    GPTOSS_CUDA_LAUNCH_CHECK("moeBackward dDownB");
  } else {
    segment_colsum(d, dyp, H, offsets, g.d_down_b, "moeBackward dDownB");
  }

  // The cuBLASLt strategies add the weight gradients into the caller's buffers directly (beta 1), or write them there
  // (beta 0) when the buffers hold no gradient yet (acc_overwrite). Without weight gradients (a frozen base) the two
  // large tensors are not allocated at all.
  const bool in_place = g.weight_grads && (with_lora || strategy != ExpertGemms::kGrouped) && g.acc_gate_up_w.storage &&
                        g.acc_down_w.storage;
  if (g.weight_grads) {
    g.d_down_w = in_place ? g.acc_down_w : make_tensor({E, I, H}, DType::F32, dev);
    g.d_gate_up_w = in_place ? g.acc_gate_up_w : make_tensor({E, H, 2 * I}, DType::F32, dev);
  }
  g.accumulated = in_place;
  const float wbeta = in_place && !g.acc_overwrite ? 1.f : 0.f;
  g.d_gate_up_b = make_tensor({E, 2 * I}, DType::F32, dev);
  Tensor dxp;
  if (with_lora) {
    dxp = backward_lora(d, w, s, dyp, wbeta, lora_ops(*lora), g);
  } else {
    switch (strategy) {
      case ExpertGemms::kDecode:  // not a saved strategy (saved_strategy): decode contexts hold the grouped layout
      case ExpertGemms::kGrouped: dxp = backward_grouped(d, w, s, dyp, g); break;
      case ExpertGemms::kSlabs: dxp = backward_slabs(d, w, s, dyp, wbeta, g); break;
      case ExpertGemms::kPerExpert: dxp = backward_per_expert(d, w, s, dyp, wbeta, g); break;
    }
  }

  profile_mark(dev, "moe bias/router grads");
  if (!chunk_sums) {
    seg_colsum_kernel<<<dim3(ceil_div(H, 64), E), dim3(32, 8), 0, st>>>(B(s.x), H, (int)H, s.perm_tok.data<int32_t>(),
                                                                        dlp.data<float>(), offsets,
                                                                        g.d_router_w.data<float>());
    GPTOSS_CUDA_LAUNCH_CHECK("moeBackward dRouterW");
  }
  g.d_router_b = make_tensor({E}, DType::F32, dev);
  seg_sum_kernel<<<E, 256, 0, st>>>(dlp.data<float>(), offsets, g.d_router_b.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("moeBackward dRouterB");
  profile_mark(dev, "moe dx");
  g.dx = make_tensor({T, H}, DType::F32, dev);
  dx_kernel<<<T, 256, 0, st>>>(B(dxp), s.slot_pos.data<int32_t>(), s.topk_idx.data<int32_t>(), dl.data<float>(),
                               B(w.router_w), (int)H, (int)k, g.dx.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("moeBackward dx");
}

}  // namespace gptoss::cuda
