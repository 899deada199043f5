// logprob.cc: CPU reference of the vocabulary-chunked log-prob/entropy (see logprob.h). Per chunk: the chunk's
// logits by the CPU GEMM (alpha = 1/temperature), then per row an online-softmax merge of (max, Σe^{z-max},
// Σe^{z-max}(z-max)) with the running statistics; the target's logit is picked up by the chunk that holds it.
#include "logprob.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gemm.h"
#include "parallel.h"

namespace gptoss::cpu {

void token_logprobs(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, float temperature,
                    int64_t chunk, const Tensor& logprobs, const Tensor& entropy, const Tensor& lse) {
  const int64_t T = hidden.dim(0), H = hidden.dim(1), V = lm_head.dim(0);
  const int32_t* tg = targets.data<int32_t>();
  for (int64_t t = 0; t < T; t++)
    GPTOSS_CHECK(tg[t] < V, "tokenLogprobs: target ", tg[t], " at position ", t, " is out of range for vocabulary ",
                 V);
  const float inv_t = 1.f / temperature;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> m(T, ninf), s(T, 0.f), w(T, 0.f), tz(T, 0.f);
  std::vector<float> buf(static_cast<size_t>(T * std::min(chunk, V)));
  const size_t esz = dtype_size(lm_head.dtype);
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t c = std::min(chunk, V - c0);
    GemmOperand A{hidden.raw(), hidden.dtype, H, false};
    GemmOperand B{static_cast<const char*>(lm_head.raw()) + c0 * H * esz, lm_head.dtype, H, true};
    gemm_raw(T, c, H, inv_t, A, B, nullptr, DType::F32, 0.f, buf.data(), DType::F32, c);
    parallel_for(T, std::max<int64_t>(1, 4096 / c), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; t++) {
        const float* z = buf.data() + t * c;
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
  float* lp = logprobs.data<float>();
  float* en = entropy.data<float>();
  float* ls = lse.data<float>();
  for (int64_t t = 0; t < T; t++) {
    ls[t] = m[t] + std::log(s[t]);
    en[t] = std::log(s[t]) - w[t] / s[t];
    lp[t] = tg[t] < 0 ? 0.f : tz[t] - ls[t];
  }
}

void token_logprobs_backward(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, const Tensor& lse,
                             const Tensor& d_logprobs, const Tensor* d_entropy, const Tensor* entropy,
                             float temperature, int64_t chunk, const Tensor* d_hidden, const Tensor* d_lm_head) {
  const int64_t T = hidden.dim(0), H = hidden.dim(1), V = lm_head.dim(0);
  const int32_t* tg = targets.data<int32_t>();
  for (int64_t t = 0; t < T; t++)
    GPTOSS_CHECK(tg[t] < V, "tokenLogprobsBackward: target ", tg[t], " at position ", t,
                 " is out of range for vocabulary ", V);
  const float inv_t = 1.f / temperature;
  const float* ls = lse.data<float>();
  const float* dl = d_logprobs.data<float>();
  const float* de = d_entropy ? d_entropy->data<float>() : nullptr;
  const float* en = entropy ? entropy->data<float>() : nullptr;
  std::vector<float> buf(static_cast<size_t>(T * std::min(chunk, V)));
  const size_t esz = dtype_size(lm_head.dtype);
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t c = std::min(chunk, V - c0);
    const void* lmc = static_cast<const char*>(lm_head.raw()) + c0 * H * esz;
    gemm_raw(T, c, H, inv_t, GemmOperand{hidden.raw(), hidden.dtype, H, false}, GemmOperand{lmc, lm_head.dtype, H, true},
             nullptr, DType::F32, 0.f, buf.data(), DType::F32, c);
    parallel_for(T, std::max<int64_t>(1, 4096 / c), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; t++) {
        float* z = buf.data() + t * c;
        const float g = tg[t] < 0 ? 0.f : dl[t];
        const float ge = de ? de[t] : 0.f;
        const float mean_z = en ? ls[t] - en[t] : 0.f;  // E[z] = lse - entropy
        for (int64_t j = 0; j < c; j++) {
          const float p = std::exp(z[j] - ls[t]);
          float dz = -g * p;
          if (ge != 0.f) dz -= ge * p * (z[j] - mean_z);
          z[j] = dz;
        }
        if (tg[t] >= c0 && tg[t] < c0 + c) z[tg[t] - c0] += g;
      }
    });
    // dlogits = dz / temperature, folded into alpha.
    GemmOperand G{buf.data(), DType::F32, c, false};
    if (d_hidden)
      gemm_raw(T, H, c, inv_t, G, GemmOperand{lmc, lm_head.dtype, H, false}, nullptr, DType::F32, 1.f,
               d_hidden->data<float>(), DType::F32, H);
    GemmOperand Gt{buf.data(), DType::F32, c, true};
    if (d_lm_head)
      gemm_raw(c, H, T, inv_t, Gt, GemmOperand{hidden.raw(), hidden.dtype, H, false}, nullptr, DType::F32, 1.f,
               d_lm_head->data<float>() + c0 * H, DType::F32, H);
  }
}

}  // namespace gptoss::cpu
