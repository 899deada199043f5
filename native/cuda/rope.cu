// rope.cu: RoPE with the GPT-OSS NeoX half split. One thread block per token: the token's D/2 cos/sin values
// (fp32, accurate sincosf, times the YaRN attention scaling) are computed once into shared memory, then the
// block rotates every head, 8 frequencies per thread step with 16-byte loads of x1 and x2 when aligned.
// sign = +1 rotates by +angle (forward), -1 by -angle (backward: the transpose of the rotation).
#include "common.cuh"
#include "rope.h"
#include "vec_io.cuh"

namespace gptoss::cuda {

namespace {

template <typename X, typename Y>
__global__ void rope_kernel(const X* __restrict__ x, const int32_t* __restrict__ pos,
                            const float* __restrict__ inv_freq, Y* __restrict__ y, int heads, int d, float scaling,
                            float sign, bool vec) {
  extern __shared__ float cs[];  // [half] cos, then [half] sin
  const int half = d / 2;
  const int64_t t = blockIdx.x;
  const float p = static_cast<float>(pos[t]);
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    float s, c;
    sincosf(p * inv_freq[j], &s, &c);
    cs[j] = c * scaling;
    cs[half + j] = sign * (s * scaling);
  }
  __syncthreads();
  const X* xt = x + t * heads * d;
  Y* yt = y + t * heads * d;
  if (vec) {
    const int groups = half / 8;
    for (int i = threadIdx.x; i < heads * groups; i += blockDim.x) {
      int hd = i / groups, j = (i % groups) * 8;
      float a[8], b[8], o1[8], o2[8];
      load8(xt + hd * d + j, a);
      load8(xt + hd * d + half + j, b);
#pragma unroll
      for (int k = 0; k < 8; k++) {
        float c = cs[j + k], s = cs[half + j + k];
        o1[k] = a[k] * c - b[k] * s;
        o2[k] = b[k] * c + a[k] * s;
      }
      store8(yt + hd * d + j, o1);
      store8(yt + hd * d + half + j, o2);
    }
  } else {
    for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
      int hd = i / half, j = i % half;
      float a = ldf(xt + hd * d + j), b = ldf(xt + hd * d + half + j);
      float c = cs[j], s = cs[half + j];
      stf(yt + hd * d + j, a * c - b * s);
      stf(yt + hd * d + half + j, b * c + a * s);
    }
  }
}

}  // namespace

void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scaling, float sign,
                const Tensor& y) {
  int64_t tn = x.dim(0);
  int heads = static_cast<int>(x.dim(1)), d = static_cast<int>(x.dim(2)), half = d / 2;
  if (tn == 0 || heads == 0 || d == 0) return;
  DeviceGuard g(x.device);
  bool vec = half % 8 == 0 && aligned16(x.raw()) && aligned16(y.raw());
  int64_t items = vec ? int64_t(heads) * (half / 8) : int64_t(heads) * half;
  int threads = static_cast<int>(items < 32 ? 32 : (items > 256 ? 256 : (items + 31) / 32 * 32));
  size_t shmem = sizeof(float) * 2 * half;
  with_float(x, [&](auto* px) {
    with_float(y, [&](auto* py) {
      rope_kernel<<<static_cast<unsigned>(tn), threads, shmem, stream_of(x.device)>>>(
          px, positions.data<int32_t>(), inv_freq.data<float>(), py, heads, d, scaling, sign, vec);
    });
  });
  GPTOSS_CUDA_LAUNCH_CHECK("rope");
}

}  // namespace gptoss::cuda
