// tool.ts: function tools the model calls in harmony (`<|start|>assistant to=functions.NAME<|channel|>commentary
// <|constrain|>json<|message|>{...}<|call|>`), and running one call safely: the arguments are parsed as JSON, the
// tool runs with a timeout (an AbortSignal tells it to stop), and any failure (unknown tool, bad JSON, a thrown
// error, the timeout) becomes an error message for the model rather than an exception that ends the run.
import type { JsonSchema, ToolDescription, ToolNamespace } from '../tokenizer/tool-schema.ts';

export interface Tool {
  /** The function's name (called as `functions.<name>`). */
  readonly name: string;
  readonly description: string;
  /** JSON Schema of the argument object (rendered into the developer message). */
  readonly parameters: JsonSchema;
  /**
   * Runs one call; returns the text the model reads. Throw (or reject) with a ToolError for a bad call: its
   * message is what the model sees. The signal aborts when the call times out.
   */
  run(args: Record<string, unknown>, signal: AbortSignal): Promise<string> | string;
}

/** A bad tool call (its message goes back to the model). */
export class ToolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ToolError';
  }
}

export interface ToolCallResult {
  /** The author of the reply message (`functions.<name>`, or the recipient as the model wrote it). */
  author: string;
  /** The text of the tool message: the tool's output, or `error: ...`. */
  text: string;
  ok: boolean;
  timedOut: boolean;
}

/** The `functions` namespace of tools, for a harmony developer message. */
export function functionsToolNamespace(tools: readonly Tool[]): ToolNamespace {
  return { name: 'functions', tools: tools.map((t): ToolDescription => ({ name: t.name, description: t.description, parameters: t.parameters })) };
}

const MAX_ERROR_CHARS = 300;

/**
 * Runs the call the model addressed to `recipient` (e.g. 'functions.calculator') with the raw argument text.
 * Never throws for a bad call: unknown tools, arguments that are not a JSON object, a tool that throws or runs past
 * timeoutMs all give `{ok: false, text: 'error: ...'}`.
 */
export async function runToolCall(tools: readonly Tool[], recipient: string, rawArgs: string, timeoutMs: number): Promise<ToolCallResult> {
  const fail = (msg: string, timedOut = false): ToolCallResult => ({ author: recipient, text: `error: ${msg.slice(0, MAX_ERROR_CHARS)}`, ok: false, timedOut });
  const name = recipient.startsWith('functions.') ? recipient.slice('functions.'.length) : null;
  const tool = name === null ? undefined : tools.find((t) => t.name === name);
  if (!tool) {
    const shown = JSON.stringify(recipient.slice(0, 60));
    return fail(`unknown tool ${shown}; available: ${tools.map((t) => `functions.${t.name}`).join(', ') || 'none'}`);
  }
  let args: unknown;
  try {
    args = rawArgs.trim() === '' ? {} : JSON.parse(rawArgs);
  } catch (e) {
    return fail(`the arguments are not valid JSON (${(e as Error).message})`);
  }
  if (typeof args !== 'object' || args === null || Array.isArray(args)) return fail('the arguments must be a JSON object');
  const ac = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((res) => (timer = setTimeout(() => res('timeout'), timeoutMs)));
  try {
    const out = await Promise.race([Promise.resolve().then(() => tool.run(args as Record<string, unknown>, ac.signal)), timeout]);
    if (out === 'timeout') {
      ac.abort();
      return fail(`functions.${tool.name} timed out after ${timeoutMs} ms`, true);
    }
    return { author: `functions.${tool.name}`, text: out, ok: true, timedOut: false };
  } catch (e) {
    const msg = e instanceof ToolError ? e.message : `functions.${tool.name} failed: ${(e as Error)?.message ?? String(e)}`;
    return { ...fail(msg), author: `functions.${tool.name}` };
  } finally {
    clearTimeout(timer);
  }
}
