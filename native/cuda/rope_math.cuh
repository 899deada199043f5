// rope_math.cuh: the RoPE arithmetic that rope.cu's kernel and gemv.cu's fused q/k/v projection + rope share, so
// both give the same bits: the angle's cos/sin (accurate sincosf, times the YaRN attention scaling) and the NeoX
// half-split rotation, written with explicit round-to-nearest operations so that no FMA contraction (which nvcc
// decides per call site) can make the two kernels round differently.
#pragma once

#include <cuda_runtime.h>

namespace gptoss::cuda::rope_math {

// cos and sign·sin of position pos at inverse frequency inv_freq, each times scaling.
__device__ __forceinline__ void cos_sin(float pos, float inv_freq, float scaling, float sign, float& c, float& s) {
  float sn, cs;
  sincosf(__fmul_rn(pos, inv_freq), &sn, &cs);
  c = __fmul_rn(cs, scaling);
  s = __fmul_rn(sign, __fmul_rn(sn, scaling));
}

// (a, b) = (x[j], x[j + D/2]) rotated by the angle with cos c and sin s: (a·c − b·s, b·c + a·s).
__device__ __forceinline__ void rotate(float a, float b, float c, float s, float& o1, float& o2) {
  o1 = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  o2 = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

}  // namespace gptoss::cuda::rope_math
