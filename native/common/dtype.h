// dtype.h: element types of a Tensor and BF16 <-> FP32 conversion usable on host and device.
#pragma once
#include <cstdint>
#include <cstddef>
#include <cstring>
#include <string>

#if defined(__CUDACC__)
#define GPTOSS_HD __host__ __device__ __forceinline__
#else
#define GPTOSS_HD inline
#endif

namespace gptoss {

enum class DType : int32_t { BF16 = 0, F32 = 1, I32 = 2, U8 = 3 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::BF16: return 2;
    case DType::F32: return 4;
    case DType::I32: return 4;
    case DType::U8: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::BF16: return "bf16";
    case DType::F32: return "f32";
    case DType::I32: return "i32";
    case DType::U8: return "u8";
  }
  return "?";
}

// Storage type for BF16 on the host side of the code (kernels in .cu files may use __nv_bfloat16 on the
// same bits). A plain struct so that CPU code never depends on CUDA headers.
struct bf16 {
  uint16_t bits;
};

// Round-to-nearest-even, NaN kept quiet. Matches torch's float->bfloat16 conversion.
GPTOSS_HD uint16_t f32_to_bf16_bits(float f) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(f);
#else
  std::memcpy(&u, &f, 4);
#endif
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

GPTOSS_HD float bf16_bits_to_f32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

GPTOSS_HD float to_f32(bf16 v) { return bf16_bits_to_f32(v.bits); }
GPTOSS_HD float to_f32(float v) { return v; }
GPTOSS_HD bf16 to_bf16(float v) { return bf16{f32_to_bf16_bits(v)}; }
// Round an fp32 value through BF16 (what storing it in a bf16 tensor does).
GPTOSS_HD float round_bf16(float v) { return bf16_bits_to_f32(f32_to_bf16_bits(v)); }

}  // namespace gptoss
