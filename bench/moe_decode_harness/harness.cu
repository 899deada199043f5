// Standalone timing of the decode MoE kernels (native/cuda/moe_decode_kernels.cuh; no Node, no cuBLAS) over their
// launch shape, to tune moe_decode.cu's kThreads / kUnroll / blocks_per_sm / kMaxSplitK on a GPU in one run. The
// "product" row is the shape at 8 blocks per SM (moe_decode.cu picks 4 at T 2 and 12 at T 5-8 from this table).
// Batch-1 decode of gpt-oss-20b spends ~60% of a token in these kernels at ~70% of HBM bandwidth
// (docs/inference.md, "Batch 1"); each 1% of HBM there is ~0.02 ms a token.
//
// Per case (T tokens, top-4 of E 32 experts, H = I = 2880, the routing fixed: token t takes experts
// (7t + 5j) mod 32, j < 4) one expert-MLP forward = the product's four launches: partial_kernel + reduce_kernel
// (SwiGLU) for gate_up [E, H, 2I], then partial_kernel + reduce_kernel for down [E, I, H]. Each configuration is
// captured in a CUDA graph (as decode runs it), replayed 20 times to warm up and then timed over 200 replays
// (CUDA events; the routed experts' 199 MB at T 1 are 4x the L2, so every replay streams them from HBM). Reported:
// µs per forward, GB/s of the routed experts' weights, and the largest difference of yp from the product's
// configuration (other splits sum in another order: expect bf16-rounding-sized differences, not bitwise).
//   nvcc -arch=sm_90a -std=c++17 -O3 --expt-relaxed-constexpr -Inative -Inative/cuda \
//        bench/moe_decode_harness/harness.cu -o /tmp/moeh && /tmp/moeh [T ...]   (default T 1 2 4)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../harness_common/harness_util.cuh"
#include "moe_decode_kernels.cuh"

using namespace gptoss::cuda::moe_decode;
using harness::download;
using harness::upload_random;

namespace {

constexpr int E = 32, H = 2880, I = 2880, K_TOP = 4;
constexpr float kLimit = 7.f;

// One case's device buffers: the weights of all E experts, x [T, H], the routing (perm_tok [N], offsets [E+1]),
// outputs gu [N, 2I], h [N, I], yp [N, H] and a split-partials buffer large enough for any configuration.
struct Bufs {
  int T = 0, N = 0;
  harness::ExpertWeights w;
  harness::ExpertRows r;
  bf* x = nullptr;
  int32_t *perm = nullptr, *offsets = nullptr;
  float* part = nullptr;
};

void routing(int T, std::vector<int32_t>& perm, std::vector<int32_t>& offsets) {
  std::vector<std::vector<int>> rows(E);
  for (int t = 0; t < T; t++)
    for (int j = 0; j < K_TOP; j++) rows[(7 * t + 5 * j) % E].push_back(t);
  offsets.assign(E + 1, 0);
  perm.clear();
  for (int e = 0; e < E; e++) {
    offsets[e] = static_cast<int32_t>(perm.size());
    for (int t : rows[e]) perm.push_back(t);
  }
  offsets[E] = static_cast<int32_t>(perm.size());
}

// A configuration: the launch shape of partial_kernel (threads, rows in flight) and of the split (blocks per SM,
// rows of K per block at most).
struct Config {
  const char* name;
  int threads, unroll, blocks_per_sm, max_split_k;
  void (*partial)(int R, const bf*, int64_t, const int32_t*, const bf*, const int32_t*, int, int, int, Split, int, int,
                  int64_t, float*, cudaStream_t);
};

template <int THREADS, int UNROLL>
void partial_r(int R, const bf* A, int64_t lda, const int32_t* perm, const bf* W, const int32_t* offsets, int e, int K,
               int Nc, Split sp, int chunk_slots, int slots, int64_t N, float* part, cudaStream_t st) {
  switch (R) {
    case 1: launch_partial<1, THREADS, UNROLL>(A, lda, perm, W, offsets, e, K, Nc, sp, chunk_slots, slots, N, part, st); break;
    case 2: launch_partial<2, THREADS, UNROLL>(A, lda, perm, W, offsets, e, K, Nc, sp, chunk_slots, slots, N, part, st); break;
    case 4: launch_partial<4, THREADS, UNROLL>(A, lda, perm, W, offsets, e, K, Nc, sp, chunk_slots, slots, N, part, st); break;
    default: launch_partial<8, THREADS, UNROLL>(A, lda, perm, W, offsets, e, K, Nc, sp, chunk_slots, slots, N, part, st); break;
  }
}

// moe_decode.cu's product(), with the configuration's shape: S splits of gate_up, then of down.
void forward(const Bufs& b, const Config& c, int sms, cudaStream_t st, int* s_gu = nullptr, int* s_dn = nullptr) {
  const int R = b.T >= 5 ? 8 : b.T >= 3 ? 4 : b.T == 2 ? 2 : 1;
  const int chunk_slots = (b.T + R - 1) / R;
  const int slots = std::min(E, b.N);
  const Split g = split_k(sms, slots, H, 2 * I, c.threads, c.blocks_per_sm, c.max_split_k);
  c.partial(R, b.x, H, b.perm, b.w.gate_up, b.offsets, E, H, 2 * I, g, chunk_slots, slots, b.N, b.part, st);
  launch_reduce(b.part, g.S, b.N, 2 * I, b.offsets, E, b.w.gate_up_bias, kLimit, b.r.gu, b.r.h, st);
  const Split d = split_k(sms, slots, I, H, c.threads, c.blocks_per_sm, c.max_split_k);
  c.partial(R, b.r.h, I, nullptr, b.w.down, b.offsets, E, I, H, d, chunk_slots, slots, b.N, b.part, st);
  launch_reduce(b.part, d.S, b.N, H, b.offsets, E, b.w.down_bias, kLimit, b.r.yp, nullptr, st);
  if (s_gu) *s_gu = g.S;
  if (s_dn) *s_dn = d.S;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<int> Ts = harness::token_counts(argc, argv, {1, 2, 4}, 1, 16);  // decode sizes
  const harness::Gpu gpu = harness::current_gpu();

  // The product's configuration first (the reference of the yp differences), then the candidates.
  const std::vector<Config> configs = {
      {"product", 128, 8, 8, 512, partial_r<128, 8>},
      {"bps4", 128, 8, 4, 512, partial_r<128, 8>},
      {"bps16", 128, 8, 16, 512, partial_r<128, 8>},
      {"bps12", 128, 8, 12, 512, partial_r<128, 8>},
      {"u4", 128, 4, 8, 512, partial_r<128, 4>},
      {"u4-bps16", 128, 4, 16, 512, partial_r<128, 4>},
      {"t256", 256, 8, 4, 512, partial_r<256, 8>},
      {"t256-bps8", 256, 8, 8, 512, partial_r<256, 8>},
      {"t64", 64, 8, 16, 512, partial_r<64, 8>},
      {"t64-bps24", 64, 8, 24, 512, partial_r<64, 8>},
      {"ks1024", 128, 8, 8, 1024, partial_r<128, 8>},
      {"ks256", 128, 8, 8, 256, partial_r<128, 8>},
  };

  printf("moe decode harness on %s (%d SMs): E %d, top-%d, H %d, I %d; µs per expert-MLP forward (4 launches, CUDA graph)\n",
         gpu.name.c_str(), gpu.sms, E, K_TOP, H, I);
  printf("| T | config | threads | unroll | blocks/SM | max ks | S gate_up | S down | µs | GB/s | max |yp - product's| |\n");
  printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");

  Bufs b;
  b.w = harness::upload_experts(E, H, I);
  const int maxN = 16 * K_TOP;
  b.r = harness::alloc_rows(maxN, H, I);
  CK(cudaMalloc(&b.perm, sizeof(int32_t) * maxN));
  CK(cudaMalloc(&b.offsets, sizeof(int32_t) * (E + 1)));
  CK(cudaMalloc(&b.part, sizeof(float) * static_cast<size_t>(H / 8) * maxN * 2 * I));  // S <= K/8 splits
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  for (int T : Ts) {
    b.T = T;
    b.N = T * K_TOP;
    if (b.x) CK(cudaFree(b.x));
    b.x = upload_random(static_cast<size_t>(T) * H, 1.f);
    std::vector<int32_t> perm, offsets;
    routing(T, perm, offsets);
    CK(cudaMemcpy(b.perm, perm.data(), sizeof(int32_t) * perm.size(), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(b.offsets, offsets.data(), sizeof(int32_t) * offsets.size(), cudaMemcpyHostToDevice));
    int routed = 0;
    for (int e = 0; e < E; e++) routed += offsets[e + 1] > offsets[e];
    const double bytes = static_cast<double>(routed) * (static_cast<double>(H) * 2 * I + static_cast<double>(I) * H) * 2;
    std::vector<float> ref;
    for (const Config& c : configs) {
      int s_gu = 0, s_dn = 0;
      forward(b, c, gpu.sms, st, &s_gu, &s_dn);  // eager once: errors surface here, and the output to compare
      CK(cudaStreamSynchronize(st));
      CK(cudaGetLastError());
      const std::vector<float> yp = download(b.r.yp, static_cast<size_t>(b.N) * H);
      if (ref.empty()) ref = yp;
      const float diff = harness::max_abs_diff(yp, ref);
      const double us = harness::graph_us([&](cudaStream_t s) { forward(b, c, gpu.sms, s); }, st, 20, 200);
      printf("| %d | %s | %d | %d | %d | %d | %d | %d | %.2f | %.0f | %.3g |\n", T, c.name, c.threads, c.unroll,
             c.blocks_per_sm, c.max_split_k, s_gu, s_dn, us, bytes / (us * 1e3), diff);
    }
  }
  return 0;
}
