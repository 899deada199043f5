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

}  // namespace gptoss::cuda
