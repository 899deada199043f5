// logprob.cu: CUDA vocabulary-chunked log-prob/entropy (see logprob.h). Per chunk of the vocabulary: the chunk's
// logits z = hidden · lmHead_cᵀ / temperature by cuBLAS into one fp32 [T, chunk] buffer (row stride = chunk, so
// every chunk is equally aligned), then one block per token merges the chunk's (max, Σe^{z-max}, Σe^{z-max}(z-max))
// into running statistics (online softmax). Backward recomputes each chunk's logits, forms dlogits in the input
// dtype (bf16 like autograd's bf16 logits gradient) and accumulates dHidden and dLmHead with two GEMMs.
// No cuBLAS header here: the GEMMs go through cuda::gemm_raw (gemm.h).
#include "common.cuh"
#include "gemm.h"
#include "logprob.h"

namespace gptoss::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void init_stats(int64_t T, float* __restrict m, float* __restrict s, float* __restrict w,
                           float* __restrict tz) {
  int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t < T) {
    m[t] = -INFINITY;
    s[t] = 0.f;
    w[t] = 0.f;
    tz[t] = __int_as_float(0x7fc00000);  // NaN until the chunk holding the target sets it
  }
}

__global__ void chunk_stats(const float* __restrict z_all, int64_t ldz, int64_t c, int64_t c0,
                            const int32_t* __restrict targets, float* __restrict m, float* __restrict s,
                            float* __restrict w, float* __restrict tz) {
  const int64_t t = blockIdx.x;
  const float* z = z_all + t * ldz;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) mx = fmaxf(mx, z[j]);
  const float mc = block_max(mx);
  float sc = 0.f, wc = 0.f;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    float d = z[j] - mc, e = __expf(d);
    sc += e;
    wc += e * d;
  }
  sc = block_sum(sc);
  wc = block_sum(wc);
  if (threadIdx.x == 0) {
    const float mo = m[t], so = s[t], wo = w[t];
    const float mn = fmaxf(mo, mc);
    const float fc = __expf(mc - mn);
    float wn = fc * (wc + (mc - mn) * sc), sn = fc * sc;
    if (mo != -INFINITY) {
      const float fo = __expf(mo - mn);
      wn += fo * (wo + (mo - mn) * so);
      sn += fo * so;
    }
    m[t] = mn;
    s[t] = sn;
    w[t] = wn;
    const int64_t tg = targets[t];
    if (tg >= c0 && tg < c0 + c) tz[t] = z[tg - c0];
  }
}

__global__ void finish_stats(int64_t T, const int32_t* __restrict targets, const float* __restrict m,
                             const float* __restrict s, const float* __restrict w, const float* __restrict tz,
                             float* __restrict logprobs, float* __restrict entropy, float* __restrict lse) {
  int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t < T) {
    const float ls = logf(s[t]);
    lse[t] = m[t] + ls;
    entropy[t] = ls - w[t] / s[t];
    logprobs[t] = targets[t] < 0 ? 0.f : tz[t] - (m[t] + ls);
  }
}

template <typename TG>
__global__ void chunk_grad(const float* __restrict z_all, int64_t ldz, int64_t c, int64_t c0,
                           const int32_t* __restrict targets, const float* __restrict lse,
                           const float* __restrict dlogp, const float* __restrict dent,
                           const float* __restrict ent, TG* __restrict g_all) {
  const int64_t t = blockIdx.x;
  const float* z = z_all + t * ldz;
  TG* g = g_all + t * ldz;
  const int32_t tg = targets[t];
  const float gl = tg < 0 ? 0.f : dlogp[t];
  const float ge = dent ? dent[t] : 0.f;
  const float mean_z = ent ? lse[t] - ent[t] : 0.f;
  const float ls = lse[t];
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    const float zj = z[j];
    const float p = __expf(zj - ls);
    float dz = -gl * p;
    if (ge != 0.f) dz -= ge * p * (zj - mean_z);
    if (c0 + j == tg) dz += gl;
    stf(g + j, dz);
  }
}

}  // namespace

void token_logprobs(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, float temperature,
                    int64_t chunk, const Tensor& logprobs, const Tensor& entropy, const Tensor& lse) {
  const int64_t T = hidden.dim(0), H = hidden.dim(1), V = lm_head.dim(0);
  if (T == 0) return;
  const int dev = hidden.device;
  DeviceGuard guard(dev);
  cudaStream_t st = stream_of(dev);
  const int64_t ldz = chunk < V ? chunk : V;
  Tensor stats = make_tensor({4, T}, DType::F32, dev);
  float *m = stats.data<float>(), *s = m + T, *w = s + T, *tz = w + T;
  Tensor buf = make_tensor({T, ldz}, DType::F32, dev);
  init_stats<<<ceil_div(T, kThreads), kThreads, 0, st>>>(T, m, s, w, tz);
  GPTOSS_CUDA_LAUNCH_CHECK("tokenLogprobs init");
  const size_t esz = dtype_size(lm_head.dtype);
  const int32_t* tg = targets.data<int32_t>();
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t c = chunk < V - c0 ? chunk : V - c0;
    profile_mark(dev, "lm head gemm");  // profiling phases (bench:train-step --profile); no-ops unless enabled
    gemm_raw(dev, T, c, H, 1.f / temperature, hidden.raw(), H, false,
             static_cast<const char*>(lm_head.raw()) + c0 * H * esz, H, true, hidden.dtype, nullptr, DType::F32, 0.f,
             buf.raw(), DType::F32, ldz);
    profile_mark(dev, "log-softmax");
    chunk_stats<<<static_cast<unsigned>(T), kThreads, 0, st>>>(buf.data<float>(), ldz, c, c0, tg, m, s, w, tz);
    GPTOSS_CUDA_LAUNCH_CHECK("tokenLogprobs chunk statistics");
  }
  finish_stats<<<ceil_div(T, kThreads), kThreads, 0, st>>>(T, tg, m, s, w, tz, logprobs.data<float>(),
                                                            entropy.data<float>(), lse.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("tokenLogprobs finish");
}

void token_logprobs_backward(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, const Tensor& lse,
                             const Tensor& d_logprobs, const Tensor* d_entropy, const Tensor* entropy,
                             float temperature, int64_t chunk, const Tensor* d_hidden, const Tensor* d_lm_head,
                             bool overwrite_d_hidden, bool overwrite_d_lm_head) {
  const int64_t T = hidden.dim(0), H = hidden.dim(1), V = lm_head.dim(0);
  if (T == 0) return;
  const int dev = hidden.device;
  DeviceGuard guard(dev);
  cudaStream_t st = stream_of(dev);
  const int64_t ldz = chunk < V ? chunk : V;
  Tensor buf = make_tensor({T, ldz}, DType::F32, dev);
  Tensor gbuf = make_tensor({T, ldz}, hidden.dtype, dev);
  const size_t esz = dtype_size(lm_head.dtype);
  const float inv_t = 1.f / temperature;
  const float* de = d_entropy ? d_entropy->data<float>() : nullptr;
  const float* en = entropy ? entropy->data<float>() : nullptr;
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t c = chunk < V - c0 ? chunk : V - c0;
    const void* lmc = static_cast<const char*>(lm_head.raw()) + c0 * H * esz;
    profile_mark(dev, "lm head recompute");  // profiling phases (bench:train-step --profile)
    gemm_raw(dev, T, c, H, inv_t, hidden.raw(), H, false, lmc, H, true, hidden.dtype, nullptr, DType::F32, 0.f,
             buf.raw(), DType::F32, ldz);
    profile_mark(dev, "log-softmax");
    if (hidden.dtype == DType::BF16)
      chunk_grad<<<static_cast<unsigned>(T), kThreads, 0, st>>>(
          buf.data<float>(), ldz, c, c0, targets.data<int32_t>(), lse.data<float>(), d_logprobs.data<float>(), de, en,
          static_cast<__nv_bfloat16*>(gbuf.raw()));
    else
      chunk_grad<<<static_cast<unsigned>(T), kThreads, 0, st>>>(buf.data<float>(), ldz, c, c0,
                                                                targets.data<int32_t>(), lse.data<float>(),
                                                                d_logprobs.data<float>(), de, en, gbuf.data<float>());
    GPTOSS_CUDA_LAUNCH_CHECK("tokenLogprobsBackward chunk gradient");
    // dlogits = dz / temperature (alpha); dHidden += dlogits · lmHead_c, dLmHead_c += dlogitsᵀ · hidden.
    if (d_hidden) {
      profile_mark(dev, "lm head dgrad");
      const float beta = overwrite_d_hidden && c0 == 0 ? 0.f : 1.f;  // a fresh dHidden: the first chunk writes it
      gemm_raw(dev, T, H, c, inv_t, gbuf.raw(), ldz, false, lmc, H, false, hidden.dtype, nullptr, DType::F32, beta,
               d_hidden->raw(), DType::F32, H);
    }
    if (d_lm_head) {
      profile_mark(dev, "lm head wgrad");
      // a fresh dLmHead: these rows are written once, by this chunk
      gemm_raw(dev, c, H, T, inv_t, gbuf.raw(), ldz, true, hidden.raw(), H, false, hidden.dtype, nullptr, DType::F32,
               overwrite_d_lm_head ? 0.f : 1.f, d_lm_head->data<float>() + c0 * H, DType::F32, H);
    }
  }
}

void token_logprobs_keep(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, float temperature,
                         int64_t chunk, const Tensor& logprobs, const Tensor& entropy, const Tensor& lse,
                         const Tensor& logits) {
  const int64_t T = hidden.dim(0), H = hidden.dim(1), V = lm_head.dim(0);
  if (T == 0) return;
  const int dev = hidden.device;
  DeviceGuard guard(dev);
  cudaStream_t st = stream_of(dev);
  Tensor stats = make_tensor({4, T}, DType::F32, dev);
  float *m = stats.data<float>(), *s = m + T, *w = s + T, *tz = w + T;
  init_stats<<<ceil_div(T, kThreads), kThreads, 0, st>>>(T, m, s, w, tz);
  GPTOSS_CUDA_LAUNCH_CHECK("tokenLogprobsForwardKeep init");
  const size_t esz = dtype_size(lm_head.dtype);
  const int32_t* tg = targets.data<int32_t>();
  float* z = logits.data<float>();
  // The same per-chunk GEMMs and statistics as token_logprobs, into columns c0.. of the kept [T, V] logits (row
  // stride V) instead of a [T, chunk] scratch buffer.
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t c = chunk < V - c0 ? chunk : V - c0;
    profile_mark(dev, "lm head gemm");
    gemm_raw(dev, T, c, H, 1.f / temperature, hidden.raw(), H, false,
             static_cast<const char*>(lm_head.raw()) + c0 * H * esz, H, true, hidden.dtype, nullptr, DType::F32, 0.f,
             z + c0, DType::F32, V);
    profile_mark(dev, "log-softmax");
    chunk_stats<<<static_cast<unsigned>(T), kThreads, 0, st>>>(z + c0, V, c, c0, tg, m, s, w, tz);
    GPTOSS_CUDA_LAUNCH_CHECK("tokenLogprobsForwardKeep chunk statistics");
  }
  finish_stats<<<ceil_div(T, kThreads), kThreads, 0, st>>>(T, tg, m, s, w, tz, logprobs.data<float>(),
                                                            entropy.data<float>(), lse.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("tokenLogprobsForwardKeep finish");
}

void token_logprobs_backward_from_logits(const Tensor& logits, const Tensor& hidden, const Tensor& lm_head,
                                         const Tensor& targets, const Tensor& lse, const Tensor& d_logprobs,
                                         float temperature, const Tensor& d_hidden, const Tensor* d_lm_head) {
  const int64_t T = hidden.dim(0), H = hidden.dim(1), V = lm_head.dim(0);
  if (T == 0) return;
  const int dev = hidden.device;
  DeviceGuard guard(dev);
  cudaStream_t st = stream_of(dev);
  const float inv_t = 1.f / temperature;
  // dlogits [T, V] in the input dtype (bf16, rounded as token_logprobs_backward rounds its chunks), one kernel over
  // the whole vocabulary, then one dgrad and one wgrad GEMM over it (K = V and K = T).
  Tensor gbuf = make_tensor({T, V}, hidden.dtype, dev);
  profile_mark(dev, "log-softmax");
  if (hidden.dtype == DType::BF16)
    chunk_grad<<<static_cast<unsigned>(T), kThreads, 0, st>>>(
        logits.data<float>(), V, V, 0, targets.data<int32_t>(), lse.data<float>(), d_logprobs.data<float>(), nullptr,
        nullptr, static_cast<__nv_bfloat16*>(gbuf.raw()));
  else
    chunk_grad<<<static_cast<unsigned>(T), kThreads, 0, st>>>(logits.data<float>(), V, V, 0, targets.data<int32_t>(),
                                                              lse.data<float>(), d_logprobs.data<float>(), nullptr,
                                                              nullptr, gbuf.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("tokenLogprobsBackwardFromLogits gradient");
  profile_mark(dev, "lm head dgrad");
  gemm_raw(dev, T, H, V, inv_t, gbuf.raw(), V, false, lm_head.raw(), H, false, hidden.dtype, nullptr, DType::F32, 0.f,
           d_hidden.raw(), DType::F32, H);
  if (d_lm_head) {
    profile_mark(dev, "lm head wgrad");
    gemm_raw(dev, V, H, T, inv_t, gbuf.raw(), V, true, hidden.raw(), H, false, hidden.dtype, nullptr, DType::F32, 1.f,
             d_lm_head->raw(), DType::F32, H);
  }
}

}  // namespace gptoss::cuda
