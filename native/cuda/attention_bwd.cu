// attention_bwd.cu: FlashAttention-2 style backward with sinks, deterministic (no atomics).
//
//   1. pre:  D_i = dO_i . O_i (fp32, [Hq, T]) and per-block partial sums of e^{sink_h - lse_i} D_i.
//   2. dkdv: one CTA per 64-key block of one kv head; loops over the query heads of its GQA group and the query
//            blocks that can see the keys (O(S*W) with a window). Warps own 16 keys each and compute the
//            transposed scores S^T = K Q^T, so P^T and dS^T stay in registers and feed dV += P^T dO and
//            dK += dS^T Q directly. P is recomputed from the saved lse (sink included).
//   3. dq:   one CTA per 128-query block of one head (8 warps x 16 rows), streaming K/V like the forward:
//            S = Q K^T, dP = dO V^T, dS = P (dP - D), dQ += dS K.
//   4. dsinks_h = -sum of the partials (fixed order).
// dq costs two extra GEMMs (S and dP are recomputed) instead of fp32 atomics, which keeps results bitwise
// reproducible.
// GPTOSS_ATTN_BWD=v2 (head_dim 64, deterministic): 128-key dK/dV CTAs of 8 warps, heaviest CTAs first, on a
// high-priority side stream concurrently with dQ (bitwise the same results as the default; see bwd_version_nw).
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "attention.h"
#include "attention_common.cuh"
#include "attention_bwd_kernels.cuh"
#include "attention_bwd_ws.cuh"

namespace gptoss::cuda {

namespace {
template <typename K>
void set_smem(K kernel, int bytes, bool& done) {
  if (done) return;
  GPTOSS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
                    "attentionBackward: cudaFuncSetAttribute");
  done = true;
}

// Every backward starts with D_i = dO_i.O_i and the per-block dsinks partials (bwd_pre_kernel) and, when the
// sinks have a gradient, reduces those partials in a fixed order (dsinks_reduce_kernel).
template <int D>
void launch_pre(attn::Params& p, float* partial, int npre, cudaStream_t st) {
  attn::bwd_pre_kernel<D><<<dim3(npre, p.Hq), 256, 0, st>>>(p, partial);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: pre kernel launch");
}
void launch_dsinks(const attn::Params& p, const float* partial, int npre, float* dsinks, cudaStream_t st) {
  if (!dsinks) return;
  attn::dsinks_reduce_kernel<<<p.Hq, 256, 0, st>>>(partial, npre, dsinks);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dsinks kernel launch");
}

template <int D, int MT>
void launch_bwd(attn::Params& p, int nseq, int max_seqlen, float* partial, int npre, float* dsinks, cudaStream_t st) {
  launch_pre<D>(p, partial, npre, st);
  launch_dsinks(p, partial, npre, dsinks, st);
  using KC = attn::DkdvCfg<D, MT>;
  using QC = attn::DqCfg<D, MT>;
  static bool kd = false, qd = false;
  set_smem(attn::dkdv_kernel<D, MT, false>, KC::SMEM, kd);
  set_smem(attn::dq_kernel<D, MT>, QC::SMEM, qd);
  attn::dkdv_kernel<D, MT, false><<<dim3(ceil_div(max_seqlen, KC::BN), p.Hkv, nseq), KC::NT, KC::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dk/dv kernel launch");
  attn::dq_kernel<D, MT><<<dim3(ceil_div(max_seqlen, QC::BM), p.Hq, nseq), QC::NT, QC::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dq kernel launch");
}

// A second stream per device (created once, never destroyed, at the highest priority) with fork/join events, so
// the dK/dV and dQ kernels of the v2 backward run concurrently: both only read D_i and lse, and each has a long
// triangular (causal) tail. One host thread per device at a time (the events are shared by that device's calls).
struct BwdSideLane {
  cudaStream_t stream = nullptr;
  cudaEvent_t fork = nullptr, join = nullptr;
};
BwdSideLane& bwd_side_lane(int device) {
  static std::mutex mu;
  static std::map<int, BwdSideLane> lanes;
  std::lock_guard<std::mutex> lock(mu);
  BwdSideLane& l = lanes[device];
  if (!l.stream) {
    DeviceGuard g(device);
    int least = 0, greatest = 0;
    GPTOSS_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest), "attentionBackward: stream priorities");
    GPTOSS_CUDA_CHECK(cudaEventCreateWithFlags(&l.fork, cudaEventDisableTiming), "attentionBackward: event create");
    GPTOSS_CUDA_CHECK(cudaEventCreateWithFlags(&l.join, cudaEventDisableTiming), "attentionBackward: event create");
    GPTOSS_CUDA_CHECK(cudaStreamCreateWithPriority(&l.stream, cudaStreamNonBlocking, greatest),
                      "attentionBackward: stream create");
  }
  return l;
}

// v2 backward, head_dim 64, deterministic: pre on the compute stream, then dK/dV (dkdv_v2_kernel<NW>) on the
// high-priority side stream and dQ (dq_kernel<64, 1, true>) on the compute stream at the same time, joined before
// returning. The priority makes every dK/dV CTA (~10x longer than a dQ CTA, heaviest first) take an SM before any
// pending dQ CTA does; the short dQ CTAs then fill the SMs that dK/dV's triangular tail leaves idle.
template <int NW>
void launch_bwd_v2(attn::Params& p, int device, int nseq, int max_seqlen, float* partial, int npre, float* dsinks,
                   cudaStream_t st) {
  launch_pre<64>(p, partial, npre, st);
  using KC = attn::DkdvV2Cfg<NW>;
  using QC = attn::DqCfg<64, 1>;
  static bool kd = false, qd = false;
  set_smem(attn::dkdv_v2_kernel<NW>, KC::SMEM, kd);
  set_smem(attn::dq_kernel<64, 1, true>, QC::SMEM, qd);
  BwdSideLane& side = bwd_side_lane(device);
  GPTOSS_CUDA_CHECK(cudaEventRecord(side.fork, st), "attentionBackward: fork record");
  GPTOSS_CUDA_CHECK(cudaStreamWaitEvent(side.stream, side.fork, 0), "attentionBackward: fork wait");
  attn::dkdv_v2_kernel<NW><<<dim3(ceil_div(max_seqlen, KC::BN) * p.Hkv, 1, nseq), KC::NT, KC::SMEM, side.stream>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dk/dv v2 kernel launch");
  GPTOSS_CUDA_CHECK(cudaEventRecord(side.join, side.stream), "attentionBackward: join record");
  attn::dq_kernel<64, 1, true><<<dim3(ceil_div(max_seqlen, QC::BM) * p.Hq, 1, nseq), QC::NT, QC::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dq v2 kernel launch");
  launch_dsinks(p, partial, npre, dsinks, st);
  // Later work on the compute stream (and the caching allocator's reuse of dlt/partial) waits for dK/dV too.
  GPTOSS_CUDA_CHECK(cudaStreamWaitEvent(st, side.join, 0), "attentionBackward: join wait");
}

// v3 backward (GPTOSS_ATTN_BWD=v3), head_dim 64 on sm_90, deterministic: like v2 (pre on the compute stream, dK/dV on
// the high-priority side stream concurrently with dQ, heaviest CTAs first) with the Hopper wgmma kernels:
// dkdv_wgmma_kernel<2, true> (128 keys per CTA, 64 per warpgroup) and dq_wgmma_kernel<2, true> (128 queries).
void launch_bwd_v3(attn::Params& p, int device, int nseq, int max_seqlen, float* partial, int npre, float* dsinks,
                   cudaStream_t st) {
  launch_pre<64>(p, partial, npre, st);
  using KC = attn::DkdvWgCfg<2>;
  using QC = attn::DqWgCfg<2>;
  static bool kd = false, qd = false;
  set_smem(attn::dkdv_wgmma_kernel<2, true>, KC::SMEM, kd);
  set_smem(attn::dq_wgmma_kernel<2, true>, QC::SMEM, qd);
  BwdSideLane& side = bwd_side_lane(device);
  GPTOSS_CUDA_CHECK(cudaEventRecord(side.fork, st), "attentionBackward: fork record");
  GPTOSS_CUDA_CHECK(cudaStreamWaitEvent(side.stream, side.fork, 0), "attentionBackward: fork wait");
  attn::dkdv_wgmma_kernel<2, true>
      <<<dim3(ceil_div(max_seqlen, KC::BN) * p.Hkv, 1, nseq), KC::NT, KC::SMEM, side.stream>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dk/dv v3 kernel launch");
  GPTOSS_CUDA_CHECK(cudaEventRecord(side.join, side.stream), "attentionBackward: join record");
  attn::dq_wgmma_kernel<2, true><<<dim3(ceil_div(max_seqlen, QC::BM) * p.Hq, 1, nseq), QC::NT, QC::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dq v3 kernel launch");
  launch_dsinks(p, partial, npre, dsinks, st);
  GPTOSS_CUDA_CHECK(cudaStreamWaitEvent(st, side.join, 0), "attentionBackward: join wait");
}

// Deterministic backward for head_dim 64 on sm_90 with the wgmma kernels (GPTOSS_ATTN_BWD_NWG = 2 | 3 warpgroups
// per CTA for dK/dV, GPTOSS_ATTN_DQ_NWG for dQ; default 2).
template <int KW, int QW>
void launch_bwd_wgmma_t(attn::Params& p, int nseq, int max_seqlen, cudaStream_t st) {
  using KC = attn::DkdvWgCfg<KW>;
  using QC = attn::DqWgCfg<QW>;
  static bool kd = false, qd = false;
  set_smem(attn::dkdv_wgmma_kernel<KW>, KC::SMEM, kd);
  set_smem(attn::dq_wgmma_kernel<QW>, QC::SMEM, qd);
  attn::dkdv_wgmma_kernel<KW><<<dim3(ceil_div(max_seqlen, KC::BN), p.Hkv, nseq), KC::NT, KC::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dk/dv kernel launch");
  static const int dq_old = attn::env_int("GPTOSS_ATTN_DQ_OLD", 0);
  if (dq_old) {
    using OC = attn::DqCfg<64, 1>;
    static bool od = false;
    set_smem(attn::dq_kernel<64, 1>, OC::SMEM, od);
    attn::dq_kernel<64, 1><<<dim3(ceil_div(max_seqlen, OC::BM), p.Hq, nseq), OC::NT, OC::SMEM, st>>>(p);
  } else {
    attn::dq_wgmma_kernel<QW><<<dim3(ceil_div(max_seqlen, QC::BM), p.Hq, nseq), QC::NT, QC::SMEM, st>>>(p);
  }
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dq kernel launch");
}

void launch_bwd_wgmma(attn::Params& p, int nseq, int max_seqlen, float* partial, int npre, float* dsinks,
                      cudaStream_t st) {
  launch_pre<64>(p, partial, npre, st);
  launch_dsinks(p, partial, npre, dsinks, st);
  static const int kw = attn::env_int("GPTOSS_ATTN_BWD_NWG", 2), qw = attn::env_int("GPTOSS_ATTN_DQ_NWG", 2);
  if (kw == 3)
    qw == 3 ? launch_bwd_wgmma_t<3, 3>(p, nseq, max_seqlen, st) : launch_bwd_wgmma_t<3, 2>(p, nseq, max_seqlen, st);
  else
    qw == 3 ? launch_bwd_wgmma_t<2, 3>(p, nseq, max_seqlen, st) : launch_bwd_wgmma_t<2, 2>(p, nseq, max_seqlen, st);
}

// Non-deterministic backward for head_dim 64: dk/dv kernel with fused atomic dq, then a scale/convert pass.
void launch_bwd_atomic(attn::Params& p, int nseq, int max_seqlen, float* partial, int npre, float* dsinks,
                       const Tensor& dq, cudaStream_t st) {
  launch_pre<64>(p, partial, npre, st);
  launch_dsinks(p, partial, npre, dsinks, st);
  using KC = attn::DkdvCfg<64, 1, true>;
  static bool kd = false;
  set_smem(attn::dkdv_kernel<64, 1, true>, KC::SMEM, kd);
  const int64_t n = dq.numel();
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(p.dq_acc, 0, n * sizeof(float), st), "attentionBackward: memset");
  attn::dkdv_kernel<64, 1, true><<<dim3(ceil_div(max_seqlen, KC::BN), p.Hkv, nseq), KC::NT, KC::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dk/dv/dq kernel launch");
  const unsigned blocks = ceil_div(n / 4, 256);
  if (p.grad_f32)
    attn::dq_convert_kernel<float><<<blocks, 256, 0, st>>>(p.dq_acc, static_cast<float*>(p.dq), n, p.scale);
  else
    attn::dq_convert_kernel<__nv_bfloat16>
        <<<blocks, 256, 0, st>>>(p.dq_acc, static_cast<__nv_bfloat16*>(p.dq), n, p.scale);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dq convert kernel launch");
}

// dq = scale * acc, the fused kernels' fp32 [Hq, T, 64] accumulator transposed to [T, Hq, 64] (n elements).
void launch_dq_convert(const attn::Params& p, int64_t n, cudaStream_t st) {
  const unsigned blocks = ceil_div(n / 4, 256);
  if (p.grad_f32)
    attn::dq_convert_ht_kernel<float><<<blocks, 256, 0, st>>>(p.dq_acc, static_cast<float*>(p.dq), p.T, p.Hq, p.scale);
  else
    attn::dq_convert_ht_kernel<__nv_bfloat16>
        <<<blocks, 256, 0, st>>>(p.dq_acc, static_cast<__nv_bfloat16*>(p.dq), p.T, p.Hq, p.scale);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dq convert kernel launch");
}

// The fused backward around its dK/dV/dQ kernel (launch_kernel): pre (D_i) and the zeroed fp32 dQ accumulator
// before, dq = scale * acc and dsinks after, all on the compute stream.
template <typename LaunchKernel>
void run_fused_bwd(attn::Params& p, float* partial, int npre, float* dsinks, const Tensor& dq, cudaStream_t st,
                   LaunchKernel launch_kernel) {
  const int64_t n = dq.numel();
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(p.dq_acc, 0, n * sizeof(float), st), "attentionBackward: memset");
  launch_pre<64>(p, partial, npre, st);
  launch_kernel();
  launch_dq_convert(p, n, st);
  launch_dsinks(p, partial, npre, dsinks, st);
}

// Non-deterministic backward for head_dim 64 on sm_90 (deterministic: false): dkdv_wgmma_kernel<2, true, FDQ> computes
// dK, dV (bitwise as v3) and adds dQ partials to an fp32 [Hq, T, 64] accumulator (FDQ 1: bulk async reductions,
// FDQ 2: red.global.add.v4, FDQ 3: red.global.add.v4 with the dQ product pipelined into the next step), so there is
// no dQ kernel; then dq = scale * acc, transposed to [T, Hq, 64].
// Heaviest CTAs first; the rest as run_fused_bwd.
template <int FDQ>
void launch_bwd_fused(attn::Params& p, int nseq, int max_seqlen, float* partial, int npre, float* dsinks,
                      const Tensor& dq, cudaStream_t st) {
  run_fused_bwd(p, partial, npre, dsinks, dq, st, [&] {
    using KC = attn::DkdvWgCfg<2, FDQ>;
    static bool kd = false;
    set_smem(attn::dkdv_wgmma_kernel<2, true, FDQ>, KC::SMEM, kd);
    attn::dkdv_wgmma_kernel<2, true, FDQ>
        <<<dim3(ceil_div(max_seqlen, KC::BN) * p.Hkv, 1, nseq), KC::NT, KC::SMEM, st>>>(p);
    GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: fused dk/dv/dq kernel launch");
  });
}

// The warp-specialized fused backward (attention_bwd_ws.cuh): as launch_bwd_fused<3>, with the kernel fed by TMA
// from a producer warp. False when no tensor map can be made (driver without cuTensorMapEncodeTiled, or an
// unaligned tensor): the caller runs launch_bwd_fused<3> instead; this says so once on stderr.
bool launch_bwd_ws(attn::Params& p, int nseq, int max_seqlen, float* partial, int npre, float* dsinks,
                   const Tensor& dq, cudaStream_t st) {
  attn::BwdTmaMaps maps;
  if (!attn::encode_bwd_ws_maps(&maps, p)) {
    static bool warned = false;
    if (!warned)
      std::fprintf(stderr, "gptoss: attentionBackward: no TMA tensor map for q/k/v/dout/lse (driver without "
                           "cuTensorMapEncodeTiled, or an unaligned tensor); using the red-pipe backward kernel\n");
    warned = true;
    return false;
  }
  run_fused_bwd(p, partial, npre, dsinks, dq, st, [&] {
    constexpr int STAGES = attn::kBwdWsStages;
    using KC = attn::BwdWsCfg<STAGES>;
    static bool kd = false;
    set_smem(attn::bwd_ws_kernel<STAGES>, KC::SMEM, kd);
    attn::bwd_ws_kernel<STAGES><<<dim3(ceil_div(max_seqlen, KC::BN) * p.Hkv, 1, nseq), KC::NT, KC::SMEM, st>>>(maps, p);
    GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: warp-specialized dk/dv/dq kernel launch");
  });
  return true;
}

// GPTOSS_ATTN_BWD_NONDET selects the head_dim-64 backward for deterministic: false (read on every call, unknown values
// are an error), on sm_90: unset, "" or "ws" = the warp-specialized fused kernel (attention_bwd_ws.cuh: TMA producer
// warp, dQ partials by red.global.add.v4; falls back to red-pipe, saying so once, where no tensor map can be made);
// "red-pipe" = the fused wgmma kernel fed by cp.async, dQ partials by red.global.add.v4 with the dQ product pipelined
// into the next step (FDQ 3); "red" = the same without the pipelining (FDQ 2); "bulk" = partials by bulk async
// reductions (FDQ 1; slower on an H100); "mma" = the mma.sync kernel with per-element fp32 atomics
// (dkdv_kernel<64, 1, true>, what every other device and GPTOSS_ATTN_WGMMA=0 run). Returns 4 for ws, else the FDQ
// (0 for mma).
int nondet_mode() {
  const char* e = std::getenv("GPTOSS_ATTN_BWD_NONDET");
  const std::string mode = e ? e : "";
  if (mode.empty() || mode == "ws") return 4;
  if (mode == "red-pipe") return 3;
  if (mode == "red") return 2;
  if (mode == "bulk") return 1;
  if (mode == "mma") return 0;
  fail("GPTOSS_ATTN_BWD_NONDET: unknown value '", mode, "' (ws, red-pipe, red, bulk, mma; unset = ws)");
}

// GPTOSS_ATTN_BWD selects the deterministic head_dim-64 backward, read on every call (tests compare them in one
// process): unset, "" or "v3" = the wgmma kernels on sm_90 (launch_bwd_v3: dK/dV on a side stream concurrently
// with dQ, heaviest CTAs first; deterministic, ~19% faster than v2 at B1 S4096 causal on an H100); on other devices,
// or with GPTOSS_ATTN_WGMMA=0, v2 runs instead. "v2" = the same schedule with mma.sync 64-key dK/dV CTAs of 4 warps;
// "v2-bn128" = v2 with 128-key CTAs of 8 warps; "v1" = dkdv_kernel then dq_kernel on the compute stream. v1, v2
// and v2-bn128 give bitwise equal gradients; v3 adds in another order (equal within rounding, GPU-tested against
// the CPU op). Returns the v2 dK/dV warps per CTA, 0 for v1, -1 for v3.
int bwd_version_nw() {
  const char* e = std::getenv("GPTOSS_ATTN_BWD");
  const std::string mode = e ? e : "";
  if (mode == "v1") return 0;
  if (mode == "v2") return 4;
  if (mode == "v2-bn128") return 8;
  if (mode.empty() || mode == "v3") return -1;
  fail("GPTOSS_ATTN_BWD: unknown value '", mode, "' (v1, v2, v2-bn128, v3; unset = v3)");
}

// GPTOSS_ATTN_BWD_MT=1|2 picks the 16-row tiles per warp for head_dim 64 (A/B measurements). Default 1: on an
// H100, MT = 2 (fewer ldmatrix per MMA but half the warps per SM) measured ~12% slower.
int bwd_mt() {
  static int mt = [] {
    const char* e = std::getenv("GPTOSS_ATTN_BWD_MT");
    return e && e[0] == '2' ? 2 : 1;
  }();
  return mt;
}
}  // namespace

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor* sinks, const Tensor& cu, const Tensor* used, int max_seqlen,
                        int window, float scale, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const Tensor* dsinks, bool deterministic) {
  DeviceGuard guard(q.device);
  const int64_t T = q.dim(0), Hq = q.dim(1);
  if (T == 0) {
    if (dsinks) zero(q.device, dsinks->raw(), dsinks->nbytes());
    return;
  }
  attn::Params p = make_attn_params(q, k, v, sinks, cu, used, window, scale);
  p.o = const_cast<__nv_bfloat16*>(out.data<__nv_bfloat16>());
  p.lse = lse.data<float>();
  p.dout = dout.data<__nv_bfloat16>();
  p.dq = dq.raw();
  p.dk = dk.raw();
  p.dv = dv.raw();
  p.grad_f32 = dq.dtype == DType::F32;
  const int npre = static_cast<int>((T + attn::kPreTokens - 1) / attn::kPreTokens);
  Tensor dlt = make_tensor({Hq, T}, DType::F32, q.device);
  Tensor partial = make_tensor({Hq, npre}, DType::F32, q.device);
  p.dlt = dlt.data<float>();
  const int nseq = static_cast<int>(cu.dim(0) - 1);
  cudaStream_t st = stream_of(q.device);
  float* ds = dsinks ? dsinks->data<float>() : nullptr;
  const int v2nw = bwd_version_nw();  // validated on every call, used for deterministic head_dim 64 only
  const int nd = nondet_mode();       // validated on every call, used for deterministic: false head_dim 64 only
  if (q.dim(2) == 64 && !deterministic) {
    Tensor acc = make_tensor(q.shape, DType::F32, q.device);
    p.dq_acc = acc.data<float>();
    if (nd != 0 && attn::wgmma_mode_env() != 0 && attn::device_is_sm90(q.device)) {
      // ws, or the red-pipe kernel where ws cannot run (no tensor map); 0 = done.
      const int fdq = nd == 4 ? (launch_bwd_ws(p, nseq, max_seqlen, partial.data<float>(), npre, ds, dq, st) ? 0 : 3) : nd;
      if (fdq == 3)
        launch_bwd_fused<3>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, dq, st);
      else if (fdq == 2)
        launch_bwd_fused<2>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, dq, st);
      else if (fdq == 1)
        launch_bwd_fused<1>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, dq, st);
    } else {
      launch_bwd_atomic(p, nseq, max_seqlen, partial.data<float>(), npre, ds, dq, st);
    }
  } else if (q.dim(2) == 64 && v2nw < 0 && attn::wgmma_mode_env() != 0 && attn::device_is_sm90(q.device)) {
    launch_bwd_v3(p, q.device, nseq, max_seqlen, partial.data<float>(), npre, ds, st);
  } else if (q.dim(2) == 64 && v2nw) {
    if (v2nw == 8)
      launch_bwd_v2<8>(p, q.device, nseq, max_seqlen, partial.data<float>(), npre, ds, st);
    else
      launch_bwd_v2<4>(p, q.device, nseq, max_seqlen, partial.data<float>(), npre, ds, st);
  } else if (q.dim(2) == 64 && (attn::wgmma_mode_env() & 2) && attn::device_is_sm90(q.device)) {
    launch_bwd_wgmma(p, nseq, max_seqlen, partial.data<float>(), npre, ds, st);
  } else if (q.dim(2) == 64) {
    if (bwd_mt() == 2)
      launch_bwd<64, 2>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, st);
    else
      launch_bwd<64, 1>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, st);
  } else if (q.dim(2) == 16) {
    launch_bwd<16, 1>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, st);
  } else if (q.dim(2) == 32) {
    launch_bwd<32, 1>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, st);
  } else {
    launch_bwd<128, 1>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, st);
  }
}

}  // namespace gptoss::cuda
