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

// Programmatic dependent launch (PDL, sm_90+): the decode step's kernels (docs/inference.md, "Overlapped
// launches"). A kernel launched with launch_pdl may start while the kernel before it on the stream still runs, as
// soon as every block of that kernel has called pdl_trigger() (or exited): its launch, block scheduling and any
// loads of data no earlier kernel of the step writes (weights) overlap the previous kernel's tail instead of
// following it, which at batch 1 (~10 kernels a layer, each a few µs) is a large share of a step.
// The contract, for every kernel launched with launch_pdl:
//   - every block calls pdl_wait() before it reads anything the previous kernel wrote and before it writes
//     anything (the previous kernel may still read buffers this one overwrites, or the caching allocator may have
//     handed this kernel memory that kernel still uses); pdl_wait() returns once the previous grid has completed
//     and its memory is visible. Since each such kernel waits, the chain is transitive: past pdl_wait() every
//     earlier kernel of the stream has completed.
//   - before pdl_wait() it only reads memory that no kernel still in flight may write: weights, or (__ldcg, past
//     L1) outputs of a kernel at least two launches back, when every kernel in between triggers only after its own
//     pdl_wait() or is launched plainly. The output of the launch just before is never safe before the wait, even
//     from a plain launch (its blocks may have exited before their writes are visible). A kernel that cannot know
//     where an operand comes from (a generic GEMM's B) may still prefetch it into L2 (prefetch_l2): L2 is where
//     global memory is coherent, so that is safe for any address.
// pdl_trigger() placement: after the kernel's own pdl_wait() (so at most two kernels overlap); a no-op when the
// next kernel is launched plainly, and plain launches still serialise fully.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// A hint to bring the 128-byte line holding p into L2 (no register written, no fault on a valid address).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
// Both at once: the kernels with nothing to load early start with this.
__device__ __forceinline__ void pdl_wait_trigger() {
  pdl_wait();
  pdl_trigger();
}

// kernel<<<grid, block, smem, st>>>(args...) with programmatic stream serialisation (the kernel keeps the
// contract above). Returns the launch's error (also left for cudaGetLastError, as a <<<>>> launch does).
template <typename... KArgs, typename... Args>
cudaError_t launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                       Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
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
