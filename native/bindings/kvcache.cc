// kvcache.cc: binding for scatterRows (KV-cache writes: one launch per layer instead of a copy per sequence).
#include "../cpu/kvcache.h"
#include "binding.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/kvcache.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

// scatterRows(dst [M, ...], src [N, ...], index i32 [N]): dst rows index[n] = src rows n (same row size and dtype).
GPTOSS_OP(scatterRows) {
  const char* op = "scatterRows";
  Tensor& dst = tensor_arg(info, 0, op, "dst");
  Tensor& src = tensor_arg(info, 1, op, "src");
  Tensor& index = tensor_arg(info, 2, op, "index");
  check_dtype(op, "index", index, DType::I32);
  check_ndim(op, "index", index, 1);
  check_same_device(op, dst, src);
  check_same_device(op, dst, index);
  GPTOSS_CHECK(dst.dtype == src.dtype, op, ": dst ", dst.describe(), " and src ", src.describe(), " must share a dtype");
  GPTOSS_CHECK(dst.ndim() >= 1 && src.ndim() >= 1 && src.dim(0) == index.dim(0), op, ": src ", src.describe(),
               " must have index.length = ", index.dim(0), " rows");
  const int64_t dst_row = dst.dim(0) ? dst.numel() / dst.dim(0) : 0;
  const int64_t src_row = src.dim(0) ? src.numel() / src.dim(0) : 0;
  GPTOSS_CHECK(index.dim(0) == 0 || dst_row == src_row, op, ": rows of dst ", dst.describe(), " and src ", src.describe(),
               " differ in size");
  GPTOSS_DISPATCH(dst, cpu::scatter_rows(dst, src, index), cuda::scatter_rows(dst, src, index));
  return info.Env().Undefined();
}
