// moe_gemm_dgu.cu: instantiations of the grouped GEMM for moeBackward dgu (see moe_gemm.cuh).
#include "moe_gemm.cuh"

namespace gptoss::cuda::moe_gemm {

void gemm_dgu(const Params& p, int64_t rows, cudaStream_t s) { rows_gemm<true, kEpiDSwiglu>(p, rows, s, "moeBackward dgu"); }

}  // namespace gptoss::cuda::moe_gemm
