# Stubs for the compiled module; checked against it by mypy.stubtest in CI.
import numpy as np
import numpy.typing as npt

__version__: str

def active_isa() -> str: ...
def supported_isas() -> list[str]: ...
def _set_isa(name: str) -> None: ...
def num_threads() -> int: ...

# conv (issue 4): im2col / col2im / pooling over C-contiguous float32 NCHW arrays
def im2col(
    x: npt.NDArray[np.float32], kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> npt.NDArray[np.float32]: ...
def col2im(
    cols: npt.NDArray[np.float32],
    input_shape: tuple[int, int, int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> npt.NDArray[np.float32]: ...
def max_pool2d(
    x: npt.NDArray[np.float32], kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def max_pool2d_backward(
    grad: npt.NDArray[np.float32],
    indices: npt.NDArray[np.int64],
    input_shape: tuple[int, int, int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> npt.NDArray[np.float32]: ...
def avg_pool2d(
    x: npt.NDArray[np.float32], kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> npt.NDArray[np.float32]: ...
def avg_pool2d_backward(
    grad: npt.NDArray[np.float32],
    input_shape: tuple[int, int, int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> npt.NDArray[np.float32]: ...
