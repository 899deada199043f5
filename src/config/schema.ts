// schema.ts: the zod schemas of a training run's configuration.
//
// The key names follow the Python framework our users know (its `ppo_base_config.yaml` and the GPT-OSS GSM8K
// run script), so a command line written for it keeps working: `trainer.policy.model.path=...`,
// `trainer.algorithm.use_kl_loss=true`, `+generator.chat_template_kwargs={reasoning_effort: low}`.
// Every object is strict: an unknown key is an error that names its path. Defaults match design.md's GRPO
// defaults (which are the peer example's). Keys we accept only for compatibility say so in their description.
import { z } from 'zod';

const posInt = () => z.number().int().positive();
const nonNegInt = () => z.number().int().nonnegative();

/** A list of paths, or one path (the peer writes `data.train_data="['a.parquet']"`). */
const pathList = z.union([z.string(), z.array(z.string())]).transform((v) => (typeof v === 'string' ? [v] : v));

export const SamplingParamsSchema = z
  .strictObject({
    /** Most tokens generated per response (the peer's max_generate_length). */
    max_generate_length: posInt().default(1024),
    /** 0 means greedy. */
    temperature: z.number().nonnegative().default(1.0),
    top_p: z.number().gt(0).lte(1).default(1.0),
    /** -1 (or 0) means no top-k cut. */
    top_k: z.number().int().gte(-1).default(-1),
    /** Accepted for compatibility; must stay 0 (min-p sampling is not implemented). */
    min_p: z.literal(0).default(0),
    /** Extra stop token ids beyond the harmony stops (<|return|>, <|call|>). */
    stop_token_ids: z.array(nonNegInt()).default([]),
    /** Sampling seed; null derives it from trainer.seed and the step. */
    seed: z.number().int().nullable().default(null),
  })
  .prefault({});
export type SamplingParamsConfig = z.output<typeof SamplingParamsSchema>;

export const OptimizerSchema = z
  .strictObject({
    lr: z.number().positive().default(1e-6),
    adam_betas: z.tuple([z.number().gte(0).lt(1), z.number().gte(0).lt(1)]).default([0.9, 0.999]),
    weight_decay: z.number().nonnegative().default(0.01),
    eps: z.number().positive().default(1e-8),
    /** Global gradient-norm clip; a step whose norm is not finite is skipped. */
    max_grad_norm: z.number().positive().default(1.0),
    num_warmup_steps: nonNegInt().default(0),
    scheduler: z.enum(['constant', 'constant_with_warmup', 'cosine', 'linear']).default('constant_with_warmup'),
    /**
     * Colocated (placement.colocate_all): the fp32 masters and AdamW moments move to host memory while the engines
     * generate, as the peer does between steps. The memory planner (src/trainer/memory-plan.ts) plans generation
     * that way when true; the single-process trainer keeps them where they are, so a run refuses true until the
     * sharded trainer exists (unsupportedSettings). The seed's preset sets the peer's true for the planner.
     */
    offload_after_step: z.boolean().default(false),
  })
  .prefault({});

export const ModelRefSchema = z
  .strictObject({
    /**
     * A local directory (config.json + *.safetensors), a Hugging Face hub id (looked up in the HF cache), or
     * `tiny` / `tiny:<preset>` / `<preset>:random[:layers=N]` (e.g. `gpt-oss-20b:random`, the full-size shape) for a
     * random-initialised GPT-OSS-architecture model.
     */
    path: z.string().min(1).default('tiny'),
  })
  .prefault({});

/**
 * LoRA on the policy (src/model/lora.ts, src/trainer/lora-policy.ts): rank 0 = full fine-tuning; rank > 0 trains
 * low-rank adapters on a frozen bf16 base (scale alpha / rank). target_modules: PEFT's module names q_proj, k_proj,
 * v_proj, o_proj, and gate_up_proj / down_proj (the experts: PEFT's target_parameters mlp.experts.*) and router
 * (mlp.router.weight). dropout: PEFT's lora_dropout on the q/k/v/o adapters' inputs in training forwards; above 0
 * it is refused with the other targets (checkLoraSpec, src/model/lora.ts).
 */
export const LoraSchema = z
  .strictObject({
    rank: nonNegInt().default(0),
    alpha: z.number().positive().default(16),
    dropout: z.number().min(0).max(1).default(0),
    target_modules: z
      .array(z.enum(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_up_proj', 'down_proj', 'router', 'lm_head', 'embed_tokens']))
      .min(1)
      .default(['q_proj', 'k_proj', 'v_proj', 'o_proj']),
    /**
     * LoRA+ (PEFT's create_loraplus_optimizer): the B factors' learning rate is lr x this ratio, the A factors'
     * lr. 1 = plain LoRA. A and B at one lr let Adam scramble A (its gradient is tiny and noisy while B is small).
     */
    loraplus_lr_ratio: z.number().positive().default(1),
  })
  .prefault({});

/** trainer.policy.model: the model reference plus its LoRA settings. */
export const PolicyModelSchema = ModelRefSchema.unwrap().extend({ lora: LoraSchema }).prefault({});

export const AlgorithmSchema = z
  .strictObject({
    /** grpo: (r - mean)/(std + 1e-6) within each prompt's group; dr_grpo: r - mean (no std, Dr. GRPO). */
    advantage_estimator: z.enum(['grpo', 'dr_grpo']).default('grpo'),
    /** With grpo: divide by the group's std (false gives Dr. GRPO's advantages). */
    grpo_norm_by_std: z.boolean().default(true),
    use_kl_loss: z.boolean().default(true),
    kl_loss_coef: z.number().nonnegative().default(0.001),
    /** k3 is the only KL estimator for the loss (as the peer uses); kept as a key for compatibility. */
    kl_estimator: z.enum(['k3']).default('k3'),
    /** KL in the reward is not supported (the peer's default is off too). */
    use_kl_in_reward: z.literal(false).default(false),
    /** An entropy bonus in the loss is not supported yet (entropy is always logged as a metric). */
    use_entropy_loss: z.literal(false).default(false),
    entropy_loss_coef: z.number().default(0),
    eps_clip_low: z.number().nonnegative().default(0.2),
    eps_clip_high: z.number().nonnegative().default(0.2),
    /** regular: PPO clip; dual_clip: also bound the loss of negative-advantage tokens by clip_ratio_c·|A|. */
    policy_loss_type: z.enum(['regular', 'dual_clip']).default('regular'),
    clip_ratio_c: z.number().gt(1).default(3.0),
    loss_reduction: z.enum(['token_mean', 'sequence_mean', 'seq_mean_token_sum_norm']).default('token_mean'),
    /** Drop groups whose rewards are all equal (they carry no GRPO signal) from the update. */
    zero_variance_filter: z.boolean().default(false),
  })
  .prefault({});

/**
 * Where the policy, the reference and the engines run. This version trains in one process on one device, so only
 * the single-process values are accepted (1 node, 1 GPU, colocated); others are refused by
 * unsupportedSettings() (src/config/load.ts) until the sharded trainer and the engine pool exist.
 */
export const PlacementSchema = z
  .strictObject({
    colocate_all: z.boolean().default(true),
    colocate_policy_ref: z.boolean().default(true),
    policy_num_nodes: posInt().default(1),
    policy_num_gpus_per_node: posInt().default(1),
    ref_num_nodes: posInt().default(1),
    ref_num_gpus_per_node: posInt().default(1),
  })
  .prefault({});

export const SftSchema = z
  .strictObject({
    /** Optimizer steps of supervised fine-tuning (cross-entropy on reference solutions). */
    steps: nonNegInt().default(200),
    batch_size: posInt().default(16),
    lr: z.number().positive().default(1e-3),
    weight_decay: z.number().nonnegative().default(0.0),
    max_grad_norm: z.number().positive().default(1.0),
    /** Where `npm run sft` writes the fine-tuned model (the GRPO run can start from it). */
    output_dir: z.string().nullable().default(null),
    log_interval: posInt().default(10),
    /** `npm run train` runs this SFT phase first (a warm start: checkpointed and resumed like GRPO), then GRPO. */
    warm_start: z.boolean().default(false),
    /** Evaluate on the validation split every N SFT steps (0: at the end only). */
    eval_interval: nonNegInt().default(0),
    /** Stop SFT at the first evaluation whose reward reaches this (null: run every step); leaves GRPO headroom. */
    stop_at_reward: z.number().nullable().default(null),
  })
  .prefault({});

export const TrainerSchema = z
  .strictObject({
    policy: z
      .strictObject({
        model: PolicyModelSchema,
        optimizer_config: OptimizerSchema,
        /** The seed's FSDP options (trainer.policy.fsdp_config). */
        fsdp_config: z
          .strictObject({
            /**
             * Keep the fp32 master weights and AdamW moments of each rank's shard in pinned host memory (12 of
             * the 18 bytes per parameter a rank owns); AdamW runs on the host or streams through the GPU. Lets the
             * trainer share GPUs with the engines on fewer GPUs (see `npx gptoss plan`). The memory planner reads
             * it; a run refuses true until the sharded trainer exists (unsupportedSettings).
             */
            cpu_offload: z.boolean().default(false),
          })
          .prefault({}),
        /** Sequence parallelism: not supported yet (only 1). */
        sequence_parallel_size: posInt().default(1),
      })
      .prefault({}),
    ref: z
      .strictObject({
        /** null: the initial policy weights (what the peer does by default). */
        model: z.strictObject({ path: z.string().nullable().default(null) }).prefault({}),
      })
      .prefault({}),
    placement: PlacementSchema,
    /**
     * single: one process (CPU or one GPU). fsdp2/fsdp: the sharded trainer; over one process (the only placement
     * accepted yet) there is nothing to shard, so they run the single-process trainer (a note says so).
     */
    strategy: z.enum(['single', 'fsdp2', 'fsdp']).default('single'),
    algorithm: AlgorithmSchema,
    /** cpu, cuda, cuda:N, or auto (cuda:0 when the addon has CUDA and a GPU is visible). */
    device: z.string().regex(/^(auto|cpu|cuda(:\d+)?)$/, 'expected auto, cpu, cuda or cuda:N').default('auto'),
    seed: z.number().int().default(42),
    epochs: posInt().default(1),
    /** Stop after this many optimizer steps (null: run every epoch). */
    max_steps: posInt().nullable().default(null),
    update_epochs_per_batch: posInt().default(1),
    /** Prompts per training step (each gets generator.n_samples_per_prompt responses). */
    train_batch_size: posInt().default(16),
    /** Prompts per optimizer step; train_batch_size must be a multiple. */
    policy_mini_batch_size: posInt().default(16),
    /** Sequences per forward/backward (gradients are accumulated over the mini-batch). */
    micro_train_batch_size_per_gpu: posInt().default(2),
    /** Sequences per no-grad forward (old and reference log-probs). */
    micro_forward_batch_size_per_gpu: posInt().default(2),
    /**
     * Pack the sequences of a micro-batch back to back (varlen attention: no padding, no cross-sequence
     * attention). The peer must turn this off for GPT-OSS; our attention kernel supports packing with sinks.
     */
    use_sample_packing: z.boolean().default(true),
    /**
     * The peer must set this false for GPT-OSS (FlashAttention has no attention sinks). Ours is a fused,
     * FlashAttention-style kernel with sinks, so true is accepted and means that kernel; false is accepted
     * too and selects the same kernel (there is no slower eager path to fall back to).
     */
    flash_attn: z.boolean().default(true),
    /** BF16 activations and weights with fp32 master weights; the only precision offered. */
    bf16: z.literal(true).default(true),
    gradient_checkpointing: z.boolean().default(true),
    /**
     * Ours: with gradient_checkpointing, keep each layer's attention output and LSE from the forward (bf16
     * [T, Hq·D] + f32 [Hq, T] per layer, until that layer's backward) so the recompute skips the attention forward.
     * Bitwise the same gradients; the memory planner counts the kept tensors. Nothing to do without
     * gradient_checkpointing (every activation is kept then).
     */
    gradient_checkpointing_keep_attention: z.boolean().default(true),
    /**
     * Bitwise-reproducible gradients: the attention backward without atomics (slower). Default false: dq is
     * accumulated with fp32 atomics, as FlashAttention does (dq's last bits vary between runs).
     */
    deterministic: z.boolean().default(false),
    /**
     * Ours: batch-invariant kernels (setBatchInvariant, docs/inference.md "Batch-invariant mode"). A token's forward
     * through the layers has the same bits in an engine's decode step (any batch), its prefill chunk and the
     * trainer's packed micro-batch, so the engines' log-probs equal the trainer's up to the fp32 log-softmax sum
     * (logprob_gap/abs_mean near 0: true on-policy rollouts), and the old log-probs (packed by
     * micro_forward_batch_size_per_gpu) are bitwise the loss forward's (packed by micro_train_batch_size_per_gpu), so
     * the first importance ratio of a step is exactly 1. Costs
     * speed on CUDA (cuBLAS, the small-batch GEMV and MoE kernels and split-KV attention give way to fixed-order
     * kernels). Needs engines of tensor-parallel size 1 (a sharded o_proj / MoE sums in another order) and no LoRA
     * adapters on CUDA. Every process of a run (trainer ranks, engine ranks) sets it.
     */
    batch_invariant: z.boolean().default(false),
    /**
     * Ours: the fused LM-head backward: the GRPO loss gradient is formed during the training forward, one chunk of
     * tokens at a time, and the LM head's backward runs from that chunk's logits while they are in memory (3 LM-head
     * GEMMs per micro-batch instead of 4: no logits recompute). Same gradients (CPU: bitwise up to the LM head
     * gradient's sum over token chunks). Every policy of the library has it: single-process (full weights and LoRA),
     * ShardedPolicy and the distributed run's DriverPolicy. 'auto' (default): on wherever the policy has it; true:
     * on, and a policy without it is refused; false: the recomputing LM-head backward. On an H100 it made the
     * 2-layer 16k-token training step 0.90x the time (bench/results/train-step-h100-fused.json).
     */
    fused_lm_head_backward: z.union([z.boolean(), z.literal('auto')]).default('auto'),
    /**
     * Runs over several processes: seconds a collective may wait for a rank that does not reach it (stuck in a phase,
     * or gone without closing its connection) before the whole job ends with a message naming that rank and its
     * phase. The launcher's hub times the host-side collectives and commands; on GPUs each NCCL communicator's native
     * watchdog times its collectives (and ends its process). It also bounds rank 0's own work between two commands
     * (rewards, logging), so leave room for the slowest phase.
     */
    nccl_timeout_s: z.number().positive().default(1800),
    /** PyTorch's reentrant checkpointing has no counterpart here (only false). */
    gradient_checkpointing_use_reentrant: z.boolean().default(false),
    eval_batch_size: posInt().default(32),
    eval_before_train: z.boolean().default(true),
    /** Evaluate on the validation split every N steps (0 or -1: never, except eval_before_train). */
    eval_interval: z.number().int().gte(-1).default(5),
    /** null: evaluate the whole validation split. */
    eval_max_samples: posInt().nullable().default(null),
    max_prompt_length: posInt().default(512),
    /** latest: continue from the newest complete checkpoint under ckpt_path; none: start fresh; path: resume_path. */
    resume_mode: z
      .union([z.enum(['latest', 'none', 'path', 'from_path']), z.null()])
      .transform((v) => (v === null ? 'none' : v === 'from_path' ? 'path' : v))
      .default('latest'),
    resume_path: z.string().nullable().default(null),
    ckpt_path: z.string().default('runs/ckpts'),
    /** Save a checkpoint every N steps and at the end (0: only at the end; -1: never, except on SIGINT). */
    ckpt_interval: z.number().int().gte(-1).default(10),
    /** -1 keeps all. */
    max_ckpts_to_keep: z.number().int().gte(-1).default(2),
    /**
     * HF-format exports every N steps: not supported yet as a separate save (only -1 or 0); every checkpoint
     * (<ckpt_path>/global_step_N) already holds the model in the HF layout, loadable with --model.
     */
    hf_save_interval: z.number().int().default(-1),
    /** Where dumps go (dump_eval_results); null: runs/exports/<run_name>. */
    export_path: z.string().nullable().default(null),
    project_name: z.string().default('gptoss'),
    run_name: z.string().default('run'),
    /** Metrics always go to a JSONL file; wandb also sends them to W&B when WANDB_API_KEY is set. */
    logger: z.union([z.enum(['wandb', 'console', 'jsonl']), z.array(z.enum(['wandb', 'console', 'jsonl']))]).default('console'),
    /** The metrics JSONL file (null: <ckpt_path>/../metrics/<run_name>.jsonl, i.e. runs/metrics/<run>.jsonl). */
    metrics_path: z.string().nullable().default(null),
    /** Write every evaluation's completions to <export_path>/dumped_evals/global_step_N_evals.jsonl. */
    dump_eval_results: z.boolean().default(false),
    sft: SftSchema,
  })
  .prefault({});

export const GeneratorSchema = z
  .strictObject({
    // The engine keys below describe the peer's engine pool. One in-process engine (the only kind yet) shares the
    // trainer's weights, batches every request and has no CUDA graphs, prefix cache, chunked prefill or memory
    // budget: the values that say so are accepted, the others are refused by unsupportedSettings().
    /** Our own engine runs the generation; vllm/sglang are accepted names for it (no Python involved). */
    backend: z.enum(['native', 'vllm', 'sglang']).default('native'),
    model_dtype: z.enum(['bfloat16', 'bf16']).default('bfloat16'),
    run_engines_locally: z.boolean().default(true),
    num_inference_engines: posInt().default(1),
    inference_engine_tensor_parallel_size: posInt().default(1),
    /** How weights reach separate engines; the in-process engine uses the trainer's weights, so any value works. */
    weight_sync_backend: z.enum(['nccl', 'ipc', 'local']).default('nccl'),
    async_engine: z.boolean().default(true),
    batched: z.boolean().default(true),
    n_samples_per_prompt: posInt().default(4),
    /** No CUDA graphs (eager kernels); the only mode our engines have, so true is the default. */
    enforce_eager: z.boolean().default(true),
    /** Fraction of the GPU's memory the process may fill, weights included: the engine's KV pool takes what is left. */
    gpu_memory_utilization: z.number().gt(0).lte(1).default(0.8),
    /** Running sequences of an engine at most (its batch). */
    max_num_seqs: posInt().default(1024),
    /** Query rows per engine step: decodes first, then prefill chunks fill what is left. */
    max_num_batched_tokens: posInt().default(8192),
    /** Freed full prompt blocks stay cached for later requests with the same prefix (a group's samples always share). */
    enable_prefix_caching: z.boolean().default(true),
    /** Prompts are prefilled in chunks within max_num_batched_tokens (the engine always chunks; true only). */
    enable_chunked_prefill: z.boolean().default(true),
    /**
     * Multi-turn environments: tokens of a whole conversation (prompt, model turns, tool results) at most; an
     * episode that reaches it ends (null: no bound beyond max_turns x max_generate_length). One-turn tasks: unused
     * (trainer.max_prompt_length bounds their prompts).
     */
    max_input_length: posInt().nullable().default(null),
    /**
     * Model turns per episode at most (multi-turn environments: environment.env_class gsm8k_tools, synthetic_tools);
     * an episode that reaches it ends without an answer. One-turn environments need 1.
     */
    max_turns: posInt().default(1),
    sampling_params: SamplingParamsSchema,
    eval_sampling_params: z
      .strictObject({
        max_generate_length: posInt().nullable().default(null),
        temperature: z.number().nonnegative().default(0),
        top_p: z.number().gt(0).lte(1).default(1.0),
        top_k: z.number().int().gte(-1).default(-1),
      })
      .prefault({}),
    eval_n_samples_per_prompt: posInt().default(1),
    /** Harmony chat-template options, e.g. {reasoning_effort: low}; the seed adds it with `+`. */
    chat_template_kwargs: z
      .strictObject({
        reasoning_effort: z.enum(['low', 'medium', 'high']).optional(),
        /** YYYY-MM-DD for the system message (reproducible prompts). */
        current_date: z.string().regex(/^\d{4}-\d{2}-\d{2}$/, 'expected YYYY-MM-DD').optional(),
        model_identity: z.string().optional(),
      })
      .optional(),
    zero_reward_on_non_stop: z.boolean().default(false),
    apply_overlong_filtering: z.boolean().default(false),
  })
  .prefault({});

export const EnvironmentSchema = z
  .strictObject({
    /**
     * gsm8k: GSM8K word problems; synthetic: the seeded arithmetic task (fast, for tests and the CPU demo);
     * gsm8k_tools: GSM8K with a calculator function tool; synthetic_tools: a seeded task solvable only through a
     * lookup tool (the tool environments are multi-turn: set generator.max_turns > 1).
     */
    env_class: z.enum(['gsm8k', 'synthetic', 'gsm8k_tools', 'synthetic_tools']).default('gsm8k'),
    /** Seconds a tool call may run; a call past it returns an error message to the model. */
    tool_timeout_s: z.number().positive().default(10),
    /** strict: first `#### N`; flexible: last number; harmony: look in the final channel. */
    reward_rule: z.enum(['strict', 'flexible', 'harmony']).default('strict'),
    /** The peer's per-environment options: no counterpart here (refused when set). */
    skyrl_gym: z.record(z.string(), z.unknown()).optional(),
  })
  .prefault({});

export const DataSchema = z
  .strictObject({
    /** Files (jsonl or parquet) or `bundled` (../shared/data/gsm8k or the package's copy). */
    train_data: pathList.default(['bundled']),
    val_data: pathList.default(['bundled']),
    /** Use only the first N training prompts (null: all). */
    max_train_samples: posInt().nullable().default(null),
    max_val_samples: posInt().nullable().default(null),
    /** Shuffle the training prompts each epoch (seeded by trainer.seed); false: file order. */
    shuffle: z.boolean().default(true),
    /**
     * Map the task's tokens onto a compact vocabulary (only the ids its prompts, references and stop tokens use)
     * so a tiny random-init model has a small embedding/LM head; see src/trainer/vocab.ts. CPU tests and demos.
     */
    compact_vocab: z.boolean().default(false),
    /** Text whose tokens join the compact vocabulary (e.g. digits the answers may need). */
    compact_vocab_extra: z.array(z.number().int().nonnegative()).default([]),
    synthetic: z
      .strictObject({
        seed: z.number().int().default(1234),
        num_train: posInt().default(2000),
        num_val: posInt().default(200),
        /** tiny: single-digit additions (learnable by a tiny model on a CPU); easy/medium/hard: word problems. */
        difficulty: z.enum(['tiny', 'easy', 'medium', 'hard']).default('tiny'),
        /** Reference solutions with the analysis-channel reasoning (false: only the final `#### N`). */
        reasoning: z.boolean().default(true),
      })
      .prefault({}),
  })
  .prefault({});

export const ConfigSchema = z
  .strictObject({
    data: DataSchema,
    trainer: TrainerSchema,
    generator: GeneratorSchema,
    environment: EnvironmentSchema,
  })
  .superRefine((c, ctx) => {
    const t = c.trainer;
    if (t.train_batch_size % t.policy_mini_batch_size !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['trainer', 'policy_mini_batch_size'],
        message: `trainer.train_batch_size (${t.train_batch_size}) must be a multiple of trainer.policy_mini_batch_size (${t.policy_mini_batch_size})`,
      });
    }
    if (t.algorithm.eps_clip_low >= 1) {
      ctx.addIssue({ code: 'custom', path: ['trainer', 'algorithm', 'eps_clip_low'], message: 'must be < 1 (the ratio is clipped to [1 - eps_clip_low, 1 + eps_clip_high])' });
    }
    if (t.resume_mode === 'path' && !t.resume_path) {
      ctx.addIssue({ code: 'custom', path: ['trainer', 'resume_path'], message: 'trainer.resume_mode=path needs trainer.resume_path' });
    }
    const multiTurn = c.environment.env_class === 'gsm8k_tools' || c.environment.env_class === 'synthetic_tools';
    if (c.generator.max_turns > 1 && !multiTurn) {
      ctx.addIssue({
        code: 'custom',
        path: ['generator', 'max_turns'],
        message: `generator.max_turns=${c.generator.max_turns} needs a multi-turn environment (environment.env_class gsm8k_tools or synthetic_tools); ${c.environment.env_class} is one-turn`,
      });
    }
    if (multiTurn && c.generator.max_turns < 2) {
      ctx.addIssue({
        code: 'custom',
        path: ['generator', 'max_turns'],
        message: `environment.env_class=${c.environment.env_class} uses tools: set generator.max_turns >= 2 (a tool result needs a turn to read it)`,
      });
    }
    if (t.algorithm.advantage_estimator === 'dr_grpo' && t.algorithm.grpo_norm_by_std) {
      // Not an error: dr_grpo simply means no std normalisation; the flag is ignored.
    }
  });

/** A fully defaulted, validated configuration. */
export type Config = z.output<typeof ConfigSchema>;
/** What a YAML file or a library caller may pass (every key optional). */
export type ConfigInput = z.input<typeof ConfigSchema>;
export type TrainerConfig = Config['trainer'];
export type GeneratorConfig = Config['generator'];
export type AlgorithmConfig = Config['trainer']['algorithm'];
export type DataConfig = Config['data'];
export type EnvironmentConfig = Config['environment'];
