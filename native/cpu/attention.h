// attention.h: the fp32 reference for attention with sinks (GPT-OSS), forward, backward and decode.
//
// Layouts (token-major, packed): q [T, Hq, D], k/v [T, Hkv, D]; sequence s owns tokens cu[s]..cu[s+1]-1 and
// is causal within itself; with `used`, only its first used[s] tokens are real (the rest is padding: zero
// output, lse 0, zero gradients). window W > 0: query i sees keys i-W+1..i. Query head h reads kv head
// h / (Hq/Hkv). Each query head h has an optional sink logit that joins the softmax with no value:
//   O_i = sum_j e^{s_ij} v_j / (sum_j e^{s_ij} + e^{sink_h}),  s_ij = scale * q_i.k_j
// lse [Hq, T] is the log of that denominator (sink included). Backward: D_i = dO_i.O_i, dS = P (dP - D),
// dsink_h = -sum_i e^{sink_h - lse_i} D_i.
#pragma once
#include "../common/tensor.h"

namespace gptoss::cpu {

// q/k/v bf16 or f32 (same dtype); out has q's dtype, lse f32 [Hq, T]. sinks f32 or bf16 [Hq] or null;
// used i32 [nSeq] or null.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* sinks, const Tensor& cu,
                       const Tensor* used, int window, float scale, const Tensor& out, const Tensor& lse);

// dq/dk/dv (bf16 or f32, preallocated), dsinks f32 [Hq] or null.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor* sinks, const Tensor& cu, const Tensor* used, int window,
                        float scale, const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor* dsinks);

// One new query per sequence against a KV cache: q [B, Hq, D], kc/vc [B, Smax, Hkv, D], seqlens i32 [B]
// (valid entries including the new token, whose position is seqlens[b]-1). out [B, Hq, D] has q's dtype.
void attention_decode(const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& seqlens, const Tensor* sinks,
                      int window, float scale, const Tensor& out);

}  // namespace gptoss::cpu
