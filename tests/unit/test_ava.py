"""AVA in the trainer (ual.train.ava): the three methods train from one config on the tiny model, the reward head
is saved with the adapter, policies load like any adapter, rm-eval scores pairs; gradient accumulation and the
fused/logits paths agree."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ual.common.errors import InputError
from ual.data.controlled import make_dataset
from ual.data.preferences import PreferencePair, controlled_pairs, save_pairs
from ual.data.records import save_records
from ual.train.config import TrainConfig


@pytest.fixture(scope="module")
def controlled_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctl")
    train, evals, _ = make_dataset(6, 6, 2, 2, seed=7)
    save_records(d / "train.jsonl", train)
    save_pairs(d / "eval_pairs.jsonl", controlled_pairs(evals, seed=7))
    return d


def _cfg(tmp_path, data_dir, model_dir, method, **kw):
    base = dict(model=str(model_dir), data=str(data_dir / "train.jsonl"), output_dir=str(tmp_path / "train" / method),
                method=method, template="chat", max_length=256, batch_size=2, grad_accum=1, max_steps=2,
                save_steps=2, learning_rate=1e-2, mask_prompt=True, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, controlled_data, tiny_model_dir):
    from ual.train.fitting import fit

    out = tmp_path_factory.mktemp("ava")
    res = {}
    for method in ("ava_d", "ava_p", "bt_rm"):
        res[method] = fit(_cfg(out, controlled_data, tiny_model_dir, method), progress=False)
    return res


def test_evaluate_run_scores_every_reward_model_and_bootstraps(trained, controlled_data, tiny_model_dir):
    from ual.evaluate.reward import evaluate_run

    run_dir = trained["bt_rm"].output_dir.parent.parent
    summary = evaluate_run(run_dir, [str(controlled_data / "eval_pairs.jsonl")], split="all", n_boot=30,
                           progress=False)
    assert set(summary["models"]) == {"ava_p", "bt_rm"} and summary["n_pairs"] == 4
    assert "base_logprob" in summary and "length_baseline" in summary
    assert {d["metric"] for d in summary["bootstrap"]["differences"]} == {"pairwise_accuracy", "balanced_accuracy",
                                                                          "auroc"}
    assert (run_dir / "evaluate" / "bt_rm" / "rm_scores.jsonl").exists()
    assert json.loads((run_dir / "evaluate" / "reward_models.json").read_text())["n_pairs"] == 4
    from ual.evaluate.metrics.reward import reward_markdown

    table = reward_markdown(summary)
    assert "ava_p - bt_rm" in table and "length baseline" in table and "log-likelihood" in table


def test_three_methods_train_and_save_the_reward_head(trained):
    from safetensors.torch import load_file

    for method, r in trained.items():
        keys = load_file(str(r.adapter_dir / "adapter_model.safetensors")).keys()
        head = [k for k in keys if "reward_head" in k]
        assert head, (method, list(keys)[:4])
        weights = load_file(str(r.adapter_dir / "adapter_model.safetensors"))
        assert any(float(weights[k].abs().sum()) > 0 for k in head), f"{method}: reward head never trained"
        info = json.loads((r.output_dir / "ava.json").read_text())
        assert info["objective"]["method"] == method
        log = [json.loads(l) for l in r.log_path.read_text().splitlines()]
        assert all(math_finite(x["loss"]) for x in log if "loss" in x)
        man = json.loads(r.manifest_path.read_text())
        assert man["status"] == "complete" and man["config"]["ava_q_form"] == "log_softmax_alpha_softmax"
    assert json.loads((trained["ava_p"].output_dir / "ava.json").read_text())["data"]["n_pairs"] == 12
    assert any("ava_td_loglik" in json.loads(l) for l in trained["ava_d"].log_path.read_text().splitlines())
    assert any("rm_acc" in json.loads(l) for l in trained["bt_rm"].log_path.read_text().splitlines())


def math_finite(x):
    return x == x and abs(x) != float("inf")


def test_policy_adapter_loads_in_the_evaluate_stage_way(trained, tiny_model_dir):
    from ual.common.models import load_model

    base = load_model(str(tiny_model_dir))
    policy = load_model(str(tiny_model_dir), adapter=str(trained["ava_d"].adapter_dir))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert not hasattr(policy, "reward_head")
    assert not torch.allclose(base(ids).logits, policy(ids).logits)  # the LoRA update was applied


def test_load_trained_restores_the_reward_head(trained, controlled_data):
    from ual.data.preferences import load_pairs
    from ual.train.ava import load_trained, pair_rewards, reward_head_of

    model, tok, cfg = load_trained(trained["bt_rm"].output_dir)
    assert float(reward_head_of(model).proj.weight.abs().sum()) > 0
    pairs = load_pairs(controlled_data / "eval_pairs.jsonl").pairs
    r1 = pair_rewards(model, tok, pairs, template=cfg["template"], max_length=cfg["max_length"], batch_size=3)
    r2 = pair_rewards(model, tok, pairs, template=cfg["template"], max_length=cfg["max_length"], batch_size=1)
    assert len(r1) == len(pairs)
    torch.testing.assert_close(torch.tensor(r1), torch.tensor(r2), rtol=1e-4, atol=1e-5)  # padding-independent


def test_load_trained_without_a_tokenizer_copy_uses_the_base_models(trained, tmp_path):
    import shutil

    from ual.train.ava import load_trained

    slim = tmp_path / "slim"
    shutil.copytree(trained["bt_rm"].output_dir, slim)
    for f in (slim / "adapter").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    model, tok, _ = load_trained(slim)
    full_model, full_tok, _ = load_trained(trained["bt_rm"].output_dir)
    assert tok("a test sentence")["input_ids"] == full_tok("a test sentence")["input_ids"]
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(ids).logits, full_model(ids).logits)


def test_non_ava_folder_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "complete", "config": {"method": "sft"}}))
    from ual.train.ava import load_trained

    with pytest.raises(InputError, match="trains no reward head"):
        load_trained(tmp_path)


def test_rm_eval_cli_prints_metrics(trained, controlled_data, tmp_path):
    out = tmp_path / "scores.jsonl"
    proc = subprocess.run([sys.executable, "-m", "ual", "rm-eval", "--model", str(trained["ava_p"].output_dir),
                           "--pairs", str(controlled_data / "eval_pairs.jsonl"), "--out", str(out), "--n-boot", "50"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    for k in ("pairwise_accuracy", "balanced_accuracy", "auroc", "margin", "n_pairs", "length_baseline"):
        assert k in res
    assert res["n_pairs"] == 4 and len(out.read_text().splitlines()) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": 1, "rejected": "r"}\n')
    proc = subprocess.run([sys.executable, "-m", "ual", "rm-eval", "--model", str(trained["ava_p"].output_dir),
                           "--pairs", str(bad)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "bad.jsonl:1" in proc.stderr and "Traceback" not in proc.stderr


def test_pair_methods_refuse_an_unbounded_objective(tmp_path, controlled_data, tiny_model_dir):
    from ual.train.fitting import fit

    cfg = _cfg(tmp_path, controlled_data, tiny_model_dir, "ava_p", ava_q_form="log_prob")
    with pytest.raises(InputError, match="unbounded"):
        fit(cfg, progress=False)


def test_pairs_from_files_with_split(tmp_path, controlled_data, tiny_model_dir):
    from ual.train.ava import AVAData

    rows = [{"instruction": f"q{i}", "output_1": "a", "output_2": "b", "preference": 1.1} for i in range(40)]
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    cfg = _cfg(tmp_path, controlled_data, tiny_model_dir, "bt_rm", pairs=[str(tmp_path / "ann.json")],
               pairs_split="train")
    data = AVAData(cfg, [], tmp_path / "out")
    held = AVAData(_cfg(tmp_path, controlled_data, tiny_model_dir, "bt_rm", pairs=[str(tmp_path / "ann.json")],
                        pairs_split="heldout"), [], tmp_path / "out2")
    assert len(data.pairs) + len(held.pairs) == 40 and len(held.pairs) > 0
    info = json.loads((tmp_path / "out" / "ava.json").read_text())
    assert info["data"]["sources"][0]["sha256"] and info["data"]["split"] == "train"


def _batch_inputs(tok, n=4):
    from ual.train.ava import PairCollator, tokenize_pairs

    pairs = [PreferencePair(f"p{i}", "t", [{"role": "user", "content": f"Question {i}?"}], "Good answer " * (i + 1),
                            "Bad") for i in range(n)]
    examples, skipped = tokenize_pairs(pairs, tok, template="chat", max_length=64)
    assert not skipped
    return PairCollator(tok.pad_token_id)(examples)


def test_pairs_whose_prompt_fills_max_length_are_left_out_and_counted(tiny_model_dir):
    from ual.common.models import load_tokenizer
    from ual.train.ava import tokenize_pairs

    tok = load_tokenizer(str(tiny_model_dir))
    pairs = [PreferencePair("short", "t", [{"role": "user", "content": "Hi?"}], "Yes", "No"),
             PreferencePair("long", "t", [{"role": "user", "content": "x" * 300}], "Yes", "No")]
    examples, skipped = tokenize_pairs(pairs, tok, template="chat", max_length=64)
    assert [e["id"] for e in examples] == ["short"] and skipped == ["long"]
    labels = examples[0]["chosen_labels"]
    assert labels[0] == -100 and labels[-1] != -100  # prompt masked, response kept


@pytest.mark.parametrize("method", ["ava_p", "bt_rm", "ava_d"])
def test_accumulated_micro_batches_give_the_big_batch_gradient(tiny_model_dir, method):
    """Two micro-batches with num_items_in_batch counting the whole batch = one batch (pairs for the pair methods,
    target tokens for ava_d); and the fused path equals the logits path."""
    from transformers import TrainingArguments

    from ual.common.models import load_tokenizer
    from ual.train.ava import AVATrainer
    from ual.train.config import TrainConfig
    from ual.train.fitting import _lora_model

    tok = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    model = _lora_model(TrainConfig(model=str(tiny_model_dir), method=method))
    model.eval()  # no dropout: the two computations must see the same function
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    args = TrainingArguments(output_dir="/tmp/unused", report_to="none", use_cpu=True)
    batch = _batch_inputs(tok)
    if method == "ava_d":
        batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"]}

    def grads(trainer, parts):
        model.zero_grad()
        for inp, n in parts:
            trainer.compute_loss(model, dict(inp), num_items_in_batch=n).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    def half(b, rows):
        return {k: v[rows] for k, v in b.items()}

    for fused in (False, True):
        tr = AVATrainer(model=model, args=args, method=method, fused=fused, gamma=0.9, lam=0.5, alpha=3.0)
        if method == "ava_d":
            full = grads(tr, [(batch, None)])
            n = int((batch["labels"][:, 1:] != -100).sum())
            split = grads(tr, [(half(batch, slice(0, 4)), n), (half(batch, slice(4, 8)), n)])
        else:
            full = grads(tr, [(batch, None)])
            first = [0, 1, 4, 5]
            second = [2, 3, 6, 7]
            split = grads(tr, [(half(batch, first), 4), (half(batch, second), 4)])
        for k in full:
            torch.testing.assert_close(split[k], full[k], rtol=1e-4, atol=1e-6)
        if fused:
            for k in full:
                torch.testing.assert_close(full[k], ref[k], rtol=1e-4, atol=1e-6)
        ref = full
    head = [k for k in ref if "reward_head" in k]
    assert head and any(float(ref[k].abs().sum()) > 0 for k in head)


def test_pair_count_for_gradient_accumulation(tiny_model_dir):
    from transformers import TrainingArguments

    from ual.common.models import load_tokenizer
    from ual.train.ava import AVATrainer
    from ual.train.fitting import _lora_model

    tok = load_tokenizer(str(tiny_model_dir))
    model = _lora_model(TrainConfig(model=str(tiny_model_dir), method="bt_rm"))
    tr = AVATrainer(model=model, args=TrainingArguments(output_dir="/tmp/unused", report_to="none", use_cpu=True),
                    method="bt_rm")
    n = tr._get_num_items_in_batch([_batch_inputs(tok, 3), _batch_inputs(tok, 2)], torch.device("cpu"))
    assert int(n) == 5


def test_killed_pair_run_resumes_to_the_same_reward_model(tmp_path, controlled_data, tiny_model_dir):
    """A run killed right after its step-2 checkpoint and resumed ends with the adapter and reward head of an
    uninterrupted run (the head travels in the checkpoints through peft's modules_to_save)."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from ual.train.fitting import fit

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt("killed after the step-2 checkpoint")

    kw = dict(max_steps=4, save_steps=2, seed=5)
    full = fit(_cfg(tmp_path / "a", controlled_data, tiny_model_dir, "ava_p", **kw), progress=False)
    cfg = _cfg(tmp_path / "b", controlled_data, tiny_model_dir, "ava_p", **kw)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, progress=False, callbacks=[Kill()])
    resumed = fit(cfg, progress=False)
    assert json.loads(resumed.manifest_path.read_text())["resumed_from"].endswith("checkpoint-2")
    a = load_file(str(full.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any("reward_head" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_pairs_alone_train_a_reward_model_without_records(tmp_path, tiny_model_dir):
    from ual.train.fitting import fit

    rows = [{"prompt": f"Say something nice {i}.", "chosen": "You are great!", "rejected": "No."} for i in range(6)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(model=str(tiny_model_dir), method="bt_rm", pairs=[str(tmp_path / "p.jsonl")],
                      output_dir=str(tmp_path / "rm"), template="chat", max_length=128, batch_size=2, grad_accum=1,
                      max_steps=1, save_steps=1)
    res = fit(cfg, progress=False)
    assert (res.adapter_dir / "adapter_model.safetensors").exists()
    with pytest.raises(InputError, match="no training data"):
        fit(TrainConfig(model=str(tiny_model_dir), method="ava_d", output_dir=str(tmp_path / "d")), progress=False)
