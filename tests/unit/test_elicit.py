"""ual.elicit: score parsing, the openai backend under injected faults, resume, key hygiene, the local-model
backends on the tiny random model, the LCA reconstruction on a hand-computed example, the summaries, the CLI."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_openai import FakeOpenAI, drop_connection, http_error, not_json, reply, slow, truncated  # noqa: E402

from ual.data.records import Record, save_records  # noqa: E402
from ual.elicit import (ElicitConfig, elicit, lca_reconstruction, load_prompt, parse_score,  # noqa: E402
                        predictive_entropy, rank_agreement, scores_summary, separation_auroc)
from ual.elicit import scoring as run_mod  # noqa: E402
from ual.common.errors import InputError  # noqa: E402
from ual.common.io import JsonlAppender, read_jsonl  # noqa: E402

KEY = "sk-SENTINEL-elicit-9f8e7d6c5b4a"


# ----------------------------------------------------------------------------------------------- parsing, prompt

@pytest.mark.parametrize("text, score", [
    ("I'd rate it 85/99", 85.0), ("Score: 7", 7.0), ("85.", 85.0), ("85 out of 100", 85.0),
    ("On a scale of 0-99, I would give this a 42.", 42.0), ("This falls in the 70-99 band. 85", 85.0),
    ("**Rating:** 42.5", 42.5), ("0", 0.0), ("99", 99.0),
])
def test_parse_score_reads_one_clear_value(text, score):
    assert (parse_score(text).score, parse_score(text).reason) == (score, None)


@pytest.mark.parametrize("text, reason", [
    ("Between 60 and 80", "ambiguous"), ("I see 3 turns; 15", "ambiguous"), ("150", "out of range"),
    ("Score: 100", "out of range"), ("-3", "out of range"), ("High diversity needed.", "no number"),
    ("", "empty"), ("Score: 20, or rating 30", "ambiguous"),
])
def test_parse_score_failures_are_not_guessed(text, reason):
    parsed = parse_score(text)
    assert parsed.score is None and reason in parsed.reason


def test_prompt_versions(tmp_path):
    p = load_prompt()
    assert p.version == "need_for_diversity_v1" and "0 to 99" in p.text
    assert p.render("EXAMPLE TEXT").endswith("EXAMPLE TEXT\n")
    custom = tmp_path / "p.txt"
    custom.write_text("Rate {example} now")
    c = load_prompt(custom)
    assert c.version.startswith("custom-") and len(c.version) == 19
    custom.write_text("no placeholder")
    with pytest.raises(InputError, match="placeholder"):
        load_prompt(custom)


# ----------------------------------------------------------------------------------------------- openai backend

def _records(n: int) -> list[Record]:
    return [Record(f"s{i}", "rp" if i % 2 else "math",
                   [{"role": "user", "content": f"question number item{i}x"},
                    {"role": "assistant", "content": f"answer {i}"}]) for i in range(n)]


def _responder(prompt: str) -> str:
    # the sample's index, found in the rendered example, is the score: lets tests check row/score pairing
    i = int(prompt.split("item")[1].split("x")[0])
    return f"I would rate this {i * 3} out of 99."


@pytest.fixture
def server():
    with FakeOpenAI(responder=_responder) as s:
        yield s


@pytest.fixture
def api_cfg(server, monkeypatch):
    monkeypatch.setenv("UAL_TEST_KEY", KEY)
    return ElicitConfig(backend="openai", model="fake-model", base_url=server.base_url, api_key_env="UAL_TEST_KEY",
                        concurrency=3, max_retries=2, timeout=0.3, backoff_base=0.001, backoff_max=0.01,
                        progress=False)


def _rows(path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(path)}


def test_openai_faults_end_in_score_or_recorded_error(server, api_cfg, tmp_path):
    recs = _records(8)
    server.script("item0x", http_error(500), http_error(503))                 # recovers on the 3rd attempt
    server.script("item1x", http_error(429, retry_after="0"))                  # Retry-After honoured
    server.script("item2x", slow(0.6))                                         # past the 0.3 s timeout
    server.script("item3x", reply("It depends on context."))                   # no number: parse failure
    server.script("item4x", *[http_error(500)] * 3)                            # exhausts retries: error
    server.script("item5x", not_json(), truncated(), drop_connection())         # 3 transient faults: error
    server.script("item6x", http_error(400))                                   # final at once
    out = tmp_path / "scores.jsonl"
    s = elicit(api_cfg, recs, out)
    rows = _rows(out)
    assert set(rows) == {r.id for r in recs}
    for i in (0, 1, 2, 7):
        assert rows[f"s{i}"]["score"] == 3 * i and rows[f"s{i}"]["status"] == "ok"
    assert rows["s3"]["status"] == "parse_failure" and rows["s3"]["score"] is None
    assert rows["s3"]["raw"] == "It depends on context." and "no number" in rows["s3"]["error"]
    assert rows["s4"]["status"] == "error" and "gave up after 3 attempts" in rows["s4"]["error"]
    assert rows["s5"]["status"] == "error" and rows["s6"]["error"].startswith("http 400")
    assert (s["scored"], s["parse_failures"], s["errors"], s["file_missing"]) == (4, 1, 3, 4)
    for r in rows.values():
        assert (r["backend"], r["model"], r["prompt_version"]) == ("openai", "fake-model", "need_for_diversity_v1")
        assert r["score"] is not None or r["error"]
    assert s["tokens"]["total_tokens"] == sum(r["usage"].get("total_tokens", 0) for r in rows.values()) > 0
    assert server.count("item0x") == 3 and server.count("item6x") == 1
    assert all(h == f"Bearer {KEY}" for h in server.auth_headers)
    assert server.requests[0]["temperature"] == 0.0


def test_rerun_retries_failed_by_default_and_keeps_them_when_asked(server, api_cfg, tmp_path):
    recs = _records(6)
    server.script("item2x", reply("no idea"))
    server.script("item3x", *[http_error(502)] * 3)
    out = tmp_path / "scores.jsonl"
    s = elicit(api_cfg, recs, out)
    assert s["file_missing"] == 2 and any("502" in why for why in s["failed_reasons"])  # says how many and why
    n_before = len(server.prompts)
    api_cfg.retry_failed = False
    s = elicit(api_cfg, recs, out)                      # failures kept: nothing to do
    assert len(server.prompts) == n_before and s["skipped"] == 6 and s["attempted"] == 0
    api_cfg.retry_failed = True                         # the default
    s = elicit(api_cfg, recs, out)                      # only the two failures are sent again
    assert len(server.prompts) == n_before + 2 and s["scored"] == 2
    assert server.count("item0x") == 1 and server.count("item2x") == 2
    assert s["file_missing"] == 0
    from ual.data.records import load_scores
    assert load_scores(out, recs) == {f"s{i}": 3.0 * i for i in range(6)}


def test_a_changed_sample_is_scored_again(server, api_cfg, tmp_path):
    recs = _records(3)
    out = tmp_path / "scores.jsonl"
    elicit(api_cfg, recs, out)
    changed = [recs[0], recs[1], Record(recs[2].id, recs[2].source, [{"role": "user", "content": "new text"},
                                                                    {"role": "assistant", "content": "x"}])]
    s = elicit(api_cfg, changed, out)                   # same ids, one new content: only that one is rescored
    assert s["attempted"] == 1 and s["skipped"] == 2 and server.count("new text") >= 1 and server.count("item0x") == 1


def test_interrupted_run_sends_no_finished_sample_twice(server, api_cfg, tmp_path, monkeypatch):
    recs = _records(12)
    out = tmp_path / "scores.jsonl"

    class Boom(RuntimeError):
        pass

    class FailingAppender(JsonlAppender):
        written = 0

        def write(self, row):
            if FailingAppender.written == 5:
                raise Boom("injected crash after 5 rows")
            super().write(row)
            FailingAppender.written += 1

    monkeypatch.setattr(run_mod, "JsonlAppender", FailingAppender)
    with pytest.raises(Boom):
        elicit(api_cfg, recs, out)
    first = _rows(out)
    assert len(first) == 5
    with open(out, "a") as f:                          # a torn line, as a kill mid-write leaves
        f.write('{"id": "s11", "score": 3')
    monkeypatch.setattr(run_mod, "JsonlAppender", JsonlAppender)
    s = elicit(api_cfg, recs, out)
    rows = _rows(out)
    assert set(rows) == {r.id for r in recs} and s["file_missing"] == 0
    for rid in first:                                  # finished before the crash: sent exactly once
        assert server.count(f"item{rid[1:]}x") == 1
    assert all(rows[f"s{i}"]["score"] == 3 * i for i in range(12))


def test_api_key_in_no_output(server, api_cfg, tmp_path):
    server.script("item1x", http_error(401, body=json.dumps({"error": f"Incorrect API key provided: {KEY}"})))
    out = tmp_path / "scores.jsonl"
    summary = elicit(api_cfg, _records(3), out)
    assert KEY not in out.read_text() and KEY not in json.dumps(summary)
    assert "[redacted]" in _rows(out)["s1"]["error"]


def test_changed_model_or_prompt_refuses_to_mix(server, api_cfg, tmp_path):
    out = tmp_path / "scores.jsonl"
    elicit(api_cfg, _records(2), out)
    api_cfg.model = "other-model"
    with pytest.raises(InputError, match="model"):
        elicit(api_cfg, _records(2), out)
    api_cfg.model = "fake-model"
    p = tmp_path / "p.txt"
    p.write_text("Rate: {example}")
    api_cfg.prompt_file = str(p)
    with pytest.raises(InputError, match="prompt_version"):
        elicit(api_cfg, _records(2), out)


# ----------------------------------------------------------------------------------------------- LCA

def test_lca_reconstruction_v1_hand_computed():
    # reconstruction-v1, kept selectable (tests/unit/test_lca.py covers v2). 4 samples: classes A, A, B, C with NLL/len such that the Gibbs weights are exp(-0.5), exp(-0.5), exp(-1),
    # exp(-2); the label g is in class A with mean NLL 0.25, so Q(A) = exp(-0.25).
    classes = ["A", "A", "B", "C"]
    nll = [1.0, 1.5, 3.0, 2.0]
    lens = [2, 3, 3, 1]
    out = lca_reconstruction(classes, nll, lens, "A", 1.0, 4, variant="v1")
    wa, wb, wc = 2 * math.exp(-0.5), math.exp(-1.0), math.exp(-2.0)
    z = wa + wb + wc
    p = {"A": wa / z, "B": wb / z, "C": wc / z}
    qa = math.exp(-0.25)
    q = {"A": qa, "B": (1 - qa) * p["B"] / (p["B"] + p["C"]), "C": (1 - qa) * p["C"] / (p["B"] + p["C"])}
    h = -sum(v * math.log(v) for v in p.values())
    kl = sum(p[c] * math.log(p[c] / q[c]) for c in p)
    assert out["lca_entropy"] == pytest.approx(h, abs=1e-12)
    assert out["lca_kl"] == pytest.approx(kl, abs=1e-12)
    assert out["lca"] == pytest.approx(h + kl, abs=1e-12)
    assert out["lca"] == pytest.approx(-sum(p[c] * math.log(q[c]) for c in p), abs=1e-12)
    # numbers, so a change of formula cannot pass silently
    assert (round(h, 6), round(kl, 6), round(out["P"]["A"], 6)) == (0.775696, 0.014057, 0.706798)


def test_lca_label_outside_samples_and_all_agree():
    out = lca_reconstruction(["B", "B"], [1.0, 1.0], [1, 1], "A", 2.0, 2, variant="v1")   # label class never sampled
    assert out["lca_entropy"] == pytest.approx(0.0) and out["lca"] == pytest.approx(-math.log(1 - math.exp(-1)))
    out = lca_reconstruction(["A", "A"], [1.0, 1.0], [1, 1], "A", 0.5, 1, variant="v1")   # all agree with the label
    assert out["lca"] == pytest.approx(0.5)
    # v2: the label joins the samples with weight q = exp(-1): P+(A) = q / (2 exp(-1) + q) = 1/3
    out = lca_reconstruction(["B", "B"], [1.0, 1.0], [1, 1], "A", 2.0, 2)
    assert out["lca_pointwise"] == pytest.approx(math.log(3)) and out["lca"] == out["lca_full"]
    assert out["lca_full"] == pytest.approx(-(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3) + math.log(3))
    out = lca_reconstruction(["A", "A"], [1.0, 1.0], [1, 1], "A", 0.5, 1)
    assert out["lca_full"] == pytest.approx(0.0) and out["lca_pointwise"] == pytest.approx(0.0)


def test_predictive_entropy():
    assert predictive_entropy(["a", "a", "a", "a"]) == 0.0
    assert predictive_entropy(["a", "b", "a", "b"]) == pytest.approx(math.log(2))
    assert predictive_entropy(["a", "b", "c", "d"]) == pytest.approx(math.log(4))


# ----------------------------------------------------------------------------------------------- local models

@pytest.fixture(scope="module")
def tiny_records():
    return [
        Record("m1", "gsm8k", [{"role": "user", "content": "Tom has 3 apples and buys 2. How many?"},
                               {"role": "assistant", "content": "3 + 2 = 5\n#### 5"}], answer="5", category="math"),
        Record("r1", "rp", [{"role": "user", "content": "Pretend you are a pirate greeting a friend."},
                            {"role": "assistant", "content": "Ahoy, matey! Fair winds to ye!"}]),
        Record("r2", "rp", [{"role": "user", "content": "Say hello as a robot."},
                            {"role": "assistant", "content": "BEEP. GREETINGS, HUMAN."}]),
    ]


@pytest.fixture(scope="module")
def short_prompt(tmp_path_factory) -> str:
    # the byte tokenizer makes the default prompt ~900 tokens; a short one keeps the tiny-model tests fast
    p = tmp_path_factory.mktemp("prompt") / "short.txt"
    p.write_text("Rate 0-99:\n{example}")
    return str(p)


def _model_cfg(model_dir, backend, **kw):
    return ElicitConfig(backend=backend, model=str(model_dir), batch_size=2, max_new_tokens=6, progress=False, **kw)


@pytest.mark.parametrize("backend, kw, fields", [
    ("likelihood", {"greedy": True}, ("mean_nll", "mean_entropy", "gnll", "gnll_mean")),
    ("likelihood", {"likelihood_score": "mean_entropy"}, ("mean_nll", "mean_entropy")),
    ("sampling", {"num_samples": 3, "label_source": "reference"},
     ("lca", "lca_full", "lca_pointwise", "lca_v1", "lca_entropy", "lca_kl", "predictive_entropy", "label_agreement")),
    ("sampling", {"num_samples": 2, "sampling_score": "entropy", "lca_variant": "pointwise"}, ("lca",)),
    ("sampling", {"num_samples": 2, "lca_variant": "v1", "label_source": "reference"}, ("lca_v1",)),
    ("sar", {"num_samples": 2, "sar_score": "token_sar"}, ("token_sar", "lca_full", "lca_pointwise")),
    ("local", {}, ("number_mass",)),
    ("source", {"source_scores": {"gsm8k": 5, "rp": 80}}, ()),
])
def test_model_backends_give_nonnegative_finite_scores(tiny_model_dir, tiny_records, tmp_path, short_prompt, backend,
                                                      kw, fields):
    out = tmp_path / "s.jsonl"
    if backend == "local":
        kw = dict(kw, prompt_file=short_prompt)
    s = elicit(_model_cfg(tiny_model_dir, backend, **kw), tiny_records, out)
    assert s["file_missing"] == 0 and s["errors"] == 0
    for r in read_jsonl(out):
        assert math.isfinite(r["score"]) and r["score"] >= 0 and r["scale"]
        for f in fields:
            assert math.isfinite(r[f]) and r[f] >= -1e-12
    if backend == "likelihood" and kw.get("greedy"):
        assert all(0 < r["greedy_len"] <= 6 for r in read_jsonl(out))
        assert all(r["score"] == r["mean_nll"] for r in read_jsonl(out))
    if backend == "local":
        assert all(0 <= r["score"] <= 99 and 0 < r["number_mass"] <= 1 for r in read_jsonl(out))
    if backend in ("sampling", "sar"):
        key = {"sar": kw.get("sar_score"), "sampling": "predictive_entropy" if kw.get("sampling_score") == "entropy"
               else f"lca_{kw.get('lca_variant', 'full')}"}[backend]
        assert all(r["score"] == r[key] for r in read_jsonl(out))
        assert all(r["settings"]["label_source"] == kw.get("label_source", "greedy") for r in read_jsonl(out))
    import torch

    assert torch.is_grad_enabled()  # scoring must not switch autograd off for the rest of the process


def test_batched_likelihood_equals_unbatched(tiny_model_dir, tiny_records):
    from ual.elicit.backends.lm import LikelihoodBackend, response_token_stats

    b = LikelihoodBackend(_model_cfg(tiny_model_dir, "likelihood"))
    lm, tok = b._load()
    pairs = [b._prompt_and_response(r)[:2] for r in tiny_records]
    assert len({len(p) + len(r) for p, r in pairs}) == 3  # different lengths: padding is exercised
    together = response_token_stats(lm, pairs, tok.pad_token_id)
    for pair, (nll, ent) in zip(pairs, together):
        (nll1, ent1), = response_token_stats(lm, [pair], tok.pad_token_id)
        assert nll == pytest.approx(nll1, abs=1e-4) and ent == pytest.approx(ent1, abs=1e-4)
        # dense reference: log-softmax of a plain forward over the whole sequence
        import torch
        logits = lm(input_ids=torch.tensor([pair[0] + pair[1]])).logits[0].float()
        lp = torch.log_softmax(logits[len(pair[0]) - 1: -1], -1)
        ref = -lp.gather(1, torch.tensor(pair[1])[:, None])[:, 0]
        assert nll1 == pytest.approx(ref.tolist(), abs=1e-4)


def test_local_rating_distribution_matches_full_forward(tiny_model_dir, tiny_records, short_prompt):
    import torch

    from ual.elicit.backends.lm import LocalBackend

    b = LocalBackend(_model_cfg(tiny_model_dir, "local", prompt_file=short_prompt))
    lm, tok = b._load()
    ids, _ = b._prompt_ids(tiny_records[0])
    p = b.rating_distribution(ids)
    cands, digit = b._candidates()
    for n in (0, 7, 42, 85, 99):
        seq = ids + cands[n]
        lp = torch.log_softmax(lm(input_ids=torch.tensor([seq])).logits[0].float(), -1)
        total = sum(float(lp[len(ids) - 1 + j, t]) for j, t in enumerate(cands[n]))
        end = 1.0 - float(lp[-1].exp()[digit].sum())
        assert p[n] == pytest.approx(math.exp(total) * end, rel=1e-3)
    assert all(v >= 0 for v in p) and sum(p) <= 1 + 1e-6


def test_likelihood_needs_responses_and_greedy_for_gnll(tiny_model_dir, tmp_path):
    rec = [Record("q", "x", [{"role": "user", "content": "prompt only"}])]
    with pytest.raises(InputError, match="no assistant turn"):
        elicit(_model_cfg(tiny_model_dir, "likelihood"), rec, tmp_path / "a.jsonl")
    with pytest.raises(InputError, match="greedy"):
        elicit(_model_cfg(tiny_model_dir, "likelihood", likelihood_score="gnll"), rec, tmp_path / "b.jsonl")


def test_source_backend_missing_key(tmp_path, tiny_records):
    with pytest.raises(InputError, match="no score for source rp"):
        elicit(ElicitConfig(backend="source", source_scores={"gsm8k": 1}), tiny_records, tmp_path / "s.jsonl")
    with pytest.raises(InputError, match=">= 0"):
        elicit(ElicitConfig(backend="source", source_scores={"gsm8k": -1}), tiny_records, tmp_path / "s.jsonl")


# ----------------------------------------------------------------------------------------------- summaries, CLI

def _write_scores(path, scores: dict):
    with JsonlAppender(path) as f:
        for i, s in scores.items():
            f.write({"id": i, "score": s, "backend": "x", "model": path.stem, "status": "ok" if s is not None
                     else "error"})


def test_scores_summary_rank_agreement_auroc(tmp_path, tiny_records):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write_scores(a, {"m1": 1.0, "r1": 3.0, "r2": None})
    _write_scores(b, {"m1": 10.0, "r1": 30.0, "r2": 20.0})
    df = scores_summary(a, tiny_records)
    assert df.loc["rp", "scored"] == 1 and df.loc["rp", "errors"] == 1 and df.loc["all", "n"] == 3
    assert df.loc["gsm8k", "mean"] == 1.0
    rho = rank_agreement([a, b])
    assert list(rho.index) == ["x:a", "x:b"] and rho.loc["x:a", "x:b"] == pytest.approx(1.0)
    assert rho.attrs["n"].loc["x:a", "x:b"] == 2
    assert separation_auroc(b, tiny_records, ["rp"]) == 1.0


def test_cli_source_and_openai(tmp_path, server, monkeypatch, capsys):
    from ual.__main__ import main

    data = tmp_path / "data.jsonl"
    save_records(data, _records(4))
    out = tmp_path / "s.jsonl"
    assert main(["elicit", "--data", str(data), "--output", str(out), "--backend", "source",
                 "--source-scores", "math=5,rp=80", "--no-progress"]) == 0
    assert [r["score"] for r in read_jsonl(out)] == [5.0, 80.0, 5.0, 80.0]
    monkeypatch.setenv("UAL_TEST_KEY", KEY)
    out2 = tmp_path / "api.jsonl"
    rc = main(["elicit", "--data", str(data), "--output", str(out2), "--backend", "openai", "--model", "fake-model",
               "--base-url", server.base_url, "--api-key-env", "UAL_TEST_KEY", "--concurrency", "2",
               "--max-retries", "1", "--timeout", "2", "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "4 scored, 0 parse failures, 0 errors" in captured.err and KEY not in captured.out + captured.err
    assert main(["elicit", "--data", str(data), "--output", str(out2), "--backend", "openai", "--model", "m",
                 "--base-url", server.base_url, "--api-key-env", "UAL_NO_SUCH_VAR_X"]) == 2
