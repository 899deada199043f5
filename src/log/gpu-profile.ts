// gpu-profile.ts: where GPU time goes inside a model step. With GPTOSS_PROFILE=1 on a CUDA device, the model
// records an event after each phase of a layer (attention prologue, attention, MoE, their backwards, ...);
// `gpuProfile.report()` waits for the device once and sums the time between consecutive marks per phase name.
// Events are recorded on the compute stream, so nothing synchronises while the step runs (unlike a timer that
// waits after every op); with profiling off, mark() is one boolean test.
import { CudaEvent } from '../tensor.ts';

interface Mark {
  name: string;
  ev: CudaEvent;
}

class GpuProfiler {
  readonly enabled = process.env.GPTOSS_PROFILE === '1';
  private marks: Mark[] = [];
  private totals = new Map<string, { ms: number; n: number }>();

  /** Starts a region: the time since the previous mark is not attributed to any phase. */
  start(device: string): void {
    if (!this.enabled || device === 'cpu') return;
    if (this.marks.length > 4096) this.flush();
    this.marks.push({ name: '', ev: new CudaEvent(device, true).record() });
  }
  /** The time since the previous mark belongs to `name`. */
  mark(device: string, name: string): void {
    if (!this.enabled || device === 'cpu' || this.marks.length === 0) return;
    this.marks.push({ name, ev: new CudaEvent(device, true).record() });
  }
  private flush(): void {
    if (this.marks.length === 0) return;
    this.marks[this.marks.length - 1]!.ev.synchronize();
    for (let i = 1; i < this.marks.length; i++) {
      const m = this.marks[i]!;
      if (m.name === '') continue;
      const t = this.totals.get(m.name) ?? { ms: 0, n: 0 };
      t.ms += this.marks[i - 1]!.ev.elapsedMs(m.ev);
      t.n++;
      this.totals.set(m.name, t);
    }
    this.marks = [];
  }
  /** Per-phase totals (ms) and call counts since the last reset, largest first. */
  report(): { phase: string; ms: number; calls: number }[] {
    this.flush();
    return [...this.totals].map(([phase, t]) => ({ phase, ms: t.ms, calls: t.n })).sort((a, b) => b.ms - a.ms);
  }
  reset(): void {
    this.marks = [];
    this.totals.clear();
  }
}

export const gpuProfile = new GpuProfiler();
