// progress.ts: progress of long work. One live line on a terminal, log lines elsewhere.
//
// A Progress is either the run's overall progress (`overall: true`: GRPO steps, SFT steps) or a phase inside it
// (generation, log-probs, the update, evaluation). On a terminal (stderr is a TTY, logs are pretty and go to
// stderr) both share ONE status line at the bottom:
//   [######..............] GRPO step 12/64 · 3.1 s/step · eta 2m41s | step 13 generate 310/384 tok 95 tok/s
// Every log line clears it first and redraws it after (logger.ts's terminal guard), so the two never collide.
// Elsewhere (a pipe, a file, JSON logs) a phase logs a line only when it has run longer than intervalMs (then
// every intervalMs and once at its end), and the overall step count and ETA ride on the per-step metrics line.
// GPTOSS_PROGRESS=off (or configureLogging({ progress: 'off' })) hides it all; =lines forces the log-line mode on a
// terminal.
import { childLogger, effectiveLogFormat, logsToStderr, progressMode, setTerminalGuard } from './logger.ts';

const log = childLogger('progress');

/** 42s, 12m05s, 1h02m. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function formatRate(rate: number, unit: string): string {
  if (rate >= 1 || rate === 0) return `${rate >= 100 ? rate.toFixed(0) : rate.toFixed(1)} ${unit}/s`;
  return `${(1 / rate).toFixed(1)} s/${unit}`;
}

export interface ProgressOptions {
  /** Non-terminal mode: the least time between two log lines of one phase (default 5000 ms). */
  intervalMs?: number;
  unit?: string;
  /** false: count only, show nothing. */
  enabled?: boolean;
  /** The run's overall progress (its step count and ETA lead the status line and the metrics lines). */
  overall?: boolean;
  /** Work already done before this process started (a resumed run): counted as done, not in the rate. */
  startAt?: number;
}

/** The single live line on stderr. */
class StatusLine {
  overall: Progress | null = null;
  phase: Progress | null = null;
  private shown = false;
  private lastDraw = 0;

  /** A terminal we may draw on right now. */
  active(): boolean {
    return !!process.stderr.isTTY && progressMode() === 'auto' && logsToStderr() && effectiveLogFormat() === 'pretty';
  }

  text(): string {
    const parts: string[] = [];
    const o = this.overall;
    if (o) {
      const width = 20;
      const frac = o.total > 0 ? Math.min(1, o.done / o.total) : 0;
      const fill = Math.round(frac * width);
      const eta = o.eta();
      const rate = o.rate();
      parts.push(
        `[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${o.label} ${o.done}/${o.total}` +
          `${rate > 0 ? ` · ${formatRate(rate, o.unit)}` : ''}${eta !== null ? ` · eta ${formatDuration(eta)}` : ''}`,
      );
    }
    const p = this.phase;
    if (p) {
      const pct = p.total > 0 ? Math.min(100, (100 * p.done) / p.total) : 100;
      const rate = p.rate();
      parts.push(`${p.label} ${p.done}/${p.total} ${p.unit} (${pct.toFixed(0)}%)${rate > 0 ? ` ${formatRate(rate, p.unit)}` : ''}${p.note ? ` ${p.note}` : ''}`);
    }
    return parts.join(' | ');
  }

  /** Redraws at most every 100 ms unless forced. */
  draw(force = false): void {
    if (!this.active() || (!this.overall && !this.phase)) return;
    const now = Date.now();
    if (!force && this.shown && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    // Never wider than the terminal: a wrapped line could not be cleared with \r.
    // (A pseudo-terminal without a size reports 0 columns: then $COLUMNS, else 120.)
    const cols = Math.max(20, (process.stderr.columns || Number(process.env.COLUMNS) || 120) - 1);
    let t = this.text();
    if (t.length > cols) t = `${t.slice(0, cols - 1)}…`;
    process.stderr.write(`\r\x1b[2K${t}`);
    this.shown = true;
  }

  clear(): void {
    if (!this.shown) return;
    process.stderr.write('\r\x1b[2K');
    this.shown = false;
  }

  remove(p: Progress): void {
    if (this.phase === p) this.phase = null;
    if (this.overall === p) this.overall = null;
    if (this.overall || this.phase) this.draw(true);
    else this.clear();
  }
}

const status = new StatusLine();
setTerminalGuard({
  beforeWrite: () => status.clear(),
  afterWrite: () => status.draw(true),
});
// Whatever way the process ends (a second Ctrl-C exits at once), the shell's prompt starts on a clean line.
process.on('exit', () => status.clear());

/**
 * Ends the live display (clears the status line, forgets the open progress) so that what comes next (a CLI's final
 * error line) starts on a clean line.
 */
export function endProgressDisplay(): void {
  status.clear();
  status.overall = null;
  status.phase = null;
}

/** The overall progress in effect (for the metrics line's `step k/N, eta`), or null. */
export function overallProgress(): { done: number; total: number; label: string; eta: number | null } | null {
  const o = status.overall;
  return o ? { done: o.done, total: o.total, label: o.label, eta: o.eta() } : null;
}

export class Progress {
  done: number;
  note: string | undefined;
  readonly unit: string;
  private readonly startAt: number;
  private readonly t0 = performance.now();
  private lastLine = 0;
  private printedLines = 0;
  private finished = false;
  private readonly enabled: boolean;

  constructor(
    readonly label: string,
    readonly total: number,
    private readonly opts: ProgressOptions = {},
  ) {
    this.startAt = opts.startAt ?? 0;
    this.done = this.startAt;
    this.unit = opts.unit ?? 'it';
    this.enabled = (opts.enabled ?? true) && progressMode() !== 'off';
    if (!this.enabled) return;
    if (opts.overall) status.overall = this;
    else status.phase = this;
    status.draw(true);
  }

  /** Units per second since this process started on it. */
  rate(): number {
    const el = (performance.now() - this.t0) / 1000;
    return el > 0 ? (this.done - this.startAt) / el : 0;
  }

  /** Seconds left at the current rate (null before the first unit). */
  eta(): number | null {
    const r = this.rate();
    if (r <= 0 || this.done - this.startAt <= 0) return null;
    return Math.max(0, (this.total - this.done) / r);
  }

  tick(n = 1, note?: string): void {
    this.done += n;
    if (note !== undefined) this.note = note;
    if (!this.enabled || this.finished) return;
    if (status.active()) {
      status.draw();
      return;
    }
    if (this.opts.overall) return; // the metrics lines carry it
    const now = performance.now();
    const interval = this.opts.intervalMs ?? 5000;
    if (now - Math.max(this.t0, this.lastLine) < interval) return;
    this.lastLine = now;
    this.logLine();
  }

  private logLine(): void {
    this.printedLines++;
    const el = (performance.now() - this.t0) / 1000;
    const pct = this.total > 0 ? Math.min(100, (100 * this.done) / this.total) : 100;
    const eta = this.eta();
    log.info(
      `${this.label} ${this.done}/${this.total} ${this.unit} (${pct.toFixed(0)}%) ${formatRate(this.rate(), this.unit)} ${formatDuration(el)}` +
        `${eta !== null && this.done < this.total ? ` eta ${formatDuration(eta)}` : ''}${this.note ? ` ${this.note}` : ''}`,
    );
  }

  /** Ends the phase: it leaves the status line (a phase that logged progress lines logs its last one). */
  finish(note?: string): void {
    if (this.finished) return;
    this.finished = true;
    if (note !== undefined) this.note = note;
    if (!this.enabled) return;
    if (!status.active() && this.printedLines > 0) this.logLine();
    status.remove(this);
  }
}
