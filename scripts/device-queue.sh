#!/usr/bin/env bash
# The GPU checks waiting for a machine (code written without a GPU, measurements not yet taken), in the order to
# run them: source after scripts/device-steps.sh and `build` on the device, e.g.
#   cd .stage-main && source ../.device/prelude.sh && source scripts/device-steps.sh 560 && build && source scripts/device-queue.sh
# Each line is one time-boxed step (output in $OUT/log.txt). Remove a line when its check has passed and the code
# it guards has become the default (docs/architecture.md, "No per-op switches").
T="node --test --test-reporter=tap --test-concurrency=1"
# The runs that need several GPUs (issues 25, 26) are in scripts/multi-gpu-queue.sh.
# Waiting (passed on an H200 in session 23, H100 figures not taken): batch-1 decode with the three fused decode
# launches (docs/inference.md, "Three launches a layer fewer"), the 4k training rows after the cuBLASLt tuning fix.
# Also the decode MoE test after the reduces' shared helpers (lane_sum / lanes_total / expert_of: a refactor, the same
# sums in the same order, not yet run on a GPU) and the plain rope tests after rope_math.cuh.
step moe-decode-test 90 $T dist/test/gpu/moe-decode.test.js
# Candidate (docs/inference.md, "Next candidate"): `git cherry-pick f0a8455` before staging, then these two check it.
step rope-norm-tests 60 $T --test-name-pattern "ropeQkvProject" dist/test/gpu/coreops1.test.js
step rope-tests 60 $T --test-name-pattern "rope" dist/test/gpu/coreops1.test.js
step gen-b1 120 node dist/bench/generate.js --cuda-graphs --batches 1,2 --no-grpo --no-peer --no-static --json "$OUT/gen-b1.json"
# The log-prob gap on a random 20b shape whose routers are not near-tied (bench:generate --router-std), with the
# trainer's own floor beside it (docs/inference.md, "Log-prob gap").
step gap-router-std 200 node dist/bench/generate.js --no-fixed --no-static --no-peer --router-std 0.2 --grpo-prompts 8 --gap-seqs 64 --json "$OUT/gap-router-std.json"
step train-step-4k 150 node dist/bench/train-step.js --tokens 4096 --layers 2 --steps 8 --json "$OUT/train-step-4k.json"
step train-step-4k-mb8 150 node dist/bench/train-step.js --tokens 4096 --layers 2 --steps 6 --micro-batches 8 --json "$OUT/train-step-4k-mb8.json"
