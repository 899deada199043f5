// moe_gemm_dx.cu: instantiations of the grouped GEMM for moeBackward dxp (see moe_gemm.cuh).
#include "moe_gemm.cuh"

namespace gptoss::cuda::moe_gemm {

void gemm_dx(const Params& p, int64_t rows, cudaStream_t s) { rows_gemm<true, kEpiBf16>(p, rows, s, "moeBackward dxp"); }

}  // namespace gptoss::cuda::moe_gemm
