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

// Reduction mode (weight gradients, f32 out).
static void wgrad_gemm_impl(const Params& p, int64_t rows, cudaStream_t s, const char* what) {
  switch (large_variant()) {
    case 1: launch<128, 256, 64, 2, 4, 4, 1, true, true, false, kEpiF32>(p, rows, s, what); break;
    case 2: launch<128, 128, 32, 2, 2, 4, 2, true, true, false, kEpiF32>(p, rows, s, what); break;
    case 3: launch<256, 128, 64, 4, 2, 4, 1, true, true, false, kEpiF32>(p, rows, s, what); break;
    case 4: launch<128, 256, 32, 2, 4, 6, 1, true, true, false, kEpiF32>(p, rows, s, what); break;
    default: launch<128, 128, 64, 2, 4, 3, 2, true, true, false, kEpiF32>(p, rows, s, what); break;
  }
}

void gemm_wgrad(const Params& p, int64_t rows, cudaStream_t s, const char* what) {
  wgrad_gemm_impl(p, rows, s, what);
}

}  // namespace gptoss::cuda::moe_gemm
