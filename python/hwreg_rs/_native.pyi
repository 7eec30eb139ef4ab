# Stubs for the compiled module; checked against it by mypy.stubtest in CI.
import numpy as np
import numpy.typing as npt

__version__: str

def active_isa() -> str: ...
def supported_isas() -> list[str]: ...
def _set_isa(name: str) -> None: ...
def num_threads() -> int: ...

# quantization (rust/python/src/quant.rs)
def quantize_linear(
    x: npt.NDArray[np.float32],
    scale: npt.NDArray[np.float32],
    zero_point: npt.NDArray[np.int32],
    axis: int | None,
    dtype: str,
    qrange: tuple[int, int] | None = None,
    out: npt.NDArray[np.int8] | npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.int8] | npt.NDArray[np.uint8]: ...
def dequantize_linear(
    q: npt.NDArray[np.int8] | npt.NDArray[np.uint8],
    scale: npt.NDArray[np.float32],
    zero_point: npt.NDArray[np.int32],
    axis: int | None,
    out: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]: ...
def dynamic_quantize_linear(x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.uint8], float, int]: ...
def calibrate(
    x: npt.NDArray[np.float32],
    axis: int | None,
    method: str,
    percentile: float,
    qmin: int,
    qmax: int,
    symmetric: bool,
    symmetric_zero_point: int,
    power_of_two: bool,
    bins: int,
) -> tuple[list[float], list[int], list[float], list[float]]: ...
