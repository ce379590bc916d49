"""Training stage: eps per method, the collator, the Trainer's loss, accumulation equivalence, resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ual.common.errors import InputError
from ual.train import TrainConfig, UALCollator, fit, sample_eps
from ual.train.cli import load_train_config


def _write_data(d: Path, n: int = 8) -> tuple[Path, Path]:
    recs, scores = [], []
    for i in range(n):
        math_item = i % 2 == 0
        msgs = [{"role": "user", "content": f"What is {i}+1?" if math_item else "Name a colour."},
                {"role": "assistant", "content": f"{i}+1={i + 1}. #### {i + 1}" if math_item else ["red", "blue", "teal"][i % 3]}]
        recs.append({"id": f"s{i}", "source": "math" if math_item else "chat", "messages": msgs})
        scores.append({"id": f"s{i}", "score": 5.0 if math_item else 90.0})
    data, sc = d / "train.jsonl", d / "scores.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    sc.write_text("".join(json.dumps(r) + "\n" for r in scores))
    return data, sc


def _cfg(tmp_path, model_dir, **kw) -> TrainConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data, sc = _write_data(tmp_path)
    base = dict(model=str(model_dir), data=str(data), scores=str(sc), output_dir=str(tmp_path / "out"),
                batch_size=2, grad_accum=2, max_steps=4, save_steps=2, max_length=64, lora_dropout=0.0,
                learning_rate=1e-2, lr_scheduler="constant", warmup_ratio=0.0, template="chat", fused_loss=False)
    base.update(kw)
    return TrainConfig(**base)


def test_sample_eps_per_method(tmp_path, tiny_model_dir):
    from ual.data.records import load_records

    cfg = _cfg(tmp_path, tiny_model_dir, mean_eps=0.2)
    recs = load_records(cfg.data)
    ual = sample_eps(cfg, recs)
    assert abs(ual.mean() - 0.2) < 1e-3
    assert all(ual[i] < ual[i + 1] for i in range(0, len(recs), 2))  # math (low score) < chat (high score)
    cfg.method = "ls"
    assert np.allclose(sample_eps(cfg, recs), 0.2)
    cfg.method = "sft"
    assert np.allclose(sample_eps(cfg, recs), 0.0)


def test_ual_without_scores_is_an_input_error(tmp_path, tiny_model_dir):
    from ual.data.records import load_records

    cfg = _cfg(tmp_path, tiny_model_dir, scores=None)
    with pytest.raises(InputError, match="scores"):
        sample_eps(cfg, load_records(cfg.data))


def test_collator_pads_and_keeps_eps():
    col = UALCollator(pad_token_id=0)
    batch = col([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "eps": 0.3},
                 {"input_ids": [8], "labels": [8], "eps": 0.0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert torch.allclose(batch["eps"], torch.tensor([0.3, 0.0]))


def test_fit_writes_adapter_log_manifest_and_loss_falls(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, max_steps=12, save_steps=6)
    res = fit(cfg, progress=False)
    assert (res.adapter_dir / "adapter_config.json").exists()
    curve = res.loss_curve()
    assert len(curve) == 12
    assert np.mean([l for _, l in curve[-3:]]) < np.mean([l for _, l in curve[:3]])
    log = [json.loads(l) for l in res.log_path.read_text().splitlines()]
    assert all("eps_mean" in r for r in log if "loss" in r)
    m = json.loads(res.manifest_path.read_text())
    assert m["status"] == "complete" and m["config"]["method"] == "ual" and abs(m["eps"]["mean"] - 0.1) < 1e-3
    assert m["environment"]["packages"]["torch"]


def _adapter_state(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_model_dir):
    """4 x 1 accumulated must give the same update as 1 x 4: the loss is normalised by the global token count."""
    a = fit(_cfg(tmp_path / "a", tiny_model_dir, batch_size=4, grad_accum=1, max_steps=1), progress=False)
    b = fit(_cfg(tmp_path / "b", tiny_model_dir, batch_size=1, grad_accum=4, max_steps=1), progress=False)
    sa, sb = _adapter_state(a.output_dir), _adapter_state(b.output_dir)
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6), k


def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(tmp_path, tiny_model_dir):
    full = fit(_cfg(tmp_path / "full", tiny_model_dir, max_steps=4, save_steps=2), progress=False)
    part_cfg = _cfg(tmp_path / "part", tiny_model_dir, max_steps=4, save_steps=2)
    # Simulate a run killed after step 2: train 2 steps with the same schedule, then drop the later checkpoint.
    import shutil

    fit(part_cfg, progress=False)
    shutil.rmtree(Path(part_cfg.output_dir) / "checkpoints" / "checkpoint-4")
    shutil.rmtree(Path(part_cfg.output_dir) / "adapter")
    resumed = fit(part_cfg, progress=False)
    assert json.loads(resumed.manifest_path.read_text())["resumed_from"].endswith("checkpoint-2")
    sa, sb = _adapter_state(full.output_dir), _adapter_state(resumed.output_dir)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    full_curve = full.loss_curve()
    assert [s for s, _ in resumed.loss_curve()] == [1, 2, 3, 4]
    assert np.allclose([l for _, l in resumed.loss_curve()], [l for _, l in full_curve])


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  method: ual\n  lerning_rate: 0.1\n")
    with pytest.raises(InputError, match="lerning_rate"):
        load_train_config(p)
    p.write_text("method: ual\nbatch_size: two\n")
    with pytest.raises(InputError, match="batch_size"):
        load_train_config(p)
    cfg = load_train_config(None, ["method=ls", "mean_eps=0.3"])
    assert cfg.method == "ls" and cfg.mean_eps == 0.3


def test_cli_exits_2_on_bad_config(tmp_path, capsys):
    from ual.__main__ import main

    assert main(["train", "--set", "method=dpo", "--set", "data=x.jsonl"]) == 2
    assert "method" in capsys.readouterr().err


def test_replacement_sampler_is_seeded_per_epoch_and_draws_with_replacement():
    from ual.train.trainer import EpochPermutationSampler, EpochReplacementSampler

    s = EpochReplacementSampler(50, seed=7)
    first = list(s)
    assert len(first) == 50 and len(set(first)) < 50 and list(s) == first  # repeats; same epoch, same draws
    s.set_epoch(1)
    assert list(s) != first
    p = EpochPermutationSampler(50, seed=7)
    assert sorted(p) == list(range(50))


def test_a_huge_record_is_cut_before_tokenizing(tiny_model_dir):
    import time

    from ual.common.models import load_tokenizer
    from ual.data.records import Record
    from ual.train.examples import MAX_CHARS_PER_TOKEN, cut_messages, tokenize_records

    msgs = [{"role": "user", "content": "a" * 10}, {"role": "assistant", "content": "b" * 20},
            {"role": "user", "content": "c"}]
    assert cut_messages(msgs, 15) == [msgs[0], {"role": "assistant", "content": "b" * 5}]
    assert cut_messages(msgs, 100) == msgs
    tok = load_tokenizer(str(tiny_model_dir))
    huge = Record("h", "s", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x" * 20_000_000}])
    t0 = time.perf_counter()
    ex = tokenize_records([huge], tok, [0.1], template="chat", mask_prompt=False, max_length=32)
    assert len(ex[0]["input_ids"]) == 32 and time.perf_counter() - t0 < 30
    assert MAX_CHARS_PER_TOKEN * 32 < 20_000_000
