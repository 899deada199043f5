// gemm.cu: small kernels around the cuBLAS GEMM (casts and a bias/accumulate epilogue for the cases the
// cuBLASLt epilogue does not cover). No cuBLAS headers here, so CI compiles this file.
#include "common.cuh"
#include "gemm.h"

namespace gptoss::cuda {

namespace {

__global__ void cast_kernel(const float* __restrict src, __nv_bfloat16* __restrict dst, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dst[i] = __float2bfloat16(src[i]);
}

template <typename TC, typename TB>
__global__ void epilogue_kernel(int64_t M, int64_t N, const float* __restrict tmp, const TB* __restrict bias,
                                float beta, TC* __restrict C, int64_t ldc) {
  const int64_t total = M * N;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t i = idx / N, j = idx - i * N;
    float v = tmp ? tmp[idx] : 0.f;
    if (bias) v += ldf(bias + j);
    TC* c = C + i * ldc + j;
    if (beta != 0.f) v += beta * ldf(c);
    stf(c, v);
  }
}

unsigned grid_for(int64_t n) {
  int64_t b = (n + 255) / 256;
  return static_cast<unsigned>(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

template <typename TC>
void launch_epilogue(int device, int64_t M, int64_t N, const float* tmp, const void* bias, DType bias_dtype,
                     float beta, TC* C, int64_t ldc) {
  cudaStream_t s = stream_of(device);
  if (bias && bias_dtype == DType::BF16)
    epilogue_kernel<TC, __nv_bfloat16><<<grid_for(M * N), 256, 0, s>>>(
        M, N, tmp, static_cast<const __nv_bfloat16*>(bias), beta, C, ldc);
  else
    epilogue_kernel<TC, float><<<grid_for(M * N), 256, 0, s>>>(M, N, tmp, static_cast<const float*>(bias), beta,
                                                               C, ldc);
  GPTOSS_CUDA_LAUNCH_CHECK("gemm epilogue");
}

}  // namespace

void cast_f32_to_bf16(int device, const float* src, void* dst, int64_t n) {
  if (n == 0) return;
  DeviceGuard g(device);
  cast_kernel<<<grid_for(n), 256, 0, stream_of(device)>>>(src, static_cast<__nv_bfloat16*>(dst), n);
  GPTOSS_CUDA_LAUNCH_CHECK("cast f32->bf16");
}

void gemm_epilogue(int device, int64_t M, int64_t N, const float* tmp, const void* bias, DType bias_dtype,
                   float beta, void* C, DType c_dtype, int64_t ldc) {
  if (M == 0 || N == 0) return;
  DeviceGuard g(device);
  if (c_dtype == DType::BF16)
    launch_epilogue(device, M, N, tmp, bias, bias_dtype, beta, static_cast<__nv_bfloat16*>(C), ldc);
  else
    launch_epilogue(device, M, N, tmp, bias, bias_dtype, beta, static_cast<float*>(C), ldc);
}

}  // namespace gptoss::cuda
