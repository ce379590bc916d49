"""Prompt/response boundaries are exact and generation prompts match training encodings."""
import pytest

from ual.common.formatting import build_example, encode_prompt, encode_prompt_and_response
from ual.common.models import byte_tokenizer

MSGS = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}]


@pytest.mark.parametrize("template", ["paper", "chat"])
def test_labels_mask_exactly_the_prompt(template):
    tok = byte_tokenizer()
    ex = build_example(MSGS, tok, template=template, mask_prompt=True)
    kept = [i for i, l in zip(ex["input_ids"], ex["labels"]) if l != -100]
    assert tok.decode(kept).startswith("5") and tok.eos_token in tok.decode(kept)
    unmasked = build_example(MSGS, tok, template=template, mask_prompt=False)
    assert unmasked["labels"] == unmasked["input_ids"]
    prompt = encode_prompt(MSGS, tok, template=template)
    assert ex["input_ids"][: len(prompt)] == prompt and sum(ex["response_mask"]) == len(ex["input_ids"]) - len(prompt)


def test_paper_template_text():
    tok = byte_tokenizer()
    ex = build_example(MSGS, tok, template="paper")
    assert tok.decode(ex["input_ids"]) == f"{tok.bos_token}\n\n### User: What is 2+3?\n\n### Assistant: 5{tok.eos_token}"


def test_multi_turn_and_truncation():
    tok = byte_tokenizer()
    msgs = MSGS + [{"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]
    ex = build_example(msgs, tok, template="chat", mask_prompt=True)
    kept = tok.decode([i for i, l in zip(ex["input_ids"], ex["labels"]) if l != -100])
    assert "5" in kept and "6" in kept and "What" not in kept
    assert len(build_example(msgs, tok, max_length=10)["input_ids"]) == 10
    p, r = encode_prompt_and_response(MSGS, "7", tok, template="chat")
    assert tok.decode(r).startswith("7")
