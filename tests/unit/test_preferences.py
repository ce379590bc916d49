"""ual.data.preferences: every format, the prompt-hash split, controlled-benchmark pairs, and property tests that
no input gives anything but pairs or an InputError."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ual.common.errors import InputError
from ual.data import preferences as P


def _write(tmp_path, rows, name="pairs.jsonl"):
    p = tmp_path / name
    if name.endswith(".jsonl"):
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        p.write_text(json.dumps(rows, indent=1))
    return p


def test_prompt_chosen_rejected_strings_and_conversations(tmp_path):
    rows = [{"prompt": "Name a fruit.", "chosen": "Mango", "rejected": "Trombone"},
            {"prompt": [{"role": "user", "content": "Hi"}],
             "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
             "rejected": [{"role": "assistant", "content": "Go away."}], "id": "x"}]
    d = P.load_pairs(_write(tmp_path, rows))
    assert [p.chosen for p in d.pairs] == ["Mango", "Hello!"]
    assert d.pairs[1].id == "x" and d.pairs[0].id == "pairs-0"
    assert d.pairs[1].prompt == [{"role": "user", "content": "Hi"}]
    assert all(p.first is None for p in d.pairs)


def test_anthropic_hh_dialogues(tmp_path):
    pre = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?"
    d = P.load_pairs(_write(tmp_path, [{"chosen": pre + "\n\nAssistant: 6.", "rejected": pre + "\n\nAssistant: 7."}]))
    (p,) = d.pairs
    assert p.prompt == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
                        {"role": "user", "content": "And 3+3?"}]
    assert (p.chosen, p.rejected) == ("6.", "7.")
    bad = _write(tmp_path, [{"chosen": pre + "\n\nAssistant: 6.",
                             "rejected": "\n\nHuman: Other?\n\nAssistant: 7."}], "bad.jsonl")
    with pytest.raises(InputError, match=r"bad.jsonl:1: field \"rejected\""):
        P.load_pairs(bad)


def test_implicit_conversational(tmp_path):
    u = {"role": "user", "content": "Sky colour?"}
    d = P.load_pairs(_write(tmp_path, [{"chosen": [u, {"role": "assistant", "content": "Blue"}],
                                        "rejected": [u, {"role": "assistant", "content": "Green"}]}]))
    assert d.pairs[0].prompt == [u] and d.pairs[0].rejected == "Green"


def test_ultrafeedback_lists(tmp_path):
    row = {"instruction": "Write a haiku.", "completions": [
        {"response": "a", "overall_score": 6.5}, {"response": "b", "overall_score": 9},
        {"response": "c", "overall_score": 2}, {"response": "d", "overall_score": 9}]}
    same = {"instruction": "Q", "completions": [{"response": "a", "overall_score": 3},
                                                {"response": "b", "overall_score": 3}]}
    d = P.load_pairs(_write(tmp_path, [row, same]))
    assert (d.pairs[0].chosen, d.pairs[0].rejected) == ("b", "c")  # first of the best, the worst
    assert d.dropped == {"all completions score the same": 1}


def test_alpaca_eval_annotations_keep_order_and_drop_ties(tmp_path):
    rows = [{"instruction": "i1", "output_1": "A", "output_2": "B", "preference": 1.02},
            {"instruction": "i2", "output_1": "A", "output_2": "B", "preference": 1.97},
            {"instruction": "i3", "output_1": "A", "output_2": "B", "preference": 1.5},
            {"instruction": "i4", "output_1": "A", "output_2": "B", "preference": None}]
    d = P.load_pairs(_write(tmp_path, rows, "ann.json"))
    assert [(p.chosen, p.first) for p in d.pairs] == [("A", "chosen"), ("B", "rejected")]
    assert d.dropped == {"tie (preference 1.5)": 1, "no verdict (preference null)": 1}
    bad = _write(tmp_path, [{"instruction": "i", "output_1": "A", "output_2": "B", "preference": 3}], "b.json")
    with pytest.raises(InputError, match=r"b.json:2: field \"preference\""):
        P.load_pairs(bad)


def test_real_alpaca_eval_annotations(shared_data):
    path = shared_data / "alpaca_eval" / "annotations" / "alpaca-7b.weighted_alpaca_eval_gpt4_turbo.json"
    d = P.load_pairs(path)
    assert len(d.pairs) + sum(d.dropped.values()) == 805
    # the plain win rate (published: about 2.6 %) from the pairs: share of pairs the second output wins
    second = sum(p.first == "rejected" for p in d.pairs)
    assert 0 < second < 0.05 * len(d.pairs)
    by_name = P.load_pairs("alpaca_eval/annotations/alpaca-7b.weighted_alpaca_eval_gpt4_turbo.json")
    assert len(by_name.pairs) == len(d.pairs)  # resolved under the data root


def test_errors_name_file_line_field(tmp_path):
    cases = [({"prompt": "p", "chosen": 3, "rejected": "r"}, "chosen"),
             ({"prompt": "", "chosen": "c", "rejected": "r"}, "prompt"),
             ({"prompt": [{"role": "bot", "content": "x"}], "chosen": "c", "rejected": "r"}, "prompt[0].role"),
             ({"prompt": "p", "chosen": [{"role": "user", "content": "c"}], "rejected": "r"}, "chosen"),
             ({"instruction": "q", "completions": [{"response": "a"}, {"response": "b", "score": 1}]},
              "completions[0]"),
             ({"foo": 1}, None)]
    for row, fld in cases:
        p = _write(tmp_path, [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
        with pytest.raises(InputError) as e:
            P.load_pairs(p)
        assert e.value.line == 2 and e.value.field == fld, (row, str(e.value))
    dup = _write(tmp_path, [{"id": 1, "prompt": "a", "chosen": "a", "rejected": "b"},
                            {"id": "1", "prompt": "b", "chosen": "a", "rejected": "b"}])
    with pytest.raises(InputError, match="duplicate id"):
        P.load_pairs(dup)
    with pytest.raises(InputError, match="file not found"):
        P.load_pairs(tmp_path / "missing.jsonl")
    for not_hub in ("[", "a/b/c", "-x", "x y"):
        with pytest.raises(InputError, match="not a hub id"):
            P.load_pairs(not_hub)


def test_identical_responses_are_dropped_and_counted(tmp_path):
    d = P.load_pairs(_write(tmp_path, [{"prompt": "p", "chosen": "same", "rejected": "same"},
                                       {"prompt": "p", "chosen": "a", "rejected": "b"}]))
    assert len(d.pairs) == 1 and d.dropped == {"identical responses": 1}


def test_save_and_reload_roundtrip(tmp_path):
    d = P.load_pairs(_write(tmp_path, [{"instruction": "i", "output_1": "A", "output_2": "B", "preference": 2}],
                            "a.json"))
    P.save_pairs(tmp_path / "canon.jsonl", d.pairs)
    back = P.load_pairs(tmp_path / "canon.jsonl")
    assert [p.to_dict() for p in back.pairs] == [p.to_dict() for p in d.pairs]


def test_split_is_by_prompt_and_stable():
    pairs = [P.PreferencePair(f"{s}-{i}", s, [{"role": "user", "content": f"q{i}"}], "a", "b")
             for s in ("x", "y") for i in range(400)]
    held = P.split_pairs(pairs, "heldout", 0.25)
    train = P.split_pairs(pairs, "train", 0.25)
    assert len(held) + len(train) == len(pairs) and not {p.id for p in held} & {p.id for p in train}
    assert {p.prompt_text for p in held}.isdisjoint({p.prompt_text for p in train})
    assert 0.18 < len(held) / len(pairs) < 0.32
    assert [p.id for p in P.split_pairs(list(reversed(pairs)), "heldout", 0.25)] == [p.id for p in reversed(held)]
    with pytest.raises(InputError):
        P.split_pairs(pairs, "test", 0.25)


def test_controlled_pairs_prefer_a_valid_answer():
    from ual.data.controlled import CATEGORIES, make_dataset, normalise_answer

    train, _, _ = make_dataset(20, 30, 0, 0, seed=3)
    pairs = P.controlled_pairs(train, seed=3)
    assert len(pairs) == 50
    for rec, p in zip(train, pairs):
        assert p.chosen == rec.response and p.prompt == rec.messages[:-1] and p.chosen != p.rejected
        if rec.category == "math":
            assert p.rejected.rsplit("####", 1)[0] == p.chosen.rsplit("####", 1)[0]
            assert int(p.rejected.rsplit("####", 1)[1]) != int(rec.answer)
        else:
            assert normalise_answer(p.rejected) not in {normalise_answer(x) for x in CATEGORIES[rec.category]["items"]}
    assert [p.rejected for p in P.controlled_pairs(train[:5], seed=3)] == [p.rejected for p in pairs[:5]]


# --------------------------------------------------------------------------------------------------- properties

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)
_keys = st.sampled_from(["prompt", "chosen", "rejected", "instruction", "output_1", "output_2", "preference",
                         "completions", "id", "first", "source", "response", "overall_score", "role", "content"])
_rowish = st.recursive(_json, lambda c: st.dictionaries(_keys, c, max_size=6) | st.lists(c, max_size=3),
                       max_leaves=20)


def _loads_or_input_error(path):
    try:
        d = P.load_pairs(path)
    except InputError as e:
        assert str(e).startswith(str(path))
        return
    for p in d.pairs:
        assert isinstance(p.chosen, str) and isinstance(p.rejected, str) and p.prompt[-1]["role"] == "user"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".json", ".jsonl"]))
def test_any_bytes_give_pairs_or_input_error(tmp_path, data, suffix):
    p = tmp_path / f"any{suffix}"
    p.write_bytes(data)
    _loads_or_input_error(p)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_rowish, min_size=1, max_size=3), as_array=st.booleans())
def test_any_json_rows_give_pairs_or_input_error(tmp_path, rows, as_array):
    p = tmp_path / ("rows.json" if as_array else "rows.jsonl")
    text = json.dumps(rows) if as_array else "".join(json.dumps(r) + "\n" for r in rows)
    p.write_text(text)
    _loads_or_input_error(p)


def test_deep_nesting_is_an_input_error(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(InputError):
        P.load_pairs(p)
