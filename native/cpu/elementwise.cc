// elementwise.cc: CPU reference for add/scale/cast/fill/dropout.
#include "elementwise.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "dropout_rng.h"
#include "parallel.h"

namespace gptoss::cpu {

namespace {

template <typename T>
inline void put(T* p, float v) {
  if constexpr (std::is_same_v<T, bf16>) *p = to_bf16(v);
  else *p = v;
}

// Calls f(typed pointer) for a bf16 or f32 tensor.
template <typename F>
void with_float(const Tensor& t, F&& f) {
  if (t.dtype == DType::BF16) f(t.data<bf16>());
  else f(t.data<float>());
}

constexpr int64_t kGrain = 1 << 14;

}  // namespace

void ew_add(const Tensor& a, const Tensor& b, const Tensor& out) {
  int64_t n = out.numel();
  with_float(a, [&](auto* pa) {
    with_float(b, [&](auto* pb) {
      with_float(out, [&](auto* po) {
        parallel_for(n, kGrain, [&](int64_t s, int64_t e) {
          for (int64_t i = s; i < e; i++) put(po + i, to_f32(pa[i]) + to_f32(pb[i]));
        });
      });
    });
  });
}

void ew_scale(const Tensor& a, float sc, const Tensor& out) {
  int64_t n = out.numel();
  with_float(a, [&](auto* pa) {
    with_float(out, [&](auto* po) {
      parallel_for(n, kGrain, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; i++) put(po + i, to_f32(pa[i]) * sc);
      });
    });
  });
}

void ew_cast(const Tensor& a, const Tensor& out) {
  int64_t n = out.numel();
  if (a.dtype == out.dtype) {
    std::memcpy(out.raw(), a.raw(), out.nbytes());
    return;
  }
  if (a.dtype == DType::I32) {
    const int32_t* pa = a.data<int32_t>();
    float* po = out.data<float>();
    parallel_for(n, kGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; i++) po[i] = static_cast<float>(pa[i]);
    });
    return;
  }
  with_float(a, [&](auto* pa) {
    with_float(out, [&](auto* po) {
      parallel_for(n, kGrain, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; i++) put(po + i, to_f32(pa[i]));
      });
    });
  });
}

void ew_dropout(const Tensor& x, double p, uint64_t seed, uint64_t salt, const Tensor& out) {
  const int64_t n = out.numel();
  const uint64_t key = dropout::mask_key(seed, salt);
  const uint32_t thr = dropout::threshold(p);
  // The kept elements' factor, rounded to f32 once (as torch's x·(1/(1-p))); the product is rounded to out's dtype.
  const float inv = static_cast<float>(1.0 / (1.0 - p));
  with_float(x, [&](auto* px) {
    with_float(out, [&](auto* po) {
      parallel_for(n, kGrain, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; i++) put(po + i, dropout::keep(key, uint64_t(i), thr) ? to_f32(px[i]) * inv : 0.f);
      });
    });
  });
}

void concat_columns(const Tensor& parts, const Tensor& out) {
  const int64_t R = parts.dim(0), S = parts.dim(1), W = parts.dim(2), N = out.dim(1);
  const int64_t es = static_cast<int64_t>(dtype_size(parts.dtype));
  const auto* src = static_cast<const uint8_t*>(parts.raw());
  auto* dst = static_cast<uint8_t*>(out.raw());
  for (int64_t r = 0; r < R; r++) {
    const int64_t w = std::max<int64_t>(0, std::min(W, N - r * W));  // slice r's columns that are kept
    for (int64_t s = 0; s < S; s++) std::memcpy(dst + (s * N + r * W) * es, src + (r * S + s) * W * es, w * es);
  }
}

void ew_fill(const Tensor& a, double value) {
  int64_t n = a.numel();
  switch (a.dtype) {
    case DType::BF16: {
      bf16 v = to_bf16(static_cast<float>(value));
      bf16* p = a.data<bf16>();
      for (int64_t i = 0; i < n; i++) p[i] = v;
      break;
    }
    case DType::F32: {
      float v = static_cast<float>(value);
      float* p = a.data<float>();
      for (int64_t i = 0; i < n; i++) p[i] = v;
      break;
    }
    case DType::I32: {
      int32_t v = static_cast<int32_t>(value);
      int32_t* p = a.data<int32_t>();
      for (int64_t i = 0; i < n; i++) p[i] = v;
      break;
    }
    case DType::U8:
      std::memset(a.raw(), static_cast<int>(static_cast<uint8_t>(value)), static_cast<size_t>(n));
      break;
  }
}

}  // namespace gptoss::cpu
