"""GPU check (issue 21): ual's pieces on one GPU, measured in one short run that a cut-off still leaves useful.

``python -m benchmarks.gpu_check [--smoke] [--out PATH] [--budget-s S] [--only SECTION ...]``

Sections, in this order, each under a time cap that the script enforces (SIGALRM; repetition loops also stop
early, at 75% of the cap, so a slow machine still records what it measured):

- ``env``: versions (torch, transformers, peft, accelerate, trl, liger-kernel, triton), the device.
- ``matmul_peak``: bf16 matmul FLOP/s (best of 10 at each size) and a device-to-device copy's bandwidth: the
  denominators of every utilisation figure below, measured in the same run.
- ``correctness``: ``smoothed_cross_entropy`` and ``fused_smoothed_cross_entropy`` against
  ``dense_smoothed_cross_entropy`` in fp64 (loss and gradients, fp32 and bf16 inputs, both smoothing conventions,
  per-sample and per-token eps), and ``fused_loss_supported`` / ``final_hidden_states`` / ``lm_head_weight`` on a
  Llama: ``lm_head(final_hidden_states)`` must equal the model's logits.
- ``loss``: the loss alone on given logits (methods of ``benchmarks.bench_loss``).
- ``fused``: output layer + loss (methods of ``benchmarks.bench_fused``) and Liger-Kernel's fused linear
  cross-entropy with ``label_smoothing`` (one eps, PyTorch's "uniform" convention; Liger has no per-sample eps), and
  the agreement of Liger's loss and gradients with ual's at the same eps and convention.
- ``model_step``: one LoRA training step (forward, loss, backward, AdamW) of a Llama-2-7B-shaped model built in code
  with random bf16 weights: HF's loss, HF's ``LabelSmoother``, ual on logits, ual fused, Liger fused. Tokens/s, peak
  memory, MFU against the bf16 peak; the same model run with 2 layers gives the per-layer time and the fixed part.
- ``trainer``: short fits through ``ual.train.UALTrainer`` (fused and on logits), ``UALLossMixin`` on TRL's
  ``SFTTrainer`` (README, "UAL in your own training script"), transformers' ``Trainer`` with label smoothing and a
  plain ``SFTTrainer``.
- ``accelerate``: ``accelerate launch`` (one process; ``accelerate/one_gpu.yaml`` on a GPU, ``--cpu`` otherwise)
  of ``python -m ual train`` on the tiny model: the user's multi-GPU path, with one process.
- ``generate``: ``ual.evaluate.generate.generate`` on the 7B-shaped model, greedy, new tokens per second.

Timing: methods of one case interleaved, order rotating, ratio to the baseline per repetition
(``benchmarks.common.time_side_by_side`` with a CUDA synchronise after each step). Peak memory:
``torch.cuda.max_memory_allocated`` during one step minus the memory allocated before it (``null`` on CPU).
``--smoke``: tiny sizes (the model has the Llama layout at width 64), for the CPU test suite
(tests/unit/test_gpu_check.py); on a GPU, a short sanity run. Output: ``--out`` (JSON, rewritten after every row) and
the same path with ``.md`` (a short Markdown summary), so a run cut off at any point returns what it had measured.
Caps sum to 320 s and the whole run gets 330 s, so that with start-up and the wheel install it ends within 6 minutes
on an H200. On the device machine: ``bash benchmarks/gpu_check.sh $OUT`` with ``.gpu-wheels`` carried (``make
gpu-wheels``; benchmarks/RESULTS.md, "GPU check").
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import GiB, REPO, time_side_by_side

LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False, hidden_act="silu")
# Smoke: the Llama layout at toy width (vocabulary above the byte tokenizer's 259 ids).
TINY_LLAMA = dict(vocab_size=320, hidden_size=64, intermediate_size=172, num_attention_heads=4, num_key_value_heads=4,
                  max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                  hidden_act="silu")
EPS = 0.1  # mean eps (per-sample eps uniform in [0, 0.2]) and the one eps of the single-eps methods

FULL = dict(
    dtype="bfloat16", model=LLAMA2_7B, model_name="Llama-2-7B shape",
    matmul_sizes=(4096, 8192, 16384), matmul_reps=10, copy_bytes=4 * GiB,
    corr_logits=(4, 512, 32000), corr_fused=(2, 1024, 4096, 32000), corr_layers=2,
    loss_cases=[(8, 1024, 32000, "float32"), (8, 1024, 32000, "bfloat16"), (4, 1024, 128256, "bfloat16")],
    loss_reps=10,
    fused_cases=[(8, 1024, 4096, 32000, False, 0.0), (8, 1024, 4096, 32000, True, 0.0),
                 (8, 1024, 4096, 32000, False, 0.5), (4, 1024, 4096, 128256, False, 0.0)],
    fused_reps=10,
    step_layers=32, step_small_layers=2, step_B=4, step_T=1024, step_reps=4,
    trainer_layers=8, trainer_B=4, trainer_T=1024, trainer_steps=4,
    gen_layers=32, gen_prompts=8, gen_batch=8, gen_new_tokens=64,
)
SMOKE = dict(
    dtype="float32", model=TINY_LLAMA, model_name="tiny Llama (width 64)",
    matmul_sizes=(128, 256), matmul_reps=3, copy_bytes=2 ** 24,
    corr_logits=(2, 16, 64), corr_fused=(2, 16, 32, 64), corr_layers=2,
    loss_cases=[(2, 16, 64, "float32"), (2, 16, 64, "bfloat16")], loss_reps=2,
    fused_cases=[(2, 16, 32, 64, False, 0.0), (2, 16, 32, 64, True, 0.5)], fused_reps=2,
    step_layers=2, step_small_layers=1, step_B=2, step_T=32, step_reps=2,
    trainer_layers=2, trainer_B=2, trainer_T=32, trainer_steps=2,
    gen_layers=2, gen_prompts=2, gen_batch=2, gen_new_tokens=4,
)
# (name, time cap in seconds). Caps sum to 320 s: with start-up and the wheel install the run fits in 6 minutes.
SECTIONS = [("env", 10), ("matmul_peak", 15), ("correctness", 25), ("loss", 35), ("fused", 45), ("model_step", 75),
            ("trainer", 45), ("accelerate", 45), ("generate", 25)]
SOFT_SHARE = 0.75  # loops start no new repetition or case past this share of the cap
SMOKE_CAP_SCALE = 3  # smoke runs on a shared 2-core CPU: the caps guard the GPU budget, not correctness
BUDGET_S = {False: 330.0, True: 900.0}  # whole run, by smoke


# ------------------------------------------------------------------------------------------------------- plumbing

class SectionTimeout(BaseException):
    """A section's time cap (BaseException: library code that catches Exception does not swallow it)."""


@contextlib.contextmanager
def time_cap(seconds: float):
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (between Python bytecodes). An alarm set
    before (pytest-timeout's, say) gets its handler and its remaining time back afterwards."""
    def handler(signum, frame):
        raise SectionTimeout(f"time cap of {seconds:.0f} s reached")

    old = signal.signal(signal.SIGALRM, handler)
    t0 = time.monotonic()
    prev_delay, prev_interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if prev_delay > 0:
            signal.setitimer(signal.ITIMER_REAL, max(prev_delay - (time.monotonic() - t0), 0.001), prev_interval)


class Run:
    """The JSON record (rewritten after every row) and its Markdown summary."""

    def __init__(self, out: Path, smoke: bool, budget_s: float, argv: list[str]):
        self.out, self.md = out, out.with_suffix(".md")
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.record = {"name": "gpu_check", "smoke": smoke,
                       "command": "python -m benchmarks.gpu_check " + " ".join(argv),
                       "started": _now(), "budget_s": budget_s, "status": "running", "machine": {}, "sections": {}}
        self.flush()

    def remaining(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def flush(self) -> None:
        from ual.common.io import atomic_write_json, atomic_write_text

        self.record["wall_s"] = round(time.perf_counter() - self.t0, 1)
        atomic_write_json(self.out, self.record)
        atomic_write_text(self.md, markdown(self.record))


class Section:
    """One section's part of the record: status, timing, rows, checks, notes; every change is flushed."""

    def __init__(self, run: Run, name: str, cap: float):
        self.run, self.name, self.cap = run, name, cap
        self.t0 = time.perf_counter()
        self.soft = self.t0 + SOFT_SHARE * cap
        self.rec = {"status": "running", "cap_s": round(cap, 1), "seconds": None, "rows": [], "checks": []}
        run.record["sections"][name] = self.rec
        run.flush()

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.soft

    def row(self, **r) -> None:
        self.rec["rows"].append(r)
        self.run.flush()

    def check(self, name: str, value: float, tol: float, **extra) -> None:
        ok = value is not None and math.isfinite(value) and value <= tol
        self.rec["checks"].append({"check": name, "value": _r(value, 3), "tol": tol, "passed": bool(ok), **extra})
        self.run.flush()

    def note(self, key: str, value) -> None:
        self.rec[key] = value
        self.run.flush()

    def skip(self, what: str, why: str) -> None:
        self.rec.setdefault("skipped", []).append({"what": what, "why": why})
        self.run.flush()


def _now() -> str:
    import datetime as dt

    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _r(x, digits=4):
    """Round to ``digits`` significant digits (None stays None)."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) or x == 0:
        return x
    return round(x, max(0, digits - 1 - int(math.floor(math.log10(abs(x))))))


def markdown(record: dict) -> str:
    from benchmarks.report import markdown_table

    m = record.get("machine", {})
    lines = [f"# GPU check{' (smoke)' if record['smoke'] else ''}", "",
             f"`{record['command']}`: {m.get('device', '?')}, torch {m.get('torch', '?')}, "
             f"transformers {m.get('transformers', '?')}, started {record['started']}, {record.get('wall_s')} s, "
             f"status {record['status']}", ""]
    for name, sec in record["sections"].items():
        lines += [f"## {name}: {sec['status']} ({sec['seconds']} s of {sec['cap_s']} s)", ""]
        if sec.get("error"):
            lines += ["```", sec["error"].strip()[-1500:], "```", ""]
        for key, value in sec.items():
            if key in ("status", "seconds", "cap_s", "rows", "checks", "error", "columns", "skipped"):
                continue
            lines.append(f"- {key}: `{json.dumps(value, default=str)[:300]}`")
        if sec["checks"]:
            lines += ["", markdown_table(sec["checks"], ["check", "value", "tol", "passed"])]
        if sec["rows"]:
            lines += ["", markdown_table(sec["rows"], sec.get("columns"))]
        if sec.get("skipped"):
            lines += ["", "skipped:", "", markdown_table(sec["skipped"])]
        lines.append("")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- shared helpers

class Ctx:
    """What every section needs: sizes, device, dtype, the bf16 peak once measured, the cached 7B-shaped model."""

    def __init__(self, sizes: dict, smoke: bool):
        import torch

        self.sizes, self.smoke = sizes, smoke
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = getattr(torch, sizes["dtype"])
        self.sync = torch.cuda.synchronize if self.cuda else None
        self.peak_flops = None  # bf16 matmul FLOP/s, set by matmul_peak
        self._model, self._model_layers, self.build_s = None, 0, None

    def free(self) -> None:
        """Collect garbage, then freeze what survives (modules imported, the cached model): the ``gc.collect()``
        before every timed step (``time_side_by_side``) then scans only new objects (unfrozen, one collection took
        0.6 s here once transformers, peft and trl were loaded)."""
        import torch

        gc.collect()
        gc.freeze()
        if self.cuda:
            torch.cuda.empty_cache()

    def peak_extra(self, step) -> tuple[int | None, int | None]:
        """(extra peak bytes over what was allocated before ``step``, absolute peak bytes); (None, None) on CPU."""
        import torch

        if not self.cuda:
            step()
            return None, None
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return peak - base, peak

    def model(self, layers: int):
        """The cached Llama-shaped base model (random weights, ``self.dtype``) built with ``layers`` layers; a
        request for fewer layers than it has runs its first ``layers`` (``config.num_hidden_layers``)."""
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig

        if self._model is None or self._model_layers < layers:
            self.drop_model()
            cfg = LlamaConfig(**self.sizes["model"], num_hidden_layers=layers, pad_token_id=256, bos_token_id=257,
                              eos_token_id=258)
            torch.manual_seed(0)
            t0 = time.perf_counter()
            with torch.device(self.device):
                m = AutoModelForCausalLM.from_config(cfg, dtype=self.dtype)
            if self.sync:
                self.sync()
            self._model, self._model_layers = m, layers
            self.build_s = round(time.perf_counter() - t0, 2)
        self._model.config.num_hidden_layers = layers
        return self._model

    def drop_model(self) -> None:
        """Release the cached model: unfreeze first, so that a frozen reference cycle cannot keep it alive."""
        self._model = None
        gc.unfreeze()
        self.free()

    def mfu(self, flops_per_s: float | None) -> float | None:
        if flops_per_s is None or not self.peak_flops:
            return None
        return _r(100 * flops_per_s / self.peak_flops, 3)


def each_case(sec: Section, ctx: Ctx, cases: list, label, run_case) -> None:
    """``run_case(*case)`` for each case: past the soft deadline the rest are skipped; a case that raises (out of
    memory, say) is recorded under ``skipped`` and the next one runs; the section then ends with an error naming them."""
    failed = []
    for case in cases:
        name = label(*case)
        if sec.out_of_time():
            sec.skip(name, "time cap")
            continue
        try:
            run_case(*case)
        except Exception as e:
            failed.append(name)
            sec.skip(name, f"{type(e).__name__}: {str(e)[:400]}")
            sec.note(f"error {name}", traceback.format_exc()[-2000:])
        finally:
            ctx.free()
    if failed:
        raise RuntimeError(f"cases failed: {failed} (see 'skipped')")


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in fp64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def liger_fused_loss():
    """Liger-Kernel's fused linear cross-entropy class, or raise with why it cannot run here."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("Liger-Kernel's Triton kernels need a CUDA device")
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss


def lora_config():
    """The paper's LoRA (benchmarks.bench_train.LORA: r 8, alpha 16, dropout 0.1, q_proj and v_proj)."""
    from peft import LoraConfig

    from benchmarks.bench_train import LORA

    return LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA)


def flops_per_token(model_cfg: dict, layers: int, T: int) -> dict:
    """``benchmarks.bench_train.lora_flops_per_token`` for this config (saved to a temporary folder it reads)."""
    from transformers import LlamaConfig

    from benchmarks.bench_train import lora_flops_per_token

    with tempfile.TemporaryDirectory(prefix="gpu_check_cfg_") as d:
        LlamaConfig(**model_cfg, num_hidden_layers=layers).save_pretrained(d)
        return lora_flops_per_token(d, T)


def token_batch(B: int, T: int, vocab: int, device, seed: int = 0):
    """Random ids [B, T] (every token a target), an all-ones mask, labels = ids, per-sample eps in [0, 2 EPS]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    eps = torch.rand(B, generator=g) * 2 * EPS
    return ids.to(device), torch.ones_like(ids).to(device), ids.clone().to(device), eps.to(device)


# ----------------------------------------------------------------------------------------------------- sections

def sec_env(sec: Section, ctx: Ctx) -> None:
    import importlib.metadata as md

    import torch

    from benchmarks.common import machine

    info = machine()
    versions = {}
    for pkg in ("transformers", "peft", "accelerate", "trl", "datasets", "liger-kernel", "triton"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    info.update(versions)
    info["device"] = torch.cuda.get_device_name(0) if ctx.cuda else f"CPU ({info['cpu']})"
    if ctx.cuda:
        p = torch.cuda.get_device_properties(0)
        info.update(cuda=torch.version.cuda, gpu_mem_gib=round(p.total_memory / GiB, 1),
                    sm_count=p.multi_processor_count, capability=f"{p.major}.{p.minor}",
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    info["python_exe"] = sys.executable
    info["platform"] = platform.platform()
    sec.run.record["machine"] = info
    sec.note("versions", {"torch": torch.__version__, **versions})


def sec_matmul_peak(sec: Section, ctx: Ctx) -> None:
    import torch

    from benchmarks.bench_matmul_peak import measure

    s = ctx.sizes
    best = 0.0
    for n in s["matmul_sizes"]:
        if sec.out_of_time():
            sec.skip(f"n={n}", "time cap")
            continue
        flops = measure(n, s["matmul_reps"], dtype=torch.bfloat16, device=ctx.device)
        best = max(best, flops)
        sec.row(kind="bf16 matmul", n=n, tflops=_r(flops / 1e12))
    ctx.peak_flops = best
    sec.note("peak_bf16_tflops", _r(best / 1e12))
    # Device-to-device copy: bytes read + written per second (the bandwidth ceiling of memory-bound steps).
    n = s["copy_bytes"] // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=ctx.device).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    if ctx.sync:
        ctx.sync()
    best_t = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        if ctx.sync:
            ctx.sync()
        best_t = min(best_t, time.perf_counter() - t0)
    sec.row(kind="copy (read + write)", n=s["copy_bytes"], tbps=_r(2 * s["copy_bytes"] / best_t / 1e12))
    sec.note("copy_tbps", _r(2 * s["copy_bytes"] / best_t / 1e12))
    sec.note("columns", ["kind", "n", "tflops", "tbps"])


def sec_correctness(sec: Section, ctx: Ctx) -> None:
    import torch

    from ual.loss import (dense_smoothed_cross_entropy, final_hidden_states, fused_loss_supported,
                          fused_smoothed_cross_entropy, lm_head_weight, smoothed_cross_entropy)

    dev = ctx.device
    g = torch.Generator().manual_seed(1)
    B, T, V = ctx.sizes["corr_logits"]
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, : T // 4] = -100  # a masked prompt
    eps_s = (torch.rand(B, generator=g) * 2 * EPS)
    eps_t = (torch.rand(B, T, generator=g) * 2 * EPS)
    base = torch.randn(B, T, V, generator=g).mul_(2.0)
    labels, eps_s, eps_t, base = labels.to(dev), eps_s.to(dev), eps_t.to(dev), base.to(dev)

    def against_dense(name, x, eps, smoothing, tol_loss, tol_grad):
        x = x.detach().requires_grad_(True)
        loss = smoothed_cross_entropy(x, labels, eps, smoothing=smoothing)
        loss.backward()
        ref_x = x.detach().double().requires_grad_(True)
        ref = dense_smoothed_cross_entropy(ref_x, labels, eps.double(), smoothing=smoothing)
        ref.backward()
        sec.check(f"{name}: loss", rel_err(loss.detach(), ref.detach()), tol_loss)
        sec.check(f"{name}: d/dlogits", rel_err(x.grad, ref_x.grad), tol_grad)

    against_dense("logits fp32, per-sample eps, nontarget", base, eps_s, "nontarget", 1e-5, 1e-4)
    against_dense("logits fp32, per-token eps, uniform", base, eps_t, "uniform", 1e-5, 1e-4)
    against_dense("logits bf16, per-sample eps, nontarget", base.bfloat16(), eps_s, "nontarget", 1e-5, 1e-2)
    del base
    ctx.free()

    B, T, H, V = ctx.sizes["corr_fused"]
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, : T // 4] = -100
    eps = (torch.rand(B, generator=g) * 2 * EPS).to(dev)
    labels = labels.to(dev)
    h0 = torch.randn(B, T, H, generator=g).to(dev)
    w0 = (torch.randn(V, H, generator=g) / H ** 0.5).to(dev)
    for dtype, tol_loss, tol_grad in ((torch.float32, 1e-5, 1e-4), (torch.bfloat16, 3e-3, 3e-2)):
        name = f"fused {str(dtype)[6:]}, W trained"
        h = h0.to(dtype, copy=True).requires_grad_(True)
        w = w0.to(dtype, copy=True).requires_grad_(True)
        loss = fused_smoothed_cross_entropy(h, w, labels, eps)
        loss.backward()
        rh = h.detach().double().requires_grad_(True)
        rw = w.detach().double().requires_grad_(True)
        ref = dense_smoothed_cross_entropy(rh @ rw.T, labels, eps.double())
        ref.backward()
        sec.check(f"{name}: loss", rel_err(loss.detach(), ref.detach()), tol_loss)
        sec.check(f"{name}: d/dhidden", rel_err(h.grad, rh.grad), tol_grad)
        sec.check(f"{name}: d/dW", rel_err(w.grad, rw.grad), tol_grad)
        del h, w, rh, rw, loss, ref
        ctx.free()
    del h0, w0

    # The model helpers on the Llama-shaped model: the fused path must see exactly the model's logits.
    model = ctx.model(ctx.sizes["corr_layers"])
    ok, why = fused_loss_supported(model)
    sec.note("fused_loss_supported", [ok, why])
    sec.check("fused_loss_supported(Llama) is True", 0.0 if ok else 1.0, 0.0)
    ids, mask, lab, eps = token_batch(2, 64, model.config.vocab_size, dev)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hidden = final_hidden_states(model, ids, mask)
        weight, bias = lm_head_weight(model)
        head = torch.nn.functional.linear(hidden, weight, bias)
        sec.check("max |lm_head(final_hidden_states) - logits|", float((head - logits).abs().max()), 0.0)
        fused = fused_smoothed_cross_entropy(hidden, weight, lab, eps)
        on_logits = smoothed_cross_entropy(logits, lab, eps)
        sec.check(f"model: fused loss vs loss on logits ({ctx.sizes['dtype']})", rel_err(fused, on_logits),
                  3e-3 if ctx.dtype == torch.bfloat16 else 1e-5)


def sec_loss(sec: Section, ctx: Ctx) -> None:
    import torch

    from benchmarks.bench_loss import BASELINE, METHODS, step_on

    sec.note("columns", ["B", "T", "V", "logits", "method", "ms", "time_ratio", "ratios", "peak_gib", "mem_ratio",
                         "reps"])

    def one(B, T, V, dt):
        g = torch.Generator(device=ctx.device).manual_seed(0)
        x = torch.randn(B, T, V, generator=g, device=ctx.device).mul_(2.0).to(getattr(torch, dt)).requires_grad_(True)
        labels = torch.randint(0, V, (B, T), generator=g, device=ctx.device)
        eps = torch.rand(B, generator=g, device=ctx.device) * 2 * EPS
        steps = {m: step_on(m, x, labels, eps) for m in METHODS}
        timing = time_side_by_side(steps, BASELINE, ctx.sizes["loss_reps"], sync=ctx.sync, deadline=sec.soft)
        mem = {m: ctx.peak_extra(steps[m])[0] for m in METHODS}
        for m in METHODS:
            t = timing[m]
            sec.row(B=B, T=T, V=V, logits=dt, method=m, ms=_r(1e3 * t["seconds"]), time_ratio=_r(t["time_ratio"], 3),
                    ratios=[_r(v, 3) for v in t["ratios_all"]],
                    peak_gib=None if mem[m] is None else _r(mem[m] / GiB),
                    mem_ratio=None if mem[BASELINE] is None else _r(mem[m] / mem[BASELINE], 3), reps=t["reps_done"])

    each_case(sec, ctx, ctx.sizes["loss_cases"], lambda B, T, V, dt: f"{B}x{T}x{V} {dt}", one)


def sec_fused(sec: Section, ctx: Ctx) -> None:
    import torch

    from benchmarks.bench_fused import BASELINE, METHODS, step_on
    from ual.loss import fused_smoothed_cross_entropy

    try:
        Liger = liger_fused_loss()
        liger_why = None
    except Exception as e:  # not installed, or no CUDA
        Liger, liger_why = None, f"{type(e).__name__}: {e}"
        sec.note("liger", f"not run: {liger_why}")
    sec.note("columns", ["tokens", "H", "V", "dtype", "train_W", "masked", "method", "ms", "time_ratio", "ratios",
                         "peak_gib", "mem_ratio", "head_mfu_pct", "reps"])
    sec.note("head_mfu_pct", "the unfused path's matmul FLOPs (all tokens: logits, d/dhidden, d/dW when trained) per "
                             "second over the bf16 peak; with masked targets the fused paths skip rows, so theirs is "
                             "an effective rate")
    dt = ctx.dtype

    def one(B, T, H, V, train_w, masked):
        case = f"{B}x{T} H={H} V={V} train_W={train_w} masked={masked}"
        g = torch.Generator(device=ctx.device).manual_seed(0)
        hidden = torch.randn(B, T, H, generator=g, device=ctx.device).to(dt).requires_grad_(True)
        weight = (torch.randn(V, H, generator=g, device=ctx.device) / H ** 0.5).to(dt).requires_grad_(train_w)
        labels = torch.randint(0, V, (B, T), generator=g, device=ctx.device)
        labels[:, : int(T * masked)] = -100
        eps = torch.rand(B, generator=g, device=ctx.device) * 2 * EPS
        steps = {m: step_on(m, hidden, weight, labels, eps) for m in METHODS}
        if Liger is not None:
            liger = Liger(label_smoothing=EPS, ignore_index=-100)
            h_flat = hidden[:, :-1]  # the shift Liger's own model patch does: hidden[..., :-1, :], labels[..., 1:]
            t_flat = labels[:, 1:].reshape(-1)

            def liger_step():
                liger(weight, h_flat.reshape(-1, H), t_flat).backward()
                hidden.grad = None
                weight.grad = None

            try:  # agreement at the same eps and convention (uniform), before timing; a Liger failure spares ual's
                loss_l = liger(weight, h_flat.reshape(-1, H), t_flat)
                gl = torch.autograd.grad(loss_l, [hidden] + ([weight] if train_w else []))
                loss_u = fused_smoothed_cross_entropy(hidden, weight, labels, EPS, smoothing="uniform")
                gu = torch.autograd.grad(loss_u, [hidden] + ([weight] if train_w else []))
                sec.check(f"liger vs ual (uniform, eps {EPS}) {case}: loss",
                          rel_err(loss_l.detach(), loss_u.detach()), 3e-3)
                sec.check(f"liger vs ual {case}: d/dhidden", rel_err(gl[0], gu[0]), 3e-2)
                if train_w:
                    sec.check(f"liger vs ual {case}: d/dW", rel_err(gl[1], gu[1]), 3e-2)
                del gl, gu, loss_l, loss_u
                steps["liger_flce"] = liger_step
            except Exception as e:
                sec.check(f"liger ran {case}", 1.0, 0.0, error=f"{type(e).__name__}: {str(e)[:300]}")
        timing = time_side_by_side(steps, BASELINE, ctx.sizes["fused_reps"], sync=ctx.sync, deadline=sec.soft)
        mem = {m: ctx.peak_extra(steps[m])[0] for m in steps}
        head_flops = 2 * B * T * H * V * (3 if train_w else 2)  # logits, d/dhidden (+ d/dW): the unfused count
        for m in steps:
            t = timing[m]
            sec.row(tokens=B * T, H=H, V=V, dtype=str(dt)[6:], train_W=train_w, masked=masked, method=m,
                    ms=_r(1e3 * t["seconds"]), time_ratio=_r(t["time_ratio"], 3),
                    ratios=[_r(v, 3) for v in t["ratios_all"]],
                    peak_gib=None if mem[m] is None else _r(mem[m] / GiB),
                    mem_ratio=None if mem[BASELINE] is None else _r(mem[m] / mem[BASELINE], 3),
                    head_mfu_pct=ctx.mfu(head_flops / t["seconds"]), reps=t["reps_done"])

    each_case(sec, ctx, ctx.sizes["fused_cases"],
              lambda B, T, H, V, w, m: f"{B}x{T} H={H} V={V} train_W={w} masked={m}", one)


def _step_methods(model, ids, mask, labels, eps, Liger):
    """Loss closures for one training step of a (PEFT-wrapped) causal LM; each returns the loss."""
    from transformers.trainer_pt_utils import LabelSmoother

    from ual.loss import final_hidden_states, fused_smoothed_cross_entropy, lm_head_weight, smoothed_cross_entropy

    smoother = LabelSmoother(epsilon=EPS)
    weight, bias = lm_head_weight(model)
    methods = {
        "hf_ce": lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss,
        "hf_label_smoother": lambda: smoother({"logits": model(input_ids=ids, attention_mask=mask).logits}, labels,
                                              shift_labels=True),
        "ual_logits": lambda: smoothed_cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels, eps),
        "ual_fused": lambda: fused_smoothed_cross_entropy(final_hidden_states(model, ids, mask), weight, labels, eps,
                                                          bias=bias),
    }
    if Liger is not None:
        liger = Liger(label_smoothing=EPS, ignore_index=-100)

        def liger_loss():
            hidden = final_hidden_states(model, ids, mask)[:, :-1]
            return liger(weight, hidden.reshape(-1, hidden.shape[-1]), labels[:, 1:].reshape(-1), bias)

        methods["liger_fused"] = liger_loss
    return methods


def sec_model_step(sec: Section, ctx: Ctx) -> None:
    import torch
    from peft import get_peft_model

    s = ctx.sizes
    try:
        Liger = liger_fused_loss()
    except Exception as e:
        Liger = None
        sec.note("liger", f"not run: {type(e).__name__}: {e}")
    L, Ls, B, T = s["step_layers"], s["step_small_layers"], s["step_B"], s["step_T"]
    base = ctx.model(L)
    sec.note("model", f"{s['model_name']}, {L} layers, random {s['dtype']} weights, LoRA r 8 on q_proj/v_proj, "
                      f"B={B}, T={T}, every token a target; base built in {ctx.build_s} s")
    model = get_peft_model(base, lora_config())
    try:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        ids, mask, labels, eps = token_batch(B, T, base.config.vocab_size, ctx.device)
        losses = _step_methods(model, ids, mask, labels, eps, Liger)

        def make(fn):
            def step():
                fn().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return step

        steps = {m: make(fn) for m, fn in losses.items()}
        if "liger_fused" in steps:  # one step first: a failure of the external kernel spares the other methods
            try:
                steps["liger_fused"]()
            except Exception as e:
                del steps["liger_fused"]
                opt.zero_grad(set_to_none=True)
                sec.check("liger_fused ran", 1.0, 0.0, error=f"{type(e).__name__}: {str(e)[:300]}")
        fpt = {n: flops_per_token(s["model"], n, T)["total"] for n in (L, Ls)}
        sec.note("flops_per_token", {f"{n} layers": v for n, v in fpt.items()})
        sec.note("columns", ["layers", "method", "ms", "time_ratio", "ratios", "tokens_per_s", "mfu_pct",
                             "peak_gib", "extra_gib", "reps"])
        per_layer = {}
        for n_layers in (L, Ls):
            if sec.out_of_time():
                sec.skip(f"{n_layers} layers", "time cap")
                continue
            base.config.num_hidden_layers = n_layers
            timing = time_side_by_side(steps, "hf_ce", s["step_reps"], sync=ctx.sync, deadline=sec.soft)
            for m, step in steps.items():
                extra, peak = ctx.peak_extra(step)
                t = timing[m]
                tps = B * T / t["seconds"]
                per_layer.setdefault(m, {})[n_layers] = t["seconds"]
                sec.row(layers=n_layers, method=m, ms=_r(1e3 * t["seconds"]), time_ratio=_r(t["time_ratio"], 3),
                        ratios=[_r(v, 3) for v in t["ratios_all"]], tokens_per_s=_r(tps),
                        mfu_pct=ctx.mfu(fpt[n_layers] * tps), peak_gib=None if peak is None else _r(peak / GiB),
                        extra_gib=None if extra is None else _r(extra / GiB), reps=t["reps_done"])
        fits = {}
        for m, by in per_layer.items():
            if L in by and Ls in by and L != Ls:
                slope = (by[L] - by[Ls]) / (L - Ls)
                fixed = by[Ls] - Ls * slope
                fits[m] = {"ms_per_layer": _r(1e3 * slope), "ms_fixed (embedding, head, loss, optimizer)":
                           _r(1e3 * fixed), "ms_projected_32_layers": _r(1e3 * (fixed + 32 * slope))}
        sec.note("per_layer_fit", fits)
    finally:
        base.config.num_hidden_layers = L
        model.unload()
        del model
        ctx.free()


def _timer_callback():
    """A TrainerCallback noting the wall time at the end of each step; CUDA peak counters reset after step 1."""
    import torch
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends: dict[int, float] = {}
            self.base = None  # CUDA bytes allocated when the peak counter was reset

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends[state.global_step] = time.perf_counter()
            if state.global_step == 1 and torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                self.base = torch.cuda.memory_allocated()

    return StepTimes()


def sec_trainer(sec: Section, ctx: Ctx) -> None:
    import torch
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    from ual.common.models import byte_tokenizer
    from ual.train import UALCollator, UALLossMixin, UALTrainer

    s = ctx.sizes
    L, B, T, steps = s["trainer_layers"], s["trainer_B"], s["trainer_T"], s["trainer_steps"]
    base = ctx.model(L)
    tok = byte_tokenizer()
    n = B * (1 + steps)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, base.config.vocab_size, (n, T), generator=g).tolist()
    eps = (torch.rand(n, generator=g) * 2 * EPS).tolist()
    sec.note("setup", f"{s['model_name']}, {L} layers, LoRA r 8 q/v, B={B}, T={T} (no padding, every token a "
                      f"target), step 1 warm-up then {steps} timed steps; bf16={ctx.cuda}")
    sec.note("columns", ["method", "ms_per_step", "tokens_per_s", "speed_vs_hf_trainer_ls", "speed_vs_trl_sft",
                         "extra_gib", "peak_gib", "mfu_pct", "first_loss", "last_loss"])
    sec.note("memory", "peak_gib: torch.cuda.max_memory_allocated over the timed steps (the weights of all the cached "
                       "model's layers included); extra_gib: that peak minus what was allocated after step 1")
    fpt = flops_per_token(s["model"], L, T)["total"]
    common = dict(per_device_train_batch_size=B, gradient_accumulation_steps=1, learning_rate=1e-4,
                  max_steps=1 + steps, logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0,
                  disable_tqdm=True, seed=1337, remove_unused_columns=False,
                  bf16=ctx.cuda and ctx.dtype == torch.bfloat16, use_cpu=not ctx.cuda)
    ual_data = [{"input_ids": i, "eps": e} for i, e in zip(ids, eps)]

    def stack(examples):
        x = torch.tensor([e["input_ids"] for e in examples])
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}

    def ual_trainer(fused):
        def build(model, out, cb):
            return UALTrainer(model=model, args=TrainingArguments(output_dir=out, **common), train_dataset=ual_data,
                              data_collator=UALCollator(tok.pad_token_id), fused=fused, callbacks=[cb])
        return build

    def hf_ls(model, out, cb):
        return Trainer(model=model, args=TrainingArguments(output_dir=out, label_smoothing_factor=EPS, **common),
                       train_dataset=[{"input_ids": i} for i in ids], data_collator=stack, callbacks=[cb])

    def trl(ual: bool):
        def build(model, out, cb):
            from datasets import Dataset
            from trl import SFTConfig, SFTTrainer

            cls = type("UALSFTTrainer", (UALLossMixin, SFTTrainer), {}) if ual else SFTTrainer
            data = Dataset.from_dict({"input_ids": ids, **({"eps": eps} if ual else {})})
            args = SFTConfig(output_dir=out, max_length=T, packing=False, gradient_checkpointing=False, **common)
            kw = dict(data_collator=UALCollator(tok.pad_token_id), fused=True) if ual else {}
            return cls(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[cb], **kw)
        return build

    builders = {"ual_trainer_fused": ual_trainer(True), "ual_trainer_logits": ual_trainer(False),
                "ual_sft_trainer_fused (TRL + UALLossMixin)": trl(True), "hf_trainer_ls": hf_ls, "trl_sft": trl(False)}
    raw = {}
    for name, build in builders.items():
        if sec.out_of_time():
            sec.skip(name, "time cap")
            continue
        model = get_peft_model(base, lora_config())
        try:
            with tempfile.TemporaryDirectory(prefix="gpu_check_trainer_") as d:
                cb = _timer_callback()
                trainer = build(model, d, cb)
                trainer.train()
                sec_per_step = (cb.ends[1 + steps] - cb.ends[1]) / steps
                losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
                peak = torch.cuda.max_memory_allocated() if ctx.cuda else None
                raw[name] = sec_per_step
                tps = B * T / sec_per_step
                sec.row(method=name, ms_per_step=_r(1e3 * sec_per_step), tokens_per_s=_r(tps),
                        extra_gib=None if peak is None or cb.base is None else _r((peak - cb.base) / GiB),
                        peak_gib=None if peak is None else _r(peak / GiB), mfu_pct=ctx.mfu(fpt * tps),
                        first_loss=_r(losses[0]) if losses else None, last_loss=_r(losses[-1]) if losses else None)
                del trainer
        except Exception as e:
            sec.skip(name, f"{type(e).__name__}: {str(e)[:400]}")
            sec.note(f"error_{name.split()[0]}", traceback.format_exc()[-2000:])
        finally:
            model.unload()
            del model
            ctx.free()
    for row in sec.rec["rows"]:
        for ref in ("hf_trainer_ls", "trl_sft"):
            if ref in raw:
                row[f"speed_vs_{ref}"] = _r(raw[ref] / raw[row["method"]], 3)
    sec.run.flush()
    failed = [k for k in builders if k not in raw and not any(x["what"] == k and x["why"] == "time cap"
                                                              for x in sec.rec.get("skipped", []))]
    if failed:
        raise RuntimeError(f"trainer runs failed: {failed} (see 'skipped' and the error_* notes)")


def sec_accelerate(sec: Section, ctx: Ctx) -> None:
    from ual.common.models import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="gpu_check_accel_") as d:
        tmp = Path(d)
        build_tiny_model(tmp / "model")
        recs, scores = [], []
        for i in range(16):
            math_item = i % 2 == 0
            msgs = [{"role": "user", "content": f"What is {i} + 2?" if math_item else f"Name colour number {i}."},
                    {"role": "assistant", "content": f"{i} + 2 = {i + 2}\n#### {i + 2}" if math_item else "teal"}]
            recs.append({"id": f"r{i}", "source": "math" if math_item else "chat", "messages": msgs})
            scores.append({"id": f"r{i}", "score": 3.0 + i if math_item else 80.0 - i})
        (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (tmp / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scores))
        bf16 = "true" if ctx.cuda else "false"
        (tmp / "train.yaml").write_text(
            f"model: {tmp / 'model'}\ndata: {tmp / 'train.jsonl'}\nscores: {tmp / 'scores.jsonl'}\n"
            f"output_dir: {tmp / 'out'}\nmethod: ual\nmean_eps: 0.2\ntemplate: chat\nmax_length: 64\nbatch_size: 4\n"
            f"grad_accum: 2\nmax_steps: 3\nlearning_rate: 0.01\nlr_scheduler: constant\nwarmup_ratio: 0.0\n"
            f"save_steps: 10\nfused_loss: true\nbf16: {bf16}\n")
        launch = [sys.executable, "-m", "accelerate.commands.launch"]
        launch += (["--config_file", str(REPO / "accelerate" / "one_gpu.yaml")] if ctx.cuda
                   else ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                         "--dynamo_backend", "no"])
        cmd = launch + ["-m", "ual", "train", "--config", str(tmp / "train.yaml")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), TOKENIZERS_PARALLELISM="false")
        if not ctx.cuda:
            env["CUDA_VISIBLE_DEVICES"] = ""
        sec.note("command", " ".join(cmd[1:]).replace(str(tmp), "$TMP").replace(str(REPO), "$REPO"))
        t0 = time.perf_counter()
        timeout = max(5.0, sec.t0 + sec.cap - 3 - time.perf_counter())
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        sec.note("returncode", proc.returncode)
        sec.note("wall_s", _r(time.perf_counter() - t0, 3))
        if proc.returncode != 0:
            raise RuntimeError(f"accelerate launch exited {proc.returncode}:\n{proc.stderr[-2500:]}")
        out = tmp / "out"
        manifest = json.loads((out / "manifest.json").read_text())
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
        losses = [r["loss"] for r in log if "loss" in r]
        for r in log:
            if "loss" in r:
                sec.row(step=r["step"], loss=_r(r["loss"]), eps_mean=r.get("eps_mean"), tokens=r.get("tokens"))
        sec.note("manifest", {k: manifest.get(k) for k in ("status", "loss_path", "fused_reason", "world_size",
                                                           "global_step")})
        sec.note("adapter_saved", (out / "adapter" / "adapter_model.safetensors").exists())
        sec.check("accelerate fit: 3 logged steps with finite losses",
                  0.0 if len(losses) == 3 and all(math.isfinite(x) for x in losses) else 1.0, 0.0)
        sec.check("accelerate fit: manifest complete, fused path",
                  0.0 if manifest.get("status") == "complete" and manifest.get("loss_path") == "fused" else 1.0, 0.0)


def sec_generate(sec: Section, ctx: Ctx) -> None:
    from ual.common.models import byte_tokenizer
    from ual.evaluate.generate import generate

    s = ctx.sizes
    model = ctx.model(s["gen_layers"])
    model.eval()
    tok = byte_tokenizer()
    records = [{"id": f"g{i}", "source": "gpu_check",
                "messages": [{"role": "user", "content": f"Question {i}: what is {i} times {i + 3}? Explain."}]}
               for i in range(s["gen_prompts"])]
    with tempfile.TemporaryDirectory(prefix="gpu_check_gen_") as d:
        path = Path(d) / "gen.jsonl"
        # Warm-up (one prompt, two tokens) into another file: kernels and caches, outside the timed call.
        generate((model, tok), records[:1], Path(d) / "warm.jsonl", batch_size=1, max_new_tokens=2, progress=False,
                 dtype=s["dtype"])
        if ctx.sync:
            ctx.sync()
        t0 = time.perf_counter()
        generate((model, tok), records, path, batch_size=s["gen_batch"], max_new_tokens=s["gen_new_tokens"],
                 progress=False, dtype=s["dtype"])
        if ctx.sync:
            ctx.sync()
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    new_tokens = sum(r["n_new_tokens"] for r in rows)
    decode_steps = math.ceil(len(records) / s["gen_batch"]) * s["gen_new_tokens"]
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes -= model.model.embed_tokens.weight.numel() * model.model.embed_tokens.weight.element_size()
    sec.row(layers=s["gen_layers"], prompts=len(records), batch=s["gen_batch"], max_new_tokens=s["gen_new_tokens"],
            rows_written=len(rows), new_tokens=new_tokens, seconds=_r(wall), new_tokens_per_s=_r(new_tokens / wall),
            ms_per_decode_step=_r(1e3 * wall / decode_steps),
            weight_read_tbps=_r(weight_bytes * decode_steps / wall / 1e12))
    sec.check("generate wrote one row per prompt", 0.0 if len(rows) == len(records) else 1.0, 0.0)


FUNCS = {"env": sec_env, "matmul_peak": sec_matmul_peak, "correctness": sec_correctness, "loss": sec_loss,
         "fused": sec_fused, "model_step": sec_model_step, "trainer": sec_trainer, "accelerate": sec_accelerate,
         "generate": sec_generate}


def summary(record: dict) -> dict:
    """Headline figures pulled from the sections (None where a section did not produce them)."""
    secs = record["sections"]
    out = {"sections": {k: v["status"] for k, v in secs.items()},
           "checks_passed": sum(c["passed"] for v in secs.values() for c in v["checks"]),
           "checks_failed": [c["check"] for v in secs.values() for c in v["checks"] if not c["passed"]]}
    mp = secs.get("matmul_peak", {})
    out["peak_bf16_tflops"] = mp.get("peak_bf16_tflops")
    for name in ("fused", "model_step"):
        rows = secs.get(name, {}).get("rows", [])
        for m in ("fused", "liger_flce", "ual_fused", "liger_fused"):
            sel = [r for r in rows if r.get("method") == m]
            if sel:
                out[f"{name}:{m}"] = {k: [r.get(k) for r in sel] for k in ("time_ratio", "mem_ratio", "mfu_pct",
                                                                         "extra_gib") if any(r.get(k) is not None
                                                                                             for r in sel)}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU test suite; a 1-minute GPU sanity run)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/gpu_check.json, smoke: benchmarks/results/quick/)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="whole-run budget: a section starts with min(its cap, what is left) (default 330; smoke "
                         f"900, with every cap x{SMOKE_CAP_SCALE})")
    ap.add_argument("--only", action="append", choices=list(FUNCS), metavar="SECTION",
                    help=f"run only these sections (repeatable; env always runs): {', '.join(FUNCS)}")
    args = ap.parse_args(argv)
    out = args.out or (REPO / "benchmarks" / "results" / ("quick" if args.smoke else "") / "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    run = Run(out, args.smoke, args.budget_s or BUDGET_S[args.smoke], argv)
    import torch

    ctx = Ctx(SMOKE if args.smoke else FULL, args.smoke)
    ctx.free()
    wanted = ["env"] + [n for n in (args.only or FUNCS) if n != "env"]
    for name, cap in SECTIONS:
        if name not in wanted:
            continue
        left = run.remaining()
        sec = Section(run, name, min(cap * (SMOKE_CAP_SCALE if args.smoke else 1), max(left, 0.0)))
        if left < 1:
            sec.rec.update(status="skipped", error="whole-run budget spent", seconds=0.0)
            run.flush()
            continue
        print(f"[gpu_check] {name} (cap {sec.cap:.0f} s) ...", flush=True)
        try:
            with time_cap(sec.cap):
                FUNCS[name](sec, ctx)
            sec.rec["status"] = "ok"
        except SectionTimeout as e:
            sec.rec.update(status="timeout", error=str(e))
        except Exception as e:  # one failing section is recorded and the rest still run
            sec.rec.update(status="error", error=f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}")
        finally:
            sec.rec["seconds"] = round(time.perf_counter() - sec.t0, 1)
            ctx.free()
            run.flush()
        failed = [c["check"] for c in sec.rec["checks"] if not c["passed"]]
        print(f"[gpu_check] {name}: {sec.rec['status']} in {sec.rec['seconds']} s"
              + (f"; failed checks: {failed}" if failed else "") + (f"; {sec.rec['error'].splitlines()[0]}"
                                                                    if sec.rec.get("error") else ""), flush=True)
    ctx.drop_model()
    gc.unfreeze()  # what ctx.free() froze is collectable again (main may run inside a longer process: the tests)
    run.record["summary"] = summary(run.record)
    run.record["status"] = "complete"
    run.record["finished"] = _now()
    run.flush()
    print(markdown(run.record)[-6000:], flush=True)
    print(f"[gpu_check] wrote {out} and {run.md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
