#!/usr/bin/env bash
# The multi-GPU runs of issues 25 (2-4 GPUs) and 26 (8 GPUs), as time-boxed steps in priority order, for one or two
# device calls on a machine with several GPUs (docs/training.md, "Multi-GPU runs (issues 25, 26)"):
#   cd .stage-main && source ../.device/prelude.sh && source scripts/device-steps.sh 560 && build \
#     && MGPU_GROUP=1 source scripts/multi-gpu-queue.sh
# MGPU_GROUP=1: GPU tests, bench:generate, bench:train-step, bench:nccl; 2: `train` colocated on 4 GPUs (issue
# 25: the 24-layer gpt-oss-20b shape, then a rank killed and Ctrl-C + resume); 3: the seed's run on 8 GPUs (issue
# 26). A step that needs more GPUs than the machine has (GPUS, default: nvidia-smi -L) is skipped with a log line;
# MGPU_SKIP="name ..." skips steps a previous call finished. Each step's output goes to $OUT/log.txt (`step`);
# results (JSON, metrics JSONL) go to $MGPU_RES (/tmp/mgpu-res), packed after every step into
# $OUT/mgpu-g<group>-<gpus>gpu.tgz (the device tool brings back 8 files at most); checkpoints go to $MGPU_WORK.
# MGPU_SMOKE=1: the same commands on CPU processes with tiny models (a rehearsal of every command line and check:
#   OUT=/tmp/o GPUS=2 MGPU_SMOKE=1 bash -c 'source scripts/device-steps.sh 3000 && MGPU_GROUP=2 source scripts/multi-gpu-queue.sh'
# from a checkout with dist/ built).
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
MGPU_GROUP=${MGPU_GROUP:-1}
MGPU_SMOKE=${MGPU_SMOKE:-0}
RES=${MGPU_RES:-/tmp/mgpu-res}
WORK=${MGPU_WORK:-/tmp/mgpu-work}
mkdir -p "$RES" "$WORK"
export GPTOSS_PROGRESS=off
T="node --test --test-reporter=tap --test-concurrency=1"
CHECKS="bash scripts/mgpu-checks.sh"
TRAIN="node dist/src/cli/train.js"

if [ "$MGPU_SMOKE" = 1 ]; then
  # CPU processes, tiny shapes: every command line and check of the queue, none of its measurements.
  LAUNCH="node dist/src/cli/launch.js --device cpu"
  DEV=cpu GPU_GB=80 OFFLOAD=false
  GEN_FIXED=(--batches 1,2 --new 4 --grpo-prompts 2 --grpo-samples 2 --gap-seqs 2)
  GEN_ONE=(--batches 2,4 --new 4 --grpo-prompts 4 --grpo-samples 2 --gap-seqs 2)
  # bench:generate's launcher mode (engines of tp 2 / 4): 8 query / 4 key-value heads so tp=4 divides them.
  GEN_TP=(--heads 8 --kv-heads 4 --batches 2,4 --new 4 --grpo-prompts 4 --grpo-samples 2)
  TS_SHAPE=(--preset gpt-oss-tiny-256 --tokens 32 --steps 1)
  TS_L2=2 TS_L4=2 TS_L8=2
  M20=gpt-oss-tiny:random M20L2=gpt-oss-tiny:random
  COLO_N=2 COLO_TP=2 GEN_LEN=8 SEED_GEN_LEN=8 SEED_N=2
  SEED_LAYOUT=(trainer.placement.policy_num_gpus_per_node=2 trainer.placement.ref_num_gpus_per_node=2 generator.inference_engine_tensor_parallel_size=1)
  # 4 prompts x 2 samples of 8 tokens a step (the seed's 16 x 4 are minutes a step for 2 shared cores).
  SMALL=(trainer.train_batch_size=4 trainer.policy_mini_batch_size=4 generator.n_samples_per_prompt=2)
else
  if [ "${NCCL_NVLS_ENABLE:-}" != 0 ]; then
    echo "== multi-gpu-queue: NCCL_NVLS_ENABLE is not 0 (source ../.device/prelude.sh first: NVLink multicast stays off)" >> "$DEVICE_LOG"
    return 1
  fi
  LAUNCH="node dist/src/cli/launch.js"
  DEV=cuda
  # H100 (80 GB): the 24-layer colocated run keeps the fp32 masters and moments in host memory; H200 (141 GB): on the GPU.
  # GPU_GB: one GPU's memory in GB (1e9 bytes, the planner's unit; nvidia-smi gives MiB).
  GPU_GB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | awk '{printf "%.1f", $1 * 1048576 / 1e9}')
  if awk "BEGIN { exit !($GPU_GB < 100) }"; then OFFLOAD=true; else OFFLOAD=false; fi
  # bench:generate, gpt-oss-20b shape, 24 layers, random weights. The pool of N engines: each engine gets 1/N of the
  # 1-GPU workload (fixed batches 16 / 64 / 128 x 4 = 64 / 256 / 512; 64 of the 256 GRPO prompts), each process the
  # same drawn workload; the 1-GPU baseline runs the whole one in the same call.
  GEN_FIXED=(--batches 16,64,128 --grpo-prompts 64 --gap-seqs 8)
  GEN_ONE=(--batches 64,256,512 --gap-seqs 8)
  # bench:generate's launcher mode: one pool of tensor-parallel engines (one tp=4, 2 x tp=2, 2 x tp=4) with the
  # 1-GPU baseline's whole workload split over its engines (fixed batches 64 / 256 / 512, 256 GRPO prompts x 8).
  GEN_TP=(--batches 64,256,512)
  # bench:train-step: fp32 masters, moments and gradients on the GPUs (about 14 GB per layer, 17 GB embedding + head,
  # sharded over N), about 3 layers' worth of state per GPU beside 16k-token activations.
  TS_SHAPE=(--tokens 4096,16384 --steps 2)
  TS_L2=${TS_L2:-4} TS_L4=${TS_L4:-10} TS_L8=${TS_L8:-24}  # (override from the environment)
  M20=gpt-oss-20b:random M20L2=gpt-oss-20b:random:layers=2
  COLO_N=4 COLO_TP=4 GEN_LEN=256 SEED_GEN_LEN=512 SEED_N=8
  SEED_LAYOUT=()
  SMALL=()
fi
echo "== multi-gpu-queue: group $MGPU_GROUP on $GPUS GPU(s) ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sort | uniq -c | xargs)); smoke=$MGPU_SMOKE; results in $RES" >> "$DEVICE_LOG"

mgpu_pack() { tar czf "$OUT/mgpu-g$MGPU_GROUP-${GPUS}gpu.tgz" -C "$RES" . 2>/dev/null; }

# gstep NAME MIN_GPUS CAP CMD...: `step` when the machine has MIN_GPUS and NAME is not in MGPU_SKIP, then pack.
gstep() {
  local name=$1 min=$2
  shift 2
  if [[ " ${MGPU_SKIP:-} " == *" $name "* ]]; then echo "== $name skipped (MGPU_SKIP)" >> "$DEVICE_LOG"; return 0; fi
  if [ "$GPUS" -lt "$min" ]; then echo "== $name skipped (needs $min GPUs, $GPUS present)" >> "$DEVICE_LOG"; return 0; fi
  step "$name" "$@"
  mgpu_pack
}

# The seed's config (configs/gsm8k-gptoss-20b.yaml) with a random-weight model, the run's own folders, no evaluation.
# tc NAME sets TC to those arguments (an array: the seed's chat-template add holds a space).
tc() {
  TC=(-c gsm8k-gptoss-20b "+generator.chat_template_kwargs={reasoning_effort: low}" trainer.device=$DEV trainer.logger=console
    trainer.eval_before_train=false trainer.eval_interval=0 "trainer.ckpt_path=$WORK/ck-$1" "trainer.metrics_path=$RES/train-$1.jsonl" "${SMALL[@]}")
}
# Colocated on COLO_N processes, one engine of tp COLO_TP (on 4 H100s: 10.5 GB bf16 shard + 12.2 GB engine slice).
COLO_LAYOUT=(trainer.placement.policy_num_gpus_per_node=$COLO_N trainer.placement.ref_num_gpus_per_node=$COLO_N
  generator.num_inference_engines=$(( COLO_N / COLO_TP )) generator.inference_engine_tensor_parallel_size=$COLO_TP
  trainer.policy.fsdp_config.cpu_offload=$OFFLOAD generator.sampling_params.max_generate_length=$GEN_LEN)

case $MGPU_GROUP in
  1)
    # NCCL collectives (2 GPUs and all of them, 4-GPU sub-groups, watchdog); the tp=2 model + engine on the
    # transformers fixture and an engine of tp=4 (a random model with 4 key/value heads) against one GPU.
    gstep t-nccl 2 150 $T dist/test/gpu/nccl.test.js
    gstep t-tp 2 120 $T dist/test/gpu/tensor-parallel.test.js
    # The sharded trainer at N = 2 and 4 over NCCL against one GPU (and its N = 1 checks).
    gstep t-sharded 2 150 $T dist/test/gpu/sharded-policy.test.js
    # Issue 26's sharded trainer at N=8 first on an 8-GPU machine, then issue 25's.
    gstep ts-n8 8 200 $LAUNCH --nproc-per-node 8 dist/bench/train-step.js "${TS_SHAPE[@]}" --layers $TS_L8 --json "$RES/train-step-n8.json"
    gstep gen-4xtp1 4 240 $CHECKS gen-pool 4 "$RES/gen-4xtp1" -- --no-peer --no-static "${GEN_FIXED[@]}"
    # Tensor-parallel engines under the launcher (bench:generate's launcher mode): issue 26's 2 x tp=4 on 8 GPUs,
    # then one tp=4 engine and 2 x tp=2 on 4; rank 0 writes the pool's JSON (layout, tokens/s, per-engine seconds).
    gstep gen-2xtp4 8 240 $LAUNCH --nproc-per-node 8 dist/bench/generate.js --tp 4 "${GEN_TP[@]}" --json "$RES/gen-2xtp4.json"
    gstep gen-tp4 4 240 $LAUNCH --nproc-per-node 4 dist/bench/generate.js --tp 4 "${GEN_TP[@]}" --json "$RES/gen-tp4.json"
    gstep gen-2xtp2 4 240 $LAUNCH --nproc-per-node 4 dist/bench/generate.js --tp 2 "${GEN_TP[@]}" --json "$RES/gen-2xtp2.json"
    gstep ts-n4 4 200 $LAUNCH --nproc-per-node 4 dist/bench/train-step.js "${TS_SHAPE[@]}" --layers $TS_L4 --json "$RES/train-step-n4.json"
    gstep ts-n2 2 200 $LAUNCH --nproc-per-node 2 dist/bench/train-step.js "${TS_SHAPE[@]}" --layers $TS_L2 --json "$RES/train-step-n2.json"
    if [ "$MGPU_SMOKE" = 1 ]; then
      echo "== nccl-bench skipped (smoke: NCCL only)" >> "$DEVICE_LOG"
    else
      gstep nccl-bench 2 240 node dist/bench/nccl.js --gpus "$( [ "$GPUS" -ge 4 ] && echo 2,4 || echo 2)$( [ "$GPUS" -ge 8 ] && echo ,8)" --json "$RES/nccl.json"
    fi
    # The 1-GPU baseline of the pool, same machine (bench/results/generate-h100-*.json hold earlier H100 figures).
    gstep gen-1xtp1 1 240 node dist/bench/generate.js --no-peer --no-static "${GEN_ONE[@]}" --json "$RES/gen-1xtp1.json"
    ;;
  2)
    # Issue 25: the full 24-layer shape colocated on COLO_N GPUs, a few of the seed's GRPO steps; the planner's
    # prediction beside it (peak memory per GPU).
    tc colo
    gstep plan-colo $COLO_N 30 $CHECKS plan "$RES/plan-colo.json" -- --model $M20 --gpus $COLO_N --gpu-memory-gb $GPU_GB "${TC[@]}" "${COLO_LAYOUT[@]}"
    gstep train-colo $COLO_N 330 $TRAIN --model $M20 "${TC[@]}" "${COLO_LAYOUT[@]}" trainer.resume_mode=none trainer.ckpt_interval=-1 trainer.max_steps=3
    # Faults on the same layout with 2 of the 24 layers (a checkpoint of the whole model would not fit the disk):
    # rank 1 SIGKILLed mid-step; Ctrl-C checkpoints and the same command resumes.
    tc kill
    gstep kill-rank $COLO_N 120 $CHECKS kill-rank 1 -- --model $M20L2 "${TC[@]}" "${COLO_LAYOUT[@]}" trainer.resume_mode=none trainer.ckpt_interval=-1 trainer.max_steps=4
    tc ctrlc
    gstep ctrl-c $COLO_N 240 $CHECKS ctrl-c -- --model $M20L2 "${TC[@]}" "${COLO_LAYOUT[@]}" trainer.resume_mode=latest trainer.ckpt_interval=100 trainer.max_steps=3
    ;;
  3)
    # Issue 26: the seed's command on SEED_N GPUs (2 engines of tp 4, offload_after_step) for 10 GRPO steps; the real
    # checkpoint when the HF cache has it. Generation capped at SEED_GEN_LEN tokens (random weights never stop).
    SEED_MODEL=$M20
    hf=${HF_HOME:-$HOME/.cache/huggingface}/hub/models--unsloth--gpt-oss-20b-BF16
    if [ "$MGPU_SMOKE" != 1 ] && ls "$hf"/snapshots/*/config.json > /dev/null 2>&1; then SEED_MODEL=unsloth/gpt-oss-20b-BF16; fi
    echo "== seed model: $SEED_MODEL" >> "$DEVICE_LOG"
    tc seed
    gstep plan-seed $SEED_N 30 $CHECKS plan "$RES/plan-seed.json" -- --model $SEED_MODEL --gpus $SEED_N --gpu-memory-gb $GPU_GB "${TC[@]}" "${SEED_LAYOUT[@]}" \
      generator.sampling_params.max_generate_length=$SEED_GEN_LEN
    gstep train-seed $SEED_N 480 $TRAIN --model $SEED_MODEL "${TC[@]}" "${SEED_LAYOUT[@]}" generator.sampling_params.max_generate_length=$SEED_GEN_LEN \
      trainer.resume_mode=none trainer.ckpt_interval=-1 trainer.max_steps=10
    # Checkpoint + resume on the seed's layout with 2 layers (the whole model's checkpoint, ~293 GB, exceeds the 235 GiB disk).
    tc ctrlc-seed
    gstep ctrl-c-seed $SEED_N 240 $CHECKS ctrl-c -- --model $M20L2 "${TC[@]}" "${SEED_LAYOUT[@]}" \
      generator.sampling_params.max_generate_length=$GEN_LEN trainer.resume_mode=latest trainer.ckpt_interval=100 trainer.max_steps=3
    ;;
  *) echo "== multi-gpu-queue: MGPU_GROUP must be 1, 2 or 3 (got '$MGPU_GROUP')" >> "$DEVICE_LOG" ;;
esac
mgpu_pack
