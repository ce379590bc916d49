"""Math answer protocols: number normalisation, each extraction rule and its misses, scoring with n samples."""
from __future__ import annotations

import json

import pytest

from ual.common.errors import InputError
from ual.evaluate.metrics.answers import (PROTOCOL_VERSION, PROTOCOLS, extract_answer, gold_answer, is_correct,
                                  normalize_number, number_tokens, row_accuracy, score_math, score_math_file)


@pytest.mark.parametrize("text,expected", [
    ("1,234.50", "1234.5"), ("$18.00", "18"), ("18.0", "18"), ("-3", "-3"), ("−3", "-3"), ("+5", "5"),
    ("50%", "50"), ("007", "7"), ("-0", "0"), ("0.0", "0"), (".5", "0.5"), ("5.", "5"), ("(42).", "42"),
    ("-$5", "-5"), ("**72**", "72"), ("1,000,000", "1000000"), ("123456789012345678901234567890.10",
                                                                 "123456789012345678901234567890.1"),
    ("abc", None), ("12,34", None), ("1e5", None), ("", None), ("3/4", None), ("5 apples", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_number_tokens_are_whole_numbers():
    text = "I have 17 apples, 7.5 kg, x7 and H2O, $1,000, 3-5 or -4; 10 - 3 = 7."
    assert number_tokens(text) == ["17", "7.5", "1000", "3", "5", "-4", "10", "3", "7"]


@pytest.mark.parametrize("text,strict,flexible,metamath", [
    ("She pays 3 + 4 = 7.\n#### 7", "7", "7", None),
    ("#### 1,234.00\nQuestion: next 9", "1234", "9", None),           # strict takes the first ####
    ("####$18", "18", "18", None),
    ("#### -5 degrees", "-5", "-5", None),
    ("So 5 + 6 = 11. The answer is: 11", None, "11", "11"),
    ("the answer is $7. Then THE ANSWER IS 8.", None, "8", "8"),     # metamath takes the last phrase
    ("The answer is: unknown, maybe 4", None, "4", None),             # a number must follow the phrase
    ("#### seven", None, None, None),
    ("no digits at all", None, None, None),
    ("", None, None, None),
])
def test_extraction_protocols(text, strict, flexible, metamath):
    assert extract_answer(text, "strict") == strict
    assert extract_answer(text, "flexible") == flexible
    assert extract_answer(text, "metamath") == metamath


def test_unknown_protocol_and_substring_extraction_are_errors():
    with pytest.raises(ValueError, match="unknown answer protocol"):
        extract_answer("1", "nope")
    with pytest.raises(ValueError, match="is_correct"):
        extract_answer("1", "substring")


@pytest.mark.parametrize("output,gold,expected", [
    ("it is 17", "7", False),            # gold 7 must not match 17
    ("it is 7.5", "7", False),
    ("x7 items", "7", False),
    ("so $7.00 in total", "7", True),
    ("7th place; 12 points", "7", True),
    ("we get 1,000 and then 3", "1000", True),
    ("the result -4", "-4", True),
    ("the result 4", "-4", False),
    ("nothing", "4", False),
])
def test_substring_rule(output, gold, expected):
    assert is_correct(output, gold, "substring") is expected


def test_is_correct_with_gsm8k_gold():
    gold = "He had 2 * 3 = <<2*3=6>>6 apples.\n#### 1,006"
    assert gold_answer(gold) == "1006"
    assert is_correct("#### 1006", gold, "strict")
    assert not is_correct("#### 1007", gold, "strict")
    assert is_correct("The answer is 1,006.", gold, "metamath")
    assert gold_answer(72) == "72" and gold_answer(2.50) == "2.5" and gold_answer(" 3.0 ") == "3"
    with pytest.raises(ValueError):
        gold_answer("#### ")
    with pytest.raises(ValueError):
        gold_answer(True)


def test_score_math_single_and_best_of_n():
    rows = [
        {"output": "#### 5", "answer": "5"},                                   # right under every rule but metamath
        {"output": ["The answer is 3", "#### 4", "3 or 4? 4"], "answer": 3},   # 1 of 3 strict-wrong etc.
        {"output": ["no idea", "still none"], "answer": "#### 2"},
    ]
    r = score_math(rows)
    assert r["protocol_version"] == PROTOCOL_VERSION
    assert (r["n_rows"], r["n_samples"], r["samples_per_row"]) == (3, 6, [1, 3])
    assert list(r["protocols"]) == list(PROTOCOLS)
    s, f, m, sub = (r["protocols"][k] for k in PROTOCOLS)
    # strict: row1 1/1, row2 0/3 (#### 4 is wrong), row3 0/2
    assert s["accuracy"] == pytest.approx(100 / 3) and s["best_of_n"] == pytest.approx(100 / 3)
    assert s["n_invalid"] == 4 and s["invalid_rate"] == pytest.approx(400 / 6)
    # flexible: row1 1/1, row2 "3" right, "4" wrong, "4" wrong -> 1/3, row3 0/2
    assert f["accuracy"] == pytest.approx(100 * (1 + 1 / 3) / 3) and f["best_of_n"] == pytest.approx(200 / 3)
    assert f["n_correct"] == 2 and f["n_invalid"] == 2
    # metamath: only row2's first sample
    assert m["accuracy"] == pytest.approx(100 * (1 / 3) / 3) and m["n_rows_any_correct"] == 1
    # substring: row1 yes; row2 samples 1 and 3 contain 3 -> 2/3; row3 none
    assert sub["accuracy"] == pytest.approx(100 * (1 + 2 / 3) / 3) and sub["best_of_n"] == pytest.approx(200 / 3)


def test_row_accuracy_is_the_per_row_fraction_that_score_math_averages():
    rows = [
        {"output": "#### 5", "answer": "5"},
        {"output": ["The answer is 3", "#### 4", "3 or 4? 4"], "answer": 3},
        {"output": ["no idea", "still none"], "answer": "#### 2"},
    ]
    per = row_accuracy(rows)
    # dense reference: is_correct per output, averaged per row
    for proto in PROTOCOLS:
        dense = [sum(is_correct(o, r["answer"], proto) for o in ([r["output"]] if isinstance(r["output"], str)
                                                                 else r["output"])) /
                 (1 if isinstance(r["output"], str) else len(r["output"])) for r in rows]
        assert per[proto] == pytest.approx(dense)
        assert 100 * sum(per[proto]) / len(rows) == pytest.approx(score_math(rows)["protocols"][proto]["accuracy"])
    with pytest.raises(InputError) as e:
        row_accuracy([{"output": "1"}], path="g.jsonl", lines=[7])
    assert (e.value.line, e.value.field) == (7, "answer")


def test_score_math_one_sample_accuracy_equals_best_of_n():
    rows = [{"output": f"#### {i}", "answer": str(i if i % 2 else i + 1)} for i in range(10)]
    r = score_math(rows, ["strict"])["protocols"]["strict"]
    assert r["accuracy"] == r["best_of_n"] == 50.0


@pytest.mark.parametrize("line,field", [
    ('{"answer": "3"}', "output"),
    ('{"output": [], "answer": "3"}', "output"),
    ('{"output": [1], "answer": "3"}', "output"),
    ('{"output": "3"}', "answer"),
    ('{"output": "3", "answer": "three"}', "answer"),
])
def test_score_math_file_bad_rows_name_file_line_field(tmp_path, line, field):
    path = tmp_path / "gen.jsonl"
    path.write_text('{"output": "#### 1", "answer": "1"}\n\n' + line + "\n")
    with pytest.raises(InputError) as e:
        score_math_file(path)
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 3, field)


def test_score_math_cli(tmp_path, capsys):
    from ual.__main__ import main

    path = tmp_path / "gen.jsonl"
    path.write_text(json.dumps({"output": ["#### 2", "#### 3"], "answer": "#### 3"}) + "\n")
    assert main(["score-math", "--generations", str(path), "--protocols", "strict"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protocols"]["strict"]["accuracy"] == 50.0 and out["protocols"]["strict"]["best_of_n"] == 100.0
    path.write_text('{"output": "x"}\n')
    assert main(["score-math", "--generations", str(path)]) == 2
    assert 'gen.jsonl:1: field "answer"' in capsys.readouterr().err
