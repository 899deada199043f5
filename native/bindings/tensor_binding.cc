// tensor_binding.cc: the NativeTensor class, argument helpers, the op registry and runtime functions.
#include <algorithm>
#include <cstring>
#include <map>

#include "../cpu/parallel.h"
#include "binding.h"

namespace gptoss::js {

// ---- op registry -------------------------------------------------------------------------------------------
static std::map<std::string, OpFn>& registry() {
  static std::map<std::string, OpFn> r;
  return r;
}
OpRegistrar::OpRegistrar(const char* name, OpFn fn) { registry()[name] = fn; }

// Each registered op runs inside this wrapper so C++ exceptions become JS Errors.
static Napi::Value call_op(const Napi::CallbackInfo& info) {
  auto fn = reinterpret_cast<OpFn>(info.Data());
  try {
    return fn(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
}

void register_ops(Napi::Env env, Napi::Object ops) {
  for (auto& [name, fn] : registry())
    ops.Set(name, Napi::Function::New(env, call_op, name, reinterpret_cast<void*>(fn)));
}

// ---- helpers -----------------------------------------------------------------------------------------------
DType parse_dtype(const std::string& s, const char* op) {
  if (s == "bf16") return DType::BF16;
  if (s == "f32") return DType::F32;
  if (s == "i32") return DType::I32;
  if (s == "u8") return DType::U8;
  fail(op, ": unknown dtype '", s, "' (expected bf16, f32, i32 or u8)");
}

static Napi::FunctionReference* g_ctor = nullptr;

Tensor& tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i >= info.Length() || !info[i].IsObject()) fail(op, ": argument ", name, " must be a Tensor");
  Napi::Object o = info[i].As<Napi::Object>();
  if (!o.InstanceOf(g_ctor->Value())) {
    // Accept the TS wrapper class, which keeps its NativeTensor in `native`.
    Napi::Value inner = o.Get("native");
    if (!inner.IsObject() || !inner.As<Napi::Object>().InstanceOf(g_ctor->Value()))
      fail(op, ": argument ", name, " must be a Tensor");
    o = inner.As<Napi::Object>();
  }
  return NativeTensor::Unwrap(o)->get(op, name);
}

std::optional<Tensor> opt_tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i >= info.Length() || info[i].IsUndefined() || info[i].IsNull()) return std::nullopt;
  return tensor_arg(info, i, op, name);
}

double num_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i >= info.Length() || !info[i].IsNumber()) fail(op, ": argument ", name, " must be a number");
  return info[i].As<Napi::Number>().DoubleValue();
}

int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  double v = num_arg(info, i, op, name);
  if (v != static_cast<double>(static_cast<int64_t>(v))) fail(op, ": argument ", name, " must be an integer, got ", v);
  return static_cast<int64_t>(v);
}

bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i >= info.Length() || !info[i].IsBoolean()) fail(op, ": argument ", name, " must be a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

std::string str_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i >= info.Length() || !info[i].IsString()) fail(op, ": argument ", name, " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

std::vector<int64_t> shape_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i >= info.Length() || !info[i].IsArray()) fail(op, ": argument ", name, " must be an array of integers");
  Napi::Array a = info[i].As<Napi::Array>();
  std::vector<int64_t> s(a.Length());
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    if (!v.IsNumber()) fail(op, ": ", name, "[", k, "] must be an integer");
    double d = v.As<Napi::Number>().DoubleValue();
    if (d < 0 || d != static_cast<double>(static_cast<int64_t>(d)))
      fail(op, ": ", name, "[", k, "] must be a non-negative integer, got ", d);
    s[k] = static_cast<int64_t>(d);
  }
  return s;
}

DType dtype_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  return parse_dtype(str_arg(info, i, op, name), op);
}

Napi::Value wrap(Napi::Env env, Tensor t) { return NativeTensor::New(env, std::move(t)); }

// ---- NativeTensor ------------------------------------------------------------------------------------------
Napi::Function NativeTensor::Init(Napi::Env env) {
  Napi::Function f = DefineClass(env, "NativeTensor",
                                 {
                                     InstanceAccessor<&NativeTensor::Shape>("shape"),
                                     InstanceAccessor<&NativeTensor::DType>("dtype"),
                                     InstanceAccessor<&NativeTensor::Device>("device"),
                                     InstanceAccessor<&NativeTensor::Disposed>("disposed"),
                                     InstanceAccessor<&NativeTensor::Pinned>("pinned"),
                                     InstanceMethod<&NativeTensor::Dispose>("dispose"),
                                     InstanceMethod<&NativeTensor::ToBuffer>("toBuffer"),
                                     InstanceMethod<&NativeTensor::View>("view"),
                                     InstanceMethod<&NativeTensor::Slice>("slice"),
                                     InstanceMethod<&NativeTensor::CopyFrom>("copyFrom"),
                                     InstanceMethod<&NativeTensor::CopyFromAsync>("copyFromAsync"),
                                     InstanceMethod<&NativeTensor::To>("to"),
                                     InstanceMethod<&NativeTensor::SameStorage>("sameStorage"),
                                     InstanceMethod<&NativeTensor::PageOut>("pageOut"),
                                     InstanceMethod<&NativeTensor::PageIn>("pageIn"),
                                     InstanceAccessor<&NativeTensor::PagedOut>("pagedOut"),
                                 });
  g_ctor = new Napi::FunctionReference(Napi::Persistent(f));
  return f;
}

// Pending tensor handed from New() to the constructor (JS cannot construct a NativeTensor directly).
static thread_local Tensor* g_pending = nullptr;

Napi::Object NativeTensor::New(Napi::Env env, Tensor t) {
  g_pending = &t;
  Napi::Object o = g_ctor->New({});
  g_pending = nullptr;
  return o;
}

NativeTensor::NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {
  if (!g_pending) {
    Napi::TypeError::New(info.Env(), "NativeTensor: use the tensor factory functions").ThrowAsJavaScriptException();
    return;
  }
  tensor_ = std::move(*g_pending);
  // Report owning host storages (not views) to V8 so GC pressure reflects native host memory. Device memory is
  // not reported: multi-GB CUDA tensors would trigger a full GC per step, and device memory is released by
  // explicit dispose() (the finaliser is only a safety net).
  if (tensor_.device == kCpu && !tensor_.storage->reported_to_js) {
    tensor_.storage->reported_to_js = true;
    accounted_ = static_cast<int64_t>(tensor_.storage->bytes);
    Napi::MemoryManagement::AdjustExternalMemory(info.Env(), accounted_);
  }
}

NativeTensor::~NativeTensor() {
  // Finaliser (GC) or teardown: the storage is freed with its last reference; undo this handle's report.
  if (accounted_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -accounted_);
}

void NativeTensor::release(Napi::Env env) {
  if (accounted_) Napi::MemoryManagement::AdjustExternalMemory(env, -accounted_);
  accounted_ = 0;
  tensor_.storage.reset();
}

Tensor& NativeTensor::get(const char* op, const char* name) {
  if (!tensor_.storage) fail(op, ": ", name, " was used after dispose() (", dtype_name(tensor_.dtype),
                             shape_str(tensor_.shape), " on ", device_name(tensor_.device), ")");
  if (tensor_.storage->paged)
    fail(op, ": ", name, " (", tensor_.describe(), ") is paged out to host memory (an engine asleep with its ",
         "weights released); page it in (Engine.wake()) first");
  return tensor_;
}

Napi::Value NativeTensor::Shape(const Napi::CallbackInfo& info) {
  Napi::Array a = Napi::Array::New(info.Env(), tensor_.shape.size());
  for (size_t i = 0; i < tensor_.shape.size(); i++) a.Set(i, Napi::Number::New(info.Env(), double(tensor_.shape[i])));
  return a;
}
Napi::Value NativeTensor::DType(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), dtype_name(tensor_.dtype));
}
Napi::Value NativeTensor::Device(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), device_name(tensor_.device));
}
Napi::Value NativeTensor::Disposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !tensor_.storage);
}
Napi::Value NativeTensor::Dispose(const Napi::CallbackInfo& info) {
  release(info.Env());
  return info.Env().Undefined();
}

template <typename F>
static Napi::Value guarded(const Napi::CallbackInfo& info, F f) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
}

// toBuffer(): a fresh ArrayBuffer with the tensor's bytes (waits for the device).
Napi::Value NativeTensor::ToBuffer(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& t = get("toBuffer", "tensor");
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(info.Env(), t.nbytes());
    if (t.device == kCpu)
      std::memcpy(ab.Data(), t.raw(), t.nbytes());
    else
      cuda::copy(ab.Data(), kCpu, t.raw(), t.device, t.nbytes());
    return ab;
  });
}

// view(shape): same storage, new shape with the same element count.
Napi::Value NativeTensor::View(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& t = get("view", "tensor");
    auto shape = shape_arg(info, 0, "view", "shape");
    Tensor v = t;
    v.shape = shape;
    GPTOSS_CHECK(v.numel() == t.numel(), "view: cannot view ", t.describe(), " as ", shape_str(shape),
                 " (element counts differ)");
    return wrap(info.Env(), v);
  });
}

// slice(start, end): rows [start, end) of the first dimension, a contiguous view.
Napi::Value NativeTensor::Slice(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& t = get("slice", "tensor");
    GPTOSS_CHECK(t.ndim() >= 1, "slice: cannot slice a 0-d tensor ", t.describe());
    int64_t start = int_arg(info, 0, "slice", "start"), end = int_arg(info, 1, "slice", "end");
    GPTOSS_CHECK(0 <= start && start <= end && end <= t.shape[0], "slice: range [", start, ", ", end,
                 ") out of bounds for ", t.describe());
    Tensor v = t;
    v.shape[0] = end - start;
    int64_t row = t.shape[0] ? t.numel() / t.shape[0] : 0;
    v.offset = t.offset + static_cast<size_t>(start * row) * dtype_size(t.dtype);
    return wrap(info.Env(), v);
  });
}

// copyFrom(src): copy src's bytes into this tensor (same dtype and element count; any devices).
Napi::Value NativeTensor::CopyFrom(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& dst = get("copyFrom", "destination");
    if (info.Length() >= 1 && (info[0].IsArrayBuffer() || info[0].IsTypedArray())) {
      const void* src;
      size_t n;
      if (info[0].IsArrayBuffer()) {
        auto ab = info[0].As<Napi::ArrayBuffer>();
        src = ab.Data();
        n = ab.ByteLength();
      } else {
        auto ta = info[0].As<Napi::TypedArray>();
        src = static_cast<const char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
        n = ta.ByteLength();
      }
      GPTOSS_CHECK(n == dst.nbytes(), "copyFrom: host buffer has ", n, " bytes but ", dst.describe(), " needs ",
                   dst.nbytes());
      if (dst.device == kCpu)
        std::memcpy(dst.raw(), src, n);
      else
        cuda::copy(dst.raw(), dst.device, src, kCpu, n);
      return info.Env().Undefined();
    }
    Tensor& src = tensor_arg(info, 0, "copyFrom", "source");
    copy_tensor(dst, src);
    return info.Env().Undefined();
  });
}

// copyFromAsync(src): as copyFrom without waiting (copy_tensor_async: a host side must be pinned).
Napi::Value NativeTensor::CopyFromAsync(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& dst = get("copyFromAsync", "destination");
    Tensor& src = tensor_arg(info, 0, "copyFromAsync", "source");
    copy_tensor_async(dst, src);
    return info.Env().Undefined();
  });
}

// pinned: the storage is page-locked host memory.
Napi::Value NativeTensor::Pinned(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), tensor_.storage && tensor_.storage->pinned);
}

// to(device): a copy on another device (device index, -1 = cpu).
Napi::Value NativeTensor::To(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& t = get("to", "tensor");
    int dev = static_cast<int>(int_arg(info, 0, "to", "device"));
    Tensor out = make_tensor(t.shape, t.dtype, dev);
    copy_tensor(out, t);
    return wrap(info.Env(), out);
  });
}

// pageOut() / pageIn(): the storage's bytes to host memory and back (page_out in tensor.h); pagedOut: where they are.
Napi::Value NativeTensor::PageOut(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (!tensor_.storage) fail("pageOut: the tensor was used after dispose()");
    page_out(*tensor_.storage);
    return info.Env().Undefined();
  });
}
Napi::Value NativeTensor::PageIn(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (!tensor_.storage) fail("pageIn: the tensor was used after dispose()");
    page_in(*tensor_.storage);
    return info.Env().Undefined();
  });
}
Napi::Value NativeTensor::PagedOut(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), tensor_.storage && tensor_.storage->paged != nullptr);
}

Napi::Value NativeTensor::SameStorage(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor& a = get("sameStorage", "tensor");
    Tensor& b = tensor_arg(info, 0, "sameStorage", "other");
    return Napi::Boolean::New(info.Env(), a.storage == b.storage);
  });
}

}  // namespace gptoss::js

// ---- runtime ops (registered like any op) --------------------------------------------------------------------
using namespace gptoss;
using namespace gptoss::js;

// empty(shape, dtype, device, zero, pinned)
GPTOSS_OP(empty) {
  auto shape = shape_arg(info, 0, "empty", "shape");
  DType dt = dtype_arg(info, 1, "empty", "dtype");
  int dev = static_cast<int>(int_arg(info, 2, "empty", "device"));
  bool zero = info.Length() > 3 && info[3].ToBoolean().Value();
  bool pinned = info.Length() > 4 && info[4].ToBoolean().Value();
  return wrap(info.Env(), make_tensor(shape, dt, dev, zero, pinned));
}

// fromBuffer(buffer, shape, dtype, device): copy host bytes into a new tensor.
GPTOSS_OP(fromBuffer) {
  auto shape = shape_arg(info, 1, "fromBuffer", "shape");
  DType dt = dtype_arg(info, 2, "fromBuffer", "dtype");
  int dev = static_cast<int>(int_arg(info, 3, "fromBuffer", "device"));
  const void* src = nullptr;
  size_t n = 0;
  if (info[0].IsArrayBuffer()) {
    auto ab = info[0].As<Napi::ArrayBuffer>();
    src = ab.Data();
    n = ab.ByteLength();
  } else if (info[0].IsTypedArray()) {
    auto ta = info[0].As<Napi::TypedArray>();
    src = static_cast<const char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    n = ta.ByteLength();
  } else {
    fail("fromBuffer: data must be an ArrayBuffer or a typed array");
  }
  Tensor t = make_tensor(shape, dt, dev);
  GPTOSS_CHECK(n == t.nbytes(), "fromBuffer: buffer has ", n, " bytes but ", t.describe(), " needs ", t.nbytes());
  if (dev == kCpu)
    std::memcpy(t.raw(), src, n);
  else
    cuda::copy(t.raw(), dev, src, kCpu, n);
  return wrap(info.Env(), t);
}

// joinRows(parts[]): when the tensors are consecutive row ranges of one storage (same dtype, trailing shape and
// device; each starting where the previous ends), a view of them as one tensor of the summed rows; else null.
// Lets callers that hold only the row slices of a fused buffer (e.g. the q/k/v gradients in a map by checkpoint
// name) run one op over the whole, without keeping a handle of the buffer itself alive.
GPTOSS_OP(joinRows) {
  GPTOSS_CHECK(info.Length() >= 1 && info[0].IsArray(), "joinRows: parts must be an array of tensors");
  Napi::Array a = info[0].As<Napi::Array>();
  GPTOSS_CHECK(a.Length() >= 1, "joinRows: no parts");
  std::vector<Tensor> parts;
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value v = a.Get(i);
    GPTOSS_CHECK(v.IsObject(), "joinRows: part ", i, " is not a tensor");
    Napi::Object o = v.As<Napi::Object>();
    if (o.Has("native")) o = o.Get("native").As<Napi::Object>();
    GPTOSS_CHECK(o.InstanceOf(g_ctor->Value()), "joinRows: part ", i, " is not a tensor");
    parts.push_back(NativeTensor::Unwrap(o)->get("joinRows", "part"));
  }
  const Tensor& f = parts[0];
  if (f.ndim() < 1) return info.Env().Null();
  Tensor out = f;
  size_t end = f.offset + f.nbytes();
  for (size_t i = 1; i < parts.size(); i++) {
    const Tensor& t = parts[i];
    bool same = t.storage == f.storage && t.dtype == f.dtype && t.device == f.device && t.ndim() == f.ndim() &&
                std::equal(t.shape.begin() + 1, t.shape.end(), f.shape.begin() + 1) && t.offset == end;
    if (!same) return info.Env().Null();
    out.shape[0] += t.shape[0];
    end += t.nbytes();
  }
  return wrap(info.Env(), out);
}

GPTOSS_OP(cudaCompiled) { return Napi::Boolean::New(info.Env(), cuda::compiled()); }
GPTOSS_OP(deviceCount) { return Napi::Number::New(info.Env(), cuda::device_count()); }
GPTOSS_OP(deviceName) {
  return Napi::String::New(info.Env(), cuda::device_name(static_cast<int>(int_arg(info, 0, "deviceName", "device"))));
}
GPTOSS_OP(synchronize) {
  cuda::synchronize(static_cast<int>(int_arg(info, 0, "synchronize", "device")));
  return info.Env().Undefined();
}
GPTOSS_OP(memoryStats) {
  int device = static_cast<int>(int_arg(info, 0, "memoryStats", "device"));
  auto s = device == kCpu ? host_memory_stats() : cuda::memory_stats(device);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("allocated", double(s.allocated));
  o.Set("reserved", double(s.reserved));
  o.Set("peakAllocated", double(s.peak_allocated));
  o.Set("numAllocs", double(s.num_allocs));
  o.Set("numCudaMallocs", double(s.num_cuda_mallocs));
  o.Set("numCacheFlushes", double(s.num_cache_flushes));
  o.Set("numPartialReleases", double(s.num_partial_releases));
  return o;
}
GPTOSS_OP(resetPeakMemory) {
  int device = static_cast<int>(int_arg(info, 0, "resetPeakMemory", "device"));
  if (device == kCpu)
    host_reset_peak();
  else
    cuda::reset_peak(device);
  return info.Env().Undefined();
}
GPTOSS_OP(emptyCache) {
  cuda::empty_cache(static_cast<int>(int_arg(info, 0, "emptyCache", "device")));
  return info.Env().Undefined();
}
GPTOSS_OP(numThreads) { return Napi::Number::New(info.Env(), cpu::num_threads()); }
GPTOSS_OP(setNumThreads) {
  cpu::set_num_threads(static_cast<int>(int_arg(info, 0, "setNumThreads", "n")));
  return info.Env().Undefined();
}

GPTOSS_OP(setBatchInvariant) {
  cuda::set_batch_invariant(bool_arg(info, 0, "setBatchInvariant", "on"));
  return info.Env().Undefined();
}
GPTOSS_OP(batchInvariant) { return Napi::Boolean::New(info.Env(), cuda::batch_invariant()); }
GPTOSS_OP(launchCount) { return Napi::Number::New(info.Env(), static_cast<double>(cuda::launch_count())); }
GPTOSS_OP(gemmTuneCount) { return Napi::Number::New(info.Env(), static_cast<double>(cuda::gemm_tune_count())); }
GPTOSS_OP(profileEnable) {
  cuda::profile_enable(static_cast<int>(int_arg(info, 0, "profileEnable", "device")), bool_arg(info, 1, "profileEnable", "on"));
  return info.Env().Undefined();
}
GPTOSS_OP(profileMark) {
  const int device = static_cast<int>(int_arg(info, 0, "profileMark", "device"));
  const std::string name = str_arg(info, 1, "profileMark", "name");
  cuda::profile_mark(device, name.c_str());
  return info.Env().Undefined();
}
GPTOSS_OP(profileTake) {
  const auto segs = cuda::profile_take(static_cast<int>(int_arg(info, 0, "profileTake", "device")));
  Napi::Array out = Napi::Array::New(info.Env(), segs.size());
  for (size_t i = 0; i < segs.size(); i++) {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("name", segs[i].name);
    o.Set("ms", static_cast<double>(segs[i].ms));
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

// CUDA graphs (device.h): pools and graphs are plain ids; the caller destroys what it creates.
GPTOSS_OP(graphPoolCreate) {
  return Napi::Number::New(info.Env(), cuda::graph_pool_create(static_cast<int>(int_arg(info, 0, "graphPoolCreate", "device"))));
}
GPTOSS_OP(graphPoolRelease) {
  cuda::graph_pool_release(static_cast<int>(int_arg(info, 0, "graphPoolRelease", "device")),
                           static_cast<int>(int_arg(info, 1, "graphPoolRelease", "pool")));
  return info.Env().Undefined();
}
GPTOSS_OP(captureBegin) {
  cuda::capture_begin(static_cast<int>(int_arg(info, 0, "captureBegin", "device")),
                      static_cast<int>(int_arg(info, 1, "captureBegin", "pool")));
  return info.Env().Undefined();
}
GPTOSS_OP(captureEnd) {
  return Napi::Number::New(info.Env(),
                           static_cast<double>(cuda::capture_end(static_cast<int>(int_arg(info, 0, "captureEnd", "device")))));
}
GPTOSS_OP(captureAbort) {
  cuda::capture_abort(static_cast<int>(int_arg(info, 0, "captureAbort", "device")));
  return info.Env().Undefined();
}
GPTOSS_OP(graphLaunch) {
  cuda::graph_launch(int_arg(info, 0, "graphLaunch", "graph"), static_cast<int>(int_arg(info, 1, "graphLaunch", "device")));
  return info.Env().Undefined();
}
GPTOSS_OP(graphNodeCount) {
  return Napi::Number::New(info.Env(), static_cast<double>(cuda::graph_node_count(int_arg(info, 0, "graphNodeCount", "graph"))));
}
GPTOSS_OP(graphDestroy) {
  cuda::graph_destroy(int_arg(info, 0, "graphDestroy", "graph"));
  return info.Env().Undefined();
}

// Events: an External wrapping a cudaEvent_t, destroyed with the JS object.
GPTOSS_OP(eventCreate) {
  int dev = static_cast<int>(int_arg(info, 0, "eventCreate", "device"));
  bool timing = info.Length() > 1 && info[1].ToBoolean().Value();
  void* ev = cuda::event_create(dev, timing);
  return Napi::External<void>::New(info.Env(), ev, [](Napi::Env, void* e) { cuda::event_destroy(e); });
}
static void* event_arg(const Napi::CallbackInfo& info, size_t i, const char* op) {
  if (i >= info.Length() || !info[i].IsExternal()) fail(op, ": argument event must be a CUDA event");
  return info[i].As<Napi::External<void>>().Data();
}
// The stream argument of eventRecord/eventWait: 'compute' (default) or 'comm'.
static int stream_arg(const Napi::CallbackInfo& info, size_t i, const char* op) {
  if (i >= info.Length() || info[i].IsUndefined()) return cuda::kComputeStream;
  const std::string s = str_arg(info, i, op, "stream");
  if (s == "compute") return cuda::kComputeStream;
  if (s == "comm") return cuda::kCommStream;
  fail(op, ": stream must be 'compute' or 'comm', got '", s, "'");
}
GPTOSS_OP(eventRecord) {
  cuda::event_record(event_arg(info, 0, "eventRecord"), static_cast<int>(int_arg(info, 1, "eventRecord", "device")),
                     stream_arg(info, 2, "eventRecord"));
  return info.Env().Undefined();
}
GPTOSS_OP(eventWait) {
  cuda::event_wait(event_arg(info, 0, "eventWait"), static_cast<int>(int_arg(info, 1, "eventWait", "device")),
                   stream_arg(info, 2, "eventWait"));
  return info.Env().Undefined();
}
GPTOSS_OP(eventSynchronize) {
  cuda::event_synchronize(event_arg(info, 0, "eventSynchronize"));
  return info.Env().Undefined();
}
GPTOSS_OP(eventQuery) { return Napi::Boolean::New(info.Env(), cuda::event_query(event_arg(info, 0, "eventQuery"))); }
GPTOSS_OP(eventElapsedMs) {
  return Napi::Number::New(info.Env(),
                           cuda::event_elapsed_ms(event_arg(info, 0, "eventElapsedMs"), event_arg(info, 1, "eventElapsedMs")));
}
