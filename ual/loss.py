"""Cross-entropy with one label-smoothing value per sample (or per token).

Why our own loss: ``torch.nn.functional.cross_entropy(label_smoothing=...)`` and HF's ``LabelSmoother`` take one
global value and only the "uniform" convention; no framework offers per-sample smoothing (see
docs/pitfalls.md), and the authors' implementation builds several ``[B, T, V]`` target tensors.

Math. With target ``y``, smoothing ``e`` and vocabulary ``V``, the smoothed target puts ``b`` on ``y`` and ``a`` on
every other token: ``nontarget`` (the authors'): ``b = 1 - e, a = e / (V - 1)``; ``uniform`` (PyTorch's):
``b = 1 - e + e / V, a = e / V``. Since the target sums to one, per token

    loss = lse(z) - a * sum_v z_v - (b - a) * z_y        d loss / d z = softmax(z) - a - (b - a) * onehot(y)

so the loss needs three numbers per token (log-sum-exp, the sum of the logits, the target logit) and the gradient
can be written directly, chunk by chunk: no target tensor, no log-softmax. Both paths compute the gradient during
the forward (one read of the logits; the backward only scales it), which measured faster than recomputing it.

Two entry points. :func:`smoothed_cross_entropy` takes logits the model already produced (any model).
:func:`fused_smoothed_cross_entropy` takes the final hidden state and the output layer's weight and never holds more
than one chunk of logits; a trainer uses it like this (single process; under DDP/FSDP the decoder must run through
the wrapper, so use the logits path there)::

    ok, why = fused_loss_supported(model)              # model may be PEFT-wrapped
    if ok:
        hidden = final_hidden_states(model, input_ids, attention_mask)   # decoder only: no logits computed
        weight, bias = lm_head_weight(model)
        loss = fused_smoothed_cross_entropy(hidden, weight, labels, eps, bias=bias,
                                            num_items_in_batch=num_items_in_batch)
    else:                                              # log ``why``
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        loss = smoothed_cross_entropy(logits, labels, eps, num_items_in_batch=num_items_in_batch)

Do not ask the CausalLM for ``output_hidden_states=True``: its forward still computes the full logits.
Measurements: benchmarks/RESULTS.md.

Pure tensor code: imports nothing of ``ual``.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

Smoothing = Literal["nontarget", "uniform"]
IGNORE_INDEX = -100
# Logits per chunk in the loss over given logits. fp32 logits need no chunk buffer (the softmax is written into the
# gradient in place), so the size only sets how many ops run: on a loaded 2-core CPU per-op overhead outweighs cache
# locality and large chunks were fastest (chunk sweep in benchmarks/RESULTS.md). Other dtypes use one fp32 buffer
# of this size.
DEFAULT_CHUNK_BYTES = 256 * 2**20


def smoothing_coefficients(eps: torch.Tensor, vocab_size: int, smoothing: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Target mass ``b`` on the label and ``a`` on each other token, both shaped like ``eps`` (eps's dtype, >= fp32)."""
    eps = eps.to(_compute_dtype(eps.dtype))
    if smoothing == "nontarget":
        a = eps / (vocab_size - 1)
        return 1.0 - eps, a
    if smoothing == "uniform":
        a = eps / vocab_size
        return 1.0 - eps + a, a
    raise ValueError(f"smoothing must be 'nontarget' or 'uniform', got {smoothing!r}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs; fp64 inputs stay fp64 (exact tests against dense references)."""
    return torch.promote_types(dtype, torch.float32)


def _runs(mask: torch.Tensor, max_len: int) -> list[tuple[int, int]]:
    """[start, end) index ranges of the runs of True in a 1-D bool ``mask``, each split to at most ``max_len``."""
    m = torch.cat([mask.new_zeros(1), mask.reshape(-1), mask.new_zeros(1)]).to(torch.int8)
    edges = torch.diff(m).nonzero().squeeze(1).tolist()  # alternating run starts and ends
    return [(c, min(c + max_len, e)) for s, e in zip(edges[0::2], edges[1::2]) for c in range(s, e, max_len)]


class _SmoothedCE(torch.autograd.Function):
    """sum_t w_t * loss_t over rows of a ``[N, V]`` logits matrix; d/dlogits is written during the forward.

    Rows are processed in contiguous runs of target rows (ignored rows are only zero-filled), at most ``chunk`` rows
    at a time. The softmax and then the gradient are written straight into one logits-sized buffer, which is all
    autograd keeps: the logits themselves are not saved, so a caller may free them before the backward.
    """

    @staticmethod
    def forward(ctx, logits, valid, target, a, b, w, chunk, need_grad):
        # logits [N, V]; valid [N] bool (rows with a target); target, a, b, w [N]
        cdt = a.dtype
        total = torch.zeros((), dtype=cdt, device=logits.device)
        grad = torch.empty_like(logits) if need_grad else None
        direct = need_grad and logits.dtype == cdt  # softmax written in place into the gradient buffer
        buf = None if direct else torch.empty((min(chunk, logits.shape[0]), logits.shape[1]), dtype=cdt,
                                              device=logits.device)
        if need_grad:
            for s, e in _runs(~valid, logits.shape[0]):  # ignored rows cost a zero fill, nothing else
                grad[s:e] = 0
        for s, e in _runs(valid, chunk):  # slices, not gathers: row gathers of [*, V] are slow on CPU
            z = logits[s:e]
            t = target[s:e, None]
            zy = z.gather(1, t).squeeze(1).to(cdt)
            zsum = z.sum(-1, dtype=cdt)
            m = z.amax(-1, keepdim=True).to(cdt)
            p = torch.sub(z, m, out=grad[s:e] if direct else buf[:e - s]).exp_()
            se = p.sum(-1, keepdim=True)
            lse = (m + se.log()).squeeze(1)
            ae, be, we = a[s:e], b[s:e], w[s:e]
            total += (we * (lse - ae * zsum - (be - ae) * zy)).sum()
            if need_grad:  # w * (softmax - q), q = a everywhere plus (b - a) on the target
                p.mul_((we / se.squeeze(1))[:, None]).sub_((ae * we)[:, None])
                p.scatter_add_(1, t, -((be - ae) * we)[:, None])
                if not direct:
                    grad[s:e] = p
        if need_grad:
            ctx.save_for_backward(grad)
        ctx.backward_done = False
        return total

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.backward_done:
            raise RuntimeError("smoothed_cross_entropy: backward through the same loss twice is not supported "
                               "(its gradient buffer is scaled in place)")
        ctx.backward_done = True
        (grad,) = ctx.saved_tensors
        if not bool(grad_out == 1):
            grad.mul_(grad_out.to(grad.dtype))
        return grad, None, None, None, None, None, None, None


def _targets(labels: torch.Tensor, eps: torch.Tensor | float, vocab_size: int, smoothing: str, ignore_index: int,
             shift: bool, num_items_in_batch, device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Flatten labels/eps (shifted when asked) into per-token ``target, a, b, w, valid`` (all [B*T]).

    ``w`` is 1 / (target count) on valid tokens and 0 elsewhere; ``a, b`` are the smoothed target's masses; the
    float ones are in ``dtype`` (the compute dtype).
    """
    B, T = labels.shape
    eps_t = torch.as_tensor(eps, dtype=dtype, device=device)
    if eps_t.dim() == 0:
        eps_t = eps_t.expand(B, T)
    elif eps_t.dim() == 1:
        if eps_t.shape[0] != B:
            raise ValueError(f"per-sample eps has {eps_t.shape[0]} values for batch size {B}")
        eps_t = eps_t[:, None].expand(B, T)
    elif eps_t.shape != (B, T):
        raise ValueError(f"per-token eps must be [B, T] = {(B, T)}, got {tuple(eps_t.shape)}")
    if shift:
        labels = torch.cat([labels[:, 1:], labels.new_full((B, 1), ignore_index)], dim=1)
        eps_t = torch.cat([eps_t[:, 1:], eps_t.new_zeros((B, 1))], dim=1)
    labels = labels.reshape(-1)
    eps_t = eps_t.reshape(-1)
    valid = labels != ignore_index
    if bool(((eps_t < 0) | (eps_t >= 1))[valid].any()):
        raise ValueError("eps must be in [0, 1) at every target position")
    if bool(((labels < 0) | (labels >= vocab_size))[valid].any()):
        raise ValueError(f"labels must be in [0, {vocab_size}) or ignore_index={ignore_index}")
    denom = valid.sum() if num_items_in_batch is None else num_items_in_batch
    denom = torch.as_tensor(denom, dtype=eps_t.dtype, device=device).clamp(min=1)
    b, a = smoothing_coefficients(eps_t, vocab_size, smoothing)
    w = valid.to(eps_t.dtype) / denom
    target = torch.where(valid, labels, torch.zeros_like(labels))
    return target, a, b, w, valid


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor | float, *,
                           smoothing: Smoothing = "nontarget", ignore_index: int = IGNORE_INDEX, shift: bool = True,
                           num_items_in_batch: int | torch.Tensor | None = None,
                           chunk_size: int | None = None) -> torch.Tensor:
    """Cross-entropy with one label-smoothing value per sample.

    logits [B, T, V] float (any float dtype; computed in fp32, fp64 stays fp64); labels [B, T] int,
    ``ignore_index`` ignored; eps a float, [B] (per sample) or [B, T] (per token, aligned with ``labels``) in [0, 1).
    ``shift=True`` predicts ``labels[:, t + 1]`` from ``logits[:, t]`` (causal LM) without copying the logits.
    Returns a scalar in nats per target token: the sum over non-ignored targets divided by their count, or by
    ``num_items_in_batch`` when given (the count over a whole accumulated batch, so that gradient accumulation
    gives the gradient of one big batch). ``eps = 0`` is plain cross-entropy.
    Memory: one logits-sized gradient (written during the forward; autograd keeps nothing else of size V, not even
    the logits) plus, for non-fp32 logits, one fp32 chunk of ``chunk_size`` tokens (default: ``DEFAULT_CHUNK_BYTES``
    of logits). Positions whose target is ignored are skipped.
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    B, T, V = logits.shape
    target, a, b, w, valid = _targets(labels, eps, V, smoothing, ignore_index, shift, num_items_in_batch,
                                      logits.device, _compute_dtype(logits.dtype))
    chunk = int(chunk_size or max(1, DEFAULT_CHUNK_BYTES // (4 * V)))
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    return _SmoothedCE.apply(logits.reshape(B * T, V), valid, target, a, b, w, chunk, need_grad)


# ---------------------------------------------------------------------------------------------------------------
# Fused output layer + loss: the [tokens, V] logits never exist beyond one chunk.

FUSED_CHUNK_BYTES = 256 * 2**20  # fp32 logits per chunk (tokens x V x 4 bytes); bench_fused_chunk: 32 MiB was 2x slower


def _chunk_softmax_stats(z, target, a, b):
    """From a chunk's logits ``z`` [c, V] (compute dtype, overwritten with softmax): per-token loss and lse."""
    zy = z.gather(1, target[:, None]).squeeze(1)
    zsum = z.sum(-1)
    m = z.amax(-1, keepdim=True)
    p = z.sub_(m).exp_()
    se = p.sum(-1, keepdim=True)
    p.div_(se)  # z now holds softmax(z): one chunk buffer serves forward and gradient
    lse = (m + se.log()).squeeze(1)
    return lse - a * zsum - (b - a) * zy, lse


def _chunk_logits(h, weight, bias, cdt, buf=None):
    """Logits of one chunk in the compute dtype, into ``buf`` (reused across chunks: no fresh pages) when given."""
    if buf is not None and h.dtype == cdt:
        out = buf[:h.shape[0]]
        return torch.mm(h, weight.T, out=out) if bias is None else torch.addmm(bias, h, weight.T, out=out)
    z = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
    return z.to(cdt)


def _chunk_buffer(h, weight, chunk, cdt):
    """One reusable [chunk, V] logits buffer when the matmul can write into it (input dtype = compute dtype)."""
    if h.dtype != cdt:
        return None
    return torch.empty((min(chunk, h.shape[0]), weight.shape[0]), dtype=cdt, device=h.device)


def _grads_init(h, weight, need, cdt):
    """Gradient buffers for (hidden rows, weight, bias), None where not needed; weight and bias in ``cdt``."""
    need_h, need_w, need_b = need
    return (torch.empty_like(h) if need_h else None,
            torch.zeros(weight.shape, dtype=cdt, device=h.device) if need_w else None,
            torch.zeros(weight.shape[0], dtype=cdt, device=h.device) if need_b else None)


def _grads_add(grads, e, g, hc, weight):
    """Add one chunk's contribution, given d loss / d logits ``g`` [c, V] (compute dtype) and its rows ``hc``."""
    grad_h, grad_w, grad_b = grads
    if grad_b is not None:
        grad_b += g.sum(0)
    g = g.to(weight.dtype)
    if grad_h is not None:
        torch.mm(g, weight, out=grad_h[e])
    if grad_w is not None:  # in place when dtypes allow: a fresh [V, H] per chunk would cost page faults
        if grad_w.dtype == g.dtype:
            grad_w.addmm_(g.T, hc)
        else:
            grad_w += (g.T @ hc).to(grad_w.dtype)


def _logits_grad_(p, target, a, b, scale):
    """In place: softmax ``p`` [c, V] -> scale * (softmax - q), the gradient of the smoothed loss w.r.t. logits."""
    p.sub_(a[:, None])
    p.scatter_add_(1, target[:, None], -(b - a)[:, None])
    p.mul_(scale[:, None])
    return p


class _FusedSmoothedCE(torch.autograd.Function):
    """sum_t w_t * loss_t(h_t W^T + bias) over rows of ``h`` [N, H]; the gradients are computed in the forward.

    One pass per chunk: logits (1 matmul), softmax, then d/dh and d/dW (2 matmuls), which is the matmul count of the
    unfused forward + backward. Only gradient-sized buffers ([N, H], [V, H], [V]) outlive a chunk.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, target, a, b, w, chunk, need):
        cdt = _compute_dtype(h.dtype)
        total = torch.zeros((), dtype=cdt, device=h.device)
        grads = _grads_init(h, weight, need, cdt)
        buf = _chunk_buffer(h, weight, chunk, cdt)
        for s in range(0, h.shape[0], chunk):
            e = slice(s, s + chunk)
            hc = h[e]
            z = _chunk_logits(hc, weight, bias, cdt, buf)
            loss, _ = _chunk_softmax_stats(z, target[e], a[e], b[e])
            total += (w[e] * loss).sum()
            if any(need):
                _grads_add(grads, e, _logits_grad_(z, target[e], a[e], b[e], w[e]), hc, weight)
        ctx.save_for_backward(*(t for t in grads if t is not None))
        ctx.need = need
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        out = []
        for flag, dtype in zip(ctx.need, (None, *ctx.dtypes)):
            if not flag:
                out.append(None)
                continue
            g = saved.pop(0)
            g = g * grad_out.to(g.dtype)
            out.append(g if dtype is None else g.to(dtype))
        return (*out, None, None, None, None, None, None)


class _FusedSmoothedCERecompute(torch.autograd.Function):
    """Same value as :class:`_FusedSmoothedCE`; saves lse and recomputes each chunk's logits in the backward.

    Four matmuls per chunk instead of three, but no work for the gradient when no backward follows.
    Kept for the benchmark that chose the forward-gradient variant (benchmarks/bench_fused.py).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, target, a, b, w, chunk, need):
        cdt = _compute_dtype(h.dtype)
        total = torch.zeros((), dtype=cdt, device=h.device)
        lse = torch.empty(h.shape[0], dtype=cdt, device=h.device)
        buf = _chunk_buffer(h, weight, chunk, cdt)
        for s in range(0, h.shape[0], chunk):
            e = slice(s, s + chunk)
            loss, lse[e] = _chunk_softmax_stats(_chunk_logits(h[e], weight, bias, cdt, buf), target[e], a[e], b[e])
            total += (w[e] * loss).sum()
        ctx.save_for_backward(h, weight, bias, target, a, b, w, lse)
        ctx.chunk, ctx.need = chunk, need
        return total

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, bias, target, a, b, w, lse = ctx.saved_tensors
        cdt = lse.dtype
        grads = _grads_init(h, weight, ctx.need, cdt)
        buf = _chunk_buffer(h, weight, ctx.chunk, cdt)
        for s in range(0, h.shape[0], ctx.chunk):
            e = slice(s, s + ctx.chunk)
            p = _chunk_logits(h[e], weight, bias, cdt, buf).sub_(lse[e, None]).exp_()
            _grads_add(grads, e, _logits_grad_(p, target[e], a[e], b[e], w[e] * grad_out.to(cdt)), h[e], weight)
        grad_h, grad_w, grad_b = grads
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None, None)


def fused_smoothed_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                 eps: torch.Tensor | float, *, bias: torch.Tensor | None = None,
                                 smoothing: Smoothing = "nontarget", ignore_index: int = IGNORE_INDEX,
                                 shift: bool = True, num_items_in_batch: int | torch.Tensor | None = None,
                                 chunk_size: int | None = None, recompute: bool = False) -> torch.Tensor:
    """``smoothed_cross_entropy(hidden @ weight.T + bias, labels, eps, ...)`` without materialising the logits.

    hidden [B, T, H] (the final hidden state, the input of the output layer; see :func:`final_hidden_states`);
    weight [V, H] and optional bias [V] of the output layer (:func:`lm_head_weight`); labels, eps, ``smoothing``,
    ``ignore_index``, ``shift`` and ``num_items_in_batch`` exactly as in :func:`smoothed_cross_entropy`. Returns a
    scalar in nats per target token. Only non-ignored positions are computed (their hidden rows are gathered first,
    so prompt-masked tokens cost nothing); logits exist one chunk at a time (``chunk_size`` tokens, default: as many
    as fit ``FUSED_CHUNK_BYTES`` of fp32 logits). Gradients flow to ``hidden`` and, when they require grad, to
    ``weight`` and ``bias``. By default they are computed during the forward (three matmuls per chunk, like the
    unfused path); ``recompute=True`` instead recomputes the logits in the backward (four matmuls, nothing wasted
    when no backward follows). Under ``torch.no_grad()`` no gradient work is done either way.
    Matmuls run in the input dtype (bf16 stays bf16, as in the model's own lm_head); softmax and loss in fp32.
    """
    if hidden.dim() != 3 or labels.dim() != 2 or hidden.shape[:2] != labels.shape:
        raise ValueError(f"expected hidden [B, T, H] and labels [B, T], got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"weight must be [V, H] with H = {hidden.shape[2]}, got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise ValueError(f"hidden, weight and bias must share a dtype, got {hidden.dtype}, {weight.dtype}"
                         f"{'' if bias is None else ', ' + str(bias.dtype)}")
    B, T, H = hidden.shape
    V = weight.shape[0]
    target, a, b, w, valid = _targets(labels, eps, V, smoothing, ignore_index, shift, num_items_in_batch,
                                      hidden.device, _compute_dtype(hidden.dtype))
    idx = valid.nonzero().squeeze(1)
    h = hidden.reshape(B * T, H).index_select(0, idx)  # differentiable gather: ignored rows get zero gradient
    target, a, b, w = target[idx], a[idx], b[idx], w[idx]
    grad_on = torch.is_grad_enabled()
    need = (grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
            grad_on and bias is not None and bias.requires_grad)
    chunk = int(chunk_size or max(1, FUSED_CHUNK_BYTES // (4 * V)))
    fn = _FusedSmoothedCERecompute if recompute else _FusedSmoothedCE
    return fn.apply(h, weight, bias, target, a, b, w, chunk, need)


# ---------------------------------------------------------------------------------------------------------------
# Token-weighted cross-entropy: today's adaptive token-level peers of UAL (no smoothing; each target token's NLL is
# scaled by a detached weight computed from the model's own prediction at that position).
#
#   dft  (Wu et al. 2025, "On the Generalization of SFT: A Reinforcement Learning Perspective with Reward
#        Rectification", arXiv 2508.05629): w_t = p(y_t) detached. As TRL ships it (trl/trainer/sft_trainer.py
#        ``dft_loss``, ``SFTConfig(loss_type="dft")``) and LLaMA-Factory (``_dft_cross_entropy``).
#   eaft (arXiv 2601.02151, "Entropy-Adaptive Fine-Tuning"): w_t = (H_k(t) / log k) ** alpha detached, H_k the
#        entropy of the softmax renormalised over the k largest logits. LLaMA-Factory (src/llamafactory/train/
#        trainer_utils.py ``_eaft_cross_entropy``, ``use_eaft_loss``) uses k = 20, alpha = 1 and divides by 3.0
#        (~ log 20 = 2.996); axolotl (src/axolotl/monkeypatch/loss/eaft.py) uses the same k and alpha but does
#        not normalise. We divide by log k exactly, so the weight is in [0, 1] (0.14 % above LLaMA-Factory's).
#
# Both reduce like the smoothed loss: the sum over target tokens divided by their count, or by
# ``num_items_in_batch`` (gradient accumulation then gives the gradient of one big batch). Why our own code rather
# than TRL's function: TRL's takes the model outputs and always builds the full [B, T, V] log-softmax; ours gathers
# the target rows first (prompt-masked tokens cost nothing) and also runs from the final hidden states.

TokenWeighting = Literal["dft", "eaft"]
TOKEN_WEIGHTINGS = ("dft", "eaft")
EAFT_TOP_K = 20  # LLaMA-Factory's and axolotl's k
EAFT_ALPHA = 1.0  # LLaMA-Factory's and axolotl's default exponent


def token_weights(logits: torch.Tensor, target: torch.Tensor, weighting: str, *, top_k: int = EAFT_TOP_K,
                  alpha: float = EAFT_ALPHA) -> torch.Tensor:
    """Detached per-token weights [N] from logits [N, V] (compute dtype) and targets [N] (see the section above)."""
    with torch.no_grad():
        if weighting == "dft":
            return torch.softmax(logits, -1).gather(1, target[:, None]).squeeze(1)
        if weighting == "eaft":
            k = min(top_k, logits.shape[-1])
            if k < 2:
                raise ValueError(f"eaft needs a top-k of at least 2 logits, got {k}")
            logp = torch.log_softmax(torch.topk(logits, k, dim=-1).values, -1)
            h = -(logp.exp() * logp).sum(-1)
            return (h / math.log(k)).clamp(min=0.0) ** alpha
    raise ValueError(f"weighting must be one of {TOKEN_WEIGHTINGS}, got {weighting!r}")


def _weighted_rows(logits_rows, target, denom, weighting, top_k, alpha):
    """sum_t w_t NLL_t / denom over rows already restricted to target positions (plain autograd)."""
    z = logits_rows.to(_compute_dtype(logits_rows.dtype))
    nll = torch.nn.functional.cross_entropy(z, target, reduction="none")
    w = token_weights(z.detach(), target, weighting, top_k=top_k, alpha=alpha)
    return (w * nll).sum() / denom


def _target_rows(labels, ignore_index, shift, num_items_in_batch, vocab_size, dtype, device):
    """(flat indices of target positions, their targets, the divisor) for labels [B, T]."""
    B, _ = labels.shape
    if shift:
        labels = torch.cat([labels[:, 1:], labels.new_full((B, 1), ignore_index)], dim=1)
    labels = labels.reshape(-1)
    valid = labels != ignore_index
    if bool(((labels < 0) | (labels >= vocab_size))[valid].any()):
        raise ValueError(f"labels must be in [0, {vocab_size}) or ignore_index={ignore_index}")
    idx = valid.nonzero().squeeze(1)
    denom = valid.sum() if num_items_in_batch is None else num_items_in_batch
    denom = torch.as_tensor(denom, dtype=dtype, device=device).clamp(min=1)
    return idx, labels[idx], denom


def token_weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, weighting: TokenWeighting,
                                 ignore_index: int = IGNORE_INDEX, shift: bool = True,
                                 num_items_in_batch: int | torch.Tensor | None = None, top_k: int = EAFT_TOP_K,
                                 alpha: float = EAFT_ALPHA) -> torch.Tensor:
    """Cross-entropy with each target token's NLL scaled by a detached weight: ``dft`` or ``eaft`` (section above).

    logits [B, T, V] float (computed in fp32, fp64 stays fp64); labels [B, T] int, ``ignore_index`` ignored;
    ``shift`` and ``num_items_in_batch`` as in :func:`smoothed_cross_entropy`. Returns a scalar: sum_t w_t NLL_t over
    target tokens divided by their count (or ``num_items_in_batch``), nats per target token. Only the target rows'
    logits are copied (memory: those rows x V a few times).
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    B, T, V = logits.shape
    idx, target, denom = _target_rows(labels, ignore_index, shift, num_items_in_batch, V,
                                      _compute_dtype(logits.dtype), logits.device)
    return _weighted_rows(logits.reshape(B * T, V).index_select(0, idx), target, denom, weighting, top_k, alpha)


def fused_token_weighted_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                                       weighting: TokenWeighting, bias: torch.Tensor | None = None,
                                       ignore_index: int = IGNORE_INDEX, shift: bool = True,
                                       num_items_in_batch: int | torch.Tensor | None = None,
                                       top_k: int = EAFT_TOP_K, alpha: float = EAFT_ALPHA) -> torch.Tensor:
    """``token_weighted_cross_entropy(hidden @ weight.T + bias, labels, ...)`` computing logits for target rows only.

    hidden [B, T, H] (:func:`final_hidden_states`), weight [V, H] and bias [V] of the output layer
    (:func:`lm_head_weight`). The target rows of ``hidden`` are gathered first and only their logits are computed
    (plain autograd: with the prompt masked these are a few rows per sample, so no chunking is needed).
    """
    if hidden.dim() != 3 or labels.dim() != 2 or hidden.shape[:2] != labels.shape:
        raise ValueError(f"expected hidden [B, T, H] and labels [B, T], got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"weight must be [V, H] with H = {hidden.shape[2]}, got {tuple(weight.shape)}")
    B, T, H = hidden.shape
    idx, target, denom = _target_rows(labels, ignore_index, shift, num_items_in_batch, weight.shape[0],
                                      _compute_dtype(hidden.dtype), hidden.device)
    h = hidden.reshape(B * T, H).index_select(0, idx)
    z = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
    return _weighted_rows(z, target, denom, weighting, top_k, alpha)


# ---------------------------------------------------------------------------------------------------------------
# Model helpers for the fused path: the decoder's output without computing logits, and when that is exact.

# Families whose CausalLM forward is exactly ``lm_head(decoder(...).last_hidden_state)`` in transformers 5
# (checked in their modeling_*.py: no soft-capping, scaling or multiplier between the decoder and lm_head).
FUSED_VERIFIED_MODEL_TYPES = frozenset({
    "llama", "mistral", "mixtral", "gemma", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "olmo", "olmo2",
    "starcoder2", "smollm3",
})
# Config fields that change the logits after lm_head in some families (Gemma 2/3, Cohere, Granite, MiniCPM, ...).
_LOGIT_TRANSFORM_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier",
                           "output_multiplier_scale", "logit_softcapping")


def _causal_lm(model):
    """The transformers CausalLM inside a PEFT wrapper (its LoRA layers are injected in place), or ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model


def fused_loss_supported(model) -> tuple[bool, str]:
    """Whether ``lm_head(final_hidden_states(model, ...))`` reproduces ``model(...).logits`` exactly.

    model: a transformers causal LM, optionally PEFT-wrapped. Returns (True, "") or (False, reason). Conditions: a
    model family verified to apply its output layer directly to the decoder output (``FUSED_VERIFIED_MODEL_TYPES``),
    no logit soft-capping or scaling in the config, a plain ``nn.Linear`` output layer (tied embeddings fine; a LoRA
    adapter on lm_head is not) without forward hooks, and no PEFT prompt-learning adapter (virtual tokens).
    """
    wrapper = type(model).__name__
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or "FullyShardedDataParallel" in wrapper:
        return False, f"{wrapper}: calling its inner decoder directly would bypass gradient synchronisation"
    peft_cfgs = getattr(model, "peft_config", None)
    if isinstance(peft_cfgs, dict):
        for name, cfg in peft_cfgs.items():
            if getattr(cfg, "is_prompt_learning", False):
                return False, f"PEFT adapter {name!r} is prompt learning (virtual tokens bypass the decoder call)"
    lm = _causal_lm(model)
    config = getattr(lm, "config", None)
    if config is None or not hasattr(lm, "get_output_embeddings"):
        return False, f"{type(lm).__name__} is not a transformers model"
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    for field in _LOGIT_TRANSFORM_FIELDS:
        value = getattr(text_cfg, field, None)
        if value is not None and value != 1 and value != 1.0 and not (field.endswith("softcapping") and value == 0):
            return False, f"config.{field} = {value}: the logits are transformed after the output layer"
    model_type = getattr(text_cfg, "model_type", None)
    if model_type not in FUSED_VERIFIED_MODEL_TYPES:
        return False, (f"model_type {model_type!r} is not among the families verified to apply lm_head directly to "
                       f"the decoder output: {sorted(FUSED_VERIFIED_MODEL_TYPES)}")
    head = lm.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return False, f"output layer is {type(head).__module__}.{type(head).__name__}, not a plain torch.nn.Linear"
    if head._forward_hooks or head._forward_pre_hooks:
        return False, "output layer has forward hooks (e.g. accelerate offloading) that the fused path would skip"
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    if decoder is None or decoder is lm:
        return False, f"{type(lm).__name__} exposes no separate decoder module"
    return True, ""


def lm_head_weight(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output layer's (weight [V, H], bias [V] or None) of a (PEFT-wrapped) causal LM; tied weights included."""
    head = _causal_lm(model).get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"output layer is {type(head).__name__}, not torch.nn.Linear")
    return head.weight, head.bias


def final_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        **kwargs) -> torch.Tensor:
    """The input of the output layer, [B, T, H] in the model's dtype, computed without the logits.

    Calls the CausalLM's decoder (``get_decoder()``, e.g. ``LlamaForCausalLM.model``: embeddings, layers, final norm)
    directly. Through a PEFT LoRA wrapper this is the wrapped CausalLM's decoder, whose LoRA layers are injected in
    place, so adapters, gradient checkpointing and input-grad hooks all apply. Extra ``kwargs`` (e.g.
    ``position_ids``) go to the decoder. Check :func:`fused_loss_supported` first: for the models it accepts,
    ``lm_head(final_hidden_states(...))`` equals ``model(...).logits``.
    """
    lm = _causal_lm(model)
    decoder = lm.get_decoder()
    if decoder is lm:
        raise ValueError(f"{type(lm).__name__} exposes no separate decoder module")
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True, **kwargs)
    return out.last_hidden_state


def dense_smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor | float, *,
                                 smoothing: Smoothing = "nontarget", ignore_index: int = IGNORE_INDEX,
                                 shift: bool = True, num_items_in_batch: int | None = None) -> torch.Tensor:
    """Reference implementation that builds the full ``[B, T, V]`` target distribution (tests and benchmarks only).

    Same signature and result as :func:`smoothed_cross_entropy` (computed in fp32, fp64 for fp64 logits); memory
    O(B T V) several times over.
    """
    B, T, V = logits.shape
    cdt = _compute_dtype(logits.dtype)
    eps_t = torch.as_tensor(eps, dtype=cdt, device=logits.device)
    eps_t = eps_t.expand(B, T) if eps_t.dim() == 0 else (eps_t[:, None].expand(B, T) if eps_t.dim() == 1 else eps_t)
    if shift:
        logits, labels, eps_t = logits[:, :-1], labels[:, 1:], eps_t[:, 1:]
    logp = torch.log_softmax(logits.to(cdt), dim=-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    onehot = torch.nn.functional.one_hot(safe, V).to(cdt)
    e = eps_t[..., None]
    if smoothing == "nontarget":
        q = onehot * (1 - e) + (1 - onehot) * e / (V - 1)
    else:
        q = onehot * (1 - e) + e / V
    per_tok = -(q * logp).sum(-1) * valid
    denom = valid.sum() if num_items_in_batch is None else num_items_in_batch
    return per_tok.sum() / max(int(denom), 1)


def per_sample_token_nll(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX,
                         shift: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed token NLL per sample and the number of target tokens: ([B] nats, [B] counts). No smoothing."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), safe, reduction="none") * valid
    return nll.sum(1), valid.sum(1)
