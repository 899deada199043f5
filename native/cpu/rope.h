// rope.h: rotary position embedding as GPT-OSS uses it (NeoX half split, fp32 cos/sin) on the CPU.
// For a row x of D values at position p, with j < D/2, angle = fp32(p * inv_freq[j]),
// c = cos(angle) * scaling, s = sin(angle) * scaling (fp32):
//   y[j] = x[j] * c - x[j + D/2] * s,   y[j + D/2] = x[j + D/2] * c + x[j] * s
// The backward is the same rotation by -angle (sign = -1).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cpu {

// x bf16|f32 [T, nHeads, D], positions i32 [T], inv_freq f32 [D/2], y [T, nHeads, D] of any float dtype.
void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scaling, float sign,
                const Tensor& y);

}  // namespace gptoss::cpu
