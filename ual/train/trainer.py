"""The per-sample smoothed loss inside transformers' ``Trainer`` (and TRL's ``SFTTrainer``).

``Trainer(compute_loss_func=...)`` never sees the batch's extra columns, so per-sample smoothing needs a
``compute_loss`` override (docs/pitfalls.md). :class:`UALLossMixin` is that override; put it first in the bases of
any Trainer subclass (``class MyTrainer(UALLossMixin, SFTTrainer)``). :class:`UALTrainer` is it on ``Trainer``.
"""
from __future__ import annotations

import torch
from transformers import Trainer

from ual.loss import fused_token_weighted_cross_entropy, smoothed_cross_entropy, token_weighted_cross_entropy

# Keys a collator may add that the model's forward must not receive (TRL adds completion/assistant masks).
NON_MODEL_KEYS = ("completion_mask", "assistant_masks", "id")


class EpochPermutationSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch that does not depend on the number of processes.

    Why not the Trainer's RandomSampler: accelerate swaps it for a differently seeded sampler only when it
    shards, so one process and N processes would see different orders. This one is not a RandomSampler, so
    accelerate shards its batches as they are and N processes see exactly the one-process global batches.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class EpochReplacementSampler(EpochPermutationSampler):
    """``n`` indices drawn uniformly with replacement per epoch, seeded with seed + epoch (the authors' sampling),
    process-count independent for the same reason as :class:`EpochPermutationSampler`."""

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randint(self.n, (self.n,), generator=g).tolist())


class UALLossMixin:
    """``compute_loss`` = :func:`ual.loss.smoothed_cross_entropy` with each sample's ``eps`` from the batch.

    Keyword arguments it takes from the trainer's constructor: ``smoothing`` ("nontarget", the authors', or
    "uniform"), ``fused`` (loss from the final hidden states without materialising the logits; the caller checks
    :func:`ual.loss.fused_loss_supported` first) and ``loss_type``: "smoothed" (the default, UAL's loss; eps from
    the batch) or one of the token-weighted peers "dft" / "eaft" (:func:`ual.loss.token_weighted_cross_entropy`;
    the batch's eps is ignored). Logs the mean/min/max eps and token count of each logged step.
    """

    def __init__(self, *args, smoothing: str = "nontarget", fused: bool = False, loss_type: str = "smoothed",
                 **kwargs):
        from ual.loss import TOKEN_WEIGHTINGS

        if loss_type != "smoothed" and loss_type not in TOKEN_WEIGHTINGS:
            raise ValueError(f"loss_type must be 'smoothed' or one of {TOKEN_WEIGHTINGS}, got {loss_type!r}")
        super().__init__(*args, **kwargs)
        self.smoothing = smoothing
        self.fused = fused
        self.loss_type = loss_type
        self._eps_seen: list[float] = []
        self._tokens_seen = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "eps" not in inputs:
            raise KeyError("the batch has no 'eps': use ual.train.UALCollator as data_collator and "
                           "remove_unused_columns=False")
        eps = inputs.pop("eps")
        labels = inputs.pop("labels")
        for key in NON_MODEL_KEYS:
            inputs.pop(key, None)
        if model.training:
            self._eps_seen.extend(eps.tolist())
            self._tokens_seen += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else labels.numel()
        if self.fused:
            from ual.loss import final_hidden_states, fused_smoothed_cross_entropy, lm_head_weight

            hidden = final_hidden_states(model, inputs["input_ids"], inputs.get("attention_mask"))
            weight, bias = lm_head_weight(model)
            if self.loss_type == "smoothed":
                loss = fused_smoothed_cross_entropy(hidden, weight, labels, eps, bias=bias, smoothing=self.smoothing,
                                                    num_items_in_batch=num_items_in_batch)
            else:
                loss = fused_token_weighted_cross_entropy(hidden, weight, labels, bias=bias, weighting=self.loss_type,
                                                          num_items_in_batch=num_items_in_batch)
            outputs = None
        else:
            outputs = model(**inputs)
            if self.loss_type == "smoothed":
                loss = smoothed_cross_entropy(outputs.logits, labels, eps, smoothing=self.smoothing,
                                              num_items_in_batch=num_items_in_batch)
            else:
                loss = token_weighted_cross_entropy(outputs.logits, labels, weighting=self.loss_type,
                                                    num_items_in_batch=num_items_in_batch)
        # Same convention as Trainer.compute_loss: with tokens counted across processes, DDP's gradient mean
        # must be undone so that N processes give the gradient of one big batch.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, start_time=None):
        if "loss" in logs and self._eps_seen:
            e = torch.tensor(self._eps_seen)
            logs["eps_mean"] = round(float(e.mean()), 6)
            logs["eps_min"] = round(float(e.min()), 6)
            logs["eps_max"] = round(float(e.max()), 6)
            logs["tokens"] = self._tokens_seen
            self._eps_seen, self._tokens_seen = [], 0
        super().log(logs, start_time)


class UALTrainer(UALLossMixin, Trainer):
    """transformers' ``Trainer`` with the per-sample smoothed loss and a process-count-independent data order.

    Use with :class:`ual.train.UALCollator` and ``TrainingArguments(remove_unused_columns=False)``.
    ``sampler``: "permutation" (default) or "replacement" (the authors' draws with replacement).
    """

    def __init__(self, *args, sampler: str = "permutation", **kwargs):
        super().__init__(*args, **kwargs)
        self.sampler = sampler

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        cls = EpochReplacementSampler if self.sampler == "replacement" else EpochPermutationSampler
        return cls(len(dataset), self.args.data_seed or self.args.seed)
