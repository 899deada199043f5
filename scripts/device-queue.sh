#!/usr/bin/env bash
# The GPU checks waiting for a machine (code written without a GPU, measurements not yet taken), in the order to
# run them: source after scripts/device-steps.sh and `build` on the device, e.g.
#   cd .stage-main && source ../.device/prelude.sh && source scripts/device-steps.sh 560 && build && source scripts/device-queue.sh
# Each line is one time-boxed step (output in $OUT/log.txt). Remove a line when its check has passed and the code
# it guards has become the default (docs/architecture.md, "No per-op switches").
T="node --test --test-reporter=tap --test-concurrency=1"
# The runs that need several GPUs (issues 25, 26) are in scripts/multi-gpu-queue.sh.
# Run in session 24 on an H100 (docs/inference.md, "Batch 1"; docs/training.md): the moe-decode and rope tests,
# batch-1 decode at 245 nodes, the 4k training rows. Run in session 25 on an H100: the vocabulary-parallel ops' GPU
# tests, batch-1 decode (base vs the vocabulary-parallel build vs prefetchL2, dropped), bench:tp-moe, bench:tp-head,
# the moe-decode test after biased_row. Session 26: every machine start failed (its 30 minutes
# went to them), so nothing below has run yet. Still waiting:
# The two candidates (reverted on main until a GPU runs them): programmatic dependent launch of the decode kernels
# (commit 5e47e99; docs/inference.md, "Overlapped launches") and the CUDA top-p search over a shrinking window of keys
# (c752c58; "Top-p rows"). Staging: bash scripts/device-stage-candidates.sh 5e47e99 c752c58 (HEAD as ../.stage-base,
# HEAD + both candidates as .stage-main, from a worktree: main's history untouched). Batch-1 decode interleaved with the base (temperature rows: the split sampler, which the
# top-p candidate does not touch, so the A/B is the PDL one), then the GPU tests of every kernel PDL changed (the gemv
# file's PDL-chain test is new), then the sampler's top-p tests and bench:tp-head's top-p column in both trees.
if [ -d ../.stage-base ]; then
  (cd ../.stage-base && step build-base 300 bash scripts/device-build.sh)
  for i in 1 2; do
    (cd ../.stage-base && step "base-gen-$i" 60 node dist/bench/generate.js --cuda-graphs --batches 1,2 --no-grpo --no-peer --no-static --json "$OUT/base-gen-$i.json")
    step "cand-gen-$i" 60 node dist/bench/generate.js --cuda-graphs --batches 1,2 --no-grpo --no-peer --no-static --json "$OUT/cand-gen-$i.json"
  done
  step pdl-gemv 90 $T dist/test/gpu/gemv.test.js
  # Then the log-prob gap on a random 20b shape whose routers are not near-tied (bench:generate --router-std), with the
  # trainer's own floor beside it (docs/inference.md, "Log-prob gap").
  step gap-router-std 200 node dist/bench/generate.js --no-fixed --no-static --no-peer --router-std 0.2 --grpo-prompts 8 --gap-seqs 64 --json "$OUT/gap-router-std.json"
  step pdl-moe-decode 90 $T dist/test/gpu/moe-decode.test.js
  step pdl-graphs 90 $T dist/test/gpu/cuda-graphs.test.js
  step pdl-engine 90 $T dist/test/gpu/engine.test.js
  step pdl-paged 90 $T dist/test/gpu/paged-attention.test.js
  step pdl-add-rmsnorm 60 $T dist/test/gpu/add-rmsnorm.test.js
  step pdl-coreops1 120 $T dist/test/gpu/coreops1.test.js
  step topp-tests 120 $T --test-name-pattern "sampleRows on CUDA" dist/test/gpu/coreops2.test.js
  step topp-head 60 node dist/bench/tp-head.js --tp 4 --rows 1,64,512 --json "$OUT/topp-head.json"
  (cd ../.stage-base && step topp-head-base 60 node dist/bench/tp-head.js --tp 4 --rows 1,64,512 --json "$OUT/topp-head-base.json")
else
  # The log-prob gap on a random 20b shape whose routers are not near-tied (bench:generate --router-std), with the
  # trainer's own floor beside it (docs/inference.md, "Log-prob gap").
  step gap-router-std 200 node dist/bench/generate.js --no-fixed --no-static --no-peer --router-std 0.2 --grpo-prompts 8 --gap-seqs 64 --json "$OUT/gap-router-std.json"
fi
# Then: did session 23's three fused decode launches (317 -> 245 graph nodes) help on an H100? Only H200 figures
# and cross-call H100 ones exist (docs/inference.md, "Batch 1"). Stage 7af5708 (the 317-node tree) as ../.stage-317
# (bash scripts/device-stage-rev.sh 7af5708 317) and compare in one call, interleaved (log only: the device tool
# returns at most 8 files).
if [ -d ../.stage-317 ]; then
  (cd ../.stage-317 && step build-317 120 bash scripts/device-build.sh)
  for i in 1 2; do
    step "nodes245-gen-$i" 60 node dist/bench/generate.js --cuda-graphs --batches 1,2 --no-grpo --no-peer --no-static
    (cd ../.stage-317 && step "nodes317-gen-$i" 60 node dist/bench/generate.js --cuda-graphs --batches 1,2 --no-grpo --no-peer --no-static)
  done
fi
# Where batch-1 decode's 3.49 ms go now (245 nodes), and the 4k sharded step's extra ~8 ms at world size 1.
# decode-profile's device marks inflate small kernels; a per-node trace of the CUDA-graph replays needs Nsight
# Systems (not yet known to be on the GPU machine): the probe says, and when present the trace's kernel summary is
# the decode step as the graph runs it.
echo "nsys: $(command -v nsys || echo none); Nsight dirs: $(ls -d /usr/local/cuda/nsight-systems* /opt/nvidia/nsight-systems* 2>/dev/null | xargs)" >> "$DEVICE_LOG"
if command -v nsys > /dev/null; then
  step nsys-gen-b1 120 nsys profile -t cuda --cuda-graph-trace=node -o /tmp/gen-b1 -f true node dist/bench/generate.js --cuda-graphs --batches 1 --no-grpo --no-peer --no-static
  step nsys-stats 60 bash -c 'nsys stats -q -r cuda_gpu_kern_sum -f csv -o /tmp/kern /tmp/gen-b1.nsys-rep && cp /tmp/kern*.csv "$OUT/"'
fi
step decode-profile 90 node dist/bench/decode-profile.js --batches 1 --json "$OUT/decode-profile-b1.json"
step train-profile-4k 150 node dist/bench/train-step.js --profile --tokens 4096 --layers 2 --steps 1 --json "$OUT/train-profile-4k.json"
step train-step-4k-mb8 150 node dist/bench/train-step.js --tokens 4096 --layers 2 --steps 6 --micro-batches 8 --json "$OUT/train-step-4k-mb8.json"
