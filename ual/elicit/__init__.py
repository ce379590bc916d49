"""Elicitation stage: one uncertainty score per training sample (higher = more uncertain, always >= 0).

Backends (``ElicitConfig.backend``):

- ``openai``: the paper's method: an OpenAI-compatible chat endpoint rates each sample's "need for diversity"
  0-99 (prompt ``ual/prompts/need_for_diversity_v1.txt``, temperature 0); the free-text reply is parsed, and a
  reply without one clear score is recorded as a parse failure with the raw text.
- ``local``: the same prompt answered by a local causal LM; the score is the expected rating under the model's
  probabilities of the 100 ratings (:mod:`ual.elicit.backends.lm`).
- ``likelihood``: mean token NLL / entropy of the sample's reference response under a local LM, optionally G-NLL.
- ``sampling``: K sampled replies: predictive entropy over answer classes and our LCA reconstruction.
- ``source``: a fixed score per source (ablation).

Results go to an append-only JSONL file, one row per sample, and a rerun resumes (:mod:`ual.elicit.scoring`).
"""
from ual.elicit.cli import configure_elicit, run_elicit
from ual.elicit.config import BACKENDS, ElicitConfig
from ual.elicit.lca import lca_reconstruction, predictive_entropy
from ual.elicit.prompt import load_prompt, parse_score
from ual.elicit.report import rank_agreement, scores_summary, separation_auroc
from ual.elicit.scoring import elicit, latest_rows
from ual.elicit.stage import family_auroc, run, scores_table

Config = ElicitConfig  # the stage's config under the name every stage uses

__all__ = ["BACKENDS", "Config", "ElicitConfig", "family_auroc", "run", "scores_table", "configure_elicit", "elicit", "latest_rows", "lca_reconstruction",
           "load_prompt", "parse_score", "predictive_entropy", "rank_agreement", "run_elicit", "scores_summary",
           "separation_auroc"]
