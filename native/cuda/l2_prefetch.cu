// l2_prefetch.cu: asks L2 to fetch a tensor's bytes ahead of the kernel that will stream them. A hint only: no value
// anywhere changes, so there is nothing for a CPU reference to compute (the CPU op checks its argument and returns).
//
// Why: at decode sizes some of a layer's kernels are latency-bound and leave HBM idle while they run (paged
// attention at batch 1: tens of CTAs for several µs), and the kernel after them streams weights it alone reads
// (o_proj: 23.6 MB of bf16 at gpt-oss-20b, less than an H100's 50 MB L2). Enqueued before the latency-bound kernel,
// this one only issues the requests (a few prefetch instructions per thread, then it exits); the lines arrive while
// the next kernel computes, and the streaming kernel then finds them in L2.
//
// prefetch.global.L2::evict_last: the routed experts' weights that follow in the layer are read with evict-first
// loads (ld.global.cs), so they are the first to go when L2 needs room, not these lines.
//
// Layout: 2 blocks per SM of 256 threads; thread i takes lines i, i + threads, ... (128-byte lines from the tensor's
// start; the last address is kept inside the tensor).
#include <algorithm>

#include "common.cuh"
#include "l2_prefetch.h"

namespace gptoss::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kLine = 128;

__global__ void __launch_bounds__(kThreads) l2_prefetch_kernel(const char* __restrict p, int64_t bytes) {
  const int64_t lines = (bytes + kLine - 1) / kLine;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < lines; i += stride) {
    const int64_t off = i * kLine < bytes ? i * kLine : bytes - 1;
    asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(p + off));
  }
}

}  // namespace

void l2_prefetch(const Tensor& t) {
  const auto bytes = static_cast<int64_t>(t.nbytes());
  if (bytes == 0) return;
  DeviceGuard g(t.device);
  const int64_t lines = (bytes + kLine - 1) / kLine;
  const int64_t want = 2 * static_cast<int64_t>(sm_count(t.device, "prefetchL2"));
  const auto blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(want, (lines + kThreads - 1) / kThreads)));
  l2_prefetch_kernel<<<blocks, kThreads, 0, stream_of(t.device)>>>(static_cast<const char*>(t.raw()), bytes);
  GPTOSS_CUDA_LAUNCH_CHECK("prefetchL2");
}

}  // namespace gptoss::cuda
