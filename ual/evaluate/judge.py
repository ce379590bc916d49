"""Pairwise judging of a model's outputs against reference outputs, AlpacaEval 2.0 style, cached and resumable.

For each instruction the judge sees the two outputs labelled ``m`` (shown first) and ``M`` (shown second) and
answers one character. The verdict is read as a probability, never sampled: a local causal LM gives the
next-token probabilities of ``m`` and ``M`` (softmax restricted to those two); an OpenAI-compatible endpoint
gives them through ``logprobs`` (text parsing only when no logprobs come back). To cancel position bias every
pair is judged in both orders and the two probabilities that the model wins are averaged; both are recorded.

Every verdict is appended to a JSONL cache as it finishes, keyed by a hash of (judge, prompt version,
instruction, first output, second output); a rerun skips finished verdicts and retries failed ones, and a torn
last line (a kill mid-write) is ignored. Unusable replies are stored as failures with their reason: the pair
then gets ``preference: None`` (dropped from the win rate, as alpaca_eval drops NaN), never a guess.

The result is an AlpacaEval annotations list (``output_1`` = reference, ``output_2`` = model, ``preference`` in
[1, 2] with 2 = the model wins) that :mod:`ual.evaluate.metrics.winrate` reads.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ual.common.errors import InputError
from ual.evaluate.metrics.model_outputs import read_model_outputs, validate_model_outputs
from ual.common.io import JsonlAppender, atomic_write_json, iter_jsonl

# v1: first wording (below). Bump on any change to the prompt text or the labels: cached verdicts are keyed by it.
JUDGE_PROMPT_VERSION = 1
CHOICES = ("m", "M")  # label of the first / second output shown

JUDGE_SYSTEM = ("You compare two AI assistant responses to the same instruction and say which one a careful "
                "human expert would prefer. You reply with exactly one character.")
JUDGE_TEMPLATE = """Read the instruction and the two responses below.

Prefer the response that follows the instruction more helpfully, accurately and completely. Judge content, not
style: a longer response is not better for being longer, and the order in which the responses appear says
nothing about their quality.

### Instruction
{instruction}

### Response m
{first}

### Response M
{second}

Which response is better? Reply with the single character m (for response m) or M (for response M)."""

ORDERS = ("reference_first", "model_first")


def judge_messages(instruction: str, first: str, second: str) -> list[dict]:
    """Chat messages asking which of ``first`` (label m) and ``second`` (label M) answers ``instruction`` better."""
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_TEMPLATE.format(instruction=instruction, first=first, second=second)}]


@dataclass
class Verdict:
    """One judged prompt: ``p_second`` = probability (0-1) that the second-shown output (M) is better, None on
    failure; ``method`` how it was read ("next_token", "logprobs", "text"); ``error`` why it failed."""

    p_second: float | None
    method: str | None = None
    error: str | None = None
    raw: str | None = None


def cache_key(judge: str, instruction: str, first: str, second: str) -> str:
    """Hex sha256 of (judge, prompt version, instruction, first output, second output)."""
    blob = json.dumps([judge, JUDGE_PROMPT_VERSION, instruction, first, second], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------- judges

class LocalJudge:
    """A local causal LM as judge: P(M) / (P(m) + P(M)) from the next-token distribution after the chat prompt.

    ``model``: a name or folder for :func:`ual.models.load_model` (e.g. ``smollm2-135m``). ``template``: prompt
    template for :func:`ual.formatting.encode_prompt` ("chat" for instruction-tuned models). ``calls`` counts
    forward passes and ``n_judged`` prompts (tests use them to check resumption).
    """

    def __init__(self, model: str, *, template: str = "chat", batch_size: int = 4, dtype: str = "float32",
                 max_prompt_tokens: int | None = None):
        from ual.common.models import load_model, load_tokenizer

        self.name = f"local:{model}" + ("" if template == "chat" else f":{template}")  # keys the cache
        self.template = template
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.model = load_model(model, dtype=dtype)
        ids = [self.tokenizer.encode(c, add_special_tokens=False) for c in CHOICES]
        if any(len(i) != 1 for i in ids) or ids[0] == ids[1]:
            raise InputError(None, None, "judge", f"{model}: the labels {CHOICES} are not two distinct single tokens")
        self.choice_ids = [i[0] for i in ids]
        self.calls = 0
        self.n_judged = 0

    def judge(self, prompts: Sequence[list[dict]]) -> list[Verdict]:
        """Verdicts for a list of chat prompts, in batches of ``batch_size`` (left-padded, no sampling)."""
        import torch

        from ual.common.batching import left_pad
        from ual.common.formatting import encode_prompt

        encoded = [encode_prompt(p, self.tokenizer, template=self.template) for p in prompts]
        out: list[Verdict | None] = [None] * len(encoded)
        too_long = {i for i, e in enumerate(encoded) if self.max_prompt_tokens and len(e) > self.max_prompt_tokens}
        for i in too_long:
            out[i] = Verdict(None, error=f"prompt has {len(encoded[i])} tokens > max_prompt_tokens "
                                         f"{self.max_prompt_tokens}")
        order = sorted((i for i in range(len(encoded)) if i not in too_long), key=lambda i: len(encoded[i]))
        pad = self.tokenizer.pad_token_id
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            ids, mask = left_pad([encoded[i] for i in idx], pad)
            # Positions count real tokens only, so a left-padded row sees the same positions as unpadded.
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                    logits_to_keep=1).logits[:, -1, :]
            self.calls += 1
            two = torch.log_softmax(logits[:, self.choice_ids].double(), dim=-1)
            for r, i in enumerate(idx):
                out[i] = Verdict(float(two[r, 1].exp()), method="next_token",
                                 raw=json.dumps({c: float(v) for c, v in zip(CHOICES, two[r])}))
        self.n_judged += len(encoded)
        return out  # type: ignore[return-value]


def verdict_from_reply(text: str, logprobs: list | None) -> Verdict:
    """Read a chat reply: from the first token's ``top_logprobs`` when they list m or M (a label absent from the
    top list counts as probability 0), else from a text that is exactly one label (surrounding whitespace and
    punctuation ignored), else a failure."""
    if logprobs:
        first = logprobs[0] if isinstance(logprobs[0], dict) else {}
        alts = first.get("top_logprobs") or [{"token": first.get("token"), "logprob": first.get("logprob")}]
        lp: dict[str, float] = {}
        for a in alts:
            if not isinstance(a, dict) or not isinstance(a.get("token"), str):
                continue
            tok = a["token"].strip()
            if tok in CHOICES and isinstance(a.get("logprob"), (int, float)):
                lp[tok] = max(lp.get(tok, -math.inf), float(a["logprob"]))
        if lp:
            pm, pM = (math.exp(lp.get(c, -math.inf)) for c in CHOICES)
            return Verdict(pM / (pm + pM), method="logprobs", raw=json.dumps(lp))
    label = text.strip().strip(".:*\"'`()[] \n\t")
    if label in CHOICES:
        return Verdict(float(label == CHOICES[1]), method="text", raw=text)
    return Verdict(None, error=f"unusable reply: {text[:80]!r}", raw=text)


class OpenAIJudge:
    """An OpenAI-compatible chat endpoint as judge (``ual.api.ChatClient``), one token at temperature 0 with the
    top 5 logprobs. ``concurrency`` parallel requests."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 4, timeout: float = 60.0, max_retries: int = 6, client=None):
        from ual.common.api import ChatClient

        self.name = f"openai:{model}"
        self.concurrency = concurrency
        self.client = client or ChatClient(base_url, model, api_key_env=api_key_env, timeout=timeout,
                                           max_retries=max_retries)
        self.n_judged = 0

    def _one(self, messages: list[dict]) -> Verdict:
        res = self.client.chat(messages, temperature=0.0, max_tokens=1, logprobs=True, top_logprobs=5)
        if res.error is not None:
            return Verdict(None, error=f"request failed: {res.error}")
        return verdict_from_reply(res.text, res.logprobs)

    def judge_iter(self, prompts: Sequence[list[dict]], progress: bool = False):
        """Yield ``(index, Verdict)`` as requests finish (any order)."""
        from ual.common.api import run_concurrent

        for i, v in run_concurrent(lambda i: self._one(prompts[i]), list(range(len(prompts))), self.concurrency,
                                   progress=progress, desc="judge"):
            self.n_judged += 1
            yield i, v


# ----------------------------------------------------------------------------------------------- judging

def _pairs(model_outputs: Sequence[dict], reference_outputs: Sequence[dict], model_source, reference_source):
    model_outputs = validate_model_outputs(list(model_outputs), model_source)
    reference_outputs = validate_model_outputs(list(reference_outputs), reference_source)
    by_inst = {r["instruction"]: r for r in model_outputs}
    ref_insts = {r["instruction"] for r in reference_outputs}
    for j, r in enumerate(reference_outputs, start=1):
        if r["instruction"] not in by_inst:
            raise InputError(model_source, None, "instruction", f"no output for reference item {j} "
                             f"({r['instruction'][:60]!r}); outputs must line up with the reference instructions")
    for j, r in enumerate(model_outputs, start=1):
        if r["instruction"] not in ref_insts:
            raise InputError(model_source, j, "instruction", f"item {j} is not a reference instruction "
                             f"({r['instruction'][:60]!r})")
    return [(ref, by_inst[ref["instruction"]]) for ref in reference_outputs]


def judge_outputs(model_outputs: Sequence[dict], reference_outputs: Sequence[dict], judge, cache_path: str | Path,
                  *, progress: bool = True, model_source=None, reference_source=None) -> list[dict]:
    """Judge each model output against the reference output for the same instruction, in both orders.

    ``model_outputs`` / ``reference_outputs``: AlpacaEval model_outputs lists (instruction, output, generator,
    dataset); matched by instruction, and an instruction missing on either side is an :class:`InputError`.
    ``judge``: a :class:`LocalJudge` or :class:`OpenAIJudge`. ``cache_path``: JSONL of verdicts (appended).
    Returns annotations in the reference order: instruction, dataset, output_1/generator_1 (reference),
    output_2/generator_2 (model), ``preference`` = 1 + mean over both orders of P(model better) (None if either
    order failed), ``preference_reference_first`` / ``preference_model_first`` (each in [1, 2] or None),
    ``annotator`` (judge name), ``judge_prompt_version`` and ``judge_errors``.
    """
    pairs = _pairs(model_outputs, reference_outputs, model_source, reference_source)
    cache_path = Path(cache_path)
    done: dict[str, dict] = {}
    if cache_path.exists():
        for _, row in iter_jsonl(cache_path):
            if row.get("p_second") is not None:
                done[row["key"]] = row
    jobs = []  # (key, order, instruction, first, second)
    for ref, mod in pairs:
        for order in ORDERS:
            first, second = (ref["output"], mod["output"]) if order == "reference_first" else \
                (mod["output"], ref["output"])
            jobs.append((cache_key(judge.name, ref["instruction"], first, second), order, ref["instruction"],
                         first, second))
    todo = list({j[0]: j for j in jobs if j[0] not in done}.values())  # identical jobs judged once
    results: dict[str, dict] = dict(done)
    with JsonlAppender(cache_path) as app:
        def record(job, v: Verdict):
            row = {"key": job[0], "judge": judge.name, "prompt_version": JUDGE_PROMPT_VERSION, "order": job[1],
                   "instruction": job[2], "p_second": v.p_second, "method": v.method, "error": v.error, "raw": v.raw}
            app.write(row)
            results[job[0]] = row

        messages = [judge_messages(j[2], j[3], j[4]) for j in todo]
        if hasattr(judge, "judge_iter"):
            for i, v in judge.judge_iter(messages, progress=progress):
                record(todo[i], v)
        else:
            from tqdm.auto import tqdm

            step = max(1, judge.batch_size)
            with tqdm(total=len(todo), desc="judge", unit="prompt", disable=not progress) as bar:
                for s in range(0, len(todo), step):
                    for job, v in zip(todo[s:s + step], judge.judge(messages[s:s + step])):
                        record(job, v)
                    bar.update(len(todo[s:s + step]))
    annotations = []
    for k, (ref, mod) in enumerate(pairs):
        rf, mf = (results.get(jobs[2 * k][0]), results.get(jobs[2 * k + 1][0]))
        p_rf = None if rf is None or rf["p_second"] is None else 1 + rf["p_second"]        # model shown second
        p_mf = None if mf is None or mf["p_second"] is None else 2 - mf["p_second"]        # model shown first
        errors = [r["error"] for r in (rf, mf) if r is not None and r.get("error")]
        annotations.append({
            "instruction": ref["instruction"], "dataset": ref.get("dataset", ""),
            "output_1": ref["output"], "generator_1": ref["generator"],
            "output_2": mod["output"], "generator_2": mod["generator"],
            "preference": None if p_rf is None or p_mf is None else (p_rf + p_mf) / 2,
            "preference_reference_first": p_rf, "preference_model_first": p_mf,
            "annotator": judge.name, "judge_prompt_version": JUDGE_PROMPT_VERSION, "judge_errors": errors,
        })
    return annotations


def position_agreement(annotations: Sequence[dict]) -> float:
    """Fraction (0-1) of judged pairs whose two orders pick the same winner (both > 1.5 or both < 1.5)."""
    both = [(a["preference_reference_first"], a["preference_model_first"]) for a in annotations
            if a["preference_reference_first"] is not None and a["preference_model_first"] is not None]
    return sum((x > 1.5) == (y > 1.5) for x, y in both) / len(both) if both else float("nan")


# ----------------------------------------------------------------------------------------------- CLI

def configure_judge(p) -> None:
    p.add_argument("--model-outputs", required=True, help="model_outputs.json of the model under test")
    p.add_argument("--reference-outputs", required=True, help="model_outputs.json of the reference")
    p.add_argument("--judge", default="smollm2-135m",
                   help="local model name/folder, or openai:MODEL for an OpenAI-compatible endpoint")
    p.add_argument("--base-url", default="https://api.openai.com/v1", help="endpoint for openai:MODEL")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--limit", type=int, help="judge only the first N reference instructions")
    p.add_argument("--cache", required=True, help="JSONL verdict cache (appended; reruns resume)")
    p.add_argument("--out", required=True, help="annotations JSON to write (AlpacaEval format)")


def run_judge(args) -> int:
    from ual.evaluate.metrics.winrate import win_rate

    model_outputs = read_model_outputs(args.model_outputs)
    reference = read_model_outputs(args.reference_outputs)
    if args.limit:
        reference = reference[:args.limit]
        keep = {r["instruction"] for r in reference}
        model_outputs = [m for m in model_outputs if m["instruction"] in keep]
    if args.judge.startswith("openai:"):
        judge: Any = OpenAIJudge(args.base_url, args.judge.split(":", 1)[1], api_key_env=args.api_key_env or None,
                                 concurrency=args.concurrency)
    else:
        judge = LocalJudge(args.judge, batch_size=args.batch_size)
    ann = judge_outputs(model_outputs, reference, judge, args.cache, model_source=args.model_outputs,
                        reference_source=args.reference_outputs)
    atomic_write_json(args.out, ann)
    summary = win_rate(a["preference"] for a in ann)
    summary.update({"annotator": judge.name, "position_agreement": position_agreement(ann), "annotations": args.out})
    print(json.dumps(summary, indent=2))
    return 0
