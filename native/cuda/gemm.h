// gemm.h: the CUDA GEMM as seen by any other file (.cc or .cu): plain declarations, no cuBLAS or CUDA headers.
// Implemented by gemm_cublas.cc (cuBLASLt with the bias epilogue, cuBLAS GemmEx as the fallback), gemm.cu
// (small helper kernels) and gemv.cu (the small-M bf16 linear that gemm_raw sends M <= 8 rows to). Everything runs on the device's compute stream and returns at once.
#pragma once
#include <cstdint>

#include "../common/tensor.h"
#include "rope.h"

namespace gptoss::cuda {

// A GEMM dimension that changes from call to call (the MoE's rows per expert): the cuBLASLt algorithm is chosen
// once for that dimension rounded up to a power of two and reused, instead of one heuristic query per new size.
enum class GemmBucket { None, M, K };

// Row-major C[M,N] (row stride ldc) = alpha * op(A)[M,K] * op(B)[K,N] + bias[N] + beta * C, fp32 accumulation.
// A is stored [M,K] (row stride lda) or [K,M] when transA; B is [K,N] or [N,K] when transB. A and B share
// ab_dtype (bf16 or f32); C is bf16 or f32 (f32 inputs with a bf16 C go through an fp32 temporary).
// bias may be null; any bias dtype (bf16/f32). beta 0 never reads C.
void gemm_raw(int device, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda, bool transA,
              const void* B, int64_t ldb, bool transB, DType ab_dtype, const void* bias, DType bias_dtype, float beta,
              void* C, DType c_dtype, int64_t ldc, GemmBucket bucket = GemmBucket::None);

// Strided batch of row-major GEMMs (the MoE experts once every expert's rows are padded to one count):
// for b in [0, batch): C_b = alpha * op(A_b) * op(B_b) + bias_b + beta * C_b, with A_b = A + b*strideA, B_b, C_b and
// bias_b likewise (strides in elements). One cuBLASLt launch; the bias (may be null) must have C's dtype. The
// first call of a problem times the heuristic's candidates (a few dozen GEMM runs): `bucket` names the dimension
// that varies between calls (the MoE slabs' padded rows per expert), so that a tuning covers its power-of-two
// bucket instead of recurring for every new size the routing produces.
void gemm_strided_batched(int device, int64_t batch, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
                          int64_t lda, int64_t strideA, bool transA, const void* B, int64_t ldb, int64_t strideB,
                          bool transB, DType ab_dtype, const void* bias, int64_t strideBias, float beta, void* C,
                          DType c_dtype, int64_t ldc, int64_t strideC, GemmBucket bucket);

// Concurrent GEMM lanes: many small independent GEMMs (the MoE's per-expert products) fill the GPU better when
// they overlap. gemm_lanes_fork orders kGemmLanes side streams after the compute stream's work so far;
// gemm_lane(i) sends this thread's following cuBLASLt GEMMs to lane i (each lane has its own workspace; -1 = the
// compute stream); gemm_lanes_join makes the compute stream wait for every lane and resets the lane to -1.
// GEMMs in lanes must write disjoint outputs and need no temporaries (bf16/f32 in, bias in the output dtype).
constexpr int kGemmLanes = 4;
void gemm_lanes_fork(int device);
void gemm_lane(int lane);
void gemm_lanes_join(int device);

// Tensor form (shapes checked by the binding): a [M,K] or [K,M], b [K,N] or [N,K], out [M,N], bias [N] or null.
// a and b may differ in dtype: the f32 one is rounded to bf16 first (as autocast would).
void gemm(const Tensor& a, const Tensor& b, const Tensor* bias, const Tensor& out, bool transA, bool transB,
          float alpha, bool accumulate);

// ---- helper kernels (gemm.cu) -------------------------------------------------------------------------------
// dst (bf16, n elements) = bf16(src f32).
void cast_f32_to_bf16(int device, const float* src, void* dst, int64_t n);
// C[M,N] (row stride ldc) = (tmp ? tmp[M,N] (contiguous f32) : 0) + (bias ? bias[N] : 0) + beta * C.
void gemm_epilogue(int device, int64_t M, int64_t N, const float* tmp, const void* bias, DType bias_dtype,
                   float beta, void* C, DType c_dtype, int64_t ldc);

// ---- small-M linear (gemv.cu) ----------------------------------------------------------------------------------
// gemm_raw sends C[M,N] = alpha * A[M,K] · B[N,K]ᵀ + bias + beta * C with 1 <= M <= kGemvMaxRows bf16 rows to a
// GEMV-style kernel that streams B once from HBM (decode's q/k/v, o_proj, router and LM head; gemv.cu says why 8).
constexpr int64_t kGemvMaxRows = 8;
// Whether gemv_bf16 takes this gemm_raw call: 1..kGemvMaxRows rows, bf16 A and B, A not transposed,
// B transposed (stored [N,K]), K >= 64 and a multiple of 8, 16-byte aligned A, B and row strides; C bf16 or f32.
bool gemv_applies(int64_t M, int64_t N, int64_t K, const void* A, int64_t lda, bool transA, const void* B,
                  int64_t ldb, bool transB, DType ab_dtype, DType c_dtype);
// The product above on `stream` (a cudaStream_t: the compute stream or a GEMM lane's), fp32 accumulation, bias
// (bf16 or f32, may be null) and beta * C added in fp32, one rounding to C's dtype. No allocation, no sync.
void gemv_bf16(int device, void* stream, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
               const void* B, int64_t ldb, const void* bias, DType bias_dtype, float beta, void* C, DType c_dtype,
               int64_t ldc);

// The decode q/k/v projection and its rope split in one launch: q, k, v = ropeQkvSplit(x·wᵀ + bias) (with the
// KV-cache write when `cache` is given), the same bits as gemv_bf16 (bf16 output) then rope_qkv (rope.h).
// x bf16 [M, K] contiguous, 1 <= M <= kGemvMaxRows; w bf16 [(hq + 2 hkv)·D, K] contiguous; bias bf16 or f32
// [(hq + 2 hkv)·D] or null; positions i32 [M]; inv_freq f32 [D/2]; q bf16 [M, hq, D], k and v bf16 [M, hkv, D].
bool gemv_rope_qkv_applies(const Tensor& x, const Tensor& w, int64_t d);
void gemv_rope_qkv(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& positions,
                   const Tensor& inv_freq, float scaling, const Tensor& q, const Tensor& k, const Tensor& v,
                   const RopeCacheWrite* cache);

// ---- batch-invariant linear (invariant_linear.cu) -----------------------------------------------------------------
// While batch_invariant() (device.h), gemm_raw sends the linears of a forward here: C[M,N] = A[M,K] · B[N,K]ᵀ
// (+ bias[N] bf16) with bf16 A and B, C bf16 or f32, alpha 1, beta 0. Our mma.sync tiles (moe_gemm.cuh, dense
// mode) sum every output over k in one order at every M and tile shape, with no split-K: a row's result does not
// depend on the other rows (cuBLAS picks its algorithm, split-K included, by M; the GEMV splits K).
bool invariant_linear_applies(int64_t M, int64_t N, int64_t K, const void* A, int64_t lda, bool transA, const void* B,
                              int64_t ldb, bool transB, DType ab_dtype, const void* bias, DType bias_dtype, float alpha,
                              float beta, const void* C, DType c_dtype, int64_t ldc);
void invariant_linear(void* stream, int64_t M, int64_t N, int64_t K, const void* A, int64_t lda, const void* B,
                      int64_t ldb, const void* bias, void* C, DType c_dtype, int64_t ldc);

}  // namespace gptoss::cuda
