"""A controlled mixed-entropy benchmark whose true answer distributions are known by construction.

Design: docs/controlled-benchmark.md. Everything is generated from a seed; nothing is downloaded.

Two families:

- **low** (``source="controlled-low"``, ``category="math"``): templated 1-3 step arithmetic word problems with small
  numbers; the response is a short worked solution, one line per step, ending in ``#### N``; ``answer = "N"``.
  One correct answer: the true distribution puts all its mass on it.
- **high** (``source="controlled-high"``, ``category=<name>``): open prompts ("Name a fruit.") with a finite valid
  set of answers (:data:`CATEGORIES`, 10 categories of 21-30 items) and a known true distribution over it, uniform
  or Zipf (``p_i`` proportional to ``1 / rank_i ** ZIPF_EXPONENT``, ranks a seeded permutation of the items so the
  favourite is not a pretrained model's favourite). Every training response is ONE draw from it.

Prompt templates are split: training prompts use only ``train`` templates, evaluation prompts only ``heldout``
ones, so evaluation measures the family's behaviour under new phrasing, not recall of seen prompts.

Metrics (:func:`controlled_metrics`, pure, from saved score rows; :func:`score_controlled` writes those rows):

- low: greedy exact-match accuracy (percent; answer protocols ``strict`` and ``flexible`` of
  :mod:`ual.evaluate.answers`), gold-solution and gold-answer NLL per token (nats), ECE of the confidence in the
  greedy answer (:func:`ual.evaluate.likelihood.answer_confidence`; an output with no extractable answer counts
  as confidence 0 and wrong).
- high, exact: every valid answer scored as the response (``log p(answer + end-of-turn)``): validity mass (sum of
  their probabilities; only the canonical spelling of each answer is counted, so it is a lower bound on the mass
  of valid answers), the model's distribution renormalised over the valid set, KL(true || model) and its entropy
  against the true entropy (nats).
- high, sampled: K samples at temperature 1: validity rate (percent of samples that, normalised, are a valid
  answer), coverage (percent of the valid set hit by at least one sample), and the KL of the true distribution to
  the samples' distribution with add-``SAMPLE_KL_ALPHA`` smoothing over the valid set (our choice: the Jeffreys
  prior, which keeps the KL finite when an answer is never sampled), per prompt and pooled over the prompts of a
  category; undefined for a prompt (category) without any valid sample.

Nothing here knows which training method produced the model, so any outcome can show.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

from ual.data import Record, load_records, save_records
from ual.errors import InputError
from ual.io import JsonlAppender, atomic_write_json, iter_jsonl, read_json

BENCHMARK_VERSION = 1  # bump when templates, categories or response formats change
LOW_SOURCE = "controlled-low"
HIGH_SOURCE = "controlled-high"
LOW_CATEGORY = "math"
DISTRIBUTIONS = ("zipf", "uniform")
ZIPF_EXPONENT = 1.0  # our choice: classic Zipf; makes the true distribution skewed but every answer plausible
SAMPLE_KL_ALPHA = 0.5  # add-alpha smoothing of sampled answer counts (Jeffreys prior)
NORMALISATION = ("lowercase; strip surrounding whitespace, quotes and trailing . ! , ; :; collapse inner "
                 "whitespace; a sample is valid when the result equals a valid answer normalised the same way")

# ----------------------------------------------------------------------------------------------- high family

CATEGORIES: dict[str, dict[str, Any]] = {
    "fruit": {"phrase": "a fruit", "items": [
        "Apple", "Banana", "Cherry", "Grape", "Mango", "Orange", "Pear", "Peach", "Plum", "Kiwi", "Lemon", "Lime",
        "Melon", "Papaya", "Pineapple", "Apricot", "Fig", "Guava", "Lychee", "Raspberry", "Strawberry",
        "Blueberry", "Blackberry", "Coconut", "Pomegranate", "Nectarine", "Watermelon", "Date", "Cranberry",
        "Tangerine"]},
    "colour": {"phrase": "a colour", "items": [
        "Red", "Blue", "Green", "Yellow", "Orange", "Purple", "Pink", "Brown", "Black", "White", "Grey", "Violet",
        "Indigo", "Turquoise", "Teal", "Maroon", "Navy", "Beige", "Gold", "Silver", "Cyan", "Magenta", "Lavender",
        "Crimson", "Olive", "Amber", "Coral", "Ivory", "Scarlet", "Emerald"]},
    "sea_animal": {"phrase": "an animal that lives in the sea", "items": [
        "Dolphin", "Whale", "Shark", "Octopus", "Squid", "Jellyfish", "Starfish", "Seal", "Sea otter", "Crab",
        "Lobster", "Shrimp", "Seahorse", "Sea turtle", "Manta ray", "Eel", "Clownfish", "Tuna", "Swordfish",
        "Walrus", "Orca", "Sea urchin", "Oyster", "Clam", "Barracuda", "Narwhal", "Stingray", "Pufferfish",
        "Anglerfish", "Cod"]},
    "number": {"phrase": "a number between 10 and 30", "items": [str(i) for i in range(10, 31)]},
    "dog_name": {"phrase": "a name for a dog", "items": [
        "Max", "Bella", "Charlie", "Luna", "Buddy", "Daisy", "Rocky", "Molly", "Cooper", "Lucy", "Bailey", "Sadie",
        "Duke", "Rosie", "Bear", "Maggie", "Tucker", "Zoe", "Oscar", "Ruby", "Milo", "Coco", "Teddy", "Penny",
        "Jack", "Lola", "Rex", "Pepper", "Scout", "Biscuit"]},
    "vegetable": {"phrase": "a vegetable", "items": [
        "Carrot", "Potato", "Onion", "Broccoli", "Spinach", "Cabbage", "Lettuce", "Cucumber", "Pea", "Green bean",
        "Corn", "Pumpkin", "Zucchini", "Celery", "Garlic", "Leek", "Radish", "Turnip", "Beetroot", "Kale",
        "Asparagus", "Eggplant", "Cauliflower", "Artichoke", "Parsnip", "Okra", "Sweet potato"]},
    "bird": {"phrase": "a bird", "items": [
        "Sparrow", "Robin", "Eagle", "Owl", "Parrot", "Pigeon", "Crow", "Swan", "Duck", "Goose", "Hawk", "Falcon",
        "Penguin", "Flamingo", "Peacock", "Hummingbird", "Woodpecker", "Seagull", "Heron", "Stork", "Pelican",
        "Toucan", "Ostrich", "Canary", "Magpie", "Kingfisher", "Raven", "Finch", "Wren", "Crane"]},
    "instrument": {"phrase": "a musical instrument", "items": [
        "Piano", "Guitar", "Violin", "Drum", "Flute", "Trumpet", "Cello", "Harp", "Saxophone", "Clarinet",
        "Trombone", "Oboe", "Banjo", "Ukulele", "Accordion", "Harmonica", "Tuba", "Double bass", "Mandolin",
        "Xylophone", "Organ", "Bagpipes", "Viola", "Tambourine", "Sitar", "Bassoon", "Harpsichord", "Cymbals"]},
    "sport": {"phrase": "a sport", "items": [
        "Football", "Tennis", "Basketball", "Baseball", "Golf", "Swimming", "Cycling", "Rugby", "Cricket",
        "Hockey", "Volleyball", "Boxing", "Skiing", "Surfing", "Rowing", "Running", "Badminton", "Table tennis",
        "Archery", "Fencing", "Judo", "Karate", "Wrestling", "Climbing", "Sailing", "Diving", "Handball", "Polo",
        "Lacrosse", "Skating"]},
    "flower": {"phrase": "a flower", "items": [
        "Rose", "Tulip", "Daisy", "Lily", "Orchid", "Sunflower", "Daffodil", "Iris", "Poppy", "Peony",
        "Carnation", "Jasmine", "Lotus", "Marigold", "Dahlia", "Hibiscus", "Magnolia", "Chrysanthemum", "Geranium",
        "Begonia", "Camellia", "Azalea", "Gardenia", "Lilac", "Freesia", "Petunia", "Snowdrop", "Bluebell",
        "Buttercup", "Primrose"]},
}

# "{x}" is the category's phrase ("a fruit"). Held-out frames never occur in training prompts.
HIGH_TEMPLATES = {
    "train": ["Name {x}.", "Give me {x}.", "Tell me {x}.", "Can you think of {x}?", "Say {x}, just one.",
              "I need {x}. Any idea?", "Please suggest {x}."],
    "heldout": ["Choose {x} for me.", "Come up with {x}.", "What is {x}? One answer, please."],
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
    return float(-sum(x * math.log(x) for x in p if x > 0))


def kl_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """KL(p || q) in nats; ``inf`` when q is 0 where p is not."""
    total = 0.0
    for a, b in zip(p, q):
        if a > 0:
            if b <= 0:
                return math.inf
            total += a * (math.log(a) - math.log(b))
    return float(total)


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
    ``n_eval_high`` is at most ``len(CATEGORIES) * len(HIGH_TEMPLATES["heldout"])`` (30). Each part draws from
    its own seeded stream, so e.g. changing ``n_train_low`` does not change the eval set. ``spec`` (JSON) holds
    each category's valid set, true probabilities and entropy, the templates, and every eval item's family,
    category and template.
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
    eval_items: dict[str, dict] = {}

    def user(text):
        return {"role": "user", "content": text}

    def assistant(text):
        return {"role": "assistant", "content": text}

    train: list[Record] = []
    rng = random.Random(f"{seed}-train-low")
    for i in range(n_train_low):
        tpl = rng.choice(LOW_TEMPLATES["train"])
        q, sol, ans = _low_problem(tpl, rng)
        train.append(Record(f"ctl-train-low-{i:05d}", LOW_SOURCE, [user(q), assistant(sol)], str(ans), LOW_CATEGORY))
    rng = random.Random(f"{seed}-train-high")
    order = [cats[i % len(cats)] for i in range(n_train_high)]  # balanced categories
    rng.shuffle(order)
    for i, cat in enumerate(order):
        tpl = rng.choice(HIGH_TEMPLATES["train"])
        item = rng.choices(CATEGORIES[cat]["items"], weights=probs[cat])[0]
        train.append(Record(f"ctl-train-high-{i:05d}", HIGH_SOURCE,
                            [user(tpl.format(x=CATEGORIES[cat]["phrase"])), assistant(item)], None, cat))
    random.Random(f"{seed}-train-order").shuffle(train)

    evals: list[Record] = []
    rng = random.Random(f"{seed}-eval-low")
    seen: set[str] = set()
    i = 0
    while i < n_eval_low:
        tpl = LOW_TEMPLATES["heldout"][i % len(LOW_TEMPLATES["heldout"])]
        q, sol, ans = _low_problem(tpl, rng)
        if q in seen:  # distinct eval problems; the space is far larger than any eval set
            continue
        seen.add(q)
        rid = f"ctl-eval-low-{i:05d}"
        evals.append(Record(rid, LOW_SOURCE, [user(q), assistant(sol)], str(ans), LOW_CATEGORY))
        eval_items[rid] = {"family": "low", "category": LOW_CATEGORY, "template": tpl["id"]}
        i += 1
    rng = random.Random(f"{seed}-eval-high")
    shuffled = cats[:]
    rng.shuffle(shuffled)
    combos = [(t, c) for t in range(len(HIGH_TEMPLATES["heldout"])) for c in shuffled]
    for i, (t, cat) in enumerate(combos[:n_eval_high]):
        tpl = HIGH_TEMPLATES["heldout"][t]
        rid = f"ctl-eval-high-{i:05d}"
        # The reference response of an eval item is one draw too, so eval files have the same shape as training
        # files (metrics never use it: they score the whole valid set).
        item = rng.choices(CATEGORIES[cat]["items"], weights=probs[cat])[0]
        evals.append(Record(rid, HIGH_SOURCE, [user(tpl.format(x=CATEGORIES[cat]["phrase"])), assistant(item)],
                            None, cat))
        eval_items[rid] = {"family": "high", "category": cat, "template": tpl}

    spec = {
        "benchmark": "ual-controlled", "version": BENCHMARK_VERSION, "seed": seed, "distribution": distribution,
        "zipf_exponent": ZIPF_EXPONENT if distribution == "zipf" else None,
        "counts": {"n_train_low": n_train_low, "n_train_high": n_train_high, "n_eval_low": n_eval_low,
                   "n_eval_high": n_eval_high},
        "categories": {c: {"phrase": CATEGORIES[c]["phrase"], "items": list(CATEGORIES[c]["items"]),
                           "probs": probs[c], "entropy_nats": entropy(probs[c])} for c in cats},
        "high_templates": {k: list(v) for k, v in HIGH_TEMPLATES.items()},
        "low_templates": {k: [dict(t) for t in v] for k, v in LOW_TEMPLATES.items()},
        "answer_normalisation": NORMALISATION,
        "sample_kl_alpha": SAMPLE_KL_ALPHA,
        "eval_items": eval_items,
    }
    return train, evals, spec


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


# ----------------------------------------------------------------------------------------------- scoring (model)

def _family(rec: Record, spec: dict, path=None, line=None) -> str:
    if rec.source == LOW_SOURCE:
        return "low"
    if rec.source == HIGH_SOURCE:
        if rec.category not in spec["categories"]:
            raise InputError(path, line, "category", f"{rec.category!r} is not a category of the spec")
        return "high"
    raise InputError(path, line, "source", f"expected {LOW_SOURCE!r} or {HIGH_SOURCE!r}, got {rec.source!r}")


def answer_as_written(text: str, protocol: str) -> str | None:
    """The substring of ``text`` that ``protocol`` reads as the answer (for locating its tokens), or None."""
    from ual.evaluate.answers import NUMBER_RE, extract_answer, normalize_number

    ans = extract_answer(text, protocol)
    if ans is None:
        return None
    start = text.find("####") if protocol == "strict" else 0
    hits = [m.group(0) for m in NUMBER_RE.finditer(text, max(start, 0)) if normalize_number(m.group(0)) == ans]
    if not hits:
        return None
    return hits[0] if protocol == "strict" else hits[-1]


def score_controlled(model: Any, eval_records: Sequence[Record], spec: dict, out_dir: str | Path, *,
                     adapter: str | None = None, template: str = "chat", batch_size: int = 8, k_samples: int = 16,
                     temperature: float = 1.0, max_new_tokens_low: int = 128, max_new_tokens_high: int = 24,
                     seed: int = 1337, dtype: str = "float32", items_per_chunk: int = 16,
                     answer_batch_size: int = 64, progress: bool = True) -> Path:
    """Run the model parts of the benchmark and write ``out_dir/scores.jsonl`` (one row per eval item).

    ``model``: a name/folder (plus ``adapter``) or a loaded ``(model, tokenizer)`` pair. Writes, resumably,
    ``greedy.jsonl`` (greedy outputs of every item), ``samples.jsonl`` (``k_samples`` samples per high item at
    ``temperature``) with :func:`ual.evaluate.generate.generate`, then per item the likelihoods (schema in
    :func:`controlled_metrics`), appended ``items_per_chunk`` items at a time. A high item's valid answers are
    scored ``answer_batch_size`` at a time on one shared prompt cache. Returns the scores path.
    """
    from tqdm.auto import tqdm

    from ual.evaluate.answers import extract_answer
    from ual.evaluate.generate import generate, resolve_model
    from ual.evaluate.likelihood import (answer_logprobs, answer_set_logprobs, continuation_logprobs,
                                         final_answer_text)

    out_dir = Path(out_dir)
    fams = {r.id: _family(r, spec) for r in eval_records}
    low = [r for r in eval_records if fams[r.id] == "low"]
    high = [r for r in eval_records if fams[r.id] == "high"]
    mdl, tok, name = resolve_model(model, adapter, dtype)
    pair = (mdl, tok)
    common = dict(template=template, batch_size=batch_size, seed=seed, dtype=dtype, progress=progress)
    greedy_low = generate(pair, low, out_dir / "greedy_low.jsonl", max_new_tokens=max_new_tokens_low, **common)
    greedy_high = generate(pair, high, out_dir / "greedy_high.jsonl", max_new_tokens=max_new_tokens_high, **common)
    samples = generate(pair, high, out_dir / "samples.jsonl", max_new_tokens=max_new_tokens_high, do_sample=True,
                       temperature=temperature, n=k_samples, **common) if k_samples > 0 else None
    gen = {row["id"]: row for p in (greedy_low, greedy_high) for _, row in iter_jsonl(p)}
    smp = {row["id"]: row for _, row in iter_jsonl(samples)} if samples else {}
    settings = {"model": name, "adapter": None if adapter is None else str(adapter), "template": template,
                "k_samples": k_samples, "temperature": temperature, "max_new_tokens_low": max_new_tokens_low,
                "max_new_tokens_high": max_new_tokens_high, "seed": seed, "dtype": dtype,
                "benchmark_version": spec.get("version")}
    path = out_dir / "scores.jsonl"
    done = set()
    if path.exists():
        for line, row in iter_jsonl(path):
            if row.get("settings") != settings:
                raise InputError(path, line, "settings", "scores were written with other settings; use another "
                                 "output folder")
            done.add(row["id"])
    todo = [r for r in eval_records if r.id not in done]
    bar = tqdm(total=len(todo), desc="controlled scores", unit="item", disable=not progress)
    with JsonlAppender(path) as out:
        for start in range(0, len(todo), items_per_chunk):
            chunk = todo[start:start + items_per_chunk]
            scored = {}
            for r in chunk:
                if fams[r.id] == "high":
                    items = spec["categories"][r.category]["items"]
                    lps = answer_set_logprobs(mdl, tok, r.messages, items, template=template,
                                              batch_size=answer_batch_size)
                    scored.update({(r.id, it): v for it, v in zip(items, lps)})
            lows = [r for r in chunk if fams[r.id] == "low"]
            if lows:
                gold = continuation_logprobs(mdl, tok, [r.messages for r in lows], [r.response for r in lows],
                                             template=template, batch_size=batch_size)
                gold_ans = answer_logprobs(mdl, tok, [r.messages for r in lows], [r.response for r in lows],
                                           [final_answer_text(r.response) for r in lows], template=template,
                                           batch_size=batch_size)
                protos = ("strict", "flexible")
                written = {p: [answer_as_written(gen[r.id]["output"], p) for r in lows] for p in protos}
                own = {p: answer_logprobs(mdl, tok, [r.messages for r in lows], [gen[r.id]["output"] for r in lows],
                                          written[p], template=template, batch_size=batch_size) for p in protos}
            li = 0
            for r in chunk:
                g = gen[r.id]
                row = {"id": r.id, "family": fams[r.id], "category": r.category, "source": r.source,
                       "greedy": g["output"], "greedy_finished": g["finished"]}
                if fams[r.id] == "high":
                    items = spec["categories"][r.category]["items"]
                    row["valid_logprobs"] = {it: scored[(r.id, it)][0] for it in items}
                    row["valid_n_tokens"] = {it: scored[(r.id, it)][1] for it in items}
                    if samples:
                        row["samples"] = smp[r.id]["output"] if k_samples > 1 else [smp[r.id]["output"]]
                else:
                    row["answer"] = r.answer
                    row["gold_logprob"], row["gold_n_tokens"] = gold[li]
                    row["gold_answer_logprob"], row["gold_answer_n_tokens"] = gold_ans[li] or (None, 0)
                    row["greedy_answers"] = {p: extract_answer(g["output"], p) for p in protos}
                    row["greedy_answer_logprobs"] = {p: None if own[p][li] is None else own[p][li][0]
                                                     for p in protos}
                    li += 1
                row["settings"] = settings
                out.write(row)
            bar.update(len(chunk))
    bar.close()
    return path


# ----------------------------------------------------------------------------------------------- metrics (pure)

def _logsumexp(xs: Sequence[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def _median(xs: Sequence[float]) -> float | None:
    s = sorted(xs)
    if not s:
        return None
    k = len(s) // 2
    return float(s[k] if len(s) % 2 else (s[k - 1] + s[k]) / 2)


def _need(row: dict, key: str, line: int, path) -> Any:
    if key not in row or row[key] is None:
        raise InputError(path, line, key, "is missing")
    return row[key]


def sample_kl(p: Sequence[float], counts: Sequence[int]) -> float | None:
    """KL(p || add-alpha smoothed sample distribution) in nats; None when no sample was valid (with no valid
    sample the smoothed distribution is the uniform prior alone, which says nothing about the model)."""
    n = sum(counts)
    if n == 0:
        return None
    total = n + SAMPLE_KL_ALPHA * len(counts)
    return kl_divergence(p, [(c + SAMPLE_KL_ALPHA) / total for c in counts])


def high_item_metrics(row: dict, spec: dict, *, line: int | None = None, path=None) -> dict:
    """Exact and sampled metrics of one high-entropy score row (see :func:`controlled_metrics`)."""
    cat = _need(row, "category", line, path)
    if cat not in spec["categories"]:
        raise InputError(path, line, "category", f"{cat!r} is not a category of the spec")
    items = spec["categories"][cat]["items"]
    p = spec["categories"][cat]["probs"]
    lps = _need(row, "valid_logprobs", line, path)
    if not isinstance(lps, dict) or set(lps) != set(items):
        raise InputError(path, line, "valid_logprobs", f"must hold exactly the {len(items)} valid answers of "
                         f"category {cat!r}")
    lp = [float(lps[it]) for it in items]
    lse = _logsumexp(lp)
    q = [math.exp(x - lse) for x in lp]
    out = {"validity_mass": math.exp(lse), "log_validity_mass": lse, "kl_true_model": kl_divergence(p, q),
           "entropy_model": entropy(q), "entropy_true": entropy(p)}
    if "samples" in row and row["samples"] is not None:
        samples = row["samples"]
        if not isinstance(samples, list) or not samples or not all(isinstance(s, str) for s in samples):
            raise InputError(path, line, "samples", "expected a non-empty list of strings")
        canon = {normalise_answer(it): k for k, it in enumerate(items)}
        counts = [0] * len(items)
        n_valid = 0
        for s in samples:
            k = canon.get(normalise_answer(s))
            if k is not None:
                counts[k] += 1
                n_valid += 1
        out.update({"n_samples": len(samples), "validity_rate_pct": 100.0 * n_valid / len(samples),
                    "coverage_pct": 100.0 * sum(c > 0 for c in counts) / len(items),
                    "n_distinct_valid": sum(c > 0 for c in counts), "valid_counts": counts,
                    "sample_kl_true_model": sample_kl(p, counts)})
    greedy = row.get("greedy")
    if isinstance(greedy, str):
        out["greedy_valid"] = normalise_answer(greedy) in {normalise_answer(it) for it in items}
    return out


def controlled_metrics(scored_rows: Iterable[dict], spec: dict, *, ece_protocol: str = "flexible",
                       n_bins: int = 10, path: str | Path | None = None) -> dict:
    """Benchmark metrics from saved score rows (no model needed).

    Row schema (``scores.jsonl`` written by :func:`score_controlled`), all rows::

        {"id", "family": "low" | "high", "category", "source", "greedy": str, "greedy_finished": bool, "settings"}

    high rows add ``"valid_logprobs": {answer: log p(answer + end-of-turn) in nats}`` (every valid answer of the
    category), ``"valid_n_tokens": {answer: int}`` and optionally ``"samples": [str]`` (K samples).
    low rows add ``"answer"`` (gold), ``"gold_logprob"``/``"gold_n_tokens"`` (whole reference response),
    ``"gold_answer_logprob"``/``"gold_answer_n_tokens"`` (its final-answer tokens), ``"greedy_answers": {protocol:
    str | None}`` and ``"greedy_answer_logprobs": {protocol: float | None}`` (log-probability of the greedy
    output's answer tokens; None when no answer was read) for protocols ``strict`` and ``flexible``.

    Returns ``{"low": {...}, "high": {...}, "high_by_category": {cat: {...}}, "definitions": {...}}``. Rates are
    percent, probabilities and ECE in [0, 1], KL and entropies in nats; each high metric is a mean over prompts.
    """
    from ual.evaluate.answers import gold_answer, score_math
    from ual.evaluate.calibration import expected_calibration_error, reliability_bins

    low_rows, high_items = [], []
    for i, row in enumerate(scored_rows):
        line = i + 1
        fam = _need(row, "family", line, path)
        if fam == "low":
            low_rows.append((line, row))
        elif fam == "high":
            high_items.append((row.get("category"), high_item_metrics(row, spec, line=line, path=path)))
        else:
            raise InputError(path, line, "family", f"expected 'low' or 'high', got {fam!r}")
    result: dict = {"benchmark_version": spec.get("version"), "distribution": spec.get("distribution")}

    if low_rows:
        acc = score_math([{"output": _need(r, "greedy", ln, path), "answer": _need(r, "answer", ln, path)}
                          for ln, r in low_rows], ("strict", "flexible"), path=path,
                         lines=[ln for ln, _ in low_rows])
        conf, correct = [], []
        for ln, r in low_rows:
            ans = _need(r, "greedy_answers", ln, path).get(ece_protocol)
            lp = _need(r, "greedy_answer_logprobs", ln, path).get(ece_protocol)
            if ans is None or lp is None:
                conf.append(0.0)  # no answer read: no confidence in any answer, and wrong
                correct.append(False)
            else:
                conf.append(min(1.0, math.exp(lp)))
                correct.append(ans == gold_answer(r["answer"]))
        gold_nll = [-_need(r, "gold_logprob", ln, path) / _need(r, "gold_n_tokens", ln, path) for ln, r in low_rows]
        ans_nll = [-r["gold_answer_logprob"] / r["gold_answer_n_tokens"] for _, r in low_rows
                   if r.get("gold_answer_logprob") is not None and r.get("gold_answer_n_tokens")]
        result["low"] = {
            "n_items": len(low_rows),
            "accuracy_strict_pct": acc["protocols"]["strict"]["accuracy"],
            "accuracy_flexible_pct": acc["protocols"]["flexible"]["accuracy"],
            "invalid_strict_pct": acc["protocols"]["strict"]["invalid_rate"],
            "gold_nll_per_token": _mean(gold_nll),
            "gold_answer_nll_per_token": _mean(ans_nll),
            "ece": expected_calibration_error(conf, correct, n_bins=n_bins),
            "ece_protocol": ece_protocol,
            "mean_confidence": _mean(conf),
            "reliability_bins": reliability_bins(conf, correct, n_bins=n_bins),
            "answer_protocol_version": acc["protocol_version"],
        }

    def summarise(ms: list[dict]) -> dict:
        keys = ["validity_mass", "log_validity_mass", "kl_true_model", "entropy_model", "entropy_true"]
        out = {"n_prompts": len(ms)}
        for k in keys:
            out[k] = _mean([m[k] for m in ms])
        out["validity_mass_median"] = _median([m["validity_mass"] for m in ms])
        sampled = [m for m in ms if "n_samples" in m]
        if sampled:
            for k in ("validity_rate_pct", "coverage_pct", "n_distinct_valid"):
                out[k] = _mean([m[k] for m in sampled])
            defined = [m["sample_kl_true_model"] for m in sampled if m["sample_kl_true_model"] is not None]
            out["sample_kl_true_model"] = _mean(defined)
            out["n_prompts_with_valid_samples"] = len(defined)
            out["n_samples_per_prompt"] = sampled[0]["n_samples"]
        greedy = [m["greedy_valid"] for m in ms if "greedy_valid" in m]
        if greedy:
            out["greedy_validity_pct"] = 100.0 * sum(greedy) / len(greedy)
        return out

    if high_items:
        result["high"] = summarise([m for _, m in high_items])
        by_cat = {}
        for c in sorted({c for c, _ in high_items}):
            ms = [m for cc, m in high_items if cc == c]
            by_cat[c] = summarise(ms)
            if any("valid_counts" in m for m in ms):
                # prompts of one category share the true distribution, so their samples can be pooled
                pooled = [sum(col) for col in zip(*(m["valid_counts"] for m in ms if "valid_counts" in m))]
                by_cat[c]["sample_kl_pooled"] = sample_kl(spec["categories"][c]["probs"], pooled)
        result["high_by_category"] = by_cat
        pooled_kls = [v["sample_kl_pooled"] for v in by_cat.values() if v.get("sample_kl_pooled") is not None]
        if any("sample_kl_pooled" in v for v in by_cat.values()):
            result["high"]["sample_kl_pooled"] = _mean(pooled_kls)
            result["high"]["n_categories_with_valid_samples"] = len(pooled_kls)
    result["definitions"] = {
        "validity_mass": "sum over valid answers of p(answer + end-of-turn | prompt), canonical spelling only",
        "kl_true_model": "KL(true || model renormalised over the valid set), nats",
        "sample_kl_true_model": f"KL(true || (counts + {SAMPLE_KL_ALPHA}) / (valid samples + "
                                f"{SAMPLE_KL_ALPHA} * |valid set|)), nats, per prompt; undefined (left out of "
                                "the mean, see n_prompts_with_valid_samples) when no sample is valid",
        "sample_kl_pooled": "the same with the valid samples of all prompts of a category pooled; mean over "
                            "categories with a valid sample",
        "coverage_pct": "distinct valid answers among the samples / valid-set size, percent",
        "answer_normalisation": NORMALISATION,
        "ece": f"{n_bins} uniform bins; confidence = p(greedy answer tokens | prompt, greedy reasoning); no answer "
               "read -> confidence 0, wrong",
    }
    return result


def controlled_metrics_file(scores_path: str | Path, spec_path: str | Path, **kwargs) -> dict:
    """:func:`controlled_metrics` on a saved ``scores.jsonl`` and ``spec.json``."""
    rows = [row for _, row in iter_jsonl(scores_path)]
    return controlled_metrics(rows, read_json(spec_path), path=scores_path, **kwargs)


def entropy_class_auroc(scores_by_id: dict[str, float], records: Sequence[Record]) -> float:
    """AUROC of an uncertainty score (higher = more uncertain) for telling high-entropy records (label 1) from
    low-entropy ones (label 0); 0.5 = chance, 1 = perfect. Every record needs a score."""
    from sklearn.metrics import roc_auc_score

    y, s = [], []
    for i, r in enumerate(records):
        if r.source not in (LOW_SOURCE, HIGH_SOURCE):
            raise InputError(None, i + 1, "source", f"expected {LOW_SOURCE!r} or {HIGH_SOURCE!r}, got {r.source!r}")
        if r.id not in scores_by_id or scores_by_id[r.id] is None:
            raise InputError(None, i + 1, "id", f"no score for record {r.id!r}")
        y.append(int(r.source == HIGH_SOURCE))
        s.append(float(scores_by_id[r.id]))
    if len(set(y)) < 2:
        raise InputError(None, None, "source", "AUROC needs records of both families")
    return float(roc_auc_score(y, s))


# ----------------------------------------------------------------------------------------------- CLI

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


def configure_controlled_metrics(p) -> None:
    p.add_argument("--scores", required=True, help="scores.jsonl written by score_controlled")
    p.add_argument("--spec", required=True, help="spec.json of the dataset")
    p.add_argument("--out", help="write the metrics JSON here (atomically) as well as printing it")


def run_controlled_metrics(args) -> int:
    m = controlled_metrics_file(args.scores, args.spec)
    if args.out:
        atomic_write_json(args.out, m)
    print(json.dumps(m, indent=2))
    return 0
