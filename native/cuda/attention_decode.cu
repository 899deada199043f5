// attention_decode.cu: flash-decoding (split-K over the KV cache) with sinks, for one new query per sequence.
//
// Grid: (split, kv head x 16-head tile of its GQA group, sequence). A CTA reads its chunk of the cache for one kv
// head once and serves all the query heads of the group (rows of an m16n8k16 MMA, padded to 16), so KV bytes
// are read once per step. 64-key tiles stream through a 3-stage cp.async pipeline; each of the 4 warps takes
// 16 keys of a tile with its own online softmax, and the warps are merged in shared memory at the end. A
// combine kernel merges the splits and folds in the sink. The cache is [B, Smax, Hkv, D]; a paged cache can
// reuse the kernel by mapping (b, position) to a page in the tile loader.
#include "attention.h"
#include "attention_common.cuh"

namespace gptoss::cuda {
namespace attn {

template <int D>
struct DecCfg {
  static constexpr int TN = 64, NW = 4, NT = 128, STAGES = 3;
  static constexpr int SMEM_PIPE = (16 * D + STAGES * 2 * TN * D) * 2;
  static constexpr int SMEM_COMB = NW * 16 * (D + 2) * 4 + 16 * D * 2;
  static constexpr int SMEM = SMEM_PIPE > SMEM_COMB ? SMEM_PIPE : SMEM_COMB;
};

struct DecParams {
  const __nv_bfloat16* q;  // [B, Hq, D]
  const __nv_bfloat16* kc;  // [B, Smax, Hkv, D]
  const __nv_bfloat16* vc;
  const int* lens;
  const void* sinks;
  int sinks_bf16;
  __nv_bfloat16* out;  // [B, Hq, D]
  float* opart;        // [B, Hq, nsplit, D]
  float* mpart;        // [B, Hq, nsplit] (log2 domain)
  float* lpart;
  int B, Hq, Hkv, G, Smax, window, nsplit, chunk, ntile_h;
  float scale_log2;
};

template <int D>
__global__ void __launch_bounds__(128) decode_split_kernel(DecParams p) {
  using C = DecCfg<D>;
  constexpr int TN = C::TN, NT = C::NT, ST = C::STAGES;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sK = sQ + 16 * D;            // [ST][TN*D]
  __nv_bfloat16* sV = sK + ST * TN * D;        // [ST][TN*D]
  float* sO = reinterpret_cast<float*>(sQ + 16 * D);  // reused after the pipeline: [NW][16][D]
  float* sM = sO + C::NW * 16 * D;                    // [NW][16]
  float* sL = sM + C::NW * 16;                        // [NW][16]

  const int split = blockIdx.x, b = blockIdx.z;
  const int kvh = blockIdx.y / p.ntile_h, ht = blockIdx.y % p.ntile_h;
  const int h0 = kvh * p.G + ht * 16, nh = min(16, p.G - ht * 16);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int len = p.lens[b];
  const int lo = p.window > 0 ? max(0, len - p.window) : 0;
  const int c0 = split * p.chunk, c1 = min(c0 + p.chunk, len), s0 = max(c0, lo);
  const int64_t pbase = static_cast<int64_t>(b) * p.Hq + h0;  // partial row of head h0 (times nsplit)

  if (s0 >= c1) {
    for (int r = threadIdx.x; r < nh; r += NT) {
      p.mpart[(pbase + r) * p.nsplit + split] = -INFINITY;
      p.lpart[(pbase + r) * p.nsplit + split] = 0.f;
    }
    return;
  }
  const int64_t kstride = static_cast<int64_t>(p.Hkv) * D;
  const __nv_bfloat16* gK = p.kc + static_cast<int64_t>(b) * p.Smax * kstride + kvh * D;
  const __nv_bfloat16* gV = p.vc + static_cast<int64_t>(b) * p.Smax * kstride + kvh * D;
  load_tile<16, D, NT>(sQ, p.q + pbase * D, D, nh);
  const int t_lo = s0 / TN, t_hi = (c1 + TN - 1) / TN, nt = t_hi - t_lo;
  auto load_kv = [&](int i) {
    const int n0 = (t_lo + i) * TN, stage = i % ST;
    load_tile<TN, D, NT>(sK + stage * TN * D, gK + n0 * kstride, kstride, len - n0);
    load_tile<TN, D, NT>(sV + stage * TN * D, gV + n0 * kstride, kstride, len - n0);
  };
  load_kv(0);
  cp_async_commit();
  if (nt > 1) load_kv(1);
  cp_async_commit();

  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  uint32_t qf[D / 16][4];

  for (int i = 0; i < nt; i++) {
    cp_async_wait<ST - 2>();
    __syncthreads();
    if (i == 0) load_a_frags<D>(sQ, 0, qf);
    if (i + 2 < nt) load_kv(i + 2);
    cp_async_commit();
    const int stage = i % ST, n0 = (t_lo + i) * TN;
    const __nv_bfloat16* cK = sK + stage * TN * D;
    const __nv_bfloat16* cV = sV + stage * TN * D;
    float sc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      uint32_t bb[4];
      load_bT_frags<D>(cK, warp * 16, kk, bb);
      mma16816(sc[0], qf[kk], bb[0], bb[1]);
      mma16816(sc[1], qf[kk], bb[2], bb[3]);
    }
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int col = n0 + warp * 16 + j * 8 + 2 * t4 + (e & 1);
        sc[j][e] = (col >= s0 && col < c1) ? sc[j][e] * p.scale_log2 : -INFINITY;
      }
    // online_softmax_step (attention_common.cuh) inline: this kernel takes the max of its 2 n8 tiles as a tree,
    // (m, max(max(s0, s1), max(s2, s3))), where the helper chains it from m; kept so its machine code stays as
    // benchmarked.
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float mx = fmaxf(m_r[r], fmaxf(fmaxf(sc[0][2 * r], sc[0][2 * r + 1]), fmaxf(sc[1][2 * r], sc[1][2 * r + 1])));
      mx = quad_max(mx);
      const float base = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(m_r[r] - base);
      m_r[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < 2; j++) {
        sc[j][2 * r] = exp2f(sc[j][2 * r] - base);
        sc[j][2 * r + 1] = exp2f(sc[j][2 * r + 1] - base);
        sum += sc[j][2 * r] + sc[j][2 * r + 1];
      }
      l_r[r] = l_r[r] * alpha + sum;
#pragma unroll
      for (int d = 0; d < D / 8; d++) {
        acc[d][2 * r] *= alpha;
        acc[d][2 * r + 1] *= alpha;
      }
    }
    uint32_t a[4] = {pack_bf16(sc[0][0], sc[0][1]), pack_bf16(sc[0][2], sc[0][3]), pack_bf16(sc[1][0], sc[1][1]),
                     pack_bf16(sc[1][2], sc[1][3])};
#pragma unroll
    for (int np = 0; np < D / 16; np++) {
      uint32_t bb[4];
      load_b_frags<D>(cV, warp * 16, np, bb);
      mma16816(acc[2 * np], a, bb[0], bb[1]);
      mma16816(acc[2 * np + 1], a, bb[2], bb[3]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the pipeline buffers become the merge buffers

#pragma unroll
  for (int r = 0; r < 2; r++) {
    const float l = quad_sum(l_r[r]);
    const int row = g + r * 8;
    if (t4 == 0) {
      sM[warp * 16 + row] = m_r[r];
      sL[warp * 16 + row] = l;
    }
#pragma unroll
    for (int d = 0; d < D / 8; d++) {
      sO[(warp * 16 + row) * D + d * 8 + 2 * t4] = acc[d][2 * r];
      sO[(warp * 16 + row) * D + d * 8 + 2 * t4 + 1] = acc[d][2 * r + 1];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nh * D; i += NT) {
    const int row = i / D, d = i % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < C::NW; w++) M = fmaxf(M, sM[w * 16 + row]);
    float o = 0.f, L = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < C::NW; w++) {
        const float mw = sM[w * 16 + row];
        if (mw == -INFINITY) continue;
        const float wt = exp2f(mw - M);
        o += wt * sO[(w * 16 + row) * D + d];
        L += wt * sL[w * 16 + row];
      }
    }
    const int64_t pr = (pbase + row) * p.nsplit + split;
    p.opart[pr * D + d] = o;
    if (d == 0) {
      p.mpart[pr] = M;
      p.lpart[pr] = L;
    }
  }
}

template <int D>
__global__ void decode_combine_kernel(DecParams p) {
  const int bh = blockIdx.x, h = bh % p.Hq, d = threadIdx.x;
  const float* mp = p.mpart + static_cast<int64_t>(bh) * p.nsplit;
  const float* lp = p.lpart + static_cast<int64_t>(bh) * p.nsplit;
  const float* op = p.opart + static_cast<int64_t>(bh) * p.nsplit * D;
  float o, L;
  merge_splits<D>(sink_log2(p, h), mp, lp, op, p.nsplit, d, o, L);
  p.out[static_cast<int64_t>(bh) * D + d] = __float2bfloat16(o / L);
}

}  // namespace attn

namespace {
template <int D>
void launch_decode(attn::DecParams& p, int device, cudaStream_t st) {
  using C = attn::DecCfg<D>;
  static bool configured = false;
  if (!configured) {
    GPTOSS_CUDA_CHECK(
        cudaFuncSetAttribute(attn::decode_split_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM),
        "attentionDecode: cudaFuncSetAttribute");
    configured = true;
  }
  // Enough CTAs to fill the GPU several times over; chunks are whole 64-key tiles.
  const int units = p.B * p.Hkv * p.ntile_h;
  const int max_split = static_cast<int>(ceil_div(p.Smax, C::TN));
  int nsplit = std::min(max_split, std::max(1, static_cast<int>(ceil_div(132 * 8, units))));
  p.chunk = static_cast<int>(ceil_div(ceil_div(p.Smax, nsplit), C::TN)) * C::TN;
  p.nsplit = static_cast<int>(ceil_div(p.Smax, p.chunk));
  Tensor opart = make_tensor({p.B, p.Hq, p.nsplit, D}, DType::F32, device);
  Tensor mpart = make_tensor({p.B, p.Hq, p.nsplit}, DType::F32, device);
  Tensor lpart = make_tensor({p.B, p.Hq, p.nsplit}, DType::F32, device);
  p.opart = opart.data<float>();
  p.mpart = mpart.data<float>();
  p.lpart = lpart.data<float>();
  attn::decode_split_kernel<D><<<dim3(p.nsplit, p.Hkv * p.ntile_h, p.B), C::NT, C::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionDecode: split kernel launch");
  attn::decode_combine_kernel<D><<<p.B * p.Hq, D, 0, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionDecode: combine kernel launch");
}
}  // namespace

void attention_decode(const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& seqlens, const Tensor* sinks,
                      int window, float scale, const Tensor& out) {
  DeviceGuard guard(q.device);
  attn::DecParams p{};
  p.B = static_cast<int>(q.dim(0));
  if (p.B == 0) return;
  p.q = q.data<__nv_bfloat16>();
  p.kc = kc.data<__nv_bfloat16>();
  p.vc = vc.data<__nv_bfloat16>();
  p.lens = seqlens.data<int>();
  attn::bind_sinks(p, sinks);
  p.out = out.data<__nv_bfloat16>();
  p.Hq = static_cast<int>(q.dim(1));
  p.Smax = static_cast<int>(kc.dim(1));
  p.Hkv = static_cast<int>(kc.dim(2));
  p.G = p.Hq / p.Hkv;
  p.ntile_h = (p.G + 15) / 16;
  p.window = window;
  p.scale_log2 = scale * attn::kLog2e;
  cudaStream_t st = stream_of(q.device);
  switch (q.dim(2)) {
    case 16: launch_decode<16>(p, q.device, st); break;
    case 32: launch_decode<32>(p, q.device, st); break;
    case 64: launch_decode<64>(p, q.device, st); break;
    default: launch_decode<128>(p, q.device, st);
  }
}

}  // namespace gptoss::cuda
