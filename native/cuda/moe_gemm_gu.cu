// moe_gemm_gu.cu: instantiations of the grouped GEMM for moeForward gate_up (see moe_gemm.cuh).
#include "moe_gemm.cuh"

namespace gptoss::cuda::moe_gemm {

void gemm_gate_up(const Params& p, int64_t rows, cudaStream_t s) { rows_gemm<false, kEpiGuSwiglu>(p, rows, s, "moeForward gate_up"); }

}  // namespace gptoss::cuda::moe_gemm
