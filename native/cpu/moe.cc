// moe.cc: CPU reference of the GPT-OSS MoE block, fp32 math. Forward: plain loops, rows are independent GEMVs
// spread over permuted rows (expert MLPs) and tokens (router, combine). Backward: the expert products (dh, dxp and
// the weight gradients) are per-expert calls of the blocked CPU GEMM (cpu/gemm.h; a per-row dot-product loop
// does not vectorise and was 6x slower), the rest plain loops over tokens and experts. Every index writes its own
// outputs and the GEMM's summation order is fixed, so results do not depend on the thread count.
#include "moe.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "gemm.h"
#include "parallel.h"

namespace gptoss::cpu {

namespace {

inline float bf(const bf16* p, int64_t i) { return bf16_bits_to_f32(p[i].bits); }

// Element i of a bf16 or f32 tensor as float.
inline float at(const Tensor& t, int64_t i) {
  return t.dtype == DType::BF16 ? bf16_bits_to_f32(t.data<bf16>()[i].bits) : t.data<float>()[i];
}

inline float swiglu(float g, float u, float limit) {
  g = std::min(g, limit);
  u = std::max(-limit, std::min(u, limit));
  float s = 1.f / (1.f + std::exp(-kSwigluAlpha * g));
  return (u + 1.f) * g * s;
}

// d/dg and d/du of swiglu given the upstream gradient dh (zero where the clamp is active).
inline void swiglu_grad(float g, float u, float limit, float dh, float& dg, float& du) {
  bool g_pass = g <= limit, u_pass = u >= -limit && u <= limit;
  float gc = std::min(g, limit);
  float uc = std::max(-limit, std::min(u, limit));
  float s = 1.f / (1.f + std::exp(-kSwigluAlpha * gc));
  dg = g_pass ? dh * (uc + 1.f) * (s + gc * kSwigluAlpha * s * (1.f - s)) : 0.f;
  du = u_pass ? dh * gc * s : 0.f;
}

// parallel_for over [0, n) in exactly m = min(n, 4·threads) equal chunks. (The pool's own chunking can
// promise more chunks than it runs when n is not a multiple of its chunk size, and then never returns; asking
// for m items with grain 1 keeps the chunk count exact.)
void pfor(int64_t n, const std::function<void(int64_t, int64_t)>& f) {
  if (n <= 0) return;
  const int64_t m = std::min<int64_t>(n, 4 * static_cast<int64_t>(num_threads()));
  parallel_for(m, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) {
      const int64_t b = n * c / m, e = n * (c + 1) / m;
      if (b < e) f(b, e);
    }
  });
}

// Expert owning permuted row r.
std::vector<int32_t> row_experts(const int32_t* offsets, int64_t E) {
  std::vector<int32_t> re(offsets[E]);
  for (int64_t e = 0; e < E; e++)
    for (int32_t r = offsets[e]; r < offsets[e + 1]; r++) re[r] = static_cast<int32_t>(e);
  return re;
}

// Adds scale·(in·A[e])·B[e] to acc [C] for one routed row: in [K] (fp32 values), A [E,K,r], B [E,r,C].
// The r low-rank values stay fp32 (u, the caller's scratch of r floats).
void lora_row(const float* in, int64_t K, const Tensor& A, const Tensor& Bt, int64_t e, int64_t C, float scale, float* u,
              float* acc) {
  const int64_t r = A.dim(2);
  for (int64_t j = 0; j < r; j++) u[j] = 0.f;
  for (int64_t i = 0; i < K; i++) {
    const float xi = in[i];
    if (xi == 0.f) continue;
    for (int64_t j = 0; j < r; j++) u[j] += xi * at(A, (e * K + i) * r + j);
  }
  for (int64_t j = 0; j < r; j++) {
    const float uj = scale * u[j];
    for (int64_t c = 0; c < C; c++) acc[c] += uj * at(Bt, (e * r + j) * C + c);
  }
}

// Gradients of one expert's adapter pair over its rows r0 .. r0+rows-1 (fp32):
//   u = in·A[e] [rows, r], dU = scale·dout·B[e]ᵀ [rows, r]; dA[e] = inᵀ·dU, dB[e] = scale·uᵀ·dout; din += dU·A[e]ᵀ.
// in [rows, K] and dout [rows, C] fp32 row-major; din (optional) [rows, K] fp32 is added into.
void lora_expert_backward(const float* in, const float* dout, int64_t rows, int64_t K, int64_t C, const Tensor& A,
                          const Tensor& Bt, int64_t e, float scale, float* dA, float* dB, float* din) {
  const int64_t r = A.dim(2);
  std::vector<float> u(r), du(r);
  for (int64_t q = 0; q < rows; q++) {
    const float* xi = in + q * K;
    const float* dy = dout + q * C;
    std::fill(u.begin(), u.end(), 0.f);
    std::fill(du.begin(), du.end(), 0.f);
    for (int64_t i = 0; i < K; i++)
      for (int64_t j = 0; j < r; j++) u[j] += xi[i] * at(A, (e * K + i) * r + j);
    for (int64_t j = 0; j < r; j++) {
      float acc = 0.f;
      for (int64_t c = 0; c < C; c++) acc += dy[c] * at(Bt, (e * r + j) * C + c);
      du[j] = scale * acc;
    }
    for (int64_t j = 0; j < r; j++) {
      const float su = scale * u[j];
      for (int64_t c = 0; c < C; c++) dB[(e * r + j) * C + c] += su * dy[c];
    }
    for (int64_t i = 0; i < K; i++) {
      float acc = 0.f;
      for (int64_t j = 0; j < r; j++) {
        dA[(e * K + i) * r + j] += xi[i] * du[j];
        acc += du[j] * at(A, (e * K + i) * r + j);
      }
      if (din) din[q * K + i] += acc;
    }
  }
}

}  // namespace

void moe_forward(const Tensor& x, const MoeWeights& w, int64_t k, float limit, bool exact, const Tensor* residual, Tensor& y,
                 MoeSaved& s, const MoeLora* lora) {
  const bool lgu = lora && lora->has_gu(), ldown = lora && lora->has_down();
  const int64_t T = x.dim(0), H = x.dim(1), E = w.router_w.dim(0), I = w.down_w.dim(1), I2 = 2 * I;
  const int64_t N = T * k;
  const bf16* X = x.data<bf16>();
  const bf16* Wr = w.router_w.data<bf16>();
  const bf16* Br = w.router_b.data<bf16>();
  const bf16* Wgu = w.gate_up_w.data<bf16>();
  const bf16* Bgu = w.gate_up_b.data<bf16>();
  const bf16* Wd = w.down_w.data<bf16>();
  const bf16* Bd = w.down_b.data<bf16>();
  auto R = [exact](float v) { return exact ? v : round_bf16(v); };

  s.x = x;
  s.top_k = k;
  s.limit = limit;
  s.topk_idx = make_tensor({T, k}, DType::I32, kCpu);
  s.topk_w = make_tensor({T, k}, DType::F32, kCpu);
  int32_t* idx = s.topk_idx.data<int32_t>();
  float* tw = s.topk_w.data<float>();

  // Router: logits = x·Wrᵀ + b; top-k (largest first, ties to the lower expert id); softmax over the k chosen.
  pfor(T, [&](int64_t t0, int64_t t1) {
    std::vector<float> logit(E);
    std::vector<char> taken(E);
    for (int64_t t = t0; t < t1; t++) {
      for (int64_t e = 0; e < E; e++) {
        float acc = 0.f;
        for (int64_t i = 0; i < H; i++) acc += bf(X, t * H + i) * bf(Wr, e * H + i);
        logit[e] = acc + bf(Br, e);
        taken[e] = 0;
      }
      float chosen[64];
      for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++)
          if (!taken[e] && (best < 0 || logit[e] > logit[best])) best = e;
        taken[best] = 1;
        idx[t * k + j] = static_cast<int32_t>(best);
        chosen[j] = logit[best];
      }
      float sum = 0.f;
      for (int64_t j = 0; j < k; j++) sum += std::exp(chosen[j] - chosen[0]);
      for (int64_t j = 0; j < k; j++) tw[t * k + j] = std::exp(chosen[j] - chosen[0]) / sum;
    }
  });

  // Dropless permutation: rows grouped by expert, tokens in increasing order within an expert.
  s.counts = make_tensor({E}, DType::I32, kCpu, true);
  s.offsets = make_tensor({E + 1}, DType::I32, kCpu, true);
  s.perm_tok = make_tensor({N}, DType::I32, kCpu);
  s.slot_pos = make_tensor({N}, DType::I32, kCpu);
  int32_t* counts = s.counts.data<int32_t>();
  int32_t* offsets = s.offsets.data<int32_t>();
  int32_t* perm_tok = s.perm_tok.data<int32_t>();
  int32_t* slot_pos = s.slot_pos.data<int32_t>();
  for (int64_t a = 0; a < N; a++) counts[idx[a]]++;
  for (int64_t e = 0; e < E; e++) offsets[e + 1] = offsets[e] + counts[e];
  std::vector<int32_t> fill(offsets, offsets + E);
  for (int64_t a = 0; a < N; a++) {
    int32_t pos = fill[idx[a]]++;
    perm_tok[pos] = static_cast<int32_t>(a / k);
    slot_pos[a] = pos;
  }
  std::vector<int32_t> rexp = row_experts(offsets, E);

  // Expert MLPs, one permuted row at a time: gu = x·W_gu[e] + b; h = swiglu(gu); yp = h·W_down[e] + b.
  DType sd = exact ? DType::F32 : DType::BF16;
  s.gu = make_tensor({N, I2}, sd, kCpu);
  s.h = make_tensor({N, I}, sd, kCpu);
  s.yp = make_tensor({N, H}, sd, kCpu);
  auto store = [exact](const Tensor& t, int64_t i, float v) {
    if (exact) t.data<float>()[i] = v;
    else t.data<bf16>()[i] = to_bf16(v);
  };
  pfor(N, [&](int64_t r0, int64_t r1) {
    std::vector<float> acc(std::max(I2, H)), hrow(I), xrow(H), u(lora ? std::max<int64_t>(1, std::max(lgu ? lora->gu_a.dim(2) : 1, ldown ? lora->down_a.dim(2) : 1)) : 1);
    for (int64_t r = r0; r < r1; r++) {
      const int64_t e = rexp[r], t = perm_tok[r];
      std::fill(acc.begin(), acc.begin() + I2, 0.f);
      for (int64_t i = 0; i < H; i++) {
        const float xi = bf(X, t * H + i);
        xrow[i] = xi;
        const bf16* wrow = Wgu + (e * H + i) * I2;
        for (int64_t c = 0; c < I2; c++) acc[c] += xi * bf(wrow, c);
      }
      if (lgu) lora_row(xrow.data(), H, lora->gu_a, lora->gu_b, e, I2, lora->scale, u.data(), acc.data());
      for (int64_t c = 0; c < I; c++) {
        float g = R(acc[2 * c] + bf(Bgu, e * I2 + 2 * c));
        float u = R(acc[2 * c + 1] + bf(Bgu, e * I2 + 2 * c + 1));
        store(s.gu, r * I2 + 2 * c, g);
        store(s.gu, r * I2 + 2 * c + 1, u);
        hrow[c] = R(swiglu(g, u, limit));
        store(s.h, r * I + c, hrow[c]);
      }
      std::fill(acc.begin(), acc.begin() + H, 0.f);
      for (int64_t i = 0; i < I; i++) {
        const float hi = hrow[i];
        const bf16* wrow = Wd + (e * I + i) * H;
        for (int64_t c = 0; c < H; c++) acc[c] += hi * bf(wrow, c);
      }
      if (ldown) lora_row(hrow.data(), I, lora->down_a, lora->down_b, e, H, lora->scale, u.data(), acc.data());
      for (int64_t c = 0; c < H; c++) store(s.yp, r * H + c, R(acc[c] + bf(Bd, e * H + c)));
    }
  });

  // Combine back to token order with the routing weights.
  y = make_tensor({T, H}, DType::BF16, kCpu);
  bf16* Y = y.data<bf16>();
  const bf16* Res = residual ? residual->data<bf16>() : nullptr;
  pfor(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++)
      for (int64_t c = 0; c < H; c++) {
        float acc = 0.f;
        for (int64_t j = 0; j < k; j++) acc += tw[t * k + j] * at(s.yp, slot_pos[t * k + j] * H + c);
        Y[t * H + c] = Res ? to_bf16(to_f32(Res[t * H + c]) + round_bf16(acc)) : to_bf16(acc);
      }
  });
}

void moe_backward(const Tensor& dy, const MoeWeights& w, const MoeSaved& s, bool exact, MoeGrads& g, const MoeLora* lora) {
  const bool lgu = lora && lora->has_gu(), ldown = lora && lora->has_down();
  const int64_t T = s.x.dim(0), H = s.x.dim(1), E = w.router_w.dim(0), I = w.down_w.dim(1), I2 = 2 * I;
  const int64_t k = s.top_k, N = T * k;
  const float limit = s.limit;
  const bf16* X = s.x.data<bf16>();
  const bf16* Wr = w.router_w.data<bf16>();
  const bf16* Wgu = w.gate_up_w.data<bf16>();
  const bf16* Wd = w.down_w.data<bf16>();
  const int32_t* idx = s.topk_idx.data<int32_t>();
  const float* tw = s.topk_w.data<float>();
  const int32_t* offsets = s.offsets.data<int32_t>();
  const int32_t* perm_tok = s.perm_tok.data<int32_t>();
  const int32_t* slot_pos = s.slot_pos.data<int32_t>();
  auto R = [exact](float v) { return exact ? v : round_bf16(v); };

  // Per token: gradient of each routing weight (dy·yp), the scaled output gradient of each row, and the
  // softmax backward over the k chosen logits.
  std::vector<float> dyp(N * H), dlp(N), dgu(N * I2), dxp(N * H);
  std::vector<float> dl(N);  // by assignment (t, j)
  pfor(T, [&](int64_t t0, int64_t t1) {
    float dw[64];
    for (int64_t t = t0; t < t1; t++) {
      float dot = 0.f;
      for (int64_t j = 0; j < k; j++) {
        const int64_t r = slot_pos[t * k + j];
        float acc = 0.f;
        for (int64_t c = 0; c < H; c++) {
          const float d = at(dy, t * H + c);
          acc += d * at(s.yp, r * H + c);
          dyp[r * H + c] = R(tw[t * k + j] * d);
        }
        dw[j] = acc;
        dot += tw[t * k + j] * acc;
      }
      for (int64_t j = 0; j < k; j++) {
        const float d = tw[t * k + j] * (dw[j] - dot);
        dl[t * k + j] = d;
        dlp[slot_pos[t * k + j]] = d;
      }
    }
  });

  // Per expert e (rows offsets[e]..offsets[e+1]-1): dh = dyp·W_down[e]ᵀ, dgu = swiglu'(gu)·dh,
  // dxp = dgu·W_gu[e]ᵀ. The products go through the blocked CPU GEMM (a per-row dot product loop does not
  // vectorise and re-reads the expert's weights for every row).
  std::vector<float> dh(N * I);
  const DType sd = exact ? DType::F32 : DType::BF16;
  auto rows_of = [&](int64_t e) { return static_cast<int64_t>(offsets[e + 1] - offsets[e]); };
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = offsets[e], rows = rows_of(e);
    if (rows == 0) continue;
    gemm_raw(rows, I, H, 1.f, {dyp.data() + r0 * H, DType::F32, H, false}, {Wd + e * I * H, DType::BF16, H, true},
             nullptr, DType::F32, 0.f, dh.data() + r0 * I, DType::F32, I);
  }
  // Down adapters: dh += scale·(dyp·B_d[e]ᵀ)·A_d[e]ᵀ before the SwiGLU backward; their gradients per expert.
  if (ldown) {
    const int64_t r = lora->down_a.dim(2);
    g.d_lora_down_a = make_tensor({E, I, r}, DType::F32, kCpu, true);
    g.d_lora_down_b = make_tensor({E, r, H}, DType::F32, kCpu, true);
    pfor(E, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; e++) {
        const int64_t r0 = offsets[e], rows = rows_of(e);
        if (rows == 0) continue;
        std::vector<float> hin(rows * I);
        for (int64_t q = 0; q < rows * I; q++) hin[q] = at(s.h, r0 * I + q);
        lora_expert_backward(hin.data(), dyp.data() + r0 * H, rows, I, H, lora->down_a, lora->down_b, e, lora->scale,
                             g.d_lora_down_a.data<float>(), g.d_lora_down_b.data<float>(), dh.data() + r0 * I);
      }
    });
  }
  pfor(N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
      for (int64_t i = 0; i < I; i++) {
        float dg, du;
        swiglu_grad(at(s.gu, r * I2 + 2 * i), at(s.gu, r * I2 + 2 * i + 1), limit, dh[r * I + i], dg, du);
        dgu[r * I2 + 2 * i] = R(dg);
        dgu[r * I2 + 2 * i + 1] = R(du);
      }
  });
  for (int64_t e = 0; e < E; e++) {
    const int64_t r0 = offsets[e], rows = rows_of(e);
    if (rows == 0) continue;
    gemm_raw(rows, H, I2, 1.f, {dgu.data() + r0 * I2, DType::F32, I2, false},
             {Wgu + e * H * I2, DType::BF16, I2, true}, nullptr, DType::F32, 0.f, dxp.data() + r0 * H, DType::F32, H);
  }
  // x rows in expert order (the gate_up adapters' and the weight gradients' input).
  std::vector<float> xp(N * H);
  pfor(N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
      for (int64_t c = 0; c < H; c++) xp[r * H + c] = bf(X, perm_tok[r] * H + c);
  });
  // Gate_up adapters: dxp += scale·(dgu·B_gu[e]ᵀ)·A_gu[e]ᵀ; their gradients per expert.
  if (lgu) {
    const int64_t r = lora->gu_a.dim(2);
    g.d_lora_gu_a = make_tensor({E, H, r}, DType::F32, kCpu, true);
    g.d_lora_gu_b = make_tensor({E, r, I2}, DType::F32, kCpu, true);
    pfor(E, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; e++) {
        const int64_t r0 = offsets[e], rows = rows_of(e);
        if (rows == 0) continue;
        lora_expert_backward(xp.data() + r0 * H, dgu.data() + r0 * I2, rows, H, I2, lora->gu_a, lora->gu_b, e,
                             lora->scale, g.d_lora_gu_a.data<float>(), g.d_lora_gu_b.data<float>(), dxp.data() + r0 * H);
      }
    });
  }
  if (!exact) pfor(N * H, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) dxp[i] = round_bf16(dxp[i]);
  });

  if (g.weight_grads) {
    g.d_down_w = make_tensor({E, I, H}, DType::F32, kCpu, true);
    g.d_gate_up_w = make_tensor({E, H, I2}, DType::F32, kCpu, true);
  }
  g.d_down_b = make_tensor({E, H}, DType::F32, kCpu, true);
  g.d_gate_up_b = make_tensor({E, I2}, DType::F32, kCpu, true);
  g.d_router_w = make_tensor({E, H}, DType::F32, kCpu, true);
  g.d_router_b = make_tensor({E}, DType::F32, kCpu, true);
  float* dWd = g.weight_grads ? g.d_down_w.data<float>() : nullptr;
  float* dBd = g.d_down_b.data<float>();
  float* dWgu = g.weight_grads ? g.d_gate_up_w.data<float>() : nullptr;
  float* dBgu = g.d_gate_up_b.data<float>();
  float* dWr = g.d_router_w.data<float>();
  float* dBr = g.d_router_b.data<float>();

  // Weight gradients, per expert: dW_down[e] = h_eᵀ·dyp_e, dW_gu[e] = x[perm]_eᵀ·dgu_e (GEMMs over the rows).
  for (int64_t e = 0; g.weight_grads && e < E; e++) {
    const int64_t r0 = offsets[e], rows = rows_of(e);
    if (rows == 0) continue;
    const void* h_e = exact ? static_cast<const void*>(s.h.data<float>() + r0 * I)
                            : static_cast<const void*>(s.h.data<bf16>() + r0 * I);
    gemm_raw(I, H, rows, 1.f, {h_e, sd, I, true}, {dyp.data() + r0 * H, DType::F32, H, false}, nullptr, DType::F32,
             0.f, dWd + e * I * H, DType::F32, H);
    gemm_raw(H, I2, rows, 1.f, {xp.data() + r0 * H, DType::F32, H, true}, {dgu.data() + r0 * I2, DType::F32, I2, false},
             nullptr, DType::F32, 0.f, dWgu + e * H * I2, DType::F32, I2);
  }
  pfor(E, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; e++)
      for (int32_t r = offsets[e]; r < offsets[e + 1]; r++) {
        const int64_t t = perm_tok[r];
        for (int64_t c = 0; c < H; c++) dBd[e * H + c] += dyp[r * H + c];
        for (int64_t q = 0; q < I2; q++) dBgu[e * I2 + q] += dgu[r * I2 + q];
        for (int64_t c = 0; c < H; c++) dWr[e * H + c] += dlp[r] * bf(X, t * H + c);
        dBr[e] += dlp[r];
      }
  });

  // dx: the k rows of each token plus the router's path (logit gradients times router weights).
  g.dx = make_tensor({T, H}, DType::F32, kCpu);
  float* dX = g.dx.data<float>();
  pfor(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++)
      for (int64_t c = 0; c < H; c++) {
        float acc = 0.f;
        for (int64_t j = 0; j < k; j++) {
          acc += dxp[slot_pos[t * k + j] * H + c];
          acc += dl[t * k + j] * bf(Wr, idx[t * k + j] * H + c);
        }
        dX[t * H + c] = acc;
      }
  });
}

}  // namespace gptoss::cpu
