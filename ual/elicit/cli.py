"""``python -m ual elicit``: one flag per :class:`ElicitConfig` field, plus ``--data`` and ``--output``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

import yaml

from ual.common.config import build_config, load_yaml
from ual.elicit.config import ElicitConfig
from ual.common.errors import InputError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_str_field(tp) -> bool:
    return tp is str or (typing.get_origin(tp) in (typing.Union, __import__("types").UnionType)
                         and str in typing.get_args(tp))


def parse_mapping(text: str, field: str) -> dict:
    """``"a=1,b=2.5"`` or a YAML/JSON mapping -> ``{"a": 1, "b": 2.5}``."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError) as e:
            raise InputError("command line", None, field, f"invalid YAML/JSON mapping ({' '.join(str(e).split())})"
                             ) from None
        if not isinstance(value, dict):
            raise InputError(None, None, field, f"expected a mapping, got {text!r}")
        return value
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise InputError(None, None, field, f"expected name=value pairs separated by commas, got {part!r}")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except (yaml.YAMLError, ValueError):
            out[k.strip()] = v  # not YAML: the text as given
    return out


def configure_elicit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="records to score (canonical JSONL, or alpaca/gsm8k/sharegpt)")
    p.add_argument("--output", required=True, help="scores JSONL (appended; a rerun resumes)")
    p.add_argument("--config", help="YAML file with ElicitConfig fields (its 'elicit' section if it has one); "
                   "flags override it")
    hints = typing.get_type_hints(ElicitConfig)
    for f in dataclasses.fields(ElicitConfig):
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} [default: {default!r}]".replace("%", "%%")
        if tp is bool:
            p.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=help_text)
        else:
            choices = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None
            p.add_argument(_flag(f.name), dest=f.name, default=None, choices=choices, help=help_text)


def config_from_args(args: argparse.Namespace) -> ElicitConfig:
    """Defaults < ``--config`` file < flags; types checked by :func:`ual.config.build_config`."""
    values: dict = {}
    if args.config:
        data = load_yaml(args.config)
        values.update(data.get("elicit", data) if isinstance(data.get("elicit", data), dict) else {})
    hints = typing.get_type_hints(ElicitConfig)
    for f in dataclasses.fields(ElicitConfig):
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        tp = hints[f.name]
        if tp is bool or _is_str_field(tp) or typing.get_origin(tp) is typing.Literal:
            values[f.name] = raw
        elif tp is dict:
            values[f.name] = parse_mapping(raw, f.name)
        else:
            try:
                values[f.name] = yaml.safe_load(raw)
            except (yaml.YAMLError, ValueError):  # ValueError: a date YAML accepts but cannot build (2024-13-45)
                values[f.name] = raw
    return build_config(ElicitConfig, values, source=args.config or "command line")


def run_elicit(args: argparse.Namespace) -> int:
    from ual.data.records import load_file
    from ual.elicit.scoring import elicit

    cfg = config_from_args(args)
    records = load_file(args.data)
    summary = elicit(cfg, records, args.output)
    t = summary["tokens"]
    rate = summary["samples_per_second"]
    print(f"elicit {summary['backend']} ({summary['model']}, prompt {summary['prompt_version']}): "
          f"{summary['records']} records, {summary['skipped']} already done, {summary['scored']} scored, "
          f"{summary['parse_failures']} parse failures, {summary['errors']} errors; "
          f"tokens {t['prompt_tokens']} prompt + {t['completion_tokens']} completion = {t['total_tokens']}; "
          f"{summary['seconds']:.1f} s" + (f" ({rate:.2f} samples/s)" if rate else ""), file=sys.stderr)
    print(f"file: {summary['file_scored']} of {summary['records']} records have a score "
          f"({summary['file_missing']} without); scale: {summary['scale']}", file=sys.stderr)
    print(json.dumps(summary))
    return 0 if summary["file_missing"] == 0 else 1
