"""ual: Uncertainty Aware Learning for language-model alignment (Wang et al., ACL 2024), reproducible.

Stages: ``ual.data.records`` (records, loaders, mixing) -> ``ual.elicit`` (per-sample uncertainty scores) ->
``ual.smoothing`` (score -> label-smoothing value) -> ``ual.train.fit`` (LoRA fine-tuning with the per-sample
smoothed loss of ``ual.loss``) -> ``ual.evaluate`` -> ``ual.figures.plots``; ``ual.pipeline`` runs the notebooks.
Submodules are imported on use so that ``import ual`` stays light (figures need no torch).
"""
from ual.common.errors import InputError

__version__ = "0.1.0"
__all__ = ["InputError", "__version__"]
