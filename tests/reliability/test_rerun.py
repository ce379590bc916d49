"""A changed setting never returns stale results; a finished variant is never trained further (issue 17, 1 and 4)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import pytest

from ual.data.controlled import make_dataset
from ual.data.records import save_records
from ual.train import TrainConfig, fit


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cfg(tiny_model_dir, tmp_path):
    train, _, _ = make_dataset(4, 4, 0, 0, seed=3)
    save_records(tmp_path / "train.jsonl", train)
    return TrainConfig(model=str(tiny_model_dir), data=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / "o"),
                       method="ls", batch_size=4, grad_accum=1, max_steps=2, save_steps=1, template="chat",
                       max_length=64, lr_scheduler="constant", warmup_ratio=0.0, fused_loss=False)


def test_a_finished_variant_is_reused_and_never_trained_further(cfg, tmp_path):
    fit(cfg, progress=False)
    adapter = tmp_path / "o" / "adapter" / "adapter_model.safetensors"
    before = _sha(adapter)
    fit(cfg, progress=False)
    assert _sha(adapter) == before
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["global_step"] == 2


def test_changed_setting_or_data_content_retrains_from_scratch(cfg, tmp_path):
    fit(cfg, progress=False)
    adapter = tmp_path / "o" / "adapter" / "adapter_model.safetensors"
    first = _sha(adapter)
    fit(dataclasses.replace(cfg, learning_rate=0.05), progress=False)
    second = _sha(adapter)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert second != first and manifest["global_step"] == 2 and manifest["resumed_from"] is None
    # same path, other content: retrained too
    train, _, _ = make_dataset(4, 4, 0, 0, seed=4)
    save_records(tmp_path / "train.jsonl", train)
    fit(dataclasses.replace(cfg, learning_rate=0.05), progress=False)
    assert _sha(adapter) != second


def test_killed_after_the_last_checkpoint_finishes_without_an_extra_step(cfg, tmp_path):
    fit(cfg, progress=False)
    out = tmp_path / "o"
    final = _sha(out / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    shutil.rmtree(out / "adapter")  # as if killed between the last checkpoint and saving the adapter
    m = json.loads((out / "manifest.json").read_text())
    m["status"] = "running"
    (out / "manifest.json").write_text(json.dumps(m))
    fit(cfg, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["global_step"] == 2
    assert _sha(out / "adapter" / "adapter_model.safetensors") == final


def test_a_setting_left_at_its_default_does_not_enter_the_fingerprint(cfg):
    from ual.train.fitting import inputs_fingerprint

    assert inputs_fingerprint(cfg) == inputs_fingerprint(dataclasses.replace(cfg, sampler="permutation"))
    assert inputs_fingerprint(cfg) != inputs_fingerprint(dataclasses.replace(cfg, sampler="replacement"))
