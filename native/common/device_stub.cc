// device_stub.cc: the CUDA runtime API of device.h for a CPU-only build.
#include "device.h"
#include "error.h"

namespace gptoss::cuda {

[[noreturn]] static void no_cuda(const char* what) {
  fail(what, ": this addon was built without the CUDA backend (rebuild with nvcc, cuBLAS and NCCL present, "
             "or GPTOSS_CUDA=on)");
}

bool compiled() { return false; }
int device_count() { return 0; }
std::string device_name(int) { no_cuda("device_name"); }
void* alloc(int, size_t) { no_cuda("alloc"); }
void release(int, void*, size_t) {}
MemoryStats memory_stats(int) { no_cuda("memory_stats"); }
void reset_peak(int) { no_cuda("reset_peak"); }
void empty_cache(int) {}
void copy(void*, int, const void*, int, size_t) { no_cuda("copy"); }
void zero(int, void*, size_t) { no_cuda("zero"); }
void synchronize(int) { no_cuda("synchronize"); }
void* stream(int) { no_cuda("stream"); }
void* comm_stream(int) { no_cuda("comm_stream"); }
void* host_alloc_pinned(size_t) { return nullptr; }  // ordinary host memory (nothing to pin for)
void host_free_pinned(void*) {}
void copy_async(void*, int, const void*, int, size_t) { no_cuda("copy_async"); }
void* event_create(int, bool) { no_cuda("event_create"); }
void event_destroy(void*) {}
void event_record(void*, int, int) { no_cuda("event_record"); }
void event_wait(void*, int, int) { no_cuda("event_wait"); }
void event_synchronize(void*) { no_cuda("event_synchronize"); }
bool event_query(void*) { no_cuda("event_query"); }
float event_elapsed_ms(void*, void*) { no_cuda("event_elapsed_ms"); }
void note_launch() {}
uint64_t launch_count() { return 0; }
void note_gemm_tune() {}
uint64_t gemm_tune_count() { return 0; }
namespace {
bool g_batch_invariant = false;  // the CPU kernels are batch-invariant either way (device.h)
}  // namespace
void set_batch_invariant(bool on) { g_batch_invariant = on; }
bool batch_invariant() { return g_batch_invariant; }
void profile_enable(int, bool) { no_cuda("profile_enable"); }
void profile_mark(int, const char*) {}
std::vector<ProfileSegment> profile_take(int) { no_cuda("profile_take"); }
int graph_pool_create(int) { no_cuda("graph_pool_create"); }
void graph_pool_release(int, int) {}
void capture_begin(int, int) { no_cuda("capture_begin"); }
int64_t capture_end(int) { no_cuda("capture_end"); }
void capture_abort(int) {}
bool capturing(int) { return false; }
void graph_launch(int64_t, int) { no_cuda("graph_launch"); }
int64_t graph_node_count(int64_t) { no_cuda("graph_node_count"); }
void graph_destroy(int64_t) {}

}  // namespace gptoss::cuda
