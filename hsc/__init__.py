"""hsc: block-diagonal Hessians and a corrected, always-defined curvature preconditioner."""
from __future__ import annotations

import torch

from . import ops, optim
from .layout import BlockLayout
from .ops import Correction, Status
from .optim import HSC, StepControl
from .config import PreconditionerConfig
from .game import CompetitiveHSC, GameConfig
from .grafting import GraftedAdam
from .lbfgs import PreconditionedLBFGS
from .preconditioner import Preconditioner

__version__ = "0.1.0"
__all__ = ["ops", "optim", "Correction", "Status", "BlockLayout", "Preconditioner", "PreconditionerConfig", "HSC", "StepControl",
           "PreconditionedLBFGS", "CompetitiveHSC", "GameConfig", "GraftedAdam",
           "info", "__version__"]


def _registered_backends() -> list[str]:
    backends = []
    for key in ("CPU", "CUDA"):
        if torch._C._dispatch_has_kernel_for_dispatch_key("hsc::precondition", key):
            backends.append(key)
    return backends


def info() -> str:
    """Version, torch version, compiled backends and thread count, as printed by `python -m hsc info`."""
    from . import _C

    cuda = f"compiled (CUDA {_C.cuda_version})" if _C.cuda_compiled else "not compiled"
    lines = [
        f"hsc {__version__}",
        f"torch {torch.__version__}",
        f"backends with kernels: {', '.join(_registered_backends()) or 'none'}",
        f"CPU kernels: SIMD {_C.simd}",
        f"CUDA: {cuda}; GPU present: {torch.cuda.is_available()}",
        f"threads: {torch.get_num_threads()}",
    ]
    text = "\n".join(lines)
    print(text)
    return text
