// moe_decode.h: the MoE expert MLPs for few routed rows (decode), as bandwidth-bound split-K GEMV kernels
// (moe_decode.cu). Called by moe.cu's forward when plan_expert_gemms picks ExpertGemms::kDecode.
#pragma once
#include <cstdint>

#include "../cpu/moe.h"
#include "common.cuh"

namespace gptoss::cuda::moe_decode {

// The expert rows of the routing in (perm_tok, offsets), exactly what the grouped kernels write (moe_gemm.cuh's
// gate_up and down epilogues), up to the fp32 summation order:
//   gu[r] = bf16(x[perm_tok[r]]·W_gu[e] + b_gu[e])   bf16 [N, 2I]
//   h[r]  = bf16(swiglu(gu[r]))                       bf16 [N, I]
//   yp[r] = bf16(h[r]·W_down[e] + b_down[e])          bf16 [N, H]
// for the rows r of expert e (offsets[e] .. offsets[e+1]-1, on the device: no host read, no wait).
// x bf16 [T, H]; perm_tok, offsets i32 on the device; N = T·k rows; every tensor 16-byte aligned, H, I multiples
// of 8 (moe_forward checks). Enqueued on st.
// and then the MoE output of each token (moe.cu's combine, folded into the down product's reduce: the same bits)
//   y[t]  = bf16(Σ_j topk_w[t, j]·yp[slot_pos[t, j]])  (+ residual: bf16(res[t] + that))   bf16 [T, H]
// slot_pos i32 [T, k], topk_w f32 [T, k], residual bf16 [T, H] or null.
struct Combine {
  const Tensor& slot_pos;
  const Tensor& topk_w;
  const Tensor* residual;
  int64_t k;
  const Tensor& y;
};
void expert_mlp(const Tensor& x, const Tensor& perm_tok, const Tensor& offsets, const MoeWeights& w, int64_t T,
                int64_t N, float limit, const Tensor& gu, const Tensor& h, const Tensor& yp, const Combine& combine,
                cudaStream_t st);

}  // namespace gptoss::cuda::moe_decode
