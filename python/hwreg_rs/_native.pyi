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

# optim (issue 4): fused in-place optimizer updates on C-contiguous float32 arrays
def adam_step(
    w: npt.NDArray[np.float32],
    grad: npt.NDArray[np.float32],
    exp_avg: npt.NDArray[np.float32],
    exp_avg_sq: npt.NDArray[np.float32],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    bias_correction1: float,
    bias_correction2_sqrt: float,
) -> None: ...
def sgd_momentum_step(
    w: npt.NDArray[np.float32],
    grad: npt.NDArray[np.float32],
    buf: npt.NDArray[np.float32],
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> None: ...
