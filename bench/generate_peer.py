"""Peer for bench/generate.ts: transformers' `generate` on a random gpt-oss model of the same shape.

GptOssForCausalLM built from the preset's shape (gpt-oss-20b: hidden 2880, 64/8 heads of 64, 32 experts top-4,
intermediate 2880, vocabulary 201088, alternating sliding (128) / full layers), random bf16 weights on the GPU,
eager attention (the attention transformers runs with sinks without compilation), `grouped_mm` experts where the
installed transformers has them. For each batch: random prompts [B, --prompt], sampling at temperature 1 with
exactly --new new tokens (min_new_tokens = max_new_tokens; no stop). Reports output tokens/s, or oom.
Usage: python3 bench/generate_peer.py --preset gpt-oss-20b --layers 24 --batches 1,64,256,512 --prompt 128 --new 128 --json out.json
       --model DIR instead of --preset/--layers: a checkpoint directory (bench:generate --model passes the one it loads).
"""
import argparse
import json
import sys
import time

import torch

SHAPES = {
    "gpt-oss-20b": dict(hidden_size=2880, num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
                        num_experts_per_tok=4, intermediate_size=2880, vocab_size=201088, sliding_window=128),
    "gpt-oss-120b": dict(hidden_size=2880, num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=128,
                         num_experts_per_tok=4, intermediate_size=2880, vocab_size=201088, sliding_window=128),
    "gpt-oss-tiny-large": dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=64, num_local_experts=8,
                               num_experts_per_tok=4, intermediate_size=512, vocab_size=201088, sliding_window=128),
}


def prepare(model) -> str:
    """Eval mode and grouped_mm experts where the installed transformers has them; returns which experts run."""
    model.eval()
    try:
        model.set_experts_implementation("grouped_mm")
        return "grouped_mm"
    except Exception as e:  # older transformers: whatever the default is
        return f"default ({type(e).__name__})"


def build(preset: str, layers: int):
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssForCausalLM

    if preset not in SHAPES:
        raise SystemExit(f"generate_peer.py: no shape for preset '{preset}' ({', '.join(SHAPES)})")
    cfg = GptOssConfig(
        num_hidden_layers=layers,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        **SHAPES[preset],
    )
    cfg._attn_implementation = "eager"
    # Built directly on the GPU in bf16: a 20b model initialised in fp32 would not fit one 80 GB card.
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = GptOssForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    return model, prepare(model), cfg.vocab_size


def load(model_dir: str):
    """A checkpoint directory (config.json + safetensors) in bf16 on the GPU, eager attention, as build() sets up."""
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssForCausalLM

    model = GptOssForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16, device_map="cuda", attn_implementation="eager")
    return model, prepare(model), model.config.vocab_size


def tokens_per_second(model, vocab: int, batch: int, prompt: int, new: int) -> float:
    ids = torch.randint(0, vocab, (batch, prompt), device="cuda")
    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        model.generate(ids[:, :8], max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
        torch.cuda.synchronize()
    produced = (out.shape[1] - prompt) * batch
    return produced / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt-oss-20b")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--batches", default="1,64,256,512")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--json", default=None)
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    model, experts, vocab = load(a.model) if a.model else build(a.preset, a.layers)
    import transformers

    out = {
        "peer": f"transformers {transformers.__version__} GptOssForCausalLM.generate ({experts} experts, eager attention), torch {torch.__version__}",
        "device": torch.cuda.get_device_name(0),
        "results": [],
    }
    for b in [int(x) for x in a.batches.split(",") if x]:
        try:
            out["results"].append({"batch": b, "tokS": tokens_per_second(model, vocab, b, a.prompt, a.new)})
        except torch.OutOfMemoryError:
            out["results"].append({"batch": b, "oom": True})
        torch.cuda.empty_cache()
        print(f"peer batch {b}: {out['results'][-1]}", file=sys.stderr)
    text = json.dumps(out, indent=2)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(text, file=sys.stderr)


if __name__ == "__main__":
    main()
