// env.ts: the task environment of a run from its config: GSM8K (bundled, the HF cache, a GSM8K folder, or a
// prompt-dataset JSONL as `npm run prepare:gsm8k` writes it) or the seeded synthetic arithmetic task; prompts
// rendered in harmony (with generator.chat_template_kwargs) and tokenized with o200k_harmony; rewards from the
// `#### N` rules (environment.reward_rule); reference completions (analysis = the worked solution, final =
// `#### N`) for SFT. The multi-turn tool environments (gsm8k_tools, synthetic_tools) are built by tool-envs.ts.
import { existsSync, statSync } from 'node:fs';
import type { Config } from '../config/schema.ts';
import { childLogger } from '../log/logger.ts';
import { getTokenizer, renderChatPrompt, renderCompletion, completionMessages, STOP_TOKEN_IDS } from '../tokenizer/index.ts';
import { loadGsm8k, readPromptDataset, generateSynthetic, type Gsm8kSplit } from '../data/index.ts';
import { getRewardFn } from '../reward/index.ts';
import { DataError, type TaskEnv, type TaskExample } from './task.ts';
import { buildToolTaskEnv } from './tool-envs.ts';

export { DataError } from './task.ts';

const log = childLogger('env');

interface RawExample {
  id: string;
  prompt: string;
  groundTruth: string;
  /** The worked solution (reasoning lines, without the `#### N` line). */
  reasoning?: string;
}


/** The reasoning part of a GSM8K solution (everything before the `#### N` line), calculator annotations removed. */
export function gsm8kReasoning(answer: string): string {
  const i = answer.lastIndexOf('####');
  return (i >= 0 ? answer.slice(0, i) : answer).replace(/<<[^>]*>>/g, '').trim();
}

async function loadSplit(source: string, split: Gsm8kSplit, limit: number | undefined, key: string): Promise<RawExample[]> {
  if (source !== 'bundled' && source !== 'hf' && source !== 'auto' && !existsSync(source)) {
    throw new DataError(`${key}: '${source}' does not exist (use 'bundled', 'hf', a GSM8K folder or a prompt-dataset .jsonl)`);
  }
  try {
    if (existsSync(source) && statSync(source).isFile() && source.endsWith('.jsonl')) {
      const recs = readPromptDataset(source).slice(0, limit);
      return recs.map((r) => ({
        id: `${r.data_source}/${r.extra_info.split}/${r.extra_info.index}`,
        prompt: r.prompt.filter((m) => m.role === 'user').map((m) => m.content).join('\n'),
        groundTruth: r.reward_spec.ground_truth,
        reasoning: typeof r.extra_info.answer === 'string' ? gsm8kReasoning(r.extra_info.answer) : undefined,
      }));
    }
    const rows = await loadGsm8k(split, { source, limit });
    return rows.map((r) => ({ id: `gsm8k/${split}/${r.index}`, prompt: `${r.question} Let's think step by step and output the final answer after "####".`, groundTruth: r.groundTruth, reasoning: gsm8kReasoning(r.answer) }));
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError(`${key}: cannot load ${source}: ${(e as Error).message}`);
  }
}

export async function buildTaskEnv(c: Config): Promise<TaskEnv> {
  const tok = getTokenizer();
  const d = c.data;
  if (c.environment.env_class === 'gsm8k_tools' || c.environment.env_class === 'synthetic_tools') {
    // Multi-turn environments (tool-envs.ts); GSM8K rows come from the same sources as the one-turn task.
    return buildToolTaskEnv(c, async () => {
      if (d.train_data.length === 0) throw new DataError('data.train_data is empty');
      const load = async (sources: string[], split: Gsm8kSplit, limit: number | null, key: string) => {
        const rows: RawExample[] = [];
        for (const src of sources) rows.push(...(await loadSplit(src, split, limit ?? undefined, key)));
        return rows.slice(0, limit ?? undefined).map((r) => ({ id: r.id, question: r.prompt, answer: r.groundTruth }));
      };
      return { train: await load(d.train_data, 'train', d.max_train_samples, 'data.train_data'), val: await load(d.val_data, 'test', d.max_val_samples, 'data.val_data') };
    });
  }
  let train: RawExample[];
  let val: RawExample[];
  let name: string;
  if (c.environment.env_class === 'synthetic') {
    const s = d.synthetic;
    const mk = (split: 'train' | 'test', count: number): RawExample[] =>
      generateSynthetic({ count, seed: s.seed, split, difficulty: s.difficulty }).map((e) => ({ id: `synthetic/${split}/${e.index}`, prompt: e.prompt, groundTruth: e.groundTruth, reasoning: e.reasoning }));
    train = mk('train', d.max_train_samples ?? s.num_train);
    val = mk('test', d.max_val_samples ?? s.num_val);
    name = `synthetic-${s.difficulty}`;
  } else {
    if (d.train_data.length === 0) throw new DataError('data.train_data is empty');
    train = [];
    for (const src of d.train_data) train.push(...(await loadSplit(src, 'train', d.max_train_samples ?? undefined, 'data.train_data')));
    val = [];
    for (const src of d.val_data) val.push(...(await loadSplit(src, 'test', d.max_val_samples ?? undefined, 'data.val_data')));
    if (d.max_train_samples) train = train.slice(0, d.max_train_samples);
    if (d.max_val_samples) val = val.slice(0, d.max_val_samples);
    name = 'gsm8k';
  }
  const kwargs = c.generator.chat_template_kwargs ?? {};
  const renderPrompt = (text: string): Int32Array =>
    Int32Array.from(renderChatPrompt([{ role: 'user', content: text }], { chatTemplateKwargs: kwargs as Record<string, unknown> }).tokens(tok));
  const withReasoning = c.environment.env_class !== 'synthetic' || d.synthetic.reasoning;
  const toExample = (r: RawExample): TaskExample => ({
    id: r.id,
    prompt: renderPrompt(r.prompt),
    answer: r.groundTruth,
    reference: Int32Array.from(renderCompletion(completionMessages(withReasoning && r.reasoning ? r.reasoning : null, `#### ${r.groundTruth}`)).tokens(tok)),
  });
  const maxLen = c.trainer.max_prompt_length;
  const filterLong = (xs: TaskExample[], what: string): TaskExample[] => {
    const kept = xs.filter((e) => e.prompt.length <= maxLen);
    if (kept.length < xs.length) log.warn('%s: dropped %d prompts longer than trainer.max_prompt_length=%d tokens', what, xs.length - kept.length, maxLen);
    return kept;
  };
  const trainEx = filterLong(train.map(toExample), 'train');
  const valEx = filterLong(val.map(toExample), 'validation');
  const rewardFn = getRewardFn(c.environment.reward_rule);
  log.info({ task: name, train: trainEx.length, val: valEx.length, reward: c.environment.reward_rule }, 'task loaded');
  return {
    name,
    train: trainEx,
    val: valEx,
    stopTokenIds: [...STOP_TOKEN_IDS],
    reward: (ex, completion) => {
      const text = tok.decode(completion);
      const r = rewardFn(text, ex.answer, { completionTokens: Array.from(completion) });
      return { reward: r.reward, correct: r.reason === 'match' };
    },
    decode: (t) => tok.decode(t),
  };
}
