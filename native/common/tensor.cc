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
  return s;
}

void host_reset_peak() { host_peak.store(host_allocated.load()); }

Storage::Storage(size_t nbytes, int dev) : bytes(nbytes), device(dev) {
  if (dev == kCpu) {
    // 64-byte alignment for vectorised CPU kernels; at least one byte so empty tensors own a pointer.
    size_t n = (nbytes + 63) / 64 * 64;
    ptr = std::aligned_alloc(64, n ? n : 64);
    if (!ptr) fail("out of host memory allocating ", nbytes, " bytes");
    size_t now = host_allocated.fetch_add(nbytes) + nbytes;
    host_allocs.fetch_add(1);
    size_t peak = host_peak.load();
    while (now > peak && !host_peak.compare_exchange_weak(peak, now)) {
    }
  } else {
    ptr = cuda::alloc(dev, nbytes);
  }
}

Storage::~Storage() {
  if (device == kCpu) {
    std::free(ptr);
    host_allocated.fetch_sub(bytes);
  } else
    cuda::release(device, ptr, bytes);
}

std::string device_name(int device) { return device == kCpu ? "cpu" : "cuda:" + std::to_string(device); }

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype)) + shape_str(shape) + " on " + device_name(device);
}

Tensor make_tensor(const std::vector<int64_t>& shape, DType dtype, int device, bool zero) {
  for (auto d : shape) GPTOSS_CHECK(d >= 0, "tensor: negative dimension in shape ", shape_str(shape));
  Tensor t;
  t.dtype = dtype;
  t.shape = shape;
  t.device = device;
  t.storage = std::make_shared<Storage>(t.nbytes(), device);
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
