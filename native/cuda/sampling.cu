// sampling.cu: CUDA samplers (sample: one set of parameters for the batch; sampleRows: per-row parameters and keys),
// one block per row (see native/cpu/sampling.h for the method). Every pass re-reads the row; the thresholds come
// from 32-step bitwise searches over order-preserving keys (counts for top-k, double sums for top-p), the draw from
// Gumbel-max with the counter-based noise of sampling_rng.h, as on the CPU.
#include "../cpu/sampling_rng.h"
#include "common.cuh"
#include "sampling.h"

namespace gptoss::cuda {

namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ uint32_t zkey(float z) { return sampling::order_key(__float_as_uint(z)); }

template <typename T>
__device__ T block_sum_t(T v, T* sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < (blockDim.x >> 5) ? sh[threadIdx.x] : T(0);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) sh[0] = v;
  }
  __syncthreads();
  return sh[0];
}

// (value, index) argmax, ties to the lowest index; every thread gets the winner.
template <typename T>
__device__ void block_argmax(T& v, int64_t& i, T* shv, int64_t* shi) {
  auto better = [](T av, int64_t ai, T bv, int64_t bi) { return av > bv || (av == bv && ai < bi); };
  for (int o = 16; o > 0; o >>= 1) {
    T ov = __shfl_xor_sync(0xffffffffu, v, o);
    int64_t oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(ov, oi, v, i)) v = ov, i = oi;
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) shv[threadIdx.x >> 5] = v, shi[threadIdx.x >> 5] = i;
  __syncthreads();
  if (threadIdx.x < 32) {
    if (threadIdx.x < (blockDim.x >> 5)) {
      v = shv[threadIdx.x];
      i = shi[threadIdx.x];
    } else {
      i = INT64_MAX;
    }
    for (int o = 16; o > 0; o >>= 1) {
      T ov = __shfl_xor_sync(0xffffffffu, v, o);
      int64_t oi = __shfl_xor_sync(0xffffffffu, i, o);
      if (oi != INT64_MAX && (i == INT64_MAX || better(ov, oi, v, i))) v = ov, i = oi;
    }
    if (threadIdx.x == 0) shv[0] = v, shi[0] = i;
  }
  __syncthreads();
  v = shv[0];
  i = shi[0];
}

// One row's draw by the whole block (see native/cpu/sampling.h for the method); T = float or __nv_bfloat16
// logits, widened to fp32 exactly as the CPU does. temperature/top_p/top_k/key are the same for every thread.
template <typename T>
__device__ void sample_row(const T* __restrict l, int64_t V, float temperature, float top_p, int64_t top_k,
                           uint64_t key, int32_t* __restrict token, float* __restrict logprob) {
  __shared__ double shd[32];
  __shared__ long long shl[32];
  __shared__ float shf[32];
  __shared__ int64_t shi[32];
  if (temperature == 0.f) {
    float bv = -INFINITY;
    int64_t bi = INT64_MAX;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float x = ldf(l + j);
      if (bi == INT64_MAX || x > bv) bv = x, bi = j;
    }
    block_argmax(bv, bi, shf, shi);
    double s = 0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += exp(static_cast<double>(ldf(l + j)) - bv);
    s = block_sum_t(s, shd);
    if (threadIdx.x == 0) {
      *token = static_cast<int32_t>(bi);
      *logprob = static_cast<float>(-log(s));
    }
    return;
  }
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, ldf(l + j) / temperature);
  mx = block_max(mx);
  uint32_t tau = 0;
  if (top_k > 0 && top_k < V) {
    for (int bit = 31; bit >= 0; bit--) {
      const uint32_t cand = tau | (1u << bit);
      long long cnt = 0;
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) cnt += zkey(ldf(l + j) / temperature) >= cand;
      cnt = block_sum_t(cnt, shl);
      if (cnt >= top_k) tau = cand;
    }
  }
  if (top_p > 0.f && top_p < 1.f) {
    double total = 0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float z = ldf(l + j) / temperature;
      if (zkey(z) >= tau) total += exp(static_cast<double>(z) - mx);
    }
    total = block_sum_t(total, shd);
    const double want = static_cast<double>(top_p) * total;
    uint32_t tp = 0;
    for (int bit = 31; bit >= 0; bit--) {
      const uint32_t cand = tp | (1u << bit);
      double mass = 0;
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        const float z = ldf(l + j) / temperature;
        const uint32_t k = zkey(z);
        if (k >= tau && k >= cand) mass += exp(static_cast<double>(z) - mx);
      }
      mass = block_sum_t(mass, shd);
      if (mass >= want) tp = cand;
    }
    tau = tp;
  }
  double best = -INFINITY, s = 0;
  int64_t bi = INT64_MAX;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float z = ldf(l + j) / temperature;
    if (zkey(z) < tau) continue;
    s += exp(static_cast<double>(z) - mx);
    const double sc = static_cast<double>(z) + sampling::gumbel(key, static_cast<uint64_t>(j));
    if (bi == INT64_MAX || sc > best) best = sc, bi = j;
  }
  s = block_sum_t(s, shd);
  block_argmax(best, bi, shd, shi);
  if (threadIdx.x == 0) {
    *token = static_cast<int32_t>(bi);
    *logprob = static_cast<float>(static_cast<double>(ldf(l + bi) / temperature) - mx - log(s));
  }
}

// One block per row; the batch shares the parameters and row b's key is row_key(seed, step, b).
__global__ void __launch_bounds__(kThreads) sample_kernel(const float* __restrict logits, int64_t V, float temperature,
                                                           float top_p, int64_t top_k, uint64_t seed, uint64_t step,
                                                           int32_t* __restrict tokens, float* __restrict logprobs) {
  const int64_t b = blockIdx.x;
  sample_row(logits + b * V, V, temperature, top_p, top_k,
             sampling::row_key(seed, step, static_cast<uint64_t>(b)), tokens + b, logprobs + b);
}

// One block per row, each with its own parameters and key row_key(seed_b as u32, counter_b, 0) (as the CPU).
template <typename T>
__global__ void __launch_bounds__(kThreads) sample_rows_kernel(const T* __restrict logits, int64_t V,
                                                                const float* __restrict temperature,
                                                                const float* __restrict top_p,
                                                                const int32_t* __restrict top_k,
                                                                const int32_t* __restrict seeds,
                                                                const int32_t* __restrict counters,
                                                                int32_t* __restrict tokens, float* __restrict logprobs) {
  const int64_t b = blockIdx.x;
  const uint64_t key =
      sampling::row_key(static_cast<uint32_t>(seeds[b]), static_cast<uint64_t>(static_cast<uint32_t>(counters[b])), 0);
  sample_row(logits + b * V, V, temperature[b], top_p[b], static_cast<int64_t>(top_k[b]), key, tokens + b,
             logprobs + b);
}

}  // namespace

void sample(const Tensor& logits, float temperature, float top_p, int64_t top_k, uint64_t seed, uint64_t step,
            const Tensor& tokens, const Tensor& logprobs) {
  const int64_t B = logits.dim(0), V = logits.dim(1);
  if (B == 0) return;
  DeviceGuard g(logits.device);
  sample_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream_of(logits.device)>>>(
      logits.data<float>(), V, temperature, top_p, top_k, seed, step, tokens.data<int32_t>(),
      logprobs.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("sample");
}

void sample_rows(const Tensor& logits, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                 const Tensor& seeds, const Tensor& counters, const Tensor& tokens, const Tensor& logprobs) {
  const int64_t B = logits.dim(0), V = logits.dim(1);
  if (B == 0) return;
  DeviceGuard g(logits.device);
  const auto launch = [&](auto* l) {
    sample_rows_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream_of(logits.device)>>>(
        l, V, temperature.data<float>(), top_p.data<float>(), top_k.data<int32_t>(), seeds.data<int32_t>(),
        counters.data<int32_t>(), tokens.data<int32_t>(), logprobs.data<float>());
  };
  if (logits.dtype == DType::BF16)
    launch(logits.data<__nv_bfloat16>());
  else
    launch(logits.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("sampleRows");
}

}  // namespace gptoss::cuda
