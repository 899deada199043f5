// attention_common.cuh: pieces shared by the attention kernels (forward, backward, decode): tensor-core MMA
// (m16n8k16 bf16, fp32 accumulate) and ldmatrix through inline PTX, cp.async tile loads into XOR-swizzled shared
// memory, and the kernel parameter block.
//
// Fragment layout of mma.m16n8k16 (lane = 4*g + t):
//   A 16x16: a0 (row g, k 2t..2t+1), a1 (row g+8, same k), a2 (row g, k 2t+8..), a3 (row g+8, k 2t+8..)
//   B 16x8 : b0 (k 2t..2t+1, col g), b1 (k 2t+8.., col g)
//   C 16x8 : c0,c1 (row g, cols 2t, 2t+1), c2,c3 (row g+8, same cols)
// So two adjacent C tiles (16 rows x 16 cols) converted to bf16 are exactly the A fragment of the next product.
#pragma once
#include <cstdint>
#include <cstdio>

#include "attention.h"
#include "attention_heuristics.h"
#include "common.cuh"

namespace gptoss::cuda::attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Params {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  __nv_bfloat16* o;
  float* lse;       // [Hq, T]
  const int* cu;    // [nSeq+1]
  const int* used;  // [nSeq] or null
  int nseq;         // sequences in cu
  const void* sinks;
  int sinks_bf16;
  int T, Hq, Hkv, G, window;
  float scale, scale_log2;
  // backward
  const __nv_bfloat16* dout;
  float* dlt;  // D_i = dO_i . O_i, [Hq, T]
  void* dq;
  void* dk;
  void* dv;
  int grad_f32;
  float* dq_acc;  // fp32 [Hq, T, 64], unscaled: the fused-dQ backward's accumulator (deterministic: false)
};

// The sink logit of query head h in the log2 domain (-inf without sinks). P is any parameter block with
// `const void* sinks` ([Hq] f32, or bf16 when sinks_bf16) and `int sinks_bf16`: Params, the paged kernel's.
template <class P>
__device__ __forceinline__ float sink_log2(const P& p, int h) {
  if (!p.sinks) return -INFINITY;
  float s = p.sinks_bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p.sinks)[h])
                         : static_cast<const float*>(p.sinks)[h];
  return s * kLog2e;
}

// Host side of the same: points p at the sinks tensor (f32 or bf16 [Hq]), or at none.
template <class P>
inline void bind_sinks(P& p, const Tensor* sinks) {
  p.sinks = sinks ? sinks->raw() : nullptr;
  p.sinks_bf16 = sinks && sinks->dtype == DType::BF16;
}

// Sequence s: first token, length and real (non-padding) length.
struct SeqInfo {
  int start, len, used;
};
__device__ __forceinline__ SeqInfo seq_info(const int* cu, const int* used, int s) {
  SeqInfo r;
  r.start = cu[s];
  r.len = cu[s + 1] - r.start;
  r.used = used ? min(r.len, max(0, used[s])) : r.len;
  return r;
}

// The key tiles (bn keys each) that any real query row of the block q0 .. q0 + bm - 1 can see (causal or window band,
// rows and keys past si.used left out): tiles lo .. hi - 1. The forward and dQ kernels stream exactly these.
struct KeyTiles {
  int lo, hi;
};
__device__ __forceinline__ KeyTiles key_tiles_seen(const Params& p, const SeqInfo& si, int q0, int bm, int bn) {
  const int n_lo = p.window > 0 ? max(0, q0 - p.window + 1) : 0;
  const int n_hi = min(q0 + bm, si.used);
  return {n_lo / bn, (n_hi + bn - 1) / bn};
}

// A query block past the sequence's real tokens (padding): zero output rows and lse 0 for head h, by all NT threads.
template <int D, int NT>
__device__ __forceinline__ void zero_padding_block(const Params& p, const SeqInfo& si, int q0, int rows, int h) {
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D;
  for (int i = threadIdx.x; i < rows * D; i += NT) {
    const int r = i / D, d = i % D;
    p.o[(si.start + q0 + r) * qstride + h * D + d] = __float2bfloat16(0.f);
  }
  for (int r = threadIdx.x; r < rows; r += NT) p.lse[static_cast<int64_t>(h) * p.T + si.start + q0 + r] = 0.f;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared (zero-filled when !pred), by shared-memory address or by pointer.
__device__ __forceinline__ void cp_async16(uint32_t smem_addr, const void* gmem, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  cp_async16(smem_u32(smem), gmem, pred);
}
// 4-byte cp.async (zero-filled when !pred): lse / D_i rows, so no thread waits on a plain global load mid-loop.
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool pred) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(pred ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Accumulator fragments (rows x 8 NB columns, f32; m16n8k16 / wgmma accumulator layout) -> the bf16 A fragments of
// the next product over those columns (per warp exactly the mma.sync m16n8k16 A layout, see wgmma.cuh): P.V, dS.K.
// One of them: the A fragment of columns 16 kk .. 16 kk + 15 (accumulator tiles 2 kk and 2 kk + 1).
template <int NB>
__device__ __forceinline__ void pack_a_frag(const float (&x)[NB][4], int kk, uint32_t (&a)[4]) {
  a[0] = pack_bf16(x[2 * kk][0], x[2 * kk][1]);
  a[1] = pack_bf16(x[2 * kk][2], x[2 * kk][3]);
  a[2] = pack_bf16(x[2 * kk + 1][0], x[2 * kk + 1][1]);
  a[3] = pack_bf16(x[2 * kk + 1][2], x[2 * kk + 1][3]);
}
template <int NB>
__device__ __forceinline__ void pack_a_frags(const float (&x)[NB][4], uint32_t (&a)[NB / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < NB / 2; kk++) pack_a_frag(x, kk, a[kk]);
}

// Forward epilogue, one thread's share of query row `row` of head h (fragment half r: columns 8 i + 2 t4 (+1) of
// acc[i][2 r .. 2 r + 1]): out = acc / lsum (lsum = the row's sum with the sink's share), lse = ln(lsum) + the row's
// max (m, log2 domain) in natural log. Padding rows (row >= used) get zeros and lse 0; rows past the sequence none.
template <int D>
__device__ __forceinline__ void store_out_row(const Params& p, const SeqInfo& si, int h, int row, int r, int t4,
                                              const float (&acc)[D / 8][4], float m, float lsum) {
  if (row >= si.len) return;
  const int64_t tok = si.start + row;
  __nv_bfloat16* o = p.o + tok * (static_cast<int64_t>(p.Hq) * D) + h * D;
  const bool real = row < si.used;
  const float inv = real ? 1.f / lsum : 0.f;
#pragma unroll
  for (int i = 0; i < D / 8; i++)
    *reinterpret_cast<uint32_t*>(o + i * 8 + 2 * t4) =
        pack_bf16(real ? acc[i][2 * r] * inv : 0.f, real ? acc[i][2 * r + 1] * inv : 0.f);
  if (t4 == 0) p.lse[static_cast<int64_t>(h) * p.T + tok] = real ? (m + log2f(lsum)) * kLn2 : 0.f;
}

// Element offset of (row r, 16-byte chunk ch) in a tile with D columns: chunks XOR-swizzled by the row so that
// ldmatrix (8 rows, same chunk) hits 8 different bank groups. Rows of fewer than 8 chunks (head_dim 16, 32)
// swizzle within the row (D/8 bank groups).
template <int D>
__device__ __forceinline__ int swz(int r, int ch) {
  constexpr int kMask = D / 8 >= 8 ? 7 : D / 8 - 1;
  return r * D + ((ch ^ (r & kMask)) << 3);
}

// Loads ROWS x D bf16 (row stride `stride` elements in global memory) into a swizzled shared tile; rows >= nvalid
// are zero-filled.
template <int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile(__nv_bfloat16* s, const __nv_bfloat16* g, int64_t stride, int nvalid) {
  constexpr int CH = D / 8;
  for (int c = threadIdx.x; c < ROWS * CH; c += NT) {
    int r = c / CH, ch = c % CH;
    bool ok = r < nvalid;
    cp_async16(s + swz<D>(r, ch), ok ? g + r * stride + ch * 8 : g, ok);
  }
}

// Loads ROWS floats (zero past nvalid) with plain loads (small vectors: lse, D_i).
template <int ROWS, int NT>
__device__ __forceinline__ void load_vec(float* s, const float* g, int nvalid) {
  for (int r = threadIdx.x; r < ROWS; r += NT) s[r] = r < nvalid ? g[r] : 0.f;
}

// A fragments (16 rows starting at row0, all D columns) from a swizzled tile (row-major operand).
template <int D>
__device__ __forceinline__ void load_a_frags(const __nv_bfloat16* s, int row0, uint32_t (*f)[4]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    int r = row0 + (lane & 15), ch = kk * 2 + (lane >> 4);
    ldsm_x4(smem_u32(s + swz<D>(r, ch)), f[kk][0], f[kk][1], f[kk][2], f[kk][3]);
  }
}

// B fragments for X^T where the tile stores X row-major [n][k]: two n8 tiles (rows n0..n0+15) for k chunk kk.
// b[0], b[1]: n-tile n0; b[2], b[3]: n-tile n0+8.
template <int D>
__device__ __forceinline__ void load_bT_frags(const __nv_bfloat16* s, int n0, int kk, uint32_t* b) {
  const int lane = threadIdx.x & 31;
  int r = n0 + (lane & 7) + ((lane >> 4) << 3), ch = kk * 2 + ((lane >> 3) & 1);
  ldsm_x4(smem_u32(s + swz<D>(r, ch)), b[0], b[1], b[2], b[3]);
}

// B fragments for X where the tile stores X row-major [k][n] (k = rows): k rows k0..k0+15, two n8 tiles starting
// at column 16*np. b[0], b[1]: n-tile 2np; b[2], b[3]: n-tile 2np+1.
template <int D>
__device__ __forceinline__ void load_b_frags(const __nv_bfloat16* s, int k0, int np, uint32_t* b) {
  const int lane = threadIdx.x & 31;
  int r = k0 + (lane & 7) + (((lane >> 3) & 1) << 3), ch = np * 2 + (lane >> 4);
  ldsm_x4_t(smem_u32(s + swz<D>(r, ch)), b[0], b[1], b[2], b[3]);
}

// c[16 rows][N] f32 += A[16 rows][K] . B[N][K]^T, per warp: A as bf16 fragments (load_a_frags), B row-major [n][k]
// in the swizzled shared tile sB (load_bT_frags). The forward kernels' scores S = Q K^T (K = head_dim, N = keys).
template <int K, int N>
__device__ __forceinline__ void mma16816_abT(float (&c)[N / 8][4], const uint32_t (&a)[K / 16][4],
                                             const __nv_bfloat16* sB) {
#pragma unroll
  for (int kk = 0; kk < K / 16; kk++) {
#pragma unroll
    for (int np = 0; np < N / 16; np++) {
      uint32_t b[4];
      load_bT_frags<K>(sB, np * 16, kk, b);
      mma16816(c[2 * np], a[kk], b[0], b[1]);
      mma16816(c[2 * np + 1], a[kk], b[2], b[3]);
    }
  }
}

// acc[16 rows][N] f32 += bf16(X)[16 rows][K] . B[K][N], per warp: X = the f32 accumulator fragments of the previous
// product (K / 8 C fragments), converted to bf16 A fragments one 16-column chunk at a time (pack_a_frag);
// B row-major in the swizzled shared tile sB (load_b_frags). The mma.sync kernels' second products: O += P.V and
// dQ += dS.K (rows = queries, K = the tile's keys, sB = the V / K tile), N = head_dim.
template <int N, int K>
__device__ __forceinline__ void mma16816_chain(float (&acc)[N / 8][4], const float (&x)[K / 8][4],
                                               const __nv_bfloat16* sB) {
#pragma unroll
  for (int kk = 0; kk < K / 16; kk++) {
    uint32_t a[4];
    pack_a_frag(x, kk, a);
#pragma unroll
    for (int np = 0; np < N / 16; np++) {
      uint32_t b[4];
      load_b_frags<N>(sB, kk * 16, np, b);
      mma16816(acc[2 * np], a, b[0], b[1]);
      mma16816(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}
// The same for two products over one k loop, interleaved per 16 x 16 block (two independent MMA chains in flight):
// dV += P^T.dO and dK += dS^T.Q of the mma.sync dK/dV kernel (rows = keys, K = the step's queries).
template <int N, int K>
__device__ __forceinline__ void mma16816_chain2(float (&acc1)[N / 8][4], const float (&x1)[K / 8][4],
                                                const __nv_bfloat16* sB1, float (&acc2)[N / 8][4],
                                                const float (&x2)[K / 8][4], const __nv_bfloat16* sB2) {
#pragma unroll
  for (int kk = 0; kk < K / 16; kk++) {
    uint32_t a1[4], a2[4];
    pack_a_frag(x1, kk, a1);
    pack_a_frag(x2, kk, a2);
#pragma unroll
    for (int np = 0; np < N / 16; np++) {
      uint32_t b[4];
      load_b_frags<N>(sB1, kk * 16, np, b);
      mma16816(acc1[2 * np], a1, b[0], b[1]);
      mma16816(acc1[2 * np + 1], a1, b[2], b[3]);
      load_b_frags<N>(sB2, kk * 16, np, b);
      mma16816(acc2[2 * np], a2, b[0], b[1]);
      mma16816(acc2[2 * np + 1], a2, b[2], b[3]);
    }
  }
}

// 2^x as one MUFU op (ex2.approx.ftz: -inf -> 0, subnormal results flush to 0, which exp2f spends extra
// instructions to keep; a probability below 2^-126 is 0 for bf16 P anyway).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// One online-softmax step (FlashAttention-2) of the mma.sync forward kernels over a tile of scores, for this
// thread's two rows (fragment halves r = 0, 1: rows g and g + 8 of the warp's 16). sc: NJ n8 fragments of scaled
// scores (log2 domain, masked entries -inf), replaced by P = 2^(s - max); m_r / l_r: the rows' running max and
// sum (this thread's columns only; the max is reduced across the quad); acc: the output fragments [D / 8][4],
// rescaled by 2^(old max - new max). A row that has seen only -inf keeps max -inf and uses base 0, so its P and
// alpha stay finite (P = 0).
template <int NJ, int NO>
__device__ __forceinline__ void online_softmax_step(float (&sc)[NJ][4], float (&m_r)[2], float (&l_r)[2],
                                                    float (&acc)[NO][4]) {
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float mx = m_r[r];
#pragma unroll
    for (int j = 0; j < NJ; j++) mx = fmaxf(mx, fmaxf(sc[j][2 * r], sc[j][2 * r + 1]));
    mx = quad_max(mx);
    const float base = mx == -INFINITY ? 0.f : mx;
    const float alpha = exp2f(m_r[r] - base);
    m_r[r] = mx;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < NJ; j++) {
      sc[j][2 * r] = exp2f(sc[j][2 * r] - base);
      sc[j][2 * r + 1] = exp2f(sc[j][2 * r + 1] - base);
      sum += sc[j][2 * r] + sc[j][2 * r + 1];
    }
    l_r[r] = l_r[r] * alpha + sum;
#pragma unroll
    for (int d = 0; d < NO; d++) {
      acc[d][2 * r] *= alpha;
      acc[d][2 * r + 1] *= alpha;
    }
  }
}

// Split-KV combine (flash-decoding) for column d of one (query row, head): merges nsplit partial states (mp: max,
// log2 domain, -inf for a split that saw no key; lp: sum of 2^(s - max); op: unnormalised output [nsplit][D]) with
// the sink logit `sink` (log2 domain, -inf for none). With M = max(sink, mp[s]): o = sum_s 2^(mp[s] - M) op[s][d],
// L = 2^(sink - M) + sum_s 2^(mp[s] - M) lp[s]; the output is o / L (L is 0 only when nothing was seen at all).
// kFromL2: read the partials through L2 (__ldcg), for a merge by the last of the split CTAs in the same launch
// (other SMs wrote them: this SM's L1 must not serve them).
template <int D, bool kFromL2 = false>
__device__ __forceinline__ void merge_splits(float sink, const float* mp, const float* lp, const float* op, int nsplit,
                                             int d, float& o, float& L) {
  auto ld = [](const float* a) { return kFromL2 ? __ldcg(a) : *a; };
  float M = sink;
  for (int s = 0; s < nsplit; s++) M = fmaxf(M, ld(mp + s));
  L = sink == -INFINITY ? 0.f : exp2f(sink - M);
  o = 0.f;
  for (int s = 0; s < nsplit; s++) {
    const float ms = ld(mp + s);
    if (ms == -INFINITY) continue;
    const float w = exp2f(ms - M);
    L += w * ld(lp + s);
    o += w * ld(op + s * D + d);
  }
}

}  // namespace gptoss::cuda::attn


namespace gptoss::cuda::attn {
inline bool device_is_sm90(int device) {
  static int cached[64] = {};  // 0 unknown, 1 yes, 2 no
  if (device < 0 || device >= 64) return false;
  if (!cached[device]) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cached[device] = major == 9 ? 1 : 2;  // sm_90a code runs on sm_90 only
  }
  return cached[device] == 1;
}

// Says on stderr, once per call site (`warned`: that site's static flag), that `op` found no TMA tensor map for
// `tensors` (a driver without cuTensorMapEncodeTiled, or an unaligned tensor) and runs `fallback` instead: correct,
// only slower.
inline void warn_no_tma_once(bool& warned, const char* op, const char* tensors, const char* fallback) {
  if (!warned)
    std::fprintf(stderr,
                 "gptoss: %s: no TMA tensor map for %s (driver without cuTensorMapEncodeTiled, or an unaligned "
                 "tensor); using %s\n",
                 op, tensors, fallback);
  warned = true;
}
}  // namespace gptoss::cuda::attn

namespace gptoss::cuda {
// Fills the pointer/shape part of the parameter block (defined in attention_fwd.cu).
attn::Params make_attn_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* sinks,
                              const Tensor& cu, const Tensor* used, int window, float scale);
// The warp-specialized TMA forward for head_dim 64 on sm_90 (attention_fwd_ws.cu) in the configuration `plan`
// gives; false when no tensor map can be encoded for these tensors (nothing was launched).
bool launch_fwd_ws(const attn::FwdPlan& plan, const attn::Params& p, int nseq, int max_seqlen, cudaStream_t st);
}  // namespace gptoss::cuda
