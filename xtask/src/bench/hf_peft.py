"""The Hugging Face side of `cargo xtask bench --compare-hf`: transformers + PEFT training steps
on the same shapes, method, batch, sequence length and dtype as a burn-peft row, on the same
device. Prints one JSON object; exits 3 when torch, transformers or peft cannot be imported."""

import argparse
import json
import resource
import statistics
import sys
import time

try:
    import torch
    import transformers
    import peft
except ImportError as e:  # the caller reports this and leaves the HF columns empty
    print(json.dumps({"error": f"cannot import {e.name}: {e}"}))
    sys.exit(3)

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def build(config: dict, method: str, rank: int, targets, dtype):
    # The config class of the config's own `model_type` (llama, qwen2, gpt2, ...): a class chosen
    # by hand would build another architecture from the same keys (GPT2Config reads a qwen2
    # config's hidden_size and layers, and ignores its intermediate_size and GQA).
    settings = dict(config)
    cfg = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    if method == "full":
        return model
    if method in ("lora", "dora"):
        pc = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                             target_modules=targets, use_dora=method == "dora",
                             task_type="CAUSAL_LM")
    elif method == "prefix":
        pc = peft.PrefixTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM")
    elif method == "prompt":
        pc = peft.PromptTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM")
    elif method == "ia3":
        pc = peft.IA3Config(task_type="CAUSAL_LM")
    elif method == "vera":
        # PEFT's defaults (r 256, LoRA's targets), as `peft-cli bench --method vera` uses them.
        pc = peft.VeraConfig(task_type="CAUSAL_LM")
    else:
        return None  # bottleneck adapters: PEFT has none
    return peft.get_peft_model(model, pc)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True, help="config.json of the model shape")
    p.add_argument("--method", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--targets", default=None,
                   help="LoRA/DoRA target modules, comma-separated, or all-linear")
    p.add_argument("--dtype", default="f32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="transformers' per-layer activation checkpointing")
    a = p.parse_args()
    with open(a.config) as f:
        config = json.load(f)
    torch.manual_seed(0)
    device = torch.device(a.device)
    targets = None
    if a.targets == "all-linear":
        targets = "all-linear"
    elif a.targets:
        targets = a.targets.split(",")
    model = build(config, a.method, a.rank, targets, DTYPES[a.dtype])
    if model is None:
        print(json.dumps({"error": f"PEFT has no method {a.method}"}))
        return
    if a.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (frozen embeddings).
        # transformers 5 renamed it activation checkpointing; older releases have the old name.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, config["vocab_size"], (a.batch, a.seq), device=device)
    mask = torch.ones_like(ids)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for step in range(a.warmup + a.steps):
        start = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step >= a.warmup:
            times.append((time.perf_counter() - start) * 1e3)
    median = statistics.median(times)
    if device.type == "cuda":
        # Reserved, as burn-peft's rows report its device pool's reserved bytes.
        peak = torch.cuda.max_memory_reserved(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "hf_step_ms_median": median,
        "hf_tokens_per_s": a.batch * a.seq / (median / 1e3),
        "hf_peak_mem_bytes": peak,
        "hf_versions": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                       f"peft {peft.__version__}, {torch.get_num_threads()} threads",
    }))


if __name__ == "__main__":
    main()
