// logprob.h: the fused LM head + log-prob of the target token + entropy, chunked over the vocabulary so that no
// [T, V] fp32 logits exist beyond one [T, chunk] slice. z = (hidden · lmHeadᵀ) / temperature.
//   logprobs[t] = z[t, target_t] - lse[t]     entropy[t] = lse[t] - Σ_v p[t,v] z[t,v]     lse[t] = log Σ_v e^z
// Targets < 0 are ignored (log-prob 0, no gradient); targets >= V are an error.
#pragma once
#include "../common/tensor.h"

namespace gptoss::cpu {

// hidden [T,H], lmHead [V,H] (both bf16 or both f32), targets i32 [T]; outputs f32 [T] (preallocated).
void token_logprobs(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, float temperature,
                    int64_t chunk, const Tensor& logprobs, const Tensor& entropy, const Tensor& lse);

// Backward: dz = dlogp (onehot - p) [+ dEntropy · (-p (z - E[z]))]; dlogits = dz / temperature.
// d_hidden (f32 [T,H]) and d_lm_head (f32 [V,H]) are accumulated into (either may be null: not needed).
// d_entropy and entropy (f32 [T]) are both given or both null.
void token_logprobs_backward(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, const Tensor& lse,
                             const Tensor& d_logprobs, const Tensor* d_entropy, const Tensor* entropy,
                             float temperature, int64_t chunk, const Tensor* d_hidden, const Tensor* d_lm_head);

// The token-chunked alternative (the loss gradient formed during the forward, src/ops/logprob.ts): the forward of
// a chunk of tokens keeping its full-vocabulary logits f32 [T, V] (logits preallocated; statistics merged per
// vocabulary chunk of `chunk` columns in the order token_logprobs merges them: the same bits for the same chunk),
// and the backward from those logits: dz per vocabulary chunk as token_logprobs_backward forms it (no entropy
// term), then its dgrad and wgrad GEMMs only. d_hidden (f32 [T, H]) is overwritten; d_lm_head (f32 [V, H]) is
// accumulated into, or null (a frozen head).
void token_logprobs_keep(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, float temperature,
                         int64_t chunk, const Tensor& logprobs, const Tensor& entropy, const Tensor& lse,
                         const Tensor& logits);
void token_logprobs_backward_from_logits(const Tensor& logits, const Tensor& hidden, const Tensor& lm_head,
                                         const Tensor& targets, const Tensor& lse, const Tensor& d_logprobs,
                                         float temperature, int64_t chunk, const Tensor& d_hidden,
                                         const Tensor* d_lm_head);

// Chunk size giving a [T, chunk] fp32 buffer of about 256 MB (a multiple of 128, at least 128, at most V): what
// chunk 0 means to the bindings. The TypeScript ops (src/ops/logprob.ts) always pass a chunk, lmHeadChunk(T, V),
// which the models and the memory planner share; it falls back to this same rule where it gives more rows.
inline int64_t default_logprob_chunk(int64_t T, int64_t V) {
  int64_t c = (int64_t(256) << 20) / (4 * (T > 0 ? T : 1));
  c = c / 128 * 128;
  if (c < 128) c = 128;
  return c < V ? c : (V > 0 ? V : 1);
}

}  // namespace gptoss::cpu
