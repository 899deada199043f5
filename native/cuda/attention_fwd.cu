// attention_fwd.cu: attention_forward (the kernel comes from plan_forward, attention_heuristics.h: the
// warp-specialized kernel of attention_fwd_ws.cu for head_dim 64 on sm_90) and the FlashAttention-2 style mma.sync
// forward with sinks that runs every other case.
//
// One CTA = 128 queries (8 warps x 16 rows) of one query head of one sequence. K/V tiles of 64 keys stream
// through shared memory with cp.async double buffering; S = Q K^T and O += P V run on tensor cores
// (mma.sync m16n8k16, fp32 accumulate). Online softmax in the log2 domain, with the running max started at the
// sink logit and the sink's e^{sink - m} added to the denominator at the end. Key tiles outside the causal /
// sliding-window band are skipped, so a window W costs O(S*W); only the tiles that cross the band edge are
// masked element by element.

#include "attention.h"
#include "attention_common.cuh"
#include "attention_heuristics.h"
#include "paged_attention.h"

namespace gptoss::cuda {
namespace attn {

// One CTA = 128 query rows (8 warps x 16 rows), 64-key K/V tiles double-buffered.
template <int D>
struct FwdCfg {
  static constexpr int NW = 8, NT = NW * 32, BM = NW * 16, BN = 64;
  static constexpr int SMEM = (BM * D + 4 * BN * D) * 2;  // Q + 2 stages of K and V
};

template <int D>
__global__ void __launch_bounds__(FwdCfg<D>::NT) fwd_kernel(Params p) {
  using C = FwdCfg<D>;
  constexpr int BM = C::BM, BN = C::BN, NT = C::NT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* sK = sQ + BM * D;   // [2][BN*D]
  __nv_bfloat16* sV = sK + 2 * BN * D;

  const int mb = gridDim.x - 1 - blockIdx.x;  // longest (last) query blocks first
  const int h = blockIdx.y, s = blockIdx.z;
  const SeqInfo si = seq_info(p.cu, p.used, s);
  const int q0 = mb * BM;
  if (q0 >= si.len) return;
  const int kvh = h / p.G;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t qstride = static_cast<int64_t>(p.Hq) * D, kstride = static_cast<int64_t>(p.Hkv) * D;
  const int rows_here = min(BM, si.len - q0);

  if (q0 >= si.used) {
    zero_padding_block<D, NT>(p, si, q0, rows_here, h);
    return;
  }

  const __nv_bfloat16* gQ = p.q + (si.start + q0) * qstride + h * D;
  const __nv_bfloat16* gK = p.k + si.start * kstride + kvh * D;
  const __nv_bfloat16* gV = p.v + si.start * kstride + kvh * D;

  const KeyTiles band = key_tiles_seen(p, si, q0, BM, BN);
  const int kb_lo = band.lo, kb_hi = band.hi;

  load_tile<BM, D, NT>(sQ, gQ, qstride, min(rows_here, si.used - q0));
  auto load_kv = [&](int kb, int stage) {
    const int n0 = kb * BN;
    load_tile<BN, D, NT>(sK + stage * BN * D, gK + n0 * kstride, kstride, si.used - n0);
    load_tile<BN, D, NT>(sV + stage * BN * D, gV + n0 * kstride, kstride, si.used - n0);
  };
  load_kv(kb_lo, 0);
  cp_async_commit();

  const float sink2 = sink_log2(p, h);
  float m_r[2] = {sink2, sink2}, l_r[2] = {0.f, 0.f};
  float acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  uint32_t qf[D / 16][4];
  const int wrow0 = q0 + warp * 16;  // first row of this warp; thread rows wrow0 + g (+8)

  for (int kb = kb_lo; kb < kb_hi; kb++) {
    const int stage = (kb - kb_lo) & 1;
    cp_async_wait<0>();
    __syncthreads();
    if (kb == kb_lo) load_a_frags<D>(sQ, warp * 16, qf);
    if (kb + 1 < kb_hi) load_kv(kb + 1, stage ^ 1);
    cp_async_commit();
    const __nv_bfloat16* cK = sK + stage * BN * D;
    const __nv_bfloat16* cV = sV + stage * BN * D;

    // S = Q K^T: 16 rows x BN keys per warp.
    float sc[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; i++) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.f;
    mma16816_abT<D, BN>(sc, qf, cK);
    const int n0 = kb * BN;
    const bool need_mask = (n0 + BN - 1 > wrow0) || (p.window > 0 && n0 < wrow0 + 16 - p.window);
#pragma unroll
    for (int i = 0; i < BN / 8; i++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float x = sc[i][e] * p.scale_log2;
        if (need_mask) {
          const int row = wrow0 + g + (e >> 1) * 8, col = n0 + i * 8 + 2 * t4 + (e & 1);
          const bool ok = col <= row && (p.window <= 0 || col > row - p.window);
          x = ok ? x : -INFINITY;
        }
        sc[i][e] = x;
      }
    }
    online_softmax_step(sc, m_r, l_r, acc);
    mma16816_chain<D, BN>(acc, sc, cV);  // O += P V
  }
  cp_async_wait<0>();

  // Finish: fold in the sink (reduce across the quad first: shuffles need every lane), normalise, write.
  // Rows past the real length get zeros and lse 0.
  float lsum[2];
#pragma unroll
  for (int r = 0; r < 2; r++) lsum[r] = quad_sum(l_r[r]) + exp2f(sink2 - m_r[r]);
#pragma unroll
  for (int r = 0; r < 2; r++) store_out_row<D>(p, si, h, wrow0 + g + r * 8, r, t4, acc, m_r[r], lsum[r]);
}

}  // namespace attn

namespace {
template <int D>
void launch_fwd(const attn::Params& p, int nseq, int max_seqlen, cudaStream_t st) {
  using C = attn::FwdCfg<D>;
  static bool configured = false;  // per process and instantiation; every device gets the same attribute
  if (!configured) {
    GPTOSS_CUDA_CHECK(cudaFuncSetAttribute(attn::fwd_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM),
                      "attentionForward: cudaFuncSetAttribute");
    configured = true;
  }
  dim3 grid(ceil_div(max_seqlen, C::BM), p.Hq, nseq);
  attn::fwd_kernel<D><<<grid, C::NT, C::SMEM, st>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("attentionForward: kernel launch");
}
}  // namespace

attn::Params make_attn_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* sinks,
                              const Tensor& cu, const Tensor* used, int window, float scale) {
  attn::Params p{};
  p.q = q.data<__nv_bfloat16>();
  p.k = k.data<__nv_bfloat16>();
  p.v = v.data<__nv_bfloat16>();
  p.cu = cu.data<int>();
  p.used = used ? used->data<int>() : nullptr;
  p.nseq = static_cast<int>(cu.dim(0) - 1);
  attn::bind_sinks(p, sinks);
  p.T = static_cast<int>(q.dim(0));
  p.Hq = static_cast<int>(q.dim(1));
  p.Hkv = static_cast<int>(k.dim(1));
  p.G = p.Hq / p.Hkv;
  p.window = window;
  p.scale = scale;
  p.scale_log2 = scale * attn::kLog2e;
  return p;
}

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* sinks, const Tensor& cu,
                       const Tensor* used, int max_seqlen, int window, float scale, const Tensor& out,
                       const Tensor& lse) {
  DeviceGuard guard(q.device);
  if (q.dim(0) == 0) return;
  if (batch_invariant() && (q.dim(2) == 64 || q.dim(2) == 128)) {
    // Batch-invariant mode (device.h): the engine's paged kernel over the packed k/v, so a token's attention row
    // has the bits a decode or prefill step gives it.
    dense_attention_forward(q, k, v, sinks, cu, used, max_seqlen, window, scale, out, lse);
    return;
  }
  attn::Params p = make_attn_params(q, k, v, sinks, cu, used, window, scale);
  p.o = out.data<__nv_bfloat16>();
  p.lse = lse.data<float>();
  const int nseq = static_cast<int>(cu.dim(0) - 1);
  cudaStream_t st = stream_of(q.device);
  const int head_dim = static_cast<int>(q.dim(2));
  attn::DeviceCaps dev{attn::device_is_sm90(q.device), true};  // tma: until an encoding fails
  attn::FwdPlan plan = attn::plan_forward(head_dim, window, p.G, dev);
  if (plan.kernel == attn::FwdKernel::kWarpSpecialized && !launch_fwd_ws(plan, p, nseq, max_seqlen, st)) {
    static bool warned = false;
    attn::warn_no_tma_once(warned, "attentionForward", "q/k/v", "the mma.sync forward kernel");
    dev.tma = false;
    plan = attn::plan_forward(head_dim, window, p.G, dev);
  }
  if (plan.kernel != attn::FwdKernel::kMmaSync) return;
  switch (head_dim) {  // 64 (gpt-oss), 128, and 16/32 for tiny models
    case 16: launch_fwd<16>(p, nseq, max_seqlen, st); break;
    case 32: launch_fwd<32>(p, nseq, max_seqlen, st); break;
    case 64: launch_fwd<64>(p, nseq, max_seqlen, st); break;
    default: launch_fwd<128>(p, nseq, max_seqlen, st);
  }
}

}  // namespace gptoss::cuda
