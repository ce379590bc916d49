"""Deita selection (ual.data.select) end to end on tiny random models, checked against dense one-by-one references;
the rows [start, stop] option and the LIMA format; the paper profiles' data plan and per-stage estimates."""
import dataclasses
import functools
import json
import math

import numpy as np
import pytest
import torch

from ual.common.errors import InputError
from ual.common.io import read_jsonl
from ual.common.models import load_model, load_tokenizer
from ual.data import DataConfig, plan, run
from ual.data import select as S
from ual.data.records import Record, load_file, load_records


def _rec(i, q, a, extra=()):
    msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}, *extra]
    return Record(f"mm-{i}", "mm", msgs, answer=None)


POOL = [_rec(0, "What is 2+2?", "2+2=4. The answer is: 4"),
        _rec(1, "What is 2+2?", "2+2=4. The answer is: 4"),  # an exact duplicate of 0: must never both be kept
        _rec(2, "A train goes 60 km/h for 3 h. How far?", "60*3=180 km. The answer is: 180"),
        _rec(3, "Solve x^2 = 49 for x > 0.", "x = 7. The answer is: 7"),
        _rec(4, "Name a prime above 10.", "11 is prime. The answer is: 11",
             extra=({"role": "user", "content": "And one above 20?"}, {"role": "assistant", "content": "23."})),
        _rec(5, "What is 10% of 250?", "250/10 = 25. The answer is: 25"),
        _rec(6, "How many legs do 3 cats have?", "3*4 = 12. The answer is: 12"),
        _rec(7, "What is 7*8?", "7*8=56. The answer is: 56")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three different tiny random Llamas: complexity scorer, quality scorer, embedder. Their tokenizer adds a BOS
    token as Llama's does, so where special tokens go (scorer prompts: yes; embedded turns: no) is tested."""
    from tokenizers.processors import TemplateProcessing

    from ual.common.models import build_tiny_model

    out = {}
    for k, (name, seed) in enumerate((("complexity", 1), ("quality", 2), ("embedding", 3))):
        dest = tmp_path_factory.mktemp(name) / "model"
        _, tok = build_tiny_model(dest, seed=seed)
        tok._tokenizer.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A",
                                                           special_tokens=[(tok.bos_token, tok.bos_token_id)])
        tok.save_pretrained(dest)
        out[name] = str(dest)
    assert load_tokenizer(out["complexity"])("1")["input_ids"][0] == load_tokenizer(out["complexity"]).bos_token_id
    return out


def _cfg(models, **kw):
    base = dict(kind="mix", train_sources=[{"path": "x.jsonl", "source": "mm"}], select="deita", select_source="mm",
                select_complexity_model=models["complexity"], select_quality_model=models["quality"],
                select_embedding_model=models["embedding"], select_target=4, select_threshold=0.95,
                select_batch_size=3, select_max_length=512)
    base.update(kw)
    return DataConfig(**base)


# ----------------------------------------------------------------------------------- dense references

@functools.lru_cache(maxsize=None)
def _load(path):
    return load_model(path), load_tokenizer(path)


def _ref_rating(path, prompt):
    """One prompt, one full forward pass with every logit: softmax over the ids of "1".."6", expectation."""
    model, tok = _load(path)
    ids = tok(prompt, add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    sel = logits[tok.convert_tokens_to_ids(list("123456"))]
    p = torch.softmax(sel, 0)
    return float((p * torch.arange(1, 7, dtype=torch.float64)).sum())


def _ref_embedding(path, rec):
    """The authors' get_sentence_embedding: each turn alone, the lm_head input captured by a hook, all tokens of
    all turns averaged."""
    model, tok = _load(path)
    got = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, inp, out: got.append(inp[0][0].double()))
    with torch.no_grad():
        for m in rec.messages:
            model(input_ids=torch.tensor([tok(m["content"], add_special_tokens=False)["input_ids"]]))
    hook.remove()
    return torch.cat(got).mean(0).numpy()


def _ref_walk(emb, order, threshold, target):
    kept = []
    for i in order:
        v = emb[i] / np.linalg.norm(emb[i])
        if all(float(v @ (emb[j] / np.linalg.norm(emb[j]))) <= threshold for j in kept):
            kept.append(i)
        if len(kept) == target:
            break
    return kept


@pytest.fixture(scope="module")
def reference(models):
    c = [sum(_ref_rating(models["complexity"], S.COMPLEXITY_TEMPLATE.format(instruction=m["content"]))
             for m in r.messages if m["role"] == "user") for r in POOL]
    users = lambda r: [m["content"] for m in r.messages if m["role"] == "user"]  # noqa: E731
    answers = lambda r: [m["content"] for m in r.messages if m["role"] == "assistant"]  # noqa: E731
    q = [sum(_ref_rating(models["quality"], S.QUALITY_TEMPLATE.format(instruction=u, output=a))
             for u, a in zip(users(r), answers(r))) for r in POOL]
    emb = np.stack([_ref_embedding(models["embedding"], r) for r in POOL])
    order = sorted(range(len(POOL)), key=lambda i: (-(c[i] * q[i]), i))
    return {"c": c, "q": q, "emb": emb, "order": order}


# ----------------------------------------------------------------------------------- the filter alone

def _angles(*deg):
    return np.array([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in deg], dtype=np.float32) * 3.0


def test_greedy_filter_is_the_one_by_one_walk_whatever_the_batch():
    # cos 15 deg = 0.966 > 0.95: dropped next to 0 deg; 30 deg is 0.966 from the dropped 15 deg but 0.866 from the
    # kept 0 deg, so the one-by-one walk keeps it (Deita's batched filter would drop it); 5 deg and 185 deg: 5 deg
    # is dropped, 185 deg is opposite (cos -1) and kept; the last two are not visited (target 4 reached).
    emb = _angles(0, 15, 30, 5, 185, 100, 200)
    want_kept = [True, False, True, False, True, True]
    for b in (1, 2, 3, 7):
        f = S.GreedyDiversityFilter(0.95, 2, capacity=4, chunk=2)
        flags, cos = [], []
        for i in range(0, len(emb), b):
            fl, c = f.offer(emb[i:i + b], limit=4 - sum(flags))
            flags += fl
            cos += c
            if sum(flags) == 4:
                break
        assert flags == want_kept, b
        assert cos[0] is None and cos[1] == pytest.approx(math.cos(math.radians(15)), abs=1e-6)
        assert cos[2] == pytest.approx(math.cos(math.radians(30)), abs=1e-6)  # only kept samples count
        assert cos[5] == pytest.approx(math.cos(math.radians(70)), abs=1e-6)  # 100 deg vs 30 deg
        assert f.n == 4


def test_threshold_is_inclusive():
    f = S.GreedyDiversityFilter(0.0, 2, capacity=4)
    # exact cosines: 0 to the first (kept: the authors drop only > t), 0.707 (dropped), then 0 and -1 (kept)
    flags, cos = f.offer(np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-1.0, 0.0]]))
    assert flags == [True, True, False, True] and cos[1] == 0.0 and cos[3] == 0.0


# ----------------------------------------------------------------------------------- scores, ranking, walk

def test_scores_ranking_and_walk_match_the_dense_reference(models, reference, tmp_path):
    cfg = _cfg(models)
    comp = S.score(POOL, cfg, "complexity", tmp_path / "complexity.jsonl", progress=False)
    qual = S.score(POOL, cfg, "quality", tmp_path / "quality.jsonl", progress=False)
    for i, r in enumerate(POOL):
        assert comp[r.id] == pytest.approx(reference["c"][i], abs=1e-5)
        assert qual[r.id] == pytest.approx(reference["q"][i], abs=1e-5)
    assert 2 < comp["mm-4"] / 2 < 5  # two user turns: the sum of two 1-6 ratings
    assert S.rank(POOL, comp, qual) == reference["order"]
    assert comp["mm-0"] == pytest.approx(comp["mm-1"], abs=1e-6)  # duplicates tie; source order breaks the tie
    assert reference["order"].index(0) < reference["order"].index(1)

    tok, model = load_tokenizer(models["embedding"]), load_model(models["embedding"])
    emb = S.embed(model, tok, POOL, batch_size=3, max_length=512)
    np.testing.assert_allclose(emb, reference["emb"], rtol=1e-4, atol=1e-5)
    sims = [float(reference["emb"][i] @ reference["emb"][j] / np.linalg.norm(reference["emb"][i])
                  / np.linalg.norm(reference["emb"][j])) for i in range(8) for j in range(i + 1, 8)]
    # a threshold between the pairwise similarities, so that the walk both keeps and drops (never a trivial pass)
    t = float(np.quantile(sims, 0.6))
    want = _ref_walk(reference["emb"], reference["order"], t, 4)
    assert 1 <= len(want) <= 4
    cfg = _cfg(models, select_threshold=t)
    kept = S.select(POOL, cfg, tmp_path, progress=False)
    assert [r.id for r in kept] == [POOL[i].id for i in want]
    done = json.loads((tmp_path / "selection.json").read_text())
    assert done["kept_ids"] == [POOL[i].id for i in want] and done["pool"] == 8
    rows = [json.loads(x) for x in (tmp_path / "walk.jsonl").read_text().splitlines()]
    visited = [i for row in rows[1:] for i in row["ids"]]
    assert visited == [POOL[i].id for i in reference["order"][:len(visited)]]
    e = np.fromfile(tmp_path / "kept_embeddings.f32", dtype=np.float32).reshape(len(want), -1)
    np.testing.assert_allclose(e, reference["emb"][want], rtol=1e-4, atol=1e-5)
    assert "mm-1" not in done["kept_ids"] or "mm-0" not in done["kept_ids"]


def test_duplicate_is_dropped_at_the_paper_threshold(models, tmp_path):
    kept = S.select(POOL, _cfg(models, select_target=8), tmp_path, progress=False)
    ids = [r.id for r in kept]
    assert not ("mm-0" in ids and "mm-1" in ids)  # identical texts: cosine 1 > 0.95
    walk = [json.loads(x) for x in (tmp_path / "walk.jsonl").read_text().splitlines()][1:]
    assert sum(len(w["ids"]) for w in walk) == 8  # the pool ran out before the target
    assert json.loads((tmp_path / "selection.json").read_text())["exhausted"] is True


def test_resume_after_kills_gives_the_same_selection(models, reference, tmp_path, monkeypatch):
    cfg = _cfg(models, select_threshold=0.999, select_batch_size=2, select_target=6)
    want = [r.id for r in S.select(POOL, cfg, tmp_path / "clean", progress=False)]

    folder = tmp_path / "killed"
    real_ratings, real_embed = S.expected_ratings, S.embed
    calls = {"r": 0, "e": 0}

    def dying_ratings(*a, **k):
        calls["r"] += 1
        if calls["r"] == 2:
            raise KeyboardInterrupt("killed while scoring")
        return real_ratings(*a, **k)

    def dying_embed(*a, **k):
        calls["e"] += 1
        if calls["e"] == 3:
            raise KeyboardInterrupt("killed during the walk")
        return real_embed(*a, **k)

    monkeypatch.setattr(S, "RECORDS_PER_WRITE", 1)  # one batch of 2 records per append
    monkeypatch.setattr(S, "expected_ratings", dying_ratings)
    with pytest.raises(KeyboardInterrupt):
        S.select(POOL, cfg, folder, progress=False)
    rows = (folder / "complexity.jsonl").read_text().splitlines()
    assert len(rows) == 1 + 2  # header + the first batch of two
    with open(folder / "complexity.jsonl", "a") as f:
        f.write('{"id": "mm-2", "sha": "torn')  # a kill mid-line
    monkeypatch.setattr(S, "expected_ratings", real_ratings)
    monkeypatch.setattr(S, "embed", dying_embed)
    with pytest.raises(KeyboardInterrupt):
        S.select(POOL, cfg, folder, progress=False)
    comp = [json.loads(x) for x in (folder / "complexity.jsonl").read_text().splitlines()[1:] if x.endswith("}")]
    assert sorted(r["id"] for r in comp) == sorted(r.id for r in POOL)  # nothing scored twice, nothing lost
    walk_rows = (folder / "walk.jsonl").read_text().splitlines()
    assert len(walk_rows) == 1 + 2  # two batches done before the kill
    with open(folder / "kept_embeddings.f32", "ab") as f:
        f.write(b"\0" * 4 * 64 * 2)  # a batch's two embeddings written, its walk row lost: cut back on resume
    monkeypatch.setattr(S, "embed", real_embed)
    got = [r.id for r in S.select(POOL, cfg, folder, progress=False)]
    assert got == want
    for name in ("complexity.jsonl", "quality.jsonl"):
        a = {r["id"]: r["score"] for r in map(json.loads, (tmp_path / "clean" / name).read_text().splitlines()[1:])}
        b = {r["id"]: r["score"] for r in read_jsonl(folder / name)[1:]}  # the torn line is skipped
        assert b == pytest.approx(a, abs=1e-6)
    emb = np.fromfile(folder / "kept_embeddings.f32", dtype=np.float32)
    assert emb.size == len(want) * reference["emb"].shape[1]

    # A finished selection is read back without loading any model: the rerun is exact.
    def no_model(*a, **k):
        raise AssertionError("a finished selection must not load a model")

    monkeypatch.setattr(S, "_load_model", no_model)
    assert [r.id for r in S.select(POOL, cfg, folder, progress=False)] == want


def test_lost_embeddings_are_recomputed_on_resume(models, tmp_path, monkeypatch):
    cfg = _cfg(models, select_threshold=0.999, select_batch_size=2, select_target=6)
    want = [r.id for r in S.select(POOL, cfg, tmp_path / "clean", progress=False)]
    real_embed, calls = S.embed, []

    def dying_embed(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed during the walk")
        return real_embed(*a, **k)

    monkeypatch.setattr(S, "embed", dying_embed)
    with pytest.raises(KeyboardInterrupt):
        S.select(POOL, cfg, tmp_path / "k", progress=False)
    monkeypatch.setattr(S, "embed", real_embed)
    (tmp_path / "k" / "kept_embeddings.f32").unlink()
    assert [r.id for r in S.select(POOL, cfg, tmp_path / "k", progress=False)] == want
    a, b = (np.fromfile(d / "kept_embeddings.f32", dtype=np.float32) for d in (tmp_path / "clean", tmp_path / "k"))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scores_made_otherwise_are_refused(models, tmp_path):
    cfg = _cfg(models)
    S.score(POOL[:2], cfg, "complexity", tmp_path / "complexity.jsonl", progress=False)
    other = dataclasses.replace(cfg, select_complexity_model=models["quality"])
    with pytest.raises(InputError, match="model"):
        S.score(POOL[:2], other, "complexity", tmp_path / "complexity.jsonl", progress=False)
    changed = [_rec(0, "What is 3+3?", "6. The answer is: 6"), POOL[1]]
    with pytest.raises(InputError, match="changed"):
        S.score(changed, cfg, "complexity", tmp_path / "complexity.jsonl", progress=False)


def test_long_prompt_keeps_the_template_tail(models):
    tok = load_tokenizer(models["complexity"])
    ids, cut = S.encode_prompt(tok, S.COMPLEXITY_TEMPLATE.format(instruction="x" * 400), "complexity", 100)
    assert cut and len(ids) == 100 and tok.decode(ids).endswith("  \n##Complexity: ")
    ids, cut = S.encode_prompt(tok, "short", "complexity", 100)
    assert not cut


def test_config_checks():
    with pytest.raises(InputError, match="select_source"):
        DataConfig(kind="mix", train_sources=[{"path": "a.jsonl", "source": "a"}], select="deita", select_source="b")
    with pytest.raises(InputError, match="select_threshold"):
        DataConfig(select_threshold=1.5)
    with pytest.raises(InputError, match="kind"):
        DataConfig(select="deita", select_source="a")


# ----------------------------------------------------------------------------------- rows, LIMA, the data stage

def _write(p, rows):
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_rows_slice_keeps_source_row_ids(tmp_path):
    p = _write(tmp_path / "m.jsonl", [{"query": f"q{i}?", "response": f"r. The answer is: {i}"} for i in range(5)])
    last = load_file(p, source="mm", rows=[-2, None])
    assert [r.id for r in last] == ["mm-3", "mm-4"] and [r.answer for r in last] == ["3", "4"]
    first = load_file(p, source="mm", rows=[0, -2])
    assert [r.id for r in first] == ["mm-0", "mm-1", "mm-2"]
    assert [r.id for r in load_file(p, source="mm", rows=[1, 3])] == ["mm-1", "mm-2"]
    for bad in ([1], ["a", None], [True, None], 3):
        with pytest.raises(InputError, match="rows"):
            load_file(p, source="mm", rows=bad)


def test_lima_format_and_prompt_only_records(tmp_path):
    p = _write(tmp_path / "lima.jsonl", [{"conversations": ["Tell me a joke."], "source": "multi_turn"},
                                         {"conversations": ["Hi", "Hello!", "Bye", "Bye!"], "source": "x"}])
    recs = load_file(p, source="lima")
    assert recs[0].response is None and recs[0].prompt == "Tell me a joke." and recs[0].category == "multi_turn"
    assert [m["role"] for m in recs[1].messages] == ["user", "assistant", "user", "assistant"]
    with pytest.raises(InputError, match=r"conversations\[1\]"):
        load_file(_write(tmp_path / "bad.jsonl", [{"conversations": ["a", 3]}]), fmt="lima")


def test_data_stage_selects_one_source_and_writes_eval_and_probe_sets(models, tmp_path):
    mm = _write(tmp_path / "mm.jsonl", [{"query": m[0]["content"], "response": m[1]["content"]}
                                        for m in (r.messages for r in POOL)] +
                [{"query": f"Held out {i}?", "response": f"ok. The answer is: {i}"} for i in range(3)])
    other = _write(tmp_path / "chat.jsonl", [{"instruction": f"Write {i}", "output": f"Text {i}"} for i in range(4)])
    lima = _write(tmp_path / "lima.jsonl", [{"conversations": [f"Prompt {i}"], "source": "s"} for i in range(5)])
    cfg = _cfg(models, train_sources=[{"path": str(other), "source": "chat"},
                                      {"path": str(mm), "source": "mm", "rows": [0, -3], "format": "metamath"}],
               eval_sets=[{"name": "mm", "path": str(mm), "rows": [-3, None], "format": "metamath"}],
               probe_sets=[{"name": "lima", "path": str(lima), "format": "lima"}], select_target=3)
    out = run(cfg, tmp_path / "run", progress=False)
    train = load_records(out["files"]["train"])
    assert out["counts"]["train"] == 4 + 3 and len(train) == 7
    kept = json.loads((tmp_path / "run" / "data" / "select" / "selection.json").read_text())["kept_ids"]
    assert sorted(r.id for r in train if r.source == "mm") == sorted(kept) and len(kept) == 3
    assert all(int(i.split("-")[1]) < 8 for i in kept)  # never a held-out row
    ev = load_records(out["files"]["eval_mm"])
    assert [r.id for r in ev] == ["mm-8", "mm-9", "mm-10"] and [r.answer for r in ev] == ["0", "1", "2"]
    probe = load_records(out["files"]["probe_lima"])
    assert len(probe) == 5 and all(r.response is None for r in probe)
    assert plan(cfg)["train_sources"][1]["pool"] == 8 and plan(cfg)["train"] == 7
    assert plan(cfg)["probe_sets"][0]["samples"] == 5 and plan(cfg)["eval_sets"][0]["samples"] == 3


def test_plan_names_a_missing_probe_file():
    cfg = DataConfig(kind="mix", train_sources=[{"path": "hkust-nlp/deita-6k-v0", "n": 6000, "source": "deita"}],
                     probe_sets=[{"name": "lima", "path": "/nope/lima.jsonl"}])
    with pytest.raises(InputError, match="file not found"):
        plan(cfg)


def test_clustering_reads_a_prompt_only_probe_set(tiny_model_dir, tmp_path):
    from ual.data.records import save_records
    from ual.evaluate.config import EvalConfig
    from ual.evaluate.stage import _clustering

    data = tmp_path / "data"
    data.mkdir()
    recs = [Record(f"lima-{i}", "lima", [{"role": "user", "content": f"Write a poem about the number {i}."}])
            for i in range(6)]
    save_records(data / "probe_lima.jsonl", recs)
    model, tok = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    cfg = EvalConfig(clustering=True, clustering_set="lima", clustering_n=6, clustering_top_k=4)
    _clustering(model, tok, cfg, tmp_path, tmp_path / "clustering.json", "paper")
    res = json.loads((tmp_path / "clustering.json").read_text())
    assert res["probe"]["set"] == "lima" and res["probe"]["n_texts"] == 6 and res["n_pairs"] == 6
    assert res["probe"]["n_positions"] > 6 * len("### User: ")


# ----------------------------------------------------------------------------------- the paper profiles

def test_paper_profiles_plan_the_authors_data_and_estimate_every_stage():
    from ual.pipeline import STAGES, dry_run, resolve_profile
    from ual.train.estimate import estimate_stages

    p7 = resolve_profile("paper-llama2-7b")
    d = plan(p7.stages["data"])
    src = {s["source"]: s for s in d["train_sources"]}
    assert src["deita"]["samples"] == 6000
    assert src["metamath"]["pool"] == 395_000 - 1030 and src["metamath"]["samples"] == 6000
    assert src["metamath"]["selection"]["threshold"] == 0.95 and d["train"] == 12_000
    assert {e["name"]: e["samples"] for e in d["eval_sets"]} == {"gsm8k": 1319, "metamath": 1030, "alpaca_eval": 805}
    assert d["probe_sets"] == [dict(d["probe_sets"][0], name="lima", samples=300)]
    assert p7.stages["evaluate"].clustering_set == "lima" and p7.stages["evaluate"].clustering_n == 300

    est = estimate_stages(p7)
    assert est["fits"] and est["stages"]["train"]["optimizer_steps_per_variant"] == math.ceil(12_000 * 10 / 64)
    sel = est["stages"]["data"]["selection"]
    assert sel["pool"] == 393_970 and set(sel["steps"]) == {"complexity scores", "quality scores", "similarity walk"}
    assert 0 < sel["hours_H100_total_at_least"] < sel["hours_A100_total_at_least"]
    assert 24 < sel["peak_memory_gib_upper_bound"] < 80  # a 13B model in bf16 plus activations
    ev = est["stages"]["evaluate"]
    assert ev["models"] == 12 and set(ev["sets"]) == {"gsm8k", "metamath", "alpaca_eval"}
    assert ev["sets"]["metamath"]["kind"] == "math" and ev["sets"]["alpaca_eval"]["kind"] == "chat"
    assert est["stages"]["elicit"]["requests"] == 12_000
    dry = dry_run(p7)
    assert dry["estimate"]["stages"]["train"]["train_samples"] == 12_000 and dry["data_plan"]["kind"] == "mix"

    p13 = resolve_profile("paper-llama2-13b")
    for stage in STAGES:
        a, b = dataclasses.asdict(p13.stages[stage]), dataclasses.asdict(p7.stages[stage])
        diff = {f"{stage}.{k}" for k in a if a[k] != b[k]}
        assert diff <= {"train.model", "train.max_length", "evaluate.batch_size"}, diff
    assert p13.stages["train"].model == "meta-llama/Llama-2-13b-hf" and p13.stages["train"].max_length == 2048
    est13 = estimate_stages(p13)
    assert est13["fits"] and est13["peak_memory_gib"]["evaluate"] > est["peak_memory_gib"]["evaluate"]
    # the 13B profile's evaluate batch of 16 is what fits: 32 would not
    big = resolve_profile("paper-llama2-13b", ["evaluate.batch_size=32"])
    assert not estimate_stages(big)["fits"]
