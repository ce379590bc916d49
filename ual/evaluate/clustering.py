"""Token clustering in feature space, the paper's analysis (docs/ual-method.md, section 6).

Final hidden states (the input of ``lm_head``) are collected on a set of texts, each position labelled by the
token that follows it. For the ``top_k`` most frequent next tokens, every pair of tokens (``k (k - 1) / 2`` pairs,
all reported, none picked) is projected to 2-D by a PCA fitted on the two tokens' features, and the silhouette
score of that projection with the token id as cluster label is computed. Higher = the model separates what
comes next more cleanly. The authors report the mean over the 861 pairs of the 42 most frequent tokens.

Cost bound (our choice, not the authors'): a token with more than ``cap`` occurrences is subsampled to ``cap``
(default :data:`DEFAULT_CAP` = 1000) with a seeded generator before any pair is formed, so one pair's silhouette
costs at most (2 * cap)^2 distances.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from ual.common.batching import right_pad

DEFAULT_CAP = 1000  # our choice: bounds each pair's silhouette to 2000 points
# 2-D projections kept for the paper's scatter figure (ual.figures.plots.token_pair_pca): every pair among the
# PROJECTION_TOKENS most frequent tokens, at most PROJECTION_POINTS points per token (seeded subsample); our choice,
# small enough to export with the results (about 70 kB per model).
PROJECTION_TOKENS = 6
PROJECTION_POINTS = 150


def class_separation(features: np.ndarray, labels: np.ndarray) -> dict:
    """How far the classes (next tokens) separate in feature space, over all classes at once.

    - ``r2``: Kornblith et al. (2021, "Why do better loss functions lead to less transferable features?") class
      separation R^2 = 1 - d_within / d_total, with d the mean cosine distance between two features of the same
      class (within) or of any two classes (total), classes weighted equally. With unit-normalised features and
      class means m_k of them, d_within = 1 - mean_k |m_k|^2 and d_total = 1 - |mean_k m_k|^2 exactly. Higher =
      more separated; they found label smoothing raises it.
    - ``nc1``: Papyan et al. (2020) within-class variability collapse, tr(S_W S_B^+) / K on the raw features (S_W
      the mean of the class covariances, S_B the covariance of the class means). Lower = more collapsed.

    ``features`` [N, H]; ``labels`` [N]; every class needs at least one row. Returns ``{"r2", "nc1", "k"}``.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("class separation needs at least two classes")
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    means_unit = np.stack([unit[y == c].mean(0) for c in classes])
    d_within = 1.0 - float(np.mean(np.sum(means_unit ** 2, axis=1)))
    d_total = 1.0 - float(np.sum(means_unit.mean(0) ** 2))
    means = np.stack([x[y == c].mean(0) for c in classes])
    centred = means - means.mean(0)
    s_b = centred.T @ centred / len(classes)
    s_w = sum(np.cov(x[y == c].T, bias=True) if (y == c).sum() > 1 else np.zeros((x.shape[1], x.shape[1]))
              for c in classes) / len(classes)
    nc1 = float(np.trace(s_w @ np.linalg.pinv(s_b)) / len(classes))
    return {"r2": 1.0 - d_within / d_total, "nc1": nc1, "k": int(len(classes))}


def collect_hidden_states(model, tokenizer, texts: Sequence[str], *, max_length: int = 512, batch_size: int = 8,
                          add_special_tokens: bool = True, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Final hidden states and next-token labels over ``texts``.

    Each text is tokenized (truncated to ``max_length`` tokens); every position t except the last gives one
    feature, the input of the output projection (``lm_head``) at t, labelled by token t + 1. Works for plain,
    merged and PEFT-wrapped models (a forward hook on the output embeddings). Returns ``(features [N, H]
    float32, next_token_ids [N] int64)``, in text order then position order.
    """
    import torch
    from tqdm.auto import tqdm

    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("model has no output embeddings (lm_head) to hook")
    captured: list = []
    hook = head.register_forward_pre_hook(lambda _mod, args: captured.append(args[0].detach()))
    encoded = [tokenizer(t, add_special_tokens=add_special_tokens, truncation=True, max_length=max_length)["input_ids"]
               for t in texts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    feats, labels = [], []
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(encoded), batch_size), desc="hidden states", unit="batch",
                              disable=not progress):
                chunk = encoded[start:start + batch_size]
                ids, mask = right_pad(chunk, pad_id)
                captured.clear()
                model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=0)
                if len(captured) != 1:
                    raise RuntimeError(f"expected one lm_head call per forward, saw {len(captured)}")
                hidden = captured[0].float().cpu()
                for j, x in enumerate(chunk):
                    if len(x) < 2:
                        continue
                    feats.append(hidden[j, :len(x) - 1].numpy())
                    labels.append(np.asarray(x[1:], dtype=np.int64))
    finally:
        hook.remove()
    if not feats:
        raise ValueError("no text has two or more tokens")
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels)


def pairwise_silhouette(features: np.ndarray, labels: np.ndarray, *, top_k: int = 42, cap: int = DEFAULT_CAP,
                        seed: int = 1337, tokenizer=None) -> dict:
    """Silhouette of every pair among the ``top_k`` most frequent labels, each pair in its own 2-D PCA.

    ``features`` [N, H] float; ``labels`` [N] int (next-token ids). Ties in frequency are broken by smaller id.
    Returns ``{"mean", "median", "n_pairs", "top_k", "k_used", "cap", "seed", "tokens": [{"id", "text", "count",
    "n_used"}], "pairs": [{"a", "b", "text_a", "text_b", "n_a", "n_b", "silhouette"}], "class_separation":
    {"r2", "nc1", "k"} (:func:`class_separation` over the same rows of all chosen tokens at once), "projections":
    [{"a", "b", "xa", "xb"}]}``: each pair's 2-D PCA coordinates (the projection its silhouette is computed in)
    for the pairs among the :data:`PROJECTION_TOKENS` most frequent tokens, at most :data:`PROJECTION_POINTS` points
    per token. Texts are None without a ``tokenizer``. ``k_used`` < ``top_k`` only when fewer labels occur at
    least twice.
    """
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features {features.shape} and labels {labels.shape} do not match")
    if top_k < 2:
        raise ValueError("top_k must be >= 2")
    ids, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((ids, -counts))  # most frequent first, then smaller id
    chosen = [(int(ids[i]), int(counts[i])) for i in order if counts[i] >= 2][:top_k]
    if len(chosen) < 2:
        raise ValueError("fewer than two tokens occur at least twice")
    rng = np.random.default_rng(seed)
    rows: dict[int, np.ndarray] = {}
    for tid, count in chosen:
        where = np.flatnonzero(labels == tid)
        if count > cap:
            where = np.sort(rng.choice(where, size=cap, replace=False))
        rows[tid] = where

    def text(tid: int):
        return None if tokenizer is None else tokenizer.decode([tid])

    shown = {tid for tid, _ in chosen[:PROJECTION_TOKENS]}
    keep_rng = np.random.default_rng(seed + 1)  # which points of a shown pair are stored for the figure
    pairs, projections = [], []
    for (a, _), (b, _) in itertools.combinations(chosen, 2):
        x = np.concatenate([features[rows[a]], features[rows[b]]])
        y = np.concatenate([np.zeros(len(rows[a]), dtype=int), np.ones(len(rows[b]), dtype=int)])
        # the fit is seeded so the randomized solver (used for large inputs) is reproducible
        x2 = PCA(n_components=2, random_state=seed).fit_transform(x)
        pairs.append({"a": a, "b": b, "text_a": text(a), "text_b": text(b), "n_a": int(len(rows[a])),
                      "n_b": int(len(rows[b])), "silhouette": float(silhouette_score(x2, y))})
        if a in shown and b in shown:
            def keep(part):
                idx = np.sort(keep_rng.choice(len(part), size=min(len(part), PROJECTION_POINTS), replace=False))
                return np.round(part[idx], 4).tolist()

            projections.append({"a": a, "b": b, "xa": keep(x2[y == 0]), "xb": keep(x2[y == 1])})
    sil = np.array([p["silhouette"] for p in pairs])
    all_rows = np.concatenate([rows[t] for t, _ in chosen])
    return {"mean": float(sil.mean()), "median": float(np.median(sil)), "n_pairs": len(pairs), "top_k": top_k,
            "k_used": len(chosen), "cap": cap, "seed": seed,
            "tokens": [{"id": t, "text": text(t), "count": c, "n_used": int(len(rows[t]))} for t, c in chosen],
            "pairs": pairs, "class_separation": class_separation(features[all_rows], labels[all_rows]),
            "projections": projections}
