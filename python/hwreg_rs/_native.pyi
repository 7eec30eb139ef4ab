# Stubs for the compiled module; checked against it by mypy.stubtest in CI.
from typing import final

import numpy as np
import numpy.typing as npt

__version__: str

def active_isa() -> str: ...
def supported_isas() -> list[str]: ...
def _set_isa(name: str) -> None: ...
def num_threads() -> int: ...

# gemm (exact int8 GEMM)
@final
class _PackedB:
    @property
    def k(self) -> int: ...
    @property
    def n(self) -> int: ...
    @property
    def signed(self) -> bool: ...
    @property
    def nbytes(self) -> int: ...
    def unpack(self) -> npt.NDArray[np.int32]: ...

def _pack_b(b: npt.NDArray[np.uint8] | npt.NDArray[np.int8], zero_point: npt.NDArray[np.int32], transposed: bool) -> _PackedB: ...
def _matmul_integer(
    a: npt.NDArray[np.uint8] | npt.NDArray[np.int8], a_zero_point: npt.NDArray[np.int32], b: _PackedB
) -> npt.NDArray[np.int32]: ...
def _qlinear_matmul(
    a: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    a_scale: npt.NDArray[np.float32],
    a_zero_point: npt.NDArray[np.int32],
    b: _PackedB,
    b_scale: npt.NDArray[np.float32],
    y_scale: float,
    y_zero_point: int,
    y_signed: bool,
) -> npt.NDArray[np.uint8] | npt.NDArray[np.int8]: ...
def _linear_dynamic(
    x: npt.NDArray[np.float32],
    b: _PackedB,
    col_scale: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None,
    relu: bool,
) -> npt.NDArray[np.float32]: ...
def _linear_static(
    x_q: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    x_scale: npt.NDArray[np.float32],
    x_zero_point: npt.NDArray[np.int32],
    b: _PackedB,
    col_scale: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None,
    relu: bool,
    y_scale: float | None,
    y_zero_point: int,
    y_signed: bool,
) -> npt.NDArray[np.float32] | npt.NDArray[np.uint8] | npt.NDArray[np.int8]: ...
