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

// ---- fused q/k/v layout -------------------------------------------------------------------------------------
namespace {

template <typename Y>
inline void store(Y* p, float v) {
  if constexpr (std::is_same_v<Y, bf16>) *p = to_bf16(v);
  else *p = v;
}

// Three parts (q, k, v) of `heads[p]` heads of D values each; part p of token t starts at in[p] + t·in_stride[p]
// (elements) and goes to out[p] + t·out_stride[p]. Parts 0 and 1 are rotated, part 2 is copied.
template <typename X, typename Y>
struct QkvParts {
  const X* in[3];
  int64_t in_stride[3];
  Y* out[3];
  int64_t out_stride[3];
  int64_t heads[3];
};

template <typename X, typename Y>
void qkv_apply(const QkvParts<X, Y>& p, const int32_t* pos, const float* inv_freq, float scaling, float sign,
               int64_t t_n, int64_t d) {
  int64_t half = d / 2;
  parallel_for(t_n, 4, [&](int64_t b, int64_t e) {
    std::vector<float> c(half), s(half);
    for (int64_t t = b; t < e; t++) {
      float ps = static_cast<float>(pos[t]);
      for (int64_t j = 0; j < half; j++) {
        float a = ps * inv_freq[j];
        c[j] = std::cos(a) * scaling;
        s[j] = sign * (std::sin(a) * scaling);
      }
      for (int part = 0; part < 3; part++) {
        for (int64_t h = 0; h < p.heads[part]; h++) {
          const X* xr = p.in[part] + t * p.in_stride[part] + h * d;
          Y* yr = p.out[part] + t * p.out_stride[part] + h * d;
          if (part == 2) {
            for (int64_t j = 0; j < d; j++) store(yr + j, to_f32(xr[j]));
            continue;
          }
          for (int64_t j = 0; j < half; j++) {
            float x1 = to_f32(xr[j]), x2 = to_f32(xr[j + half]);
            store(yr + j, x1 * c[j] - x2 * s[j]);
            store(yr + j + half, x2 * c[j] + x1 * s[j]);
          }
        }
      }
    }
  });
}

template <typename X, typename Y>
void qkv_typed(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
               const Tensor& inv_freq, float scaling, float sign, bool pack) {
  int64_t t_n = qkv.dim(0), d = q.dim(2), w = qkv.dim(1);
  const Tensor* parts[3] = {&q, &k, &v};
  QkvParts<X, Y> p{};
  int64_t col = 0;
  for (int i = 0; i < 3; i++) {
    const Tensor& t = *parts[i];
    int64_t hw = t.dim(1) * d;
    p.heads[i] = t.dim(1);
    // Split: the fused buffer is the input (row stride w, column offset col); pack: the output.
    if (!pack) {
      p.in[i] = qkv.data<X>() + col;
      p.in_stride[i] = w;
      p.out[i] = t.data<Y>();
      p.out_stride[i] = hw;
    } else {
      p.in[i] = t.data<X>();
      p.in_stride[i] = hw;
      p.out[i] = qkv.data<Y>() + col;
      p.out_stride[i] = w;
    }
    col += hw;
  }
  qkv_apply(p, positions.data<int32_t>(), inv_freq.data<float>(), scaling, sign, t_n, d);
}

}  // namespace

void rope_qkv(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
              const Tensor& inv_freq, float scaling, float sign, bool pack) {
  DType in = pack ? q.dtype : qkv.dtype, out = pack ? qkv.dtype : q.dtype;
  bool xb = in == DType::BF16, yb = out == DType::BF16;
  if (xb && yb) qkv_typed<bf16, bf16>(qkv, q, k, v, positions, inv_freq, scaling, sign, pack);
  else if (xb) qkv_typed<bf16, float>(qkv, q, k, v, positions, inv_freq, scaling, sign, pack);
  else if (yb) qkv_typed<float, bf16>(qkv, q, k, v, positions, inv_freq, scaling, sign, pack);
  else qkv_typed<float, float>(qkv, q, k, v, positions, inv_freq, scaling, sign, pack);
}

}  // namespace gptoss::cpu
