// addon.cc: module entry. exports = { NativeTensor, ops: { <every GPTOSS_OP> }, features: {...} }.
#include "binding.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeTensor", gptoss::js::NativeTensor::Init(env));
  Napi::Object ops = Napi::Object::New(env);
  gptoss::js::register_ops(env, ops);
  exports.Set("ops", ops);
  Napi::Object features = Napi::Object::New(env);
  features.Set("cuda", gptoss::cuda::compiled());
#ifdef GPTOSS_HAVE_CBLAS
  features.Set("blas", true);
#else
  features.Set("blas", false);
#endif
#ifdef GPTOSS_WITH_NCCL
  features.Set("nccl", true);
#else
  features.Set("nccl", false);
#endif
  exports.Set("features", features);
  return exports;
}

NODE_API_MODULE(gptoss, Init)
