// logprob.cc: CPU reference of the vocabulary-chunked log-prob/entropy (see logprob.h). Per chunk: the chunk's
// logits by the CPU GEMM (alpha = 1/temperature), then per row an online-softmax merge of (max, Σe^{z-max},
// Σe^{z-max}(z-max)) with the running statistics; the target's logit is picked up by the chunk that holds it.
#include "logprob.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gemm.h"
#include "parallel.h"

namespace gptoss::cpu {

namespace {

// One vocabulary chunk's logits z [T, c] (row stride ld, columns c0..c0+c of the vocabulary) merged into the
// running per-token statistics: (m, s, w) = (max, Σe^{z-m}, Σe^{z-m}(z-m)); tz picks up the target's logit.
// Shared by token_logprobs (a [T, chunk] scratch buffer) and token_logprobs_keep (the kept [T, V] logits), so
// both give the same bits for the same chunk.
void merge_chunk_stats(const float* zb, int64_t ld, int64_t T, int64_t c, int64_t c0, const int32_t* tg, float* m,
                       float* s, float* w, float* tz) {
  const float ninf = -std::numeric_limits<float>::infinity();
  parallel_for(T, std::max<int64_t>(1, 4096 / c), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      const float* z = zb + t * ld;
      float mc = ninf;
      for (int64_t j = 0; j < c; j++) mc = std::max(mc, z[j]);
      float sc = 0.f, wc = 0.f;
      for (int64_t j = 0; j < c; j++) {
        float d = z[j] - mc, ex = std::exp(d);
        sc += ex;
        wc += ex * d;
      }
      // Merge (m, s, w) with the chunk's (mc, sc, wc); w is Σ e^{z-m} (z-m), so it shifts with m.
      const float mn = std::max(m[t], mc);
      const float fo = std::exp(m[t] - mn), fc = std::exp(mc - mn);
      w[t] = fo * (w[t] + (m[t] - mn) * s[t]) + fc * (wc + (mc - mn) * sc);
      if (m[t] == ninf) w[t] = fc * (wc + (mc - mn) * sc);
      s[t] = fo * s[t] + fc * sc;
      m[t] = mn;
      const int64_t target = tg[t];
      if (target >= c0 && target < c0 + c) tz[t] = z[target - c0];
    }
  });
}

void check_targets(const char* op, const int32_t* tg, int64_t T, int64_t V) {
  for (int64_t t = 0; t < T; t++)
    GPTOSS_CHECK(tg[t] < V, op, ": target ", tg[t], " at position ", t, " is out of range for vocabulary ", V);
}

// The forward of both ops: per vocabulary chunk the logits GEMM into `z(c0)` (row stride ld) and the statistics
// merge; then lse, entropy and the target log-prob.
template <typename ZAt>
void logprobs_forward(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, float temperature,
                      int64_t chunk, const Tensor& logprobs, const Tensor& entropy, const Tensor& lse, int64_t ld,
                      ZAt z_at) {
  const int64_t T = hidden.dim(0), H = hidden.dim(1), V = lm_head.dim(0);
  const int32_t* tg = targets.data<int32_t>();
  const float inv_t = 1.f / temperature;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> m(T, ninf), s(T, 0.f), w(T, 0.f), tz(T, 0.f);
  const size_t esz = dtype_size(lm_head.dtype);
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t c = std::min(chunk, V - c0);
    float* z = z_at(c0);
    GemmOperand A{hidden.raw(), hidden.dtype, H, false};
    GemmOperand B{static_cast<const char*>(lm_head.raw()) + c0 * H * esz, lm_head.dtype, H, true};
    gemm_raw(T, c, H, inv_t, A, B, nullptr, DType::F32, 0.f, z, DType::F32, ld);
    merge_chunk_stats(z, ld, T, c, c0, tg, m.data(), s.data(), w.data(), tz.data());
  }
  float* lp = logprobs.data<float>();
  float* en = entropy.data<float>();
  float* ls = lse.data<float>();
  for (int64_t t = 0; t < T; t++) {
    ls[t] = m[t] + std::log(s[t]);
    en[t] = std::log(s[t]) - w[t] / s[t];
    lp[t] = tg[t] < 0 ? 0.f : tz[t] - ls[t];
  }
}

// dz = dlogp (onehot - p) [+ dEntropy · (-p (z - E[z]))] of one vocabulary chunk, from its logits z (row stride
// ldz) into g [T, c] (row stride c). Shared by the recomputing backward (in place, z == g) and the kept-logits one.
void chunk_dz(const float* zb, int64_t ldz, float* gb, int64_t T, int64_t c, int64_t c0, const int32_t* tg,
              const float* ls, const float* dl, const float* de, const float* en) {
  parallel_for(T, std::max<int64_t>(1, 4096 / c), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      const float* z = zb + t * ldz;
      float* g = gb + t * c;
      const float gl = tg[t] < 0 ? 0.f : dl[t];
      const float ge = de ? de[t] : 0.f;
      const float mean_z = en ? ls[t] - en[t] : 0.f;  // E[z] = lse - entropy
      for (int64_t j = 0; j < c; j++) {
        const float p = std::exp(z[j] - ls[t]);
        float dz = -gl * p;
        if (ge != 0.f) dz -= ge * p * (z[j] - mean_z);
        g[j] = dz;
      }
      if (tg[t] >= c0 && tg[t] < c0 + c) g[tg[t] - c0] += gl;
    }
  });
}

// dlogits = dz / temperature (folded into alpha): d_hidden += G · lmHead_c, d_lm_head_c += Gᵀ · hidden.
void chunk_grad_gemms(const float* g, int64_t T, int64_t H, int64_t c, int64_t c0, float inv_t, const Tensor& hidden,
                      const void* lmc, DType lm_dtype, const Tensor* d_hidden, const Tensor* d_lm_head) {
  GemmOperand G{g, DType::F32, c, false};
  if (d_hidden)
    gemm_raw(T, H, c, inv_t, G, GemmOperand{lmc, lm_dtype, H, false}, nullptr, DType::F32, 1.f,
             d_hidden->data<float>(), DType::F32, H);
  GemmOperand Gt{g, DType::F32, c, true};
  if (d_lm_head)
    gemm_raw(c, H, T, inv_t, Gt, GemmOperand{hidden.raw(), hidden.dtype, H, false}, nullptr, DType::F32, 1.f,
             d_lm_head->data<float>() + c0 * H, DType::F32, H);
}

}  // namespace

void token_logprobs(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, float temperature,
                    int64_t chunk, const Tensor& logprobs, const Tensor& entropy, const Tensor& lse) {
  const int64_t T = hidden.dim(0), V = lm_head.dim(0);
  check_targets("tokenLogprobs", targets.data<int32_t>(), T, V);
  const int64_t ld = std::min(chunk, V);
  std::vector<float> buf(static_cast<size_t>(T * ld));
  logprobs_forward(hidden, lm_head, targets, temperature, chunk, logprobs, entropy, lse, ld,
                   [&](int64_t) { return buf.data(); });
}

void token_logprobs_keep(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, float temperature,
                         int64_t chunk, const Tensor& logprobs, const Tensor& entropy, const Tensor& lse,
                         const Tensor& logits) {
  const int64_t T = hidden.dim(0), V = lm_head.dim(0);
  check_targets("tokenLogprobsForwardKeep", targets.data<int32_t>(), T, V);
  float* z = logits.data<float>();
  logprobs_forward(hidden, lm_head, targets, temperature, chunk, logprobs, entropy, lse, V,
                   [&](int64_t c0) { return z + c0; });
}

void token_logprobs_backward_from_logits(const Tensor& logits, const Tensor& hidden, const Tensor& lm_head,
                                         const Tensor& targets, const Tensor& lse, const Tensor& d_logprobs,
                                         float temperature, int64_t chunk, const Tensor& d_hidden,
                                         const Tensor* d_lm_head) {
  const int64_t T = hidden.dim(0), H = hidden.dim(1), V = lm_head.dim(0);
  const int32_t* tg = targets.data<int32_t>();
  check_targets("tokenLogprobsBackwardFromLogits", tg, T, V);
  std::fill(d_hidden.data<float>(), d_hidden.data<float>() + T * H, 0.f);
  // dz of one vocabulary chunk at a time (f32 [T, chunk], as the recomputing backward keeps it), then the same
  // GEMMs: the CPU results equal token_logprobs_backward's for the same chunk.
  std::vector<float> buf(static_cast<size_t>(T * std::min(chunk, V)));
  const float* z = logits.data<float>();
  const size_t esz = dtype_size(lm_head.dtype);
  const float inv_t = 1.f / temperature;
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t c = std::min(chunk, V - c0);
    chunk_dz(z + c0, V, buf.data(), T, c, c0, tg, lse.data<float>(), d_logprobs.data<float>(), nullptr, nullptr);
    chunk_grad_gemms(buf.data(), T, H, c, c0, inv_t, hidden, static_cast<const char*>(lm_head.raw()) + c0 * H * esz,
                     lm_head.dtype, &d_hidden, d_lm_head);
  }
}

void token_logprobs_backward(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, const Tensor& lse,
                             const Tensor& d_logprobs, const Tensor* d_entropy, const Tensor* entropy,
                             float temperature, int64_t chunk, const Tensor* d_hidden, const Tensor* d_lm_head) {
  const int64_t T = hidden.dim(0), H = hidden.dim(1), V = lm_head.dim(0);
  const int32_t* tg = targets.data<int32_t>();
  check_targets("tokenLogprobsBackward", tg, T, V);
  const float inv_t = 1.f / temperature;
  const float* de = d_entropy ? d_entropy->data<float>() : nullptr;
  const float* en = entropy ? entropy->data<float>() : nullptr;
  std::vector<float> buf(static_cast<size_t>(T * std::min(chunk, V)));
  const size_t esz = dtype_size(lm_head.dtype);
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t c = std::min(chunk, V - c0);
    const void* lmc = static_cast<const char*>(lm_head.raw()) + c0 * H * esz;
    // Recompute the chunk's logits, then dz in place over them.
    gemm_raw(T, c, H, inv_t, GemmOperand{hidden.raw(), hidden.dtype, H, false}, GemmOperand{lmc, lm_head.dtype, H, true},
             nullptr, DType::F32, 0.f, buf.data(), DType::F32, c);
    chunk_dz(buf.data(), c, buf.data(), T, c, c0, tg, lse.data<float>(), d_logprobs.data<float>(), de, en);
    chunk_grad_gemms(buf.data(), T, H, c, c0, inv_t, hidden, lmc, lm_head.dtype, d_hidden, d_lm_head);
  }
}

}  // namespace gptoss::cpu
