"""The interactive path: each stage notebook opened as a person would, top to bottom, with its own defaults and
only ``profile`` set (as typed into the parameters cell in Lab), kernel started in ``notebooks/``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import papermill as pm

from ual.common.paths import run_path
from ual.pipeline import NOTEBOOK_OF, NOTEBOOKS, STAGES, ensure_kernel

REPO = Path(__file__).resolve().parents[2]


def test_relative_run_dir_goes_under_the_repository_runs(monkeypatch):
    monkeypatch.delenv("UAL_RUNS_DIR", raising=False)
    monkeypatch.chdir(REPO / "notebooks")
    assert run_path("runs/dev") == REPO / "runs" / "dev"
    monkeypatch.chdir(REPO.parent)
    assert run_path("runs/dev") == (REPO.parent / "runs" / "dev").resolve()


def test_each_notebook_runs_top_to_bottom_with_its_defaults_and_a_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("UAL_RUNS_DIR", str(tmp_path))  # the default run_dir "runs/dev" lands in tmp_path/dev
    kernel = ensure_kernel()
    for stage in STAGES:
        out = tmp_path / NOTEBOOK_OF[stage]
        pm.execute_notebook(str(NOTEBOOKS / NOTEBOOK_OF[stage]), str(out), parameters={"profile": "tiny"},
                            kernel_name=kernel, progress_bar=False, cwd=str(REPO / "notebooks"))
        nb = json.loads(out.read_text())
        assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"], stage
    run = tmp_path / "dev"
    assert (run / "data" / "train.jsonl").exists() and (run / "elicit" / "scores.jsonl").exists()
    assert {p.parent.name for p in run.glob("evaluate/*/metrics.json")} >= {"base", "sft_seed1337"}
    assert len(list((run / "figures").glob("*.png"))) >= 5
    assert not (REPO / "notebooks" / "runs").exists()
    assert os.environ["UAL_RUNS_DIR"] == str(tmp_path)
