// args.h: small argument checks and result builders shared by the op bindings.
#pragma once
#include <initializer_list>
#include <utility>

#include "binding.h"

namespace gptoss::js {

inline bool is_float(const Tensor& t) { return t.dtype == DType::BF16 || t.dtype == DType::F32; }

// "<op>: <name> must be bf16 or f32, got <t>".
inline void check_float(const char* op, const char* name, const Tensor& t) {
  GPTOSS_CHECK(is_float(t), op, ": ", name, " must be bf16 or f32, got ", t.describe());
}

inline void check_device(const char* op, const Tensor& a, const char* name, const Tensor& b) {
  GPTOSS_CHECK(a.device == b.device, op, ": ", name, " is on ", device_name(b.device), " but the op runs on ",
               device_name(a.device), " (", b.describe(), ")");
}

// `t` must have dtype `dtype`, shape `shape` and sit on the device of `on` (checked in that order).
inline void check_tensor(const char* op, const char* name, const Tensor& t, DType dtype,
                         const std::vector<int64_t>& shape, const Tensor& on) {
  check_dtype(op, name, t, dtype);
  check_shape(op, name, t, shape);
  check_same_device(op, on, t);
}

inline std::vector<int64_t> shape_without_last(const Tensor& t) {
  return std::vector<int64_t>(t.shape.begin(), t.shape.end() - 1);
}

// A JS object of wrapped tensors: tensor_object(env, {{"y", y}, {"rstd", rstd}}).
inline Napi::Object tensor_object(Napi::Env env, std::initializer_list<std::pair<const char*, Tensor>> entries) {
  Napi::Object o = Napi::Object::New(env);
  for (const auto& [key, t] : entries) o.Set(key, wrap(env, t));
  return o;
}

}  // namespace gptoss::js
