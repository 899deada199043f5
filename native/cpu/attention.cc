// attention.cc: straightforward fp32 attention with sinks (see attention.h). Inputs are widened to fp32 once;
// every output element is written by exactly one parallel task, so results do not depend on the thread count.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "parallel.h"

namespace gptoss::cpu {
namespace {

std::vector<float> widen(const Tensor& t) {
  std::vector<float> r(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::F32) {
    const float* p = t.data<float>();
    std::copy(p, p + r.size(), r.begin());
  } else {
    const bf16* p = t.data<bf16>();
    for (size_t i = 0; i < r.size(); i++) r[i] = to_f32(p[i]);
  }
  return r;
}

void store(const Tensor& t, size_t i, float v) {
  if (t.dtype == DType::F32)
    t.data<float>()[i] = v;
  else
    t.data<bf16>()[i] = to_bf16(v);
}

// Per token: its sequence's first token, its position in the sequence and whether it is a real token.
struct TokenMap {
  std::vector<int64_t> start, pos;
  std::vector<char> valid;
  std::vector<int64_t> seq_end_used;  // one past the last real token of the token's sequence (absolute)
};

TokenMap map_tokens(int64_t T, const Tensor& cu, const Tensor* used) {
  TokenMap m;
  m.start.assign(T, 0);
  m.pos.assign(T, 0);
  m.valid.assign(T, 0);
  m.seq_end_used.assign(T, 0);
  const int32_t* c = cu.data<int32_t>();
  int64_t nseq = cu.dim(0) - 1;
  for (int64_t s = 0; s < nseq; s++) {
    int64_t b = c[s], e = c[s + 1];
    GPTOSS_CHECK(b >= 0 && e >= b && e <= T, "attention: cuSeqlens must be non-decreasing within [0, ", T,
                 "], got cuSeqlens[", s, "]=", b, ", cuSeqlens[", s + 1, "]=", e);
    int64_t u = e - b;
    if (used) u = std::min<int64_t>(u, std::max<int32_t>(0, used->data<int32_t>()[s]));
    for (int64_t t = b; t < e; t++) {
      m.start[t] = b;
      m.pos[t] = t - b;
      m.valid[t] = (t - b) < u;
      m.seq_end_used[t] = b + u;
    }
  }
  return m;
}

std::vector<float> sink_values(const Tensor* sinks, int64_t Hq) {
  if (!sinks) return std::vector<float>(Hq, -std::numeric_limits<float>::infinity());
  return widen(*sinks);
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* sinks, const Tensor& cu,
                       const Tensor* used, int window, float scale, const Tensor& out, const Tensor& lse) {
  const int64_t T = q.dim(0), Hq = q.dim(1), D = q.dim(2), Hkv = k.dim(1), G = Hq / Hkv;
  const std::vector<float> Q = widen(q), K = widen(k), V = widen(v), sink = sink_values(sinks, Hq);
  const TokenMap m = map_tokens(T, cu, used);
  float* L = lse.data<float>();
  parallel_for(T * Hq, 16, [&](int64_t b, int64_t e) {
    std::vector<float> s, acc(D);
    for (int64_t it = b; it < e; it++) {
      const int64_t t = it / Hq, h = it % Hq, kvh = h / G;
      if (!m.valid[t]) {
        for (int64_t d = 0; d < D; d++) store(out, (t * Hq + h) * D + d, 0.f);
        L[h * T + t] = 0.f;
        continue;
      }
      const int64_t i = m.pos[t], st = m.start[t];
      const int64_t lo = window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
      const float* qi = &Q[(t * Hq + h) * D];
      s.assign(i - lo + 1, 0.f);
      float mx = sink[h];
      for (int64_t j = lo; j <= i; j++) {
        const float* kj = &K[((st + j) * Hkv + kvh) * D];
        float dot = 0.f;
        for (int64_t d = 0; d < D; d++) dot += qi[d] * kj[d];
        s[j - lo] = dot * scale;
        mx = std::max(mx, s[j - lo]);
      }
      float sum = std::exp(sink[h] - mx);  // 0 without a sink
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = lo; j <= i; j++) {
        const float p = std::exp(s[j - lo] - mx);
        sum += p;
        const float* vj = &V[((st + j) * Hkv + kvh) * D];
        for (int64_t d = 0; d < D; d++) acc[d] += p * vj[d];
      }
      for (int64_t d = 0; d < D; d++) store(out, (t * Hq + h) * D + d, acc[d] / sum);
      L[h * T + t] = mx + std::log(sum);
    }
  });
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor* sinks, const Tensor& cu, const Tensor* used, int window,
                        float scale, const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor* dsinks) {
  const int64_t T = q.dim(0), Hq = q.dim(1), D = q.dim(2), Hkv = k.dim(1), G = Hq / Hkv;
  const std::vector<float> Q = widen(q), K = widen(k), V = widen(v), dO = widen(dout), O = widen(out);
  const std::vector<float> sink = sink_values(sinks, Hq);
  const float* L = lse.data<float>();
  const TokenMap m = map_tokens(T, cu, used);
  // D_i = dO_i . O_i, [Hq, T]
  std::vector<float> Di(static_cast<size_t>(Hq * T), 0.f);
  parallel_for(T * Hq, 64, [&](int64_t b, int64_t e) {
    for (int64_t it = b; it < e; it++) {
      const int64_t t = it / Hq, h = it % Hq;
      if (!m.valid[t]) continue;
      float acc = 0.f;
      for (int64_t d = 0; d < D; d++) acc += dO[(t * Hq + h) * D + d] * O[(t * Hq + h) * D + d];
      Di[h * T + t] = acc;
    }
  });
  auto score = [&](int64_t tq, int64_t h, int64_t tk, int64_t kvh) {
    float dot = 0.f;
    const float* qi = &Q[(tq * Hq + h) * D];
    const float* kj = &K[(tk * Hkv + kvh) * D];
    for (int64_t d = 0; d < D; d++) dot += qi[d] * kj[d];
    return dot * scale;
  };
  auto dscore = [&](int64_t tq, int64_t h, int64_t tk, int64_t kvh, float p) {
    float dp = 0.f;
    const float* doi = &dO[(tq * Hq + h) * D];
    const float* vj = &V[(tk * Hkv + kvh) * D];
    for (int64_t d = 0; d < D; d++) dp += doi[d] * vj[d];
    return p * (dp - Di[h * T + tq]);
  };
  // dq: per (query token, head), over the keys it sees.
  parallel_for(T * Hq, 8, [&](int64_t b, int64_t e) {
    std::vector<float> acc(D);
    for (int64_t it = b; it < e; it++) {
      const int64_t t = it / Hq, h = it % Hq, kvh = h / G;
      std::fill(acc.begin(), acc.end(), 0.f);
      if (m.valid[t]) {
        const int64_t i = m.pos[t], st = m.start[t];
        const int64_t lo = window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
        for (int64_t j = lo; j <= i; j++) {
          const int64_t tk = st + j;
          const float p = std::exp(score(t, h, tk, kvh) - L[h * T + t]);
          const float ds = dscore(t, h, tk, kvh, p) * scale;
          const float* kj = &K[(tk * Hkv + kvh) * D];
          for (int64_t d = 0; d < D; d++) acc[d] += ds * kj[d];
        }
      }
      for (int64_t d = 0; d < D; d++) store(dq, (t * Hq + h) * D + d, acc[d]);
    }
  });
  // dk, dv: per (key token, kv head), over the queries of its group that see it.
  parallel_for(T * Hkv, 4, [&](int64_t b, int64_t e) {
    std::vector<float> ak(D), av(D);
    for (int64_t it = b; it < e; it++) {
      const int64_t t = it / Hkv, kvh = it % Hkv;
      std::fill(ak.begin(), ak.end(), 0.f);
      std::fill(av.begin(), av.end(), 0.f);
      if (m.valid[t]) {
        const int64_t j = m.pos[t], st = m.start[t], end = m.seq_end_used[t];
        const int64_t hi = window > 0 ? std::min<int64_t>(end - st - 1, j + window - 1) : end - st - 1;
        for (int64_t h = kvh * G; h < (kvh + 1) * G; h++) {
          for (int64_t i = j; i <= hi; i++) {
            const int64_t tq = st + i;
            const float p = std::exp(score(tq, h, t, kvh) - L[h * T + tq]);
            const float ds = dscore(tq, h, t, kvh, p) * scale;
            const float* qi = &Q[(tq * Hq + h) * D];
            const float* doi = &dO[(tq * Hq + h) * D];
            for (int64_t d = 0; d < D; d++) {
              av[d] += p * doi[d];
              ak[d] += ds * qi[d];
            }
          }
        }
      }
      for (int64_t d = 0; d < D; d++) {
        store(dk, (t * Hkv + kvh) * D + d, ak[d]);
        store(dv, (t * Hkv + kvh) * D + d, av[d]);
      }
    }
  });
  if (dsinks) {
    float* ds = dsinks->data<float>();
    parallel_for(Hq, 1, [&](int64_t b, int64_t e) {
      for (int64_t h = b; h < e; h++) {
        double acc = 0.0;
        if (sinks)
          for (int64_t t = 0; t < T; t++)
            if (m.valid[t]) acc += std::exp(static_cast<double>(sink[h]) - L[h * T + t]) * Di[h * T + t];
        ds[h] = static_cast<float>(-acc);
      }
    });
  }
}

void attention_decode(const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& seqlens, const Tensor* sinks,
                      int window, float scale, const Tensor& out) {
  const int64_t B = q.dim(0), Hq = q.dim(1), D = q.dim(2), Smax = kc.dim(1), Hkv = kc.dim(2), G = Hq / Hkv;
  const std::vector<float> Q = widen(q), sink = sink_values(sinks, Hq);
  const int32_t* lens = seqlens.data<int32_t>();
  const bool kf32 = kc.dtype == DType::F32;
  auto ld = [&](const Tensor& t, int64_t i) { return kf32 ? t.data<float>()[i] : to_f32(t.data<bf16>()[i]); };
  parallel_for(B * Hq, 4, [&](int64_t b0, int64_t e0) {
    std::vector<float> s, acc(D);
    for (int64_t it = b0; it < e0; it++) {
      const int64_t b = it / Hq, h = it % Hq, kvh = h / G;
      const int64_t len = lens[b];
      GPTOSS_CHECK(len >= 1 && len <= Smax, "attentionDecode: seqLens[", b, "] = ", len, " outside [1, ", Smax, "]");
      const int64_t i = len - 1, lo = window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
      const float* qi = &Q[(b * Hq + h) * D];
      s.assign(i - lo + 1, 0.f);
      float mx = sink[h];
      for (int64_t j = lo; j <= i; j++) {
        float dot = 0.f;
        for (int64_t d = 0; d < D; d++) dot += qi[d] * ld(kc, ((b * Smax + j) * Hkv + kvh) * D + d);
        s[j - lo] = dot * scale;
        mx = std::max(mx, s[j - lo]);
      }
      float sum = std::exp(sink[h] - mx);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = lo; j <= i; j++) {
        const float p = std::exp(s[j - lo] - mx);
        sum += p;
        for (int64_t d = 0; d < D; d++) acc[d] += p * ld(vc, ((b * Smax + j) * Hkv + kvh) * D + d);
      }
      for (int64_t d = 0; d < D; d++) store(out, (b * Hq + h) * D + d, acc[d] / sum);
    }
  });
}

}  // namespace gptoss::cpu
