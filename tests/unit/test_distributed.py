"""Two CPU processes (torch.distributed, gloo) give the loss curve of one process with the same global batch.

accelerate 1.x's ``launch --cpu`` starts a single process unless MPI is set up, so the CPU test launches with
torchrun (``torch.distributed.run``); the Trainer runs under accelerate either way.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, model_dir: Path, out: str, batch_size: int, fused: bool) -> Path:
    recs, scores = [], []
    for i in range(16):
        math_item = i % 2 == 0
        msgs = [{"role": "user", "content": f"What is {i} + 2?" if math_item else f"Name colour number {i}."},
                {"role": "assistant", "content": f"{i} + 2 = {i + 2}\n#### {i + 2}" if math_item else "teal"}]
        recs.append({"id": f"r{i}", "source": "math" if math_item else "chat", "messages": msgs})
        scores.append({"id": f"r{i}", "score": 3.0 + i if math_item else 80.0 - i})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scores))
    cfg = tmp_path / f"{out}.yaml"
    cfg.write_text(f"""model: {model_dir}
data: {tmp_path / 'train.jsonl'}
scores: {tmp_path / 'scores.jsonl'}
output_dir: {tmp_path / out}
method: ual
mean_eps: 0.2
template: chat
max_length: 64
batch_size: {batch_size}
grad_accum: 2
max_steps: 3
lora_dropout: 0.0
learning_rate: 0.01
lr_scheduler: constant
warmup_ratio: 0.0
save_steps: 10
fused_loss: {str(fused).lower()}
""")
    return cfg


def _losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "log.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "default-fused"])
def test_two_cpu_processes_match_one_process(tmp_path, tiny_model_dir, fused):
    """With the default (fused) config too: two processes switch to the logits path (the fused one would bypass
    DDP's wrapper), so the two-process run still gives the one-process losses."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one = _config(tmp_path, tiny_model_dir, "one", batch_size=4, fused=fused)
    two = _config(tmp_path, tiny_model_dir, "two", batch_size=2, fused=fused)
    subprocess.run([sys.executable, "-m", "ual", "train", "--config", str(one)], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=600)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29500 + os.getpid() % 1000 + 7 * fused), "-m", "ual", "train", "--config", str(two)],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, rel=1e-4 if fused else 1e-5, abs=1e-6)
    # Samples carry different eps, so equal losses also show that each eps stayed with its sample when sharded.
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["loss_path"] == "logits"
    if fused:
        assert "more than one process" in manifest["fused_reason"]
