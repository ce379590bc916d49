"""Token clustering: hidden states are lm_head's input; silhouettes behave on synthetic features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ual.evaluate.clustering import collect_hidden_states, pairwise_silhouette
from ual.common.models import build_tiny_model


def _gaussians(sep: float, n=(200, 150, 120), dim=16, seed=0):
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for k, m in enumerate(n):
        centre = np.zeros(dim)
        centre[k] = sep
        feats.append(rng.normal(size=(m, dim)) + centre)
        labels.append(np.full(m, 10 + k))
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels)


def test_separated_clusters_score_near_one_and_identical_near_zero():
    far = pairwise_silhouette(*_gaussians(40.0), top_k=3)
    same = pairwise_silhouette(*_gaussians(0.0), top_k=3)
    assert far["n_pairs"] == 3 and len(far["pairs"]) == 3
    assert far["mean"] > 0.9 and min(p["silhouette"] for p in far["pairs"]) > 0.9
    assert abs(same["mean"]) < 0.1


def test_silhouette_grows_with_separation():
    means = [pairwise_silhouette(*_gaussians(s), top_k=3)["mean"] for s in (0.0, 1.0, 2.0, 4.0, 8.0)]
    assert all(a < b for a, b in zip(means, means[1:]))


def test_top_k_all_pairs_cap_and_seed():
    feats, labels = _gaussians(3.0, n=(300, 50, 40, 30, 1))
    out = pairwise_silhouette(feats, labels, top_k=3, cap=100, seed=1)
    assert [t["id"] for t in out["tokens"]] == [10, 11, 12]  # most frequent first
    assert [t["n_used"] for t in out["tokens"]] == [100, 50, 40]
    assert {(p["a"], p["b"]) for p in out["pairs"]} == {(10, 11), (10, 12), (11, 12)}
    assert out == pairwise_silhouette(feats, labels, top_k=3, cap=100, seed=1)
    # every pair is reported, and the single-occurrence token is never used
    full = pairwise_silhouette(feats, labels, top_k=42)
    assert full["k_used"] == 4 and full["n_pairs"] == 6
    assert full["mean"] == pytest.approx(np.mean([p["silhouette"] for p in full["pairs"]]))


def test_collect_hidden_states_matches_final_norm_output(tiny_model_dir):
    from ual.common.models import load_model, load_tokenizer

    model, tok = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    texts = ["hello world", "a", "the cat sat on the mat"]
    feats, labels = collect_hidden_states(model, tok, texts, max_length=32, batch_size=2)
    ids = [tok(t)["input_ids"] for t in texts]
    assert feats.dtype == np.float32 and feats.shape == (sum(len(i) - 1 for i in ids), model.config.hidden_size)
    assert labels.tolist() == [x for i in ids for x in i[1:]]
    with torch.no_grad():
        ref = model.model(input_ids=torch.tensor([ids[2]])).last_hidden_state[0, :-1].numpy()
    np.testing.assert_allclose(feats[-len(ids[2]) + 1:], ref, atol=1e-5)


def test_collect_hidden_states_through_peft():
    from peft import LoraConfig, get_peft_model

    model, tok = build_tiny_model(None, seed=1)
    base, _ = collect_hidden_states(model.eval(), tok, ["some text here"], max_length=16)
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).eval()
    same, _ = collect_hidden_states(wrapped, tok, ["some text here"], max_length=16)
    np.testing.assert_allclose(same, base, atol=1e-6)  # LoRA B starts at zero
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    moved, _ = collect_hidden_states(wrapped, tok, ["some text here"], max_length=16)
    assert not np.allclose(moved, base)


def test_truncation_to_max_length(tiny_model_dir):
    from ual.common.models import load_model, load_tokenizer

    model, tok = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    feats, labels = collect_hidden_states(model, tok, ["x" * 50], max_length=16)
    assert feats.shape[0] == labels.shape[0] == 15
