// Standalone timing of the grouped expert GEMMs (native/cuda/moe_gemm.cuh; no Node, no cuBLAS) over their tile
// shape at the sizes where rows_gemm takes the small tiles (DecodeTiles): a prompt's prefill (T 64-256 tokens, 8-32
// routed rows per expert on average) and decode of 5-256 sequences. With the 16x64 tiles of before, the batch-1 time
// to the first token of a 128-token prompt was ~18 ms on an H100, 16.2 of 19.2 profiled ms these two GEMMs
// (bench:decode-profile --phase prefill), reading every expert's weights once at ~77% of HBM; session 30's run of
// this harness picked the 32x128 tiles (bench/results/moe-grouped-tiles-ab-h100.txt).
//
// Per case (T tokens, top-4 of E 32 experts, H = I = 2880, the routing drawn uniformly with a fixed seed, as a
// random router gives) one expert-MLP forward = the product's two launches: gate_up [E, H, 2I] with bias + SwiGLU
// (gu, h), then down [E, I, H] with bias (yp). Each configuration is captured in a CUDA graph, replayed 10 times to
// warm up and timed over 50 replays (CUDA events; all 32 experts' 1.6 GB are 32x the L2). Reported: µs per
// forward, GB/s of the experts' weights, and the largest difference of h and yp from the product's tiles. Every
// shape sums each output over k in the same order (k tiles in order, m16n8k16 steps in order, one accumulator):
// expect 0.
//   nvcc -arch=sm_90a -std=c++17 -O3 --expt-relaxed-constexpr -Inative -Inative/cuda \
//        bench/moe_grouped_harness/harness.cu -o /tmp/moeg && /tmp/moeg [T ...]   (default T 64 128 256)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../harness_common/harness_util.cuh"
#include "moe_gemm.cuh"

namespace mg = gptoss::cuda::moe_gemm;

// The addon counts its launches (runtime.cu); the harness has no counter.
void gptoss::cuda::note_launch() {}
using bf = __nv_bfloat16;

namespace {

constexpr int E = 32, H = 2880, I = 2880, K_TOP = 4;

using harness::download;
using harness::next_u64;
using harness::upload_random;

// Each token's top-4: 4 distinct experts drawn uniformly. offsets [E+1] of the N = 4T rows in expert order.
std::vector<int32_t> routing(int T) {
  std::vector<int> count(E, 0);
  for (int t = 0; t < T; t++) {
    int picked[K_TOP];
    for (int j = 0; j < K_TOP; j++) {
      int e;
      do e = static_cast<int>(next_u64() % E);
      while (std::find(picked, picked + j, e) != picked + j);
      picked[j] = e;
      count[e]++;
    }
  }
  std::vector<int32_t> off(E + 1, 0);
  for (int e = 0; e < E; e++) off[e + 1] = off[e] + count[e];
  return off;
}

struct Bufs {
  int N = 0;
  harness::ExpertWeights w;
  harness::ExpertRows r;
  bf* xp = nullptr;
  int32_t* offsets = nullptr;
};

// moe.cu's forward_grouped with the tile shape Tiles for both products.
template <typename Tiles>
void forward(const Bufs& b, cudaStream_t st) {
  mg::Params gu;
  gu.A = b.xp;
  gu.lda = H;
  gu.B = b.w.gate_up;
  gu.ldb = 2 * I;
  gu.b_expert_stride = static_cast<int64_t>(H) * 2 * I;
  gu.N = 2 * I;
  gu.K = H;
  gu.offsets = b.offsets;
  gu.E = E;
  gu.C = b.r.gu;
  gu.ldc = 2 * I;
  gu.bias = b.w.gate_up_bias;
  gu.C2 = b.r.h;
  gu.ldc2 = I;
  gu.limit = 7.f;
  mg::launch<Tiles, false, false, false, mg::kEpiGuSwiglu>(gu, b.N, st, "harness gate_up");
  mg::Params dn;
  dn.A = b.r.h;
  dn.lda = I;
  dn.B = b.w.down;
  dn.ldb = H;
  dn.b_expert_stride = static_cast<int64_t>(I) * H;
  dn.N = H;
  dn.K = I;
  dn.offsets = b.offsets;
  dn.E = E;
  dn.C = b.r.yp;
  dn.ldc = H;
  dn.bias = b.w.down_bias;
  mg::launch<Tiles, false, false, false, mg::kEpiBiasBf16>(dn, b.N, st, "harness down");
}

// Candidate tile shapes: BM x BN x BK, WARPS_M x WARPS_N warps, STAGES, MINB (blocks per SM the registers allow).
#define TILES(NAME, BM_, BN_, BK_, WM_, WN_, S_, MB_)                                            \
  struct NAME {                                                                                \
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WARPS_M = WM_, WARPS_N = WN_, STAGES = S_, \
                         MINB = MB_;                                                           \
  };
TILES(Bm16n64s4, 16, 64, 64, 1, 2, 4, 4)  // the product's before session 30
TILES(Bm16n64s3, 16, 64, 64, 1, 2, 3, 6)
TILES(Bm16n64s6, 16, 64, 64, 1, 2, 6, 3)
TILES(Bm16n64w4, 16, 64, 64, 1, 4, 4, 4)
TILES(Bm16n128w2, 16, 128, 64, 1, 2, 4, 3)
TILES(Bm16n128w4, 16, 128, 64, 1, 4, 4, 3)
TILES(Bm16n128w4s3, 16, 128, 64, 1, 4, 3, 4)
TILES(Bm32n64, 32, 64, 64, 2, 2, 4, 4)
TILES(Bm32n64w1, 32, 64, 64, 1, 2, 4, 4)
TILES(Bm16n64k128, 16, 64, 128, 1, 2, 3, 3)
#undef TILES

struct Config {
  std::string name;  // "BMxBNxBK wWARPS_MxWARPS_N sSTAGES bMINB", with "product " or "large " before it
  void (*fwd)(const Bufs&, cudaStream_t);
};

// A shape's row: its name spelled from its constants (scripts/device-tile-ab.sh reads the shape back from it).
template <typename Tiles>
Config config(const char* role = "") {
  char name[96];
  snprintf(name, sizeof name, "%s%dx%dx%d w%dx%d s%d b%d", role, Tiles::BM, Tiles::BN, Tiles::BK, Tiles::WARPS_M,
           Tiles::WARPS_N, Tiles::STAGES, Tiles::MINB);
  return {name, forward<Tiles>};
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<int> Ts = harness::token_counts(argc, argv, {64, 128, 256}, 1, 1024);
  const harness::Gpu gpu = harness::current_gpu();

  // The product's tiles first (the reference of the differences), then the candidates.
  const std::vector<Config> configs = {
      config<mg::DecodeTiles>("product "), config<Bm16n64s4>(),     config<Bm16n64s3>(),
      config<Bm16n64s6>(),                 config<Bm16n64w4>(),     config<Bm16n128w2>(),
      config<Bm16n128w4>(),                config<Bm16n128w4s3>(),  config<Bm32n64>(),
      config<Bm32n64w1>(),                 config<Bm16n64k128>(),   config<mg::LargeTiles>("large "),
  };

  printf("moe grouped harness on %s (%d SMs): E %d, top-%d, H %d, I %d; µs per expert-MLP forward (gate_up + down, CUDA graph)\n",
         gpu.name.c_str(), gpu.sms, E, K_TOP, H, I);
  printf("| T | rows/expert min-max | tiles | µs | GB/s | max |h - product's| | max |yp - product's| |\n");
  printf("| --- | --- | --- | ---: | ---: | ---: | ---: |\n");

  Bufs b;
  b.w = harness::upload_experts(E, H, I);
  const int maxN = 1024 * K_TOP;
  b.r = harness::alloc_rows(maxN, H, I);
  CK(cudaMalloc(&b.offsets, sizeof(int32_t) * (E + 1)));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  for (int T : Ts) {
    b.N = T * K_TOP;
    if (b.xp) CK(cudaFree(b.xp));
    b.xp = upload_random(static_cast<size_t>(b.N) * H, 1.f);
    const std::vector<int32_t> offsets = routing(T);
    CK(cudaMemcpy(b.offsets, offsets.data(), sizeof(int32_t) * offsets.size(), cudaMemcpyHostToDevice));
    int routed = 0, lo = b.N, hi = 0;
    for (int e = 0; e < E; e++) {
      const int c = offsets[e + 1] - offsets[e];
      routed += c > 0;
      lo = std::min(lo, c);
      hi = std::max(hi, c);
    }
    const double bytes = static_cast<double>(routed) * (static_cast<double>(H) * 2 * I + static_cast<double>(I) * H) * 2;
    std::vector<float> ref_h, ref_yp;
    for (const Config& c : configs) {
      c.fwd(b, st);  // eager once: errors surface here, and the outputs to compare
      CK(cudaStreamSynchronize(st));
      CK(cudaGetLastError());
      const std::vector<float> h = download(b.r.h, static_cast<size_t>(b.N) * I);
      const std::vector<float> yp = download(b.r.yp, static_cast<size_t>(b.N) * H);
      if (ref_h.empty()) {
        ref_h = h;
        ref_yp = yp;
      }
      const double us = harness::graph_us([&](cudaStream_t s) { c.fwd(b, s); }, st, 10, 50);
      printf("| %d | %d-%d | %s | %.2f | %.0f | %.3g | %.3g |\n", T, lo, hi, c.name.c_str(), us, bytes / (us * 1e3),
             harness::max_abs_diff(h, ref_h), harness::max_abs_diff(yp, ref_yp));
    }
  }
  return 0;
}
