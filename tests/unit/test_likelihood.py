"""Response log-likelihoods: batched == one at a time == a dense reference; answer spans; gold NLL."""
from __future__ import annotations

import math

import pytest
import torch

from ual.data.records import Record
from ual.evaluate.likelihood import (answer_confidence, answer_logprobs, continuation_logprobs, final_answer_text,
                                     gold_answer_nll, token_logprobs)
from ual.common.formatting import encode_prompt_and_response
from ual.common.models import build_tiny_model


@pytest.fixture(scope="module")
def pair():
    model, tok = build_tiny_model(None, seed=5)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model.eval(), tok


MSGS = [[{"role": "user", "content": "What is 2 + 3?"}],
        [{"role": "user", "content": "Name a fruit."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to three, please."}],
        [{"role": "user", "content": "Hi"}]]
RESPS = ["2 + 3 = 5\n#### 5", "Mango", "1, 2, 3", "Hello there, how can I help you today?"]


def _reference(model, tok, messages, response):
    """Dense reference: one unpadded forward pass, log-softmax over the whole sequence."""
    prompt, resp = encode_prompt_and_response(messages, response, tok, template="chat")
    resp = resp[:resp.index(tok.eos_token_id) + 1]
    ids = torch.tensor([prompt + resp])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(float(lp[len(prompt) - 1 + k, t]) for k, t in enumerate(resp)), len(resp)


def test_batched_equals_unbatched_and_reference(pair):
    model, tok = pair
    batched = continuation_logprobs(model, tok, MSGS, RESPS, template="chat", batch_size=3)
    single = continuation_logprobs(model, tok, MSGS, RESPS, template="chat", batch_size=1)
    for (a, n), (b, m), msgs, resp in zip(batched, single, MSGS, RESPS):
        ref, k = _reference(model, tok, msgs, resp)
        assert n == m == k
        assert a == pytest.approx(b, abs=1e-4)
        assert a == pytest.approx(ref, abs=1e-4)
        assert a < 0


def test_scores_stop_at_end_of_turn(pair):
    model, tok = pair
    _, resp = encode_prompt_and_response(MSGS[1], "Mango", tok, template="chat")
    assert resp[-1] != tok.eos_token_id  # the chat template adds a newline after <|im_end|>
    (ids, lps), = token_logprobs(model, tok, MSGS[1:2], ["Mango"], template="chat")
    assert ids[-1] == tok.eos_token_id and len(ids) == len("Mango") + 1 == len(lps)
    (ids_all, _), = token_logprobs(model, tok, MSGS[1:2], ["Mango"], template="chat", stop_at_eos=False)
    assert ids_all == resp


def test_answer_span_is_the_answer_tokens(pair):
    model, tok = pair
    resp = "2 + 3 = 15\n#### 15"
    (ids, lps), = token_logprobs(model, tok, MSGS[:1], [resp], template="chat")
    # byte tokenizer: one token per character; the last "15" is characters -2, -1 before <|im_end|>
    want = lps[-3] + lps[-2]
    (got, n), = answer_logprobs(model, tok, MSGS[:1], [resp], ["15"], template="chat")
    assert n == 2 and got == pytest.approx(want, abs=1e-6)
    conf = answer_confidence(model, tok, MSGS[:1] * 3, [resp, resp, "no number"], ["15", None, "7"],
                             template="chat")
    assert conf[0] == pytest.approx(math.exp(want)) and 0 < conf[0] < 1
    assert conf[1] is None and conf[2] is None


def test_gold_answer_nll(pair):
    model, tok = pair
    rec = Record("a", "t", MSGS[0] + [{"role": "assistant", "content": RESPS[0]}], answer="5")
    (s, n), = continuation_logprobs(model, tok, MSGS[:1], RESPS[:1], template="chat")
    assert gold_answer_nll(model, tok, [rec], template="chat") == [pytest.approx(-s / n)]
    (a, m), = answer_logprobs(model, tok, MSGS[:1], RESPS[:1], ["5"], template="chat")
    assert m == 1
    assert gold_answer_nll(model, tok, [rec], template="chat", target="answer") == [pytest.approx(-a)]
    assert final_answer_text("x\n#### 42 ") == "42" and final_answer_text("no marker") is None
    with pytest.raises(ValueError, match="####"):
        gold_answer_nll(model, tok, [Record("b", "t", MSGS[1] + [{"role": "assistant", "content": "Mango"}])],
                        template="chat", target="answer")


def test_length_mismatch_rejected(pair):
    model, tok = pair
    with pytest.raises(ValueError, match="responses"):
        continuation_logprobs(model, tok, MSGS, RESPS[:2], template="chat")


def test_answer_set_shares_the_prompt_exactly(pair):
    from ual.evaluate.likelihood import answer_set_logprobs

    model, tok = pair
    answers = ["Mango", "Sea otter", "12", "Kiwi fruit, obviously"]
    want = continuation_logprobs(model, tok, [MSGS[2]] * len(answers), answers, template="chat", batch_size=1)
    for bs in (1, 3):
        got = answer_set_logprobs(model, tok, MSGS[2], answers, template="chat", batch_size=bs)
        assert [n for _, n in got] == [n for _, n in want]
        for (a, _), (b, _) in zip(got, want):
            assert a == pytest.approx(b, abs=1e-4)
