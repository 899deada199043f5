// attention.cc: bindings for attention with sinks (forward, backward, decode). See native/cpu/attention.h.
#include <cmath>

#include "../cpu/attention.h"
#include "args.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/attention.h"
#endif

namespace gptoss::js {
namespace {

struct VarlenArgs {
  int64_t T, Hq, Hkv, D;
  std::optional<Tensor> used, sinks;
  int max_seqlen, window;
  float scale;
};

// sinks [Hq], f32 or bf16, on the device of q.
void check_sinks(const char* op, const Tensor& sinks, int64_t Hq, const Tensor& q) {
  if (sinks.dtype != DType::F32 && sinks.dtype != DType::BF16) fail(op, ": sinks must be f32 or bf16, got ", sinks.describe());
  check_shape(op, "sinks", sinks, {Hq});
  check_same_device(op, q, sinks);
}

// Shared checks of q/k/v, cuSeqlens, seqUsed and sinks.
VarlenArgs check_varlen(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu,
                        std::optional<Tensor> used, std::optional<Tensor> sinks, int64_t max_seqlen, int64_t window,
                        double scale) {
  VarlenArgs a;
  check_ndim(op, "q", q, 3);
  check_ndim(op, "k", k, 3);
  a.T = q.dim(0), a.Hq = q.dim(1), a.D = q.dim(2), a.Hkv = k.dim(1);
  if (a.Hkv < 1 || a.Hq % a.Hkv != 0)
    fail(op, ": query heads must be a multiple of kv heads, got q ", q.describe(), " and k ", k.describe());
  check_shape(op, "k", k, {a.T, a.Hkv, a.D});
  check_shape(op, "v", v, {a.T, a.Hkv, a.D});
  check_float(op, "q", q);
  check_dtype(op, "k", k, q.dtype);
  check_dtype(op, "v", v, q.dtype);
  check_same_device(op, q, k);
  check_same_device(op, q, v);
  check_dtype(op, "cuSeqlens", cu, DType::I32);
  check_ndim(op, "cuSeqlens", cu, 1);
  if (cu.dim(0) < 2) fail(op, ": cuSeqlens must have at least 2 entries, got ", cu.describe());
  check_same_device(op, q, cu);
  if (used) {
    check_tensor(op, "seqUsed", *used, DType::I32, {cu.dim(0) - 1}, q);
  }
  if (sinks) check_sinks(op, *sinks, a.Hq, q);
  if (max_seqlen < 1) fail(op, ": maxSeqlen must be >= 1, got ", max_seqlen);
  if (window < 0) fail(op, ": window must be >= 0, got ", window);
  if (!(scale > 0) || !std::isfinite(scale)) fail(op, ": scale must be a positive number, got ", scale);
  if (q.is_cuda()) {
    if (q.dtype != DType::BF16) fail(op, ": the CUDA backend needs bf16 q/k/v, got ", q.describe());
    if (a.D != 16 && a.D != 32 && a.D != 64 && a.D != 128)
      fail(op, ": the CUDA backend supports head_dim 16, 32, 64 or 128, got ", q.describe());
  }
  a.used = used;
  a.sinks = sinks;
  a.max_seqlen = static_cast<int>(max_seqlen);
  a.window = static_cast<int>(window);
  a.scale = static_cast<float>(scale);
  return a;
}

const Tensor* ptr(const std::optional<Tensor>& t) { return t ? &*t : nullptr; }

}  // namespace
}  // namespace gptoss::js

using namespace gptoss;
using namespace gptoss::js;

// attentionForward(q, k, v, cuSeqlens, seqUsed|null, sinks|null, maxSeqlen, window, scale) -> { out, lse }
GPTOSS_OP(attentionForward) {
  const char* op = "attentionForward";
  Tensor& q = tensor_arg(info, 0, op, "q");
  Tensor& k = tensor_arg(info, 1, op, "k");
  Tensor& v = tensor_arg(info, 2, op, "v");
  Tensor& cu = tensor_arg(info, 3, op, "cuSeqlens");
  auto a = check_varlen(op, q, k, v, cu, opt_tensor_arg(info, 4, op, "seqUsed"), opt_tensor_arg(info, 5, op, "sinks"),
                        int_arg(info, 6, op, "maxSeqlen"), int_arg(info, 7, op, "window"), num_arg(info, 8, op, "scale"));
  Tensor out = make_tensor({a.T, a.Hq, a.D}, q.dtype, q.device);
  Tensor lse = make_tensor({a.Hq, a.T}, DType::F32, q.device);
  GPTOSS_DISPATCH(q, cpu::attention_forward(q, k, v, ptr(a.sinks), cu, ptr(a.used), a.window, a.scale, out, lse),
                  cuda::attention_forward(q, k, v, ptr(a.sinks), cu, ptr(a.used), a.max_seqlen, a.window, a.scale,
                                          out, lse));
  return tensor_object(info.Env(), {{"out", out}, {"lse", lse}});
}

// attentionBackward(dout, q, k, v, out, lse, cuSeqlens, seqUsed|null, sinks|null, maxSeqlen, window, scale,
//                   gradDtype, deterministic) -> { dq, dk, dv, dsinks? }
GPTOSS_OP(attentionBackward) {
  const char* op = "attentionBackward";
  Tensor& dout = tensor_arg(info, 0, op, "dOut");
  Tensor& q = tensor_arg(info, 1, op, "q");
  Tensor& k = tensor_arg(info, 2, op, "k");
  Tensor& v = tensor_arg(info, 3, op, "v");
  Tensor& out = tensor_arg(info, 4, op, "out");
  Tensor& lse = tensor_arg(info, 5, op, "lse");
  Tensor& cu = tensor_arg(info, 6, op, "cuSeqlens");
  auto a = check_varlen(op, q, k, v, cu, opt_tensor_arg(info, 7, op, "seqUsed"), opt_tensor_arg(info, 8, op, "sinks"),
                        int_arg(info, 9, op, "maxSeqlen"), int_arg(info, 10, op, "window"),
                        num_arg(info, 11, op, "scale"));
  DType gd = parse_dtype(str_arg(info, 12, op, "gradDtype"), op);
  if (gd != DType::BF16 && gd != DType::F32) fail(op, ": gradDtype must be bf16 or f32");
  const bool deterministic = info.Length() > 13 && !info[13].IsUndefined() ? bool_arg(info, 13, op, "deterministic") : true;
  check_shape(op, "dOut", dout, q.shape);
  check_dtype(op, "dOut", dout, q.dtype);
  check_same_device(op, q, dout);
  check_shape(op, "out", out, q.shape);
  check_dtype(op, "out", out, q.dtype);
  check_same_device(op, q, out);
  check_shape(op, "lse", lse, {a.Hq, a.T});
  check_dtype(op, "lse", lse, DType::F32);
  check_same_device(op, q, lse);
  Tensor dq = make_tensor(q.shape, gd, q.device);
  Tensor dk = make_tensor(k.shape, gd, q.device);
  Tensor dv = make_tensor(v.shape, gd, q.device);
  std::optional<Tensor> dsinks;
  if (a.sinks) dsinks = make_tensor({a.Hq}, DType::F32, q.device);
  GPTOSS_DISPATCH(q,
                  cpu::attention_backward(dout, q, k, v, out, lse, ptr(a.sinks), cu, ptr(a.used), a.window, a.scale,
                                          dq, dk, dv, ptr(dsinks)),
                  cuda::attention_backward(dout, q, k, v, out, lse, ptr(a.sinks), cu, ptr(a.used), a.max_seqlen,
                                           a.window, a.scale, dq, dk, dv, ptr(dsinks), deterministic));
  Napi::Object r = tensor_object(info.Env(), {{"dq", dq}, {"dk", dk}, {"dv", dv}});
  if (dsinks) r.Set("dsinks", wrap(info.Env(), *dsinks));
  return r;
}

// attentionDecode(q, kCache, vCache, seqLens, sinks|null, window, scale) -> out [B, Hq, D]
GPTOSS_OP(attentionDecode) {
  const char* op = "attentionDecode";
  Tensor& q = tensor_arg(info, 0, op, "q");
  Tensor& kc = tensor_arg(info, 1, op, "kCache");
  Tensor& vc = tensor_arg(info, 2, op, "vCache");
  Tensor& lens = tensor_arg(info, 3, op, "seqLens");
  auto sinks = opt_tensor_arg(info, 4, op, "sinks");
  int64_t window = int_arg(info, 5, op, "window");
  double scale = num_arg(info, 6, op, "scale");
  check_ndim(op, "q", q, 3);
  check_ndim(op, "kCache", kc, 4);
  const int64_t B = q.dim(0), Hq = q.dim(1), D = q.dim(2), Smax = kc.dim(1), Hkv = kc.dim(2);
  if (Hkv < 1 || Hq % Hkv != 0)
    fail(op, ": query heads must be a multiple of kv heads, got q ", q.describe(), " and kCache ", kc.describe());
  check_shape(op, "kCache", kc, {B, Smax, Hkv, D});
  check_shape(op, "vCache", vc, {B, Smax, Hkv, D});
  check_float(op, "q", q);
  check_dtype(op, "kCache", kc, q.dtype);
  check_dtype(op, "vCache", vc, q.dtype);
  check_dtype(op, "seqLens", lens, DType::I32);
  check_shape(op, "seqLens", lens, {B});
  check_same_device(op, q, kc);
  check_same_device(op, q, vc);
  check_same_device(op, q, lens);
  if (sinks) check_sinks(op, *sinks, Hq, q);
  if (window < 0) fail(op, ": window must be >= 0, got ", window);
  if (q.is_cuda()) {
    if (q.dtype != DType::BF16) fail(op, ": the CUDA backend needs bf16 q and caches, got ", q.describe());
    if (D != 16 && D != 32 && D != 64 && D != 128)
      fail(op, ": the CUDA backend supports head_dim 16, 32, 64 or 128, got ", q.describe());
  }
  Tensor out = make_tensor({B, Hq, D}, q.dtype, q.device);
  GPTOSS_DISPATCH(q, cpu::attention_decode(q, kc, vc, lens, ptr(sinks), static_cast<int>(window),
                                           static_cast<float>(scale), out),
                  cuda::attention_decode(q, kc, vc, lens, ptr(sinks), static_cast<int>(window),
                                         static_cast<float>(scale), out));
  return wrap(info.Env(), out);
}
