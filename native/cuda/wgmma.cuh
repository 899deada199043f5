// wgmma.cuh: Hopper warpgroup MMA (sm_90a) helpers for the head_dim-64 attention kernels, written from the PTX ISA
// (wgmma.mma_async, matrix descriptors).
//
// Only the forms the kernels need: A from registers or shared memory, B from shared memory (".m64nNk16.f32.bf16.bf16",
// N 32, 64 or 128), fp32 accumulate. The B tile is a bf16 tile with 64 columns (128-byte rows) written by load_tile<.., 64, ..>:
// chunk ch of row r sits at r*128 + ((ch ^ (r & 7)) << 4) bytes, which is the 128-byte swizzle (Swizzle<3,4,3>)
// of the descriptors as long as the tile starts on a 1024-byte boundary.
//   K-major B (trans 0; B[k][n] = tile[n][k], e.g. K in Q.K^T): 8-row groups 1024 bytes apart (SBO); step k by 16
//     = +32 bytes on the start address.
//   MN-major B (trans 1; B[k][n] = tile[k][n], e.g. V in P.V): the 64 columns are one swizzle atom wide, 8-row
//     (k) groups 1024 bytes apart (SBO); step k by 16 = +2048 bytes.
// Register fragments (lane = 4g + t, warp w of the warpgroup owns rows 16w..16w+15):
//   A (64x16, four b32 of bf16x2): a0 (row g, k 2t..2t+1), a1 (row g+8), a2 (row g, k 2t+8..), a3 (row g+8, k 2t+8..)
//   D (64xN, f32): d[i][0..1] (row g, cols 8i+2t, +1), d[i][2..3] (row g+8, same cols)
// i.e. per warp exactly the mma.sync m16n8k16 fragments, so D converted to bf16 is the A of the next product.
#pragma once
#include <cstdint>

namespace gptoss::cuda::attn {

// Descriptor of a 1024-byte aligned, 128-byte swizzled tile (K-major or MN-major: both use SBO = 1024 here and
// LBO is unused, since every tile is exactly one 128-byte atom wide).
__device__ __forceinline__ uint64_t wg_desc(uint32_t smem_addr) {
  uint64_t d = static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>(1) << 16;            // LBO (unused)
  d |= static_cast<uint64_t>(1024 >> 4) << 32;    // SBO: 8 rows of 128 bytes
  d |= static_cast<uint64_t>(1) << 62;            // 128-byte swizzle
  return d;
}

// wgmma exists on sm_90a only; `nvcc -arch=sm_90a` also emits compute_90 PTX, where these bodies trap (that PTX is
// never what an H100 runs: the sm_90a cubin is picked first).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GPTOSS_WGMMA(...) asm volatile(__VA_ARGS__)
#else
#define GPTOSS_WGMMA(...) __trap()
#endif

__device__ __forceinline__ void wgmma_fence() { GPTOSS_WGMMA("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { GPTOSS_WGMMA("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  GPTOSS_WGMMA("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Shared memory written through the generic proxy (cp.async, st.shared) must be fenced before wgmma reads it.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Pins accumulator registers in program order (the compiler must not read or move them across a wgmma wait).
template <int N>
__device__ __forceinline__ void fence_acc(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) asm volatile("" : "+f"(d[i][e])::"memory");
}

// Declares accumulator registers overwritten (no instruction emitted): before a product with scale_d = 0, so the
// compiler does not keep their old values live up to the wgmma that (per its "+f" operands) reads them.
template <int N>
__device__ __forceinline__ void acc_undef(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) asm volatile("" : "=f"(d[i][e])::"memory");
}

// Accumulator operand lists of the m64n64 (32 f32 per thread) and m64n128 (64) products, shared by every form: the
// "+f" constraints for d[0..N/8)[0..4) and the matching register list of the instruction text.
#define GPTOSS_WG_ACC4(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define GPTOSS_WG_ACC32(d)                                                                                  \
  GPTOSS_WG_ACC4(d, 0), GPTOSS_WG_ACC4(d, 1), GPTOSS_WG_ACC4(d, 2), GPTOSS_WG_ACC4(d, 3), GPTOSS_WG_ACC4(d, 4), \
      GPTOSS_WG_ACC4(d, 5), GPTOSS_WG_ACC4(d, 6), GPTOSS_WG_ACC4(d, 7)
#define GPTOSS_WG_ACC64(d)                                                                                     \
  GPTOSS_WG_ACC32(d), GPTOSS_WG_ACC4(d, 8), GPTOSS_WG_ACC4(d, 9), GPTOSS_WG_ACC4(d, 10), GPTOSS_WG_ACC4(d, 11), \
      GPTOSS_WG_ACC4(d, 12), GPTOSS_WG_ACC4(d, 13), GPTOSS_WG_ACC4(d, 14), GPTOSS_WG_ACC4(d, 15)
#define GPTOSS_WG_REGS32 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define GPTOSS_WG_REGS64 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d (64 x N) += a (64 x 16, registers) . B (16 x N, shared memory via desc); TRANS = 1 for an MN-major B.
// scale_d = 0: d = a . B (the old contents of d are ignored: no zeroing pass before a fresh product).
template <int N, int TRANS>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc, int scale_d = 1) {
  static_assert(N == 64 || N == 128, "wgmma_rs: N is 64 or 128");
  static_assert(TRANS == 0 || TRANS == 1, "wgmma_rs: TRANS is 0 (K-major B) or 1 (MN-major B)");
  // Operands: N/2 accumulators, then the 4 A registers, the descriptor, scale_d and the transpose-B immediate.
  if constexpr (N == 64) {
    GPTOSS_WGMMA(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " GPTOSS_WG_REGS32 ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : GPTOSS_WG_ACC32(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), "n"(TRANS));
  } else {
    GPTOSS_WGMMA(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " GPTOSS_WG_REGS64 ", {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
        : GPTOSS_WG_ACC64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d), "n"(TRANS));
  }
}

// d (64 x N) += A (64 x 16) . B (16 x N), both from shared memory through descriptors, both K-major (the S = Q.K^T of
// the warp-specialized forward: A = the warpgroup's Q rows, B = the K tile). scale_d = 0: d = A . B.
template <int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b, int scale_d = 1) {
  static_assert(N == 64 || N == 128, "wgmma_ss: N is 64 or 128");
  if constexpr (N == 64) {
    GPTOSS_WGMMA(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " GPTOSS_WG_REGS32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : GPTOSS_WG_ACC32(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  } else {
    GPTOSS_WGMMA(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " GPTOSS_WG_REGS64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
        : GPTOSS_WG_ACC64(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
}

// d (64 x 32) += A (64 x 16) . B (16 x 32), both operands from shared memory through descriptors (the fused-dQ
// product of dkdv_wgmma_kernel: A = K^T read MN-major from the K tile, TA = 1; B = dS K-major, TB = 0).
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_n32(float (&d)[4][4], uint64_t desc_a, uint64_t desc_b, int scale_d = 1) {
  static_assert(TA == 0 || TA == 1, "wgmma_ss_n32: TA is 0 (K-major A) or 1 (MN-major A)");
  static_assert(TB == 0 || TB == 1, "wgmma_ss_n32: TB is 0 (K-major B) or 1 (MN-major B)");
  GPTOSS_WGMMA(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, %19, %20;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]),
        "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
        "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),
        "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TA), "n"(TB));
}

// ---- other sm_90 pieces of the fused-dQ backward (plain sm_90 PTX, no "a" feature) ----
// stmatrix .trans: stores four 8x8 bf16 matrices, each held in the mma.sync fragment layout (lane 4g + t: row g,
// cols 2t, 2t+1 in register j of matrix j), transposed; lanes 8j..8j+7 give the 8 row addresses (16 bytes each) of
// matrix j as stored.
__device__ __forceinline__ void stsm_x4_t(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0),
               "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}
// Named barrier over `count` threads (ids 1..15; 0 is __syncthreads).
__device__ __forceinline__ void bar_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
// acc (64 x 64) += A . B as one commit group, the accumulation step of P.V, P^T dO, dS^T Q and dS K: A = NKK
// register fragments of 16 columns (bf16, pack_a_frags), B = an MN-major 128-byte-row shared tile (desc; 16 rows,
// 2048 bytes, per k step). acc's registers are fenced first: plain instructions wrote them last.
template <int NKK>
__device__ __forceinline__ void wgmma_rs_mn_chain(float (&acc)[8][4], const uint32_t (&a)[NKK][4], uint64_t desc) {
  fence_acc<8>(acc);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < NKK; kk++) wgmma_rs<64, 1>(acc, a[kk], desc + 128 * kk);
  wgmma_commit();
}
// global[dst .. dst + 4) += v (one vector reduction, 16-byte aligned).
__device__ __forceinline__ void red_add_v4(float* dst, float4 v) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
               : "memory");
}

}  // namespace gptoss::cuda::attn
