"""Run directories: ids are names, one process per run id, truthful resume hints, --from checks (issue 17)."""
from __future__ import annotations

import pytest

from ual.__main__ import main
from ual.common.errors import InputError
from ual.pipeline import check_run_id, resolve_profile, resume_command, run, run_lock


@pytest.mark.parametrize("bad", ["..", ".", "../../x", "/etc", "a/b", "", "-x", "x" * 101, "a b"])
def test_run_ids_that_are_paths_are_refused_before_any_work(bad, tmp_path, capsys):
    assert main(["run", "--profile", "tiny", f"--run-id={bad}", "--runs-root", str(tmp_path), "--dry-run"]) == 2
    assert "run_id" in capsys.readouterr().err
    prof = resolve_profile("tiny")
    prof.run.run_id = bad or "."  # "" in a profile means "the profile's name"
    with pytest.raises(InputError, match="run_id"):
        run(prof, runs_root=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_run_ids_are_strings_as_typed(tmp_path, capsys):
    assert check_run_id("0012") == "0012" and check_run_id("2024") == "2024" and check_run_id("null") == "null"
    assert main(["run", "--profile", "tiny", "--run-id", "0012", "--dry-run"]) == 0
    assert '"run_id": "0012"' in capsys.readouterr().out
    p = tmp_path / "p.yaml"
    p.write_text("extends: tiny\nrun:\n  run_id: 2024\n")
    with pytest.raises(InputError, match="run.run_id"):
        resolve_profile(str(p))


def test_a_run_id_in_use_is_refused_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    d = tmp_path / "r"
    d.mkdir()
    with run_lock(d):
        with pytest.raises(InputError, match="in use by process"):
            with run_lock(d):
                pass
    (d / ".lock").write_text("999999999")  # a PID that no process has: its lock died with it
    with run_lock(d):
        pass
    assert "no longer running" in capsys.readouterr().out


def test_resume_command_reproduces_run_id_runs_root_and_overrides(tmp_path):
    prof = resolve_profile("tiny", ["train.max_steps=3", "evaluate.k_samples=2"])
    prof.run.run_id = "mine"
    cmd = resume_command(prof, tmp_path / "rr", "train")
    assert cmd.startswith("python -m ual run --profile tiny --run-id mine --runs-root ")
    assert "--set train.max_steps=3 --set evaluate.k_samples=2 --from train" in cmd


def test_from_needs_the_earlier_stages_complete_with_these_settings(tmp_path):
    with pytest.raises(InputError, match="--from train needs stage 'data'"):
        run(resolve_profile("tiny"), runs_root=tmp_path, from_stage="train", progress=False)


@pytest.mark.parametrize("override, key", [
    ("train.methods=[foo]", "train.methods"), ("train.epochs=.nan", "train.epochs"),
    ("train.learning_rate=.nan", "train.learning_rate"), ("train.learning_rate=-1", "train.learning_rate"),
    ("train.lora_dropout=1.5", "train.lora_dropout"), ("train.seeds=[]", "train.seeds"),
    ("evaluate.batch_size=0", "evaluate.batch_size"), ("evaluate.k_samples=-1", "evaluate.k_samples"),
    ("data.n_train_low=-3", "data.n_train_low"), ("figures.dpi=0", "figures.dpi"), ("train.mean_eps=1.5", "train.mean_eps"),
])
def test_bad_values_stop_before_any_stage_naming_set_and_the_key(override, key, tmp_path, capsys):
    with pytest.raises(InputError) as e:
        resolve_profile("tiny", [override])
    assert str(e.value).startswith("--set") and f'"{key}"' in str(e.value)
    assert main(["run", "--profile", "tiny", "--set", override, "--runs-root", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_a_bad_value_in_a_profile_names_the_file_and_the_key(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("extends: tiny\ntrain:\n  lora_dropout: 1.5\n")
    with pytest.raises(InputError, match=r'p\.yaml: field "train\.lora_dropout"'):
        resolve_profile(str(p))
