// wgmma_probe.cu: checks the wgmma forms of native/cuda/wgmma.cuh in isolation (A in registers, B from a 128-byte
// swizzled shared tile written by load_tile, K = 64 in 4 steps) against a host reference.
// On the GPU machine, from the project root:
//   nvcc -arch=sm_90a -std=c++17 -O2 --expt-relaxed-constexpr -Inative/common -Inative/cuda \
//        test/gpu/probes/wgmma_probe.cu -o /tmp/wgmma_probe && /tmp/wgmma_probe
// H100, 2026-11-26: every form passes (m64n64k16 and m64n128k16 K-major, m64n64k16 MN-major, tiles at 0/8/16 KB),
// so the wrong results of the work-in-progress wgmma backward kernels come from elsewhere in those kernels.
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <cuda_bf16.h>
#include "attention_common.cuh"
#include "wgmma.cuh"
using namespace gptoss::cuda::attn;

__device__ __forceinline__ unsigned char* al1024(unsigned char* p) {
  const uint32_t a = smem_u32(p);
  return p + (((a + 1023u) & ~1023u) - a);
}

// A: [64][64] row-major bf16. Bt: tile rows x 64 cols. D: [64][N] f32.
// TRANS 0: B[k][n] = Bt[n][k] (tile N rows).  TRANS 1: B[k][n] = Bt[k][n] (tile 64 rows, N must be 64).
template <int N, int TRANS>
__global__ void probe(const __nv_bfloat16* A, const __nv_bfloat16* Bt, float* D, int extra_off) {
  extern __shared__ __align__(128) unsigned char sm[];
  __nv_bfloat16* s = reinterpret_cast<__nv_bfloat16*>(al1024(sm) + extra_off);
  constexpr int ROWS = TRANS ? 64 : N;
  load_tile<ROWS, 64, 128>(s, Bt, 64, ROWS);
  cp_async_commit();
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  uint32_t a[4][4];
  for (int kk = 0; kk < 4; kk++) {
    auto pk = [&](int r, int c) {
      __nv_bfloat162 v;
      v.x = A[r * 64 + c];
      v.y = A[r * 64 + c + 1];
      return *reinterpret_cast<uint32_t*>(&v);
    };
    const int r = 16 * w + g, c = kk * 16 + 2 * t;
    a[kk][0] = pk(r, c);
    a[kk][1] = pk(r + 8, c);
    a[kk][2] = pk(r, c + 8);
    a[kk][3] = pk(r + 8, c + 8);
  }
  float d[N / 8][4];
  for (int i = 0; i < N / 8; i++) d[i][0] = d[i][1] = d[i][2] = d[i][3] = 0.f;
  const uint64_t desc = wg_desc(smem_u32(s));
  fence_acc<N / 8>(d);
  wgmma_fence();
  for (int kk = 0; kk < 4; kk++) wgmma_rs<N, TRANS>(d, a[kk], desc + (TRANS ? 128 * kk : 2 * kk));
  wgmma_commit();
  wgmma_wait<0>();
  fence_acc<N / 8>(d);
  for (int i = 0; i < N / 8; i++)
    for (int e = 0; e < 4; e++) {
      const int r = 16 * w + g + (e >> 1) * 8, c = 8 * i + 2 * t + (e & 1);
      D[r * N + c] = d[i][e];
    }
}

template <int N, int TRANS>
int run(int extra_off) {
  const int BR = TRANS ? 64 : N;
  std::vector<__nv_bfloat16> hA(64 * 64), hB(BR * 64);
  std::vector<float> fA(64 * 64), fB(BR * 64);
  srand(1);
  for (int i = 0; i < 64 * 64; i++) { hA[i] = __float2bfloat16((rand() % 17 - 8) / 8.f); fA[i] = __bfloat162float(hA[i]); }
  for (int i = 0; i < BR * 64; i++) { hB[i] = __float2bfloat16((rand() % 13 - 6) / 4.f); fB[i] = __bfloat162float(hB[i]); }
  __nv_bfloat16 *dA, *dB; float* dD;
  cudaMalloc(&dA, 64 * 64 * 2); cudaMalloc(&dB, BR * 64 * 2); cudaMalloc(&dD, 64 * N * 4);
  cudaMemcpy(dA, hA.data(), 64 * 64 * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, hB.data(), BR * 64 * 2, cudaMemcpyHostToDevice);
  cudaMemset(dD, 0, 64 * N * 4);
  const int smem = BR * 64 * 2 + 2048 + extra_off;
  cudaFuncSetAttribute(probe<N, TRANS>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  probe<N, TRANS><<<1, 128, smem>>>(dA, dB, dD, extra_off);
  cudaError_t e = cudaDeviceSynchronize();
  std::vector<float> hD(64 * N);
  cudaMemcpy(hD.data(), dD, 64 * N * 4, cudaMemcpyDeviceToHost);
  double maxerr = 0; int bad = 0, first_r = -1, first_c = -1;
  for (int r = 0; r < 64; r++)
    for (int c = 0; c < N; c++) {
      double ref = 0;
      for (int k = 0; k < 64; k++) ref += fA[r * 64 + k] * (TRANS ? fB[k * 64 + c] : fB[c * 64 + k]);
      double err = fabs(ref - hD[r * N + c]);
      if (err > 1e-3) { if (!bad) { first_r = r; first_c = c; } bad++; }
      maxerr = fmax(maxerr, err);
    }
  printf("N=%d TRANS=%d off=%d: %s, bad %d/%d, max err %.3g (first bad r%d c%d)\n", N, TRANS, extra_off,
         cudaGetErrorString(e), bad, 64 * N, maxerr, first_r, first_c);
  cudaFree(dA); cudaFree(dB); cudaFree(dD);
  return bad;
}

int main() {
  run<64, 0>(0);
  run<128, 0>(0);
  run<64, 1>(0);

  run<64, 0>(8192);
  run<64, 0>(16384);
  return 0;
}
