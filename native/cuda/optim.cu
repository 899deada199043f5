// optim.cu: CUDA AdamW (one elementwise pass that applies the grad-clip factor and refreshes the bf16 copy), sum of
// squares (per-block partial sums, then one block adds them in a fixed order: deterministic) and in-place scaling.
#include "common.cuh"
#include "optim.h"

namespace gptoss::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

unsigned blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 4 ? 65535 * 4 : b));
}

__global__ void adamw_kernel(int64_t n, float* __restrict p, const float* __restrict g, float* __restrict m,
                             float* __restrict v, __nv_bfloat16* __restrict out, AdamwConsts c) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float pi = p[i], mi = m[i], vi = v[i];
    adamw_element(pi, mi, vi, g[i], c);  // optim.h: the same roundings as the CPU loop (g * c.grad_scale included)
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
    if (out) out[i] = __float2bfloat16(pi);  // round-to-nearest-even, as the CPU's to_bf16
  }
}

template <typename T>
__global__ void sumsq_partial(int64_t n, const T* __restrict x, float* __restrict partial) {
  float s = 0.f;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float f = ldf(x + i);
    s += f * f;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sumsq_finish(int nparts, const float* __restrict partial, float* __restrict acc) {
  float s = 0.f;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += partial[i];
  s = block_sum(s);
  if (threadIdx.x == 0) acc[0] += s;
}

template <typename T>
__global__ void scale_kernel(int64_t n, T* __restrict x, float s) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    stf(x + i, ldf(x + i) * s);
}

}  // namespace

void adamw_step(const Tensor& master, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor* bf16_copy,
                const AdamwConsts& c) {
  const int64_t n = master.numel();
  if (n == 0) return;
  DeviceGuard g(master.device);
  adamw_kernel<<<blocks_for(n), kThreads, 0, stream_of(master.device)>>>(
      n, master.data<float>(), grad.data<float>(), m.data<float>(), v.data<float>(),
      bf16_copy ? static_cast<__nv_bfloat16*>(bf16_copy->raw()) : nullptr, c);
  GPTOSS_CUDA_LAUNCH_CHECK("adamwStep");
}

void sum_of_squares_into(const Tensor& t, const Tensor& acc) {
  const int64_t n = t.numel();
  if (n == 0) return;
  DeviceGuard g(t.device);
  cudaStream_t st = stream_of(t.device);
  int64_t nb = (n + kThreads * 4 - 1) / (kThreads * 4);
  const int parts = static_cast<int>(nb < 1 ? 1 : (nb > kMaxBlocks ? kMaxBlocks : nb));
  Tensor partial = make_tensor({parts}, DType::F32, t.device);
  if (t.dtype == DType::BF16)
    sumsq_partial<<<parts, kThreads, 0, st>>>(n, static_cast<const __nv_bfloat16*>(t.raw()), partial.data<float>());
  else
    sumsq_partial<<<parts, kThreads, 0, st>>>(n, t.data<float>(), partial.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("sumOfSquares partial");
  sumsq_finish<<<1, 1024, 0, st>>>(parts, partial.data<float>(), acc.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("sumOfSquares finish");
}

void scale_in_place(const Tensor& t, float s) {
  const int64_t n = t.numel();
  if (n == 0) return;
  DeviceGuard g(t.device);
  if (t.dtype == DType::BF16)
    scale_kernel<<<blocks_for(n), kThreads, 0, stream_of(t.device)>>>(n, static_cast<__nv_bfloat16*>(t.raw()), s);
  else
    scale_kernel<<<blocks_for(n), kThreads, 0, stream_of(t.device)>>>(n, t.data<float>(), s);
  GPTOSS_CUDA_LAUNCH_CHECK("scale");
}

}  // namespace gptoss::cuda
