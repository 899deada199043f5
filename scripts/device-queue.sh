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
# Session 28 on two H100 calls: the decode-latency change (paged attention split rule and merge, the decode MoE
# reduces, the norm rows; landed: 3.44 -> 3.17 ms a replayed batch-1 step) and the 4-stage / key-split attention
# (no faster: dropped). Nsight Compute works there (bench/ncu_kernels.py); Nsight Systems is not installed.
# Session 29 on H100s: the preNorm router and the engine running a step ahead (GPU tests passed, faster: landed), a
# warp per unit in the small-M linear (slower: dropped).
# Session 30 on H100s: the bulk-copy decode MoE partial kernel (slower at every ring shape: dropped; docs/moe.md), the
# grouped GEMMs' 32x128 small-batch tiles (scripts/device-tile-ab.sh: faster from T 32 up, batch 1 302.7 / 304.2
# tok/s: landed; moe + engine + cuda-graphs GPU tests passed on main).
# Session 31 on an H100: batch-invariant mode (test/gpu/batch-invariant.test.ts: 5 of 6 passed, the sixth failed on
# -0 vs +0 in the dense forward's padding rows only, fixed after; bench:generate --batch-invariant: gap 3.46e-7 vs
# 3.53e-2, 0.60x / 0.90x / 0.77x tok/s at batch 1 / 64 / 512).
# Still waiting:
# 0. Batch-invariant mode after the padding fix, and the default paths its kernel edits touch (moe_gemm.cuh's dense
#    branch, paged attention's key steps), then what the mode costs a training step (2 layers, 4k tokens).
step inv-tests 90 $T dist/test/gpu/batch-invariant.test.js
step inv-regress 200 $T dist/test/gpu/paged-attention.test.js dist/test/gpu/moe.test.js dist/test/gpu/engine.test.js dist/test/gpu/cuda-graphs.test.js dist/test/gpu/attention.test.js dist/test/gpu/gemv.test.js dist/test/gpu/moe-decode.test.js
step train-step-inv 90 node dist/bench/train-step.js --batch-invariant --tokens 4096 --layers 2 --steps 2 --json "$OUT/train-step-inv.json"
step train-step-def 90 node dist/bench/train-step.js --tokens 4096 --layers 2 --steps 2 --json "$OUT/train-step-def.json"
# 1. Did session 23's three fused decode launches (317 -> 245 graph nodes) help on an H100? Stage 7af5708 (the
#    317-node tree) as ../.stage-317 (bash scripts/device-stage-rev.sh 7af5708 317) and compare in one call.
if [ -d ../.stage-317 ]; then
  (cd ../.stage-317 && step build-317 120 bash scripts/device-build.sh)
  for i in 1 2; do
    step "nodes245-gen-$i" 60 node dist/bench/generate.js --cuda-graphs --batches 1,2 --no-grpo --no-peer --no-static
    (cd ../.stage-317 && step "nodes317-gen-$i" 60 node dist/bench/generate.js --cuda-graphs --batches 1,2 --no-grpo --no-peer --no-static)
  done
fi
# 2. After the 32x128 tiles (docs/moe.md, "Small-batch tiles"): the size rules they may move. The grouped harness at
#    T 2-4 (against the decode harness's product rows at the same T: kDecodeMaxRows) and at T 384-768 (its "large"
#    row: kDecodeRowsPerExpert, now 32 rows per expert), and batches 64 / 256 / 512 end to end against the 16x64
#    build (stage its parent: bash scripts/device-stage-rev.sh e65b6c9~1 tiles16).
step tile-rules 120 bash -c "nvcc -arch=sm_90a -std=c++17 -O3 --expt-relaxed-constexpr -Inative -Inative/cuda bench/moe_grouped_harness/harness.cu -o /tmp/moeg && /tmp/moeg 2 3 4 384 512 768 && nvcc -arch=sm_90a -std=c++17 -O3 --expt-relaxed-constexpr -Inative -Inative/cuda bench/moe_decode_harness/harness.cu -o /tmp/moeh && /tmp/moeh 2 3 4"
if [ -d ../.stage-tiles16 ]; then
  (cd ../.stage-tiles16 && step build-tiles16 120 bash scripts/device-build.sh)
  step tiles32-gen 150 node dist/bench/generate.js --batches 64,256,512 --no-grpo --no-peer --no-static
  (cd ../.stage-tiles16 && step tiles16-gen 150 node dist/bench/generate.js --batches 64,256,512 --no-grpo --no-peer --no-static)
fi
# 3. The decode profile (eager, device marks) and the 4k training rows.
step decode-profile 90 node dist/bench/decode-profile.js --batches 1 --json "$OUT/decode-profile-b1.json"
step train-profile-4k 150 node dist/bench/train-step.js --profile --tokens 4096 --layers 2 --steps 1 --json "$OUT/train-profile-4k.json"
step train-step-4k-mb8 150 node dist/bench/train-step.js --tokens 4096 --layers 2 --steps 6 --micro-batches 8 --json "$OUT/train-step-4k-mb8.json"
