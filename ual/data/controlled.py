"""Generator of the controlled mixed-entropy benchmark: true answer distributions known by construction.

Design: docs/controlled-benchmark.md. Everything is generated from a seed; nothing is downloaded.

Two families:

- **low** (``source="controlled-low"``, ``category="math"``): templated 1-3 step arithmetic word problems with small
  numbers; the response is a short worked solution, one line per step, ending in ``#### N``; ``answer = "N"``.
  One correct answer: the true distribution puts all its mass on it.
- **high** (``source="controlled-high"``, ``category=<name>``): open prompts ("Name a fruit.") with a finite valid
  set of answers (:data:`CATEGORIES`, 10 closed sets of 4-8 answers) and a known true distribution over it, uniform
  or Zipf (``p_i`` proportional to ``1 / rank_i ** ZIPF_EXPONENT``, ranks a seeded permutation of the items so the
  favourite is not a pretrained model's favourite). Every training response is ONE draw from it.

Prompt templates are split: training prompts use only ``train`` templates, evaluation prompts only ``heldout``
ones, so evaluation measures the family's behaviour under new phrasing, not recall of seen prompts.

The model side lives in :mod:`ual.evaluate.controlled` (scores every eval item) and the metrics, pure functions of
saved files, in :mod:`ual.evaluate.metrics.controlled`.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from scipy.stats import entropy as _scipy_entropy

from ual.common.errors import InputError
from ual.common.io import atomic_write_json, read_json
from ual.data.records import Record, load_records, save_records

BENCHMARK_VERSION = 2  # bump when templates, categories or response formats change (2: closed answer sets of 4-8,
# Zipf exponent 1.5, a fourth held-out open-prompt template, training draw counts in the spec)
LOW_SOURCE = "controlled-low"
HIGH_SOURCE = "controlled-high"
LOW_CATEGORY = "math"
DISTRIBUTIONS = ("zipf", "uniform")
ZIPF_EXPONENT = 1.5  # our choice (version 2; 1.0 in version 1): with 4-8 answers, exponent 1 is close to uniform
# (KL to uniform 0.14-0.26 nats); 1.5 keeps every answer plausible (mode 0.45-0.6) and puts the uniform distribution
# 0.3-0.6 nats from the truth, well above what a dozen training draws per category reach
SAMPLE_KL_ALPHA = 0.5  # add-alpha smoothing of sampled answer counts (Jeffreys prior)
NORMALISATION = ("lowercase; strip surrounding whitespace, quotes and trailing . ! , ; :; collapse inner "
                 "whitespace; a sample is valid when the result equals a valid answer normalised the same way")

# ----------------------------------------------------------------------------------------------- high family

# Closed answer sets (version 2): every correct answer to the prompt is in the set, so validity is exact, and each
# set is small (4-8 answers) so that a few hundred training draws can teach the true distribution (the first study's
# 21-30-answer sets with 16 draws each could not be learnt: docs/controlled-benchmark.md, "Lessons").
CATEGORIES: dict[str, dict[str, Any]] = {
    "planet": {"phrase": "a planet of the solar system", "items": [
        "Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]},
    "weekday": {"phrase": "a day of the week", "items": [
        "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]},
    "continent": {"phrase": "a continent", "items": [
        "Africa", "Antarctica", "Asia", "Australia", "Europe", "North America", "South America"]},
    "rainbow": {"phrase": "a colour of the rainbow", "items": [
        "Red", "Orange", "Yellow", "Green", "Blue", "Indigo", "Violet"]},
    "die": {"phrase": "a number from 1 to 6", "items": ["1", "2", "3", "4", "5", "6"]},
    "chess": {"phrase": "a chess piece", "items": ["King", "Queen", "Rook", "Bishop", "Knight", "Pawn"]},
    "ocean": {"phrase": "an ocean", "items": ["Pacific", "Atlantic", "Indian", "Southern", "Arctic"]},
    "vowel": {"phrase": "a vowel of the English alphabet", "items": ["A", "E", "I", "O", "U"]},
    "suit": {"phrase": "a suit in a deck of playing cards", "items": ["Hearts", "Diamonds", "Clubs", "Spades"]},
    "direction": {"phrase": "a compass direction", "items": ["North", "East", "South", "West"]},
}

# "{x}" is the category's phrase ("a fruit"). Held-out frames never occur in training prompts.
HIGH_TEMPLATES = {
    "train": ["Name {x}.", "Give me {x}.", "Tell me {x}.", "Can you think of {x}?", "Say {x}, just one.",
              "I need {x}. Any idea?", "Please suggest {x}."],
    "heldout": ["Choose {x} for me.", "Come up with {x}.", "What is {x}? One answer, please.", "Pick {x}."],
}

# ----------------------------------------------------------------------------------------------- low family

# Each template: the problem with slots {name}, {item} (plural noun) and numbers {a} {b} {c} {d}; ``ops`` apply
# left to right: start at a, then ops[0] with b, ops[1] with c, ops[2] with d.
LOW_TEMPLATES = {
    "train": [
        {"id": "L1", "ops": "+", "text": "{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} "
                                         "have now?"},
        {"id": "L2", "ops": "-", "text": "{name} had {a} {item} and gave {b} to a friend. How many {item} are "
                                         "left?"},
        {"id": "L3", "ops": "*", "text": "There are {a} boxes with {b} {item} in each box. How many {item} are "
                                         "there in total?"},
        {"id": "L4", "ops": "+-", "text": "{name} has {a} {item}, buys {b} more, then loses {c}. How many {item} "
                                          "does {name} have?"},
        {"id": "L5", "ops": "-+", "text": "A shelf holds {a} {item}. {b} are taken away and {c} are added. How "
                                          "many {item} are on the shelf?"},
        {"id": "L6", "ops": "*+", "text": "{name} buys {a} packs of {b} {item} and finds {c} more. How many "
                                          "{item} does {name} have?"},
        {"id": "L7", "ops": "*-", "text": "{name} makes {a} rows of {b} {item}, then removes {c}. How many "
                                          "{item} remain?"},
        {"id": "L8", "ops": "++-", "text": "{name} collects {a} {item} on Monday, {b} on Tuesday and {c} on "
                                           "Wednesday, then gives {d} away. How many {item} are left?"},
        {"id": "L9", "ops": "+*", "text": "{name} has {a} red bags and {b} blue bags. Each bag holds {c} {item}. "
                                          "How many {item} are there?"},
    ],
    "heldout": [
        {"id": "H1", "ops": "+-", "text": "At first there are {a} {item} in a jar. {name} puts in {b} and later "
                                          "takes out {c}. How many {item} are in the jar now?"},
        {"id": "H2", "ops": "*", "text": "{name} has {a} bags and each bag contains {b} {item}. How many {item} "
                                         "does {name} have altogether?"},
        {"id": "H3", "ops": "+", "text": "{name} found {a} {item} in the morning and {b} in the afternoon. How "
                                         "many {item} did {name} find?"},
        {"id": "H4", "ops": "++-", "text": "A class has {a} {item}. The teacher brings {b}, a student brings {c}, "
                                           "and then {d} get lost. How many {item} does the class have now?"},
    ],
}
NAMES = ["Ana", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemi", "Leo", "Mia",
         "Noah", "Olga", "Pablo", "Rosa", "Sam", "Tara", "Yusuf"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "stamps", "shells", "coins"]
_SLOTS = "abcd"


def _low_problem(tpl: dict, rng: random.Random) -> tuple[str, str, int]:
    """(problem text, worked solution ending in '#### N', N) for one draw of names and small numbers."""
    ops = tpl["ops"]
    start = rng.randint(2, 6) if ops[0] == "*" else rng.randint(5, 20)
    values = {"a": start}
    lines, cur = [], start
    for k, op in enumerate(ops):
        if op == "+":
            v = rng.randint(1, 10)
            nxt = cur + v
        elif op == "-":
            v = rng.randint(1, min(10, cur - 1))  # keep at least one left
            nxt = cur - v
        else:
            v = rng.randint(2, 9) if k == 0 else rng.randint(2, 6)
            nxt = cur * v
        values[_SLOTS[k + 1]] = v
        lines.append(f"{cur} {op} {v} = {nxt}")
        cur = nxt
    text = tpl["text"].format(name=rng.choice(NAMES), item=rng.choice(ITEMS), **values)
    return text, "\n".join(lines) + f"\n#### {cur}", cur


# ----------------------------------------------------------------------------------------------- distributions

def true_distribution(category: str, distribution: str, seed: int) -> list[float]:
    """True probabilities over ``CATEGORIES[category]["items"]`` (in that order), summing to 1."""
    items = CATEGORIES[category]["items"]
    if distribution == "uniform":
        return [1.0 / len(items)] * len(items)
    if distribution != "zipf":
        raise InputError(None, None, "distribution", f"must be one of {DISTRIBUTIONS}, got {distribution!r}")
    ranks = list(range(1, len(items) + 1))
    random.Random(f"{seed}-rank-{category}").shuffle(ranks)
    w = [rank ** -ZIPF_EXPONENT for rank in ranks]
    z = sum(w)
    return [x / z for x in w]


def entropy(p: Sequence[float]) -> float:
    """Shannon entropy in nats (0 log 0 = 0)."""
    return float(_scipy_entropy(p)) if len(p) else 0.0


def normalise_answer(text: str) -> str:
    """Canonical form of a short answer for validity checks (rule in :data:`NORMALISATION`)."""
    s = " ".join(text.split()).lower()
    s = s.strip(" \"'`*")
    s = s.rstrip(".!,;:").strip(" \"'`*")
    return s


# ----------------------------------------------------------------------------------------------- dataset

def make_dataset(n_train_low: int, n_train_high: int, n_eval_low: int, n_eval_high: int, *, seed: int = 1337,
                 distribution: str = "zipf") -> tuple[list[Record], list[Record], dict]:
    """Generate ``(train_records, eval_records, spec)``.

    Train records (shuffled, both families) use the ``train`` templates; eval records use the ``heldout`` ones.
    High-entropy eval prompts are distinct (category, held-out template) pairs, spread over categories, so
    ``n_eval_high`` is at most ``len(CATEGORIES) * len(HIGH_TEMPLATES["heldout"])`` (40). Each part draws from
    its own seeded stream, so e.g. changing ``n_train_low`` does not change the eval set. ``spec`` (JSON) holds
    each category's valid set, true probabilities and entropy, the templates, how often each answer was drawn for
    training (``train_answer_counts``, for the reference lines of :mod:`ual.evaluate.metrics.controlled`), and every
    eval item's family, category and template.
    """
    if distribution not in DISTRIBUTIONS:
        raise InputError(None, None, "distribution", f"must be one of {DISTRIBUTIONS}, got {distribution!r}")
    for name, v in (("n_train_low", n_train_low), ("n_train_high", n_train_high), ("n_eval_low", n_eval_low),
                    ("n_eval_high", n_eval_high)):
        if not isinstance(v, int) or v < 0:
            raise InputError(None, None, name, f"must be a non-negative integer, got {v!r}")
    cats = list(CATEGORIES)
    max_high = len(cats) * len(HIGH_TEMPLATES["heldout"])
    if n_eval_high > max_high:
        raise InputError(None, None, "n_eval_high", f"at most {max_high} distinct held-out prompts exist, "
                         f"got {n_eval_high}")
    probs = {c: true_distribution(c, distribution, seed) for c in cats}
    train_low = _train_low(n_train_low, seed)
    train_high, train_counts = _train_high(n_train_high, probs, seed)
    train = train_low + train_high
    random.Random(f"{seed}-train-order").shuffle(train)
    eval_low, items_low = _eval_low(n_eval_low, seed)
    eval_high, items_high = _eval_high(n_eval_high, probs, seed)
    spec = {
        "benchmark": "ual-controlled", "version": BENCHMARK_VERSION, "seed": seed, "distribution": distribution,
        "zipf_exponent": ZIPF_EXPONENT if distribution == "zipf" else None,
        "counts": {"n_train_low": n_train_low, "n_train_high": n_train_high, "n_eval_low": n_eval_low,
                   "n_eval_high": n_eval_high},
        "categories": {c: {"phrase": CATEGORIES[c]["phrase"], "items": list(CATEGORIES[c]["items"]),
                           "probs": probs[c], "entropy_nats": entropy(probs[c])} for c in cats},
        "high_templates": {k: list(v) for k, v in HIGH_TEMPLATES.items()},
        "low_templates": {k: [dict(t) for t in v] for k, v in LOW_TEMPLATES.items()},
        "train_answer_counts": train_counts,
        "answer_normalisation": NORMALISATION,
        "sample_kl_alpha": SAMPLE_KL_ALPHA,
        "eval_items": {**items_low, **items_high},
    }
    return train, eval_low + eval_high, spec


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _train_low(n: int, seed: int) -> list[Record]:
    """``n`` arithmetic training items on the train templates (their own seeded stream)."""
    rng = random.Random(f"{seed}-train-low")
    out = []
    for i in range(n):
        tpl = rng.choice(LOW_TEMPLATES["train"])
        q, sol, ans = _low_problem(tpl, rng)
        out.append(Record(f"ctl-train-low-{i:05d}", LOW_SOURCE, [_user(q), _assistant(sol)], str(ans), LOW_CATEGORY))
    return out


def _train_high(n: int, probs: dict[str, list[float]], seed: int) -> tuple[list[Record], dict[str, list[int]]]:
    """``n`` open-prompt training items, categories balanced, each answer one draw from the category's true
    distribution; and how often each answer was drawn."""
    cats = list(CATEGORIES)
    rng = random.Random(f"{seed}-train-high")
    order = [cats[i % len(cats)] for i in range(n)]
    rng.shuffle(order)
    counts = {c: [0] * len(CATEGORIES[c]["items"]) for c in cats}
    out = []
    for i, cat in enumerate(order):
        tpl = rng.choice(HIGH_TEMPLATES["train"])
        item = rng.choices(CATEGORIES[cat]["items"], weights=probs[cat])[0]
        counts[cat][CATEGORIES[cat]["items"].index(item)] += 1
        out.append(Record(f"ctl-train-high-{i:05d}", HIGH_SOURCE,
                          [_user(tpl.format(x=CATEGORIES[cat]["phrase"])), _assistant(item)], None, cat))
    return out, counts


def _eval_low(n: int, seed: int) -> tuple[list[Record], dict[str, dict]]:
    """``n`` distinct arithmetic problems on the held-out templates (cycled), with their spec entries."""
    rng = random.Random(f"{seed}-eval-low")
    seen: set[str] = set()
    out, items = [], {}
    i = 0
    while i < n:
        tpl = LOW_TEMPLATES["heldout"][i % len(LOW_TEMPLATES["heldout"])]
        q, sol, ans = _low_problem(tpl, rng)
        if q in seen:  # distinct eval problems; the space is far larger than any eval set
            continue
        seen.add(q)
        rid = f"ctl-eval-low-{i:05d}"
        out.append(Record(rid, LOW_SOURCE, [_user(q), _assistant(sol)], str(ans), LOW_CATEGORY))
        items[rid] = {"family": "low", "category": LOW_CATEGORY, "template": tpl["id"]}
        i += 1
    return out, items


def _eval_high(n: int, probs: dict[str, list[float]], seed: int) -> tuple[list[Record], dict[str, dict]]:
    """``n`` distinct (held-out template, category) open prompts, templates outer so categories spread."""
    cats = list(CATEGORIES)
    rng = random.Random(f"{seed}-eval-high")
    shuffled = cats[:]
    rng.shuffle(shuffled)
    combos = [(t, c) for t in range(len(HIGH_TEMPLATES["heldout"])) for c in shuffled]
    out, items = [], {}
    for i, (t, cat) in enumerate(combos[:n]):
        tpl = HIGH_TEMPLATES["heldout"][t]
        rid = f"ctl-eval-high-{i:05d}"
        # The reference response of an eval item is one draw too, so eval files have the same shape as training
        # files (metrics never use it: they score the whole valid set).
        item = rng.choices(CATEGORIES[cat]["items"], weights=probs[cat])[0]
        out.append(Record(rid, HIGH_SOURCE, [_user(tpl.format(x=CATEGORIES[cat]["phrase"])), _assistant(item)],
                          None, cat))
        items[rid] = {"family": "high", "category": cat, "template": tpl}
    return out, items


def save_dataset(directory: str | Path, train: Sequence[Record], evals: Sequence[Record], spec: dict) -> Path:
    """Write ``train.jsonl``, ``eval.jsonl`` (canonical records) and ``spec.json`` into ``directory``, each
    atomically. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_records(directory / "train.jsonl", train)
    save_records(directory / "eval.jsonl", evals)
    atomic_write_json(directory / "spec.json", spec)
    return directory


def load_dataset(directory: str | Path) -> tuple[list[Record], list[Record], dict]:
    """Read back what :func:`save_dataset` wrote."""
    directory = Path(directory)
    return (load_records(directory / "train.jsonl"), load_records(directory / "eval.jsonl"),
            read_json(directory / "spec.json"))


def family(rec: Record, spec: dict, path=None, line=None) -> str:
    """"low" or "high": the benchmark family of a record (checked against the spec's categories)."""
    if rec.source == LOW_SOURCE:
        return "low"
    if rec.source == HIGH_SOURCE:
        if rec.category not in spec["categories"]:
            raise InputError(path, line, "category", f"{rec.category!r} is not a category of the spec")
        return "high"
    raise InputError(path, line, "source", f"expected {LOW_SOURCE!r} or {HIGH_SOURCE!r}, got {rec.source!r}")
