// harness_util.cuh: what the standalone CUDA harnesses (bench/moe_decode_harness, bench/moe_grouped_harness) share:
// a checked-call macro, a fixed-seed xorshift generator, random bf16 uploads (the experts' weights among them), bf16
// downloads, the T list of the command line, and the timing of one forward as CUDA-graph replays (as decode runs
// it: no host launch cost).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      printf("CUDA %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__);                \
      exit(1);                                                                                 \
    }                                                                                          \
  } while (0)

namespace harness {

using bf = __nv_bfloat16;

// xorshift64 with a fixed seed: every run draws the same weights and routing.
inline uint64_t next_u64() {
  static uint64_t s = 88172645463325252ull;
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}
inline float frand() { return ((next_u64() >> 40) * (1.0f / 8388608.f)) - 1.f; }  // uniform [-1, 1)

// n bf16 values uniform in [-scale, scale), on the device.
inline bf* upload_random(size_t n, float scale) {
  std::vector<bf> h(n);
  for (auto& v : h) v = __float2bfloat16(scale * frand());
  bf* d;
  CK(cudaMalloc(&d, n * sizeof(bf)));
  CK(cudaMemcpy(d, h.data(), n * sizeof(bf), cudaMemcpyHostToDevice));
  return d;
}

// All E experts' MLP weights, uniform in [-0.02, 0.02): gate_up [E, H, 2I] + bias [E, 2I], down [E, I, H] + bias
// [E, H] (at gpt-oss-20b sizes 1.6 GB, 32x the L2: every forward streams what it reads from HBM).
struct ExpertWeights {
  bf *gate_up = nullptr, *gate_up_bias = nullptr, *down = nullptr, *down_bias = nullptr;
};
inline ExpertWeights upload_experts(int E, int H, int I) {
  ExpertWeights w;
  w.gate_up = upload_random(static_cast<size_t>(E) * H * 2 * I, 0.02f);
  w.gate_up_bias = upload_random(static_cast<size_t>(E) * 2 * I, 0.02f);
  w.down = upload_random(static_cast<size_t>(E) * I * H, 0.02f);
  w.down_bias = upload_random(static_cast<size_t>(E) * H, 0.02f);
  return w;
}

// The expert MLP's saved rows for up to n routed rows: gu [n, 2I], h [n, I] (SwiGLU of gu), yp [n, H].
struct ExpertRows {
  bf *gu = nullptr, *h = nullptr, *yp = nullptr;
};
inline ExpertRows alloc_rows(int n, int H, int I) {
  ExpertRows r;
  CK(cudaMalloc(&r.gu, sizeof(bf) * static_cast<size_t>(n) * 2 * I));
  CK(cudaMalloc(&r.h, sizeof(bf) * static_cast<size_t>(n) * I));
  CK(cudaMalloc(&r.yp, sizeof(bf) * static_cast<size_t>(n) * H));
  return r;
}

inline std::vector<float> download(const bf* d, size_t n) {
  std::vector<bf> h(n);
  CK(cudaMemcpy(h.data(), d, n * sizeof(bf), cudaMemcpyDeviceToHost));
  std::vector<float> f(n);
  for (size_t i = 0; i < n; i++) f[i] = __bfloat162float(h[i]);
  return f;
}

inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float d = 0.f;
  for (size_t i = 0; i < a.size(); i++) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

// The token counts T of the command line (defaults without any); exits with a message if one is outside lo..hi.
inline std::vector<int> token_counts(int argc, char** argv, std::vector<int> defaults, int lo, int hi) {
  std::vector<int> Ts;
  for (int i = 1; i < argc; i++) Ts.push_back(atoi(argv[i]));
  if (Ts.empty()) Ts = std::move(defaults);
  for (int T : Ts) {
    if (T < lo || T > hi) {
      printf("T must be in %d..%d, got %d\n", lo, hi, T);
      exit(1);
    }
  }
  return Ts;
}

// The current GPU: its name and SM count (the tables' title; the decode split's grid).
struct Gpu {
  std::string name;
  int sms = 0;
};
inline Gpu current_gpu() {
  int dev = 0;
  CK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, dev));
  return {prop.name, prop.multiProcessorCount};
}

// µs per replay of fwd captured in a CUDA graph on st: `warm` replays, then `reps` timed ones (CUDA events).
inline double graph_us(const std::function<void(cudaStream_t)>& fwd, cudaStream_t st, int warm, int reps) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  fwd(st);
  CK(cudaStreamEndCapture(st, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < warm; i++) CK(cudaGraphLaunch(exec, st));
  cudaEvent_t t0, t1;
  CK(cudaEventCreate(&t0));
  CK(cudaEventCreate(&t1));
  CK(cudaEventRecord(t0, st));
  for (int i = 0; i < reps; i++) CK(cudaGraphLaunch(exec, st));
  CK(cudaEventRecord(t1, st));
  CK(cudaEventSynchronize(t1));
  float ms = 0.f;
  CK(cudaEventElapsedTime(&ms, t0, t1));
  CK(cudaEventDestroy(t0));
  CK(cudaEventDestroy(t1));
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  return 1000.0 * ms / reps;
}

}  // namespace harness
