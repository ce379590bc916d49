"""``python -m ual validate`` (check a data file and its scores) and ``python -m ual controlled-data``."""
from __future__ import annotations

from ual.data.controlled import DISTRIBUTIONS, make_dataset, save_dataset
from ual.data.records import FORMATS, load_file, load_scores


def configure_validate(p) -> None:
    p.add_argument("--data", required=True, help="data file (.jsonl or .json) in any supported format")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--scores", help="scores file to check against the data")
    p.add_argument("--score-range", nargs=2, type=float, default=(0, 99), metavar=("LO", "HI"))


def run_validate(args) -> int:
    recs = load_file(args.data, fmt=args.format)
    msg = f"{args.data}: {len(recs)} valid records"
    if args.scores:
        scores = load_scores(args.scores, recs, score_range=tuple(args.score_range))
        msg += f"; {args.scores}: {len(scores)} valid scores"
    print(msg)
    return 0


def configure_controlled_data(p) -> None:
    p.add_argument("--out", required=True, help="folder for train.jsonl, eval.jsonl, spec.json")
    p.add_argument("--n-train-low", type=int, default=600)
    p.add_argument("--n-train-high", type=int, default=600)
    p.add_argument("--n-eval-low", type=int, default=100)
    p.add_argument("--n-eval-high", type=int, default=30)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--distribution", choices=DISTRIBUTIONS, default="zipf")


def run_controlled_data(args) -> int:
    train, evals, spec = make_dataset(args.n_train_low, args.n_train_high, args.n_eval_low, args.n_eval_high,
                                      seed=args.seed, distribution=args.distribution)
    save_dataset(args.out, train, evals, spec)
    print(f"wrote {len(train)} train and {len(evals)} eval records and spec.json to {args.out}")
    return 0
