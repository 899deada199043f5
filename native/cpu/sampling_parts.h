// sampling_parts.h: the per-slice summary of a row that the split samplers combine (shared by the CPU reference,
// native/cpu/sampling.cc, and the CUDA kernels, native/cuda/sampling.cu).
//
// A row that needs no top-k/top-p threshold (greedy, or temperature sampling with both off) is decided by values
// that combine exactly over any split of its vocabulary into slices: the max of z, the Gumbel-max winner (score,
// token id; ties to the lowest id) and the normaliser Σ e^(z - max). So a row can be summarised slice by slice (the
// CUDA split layout's chunks of one row; the vocabulary slices of a tensor-parallel LM head, one per rank) and the
// summaries combined: the same token as the one-pass sampler (max and argmax are exact) and its log-prob up to the
// normaliser's summation order (each slice's sum rescaled by e^(max_slice - max), in double).
#pragma once
#include <cstdint>

#include "../common/dtype.h"

namespace gptoss::sampling {

// One slice of one row. 32 bytes; an array of them travels between ranks as bytes (u8 tensors).
struct SamplePart {
  double s;      // Σ_{slice} e^(z_j - mx) (0 when the slice is all -inf)
  double score;  // the slice's winner: greedy, its logit widened to double; else z_j + Gumbel(key, j)
  int64_t idx;   // the winner's token id in the whole vocabulary
  float mx;      // max of z over the slice (greedy: of the logits)
  float z;       // the winner's z (logit / temperature; greedy: the logit)
};
static_assert(sizeof(SamplePart) == 32, "SamplePart travels as 32 bytes");

// Whether a row is decided by summaries: exactly the rows for which the one-pass sampler searches no threshold
// (V: the whole vocabulary, as the one-pass sampler sees it).
GPTOSS_HD bool row_splits(float temperature, float top_p, int32_t top_k, int64_t V) {
  if (temperature == 0.f) return true;
  return !(top_k > 0 && top_k < V) && !(top_p > 0.f && top_p < 1.f);
}

// (score, idx) of b beats a's: higher score, ties to the lower token id.
GPTOSS_HD bool part_beats(double b_score, int64_t b_idx, double a_score, int64_t a_idx) {
  return b_score > a_score || (b_score == a_score && b_idx < a_idx);
}

}  // namespace gptoss::sampling
