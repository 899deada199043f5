// sampling.cc: CPU sampler (see sampling.h), rows in parallel. Mirrors sampling.cu step for step.
#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "parallel.h"
#include "sampling_rng.h"

namespace gptoss::cpu {

namespace {

inline uint32_t key_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return sampling::order_key(u);
}

void sample_row(const float* logits, int64_t V, float temperature, float top_p, int64_t top_k, uint64_t key,
                int32_t* token, float* logprob, std::vector<float>& z, std::vector<double>& e) {
  if (temperature == 0.f) {
    int64_t best = 0;
    float mx = logits[0];
    for (int64_t j = 1; j < V; j++)
      if (logits[j] > mx) mx = logits[j], best = j;
    double s = 0;
    for (int64_t j = 0; j < V; j++) s += std::exp(static_cast<double>(logits[j]) - mx);
    *token = static_cast<int32_t>(best);
    *logprob = static_cast<float>(-std::log(s));
    return;
  }
  z.resize(V);
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < V; j++) {
    z[j] = logits[j] / temperature;
    mx = std::max(mx, z[j]);
  }
  uint32_t tau = 0;  // keys >= tau are allowed
  if (top_k > 0 && top_k < V) {
    // Largest tau with count(key >= tau) >= k, i.e. the k-th largest key.
    for (int b = 31; b >= 0; b--) {
      uint32_t cand = tau | (1u << b);
      int64_t cnt = 0;
      for (int64_t j = 0; j < V; j++) cnt += key_of(z[j]) >= cand;
      if (cnt >= top_k) tau = cand;
    }
  }
  if (top_p > 0.f && top_p < 1.f) {
    e.resize(V);
    double total = 0;
    for (int64_t j = 0; j < V; j++) {
      e[j] = key_of(z[j]) >= tau ? std::exp(static_cast<double>(z[j]) - mx) : 0.0;
      total += e[j];
    }
    const double want = static_cast<double>(top_p) * total;
    // Largest tp with mass(key >= tp) >= want; entries below the top-k threshold weigh 0, so tp >= tau.
    uint32_t tp = 0;
    for (int b = 31; b >= 0; b--) {
      uint32_t cand = tp | (1u << b);
      double mass = 0;
      for (int64_t j = 0; j < V; j++) mass += key_of(z[j]) >= cand ? e[j] : 0.0;
      if (mass >= want) tp = cand;
    }
    tau = tp;
  }
  double best_score = -std::numeric_limits<double>::infinity();
  int64_t best = -1;
  double s = 0;
  for (int64_t j = 0; j < V; j++) {
    if (key_of(z[j]) < tau) continue;
    s += std::exp(static_cast<double>(z[j]) - mx);
    double sc = static_cast<double>(z[j]) + sampling::gumbel(key, static_cast<uint64_t>(j));
    if (sc > best_score || best < 0) best_score = sc, best = j;
  }
  *token = static_cast<int32_t>(best);
  *logprob = static_cast<float>(static_cast<double>(z[best]) - mx - std::log(s));
}

}  // namespace

void sample(const Tensor& logits, float temperature, float top_p, int64_t top_k, uint64_t seed, uint64_t step,
            const Tensor& tokens, const Tensor& logprobs) {
  const int64_t B = logits.dim(0), V = logits.dim(1);
  const float* l = logits.data<float>();
  int32_t* tk = tokens.data<int32_t>();
  float* lp = logprobs.data<float>();
  parallel_for(B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> z;
    std::vector<double> e;
    for (int64_t b = b0; b < b1; b++)
      sample_row(l + b * V, V, temperature, top_p, top_k, sampling::row_key(seed, step, static_cast<uint64_t>(b)),
                 tk + b, lp + b, z, e);
  });
}

void sample_rows(const Tensor& logits, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                 const Tensor& seeds, const Tensor& counters, const Tensor& tokens, const Tensor& logprobs) {
  const int64_t B = logits.dim(0), V = logits.dim(1);
  const float* temp = temperature.data<float>();
  const float* tp = top_p.data<float>();
  const int32_t* tk = top_k.data<int32_t>();
  const int32_t* sd = seeds.data<int32_t>();
  const int32_t* ct = counters.data<int32_t>();
  for (int64_t b = 0; b < B; b++) {
    GPTOSS_CHECK(temp[b] >= 0.f && std::isfinite(temp[b]), "sampleRows: temperature[", b, "] must be >= 0, got ",
                 temp[b]);
    GPTOSS_CHECK(tp[b] > 0.f && tp[b] <= 1.f, "sampleRows: topP[", b, "] must be in (0, 1], got ", tp[b]);
    GPTOSS_CHECK(tk[b] >= 0, "sampleRows: topK[", b, "] must be >= 0 (0 = off), got ", tk[b]);
    GPTOSS_CHECK(ct[b] >= 0, "sampleRows: counters[", b, "] must be >= 0, got ", ct[b]);
  }
  int32_t* out_tokens = tokens.data<int32_t>();
  float* out_logprobs = logprobs.data<float>();
  const bool is_bf16 = logits.dtype == DType::BF16;
  parallel_for(B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> row, z;
    std::vector<double> e;
    for (int64_t b = b0; b < b1; b++) {
      const float* l;
      if (is_bf16) {
        const bf16* src = logits.data<bf16>() + b * V;
        row.resize(V);
        for (int64_t j = 0; j < V; j++) row[j] = to_f32(src[j]);
        l = row.data();
      } else {
        l = logits.data<float>() + b * V;
      }
      const uint64_t key = sampling::row_key(static_cast<uint32_t>(sd[b]), static_cast<uint64_t>(ct[b]), 0);
      sample_row(l, V, temp[b], tp[b], tk[b], key, out_tokens + b, out_logprobs + b, z, e);
    }
  });
}

}  // namespace gptoss::cpu
