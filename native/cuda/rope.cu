// rope.cu: RoPE with the GPT-OSS NeoX half split. One thread block per token: the token's D/2 cos/sin values
// (fp32, accurate sincosf, times the YaRN attention scaling) are computed once into shared memory, then the
// block rotates every head, 8 frequencies per thread step with 16-byte loads of x1 and x2 when aligned. The plain
// op and the fused q/k/v split/pack are one kernel over up to three head groups (rope_parts_kernel).
// sign = +1 rotates by +angle (forward), -1 by -angle (backward: the transpose of the rotation).
#include "common.cuh"
#include "rope.h"
#include "rope_math.cuh"
#include "vec_io.cuh"

#include <type_traits>

namespace gptoss::cuda {

namespace {

// Up to three parts of heads[p] heads, part p of token t read from in[p] + t·in_stride[p] and written to
// out[p] + t·out_stride[p] (elements); parts 0 and 1 rotated, part 2 copied. The plain op is part 0 alone
// (heads1 = heads2 = 0); the fused q/k/v layout is q, k, v, so the projection output is split (forward) or the
// gradient packed (backward) in one pass that also computes cos/sin once per token for q and k. One block per
// token; its items run over the heads of all parts.
template <typename X, typename Y>
struct RopeParts {
  const X* in0;
  const X* in1;
  const X* in2;
  Y* out0;
  Y* out1;
  Y* out2;
  int64_t in_stride0, in_stride1, in_stride2;
  int64_t out_stride0, out_stride1, out_stride2;
  int heads0, heads1, heads2;
  // Optional cache write (split only): parts 1 and 2 (k, v) of token t also go to row slots[t] of cache1 / cache2
  // ([cache_rows, heads1 · d] each), as scatter_rows would put them; slots out of [0, cache_rows) are skipped.
  Y* cache1;
  Y* cache2;
  const int32_t* slots;
  int64_t cache_rows;
};

template <typename X, typename Y>
__global__ void rope_parts_kernel(RopeParts<X, Y> p, const int32_t* __restrict__ pos,
                                const float* __restrict__ inv_freq, int d, float scaling, float sign, bool vec) {
  extern __shared__ float cs[];  // [half] cos, then [half] sin
  const int half = d / 2;
  const int64_t t = blockIdx.x;
  const float ps = static_cast<float>(pos[t]);
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    rope_math::cos_sin(ps, inv_freq[j], scaling, sign, cs[j], cs[half + j]);
  }
  __syncthreads();
  const int h01 = p.heads0 + p.heads1, heads = h01 + p.heads2;
  const int64_t slot = p.slots ? p.slots[t] : -1;
  const bool to_cache = slot >= 0 && slot < p.cache_rows;
  const int per_head = vec ? half / 8 : half;  // items per head: 8 frequencies each when vectorised
  for (int i = threadIdx.x; i < heads * per_head; i += blockDim.x) {
    int hh = i / per_head, j = (i % per_head) * (vec ? 8 : 1);
    const X* x;
    Y* y;
    Y* yc = nullptr;  // the cache row's copy of this head (k and v heads with a valid slot)
    if (hh < p.heads0) {
      x = p.in0 + t * p.in_stride0 + int64_t(hh) * d;
      y = p.out0 + t * p.out_stride0 + int64_t(hh) * d;
    } else if (hh < h01) {
      x = p.in1 + t * p.in_stride1 + int64_t(hh - p.heads0) * d;
      y = p.out1 + t * p.out_stride1 + int64_t(hh - p.heads0) * d;
      if (to_cache) yc = p.cache1 + slot * p.out_stride1 + int64_t(hh - p.heads0) * d;
    } else {
      x = p.in2 + t * p.in_stride2 + int64_t(hh - h01) * d;
      y = p.out2 + t * p.out_stride2 + int64_t(hh - h01) * d;
      if (to_cache) yc = p.cache2 + slot * p.out_stride2 + int64_t(hh - h01) * d;
    }
    const bool rotate = hh < h01;
    if (vec) {
      float a[8], b[8];
      load8(x + j, a);
      load8(x + half + j, b);
      if (rotate) {
        float o1[8], o2[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
          rope_math::rotate(a[k], b[k], cs[j + k], cs[half + j + k], o1[k], o2[k]);
        }
        store8(y + j, o1);
        store8(y + half + j, o2);
        if (yc) store8(yc + j, o1), store8(yc + half + j, o2);
      } else {
        store8(y + j, a);
        store8(y + half + j, b);
        if (yc) store8(yc + j, a), store8(yc + half + j, b);
      }
    } else {
      float a = ldf(x + j), b = ldf(x + half + j);
      if (rotate) {
        float o1, o2;
        rope_math::rotate(a, b, cs[j], cs[half + j], o1, o2);
        stf(y + j, o1);
        stf(y + half + j, o2);
        if (yc) stf(yc + j, o1), stf(yc + half + j, o2);
      } else {
        stf(y + j, a);
        stf(y + half + j, b);
        if (yc) stf(yc + j, a), stf(yc + half + j, b);
      }
    }
  }
}

template <typename X, typename Y>
void launch_rope_parts(const RopeParts<X, Y>& p, int64_t tn, int d, bool vec, const Tensor& positions,
                       const Tensor& inv_freq, float scaling, float sign, int device) {
  const int half = d / 2, heads = p.heads0 + p.heads1 + p.heads2;
  int64_t items = vec ? int64_t(heads) * (half / 8) : int64_t(heads) * half;
  int threads = static_cast<int>(items < 32 ? 32 : (items > 512 ? 512 : (items + 31) / 32 * 32));
  rope_parts_kernel<<<static_cast<unsigned>(tn), threads, sizeof(float) * 2 * half, stream_of(device)>>>(
      p, positions.data<int32_t>(), inv_freq.data<float>(), d, scaling, sign, vec);
}

}  // namespace

void rope_qkv(const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& positions,
              const Tensor& inv_freq, float scaling, float sign, bool pack, const RopeCacheWrite* cache) {
  int64_t tn = qkv.dim(0), w = qkv.dim(1);
  int d = static_cast<int>(q.dim(2)), half = d / 2;
  int hq = static_cast<int>(q.dim(1)), hkv = static_cast<int>(k.dim(1));
  if (tn == 0 || d == 0) return;
  GPTOSS_CHECK(!(pack && cache), "rope_qkv: a KV-cache write goes with the split, not the pack");
  DeviceGuard g(qkv.device);
  // 16-byte vectors need every part's base and row stride on 16-byte boundaries (columns are multiples of D).
  int64_t wq = int64_t(hq) * d, wkv = int64_t(hkv) * d;
  auto ok = [&](const Tensor& t, int64_t stride, int64_t col) {
    return aligned16(static_cast<const char*>(t.raw()) + col * dtype_size(t.dtype)) &&
           (stride * dtype_size(t.dtype)) % 16 == 0;
  };
  bool vec = half % 8 == 0 && ok(qkv, w, 0) && ok(qkv, w, wq) && ok(qkv, w, wq + wkv) && ok(q, wq, 0) &&
             ok(k, wkv, 0) && ok(v, wkv, 0) && (!cache || (ok(cache->k, wkv, 0) && ok(cache->v, wkv, 0)));
  const Tensor& src = pack ? q : qkv;
  const Tensor& dst = pack ? qkv : q;
  with_float(src, [&](auto* px) {
    with_float(dst, [&](auto* py) {
      using X = std::remove_const_t<std::remove_pointer_t<decltype(px)>>;
      using Y = std::remove_pointer_t<decltype(py)>;
      RopeParts<X, Y> p{};
      p.heads0 = hq;
      p.heads1 = hkv;
      p.heads2 = hkv;
      if (!pack) {
        const X* base = reinterpret_cast<const X*>(qkv.raw());
        p.in0 = base;
        p.in1 = base + wq;
        p.in2 = base + wq + wkv;
        p.in_stride0 = p.in_stride1 = p.in_stride2 = w;
        p.out0 = reinterpret_cast<Y*>(q.raw());
        p.out1 = reinterpret_cast<Y*>(k.raw());
        p.out2 = reinterpret_cast<Y*>(v.raw());
        p.out_stride0 = wq;
        p.out_stride1 = p.out_stride2 = wkv;
        if (cache) {
          p.cache1 = reinterpret_cast<Y*>(cache->k.raw());
          p.cache2 = reinterpret_cast<Y*>(cache->v.raw());
          p.slots = cache->slots.data<int32_t>();
          p.cache_rows = cache->k.dim(0);
        }
      } else {
        Y* base = reinterpret_cast<Y*>(qkv.raw());
        p.out0 = base;
        p.out1 = base + wq;
        p.out2 = base + wq + wkv;
        p.out_stride0 = p.out_stride1 = p.out_stride2 = w;
        p.in0 = reinterpret_cast<const X*>(q.raw());
        p.in1 = reinterpret_cast<const X*>(k.raw());
        p.in2 = reinterpret_cast<const X*>(v.raw());
        p.in_stride0 = wq;
        p.in_stride1 = p.in_stride2 = wkv;
      }
      launch_rope_parts(p, tn, d, vec, positions, inv_freq, scaling, sign, qkv.device);
    });
  });
  GPTOSS_CUDA_LAUNCH_CHECK("rope_qkv");
}

void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scaling, float sign,
                const Tensor& y) {
  int64_t tn = x.dim(0);
  int heads = static_cast<int>(x.dim(1)), d = static_cast<int>(x.dim(2)), half = d / 2;
  if (tn == 0 || heads == 0 || d == 0) return;
  DeviceGuard g(x.device);
  bool vec = half % 8 == 0 && aligned16(x.raw()) && aligned16(y.raw());
  with_float(x, [&](auto* px) {
    with_float(y, [&](auto* py) {
      using X = std::remove_const_t<std::remove_pointer_t<decltype(px)>>;
      using Y = std::remove_pointer_t<decltype(py)>;
      RopeParts<X, Y> p{};  // one rotated part: x [T, heads, D] -> y
      p.in0 = px;
      p.out0 = py;
      p.in_stride0 = p.out_stride0 = int64_t(heads) * d;
      p.heads0 = heads;
      launch_rope_parts(p, tn, d, vec, positions, inv_freq, scaling, sign, x.device);
    });
  });
  GPTOSS_CUDA_LAUNCH_CHECK("rope");
}

}  // namespace gptoss::cuda
