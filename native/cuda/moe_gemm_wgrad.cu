// moe_gemm_wgrad.cu: instantiations of the grouped weight-gradient GEMM (see moe_gemm.cuh), and the tile
// variant switch.
#include <cstdlib>

#include "moe_gemm.cuh"

namespace gptoss::cuda::moe_gemm {

int large_variant() {
  static const int v = [] {
    const char* e = std::getenv("GPTOSS_MOE_TILE");
    return e ? std::atoi(e) : 0;
  }();
  return v;
}

void gemm_wgrad(const Params& p, int64_t rows, cudaStream_t s, const char* what) {
  wgrad_gemm_impl(p, rows, s, what);
}

}  // namespace gptoss::cuda::moe_gemm
