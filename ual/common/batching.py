"""Padding token-id lists into batches: the one definition every stage uses.

Why our own: the tokenizers' ``pad`` works on their own encodings and dictionaries; every caller here holds plain
id lists (prompt and response encoded separately, then joined), so a ten-line function is the shortest correct path.
"""
from __future__ import annotations

from typing import Sequence


def pad(batch_ids: Sequence[Sequence[int]], pad_id: int, *, side: str = "right", labels: bool = False):
    """Pad id lists into ``input_ids`` [B, L] long and ``attention_mask`` [B, L] long (0 on padding).

    side: "right" (training, scoring: positions of real tokens start at 0) or "left" (generation: every row ends at
    the last column). labels: also return ``labels`` [B, L], the ids with -100 on padding.
    """
    import torch

    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max((len(x) for x in batch_ids), default=0)
    ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for i, x in enumerate(batch_ids):
        if not len(x):
            continue
        sl = slice(width - len(x), width) if side == "left" else slice(0, len(x))
        ids[i, sl] = torch.as_tensor(list(x), dtype=torch.long)
        mask[i, sl] = 1
    if labels:
        return ids, mask, ids.masked_fill(mask == 0, -100)
    return ids, mask


def left_pad(batch_ids: Sequence[Sequence[int]], pad_id: int):
    """Left-padded ``input_ids`` and ``attention_mask`` [B, L] (generation)."""
    return pad(batch_ids, pad_id, side="left")


def right_pad(batch_ids: Sequence[Sequence[int]], pad_id: int):
    """Right-padded ``input_ids`` and ``attention_mask`` [B, L] (training, scoring)."""
    return pad(batch_ids, pad_id, side="right")
