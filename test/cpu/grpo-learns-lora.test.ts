// Proof that LoRA GRPO learns (CI, CPU): the default CPU recipe (configs/demo-cpu.yaml, see grpo-learns.test.ts)
// with trainer.policy.model.lora.rank > 0. The SFT warm start fine-tunes the tiny random-initialised base (all
// weights, as before); GRPO then trains only the adapters (rank 8, alpha 16, lr 2e-3, on q/k/v/o and the LM head)
// on that frozen base, whose KL reference is the base itself (the adapters switched off). Without the lm_head
// adapter no recipe tried gained more than +9 points: the tiny base's frozen random LM head is where the
// full-weight run's gain comes from (docs/training.md, LoRA, Learning: every recipe tried, with its numbers). The
// held-out reward (100 test problems x 4 samples at temperature 1.0) must rise by at least 15 points from GRPO's
// step-0 evaluation. Measured numbers: docs/training.md (LoRA).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpuRecipe, recipeFromEnv, runGrpoLearningRecipe } from '../helpers/grpo-recipe.ts';

/** The LoRA form of the CPU recipe (GRPO_LEARNS_* variables still apply on top). */
export const LORA_OVERRIDES = [
  'trainer.policy.model.lora.rank=8',
  'trainer.policy.model.lora.alpha=16',
  'trainer.policy.model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,lm_head]',
  'trainer.policy.optimizer_config.lr=2e-3',
  'trainer.run_name=demo-cpu-lora',
];

// The target is the full-weight test's (+15 points in 250 GRPO steps).
test('LoRA GRPO on the default CPU recipe raises held-out reward by >= 15 points (adapters only, frozen base)', { timeout: 15 * 60_000 }, async () => {
  const base = cpuRecipe();
  const r = await runGrpoLearningRecipe(recipeFromEnv({ ...base, overrides: [...base.overrides, ...LORA_OVERRIDES], metricsPath: process.env.GRPO_LEARNS_METRICS_PATH ?? 'runs/ci/grpo-learns-lora.jsonl' }));
  console.log(r.curve.join('\n'));
  console.log(JSON.stringify({ timings: r.timings, parameters: r.model.parameters, steps: r.steps }));
  assert.equal(r.skippedSteps, 0);
  assert.ok(r.after.reward - r.before.reward >= 0.15, `held-out reward ${r.before.reward} -> ${r.after.reward}: less than +15 points\n${r.curve.join('\n')}`);
});
