// sampling.h: token sampling from logits (temperature, top-k, top-p), seeded and backend-independent.
//
// Per row b of logits [B, V] (f32):  z = logits / temperature;  the allowed set is {v : z_v >= τ} where τ is the
// larger of the k-th largest z (top-k; ties at the threshold are all kept) and the smallest z of the nucleus (the
// highest-z entries, among the top-k ones, whose probability mass reaches top_p; again ties kept). The token is
// argmax_{allowed} z_v + Gumbel(seed, step, b, v) (the Gumbel-max trick: an exact draw from softmax(z) on the
// allowed set), ties to the lowest id; its log-prob is z_tok - log Σ_{allowed} e^z. Thresholds are found by a
// bitwise search over an order-preserving integer key of z with double-precision sums, identically on CPU and CUDA,
// so both draw the same tokens. temperature 0 = greedy: argmax of the logits (lowest id on ties), log-prob under
// the unscaled softmax (the processed distribution being a point mass).
#pragma once
#include <cstdint>

#include "../common/tensor.h"

namespace gptoss::cpu {

// top_p in (0, 1] (1 = off), top_k 0 = off. tokens i32 [B], logprobs f32 [B] preallocated.
void sample(const Tensor& logits, float temperature, float top_p, int64_t top_k, uint64_t seed, uint64_t step,
            const Tensor& tokens, const Tensor& logprobs);

// Every row with its own parameters and noise key: logits f32 or bf16 [B, V]; temperature f32 [B] (0 = greedy),
// top_p f32 [B] in (0, 1], top_k i32 [B] (0 = off), seeds i32 [B] (bits read as unsigned 32-bit), counters i32 [B]
// (>= 0). Row b draws with the key of (seed_b, counter_b) alone (row_key(seed_b, counter_b, 0)), so its token does
// not depend on which row it occupies or what else is in the batch, and a row equals sample() of that row alone
// with seed = seed_b, step = counter_b. Checks every row's values and throws naming the first bad one.
void sample_rows(const Tensor& logits, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                 const Tensor& seeds, const Tensor& counters, const Tensor& tokens, const Tensor& logprobs);

// ---- vocabulary-parallel sampling (a tensor-parallel LM head: rank r holds the logits of a vocabulary slice) ----
// sample_parts: the summaries (sampling_parts.h) of each row's slice logits f32|bf16 [S, W], the slice holding
// vocabulary ids vocab_start .. vocab_start + W - 1 of vocab_size (columns past vocab_size, the padding of an uneven
// last slice, are ignored; vocab_start < vocab_size): parts u8 [S, 32] (one SamplePart per row; the
// CUDA form may write several chunks per row). The noise of id j is the one-pass sampler's (row_key(seed_b,
// counter_b, 0), j) and winners carry whole-vocabulary ids. Rows that need a threshold search (top-k < V or
// top-p < 1 with temperature > 0) get a placeholder: the caller gathers their logits instead. Checks the rows'
// values as sample_rows does.
void sample_parts(const Tensor& logits, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                  const Tensor& seeds, const Tensor& counters, int64_t vocab_start, int64_t vocab_size,
                  const Tensor& parts);

// sample_combine: parts u8 [R, S, C * 32] (R slices in vocabulary order, e.g. gathered from R ranks, each with C
// chunks per row, also in order) -> tokens i32 [S], logprobs f32 [S]: for the summarised rows the token of
// sample_rows over the whole row (and its log-prob up to summation order); -1 and NaN for the threshold rows.
void sample_combine(const Tensor& parts, const Tensor& temperature, const Tensor& top_p, const Tensor& top_k,
                    int64_t vocab_size, const Tensor& tokens, const Tensor& logprobs);

}  // namespace gptoss::cpu
