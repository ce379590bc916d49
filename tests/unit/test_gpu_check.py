"""benchmarks/gpu_check.py: its --smoke run on CPU (every section, the JSON and Markdown it writes), and its
plumbing (a failing section is recorded and the rest run; a time cap keeps the rows measured before it; the
whole-run budget skips what no longer fits). The GPU numbers themselves: benchmarks/RESULTS.md, "GPU check"."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTION_NAMES = ["env", "matmul_peak", "correctness", "loss", "fused", "model_step", "trainer", "accelerate",
                 "generate"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--smoke", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), out.with_suffix(".md").read_text(), wall


def test_smoke_every_section_ok(smoke):
    rec, md, wall = smoke
    assert rec["smoke"] is True and rec["status"] == "complete"
    assert list(rec["sections"]) == SECTION_NAMES
    bad = {k: (v["status"], (v.get("error") or "")[-1500:]) for k, v in rec["sections"].items() if v["status"] != "ok"}
    assert not bad, bad
    assert rec["summary"]["checks_failed"] == []
    assert rec["summary"]["checks_passed"] >= 15
    for name in SECTION_NAMES:
        assert f"## {name}: ok" in md
    print(f"smoke wall {wall:.0f} s")  # ~50 s on an idle 2-core machine


def test_smoke_correctness_checks_tight(smoke):
    checks = {c["check"]: c for c in smoke[0]["sections"]["correctness"]["checks"]}
    assert checks["logits fp32, per-sample eps, nontarget: loss"]["value"] < 1e-6
    assert checks["fused float32, W trained: d/dW"]["value"] < 1e-5
    assert checks["max |lm_head(final_hidden_states) - logits|"]["value"] == 0.0
    assert checks["fused_loss_supported(Llama) is True"]["passed"]


def test_smoke_timing_rows_interleaved_with_per_rep_ratios(smoke):
    secs = smoke[0]["sections"]
    loss_methods = {r["method"] for r in secs["loss"]["rows"]}
    assert loss_methods == {"plain_ce", "torch_ls", "hf_label_smoother", "ual", "authors_dense"}
    for r in secs["loss"]["rows"] + secs["fused"]["rows"] + secs["model_step"]["rows"]:
        assert len(r["ratios"]) == r["reps"] >= 1
        assert r["peak_gib"] is None  # CPU: no max_memory_allocated
    for r in secs["loss"]["rows"]:
        if r["method"] == "plain_ce":
            assert r["time_ratio"] == 1.0 and set(r["ratios"]) == {1.0}
    # Liger needs CUDA: recorded as not run, and the other fused methods still measured.
    assert "not run" in secs["fused"]["liger"]
    assert {r["method"] for r in secs["fused"]["rows"]} == {"unfused_ce", "unfused_ual", "fused", "fused_recompute"}


def test_smoke_model_step_and_mfu(smoke):
    rec = smoke[0]
    ms = rec["sections"]["model_step"]
    assert {(r["layers"], r["method"]) for r in ms["rows"]} == {
        (n, m) for n in (2, 1) for m in ("hf_ce", "hf_label_smoother", "ual_logits", "ual_fused")}
    assert all(r["mfu_pct"] is not None and r["mfu_pct"] > 0 for r in ms["rows"])
    assert rec["sections"]["matmul_peak"]["peak_bf16_tflops"] > 0
    assert set(ms["per_layer_fit"]) == {"hf_ce", "hf_label_smoother", "ual_logits", "ual_fused"}


def test_smoke_trainer_trl_accelerate_generate(smoke):
    secs = smoke[0]["sections"]
    rows = {r["method"]: r for r in secs["trainer"]["rows"]}
    assert set(rows) == {"ual_trainer_fused", "ual_trainer_logits", "ual_sft_trainer_fused (TRL + UALLossMixin)",
                         "hf_trainer_ls", "trl_sft"}
    # Same model, data and seed: the fused and the logits path of UALTrainer log the same losses.
    assert rows["ual_trainer_fused"]["first_loss"] == pytest.approx(rows["ual_trainer_logits"]["first_loss"], rel=1e-3)
    acc = secs["accelerate"]
    assert acc["returncode"] == 0 and "accelerate.commands.launch" in acc["command"]
    assert acc["manifest"]["loss_path"] == "fused" and acc["manifest"]["world_size"] == 1
    assert [r["step"] for r in acc["rows"]] == [1, 2, 3]
    gen = secs["generate"]["rows"][0]
    assert gen["rows_written"] == gen["prompts"] and gen["new_tokens"] > 0


# ----------------------------------------------------------------------------------------------- the plumbing

def test_failing_section_recorded_time_cap_keeps_rows_budget_skips(tmp_path, monkeypatch):
    from benchmarks import gpu_check as gc

    out = tmp_path / "g.json"

    def boom(sec, ctx):
        assert json.loads(out.read_text())["sections"]["env"]["status"] == "ok"  # flushed before this section
        sec.row(x=1)
        raise ValueError("planted failure")

    def slow(sec, ctx):
        sec.row(x=2)
        time.sleep(30)

    def fine(sec, ctx):
        sec.check("fine", 0.0, 0.0)

    def late(sec, ctx):
        time.sleep(30)

    monkeypatch.setattr(gc, "FUNCS", {"env": lambda sec, ctx: None, "boom": boom, "slow": slow, "fine": fine,
                                      "late": late, "never": fine})
    monkeypatch.setattr(gc, "SECTIONS", [("env", 5), ("boom", 5), ("slow", 1), ("fine", 5), ("late", 30),
                                         ("never", 5)])
    monkeypatch.setattr(gc, "SMOKE_CAP_SCALE", 1)
    import torch  # noqa: F401  (imported before the budget starts: main imports it inside its budget)

    t0 = time.perf_counter()
    assert gc.main(["--smoke", "--out", str(out), "--budget-s", "6"]) == 0
    assert time.perf_counter() - t0 < 20
    rec = json.loads(out.read_text())
    s = rec["sections"]
    assert s["boom"]["status"] == "error" and "planted failure" in s["boom"]["error"]
    assert s["boom"]["rows"] == [{"x": 1}]
    assert s["slow"]["status"] == "timeout" and s["slow"]["rows"] == [{"x": 2}] and s["slow"]["seconds"] < 5
    assert s["fine"]["status"] == "ok" and s["fine"]["checks"][0]["passed"]
    assert s["late"]["status"] == "timeout" and s["late"]["cap_s"] < 6  # got only what was left of the budget
    assert s["never"]["status"] == "skipped" and "budget" in s["never"]["error"]
    assert rec["status"] == "complete"
    md = out.with_suffix(".md").read_text()
    assert "## boom: error" in md and "planted failure" in md


def test_wheel_list_and_make_targets():
    lines = [l.split("#")[0].strip() for l in (ROOT / "benchmarks" / "gpu_wheels.txt").read_text().splitlines()]
    pins = [l for l in lines if l]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", p) for p in pins), pins
    assert {p.split("==")[0] for p in pins} >= {"trl", "liger-kernel", "datasets"}
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^gpu-check:", make, re.M) and re.search(r"^gpu-wheels:", make, re.M)
    ignored = subprocess.run(["git", "check-ignore", "-q", ".gpu-wheels/py312/x.whl"], cwd=ROOT)
    assert ignored.returncode == 0, ".gpu-wheels/ must be git-ignored (it travels only through the device's carry)"
