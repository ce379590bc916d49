"""A whole LoRA training run: ``ual.train.fit`` against transformers' Trainer with label smoothing and TRL's
SFTTrainer, same model, data, LoRA, batch, sequence length and step count (issue 7 item 2); also the achieved FLOP/s
of ual's run as a share of this CPU's measured fp32 matmul peak (issue 7 item 5).

Each method runs in a fresh subprocess (``python -m benchmarks.bench_train SPEC``) with ``OMP_NUM_THREADS=1``:
the machine has 2 cores shared with other jobs, and torch with 2 threads is several times slower than with 1 when
the cores are oversubscribed. Every example is exactly ``T`` tokens (GSM8K train records at least ``T`` tokens long
under the chat template, cut to ``T``; every token a target, as the authors trained), so every method sees the same
``B * T`` tokens per step and no padding. Step 1 is a warm-up; the timed window is the end of step 1 to the end of
step ``1 + steps`` (a callback on ``on_step_end``), so model loading, data preparation and the final adapter save
are outside it. Peak memory: at the end of step 1 the kernel's peak-RSS counter is reset (``clear_refs``), and the
peak over the timed steps is read from ``VmHWM`` (absolute, model and optimizer included) and also given as the
extra over the RSS at the reset.

Goal: ual at least as fast as both baselines, with no more peak memory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import GiB, REPO, _status

METHODS = ("ual_fused", "ual_unfused", "hf_trainer_ls", "trl_sft")
FULL = {"model": "smollm2-135m", "B": 4, "T": 128, "steps": 8, "n": 64}
QUICK = {"model": "tiny-random", "B": 4, "T": 32, "steps": 2, "n": 16}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
LR = 3e-4
GSM8K = Path("/work/shared/data/gsm8k/train.jsonl")


# ------------------------------------------------------------------------------------------------- child side

class _Window:
    """Trainer callback: wall time at the end of every step; resets the peak-RSS counter after the warm-up step."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                outer.ends[state.global_step] = time.perf_counter()
                if state.global_step == 1:
                    Path("/proc/self/clear_refs").write_text("5")
                    outer.base_rss = _status("VmRSS")

        self.ends: dict[int, float] = {}
        self.base_rss = 0
        self.callback = CB()

    def result(self, steps: int, tokens_per_step: int) -> dict:
        seconds = self.ends[1 + steps] - self.ends[1]
        peak = _status("VmHWM")
        return {"seconds": seconds, "tokens": steps * tokens_per_step, "tokens_per_s": steps * tokens_per_step / seconds,
                "peak_rss_bytes": peak, "extra_bytes": peak - self.base_rss, "base_rss_bytes": self.base_rss}


def _records(tokenizer, n: int, T: int, model: str):
    """``n`` records whose chat-template encoding has at least ``T`` tokens (GSM8K train; controlled data for the
    tiny model when GSM8K is absent)."""
    from ual.common.formatting import build_example

    if GSM8K.exists():
        from ual.data.records import load_file

        pool = load_file(GSM8K)
    else:
        from ual.data.controlled import make_dataset

        pool = make_dataset(4 * n, 4 * n, 1, 1)[0]
    out = [r for r in pool if len(build_example(r.messages, tokenizer, template="chat")["input_ids"]) >= T][:n]
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} records of >= {T} tokens for {model}")
    return out


def _examples(records, tokenizer, T: int) -> list[dict]:
    from ual.common.formatting import build_example

    exs = [build_example(r.messages, tokenizer, template="chat", max_length=T) for r in records]
    assert all(len(e["input_ids"]) == T for e in exs)
    return [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in exs]


def _stack(examples: list[dict]) -> dict:
    import torch

    ids = torch.tensor([e["input_ids"] for e in examples])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([e["labels"] for e in examples])}


def _common_args(out: str, c: dict) -> dict:
    return dict(output_dir=out, per_device_train_batch_size=c["B"], gradient_accumulation_steps=1, learning_rate=LR,
                max_steps=1 + c["steps"], logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                dataloader_num_workers=0, disable_tqdm=True, seed=1337, remove_unused_columns=False)


def _load_lora_model(model: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ual.common.models import resolve

    base = AutoModelForCausalLM.from_pretrained(resolve(model), dtype=torch.float32, trust_remote_code=False)
    return get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA))


def _run_ual(c: dict, tmp: Path, window: _Window, fused: bool) -> dict:
    import numpy as np

    import ual.train as T
    from ual.data.records import save_records
    from ual.common.io import write_jsonl
    from ual.common.models import load_tokenizer

    tok = load_tokenizer(c["model"], padding_side="right")
    records = _records(tok, c["n"], c["T"], c["model"])
    save_records(tmp / "train.jsonl", records)
    rng = np.random.default_rng(0)
    write_jsonl(tmp / "scores.jsonl", ({"id": r.id, "score": float(s)} for r, s in
                                       zip(records, rng.uniform(0, 99, len(records)))))
    cfg = T.TrainConfig(model=c["model"], data=str(tmp / "train.jsonl"), scores=str(tmp / "scores.jsonl"),
                        output_dir=str(tmp / "out"), method="ual", mean_eps=0.1, template="chat", max_length=c["T"],
                        batch_size=c["B"], grad_accum=1, max_steps=1 + c["steps"], save_steps=10 ** 6,
                        logging_steps=1, learning_rate=LR, fused_loss=fused, **{"lora_r": LORA["r"],
                        "lora_alpha": LORA["lora_alpha"], "lora_dropout": LORA["lora_dropout"],
                        "lora_targets": LORA["target_modules"]})
    res = T.fit(cfg, resume=False, progress=False, callbacks=[window.callback])
    manifest = json.loads(res.manifest_path.read_text())
    return {"loss_path": manifest.get("loss_path")}


def _run_hf(c: dict, tmp: Path, window: _Window) -> dict:
    from transformers import Trainer, TrainingArguments

    from ual.common.models import load_tokenizer

    tok = load_tokenizer(c["model"], padding_side="right")
    data = _examples(_records(tok, c["n"], c["T"], c["model"]), tok, c["T"])
    args = TrainingArguments(label_smoothing_factor=0.1, **_common_args(str(tmp / "out"), c))
    Trainer(model=_load_lora_model(c["model"]), args=args, train_dataset=data, data_collator=_stack,
            callbacks=[window.callback]).train()
    return {"loss_path": "logits + LabelSmoother(0.1)"}


def _run_trl(c: dict, tmp: Path, window: _Window) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    import torch
    from ual.common.models import load_tokenizer, resolve

    tok = load_tokenizer(c["model"], padding_side="right")
    data = Dataset.from_list(_examples(_records(tok, c["n"], c["T"], c["model"]), tok, c["T"]))
    # SFTConfig turns gradient checkpointing and bf16 on by default; off here so that it trains like the others.
    args = SFTConfig(max_length=c["T"], packing=False, gradient_checkpointing=False, bf16=False,
                     **_common_args(str(tmp / "out"), c))
    base = AutoModelForCausalLM.from_pretrained(resolve(c["model"]), dtype=torch.float32, trust_remote_code=False)
    SFTTrainer(model=base, args=args, train_dataset=data, processing_class=tok,
               peft_config=LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA), callbacks=[window.callback]).train()
    return {"loss_path": "TRL chunked LM head, plain NLL"}


def _child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    c, method = spec["case"], spec["method"]
    window = _Window()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as d:
        tmp = Path(d)
        if method in ("ual_fused", "ual_unfused"):
            info = _run_ual(c, tmp, window, fused=method == "ual_fused")
        elif method == "hf_trainer_ls":
            info = _run_hf(c, tmp, window)
        elif method == "trl_sft":
            info = _run_trl(c, tmp, window)
        else:
            raise ValueError(method)
        out = window.result(c["steps"], c["B"] * c["T"])
    return {**out, **info, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------- parent side

def child_env() -> dict:
    """Environment of every measured subprocess: one OpenMP thread, the converted-model cache, the repo on the path."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                UAL_CACHE=os.environ.get("UAL_CACHE", "/tmp/ualcache"),
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_child(module: str, spec: dict, timeout: float = 900) -> dict:
    """Run ``python -m module SPEC`` in a fresh process; its last stdout line is the JSON result."""
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(spec)], capture_output=True, text=True,
                          env=child_env(), cwd=REPO, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def lora_flops_per_token(model: str, T: int) -> dict:
    """FLOPs per trained token of a LoRA step (forward + backward), counted from the model's shapes.

    Forward: 2 FLOP per weight of every linear layer (the tied LM head included; the input embedding is a lookup
    and is not counted), plus attention: scores Q K^T and the weighted sum A V, 2 * T * d_model FLOP each per layer
    per token (SDPA on CPU computes the whole T x T square; the causal half is not subtracted), plus 2 FLOP per
    LoRA parameter. Backward: base weights are frozen, so only activation gradients: 2 FLOP per weight again;
    attention needs gradients for both operands of each product, twice its forward; the LoRA weights need both
    activation and weight gradients, 4 FLOP per LoRA parameter. Left out: norms, activations, softmaxes, the loss's
    elementwise work, the optimizer step (all elementwise, well under 1% of the matmul FLOPs here).
    """
    from transformers import AutoConfig

    from ual.common.models import resolve

    cfg = AutoConfig.from_pretrained(resolve(model))
    d, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * cfg.intermediate_size  # q, o; k, v; gate, up, down
    linear = L * per_layer + V * d  # + LM head
    attn = L * 2 * 2 * T * d
    lora = L * LORA["r"] * ((d + d) + (d + kv))  # A [r, in] and B [out, r] of q_proj (d->d) and v_proj (d->kv)
    fwd = 2 * linear + attn + 2 * lora
    bwd = 2 * linear + 2 * attn + 4 * lora
    return {"linear_params": linear, "lora_params": lora, "forward": fwd, "backward": bwd, "total": fwd + bwd}


def _matmul_peak_1thread(quick: bool) -> float:
    return run_child("benchmarks.bench_train", {"matmul_peak": True, "quick": quick}, timeout=300)["flops"]


def run(quick: bool) -> dict:
    c = QUICK if quick else FULL
    rows, raw = [], {}
    for m in METHODS:
        t0 = time.perf_counter()
        r = run_child("benchmarks.bench_train", {"method": m, "case": c})
        raw[m] = r
        rows.append({"method": m, "model": c["model"], "B": c["B"], "T": c["T"], "steps": c["steps"],
                     "seconds": round(r["seconds"], 2), "tokens_per_s": round(r["tokens_per_s"], 1),
                     "peak_rss_gib": round(r["peak_rss_bytes"] / GiB, 3), "extra_gib": round(r["extra_bytes"] / GiB, 3),
                     "loss_path": r["loss_path"], "process_s": round(time.perf_counter() - t0, 1)})
    for row in rows:
        for base in ("hf_trainer_ls", "trl_sft"):
            row[f"speed_vs_{base}"] = round(raw[row["method"]]["tokens_per_s"] / raw[base]["tokens_per_s"], 3)
            row[f"mem_vs_{base}"] = round(raw[row["method"]]["peak_rss_bytes"] / raw[base]["peak_rss_bytes"], 3)
    peak = _matmul_peak_1thread(quick)
    flops = lora_flops_per_token(c["model"], c["T"])
    util = {}
    for m in ("ual_fused", "ual_unfused"):
        achieved = flops["total"] * raw[m]["tokens_per_s"]
        util[m] = {"achieved_gflops": round(achieved / 1e9, 2), "peak_gflops_1thread": round(peak / 1e9, 1),
                   "utilisation_pct": round(100 * achieved / peak, 1)}
    ual = raw["ual_fused"]
    goals = {
        "ual (fused, default) tokens/s >= Trainer+label smoothing and >= TRL SFTTrainer":
            ual["tokens_per_s"] >= max(raw["hf_trainer_ls"]["tokens_per_s"], raw["trl_sft"]["tokens_per_s"]),
        "ual (fused, default) peak RSS <= both baselines":
            ual["peak_rss_bytes"] <= min(raw["hf_trainer_ls"]["peak_rss_bytes"], raw["trl_sft"]["peak_rss_bytes"]),
    }
    return {"rows": rows, "goals": goals, "case": c, "flops_per_token": flops, "utilisation": util,
            "threads": "OMP_NUM_THREADS=1 in every measured subprocess",
            "columns": ["method", "model", "B", "T", "steps", "seconds", "tokens_per_s", "speed_vs_hf_trainer_ls",
                        "speed_vs_trl_sft", "peak_rss_gib", "extra_gib", "mem_vs_hf_trainer_ls", "mem_vs_trl_sft",
                        "loss_path"]}


def plot(result: dict, out: str) -> None:
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].bar(names, [r["tokens_per_s"] for r in rows], color="tab:blue")
    axes[0].set_title("training throughput, tokens/s (1 thread)")
    axes[1].bar(names, [r["peak_rss_gib"] for r in rows], color="tab:orange")
    axes[1].set_title("peak RSS during timed steps, GiB")
    for ax in axes:
        ax.tick_params(axis="x", rotation=20)
    c = result["case"]
    fig.suptitle(f"LoRA training, {c['model']}, B={c['B']}, T={c['T']}, {c['steps']} timed steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    if spec.get("matmul_peak"):
        import torch

        from benchmarks.bench_matmul_peak import measure

        torch.set_num_threads(1)
        sizes = (1024, 2048) if spec["quick"] else (1024, 2048, 4096)
        print(json.dumps({"flops": max(measure(n, 5 if spec["quick"] else 10) for n in sizes)}))
    else:
        print(json.dumps(_child(spec)))
