// kvcache.h: CUDA row scatter (KV-cache writes). Declarations only (no CUDA headers), for the bindings.
#pragma once
#include "../common/tensor.h"

namespace gptoss::cuda {

// dst.view([M, R])[index[n], :] = src.view([N, R])[n, :]. index stays on the device (no host sync); rows whose
// index is out of [0, M) are skipped. Duplicate indices race (undefined which write wins).
void scatter_rows(const Tensor& dst, const Tensor& src, const Tensor& index);

}  // namespace gptoss::cuda
