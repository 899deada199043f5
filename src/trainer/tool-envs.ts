// tool-envs.ts: the built-in multi-turn environments (environment.env_class):
//   gsm8k_tools      GSM8K word problems with a calculator function tool (src/tools/calculator.ts);
//   synthetic_tools  a seeded task that can only be solved through a tool: "the value stored under key k17, plus 3"
//                    where only functions.lookup knows the value (for tests and the CPU learning demonstration).
// Both open an episode with system + developer (instructions and the `functions` namespace) + user messages; a
// model turn ending in a `<|call|>` to functions.NAME runs the tool (async, with environment.tool_timeout_s) and
// the result (or `error: ...`) comes back as a `functions.NAME to=assistant` commentary message; a final answer
// ends the episode with the reward rule's reward (`#### N`, environment.reward_rule).
import type { Config } from '../config/schema.ts';
import { childLogger } from '../log/logger.ts';
import { chatTemplateKwargsToOptions } from '../tokenizer/chat.ts';
import { completionMessages, developerMessage, renderCompletion, systemMessage, toolMessage, userMessage, type Message } from '../tokenizer/harmony.ts';
import { finalMessage } from '../tokenizer/parser.ts';
import { getTokenizer } from '../tokenizer/tokenizer.ts';
import { STOP_TOKEN_IDS } from '../tokenizer/specials.ts';
import { getRewardFn, type RewardFn } from '../reward/index.ts';
import { mulberry32 } from '../data/synthetic.ts';
import { calculatorTool } from '../tools/calculator.ts';
import { functionsToolNamespace, runToolCall, ToolError, type Tool } from '../tools/tool.ts';
import { renderEnvMessages, renderEpisodePrompt, type Episode, type EnvStep, type ModelTurn, type MultiTurnTaskEnv } from './multiturn.ts';
import { DataError, type TaskExample } from './task.ts';

const log = childLogger('env');

export interface ToolEpisodeSpec {
  /** The opening conversation. */
  messages: Message[];
  tools: Tool[];
  toolTimeoutMs: number;
  /** The ground truth the reward rule compares the final answer with. */
  answer: string;
  rewardFn: RewardFn;
}

/** The tool-calling episode both built-in environments play (see the top of this file). */
export class ToolEpisode implements Episode {
  constructor(private readonly spec: ToolEpisodeSpec) {}

  get messages(): readonly Message[] {
    return this.spec.messages;
  }

  async step(turn: ModelTurn): Promise<EnvStep> {
    const last = turn.messages[turn.messages.length - 1];
    if (last && last.end === 'call') {
      // Harmony puts one call per turn: generation stops at its <|call|>.
      const recipient = last.recipient ?? '';
      const r = recipient
        ? await runToolCall(this.spec.tools, recipient, last.content, this.spec.toolTimeoutMs)
        : { author: 'functions', text: `error: ${NO_RECIPIENT}`, ok: false, timedOut: false };
      const reply = toolMessage(r.author, r.text, { recipient: 'assistant', channel: 'commentary' });
      return { done: false, messages: [reply], toolCalls: 1, toolErrors: r.ok ? 0 : 1 };
    }
    const final = finalMessage({ messages: turn.messages, errors: [], truncated: false });
    if (!final) return { done: true, reward: 0, correct: false, answered: false };
    const text = getTokenizer().decode(turn.tokens);
    const r = this.spec.rewardFn(text, this.spec.answer, { completionTokens: Array.from(turn.tokens) });
    return { done: true, reward: r.reward, correct: r.reason === 'match', answered: true };
  }
}

function openingMessages(c: Config, instructions: string, tools: Tool[], question: string): Message[] {
  const o = chatTemplateKwargsToOptions((c.generator.chat_template_kwargs ?? {}) as Record<string, unknown>);
  return [
    systemMessage({
      ...(o.reasoningEffort ? { reasoningEffort: o.reasoningEffort } : {}),
      ...(o.modelIdentity ? { modelIdentity: o.modelIdentity } : {}),
      ...(o.knowledgeCutoff ? { knowledgeCutoff: o.knowledgeCutoff } : {}),
      currentDate: o.currentDate ?? null,
    }),
    developerMessage({ instructions, tools: [functionsToolNamespace(tools)] }),
    userMessage(question),
  ];
}

export const GSM8K_TOOLS_INSTRUCTIONS =
  'Solve the math word problem. Use functions.calculator for arithmetic. End your final answer with "#### N" where N is the number.';
export const SYNTHETIC_TOOLS_INSTRUCTIONS = 'Look values up with functions.lookup. Answer with "#### N".';

/** A synthetic tool-only problem: the value under `key` is known only to the lookup tool. */
export interface SyntheticToolsProblem {
  key: string;
  value: number;
  addend: number;
  question: string;
  answer: string;
}

/** Seeded synthetic tool-only problems (train and test draw from different streams). */
export function syntheticToolsProblems(count: number, seed: number, split: 'train' | 'test'): SyntheticToolsProblem[] {
  const rand = mulberry32(((seed * 2 + (split === 'test' ? 1 : 0)) ^ 0x5bd1e995) >>> 0);
  const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  return Array.from({ length: count }, () => {
    const key = `k${int(10, 99)}`;
    const value = int(0, 9);
    const addend = int(0, 9);
    return { key, value, addend, question: `What is the value of ${key} plus ${addend}?`, answer: String(value + addend) };
  });
}

/**
 * The reference episode of a synthetic problem (for SFT), after the opening prompt: the lookup call, the tool's
 * result (masked: the environment writes it) and `<|start|>assistant`, then the final answer `#### N`.
 */
export function syntheticToolsReference(p: SyntheticToolsProblem): { tokens: Int32Array; mask: Uint8Array } {
  const callTurn = renderCompletion([
    { role: 'assistant', channel: 'commentary', recipient: 'functions.lookup', recipientPlacement: 'channel', contentType: '<|constrain|>json', content: JSON.stringify({ key: p.key }) },
  ]).tokens();
  const result = renderEnvMessages([toolMessage('functions.lookup', String(p.value), { recipient: 'assistant', channel: 'commentary' })]);
  const answerTurn = renderCompletion(completionMessages(null, `#### ${p.answer}`)).tokens();
  const tokens = Int32Array.from([...callTurn, ...result, ...answerTurn]);
  const mask = new Uint8Array(tokens.length).fill(1);
  mask.fill(0, callTurn.length, callTurn.length + result.length);
  return { tokens, mask };
}

const LOOKUP_USAGE = 'lookup needs {"key": "<name>"}';
const NO_RECIPIENT = 'a tool call needs a recipient (to=functions.NAME) in its header';

/** The lookup tool of one synthetic problem. */
export function lookupTool(p: Pick<SyntheticToolsProblem, 'key' | 'value'>): Tool {
  return {
    name: 'lookup',
    description: 'Returns the value stored under a key.',
    parameters: { type: 'object', properties: { key: { type: 'string' } }, required: ['key'] },
    run(args) {
      if (typeof args.key !== 'string') throw new ToolError(LOOKUP_USAGE);
      if (args.key !== p.key) throw new ToolError(unknownKeyError(args.key));
      return String(p.value);
    },
  };
}

/** The lookup tool's error for a key it does not hold. */
function unknownKeyError(key: string): string {
  return `no value is stored under the key ${JSON.stringify(key.slice(0, 40))}`;
}

/**
 * Every message a synthetic_tools episode can inject, as tokens (for a compact vocabulary): each lookup result
 * (values 0..9), the unknown-key error for every key the task draws (k10..k99), and the fixed errors of a call
 * without a recipient, without a key, or with arguments that are not an object. Errors that quote the model's
 * malformed text (bad JSON, an unknown tool name) cannot be listed: the compact map's placeholder stands in.
 */
export function syntheticToolsInjectable(): number[][] {
  const reply = (author: string, text: string) => renderEnvMessages([toolMessage(author, text, { recipient: 'assistant', channel: 'commentary' })]);
  const out: number[][] = [];
  for (let v = 0; v <= 9; v++) out.push(reply('functions.lookup', String(v)));
  for (let k = 10; k <= 99; k++) out.push(reply('functions.lookup', `error: ${unknownKeyError(`k${k}`)}`));
  out.push(reply('functions.lookup', `error: ${LOOKUP_USAGE}`));
  out.push(reply('functions.lookup', 'error: the arguments must be a JSON object'));
  out.push(reply('functions', `error: ${NO_RECIPIENT}`));
  return out;
}

/** The multi-turn environment of environment.env_class gsm8k_tools or synthetic_tools. */
export async function buildToolTaskEnv(
  c: Config,
  loadGsm8kSplits?: () => Promise<{ train: Array<{ id: string; question: string; answer: string }>; val: Array<{ id: string; question: string; answer: string }> }>,
): Promise<MultiTurnTaskEnv> {
  const cls = c.environment.env_class;
  const rewardFn = getRewardFn(c.environment.reward_rule);
  const toolTimeoutMs = c.environment.tool_timeout_s * 1000;
  interface Row { id: string; question: string; answer: string; tools: Tool[]; instructions: string; reference?: { tokens: Int32Array; mask: Uint8Array } }
  let train: Row[];
  let val: Row[];
  if (cls === 'synthetic_tools') {
    const s = c.data.synthetic;
    const mk = (split: 'train' | 'test', count: number): Row[] =>
      syntheticToolsProblems(count, s.seed, split).map((p, i) => ({
        id: `synthetic_tools/${split}/${i}`,
        question: p.question,
        answer: p.answer,
        tools: [lookupTool(p)],
        instructions: SYNTHETIC_TOOLS_INSTRUCTIONS,
        reference: syntheticToolsReference(p),
      }));
    train = mk('train', c.data.max_train_samples ?? s.num_train);
    val = mk('test', c.data.max_val_samples ?? s.num_val);
  } else if (cls === 'gsm8k_tools') {
    if (!loadGsm8kSplits) throw new DataError('gsm8k_tools: no GSM8K loader given');
    const d = await loadGsm8kSplits();
    const mk = (rows: typeof d.train): Row[] => rows.map((r) => ({ ...r, tools: [calculatorTool], instructions: GSM8K_TOOLS_INSTRUCTIONS }));
    train = mk(d.train);
    val = mk(d.val);
  } else {
    throw new Error(`buildToolTaskEnv: environment.env_class=${cls} is not a multi-turn environment`);
  }
  const specs = new Map<TaskExample, ToolEpisodeSpec>();
  const toExample = (r: Row): TaskExample => {
    const messages = openingMessages(c, r.instructions, r.tools, r.question);
    const ex: TaskExample = { id: r.id, prompt: renderEpisodePrompt(messages), answer: r.answer, ...(r.reference ? { reference: r.reference.tokens, referenceMask: r.reference.mask } : {}) };
    specs.set(ex, { messages, tools: r.tools, toolTimeoutMs, answer: r.answer, rewardFn });
    return ex;
  };
  const maxLen = c.trainer.max_prompt_length;
  const filterLong = (xs: TaskExample[], what: string): TaskExample[] => {
    const kept = xs.filter((e) => e.prompt.length <= maxLen);
    if (kept.length < xs.length) log.warn('%s: dropped %d prompts longer than trainer.max_prompt_length=%d tokens', what, xs.length - kept.length, maxLen);
    return kept;
  };
  const trainEx = filterLong(train.map(toExample), 'train');
  const valEx = filterLong(val.map(toExample), 'validation');
  const tok = getTokenizer();
  log.info({ task: cls, train: trainEx.length, val: valEx.length, reward: c.environment.reward_rule, max_turns: c.generator.max_turns }, 'task loaded');
  return {
    name: cls,
    multiTurn: true,
    train: trainEx,
    val: valEx,
    stopTokenIds: [...STOP_TOKEN_IDS],
    startEpisode(ex) {
      const spec = specs.get(ex);
      if (!spec) throw new Error(`${cls}: example ${ex.id} is not one of this environment's`);
      return new ToolEpisode(spec);
    },
    ...(cls === 'synthetic_tools' ? { injectableTokens: syntheticToolsInjectable } : {}),
    // One-turn scoring (a completion without tool results): the reward rule on its text.
    reward(ex, completion) {
      const r = rewardFn(tok.decode(completion), ex.answer, { completionTokens: Array.from(completion) });
      return { reward: r.reward, correct: r.reason === 'match' };
    },
    decode: (t) => tok.decode(t),
  };
}
