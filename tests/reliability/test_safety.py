"""Output folders are checked before work; weights load as safetensors without remote code unless asked."""
from __future__ import annotations

import pytest
import torch

from ual.common.errors import InputError
from ual.common.io import check_writable


def test_unwritable_output_dir_fails_before_training(tmp_path):
    from ual.train import TrainConfig, fit

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = TrainConfig(model="tiny-random", data=str(tmp_path / "missing.jsonl"), method="sft",
                      output_dir=str(blocker / "out"))
    with pytest.raises(InputError, match="not writable"):
        fit(cfg)


def test_disk_space_check():
    with pytest.raises(InputError, match="MB free"):
        check_writable("/tmp", min_free_mb=1e12)


def test_pickled_weights_need_an_explicit_flag(tmp_path, tiny_model_dir):
    from ual.common.models import load_model

    model = load_model(str(tiny_model_dir))
    pickled = tmp_path / "pickled"
    model.save_pretrained(pickled)
    # A pickled checkpoint as older hub repos ship it (transformers 5 writes only safetensors itself).
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError):
        load_model(str(pickled))
    again = load_model(str(pickled), allow_pickle=True)
    x = torch.tensor([[1, 2, 3]])
    assert torch.equal(again(x).logits, model(x).logits)
