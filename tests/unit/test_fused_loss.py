"""ual.loss fused output layer + loss, and the model helpers that feed it, against dense references."""
from __future__ import annotations

import pytest
import torch

from ual.loss import (dense_smoothed_cross_entropy, final_hidden_states, fused_loss_supported,
                      fused_smoothed_cross_entropy, lm_head_weight, smoothed_cross_entropy)

B, T, H, V = 3, 9, 8, 13
MODES = ["nontarget", "uniform"]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def _problem(seed=0, dtype=torch.float64, bias=True, b=B, t=T, ignore_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, H, generator=g).to(dtype)
    weight = torch.randn(V, H, generator=g).to(dtype)
    bias_t = torch.randn(V, generator=g).to(dtype) if bias else None
    labels = torch.randint(0, V, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < ignore_frac] = -100
    labels[0, 3] = 2
    eps_s = torch.rand(b, generator=g, dtype=torch.float64) * 0.9
    eps_t = torch.rand(b, t, generator=g, dtype=torch.float64) * 0.9
    return hidden, weight, bias_t, labels, eps_s, eps_t


def _grads(fn, hidden, weight, bias, *args, **kw):
    """(loss, d/dhidden, d/dweight, d/dbias) of fn(hidden, weight, bias, *args)."""
    leaves = [hidden.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True),
              None if bias is None else bias.detach().clone().requires_grad_(True)]
    loss = fn(*leaves, *args, **kw)
    loss.backward()
    return [loss.detach()] + [None if x is None else x.grad for x in leaves]


def _dense(hidden, weight, bias, labels, eps, **kw):
    logits = hidden @ weight.T + (0 if bias is None else bias)
    return dense_smoothed_cross_entropy(logits, labels, eps, **kw)


def _fused(hidden, weight, bias, labels, eps, **kw):
    return fused_smoothed_cross_entropy(hidden, weight, labels, eps, bias=bias, **kw)


def _assert_all_close(got, ref, dtype):
    for g, r in zip(got, ref):
        if r is None:
            assert g is None
        else:
            torch.testing.assert_close(g, r.to(g.dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("smoothing", MODES)
@pytest.mark.parametrize("eps_kind", ["sample", "token"])
@pytest.mark.parametrize("recompute", [False, True])
def test_matches_dense_reference(dtype, smoothing, eps_kind, recompute):
    hidden, weight, bias, labels, eps_s, eps_t = _problem(dtype=dtype)
    eps = eps_s if eps_kind == "sample" else eps_t
    # the reference runs in fp64 so that fp32 is checked against the truth, not against another fp32 rounding
    ref = _grads(_dense, hidden.double(), weight.double(), bias.double(), labels, eps, smoothing=smoothing)
    got = _grads(_fused, hidden, weight, bias, labels, eps, smoothing=smoothing, recompute=recompute, chunk_size=4)
    assert got[1].dtype == got[2].dtype == got[3].dtype == dtype
    _assert_all_close(got, ref, dtype)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunk_sizes_and_no_bias(chunk):
    hidden, weight, _, labels, eps_s, _ = _problem(seed=1, bias=False)
    ref = _grads(_dense, hidden, weight, None, labels, eps_s)
    _assert_all_close(_grads(_fused, hidden, weight, None, labels, eps_s, chunk_size=chunk), ref, torch.float64)


@pytest.mark.parametrize("shift", [True, False])
def test_equals_chunked_loss_on_materialised_logits(shift):
    hidden, weight, bias, labels, _, eps_t = _problem(seed=2)
    ref = _grads(lambda h, w, b: smoothed_cross_entropy(h @ w.T + b, labels, eps_t, shift=shift), hidden, weight, bias)
    got = _grads(_fused, hidden, weight, bias, labels, eps_t, shift=shift)
    _assert_all_close(got, ref, torch.float64)


def test_ignored_rows_get_zero_gradient_and_cost_nothing():
    hidden, weight, bias, labels, eps_s, _ = _problem(seed=3)
    labels[1] = -100
    ref = _grads(_dense, hidden, weight, bias, labels, eps_s)
    got = _grads(_fused, hidden, weight, bias, labels, eps_s)
    _assert_all_close(got, ref, torch.float64)
    gh = got[1]
    assert torch.all(gh[1] == 0) and torch.all(gh[:, -1] == 0)
    assert torch.all(gh[:, :-1][labels[:, 1:] == -100] == 0)
    # NaN in the hidden state of an ignored position cannot leak: those rows are never read
    h2 = hidden.clone()
    h2[1] = float("nan")
    assert torch.isfinite(_fused(h2, weight, bias, labels, eps_s))


def test_all_ignored():
    hidden, weight, bias, labels, eps_s, _ = _problem(seed=4)
    labels[:] = -100
    loss, gh, gw, gb = _grads(_fused, hidden, weight, bias, labels, eps_s)
    assert float(loss) == 0.0 and torch.all(gh == 0) and torch.all(gw == 0) and torch.all(gb == 0)


@pytest.mark.parametrize("smoothing", MODES)
@pytest.mark.parametrize("recompute", [False, True])
def test_gradient_accumulation_equals_one_big_batch(smoothing, recompute):
    hidden, weight, bias, labels, _, eps_t = _problem(seed=5, b=4)
    labels[2, :6] = -100
    big = _grads(_fused, hidden, weight, bias, labels, eps_t, smoothing=smoothing)
    n_items = int((labels[:, 1:] != -100).sum())
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True)
    total = 0.0
    for sl in (slice(0, 1), slice(1, 3), slice(3, 4)):
        loss = fused_smoothed_cross_entropy(h[sl], w, labels[sl], eps_t[sl], bias=b, smoothing=smoothing,
                                            num_items_in_batch=n_items, recompute=recompute)
        loss.backward()
        total = total + loss.detach()
    _assert_all_close([total, h.grad, w.grad, b.grad], big, torch.float64)


def test_frozen_weight_gets_no_gradient_and_no_grad_mode():
    hidden, weight, bias, labels, eps_s, _ = _problem(seed=6)
    h = hidden.clone().requires_grad_(True)
    loss = fused_smoothed_cross_entropy(h, weight, labels, eps_s, bias=bias)  # LoRA: lm_head frozen
    loss.backward()
    ref = _grads(_dense, hidden, weight, bias, labels, eps_s)
    torch.testing.assert_close(h.grad, ref[1], **TOL[torch.float64])
    assert weight.grad is None
    with torch.no_grad():
        val = fused_smoothed_cross_entropy(h, weight, labels, eps_s, bias=bias)
    assert not val.requires_grad
    torch.testing.assert_close(val, ref[0], **TOL[torch.float64])


def test_bf16_inputs():
    hidden, weight, bias, labels, eps_s, _ = _problem(seed=7, dtype=torch.bfloat16)
    ref = _grads(_dense, hidden.double(), weight.double(), bias.double(), labels, eps_s)
    got = _grads(_fused, hidden, weight, bias, labels, eps_s)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16
    torch.testing.assert_close(got[0].double(), ref[0], rtol=2e-2, atol=2e-2)  # bf16 matmul, as in the model
    for g, r in zip(got[1:], ref[1:]):
        torch.testing.assert_close(g.double(), r, rtol=5e-2, atol=5e-3)


def test_input_validation():
    hidden, weight, bias, labels, eps_s, _ = _problem()
    with pytest.raises(ValueError, match="hidden"):
        fused_smoothed_cross_entropy(hidden[0], weight, labels, eps_s)
    with pytest.raises(ValueError, match="weight"):
        fused_smoothed_cross_entropy(hidden, weight[:, :-1], labels, eps_s)
    with pytest.raises(ValueError, match="bias"):
        fused_smoothed_cross_entropy(hidden, weight, labels, eps_s, bias=bias[:-1])
    with pytest.raises(ValueError, match="dtype"):
        fused_smoothed_cross_entropy(hidden.float(), weight, labels, eps_s)
    with pytest.raises(ValueError, match="eps"):
        fused_smoothed_cross_entropy(hidden, weight, labels, 1.0)
    bad = labels.clone()
    bad[0, 3] = V
    with pytest.raises(ValueError, match="labels"):
        fused_smoothed_cross_entropy(hidden, weight, bad, eps_s)


# ---- model helpers -------------------------------------------------------------------------------------------

def _tiny(kind="llama", **extra):
    import transformers

    common = dict(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, head_dim=8)
    cfg_cls, model_cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                          "mistral": ("MistralConfig", "MistralForCausalLM"),
                          "gemma": ("GemmaConfig", "GemmaForCausalLM"),
                          "gemma2": ("Gemma2Config", "Gemma2ForCausalLM")}[kind]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**common, **extra)
    return getattr(transformers, model_cls)(cfg).eval()


def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))


def _ids(model, b=2, t=10):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size if hasattr(model, "config") else 61, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # right padding
    return ids, mask


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma", "llama-lora"])
def test_final_hidden_states_reproduce_logits_and_fused_loss(kind):
    model = _tiny(kind.split("-")[0])
    if kind.endswith("lora"):
        model = _lora(model)  # random LoRA weights: the adapter must change the result, and be applied
    ok, reason = fused_loss_supported(model)
    assert ok, reason
    ids, mask = _ids(model)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        h = final_hidden_states(model, ids, mask)
    weight, bias = lm_head_weight(model)
    torch.testing.assert_close(h, out.hidden_states[-1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.nn.functional.linear(h, weight, bias), out.logits, rtol=1e-5, atol=1e-5)
    labels = ids.masked_fill(mask == 0, -100)
    eps = torch.tensor([0.1, 0.3])
    want = smoothed_cross_entropy(out.logits, labels, eps)
    got = fused_smoothed_cross_entropy(h, weight, labels, eps, bias=bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_final_hidden_states_backpropagate_into_lora():
    model = _lora(_tiny("llama"))
    ids, mask = _ids(model)
    labels = ids.masked_fill(mask == 0, -100)
    eps = torch.tensor([0.2, 0.0])
    weight, bias = lm_head_weight(model)
    fused = fused_smoothed_cross_entropy(final_hidden_states(model, ids, mask), weight, labels, eps, bias=bias)
    fused.backward()
    lora = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    smoothed_cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels, eps).backward()
    assert lora and weight.grad is None  # lm_head frozen under LoRA
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(lora[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_fused_loss_supported_rejects_transformed_logits():
    ok, reason = fused_loss_supported(_tiny("llama", final_logit_softcapping=30.0))
    assert not ok and "final_logit_softcapping" in reason
    ok, reason = fused_loss_supported(_tiny("gemma2"))  # Gemma 2 soft-caps its logits by default
    assert not ok and "softcapping" in reason
    ok, reason = fused_loss_supported(_lora(_tiny("gemma2")))
    assert not ok and "softcapping" in reason


def test_fused_loss_supported_rejects_lora_on_lm_head_and_hooks():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny("llama"), LoraConfig(r=4, target_modules=["q_proj", "lm_head"],
                                                      task_type="CAUSAL_LM"))
    ok, reason = fused_loss_supported(model)
    assert not ok and "nn.Linear" in reason
    model = _tiny("llama")
    model.lm_head.register_forward_hook(lambda mod, inp, out: out * 2)
    ok, reason = fused_loss_supported(model)
    assert not ok and "hooks" in reason


def test_fused_loss_supported_on_the_package_tiny_model():
    from ual.common.models import build_tiny_model

    model, _ = build_tiny_model()
    assert fused_loss_supported(model) == (True, "")
    assert fused_loss_supported(_lora(model)) == (True, "")
    weight, bias = lm_head_weight(model)
    assert weight is model.get_input_embeddings().weight and bias is None  # tied embeddings
