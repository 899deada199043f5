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

// sampleRows(logits, temperature, topP, topK, seeds, counters, strategy?) -> { tokens, logprobs }: per-row
// parameters and noise keys (see native/cpu/sampling.h, sample_rows). strategy ('auto' when left out, 'single' or
// 'split'; CUDA logits only) forces the CUDA kernel layout (native/cuda/sampling.h, SampleStrategy): a test knob
// for comparing the two layouts, which draw the same tokens.
GPTOSS_OP(sampleRows) {
  const char* op = "sampleRows";
  Tensor& logits = tensor_arg(info, 0, op, "logits");
  Tensor& temperature = tensor_arg(info, 1, op, "temperature");
  Tensor& top_p = tensor_arg(info, 2, op, "topP");
  Tensor& top_k = tensor_arg(info, 3, op, "topK");
  Tensor& seeds = tensor_arg(info, 4, op, "seeds");
  Tensor& counters = tensor_arg(info, 5, op, "counters");
  GPTOSS_CHECK(logits.ndim() == 2 && (logits.dtype == DType::F32 || logits.dtype == DType::BF16) && logits.dim(1) > 0,
               op, ": logits must be f32 or bf16 [B, V] with V > 0, got ", logits.describe());
  const int64_t B = logits.dim(0);
  check_tensor(op, "temperature", temperature, DType::F32, {B}, logits);
  check_tensor(op, "topP", top_p, DType::F32, {B}, logits);
  check_tensor(op, "topK", top_k, DType::I32, {B}, logits);
  check_tensor(op, "seeds", seeds, DType::I32, {B}, logits);
  check_tensor(op, "counters", counters, DType::I32, {B}, logits);
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
