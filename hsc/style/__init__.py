"""Neural style transfer with the hsc preconditioner over the image's pixels, against L-BFGS and Adam.

Entry points: :class:`hsc.style.objective.StyleObjective` (the loss), :func:`hsc.style.run.run`
(one optimisation), :func:`hsc.style.cli.main` (``hsc style``). Imported lazily by
``hsc.__main__`` so that ``hsc info`` stays fast.
"""
from __future__ import annotations

from .features import EXTRACTORS, RandomMultiScaleNet, VGG19Features, make_extractor
from .images import BUNDLED, load_image, save_image
from .objective import LossWeights, StyleObjective, content_loss, gram, out_of_range, style_loss, total_variation
from .run import OPTIMIZERS, HSCSettings, LBFGSSettings, RunConfig, RunResult, run

__all__ = ["EXTRACTORS", "RandomMultiScaleNet", "VGG19Features", "make_extractor", "BUNDLED", "load_image",
           "save_image", "LossWeights", "StyleObjective", "content_loss", "gram", "out_of_range", "style_loss",
           "total_variation", "OPTIMIZERS", "HSCSettings", "LBFGSSettings", "RunConfig", "RunResult", "run"]
