// rope.cc: CPU reference for (YaRN-scaled) RoPE, one token per task.
#include "rope.h"

#include <cmath>
#include <type_traits>
#include <vector>

#include "parallel.h"

namespace gptoss::cpu {

template <typename X, typename Y>
static void apply(const X* x, const int32_t* pos, const float* inv_freq, float scaling, float sign, Y* y, int64_t t_n,
                  int64_t heads, int64_t d) {
  int64_t half = d / 2;
  parallel_for(t_n, 4, [&](int64_t b, int64_t e) {
    std::vector<float> c(half), s(half);
    for (int64_t t = b; t < e; t++) {
      float p = static_cast<float>(pos[t]);
      for (int64_t j = 0; j < half; j++) {
        float a = p * inv_freq[j];
        c[j] = std::cos(a) * scaling;
        s[j] = sign * (std::sin(a) * scaling);
      }
      for (int64_t h = 0; h < heads; h++) {
        const X* xr = x + (t * heads + h) * d;
        Y* yr = y + (t * heads + h) * d;
        for (int64_t j = 0; j < half; j++) {
          float x1 = to_f32(xr[j]), x2 = to_f32(xr[j + half]);
          float y1 = x1 * c[j] - x2 * s[j], y2 = x2 * c[j] + x1 * s[j];
          if constexpr (std::is_same_v<Y, bf16>) {
            yr[j] = to_bf16(y1);
            yr[j + half] = to_bf16(y2);
          } else {
            yr[j] = y1;
            yr[j + half] = y2;
          }
        }
      }
    }
  });
}

template <typename X>
static void apply_x(const X* x, const Tensor& positions, const Tensor& inv_freq, float scaling, float sign,
                    const Tensor& y) {
  int64_t t_n = y.dim(0), heads = y.dim(1), d = y.dim(2);
  if (y.dtype == DType::BF16)
    apply(x, positions.data<int32_t>(), inv_freq.data<float>(), scaling, sign, y.data<bf16>(), t_n, heads, d);
  else
    apply(x, positions.data<int32_t>(), inv_freq.data<float>(), scaling, sign, y.data<float>(), t_n, heads, d);
}

void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scaling, float sign,
                const Tensor& y) {
  if (x.dtype == DType::BF16) apply_x(x.data<bf16>(), positions, inv_freq, scaling, sign, y);
  else apply_x(x.data<float>(), positions, inv_freq, scaling, sign, y);
}

}  // namespace gptoss::cpu
