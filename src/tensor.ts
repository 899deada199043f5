// tensor.ts: the typed Tensor over the addon's NativeTensor handle.
//
// A Tensor owns (or views) contiguous memory on 'cpu' or 'cuda:N' with dtype bf16/f32/i32/u8. Memory is freed by
// dispose() (or `using`), with the GC finaliser as a safety net. CUDA work is asynchronous on the device's
// stream; reading values back (toFloat32 etc.) waits for it.
import { native, defaultDevice, deviceIndex, type DType, type NativeEvent, type NativeMemoryStats, type NativeTensor, type StreamName } from './native.ts';

export type { DType, StreamName } from './native.ts';
export type Shape = readonly number[];

export interface TensorOptions {
  dtype?: DType;
  device?: string;
  /**
   * Host tensors (empty/zeros on 'cpu'): page-locked memory (cudaHostAlloc) when the addon has CUDA and a GPU is
   * visible, so copies to and from a device can be asynchronous (copyFromAsync); ordinary memory otherwise (a
   * CPU-only process has nothing to pin for; `pinned` on the tensor tells which). Refused for device tensors.
   */
  pinned?: boolean;
}

// Tensor tracking (GPTOSS_TRACK_TENSORS=1 or trackTensors(true)): every Tensor object not yet disposed is kept
// with its creation stack, so a test can find temporaries a code path forgot to dispose (on any backend)
// instead of leaving them to the GC. Debugging aid: tracked tensors are never garbage collected.
let tracking = process.env.GPTOSS_TRACK_TENSORS === '1';
const live = new Map<Tensor, string>();

export function trackTensors(on: boolean): void {
  tracking = on;
  if (!on) live.clear();
}

/** Tensors created and not disposed since tracking began (GPTOSS_TRACK_TENSORS=1; otherwise empty). */
export function liveTensors(): { tensor: Tensor; stack: string }[] {
  return [...live].filter(([t]) => !t.disposed).map(([tensor, stack]) => ({ tensor, stack }));
}

export class Tensor {
  /** The addon handle (the wrappers in src/ops/ pass it to the addon's ops; see TensorArg in native-ops.ts). */
  readonly native: NativeTensor;

  constructor(handle: NativeTensor) {
    if (tracking) live.set(this, new Error().stack ?? '');
    this.native = handle;
  }

  // ---- factories ------------------------------------------------------------------------------------------
  static empty(shape: Shape, opts: TensorOptions = {}): Tensor {
    return new Tensor(native().ops.empty([...shape], opts.dtype ?? 'f32', deviceIndex(opts.device ?? defaultDevice()), false, opts.pinned ?? false));
  }

  static zeros(shape: Shape, opts: TensorOptions = {}): Tensor {
    return new Tensor(native().ops.empty([...shape], opts.dtype ?? 'f32', deviceIndex(opts.device ?? defaultDevice()), true, opts.pinned ?? false));
  }

  /**
   * From host values. Float32Array/number[] data may target bf16 (rounded to nearest even) or f32; Int32Array
   * targets i32, Uint8Array u8, Uint16Array raw bf16 bits.
   */
  static from(data: ArrayLike<number> | Float32Array | Int32Array | Uint8Array | Uint16Array, shape: Shape, opts: TensorOptions = {}): Tensor {
    const dtype: DType =
      opts.dtype ??
      (data instanceof Int32Array ? 'i32' : data instanceof Uint8Array ? 'u8' : data instanceof Uint16Array ? 'bf16' : 'f32');
    const n = shape.reduce((a, b) => a * b, 1);
    if (data.length !== n) {
      throw new Error(`Tensor.from: ${data.length} values do not fill shape [${shape.join(', ')}] (${n} elements)`);
    }
    let buf: NodeJS.TypedArray;
    switch (dtype) {
      case 'f32':
        buf = data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>);
        break;
      case 'bf16':
        buf = data instanceof Uint16Array ? data : f32ToBf16Bits(data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>));
        break;
      case 'i32':
        buf = data instanceof Int32Array ? data : Int32Array.from(data as ArrayLike<number>);
        break;
      case 'u8':
        buf = data instanceof Uint8Array ? data : Uint8Array.from(data as ArrayLike<number>);
        break;
    }
    return new Tensor(native().ops.fromBuffer(buf, [...shape], dtype, deviceIndex(opts.device ?? defaultDevice())));
  }

  // ---- properties -------------------------------------------------------------------------------------------
  get shape(): number[] {
    return this.native.shape;
  }
  get dtype(): DType {
    return this.native.dtype;
  }
  get device(): string {
    return this.native.device;
  }
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  get disposed(): boolean {
    return this.native.disposed;
  }
  /** Page-locked host memory (see TensorOptions.pinned). */
  get pinned(): boolean {
    return this.native.pinned;
  }
  toString(): string {
    return `${this.dtype}[${this.shape.join(', ')}] on ${this.device}`;
  }

  // ---- views and copies -------------------------------------------------------------------------------------
  /** Same memory, another shape with the same element count. */
  view(shape: Shape): Tensor {
    return new Tensor(this.native.view([...shape]));
  }
  /** Rows [start, end) of the first dimension, sharing memory. */
  slice(start: number, end: number): Tensor {
    return new Tensor(this.native.slice(start, end));
  }
  /**
   * When `parts` are consecutive row ranges of one storage (as slices of one tensor are: same dtype, trailing shape
   * and device, each starting where the previous ends), a view of them as one tensor; otherwise null. The view
   * is a new handle (dispose it); it works whether or not a handle of the whole still exists.
   */
  static joinRows(parts: readonly Tensor[]): Tensor | null {
    const r = native().ops.joinRows(parts.map((t) => t.native));
    return r ? new Tensor(r) : null;
  }
  /** Copies src (a tensor on any device, or host values of the same byte size) into this tensor. */
  copyFrom(src: Tensor | ArrayBuffer | NodeJS.TypedArray): this {
    this.native.copyFrom(src instanceof Tensor ? src.native : src);
    return this;
  }
  /**
   * As copyFrom(src) without waiting for the device: a host side (this or src) must be pinned, and the copy is
   * enqueued on the device's compute stream. Do not read or overwrite the host side until the stream has passed
   * the copy (record a StreamEvent after it and synchronize that, or synchronize the device). Host to host copies
   * at once.
   */
  copyFromAsync(src: Tensor): this {
    this.native.copyFromAsync(src.native);
    return this;
  }
  /** A copy on `device`. */
  to(device: string): Tensor {
    return new Tensor(this.native.to(deviceIndex(device)));
  }
  clone(): Tensor {
    return this.to(this.device);
  }
  /**
   * Moves the bytes of this tensor's storage (so of every view of it) to host memory and frees its device block;
   * the tensor keeps its device and shape, and an op given it fails naming it until pageIn(). Idempotent. What an
   * engine asleep with its weights released does (Engine.sleep({ weights: true })).
   */
  pageOut(): this {
    this.native.pageOut();
    return this;
  }
  /** Brings paged-out bytes back to a fresh block on the tensor's device. Idempotent. */
  pageIn(): this {
    this.native.pageIn();
    return this;
  }
  get pagedOut(): boolean {
    return this.native.pagedOut;
  }
  dispose(): void {
    this.native.dispose();
    if (tracking) live.delete(this);
  }
  [Symbol.dispose](): void {
    this.dispose();
  }

  // ---- reading back -----------------------------------------------------------------------------------------
  /** Values as f32 (bf16 widened exactly; i32/u8 converted). Waits for the device. */
  toFloat32(): Float32Array {
    const buf = this.native.toBuffer();
    switch (this.dtype) {
      case 'f32':
        return new Float32Array(buf);
      case 'bf16':
        return bf16BitsToF32(new Uint16Array(buf));
      case 'i32':
        return Float32Array.from(new Int32Array(buf));
      case 'u8':
        return Float32Array.from(new Uint8Array(buf));
    }
  }
  toInt32(): Int32Array {
    if (this.dtype !== 'i32') throw new Error(`toInt32: tensor is ${this.toString()}`);
    return new Int32Array(this.native.toBuffer());
  }
  toUint8(): Uint8Array {
    if (this.dtype !== 'u8') throw new Error(`toUint8: tensor is ${this.toString()}`);
    return new Uint8Array(this.native.toBuffer());
  }
  /** Raw bytes (bf16 as bits). */
  toBuffer(): ArrayBuffer {
    return this.native.toBuffer();
  }
  /** A single value (the tensor must hold exactly one element). */
  item(): number {
    if (this.numel !== 1) throw new Error(`item: tensor ${this.toString()} does not hold exactly one value`);
    return this.toFloat32()[0]!;
  }
}

// ---- BF16 on the host ------------------------------------------------------------------------------------------
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The bf16 bits of f32 bits u: round to nearest even; a NaN stays a (quiet) NaN. */
function bf16BitsOf(u: number): number {
  if ((u & 0x7fffffff) > 0x7f800000) return (u >>> 16) | 0x40;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Round-to-nearest-even f32 -> bf16 bits (same as the native conversion and torch). */
export function f32ToBf16Bits(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    f32[0] = src[i]!;
    out[i] = bf16BitsOf(u32[0]!);
  }
  return out;
}

/** One value rounded to bf16 (as roundBf16 does for arrays), without allocating: for reference loops in tests. */
export function roundBf16Scalar(x: number): number {
  f32[0] = x;
  u32[0] = bf16BitsOf(u32[0]!) << 16;
  return f32[0]!;
}

export function bf16BitsToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const o32 = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) o32[i] = src[i]! << 16;
  return out;
}

/** Rounds every value through bf16 (what storing it in a bf16 tensor does). */
export function roundBf16(src: Float32Array): Float32Array {
  return bf16BitsToF32(f32ToBf16Bits(src));
}

// ---- runtime ---------------------------------------------------------------------------------------------------
/**
 * The caching allocator's counters of one CUDA device (bytes, counts); for 'cpu', the host tensors' (allocated,
 * its peak since the last reset, allocations; reserved = allocated, nothing cached).
 */
export type MemoryStats = NativeMemoryStats;

export function memoryStats(device: string): MemoryStats {
  return native().ops.memoryStats(deviceIndex(device));
}
export function resetPeakMemory(device: string): void {
  native().ops.resetPeakMemory(deviceIndex(device));
}
export function emptyCache(device: string): void {
  native().ops.emptyCache(deviceIndex(device));
}
/**
 * Batch-invariant kernels, process-wide (config `trainer.batch_invariant`; native/common/device.h). While on, a
 * token's forward through the decoder layers has the same bits whatever else is in the batch: an engine decode step
 * of any batch size, a prefill chunk, a packed training batch. The engine's log-probs are then the trainer's
 * `tokenLogprobs` up to the fp32 log-softmax reduction (true on-policy GRPO: the importance ratio is exactly 1 at
 * the first step). On CUDA the linears, the MoE and attention take size-independent kernels (slower: docs/
 * inference.md, "Batch-invariant mode"); LoRA adapters are not covered there (refused). The CPU kernels are
 * invariant either way. Set it before building engines or graphs: captured CUDA graphs keep the kernels they saw.
 */
export function setBatchInvariant(on: boolean): void {
  native().ops.setBatchInvariant(on);
}
export function batchInvariant(): boolean {
  return native().ops.batchInvariant();
}
/** Waits for all work queued on the device (no-op on cpu). */
export function synchronize(device: string): void {
  if (device !== 'cpu') native().ops.synchronize(deviceIndex(device));
}
export function cudaDeviceCount(): number {
  return native().features.cuda ? native().ops.deviceCount() : 0;
}

/** A CUDA event on a device's compute stream: ordering across devices and timing. */
export class CudaEvent {
  private readonly handle: NativeEvent;
  constructor(readonly device: string, timing = false) {
    this.handle = native().ops.eventCreate(deviceIndex(device), timing);
  }
  /** Completes after the work queued so far on the device's compute (default) or comm stream. */
  record(stream: StreamName = 'compute'): this {
    native().ops.eventRecord(this.handle, deviceIndex(this.device), stream);
    return this;
  }
  /** Makes `device`'s compute (default) or comm stream wait for this event. */
  waitOn(device: string, stream: StreamName = 'compute'): void {
    native().ops.eventWait(this.handle, deviceIndex(device), stream);
  }
  synchronize(): void {
    native().ops.eventSynchronize(this.handle);
  }
  query(): boolean {
    return native().ops.eventQuery(this.handle);
  }
  elapsedMs(end: CudaEvent): number {
    return native().ops.eventElapsedMs(this.handle, end.handle);
  }
}

/**
 * Orders work between a device's compute and comm streams on any device: a CudaEvent on a CUDA device; on the CPU
 * every op has finished when it returns, so record and wait order nothing (with timing, record notes the wall
 * clock, so elapsedMs measures the same span as on a GPU: the time the host spent between the two records).
 */
export class StreamEvent {
  private readonly ev: CudaEvent | null;
  private at = 0;
  constructor(
    readonly device: string,
    readonly timing = false,
  ) {
    this.ev = device === 'cpu' ? null : new CudaEvent(device, timing);
  }
  /** Completes after the work queued so far on `stream` of the event's device. */
  record(stream: StreamName = 'compute'): this {
    if (this.ev) this.ev.record(stream);
    else if (this.timing) this.at = performance.now();
    return this;
  }
  /** `stream` of the event's device waits for it (queued on a GPU; nothing to wait for on the CPU). */
  wait(stream: StreamName = 'compute'): void {
    this.ev?.waitOn(this.device, stream);
  }
  /** Blocks the host until the event has completed. */
  synchronize(): void {
    this.ev?.synchronize();
  }
  /** Milliseconds from this event to `end` (both recorded, timing on; waits for `end`). */
  elapsedMs(end: StreamEvent): number {
    if (!this.timing || !end.timing) throw new Error('StreamEvent.elapsedMs: both events need timing');
    if (this.ev && end.ev) {
      end.ev.synchronize();
      return this.ev.elapsedMs(end.ev);
    }
    return end.at - this.at;
  }
}
