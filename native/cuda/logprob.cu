// logprob.cu: CUDA vocabulary-chunked log-prob/entropy (see logprob.h). Per chunk of the vocabulary: the chunk's
// logits z = hidden · lmHead_cᵀ / temperature by cuBLAS into one fp32 [T, chunk] buffer (row stride = chunk, so
// every chunk is equally aligned), then one block per token merges the chunk's (max, Σe^{z-max}, Σe^{z-max}(z-max))
// into running statistics (online softmax, one pass over the chunk's row). Backward recomputes each chunk's logits,
// forms dlogits in the input dtype (bf16 like autograd's bf16 logits gradient) and accumulates dHidden and dLmHead
// with two GEMMs. The token-chunked pair (token_logprobs_keep / _backward_from_logits) runs one GEMM over the
// whole vocabulary per token chunk and keeps its logits instead.
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

// Softmax statistics of a run of logits relative to their max m: s = Σ e^{z-m}, w = Σ e^{z-m}(z-m) (w/s - log s is
// minus the entropy). s == 0 marks "no logits yet" (m is then meaningless).
struct SoftStats {
  float m, s, w;
};

// The statistics of a ∪ b (online softmax: rescale the smaller-max side to the larger max).
__device__ __forceinline__ SoftStats soft_merge(SoftStats a, SoftStats b) {
  if (a.s == 0.f) return b;
  if (b.s == 0.f) return a;
  const float m = fmaxf(a.m, b.m), da = a.m - m, db = b.m - m, fa = __expf(da), fb = __expf(db);
  return {m, fa * a.s + fb * b.s, fa * (a.w + da * a.s) + fb * (b.w + db * b.s)};
}

// Adds n logits z[0..n) (n <= 4, in registers) to a thread's running statistics: one rescale when their max exceeds
// the running max, then one exp per logit.
template <int N>
__device__ __forceinline__ void soft_add(SoftStats& a, const float (&z)[N]) {
  float lm = z[0];
#pragma unroll
  for (int i = 1; i < N; i++) lm = fmaxf(lm, z[i]);
  if (a.s == 0.f) {
    a.m = lm;
  } else if (lm > a.m) {
    const float d = a.m - lm, f = __expf(d);
    a.w = f * (a.w + d * a.s);
    a.s *= f;
    a.m = lm;
  }
#pragma unroll
  for (int i = 0; i < N; i++) {
    const float d = z[i] - a.m, e = __expf(d);
    a.s += e;
    a.w += e * d;
  }
}

// The statistics of one row z[0..c) over the whole block (every thread gets them), in ONE pass over the row
// (a [T, V] row of gpt-oss is 804 KB: a max pass then an exp pass would read it twice from HBM). VEC: c % 4 == 0
// and z 16-byte aligned (float4 loads, two in flight per thread).
template <bool VEC>
__device__ SoftStats row_stats(const float* __restrict__ z, int64_t c) {
  SoftStats a{-INFINITY, 0.f, 0.f};
  if constexpr (VEC) {
    const float4* z4 = reinterpret_cast<const float4*>(z);
    const int64_t c4 = c / 4;
    int64_t j = threadIdx.x;
    for (; j + blockDim.x < c4; j += 2 * blockDim.x) {
      const float4 u = z4[j], v = z4[j + blockDim.x];
      const float zu[4] = {u.x, u.y, u.z, u.w}, zv[4] = {v.x, v.y, v.z, v.w};
      soft_add(a, zu);
      soft_add(a, zv);
    }
    if (j < c4) {
      const float4 u = z4[j];
      const float zu[4] = {u.x, u.y, u.z, u.w};
      soft_add(a, zu);
    }
  } else {
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
      const float zj[1] = {z[j]};
      soft_add(a, zj);
    }
  }
  // Warp, then block merge (blockDim.x a multiple of 32, at most 1024).
  for (int o = 16; o > 0; o >>= 1) {
    const SoftStats b{__shfl_xor_sync(0xffffffffu, a.m, o), __shfl_xor_sync(0xffffffffu, a.s, o),
                      __shfl_xor_sync(0xffffffffu, a.w, o)};
    a = soft_merge(a, b);
  }
  __shared__ SoftStats warps[32];
  __shared__ SoftStats total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warps[warp] = a;
  __syncthreads();
  if (threadIdx.x == 0) {
    SoftStats t = warps[0];
    for (int i = 1; i < static_cast<int>(blockDim.x >> 5); i++) t = soft_merge(t, warps[i]);
    total = t;
  }
  __syncthreads();
  return total;
}

// Whether a row of c logits at z (row stride ldz) takes the float4 path.
inline bool vec4_rows(const void* z, int64_t ldz, int64_t c) {
  return c % 4 == 0 && ldz % 4 == 0 && reinterpret_cast<uintptr_t>(z) % 16 == 0;
}

// One block per token t: the chunk's statistics (columns c0 .. c0+c of the vocabulary, z_all [T, ldz]) merged into
// the running ones (m, s, w f32 [T]; s == 0: none yet), and the target's logit tz [T] when the chunk holds it.
template <bool VEC>
__global__ void chunk_stats(const float* __restrict z_all, int64_t ldz, int64_t c, int64_t c0,
                            const int32_t* __restrict targets, float* __restrict m, float* __restrict s,
                            float* __restrict w, float* __restrict tz) {
  const int64_t t = blockIdx.x;
  const float* z = z_all + t * ldz;
  const SoftStats cs = row_stats<VEC>(z, c);
  if (threadIdx.x == 0) {
    const SoftStats r = soft_merge({m[t], s[t], w[t]}, cs);
    m[t] = r.m;
    s[t] = r.s;
    w[t] = r.w;
    const int64_t tg = targets[t];
    if (tg >= c0 && tg < c0 + c) tz[t] = z[tg - c0];
  }
}

// One block per token t over its whole kept row z_all [T, V] (the token-chunked forward): the statistics, then
// logprob (0 for a target < 0), entropy and lse directly.
template <bool VEC>
__global__ void row_logprobs(const float* __restrict z_all, int64_t V, const int32_t* __restrict targets,
                             float* __restrict logprobs, float* __restrict entropy, float* __restrict lse) {
  const int64_t t = blockIdx.x;
  const float* z = z_all + t * V;
  const SoftStats r = row_stats<VEC>(z, V);
  if (threadIdx.x == 0) {
    const float ls = logf(r.s);
    lse[t] = r.m + ls;
    entropy[t] = ls - r.w / r.s;
    const int32_t tg = targets[t];
    logprobs[t] = tg < 0 ? 0.f : z[tg] - (r.m + ls);
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

// dz[t, j] = dlogp_t (onehot_j - p_j) - dent_t p_j (z_j - mean_z), p_j = e^{z_j - lse_t}, for the chunk's columns
// j of one token row (block t); stored in TG (bf16: the input dtype, as autograd's bf16 logits gradient). VEC: c,
// ldz multiples of 4 and z_all, g_all aligned (float4 loads, 4-wide stores); the same value per element either way.
__device__ __forceinline__ void st4(__nv_bfloat16* p, const float (&v)[4]) {
  const __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]), b = __floats2bfloat162_rn(v[2], v[3]);
  uint2 u;
  u.x = *reinterpret_cast<const unsigned*>(&a);
  u.y = *reinterpret_cast<const unsigned*>(&b);
  *reinterpret_cast<uint2*>(p) = u;
}
__device__ __forceinline__ void st4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}

template <typename TG, bool VEC>
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
  auto dz_of = [&](float zj, int64_t col) {
    const float p = __expf(zj - ls);
    float dz = -gl * p;
    if (ge != 0.f) dz -= ge * p * (zj - mean_z);
    if (col == tg) dz += gl;
    return dz;
  };
  if constexpr (VEC) {
    const float4* z4 = reinterpret_cast<const float4*>(z);
    for (int64_t j = threadIdx.x; j < c / 4; j += blockDim.x) {
      const float4 u = z4[j];
      const int64_t col = c0 + 4 * j;
      const float v[4] = {dz_of(u.x, col), dz_of(u.y, col + 1), dz_of(u.z, col + 2), dz_of(u.w, col + 3)};
      st4(g + 4 * j, v);
    }
  } else {
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) stf(g + j, dz_of(z[j], c0 + j));
  }
}

// chunk_grad<TG, VEC> for the input dtype (bf16 or f32 dlogits) and the rows' alignment.
void launch_chunk_grad(DType dt, const float* z, int64_t ldz, int64_t c, int64_t c0, const int32_t* targets,
                       const float* lse, const float* dlogp, const float* dent, const float* ent, void* g, int64_t T,
                       cudaStream_t st) {
  const bool vec = vec4_rows(z, ldz, c) && reinterpret_cast<uintptr_t>(g) % 16 == 0;
  const unsigned grid = static_cast<unsigned>(T);
  if (dt == DType::BF16) {
    auto* gb = static_cast<__nv_bfloat16*>(g);
    if (vec) chunk_grad<__nv_bfloat16, true><<<grid, kThreads, 0, st>>>(z, ldz, c, c0, targets, lse, dlogp, dent, ent, gb);
    else chunk_grad<__nv_bfloat16, false><<<grid, kThreads, 0, st>>>(z, ldz, c, c0, targets, lse, dlogp, dent, ent, gb);
  } else {
    auto* gf = static_cast<float*>(g);
    if (vec) chunk_grad<float, true><<<grid, kThreads, 0, st>>>(z, ldz, c, c0, targets, lse, dlogp, dent, ent, gf);
    else chunk_grad<float, false><<<grid, kThreads, 0, st>>>(z, ldz, c, c0, targets, lse, dlogp, dent, ent, gf);
  }
}

// chunk_stats<VEC> for the rows' alignment.
void launch_chunk_stats(const float* z, int64_t ldz, int64_t c, int64_t c0, const int32_t* targets, float* m,
                        float* s, float* w, float* tz, int64_t T, cudaStream_t st) {
  const unsigned grid = static_cast<unsigned>(T);
  if (vec4_rows(z, ldz, c)) chunk_stats<true><<<grid, kThreads, 0, st>>>(z, ldz, c, c0, targets, m, s, w, tz);
  else chunk_stats<false><<<grid, kThreads, 0, st>>>(z, ldz, c, c0, targets, m, s, w, tz);
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
    launch_chunk_stats(buf.data<float>(), ldz, c, c0, tg, m, s, w, tz, T, st);
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
    launch_chunk_grad(hidden.dtype, buf.data<float>(), ldz, c, c0, targets.data<int32_t>(), lse.data<float>(),
                      d_logprobs.data<float>(), de, en, gbuf.raw(), T, st);
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
                         int64_t /*chunk: the CPU's merge order; here the whole row is one run*/,
                         const Tensor& logprobs, const Tensor& entropy, const Tensor& lse, const Tensor& logits) {
  const int64_t T = hidden.dim(0), H = hidden.dim(1), V = lm_head.dim(0);
  if (T == 0) return;
  const int dev = hidden.device;
  DeviceGuard guard(dev);
  cudaStream_t st = stream_of(dev);
  float* z = logits.data<float>();
  // The kept logits are the whole [T, V] row block anyway: ONE GEMM over the vocabulary (not one per vocabulary
  // chunk: 13 narrower GEMMs at gpt-oss's V), then one single-pass statistics kernel per row.
  profile_mark(dev, "lm head gemm");  // profiling phases (bench:train-step --profile); no-ops unless enabled
  gemm_raw(dev, T, V, H, 1.f / temperature, hidden.raw(), H, false, lm_head.raw(), H, true, hidden.dtype, nullptr,
           DType::F32, 0.f, z, DType::F32, V);
  profile_mark(dev, "log-softmax");
  const int32_t* tg = targets.data<int32_t>();
  const unsigned grid = static_cast<unsigned>(T);
  if (vec4_rows(z, V, V))
    row_logprobs<true><<<grid, kThreads, 0, st>>>(z, V, tg, logprobs.data<float>(), entropy.data<float>(), lse.data<float>());
  else
    row_logprobs<false><<<grid, kThreads, 0, st>>>(z, V, tg, logprobs.data<float>(), entropy.data<float>(), lse.data<float>());
  GPTOSS_CUDA_LAUNCH_CHECK("tokenLogprobsForwardKeep statistics");
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
  launch_chunk_grad(hidden.dtype, logits.data<float>(), V, V, 0, targets.data<int32_t>(), lse.data<float>(),
                    d_logprobs.data<float>(), nullptr, nullptr, gbuf.raw(), T, st);
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
