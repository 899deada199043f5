// chat.ts: chat-API style messages (what datasets and `chat_template` users write: {role, content, thinking,
// tool_calls}) rendered as a gpt-oss harmony prompt, plus the `chat_template_kwargs` of the config
// (`+generator.chat_template_kwargs={reasoning_effort: low}`).
//
// Mapping (the conventions of the gpt-oss model card's chat template):
// - a system message is always rendered from the options (identity, knowledge cutoff, current date, reasoning
//   effort, channels); the date defaults to today, so fix `currentDate` for reproducible prompts;
// - a leading chat `system` or `developer` message becomes the developer message's `# Instructions`, and the
//   function tools go under its `# Tools` (which adds the commentary-channel note to the system message);
// - an assistant message renders its `thinking` (or `reasoning_content`) on the analysis channel only in the
//   current turn (after the last user message): earlier chains of thought are dropped; `tool_calls` become
//   commentary messages to `functions.NAME` with content type `<|constrain|>json` ending in `<|call|>` (content
//   next to tool calls is a commentary preamble); otherwise `content` goes on the final channel, ending with
//   `<|return|>` when it is the last message of a render without a generation prompt (a training target);
// - a `tool` message is authored by `functions.NAME` to the assistant on the commentary channel (NAME from its
//   `name`, or from the assistant tool call whose id matches `tool_call_id`, or from the latest tool call).
import {
  REASONING_EFFORTS,
  Rendered,
  renderConversation,
  systemMessage,
  type Message,
  type ReasoningEffort,
  type RenderOptions,
} from './harmony.ts';
import type { JsonSchema, ToolDescription, ToolNamespace } from './tool-schema.ts';

export type ChatRole = 'system' | 'developer' | 'user' | 'assistant' | 'tool';

export interface ChatToolCall {
  id?: string;
  type?: 'function';
  function: { name: string; arguments: string | Record<string, unknown> };
}

export interface ChatMessage {
  role: ChatRole;
  content?: string | null;
  /** The assistant's chain of thought (analysis channel). */
  thinking?: string | null;
  /** Alias of thinking used by some servers. */
  reasoning_content?: string | null;
  tool_calls?: ChatToolCall[];
  /** For tool messages: the function name. */
  name?: string;
  tool_call_id?: string;
}

/** An OpenAI-style function tool. */
export interface ChatTool {
  type: 'function';
  function: { name: string; description?: string; parameters?: JsonSchema };
}

export interface ChatRenderOptions {
  /** Default 'medium' (the peer example sets low through chat_template_kwargs). */
  reasoningEffort?: ReasoningEffort;
  /** `Current date:`; default today's date (local time); null leaves the line out. */
  currentDate?: string | Date | null;
  modelIdentity?: string;
  knowledgeCutoff?: string;
  tools?: readonly ChatTool[];
  /** Applied over the options above: see chatTemplateKwargsToOptions(). */
  chatTemplateKwargs?: Readonly<Record<string, unknown>>;
  /** End with `<|start|>assistant` (default true). */
  addGenerationPrompt?: boolean;
  strictSpecials?: RenderOptions['strictSpecials'];
}

/** The chat_template_kwargs we understand, in the model card template's spelling. */
export const CHAT_TEMPLATE_KWARGS = ['reasoning_effort', 'model_identity', 'knowledge_cutoff', 'current_date'] as const;

/**
 * Maps `chat_template_kwargs` ({reasoning_effort: 'low'}, ...) onto render options. Unknown keys and bad values
 * throw, naming the key.
 */
export function chatTemplateKwargsToOptions(kwargs: Readonly<Record<string, unknown>>): Partial<ChatRenderOptions> {
  const out: Partial<ChatRenderOptions> = {};
  for (const [key, value] of Object.entries(kwargs)) {
    switch (key) {
      case 'reasoning_effort':
        if (!REASONING_EFFORTS.includes(value as ReasoningEffort)) {
          throw new Error(`chat_template_kwargs.reasoning_effort must be one of ${REASONING_EFFORTS.join(', ')}, got ${JSON.stringify(value)}`);
        }
        out.reasoningEffort = value as ReasoningEffort;
        break;
      case 'model_identity':
      case 'knowledge_cutoff':
      case 'current_date':
        if (typeof value !== 'string') throw new Error(`chat_template_kwargs.${key} must be a string, got ${JSON.stringify(value)}`);
        if (key === 'model_identity') out.modelIdentity = value;
        else if (key === 'knowledge_cutoff') out.knowledgeCutoff = value;
        else out.currentDate = value;
        break;
      default:
        throw new Error(`chat_template_kwargs.${key} is not supported (known: ${CHAT_TEMPLATE_KWARGS.join(', ')})`);
    }
  }
  return out;
}

/** JSON the way Python's json.dumps writes it by default (`, ` and `: ` separators), non-ASCII kept. */
export function pythonJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(pythonJson).join(', ')}]`;
  return `{${Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${JSON.stringify(k)}: ${pythonJson(v)}`)
    .join(', ')}}`;
}

function toolArguments(args: string | Record<string, unknown>): string {
  return typeof args === 'string' ? args : pythonJson(args);
}

/** The `functions` namespace for chat tools. */
export function functionsNamespace(tools: readonly ChatTool[]): ToolNamespace {
  return {
    name: 'functions',
    tools: tools.map((t): ToolDescription => ({
      name: t.function.name,
      description: t.function.description ?? '',
      ...(t.function.parameters ? { parameters: t.function.parameters } : {}),
    })),
  };
}

function resolvedOptions(opts: ChatRenderOptions): ChatRenderOptions {
  return opts.chatTemplateKwargs ? { ...opts, ...chatTemplateKwargsToOptions(opts.chatTemplateKwargs) } : opts;
}

/** Converts chat messages to harmony messages (system message included), as described at the top of this file. */
export function chatToHarmony(messages: readonly ChatMessage[], options: ChatRenderOptions = {}): Message[] {
  const opts = resolvedOptions(options);
  const addGen = opts.addGenerationPrompt ?? true;
  const out: Message[] = [
    systemMessage({
      ...(opts.modelIdentity !== undefined ? { modelIdentity: opts.modelIdentity } : {}),
      ...(opts.knowledgeCutoff !== undefined ? { knowledgeCutoff: opts.knowledgeCutoff } : {}),
      currentDate: opts.currentDate === undefined ? new Date() : opts.currentDate,
      reasoningEffort: opts.reasoningEffort ?? 'medium',
    }),
  ];
  let rest = messages;
  let instructions: string | undefined;
  if (rest.length > 0 && (rest[0]!.role === 'system' || rest[0]!.role === 'developer')) {
    instructions = rest[0]!.content ?? '';
    rest = rest.slice(1);
  }
  const tools = opts.tools && opts.tools.length > 0 ? [functionsNamespace(opts.tools)] : undefined;
  if (instructions !== undefined || tools) {
    out.push({
      role: 'developer',
      content: { kind: 'developer', ...(instructions !== undefined ? { instructions } : {}), ...(tools ? { tools } : {}) },
    });
  }
  let lastUser = -1;
  rest.forEach((m, i) => {
    if (m.role === 'user') lastUser = i;
  });
  const callNames = new Map<string, string>();
  let lastCallName: string | undefined;
  rest.forEach((m, i) => {
    const isLast = i === rest.length - 1;
    switch (m.role) {
      case 'user':
        out.push({ role: 'user', content: m.content ?? '' });
        break;
      case 'assistant': {
        const thinking = m.thinking || m.reasoning_content || '';
        if (thinking && i > lastUser) out.push({ role: 'assistant', channel: 'analysis', content: thinking });
        if (m.tool_calls && m.tool_calls.length > 0) {
          if (m.content) out.push({ role: 'assistant', channel: 'commentary', content: m.content });
          for (const tc of m.tool_calls) {
            if (tc.id !== undefined) callNames.set(tc.id, tc.function.name);
            lastCallName = tc.function.name;
            out.push({
              role: 'assistant',
              channel: 'commentary',
              recipient: `functions.${tc.function.name}`,
              contentType: '<|constrain|>json',
              content: toolArguments(tc.function.arguments),
            });
          }
        } else if (m.content) {
          out.push({ role: 'assistant', channel: 'final', content: m.content, ...(isLast && !addGen ? { end: 'return' as const } : {}) });
        }
        break;
      }
      case 'tool': {
        const name = m.name ?? (m.tool_call_id !== undefined ? callNames.get(m.tool_call_id) : undefined) ?? lastCallName;
        if (name === undefined) throw new Error(`chatToHarmony: tool message ${i} has no name and follows no tool call`);
        out.push({ role: 'tool', name: `functions.${name}`, recipient: 'assistant', channel: 'commentary', content: m.content ?? '' });
        break;
      }
      default:
        throw new Error(`chatToHarmony: a ${m.role} message may only come first (message ${i})`);
    }
  });
  return out;
}

/**
 * Renders chat messages as a gpt-oss prompt (by default ending with `<|start|>assistant`, ready for generation).
 * `.text` is the string, `.tokens()` the ids.
 */
export function renderChatPrompt(messages: readonly ChatMessage[], opts: ChatRenderOptions = {}): Rendered {
  const r = renderConversation(chatToHarmony(messages, opts), {
    autoDropAnalysis: false, // chatToHarmony already dropped earlier turns' thinking
    ...(opts.strictSpecials !== undefined ? { strictSpecials: opts.strictSpecials } : {}),
  });
  if (opts.addGenerationPrompt ?? true) return new Rendered([...r.segments, { special: 'start' }, { text: 'assistant' }]);
  return r;
}
