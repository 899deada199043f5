// sampling.cu: CUDA samplers (sample: one set of parameters for the batch; sampleRows: per-row parameters and keys),
// one block per row (see native/cpu/sampling.h for the method). Every pass re-reads the row; the thresholds come
// from 32-step bitwise searches over order-preserving keys (counts for top-k, double sums for top-p), the draw from
// Gumbel-max with the counter-based noise of sampling_rng.h, as on the CPU.
#include <algorithm>

#include "../cpu/sampling_parts.h"
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

// ---- split rows (few rows, no thresholds) ----------------------------------------------------------------------
// With few rows, one block per row leaves almost every SM idle (batch 1 decode: one SM reads all 201,088 logits).
// A row that needs no threshold search is decided by per-chunk summaries that combine exactly
// (native/cpu/sampling_parts.h): pass 1 splits each such row over C chunks (one block each), pass 2 (one block per
// row) combines the chunks in a fixed layout (deterministic). The token is the single-block one (max and argmax are
// exact; ties go to the lowest index, the chunks being in index order); the log-prob differs only by the
// normaliser's summation order (each chunk's sum is rescaled by e^(max_c - max) in double).
// The same two passes serve a vocabulary-parallel LM head: each rank runs pass 1 over its slice of the vocabulary
// (ids vocab_start ..), the ranks all-gather the parts, and pass 2 combines R ranks x C chunks per row.

constexpr int kSplitThreads = 256;
using sampling::SamplePart;

// Chunks per row for S rows of W logits: about two blocks per SM over the rows, each chunk at least 4 entries per
// thread, none empty.
struct SplitLayout {
  int64_t chunks, chunk;
};
SplitLayout split_layout(int64_t S, int64_t W, int sms) {
  const int64_t max_chunks = std::max<int64_t>(1, W / (kSplitThreads * 4));
  int64_t C = std::min<int64_t>(max_chunks, std::max<int64_t>(1, (2 * sms + S - 1) / S));
  const int64_t chunk = (W + C - 1) / C;
  C = (W + chunk - 1) / chunk;
  GPTOSS_CHECK(S * C < (int64_t(1) << 31), "sampleRows: split path over ", S, " rows x ", C, " chunks exceeds the grid");
  return {C, chunk};
}

// Pass 1: block x = b * C + c summarises chunk c ([c * chunk, min(W, (c + 1) * chunk)) of row b's W logits, the
// vocabulary ids vocab_start + j, those below V) into part[b * C + c] (a chunk with no id below V: an empty part,
// which loses every comparison). Rows that need a threshold search (over the whole
// vocabulary, V) are left to pass 2 (their blocks return at once).
template <typename T>
__global__ void __launch_bounds__(kSplitThreads) sample_split_kernel(const T* __restrict logits, int64_t W,
                                                                      int64_t chunk, int C, int64_t vocab_start,
                                                                      int64_t V, const float* __restrict temperature,
                                                                      const float* __restrict top_p,
                                                                      const int32_t* __restrict top_k,
                                                                      const int32_t* __restrict seeds,
                                                                      const int32_t* __restrict counters,
                                                                      SamplePart* __restrict part) {
  __shared__ double shd[32];
  __shared__ int64_t shi[32];
  const int64_t b = blockIdx.x / C;
  const int c = static_cast<int>(blockIdx.x % C);
  const float t = temperature[b];
  if (!sampling::row_splits(t, top_p[b], top_k[b], V)) return;  // the same for the whole block
  const T* l = logits + b * W;
  // Columns past the vocabulary (the padding of an uneven last slice) are not tokens: a chunk of them only is empty.
  const int64_t j0 = static_cast<int64_t>(c) * chunk, j1 = min(min(W, V - vocab_start), j0 + chunk);
  if (j0 >= j1) {
    if (threadIdx.x == 0) part[blockIdx.x] = SamplePart{0.0, -INFINITY, INT64_MAX, -INFINITY, 0.f};
    return;
  }
  float mx = -INFINITY;
  double best = -INFINITY, s = 0;
  int64_t bi = INT64_MAX;  // local index until the end
  if (t == 0.f) {
    // As sample_row's greedy branch: each thread's first entry, then strictly larger ones.
    float bv = -INFINITY;
    for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
      const float x = ldf(l + j);
      if (bi == INT64_MAX || x > bv) bv = x, bi = j;
    }
    best = bv;
    block_argmax(best, bi, shd, shi);
    mx = static_cast<float>(best);  // exact: best is a widened float
    if (mx != -INFINITY)
      for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) s += exp(static_cast<double>(ldf(l + j)) - mx);
  } else {
    const uint64_t key = sampling::row_key(static_cast<uint32_t>(seeds[b]),
                                           static_cast<uint64_t>(static_cast<uint32_t>(counters[b])), 0);
    for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) mx = fmaxf(mx, ldf(l + j) / t);
    mx = block_max(mx);
    for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
      const float z = ldf(l + j) / t;
      if (mx != -INFINITY) s += exp(static_cast<double>(z) - mx);
      const double sc = static_cast<double>(z) + sampling::gumbel(key, static_cast<uint64_t>(vocab_start + j));
      if (bi == INT64_MAX || sc > best) best = sc, bi = j;
    }
    block_argmax(best, bi, shd, shi);
  }
  s = block_sum_t(s, shd);
  if (threadIdx.x == 0) {
    const float z = t == 0.f ? mx : ldf(l + bi) / t;
    part[blockIdx.x] = SamplePart{s, best, vocab_start + bi, mx, z};
  }
}

// Pass 2: one block per row over R x C parts (part[(r * S + b) * C + c]: R vocabulary slices, C chunks each, in
// vocabulary order). Split rows combine them (thread i takes parts i, i + blockDim, ...; the block reductions run in
// a fixed layout); the other rows run the single-block sampler on the whole row when `logits` is given (one
// device), else get token -1 and a NaN log-prob (a vocabulary-parallel head gathers their logits instead).
template <typename T>
__global__ void __launch_bounds__(kThreads) sample_combine_kernel(const T* __restrict logits, int64_t V, int R,
                                                                   int64_t S, int C,
                                                                   const float* __restrict temperature,
                                                                   const float* __restrict top_p,
                                                                   const int32_t* __restrict top_k,
                                                                   const int32_t* __restrict seeds,
                                                                   const int32_t* __restrict counters,
                                                                   const SamplePart* __restrict part,
                                                                   int32_t* __restrict tokens,
                                                                   float* __restrict logprobs) {
  __shared__ double shd[32];
  __shared__ int64_t shi[32];
  __shared__ float zw;
  const int64_t b = blockIdx.x;
  const float t = temperature[b];
  if (!sampling::row_splits(t, top_p[b], top_k[b], V)) {
    if (logits == nullptr) {
      if (threadIdx.x == 0) tokens[b] = -1, logprobs[b] = NAN;
      return;
    }
    const uint64_t key = sampling::row_key(static_cast<uint32_t>(seeds[b]),
                                           static_cast<uint64_t>(static_cast<uint32_t>(counters[b])), 0);
    sample_row(logits + b * V, V, t, top_p[b], static_cast<int64_t>(top_k[b]), key, tokens + b, logprobs + b);
    return;
  }
  const int n = R * C;
  auto at = [&](int q) -> const SamplePart& { return part[((q / C) * S + b) * C + q % C]; };
  float mx = -INFINITY;
  for (int q = threadIdx.x; q < n; q += blockDim.x) mx = fmaxf(mx, at(q).mx);
  mx = block_max(mx);
  double s = 0, best = -INFINITY;
  int64_t bi = INT64_MAX;
  for (int q = threadIdx.x; q < n; q += blockDim.x) {
    const SamplePart x = at(q);
    if (x.mx != -INFINITY) s += x.s * exp(static_cast<double>(x.mx) - mx);
    if (bi == INT64_MAX || sampling::part_beats(x.score, x.idx, best, bi)) best = x.score, bi = x.idx;
  }
  s = block_sum_t(s, shd);
  // A row of -inf only: the single-block sum is e^(-inf - -inf) = NaN, and so is the log-prob; keep that.
  if (mx == -INFINITY) s = NAN;
  block_argmax(best, bi, shd, shi);
  // The winner's z from its part (the slices are disjoint: exactly one part names the token).
  for (int q = threadIdx.x; q < n; q += blockDim.x)
    if (at(q).idx == bi) zw = at(q).z;
  __syncthreads();
  if (threadIdx.x == 0) {
    tokens[b] = static_cast<int32_t>(bi);
    logprobs[b] = t == 0.f ? static_cast<float>(-log(s)) : static_cast<float>(static_cast<double>(zw) - mx - log(s));
  }
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
                 const Tensor& seeds, const Tensor& counters, const Tensor& tokens, const Tensor& logprobs,
                 SampleStrategy strategy) {
  const int64_t B = logits.dim(0), V = logits.dim(1);
  if (B == 0) return;
  DeviceGuard g(logits.device);
  cudaStream_t st = stream_of(logits.device);
  // Split when the rows leave most SMs idle (the decision depends on B and the device only, so a CUDA graph of a
  // decode step keeps its launches; whether a row splits is read on the device).
  const int sms = sm_count(logits.device, "sampleRows");
  const bool split = strategy == SampleStrategy::Split || (strategy == SampleStrategy::Auto && B * 8 < sms);
  const auto launch = [&](auto* l) {
    if (!split) {
      sample_rows_kernel<<<static_cast<unsigned>(B), kThreads, 0, st>>>(
          l, V, temperature.data<float>(), top_p.data<float>(), top_k.data<int32_t>(), seeds.data<int32_t>(),
          counters.data<int32_t>(), tokens.data<int32_t>(), logprobs.data<float>());
      return;
    }
    const SplitLayout lay = split_layout(B, V, sms);
    const int C = static_cast<int>(lay.chunks);
    Tensor part = make_tensor({B * C * static_cast<int64_t>(sizeof(SamplePart))}, DType::U8, logits.device);
    SamplePart* pp = part.data<SamplePart>();
    sample_split_kernel<<<static_cast<unsigned>(B * C), kSplitThreads, 0, st>>>(
        l, V, lay.chunk, C, 0, V, temperature.data<float>(), top_p.data<float>(), top_k.data<int32_t>(),
        seeds.data<int32_t>(), counters.data<int32_t>(), pp);
    GPTOSS_CUDA_LAUNCH_CHECK("sampleRows split pass");
    sample_combine_kernel<<<static_cast<unsigned>(B), kThreads, 0, st>>>(
        l, V, 1, B, C, temperature.data<float>(), top_p.data<float>(), top_k.data<int32_t>(), seeds.data<int32_t>(),
        counters.data<int32_t>(), pp, tokens.data<int32_t>(), logprobs.data<float>());
  };
  if (logits.dtype == DType::BF16)
    launch(logits.data<__nv_bfloat16>());
  else
    launch(logits.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("sampleRows");
}

int64_t sample_parts_chunks(int64_t S, int64_t W, int device) {
  return split_layout(S, W, sm_count(device, "sampleParts")).chunks;
}

void sample_parts(const Tensor& logits, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                  const Tensor& seeds, const Tensor& counters, int64_t vocab_start, int64_t vocab_size,
                  const Tensor& parts) {
  const int64_t S = logits.dim(0), W = logits.dim(1);
  if (S == 0) return;
  DeviceGuard g(logits.device);
  const SplitLayout lay = split_layout(S, W, sm_count(logits.device, "sampleParts"));
  GPTOSS_CHECK(parts.nbytes() == S * lay.chunks * int64_t(sizeof(SamplePart)), "sampleParts: parts holds ",
               parts.nbytes(), " bytes, the layout needs ", S, " x ", lay.chunks, " x 32");
  const auto launch = [&](auto* l) {
    sample_split_kernel<<<static_cast<unsigned>(S * lay.chunks), kSplitThreads, 0, stream_of(logits.device)>>>(
        l, W, lay.chunk, static_cast<int>(lay.chunks), vocab_start, vocab_size, temperature.data<float>(),
        top_p.data<float>(), top_k.data<int32_t>(), seeds.data<int32_t>(), counters.data<int32_t>(),
        parts.data<SamplePart>());
  };
  if (logits.dtype == DType::BF16)
    launch(logits.data<__nv_bfloat16>());
  else
    launch(logits.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("sampleParts");
}

void sample_combine(const Tensor& parts, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                    int64_t vocab_size, const Tensor& tokens, const Tensor& logprobs) {
  const int64_t R = parts.dim(0), S = parts.dim(1), C = parts.dim(2) / int64_t(sizeof(SamplePart));
  if (S == 0) return;
  GPTOSS_CHECK(R * C < (int64_t(1) << 31), "sampleCombine: ", R, " x ", C, " parts per row exceed an int");
  DeviceGuard g(parts.device);
  sample_combine_kernel<float><<<static_cast<unsigned>(S), kThreads, 0, stream_of(parts.device)>>>(
      nullptr, vocab_size, static_cast<int>(R), S, static_cast<int>(C), temperature.data<float>(),
      top_p.data<float>(), top_k.data<int32_t>(), nullptr, nullptr, parts.data<SamplePart>(),
      tokens.data<int32_t>(), logprobs.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("sampleCombine");
}

}  // namespace gptoss::cuda
