"""The reward models committed under results/ava/models (issue 19): complete, loadable folders whose reward head
was trained, so that anyone can score pairs with ``rm-eval --model`` without training."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "results" / "ava" / "models"
FOLDERS = sorted(p for p in MODELS.iterdir() if p.is_dir()) if MODELS.is_dir() else []


def test_both_kinds_are_committed():
    assert {json.loads((f / "manifest.json").read_text())["config"]["method"] for f in FOLDERS} == {"ava_p", "bt_rm"}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_folder_is_a_complete_reward_model(folder):
    from safetensors import safe_open

    man = json.loads((folder / "manifest.json").read_text())
    assert man["status"] == "complete" and man["global_step"] == man["total_steps"] > 0
    assert man["config"]["model"] == "smollm2-135m"  # the embedded default: no download needed to score
    assert json.loads((folder / "ava.json").read_text())["objective"]["method"] == man["config"]["method"]
    assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["modules_to_save"] == ["reward_head"]
    with safe_open(str(folder / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        head = f.get_tensor(next(k for k in keys if k.endswith("reward_head.proj.weight")))
        lora = [k for k in keys if "lora_B" in k]
        assert lora and any(float(f.get_tensor(k).abs().sum()) > 0 for k in lora)  # LoRA B starts at 0: trained
    assert head.shape[0] == 2 and float(head.abs().sum()) > 0  # (mu, log sigma); zero-initialised, so trained
