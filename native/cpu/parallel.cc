// parallel.cc: a fixed pool of workers fed one parallel_for at a time.
#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace gptoss::cpu {

namespace {

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n) {
    stop();
    stopping_ = false;
    for (int i = 0; i < n - 1; i++) workers_.emplace_back([this] { loop(); });
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
    std::lock_guard<std::mutex> run_lock(run_mu_);  // one parallel region at a time
    int64_t chunks = std::min<int64_t>(size() * 4, (n + grain - 1) / grain);
    Job job;
    job.f = &f;
    job.n = n;
    job.chunk = (n + chunks - 1) / chunks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      pending_ = (n + job.chunk - 1) / job.chunk;  // chunks actually handed out (rounding can leave fewer)
      error_ = nullptr;
      generation_++;
    }
    cv_.notify_all();
    work(job);
    std::unique_lock<std::mutex> lock(mu_);
    // The Job lives on this stack: wait until every chunk ran AND no worker still holds a pointer to it.
    done_cv_.wait(lock, [this] { return pending_ == 0 && active_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // One parallel_for call. Workers take a pointer to it under mu_, so a worker never mixes the chunk size or
  // counter of one call with another's.
  struct Job {
    const std::function<void(int64_t, int64_t)>* f = nullptr;
    int64_t n = 0, chunk = 1;
    std::atomic<int64_t> next{0};
  };

  void work(Job& job) {
    for (;;) {
      int64_t begin = job.next.fetch_add(job.chunk);
      if (begin >= job.n) return;
      int64_t end = std::min(job.n, begin + job.chunk);
      try {
        (*job.f)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      Job* job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || (generation_ != seen && job_ != nullptr); });
        if (stopping_) return;
        seen = generation_;
        job = job_;
        active_++;
      }
      tls_in_pool = true;
      work(*job);
      tls_in_pool = false;
      std::lock_guard<std::mutex> lock(mu_);
      if (--active_ == 0 && pending_ == 0) done_cv_.notify_all();
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

 public:
  static thread_local bool tls_in_pool;

 private:
  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_, done_cv_;
  Job* job_ = nullptr;  // the call in progress, or null
  int64_t pending_ = 0;  // chunks of job_ not yet finished
  int active_ = 0;       // workers holding job_
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
};

thread_local bool Pool::tls_in_pool = false;
thread_local bool tls_in_region = false;

int default_threads() {
  if (const char* e = std::getenv("GPTOSS_NUM_THREADS")) {
    int n = std::atoi(e);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(std::max(1, n)); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (n <= grain || tls_in_region || Pool::tls_in_pool || pool().size() == 1) {
    f(0, n);
    return;
  }
  tls_in_region = true;
  try {
    pool().run(n, grain, f);
  } catch (...) {
    tls_in_region = false;
    throw;
  }
  tls_in_region = false;
}

}  // namespace gptoss::cpu
