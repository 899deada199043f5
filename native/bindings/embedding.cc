// embedding.cc: bindings for embeddingForward / embeddingBackward.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../cpu/embedding.h"
#include "args.h"
#ifdef GPTOSS_WITH_CUDA
#include "../cuda/embedding.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

// The ids on the host (CUDA: one small device->host copy, which waits for the stream; it is what lets a bad id
// be reported by value instead of reading out of bounds).
static std::vector<int32_t> ids_on_host(const Tensor& ids) {
  std::vector<int32_t> h(static_cast<size_t>(ids.numel()));
  if (h.empty()) return h;
  if (ids.device == kCpu) std::memcpy(h.data(), ids.raw(), ids.nbytes());
  else cuda::copy(h.data(), kCpu, ids.raw(), ids.device, ids.nbytes());
  return h;
}

// embeddingForward(weight bf16|f32 [V, H], ids i32 [...], checked = true) -> [..., H] (weight's dtype)
GPTOSS_OP(embeddingForward) {
  const char* op = "embeddingForward";
  Tensor& w = tensor_arg(info, 0, op, "weight");
  Tensor& ids = tensor_arg(info, 1, op, "ids");
  check_ndim(op, "weight", w, 2);
  check_float(op, "weight", w);
  check_dtype(op, "ids", ids, DType::I32);
  check_device(op, w, "ids", ids);
  std::vector<int64_t> shape = ids.shape;
  shape.push_back(w.dim(1));
  Tensor out = make_tensor(shape, w.dtype, w.device);
  // checked (default true): on CUDA, copy the ids to the host to name a bad one (a wait on the stream); false: no
  // wait, and an id out of range gives a zero row (the caller has validated them: the engine's steps, graph captures).
  const bool checked = info.Length() < 3 || info[2].IsUndefined() || bool_arg(info, 2, op, "checked");
  if (w.device != kCpu && checked) {
    cuda::profile_mark(w.device, "(host sync)");  // the ids' copy waits for the stream (profiling; no-op unless on)
    auto h = ids_on_host(ids);
    cpu::check_ids(op, h.data(), ids.numel(), w.dim(0));
    cuda::profile_mark(w.device, "embedding");
  }
  GPTOSS_DISPATCH(w, cpu::embedding_forward(w, ids, out), cuda::embedding_forward(w, ids, out));
  return wrap(info.Env(), out);
}

// embeddingForwardSlice(weight bf16|f32 [W, H], ids i32 [...], vocabStart) -> [..., H]: a vocabulary-parallel rank's
// lookup (weight = vocabulary rows vocabStart .. vocabStart + W - 1; ids outside them give zero rows, so the sum
// over the ranks is the full lookup). No host check of the ids: every id is valid for some rank (the caller checks
// them against the whole vocabulary), and on CUDA the lookup must not wait for the device.
GPTOSS_OP(embeddingForwardSlice) {
  const char* op = "embeddingForwardSlice";
  Tensor& w = tensor_arg(info, 0, op, "weight");
  Tensor& ids = tensor_arg(info, 1, op, "ids");
  const int64_t start = int_arg(info, 2, op, "vocabStart");
  check_ndim(op, "weight", w, 2);
  check_float(op, "weight", w);
  check_dtype(op, "ids", ids, DType::I32);
  check_device(op, w, "ids", ids);
  GPTOSS_CHECK(start >= 0, op, ": vocabStart must be >= 0, got ", start);
  std::vector<int64_t> shape = ids.shape;
  shape.push_back(w.dim(1));
  Tensor out = make_tensor(shape, w.dtype, w.device);
  GPTOSS_DISPATCH(w, cpu::embedding_forward_slice(w, ids, start, out), cuda::embedding_forward(w, ids, out, start));
  return wrap(info.Env(), out);
}

// embeddingBackward(dOut bf16|f32 [..., H], ids i32 [...], vocabSize, into = null) -> f32 [V, H]: fresh, or `into`
// (f32 [V, H]) with the gradient added to it in the same pass (no fresh buffer, no zeroing, no separate add).
GPTOSS_OP(embeddingBackward) {
  const char* op = "embeddingBackward";
  Tensor& dout = tensor_arg(info, 0, op, "dOut");
  Tensor& ids = tensor_arg(info, 1, op, "ids");
  int64_t vocab = int_arg(info, 2, op, "vocabSize");
  GPTOSS_CHECK(vocab > 0, op, ": vocabSize must be positive, got ", vocab);
  check_float(op, "dOut", dout);
  check_dtype(op, "ids", ids, DType::I32);
  check_device(op, dout, "ids", ids);
  GPTOSS_CHECK(dout.ndim() == ids.ndim() + 1 && std::equal(ids.shape.begin(), ids.shape.end(), dout.shape.begin()),
               op, ": dOut must have shape ids.shape + [H], got dOut ", dout.describe(), " and ids ", ids.describe());
  auto into = opt_tensor_arg(info, 3, op, "into");
  Tensor dw;
  if (into) {
    dw = *into;
    check_tensor(op, "into", dw, DType::F32, {vocab, dout.dim(-1)}, dout);
  } else {
    dw = make_tensor({vocab, dout.dim(-1)}, DType::F32, dout.device);
  }
  const bool acc = into.has_value();
  if (dout.device == kCpu) {
    cpu::embedding_backward(dout, ids, dw, acc);
  } else {
    cuda::profile_mark(dout.device, "(host sync)");  // the ids' copy waits for the stream (profiling; no-op unless on)
    auto h = ids_on_host(ids);
    cpu::check_ids(op, h.data(), ids.numel(), vocab);
    cuda::profile_mark(dout.device, "embedding");
    GPTOSS_DISPATCH(dout, (void)0, cuda::embedding_backward(dout, h.data(), ids.numel(), dw, acc));
  }
  return acc ? info[3] : wrap(info.Env(), dw);
}
