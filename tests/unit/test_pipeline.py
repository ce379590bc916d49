"""Profiles, overrides, parameters cells that mirror the stage configs, and the dry run."""
import dataclasses
import json
from pathlib import Path

import nbformat
import pytest

from ual.common.errors import InputError
from ual.common.config import parameters_cell
from ual.pipeline import (NOTEBOOK_DEFAULTS, NOTEBOOK_OF, NOTEBOOKS, PROFILES, STAGES, dry_run, resolve_profile,
                          stage_config_classes)


def _parameters_cell(stage):
    nb = nbformat.read(NOTEBOOKS / NOTEBOOK_OF[stage], as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    return tagged[0].source


@pytest.mark.parametrize("stage", STAGES)
def test_parameters_cell_mirrors_the_stage_config(stage):
    cls = stage_config_classes()[stage]
    source = _parameters_cell(stage)
    # the cell is the generated one: same names, defaults and help texts as the Config
    assert source == parameters_cell(cls, overrides=NOTEBOOK_DEFAULTS.get(stage))
    ns: dict = {}
    exec(source, ns)
    params = {k: v for k, v in ns.items() if not k.startswith("__") and k != "Optional"}
    assert params.pop("run_dir") and params.pop("profile") == ""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cls)}
    defaults.update(NOTEBOOK_DEFAULTS.get(stage, {}))
    assert params == defaults
    assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), "every field is documented"


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES.glob("*.yaml")))
def test_every_profile_resolves(profile):
    resolve_profile(profile)


def test_overrides_unknown_keys_and_secrets(tmp_path):
    prof = resolve_profile("tiny", ["train.max_steps=7", "evaluate.k_samples=3"])
    assert prof.stages["train"].max_steps == 7 and prof.stages["evaluate"].k_samples == 3
    with pytest.raises(InputError, match="lerning_rate"):
        resolve_profile("tiny", ["train.lerning_rate=1"])
    with pytest.raises(InputError, match="expected int"):
        resolve_profile("tiny", ["train.max_steps=many"])
    bad = tmp_path / "p.yaml"
    bad.write_text("elicit:\n  backend: openai\n  api_key: sk-123\n")
    with pytest.raises(InputError, match="secrets"):
        resolve_profile(str(bad))
    bad.write_text("trainn:\n  max_steps: 1\n")
    with pytest.raises(InputError, match="unknown section"):
        resolve_profile(str(bad))


def test_dry_run_checks_paths_and_lists_variants(tmp_path):
    plan = dry_run(resolve_profile("tiny"))
    assert plan["stages"]["train"] == ["sft_seed1337", "ls_eps0.1_seed1337", "ual_eps0.1_seed1337"]
    p = tmp_path / "p.yaml"
    p.write_text("data:\n  kind: mix\n  train_sources: [{path: /nope/train.jsonl, n: 3}]\n")
    with pytest.raises(InputError, match="not found"):
        dry_run(resolve_profile(str(p)))


def test_extends_lists_only_what_differs(tmp_path):
    mistral = resolve_profile("paper-mistral-7b")
    llama = resolve_profile("paper-llama2-7b")
    assert mistral.stages["train"].model == "mistralai/Mistral-7B-v0.1" and mistral.stages["train"].max_length == 768
    for stage in STAGES:
        a, b = dataclasses.asdict(mistral.stages[stage]), dataclasses.asdict(llama.stages[stage])
        diff = {k for k in a if a[k] != b[k]}
        assert diff <= {"model", "max_length"}, (stage, diff)
    loop = tmp_path / "a.yaml"
    loop.write_text("extends: a.yaml\n")
    with pytest.raises(InputError, match="loop"):
        resolve_profile(str(loop))


def test_set_one_value_for_a_grid_and_errors_that_name_set():
    assert resolve_profile("tiny", ["train.mean_eps=0.2"]).stages["train"].mean_eps == [0.2]
    assert resolve_profile("tiny", ["train.methods=ual"]).stages["train"].methods == ["ual"]
    with pytest.raises(InputError, match=r"--set.*did you mean 'learning_rate'"):
        resolve_profile("tiny", ["train.lerning_rate=1"])
    with pytest.raises(InputError, match=r"--set.*did you mean 'train'"):
        resolve_profile("tiny", ["trian.max_steps=1"])
