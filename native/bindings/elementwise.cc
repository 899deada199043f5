// elementwise.cc: bindings for elementwiseAdd/AddInPlace/Scale/ScaleInPlace/Cast/Fill and dropoutForward.
#include <cmath>

#include "../cpu/elementwise.h"
#include "args.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/elementwise.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

// concatColumns(parts [R, S, W], columns = R * W) -> [S, columns]: the R column slices side by side, cut at
// `columns` (an uneven last slice's padding dropped; any dtype).
GPTOSS_OP(concatColumns) {
  const char* op = "concatColumns";
  Tensor& parts = tensor_arg(info, 0, op, "parts");
  check_ndim(op, "parts", parts, 3);
  const int64_t full = parts.dim(0) * parts.dim(2);
  const int64_t columns = info.Length() > 1 && !info[1].IsUndefined() ? int_arg(info, 1, op, "columns") : full;
  GPTOSS_CHECK(columns > full - parts.dim(2) && columns <= full, op, ": columns must be in (", full - parts.dim(2), ", ",
               full, "] for ", parts.dim(0), " slices of ", parts.dim(2), " (only the last slice may be cut), got ", columns);
  Tensor out = make_tensor({parts.dim(1), columns}, parts.dtype, parts.device);
  GPTOSS_DISPATCH(parts, cpu::concat_columns(parts, out), cuda::concat_columns(parts, out));
  return wrap(info.Env(), out);
}

// elementwiseAdd(a, b) -> a + b (same shape and dtype, bf16 or f32)
GPTOSS_OP(elementwiseAdd) {
  const char* op = "add";
  Tensor& a = tensor_arg(info, 0, op, "a");
  Tensor& b = tensor_arg(info, 1, op, "b");
  check_float(op, "a", a);
  GPTOSS_CHECK(a.dtype == b.dtype && a.shape == b.shape, op, ": a and b must have the same shape and dtype, got ",
               a.describe(), " and ", b.describe());
  check_device(op, a, "b", b);
  Tensor out = make_tensor(a.shape, a.dtype, a.device);
  GPTOSS_DISPATCH(a, cpu::ew_add(a, b, out), cuda::ew_add(a, b, out));
  return wrap(info.Env(), out);
}

// elementwiseAddInPlace(a, b): a += b (a bf16|f32, b bf16|f32, same shape)
GPTOSS_OP(elementwiseAddInPlace) {
  const char* op = "addInPlace";
  Tensor& a = tensor_arg(info, 0, op, "a");
  Tensor& b = tensor_arg(info, 1, op, "b");
  check_float(op, "a", a);
  check_float(op, "b", b);
  GPTOSS_CHECK(a.shape == b.shape, op, ": a and b must have the same shape, got ", a.describe(), " and ",
               b.describe());
  check_device(op, a, "b", b);
  GPTOSS_DISPATCH(a, cpu::ew_add(a, b, a), cuda::ew_add(a, b, a));
  return info.Env().Undefined();
}

static float scale_arg(const Napi::CallbackInfo& info, const char* op) {
  double s = num_arg(info, 1, op, "s");
  GPTOSS_CHECK(!std::isnan(s), op, ": s must be a number, got NaN");
  return static_cast<float>(s);
}

// elementwiseScale(a, s) -> a * s (a's dtype)
GPTOSS_OP(elementwiseScale) {
  const char* op = "scale";
  Tensor& a = tensor_arg(info, 0, op, "a");
  check_float(op, "a", a);
  float s = scale_arg(info, op);
  Tensor out = make_tensor(a.shape, a.dtype, a.device);
  GPTOSS_DISPATCH(a, cpu::ew_scale(a, s, out), cuda::ew_scale(a, s, out));
  return wrap(info.Env(), out);
}

// elementwiseScaleInPlace(a, s): a *= s
GPTOSS_OP(elementwiseScaleInPlace) {
  const char* op = "scaleInPlace";
  Tensor& a = tensor_arg(info, 0, op, "a");
  check_float(op, "a", a);
  float s = scale_arg(info, op);
  GPTOSS_DISPATCH(a, cpu::ew_scale(a, s, a), cuda::ew_scale(a, s, a));
  return info.Env().Undefined();
}

// elementwiseCast(a, dtype) -> a converted (bf16 <-> f32, i32 -> f32, or a copy when the dtype is the same)
GPTOSS_OP(elementwiseCast) {
  const char* op = "cast";
  Tensor& a = tensor_arg(info, 0, op, "a");
  DType to = dtype_arg(info, 1, op, "dtype");
  bool ok = a.dtype == to || (is_float(a) && (to == DType::BF16 || to == DType::F32)) ||
            (a.dtype == DType::I32 && to == DType::F32);
  GPTOSS_CHECK(ok, op, ": cannot cast ", a.describe(), " to ", dtype_name(to),
               " (supported: bf16 <-> f32, i32 -> f32, same dtype)");
  Tensor out = make_tensor(a.shape, to, a.device);
  GPTOSS_DISPATCH(a, cpu::ew_cast(a, out), cuda::ew_cast(a, out));
  return wrap(info.Env(), out);
}

// elementwiseFill(a, value): every element = value (rounded to bf16; integer dtypes need an integer in range)
GPTOSS_OP(elementwiseFill) {
  const char* op = "fill";
  Tensor& a = tensor_arg(info, 0, op, "a");
  double v = num_arg(info, 1, op, "value");
  if (a.dtype == DType::I32)
    GPTOSS_CHECK(v == std::floor(v) && v >= -2147483648.0 && v <= 2147483647.0, op, ": value ", v,
                 " is not an i32 for ", a.describe());
  if (a.dtype == DType::U8)
    GPTOSS_CHECK(v == std::floor(v) && v >= 0 && v <= 255, op, ": value ", v, " is not a u8 for ", a.describe());
  GPTOSS_DISPATCH(a, cpu::ew_fill(a, v), cuda::ew_fill(a, v));
  return info.Env().Undefined();
}

// dropoutForward(x, p, seed, salt) -> x·mask/(1-p) (x's shape and dtype, bf16|f32): the mask is the counter-based
// hash of (seed, salt, element index) (native/cpu/dropout_rng.h), the same bits on the CPU and CUDA. seed and salt
// are non-negative integers below 2^53 (exact JS numbers). Its backward is the same call on the gradient.
GPTOSS_OP(dropoutForward) {
  const char* op = "dropoutForward";
  Tensor& x = tensor_arg(info, 0, op, "x");
  check_float(op, "x", x);
  const double p = num_arg(info, 1, op, "p");
  GPTOSS_CHECK(p >= 0 && p < 1, op, ": p must be in [0, 1), got ", p);
  const int64_t seed = int_arg(info, 2, op, "seed");
  const int64_t salt = int_arg(info, 3, op, "salt");
  GPTOSS_CHECK(seed >= 0 && salt >= 0, op, ": seed and salt must be non-negative integers, got ", seed, " and ", salt);
  Tensor out = make_tensor(x.shape, x.dtype, x.device);
  GPTOSS_DISPATCH(x, cpu::ew_dropout(x, p, uint64_t(seed), uint64_t(salt), out),
                  cuda::ew_dropout(x, p, uint64_t(seed), uint64_t(salt), out));
  return wrap(info.Env(), out);
}
