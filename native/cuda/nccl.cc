// nccl.cc: communicators and collectives over NCCL (see nccl_comm.h). Compiled only in CUDA builds; this is the
// only file that includes nccl.h from NCCL, so every .cu file still compiles in CI without it.
#include "nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "../common/device.h"
#include "../common/error.h"

static_assert(sizeof(ncclUniqueId) == gptoss::cuda::nccl::kUniqueIdBytes, "ncclUniqueId is not 128 bytes");

namespace gptoss::cuda::nccl {

// A collective the watchdog waits for: the event recorded on the stream right after it was enqueued.
struct Pending {
  cudaEvent_t done = nullptr;
  std::chrono::steady_clock::time_point enqueued;
  std::string what;
  std::string phase;
};

struct Comm {
  ncclComm_t comm = nullptr;
  int device = 0;
  int rank = 0;
  int size = 0;
  // The watchdog (watchdog_ms > 0): a thread that polls the events of the enqueued collectives and NCCL's
  // asynchronous error state; a collective pending for longer than watchdog_ms (a peer stuck outside the collective,
  // or gone) or an asynchronous error aborts the communicator and ends the process, naming the rank, the collective
  // and the phase (the main thread may be blocked in a copy that waits for the hung kernel, so it cannot report it).
  double watchdog_ms = 0;
  std::mutex mu;                     // guards pending, spare and phase
  std::deque<Pending> pending;       // in enqueue order (one stream: they complete in this order)
  std::vector<cudaEvent_t> spare;    // completed events, reused
  std::string phase = "startup";     // ncclSetPhase's label
  std::thread watchdog;
  std::atomic<bool> stop{false};
};

namespace {

struct Guard {  // makes the communicator's device current for the scope
  int prev = 0;
  explicit Guard(int device) {
    cudaGetDevice(&prev);
    if (prev != device) cudaSetDevice(device);
  }
  ~Guard() {
    int cur = 0;
    cudaGetDevice(&cur);
    if (cur != prev) cudaSetDevice(prev);
  }
};

std::string last_error(ncclComm_t comm) {
  const char* m = ncclGetLastError(comm);
  return (m && *m) ? std::string(" (") + m + ")" : std::string();
}

void check(ncclResult_t r, ncclComm_t comm, const std::string& what) {
  if (r != ncclSuccess && r != ncclInProgress)
    fail(what, ": NCCL error: ", ncclGetErrorString(r), last_error(comm));
}

ncclDataType_t nccl_type(DType t, const std::string& what) {
  switch (t) {
    case DType::BF16: return ncclBfloat16;
    case DType::F32: return ncclFloat32;
    case DType::I32: return ncclInt32;
    case DType::U8: return ncclUint8;
  }
  fail(what, ": unsupported dtype");
}

ncclRedOp_t nccl_op(Reduce op) {
  switch (op) {
    case Reduce::Sum: return ncclSum;
    case Reduce::Avg: return ncclAvg;
    case Reduce::Max: return ncclMax;
    case Reduce::Min: return ncclMin;
  }
  return ncclSum;
}

Comm* live(Comm* c, const std::string& what) {
  if (!c || !c->comm) fail(what, ": the NCCL communicator was destroyed");
  return c;
}

cudaStream_t stream_for(const Comm* c, bool on_comm = false) {
  return static_cast<cudaStream_t>(on_comm ? gptoss::cuda::comm_stream(c->device) : gptoss::cuda::stream(c->device));
}

// After a collective was enqueued: an event behind it on the stream, for the watchdog.
void track(Comm* c, const std::string& what) {
  if (c->watchdog_ms <= 0) return;
  std::lock_guard<std::mutex> lock(c->mu);
  cudaEvent_t ev = nullptr;
  if (!c->spare.empty()) {
    ev = c->spare.back();
    c->spare.pop_back();
  } else if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess) {
    fail(what, ": cudaEventCreate failed for the NCCL watchdog");
  }
  if (cudaEventRecord(ev, stream_for(c)) != cudaSuccess) {
    cudaEventDestroy(ev);
    fail(what, ": cudaEventRecord failed for the NCCL watchdog");
  }
  c->pending.push_back({ev, std::chrono::steady_clock::now(), what, c->phase});
}

[[noreturn]] void watchdog_fire(Comm* c, const std::string& why) {
  const char* global = std::getenv("RANK");
  std::fprintf(stderr,
               "error: NCCL watchdog: process rank %s (rank %d of this %d-rank communicator, cuda:%d): %s; aborting the "
               "communicator and exiting\n",
               global ? global : "?", c->rank, c->size, c->device, why.c_str());
  std::fflush(stderr);
  ncclCommAbort(c->comm);
  std::_Exit(124);
}

void watchdog_loop(Comm* c) {
  cudaSetDevice(c->device);
  const auto poll = std::chrono::milliseconds(c->watchdog_ms < 400 ? 10 : 100);
  while (!c->stop.load()) {
    std::this_thread::sleep_for(poll);
    std::string why;
    {
      std::lock_guard<std::mutex> lock(c->mu);
      while (!c->pending.empty()) {
        cudaError_t e = cudaEventQuery(c->pending.front().done);
        if (e == cudaErrorNotReady) break;
        c->spare.push_back(c->pending.front().done);
        c->pending.pop_front();
      }
      if (!c->pending.empty()) {
        const Pending& p = c->pending.front();
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - p.enqueued).count();
        if (ms > c->watchdog_ms) {
          char limit[32];
          std::snprintf(limit, sizeof(limit), "%.1f", c->watchdog_ms / 1000);
          why = p.what + " (phase '" + p.phase + "') has not completed " + std::to_string(static_cast<long>(ms / 1000)) +
                " s after it was enqueued (limit " + limit +
                " s, trainer.nccl_timeout_s): a peer rank is stuck outside the collective or gone";
        }
      }
    }
    if (why.empty()) {
      ncclResult_t async = ncclSuccess;
      if (ncclCommGetAsyncError(c->comm, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress) {
        std::lock_guard<std::mutex> lock(c->mu);
        why = std::string("NCCL asynchronous error in phase '") + c->phase + "': " + ncclGetErrorString(async) +
              last_error(c->comm);
      }
    }
    if (!why.empty()) watchdog_fire(c, why);
  }
}

// Stops the watchdog and frees its events (before the communicator goes).
void stop_watchdog(Comm* c) {
  if (c->watchdog.joinable()) {
    c->stop.store(true);
    c->watchdog.join();
  }
  std::lock_guard<std::mutex> lock(c->mu);
  for (Pending& p : c->pending) cudaEventDestroy(p.done);
  for (cudaEvent_t e : c->spare) cudaEventDestroy(e);
  c->pending.clear();
  c->spare.clear();
}

}  // namespace

std::string version() {
  int v = 0;
  ncclGetVersion(&v);
  // NCCL_VERSION(X,Y,Z) = X*10000 + Y*100 + Z since 2.9.
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

void unique_id(void* out) {
  ncclUniqueId id;
  check(ncclGetUniqueId(&id), nullptr, "ncclGetUniqueId");
  std::memcpy(out, &id, sizeof(id));
}

Comm* comm_init(const void* id_bytes, int nranks, int rank, int device, double watchdog_ms) {
  ncclUniqueId id;
  std::memcpy(&id, id_bytes, sizeof(id));
  Guard g(device);
  // The device's compute stream is created first, so the communicator's buffers land after it.
  (void)gptoss::cuda::stream(device);
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRank(&comm, nranks, id, rank);
  if (r != ncclSuccess)
    fail("ncclCommInitRank: rank ", rank, " of ", nranks, " on cuda:", device, ": NCCL error: ", ncclGetErrorString(r),
         last_error(comm));
  auto* c = new Comm();
  c->comm = comm;
  c->device = device;
  c->rank = rank;
  c->size = nranks;
  c->watchdog_ms = watchdog_ms;
  if (watchdog_ms > 0) c->watchdog = std::thread(watchdog_loop, c);
  return c;
}

void set_phase(Comm* c, const std::string& phase) {
  std::lock_guard<std::mutex> lock(c->mu);
  c->phase = phase;
}

void comm_destroy(Comm* c) {
  if (!c || !c->comm) return;
  Guard g(c->device);
  cudaStreamSynchronize(stream_for(c));
  stop_watchdog(c);
  ncclComm_t comm = c->comm;
  c->comm = nullptr;
  ncclResult_t r = ncclCommFinalize(comm);
  if (r != ncclSuccess) {
    ncclCommAbort(comm);
    fail("ncclCommDestroy: NCCL error: ", ncclGetErrorString(r));
  }
  check(ncclCommDestroy(comm), nullptr, "ncclCommDestroy");
}

void comm_abort(Comm* c) {
  if (!c || !c->comm) return;
  Guard g(c->device);
  stop_watchdog(c);
  ncclComm_t comm = c->comm;
  c->comm = nullptr;
  ncclCommAbort(comm);
}

void comm_free(Comm* c) {
  if (!c) return;
  comm_abort(c);
  delete c;
}

bool comm_live(const Comm* c) { return c && c->comm; }
int comm_device(const Comm* c) { return c->device; }
int comm_rank(const Comm* c) { return c->rank; }
int comm_size(const Comm* c) { return c->size; }

void check_async(Comm* c, const std::string& what) {
  live(c, what);
  ncclResult_t async = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(c->comm, &async);
  if (r != ncclSuccess) fail(what, ": ncclCommGetAsyncError failed: ", ncclGetErrorString(r));
  if (async != ncclSuccess && async != ncclInProgress)
    fail(what, ": NCCL asynchronous error on rank ", c->rank, ": ", ncclGetErrorString(async), last_error(c->comm));
}

void all_reduce(Comm* c, const Tensor& send, const Tensor& recv, Reduce op, const std::string& what) {
  live(c, what);
  Guard g(c->device);
  check(ncclAllReduce(send.raw(), recv.raw(), static_cast<size_t>(recv.numel()), nccl_type(recv.dtype, what), nccl_op(op),
                      c->comm, stream_for(c)),
        c->comm, what);
  track(c, what);
  check_async(c, what);
}

void all_gather(Comm* c, const Tensor& send, const Tensor& recv, const std::string& what, bool on_comm) {
  live(c, what);
  Guard g(c->device);
  check(ncclAllGather(send.raw(), recv.raw(), static_cast<size_t>(send.numel()), nccl_type(send.dtype, what), c->comm,
                      stream_for(c, on_comm)),
        c->comm, what);
  track(c, what);
  check_async(c, what);
}

void reduce_scatter(Comm* c, const Tensor& send, const Tensor& recv, Reduce op, const std::string& what,
                    bool on_comm) {
  live(c, what);
  Guard g(c->device);
  check(ncclReduceScatter(send.raw(), recv.raw(), static_cast<size_t>(recv.numel()), nccl_type(recv.dtype, what),
                          nccl_op(op), c->comm, stream_for(c, on_comm)),
        c->comm, what);
  track(c, what);
  check_async(c, what);
}

void broadcast(Comm* c, const Tensor& send, const Tensor& recv, int root, const std::string& what) {
  live(c, what);
  Guard g(c->device);
  check(ncclBroadcast(send.raw(), recv.raw(), static_cast<size_t>(recv.numel()), nccl_type(recv.dtype, what), root,
                      c->comm, stream_for(c)),
        c->comm, what);
  track(c, what);
  check_async(c, what);
}

void send_recv(Comm* c, const std::vector<P2P>& ops, const std::string& what) {
  live(c, what);
  Guard g(c->device);
  cudaStream_t s = stream_for(c);
  check(ncclGroupStart(), c->comm, what);
  ncclResult_t first_error = ncclSuccess;
  for (const P2P& p : ops) {
    size_t n = static_cast<size_t>(p.tensor.numel());
    ncclDataType_t t = nccl_type(p.tensor.dtype, what);
    ncclResult_t r = p.is_send ? ncclSend(p.tensor.raw(), n, t, p.peer, c->comm, s)
                               : ncclRecv(p.tensor.raw(), n, t, p.peer, c->comm, s);
    if (r != ncclSuccess && first_error == ncclSuccess) first_error = r;
  }
  ncclResult_t end = ncclGroupEnd();  // always close the group, even after an error
  check(first_error, c->comm, what);
  check(end, c->comm, what);
  track(c, what);
  check_async(c, what);
}

void synchronize(Comm* c, double timeout_ms, const std::string& what) {
  live(c, what);
  Guard g(c->device);
  // Both streams collectives may run on: the compute stream and the communication stream (on_comm).
  cudaEvent_t ev[2] = {nullptr, nullptr};
  auto destroy = [&]() {
    for (cudaEvent_t e : ev)
      if (e) cudaEventDestroy(e);
  };
  for (int k = 0; k < 2; k++) {
    cudaError_t e = cudaEventCreateWithFlags(&ev[k], cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventRecord(ev[k], stream_for(c, k == 1));
    if (e != cudaSuccess) {
      destroy();
      fail(what, ": CUDA error ", cudaGetErrorString(e));
    }
  }
  auto start = std::chrono::steady_clock::now();
  int spins = 0;
  for (int k = 0; k < 2;) {
    cudaError_t e = cudaEventQuery(ev[k]);
    if (e == cudaSuccess) {
      k++;
      continue;
    }
    if (e != cudaErrorNotReady) {
      destroy();
      fail(what, ": CUDA error ", cudaGetErrorString(e));
    }
    try {
      check_async(c, what);
    } catch (...) {
      destroy();
      throw;
    }
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (timeout_ms > 0 && ms > timeout_ms) {
      destroy();
      fail(what, ": timed out after ", timeout_ms, " ms waiting for NCCL work on cuda:", c->device, " (rank ", c->rank,
           " of ", c->size, "; a peer may have failed or not joined)");
    }
    if (++spins > 100) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  destroy();
}

}  // namespace gptoss::cuda::nccl
