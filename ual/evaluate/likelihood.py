"""Log-likelihood of given responses under a model, batched and exact.

A response is scored as the assistant turn after its prompt, with the ids of
:func:`ual.formatting.encode_prompt_and_response` (the ids training used). By default the response ids are cut
after the first end-of-turn (``eos``) token: the score is then the log-probability of *generating exactly this
response and stopping*, the event :func:`ual.evaluate.generate.generate` samples from. (The chat template adds a
newline after ``<|im_end|>`` that generation never produces; it is not scored.)

Batches are right-padded; with causal attention the padding sits after every scored position, so a batched score
equals the one-at-a-time score up to float rounding (tested).

Definitions used by the evaluation:

- ``gold_answer_nll``: mean negative log-likelihood per token (nats) of the gold response (``target="solution"``),
  or of only the tokens of its final answer, the number after the last ``####``, given the prompt and the gold
  reasoning before it (``target="answer"``).
- ``answer_confidence``: the model's probability of the answer tokens in a response given everything before them:
  ``exp(sum of log p(token))`` over the tokens whose text overlaps the answer's characters (the last occurrence
  of the extracted answer string in the response). For the model's own greedy output this is its confidence in the
  answer it gave, after its own reasoning. The end-of-turn token is not included, so for a multi-token number the
  chance of continuing with more digits is not subtracted.
"""
from __future__ import annotations

import math
from typing import Sequence

from ual.common.batching import right_pad
from ual.common.formatting import encode_prompt_and_response
from ual.common.models import cache_kwargs


def _response_ids(messages, response, tokenizer, template, stop_at_eos):
    prompt, resp = encode_prompt_and_response(messages, response, tokenizer, template=template)
    if stop_at_eos and tokenizer.eos_token_id in resp:
        resp = resp[:resp.index(tokenizer.eos_token_id) + 1]
    return prompt, resp


def token_logprobs(model, tokenizer, messages_list: Sequence[Sequence[dict]], responses: Sequence[str], *,
                   template: str = "chat", batch_size: int = 16, stop_at_eos: bool = True,
                   progress: bool = False) -> list[tuple[list[int], list[float]]]:
    """Per-token log-probabilities (nats) of each response given its prompt.

    Returns, per input pair and in input order, ``(response_ids, logprobs)`` with one float per response token
    (the end-of-turn token included; see the module doc for ``stop_at_eos``). ``batch_size``: sequences per
    forward pass; sequences are sorted by length internally to limit padding.
    """
    import torch
    from tqdm.auto import tqdm

    if len(messages_list) != len(responses):
        raise ValueError(f"{len(messages_list)} prompts but {len(responses)} responses")
    pairs = [_response_ids(m, r, tokenizer, template, stop_at_eos) for m, r in zip(messages_list, responses)]
    for i, (_, resp) in enumerate(pairs):
        if not resp:
            raise ValueError(f"response {i} encodes to no tokens")
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list = [None] * len(pairs)
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc="likelihood", unit="batch", disable=not progress):
            idx = order[start:start + batch_size]
            ids, mask = right_pad([pairs[i][0] + pairs[i][1] for i in idx], pad_id)
            width = ids.shape[1]
            # Only positions from the shortest prompt's end on predict response tokens: keep just those logits
            # (a [B, L, V] tensor is large for a 49k vocabulary).
            offset = min(len(pairs[i][0]) for i in idx) - 1
            logits_all = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                               logits_to_keep=width - offset).logits
            for j, i in enumerate(idx):
                p_len, r_ids = len(pairs[i][0]), pairs[i][1]
                # logits at position t predict token t + 1
                logits = logits_all[j, p_len - 1 - offset:p_len - 1 - offset + len(r_ids)].float()
                lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(r_ids, device=device)[:, None])[:, 0]
                out[i] = (list(r_ids), lp.cpu().tolist())
    return out


def continuation_logprobs(model, tokenizer, messages_list: Sequence[Sequence[dict]], responses: Sequence[str], *,
                          template: str = "chat", batch_size: int = 16, stop_at_eos: bool = True,
                          progress: bool = False) -> list[tuple[float, int]]:
    """``(sum of log-probabilities in nats, number of tokens)`` of each response given its prompt, input order.

    ``messages_list[i]``: the conversation (a trailing assistant turn is replaced by ``responses[i]``).
    """
    return [(float(sum(lp)), len(lp)) for _, lp in
            token_logprobs(model, tokenizer, messages_list, responses, template=template, batch_size=batch_size,
                           stop_at_eos=stop_at_eos, progress=progress)]


def answer_set_logprobs(model, tokenizer, messages: Sequence[dict], answers: Sequence[str], *,
                        template: str = "chat", batch_size: int = 64,
                        stop_at_eos: bool = True) -> list[tuple[float, int]]:
    """:func:`continuation_logprobs` of many responses to ONE prompt, running the shared prompt once.

    The prompt (all but its last token) is encoded once into a key/value cache that every batch of answers
    reuses, so the cost grows with the answers' length, not the prompt's. Returns ``(sum of log-probabilities in
    nats, number of tokens)`` per answer, in input order; equal to :func:`continuation_logprobs` up to float
    rounding (tested).
    """
    import copy

    import torch

    pairs = [_response_ids(messages, a, tokenizer, template, stop_at_eos) for a in answers]
    if not pairs:
        return []
    prompt = pairs[0][0]
    if any(p != prompt for p, _ in pairs) or len(prompt) < 2:
        raise ValueError("answers must share one prompt of at least two tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    with torch.no_grad():
        cache = model(input_ids=torch.tensor([prompt[:-1]], device=device), use_cache=True).past_key_values
        for start in range(0, len(pairs), batch_size):
            resps = [r for _, r in pairs[start:start + batch_size]]
            # each row starts with the last prompt token, whose logits predict the first response token
            ids, mask = right_pad([prompt[-1:] + r for r in resps], pad_id)
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(resps))
            full_mask = torch.cat([torch.ones(len(resps), len(prompt) - 1, dtype=torch.long), mask], dim=1)
            logits = model(input_ids=ids.to(device), attention_mask=full_mask.to(device), **cache_kwargs(model, past),
                           use_cache=True).logits
            for j, r in enumerate(resps):
                lp = torch.log_softmax(logits[j, :len(r)].float(), dim=-1)
                lp = lp.gather(1, torch.tensor(r, device=device)[:, None])[:, 0]
                out.append((float(lp.double().sum()), len(r)))
    return out


def _char_spans(tokenizer, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character span of each token in ``tokenizer.decode(ids)``, from decoded prefix lengths."""
    spans, prev = [], 0
    for k in range(1, len(ids) + 1):
        end = len(tokenizer.decode(ids[:k]))
        spans.append((prev, max(prev, end)))
        prev = max(prev, end)
    return spans


def span_logprob(tokenizer, response_ids: Sequence[int], logprobs: Sequence[float], start: int,
                 end: int) -> tuple[float, int]:
    """Sum of log-probabilities (nats) and count of the tokens whose decoded text overlaps characters
    ``[start, end)`` of the decoded response."""
    total, count = 0.0, 0
    for (a, b), lp in zip(_char_spans(tokenizer, response_ids), logprobs):
        if a < end and b > start:
            total += lp
            count += 1
    return total, count


def _answer_span(text: str, answer: str) -> tuple[int, int] | None:
    """Character span of the last occurrence of ``answer`` in ``text`` (None when absent)."""
    pos = text.rfind(answer)
    return None if pos < 0 else (pos, pos + len(answer))


def answer_logprobs(model, tokenizer, messages_list: Sequence[Sequence[dict]], responses: Sequence[str],
                    answer_texts: Sequence[str | None], *, template: str = "chat", batch_size: int = 16,
                    progress: bool = False) -> list[tuple[float, int] | None]:
    """Log-probability (nats) and token count of the answer tokens of each response: the tokens overlapping the
    last occurrence of ``answer_texts[i]`` (the answer as written, e.g. ``"12"``) in ``responses[i]``.

    ``None`` for a response whose answer text is None or does not occur in it.
    """
    scored = token_logprobs(model, tokenizer, messages_list, responses, template=template, batch_size=batch_size,
                            progress=progress)
    return answer_span_logprobs(tokenizer, scored, answer_texts)


def answer_span_logprobs(tokenizer, scored: Sequence[tuple[list[int], list[float]]],
                         answer_texts: Sequence[str | None]) -> list[tuple[float, int] | None]:
    """:func:`answer_logprobs` from responses already scored by :func:`token_logprobs` (``scored``), so that
    several answers of one response (the gold answer beside the whole solution, or two extraction protocols) cost
    one forward pass."""
    if len(scored) != len(answer_texts):
        raise ValueError(f"{len(scored)} scored responses but {len(answer_texts)} answer texts")
    out: list[tuple[float, int] | None] = []
    for (ids, lps), ans in zip(scored, answer_texts):
        if ans is None:
            out.append(None)
            continue
        decoded = tokenizer.decode(ids)
        span = _answer_span(decoded, ans)
        if span is None:
            out.append(None)
            continue
        total, count = span_logprob(tokenizer, ids, lps, *span)
        out.append((total, count) if count else None)
    return out


def answer_confidence(model, tokenizer, messages_list: Sequence[Sequence[dict]], responses: Sequence[str],
                      answer_texts: Sequence[str | None], *, template: str = "chat",
                      batch_size: int = 16) -> list[float | None]:
    """The model's probability (in [0, 1]) of the answer tokens in each response given everything before them
    (definition in the module doc); ``None`` where the response has no such answer."""
    return [None if a is None else math.exp(a[0]) for a in
            answer_logprobs(model, tokenizer, messages_list, responses, answer_texts, template=template,
                            batch_size=batch_size)]


def final_answer_text(response: str, marker: str = "####") -> str | None:
    """The answer as written after the last ``marker`` in ``response`` (stripped), or None."""
    pos = response.rfind(marker)
    if pos < 0:
        return None
    ans = response[pos + len(marker):].strip()
    return ans or None


def gold_answer_nll(model, tokenizer, records: Sequence, *, template: str = "chat", batch_size: int = 16,
                    target: str = "solution") -> list[float]:
    """Mean negative log-likelihood per token (nats) of each record's gold response under the model.

    ``target="solution"``: every token of the reference response (end-of-turn included).
    ``target="answer"``: only the final answer's tokens (after the last ``####``), given the gold reasoning.
    ``records``: :class:`ual.data.Record` objects with a reference response.
    """
    if target not in ("solution", "answer"):
        raise ValueError(f"target must be 'solution' or 'answer', got {target!r}")
    msgs = [r.messages for r in records]
    resps = [r.response for r in records]
    for r, resp in zip(records, resps):
        if resp is None:
            raise ValueError(f"record {r.id!r} has no reference response")
    if target == "solution":
        return [-s / n for s, n in continuation_logprobs(model, tokenizer, msgs, resps, template=template,
                                                         batch_size=batch_size)]
    answers = [final_answer_text(x) for x in resps]
    for r, a in zip(records, answers):
        if a is None:
            raise ValueError(f"record {r.id!r}: reference response has no '####' final answer")
    scored = answer_logprobs(model, tokenizer, msgs, resps, answers, template=template, batch_size=batch_size)
    return [-s / n for s, n in scored]
