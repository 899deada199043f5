// Logging and progress: human lines or JSON lines, synchronous and in order, to stderr or a consumer's
// destination/logger; one status line on a terminal that log lines clear and redraw, never share.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { childLogger, configureLogging, formatPrettyLine, setLogger } from '../../src/log/logger.ts';
import { MetricsLogger } from '../../src/log/metrics.ts';
import { formatDuration, Progress } from '../../src/log/progress.ts';

function collector(isTTY = false): { lines: string[]; write(s: string): void; isTTY: boolean } {
  const lines: string[] = [];
  return { lines, isTTY, write: (s: string) => void lines.push(s) };
}

const log = childLogger('logtest');

test('pretty format: time, level, component, message, fields; written at once', () => {
  const c = collector();
  configureLogging({ destination: c, format: 'pretty', level: 'info' });
  try {
    log.info({ dir: 'runs/ckpts/global_step_4', step: 4, note: 'two words' }, 'checkpoint saved');
    assert.equal(c.lines.length, 1, 'synchronous: the line is there when info() returns');
    assert.match(c.lines[0]!, /^\d\d:\d\d:\d\d INFO  logtest checkpoint saved  dir=runs\/ckpts\/global_step_4 step=4 note="two words"\n$/);
    assert.doesNotMatch(c.lines[0]!, /\x1b\[/, 'no colours on a non-TTY destination');
  } finally {
    configureLogging({ destination: process.stderr, format: 'auto' });
  }
});

test('formatPrettyLine: levels and error objects', () => {
  const line = formatPrettyLine({ level: 50, time: 0, msg: 'boom', component: 'grpo', err: { message: 'bad', stack: 'x' } });
  assert.match(line, /ERROR grpo boom  err="bad"$/);
});

test('json format: one pino JSON record per line, in call order', () => {
  const c = collector(true);
  configureLogging({ destination: c, format: 'json' });
  try {
    log.info({ a: 1 }, 'first');
    log.warn('second %d', 2);
    const recs = c.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(recs.map((r) => r.msg), ['first', 'second 2']);
    assert.equal(recs[0]!.component, 'logtest');
    assert.equal(recs[0]!.a, 1);
    assert.equal(recs[1]!.level, 40);
  } finally {
    configureLogging({ destination: process.stderr, format: 'auto' });
  }
});

test('auto format: JSON on a non-TTY destination, pretty on a TTY', () => {
  const plain = collector(false);
  configureLogging({ destination: plain, format: 'auto' });
  log.info('x');
  const tty = collector(true);
  configureLogging({ destination: tty, format: 'auto' });
  log.info('y');
  configureLogging({ destination: process.stderr });
  assert.equal((JSON.parse(plain.lines[0]!) as { msg: string }).msg, 'x');
  assert.match(tty.lines[0]!, /INFO/);
});

test('level applies to loggers made before the change; setLogger forwards records to a consumer pino', () => {
  const c = collector();
  configureLogging({ destination: c, format: 'json', level: 'warn' });
  log.info('hidden');
  log.warn('shown');
  configureLogging({ level: 'info' });
  assert.deepEqual(c.lines.map((l) => (JSON.parse(l) as { msg: string }).msg), ['shown']);

  const theirs = collector();
  const consumer = pino({ base: { app: 'consumer' } }, theirs);
  setLogger(consumer);
  try {
    log.info({ step: 3 }, 'from the library');
    assert.equal(c.lines.length, 1, 'nothing to our destination while forwarding');
    const rec = JSON.parse(theirs.lines[0]!) as Record<string, unknown>;
    assert.equal(rec.msg, 'from the library');
    assert.equal(rec.app, 'consumer');
    assert.equal(rec.component, 'logtest');
    assert.equal(rec.step, 3);
    assert.equal(rec.level, 30);
  } finally {
    setLogger(null);
    configureLogging({ destination: process.stderr, format: 'auto' });
  }
});

test('bad log settings are one-line errors', () => {
  assert.throws(() => configureLogging({ format: 'xml' as never }), /log format must be auto, pretty or json \(got 'xml'\)/);
  assert.throws(() => configureLogging({ level: 'loud' as never }), /log level must be one of/);
});

test('formatDuration', () => {
  assert.equal(formatDuration(42.4), '42s');
  assert.equal(formatDuration(725), '12m05s');
  assert.equal(formatDuration(3720), '1h02m');
  assert.equal(formatDuration(NaN), '?');
});

/** Runs f with process.stderr pretending to be a 100-column terminal; returns every write. */
function onFakeTerminal(f: () => void): string[] {
  const writes: string[] = [];
  const err = process.stderr as unknown as { isTTY: boolean; columns: number; write: (s: string) => boolean };
  const saved = { isTTY: err.isTTY, columns: err.columns, write: err.write };
  const savedMode = process.env.GPTOSS_PROGRESS;
  delete process.env.GPTOSS_PROGRESS;
  err.isTTY = true;
  err.columns = 100;
  err.write = (s: string) => (writes.push(String(s)), true);
  configureLogging({ destination: process.stderr, format: 'pretty' });
  try {
    f();
  } finally {
    err.isTTY = saved.isTTY;
    err.columns = saved.columns;
    err.write = saved.write;
    if (savedMode !== undefined) process.env.GPTOSS_PROGRESS = savedMode;
    configureLogging({ destination: process.stderr, format: 'auto' });
  }
  return writes;
}

test('terminal: one status line with the overall step k/N and the phase; log lines clear it first and redraw it after', () => {
  const writes = onFakeTerminal(() => {
    const overall = new Progress('GRPO step', 4, { unit: 'step', overall: true, startAt: 1 });
    const phase = new Progress('step 2 generate', 100, { unit: 'tok' });
    phase.tick(40);
    log.info('a log line in the middle');
    overall.tick();
    phase.finish();
    overall.finish();
  });
  const CLEAR = '\r\x1b[2K';
  const status = writes.filter((w) => w.startsWith(CLEAR) && w.length > CLEAR.length);
  assert.ok(status.some((w) => w.includes('GRPO step 1/4') && w.includes('step 2 generate 40/100 tok (40%)')), `status lines: ${JSON.stringify(status)}`);
  for (const w of status) {
    assert.doesNotMatch(w, /\n/, 'the status line never holds a newline');
    assert.ok(w.length <= CLEAR.length + 99, 'never wider than the terminal');
  }
  const i = writes.findIndex((w) => w.includes('a log line in the middle'));
  assert.ok(i > 0);
  assert.equal(writes[i - 1], CLEAR, 'the status line is cleared before a log line');
  const plain = writes[i]!.replace(/\x1b\[[0-9;]*m/g, ''); // colours on a terminal
  assert.match(plain, /^\d\d:\d\d:\d\d INFO  logtest a log line in the middle\n$/, 'the log line starts at column 0 and ends its line');
  assert.ok(writes[i + 1]!.startsWith(CLEAR) && writes[i + 1]!.includes('GRPO step'), 'and redrawn after it');
  assert.equal(writes[writes.length - 1], CLEAR, 'finishing leaves a clean line');
});

test('non-terminal: a phase logs only when it runs longer than its interval; metrics lines carry step k/N and the ETA', () => {
  const c = collector(false);
  configureLogging({ destination: c, format: 'pretty' });
  const dir = mkdtempSync(join(tmpdir(), 'gptoss-log-'));
  try {
    const overall = new Progress('GRPO step', 10, { unit: 'step', overall: true });
    const quick = new Progress('step 1 generate', 10, { unit: 'tok' });
    quick.tick(10);
    quick.finish();
    assert.equal(c.lines.length, 0, 'a short phase prints nothing');
    const slow = new Progress('step 1 train', 10, { unit: 'seq', intervalMs: 0 });
    slow.tick(5);
    slow.finish();
    assert.equal(c.lines.length, 2, 'a long phase: progress lines and a last one');
    assert.match(c.lines[0]!, /step 1 train 5\/10 seq \(50%\)/);
    overall.tick();
    const m = new MetricsLogger({ path: join(dir, 'm.jsonl') });
    m.log(1, { 'reward/mean': 0.5, loss: 0.25 }, 'train');
    assert.match(c.lines[2]!, /train step 1\/10 \(eta \d+s\): reward=0\.500 loss=0\.2500/);
    overall.finish();
    m.log(2, { 'reward/mean': 0.5 }, 'train');
    assert.match(c.lines[3]!, /train step 2: reward=0\.500/, 'no k/N once the run has finished');
    const rows = readFileSync(join(dir, 'm.jsonl'), 'utf8').trim().split('\n');
    assert.equal(rows.length, 2);
  } finally {
    configureLogging({ destination: process.stderr, format: 'auto' });
  }
});

test("configureLogging({ progress: 'off' }) hides the display; 'lines' keeps a terminal to log lines", () => {
  configureLogging({ progress: 'off' });
  try {
    const writes = onFakeTerminal(() => {
      const p = new Progress('GRPO step', 4, { unit: 'step', overall: true });
      p.tick();
      p.finish();
    });
    assert.deepEqual(writes, []);
  } finally {
    configureLogging({ progress: 'auto' });
  }
  configureLogging({ progress: 'lines' });
  try {
    const writes = onFakeTerminal(() => {
      const p = new Progress('eval', 4, { unit: 'seq', intervalMs: 0 });
      p.tick(2);
      p.finish();
    });
    assert.ok(writes.length > 0 && writes.every((w) => !w.startsWith('\r') && w.endsWith('\n')), JSON.stringify(writes));
  } finally {
    configureLogging({ progress: 'auto' });
  }
  assert.throws(() => configureLogging({ progress: 'sometimes' as never }), /progress must be auto, lines or off/);
});
