"""ual.loss token-weighted cross-entropy (dft, eaft): values and gradients against dense loop-over-tokens references."""
from __future__ import annotations

import math

import pytest
import torch

from ual.loss import (EAFT_TOP_K, fused_token_weighted_cross_entropy, token_weighted_cross_entropy,
                      token_weights)

B, T, V = 3, 6, 29  # V > EAFT_TOP_K, so the top-k truncation is exercised
WEIGHTINGS = ["dft", "eaft"]
F64 = dict(rtol=1e-9, atol=1e-12)


def _batch(seed=0, b=B, t=T, v=V):
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(b, t, v, generator=g, dtype=torch.float64))
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.3] = -100
    labels[0, 2] = 3
    return logits, labels


def _ref_weight(z: torch.Tensor, y: int, weighting: str, k: int = EAFT_TOP_K, alpha: float = 1.0) -> float:
    """One token's weight, written out from the definitions with plain Python floats."""
    zs = [float(x) for x in z]
    m = max(zs)
    if weighting == "dft":
        return math.exp(zs[y] - m) / sum(math.exp(x - m) for x in zs)
    top = sorted(zs, reverse=True)[:k]
    s = sum(math.exp(x - top[0]) for x in top)
    p = [math.exp(x - top[0]) / s for x in top]
    h = -sum(q * math.log(q) for q in p if q > 0)
    return (h / math.log(k)) ** alpha


def _reference(logits, labels, weighting, *, shift=True, num_items=None):
    """Loss and d loss / d logits by a loop over tokens: w * NLL with w a constant, gradient w * (softmax - onehot)."""
    b, t, v = logits.shape
    loss, grad, count = 0.0, torch.zeros_like(logits), 0
    terms = []
    for i in range(b):
        for j in range(t - 1 if shift else t):
            y = int(labels[i, j + 1] if shift else labels[i, j])
            if y == -100:
                continue
            z = logits[i, j]
            w = _ref_weight(z, y, weighting)
            p = torch.softmax(z, -1)
            terms.append((i, j, y, w, p))
            count += 1
    denom = count if num_items is None else num_items
    for i, j, y, w, p in terms:
        loss += w * -math.log(float(p[y])) / denom
        g = p.clone()
        g[y] -= 1
        grad[i, j] = w * g / denom
    return torch.tensor(loss, dtype=torch.float64), grad


def _loss_and_grad(logits, labels, **kw):
    x = logits.detach().clone().requires_grad_(True)
    loss = token_weighted_cross_entropy(x, labels, **kw)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("shift", [True, False])
def test_matches_loop_reference(weighting, shift):
    logits, labels = _batch()
    l1, g1 = _loss_and_grad(logits, labels, weighting=weighting, shift=shift)
    l2, g2 = _reference(logits, labels, weighting, shift=shift)
    torch.testing.assert_close(l1, l2, **F64)
    torch.testing.assert_close(g1, g2, **F64)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_num_items_in_batch_gives_the_gradient_of_one_big_batch(weighting):
    logits, labels = _batch(seed=1, b=4)
    n = int((labels[:, 1:] != -100).sum())
    l_all, g_all = _loss_and_grad(logits, labels, weighting=weighting)
    parts = [_loss_and_grad(logits[s], labels[s], weighting=weighting, num_items_in_batch=n)
             for s in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(parts[0][0] + parts[1][0], l_all, **F64)
    torch.testing.assert_close(torch.cat([parts[0][1], parts[1][1]]), g_all, **F64)
    l_ref, _ = _reference(logits[:2], labels[:2], weighting, num_items=n)
    torch.testing.assert_close(parts[0][0], l_ref, **F64)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_hidden_state_path_equals_logits_path(weighting, with_bias):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(B, T, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, 8, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    _, labels = _batch(seed=3)
    loss = fused_token_weighted_cross_entropy(hidden, weight, labels, bias=bias, weighting=weighting,
                                              num_items_in_batch=7)
    grads = torch.autograd.grad(loss, [t for t in (hidden, weight, bias) if t is not None])
    logits = hidden @ weight.T + (0 if bias is None else bias)
    ref = token_weighted_cross_entropy(logits, labels, weighting=weighting, num_items_in_batch=7)
    ref_grads = torch.autograd.grad(ref, [t for t in (hidden, weight, bias) if t is not None])
    torch.testing.assert_close(loss, ref, **F64)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **F64)


def test_weights_at_known_points():
    uniform = torch.zeros(2, V, dtype=torch.float64)
    target = torch.tensor([0, 5])
    torch.testing.assert_close(token_weights(uniform, target, "dft"), torch.full((2,), 1 / V, dtype=torch.float64))
    torch.testing.assert_close(token_weights(uniform, target, "eaft"), torch.ones(2, dtype=torch.float64))
    sharp = torch.zeros(1, V, dtype=torch.float64)
    sharp[0, 4] = 60.0
    assert float(token_weights(sharp, torch.tensor([4]), "eaft")) < 1e-20
    assert float(token_weights(sharp, torch.tensor([4]), "dft")) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weighting"):
        token_weights(uniform, target, "focal")


def test_weights_carry_no_gradient():
    """The weight is a constant: the gradient is w * (softmax - onehot), not that of p * log p."""
    z = torch.tensor([[[0.3, -1.0, 2.0, 0.5]] * 2], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 1]])
    loss = token_weighted_cross_entropy(z, labels, weighting="dft")
    (g,) = torch.autograd.grad(loss, z)
    p = torch.softmax(z[0, 0].detach(), -1)
    expected = p[1] * (p - torch.nn.functional.one_hot(torch.tensor(1), 4))
    torch.testing.assert_close(g[0, 0], expected, **F64)
    full = -(p[1] * torch.log(p[1]))  # the non-detached objective would differ:
    zz = z[0, 0].detach().clone().requires_grad_(True)
    (g_full,) = torch.autograd.grad(-(torch.softmax(zz, -1)[1] * torch.log_softmax(zz, -1)[1]), zz)
    assert not torch.allclose(g_full, expected) and float(full) > 0


def test_all_ignored_gives_zero_and_bad_labels_raise():
    logits, labels = _batch()
    assert float(token_weighted_cross_entropy(logits, torch.full_like(labels, -100), weighting="dft")) == 0.0
    bad = labels.clone()
    bad[0, 3] = V
    with pytest.raises(ValueError, match="labels"):
        token_weighted_cross_entropy(logits, bad, weighting="eaft")
