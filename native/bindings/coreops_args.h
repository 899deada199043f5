// coreops_args.h: small argument checks shared by the core op bindings (embedding, rmsnorm, rope,
// elementwise, swiglu).
#pragma once
#include "binding.h"

namespace gptoss::js {

inline bool is_float(const Tensor& t) { return t.dtype == DType::BF16 || t.dtype == DType::F32; }

inline void check_float(const char* op, const char* name, const Tensor& t) {
  GPTOSS_CHECK(is_float(t), op, ": ", name, " must be bf16 or f32, got ", t.describe());
}

inline void check_device(const char* op, const Tensor& a, const char* name, const Tensor& b) {
  GPTOSS_CHECK(a.device == b.device, op, ": ", name, " is on ", device_name(b.device), " but the op runs on ",
               device_name(a.device), " (", b.describe(), ")");
}

inline std::vector<int64_t> shape_without_last(const Tensor& t) {
  return std::vector<int64_t>(t.shape.begin(), t.shape.end() - 1);
}

inline Napi::Object two(Napi::Env env, const char* ka, Tensor a, const char* kb, Tensor b) {
  Napi::Object o = Napi::Object::New(env);
  o.Set(ka, wrap(env, std::move(a)));
  o.Set(kb, wrap(env, std::move(b)));
  return o;
}

}  // namespace gptoss::js
