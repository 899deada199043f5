// rope.cc: bindings for ropeForward / ropeBackward.
#include <cmath>

#include "../cpu/rope.h"
#include "args.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/rope.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

static void check_rope_args(const char* op, const char* xname, const Tensor& x, const Tensor& pos,
                            const Tensor& inv_freq, double scaling) {
  check_float(op, xname, x);
  GPTOSS_CHECK(x.ndim() == 3, op, ": ", xname, " must be [T, nHeads, D], got ", x.describe());
  GPTOSS_CHECK(x.dim(2) % 2 == 0, op, ": head dim D must be even, got ", x.describe());
  check_dtype(op, "positions", pos, DType::I32);
  check_shape(op, "positions", pos, {x.dim(0)});
  check_dtype(op, "invFreq", inv_freq, DType::F32);
  check_shape(op, "invFreq", inv_freq, {x.dim(2) / 2});
  check_device(op, x, "positions", pos);
  check_device(op, x, "invFreq", inv_freq);
  GPTOSS_CHECK(std::isfinite(scaling), op, ": attentionScaling must be finite, got ", scaling);
}

// ropeForward(x bf16|f32 [T, nHeads, D], positions i32 [T], invFreq f32 [D/2], attentionScaling) -> x's dtype
GPTOSS_OP(ropeForward) {
  const char* op = "ropeForward";
  Tensor& x = tensor_arg(info, 0, op, "x");
  Tensor& pos = tensor_arg(info, 1, op, "positions");
  Tensor& inv = tensor_arg(info, 2, op, "invFreq");
  double sc = num_arg(info, 3, op, "attentionScaling");
  check_rope_args(op, "x", x, pos, inv, sc);
  Tensor y = make_tensor(x.shape, x.dtype, x.device);
  float s = static_cast<float>(sc);
  GPTOSS_DISPATCH(x, cpu::rope_apply(x, pos, inv, s, 1.f, y), cuda::rope_apply(x, pos, inv, s, 1.f, y));
  return wrap(info.Env(), y);
}

// ropeBackward(dy bf16|f32 [T, nHeads, D], positions, invFreq, attentionScaling) -> f32 [T, nHeads, D]
GPTOSS_OP(ropeBackward) {
  const char* op = "ropeBackward";
  Tensor& dy = tensor_arg(info, 0, op, "dy");
  Tensor& pos = tensor_arg(info, 1, op, "positions");
  Tensor& inv = tensor_arg(info, 2, op, "invFreq");
  double sc = num_arg(info, 3, op, "attentionScaling");
  check_rope_args(op, "dy", dy, pos, inv, sc);
  Tensor dx = make_tensor(dy.shape, DType::F32, dy.device);
  float s = static_cast<float>(sc);
  GPTOSS_DISPATCH(dy, cpu::rope_apply(dy, pos, inv, s, -1.f, dx), cuda::rope_apply(dy, pos, inv, s, -1.f, dx));
  return wrap(info.Env(), dx);
}
