"""``fit``: one LoRA fine-tuning run with the per-sample smoothed loss (methods ``sft``, ``ls``, ``ual``).

Built on transformers' ``Trainer`` through :class:`ual.train.UALTrainer`; everything else (optimiser, schedule,
gradient accumulation, checkpoints, resume, accelerate/DDP) is the Trainer's.

Output folder layout::

    <output_dir>/manifest.json      config, data/score hashes, eps statistics, environment, status, timings
    <output_dir>/eps.jsonl          id, source, category and eps of every training sample
    <output_dir>/log.jsonl          one line per logged step: loss, lr, grad norm, eps statistics of the step's samples
    <output_dir>/checkpoints/       Trainer checkpoints (resume with resume=True)
    <output_dir>/adapter/           the final LoRA adapter (peft format)
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ual.common.config import config_to_dict
from ual.common.errors import InputError
from ual.train.config import AVA_METHODS, PAIR_METHODS, TrainConfig
from ual.train.examples import sample_eps, tokenize_records

# Authors' run: the warm-up bug ramps the lr linearly over the whole run and ends near this value (ual-method.md §5).
AUTHORS_FINAL_LR = 4.7e-5

def _log_callback(path: Path):
    from transformers import TrainerCallback

    from ual.common.io import JsonlAppender

    class JsonlLog(TrainerCallback):
        """Appends every training log (loss, lr, eps statistics) to log.jsonl as it happens."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                with JsonlAppender(path) as f:
                    f.write({"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs})

    return JsonlLog()


CHECKPOINT_FILES = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def _last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None.

    The Trainer writes the adapter, optimizer, scheduler and RNG state, then ``trainer_state.json`` last, and not
    atomically; a kill mid-save leaves a folder with missing files or a torn JSON. Such folders are skipped, so a
    resume always starts from a checkpoint that loads.
    """
    import json

    if not ckpt_dir.is_dir():
        return None
    found = []
    for d in ckpt_dir.glob("checkpoint-*"):
        try:
            step = int(d.name.split("-")[-1])
            state = json.loads((d / "trainer_state.json").read_text())
        except (ValueError, OSError):
            continue
        if state.get("global_step") == step and all((d / f).exists() for f in CHECKPOINT_FILES):
            found.append((step, d))
    return max(found)[1] if found else None


def _trim_log(path: Path, max_step: int) -> None:
    """After a resume from step ``max_step``, drop log lines of steps the killed run logged past it."""
    from ual.common.io import read_jsonl, write_jsonl

    if path.exists():
        write_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= max_step])


def _sha256(path: str | Path | None) -> str | None:
    if not path:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class TrainResult:
    """What :func:`fit` produced: folders and the final training metrics."""

    output_dir: Path
    adapter_dir: Path
    log_path: Path
    manifest_path: Path
    metrics: dict

    def loss_curve(self) -> list[tuple[int, float]]:
        """(step, loss) pairs from the training log."""
        from ual.common.io import read_jsonl

        return [(r["step"], r["loss"]) for r in read_jsonl(self.log_path) if "loss" in r]


def _lora_model(cfg: TrainConfig):
    """The base model with LoRA adapters on ``cfg.lora_targets`` (gradient checkpointing as configured)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ual.common.models import quiet_peft_warnings, resolve

    model = AutoModelForCausalLM.from_pretrained(resolve(cfg.model), dtype=getattr(torch, cfg.dtype),
                                                 trust_remote_code=False, use_safetensors=not cfg.allow_pickle)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    head = []
    if cfg.method in AVA_METHODS:  # the Gaussian reward head, trained in full beside the adapter (ual.train.ava)
        from ual.train.ava import REWARD_HEAD, attach_reward_head

        attach_reward_head(model)
        head = [REWARD_HEAD]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM", bias="none",
                      modules_to_save=head or None)
    with quiet_peft_warnings():
        return get_peft_model(model, lora)


def _fused_path(cfg: TrainConfig, model) -> tuple[bool, str]:
    """Whether the fused loss runs for this model, and why (recorded in the manifest)."""
    if not cfg.fused_loss:
        return False, "disabled by config"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The fused path calls the decoder and the output layer itself; under DDP/FSDP that would bypass the
        # wrapper's forward and with it the gradient synchronisation (docs/pitfalls.md). The logits path is exact.
        import warnings

        why = "more than one process: the fused loss would bypass the DDP wrapper's forward; logits path used"
        warnings.warn(f"fused_loss: {why}", stacklevel=2)
        return False, why
    from ual.loss import fused_loss_supported
    from ual.train.config import TOKEN_WEIGHTED_METHODS

    ok, why = fused_loss_supported(model)
    if ok and cfg.method in TOKEN_WEIGHTED_METHODS:
        return True, (f"{cfg.method}: target rows gathered from the final hidden states, their logits only "
                      "(ual.loss.fused_token_weighted_cross_entropy)")
    return ok, why


def _loss_type(method: str) -> str:
    """The trainer's ``loss_type`` for a method: the token-weighted peers by name, every other method "smoothed"."""
    from ual.train.config import TOKEN_WEIGHTED_METHODS

    return method if method in TOKEN_WEIGHTED_METHODS else "smoothed"


def _schedule(cfg: TrainConfig, n_examples: int) -> tuple[int, str, int, float]:
    """(total optimizer steps, scheduler name, warm-up steps, warm-up ratio) for ``cfg``."""
    steps_per_epoch = math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    if cfg.authors_lr_ramp:
        # lr(t) = lr * t / W with W chosen so the last step lands on the authors' observed final lr.
        return total_steps, "constant_with_warmup", max(1, round(total_steps * cfg.learning_rate / AUTHORS_FINAL_LR)), 0.0
    return total_steps, cfg.lr_scheduler, 0, cfg.warmup_ratio


def _training_arguments(cfg: TrainConfig, out: Path, sched: str, warmup_steps: int, warmup_ratio: float,
                        progress: bool):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=sched,
        # transformers 5: an int is a step count, a float in [0, 1) a share of the steps.
        warmup_steps=warmup_steps if cfg.authors_lr_ramp else float(warmup_ratio),
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        bf16=cfg.bf16,
        report_to=cfg.report_to,
        remove_unused_columns=False,  # keep "eps": the model's forward does not take it
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
    )


def fit(cfg: TrainConfig, *, resume: bool = True, progress: bool = True, callbacks: list | None = None) -> TrainResult:
    """Train one LoRA adapter as ``cfg`` says; resumes from the last checkpoint in ``cfg.output_dir`` if any.

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (timing, early stopping) beside the log writer.

    Checks data, scores and the output folder before loading the model. Returns a :class:`TrainResult`.
    """
    from transformers import set_seed

    from ual.common.io import check_writable, write_jsonl
    from ual.common.manifest import now_iso, update_manifest
    from ual.common.models import load_tokenizer
    from ual.data.records import load_records
    from ual.smoothing import describe
    from ual.train.trainer import UALTrainer
    from ual.train.examples import UALCollator

    if not cfg.data and not (cfg.method in PAIR_METHODS and cfg.pairs):  # pairs alone train a reward model
        raise InputError(None, None, "data", "no training data file given")
    out = Path(cfg.output_dir)
    check_writable(out)
    done = finished_result(cfg) if resume else None
    if done is not None:  # complete with these settings and inputs: a finished variant is never trained further
        return done
    records = load_records(cfg.data) if cfg.data else []
    ava = None
    if cfg.method in AVA_METHODS:  # AVA / Bradley-Terry: pairs or demonstrations, reward head (ual.train.ava)
        from ual.train.ava import AVAData, AVATrainer

        ava = AVAData(cfg, records, out)  # reads and checks the pairs before any model work
    eps = ava.eps if ava else sample_eps(cfg, records)  # validates scores before any model work

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    if ava:
        examples, collator = ava.examples_and_collator(tokenizer)
    else:
        examples = tokenize_records(records, tokenizer, eps, template=cfg.template, mask_prompt=cfg.mask_prompt,
                                    max_length=cfg.max_length)
        collator = UALCollator(tokenizer.pad_token_id)
    total_steps, sched, warmup_steps, warmup_ratio = _schedule(cfg, len(examples))
    # Under accelerate/torchrun every process runs this function; only the main one writes shared files.
    main_process = int(os.environ.get("RANK", "0")) == 0
    log_path = out / "log.jsonl"
    manifest_path = out / "manifest.json"
    fingerprint = inputs_fingerprint(cfg)
    last = _resumable_checkpoint(out, fingerprint, main_process) if resume else None
    if last is not None and _checkpoint_step(last) >= total_steps:
        # The run had finished its steps (killed while saving the adapter): finish from that checkpoint, never
        # train a step more (the Trainer would).
        return _finish_from_checkpoint(last, out, tokenizer, fingerprint, main_process)
    model = _lora_model(cfg)
    fused, fused_reason = _fused_path(cfg, model)
    args = _training_arguments(cfg, out, sched, warmup_steps, warmup_ratio, progress)

    if main_process:
        write_jsonl(out / "eps.jsonl", ({"id": r.id, "source": r.source, "category": r.category, "eps": float(e)}
                                        for r, e in zip(records, eps)))
        if last is not None:
            _trim_log(log_path, int(last.name.split("-")[-1]))
        elif log_path.exists():
            log_path.unlink()  # a fresh run: the old log belongs to a run we are not continuing
        update_manifest(manifest_path, stage="train", status="running", started=now_iso(),
                        config=config_to_dict(cfg), fingerprint=fingerprint, seed=cfg.seed, n_samples=len(records),
                        data_sha256=_sha256(cfg.data),
                        scores_sha256=_sha256(cfg.scores if cfg.method == "ual" else None),
                        eps=describe(eps), loss_path="fused" if fused else "logits", fused_reason=fused_reason,
                        total_steps=total_steps, warmup_steps=warmup_steps, resumed_from=str(last) if last else None,
                        world_size=int(os.environ.get("WORLD_SIZE", "1")))

    trainer_cls, method_kwargs = ((AVATrainer, ava.trainer_kwargs()) if ava else
                                  (UALTrainer, {"smoothing": cfg.smoothing, "loss_type": _loss_type(cfg.method)}))
    trainer = trainer_cls(model=model, args=args, train_dataset=examples, data_collator=collator, fused=fused,
                          sampler=cfg.sampler, callbacks=[_log_callback(log_path), *(callbacks or [])],
                          **method_kwargs)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    wall = time.time() - t0
    adapter_dir = out / "adapter"
    if trainer.is_world_process_zero():
        model.save_pretrained(str(adapter_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(adapter_dir))
    metrics = dict(result.metrics)
    metrics["wall_seconds_this_session"] = wall
    if trainer.is_world_process_zero():
        update_manifest(manifest_path, status="complete", finished=now_iso(), metrics=metrics,
                        global_step=trainer.state.global_step)
    return TrainResult(out, adapter_dir, log_path, manifest_path, metrics)


# --------------------------------------------------------------------------------------------------- reruns

def inputs_fingerprint(cfg: TrainConfig) -> str:
    """What a trained adapter depends on: the config (but where it is written) and the content of every file it
    reads (data, scores, preference pairs). A checkpoint or a finished adapter is reused only when this matches."""
    import json

    from ual.common.paths import resolve_data_path

    import dataclasses

    # Only settings that differ from their defaults enter: a field added in a later version (at its default) does
    # not restart every finished variant. A changed default is recorded by the ual version in the manifest.
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cfg)}
    conf = {k: v for k, v in config_to_dict(cfg).items() if k != "output_dir" and v != defaults.get(k)}
    files = {"data": _sha256(cfg.data)}
    if cfg.scores and Path(cfg.scores).is_file():
        files["scores"] = _sha256(cfg.scores)
    for k, p in enumerate(getattr(cfg, "pairs", None) or []):
        local = resolve_data_path(p)
        files[f"pairs[{k}]"] = _sha256(local) if local is not None and local.is_file() else str(p)
    return hashlib.sha256(json.dumps([conf, files], sort_keys=True, default=str).encode()).hexdigest()


def finished_result(cfg: TrainConfig) -> TrainResult | None:
    """The result of a finished run of exactly ``cfg`` (same fingerprint, adapter saved), else None."""
    from ual.common.io import read_json

    out = Path(cfg.output_dir)
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file() or not (out / "adapter" / "adapter_config.json").is_file():
        return None
    m = read_json(manifest_path)
    if m.get("status") != "complete" or m.get("fingerprint") != inputs_fingerprint(cfg):
        return None
    return TrainResult(out, out / "adapter", out / "log.jsonl", manifest_path, m.get("metrics", {}))


def _checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def _resumable_checkpoint(out: Path, fingerprint: str, main_process: bool) -> Path | None:
    """The last complete checkpoint, if it was written with these settings and inputs; checkpoints of other
    settings are removed (resuming from them would mix two runs)."""
    import shutil

    from ual.common.io import read_json

    last = _last_checkpoint(out / "checkpoints")
    if last is None:
        return None
    manifest = read_json(out / "manifest.json") if (out / "manifest.json").is_file() else {}
    if manifest.get("fingerprint") == fingerprint:
        return last
    print(f"{out.name}: settings or inputs changed since its checkpoints were written; training from the start",
          flush=True)
    if main_process:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        shutil.rmtree(out / "adapter", ignore_errors=True)
    return None


def _finish_from_checkpoint(last: Path, out: Path, tokenizer, fingerprint: str, main_process: bool) -> TrainResult:
    """Save the adapter of a checkpoint that already holds the final step, and mark the run complete."""
    import json
    import shutil

    from ual.common.manifest import now_iso, update_manifest

    adapter_dir = out / "adapter"
    state = json.loads((last / "trainer_state.json").read_text())
    metrics = {"train_loss": next((h["loss"] for h in reversed(state.get("log_history", [])) if "loss" in h), None)}
    if main_process:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        trainer_files = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin")
        for f in last.iterdir():  # the adapter (and any head saved beside it), not the Trainer's own state
            if f.is_file() and f.name not in trainer_files and not f.name.startswith("rng_state"):
                shutil.copy2(f, adapter_dir / f.name)
        tokenizer.save_pretrained(str(adapter_dir))
        update_manifest(out / "manifest.json", status="complete", finished=now_iso(), fingerprint=fingerprint,
                        global_step=state.get("global_step"), finished_from_checkpoint=str(last), metrics=metrics)
    return TrainResult(out, adapter_dir, out / "log.jsonl", out / "manifest.json", metrics)
