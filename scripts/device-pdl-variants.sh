#!/usr/bin/env bash
# Which part of the PDL candidate (5e47e99) costs time at batch 1 (session 27: it ran 3.59 ms a replayed step
# against the base's 3.45 on an H100). Source from .stage-main (the candidate tree, staged by
# device-stage-candidates.sh) after device-steps.sh and `build`; each variant edits the device's copy of
# native/cuda/common.cuh, rebuilds, and runs batch-1 decode with CUDA graphs, interleaved with the base:
#   v2      the candidate as committed
#   noL2    without the generic linear's L2 prefetch of its W rows before the wait
#   noTrig  without the explicit launch_dependents (a dependent grid then launches as the previous one's blocks exit)
#   off     launch_pdl without the programmatic-serialisation attribute (the candidate's code, plain launches)
G="node dist/bench/generate.js --cuda-graphs --batches 1 --no-grpo --no-peer --no-static"
(cd ../.stage-base && step build-base 300 bash scripts/device-build.sh)
cp native/cuda/common.cuh /tmp/common.cuh.v2
variant() {
  local name=$1 expr=$2
  cp /tmp/common.cuh.v2 native/cuda/common.cuh
  if [ -n "$expr" ]; then sed -i "$expr" native/cuda/common.cuh; fi
  echo "variant $name: $(diff /tmp/common.cuh.v2 native/cuda/common.cuh | grep '^>' | xargs)" >> "$DEVICE_LOG"
  step "build-$name" 120 bash scripts/device-build.sh
  step "gen-$name" 60 $G
}
(cd ../.stage-base && step gen-base-1 60 $G)
step gen-v2-1 60 $G
variant noL2 's|asm volatile("prefetch.global.L2 \[%0\];" ::"l"(p));|(void)p;|'
variant noTrig 's|asm volatile("griddepcontrol.launch_dependents;" ::: "memory");||'
variant off 's|programmaticStreamSerializationAllowed = 1|programmaticStreamSerializationAllowed = 0|'
(cd ../.stage-base && step gen-base-2 60 $G)
variant v2-2 ''
