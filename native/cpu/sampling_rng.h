// sampling_rng.h: the counter-based randomness and float ordering shared by the CPU (sampling.cc) and CUDA
// (sampling.cu) samplers, so both draw the same token from the same logits, seed, step and row.
// Plain integer arithmetic (splitmix64 finaliser) plus a double-precision Gumbel transform; no CUDA headers.
#pragma once
#include <cmath>
#include <cstdint>

#include "../common/dtype.h"

namespace gptoss::sampling {

GPTOSS_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// One key per (seed, step, row); the noise of vocabulary entry j is a hash of (key, j).
GPTOSS_HD uint64_t row_key(uint64_t seed, uint64_t step, uint64_t row) {
  return splitmix64(splitmix64(splitmix64(seed) ^ step) ^ (row * 0xD6E8FEB86659FD93ull));
}

// Standard Gumbel noise -log(-log u), u uniform in (0, 1) from 53 hashed bits.
GPTOSS_HD double gumbel(uint64_t key, uint64_t j) {
  uint64_t h = splitmix64(key ^ (j * 0xD1B54A32D192ED03ull));
  double u = (static_cast<double>(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  return -log(-log(u));
}

// Order-preserving map of a float to uint32 (larger float -> larger key; -0 < +0; NaN above +inf or below -inf).
GPTOSS_HD uint32_t order_key(uint32_t bits) { return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u); }

}  // namespace gptoss::sampling
