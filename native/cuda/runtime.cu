// runtime.cu: devices, the caching allocator, one compute stream per device, copies and events.
#include <map>
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

struct DeviceState {
  std::mutex mu;
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
  // Best fit among cached blocks of the same granule class, but never more than 2x the request (so one
  // huge cached block does not serve a tiny request).
  auto it = st.free_blocks.lower_bound(size);
  if (it != st.free_blocks.end() && it->first <= size * 2) {
    p = it->second;
    size = it->first;
    st.free_blocks.erase(it);
  } else {
    DeviceGuard g(device);
    cudaError_t err = cudaMalloc(&p, size);
    if (err != cudaSuccess) {
      cudaGetLastError();
      free_cached(st, device);
      err = cudaMalloc(&p, size);
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
  st.free_blocks.emplace(size, ptr);
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
    }
  } else if (dst_device >= 0) {
    DeviceState& d = state(dst_device);
    DeviceGuard g(dst_device);
    GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, d.stream), "copy h2d");
    // The host buffer belongs to JS and may move or be collected once we return.
    GPTOSS_CUDA_CHECK(cudaStreamSynchronize(d.stream), "copy h2d");
  } else if (src_device >= 0) {
    DeviceState& s = state(src_device);
    DeviceGuard g(src_device);
    GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s.stream), "copy d2h");
    GPTOSS_CUDA_CHECK(cudaStreamSynchronize(s.stream), "copy d2h");
  }
}

void zero(int device, void* ptr, size_t bytes) {
  DeviceState& d = state(device);
  DeviceGuard g(device);
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, d.stream), "zero");
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

}  // namespace gptoss::cuda
