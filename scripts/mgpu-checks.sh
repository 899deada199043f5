#!/usr/bin/env bash
# The multi-process checks of scripts/multi-gpu-queue.sh that are more than one command (each runs under the step
# helper's `timeout`, which signals this script's whole process group, the training processes included):
#
#   bash scripts/mgpu-checks.sh gen-pool N PREFIX -- BENCH_ARGS...
#       N bench:generate processes at once, process i on GPU i alone (CUDA_VISIBLE_DEVICES=i): N engines of tp 1,
#       each with the same workload (BENCH_ARGS), each writing PREFIX-e<i>.json; then PREFIX-pool.json: per fixed
#       batch the summed output tokens/s, for the GRPO-like part the summed tokens/s and the slowest engine's time.
#   bash scripts/mgpu-checks.sh kill-rank RANK -- TRAIN_ARGS...
#       `train` (dist/src/cli/train.js TRAIN_ARGS, which name trainer.metrics_path=...), SIGKILL to rank RANK's
#       process once the first GRPO step is logged (so mid-way through the second); PASS when the job ends non-zero
#       within MGPU_KILL_END_S (120) seconds with "error: the training job ended: rank RANK ...".
#   bash scripts/mgpu-checks.sh ctrl-c -- TRAIN_ARGS...
#       `train` with trainer.resume_mode=latest (TRAIN_ARGS name trainer.metrics_path and trainer.max_steps >= 2),
#       SIGINT once the first GRPO step is logged: PASS when it exits 130 with "interrupted; checkpoint"; then the
#       same command again: PASS when it says "GRPO: resumed from step S" and exits 0 with steps 1..max_steps logged.
#   bash scripts/mgpu-checks.sh plan OUT -- PLAN_ARGS...
#       the memory planner (dist/src/cli/plan.js PLAN_ARGS): its table to stdout, its --json form to OUT (exit 3,
#       "does not fit", is reported as a FAIL line).
# Output: the commands' own lines plus "PASS ..." / "FAIL ..." lines; exit status 0 only when every check passed.
set -uo pipefail
TRAIN=(node dist/src/cli/train.js)
WAIT_S=${MGPU_WAIT_S:-1800}
export GPTOSS_PROGRESS=off

die() { echo "FAIL $*"; exit 1; }

# The value of KEY=... among the train arguments.
argval() {
  local key=$1 a
  shift
  for a in "$@"; do [[ $a == "$key="* ]] && { echo "${a#*=}"; return 0; }; done
  return 1
}

# Train rows in a metrics JSONL file (0 when it does not exist yet).
train_rows() { [ -f "$1" ] && grep -c '"kind":"train"' "$1" || echo 0; }

# Waits until FILE holds N train rows while PID lives (1: PID ended first or WAIT_S passed).
wait_rows() {
  local file=$1 n=$2 pid=$3 end=$(( $(date +%s) + WAIT_S ))
  while [ "$(train_rows "$file")" -lt "$n" ]; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(date +%s)" -ge "$end" ] && return 1
    sleep 1
  done
}

cmd=${1:?usage: mgpu-checks.sh gen-pool|kill-rank|ctrl-c|plan ...}
shift
case $cmd in
  gen-pool)
    n=${1:?gen-pool N PREFIX -- ARGS}; prefix=${2:?gen-pool N PREFIX -- ARGS}
    shift 2; [ "${1:-}" = -- ] && shift
    rm -f "$prefix"-e*.json "$prefix-pool.json"
    pids=()
    for ((i = 0; i < n; i++)); do
      # A subshell per engine, so that `wait` gives bench:generate's status (pipefail), not sed's.
      (CUDA_VISIBLE_DEVICES=$i node dist/bench/generate.js "$@" --json "$prefix-e$i.json" 2>&1 | sed -u "s/^/[engine $i] /") &
      pids+=($!)
    done
    rc=0
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    [ $rc = 0 ] || die "gen-pool: an engine's bench:generate failed (its lines above)"
    node --input-type=module -e '
      import { readFileSync, writeFileSync } from "node:fs";
      const [prefix, n] = [process.argv[1], Number(process.argv[2])];
      const runs = Array.from({ length: n }, (_, i) => JSON.parse(readFileSync(`${prefix}-e${i}.json`, "utf8")));
      const fixed = (runs[0].fixed?.rows ?? []).map((r, k) => ({
        batchPerEngine: r.batch, batchTotal: r.batch * n,
        poolTokS: runs.reduce((a, x) => a + x.fixed.rows[k].engineTokS, 0),
        perEngineTokS: runs.map((x) => x.fixed.rows[k].engineTokS),
      }));
      const g = runs.every((x) => x.grpo) ? {
        sequences: runs.reduce((a, x) => a + x.grpo.sequences, 0),
        outputTokens: runs.reduce((a, x) => a + x.grpo.outputTokens, 0),
        slowestEngineSeconds: Math.max(...runs.map((x) => x.grpo.engine.seconds)),
        poolTokS: runs.reduce((a, x) => a + x.grpo.engine.tokS, 0),
        perEngineTokS: runs.map((x) => x.grpo.engine.tokS),
      } : null;
      const out = { layout: `${n} x tp=1 (one process per GPU)`, device: runs[0].device, preset: runs[0].preset, layers: runs[0].layers, fixed, grpo: g };
      writeFileSync(`${prefix}-pool.json`, JSON.stringify(out, null, 2));
      console.log(`PASS gen-pool ${n} x tp=1: ` + JSON.stringify({ fixed: fixed.map((r) => [r.batchTotal, Math.round(r.poolTokS)]), grpoTokS: g && Math.round(g.poolTokS) }));
    ' "$prefix" "$n" || die "gen-pool: could not summarise $prefix-e*.json"
    ;;

  kill-rank)
    rank=${1:?kill-rank RANK -- TRAIN_ARGS}
    shift; [ "${1:-}" = -- ] && shift
    metrics=$(argval trainer.metrics_path "$@") || die "kill-rank: the train arguments need trainer.metrics_path=..."
    rm -f "$metrics"
    log=$(mktemp)
    "${TRAIN[@]}" "$@" > >(tee "$log") 2>&1 &
    pid=$!
    wait_rows "$metrics" 1 "$pid" || { kill -TERM "$pid" 2>/dev/null; wait "$pid"; die "kill-rank: no GRPO step was logged before the job ended or ${WAIT_S} s passed"; }
    victim=
    for c in $(pgrep -P "$pid"); do
      tr '\0' '\n' < "/proc/$c/environ" 2>/dev/null | grep -qx "RANK=$rank" && victim=$c
    done
    [ -n "$victim" ] || { kill -TERM "$pid"; wait "$pid"; die "kill-rank: no worker process with RANK=$rank under train (pid $pid)"; }
    sleep 1
    t0=$(date +%s)
    echo "kill-rank: SIGKILL to rank $rank (pid $victim) after $(train_rows "$metrics") step(s)"
    kill -KILL "$victim"
    end=$(( t0 + ${MGPU_KILL_END_S:-120} ))
    while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid"; die "kill-rank: the job still ran ${MGPU_KILL_END_S:-120} s after rank $rank was killed"; fi
    wait "$pid"; rc=$?
    sleep 1 # the tee's last lines
    [ $rc != 0 ] || die "kill-rank: train exited 0 after rank $rank was killed"
    grep -q "error: the training job ended: rank $rank " "$log" || die "kill-rank: no 'error: the training job ended: rank $rank ...' line (exit $rc)"
    echo "PASS kill-rank: rank $rank SIGKILLed mid-step; the job ended in $(( $(date +%s) - t0 )) s with exit $rc: $(grep -m1 'error: the training job ended' "$log")"
    ;;

  ctrl-c)
    [ "${1:-}" = -- ] && shift
    metrics=$(argval trainer.metrics_path "$@") || die "ctrl-c: the train arguments need trainer.metrics_path=..."
    steps=$(argval trainer.max_steps "$@") || die "ctrl-c: the train arguments need trainer.max_steps=N (N >= 2)"
    [ "$(argval trainer.resume_mode "$@")" = latest ] || die "ctrl-c: the train arguments need trainer.resume_mode=latest"
    rm -f "$metrics"
    log=$(mktemp)
    "${TRAIN[@]}" "$@" > >(tee "$log") 2>&1 &
    pid=$!
    wait_rows "$metrics" 1 "$pid" || { kill -TERM "$pid" 2>/dev/null; wait "$pid"; die "ctrl-c: no GRPO step was logged before the job ended or ${WAIT_S} s passed"; }
    t0=$(date +%s)
    echo "ctrl-c: SIGINT to train (pid $pid) after $(train_rows "$metrics") step(s)"
    kill -INT "$pid"
    wait "$pid"; rc=$?
    sleep 1
    [ $rc = 130 ] || die "ctrl-c: train exited $rc after SIGINT (want 130)"
    grep -q 'interrupted; checkpoint' "$log" || die "ctrl-c: no 'interrupted; checkpoint ...' line"
    at=$(grep -o 'interrupted: saving a checkpoint at step [0-9]*' "$log" | grep -o '[0-9]*$' | head -1)
    echo "PASS ctrl-c: exit 130 in $(( $(date +%s) - t0 )) s with a checkpoint at step ${at:-?}"
    log2=$(mktemp)
    "${TRAIN[@]}" "$@" > >(tee "$log2") 2>&1
    rc=$?
    sleep 1
    [ $rc = 0 ] || die "ctrl-c: the resumed run exited $rc"
    grep -q "GRPO: resumed from step ${at:-[0-9]}" "$log2" || die "ctrl-c: the resumed run did not say 'GRPO: resumed from step ${at:-N}'"
    got=$(grep '"kind":"train"' "$metrics" | grep -o '"step":[0-9]*' | grep -o '[0-9]*' | tr '\n' ' ')
    want=$(seq -s ' ' 1 "$steps")
    [ "$got" = "$want " ] || die "ctrl-c: logged train steps '$got', want '$want'"
    echo "PASS ctrl-c resume: resumed from step ${at:-?}, steps $want logged"
    ;;

  plan)
    out=${1:?plan OUT -- PLAN_ARGS}
    shift; [ "${1:-}" = -- ] && shift
    node dist/src/cli/plan.js "$@"
    rc=$?
    node dist/src/cli/plan.js "$@" --json > "$out" 2>/dev/null
    [ $rc = 0 ] || die "plan: exit $rc (3: does not fit)"
    echo "PASS plan: fits; JSON in $out"
    ;;

  *) die "mgpu-checks.sh: unknown check '$cmd' (gen-pool, kill-rank, ctrl-c, plan)" ;;
esac
