// Smoke test of `npm run bench:generate` on the CPU (its tiny defaults): it runs, and its JSON has both parts with
// sane numbers (every drawn output length produced, the engine's log-probs equal to the trainer's).
// With --lora, both LoRA benches (bench:generate --lora, bench:train-step --lora) in their CPU smoke forms.
// Launcher mode: a pool of engines over 2 CPU processes (one tp=2 engine; two tp=1 engines), and --tp refusals.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fixturePath } from '../helpers/fixtures.ts';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { launch } from '../../src/distributed/launch.ts';

test('bench:generate runs on the CPU with the tiny preset and writes its table and JSON', () => {
  const out = join(mkdtempSync(join(tmpdir(), 'bench-generate-')), 'out.json');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--json', out, '--num-blocks', '256'], {
    encoding: 'utf8',
    env: { ...process.env, GPTOSS_DEVICE: 'cpu' },
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\| batch \| engine \| static path \| transformers \|/);
  assert.match(r.stdout, /log-prob gap engine vs tokenLogprobs/);
  const j = JSON.parse(readFileSync(out, 'utf8'));
  assert.equal(j.preset, 'gpt-oss-tiny-256');
  assert.deepEqual(j.fixed.rows.map((x: { batch: number }) => x.batch), [1, 4]);
  for (const row of j.fixed.rows) {
    assert.ok(row.engineTokS > 0 && row.staticTokS > 0);
    // Latency: the first token after the prefill, then the time per output token of the lockstep decode.
    assert.ok(row.engineLatency.ttftMs > 0 && row.engineLatency.tpotMs > 0, JSON.stringify(row.engineLatency));
    assert.equal(row.engineGraphsLatency, null);
  }
  assert.equal(j.grpo.sequences, 9);
  assert.ok(j.grpo.engine.tokS > 0 && j.grpo.static.tokS > 0);
  assert.ok(j.grpo.logprobGap.tokens > 0 && j.grpo.logprobGap.meanAbs < 1e-2, `gap ${j.grpo.logprobGap.meanAbs}`);
});

test('bench:generate --model: a checkpoint directory instead of random weights (its shape, its log-prob gap)', () => {
  const out = join(mkdtempSync(join(tmpdir(), 'bench-generate-model-')), 'out.json');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--json', out, '--model', fixturePath('gptoss-tiny'), '--no-peer', '--batches', '1,2'], {
    encoding: 'utf8',
    env: { ...process.env, GPTOSS_DEVICE: 'cpu' },
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /gpt-oss generation, checkpoint .*gptoss-tiny/);
  const j = JSON.parse(readFileSync(out, 'utf8'));
  assert.match(j.model, /gptoss-tiny/);
  assert.deepEqual(j.fixed.rows.map((x: { batch: number }) => x.batch), [1, 2]);
  assert.ok(j.grpo.logprobGap.meanAbs < 1e-3, JSON.stringify(j.grpo.logprobGap));
  const bad = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--model', '/nonexistent/model-dir', '--no-peer'], { encoding: 'utf8', env: { ...process.env, GPTOSS_DEVICE: 'cpu' } });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /nonexistent\/model-dir/);
  const mixed = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--model', fixturePath('gptoss-tiny'), '--router-std', '0.3', '--no-peer'], { encoding: 'utf8', env: { ...process.env, GPTOSS_DEVICE: 'cpu' } });
  assert.notEqual(mixed.status, 0);
  assert.match(mixed.stderr, /--router-std shapes random weights; --model brings its own/);
  const mixedScaled = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--model', fixturePath('gptoss-tiny'), '--scaled-init', '--no-peer'], { encoding: 'utf8', env: { ...process.env, GPTOSS_DEVICE: 'cpu' } });
  assert.notEqual(mixedScaled.status, 0);
  assert.match(mixedScaled.stderr, /--scaled-init shapes random weights; --model brings its own/);
  // --router-std and --scaled-init reach the random draw (RandomInitOptions.routerStd / residualStd / embedStd:
  // test/cpu/model-weights.test.ts) and the report.
  const rsOut = join(mkdtempSync(join(tmpdir(), 'bench-generate-router-std-')), 'out.json');
  const rs = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--router-std', '0.3', '--scaled-init', '--no-peer', '--no-grpo', '--no-static', '--batches', '1', '--json', rsOut], { encoding: 'utf8', env: { ...process.env, GPTOSS_DEVICE: 'cpu' } });
  assert.equal(rs.status, 0, rs.stderr);
  assert.match(rs.stdout, /random BF16 weights \(router std 0\.3\) \(scaled init\)/);
  const rsJson = JSON.parse(readFileSync(rsOut, 'utf8'));
  assert.equal(rsJson.routerStd, 0.3);
  assert.equal(rsJson.scaledInit, true);
  const neg = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--router-std', '-1', '--no-peer'], { encoding: 'utf8', env: { ...process.env, GPTOSS_DEVICE: 'cpu' } });
  assert.notEqual(neg.status, 0);
  assert.match(neg.stderr, /--router-std must be a positive number, got -1/);
});

test('bench:generate --cuda-graphs runs both engines on the CPU (the graph path eagerly over its padded buffers)', () => {
  const out = join(mkdtempSync(join(tmpdir(), 'bench-generate-graphs-')), 'out.json');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--json', out, '--num-blocks', '256', '--cuda-graphs', '--no-grpo', '--no-static'], {
    encoding: 'utf8',
    env: { ...process.env, GPTOSS_DEVICE: 'cpu' },
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\| batch \| engine \(eager\) \| engine \+ CUDA graphs \| graphs speedup \|/);
  const j = JSON.parse(readFileSync(out, 'utf8'));
  assert.equal(j.cudaGraphs, true);
  for (const row of j.fixed.rows) {
    assert.ok(row.engineTokS > 0 && row.engineGraphsTokS > 0);
    assert.ok(row.engineGraphsLatency.ttftMs > 0 && row.engineGraphsLatency.tpotMs > 0, JSON.stringify(row.engineGraphsLatency));
    assert.ok(row.graphs.replays > 0, JSON.stringify(row.graphs));
  }
});

test('bench:generate --lora and bench:train-step --lora run on the CPU (smoke forms): LoRA columns, phases and JSON', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-lora-'));
  const env = { ...process.env, GPTOSS_DEVICE: 'cpu' };
  const g = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--lora', '--lora-targets', 'q_proj,v_proj,o_proj,router,gate_up_proj', '--no-static', '--json', join(dir, 'g.json'), '--num-blocks', '256'], { encoding: 'utf8', env });
  assert.equal(g.status, 0, g.stderr);
  assert.match(g.stdout, /\| batch \| engine \| engine \+ LoRA \| LoRA time \|/);
  assert.match(g.stdout, /log-prob gap engine vs tokenLogprobs \(LoRA run\)/);
  const gj = JSON.parse(readFileSync(join(dir, 'g.json'), 'utf8'));
  for (const row of gj.fixed.rows) assert.ok(row.engineLoraTokS > 0);
  assert.ok(gj.grpo.engineLora.tokS > 0);
  // The engine with adapters and the trainer with the same adapters agree on the sampled tokens' log-probs (on the
  // CPU to float noise: ~4e-7 as without adapters; 1e-3 when the LoRA run reused the base run's cached prompt
  // blocks, before Engine.dropCachedPrefixes).
  assert.ok(gj.grpo.logprobGap.tokens > 0 && gj.grpo.logprobGap.maxAbs < 1e-5, `gap ${gj.grpo.logprobGap.maxAbs}`);
  const t = spawnSync(process.execPath, ['--import', 'tsx', 'bench/train-step.ts', '--lora', '--preset', 'gpt-oss-tiny-256', '--prompts', '2', '--samples', '2', '--prompt-len', '8', '--gen-len', '4', '--warmup-gen-len', '2', '--json', join(dir, 't.json')], { encoding: 'utf8', env });
  assert.equal(t.status, 0, t.stderr);
  assert.match(t.stdout, /\| adapter sync \|/);
  const tj = JSON.parse(readFileSync(join(dir, 't.json'), 'utf8'));
  assert.equal(tj.row.generatedTokens, 2 * 2 * 4);
  assert.equal(tj.warmupGenerated, 2 * 2 * 2, '--warmup-gen-len: the warm-up step generates 2 tokens a sequence');
  assert.equal(tj.row.trainedTokens, 2 * 2 * (8 + 4));
  assert.ok(tj.row.trainedTokensPerS > 0 && tj.adapterParams > 0);
});

test('bench:generate under the launcher: one tp=2 engine and 2 x tp=1 on 2 CPU processes; --tp 3 refused', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-generate-pool-'));
  const tiny = ['--preset', 'gpt-oss-tiny-256', '--batches', '2,3', '--new', '4', '--prompt', '8', '--grpo-prompts', '3', '--grpo-samples', '2', '--num-blocks', '64'];
  const run = async (args: string[]): Promise<{ exitCode: number; text: string }> => {
    const lines: string[] = [];
    const r = await launch({ script: 'bench/generate.ts', args, nprocPerNode: 2, device: 'cpu', onOutput: (rank, _s, line) => lines.push(`[rank ${rank}] ${line}`) });
    return { exitCode: r.exitCode, text: lines.join('\n') };
  };
  for (const [tpArg, layout, engines] of [['2', '1 x tp=2', 1], ['1', '2 x tp=1', 2]] as const) {
    const out = join(dir, `tp${tpArg}.json`);
    const r = await run([...tiny, '--tp', tpArg, '--json', out]);
    assert.equal(r.exitCode, 0, r.text);
    assert.ok(r.text.includes(`[rank 0] gpt-oss generation, gpt-oss-tiny-256 shape, random BF16 weights, 2 layers, cpu, ${layout} (launcher mode, 2 ranks)`), r.text);
    assert.match(r.text, /the static path, the transformers peer and the log-prob gap are not run/);
    assert.ok(r.text.includes(`| batch | engine (${layout}) | seconds per engine |`), r.text);
    const j = JSON.parse(readFileSync(out, 'utf8'));
    assert.equal(j.layout, layout);
    assert.deepEqual([j.worldSize, j.tensorParallelSize, j.engines], [2, Number(tpArg), engines]);
    assert.deepEqual(j.fixed.rows.map((x: { batch: number }) => x.batch), [2, 3]);
    for (const row of j.fixed.rows) {
      assert.ok(row.engineTokS > 0, JSON.stringify(row));
      assert.equal(row.staticTokS, null);
      assert.equal(row.peerTokS, null);
      // The batch's sequences split evenly over the engines, every one producing its 4 tokens.
      assert.equal(row.perEngine.length, engines);
      assert.deepEqual(row.perEngine.map((x: { sequences: number }) => x.sequences), engines === 1 ? [row.batch] : [Math.floor(row.batch / 2), row.batch - Math.floor(row.batch / 2)]);
      assert.equal(row.perEngine.reduce((a: number, x: { outputTokens: number }) => a + x.outputTokens, 0), row.batch * 4);
      const slowest = Math.max(...row.perEngine.map((x: { seconds: number }) => x.seconds));
      assert.ok(Math.abs(row.engineTokS - (row.batch * 4) / slowest) < 1e-6 * row.engineTokS, 'pool tokens/s = all tokens / the slowest engine');
    }
    assert.equal(j.grpo.sequences, 6);
    assert.equal(j.grpo.perEngine.length, engines);
    assert.deepEqual(j.grpo.perEngine.map((x: { sequences: number }) => x.sequences), engines === 1 ? [6] : [2, 4], 'whole prompts (2 samples each) per engine');
    assert.ok(j.grpo.engine.tokS > 0 && j.grpo.logprobGap === null && j.grpo.static === null);
  }
  const bad = await run(['--preset', 'gpt-oss-tiny-256', '--tp', '3']);
  assert.notEqual(bad.exitCode, 0);
  assert.match(bad.text, /--tp 3 does not divide the 2 launched processes/);
  const alone = spawnSync(process.execPath, ['--import', 'tsx', 'bench/generate.ts', '--tp', '2'], { encoding: 'utf8', env: { ...process.env, GPTOSS_DEVICE: 'cpu' } });
  assert.notEqual(alone.status, 0);
  assert.match(alone.stderr, /--tp 2 needs 2 or more processes: run it under the launcher/);
});
