// vocab.ts: an optional vocabulary restriction for tiny CPU models.
//
// o200k_harmony has 201,088 tokens; for a model with hidden size 64 the embedding and LM head alone are 25.7M
// parameters, and the LM head dominates the CPU time of a tiny model (every token's log-prob is a 201,088-way
// softmax). A task whose prompts and answers only ever use a few hundred distinct tokens (the synthetic
// arithmetic task) can be re-indexed onto a compact vocabulary: token ids are still produced by the real
// tokenizer and harmony renderer, then mapped to 0..K-1 for the model, and mapped back for decoding and rewards.
// The model never sees or produces a token outside the set. Used by the default run (configs/demo-cpu.yaml) and
// the CPU learning test; `-c tiny-cpu` keeps the full vocabulary.
//
// Multi-turn tasks: the environment writes text during episodes (tool results, errors, harmony framing), so the map
// also holds every token the environment declares it can inject (MultiTurnTaskEnv.injectableTokens: for
// synthetic_tools every lookup result and error message) and one placeholder, `<|endoftext|>`. The episode driver
// maps injected text into the compact ids and the model's turns back to original ids for parsing
// (MultiTurnTaskEnv.tokenMap); an injected token outside the map (e.g. an error message quoting a malformed call)
// becomes the placeholder and is counted in the episode/unmapped_tokens metric, so a run never stops on it.
import { SPECIAL_TOKENS } from '../tokenizer/specials.ts';
import { isMultiTurn, type EpisodeTokenMap, type MultiTurnTaskEnv } from './multiturn.ts';
import { DataError, type TaskEnv, type TaskExample } from './task.ts';

/** The compact id that stands for an injected token outside a multi-turn task's compact vocabulary. */
export const UNMAPPED_TOKEN = SPECIAL_TOKENS.endoftext;

export interface VocabMap {
  /** Compact id -> original id. */
  readonly toOriginal: Int32Array;
  /** Original id -> compact id. */
  readonly toCompact: Map<number, number>;
  readonly size: number;
  encode(ids: Int32Array): Int32Array;
  decode(ids: Int32Array): Int32Array;
}

export function buildVocabMap(tokenLists: Iterable<ArrayLike<number>>, extra: Iterable<number> = []): VocabMap {
  const set = new Set<number>(extra);
  for (const l of tokenLists) for (let i = 0; i < l.length; i++) set.add(l[i]!);
  const toOriginal = Int32Array.from([...set].sort((a, b) => a - b));
  const toCompact = new Map<number, number>();
  toOriginal.forEach((o, i) => toCompact.set(o, i));
  return {
    toOriginal,
    toCompact,
    size: toOriginal.length,
    encode(ids) {
      return ids.map((x) => {
        const c = toCompact.get(x);
        if (c === undefined) throw new Error(`vocab map: token ${x} is outside the compact vocabulary (${toOriginal.length} tokens)`);
        return c;
      });
    },
    decode(ids) {
      return ids.map((x) => {
        if (x < 0 || x >= toOriginal.length) throw new Error(`vocab map: compact id ${x} out of range 0..${toOriginal.length - 1}`);
        return toOriginal[x]!;
      });
    },
  };
}

/**
 * A model saved with a compact vocabulary knows only the tokens of the task it was trained on: a task with other
 * tokens is a DataError (one line) before anything is encoded.
 */
function checkCovered(env: TaskEnv, vocab: VocabMap): void {
  const missing = new Set<number>();
  let first = '';
  const scan = (ids: ArrayLike<number>, where: string) => {
    for (let i = 0; i < ids.length; i++) {
      if (!vocab.toCompact.has(ids[i]!)) {
        if (missing.size === 0) first = `token ${ids[i]} in ${where}`;
        missing.add(ids[i]!);
      }
    }
  };
  scan(env.stopTokenIds, 'the stop tokens');
  for (const e of [...env.train, ...env.val]) {
    scan(e.prompt, `the prompt of example ${e.id}`);
    if (e.reference) scan(e.reference, `the reference answer of example ${e.id}`);
  }
  if (missing.size > 0) {
    throw new DataError(
      `the model's compact vocabulary (vocab.json, ${vocab.size} tokens) lacks ${missing.size} token(s) task '${env.name}' uses (first: ${first}); ` +
        'the model was trained on another task: use the environment.env_class and data it was trained with, or a model with the full vocabulary',
    );
  }
}

/**
 * The same task over a compact vocabulary: every token of every prompt and reference, the stop tokens and
 * `extra` (e.g. all digit and punctuation tokens the answers may need). Rewards and decoding see original ids.
 */
export function compactTask(env: TaskEnv, extra: Iterable<number> = [], existing?: VocabMap): { env: TaskEnv; vocab: VocabMap } {
  const multi = isMultiTurn(env);
  if (multi && !env.injectableTokens) {
    // Without a list of what the environment may write, most injected text would be placeholders.
    throw new DataError(`data.compact_vocab: the multi-turn task '${env.name}' cannot list the tokens its environment writes during episodes; use the full vocabulary`);
  }
  const all = [...env.train, ...env.val];
  if (existing) {
    checkCovered(env, existing);
    if (multi && !existing.toCompact.has(UNMAPPED_TOKEN)) {
      throw new DataError(`the model's compact vocabulary (vocab.json, ${existing.size} tokens) was not built for a multi-turn task (it lacks the placeholder <|endoftext|>)`);
    }
  }
  const vocab =
    existing ??
    buildVocabMap(
      [...all.flatMap((e) => (e.reference ? [e.prompt, e.reference] : [e.prompt])), ...(multi ? env.injectableTokens!() : [])],
      [...env.stopTokenIds, ...extra, ...(multi ? [UNMAPPED_TOKEN] : [])],
    );
  const remap = (e: TaskExample): TaskExample => ({ ...e, prompt: vocab.encode(e.prompt), reference: e.reference ? vocab.encode(e.reference) : undefined });
  const original = new WeakMap<TaskExample, TaskExample>();
  const wrap = (e: TaskExample): TaskExample => {
    const r = remap(e);
    original.set(r, e);
    return r;
  };
  const train = env.train.map(wrap);
  const val = env.val.map(wrap);
  const compact: TaskEnv = {
    name: `${env.name} (compact vocabulary of ${vocab.size})`,
    train,
    val,
    stopTokenIds: env.stopTokenIds.map((t) => vocab.toCompact.get(t)!),
    reward: (ex, c, fr) => env.reward(original.get(ex) ?? ex, vocab.decode(c), fr),
    decode: env.decode ? (t) => env.decode!(vocab.decode(t)) : undefined,
  };
  if (!multi) return { vocab, env: compact };
  const multiTurn: MultiTurnTaskEnv = {
    ...compact,
    multiTurn: true,
    // Episodes run on the original example (its messages and tools); the driver converts at the model's boundary.
    startEpisode: (ex) => env.startEpisode(original.get(ex) ?? ex),
    tokenMap: episodeTokenMap(vocab),
  };
  return { vocab, env: multiTurn };
}

/** The episode driver's view of a compact vocabulary of a multi-turn task (see the top of this file). */
export function episodeTokenMap(vocab: VocabMap): EpisodeTokenMap {
  const placeholder = vocab.toCompact.get(UNMAPPED_TOKEN);
  if (placeholder === undefined) throw new Error('episodeTokenMap: the compact vocabulary lacks the placeholder <|endoftext|>');
  return {
    toModel(ids) {
      const out = new Int32Array(ids.length);
      let unmapped = 0;
      for (let i = 0; i < ids.length; i++) {
        const c = vocab.toCompact.get(ids[i]!);
        if (c === undefined) unmapped++;
        out[i] = c ?? placeholder;
      }
      return { ids: out, unmapped };
    },
    fromModel: (ids) => vocab.decode(ids),
  };
}
