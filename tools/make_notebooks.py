"""Rebuild notebooks/00_data ... 04_figures.ipynb: the narration below plus each stage's parameters cell, generated
from its Config (ual.common.config.parameters_cell). Run after changing a Config field or its help text:

    python tools/make_notebooks.py

tests/unit/test_pipeline.py fails when a notebook's parameters cell differs from what this writes.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ual.common.config import parameters_cell
from ual.pipeline import NOTEBOOK_DEFAULTS, stage_config_classes

C = stage_config_classes()


def params(stage):
    c = new_code_cell(parameters_cell(C[stage], overrides=NOTEBOOK_DEFAULTS.get(stage)))
    c.metadata["tags"] = ["parameters"]
    return c


def nb(cells, stem):
    for i, c in enumerate(cells):
        c.id = f"{stem.split('_')[0]}-{i:02d}"  # stable ids: a rebuild changes only what changed
    n = new_notebook(cells=cells)
    n.metadata["kernelspec"] = {"name": "ual", "display_name": "Python (ual)", "language": "python"}
    n.metadata["language_info"] = {"name": "python"}
    return n


M, K = new_markdown_cell, new_code_cell
SETUP = "import ual.{s}\nfrom ual.pipeline import stage_config\nfrom ual.common.paths import run_path\n\nrun_dir = run_path(run_dir)\ncfg = stage_config(ual.{s}.Config, globals(), stage=\"{s}\")\ncfg"
books = {
 "00_data.ipynb": [
  M("# 00 · Data\n\nBuilds the run's training set and evaluation sets into `<run_dir>/data/`. The quickstart uses the controlled mixed-entropy benchmark (`ual.data.controlled`): low-entropy arithmetic items with one correct answer and high-entropy open prompts whose true answer distribution is known, so later stages can measure what UAL claims. Real sources (`kind: mix`) are files under the data root (`data/`, or `UAL_DATA_DIR`) or hub ids."),
  params("data"),
  M("Collect the parameters into the stage config (type-checked: a wrong type stops here). A relative `run_dir` goes under the repository's `runs/`."),
  K(SETUP.format(s="data")),
  M("Write the data files. Each source is drawn with its own seeded generator; evaluation sets exclude every training prompt."),
  K('result = ual.data.run(cfg, run_dir)\nresult["counts"]'),
  M("What went in: samples per file and source."),
  K("ual.data.data_summary(run_dir)")],
 "01_elicit.ipynb": [
  M("# 01 · Elicitation\n\nOne uncertainty score per training sample (higher = more uncertain). The paper asks GPT-4 for a 0-99 \"need for diversity\" rating (`backend=\"openai\"`); this notebook's default runs offline: the embedded SmolLM2's likelihood of each reference response. Results are appended per sample to `elicit/scores.jsonl`, so a rerun or a restart after a kill skips what is done. API keys come only from the environment variable named by `api_key_env`."),
  params("elicit"),
  K(SETUP.format(s="elicit")),
  M("Score the run's training set (progress bar; the closing summary counts scored samples, parse failures, errors and tokens)."),
  K("summary = ual.elicit.run(cfg, run_dir)\nsummary"),
  M("The paper's premise: math (low-entropy) samples score low, open-ended ones high. Score distribution per source, and how well the score separates the two families (AUROC)."),
  K("ual.elicit.scores_table(run_dir)"),
  K("from ual.figures.plots import score_distribution\n\nscore_distribution(run_dir);")],
 "02_train.ipynb": [
  M("# 02 · Training\n\nFine-tunes one LoRA adapter per variant from one config: plain SFT (eps = 0), uniform label smoothing at the mean eps (LS), and UAL (eps per sample from the elicited scores, rescaled to the same mean). Same data, same seed, same steps; only eps differs. Variants already trained are skipped; an interrupted one resumes from its last checkpoint. The trainer is `ual.train.UALTrainer`, which you can use in your own scripts too."),
  params("train"),
  K(SETUP.format(s="train") + "\n[ual.train.variant_name(v.method, v.mean_eps, v.seed) for v in ual.train.variants(cfg)]"),
  M("Train every variant (progress bars per variant). Outputs: `train/<variant>/` with the adapter, `log.jsonl`, `eps.jsonl` and `manifest.json`."),
  K("table = ual.train.run(cfg, run_dir)\ntable"),
  M("Loss curves. The smoothed loss includes the smoothing term, so its level differs by method; compare shapes, not levels."),
  K("from ual.figures.plots import eps_distribution, loss_curves\n\nloss_curves(run_dir);"),
  K("from ual.figures.plots import eps_panels\n\nif eps_panels(run_dir):  # none when no variant smooths (sft, dft, eaft, AVA)\n    eps_distribution(run_dir);")],
 "03_evaluate.ipynb": [
  M("# 03 · Evaluation\n\nEvaluates the base model and every trained variant. Generations and per-item scores are saved first under `evaluate/<variant>/`; every metric is then computed from those files (`ual.evaluate.metrics`), so scoring can be rerun without a model. Tasks run as the run's data provides them: the controlled benchmark (accuracy on low-entropy items; validity, KL to the true distribution and coverage on high-entropy items; calibration), held-out math under every answer protocol, judged win rates against AlpacaEval references, and the paper's token-clustering analysis."),
  params("evaluate"),
  K(SETUP.format(s="evaluate")),
  M("Generate, score and compute metrics for each model (progress bars; resumes). The table: mean ± std over seeds per method."),
  K("metrics = ual.evaluate.run(cfg, run_dir)\n\nfrom ual.figures.results import summary_table\n\nsummary_table(run_dir)"),
  K("from ual.figures.plots import method_comparison\n\nmethod_comparison(run_dir);")],
 "04_figures.ipynb": [
  M("# 04 · Figures\n\nRebuilds every figure of the run from its saved result files alone (no model is loaded): `python -m ual figures --run <run_dir>` does the same from the command line."),
  params("figures"),
  K(SETUP.format(s="figures")),
  K("paths = ual.figures.run(cfg, run_dir)\npaths"),
  K('from IPython.display import Image, display\n\nfor p in paths:\n    if p.endswith(".png"):\n        display(Image(filename=p))')],
}
# Not a stage of the pipeline: run after `python -m ual run --profile ava` (README, "AVA"); its parameters are its own.
AVA_PARAMS = K('run_dir: str = "runs/ava"  # a run of profiles/ava.yaml (or any run with sft/ava_d policies and reward models)\n'
               'pairs: list = ["alpaca_eval/annotations/alpaca-7b.weighted_alpaca_eval_gpt4_turbo.json",\n'
               '               "alpaca_eval/annotations/text_davinci_001.weighted_alpaca_eval_gpt4_turbo.json"]  # scored pairs (data root: UAL_DATA_DIR)\n'
               'split: str = "heldout"  # all | train | heldout: the prompt-hash side to score (the run trained on train)\n'
               'heldout_fraction: float = 0.25  # as the run\'s train.heldout_fraction\n'
               'n_boot: int = 1000  # bootstrap draws for the intervals\n'
               'batch_size: int = 8  # sequences per forward pass when scoring')
AVA_PARAMS.metadata["tags"] = ["parameters"]
books["05_ava.ipynb"] = [
  M("# 05 · AVA: policies and reward models\n\nAVA (Cai et al., arXiv 2411.09341) casts alignment as approximate variational Bayesian inverse RL on the token MDP: a Gaussian reward head q(R | prefix) beside the language model's own Q (`ual.ava_loss`, `ual.train.ava`). This notebook reads a run of `profiles/ava.yaml` and answers its two questions: does AVA-d, trained on the same demonstrations, beat SFT on the controlled benchmark; and does the AVA-p reward head rank held-out GPT-4-Turbo verdicts better than a Bradley-Terry reward model with the same backbone, LoRA and head?"),
  AVA_PARAMS,
  K("from ual.common.paths import run_path\n\nrun_dir = run_path(run_dir)"),
  M("Policies on the controlled benchmark: every metric of the evaluate stage, AVA-d minus SFT, with two-level paired bootstrap intervals (seeds, then items; `ual.figures.bootstrap`)."),
  K("import pandas as pd\n\nfrom ual.figures.bootstrap import bootstrap_table\nfrom ual.figures.results import method_label\n\n"
    "from ual.common.io import atomic_write_json\n\n"
    "stats = bootstrap_table(run_dir, n_boot=n_boot, comparisons=[(method_label(\"ava_d\", 0.0), \"sft\")])\n"
    "atomic_write_json(run_dir / \"evaluate\" / \"ava_policy_stats.json\", stats)\n"
    "pd.DataFrame(stats[\"differences\"])[[\"label\", \"a\", \"b\", \"estimate\", \"lo\", \"hi\", \"p_a_better\", \"n_seeds\"]]"),
  M("Reward models on the held-out verdicts: each complete `ava_p` / `bt_rm` model scores both responses of every pair (the reward head's mean on the last response token); scores go to `evaluate/<variant>/rm_scores.jsonl` (resumable) and the summary to `evaluate/reward_models.json`. Balanced accuracy and AUROC treat \"the response shown first is preferred\" as the label, so a scorer that always prefers the (usually longer, usually winning) GPT-4-Turbo answer gets 50 % balanced accuracy whatever its pairwise accuracy."),
  K("from IPython.display import Markdown\n\nfrom ual.evaluate.metrics.reward import reward_markdown\nfrom ual.evaluate.reward import evaluate_run\n\n"
    "summary = evaluate_run(run_dir, pairs, split=split, heldout_fraction=heldout_fraction, n_boot=n_boot, batch_size=batch_size)\n"
    "Markdown(reward_markdown(summary))")]
for name, cells in books.items():
    nbformat.write(nb(cells, name), ROOT / "notebooks" / name)
    print("wrote", name)
