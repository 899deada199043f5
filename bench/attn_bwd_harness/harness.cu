// Standalone check + timing of the head_dim-64 attention backward kernels (no Node, no cuBLAS): the candidates are
// called directly (the product picks among them in native/cuda/attention_heuristics.h). On the same random inputs
// (any lse / D_i values work for a kernel-vs-kernel check) it runs
//   mma    dkdv_kernel<64> + dq_kernel<64>: the mma.sync pair, the reference;
//   wgmma  dkdv_wgmma_kernel + dq_wgmma_kernel: the deterministic Hopper pair;
//   ws     bwd_ws_kernel (+ dq_convert_ht_kernel): the warp-specialized fused-dQ kernel (deterministic: false),
// compares each with mma (per-tensor max error, where the first mismatch is), checks that the deterministic ones
// rerun bitwise equal, then times them at Hq 64 Hkv 8 D 64 (wgmma also as launched: dK/dV on a high-priority side
// stream concurrently with dQ). To measure a new candidate, add it here as a variant.
//   nvcc -arch=sm_90a -std=c++17 -O3 --expt-relaxed-constexpr -Inative/common -Inative/cuda \
//        bench/attn_bwd_harness/harness.cu -o /tmp/h && /tmp/h [check|time]
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <string>
#include <cstring>
#include <cuda_bf16.h>
#include "attention_bwd_kernels.cuh"
#include "attention_bwd_ws.cuh"
using namespace gptoss::cuda::attn;
using gptoss::cuda::ceil_div;

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(1); } } while (0)

static uint64_t rng = 88172645463325252ull;
static float frand() {  // uniform [-1, 1)
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
  return ((rng >> 40) * (1.0f / 8388608.f)) - 1.f;
}

struct Case {
  std::string name;
  std::vector<int> lens;
  int Hq, Hkv, window;
  bool sinks;
};

struct Bufs {
  int T, Hq, Hkv, nseq, maxlen;
  __nv_bfloat16 *q, *k, *v, *o, *dout;
  float *lse, *dlt, *sinks;
  int* cu;
  float *dq, *dk, *dv;  // f32 gradients
  float* acc;           // fused dQ accumulator [Hq, T, 64]
};

static Bufs make(const Case& c, bool real_lse) {
  Bufs b{};
  b.Hq = c.Hq; b.Hkv = c.Hkv; b.nseq = (int)c.lens.size();
  std::vector<int> cu{0};
  for (int l : c.lens) { cu.push_back(cu.back() + l); b.maxlen = std::max(b.maxlen, l); }
  b.T = cu.back();
  const int T = b.T, D = 64;
  auto rnd = [&](size_t n, float s) {
    std::vector<__nv_bfloat16> h(n);
    for (auto& x : h) x = __float2bfloat16(frand() * s);
    return h;
  };
  auto hq = rnd((size_t)T * c.Hq * D, 1.5f), hk = rnd((size_t)T * c.Hkv * D, 1.5f), hv = rnd((size_t)T * c.Hkv * D, 1.f),
       hdo = rnd((size_t)T * c.Hq * D, 1.f);
  std::vector<float> lse((size_t)c.Hq * T), dlt((size_t)c.Hq * T), sk(c.Hq);
  for (auto& x : dlt) x = frand() * 0.3f;
  for (auto& x : sk) x = frand();
  const float scale = 0.125f;
  const int G = c.Hq / c.Hkv;
  for (int s = 0; s < b.nseq; s++)
    for (int h = 0; h < c.Hq; h++)
      for (int i = cu[s]; i < cu[s + 1]; i++) {
        if (!real_lse) { lse[(size_t)h * T + i] = 3.f; continue; }
        // true lse (sink included) so that P <= 1 like in training
        const int pos = i - cu[s];
        double m = c.sinks ? sk[h] : -1e30;
        std::vector<double> sc;
        for (int j = cu[s]; j <= i; j++) {
          if (c.window > 0 && pos - (j - cu[s]) >= c.window) continue;
          double d = 0;
          for (int e = 0; e < D; e++)
            d += (double)__bfloat162float(hq[((size_t)i * c.Hq + h) * D + e]) * __bfloat162float(hk[((size_t)j * c.Hkv + h / G) * D + e]);
          sc.push_back(d * scale);
          m = std::max(m, d * scale);
        }
        double sum = c.sinks ? std::exp(sk[h] - m) : 0;
        for (double x : sc) sum += std::exp(x - m);
        lse[(size_t)h * T + i] = (float)(m + std::log(sum));
      }
  auto up = [](auto& h, auto** d) { CK(cudaMalloc(d, h.size() * sizeof(h[0]))); CK(cudaMemcpy(*d, h.data(), h.size() * sizeof(h[0]), cudaMemcpyHostToDevice)); };
  up(hq, &b.q); up(hk, &b.k); up(hv, &b.v); up(hdo, &b.dout); up(lse, &b.lse); up(dlt, &b.dlt); up(sk, &b.sinks); up(cu, &b.cu);
  b.o = nullptr;
  CK(cudaMalloc(&b.dq, (size_t)T * c.Hq * D * 4));
  CK(cudaMalloc(&b.dk, (size_t)T * c.Hkv * D * 4));
  CK(cudaMalloc(&b.dv, (size_t)T * c.Hkv * D * 4));
  CK(cudaMalloc(&b.acc, (size_t)T * c.Hq * D * 4));
  return b;
}

static Params params(const Bufs& b, const Case& c) {
  Params p{};
  p.q = b.q; p.k = b.k; p.v = b.v; p.o = b.o; p.lse = b.lse; p.cu = b.cu; p.used = nullptr; p.nseq = b.nseq;
  p.sinks = c.sinks ? b.sinks : nullptr; p.sinks_bf16 = 0;
  p.T = b.T; p.Hq = c.Hq; p.Hkv = c.Hkv; p.G = c.Hq / c.Hkv; p.window = c.window;
  p.scale = 0.125f; p.scale_log2 = 0.125f * kLog2e;
  p.dout = b.dout; p.dlt = b.dlt; p.dq = b.dq; p.dk = b.dk; p.dv = b.dv; p.grad_f32 = 1; p.dq_acc = b.acc;
  return p;
}

template <typename K> static void smem(K k, int bytes) { CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)); }

// The variants, in the order they run: the reference first.
enum Var { kMma, kWgmma, kWs, kNVar };
static const char* kVarName[] = {"mma", "wgmma", "ws"};
static bool fused(int var) { return var == kWs; }

static void run_dkdv(int var, const Params& p, int nseq, int maxlen, cudaStream_t st = 0) {
  if (var == kMma) {
    using C = DkdvCfg<64>;
    dkdv_kernel<64><<<dim3(ceil_div(maxlen, C::BN), p.Hkv, nseq), C::NT, C::SMEM, st>>>(p);
  } else if (var == kWgmma) {
    using C = DkdvWgCfg;
    dkdv_wgmma_kernel<<<dim3(ceil_div(maxlen, C::BN) * p.Hkv, 1, nseq), C::NT, C::SMEM, st>>>(p);
  } else {  // fused dQ: zero the accumulator, then dK/dV/dQ in one kernel (run_dq converts)
    CK(cudaMemsetAsync(p.dq_acc, 0, (size_t)p.T * p.Hq * 64 * 4, st));
    using C = BwdWsCfg<kBwdWsStages>;
    BwdTmaMaps m;
    if (!encode_bwd_ws_maps(&m, p)) { printf("tensor map encoding failed\n"); exit(1); }
    bwd_ws_kernel<kBwdWsStages><<<dim3(ceil_div(maxlen, C::BN) * p.Hkv, 1, nseq), C::NT, C::SMEM, st>>>(m, p);
  }
  CK(cudaGetLastError());
}
static void run_dq(int var, const Params& p, int nseq, int maxlen, cudaStream_t st = 0) {
  if (var == kMma) {
    using C = DqCfg<64>;
    dq_kernel<64><<<dim3(ceil_div(maxlen, C::BM), p.Hq, nseq), C::NT, C::SMEM, st>>>(p);
  } else if (var == kWgmma) {
    using C = DqWgCfg;
    dq_wgmma_kernel<<<dim3(ceil_div(maxlen, C::BM) * p.Hq, 1, nseq), C::NT, C::SMEM, st>>>(p);
  } else {
    const int64_t n = (int64_t)p.T * p.Hq * 64;
    dq_convert_ht_kernel<float><<<(unsigned)ceil_div(n / 4, (int64_t)256), 256, 0, st>>>(p.dq_acc, (float*)p.dq, p.T, p.Hq, p.scale);
  }
  CK(cudaGetLastError());
}

static void setup_smem() {
  smem(dkdv_kernel<64>, DkdvCfg<64>::SMEM);
  smem(dq_kernel<64>, DqCfg<64>::SMEM);
  smem(dkdv_wgmma_kernel, DkdvWgCfg::SMEM);
  smem(dq_wgmma_kernel, DqWgCfg::SMEM);
  smem(bwd_ws_kernel<kBwdWsStages>, BwdWsCfg<kBwdWsStages>::SMEM);
}

static std::vector<float> get(const float* d, size_t n) {
  std::vector<float> h(n);
  CK(cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost));
  return h;
}

// Compares x vs ref ([T, H, 64]); positions within the sequence tell the row block / warpgroup / warp.
static bool compare(const char* what, const std::vector<float>& x, const std::vector<float>& ref, int H,
                    const std::vector<int>& lens) {
  double mref = 0, merr = 0;
  for (size_t i = 0; i < ref.size(); i++) mref = std::max(mref, (double)fabs(ref[i]));
  const double tol = 2e-2 * std::max(mref, 1e-6);
  long bad = 0;
  int first = -1;
  int hist_row16[8] = {}, hist_col8[8] = {};
  std::vector<int> hist_head(H, 0);
  std::vector<int> cu{0};
  for (int l : lens) cu.push_back(cu.back() + l);
  for (size_t i = 0; i < ref.size(); i++) {
    const double e = fabs((double)x[i] - ref[i]);
    if (!(e <= merr)) merr = std::isnan(e) ? INFINITY : std::max(merr, e);
    if (!(e <= tol)) {
      const int t = (int)(i / (H * 64)), col = (int)(i % 64);
      int s = 0;
      while (cu[s + 1] <= t) s++;
      const int pos = t - cu[s];
      if (first < 0) first = (int)i;
      bad++;
      hist_row16[(pos % 128) / 16]++;
      hist_col8[col / 8]++;
      hist_head[(i / 64) % H]++;
    }
  }
  printf("  %-6s maxref %.3e maxerr %.3e rel %.2e bad %ld/%zu", what, mref, merr, merr / std::max(mref, 1e-30), bad, ref.size());
  if (first >= 0) {
    const int t = first / (H * 64), h = (first / 64) % H, col = first % 64;
    int s = 0;
    while (cu[s + 1] <= t) s++;
    const int pos = t - cu[s];
    printf("\n    first: seq %d pos %d (blk128 %d, wg %d, warp %d, row %d) head %d col %d: %.4e vs %.4e", s, pos,
           pos / 128, (pos % 128) / 64, (pos % 64) / 16, pos % 16, h, col, x[first], ref[first]);
    printf("\n    bad by pos%%128/16:");
    for (int i = 0; i < 8; i++) printf(" %d", hist_row16[i]);
    printf("  by col/8:");
    for (int i = 0; i < 8; i++) printf(" %d", hist_col8[i]);
    printf("  by head:");
    for (int i = 0; i < H; i++) printf(" %d", hist_head[i]);
  }
  printf("\n");
  return bad == 0;
}

static bool check_case(const Case& c) {
  Bufs b = make(c, true);
  Params p = params(b, c);
  const size_t nq = (size_t)b.T * c.Hq * 64, nk = (size_t)b.T * c.Hkv * 64;
  std::vector<float> rq, rk, rv;
  bool ok = true;
  printf("%s (T %d Hq %d Hkv %d W %d sinks %d)\n", c.name.c_str(), b.T, c.Hq, c.Hkv, c.window, (int)c.sinks);
  for (int var = 0; var < kNVar; var++) {
    CK(cudaMemset(b.dq, 0xFF, nq * 4)); CK(cudaMemset(b.dk, 0xFF, nk * 4)); CK(cudaMemset(b.dv, 0xFF, nk * 4));
    run_dkdv(var, p, b.nseq, b.maxlen);
    run_dq(var, p, b.nseq, b.maxlen);
    CK(cudaDeviceSynchronize());
    auto gq = get(b.dq, nq), gk = get(b.dk, nk), gv = get(b.dv, nk);
    if (var == kMma) { rq = gq; rk = gk; rv = gv; }
    else {
      printf(" %s vs mma:\n", kVarName[var]);
      ok &= compare("dq", gq, rq, c.Hq, c.lens);
      ok &= compare("dk", gk, rk, c.Hkv, c.lens);
      ok &= compare("dv", gv, rv, c.Hkv, c.lens);
    }
    if (fused(var)) {
      // rerun: dq within rounding of the first run (atomics: the order varies)
      run_dkdv(var, p, b.nseq, b.maxlen);
      run_dq(var, p, b.nseq, b.maxlen);
      CK(cudaDeviceSynchronize());
      ok &= compare("dq rerun", get(b.dq, nq), gq, c.Hq, c.lens);
      continue;
    }
    // rerun: bitwise determinism
    run_dkdv(var, p, b.nseq, b.maxlen);
    run_dq(var, p, b.nseq, b.maxlen);
    CK(cudaDeviceSynchronize());
    auto g2q = get(b.dq, nq), g2k = get(b.dk, nk), g2v = get(b.dv, nk);
    if (memcmp(g2q.data(), gq.data(), nq * 4) || memcmp(g2k.data(), gk.data(), nk * 4) || memcmp(g2v.data(), gv.data(), nk * 4)) {
      printf("  NOT DETERMINISTIC\n");
      ok = false;
    }
  }
  return ok;
}

// HARNESS_VARS="12" times only those variants (digits: 0 mma, 1 wgmma, 2 ws; for profiling runs); unset = all.
static bool selected(int var) {
  const char* e = getenv("HARNESS_VARS");
  if (!e || !*e) return true;
  for (const char* c = e; *c; c++)
    if (*c - '0' == var) return true;
  return false;
}

static void time_case(const Case& c) {
  Bufs b = make(c, false);
  Params p = params(b, c);
  cudaStream_t side;
  int least = 0, greatest = 0;
  CK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  CK(cudaStreamCreateWithPriority(&side, cudaStreamNonBlocking, greatest));  // as the project's side lane
  cudaEvent_t e0, e1, fork, join;
  CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming)); CK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  printf("time %s (T %d Hq %d Hkv %d W %d):", c.name.c_str(), b.T, c.Hq, c.Hkv, c.window);
  for (int var = 0; var < kNVar; var++) {
    if (!selected(var)) continue;
    for (int conc = 0; conc < 2; conc++) {
      if ((var == kMma || fused(var)) && conc) continue;
      auto go = [&] {
        if (!conc) { run_dkdv(var, p, b.nseq, b.maxlen); run_dq(var, p, b.nseq, b.maxlen); return; }
        CK(cudaEventRecord(fork, 0)); CK(cudaStreamWaitEvent(side, fork, 0));
        run_dkdv(var, p, b.nseq, b.maxlen, side);
        CK(cudaEventRecord(join, side));
        run_dq(var, p, b.nseq, b.maxlen);
        CK(cudaStreamWaitEvent(0, join, 0));
      };
      for (int i = 0; i < 3; i++) go();
      CK(cudaEventRecord(e0));
      const int N = 20;
      for (int i = 0; i < N; i++) go();
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      // separate: dkdv alone, dq alone
      CK(cudaEventRecord(e0));
      for (int i = 0; i < N; i++) run_dkdv(var, p, b.nseq, b.maxlen);
      CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
      float mk; CK(cudaEventElapsedTime(&mk, e0, e1));
      CK(cudaEventRecord(e0));
      for (int i = 0; i < N; i++) run_dq(var, p, b.nseq, b.maxlen);
      CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
      float mq; CK(cudaEventElapsedTime(&mq, e0, e1));
      printf(" %s%s %.3f (dkdv %.3f dq %.3f)", kVarName[var], conc ? "-conc" : "", ms / N, mk / N, mq / N);
    }
  }
  printf(" ms\n");
}


int main(int argc, char** argv) {
  setup_smem();
  const bool timing = argc < 2 || std::string(argv[1]) != "check";
  std::vector<Case> cases = {
      {"S300 causal G8", {300}, 8, 1, 0, true},
      {"S300 W128 G8", {300}, 8, 1, 128, true},
      {"packed 1/7/113/300 causal G8", {1, 7, 113, 300}, 8, 1, 0, true},
      {"packed 1/7/113/300 W128 Hq16 Hkv2", {1, 7, 113, 300}, 16, 2, 128, false},
      {"S520 causal Hq16 Hkv2", {520}, 16, 2, 0, true},
      {"S1100 W128 Hq64 Hkv8", {1100}, 64, 8, 128, true},
      {"packed 700/300/64 causal Hq16 Hkv2 no sinks", {700, 300, 64}, 16, 2, 0, false},
  };
  bool ok = true;
  const bool check = argc < 2 || std::string(argv[1]) != "time";
  if (check) {
    for (auto& c : cases) ok &= check_case(c);
    printf("CHECK %s\n", ok ? "PASS" : "FAIL");
  }
  if (timing) {
    const std::vector<Case> timed = {
        {"B1 S4096 causal", {4096}, 64, 8, 0, true},
        {"B1 S4096 W128", {4096}, 64, 8, 128, true},
        {"B8 S2048 causal", {2048, 2048, 2048, 2048, 2048, 2048, 2048, 2048}, 64, 8, 0, true},
        {"B1 S16384 causal", {16384}, 64, 8, 0, true},
        {"B1 S16384 W128", {16384}, 64, 8, 128, true},
    };
    const char* only = getenv("HARNESS_CASES");  // e.g. "01": those timed cases only
    for (size_t i = 0; i < timed.size(); i++)
      if (!only || !*only || strchr(only, static_cast<char>('0' + i))) time_case(timed[i]);
  }
  return 0;
}
