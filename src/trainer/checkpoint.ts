// checkpoint.ts: atomic training checkpoints.
//
// Layout under trainer.ckpt_path:
//   global_step_<N>/          one complete checkpoint: the policy's files (model + optimizer state, written by
//                             the Policy), trainer_state.json (step, epoch, data position, RNG, config), COMPLETE
//   latest                    text file naming the newest complete checkpoint folder
//   .tmp-global_step_<N>-<pid>   a save in progress (ignored and cleaned up)
// A save writes everything into the temp folder, fsyncs, writes COMPLETE, then renames the folder into place and
// only then updates `latest` (also by rename) and prunes old ones. So a crash, SIGINT or a full disk at any moment
// leaves the previous checkpoint untouched and `latest` pointing at a complete one.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { childLogger } from '../log/logger.ts';

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
    writeFileSync(join(tmp, COMPLETE), `${new Date().toISOString()}\n`);
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

/** Which checkpoint to resume from under a resume mode, or null to start fresh. */
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
