// Proof that GRPO learns, GPU half (issue 7): configs/demo-gpu.yaml, the default `npm run train` on a GPU
// machine (run through test/helpers/grpo-recipe.ts, as the CPU test runs configs/demo-cpu.yaml), with a larger
// tiny model, `tiny:gpt-oss-tiny-large` (4 layers, hidden 512, 8/2 heads of 64, 8 experts top-4; 27.9M parameters
// on the task's compact vocabulary), on `trainer.device=cuda`:
//   - SFT warm start (batch 32, lr 1e-3) until the held-out reward, checked every 10 steps, reaches 0.3 (at most
//     600 steps): a model this size memorises the 100 single-digit sums in a few hundred steps, so a fixed step
//     count would leave GRPO nothing to improve;
//   - GRPO, 64 prompts x 8 samples per step (512 rollouts), lr 1e-4, k3 KL 0.001, up to 250 steps;
//   - held-out reward (100 test problems x 4 samples at temperature 1.0) must rise by >= 15 points, with no
//     skipped optimizer step.
// The whole run has a wall-clock budget (GRPO_LEARNS_BUDGET_S, default 320 s, 0 for none; GRPO stops early rather
// than overrun), so it fits in 6 minutes on one H100. It prints the curve and the throughput (GRPO steps/s, generated
// tokens/s of the rollout phase, trainer tokens/s of the update phase, wall time per phase; from the loop's
// time/* and tokens_per_s* metrics) and writes them to runs/gpu/grpo-learns.json (or $GRPO_LEARNS_OUT; the
// metrics JSONL goes beside it). GRPO_LEARNS_* variables change the recipe (see recipeFromEnv); a CPU smoke run
// of this code path: GRPO_LEARNS_DEVICE=cpu GRPO_LEARNS_SFT_STEPS=2 GRPO_LEARNS_STEPS=2 GRPO_LEARNS_PROMPTS=4
// GRPO_LEARNS_NUM_VAL=8 GRPO_LEARNS_MIN_GAIN=-1 ... (see docs/training.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native.ts';
import { formatThroughput, gpuRecipe, recipeConfig, recipeFromEnv, runGrpoLearningRecipe, writeRecipeResult } from '../helpers/grpo-recipe.ts';
import { hasCuda } from '../helpers/cuda.ts';

const OUT = process.env.GRPO_LEARNS_OUT || 'runs/gpu/grpo-learns.json';

const BUDGET_S = Number(process.env.GRPO_LEARNS_BUDGET_S || 320); // 0: no budget
const recipe = { ...recipeFromEnv(gpuRecipe(OUT.replace(/\.json$/, '') + '.jsonl')), budgetS: BUDGET_S > 0 ? BUDGET_S : undefined };
const recipeCfg = recipeConfig(recipe).trainer;
const onCpu = recipeCfg.device === 'cpu';
const skip = onCpu || hasCuda ? false : 'no CUDA device (addon built without CUDA or no GPU visible); GRPO_LEARNS_DEVICE=cpu runs it on the CPU';
const MIN_GAIN = Number(process.env.GRPO_LEARNS_MIN_GAIN ?? 0.15);

test(`GRPO raises held-out reward by >= ${MIN_GAIN * 100} points after an SFT warm start (${recipeCfg.policy.model.path}, synthetic task, ${recipeCfg.device})`, { skip, timeout: 20 * 60_000 }, async () => {
  const r = await runGrpoLearningRecipe(recipe);
  const lines = [...r.curve, ...formatThroughput(r)];
  console.log(lines.join('\n'));
  writeRecipeResult(OUT, recipe, r, { test: 'test/gpu/grpo-learns.test.ts', minGain: MIN_GAIN, addon: native().features });
  console.log(`wrote ${OUT} and ${recipe.metricsPath}`);
  assert.equal(r.skippedSteps, 0, 'GRPO skipped optimizer steps (non-finite loss or grad norm)');
  const why = r.budgetStopped.grpo ? ` (GRPO stopped by the ${recipe.budgetS} s budget after ${r.steps} of ${recipeCfg.max_steps} steps)` : '';
  assert.ok(r.after.reward - r.before.reward >= MIN_GAIN, `held-out reward ${r.before.reward} -> ${r.after.reward}: less than +${MIN_GAIN * 100} points${why}\n${lines.join('\n')}`);
});
