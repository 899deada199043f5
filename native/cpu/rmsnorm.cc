// rmsnorm.cc: CPU reference for RMSNorm (fp32 math, one row per task).
#include "rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "parallel.h"

namespace gptoss::cpu {

// One row: rstd = 1/sqrt(mean(x^2) + eps), y = round(w * (x * rstd)). Shared by rmsnorm_forward and
// add_rmsnorm_forward (which runs it on the rounded residual sum), so the two give the same bits.
template <typename X, typename W>
static inline void norm_row(const X* xr, const W* w, float eps, X* yr, float* rstd, int64_t h) {
  float ss = 0.f;
  for (int64_t j = 0; j < h; j++) {
    float v = to_f32(xr[j]);
    ss += v * v;
  }
  float rs = 1.f / std::sqrt(ss / float(h) + eps);
  *rstd = rs;
  for (int64_t j = 0; j < h; j++) {
    float v = to_f32(w[j]) * (to_f32(xr[j]) * rs);
    if constexpr (std::is_same_v<X, bf16>) yr[j] = to_bf16(v); else yr[j] = v;
  }
}

template <typename X, typename W>
static void forward(const X* x, const W* w, float eps, X* y, float* rstd, int64_t rows, int64_t h) {
  parallel_for(rows, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) norm_row(x + r * h, w, eps, y + r * h, rstd + r, h);
  });
}

// Per row: hrow = round_to_X(x + o) (the rounding of ew_add), then norm_row on hrow.
template <typename X, typename O, typename W>
static void add_forward(const X* x, const O* o, const W* w, float eps, X* hs, X* y, float* rstd, int64_t rows,
                        int64_t h) {
  parallel_for(rows, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) {
      X* hr = hs + r * h;
      for (int64_t j = 0; j < h; j++) {
        float v = to_f32(x[r * h + j]) + to_f32(o[r * h + j]);
        if constexpr (std::is_same_v<X, bf16>) hr[j] = to_bf16(v); else hr[j] = v;
      }
      norm_row(static_cast<const X*>(hr), w, eps, y + r * h, rstd + r, h);
    }
  });
}

template <typename D, typename X, typename W>
static void backward(const D* dy, const X* x, const W* w, const float* rstd, const float* res, float* dx, float* dw,
                     int64_t rows, int64_t h) {
  parallel_for(rows, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) {
      const D* dyr = dy + r * h;
      const X* xr = x + r * h;
      float rs = rstd[r];
      float dot = 0.f;
      for (int64_t j = 0; j < h; j++) dot += to_f32(dyr[j]) * to_f32(w[j]) * to_f32(xr[j]);
      float c = rs * rs * dot / float(h);
      float* dxr = dx + r * h;
      for (int64_t j = 0; j < h; j++) dxr[j] = rs * (to_f32(dyr[j]) * to_f32(w[j]) - to_f32(xr[j]) * c);
      if (res)
        for (int64_t j = 0; j < h; j++) dxr[j] += res[r * h + j];
    }
  });
  // dw: fixed chunks of rows give per-chunk partial sums, added in chunk order (deterministic for any thread
  // count).
  const int64_t chunk = 64;
  int64_t nchunks = (rows + chunk - 1) / chunk;
  std::vector<float> part(static_cast<size_t>(nchunks * h), 0.f);
  parallel_for(nchunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; c++) {
      float* p = part.data() + c * h;
      for (int64_t r = c * chunk; r < std::min(rows, (c + 1) * chunk); r++) {
        const D* dyr = dy + r * h;
        const X* xr = x + r * h;
        for (int64_t j = 0; j < h; j++) p[j] += to_f32(dyr[j]) * (to_f32(xr[j]) * rstd[r]);
      }
    }
  });
  for (int64_t j = 0; j < h; j++) dw[j] = 0.f;
  for (int64_t c = 0; c < nchunks; c++)
    for (int64_t j = 0; j < h; j++) dw[j] += part[c * h + j];
}

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd) {
  int64_t h = x.dim(-1), rows = h ? x.numel() / h : 0;
  bool xb = x.dtype == DType::BF16, wb = w.dtype == DType::BF16;
  if (xb && wb) forward(x.data<bf16>(), w.data<bf16>(), eps, y.data<bf16>(), rstd.data<float>(), rows, h);
  else if (xb) forward(x.data<bf16>(), w.data<float>(), eps, y.data<bf16>(), rstd.data<float>(), rows, h);
  else if (wb) forward(x.data<float>(), w.data<bf16>(), eps, y.data<float>(), rstd.data<float>(), rows, h);
  else forward(x.data<float>(), w.data<float>(), eps, y.data<float>(), rstd.data<float>(), rows, h);
}

template <typename X, typename O>
static void add_forward_w(const X* x, const O* o, const Tensor& w, float eps, const Tensor& hs, const Tensor& y,
                          const Tensor& rstd, int64_t rows, int64_t h) {
  if (w.dtype == DType::BF16)
    add_forward(x, o, w.data<bf16>(), eps, hs.data<X>(), y.data<X>(), rstd.data<float>(), rows, h);
  else add_forward(x, o, w.data<float>(), eps, hs.data<X>(), y.data<X>(), rstd.data<float>(), rows, h);
}

template <typename X>
static void add_forward_o(const X* x, const Tensor& o, const Tensor& w, float eps, const Tensor& hs, const Tensor& y,
                          const Tensor& rstd, int64_t rows, int64_t h) {
  if (o.dtype == DType::BF16) add_forward_w(x, o.data<bf16>(), w, eps, hs, y, rstd, rows, h);
  else add_forward_w(x, o.data<float>(), w, eps, hs, y, rstd, rows, h);
}

void add_rmsnorm_forward(const Tensor& x, const Tensor& o, const Tensor& w, float eps, const Tensor& h,
                         const Tensor& y, const Tensor& rstd) {
  int64_t n = x.dim(-1), rows = n ? x.numel() / n : 0;
  if (x.dtype == DType::BF16) add_forward_o(x.data<bf16>(), o, w, eps, h, y, rstd, rows, n);
  else add_forward_o(x.data<float>(), o, w, eps, h, y, rstd, rows, n);
}

template <typename D>
static void backward_d(const D* dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const float* res,
                       const Tensor& dx, const Tensor& dw, int64_t rows, int64_t h) {
  bool xb = x.dtype == DType::BF16, wb = w.dtype == DType::BF16;
  const float* rs = rstd.data<float>();
  float* pdx = dx.data<float>();
  float* pdw = dw.data<float>();
  if (xb && wb) backward(dy, x.data<bf16>(), w.data<bf16>(), rs, res, pdx, pdw, rows, h);
  else if (xb) backward(dy, x.data<bf16>(), w.data<float>(), rs, res, pdx, pdw, rows, h);
  else if (wb) backward(dy, x.data<float>(), w.data<bf16>(), rs, res, pdx, pdw, rows, h);
  else backward(dy, x.data<float>(), w.data<float>(), rs, res, pdx, pdw, rows, h);
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor* residual,
                      const Tensor& dx, const Tensor& dw) {
  int64_t h = x.dim(-1), rows = h ? x.numel() / h : 0;
  const float* res = residual ? residual->data<float>() : nullptr;
  if (dy.dtype == DType::BF16) backward_d(dy.data<bf16>(), x, w, rstd, res, dx, dw, rows, h);
  else backward_d(dy.data<float>(), x, w, rstd, res, dx, dw, rows, h);
}

}  // namespace gptoss::cpu
