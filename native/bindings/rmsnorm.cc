// rmsnorm.cc: bindings for rmsnormForward / addRmsnorm / rmsnormBackward.
#include <cmath>

#include "../cpu/rmsnorm.h"
#include "args.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/rmsnorm.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

// rmsnormForward(x bf16|f32 [..., H], w bf16|f32 [H], eps) -> { y: x's dtype [..., H], rstd: f32 [...] }
GPTOSS_OP(rmsnormForward) {
  const char* op = "rmsnormForward";
  Tensor& x = tensor_arg(info, 0, op, "x");
  Tensor& w = tensor_arg(info, 1, op, "w");
  double eps = num_arg(info, 2, op, "eps");
  GPTOSS_CHECK(x.ndim() >= 1, op, ": x must have at least one dimension, got ", x.describe());
  check_float(op, "x", x);
  check_float(op, "w", w);
  check_shape(op, "w", w, {x.dim(-1)});
  check_device(op, x, "w", w);
  GPTOSS_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be a finite non-negative number, got ", eps);
  Tensor y = make_tensor(x.shape, x.dtype, x.device);
  Tensor rstd = make_tensor(shape_without_last(x), DType::F32, x.device);
  float e = static_cast<float>(eps);
  GPTOSS_DISPATCH(x, cpu::rmsnorm_forward(x, w, e, y, rstd), cuda::rmsnorm_forward(x, w, e, y, rstd));
  return tensor_object(info.Env(), {{"y", y}, {"rstd", rstd}});
}

// addRmsnorm(x bf16|f32 [..., H], o bf16|f32 like x, w bf16|f32 [H], eps) -> { h: x's dtype [..., H], y: x's dtype
// [..., H], rstd: f32 [...] }: h = x + o rounded to x's dtype (as elementwiseAdd / elementwiseAddInPlace round it),
// then y, rstd = rmsnormForward(h, w, eps), bitwise (one launch on CUDA).
GPTOSS_OP(addRmsnorm) {
  const char* op = "addRmsnorm";
  Tensor& x = tensor_arg(info, 0, op, "x");
  Tensor& o = tensor_arg(info, 1, op, "o");
  Tensor& w = tensor_arg(info, 2, op, "w");
  double eps = num_arg(info, 3, op, "eps");
  GPTOSS_CHECK(x.ndim() >= 1, op, ": x must have at least one dimension, got ", x.describe());
  check_float(op, "x", x);
  check_float(op, "o", o);
  check_float(op, "w", w);
  check_shape(op, "o", o, x.shape);
  check_shape(op, "w", w, {x.dim(-1)});
  check_device(op, x, "o", o);
  check_device(op, x, "w", w);
  GPTOSS_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be a finite non-negative number, got ", eps);
  Tensor h = make_tensor(x.shape, x.dtype, x.device);
  Tensor y = make_tensor(x.shape, x.dtype, x.device);
  Tensor rstd = make_tensor(shape_without_last(x), DType::F32, x.device);
  float e = static_cast<float>(eps);
  GPTOSS_DISPATCH(x, cpu::add_rmsnorm_forward(x, o, w, e, h, y, rstd), cuda::add_rmsnorm_forward(x, o, w, e, h, y, rstd));
  return tensor_object(info.Env(), {{"h", h}, {"y", y}, {"rstd", rstd}});
}

// rmsnormBackward(dy bf16|f32 like x, x, w, rstd f32 [...], residual? f32 like x) -> { dx: f32 like x, dw: f32 [H] }
// residual, when given, is added to dx (the residual branch's gradient, without a separate pass).
GPTOSS_OP(rmsnormBackward) {
  const char* op = "rmsnormBackward";
  Tensor& dy = tensor_arg(info, 0, op, "dy");
  Tensor& x = tensor_arg(info, 1, op, "x");
  Tensor& w = tensor_arg(info, 2, op, "w");
  Tensor& rstd = tensor_arg(info, 3, op, "rstd");
  GPTOSS_CHECK(x.ndim() >= 1, op, ": x must have at least one dimension, got ", x.describe());
  check_float(op, "dy", dy);
  check_float(op, "x", x);
  check_float(op, "w", w);
  check_shape(op, "dy", dy, x.shape);
  check_shape(op, "w", w, {x.dim(-1)});
  check_dtype(op, "rstd", rstd, DType::F32);
  check_shape(op, "rstd", rstd, shape_without_last(x));
  check_device(op, x, "dy", dy);
  check_device(op, x, "w", w);
  check_device(op, x, "rstd", rstd);
  const Tensor* res = nullptr;
  if (info.Length() > 4 && !info[4].IsUndefined() && !info[4].IsNull()) {
    res = &tensor_arg(info, 4, op, "residual");
    check_dtype(op, "residual", *res, DType::F32);
    check_shape(op, "residual", *res, x.shape);
    check_device(op, x, "residual", *res);
  }
  Tensor dx = make_tensor(x.shape, DType::F32, x.device);
  Tensor dw = make_tensor({x.dim(-1)}, DType::F32, x.device);
  GPTOSS_DISPATCH(x, cpu::rmsnorm_backward(dy, x, w, rstd, res, dx, dw),
                  cuda::rmsnorm_backward(dy, x, w, rstd, res, dx, dw));
  return tensor_object(info.Env(), {{"dx", dx}, {"dw", dw}});
}
