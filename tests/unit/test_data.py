"""Loaders, mixing, validation errors (file, line, field) and the validate CLI."""
import json

import pytest

from ual.__main__ import main
from ual.data.records import gsm8k_final_answer, load_file, load_scores, mix, save_records, load_records
from ual.common.errors import InputError


def _write(p, rows):
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_alpaca_gsm8k_sharegpt_and_canonical_round_trip(tmp_path):
    a = load_file(_write(tmp_path / "a.jsonl", [{"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"},
                                               {"instruction": "Count", "response": "1 2 3"}]))
    assert a[0].messages[0]["content"] == "Say hi\n\nto Bob" and a[1].response == "1 2 3"
    g = load_file(_write(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": "1+1=2\n#### 2"}]))
    assert g[0].answer == "2" and g[0].category == "math"
    mm = load_file(_write(tmp_path / "m.jsonl", [{"query": "2+2?", "response": "2+2=4. The answer is: 4", "type": "GSM_Rephrased"}]))
    assert mm[0].answer == "4" and mm[0].category == "GSM_Rephrased"
    s = load_file(_write(tmp_path / "s.jsonl", [{"id": "x", "conversations": [{"from": "human", "value": "hey"},
                                                                              {"from": "gpt", "value": "hello"}]}]))
    assert [m["role"] for m in s[0].messages] == ["user", "assistant"]
    save_records(tmp_path / "c.jsonl", a + g + s)
    back = load_records(tmp_path / "c.jsonl")
    assert [r.to_dict() for r in back] == [r.to_dict() for r in a + g + s]


def test_json_array_errors_name_the_line(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "", "output": "c"}\n]\n')
    with pytest.raises(InputError) as e:
        load_file(p)
    assert str(e.value) == f'{p}:3: field "instruction": is empty'


@pytest.mark.parametrize("line,field,msg", [
    ('{"id": "a", "source": "s", "messages": []}', "messages", "is empty"),
    ('{"id": "a", "source": "s", "messages": [{"role": "bot", "content": "x"}]}', "messages[0].role", "must be"),
    ('{"id": 3.5, "source": "s", "messages": [{"role": "user", "content": "x"}]}', None, None),
    ('{"id": "a", "source": "s", "messages": "hi"}', "messages", "expected a list"),
    ('{"id": "a", "source": "s", "messages": [{"role": "user", "content": 5}]}', "messages[0].content", "string"),
    ('{"id": "a", "source": "s"', None, "invalid JSON"),
])
def test_bad_records_name_file_line_and_field(tmp_path, line, field, msg):
    p = tmp_path / "d.jsonl"
    p.write_text('{"id": "ok", "source": "s", "messages": [{"role": "user", "content": "x"}]}\n' + line + "\n")
    if msg is None:  # a numeric id is accepted as its string form
        assert [r.id for r in load_file(p)] == ["ok", "3.5"]
        return
    with pytest.raises(InputError) as e:
        load_file(p)
    assert e.value.line == 2 and e.value.path == str(p) and msg in e.value.message
    if field:
        assert e.value.field == field


def test_duplicate_ids_and_empty_and_non_utf8_files(tmp_path):
    row = {"id": "a", "source": "s", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(InputError, match="duplicate id 'a'"):
        load_file(_write(tmp_path / "d.jsonl", [row, row]))
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(InputError, match="empty"):
        load_file(tmp_path / "e.jsonl")
    (tmp_path / "b.jsonl").write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(InputError, match="UTF-8"):
        load_file(tmp_path / "b.jsonl")


def test_gsm8k_final_answer():
    assert gsm8k_final_answer("blah\n#### 1,234") == "1234"
    assert gsm8k_final_answer("no marker") is None


def test_mix_is_seeded_and_sizes_are_respected(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"instruction": f"q{i}", "output": "o"} for i in range(20)])
    b = _write(tmp_path / "b.jsonl", [{"question": f"{i}?", "answer": f"#### {i}"} for i in range(20)])
    m1 = mix([{"path": str(a), "n": 5}, {"path": str(b), "n": 3}], seed=1)
    m2 = mix([{"path": str(a), "n": 5}, {"path": str(b), "n": 3}], seed=1)
    assert [r.id for r in m1] == [r.id for r in m2] and len(m1) == 8
    assert sum(r.source == "a" for r in m1) == 5
    with pytest.raises(InputError, match="asks for 50"):
        mix([{"path": str(a), "n": 50}])


def test_scores_checked_against_data(tmp_path):
    recs = load_file(_write(tmp_path / "a.jsonl", [{"instruction": f"q{i}", "output": "o"} for i in range(3)]))
    ok = _write(tmp_path / "s.jsonl", [{"id": r.id, "score": 10 * i} for i, r in enumerate(recs)])
    assert load_scores(ok, recs) == {"a-0": 0.0, "a-1": 10.0, "a-2": 20.0}
    for rows, msg in [([{"id": "a-0", "score": float("nan")}], "finite"),
                      ([{"id": "a-0", "score": -1}], "outside"),
                      ([{"id": "a-0", "score": 120}], "outside"),
                      ([{"id": "a-0", "score": "high"}], "number"),
                      ([{"id": "zzz", "score": 1}], "not in the data"),
                      ([{"id": "a-0", "score": 1}], "have no score")]:
        p = tmp_path / "bad.jsonl"
        p.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))
        with pytest.raises(InputError, match=msg):
            load_scores(p, recs)


def test_validate_cli(tmp_path, capsys):
    good = _write(tmp_path / "a.jsonl", [{"instruction": "q", "output": "o"}])
    assert main(["validate", "--data", str(good)]) == 0
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"instruction": "q", "output": ""}\n')
    assert main(["validate", "--data", str(bad)]) == 2
    assert f'{bad}:1: field "output": is empty' in capsys.readouterr().err


def test_real_shared_files_load(shared_data):
    assert len(load_file(shared_data / "gsm8k" / "train.jsonl")) == 7473
    rp = load_file(shared_data / "gpteacher" / "roleplay-instruct.json")
    assert len(rp) == 1923 and rp[0].response
