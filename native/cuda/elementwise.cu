// elementwise.cu: add / scale / cast / fill / dropout. Grid-stride loops over groups of 8 elements with 16-byte loads
// when every pointer is 16-byte aligned, scalar otherwise (and for the tail); fp32 math.
#include "common.cuh"
#include "elementwise.h"
#include "vec_io.cuh"
#include "../cpu/dropout_rng.h"

namespace gptoss::cuda {

namespace {

constexpr int kThreads = 256;

template <typename A, typename B, typename O>
__global__ void add_kernel(const A* a, const B* b, O* o, int64_t n, bool vec) {
  int64_t i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    int64_t n8 = n / 8;
    for (int64_t g = i0; g < n8; g += stride) {
      float va[8], vb[8];
      load8(a + 8 * g, va);
      load8(b + 8 * g, vb);
#pragma unroll
      for (int k = 0; k < 8; k++) va[k] += vb[k];
      store8(o + 8 * g, va);
    }
    done = n8 * 8;
  }
  for (int64_t i = done + i0; i < n; i += stride) stf(o + i, ldf(a + i) + ldf(b + i));
}

template <typename A, typename O>
__global__ void scale_kernel(const A* a, float s, O* o, int64_t n, bool vec) {
  int64_t i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    int64_t n8 = n / 8;
    for (int64_t g = i0; g < n8; g += stride) {
      float v[8];
      load8(a + 8 * g, v);
#pragma unroll
      for (int k = 0; k < 8; k++) v[k] *= s;
      store8(o + 8 * g, v);
    }
    done = n8 * 8;
  }
  for (int64_t i = done + i0; i < n; i += stride) stf(o + i, ldf(a + i) * s);
}

__global__ void i32_to_f32_kernel(const int32_t* a, float* o, int64_t n) {
  int64_t i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = i0; i < n; i += stride) o[i] = static_cast<float>(a[i]);
}

// Inverted dropout with the mask of dropout_rng.h (the CPU reference's bits): one element per thread iteration,
// the hash is the cost (a few integer multiplies), so no vector path.
template <typename A, typename O>
__global__ void dropout_kernel(const A* x, O* o, int64_t n, uint64_t key, uint32_t thr, float inv) {
  int64_t i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = i0; i < n; i += stride) stf(o + i, dropout::keep(key, uint64_t(i), thr) ? ldf(x + i) * inv : 0.f);
}

template <typename T>
__global__ void fill_kernel(T* o, T v, int64_t n) {
  int64_t i0 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = i0; i < n; i += stride) o[i] = v;
}

}  // namespace

void ew_add(const Tensor& a, const Tensor& b, const Tensor& out) {
  int64_t n = out.numel();
  if (n == 0) return;
  DeviceGuard g(out.device);
  bool vec = aligned16(a.raw()) && aligned16(b.raw()) && aligned16(out.raw());
  unsigned grid = grid_for(vec ? n / 8 + 1 : n, kThreads);
  with_float(a, [&](auto* pa) {
    with_float(b, [&](auto* pb) {
      with_float(out, [&](auto* po) { add_kernel<<<grid, kThreads, 0, stream_of(out.device)>>>(pa, pb, po, n, vec); });
    });
  });
  GPTOSS_CUDA_LAUNCH_CHECK("add");
}

void ew_scale(const Tensor& a, float s, const Tensor& out) {
  int64_t n = out.numel();
  if (n == 0) return;
  DeviceGuard g(out.device);
  bool vec = aligned16(a.raw()) && aligned16(out.raw());
  unsigned grid = grid_for(vec ? n / 8 + 1 : n, kThreads);
  with_float(a, [&](auto* pa) {
    with_float(out, [&](auto* po) { scale_kernel<<<grid, kThreads, 0, stream_of(out.device)>>>(pa, s, po, n, vec); });
  });
  GPTOSS_CUDA_LAUNCH_CHECK("scale");
}

void ew_cast(const Tensor& a, const Tensor& out) {
  int64_t n = out.numel();
  if (n == 0) return;
  DeviceGuard g(out.device);
  cudaStream_t st = stream_of(out.device);
  if (a.dtype == out.dtype) {
    GPTOSS_CUDA_CHECK(cudaMemcpyAsync(out.raw(), a.raw(), out.nbytes(), cudaMemcpyDeviceToDevice, st), "cast");
    return;
  }
  if (a.dtype == DType::I32) {
    i32_to_f32_kernel<<<grid_for(n, kThreads), kThreads, 0, st>>>(a.data<int32_t>(), out.data<float>(), n);
  } else {
    // A float -> float conversion is a scale by 1 (exact in fp32).
    bool vec = aligned16(a.raw()) && aligned16(out.raw());
    unsigned grid = grid_for(vec ? n / 8 + 1 : n, kThreads);
    with_float(a, [&](auto* pa) {
      with_float(out, [&](auto* po) { scale_kernel<<<grid, kThreads, 0, st>>>(pa, 1.f, po, n, vec); });
    });
  }
  GPTOSS_CUDA_LAUNCH_CHECK("cast");
}

void concat_columns(const Tensor& parts, const Tensor& out) {
  const int64_t R = parts.dim(0), S = parts.dim(1), W = parts.dim(2), N = out.dim(1);
  const size_t es = dtype_size(parts.dtype);
  if (R == 0 || S == 0 || W == 0) return;
  DeviceGuard g(out.device);
  cudaStream_t st = stream_of(out.device);
  const auto* src = static_cast<const uint8_t*>(parts.raw());
  auto* dst = static_cast<uint8_t*>(out.raw());
  for (int64_t r = 0; r < R; r++) {
    const int64_t w = std::max<int64_t>(0, std::min(W, N - r * W));  // slice r's columns that are kept
    if (w == 0) continue;
    GPTOSS_CUDA_CHECK(cudaMemcpy2DAsync(dst + r * W * es, N * es, src + r * S * W * es, W * es, w * es, S,
                                        cudaMemcpyDeviceToDevice, st),
                      "concatColumns");
  }
}

void ew_fill(const Tensor& a, double value) {
  int64_t n = a.numel();
  if (n == 0) return;
  DeviceGuard g(a.device);
  cudaStream_t st = stream_of(a.device);
  unsigned grid = grid_for(n, kThreads);
  switch (a.dtype) {
    case DType::BF16:
      fill_kernel<<<grid, kThreads, 0, st>>>(a.data<__nv_bfloat16>(), __float2bfloat16(static_cast<float>(value)), n);
      break;
    case DType::F32:
      fill_kernel<<<grid, kThreads, 0, st>>>(a.data<float>(), static_cast<float>(value), n);
      break;
    case DType::I32:
      fill_kernel<<<grid, kThreads, 0, st>>>(a.data<int32_t>(), static_cast<int32_t>(value), n);
      break;
    case DType::U8:
      GPTOSS_CUDA_CHECK(cudaMemsetAsync(a.raw(), static_cast<int>(static_cast<uint8_t>(value)), n, st), "fill");
      break;
  }
  GPTOSS_CUDA_LAUNCH_CHECK("fill");
}

void ew_dropout(const Tensor& x, double p, uint64_t seed, uint64_t salt, const Tensor& out) {
  int64_t n = out.numel();
  if (n == 0) return;
  DeviceGuard g(out.device);
  const uint64_t key = dropout::mask_key(seed, salt);
  const uint32_t thr = dropout::threshold(p);
  const float inv = static_cast<float>(1.0 / (1.0 - p));
  with_float(x, [&](auto* px) {
    with_float(out, [&](auto* po) {
      dropout_kernel<<<grid_for(n, kThreads), kThreads, 0, stream_of(out.device)>>>(px, po, n, key, thr, inv);
    });
  });
  GPTOSS_CUDA_LAUNCH_CHECK("dropout");
}

}  // namespace gptoss::cuda
