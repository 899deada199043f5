#!/usr/bin/env bash
# The GPU checks waiting for a machine (code written without a GPU, measurements not yet taken), in the order to
# run them: source after scripts/device-steps.sh and `build` on the device, e.g.
#   cd .stage-main && source ../.device/prelude.sh && source scripts/device-steps.sh 560 && build && source scripts/device-queue.sh
# Each line is one time-boxed step (output in $OUT/log.txt). Remove a line when its check has passed and the code
# it guards has become the default (docs/architecture.md, "No per-op switches").
T="node --test --test-reporter=tap --test-concurrency=1"
# The runs that need several GPUs (issues 25, 26) are in scripts/multi-gpu-queue.sh.
# Waiting: the decode MoE's blocks per SM by token count (4 at T 2, 12 at T 5-8: the harness ran those shapes on an
# H100 with yp within one bf16 ulp of the tested shape, the GPU test not since); the replayed decode step's split
# (GPU vs host, bench:generate prints it) at batch 1; the 4k training rows after the cuBLASLt tuning fix.
step moe-decode-test 120 $T dist/test/gpu/moe-decode.test.js
step gen-b1-split 200 node dist/bench/generate.js --cuda-graphs --batches 1,2 --no-grpo --no-peer --no-static --json "$OUT/gen-b1.json"
step train-step-4k 150 node dist/bench/train-step.js --tokens 4096 --layers 2 --steps 8 --json "$OUT/train-step-4k.json"
step train-step-4k-mb8 150 node dist/bench/train-step.js --tokens 4096 --layers 2 --steps 6 --micro-batches 8 --json "$OUT/train-step-4k-mb8.json"
