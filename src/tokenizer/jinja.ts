// jinja.ts: renders a model directory's own chat template (chat_template.jinja, or `chat_template` in
// tokenizer_config.json) with @huggingface/jinja, the way transformers' apply_chat_template does, so that a
// checkpoint's template can be compared with (or used instead of) our renderer.
//
// The template sees: messages, tools, add_generation_prompt, bos/eos/pad tokens, every chat_template_kwargs
// entry (reasoning_effort, ...), and strftime_now(), which formats `currentDate` (default: today) so that a
// template that prints the date renders reproducibly.
//
// @huggingface/jinja is loaded on first use (through its CommonJS build, so the API stays synchronous): importing
// this module costs nothing where templates are never rendered (and works where the package is not installed).
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import type { Environment as JinjaEnvironment, Interpreter as JinjaInterpreter, Template as JinjaTemplate } from '@huggingface/jinja';
import type { ChatMessage, ChatTool } from './chat.ts';
import { getTokenizer } from './tokenizer.ts';

export interface JinjaRenderOptions {
  addGenerationPrompt?: boolean;
  tools?: readonly ChatTool[];
  /** Passed to the template as variables (e.g. {reasoning_effort: 'low'}). */
  chatTemplateKwargs?: Readonly<Record<string, unknown>>;
  /** The date strftime_now() formats (a 'YYYY-MM-DD' string or a Date); default today. */
  currentDate?: string | Date;
  bosToken?: string;
  eosToken?: string;
  padToken?: string;
}

/** The chat template of a model directory: chat_template.jinja, else tokenizer_config.json's chat_template. */
export function loadChatTemplate(modelDir: string): string | undefined {
  const file = join(modelDir, 'chat_template.jinja');
  if (existsSync(file)) return readFileSync(file, 'utf8');
  const cfgFile = join(modelDir, 'tokenizer_config.json');
  if (!existsSync(cfgFile)) return undefined;
  const cfg = JSON.parse(readFileSync(cfgFile, 'utf8')) as { chat_template?: unknown };
  const t = cfg.chat_template;
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) {
    // [{name, template}]: the one named 'default', else the first.
    const named = t as Array<{ name?: string; template?: string }>;
    return (named.find((x) => x.name === 'default') ?? named[0])?.template;
  }
  return undefined;
}

function dateParts(d: string | Date): { y: number; m: number; day: number; h: number; min: number } {
  if (typeof d === 'string') {
    const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(d);
    if (!m) throw new Error(`currentDate must be YYYY-MM-DD, got ${JSON.stringify(d)}`);
    return { y: Number(m[1]), m: Number(m[2]), day: Number(m[3]), h: 0, min: 0 };
  }
  return { y: d.getFullYear(), m: d.getMonth() + 1, day: d.getDate(), h: d.getHours(), min: d.getMinutes() };
}

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];

/** Python-style strftime for a fixed date (%Y %m %d %b %B %H %M %%). */
export function strftime(d: string | Date, format: string): string {
  const p = dateParts(d);
  const pad = (n: number) => String(n).padStart(2, '0');
  return format.replace(/%[YmdbBHM%]/g, (t) => {
    switch (t) {
      case '%Y':
        return String(p.y);
      case '%m':
        return pad(p.m);
      case '%d':
        return pad(p.day);
      case '%b':
        return MONTHS[p.m - 1]!.slice(0, 3);
      case '%B':
        return MONTHS[p.m - 1]!;
      case '%H':
        return pad(p.h);
      case '%M':
        return pad(p.min);
      default:
        return '%';
    }
  });
}

function range(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  const out: number[] = [];
  if (step > 0) for (let i = start; i < stop; i += step) out.push(i);
  else if (step < 0) for (let i = start; i > stop; i += step) out.push(i);
  return out;
}

interface JinjaModule {
  Environment: typeof JinjaEnvironment;
  Interpreter: typeof JinjaInterpreter;
  Template: typeof JinjaTemplate;
}
let jinjaModule: JinjaModule | undefined;
function jinja(): JinjaModule {
  jinjaModule ??= createRequire(import.meta.url)('@huggingface/jinja') as JinjaModule;
  return jinjaModule;
}

// Parsed templates by source (a trainer renders thousands of prompts with the same one).
const parsedTemplates = new Map<string, JinjaTemplate>();

function parsedTemplate(source: string): JinjaTemplate {
  let t = parsedTemplates.get(source);
  if (!t) {
    t = new (jinja().Template)(source);
    if (parsedTemplates.size >= 8) parsedTemplates.delete(parsedTemplates.keys().next().value!);
    parsedTemplates.set(source, t);
  }
  return t;
}

/** Renders a chat template (its source text) for chat messages. */
export function renderJinjaChatTemplate(template: string, messages: readonly ChatMessage[], opts: JinjaRenderOptions = {}): string {
  const tpl = parsedTemplate(template);
  const date = opts.currentDate ?? new Date();
  // The same globals as Template.render(), but with our strftime_now (the library's cannot be overridden).
  const { Environment, Interpreter } = jinja();
  const env = new Environment();
  const globals: Record<string, unknown> = {
    false: false,
    true: true,
    none: null,
    False: false,
    True: true,
    None: null,
    raise_exception: (msg: unknown) => {
      throw new Error(`chat template: ${String(msg)}`);
    },
    range,
    strftime_now: (format: string) => strftime(date, format),
  };
  const vars: Record<string, unknown> = {
    ...globals,
    bos_token: opts.bosToken ?? '<|startoftext|>',
    eos_token: opts.eosToken ?? '<|return|>',
    pad_token: opts.padToken ?? '<|endoftext|>',
    add_generation_prompt: opts.addGenerationPrompt ?? true,
    messages: messages.map((m) => ({ ...m })),
    ...(opts.tools && opts.tools.length > 0 ? { tools: opts.tools } : {}),
  };
  for (const [k, v] of Object.entries(opts.chatTemplateKwargs ?? {})) vars[k] = v;
  for (const [k, v] of Object.entries(vars)) env.set(k, v);
  const result = new Interpreter(env).run(tpl.parsed);
  return String(result.value);
}

/** Renders a model directory's chat template to text and token ids (special tokens allowed anywhere in it). */
export function renderModelChatTemplate(
  modelDir: string,
  messages: readonly ChatMessage[],
  opts: JinjaRenderOptions = {},
): { text: string; tokens: number[] } {
  const template = loadChatTemplate(modelDir);
  if (template === undefined) throw new Error(`renderModelChatTemplate: ${modelDir} has no chat_template.jinja or tokenizer_config.json chat_template`);
  const text = renderJinjaChatTemplate(template, messages, opts);
  return { text, tokens: getTokenizer().encode(text, { allowSpecial: true }) };
}
