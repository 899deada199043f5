// common.cuh: helpers shared by the CUDA kernel files (no cuBLAS/NCCL here, so every kernel file that includes
// only this compiles in CI with plain nvcc).
#pragma once
#include <cuda_bf16.h>
#include <cstdlib>
#include <cuda_runtime.h>

#include "../common/device.h"
#include "../common/dtype.h"
#include "../common/error.h"

namespace gptoss::cuda {

#define GPTOSS_CUDA_CHECK(expr, what)                                                             \
  do {                                                                                            \
    cudaError_t err__ = (expr);                                                                   \
    if (err__ != cudaSuccess) ::gptoss::fail(what, ": CUDA error ", cudaGetErrorString(err__)); \
  } while (0)

// Check the launch of the kernel just enqueued (configuration errors surface here; faults surface at the next
// synchronisation, also as a gptoss::Error).
// Counts the launch for launch_count() (device.h).
#define GPTOSS_CUDA_LAUNCH_CHECK(what)         \
  do {                                         \
    ::gptoss::cuda::note_launch();             \
    GPTOSS_CUDA_CHECK(cudaGetLastError(), what); \
  } while (0)

inline cudaStream_t stream_of(int device) { return static_cast<cudaStream_t>(stream(device)); }

// Makes `device` current for the scope.
struct DeviceGuard {
  int prev = 0;
  explicit DeviceGuard(int device) {
    cudaGetDevice(&prev);
    if (prev != device) cudaSetDevice(device);
  }
  ~DeviceGuard() {
    int cur = 0;
    cudaGetDevice(&cur);
    if (cur != prev) cudaSetDevice(prev);
  }
};

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// The number of SMs of a device, asked once per device (launch sizes that fill the GPU; they stay fixed for a
// device, so a launch captured in a CUDA graph keeps its configuration). `what` names the caller in errors.
inline int sm_count(int dev, const char* what) {
  static int cached[64] = {};
  if (dev >= 0 && dev < 64 && cached[dev]) return cached[dev];
  int n = 0;
  GPTOSS_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), what);
  if (dev >= 0 && dev < 64) cached[dev] = n;
  return n;
}

__device__ __forceinline__ float ldf(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float ldf(const float* p) { return *p; }
__device__ __forceinline__ void stf(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void stf(float* p, float v) { *p = v; }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of up to 1024 threads (blockDim.x a multiple of 32); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float shared[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  int nwarps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < nwarps) ? shared[threadIdx.x] : 0.f;
  if (warp == 0) v = warp_sum(v);
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  return shared[0];
}

__device__ __forceinline__ float block_max(float v) {
  __shared__ float shared[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  int nwarps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < nwarps) ? shared[threadIdx.x] : -INFINITY;
  if (warp == 0) v = warp_max(v);
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  return shared[0];
}

}  // namespace gptoss::cuda
