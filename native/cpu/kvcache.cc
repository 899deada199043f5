// kvcache.cc: row scatter (KV-cache writes) on the CPU: one memcpy per row, rows in parallel.
#include "kvcache.h"

#include <cstring>
#include <vector>

#include "../common/error.h"
#include "parallel.h"

namespace gptoss::cpu {

// Index -1 skips the row (a padding row of a CUDA-graph bucket writes nothing, as on CUDA); anything else out of
// range is an error.
void check_rows(const char* op, const int32_t* index, int64_t n, int64_t rows) {
  for (int64_t i = 0; i < n; i++) {
    GPTOSS_CHECK(index[i] >= -1 && index[i] < rows, op, ": index[", i, "] = ", index[i], " is out of range for ", rows,
                 " rows (-1 skips a row)");
  }
}

void scatter_rows(const Tensor& dst, const Tensor& src, const Tensor& index) {
  const int64_t n = index.numel();
  const int64_t rows = dst.dim(0);
  const size_t row_bytes = n ? src.nbytes() / static_cast<size_t>(n) : 0;
  const int32_t* idx = index.data<int32_t>();
  check_rows("scatterRows", idx, n, rows);
  char* d = static_cast<char*>(dst.raw());
  const char* s = static_cast<const char*>(src.raw());
  // Duplicate indices: keep the last write by running duplicates in order (serial when any repeat).
  bool dup = false;
  {
    std::vector<char> seen(static_cast<size_t>(rows), 0);
    for (int64_t i = 0; i < n && !dup; i++) dup = idx[i] >= 0 && seen[idx[i]]++ != 0;
  }
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++)
      if (idx[i] >= 0) std::memcpy(d + static_cast<size_t>(idx[i]) * row_bytes, s + static_cast<size_t>(i) * row_bytes, row_bytes);
  };
  if (dup) body(0, n);
  else parallel_for(n, 16, body);
}

}  // namespace gptoss::cpu
