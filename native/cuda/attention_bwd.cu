// attention_bwd.cu: attention_backward, the launchers of the backward kernels (attention_bwd_kernels.cuh,
// attention_bwd_ws.cuh). Which kernels run is plan_backward's choice (attention_heuristics.h). Every path:
//   1. pre:  D_i = dO_i . O_i (fp32, [Hq, T]) and per-block partial sums of e^{sink_h - lse_i} D_i;
//   2. dK, dV and dQ by the planned kernels;
//   3. dsinks_h = -sum of the partials (fixed order).
// The mma.sync and wgmma paths use no atomics (dQ recomputes S and dP instead), so their results are bitwise
// reproducible; the warp-specialized fused kernel adds dQ partials with fp32 reductions (deterministic: false).
#include <map>
#include <mutex>

#include "attention.h"
#include "attention_common.cuh"
#include "attention_bwd_kernels.cuh"
#include "attention_bwd_ws.cuh"
#include "attention_heuristics.h"

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

// mma.sync: dkdv_kernel then dq_kernel on the compute stream.
template <int D>
void launch_bwd_mma(attn::Params& p, int nseq, int max_seqlen, float* partial, int npre, float* dsinks,
                    cudaStream_t st) {
  launch_pre<D>(p, partial, npre, st);
  launch_dsinks(p, partial, npre, dsinks, st);
  using KC = attn::DkdvCfg<D>;
  using QC = attn::DqCfg<D>;
  static bool kd = false, qd = false;
  set_smem(attn::dkdv_kernel<D>, KC::SMEM, kd);
  set_smem(attn::dq_kernel<D>, QC::SMEM, qd);
  attn::dkdv_kernel<D><<<dim3(ceil_div(max_seqlen, KC::BN), p.Hkv, nseq), KC::NT, KC::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dk/dv kernel launch");
  attn::dq_kernel<D><<<dim3(ceil_div(max_seqlen, QC::BM), p.Hq, nseq), QC::NT, QC::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dq kernel launch");
}

// A second stream per device (created once, never destroyed, at the highest priority) with fork/join events, so
// the dK/dV and dQ kernels of the wgmma backward run concurrently: both only read D_i and lse, and each has a long
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

// wgmma, head_dim 64 on sm_90, deterministic: pre on the compute stream, then dkdv_wgmma_kernel on the high-priority
// side stream and dq_wgmma_kernel on the compute stream at the same time, joined before returning. The priority makes
// every dK/dV CTA (~10x longer than a dQ CTA, heaviest first) take an SM before any pending dQ CTA does; the short dQ
// CTAs then fill the SMs that dK/dV's triangular tail leaves idle.
void launch_bwd_wgmma(attn::Params& p, int device, int nseq, int max_seqlen, float* partial, int npre, float* dsinks,
                      cudaStream_t st) {
  launch_pre<64>(p, partial, npre, st);
  using KC = attn::DkdvWgCfg;
  using QC = attn::DqWgCfg;
  static bool kd = false, qd = false;
  set_smem(attn::dkdv_wgmma_kernel, KC::SMEM, kd);
  set_smem(attn::dq_wgmma_kernel, QC::SMEM, qd);
  BwdSideLane& side = bwd_side_lane(device);
  GPTOSS_CUDA_CHECK(cudaEventRecord(side.fork, st), "attentionBackward: fork record");
  GPTOSS_CUDA_CHECK(cudaStreamWaitEvent(side.stream, side.fork, 0), "attentionBackward: fork wait");
  attn::dkdv_wgmma_kernel<<<dim3(ceil_div(max_seqlen, KC::BN) * p.Hkv, 1, nseq), KC::NT, KC::SMEM, side.stream>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dk/dv wgmma kernel launch");
  GPTOSS_CUDA_CHECK(cudaEventRecord(side.join, side.stream), "attentionBackward: join record");
  attn::dq_wgmma_kernel<<<dim3(ceil_div(max_seqlen, QC::BM) * p.Hq, 1, nseq), QC::NT, QC::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dq wgmma kernel launch");
  launch_dsinks(p, partial, npre, dsinks, st);
  // Later work on the compute stream (and the caching allocator's reuse of dlt/partial) waits for dK/dV too.
  GPTOSS_CUDA_CHECK(cudaStreamWaitEvent(st, side.join, 0), "attentionBackward: join wait");
}

// The warp-specialized fused backward (attention_bwd_ws.cuh), head_dim 64 on sm_90, deterministic: false: the zeroed
// fp32 dQ accumulator ([Hq, T, 64]) and pre, the kernel (dK, dV, dQ partials), then dq = scale * acc transposed to
// [T, Hq, 64] and dsinks, all on the compute stream. False when no tensor map can be made (nothing was launched).
bool launch_bwd_ws(attn::Params& p, int nseq, int max_seqlen, float* partial, int npre, float* dsinks,
                   const Tensor& dq, cudaStream_t st) {
  attn::BwdTmaMaps maps;
  if (!attn::encode_bwd_ws_maps(&maps, p)) return false;
  const int64_t n = dq.numel();
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(p.dq_acc, 0, n * sizeof(float), st), "attentionBackward: memset");
  launch_pre<64>(p, partial, npre, st);
  constexpr int STAGES = attn::kBwdWsStages;
  using KC = attn::BwdWsCfg<STAGES>;
  static bool kd = false;
  set_smem(attn::bwd_ws_kernel<STAGES>, KC::SMEM, kd);
  attn::bwd_ws_kernel<STAGES><<<dim3(ceil_div(max_seqlen, KC::BN) * p.Hkv, 1, nseq), KC::NT, KC::SMEM, st>>>(maps, p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: warp-specialized dk/dv/dq kernel launch");
  const unsigned blocks = ceil_div(n / 4, 256);
  if (p.grad_f32)
    attn::dq_convert_ht_kernel<float><<<blocks, 256, 0, st>>>(p.dq_acc, static_cast<float*>(p.dq), p.T, p.Hq, p.scale);
  else
    attn::dq_convert_ht_kernel<__nv_bfloat16>
        <<<blocks, 256, 0, st>>>(p.dq_acc, static_cast<__nv_bfloat16*>(p.dq), p.T, p.Hq, p.scale);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionBackward: dq convert kernel launch");
  launch_dsinks(p, partial, npre, dsinks, st);
  return true;
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
  const int head_dim = static_cast<int>(q.dim(2));
  attn::DeviceCaps dev{attn::device_is_sm90(q.device), true};  // tma: until an encoding fails
  attn::BwdKernel plan = attn::plan_backward(head_dim, deterministic, dev);
  if (plan == attn::BwdKernel::kWarpSpecializedFusedDq) {
    Tensor acc = make_tensor(q.shape, DType::F32, q.device);  // the fused kernel's fp32 dQ accumulator
    p.dq_acc = acc.data<float>();
    if (launch_bwd_ws(p, nseq, max_seqlen, partial.data<float>(), npre, ds, dq, st)) return;
    static bool warned = false;
    attn::warn_no_tma_once(warned, "attentionBackward", "q/k/v/dout/lse", "the deterministic wgmma kernels");
    dev.tma = false;
    plan = attn::plan_backward(head_dim, deterministic, dev);
  }
  if (plan == attn::BwdKernel::kWgmma) {
    launch_bwd_wgmma(p, q.device, nseq, max_seqlen, partial.data<float>(), npre, ds, st);
    return;
  }
  switch (head_dim) {  // mma.sync: 64 (gpt-oss), 128, and 16/32 for tiny models
    case 16: launch_bwd_mma<16>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, st); break;
    case 32: launch_bwd_mma<32>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, st); break;
    case 64: launch_bwd_mma<64>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, st); break;
    default: launch_bwd_mma<128>(p, nseq, max_seqlen, partial.data<float>(), npre, ds, st);
  }
}

}  // namespace gptoss::cuda
