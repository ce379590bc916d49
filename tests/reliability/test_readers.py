"""Every reader of a user file, fed arbitrary bytes and structured-but-wrong JSON/YAML (hypothesis), returns normally
or raises :class:`InputError` (exit 2 with file, line, field), never another exception; plus one test per reader
defect of issue 17: a torn last line (also cut inside a UTF-8 character) skipped and rewritten on resume, a
directory / symlink loop / non-UTF-8 bytes named as such, a BOM accepted everywhere, file modes, a closed pipe,
a missing optional package, a missing --run.

Complements test_bad_input.py (a fixed corpus of malformed data and score files through ``validate`` and ``train``).
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ual.__main__ import main
from ual.common.errors import InputError
from ual.common.io import JsonlAppender, atomic_write_json, iter_jsonl, read_json, read_jsonl, write_jsonl

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"
ROOT = Path(__file__).resolve().parents[2]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------------------------- strategies

# the keys the readers look for, so that structured inputs get past the first check and into the field checks
KEYS = ["id", "source", "messages", "role", "content", "answer", "category", "score", "instruction", "input",
        "output", "response", "question", "query", "type", "conversations", "from", "value", "generator", "dataset",
        "output_1", "output_2", "generator_1", "generator_2", "preference", "family", "greedy", "greedy_answers",
        "greedy_answer_logprobs", "valid_logprobs", "valid_n_tokens", "samples", "gold_logprob", "gold_n_tokens",
        "categories", "valid", "distribution", "version", "train", "data", "elicit", "evaluate", "run", "extends",
        "model", "method", "max_steps", "learning_rate", "chosen", "rejected", "prompt", "strict", "flexible"]
SCALARS = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["user", "assistant", "low", "high", "#### 4", "gpt", "human",
                                                     "The answer is: 3", "{PLACEHOLDER}", "tiny-random", "sft"]))
JSON_VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), c, max_size=6),
                           max_leaves=20)
ROWS = st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=7)


@st.composite
def _jsonl(draw) -> bytes:
    rows = draw(st.lists(ROWS | JSON_VALUES, max_size=5))
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    return _maybe_damage(draw, raw)


@st.composite
def _json_doc(draw) -> bytes:
    doc = draw(st.lists(ROWS, max_size=5) | JSON_VALUES)
    return _maybe_damage(draw, json.dumps(doc, ensure_ascii=False, indent=draw(st.sampled_from([None, 1]))).encode())


@st.composite
def _yaml_doc(draw) -> bytes:
    import yaml

    doc = draw(st.dictionaries(st.sampled_from(KEYS) | SCALARS.filter(lambda v: v is not None and v == v),
                               JSON_VALUES | ROWS, max_size=5))
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        text = json.dumps(doc, default=str)
    return _maybe_damage(draw, text.encode("utf-8"))


def _maybe_damage(draw, raw: bytes) -> bytes:
    """Cut, insert or flip bytes (a torn tail, a BOM, a bad byte), or leave the text whole."""
    how = draw(st.sampled_from(["whole", "whole", "cut", "insert", "bom"]))
    if how == "cut" and raw:
        return raw[:draw(st.integers(0, len(raw) - 1))]
    if how == "insert":
        k = draw(st.integers(0, len(raw)))
        return raw[:k] + draw(st.binary(min_size=1, max_size=4)) + raw[k:]
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    return raw


ANY_JSONL = st.binary(max_size=300) | _jsonl()
ANY_JSON = st.binary(max_size=300) | _json_doc() | _jsonl()
ANY_YAML = st.binary(max_size=300) | _yaml_doc() | _json_doc()


def _file(raw: bytes, name: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix="ual-prop-"))
    p = d / name
    p.write_bytes(raw)
    return p


def _returns_or_input_error(fn, *args, **kwargs) -> None:
    """The property: ``fn`` returns, or raises InputError (anything else fails the test with its traceback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a skipped torn last line warns; that is allowed
        try:
            fn(*args, **kwargs)
        except InputError as e:
            assert e.path is not None or e.field is not None, e  # it says where


# ----------------------------------------------------------------------------------------------- properties

@FAST
@given(raw=ANY_JSON, fmt=st.sampled_from(["auto", "records", "alpaca", "gsm8k", "metamath", "sharegpt", "lima",
                                          "alpaca_eval"]), suffix=st.sampled_from([".jsonl", ".json"]))
def test_data_records_any_bytes(raw, fmt, suffix):
    from ual.data.records import load_file

    _returns_or_input_error(load_file, _file(raw, "data" + suffix), fmt=fmt)


@FAST
@given(raw=ANY_JSON, suffix=st.sampled_from([".jsonl", ".json"]))
def test_preference_pairs_any_bytes(raw, suffix):
    from ual.data.preferences import load_pair_file

    _returns_or_input_error(load_pair_file, _file(raw, "pairs" + suffix))


@FAST
@given(raw=ANY_JSON, suffix=st.sampled_from([".jsonl", ".json"]), with_records=st.booleans())
def test_scores_any_bytes(raw, suffix, with_records):
    from ual.data.records import load_records, load_scores

    recs = load_records(BAD / "good.jsonl") if with_records else None
    _returns_or_input_error(load_scores, _file(raw, "scores" + suffix), recs, allow_missing=True)


@FAST
@given(raw=ANY_YAML)
def test_profiles_any_bytes(raw):
    from ual.pipeline import resolve_profile

    _returns_or_input_error(resolve_profile, str(_file(raw, "profile.yaml")))


@FAST
@given(raw=ANY_YAML)
def test_train_configs_any_bytes(raw):
    from ual.train.cli import load_train_config

    _returns_or_input_error(load_train_config, _file(raw, "train.yaml"))


@FAST
@given(raw=ANY_JSONL)
def test_generations_any_bytes(raw):
    from ual.evaluate.metrics.answers import score_math_file

    _returns_or_input_error(score_math_file, _file(raw, "generations.jsonl"))


@FAST
@given(raw=ANY_JSON)
def test_annotations_any_bytes(raw):
    from ual.evaluate.metrics.winrate import evaluate_annotations, validate_annotations

    def read(p):
        evaluate_annotations(validate_annotations(read_json(p), p), lc_method="none", source=p)

    _returns_or_input_error(read, _file(raw, "annotations.json"))


@FAST
@given(raw=st.binary(max_size=300) | st.text(max_size=80).map(str.encode)
       | st.text(max_size=40).map(lambda t: (t + "{example}" + t).encode()))
def test_prompts_any_bytes(raw):
    from ual.elicit.prompt import load_prompt

    _returns_or_input_error(load_prompt, _file(raw, "prompt.txt"))


@FAST
@given(scores=ANY_JSONL, spec=ANY_JSON)
def test_controlled_scores_and_spec_any_bytes(scores, spec):
    from ual.evaluate.metrics.controlled import controlled_metrics_file

    _returns_or_input_error(controlled_metrics_file, _file(scores, "scores.jsonl"), _file(spec, "spec.json"))


@FAST
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_lc_csvs_any_bytes(raw):
    from ual.evaluate.metrics.winrate import read_difficulties, read_lc_weights

    _returns_or_input_error(read_difficulties, _file(raw, "difficulty.csv"))
    _returns_or_input_error(read_lc_weights, _file(raw, "weights.csv"))


@FAST
@given(key=st.sampled_from(["max_steps", "learning_rate", "methods", "scores", "data", "seeds", "nope", ""]),
       value=st.text(max_size=30) | st.sampled_from(["2024-13-45", "[1,", "{a: [", "!!python/object:os.system", "nan"]))
def test_set_overrides_any_text(key, value):
    from ual.elicit.cli import parse_mapping
    from ual.train.cli import load_train_config

    _returns_or_input_error(load_train_config, None, [f"{key}={value}"])
    _returns_or_input_error(parse_mapping, value, "extra_body")


# ----------------------------------------------------------------------------------------------- torn last lines

def test_torn_tail_cut_inside_a_utf8_character_is_skipped_then_rewritten_on_resume(tmp_path):
    p = tmp_path / "scores.jsonl"
    with JsonlAppender(p) as w:
        w.write({"id": "a", "score": 1, "note": "ü"})
    row = (json.dumps({"id": "b", "score": 2, "note": "€"}, ensure_ascii=False) + "\n").encode()
    with open(p, "ab") as f:
        f.write(row[:row.index("€".encode()) + 1])  # killed after the first byte of a three-byte character
    with pytest.warns(UserWarning, match=":2: skipped a torn last line"):
        assert read_jsonl(p) == [{"id": "a", "score": 1, "note": "ü"}]
    with pytest.raises(InputError, match=":2: not valid UTF-8"):  # a data file's reader stays strict
        read_jsonl(p, tolerate_torn=False)
    with pytest.warns(UserWarning, match="cut a torn last line"):
        with JsonlAppender(p) as w:  # the resumed run
            w.write({"id": "b", "score": 2, "note": "€"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["id"] for r in read_jsonl(p, tolerate_torn=False)] == ["a", "b"]


def test_a_whole_row_missing_only_its_newline_is_kept(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text('{"id": "a"}\n{"id": "b"}')
    with JsonlAppender(p) as w:
        w.write({"id": "c"})
    assert [r["id"] for r in read_jsonl(p, tolerate_torn=False)] == ["a", "b", "c"]


def test_damage_before_the_last_line_stays_an_error(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_bytes(b'{"id": "a"}\n{"id": \xff\n{"id": "c"}\n')
    with pytest.raises(InputError, match=":2: not valid UTF-8"):
        read_jsonl(p)
    p.write_bytes(b'{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(InputError, match=":2: invalid JSON"):
        read_jsonl(p)


def _torn(path: Path, rows: list[dict]) -> Path:
    write_jsonl(path, rows)
    with open(path, "ab") as f:
        f.write('{"id": "x", "output": "é'.encode()[:-1])  # cut inside the é
    return path


def test_scores_and_generation_readers_skip_a_torn_last_line(tmp_path):
    from ual.data.records import load_records, load_scores
    from ual.evaluate.metrics.answers import score_math_file

    recs = load_records(BAD / "good.jsonl")
    sc = _torn(tmp_path / "scores.jsonl", [{"id": r.id, "score": 3} for r in recs])
    with pytest.warns(UserWarning, match="torn last line"):
        assert load_scores(sc, recs) == {r.id: 3.0 for r in recs}
    gens = _torn(tmp_path / "generations.jsonl", [{"id": "q1", "output": "so #### 4", "answer": "4"}])
    with pytest.warns(UserWarning, match="torn last line"):
        assert score_math_file(gens)["n_samples"] == 1


def test_bootstrap_generation_reader_skips_a_torn_last_line(tmp_path):
    from ual.figures.bootstrap import _math_items

    math_rows = [{"id": "q1", "gold_nll_per_token": 0.5, "confidence": 0.9, "correct": True}]
    write_jsonl(tmp_path / "math_gsm8k.jsonl", math_rows)
    _torn(tmp_path / "generations_gsm8k.jsonl", [{"id": "q1", "output": "so #### 4", "answer": "4"}])
    with pytest.warns(UserWarning, match="torn last line"):
        items = _math_items(tmp_path / "math_gsm8k.jsonl", "gsm8k")
    assert items[0].values == {"q1": 100.0}


# ----------------------------------------------------------------------------------------------- what went wrong

def _loop(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    os.symlink(p, p)
    return p


@pytest.mark.parametrize("argv", [
    ["score-math", "--generations", "{P}"],
    ["winrate", "--annotations", "{P}"],
    ["controlled-metrics", "--scores", str(BAD / "good.jsonl"), "--spec", "{P}"],
    ["validate", "--data", "{P}"],
    ["validate", "--data", str(BAD / "good.jsonl"), "--scores", "{P}"],
    ["train", "--config", "{P}", "--print-config"],
    pytest.param(["run", "--profile", "{P}", "--dry-run"], id="run"),
    ["elicit", "--data", str(BAD / "good.jsonl"), "--output", "{OUT}", "--prompt-file", "{P}", "--model", "gpt-4"],
])
@pytest.mark.parametrize("kind", ["directory", "symlink loop", "non-UTF-8", "missing"])
def test_every_cli_reader_says_what_is_wrong(argv, kind, tmp_path, capsys, request):
    suffix = ".yaml" if argv[0] in ("run", "train") else ".json"
    p = {"directory": tmp_path / "d", "symlink loop": tmp_path / "loop", "non-UTF-8": tmp_path / "latin1",
         "missing": tmp_path / "nope"}[kind].with_suffix(suffix)
    if kind == "directory":
        p.mkdir()
    elif kind == "symlink loop":
        os.symlink(p, p)
    elif kind == "non-UTF-8":  # line 1 blank, line 2 Latin-1, line 3 fine: every reader must name line 2
        p.write_bytes(b"\n" + "\"caf\u00e9\"".encode("latin-1") + b'\n"x"\n')
    argv = [a.replace("{P}", str(p)).replace("{OUT}", str(tmp_path / "out.jsonl")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0], err
    words = {"directory": "is a directory", "symlink loop": "symbolic link loop", "non-UTF-8": ":2: ",
             "missing": "not found"}[kind]
    assert words in err[0], err[0]
    if kind == "non-UTF-8":
        assert "not valid UTF-8" in err[0]


def test_a_bom_is_accepted_in_data_scores_profiles_and_json(tmp_path):
    from ual.data.records import load_file, load_records, load_scores
    from ual.train.cli import load_train_config

    bom = b"\xef\xbb\xbf"
    data = tmp_path / "d.jsonl"
    data.write_bytes(bom + (BAD / "good.jsonl").read_bytes())
    recs = load_file(data)
    assert [r.id for r in recs] == [r.id for r in load_records(BAD / "good.jsonl")]
    arr = tmp_path / "d.json"
    arr.write_bytes(bom + json.dumps([{"instruction": "hi", "output": "yo"}]).encode())
    assert load_file(arr)[0].prompt == "hi"
    sc = tmp_path / "s.json"
    sc.write_bytes(bom + json.dumps([1] * len(recs)).encode())
    assert set(load_scores(sc, recs).values()) == {1.0}
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(bom + b"train:\n  max_steps: 3\n")
    assert load_train_config(cfg).max_steps == 3
    js = tmp_path / "a.json"
    js.write_bytes(bom + b'{"a": 1}')
    assert read_json(js) == {"a": 1}


def test_a_truncated_json_list_of_scores_names_the_line(tmp_path, capsys):
    sc = tmp_path / "s.json"
    sc.write_text("[1,\n 2,\n 3")
    assert main(["validate", "--data", str(BAD / "good.jsonl"), "--scores", str(sc)]) == 2
    err = capsys.readouterr().err
    assert f"{sc}:3: invalid JSON" in err, err


def test_set_scores_with_bad_bytes_exits_2(tmp_path, capsys):
    sc = tmp_path / "s.jsonl"
    sc.write_bytes(b'{"id": "g1", "score": 3}\n{"id": "g2", "score": \xff3}\n{"id": "g3", "score": 3}\n')
    out = tmp_path / "out"
    assert main(["train", "--set", "model=tiny-random", "--set", f"data={BAD / 'good.jsonl'}", "--set",
                 f"scores={sc}", "--set", f"output_dir={out}"]) == 2
    assert f"{sc}:2: not valid UTF-8" in capsys.readouterr().err


def test_no_file_means_no_input_placeholder():
    assert str(InputError(None, None, "lc", "bad")) == 'field "lc": bad'
    assert "<input>" not in str(InputError(None, 3, None, "bad"))


# ----------------------------------------------------------------------------------------------- file modes

def test_atomic_and_appended_files_get_the_same_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {"a": 1})
        with JsonlAppender(tmp_path / "b.jsonl") as w:
            w.write({"a": 1})
    finally:
        os.umask(old)
    modes = {stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("a.json", "b.jsonl")}
    assert modes == {0o640}


# ----------------------------------------------------------------------------------------------- the CLI's top level

def test_a_closed_pipe_ends_quietly(tmp_path):
    gens = tmp_path / "g.jsonl"
    write_jsonl(gens, [{"id": "q1", "output": "#### 4", "answer": "4"}])
    r, w = os.pipe()
    os.close(r)  # the reader (head) is gone before we write
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "ual", "score-math", "--generations", str(gens)], stdout=w,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, timeout=120)
    os.close(w)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr


def test_missing_optional_package_and_full_disk_are_one_line(monkeypatch, capsys):
    import ual.__main__ as cli

    def no_pkg(argv):
        raise ModuleNotFoundError("No module named 'alpaca_eval'", name="alpaca_eval")

    monkeypatch.setattr(cli, "_main", no_pkg)
    assert cli.main(["winrate"]) == 2
    assert "needs the optional package alpaca_eval: pip install alpaca-eval" in capsys.readouterr().err

    def full(argv):
        raise OSError(28, "No space left on device", "runs/r/x.json")

    monkeypatch.setattr(cli, "_main", full)
    assert cli.main(["run"]) == 2
    assert "disk full: runs/r/x.json: No space left on device" in capsys.readouterr().err


def test_winrate_lc_alpaca_eval_without_the_package(tmp_path, monkeypatch, capsys):
    import ual.evaluate.metrics.winrate as W

    monkeypatch.setattr(W, "_alpaca_eval_available", lambda: False)
    ann = [{"instruction": f"i{k}", "output_1": "a", "output_2": "bb", "generator_1": "ref", "generator_2": "m",
            "preference": 2} for k in range(3)]
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(ann))
    assert main(["winrate", "--annotations", str(p), "--lc", "alpaca_eval"]) == 2
    assert "pip install alpaca-eval" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["figures", "stats", "export-results"])
def test_figures_stats_export_on_a_missing_or_empty_run(cmd, tmp_path, capsys):
    extra = ["--out", str(tmp_path / "o")] if cmd == "export-results" else []
    assert main([cmd, "--run", str(tmp_path / "nope"), *extra]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([cmd, "--run", str(tmp_path / "empty"), *extra]) == 2
    assert "holds no result files" in capsys.readouterr().err
