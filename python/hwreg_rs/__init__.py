"""hwreg_rs: hardware regularization with a Rust core.

Train and compress neural networks so that they obey the limits of the
hardware they will run on, then run them with exact int8 and sparse kernels.
"""

from __future__ import annotations

from . import _native
from ._native import active_isa, num_threads, supported_isas
from . import analysis, constraints, data, losses, nn, optim, train
from .train import Trainer, fit

__version__: str = _native.__version__

__all__ = [
    "__version__",
    "active_isa",
    "num_threads",
    "supported_isas",
    # models and training (issue 4)
    "Trainer",
    "analysis",
    "constraints",
    "data",
    "fit",
    "losses",
    "nn",
    "optim",
    "train",
]
