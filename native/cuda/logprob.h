// logprob.h (CUDA): the fused LM head + log-prob of the target token + entropy, chunked over the vocabulary so that no
// [T, V] fp32 logits exist beyond one [T, chunk] slice. z = (hidden · lmHeadᵀ) / temperature.
//   logprobs[t] = z[t, target_t] - lse[t]     entropy[t] = lse[t] - Σ_v p[t,v] z[t,v]     lse[t] = log Σ_v e^z
// Targets < 0 are ignored (log-prob 0, no gradient); targets >= V are an error.
#pragma once
// Implemented by logprob.cu: chunk GEMMs through cuda::gemm_raw (cuBLAS), softmax statistics in small kernels.
// Targets >= V cannot be checked without a host sync: their log-prob comes out NaN.
#include "../common/tensor.h"

namespace gptoss::cuda {

// hidden [T,H], lmHead [V,H] (both bf16 or both f32), targets i32 [T]; outputs f32 [T] (preallocated).
void token_logprobs(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, float temperature,
                    int64_t chunk, const Tensor& logprobs, const Tensor& entropy, const Tensor& lse);

// Backward: dz = dlogp (onehot - p) [+ dEntropy · (-p (z - E[z]))]; dlogits = dz / temperature.
// d_hidden (f32 [T,H]) and d_lm_head (f32 [V,H]) are accumulated into (either may be null: not needed), or, with
// overwrite_*, written without being read (fresh buffers need no zeroing: dHidden's first chunk writes it whole,
// and each chunk writes its own rows of dLmHead; T = 0 writes nothing). d_entropy and entropy (f32 [T]) are both
// given or both null.
void token_logprobs_backward(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, const Tensor& lse,
                             const Tensor& d_logprobs, const Tensor* d_entropy, const Tensor* entropy,
                             float temperature, int64_t chunk, const Tensor* d_hidden, const Tensor* d_lm_head,
                             bool overwrite_d_hidden = false, bool overwrite_d_lm_head = false);

// Token-chunked alternative (see ../cpu/logprob.h): the forward keeping the [T, V] f32 logits (one GEMM over the
// whole vocabulary and one statistics pass per row; `chunk` orders only the CPU's merge), and the backward from
// them: dlogits [T, V] in the input dtype by one kernel, then one dgrad GEMM (d_hidden f32 [T, H], overwritten) and
// one wgrad GEMM (d_lm_head f32 [V, H], accumulated into; null for a frozen head). No entropy term.
void token_logprobs_keep(const Tensor& hidden, const Tensor& lm_head, const Tensor& targets, float temperature,
                         int64_t chunk, const Tensor& logprobs, const Tensor& entropy, const Tensor& lse,
                         const Tensor& logits);
void token_logprobs_backward_from_logits(const Tensor& logits, const Tensor& hidden, const Tensor& lm_head,
                                         const Tensor& targets, const Tensor& lse, const Tensor& d_logprobs,
                                         float temperature, const Tensor& d_hidden, const Tensor* d_lm_head);

}  // namespace gptoss::cuda
