"""AVA in the shared trainer: the Gaussian reward head, pair examples and their collator, and :class:`AVATrainer`
(methods ``ava_d``, ``ava_p`` and the Bradley-Terry baseline ``bt_rm``).

The objectives are the pure functions of :mod:`ual.ava_loss`. What this module adds:

- :class:`RewardHead`: ``q_phi(R | y_{1:t+1}) = N(mu, sigma^2)``, a linear map of the last hidden state to
  ``(mu, log sigma)``, zero-initialised so that it starts at the prior N(0, 1) (our choice; TRL's reward head starts
  from N(0, 0.02^2) weights). It is attached to the causal LM as ``reward_head`` before the LoRA adapter is made and
  listed in peft's ``modules_to_save``: peft trains it in full beside the adapter, and the checkpoints and the final
  ``adapter/`` folder hold it (``adapter_model.safetensors``, keys ``...reward_head...``). A plain base model loads
  that folder too (the evaluate stage does): peft then ignores the head, so AVA-d / AVA-p policies are evaluated like
  any adapter. ``bt_rm`` uses the same head (its mean only), the same backbone and LoRA settings: only the objective
  differs.
- Pair data: training pairs come from ``pairs`` (files or hub ids in any :mod:`ual.data.preferences` format, the
  ``pairs_split`` part of the prompt-hash split) or, when ``pairs`` is empty, from the training records of the
  controlled benchmark (:func:`ual.data.preferences.controlled_pairs`). Each side is the prompt (masked) plus the
  response, encoded exactly as evaluation encodes it (:func:`ual.common.formatting.encode_prompt_and_response`).
  :class:`PairCollator` stacks a batch as ``[chosen_1..chosen_P, rejected_1..rejected_P]``, TRL's layout.
- :class:`AVATrainer` (a :class:`ual.train.UALTrainer`, so the seeded, process-count-independent data order is the
  same as every other method's) with its own ``compute_loss``. Pair objectives are means over pairs: the Trainer's
  ``num_items_in_batch`` counts pairs for them (tokens for ``ava_d``), so gradient accumulation gives the gradient
  of one big batch. One process only: the reward head runs outside the wrapped forward, which DDP would not
  synchronise.

``<output_dir>/ava.json`` records the objective's settings and readings, the pair sources with their SHA-256, counts
and dropped rows.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch

from ual.common.errors import InputError
from ual.common.formatting import IGNORE_INDEX
from ual.train.config import AVA_METHODS, PAIR_METHODS
from ual.train.trainer import NON_MODEL_KEYS, UALTrainer

REWARD_HEAD = "reward_head"
REWARD_POSITION = "mean of the reward head on the last response token (E_q[R | prompt + response])"


# --------------------------------------------------------------------------------------------------- reward head

class RewardHead(torch.nn.Module):
    """hidden [..., H] -> (mu [...], log_sigma [...]): the Gaussian reward ``q_phi(R | y_{1:t+1})`` at every position.

    Zero-initialised: every position starts at the prior N(0, 1).
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = torch.nn.Linear(hidden_size, 2)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.proj(hidden.to(self.proj.weight.dtype))
        return out[..., 0], out[..., 1]


def attach_reward_head(model) -> RewardHead:
    """Give a transformers causal LM a :class:`RewardHead` named ``reward_head`` (in the model's dtype, on its
    device); call before ``get_peft_model`` with ``modules_to_save=["reward_head"]``."""
    p = next(model.parameters())
    head = RewardHead(model.config.get_text_config().hidden_size).to(dtype=p.dtype, device=p.device)
    setattr(model, REWARD_HEAD, head)
    return head


def reward_head_of(model) -> torch.nn.Module:
    """The reward head of a (PEFT-wrapped) causal LM: peft's ``ModulesToSaveWrapper`` around it while training."""
    m = model
    for _ in range(4):
        if hasattr(m, REWARD_HEAD):
            return getattr(m, REWARD_HEAD)
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        elif hasattr(m, "module"):
            m = m.module
        else:
            break
    raise ValueError(f"{type(model).__name__} has no {REWARD_HEAD!r}: build it with ual.train.ava.attach_reward_head")


# --------------------------------------------------------------------------------------------------- pair examples

def encode_side(prompt: Sequence[dict], response: str, tokenizer, *, template: str,
                max_length: int) -> tuple[list[int], list[int]] | None:
    """(input ids, labels) of prompt + response: prompt tokens ``-100``, cut at ``max_length`` from the end; None
    when the prompt leaves no response token."""
    from ual.common.formatting import encode_prompt_and_response

    prompt_ids, resp_ids = encode_prompt_and_response(list(prompt), response, tokenizer, template=template)
    ids = (prompt_ids + resp_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + resp_ids)[:max_length]
    if not any(l != IGNORE_INDEX for l in labels[1:]):
        return None
    return ids, labels


def tokenize_pairs(pairs, tokenizer, *, template: str, max_length: int) -> tuple[list[dict], list[str]]:
    """(examples for :class:`PairCollator`: ``{"chosen_input_ids", "chosen_labels", "rejected_input_ids",
    "rejected_labels", "id"}`` per :class:`~ual.data.preferences.PreferencePair`; ids of the pairs left out
    because their prompt alone fills ``max_length`` tokens). Truncating the prompt instead would change the task."""
    out, skipped = [], []
    for p in pairs:
        c = encode_side(p.prompt, p.chosen, tokenizer, template=template, max_length=max_length)
        r = encode_side(p.prompt, p.rejected, tokenizer, template=template, max_length=max_length)
        if c is None or r is None:
            skipped.append(p.id)
            continue
        out.append({"chosen_input_ids": c[0], "chosen_labels": c[1], "rejected_input_ids": r[0],
                    "rejected_labels": r[1], "id": p.id})
    return out, skipped


class PairCollator:
    """Right-pads P pair examples into ``input_ids`` / ``attention_mask`` / ``labels`` [2P, L], chosen rows first
    then rejected (TRL's ``[chosen, rejected]`` layout)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[dict]) -> dict:
        from ual.common.batching import right_pad

        ids = [e["chosen_input_ids"] for e in examples] + [e["rejected_input_ids"] for e in examples]
        labels = [e["chosen_labels"] for e in examples] + [e["rejected_labels"] for e in examples]
        input_ids, mask = right_pad(ids, self.pad_token_id)
        lab, _ = right_pad(labels, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": lab}


# --------------------------------------------------------------------------------------------------- data for fit

def _sha256(path) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    return hashlib.sha256(p.read_bytes()).hexdigest()


def training_pairs(cfg, records):
    """(pairs, description) for a pair method: ``cfg.pairs`` (its ``pairs_split`` part) or, when empty, the
    controlled-benchmark pairs of ``records``."""
    from ual.common.paths import resolve_data_path
    from ual.data.preferences import controlled_pairs, load_many, split_pairs

    if cfg.pairs:
        data = load_many(cfg.pairs)
        pairs = split_pairs(data.pairs, cfg.pairs_split, cfg.heldout_fraction)
        sources = [{"path": str(p), "sha256": _sha256(resolve_data_path(p) or p)} for p in cfg.pairs]
        desc = {"pairs_from": "files", "sources": sources, "split": cfg.pairs_split,
                "heldout_fraction": cfg.heldout_fraction, "n_read": len(data.pairs), "dropped": data.dropped}
    else:
        pairs = controlled_pairs(records, seed=cfg.seed)
        desc = {"pairs_from": "controlled benchmark records (ual.data.preferences.controlled_pairs)",
                "data": cfg.data}
    if not pairs:
        raise InputError(None, None, "pairs", f"no training pairs ({desc['pairs_from']}, split {cfg.pairs_split!r})")
    desc["n_pairs"] = len(pairs)
    return pairs, desc


def objective_settings(cfg) -> dict:
    """The objective as run: settings and the readings of the paper's text (written to ``ava.json``)."""
    d = {"method": cfg.method, "reward": REWARD_POSITION,
         "reward_head": "linear map of the final hidden state to (mu, log sigma), zero-initialised (prior N(0, 1)), "
                        "trained in full (peft modules_to_save)"}
    if cfg.method == "bt_rm":
        d["objective"] = "-log sigmoid(r(chosen) - r(rejected)), mean over pairs (TRL RewardTrainer, no margin)"
        return d
    d.update({"beta": cfg.ava_beta, "gamma": cfg.ava_gamma, "lambda": cfg.ava_lambda, "kl_weight": cfg.ava_kl_weight,
              "q_form": cfg.ava_q_form, "alpha": cfg.ava_alpha if cfg.ava_q_form != "log_prob" else None,
              "td": "delta_t = Q(s_t, a_t) - gamma Q(s_t+1, a_t+1); none on the last response token"})
    if cfg.method == "ava_d":
        d["objective"] = ("-sum_t [log softmax(beta Q)(a_t) - kl_weight KL_t + lambda log N(delta_t; mu_t, "
                          "sigma_t^2)] / target tokens")
        d["prompt_masked"] = cfg.mask_prompt
    else:
        d.update({"pref_link": cfg.ava_pref_link, "cer_weight": cfg.ava_cer_weight, "cer_link": cfg.ava_cer_link,
                  "pair_reduction": cfg.ava_pair_reduction,
                  "objective": "-[pref + cer_weight CER - kl_weight R_t KL(chosen) + lambda R_t log N(delta; mu, "
                               "sigma^2)(chosen)], mean over pairs; R_t = pair_reduction over the chosen tokens",
                  "reading": "KL and TD terms over the chosen response only; prompt tokens masked"})
    return d


class AVAData:
    """Everything :func:`ual.train.fit` needs for an AVA method: ``eps`` (zeros: nothing is smoothed), examples
    and collator. Pairs are read and checked when it is built, before any model work."""

    def __init__(self, cfg, records, out: Path):
        import numpy as np

        from ual.common.io import atomic_write_json

        from ual.ava_loss import check_pair_settings

        if cfg.method not in AVA_METHODS:
            raise ValueError(f"not an AVA method: {cfg.method!r}")
        if cfg.method == "ava_p":
            try:
                check_pair_settings(cfg.ava_q_form, cfg.ava_pref_link, cfg.ava_cer_link)
            except ValueError as e:
                raise InputError(None, None, "ava_pref_link", str(e)) from None
        self.cfg, self.records = cfg, records
        self.eps = np.zeros(len(records))
        self.pairs, desc = training_pairs(cfg, records) if cfg.method in PAIR_METHODS else (None, {})
        self.info = {"objective": objective_settings(cfg), "data": desc}
        self.out = Path(out)
        atomic_write_json(self.out / "ava.json", self.info)

    def examples_and_collator(self, tokenizer):
        from ual.common.io import atomic_write_json
        from ual.train.examples import UALCollator, tokenize_records

        cfg = self.cfg
        if self.pairs is None:  # ava_d: the SFT examples (same tokens, same masking)
            return (tokenize_records(self.records, tokenizer, self.eps, template=cfg.template,
                                     mask_prompt=cfg.mask_prompt, max_length=cfg.max_length),
                    UALCollator(tokenizer.pad_token_id))
        examples, skipped = tokenize_pairs(self.pairs, tokenizer, template=cfg.template, max_length=cfg.max_length)
        if not examples:
            raise InputError(None, None, "max_length", f"every pair's prompt fills all {cfg.max_length} tokens")
        self.info["data"].update(n_pairs=len(examples), n_prompt_too_long=len(skipped),
                                 prompt_too_long=skipped[:20])
        atomic_write_json(self.out / "ava.json", self.info)
        return examples, PairCollator(tokenizer.pad_token_id)

    def trainer_kwargs(self) -> dict:
        c = self.cfg
        return {"method": c.method, "beta": c.ava_beta, "gamma": c.ava_gamma, "lam": c.ava_lambda,
                "kl_weight": c.ava_kl_weight, "q_form": c.ava_q_form, "alpha": c.ava_alpha,
                "pref_link": c.ava_pref_link, "cer_weight": c.ava_cer_weight, "cer_link": c.ava_cer_link,
                "pair_reduction": c.ava_pair_reduction}


# --------------------------------------------------------------------------------------------------- trainer

def hidden_states(model, inputs: dict, *, fused: bool, need_logits: bool):
    """(final hidden states [B, T, H], logits [B, T, V] or None). ``fused``: the decoder alone (no logits; the
    caller checked :func:`ual.loss.fused_loss_supported`); else the model's forward with a hook on its decoder
    (logits only when ``need_logits``; otherwise the last position's)."""
    from ual.loss import final_hidden_states

    if fused:
        return final_hidden_states(model, inputs["input_ids"], inputs.get("attention_mask")), None
    m = model
    while not hasattr(m, "get_decoder") and hasattr(m, "get_base_model"):
        m = m.get_base_model()
    seen = []
    handle = m.get_decoder().register_forward_hook(
        lambda mod, args, out: seen.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]))
    try:
        out = model(**inputs, use_cache=False, **({} if need_logits else {"logits_to_keep": 1}))
    finally:
        handle.remove()
    return seen[-1], (out.logits if need_logits else None)


class AVATrainer(UALTrainer):
    """``compute_loss`` = the AVA-d / AVA-p objective or the Bradley-Terry loss (:mod:`ual.ava_loss`) with the model's
    reward head. Constructor keywords: ``method`` ("ava_d" | "ava_p" | "bt_rm"), ``beta``, ``gamma``, ``lam``,
    ``kl_weight``, ``q_form``, ``alpha``, ``pref_link``, ``cer_weight``, ``cer_link``, ``pair_reduction`` (see
    ``TrainConfig``), plus
    ``fused`` as for :class:`UALTrainer`. Logs the objective's parts (``ava_*``, ``rm_acc``, ``rm_margin``)."""

    def __init__(self, *args, method: str, beta: float = 1.0, gamma: float = 1.0, lam: float = 1.0,
                 kl_weight: float = 1.0, q_form: str = "log_softmax_alpha_softmax", alpha: float = 1.0,
                 pref_link: str = "linear", cer_weight: float = 1.0, cer_link: str = "sigmoid",
                 pair_reduction: str = "token_mean", **kwargs):
        from ual.ava_loss import check_pair_settings

        if method not in AVA_METHODS:
            raise ValueError(f"method must be one of {AVA_METHODS}, got {method!r}")
        if method == "ava_p":
            check_pair_settings(q_form, pref_link, cer_link)
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1:
            raise ValueError("AVA methods train in one process: the reward head runs outside the wrapped forward")
        self.method = method
        self.hp = {"beta": beta, "gamma": gamma, "lam": lam, "kl_weight": kl_weight, "q_form": q_form,
                   "alpha": alpha, "pref_link": pref_link, "cer_weight": cer_weight, "cer_link": cer_link,
                   "pair_reduction": pair_reduction}
        self._parts: dict[str, list[float]] = defaultdict(list)

    def _get_num_items_in_batch(self, batch_samples, device):
        if self.method in PAIR_METHODS and batch_samples:
            # The pair objectives are means over pairs: count pairs (rows / 2), through the parent so that the
            # multi-device bookkeeping stays the Trainer's.
            batch_samples = [{"labels": b["labels"], "shift_labels": torch.zeros(b["labels"].shape[0] // 2)}
                             for b in batch_samples]
        return super()._get_num_items_in_batch(batch_samples, device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from ual import ava_loss as A
        from ual.loss import lm_head_weight

        labels = inputs.pop("labels")
        inputs.pop("eps", None)
        for key in NON_MODEL_KEYS:
            inputs.pop(key, None)
        hp = self.hp
        hidden, logits = hidden_states(model, inputs, fused=self.fused, need_logits=self.method != "bt_rm")
        mu, log_sigma = reward_head_of(model)(hidden)
        if self.method == "bt_rm":
            loss, parts = A.bradley_terry_objective(A.last_target_values(mu, labels),
                                                    num_items_in_batch=num_items_in_batch)
        else:
            kw = dict(beta=hp["beta"], gamma=hp["gamma"], q_form=hp["q_form"], alpha=hp["alpha"])
            if logits is None:
                weight, bias = lm_head_weight(model)
                terms = A.token_terms_from_hidden(hidden, weight, labels, mu, log_sigma, bias=bias, **kw)
            else:
                terms = A.token_terms(logits, labels, mu, log_sigma, **kw)
            if self.method == "ava_d":
                loss, parts = A.ava_d_objective(terms, lam=hp["lam"], kl_weight=hp["kl_weight"],
                                                num_items_in_batch=num_items_in_batch)
            else:
                loss, parts = A.ava_p_objective(terms, beta=hp["beta"], lam=hp["lam"], kl_weight=hp["kl_weight"],
                                                cer_weight=hp["cer_weight"], pref_link=hp["pref_link"],
                                                cer_link=hp["cer_link"], reduction=hp["pair_reduction"],
                                                num_items_in_batch=num_items_in_batch, q_form=hp["q_form"])
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if model.training:
            for k, v in parts.items():
                self._parts[k].append(float(v))
        return (loss, None) if return_outputs else loss

    def log(self, logs, start_time=None):
        if "loss" in logs and self._parts:
            for k, v in self._parts.items():
                name = f"rm_{k}" if k in ("acc", "margin") else f"ava_{k}"
                logs[name] = round(sum(v) / len(v), 6)
            self._parts = defaultdict(list)
        super().log(logs, start_time)


# --------------------------------------------------------------------------------------------------- trained models

def load_trained(train_dir: str | Path, *, dtype: str = "float32"):
    """(model in eval mode with its reward head and the adapter merged, tokenizer, manifest config) of a folder
    ``fit`` wrote for an AVA method (``manifest.json`` + ``adapter/``)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ual.common.io import read_json
    from ual.common.models import quiet_peft_warnings, resolve

    train_dir = Path(train_dir)
    man_path, adapter = train_dir / "manifest.json", train_dir / "adapter"
    if not man_path.is_file():
        raise InputError(train_dir, None, "model", "no manifest.json: not a folder written by ual train")
    man = read_json(man_path)
    cfg = man.get("config") or {}
    if cfg.get("method") not in AVA_METHODS:
        raise InputError(man_path, None, "method", f"{cfg.get('method')!r} trains no reward head; reward models "
                         f"come from methods {', '.join(AVA_METHODS)}")
    if man.get("status") != "complete" or not (adapter / "adapter_config.json").is_file():
        raise InputError(train_dir, None, "model", "training is not complete (no adapter/ folder)")
    base = AutoModelForCausalLM.from_pretrained(resolve(cfg["model"]), dtype=getattr(torch, dtype),
                                                trust_remote_code=False, use_safetensors=True)
    attach_reward_head(base)
    with quiet_peft_warnings():
        model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    # fit saves the tokenizer beside the adapter; a folder slimmed for distribution (results/ava/reward_models)
    # may leave it out, and then the base model's tokenizer is the same one
    has_tok = any((adapter / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tok = AutoTokenizer.from_pretrained(str(adapter) if has_tok else resolve(cfg["model"]))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok, cfg


@torch.no_grad()
def pair_rewards(model, tokenizer, pairs, *, template: str, max_length: int, batch_size: int = 8,
                 score: str = "reward", progress: bool = False) -> list[tuple[float | None, float | None]]:
    """(score of chosen, score of rejected) per pair, both sides encoded as in training; (None, None) for a pair
    whose prompt alone fills ``max_length`` tokens (as training leaves it out).

    ``score``: ``reward`` (the reward head's mean on the last response token, what ``bt_rm`` and AVA-p's CER
    train), ``reward_mean`` (its mean over the response tokens) or ``logprob`` (the response's summed log-likelihood
    under the LM itself: a reward-free baseline that works for any model)."""
    from ual import ava_loss as A
    from ual.common.batching import right_pad

    if score not in ("reward", "reward_mean", "logprob"):
        raise InputError(None, None, "score", f"must be reward, reward_mean or logprob, got {score!r}")
    rows = []
    for p in pairs:
        sides = [encode_side(p.prompt, resp, tokenizer, template=template, max_length=max_length)
                 for resp in (p.chosen, p.rejected)]
        rows.extend(sides if None not in sides else [None, None])
    scored = [i for i, r in enumerate(rows) if r is not None]
    order = sorted(scored, key=lambda i: -len(rows[i][0]))  # similar lengths together: less padding
    values: list[float | None] = [None] * len(rows)
    it = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="scoring", unit="batch")
    device = next(model.parameters()).device
    for s in it:
        idx = order[s:s + batch_size]
        ids, mask = right_pad([rows[i][0] for i in idx], tokenizer.pad_token_id)
        labels, _ = right_pad([rows[i][1] for i in idx], IGNORE_INDEX)
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        if score == "logprob":
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1)
            tgt = labels[:, 1:]
            valid = tgt != IGNORE_INDEX
            tok = logp.gather(2, tgt.clamp(min=0).unsqueeze(2)).squeeze(2)
            v = (tok * valid).sum(1)
        else:
            hidden, _ = hidden_states(model, {"input_ids": ids, "attention_mask": mask}, fused=False,
                                      need_logits=False)
            mu, _ = reward_head_of(model)(hidden)
            if score == "reward":
                v = A.last_target_values(mu.float(), labels)
            else:
                valid = labels != IGNORE_INDEX
                valid[:, 0] = False
                v = (mu.float() * valid).sum(1) / valid.sum(1)
        for i, x in zip(idx, v.tolist()):
            values[i] = x
    return [(values[2 * k], values[2 * k + 1]) for k in range(len(pairs))]
