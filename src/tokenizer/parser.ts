// parser.ts: parses harmony (a sampled completion, or any rendered conversation) back into messages.
//
// Never throws on model output: truncation (no terminator) and malformed structure (a missing <|start|>, a
// <|channel|> inside content, stray or reserved special tokens) are reported in `errors` and parsing goes on
// from the most plausible state, so that a final answer after a formatting slip is still found.
import { getTokenizer, type HarmonyTokenizer } from './tokenizer.ts';
import { SPECIAL_PATTERN, SPECIAL_TOKENS, specialIdToText, specialTextToId } from './specials.ts';
import type { Message, MessageEnd, Role } from './harmony.ts';

export interface ParsedMessage extends Message {
  content: string;
  /** How it ended; 'none' when the input stopped (or the structure broke) before a terminator. */
  end: MessageEnd;
  /** Token indices [start, end) of the content, when parsed from token ids. */
  contentSpan?: [number, number];
}

export type ParseIssueKind =
  | 'truncated'
  | 'missing-start'
  | 'unterminated'
  | 'bad-header'
  | 'unexpected-special'
  | 'stray-text'
  | 'unknown-channel';

export interface ParseIssue {
  kind: ParseIssueKind;
  message: string;
  /** Token index (token input) or character offset (text input) where it was noticed. */
  at: number;
}

export interface ParseResult {
  messages: ParsedMessage[];
  errors: ParseIssue[];
  /** The input ended inside a message or a header (no terminator): e.g. generation hit its length limit. */
  truncated: boolean;
}

export interface ParseOptions {
  /**
   * The role already opened by the prompt (which ends with `<|start|>assistant`), default 'assistant'; null when the
   * input starts with `<|start|>` itself (a whole conversation).
   */
  role?: Role | null;
  /** Channels that are not reported as unknown (default analysis, commentary, final). */
  channels?: readonly string[];
}

const ROLES: readonly Role[] = ['system', 'developer', 'user', 'assistant', 'tool'];
const KNOWN_CHANNELS: readonly string[] = ['analysis', 'commentary', 'final'];

/** A run of ordinary text, or one special token, with where it came from. */
type Item = { kind: 'text'; text: string; at: number; end: number } | { kind: 'special'; id: number; at: number; end: number };

function itemsFromTokens(ids: readonly number[], tok: HarmonyTokenizer): Item[] {
  const items: Item[] = [];
  let runStart = -1;
  const flush = (end: number) => {
    if (runStart >= 0) items.push({ kind: 'text', text: tok.decode(ids.slice(runStart, end)), at: runStart, end });
    runStart = -1;
  };
  for (let i = 0; i < ids.length; i++) {
    if (tok.isSpecial(ids[i]!)) {
      flush(i);
      items.push({ kind: 'special', id: ids[i]!, at: i, end: i + 1 });
    } else if (runStart < 0) {
      runStart = i;
    }
  }
  flush(ids.length);
  return items;
}

function itemsFromText(text: string): Item[] {
  const items: Item[] = [];
  let last = 0;
  for (const m of text.matchAll(SPECIAL_PATTERN)) {
    const id = specialTextToId(m[0]);
    if (id === undefined) continue;
    if (m.index! > last) items.push({ kind: 'text', text: text.slice(last, m.index), at: last, end: m.index! });
    items.push({ kind: 'special', id, at: m.index!, end: m.index! + m[0].length });
    last = m.index! + m[0].length;
  }
  if (last < text.length) items.push({ kind: 'text', text: text.slice(last), at: last, end: text.length });
  return items;
}

interface Header {
  /** The role opened by the prompt or by a recovery (the header text then has no role word). */
  implicitRole: Role | null;
  parts: Item[];
  at: number;
}

class HarmonyParser {
  readonly messages: ParsedMessage[] = [];
  readonly errors: ParseIssue[] = [];
  private state: 'between' | 'header' | 'content' = 'between';
  private header: Header | null = null;
  private current: ParsedMessage | null = null;
  private contentStart = -1;
  private contentEnd = -1;

  constructor(
    private readonly tokens: boolean,
    private readonly channels: readonly string[],
    role: Role | null,
  ) {
    if (role !== null) this.openHeader(role, 0);
  }

  private issue(kind: ParseIssueKind, message: string, at: number): void {
    this.errors.push({ kind, message, at });
  }

  private openHeader(implicitRole: Role | null, at: number): void {
    this.state = 'header';
    this.header = { implicitRole, parts: [], at };
  }

  private closeMessage(end: MessageEnd): void {
    const m = this.current!;
    m.end = end;
    if (this.tokens && this.contentStart >= 0) m.contentSpan = [this.contentStart, this.contentEnd];
    this.messages.push(m);
    this.current = null;
    this.state = 'between';
  }

  private parseHeader(h: Header): ParsedMessage | null {
    let s = '';
    for (const p of h.parts) s += p.kind === 'text' ? p.text : specialIdToText(p.id);
    const msg: ParsedMessage = { role: 'assistant', content: '', end: 'none' };
    const ci = s.indexOf('<|constrain|>');
    if (ci >= 0) {
      msg.contentType = `<|constrain|>${s.slice(ci + '<|constrain|>'.length).trim()}`;
      s = s.slice(0, ci);
    }
    const chi = s.indexOf('<|channel|>');
    const rolePart = chi >= 0 ? s.slice(0, chi) : s;
    const channelPart = chi >= 0 ? s.slice(chi + '<|channel|>'.length) : null;
    const words = rolePart.trim().split(/\s+/).filter(Boolean);
    if (h.implicitRole !== null) {
      msg.role = h.implicitRole;
    } else {
      const w = words.shift();
      if (w === undefined || w.startsWith('to=')) {
        this.issue('bad-header', `header "${s}" has no author; assuming assistant`, h.at);
        if (w !== undefined) words.unshift(w);
      } else if ((ROLES as readonly string[]).includes(w)) {
        msg.role = w as Role;
      } else {
        msg.role = 'tool';
        msg.name = w;
      }
    }
    const extra = (w: string, placement: 'role' | 'channel') => {
      if (w.startsWith('to=')) {
        msg.recipient = w.slice(3);
        if (placement === 'channel') msg.recipientPlacement = 'channel';
      } else if (msg.contentType === undefined) {
        msg.contentType = w;
      } else {
        this.issue('bad-header', `unexpected "${w}" in header "${s}"`, h.at);
      }
    };
    for (const w of words) extra(w, 'role');
    if (channelPart !== null) {
      if (channelPart.includes('<|channel|>')) this.issue('bad-header', `header "${s}" has two channels`, h.at);
      const cw = channelPart.replaceAll('<|channel|>', ' ').trim().split(/\s+/).filter(Boolean);
      const channel = cw.shift();
      if (channel === undefined) this.issue('bad-header', `header "${s}" has an empty channel`, h.at);
      else {
        msg.channel = channel;
        if (!this.channels.includes(channel)) this.issue('unknown-channel', `unknown channel "${channel}"`, h.at);
      }
      for (const w of cw) extra(w, 'channel');
    }
    return msg;
  }

  feed(it: Item): void {
    if (it.kind === 'text') {
      if (this.state === 'header') this.header!.parts.push(it);
      else if (this.state === 'content') {
        this.current!.content += it.text;
        if (this.contentStart < 0) this.contentStart = it.at;
        this.contentEnd = it.end;
      } else if (it.text.trim() !== '') {
        this.issue('stray-text', `text outside a message: ${JSON.stringify(it.text.slice(0, 40))}`, it.at);
      }
      return;
    }
    const name = specialIdToText(it.id)!;
    switch (it.id) {
      case SPECIAL_TOKENS.start:
        if (this.state === 'content') {
          this.issue('unterminated', 'message not terminated before <|start|>', it.at);
          this.closeMessage('none');
        } else if (this.state === 'header') {
          this.issue('bad-header', 'header interrupted by <|start|>', it.at);
        }
        this.openHeader(null, it.at);
        return;
      case SPECIAL_TOKENS.message:
        if (this.state === 'header') {
          this.current = this.parseHeader(this.header!);
          this.header = null;
          this.contentStart = -1;
          this.contentEnd = -1;
          this.state = 'content';
        } else {
          this.issue('unexpected-special', `unexpected <|message|> ${this.state === 'content' ? 'inside content' : 'outside a message'}`, it.at);
        }
        return;
      case SPECIAL_TOKENS.end:
      case SPECIAL_TOKENS.return:
      case SPECIAL_TOKENS.call: {
        const end: MessageEnd = it.id === SPECIAL_TOKENS.end ? 'end' : it.id === SPECIAL_TOKENS.return ? 'return' : 'call';
        if (this.state === 'content') this.closeMessage(end);
        else if (this.state === 'header') {
          this.issue('bad-header', `header ended by ${name} without <|message|>`, it.at);
          this.header = null;
          this.state = 'between';
        } else this.issue('unexpected-special', `stray ${name} outside a message`, it.at);
        return;
      }
      case SPECIAL_TOKENS.channel:
      case SPECIAL_TOKENS.constrain:
        if (this.state === 'header') {
          this.header!.parts.push(it);
          return;
        }
        if (it.id === SPECIAL_TOKENS.constrain) {
          this.issue('unexpected-special', `unexpected <|constrain|> ${this.state === 'content' ? 'inside content' : 'outside a message'}`, it.at);
          return;
        }
        // A new channel without <|end|><|start|>assistant: the model skipped the boundary; recover.
        if (this.state === 'content') {
          const role = this.current!.role;
          this.issue('unterminated', 'message not terminated before <|channel|>', it.at);
          this.closeMessage('none');
          this.openHeader(role, it.at);
        } else {
          this.issue('missing-start', '<|channel|> without <|start|>; assuming assistant', it.at);
          this.openHeader('assistant', it.at);
        }
        this.header!.parts.push(it);
        return;
      default:
        this.issue('unexpected-special', `unexpected special token ${name}`, it.at);
    }
  }

  finish(endAt: number): boolean {
    if (this.state === 'content') {
      this.issue('truncated', 'input ended inside a message (no <|end|>, <|return|> or <|call|>)', endAt);
      this.closeMessage('none');
      return true;
    }
    if (this.state === 'header') {
      const empty = this.header!.parts.length === 0;
      this.issue('truncated', empty ? 'input ended where a message should start' : 'input ended inside a message header', endAt);
      return true;
    }
    return false;
  }
}

function run(items: Item[], tokens: boolean, length: number, opts: ParseOptions): ParseResult {
  const p = new HarmonyParser(tokens, opts.channels ?? KNOWN_CHANNELS, opts.role === undefined ? 'assistant' : opts.role);
  for (const it of items) p.feed(it);
  const truncated = p.finish(length);
  return { messages: p.messages, errors: p.errors, truncated };
}

/** Parses token ids (e.g. a sampled completion) into messages. */
export function parseTokens(ids: readonly number[], opts: ParseOptions = {}, tok: HarmonyTokenizer = getTokenizer()): ParseResult {
  return run(itemsFromTokens(ids, tok), true, ids.length, opts);
}

/** Parses text with special tokens spelled out (`<|channel|>final<|message|>...`) into messages. */
export function parseText(text: string, opts: ParseOptions = {}): ParseResult {
  return run(itemsFromText(text), false, text.length, opts);
}

/** The last message on the final channel (possibly truncated: check its `end`), if any. */
export function finalMessage(r: ParseResult): ParsedMessage | undefined {
  for (let i = r.messages.length - 1; i >= 0; i--) {
    const m = r.messages[i]!;
    if (m.role === 'assistant' && m.channel === 'final') return m;
  }
  return undefined;
}

/** The text of the last final-channel message, if any. */
export function finalText(r: ParseResult): string | undefined {
  return finalMessage(r)?.content;
}

/** The assistant's analysis (chain of thought) messages, joined by newlines. */
export function analysisText(r: ParseResult): string {
  return r.messages
    .filter((m) => m.role === 'assistant' && m.channel === 'analysis')
    .map((m) => m.content)
    .join('\n');
}
