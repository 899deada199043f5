// multiturn.ts: multi-turn environments and the rollout driver that plays their episodes against a Generator.
//
// An episode is one conversation. The environment opens it (harmony messages: system, developer with the function
// tools, user); the model writes a turn (sampled until <|call|> or <|return|>); the environment reads the turn's
// parsed messages and either answers (tool results, a user follow-up: the model then continues) or ends the
// episode with a reward. Limits end an episode too: generator.max_turns model turns, a per-turn budget
// (sampling_params.max_generate_length) and a total budget for the whole conversation (generator.max_input_length,
// prompt included); an episode cut by a limit gets the environment's limitReward (0 by default) and, when a turn
// ran out of tokens (finish 'length'), the trainer's zero_reward_on_non_stop applies as for one-turn completions.
//
// Token bookkeeping: the conversation is kept as the exact token ids the model saw. The model's sampled tokens are
// appended as they came (never re-encoded: BPE of the decoded text could differ); what the environment adds is
// rendered (harmony) and appended, followed by `<|start|>assistant` for the next turn. Each episode thus yields
// prompt + response, where the response is every token after the first prompt, with a loss mask (1: sampled by
// the model, 0: injected by the environment) and the sampler's log-probs (0 at injected tokens).
//
// Episodes run concurrently: each is its own async loop whose turns are separate generate() calls, so an engine
// batches the turns of every episode in flight (continuous batching), a tool call of one episode runs while the
// others decode, and a later turn's prompt (the whole conversation so far) starts with the previous turn's
// prompt + output, so its blocks come from the engine's prefix cache instead of being prefilled again.
import { SPECIAL_TOKENS } from '../tokenizer/specials.ts';
import { getTokenizer } from '../tokenizer/tokenizer.ts';
import { renderConversation, type Message } from '../tokenizer/harmony.ts';
import { parseTokens, type ParsedMessage } from '../tokenizer/parser.ts';
import type { Completion, Generator, SamplingParams } from './policy.ts';
import type { RewardResult, TaskEnv, TaskExample } from './task.ts';

/** What the environment does after a model turn. */
export type EnvStep =
  | {
      done: false;
      /** Messages appended to the conversation (tool results, a user follow-up); the model then writes the next turn. */
      messages: Message[];
      /** Tool calls run for this turn and how many of them failed (for metrics). */
      toolCalls?: number;
      toolErrors?: number;
    }
  | {
      done: true;
      reward: number;
      correct: boolean;
      /** The episode ended with an answer (default true); false: e.g. the model stopped without a final message. */
      answered?: boolean;
      toolCalls?: number;
      toolErrors?: number;
    };

/** One episode of a multi-turn environment: its opening and how it answers each model turn. */
export interface Episode {
  /** The opening conversation (system, developer, user); the model's first turn follows it. */
  readonly messages: readonly Message[];
  /**
   * Reads the model's latest turn (its messages as parsed; `turn.end` says how its last message ended) with the
   * conversation so far, and answers or ends the episode. May be async (tools); must not throw for bad model
   * output (a bad tool call gets an error message back).
   */
  step(turn: ModelTurn, conversation: readonly Message[]): Promise<EnvStep> | EnvStep;
  /** The reward of an episode cut by a limit (turns, token budget, a truncated turn); default 0, not correct. */
  limitReward?(conversation: readonly Message[]): RewardResult;
}

export interface ModelTurn {
  /** The turn's messages (the first one's role comes from the prompt's `<|start|>assistant`). */
  messages: ParsedMessage[];
  /** The turn's sampled tokens. */
  tokens: Int32Array;
  /** 1-based. */
  index: number;
}

/**
 * The model's token space when it differs from o200k_harmony's (a compact vocabulary, src/trainer/vocab.ts): the
 * episode driver renders and parses harmony in original ids and converts at the model's boundary.
 */
export interface EpisodeTokenMap {
  /**
   * Original ids -> model ids, for text the environment writes. An id outside the model's vocabulary becomes the
   * map's placeholder id (the model reads "a token it does not know"); `unmapped` counts them.
   */
  toModel(ids: ArrayLike<number>): { ids: Int32Array; unmapped: number };
  /** Model ids -> original ids (every model id has one). */
  fromModel(ids: Int32Array): Int32Array;
}

/** A task whose examples are played as multi-turn episodes. */
export interface MultiTurnTaskEnv extends TaskEnv {
  readonly multiTurn: true;
  startEpisode(example: TaskExample): Episode;
  /**
   * Token lists of everything the environment can write during an episode (tool results, error messages, framing),
   * as far as it is enumerable: a compact vocabulary includes them (data.compact_vocab).
   */
  injectableTokens?(): Iterable<ArrayLike<number>>;
  /** Set on a task mapped onto a compact vocabulary: the model's ids are not o200k_harmony's. */
  readonly tokenMap?: EpisodeTokenMap;
}

export function isMultiTurn(env: TaskEnv): env is MultiTurnTaskEnv {
  return (env as Partial<MultiTurnTaskEnv>).multiTurn === true;
}

export interface EpisodeLimits {
  /** Model turns at most (generator.max_turns). */
  maxTurns: number;
  /** Tokens a turn may sample at most (sampling_params.max_generate_length). */
  maxTurnTokens: number;
  /** Tokens of the whole conversation, prompt included, at most (generator.max_input_length; null: no bound). */
  maxTotalTokens: number | null;
}

/**
 * How an episode ended: the environment ended it on an answer, or without one (the model stopped with neither a
 * final message nor a tool call), or a limit cut it (turns; the total token budget; a turn's own token budget).
 */
export type EpisodeEnd = 'answered' | 'no_answer' | 'max_turns' | 'budget' | 'truncated';

/** One played episode. */
export interface EpisodeResult {
  /** The opening prompt's tokens (ending with `<|start|>assistant`). */
  prompt: Int32Array;
  /**
   * Every token after the prompt (model turns and environment messages), with per-token log-probs (the sampler's;
   * 0 at injected tokens) and 'stop' unless the last model turn ran out of tokens.
   */
  completion: Completion;
  /** 1 where the token was sampled by the model (enters the loss), 0 where the environment injected it. */
  mask: Uint8Array;
  reward: RewardResult;
  end: EpisodeEnd;
  turns: number;
  toolCalls: number;
  toolErrors: number;
  /** The whole conversation as messages (opening, model turns as parsed, environment messages). */
  conversation: Message[];
  /** Injected tokens outside the model's vocabulary (a compact one), given as its placeholder id; 0 without a map. */
  unmappedTokens: number;
}

const START_ASSISTANT = (): number[] => [SPECIAL_TOKENS.start, ...getTokenizer().encodeOrdinary('assistant')];

/** The tokens of messages the environment appends, then `<|start|>assistant` (the next turn's generation prompt). */
export function renderEnvMessages(messages: readonly Message[]): number[] {
  return [...renderConversation(messages, { autoDropAnalysis: false }).tokens(), ...START_ASSISTANT()];
}

/** The opening prompt's tokens: the messages, then `<|start|>assistant`. */
export function renderEpisodePrompt(messages: readonly Message[]): Int32Array {
  return Int32Array.from(renderEnvMessages(messages));
}

class TokenBuffer {
  tokens: number[] = [];
  logprobs: number[] = [];
  mask: number[] = [];
  push(tokens: ArrayLike<number>, logprobs: ArrayLike<number> | null): void {
    for (let i = 0; i < tokens.length; i++) {
      this.tokens.push(tokens[i]!);
      this.logprobs.push(logprobs ? logprobs[i]! : 0);
      this.mask.push(logprobs ? 1 : 0);
    }
  }
}

/**
 * Plays one episode. `seed` is the episode's sampling seed (turn k samples with seed + 7919·k, so turns differ and
 * a replay is reproducible). With a token map the generator works in the model's ids: prompts, injected text and
 * the result's tokens are model ids, while parsing, the environment and the conversation see original ids.
 */
export async function playEpisode(generator: Generator, episode: Episode, limits: EpisodeLimits, params: SamplingParams, tokenMap?: EpisodeTokenMap): Promise<EpisodeResult> {
  let unmappedTokens = 0;
  const toModel = (ids: ArrayLike<number>): ArrayLike<number> => {
    if (!tokenMap) return ids;
    const r = tokenMap.toModel(ids);
    unmappedTokens += r.unmapped;
    return r.ids;
  };
  const prompt = Int32Array.from(toModel(renderEpisodePrompt(episode.messages)));
  const conversation: Message[] = [...episode.messages];
  const buf = new TokenBuffer();
  let toolCalls = 0;
  let toolErrors = 0;
  let finishReason: 'stop' | 'length' = 'stop';
  let end: EpisodeEnd | null = null;
  let reward: RewardResult | null = null;
  let turns = 0;
  while (end === null) {
    const used = prompt.length + buf.tokens.length;
    const room = limits.maxTotalTokens === null ? limits.maxTurnTokens : Math.min(limits.maxTurnTokens, limits.maxTotalTokens - used);
    if (room < 1) {
      end = 'budget';
      break;
    }
    const context = new Int32Array(used);
    context.set(prompt, 0);
    context.set(buf.tokens, prompt.length);
    turns++;
    const [c] = await generator.generate([context], { ...params, maxTokens: room, seed: (params.seed + 7919 * turns) >>> 0 });
    buf.push(c!.tokens, c!.logprobs);
    const turnTokens = tokenMap ? tokenMap.fromModel(c!.tokens) : c!.tokens; // original ids
    const parsed = parseTokens(Array.from(turnTokens), { role: 'assistant' });
    conversation.push(...parsed.messages);
    if (c!.finishReason === 'length') {
      finishReason = 'length';
      // A turn cut by its own budget ends the episode: cut by the total budget when that was the tighter bound.
      end = room < limits.maxTurnTokens ? 'budget' : 'truncated';
      break;
    }
    const st = await episode.step({ messages: parsed.messages, tokens: turnTokens, index: turns }, conversation);
    toolCalls += st.toolCalls ?? 0;
    toolErrors += st.toolErrors ?? 0;
    if (st.done) {
      reward = { reward: st.reward, correct: st.correct };
      end = st.answered === false ? 'no_answer' : 'answered';
      break;
    }
    if (turns >= limits.maxTurns) {
      end = 'max_turns';
      break;
    }
    conversation.push(...st.messages);
    buf.push(toModel(renderEnvMessages(st.messages)), null);
  }
  return {
    prompt,
    completion: { tokens: Int32Array.from(buf.tokens), logprobs: Float32Array.from(buf.logprobs), finishReason },
    mask: Uint8Array.from(buf.mask),
    reward: reward ?? episode.limitReward?.(conversation) ?? { reward: 0, correct: false },
    end: end!,
    turns,
    toolCalls,
    toolErrors,
    conversation,
    unmappedTokens,
  };
}

/**
 * Plays every episode at once (each its own async loop: an engine batches their turns). Episode i samples with
 * seed params.seed + 1000003·i.
 */
export async function playEpisodes(generator: Generator, episodes: readonly Episode[], limits: EpisodeLimits, params: SamplingParams, tokenMap?: EpisodeTokenMap): Promise<EpisodeResult[]> {
  if (!Number.isInteger(limits.maxTurns) || limits.maxTurns < 1) throw new Error(`playEpisodes: maxTurns must be an integer >= 1, got ${limits.maxTurns}`);
  const all = () => Promise.all(episodes.map((e, i) => playEpisode(generator, e, limits, { ...params, seed: (params.seed + 1000003 * i) >>> 0 }, tokenMap)));
  return generator.session ? generator.session(all) : all();
}

/** Sums of episode statistics for the step's metrics (turns, tool calls and errors, how episodes ended). */
export function episodeMetrics(results: readonly EpisodeResult[]): Record<string, number> {
  const n = Math.max(1, results.length);
  const count = (e: EpisodeEnd) => results.filter((r) => r.end === e).length / n;
  const sum = (f: (r: EpisodeResult) => number) => results.reduce((a, r) => a + f(r), 0);
  return {
    'episode/turns': sum((r) => r.turns) / n,
    'episode/tool_calls': sum((r) => r.toolCalls) / n,
    'episode/tool_errors': sum((r) => r.toolErrors) / n,
    'episode/answered_frac': count('answered'),
    'episode/no_answer_frac': count('no_answer'),
    'episode/max_turns_frac': count('max_turns'),
    'episode/budget_frac': count('budget'),
    'episode/truncated_frac': count('truncated'),
    'episode/model_tokens': sum((r) => r.mask.reduce((a, b) => a + b, 0)) / n,
    'episode/env_tokens': sum((r) => r.mask.length - r.mask.reduce((a, b) => a + b, 0)) / n,
    'episode/unmapped_tokens': sum((r) => r.unmappedTokens) / n,
  };
}

/** The episode limits of a generator config (per-turn tokens: the sampling params' maxTokens). */
export function episodeLimits(g: { max_turns: number; max_input_length: number | null }, maxTurnTokens: number): EpisodeLimits {
  return { maxTurns: g.max_turns, maxTurnTokens, maxTotalTokens: g.max_input_length };
}

/**
 * n episodes of each example (example by example, as one-turn rollouts repeat prompts), all in flight at once: the
 * opening prompts, the episodes' responses as completions (model and environment tokens), and the episodes.
 */
export async function multiTurnRollouts(
  generator: Generator,
  env: MultiTurnTaskEnv,
  examples: readonly TaskExample[],
  n: number,
  limits: EpisodeLimits,
  params: SamplingParams,
): Promise<{ prompts: Int32Array[]; completions: Completion[]; episodes: EpisodeResult[] }> {
  const episodes = examples.flatMap((ex) => Array.from({ length: n }, () => env.startEpisode(ex)));
  const results = await playEpisodes(generator, episodes, limits, params, env.tokenMap);
  return { prompts: results.map((r) => r.prompt), completions: results.map((r) => r.completion), episodes: results };
}
