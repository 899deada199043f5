// moe_decode.cu: the MoE expert MLPs for few routed rows (decode: 1-16 tokens, top-4), as split-K GEMV kernels
// that stream each routed expert's weights once at HBM speed.
//
// Why: at one token the four routed experts' weights (gate_up [H, 2I] + down [I, H] bf16, ~50 MB each at
// gpt-oss-20b size) are the whole cost, and the grouped mma.sync kernels (moe_gemm.cuh, with the 16x64 DecodeTiles of
// then) launched only (rows/16 + E)·(N/64) tiles that each walk the full K = 2880: too few independent loads in flight
// to saturate HBM (~35% of it at one row on an H100). Here every thread owns 8 contiguous output columns (one
// 16-byte vector of a weight row) for up to R rows, and K is split across blocks so that the grid fills every SM
// with independent 16-byte loads; a second tiny pass sums the K splits in a fixed order (deterministic, no fp32
// atomics) and applies the grouped path's epilogue (bias, bf16 rounding, clamped SwiGLU).
//
// Per product (gate_up: A = x rows gathered through perm_tok, K = H, Nc = 2I; down: A = h rows, K = I, Nc = H):
//   partial_kernel: part f32 [S, N, Nc], part[s, r] = Σ_{k in split s} A[r, k]·W_e[k, :]   (W_e [K, Nc] row-major)
//   reduce_kernel:  out[r] = bf16(Σ_s part[s, r] + bias_e)  (+ h[r] = bf16(swiglu(out[r])) for gate_up)
// Rounding points are those of moe_gemm.cuh's kEpiGuSwiglu / kEpiBiasBf16 epilogues: gu rounded to bf16 with its
// bias before the SwiGLU reads it, h rounded, yp rounded with its bias. The SwiGLU is swiglu_math.cuh's (expf),
// as the flat SwiGLU of the cuBLAS strategies and the CPU reference use.
//
// Tried and dropped: one launch per product (one block per reduce lane summing its splits, the last lane block of a
// tile adding the lane sums and applying the epilogue via a self-resetting ticket; the same bits) was slower at
// every size measured on an H100 (bench/results/moe-decode-fused-ab-h100.json: T 1 0.1014 ms vs 0.0914 ms here,
// T 8 0.477 vs 0.366; with CUDA graphs too). Not profiled further; its code is in git history
// (`git log -S fused_kernel -- native/cuda/moe_decode.cu`) should a profile suggest a fix.
//
// Experts with no rows cost nothing: the grid's expert dimension has min(E, N) slots, slot j takes the j-th
// expert with rows (read from the device offsets in-kernel), and slots beyond the routed experts exit at once.
#include "moe_decode.h"
#include "moe_decode_kernels.cuh"

namespace gptoss::cuda::moe_decode {

namespace {

// The product's launch shape (bench/moe_decode_harness/ sweeps others):
constexpr int kThreads = 128;  // partial_kernel: threads per block, 8 columns each (1024 columns, 2 KB of a W row)
constexpr int kUnroll = 8;     // weight rows per thread in flight (8 independent 16-byte loads)
constexpr int kMaxSplitK = 512;  // rows of K per block at most (x rows staged in shared memory: R·512·4 = 16 KB)
// Target blocks of partial_kernel per SM, by tokens T: at 128 threads and 8 loads of 16 bytes in flight each, 8
// blocks per SM keep ~128 KB in flight per SM, well above what HBM latency x bandwidth needs (~25-30 KB per SM on an
// H100). Measured with bench/moe_decode_harness on an H100 (bench/results/moe-decode-harness-h100.txt): at T 1 and 4
// no launch shape beat 8 (74.3 µs at T 1: 80% of HBM); at T 2, 4 (137.1 vs 151.2 µs; fewer, longer splits); at T 5-8,
// 12 (448.8 vs 463.8 µs at T 8).
inline int blocks_per_sm(int64_t T) { return T == 2 ? 4 : T >= 5 ? 12 : 8; }

// One product: out [N, Nc] (+ h) from A rows times W [E, K, Nc] plus bias [E, Nc], over the routing in offsets.
// T bounds the rows of any one expert (a token picks an expert at most once). With `combine` (the down product)
// the reduce also writes the tokens' combined output.
void product(int dev, const bf* A, int64_t lda, const int32_t* perm, const bf* W, const bf* bias,
             const int32_t* offsets, int E, int K, int Nc, int64_t T, int64_t N, float limit, bf* out, bf* h,
             const Combine* combine, cudaStream_t st, const char* what) {
  const int R = T >= 5 ? 8 : T >= 3 ? 4 : T == 2 ? 2 : 1;
  const int chunk_slots = static_cast<int>((T + R - 1) / R);
  const int slots = static_cast<int>(std::min<int64_t>(E, N));
  const Split sp = split_k(sm_count(dev, "moeForward decode"), slots, K, Nc, kThreads, blocks_per_sm(T), kMaxSplitK);
  Tensor part = make_tensor({sp.S, N, Nc}, DType::F32, dev);
  float* p = part.data<float>();
  switch (R) {
    case 1: launch_partial<1, kThreads, kUnroll>(A, lda, perm, W, offsets, E, K, Nc, sp, chunk_slots, slots, N, p, st); break;
    case 2: launch_partial<2, kThreads, kUnroll>(A, lda, perm, W, offsets, E, K, Nc, sp, chunk_slots, slots, N, p, st); break;
    case 4: launch_partial<4, kThreads, kUnroll>(A, lda, perm, W, offsets, E, K, Nc, sp, chunk_slots, slots, N, p, st); break;
    default: launch_partial<8, kThreads, kUnroll>(A, lda, perm, W, offsets, E, K, Nc, sp, chunk_slots, slots, N, p, st); break;
  }
  GPTOSS_CUDA_LAUNCH_CHECK(what);
  if (combine)
    launch_reduce_combine(p, sp.S, N, Nc, offsets, E, bias, T, combine->slot_pos.data<int32_t>(),
                          combine->topk_w.data<float>(), static_cast<int>(combine->k),
                          combine->residual ? combine->residual->data<bf>() : nullptr, out, combine->y.data<bf>(),
                          st);
  else launch_reduce(p, sp.S, N, Nc, offsets, E, bias, limit, out, h, st);
  GPTOSS_CUDA_LAUNCH_CHECK(what);
  // part goes back to the caching allocator; the stream orders its reuse after reduce_kernel.
}

}  // namespace

static_assert(kMaxSplitK % kUnroll == 0 && kMaxSplitK % 8 == 0, "splits are whole unrolled steps");

void expert_mlp(const Tensor& x, const Tensor& perm_tok, const Tensor& offsets, const MoeWeights& w, int64_t T,
                int64_t N, float limit, const Tensor& gu, const Tensor& h, const Tensor& yp, const Combine& combine,
                cudaStream_t st) {
  const int dev = x.device;
  const int64_t H = x.dim(1), E = w.gate_up_w.dim(0), I = w.down_w.dim(1);
  const int32_t* off = offsets.data<int32_t>();
  product(dev, x.data<bf>(), H, perm_tok.data<int32_t>(), w.gate_up_w.data<bf>(), w.gate_up_b.data<bf>(), off, (int)E,
          (int)H, (int)(2 * I), T, N, limit, gu.data<bf>(), h.data<bf>(), nullptr, st, "moeForward decode gate_up");
  product(dev, h.data<bf>(), I, nullptr, w.down_w.data<bf>(), w.down_b.data<bf>(), off, (int)E, (int)I, (int)H, T, N,
          limit, yp.data<bf>(), nullptr, &combine, st, "moeForward decode down");
}

}  // namespace gptoss::cuda::moe_decode
