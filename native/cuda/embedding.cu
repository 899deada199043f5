// embedding.cu: embedding gather (one block per token, 16-byte copies when aligned) and a deterministic
// scatter-add backward: tokens are grouped by id on the host (stable counting sort over the ids the binding
// already copied to the host for the range check), then one block per distinct id sums its tokens' rows in
// token order into fp32. No atomics: bitwise reproducible run to run.
#include <vector>

#include "common.cuh"
#include "embedding.h"
#include "vec_io.cuh"

namespace gptoss::cuda {

namespace {

int row_threads(int64_t work) {
  int64_t t = (work + 31) / 32 * 32;
  return static_cast<int>(t < 32 ? 32 : (t > 256 ? 256 : t));
}

template <typename T>
__global__ void gather_kernel(const T* __restrict__ w, const int32_t* __restrict__ ids, T* __restrict__ out,
                              int64_t h, int64_t start, int64_t vocab, bool vec) {
  const int64_t id = int64_t(ids[blockIdx.x]) - start;
  T* dst = out + blockIdx.x * h;
  // Unchecked ids (no host check): an id out of range gives a zero row, never a bad read; a vocabulary-parallel
  // slice (start > 0 or fewer rows than the vocabulary): the ids of other ranks' rows give zero rows by design.
  if (id < 0 || id >= vocab) {
    for (int64_t i = threadIdx.x; i < h; i += blockDim.x) dst[i] = T(0.f);
    return;
  }
  const T* src = w + id * h;
  if (vec) {
    // 16-byte copies (8 bf16 or 4 f32 per uint4).
    const int64_t per = 16 / sizeof(T), nv = h / per;
    const uint4* s4 = reinterpret_cast<const uint4*>(src);
    uint4* d4 = reinterpret_cast<uint4*>(dst);
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) d4[i] = __ldg(s4 + i);
  } else {
    for (int64_t i = threadIdx.x; i < h; i += blockDim.x) dst[i] = src[i];
  }
}

// meta = [uniq (nu) | start (nu + 1) | order (n)]; block b owns vocabulary row uniq[b].
template <typename D>
__global__ void scatter_kernel(const D* __restrict__ dout, const int32_t* __restrict__ meta, int64_t nu,
                               float* __restrict__ dw, int64_t h, bool vec, bool accumulate) {
  const int32_t* uniq = meta;
  const int32_t* start = meta + nu;
  const int32_t* order = meta + 2 * nu + 1;
  int64_t b = blockIdx.x;
  float* row = dw + int64_t(uniq[b]) * h;
  int32_t s0 = start[b], s1 = start[b + 1];
  if (vec) {
    for (int64_t c = threadIdx.x * 8; c < h; c += blockDim.x * 8) {
      float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int32_t k = s0; k < s1; k++) {
        float v[8];
        load8(dout + int64_t(order[k]) * h + c, v);
#pragma unroll
        for (int q = 0; q < 8; q++) acc[q] += v[q];
      }
      if (accumulate) {
        float old[8];
        load8(row + c, old);
#pragma unroll
        for (int q = 0; q < 8; q++) acc[q] = old[q] + acc[q];
      }
      store8(row + c, acc);
    }
  } else {
    for (int64_t c = threadIdx.x; c < h; c += blockDim.x) {
      float acc = 0.f;
      for (int32_t k = s0; k < s1; k++) acc += ldf(dout + int64_t(order[k]) * h + c);
      row[c] = accumulate ? row[c] + acc : acc;
    }
  }
}

}  // namespace

void embedding_forward(const Tensor& weight, const Tensor& ids, const Tensor& out, int64_t vocab_start) {
  int64_t n = ids.numel(), h = weight.dim(1);
  if (n == 0 || h == 0) return;
  DeviceGuard g(out.device);
  size_t esz = dtype_size(weight.dtype);
  bool vec = (h * esz) % 16 == 0 && aligned16(weight.raw()) && aligned16(out.raw());
  int threads = row_threads(vec ? h * esz / 16 : h);
  with_float(weight, [&](auto* pw) {
    gather_kernel<<<static_cast<unsigned>(n), threads, 0, stream_of(out.device)>>>(
        pw, ids.data<int32_t>(), reinterpret_cast<decltype(pw)>(out.raw()), h, vocab_start, weight.dim(0), vec);
  });
  GPTOSS_CUDA_LAUNCH_CHECK("embeddingForward");
}

void embedding_backward(const Tensor& dout, const int32_t* host_ids, int64_t n, const Tensor& dweight,
                        bool accumulate) {
  int64_t vocab = dweight.dim(0), h = dweight.dim(1);
  DeviceGuard g(dweight.device);
  cudaStream_t st = stream_of(dweight.device);
  // Fresh: zero the [V, H] f32 buffer (2.3 GB at gpt-oss size); accumulating into the caller's needs no pass at all.
  if (!accumulate) GPTOSS_CUDA_CHECK(cudaMemsetAsync(dweight.raw(), 0, dweight.nbytes(), st), "embeddingBackward");
  if (n == 0 || h == 0) return;
  GPTOSS_CHECK(n < (int64_t(1) << 31), "embeddingBackward: too many tokens (", n, ")");
  // Stable counting sort of token indices by id, on the host.
  std::vector<int32_t> count(static_cast<size_t>(vocab), 0);
  for (int64_t t = 0; t < n; t++) count[host_ids[t]]++;
  std::vector<int32_t> uniq, start;
  std::vector<int32_t> pos(static_cast<size_t>(vocab), 0);
  int32_t acc = 0;
  for (int64_t v = 0; v < vocab; v++) {
    if (!count[v]) continue;
    uniq.push_back(static_cast<int32_t>(v));
    start.push_back(acc);
    pos[v] = acc;
    acc += count[v];
  }
  start.push_back(acc);
  int64_t nu = static_cast<int64_t>(uniq.size());
  std::vector<int32_t> meta(static_cast<size_t>(2 * nu + 1 + n));
  std::copy(uniq.begin(), uniq.end(), meta.begin());
  std::copy(start.begin(), start.end(), meta.begin() + nu);
  for (int64_t t = 0; t < n; t++) meta[2 * nu + 1 + pos[host_ids[t]]++] = static_cast<int32_t>(t);
  Tensor dmeta = make_tensor({static_cast<int64_t>(meta.size())}, DType::I32, dweight.device);
  copy(dmeta.raw(), dweight.device, meta.data(), kCpu, meta.size() * sizeof(int32_t));
  bool vec = h % 8 == 0 && aligned16(dout.raw()) && aligned16(dweight.raw());
  int threads = row_threads(vec ? h / 8 : h);
  with_float(dout, [&](auto* pd) {
    scatter_kernel<<<static_cast<unsigned>(nu), threads, 0, st>>>(pd, dmeta.data<int32_t>(), nu,
                                                                  dweight.data<float>(), h, vec, accumulate);
  });
  GPTOSS_CUDA_LAUNCH_CHECK("embeddingBackward");
}

}  // namespace gptoss::cuda
