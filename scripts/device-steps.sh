#!/usr/bin/env bash
# On the GPU machine, inside a staged checkout (scripts/device-prep.sh): a time-boxed list of steps that all log to
# one file, so one device call can run build + tests + benches and still return what finished when its limit comes
# (the device tool brings back at most 8 files from $OUT: keep to $OUT/log.txt plus a few JSON files).
#   source ../.device/prelude.sh && source scripts/device-steps.sh 540   # seconds this call may spend
#   build                                     # the CUDA addon (scripts/device-build.sh)
#   step graphs 90 node --test --test-reporter=tap dist/test/gpu/cuda-graphs.test.js
#   step gen 120 node dist/bench/generate.js --batches 1 --json "$OUT/gen.json"
# Each step runs under `timeout` (its cap, or what is left of the budget), appends its output to $OUT/log.txt and
# a line `== NAME rc=RC Ns`; a step with under 15 s left is skipped (said so in the log).
DEVICE_LOG=${OUT:?OUT is the device tool\'s output folder}/log.txt
DEVICE_END=$(( $(date +%s) + ${1:-540} ))
step() {
  local name=$1 cap=$2
  shift 2
  local left=$(( DEVICE_END - $(date +%s) ))
  if [ "$left" -lt 15 ]; then echo "== $name skipped (no time left)" >> "$DEVICE_LOG"; return 0; fi
  [ "$cap" -gt "$left" ] && cap=$left
  local s rc
  s=$(date +%s)
  timeout "$cap" "$@" >> "$DEVICE_LOG" 2>&1
  rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - s ))s" >> "$DEVICE_LOG"
}
build() { step build 300 bash scripts/device-build.sh; }
