// paged_attention.cu: attention with sinks over a paged KV cache (semantics: native/cpu/paged_attention.h), one
// kernel for every sequence of an engine step, decodes and prefill chunks mixed, with tensor-core MMAs
// (mma.sync m16n8k16 bf16, fp32 accumulate). The math is the dense kernels' (attention_common.cuh): the S = Q K^T
// and O += P V fragment loops, the online-softmax step and the split-KV combine with the sink; this file adds the
// row tiling across sequences and the block-table gather.
//
// Rows. Query head h reads kv head h / G (G = Hq / Hkv). A CTA serves one kv head and a tile of TM = 64 "rows",
// where row f of sequence b is its query row f / G under head kvh·G + f % G: sequence b has qlen_b·G rows, cut
// into ceil(qlen_b·G / 64) tiles that never cross sequences. So a decode (qlen 1) puts the G query heads of one kv
// head into one tile and reads that kv head's K/V once for all of them; a prefill chunk packs 64/G positions per
// tile. Each of the 4 warps owns 16 rows and, FlashAttention-2 style, runs an online softmax over all keys.
//
// Grid: (tile, kv head, split). The tiles of the step are numbered sequence by sequence; the host only knows an
// upper bound (ceil(N·G/64) + B, the metadata stays on the device), so each CTA finds its (sequence, tile) with a
// block-wide scan over queryStarts and CTAs past the last tile exit. Keys: the tile needs positions lo..hi (hi =
// its last row's position, lo = its first row's position - window + 1, or 0), and split s of nsplit takes an
// equal share of that range (whole 64-key steps); a sliding layer therefore reads only its window's blocks. Keys
// are gathered through the block table 64 at a time into swizzled shared memory with cp.async (double-buffered).
//
// Epilogue: with one split (enough tiles to fill the GPU) the CTA folds in the sink and writes bf16 out; with
// several (few tiles: small decode batches, flash-decoding) each split writes fp32 partials (unnormalised out, max,
// sum) and the last of the tile's split CTAs to finish merges them with the sink (merge_splits, as in
// attention_decode.cu) in the same launch. "Last" is a ticket: every split CTA fences its partials (release) and
// thread 0 takes a ticket from the (tile, kv head)'s counter with atomicInc(limit nsplit - 1), which wraps the
// counter back to 0 at the last ticket, so the next launch (or CUDA-graph replay) starts from 0 with no memset;
// the last CTA fences again (acquire) and reads the partials through L2. One launch per layer instead of two: at
// batch 1 a decode step is ~13 small kernels a layer, each node of a graph replay costing its launch and ramp.
// Splits happen only when the grid has fewer than kFillCtas (tile, kv head) pairs, so kFillCtas static counters
// per device cover every split launch; launches on a device are ordered on its one compute stream.
#include <algorithm>

#include "attention_common.cuh"
#include "paged_attention.h"

namespace gptoss::cuda {
namespace paged {

using attn::cp_async16;
using attn::cp_async_commit;
using attn::cp_async_wait;
using attn::kLn2;
using attn::kLog2e;
using attn::pack_bf16;
using attn::quad_sum;
using attn::sink_log2;
using attn::swz;

constexpr int TM = 64;  // rows per CTA (4 warps x 16)
constexpr int TN = 64;  // keys per pipeline step
constexpr int NW = 4, NT = NW * 32;
constexpr int kFillCtas = 132 * 4;  // CTAs that fill an H100 (~4 per SM): fewer (tile, kv head) pairs split the keys
// Keys a split takes at least. A split costs its partials' writes, a fence, a ticket and the last CTA's merge
// (several dependent L2 round trips), while one more 64-key step of a CTA costs about one MMA + softmax step (the
// next tile's gather is already in flight: double-buffered), so short contexts run unsplit: at batch 1 a context
// of <= kMinSplitKeys keys is one CTA per kv head.
constexpr int kMinSplitKeys = 256;
// At most this many splits, so the last CTA's merge weights [TM][kMaxSplit] fit the CTA's shared memory.
constexpr int kMaxSplit = 128;
static_assert((TM * kMaxSplit + TM) * 4 <= (TM * 64 + 2 * 2 * TN * 64) * 2, "merge weights fit the D = 64 tiles");

// Split tickets, one per (tile, kv head) of a split launch (blockIdx.y·gridDim.x + blockIdx.x < kFillCtas);
// zero when the module loads, back to zero after every launch (atomicInc wraps).
__device__ unsigned int g_split_ticket[kFillCtas];

template <int D>
struct Cfg {
  static constexpr int SMEM = (TM * D + 2 * 2 * TN * D) * 2;  // Q tile + 2 stages of K and V tiles, bf16
};

struct Params {
  const __nv_bfloat16* q;       // [N, Hq, D]
  const __nv_bfloat16* kpool;   // [numBlocks, blockSize, Hkv, D]; dense: k [N, Hkv, D]
  const __nv_bfloat16* vpool;
  const int* block_tables;      // [B, maxBlocks]; null: dense (see dense_attention_forward)
  const int* context_lens;      // [B] (paged)
  const int* query_starts;      // [B+1]
  const int* used;              // dense: [B] real tokens of each sequence (rows past them are padding), or null
  float* lse;                   // dense: [Hq, N] the log of each row's softmax denominator (sink included)
  const void* sinks;            // [Hq] f32 or bf16, or null
  int sinks_bf16;
  __nv_bfloat16* out;           // [N, Hq, D]
  float* opart;                 // [N, Hq, nsplit, D]  (nsplit > 1)
  float* mpart;                 // [N, Hq, nsplit]     max, log2 domain
  float* lpart;                 // [N, Hq, nsplit]     sum of 2^(s - max)
  int N, B, Hq, Hkv, G, block_size, max_blocks, window, nsplit;
  int align_keys;  // batch-invariant mode: key steps start at multiples of TN positions (see the kernel)
  float scale_log2;
};

// Inclusive prefix sum of v over the block (NT threads); `total` gets the block's sum. sh: NW ints.
__device__ __forceinline__ int block_inclusive_scan(int v, int* sh, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += n;
  }
  if (lane == 31) sh[warp] = v;
  __syncthreads();
  int before = 0;
  total = 0;
#pragma unroll
  for (int w = 0; w < NW; w++) {
    before += w < warp ? sh[w] : 0;
    total += sh[w];
  }
  __syncthreads();  // sh is rewritten by the next call
  return v + before;
}

// The (sequence, tile within it) of global tile t; false when t is past the step's last tile.
__device__ __forceinline__ bool find_tile(const Params& p, int t, int& seq, int& local_tile) {
  __shared__ int s_seq, s_tile, s_scan[NW];
  if (threadIdx.x == 0) s_seq = -1;
  __syncthreads();
  int base = 0;  // tiles of the sequences before this chunk of NT sequences
  for (int b0 = 0; b0 < p.B; b0 += NT) {
    const int b = b0 + threadIdx.x;
    int tiles = 0;
    if (b < p.B) tiles = max(0, ((p.query_starts[b + 1] - p.query_starts[b]) * p.G + TM - 1) / TM);
    int total;
    const int incl = block_inclusive_scan(tiles, s_scan, total);
    if (tiles > 0 && t >= base + incl - tiles && t < base + incl) {
      s_seq = b;
      s_tile = t - (base + incl - tiles);
    }
    base += total;
    __syncthreads();
    if (s_seq >= 0 || t < base) break;  // uniform: shared value and block-wide sums
  }
  seq = s_seq;
  local_tile = s_tile;
  return seq >= 0;
}

template <int D>
__global__ void __launch_bounds__(NT) paged_attention_kernel(Params p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [TM][D]
  __nv_bfloat16* sK = sQ + TM * D;                                  // [2][TN][D]
  __nv_bfloat16* sV = sK + 2 * TN * D;                              // [2][TN][D]
  constexpr int CH = D / 8;                                         // 16-byte chunks per row

  int b, lt;
  if (!find_tile(p, blockIdx.x, b, lt)) return;
  const int kvh = blockIdx.y, split = blockIdx.z;
  // Dense (the training forward over packed k/v): sequence b's keys are rows qs .. of k and v, its context its
  // own rows, of which the first `used` are real.
  const bool dense = p.block_tables == nullptr;
  const int qs = p.query_starts[b], qlen = p.query_starts[b + 1] - qs, ctx = dense ? qlen : p.context_lens[b];
  const int real = dense && p.used ? min(p.used[b], qlen) : ctx;  // keys past `real` are padding
  const int nrows = qlen * p.G, f0 = lt * TM, valid_rows = min(TM, nrows - f0);
  // Positions of the tile's first and last rows, and the keys the tile needs.
  const int pos_first = ctx - qlen + f0 / p.G, pos_last = ctx - qlen + (f0 + valid_rows - 1) / p.G;
  const int lo_need = p.window > 0 ? max(0, pos_first - p.window + 1) : 0;
  const int hi = min(pos_last + 1, real);  // keys [lo_need, hi)
  // Batch-invariant mode: the key steps of every tile start at a multiple of TN, so a row meets its keys in the same
  // 64-key groups, in the same order, whichever rows share its tile (a decode's G heads, a prefill chunk's, a
  // training batch's). The steps a row's window or causality masks entirely leave its state bitwise unchanged
  // (online_softmax_step: factor 2^0 = 1 and P = 0 once it has a max; 0 · 0 before). Keys before lo_need are
  // not read (their blocks may be released: a sliding layer's); they load as zeros, masked like the others.
  const int lo = p.align_keys ? lo_need / TN * TN : lo_need;
  const int per_split = (hi - lo + p.nsplit - 1) / p.nsplit;
  const int share = (per_split + TN - 1) / TN * TN;  // whole 64-key steps
  const int c0 = lo + split * share, c1 = min(hi, c0 + share);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  // Output row index (n * Hq + h) of tile row r, or -1 for a row past the sequence's rows.
  auto out_row = [&](int r) -> int64_t {
    if (r >= valid_rows) return -1;
    const int f = f0 + r;
    return static_cast<int64_t>(qs + f / p.G) * p.Hq + kvh * p.G + f % p.G;
  };

  // A split with no keys for the tile (only when nsplit > 1) runs no key step and writes an empty partial (max
  // -inf, sum 0), then takes its ticket like the others.
  const int nt = c0 < c1 ? (c1 - c0 + TN - 1) / TN : 0;

  // Q tile: row r = query row qs + (f0 + r) / G, head kvh·G + (f0 + r) % G; rows past the sequence are zeros.
  for (int c = threadIdx.x; c < TM * CH; c += NT) {
    const int r = c / CH, ch = c % CH;
    const int64_t row = out_row(r);
    cp_async16(sQ + swz<D>(r, ch), row >= 0 ? p.q + row * D + ch * 8 : p.q, row >= 0);
  }
  // K/V tile i: keys c0 + i·TN .. (+TN), each gathered through the block table; keys >= c1 are zeros.
  const int64_t kv_row_stride = static_cast<int64_t>(p.Hkv) * D;
  const int* table = dense ? nullptr : p.block_tables + static_cast<int64_t>(b) * p.max_blocks;
  auto load_kv = [&](int i) {
    const int n0 = c0 + i * TN, stage = i & 1;
    for (int c = threadIdx.x; c < TN * CH; c += NT) {
      const int r = c / CH, ch = c % CH, key = n0 + r;
      const bool ok = key < c1 && key >= lo_need;
      int64_t off = 0;
      if (ok) {
        const int64_t slot = dense ? static_cast<int64_t>(qs) + key
                                   : static_cast<int64_t>(table[key / p.block_size]) * p.block_size + key % p.block_size;
        off = slot * kv_row_stride + kvh * D + ch * 8;
      }
      cp_async16(sK + stage * TN * D + swz<D>(r, ch), p.kpool + off, ok);
      cp_async16(sV + stage * TN * D + swz<D>(r, ch), p.vpool + off, ok);
    }
  };
  if (nt > 0) load_kv(0);
  cp_async_commit();  // group 0: Q and K/V tile 0

  // This thread's two rows (fragment halves r = 0, 1: rows g and g + 8 of its warp's 16): position and window.
  int pos_r[2], lo_r[2];
  bool valid_r[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = warp * 16 + g + 8 * r;
    valid_r[r] = row < valid_rows;
    pos_r[r] = ctx - qlen + (f0 + row) / p.G;
    lo_r[r] = p.window > 0 ? pos_r[r] - p.window + 1 : 0;
  }
  const bool warp_active = warp * 16 < valid_rows;  // a warp whose 16 rows are all padding only helps load

  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  uint32_t qf[D / 16][4];

  for (int i = 0; i < nt; i++) {
    if (i + 1 < nt) load_kv(i + 1);  // the other stage: its last readers finished at the end of step i - 1
    cp_async_commit();
    cp_async_wait<1>();  // everything but the group just committed: Q and tile i are in shared memory
    __syncthreads();
    if (warp_active) {
      if (i == 0) attn::load_a_frags<D>(sQ, warp * 16, qf);
      const __nv_bfloat16* cK = sK + (i & 1) * TN * D;
      const __nv_bfloat16* cV = sV + (i & 1) * TN * D;
      const int n0 = c0 + i * TN;
      // S = Q K^T for 16 rows x 64 keys: 8 n8 tiles.
      float sc[TN / 8][4];
#pragma unroll
      for (int j = 0; j < TN / 8; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
      attn::mma16816_abT<D, TN>(sc, qf, cK);
      // Mask: key in this split, causal (key <= the row's position) and inside the row's window.
#pragma unroll
      for (int j = 0; j < TN / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int r = e >> 1, key = n0 + j * 8 + 2 * t4 + (e & 1);
          const bool see = valid_r[r] && key < c1 && key <= pos_r[r] && key >= lo_r[r];
          sc[j][e] = see ? sc[j][e] * p.scale_log2 : -INFINITY;
        }
      // Online softmax per row (log2 domain); rows that saw nothing yet keep max -inf and a base of 0.
      attn::online_softmax_step(sc, m_r, l_r, acc);
      attn::mma16816_chain<D, TN>(acc, sc, cV);  // O += P V
    }
    __syncthreads();  // every warp is done with stage i & 1 before step i + 1 loads tile i + 2 into it
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; r++) {
    const float l = quad_sum(l_r[r]), m = m_r[r];
    const int64_t row = out_row(warp * 16 + g + 8 * r);
    if (!warp_active || row < 0) continue;
    if (p.nsplit == 1) {
      // out = acc 2^(m - M) / (l 2^(m - M) + 2^(sink - M)), M = max(m, sink).
      const float sink = sink_log2(p, static_cast<int>(row % p.Hq));
      const float M = fmaxf(m, sink);
      const float wm = M == -INFINITY ? 0.f : exp2f(m - M);
      const float L = l * wm + (sink == -INFINITY ? 0.f : exp2f(sink - M));
      // A dense padding row (past the sequence's real tokens) gets zeros and lse 0, as attentionForward gives.
      const bool pad = dense && pos_r[r] >= real;
      const float inv = L > 0.f && !pad ? wm / L : 0.f;
      __nv_bfloat16* o = p.out + row * D;
#pragma unroll
      for (int d = 0; d < D / 8; d++)  // padding rows: +0 (acc · 0 would give -0 for a negative acc)
        *reinterpret_cast<uint32_t*>(o + d * 8 + 2 * t4) =
            pad ? 0u : pack_bf16(acc[d][2 * r] * inv, acc[d][2 * r + 1] * inv);
      if (p.lse && t4 == 0) {
        const int h = static_cast<int>(row % p.Hq);
        p.lse[static_cast<int64_t>(h) * p.N + row / p.Hq] = pad || !(L > 0.f) ? 0.f : (M + log2f(L)) * kLn2;
      }
    } else {
      const int64_t pr = row * p.nsplit + split;
      float* o = p.opart + pr * D;
#pragma unroll
      for (int d = 0; d < D / 8; d++) {
        o[d * 8 + 2 * t4] = acc[d][2 * r];
        o[d * 8 + 2 * t4 + 1] = acc[d][2 * r + 1];
      }
      if (t4 == 0) {
        p.mpart[pr] = m;
        p.lpart[pr] = l;
      }
    }
  }
  if (p.nsplit == 1) return;

  // The split combine, by the last of the tile's nsplit CTAs: out[row, d] for the tile's rows, d < D.
  __shared__ bool s_last;
  __threadfence();  // release: this thread's partials are visible device-wide before its block's ticket
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned ticket = atomicInc(&g_split_ticket[blockIdx.y * gridDim.x + blockIdx.x], p.nsplit - 1);
    s_last = ticket == static_cast<unsigned>(p.nsplit - 1);
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();  // acquire: the other splits' partials are read after their tickets
  // The merge, merge_splits' arithmetic in its order, with every independent load in flight at once: each row's
  // max M (over its splits' maxes and the sink), split weights w_s = 2^(m_s - M) and L = 2^(sink - M) + Σ w_s l_s
  // first (one thread a row, into shared memory: the Q/K/V tiles are dead now), then out[row, d] = (Σ_s w_s
  // o_s[d]) / L, one thread an element. merge_splits per element re-read the maxes twice and loaded the sink,
  // the maxes and the partials one after another: about a dozen dependent L2 round trips at one decode row.
  // A split whose max is -inf (it saw no key of the row) has zero partials (P = 0), so its w_s o_s term is +0
  // and leaves the sum's bits as merge_splits' skip did.
  float* s_w = reinterpret_cast<float*>(smem_raw);  // [valid_rows][nsplit] (nsplit <= kMaxSplit: it fits)
  float* s_L = s_w + TM * kMaxSplit;                // [valid_rows]
  for (int r = threadIdx.x; r < valid_rows; r += NT) {
    const int64_t row = out_row(r);
    const float* mp = p.mpart + row * p.nsplit;
    const float* lp = p.lpart + row * p.nsplit;
    const float sink = sink_log2(p, static_cast<int>(row % p.Hq));
    float M = sink;
    for (int sp = 0; sp < p.nsplit; sp++) M = fmaxf(M, __ldcg(mp + sp));
    float L = sink == -INFINITY ? 0.f : exp2f(sink - M);
    for (int sp = 0; sp < p.nsplit; sp++) {
      const float ms = __ldcg(mp + sp);
      const float w = ms == -INFINITY ? 0.f : exp2f(ms - M);
      if (ms != -INFINITY) L += w * __ldcg(lp + sp);
      s_w[r * p.nsplit + sp] = w;
    }
    s_L[r] = L;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < valid_rows * D; i += NT) {
    const int r = i / D, d = i % D;
    const int64_t row = out_row(r);
    const float* op = p.opart + row * p.nsplit * D + d;
    const float* w = s_w + r * p.nsplit;
    float o = 0.f;
#pragma unroll 4
    for (int sp = 0; sp < p.nsplit; sp++) o += w[sp] * __ldcg(op + sp * D);
    const float L = s_L[r];
    p.out[row * D + d] = __float2bfloat16(L > 0.f ? o / L : 0.f);
  }
}

template <int D>
void launch(Params& p, int device, int max_context, bool invariant, cudaStream_t st) {
  static bool configured = false;
  if (!configured) {
    GPTOSS_CUDA_CHECK(cudaFuncSetAttribute(paged_attention_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           Cfg<D>::SMEM),
                      "pagedAttention: cudaFuncSetAttribute");
    configured = true;
  }
  // Tiles: at most ceil(N·G / TM) + B (each sequence's last tile may be partial). Split the keys only when the
  // tiles cannot fill the GPU (kFillCtas), into at most one split per kMinSplitKeys keys of the longest possible
  // context (and kMaxSplit).
  const int64_t tiles = ceil_div(static_cast<int64_t>(p.N) * p.G, TM) + p.B;
  const int64_t ctas = tiles * p.Hkv;
  const int64_t max_split = std::min<int64_t>(kMaxSplit, std::max<int64_t>(1, ceil_div(max_context, kMinSplitKeys)));
  p.nsplit = static_cast<int>(std::min<int64_t>(max_split, std::max<int64_t>(1, ceil_div(kFillCtas, ctas))));
  // Batch-invariant mode (device.h): no key splits (the merge would sum a row's keys in another order than one
  // CTA does, and the split count follows the batch) and key steps aligned to positions.
  p.align_keys = invariant;
  if (invariant) p.nsplit = 1;
  // nsplit > 1 only when ctas < kFillCtas: each (tile, kv head) has its ticket.
  GPTOSS_CHECK(p.nsplit == 1 || ctas < kFillCtas, "pagedAttention: split launch past its tickets");
  Tensor opart, mpart, lpart;
  if (p.nsplit > 1) {
    opart = make_tensor({p.N, p.Hq, p.nsplit, D}, DType::F32, device);
    mpart = make_tensor({p.N, p.Hq, p.nsplit}, DType::F32, device);
    lpart = make_tensor({p.N, p.Hq, p.nsplit}, DType::F32, device);
    p.opart = opart.data<float>();
    p.mpart = mpart.data<float>();
    p.lpart = lpart.data<float>();
  }
  GPTOSS_CHECK(tiles <= 0x7fffffff, "pagedAttention: too many query rows (", p.N, ") for one launch");
  paged_attention_kernel<D><<<dim3(static_cast<unsigned>(tiles), p.Hkv, p.nsplit), NT, Cfg<D>::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("pagedAttention: kernel launch");
}

}  // namespace paged

namespace paged {
// What both entry points set alike: q, k and v (the pools, or the packed rows), the sinks, out, the heads (hkv: k's
// kv-head count), the window and the scale.
Params common_params(const Tensor& q, const Tensor& k, const Tensor& v, int hkv, const Tensor* sinks, int window,
                     float scale, const Tensor& out) {
  Params p{};
  p.N = static_cast<int>(q.dim(0));
  p.q = q.data<__nv_bfloat16>();
  p.kpool = k.data<__nv_bfloat16>();
  p.vpool = v.data<__nv_bfloat16>();
  attn::bind_sinks(p, sinks);
  p.out = out.data<__nv_bfloat16>();
  p.Hq = static_cast<int>(q.dim(1));
  p.Hkv = hkv;
  p.G = p.Hq / p.Hkv;
  p.window = window;
  p.scale_log2 = scale * kLog2e;
  return p;
}

// The launch for q's head_dim (64 or 128).
void launch_for_head_dim(Params& p, const Tensor& q, int max_context, bool invariant) {
  cudaStream_t st = stream_of(q.device);
  if (q.dim(2) == 64)
    launch<64>(p, q.device, max_context, invariant, st);
  else
    launch<128>(p, q.device, max_context, invariant, st);
}
}  // namespace paged

void paged_attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                     const Tensor& context_lens, const Tensor& query_starts, const Tensor* sinks, int window,
                     float scale, const Tensor& out) {
  if (q.dim(0) == 0) return;
  DeviceGuard guard(q.device);
  paged::Params p = paged::common_params(q, k_pool, v_pool, static_cast<int>(k_pool.dim(2)), sinks, window, scale, out);
  p.block_tables = block_tables.data<int>();
  p.context_lens = context_lens.data<int>();
  p.query_starts = query_starts.data<int>();
  p.B = static_cast<int>(context_lens.dim(0));
  p.block_size = static_cast<int>(k_pool.dim(1));
  p.max_blocks = static_cast<int>(block_tables.dim(1));
  paged::launch_for_head_dim(p, q, p.max_blocks * p.block_size, batch_invariant());
}

void dense_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* sinks, const Tensor& cu,
                             const Tensor* used, int max_seqlen, int window, float scale, const Tensor& out,
                             const Tensor& lse) {
  if (q.dim(0) == 0) return;
  DeviceGuard guard(q.device);
  paged::Params p = paged::common_params(q, k, v, static_cast<int>(k.dim(1)), sinks, window, scale, out);
  p.block_tables = nullptr;  // dense: sequence b's keys are rows cu[b] .. cu[b+1]-1 of k and v
  p.query_starts = cu.data<int>();
  p.used = used ? used->data<int>() : nullptr;
  p.lse = lse.data<float>();
  p.B = static_cast<int>(cu.dim(0) - 1);
  paged::launch_for_head_dim(p, q, max_seqlen, true);  // unsplit (lse is written by unsplit CTAs only)
}

}  // namespace gptoss::cuda
