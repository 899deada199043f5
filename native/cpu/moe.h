// moe.h: the GPT-OSS mixture-of-experts block (router, dropless permutation, expert MLPs with the clamped
// SwiGLU, weighted combine), forward and backward. CPU reference; the CUDA backend (native/cuda/moe.h) keeps
// the same saved tensors, so a MoeSaved from either backend has the same fields, shapes and meaning.
//
// Shapes: x [T,H] bf16; router W [E,H], b [E]; gate_up W [E,H,2I] (columns interleaved gate/up), b [E,2I];
// down W [E,I,H], b [E,H]; all bf16. N = T*k routed rows, held in expert order ("permuted"): the rows of
// expert e are offsets[e] .. offsets[e+1]-1, within an expert in increasing token order.
#pragma once
#include <cstdint>

#include "../common/tensor.h"

namespace gptoss {

struct MoeWeights {
  Tensor router_w, router_b, gate_up_w, gate_up_b, down_w, down_b;
};

// What forward saves for backward.
struct MoeSaved {
  Tensor x;         // bf16 [T,H] (the input itself)
  Tensor topk_idx;  // i32 [T,k] chosen experts, by decreasing logit (ties: lower expert id first)
  Tensor topk_w;    // f32 [T,k] softmax over the k chosen logits
  // Expert e's rows are offsets[e] .. offsets[e]+counts[e]-1. The CPU packs them (offsets = prefix sums of
  // counts, Np = N). The CUDA backend may pad instead (the "slab" layout of its batched GEMMs): each range of
  // consecutive experts shares a slab size Mp (a multiple of 64, at least its largest count), offsets step by it,
  // Np = offsets[E] > N, and rows offsets[e]+counts[e] .. offsets[e+1]-1 are padding (perm_tok -1).
  Tensor counts;    // i32 [E] rows per expert
  Tensor offsets;   // i32 [E+1] first row of each expert (and the end)
  Tensor perm_tok;  // i32 [Np] token of each permuted row (-1: padding)
  Tensor slot_pos;  // i32 [T*k] permuted row of assignment (t, j)
  Tensor gu;        // bf16 [Np,2I] gate_up output incl. bias (f32 on the CPU in exact mode)
  Tensor h;         // bf16 [Np,I] SwiGLU output (f32 in exact mode)
  Tensor yp;        // bf16 [Np,H] expert output incl. bias, before the routing weight (f32 in exact mode)
  // CUDA cuBLAS paths only (empty otherwise; the backward recomputes them when absent):
  Tensor xp;            // bf16 [Np,H] expert-ordered input rows x[perm_tok] (zero rows for padding)
  Tensor offsets_host;  // i32 [E+1] on the host: `offsets`, so the backward needs no device->host wait
  int64_t top_k = 0;
  float limit = 7.f;
  // The expert-GEMM strategy the forward ran: "cpu", or on CUDA "decode", "grouped", "slabs", "per-expert"
  // (native/cuda/moe.cu, plan_expert_gemms). Reported to JS; the backward reads the layout, not this.
  const char* expert_gemms = "cpu";
};

// Optional low-rank adapters (LoRA) on the expert weights, applied to each expert's routed rows in factor form:
//   gu  = x·W_gu[e]   + b + scale·(x·gu_a[e])·gu_b[e]      gu_a [E,H,r], gu_b [E,r,2I]
//   out = h·W_down[e] + b + scale·(h·down_a[e])·down_b[e]  down_a [E,I,r], down_b [E,r,H]
// bf16 or f32 (each pair one dtype; both tensors of a pair or neither). The low-rank products x·A (r values per
// row) stay fp32 and are added to the fp32 accumulator before the bias and the bf16 rounding of gu / yp, so they
// equal the forward of the merged weight W + scale·A·B up to that weight's own bf16 rounding. The CUDA backend
// (native/cuda/moe.cu, "expert adapters") rounds the factors and the r values per row to bf16 (as autocast does).
struct MoeLora {
  Tensor gu_a, gu_b, down_a, down_b;
  float scale = 1.f;
  bool has_gu() const { return gu_a.storage != nullptr; }
  bool has_down() const { return down_a.storage != nullptr; }
  bool any() const { return has_gu() || has_down(); }
};

struct MoeGrads {
  Tensor dx;                       // f32 [T,H]
  Tensor d_router_w, d_router_b;   // f32 [E,H], [E]
  Tensor d_gate_up_w, d_gate_up_b; // f32 [E,H,2I], [E,2I]
  Tensor d_down_w, d_down_b;       // f32 [E,I,H], [E,H]
  // Optional: existing f32 buffers the expert weight gradients are added to (gradient accumulation over micro
  // batches without a fresh 3 GB tensor and an extra pass at gpt-oss-20b size). A backend that adds in place
  // (the CUDA cuBLASLt path, beta = 1) sets *_w to them and accumulated = true; otherwise the binding adds.
  Tensor acc_gate_up_w, acc_down_w;
  bool accumulated = false;
  // With acc_*: true when those buffers hold no gradient yet (uninitialised memory, e.g. a sharded trainer's fresh
  // per-unit buffer): the gradients are written into them (beta 0, or the binding copies) instead of added, which
  // saves zeroing them and reading them back (3.2 GB each way per gpt-oss-20b layer).
  bool acc_overwrite = false;
  // false: the expert weight matrices' gradients (d_gate_up_w, d_down_w: the large ones, 3.2 GB f32 per
  // gpt-oss-20b layer) are neither computed nor allocated (a frozen base, as LoRA trains it). The router and bias
  // gradients are small and still come out.
  bool weight_grads = true;
  // With MoeLora: the adapters' gradients (f32, their factors' shapes), fresh tensors.
  Tensor d_lora_gu_a, d_lora_gu_b, d_lora_down_a, d_lora_down_b;
};

constexpr float kSwigluAlpha = 1.702f;

// The add + norm before the MoE (moeForward's preNorm): h = x + o, then the MoE on rmsnorm(h)·w with h as the
// residual. o bf16 | f32 [T, H], w [H], eps >= 0.
struct MoePreNorm {
  Tensor o;
  Tensor w;
  float eps = 0.f;
};

namespace cpu {

// exact = false rounds every intermediate a plain BF16 implementation stores (gu, h, expert outputs, the
// scaled output gradient, dh, dgu, per-row input gradients) to BF16; exact = true keeps them in fp32 (the
// "fp32 truth" the GPU tests measure errors against).
// residual (optional, bf16 [T,H]): y = bf16(residual + bf16(moe(x))), exactly add(residual, moe(x)) in one pass.
// lora (optional): expert adapters (MoeLora); the backward then also writes g.d_gu_a etc.
void moe_forward(const Tensor& x, const MoeWeights& w, int64_t top_k, float limit, bool exact, const Tensor* residual, Tensor& y,
                 MoeSaved& saved, const MoeLora* lora = nullptr);
void moe_backward(const Tensor& dy, const MoeWeights& w, const MoeSaved& saved, bool exact, MoeGrads& g,
                  const MoeLora* lora = nullptr);

}  // namespace cpu
}  // namespace gptoss
