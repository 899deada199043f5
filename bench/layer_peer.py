"""Peer for bench/layer.ts: gpt-oss-20b decoder layers forward+backward in Hugging Face transformers.

GptOssModel with the 20b layer shapes (hidden 2880, 64/8 heads, 32 experts top-4), `grouped_mm` experts and eager
attention (the only attention transformers runs with sinks without compilation), bf16, random weights,
inputs_embeds [1, S, H]. Times N layers (sliding + full alternating) and reports ms per layer.
Usage: python3 bench/layer_peer.py --seqlens 4096,16384 --layers 2 --iters 5 --json out.json
"""
import argparse
import json
import sys

import torch


def build(layers: int):
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssModel

    cfg = GptOssConfig(
        num_hidden_layers=layers,
        num_local_experts=32,
        num_experts_per_tok=4,
        vocab_size=256,
        hidden_size=2880,
        intermediate_size=2880,
        head_dim=64,
        num_attention_heads=64,
        num_key_value_heads=8,
        sliding_window=128,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
    )
    cfg._attn_implementation = "eager"
    experts = "default"
    try:
        cfg._experts_implementation = "grouped_mm"
    except Exception:
        pass
    model = GptOssModel(cfg).to(device="cuda", dtype=torch.bfloat16)
    try:
        model.set_experts_implementation("grouped_mm")
        experts = "grouped_mm"
    except Exception as e:  # older transformers: whatever the default is
        experts = f"default ({type(e).__name__})"
    model.train()
    return model, experts


def time_one(model, S: int, iters: int, warmup: int, hidden: int, accumulate: bool) -> float:
    x = torch.randn(1, S, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(1, S, hidden, device="cuda", dtype=torch.bfloat16)

    def step() -> None:
        if not accumulate:  # a training step's first micro-batch: zero_grad(set_to_none=True), then backward
            model.zero_grad(set_to_none=True)
            x.grad = None
        model(inputs_embeds=x).last_hidden_state.backward(dy)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlens", default="4096,16384")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--accumulate", action="store_true", help="add into the previous step's .grad instead of set-to-none")
    a = ap.parse_args()
    model, experts = build(a.layers)
    import transformers

    out = {
        "peer": f"transformers {transformers.__version__} GptOssModel ({experts} experts, eager attention), torch {torch.__version__}",
        "device": torch.cuda.get_device_name(0),
        "layers": a.layers,
        "results": [],
    }
    for S in [int(s) for s in a.seqlens.split(",") if s]:
        try:
            ms = time_one(model, S, a.iters, a.warmup, 2880, a.accumulate)
            out["results"].append({"seqlen": S, "msPerLayer": ms / a.layers, "msTotal": ms})
        except torch.OutOfMemoryError:
            out["results"].append({"seqlen": S, "oom": True})
        torch.cuda.empty_cache()
    text = json.dumps(out, indent=2)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(text, file=sys.stderr)


if __name__ == "__main__":
    main()
