"""AVA objectives: LLM alignment as approximate variational Bayesian inverse RL on the token MDP.

Cai, Yuan, Shi, Lin, *Approximated Variational Bayesian Inverse Reinforcement Learning for Large Language Model
Alignment* (arXiv 2411.09341, AAAI 2025), built on AVRIL (Chan & van der Schaar, *Scalable Bayesian Inverse
Reinforcement Learning*, ICLR 2021; public JAX code ``XanderJC/scalable-birl``, ``sbirl/models.py``,
``avril.elbo``). No public AVA implementation exists. Only the paper's abstract is available offline, so the
objectives are written as issue #19 and docs/ual-method.md section 9 state them from its main text; docstrings name
the terms (the paper's equation numbers cannot be checked here). Where the text is ambiguous the choice is marked
"Reading:".

Token MDP. State ``s_t = y_{1:t}`` (prompt and response so far), action ``a_t = y_{t+1}`` (the next token),
deterministic transitions. Two heads on the last hidden state:

- Q: ``Q(s_t, .)`` in R^V, read from the LM's own output layer ("pre-trained Q"), in one of two forms
  (:data:`Q_FORMS`): ``log_softmax_alpha_softmax``, the paper's ``Q = log_softmax(alpha * softmax(logits))``
  (bounded: every Q lies in an interval of width ``alpha``), or ``log_prob``, ``Q = log_softmax(logits)``;
- reward: ``q_phi(R | y_{1:t+1}) = N(mu_t, sigma_t^2)`` from the hidden state at the action token, prior N(0, 1).

Terms, per target token t (``B = softmax(beta Q)``, the Boltzmann policy):

- ``log B(a_t | s_t) = log_softmax(beta Q(s_t, .))[a_t]``                              (:func:`boltzmann_log_likelihood`)
- ``KL(q_phi(. | y_{1:t+1}) || N(0, 1)) = (mu^2 + sigma^2 - 1) / 2 - log sigma``        (:func:`gaussian_kl_standard_normal`)
- ``delta_t = Q(s_t, a_t) - gamma Q(s_{t+1}, a_{t+1})`` and its log-likelihood ``log N(delta_t; mu_t, sigma_t^2)``
  (:func:`gaussian_log_likelihood`); no TD term on the last response token (no successor), as AVRIL, which forms
  (s, s') pairs from consecutive steps only.

Objectives (maximised; the functions return their negation as a loss):

- **AVA-d** (demonstrations): ``sum_t [log B(a_t | s_t) - kl_weight * KL_t + lambda * log q_phi(delta_t)]``
  (:func:`ava_d_objective`). With ``lambda = 0``, ``kl_weight = 0``, ``beta = 1`` and ``q_form="log_prob"`` it is
  exactly the next-token cross-entropy of SFT.
- **AVA-p** (preference pairs): ``beta sum_t Q(chosen) - beta sum_t Q(rejected) - kl_weight sum_t KL
  + lambda sum_t log q_phi(delta) + cer_weight * CER``, ``CER = sigma(E_q[R | chosen] - E_q[R | rejected])`` on
  the last response token (:func:`ava_p_objective`). Readings: the KL and TD terms run over the chosen response
  only (the demonstration the preference endorses), summed as written or averaged per token as AVRIL averages
  per transition (``reduction``; summed, they outweigh the one CER term per pair by the response length); the
  preference term is used as written ("linear"; bounded only for the paper's Q form, so it is refused with
  ``log_prob``), or through a Bradley-Terry link ``log sigma(beta sum Q(chosen) - beta sum Q(rejected))``
  ("logsigmoid"); CER as written ("sigmoid") or as ``log sigma`` ("logsigmoid").
- **Bradley-Terry** reward model (the baseline): ``-log sigma(r(chosen) - r(rejected))``, r the reward head's mean
  on the last response token (:func:`bradley_terry_loss`; TRL's ``RewardTrainer`` loss without margin).

AVRIL's code uses ``gamma = lambda = beta = 1`` and the closed-form Gaussian KL with weight 1; those are the
defaults here.

Layout. Every function takes the padded batch as the model produced it: ``logits [B, T, V]`` (or the final hidden
states and the output layer's weight), ``labels [B, T]`` with ``-100`` on positions that are not response targets,
and the reward head's ``mu, log_sigma [B, T]`` at every position. The causal shift is done here: position ``k`` of
the shifted grid ``[B, T-1]`` is the action ``a = labels[:, k+1]`` taken at state ``input[:, :k+1]``; its Q row is
``logits[:, k]`` and its reward distribution is the head's output at position ``k+1`` (the prefix including the
action). Only the rows of target positions get a Q (memory: targets x V a few times, not B x T x V).

Normalisation. AVA-d divides the summed objective by the number of target tokens, or by ``num_items_in_batch``
(gradient accumulation then gives the gradient of one big batch, as ``ual.loss``). The pair objectives are sums over
each pair's tokens, divided by the number of pairs (or ``num_items_in_batch`` counting pairs).

Pure tensor code: imports nothing of ``ual``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

QForm = Literal["log_softmax_alpha_softmax", "log_prob"]
Q_FORMS = ("log_softmax_alpha_softmax", "log_prob")
PREF_LINKS = ("linear", "logsigmoid")
CER_LINKS = ("sigmoid", "logsigmoid")
PAIR_REDUCTIONS = ("token_mean", "sum")
IGNORE_INDEX = -100
_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------------- elementary terms

def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs; fp64 stays fp64 (exact tests against dense references)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def q_values(logits: torch.Tensor, *, q_form: QForm = "log_softmax_alpha_softmax", alpha: float = 1.0) -> torch.Tensor:
    """Q(s, .) from the LM's logits ("pre-trained Q"): logits [..., V] -> Q [..., V] (compute dtype).

    ``log_softmax_alpha_softmax`` (the paper's): ``log_softmax(alpha * softmax(logits))``; ``log_prob``:
    ``log_softmax(logits)``.
    """
    z = logits.to(_compute_dtype(logits.dtype))
    if q_form == "log_prob":
        return torch.log_softmax(z, dim=-1)
    if q_form == "log_softmax_alpha_softmax":
        return torch.log_softmax(alpha * torch.softmax(z, dim=-1), dim=-1)
    raise ValueError(f"q_form must be one of {Q_FORMS}, got {q_form!r}")


def boltzmann_log_likelihood(q: torch.Tensor, actions: torch.Tensor, beta: float) -> torch.Tensor:
    """``log B(a | s) = log_softmax(beta * Q(s, .))[a]``: q [..., V], actions [...] int -> [...]."""
    return torch.log_softmax(beta * q, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def gaussian_kl_standard_normal(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, 1)) = (mu^2 + sigma^2 - 1) / 2 - log sigma``, elementwise (nats).

    AVRIL's ``kl_gaussian(mean, var) = 0.5 * (-log var - 1 + var + mean^2)`` with ``var = sigma^2``.
    """
    return 0.5 * (mu.square() + torch.exp(2 * log_sigma) - 1.0) - log_sigma


def gaussian_log_likelihood(x: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """``log N(x; mu, sigma^2)``, elementwise (nats); AVRIL's ``norm.logpdf(td, mean, exp(log_sd))``."""
    return -0.5 * _LOG_2PI - log_sigma - 0.5 * ((x - mu) * torch.exp(-log_sigma)).square()


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley-Terry loss ``-log sigma(r_chosen - r_rejected)``: [P], [P] -> [P] (nats).

    TRL ``RewardTrainer.compute_loss`` without its optional margin and reward centring.
    """
    return -F.logsigmoid(r_chosen - r_rejected)


def last_target_values(values: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``values [B, T]`` at each row's last response target (the last position ``j >= 1`` whose label is not
    ``ignore_index``): the reward of the whole response, ``E_q[R | y_{1:T}]`` when ``values`` is the head's mean.
    Returns [B]; a row without a target is an error."""
    valid = labels != ignore_index
    valid[:, 0] = False  # position 0 is never a target under the causal shift
    if not bool(valid.any(dim=1).all()):
        raise ValueError("a row has no response target (all labels ignored)")
    T = labels.shape[1]
    last = (valid.long() * torch.arange(T, device=labels.device)).argmax(dim=1)
    return values.gather(1, last.unsqueeze(1)).squeeze(1)


# --------------------------------------------------------------------------------------------------- per-token terms

@dataclass
class TokenTerms:
    """Every per-token quantity of the objectives on the shifted grid [B, T-1] (zero where not defined).

    valid: target positions; q_taken: ``Q(s_t, a_t)``; log_b: ``log B(a_t | s_t)``; kl: ``KL(q_phi || N(0, 1))``;
    td: ``delta_t``; td_valid: positions with a successor target; td_loglik: ``log N(delta_t; mu_t, sigma_t^2)``;
    last_mu: [B], the reward mean on each row's last target.
    """

    valid: torch.Tensor
    q_taken: torch.Tensor
    log_b: torch.Tensor
    kl: torch.Tensor
    td: torch.Tensor
    td_valid: torch.Tensor
    td_loglik: torch.Tensor
    last_mu: torch.Tensor


def _shifted_targets(labels: torch.Tensor, ignore_index: int, vocab_size: int):
    """(targets [B, T-1], valid [B, T-1], flat indices of valid positions) under the causal shift."""
    target = labels[:, 1:]
    valid = target != ignore_index
    if bool(((target < 0) | (target >= vocab_size))[valid].any()):
        raise ValueError(f"labels must be in [0, {vocab_size}) or ignore_index={ignore_index}")
    idx = valid.reshape(-1).nonzero().squeeze(1)
    return target, valid, idx


def _terms_from_rows(z_rows, target_rows, idx, valid, labels, mu, log_sigma, *, beta, gamma, q_form, alpha,
                     ignore_index) -> TokenTerms:
    """Shared core: ``z_rows [N, V]`` are the logits of the N target positions ``idx`` of the grid ``valid``."""
    B, Tm1 = valid.shape
    q = q_values(z_rows, q_form=q_form, alpha=alpha)
    cdt = q.dtype
    q_rows = q.gather(1, target_rows.unsqueeze(1)).squeeze(1)
    logb_rows = boltzmann_log_likelihood(q, target_rows, beta)
    zeros = torch.zeros(B * Tm1, dtype=cdt, device=q.device)
    q_taken = zeros.index_copy(0, idx, q_rows).view(B, Tm1)
    log_b = zeros.index_copy(0, idx, logb_rows).view(B, Tm1)
    mu_s, ls_s = mu[:, 1:].to(cdt), log_sigma[:, 1:].to(cdt)  # reward of the prefix that includes the action
    kl = torch.where(valid, gaussian_kl_standard_normal(mu_s, ls_s), torch.zeros((), dtype=cdt, device=q.device))
    td_valid = torch.zeros_like(valid)
    td_valid[:, :-1] = valid[:, :-1] & valid[:, 1:]
    q_next = torch.cat([q_taken[:, 1:], torch.zeros(B, 1, dtype=cdt, device=q.device)], dim=1)
    td = torch.where(td_valid, q_taken - gamma * q_next, torch.zeros((), dtype=cdt, device=q.device))
    td_loglik = torch.where(td_valid, gaussian_log_likelihood(td, mu_s, ls_s),
                            torch.zeros((), dtype=cdt, device=q.device))
    last_mu = last_target_values(mu.to(cdt), labels, ignore_index=ignore_index)
    return TokenTerms(valid, q_taken, log_b, kl, td, td_valid, td_loglik, last_mu)


def _check_shapes(labels, mu, log_sigma, BT):
    if labels.dim() != 2 or tuple(labels.shape) != tuple(BT):
        raise ValueError(f"labels must be [B, T] = {tuple(BT)}, got {tuple(labels.shape)}")
    if mu.shape != labels.shape or log_sigma.shape != labels.shape:
        raise ValueError(f"mu and log_sigma must be [B, T] like labels, got {tuple(mu.shape)} and "
                         f"{tuple(log_sigma.shape)}")
    if labels.shape[1] < 2:
        raise ValueError("sequences need at least 2 positions (one state and one action)")


def token_terms(logits: torch.Tensor, labels: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, *,
                beta: float = 1.0, gamma: float = 1.0, q_form: QForm = "log_softmax_alpha_softmax",
                alpha: float = 1.0, ignore_index: int = IGNORE_INDEX) -> TokenTerms:
    """Per-token AVA terms from the model's logits.

    logits [B, T, V]; labels [B, T] int (``ignore_index`` on non-targets); mu, log_sigma [B, T] (reward head at
    every position). Returns :class:`TokenTerms` on the shifted grid [B, T-1], in fp32 (fp64 for fp64 logits).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got {tuple(logits.shape)}")
    _check_shapes(labels, mu, log_sigma, logits.shape[:2])
    B, T, V = logits.shape
    target, valid, idx = _shifted_targets(labels, ignore_index, V)
    z_rows = logits[:, :-1].reshape(B * (T - 1), V).index_select(0, idx)
    return _terms_from_rows(z_rows, target.reshape(-1).index_select(0, idx), idx, valid, labels, mu, log_sigma,
                            beta=beta, gamma=gamma, q_form=q_form, alpha=alpha, ignore_index=ignore_index)


def token_terms_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, mu: torch.Tensor,
                            log_sigma: torch.Tensor, *, bias: torch.Tensor | None = None, beta: float = 1.0,
                            gamma: float = 1.0, q_form: QForm = "log_softmax_alpha_softmax", alpha: float = 1.0,
                            ignore_index: int = IGNORE_INDEX) -> TokenTerms:
    """:func:`token_terms` of ``logits = hidden @ weight.T + bias`` computing the logits of target rows only.

    hidden [B, T, H] (the output layer's input), weight [V, H], bias [V] or None.
    """
    if hidden.dim() != 3 or weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"expected hidden [B, T, H] and weight [V, H], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    _check_shapes(labels, mu, log_sigma, hidden.shape[:2])
    B, T, H = hidden.shape
    target, valid, idx = _shifted_targets(labels, ignore_index, weight.shape[0])
    h = hidden[:, :-1].reshape(B * (T - 1), H).index_select(0, idx)
    z_rows = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
    return _terms_from_rows(z_rows, target.reshape(-1).index_select(0, idx), idx, valid, labels, mu, log_sigma,
                            beta=beta, gamma=gamma, q_form=q_form, alpha=alpha, ignore_index=ignore_index)


# --------------------------------------------------------------------------------------------------- objectives

def _denominator(count, num_items_in_batch, like: torch.Tensor) -> torch.Tensor:
    d = count if num_items_in_batch is None else num_items_in_batch
    return torch.as_tensor(d, dtype=like.dtype, device=like.device).clamp(min=1)


def ava_d_objective(terms: TokenTerms, *, lam: float = 1.0, kl_weight: float = 1.0,
                    num_items_in_batch: int | torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """AVA-d loss: ``-sum_t [log B(a_t | s_t) - kl_weight KL_t + lam log N(delta_t; mu_t, sigma_t^2)] / N``.

    ``terms`` from :func:`token_terms` (or ``_from_hidden``); N is the number of target tokens, or
    ``num_items_in_batch``. Returns (scalar loss in nats per target token, detached per-token means of the parts:
    ``log_b``, ``kl``, ``td_loglik``).
    """
    total = terms.log_b.sum() - kl_weight * terms.kl.sum() + lam * terms.td_loglik.sum()
    n = terms.valid.sum()
    loss = -total / _denominator(n, num_items_in_batch, total)
    with torch.no_grad():
        m = n.clamp(min=1)
        parts = {"log_b": terms.log_b.sum() / m, "kl": terms.kl.sum() / m,
                 "td_loglik": terms.td_loglik.sum() / terms.td_valid.sum().clamp(min=1)}
    return loss, parts


def ava_d_loss(logits: torch.Tensor, labels: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, *,
               beta: float = 1.0, gamma: float = 1.0, lam: float = 1.0, kl_weight: float = 1.0,
               q_form: QForm = "log_softmax_alpha_softmax", alpha: float = 1.0, ignore_index: int = IGNORE_INDEX,
               num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """AVA-d loss (scalar, nats per target token) from logits [B, T, V], labels [B, T], mu and log_sigma [B, T]:
    :func:`token_terms` then :func:`ava_d_objective`."""
    terms = token_terms(logits, labels, mu, log_sigma, beta=beta, gamma=gamma, q_form=q_form, alpha=alpha,
                        ignore_index=ignore_index)
    return ava_d_objective(terms, lam=lam, kl_weight=kl_weight, num_items_in_batch=num_items_in_batch)[0]


def check_pair_settings(q_form: str, pref_link: str, cer_link: str) -> None:
    """Refuse combinations the objective does not define (ValueError)."""
    if q_form not in Q_FORMS:
        raise ValueError(f"q_form must be one of {Q_FORMS}, got {q_form!r}")
    if pref_link not in PREF_LINKS:
        raise ValueError(f"pref_link must be one of {PREF_LINKS}, got {pref_link!r}")
    if cer_link not in CER_LINKS:
        raise ValueError(f"cer_link must be one of {CER_LINKS}, got {cer_link!r}")
    if pref_link == "linear" and q_form == "log_prob":
        raise ValueError("pref_link 'linear' with q_form 'log_prob' is unbounded (the rejected log-probability can "
                         "go to -inf): use q_form 'log_softmax_alpha_softmax' or pref_link 'logsigmoid'")


def _split_pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape[0] % 2:
        raise ValueError(f"a pair batch has an even number of rows (chosen first, then rejected), got {x.shape[0]}")
    return x.chunk(2, dim=0)


def ava_p_objective(terms: TokenTerms, *, beta: float = 1.0, lam: float = 1.0, kl_weight: float = 1.0,
                    cer_weight: float = 1.0, pref_link: str = "linear", cer_link: str = "sigmoid",
                    reduction: str = "token_mean", num_items_in_batch: int | torch.Tensor | None = None,
                    q_form: str = "log_softmax_alpha_softmax") -> tuple[torch.Tensor, dict]:
    """AVA-p loss on a pair batch: rows ``[chosen_1..chosen_P, rejected_1..rejected_P]`` of ``terms`` (2P rows).

    Per pair (maximised): ``pref + cer_weight * CER - kl_weight * R_t[KL_t](chosen)
    + lam * R_t[log N(delta_t; mu_t, sigma_t^2)](chosen)`` with ``pref = beta (sum Q(chosen) - sum Q(rejected))``
    ("linear") or its ``log sigma`` ("logsigmoid"), ``CER = sigma(mu_last(chosen) - mu_last(rejected))``
    ("sigmoid") or its log, and ``R_t`` the ``reduction`` over the chosen response's tokens: ``sum`` (as the
    objective is written) or ``token_mean`` (AVRIL's per-transition means; keeps the KL and TD terms on the scale of
    the one-per-pair CER instead of growing with the response length). Returns (scalar loss: minus the sum over
    pairs divided by P or ``num_items_in_batch``; detached per-pair means of ``pref``, ``cer``, ``kl``,
    ``td_loglik`` and the reward accuracy ``acc``). ``q_form`` only serves the check that the linear link is bounded
    (:func:`check_pair_settings`).
    """
    check_pair_settings(q_form, pref_link, cer_link)
    if reduction not in PAIR_REDUCTIONS:
        raise ValueError(f"reduction must be one of {PAIR_REDUCTIONS}, got {reduction!r}")
    q_c, q_r = _split_pairs(terms.q_taken.sum(dim=1))
    diff = beta * (q_c - q_r)
    pref = diff if pref_link == "linear" else F.logsigmoid(diff)
    r_c, r_r = _split_pairs(terms.last_mu)
    cer = torch.sigmoid(r_c - r_r) if cer_link == "sigmoid" else F.logsigmoid(r_c - r_r)
    kl_c, _ = _split_pairs(terms.kl.sum(dim=1))
    td_c, _ = _split_pairs(terms.td_loglik.sum(dim=1))
    if reduction == "token_mean":
        n_c, _ = _split_pairs(terms.valid.sum(dim=1))
        n_td, _ = _split_pairs(terms.td_valid.sum(dim=1))
        kl_c = kl_c / n_c.clamp(min=1)
        td_c = td_c / n_td.clamp(min=1)
    per_pair = pref + cer_weight * cer - kl_weight * kl_c + lam * td_c
    P = per_pair.shape[0]
    loss = -per_pair.sum() / _denominator(P, num_items_in_batch, per_pair)
    with torch.no_grad():
        parts = {"pref": pref.mean(), "cer": cer.mean(), "kl": kl_c.mean(), "td_loglik": td_c.mean(),
                 "acc": (r_c > r_r).to(per_pair.dtype).mean(), "margin": (r_c - r_r).mean()}
    return loss, parts


def bradley_terry_objective(last_mu: torch.Tensor, *, num_items_in_batch: int | torch.Tensor | None = None,
                            ) -> tuple[torch.Tensor, dict]:
    """Bradley-Terry reward-model loss on a pair batch: ``last_mu [2P]`` = reward of ``[chosen..., rejected...]``.
    Returns (sum of :func:`bradley_terry_loss` over pairs / P or ``num_items_in_batch``; detached ``acc``,
    ``margin``)."""
    r_c, r_r = _split_pairs(last_mu)
    per_pair = bradley_terry_loss(r_c, r_r)
    loss = per_pair.sum() / _denominator(per_pair.shape[0], num_items_in_batch, per_pair)
    with torch.no_grad():
        parts = {"acc": (r_c > r_r).to(per_pair.dtype).mean(), "margin": (r_c - r_r).mean()}
    return loss, parts
