"""hwreg_rs: hardware regularization with a Rust core.

Train and compress neural networks so that they obey the limits of the
hardware they will run on, then run them with exact int8 and sparse kernels.
"""

from __future__ import annotations

from . import _native
from ._native import active_isa, num_threads, supported_isas
from .gemm import Int8Linear, PackedMatrix, matmul_integer, pack_int8, qlinear_matmul
from .quant import QParams, calibrate, dequantize, dynamic_quantize, quantize
from . import prune, sparse

__version__: str = _native.__version__

__all__ = [
    "__version__",
    "Int8Linear",
    "PackedMatrix",
    "matmul_integer",
    "pack_int8",
    "qlinear_matmul",
    "active_isa",
    "num_threads",
    "supported_isas",
    # quantization
    "QParams",
    "calibrate",
    "dequantize",
    "dynamic_quantize",
    "quantize",
    "prune",
    "sparse",
]
