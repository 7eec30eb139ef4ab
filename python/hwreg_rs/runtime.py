"""Int8 runtime models: convert a trained model, run it, save it to one file.

:func:`convert` turns a trained :class:`hwreg_rs.nn.Sequential` into a
:class:`RuntimeModel`: BatchNorm folded into the preceding Linear or Conv2d,
weights quantized per output channel (on the QAT grid when the layer was
trained with fake quantization) and packed once, ReLU fused into the output
step, convolutions run as im2col plus the int8 GEMM, pruned layers stored in
the sparse format the chooser finds fastest on this machine. Activations are
quantized on the fly, one scale per row (dynamic quantization), so no
calibration data is needed and accuracy follows the float model closely.

A runtime model predicts float outputs from float inputs, saves to one
``.hwreg`` file (see :mod:`hwreg_rs.io`; weights, scales and the layer list,
no code) and pickles through the same arrays, so it can be shipped to worker
processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from . import _native, io, sparse
from .config import num_threads, set_num_threads
from .gemm import Int8Linear
from .nn import functional as F
from .nn.conv import AvgPool2d, Conv2d, MaxPool2d
from .nn.layers import BatchNorm1d, BatchNorm2d, Dropout, Flatten, Linear, ReLU
from .nn.module import Module, Sequential
from .profiles import LayerWork

__all__ = ["RuntimeModel", "convert", "load", "FORMAT"]

FORMAT = "hwreg-runtime"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# Operations. Each knows how to run, how to describe itself for the file
# (a JSON spec plus named arrays) and what it costs (for the cost model).
# ---------------------------------------------------------------------------


class _Op:
    kind = ""

    def forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
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
    """An operation whose weights live in an :class:`Int8Linear`."""

    layer: Int8Linear

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
        return self.layer(x)

    def spec(self) -> dict[str, Any]:
        return {"op": self.kind, "relu": bool(self.layer.relu)}

    @classmethod
    def from_file(cls, spec: dict[str, Any], a: dict[str, np.ndarray]) -> "_Dense":
        return cls(Int8Linear(a["weight_q"], a["weight_scale"], a.get("bias"), relu=spec["relu"]))

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[:-1] + (self.layer.out_features,)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        rows = int(np.prod(shape[:-1]))
        k, n = self.layer.in_features, self.layer.out_features
        return LayerWork(name, "linear", rows * k * n, k * n + 8 * n, rows * k * 4, rows * n * 4, "int8")


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
    def from_file(cls, spec: dict[str, Any], a: dict[str, np.ndarray]) -> "_Sparse":
        out, inp = spec["out"], spec["in"]
        mask = np.unpackbits(a["mask_bits"], count=out * inp).astype(bool).reshape(out, inp)
        values = np.zeros((out, inp), a["values"].dtype)
        values[mask] = a["values"]
        block = tuple(spec["block"]) if spec["block"] else None
        if "scale" in a:  # int8: the stored values are exact multiples of the row scales
            w = values.astype(np.float32) * a["scale"][:, None]
        else:
            w = values
        matrix = sparse.Choice(spec["path"], block).build(w, mask)
        return cls(matrix, spec["path"], block, a.get("bias"), spec["relu"])

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes) + (0 if self.bias is None else self.bias.nbytes)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[:-1] + (self.matrix.shape[0],)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        rows = int(np.prod(shape[:-1]))
        n, k = self.matrix.shape
        pattern = "n:m" if self.path.startswith("nm") else "block" if self.path.startswith("bsr") else "unstructured"
        prec = "int8" if self.path.endswith("int8") else "fp32"
        return LayerWork(name, "linear", rows * k * n, self.nbytes, rows * k * 4, rows * n * 4, prec,
                         density=self.matrix.density, pattern=pattern)


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
        scale, zp = _image_qparams(x)
        if np.any(zp != zp[0]):  # padding needs one zero point: fall back to one for the batch
            scale, zp = _image_qparams(x.reshape(1, -1))
            scale, zp = np.repeat(scale, n), np.repeat(zp, n)
        # The parameters are valid by construction: call the kernels directly
        # (the public functions' checks cost more than a small image's work).
        xq = _native.quantize_linear(np.ascontiguousarray(x, dtype=np.float32), scale, zp, 0, "uint8")
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
                "stride": list(self.stride), "padding": list(self.padding)}

    @classmethod
    def from_file(cls, spec: dict[str, Any], a: dict[str, np.ndarray]) -> "_Conv":
        layer = Int8Linear(a["weight_q"], a["weight_scale"], a.get("bias"), relu=spec["relu"])
        return cls(layer, spec["in_channels"], spec["kernel_size"], spec["stride"], spec["padding"])

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        oh, ow = F.out_size(shape[2], shape[3], self.kernel_size, self.stride, self.padding)
        return (shape[0], self.layer.out_features, oh, ow)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        out = self.out_shape(shape)
        rows = out[0] * out[2] * out[3]
        k, n = self.layer.in_features, self.layer.out_features
        # im2col writes and the GEMM reads the column matrix: count it as moved input.
        return LayerWork(name, "conv2d", rows * k * n, k * n + 8 * n, rows * k * 4 * 2, rows * n * 4, "int8")


def _image_qparams(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image uint8 scale and zero point with DynamicQuantizeLinear's formula."""
    flat = x.reshape(x.shape[0], -1)
    lo = np.minimum(flat.min(axis=1), 0.0)
    hi = np.maximum(flat.max(axis=1), 0.0)
    scale = ((hi - lo) / np.float32(255.0)).astype(np.float32)
    if not np.isfinite(scale).all():  # min / max carry any NaN or infinity through
        raise ValueError("x must be finite")
    scale[scale == 0] = 1.0
    zp = np.rint(-lo / scale).astype(np.int32)  # in [0, 255]: lo <= 0 <= hi
    return scale, zp


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
    def from_file(cls, spec: dict[str, Any], a: dict[str, np.ndarray]) -> "_Pool":
        return cls(spec["op"], spec["kernel_size"], spec["stride"], spec["padding"])

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[:2] + F.out_size(shape[2], shape[3], self.kernel_size, self.stride, self.padding)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        return LayerWork(name, "pool", 0, 0, int(np.prod(shape)) * 4, int(np.prod(self.out_shape(shape))) * 4)


class _Flatten(_Op):
    kind = "flatten"

    def __init__(self, start_dim: int = 1) -> None:
        self.start_dim = start_dim

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[: self.start_dim] + (-1,))

    def spec(self) -> dict[str, Any]:
        return {"op": self.kind, "start_dim": self.start_dim}

    @classmethod
    def from_file(cls, spec: dict[str, Any], a: dict[str, np.ndarray]) -> "_Flatten":
        return cls(spec["start_dim"])

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[: self.start_dim] + (int(np.prod(shape[self.start_dim:])),)

    def work(self, name: str, shape: tuple[int, ...]) -> LayerWork:
        n = int(np.prod(shape)) * 4
        return LayerWork(name, "reshape", 0, 0, n, n)  # a view: no data moved


class _ReLU(_Op):
    kind = "relu"

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0, dtype=np.float32)

    @classmethod
    def from_file(cls, spec: dict[str, Any], a: dict[str, np.ndarray]) -> "_ReLU":
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
    def from_file(cls, spec: dict[str, Any], a: dict[str, np.ndarray]) -> "_Affine":
        return cls(a["scale"], a["shift"])


_OPS: dict[str, Any] = {"linear": _Dense, "sparse_linear": _Sparse, "conv2d": _Conv, "maxpool2d": _Pool,
                        "avgpool2d": _Pool, "flatten": _Flatten, "relu": _ReLU, "affine": _Affine}


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


def _plan(ops: list[_Op], input_shape: tuple[int, ...]) -> list[Any]:
    """The callables ``predict`` runs, in order.

    Convolutions and the pools, ReLUs and affines between them pass NHWC
    tensors to each other; a Flatten of an NHWC tensor feeding a Linear keeps
    the NHWC order and hands that Linear its weight with the input columns
    permuted to match; anything else gets NCHW back first. Then runs of int8
    Linear layers become one native call (:func:`_fuse_dense_runs`).
    """
    steps: list[Any] = []
    shape = (1, *input_shape)
    nhwc = False

    def to_nchw() -> None:
        nonlocal nhwc
        if nhwc:
            steps.append(lambda x: np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
            nhwc = False

    work = list(ops)  # the permuted Linear after an NHWC Flatten replaces its op here
    for i in range(len(work)):
        op = work[i]
        j = next((j for j in range(i + 1, len(work)) if not isinstance(work[j], _ReLU)), None)
        nxt = work[j] if j is not None else None
        if isinstance(op, _Conv):
            steps.append(lambda x, op=op, first=not nhwc: op.forward_nhwc(x, nchw_in=first))
            nhwc = True
        elif nhwc and isinstance(op, _Pool):
            steps.append(op.forward_nhwc)
        elif nhwc and isinstance(op, _Affine):
            steps.append(lambda x, op=op: (x * op.scale + op.shift).astype(np.float32))
        elif nhwc and isinstance(op, _Flatten) and op.start_dim == 1 and isinstance(nxt, _Dense):
            _, c, h, w = shape
            # NHWC column (y, x, ch) holds what NCHW column ch*h*w + y*w + x held.
            perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
            layer = nxt.layer
            permuted = Int8Linear(np.ascontiguousarray(layer.weight_q[:, perm]), layer.weight_scale, layer.bias,
                                  relu=layer.relu)
            work[j] = _Dense(permuted)
            steps.append(op.forward)
            nhwc = False
        elif isinstance(op, _ReLU):
            steps.append(op.forward)
        else:
            to_nchw()
            steps.append(op)
        shape = op.out_shape(shape)
    to_nchw()
    return _fuse_dense_runs(steps)


def _fuse_dense_runs(ops: list[Any]) -> list[Any]:
    """Runs of int8 Linear layers (``_Dense`` ops) become one native call (no
    Python between layers); every other op runs as itself (``forward``), and
    plain callables stay as they are."""
    steps: list[Any] = []
    run: list[_Dense] = []

    def close() -> None:
        if len(run) == 1:
            steps.append(run[0].forward)
        elif run:
            chain = _native._DenseChain([(d.layer._packed._packed, d.layer.weight_scale, d.layer.bias, d.layer.relu)
                                         for d in run])
            steps.append(lambda x, chain=chain: _chain_forward(chain, x))
        run.clear()

    for op in ops:
        if isinstance(op, _Dense):
            run.append(op)
            continue
        close()
        steps.append(op.forward if isinstance(op, _Op) else op)
    close()
    return steps


def _chain_forward(chain: Any, x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:
        return chain.forward(x)  # predict hands over C-contiguous float32
    lead = x.shape[:-1]
    y = chain.forward(np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32))
    return y.reshape(lead + (y.shape[-1],))


class RuntimeModel:
    """An inference model on the int8 and sparse kernels.

    Build one with :func:`convert`; read one with :func:`load`.

    Parameters
    ----------
    ops : list
        The operations in order (internal objects made by :func:`convert`).
    input_shape : tuple of int
        Shape of one sample (without the batch dimension).
    meta : dict, optional
        Free-form description saved with the model (e.g. class names).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.mlp([8, 16, 3], rng=0).eval()
    >>> rt = hw.runtime.convert(net, input_shape=(8,))
    >>> x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    >>> bool(np.abs(rt.predict(x) - net(x)).max() < 0.05)
    True
    """

    def __init__(self, ops: list[_Op], input_shape: tuple[int, ...], meta: dict[str, Any] | None = None,
                 *, threads: int | None = None) -> None:
        self.ops = list(ops)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.meta = dict(meta or {})
        self.threads = threads
        self._steps = _plan(self.ops, self.input_shape)

    # -- running -----------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        """Outputs for a batch ``x`` of shape ``(N, *input_shape)`` (float32 in, float32 out)."""
        if not (type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous):
            x = np.asarray(x)
            if x.dtype.kind not in "biuf":
                raise TypeError(f"x must be a numeric array; got dtype {x.dtype}")
            x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.input_shape))}); got {x.shape}")
        y = x
        if self.threads is None:
            for step in self._steps:
                y = step(y)
            return y
        previous = num_threads()
        set_num_threads(self.threads)
        try:
            for step in self._steps:
                y = step(y)
        finally:
            set_num_threads(previous)
        return y

    __call__ = predict

    # -- describing ----------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of weights, scales, biases and indices the model keeps."""
        return sum(op.nbytes for op in self.ops)

    def layer_work(self, batch: int = 1) -> list[LayerWork]:
        """What each operation computes and moves for a batch (input to the cost model)."""
        shape: tuple[int, ...] = (batch,) + self.input_shape
        out = []
        for i, op in enumerate(self.ops):
            out.append(op.work(f"{i}.{op.kind}", shape))
            shape = op.out_shape(shape)
        return out

    def summary(self) -> list[dict[str, Any]]:
        """One row per operation: kind, output shape for one sample, bytes."""
        shape: tuple[int, ...] = (1,) + self.input_shape
        rows = []
        for i, op in enumerate(self.ops):
            shape = op.out_shape(shape)
            rows.append({"index": i, "op": op.kind, "out_shape": shape[1:], "nbytes": op.nbytes,
                         **{k: v for k, v in op.spec().items() if k in ("relu", "path", "block")}})
        return rows

    def __repr__(self) -> str:
        kinds = ", ".join(op.kind for op in self.ops)
        return f"RuntimeModel(input_shape={self.input_shape}, ops=[{kinds}], nbytes={self.nbytes})"

    # -- files and pickling ---------------------------------------------------
    def _to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        specs = []
        for i, op in enumerate(self.ops):
            specs.append(op.spec())
            for k, v in op.arrays().items():
                arrays[f"{i}.{k}"] = np.asarray(v)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "input_shape": list(self.input_shape),
                "ops": specs, "meta": self.meta}
        return arrays, meta

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "RuntimeModel":
        if meta.get("format") != FORMAT:
            raise io.FormatError(f"not a runtime model (format {meta.get('format')!r})")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise io.FormatError(f"runtime model version {meta['format_version']} is newer than this reader "
                                 f"({FORMAT_VERSION})")
        ops = []
        for i, spec in enumerate(meta["ops"]):
            kind = spec.get("op")
            if kind not in _OPS:
                raise io.FormatError(f"unknown operation {kind!r} at position {i}")
            prefix = f"{i}."
            mine = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            try:
                ops.append(_OPS[kind].from_file(spec, mine))
            except (KeyError, ValueError, TypeError) as e:
                raise io.FormatError(f"operation {i} ({kind}) is malformed: {e}") from e
        return cls(ops, tuple(meta["input_shape"]), meta.get("meta"))

    def save(self, path: Any) -> int:
        """Write the model to one ``.hwreg`` file; returns its size in bytes."""
        arrays, meta = self._to_arrays()
        return io.save(path, arrays, meta)

    def __getstate__(self) -> dict[str, Any]:
        arrays, meta = self._to_arrays()
        return {"arrays": {k: np.array(v) for k, v in arrays.items()}, "meta": meta, "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        other = RuntimeModel._from_arrays(state["arrays"], state["meta"])
        self.__dict__.update(other.__dict__)  # includes the fused steps
        self.threads = state.get("threads")


def load(path: Any, *, verify: bool = True) -> RuntimeModel:
    """Read a runtime model written by :meth:`RuntimeModel.save`.

    Raises :class:`hwreg_rs.io.FormatError` for a corrupt, truncated or foreign file.

    Examples
    --------
    >>> import os, tempfile, numpy as np, hwreg_rs as hw
    >>> rt = hw.runtime.convert(hw.nn.mlp([4, 2], rng=0), input_shape=(4,))
    >>> p = os.path.join(tempfile.mkdtemp(), "m.hwreg"); _ = rt.save(p)
    >>> x = np.ones((1, 4), np.float32)
    >>> bool(np.array_equal(hw.runtime.load(p).predict(x), rt.predict(x)))
    True
    """
    arrays, meta = io.load(path, verify=verify)
    return RuntimeModel._from_arrays(arrays, meta)


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


def _layers(model: Module) -> list[Module]:
    if isinstance(model, Sequential):
        out: list[Module] = []
        for m in model:
            out.extend(_layers(m))
        return out
    return [model]


def _finish(p: _Pending, *, sparse_mode: str, batch: int) -> _Op:
    m = p.module
    folded = not np.array_equal(p.weight, m.effective_weight().astype(np.float64))
    w32 = p.weight.astype(np.float32)
    if isinstance(m, Linear):
        mask = w32 != 0
        density = float(mask.mean()) if mask.size else 1.0
        # Above half dense no sparse format pays (DESIGN §5: break-even ~70% sparsity with blocks).
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
        return _Conv(layer, m.in_channels, m.kernel_size, m.stride, m.padding)
    return _Dense(layer)


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


def convert(model: Module, *, input_shape: Iterable[int], sparse: str = "auto", batch_size: int = 1,
            meta: dict[str, Any] | None = None, threads: int | None = None) -> RuntimeModel:
    """Convert a trained model into an int8 :class:`RuntimeModel`.

    Parameters
    ----------
    model : hwreg_rs.nn.Module
        A :class:`~hwreg_rs.nn.Sequential` (nested ones are flattened) of
        Linear, Conv2d, BatchNorm1d/2d, ReLU, MaxPool2d, AvgPool2d, Flatten
        and Dropout layers. Its weights are read, not changed.
    input_shape : iterable of int
        Shape of one sample, e.g. ``(64,)`` or ``(1, 8, 8)``.
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
    """
    if sparse not in ("auto", "never", "always"):
        raise ValueError(f"sparse must be 'auto', 'never' or 'always'; got {sparse!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    shape = tuple(int(d) for d in input_shape)
    ops: list[_Op] = []
    pending: _Pending | None = None

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            ops.append(_finish(pending, sparse_mode=sparse, batch=int(batch_size)))
            pending = None

    for m in _layers(model):
        if isinstance(m, (Linear, Conv2d)):
            flush()
            w = m.effective_weight().astype(np.float64)
            b = m.bias.data.astype(np.float64) if m.bias is not None else np.zeros(w.shape[0])
            pending = _Pending(m, w, b)
        elif isinstance(m, (BatchNorm1d, BatchNorm2d)):
            if pending is not None and not pending.relu:
                _fold_bn(pending, m)
            else:
                flush()
                inv = 1.0 / np.sqrt(m.running_var.astype(np.float64) + m.eps)
                g = m.weight.data if m.weight is not None else np.ones_like(inv)
                b = m.bias.data if m.bias is not None else np.zeros_like(inv)
                ops.append(_Affine(g * inv, b - m.running_mean * g * inv))
        elif isinstance(m, ReLU):
            if pending is not None and not pending.relu:
                pending.relu = True
            else:
                flush()
                ops.append(_ReLU())
        elif isinstance(m, Dropout):
            continue  # identity at inference
        elif isinstance(m, (MaxPool2d, AvgPool2d)):
            flush()
            ops.append(_Pool("maxpool2d" if isinstance(m, MaxPool2d) else "avgpool2d", m.kernel_size, m.stride,
                             m.padding))
        elif isinstance(m, Flatten):
            flush()
            ops.append(_Flatten(m.start_dim))
        else:
            raise TypeError(f"cannot convert layer {type(m).__name__}; supported: Linear, Conv2d, BatchNorm1d/2d, "
                            "ReLU, MaxPool2d, AvgPool2d, Flatten, Dropout")
    flush()
    rt = RuntimeModel(ops, shape, meta, threads=threads)
    # Check the layer list against the input shape now, not at the first predict.
    rt.predict(np.zeros((1,) + shape, np.float32))
    return rt
