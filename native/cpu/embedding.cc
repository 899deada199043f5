// embedding.cc: CPU reference for the embedding gather and its scatter-add backward.
#include "embedding.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "parallel.h"

namespace gptoss::cpu {

void check_ids(const char* op, const int32_t* ids, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; i++)
    GPTOSS_CHECK(ids[i] >= 0 && ids[i] < vocab, op, ": ids[", i, "] = ", ids[i],
                 " is out of range for vocabulary size V = ", vocab);
}

// out[t] = w[ids[t] - start] for ids in [start, start + rows), zeros for the others.
template <typename T>
static void gather(const T* w, const int32_t* ids, T* out, int64_t n, int64_t h, int64_t start, int64_t rows) {
  parallel_for(n, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      const int64_t id = int64_t(ids[t]) - start;
      T* dst = out + t * h;
      if (id < 0 || id >= rows) {
        std::memset(dst, 0, sizeof(T) * h);  // +0 in bf16 and f32
        continue;
      }
      const T* src = w + id * h;
      std::copy(src, src + h, dst);
    }
  });
}

static void gather_rows(const Tensor& weight, const Tensor& ids, int64_t start, const Tensor& out) {
  const int64_t n = ids.numel(), h = weight.dim(1), rows = weight.dim(0);
  if (weight.dtype == DType::BF16)
    gather(weight.data<bf16>(), ids.data<int32_t>(), out.data<bf16>(), n, h, start, rows);
  else
    gather(weight.data<float>(), ids.data<int32_t>(), out.data<float>(), n, h, start, rows);
}

void embedding_forward(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  check_ids("embeddingForward", ids.data<int32_t>(), ids.numel(), weight.dim(0));
  gather_rows(weight, ids, 0, out);
}

void embedding_forward_slice(const Tensor& weight, const Tensor& ids, int64_t vocab_start, const Tensor& out) {
  gather_rows(weight, ids, vocab_start, out);
}

template <typename T>
static void scatter_add(const T* dout, const int32_t* ids, float* dw, int64_t n, int64_t vocab, int64_t h,
                        bool accumulate) {
  // Group the tokens by id (counting sort, stable in t), then each vocabulary row is owned by one task that
  // sums its tokens in order: no races and the same result for any thread count.
  std::vector<int64_t> start(vocab + 1, 0);
  for (int64_t t = 0; t < n; t++) start[ids[t] + 1]++;
  for (int64_t v = 0; v < vocab; v++) start[v + 1] += start[v];
  std::vector<int64_t> order(n), fill(start.begin(), start.end() - 1);
  for (int64_t t = 0; t < n; t++) order[fill[ids[t]]++] = t;
  if (!accumulate) std::memset(dw, 0, sizeof(float) * vocab * h);
  parallel_for(vocab, 64, [&](int64_t b, int64_t e) {
    // accumulate: the row's sum is formed from zero first and then added once, as a fresh gradient added to the
    // buffer would be (so accumulating in place gives the same bits as backward-then-add).
    std::vector<float> sum(accumulate ? h : 0);
    for (int64_t v = b; v < e; v++) {
      if (start[v] == start[v + 1]) continue;
      float* row = accumulate ? sum.data() : dw + v * h;
      if (accumulate) std::fill(sum.begin(), sum.end(), 0.f);
      for (int64_t k = start[v]; k < start[v + 1]; k++) {
        const T* src = dout + order[k] * h;
        for (int64_t j = 0; j < h; j++) row[j] += to_f32(src[j]);
      }
      if (accumulate)
        for (int64_t j = 0; j < h; j++) dw[v * h + j] += sum[j];
    }
  });
}

void embedding_backward(const Tensor& dout, const Tensor& ids, const Tensor& dweight, bool accumulate) {
  int64_t n = ids.numel(), vocab = dweight.dim(0), h = dweight.dim(1);
  check_ids("embeddingBackward", ids.data<int32_t>(), n, vocab);
  if (dout.dtype == DType::BF16)
    scatter_add(dout.data<bf16>(), ids.data<int32_t>(), dweight.data<float>(), n, vocab, h, accumulate);
  else
    scatter_add(dout.data<float>(), ids.data<int32_t>(), dweight.data<float>(), n, vocab, h, accumulate);
}

}  // namespace gptoss::cpu
