// metrics.ts: per-step metrics to a JSONL file (always), the console (a compact line), and W&B (lazily loaded
// `@wandb/sdk`, only when WANDB_API_KEY is set and the logger asks for it).
import { appendFileSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { childLogger } from './logger.ts';
import { formatDuration, overallProgress } from './progress.ts';

// The progress display lives in progress.ts; re-exported here, where the trainers import it from.
export { Progress } from './progress.ts';

const log = childLogger('metrics');

export type Metrics = Record<string, number>;
export type MetricsKind = 'train' | 'eval' | 'sft' | 'sft_eval';

export interface MetricsLoggerOptions {
  /** JSONL file; parent folders are created. */
  path: string;
  /** Print a one-line summary of each step through pino. */
  console?: boolean;
  /** Send to W&B when WANDB_API_KEY is set. */
  wandb?: { project: string; name: string; config?: unknown } | null;
  /** Values written into every row (e.g. the run's world size and engine layout). */
  constant?: Metrics;
}

interface WandbRun {
  log(data: Record<string, unknown>, step?: number, commit?: boolean): void;
  finish(code?: number): Promise<void>;
}

/** Metrics shown in the console line, in order, when present. */
const CONSOLE_KEYS: Array<[string, string, number]> = [
  ['reward/mean', 'reward', 3],
  ['reward/accuracy', 'acc', 3],
  ['eval/accuracy', 'eval_acc', 3],
  ['loss', 'loss', 4],
  ['kl', 'kl', 5],
  ['entropy', 'ent', 3],
  ['clip_frac', 'clip', 3],
  ['grad_norm', 'gnorm', 3],
  ['response_len/mean', 'len', 1],
  ['tokens_per_s', 'tok/s', 0],
  ['time/step', 's/step', 2],
];

export class MetricsLogger {
  readonly path: string;
  private wandbRun: WandbRun | null = null;
  private readonly opts: MetricsLoggerOptions;

  constructor(opts: MetricsLoggerOptions) {
    this.opts = opts;
    this.path = opts.path;
    mkdirSync(dirname(opts.path), { recursive: true });
  }

  /** Connects to W&B when asked and WANDB_API_KEY is set; never throws (W&B trouble only costs the W&B copy). */
  async init(): Promise<void> {
    const w = this.opts.wandb;
    if (!w) return;
    if (!process.env.WANDB_API_KEY) {
      log.warn('trainer.logger includes wandb but WANDB_API_KEY is not set: metrics go to %s only', this.path);
      return;
    }
    try {
      const mod = (await import('@wandb/sdk')) as unknown as { wandb: { init(o: Record<string, unknown>): Promise<WandbRun> } };
      this.wandbRun = await mod.wandb.init({ project: w.project, name: w.name, config: w.config });
      log.info({ project: w.project, name: w.name }, 'logging metrics to W&B');
    } catch (e) {
      log.warn('W&B init failed (%s); metrics go to %s only', (e as Error).message, this.path);
    }
  }

  /**
   * Appends one JSON line `{step, kind, time, ...metrics}`; non-finite values are written as null. kind: 'train'
   * (a GRPO step), 'eval' (a GRPO evaluation), 'sft' (an SFT step), 'sft_eval' (an evaluation during SFT).
   */
  log(step: number, stepMetrics: Metrics, kind: MetricsKind = 'train'): void {
    const metrics: Metrics = { ...stepMetrics, ...this.opts.constant };
    const row: Record<string, unknown> = { step, kind, time: new Date().toISOString() };
    for (const [k, v] of Object.entries(metrics)) row[k] = Number.isFinite(v) ? v : null;
    appendFileSync(this.path, `${JSON.stringify(row)}\n`);
    if (this.wandbRun) {
      try {
        this.wandbRun.log(metrics, step);
      } catch (e) {
        log.warn('W&B log failed: %s', (e as Error).message);
      }
    }
    if (this.opts.console !== false) {
      const parts = CONSOLE_KEYS.filter(([k]) => k in metrics).map(([k, name, digits]) => `${name}=${metrics[k]!.toFixed(digits)}`);
      // On the training rows: "of N" and the ETA of the run in progress (GRPO or SFT), when one is registered.
      const o = kind === 'train' || kind === 'sft' ? overallProgress() : null;
      const of = o && o.total > 0 ? `/${o.total}${o.eta !== null && o.done < o.total ? ` (eta ${formatDuration(o.eta)})` : ''}` : '';
      log.info(`${kind} step ${step}${of}: ${parts.join(' ')}`);
    }
  }

  async close(): Promise<void> {
    if (this.wandbRun) {
      try {
        await this.wandbRun.finish();
      } catch {
        /* W&B finish trouble is not a training failure */
      }
      this.wandbRun = null;
    }
  }
}

/** Reads a metrics JSONL file (for plots and tests); bad lines are skipped. */
export function parseMetricsJsonl(text: string): Array<Record<string, number | string | null>> {
  const out: Array<Record<string, number | string | null>> = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as Record<string, number | string | null>);
    } catch {
      /* a torn last line after a crash */
    }
  }
  return out;
}
