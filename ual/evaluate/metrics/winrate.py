"""AlpacaEval 2.0 win rates from pairwise annotations: the raw (weighted) win rate and the length-controlled one.

An annotation compares ``output_1`` (the reference, ``generator_1``) with ``output_2`` (the model under test,
``generator_2``) on one ``instruction``; ``preference`` is in [1, 2], 2 meaning output_2 wins, 1.5 a draw.
Conventions follow the alpaca_eval package: a legacy preference of 0 means a draw (1.5); a missing (None/NaN)
preference is dropped from the raw win rate (it neither wins nor loses) but, as in alpaca_eval, still gets a
length-controlled prediction.

Length-controlled (LC) win rate (Dubois et al. 2024, "length_controlled_v1"): per model, a logistic model

    P(output_2 wins on instruction i) = sigmoid(w_len * tanh(dlen_i / std(dlen)) + w_diff * difficulty_i + w_0)

with ``dlen = len(output_1) - len(output_2)`` in characters (std with ddof=1 over the model's rows), no separate
intercept, fitted to the soft preference by L1-penalised logistic regression whose strength is chosen by 5-fold
cross-validation. LC = mean over instructions of the prediction with the length term set to zero, x 100. The
offline methods here use stand-in files (see ``shared/data/README.md``): ``published`` takes a model's published
coefficients; ``refit`` fits them on the model's own annotations with given per-instruction difficulties, without
the library's regularisation towards its "gamed" verbose/concise baselines (their annotations are not public).
With the ``alpaca_eval`` package installed (and online), ``alpaca_eval`` calls the library itself.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ual.common.errors import InputError
from ual.evaluate.metrics.model_outputs import check_items
from ual.common.io import read_json, read_text

LC_METHODS = ("auto", "alpaca_eval", "published", "refit", "none")
# alpaca_eval's length_controlled_v1 settings: 5 cross-validation folds over LogisticRegressionCV's default grid
# of 10 inverse penalties from 1e-4 to 1e4.
LC_CV_FOLDS = 5
LC_C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 10))
# Column names of the published weights file (patsy formula terms in alpaca_eval).
_W_LENGTH, _W_DIFFICULTY, _W_INTERCEPT = ("np.tanh(std_delta_len)", "instruction_difficulty",
                                          "not_gamed_baseline.astype(float)")
ENV_ALPACA_EVAL_DIR = "UAL_ALPACA_EVAL_DIR"  # folder holding the offline LC stand-in csv files
WEIGHTS_FILE = "length_controlled_v1_weights.csv"
DIFFICULTY_FILE = "instruction_difficulty_estimated.csv"


# ----------------------------------------------------------------------------------------------- raw win rate

def clean_preference(p: Any) -> float | None:
    """A preference as a float in [1, 2] (legacy 0 -> 1.5 draw), None for missing (None/NaN).
    ValueError for anything else."""
    if p is None:
        return None
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise ValueError(f"preference must be a number in [1, 2] or null, got {p!r}")
    p = float(p)
    if math.isnan(p):
        return None
    if p == 0.0:
        return 1.5
    if not 1.0 <= p <= 2.0:
        raise ValueError(f"preference must be in [1, 2] (2 = output_2 wins), got {p}")
    return p


def win_rate(preferences: Iterable[Any]) -> dict:
    """AlpacaEval win rate of output_2 over output_1, in percent.

    ``preferences``: numbers in [1, 2] (0 = draw, None/NaN = missing and dropped). Returns ``win_rate`` = mean of
    (p - 1) x 100, ``standard_error`` = its standard error of the mean (ddof=1) x 100, ``n`` (preferences used),
    ``n_wins`` (p > 1.5), ``n_wins_base`` (p < 1.5), ``n_draws`` (p == 1.5) and ``n_missing``.
    """
    vals, n_missing = [], 0
    for p in preferences:
        c = clean_preference(p)
        if c is None:
            n_missing += 1
        else:
            vals.append(c - 1.0)
    x = np.asarray(vals, dtype=np.float64)
    n = len(x)
    return {
        "win_rate": float(x.mean() * 100) if n else float("nan"),
        "standard_error": float(x.std(ddof=1) / math.sqrt(n) * 100) if n > 1 else float("nan"),
        "n": n,
        "n_wins": int((x > 0.5).sum()),
        "n_wins_base": int((x < 0.5).sum()),
        "n_draws": int((x == 0.5).sum()),
        "n_missing": n_missing,
    }


# ----------------------------------------------------------------------------------------------- length control

def length_feature(len_1: Sequence[float], len_2: Sequence[float]) -> np.ndarray:
    """tanh of the standardised length difference, [N] float64: tanh((len_1 - len_2) / std(len_1 - len_2)),
    lengths in characters, std with ddof=1 (alpaca_eval's convention; positive = the reference is longer)."""
    d = np.asarray(len_1, dtype=np.float64) - np.asarray(len_2, dtype=np.float64)
    sd = d.std(ddof=1) if len(d) > 1 else 0.0
    if not sd > 0:  # all length differences equal: the feature carries no information
        return np.zeros_like(d)
    return np.tanh(d / sd)


def lc_from_coefficients(coefficients: dict, difficulties: Sequence[float]) -> float:
    """LC win rate in percent: mean_i sigmoid(intercept + difficulty * difficulties[i]) x 100 (length term 0).

    ``coefficients``: {"length", "difficulty", "intercept"}; ``difficulties``: [N] one per instruction."""
    from scipy.special import expit

    d = np.asarray(difficulties, dtype=np.float64)
    return float(expit(coefficients["intercept"] + coefficients["difficulty"] * d).mean() * 100)


def _l1_logistic(C: float):
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    # 'penalty' is deprecated from scikit-learn 1.8 on; before it, l1_ratio is ignored unless penalty is elasticnet.
    pen = {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}
    return LogisticRegression(C=C, solver="liblinear", fit_intercept=False, max_iter=1000, **pen)


def _soft_logloss(w: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    from scipy.special import log_expit

    z = X @ w
    return float(-(y * log_expit(z) + (1 - y) * log_expit(-z)).mean())


def fit_length_controlled(preferences: Sequence[float], length: Sequence[float], difficulties: Sequence[float], *,
                          c_grid: Sequence[float] = LC_C_GRID, n_folds: int = LC_CV_FOLDS) -> dict:
    """Fit the LC logistic model to soft preferences; returns {"length", "difficulty", "intercept", "C"}.

    ``preferences``: [N] in [0, 1] (p - 1, probability that output_2 wins; no missing values); ``length``: [N]
    the :func:`length_feature`; ``difficulties``: [N]. Soft labels are fitted as two weighted copies of each row
    (label 1 with weight p, label 0 with weight 1 - p). The L1 strength C is chosen from ``c_grid`` by the mean
    held-out soft log loss over ``n_folds`` contiguous folds of instructions (both copies of a row share a fold).
    """
    y = np.asarray(preferences, dtype=np.float64)
    X = np.column_stack([np.asarray(length, np.float64), np.asarray(difficulties, np.float64), np.ones(len(y))])
    if len(y) < 2 * n_folds:
        raise ValueError(f"need at least {2 * n_folds} annotated instructions to fit the LC model, got {len(y)}")

    def fit(rows: np.ndarray, C: float) -> np.ndarray:
        Xr, yr = X[rows], y[rows]
        model = _l1_logistic(C).fit(np.vstack([Xr, Xr]), np.r_[np.ones(len(rows)), np.zeros(len(rows))],
                                    sample_weight=np.r_[yr, 1 - yr])
        return model.coef_[0]

    folds = np.array_split(np.arange(len(y)), n_folds)
    losses = []
    for C in c_grid:
        loss = 0.0
        for k, test in enumerate(folds):
            train = np.concatenate([f for j, f in enumerate(folds) if j != k])
            loss += _soft_logloss(fit(train, C), X[test], y[test])
        losses.append(loss / n_folds)
    best = float(c_grid[int(np.argmin(losses))])
    w = fit(np.arange(len(y)), best)
    return {"length": float(w[0]), "difficulty": float(w[1]), "intercept": float(w[2]), "C": best}


def read_lc_weights(path: str | Path) -> dict[str, dict]:
    """Published LC coefficients per model from a length_controlled_v1 weights csv:
    {model: {"length", "difficulty", "intercept"}}."""
    path = Path(path)
    out = {}
    reader = _csv_reader(path)
    first = reader.fieldnames[0] if reader.fieldnames else None
    for col in (_W_LENGTH, _W_DIFFICULTY, _W_INTERCEPT):
        if col not in (reader.fieldnames or []):
            raise InputError(path, 1, col, "column is missing")
    for row in _csv_rows(path, reader):
        try:
            out[row[first]] = {"length": float(row[_W_LENGTH]), "difficulty": float(row[_W_DIFFICULTY]),
                               "intercept": float(row[_W_INTERCEPT])}
        except (TypeError, ValueError) as e:
            raise InputError(path, reader.line_num, None, f"not a number ({e})") from None
    return out


def _csv_reader(path: Path) -> csv.DictReader:
    """A csv reader over a user file read through the guarded path (:func:`ual.common.io.read_text`)."""
    import io

    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        reader.fieldnames
    except csv.Error as e:
        raise InputError(path, reader.line_num or 1, None, f"invalid csv ({e})") from None
    return reader


def _csv_rows(path: Path, reader: csv.DictReader):
    try:
        yield from reader
    except csv.Error as e:
        raise InputError(path, reader.line_num, None, f"invalid csv ({e})") from None


def read_difficulties(path: str | Path) -> dict[str, float]:
    """Per-instruction difficulty from a csv with columns ``instruction`` and ``instruction_difficulty``."""
    path = Path(path)
    out: dict[str, float] = {}
    reader = _csv_reader(path)
    for col in ("instruction", "instruction_difficulty"):
        if col not in (reader.fieldnames or []):
            raise InputError(path, 1, col, "column is missing")
    for row in _csv_rows(path, reader):
        try:
            out[row["instruction"]] = float(row["instruction_difficulty"])
        except (TypeError, ValueError):
            raise InputError(path, reader.line_num, "instruction_difficulty", "not a number") from None
    return out


def _default_file(name: str) -> Path | None:
    """Where an offline stand-in file is looked for when no path is given: ``$UAL_ALPACA_EVAL_DIR``, then
    ``alpaca_eval/`` under the data root (``data/`` of the repository or package, or ``$UAL_DATA_DIR``)."""
    from ual.common.paths import resolve_data_path

    env = os.environ.get(ENV_ALPACA_EVAL_DIR)
    if env and (Path(env) / name).is_file():
        return Path(env) / name
    return resolve_data_path(Path("alpaca_eval") / name)


def _alpaca_eval_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("alpaca_eval") is not None


def length_controlled_win_rate(annotations: Sequence[dict], *, method: str = "auto",
                               weights_path: str | Path | None = None,
                               difficulty_path: str | Path | None = None, source: str | Path | None = None) -> dict:
    """LC win rate (percent) of ``generator_2`` over ``generator_1`` from validated annotations.

    ``method``: ``alpaca_eval`` (the library's own GLM; needs the package and its hub files), ``published`` (the
    model's row in the weights csv, with per-instruction difficulties), ``refit`` (fit the coefficients on these
    annotations with the difficulties), ``none``, or ``auto`` = alpaca_eval if importable, else published if the
    model is listed in the weights file, else refit if a difficulty file is available, else none. Files default to
    ``$UAL_ALPACA_EVAL_DIR/{length_controlled_v1_weights,instruction_difficulty_estimated}.csv``.
    Returns {"length_controlled_winrate" (None when not computed), "lc_method", "lc_coefficients", "lc_note"}.
    """
    if method not in LC_METHODS:
        raise ValueError(f"unknown LC method {method!r}; one of {', '.join(LC_METHODS)}")
    weights_path = weights_path or _default_file(WEIGHTS_FILE)
    difficulty_path = difficulty_path or _default_file(DIFFICULTY_FILE)
    model = annotations[0]["generator_2"]
    if method == "auto":
        if _alpaca_eval_available():
            method = "alpaca_eval"
        elif weights_path and difficulty_path and model in read_lc_weights(weights_path):
            method = "published"
        elif difficulty_path:
            method = "refit"
        else:
            method = "none"
    out: dict[str, Any] = {"length_controlled_winrate": None, "lc_method": method, "lc_coefficients": None,
                           "lc_note": None}
    if method == "none":
        out["lc_note"] = (f"no LC: alpaca_eval is not installed and no difficulty file was given "
                          f"(--lc-difficulty or ${ENV_ALPACA_EVAL_DIR})")
        return out
    if method == "alpaca_eval":
        if not _alpaca_eval_available():
            raise InputError(None, None, "lc", "the method 'alpaca_eval' needs the optional package alpaca_eval "
                             "(pip install alpaca-eval); or use --lc published, refit or none")
        import pandas as pd
        from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

        res = get_length_controlled_winrate(pd.DataFrame(list(annotations)), save_weights_dir=None)
        out["length_controlled_winrate"] = float(res["length_controlled_winrate"])
        return out
    if difficulty_path is None:
        raise InputError(None, None, "lc_difficulty", f"LC method {method!r} needs a per-instruction difficulty csv")
    diff = read_difficulties(difficulty_path)
    missing = [i for i, a in enumerate(annotations) if a["instruction"] not in diff]
    if missing:
        raise InputError(source, missing[0] + 1, "instruction",
                         f"{len(missing)} instructions have no difficulty in {difficulty_path} "
                         f"(first: {annotations[missing[0]]['instruction'][:60]!r})")
    d = np.array([diff[a["instruction"]] for a in annotations])
    if method == "published":
        if weights_path is None:
            raise InputError(None, None, "lc_weights", "LC method 'published' needs a weights csv")
        weights = read_lc_weights(weights_path)
        if model not in weights:
            raise InputError(weights_path, None, "generator_2", f"model {model!r} has no published LC coefficients")
        coef = dict(weights[model])
    else:
        length = length_feature([len(a["output_1"]) for a in annotations], [len(a["output_2"]) for a in annotations])
        prefs = [clean_preference(a["preference"]) for a in annotations]
        keep = np.array([p is not None for p in prefs])
        y = np.array([p - 1 for p in prefs if p is not None])
        coef = fit_length_controlled(y, length[keep], d[keep])
    # As in alpaca_eval, every annotated instruction is predicted, including those whose preference is missing.
    out["length_controlled_winrate"] = lc_from_coefficients(coef, d)
    out["lc_coefficients"] = coef
    return out


# ----------------------------------------------------------------------------------------------- annotation files

ANNOTATION_FIELDS = ("instruction", "output_1", "output_2", "generator_1", "generator_2", "preference")


def validate_annotations(rows: Any, source: str | Path | None = None) -> list[dict]:
    """Check AlpacaEval annotations (a list of dicts with :data:`ANNOTATION_FIELDS`, one model against one
    reference, each instruction once); returns them. :class:`InputError` naming the item (1-based) and field."""
    check_items(rows, source, what="annotation", string_fields=[f for f in ANNOTATION_FIELDS if f != "preference"])
    for i, a in enumerate(rows, start=1):
        if "preference" not in a:
            raise InputError(source, i, "preference", f"annotation {i}: is missing")
        try:
            clean_preference(a["preference"])
        except ValueError as e:
            raise InputError(source, i, "preference", f"annotation {i}: {e}") from None
        for f in ("generator_1", "generator_2"):
            if a[f] != rows[0][f]:
                raise InputError(source, i, f, f"annotation {i}: {a[f]!r} differs from {rows[0][f]!r}; one model "
                                 "against one reference per file")
    return rows


def check_against_reference(annotations: Sequence[dict], reference: Sequence[dict], *,
                            source: str | Path | None = None, reference_source: str | Path | None = None,
                            allow_missing: bool = False) -> int:
    """Check that annotations line up with reference outputs (AlpacaEval ``model_outputs.json``): every annotated
    instruction is in the reference with ``output_1`` equal to its output, and (unless ``allow_missing``) every
    reference instruction is annotated. Returns the number of reference instructions without an annotation."""
    ref = {}
    for j, r in enumerate(reference, start=1):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
            raise InputError(reference_source, j, "instruction", f"item {j}: needs string instruction and output")
        ref[r["instruction"]] = r["output"]
    for i, a in enumerate(annotations, start=1):
        if a["instruction"] not in ref:
            raise InputError(source, i, "instruction", f"annotation {i}: instruction not in the reference outputs")
        if a["output_1"] != ref[a["instruction"]]:
            raise InputError(source, i, "output_1", f"annotation {i}: differs from the reference output")
    missing = len(set(ref) - {a["instruction"] for a in annotations})
    if missing and not allow_missing:
        raise InputError(source, None, "instruction", f"{missing} of {len(ref)} reference instructions are not "
                         "annotated (the LC win rate needs them aligned; pass --allow-missing to accept)")
    return missing


def evaluate_annotations(annotations: Sequence[dict], *, lc_method: str = "auto", weights_path=None,
                         difficulty_path=None, source=None) -> dict:
    """Raw and length-controlled win rate of one annotation list (see :func:`win_rate`,
    :func:`length_controlled_win_rate`); percent."""
    annotations = validate_annotations(list(annotations), source)
    out = {"generator": annotations[0]["generator_2"], "reference": annotations[0]["generator_1"]}
    out.update(win_rate(a["preference"] for a in annotations))
    out.update(length_controlled_win_rate(annotations, method=lc_method, weights_path=weights_path,
                                          difficulty_path=difficulty_path, source=source))
    out["avg_length"] = float(np.mean([len(a["output_2"]) for a in annotations]))
    return out


def judge_agreement(annotations: Sequence[dict], other: Sequence[dict]) -> dict:
    """How far one judge's verdicts agree with another's (e.g. a local judge against the published GPT-4-Turbo
    annotations) on the instructions both judged with a defined preference.

    Both arguments are validated annotation lists of the same generator pair. Returns ``{"n", "winner_agreement"
    (share 0-1 of decided pairs where both judges pick the same winner; a preference of exactly 1.5 is undecided
    and left out), "n_decided", "pearson", "spearman" (of the preferences), "win_rate", "win_rate_other" (percent,
    on the common instructions)}``; correlations are NaN when either side is constant.
    """
    from scipy.stats import pearsonr, spearmanr

    mine = {a["instruction"]: clean_preference(a["preference"]) for a in annotations}
    theirs = {a["instruction"]: clean_preference(a["preference"]) for a in other}
    common = [i for i in mine if i in theirs and mine[i] is not None and theirs[i] is not None]
    x = np.array([mine[i] for i in common], dtype=np.float64)
    y = np.array([theirs[i] for i in common], dtype=np.float64)
    decided = (x != 1.5) & (y != 1.5)
    varied = len(common) > 1 and x.std() > 0 and y.std() > 0
    return {"n": len(common), "n_decided": int(decided.sum()),
            "winner_agreement": float(((x > 1.5) == (y > 1.5))[decided].mean()) if decided.any() else math.nan,
            "pearson": float(pearsonr(x, y).statistic) if varied else math.nan,
            "spearman": float(spearmanr(x, y).statistic) if varied else math.nan,
            "win_rate": float((x - 1).mean() * 100) if common else math.nan,
            "win_rate_other": float((y - 1).mean() * 100) if common else math.nan}


# ----------------------------------------------------------------------------------------------- CLI

def configure_winrate(p) -> None:
    p.add_argument("--annotations", required=True, help="AlpacaEval annotations JSON (list of pairwise verdicts)")
    p.add_argument("--reference-outputs", help="reference model_outputs.json the annotations must line up with")
    p.add_argument("--allow-missing", action="store_true", help="accept reference instructions without annotation")
    p.add_argument("--lc", default="auto", choices=LC_METHODS, help="length-controlled method (default: auto)")
    p.add_argument("--lc-weights", help=f"published LC coefficients csv (default ${ENV_ALPACA_EVAL_DIR}/{WEIGHTS_FILE})")
    p.add_argument("--lc-difficulty", help="per-instruction difficulty csv "
                   f"(default ${ENV_ALPACA_EVAL_DIR}/{DIFFICULTY_FILE})")
    p.add_argument("--agree-with", help="another judge's annotations of the same outputs (e.g. the published "
                   "GPT-4-Turbo ones): report how far the two judges agree")


def run_winrate(args) -> int:
    annotations = validate_annotations(read_json(args.annotations), args.annotations)
    missing = None
    if args.reference_outputs:
        missing = check_against_reference(annotations, read_json(args.reference_outputs), source=args.annotations,
                                          reference_source=args.reference_outputs, allow_missing=args.allow_missing)
    out = evaluate_annotations(annotations, lc_method=args.lc, weights_path=args.lc_weights,
                               difficulty_path=args.lc_difficulty, source=args.annotations)
    if missing is not None:
        out["n_reference_missing"] = missing
    if args.agree_with:
        other = validate_annotations(read_json(args.agree_with), args.agree_with)
        out["agreement"] = judge_agreement(annotations, other)
    print(json.dumps(out, indent=2))
    return 0
