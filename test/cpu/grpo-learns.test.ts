// Proof that GRPO learns (CI, CPU), and the default run: `npm run train` with no arguments on a machine without a
// GPU runs configs/demo-cpu.yaml, and so does this test, through the same code (runTraining, src/trainer/run.ts;
// the test only adds fresh checkpoint/metrics paths, see test/helpers/grpo-recipe.ts). The synthetic arithmetic
// task ("What is 3 + 4?" in harmony, answered `<|channel|>final<|message|>#### 7<|return|>`) on a compact
// vocabulary, a tiny random-initialised GPT-OSS-architecture model (2 layers, hidden 64, 4 experts top-2),
// an SFT warm start until a held-out reward of 0.3, then GRPO (250 steps of 16 prompts x 8 samples, lr 3e-4, k3
// KL 0.001). GRPO's held-out reward (100 problems of the test split, 4 samples each at the training temperature
// 1.0, the distribution GRPO optimises) must rise by at least 15 points from its step-0 evaluation. About 2.5-4
// minutes on 2 CPU cores; the curve is printed and written to runs/ci/grpo-learns.jsonl. GRPO_LEARNS_* environment
// variables change the recipe for experiments (recipeFromEnv).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpuRecipe, recipeFromEnv, runGrpoLearningRecipe } from '../helpers/grpo-recipe.ts';

test('the default run (configs/demo-cpu.yaml): GRPO raises held-out reward by >= 15 points after the SFT warm start', { timeout: 15 * 60_000 }, async () => {
  const r = await runGrpoLearningRecipe(recipeFromEnv(cpuRecipe()));
  console.log(r.curve.join('\n'));
  assert.equal(r.skippedSteps, 0);
  assert.ok(r.after.reward - r.before.reward >= 0.15, `held-out reward ${r.before.reward} -> ${r.after.reward}: less than +15 points\n${r.curve.join('\n')}`);
});
