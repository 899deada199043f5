// rope.cc: bindings for ropeForward / ropeBackward.
#include <cmath>

#include "../cpu/kvcache.h"
#include "../cpu/rope.h"
#include "args.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/gemm.h"
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

// The fused q/k/v layout: [T, (Hq + 2·Hkv)·D], q heads, then k heads, then v heads (the output of one projection
// GEMM with the weights stacked as rows). Checks q/k/v-shaped tensors against it.
static void check_qkv_parts(const char* op, const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& pos, const Tensor& inv, double scaling) {
  check_float(op, "qkv", qkv);
  GPTOSS_CHECK(qkv.ndim() == 2, op, ": qkv must be [T, (Hq + 2*Hkv) * D], got ", qkv.describe());
  check_rope_args(op, "q", q, pos, inv, scaling);
  GPTOSS_CHECK(k.ndim() == 3 && v.ndim() == 3, op, ": k and v must be [T, Hkv, D], got ", k.describe(), " and ",
               v.describe());
  GPTOSS_CHECK(k.dtype == q.dtype && v.dtype == q.dtype, op, ": q, k and v must share a dtype, got ", q.describe(),
               ", ", k.describe(), ", ", v.describe());
  check_shape(op, "v", v, k.shape);
  check_shape(op, "k", k, {q.dim(0), k.dim(1), q.dim(2)});
  check_shape(op, "qkv", qkv, {q.dim(0), (q.dim(1) + 2 * k.dim(1)) * q.dim(2)});
  check_device(op, qkv, "q", q);
  check_device(op, qkv, "k", k);
  check_device(op, qkv, "v", v);
  check_device(op, qkv, "positions", pos);
}

// The optional KV-cache write of ropeQkvSplit / ropeQkvProject: kCache, vCache ([M, Hkv, D] in x's dtype, a KV
// cache's flat pools) and slots (i32 [T]) at info[i..i+2], all three given (checked here) or none (not called).
// The head counts and invFreq of the q/k/v split ops: f32 [D/2], at least one query and one kv head.
static void check_heads(const char* op, const Tensor& inv, int64_t hq, int64_t hkv) {
  check_dtype(op, "invFreq", inv, DType::F32);
  GPTOSS_CHECK(inv.ndim() == 1 && hq > 0 && hkv > 0, op, ": need numHeads, numKvHeads > 0 and invFreq [D/2], got ",
               hq, ", ", hkv, ", ", inv.describe());
}

// cache_given: whether any of the three is given (then cache_args wants all three).
static bool cache_given(const Napi::CallbackInfo& info, size_t i) {
  for (size_t j = i; j < i + 3; j++)
    if (info.Length() > j && !info[j].IsUndefined()) return true;
  return false;
}
struct CacheArgs {
  Tensor& k;
  Tensor& v;
  Tensor& slots;
};
static CacheArgs cache_args(const Napi::CallbackInfo& info, size_t i, const char* op, const Tensor& x, int64_t hkv,
                            int64_t d) {
  const auto given = [&](size_t j) { return info.Length() > j && !info[j].IsUndefined(); };
  GPTOSS_CHECK(given(i) && given(i + 1) && given(i + 2), op, ": kCache, vCache and slots go together (got ",
               given(i) ? "kCache" : "no kCache", ", ", given(i + 1) ? "vCache" : "no vCache", ", ",
               given(i + 2) ? "slots" : "no slots", ")");
  Tensor& kc = tensor_arg(info, i, op, "kCache");
  Tensor& vc = tensor_arg(info, i + 1, op, "vCache");
  Tensor& slots = tensor_arg(info, i + 2, op, "slots");
  GPTOSS_CHECK(kc.ndim() == 3 && kc.dim(1) == hkv && kc.dim(2) == d && kc.dtype == x.dtype, op, ": kCache must be ",
               dtype_name(x.dtype), " [M, ", hkv, ", ", d, "] (a flat pool), got ", kc.describe());
  check_shape(op, "vCache", vc, kc.shape);
  check_dtype(op, "vCache", vc, x.dtype);
  check_dtype(op, "slots", slots, DType::I32);
  check_shape(op, "slots", slots, {x.dim(0)});
  check_device(op, x, "kCache", kc);
  check_device(op, x, "vCache", vc);
  check_device(op, x, "slots", slots);
  return {kc, vc, slots};
}

// ropeQkvSplit(qkv bf16|f32 [T, (Hq + 2*Hkv)*D], positions i32 [T], invFreq f32 [D/2], attentionScaling, numHeads,
// numKvHeads, kCache?, vCache?, slots?) -> { q [T, Hq, D] and k [T, Hkv, D] rotated (the forward rope), v [T, Hkv, D]
// copied }, qkv's dtype. With kCache, vCache ([M, Hkv, D] in qkv's dtype: a KV cache's flat pools) and slots (i32
// [T]) the k and v rows also go to rows slots[t] of the caches (slot -1 skips a row), as scatterRows(kCache, k, slots)
// and scatterRows(vCache, v, slots) would put them: on CUDA in the same launch (a decode step's rope and cache write
// in one), on the CPU as those two scatters.
GPTOSS_OP(ropeQkvSplit) {
  const char* op = "ropeQkvSplit";
  Tensor& qkv = tensor_arg(info, 0, op, "qkv");
  Tensor& pos = tensor_arg(info, 1, op, "positions");
  Tensor& inv = tensor_arg(info, 2, op, "invFreq");
  double sc = num_arg(info, 3, op, "attentionScaling");
  int64_t hq = int_arg(info, 4, op, "numHeads"), hkv = int_arg(info, 5, op, "numKvHeads");
  check_float(op, "qkv", qkv);
  check_heads(op, inv, hq, hkv);
  GPTOSS_CHECK(qkv.ndim() == 2, op, ": qkv must be [T, (Hq + 2*Hkv) * D], got ", qkv.describe());
  int64_t d = inv.dim(0) * 2, tn = qkv.dim(0);
  Tensor q = make_tensor({tn, hq, d}, qkv.dtype, qkv.device);
  Tensor k = make_tensor({tn, hkv, d}, qkv.dtype, qkv.device);
  Tensor v = make_tensor({tn, hkv, d}, qkv.dtype, qkv.device);
  check_qkv_parts(op, qkv, q, k, v, pos, inv, sc);
  float s = static_cast<float>(sc);
  if (!cache_given(info, 6)) {
    GPTOSS_DISPATCH(qkv, cpu::rope_qkv(qkv, q, k, v, pos, inv, s, 1.f, false),
                    cuda::rope_qkv(qkv, q, k, v, pos, inv, s, 1.f, false));
    return tensor_object(info.Env(), {{"q", q}, {"k", k}, {"v", v}});
  }
  auto [kc, vc, slots] = cache_args(info, 6, op, qkv, hkv, d);
#ifdef GPTOSS_WITH_CUDA
  const cuda::RopeCacheWrite cw{kc, vc, slots};
#endif
  GPTOSS_DISPATCH(qkv,
                  (cpu::rope_qkv(qkv, q, k, v, pos, inv, s, 1.f, false), cpu::scatter_rows(kc, k, slots),
                   cpu::scatter_rows(vc, v, slots)),
                  cuda::rope_qkv(qkv, q, k, v, pos, inv, s, 1.f, false, &cw));
  return tensor_object(info.Env(), {{"q", q}, {"k", k}, {"v", v}});
}

// ropeQkvProject(x bf16 [T, H], w bf16 [(Hq + 2*Hkv)*D, H], bias bf16|f32 [(Hq + 2*Hkv)*D] | undefined, positions
// i32 [T], invFreq f32 [D/2], attentionScaling, numHeads, numKvHeads, kCache?, vCache?, slots?) -> { q, k, v } as
// ropeQkvSplit(x·wᵀ + bias, ...) gives them (bf16, the same bits as the linear's bf16 output then ropeQkvSplit),
// from one CUDA kernel (gemv.cu: a decode step's q/k/v projection with the rope and the KV-cache write in its
// epilogue), or undefined where that kernel does not take the call (the CPU, more than 8 rows, other dtypes or
// alignments): the caller then runs the linear and ropeQkvSplit (src/ops/rope.ts).
GPTOSS_OP(ropeQkvProject) {
  const char* op = "ropeQkvProject";
  Tensor& x = tensor_arg(info, 0, op, "x");
  Tensor& w = tensor_arg(info, 1, op, "w");
  const bool has_bias = info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull();
  Tensor* bias = has_bias ? &tensor_arg(info, 2, op, "bias") : nullptr;
  Tensor& pos = tensor_arg(info, 3, op, "positions");
  Tensor& inv = tensor_arg(info, 4, op, "invFreq");
  double sc = num_arg(info, 5, op, "attentionScaling");
  int64_t hq = int_arg(info, 6, op, "numHeads"), hkv = int_arg(info, 7, op, "numKvHeads");
  check_float(op, "x", x);
  check_heads(op, inv, hq, hkv);
  const int64_t d = inv.dim(0) * 2, n = (hq + 2 * hkv) * d, tn = x.dim(0);
  GPTOSS_CHECK(x.ndim() == 2, op, ": x must be [T, H], got ", x.describe());
  GPTOSS_CHECK(w.ndim() == 2 && w.dim(0) == n && w.dim(1) == x.dim(1) && is_float(w), op, ": w must be [", n, ", ",
               x.dim(1), "] ((numHeads + 2*numKvHeads) * D rows), got ", w.describe());
  if (bias)
    GPTOSS_CHECK(bias->ndim() == 1 && bias->dim(0) == n && is_float(*bias), op, ": bias must be bf16 or f32 [", n,
                 "], got ", bias->describe());
  check_dtype(op, "positions", pos, DType::I32);
  check_shape(op, "positions", pos, {tn});
  check_device(op, x, "w", w);
  if (bias) check_device(op, x, "bias", *bias);
  check_device(op, x, "positions", pos);
  check_device(op, x, "invFreq", inv);
  GPTOSS_CHECK(std::isfinite(sc), op, ": attentionScaling must be finite, got ", sc);
  const bool with_cache = cache_given(info, 8);
#ifdef GPTOSS_WITH_CUDA
  if (x.device != kCpu && x.dtype == DType::BF16 && cuda::gemv_rope_qkv_applies(x, w, d)) {
    Tensor q = make_tensor({tn, hq, d}, DType::BF16, x.device);
    Tensor k = make_tensor({tn, hkv, d}, DType::BF16, x.device);
    Tensor v = make_tensor({tn, hkv, d}, DType::BF16, x.device);
    if (with_cache) {
      auto [kc, vc, slots] = cache_args(info, 8, op, x, hkv, d);
      const cuda::RopeCacheWrite cw{kc, vc, slots};
      cuda::gemv_rope_qkv(x, w, bias, pos, inv, static_cast<float>(sc), q, k, v, &cw);
    } else {
      cuda::gemv_rope_qkv(x, w, bias, pos, inv, static_cast<float>(sc), q, k, v, nullptr);
    }
    return tensor_object(info.Env(), {{"q", q}, {"k", k}, {"v", v}});
  }
#endif
  if (with_cache) cache_args(info, 8, op, x, hkv, d);  // the same checks either way
  return info.Env().Undefined();
}

// ropeQkvPack(dq [T, Hq, D], dk [T, Hkv, D], dv [T, Hkv, D] (one float dtype), positions, invFreq, attentionScaling,
// outDtype 'bf16'|'f32') -> dqkv [T, (Hq + 2*Hkv)*D]: dq and dk through the backward rope, dv copied
GPTOSS_OP(ropeQkvPack) {
  const char* op = "ropeQkvPack";
  Tensor& dq = tensor_arg(info, 0, op, "dq");
  Tensor& dk = tensor_arg(info, 1, op, "dk");
  Tensor& dv = tensor_arg(info, 2, op, "dv");
  Tensor& pos = tensor_arg(info, 3, op, "positions");
  Tensor& inv = tensor_arg(info, 4, op, "invFreq");
  double sc = num_arg(info, 5, op, "attentionScaling");
  DType out = dtype_arg(info, 6, op, "outDtype");
  GPTOSS_CHECK(out == DType::BF16 || out == DType::F32, op, ": outDtype must be bf16 or f32");
  check_float(op, "dq", dq);
  GPTOSS_CHECK(dq.ndim() == 3 && dk.ndim() == 3, op, ": dq and dk must be [T, heads, D], got ", dq.describe(),
               " and ", dk.describe());
  Tensor dqkv = make_tensor({dq.dim(0), (dq.dim(1) + 2 * dk.dim(1)) * dq.dim(2)}, out, dq.device);
  check_qkv_parts(op, dqkv, dq, dk, dv, pos, inv, sc);
  float s = static_cast<float>(sc);
  GPTOSS_DISPATCH(dq, cpu::rope_qkv(dqkv, dq, dk, dv, pos, inv, s, -1.f, true),
                  cuda::rope_qkv(dqkv, dq, dk, dv, pos, inv, s, -1.f, true));
  return wrap(info.Env(), dqkv);
}
