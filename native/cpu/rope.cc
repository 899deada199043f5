// rope.cc: CPU reference for (YaRN-scaled) RoPE, one token per task: the plain op and the fused q/k/v split/pack
// share one loop over up to three head groups.
#include "rope.h"

#include <cmath>
#include <type_traits>
#include <vector>

#include "parallel.h"

namespace gptoss::cpu {

namespace {

template <typename Y>
inline void store(Y* p, float v) {
  if constexpr (std::is_same_v<Y, bf16>) *p = to_bf16(v);
  else *p = v;
}

// Up to three parts of `heads[p]` heads of D values each; part p of token t starts at in[p] + t·in_stride[p]
// (elements) and goes to out[p] + t·out_stride[p]; rotated, or copied where !rotate[p]. The plain op is one
// rotated part; the fused q/k/v layout is q, k (rotated) and v (copied).
template <typename X, typename Y>
struct RopeParts {
  int n = 0;
  bool rotate[3] = {true, true, false};
  const X* in[3];
  int64_t in_stride[3];
  Y* out[3];
  int64_t out_stride[3];
  int64_t heads[3];
};

template <typename X, typename Y>
void rope_parts(const RopeParts<X, Y>& p, const int32_t* pos, const float* inv_freq, float scaling, float sign,
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
      for (int part = 0; part < p.n; part++) {
        for (int64_t h = 0; h < p.heads[part]; h++) {
          const X* xr = p.in[part] + t * p.in_stride[part] + h * d;
          Y* yr = p.out[part] + t * p.out_stride[part] + h * d;
          if (!p.rotate[part]) {
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
  RopeParts<X, Y> p{};
  p.n = 3;
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
  rope_parts(p, positions.data<int32_t>(), inv_freq.data<float>(), scaling, sign, t_n, d);
}

// The plain op: x [T, heads, D] -> y, one rotated part.
template <typename X, typename Y>
void plain_typed(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scaling, float sign,
                 const Tensor& y) {
  RopeParts<X, Y> p{};
  p.n = 1;
  p.heads[0] = y.dim(1);
  p.in[0] = x.data<X>();
  p.out[0] = y.data<Y>();
  p.in_stride[0] = p.out_stride[0] = y.dim(1) * y.dim(2);
  rope_parts(p, positions.data<int32_t>(), inv_freq.data<float>(), scaling, sign, y.dim(0), y.dim(2));
}

}  // namespace

void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scaling, float sign,
                const Tensor& y) {
  bool xb = x.dtype == DType::BF16, yb = y.dtype == DType::BF16;
  if (xb && yb) plain_typed<bf16, bf16>(x, positions, inv_freq, scaling, sign, y);
  else if (xb) plain_typed<bf16, float>(x, positions, inv_freq, scaling, sign, y);
  else if (yb) plain_typed<float, bf16>(x, positions, inv_freq, scaling, sign, y);
  else plain_typed<float, float>(x, positions, inv_freq, scaling, sign, y);
}

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
