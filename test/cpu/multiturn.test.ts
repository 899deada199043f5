// Multi-turn episodes (src/trainer/multiturn.ts) with the built-in tool environments (src/trainer/tool-envs.ts),
// driven by scripted policies: tool calls, bad tool calls (bad JSON, unknown tool, wrong key, bad expression, a
// tool that hangs), the turn limit, the token budgets, a truncated turn, no answer; the conversation's tokens
// byte-exact against the expected harmony text, the loss mask (model tokens only), and the episode metrics.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from '../../src/config/index.ts';
import { buildTaskEnv } from '../../src/trainer/env.ts';
import { episodeMetrics, isMultiTurn, playEpisode, playEpisodes, type EpisodeLimits, type MultiTurnTaskEnv } from '../../src/trainer/multiturn.ts';
import { ToolEpisode, syntheticToolsProblems } from '../../src/trainer/tool-envs.ts';
import type { Completion, Generator, SamplingParams } from '../../src/trainer/policy.ts';
import { getTokenizer, parseText, renderConversation, userMessage, type Message } from '../../src/tokenizer/index.ts';
import { getRewardFn } from '../../src/reward/index.ts';
import type { Tool } from '../../src/tools/index.ts';

process.env.GPTOSS_PROGRESS = 'off';
const tok = getTokenizer();
const text = (ids: ArrayLike<number>) => tok.decode(Array.from(ids));

/** Plays a fixed list of turns (harmony text after `<|start|>assistant`), recording each turn's prompt. */
class ScriptedGenerator implements Generator {
  readonly prompts: Int32Array[] = [];
  constructor(private readonly turns: string[]) {}
  async generate(prompts: Int32Array[], p: SamplingParams): Promise<Completion[]> {
    assert.equal(prompts.length, 1, 'one generate() call per turn and episode');
    const turn = this.turns[this.prompts.length];
    assert.ok(turn !== undefined, `no scripted turn ${this.prompts.length + 1}`);
    this.prompts.push(prompts[0]!);
    const all = tok.encode(turn, { allowSpecial: true });
    const tokens = all.slice(0, p.maxTokens);
    await new Promise((r) => setTimeout(r, 1)); // other episodes run meanwhile
    return [{ tokens: Int32Array.from(tokens), logprobs: Float32Array.from(tokens, () => -0.25), finishReason: tokens.length < all.length ? 'length' : 'stop' }];
  }
  async updateWeights(): Promise<void> {}
  dispose(): void {}
}

const call = (fn: string, args: string) => `<|channel|>commentary to=functions.${fn} <|constrain|>json<|message|>${args}<|call|>`;
const final = (answer: string) => `<|channel|>analysis<|message|>Done.<|end|><|start|>assistant<|channel|>final<|message|>#### ${answer}<|return|>`;
const params: SamplingParams = { maxTokens: 64, temperature: 1, seed: 1, stopTokenIds: [] };
const limits = (o: Partial<EpisodeLimits> = {}): EpisodeLimits => ({ maxTurns: 4, maxTurnTokens: 64, maxTotalTokens: null, ...o });

async function syntheticEnv(): Promise<MultiTurnTaskEnv> {
  const c = loadConfig({ config: null, overrides: ['environment.env_class=synthetic_tools', 'generator.max_turns=4', 'data.max_train_samples=4', 'data.max_val_samples=2', 'data.synthetic.seed=0'] });
  const env = await buildTaskEnv(c);
  assert.ok(isMultiTurn(env));
  return env;
}

const SYSTEM =
  "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.\nCalls to these tools must go to the commentary channel: 'functions'.<|end|>";

test('synthetic_tools: lookup then answer; the conversation is byte-exact harmony and the mask covers the model tokens only', async () => {
  const env = await syntheticEnv();
  const ex = env.train[0]!;
  const p = syntheticToolsProblems(1, 0, 'train')[0]!;
  assert.equal(ex.answer, p.answer);
  const turns = [call('lookup', `{"key":"${p.key}"}`), final(p.answer)];
  const gen = new ScriptedGenerator(turns);
  const r = await playEpisode(gen, env.startEpisode(ex), limits(), params);
  assert.deepEqual({ end: r.end, turns: r.turns, toolCalls: r.toolCalls, toolErrors: r.toolErrors, reward: r.reward, finish: r.completion.finishReason }, {
    end: 'answered', turns: 2, toolCalls: 1, toolErrors: 0, reward: { reward: 1, correct: true }, finish: 'stop',
  });
  const expected =
    SYSTEM +
    '<|start|>developer<|message|># Instructions\n\nLook values up with functions.lookup. Answer with "#### N".\n\n# Tools\n\n## functions\n\nnamespace functions {\n\n' +
    '// Returns the value stored under a key.\ntype lookup = (_: {\nkey: string,\n}) => any;\n\n} // namespace functions<|end|>' +
    `<|start|>user<|message|>What is the value of ${p.key} plus ${p.addend}?<|end|>` +
    `<|start|>assistant<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{"key":"${p.key}"}<|call|>` +
    `<|start|>functions.lookup to=assistant<|channel|>commentary<|message|>${p.value}<|end|>` +
    `<|start|>assistant<|channel|>analysis<|message|>Done.<|end|><|start|>assistant<|channel|>final<|message|>#### ${p.answer}<|return|>`;
  assert.equal(text(r.prompt) + text(r.completion.tokens), expected);
  // The second turn's prompt is the whole conversation so far (the first turn's prompt and output, the tool result).
  assert.equal(text(gen.prompts[1]!), expected.slice(0, expected.indexOf('<|channel|>analysis')));
  assert.deepEqual(Array.from(gen.prompts[1]!.subarray(0, gen.prompts[0]!.length)), Array.from(gen.prompts[0]!));
  // Mask: 1 exactly on the sampled tokens (both turns), 0 on the tool message and the next `<|start|>assistant`.
  const model = Array.from(r.completion.tokens).filter((_, i) => r.mask[i] === 1);
  const injected = Array.from(r.completion.tokens).filter((_, i) => r.mask[i] === 0);
  assert.equal(text(model), turns.join(''));
  assert.equal(text(injected), `<|start|>functions.lookup to=assistant<|channel|>commentary<|message|>${p.value}<|end|><|start|>assistant`);
  r.completion.logprobs.forEach((lp, i) => assert.equal(lp, r.mask[i] ? -0.25 : 0));
  // The conversation as messages (the model's turns as parsed) renders to the same text, and parses back.
  assert.equal(renderConversation(r.conversation, { autoDropAnalysis: false }).text, expected);
  const parsed = parseText(expected, { role: null });
  assert.deepEqual(parsed.errors, []);
  assert.deepEqual(
    parsed.messages.map((m) => [m.role, m.name ?? null, m.recipient ?? null, m.channel ?? null, m.end]),
    [
      ['system', null, null, null, 'end'],
      ['developer', null, null, null, 'end'],
      ['user', null, null, null, 'end'],
      ['assistant', null, 'functions.lookup', 'commentary', 'call'],
      ['tool', 'functions.lookup', 'assistant', 'commentary', 'end'],
      ['assistant', null, null, 'analysis', 'end'],
      ['assistant', null, null, 'final', 'return'],
    ],
  );
});

test('synthetic_tools: bad tool calls come back as error messages and the episode goes on', async () => {
  const env = await syntheticEnv();
  const p = syntheticToolsProblems(2, 0, 'train')[1]!;
  const gen = new ScriptedGenerator([
    call('lookup', '{"key": '), // bad JSON
    call('lookup', '{"key":"zz"}'), // wrong key
    call('python', '{}'), // unknown tool
    call('lookup', `{"key":"${p.key}"}`),
  ]);
  const r = await playEpisode(gen, env.startEpisode(env.train[1]!), limits({ maxTurns: 4 }), params);
  assert.equal(r.end, 'max_turns');
  // Four calls made (the environment reads every turn), three failed; the last one's result is never shown.
  assert.deepEqual({ turns: r.turns, toolCalls: r.toolCalls, toolErrors: r.toolErrors, reward: r.reward }, { turns: 4, toolCalls: 4, toolErrors: 3, reward: { reward: 0, correct: false } });
  const tools = r.conversation.filter((m) => m.role === 'tool').map((m) => `${m.name}: ${m.content as string}`);
  assert.equal(tools.length, 3, 'the last turn hit the limit: no result follows it');
  assert.match(tools[0]!, /^functions\.lookup: error: the arguments are not valid JSON/);
  assert.equal(tools[1], 'functions.lookup: error: no value is stored under the key "zz"');
  assert.equal(tools[2], 'functions.python: error: unknown tool "functions.python"; available: functions.lookup');
  // The episode ends at the model's last turn: nothing is injected after it.
  assert.equal(r.mask[r.mask.length - 1], 1);
});

test('limits: the turn limit, the total token budget and a truncated turn end the episode; a turn with no answer and no call ends it unanswered', async () => {
  const env = await syntheticEnv();
  const ex = env.train[2]!;
  const p = syntheticToolsProblems(3, 0, 'train')[2]!;
  const lookup = call('lookup', `{"key":"${p.key}"}`);
  // Turn limit 2: call, call -> max_turns.
  let r = await playEpisode(new ScriptedGenerator([lookup, lookup]), env.startEpisode(ex), limits({ maxTurns: 2 }), params);
  assert.deepEqual([r.end, r.turns, r.toolCalls, r.reward.reward, r.completion.finishReason], ['max_turns', 2, 2, 0, 'stop']);
  // Total budget: room for the first turn and part of the second, which is cut -> 'budget' (and finish 'length').
  const promptLen = ex.prompt.length;
  const firstTurn = tok.encode(lookup, { allowSpecial: true }).length;
  r = await playEpisode(new ScriptedGenerator([lookup, final(p.answer)]), env.startEpisode(ex), limits({ maxTotalTokens: promptLen + firstTurn + 25 }), params);
  assert.deepEqual([r.end, r.turns, r.completion.finishReason, r.reward.reward], ['budget', 2, 'length', 0]);
  assert.ok(r.prompt.length + r.completion.tokens.length <= promptLen + firstTurn + 25);
  // Budget spent exactly before a turn: the episode ends without sampling.
  const gen = new ScriptedGenerator([lookup]);
  r = await playEpisode(gen, env.startEpisode(ex), limits({ maxTotalTokens: promptLen + firstTurn }), params);
  assert.deepEqual([r.end, r.turns, gen.prompts.length], ['budget', 1, 1]);
  // A turn that runs out of its own budget: truncated, finish 'length'.
  r = await playEpisode(new ScriptedGenerator([final(p.answer)]), env.startEpisode(ex), limits({ maxTurnTokens: 5 }), params);
  assert.deepEqual([r.end, r.turns, r.completion.finishReason, r.completion.tokens.length], ['truncated', 1, 'length', 5]);
  // Analysis then <|return|> without a final message: no answer.
  r = await playEpisode(new ScriptedGenerator(['<|channel|>analysis<|message|>hmm<|return|>']), env.startEpisode(ex), limits(), params);
  assert.deepEqual([r.end, r.reward.reward], ['no_answer', 0]);
});

test('gsm8k_tools: calculator calls (one good, one bad expression) then the answer; a hanging tool times out with an error message', async () => {
  const c = loadConfig({
    config: null,
    overrides: ['environment.env_class=gsm8k_tools', 'generator.max_turns=5', 'data.max_train_samples=2', 'data.max_val_samples=1', 'data.train_data=[bundled]', 'data.val_data=[bundled]'],
  });
  const env = await buildTaskEnv(c);
  assert.ok(isMultiTurn(env));
  const ex = env.train[0]!;
  assert.equal(ex.answer, '72');
  assert.match(text(ex.prompt), /# Tools\n\n## functions\n\nnamespace functions \{\n\n\/\/ Evaluates an arithmetic expression.*\ntype calculator = \(_: \{\n\/\/ The expression, e\.g\. 12 \* \(3 \+ 4\) \/ 2\nexpression: string,\n\}\) => any;/s);
  const gen = new ScriptedGenerator([call('calculator', '{"expression": "48 / 0"}'), call('calculator', '{"expression": "48 / 2 + 48"}'), final('72')]);
  const r = await playEpisode(gen, env.startEpisode(ex), limits({ maxTurns: 5 }), params);
  assert.deepEqual([r.end, r.turns, r.toolCalls, r.toolErrors, r.reward.reward], ['answered', 3, 2, 1, 1]);
  assert.deepEqual(r.conversation.filter((m) => m.role === 'tool').map((m) => m.content), ['error: division by zero', '72']);

  // A tool that never answers: the call times out and the model reads an error (ToolEpisode with a custom tool).
  const hang: Tool = { name: 'slow', description: 'never answers', parameters: {}, run: (_a, signal) => new Promise((res) => signal.addEventListener('abort', () => res('late'))) };
  const episode = new ToolEpisode({ messages: [userMessage('hi')], tools: [hang], toolTimeoutMs: 20, answer: '1', rewardFn: getRewardFn('strict') });
  const r2 = await playEpisode(new ScriptedGenerator([call('slow', '{}'), final('1')]), episode, limits(), params);
  assert.deepEqual([r2.end, r2.toolErrors, r2.reward.reward], ['answered', 1, 1]);
  assert.equal((r2.conversation.find((m) => m.role === 'tool') as Message).content, 'error: functions.slow timed out after 20 ms');
});

test('playEpisodes: the episodes are in flight together (every first turn before any second); metrics', async () => {
  const env = await syntheticEnv();
  const probs = syntheticToolsProblems(4, 0, 'train');
  // One generator for all: each episode's turn is picked from its own prompt (the question names the key).
  const order: string[] = [];
  const gen: Generator = {
    async generate(prompts) {
      const t = text(prompts[0]!);
      const p = probs.find((q) => t.includes(`value of ${q.key} plus ${q.addend}?`))!;
      const answered = t.includes('<|start|>functions.lookup');
      order.push(`${p.key}:${answered ? 2 : 1}`);
      const turn = answered ? final(p.answer) : call('lookup', `{"key":"${p.key}"}`);
      const ids = tok.encode(turn, { allowSpecial: true });
      return [{ tokens: Int32Array.from(ids), logprobs: new Float32Array(ids.length), finishReason: 'stop' }];
    },
    async updateWeights() {},
    dispose() {},
  };
  const rs = await playEpisodes(gen, env.train.map((e) => env.startEpisode(e)), limits(), params);
  assert.deepEqual(rs.map((r) => r.reward.reward), [1, 1, 1, 1]);
  // Every first turn is asked before any second turn: the episodes are in flight together.
  assert.deepEqual(order.slice(0, 4).map((o) => o.endsWith(':1')), [true, true, true, true]);
  const m = episodeMetrics(rs);
  assert.equal(m['episode/turns'], 2);
  assert.equal(m['episode/tool_calls'], 1);
  assert.equal(m['episode/tool_errors'], 0);
  assert.equal(m['episode/answered_frac'], 1);
  assert.ok(m['episode/env_tokens']! > 0 && m['episode/model_tokens']! > 0);
});

test('config: max_turns > 1 needs a tool environment; a tool environment needs max_turns >= 2', () => {
  assert.throws(() => loadConfig({ config: null, overrides: ['generator.max_turns=3'] }), /generator\.max_turns=3 needs a multi-turn environment/);
  assert.throws(() => loadConfig({ config: null, overrides: ['environment.env_class=synthetic_tools'] }), /set generator\.max_turns >= 2/);
  const c = loadConfig({ config: null, overrides: ['environment.env_class=gsm8k_tools', 'generator.max_turns=4', 'generator.max_input_length=2048', 'environment.tool_timeout_s=2'] });
  assert.deepEqual([c.generator.max_turns, c.generator.max_input_length, c.environment.tool_timeout_s], [4, 2048, 2]);
});

test('synthetic_tools reference (SFT): the model turns replayed through the environment give back the same tokens, mask and reward', async () => {
  const env = await syntheticEnv();
  const ex = env.train[3]!;
  const p = syntheticToolsProblems(4, 0, 'train')[3]!;
  const ref = ex.reference!;
  const mask = ex.referenceMask!;
  assert.equal(
    text(ref),
    `<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{"key":"${p.key}"}<|call|>` +
      `<|start|>functions.lookup to=assistant<|channel|>commentary<|message|>${p.value}<|end|><|start|>assistant` +
      `<|channel|>final<|message|>#### ${p.answer}<|return|>`,
  );
  // Split the reference into its model turns (runs of mask 1) and play them.
  const turns: string[] = [];
  for (let i = 0; i < ref.length; i++) {
    if (!mask[i] || (i > 0 && mask[i - 1])) continue;
    const end = mask.indexOf(0, i);
    turns.push(text(ref.subarray(i, end < 0 ? ref.length : end)));
  }
  assert.equal(turns.length, 2);
  const r = await playEpisode(new ScriptedGenerator(turns), env.startEpisode(ex), limits(), params);
  assert.deepEqual(Array.from(r.completion.tokens), Array.from(ref));
  assert.deepEqual(Array.from(r.mask), Array.from(mask));
  assert.deepEqual(r.reward, { reward: 1, correct: true });
});
