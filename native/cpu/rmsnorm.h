// rmsnorm.h: GPT-OSS RMSNorm on the CPU. Per row of H values, in fp32:
//   rstd = 1 / sqrt(mean(x^2) + eps),  y = round_to_out_dtype( w * (x * rstd) )   (weight multiply in fp32 too)
#pragma once
#include "../common/tensor.h"

namespace gptoss::cpu {

// x bf16|f32 [R, H] (any leading dims), w bf16|f32 [H], y same dtype as x, rstd f32 [R].
void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd);

// The residual add fused with the norm after it: h = x + o (rounded to x's dtype, as ew_add rounds it), then
// y, rstd = rmsnorm_forward(h): bitwise the same as the two calls. x bf16|f32 [R, H] (any leading dims), o bf16|f32
// like x (either dtype), w bf16|f32 [H]; h and y x's dtype like x, rstd f32 [R].
void add_rmsnorm_forward(const Tensor& x, const Tensor& o, const Tensor& w, float eps, const Tensor& h,
                         const Tensor& y, const Tensor& rstd);

// dy bf16|f32 like x; dx f32 like x; dw f32 [H] (overwritten).
//   g = dy * w,  dx = rstd * (g - x * rstd^2 * mean(g * x)),  dw = sum_rows dy * x * rstd
// residual (f32 like dx, may be null) is added to dx: the gradient of a residual branch around the norm.
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor* residual,
                      const Tensor& dx, const Tensor& dw);

}  // namespace gptoss::cpu
