// paged_attention.cc: binding of attention over a paged KV cache (see native/cpu/paged_attention.h).
#include <cmath>

#include "../cpu/paged_attention.h"
#include "args.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/paged_attention.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

// pagedAttention(q, kPool, vPool, blockTables, contextLens, queryStarts, sinks|null, window, scale) -> out [N, Hq, D]
GPTOSS_OP(pagedAttention) {
  const char* op = "pagedAttention";
  Tensor& q = tensor_arg(info, 0, op, "q");
  Tensor& k_pool = tensor_arg(info, 1, op, "kPool");
  Tensor& v_pool = tensor_arg(info, 2, op, "vPool");
  Tensor& block_tables = tensor_arg(info, 3, op, "blockTables");
  Tensor& context_lens = tensor_arg(info, 4, op, "contextLens");
  Tensor& query_starts = tensor_arg(info, 5, op, "queryStarts");
  auto sinks = opt_tensor_arg(info, 6, op, "sinks");
  const int64_t window = int_arg(info, 7, op, "window");
  const double scale = num_arg(info, 8, op, "scale");

  check_ndim(op, "q", q, 3);
  check_ndim(op, "kPool", k_pool, 4);
  const int64_t N = q.dim(0), Hq = q.dim(1), D = q.dim(2);
  const int64_t num_blocks = k_pool.dim(0), block_size = k_pool.dim(1), Hkv = k_pool.dim(2);
  GPTOSS_CHECK(Hkv >= 1 && Hq % Hkv == 0, op, ": query heads must be a multiple of kv heads, got q ", q.describe(),
               " and kPool ", k_pool.describe());
  GPTOSS_CHECK(num_blocks >= 1 && block_size >= 1, op, ": kPool must hold at least one block of at least one token, got ",
               k_pool.describe());
  check_shape(op, "kPool", k_pool, {num_blocks, block_size, Hkv, D});
  check_shape(op, "vPool", v_pool, {num_blocks, block_size, Hkv, D});
  check_float(op, "q", q);
  check_dtype(op, "kPool", k_pool, q.dtype);
  check_dtype(op, "vPool", v_pool, q.dtype);
  check_same_device(op, q, k_pool);
  check_same_device(op, q, v_pool);

  check_dtype(op, "contextLens", context_lens, DType::I32);
  check_ndim(op, "contextLens", context_lens, 1);
  const int64_t B = context_lens.dim(0);
  check_same_device(op, q, context_lens);
  check_dtype(op, "blockTables", block_tables, DType::I32);
  check_ndim(op, "blockTables", block_tables, 2);
  GPTOSS_CHECK(block_tables.dim(0) == B, op, ": blockTables must have one row per sequence (", B,
               " contextLens), got ", block_tables.describe());
  check_same_device(op, q, block_tables);
  check_tensor(op, "queryStarts", query_starts, DType::I32, {B + 1}, q);
  if (sinks) {
    GPTOSS_CHECK(sinks->dtype == DType::F32 || sinks->dtype == DType::BF16, op, ": sinks must be f32 or bf16, got ",
                 sinks->describe());
    check_shape(op, "sinks", *sinks, {Hq});
    check_same_device(op, q, *sinks);
  }
  GPTOSS_CHECK(window >= 0, op, ": window must be >= 0 (0 = full causal), got ", window);
  GPTOSS_CHECK(scale > 0 && std::isfinite(scale), op, ": scale must be a positive number, got ", scale);
  if (q.is_cuda()) {
    GPTOSS_CHECK(q.dtype == DType::BF16, op, ": the CUDA backend needs bf16 q and pools, got ", q.describe());
    GPTOSS_CHECK(D == 64 || D == 128, op, ": the CUDA backend supports head_dim 64 or 128, got ", q.describe());
  }

  Tensor out = make_tensor({N, Hq, D}, q.dtype, q.device);
  const Tensor* sinks_ptr = sinks ? &*sinks : nullptr;
  GPTOSS_DISPATCH(q,
                  cpu::paged_attention(q, k_pool, v_pool, block_tables, context_lens, query_starts, sinks_ptr,
                                       static_cast<int>(window), static_cast<float>(scale), out),
                  cuda::paged_attention(q, k_pool, v_pool, block_tables, context_lens, query_starts, sinks_ptr,
                                        static_cast<int>(window), static_cast<float>(scale), out));
  return wrap(info.Env(), out);
}
