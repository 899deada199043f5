// logprob.cc (bindings):
//   tokenLogprobsForward(hidden, lmHead, targets, temperature, chunk) -> { logprobs, entropy, lse }
//   tokenLogprobsBackward(hidden, lmHead, targets, lse, dLogprobs, temperature, chunk, dLmHead|null,
//                         dEntropy|null, entropy|null, needDHidden, needDLmHead) -> { dHidden|undefined,
//                         dLmHead|undefined }
// chunk 0 picks the native default (a [T, chunk] fp32 buffer of about 256 MB); src/ops/logprob.ts passes its
// lmHeadChunk(T, V) instead.
#include <cmath>

#include "../cpu/logprob.h"
#include "args.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/logprob.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

namespace {

struct LpArgs {
  int64_t T, H, V, chunk;
  float temperature;
};

LpArgs check_common(const char* op, const Tensor& hidden, const Tensor& lm, const Tensor& targets, double temperature,
                    int64_t chunk) {
  GPTOSS_CHECK(hidden.ndim() == 2 && (hidden.dtype == DType::BF16 || hidden.dtype == DType::F32), op,
               ": hidden must be bf16 or f32 [T, H], got ", hidden.describe());
  GPTOSS_CHECK(lm.ndim() == 2 && lm.dtype == hidden.dtype && lm.dim(1) == hidden.dim(1) && lm.dim(0) > 0, op,
               ": lmHead must be ", dtype_name(hidden.dtype), " [V, ", hidden.dim(1), "] with V > 0, got ",
               lm.describe(), " (hidden ", hidden.describe(), ")");
  check_dtype(op, "targets", targets, DType::I32);
  check_shape(op, "targets", targets, {hidden.dim(0)});
  check_same_device(op, hidden, lm);
  check_same_device(op, hidden, targets);
  GPTOSS_CHECK(temperature > 0 && std::isfinite(temperature), op, ": temperature must be > 0, got ", temperature);
  GPTOSS_CHECK(chunk >= 0, op, ": chunk must be >= 0 (0 = default), got ", chunk);
  LpArgs a{hidden.dim(0), hidden.dim(1), lm.dim(0), chunk, static_cast<float>(temperature)};
  if (a.chunk == 0) a.chunk = cpu::default_logprob_chunk(a.T, a.V);
  return a;
}

// A per-token f32 vector [T] beside hidden [T, H].
void check_f32_t(const char* op, const char* name, const Tensor& t, const Tensor& hidden) {
  check_tensor(op, name, t, DType::F32, {hidden.dim(0)}, hidden);
}

}  // namespace

namespace {

// The arguments (hidden, lmHead, targets, temperature, chunk) of both forwards, checked, and their per-token
// outputs f32 [T]: log-probs, entropy, lse.
struct ForwardCall {
  Tensor& hidden;
  Tensor& lm;
  Tensor& targets;
  LpArgs a;
  Tensor lp, ent, lse;
};
ForwardCall forward_call(const Napi::CallbackInfo& info, const char* op) {
  Tensor& hidden = tensor_arg(info, 0, op, "hidden");
  Tensor& lm = tensor_arg(info, 1, op, "lmHead");
  Tensor& targets = tensor_arg(info, 2, op, "targets");
  LpArgs a = check_common(op, hidden, lm, targets, num_arg(info, 3, op, "temperature"), int_arg(info, 4, op, "chunk"));
  return {hidden, lm, targets, a, make_tensor({a.T}, DType::F32, hidden.device), make_tensor({a.T}, DType::F32, hidden.device),
          make_tensor({a.T}, DType::F32, hidden.device)};
}

}  // namespace

GPTOSS_OP(tokenLogprobsForward) {
  ForwardCall f = forward_call(info, "tokenLogprobs");
  GPTOSS_DISPATCH(f.hidden, cpu::token_logprobs(f.hidden, f.lm, f.targets, f.a.temperature, f.a.chunk, f.lp, f.ent, f.lse),
                  cuda::token_logprobs(f.hidden, f.lm, f.targets, f.a.temperature, f.a.chunk, f.lp, f.ent, f.lse));
  return tensor_object(info.Env(), {{"logprobs", f.lp}, {"entropy", f.ent}, {"lse", f.lse}});
}

GPTOSS_OP(tokenLogprobsBackward) {
  const char* op = "tokenLogprobsBackward";
  Tensor& hidden = tensor_arg(info, 0, op, "hidden");
  Tensor& lm = tensor_arg(info, 1, op, "lmHead");
  Tensor& targets = tensor_arg(info, 2, op, "targets");
  Tensor& lse = tensor_arg(info, 3, op, "lse");
  Tensor& dlp = tensor_arg(info, 4, op, "dLogprobs");
  LpArgs a = check_common(op, hidden, lm, targets, num_arg(info, 5, op, "temperature"), int_arg(info, 6, op, "chunk"));
  check_f32_t(op, "lse", lse, hidden);
  check_f32_t(op, "dLogprobs", dlp, hidden);
  auto dLmArg = opt_tensor_arg(info, 7, op, "dLmHead");
  auto dEnt = opt_tensor_arg(info, 8, op, "dEntropy");
  auto ent = opt_tensor_arg(info, 9, op, "entropy");
  const bool needDHidden = info.Length() <= 10 || info[10].IsUndefined() ? true : bool_arg(info, 10, op, "needDHidden");
  // needDLmHead false: a frozen LM head (LoRA training): no [V, H] f32 gradient is allocated or computed.
  const bool needDLmHead = info.Length() <= 11 || info[11].IsUndefined() ? true : bool_arg(info, 11, op, "needDLmHead");
  GPTOSS_CHECK(needDHidden || needDLmHead, op, ": needDHidden and needDLmHead are both false (nothing to compute)");
  GPTOSS_CHECK(needDLmHead || !dLmArg, op, ": dLmHead was given with needDLmHead false");
  GPTOSS_CHECK(dEnt.has_value() == ent.has_value(), op, ": dEntropy and entropy must be given together");
  if (dEnt) {
    check_f32_t(op, "dEntropy", *dEnt, hidden);
    check_f32_t(op, "entropy", *ent, hidden);
  }
  // Fresh outputs: the CPU accumulates into them (zeroed here); CUDA writes them without reading (no zeroing pass
  // over the [V, H] f32 LM-head gradient, 2.3 GB at gpt-oss size), except dLmHead with no tokens to write it.
  const bool on_cuda = hidden.device != kCpu;
  [[maybe_unused]] const bool fresh_dlm = needDLmHead && !dLmArg;  // read by the CUDA branch only
  Tensor dLm;
  if (dLmArg) {
    dLm = *dLmArg;
    check_tensor(op, "dLmHead", dLm, DType::F32, {a.V, a.H}, hidden);
  } else if (needDLmHead) {
    dLm = make_tensor({a.V, a.H}, DType::F32, hidden.device, !on_cuda || a.T == 0);
  }
  const Tensor* dLmP = needDLmHead ? &dLm : nullptr;
  Tensor dH;
  if (needDHidden) dH = make_tensor({a.T, a.H}, DType::F32, hidden.device, !on_cuda);
  const Tensor* dHp = needDHidden ? &dH : nullptr;
  const Tensor* dEp = dEnt ? &*dEnt : nullptr;
  const Tensor* eP = ent ? &*ent : nullptr;
  GPTOSS_DISPATCH(hidden,
                  cpu::token_logprobs_backward(hidden, lm, targets, lse, dlp, dEp, eP, a.temperature, a.chunk, dHp, dLmP),
                  cuda::token_logprobs_backward(hidden, lm, targets, lse, dlp, dEp, eP, a.temperature, a.chunk, dHp, dLmP,
                                                needDHidden, fresh_dlm));
  Napi::Object o = Napi::Object::New(info.Env());
  if (needDHidden) o.Set("dHidden", wrap(info.Env(), dH));
  if (needDLmHead) o.Set("dLmHead", dLmArg ? info[7] : wrap(info.Env(), dLm));
  return o;
}

// tokenLogprobsForwardKeep(hidden, lmHead, targets, temperature, chunk) -> { logprobs, entropy, lse, logits }:
// the forward of a chunk of tokens keeping its logits f32 [T, V] for tokenLogprobsBackwardFromLogits.
GPTOSS_OP(tokenLogprobsForwardKeep) {
  ForwardCall f = forward_call(info, "tokenLogprobsForwardKeep");
  Tensor logits = make_tensor({f.a.T, f.a.V}, DType::F32, f.hidden.device);
  GPTOSS_DISPATCH(f.hidden, cpu::token_logprobs_keep(f.hidden, f.lm, f.targets, f.a.temperature, f.a.chunk, f.lp, f.ent, f.lse, logits),
                  cuda::token_logprobs_keep(f.hidden, f.lm, f.targets, f.a.temperature, f.a.chunk, f.lp, f.ent, f.lse, logits));
  return tensor_object(info.Env(), {{"logprobs", f.lp}, {"entropy", f.ent}, {"lse", f.lse}, {"logits", logits}});
}

// tokenLogprobsBackwardFromLogits(logits, hidden, lmHead, targets, lse, dLogprobs, temperature, chunk, dHidden,
// dLmHead|null): dHidden f32 [T, H] is overwritten, dLmHead f32 [V, H] accumulated into (null: a frozen head).
// chunk: the vocabulary chunk of the CPU's dz buffer and GEMMs (0 = default); CUDA forms all of dlogits at once.
GPTOSS_OP(tokenLogprobsBackwardFromLogits) {
  const char* op = "tokenLogprobsBackwardFromLogits";
  Tensor& logits = tensor_arg(info, 0, op, "logits");
  Tensor& hidden = tensor_arg(info, 1, op, "hidden");
  Tensor& lm = tensor_arg(info, 2, op, "lmHead");
  Tensor& targets = tensor_arg(info, 3, op, "targets");
  Tensor& lse = tensor_arg(info, 4, op, "lse");
  Tensor& dlp = tensor_arg(info, 5, op, "dLogprobs");
  LpArgs a = check_common(op, hidden, lm, targets, num_arg(info, 6, op, "temperature"), int_arg(info, 7, op, "chunk"));
  check_tensor(op, "logits", logits, DType::F32, {a.T, a.V}, hidden);
  check_f32_t(op, "lse", lse, hidden);
  check_f32_t(op, "dLogprobs", dlp, hidden);
  Tensor& dH = tensor_arg(info, 8, op, "dHidden");
  check_tensor(op, "dHidden", dH, DType::F32, {a.T, a.H}, hidden);
  auto dLm = opt_tensor_arg(info, 9, op, "dLmHead");
  if (dLm) check_tensor(op, "dLmHead", *dLm, DType::F32, {a.V, a.H}, hidden);
  const Tensor* dLmP = dLm ? &*dLm : nullptr;
  GPTOSS_DISPATCH(hidden,
                  cpu::token_logprobs_backward_from_logits(logits, hidden, lm, targets, lse, dlp, a.temperature,
                                                           a.chunk, dH, dLmP),
                  cuda::token_logprobs_backward_from_logits(logits, hidden, lm, targets, lse, dlp, a.temperature, dH,
                                                            dLmP));
  return info.Env().Undefined();
}
