// binding.h: what every op binding file needs. An op binding unpacks JS arguments into Tensors, checks
// shapes/dtypes/devices (naming the op), dispatches to cpu:: or cuda:: and wraps results.
//
//   GPTOSS_OP(rmsnormForward) { auto& x = tensor_arg(info, 0, "rmsnormForward", "x"); ... return wrap(env, y); }
//
// registers `ops.rmsnormForward` on the addon's exports. C++ exceptions (gptoss::Error and others) become JS
// Errors; nothing aborts the process.
#pragma once
#include <napi.h>

#include <optional>
#include <string>
#include <vector>

#include "../common/device.h"
#include "../common/tensor.h"

namespace gptoss::js {

using OpFn = Napi::Value (*)(const Napi::CallbackInfo&);
struct OpRegistrar {
  OpRegistrar(const char* name, OpFn fn);
};
void register_ops(Napi::Env env, Napi::Object ops);

// The JS-visible handle. Holds a Tensor until dispose() or finalisation.
class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Object New(Napi::Env env, Tensor t);
  explicit NativeTensor(const Napi::CallbackInfo& info);
  ~NativeTensor() override;
  Tensor& get(const char* op, const char* name);
  bool disposed() const { return !tensor_.storage; }

 private:
  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value DType(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value PageOut(const Napi::CallbackInfo& info);
  Napi::Value PageIn(const Napi::CallbackInfo& info);
  Napi::Value PagedOut(const Napi::CallbackInfo& info);
  Napi::Value ToBuffer(const Napi::CallbackInfo& info);
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value Slice(const Napi::CallbackInfo& info);
  Napi::Value CopyFrom(const Napi::CallbackInfo& info);
  Napi::Value CopyFromAsync(const Napi::CallbackInfo& info);
  Napi::Value Pinned(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value SameStorage(const Napi::CallbackInfo& info);
  void release(Napi::Env env);

  Tensor tensor_;
  int64_t accounted_ = 0;  // bytes reported to V8 with AdjustExternalMemory (owners only, not views)
};

Tensor& tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
std::optional<Tensor> opt_tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
double num_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
std::string str_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
std::vector<int64_t> shape_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
DType dtype_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name);
Napi::Value wrap(Napi::Env env, Tensor t);
DType parse_dtype(const std::string& s, const char* op);

}  // namespace gptoss::js

#define GPTOSS_OP(name)                                                         \
  static Napi::Value gptoss_op_##name(const Napi::CallbackInfo& info);          \
  static ::gptoss::js::OpRegistrar gptoss_reg_##name(#name, gptoss_op_##name);  \
  static Napi::Value gptoss_op_##name(const Napi::CallbackInfo& info)

// Backend dispatch on the device of a tensor: GPTOSS_DISPATCH(x, cpu::f(args), cuda::f(args)).
#ifdef GPTOSS_WITH_CUDA
#define GPTOSS_DISPATCH(t, cpu_call, cuda_call) \
  do {                                          \
    if ((t).device == ::gptoss::kCpu) {         \
      cpu_call;                                 \
    } else {                                    \
      cuda_call;                                \
    }                                           \
  } while (0)
#else
#define GPTOSS_DISPATCH(t, cpu_call, cuda_call)                                              \
  do {                                                                                       \
    if ((t).device == ::gptoss::kCpu) {                                                      \
      cpu_call;                                                                              \
    } else {                                                                                 \
      ::gptoss::fail("tensor on ", ::gptoss::device_name((t).device),                        \
                     " but this addon was built without the CUDA backend");                   \
    }                                                                                        \
  } while (0)
#endif
