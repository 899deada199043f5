// gemm.cc (bindings): matmul(a, b, bias|null, out|null, transA, transB, alpha, accumulate, outDtype|null) -> out
#include "../cpu/gemm.h"
#include "binding.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/gemm.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

static bool is_float(const Tensor& t) { return t.dtype == DType::BF16 || t.dtype == DType::F32; }

GPTOSS_OP(matmul) {
  const char* op = "matmul";
  Tensor& a = tensor_arg(info, 0, op, "a");
  Tensor& b = tensor_arg(info, 1, op, "b");
  auto bias = opt_tensor_arg(info, 2, op, "bias");
  auto outArg = opt_tensor_arg(info, 3, op, "out");
  const bool transA = bool_arg(info, 4, op, "transA"), transB = bool_arg(info, 5, op, "transB");
  const float alpha = static_cast<float>(num_arg(info, 6, op, "alpha"));
  const bool accumulate = bool_arg(info, 7, op, "accumulate");
  std::optional<DType> outDtype;
  if (info.Length() > 8 && info[8].IsString()) outDtype = dtype_arg(info, 8, op, "outDtype");

  GPTOSS_CHECK(a.ndim() == 2 && b.ndim() == 2 && is_float(a) && is_float(b), op,
               ": a and b must be 2-d bf16 or f32 tensors, got a ", a.describe(), " and b ", b.describe());
  check_same_device(op, a, b);
  const int64_t M = transA ? a.dim(1) : a.dim(0), K = transA ? a.dim(0) : a.dim(1);
  const int64_t Kb = transB ? b.dim(1) : b.dim(0), N = transB ? b.dim(0) : b.dim(1);
  GPTOSS_CHECK(K == Kb, op, ": inner dimensions differ: a ", a.describe(), (transA ? " (transposed)" : ""), " and b ",
               b.describe(), (transB ? " (transposed)" : ""), " give [", M, ", ", K, "] x [", Kb, ", ", N, "]");
  if (bias) {
    check_same_device(op, a, *bias);
    GPTOSS_CHECK(bias->ndim() == 1 && bias->dim(0) == N && is_float(*bias), op, ": bias must be bf16 or f32 [", N,
                 "], got ", bias->describe());
  }
  Tensor out;
  if (outArg) {
    out = *outArg;
    check_same_device(op, a, out);
    GPTOSS_CHECK(out.ndim() == 2 && out.dim(0) == M && out.dim(1) == N && is_float(out), op,
                 ": out must be bf16 or f32 [", M, ", ", N, "], got ", out.describe());
    GPTOSS_CHECK(!outDtype || *outDtype == out.dtype, op, ": outDtype ", dtype_name(*outDtype), " differs from out ",
                 out.describe());
  } else {
    GPTOSS_CHECK(!accumulate, op, ": accumulate needs an out tensor");
    DType dt = outDtype ? *outDtype : a.dtype;
    GPTOSS_CHECK(dt == DType::BF16 || dt == DType::F32, op, ": outDtype must be bf16 or f32, got ", dtype_name(dt));
    out = make_tensor({M, N}, dt, a.device);
  }
  const Tensor* bp = bias ? &*bias : nullptr;
  GPTOSS_DISPATCH(a, cpu::gemm(a, b, bp, out, transA, transB, alpha, accumulate),
                  cuda::gemm(a, b, bp, out, transA, transB, alpha, accumulate));
  return outArg ? info[3] : wrap(info.Env(), out);
}
