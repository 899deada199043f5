// optim.cc (bindings):
//   adamwStep(master, grad, m, v, bf16|null, lr, beta1, beta2, eps, weightDecay, step, gradScale)   (in place; the
//     step reads grad * gradScale, the pending grad-clip factor, and leaves grad itself unchanged)
//   sumOfSquaresInto(t, acc)        acc f32 [1] += Σ t²    (no host sync; read acc once for many tensors)
//   optimScaleInPlace(t, s)         t *= s (f32 or bf16)
#include <cmath>

#include "../cpu/optim.h"
#include "binding.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/optim.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

GPTOSS_OP(adamwStep) {
  const char* op = "adamwStep";
  Tensor& master = tensor_arg(info, 0, op, "master");
  Tensor& grad = tensor_arg(info, 1, op, "grad");
  Tensor& m = tensor_arg(info, 2, op, "m");
  Tensor& v = tensor_arg(info, 3, op, "v");
  auto copy = opt_tensor_arg(info, 4, op, "bf16");
  const double lr = num_arg(info, 5, op, "lr"), b1 = num_arg(info, 6, op, "beta1"), b2 = num_arg(info, 7, op, "beta2");
  const double eps = num_arg(info, 8, op, "eps"), wd = num_arg(info, 9, op, "weightDecay");
  const int64_t step = int_arg(info, 10, op, "step");
  const double gs = num_arg(info, 11, op, "gradScale");
  check_dtype(op, "master", master, DType::F32);
  for (auto [name, t] : {std::pair<const char*, Tensor*>{"grad", &grad}, {"m", &m}, {"v", &v}}) {
    check_dtype(op, name, *t, DType::F32);
    check_shape(op, name, *t, master.shape);
    check_same_device(op, master, *t);
  }
  if (copy) {
    check_dtype(op, "bf16", *copy, DType::BF16);
    check_shape(op, "bf16", *copy, master.shape);
    check_same_device(op, master, *copy);
  }
  GPTOSS_CHECK(step >= 1, op, ": step is 1-based, got ", step);
  GPTOSS_CHECK(b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1, op, ": betas must be in [0, 1), got ", b1, ", ", b2);
  GPTOSS_CHECK(lr >= 0 && eps > 0 && wd >= 0, op, ": need lr >= 0, eps > 0, weightDecay >= 0; got lr ", lr, ", eps ",
               eps, ", weightDecay ", wd);
  GPTOSS_CHECK(std::isfinite(gs), op, ": gradScale (the grad-clip factor) must be finite, got ", gs);
  AdamwConsts c;
  c.lr = float(lr);
  c.beta1 = float(b1);
  c.beta2 = float(b2);
  c.eps = float(eps);
  c.omb1 = float(1.0 - b1);
  c.omb2 = float(1.0 - b2);
  c.decay = float(1.0 - lr * wd);
  c.step_size = float(lr / (1.0 - std::pow(b1, double(step))));
  c.bc2_sqrt = float(std::sqrt(1.0 - std::pow(b2, double(step))));
  c.grad_scale = float(gs);  // as optimScaleInPlace rounded its factor
  const Tensor* cp = copy ? &*copy : nullptr;
  GPTOSS_DISPATCH(master, cpu::adamw_step(master, grad, m, v, cp, c), cuda::adamw_step(master, grad, m, v, cp, c));
  return info.Env().Undefined();
}

GPTOSS_OP(sumOfSquaresInto) {
  const char* op = "sumOfSquares";
  Tensor& t = tensor_arg(info, 0, op, "tensor");
  Tensor& acc = tensor_arg(info, 1, op, "acc");
  GPTOSS_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16, op, ": tensors must be f32 or bf16, got ", t.describe());
  check_dtype(op, "acc", acc, DType::F32);
  check_shape(op, "acc", acc, {1});
  check_same_device(op, acc, t);
  GPTOSS_DISPATCH(t, cpu::sum_of_squares_into(t, acc), cuda::sum_of_squares_into(t, acc));
  return info.Env().Undefined();
}

GPTOSS_OP(optimScaleInPlace) {
  const char* op = "gradNormAndClip";
  Tensor& t = tensor_arg(info, 0, op, "tensor");
  const float s = static_cast<float>(num_arg(info, 1, op, "scale"));
  GPTOSS_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16, op, ": tensors must be f32 or bf16, got ", t.describe());
  GPTOSS_DISPATCH(t, cpu::scale_in_place(t, s), cuda::scale_in_place(t, s));
  return info.Env().Undefined();
}
