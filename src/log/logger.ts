// logger.ts: the project's pino logger and where its lines go.
//
// Every module logs through `childLogger(component)`. The records are routed synchronously (no worker thread,
// so lines keep their order and never land in the middle of the progress display) to:
//   - a destination stream (default: process.stderr; a library never writes to its consumer's stdout), either as
//     human lines (`12:03:04 INFO  grpo  checkpoint saved dir=runs/ckpts/global_step_4`, format 'pretty') or as
//     pino's JSON lines (format 'json'). Format 'auto' (the default) is pretty on a TTY, JSON otherwise;
//   - or a consumer's own pino logger (`setLogger(theirs)`), which then decides everything.
// Level and format come from GPTOSS_LOG_LEVEL (default info) and GPTOSS_LOG_FORMAT (auto|pretty|json) and can be
// changed at any time with configureLogging(); the CLIs' `--log-format pretty|json` calls it.
import { pino, type Level, type Logger } from 'pino';

export type LogFormat = 'pretty' | 'json';

/** Anything with a write(string) method: process.stderr, a file stream, a test's collector. */
export interface LogDestination {
  write(chunk: string): unknown;
  isTTY?: boolean;
}

export interface LoggingOptions {
  /** Where lines go (default process.stderr). */
  destination?: LogDestination;
  /** pino level name, or 'silent'. */
  level?: Level | 'silent';
  /** 'auto': pretty when the destination is a TTY, else JSON lines. */
  format?: LogFormat | 'auto';
  /** Hand every record to this pino logger instead (its level, format and destination apply); null undoes it. */
  logger?: Logger | null;
  /**
   * The progress display: 'auto' (a live status line when logs go to a terminal's stderr, else occasional log
   * lines), 'lines' (log lines only), 'off'. Default: GPTOSS_PROGRESS, else auto.
   */
  progress?: ProgressMode;
}

export type ProgressMode = 'auto' | 'lines' | 'off';

const LEVELS: ReadonlyArray<Level | 'silent'> = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
const FORMATS = ['auto', 'pretty', 'json'] as const;

// A bad environment value must not crash a run at import time: it falls back to the default, with one warning.
const envWarnings: string[] = [];
let loggerReady = false;
function fromEnv<T extends string>(name: string, allowed: readonly T[], fallback: T): T {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  if ((allowed as readonly string[]).includes(v)) return v as T;
  const w = `${name}=${v} is not one of ${allowed.join(', ')}; using ${fallback}`;
  if (!envWarnings.includes(w)) {
    envWarnings.push(w);
    if (loggerReady) log.warn(w);
  }
  return fallback;
}

function envLevel(): Level | 'silent' {
  return fromEnv('GPTOSS_LOG_LEVEL', LEVELS, 'info');
}

function envFormat(): LogFormat | 'auto' {
  return fromEnv('GPTOSS_LOG_FORMAT', FORMATS, 'auto');
}

function envProgress(): ProgressMode {
  return fromEnv('GPTOSS_PROGRESS', ['auto', 'lines', 'off'] as const, 'auto');
}

interface RouteState {
  destination: LogDestination;
  format: LogFormat | 'auto';
  forward: Logger | null;
  /** undefined: follow GPTOSS_PROGRESS (read when asked, so tests and callers may set it late). */
  progress: ProgressMode | undefined;
}

const route: RouteState = { destination: process.stderr, format: envFormat(), forward: null, progress: undefined };

/** The progress mode in effect (configureLogging's, else GPTOSS_PROGRESS, else auto). */
export function progressMode(): ProgressMode {
  return route.progress ?? envProgress();
}

/**
 * A hook the progress display installs: called around every line written to process.stderr, so the live line is
 * cleared before and redrawn after (the two never share a terminal line).
 */
export interface TerminalGuard {
  beforeWrite(): void;
  afterWrite(): void;
}
let guard: TerminalGuard | null = null;
export function setTerminalGuard(g: TerminalGuard | null): void {
  guard = g;
}

/** The format in effect for the current destination. */
export function effectiveLogFormat(): LogFormat {
  if (route.format !== 'auto') return route.format;
  return route.destination.isTTY ? 'pretty' : 'json';
}

/** True when log lines go to process.stderr (where the progress display lives). */
export function logsToStderr(): boolean {
  return route.forward === null && route.destination === process.stderr;
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const LEVEL_COLOURS: Record<number, string> = { 10: '\x1b[90m', 20: '\x1b[90m', 30: '\x1b[36m', 40: '\x1b[33m', 50: '\x1b[31m', 60: '\x1b[41m' };

function useColour(d: LogDestination): boolean {
  return !!d.isTTY && !process.env.NO_COLOR;
}

function formatValue(v: unknown): string {
  if (typeof v === 'string') return /[\s"=]/.test(v) || v === '' ? JSON.stringify(v) : v;
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6)));
  if (v !== null && typeof v === 'object' && 'message' in v && 'stack' in v) return JSON.stringify((v as { message: string }).message);
  return JSON.stringify(v) ?? String(v);
}

/** One pino record (the parsed JSON line) as a human line: `HH:MM:SS LEVEL component message key=value ...`. */
export function formatPrettyLine(rec: Record<string, unknown>, colour = false): string {
  const { level, time, msg, component, name: _name, pid: _pid, hostname: _host, ...rest } = rec;
  const lv = typeof level === 'number' ? level : 30;
  const t = typeof time === 'number' ? new Date(time) : new Date();
  const hh = (n: number) => String(n).padStart(2, '0');
  const clock = `${hh(t.getHours())}:${hh(t.getMinutes())}:${hh(t.getSeconds())}`;
  const name = (LEVEL_NAMES[lv] ?? String(lv)).padEnd(5);
  const fields = Object.entries(rest).map(([k, v]) => `${k}=${formatValue(v)}`);
  const comp = typeof component === 'string' ? `${component} ` : '';
  const text = `${msg ?? ''}${fields.length ? `  ${fields.join(' ')}` : ''}`;
  if (!colour) return `${clock} ${name} ${comp}${text}`;
  const dim = '\x1b[2m';
  const reset = '\x1b[0m';
  return `${dim}${clock}${reset} ${LEVEL_COLOURS[lv] ?? ''}${name}${reset} ${comp ? `${dim}${comp}${reset}` : ''}${lv >= 50 ? `\x1b[31m${text}${reset}` : text}`;
}

/** Writes one line to the destination, keeping the progress display off it when both use stderr. */
export function writeLogLine(line: string): void {
  const d = route.destination;
  const guarded = guard !== null && d === process.stderr;
  if (guarded) guard!.beforeWrite();
  d.write(line.endsWith('\n') ? line : `${line}\n`);
  if (guarded) guard!.afterWrite();
}

function forwardRecord(to: Logger, line: string): void {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    to.info(line.trimEnd());
    return;
  }
  const { level, time: _time, msg, ...rest } = rec;
  const name = pino.levels.labels[level as number] as Level | undefined;
  (to[name ?? 'info'] as (o: object, m?: string) => void).call(to, rest, typeof msg === 'string' ? msg : undefined);
}

/** The synchronous stream pino writes to: one JSON line per call. */
const router = {
  write(line: string): void {
    if (route.forward) {
      forwardRecord(route.forward, line);
      return;
    }
    if (effectiveLogFormat() === 'json') {
      writeLogLine(line);
      return;
    }
    let rec: Record<string, unknown>;
    try {
      rec = JSON.parse(line) as Record<string, unknown>;
    } catch {
      writeLogLine(line);
      return;
    }
    writeLogLine(formatPrettyLine(rec, useColour(route.destination)));
  },
};

export const log: Logger = pino({ name: 'gptoss', level: envLevel(), base: undefined }, router);
loggerReady = true;
for (const w of envWarnings) log.warn(w);

// pino children copy the level when they are made; configureLogging() sets it on each of them. One child per
// component (modules ask once, at import; a repeated ask gets the same logger).
const children = new Map<string, Logger>();

export function childLogger(component: string): Logger {
  let c = children.get(component);
  if (!c) {
    c = log.child({ component });
    children.set(component, c);
  }
  return c;
}

/** Routes, levels and formats the project's logs (see the file comment). Options left out stay as they are. */
export function configureLogging(o: LoggingOptions): void {
  if (o.destination !== undefined) route.destination = o.destination;
  if (o.format !== undefined) {
    if (!(FORMATS as readonly string[]).includes(o.format)) throw new Error(`log format must be auto, pretty or json (got '${o.format}')`);
    route.format = o.format;
  }
  if (o.logger !== undefined) route.forward = o.logger;
  if (o.progress !== undefined) {
    if (!['auto', 'lines', 'off'].includes(o.progress)) throw new Error(`progress must be auto, lines or off (got '${o.progress}')`);
    route.progress = o.progress;
  }
  if (o.level !== undefined) {
    if (!LEVELS.includes(o.level)) throw new Error(`log level must be one of ${LEVELS.join(', ')} (got '${o.level}')`);
    log.level = o.level;
    for (const c of children.values()) c.level = o.level;
  }
}

/** Sends every record to a consumer's pino logger (null: back to our own destination). */
export function setLogger(logger: Logger | null): void {
  configureLogging({ logger });
}
