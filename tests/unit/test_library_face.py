"""ual as a library in other people's training scripts: the README's TRL example, UALTrainer, report_to."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## UAL in your own training script"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_trl_example_trains_with_each_samples_eps(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("trl")
    import torch

    from ual.loss import smoothed_cross_entropy

    code = _readme_example()
    assert code.count('"HuggingFaceTB/SmolLM2-135M-Instruct"') == 1
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code.replace('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(str(tiny_model_dir))), "README", "exec"),
         ns)
    trainer, dataset, tok = ns["trainer"], ns["dataset"], ns["tokenizer"]
    assert trainer.state.global_step == 2
    batch = ns["UALCollator"](tok.pad_token_id)([dict(r) for r in dataset])
    model = trainer.model.eval()
    with torch.no_grad():
        got = trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        want = smoothed_cross_entropy(logits, batch["labels"], batch["eps"])
        plain = smoothed_cross_entropy(logits, batch["labels"], torch.zeros(2))
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    assert abs(float(got) - float(plain)) > 1e-3  # eps really reached the loss


def test_collator_without_eps_says_how_to_keep_the_column():
    from ual.train import UALCollator

    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        UALCollator(0)([{"input_ids": [1, 2]}])


def test_collator_masks_trl_completion_and_pads():
    from ual.train import UALCollator

    b = UALCollator(0)([{"input_ids": [5, 6, 7], "completion_mask": [0, 1, 1], "eps": 0.2},
                        {"input_ids": [8], "eps": 0.0}])
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["eps"].tolist() == pytest.approx([0.2, 0.0])


def test_report_to_tensorboard_writes_event_files(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from ual.data.controlled import make_dataset
    from ual.data.records import save_records
    from ual.train import TrainConfig, fit

    train, _, _ = make_dataset(4, 4, 0, 0, seed=1)
    save_records(tmp_path / "train.jsonl", train)
    cfg = TrainConfig(model=str(tiny_model_dir), data=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / "o"),
                      method="ls", batch_size=4, grad_accum=1, max_steps=2, template="chat", max_length=64,
                      report_to="tensorboard")
    fit(cfg, progress=False)
    assert list((tmp_path / "o").rglob("events.out.tfevents.*"))
