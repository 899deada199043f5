// paged_attention.cc: the readable fp32 reference of paged attention (see paged_attention.h). One parallel task
// per (query row, head) writes that row's output, so results do not depend on the thread count. The pools are
// read in place (they hold the whole cache; widening them per call would copy every layer's pool).
#include "paged_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "parallel.h"

namespace gptoss::cpu {
namespace {

float load(const Tensor& t, int64_t i) {
  return t.dtype == DType::F32 ? t.data<float>()[i] : to_f32(t.data<bf16>()[i]);
}

void store(const Tensor& t, int64_t i, float v) {
  if (t.dtype == DType::F32)
    t.data<float>()[i] = v;
  else
    t.data<bf16>()[i] = to_bf16(v);
}

}  // namespace

void check_paged_metadata(const char* op, int64_t N, int64_t num_blocks, int64_t block_size, int window,
                          const Tensor& block_tables, const Tensor& context_lens, const Tensor& query_starts) {
  const int64_t B = context_lens.dim(0), max_blocks = block_tables.dim(1);
  const int32_t* qs = query_starts.data<int32_t>();
  const int32_t* ctx = context_lens.data<int32_t>();
  const int32_t* bt = block_tables.data<int32_t>();
  GPTOSS_CHECK(qs[0] == 0 && qs[B] == N, op, ": queryStarts must run from 0 to the ", N, " query rows, got [", qs[0],
               " .. ", qs[B], "]");
  for (int64_t b = 0; b < B; b++) {
    const int64_t qlen = static_cast<int64_t>(qs[b + 1]) - qs[b];
    GPTOSS_CHECK(qlen >= 0, op, ": queryStarts must be non-decreasing, got queryStarts[", b, "] = ", qs[b],
                 " > queryStarts[", b + 1, "] = ", qs[b + 1]);
    GPTOSS_CHECK(ctx[b] >= qlen, op, ": contextLens[", b, "] = ", ctx[b], " is smaller than its ", qlen,
                 " query rows (the context includes this step's tokens)");
    GPTOSS_CHECK(ctx[b] <= max_blocks * block_size, op, ": contextLens[", b, "] = ", ctx[b], " does not fit ",
                 max_blocks, " blocks of ", block_size, " tokens (blockTables row ", b, ")");
    if (qlen == 0) continue;
    // The blocks this sequence's queries read: from the first key the earliest query sees to the last token.
    const int64_t first_query = ctx[b] - qlen;
    const int64_t first_key = window > 0 ? std::max<int64_t>(0, first_query - window + 1) : 0;
    for (int64_t j = first_key / block_size; j <= (ctx[b] - 1) / block_size; j++) {
      const int32_t id = bt[b * max_blocks + j];
      GPTOSS_CHECK(id >= 0 && id < num_blocks, op, ": blockTables[", b, "][", j, "] = ", id,
                   " is not a block of the pool (", num_blocks, " blocks)");
    }
  }
}

void paged_attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                     const Tensor& context_lens, const Tensor& query_starts, const Tensor* sinks, int window,
                     float scale, const Tensor& out) {
  const int64_t N = q.dim(0), Hq = q.dim(1), D = q.dim(2);
  const int64_t num_blocks = k_pool.dim(0), block_size = k_pool.dim(1), Hkv = k_pool.dim(2), G = Hq / Hkv;
  const int64_t B = context_lens.dim(0), max_blocks = block_tables.dim(1);
  check_paged_metadata("pagedAttention", N, num_blocks, block_size, window, block_tables, context_lens, query_starts);
  const int32_t* qs = query_starts.data<int32_t>();
  const int32_t* ctx = context_lens.data<int32_t>();
  const int32_t* bt = block_tables.data<int32_t>();
  std::vector<int64_t> seq_of_row(static_cast<size_t>(N));
  for (int64_t b = 0; b < B; b++)
    for (int64_t n = qs[b]; n < qs[b + 1]; n++) seq_of_row[n] = b;
  std::vector<float> sink(static_cast<size_t>(Hq), -std::numeric_limits<float>::infinity());
  if (sinks)
    for (int64_t h = 0; h < Hq; h++) sink[h] = load(*sinks, h);

  parallel_for(N * Hq, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> qi(D), scores, acc(D);
    std::vector<int64_t> key_row;  // pool row (block * blockSize + slot) of each key the query sees
    for (int64_t it = begin; it < end; it++) {
      const int64_t n = it / Hq, h = it % Hq, kvh = h / G, b = seq_of_row[n];
      const int64_t pos = ctx[b] - (qs[b + 1] - n);  // this row's position in its sequence
      const int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
      for (int64_t d = 0; d < D; d++) qi[d] = load(q, (n * Hq + h) * D + d);
      key_row.resize(pos - lo + 1);
      scores.resize(pos - lo + 1);
      float mx = sink[h];
      for (int64_t j = lo; j <= pos; j++) {
        const int64_t row = static_cast<int64_t>(bt[b * max_blocks + j / block_size]) * block_size + j % block_size;
        key_row[j - lo] = row;
        float dot = 0.f;
        for (int64_t d = 0; d < D; d++) dot += qi[d] * load(k_pool, (row * Hkv + kvh) * D + d);
        scores[j - lo] = dot * scale;
        mx = std::max(mx, scores[j - lo]);
      }
      float sum = std::exp(sink[h] - mx);  // 0 without a sink
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = lo; j <= pos; j++) {
        const float p = std::exp(scores[j - lo] - mx);
        sum += p;
        const int64_t base = (key_row[j - lo] * Hkv + kvh) * D;
        for (int64_t d = 0; d < D; d++) acc[d] += p * load(v_pool, base + d);
      }
      for (int64_t d = 0; d < D; d++) store(out, (n * Hq + h) * D + d, acc[d] / sum);
    }
  });
}

}  // namespace gptoss::cpu
