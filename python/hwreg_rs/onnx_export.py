"""ONNX export: float ``hw.nn`` models as float ONNX, runtime models as integer ONNX.

A float model (:class:`~hwreg_rs.nn.Sequential`, :class:`~hwreg_rs.nn.Graph`
or one layer) becomes one ONNX node (or a short fixed pattern) per op.

A :class:`~hwreg_rs.runtime.RuntimeModel` is written with integer ops
(``MatMulInteger``, ``ConvInteger``) rather than QDQ, because they reproduce
our arithmetic: the same int8 weights, the same dynamic uint8 activations
(one scale and zero point per row of a Linear, per image of a convolution,
computed with the same formulas in float32) or, for a statically quantized
layer, ``QuantizeLinear`` with its calibrated scale and zero point, an exact int32 accumulation and
the same float output step (``acc * x_scale * w_scale + bias``, ReLU). QDQ
would leave the choice of integer kernels, and their rounding, to the
consumer. Zero points are folded out as the runtime folds them: ``MatMulInteger``
runs with a zero point of 0 and ``zp * column sum`` is subtracted in int32 (ONNX
Runtime takes only a scalar activation zero point); a convolution subtracts
``zp`` times the sum of the weights its window covers, so zero padding means a
real zero as in the runtime. Sparse layers are written as their dense int8
equivalent; ops that run in float in the runtime are written in float. int4
layers are written as ONNX Runtime's ``MatMulNBits`` (com.microsoft) on the
same packed codes and scales (see ``_int4_linear`` for why not QDQ INT4).

Note: ONNX Runtime's AVX2 (non-VNNI) u8×s8 kernels saturate 16-bit pair sums
(docs/design.md §4), so on such CPUs its results for these models can differ from ours;
on AVX-512 VNNI and AVX-VNNI CPUs they are exact.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from .nn.graph import Graph
from .nn.module import Module

__all__ = ["export"]


class _Builder:
    """Collects ONNX nodes and initializers under fresh, unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()

    def fresh(self, hint: str) -> str:
        base = hint.replace(" ", "_") or "v"
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def const(self, arr: Any, hint: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.array(arr, order="C"), name))  # keeps 0-d scalars 0-d
        return name

    def node(self, op_type: str, inputs: Sequence[str], hint: str, *, outputs: Sequence[str] | None = None,
             n_out: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        outs = list(outputs) if outputs is not None else [self.fresh(f"{hint}/{op_type}") for _ in range(n_out)]
        for o in outs:
            self._names.add(o)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh(f"{hint}/{op_type}_node"),
                                           **attrs))
        return outs[0] if len(outs) == 1 else outs


def _f32(v: Any) -> np.ndarray:
    return np.asarray(v, np.float32)


def _i64(v: Any) -> np.ndarray:
    return np.asarray(v, np.int64)


# ---------------------------------------------------------------------------
# Float ops: module -> ONNX nodes
# ---------------------------------------------------------------------------


def _float_op(b: _Builder, m: Module, ins: Sequence[str], outs: Sequence[str], shapes: Sequence[tuple[int, ...]],
              hint: str) -> None:
    """Write a registered float op as ONNX, reading ``ins`` and writing ``outs``."""
    t = m.op_type
    c = m.config()
    one = dict(outputs=outs, hint=hint)
    if t == "Linear":
        w = _f32(m.weight.data)
        bias = [b.const(_f32(m.bias.data), f"{hint}.bias")] if m.bias is not None else []
        if len(shapes[0]) == 2:
            b.node("Gemm", [ins[0], b.const(w, f"{hint}.weight")] + bias, transB=1, **one)
        elif bias:
            h = b.node("MatMul", [ins[0], b.const(np.ascontiguousarray(w.T), f"{hint}.weight_t")], hint)
            b.node("Add", [h, bias[0]], **one)
        else:
            b.node("MatMul", [ins[0], b.const(np.ascontiguousarray(w.T), f"{hint}.weight_t")], **one)
    elif t == "Conv2d":
        p = tuple(m.padding)
        pads = [p[0], p[1], p[0], p[1]] if len(p) == 2 else [p[0], p[1], p[2], p[3]]
        args = [ins[0], b.const(_f32(m.effective_weight()), f"{hint}.weight")]
        if m.bias is not None:
            args.append(b.const(_f32(m.bias.data), f"{hint}.bias"))
        b.node("Conv", args, kernel_shape=list(m.kernel_size), strides=list(m.stride), pads=pads,
               dilations=list(getattr(m, "dilation", (1, 1))), group=int(getattr(m, "groups", 1)), **one)
    elif t in ("BatchNorm1d", "BatchNorm2d"):
        n = m.num_features
        scale = _f32(m.weight.data) if m.weight is not None else np.ones(n, np.float32)
        shift = _f32(m.bias.data) if m.bias is not None else np.zeros(n, np.float32)
        b.node("BatchNormalization", [ins[0], b.const(scale, f"{hint}.weight"), b.const(shift, f"{hint}.bias"),
                                      b.const(_f32(m.running_mean), f"{hint}.running_mean"),
                                      b.const(_f32(m.running_var), f"{hint}.running_var")],
               epsilon=float(m.eps), momentum=1.0 - float(m.momentum), **one)
    elif t in ("Relu", "Sigmoid", "Tanh", "Sqrt", "Exp", "Neg", "Erf", "Identity", "HardSwish", "MatMul", "Add",
               "Sub", "Mul", "Div"):
        b.node(t, list(ins), **one)
    elif t == "Dropout":
        b.node("Identity", list(ins), **one)
    elif t in ("MaxPool2d", "AvgPool2d"):
        p = tuple(m.padding)
        attrs = dict(kernel_shape=list(m.kernel_size), strides=list(m.stride), pads=[p[0], p[1], p[0], p[1]])
        if t == "AvgPool2d":
            attrs["count_include_pad"] = 1
        b.node("MaxPool" if t == "MaxPool2d" else "AveragePool", list(ins), **attrs, **one)
    elif t == "Flatten":
        sd = int(c.get("start_dim", 1))
        if sd == 1:
            b.node("Flatten", list(ins), axis=1, **one)
        else:
            s = shapes[0]
            b.node("Reshape", [ins[0], b.const(_i64([-1, *s[1:sd], int(np.prod(s[sd:]))]), f"{hint}.shape")],
                   **one)
    elif t == "Pow":
        b.node("Pow", [ins[0], b.const(_f32(c["exponent"]), f"{hint}.exponent")], **one)
    elif t == "LeakyRelu":
        b.node("LeakyRelu", list(ins), alpha=float(c["alpha"]), **one)
    elif t in ("Clip", "ReLU6"):
        lo, hi = (0.0, 6.0) if t == "ReLU6" else (c.get("min"), c.get("max"))
        b.node("Clip", [ins[0], "" if lo is None else b.const(_f32(lo), f"{hint}.min"),
                        "" if hi is None else b.const(_f32(hi), f"{hint}.max")], **one)
    elif t == "HardSigmoid":
        b.node("HardSigmoid", list(ins), alpha=float(c["alpha"]), beta=float(c["beta"]), **one)
    elif t == "Gelu":
        _gelu(b, ins[0], outs[0], c.get("approximate", "none"), hint)
    elif t in ("Softmax", "LogSoftmax"):
        b.node(t, list(ins), axis=int(c.get("axis", -1)), **one)
    elif t == "LayerNorm":
        norm = tuple(c["normalized_shape"]) if not isinstance(c["normalized_shape"], int) else (c["normalized_shape"],)
        w = _f32(m.weight.data) if getattr(m, "weight", None) is not None else np.ones(norm, np.float32)
        sh = _f32(m.bias.data) if getattr(m, "bias", None) is not None else np.zeros(norm, np.float32)
        b.node("LayerNormalization", [ins[0], b.const(w, f"{hint}.weight"), b.const(sh, f"{hint}.bias")],
               axis=-len(norm), epsilon=float(c.get("eps", 1e-5)), **one)
    elif t == "GlobalAveragePool":
        b.node("GlobalAveragePool", list(ins), **one)
    elif t in ("ReduceMean", "ReduceSum"):
        axes = c.get("axes")
        axes = list(range(len(shapes[0]))) if axes is None else ([axes] if isinstance(axes, int) else list(axes))
        b.node(t, [ins[0], b.const(_i64(axes), f"{hint}.axes")] if t == "ReduceSum" else [ins[0]],
               keepdims=int(bool(c.get("keepdims", True))), **({"axes": axes} if t == "ReduceMean" else {}), **one)
    elif t == "Reshape":
        b.node("Reshape", [ins[0], b.const(_i64(c["shape"]), f"{hint}.shape")],
               **({"allowzero": 1} if c.get("allowzero") else {}), **one)
    elif t == "Transpose":
        perm = c.get("perm")
        b.node("Transpose", list(ins), **({"perm": list(perm)} if perm is not None else {}), **one)
    elif t in ("Squeeze", "Unsqueeze"):
        axes = c.get("axes")
        args = [ins[0]] if axes is None else [ins[0], b.const(_i64([axes] if isinstance(axes, int) else axes),
                                                              f"{hint}.axes")]
        b.node(t, args, **one)
    elif t == "Concat":
        b.node("Concat", list(ins), axis=int(c["axis"]), **one)
    elif t == "Split":
        b.node("Split", [ins[0], b.const(_i64(c["split"]), f"{hint}.split")], axis=int(c.get("axis", 0)),
               outputs=outs, hint=hint)
    elif t == "Slice":
        args = [ins[0], b.const(_i64(c["starts"]), f"{hint}.starts"), b.const(_i64(c["ends"]), f"{hint}.ends")]
        if c.get("axes") is not None or c.get("steps") is not None:
            axes = c.get("axes") if c.get("axes") is not None else list(range(len(c["starts"])))
            args.append(b.const(_i64(axes), f"{hint}.axes"))
        if c.get("steps") is not None:
            args.append(b.const(_i64(c["steps"]), f"{hint}.steps"))
        b.node("Slice", args, **one)
    elif t == "Expand":
        b.node("Expand", [ins[0], b.const(_i64(c["shape"]), f"{hint}.shape")], **one)
    elif t == "Gather":
        b.node("Gather", [ins[0], b.const(_i64(c["indices"]), f"{hint}.indices")], axis=int(c.get("axis", 0)),
               **one)
    elif t == "Embedding":
        b.node("Gather", [b.const(_f32(m.weight.data), f"{hint}.weight"), ins[0]], axis=0, **one)
    elif t == "Cast":
        from onnx import helper

        b.node("Cast", list(ins), to=int(helper.np_dtype_to_tensor_dtype(np.dtype(c["to"]))), **one)
    else:
        raise ValueError(f"op {t or type(m).__name__} (node {hint!r}) has no ONNX export")


def _gelu(b: _Builder, x: str, out: str, approximate: str, hint: str) -> None:
    half = b.node("Mul", [x, b.const(_f32(0.5), f"{hint}.half")], hint)
    if approximate == "tanh":
        cube = b.node("Mul", [b.node("Mul", [x, x], hint), x], hint)
        inner = b.node("Add", [x, b.node("Mul", [cube, b.const(_f32(0.044715), f"{hint}.c")], hint)], hint)
        t = b.node("Tanh", [b.node("Mul", [inner, b.const(_f32(np.sqrt(2 / np.pi)), f"{hint}.k")], hint)], hint)
    else:
        t = b.node("Erf", [b.node("Div", [x, b.const(_f32(np.sqrt(2.0)), f"{hint}.sqrt2")], hint)], hint)
    b.node("Mul", [half, b.node("Add", [t, b.const(_f32(1.0), f"{hint}.one")], hint)], hint, outputs=[out])


# ---------------------------------------------------------------------------
# Runtime ops: integer arithmetic as the runtime does it
# ---------------------------------------------------------------------------


def _uint8_params(b: _Builder, x: str, axes: list[int] | None, hint: str) -> tuple[str, str]:
    """DynamicQuantizeLinear's scale and zero point (float, integral) over ``axes`` (keepdims),
    with a scale of 1 where the range is 0, as the runtime computes them."""
    red = dict(keepdims=1, **({"axes": axes} if axes is not None else {}))
    zero = b.const(_f32(0.0), f"{hint}.zero")
    lo = b.node("Min", [b.node("ReduceMin", [x], hint, **red), zero], hint)
    hi = b.node("Max", [b.node("ReduceMax", [x], hint, **red), zero], hint)
    raw = b.node("Div", [b.node("Sub", [hi, lo], hint), b.const(_f32(255.0), f"{hint}.qmax")], hint)
    scale = b.node("Where", [b.node("Equal", [raw, zero], hint), b.const(_f32(1.0), f"{hint}.one"), raw], hint)
    zp = b.node("Clip", [b.node("Round", [b.node("Div", [b.node("Neg", [lo], hint), scale], hint)], hint), zero,
                         b.const(_f32(255.0), f"{hint}.zp_max")], hint)
    return scale, zp


def _to_uint8(b: _Builder, x: str, scale: str, zp: str, hint: str) -> str:
    from onnx import TensorProto

    # The kernels' one activation quantizer multiplies by 1/scale (documented in rust/kernels quant/rows).
    scaled = b.node("Mul", [x, b.node("Reciprocal", [scale], hint)], hint)
    q = b.node("Clip", [b.node("Add", [b.node("Round", [scaled], hint), zp], hint), b.const(_f32(0.0), f"{hint}.lo"),
                        b.const(_f32(255.0), f"{hint}.hi")], hint)
    return b.node("Cast", [q], hint, to=TensorProto.UINT8)


def _static_uint8(b: _Builder, x: str, act: tuple[Any, int], hint: str) -> tuple[str, str, str]:
    """A statically quantized layer's input: ``QuantizeLinear`` with its fixed scale and zero point
    (divide, round half to even, saturate: the runtime's rule). Returns ``(q, scale, zp as float)``."""
    scale = b.const(_f32(act[0]), f"{hint}.input_scale")
    q = b.node("QuantizeLinear", [x, scale, b.const(np.array(act[1], np.uint8), f"{hint}.input_zero_point")], hint)
    return q, scale, b.const(_f32(act[1]), f"{hint}.input_zero_point_f")


def _output_step(b: _Builder, acc: str, x_scale: str, w_scale: np.ndarray, bias: np.ndarray | None, relu: bool,
                 out: str, hint: str, shape: tuple[int, ...]) -> None:
    from onnx import TensorProto

    f = b.node("Cast", [acc], hint, to=TensorProto.FLOAT)
    cols = b.const(_f32(w_scale).reshape(shape), f"{hint}.weight_scale")
    y = b.node("Mul", [b.node("Mul", [f, x_scale], hint), cols], hint)  # (acc * row scale) * column scale, as the kernels
    if bias is not None:
        y = b.node("Add", [y, b.const(_f32(bias).reshape(shape), f"{hint}.bias")], hint)
    if relu:
        b.node("Relu", [y], hint, outputs=[out])
    else:
        b.node("Identity", [y], hint, outputs=[out])


def _int8_linear(b: _Builder, wq: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None, relu: bool, x: str,
                 out: str, in_shape: tuple[int, ...], hint: str, act: tuple[Any, int] | None = None) -> None:
    from onnx import TensorProto

    n, k = wq.shape
    rows = x
    if len(in_shape) != 2:
        rows = b.node("Reshape", [x, b.const(_i64([-1, k]), f"{hint}.rows")], hint)
    if act is None:
        scale, zp = _uint8_params(b, rows, [1], hint)
        q = _to_uint8(b, rows, scale, zp, hint)
    else:
        q, scale, zp = _static_uint8(b, rows, act, hint)
    acc = b.node("MatMulInteger", [q, b.const(np.ascontiguousarray(wq.T.astype(np.int8)), f"{hint}.weight_q")], hint)
    colsum = wq.astype(np.int32).sum(axis=1, dtype=np.int32).reshape(1, n)
    zp_i = b.node("Cast", [zp], hint, to=TensorProto.INT32)
    acc = b.node("Sub", [acc, b.node("Mul", [zp_i, b.const(colsum, f"{hint}.colsum")], hint)], hint)
    if len(in_shape) == 2:
        _output_step(b, acc, scale, w_scale, bias, relu, out, hint, (1, n))
        return
    flat = b.fresh(f"{hint}/flat_out")
    _output_step(b, acc, scale, w_scale, bias, relu, flat, hint, (1, n))
    b.node("Reshape", [flat, b.const(_i64([-1, *in_shape[1:-1], n]), f"{hint}.out_shape")], hint, outputs=[out])


def _int4_linear(b: _Builder, layer: Any, x: str, out: str, hint: str) -> None:
    """An int4 layer as ONNX Runtime's ``MatMulNBits`` (com.microsoft) on the same packed codes.

    ``MatMulNBits`` over QDQ INT4 (``DequantizeLinear`` with ``block_size``, opset 21): ONNX Runtime
    rewrites the QDQ pair into this very op (measured alike: 4096x4096, batch 1), and this form needs
    neither opset 21 nor IR 10. ``accuracy_level=4`` lets it quantize the activations to int8 itself
    (its fast path), so its output matches ``predict`` to the activations' rounding, not bit for bit.
    Per-channel scales are written as blocks of 128 that repeat the channel's scale.
    """
    w = layer.weight
    n, k = layer.out_features, layer.in_features
    bs = 128 if layer.group_size is None else layer.group_size
    kb = -(-k // bs)
    reps = kb if layer.group_size is None else 1
    blob = np.zeros((n, kb * bs // 2), np.uint8)
    blob[:, :w.packed.shape[1]] = w.packed
    scales = np.repeat(w.scales, reps, axis=1)
    ins = [x, b.const(blob.reshape(n, kb, bs // 2), f"{hint}.weight_packed"),
           b.const(_f32(scales), f"{hint}.weight_scales")]
    if w.zero_points is not None:
        z = np.repeat(w.zero_points, reps, axis=1)
        if kb % 2:
            z = np.concatenate([z, np.zeros((n, 1), np.uint8)], axis=1)
        ins.append(b.const(np.ascontiguousarray(z[:, 0::2] | (z[:, 1::2] << 4)), f"{hint}.weight_zero_points"))
    y = b.node("MatMulNBits", ins, hint, domain="com.microsoft", K=k, N=n, bits=4, block_size=bs, accuracy_level=4)
    if layer.bias is not None:
        y = b.node("Add", [y, b.const(_f32(layer.bias), f"{hint}.bias")], hint)
    b.node("Relu" if layer.relu else "Identity", [y], hint, outputs=[out])


def _tap_sums(w: np.ndarray, in_hw: tuple[int, int], stride: Sequence[int], pads: Sequence[int],
              dilation: Sequence[int], groups: int) -> np.ndarray:
    """For each output channel and position, the sum of the weights whose taps fall inside the
    (zero-padded) image: what a zero point contributes to the int32 sum, ``(1, OC, OH, OW)``."""
    oc, cg, kh, kw = w.shape
    t, l, bt, r = pads
    ones = np.pad(np.ones((groups * cg,) + tuple(in_hw), np.int64), ((0, 0), (t, bt), (l, r)))
    (sh, sw), (dh, dw) = stride, dilation
    oh = (ones.shape[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (ones.shape[2] - dw * (kw - 1) - 1) // sw + 1
    s = ones.strides
    win = np.lib.stride_tricks.as_strided(ones, (groups, cg, oh, ow, kh, kw),
                                          (s[0] * cg, s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw))
    wg = w.astype(np.int64).reshape(groups, oc // groups, cg, kh, kw)
    return np.einsum("gcyxij,gocij->goyx", win, wg).reshape(1, oc, oh, ow).astype(np.int32)


def _int8_conv(b: _Builder, op: Any, x: str, out: str, in_shape: tuple[int, ...], hint: str, *,
               batch_fallback: bool) -> None:
    from onnx import TensorProto

    layer = op.layer
    oc = layer.out_features
    c = op.in_channels
    kh, kw = op.kernel_size
    groups = int(getattr(op, "groups", 1))
    w = layer.weight_q.reshape(oc, c // groups, kh, kw).astype(np.int8)
    pad = tuple(op.padding)
    pads = [pad[0], pad[1], pad[0], pad[1]] if len(pad) == 2 else list(pad)
    dil = list(getattr(op, "dilation", (1, 1)))
    if op.act is not None:
        q, scale, zp = _static_uint8(b, x, op.act, hint)
    else:
        scale, zp = _uint8_params(b, x, [1, 2, 3], hint)
        if batch_fallback:
            # The runtime pads with one zero point: when the images' zero points differ it
            # quantizes the batch as one tensor. The same choice, as data flow.
            s_all, z_all = _uint8_params(b, x, None, f"{hint}.batch")
            same = b.node("Equal", [b.node("ReduceMax", [zp], hint, keepdims=0),
                                    b.node("ReduceMin", [zp], hint, keepdims=0)], hint)
            scale = b.node("Where", [same, scale, s_all], hint)
            zp = b.node("Where", [same, zp, z_all], hint)
        q = _to_uint8(b, x, scale, zp, hint)
    acc = b.node("ConvInteger", [q, b.const(w, f"{hint}.weight_q")], hint, kernel_shape=[kh, kw],
                 strides=list(op.stride), pads=pads, dilations=dil, group=groups)
    taps = _tap_sums(w, tuple(in_shape[2:]), op.stride, pads, dil, groups)
    zp_i = b.node("Cast", [zp], hint, to=TensorProto.INT32)
    acc = b.node("Sub", [acc, b.node("Mul", [zp_i, b.const(taps, f"{hint}.tap_sums")], hint)], hint)
    _output_step(b, acc, scale, layer.weight_scale, layer.bias, layer.relu, out, hint, (1, oc, 1, 1))


def _runtime_op(b: _Builder, node: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    op, ins, outs, hint = node.op, list(node.inputs), list(node.outputs), node.name
    kind = op.kind
    in_shape = shapes[ins[0]]
    if kind == "linear":
        layer = op.layer
        _int8_linear(b, layer.weight_q, layer.weight_scale, layer.bias, layer.relu, ins[0], outs[0], in_shape, hint,
                     op.act)
    elif kind == "int4_linear":
        _int4_linear(b, op.layer, ins[0], outs[0], hint)
    elif kind == "sparse_linear":
        dense = np.asarray(op.matrix.to_dense())
        bias = op.bias
        if op.matrix.scale is not None:  # int8 values and row scales: the dense int8 equivalent
            _int8_linear(b, dense.astype(np.int8), np.asarray(op.matrix.scale, np.float32).reshape(-1), bias, op.relu,
                         ins[0], outs[0], in_shape, hint)
        else:
            from .nn.layers import Linear

            lin = Linear(dense.shape[1], dense.shape[0], bias=bias is not None)
            lin.weight.data[...] = dense
            if bias is not None:
                lin.bias.data[...] = bias
            if op.relu:
                h = b.fresh(f"{hint}/pre_relu")
                _float_op(b, lin, ins, [h], [in_shape], hint)
                b.node("Relu", [h], hint, outputs=outs)
            else:
                _float_op(b, lin, ins, outs, [in_shape], hint)
    elif kind == "conv2d":
        _int8_conv(b, op, ins[0], outs[0], in_shape, hint, batch_fallback=True)
    elif kind == "group_conv2d":
        _int8_conv(b, op, ins[0], outs[0], in_shape, hint, batch_fallback=False)
    elif kind in ("maxpool2d", "avgpool2d"):
        p = op.padding
        attrs = dict(kernel_shape=list(op.kernel_size), strides=list(op.stride), pads=[p[0], p[1], p[0], p[1]])
        if kind == "avgpool2d":
            attrs["count_include_pad"] = 1
        b.node("MaxPool" if kind == "maxpool2d" else "AveragePool", ins, hint, outputs=outs, **attrs)
    elif kind == "flatten":
        from .nn.layers import Flatten

        _float_op(b, Flatten(op.start_dim), ins, outs, [in_shape], hint)
    elif kind == "relu":
        b.node("Relu", ins, hint, outputs=outs)
    elif kind == "affine":
        shape = (1, -1) + (1,) * (len(in_shape) - 2)
        y = b.node("Mul", [ins[0], b.const(op.scale.reshape(shape), f"{hint}.scale")], hint)
        b.node("Add", [y, b.const(op.shift.reshape(shape), f"{hint}.shift")], hint, outputs=outs)
    elif kind == "float":
        _float_op(b, op.module, ins, outs, [shapes[v] for v in ins], hint)
    elif kind == "static_add":  # QDQ on the inputs the runtime takes on a uint8 grid
        xs = []
        for v, act in zip(ins, op.acts):
            if act is not None:
                q, scale, _ = _static_uint8(b, v, act, hint)
                v = b.node("DequantizeLinear", [q, scale, b.const(np.array(act[1], np.uint8), f"{hint}.dq_zero_point")],
                           hint)
            xs.append(v)
        b.node("Add", xs, hint, outputs=outs)
    else:
        raise ValueError(f"runtime op {kind!r} (node {hint!r}) has no ONNX export")


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


def export(model: Any, path: Any = None, *, input_shape: Sequence[int] | None = None, opset: int = 17) -> Any:
    """Write ``model`` as an ONNX model; returns the ``onnx.ModelProto``.

    Parameters
    ----------
    model : RuntimeModel or hwreg_rs.nn.Module
        A runtime model (integer ONNX, see the module notes) or a float model
        (Sequential, Graph or one layer: float ONNX).
    path : str or path-like, optional
        Where to write the file (nothing is written when omitted).
    input_shape : sequence of int, optional
        One sample's shape, for a float model that does not know it (a Graph
        from :func:`hwreg_rs.onnx.load` does).
    opset : int, default 17
        The ONNX opset written (17 to 21).

    Examples
    --------
    >>> import numpy as np, onnxruntime as ort, hwreg_rs as hw
    >>> rt = hw.runtime.convert(hw.nn.mlp([8, 16, 3], rng=0).eval(), input_shape=(8,))
    >>> proto = hw.onnx.export(rt)
    >>> sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    >>> x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    >>> bool(np.abs(sess.run(None, {"input": x})[0] - rt.predict(x)).max() < 1e-5)
    True
    """
    from onnx import checker, helper

    from .runtime import RuntimeModel

    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not 17 <= int(opset) <= 21:
        raise ValueError(f"opset must be an int in 17..21; got {opset!r}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    if path is not None and "\0" in os.fspath(path):
        raise ValueError(f"path must not contain a NUL byte; got {path!r}")
    b = _Builder()
    if isinstance(model, RuntimeModel):
        inputs, outputs, sample_shapes = list(model.inputs), list(model.outputs), list(model.input_shapes)
        dtypes = list(model.input_dtypes)
        shapes = model.shapes(1)
        for k, v in model.constants.items():
            b.initializers.append(_initializer(k, v))
            b._names.add(k)
        b._names.update(inputs)
        b._names.update(v for n in model.nodes for v in n.outputs)
        for node in model.nodes:
            _runtime_op(b, node, shapes)
    elif isinstance(model, Module):
        graph = Graph.from_module(model)
        if input_shape is not None:
            sample_shapes = [tuple(int(d) for d in input_shape)] + list((graph.input_shapes or [])[1:])
        elif graph.input_shapes is not None:
            sample_shapes = list(graph.input_shapes)
        elif len(graph.inputs) == 1 and graph.nodes and graph.nodes[0].op.op_type == "Linear":
            sample_shapes = [(graph.nodes[0].op.in_features,)]  # a Linear first: its features are the sample
        else:
            raise ValueError("input_shape is required to export a model that does not record its input shape")
        inputs, outputs = list(graph.inputs), list(graph.outputs)
        dtypes = list(graph.input_dtypes)
        shapes = graph.infer_shapes(*((1,) + tuple(s) for s in sample_shapes))
        for k, v in graph.constants().items():
            b.initializers.append(_initializer(k, v))
            b._names.add(k)
        b._names.update(inputs)
        b._names.update(v for n in graph.nodes for v in n.outputs)
        for node in graph.nodes:
            _float_op(b, node.op, node.inputs, node.outputs, [shapes[v] for v in node.inputs], node.name)
    else:
        raise TypeError(f"model must be a RuntimeModel or a hwreg_rs.nn.Module; got {type(model).__name__}")
    value_info: Callable[..., Any] = lambda v, s, dt="float32": helper.make_tensor_value_info(  # noqa: E731
        v, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), ["batch", *s])
    g = helper.make_graph(b.nodes, "hwreg_rs",
                          [value_info(v, s, dt) for v, s, dt in zip(inputs, sample_shapes, dtypes)],
                          [value_info(v, shapes[v][1:]) for v in outputs], b.initializers)
    opsets = [helper.make_opsetid("", int(opset))]
    if any(n.domain == "com.microsoft" for n in b.nodes):  # int4 layers (MatMulNBits)
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    proto = helper.make_model(g, opset_imports=opsets, producer_name="hwreg_rs")
    proto.ir_version = min(proto.ir_version, 9)  # readable by ONNX Runtime releases of the last two years
    checker.check_model(proto)
    if path is not None:
        data = proto.SerializeToString()
        tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return proto


def _initializer(name: str, value: np.ndarray) -> Any:
    from onnx import numpy_helper

    arr = np.asarray(value)
    return numpy_helper.from_array(arr.astype(np.float32) if arr.dtype.kind == "f" else arr, name)
