// moe_gemm_down.cu: instantiations of the grouped GEMM for moeForward down (see moe_gemm.cuh).
#include "moe_gemm.cuh"

namespace gptoss::cuda::moe_gemm {

void gemm_down(const Params& p, int64_t rows, cudaStream_t s) { rows_gemm<false, kEpiBiasBf16>(p, rows, s, "moeForward down"); }

}  // namespace gptoss::cuda::moe_gemm
