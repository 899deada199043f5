// rmsnorm.h: CUDA RMSNorm (declarations; see native/cpu/rmsnorm.h for the math).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cuda {

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd);
// h = x + o, then y, rstd = rmsnorm_forward(h) in one launch (add_fwd_kernel): the same bits as ew_add followed by
// rmsnorm_forward, without their second launch and the re-read of h.
void add_rmsnorm_forward(const Tensor& x, const Tensor& o, const Tensor& w, float eps, const Tensor& h,
                         const Tensor& y, const Tensor& rstd);
// residual (f32 like dx, may be null) is added to dx: the gradient of a residual branch around the norm.
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor* residual,
                      const Tensor& dx, const Tensor& dw);

}  // namespace gptoss::cuda
