"""Judge-free chat-set measures: distinct-n, the per-record chat file, its metrics and its bootstrap items."""
from __future__ import annotations

import json
import math

import pytest

from ual.data.records import Record
from ual.common.errors import InputError
from ual.evaluate.metrics.diversity import distinct_n, words
from ual.evaluate.likelihood import gold_answer_nll
from ual.evaluate.metrics.run_files import chat_metrics
from ual.evaluate.stage import chat_extras
from ual.common.models import build_tiny_model


def test_distinct_n_dense_reference():
    assert words("Ahoy, matey! Ahoy") == ["ahoy", ",", "matey", "!", "ahoy"]
    # 5 words: unigrams {ahoy, ",", matey, "!"} = 4 of 5; bigrams all 4 distinct
    assert distinct_n("Ahoy, matey! Ahoy", 1) == pytest.approx(4 / 5)
    assert distinct_n("Ahoy, matey! Ahoy", 2) == 1.0
    assert distinct_n("a b a b a b", 2) == pytest.approx(2 / 5)
    assert math.isnan(distinct_n("one", 2)) and math.isnan(distinct_n("", 1))
    with pytest.raises(ValueError):
        distinct_n("x", 0)


RECS = [Record("p1", "chat", [{"role": "user", "content": "Greet me like a pirate."},
                              {"role": "assistant", "content": "Ahoy there, matey!"}]),
        Record("p2", "chat", [{"role": "user", "content": "Say one word."},
                              {"role": "assistant", "content": "Fine."}])]


def _gens(path, outputs):
    path.write_text("".join(json.dumps({"id": i, "prompt": "", "output": o}) + "\n" for i, o in outputs.items()))


def test_chat_extras_rows_match_their_references(tmp_path):
    model, tok = build_tiny_model(None, seed=3)
    model.eval()
    gens = tmp_path / "generations_chat.jsonl"
    _gens(gens, {"p1": "yo ho yo ho yo ho", "p2": ["ok", "unused second sample"]})
    out = tmp_path / "chat_chat.jsonl"
    chat_extras(model, tok, RECS, gens, out, batch_size=2, template="chat")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    nll = gold_answer_nll(model, tok, RECS, template="chat", batch_size=1)
    assert [r["id"] for r in rows] == ["p1", "p2"]
    assert [r["reference_nll_per_token"] for r in rows] == [pytest.approx(n) for n in nll]
    assert rows[0]["distinct_2"] == pytest.approx(distinct_n("yo ho yo ho yo ho", 2))
    assert rows[1]["distinct_2"] is None and rows[1]["distinct_1"] == 1.0 and rows[1]["output_chars"] == 2
    m = chat_metrics(out)
    assert m["n"] == 2 and m["distinct_2"] == pytest.approx(rows[0]["distinct_2"])  # the null is left out
    assert m["reference_nll_per_token"] == pytest.approx(sum(nll) / 2)
    # written once: a second call leaves the file as it is
    before = out.read_text()
    chat_extras(model, tok, RECS, gens, out, batch_size=2, template="chat")
    assert out.read_text() == before
    # a record without a generation is named, and nothing is written
    _gens(gens, {"p1": "x"})
    with pytest.raises(InputError) as e:
        chat_extras(model, tok, RECS, gens, tmp_path / "other.jsonl", batch_size=2, template="chat")
    assert e.value.field == "id" and "p2" in str(e.value)
    assert not (tmp_path / "other.jsonl").exists()


def test_chat_items_in_bootstrap(tmp_path):
    from ual.figures.bootstrap import bootstrap_table

    for name, method, eps, shift in (("sft_seed1", "sft", 0.0, 0.0), ("ual_eps0.1_seed1", "ual", 0.1, -0.5)):
        d = tmp_path / "evaluate" / name
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"model": name, "method": method, "mean_eps": eps, "seed": 1}))
        (d / "chat_alpaca_eval.jsonl").write_text("".join(
            json.dumps({"id": f"i{k}", "reference_nll_per_token": 2.0 + k + shift, "distinct_1": 1.0,
                        "distinct_2": None if k == 0 else 0.5 + 0.1 * k, "output_chars": 10}) + "\n"
            for k in range(4)))
    stats = bootstrap_table(tmp_path, n_boot=200)
    d = next(r for r in stats["differences"] if r["metric"] == "chat.alpaca_eval.reference_nll_per_token")
    assert d["estimate"] == pytest.approx(-0.5) and d["lo"] == pytest.approx(-0.5) and d["hi"] == pytest.approx(-0.5)
    g = next(r for r in stats["groups"] if r["metric"] == "chat.alpaca_eval.distinct_2" and r["group"] == "sft")
    assert g["estimate"] == pytest.approx((0.6 + 0.7 + 0.8) / 3)  # the undefined item is left out


def test_a_model_missing_a_newer_file_is_evaluated_again(tmp_path, monkeypatch):
    import dataclasses

    import ual.evaluate.stage as stage

    run = tmp_path
    (run / "data").mkdir()
    (run / "data" / "eval_alpaca_eval.jsonl").write_text("".join(
        json.dumps({"id": r.id, "source": "chat", "messages": r.messages}) + "\n" for r in RECS))
    cfg = stage.EvalConfig(model="tiny-random", judge="none")
    out = run / "evaluate" / "base"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"model": "base", "config": dataclasses.asdict(cfg)}))
    (out / "generations_alpaca_eval.jsonl").write_text("")
    assert stage.expected_files(cfg, run, "base") == [out / "metrics.json", out / "generations_alpaca_eval.jsonl",
                                                      out / "chat_alpaca_eval.jsonl"]
    called = []
    monkeypatch.setattr(stage, "evaluate_model", lambda entry, *a, **k: called.append(entry["name"]) or {})
    stage.run(cfg, run, progress=False)
    assert called == ["base"]  # chat_alpaca_eval.jsonl is missing
    (out / "chat_alpaca_eval.jsonl").write_text("")
    called.clear()
    stage.run(cfg, run, progress=False)
    assert called == []  # complete: skipped


def test_chat_metrics_are_headline_metrics(tmp_path):
    from ual.figures.results import markdown_summary, metrics_frame

    d = tmp_path / "evaluate" / "sft_seed1"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"model": "sft_seed1", "method": "sft", "mean_eps": 0.0, "seed": 1,
                                                "chat": {"alpaca_eval": {"n": 2, "reference_nll_per_token": 2.5,
                                                                         "distinct_2": 0.75}}}))
    df = metrics_frame(tmp_path)
    assert dict(zip(df["metric"], df["value"])) == {"chat.alpaca_eval.reference_nll_per_token": 2.5,
                                                    "chat.alpaca_eval.distinct_2": 0.75}
    assert "reference-response NLL (nats/token) [alpaca_eval] (↓) | 2.5" in markdown_summary(tmp_path)
