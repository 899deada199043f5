// vocab.ts: an optional vocabulary restriction for tiny CPU models.
//
// o200k_harmony has 201,088 tokens; for a model with hidden size 64 the embedding and LM head alone are 25.7M
// parameters, and the LM head dominates the CPU time of a tiny model (every token's log-prob is a 201,088-way
// softmax). A task whose prompts and answers only ever use a few hundred distinct tokens (the synthetic
// arithmetic task) can be re-indexed onto a compact vocabulary: token ids are still produced by the real
// tokenizer and harmony renderer, then mapped to 0..K-1 for the model, and mapped back for decoding and rewards.
// The model never sees or produces a token outside the set. Used by the default run (configs/demo-cpu.yaml) and
// the CPU learning test; `-c tiny-cpu` keeps the full vocabulary.
import type { TaskEnv, TaskExample } from './task.ts';

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
 * The same task over a compact vocabulary: every token of every prompt and reference, the stop tokens and
 * `extra` (e.g. all digit and punctuation tokens the answers may need). Rewards and decoding see original ids.
 */
export function compactTask(env: TaskEnv, extra: Iterable<number> = [], existing?: VocabMap): { env: TaskEnv; vocab: VocabMap } {
  const all = [...env.train, ...env.val];
  const vocab =
    existing ??
    buildVocabMap(
      all.flatMap((e) => (e.reference ? [e.prompt, e.reference] : [e.prompt])),
      [...env.stopTokenIds, ...extra],
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
  return {
    vocab,
    env: {
      name: `${env.name} (compact vocabulary of ${vocab.size})`,
      train,
      val,
      stopTokenIds: env.stopTokenIds.map((t) => vocab.toCompact.get(t)!),
      reward: (ex, c, fr) => env.reward(original.get(ex) ?? ex, vocab.decode(c), fr),
      decode: env.decode ? (t) => env.decode!(vocab.decode(t)) : undefined,
    },
  };
}
