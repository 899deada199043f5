// swiglu.cc: CPU reference for the clamped SwiGLU (flat: output k reads gu[2k] (gate) and gu[2k+1] (up)).
#include "swiglu.h"

#include <cmath>
#include <type_traits>

#include "parallel.h"

namespace gptoss::cpu {

// Comparisons rather than fmin/fmax so that NaN propagates, as torch.clamp does.
static inline float clamp_gate(float g, float limit) { return g > limit ? limit : g; }
static inline float clamp_up(float u, float limit) { return u > limit ? limit : (u < -limit ? -limit : u); }

template <typename G, typename H>
static void fwd(const G* gu, float limit, float alpha, H* h, int64_t n) {
  parallel_for(n, 1 << 13, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; k++) {
      float g = clamp_gate(to_f32(gu[2 * k]), limit);
      float u = clamp_up(to_f32(gu[2 * k + 1]), limit);
      float sg = 1.f / (1.f + std::exp(-alpha * g));
      float v = (u + 1.f) * (g * sg);
      if constexpr (std::is_same_v<H, bf16>) h[k] = to_bf16(v); else h[k] = v;
    }
  });
}

template <typename D, typename G>
static void bwd(const D* dh, const G* gu, float limit, float alpha, float* dgu, int64_t n) {
  parallel_for(n, 1 << 13, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; k++) {
      float g0 = to_f32(gu[2 * k]), u0 = to_f32(gu[2 * k + 1]);
      float g = clamp_gate(g0, limit);
      float u = clamp_up(u0, limit);
      float sg = 1.f / (1.f + std::exp(-alpha * g));
      float d = to_f32(dh[k]);
      // d/dg [g * sigmoid(alpha g)] = s + alpha * g * s * (1 - s)
      float dg = d * (u + 1.f) * (sg + alpha * g * sg * (1.f - sg));
      float du = d * (g * sg);
      dgu[2 * k] = (g0 <= limit) ? dg : 0.f;
      dgu[2 * k + 1] = (u0 >= -limit && u0 <= limit) ? du : 0.f;
    }
  });
}

void swiglu_forward(const Tensor& gu, float limit, float alpha, const Tensor& h) {
  int64_t n = h.numel();
  if (gu.dtype == DType::BF16) {
    if (h.dtype == DType::BF16) fwd(gu.data<bf16>(), limit, alpha, h.data<bf16>(), n);
    else fwd(gu.data<bf16>(), limit, alpha, h.data<float>(), n);
  } else {
    if (h.dtype == DType::BF16) fwd(gu.data<float>(), limit, alpha, h.data<bf16>(), n);
    else fwd(gu.data<float>(), limit, alpha, h.data<float>(), n);
  }
}

void swiglu_backward(const Tensor& dh, const Tensor& gu, float limit, float alpha, const Tensor& dgu) {
  int64_t n = dh.numel();
  if (dh.dtype == DType::BF16) {
    if (gu.dtype == DType::BF16) bwd(dh.data<bf16>(), gu.data<bf16>(), limit, alpha, dgu.data<float>(), n);
    else bwd(dh.data<bf16>(), gu.data<float>(), limit, alpha, dgu.data<float>(), n);
  } else {
    if (gu.dtype == DType::BF16) bwd(dh.data<float>(), gu.data<bf16>(), limit, alpha, dgu.data<float>(), n);
    else bwd(dh.data<float>(), gu.data<float>(), limit, alpha, dgu.data<float>(), n);
  }
}

}  // namespace gptoss::cpu
