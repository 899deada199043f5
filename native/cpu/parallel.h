// parallel.h: the CPU backend's thread pool. parallel_for splits [0, n) into chunks of at least `grain`
// iterations and runs them on persistent worker threads (GPTOSS_NUM_THREADS, default: hardware threads).
// Kernels must write disjoint outputs per index, so results do not depend on the thread count.
#pragma once
#include <cstdint>
#include <functional>

namespace gptoss::cpu {

int num_threads();
void set_num_threads(int n);
// f(begin, end) over disjoint sub-ranges of [0, n); returns when all are done. Nested calls run serially.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f);

}  // namespace gptoss::cpu
