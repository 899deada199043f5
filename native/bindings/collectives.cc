// collectives.cc: NCCL bindings (ops.nccl*). In a build without the CUDA backend every one of them throws a
// clear "built without NCCL" error; the TypeScript side then uses the CPU collectives (src/distributed/).
//
//   ncclVersion() -> string
//   ncclGetUniqueId() -> Buffer (128 bytes)
//   ncclCommInitRank(id, nranks, rank, device, watchdogMs?) -> External communicator (aborted when garbage
//                                                collected); watchdogMs > 0 starts the watchdog (nccl_comm.h)
//   ncclSetPhase(comm, phase)                    labels the collectives enqueued next (for the watchdog's message)
//   ncclCommDestroy(comm) / ncclCommAbort(comm)
//   ncclAllReduce(comm, send, recv, op)          op: 'sum' | 'avg' | 'max' | 'min'; send may be recv (in place)
//   ncclAllGather(comm, send, recv, stream?)     recv holds nranks x send, in rank order
//   ncclReduceScatter(comm, send, recv, op, stream?)  send holds nranks x recv
//     stream: 'compute' (default) or 'comm' (the device's communication stream; order it with events)
//   ncclBroadcast(comm, send, recv, root)        send is read on the root only
//   ncclSendRecv(comm, kinds, peers, ...tensors) kinds: string of 's'/'r', one per tensor; one NCCL group
//   ncclCheckAsync(comm), ncclSynchronize(comm, timeoutMs)
// Tensors must be on the communicator's device and have a dtype NCCL moves (bf16, f32, i32, u8).
#include <string>
#include <vector>

#include "binding.h"

#ifdef GPTOSS_WITH_NCCL
#include "../cuda/nccl_comm.h"
#endif

using namespace gptoss;
using namespace gptoss::js;

#ifndef GPTOSS_WITH_NCCL

[[noreturn]] static void no_nccl(const char* op) {
  fail(op, ": this addon was built without NCCL (CPU-only build: rebuild where nvcc, cuBLAS and NCCL are found, "
           "or use the CPU collectives backend)");
}
#define GPTOSS_NO_NCCL_OP(name) \
  GPTOSS_OP(name) { no_nccl(#name); }
GPTOSS_NO_NCCL_OP(ncclVersion)
GPTOSS_NO_NCCL_OP(ncclGetUniqueId)
GPTOSS_NO_NCCL_OP(ncclCommInitRank)
GPTOSS_NO_NCCL_OP(ncclCommDestroy)
GPTOSS_NO_NCCL_OP(ncclCommAbort)
GPTOSS_NO_NCCL_OP(ncclAllReduce)
GPTOSS_NO_NCCL_OP(ncclAllGather)
GPTOSS_NO_NCCL_OP(ncclReduceScatter)
GPTOSS_NO_NCCL_OP(ncclBroadcast)
GPTOSS_NO_NCCL_OP(ncclSendRecv)
GPTOSS_NO_NCCL_OP(ncclCheckAsync)
GPTOSS_NO_NCCL_OP(ncclSynchronize)
GPTOSS_NO_NCCL_OP(ncclSetPhase)

#else

namespace nc = gptoss::cuda::nccl;

static nc::Comm* comm_arg(const Napi::CallbackInfo& info, const char* op) {
  if (info.Length() < 1 || !info[0].IsExternal()) fail(op, ": argument comm must be an NCCL communicator");
  nc::Comm* c = info[0].As<Napi::External<nc::Comm>>().Data();
  if (!nc::comm_live(c)) fail(op, ": the NCCL communicator was destroyed or aborted");
  return c;
}

static nc::Reduce reduce_arg(const Napi::CallbackInfo& info, size_t i, const char* op) {
  std::string s = str_arg(info, i, op, "op");
  if (s == "sum") return nc::Reduce::Sum;
  if (s == "avg") return nc::Reduce::Avg;
  if (s == "max") return nc::Reduce::Max;
  if (s == "min") return nc::Reduce::Min;
  fail(op, ": unknown reduction '", s, "' (expected sum, avg, max or min)");
}

// "ncclAllReduce(send f32[4, 8] on cuda:0, recv f32[4, 8] on cuda:0)": every message names the shapes.
static std::string what(const char* op, const Tensor& send, const Tensor& recv) {
  return std::string(op) + "(send " + send.describe() + ", recv " + recv.describe() + ")";
}

static void check_tensor(const char* op, const char* name, const Tensor& t, nc::Comm* c) {
  GPTOSS_CHECK(t.device == nc::comm_device(c), op, ": ", name, " is ", t.describe(), " but the communicator of rank ",
               nc::comm_rank(c), " is on cuda:", nc::comm_device(c));
  GPTOSS_CHECK(t.dtype == DType::BF16 || t.dtype == DType::F32 || t.dtype == DType::I32 || t.dtype == DType::U8, op,
               ": ", name, " is ", t.describe(), " (NCCL moves bf16, f32, i32 or u8)");
}

static void check_pair(const char* op, const Tensor& send, const Tensor& recv, nc::Comm* c, int64_t send_mult,
                       int64_t recv_mult) {
  check_tensor(op, "send", send, c);
  check_tensor(op, "recv", recv, c);
  GPTOSS_CHECK(send.dtype == recv.dtype, op, ": send is ", send.describe(), " but recv is ", recv.describe(),
               " (dtypes differ)");
  GPTOSS_CHECK(send.numel() * send_mult == recv.numel() * recv_mult, op, ": send is ", send.describe(), " and recv is ",
               recv.describe(), "; with ", nc::comm_size(c), " ranks recv must hold ",
               send_mult == recv_mult ? "as many elements as send"
               : recv_mult == 1       ? "ranks x send elements"
                                      : "send / ranks elements",
               " (", send.numel() * send_mult / recv_mult, ")");
}

GPTOSS_OP(ncclVersion) { return Napi::String::New(info.Env(), nc::version()); }

GPTOSS_OP(ncclGetUniqueId) {
  Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::New(info.Env(), nc::kUniqueIdBytes);
  nc::unique_id(b.Data());
  return b;
}

GPTOSS_OP(ncclCommInitRank) {
  const char* op = "ncclCommInitRank";
  if (info.Length() < 1 || !info[0].IsTypedArray()) fail(op, ": argument id must be a 128-byte Buffer");
  auto ta = info[0].As<Napi::TypedArray>();
  GPTOSS_CHECK(ta.ByteLength() == nc::kUniqueIdBytes, op, ": id must have ", nc::kUniqueIdBytes, " bytes, got ",
               ta.ByteLength());
  const void* id = static_cast<const char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  int nranks = static_cast<int>(int_arg(info, 1, op, "nranks"));
  int rank = static_cast<int>(int_arg(info, 2, op, "rank"));
  int device = static_cast<int>(int_arg(info, 3, op, "device"));
  GPTOSS_CHECK(nranks >= 1 && rank >= 0 && rank < nranks, op, ": rank ", rank, " is not in [0, ", nranks, ")");
  int count = cuda::device_count();
  GPTOSS_CHECK(device >= 0 && device < count, op, ": cuda:", device, " does not exist (", count,
               " CUDA device(s) visible)");
  double watchdog_ms = 0;
  if (info.Length() > 4 && !info[4].IsUndefined()) {
    GPTOSS_CHECK(info[4].IsNumber() && info[4].As<Napi::Number>().DoubleValue() >= 0, op,
                 ": argument watchdogMs must be a non-negative number of milliseconds");
    watchdog_ms = info[4].As<Napi::Number>().DoubleValue();
  }
  nc::Comm* c = nc::comm_init(id, nranks, rank, device, watchdog_ms);
  return Napi::External<nc::Comm>::New(info.Env(), c, [](Napi::Env, nc::Comm* p) { nc::comm_free(p); });
}

GPTOSS_OP(ncclCommDestroy) {
  nc::comm_destroy(comm_arg(info, "ncclCommDestroy"));
  return info.Env().Undefined();
}

GPTOSS_OP(ncclCommAbort) {
  if (info.Length() < 1 || !info[0].IsExternal()) fail("ncclCommAbort: argument comm must be an NCCL communicator");
  nc::comm_abort(info[0].As<Napi::External<nc::Comm>>().Data());
  return info.Env().Undefined();
}

// The optional stream argument of ncclAllGather/ncclReduceScatter: 'compute' (default) or 'comm'.
static bool on_comm_arg(const Napi::CallbackInfo& info, size_t i, const char* op) {
  if (i >= info.Length() || info[i].IsUndefined()) return false;
  const std::string s = str_arg(info, i, op, "stream");
  if (s != "compute" && s != "comm") fail(op, ": stream must be 'compute' or 'comm', got '", s, "'");
  return s == "comm";
}

GPTOSS_OP(ncclAllReduce) {
  const char* op = "ncclAllReduce";
  nc::Comm* c = comm_arg(info, op);
  Tensor send = tensor_arg(info, 1, op, "send"), recv = tensor_arg(info, 2, op, "recv");
  nc::Reduce r = reduce_arg(info, 3, op);
  check_pair(op, send, recv, c, 1, 1);
  nc::all_reduce(c, send, recv, r, what(op, send, recv));
  return info.Env().Undefined();
}

GPTOSS_OP(ncclAllGather) {
  const char* op = "ncclAllGather";
  nc::Comm* c = comm_arg(info, op);
  Tensor send = tensor_arg(info, 1, op, "send"), recv = tensor_arg(info, 2, op, "recv");
  check_pair(op, send, recv, c, nc::comm_size(c), 1);
  nc::all_gather(c, send, recv, what(op, send, recv), on_comm_arg(info, 3, op));
  return info.Env().Undefined();
}

GPTOSS_OP(ncclReduceScatter) {
  const char* op = "ncclReduceScatter";
  nc::Comm* c = comm_arg(info, op);
  Tensor send = tensor_arg(info, 1, op, "send"), recv = tensor_arg(info, 2, op, "recv");
  nc::Reduce r = reduce_arg(info, 3, op);
  check_pair(op, send, recv, c, 1, nc::comm_size(c));
  nc::reduce_scatter(c, send, recv, r, what(op, send, recv), on_comm_arg(info, 4, op));
  return info.Env().Undefined();
}

GPTOSS_OP(ncclBroadcast) {
  const char* op = "ncclBroadcast";
  nc::Comm* c = comm_arg(info, op);
  Tensor send = tensor_arg(info, 1, op, "send"), recv = tensor_arg(info, 2, op, "recv");
  int root = static_cast<int>(int_arg(info, 3, op, "root"));
  GPTOSS_CHECK(root >= 0 && root < nc::comm_size(c), op, ": root ", root, " is not a rank in [0, ", nc::comm_size(c), ")");
  check_pair(op, send, recv, c, 1, 1);
  nc::broadcast(c, send, recv, root, what(op, send, recv));
  return info.Env().Undefined();
}

GPTOSS_OP(ncclSendRecv) {
  const char* op = "ncclSendRecv";
  nc::Comm* c = comm_arg(info, op);
  std::string kinds = str_arg(info, 1, op, "kinds");
  if (info.Length() < 3 || !info[2].IsArray()) fail(op, ": argument peers must be an array of ranks");
  Napi::Array peers = info[2].As<Napi::Array>();
  GPTOSS_CHECK(peers.Length() == kinds.size() && info.Length() == 3 + kinds.size(), op, ": ", kinds.size(),
               " kinds, ", peers.Length(), " peers and ", info.Length() - 3, " tensors (they must agree)");
  std::vector<nc::P2P> ops;
  std::string desc = std::string(op) + "(";
  for (size_t i = 0; i < kinds.size(); i++) {
    GPTOSS_CHECK(kinds[i] == 's' || kinds[i] == 'r', op, ": kinds must be made of 's' and 'r', got '", kinds, "'");
    bool is_send = kinds[i] == 's';
    Tensor t = tensor_arg(info, 3 + i, op, is_send ? "send" : "recv");
    Napi::Value pv = peers.Get(static_cast<uint32_t>(i));
    GPTOSS_CHECK(pv.IsNumber(), op, ": peers[", i, "] must be a rank");
    int peer = pv.As<Napi::Number>().Int32Value();
    GPTOSS_CHECK(peer >= 0 && peer < nc::comm_size(c) && peer != nc::comm_rank(c), op, ": peer ", peer,
                 " is not another rank in [0, ", nc::comm_size(c), ") (this is rank ", nc::comm_rank(c), ")");
    check_tensor(op, is_send ? "send" : "recv", t, c);
    desc += std::string(i ? ", " : "") + (is_send ? "send " : "recv ") + t.describe() + (is_send ? " to " : " from ") +
            std::to_string(peer);
    ops.push_back({is_send, t, peer});
  }
  desc += ")";
  nc::send_recv(c, ops, desc);
  return info.Env().Undefined();
}

GPTOSS_OP(ncclCheckAsync) {
  nc::check_async(comm_arg(info, "ncclCheckAsync"), "ncclCheckAsync");
  return info.Env().Undefined();
}

GPTOSS_OP(ncclSetPhase) {
  nc::set_phase(comm_arg(info, "ncclSetPhase"), str_arg(info, 1, "ncclSetPhase", "phase"));
  return info.Env().Undefined();
}

GPTOSS_OP(ncclSynchronize) {
  nc::Comm* c = comm_arg(info, "ncclSynchronize");
  double timeout = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : 0;
  nc::synchronize(c, timeout, "ncclSynchronize");
  return info.Env().Undefined();
}

#endif
