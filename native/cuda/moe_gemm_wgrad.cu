// moe_gemm_wgrad.cu: instantiation of the grouped weight-gradient GEMM (see moe_gemm.cuh).
#include "moe_gemm.cuh"

namespace gptoss::cuda::moe_gemm {

// Reduction mode (weight gradients, f32 out; the tile spans the weight's dimensions, the expert's rows are the
// reduction): LargeTiles at every size.
void gemm_wgrad(const Params& p, int64_t rows, cudaStream_t s, const char* what) {
  launch<LargeTiles, true, true, false, kEpiF32>(p, rows, s, what);
}

}  // namespace gptoss::cuda::moe_gemm
