// The task environment built from a config: GSM8K (bundled) and synthetic prompts in harmony, rewards of the
// reference completions, the compact vocabulary, and data errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from '../../src/config/index.ts';
import { buildTaskEnv } from '../../src/trainer/env.ts';
import { compactTask } from '../../src/trainer/vocab.ts';
import { DataError } from '../../src/trainer/task.ts';

const kw = '+generator.chat_template_kwargs={reasoning_effort: low, current_date: "2025-06-28"}';

test('GSM8K (bundled): harmony prompts, references score 1, a wrong answer 0', async () => {
  const env = await buildTaskEnv(loadConfig({ overrides: [kw.replace('+', '++'), 'data.max_train_samples=5', 'data.max_val_samples=3'] }));
  assert.equal(env.train.length, 5);
  assert.equal(env.val.length, 3);
  const text = env.decode!(env.train[0]!.prompt);
  assert.match(text, /^<\|start\|>system<\|message\|>You are ChatGPT.*Reasoning: low.*<\|start\|>user<\|message\|>.*Let's think step by step and output the final answer after "####"\.<\|end\|><\|start\|>assistant$/s);
  for (const e of env.train) {
    assert.equal(env.reward(e, e.reference!, 'stop').reward, 1, env.decode!(e.reference!));
    assert.equal(env.reward(e, e.reference!.slice(0, 3), 'length').reward, 0);
  }
  assert.ok(env.stopTokenIds.includes(200002));
});

test('synthetic task with a compact vocabulary keeps rewards and decoding in the original ids', async () => {
  const c = loadConfig({ overrides: ['environment.env_class=synthetic', 'data.synthetic.num_train=50', 'data.synthetic.num_val=10', kw.replace('+', '++')] });
  const env = await buildTaskEnv(c);
  const { env: small, vocab } = compactTask(env);
  assert.ok(vocab.size < 200, `compact vocabulary of ${vocab.size}`);
  const e = small.train[0]!;
  assert.ok(Math.max(...e.prompt) < vocab.size);
  assert.equal(small.reward(e, e.reference!, 'stop').reward, 1);
  assert.match(small.decode!(e.reference!), /#### \d+<\|return\|>$/);
  assert.deepEqual(small.stopTokenIds.map((t) => vocab.toOriginal[t]), env.stopTokenIds);
});

test('data errors name the key', async () => {
  await assert.rejects(buildTaskEnv(loadConfig({ overrides: ['data.train_data=[/no/such/file.jsonl]'] })), (e: Error) => e instanceof DataError && /data\.train_data: '\/no\/such\/file\.jsonl' does not exist/.test(e.message));
});
