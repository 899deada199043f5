// harmony.ts: the harmony chat format of GPT-OSS: message types and rendering to text and token ids.
//
// A conversation is a list of messages, each rendered as
//   <|start|>{header}<|message|>{content}{terminator}
// with no separator between messages. The header is the author (role, or a tool's name), an optional
// ` to={recipient}`, an optional `<|channel|>{channel}` and an optional content type (` json`, or
// ` <|constrain|>json` with the constrain special token). The terminator is `<|end|>`, `<|call|>` for an
// assistant message addressed to a tool, or `<|return|>` for the final answer at the end of a sampled completion.
// A prompt for generation ends with `<|start|>assistant`; the model continues with `<|channel|>...`.
//
// Special tokens only come from the structure rendered here. Text (user questions, answers, instructions) is
// encoded as ordinary characters: a question that contains the characters `<|end|>` is encoded as those
// characters, not as the special token (set `strictSpecials` to throw instead).
import { getTokenizer, type HarmonyTokenizer } from './tokenizer.ts';
import { SPECIAL_PATTERN, SPECIAL_TOKENS, specialTextToId, type SpecialTokenName } from './specials.ts';
import { renderToolNamespace, type ToolNamespace } from './tool-schema.ts';

export type Role = 'system' | 'developer' | 'user' | 'assistant' | 'tool';
export type ReasoningEffort = 'low' | 'medium' | 'high';
export const REASONING_EFFORTS: readonly ReasoningEffort[] = ['low', 'medium', 'high'];
/** How a message ends: `<|end|>`, `<|return|>`, `<|call|>`, or nothing (a truncated message). */
export type MessageEnd = 'end' | 'return' | 'call' | 'none';

export const DEFAULT_MODEL_IDENTITY = 'You are ChatGPT, a large language model trained by OpenAI.';
export const DEFAULT_KNOWLEDGE_CUTOFF = '2024-06';
export const DEFAULT_CHANNELS: readonly string[] = ['analysis', 'commentary', 'final'];

/** Content of the system message (the first message of a gpt-oss conversation). */
export interface SystemContent {
  kind: 'system';
  /** Default DEFAULT_MODEL_IDENTITY; null leaves the line out. */
  modelIdentity?: string | null;
  /** `Knowledge cutoff: ...`; default '2024-06'; null leaves the line out. */
  knowledgeCutoff?: string | null;
  /** `Current date: YYYY-MM-DD` (a Date is formatted in local time); absent or null leaves the line out. */
  currentDate?: string | Date | null;
  /** `Reasoning: ...`; default 'medium'; null leaves the line out. */
  reasoningEffort?: ReasoningEffort | null;
  /** Valid channels; default analysis, commentary, final; null leaves the line out. */
  channels?: readonly string[] | null;
  /** Adds ` Channel must be included for every message.` (default true). */
  channelRequired?: boolean;
  /** Built-in tool namespaces (browser, python) rendered under `# Tools` in the system message. */
  tools?: readonly ToolNamespace[];
}

/** Content of the developer message: instructions (what chat APIs call the system prompt) and function tools. */
export interface DeveloperContent {
  kind: 'developer';
  instructions?: string;
  /** Usually one namespace named `functions`; its presence adds the commentary-channel note to the system. */
  tools?: readonly ToolNamespace[];
}

export interface Message {
  role: Role;
  /** Author name: required for role 'tool' (e.g. 'functions.lookup_weather', 'browser.search'), which render it in place of the role. */
  name?: string;
  content: string | SystemContent | DeveloperContent;
  channel?: string;
  /** `to=...`: a tool for an assistant tool call, or 'assistant' for a tool's reply. */
  recipient?: string;
  /** e.g. 'json', 'code', or '<|constrain|>json' (the constrain special token followed by the format). */
  contentType?: string;
  /** Where ` to=` goes: after the role (default) or after the channel name. */
  recipientPlacement?: 'role' | 'channel';
  /** Overrides the terminator (default `<|call|>` for an assistant message to a tool, `<|end|>` otherwise). */
  end?: MessageEnd;
}

export interface RenderOptions {
  /**
   * Drop the assistant's analysis (chain of thought) of earlier turns: when the last assistant message is on
   * the final channel, analysis messages before the first final message are left out. Default true (as the
   * reference implementation does); false keeps every message.
   */
  autoDropAnalysis?: boolean;
  /** Throw if a text (question, answer, instructions) contains a special-token text. Default false: plain text. */
  strictSpecials?: boolean;
}

/** A piece of rendered harmony: ordinary text, or one special token. */
export type Segment = { readonly text: string } | { readonly special: SpecialTokenName };

/** Rendered harmony: the segments, the text (special tokens spelled out) and the token ids. */
export class Rendered {
  constructor(readonly segments: readonly Segment[]) {}

  /** The rendered text, with special tokens as `<|name|>`. */
  get text(): string {
    let s = '';
    for (const seg of this.segments) s += 'special' in seg ? `<|${seg.special}|>` : seg.text;
    return s;
  }

  /** Token ids: special segments as their ids, runs of text BPE-encoded as ordinary text. */
  tokens(tok: HarmonyTokenizer = getTokenizer()): number[] {
    const out: number[] = [];
    let pending = '';
    for (const seg of this.segments) {
      if ('special' in seg) {
        if (pending) out.push(...tok.encodeOrdinary(pending));
        pending = '';
        out.push(SPECIAL_TOKENS[seg.special]);
      } else {
        pending += seg.text;
      }
    }
    if (pending) out.push(...tok.encodeOrdinary(pending));
    return out;
  }

  concat(other: Rendered): Rendered {
    return new Rendered([...this.segments, ...other.segments]);
  }
}

// ---- constructors -----------------------------------------------------------------------------------------

export function systemMessage(content: Omit<SystemContent, 'kind'> = {}): Message {
  return { role: 'system', content: { kind: 'system', ...content } };
}

export function developerMessage(content: Omit<DeveloperContent, 'kind'> | string): Message {
  return {
    role: 'developer',
    content: typeof content === 'string' ? { kind: 'developer', instructions: content } : { kind: 'developer', ...content },
  };
}

export function userMessage(text: string): Message {
  return { role: 'user', content: text };
}

export function assistantMessage(text: string, channel = 'final', extra: Partial<Message> = {}): Message {
  return { role: 'assistant', content: text, channel, ...extra };
}

/** A tool's reply, authored by the tool (e.g. name 'functions.lookup_weather'). */
export function toolMessage(name: string, text: string, extra: Partial<Message> = {}): Message {
  return { role: 'tool', name, content: text, ...extra };
}

// ---- rendering --------------------------------------------------------------------------------------------

/** YYYY-MM-DD of a Date in local time (as the model card's `strftime_now('%Y-%m-%d')`), or a string as is. */
export function formatDate(d: string | Date): string {
  if (typeof d === 'string') return d;
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}

/** The text of a system message. */
export function renderSystemContent(c: SystemContent, hasFunctionTools = false): string {
  const sections: string[] = [];
  const top: string[] = [];
  const identity = c.modelIdentity === undefined ? DEFAULT_MODEL_IDENTITY : c.modelIdentity;
  const cutoff = c.knowledgeCutoff === undefined ? DEFAULT_KNOWLEDGE_CUTOFF : c.knowledgeCutoff;
  if (identity !== null) top.push(identity);
  if (cutoff !== null) top.push(`Knowledge cutoff: ${cutoff}`);
  if (c.currentDate !== undefined && c.currentDate !== null) top.push(`Current date: ${formatDate(c.currentDate)}`);
  if (top.length > 0) sections.push(top.join('\n'));
  const effort = c.reasoningEffort === undefined ? 'medium' : c.reasoningEffort;
  if (effort !== null) sections.push(`Reasoning: ${effort}`);
  if (c.tools && c.tools.length > 0) sections.push(`# Tools\n\n${c.tools.map(renderToolNamespace).join('\n\n')}`);
  const channels = c.channels === undefined ? DEFAULT_CHANNELS : c.channels;
  if (channels !== null) {
    let s = `# Valid channels: ${channels.join(', ')}.`;
    if (c.channelRequired ?? true) s += ' Channel must be included for every message.';
    if (hasFunctionTools) s += "\nCalls to these tools must go to the commentary channel: 'functions'.";
    sections.push(s);
  }
  return sections.join('\n\n');
}

/** The text of a developer message. */
export function renderDeveloperContent(c: DeveloperContent): string {
  const sections: string[] = [];
  if (c.instructions !== undefined) sections.push(`# Instructions\n\n${c.instructions}`);
  if (c.tools && c.tools.length > 0) sections.push(`# Tools\n\n${c.tools.map(renderToolNamespace).join('\n\n')}`);
  return sections.join('\n\n');
}

function hasFunctionTools(messages: readonly Message[]): boolean {
  return messages.some(
    (m) => typeof m.content === 'object' && m.content.kind === 'developer' && (m.content.tools ?? []).some((ns) => ns.name === 'functions' && ns.tools.length > 0),
  );
}

function checkText(text: string, where: string, strict: boolean): void {
  if (!strict) return;
  for (const m of text.matchAll(SPECIAL_PATTERN)) {
    if (specialTextToId(m[0]) !== undefined) {
      throw new Error(`harmony render: ${where} contains the special token ${m[0]} (strictSpecials is on)`);
    }
  }
}

interface MessageRenderContext {
  hasFunctionTools: boolean;
  strict: boolean;
  /** Leave out `<|start|>` and the role: the message continues a prompt that ends with `<|start|>assistant`. */
  continuation?: boolean;
}

function messageText(m: Message, ctx: MessageRenderContext): string {
  if (typeof m.content === 'string') return m.content;
  if (m.content.kind === 'system') return renderSystemContent(m.content, ctx.hasFunctionTools);
  return renderDeveloperContent(m.content);
}

/** Appends the segments of one message. */
export function renderMessageInto(out: Segment[], m: Message, ctx: MessageRenderContext): void {
  if (!ctx.continuation) {
    out.push({ special: 'start' });
    if (m.role === 'tool') {
      if (!m.name) throw new Error('harmony render: a tool message needs a name (e.g. "functions.lookup_weather")');
      out.push({ text: m.name });
    } else {
      out.push({ text: m.role });
    }
  }
  const recipient = m.recipient !== undefined && m.recipient !== 'all' ? m.recipient : undefined;
  const inChannel = recipient !== undefined && m.recipientPlacement === 'channel' && m.channel !== undefined;
  if (recipient !== undefined && !inChannel) out.push({ text: ` to=${recipient}` });
  if (m.channel !== undefined) {
    out.push({ special: 'channel' }, { text: m.channel });
    if (inChannel) out.push({ text: ` to=${recipient}` });
  }
  if (m.contentType !== undefined) {
    if (m.contentType.startsWith('<|constrain|>')) {
      out.push({ text: ' ' }, { special: 'constrain' });
      const rest = m.contentType.slice('<|constrain|>'.length);
      if (rest) out.push({ text: rest });
    } else {
      out.push({ text: ` ${m.contentType}` });
    }
  }
  out.push({ special: 'message' });
  const text = messageText(m, ctx);
  checkText(text, `the content of a ${m.role} message`, ctx.strict);
  if (text) out.push({ text });
  const end: MessageEnd = m.end ?? (m.role === 'assistant' && recipient !== undefined ? 'call' : 'end');
  if (end !== 'none') out.push({ special: end });
}

/** Which messages survive analysis dropping (see RenderOptions.autoDropAnalysis). */
export function dropAnalysis(messages: readonly Message[]): Message[] {
  let lastAssistantIsFinal = false;
  for (let i = messages.length - 1; i >= 0; i--) {
    if (messages[i]!.role === 'assistant') {
      lastAssistantIsFinal = messages[i]!.channel === 'final';
      break;
    }
  }
  if (!lastAssistantIsFinal) return [...messages];
  const firstFinal = messages.findIndex((m) => m.channel === 'final');
  return messages.filter((m, i) => !(i < firstFinal && m.channel === 'analysis'));
}

/** Renders a whole conversation (no generation prompt). */
export function renderConversation(messages: readonly Message[], opts: RenderOptions = {}): Rendered {
  const kept = opts.autoDropAnalysis ?? true ? dropAnalysis(messages) : [...messages];
  const ctx: MessageRenderContext = { hasFunctionTools: hasFunctionTools(messages), strict: opts.strictSpecials ?? false };
  const out: Segment[] = [];
  for (const m of kept) renderMessageInto(out, m, ctx);
  return new Rendered(out);
}

/** Renders a conversation followed by `<|start|>{nextRole}`: the prompt from which the model generates. */
export function renderConversationForCompletion(
  messages: readonly Message[],
  nextRole: Role = 'assistant',
  opts: RenderOptions = {},
): Rendered {
  const r = renderConversation(messages, opts);
  return new Rendered([...r.segments, { special: 'start' }, { text: nextRole }]);
}

/**
 * Renders a conversation as a training target: analysis kept (autoDropAnalysis defaults to false here), and a last
 * assistant message on the final channel ends with `<|return|>`, as the model emits it.
 */
export function renderConversationForTraining(messages: readonly Message[], opts: RenderOptions = {}): Rendered {
  const last = messages[messages.length - 1];
  const msgs =
    last && last.role === 'assistant' && last.channel === 'final' && last.end === undefined
      ? [...messages.slice(0, -1), { ...last, end: 'return' as const }]
      : messages;
  return renderConversation(msgs, { ...opts, autoDropAnalysis: opts.autoDropAnalysis ?? false });
}

/**
 * Renders what the model writes after a prompt that ends with `<|start|>assistant`: the messages as a completion
 * (the first one without its `<|start|>assistant`). The first message must be an assistant message. For a
 * sampled answer, end the last message with 'return' (e.g. `{...final, end: 'return'}`); see completionMessages().
 */
export function renderCompletion(messages: readonly Message[], opts: Pick<RenderOptions, 'strictSpecials'> = {}): Rendered {
  if (messages.length === 0) return new Rendered([]);
  if (messages[0]!.role !== 'assistant') throw new Error(`renderCompletion: the first message must be an assistant message, got ${messages[0]!.role}`);
  const ctx: MessageRenderContext = { hasFunctionTools: false, strict: opts.strictSpecials ?? false };
  const out: Segment[] = [];
  messages.forEach((m, i) => renderMessageInto(out, m, { ...ctx, continuation: i === 0 }));
  return new Rendered(out);
}

/**
 * The usual completion of gpt-oss for a reasoning answer: an analysis message then a final message that ends with
 * `<|return|>` (for SFT targets and tests).
 */
export function completionMessages(analysis: string | null, final: string): Message[] {
  const out: Message[] = [];
  if (analysis !== null) out.push({ role: 'assistant', channel: 'analysis', content: analysis });
  out.push({ role: 'assistant', channel: 'final', content: final, end: 'return' });
  return out;
}
