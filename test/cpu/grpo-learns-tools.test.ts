// Proof that multi-turn GRPO with tools learns (CI, CPU): configs/demo-cpu-tools.yaml through runTraining, as the
// CLI runs it. synthetic_tools ("What is the value of k65 plus 5?", solvable only through functions.lookup) on a
// compact vocabulary that covers every token the environment can write (src/trainer/vocab.ts), a tiny
// random-initialised model, an SFT warm start on the reference episodes (lookup call, masked tool result, final
// answer) until a held-out success rate of 0.2, then GRPO on whole episodes. The held-out success rate (100 test
// problems x 4 episodes at temperature 1.0) must rise by at least 15 points from GRPO's step-0 evaluation. The
// curve is printed and written to runs/ci/grpo-learns-tools.jsonl; GRPO_LEARNS_* variables change the recipe.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { recipeFromEnv, runGrpoLearningRecipe } from '../helpers/grpo-recipe.ts';

test('synthetic_tools (configs/demo-cpu-tools.yaml): GRPO after the SFT warm start raises held-out success by >= 15 points', { timeout: 15 * 60_000 }, async () => {
  const r = await runGrpoLearningRecipe(recipeFromEnv({ preset: 'demo-cpu-tools', overrides: [], metricsPath: 'runs/ci/grpo-learns-tools.jsonl', curveEvery: 10 }));
  console.log(r.curve.join('\n'));
  console.log(`held-out success (accuracy) ${r.before.accuracy.toFixed(2)} -> ${r.after.accuracy.toFixed(2)}`);
  assert.equal(r.skippedSteps, 0);
  assert.ok(r.after.accuracy - r.before.accuracy >= 0.15, `held-out success ${r.before.accuracy} -> ${r.after.accuracy}: less than +15 points\n${r.curve.join('\n')}`);
});
