// Ctrl-C and re-run, as a user in a terminal does it: `npm run train` is spawned in its own process group and the
// whole group gets SIGINT (what the terminal sends on Ctrl-C: npm, the shell and node all receive it, and npm
// relays it to its child once more). Once during the SFT warm start and once during GRPO, the run must save a
// checkpoint and exit 130; running the same command again must say "resumed from step N" and continue from
// there, and the finished run's metrics hold each step once. A small, fast config (the demo preset, shrunk).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findLatestCheckpoint, readTrainerState } from '../../src/trainer/checkpoint.ts';
import { parseMetricsJsonl } from '../../src/log/metrics.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

interface Ran {
  /**
   * The exit status a shell reports for npm: its exit code, or 128 + the signal that ended it. npm waits for the
   * trainer, then ends with the trainer's code (130) or re-raises the SIGINT on itself (the `sh -c` between them
   * saw the signal): either way the terminal's `$?` is 130.
   */
  status: number;
  output: string;
}

/**
 * Runs `npm run train -- args` in a new process group; when `interruptWhen` first returns true (polled every
 * 100 ms), sends SIGINT to the whole group.
 */
function npmTrain(args: string[], interruptWhen?: () => boolean): Promise<Ran> {
  return new Promise((done, fail) => {
    const child = spawn('npm', ['run', '--silent', 'train', '--', ...args], { cwd: ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, GPTOSS_PROGRESS: 'off' } });
    let output = '';
    child.stdout.on('data', (b: Buffer) => (output += b.toString()));
    child.stderr.on('data', (b: Buffer) => (output += b.toString()));
    let sent = false;
    const poll = setInterval(() => {
      if (!sent && interruptWhen?.()) {
        sent = true;
        process.kill(-child.pid!, 'SIGINT');
      }
    }, 100);
    child.on('error', fail);
    child.on('close', (code, signal) => {
      clearInterval(poll);
      done({ status: code ?? 128 + constants.signals[signal!], output });
    });
  });
}

function rows(path: string): Array<Record<string, number | string | null>> {
  return existsSync(path) ? parseMetricsJsonl(readFileSync(path, 'utf8')) : [];
}

test('Ctrl-C (SIGINT to the process group of npm run train) saves a checkpoint and exits 130; the same command continues', { timeout: 10 * 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'train-sigint-'));
  const ckpt = join(dir, 'ckpts');
  const metrics = join(dir, 'metrics.jsonl');
  const sftMetrics = join(dir, 'metrics-sft.jsonl');
  const args = [
    '-c', 'demo-cpu',
    'data.synthetic.num_val=8',
    'trainer.sft.steps=150',
    'trainer.sft.stop_at_reward=null',
    'trainer.sft.eval_interval=0',
    'trainer.sft.log_interval=2',
    'trainer.max_steps=40',
    'trainer.train_batch_size=4',
    'trainer.policy_mini_batch_size=4',
    'generator.n_samples_per_prompt=4',
    'trainer.eval_before_train=false',
    'trainer.eval_interval=0',
    'trainer.ckpt_interval=0', // checkpoints only at the end and on Ctrl-C
    'trainer.run_name=sigint-test',
    `trainer.ckpt_path=${ckpt}`,
    `trainer.metrics_path=${metrics}`,
  ];

  // 1. Ctrl-C during the SFT warm start.
  const a = await npmTrain(args, () => rows(sftMetrics).some((r) => r.kind === 'sft' && (r.step as number) >= 4));
  assert.equal(a.status, 130, a.output);
  assert.match(a.output, /SFT interrupted: saving a checkpoint at step \d+/);
  const sftCk = findLatestCheckpoint(join(ckpt, 'sft'));
  assert.ok(sftCk, `no SFT checkpoint after Ctrl-C\n${a.output}`);
  const sftStep = readTrainerState(sftCk).step;
  assert.ok(sftStep >= 4 && sftStep < 150, `SFT checkpoint at step ${sftStep}`);
  assert.equal(findLatestCheckpoint(ckpt), null, 'no GRPO checkpoint yet');

  // 2. The same command: SFT continues from its checkpoint and finishes; Ctrl-C during GRPO.
  const b = await npmTrain(args, () => rows(metrics).some((r) => r.kind === 'train' && (r.step as number) >= 2));
  assert.match(b.output, new RegExp(`SFT: resumed from step ${sftStep} `), b.output);
  assert.equal(b.status, 130, b.output);
  const sftSteps = rows(sftMetrics).filter((r) => r.kind === 'sft').map((r) => r.step as number);
  assert.deepEqual(sftSteps, [...new Set(sftSteps)].sort((x, y) => x - y), `SFT metrics steps repeat: ${sftSteps}`);
  assert.equal(sftSteps[sftSteps.length - 1], 150, 'SFT finished its 150 steps');
  const grpoCk = findLatestCheckpoint(ckpt);
  assert.ok(grpoCk, `no GRPO checkpoint after Ctrl-C\n${b.output}`);
  const grpoStep = readTrainerState(grpoCk).step;
  assert.ok(grpoStep >= 2 && grpoStep < 40, `GRPO checkpoint at step ${grpoStep}`);

  // 3. The same command again: GRPO continues from that step to the end, SFT is not run again.
  const c = await npmTrain(args);
  assert.equal(c.status, 0, c.output);
  assert.match(c.output, new RegExp(`GRPO: resumed from step ${grpoStep} `), c.output);
  assert.doesNotMatch(c.output, /SFT: (starting fresh|resumed)/, 'the finished SFT phase is not run again');
  const steps = rows(metrics).filter((r) => r.kind === 'train').map((r) => r.step as number);
  assert.deepEqual(steps, Array.from({ length: 40 }, (_, i) => i + 1), 'every GRPO step once, in order');
  assert.equal(readTrainerState(findLatestCheckpoint(ckpt)!).step, 40);
});
