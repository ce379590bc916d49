"""Training settings: :class:`TrainConfig` (one LoRA run) and :class:`TrainStageConfig` (the stage: a grid of runs,
exported as ``ual.train.Config``).

Both share :class:`TrainSettings`, so a field is documented once. Defaults are the paper's (the authors' code,
docs/ual-method.md section 5) unless the help says "ours".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ual.common.config import setting
from ual.common.errors import InputError

METHODS = ("sft", "ls", "ual", "oracle", "shuffled", "dft", "eaft", "ava_d", "ava_p", "bt_rm")
# AVA (arXiv 2411.09341; ual.train.ava) and its Bradley-Terry reward-model baseline: a reward head beside the adapter,
# no smoothing (one variant per seed). The pair methods train on preference pairs (the pairs setting).
AVA_METHODS = ("ava_d", "ava_p", "bt_rm")
PAIR_METHODS = ("ava_p", "bt_rm")
# Methods whose loss is the token-weighted cross-entropy of ual.loss (no smoothing, eps 0): they train one variant
# per seed, like sft, whatever mean_eps says.
TOKEN_WEIGHTED_METHODS = ("dft", "eaft")
# Methods that read the elicited scores.
SCORED_METHODS = ("ual", "shuffled")
METHOD_HELP = ("sft (eps 0), ls (every sample mean_eps), ual (eps per sample from its score, same mean), oracle "
               "(controlled benchmark only: eps 0 on low-entropy items, the rest on high-entropy ones, same mean), "
               "shuffled (ual's eps values randomly reassigned to samples, seeded), dft (NLL scaled by the target's "
               "detached probability, Wu et al. 2025) or eaft (NLL scaled by the normalised top-20 entropy, "
               "LLaMA-Factory's use_eaft_loss), ava_d (AVA on demonstrations), ava_p (AVA on preference pairs) or "
               "bt_rm (Bradley-Terry reward model)")
REPORT_TO = ("none", "tensorboard", "wandb")


@dataclass
class TrainSettings:
    """Every training setting that is the same for all variants of a run."""

    model: str = setting("smollm2-135m", "causal LM: a hub id, a local folder, or a built-in name (smollm2-135m, "
                         "tiny-random). Default ours; paper: Llama-2-7B/13B, Mistral-7B base.")
    mapping: Literal["rescale", "minmax"] = setting(
        "rescale", "score -> eps mapping: rescale (authors': proportional rescale to mean_eps, capped at eps_cap) or "
        "minmax (linear onto eps_range).")
    eps_cap: float = setting(0.99, "upper bound on any sample's eps, in [0, 1) (authors': 0.99).")
    eps_range: list[float] | None = setting(None, "[lo, hi] eps for mapping minmax; null is [0, 2 x mean_eps].")
    score_range: list[float] | None = setting(
        [0.0, 99.0], "declared range of the scores: [0, 99] for the paper's LLM rating; null is any non-negative "
        "score (likelihood backends report nats).")
    smoothing: Literal["nontarget", "uniform"] = setting(
        "nontarget", "label-smoothing convention: nontarget (authors': eps spread over the V-1 other tokens) or "
        "uniform (PyTorch's eps/V on every token, target included).")
    mask_prompt: bool = setting(False, "exclude prompt tokens from the loss (authors: no, mask_inputs=False).")
    template: Literal["paper", "chat"] = setting(
        "paper", "prompt template: paper (authors' '### User:/### Assistant:') or chat (the tokenizer's template).")
    max_length: int = setting(1024, "tokens per sample, cut at the end (authors: 1024; Mistral 768, 13B 2048).")
    lora_r: int = setting(8, "LoRA rank (authors: 8).")
    lora_alpha: int = setting(16, "LoRA alpha (authors: 16).")
    lora_dropout: float = setting(0.1, "LoRA dropout probability, in [0, 1) (authors: 0.1).")
    lora_targets: list[str] = setting(["q_proj", "v_proj"], "modules that get LoRA adapters (authors: q and v).")
    learning_rate: float = setting(3e-4, "peak learning rate, > 0 (authors' nominal 3e-4).")
    lr_scheduler: str = setting("cosine", "transformers scheduler name (ours; see authors_lr_ramp).")
    warmup_ratio: float = setting(0.03, "share of optimizer steps spent warming up, in [0, 1) (ours).")
    authors_lr_ramp: bool = setting(
        False, "reproduce the authors' schedule instead: a linear ramp through the whole run ending near 4.7e-5, "
        "no decay (their warm-up bug).")
    weight_decay: float = setting(0.01, "AdamW weight decay (torch's default, which the authors kept).")
    batch_size: int = setting(1, "micro-batch per device, in samples (authors: 1).")
    grad_accum: int = setting(64, "gradient accumulation steps (authors: 64, so 64 samples per optimizer step).")
    epochs: float = setting(10.0, "passes over the training set (authors: 10); max_steps > 0 overrides it.")
    max_steps: int = setting(-1, "optimizer steps; -1 trains for epochs.")
    sampler: Literal["permutation", "replacement"] = setting(
        "permutation", "order of training samples: permutation (ours: a seeded permutation per epoch, every sample once "
        "per epoch) or replacement (authors: each sample drawn uniformly with replacement, torch.randint in their "
        "finetune/ual.py); seeded per epoch either way, the same for any number of processes.")
    save_steps: int = setting(50, "checkpoint every this many optimizer steps (ours).")
    save_total_limit: int = setting(2, "checkpoints kept on disk (ours).")
    logging_steps: int = setting(1, "log loss, lr and eps statistics every this many optimizer steps.")
    report_to: Literal["none", "tensorboard", "wandb"] = setting(
        "none", "where the Trainer also logs: none, tensorboard (event files under <output_dir>/checkpoints/runs/, "
        "or $TENSORBOARD_LOGGING_DIR) or wandb. log.jsonl is always written.")
    dtype: Literal["float32", "bfloat16"] = setting("float32", "weights dtype (float32 on CPU; authors: bf16).")
    bf16: bool = setting(False, "mixed-precision autocast (GPU only).")
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass to save memory.")
    fused_loss: bool = setting(
        True, "compute the loss from the final hidden states without materialising the logits where the model "
        "allows it (ual.loss); the manifest records which path ran.")
    allow_pickle: bool = setting(False, "allow non-safetensors weights (runs arbitrary code from the file).")
    # AVA (ual.ava_loss, ual.train.ava). AVRIL's public code uses beta = gamma = lambda = 1 and the closed-form KL with
    # weight 1; AVA's appendix values are not available offline, so the rest are our documented choices.
    pairs: list[str] = setting(
        [], "ava_p / bt_rm: preference pair files or hub ids (prompt/chosen/rejected, Anthropic-HH, UltraFeedback, "
        "AlpacaEval annotations; ual.data.preferences); empty derives pairs from the controlled-benchmark training "
        "records (a valid answer over an invalid one).")
    pairs_split: Literal["all", "train", "heldout"] = setting(
        "all", "part of the pairs to train on: all, or the train / heldout side of the prompt-hash split (ours).")
    heldout_fraction: float = setting(0.25, "share of prompts in the heldout side of that split, in (0, 1) (ours).")
    ava_beta: float = setting(1.0, "Boltzmann rationality beta of softmax(beta Q), > 0 (AVRIL code: 1).")
    ava_gamma: float = setting(1.0, "discount gamma of the TD residual Q(s,a) - gamma Q(s',a'), in [0, 1] (AVRIL: 1).")
    ava_lambda: float = setting(1.0, "weight lambda of the TD log-likelihood term, >= 0 (AVRIL code: 1).")
    ava_kl_weight: float = setting(1.0, "weight of KL(q(R) || N(0, 1)), >= 0 (AVRIL code: 1, closed form).")
    ava_q_form: Literal["log_softmax_alpha_softmax", "log_prob"] = setting(
        "log_softmax_alpha_softmax", "Q from the LM's logits: the paper's log_softmax(alpha softmax(logits)) or "
        "log_prob (log_softmax(logits)); the manifest records which.")
    ava_alpha: float = setting(1.0, "alpha of the paper's Q form, > 0 (appendix value unknown; ours: 1).")
    ava_pref_link: Literal["linear", "logsigmoid"] = setting(
        "linear", "ava_p preference term: linear (as written, beta sum Q(chosen) - beta sum Q(rejected)) or "
        "logsigmoid (its log sigmoid).")
    ava_cer_weight: float = setting(1.0, "ava_p weight of the contrastive expected-return term, >= 0 (ours: 1).")
    ava_cer_link: Literal["sigmoid", "logsigmoid"] = setting(
        "sigmoid", "ava_p CER term: sigmoid (as written, sigma(E[R|chosen] - E[R|rejected])) or logsigmoid.")
    ava_pair_reduction: Literal["token_mean", "sum"] = setting(
        "token_mean", "ava_p KL and TD terms over the chosen response: token_mean (AVRIL's per-transition means) or "
        "sum (as written; grows with response length against the one CER term per pair).")

    def _check_shared(self) -> None:
        def finite(name: str) -> float:
            v = getattr(self, name)
            if not math.isfinite(v):
                raise InputError(None, None, name, f"must be a finite number, got {v}")
            return v

        if not finite("learning_rate") > 0:
            raise InputError(None, None, "learning_rate", f"must be > 0, got {self.learning_rate}")
        if not 0 <= finite("lora_dropout") < 1:
            raise InputError(None, None, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= finite("warmup_ratio") < 1:
            raise InputError(None, None, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if finite("weight_decay") < 0:
            raise InputError(None, None, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        finite("epochs")
        if self.lora_alpha <= 0 or self.save_total_limit < 1:
            raise InputError(None, None, "lora_alpha" if self.lora_alpha <= 0 else "save_total_limit",
                             "must be >= 1")
        if not 0 < self.eps_cap < 1:
            raise InputError(None, None, "eps_cap", f"must be in (0, 1), got {self.eps_cap}")
        for name in ("batch_size", "grad_accum", "max_length", "lora_r", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise InputError(None, None, name, f"must be >= 1, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise InputError(None, None, "epochs", "set epochs > 0 or max_steps > 0")
        if self.score_range is not None and (len(self.score_range) != 2 or self.score_range[0] >= self.score_range[1]):
            raise InputError(None, None, "score_range", f"must be [lo, hi] with lo < hi, got {self.score_range}")
        if self.eps_range is not None and len(self.eps_range) != 2:
            raise InputError(None, None, "eps_range", f"must be [lo, hi], got {self.eps_range}")
        self._check_ava()

    def _check_ava(self) -> None:
        for name, ok, want in (("ava_beta", self.ava_beta > 0, "> 0"), ("ava_alpha", self.ava_alpha > 0, "> 0"),
                               ("ava_gamma", 0 <= self.ava_gamma <= 1, "in [0, 1]"),
                               ("ava_lambda", self.ava_lambda >= 0, ">= 0"),
                               ("ava_kl_weight", self.ava_kl_weight >= 0, ">= 0"),
                               ("ava_cer_weight", self.ava_cer_weight >= 0, ">= 0"),
                               ("heldout_fraction", 0 < self.heldout_fraction < 1, "in (0, 1)")):
            if not (ok and math.isfinite(getattr(self, name))):
                raise InputError(None, None, name, f"must be {want}, got {getattr(self, name)}")


@dataclass
class TrainConfig(TrainSettings):
    """One training run (``ual.train.fit``, ``python -m ual train``): the shared settings plus what makes a variant."""

    data: str = setting("", "canonical records JSONL (ual.data) to train on. Required.")
    scores: str | None = setting(None, "uncertainty scores JSONL (ual.elicit output); methods ual and shuffled only.")
    output_dir: str = setting("runs/dev/train/ual", "folder for the adapter, log, checkpoints and manifest.")
    method: Literal["sft", "ls", "ual", "oracle", "shuffled", "dft", "eaft", "ava_d", "ava_p", "bt_rm"] = setting(
        "ual", METHOD_HELP + ".")
    mean_eps: float = setting(0.1, "target mean smoothing, in [0, 1) (paper grid 0.1-0.5); LS uses the same value.")
    seed: int = setting(1337, "seed of the model init, data order and dropout (authors: 1337).")

    def __post_init__(self) -> None:
        if not 0 <= self.mean_eps < 1:
            raise InputError(None, None, "mean_eps", f"must be in [0, 1), got {self.mean_eps}")
        self._check_shared()


@dataclass
class TrainStageConfig(TrainSettings):
    """The training stage of a run: every shared setting plus the grid methods x mean_eps x seeds (sft ignores
    mean_eps). Data, scores and output folders come from the run directory."""

    methods: list[str] = setting(["sft", "ls", "ual"], "variants to train, any of: " + METHOD_HELP + ".")
    mean_eps: list[float] = setting([0.1], "target mean smoothing values, each in [0, 1) (paper grid 0.1-0.5).")
    seeds: list[int] = setting([1337], "one adapter per seed and method (authors: 1337).")
    extra_variants: list[dict] = setting(
        [], "single variants beyond the grid, each {method, mean_eps, seed} (ours: e.g. an eps sweep with one "
        "seed per extra point).")

    def __post_init__(self) -> None:
        self._check_shared()
        for name in ("methods", "mean_eps", "seeds"):
            if not getattr(self, name):
                raise InputError(None, None, name, "must list at least one value")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise InputError(None, None, "methods", f"unknown method {bad[0]!r}; methods: {', '.join(METHODS)}")
        for e in self.mean_eps:
            if not (isinstance(e, (int, float)) and 0 <= e < 1 and math.isfinite(e)):
                raise InputError(None, None, "mean_eps", f"each value must be in [0, 1), got {e!r}")
        for k, v in enumerate(self.extra_variants):
            field = f"extra_variants[{k}]"
            if not isinstance(v, dict) or set(v) != {"method", "mean_eps", "seed"}:
                raise InputError(None, None, field, f"must be {{method, mean_eps, seed}}, got {v!r}")
            if v["method"] not in METHODS:
                raise InputError(None, None, f"{field}.method", f"unknown method {v['method']!r}; methods: "
                                 f"{', '.join(METHODS)}")
            e = v["mean_eps"]
            if not (isinstance(e, (int, float)) and 0 <= e < 1 and math.isfinite(e)):
                raise InputError(None, None, f"{field}.mean_eps", f"must be in [0, 1), got {e!r}")
            if not isinstance(v["seed"], int):
                raise InputError(None, None, f"{field}.seed", f"must be an integer, got {v['seed']!r}")


Config = TrainStageConfig  # the stage's config under the name every stage uses
SHARED_FIELDS = tuple(f for f in TrainSettings.__dataclass_fields__)
