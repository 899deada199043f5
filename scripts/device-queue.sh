#!/usr/bin/env bash
# The GPU checks waiting for a machine (code written without a GPU, measurements not yet taken), in the order to
# run them: source after scripts/device-steps.sh and `build` on the device, e.g.
#   cd .stage-main && source ../.device/prelude.sh && source scripts/device-steps.sh 560 && build && source scripts/device-queue.sh
# Each line is one time-boxed step (output in $OUT/log.txt). Remove a line when its check has passed and the code
# it guards has become the default (docs/architecture.md, GPTOSS_UNVERIFIED_KERNELS).
T="node --test --test-reporter=tap --test-concurrency=1"
# Tests of kernels that wait behind GPTOSS_UNVERIFIED_KERNELS=1 (each test sets it) or a refusal on CUDA.
step gemv 240 $T dist/test/gpu/gemv.test.js                                     # then remove GPTOSS_GEMV (and =legacy)
step bench-gemv 90 node dist/bench/gemv.js --json $OUT/gemv.json                 # M <= 2 warp kernel vs legacy vs cuBLAS
step moe 60 $T dist/test/gpu/moe.test.js
step moe-decode 120 $T dist/test/gpu/moe-decode.test.js                          # fused MoE decode kernels
step add-rmsnorm 60 $T dist/test/gpu/add-rmsnorm.test.js                         # fused residual add + norm
step coreops1 60 $T dist/test/gpu/coreops1.test.js                               # rmsnorm refactor
step fused-lm-head 120 $T dist/test/gpu/fused-lm-head.test.js                    # trainer.fused_lm_head_backward
# Measurements (H100): batch-1 decode with the unverified kernels against without, same run.
step gen-b1 70 node dist/bench/generate.js --cuda-graphs --batches 1 --no-grpo --no-peer --no-static --json $OUT/gen-b1.json
step gen-b1-new 70 env GPTOSS_UNVERIFIED_KERNELS=1 node dist/bench/generate.js --cuda-graphs --batches 1 --no-grpo --no-peer --no-static --json $OUT/gen-b1-new.json
# The training step: allocator counters and per-step times, then the fused LM-head backward.
step train 90 node dist/bench/train-step.js --layers 2 --tokens 16384 --micro-batches 2 --steps 3 --json $OUT/train.json
step train-fused 90 node dist/bench/train-step.js --layers 2 --tokens 16384 --micro-batches 2 --steps 3 --fused-lm-head --json $OUT/train-fused.json
