"""Stage configs as dataclasses, loaded from YAML with ``key=value`` overrides.

An unknown key or a value of the wrong type stops the run before any work (as nanoGPT's configurator does),
with an :class:`~ual.errors.InputError` naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ual.common.errors import InputError

T = TypeVar("T")


def setting(default, help_text: str, **kw):
    """A documented config field: ``help_text`` (unit, source of the default, meaning) becomes the field's
    ``metadata["help"]``, which the CLI flags and the notebooks' parameters cells reuse."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help_text}, **kw)
    return dataclasses.field(default=default, metadata={"help": help_text}, **kw)


def field_help(cls: type, name: str) -> str:
    """The help text of one field of a config dataclass ('' when it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


def did_you_mean(key: str, known) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ''."""
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"key=value"`` into the key and the YAML-parsed value (``lr=3e-4`` gives a float)."""
    if "=" not in text:
        raise InputError("--set", None, text, "override must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError):  # ValueError: a date YAML accepts but cannot build (2024-13-45)
        value = raw
    return key.strip(), value


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping (profiles, ``--config``) through the guarded reader (:func:`ual.common.io.read_yaml`):
    a missing file, a directory, bytes that are not UTF-8 (a leading BOM is fine) or a syntax error name the file
    and line."""
    from ual.common.io import read_yaml

    path = Path(path)
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, None, None, f"expected a mapping at the top level, got {type(data).__name__}")
    bad = next((k for k in data if not isinstance(k, str)), None)
    if bad is not None:
        raise InputError(path, None, str(bad), f"a key must be a name, got {type(bad).__name__} {bad!r}")
    return data


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against annotation ``tp``; returns (ok, possibly coerced value)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            # one value where a list is expected is a one-element list (--set train.mean_eps=0.2)
            args = typing.get_args(tp)
            ok, v = _type_ok(value, args[0] if args else Any)
            if ok and value is not None and not isinstance(value, dict):
                return True, ([v] if origin is list else (v,))
            return False, value
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        out = []
        for v in value:
            ok, v2 = _type_ok(v, item_tp)
            if not ok:
                return False, value
            out.append(v2)
        return True, (list(out) if origin is list else tuple(out))
    if origin is dict:
        return isinstance(value, dict), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        return False, value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def build_config(cls: type[T], values: dict, *, source: str | Path | None = None, section: str | None = None) -> T:
    """Instantiate dataclass ``cls`` from ``values``, rejecting unknown keys and wrong types.

    ``source`` and ``section`` only serve the error message (``profile.yaml: field "train.lr": ...``).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        field = f"{section}.{key}" if section else str(key)
        if not isinstance(key, str) or key not in names:
            key = str(key)
            raise InputError(source, None, field, f"unknown key for {cls.__name__}{did_you_mean(key, names)}; "
                             f"known: {', '.join(sorted(names))}")
        ok, coerced = _type_ok(value, hints[key])
        if not ok:
            raise InputError(source, None, field, f"expected {_type_name(hints[key])}, got {value!r}")
        kwargs[key] = coerced
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(source, None, section, str(e)) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                *, section: str | None = None) -> T:
    """Load ``cls`` from a YAML file (optionally one ``section`` of it) plus ``key=value`` overrides."""
    values: dict = {}
    if path is not None:
        data = load_yaml(path)
        if section is not None:
            data = data.get(section, {}) or {}
            if not isinstance(data, dict):
                raise InputError(path, None, section, f"expected a mapping of settings, got {type(data).__name__}")
        values.update(data)
    for text in overrides or []:
        key, value = parse_override(text)
        if section is not None and key.startswith(section + "."):
            key = key[len(section) + 1:]
        values[key] = value
    return build_config(cls, values, source=path or "--set", section=section)


def config_to_dict(cfg: Any) -> dict:
    """A dataclass config as a plain JSON-ready dict."""
    return dataclasses.asdict(cfg)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def from_params(cls: type[T], namespace: dict, *, source: str = "notebook parameters") -> T:
    """Build ``cls`` from the variables of the same names in ``namespace`` (a notebook's parameters).

    Every field must be present (the ``parameters`` cell mirrors the dataclass); values are type-checked as
    for a profile.
    """
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    missing = [n for n in names if n not in namespace]
    if missing:
        raise InputError(source, None, missing[0], f"the parameters cell does not define it (needed by {cls.__name__})")
    return build_config(cls, {n: namespace[n] for n in names}, source=source)


def _literal_source(value: Any) -> str:
    return repr(value)


def _annotation(tp: Any) -> str:
    """A parameters-cell annotation: the builtin spelling papermill's --help-notebook shows."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "str"
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"Optional[{_annotation(args[0])}]" if len(args) == 1 else "object"
    if origin in (list, dict):
        args = typing.get_args(tp)
        return f"{origin.__name__}[{', '.join(_annotation(a) for a in args)}]" if args else origin.__name__
    return getattr(tp, "__name__", "object")


PARAMETER_COMMENT_CHARS = 110  # a parameters cell stays readable: long help texts are cut with "..."


def parameters_cell(cls: type, *, overrides: dict | None = None, run_dir_default: str = "runs/dev") -> str:
    """The source of a stage notebook's ``parameters`` cell for config ``cls``: ``run_dir``, ``profile``, then
    every field with its default and its help text as the trailing comment (choices first for a Literal).
    ``overrides``: notebook defaults that differ from the dataclass's (so that Run All works offline)."""
    hints = typing.get_type_hints(cls)
    lines = [f'run_dir: str = "{run_dir_default}"  # every artifact of this run; a relative path is under the '
             "repository's runs/",
             'profile: str = ""  # a profile name or YAML path: when set, its section for this stage replaces the '
             "values below"]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = (overrides or {}).get(f.name, default)
        tp = hints[f.name]
        comment = f.metadata.get("help", "")
        if typing.get_origin(tp) is typing.Literal:
            comment = " | ".join(str(a) for a in typing.get_args(tp)) + "; " + comment
        # papermill's parameter parser stops at "=" inside a trailing comment (it then warns "Unable to parse")
        comment = comment.replace(">=", "≥").replace("<=", "≤").replace(" = ", " is ").replace("=", ":")
        if len(comment) > PARAMETER_COMMENT_CHARS:
            comment = comment[:PARAMETER_COMMENT_CHARS].rsplit(" ", 1)[0] + " ..."
        lines.append(f"{f.name}: {_annotation(tp)} = {_literal_source(default)}" + (f"  # {comment}" if comment
                                                                                       else ""))
    src = "\n".join(lines)
    return ("from typing import Optional\n" + src) if "Optional[" in src else src
