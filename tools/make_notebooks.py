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
for name, cells in books.items():
    nbformat.write(nb(cells, name), ROOT / "notebooks" / name)
    print("wrote", name)
