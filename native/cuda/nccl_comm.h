// nccl_comm.h: the NCCL backend seen from code that must not include NCCL or CUDA headers (the bindings).
// Implemented by native/cuda/nccl.cc, compiled only in CUDA builds (GPTOSS_WITH_NCCL defined).
//
// Every collective is enqueued on the compute stream of the communicator's device (stream(device) in
// device.h), so it is ordered after the kernels that produced its inputs and before those that consume its
// outputs, with no host synchronisation. After enqueueing, the communicator's asynchronous error state is
// polled, so a failure seen by NCCL (a peer gone, a network error) surfaces as a gptoss::Error naming the
// collective and the tensor shapes.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "../common/tensor.h"

namespace gptoss::cuda::nccl {

constexpr size_t kUniqueIdBytes = 128;  // sizeof(ncclUniqueId)

std::string version();          // e.g. "2.28.3"
void unique_id(void* out);      // writes kUniqueIdBytes bytes

struct Comm;  // opaque: ncclComm_t plus its device, rank and size

// Collective over all `nranks` processes (each calls it with the same id); blocks until all have joined.
// watchdog_ms > 0 starts the watchdog: a collective not complete that long after it was enqueued, or an asynchronous
// NCCL error, aborts the communicator and ends the process (exit code 124) with a message on stderr naming the
// process's RANK, the collective and the phase (set_phase).
Comm* comm_init(const void* id, int nranks, int rank, int device, double watchdog_ms);
// Labels the collectives enqueued from now on (the watchdog's message names it), e.g. "train".
void set_phase(Comm* c, const std::string& phase);
void comm_destroy(Comm* c);  // waits for pending work, then frees (collective: every rank must call it)
void comm_abort(Comm* c);    // frees at once, pending work is abandoned (local)
void comm_free(Comm* c);     // deletes the handle (aborts the communicator if still live)
bool comm_live(const Comm* c);
int comm_device(const Comm* c);
int comm_rank(const Comm* c);
int comm_size(const Comm* c);

enum class Reduce { Sum, Avg, Max, Min };

// Element counts: all_reduce/broadcast send.numel == recv.numel; all_gather recv = size x send;
// reduce_scatter send = size x recv. The caller has checked dtypes, devices and counts.
void all_reduce(Comm* c, const Tensor& send, const Tensor& recv, Reduce op, const std::string& what);
// on_comm: enqueue on the device's communication stream (runtime's comm_stream) instead of the compute stream; the
// caller orders it against compute with events (the sharded trainer's prefetched gathers and its reduce-scatters).
void all_gather(Comm* c, const Tensor& send, const Tensor& recv, const std::string& what, bool on_comm = false);
void reduce_scatter(Comm* c, const Tensor& send, const Tensor& recv, Reduce op, const std::string& what,
                    bool on_comm = false);
void broadcast(Comm* c, const Tensor& send, const Tensor& recv, int root, const std::string& what);

struct P2P {
  bool is_send;
  Tensor tensor;
  int peer;
};
// All sends and receives in one NCCL group (so a pair of ranks may exchange without deadlock).
void send_recv(Comm* c, const std::vector<P2P>& ops, const std::string& what);

// Throws if the communicator has recorded an asynchronous error.
void check_async(Comm* c, const std::string& what);
// Waits for the device stream, polling the asynchronous error state; throws after timeout_ms (<= 0: never).
void synchronize(Comm* c, double timeout_ms, const std::string& what);

}  // namespace gptoss::cuda::nccl
