// Proof that GRPO learns (CI, CPU): on the synthetic arithmetic task ("What is 3 + 4?" in harmony, answered
// `<|channel|>final<|message|>#### 7<|return|>`), a tiny random-initialised GPT-OSS-architecture model (2 layers,
// hidden 64, 4 experts top-2; the task's tokens on a compact vocabulary, see src/trainer/vocab.ts) is warm-started
// by SFT on reference solutions (600 steps: the format is learnt, about half the sums are right), then trained
// with GRPO (16 prompts x 8 samples per step, lr 3e-4, k3 KL 0.001). Held-out reward (100 problems of the test
// split, 4 samples each at the training temperature 1.0, the distribution GRPO optimises) must rise by at least
// 15 points over the SFT model. About 3-4 minutes on 2 CPU cores; the curve is printed and written to
// runs/ci/grpo-learns.jsonl. The recipe lives in test/helpers/grpo-recipe.ts (shared with
// test/gpu/grpo-learns.test.ts); GRPO_LEARNS_* environment variables change it for experiments.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpuRecipe, recipeFromEnv, runGrpoLearningRecipe } from '../helpers/grpo-recipe.ts';

test('GRPO raises held-out reward by >= 15 points after an SFT warm start (tiny GPT-OSS, synthetic task, CPU)', { timeout: 15 * 60_000 }, async () => {
  const r = await runGrpoLearningRecipe(recipeFromEnv(cpuRecipe()));
  console.log(r.curve.join('\n'));
  assert.equal(r.skippedSteps, 0);
  assert.ok(r.after.reward - r.before.reward >= 0.15, `held-out reward ${r.before.reward} -> ${r.after.reward}: less than +15 points\n${r.curve.join('\n')}`);
});
