// rmsnorm.cu: GPT-OSS RMSNorm. One thread block per row (16-byte loads of 8 values when the row length is a
// multiple of 8 and the pointers are aligned), fp32 math including the weight multiply, output rounded once.
// Backward: a row kernel for dx, and dw as fixed row-chunk partial sums reduced in chunk order (no atomics, so
// the result is bitwise reproducible). addRmsnorm: the residual add before the norm in the same launch (h = x + o
// written out, the norm computed on it), through the same row code as the plain forward.
#include "common.cuh"
#include "rmsnorm.h"
#include "rmsnorm_row.cuh"
#include "vec_io.cuh"

namespace gptoss::cuda {

namespace {

using rms::norm_row;
using rms::row_threads;
using rms::RowIn;
using rms::RowSum;

template <typename X, typename W>
__global__ void fwd_kernel(const X* __restrict__ x, const W* __restrict__ w, X* __restrict__ y,
                           float* __restrict__ rstd, int64_t h, float eps, bool vec) {
  norm_row(RowIn<X>{x + blockIdx.x * h}, w, y + blockIdx.x * h, static_cast<X*>(nullptr), rstd + blockIdx.x, h, eps, vec);
}

// x, o, hs, y: [rows, h]; hs gets x + o rounded to X, y the norm of it.
template <typename X, typename O, typename W>
__global__ void add_fwd_kernel(const X* __restrict__ x, const O* __restrict__ o, const W* __restrict__ w,
                               X* __restrict__ hs, X* __restrict__ y, float* __restrict__ rstd, int64_t h, float eps,
                               bool vec, bool ld16) {
  const int64_t r0 = blockIdx.x * h;
  norm_row(RowSum<X, O>{x + r0, o + r0, hs + r0, ld16}, w, y + r0, static_cast<X*>(nullptr), rstd + blockIdx.x, h, eps,
           vec);
}

template <typename D, typename X, typename W>
__global__ void bwd_dx_kernel(const D* __restrict__ dy, const X* __restrict__ x, const W* __restrict__ w,
                              const float* __restrict__ rstd, const float* __restrict__ res, float* __restrict__ dx,
                              int64_t h, bool vec) {
  const D* dyr = dy + blockIdx.x * h;
  const float* rr = res ? res + blockIdx.x * h : nullptr;
  const X* xr = x + blockIdx.x * h;
  float* dxr = dx + blockIdx.x * h;
  float rs = rstd[blockIdx.x];
  float dot = 0.f;
  if (vec) {
    for (int64_t c = threadIdx.x * 8; c < h; c += blockDim.x * 8) {
      float d[8], xv[8], wv[8];
      load8(dyr + c, d);
      load8(xr + c, xv);
      load8(w + c, wv);
#pragma unroll
      for (int k = 0; k < 8; k++) dot += d[k] * wv[k] * xv[k];
    }
  } else {
    for (int64_t c = threadIdx.x; c < h; c += blockDim.x) dot += ldf(dyr + c) * ldf(w + c) * ldf(xr + c);
  }
  dot = block_sum(dot);
  float cc = rs * rs * dot / float(h);
  if (vec) {
    for (int64_t c = threadIdx.x * 8; c < h; c += blockDim.x * 8) {
      float d[8], xv[8], wv[8];
      load8(dyr + c, d);
      load8(xr + c, xv);
      load8(w + c, wv);
#pragma unroll
      for (int k = 0; k < 8; k++) d[k] = __fmul_rn(rs, d[k] * wv[k] - xv[k] * cc);
      if (rr) {  // rounded adds (no FMA contraction): exactly dx + residual
        float rv[8];
        load8(rr + c, rv);
#pragma unroll
        for (int k = 0; k < 8; k++) d[k] = __fadd_rn(d[k], rv[k]);
      }
      store8(dxr + c, d);
    }
  } else {
    for (int64_t c = threadIdx.x; c < h; c += blockDim.x) {
      const float v = __fmul_rn(rs, ldf(dyr + c) * ldf(w + c) - ldf(xr + c) * cc);
      dxr[c] = rr ? __fadd_rn(v, rr[c]) : v;
    }
  }
}

// partial[chunk, c] = sum over the chunk's rows of dy[r, c] * (x[r, c] * rstd[r]); one thread per column
// (coalesced across the warp).
template <typename D, typename X>
__global__ void bwd_dw_partial_kernel(const D* __restrict__ dy, const X* __restrict__ x,
                                      const float* __restrict__ rstd, float* __restrict__ partial, int64_t rows,
                                      int64_t h, int64_t chunk) {
  int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= h) return;
  int64_t r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
  float acc = 0.f;
  for (int64_t r = r0; r < r1; r++) acc += ldf(dy + r * h + c) * (ldf(x + r * h + c) * rstd[r]);
  partial[blockIdx.y * h + c] = acc;
}

__global__ void bwd_dw_reduce_kernel(const float* __restrict__ partial, float* __restrict__ dw, int64_t nchunks,
                                     int64_t h) {
  int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= h) return;
  float acc = 0.f;
  for (int64_t k = 0; k < nchunks; k++) acc += partial[k * h + c];
  dw[c] = acc;
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd) {
  int64_t h = x.dim(-1), rows = h ? x.numel() / h : 0;
  if (rows == 0 || h == 0) return;
  DeviceGuard g(x.device);
  bool vec = h % 8 == 0 && aligned16(x.raw()) && aligned16(w.raw()) && aligned16(y.raw());
  int threads = row_threads(h, vec);
  with_float(x, [&](auto* px) {
    with_float(w, [&](auto* pw) {
      fwd_kernel<<<static_cast<unsigned>(rows), threads, 0, stream_of(x.device)>>>(
          px, pw, reinterpret_cast<decltype(px)>(y.raw()), rstd.data<float>(), h, eps, vec);
    });
  });
  GPTOSS_CUDA_LAUNCH_CHECK("rmsnormForward");
}

void add_rmsnorm_forward(const Tensor& x, const Tensor& o, const Tensor& w, float eps, const Tensor& hs,
                         const Tensor& y, const Tensor& rstd) {
  int64_t h = x.dim(-1), rows = h ? x.numel() / h : 0;
  if (rows == 0 || h == 0) return;
  DeviceGuard g(x.device);
  // vec and threads exactly as rmsnorm_forward(hs, w, ...) chooses them (its summation order); x and o only decide
  // how a group of 8 is loaded.
  bool vec = h % 8 == 0 && aligned16(hs.raw()) && aligned16(w.raw()) && aligned16(y.raw());
  bool ld16 = aligned16(x.raw()) && aligned16(o.raw());
  int threads = row_threads(h, vec);
  with_float(x, [&](auto* px) {
    with_float(o, [&](auto* po) {
      with_float(w, [&](auto* pw) {
        using XP = decltype(px);
        add_fwd_kernel<<<static_cast<unsigned>(rows), threads, 0, stream_of(x.device)>>>(
            px, po, pw, reinterpret_cast<XP>(hs.raw()), reinterpret_cast<XP>(y.raw()), rstd.data<float>(), h, eps,
            vec, ld16);
      });
    });
  });
  GPTOSS_CUDA_LAUNCH_CHECK("addRmsnorm");
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor* residual,
                      const Tensor& dx, const Tensor& dw) {
  int64_t h = x.dim(-1), rows = h ? x.numel() / h : 0;
  if (h == 0) return;
  DeviceGuard g(x.device);
  cudaStream_t st = stream_of(x.device);
  if (rows == 0) {
    GPTOSS_CUDA_CHECK(cudaMemsetAsync(dw.raw(), 0, dw.nbytes(), st), "rmsnormBackward");
    return;
  }
  const float* res = residual ? residual->data<float>() : nullptr;
  bool vec = h % 8 == 0 && aligned16(dy.raw()) && aligned16(x.raw()) && aligned16(w.raw()) && aligned16(dx.raw()) &&
             (!res || aligned16(res));
  int threads = row_threads(h, vec);
  // At most 512 chunks of at least 64 rows: the partial buffer stays at most 512 x H floats.
  int64_t chunk = (rows + 511) / 512;
  if (chunk < 64) chunk = 64;
  int64_t nchunks = (rows + chunk - 1) / chunk;
  Tensor partial = make_tensor({nchunks, h}, DType::F32, x.device);
  with_float(dy, [&](auto* pd) {
    with_float(x, [&](auto* px) {
      with_float(w, [&](auto* pw) {
        bwd_dx_kernel<<<static_cast<unsigned>(rows), threads, 0, st>>>(pd, px, pw, rstd.data<float>(), res,
                                                                       dx.data<float>(), h, vec);
      });
      dim3 grid(ceil_div(h, 256), static_cast<unsigned>(nchunks));
      bwd_dw_partial_kernel<<<grid, 256, 0, st>>>(pd, px, rstd.data<float>(), partial.data<float>(), rows, h, chunk);
    });
  });
  bwd_dw_reduce_kernel<<<ceil_div(h, 256), 256, 0, st>>>(partial.data<float>(), dw.data<float>(), nchunks, h);
  GPTOSS_CUDA_LAUNCH_CHECK("rmsnormBackward");
}

}  // namespace gptoss::cuda
