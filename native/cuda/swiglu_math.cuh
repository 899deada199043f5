// swiglu_math.cuh: the per-element clamped GPT-OSS SwiGLU and its gradient (device functions shared by the flat
// SwiGLU kernels in swiglu.cu and the MoE's fused backward pass in moe.cu). fp32 math; expf-based sigmoid.
#pragma once

namespace gptoss::cuda {

// Comparisons (not fminf/fmaxf) so that NaN propagates, as torch.clamp does.
__device__ __forceinline__ float clamp_gate(float g, float limit) { return g > limit ? limit : g; }
__device__ __forceinline__ float clamp_up(float u, float limit) { return u > limit ? limit : (u < -limit ? -limit : u); }

__device__ __forceinline__ float swiglu1(float g0, float u0, float limit, float alpha) {
  float g = clamp_gate(g0, limit), u = clamp_up(u0, limit);
  float s = 1.f / (1.f + expf(-alpha * g));
  return (u + 1.f) * (g * s);
}

// Gradients with respect to the raw gate and up inputs; zero where clamped (torch.clamp: pass iff in bounds).
__device__ __forceinline__ void swiglu1_bwd(float d, float g0, float u0, float limit, float alpha, float& dg0,
                                            float& du0) {
  float g = clamp_gate(g0, limit), u = clamp_up(u0, limit);
  float s = 1.f / (1.f + expf(-alpha * g));
  float dg = d * (u + 1.f) * (s + alpha * g * s * (1.f - s));
  float du = d * (g * s);
  dg0 = (g0 <= limit) ? dg : 0.f;
  du0 = (u0 >= -limit && u0 <= limit) ? du : 0.f;
}

}  // namespace gptoss::cuda
