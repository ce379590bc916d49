"""The whole pipeline through papermill on profiles/tiny.yaml (tiny random model, a few generated samples)."""
from __future__ import annotations

import json

import pytest

from ual.pipeline import STAGES, StageFailed, resolve_profile, run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run_dir = run(resolve_profile("tiny"), runs_root=root, progress=False)
    return root, run_dir


def test_all_stages_complete_with_metrics_and_figures(tiny_run):
    _, run_dir = tiny_run
    m = json.loads((run_dir / "manifest.json").read_text())
    assert [m["stages"][s]["status"] for s in STAGES] == ["complete"] * 5
    assert m["environment"]["git_commit"] is None or len(m["environment"]["git_commit"]) >= 40
    assert m["parameters"]["train"]["methods"] == ["sft", "ls", "ual"] and m["seeds"]["data"] == 1337
    for nb in ("00_data", "01_elicit", "02_train", "03_evaluate", "04_figures"):
        executed = json.loads((run_dir / "notebooks" / f"{nb}.ipynb").read_text())
        errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, nb
    methods = {json.loads(p.read_text())["method"] for p in run_dir.glob("evaluate/*/metrics.json")}
    assert methods == {"base", "sft", "ls", "ual"}
    ual = json.loads(next(run_dir.glob("evaluate/ual_*/metrics.json")).read_text())
    assert "controlled" in ual and ual["controlled"]["low"]["n_items"] == 4 and ual["clustering"]["n_pairs"] == 6
    for fig in ("score_distribution", "eps_distribution", "loss_curves", "method_comparison", "reliability_diagram",
                "clustering_distribution"):
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    eps = [json.loads(l)["eps"] for l in (run_dir / "train" / "ual_eps0.1_seed1337" / "eps.jsonl").read_text().splitlines()]
    assert abs(sum(eps) / len(eps) - 0.1) < 1e-3 and len(set(eps)) > 1


def test_rerun_skips_completed_stages(tiny_run, capsys):
    root, run_dir = tiny_run
    before = (run_dir / "evaluate" / "ual_eps0.1_seed1337" / "metrics.json").stat().st_mtime
    run(resolve_profile("tiny"), runs_root=root, progress=False)
    out = capsys.readouterr().out
    assert out.count("complete with the same inputs, skipped") == 5
    assert (run_dir / "evaluate" / "ual_eps0.1_seed1337" / "metrics.json").stat().st_mtime == before


def test_forced_rerun_keeps_the_earlier_attempt_in_the_manifest(tiny_run):
    root, run_dir = tiny_run
    first = json.loads((run_dir / "manifest.json").read_text())["stages"]["figures"]
    run(resolve_profile("tiny"), runs_root=root, only="figures", progress=False)
    again = json.loads((run_dir / "manifest.json").read_text())["stages"]["figures"]
    assert again["status"] == "complete" and again["started"] != first["started"]
    assert again["history"][-1] == {k: first[k] for k in ("status", "started", "finished", "seconds",
                                                          "peak_rss_gib")}


def test_figures_rebuild_from_exported_files_alone(tiny_run, tmp_path):
    from ual.__main__ import main
    from ual.figures.results import markdown_summary

    _, run_dir = tiny_run
    exported = tmp_path / "results"
    assert main(["export-results", "--run", str(run_dir), "--out", str(exported)]) == 0
    assert not list(exported.rglob("*.safetensors")) and not list(exported.rglob("checkpoint-*"))
    assert main(["figures", "--run", str(exported)]) == 0
    from ual.figures.plots import FIGURES

    assert sorted(p.stem for p in (exported / "figures").glob("*.png")) == sorted(FIGURES)
    table = markdown_summary(exported)
    assert table.splitlines()[0] == "| metric | base | sft | ls eps=0.1 | ual eps=0.1 |"


def test_a_failing_stage_keeps_its_notebook_and_says_how_to_resume(tmp_path):
    prof = resolve_profile("tiny", ["elicit.model=/nonexistent/model-folder"])
    with pytest.raises(StageFailed) as e:
        run(prof, runs_root=tmp_path, progress=False)
    assert e.value.stage == "elicit" and e.value.notebook.exists()
    assert "--from elicit" in str(e.value)
    m = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert m["stages"]["data"]["status"] == "complete" and m["stages"]["elicit"]["status"] == "failed"


def test_a_changed_setting_on_the_same_run_id_changes_adapters_and_metrics(tiny_run):
    """Issue 17, defect 1: the documented rerun workflow must never return the old results (runs last: it changes
    the shared run)."""
    import hashlib

    root, run_dir = tiny_run

    def digests(pattern):
        return {p.relative_to(run_dir): hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.glob(pattern)}

    adapters, metrics = digests("train/*/adapter/adapter_model.safetensors"), digests("evaluate/*_seed*/metrics.json")
    run(resolve_profile("tiny", ["train.learning_rate=0.05"]), runs_root=root, progress=False)
    new_adapters, new_metrics = digests("train/*/adapter/adapter_model.safetensors"), digests("evaluate/*_seed*/metrics.json")
    assert new_adapters.keys() == adapters.keys() and all(new_adapters[k] != adapters[k] for k in adapters)
    assert all(new_metrics[k] != metrics[k] for k in metrics)
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["parameters"]["train"]["learning_rate"] == 0.05
