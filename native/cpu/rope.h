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

// The fused q/k/v layout of the attention projections: one row per token of (Hq + 2·Hkv)·D values, q heads, then
// k heads, then v heads. With pack = false (split), qkv is read and q [T,Hq,D], k [T,Hkv,D] are written rotated
// by sign·angle and v [T,Hkv,D] copied; with pack = true the three are read and written (rotated / copied) into
// qkv at their column offsets. In and out may differ in float dtype (bf16 out rounds, as rope_apply does); q, k
// and v share one dtype.
void rope_qkv(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
              const Tensor& inv_freq, float scaling, float sign, bool pack);

}  // namespace gptoss::cpu
