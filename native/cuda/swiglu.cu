// swiglu.cu: the clamped GPT-OSS SwiGLU, flat over the N*I outputs: output k reads the interleaved pair
// gu[2k] (gate), gu[2k+1] (up). Groups of 4 outputs use one 16-byte load of 8 gate/up values; fp32 math;
// expf-based sigmoid (not the fast intrinsic) to stay close to the CPU reference.
#include "common.cuh"
#include "swiglu.h"
#include "swiglu_math.cuh"
#include "vec_io.cuh"

namespace gptoss::cuda {

namespace {

constexpr int kThreads = 256;

template <typename G, typename H>
__global__ void fwd_kernel(const G* gu, H* h, int64_t n, float limit, float alpha, bool vec) {
  int64_t i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    int64_t n4 = n / 4;
    for (int64_t q = i0; q < n4; q += stride) {
      float in[8], out[4];
      load8(gu + 8 * q, in);
#pragma unroll
      for (int k = 0; k < 4; k++) out[k] = swiglu1(in[2 * k], in[2 * k + 1], limit, alpha);
      store4(h + 4 * q, out);
    }
    done = n4 * 4;
  }
  for (int64_t k = done + i0; k < n; k += stride) stf(h + k, swiglu1(ldf(gu + 2 * k), ldf(gu + 2 * k + 1), limit, alpha));
}

template <typename D, typename G, typename O>
__global__ void bwd_kernel(const D* dh, const G* gu, O* dgu, int64_t n, float limit, float alpha, bool vec) {
  int64_t i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    int64_t n4 = n / 4;
    for (int64_t q = i0; q < n4; q += stride) {
      float d[4], in[8], out[8];
      load4(dh + 4 * q, d);
      load8(gu + 8 * q, in);
#pragma unroll
      for (int k = 0; k < 4; k++) swiglu1_bwd(d[k], in[2 * k], in[2 * k + 1], limit, alpha, out[2 * k], out[2 * k + 1]);
      store8(dgu + 8 * q, out);
    }
    done = n4 * 4;
  }
  for (int64_t k = done + i0; k < n; k += stride) {
    float a, b;
    swiglu1_bwd(ldf(dh + k), ldf(gu + 2 * k), ldf(gu + 2 * k + 1), limit, alpha, a, b);
    stf(dgu + 2 * k, a);
    stf(dgu + 2 * k + 1, b);
  }
}

}  // namespace

void swiglu_forward(const Tensor& gu, float limit, float alpha, const Tensor& h) {
  int64_t n = h.numel();
  if (n == 0) return;
  DeviceGuard g(h.device);
  bool vec = aligned16(gu.raw()) && aligned16(h.raw());
  unsigned grid = grid_for(vec ? n / 4 + 1 : n, kThreads);
  with_float(gu, [&](auto* pg) {
    with_float(h, [&](auto* ph) {
      fwd_kernel<<<grid, kThreads, 0, stream_of(h.device)>>>(pg, ph, n, limit, alpha, vec);
    });
  });
  GPTOSS_CUDA_LAUNCH_CHECK("swigluForward");
}

void swiglu_backward(const Tensor& dh, const Tensor& gu, float limit, float alpha, const Tensor& dgu) {
  int64_t n = dh.numel();
  if (n == 0) return;
  DeviceGuard g(dgu.device);
  bool vec = aligned16(dh.raw()) && aligned16(gu.raw()) && aligned16(dgu.raw());
  unsigned grid = grid_for(vec ? n / 4 + 1 : n, kThreads);
  with_float(dh, [&](auto* pd) {
    with_float(gu, [&](auto* pg) {
      with_float(dgu, [&](auto* po) {
        bwd_kernel<<<grid, kThreads, 0, stream_of(dgu.device)>>>(pd, pg, po, n, limit, alpha, vec);
      });
    });
  });
  GPTOSS_CUDA_LAUNCH_CHECK("swigluBackward");
}

}  // namespace gptoss::cuda
