// native-ops.ts: the typed contract of the addon (build/Release/gptoss.node): the tensor handle, the opaque
// handles, and one entry per op that native/bindings/*.cc registers with GPTOSS_OP(name), with the argument and
// result types the binding reads and returns. Positional arguments follow the C++ argument indices; `null` (or an
// omitted trailing argument) is what the bindings accept for an optional tensor.
//
// Every build registers every op: a CPU-only build keeps the CUDA runtime ops (device_stub.cc: deviceCount()
// returns 0, the rest throw "built without the CUDA backend") and the NCCL ops (collectives.cc: each throws
// "built without NCCL"). NATIVE_OP_NAMES lists the names at run time; the type below proves it equals
// `keyof NativeOps`, and test/cpu/native-ops.test.ts checks it against the built addon and the binding sources.
// The wrappers in src/ops/ and src/tensor.ts are the intended callers; calling these directly skips the
// TypeScript-side checks those wrappers add.

export type DType = 'bf16' | 'f32' | 'i32' | 'u8';
/** The dtypes the float ops produce (gradients, casts, GEMM outputs). */
export type FloatDType = 'bf16' | 'f32';

/** The raw tensor handle the addon hands out (see native/bindings/binding.h). */
export interface NativeTensor {
  readonly shape: number[];
  readonly dtype: DType;
  /** 'cpu' or 'cuda:N'. */
  readonly device: string;
  readonly disposed: boolean;
  /** The storage is page-locked host memory (asked for with `pinned` in a CUDA build with a visible device). */
  readonly pinned: boolean;
  dispose(): void;
  /** A fresh ArrayBuffer with the bytes (waits for the device). */
  toBuffer(): ArrayBuffer;
  /** Same storage, another shape with the same element count. */
  view(shape: readonly number[]): NativeTensor;
  /** Rows [start, end) of the first dimension, sharing storage. */
  slice(start: number, end: number): NativeTensor;
  /** Copies a tensor (any device, same dtype and element count) or host bytes of the same size into this one. */
  copyFrom(src: TensorArg | ArrayBuffer | NodeJS.TypedArray): void;
  /** As copyFrom(tensor) without waiting: a host side must be pinned; enqueued on the device's compute stream. */
  copyFromAsync(src: TensorArg): void;
  /** A copy on device `device` (-1 = cpu, N = cuda:N). */
  to(device: number): NativeTensor;
  /** Moves the storage's bytes (every view's) to host memory and frees the device block; ops then refuse it. */
  pageOut(): void;
  /** Brings paged-out bytes back to a fresh block on the tensor's device. */
  pageIn(): void;
  readonly pagedOut: boolean;
  sameStorage(other: TensorArg): boolean;
}

/**
 * What a tensor argument accepts: the handle, or an object that keeps it in `native` (the TS Tensor), which the
 * binding unwraps (binding.cc, tensor_arg).
 */
export type TensorArg = NativeTensor | { readonly native: NativeTensor };

/**
 * A device's streams: 'compute' (every op) and 'comm' (collectives issued beside compute; native/cuda/runtime.cu).
 * Work on 'comm' is ordered against compute only through events.
 */
export type StreamName = 'compute' | 'comm';

declare const nativeEventBrand: unique symbol;
/** A cudaEvent_t wrapped in a Node-API External (destroyed when garbage collected). */
export interface NativeEvent {
  readonly [nativeEventBrand]: true;
}

declare const ncclCommBrand: unique symbol;
/** An NCCL communicator wrapped in a Node-API External (aborted when garbage collected). */
export interface NcclComm {
  readonly [ncclCommBrand]: true;
}

export type NcclReduceOp = 'sum' | 'avg' | 'max' | 'min';

/** The caching allocator's counters of one CUDA device, in bytes and counts. */
export interface NativeMemoryStats {
  allocated: number;
  reserved: number;
  peakAllocated: number;
  numAllocs: number;
  numCudaMallocs: number;
  /** cudaMalloc ran out of memory and cached blocks were freed for that request (each synchronises the device). */
  numPartialReleases: number;
  /** ... and it still ran out: every cached block was freed. */
  numCacheFlushes: number;
}

/** What moeForward saves for moeBackward (native/cpu/moe.h, MoeSaved), plus y. Np >= T·topK rows. */
export interface NativeMoeForward {
  /** bf16 [T, H] (plus the residual when one was given). */
  y: NativeTensor;
  /** bf16 [T, H]: the input (a view). */
  x: NativeTensor;
  /** i32 [T, k]. */
  topkIdx: NativeTensor;
  /** f32 [T, k]. */
  topkW: NativeTensor;
  /** i32 [E]. */
  counts: NativeTensor;
  /** i32 [E + 1]. */
  offsets: NativeTensor;
  /** i32 [Np]. */
  permTok: NativeTensor;
  /** i32 [T·k]. */
  slotPos: NativeTensor;
  /** bf16 [Np, 2I] (f32 in exact mode). */
  gu: NativeTensor;
  /** bf16 [Np, I] (f32 in exact mode). */
  h: NativeTensor;
  /** bf16 [Np, H] (f32 in exact mode). */
  yp: NativeTensor;
  /** CUDA cuBLAS paths: bf16 [Np, H], the gathered rows. */
  xp?: NativeTensor;
  /** CUDA cuBLAS paths: i32 [E + 1] on the cpu. */
  offsetsHost?: NativeTensor;
  /** The expert-GEMM strategy that ran (native/cuda/moe.cu, plan_expert_gemms; 'cpu' on the CPU). */
  expertGemms: ExpertGemmsRun;
  /** With the pre-norm (normO): bf16 [T, H] h = x + o, the normed rows (= x of the saved state) and f32 [T] rstd. */
  normH?: NativeTensor;
  normY?: NativeTensor;
  normRstd?: NativeTensor;
}

/** Which expert-GEMM strategy a moeForward ran. */
export type ExpertGemmsRun = 'cpu' | 'decode' | 'grouped' | 'slabs' | 'per-expert';

/** moeBackward's gradients, all f32. */
export interface NativeMoeGrads {
  dx: NativeTensor;
  dRouterW: NativeTensor;
  dRouterB: NativeTensor;
  /** Absent with weightGrads false. */
  dGateUpW?: NativeTensor;
  dGateUpB: NativeTensor;
  /** Absent with weightGrads false. */
  dDownW?: NativeTensor;
  dDownB: NativeTensor;
  /** The expert adapters' gradients (present when the adapters were passed). */
  dLoraGateUpA?: NativeTensor;
  dLoraGateUpB?: NativeTensor;
  dLoraDownA?: NativeTensor;
  dLoraDownB?: NativeTensor;
}

type OptTensor = TensorArg | null | undefined;

/** tokenLogprobsBackward's arguments before needDHidden (its two overloads differ only in that flag). */
type TokenLogprobsBackwardArgs = [
  hidden: TensorArg,
  lmHead: TensorArg,
  targets: TensorArg,
  lse: TensorArg,
  dLogprobs: TensorArg,
  temperature: number,
  chunk: number,
  dLmHead: NativeTensor | null,
  dEntropy: OptTensor,
  entropy: OptTensor,
];

/** Every op the addon registers (GPTOSS_OP in native/bindings/*.cc), by binding file. */
export interface NativeOps {
  // ---- tensor_binding.cc: tensors and the runtime ----
  /**
   * A new tensor on device -1 (cpu) or N (cuda:N); zero-filled when `zero`; `pinned` (host only): page-locked
   * memory in a CUDA build with a visible device, ordinary memory otherwise.
   */
  empty(shape: readonly number[], dtype: DType, device: number, zero?: boolean, pinned?: boolean): NativeTensor;
  /** A new tensor holding a copy of `data` (its byte size must match shape and dtype). */
  fromBuffer(data: ArrayBuffer | NodeJS.TypedArray, shape: readonly number[], dtype: DType, device: number): NativeTensor;
  /** A view of consecutive row ranges of one storage as one tensor, or null when they are not. */
  joinRows(parts: readonly TensorArg[]): NativeTensor | null;
  cudaCompiled(): boolean;
  /** Visible CUDA devices (0 in a CPU-only build). */
  deviceCount(): number;
  deviceName(device: number): string;
  synchronize(device: number): void;
  memoryStats(device: number): NativeMemoryStats;
  resetPeakMemory(device: number): void;
  emptyCache(device: number): void;
  /** Threads of the CPU backend's pool. */
  numThreads(): number;
  setNumThreads(n: number): void;
  eventCreate(device: number, timing?: boolean): NativeEvent;
  /** The event completes after the work queued so far on the device's compute (default) or comm stream. */
  eventRecord(event: NativeEvent, device: number, stream?: StreamName): void;
  /** The device's compute (default) or comm stream waits for the event. */
  eventWait(event: NativeEvent, device: number, stream?: StreamName): void;
  eventSynchronize(event: NativeEvent): void;
  eventQuery(event: NativeEvent): boolean;
  eventElapsedMs(start: NativeEvent, end: NativeEvent): number;
  /** Batch-invariant kernels on or off, process-wide (native/common/device.h; setBatchInvariant in src/tensor.ts). */
  setBatchInvariant(on: boolean): void;
  batchInvariant(): boolean;
  /** Kernel launches (our kernels' launch checks, cuBLAS calls, async copies/memsets) so far, all devices; 0 without CUDA. */
  launchCount(): number;
  /** cuBLASLt algorithm tunings (the first batched GEMM of a problem times candidates) so far; 0 without CUDA. */
  gemmTuneCount(): number;
  /** Device-side phase marks (native/common/device.h profile_*): enable/disable (clears them). */
  profileEnable(device: number, on: boolean): void;
  /** Starts a segment called `name` at this point of the compute stream (while enabled). */
  profileMark(device: number, name: string): void;
  /** The segments since enabling or the last take, in order, with their GPU milliseconds (waits for the device). */
  profileTake(device: number): { name: string; ms: number }[];
  /** CUDA graphs of a device's compute stream (device.h): a private pool of the caching allocator (an id). */
  graphPoolCreate(device: number): number;
  graphPoolRelease(device: number, pool: number): void;
  /** Captures the compute stream's work into a graph until captureEnd; allocations come from the pool meanwhile. */
  captureBegin(device: number, pool: number): void;
  /** Ends and instantiates the capture: a graph id. Fails (naming the CUDA error) when an op synchronised during it. */
  captureEnd(device: number): number;
  /** Ends a capture that failed midway (no-op when not capturing). */
  captureAbort(device: number): void;
  /** Enqueues one replay of the graph on the device's compute stream. */
  graphLaunch(graph: number, device: number): void;
  /** Nodes (kernels, copies, memsets) of the graph. */
  graphNodeCount(graph: number): number;
  graphDestroy(graph: number): void;

  // ---- elementwise.cc ----
  elementwiseAdd(a: TensorArg, b: TensorArg): NativeTensor;
  elementwiseAddInPlace(a: TensorArg, b: TensorArg): void;
  elementwiseScale(a: TensorArg, s: number): NativeTensor;
  elementwiseScaleInPlace(a: TensorArg, s: number): void;
  elementwiseCast(a: TensorArg, dtype: DType): NativeTensor;
  elementwiseFill(a: TensorArg, value: number): void;
  /** parts [R, S, W] -> [S, columns] (default R * W): the column slices side by side, cut at `columns`. */
  concatColumns(parts: TensorArg, columns?: number): NativeTensor;
  dropoutForward(x: TensorArg, p: number, seed: number, salt: number): NativeTensor;

  // ---- embedding.cc ----
  /** weight [V, H], ids i32 [...] -> weight's dtype [..., H]. */
  embeddingForward(weight: TensorArg, ids: TensorArg, checked?: boolean): NativeTensor;
  /** weight [W, H] = vocabulary rows vocabStart.., ids i32 [...] -> [..., H], zero rows for ids outside the slice. */
  embeddingForwardSlice(weight: TensorArg, ids: TensorArg, vocabStart: number): NativeTensor;
  /** -> f32 [vocabSize, H]: fresh, or `into` itself (f32 [vocabSize, H]) with the gradient added to it. */
  embeddingBackward(dOut: TensorArg, ids: TensorArg, vocabSize: number, into?: OptTensor): NativeTensor;

  // ---- gemm.cc ----
  /** Returns `out` itself when given, else a fresh [M, N] tensor of outDtype (default a's dtype). */
  matmul(
    a: TensorArg,
    b: TensorArg,
    bias: OptTensor,
    out: NativeTensor | null,
    transA: boolean,
    transB: boolean,
    alpha: number,
    accumulate: boolean,
    outDtype?: FloatDType | null,
  ): NativeTensor;

  // ---- kvcache.cc ----
  scatterRows(dst: TensorArg, src: TensorArg, index: TensorArg): void;

  // ---- logprob.cc (chunk 0 = the default chunk) ----
  tokenLogprobsForward(
    hidden: TensorArg,
    lmHead: TensorArg,
    targets: TensorArg,
    temperature: number,
    chunk: number,
  ): { logprobs: NativeTensor; entropy: NativeTensor; lse: NativeTensor };
  /**
   * dLmHead, when given, is accumulated into and returned; dEntropy and entropy come together or not at all.
   * needDHidden false skips dHidden (only dLmHead comes back).
   */
  tokenLogprobsBackward(
    ...args: [...TokenLogprobsBackwardArgs, needDHidden?: true, needDLmHead?: true]
  ): { dHidden: NativeTensor; dLmHead: NativeTensor };
  tokenLogprobsBackward(...args: [...TokenLogprobsBackwardArgs, needDHidden: false]): { dLmHead: NativeTensor };
  /** needDLmHead false: a frozen LM head (no [V, H] gradient); dLmHead must then be null. */
  tokenLogprobsBackward(...args: [...TokenLogprobsBackwardArgs, needDHidden: true, needDLmHead: false]): { dHidden: NativeTensor };
  /** The forward of a chunk of tokens keeping its f32 [T, V] logits (tokenLogprobsBackwardFromLogits takes them). */
  tokenLogprobsForwardKeep(
    hidden: TensorArg,
    lmHead: TensorArg,
    targets: TensorArg,
    temperature: number,
    chunk: number,
  ): { logprobs: NativeTensor; entropy: NativeTensor; lse: NativeTensor; logits: NativeTensor };
  /** dHidden f32 [T, H] is overwritten; dLmHead f32 [V, H] accumulated into (null: a frozen head). */
  tokenLogprobsBackwardFromLogits(
    logits: TensorArg,
    hidden: TensorArg,
    lmHead: TensorArg,
    targets: TensorArg,
    lse: TensorArg,
    dLogprobs: TensorArg,
    temperature: number,
    chunk: number,
    dHidden: TensorArg,
    dLmHead: TensorArg | null,
  ): void;

  // ---- moe.cc ----
  moeForward(
    x: TensorArg,
    routerW: TensorArg,
    routerB: TensorArg,
    gateUpW: TensorArg,
    gateUpB: TensorArg,
    downW: TensorArg,
    downB: TensorArg,
    topK: number,
    limit: number,
    exact?: boolean,
    residual?: OptTensor,
    expertGemms?: 'auto' | 'decode' | 'grouped',
    loraGateUpA?: OptTensor,
    loraGateUpB?: OptTensor,
    loraDownA?: OptTensor,
    loraDownB?: OptTensor,
    loraScale?: number,
    normO?: OptTensor,
    normW?: OptTensor,
    normEps?: number,
  ): NativeMoeForward;
  /** The saved tensors of moeForward come back positionally; accGateUpW/accDownW both or neither. */
  moeBackward(
    dy: TensorArg,
    routerW: TensorArg,
    routerB: TensorArg,
    gateUpW: TensorArg,
    gateUpB: TensorArg,
    downW: TensorArg,
    downB: TensorArg,
    x: TensorArg,
    topkIdx: TensorArg,
    topkW: TensorArg,
    counts: TensorArg,
    offsets: TensorArg,
    permTok: TensorArg,
    slotPos: TensorArg,
    gu: TensorArg,
    h: TensorArg,
    yp: TensorArg,
    topK: number,
    limit: number,
    exact: boolean,
    accGateUpW?: OptTensor,
    accDownW?: OptTensor,
    xp?: OptTensor,
    offsetsHost?: OptTensor,
    weightGrads?: boolean,
    loraGateUpA?: OptTensor,
    loraGateUpB?: OptTensor,
    loraDownA?: OptTensor,
    loraDownB?: OptTensor,
    loraScale?: number,
    /** accGateUpW/accDownW hold no gradient yet: written into, not added to. */
    accOverwrite?: boolean,
  ): NativeMoeGrads;

  // ---- optim.cc ----
  /** In place; step is 1-based; the step reads grad * gradScale (the pending grad-clip factor), grad is unchanged. */
  adamwStep(
    master: TensorArg,
    grad: TensorArg,
    m: TensorArg,
    v: TensorArg,
    bf16: OptTensor,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    step: number,
    gradScale: number,
  ): void;
  /** acc f32 [1] += Σ t². */
  sumOfSquaresInto(t: TensorArg, acc: TensorArg): void;
  optimScaleInPlace(t: TensorArg, s: number): void;

  // ---- rmsnorm.cc ----
  rmsnormForward(x: TensorArg, w: TensorArg, eps: number): { y: NativeTensor; rstd: NativeTensor };
  addRmsnorm(x: TensorArg, o: TensorArg, w: TensorArg, eps: number): { h: NativeTensor; y: NativeTensor; rstd: NativeTensor };
  rmsnormBackward(
    dy: TensorArg,
    x: TensorArg,
    w: TensorArg,
    rstd: TensorArg,
    residual?: OptTensor,
  ): { dx: NativeTensor; dw: NativeTensor };

  // ---- rope.cc ----
  ropeForward(x: TensorArg, positions: TensorArg, invFreq: TensorArg, attentionScaling: number): NativeTensor;
  ropeBackward(dy: TensorArg, positions: TensorArg, invFreq: TensorArg, attentionScaling: number): NativeTensor;
  /** kCache/vCache [M, Hkv, D] and slots i32 [T] (all three or none): the k and v rows also land in the caches. */
  ropeQkvSplit(
    qkv: TensorArg,
    positions: TensorArg,
    invFreq: TensorArg,
    attentionScaling: number,
    numHeads: number,
    numKvHeads: number,
    kCache?: TensorArg,
    vCache?: TensorArg,
    slots?: TensorArg,
  ): { q: NativeTensor; k: NativeTensor; v: NativeTensor };
  /** undefined where the fused CUDA kernel does not take the call (the caller runs the linear and ropeQkvSplit). */
  ropeQkvProject(
    x: TensorArg,
    w: TensorArg,
    bias: TensorArg | undefined,
    positions: TensorArg,
    invFreq: TensorArg,
    attentionScaling: number,
    numHeads: number,
    numKvHeads: number,
    kCache?: TensorArg,
    vCache?: TensorArg,
    slots?: TensorArg,
  ): { q: NativeTensor; k: NativeTensor; v: NativeTensor } | undefined;
  ropeQkvPack(
    dq: TensorArg,
    dk: TensorArg,
    dv: TensorArg,
    positions: TensorArg,
    invFreq: TensorArg,
    attentionScaling: number,
    outDtype: FloatDType,
  ): NativeTensor;

  // ---- sampling.cc ----
  sample(
    logits: TensorArg,
    temperature: number,
    topP: number,
    topK: number,
    seed: number,
    step: number,
  ): { tokens: NativeTensor; logprobs: NativeTensor };
  /** logits f32 or bf16 [B, V]; temperature f32 [B], topP f32 [B], topK i32 [B], seeds i32 [B], counters i32 [B];
   *  strategy (CUDA logits only; default 'auto'): the kernel layout, a test knob (see SampleRowsOptions). */
  sampleRows(
    logits: TensorArg,
    temperature: TensorArg,
    topP: TensorArg,
    topK: TensorArg,
    seeds: TensorArg,
    counters: TensorArg,
    strategy?: 'auto' | 'single' | 'split',
  ): { tokens: NativeTensor; logprobs: NativeTensor };
  /** A vocabulary slice's logits f32|bf16 [S, W] (ids vocabStart..) -> u8 [S, C * 32] row summaries (C: 1 on the CPU). */
  sampleParts(
    logits: TensorArg,
    temperature: TensorArg,
    topP: TensorArg,
    topK: TensorArg,
    seeds: TensorArg,
    counters: TensorArg,
    vocabStart: number,
    vocabSize: number,
  ): NativeTensor;
  /** parts u8 [R, S, C * 32] -> tokens i32 [S] (-1 for threshold rows), logprobs f32 [S] (NaN for them). */
  sampleCombine(parts: TensorArg, temperature: TensorArg, topP: TensorArg, topK: TensorArg, vocabSize: number): { tokens: NativeTensor; logprobs: NativeTensor };

  // ---- swiglu.cc ----
  swigluForward(gu: TensorArg, limit: number, alpha: number): NativeTensor;
  swigluBackward(dh: TensorArg, gu: TensorArg, limit: number, alpha: number): NativeTensor;

  // ---- attention.cc ----
  attentionForward(
    q: TensorArg,
    k: TensorArg,
    v: TensorArg,
    cuSeqlens: TensorArg,
    seqUsed: OptTensor,
    sinks: OptTensor,
    maxSeqlen: number,
    window: number,
    scale: number,
  ): { out: NativeTensor; lse: NativeTensor };
  /** deterministic: omitted = true (the binding's default); dsinks is present when sinks were given. */
  attentionBackward(
    dOut: TensorArg,
    q: TensorArg,
    k: TensorArg,
    v: TensorArg,
    out: TensorArg,
    lse: TensorArg,
    cuSeqlens: TensorArg,
    seqUsed: OptTensor,
    sinks: OptTensor,
    maxSeqlen: number,
    window: number,
    scale: number,
    gradDtype: FloatDType,
    deterministic?: boolean,
  ): { dq: NativeTensor; dk: NativeTensor; dv: NativeTensor; dsinks?: NativeTensor };
  attentionDecode(
    q: TensorArg,
    kCache: TensorArg,
    vCache: TensorArg,
    seqLens: TensorArg,
    sinks: OptTensor,
    window: number,
    scale: number,
  ): NativeTensor;

  // ---- paged_attention.cc ----
  /** q [N, Hq, D], pools [numBlocks, blockSize, Hkv, D], blockTables i32 [B, M], contextLens i32 [B],
   *  queryStarts i32 [B+1] -> out [N, Hq, D]. */
  pagedAttention(
    q: TensorArg,
    kPool: TensorArg,
    vPool: TensorArg,
    blockTables: TensorArg,
    contextLens: TensorArg,
    queryStarts: TensorArg,
    sinks: OptTensor,
    window: number,
    scale: number,
  ): NativeTensor;

  // ---- collectives.cc (each throws "built without NCCL" in a build without it) ----
  ncclVersion(): string;
  /** 128 bytes. */
  ncclGetUniqueId(): Buffer;
  /** watchdogMs > 0: a native watchdog aborts the communicator and ends the process when a collective hangs. */
  ncclCommInitRank(id: NodeJS.TypedArray, nranks: number, rank: number, device: number, watchdogMs?: number): NcclComm;
  /** Labels the collectives enqueued next (the watchdog's message names the phase). */
  ncclSetPhase(comm: NcclComm, phase: string): void;
  ncclCommDestroy(comm: NcclComm): void;
  ncclCommAbort(comm: NcclComm): void;
  /** send may be recv (in place). */
  ncclAllReduce(comm: NcclComm, send: TensorArg, recv: TensorArg, op: NcclReduceOp): void;
  ncclAllGather(comm: NcclComm, send: TensorArg, recv: TensorArg, stream?: StreamName): void;
  ncclReduceScatter(comm: NcclComm, send: TensorArg, recv: TensorArg, op: NcclReduceOp, stream?: StreamName): void;
  ncclBroadcast(comm: NcclComm, send: TensorArg, recv: TensorArg, root: number): void;
  /** kinds: one 's' (send) or 'r' (recv) per tensor; peers: one rank per tensor; one NCCL group. */
  ncclSendRecv(comm: NcclComm, kinds: string, peers: readonly number[], ...tensors: TensorArg[]): void;
  ncclCheckAsync(comm: NcclComm): void;
  /** timeoutMs 0 or omitted: wait without a limit. */
  ncclSynchronize(comm: NcclComm, timeoutMs?: number): void;
}

/** What the addon was compiled with. */
export interface NativeFeatures {
  cuda: boolean;
  /** The CPU GEMM uses a system BLAS. */
  blas: boolean;
  nccl: boolean;
}

/** The addon's exports (native/bindings/addon.cc). */
export interface NativeAddon {
  ops: NativeOps;
  features: NativeFeatures;
}

/** Every key of NativeOps, at run time (checked against the addon at load and in test/cpu/native-ops.test.ts). */
export const NATIVE_OP_NAMES = [
  // tensor_binding.cc
  'empty',
  'fromBuffer',
  'joinRows',
  'cudaCompiled',
  'deviceCount',
  'deviceName',
  'synchronize',
  'memoryStats',
  'resetPeakMemory',
  'emptyCache',
  'numThreads',
  'setNumThreads',
  'eventCreate',
  'eventRecord',
  'eventWait',
  'eventSynchronize',
  'eventQuery',
  'eventElapsedMs',
  'setBatchInvariant',
  'batchInvariant',
  'launchCount',
  'gemmTuneCount',
  'profileEnable',
  'profileMark',
  'profileTake',
  'graphPoolCreate',
  'graphPoolRelease',
  'captureBegin',
  'captureEnd',
  'captureAbort',
  'graphLaunch',
  'graphNodeCount',
  'graphDestroy',
  // elementwise.cc
  'elementwiseAdd',
  'elementwiseAddInPlace',
  'elementwiseScale',
  'elementwiseScaleInPlace',
  'elementwiseCast',
  'elementwiseFill',
  'concatColumns',
  'dropoutForward',
  // embedding.cc
  'embeddingForward',
  'embeddingForwardSlice',
  'embeddingBackward',
  // gemm.cc
  'matmul',
  // kvcache.cc
  'scatterRows',
  // logprob.cc
  'tokenLogprobsForward',
  'tokenLogprobsBackward',
  'tokenLogprobsForwardKeep',
  'tokenLogprobsBackwardFromLogits',
  // moe.cc
  'moeForward',
  'moeBackward',
  // optim.cc
  'adamwStep',
  'sumOfSquaresInto',
  'optimScaleInPlace',
  // rmsnorm.cc
  'rmsnormForward',
  'addRmsnorm',
  'rmsnormBackward',
  // rope.cc
  'ropeForward',
  'ropeBackward',
  'ropeQkvSplit',
  'ropeQkvProject',
  'ropeQkvPack',
  // sampling.cc
  'sample',
  'sampleRows',
  'sampleParts',
  'sampleCombine',
  // swiglu.cc
  'swigluForward',
  'swigluBackward',
  // attention.cc
  'attentionForward',
  'attentionBackward',
  'attentionDecode',
  // paged_attention.cc
  'pagedAttention',
  // collectives.cc
  'ncclVersion',
  'ncclGetUniqueId',
  'ncclCommInitRank',
  'ncclCommDestroy',
  'ncclCommAbort',
  'ncclAllReduce',
  'ncclAllGather',
  'ncclReduceScatter',
  'ncclBroadcast',
  'ncclSendRecv',
  'ncclCheckAsync',
  'ncclSynchronize',
  'ncclSetPhase',
] as const satisfies readonly (keyof NativeOps)[];

// Compile-time proof that NATIVE_OP_NAMES names every op of NativeOps and nothing else (`satisfies` above only
// proves the second half). A missing name makes this alias an error.
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type Assert<T extends true> = T;
export type NativeOpNamesMatchInterface = Assert<Equal<(typeof NATIVE_OP_NAMES)[number], keyof NativeOps>>;
