"""The elicitation stage of a run: score ``<run_dir>/data/train.jsonl`` into ``<run_dir>/elicit/scores.jsonl``."""
from __future__ import annotations

from pathlib import Path

from ual.common.errors import InputError
from ual.elicit.config import ElicitConfig


def run(cfg: ElicitConfig, run_dir: str | Path) -> dict:
    """Elicit scores for the run's training set with ``cfg``; resumable. Returns the summary, plus
    ``auroc_by_family`` when the data are the controlled benchmark (score vs high/low-entropy family)."""
    from ual.data.records import load_records
    from ual.elicit.scoring import elicit

    run_dir = Path(run_dir)
    records = load_records(run_dir / "data" / "train.jsonl")
    summary = elicit(cfg, records, run_dir / "elicit" / "scores.jsonl")
    if summary["file_missing"]:
        reasons = "; ".join(f"{n} x {why}" for why, n in summary["failed_reasons"].items())
        raise InputError(run_dir / "elicit" / "scores.jsonl", None, "score",
                         f"{summary['file_missing']} of {summary['records']} samples have no score ({reasons}); "
                         "run the stage again to retry them (retry_failed is on by default)")
    if any(r.source.startswith("controlled-") for r in records):
        summary["auroc_by_family"] = family_auroc(run_dir)
    return summary


def family_auroc(run_dir: str | Path) -> float | None:
    """AUROC of the run's scores for telling high-entropy training samples from low-entropy ones (controlled data)."""
    from ual.data.records import load_records
    from ual.elicit.scoring import latest_rows
    from ual.evaluate.metrics.controlled import entropy_class_auroc

    run_dir = Path(run_dir)
    rows = latest_rows(run_dir / "elicit" / "scores.jsonl")
    scores = {i: row["score"] for i, (_, row) in rows.items() if row.get("score") is not None}
    records = load_records(run_dir / "data" / "train.jsonl")
    return entropy_class_auroc(scores, [r for r in records if r.id in scores])


def scores_table(run_dir: str | Path):
    """Per-source score statistics of the run (pandas DataFrame; see ``ual.elicit.scores_summary``)."""
    from ual.data.records import load_records
    from ual.elicit.report import scores_summary

    run_dir = Path(run_dir)
    return scores_summary(run_dir / "elicit" / "scores.jsonl", load_records(run_dir / "data" / "train.jsonl"))
