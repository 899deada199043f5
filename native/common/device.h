// device.h: the CUDA runtime as seen by code that must not include CUDA headers (the CPU backend, the
// bindings). Implemented by native/cuda/runtime.cu, or by native/common/device_stub.cc in a CPU-only build,
// where every call but compiled()/device_count() throws "built without CUDA".
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace gptoss::cuda {

bool compiled();      // true when the addon was built with the CUDA backend
int device_count();   // 0 when not compiled or no GPU is visible
std::string device_name(int device);

// Caching allocator: blocks are rounded up and kept for reuse after free (stream-ordered: one compute stream
// per device, so a freed block may be reused by the next op on that stream at once).
void* alloc(int device, size_t bytes);
void release(int device, void* ptr, size_t bytes);
struct MemoryStats {
  uint64_t allocated = 0;       // bytes in live tensors (rounded sizes)
  uint64_t reserved = 0;        // bytes obtained from cudaMalloc (live + cached)
  uint64_t peak_allocated = 0;  // high-water mark of allocated since the last reset
  uint64_t num_allocs = 0;      // alloc() calls
  uint64_t num_cuda_mallocs = 0;
  uint64_t num_partial_releases = 0;  // cudaMalloc out of memory: cached blocks freed for that request (a device sync)
  uint64_t num_cache_flushes = 0;     // ... and still out of memory: every cached block freed and retried
};
MemoryStats memory_stats(int device);
void reset_peak(int device);
void empty_cache(int device);  // return cached blocks to the driver

// Copies between any two places (device -1 = host). Device-side copies are enqueued on the destination's (or
// source's) stream; a copy to the host waits for the stream.
void copy(void* dst, int dst_device, const void* src, int src_device, size_t bytes);
void zero(int device, void* ptr, size_t bytes);
void synchronize(int device);
void* stream(int device);  // cudaStream_t of the device's compute stream
// The device's communication stream (cudaStream_t), created on first use: collectives issued on it run beside the
// compute stream. Work on it is ordered against compute only through events (event_record / event_wait with
// kCommStream); a buffer it reads or writes must not be freed until the compute stream has waited for it.
void* comm_stream(int device);

// Page-locked host memory (cudaHostAlloc): copies between it and a device run asynchronously. nullptr when the
// build has no CUDA backend or no device is visible (the caller then uses ordinary host memory, which is all a
// CPU-only process needs).
void* host_alloc_pinned(size_t bytes);
void host_free_pinned(void* ptr);
// An asynchronous copy on the device's compute stream between pinned host memory and a device (or device to
// device): returns at once. The host side must not be read or reused until an event recorded after it has
// completed (event_synchronize) or the device is synchronized.
void copy_async(void* dst, int dst_device, const void* src, int src_device, size_t bytes);

// Events for ordering work across devices/streams and for timing. `which` names the device's stream:
constexpr int kComputeStream = 0;
constexpr int kCommStream = 1;
void* event_create(int device, bool timing);
void event_destroy(void* ev);
void event_record(void* ev, int device, int which = kComputeStream);  // ev completes after that stream's work so far
void event_wait(void* ev, int device, int which = kComputeStream);    // that stream waits for ev
void event_synchronize(void* ev);
bool event_query(void* ev);
float event_elapsed_ms(void* start, void* end);

// Kernel launches enqueued by this process on any device (every launch check of our kernels, cuBLAS calls,
// asynchronous copies and memsets): a count per step tells how many launches a step costs (bench:decode-profile).
void note_launch();
uint64_t launch_count();
// cuBLASLt algorithm tunings so far (gemm_cublas.cc: the first batched GEMM of a problem times the heuristic's
// candidates, a few dozen GEMM runs and device waits): a step that tunes is slower than its steady state, so the
// benchmarks report how many tunings each measured step ran (bench:train-step).
void note_gemm_tune();
uint64_t gemm_tune_count();

// Batch-invariant kernels (ops.setBatchInvariant; config trainer.batch_invariant). While on, every forward op a
// decoder layer runs computes each token's row with the same arithmetic in the same order whatever else is in the
// batch: a decode step of 1 or 512 sequences, a prefill chunk and a packed training batch give a token the same
// bits through the last hidden state, so the engine's log-probs are the trainer's (true on-policy GRPO). The
// CUDA dispatchers then take size-independent kernels: bf16 linears go to our mma.sync tiles (invariant_linear.cu:
// no split-K, one k order at every tile shape) instead of cuBLAS and the small-M GEMV, the MoE to the grouped
// kernels at every size (no decode kernels, no fused router, no cuBLAS slabs), attention to the paged kernel with
// key steps aligned to multiples of 64 positions and no key splits (the training forward too, over its packed
// k/v). Process-wide: the trainer and the engines of a process share it. The CPU kernels are invariant already
// (one loop order per row); the flag only reads back there.
void set_batch_invariant(bool on);
bool batch_invariant();

// Device-side phase marks (bench:decode-profile). While enabled on a device, profile_mark(device, name) records a
// timing event on its compute stream that starts a segment called `name` (until the next mark); ops mark their own
// phases inside one call (moeForward: router, experts, combine), the caller marks the rest. profile_take waits for
// the last mark and returns the segments in order with their GPU milliseconds (the last mark only ends a segment),
// and clears them. Marks are skipped while the stream is being captured into a CUDA graph. No-ops when disabled.
struct ProfileSegment {
  std::string name;
  float ms;
};
void profile_enable(int device, bool on);
void profile_mark(int device, const char* name);
std::vector<ProfileSegment> profile_take(int device);

// CUDA graphs of a device's compute stream (the engine's decode steps with enforceEager false, LocalModelRunner).
// graph_pool_create: a private memory pool of the caching allocator (an id > 0). capture_begin: starts capturing the
// compute stream (thread-local mode: an unsafe call from this thread fails the capture); until capture_end, alloc()
// on the device takes blocks from the pool (cudaMalloc'd into it when none fits), and a block of the pool goes
// back to the pool whenever it is freed (during capture or after), so a graph's addresses stay the graph's and
// replays reuse them. Several graphs may share one pool when they never run concurrently (one stream). A host
// read or synchronisation during capture fails there (the copy's or synchronize's CUDA error) and capture_abort
// ends the capture. capture_end instantiates the graph: a handle (> 0) for graph_launch (enqueues one replay on the
// compute stream), graph_node_count (its kernels, copies and memsets) and graph_destroy. graph_pool_release (after
// destroying its graphs): the pool's free blocks join the ordinary cache, and its live blocks do when freed.
int graph_pool_create(int device);
void graph_pool_release(int device, int pool);
void capture_begin(int device, int pool);
int64_t capture_end(int device);
void capture_abort(int device);
bool capturing(int device);
void graph_launch(int64_t graph, int device);
int64_t graph_node_count(int64_t graph);
void graph_destroy(int64_t graph);

}  // namespace gptoss::cuda

namespace gptoss {
// The host's counterpart of memory_stats/reset_peak (native/common/tensor.cc): bytes of live host tensors, their
// high-water mark since the last reset, allocation count; reserved = allocated (nothing is cached on the host).
cuda::MemoryStats host_memory_stats();
void host_reset_peak();
}  // namespace gptoss
