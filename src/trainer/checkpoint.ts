// checkpoint.ts: atomic training checkpoints.
//
// Layout under trainer.ckpt_path:
//   global_step_<N>/          one complete checkpoint: the policy's files (model + optimizer state, written by
//                             the Policy), trainer_state.json (step, epoch, data position, RNG, config), COMPLETE
//                             (JSON: when, and the byte size of every file, checked before a resume)
//   latest                    text file naming the newest complete checkpoint folder
//   sft/                      the SFT phase of the same run (warm start or `npm run sft`), the same layout
//   .tmp-global_step_<N>-<pid>   a save in progress (ignored and cleaned up)
// A save writes everything into the temp folder, fsyncs, writes COMPLETE, then renames the folder into place and
// only then updates `latest` (also by rename) and prunes old ones. So a crash, SIGINT or a full disk at any moment
// leaves the previous checkpoint untouched and `latest` pointing at a complete one.
//
// Resuming (resumeTraining): the newest checkpoint whose files are intact (sizes as recorded, state readable, the
// policy loads) wins; a damaged newer one is skipped with a warning naming it and why. A checkpoint written under
// a different model, task, batch or optimizer setting (RESUME_KEYS) is refused with the keys named, unless forced.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import type { Config } from '../config/schema.ts';
import { childLogger } from '../log/logger.ts';
import type { Generator, Policy } from './policy.ts';

const log = childLogger('checkpoint');

export interface TrainerState {
  /** Optimizer steps done. */
  step: number;
  epoch: number;
  /** Prompts of the current epoch already consumed. */
  dataPosition: number;
  /** The Rng state (see rng.ts). */
  rng: number[];
  /** The effective config of the run (JSON), for reference and mismatch warnings. */
  config?: unknown;
  /** Counters that must survive a restart (skipped steps etc.). */
  counters?: Record<string, number>;
  /** Anything else the caller wants back. */
  extra?: Record<string, unknown>;
}

export class CheckpointError extends Error {
  constructor(message: string, override readonly cause?: unknown) {
    super(message);
    this.name = 'CheckpointError';
  }
}

const STEP_RE = /^global_step_(\d+)$/;
const STATE_FILE = 'trainer_state.json';
const COMPLETE = 'COMPLETE';

export function checkpointDirName(step: number): string {
  return `global_step_${step}`;
}

function fsyncPath(path: string): void {
  try {
    const fd = openSync(path, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    /* some filesystems refuse fsync on folders; the rename is still atomic */
  }
}

function fsyncTree(dir: string): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) fsyncTree(p);
    else fsyncPath(p);
  }
  fsyncPath(dir);
}

/** Relative path -> byte size of every file under dir (the COMPLETE marker's manifest). */
function fileSizes(dir: string): Record<string, number> {
  const out: Record<string, number> = {};
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[relative(dir, p)] = statSync(p).size;
    }
  };
  walk(dir);
  return out;
}

function describeFsError(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  if (err?.code === 'ENOSPC') return 'the disk is full (ENOSPC)';
  if (err?.code === 'EDQUOT') return 'the disk quota is exceeded (EDQUOT)';
  if (err?.code === 'EACCES' || err?.code === 'EPERM') return `permission denied (${err.code})`;
  if (err?.code === 'EROFS') return 'the filesystem is read-only (EROFS)';
  return err?.message ?? String(e);
}

/** Complete checkpoints under root, newest first. */
export function listCheckpoints(root: string): Array<{ step: number; dir: string }> {
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .map((n) => ({ m: STEP_RE.exec(n), n }))
    .filter((x) => x.m && existsSync(join(root, x.n, COMPLETE)))
    .map((x) => ({ step: Number(x.m![1]), dir: join(root, x.n) }))
    .sort((a, b) => b.step - a.step);
}

/** The newest complete checkpoint folder under root (following `latest`, falling back to a scan), or null. */
export function findLatestCheckpoint(root: string): string | null {
  const latestFile = join(root, 'latest');
  if (existsSync(latestFile)) {
    const name = readFileSync(latestFile, 'utf8').trim();
    const dir = join(root, name);
    if (existsSync(join(dir, COMPLETE))) return dir;
    log.warn('%s names %s, which is not a complete checkpoint; scanning %s', latestFile, name, root);
  }
  return listCheckpoints(root)[0]?.dir ?? null;
}

export function readTrainerState(dir: string): TrainerState {
  const p = join(dir, STATE_FILE);
  if (!existsSync(join(dir, COMPLETE))) throw new CheckpointError(`${dir} is not a complete checkpoint (no ${COMPLETE} marker)`);
  try {
    return JSON.parse(readFileSync(p, 'utf8')) as TrainerState;
  } catch (e) {
    throw new CheckpointError(`cannot read ${p}: ${(e as Error).message}`, e);
  }
}

export interface SaveTrainingCheckpointOptions {
  root: string;
  state: TrainerState;
  /** Writes the model and optimizer files into `dir` (a fresh temp folder). */
  writeModel: (dir: string) => Promise<void> | void;
  /** Complete checkpoints to keep (-1: all). */
  keep?: number;
}

/**
 * Saves atomically; returns the checkpoint folder. On failure the temp folder is removed, the previous checkpoint
 * and `latest` are untouched, and a CheckpointError says why (a full disk is named as such).
 */
export async function saveTrainingCheckpoint(o: SaveTrainingCheckpointOptions): Promise<string> {
  const root = resolve(o.root);
  const name = checkpointDirName(o.state.step);
  const finalDir = join(root, name);
  const tmp = join(root, `.tmp-${name}-${process.pid}`);
  const previous = findLatestCheckpoint(root);
  try {
    mkdirSync(root, { recursive: true });
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp);
    await o.writeModel(tmp);
    writeFileSync(join(tmp, STATE_FILE), JSON.stringify(o.state, null, 1));
    fsyncTree(tmp);
    writeFileSync(join(tmp, COMPLETE), `${JSON.stringify({ saved: new Date().toISOString(), files: fileSizes(tmp) })}\n`);
    fsyncPath(join(tmp, COMPLETE));
    if (existsSync(finalDir)) {
      // Re-saving a step (e.g. the SIGINT save right after an interval save): move the old one aside first.
      const aside = join(root, `.old-${name}-${process.pid}`);
      rmSync(aside, { recursive: true, force: true });
      renameSync(finalDir, aside);
      renameSync(tmp, finalDir);
      rmSync(aside, { recursive: true, force: true });
    } else {
      renameSync(tmp, finalDir);
    }
    const latestTmp = join(root, `.latest-${process.pid}`);
    writeFileSync(latestTmp, `${name}\n`);
    fsyncPath(latestTmp);
    renameSync(latestTmp, join(root, 'latest'));
    fsyncPath(root);
  } catch (e) {
    try {
      rmSync(tmp, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
    const prev = previous ? `the previous checkpoint ${previous} is intact` : 'there is no previous checkpoint';
    throw new CheckpointError(`saving checkpoint ${finalDir} failed: ${describeFsError(e)}; ${prev}`, e);
  }
  if (o.keep !== undefined && o.keep > 0) {
    for (const old of listCheckpoints(root).slice(o.keep)) {
      try {
        rmSync(old.dir, { recursive: true, force: true });
      } catch (e) {
        log.warn('could not prune %s: %s', old.dir, (e as Error).message);
      }
    }
  }
  return finalDir;
}

/** Which checkpoint to resume from under a resume mode, or null to start fresh (no integrity or config checks). */
export function resolveResume(mode: 'latest' | 'none' | 'path', root: string, path: string | null): string | null {
  if (mode === 'none') return null;
  if (mode === 'path') {
    if (!path) throw new CheckpointError('trainer.resume_mode=path needs trainer.resume_path');
    const dir = existsSync(join(path, COMPLETE)) ? path : findLatestCheckpoint(path);
    if (!dir) throw new CheckpointError(`trainer.resume_path ${path} is not a complete checkpoint (nor a folder holding one)`);
    return dir;
  }
  return findLatestCheckpoint(root);
}

// ---- resuming ---------------------------------------------------------------------------------------------------

/**
 * Why a checkpoint that is marked complete cannot be used (a file missing or of another size than was written, an
 * unreadable trainer_state.json), or null when it looks intact. Checkpoints saved before the COMPLETE marker held a
 * manifest are checked for their state file only.
 */
export function checkpointDamage(dir: string): string | null {
  const marker = join(dir, COMPLETE);
  if (!existsSync(marker)) return `no ${COMPLETE} marker`;
  const text = readFileSync(marker, 'utf8').trim();
  if (text.startsWith('{')) {
    let files: Record<string, number> | undefined;
    try {
      files = (JSON.parse(text) as { files?: Record<string, number> }).files;
    } catch {
      return `its ${COMPLETE} marker is unreadable`;
    }
    for (const [rel, size] of Object.entries(files ?? {})) {
      const p = join(dir, rel);
      if (!existsSync(p)) return `${rel} is missing`;
      const now = statSync(p).size;
      if (now !== size) return `${rel} has ${now} bytes where ${size} were written`;
    }
  }
  try {
    JSON.parse(readFileSync(join(dir, STATE_FILE), 'utf8'));
  } catch (e) {
    return `${STATE_FILE} is unreadable (${(e as Error).message})`;
  }
  return null;
}

/** Complete checkpoints under root in the order a resume tries them: the one `latest` names, then newest first. */
function resumeCandidates(root: string): string[] {
  const dirs = listCheckpoints(root).map((c) => c.dir);
  const latestFile = join(root, 'latest');
  if (existsSync(latestFile)) {
    const named = join(root, readFileSync(latestFile, 'utf8').trim());
    const i = dirs.indexOf(named);
    if (i > 0) dirs.unshift(...dirs.splice(i, 1));
  }
  return dirs;
}

/**
 * Keys that must be equal between a checkpoint's config and the run that resumes it: the model, the task, the
 * batch geometry and the optimizer. Anything else (intervals, logging, max_steps, micro-batch sizes, which only
 * split the same batch differently) may change between attempts of one run.
 */
export const GRPO_RESUME_KEYS = [
  'trainer.policy.model.path',
  'environment.env_class',
  'data.compact_vocab',
  'trainer.train_batch_size',
  'trainer.policy_mini_batch_size',
  'generator.n_samples_per_prompt',
  'trainer.policy.optimizer_config.lr',
  'trainer.policy.optimizer_config.adam_betas',
  'trainer.policy.optimizer_config.weight_decay',
  'trainer.policy.optimizer_config.eps',
  'trainer.policy.optimizer_config.scheduler',
  'trainer.policy.optimizer_config.num_warmup_steps',
  'trainer.policy.optimizer_config.max_grad_norm',
] as const;

/** The same for the SFT phase (its steps set its lr schedule). */
export const SFT_RESUME_KEYS = [
  'trainer.policy.model.path',
  'environment.env_class',
  'data.compact_vocab',
  'trainer.sft.batch_size',
  'trainer.sft.lr',
  'trainer.sft.steps',
  'trainer.sft.weight_decay',
  'trainer.sft.max_grad_norm',
] as const;

function valueAtPath(o: unknown, key: string): unknown {
  let cur = o;
  for (const k of key.split('.')) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<string, unknown>)[k];
  }
  return cur;
}

/** The keys whose values differ between a saved config and the current one, as `key: saved -> now`. */
export function resumeMismatches(saved: unknown, now: Config, keys: readonly string[]): string[] {
  const out: string[] = [];
  for (const k of keys) {
    const a = JSON.stringify(valueAtPath(saved, k));
    const b = JSON.stringify(valueAtPath(now, k));
    if (a !== b) out.push(`${k}: ${a ?? 'unset'} -> ${b ?? 'unset'}`);
  }
  return out;
}

/** Drops the rows of a metrics JSONL file logged after `step` (and a torn last line); returns how many went. */
export function truncateMetricsAfter(path: string, step: number): number {
  if (!existsSync(path)) return 0;
  const lines = readFileSync(path, 'utf8').split('\n').filter((l) => l.trim());
  const kept = lines.filter((l) => {
    try {
      const row = JSON.parse(l) as { step?: unknown };
      return typeof row.step === 'number' && row.step <= step;
    } catch {
      return false;
    }
  });
  if (kept.length !== lines.length) writeFileSync(path, kept.map((l) => `${l}\n`).join(''));
  return lines.length - kept.length;
}

/** Moves a non-empty metrics file of an earlier run to `<name>.<k>.jsonl` (the first free k); returns the new path. */
export function moveMetricsAside(path: string): string | null {
  if (!existsSync(path) || statSync(path).size === 0) return null;
  const base = path.replace(/\.jsonl$/, '');
  let k = 1;
  while (existsSync(`${base}.${k}.jsonl`)) k++;
  const aside = `${base}.${k}.jsonl`;
  renameSync(path, aside);
  return aside;
}

export interface ResumeRequest {
  config: Config;
  /** This phase's checkpoint root: trainer.ckpt_path (GRPO) or its sft/ folder. */
  root: string;
  phase: 'GRPO' | 'SFT';
  /** Config keys a resumed checkpoint must share with this run (GRPO_RESUME_KEYS, SFT_RESUME_KEYS). */
  keys: readonly string[];
  policy: Policy;
  /** Gets the resumed weights. */
  generator?: Generator;
  /** The phase's metrics JSONL: cut back to the resumed step, or (a fresh start) moved aside if it holds rows. */
  metricsPath?: string;
  /** Resume even when RESUME_KEYS differ (`--force-resume`). */
  force?: boolean;
}

export interface Resumed {
  dir: string;
  state: TrainerState;
}

/**
 * Refuses a fresh start (trainer.resume_mode=none) into a checkpoint folder that already holds checkpoints: the
 * new run's saves would overwrite the old run's and its pruning would delete them.
 */
export function assertNoCheckpoints(root: string, phase: string): void {
  const found = listCheckpoints(root);
  if (found.length === 0) return;
  throw new CheckpointError(
    `trainer.resume_mode=none but ${root} already holds ${phase} checkpoints (newest: step ${found[0]!.step}); resume them (trainer.resume_mode=latest), give this run its own trainer.run_name and trainer.ckpt_path, or delete ${root}`,
  );
}

/**
 * Checks, without loading anything, what resumeTraining would do (the CLI's --dry-run and its early checks):
 * the checkpoint it would resume (null: a fresh start), after skipping damaged ones and checking RESUME_KEYS.
 */
export function planResume(r: Omit<ResumeRequest, 'policy' | 'generator' | 'metricsPath'>): Resumed | null {
  // Quiet: resumeTraining, which does the resume, names the damaged checkpoints it skips.
  const found = findResumable(r, () => {});
  return found.length ? found[0]! : null;
}

/** Intact candidates in order, each checked against RESUME_KEYS (a mismatch throws unless forced). */
function findResumable(r: Omit<ResumeRequest, 'policy' | 'generator' | 'metricsPath'>, onDamaged: (dir: string, why: string) => void): Resumed[] {
  const t = r.config.trainer;
  if (t.resume_mode === 'none') {
    assertNoCheckpoints(r.root, r.phase);
    return [];
  }
  let candidates: string[];
  if (t.resume_mode === 'path' && r.phase === 'GRPO') {
    const p = t.resume_path;
    if (!p) throw new CheckpointError('trainer.resume_mode=path needs trainer.resume_path');
    candidates = existsSync(join(p, COMPLETE)) ? [p] : resumeCandidates(p);
    if (candidates.length === 0) throw new CheckpointError(`trainer.resume_path ${p} is not a complete checkpoint (nor a folder holding one)`);
  } else {
    candidates = resumeCandidates(r.root);
  }
  const out: Resumed[] = [];
  const damaged: string[] = [];
  for (const dir of candidates) {
    const why = checkpointDamage(dir);
    if (why) {
      damaged.push(`${dir} (${why})`);
      onDamaged(dir, why);
      continue;
    }
    const state = readTrainerState(dir);
    if (state.config === undefined) {
      log.warn('checkpoint %s does not record its config: the model, batch and optimizer settings cannot be checked', dir);
    } else {
      const diff = resumeMismatches(state.config, r.config, r.keys);
      if (diff.length && !r.force) {
        throw new CheckpointError(
          `cannot resume ${dir}: it was written with other settings (${diff.join('; ')}); set them back, pass --force-resume to resume anyway, or start a new run (a new trainer.run_name and trainer.ckpt_path)`,
        );
      }
      if (diff.length) log.warn('resuming %s with changed settings (--force-resume): %s', dir, diff.join('; '));
    }
    out.push({ dir, state });
  }
  if (out.length === 0 && damaged.length) {
    throw new CheckpointError(`no intact ${r.phase} checkpoint to resume in ${r.root}: ${damaged.join(', ')}; move them away to start fresh`);
  }
  return out;
}

/**
 * Resumes a phase of a run under trainer.resume_mode: loads the newest intact checkpoint into the policy (a
 * damaged newer one, or one the policy cannot load, is skipped with a warning naming it), syncs the generator, cuts
 * the metrics file back to the resumed step, and logs "resumed from step N (dir)". Returns null on a fresh start
 * ("starting fresh: no checkpoint in <root>"), after moving an earlier run's metrics file aside.
 */
export async function resumeTraining(r: ResumeRequest): Promise<Resumed | null> {
  const candidates = findResumable(r, (dir, why) => log.warn('checkpoint %s is damaged (%s); falling back to the newest intact one', dir, why));
  for (const c of candidates) {
    try {
      await r.policy.load(c.dir);
    } catch (e) {
      log.warn('checkpoint %s cannot be loaded (%s); falling back to the newest intact one', c.dir, (e as Error).message);
      continue;
    }
    await r.generator?.updateWeights(r.policy);
    if (r.metricsPath) {
      const dropped = truncateMetricsAfter(r.metricsPath, c.state.step);
      if (dropped) log.info('%s: dropped %d rows logged after step %d (they are redone)', r.metricsPath, dropped, c.state.step);
    }
    log.info({ dir: c.dir, step: c.state.step, epoch: c.state.epoch }, `${r.phase}: resumed from step ${c.state.step} (${c.dir})`);
    return c;
  }
  if (candidates.length) throw new CheckpointError(`no ${r.phase} checkpoint in ${r.root} could be loaded (see the warnings above); move them away to start fresh`);
  if (r.metricsPath) {
    const aside = moveMetricsAside(r.metricsPath);
    if (aside) log.warn('%s holds an earlier run that left no checkpoint: moved to %s', r.metricsPath, aside);
  }
  const why = r.config.trainer.resume_mode === 'none' ? 'trainer.resume_mode=none' : `no checkpoint in ${resolve(r.root)}`;
  log.info(`${r.phase}: starting fresh: ${why}`);
  return null;
}
