// optim.h: AdamW on fp32 master weights (as torch.optim.AdamW: decoupled weight decay, bias correction) with the
// bf16 working copy refreshed, and the pieces of global grad-norm clipping (sum of squares, in-place scale).
#pragma once
#include <cmath>

#include "../common/tensor.h"

namespace gptoss {

// Host-side constants of one AdamW step (bias corrections in double, then rounded once).
struct AdamwConsts {
  float lr, beta1, beta2, eps, decay;  // decay = 1 - lr * weight_decay
  float omb1, omb2;                    // 1 - beta1, 1 - beta2 (computed in double, as torch's scalars are)
  float step_size;                     // lr / (1 - beta1^step)
  float bc2_sqrt;                      // sqrt(1 - beta2^step)
  float grad_scale;                    // the pending grad-clip factor: g' = g * grad_scale (1: no clipping)
};

// One AdamW element, shared by the CPU loop and the CUDA kernel so both round identically (bitwise equal results;
// the sharded trainer's cpu_offload runs this on the host where the default runs it on the device). Every
// multiply-add is an explicit fma (one rounding) and every other operation is rounded on its own, so neither
// compiler may contract differently: before, gcc (-march=native) computed v as fma(v, beta2, omb2*g*g) and nvcc
// as fma(g, omb2*g, v*beta2), a one-ulp difference that bf16 rounding and training carried into the weights. The
// roundings chosen are gcc's of before (so CPU runs are bitwise what they were), now on both backends.
//   g' = g*grad_scale (the global grad-norm clip, fused here instead of a separate pass rewriting the gradients)
//   p' = p*decay - step_size * m' / (sqrt(v')/bc2_sqrt + eps),  m' = m + omb1*(g' - m),  v' = beta2*v + omb2*g'*g'
// g' is rounded on its own, as the in-place scaling it replaces stored it (to f32 memory): the result is bitwise
// clip-then-step. With grad_scale 1 it is g itself (x*1 is exact), so an unclipped step is bitwise what it was.
GPTOSS_HD void adamw_element(float& p, float& m, float& v, float g_raw, const AdamwConsts& c) {
#if defined(__CUDA_ARCH__)
  const float g = __fmul_rn(g_raw, c.grad_scale);
  const float pd = __fmul_rn(p, c.decay);
  const float mi = __fmaf_rn(c.omb1, __fsub_rn(g, m), m);
  const float vi = __fmaf_rn(c.beta2, v, __fmul_rn(__fmul_rn(c.omb2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.bc2_sqrt), c.eps);
  p = __fmaf_rn(-c.step_size, __fdiv_rn(mi, denom), pd);
#else
  // std::fma is correctly rounded (one vfmadd with -march=native on FMA hardware, libm's fmaf otherwise); the
  // plain products below feed fma operands, which no compiler fuses further. g' is an fma with a zero addend, not a
  // plain product: a compiler that contracts (gcc does under -std=gnu++17) may fuse a plain g_raw*grad_scale into
  // the g' - m below, skipping g''s rounding (gcc 12 happens not to, since g' has other uses; nothing promises it).
  // fma(a, b, 0) rounds a*b once, as a*b does (only an exact -0 turns +0, and g' - m, omb2*g'*g' give the same
  // values for either zero).
  const float g = std::fma(g_raw, c.grad_scale, 0.0f);
  const float pd = p * c.decay;
  const float mi = std::fma(c.omb1, g - m, m);
  const float vi = std::fma(c.beta2, v, (c.omb2 * g) * g);
  const float denom = std::sqrt(vi) / c.bc2_sqrt + c.eps;
  p = std::fma(-c.step_size, mi / denom, pd);
#endif
  m = mi;
  v = vi;
}

}  // namespace gptoss

namespace gptoss::cpu {

// master, grad, m, v: f32, same shape; bf16_copy (nullable) bf16, same shape, set to bf16(master) after the step.
void adamw_step(const Tensor& master, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor* bf16_copy,
                const AdamwConsts& c);
// acc (f32 [1]) += Σ x² over t (f32 or bf16).
void sum_of_squares_into(const Tensor& t, const Tensor& acc);
// t (f32 or bf16) *= s.
void scale_in_place(const Tensor& t, float s);

}  // namespace gptoss::cpu
