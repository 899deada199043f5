// Multi-turn episodes on a compact vocabulary (src/trainer/vocab.ts + the episode driver's token map): the map
// holds every token synthetic_tools can inject, a scripted policy writing compact ids plays the same conversation
// as on the full vocabulary (tool call parsed from mapped-back tokens, the tool result mapped in), an error that
// quotes a malformed call falls back to the placeholder (counted), and a task that cannot list what it injects is
// refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from '../../src/config/index.ts';
import { buildTaskEnv } from '../../src/trainer/env.ts';
import { episodeMetrics, isMultiTurn, playEpisode, type MultiTurnTaskEnv } from '../../src/trainer/multiturn.ts';
import { syntheticToolsInjectable, syntheticToolsProblems } from '../../src/trainer/tool-envs.ts';
import { buildVocabMap, compactTask, UNMAPPED_TOKEN, type VocabMap } from '../../src/trainer/vocab.ts';
import { DataError } from '../../src/trainer/task.ts';
import type { Completion, Generator, SamplingParams } from '../../src/trainer/policy.ts';
import { getTokenizer } from '../../src/tokenizer/index.ts';

process.env.GPTOSS_PROGRESS = 'off';
const tok = getTokenizer();
const text = (ids: ArrayLike<number>) => tok.decode(Array.from(ids));

/** Plays fixed turns (harmony text), writing them as compact ids the way a model on the compact vocabulary would. */
class CompactScriptedGenerator implements Generator {
  readonly prompts: Int32Array[] = [];
  constructor(private readonly turns: string[], private readonly vocab: VocabMap) {}
  async generate(prompts: Int32Array[]): Promise<Completion[]> {
    const turn = this.turns[this.prompts.length]!;
    for (const id of prompts[0]!) assert.ok(id >= 0 && id < this.vocab.size, `prompt id ${id} outside the compact vocabulary`);
    this.prompts.push(prompts[0]!);
    const tokens = this.vocab.encode(Int32Array.from(tok.encode(turn, { allowSpecial: true })));
    return [{ tokens, logprobs: Float32Array.from(tokens, () => -0.5), finishReason: 'stop' }];
  }
  async updateWeights(): Promise<void> {}
  dispose(): void {}
}

const call = (args: string) => `<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>${args}<|call|>`;
const final = (answer: string) => `<|channel|>final<|message|>#### ${answer}<|return|>`;
const params: SamplingParams = { maxTokens: 64, temperature: 1, seed: 1, stopTokenIds: [] };
const limits = { maxTurns: 4, maxTurnTokens: 64, maxTotalTokens: null };

async function compactSyntheticTools(): Promise<{ full: MultiTurnTaskEnv; env: MultiTurnTaskEnv; vocab: VocabMap }> {
  const c = loadConfig({ config: null, overrides: ['environment.env_class=synthetic_tools', 'generator.max_turns=4', 'data.max_train_samples=8', 'data.max_val_samples=2', 'data.synthetic.seed=0'] });
  const full = await buildTaskEnv(c);
  assert.ok(isMultiTurn(full));
  const { env, vocab } = compactTask(full);
  assert.ok(isMultiTurn(env) && env.tokenMap);
  return { full, env, vocab };
}

test('synthetic_tools on a compact vocabulary: it holds every injectable token; an episode plays as on the full vocabulary', async () => {
  const { env, vocab } = await compactSyntheticTools();
  assert.ok(vocab.size < 400, `compact vocabulary of ${vocab.size}`);
  assert.ok(vocab.toCompact.has(UNMAPPED_TOKEN));
  for (const ids of syntheticToolsInjectable()) for (const id of ids) assert.ok(vocab.toCompact.has(id), `injectable token ${id} (${text([id])}) not in the map`);
  const ex = env.train[3]!;
  const p = syntheticToolsProblems(4, 0, 'train')[3]!;
  const gen = new CompactScriptedGenerator([call(`{"key":"${p.key}"}`), final(p.answer)], vocab);
  const r = await playEpisode(gen, env.startEpisode(ex), limits, params, env.tokenMap);
  assert.deepEqual({ end: r.end, turns: r.turns, toolCalls: r.toolCalls, toolErrors: r.toolErrors, reward: r.reward, unmapped: r.unmappedTokens }, {
    end: 'answered', turns: 2, toolCalls: 1, toolErrors: 0, reward: { reward: 1, correct: true }, unmapped: 0,
  });
  // The result is in compact ids: the prompt is the example's, the response decodes to the harmony conversation.
  assert.deepEqual(Array.from(r.prompt), Array.from(ex.prompt));
  assert.equal(
    text(vocab.decode(r.completion.tokens)),
    call(`{"key":"${p.key}"}`) + `<|start|>functions.lookup to=assistant<|channel|>commentary<|message|>${p.value}<|end|><|start|>assistant` + final(p.answer),
  );
  // The injected part is masked; the second turn's prompt is the first's + its output + the mapped tool result.
  const injected = Array.from(r.completion.tokens).filter((_, i) => r.mask[i] === 0);
  assert.equal(text(vocab.decode(Int32Array.from(injected))), `<|start|>functions.lookup to=assistant<|channel|>commentary<|message|>${p.value}<|end|><|start|>assistant`);
  assert.deepEqual(Array.from(gen.prompts[1]!), [...r.prompt, ...r.completion.tokens.subarray(0, gen.prompts[1]!.length - r.prompt.length)]);
  // The reference episode (SFT) is the same token sequence as the played one.
  assert.deepEqual(Array.from(ex.reference!), Array.from(r.completion.tokens));
});

test('compact vocabulary: an injected token outside the map becomes the placeholder, counted; the episode goes on', async () => {
  const { env, vocab } = await compactSyntheticTools();
  const p = syntheticToolsProblems(1, 0, 'train')[0]!;
  // Bad JSON: the error quotes JSON.parse's message, whose words the map lacks.
  const gen = new CompactScriptedGenerator([call('{"key":'), call(`{"key":"${p.key}"}`), final(p.answer)], vocab);
  const r = await playEpisode(gen, env.startEpisode(env.train[0]!), limits, params, env.tokenMap);
  assert.equal(r.end, 'answered');
  assert.deepEqual(r.reward, { reward: 1, correct: true });
  assert.equal(r.toolErrors, 1);
  assert.ok(r.unmappedTokens > 0);
  const placeholder = vocab.toCompact.get(UNMAPPED_TOKEN)!;
  const placed = Array.from(r.completion.tokens).filter((t, i) => t === placeholder && r.mask[i] === 0).length;
  assert.equal(placed, r.unmappedTokens);
  assert.equal(episodeMetrics([r])['episode/unmapped_tokens'], r.unmappedTokens);
  const toolReply = r.conversation.find((m) => m.role === 'tool')!.content;
  assert.ok(typeof toolReply === 'string' && toolReply.startsWith('error: the arguments are not valid JSON'), String(toolReply));
});

test('compact vocabulary: refused for a multi-turn task that cannot list its injected tokens, and for a one-turn vocab.json', async () => {
  const { full, vocab } = await compactSyntheticTools();
  const { injectableTokens: _, ...unlisted } = full;
  assert.throws(() => compactTask(unlisted as MultiTurnTaskEnv), (e: Error) => e instanceof DataError && /cannot list the tokens its environment writes/.test(e.message));
  const oneTurn = buildVocabMap([Array.from(vocab.toOriginal).filter((t) => t !== UNMAPPED_TOKEN)]);
  assert.throws(() => compactTask(full, [], oneTurn), (e: Error) => e instanceof DataError && /was not built for a multi-turn task/.test(e.message));
});
