// dropout_rng.h: the counter-based dropout mask shared by the CPU reference (elementwise.cc) and the CUDA kernel
// (elementwise.cu), so both keep the same elements for the same (seed, salt). Nothing is stored: a mask is a pure
// function of (seed, salt, element index), so a backward (or an activation recompute) regenerates the forward's.
// Plain integer arithmetic on splitmix64 (sampling_rng.h, the samplers' counter-based hash); no CUDA headers.
#pragma once
#include <cstdint>

#include "sampling_rng.h"

namespace gptoss::dropout {

// One key per mask: seed (the caller's per-forward seed) and salt (which mask of that forward: the LoRA layers use
// layer index and module, src/model/layer.ts). Distinct multipliers keep (seed, salt) and (salt, seed) apart.
GPTOSS_HD uint64_t mask_key(uint64_t seed, uint64_t salt) {
  return sampling::splitmix64(sampling::splitmix64(seed ^ 0xA0761D6478BD642Full) ^ (salt * 0xE7037ED1A0B428DBull));
}

// The drop threshold of probability p in [0, 1): floor(p·2^32). An element is dropped when its 32 hashed bits are
// below it, so P(drop) = threshold / 2^32 (p rounded down to a multiple of 2^-32).
inline uint32_t threshold(double p) { return static_cast<uint32_t>(p * 4294967296.0); }

// Whether element i of the mask `key` is kept (the high 32 bits of its hash at or above the threshold).
GPTOSS_HD bool keep(uint64_t key, uint64_t i, uint32_t thr) {
  return static_cast<uint32_t>(sampling::splitmix64(key ^ (i * 0xD1B54A32D192ED03ull)) >> 32) >= thr;
}

}  // namespace gptoss::dropout
