// Proof that LoRA GRPO learns (CI, CPU): the default CPU recipe (configs/demo-cpu.yaml, see grpo-learns.test.ts)
// with trainer.policy.model.lora.rank > 0. The SFT warm start fine-tunes the tiny random-initialised base (all
// weights, as before); GRPO then trains only the adapters (rank 8, alpha 16, on q/k/v/o, the router and the experts'
// gate_up/down) on that frozen base, whose KL reference is the base itself (the adapters switched off). The
// held-out reward (100 test problems x 4 samples at temperature 1.0) must rise by at least 15 points from GRPO's
// step-0 evaluation. Measured numbers: docs/training.md (LoRA).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpuRecipe, recipeFromEnv, runGrpoLearningRecipe } from '../helpers/grpo-recipe.ts';

/** The LoRA form of the CPU recipe (GRPO_LEARNS_* variables still apply on top). */
export const LORA_OVERRIDES = [
  'trainer.policy.model.lora.rank=8',
  'trainer.policy.model.lora.alpha=16',
  'trainer.policy.model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,router,gate_up_proj,down_proj]',
  'trainer.policy.optimizer_config.lr=2e-3',
  'trainer.run_name=demo-cpu-lora',
];

// Not reached yet (issue 23 stays open): no recipe tried gains 15 points in 250 steps (docs/training.md, LoRA,
// "Learning": +4 to +5 at step 250). The test runs and prints its curve in CI as a todo until one does; the target
// is the full-weight test's, unchanged.
test('LoRA GRPO on the default CPU recipe raises held-out reward by >= 15 points (adapters only, frozen base)', { timeout: 15 * 60_000, todo: 'no LoRA recipe reaches +15 points yet (docs/training.md, LoRA, Learning)' }, async () => {
  const base = cpuRecipe();
  const r = await runGrpoLearningRecipe(recipeFromEnv({ ...base, overrides: [...base.overrides, ...LORA_OVERRIDES], metricsPath: process.env.GRPO_LEARNS_METRICS_PATH ?? 'runs/ci/grpo-learns-lora.jsonl' }));
  console.log(r.curve.join('\n'));
  console.log(JSON.stringify({ timings: r.timings, parameters: r.model.parameters, steps: r.steps }));
  assert.equal(r.skippedSteps, 0);
  assert.ok(r.after.reward - r.before.reward >= 0.15, `held-out reward ${r.before.reward} -> ${r.after.reward}: less than +15 points\n${r.curve.join('\n')}`);
});
