"""Back-of-envelope GPU memory and time for a training stage, printed before a run starts (``--dry-run``).

Upper bounds, not promises: every sample is assumed to fill ``max_length``. Architecture numbers come from the
model folder's config.json when it is local, else from a small table of the paper's models (offline machines
cannot read a hub config).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

# name -> (parameters, hidden size, layers, vocabulary, attention heads); from the models' published configs.
KNOWN = {
    "meta-llama/Llama-2-7b-hf": (6.74e9, 4096, 32, 32000, 32),
    "meta-llama/Llama-2-13b-hf": (13.0e9, 5120, 40, 32000, 40),
    "mistralai/Mistral-7B-v0.1": (7.24e9, 4096, 32, 32000, 32),
    "smollm2-135m": (134.5e6, 576, 30, 49152, 9),
    "tiny-random": (0.09e6, 64, 2, 259, 4),
}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GPU_PEAK_FLOPS = {"A100 bf16": 312e12, "H100 bf16": 989e12}
ASSUMED_MFU = 0.35  # a typical share of peak for LoRA fine-tuning of 7B models with HF Trainer (our assumption)


def _arch(model: str):
    p = Path(model) / "config.json"
    if p.exists():
        c = json.loads(p.read_text())
        h, L, V = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        inter = c.get("intermediate_size", 4 * h)
        params = V * h * (1 if c.get("tie_word_embeddings") else 2) + L * (4 * h * h + 3 * h * inter)
        return params, h, L, V, c.get("num_attention_heads", 1)
    return KNOWN.get(model)


def estimate_training(profile) -> dict:
    """Memory (GiB) and time (hours) per variant and for the whole grid of a resolved profile's train stage."""
    from ual.train.stage import variants

    stage = profile.stages["train"]
    arch = _arch(stage.model)
    if arch is None:
        return {"note": f"no architecture known for {stage.model!r}; add it to ual.estimate.KNOWN to get estimates"}
    params, h, L, V, heads = arch
    wbytes = BYTES[stage.dtype]
    act_bytes = 2 if (stage.bf16 or stage.dtype != "float32") else 4
    b, s = stage.batch_size, stage.max_length
    lora_params = L * len(stage.lora_targets) * 2 * h * stage.lora_r
    weights = params * wbytes
    optimizer = lora_params * 4 * 4  # fp32 weights, grads and two Adam moments of the LoRA parameters
    # Activations per layer ~ s*b*h*(34 + 5*heads*s/h) bytes in 16-bit without recomputation (Korthikanti et al.
    # 2022); scaled for 32-bit. Gradient checkpointing keeps one layer's worth plus the layer inputs.
    per_layer = s * b * h * (34 + 5 * heads * s / h) * act_bytes / 2
    acts = per_layer * (1 if stage.gradient_checkpointing else L) + (s * b * h * act_bytes * L
                                                                      if stage.gradient_checkpointing else 0)
    logits = 0 if stage.fused_loss else b * s * V * 4 * 2  # fp32 logits and their gradient
    total = weights + optimizer + acts + logits
    n_var = len(variants(stage))
    steps = stage.max_steps if stage.max_steps > 0 else None
    sources = profile.stages["data"].train_sources
    if steps is None and sources and all(s.get("n") for s in sources):
        n_samples = sum(s["n"] for s in sources)
        steps = math.ceil(n_samples * stage.epochs / (b * stage.grad_accum))
    tokens_per_step = b * stage.grad_accum * s
    flops_per_token = 4 * params  # forward 2N + backward through activations 2N (frozen weights need no grads)
    out = {"model": stage.model, "parameters": params, "lora_parameters": lora_params,
           "peak_memory_gib_upper_bound": round(total / 2**30, 2),
           "memory_parts_gib": {"weights": round(weights / 2**30, 2), "lora_optimizer": round(optimizer / 2**30, 3),
                                "activations": round(acts / 2**30, 2), "logits": round(logits / 2**30, 2)},
           "variants": n_var, "assumed_mfu": ASSUMED_MFU}
    if steps is None:
        out["note"] = "steps depend on the data size (epochs x samples / (batch x accumulation)); time per step given"
    for gpu, peak in GPU_PEAK_FLOPS.items():
        sec = tokens_per_step * flops_per_token / (peak * ASSUMED_MFU)
        out[f"seconds_per_step_{gpu.replace(' ', '_')}"] = round(sec, 2)
        if steps is not None:
            out[f"hours_all_variants_{gpu.replace(' ', '_')}"] = round(sec * steps * n_var / 3600, 2)
    return out
