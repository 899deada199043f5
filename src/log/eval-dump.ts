// eval-dump.ts: trainer.dump_eval_results: every completion of an evaluation, one JSON line each, in
// <export_path>/dumped_evals/global_step_N_evals.jsonl (the peer's layout), for reading what the model answers.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface EvalDumpRow {
  /** The example's id (dataset row or synthetic index). */
  id: string;
  answer: string;
  completion: string;
  reward: number;
  correct: boolean;
  finishReason: 'stop' | 'length';
}

/** The folder dumps go to: trainer.export_path, else runs/exports/<run_name>. */
export function exportDir(trainer: { export_path: string | null; run_name: string }): string {
  return trainer.export_path ?? join('runs', 'exports', trainer.run_name);
}

/** Writes one evaluation's rows; returns the file. */
export function dumpEvalResults(dir: string, step: number, rows: EvalDumpRow[]): string {
  const out = join(dir, 'dumped_evals');
  mkdirSync(out, { recursive: true });
  const file = join(out, `global_step_${step}_evals.jsonl`);
  writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : ''));
  return file;
}
