// paged_attention.cu: placeholder until the kernels land (next commit); keeps a CUDA build linkable.
#include "common.cuh"
#include "paged_attention.h"

namespace gptoss::cuda {

void paged_attention(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                     const Tensor*, int, float, const Tensor&) {
  fail("pagedAttention: the CUDA kernel is not built yet (CPU tensors only)");
}

}  // namespace gptoss::cuda
