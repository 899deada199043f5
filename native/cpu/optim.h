// optim.h: AdamW on fp32 master weights (as torch.optim.AdamW: decoupled weight decay, bias correction) with the
// bf16 working copy refreshed, and the pieces of global grad-norm clipping (sum of squares, in-place scale).
#pragma once
#include "../common/tensor.h"

namespace gptoss {

// Host-side constants of one AdamW step (bias corrections in double, then rounded once).
struct AdamwConsts {
  float lr, beta1, beta2, eps, decay;  // decay = 1 - lr * weight_decay
  float omb1, omb2;                    // 1 - beta1, 1 - beta2 (computed in double, as torch's scalars are)
  float step_size;                     // lr / (1 - beta1^step)
  float bc2_sqrt;                      // sqrt(1 - beta2^step)
};

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
