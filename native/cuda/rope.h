// rope.h: CUDA RoPE (declarations; see native/cpu/rope.h for the math).
#pragma once
#include "../common/tensor.h"

namespace gptoss::cuda {

void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scaling, float sign,
                const Tensor& y);

// Where the split also writes the rotated k and the v rows: flat KV-cache pools k, v [M, Hkv, D] (qkv's dtype) and
// the rows' slots i32 [T] (slots out of [0, M) skipped), the rows scatter_rows(k, rotated k, slots) would write.
struct RopeCacheWrite {
  const Tensor& k;
  const Tensor& v;
  const Tensor& slots;
};

// The fused q/k/v layout (see native/cpu/rope.h): split (pack = false) or pack (pack = true) in one launch; with
// cache (split only) the k and v rows also land in the KV cache in the same launch.
void rope_qkv(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
              const Tensor& inv_freq, float scaling, float sign, bool pack, const RopeCacheWrite* cache = nullptr);

}  // namespace gptoss::cuda
