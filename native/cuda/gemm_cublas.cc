// gemm_cublas.cc: the CUDA GEMM on cuBLASLt (fp32 accumulation, the bias epilogue) with cuBLAS GemmEx as the
// fallback. A .cc file because it includes the cuBLAS headers, which CI lacks; CMake compiles it only with the
// CUDA backend on. One cuBLAS and one cuBLASLt handle per device, bound to the device's compute stream, sharing
// one workspace taken once from the caching allocator.
//
// Row-major trick: a row-major C[M,N] is a column-major C^T[N,M] = op(B)^T op(A)^T, so cuBLAS sees
// "A" := our B and "B" := our A, with m = N, n = M, k = K and the same transpose flags.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "../common/device.h"
#include "../common/error.h"
#include "gemm.h"

namespace gptoss::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

struct Handles {
  cublasHandle_t blas = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  // Side streams for concurrent GEMM lanes (created on first use), each with its own workspace.
  cudaStream_t lane_stream[kGemmLanes] = {};
  void* lane_workspace[kGemmLanes] = {};
  cudaEvent_t fork = nullptr, lane_done[kGemmLanes] = {};
};

thread_local int t_lane = -1;  // the lane GEMMs of this thread go to (-1: the compute stream)

struct Guard {  // makes `device` current for the scope (no CUDA kernel headers needed here)
  int prev = 0;
  explicit Guard(int device) {
    cudaGetDevice(&prev);
    if (prev != device) cudaSetDevice(device);
  }
  ~Guard() { cudaSetDevice(prev); }
};

void check_blas(cublasStatus_t s, const char* what, int64_t M, int64_t N, int64_t K) {
  if (s != CUBLAS_STATUS_SUCCESS)
    fail("matmul (", what, "): cuBLAS status ", static_cast<int>(s), " (", cublasGetStatusString(s), ") for M=", M,
         " N=", N, " K=", K);
}

std::mutex g_mu;
std::map<int, Handles>& handles_map() {
  static std::map<int, Handles> m;
  return m;
}

Handles& handles(int device) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto& m = handles_map();
  auto it = m.find(device);
  if (it != m.end()) return it->second;
  Guard g(device);
  Handles h;
  check_blas(cublasCreate(&h.blas), "cublasCreate", 0, 0, 0);
  check_blas(cublasLtCreate(&h.lt), "cublasLtCreate", 0, 0, 0);
  h.workspace = alloc(device, kWorkspaceBytes);
  check_blas(cublasSetStream(h.blas, static_cast<cudaStream_t>(stream(device))), "cublasSetStream", 0, 0, 0);
  check_blas(cublasSetWorkspace(h.blas, h.workspace, kWorkspaceBytes), "cublasSetWorkspace", 0, 0, 0);
  return m.emplace(device, h).first->second;
}

cudaDataType_t cuda_type(DType t) { return t == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }

uint32_t alignment_of(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 1;
  while (al < 256 && (a % (al * 2)) == 0) al *= 2;
  return al;
}

// Heuristic results cached per problem (shape, layouts, dtypes, alignments, epilogue).
using AlgoKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int, int,
                           uint32_t, uint32_t, uint32_t, int, int64_t>;
struct AlgoEntry {
  bool ok = false;
  cublasLtMatmulAlgo_t algo;
};
std::map<AlgoKey, AlgoEntry>& algo_cache() {
  static std::map<AlgoKey, AlgoEntry> m;
  return m;
}

// cuBLASLt path. Returns false when cuBLASLt has no algorithm for the problem (the caller falls back).
int64_t pow2_at_least(int64_t v) {
  int64_t p = 64;
  while (p < v) p *= 2;
  return p;
}

// Batched GEMMs (the MoE experts) run a few large shapes many times: the first call of a shape times the
// heuristic's top kTuneCandidates and keeps the fastest (on the H100 layer bench, 8, 16 and 32 candidates
// measured the same within noise).
constexpr int kTuneCandidates = 8;

// A strided batch in cuBLAS's column-major view: count problems, operand b at x + b*sx, y + b*sy, c + b*sc and
// the bias at bias + b*sbias (elements). count 1 = a plain GEMM.
struct LtBatch {
  int64_t count = 1, sx = 0, sy = 0, sc = 0, sbias = 0;
};

// Sets the batch attributes on a layout (nothing for a single problem).
bool set_batch(cublasLtMatrixLayout_t l, const LtBatch& b, int64_t stride) {
  if (b.count == 1) return true;
  const int32_t n = static_cast<int32_t>(b.count);
  return cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &n, sizeof(n)) ==
             CUBLAS_STATUS_SUCCESS &&
         cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)) ==
             CUBLAS_STATUS_SUCCESS;
}

// Heuristic query for the problem with n (bucket N) or k (bucket K) rounded up to a power of two (leading
// dimensions widened to stay valid); returns false when cuBLASLt has nothing.
bool lt_heuristic(Handles& h, cublasLtMatmulDesc_t op, int64_t m, int64_t n, int64_t k, int64_t ldx, bool tx,
                  int64_t ldy, bool ty, DType ab, DType ct, int64_t ldc, uint32_t ax, uint32_t ay, uint32_t ac,
                  const LtBatch& batch, cublasLtMatmulAlgo_t* algo, std::vector<cublasLtMatmulAlgo_t>* more = nullptr) {
  cublasLtMatrixLayout_t lx = nullptr, ly = nullptr, lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  bool ok = false;
  do {
    const int64_t ldx_q = std::max(ldx, tx ? k : m), ldy_q = std::max(ldy, ty ? n : k), ldc_q = std::max(ldc, m);
    if (cublasLtMatrixLayoutCreate(&lx, cuda_type(ab), tx ? k : m, tx ? m : k, ldx_q) != CUBLAS_STATUS_SUCCESS) break;
    if (cublasLtMatrixLayoutCreate(&ly, cuda_type(ab), ty ? n : k, ty ? k : n, ldy_q) != CUBLAS_STATUS_SUCCESS) break;
    if (cublasLtMatrixLayoutCreate(&lc, cuda_type(ct), m, n, ldc_q) != CUBLAS_STATUS_SUCCESS) break;
    // A bucketed (rounded-up) dimension makes each problem larger than the real strides leave room for: the query
    // widens a stride to its layout's size so that the problems it describes do not overlap.
    if (!set_batch(lx, batch, std::max(batch.sx, ldx_q * (tx ? m : k))) ||
        !set_batch(ly, batch, std::max(batch.sy, ldy_q * (ty ? k : n))) ||
        !set_batch(lc, batch, std::max(batch.sc, ldc_q * n)))
      break;
    if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) break;
    size_t ws = kWorkspaceBytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ax, sizeof(ax));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ay, sizeof(ay));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac));
    cublasLtMatmulHeuristicResult_t res[kTuneCandidates];
    int found = 0;
    if (cublasLtMatmulAlgoGetHeuristic(h.lt, op, lx, ly, lc, lc, pref, more ? kTuneCandidates : 1, res, &found) !=
            CUBLAS_STATUS_SUCCESS ||
        found == 0)
      break;
    *algo = res[0].algo;
    if (more)
      for (int i = 0; i < found; i++) more->push_back(res[i].algo);
    ok = true;
  } while (false);
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (lc) cublasLtMatrixLayoutDestroy(lc);
  if (ly) cublasLtMatrixLayoutDestroy(ly);
  if (lx) cublasLtMatrixLayoutDestroy(lx);
  return ok;
}

// The candidate with the shortest time (one warm-up run each, then the best of two timed runs); failures and
// errors keep the heuristic's first choice.
template <typename Run>
cublasLtMatmulAlgo_t fastest(int device, const std::vector<cublasLtMatmulAlgo_t>& cands, Run& run) {
  cudaStream_t st = static_cast<cudaStream_t>(stream(device));
  cudaEvent_t a = nullptr, b = nullptr;
  cublasLtMatmulAlgo_t best = cands[0];
  if (cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess) {
    if (a) cudaEventDestroy(a);
    cudaGetLastError();
    return best;
  }
  float best_ms = 1e30f;
  for (const auto& c : cands) {
    if (!run(&c)) continue;  // this candidate does not run here
    float ms = 1e30f;
    for (int rep = 0; rep < 2; rep++) {
      float t = 0.f;
      cudaEventRecord(a, st);
      const bool ok = run(&c);
      cudaEventRecord(b, st);
      if (!ok || cudaEventSynchronize(b) != cudaSuccess || cudaEventElapsedTime(&t, a, b) != cudaSuccess) {
        t = 1e30f;
        cudaGetLastError();
      }
      ms = std::min(ms, t);
    }
    if (ms < best_ms) {
      best_ms = ms;
      best = c;
    }
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best;
}

bool lt_matmul(int device, Handles& h, int64_t m, int64_t n, int64_t k, float alpha, const void* X, int64_t ldx,
               bool tx, const void* Y, int64_t ldy, bool ty, DType ab, const void* bias, float beta, void* C,
               DType ct, int64_t ldc, GemmBucket bucket, const LtBatch& batch = LtBatch{}) {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t lx = nullptr, ly = nullptr, lc = nullptr;
  bool ok = false;
  const uint32_t ax = alignment_of(X), ay = alignment_of(Y), ac = alignment_of(C);
  // In cuBLAS's column-major view our rows M are n; a bucketed dimension enters the key rounded up.
  const int64_t qn = bucket == GemmBucket::M ? pow2_at_least(n) : n;
  const int64_t qk = bucket == GemmBucket::K ? pow2_at_least(k) : k;
  AlgoKey key{device, m, qn, qk, ldx, ldy, ldc, tx, ty, static_cast<int>(ab), static_cast<int>(ct), bias != nullptr,
              ax, ay, ac, static_cast<int>(bucket), batch.count};
  do {
    if (cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) break;
    cublasOperation_t opx = tx ? CUBLAS_OP_T : CUBLAS_OP_N, opy = ty ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opx, sizeof(opx));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opy, sizeof(opy));
    if (bias) {
      cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
      if (batch.count > 1 &&
          cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &batch.sbias,
                                         sizeof(batch.sbias)) != CUBLAS_STATUS_SUCCESS)
        break;
    }
    // Stored (pre-op) shapes, column-major.
    if (cublasLtMatrixLayoutCreate(&lx, cuda_type(ab), tx ? k : m, tx ? m : k, ldx) != CUBLAS_STATUS_SUCCESS) break;
    if (cublasLtMatrixLayoutCreate(&ly, cuda_type(ab), ty ? n : k, ty ? k : n, ldy) != CUBLAS_STATUS_SUCCESS) break;
    if (cublasLtMatrixLayoutCreate(&lc, cuda_type(ct), m, n, ldc) != CUBLAS_STATUS_SUCCESS) break;
    if (!set_batch(lx, batch, batch.sx) || !set_batch(ly, batch, batch.sy) || !set_batch(lc, batch, batch.sc)) break;
    AlgoEntry entry;
    {
      std::lock_guard<std::mutex> lock(g_mu);
      auto it = algo_cache().find(key);
      if (it != algo_cache().end()) entry = it->second;
    }
    auto run = [&](const cublasLtMatmulAlgo_t* algo) {
      const bool lane = t_lane >= 0 && h.lane_stream[t_lane];
      return cublasLtMatmul(h.lt, op, &alpha, X, lx, Y, ly, &beta, C, lc, C, lc, algo,
                            lane ? h.lane_workspace[t_lane] : h.workspace, kWorkspaceBytes,
                            lane ? h.lane_stream[t_lane] : static_cast<cudaStream_t>(stream(device))) ==
             CUBLAS_STATUS_SUCCESS;
    };
    if (!entry.ok) {
      // Timing rewrites C, so only a call that overwrites it (beta 0) on the compute stream may tune; never while
      // the stream is captured into a CUDA graph (timing waits for the device).
      const bool tune = batch.count > 1 && beta == 0.f && t_lane < 0 && !capturing(device);
      std::vector<cublasLtMatmulAlgo_t> cands;
      if (!lt_heuristic(h, op, m, qn, qk, ldx, tx, ldy, ty, ab, ct, ldc, ax, ay, ac, batch, &entry.algo,
                        tune ? &cands : nullptr))
        break;
      if (cands.size() > 1) {
        entry.algo = fastest(device, cands, run);
        note_gemm_tune();
      }
      entry.ok = true;
      std::lock_guard<std::mutex> lock(g_mu);
      algo_cache()[key] = entry;
    }
    ok = run(&entry.algo);
    if (ok) note_launch();
    if (!ok && bucket != GemmBucket::None) {  // the bucket's algorithm does not fit this size: ask for this one
      cublasLtMatmulAlgo_t exact;
      ok = lt_heuristic(h, op, m, n, k, ldx, tx, ldy, ty, ab, ct, ldc, ax, ay, ac, batch, &exact) && run(&exact);
    }
  } while (false);
  if (lc) cublasLtMatrixLayoutDestroy(lc);
  if (ly) cublasLtMatrixLayoutDestroy(ly);
  if (lx) cublasLtMatrixLayoutDestroy(lx);
  if (op) cublasLtMatmulDescDestroy(op);
  return ok;
}

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("matmul lanes (", what, "): ", cudaGetErrorString(e));
}

}  // namespace

void gemm_lanes_fork(int device) {
  Handles& h = handles(device);
  Guard g(device);
  if (!h.fork) {
    check_cuda(cudaEventCreateWithFlags(&h.fork, cudaEventDisableTiming), "event");
    for (int i = 0; i < kGemmLanes; i++) {
      check_cuda(cudaStreamCreateWithFlags(&h.lane_stream[i], cudaStreamNonBlocking), "stream");
      check_cuda(cudaEventCreateWithFlags(&h.lane_done[i], cudaEventDisableTiming), "event");
      h.lane_workspace[i] = alloc(device, kWorkspaceBytes);
    }
  }
  check_cuda(cudaEventRecord(h.fork, static_cast<cudaStream_t>(stream(device))), "fork record");
  for (int i = 0; i < kGemmLanes; i++) check_cuda(cudaStreamWaitEvent(h.lane_stream[i], h.fork, 0), "fork wait");
}

void gemm_lane(int lane) { t_lane = lane >= 0 && lane < kGemmLanes ? lane : -1; }

void gemm_lanes_join(int device) {
  t_lane = -1;
  Handles& h = handles(device);
  if (!h.fork) return;
  Guard g(device);
  for (int i = 0; i < kGemmLanes; i++) {
    check_cuda(cudaEventRecord(h.lane_done[i], h.lane_stream[i]), "join record");
    check_cuda(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream(device)), h.lane_done[i], 0), "join wait");
  }
}


void gemm_raw(int device, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda, bool transA,
              const void* B, int64_t ldb, bool transB, DType ab_dtype, const void* bias, DType bias_dtype, float beta,
              void* C, DType c_dtype, int64_t ldc, GemmBucket bucket) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty product: C = bias + beta*C
    gemm_epilogue(device, M, N, nullptr, bias, bias_dtype, beta, C, c_dtype, ldc);
    return;
  }
  if (batch_invariant() && invariant_linear_applies(M, N, K, A, lda, transA, B, ldb, transB, ab_dtype, bias, bias_dtype,
                                                    alpha, beta, C, c_dtype, ldc)) {
    // Batch-invariant mode (device.h): a forward's linear on tiles whose row results do not depend on M.
    Handles& h = handles(device);
    const bool lane = t_lane >= 0 && h.lane_stream[t_lane];
    Guard g(device);
    invariant_linear(lane ? h.lane_stream[t_lane] : stream(device), M, N, K, A, lda, B, ldb, bias, C, c_dtype, ldc);
    return;
  }
  if (gemv_applies(M, N, K, A, lda, transA, B, ldb, transB, ab_dtype, c_dtype)) {
    // Decode-sized bf16 linear (M <= 8 rows, B stored [N,K]): the GEMV kernel reads B once at near HBM speed,
    // where cuBLAS's tiles reach ~half of it; it adds any bias dtype and beta*C itself (gemv.cu).
    Handles& h = handles(device);
    const bool lane = t_lane >= 0 && h.lane_stream[t_lane];
    gemv_bf16(device, lane ? h.lane_stream[t_lane] : stream(device), M, N, K, alpha, A, lda, B, ldb, bias, bias_dtype,
              beta, C, c_dtype, ldc);
    return;
  }
  Guard g(device);
  const bool f32_bias_bf16_out = c_dtype == DType::BF16 && bias && bias_dtype != c_dtype;
  if ((ab_dtype == DType::F32 && c_dtype == DType::BF16) || f32_bias_bf16_out) {
    // cuBLAS has no f32 x f32 -> bf16 combination, and an f32 bias added after a bf16 store would round twice:
    // fp32 temporary, then the epilogue adds bias and beta*C and rounds once to bf16.
    Tensor tmp = make_tensor({M, N}, DType::F32, device);
    gemm_raw(device, M, N, K, alpha, A, lda, transA, B, ldb, transB, ab_dtype, nullptr, DType::F32, 0.f,
             tmp.data<float>(), DType::F32, N, bucket);
    gemm_epilogue(device, M, N, tmp.data<float>(), bias, bias_dtype, beta, C, c_dtype, ldc);
    return;
  }
  Handles& h = handles(device);
  // The cuBLASLt bias epilogue wants the bias in the output's dtype; other biases go through our epilogue.
  const bool lt_bias = bias && bias_dtype == c_dtype;
  if (lt_matmul(device, h, N, M, K, alpha, B, ldb, transB, A, lda, transA, ab_dtype, lt_bias ? bias : nullptr, beta,
                C, c_dtype, ldc, bucket)) {
    if (bias && !lt_bias) gemm_epilogue(device, M, N, nullptr, bias, bias_dtype, 1.f, C, c_dtype, ldc);
    return;
  }
  GPTOSS_CHECK(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX, "matmul: dimensions too large for cuBLAS (M=", M,
               " N=", N, " K=", K, ")");
  check_blas(cublasGemmEx(h.blas, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                          static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B, cuda_type(ab_dtype),
                          static_cast<int>(ldb), A, cuda_type(ab_dtype), static_cast<int>(lda), &beta, C,
                          cuda_type(c_dtype), static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx", M, N, K);
  note_launch();
  if (bias) gemm_epilogue(device, M, N, nullptr, bias, bias_dtype, 1.f, C, c_dtype, ldc);
}

void gemm_strided_batched(int device, int64_t batch, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
                          int64_t lda, int64_t strideA, bool transA, const void* B, int64_t ldb, int64_t strideB,
                          bool transB, DType ab_dtype, const void* bias, int64_t strideBias, float beta, void* C,
                          DType c_dtype, int64_t ldc, int64_t strideC, GemmBucket bucket) {
  if (batch == 0 || M == 0 || N == 0) return;
  const size_t ab = ab_dtype == DType::BF16 ? 2 : 4, cb = c_dtype == DType::BF16 ? 2 : 4;
  auto one_by_one = [&] {  // cuBLASLt has no batched algorithm here: the same problems one at a time
    for (int64_t b = 0; b < batch; b++)
      gemm_raw(device, M, N, K, alpha, static_cast<const char*>(A) + b * strideA * ab, lda, transA,
               static_cast<const char*>(B) + b * strideB * ab, ldb, transB, ab_dtype,
               bias ? static_cast<const char*>(bias) + b * strideBias * cb : nullptr, c_dtype, beta,
               static_cast<char*>(C) + b * strideC * cb, c_dtype, ldc, bucket);
  };
  if (batch == 1 || K == 0 || (ab_dtype == DType::F32 && c_dtype == DType::BF16)) return one_by_one();
  Guard g(device);
  Handles& h = handles(device);
  LtBatch lb;
  lb.count = batch;
  lb.sx = strideB;  // column-major view: cuBLAS's first operand is our B
  lb.sy = strideA;
  lb.sc = strideC;
  lb.sbias = strideBias;
  if (!lt_matmul(device, h, N, M, K, alpha, B, ldb, transB, A, lda, transA, ab_dtype, bias, beta, C, c_dtype, ldc,
                 bucket, lb))
    one_by_one();
}

void gemm(const Tensor& a, const Tensor& b, const Tensor* bias, const Tensor& out, bool transA, bool transB,
          float alpha, bool accumulate) {
  const int64_t M = out.dim(0), N = out.dim(1);
  const int64_t K = transA ? a.dim(0) : a.dim(1);
  const void* pa = a.raw();
  const void* pb = b.raw();
  DType ab = a.dtype;
  Tensor tmp;
  if (a.dtype != b.dtype) {  // mixed bf16/f32: round the f32 operand to bf16 (autocast-style), run in bf16
    const Tensor& f = a.dtype == DType::F32 ? a : b;
    tmp = make_tensor(f.shape, DType::BF16, f.device);
    cast_f32_to_bf16(f.device, f.data<float>(), tmp.raw(), f.numel());
    (a.dtype == DType::F32 ? pa : pb) = tmp.raw();
    ab = DType::BF16;
  }
  gemm_raw(out.device, M, N, K, alpha, pa, a.dim(1), transA, pb, b.dim(1), transB, ab, bias ? bias->raw() : nullptr,
           bias ? bias->dtype : DType::F32, accumulate ? 1.f : 0.f, out.raw(), out.dtype, N);
}

}  // namespace gptoss::cuda
