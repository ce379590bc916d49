"""Command line: ``python -m ual <command> ...``.

Each command lives in the module of its stage, which exposes ``add_<command>_parser(subparsers)`` through
the table below; modules are imported only when their command runs, so ``python -m ual figures`` never
imports torch. An :class:`~ual.errors.InputError` ends the command with its message and exit code 2; so do a full
disk and a missing optional package (one line, no traceback). Output piped into a reader that stops early
(``python -m ual stats ... | head -1``) ends the command quietly.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from ual.common.errors import InputError

# command -> (module, help). The module defines configure_<command>(parser) and run_<command>(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("ual.data.cli", "check a data file (and a scores file against it)"),
    "train": ("ual.train.cli", "LoRA fine-tuning with SFT, uniform LS or UAL"),
    "run": ("ual.pipeline", "run a profile's notebooks end to end with papermill (resumable)"),
    "figures": ("ual.figures.cli", "rebuild every figure of a run from its saved result files"),
    "export-results": ("ual.figures.cli", "copy a run's small result files (no weights) to a results folder"),
    "elicit": ("ual.elicit.cli", "score each training sample's uncertainty (API rater, local LM, likelihood, sampling)"),
    "elicit-bench": ("ual.elicit.benchmark", "which uncertainty measure serves UAL: AUROC, correctness, cost per measure"),
    "score-math": ("ual.evaluate.metrics.answers", "GSM8K-style accuracy of generations under each answer protocol"),
    "winrate": ("ual.evaluate.metrics.winrate", "AlpacaEval win rate and length-controlled win rate of annotations"),
    "judge": ("ual.evaluate.judge", "pairwise judge of model outputs vs reference outputs (AlpacaEval format)"),
    "controlled-data": ("ual.data.cli", "generate the controlled mixed-entropy benchmark from a seed"),
    "controlled-metrics": ("ual.evaluate.metrics.controlled", "controlled-benchmark metrics from a saved scores.jsonl and spec.json"),
    "stats": ("ual.figures.cli", "paired-bootstrap confidence intervals per method and UAL - SFT / UAL - LS differences"),
    "rm-eval": ("ual.evaluate.reward", "reward-model accuracy on preference pairs: pairwise, balanced, AUROC, margins"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ual", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module, _command=name)
    return parser


# import name -> pip name, where they differ (for the "needs the optional package" message)
PIP_NAMES = {"alpaca_eval": "alpaca-eval", "sklearn": "scikit-learn", "yaml": "pyyaml", "papermill": "papermill",
             "matplotlib": "matplotlib", "openai": "openai", "peft": "peft", "trl": "trl"}


def _missing_package(e: ImportError) -> str | None:
    """The top-level name of a missing third-party package, or None (a missing part of ual itself is a bug)."""
    name = (getattr(e, "name", None) or "").split(".")[0]
    if not isinstance(e, ModuleNotFoundError) or not name or name == "ual":
        return None
    return name


def _quiet_stdout() -> None:
    """The reader of our stdout went away (``| head``): point stdout at devnull so that Python's final flush does not
    raise again (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        _quiet_stdout()
        return 1  # as Python's docs do: the output was cut short, which is not success
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        pkg = _missing_package(e)
        if pkg is None:
            raise
        print(f"error: this command needs the optional package {pkg}: pip install {PIP_NAMES.get(pkg, pkg)}",
              file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: disk full: {where}{e.strerror or e}; free some space and rerun the same command to resume",
              file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Parse only the command first, then let its module define (and parse) the rest of the flags.
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv)
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"python -m ual {name}", description=COMMANDS[name][1])
    getattr(module, f"configure_{name.replace('-', '_')}")(sub)
    args = sub.parse_args(argv[1:])
    rc = int(getattr(module, f"run_{name.replace('-', '_')}")(args) or 0)
    sys.stdout.flush()  # here, not at exit: a reader gone away (| head) is then caught by main()
    return rc


if __name__ == "__main__":
    sys.exit(main())
