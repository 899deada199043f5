// moe.cc (bindings): moeForward / moeBackward. The saved tensors travel to JS as a plain object (the TS
// MoeContext) and come back positionally to moeBackward.
#include <cmath>

#include "../cpu/elementwise.h"
#include "../cpu/moe.h"
#include "../cpu/rmsnorm.h"
#include "args.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/elementwise.h"
#include "../cuda/moe.h"
#endif

namespace gptoss::js {
namespace {

// Unpacks and checks the six weights against x [T,H]; returns E and I.
MoeWeights weights_arg(const Napi::CallbackInfo& info, size_t i0, const char* op, const Tensor& x, int64_t& E,
                       int64_t& I) {
  MoeWeights w{tensor_arg(info, i0, op, "routerW"),   tensor_arg(info, i0 + 1, op, "routerB"),
               tensor_arg(info, i0 + 2, op, "gateUpW"), tensor_arg(info, i0 + 3, op, "gateUpB"),
               tensor_arg(info, i0 + 4, op, "downW"),   tensor_arg(info, i0 + 5, op, "downB")};
  const int64_t H = x.dim(1);
  check_ndim(op, "routerW", w.router_w, 2);
  E = w.router_w.dim(0);
  GPTOSS_CHECK(E >= 1, op, ": routerW must have at least one expert, got ", w.router_w.describe());
  check_ndim(op, "downW", w.down_w, 3);
  I = w.down_w.dim(1);
  check_shape(op, "routerW", w.router_w, {E, H});
  check_shape(op, "routerB", w.router_b, {E});
  check_shape(op, "gateUpW", w.gate_up_w, {E, H, 2 * I});
  check_shape(op, "gateUpB", w.gate_up_b, {E, 2 * I});
  check_shape(op, "downW", w.down_w, {E, I, H});
  check_shape(op, "downB", w.down_b, {E, H});
  const char* names[6] = {"routerW", "routerB", "gateUpW", "gateUpB", "downW", "downB"};
  const Tensor* ts[6] = {&w.router_w, &w.router_b, &w.gate_up_w, &w.gate_up_b, &w.down_w, &w.down_b};
  for (int i = 0; i < 6; i++) {
    check_dtype(op, names[i], *ts[i], DType::BF16);
    check_same_device(op, x, *ts[i]);
  }
  if (x.is_cuda()) {
    GPTOSS_CHECK(H % 8 == 0 && I % 8 == 0, op, ": the CUDA backend needs hidden and intermediate sizes that are "
                 "multiples of 8, got x ", x.describe(), " and downW ", w.down_w.describe());
  }
  return w;
}

int64_t topk_arg(const Napi::CallbackInfo& info, size_t i, const char* op, int64_t E) {
  int64_t k = int_arg(info, i, op, "topK");
  GPTOSS_CHECK(k >= 1 && k <= E && k <= 32, op, ": topK must be in [1, min(E, 32)] with E = ", E, ", got ", k);
  return k;
}

// Expert adapters at args i0 .. i0+4: guA, guB, downA, downB (each pair both or neither, null/undefined = absent),
// scale. Checked against the weights: guA [E,H,r], guB [E,r,2I], downA [E,I,r'], downB [E,r',H], bf16 or f32.
MoeLora lora_arg(const Napi::CallbackInfo& info, size_t i0, const char* op, const Tensor& x, int64_t E, int64_t I) {
  MoeLora l;
  auto present = [&](size_t i) { return info.Length() > i && !info[i].IsUndefined() && !info[i].IsNull(); };
  const int64_t H = x.dim(1);
  auto pair = [&](size_t i, const char* an, const char* bn, int64_t in, int64_t out, Tensor& a, Tensor& b) {
    GPTOSS_CHECK(present(i) == present(i + 1), op, ": ", an, " and ", bn, " come together (both or neither)");
    if (!present(i)) return;
    a = tensor_arg(info, i, op, an);
    b = tensor_arg(info, i + 1, op, bn);
    check_ndim(op, an, a, 3);
    const int64_t r = a.dim(2);
    GPTOSS_CHECK(r >= 1, op, ": ", an, " must have a rank of at least 1, got ", a.describe());
    check_shape(op, an, a, {E, in, r});
    check_shape(op, bn, b, {E, r, out});
    check_float(op, an, a);
    GPTOSS_CHECK(a.dtype == b.dtype, op, ": ", an, " and ", bn, " must share a dtype, got ", a.describe(), " and ",
                 b.describe());
    check_same_device(op, x, a);
    check_same_device(op, x, b);
  };
  pair(i0, "loraGateUpA", "loraGateUpB", H, 2 * I, l.gu_a, l.gu_b);
  pair(i0 + 2, "loraDownA", "loraDownB", I, H, l.down_a, l.down_b);
  if (l.any()) l.scale = static_cast<float>(num_arg(info, i0 + 4, op, "loraScale"));
  return l;
}

}  // namespace

// moeForward(x, routerW, routerB, gateUpW, gateUpB, downW, downB, topK, limit, exact, residual?, expertGemms?,
//            loraGateUpA?, loraGateUpB?, loraDownA?, loraDownB?, loraScale?, normO?, normW?, normEps?)
//   residual (bf16 [T,H]): y = residual + moe(x) (moe(x) rounded to bf16 first, as a separate add would)
//   normO (bf16|f32 [T,H]), normW (bf16|f32 [H]), normEps: the add + norm before the MoE (preNorm): x is then the
//     residual stream, h = x + normO and normed = rmsnorm(h)·normW (addRmsnorm's bits) come back as normH, normY,
//     normRstd; the MoE runs on normed (the saved x) and y = h + moe(normed) (residual must be absent). On CUDA at
//     decode sizes the fused router computes the add + norm in its launch.
//   expertGemms ('auto' when absent; CUDA: 'decode' or 'grouped' force that kernel family, see cuda/moe.h)
//   lora*: expert adapters (MoeLora in cpu/moe.h)
//   -> { y, x, topkIdx, topkW, counts, offsets, permTok, slotPos, gu, h, yp, expertGemms (the strategy that ran) }
GPTOSS_OP(moeForward) {
  const char* op = "moeForward";
  Tensor& x = tensor_arg(info, 0, op, "x");
  check_dtype(op, "x", x, DType::BF16);
  check_ndim(op, "x", x, 2);
  GPTOSS_CHECK(x.dim(0) >= 1 && x.dim(1) >= 1, op, ": x must have at least one token and one feature, got ",
               x.describe());
  int64_t E = 0, I = 0;
  MoeWeights w = weights_arg(info, 1, op, x, E, I);
  const int64_t k = topk_arg(info, 7, op, E);
  const double limit = num_arg(info, 8, op, "limit");
  GPTOSS_CHECK(limit > 0, op, ": limit must be positive, got ", limit);
  const bool exact = info.Length() > 9 && info[9].IsBoolean() && info[9].As<Napi::Boolean>().Value();
  GPTOSS_CHECK(!exact || !x.is_cuda(), op, ": exact mode is a CPU reference option");
  Tensor residual;
  if (info.Length() > 10 && !info[10].IsUndefined() && !info[10].IsNull()) {
    residual = tensor_arg(info, 10, op, "residual");
    check_tensor(op, "residual", residual, DType::BF16, {x.dim(0), x.dim(1)}, x);
  }
  const Tensor* res = residual.storage ? &residual : nullptr;
  std::string gemms = "auto";
  if (info.Length() > 11 && !info[11].IsUndefined() && !info[11].IsNull()) gemms = str_arg(info, 11, op, "expertGemms");
  GPTOSS_CHECK(gemms == "auto" || gemms == "decode" || gemms == "grouped", op,
               ": expertGemms must be 'auto', 'decode' or 'grouped', got '", gemms, "'");
  GPTOSS_CHECK(gemms == "auto" || x.is_cuda(), op, ": expertGemms '", gemms,
               "' picks CUDA kernels; the CPU backend has one expert path (use 'auto')");
  const MoeLora lora = lora_arg(info, 12, op, x, E, I);
  GPTOSS_CHECK(gemms == "auto" || !lora.any(), op, ": expertGemms '", gemms,
               "' with expert adapters: the adapters have one path (the per-expert GEMMs); use 'auto'");
  const bool pre_norm = info.Length() > 17 && !info[17].IsUndefined() && !info[17].IsNull();
  MoePreNorm pre;
  if (pre_norm) {
    GPTOSS_CHECK(!res, op, ": preNorm adds its own residual (h = x + o): pass no residual with it");
    pre.o = tensor_arg(info, 17, op, "preNorm.o");
    pre.w = tensor_arg(info, 18, op, "preNorm.weight");
    const double eps = num_arg(info, 19, op, "preNorm.eps");
    check_float(op, "preNorm.o", pre.o);
    check_float(op, "preNorm.weight", pre.w);
    check_shape(op, "preNorm.o", pre.o, {x.dim(0), x.dim(1)});
    check_shape(op, "preNorm.weight", pre.w, {x.dim(1)});
    check_device(op, x, "preNorm.o", pre.o);
    check_device(op, x, "preNorm.weight", pre.w);
    GPTOSS_CHECK(std::isfinite(eps) && eps >= 0, op, ": preNorm.eps must be a finite non-negative number, got ", eps);
    pre.eps = static_cast<float>(eps);
  }
  Tensor y, norm_h, norm_y, norm_rstd;
  MoeSaved s;
#ifdef GPTOSS_WITH_CUDA
  const cuda::ExpertGemmChoice choice = gemms == "decode"    ? cuda::ExpertGemmChoice::kDecode
                                        : gemms == "grouped" ? cuda::ExpertGemmChoice::kGrouped
                                                             : cuda::ExpertGemmChoice::kAuto;
#endif
  const MoeLora* lp = lora.any() ? &lora : nullptr;
  if (pre_norm) {
    // CPU: addRmsnorm, then the MoE on its output with h as the residual (the reference the fused router matches).
    auto cpu_pre = [&] {
      norm_h = make_tensor(x.shape, DType::BF16, x.device);
      norm_y = make_tensor(x.shape, DType::BF16, x.device);
      norm_rstd = make_tensor({x.dim(0)}, DType::F32, x.device);
      cpu::add_rmsnorm_forward(x, pre.o, pre.w, pre.eps, norm_h, norm_y, norm_rstd);
      cpu::moe_forward(norm_y, w, k, static_cast<float>(limit), exact, &norm_h, y, s, lp);
    };
    GPTOSS_DISPATCH(x, cpu_pre(),
                    cuda::moe_forward_prenorm(x, pre, w, k, static_cast<float>(limit), y, norm_h, norm_y, norm_rstd, s,
                                              choice, lp));
  } else {
    GPTOSS_DISPATCH(x, cpu::moe_forward(x, w, k, static_cast<float>(limit), exact, res, y, s, lp),
                    cuda::moe_forward(x, w, k, static_cast<float>(limit), res, y, s, choice, lp));
  }
  Napi::Object out = tensor_object(info.Env(), {{"y", y},
                                    {"x", s.x},
                                    {"topkIdx", s.topk_idx},
                                    {"topkW", s.topk_w},
                                    {"counts", s.counts},
                                    {"offsets", s.offsets},
                                    {"permTok", s.perm_tok},
                                    {"slotPos", s.slot_pos},
                                    {"gu", s.gu},
                                    {"h", s.h},
                                    {"yp", s.yp}});
  // CUDA cuBLAS paths: the gathered rows and the host copy of the offsets, so the backward neither gathers
  // again nor waits for the device.
  if (s.xp.storage) out.Set("xp", wrap(info.Env(), s.xp));
  if (s.offsets_host.storage) out.Set("offsetsHost", wrap(info.Env(), s.offsets_host));
  out.Set("expertGemms", Napi::String::New(info.Env(), s.expert_gemms));
  if (pre_norm) {
    out.Set("normH", wrap(info.Env(), norm_h));
    out.Set("normY", wrap(info.Env(), norm_y));
    out.Set("normRstd", wrap(info.Env(), norm_rstd));
  }
  return out;
}

// moeBackward(dy, routerW, routerB, gateUpW, gateUpB, downW, downB, x, topkIdx, topkW, counts, offsets,
//             permTok, slotPos, gu, h, yp, topK, limit, exact, accGateUpW?, accDownW?, xp?, offsetsHost?,
//             weightGrads?, loraGateUpA?, loraGateUpB?, loraDownA?, loraDownB?, loraScale?, accOverwrite?)
//   -> { dx, dRouterW, dRouterB, dGateUpW?, dGateUpB, dDownW?, dDownB, dLoraGateUpA?, dLoraGateUpB?, dLoraDownA?,
//        dLoraDownB? }
// weightGrads false (default true): no dGateUpW / dDownW (a frozen base; accGateUpW/accDownW must then be absent).
// lora*: the adapters the forward used; their gradients come back (fresh f32).
// accGateUpW / accDownW (f32 [E,H,2I] / [E,I,H], optional, both or neither): the expert weight gradients are
// added into them (accOverwrite true: written into them, their contents never read: buffers that hold no gradient
// yet) and they are returned as dGateUpW / dDownW.
GPTOSS_OP(moeBackward) {
  const char* op = "moeBackward";
  Tensor& dy = tensor_arg(info, 0, op, "dy");
  MoeSaved s;
  s.x = tensor_arg(info, 7, op, "ctx.x");
  check_dtype(op, "ctx.x", s.x, DType::BF16);
  check_ndim(op, "ctx.x", s.x, 2);
  int64_t E = 0, I = 0;
  MoeWeights w = weights_arg(info, 1, op, s.x, E, I);
  const int64_t T = s.x.dim(0), H = s.x.dim(1);
  check_float(op, "dy", dy);
  check_shape(op, "dy", dy, {T, H});
  check_same_device(op, s.x, dy);
  const int64_t k = topk_arg(info, 17, op, E);
  const int64_t N = T * k;
  s.top_k = k;
  s.limit = static_cast<float>(num_arg(info, 18, op, "limit"));
  const bool exact = info.Length() > 19 && info[19].IsBoolean() && info[19].As<Napi::Boolean>().Value();
  s.topk_idx = tensor_arg(info, 8, op, "ctx.topkIdx");
  s.topk_w = tensor_arg(info, 9, op, "ctx.topkW");
  s.counts = tensor_arg(info, 10, op, "ctx.counts");
  s.offsets = tensor_arg(info, 11, op, "ctx.offsets");
  s.perm_tok = tensor_arg(info, 12, op, "ctx.permTok");
  s.slot_pos = tensor_arg(info, 13, op, "ctx.slotPos");
  s.gu = tensor_arg(info, 14, op, "ctx.gu");
  s.h = tensor_arg(info, 15, op, "ctx.h");
  s.yp = tensor_arg(info, 16, op, "ctx.yp");
  check_shape(op, "ctx.topkIdx", s.topk_idx, {T, k});
  check_shape(op, "ctx.topkW", s.topk_w, {T, k});
  check_shape(op, "ctx.counts", s.counts, {E});
  check_shape(op, "ctx.offsets", s.offsets, {E + 1});
  // Rows: N, or on CUDA a padded slab layout with more rows (see MoeSaved).
  check_ndim(op, "ctx.permTok", s.perm_tok, 1);
  const int64_t Np = s.perm_tok.dim(0);
  GPTOSS_CHECK(Np == N || (dy.is_cuda() && Np > N), op, ": ctx.permTok must have ", N,
               " rows (T*topK), or on CUDA a padded layout above it; got ", s.perm_tok.describe());
  check_shape(op, "ctx.slotPos", s.slot_pos, {N});
  check_shape(op, "ctx.gu", s.gu, {Np, 2 * I});
  check_shape(op, "ctx.h", s.h, {Np, I});
  check_shape(op, "ctx.yp", s.yp, {Np, H});
  const DType sd = exact ? DType::F32 : DType::BF16;
  check_dtype(op, "ctx.topkIdx", s.topk_idx, DType::I32);
  check_dtype(op, "ctx.topkW", s.topk_w, DType::F32);
  check_dtype(op, "ctx.offsets", s.offsets, DType::I32);
  check_dtype(op, "ctx.permTok", s.perm_tok, DType::I32);
  check_dtype(op, "ctx.slotPos", s.slot_pos, DType::I32);
  check_dtype(op, "ctx.gu", s.gu, sd);
  check_dtype(op, "ctx.h", s.h, sd);
  check_dtype(op, "ctx.yp", s.yp, sd);
  for (const Tensor* t : {&s.topk_idx, &s.topk_w, &s.offsets, &s.perm_tok, &s.slot_pos, &s.gu, &s.h, &s.yp})
    check_same_device(op, s.x, *t);
  // Optional (what a CUDA forward returned): xp bf16 [Np,H] on the device, offsetsHost i32 [E+1] on the host.
  if (info.Length() > 22 && !info[22].IsUndefined() && !info[22].IsNull()) {
    s.xp = tensor_arg(info, 22, op, "ctx.xp");
    check_tensor(op, "ctx.xp", s.xp, DType::BF16, {Np, H}, s.x);
  }
  if (info.Length() > 23 && !info[23].IsUndefined() && !info[23].IsNull()) {
    s.offsets_host = tensor_arg(info, 23, op, "ctx.offsetsHost");
    check_dtype(op, "ctx.offsetsHost", s.offsets_host, DType::I32);
    check_shape(op, "ctx.offsetsHost", s.offsets_host, {E + 1});
    GPTOSS_CHECK(!s.offsets_host.is_cuda(), op, ": ctx.offsetsHost must be a host (cpu) tensor, got ",
                 s.offsets_host.describe());
    const int32_t* oh = s.offsets_host.data<int32_t>();
    GPTOSS_CHECK(oh[0] == 0 && oh[E] == Np, op, ": ctx.offsetsHost must run from 0 to ", Np, " (ctx.permTok rows), got ",
                 oh[0], " .. ", oh[E]);
  }
  MoeGrads g;
  if (info.Length() > 24 && !info[24].IsUndefined() && !info[24].IsNull()) g.weight_grads = bool_arg(info, 24, op, "weightGrads");
  const MoeLora lora = lora_arg(info, 25, op, s.x, E, I);
  const bool acc = info.Length() > 21 && !info[20].IsUndefined() && !info[20].IsNull();
  GPTOSS_CHECK(!acc || g.weight_grads, op, ": accGateUpW/accDownW were given with weightGrads false");
  if (acc) {
    g.acc_gate_up_w = tensor_arg(info, 20, op, "accGateUpW");
    g.acc_down_w = tensor_arg(info, 21, op, "accDownW");
    check_shape(op, "accGateUpW", g.acc_gate_up_w, {E, H, 2 * I});
    check_shape(op, "accDownW", g.acc_down_w, {E, I, H});
    check_dtype(op, "accGateUpW", g.acc_gate_up_w, DType::F32);
    check_dtype(op, "accDownW", g.acc_down_w, DType::F32);
    check_same_device(op, s.x, g.acc_gate_up_w);
    check_same_device(op, s.x, g.acc_down_w);
  }
  if (info.Length() > 30 && !info[30].IsUndefined() && !info[30].IsNull()) g.acc_overwrite = bool_arg(info, 30, op, "accOverwrite");
  GPTOSS_CHECK(acc || !g.acc_overwrite, op, ": accOverwrite needs the buffers accGateUpW/accDownW");
  GPTOSS_DISPATCH(dy, cpu::moe_backward(dy, w, s, exact, g, lora.any() ? &lora : nullptr), cuda::moe_backward(dy, w, s, g, lora.any() ? &lora : nullptr));
  if (acc && !g.accumulated) {  // the backend made fresh gradients: add (or copy) them into the caller's buffers
    if (g.acc_overwrite) {
      copy_tensor(g.acc_gate_up_w, g.d_gate_up_w);
      copy_tensor(g.acc_down_w, g.d_down_w);
    } else {
      GPTOSS_DISPATCH(dy, cpu::ew_add(g.acc_gate_up_w, g.d_gate_up_w, g.acc_gate_up_w),
                      cuda::ew_add(g.acc_gate_up_w, g.d_gate_up_w, g.acc_gate_up_w));
      GPTOSS_DISPATCH(dy, cpu::ew_add(g.acc_down_w, g.d_down_w, g.acc_down_w),
                      cuda::ew_add(g.acc_down_w, g.d_down_w, g.acc_down_w));
    }
    g.d_gate_up_w = g.acc_gate_up_w;
    g.d_down_w = g.acc_down_w;
  }
  Napi::Object out = tensor_object(info.Env(), {{"dx", g.dx},
                                                {"dRouterW", g.d_router_w},
                                                {"dRouterB", g.d_router_b},
                                                {"dGateUpB", g.d_gate_up_b},
                                                {"dDownB", g.d_down_b}});
  const std::pair<const char*, const Tensor*> optional[] = {{"dGateUpW", &g.d_gate_up_w},
                                                            {"dDownW", &g.d_down_w},
                                                            {"dLoraGateUpA", &g.d_lora_gu_a},
                                                            {"dLoraGateUpB", &g.d_lora_gu_b},
                                                            {"dLoraDownA", &g.d_lora_down_a},
                                                            {"dLoraDownB", &g.d_lora_down_b}};
  for (const auto& [name, t] : optional)
    if (t->storage) out.Set(name, wrap(info.Env(), *t));
  return out;
}

}  // namespace gptoss::js
