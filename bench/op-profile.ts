// bench/op-profile.ts: the per-op GPU-time profiler the profiling benches share (bench/decode-profile.ts, the
// --profile mode of bench/train-step.ts in bench/train-profile.ts).
//
// Method. install() wraps addon ops (native().ops entries) and, optionally, the Tensor methods that copy or read
// back. While a region is open (begin() .. end()) every wrapped call first records a device-side profile mark
// (native profileMark: a timing event on the compute stream) named after the family the caller's `family()` gives
// it, so the GPU time up to the next mark belongs to that family; ops that mark phases inside themselves (the MoE
// and LM-head ops) split their time further (`nativeFamily` names those segments). begin() enqueues a device-side
// spin (bf16 4096x4096 GEMMs, about spinMs) first, so the host enqueues the following ops while the GPU is still
// busy: the time between marks is then pure GPU time of back-to-back kernels.
// The host lead is checked at every mark: the GPU reaches mark i at (its spin's start) + (GPU time of the segments
// before i), never earlier than the host enqueued it; when the host enqueued every mark before the GPU's time of it
// (lead > 0) the GPU never waited for the host. A call that waits for the device by design (a readback, a copy
// between host and device, synchronize) drains the GPU: it gets a '(host sync)' mark before it (the GPU's idle
// time until the next mark lands there, not in a family), is listed in `syncs`, and a fresh spin goes before the
// next call that does not wait (a new region of the lead check). An op call that takes over syncMs on the host and
// after which the GPU has nothing left to do (an event recorded after it is already complete: it waited for the
// device inside, or the host fell behind) is treated the same, but its GPU idle time stays in its own family:
// `syncs` names it.
// CPU: no marks and no spin; each call's host time is its family's time (a smoke run of the bookkeeping).
import { native, deviceIndex } from '../src/native.ts';
import { Tensor, synchronize } from '../src/tensor.ts';

/** Families the profiler itself uses: the spins (not GPU work of the profiled code) and host waits. */
export const SPIN = '(spin)';
export const HOST_SYNC = '(host sync)';

/** FLOPs and/or bytes a call did, attributed to a family (for TFLOP/s and GB/s). */
export interface Work {
  family: string;
  flops?: number;
  bytes?: number;
}

export interface OpProfilerOptions {
  device: string;
  /** Addon ops to wrap, or 'all' (every op but the runtime's: events, profiling, graphs, memory stats, NCCL setup). */
  ops: readonly string[] | 'all';
  /**
   * The family of a call's GPU time (read profiler.phase and profiler.scope for the caller's context), or null: no
   * mark (host-only calls such as an uninitialised allocation).
   */
  family(op: string, args: readonly unknown[]): string | null;
  /** The family of a segment an op marks inside itself (default: its native name). */
  nativeFamily?(name: string): string;
  /** FLOPs / bytes of a call (after it returned), by family. */
  work?(op: string, args: readonly unknown[], result: unknown, family: string): Work[];
  /** Also wrap Tensor's copies (copyFrom, copyFromAsync, to/clone) and readbacks (toFloat32, toInt32, toUint8, toBuffer). */
  tensorMethods?: boolean;
  /** Device-side spin per region, ms of GPU time. */
  spinMs: number;
  /** A call taking longer than this on the host waited for the device. */
  syncMs: number;
  /** Called after each wrapped op returns while a region is open (decode-profile ends its step at sampling). */
  afterOp?(op: string): void;
}

/** One family's time in one phase of a region. */
export interface FamilyTime {
  phase: string;
  family: string;
  ms: number;
  calls: number;
  flops: number;
  bytes: number;
}

export interface SyncCall {
  op: string;
  phase: string;
  family: string;
  hostMs: number;
}

/** What one region (begin .. end) measured. */
export interface RegionProfile {
  /** GPU ms (CPU: host ms) per phase and family, spins and host waits left out. */
  families: FamilyTime[];
  /** Sum of `families`. */
  totalMs: number;
  spinGpuMs: number;
  /** GPU time between a host-sync mark and the next mark: the GPU waiting for the host after a readback. */
  hostSyncGpuMs: number;
  /** Host ms from begin() to end(). */
  hostMs: number;
  /** Smallest host lead over the GPU at any mark (ms; null on the CPU). */
  minLeadMs: number | null;
  /** Marks the host enqueued after the GPU could have reached them (GPU time there may include host gaps). */
  lateMarks: number;
  /** The GPU never waited for the host (always true on the CPU). */
  hostAhead: boolean;
  launches: number;
  opCalls: number;
  syncs: SyncCall[];
}

/**
 * Runtime ops that enqueue no GPU work of the profiled code (never wrapped under 'all'). eventWait is wrapped: the
 * compute stream's wait for another stream (a collective on the comm stream) is time the caller's family can name.
 */
const RUNTIME_OPS = new Set([
  'cudaCompiled', 'deviceCount', 'deviceName', 'memoryStats', 'resetPeakMemory', 'emptyCache', 'numThreads', 'setNumThreads',
  'eventCreate', 'eventRecord', 'eventQuery', 'eventElapsedMs', 'launchCount', 'gemmTuneCount', 'profileEnable', 'profileMark',
  'profileTake', 'graphPoolCreate', 'graphPoolRelease', 'captureBegin', 'captureEnd', 'captureAbort', 'graphLaunch',
  'graphNodeCount', 'graphDestroy', 'joinRows', 'ncclVersion', 'ncclGetUniqueId', 'ncclCommInitRank', 'ncclSetPhase',
  'ncclCommDestroy', 'ncclCommAbort', 'ncclCheckAsync',
]);
/** Calls that wait for the device by design: a host-sync mark goes before them and a spin after. */
const SYNC_OPS = new Set(['synchronize', 'eventSynchronize', 'ncclSynchronize']);
const READBACKS = ['toFloat32', 'toInt32', 'toUint8', 'toBuffer'] as const;
const isHost = (x: unknown): boolean => x instanceof ArrayBuffer || ArrayBuffer.isView(x);

/**
 * Whether a call waits for the device by design (on a CUDA device): the synchronising ops, readbacks, and copies
 * between host and device (native/cuda/runtime.cu: a pageable copy synchronises the stream either way).
 */
function waitsFor(name: string, self: unknown, a: readonly unknown[]): boolean {
  if (SYNC_OPS.has(name) || (READBACKS as readonly string[]).some((m) => name === `Tensor.${m}`)) return true;
  const dev = (self as { device?: string } | null)?.device;
  switch (name) {
    case 'fromBuffer':
      return (a[3] as number) >= 0;
    case 'Tensor.copyFrom': {
      const src = a[0] as { device?: string };
      return isHost(src) ? dev !== 'cpu' : (dev === 'cpu') !== (src.device === 'cpu');
    }
    case 'Tensor.to':
      return (dev === 'cpu') !== (a[0] === 'cpu');
    default:
      return false;
  }
}

/** Bytes of a tensor argument (a Tensor or a native handle), 0 for anything else. */
export function tensorBytes(t: unknown): number {
  const n = (t as { native?: unknown } | null)?.native ?? t;
  const h = n as { shape?: number[]; dtype?: string } | null;
  if (!h || !Array.isArray(h.shape) || typeof h.dtype !== 'string') return 0;
  const size = h.dtype === 'f32' || h.dtype === 'i32' ? 4 : h.dtype === 'bf16' ? 2 : 1;
  return h.shape.reduce((a, b) => a * b, 1) * size;
}

/** The shape of a tensor argument ([] for anything else). */
export function shapeOf(t: unknown): number[] {
  const n = (t as { native?: unknown } | null)?.native ?? t;
  const s = (n as { shape?: number[] } | null)?.shape;
  return Array.isArray(s) ? s : [];
}

/** Bytes read and written by a call that touches each operand once: every tensor argument and result. */
export function operandBytes(args: readonly unknown[], result: unknown): number {
  let b = 0;
  for (const a of args) b += tensorBytes(a);
  if (result && typeof result === 'object' && !('shape' in result)) for (const v of Object.values(result)) b += tensorBytes(v);
  else b += tensorBytes(result);
  return b;
}

interface MarkRec {
  phase: string;
  family: string;
  hostT: number;
  /** Left out of the lead check: a host-sync mark, or a mark enqueued after a wait and before the next spin. */
  noCheck: boolean;
}

export class OpProfiler {
  /** The phase the next calls belong to (set by the caller: 'forward', 'backward', ...). */
  phase = '';
  /** Free-form context the family function reads (set by withScope wrappers). */
  readonly scope: Record<string, string | undefined> = {};
  readonly cpu: boolean;
  private readonly dev: number;
  private open = false;
  private depth = 0;
  private marks: MarkRec[] = [];
  private cpuTimes = new Map<string, FamilyTime>();
  private work = new Map<string, { flops: number; bytes: number; calls: number }>();
  private syncs: SyncCall[] = [];
  private opCalls = 0;
  private launch0 = 0;
  private t0 = 0;
  private spinFn: (() => void) | null = null;
  private needSpin = false;

  constructor(private readonly o: OpProfilerOptions) {
    this.cpu = o.device === 'cpu';
    this.dev = this.cpu ? -1 : deviceIndex(o.device);
  }

  /** Wraps the ops (and Tensor methods); call once, before the profiled code runs. */
  install(): this {
    const ops = native().ops as unknown as Record<string, (...a: unknown[]) => unknown>;
    const names = this.o.ops === 'all' ? Object.keys(ops).filter((n) => typeof ops[n] === 'function' && !RUNTIME_OPS.has(n)) : this.o.ops;
    for (const name of names) {
      const orig = ops[name];
      if (typeof orig !== 'function') throw new Error(`OpProfiler: the addon has no op '${name}'`);
      ops[name] = this.wrap(name, orig);
    }
    if (this.o.tensorMethods) {
      const proto = Tensor.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
      for (const m of ['copyFrom', 'copyFromAsync', 'to', ...READBACKS]) proto[m] = this.wrap(`Tensor.${m}`, proto[m]!);
    }
    return this;
  }

  /** Wraps proto[method] so that `scope[key]` is `value` (or phase is, for key 'phase') while it runs. */
  withScope(proto: object, method: string, key: string, value: string | ((prev: string | undefined) => string)): void {
    const rec = proto as Record<string, (...a: unknown[]) => unknown>;
    const orig = rec[method];
    if (typeof orig !== 'function') throw new Error(`OpProfiler.withScope: no method '${method}' to wrap`);
    const self = this;
    rec[method] = function (this: unknown, ...a: unknown[]) {
      const prev = key === 'phase' ? self.phase : self.scope[key];
      const v = typeof value === 'function' ? value(prev) : value;
      const set = (x: string | undefined): void => {
        if (key === 'phase') self.phase = x ?? '';
        else self.scope[key] = x;
      };
      set(v);
      let r: unknown;
      try {
        r = orig.apply(this, a);
      } catch (e) {
        set(prev);
        throw e;
      }
      if (r instanceof Promise) return r.finally(() => set(prev));
      set(prev);
      return r;
    };
  }

  /** Opens a region: enables the device's marks and enqueues the spin. */
  begin(): void {
    if (this.open) throw new Error('OpProfiler.begin: a region is already open');
    this.marks = [];
    this.cpuTimes.clear();
    this.work.clear();
    this.syncs = [];
    this.opCalls = 0;
    this.needSpin = false;
    if (!this.cpu) {
      this.spinFn ??= this.makeSpin();
      native().ops.profileEnable(this.dev, true);
    }
    this.open = true;
    this.launch0 = native().ops.launchCount();
    this.t0 = performance.now();
    this.spin();
  }

  /** Closes the region and returns what it measured (waits for the device once). */
  end(): RegionProfile {
    if (!this.open) throw new Error('OpProfiler.end: no open region');
    const hostMs = performance.now() - this.t0;
    const launches = native().ops.launchCount() - this.launch0;
    this.mark('', '(end)');
    this.open = false;
    const fam = new Map<string, FamilyTime>(this.cpuTimes);
    const get = (phase: string, family: string): FamilyTime => {
      const k = `${phase}\u0000${family}`;
      let f = fam.get(k);
      if (!f) fam.set(k, (f = { phase, family, ms: 0, calls: 0, flops: 0, bytes: 0 }));
      return f;
    };
    let spinGpuMs = 0, hostSyncGpuMs = 0, minLead: number | null = null, late = 0;
    if (!this.cpu) {
      const segs = native().ops.profileTake(this.dev);
      native().ops.profileEnable(this.dev, false);
      let cur: MarkRec | null = null;
      let regionHost = 0, g = 0;
      for (const s of segs) {
        let phase: string, family: string;
        if (s.name.startsWith('#')) {
          cur = this.marks[Number(s.name.slice(1))]!;
          if (cur.family === SPIN) {
            regionHost = cur.hostT;
            g = 0;
          } else if (!cur.noCheck) {
            const lead = g - (cur.hostT - regionHost);
            minLead = minLead === null ? lead : Math.min(minLead, lead);
            if (lead <= 0) late++;
          }
          phase = cur.phase;
          family = cur.family;
        } else {
          phase = cur?.phase ?? '';
          family = this.o.nativeFamily ? this.o.nativeFamily(s.name) : s.name;
        }
        g += s.ms;
        if (family === SPIN) spinGpuMs += s.ms;
        else if (family === HOST_SYNC) hostSyncGpuMs += s.ms;
        else get(phase, family).ms += s.ms;
      }
    }
    for (const [k, w] of this.work) {
      const [phase, family] = k.split('\u0000') as [string, string];
      const f = get(phase, family);
      f.flops += w.flops;
      f.bytes += w.bytes;
      f.calls += w.calls;
    }
    // On the CPU a waiting call's host time was booked under HOST_SYNC; it is not a family either.
    const hs = [...fam.entries()].filter(([, f]) => f.family === HOST_SYNC);
    for (const [k, f] of hs) {
      hostSyncGpuMs += f.ms;
      fam.delete(k);
    }
    const families = [...fam.values()].filter((f) => f.ms > 0 || f.calls > 0);
    return {
      families,
      totalMs: families.reduce((a, f) => a + f.ms, 0),
      spinGpuMs,
      hostSyncGpuMs,
      hostMs,
      minLeadMs: minLead,
      lateMarks: late,
      hostAhead: this.cpu || late === 0,
      launches,
      opCalls: this.opCalls,
      syncs: this.syncs,
    };
  }

  private mark(phase: string, family: string): void {
    if (this.cpu) return;
    this.marks.push({ phase, family, hostT: performance.now(), noCheck: family === HOST_SYNC || this.needSpin });
    native().ops.profileMark(this.dev, `#${this.marks.length - 1}`);
  }

  /**
   * Whether the GPU has finished everything enqueued so far (an op that took long on the host either waited for
   * the device inside, or merely took long to enqueue its kernels: only in the first case is the GPU idle now).
   */
  private drained(): boolean {
    const ops = native().ops;
    const ev = ops.eventCreate(this.dev, false);
    ops.eventRecord(ev, this.dev);
    return ops.eventQuery(ev);
  }

  /** A spin: a mark (a new region of the lead check) and about spinMs of GEMMs (CPU: nothing). */
  private spin(): void {
    if (this.cpu) return;
    this.mark('', SPIN);
    this.depth++;
    try {
      this.spinFn!();
    } finally {
      this.depth--;
    }
  }

  private wrap(name: string, orig: (...a: unknown[]) => unknown): (...a: unknown[]) => unknown {
    const self = this;
    return function (this: unknown, ...a: unknown[]) {
      if (!self.open || self.depth > 0) return orig.apply(this, a);
      const waits = !self.cpu && waitsFor(name, this, a);
      const family = waits ? HOST_SYNC : self.o.family(name, a);
      if (family === null) return orig.apply(this, a);
      self.opCalls++;
      if (self.needSpin && !waits) {
        // The GPU drained at a wait before: get ahead of it again (deferred to here, so that consecutive waits,
        // such as a batch's uploads, do not each wait for a spin).
        self.needSpin = false;
        self.spin();
      }
      self.mark(self.phase, family);
      self.depth++;
      const t0 = performance.now();
      let r: unknown;
      try {
        r = orig.apply(this, a);
      } finally {
        self.depth--;
      }
      const ms = performance.now() - t0;
      const k = `${self.phase}\u0000${family}`;
      if (self.cpu) {
        const f = self.cpuTimes.get(k) ?? { phase: self.phase, family, ms: 0, calls: 0, flops: 0, bytes: 0 };
        f.ms += ms;
        self.cpuTimes.set(k, f);
      }
      const works = self.o.work?.(name, a, r, family) ?? [{ family }];
      let first = true;
      for (const w of works) {
        const wk = `${self.phase}\u0000${w.family}`;
        const acc = self.work.get(wk) ?? { flops: 0, bytes: 0, calls: 0 };
        acc.flops += w.flops ?? 0;
        acc.bytes += w.bytes ?? 0;
        if (first) acc.calls++;
        first = false;
        self.work.set(wk, acc);
      }
      if (!self.cpu && (waits || (ms > self.o.syncMs && self.drained()))) {
        self.syncs.push({ op: name, phase: self.phase, family, hostMs: ms });
        self.needSpin = true;
      }
      self.o.afterOp?.(name);
      return r;
    };
  }

  /** About spinMs of GPU work: bf16 [4096, 4096] GEMMs into one output buffer (timed once here). */
  private makeSpin(): () => void {
    const n = 4096;
    const ops = native().ops;
    const x = Tensor.from(new Float32Array(n * n).fill(1e-3), [n, n], { device: this.o.device, dtype: 'bf16' });
    const y = Tensor.empty([n, n], { device: this.o.device, dtype: 'bf16' });
    const once = (): void => void ops.matmul(x.native, x.native, null, y.native, false, false, 1, false, null);
    for (let i = 0; i < 3; i++) once();
    synchronize(this.o.device);
    const t0 = performance.now();
    for (let i = 0; i < 10; i++) once();
    synchronize(this.o.device);
    const per = (performance.now() - t0) / 10;
    const count = Math.max(1, Math.ceil(this.o.spinMs / per));
    return () => {
      for (let i = 0; i < count; i++) once();
    };
  }
}
