"""From records to batches: each sample's eps, its token ids and labels, and the collator that carries eps.

The Trainer drops dataset columns its model's forward does not take, and TRL's collators drop unknown keys
(docs/pitfalls.md): :class:`UALCollator` is what keeps a per-sample ``eps`` column in the batch.
"""
from __future__ import annotations

import math
from typing import Sequence

from ual.common.errors import InputError
from ual.common.formatting import IGNORE_INDEX


def sample_eps(cfg, records) -> "np.ndarray":
    """Per-sample eps [N] for ``records`` under ``cfg.method`` (a ``TrainConfig``; scores read and checked for
    methods "ual" and "shuffled").

    - ``sft``, ``dft``, ``eaft``: 0 (the last two weight tokens instead of smoothing);
    - ``ls``: ``mean_eps`` everywhere; ``ual``: the authors' mapping of the scores (``ual.smoothing``);
    - ``oracle``: the controlled benchmark's known entropy class: 0 on low-entropy records
      (``ual.data.controlled.LOW_SOURCE``), ``mean_eps * N / n_high`` on high-entropy ones, so the mean is
      ``mean_eps`` (an InputError when that exceeds ``eps_cap`` or a record is from neither family);
    - ``shuffled``: ual's values, randomly permuted over the records with ``numpy.random.default_rng(seed)``: same
      values and mean, no information about which sample is uncertain.
    """
    import numpy as np

    if cfg.method == "oracle":
        return _oracle_eps(cfg, records)
    eps = _mapped_eps(cfg, records, "ual" if cfg.method == "shuffled" else cfg.method)
    if cfg.method == "shuffled":
        eps = eps[np.random.default_rng(cfg.seed).permutation(len(eps))]
    return eps


def _mapped_eps(cfg, records, method: str) -> "np.ndarray":
    """eps of the methods ``ual.smoothing.eps_for_method`` knows (sft, ls, ual); token-weighted methods get 0."""
    import numpy as np

    from ual.data.records import load_scores
    from ual.smoothing import ScoreError, eps_for_method
    from ual.train.config import TOKEN_WEIGHTED_METHODS

    if method in TOKEN_WEIGHTED_METHODS:
        return np.zeros(len(records))
    scores = None
    if method == "ual":
        if not cfg.scores:
            raise InputError(None, None, "scores", f"method {cfg.method!r} needs a scores file")
        rng = tuple(cfg.score_range) if cfg.score_range is not None else (0.0, math.inf)
        by_id = load_scores(cfg.scores, records, score_range=rng)
        scores = np.array([by_id[r.id] for r in records])
        if cfg.score_range is None:
            rng = (0.0, float(scores.max()) if scores.size else 1.0)
    else:
        rng = (0.0, 99.0)
    try:
        return eps_for_method(method, scores, len(records), mean_eps=cfg.mean_eps, mapping=cfg.mapping,
                              cap=cfg.eps_cap, score_range=rng,
                              eps_range=tuple(cfg.eps_range) if cfg.eps_range else None)
    except ScoreError as e:
        raise InputError(cfg.scores, None, "score", str(e)) from None
    except ValueError as e:
        raise InputError(cfg.scores, None, "mean_eps", str(e)) from None


def _oracle_eps(cfg, records) -> "np.ndarray":
    """eps from the controlled benchmark's entropy class (see :func:`sample_eps`)."""
    import numpy as np

    from ual.data.controlled import HIGH_SOURCE, LOW_SOURCE

    other = [r for r in records if r.source not in (LOW_SOURCE, HIGH_SOURCE)]
    if other:
        raise InputError(cfg.data or None, None, "source", f"method 'oracle' needs controlled-benchmark records "
                         f"({LOW_SOURCE!r} or {HIGH_SOURCE!r}); record {other[0].id!r} has {other[0].source!r}")
    high = np.array([r.source == HIGH_SOURCE for r in records])
    if cfg.mean_eps > 0 and not high.any():
        raise InputError(cfg.data or None, None, "source", "method 'oracle' needs at least one high-entropy record")
    value = cfg.mean_eps * len(records) / max(int(high.sum()), 1)
    if value > cfg.eps_cap:
        raise InputError(None, None, "mean_eps", f"oracle eps on high-entropy records would be {value:.3g} > "
                         f"eps_cap {cfg.eps_cap}: lower mean_eps or add high-entropy records")
    return np.where(high, value, 0.0)


# A sample is cut to its first max_length tokens; text beyond max_length x this many characters cannot be among
# them (no tokenizer in use has tokens this long on average), so it is dropped before tokenizing: one valid 50 MB
# record would otherwise take gigabytes to tokenize only to be cut. Our bound, generous by design.
MAX_CHARS_PER_TOKEN = 64


def cut_messages(messages: list[dict], max_chars: int) -> list[dict]:
    """The first ``max_chars`` characters of a conversation (later messages dropped, the last one kept cut)."""
    out, left = [], max_chars
    for m in messages:
        if left <= 0:
            break
        content = m.get("content", "")
        out.append({**m, "content": content[:left]} if len(content) > left else m)
        left -= len(content)
    return out


def tokenize_records(records, tokenizer, eps, *, template: str, mask_prompt: bool, max_length: int) -> list[dict]:
    """Examples for the collator: ``{"input_ids": [L], "labels": [L], "eps": float, "id": str}`` per record."""
    from ual.common.formatting import build_example

    out = []
    for rec, e in zip(records, eps):
        ex = build_example(cut_messages(rec.messages, max_length * MAX_CHARS_PER_TOKEN), tokenizer, template=template, mask_prompt=mask_prompt, max_length=max_length)
        if not any(l != IGNORE_INDEX for l in ex["labels"][1:]):
            raise InputError(None, None, "messages", f"record {rec.id!r} has no target token after truncation to "
                             f"{max_length} tokens")
        out.append({"input_ids": ex["input_ids"], "labels": ex["labels"], "eps": float(e), "id": rec.id})
    return out


class UALCollator:
    """Right-pads examples into ``input_ids``/``attention_mask``/``labels`` [B, L] and ``eps`` [B] float32.

    Each example needs ``input_ids`` and ``eps`` (a number in [0, 1), e.g. a dataset column). ``labels`` default to
    the ids; TRL's ``completion_mask`` (1 on completion tokens), when present and ``completion_only`` is on, masks
    the prompt out of them. Other keys are dropped.
    """

    def __init__(self, pad_token_id: int, *, completion_only: bool = True):
        self.pad_token_id = pad_token_id
        self.completion_only = completion_only

    def _labels(self, e: dict) -> list[int]:
        labels = list(e["labels"]) if e.get("labels") is not None else list(e["input_ids"])
        mask = e.get("completion_mask")
        if self.completion_only and mask is not None:
            labels = [l if m else IGNORE_INDEX for l, m in zip(labels, mask)]
        return labels

    def __call__(self, examples: Sequence[dict]) -> dict:
        import torch

        from ual.common.batching import right_pad

        missing = [i for i, e in enumerate(examples) if "eps" not in e]
        if missing:
            raise KeyError(f"UALCollator: example {missing[0]} of the batch has no 'eps'. Give the dataset an eps "
                           "column and keep it: TrainingArguments(remove_unused_columns=False) (see the README, "
                           "'UAL in your own training script')")
        ids, mask = right_pad([e["input_ids"] for e in examples], self.pad_token_id)
        labels, _ = right_pad([self._labels(e) for e in examples], IGNORE_INDEX)
        eps = torch.tensor([float(e["eps"]) for e in examples], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "eps": eps}
