// swiglu.cc: bindings for swigluForward / swigluBackward.
#include <cmath>

#include "../cpu/swiglu.h"
#include "args.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/swiglu.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

static void check_params(const char* op, double limit, double alpha) {
  GPTOSS_CHECK(std::isfinite(limit) && limit > 0, op, ": limit must be a finite positive number, got ", limit);
  GPTOSS_CHECK(std::isfinite(alpha), op, ": alpha must be finite, got ", alpha);
}

static std::vector<int64_t> half_last(const char* op, const Tensor& gu) {
  GPTOSS_CHECK(gu.ndim() >= 1 && gu.dim(-1) % 2 == 0, op, ": gu must be [N, 2I] (even last dimension), got ",
               gu.describe());
  std::vector<int64_t> s = gu.shape;
  s.back() /= 2;
  return s;
}

// swigluForward(gu bf16|f32 [N, 2I] interleaved gate/up, limit, alpha) -> gu's dtype [N, I]
GPTOSS_OP(swigluForward) {
  const char* op = "swigluForward";
  Tensor& gu = tensor_arg(info, 0, op, "gu");
  double limit = num_arg(info, 1, op, "limit"), alpha = num_arg(info, 2, op, "alpha");
  check_float(op, "gu", gu);
  check_params(op, limit, alpha);
  Tensor h = make_tensor(half_last(op, gu), gu.dtype, gu.device);
  float l = static_cast<float>(limit), a = static_cast<float>(alpha);
  GPTOSS_DISPATCH(gu, cpu::swiglu_forward(gu, l, a, h), cuda::swiglu_forward(gu, l, a, h));
  return wrap(info.Env(), h);
}

// swigluBackward(dh bf16|f32 [N, I], gu [N, 2I], limit, alpha) -> f32 [N, 2I]
GPTOSS_OP(swigluBackward) {
  const char* op = "swigluBackward";
  Tensor& dh = tensor_arg(info, 0, op, "dh");
  Tensor& gu = tensor_arg(info, 1, op, "gu");
  double limit = num_arg(info, 2, op, "limit"), alpha = num_arg(info, 3, op, "alpha");
  check_float(op, "dh", dh);
  check_float(op, "gu", gu);
  check_params(op, limit, alpha);
  check_shape(op, "dh", dh, half_last(op, gu));
  check_device(op, gu, "dh", dh);
  Tensor dgu = make_tensor(gu.shape, DType::F32, gu.device);
  float l = static_cast<float>(limit), a = static_cast<float>(alpha);
  GPTOSS_DISPATCH(gu, cpu::swiglu_backward(dh, gu, l, a, dgu), cuda::swiglu_backward(dh, gu, l, a, dgu));
  return wrap(info.Env(), dgu);
}
