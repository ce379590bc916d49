"""Pairwise judge: prompt and reply parsing, both orders, caching/resume with a torn line, the OpenAI judge
against the fake server, and the model_outputs export it reads."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from ual.common.errors import InputError
from ual.evaluate.metrics.model_outputs import (model_outputs_from_generations, order_like_reference, read_model_outputs,
                                 write_model_outputs)
from ual.evaluate.judge import (JUDGE_PROMPT_VERSION, LocalJudge, OpenAIJudge, cache_key, judge_messages,
                                judge_outputs, position_agreement, verdict_from_reply)
from ual.evaluate.metrics.winrate import validate_annotations, win_rate

INSTRUCTIONS = ["Name a colour.", "What is 2 + 2?", "Greet me."]


def _outputs(generator, texts):
    return [{"instruction": i, "output": t, "generator": generator, "dataset": "test"}
            for i, t in zip(INSTRUCTIONS, texts)]


REFERENCE = _outputs("ref", ["Blue.", "4", "Hello!"])
MODEL = _outputs("mine", ["Red, or perhaps green.", "2 + 2 = 4.", "Hi there, nice to meet you."])


def test_prompt_shows_outputs_in_order():
    msgs = judge_messages("Q?", "FIRST", "SECOND")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert user.index("Q?") < user.index("### Response m\nFIRST") < user.index("### Response M\nSECOND")
    assert cache_key("j", "Q?", "a", "b") != cache_key("j", "Q?", "b", "a") != cache_key("k", "Q?", "a", "b")
    assert cache_key("j", "Q?", "a", "b") == cache_key("j", "Q?", "a", "b")


def _lp(pairs):
    return [{"token": pairs[0][0], "logprob": pairs[0][1],
             "top_logprobs": [{"token": t, "logprob": v} for t, v in pairs]}]


def test_verdict_from_reply():
    v = verdict_from_reply("m", _lp([("m", math.log(0.6)), ("M", math.log(0.3)), ("The", math.log(0.1))]))
    assert v.method == "logprobs" and v.p_second == pytest.approx(1 / 3)
    v = verdict_from_reply("M", _lp([(" M", -0.01), ("The", -5.0)]))  # m absent from the top list: probability 0
    assert v.p_second == 1.0
    v = verdict_from_reply("M.", _lp([("The", -0.1)]))  # no label among the logprobs: read the text
    assert (v.method, v.p_second) == ("text", 1.0)
    assert verdict_from_reply(" m\n", None).p_second == 0.0
    for bad in ("", "Both are good", "mM", "Response M"):
        v = verdict_from_reply(bad, None)
        assert v.p_second is None and "unusable" in v.error


@pytest.fixture(scope="module")
def tiny_judge(tiny_model_dir):
    return LocalJudge(str(tiny_model_dir), batch_size=4)


def test_local_judge_both_orders_and_resume(tiny_judge, tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    calls0, judged0 = tiny_judge.calls, tiny_judge.n_judged
    ann = judge_outputs(MODEL, REFERENCE, tiny_judge, cache, progress=False)
    assert tiny_judge.n_judged - judged0 == 6 and tiny_judge.calls - calls0 == 2  # 6 prompts, batches of 4
    assert validate_annotations(ann) is ann
    assert [a["instruction"] for a in ann] == INSTRUCTIONS
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(rows) == 6 and {r["order"] for r in rows} == {"reference_first", "model_first"}
    for a in ann:
        assert (a["output_1"], a["generator_1"], a["generator_2"]) == (
            REFERENCE[INSTRUCTIONS.index(a["instruction"])]["output"], "ref", "mine")
        assert a["preference"] == pytest.approx((a["preference_reference_first"] + a["preference_model_first"]) / 2)
        assert 1 <= a["preference"] <= 2 and a["judge_prompt_version"] == JUDGE_PROMPT_VERSION
    # The verdict of each order is the probability the judge puts on the label of the model's output.
    direct = tiny_judge.judge([judge_messages(INSTRUCTIONS[0], REFERENCE[0]["output"], MODEL[0]["output"]),
                               judge_messages(INSTRUCTIONS[0], MODEL[0]["output"], REFERENCE[0]["output"])])
    assert ann[0]["preference_reference_first"] == pytest.approx(1 + direct[0].p_second, abs=1e-6)
    assert ann[0]["preference_model_first"] == pytest.approx(2 - direct[1].p_second, abs=1e-6)

    # A rerun judges nothing; a torn last line (killed mid-write) loses only that verdict.
    judged1 = tiny_judge.n_judged
    again = judge_outputs(MODEL, REFERENCE, tiny_judge, cache, progress=False)
    assert tiny_judge.n_judged == judged1 and again == ann
    text = cache.read_text()
    cache.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    again = judge_outputs(MODEL, REFERENCE, tiny_judge, cache, progress=False)
    assert tiny_judge.n_judged == judged1 + 1
    assert [a["preference"] for a in again] == pytest.approx([a["preference"] for a in ann], abs=1e-6)
    assert 0 <= position_agreement(again) <= 1


def test_local_judge_batching_does_not_change_verdicts(tiny_judge):
    msgs = [judge_messages(i, r["output"], m["output"]) for i, r, m in zip(INSTRUCTIONS, REFERENCE, MODEL)]
    tiny_judge.batch_size = 1
    one = [v.p_second for v in tiny_judge.judge(msgs)]
    tiny_judge.batch_size = 3
    three = [v.p_second for v in tiny_judge.judge(msgs)]
    tiny_judge.batch_size = 4
    assert one == pytest.approx(three, abs=1e-5)


def test_instruction_mismatch_is_input_error(tiny_judge, tmp_path):
    with pytest.raises(InputError, match="no output for reference item 3"):
        judge_outputs(MODEL[:2], REFERENCE, tiny_judge, tmp_path / "c.jsonl", progress=False)
    extra = MODEL + [{"instruction": "Other?", "output": "x", "generator": "mine", "dataset": "t"}]
    with pytest.raises(InputError) as e:
        judge_outputs(extra, REFERENCE, tiny_judge, tmp_path / "c.jsonl", progress=False, model_source="m.json")
    assert (e.value.path, e.value.line, e.value.field) == ("m.json", 4, "instruction")


def _fake_openai():
    path = Path(__file__).resolve().parent.parent / "fake_openai.py"
    if not path.exists():
        pytest.skip("tests/fake_openai.py not present")
    spec = importlib.util.spec_from_file_location("ual_test_fake_openai", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses in the module look themselves up there
    spec.loader.exec_module(mod)
    return mod


def test_openai_judge_against_fake_server(tmp_path):
    fake = _fake_openai()
    ChatClient = pytest.importorskip("ual.common.api").ChatClient

    def responder(prompt):
        # A judge with a known answer: M unless the first output says "Hi there".
        first = prompt.split("### Response m\n")[1].split("### Response M")[0]
        return "m" if "Hi there" in first else "M"

    with fake.FakeOpenAI(responder=responder) as server:
        client = ChatClient(server.base_url, "fake-judge", api_key_env=None, timeout=5, max_retries=2,
                            backoff_base=0.0)
        judge = OpenAIJudge(server.base_url, "fake-judge", client=client, concurrency=2)
        # Instruction 2, reference shown first: a 500 then logprobs 0.8 for M; model shown first: unusable text.
        server.script(f"### Response m\n{REFERENCE[1]['output']}\n", fake.http_error(500),
                      fake.reply("M", logprobs=_lp([("M", math.log(0.8)), ("m", math.log(0.2))])))
        server.script(f"### Response m\n{MODEL[1]['output']}\n", fake.reply("Both are fine"))
        cache = tmp_path / "verdicts.jsonl"
        ann = judge_outputs(MODEL, REFERENCE, judge, cache, progress=False)
        assert len(server.requests) == 7 and judge.n_judged == 6
        req = server.requests[0]
        assert (req["max_tokens"], req["temperature"], req["logprobs"], req["top_logprobs"]) == (1, 0.0, True, 5)
        by = {a["instruction"]: a for a in ann}
        # The fake's default logprobs list only the chosen label, so each reading is certain. Instruction 1: no
        # "Hi there" either way, the judge always says M (pure position bias) -> the two orders cancel to a draw.
        a0 = by[INSTRUCTIONS[0]]
        assert (a0["preference_reference_first"], a0["preference_model_first"], a0["preference"]) == (2.0, 1.0, 1.5)
        a2 = by[INSTRUCTIONS[2]]  # the model's "Hi there" wins in both orders
        assert (a2["preference_reference_first"], a2["preference_model_first"], a2["preference"]) == (2.0, 2.0, 2.0)
        assert by[INSTRUCTIONS[1]]["preference_reference_first"] == pytest.approx(1.8)
        assert by[INSTRUCTIONS[1]]["preference"] is None and by[INSTRUCTIONS[1]]["preference_model_first"] is None
        assert "unusable" in by[INSTRUCTIONS[1]]["judge_errors"][0]
        assert win_rate(a["preference"] for a in ann)["n_missing"] == 1

        # A rerun retries only the failed verdict.
        ann2 = judge_outputs(MODEL, REFERENCE, judge, cache, progress=False)
        assert len(server.requests) == 8
        assert ann2[1]["preference_model_first"] == 1.0 and ann2[1]["preference"] == pytest.approx(1.4)


def test_export_roundtrip_and_order(tmp_path):
    shuffled = [MODEL[2], MODEL[0], {k: v for k, v in MODEL[1].items() if k != "dataset"}]
    path = tmp_path / "model_outputs.json"
    assert write_model_outputs(path, shuffled, reference=REFERENCE) == 3
    back = read_model_outputs(path)
    assert [r["instruction"] for r in back] == INSTRUCTIONS and back[1]["dataset"] == "test"
    assert set(back[0]) == {"instruction", "output", "generator", "dataset"}
    with pytest.raises(InputError, match="1 of 3 reference instructions have no output"):
        order_like_reference(MODEL[:2], REFERENCE)
    with pytest.raises(InputError, match="answer no reference instruction"):
        order_like_reference(MODEL + [dict(MODEL[0], instruction="new")], REFERENCE)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "a", "output": 3, "generator": "g"}]))
    with pytest.raises(InputError) as e:
        read_model_outputs(bad)
    assert (e.value.line, e.value.field) == (1, "output")


def test_model_outputs_from_generations(tmp_path):
    from ual.data.records import Record

    recs = [Record(f"ae-{k}", "alpaca_eval", [{"role": "user", "content": i}], category="test")
            for k, i in enumerate(INSTRUCTIONS)]
    gen = tmp_path / "generations.jsonl"
    gen.write_text("".join(json.dumps({"id": f"ae-{k}", "output": [m["output"]]}) + "\n"
                           for k, m in reversed(list(enumerate(MODEL)))))
    rows = model_outputs_from_generations(gen, recs, "mine")
    assert rows == MODEL
    gen.write_text(json.dumps({"id": "ae-0", "output": ["a", "b"]}) + "\n")
    with pytest.raises(InputError) as e:
        model_outputs_from_generations(gen, recs, "mine")
    assert (e.value.line, e.value.field) == (1, "output")
