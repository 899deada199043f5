// runtime.cu: devices, the caching allocator, one compute stream per device, copies and events.
#include <atomic>
#include <map>
#include <string>
#include <unordered_map>
#include <mutex>
#include <vector>

#include "common.cuh"

namespace gptoss::cuda {

namespace {

// Blocks are rounded so that freed memory is reusable: 512 B granules below 1 MiB, 2 MiB above.
size_t round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes < (1u << 20)) return (bytes + 511) & ~size_t(511);
  const size_t g = size_t(2) << 20;
  return (bytes + g - 1) / g * g;
}

// A private pool (graph_pool_create): blocks cudaMalloc'd while capturing into it, kept for its graphs.
struct Pool {
  std::multimap<size_t, void*> free_blocks;  // rounded size -> block, free for the pool's next capture
};

struct DeviceState {
  std::mutex mu;
  std::map<int, Pool> pools;                    // live private pools by id
  std::unordered_map<void*, int> block_pool;    // block -> the pool it belongs to (blocks made during a capture)
  int next_pool = 1;
  int capture_pool = 0;                          // the pool alloc() serves from while capturing (0: none)
  bool profiling = false;
  std::vector<std::pair<std::string, cudaEvent_t>> marks;  // profile_mark's events, in order
  cudaStream_t stream = nullptr;
  cudaStream_t comm = nullptr;  // communication stream (comm_stream), created on first use
  std::multimap<size_t, void*> free_blocks;  // rounded size -> block
  std::unordered_map<void*, size_t> block_size;  // live block -> its real (possibly larger cached) size
  MemoryStats stats;
};

std::vector<DeviceState*>& states() {
  static std::vector<DeviceState*> s;
  return s;
}
std::mutex g_mu;

DeviceState& state(int device) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto& s = states();
  if (s.empty()) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
    for (int i = 0; i < n; i++) s.push_back(new DeviceState());
  }
  if (device < 0 || device >= static_cast<int>(s.size()))
    fail("cuda:", device, " does not exist (", s.size(), " CUDA device(s) visible)");
  DeviceState& st = *s[device];
  if (!st.stream) {
    DeviceGuard g(device);
    GPTOSS_CUDA_CHECK(cudaStreamCreateWithFlags(&st.stream, cudaStreamNonBlocking), "stream create");
  }
  return st;
}

void free_cached(DeviceState& st, int device) {
  DeviceGuard g(device);
  cudaStreamSynchronize(st.stream);
  if (st.comm) cudaStreamSynchronize(st.comm);
  for (auto& kv : st.free_blocks) {
    cudaFree(kv.second);
    st.stats.reserved -= kv.first;
  }
  st.free_blocks.clear();
}

// Frees cached (ordinary, not graph-pool) blocks for a request of `size` bytes that cudaMalloc refused: the
// smallest cached block of at least `size`, else the largest ones until they add up to `size`. cudaFree waits for
// the device, so the streams are synchronised first (as in free_cached).
void release_for(DeviceState& st, int device, size_t size) {
  DeviceGuard g(device);
  cudaStreamSynchronize(st.stream);
  if (st.comm) cudaStreamSynchronize(st.comm);
  auto give_back = [&](std::multimap<size_t, void*>::iterator it) {
    cudaFree(it->second);
    st.stats.reserved -= it->first;
    return st.free_blocks.erase(it);
  };
  auto fit = st.free_blocks.lower_bound(size);
  if (fit != st.free_blocks.end()) {
    give_back(fit);
    st.stats.num_partial_releases++;
    return;
  }
  size_t freed = 0;
  while (freed < size && !st.free_blocks.empty()) {
    auto last = std::prev(st.free_blocks.end());
    freed += last->first;
    give_back(last);
  }
  st.stats.num_partial_releases++;
}

}  // namespace

bool compiled() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp p;
  GPTOSS_CUDA_CHECK(cudaGetDeviceProperties(&p, device), "device_name");
  return p.name;
}

void* alloc(int device, size_t bytes) {
  DeviceState& st = state(device);
  size_t size = round_size(bytes);
  std::lock_guard<std::mutex> lock(st.mu);
  st.stats.num_allocs++;
  void* p = nullptr;
  // While capturing a graph, blocks come from (and belong to) its private pool only: a block the graph's kernels
  // write must not be handed to anything outside the graph between replays.
  const int pool = st.capture_pool;
  std::multimap<size_t, void*>& cache = pool ? st.pools[pool].free_blocks : st.free_blocks;
  // Best fit among cached blocks of the same granule class, but never more than 2x the request (so one
  // huge cached block does not serve a tiny request).
  auto it = cache.lower_bound(size);
  if (it != cache.end() && it->first <= size * 2) {
    p = it->second;
    size = it->first;
    cache.erase(it);
  } else {
    DeviceGuard g(device);
    // cudaMalloc counts as a potentially unsafe call during a capture (thread-local mode refuses it): it is not a
    // stream operation of the graph, so relax this thread's capture mode around it (the memory stays the pool's).
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    if (pool) cudaThreadExchangeStreamCaptureMode(&mode);
    cudaError_t err = cudaMalloc(&p, size);
    if (pool) cudaThreadExchangeStreamCaptureMode(&mode);
    if (err != cudaSuccess && pool) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("out of memory on cuda:", device, " allocating ", bytes, " bytes while capturing a CUDA graph (the cache ",
           "cannot be emptied during a capture; allocated ", st.stats.allocated, ", reserved ", st.stats.reserved,
           ", free on device ", free_b, " of ", total_b, ")");
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      // Out of memory. Freeing the whole cache would make every later request a fresh cudaMalloc until it refills
      // (a training step whose peak sits near the card's memory then flushes and refills it every step): give the
      // driver back only what this request needs: the smallest cached block at least as large, else cached blocks
      // from the largest down until their sum covers it; the whole cache only if that still fails.
      release_for(st, device, size);
      err = cudaMalloc(&p, size);
      if (err != cudaSuccess) {
        cudaGetLastError();
        free_cached(st, device);
        st.stats.num_cache_flushes++;
        err = cudaMalloc(&p, size);
      }
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("out of memory on cuda:", device, " allocating ", bytes, " bytes (allocated ", st.stats.allocated,
           ", reserved ", st.stats.reserved, ", free on device ", free_b, " of ", total_b, ")");
    }
    st.stats.reserved += size;
    st.stats.num_cuda_mallocs++;
  }
  st.stats.allocated += size;
  if (st.stats.allocated > st.stats.peak_allocated) st.stats.peak_allocated = st.stats.allocated;
  // Remember the block's real size (a cached block may be up to 2x the request) so release() returns it to the
  // right bucket; keying it by the request would shrink the block in the cache and force fresh cudaMallocs.
  st.block_size[p] = size;
  if (pool) st.block_pool[p] = pool;
  return p;
}

void release(int device, void* ptr, size_t bytes) {
  if (!ptr) return;
  DeviceState& st = state(device);
  size_t size = round_size(bytes);
  std::lock_guard<std::mutex> lock(st.mu);
  auto it = st.block_size.find(ptr);
  if (it != st.block_size.end()) {
    size = it->second;
    st.block_size.erase(it);
  }
  // A private pool's block goes back to its pool while the pool lives (its graphs may still replay into it).
  auto bp = st.block_pool.find(ptr);
  auto pool = bp == st.block_pool.end() ? st.pools.end() : st.pools.find(bp->second);
  if (bp != st.block_pool.end()) st.block_pool.erase(bp);
  // An ordinary block freed during a capture may still be read by the graph being captured: it joins that graph's
  // pool instead of the ordinary cache, so no later op outside the graph takes it.
  if (pool == st.pools.end() && st.capture_pool) pool = st.pools.find(st.capture_pool);
  if (pool != st.pools.end()) {
    st.block_pool[ptr] = pool->first;
    pool->second.free_blocks.emplace(size, ptr);
  } else {
    st.free_blocks.emplace(size, ptr);
  }
  st.stats.allocated -= size;
}

MemoryStats memory_stats(int device) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mu);
  return st.stats;
}

void reset_peak(int device) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mu);
  st.stats.peak_allocated = st.stats.allocated;
}

void empty_cache(int device) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mu);
  free_cached(st, device);
}

void* stream(int device) { return state(device).stream; }

void* comm_stream(int device) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mu);
  if (!st.comm) {
    DeviceGuard g(device);
    // The highest priority: a gather or reduce-scatter is short and the compute stream waits for it, so its
    // blocks should not queue behind a long compute kernel's.
    int least = 0, greatest = 0;
    GPTOSS_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest), "comm stream");
    GPTOSS_CUDA_CHECK(cudaStreamCreateWithPriority(&st.comm, cudaStreamNonBlocking, greatest), "comm stream create");
  }
  return st.comm;
}

static cudaStream_t stream_named(int device, int which) {
  if (which == kCommStream) return static_cast<cudaStream_t>(comm_stream(device));
  if (which != kComputeStream) fail("stream ", which, " of cuda:", device, " does not exist (0 compute, 1 comm)");
  return state(device).stream;
}

void* host_alloc_pinned(size_t bytes) {
  if (device_count() == 0) return nullptr;
  void* p = nullptr;
  cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable);
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail("out of pinned host memory allocating ", bytes, " bytes (cudaHostAlloc: ", cudaGetErrorString(e), ")");
  }
  return p;
}

void host_free_pinned(void* ptr) {
  if (ptr) cudaFreeHost(ptr);  // waits for the device's work on it
}

void copy_async(void* dst, int dst_device, const void* src, int src_device, size_t bytes) {
  if (bytes == 0) return;
  const int dev = dst_device >= 0 ? dst_device : src_device;
  if (dev < 0) fail("copy_async: both sides are host memory (copy them directly)");
  if (dst_device >= 0 && src_device >= 0 && dst_device != src_device) {
    copy(dst, dst_device, src, src_device, bytes);  // peer copies are already stream-ordered and asynchronous
    return;
  }
  DeviceState& d = state(dev);
  DeviceGuard g(dev);
  const cudaMemcpyKind kind = dst_device < 0 ? cudaMemcpyDeviceToHost
                              : src_device < 0 ? cudaMemcpyHostToDevice
                                               : cudaMemcpyDeviceToDevice;
  GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, d.stream), "copy_async");
  note_launch();
}

void copy(void* dst, int dst_device, const void* src, int src_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device >= 0 && src_device >= 0) {
    DeviceState& d = state(dst_device);
    if (dst_device != src_device) {
      // Order: the source's pending work must finish before the peer copy on the destination stream.
      DeviceState& s = state(src_device);
      cudaEvent_t ev;
      {
        DeviceGuard g(src_device);
        GPTOSS_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "copy");
        GPTOSS_CUDA_CHECK(cudaEventRecord(ev, s.stream), "copy");
      }
      DeviceGuard g(dst_device);
      GPTOSS_CUDA_CHECK(cudaStreamWaitEvent(d.stream, ev, 0), "copy");
      GPTOSS_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, d.stream), "copy d2d peer");
      cudaEventDestroy(ev);
    } else {
      DeviceGuard g(dst_device);
      GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, d.stream), "copy d2d");
      note_launch();
    }
  } else if (dst_device >= 0) {
    DeviceState& d = state(dst_device);
    DeviceGuard g(dst_device);
    GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, d.stream), "copy h2d");
    note_launch();
    // The host buffer belongs to JS and may move or be collected once we return.
    GPTOSS_CUDA_CHECK(cudaStreamSynchronize(d.stream), "copy h2d");
  } else if (src_device >= 0) {
    DeviceState& s = state(src_device);
    DeviceGuard g(src_device);
    GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s.stream), "copy d2h");
    note_launch();
    GPTOSS_CUDA_CHECK(cudaStreamSynchronize(s.stream), "copy d2h");
  }
}

void zero(int device, void* ptr, size_t bytes) {
  DeviceState& d = state(device);
  DeviceGuard g(device);
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, d.stream), "zero");
  note_launch();
}

void synchronize(int device) {
  DeviceState& d = state(device);
  DeviceGuard g(device);
  GPTOSS_CUDA_CHECK(cudaStreamSynchronize(d.stream), "synchronize");
  cudaStream_t comm;
  {
    std::lock_guard<std::mutex> lock(d.mu);
    comm = d.comm;
  }
  if (comm) GPTOSS_CUDA_CHECK(cudaStreamSynchronize(comm), "synchronize (comm stream)");
}

void* event_create(int device, bool timing) {
  DeviceGuard g(device);
  cudaEvent_t ev;
  GPTOSS_CUDA_CHECK(cudaEventCreateWithFlags(&ev, timing ? cudaEventDefault : cudaEventDisableTiming),
                    "event_create");
  return ev;
}
void event_destroy(void* ev) {
  if (ev) cudaEventDestroy(static_cast<cudaEvent_t>(ev));
}
void event_record(void* ev, int device, int which) {
  DeviceGuard g(device);
  GPTOSS_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(ev), stream_named(device, which)), "event_record");
}
void event_wait(void* ev, int device, int which) {
  DeviceGuard g(device);
  GPTOSS_CUDA_CHECK(cudaStreamWaitEvent(stream_named(device, which), static_cast<cudaEvent_t>(ev), 0), "event_wait");
}
void event_synchronize(void* ev) {
  GPTOSS_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(ev)), "event_synchronize");
}
bool event_query(void* ev) {
  cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(ev));
  if (e == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  GPTOSS_CUDA_CHECK(e, "event_query");
  return true;
}
float event_elapsed_ms(void* start, void* end) {
  float ms = 0;
  GPTOSS_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)),
                    "event_elapsed_ms");
  return ms;
}

// ---- launch counter and profile marks ---------------------------------------------------------------------------

namespace {
std::atomic<uint64_t> g_launches{0};
std::atomic<uint64_t> g_gemm_tunes{0};

bool stream_capturing(cudaStream_t s) {
  cudaStreamCaptureStatus c = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(s, &c) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return c != cudaStreamCaptureStatusNone;
}

void destroy_marks(DeviceState& st) {
  for (auto& m : st.marks) cudaEventDestroy(m.second);
  st.marks.clear();
}
}  // namespace

void note_launch() { g_launches.fetch_add(1, std::memory_order_relaxed); }
uint64_t launch_count() { return g_launches.load(std::memory_order_relaxed); }
void note_gemm_tune() { g_gemm_tunes.fetch_add(1, std::memory_order_relaxed); }
uint64_t gemm_tune_count() { return g_gemm_tunes.load(std::memory_order_relaxed); }

namespace {
std::atomic<bool> g_batch_invariant{false};
}  // namespace
void set_batch_invariant(bool on) { g_batch_invariant.store(on, std::memory_order_relaxed); }
bool batch_invariant() { return g_batch_invariant.load(std::memory_order_relaxed); }

void profile_enable(int device, bool on) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mu);
  DeviceGuard g(device);
  cudaStreamSynchronize(st.stream);
  destroy_marks(st);
  st.profiling = on;
}

void profile_mark(int device, const char* name) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mu);
  if (!st.profiling || stream_capturing(st.stream)) return;
  DeviceGuard g(device);
  cudaEvent_t ev;
  GPTOSS_CUDA_CHECK(cudaEventCreate(&ev), "profile_mark");
  GPTOSS_CUDA_CHECK(cudaEventRecord(ev, st.stream), "profile_mark");
  st.marks.emplace_back(name, ev);
}

std::vector<ProfileSegment> profile_take(int device) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mu);
  std::vector<ProfileSegment> out;
  if (st.marks.empty()) return out;
  GPTOSS_CUDA_CHECK(cudaEventSynchronize(st.marks.back().second), "profile_take");
  for (size_t i = 0; i + 1 < st.marks.size(); i++) {
    float ms = 0.f;
    GPTOSS_CUDA_CHECK(cudaEventElapsedTime(&ms, st.marks[i].second, st.marks[i + 1].second), "profile_take");
    out.push_back({st.marks[i].first, ms});
  }
  destroy_marks(st);
  return out;
}

// ---- CUDA graphs ------------------------------------------------------------------------------------------------

namespace {
struct GraphEntry {
  cudaGraphExec_t exec;
  size_t nodes;
};
std::mutex g_graph_mu;
std::map<int64_t, GraphEntry> g_graphs;
int64_t g_next_graph = 1;
}  // namespace

int graph_pool_create(int device) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mu);
  const int id = st.next_pool++;
  st.pools[id];
  return id;
}

void graph_pool_release(int device, int pool) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mu);
  auto it = st.pools.find(pool);
  if (it == st.pools.end()) return;
  if (st.capture_pool == pool) fail("graph_pool_release: cuda:", device, " is capturing into pool ", pool);
  // Replays enqueued before may still use the pool's blocks: the ordinary cache hands them out stream-ordered,
  // like any freed block, so no wait is needed.
  for (auto& kv : it->second.free_blocks) {
    st.block_pool.erase(kv.second);
    st.free_blocks.emplace(kv.first, kv.second);
  }
  st.pools.erase(it);  // live blocks still tagged with it go to the ordinary cache when freed (release)
}

void capture_begin(int device, int pool) {
  DeviceState& st = state(device);
  {
    std::lock_guard<std::mutex> lock(st.mu);
    if (st.capture_pool) fail("capture_begin: cuda:", device, " is already capturing (pool ", st.capture_pool, ")");
    if (!st.pools.count(pool)) fail("capture_begin: cuda:", device, " has no graph pool ", pool);
    st.capture_pool = pool;
  }
  DeviceGuard g(device);
  cudaError_t e = cudaStreamBeginCapture(st.stream, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess) {
    cudaGetLastError();
    std::lock_guard<std::mutex> lock(st.mu);
    st.capture_pool = 0;
    fail("capture_begin: cuda:", device, ": cudaStreamBeginCapture: ", cudaGetErrorString(e));
  }
}

bool capturing(int device) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mu);
  return st.capture_pool != 0;
}

// Ends the capture on the stream (whatever its state) and returns the graph (null when the capture was invalidated).
static cudaGraph_t end_capture(DeviceState& st, int device, cudaError_t* err) {
  {
    std::lock_guard<std::mutex> lock(st.mu);
    st.capture_pool = 0;
  }
  DeviceGuard g(device);
  cudaGraph_t graph = nullptr;
  *err = cudaStreamEndCapture(st.stream, &graph);
  if (*err != cudaSuccess) cudaGetLastError();
  return graph;
}

int64_t capture_end(int device) {
  DeviceState& st = state(device);
  if (!capturing(device)) fail("capture_end: cuda:", device, " is not capturing");
  cudaError_t e;
  cudaGraph_t graph = end_capture(st, device, &e);
  if (e != cudaSuccess || !graph) {
    if (graph) cudaGraphDestroy(graph);
    fail("capture_end: cuda:", device, ": the capture failed (", cudaGetErrorString(e),
         "): an op synchronised or read the device during capture");
  }
  size_t nodes = 0;
  cudaGraphGetNodes(graph, nullptr, &nodes);
  cudaGraphExec_t exec = nullptr;
  DeviceGuard g(device);
  e = cudaGraphInstantiateWithFlags(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail("capture_end: cuda:", device, ": cudaGraphInstantiate: ", cudaGetErrorString(e));
  }
  std::lock_guard<std::mutex> lock(g_graph_mu);
  const int64_t id = g_next_graph++;
  g_graphs[id] = {exec, nodes};
  return id;
}

void capture_abort(int device) {
  DeviceState& st = state(device);
  if (!capturing(device)) return;
  cudaError_t e;
  cudaGraph_t graph = end_capture(st, device, &e);
  if (graph) cudaGraphDestroy(graph);
}

static GraphEntry graph_entry(int64_t graph, const char* op) {
  std::lock_guard<std::mutex> lock(g_graph_mu);
  auto it = g_graphs.find(graph);
  if (it == g_graphs.end()) fail(op, ": no CUDA graph ", graph, " (destroyed?)");
  return it->second;
}

void graph_launch(int64_t graph, int device) {
  const GraphEntry e = graph_entry(graph, "graph_launch");
  DeviceState& st = state(device);
  DeviceGuard g(device);
  GPTOSS_CUDA_CHECK(cudaGraphLaunch(e.exec, st.stream), "graph_launch");
  note_launch();
}

int64_t graph_node_count(int64_t graph) { return static_cast<int64_t>(graph_entry(graph, "graph_node_count").nodes); }

void graph_destroy(int64_t graph) {
  cudaGraphExec_t exec = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_graph_mu);
    auto it = g_graphs.find(graph);
    if (it == g_graphs.end()) return;
    exec = it->second.exec;
    g_graphs.erase(it);
  }
  cudaGraphExecDestroy(exec);  // a replay in flight completes first (the driver defers the release)
}

}  // namespace gptoss::cuda
