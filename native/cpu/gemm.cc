// gemm.cc: blocked, multi-threaded CPU GEMM (see gemm.h).
//
// C is cut into MC x NC tiles, one parallel task each (disjoint outputs, so results do not depend on the thread
// count). A task walks K in KC slices: it packs the A slice into MR-row panels and the B slice into NR-column
// panels (fp32, zero-padded, transposes and bf16 widening handled here), then runs an MR x NR micro-kernel whose
// accumulators stay in registers (fixed-size loops the compiler unrolls and vectorises under -O3 -march=native).
// The fp32 tile is finally scaled, biased, accumulated and stored in the output dtype.
#include "gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "parallel.h"

#ifdef GPTOSS_HAVE_CBLAS
#include <cblas.h>
#endif

namespace gptoss::cpu {

namespace {

constexpr int MR = 6;
constexpr int NR = 32;
constexpr int64_t MC = 72;   // multiple of MR
constexpr int64_t NC = 256;  // multiple of NR
constexpr int64_t KC = 256;

inline float load(const void* p, DType t, int64_t i) {
  return t == DType::BF16 ? to_f32(static_cast<const bf16*>(p)[i]) : static_cast<const float*>(p)[i];
}

// Packs rows [i0, i0+mc) x k-range [k0, k0+kc) of op(A) into panels of MR rows: dst[p][k*MR + r].
void pack_a(const GemmOperand& A, int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t p = 0; p < mc; p += MR) {
    float* d = dst + p * kc;
    int64_t rows = std::min<int64_t>(MR, mc - p);
    for (int64_t k = 0; k < kc; k++) {
      for (int r = 0; r < MR; r++) {
        float v = 0.f;
        if (r < rows) {
          int64_t i = i0 + p + r, kk = k0 + k;
          v = A.trans ? load(A.ptr, A.dtype, kk * A.ld + i) : load(A.ptr, A.dtype, i * A.ld + kk);
        }
        d[k * MR + r] = v;
      }
    }
  }
}

// Packs k-range [k0, k0+kc) x columns [j0, j0+nc) of op(B) into panels of NR columns: dst[p][k*NR + c].
void pack_b(const GemmOperand& B, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
  for (int64_t p = 0; p < nc; p += NR) {
    float* d = dst + p * kc;
    int64_t cols = std::min<int64_t>(NR, nc - p);
    for (int64_t k = 0; k < kc; k++) {
      int64_t kk = k0 + k;
      float* dk = d + k * NR;
      if (!B.trans && B.dtype == DType::F32 && cols == NR) {
        std::memcpy(dk, static_cast<const float*>(B.ptr) + kk * B.ld + j0 + p, NR * sizeof(float));
        continue;
      }
      for (int c = 0; c < NR; c++) {
        float v = 0.f;
        if (c < cols) {
          int64_t j = j0 + p + c;
          v = B.trans ? load(B.ptr, B.dtype, j * B.ld + kk) : load(B.ptr, B.dtype, kk * B.ld + j);
        }
        dk[c] = v;
      }
    }
  }
}

// acc[MR x NR] (row stride ldc) += Apanel[kc x MR]^T-ish * Bpanel[kc x NR].
inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                         int64_t ldc) {
  float acc[MR][NR];
  for (int r = 0; r < MR; r++)
    for (int j = 0; j < NR; j++) acc[r][j] = 0.f;
  for (int64_t k = 0; k < kc; k++) {
    const float* bk = b + k * NR;
    const float* ak = a + k * MR;
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
      const float av = ak[r];
#pragma GCC unroll 32
      for (int j = 0; j < NR; j++) acc[r][j] += av * bk[j];
    }
  }
  for (int r = 0; r < MR; r++)
    for (int j = 0; j < NR; j++) c[r * ldc + j] += acc[r][j];
}

// Writes an fp32 tile (row stride ldt) into C with alpha, bias and beta.
void store_tile(const float* tile, int64_t ldt, int64_t i0, int64_t mc, int64_t j0, int64_t nc, float alpha,
                const void* bias, DType bias_dtype, float beta, void* C, DType c_dtype, int64_t ldc) {
  for (int64_t r = 0; r < mc; r++) {
    const float* t = tile + r * ldt;
    int64_t row = (i0 + r) * ldc + j0;
    for (int64_t j = 0; j < nc; j++) {
      float v = alpha * t[j];
      if (bias) v += load(bias, bias_dtype, j0 + j);
      if (c_dtype == DType::F32) {
        float* c = static_cast<float*>(C) + row + j;
        *c = beta != 0.f ? v + beta * *c : v;
      } else {
        bf16* c = static_cast<bf16*>(C) + row + j;
        *c = to_bf16(beta != 0.f ? v + beta * to_f32(*c) : v);
      }
    }
  }
}

}  // namespace

void gemm_raw(int64_t M, int64_t N, int64_t K, float alpha, const GemmOperand& A, const GemmOperand& B,
              const void* bias, DType bias_dtype, float beta, void* C, DType c_dtype, int64_t ldc) {
  if (M == 0 || N == 0) return;
#ifdef GPTOSS_HAVE_CBLAS
  if (A.dtype == DType::F32 && B.dtype == DType::F32 && K > 0) {
    // System BLAS into fp32, then the same epilogue (bias, beta, dtype) as the built-in kernel.
    std::vector<float> tmp(static_cast<size_t>(M * N));
    cblas_sgemm(CblasRowMajor, A.trans ? CblasTrans : CblasNoTrans, B.trans ? CblasTrans : CblasNoTrans,
                static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1.f,
                static_cast<const float*>(A.ptr), static_cast<int>(A.ld), static_cast<const float*>(B.ptr),
                static_cast<int>(B.ld), 0.f, tmp.data(), static_cast<int>(N));
    parallel_for(M, std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1)), [&](int64_t b, int64_t e) {
      store_tile(tmp.data() + b * N, N, b, e - b, 0, N, alpha, bias, bias_dtype, beta, C, c_dtype, ldc);
    });
    return;
  }
#endif
  const int64_t tiles_m = (M + MC - 1) / MC, tiles_n = (N + NC - 1) / NC;
  parallel_for(tiles_m * tiles_n, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> abuf, bbuf, tile;
    abuf.resize(MC * KC);
    bbuf.resize(KC * NC);
    tile.resize(MC * NC);
    for (int64_t t = begin; t < end; t++) {
      const int64_t i0 = (t / tiles_n) * MC, j0 = (t % tiles_n) * NC;
      const int64_t mc = std::min(MC, M - i0), nc = std::min(NC, N - j0);
      const int64_t mcp = (mc + MR - 1) / MR * MR, ncp = (nc + NR - 1) / NR * NR;
      std::fill(tile.begin(), tile.begin() + mcp * NC, 0.f);
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = std::min(KC, K - k0);
        pack_a(A, i0, mc, k0, kc, abuf.data());
        pack_b(B, k0, kc, j0, nc, bbuf.data());
        // pack_* zero-pad rows/columns past M/N: the padded panels only touch padded tile entries.
        for (int64_t jp = 0; jp < ncp; jp += NR)
          for (int64_t ip = 0; ip < mcp; ip += MR)
            micro_kernel(kc, abuf.data() + ip * kc, bbuf.data() + jp * kc, tile.data() + ip * NC + jp, NC);
      }
      store_tile(tile.data(), NC, i0, mc, j0, nc, alpha, bias, bias_dtype, beta, C, c_dtype, ldc);
    }
  });
}

void gemm(const Tensor& a, const Tensor& b, const Tensor* bias, const Tensor& out, bool transA, bool transB,
          float alpha, bool accumulate) {
  const int64_t M = out.dim(0), N = out.dim(1);
  const int64_t K = transA ? a.dim(0) : a.dim(1);
  GemmOperand A{a.raw(), a.dtype, a.dim(1), transA};
  GemmOperand B{b.raw(), b.dtype, b.dim(1), transB};
  gemm_raw(M, N, K, alpha, A, B, bias ? bias->raw() : nullptr, bias ? bias->dtype : DType::F32,
           accumulate ? 1.f : 0.f, out.raw(), out.dtype, N);
}

}  // namespace gptoss::cpu
