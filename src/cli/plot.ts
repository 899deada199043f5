// plot.ts: `npm run plot -- metrics.jsonl... [-o chart.png]`: reward and accuracy over steps, per phase (SFT, GRPO),
// as an SVG rendered to PNG with @resvg/resvg-js (an .svg output name writes the SVG itself).
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { parseMetricsJsonl } from '../log/metrics.ts';
import { UsageError, usageMessage } from './args.ts';
import { packageVersion } from './version.ts';

export interface Series {
  name: string;
  color: string;
  /** SVG stroke-dasharray ('' = solid): series that may coincide stay visible through each other. */
  dash: string;
  points: Array<[number, number]>;
}

/**
 * The default series: per phase (SFT rows have kind 'sft'/'sft_eval', GRPO rows 'train'/'eval'; rows without a
 * kind count as GRPO), reward solid and accuracy dashed, one colour per phase and split.
 */
export const SERIES: ReadonlyArray<{ key: string; kinds: ReadonlyArray<string | undefined>; name: string; color: string; dash: string }> = [
  { key: 'reward/mean', kinds: ['train', undefined], name: 'GRPO train reward', color: '#1f77b4', dash: '' },
  { key: 'reward/accuracy', kinds: ['train', undefined], name: 'GRPO train accuracy', color: '#17becf', dash: '7 4' },
  { key: 'eval/reward', kinds: ['eval'], name: 'GRPO eval reward', color: '#d62728', dash: '' },
  { key: 'eval/accuracy', kinds: ['eval'], name: 'GRPO eval accuracy', color: '#ff7f0e', dash: '7 4' },
  { key: 'eval/reward', kinds: ['sft_eval'], name: 'SFT eval reward', color: '#2ca02c', dash: '' },
  { key: 'eval/accuracy', kinds: ['sft_eval'], name: 'SFT eval accuracy', color: '#9467bd', dash: '7 4' },
];

const sameSeries = (a: Series, b: Series): boolean =>
  a.points.length === b.points.length && a.points.every((p, i) => p[0] === b.points[i]![0] && p[1] === b.points[i]![1]);

/**
 * The series a chart of these rows shows. With `keys`, one series per key over rows of any kind. Two series
 * with the same points (train reward and accuracy under the strict 0/1 reward are the same numbers) become one
 * legend entry that names both, instead of one line hidden under the other.
 */
export function seriesFromMetrics(rows: Array<Record<string, number | string | null>>, keys?: string[]): Series[] {
  const wanted = keys
    ? keys.map((k) => ({ key: k, kinds: null, name: k, color: pickColor(k), dash: '' }))
    : SERIES.map((s) => ({ ...s, kinds: s.kinds as ReadonlyArray<string | undefined> | null }));
  const built: Series[] = wanted
    .map((s) => ({
      name: s.name,
      color: s.color,
      dash: s.dash,
      points: rows
        .filter((r) => (s.kinds === null || s.kinds.includes(typeof r.kind === 'string' ? r.kind : undefined)) && typeof r[s.key] === 'number' && typeof r.step === 'number')
        .map((r) => [r.step as number, r[s.key] as number] as [number, number]),
    }))
    .filter((s) => s.points.length > 0);
  const out: Series[] = [];
  for (const s of built) {
    const twin = out.find((o) => sameSeries(o, s));
    if (twin) twin.name = `${twin.name} = ${s.name.replace(/^(GRPO|SFT) (train |eval )?/, '')}`;
    else out.push(s);
  }
  return out;
}

function pickColor(k: string): string {
  let h = 0;
  for (const c of k) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 65%, 45%)`;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function niceTicks(lo: number, hi: number, n: number): number[] {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

export function renderSvg(series: Series[], opts: { title?: string; width?: number; height?: number } = {}): string {
  const W = opts.width ?? 900;
  const H = opts.height ?? 500;
  const m = { l: 60, r: 260, t: 40, b: 50 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const x0 = xs.length ? Math.min(...xs) : 0;
  const x1 = xs.length ? Math.max(...xs, x0 + 1) : 1;
  let y0 = ys.length ? Math.min(0, ...ys) : 0;
  let y1 = ys.length ? Math.max(1, ...ys) : 1;
  if (y1 - y0 < 1e-9) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  const sx = (x: number) => m.l + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number) => m.t + ph - ((y - y0) / (y1 - y0)) * ph;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${m.l}" y="24" font-family="DejaVu Sans, sans-serif" font-size="16">${esc(opts.title ?? 'reward and accuracy')}</text>`);
  for (const t of niceTicks(y0, y1, 5)) {
    parts.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${sy(t)}" y2="${sy(t)}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${m.l - 8}" y="${sy(t) + 4}" text-anchor="end" font-family="DejaVu Sans, sans-serif" font-size="11">${t}</text>`);
  }
  for (const t of niceTicks(x0, x1, 8)) {
    parts.push(`<line x1="${sx(t)}" x2="${sx(t)}" y1="${m.t}" y2="${m.t + ph}" stroke="#f0f0f0"/>`);
    parts.push(`<text x="${sx(t)}" y="${m.t + ph + 16}" text-anchor="middle" font-family="DejaVu Sans, sans-serif" font-size="11">${t}</text>`);
  }
  parts.push(`<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  parts.push(`<text x="${m.l + pw / 2}" y="${H - 12}" text-anchor="middle" font-family="DejaVu Sans, sans-serif" font-size="12">step (of each phase)</text>`);
  series.forEach((s, i) => {
    // A step that goes back (two runs appended to one file) starts a new stroke instead of a line back.
    const d = s.points.map((p, j) => `${j && p[0] > s.points[j - 1]![0] ? 'L' : 'M'}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(' ');
    const dash = s.dash ? ` stroke-dasharray="${s.dash}"` : '';
    parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${dash}/>`);
    for (const p of s.points.length <= 60 ? s.points : []) parts.push(`<circle cx="${sx(p[0]).toFixed(1)}" cy="${sy(p[1]).toFixed(1)}" r="2.5" fill="${s.color}"/>`);
    const ly = m.t + 10 + i * 20;
    parts.push(`<line x1="${m.l + pw + 15}" x2="${m.l + pw + 35}" y1="${ly}" y2="${ly}" stroke="${s.color}" stroke-width="3"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
    parts.push(`<text x="${m.l + pw + 40}" y="${ly + 4}" font-family="DejaVu Sans, sans-serif" font-size="12">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

export async function svgToPng(svg: string): Promise<Buffer> {
  const { Resvg } = await import('@resvg/resvg-js');
  const r = new Resvg(svg, { font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' }, background: 'white' });
  return r.render().asPng();
}

/**
 * Metrics file(s) -> chart file (.png or .svg). Several files are drawn on one chart, e.g. a run's SFT phase
 * (`<run>-sft.jsonl`) and its GRPO phase (`<run>.jsonl`): the rows' kinds keep the phases apart. Returns the number
 * of series drawn.
 */
export async function plotMetrics(input: string | readonly string[], output: string, opts: { keys?: string[]; title?: string } = {}): Promise<number> {
  const inputs = typeof input === 'string' ? [input] : input;
  const rows = inputs.flatMap((file) => {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new Error(`plot: cannot read metrics file ${file}: ${(e as Error).message}`);
    }
    return parseMetricsJsonl(text);
  });
  const series = seriesFromMetrics(rows, opts.keys);
  if (series.length === 0) throw new Error(`plot: ${inputs.join(', ')} holds no reward/accuracy metrics (keys ${(opts.keys ?? SERIES.map((s) => s.key)).join(', ')})`);
  const svg = renderSvg(series, { title: opts.title ?? inputs.join(' + ') });
  writeFileSync(output, output.endsWith('.svg') ? svg : await svgToPng(svg));
  return series.length;
}

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .scriptName('npm run plot --')
    .usage('$0 <metrics.jsonl>... [-o chart.png]\n\nSeveral files share one chart (e.g. runs/metrics/<run>-sft.jsonl and <run>.jsonl: SFT, then GRPO).')
    .positional('metrics', { type: 'string' })
    .option('o', { alias: 'output', type: 'string', describe: 'output .png or .svg (default: the first file with .png)' })
    .option('keys', { type: 'string', describe: 'comma-separated metric keys (default: reward and accuracy, train and eval)' })
    .option('title', { type: 'string' })
    .demandCommand(1, 'give the metrics JSONL file(s)')
    .strict()
    .fail((msg, err) => {
      throw err ?? new UsageError(`${usageMessage(msg ?? 'bad arguments', ['output', 'keys', 'title', 'help', 'version'])} (see --help)`);
    })
    .help()
    .version(packageVersion())
    .parseAsync();
  const inputs = argv._.map(String);
  const output = argv.o ?? inputs[0]!.replace(/\.jsonl$/, '') + '.png';
  const n = await plotMetrics(inputs, output, { keys: argv.keys?.split(','), title: argv.title });
  console.log(`wrote ${output} (${n} series)`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e: Error) => {
    console.error(`error: ${e.message}`);
    process.exit(e instanceof UsageError ? 2 : 1);
  });
}
