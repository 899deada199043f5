// sampling.cc: CPU sampler (see sampling.h), rows in parallel. Mirrors sampling.cu step for step.
#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "parallel.h"
#include "sampling_parts.h"
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

// Row b of logits f32|bf16 [B, V] as floats (bf16 widened into `buf`).
const float* row_f32(const Tensor& logits, int64_t b, std::vector<float>& buf) {
  const int64_t V = logits.dim(1);
  if (logits.dtype != DType::BF16) return logits.data<float>() + b * V;
  const bf16* src = logits.data<bf16>() + b * V;
  buf.resize(V);
  for (int64_t j = 0; j < V; j++) buf[j] = to_f32(src[j]);
  return buf.data();
}

// Every row's parameters in range; throws naming the first bad one.
void check_rows(const char* op, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                const Tensor& counters) {
  const float* temp = temperature.data<float>();
  const float* tp = top_p.data<float>();
  const int32_t* tk = top_k.data<int32_t>();
  const int32_t* ct = counters.data<int32_t>();
  for (int64_t b = 0; b < temperature.numel(); b++) {
    GPTOSS_CHECK(temp[b] >= 0.f && std::isfinite(temp[b]), op, ": temperature[", b, "] must be >= 0, got ", temp[b]);
    GPTOSS_CHECK(tp[b] > 0.f && tp[b] <= 1.f, op, ": topP[", b, "] must be in (0, 1], got ", tp[b]);
    GPTOSS_CHECK(tk[b] >= 0, op, ": topK[", b, "] must be >= 0 (0 = off), got ", tk[b]);
    GPTOSS_CHECK(ct[b] >= 0, op, ": counters[", b, "] must be >= 0, got ", ct[b]);
  }
}

// The summary of one row's slice l[0 .. W) (vocabulary ids vocab_start ..): see sampling_parts.h. Greedy: the
// first max of the logits; else the max of z = l / temperature and the Gumbel-max winner under the row's key.
sampling::SamplePart summarise(const float* l, int64_t W, int64_t vocab_start, float temperature, uint64_t key) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float mx = kNegInf;
  double best = -std::numeric_limits<double>::infinity(), s = 0;
  int64_t bi = -1;
  if (temperature == 0.f) {
    for (int64_t j = 0; j < W; j++)
      if (bi < 0 || l[j] > mx) mx = l[j], bi = j;
    if (mx != kNegInf)
      for (int64_t j = 0; j < W; j++) s += std::exp(static_cast<double>(l[j]) - mx);
    return {s, static_cast<double>(mx), vocab_start + bi, mx, mx};
  }
  for (int64_t j = 0; j < W; j++) mx = std::max(mx, l[j] / temperature);
  for (int64_t j = 0; j < W; j++) {
    const float z = l[j] / temperature;
    if (mx != kNegInf) s += std::exp(static_cast<double>(z) - mx);
    const double sc = static_cast<double>(z) + sampling::gumbel(key, static_cast<uint64_t>(vocab_start + j));
    if (bi < 0 || sc > best) best = sc, bi = j;
  }
  return {s, best, vocab_start + bi, mx, l[bi] / temperature};
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
  check_rows("sampleRows", temperature, top_p, top_k, counters);
  const float* temp = temperature.data<float>();
  const float* tp = top_p.data<float>();
  const int32_t* tk = top_k.data<int32_t>();
  const int32_t* sd = seeds.data<int32_t>();
  const int32_t* ct = counters.data<int32_t>();
  int32_t* out_tokens = tokens.data<int32_t>();
  float* out_logprobs = logprobs.data<float>();
  parallel_for(B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> row, z;
    std::vector<double> e;
    for (int64_t b = b0; b < b1; b++) {
      const float* l = row_f32(logits, b, row);
      const uint64_t key = sampling::row_key(static_cast<uint32_t>(sd[b]), static_cast<uint64_t>(ct[b]), 0);
      sample_row(l, V, temp[b], tp[b], tk[b], key, out_tokens + b, out_logprobs + b, z, e);
    }
  });
}

void sample_parts(const Tensor& logits, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                  const Tensor& seeds, const Tensor& counters, int64_t vocab_start, int64_t vocab_size,
                  const Tensor& parts) {
  const int64_t B = logits.dim(0), W = logits.dim(1);
  check_rows("sampleParts", temperature, top_p, top_k, counters);
  const float* temp = temperature.data<float>();
  const float* tp = top_p.data<float>();
  const int32_t* tk = top_k.data<int32_t>();
  const int32_t* sd = seeds.data<int32_t>();
  const int32_t* ct = counters.data<int32_t>();
  auto* out = reinterpret_cast<sampling::SamplePart*>(parts.raw());
  parallel_for(B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> row;
    for (int64_t b = b0; b < b1; b++) {
      if (!sampling::row_splits(temp[b], tp[b], tk[b], vocab_size)) {
        out[b] = {0.0, -std::numeric_limits<double>::infinity(), -1, -std::numeric_limits<float>::infinity(), 0.f};
        continue;  // decided on the gathered logits (sampleCombine leaves it)
      }
      const uint64_t key = sampling::row_key(static_cast<uint32_t>(sd[b]), static_cast<uint64_t>(ct[b]), 0);
      // Columns past the vocabulary (a padded last slice) are not tokens.
      out[b] = summarise(row_f32(logits, b, row), std::min(W, vocab_size - vocab_start), vocab_start, temp[b], key);
    }
  });
}

void sample_combine(const Tensor& parts, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                    int64_t vocab_size, const Tensor& tokens, const Tensor& logprobs) {
  const int64_t R = parts.dim(0), S = parts.dim(1), C = parts.dim(2) / int64_t(sizeof(sampling::SamplePart));
  const auto* p = reinterpret_cast<const sampling::SamplePart*>(parts.raw());
  const float* temp = temperature.data<float>();
  const float* tp = top_p.data<float>();
  const int32_t* tk = top_k.data<int32_t>();
  int32_t* out_tokens = tokens.data<int32_t>();
  float* out_logprobs = logprobs.data<float>();
  for (int64_t b = 0; b < S; b++) {
    if (!sampling::row_splits(temp[b], tp[b], tk[b], vocab_size)) {
      out_tokens[b] = -1;
      out_logprobs[b] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    // The parts of row b in vocabulary order: rank r's chunk c is p[(r * S + b) * C + c].
    auto part = [&](int64_t q) -> const sampling::SamplePart& { return p[((q / C) * S + b) * C + q % C]; };
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t q = 0; q < R * C; q++) mx = std::max(mx, part(q).mx);
    double s = 0;
    int64_t w = 0;
    for (int64_t q = 0; q < R * C; q++) {
      const sampling::SamplePart& x = part(q);
      if (x.mx != -std::numeric_limits<float>::infinity()) s += x.s * std::exp(static_cast<double>(x.mx) - mx);
      if (q > 0 && sampling::part_beats(x.score, x.idx, part(w).score, part(w).idx)) w = q;
    }
    // A row of -inf only: the one-pass sum is e^(-inf - -inf) = NaN, and so is the log-prob; keep that.
    if (mx == -std::numeric_limits<float>::infinity()) s = std::numeric_limits<double>::quiet_NaN();
    out_tokens[b] = static_cast<int32_t>(part(w).idx);
    out_logprobs[b] = temp[b] == 0.f ? static_cast<float>(-std::log(s))
                                     : static_cast<float>(static_cast<double>(part(w).z) - mx - std::log(s));
  }
}

}  // namespace gptoss::cpu
