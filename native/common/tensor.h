// tensor.h: the Tensor the addon passes between ops. Always contiguous (row-major); views share the Storage
// and differ in byte offset and shape. device -1 is the host, N >= 0 is cuda:N.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dtype.h"
#include "error.h"

namespace gptoss {

constexpr int kCpu = -1;

// A block of memory on one device. Freed (or returned to the caching allocator) when the last Tensor that
// views it goes away.
struct Storage {
  void* ptr = nullptr;
  size_t bytes = 0;
  int device = kCpu;
  bool reported_to_js = false;  // its bytes were reported to V8 (AdjustExternalMemory) by one handle
  // While paged out (page_out): the bytes, in host memory, and ptr is null. An engine that sleeps with its weights
  // released pages them out so that a trainer sharing the GPU can use the memory, and pages them in on wake.
  void* paged = nullptr;
  // Host memory from cudaHostAlloc (asked for with pinned and granted: a CUDA build with a visible device);
  // copies between it and a device may be asynchronous (copy_tensor_async).
  bool pinned = false;
  Storage(size_t bytes, int device, bool pinned = false);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct Tensor {
  std::shared_ptr<Storage> storage;
  size_t offset = 0;  // bytes from storage->ptr
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  int device = kCpu;

  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  int ndim() const { return static_cast<int>(shape.size()); }
  void* raw() const { return static_cast<char*>(storage->ptr) + offset; }
  template <typename T>
  T* data() const { return reinterpret_cast<T*>(raw()); }
  bool is_cuda() const { return device >= 0; }
  std::string describe() const;  // e.g. "bf16[4, 64] on cuda:0"
};

// Allocation on any device; zero-filled when zero is true. pinned (host tensors only): page-locked memory when the
// build has CUDA and a device is visible, ordinary memory otherwise (Storage::pinned tells which).
Tensor make_tensor(const std::vector<int64_t>& shape, DType dtype, int device, bool zero = false, bool pinned = false);
std::string device_name(int device);

// Moves a storage's bytes to host memory and frees its device block (back to the caching allocator; empty_cache
// returns it to the driver), or back to a fresh block on its device. Every view of the storage follows; an op
// given a paged-out tensor fails naming it. Idempotent. On the CPU the bytes move to another host buffer (the
// same semantics, so the CPU tests exercise the path).
void page_out(Storage& s);
void page_in(Storage& s);

// Copies src into dst (same dtype and numel); any pair of devices. Ordered on the device stream.
void copy_tensor(const Tensor& dst, const Tensor& src);
// The same without waiting: host <-> device copies need the host side pinned (Storage::pinned) and are enqueued on
// the device's compute stream; the host side must not be touched until the stream has passed them (record an event
// after the copy and synchronize it). Host to host (a CPU-only process) copies at once.
void copy_tensor_async(const Tensor& dst, const Tensor& src);

// ---- shape/dtype/device checks that name the op -------------------------------------------------------
void check_dtype(const char* op, const char* name, const Tensor& t, DType want);
void check_ndim(const char* op, const char* name, const Tensor& t, int ndim);
void check_shape(const char* op, const char* name, const Tensor& t, const std::vector<int64_t>& want);
void check_same_device(const char* op, const Tensor& a, const Tensor& b);

}  // namespace gptoss
