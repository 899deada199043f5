// kvcache.cu: row scatter for KV-cache writes: one block per source row, 16-byte copies when the row size and
// both bases allow it, else 2- or 4-byte element copies. Replaces one cudaMemcpy per (sequence, layer) with one
// launch per layer.
#include "common.cuh"
#include "kvcache.h"

namespace gptoss::cuda {

namespace {

template <typename T>
__global__ void scatter_rows_kernel(T* __restrict__ dst, const T* __restrict__ src, const int32_t* __restrict__ index,
                                    int64_t rows, int64_t width) {
  const int64_t r = index[blockIdx.x];
  if (r < 0 || r >= rows) return;
  const T* s = src + int64_t(blockIdx.x) * width;
  T* d = dst + r * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) d[i] = s[i];
}

}  // namespace

void scatter_rows(const Tensor& dst, const Tensor& src, const Tensor& index) {
  const int64_t n = index.numel();
  if (n == 0) return;
  const int64_t rows = dst.dim(0);
  const size_t row_bytes = src.nbytes() / static_cast<size_t>(n);
  DeviceGuard guard(dst.device);
  cudaStream_t st = stream_of(dst.device);
  const uintptr_t align = reinterpret_cast<uintptr_t>(dst.raw()) | reinterpret_cast<uintptr_t>(src.raw());
  const int32_t* idx = index.data<int32_t>();
  if (row_bytes % 16 == 0 && align % 16 == 0) {
    const int64_t w = static_cast<int64_t>(row_bytes / 16);
    int threads = static_cast<int>(w < 256 ? ((w + 31) / 32) * 32 : 256);
    scatter_rows_kernel<uint4><<<static_cast<unsigned>(n), threads, 0, st>>>(static_cast<uint4*>(dst.raw()), static_cast<const uint4*>(src.raw()), idx, rows, w);
  } else if (row_bytes % 4 == 0 && align % 4 == 0) {
    const int64_t w = static_cast<int64_t>(row_bytes / 4);
    int threads = static_cast<int>(w < 256 ? ((w + 31) / 32) * 32 : 256);
    scatter_rows_kernel<uint32_t><<<static_cast<unsigned>(n), threads, 0, st>>>(static_cast<uint32_t*>(dst.raw()), static_cast<const uint32_t*>(src.raw()), idx, rows, w);
  } else {
    const int64_t w = static_cast<int64_t>(row_bytes / 2);
    int threads = static_cast<int>(w < 256 ? ((w + 31) / 32) * 32 : 256);
    scatter_rows_kernel<uint16_t><<<static_cast<unsigned>(n), threads, 0, st>>>(static_cast<uint16_t*>(dst.raw()), static_cast<const uint16_t*>(src.raw()), idx, rows, w);
  }
  GPTOSS_CUDA_LAUNCH_CHECK("scatterRows");
}

}  // namespace gptoss::cuda
