"""ual.loss: the chunked per-sample smoothed cross-entropy against dense references and PyTorch's own losses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ual.loss import dense_smoothed_cross_entropy, per_sample_token_nll, smoothed_cross_entropy

B, T, V = 3, 7, 11
MODES = ["nontarget", "uniform"]
F64 = dict(rtol=1e-9, atol=1e-12)  # fp64 logits are computed in fp64 end to end


def _batch(seed=0, dtype=torch.float64, b=B, t=T, v=V, ignore_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(b, t, v, generator=g)).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < ignore_frac] = -100
    labels[0, 2] = 3  # at least one target in every test batch
    eps_s = torch.rand(b, generator=g) * 0.9
    eps_t = torch.rand(b, t, generator=g) * 0.9
    return logits, labels, eps_s, eps_t


def _loss_and_grad(fn, logits, *args, **kw):
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kw)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("smoothing", MODES)
@pytest.mark.parametrize("eps_kind", ["sample", "token", "scalar"])
@pytest.mark.parametrize("shift", [True, False])
def test_matches_dense_reference(smoothing, eps_kind, shift):
    logits, labels, eps_s, eps_t = _batch()
    eps = {"sample": eps_s, "token": eps_t, "scalar": 0.25}[eps_kind]
    l1, g1 = _loss_and_grad(smoothed_cross_entropy, logits, labels, eps, smoothing=smoothing, shift=shift)
    l2, g2 = _loss_and_grad(dense_smoothed_cross_entropy, logits, labels, eps, smoothing=smoothing, shift=shift)
    assert l1.dtype == g1.dtype == torch.float64
    torch.testing.assert_close(l1, l2, **F64)
    torch.testing.assert_close(g1, g2, **F64)


@pytest.mark.parametrize("chunk", [1, 2, 5, 19, 10_000])
@pytest.mark.parametrize("smoothing", MODES)
def test_chunk_sizes_that_do_not_divide_n(chunk, smoothing):
    logits, labels, eps_s, _ = _batch(seed=1)
    ref_l, ref_g = _loss_and_grad(dense_smoothed_cross_entropy, logits, labels, eps_s, smoothing=smoothing)
    l, g = _loss_and_grad(smoothed_cross_entropy, logits, labels, eps_s, smoothing=smoothing, chunk_size=chunk)
    torch.testing.assert_close(l, ref_l, **F64)
    torch.testing.assert_close(g, ref_g, **F64)


def test_eps_zero_is_plain_cross_entropy_on_shifted_logits():
    logits, labels, _, _ = _batch(seed=2)
    l, g = _loss_and_grad(smoothed_cross_entropy, logits, labels, torch.zeros(B))
    ref_l, ref_g = _loss_and_grad(lambda x: F.cross_entropy(x[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1)),
                                  logits)
    torch.testing.assert_close(l, ref_l, **F64)
    torch.testing.assert_close(g, ref_g, **F64)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_uniform_scalar_matches_torch_label_smoothing(eps):
    logits, labels, _, _ = _batch(seed=3)
    l, g = _loss_and_grad(smoothed_cross_entropy, logits, labels, eps, smoothing="uniform")
    ref_l, ref_g = _loss_and_grad(
        lambda x: F.cross_entropy(x[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), label_smoothing=eps), logits)
    torch.testing.assert_close(l, ref_l, **F64)
    torch.testing.assert_close(g, ref_g, **F64)


def test_nontarget_and_uniform_differ():
    logits, labels, eps_s, _ = _batch(seed=4)
    a = smoothed_cross_entropy(logits, labels, eps_s, smoothing="nontarget")
    b = smoothed_cross_entropy(logits, labels, eps_s, smoothing="uniform")
    assert abs(float(a - b)) > 1e-4


def test_nontarget_closed_form():
    """(1 - e) * NLL + e / (V - 1) * (sum_v -log p_v - NLL), the per-token form of ual-method.md section 4."""
    logits, labels, eps_s, _ = _batch(seed=5, ignore_frac=0.0)
    logp = torch.log_softmax(logits[:, :-1], -1)
    y = labels[:, 1:]
    nll = -logp.gather(-1, y[..., None]).squeeze(-1)
    e = eps_s[:, None].double()
    per_tok = (1 - e) * nll + e / (V - 1) * (-logp.sum(-1) - nll)
    got = smoothed_cross_entropy(logits, labels, eps_s)
    torch.testing.assert_close(got, per_tok.mean(), **F64)


def test_ignored_positions_and_fully_ignored_rows():
    logits, labels, eps_s, _ = _batch(seed=6)
    labels[1] = -100  # a sample with no target at all
    l, g = _loss_and_grad(smoothed_cross_entropy, logits, labels, eps_s)
    ref_l, ref_g = _loss_and_grad(dense_smoothed_cross_entropy, logits, labels, eps_s)
    torch.testing.assert_close(l, ref_l, **F64)
    torch.testing.assert_close(g, ref_g, **F64)
    assert torch.all(g[1] == 0)
    # with the shift, a position whose next label is ignored gets no gradient; the last position never does
    assert torch.all(g[:, -1] == 0)
    nxt_ignored = labels[:, 1:] == -100
    assert torch.all(g[:, :-1][nxt_ignored] == 0)
    # changing the logits or eps of ignored targets does not change the loss
    logits2, eps2 = logits.clone(), eps_s.clone()
    logits2[1] += 5.0
    eps2[1] = 0.7
    assert torch.equal(smoothed_cross_entropy(logits2, labels, eps2), smoothed_cross_entropy(logits, labels, eps_s))


def test_all_ignored_gives_zero_loss_and_zero_grad():
    logits, labels, eps_s, _ = _batch(seed=7)
    labels[:] = -100
    l, g = _loss_and_grad(smoothed_cross_entropy, logits, labels, eps_s)
    assert float(l) == 0.0 and torch.all(g == 0)


def test_custom_ignore_index():
    logits, labels, eps_s, _ = _batch(seed=8)
    relab = torch.where(labels == -100, torch.full_like(labels, -1), labels)
    a = smoothed_cross_entropy(logits, relab, eps_s, ignore_index=-1)
    b = smoothed_cross_entropy(logits, labels, eps_s)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("smoothing", MODES)
def test_bf16_logits(smoothing):
    logits, labels, eps_s, _ = _batch(seed=9, dtype=torch.bfloat16)
    l, g = _loss_and_grad(smoothed_cross_entropy, logits, labels, eps_s, smoothing=smoothing)
    ref_l, ref_g = _loss_and_grad(dense_smoothed_cross_entropy, logits.double(), labels, eps_s, smoothing=smoothing)
    assert l.dtype == torch.float32 and g.dtype == torch.bfloat16
    torch.testing.assert_close(l.double(), ref_l, rtol=1e-5, atol=1e-6)  # computed in fp32 from the bf16 values
    torch.testing.assert_close(g.double(), ref_g, rtol=1e-2, atol=1e-3)  # bf16 gradient storage


@pytest.mark.parametrize("smoothing", MODES)
def test_gradient_accumulation_equals_one_big_batch(smoothing):
    """Micro-batches each divided by the whole batch's target count add up to the big batch's loss and gradient."""
    logits, labels, _, eps_t = _batch(seed=10, b=4)
    labels[3, :5] = -100  # uneven target counts across micro-batches
    big_l, big_g = _loss_and_grad(smoothed_cross_entropy, logits, labels, eps_t, smoothing=smoothing)
    n_items = int((labels[:, 1:] != -100).sum())
    x = logits.detach().clone().requires_grad_(True)
    total = 0.0
    for sl in (slice(0, 1), slice(1, 4)):
        loss = smoothed_cross_entropy(x[sl], labels[sl], eps_t[sl], smoothing=smoothing, num_items_in_batch=n_items)
        loss.backward()
        total = total + loss.detach()
    torch.testing.assert_close(total, big_l, **F64)
    torch.testing.assert_close(x.grad, big_g, **F64)
    # and the per-micro-batch mean would NOT give the same gradient (the pitfall this guards against)
    y = logits.detach().clone().requires_grad_(True)
    for sl in (slice(0, 1), slice(1, 4)):
        (smoothed_cross_entropy(y[sl], labels[sl], eps_t[sl], smoothing=smoothing) / 2).backward()
    assert not torch.allclose(y.grad, big_g, rtol=1e-3, atol=1e-6)


def test_num_items_in_batch_tensor_matches_dense():
    logits, labels, eps_s, _ = _batch(seed=11)
    n = torch.tensor(40)
    l, g = _loss_and_grad(smoothed_cross_entropy, logits, labels, eps_s, num_items_in_batch=n)
    ref_l, ref_g = _loss_and_grad(dense_smoothed_cross_entropy, logits, labels, eps_s, num_items_in_batch=40)
    torch.testing.assert_close(l, ref_l, **F64)
    torch.testing.assert_close(g, ref_g, **F64)


def test_autograd_keeps_only_the_gradient_not_the_logits():
    """Memory: the loss keeps one logits-sized tensor (the gradient it wrote in the forward) and per-token vectors;
    no log-softmax, no target tensor, not even the logits, which the caller may free before the backward."""
    logits, labels, eps_s, _ = _batch(seed=12, dtype=torch.float32)
    ref_l, ref_g = _loss_and_grad(dense_smoothed_cross_entropy, logits, labels, eps_s)
    x = logits.clone().requires_grad_(True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = smoothed_cross_entropy(x * 1.0, labels, eps_s, chunk_size=4)  # x * 1.0: an intermediate "logits"
    big = [t for t in saved if t.numel() >= B * T * V]
    assert len(big) == 1 and big[0].data_ptr() != x.data_ptr()
    loss.backward()
    torch.testing.assert_close(x.grad, ref_g, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="twice"):
        loss2 = smoothed_cross_entropy(x, labels, eps_s)
        loss2.backward(retain_graph=True)
        loss2.backward()


def test_no_grad_and_scaled_backward():
    logits, labels, eps_s, _ = _batch(seed=14)
    ref_l, ref_g = _loss_and_grad(dense_smoothed_cross_entropy, logits, labels, eps_s)
    x = logits.clone().requires_grad_(True)
    with torch.no_grad():
        torch.testing.assert_close(smoothed_cross_entropy(x, labels, eps_s), ref_l, **F64)
    (smoothed_cross_entropy(x, labels, eps_s) * 0.25).backward()  # e.g. division by accumulation steps
    torch.testing.assert_close(x.grad, ref_g * 0.25, **F64)


def test_causal_shift_on_peft_wrapped_model():
    """eps = 0 on a LoRA-wrapped model's logits with shift=True reproduces the model's own (shifted) loss."""
    from peft import LoraConfig, get_peft_model

    from ual.common.models import build_tiny_model

    model, _ = build_tiny_model()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a masked prompt
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    ours = smoothed_cross_entropy(out.logits, labels, torch.zeros(2), shift=True)
    torch.testing.assert_close(ours, out.loss, rtol=1e-5, atol=1e-6)
    unshifted = smoothed_cross_entropy(out.logits, labels, torch.zeros(2), shift=False)
    assert abs(float(unshifted - out.loss)) > 1e-3  # forgetting the shift is detectable


def test_per_sample_token_nll():
    logits, labels, _, _ = _batch(seed=13)
    nll, n = per_sample_token_nll(logits, labels)
    for i in range(B):
        m = labels[i, 1:] != -100
        ref = F.cross_entropy(logits[i, :-1][m], labels[i, 1:][m], reduction="sum")
        torch.testing.assert_close(nll[i], ref.to(nll.dtype), rtol=1e-5, atol=1e-6)  # fp32 by design
        assert int(n[i]) == int(m.sum())


@pytest.mark.parametrize("bad_eps", [-0.1, 1.0, 1.5])
def test_eps_out_of_range(bad_eps):
    logits, labels, _, _ = _batch()
    with pytest.raises(ValueError, match="eps"):
        smoothed_cross_entropy(logits, labels, bad_eps)
    with pytest.raises(ValueError, match="eps"):
        smoothed_cross_entropy(logits, labels, torch.tensor([0.1, bad_eps, 0.2]))


def test_wrong_shapes():
    logits, labels, _, _ = _batch()
    with pytest.raises(ValueError, match="logits"):
        smoothed_cross_entropy(logits[0], labels, 0.1)
    with pytest.raises(ValueError, match="logits"):
        smoothed_cross_entropy(logits, labels[:, :-1], 0.1)
    with pytest.raises(ValueError, match="per-sample eps"):
        smoothed_cross_entropy(logits, labels, torch.full((B + 1,), 0.1))
    with pytest.raises(ValueError, match="per-token eps"):
        smoothed_cross_entropy(logits, labels, torch.full((B, T + 1), 0.1))
    with pytest.raises(ValueError, match="smoothing"):
        smoothed_cross_entropy(logits, labels, 0.1, smoothing="label")
