// optim.cc: CPU AdamW, sum of squares and scaling (see optim.h). Elementwise, split over the thread pool.
#include "optim.h"

#include <cmath>
#include <vector>

#include "parallel.h"

namespace gptoss::cpu {

void adamw_step(const Tensor& master, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor* bf16_copy,
                const AdamwConsts& c) {
  float* p = master.data<float>();
  const float* g = grad.data<float>();
  float* mm = m.data<float>();
  float* vv = v.data<float>();
  bf16* out = bf16_copy ? bf16_copy->data<bf16>() : nullptr;
  parallel_for(master.numel(), 16384, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      float pi = p[i], mi = mm[i], vi = vv[i];
      adamw_element(pi, mi, vi, g[i], c);
      mm[i] = mi;
      vv[i] = vi;
      p[i] = pi;
      if (out) out[i] = to_bf16(pi);
    }
  });
}

void sum_of_squares_into(const Tensor& t, const Tensor& acc) {
  const int64_t n = t.numel();
  const int64_t grain = 65536;
  const int64_t parts = (n + grain - 1) / grain;
  std::vector<double> partial(static_cast<size_t>(parts), 0.0);
  parallel_for(parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t pidx = b; pidx < e; pidx++) {
      const int64_t i0 = pidx * grain, i1 = std::min(n, i0 + grain);
      double s = 0;
      if (t.dtype == DType::F32) {
        const float* x = t.data<float>();
        for (int64_t i = i0; i < i1; i++) s += static_cast<double>(x[i]) * x[i];
      } else {
        const bf16* x = t.data<bf16>();
        for (int64_t i = i0; i < i1; i++) {
          double f = to_f32(x[i]);
          s += f * f;
        }
      }
      partial[pidx] = s;
    }
  });
  double s = 0;
  for (double x : partial) s += x;  // fixed order: independent of the thread count
  acc.data<float>()[0] += static_cast<float>(s);
}

void scale_in_place(const Tensor& t, float s) {
  parallel_for(t.numel(), 65536, [&](int64_t b, int64_t e) {
    if (t.dtype == DType::F32) {
      float* x = t.data<float>();
      for (int64_t i = b; i < e; i++) x[i] *= s;
    } else {
      bf16* x = t.data<bf16>();
      for (int64_t i = b; i < e; i++) x[i] = to_bf16(to_f32(x[i]) * s);
    }
  });
}

}  // namespace gptoss::cpu
