// sampling.cc (bindings): sample (one set of parameters for the batch) and sampleRows (per-row parameters).
#include <cmath>
#include <string>

#include "../cpu/sampling.h"
#include "args.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/sampling.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

GPTOSS_OP(sample) {
  const char* op = "sample";
  Tensor& logits = tensor_arg(info, 0, op, "logits");
  const double temperature = num_arg(info, 1, op, "temperature");
  const double top_p = num_arg(info, 2, op, "topP");
  const int64_t top_k = int_arg(info, 3, op, "topK");
  const int64_t seed = int_arg(info, 4, op, "seed");
  const int64_t step = int_arg(info, 5, op, "step");
  GPTOSS_CHECK(logits.ndim() == 2 && logits.dtype == DType::F32 && logits.dim(1) > 0, op,
               ": logits must be f32 [B, V] with V > 0, got ", logits.describe());
  GPTOSS_CHECK(temperature >= 0 && std::isfinite(temperature), op, ": temperature must be >= 0, got ", temperature);
  GPTOSS_CHECK(top_p > 0 && top_p <= 1, op, ": topP must be in (0, 1], got ", top_p);
  GPTOSS_CHECK(top_k >= 0, op, ": topK must be >= 0 (0 = off), got ", top_k);
  GPTOSS_CHECK(seed >= 0 && step >= 0, op, ": seed and step must be non-negative integers, got ", seed, " and ", step);
  const int64_t B = logits.dim(0);
  Tensor tokens = make_tensor({B}, DType::I32, logits.device);
  Tensor lp = make_tensor({B}, DType::F32, logits.device);
  const float t = static_cast<float>(temperature), p = static_cast<float>(top_p);
  GPTOSS_DISPATCH(logits, cpu::sample(logits, t, p, top_k, uint64_t(seed), uint64_t(step), tokens, lp),
                  cuda::sample(logits, t, p, top_k, uint64_t(seed), uint64_t(step), tokens, lp));
  return tensor_object(info.Env(), {{"tokens", tokens}, {"logprobs", lp}});
}

// The per-row parameters every sampler takes: f32/i32 [B] on the logits' device.
static void check_row_params(const char* op, const Tensor& like, int64_t B, const Tensor& temperature,
                             const Tensor& top_p, const Tensor& top_k) {
  check_tensor(op, "temperature", temperature, DType::F32, {B}, like);
  check_tensor(op, "topP", top_p, DType::F32, {B}, like);
  check_tensor(op, "topK", top_k, DType::I32, {B}, like);
}

// Arguments 0..5 of sampleRows and sampleParts: the logits (f32|bf16 [B, V], V > 0) and the five per-row tensors,
// checked against them.
struct RowSampling {
  Tensor& logits;
  Tensor& temperature;
  Tensor& top_p;
  Tensor& top_k;
  Tensor& seeds;
  Tensor& counters;
};
// shape names the logits' dimensions in messages ("[B, V]"), width the second one ("V").
static RowSampling row_sampling_args(const Napi::CallbackInfo& info, const char* op, const char* shape,
                                     const char* width) {
  RowSampling a{tensor_arg(info, 0, op, "logits"), tensor_arg(info, 1, op, "temperature"), tensor_arg(info, 2, op, "topP"),
                tensor_arg(info, 3, op, "topK"),   tensor_arg(info, 4, op, "seeds"),       tensor_arg(info, 5, op, "counters")};
  GPTOSS_CHECK(a.logits.ndim() == 2 && (a.logits.dtype == DType::F32 || a.logits.dtype == DType::BF16) &&
                   a.logits.dim(1) > 0,
               op, ": logits must be f32 or bf16 ", shape, " with ", width, " > 0, got ", a.logits.describe());
  const int64_t B = a.logits.dim(0);
  check_row_params(op, a.logits, B, a.temperature, a.top_p, a.top_k);
  check_tensor(op, "seeds", a.seeds, DType::I32, {B}, a.logits);
  check_tensor(op, "counters", a.counters, DType::I32, {B}, a.logits);
  return a;
}

// sampleRows(logits, temperature, topP, topK, seeds, counters, strategy?) -> { tokens, logprobs }: per-row
// parameters and noise keys (see native/cpu/sampling.h, sample_rows). strategy ('auto' when left out, 'single' or
// 'split'; CUDA logits only) forces the CUDA kernel layout (native/cuda/sampling.h, SampleStrategy): a test knob
// for comparing the two layouts, which draw the same tokens.
GPTOSS_OP(sampleRows) {
  const char* op = "sampleRows";
  auto [logits, temperature, top_p, top_k, seeds, counters] = row_sampling_args(info, op, "[B, V]", "V");
  const int64_t B = logits.dim(0);
  const std::string strategy = info.Length() > 6 && !info[6].IsUndefined() ? str_arg(info, 6, op, "strategy") : "auto";
  GPTOSS_CHECK(strategy == "auto" || strategy == "single" || strategy == "split", op,
               ": strategy must be 'auto', 'single' or 'split', got '", strategy, "'");
  GPTOSS_CHECK(strategy == "auto" || logits.device != kCpu, op, ": strategy '", strategy,
               "' chooses a CUDA kernel layout; the logits are on the CPU (leave it out there)");
  Tensor tokens = make_tensor({B}, DType::I32, logits.device);
  Tensor lp = make_tensor({B}, DType::F32, logits.device);
#ifdef GPTOSS_WITH_CUDA
  const cuda::SampleStrategy layout = strategy == "single"  ? cuda::SampleStrategy::SingleBlock
                                      : strategy == "split" ? cuda::SampleStrategy::Split
                                                            : cuda::SampleStrategy::Auto;
#endif
  GPTOSS_DISPATCH(logits, cpu::sample_rows(logits, temperature, top_p, top_k, seeds, counters, tokens, lp),
                  cuda::sample_rows(logits, temperature, top_p, top_k, seeds, counters, tokens, lp, layout));
  return tensor_object(info.Env(), {{"tokens", tokens}, {"logprobs", lp}});
}

// sampleParts(logits, temperature, topP, topK, seeds, counters, vocabStart, vocabSize) -> u8 [S, C * 32]: the
// summaries of a vocabulary slice's logits f32|bf16 [S, W] (ids vocabStart .. vocabStart + W - 1 of vocabSize; the
// columns past vocabSize, an uneven last slice's padding, are ignored) for
// a vocabulary-parallel sampler (native/cpu/sampling.h, sample_parts; C = 1 on the CPU, the split layout's chunks
// on CUDA, the same on every rank of like devices).
GPTOSS_OP(sampleParts) {
  const char* op = "sampleParts";
  auto [logits, temperature, top_p, top_k, seeds, counters] = row_sampling_args(info, op, "[S, W]", "W");
  const int64_t start = int_arg(info, 6, op, "vocabStart");
  const int64_t vocab = int_arg(info, 7, op, "vocabSize");
  const int64_t S = logits.dim(0);
  GPTOSS_CHECK(start >= 0 && start < vocab, op, ": the slice's first id ", start, " must lie in the vocabulary [0, ",
               vocab, ") (columns past its end are padding)");
  int64_t chunks = 1;
#ifdef GPTOSS_WITH_CUDA
  if (logits.device != kCpu) chunks = cuda::sample_parts_chunks(S, logits.dim(1), logits.device);
#endif
  Tensor parts = make_tensor({S, chunks * 32}, DType::U8, logits.device);
  GPTOSS_DISPATCH(logits, cpu::sample_parts(logits, temperature, top_p, top_k, seeds, counters, start, vocab, parts),
                  cuda::sample_parts(logits, temperature, top_p, top_k, seeds, counters, start, vocab, parts));
  return wrap(info.Env(), parts);
}

// sampleCombine(parts u8 [R, S, C * 32], temperature, topP, topK, vocabSize) -> { tokens, logprobs }: R slices'
// summaries in vocabulary order (e.g. all-gathered from R ranks) combined per row (native/cpu/sampling.h,
// sample_combine): rows that need a threshold search get token -1 and a NaN log-prob.
GPTOSS_OP(sampleCombine) {
  const char* op = "sampleCombine";
  Tensor& parts = tensor_arg(info, 0, op, "parts");
  Tensor& temperature = tensor_arg(info, 1, op, "temperature");
  Tensor& top_p = tensor_arg(info, 2, op, "topP");
  Tensor& top_k = tensor_arg(info, 3, op, "topK");
  const int64_t vocab = int_arg(info, 4, op, "vocabSize");
  GPTOSS_CHECK(parts.ndim() == 3 && parts.dtype == DType::U8 && parts.dim(0) > 0 && parts.dim(2) > 0 &&
                   parts.dim(2) % 32 == 0,
               op, ": parts must be u8 [R, S, C * 32] with R, C > 0 (sampleParts' rows, gathered), got ",
               parts.describe());
  GPTOSS_CHECK(vocab > 0, op, ": vocabSize must be positive, got ", vocab);
  const int64_t S = parts.dim(1);
  check_row_params(op, parts, S, temperature, top_p, top_k);
  Tensor tokens = make_tensor({S}, DType::I32, parts.device);
  Tensor lp = make_tensor({S}, DType::F32, parts.device);
  GPTOSS_DISPATCH(parts, cpu::sample_combine(parts, temperature, top_p, top_k, vocab, tokens, lp),
                  cuda::sample_combine(parts, temperature, top_p, top_k, vocab, tokens, lp));
  return tensor_object(info.Env(), {{"tokens", tokens}, {"logprobs", lp}});
}
