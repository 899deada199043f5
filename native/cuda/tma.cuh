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

#include <cuda_runtime.h>

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
// TMA: `box` consecutive elements from element c0 of a one-row map (encode_f32_vector_map: lse / D_i rows).
__device__ __forceinline__ void tma_load_row(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::
          "r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(0), "r"(bar)
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
// ---- host: tensor maps, encoded through the driver entry point (header-only, so standalone harnesses use it too)
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
// cuTensorMapEncodeTiled, or null when the driver lacks it (callers then fall back to kernels without TMA).
inline EncodeTiledFn encode_tiled() {
  static EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();  // clear the error: the caller falls back
      return static_cast<EncodeTiledFn>(nullptr);
    }
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

// A 3-d bf16 tensor map over [rows, heads, 64] (row stride heads*64 elements) whose box is one head's `box_rows` x 64
// tile, 128-byte swizzled (the layout wg_desc describes). False when the driver lacks TMA or the encoding fails.
inline bool encode_head_tile_map(CUtensorMap* map, const void* base, int64_t rows, int heads, int box_rows) {
  EncodeTiledFn enc = encode_tiled();
  if (!enc || (reinterpret_cast<uintptr_t>(base) & 15)) return false;
  const cuuint64_t dims[3] = {64, static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {64 * 2, static_cast<cuuint64_t>(heads) * 64 * 2};  // bytes, dims 1 and 2
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem[3] = {1, 1, 1};
  return enc(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims, strides, box, elem,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// An f32 tensor map over n consecutive elements with a box of `box` elements (lse / D_i, [Hq, T] read as one row of
// Hq*T, so any T works and a box may start at any element). Encoded as a [1, n] 2-d map (one row; its stride is
// only a formality, rounded up to the 16 bytes the encoder requires).
inline bool encode_f32_vector_map(CUtensorMap* map, const float* base, int64_t n, int box) {
  EncodeTiledFn enc = encode_tiled();
  if (!enc || (reinterpret_cast<uintptr_t>(base) & 15) || n >= (int64_t{1} << 31)) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(n), 1};
  const cuuint64_t strides[1] = {(static_cast<cuuint64_t>(n) * 4 + 15) & ~cuuint64_t{15}};
  const cuuint32_t boxd[2] = {static_cast<cuuint32_t>(box), 1};
  const cuuint32_t elem[2] = {1, 1};
  return enc(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, const_cast<float*>(base), dims, strides, boxd, elem,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}
}  // namespace gptoss::cuda
