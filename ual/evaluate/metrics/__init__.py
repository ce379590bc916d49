"""Pure metrics on saved files: answer rules, calibration, controlled-benchmark metrics, win rates, diversity,
separation AUROC, and the per-model metrics of a run. Nothing here loads a model; ``ual.figures`` builds on it."""
