"""The control and peer training methods: oracle and shuffled eps, dft and eaft losses in the trainer, the grid."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ual.common.errors import InputError
from ual.data.controlled import HIGH_SOURCE, LOW_SOURCE
from ual.data.records import load_records
from ual.train import TrainConfig, fit, sample_eps
from ual.train.config import TrainStageConfig
from ual.train.stage import variant_config, variant_name, variants


def _write(d: Path, n: int = 8, sources=(LOW_SOURCE, HIGH_SOURCE)) -> tuple[Path, Path]:
    d.mkdir(parents=True, exist_ok=True)
    recs, scores = [], []
    for i in range(n):
        low = i % 4 != 0  # 6 low, 2 high: unequal classes test the oracle's rescaling
        msgs = [{"role": "user", "content": f"What is {i}+1?" if low else "Name a colour."},
                {"role": "assistant", "content": f"{i}+1={i + 1}\n#### {i + 1}" if low else "Teal"}]
        recs.append({"id": f"s{i}", "source": sources[0] if low else sources[1], "messages": msgs,
                     "category": "math" if low else "colour"})
        scores.append({"id": f"s{i}", "score": 1.0 + i})
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scores))
    return d / "train.jsonl", d / "scores.jsonl"


def _cfg(d: Path, model_dir, **kw) -> TrainConfig:
    data, sc = _write(d)
    base = dict(model=str(model_dir), data=str(data), scores=str(sc), output_dir=str(d / "out"), batch_size=2,
                grad_accum=1, max_steps=3, save_steps=3, max_length=64, lora_dropout=0.0, learning_rate=1e-2,
                lr_scheduler="constant", warmup_ratio=0.0, template="chat", score_range=None, mean_eps=0.2)
    base.update(kw)
    return TrainConfig(**base)


def test_oracle_eps_is_zero_on_low_and_keeps_the_mean(tmp_path):
    cfg = _cfg(tmp_path, "tiny-random", method="oracle")
    recs = load_records(cfg.data)
    eps = sample_eps(cfg, recs)
    high = np.array([r.source == HIGH_SOURCE for r in recs])
    assert np.all(eps[~high] == 0)
    assert np.allclose(eps[high], 0.2 * 8 / 2)
    assert eps.mean() == pytest.approx(0.2)


def test_oracle_rejects_other_sources_and_eps_over_the_cap(tmp_path):
    data, _ = _write(tmp_path / "a", sources=("gsm8k", "chat"))
    cfg = _cfg(tmp_path / "b", "tiny-random", method="oracle")
    with pytest.raises(InputError, match="controlled-benchmark"):
        sample_eps(cfg, load_records(data))
    cfg = _cfg(tmp_path / "c", "tiny-random", method="oracle", mean_eps=0.3)  # 0.3 * 8 / 2 = 1.2 > cap
    with pytest.raises(InputError, match="eps_cap"):
        sample_eps(cfg, load_records(cfg.data))


def test_shuffled_is_a_seeded_permutation_of_ual(tmp_path):
    cfg = _cfg(tmp_path, "tiny-random", method="ual")
    recs = load_records(cfg.data)
    ual = sample_eps(cfg, recs)
    cfg.method = "shuffled"
    sh = sample_eps(cfg, recs)
    assert np.allclose(np.sort(sh), np.sort(ual)) and not np.allclose(sh, ual)
    assert np.array_equal(sh, sample_eps(cfg, recs))  # same seed, same assignment
    cfg.seed += 1
    assert not np.array_equal(sh, sample_eps(cfg, recs))
    cfg.scores = None
    with pytest.raises(InputError, match="scores"):
        sample_eps(cfg, recs)


@pytest.mark.parametrize("method", ["dft", "eaft"])
def test_token_weighted_methods_have_zero_eps(tmp_path, method):
    cfg = _cfg(tmp_path, "tiny-random", method=method, scores=None)
    assert np.all(sample_eps(cfg, load_records(cfg.data)) == 0)


def test_grid_names_and_extra_variants(tmp_path):
    cfg = TrainStageConfig(methods=["sft", "ls", "ual", "oracle", "shuffled", "dft", "eaft"], mean_eps=[0.2],
                           seeds=[1, 2], extra_variants=[{"method": "ls", "mean_eps": 0.1, "seed": 1},
                                                         {"method": "ual", "mean_eps": 0.2, "seed": 1}])
    names = [variant_name(v.method, v.mean_eps, v.seed) for v in variants(cfg)]
    assert names.count("ual_eps0.2_seed1") == 1 and "ls_eps0.1_seed1" in names
    assert "dft_seed1" in names and "eaft_seed2" in names and "oracle_eps0.2_seed2" in names
    assert len(names) == 2 * 7 + 1
    v = variant_config(next(v for v in variants(cfg) if v.method == "shuffled"), tmp_path)
    assert v.scores and v.scores.endswith("elicit/scores.jsonl")
    with pytest.raises(InputError, match=r"extra_variants\[0\]"):
        TrainStageConfig(extra_variants=[{"method": "ls", "mean_eps": 0.1}])
    with pytest.raises(InputError, match="method"):
        TrainStageConfig(extra_variants=[{"method": "focal", "mean_eps": 0.1, "seed": 1}])


@pytest.mark.parametrize("method", ["dft", "eaft"])
def test_fit_runs_token_weighted_methods_on_both_loss_paths(tmp_path, tiny_model_dir, method):
    """The hidden-state path and the logits path train the same adapter; the manifest says which path ran."""
    outs = {}
    for fused in (True, False):
        cfg = _cfg(tmp_path / f"{method}{fused}", tiny_model_dir, method=method, scores=None, fused_loss=fused,
                   mask_prompt=True)
        res = fit(cfg, progress=False)
        m = json.loads(res.manifest_path.read_text())
        assert m["status"] == "complete" and m["loss_path"] == ("fused" if fused else "logits")
        if fused:
            assert method in m["fused_reason"]
        from safetensors.torch import load_file

        outs[fused] = load_file(str(res.adapter_dir / "adapter_model.safetensors"))
    for k in outs[True]:
        assert torch.allclose(outs[True][k], outs[False][k], atol=1e-5), k


def test_trainer_rejects_unknown_loss_type(tiny_model_dir):
    from ual.train import UALTrainer

    with pytest.raises(ValueError, match="loss_type"):
        UALTrainer(model=None, loss_type="focal")
