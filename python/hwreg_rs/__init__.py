"""hwreg_rs: hardware regularization with a Rust core.

Train and compress neural networks so that they obey the limits of the
hardware they will run on, then run them with exact int8 and sparse kernels.
"""

from __future__ import annotations

from . import _native
from .config import active_isa, num_threads, set_num_threads, supported_isas
from .quant import QParams, calibrate, dequantize, dynamic_quantize, quantize
from .gemm import Int8Linear, PackedMatrix, matmul_integer, pack_int8, qlinear_matmul
from . import int4, prune, sparse
from . import analysis, constraints, data, losses, nn, optim, train
from .train import Trainer, fit
from . import io, onnx, profiles, runtime
from .compress import BudgetError, CompressionReport, compress

__version__: str = _native.__version__

__all__ = [
    "__version__",
    "active_isa",
    "num_threads",
    "set_num_threads",
    "supported_isas",
    # quantization
    "QParams",
    "calibrate",
    "dequantize",
    "dynamic_quantize",
    "quantize",
    # exact int8 GEMM
    "Int8Linear",
    "PackedMatrix",
    "matmul_integer",
    "pack_int8",
    "qlinear_matmul",
    # int4 weights
    "int4",
    # pruning and sparse kernels
    "prune",
    "sparse",
    # models and training
    "Trainer",
    "analysis",
    "constraints",
    "data",
    "fit",
    "losses",
    "nn",
    "optim",
    "train",
    # deployment
    "io",
    "onnx",
    "profiles",
    "runtime",
    "BudgetError",
    "CompressionReport",
    "compress",
]
