"""Turn records into token ids and labels, with the prompt/response boundary known exactly.

Two templates:
- ``paper``: the authors' lit-llama format, each turn ``BOS + "\\n\\n### User: {user}\\n\\n### Assistant: "`` followed by
  ``response + EOS``.
- ``chat``: the tokenizer's own chat template (ChatML for SmolLM2).

Why segments: chat templates rarely carry ``{% generation %}`` markers, so assistant masks from the template fail
silently (docs/pitfalls.md). We render the conversation turn by turn, tokenize each segment on its own and
concatenate, so the boundary between prompt and response tokens is exact, and the prompt ids used for generation
at evaluation are the very ids seen in training.
"""
from __future__ import annotations

from typing import Sequence

from ual.common.errors import InputError

TEMPLATES = ("paper", "chat")
IGNORE_INDEX = -100
PAPER_USER = "\n\n### User: "
PAPER_ASSISTANT = "\n\n### Assistant: "


def _segments(messages: Sequence[dict], tokenizer, template: str, add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """Split a conversation into (text, is_response) segments in order."""
    if template == "paper":
        bos = tokenizer.bos_token or ""
        eos = tokenizer.eos_token or ""
        segs: list[tuple[str, bool]] = []
        system = ""
        pending = None
        for m in messages:
            if m["role"] == "system":
                system = m["content"].strip() + "\n"
            elif m["role"] == "user":
                pending = f"{bos}{system}{PAPER_USER}{m['content']}{PAPER_ASSISTANT}"
                system = ""
            else:
                if pending is None:
                    raise ValueError("an assistant turn must follow a user turn")
                segs.append((pending, False))
                segs.append((m["content"] + eos, True))
                pending = None
        if pending is not None and add_generation_prompt:
            segs.append((pending, False))
        return segs
    if template == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise InputError(None, None, "template", "template 'chat' needs a tokenizer with a chat template")
        segs = []
        prev = ""
        msgs = list(messages)
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                before = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
                after = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
                if not before.startswith(prev) or not after.startswith(before):
                    raise ValueError("the chat template does not render conversations prefix-consistently")
                if before[len(prev):]:
                    segs.append((before[len(prev):], False))
                segs.append((after[len(before):], True))
                prev = after
        if add_generation_prompt and (not msgs or msgs[-1]["role"] != "assistant"):
            full = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            if not full.startswith(prev):
                raise ValueError("the chat template does not render conversations prefix-consistently")
            segs.append((full[len(prev):], False))
        return segs
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")


def _encode(text: str, tokenizer) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def build_example(messages: Sequence[dict], tokenizer, *, template: str = "paper", mask_prompt: bool = False,
                  max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids and labels for one training conversation.

    Returns ``{"input_ids": [L], "labels": [L], "response_mask": [L]}`` (ints; L <= max_length, truncated at the
    end). ``labels`` equal ``input_ids`` except prompt tokens are ``-100`` when ``mask_prompt`` (the authors
    trained on all tokens, so the default is False). ``response_mask`` is 1 on assistant tokens either way.
    """
    ids: list[int] = []
    resp: list[int] = []
    for text, is_resp in _segments(messages, tokenizer, template, add_generation_prompt=False):
        t = _encode(text, tokenizer)
        ids.extend(t)
        resp.extend([int(is_resp)] * len(t))
    if max_length is not None:
        ids, resp = ids[:max_length], resp[:max_length]
    labels = [i if (r or not mask_prompt) else IGNORE_INDEX for i, r in zip(ids, resp)]
    return {"input_ids": ids, "labels": labels, "response_mask": resp}


def encode_prompt(messages: Sequence[dict], tokenizer, *, template: str = "paper") -> list[int]:
    """Prompt ids for generation: the conversation up to (and without) the final assistant turn, plus the
    assistant header, tokenized exactly as in :func:`build_example`. A trailing assistant turn is dropped."""
    msgs = list(messages)
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    ids: list[int] = []
    for text, _ in _segments(msgs, tokenizer, template, add_generation_prompt=True):
        ids.extend(_encode(text, tokenizer))
    return ids


def encode_prompt_and_response(messages: Sequence[dict], response: str, tokenizer, *,
                               template: str = "paper") -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) for scoring ``response`` as the answer to ``messages`` (any final
    assistant turn in ``messages`` is replaced). The response ids include the end-of-turn token."""
    msgs = [m for m in messages]
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    prompt = encode_prompt(msgs, tokenizer, template=template)
    full = build_example(msgs + [{"role": "assistant", "content": response}], tokenizer, template=template)
    if full["input_ids"][: len(prompt)] != prompt:
        raise ValueError("prompt tokens differ between generation and training encodings")
    return prompt, full["input_ids"][len(prompt):]
