"""Atomic writes, torn-line tolerance, config type checks."""
import json
from dataclasses import dataclass, field

import pytest

from ual.common.config import build_config, load_config
from ual.common.errors import InputError
from ual.common.io import JsonlAppender, atomic_write_json, read_jsonl


def test_appender_cuts_a_torn_line(tmp_path):
    p = tmp_path / "r.jsonl"
    with JsonlAppender(p) as f:
        f.write({"id": 1})
    with open(p, "a") as f:
        f.write('{"id": 2, "sco')  # killed mid-write
    with pytest.warns(UserWarning, match="torn last line"):
        assert read_jsonl(p) == [{"id": 1}]
    with pytest.raises(InputError, match=":2:"):
        read_jsonl(p, tolerate_torn=False)
    with pytest.warns(UserWarning, match="cut a torn last line"):
        with JsonlAppender(p) as f:
            f.write({"id": 3})
    assert p.read_text() == '{"id": 1}\n{"id": 3}\n'  # the fragment is gone, the file valid line by line
    assert read_jsonl(p, tolerate_torn=False) == [{"id": 1}, {"id": 3}]


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    atomic_write_json(tmp_path / "m.json", {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


@dataclass
class _C:
    lr: float = 0.1
    steps: int = 3
    names: list[str] = field(default_factory=list)
    flag: bool = False


def test_build_config_checks_types_and_keys():
    c = build_config(_C, {"lr": 1, "steps": 5, "names": ["a"], "flag": True})
    assert c.lr == 1.0 and isinstance(c.lr, float)
    with pytest.raises(InputError, match='"steps": expected int'):
        build_config(_C, {"steps": 2.5})
    with pytest.raises(InputError, match='"flag": expected bool'):
        build_config(_C, {"flag": "yes"})
    with pytest.raises(InputError, match="unknown key"):
        build_config(_C, {"lrr": 1})


def test_load_config_section_and_overrides(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train:\n  lr: 0.5\n  steps: 2\n")
    c = load_config(_C, p, ["train.steps=9", "names=[x, y]"], section="train")
    assert (c.lr, c.steps, c.names) == (0.5, 9, ["x", "y"])
