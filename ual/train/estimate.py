"""Back-of-envelope GPU memory and time per stage, printed before a run starts (``--dry-run``).

:func:`estimate_training` covers the training stage; :func:`estimate_stages` covers every stage of a profile on one
80 GB GPU (A100 80GB and H100 80GB), including the data stage's Deita selection, from the data plan
(:func:`ual.data.plan`). Training numbers are upper bounds, not promises: every sample is assumed to fill
``max_length``. Architecture numbers come from the model folder's config.json when it is local, else from a small
table of the paper's models (offline machines cannot read a hub config). Every assumption is named below and
returned with the numbers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

# name -> (parameters, hidden size, layers, vocabulary, attention heads); from the models' published configs.
KNOWN = {
    "meta-llama/Llama-2-7b-hf": (6.74e9, 4096, 32, 32000, 32),
    "meta-llama/Llama-2-13b-hf": (13.0e9, 5120, 40, 32000, 40),
    # The Deita scorers are fine-tuned Llama-1-13B (their model cards), with one added <pad> token.
    "hkust-nlp/deita-complexity-scorer": (13.0e9, 5120, 40, 32001, 40),
    "hkust-nlp/deita-quality-scorer": (13.0e9, 5120, 40, 32001, 40),
    "mistralai/Mistral-7B-v0.1": (7.24e9, 4096, 32, 32000, 32),
    "smollm2-135m": (134.5e6, 576, 30, 49152, 9),
    "tiny-random": (0.09e6, 64, 2, 259, 4),
}
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GPU_PEAK_FLOPS = {"A100 bf16": 312e12, "H100 bf16": 989e12}
# Dense fp32 peaks without TF32 (NVIDIA datasheets, A100 80GB SXM and H100 SXM): what float32 weights get.
GPU_PEAK_FLOPS_FP32 = {"A100 bf16": 19.5e12, "H100 bf16": 67e12}
GPU_MEMORY_BANDWIDTH = {"A100 bf16": 2.04e12, "H100 bf16": 3.35e12}  # bytes/s, datasheets (80GB SXM parts)
GPU_MEMORY_GIB = 80
ASSUMED_MFU = 0.35  # a typical share of peak for LoRA fine-tuning of 7B models with HF Trainer (our assumption)
# Our assumptions for the other stages, returned with the estimates:
ASSUMED_INFERENCE_MFU = 0.35  # batched scoring / embedding forward passes (no backward), share of peak
ASSUMED_DECODE_BANDWIDTH_SHARE = 0.3  # HF generate reaches about this share of HBM bandwidth per decoding step
ASSUMED_API_SECONDS = 3.0  # one GPT-4-class request (rating or AlpacaEval judgement), wall-clock seconds
# MetaMathQA's mean query and response lengths in tokens, taken from GSM8K train (62 % of MetaMathQA is rewritten
# GSM8K) measured with SmolLM2's tokenizer, which splits digits as Llama's does: 60.3 and 124.6 tokens. MATH-derived
# rows are longer, so the selection time is a lower estimate. Deita's templates add 29 (complexity) and 36
# (quality) tokens (same tokenizer).
ASSUMED_QUERY_TOKENS, ASSUMED_RESPONSE_TOKENS = 60, 125
TEMPLATE_TOKENS = {"complexity": 29, "quality": 36}
MATH_FORMATS = ("gsm8k", "metamath")  # eval sets scored by answer protocols; the others are chat sets


def _arch(model: str):
    p = Path(model) / "config.json"
    if p.exists():
        c = json.loads(p.read_text())
        h, L, V = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        inter = c.get("intermediate_size", 4 * h)
        params = V * h * (1 if c.get("tie_word_embeddings") else 2) + L * (4 * h * h + 3 * h * inter)
        return params, h, L, V, c.get("num_attention_heads", 1)
    return KNOWN.get(model)


def estimate_training(profile, n_samples: int | None = None) -> dict:
    """Memory (GiB) and time (hours) per variant and for the whole grid of a resolved profile's train stage.

    ``n_samples``: training-set size (default: from the data plan, :func:`ual.data.plan`, which knows the selection
    target and the hub sources' sizes)."""
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
    if n_samples is None:
        from ual.data.stage import plan

        n_samples = plan(profile.stages["data"]).get("train")
    if steps is None and n_samples:
        steps = math.ceil(n_samples * stage.epochs / (b * stage.grad_accum))
    tokens_per_step = b * stage.grad_accum * s
    flops_per_token = 4 * params  # forward 2N + backward through activations 2N (frozen weights need no grads)
    out = {"model": stage.model, "parameters": params, "lora_parameters": lora_params, "train_samples": n_samples,
           "optimizer_steps_per_variant": steps, "samples_per_step": b * stage.grad_accum,
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


# --------------------------------------------------------------------------------------------- every stage

def _gib(x: float) -> float:
    return round(x / 2**30, 2)


def _hours(flops: float, dtype: str) -> dict:
    """Hours for ``flops`` of forward passes on each GPU at :data:`ASSUMED_INFERENCE_MFU`."""
    peaks = GPU_PEAK_FLOPS_FP32 if dtype == "float32" else GPU_PEAK_FLOPS
    return {f"hours_{g.split()[0]}": round(flops / (peak * ASSUMED_INFERENCE_MFU) / 3600, 2)
            for g, peak in peaks.items()}


def _forward_memory(arch, dtype: str, batch: int, length: int) -> tuple[float, float]:
    """(weights, transient activations) in bytes for inference on ``batch`` x ``length`` tokens: one layer's
    attention projections and MLP at a time (no KV cache kept, no logits beyond the last position)."""
    params, h, _layers, _vocab, _heads = arch
    wbytes = BYTES[dtype]
    inter = 2.7 * h  # Llama's MLP width is about 2.7 x hidden
    return params * wbytes, batch * length * (6 * h + 3 * inter) * wbytes


def estimate_selection(cfg, pool: int | None) -> dict:
    """Time and memory of the data stage's Deita selection (``cfg``: DataConfig; ``pool``: samples scored).

    Scoring: two 13B forward passes per pool sample (complexity on the query, quality on query + response).
    Walk: one embedding pass per visited candidate; at least ``select_target`` are visited, at most the pool."""
    if pool is None:
        return {"note": "pool size unknown offline; give the source an n or rows to get an estimate"}
    models = {"complexity": cfg.select_complexity_model, "quality": cfg.select_quality_model,
              "embedding": cfg.select_embedding_model}
    archs = {k: _arch(m) for k, m in models.items()}
    missing = [m for k, m in models.items() if archs[k] is None]
    if missing:
        return {"note": f"no architecture known for {missing[0]!r}; add it to ual.train.estimate.KNOWN"}
    q, r = ASSUMED_QUERY_TOKENS, ASSUMED_RESPONSE_TOKENS
    tokens = {"complexity": pool * (TEMPLATE_TOKENS["complexity"] + q),
              "quality": pool * (TEMPLATE_TOKENS["quality"] + q + r)}
    out: dict = {"pool": pool, "target": cfg.select_target, "dtype": cfg.select_dtype, "steps": {}}
    peak = 0.0
    for kind in ("complexity", "quality"):
        w, a = _forward_memory(archs[kind], cfg.select_dtype, cfg.select_batch_size, cfg.select_max_length)
        peak = max(peak, w + a)
        out["steps"][f"{kind} scores"] = {"model": models[kind], "tokens": tokens[kind],
                                          **_hours(2 * archs[kind][0] * tokens[kind], cfg.select_dtype)}
    visited_lo, visited_hi = min(cfg.select_target, pool), pool
    emb = archs["embedding"]
    w, a = _forward_memory(emb, cfg.select_dtype, 2 * cfg.select_batch_size, cfg.select_max_length)
    kept = cfg.select_target * emb[1] * 4
    peak = max(peak, w + a + kept)
    lo, hi = (_hours(2 * emb[0] * v * (q + r), cfg.select_dtype) for v in (visited_lo, visited_hi))
    out["steps"]["similarity walk"] = {
        "model": models["embedding"], "visited_at_least": visited_lo, "visited_at_most": visited_hi,
        **{f"{k}_at_least": v for k, v in lo.items()}, **{f"{k}_at_most": v for k, v in hi.items()},
        "note": "how far down the ranking the walk goes depends on how many near-duplicates it meets"}
    out["peak_memory_gib_upper_bound"] = _gib(peak)
    for g in lo:
        out[f"{g}_total_at_least"] = round(sum(s[g] for k, s in out["steps"].items() if k != "similarity walk")
                                           + lo[g], 2)
    return out


def _kv_heads(model: str, heads: int) -> int:
    p = Path(model) / "config.json"
    if p.exists():
        return json.loads(p.read_text()).get("num_key_value_heads", heads)
    return 8 if "Mistral" in model else heads  # Mistral-7B has 8 KV heads (grouped-query attention)


def estimate_evaluation(profile, data_plan: dict) -> dict:
    """Generation time and memory of the evaluate stage: every model (base + variants) decodes every math and chat
    set; decoding is bound by reading the weights once per step (:data:`ASSUMED_DECODE_BANDWIDTH_SHARE`)."""
    from ual.train.stage import variants

    ev, tr = profile.stages["evaluate"], profile.stages["train"]
    model = tr.model if ev.model == "auto" else ev.model
    arch = _arch(model)
    if arch is None:
        return {"note": f"no architecture known for {model!r}; add it to ual.train.estimate.KNOWN"}
    params, h, layers, _vocab, heads = arch
    n_models = len(variants(tr)) + (1 if ev.include_base else 0)
    wbytes = BYTES[ev.dtype]
    fmt = {e.get("name"): e.get("format", "auto") for e in profile.stages["data"].eval_sets}
    sets, steps, api_calls, longest = {}, 0, 0, 0
    for e in data_plan.get("eval_sets", []):
        n = e["samples"]
        if n is None:
            return {"note": f"eval set {e['name']!r}: size unknown offline"}
        math_set = fmt.get(e["name"]) in MATH_FORMATS
        new = ev.math_max_new_tokens if math_set else ev.chat_max_new_tokens
        per = n * (ev.math_n if math_set else 1)
        set_steps = math.ceil(per / ev.batch_size) * new
        sets[e["name"]] = {"kind": "math" if math_set else "chat", "sequences": per, "max_new_tokens": new,
                           "decode_steps_per_model": set_steps}
        steps += set_steps
        longest = max(longest, new)
        if not math_set and ev.judge == "openai":
            api_calls += n * n_models
    kv_per_token = 2 * layers * _kv_heads(model, heads) * (h // heads) * wbytes
    kv = ev.batch_size * (tr.max_length + longest) * kv_per_token  # prompt bounded by the training max_length
    out = {"models": n_models, "sets": sets, "dtype": ev.dtype, "batch_size": ev.batch_size,
           "peak_memory_gib_upper_bound": _gib(params * wbytes + kv),
           "memory_parts_gib": {"weights": _gib(params * wbytes), "kv_cache": _gib(kv)}}
    for g, bw in GPU_MEMORY_BANDWIDTH.items():
        sec = params * wbytes / (bw * ASSUMED_DECODE_BANDWIDTH_SHARE)
        out[f"hours_generation_{g.split()[0]}"] = round(sec * steps * n_models / 3600, 2)
    if api_calls:
        out["judge_api_calls"] = api_calls
        out["hours_judge_api"] = round(api_calls * ASSUMED_API_SECONDS / ev.judge_concurrency / 3600, 2)
    if ev.clustering:
        out["clustering"] = f"one forward pass over {ev.clustering_n} '{ev.clustering_set}' texts per model (minutes)"
    return out


def estimate_elicitation(profile, n_train: int | None) -> dict:
    """Scoring the training set: API requests (openai), or forward passes of a local model."""
    el = profile.stages["elicit"]
    if n_train is None:
        return {"note": "training-set size unknown offline"}
    if el.backend == "openai":
        return {"backend": "openai", "gpu": False, "requests": n_train, "concurrency": el.concurrency,
                "hours_api": round(n_train * ASSUMED_API_SECONDS / el.concurrency / 3600, 2)}
    if el.backend == "source":
        return {"backend": "source", "gpu": False, "note": "fixed scores per source; seconds"}
    arch = _arch(el.model or "")
    if arch is None:
        return {"backend": el.backend, "note": f"no architecture known for {el.model!r}"}
    w, a = _forward_memory(arch, el.dtype, el.batch_size, el.max_length)
    out = {"backend": el.backend, "model": el.model, "peak_memory_gib_upper_bound": _gib(w + a),
           **_hours(2 * arch[0] * n_train * el.max_length, el.dtype)}
    if el.backend in ("sampling", "sar") or el.greedy:
        out["note"] = "forward passes only; generated samples add decoding time"
    return out


def estimate_stages(profile) -> dict:
    """Every stage of a resolved profile on one 80 GB GPU: hours on an A100 80GB and an H100 80GB and peak GPU
    memory (GiB) per stage, with the assumptions used; the data stage's entry is its Deita selection, if any
    (what the stage builds is :func:`ual.data.plan`). Loads nothing."""
    from ual.data.stage import plan

    data = plan(profile.stages["data"])
    n_train = data.get("train")
    selection = next((estimate_selection(profile.stages["data"], s["pool"]) for s in data.get("train_sources", [])
                      if "selection" in s), None)
    stages = {"data": {"train_samples": n_train, "selection": selection} if selection else
              {"train_samples": n_train, "gpu": False, "note": "loads and writes files; minutes"},
              "elicit": estimate_elicitation(profile, n_train),
              "train": estimate_training(profile, n_train),
              "evaluate": estimate_evaluation(profile, data) if data.get("kind") == "mix" else
              {"note": "controlled benchmark: minutes"},
              "figures": {"gpu": False, "note": "reads result files; seconds"}}
    peaks = {k: v.get("peak_memory_gib_upper_bound") for k, v in
             (("data", selection or {}), ("elicit", stages["elicit"]), ("train", stages["train"]),
              ("evaluate", stages["evaluate"]))}
    over = [k for k, v in peaks.items() if v is not None and v > GPU_MEMORY_GIB]
    return {"gpu": f"one {GPU_MEMORY_GIB} GB GPU (A100 80GB or H100 80GB)", "stages": stages,
            "peak_memory_gib": peaks,
            "fits": not over, **({"over_memory": over} if over else {}),
            "assumptions": {"training_mfu": ASSUMED_MFU, "inference_mfu": ASSUMED_INFERENCE_MFU,
                            "decode_bandwidth_share": ASSUMED_DECODE_BANDWIDTH_SHARE,
                            "api_seconds_per_request": ASSUMED_API_SECONDS,
                            "metamath_tokens_query_response": [ASSUMED_QUERY_TOKENS, ASSUMED_RESPONSE_TOKENS],
                            "training": "every sample fills max_length (upper bound)"}}
