# Stubs for the compiled module; checked against it by mypy.stubtest in CI.
from typing import Any, final

import numpy as np
import numpy.typing as npt

__version__: str

def active_isa() -> str: ...
def supported_isas() -> list[str]: ...
def _set_isa(name: str) -> None: ...
def num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def gemm_parallel_min_work() -> int: ...

# int4 (packed 4-bit weights)
@final
class _Int4Weight:
    @property
    def n(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def ngroups(self) -> int: ...
    @property
    def nbytes(self) -> int: ...

def _int4_pack(
    packed: npt.NDArray[np.uint8],
    in_features: int,
    group_size: int | None,
    scales: npt.NDArray[np.float32],
    zero_points: npt.NDArray[np.uint8] | None,
) -> _Int4Weight: ...
def _int4_linear(
    x: npt.NDArray[np.float32], w: _Int4Weight, bias: npt.NDArray[np.float32] | None, relu: bool
) -> npt.NDArray[np.float32]: ...
def _int4_group_sums(x_q: npt.NDArray[np.uint8], w: _Int4Weight) -> npt.NDArray[np.int32]: ...

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
    a: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    a_zero_point: npt.NDArray[np.int32],
    b: _PackedB | npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    b_zero_point: npt.NDArray[np.int32] | None = None,
) -> npt.NDArray[np.int32]: ...
def _qlinear_matmul(
    a: npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    a_scale: npt.NDArray[np.float32],
    a_zero_point: npt.NDArray[np.int32],
    b: _PackedB | npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    b_scale: npt.NDArray[np.float32],
    y_scale: float,
    y_zero_point: int,
    y_signed: bool,
    b_zero_point: npt.NDArray[np.int32] | None = None,
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
# --- prune (issue 3)
def prune_smallest(
    scores: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    k: int,
    eligible: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.bool_]: ...
def nm_keep(w: npt.NDArray[np.float32] | npt.NDArray[np.float64], n: int, m: int) -> npt.NDArray[np.bool_]: ...

# --- sparse (issue 3)
@final
class SparseMatrix:
    @staticmethod
    def bsr_f32(w: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_] | None, r: int, c: int) -> SparseMatrix: ...
    @staticmethod
    def bsr_i8(
        w: npt.NDArray[np.int8], scale: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_] | None, r: int, c: int
    ) -> SparseMatrix: ...
    @staticmethod
    def nm_f32(w: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_] | None, n: int, m: int) -> SparseMatrix: ...
    @staticmethod
    def nm_i8(
        w: npt.NDArray[np.int8], scale: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_] | None, n: int, m: int
    ) -> SparseMatrix: ...
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def format(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def block(self) -> tuple[int, int]: ...
    @property
    def nnz(self) -> int: ...
    @property
    def stored(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def to_dense(self) -> npt.NDArray[np.float32] | npt.NDArray[np.int8]: ...
    def scale(self) -> npt.NDArray[np.float32] | None: ...
    def linear(
        self, x: npt.NDArray[np.float32], bias: npt.NDArray[np.float32] | None = None, relu: bool = False
    ) -> npt.NDArray[np.float32]: ...
    def linear_quantized(
        self,
        xq: npt.NDArray[np.uint8],
        x_scale: npt.NDArray[np.float32],
        x_zero_point: npt.NDArray[np.uint8],
        bias: npt.NDArray[np.float32] | None = None,
        relu: bool = False,
    ) -> npt.NDArray[np.float32]: ...

def quantize_weight_rows(
    w: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_] | None = None
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]: ...
def quantize_activation_rows(
    x: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.uint8]]: ...
# conv (issue 4): im2col / col2im / pooling over C-contiguous float32 NCHW arrays
def im2col(
    x: npt.NDArray[np.float32] | npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    pad_value: float = 0.0,
) -> npt.NDArray[Any]: ...
# channels-last (n, h, w, c) kernels of the int8 runtime; columns in (ky, kx, c) order
def im2col_nhwc(
    x: npt.NDArray[np.float32] | npt.NDArray[np.uint8] | npt.NDArray[np.int8],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    pad_value: float = 0.0,
) -> npt.NDArray[Any]: ...
def pool2d_nhwc(
    x: npt.NDArray[np.float32],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    kind: str,
) -> npt.NDArray[np.float32]: ...
# exact int8 depthwise conv (channel multiplier 1), channels-last: x uint8 (n, h, w, c) with a zero
# point and scale per image, weight int8 (kh, kw, c), padding (top, left, bottom, right) a real zero;
# output (acc * scales[i]) * col_scale[c] + bias[c] (then ReLU) as the GEMM's float step
def depthwise_conv2d_nhwc(
    x: npt.NDArray[np.uint8],
    zero_points: npt.NDArray[np.int32],
    scales: npt.NDArray[np.float32],
    weight: npt.NDArray[np.int8],
    col_scale: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    relu: bool,
) -> npt.NDArray[np.float32]: ...
def depthwise_conv2d_nhwc_i32(
    x: npt.NDArray[np.uint8],
    zero_points: npt.NDArray[np.int32],
    weight: npt.NDArray[np.int8],
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> npt.NDArray[np.int32]: ...
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

# runtime (rust/python/src/runtime.rs)
@final
class _GraphPlan:
    def __new__(
        cls,
        nodes: list[tuple[str, list[int], int, dict[str, Any]]],
        inputs: list[int],
        input_dims: list[list[int]],
        outputs: list[int],
    ) -> _GraphPlan: ...
    def forward(self, inputs: list[npt.NDArray[np.float32]], threads: int) -> list[npt.NDArray[np.float32]]: ...
    def forward_ready(self, x: object, threads: int | None = None) -> npt.NDArray[np.float32] | None: ...
    def forward_timed(
        self, inputs: list[npt.NDArray[np.float32]], threads: int
    ) -> tuple[list[npt.NDArray[np.float32]], list[float]]: ...
    def output_dims(self) -> list[list[int]]: ...
    @property
    def buffers(self) -> int: ...
    @property
    def allocations(self) -> int: ...
    @property
    def uint8_values(self) -> list[int]: ...

@final
class _ReadyPredict:
    def __new__(cls, plan: _GraphPlan, fallback: object, threads: int | None = None) -> _ReadyPredict: ...
    def predict(self, x: object, *more: object) -> object: ...
    def __reduce__(self) -> tuple[object, tuple[object, str]]: ...
    def set_threads(self, n: int | None) -> None: ...

def _local_threads(n: int | None) -> int | None: ...
def _quantize_fixed_u8(x: npt.NDArray[np.float32], scale: float, zero_point: int) -> npt.NDArray[np.uint8]: ...

# nn kernels (float32, forward and backward): row ops over C-contiguous (rows, d) arrays, GELU / erf
# elementwise, the depthwise convolution over NCHW with padding (top, left, bottom, right)
def layer_norm(
    x: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32] | None,
    bias: npt.NDArray[np.float32] | None,
    eps: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def layer_norm_backward(
    dy: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    mean: npt.NDArray[np.float32],
    inv_std: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32] | None,
    want_dbias: bool,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None, npt.NDArray[np.float32] | None]: ...
def softmax(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
def softmax_backward(y: npt.NDArray[np.float32], dy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
def log_softmax(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
def log_softmax_backward(y: npt.NDArray[np.float32], dy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
def gelu(x: npt.NDArray[np.float32], approximate: str = "none") -> npt.NDArray[np.float32]: ...
def gelu_backward(
    x: npt.NDArray[np.float32], dy: npt.NDArray[np.float32], approximate: str = "none"
) -> npt.NDArray[np.float32]: ...
def erf(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
def depthwise_conv2d(
    x: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> npt.NDArray[np.float32]: ...
def depthwise_conv2d_backward(
    dy: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32],
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    want_dbias: bool,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32] | None]: ...
