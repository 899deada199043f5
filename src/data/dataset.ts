// dataset.ts: the prompt-dataset records the trainer reads (one JSON object per line), the equivalent of the
// rows the peer's gsm8k_dataset.py writes to train.parquet / validation.parquet:
//   {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": "<question> Let's think ..."}],
//    "env_class": "gsm8k", "reward_spec": {"method": "rule", "ground_truth": "72"},
//    "extra_info": {"split": "train", "index": 0, "answer": "<worked solution>", "question": "<question>"}}
// Files are written atomically (a temporary file in the same directory, then rename), so a reader never sees
// a half-written dataset.
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { ChatMessage } from '../tokenizer/chat.ts';
import { GSM8K_DATA_SOURCE, gsm8kPrompt, type Gsm8kExample } from './gsm8k.ts';

export interface PromptRecord {
  data_source: string;
  /** Chat messages rendered by the generator with the model's chat format. */
  prompt: ChatMessage[];
  /** Which reward environment scores it ('gsm8k' for the #### N rules). */
  env_class: string;
  reward_spec: { method: 'rule'; ground_truth: string };
  extra_info: { split: string; index: number; answer?: string; question?: string; [key: string]: unknown };
}

/** The record of one GSM8K example (prompt = the peer's prompt as a single user message). */
export function gsm8kRecord(ex: Pick<Gsm8kExample, 'split' | 'index' | 'question' | 'answer' | 'groundTruth'>, dataSource = GSM8K_DATA_SOURCE): PromptRecord {
  return {
    data_source: dataSource,
    prompt: [{ role: 'user', content: gsm8kPrompt(ex.question) }],
    env_class: 'gsm8k',
    reward_spec: { method: 'rule', ground_truth: ex.groundTruth },
    extra_info: { split: ex.split, index: ex.index, answer: ex.answer, question: ex.question },
  };
}

/** Writes text to a file atomically (temp file in the same directory, then rename). */
export function writeFileAtomic(path: string, data: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`);
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** Writes records as JSON lines, atomically. */
export function writeJsonl(path: string, records: readonly unknown[]): void {
  writeFileAtomic(path, records.map((r) => JSON.stringify(r)).join('\n') + (records.length > 0 ? '\n' : ''));
}

function checkRecord(v: unknown, where: string): PromptRecord {
  const r = v as Partial<PromptRecord> | null;
  const bad = (what: string) => new Error(`${where}: ${what}`);
  if (!r || typeof r !== 'object') throw bad('expected an object');
  if (typeof r.data_source !== 'string') throw bad('data_source must be a string');
  if (!Array.isArray(r.prompt) || r.prompt.length === 0) throw bad('prompt must be a non-empty array of chat messages');
  r.prompt.forEach((m, i) => {
    if (!m || typeof m.role !== 'string' || (m.content !== undefined && m.content !== null && typeof m.content !== 'string')) {
      throw bad(`prompt[${i}] must be {role, content}`);
    }
  });
  if (typeof r.reward_spec?.ground_truth !== 'string') throw bad('reward_spec.ground_truth must be a string');
  if (typeof r.env_class !== 'string') throw bad('env_class must be a string');
  if (!r.extra_info || typeof r.extra_info.index !== 'number') throw bad('extra_info.index must be a number');
  return r as PromptRecord;
}

/** Reads and checks a prompt dataset written by writeJsonl()/prepare:gsm8k. */
export function readPromptDataset(path: string): PromptRecord[] {
  const out: PromptRecord[] = [];
  readFileSync(path, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      if (line.trim() === '') return;
      let v: unknown;
      try {
        v = JSON.parse(line);
      } catch (e) {
        throw new Error(`${path}:${i + 1}: invalid JSON (${(e as Error).message})`);
      }
      out.push(checkRecord(v, `${path}:${i + 1}`));
    });
  return out;
}
