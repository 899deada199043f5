// tensor.cc: Storage lifetime, allocation on any device, copies and the checks every op uses.
#include "tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "device.h"

namespace gptoss {

namespace {
// Host tensors' bytes (the CPU counterpart of the CUDA allocator's counters, for memoryStats('cpu')): what tensors
// hold now, the most they held since the last reset, and how many allocations were made.
std::atomic<size_t> host_allocated{0};
std::atomic<size_t> host_peak{0};
std::atomic<size_t> host_allocs{0};
}  // namespace

cuda::MemoryStats host_memory_stats() {
  cuda::MemoryStats s;
  s.allocated = host_allocated.load();
  s.reserved = s.allocated;  // freed host blocks go back to the C allocator at once: nothing is cached
  s.peak_allocated = host_peak.load();
  s.num_allocs = host_allocs.load();
  s.num_cuda_mallocs = 0;
  s.num_cache_flushes = 0;
  s.num_partial_releases = 0;
  return s;
}

void host_reset_peak() { host_peak.store(host_allocated.load()); }

Storage::Storage(size_t nbytes, int dev, bool want_pinned) : bytes(nbytes), device(dev) {
  if (dev == kCpu && want_pinned) ptr = cuda::host_alloc_pinned((nbytes + 63) / 64 * 64);
  if (ptr) {
    pinned = true;  // cudaHostAlloc memory is page aligned
  } else if (dev == kCpu) {
    // 64-byte alignment for vectorised CPU kernels; at least one byte so empty tensors own a pointer.
    size_t n = (nbytes + 63) / 64 * 64;
    ptr = std::aligned_alloc(64, n ? n : 64);
    if (!ptr) fail("out of host memory allocating ", nbytes, " bytes");
  } else {
    ptr = cuda::alloc(dev, nbytes);
  }
  if (dev == kCpu) {
    size_t now = host_allocated.fetch_add(nbytes) + nbytes;
    host_allocs.fetch_add(1);
    size_t peak = host_peak.load();
    while (now > peak && !host_peak.compare_exchange_weak(peak, now)) {
    }
  }
}

Storage::~Storage() {
  if (device == kCpu) host_allocated.fetch_sub(bytes);
  if (paged) {
    std::free(paged);
    return;
  }
  if (pinned)
    cuda::host_free_pinned(ptr);
  else if (device == kCpu)
    std::free(ptr);
  else
    cuda::release(device, ptr, bytes);
}

static void* host_buffer(size_t bytes) {
  size_t n = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, n ? n : 64);
  if (!p) fail("out of host memory allocating ", bytes, " bytes");
  return p;
}

void page_out(Storage& s) {
  if (s.paged) return;
  void* host = host_buffer(s.bytes);
  if (s.device == kCpu) {
    std::memcpy(host, s.ptr, s.bytes);
    if (s.pinned)
      cuda::host_free_pinned(s.ptr);
    else
      std::free(s.ptr);
    s.pinned = false;  // page_in gives ordinary memory back
  } else {
    cuda::copy(host, kCpu, s.ptr, s.device, s.bytes);  // waits for the stream: no op still reads the block
    cuda::release(s.device, s.ptr, s.bytes);
  }
  s.ptr = nullptr;
  s.paged = host;
}

void page_in(Storage& s) {
  if (!s.paged) return;
  if (s.device == kCpu) {
    s.ptr = host_buffer(s.bytes);
    std::memcpy(s.ptr, s.paged, s.bytes);
  } else {
    s.ptr = cuda::alloc(s.device, s.bytes);
    cuda::copy(s.ptr, s.device, s.paged, kCpu, s.bytes);
  }
  std::free(s.paged);
  s.paged = nullptr;
}

std::string device_name(int device) { return device == kCpu ? "cpu" : "cuda:" + std::to_string(device); }

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype)) + shape_str(shape) + " on " + device_name(device);
}

Tensor make_tensor(const std::vector<int64_t>& shape, DType dtype, int device, bool zero, bool pinned) {
  for (auto d : shape) GPTOSS_CHECK(d >= 0, "tensor: negative dimension in shape ", shape_str(shape));
  GPTOSS_CHECK(!pinned || device == kCpu, "tensor: pinned applies to host tensors, not ", device_name(device));
  Tensor t;
  t.dtype = dtype;
  t.shape = shape;
  t.device = device;
  t.storage = std::make_shared<Storage>(t.nbytes(), device, pinned);
  if (zero) {
    if (device == kCpu)
      std::memset(t.raw(), 0, t.nbytes());
    else
      cuda::zero(device, t.raw(), t.nbytes());
  }
  return t;
}

void copy_tensor(const Tensor& dst, const Tensor& src) {
  GPTOSS_CHECK(dst.dtype == src.dtype && dst.numel() == src.numel(), "copy: destination ", dst.describe(),
               " does not match source ", src.describe());
  if (dst.device == kCpu && src.device == kCpu)
    std::memmove(dst.raw(), src.raw(), src.nbytes());
  else
    cuda::copy(dst.raw(), dst.device, src.raw(), src.device, src.nbytes());
}

void copy_tensor_async(const Tensor& dst, const Tensor& src) {
  GPTOSS_CHECK(dst.dtype == src.dtype && dst.numel() == src.numel(), "copyFromAsync: destination ", dst.describe(),
               " does not match source ", src.describe());
  if (dst.device == kCpu && src.device == kCpu) {
    std::memmove(dst.raw(), src.raw(), src.nbytes());
    return;
  }
  // A pageable host buffer would make cudaMemcpyAsync synchronous (or stage it), so it is refused rather than
  // silently waited for.
  for (const Tensor* t : {&dst, &src})
    GPTOSS_CHECK(t->device != kCpu || t->storage->pinned, "copyFromAsync: host tensor ", t->describe(),
                 " is not pinned (create it with { pinned: true })");
  cuda::copy_async(dst.raw(), dst.device, src.raw(), src.device, src.nbytes());
}

void check_dtype(const char* op, const char* name, const Tensor& t, DType want) {
  GPTOSS_CHECK(t.dtype == want, op, ": ", name, " must be ", dtype_name(want), ", got ", t.describe());
}
void check_ndim(const char* op, const char* name, const Tensor& t, int ndim) {
  GPTOSS_CHECK(t.ndim() == ndim, op, ": ", name, " must have ", ndim, " dimensions, got ", t.describe());
}
void check_shape(const char* op, const char* name, const Tensor& t, const std::vector<int64_t>& want) {
  GPTOSS_CHECK(t.shape == want, op, ": ", name, " must have shape ", shape_str(want), ", got ", t.describe());
}
void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  GPTOSS_CHECK(a.device == b.device, op, ": tensors on different devices: ", a.describe(), " and ", b.describe());
}

}  // namespace gptoss
