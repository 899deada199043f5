// attention_heuristics.h: which attention kernel runs, as a pure function of the problem's shape, the mode and what
// the device offers. This is the one place where the choice is made; the launchers (attention_fwd.cu,
// attention_fwd_ws.cu, attention_bwd.cu) ask here and do what the plan says. The measurements behind each choice,
// and the variants that lost, are in docs/attention.md.
//
// Kernel families (all bf16 inputs, fp32 accumulation, sinks, causal / sliding window, GQA, packed sequences):
//   mma.sync   FlashAttention-2 style (attention_fwd.cu fwd_kernel<D>; attention_bwd_kernels.cuh dkdv_kernel<D>,
//              dq_kernel<D>): any head_dim of 16, 32, 64, 128; needs nothing beyond sm_80 tensor cores.
//   wgmma      Hopper warpgroup MMA, cp.async loads (dkdv_wgmma_kernel, dq_wgmma_kernel): head_dim 64, sm_90.
//   ws         warp-specialized, FlashAttention-3 structure: a TMA producer warp and two wgmma consumer warpgroups
//              (attention_fwd_ws.cu fwd_ws_kernel, attention_bwd_ws.cuh bwd_ws_kernel): head_dim 64, sm_90, and a
//              TMA tensor map for every operand.
//
// What the hardware and driver require:
//   - wgmma / TMA / setmaxnreg exist on sm_90 only. (This build compiles sm_90a code only, so every device that
//     runs it is sm_90; the mma.sync row below is what a build for other targets would run.)
//   - A TMA tensor map is encoded per call on the host through the driver's cuTensorMapEncodeTiled. That fails with
//     a driver that does not export it or a tensor whose base or row stride is not 16-byte aligned; the launcher
//     then asks again with `tma = false` and says so once on stderr.
//   - The Hopper kernels are written for head_dim 64 (gpt-oss); other head dims run the mma.sync family everywhere.
#pragma once

namespace gptoss::cuda::attn {

// What the device (and, for tma, the driver and this call's tensors) offers.
struct DeviceCaps {
  bool sm90;  // compute capability 9.0: wgmma, TMA, setmaxnreg
  bool tma;   // tensor maps can be encoded for this call's tensors
};

// ---- forward ---------------------------------------------------------------------------------------------------
enum class FwdKernel {
  kWarpSpecialized,  // fwd_ws_kernel<key_tile, stages, heads_per_cta > 1>
  kMmaSync,          // fwd_kernel<head_dim>
};
struct FwdPlan {
  FwdKernel kernel;
  int key_tile = 0;       // ws: keys per K/V tile (64 or 128)
  int stages = 0;         // ws: K/V ring slots
  int heads_per_cta = 1;  // ws: query heads of one kv head per CTA, their K/V band loaded once (1 = no head loop)
};

constexpr int kFwdWsQueryRows = 128;  // query rows per ws CTA (two consumer warpgroups of 64)

// Key tiles of one ws CTA's band under a window: at most (window + 126) / key_tile + 2 (rows q0 .. q0 + 127 see keys
// q0 - window + 1 .. q0 + 127).
constexpr bool fwd_window_band_fits(int window, int key_tile, int slots) {
  return window > 0 && (window + kFwdWsQueryRows - 2) / key_tile + 2 <= slots;
}

// group = Hq / Hkv (query heads per kv head).
constexpr FwdPlan plan_forward(int head_dim, int window, int group, DeviceCaps dev) {
  // The ws forward is 2.0-2.4x the wgmma / mma.sync kernels it replaced on an H100, causal and windows alike.
  if (head_dim != 64 || !dev.sm90 || !dev.tma) return {FwdKernel::kMmaSync};
  // Windows <= 129: 64-key tiles, 5 slots. A warpgroup's 64 rows then cover a window-128 band in 3 x 64 keys of tile
  // work instead of 2 x 128 (sliding fwd 0.084 -> 0.070 ms at S4096 on an H100), and the whole band stays resident.
  if (fwd_window_band_fits(window, 64, 5)) return {FwdKernel::kWarpSpecialized, 64, 5, group};
  // Otherwise 128-key tiles in a ring of 4 slots (3 measured 3% slower). Windows whose band fits in the ring run all
  // query heads of the kv group in one CTA (the band loaded once, fill / drain / epilogue of one head under the next
  // head's work); causal and long bands run one head per CTA (a long band gains nothing from the head loop:
  // 1 / 2 / 8 heads per CTA measured 0.340 / 0.348 / 0.464 ms causal at S4096).
  return {FwdKernel::kWarpSpecialized, 128, 4, fwd_window_band_fits(window, 128, 4) ? group : 1};
}

// ---- backward --------------------------------------------------------------------------------------------------
enum class BwdKernel {
  // bwd_ws_kernel: dK, dV and dQ in one kernel, dQ partials added to an fp32 accumulator by red.global.add (run to
  // run, dq's summation order varies; dK / dV / dsinks do not). 2.1x the wgmma pair's kernel time on an H100.
  kWarpSpecializedFusedDq,
  // dkdv_wgmma_kernel (dK/dV, high-priority side stream) concurrently with dq_wgmma_kernel: no atomics, bitwise
  // reproducible; ~19% faster than the mma.sync pair's best schedule at S4096 causal on an H100.
  kWgmma,
  // dkdv_kernel<D> then dq_kernel<D>: no atomics, bitwise reproducible.
  kMmaSync,
};

constexpr BwdKernel plan_backward(int head_dim, bool deterministic, DeviceCaps dev) {
  if (head_dim != 64 || !dev.sm90) return BwdKernel::kMmaSync;
  // deterministic: false permits reductions, it does not require them: without a tensor map, the deterministic wgmma
  // pair, which needs none. (A cp.async-fed fused-dQ kernel used to cover this case, ~1.5x faster than the pair; one
  // fused kernel is kept, not two, for a driver fallback.)
  if (!deterministic && dev.tma) return BwdKernel::kWarpSpecializedFusedDq;
  return BwdKernel::kWgmma;
}

// The plans for gpt-oss's shapes (head_dim 64, 8 query heads per kv head), checked at compile time.
namespace plan_examples {
constexpr DeviceCaps kHopper{true, true}, kHopperNoTma{true, false}, kOther{false, false};
constexpr FwdPlan kSliding128 = plan_forward(64, 128, 8, kHopper), kCausal = plan_forward(64, 0, 8, kHopper);
static_assert(kSliding128.kernel == FwdKernel::kWarpSpecialized && kSliding128.key_tile == 64 &&
                  kSliding128.stages == 5 && kSliding128.heads_per_cta == 8,
              "sliding window 128: 64-key tiles, 5 slots, the whole kv group per CTA");
static_assert(kCausal.kernel == FwdKernel::kWarpSpecialized && kCausal.key_tile == 128 && kCausal.stages == 4 &&
                  kCausal.heads_per_cta == 1,
              "causal: 128-key tiles, 4 slots, one head per CTA");
static_assert(plan_forward(64, 257, 8, kHopper).heads_per_cta == 8 &&
                  plan_forward(64, 258, 8, kHopper).heads_per_cta == 1,
              "128-key tiles: the head loop while the band fits the 4 slots");
static_assert(plan_forward(64, 0, 8, kHopperNoTma).kernel == FwdKernel::kMmaSync &&
                  plan_forward(128, 0, 8, kHopper).kernel == FwdKernel::kMmaSync,
              "no TMA map, or head_dim other than 64: mma.sync");
static_assert(plan_backward(64, false, kHopper) == BwdKernel::kWarpSpecializedFusedDq &&
                  plan_backward(64, true, kHopper) == BwdKernel::kWgmma &&
                  plan_backward(64, false, kHopperNoTma) == BwdKernel::kWgmma &&
                  plan_backward(32, false, kHopper) == BwdKernel::kMmaSync &&
                  plan_backward(64, false, kOther) == BwdKernel::kMmaSync,
              "backward: fused dQ, the wgmma pair, mma.sync");
}  // namespace plan_examples

}  // namespace gptoss::cuda::attn
