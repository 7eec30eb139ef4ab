"""Int8 runtime models: convert a trained model, run it, save it to one file.

:func:`convert` turns a trained model — a :class:`hwreg_rs.nn.Sequential`, or
any :class:`hwreg_rs.nn.Graph` such as an imported ONNX model — into a
:class:`RuntimeModel`: a graph of runtime ops, BatchNorm folded into the preceding Linear or Conv2d,
weights quantized per output channel (on the QAT grid when the layer was
trained with fake quantization) and packed once, ReLU fused into the output
step, convolutions run as im2col plus the int8 GEMM, pruned layers stored in
the sparse format the chooser finds fastest on this machine. Activations are
quantized on the fly, one scale per row (dynamic quantization), so no
calibration data is needed and accuracy follows the float model closely.
Grouped and depthwise convolutions run in exact integer arithmetic too; every
other op of a graph (residual Add, Concat, attention's MatMul and Softmax,
LayerNorm, GELU, ...) runs in float32 as the registered op of :mod:`hwreg_rs.nn`.
Consecutive single-input ops form chains that run as one planned step
(channels-last between convolutions, runs of int8 Linear layers as one native call).

A runtime model predicts float outputs from float inputs, saves to one
``.hwreg`` file (see :mod:`hwreg_rs.io`; weights, scales and the layer list,
no code) and pickles through the same arrays, so it can be shipped to worker
processes.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from . import _native, _planner, io, sparse
from ._filespec import MAX_ELEMENTS, MAX_PAD, Spec
from ._validate import check_int
from .config import MAX_THREADS, num_threads
from .gemm import Int8Linear
from .int4 import GROUP_SIZES, Int4Linear, QuantizedInt4, quantize_weight
from .nn import functional as F
from .nn.conv import AvgPool2d, Conv2d, MaxPool2d
from .nn.layers import BatchNorm1d, BatchNorm2d, Dropout, Flatten, Linear, ReLU
from .nn import registry
from .nn.graph import Graph
from .nn.module import Module
from .quant import calibrate
from ._layerwork import LayerWork

__all__ = ["RuntimeModel", "RuntimeNode", "convert", "load", "FORMAT"]

FORMAT = "hwreg-runtime"
FORMAT_VERSION = 2  # 2: a graph of nodes; version-1 files (a chain of ops) still load


# ---------------------------------------------------------------------------
# Operations. Each knows how to run, how to describe itself for the file
# (a JSON spec plus named arrays) and what it costs (for the cost model).
# ---------------------------------------------------------------------------


class _Op:
    kind = ""

    def forward(self, *xs: np.ndarray) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        return {"op": self.kind}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        n_in = int(np.prod(shape)) * 4
        n_out = int(np.prod(self.out_shape(shape))) * 4
        return LayerWork(name, "elementwise", 0, 0, n_in, n_out)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())


def _quantize_weight(w: np.ndarray, module: Module) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 weights; on the QAT grid when the layer has one.

    ``w`` is the effective (already fake-quantized) weight; the grid's scale
    comes from the raw weight, as it did in training.
    """
    w2 = w.reshape(w.shape[0], -1).astype(np.float64)
    fq = getattr(module, "weight_fake_quant", None)
    scale_for = getattr(fq, "scale_for", None)
    if scale_for is not None:
        scale = np.asarray(scale_for(module.weight.data), np.float64).reshape(-1)
        scale = np.broadcast_to(scale, (w.shape[0],)) if scale.size == 1 else scale
        qmin, qmax = int(fq.qmin), int(fq.qmax)
    else:
        amax = np.abs(w2).max(axis=1) if w2.size else np.zeros(w.shape[0])
        scale = np.where(amax > 0, amax / 127.0, 1.0)
        qmin, qmax = -127, 127
    q = np.clip(np.rint(w2 / scale[:, None]), qmin, qmax).astype(np.int8)
    return q, scale.astype(np.float32)


class _OnInt8Linear(_Op):
    """An operation whose weights live in an :class:`Int8Linear`.

    ``act``: the static (calibrated) uint8 quantization of its float input, ``(scale, zero_point)``
    per tensor (``QuantizeLinear``: divide, round half to even, saturate); ``None`` quantizes each
    row / image dynamically. Set by :func:`convert` with ``calibration``, saved as the spec fields
    ``input_scale`` / ``input_zero_point``.
    """

    layer: Int8Linear
    act: tuple[np.float32, int] | None = None

    def _quantize_input(self, x: np.ndarray, *, one_zero_point: bool = False
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(q uint8 like x, scale (n,), zp (n,) int32)``: static when ``act`` is set, else per image."""
        if self.act is None:
            return _quantize_images(x, one_zero_point=one_zero_point)
        s, z = self.act
        q = _native._quantize_fixed_u8(np.ascontiguousarray(x, dtype=np.float32), float(s), int(z))
        n = x.shape[0]
        return q, np.full(n, s, np.float32), np.full(n, z, np.int32)

    def _act_spec(self) -> dict[str, Any]:
        if self.act is None:
            return {}
        return {"input_scale": float(self.act[0]), "input_zero_point": int(self.act[1])}

    def _act_from(self, s: Spec) -> "_OnInt8Linear":
        self.act = s.activation_qparams()
        return self

    @staticmethod
    def _layer_from(s: Spec, in_features: int | None = None) -> Int8Linear:
        """The int8 weight, its per-channel scales and bias from a file, every array checked."""
        s.only(["weight_q", "weight_scale", "bias"])
        wq = s.array("weight_q", np.int8, ndim=2)
        out, k = wq.shape
        if out < 1 or k < 1 or (in_features is not None and k != in_features):
            raise s.fail("array 'weight_q'", f"has shape {wq.shape}; expected (out, {in_features or 'in'})")
        scale = s.array("weight_scale", np.float32, shape=(out,), finite=True, positive=True)
        bias = s.array("bias", np.float32, shape=(out,), finite=True, optional=True)
        # Copies: a live model must not keep views into the file it came from.
        return Int8Linear(wq.copy(), scale.copy(), None if bias is None else bias.copy(), relu=s.bool("relu"))

    def arrays(self) -> dict[str, np.ndarray]:
        a = {"weight_q": self.layer.weight_q, "weight_scale": self.layer.weight_scale}
        if self.layer.bias is not None:
            a["bias"] = self.layer.bias
        return a


class _Dense(_OnInt8Linear):
    """Linear layer on the int8 GEMM (activations quantized per row on the fly)."""

    kind = "linear"

    def __init__(self, layer: Int8Linear) -> None:
        self.layer = layer

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.act is None:
            return self.layer(x)
        x = np.asarray(x, dtype=np.float32)
        self.out_shape(x.shape)
        q, _, _ = self._quantize_input(x)
        return self.layer.forward_quantized(q, self.act[0], self.act[1])

    def spec(self) -> dict[str, Any]:
        return {"op": self.kind, "relu": bool(self.layer.relu), **self._act_spec()}

    @classmethod
    def from_file(cls, s: Spec) -> "_Dense":
        return cls(cls._layer_from(s))._act_from(s)  # type: ignore[return-value]

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape or shape[-1] != self.layer.in_features:
            raise ValueError(f"linear expects inputs (..., {self.layer.in_features}); got shape {shape}")
        return shape[:-1] + (self.layer.out_features,)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        rows = int(np.prod(shape[:-1]))
        k, n = self.layer.in_features, self.layer.out_features
        return LayerWork(name, "linear", rows * k * n, k * n + 8 * n, rows * k * 4, rows * n * 4, "int8")


class _Int4Dense(_Op):
    """Linear layer with int4 weights (two per byte, per-channel or per-group scales) on the int4 kernels.

    The file stores the packed nibbles as uint8 ``(out, ceil(in / 2))``: half
    the bytes of the int8 layer's weight.
    """

    kind = "int4_linear"

    def __init__(self, layer: Int4Linear) -> None:
        self.layer = layer

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.layer(x)

    def spec(self) -> dict[str, Any]:
        return {"op": self.kind, "relu": bool(self.layer.relu), "in": self.layer.in_features,
                "out": self.layer.out_features, "group_size": self.layer.group_size}

    def arrays(self) -> dict[str, np.ndarray]:
        w = self.layer.weight
        a = {"packed": w.packed, "scales": w.scales}
        if w.zero_points is not None:
            a["zero_points"] = w.zero_points
        if self.layer.bias is not None:
            a["bias"] = self.layer.bias
        return a

    @classmethod
    def from_file(cls, s: Spec) -> "_Int4Dense":
        out, inp = s.int("out", lo=1), s.int("in", lo=1)
        if out * inp > MAX_ELEMENTS:
            raise s.fail("'out' x 'in'", f"= {out} x {inp} exceeds the bound of {MAX_ELEMENTS} weights")
        group = s.spec.get("group_size", ...)
        if group is ... or group not in GROUP_SIZES or isinstance(group, bool):
            raise s.fail("'group_size'", f"must be one of {list(GROUP_SIZES)}; got {group!r}")
        ng = 1 if group is None else -(-inp // group)
        s.only(["packed", "scales", "zero_points", "bias"])
        packed = s.array("packed", np.uint8, shape=(out, (inp + 1) // 2))
        scales = s.array("scales", np.float32, shape=(out, ng), finite=True, positive=True)
        zps = s.array("zero_points", np.uint8, shape=(out, ng), optional=True)
        if zps is not None and zps.size and int(zps.max()) > 15:
            raise s.fail("array 'zero_points'", f"must lie in [0, 15]; got {int(zps.max())}")
        bias = s.array("bias", np.float32, shape=(out,), finite=True, optional=True)
        # Copies: a live model must not keep views into the file it came from.
        w = QuantizedInt4(packed.copy(), scales.copy(), None if zps is None else zps.copy(), inp, group)
        try:
            layer = Int4Linear(w, None if bias is None else bias.copy(), relu=s.bool("relu"))
        except (ValueError, TypeError) as e:
            raise s.fail("the int4 weight", f"is invalid ({e})") from None
        return cls(layer)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape or shape[-1] != self.layer.in_features:
            raise ValueError(f"int4_linear expects inputs (..., {self.layer.in_features}); got shape {shape}")
        return shape[:-1] + (self.layer.out_features,)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        # Weights move at 4 bits (packed nibbles + scales + bias); the profile knows the kernel's speed.
        rows = int(np.prod(shape[:-1]))
        k, n = self.layer.in_features, self.layer.out_features
        return LayerWork(name, "linear", rows * k * n, self.layer.nbytes, rows * k * 4, rows * n * 4, "int4",
                         gemm=(rows, k, n), int4_group=self.layer.group_size)


class _Sparse(_Op):
    """Linear layer with a pruned weight in a sparse format (float32 or int8)."""

    kind = "sparse_linear"

    def __init__(self, matrix: Any, path: str, block: tuple[int, int] | None, bias: np.ndarray | None,
                 relu: bool) -> None:
        self.matrix, self.path, self.block, self.bias, self.relu = matrix, path, block, bias, relu

    def forward(self, x: np.ndarray) -> np.ndarray:
        lead = x.shape[:-1]
        y = self.matrix.matmul(x.reshape(-1, x.shape[-1]), bias=self.bias, relu=self.relu)
        return y.reshape(lead + (y.shape[-1],))

    def spec(self) -> dict[str, Any]:
        out, inp = self.matrix.shape
        return {"op": self.kind, "path": self.path, "block": list(self.block) if self.block else None,
                "relu": bool(self.relu), "in": int(inp), "out": int(out)}

    def arrays(self) -> dict[str, np.ndarray]:
        # Kept values in row-major order plus a bit mask: compact for any format,
        # and the format is rebuilt exactly from them.
        dense = self.matrix.to_dense()
        mask = dense != 0
        a = {"values": dense[mask], "mask_bits": np.packbits(mask.ravel())}
        if self.matrix.scale is not None:
            a["scale"] = np.asarray(self.matrix.scale, np.float32)
        if self.bias is not None:
            a["bias"] = self.bias
        return a

    @classmethod
    def from_file(cls, s: Spec) -> "_Sparse":
        path = s.str("path", _SPARSE_PATHS)
        out, inp = s.int("out", lo=1), s.int("in", lo=1)
        if out * inp > MAX_ELEMENTS:
            raise s.fail("'out' x 'in'", f"= {out} x {inp} exceeds the bound of {MAX_ELEMENTS} weights")
        block = None
        if s.spec.get("block") is not None:
            block = s.ints("block", 2, lo=1, hi=64)
        elif path.startswith(("bsr", "nm")):
            raise s.fail("'block'", f"is required by path {path!r}")
        int8 = path.endswith("int8")
        s.only(["values", "mask_bits", "scale", "bias"])
        bits = s.array("mask_bits", np.uint8, shape=((out * inp + 7) // 8,))
        mask = np.unpackbits(bits, count=out * inp).astype(bool).reshape(out, inp)
        kept = int(mask.sum())
        values = s.array("values", np.int8 if int8 else np.float32, shape=(kept,), finite=not int8)
        scale = s.array("scale", np.float32, shape=(out,), finite=True, positive=True, optional=not int8)
        bias = s.array("bias", np.float32, shape=(out,), finite=True, optional=True)
        dense = np.zeros((out, inp), values.dtype)
        dense[mask] = values
        # int8: the stored values are exact multiples of the row scales.
        w = dense.astype(np.float32) * scale[:, None] if scale is not None else dense
        try:
            matrix = sparse.Choice(path, block).build(w, mask)
        except (ValueError, TypeError) as e:
            raise s.fail(f"path {path!r} with block {block}", f"cannot hold this weight ({e})") from None
        return cls(matrix, path, block, None if bias is None else bias.copy(), s.bool("relu"))

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes) + (0 if self.bias is None else self.bias.nbytes)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape or shape[-1] != self.matrix.shape[1]:
            raise ValueError(f"sparse_linear expects inputs (..., {self.matrix.shape[1]}); got shape {shape}")
        return shape[:-1] + (self.matrix.shape[0],)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        rows = int(np.prod(shape[:-1]))
        n, k = self.matrix.shape
        pattern = "n:m" if self.path.startswith("nm") else "block" if self.path.startswith("bsr") else "unstructured"
        prec = "int8" if self.path.endswith("int8") else "fp32"
        return LayerWork(name, "linear", rows * k * n, self.nbytes, rows * k * 4, rows * n * 4, prec,
                         density=self.matrix.density, pattern=pattern, sparse_kernel=True)  # stored sparse: runs sparse


class _Conv(_OnInt8Linear):
    """Conv2d as im2col plus the int8 GEMM, computed channels-last (NHWC).

    ``forward`` takes and returns NCHW float32 like the model it came from;
    inside a :class:`RuntimeModel` consecutive convolutions and pools pass
    NHWC tensors to each other (:func:`_plan`), so only the model's input and
    its last convolutional output change layout.
    """

    kind = "conv2d"

    def __init__(self, layer: Int8Linear, in_channels: int, kernel_size: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int]) -> None:
        self.layer, self.in_channels = layer, in_channels
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), tuple(padding)
        # The GEMM reads im2col columns in (ky, kx, c) order: the same weight
        # with its input axes moved, packed once (the file keeps (c, ky, kx)).
        kh, kw = self.kernel_size
        oc = layer.out_features
        wq = layer.weight_q.reshape(oc, in_channels, kh, kw).transpose(0, 2, 3, 1).reshape(oc, -1)
        self._hwc = Int8Linear(np.ascontiguousarray(wq), layer.weight_scale, layer.bias, relu=layer.relu)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"conv2d expects input (N, {self.in_channels}, H, W); got shape {x.shape}")
        return np.ascontiguousarray(self.forward_nhwc(x, nchw_in=True).transpose(0, 3, 1, 2))

    def forward_nhwc(self, x: np.ndarray, nchw_in: bool = False) -> np.ndarray:
        """NHWC float32 output ``(N, OH, OW, C_out)`` of an NHWC input (or NCHW with ``nchw_in``)."""
        n = x.shape[0]
        h, w = x.shape[2:4] if nchw_in else x.shape[1:3]
        oh, ow = F.out_size(h, w, self.kernel_size, self.stride, self.padding)
        # Quantize each image once (uint8, DynamicQuantizeLinear's formula per
        # image), then unfold the uint8 image: every pixel is quantized once
        # instead of kh*kw times, and the columns are a quarter of the float ones.
        xq, scale, zp = self._quantize_input(x, one_zero_point=True)
        if nchw_in:  # a quarter of the bytes of the float input to move
            xq = np.ascontiguousarray(xq.transpose(0, 2, 3, 1)) if self.in_channels > 1 else xq.reshape(n, h, w, 1)
        cols = _native.im2col_nhwc(xq, self.kernel_size, self.stride, self.padding, float(zp[0]))
        hwc = self._hwc
        y = _native._linear_static(cols, np.repeat(scale, oh * ow), np.repeat(zp, oh * ow), hwc._packed._packed,
                                   hwc.weight_scale, hwc.bias, hwc.relu, None, 0, False)
        return y.reshape(n, oh, ow, -1)

    def spec(self) -> dict[str, Any]:
        return {"op": self.kind, "relu": bool(self.layer.relu), "in_channels": self.in_channels,
                "out_channels": self.layer.out_features, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding), **self._act_spec()}

    @classmethod
    def from_file(cls, s: Spec) -> "_Conv":
        c = s.int("in_channels", lo=1)
        k = s.ints("kernel_size", 2, lo=1, hi=MAX_PAD)
        layer = cls._layer_from(s, c * k[0] * k[1])
        if s.int("out_channels", lo=1) != layer.out_features:
            raise s.fail("'out_channels'", f"= {s.spec['out_channels']} disagrees with weight_q's "
                                           f"{layer.out_features} rows")
        return cls(layer, c, k, s.ints("stride", 2, lo=1, hi=MAX_PAD),  # type: ignore[return-value]
                   s.ints("padding", 2, hi=MAX_PAD))._act_from(s)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"conv2d expects inputs (N, {self.in_channels}, H, W); got shape {shape}")
        oh, ow = F.out_size(shape[2], shape[3], self.kernel_size, self.stride, self.padding)
        return (shape[0], self.layer.out_features, oh, ow)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        out = self.out_shape(shape)
        rows = out[0] * out[2] * out[3]
        k, n = self.layer.in_features, self.layer.out_features
        # im2col writes and the GEMM reads the column matrix: count it as moved input.
        return LayerWork(name, "conv2d", rows * k * n, k * n + 8 * n, rows * k * 4 * 2, rows * n * 4, "int8")


def _quantize_images(x: np.ndarray, *, one_zero_point: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image to uint8 with the kernel crate's one dynamic activation quantizer (the rows of the
    dense GEMM and the sparse products round the same way): ``(q like x, scale (n,), zp (n,) int32)``.

    ``one_zero_point``: the NHWC unfold pads with a single value, so when the images' zero points
    differ the batch is quantized as one tensor.
    """
    n = x.shape[0]
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(n, -1)
    q, scale, zp = _native.quantize_activation_rows(flat)
    if one_zero_point and n > 1 and np.any(zp != zp[0]):
        q, scale, zp = _native.quantize_activation_rows(flat.reshape(1, -1))
        scale, zp = np.repeat(scale, n), np.repeat(zp, n)
    return q.reshape(x.shape), scale, zp.astype(np.int32)


class _Pool(_Op):
    def __init__(self, kind: str, kernel_size: Any, stride: Any, padding: Any) -> None:
        self.kind = kind
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), tuple(padding)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """NCHW in and out, through the channels-last kernel (no argmax to keep,
        unlike the training pool): moving the axes costs less than pooling
        plane by plane."""
        if x.ndim != 4:
            raise ValueError(f"{self.kind} expects input (N, C, H, W); got shape {x.shape}")
        y = self.forward_nhwc(np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1)))
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2))

    def forward_nhwc(self, x: np.ndarray) -> np.ndarray:
        """The same pooling of an NHWC float32 tensor, NHWC out."""
        kind = "max" if self.kind == "maxpool2d" else "avg"
        return _native.pool2d_nhwc(x, self.kernel_size, self.stride, self.padding, kind)

    def spec(self) -> dict[str, Any]:
        return {"op": self.kind, "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    @classmethod
    def from_file(cls, s: Spec) -> "_Pool":
        s.only([])
        k = s.ints("kernel_size", 2, lo=1, hi=MAX_PAD)
        p = s.ints("padding", 2, hi=MAX_PAD)
        if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
            raise s.fail("'padding'", f"{list(p)} must be at most half the kernel size {list(k)}")
        return cls(s.str("op"), k, s.ints("stride", 2, lo=1, hi=MAX_PAD), p)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 4:
            raise ValueError(f"{self.kind} expects inputs (N, C, H, W); got shape {shape}")
        return shape[:2] + F.out_size(shape[2], shape[3], self.kernel_size, self.stride, self.padding)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        return LayerWork(name, "pool", 0, 0, int(np.prod(shape)) * 4, int(np.prod(self.out_shape(shape))) * 4,
                         pixels=int(shape[0] * shape[2] * shape[3]))


class _Flatten(_Op):
    kind = "flatten"

    def __init__(self, start_dim: int = 1) -> None:
        self.start_dim = start_dim

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[: self.start_dim] + (-1,))

    def spec(self) -> dict[str, Any]:
        return {"op": self.kind, "start_dim": self.start_dim}

    @classmethod
    def from_file(cls, s: Spec) -> "_Flatten":
        s.only([])
        return cls(s.int("start_dim", lo=1, hi=8))

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) <= self.start_dim:
            raise ValueError(f"flatten(start_dim={self.start_dim}) needs more than {self.start_dim} dims; got {shape}")
        return shape[: self.start_dim] + (int(np.prod(shape[self.start_dim:])),)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        n = int(np.prod(shape)) * 4
        return LayerWork(name, "reshape", 0, 0, n, n)  # a view: no data moved


class _ReLU(_Op):
    kind = "relu"

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0, dtype=np.float32)

    @classmethod
    def from_file(cls, s: Spec) -> "_ReLU":
        s.only([])
        return cls()


class _Affine(_Op):
    """A BatchNorm in eval mode that had no Linear/Conv before it to fold into."""

    kind = "affine"

    def __init__(self, scale: np.ndarray, shift: np.ndarray) -> None:
        self.scale, self.shift = scale.astype(np.float32), shift.astype(np.float32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x * self.scale.reshape(shape) + self.shift.reshape(shape)).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"scale": self.scale, "shift": self.shift}

    @classmethod
    def from_file(cls, s: Spec) -> "_Affine":
        s.only(["scale", "shift"])
        scale = s.array("scale", np.float32, ndim=1, finite=True)
        return cls(scale, s.array("shift", np.float32, shape=scale.shape, finite=True))

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) < 2 or shape[1] != self.scale.size:
            raise ValueError(f"affine over {self.scale.size} channels expects inputs (N, {self.scale.size}, ...); "
                             f"got shape {shape}")
        return shape


class _Float(_Op):
    """Any registered :mod:`hwreg_rs.nn` op run in float32 as it is (eval mode): the ops of a graph
    that have no integer kernel (yet), such as residual Add, Concat, Softmax, LayerNorm, GELU."""

    kind = "float"

    def __init__(self, module: Module) -> None:
        self.module = module.eval()

    def forward(self, *xs: np.ndarray) -> Any:
        y = self.module.forward(*xs)
        if isinstance(y, tuple):
            return tuple(np.asarray(v, dtype=np.float32) if v.dtype.kind == "f" else v for v in y)
        return y if y.dtype == np.float32 or y.dtype.kind != "f" else y.astype(np.float32)

    def spec(self) -> dict[str, Any]:
        return {"op": self.kind, "type": self.module.op_type, "config": self.module.config()}

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.module.state_dict())

    @classmethod
    def from_file(cls, s: Spec) -> "_Float":
        op_type = s.str("type", sorted(registry.REGISTRY))
        config = s.spec.get("config") or {}
        if not isinstance(config, dict):
            raise s.fail("'config'", f"must be a JSON object; got {config!r}")
        try:
            module = registry.build(op_type, config)
            module.load_state_dict(dict(s.arrays))  # strict: names and shapes must match; copies the arrays
        except (ValueError, TypeError, KeyError, OverflowError) as e:
            raise s.fail(f"op {op_type!r}", f"cannot be rebuilt from config {config!r} and its arrays ({e})") from None
        return cls(module)

    def out_shape(self, *shapes: tuple[int, ...]) -> Any:
        return self.module.out_shape(*shapes)

    def work(self, name: str, *shapes: tuple[int, ...]) -> LayerWork:
        out = self.out_shape(*shapes)
        outs = out if (isinstance(out, tuple) and out and isinstance(out[0], tuple)) else (out,)
        n_in = sum(int(np.prod(s)) for s in shapes) * 4
        n_out = sum(int(np.prod(s)) for s in outs) * 4
        return LayerWork(name, "elementwise", 0, 0, n_in, n_out)


class _StaticAdd(_Op):
    """A residual ``a + b`` of a model converted with calibration, an input that a static layer also reads
    taken on that layer's uint8 grid: ``DequantizeLinear(QuantizeLinear(x))`` (divide, round half to even,
    saturate; then ``(q - zero_point) * scale`` in float32), the other as it is; the float32 sum. The native
    plan then passes that input as the uint8 the layer reads, as ORT's QDQ form quantizes an Add's inputs.

    ``acts``: ``(scale, zero_point)`` or ``None`` for ``a`` and ``b``; the file's ``a`` / ``b`` objects hold
    ``input_scale`` / ``input_zero_point`` (empty: float).
    """

    kind = "static_add"

    def __init__(self, acts: Sequence[tuple[np.float32, int] | None]) -> None:
        self.acts = tuple(acts)

    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = (_dequantized(x, act) for x, act in zip((a, b), self.acts))
        if a.shape != b.shape:
            raise ValueError(f"static_add expects inputs of one shape; got {a.shape} and {b.shape}")
        return a + b

    def spec(self) -> dict[str, Any]:
        def one(act: tuple[np.float32, int] | None) -> dict[str, Any]:
            return {} if act is None else {"input_scale": float(act[0]), "input_zero_point": int(act[1])}

        return {"op": self.kind, "a": one(self.acts[0]), "b": one(self.acts[1])}

    @classmethod
    def from_file(cls, s: Spec) -> "_StaticAdd":
        s.only([])
        return cls([Spec(s.spec.get(k), {}, f"{s.where} input {k!r}").activation_qparams() for k in ("a", "b")])

    def out_shape(self, *shapes: tuple[int, ...]) -> tuple[int, ...]:
        if len(shapes) != 2 or shapes[0] != shapes[1]:
            raise ValueError(f"static_add expects two inputs of one shape; got {shapes}")
        return shapes[0]

    def work(self, name: str, *shapes: tuple[int, ...]) -> LayerWork:
        n = int(np.prod(self.out_shape(*shapes)))
        return LayerWork(name, "elementwise", 0, 0, 2 * n * 4, n * 4)


def _dequantized(x: np.ndarray, act: tuple[np.float32, int] | None) -> np.ndarray:
    """``x`` as float32, through its static uint8 grid when it has one (what the plan's uint8 value holds)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if act is None:
        return x
    q = _native._quantize_fixed_u8(x, float(act[0]), int(act[1]))
    return (q.astype(np.int32) - np.int32(act[1])).astype(np.float32) * np.float32(act[0])


def _static_adds(nodes: list[RuntimeNode], shapes: dict[str, tuple[int, ...]]) -> None:
    """The residual Adds of image tensors (two 4-D inputs of one shape) whose inputs a static layer also
    reads become :class:`_StaticAdd`: such an input is taken on that layer's grid (calibrated from the same
    values), so the plan passes it as uint8 to both."""
    grid: dict[str, tuple[np.float32, int]] = {}
    for n in nodes:
        if isinstance(n.op, _OnInt8Linear) and n.op.act is not None and n.inputs:
            grid.setdefault(n.inputs[0], n.op.act)
    for i, n in enumerate(nodes):
        if not (isinstance(n.op, _Float) and n.op.module.op_type == "Add" and len(n.inputs) == 2):
            continue
        a, b = n.inputs
        if a in shapes and b in shapes and len(shapes[a]) == 4 and shapes[a] == shapes[b] and \
                (a in grid or b in grid):
            nodes[i] = dataclasses.replace(n, op=_StaticAdd([grid.get(a), grid.get(b)]))


class _GroupConv(_OnInt8Linear):
    """A grouped, depthwise, dilated or asymmetrically padded Conv2d in exact integer arithmetic.

    Each image is quantized to uint8 as :class:`_Conv` does; the products are
    summed in int32 over the ``(channel in group, ky, kx)`` window with the
    zero point folded out (``sum((q - zp) * w)``), then the float output step
    (``acc * x_scale * w_scale + bias``, ReLU) runs as in the GEMM.

    A depthwise conv (``groups == in_channels == out_channels``) runs in the
    native channels-last kernel (``_native.depthwise_conv2d_nhwc``, weight
    kept as ``(kh, kw, c)``); other grouped convs in NumPy
    (:meth:`_forward_numpy`). Both compute the same integers and the same
    float step, so they agree bit for bit.
    """

    kind = "group_conv2d"

    def __init__(self, layer: Int8Linear, in_channels: int, kernel_size: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int], dilation: Sequence[int], groups: int) -> None:
        self.layer, self.in_channels, self.groups = layer, int(in_channels), int(groups)
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)  # padding: (top, left, bottom, right)
        oc, (kh, kw) = layer.out_features, self.kernel_size
        cg = self.in_channels // self.groups
        self._w = layer.weight_q.reshape(self.groups, oc // self.groups, cg, kh, kw).astype(np.int32)
        self.depthwise = self.groups == self.in_channels == oc
        if self.depthwise:  # the native kernel's layout: (kh, kw, c), channels innermost
            self._dw_weight = np.ascontiguousarray(layer.weight_q.reshape(oc, kh, kw).transpose(1, 2, 0), np.int8)
            self._dw_col_scale = np.ascontiguousarray(np.broadcast_to(layer.weight_scale, (oc,)), np.float32)
            self._dw_bias = None if layer.bias is None else np.ascontiguousarray(layer.bias, np.float32)

    def _windows(self, q: np.ndarray) -> np.ndarray:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        t, l, b, r = self.padding
        q = np.pad(q, ((0, 0), (0, 0), (t, b), (l, r)))
        n, c, hp, wp = q.shape
        oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
        s = q.strides
        return np.lib.stride_tricks.as_strided(
            q, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw), writeable=False)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"conv2d expects input (N, {self.in_channels}, H, W); got shape {x.shape}")
        if not self.depthwise:
            return self._forward_numpy(x)
        return np.ascontiguousarray(self.forward_nhwc(x, nchw_in=True).transpose(0, 3, 1, 2))

    def forward_nhwc(self, x: np.ndarray, nchw_in: bool = False) -> np.ndarray:
        """NHWC float32 output ``(N, OH, OW, C_out)`` of an NHWC input (or NCHW with ``nchw_in``),
        as :meth:`_Conv.forward_nhwc`; the same values as :meth:`forward`."""
        if not self.depthwise:
            y = self._forward_numpy(x if nchw_in else np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
            return np.ascontiguousarray(y.transpose(0, 2, 3, 1))
        if x.ndim != 4 or x.shape[1 if nchw_in else 3] != self.in_channels:
            layout = f"(N, {self.in_channels}, H, W)" if nchw_in else f"(N, H, W, {self.in_channels})"
            raise ValueError(f"conv2d expects input {layout}; got shape {x.shape}")
        (sh, sw), (dh, dw), (t, l, b, r) = self.stride, self.dilation, self.padding
        # Per-image scale and zero point do not depend on the layout.
        xq, scale, zp = self._quantize_input(x)
        if nchw_in:  # a quarter of the bytes of the float input to move
            xq = np.ascontiguousarray(xq.transpose(0, 2, 3, 1))
        return _native.depthwise_conv2d_nhwc(xq, zp, scale, self._dw_weight, self._dw_col_scale, self._dw_bias,
                                             (sh, sw), (t, l, b, r), (dh, dw), bool(self.layer.relu))

    def _forward_numpy(self, x: np.ndarray) -> np.ndarray:
        """Any grouped conv, in NumPy: int32 sums over strided windows (NCHW in and out)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"conv2d expects input (N, {self.in_channels}, H, W); got shape {x.shape}")
        n = x.shape[0]
        xq, scale, zp = self._quantize_input(x)
        centred = xq.astype(np.int32) - zp.reshape(-1, 1, 1, 1)  # zero padding is then the real zero
        win = self._windows(centred)
        _, c, oh, ow, kh, kw = win.shape
        g = self.groups
        win = win.reshape(n, g, c // g, oh, ow, kh, kw)
        acc = np.einsum("ngcyxij,gocij->ngoyx", win, self._w, optimize=True).reshape(n, -1, oh, ow)
        # The GEMM's float output step: (acc * image scale) * channel scale + bias, in float32.
        y = acc.astype(np.float32) * scale.reshape(-1, 1, 1, 1)
        y *= self.layer.weight_scale.reshape(1, -1, 1, 1)
        if self.layer.bias is not None:
            y += self.layer.bias[None, :, None, None]
        if self.layer.relu:
            np.maximum(y, 0, out=y)
        return y.astype(np.float32, copy=False)

    def spec(self) -> dict[str, Any]:
        return {"op": self.kind, "relu": bool(self.layer.relu), "in_channels": self.in_channels,
                "out_channels": self.layer.out_features, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding), "dilation": list(self.dilation),
                "groups": self.groups, **self._act_spec()}

    @classmethod
    def from_file(cls, s: Spec) -> "_GroupConv":
        c, g = s.int("in_channels", lo=1), s.int("groups", lo=1)
        k = s.ints("kernel_size", 2, lo=1, hi=MAX_PAD)
        if c % g:
            raise s.fail("'groups'", f"= {g} does not divide in_channels {c}")
        layer = cls._layer_from(s, c // g * k[0] * k[1])
        if layer.out_features % g or s.int("out_channels", lo=1) != layer.out_features:
            raise s.fail("'out_channels'", f"= {s.spec['out_channels']} must equal weight_q's {layer.out_features} "
                                           f"rows, a multiple of groups {g}")
        return cls(layer, c, k, s.ints("stride", 2, lo=1, hi=MAX_PAD), s.ints("padding", 4, hi=MAX_PAD),
                   s.ints("dilation", 2, lo=1, hi=MAX_PAD), g)._act_from(s)  # type: ignore[return-value]

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"conv2d expects inputs (N, {self.in_channels}, H, W); got shape {shape}")
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        t, l, b, r = self.padding
        oh = (shape[2] + t + b - dh * (kh - 1) - 1) // sh + 1
        ow = (shape[3] + l + r - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"kernel {self.kernel_size} (dilation {self.dilation}) is larger than the padded "
                             f"input {shape[2:]}")
        return (shape[0], self.layer.out_features, oh, ow)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        out = self.out_shape(shape)
        rows = out[0] * out[2] * out[3]
        k, n = self.layer.in_features, self.layer.out_features
        return LayerWork(name, "conv2d", rows * k * n, k * n + 8 * n, int(np.prod(shape)) * 4, rows * n * 4, "int8")


_SPARSE_PATHS = ("csr_f32", "bsr_f32", "nm_f32", "csr_int8", "bsr_int8", "nm_int8")

_OPS: dict[str, Any] = {"linear": _Dense, "sparse_linear": _Sparse, "conv2d": _Conv, "maxpool2d": _Pool,
                        "avgpool2d": _Pool, "flatten": _Flatten, "relu": _ReLU, "affine": _Affine,
                        "float": _Float, "group_conv2d": _GroupConv, "int4_linear": _Int4Dense,
                        "static_add": _StaticAdd}


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeNode:
    """One op of a runtime graph: ``outputs = op(*inputs)``; ``name`` is the layer's name in the model."""

    name: str
    op: _Op
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _chain_nodes(ops: Sequence[_Op]) -> list[RuntimeNode]:
    nodes, value = [], "input"
    for i, op in enumerate(ops):
        nodes.append(RuntimeNode(str(i), op, (value,), (f"{i}:0",)))
        value = f"{i}:0"
    return nodes


class RuntimeModel:
    """An inference model on the int8 and sparse kernels: a graph of runtime ops.

    Build one with :func:`convert`; read one with :func:`load`.

    Parameters
    ----------
    nodes : list
        The operations: a list of ops (a chain, each reading the one before)
        or of :class:`RuntimeNode` (internal objects made by :func:`convert`).
    input_shape : tuple of int
        Shape of one sample of the first input (without the batch dimension).
    meta : dict, optional
        Free-form description saved with the model (e.g. class names).
    inputs, outputs : list of str, optional
        Value names of the graph's inputs and outputs (a chain: ``["input"]`` and its last value).
    constants : dict of str to ndarray, optional
        Constant values the nodes read.
    input_shapes : list of tuple of int, optional
        Sample shape of every input (several-input graphs).
    input_dtypes : list of str, optional
        NumPy dtype name of every input (default float32; int64 for token ids).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.mlp([8, 16, 3], rng=0).eval()
    >>> rt = hw.runtime.convert(net, input_shape=(8,))
    >>> x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    >>> bool(np.abs(rt.predict(x) - net(x)).max() < 0.05)
    True
    """

    def __init__(self, nodes: Sequence[Any], input_shape: Iterable[int], meta: dict[str, Any] | None = None,
                 *, threads: int | None = None, inputs: Sequence[str] | None = None,
                 outputs: Sequence[str] | None = None, constants: dict[str, np.ndarray] | None = None,
                 input_shapes: Sequence[Iterable[int]] | None = None,
                 input_dtypes: Sequence[str] | None = None) -> None:
        nodes = list(nodes)
        if nodes and not isinstance(nodes[0], RuntimeNode):
            nodes = _chain_nodes(nodes)
        self.nodes: list[RuntimeNode] = nodes
        self.input_shape = tuple(int(d) for d in input_shape)
        self.inputs = list(inputs) if inputs is not None else ["input"]
        self.outputs = list(outputs) if outputs is not None else [nodes[-1].outputs[0] if nodes else "input"]
        self.constants = {k: np.asarray(v) for k, v in (constants or {}).items()}
        shapes = [tuple(int(d) for d in s) for s in input_shapes] if input_shapes is not None else [self.input_shape]
        if len(shapes) != len(self.inputs):
            raise ValueError(f"input_shapes has {len(shapes)} entries for {len(self.inputs)} inputs")
        self.input_shapes = shapes
        self.input_dtypes = [np.dtype(d).name for d in (input_dtypes or ["float32"] * len(self.inputs))]
        if len(self.input_dtypes) != len(self.inputs) or any(d not in ("float32", "int32", "int64")
                                                             for d in self.input_dtypes):
            raise ValueError(f"input_dtypes must name float32, int32 or int64 for each input; got {self.input_dtypes}")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict; got {type(meta).__name__}")
        self.meta = dict(meta or {})
        self.threads = threads
        self._check_values()
        shapes = self.shapes(1)
        self._steps = _planner.steps(self.nodes, self.inputs, self.input_dtypes, self.outputs, self.constants,
                                     shapes, _batched(self, shapes))
        self._dtypes = [np.dtype(d) for d in self.input_dtypes]
        # The whole model one native segment: predict calls it directly.
        reads, call, writes = self._steps[0] if len(self._steps) == 1 else ((), None, ())
        whole = isinstance(call, _planner.Segment) and reads == tuple(self.inputs) and writes == tuple(self.outputs)
        self._whole = call if whole else None
        # One float32 input and one output: predict first offers x to the plan as it is (one native call that
        # takes it when it is already a C-contiguous float32 (N, *input_shape) array, else declines).
        one = whole and len(self.inputs) == len(self.outputs) == 1 and self.input_dtypes[0] == "float32"
        self._ready = call.plan.forward_ready if one and isinstance(call, _planner.Segment) else None
        self._bind_fast_predict()
        # After step i, the values no later step reads: predict drops them.
        last: dict[str, int] = {}
        for i, (reads, _, _) in enumerate(self._steps):
            for v in reads:
                last[v] = i
        self._free = [[v for v, j in last.items() if j == i and v not in self.outputs and v not in self.constants]
                      for i in range(len(self._steps))]

    def _check_values(self) -> None:
        """Every value read is an input, a constant or written by an earlier node, written once;
        every output exists."""
        defined = set(self.inputs) | set(self.constants)
        if len(defined) != len(self.inputs) + len(self.constants):
            raise ValueError("inputs and constants must have distinct names")
        for n in self.nodes:
            missing = [v for v in n.inputs if v not in defined]
            if missing:
                raise ValueError(f"node {n.name!r} reads {missing}, which no input, constant or earlier node "
                                 "writes")
            twice = [v for v in n.outputs if v in defined]
            if twice:
                raise ValueError(f"node {n.name!r} writes {twice}, which already exist")
            defined.update(n.outputs)
        missing = [v for v in self.outputs if v not in defined]
        if missing:
            raise ValueError(f"outputs {missing} are written by no node")

    @property
    def threads(self) -> int | None:
        """Kernel threads of each ``predict`` (``None``: the library setting at the call)."""
        return self._threads

    @threads.setter
    def threads(self, n: int | None) -> None:
        self._threads = None if n is None else check_int(n, "threads", 1, MAX_THREADS)
        fast = self.__dict__.get("_fast")
        if fast is not None:
            fast.set_threads(self._threads)

    def _bind_fast_predict(self) -> None:
        """On a model that is one native plan with one float32 input and one output, ``self.predict``
        becomes a native method: a ready ``x`` (C-contiguous aligned float32 of the input's shape) costs
        no Python frame, anything else goes on to the checks and conversions of the class's ``predict``
        (``_predict_checked``; the cycle through it is one the GC collects)."""
        self._fast = None
        self.__dict__.pop("predict", None)
        if self._ready is not None and isinstance(self._whole, _planner.Segment):
            self._fast = _native._ReadyPredict(self._whole.plan, self._predict_checked, self._threads)
            self.predict = self._fast.predict  # type: ignore[method-assign]

    @property
    def ops(self) -> list[_Op]:
        """The operations in execution order."""
        return [n.op for n in self.nodes]

    def shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """The shape of every value for a batch (``ValueError`` names the node that does not fit)."""
        shapes: dict[str, tuple[int, ...]] = {v: (batch,) + s for v, s in zip(self.inputs, self.input_shapes)}
        shapes.update({k: v.shape for k, v in self.constants.items()})
        for n in self.nodes:
            try:
                out = n.op.out_shape(*(shapes[v] for v in n.inputs))
            except (ValueError, TypeError, IndexError) as e:
                raise ValueError(f"node {n.name!r} ({n.op.kind}): {e}") from e
            outs = (out,) if len(n.outputs) == 1 else tuple(out)
            shapes.update((v, tuple(s)) for v, s in zip(n.outputs, outs))
        return shapes

    # -- running -----------------------------------------------------------
    def _run(self, xs: Sequence[np.ndarray], threads: int) -> Any:
        env: dict[str, Any] = dict(self.constants)
        env.update(zip(self.inputs, xs))
        for (reads, call, writes), free in zip(self._steps, self._free):
            args = (env[v] for v in reads)
            y = call(*args, threads=threads) if isinstance(call, _planner.Segment) else call(*args)
            if len(writes) == 1:
                env[writes[0]] = y
            else:
                env.update(zip(writes, y))
            for v in free:
                env.pop(v, None)
        res = tuple(env[v] for v in self.outputs)
        return res[0] if len(res) == 1 else res

    def predict(self, x: Any, *more: Any) -> Any:
        """Outputs for a batch ``x`` of shape ``(N, *input_shape)`` (float32 in, float32 out).

        A graph with several inputs takes one array per input, a graph with
        several outputs returns a tuple.
        """
        if self._ready is not None and not more:
            y = self._ready(x, self._threads)
            if y is not None:
                return y
        return self._predict_checked(x, *more)

    __call__ = predict

    def _predict_checked(self, x: Any, *more: Any) -> Any:
        """:meth:`predict` of inputs that are not ready as they are: checked, converted, then run."""
        if 1 + len(more) != len(self.inputs):
            raise ValueError(f"this model takes {len(self.inputs)} input(s); got {1 + len(more)}")
        xs = []
        for k, (v, shape, dt) in enumerate(zip([x, *more], self.input_shapes, self._dtypes)):
            if not (type(v) is np.ndarray and v.dtype is dt and v.flags.c_contiguous and v.flags.aligned):
                v = np.asarray(v)
                if v.dtype.kind not in "biuf":
                    raise TypeError(f"x must be a numeric array; got dtype {v.dtype}")
                if dt.name != "float32" and v.dtype.kind not in "iu":
                    raise TypeError(f"input {k} holds integer ids ({dt}); got dtype {v.dtype}")
                # Aligned too: arrays from pickle-5 / network buffers can sit at odd offsets.
                v = np.require(v, dtype=dt, requirements=["C", "A"])
            if v.shape[1:] != shape or v.ndim == 0:
                raise ValueError(f"input {k} must have shape (N, {', '.join(map(str, shape))}); got {v.shape}")
            xs.append(v)
        if self._whole is not None:  # one native call: nothing in Python reads a thread count
            return self._whole(*xs, threads=num_threads() if self.threads is None else self.threads)
        if self.threads is None:
            return self._run(xs, num_threads())
        # The count travels with the calls: the native segments take it as their context, and the
        # Python ops between them read this OS thread's own setting; the process setting is untouched.
        previous = _native._local_threads(self.threads)
        try:
            return self._run(xs, self.threads)
        finally:
            _native._local_threads(previous)

    def trace(self, x: Any) -> list[tuple[RuntimeNode, tuple[Any, ...]]]:
        """Every node with the inputs it reads for ``x``, running the nodes one by one (for timing)."""
        env: dict[str, Any] = dict(self.constants)
        env[self.inputs[0]] = np.require(x, dtype=self.input_dtypes[0], requirements=["C", "A"])
        out = []
        for n in self.nodes:
            args = tuple(env[v] for v in n.inputs)
            out.append((n, args))
            y = n.op.forward(*args)
            env.update(zip(n.outputs, y if len(n.outputs) > 1 else (y,)))
        return out

    # -- describing ----------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of weights, scales, biases, indices and constants the model keeps."""
        return sum(op.nbytes for op in self.ops) + sum(int(v.nbytes) for v in self.constants.values())

    def layer_work(self, batch: int = 1) -> list[LayerWork]:
        """What each operation computes and moves for a batch (input to the cost model)."""
        shapes = self.shapes(batch)
        work = [n.op.work(f"{n.name}.{n.op.kind}" if n.name != str(i) else f"{i}.{n.op.kind}",
                          *(shapes[v] for v in n.inputs)) for i, n in enumerate(self.nodes)]
        # Every node not run from Python runs in a native plan call (or is fused into a node that does).
        writer = {n.outputs: n.name for n in self.nodes}
        in_python = {writer.get(tuple(w)) for _, call, w in self._steps if not isinstance(call, _planner.Segment)}
        return [dataclasses.replace(w, native=True) if n.name not in in_python else w
                for n, w in zip(self.nodes, work)]

    def summary(self) -> list[dict[str, Any]]:
        """One row per operation: name, kind, output shape for one sample, bytes."""
        shapes = self.shapes(1)
        rows = []
        for i, n in enumerate(self.nodes):
            rows.append({"index": i, "name": n.name, "op": n.op.kind, "out_shape": shapes[n.outputs[0]][1:],
                         "nbytes": n.op.nbytes,
                         **{k: v for k, v in n.op.spec().items() if k in ("relu", "path", "block", "type")}})
        return rows

    def __repr__(self) -> str:
        kinds = ", ".join(op.kind for op in self.ops)
        return f"RuntimeModel(input_shape={self.input_shape}, ops=[{kinds}], nbytes={self.nbytes})"

    # -- files and pickling ---------------------------------------------------
    def _to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        specs = []
        for n in self.nodes:
            own = {}
            for k, v in n.op.arrays().items():
                own[k] = f"{n.name}.{k}"
                arrays[own[k]] = np.asarray(v)
            specs.append({"name": n.name, "inputs": list(n.inputs), "outputs": list(n.outputs), "spec": n.op.spec(),
                          "arrays": own})
        for k, v in self.constants.items():
            arrays[f"const:{k}"] = v
        graph = {"inputs": list(self.inputs), "input_shapes": [list(s) for s in self.input_shapes],
                 "input_dtypes": list(self.input_dtypes),
                 "outputs": list(self.outputs), "constants": list(self.constants), "nodes": specs}
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "input_shape": list(self.input_shape),
                "graph": graph, "meta": self.meta}
        return arrays, meta

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray], meta: Any) -> "RuntimeModel":
        """The model a file describes, every field checked before anything is built (FormatError)."""
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise io.FormatError(f"not a runtime model (format {fmt!r})")
        top = Spec(meta, {}, "runtime model")
        version = top.int("format_version", lo=1, hi=1 << 16)
        if version > FORMAT_VERSION:
            raise io.FormatError(f"runtime model version {version} is newer than this reader ({FORMAT_VERSION})")
        input_shape = _sample_shape(meta.get("input_shape"), "input_shape")
        user_meta = meta.get("meta") or {}
        if not isinstance(user_meta, dict):
            raise io.FormatError(f"runtime model: 'meta' must be a JSON object; got {type(user_meta).__name__}")
        used: set[str] = set()

        def take(spec: Any, where: str, own: dict[str, str]) -> Spec:
            return Spec(spec, {k: _claim(arrays, used, name, where) for k, name in own.items()}, where)

        if version < 2:  # a chain of ops, arrays named "<position>.<param>"
            specs = meta.get("ops")
            if not isinstance(specs, list) or not specs:
                raise io.FormatError("runtime model (version 1): 'ops' must be a non-empty list")
            ops = []
            for i, spec in enumerate(specs):
                kind = _kind(spec, f"operation {i}")
                prefix = f"{i}."
                own = {k[len(prefix):]: k for k in arrays if k.startswith(prefix)}
                ops.append(_OPS[kind].from_file(take(spec, f"operation {i} ({kind})", own)))
            try:
                rt = cls(ops, input_shape, user_meta)
            except (KeyError, ValueError, TypeError) as e:
                raise io.FormatError(f"runtime model (version 1): the ops do not fit together ({e})") from None
        else:
            g = meta.get("graph")
            if not isinstance(g, dict):
                raise io.FormatError("runtime model: 'graph' must be a JSON object")
            inputs, outputs = _names(g.get("inputs"), "graph inputs"), _names(g.get("outputs"), "graph outputs")
            shapes = g.get("input_shapes")
            if not isinstance(shapes, list) or len(shapes) != len(inputs):
                raise io.FormatError(f"runtime model: 'input_shapes' must list one shape per input ({len(inputs)})")
            shapes = [_sample_shape(v, f"input_shapes[{k}]") for k, v in enumerate(shapes)]
            if shapes[0] != input_shape:
                raise io.FormatError(f"runtime model: input_shape {input_shape} disagrees with input_shapes[0] "
                                     f"{shapes[0]}")
            dtypes = g.get("input_dtypes", ["float32"] * len(inputs))
            if not isinstance(dtypes, list) or len(dtypes) != len(inputs) or \
                    any(d not in ("float32", "int32", "int64") for d in dtypes):
                raise io.FormatError(f"runtime model: 'input_dtypes' must name float32, int32 or int64 per input; "
                                     f"got {dtypes!r}")
            entries = g.get("nodes")
            if not isinstance(entries, list) or not entries:
                raise io.FormatError("runtime model: 'graph.nodes' must be a non-empty list")
            nodes, names = [], set()
            for i, entry in enumerate(entries):
                if not isinstance(entry, dict):
                    raise io.FormatError(f"node {i}: must be a JSON object")
                name = entry.get("name")
                if not isinstance(name, str) or not name or name in names:
                    raise io.FormatError(f"node {i}: 'name' must be a unique non-empty string; got {name!r}")
                names.add(name)
                spec = entry.get("spec")
                kind = _kind(spec, f"node {i} ({name!r})")
                own = entry.get("arrays")
                if not isinstance(own, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in own.items()):
                    raise io.FormatError(f"node {i} ({name!r}): 'arrays' must map parameter names to array names")
                op = _OPS[kind].from_file(take(spec, f"node {i} ({name!r}, {kind})", own))
                nodes.append(RuntimeNode(name, op, tuple(_names(entry.get("inputs"), f"node {i} inputs")),
                                         tuple(_names(entry.get("outputs"), f"node {i} outputs"))))
            consts = {k: _claim(arrays, used, f"const:{k}", "constants").copy()
                      for k in _names(g.get("constants", []), "constants", empty=True)}
            try:
                rt = cls(nodes, input_shape, user_meta, inputs=inputs, outputs=outputs, constants=consts,
                         input_shapes=shapes, input_dtypes=dtypes)
            except (KeyError, ValueError, TypeError) as e:  # dangling or doubly written values
                raise io.FormatError(f"runtime model: the graph is malformed ({e})") from None
        unused = sorted(set(arrays) - used)
        if unused:
            raise io.FormatError(f"runtime model: arrays {unused[:5]} belong to no node")
        rt._check_plan()
        return rt

    def _check_plan(self) -> None:
        """Shapes through every node at batch 1, and a bound on every buffer they imply."""
        try:
            shapes = self.shapes(1)
        except (ValueError, TypeError) as e:
            raise io.FormatError(f"runtime model: the ops do not fit together ({e})") from None
        for v, shape in shapes.items():
            if int(np.prod(shape, dtype=np.float64)) > MAX_ELEMENTS:
                raise io.FormatError(f"runtime model: value {v!r} would have shape {shape}, above the bound of "
                                     f"{MAX_ELEMENTS} elements per sample")
        for n in self.nodes:
            if n.op.kind == "conv2d":  # the unfold: one row per output pixel, one column per tap
                out = shapes[n.outputs[0]]
                if out[2] * out[3] * n.op.layer.in_features > MAX_ELEMENTS:
                    raise io.FormatError(f"node {n.name!r} (conv2d): its unfold would hold "
                                         f"{out[2] * out[3] * n.op.layer.in_features} values per sample, above "
                                         "the bound")

    def save(self, path: Any) -> int:
        """Write the model to one ``.hwreg`` file; returns its size in bytes."""
        arrays, meta = self._to_arrays()
        return io.save(path, arrays, meta)

    def __getstate__(self) -> dict[str, Any]:
        arrays, meta = self._to_arrays()
        return {"arrays": {k: np.array(v) for k, v in arrays.items()}, "meta": meta, "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        other = RuntimeModel._from_arrays(state["arrays"], state["meta"])
        self.__dict__.update(other.__dict__)  # includes the planned steps
        self._bind_fast_predict()  # other's fast predict calls back into other
        self.threads = state.get("threads")

    # -- measuring -------------------------------------------------------------
    def profile(self, x: Any, *, repeats: int = 15) -> dict[str, float]:
        """Seconds each node takes for the batch ``x``, measured as :meth:`predict` runs it.

        A native segment (see :mod:`hwreg_rs._planner`) times each of its nodes inside the
        native call (median over ``repeats`` calls); an op that runs in Python is timed on the
        input it gets in ``predict`` (:func:`hwreg_rs._timing.median_seconds`); both at the
        model's thread setting. A layout change counts with the node it was made for; a node
        fused into another's output step (a ReLU after an Add, an activation after a
        convolution) counts with that node and gets 0 of its own. ``predict``'s own
        bookkeeping (input checks) is in no node: the sum is a little below a timed ``predict``.

        Returns
        -------
        dict of str to float
            Node name -> seconds, in execution order.

        Examples
        --------
        >>> import numpy as np, hwreg_rs as hw
        >>> rt = hw.runtime.convert(hw.nn.small_cnn(rng=0).eval(), input_shape=(1, 8, 8))
        >>> t = rt.profile(np.zeros((2, 1, 8, 8), np.float32), repeats=3)
        >>> list(t) == [n.name for n in rt.nodes] and all(v > 0 for v in t.values())
        True
        """
        from ._timing import median_seconds

        repeats = int(repeats)
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1; got {repeats}")
        xs = [np.require(v, dtype=dt, requirements=["C", "A"]) for v, dt in zip([x], self.input_dtypes)]
        writer = {n.outputs: n.name for n in self.nodes}
        seconds = {n.name: 0.0 for n in self.nodes}
        threads = num_threads() if self.threads is None else self.threads
        previous = _native._local_threads(self.threads) if self.threads is not None else None
        try:
            env: dict[str, Any] = dict(self.constants)
            env.update(zip(self.inputs, xs))
            for reads, call, writes in self._steps:
                args = tuple(env[v] for v in reads)
                if isinstance(call, _planner.Segment):
                    y, _ = call.timed(*args, threads=threads)  # warm-up
                    samples = [call.timed(*args, threads=threads)[1] for _ in range(repeats)]
                    for name in samples[0]:
                        seconds[name] += float(np.median([s[name] for s in samples]))
                else:
                    y = call(*args)
                    seconds[writer[tuple(writes)]] += median_seconds(lambda: call(*args), repeats=repeats)
                env.update(zip(writes, y if len(writes) > 1 else (y,)))
        finally:
            if self.threads is not None:
                _native._local_threads(previous)
        return seconds


def _batched(rt: RuntimeModel, shapes: dict[str, tuple[int, ...]]) -> set[str]:
    """The values whose leading axis is the batch (shape ``(N, *per_sample)`` at every N tried):
    the native plan sizes its buffers by the batch, so it takes only those."""
    try:
        more = [rt.shapes(b) for b in (2, 3)]
    except ValueError:  # a graph that runs at batch 1 only
        return set()
    return {v for v, s in shapes.items()
            if s and s[0] == 1 and all(m.get(v) == (b,) + s[1:] for b, m in zip((2, 3), more))}


def _kind(spec: Any, where: str) -> str:
    kind = spec.get("op") if isinstance(spec, dict) else None
    if not isinstance(kind, str) or kind not in _OPS:
        raise io.FormatError(f"{where}: unknown operation {kind!r}")
    return str(kind)


def _names(v: Any, what: str, *, empty: bool = False) -> list[str]:
    if not isinstance(v, list) or (not v and not empty) or not all(isinstance(e, str) and e for e in v):
        raise io.FormatError(f"runtime model: {what} must be a list of non-empty strings; got {v!r}")
    return list(v)


def _sample_shape(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not v or len(v) > 8 or any(
            isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_ELEMENTS for d in v):
        raise io.FormatError(f"runtime model: {what} must be a list of 1 to 8 positive integers; got {v!r}")
    if int(np.prod(v, dtype=np.float64)) > MAX_ELEMENTS:
        raise io.FormatError(f"runtime model: {what} {v} exceeds the bound of {MAX_ELEMENTS} elements")
    return tuple(v)


def _claim(arrays: dict[str, np.ndarray], used: set[str], name: str, where: str) -> np.ndarray:
    if name not in arrays:
        raise io.FormatError(f"{where}: array {name!r} is not in the file")
    if name in used:
        raise io.FormatError(f"{where}: array {name!r} is claimed twice")
    used.add(name)
    return arrays[name]


def load(path: Any, *, verify: bool = True) -> RuntimeModel:
    """Read a runtime model written by :meth:`RuntimeModel.save`.

    Raises :class:`hwreg_rs.io.FormatError` for a corrupt, truncated, foreign or
    inconsistent file: every op's spec is checked against its arrays, and the
    shapes through the graph against a bound, before anything is built. The
    file is read into memory and the model keeps copies of what it needs, so
    rewriting or truncating the file later cannot disturb a loaded model.

    Examples
    --------
    >>> import os, tempfile, numpy as np, hwreg_rs as hw
    >>> rt = hw.runtime.convert(hw.nn.mlp([4, 2], rng=0), input_shape=(4,))
    >>> p = os.path.join(tempfile.mkdtemp(), "m.hwreg"); _ = rt.save(p)
    >>> x = np.ones((1, 4), np.float32)
    >>> bool(np.array_equal(hw.runtime.load(p).predict(x), rt.predict(x)))
    True
    """
    arrays, meta = io.load(path, verify=verify, use_mmap=False)
    try:
        return RuntimeModel._from_arrays(arrays, meta)
    except io.FormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as e:  # the file boundary: a bad file is a FormatError
        raise io.FormatError(f"{os.fspath(path)!r}: not a valid runtime model ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------


@dataclass
class _Pending:
    """A Linear/Conv2d whose output step is still open to BatchNorm folding and ReLU fusion."""

    module: Module
    weight: np.ndarray  # float64 copy, BatchNorm folded in
    bias: np.ndarray
    relu: bool = False


def _fold_bn(p: _Pending, bn: Any) -> None:
    inv = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    gamma = bn.weight.data.astype(np.float64) if bn.weight is not None else np.ones_like(inv)
    beta = bn.bias.data.astype(np.float64) if bn.bias is not None else np.zeros_like(inv)
    scale = gamma * inv
    p.weight = p.weight * scale.reshape((-1,) + (1,) * (p.weight.ndim - 1))
    p.bias = (p.bias - bn.running_mean.astype(np.float64)) * scale + beta


def _wants_int4(m: Module, weight_bits: int | None) -> bool:
    """Whether a Linear runs with int4 weights: always for ``weight_bits=4``; for ``None`` when its QAT grid
    has at most 4 bits (so the size gain of training at 4 bits is kept)."""
    if weight_bits is None:
        return getattr(getattr(m, "weight_fake_quant", None), "bits", 8) <= 4
    return weight_bits == 4


def _int4_op(p: _Pending, w32: np.ndarray, folded: bool, group_size: int | None) -> _Int4Dense:
    """The int4 layer of a Linear: on its QAT grid when it has one of at most 4 bits (per channel, unfolded)."""
    bias = p.bias.astype(np.float32)
    if not folded and group_size is None and getattr(getattr(p.module, "weight_fake_quant", None), "bits", 8) <= 4:
        q, scale = _quantize_weight(w32, p.module)
        return _Int4Dense(Int4Linear.from_int(q, scale[:, None], bias, relu=p.relu))
    return _Int4Dense(Int4Linear(quantize_weight(w32, group_size=group_size), bias, relu=p.relu))


def _finish(p: _Pending, *, sparse_mode: str, batch: int, weight_bits: int | None = None,
            int4_group_size: int | None = None) -> _Op:
    m = p.module
    folded = not np.array_equal(p.weight, m.effective_weight().astype(np.float64))
    w32 = p.weight.astype(np.float32)
    if isinstance(m, Linear) and _wants_int4(m, weight_bits):
        return _int4_op(p, w32, folded, int4_group_size)
    if isinstance(m, Linear):
        mask = w32 != 0
        density = float(mask.mean()) if mask.size else 1.0
        # Above half dense no sparse format pays (docs/design.md §5: break-even ~70% sparsity with blocks).
        if sparse_mode != "never" and density <= 0.5:
            choice = sparse.choose(w32, mask, batch, dtypes=("int8",))
            if sparse_mode == "always" and choice.path.startswith("dense"):
                choice = _fastest_compact(choice, mask)
            if not choice.path.startswith("dense") and (sparse_mode == "always" or choice.speedup > 1.05):
                return _Sparse(choice.build(w32, mask), choice.path, choice.block, p.bias.astype(np.float32), p.relu)
    if folded:
        q, scale = _quantize_weight(w32, Module())  # BN changed the weights: the QAT grid no longer applies
    else:
        q, scale = _quantize_weight(w32, m)
    layer = Int8Linear(q.reshape(q.shape[0], -1), scale, p.bias.astype(np.float32), relu=p.relu)
    if isinstance(m, Conv2d):
        pad = _padding4(m)
        groups, dilation = int(getattr(m, "groups", 1)), tuple(getattr(m, "dilation", (1, 1)))
        if groups == 1 and dilation == (1, 1) and pad[:2] == pad[2:]:
            return _Conv(layer, m.in_channels, m.kernel_size, m.stride, pad[:2])
        return _GroupConv(layer, m.in_channels, m.kernel_size, m.stride, pad, dilation, groups)
    return _Dense(layer)


def _padding4(m: Conv2d) -> tuple[int, int, int, int]:
    """A Conv2d's padding as (top, left, bottom, right)."""
    p = tuple(int(v) for v in m.padding)
    return (p[0], p[1], p[0], p[1]) if len(p) == 2 else (p[0], p[1], p[2], p[3])


def _fastest_compact(choice: Any, mask: np.ndarray) -> Any:
    """Among the sparse paths the chooser timed, the fastest of those that store the fewest bytes."""
    nnz = int(mask.sum())
    options = []
    for key, seconds in choice.seconds.items():
        path, _, blk = key.partition("(")
        if path.startswith("dense"):
            continue
        block = tuple(int(v) for v in blk.rstrip(")").split(",")) if blk else None
        if path.startswith("bsr"):
            stored = sparse._stored_for_block(mask, block)  # type: ignore[arg-type]
            nbytes = stored + 4 * stored // (block[0] * block[1])  # type: ignore[index]
        elif path.startswith("nm"):
            if sparse._nm_of(mask) != block:
                continue
            nbytes = 2 * nnz  # a value and a small in-group index
        else:
            nbytes = 5 * nnz  # a value and an int32 column index
        options.append((nbytes, seconds, path, block))
    if not options:
        return choice
    smallest = min(o[0] for o in options)
    _, _, path, block = min((o for o in options if o[0] <= 1.1 * smallest), key=lambda o: o[1])
    return sparse.Choice(path, block)


def convert(model: Module, *, input_shape: Iterable[int], calibration: Any = None, sparse: str = "auto",
            batch_size: int = 1, meta: dict[str, Any] | None = None, threads: int | None = None,
            weight_bits: int | None = None, int4_group_size: int | dict[str, int | None] | None = None,
            calibration_method: str = "minmax") -> RuntimeModel:
    """Convert a trained model into an int8 :class:`RuntimeModel`.

    Parameters
    ----------
    model : hwreg_rs.nn.Module
        A :class:`~hwreg_rs.nn.Sequential` (nested ones are flattened), a
        :class:`~hwreg_rs.nn.Graph` (e.g. from :func:`hwreg_rs.onnx.load`) or
        one layer. Linear and Conv2d layers (grouped and depthwise too) run in
        int8 with a following BatchNorm folded in and a ReLU fused; every other
        registered op runs in float32. Its weights are read, not changed.
    input_shape : iterable of int
        Shape of one sample, e.g. ``(64,)`` or ``(1, 8, 8)``.
    calibration : array_like or iterable of array_like, optional
        ``None`` (default): dynamic quantization, each int8 layer's input
        quantized with one scale per row (Linear) or image (Conv2d) at run
        time. Else static quantization: a batch of samples ``(N, *input_shape)``
        or an iterable of such batches, run through the float model (in eval
        mode) to give every int8 Linear / Conv2d layer a per-tensor uint8
        scale and zero point for its input (:func:`hwreg_rs.calibrate`,
        ``dtype="uint8", symmetric=False``), with which it then quantizes
        (``QuantizeLinear``: no min/max pass at run time). Sparse and int4
        layers stay dynamic. Single-input models only.
    calibration_method : {"minmax", "percentile", "mse", "entropy"}, default "minmax"
        The :func:`hwreg_rs.calibrate` method of the static scales.
    sparse : {"auto", "never", "always"}, default "auto"
        For Linear layers with pruned (zero) weights: use the sparse format
        the chooser (:func:`hwreg_rs.sparse.choose`) measures as fastest for
        ``batch_size`` when it beats dense ("auto"), never, or whenever the
        chooser names a sparse path ("always").
    batch_size : int, default 1
        Batch size the sparse chooser optimises for.
    meta : dict, optional
        Saved with the model.
    threads : int, optional
        Kernel threads while predicting (default: the library setting).
    weight_bits : {None, 4, 8}, default None
        Weight precision of Linear layers: ``8`` int8 everywhere; ``4`` int4
        (:class:`hwreg_rs.int4.Int4Linear`, two weights per byte) for every
        Linear; ``None`` per layer: int4 for a Linear trained with a QAT
        constraint of at most 4 weight bits (on its own grid, so the model
        predicts what it was trained to), int8 for the rest. Convolutions stay int8.
    int4_group_size : {None, 32, 64, 128} or dict of str to them, default None
        Scales of int4 layers quantized here: one per output channel, or one
        per group of that many inputs (a QAT layer keeps its per-channel grid).
        A dict sets it per Linear layer name; with ``weight_bits=None`` a
        layer it names runs int4 at its group size whatever its QAT grid.

    Returns
    -------
    RuntimeModel

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> cnn = hw.nn.small_cnn(rng=0).eval()
    >>> rt = hw.runtime.convert(cnn, input_shape=(1, 8, 8))
    >>> [r["op"] for r in rt.summary()]
    ['conv2d', 'conv2d', 'maxpool2d', 'flatten', 'linear', 'linear']
    >>> x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    >>> rts = hw.runtime.convert(cnn, input_shape=(1, 8, 8), calibration=x)
    >>> rts.predict(x).shape, "input_scale" in rts.ops[0].spec()
    ((16, 10), True)
    """
    if calibration_method not in _CALIBRATION_METHODS:
        raise ValueError(f"calibration_method must be one of {_CALIBRATION_METHODS}; got {calibration_method!r}")
    if not isinstance(sparse, str) or sparse not in ("auto", "never", "always"):
        raise ValueError(f"sparse must be 'auto', 'never' or 'always'; got {sparse!r}")
    if weight_bits not in (None, 4, 8) or isinstance(weight_bits, bool):
        raise ValueError(f"weight_bits must be None, 4 or 8; got {weight_bits!r}")
    if isinstance(int4_group_size, dict):  # per layer: naming a Linear asks for int4 with that group size
        bad = {k: v for k, v in int4_group_size.items() if v not in GROUP_SIZES or isinstance(v, bool)}
        if bad:
            raise ValueError(f"int4_group_size values must be one of {GROUP_SIZES}; got {bad!r}")
    elif int4_group_size not in GROUP_SIZES or isinstance(int4_group_size, bool):
        raise ValueError(f"int4_group_size must be one of {GROUP_SIZES} or a dict of them by layer name; "
                         f"got {int4_group_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if not isinstance(model, Module):
        raise TypeError(f"model must be a hwreg_rs.nn.Module; got {type(model).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict; got {type(meta).__name__}")
    shape = _shape_arg(input_shape)
    graph = Graph.from_module(model)
    shapes = [shape] + list((graph.input_shapes or [shape])[1:])
    for node in graph.nodes:
        if not node.op.op_type or registry.REGISTRY.get(node.op.op_type) is not type(node.op):
            raise TypeError(f"cannot convert layer {type(node.op).__name__} (node {node.name!r}): it is not a "
                            "registered op of hwreg_rs.nn")
    try:
        value_shapes = graph.infer_shapes(*((1,) + s for s in shapes))
    except ValueError as e:
        raise ValueError(f"the model does not fit input_shape {shape}: {e}") from None
    if calibration is not None and len(graph.inputs) != 1:
        raise ValueError(f"calibration needs a single-input model; this one takes {len(graph.inputs)} inputs")
    samples = None if calibration is None else _inputs_of_int8_layers(graph, _calibration_batches(calibration, shape))
    nodes, constants = _lower(graph, value_shapes, sparse_mode=sparse, batch=int(batch_size),
                              weight_bits=weight_bits, int4_group_size=int4_group_size)
    if samples is not None:
        for node in nodes:
            if isinstance(node.op, _OnInt8Linear) and node.name in samples:
                try:
                    qp = calibrate(samples[node.name], method=calibration_method, dtype="uint8", symmetric=False)
                except ValueError as e:
                    raise ValueError(f"cannot calibrate the input of layer {node.name!r}: {e}") from None
                node.op.act = (np.float32(qp.scale), int(qp.zero_point))
        _static_adds(nodes, value_shapes)
    rt = RuntimeModel(nodes, shape, meta, threads=threads, inputs=graph.inputs, outputs=graph.outputs,
                      constants=constants, input_shapes=shapes, input_dtypes=graph.input_dtypes)
    # Check the graph against the input shape now, not at the first predict.
    rt.predict(*(np.zeros((1,) + s, d) for s, d in zip(shapes, rt.input_dtypes)))
    return rt


_CALIBRATION_METHODS = ("minmax", "percentile", "mse", "entropy")


def _calibration_batches(calibration: Any, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The calibration batches, each float32 ``(n, *shape)`` with n >= 1 and finite values
    (ValueError / TypeError naming ``calibration`` otherwise)."""
    if isinstance(calibration, (str, bytes, dict)) or not (
            isinstance(calibration, (np.ndarray, Iterable)) or hasattr(calibration, "__array__")):
        raise TypeError(f"calibration must be an array of samples or an iterable of batches; "
                        f"got {type(calibration).__name__}")
    single = isinstance(calibration, np.ndarray) or hasattr(calibration, "__array__")
    if not single:  # a list of samples is one batch; a list of batches (or a generator) is batches
        calibration = list(calibration)
        single = bool(calibration) and np.shape(calibration[0]) == shape
    raw = [calibration] if single else calibration
    batches = []
    for i, b in enumerate(raw):
        where = "calibration" if single else f"calibration batch {i}"
        try:
            a = np.asarray(b)
        except (ValueError, TypeError) as e:
            raise TypeError(f"{where} is not an array: {e}") from None
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{where} must hold numbers; got dtype {a.dtype}")
        if a.ndim != len(shape) + 1 or tuple(a.shape[1:]) != shape:
            raise ValueError(f"{where} must have shape (n, {', '.join(map(str, shape))}); got {a.shape}")
        if a.shape[0] == 0:
            raise ValueError(f"{where} is empty")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{where} holds NaN or infinity")
        batches.append(a)
    if not batches:
        raise ValueError("calibration is empty (no batches)")
    return batches


def _inputs_of_int8_layers(graph: Graph, batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The float model run in eval mode over ``batches``: each Linear / Conv2d node's input values, by node name."""
    modules = [m for n in graph.nodes for m in n.op.modules()]
    modes = [m.training for m in modules]
    for m in modules:  # BatchNorm on running statistics and no Dropout, as the runtime computes
        object.__setattr__(m, "training", False)
    seen: dict[str, list[np.ndarray]] = {}
    try:
        for x in batches:
            env: dict[str, Any] = dict(graph.constants())
            env[graph.inputs[0]] = x
            for node in graph.nodes:
                args = [env[v] for v in node.inputs]
                if isinstance(node.op, (Linear, Conv2d)):
                    seen.setdefault(node.name, []).append(np.asarray(args[0], np.float32).reshape(-1))
                out = node.op.forward(*args)
                env.update(zip(node.outputs, out if len(node.outputs) > 1 else (out,)))
    finally:
        for m, t in zip(modules, modes):
            object.__setattr__(m, "training", t)
    return {k: np.concatenate(v) for k, v in seen.items()}


def _shape_arg(input_shape: Any) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints (ValueError / TypeError naming it otherwise)."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Iterable):
        raise TypeError(f"input_shape must be a sequence of positive ints; got {input_shape!r}")
    dims = list(input_shape)
    if not dims or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d <= MAX_ELEMENTS
                       for d in dims):
        raise ValueError(f"input_shape must be a non-empty sequence of positive ints; got {input_shape!r}")
    if int(np.prod(dims, dtype=np.float64)) > MAX_ELEMENTS:
        raise ValueError(f"input_shape {tuple(dims)} exceeds the bound of {MAX_ELEMENTS} elements per sample")
    return tuple(int(d) for d in dims)


def _lower(graph: Graph, shapes: dict[str, tuple[int, ...]], *, sparse_mode: str,
           batch: int, weight_bits: int | None = None,
           int4_group_size: int | dict[str, int | None] | None = None) -> tuple[list[RuntimeNode], dict[str, np.ndarray]]:
    """The runtime nodes of a graph: Dropout and Identity dropped, BatchNorm folded into the
    Linear/Conv2d it follows and a ReLU fused into its output step when nothing else reads the
    values in between, then each op lowered to its runtime op."""
    readers = graph.consumers()
    for v in graph.outputs:
        readers.setdefault(v, []).append(-1)
    alias: dict[str, str] = {}

    def name(v: str) -> str:
        while v in alias:
            v = alias[v]
        return v

    def sole_reader(v: str) -> int | None:
        r = readers.get(v, [])
        return r[0] if len(r) == 1 and r[0] >= 0 else None

    absorbed: set[int] = set()
    out: list[RuntimeNode] = []
    outputs = set(graph.outputs)
    for i, node in enumerate(graph.nodes):
        if i in absorbed:
            continue
        m = node.op
        ins = tuple(name(v) for v in node.inputs)
        if isinstance(m, (Dropout,)) or m.op_type == "Identity":
            if node.outputs[0] in outputs:  # keep a named graph output
                out.append(RuntimeNode(node.name, _Float(copy.deepcopy(m)), ins, node.outputs))
            else:
                alias[node.outputs[0]] = ins[0]
            continue
        if isinstance(m, (Linear, Conv2d)):
            w = m.effective_weight().astype(np.float64)
            b = m.bias.data.astype(np.float64) if m.bias is not None else np.zeros(w.shape[0])
            pending = _Pending(m, w, b)
            last = node.outputs[0]
            j = sole_reader(last)
            # BatchNorm normalises dim 1: the output channels of a Conv2d, or of a Linear on (N, features) only.
            if j is not None and isinstance(graph.nodes[j].op, (BatchNorm1d, BatchNorm2d)) and \
                    (isinstance(m, Conv2d) or len(shapes[last]) == 2):
                _fold_bn(pending, graph.nodes[j].op)
                absorbed.add(j)
                last = graph.nodes[j].outputs[0]
                j = sole_reader(last)
            if j is not None and isinstance(graph.nodes[j].op, ReLU):
                pending.relu = True
                absorbed.add(j)
                last = graph.nodes[j].outputs[0]
            bits, group = weight_bits, int4_group_size
            if isinstance(int4_group_size, dict):  # per layer (the planner's per-group int4 candidates)
                group = int4_group_size.get(node.name)
                bits = 4 if node.name in int4_group_size and isinstance(m, Linear) and bits is None else bits
            op = _finish(pending, sparse_mode=sparse_mode, batch=batch, weight_bits=bits, int4_group_size=group)
            out.append(RuntimeNode(node.name, op, ins, (last,)))
            continue
        out.append(RuntimeNode(node.name, _lower_op(m), ins, node.outputs))
    consts = {k: np.ascontiguousarray(v) for k, v in graph.constants().items()}
    if any(name(v) != v for v in graph.outputs):  # pragma: no cover - outputs keep their nodes above
        raise ValueError("a graph output is an alias")
    return out, consts


def _lower_op(m: Module) -> _Op:
    """The runtime op of a module that is not a Linear or Conv2d."""
    if isinstance(m, (BatchNorm1d, BatchNorm2d)):
        inv = 1.0 / np.sqrt(m.running_var.astype(np.float64) + m.eps)
        g = m.weight.data if m.weight is not None else np.ones_like(inv)
        b = m.bias.data if m.bias is not None else np.zeros_like(inv)
        return _Affine(g * inv, b - m.running_mean * g * inv)
    if isinstance(m, ReLU):
        return _ReLU()
    if isinstance(m, (MaxPool2d, AvgPool2d)):
        pad = tuple(m.padding)
        return _Pool("maxpool2d" if isinstance(m, MaxPool2d) else "avgpool2d", m.kernel_size, m.stride, pad)
    if isinstance(m, Flatten):
        return _Flatten(m.start_dim)
    return _Float(copy.deepcopy(m))  # convert checked that it is a registered op
