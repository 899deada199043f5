// tma.cuh: Hopper (sm_90) asynchronous-copy plumbing for the warp-specialized kernels, written from the PTX ISA:
// mbarriers (init, arrive, expect_tx, parity wait), TMA tile loads (cp.async.bulk.tensor with a CUtensorMap) and
// the warpgroup register re-allocation (setmaxnreg) that lets a producer warpgroup give its registers to the
// consumers. Host side: encoding a tensor map through the driver entry point (no link against libcuda).
//
// Pipeline convention (one ring slot s, used for the i-th time with i = round):
//   full[s]  (count 1): the producer arrives with expect_tx(bytes) and the TMA completes the bytes; consumers wait
//            with parity (round & 1).
//   empty[s] (count = consumer warps): each consumer warp arrives once it no longer reads the slot; the producer
//            waits with parity (round & 1) ^ 1 (the phase before the first one counts as complete, so round 0
//            passes at once).
#pragma once
#include <cuda.h>  // CUtensorMap and its enums (types only; the function comes from cudaGetDriverEntryPoint)

#include <cstdint>

namespace gptoss::cuda::attn {

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the other threads and to the async proxy (before a __syncthreads).
__device__ __forceinline__ void fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives and announces `bytes` of asynchronous transactions (TMA) that must also land before the phase completes.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Spins until the phase of parity `parity` has completed (try_wait suspends the thread for a while in hardware).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "MBAR_WAIT_LOOP:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra MBAR_WAIT_LOOP;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// TMA: the box at coordinates (c0 innermost, c1, c2) of the 3-d tensor `map` into shared memory at dst; its bytes
// complete the transaction count of the mbarrier `bar`. Elements outside the tensor are written as zeros.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1,
                                            int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void tma_prefetch_desc(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Warpgroup register budget (all 128 threads of the warpgroup execute it): the producer shrinks, consumers grow.
// sm_90a only, like wgmma (the compute_90 PTX of the same file traps, and is never what an H100 runs).
template <int N>
__device__ __forceinline__ void regs_shrink() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#else
  __trap();
#endif
}
template <int N>
__device__ __forceinline__ void regs_grow() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#else
  __trap();
#endif
}

// The warpgroup index as a warp-uniform value (a shuffle from lane 0), so that ptxas sees branches on it as
// uniform and keeps the wgmma of each branch asynchronous.
__device__ __forceinline__ int warpgroup_uniform() { return __shfl_sync(0xffffffffu, threadIdx.x / 128, 0); }

}  // namespace gptoss::cuda::attn

namespace gptoss::cuda {
// Host: a 3-d bf16 tensor map over [rows, heads, 64] (row stride heads*64 elements) whose box is one head's
// `box_rows` x 64 tile, 128-byte swizzled (the layout wg_desc describes). False when the driver lacks TMA or the
// encoding fails (the caller falls back to a kernel without TMA).
bool encode_head_tile_map(CUtensorMap* map, const void* base, int64_t rows, int heads, int box_rows);
}  // namespace gptoss::cuda
