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
# the moe-decode test after biased_row. Session 27 on H100s: the PDL and top-p window candidates (GPU tests passed,
# no faster: dropped), the log-prob gap with --router-std and --scaled-init, decode-profile, the 4k training rows.
# Still waiting:
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
