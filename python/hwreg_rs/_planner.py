"""The runtime's planner: a :class:`~hwreg_rs.runtime.RuntimeModel` graph lowered to native segments.

:func:`steps` cuts the graph's node list into maximal runs of ops the native
executor implements (``_native._GraphPlan``, the kernel crate's
``plan::graph``): int8, int4 and sparse Linear, int8 Conv2d and depthwise Conv2d, max / average
pooling, BatchNorm affines, ReLU / Clip / ReLU6 / HardSwish, residual Add and
Flatten. Each run becomes one native call (a :class:`Segment`); every other
op (grouped convolutions, ops this module does not know) runs in Python
between segments, as itself. The float ops of attention blocks run natively
too (:func:`_attention_op`): LayerNorm, Softmax over the last axis, GELU, the
product of two activations, Transpose, Reshape / Squeeze / Unsqueeze, the mean
over an outer axis and arithmetic with a scalar constant.

Inside a segment the planner chooses the layout (channels-last between
convolutions, NCHW where an op needs it, so only the segment's inputs and
outputs are NCHW), folds a Flatten of a channels-last tensor into the next
Linear's weight columns, and applies named rewrites, each tested alone:
:func:`fuse_activations` (an element-wise op into the output step of the
layer before it), :func:`fuse_add_relu` (a ReLU into the residual Add
before it), :func:`fuse_transpose_matmul` (the ``kᵀ`` of attention scores
into the MatMul that reads it) and :func:`fuse_residual_add` (a residual Add
into the output step of the static conv that writes one of its inputs). For a
model converted with calibration the native plan also passes uint8 between
static layers (the kernel crate's rewrite "int8 between layers": a producer
writes the bytes its readers' quantizer would make), the residual Adds of such a model included
(``static_add``: an input that a static layer also reads is taken on that layer's grid). Every native op computes
what the Python op it replaces computes, bit for bit, so predictions do not
change.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import _native, sparse
from .gemm import Int8Linear

# The element-wise ops of hwreg_rs.nn the plan runs natively: (name, min, max) of the kernel's Unary.
_UNARY = {"ReLU6": ("clip", 0.0, 6.0), "HardSwish": ("hardswish", None, None)}


def _unary_of(op: Any) -> tuple[str, float | None, float | None] | None:
    """The native element-wise function of a runtime op, or None."""
    if op.kind == "relu":
        return ("relu", None, None)
    if op.kind != "float":
        return None
    t = op.module.op_type
    if t == "Clip":
        return ("clip", op.module.min, op.module.max)
    return _UNARY.get(t)


def _native_op(node: Any, shapes: dict[str, tuple[int, ...]], constants: dict[str, Any],
               floats: set[str], batched: set[str]) -> bool:
    """Whether the native executor runs this node, computing what its Python op computes.

    Ops that cast their input to float32 first (the int8 layers, pooling, ReLU)
    take any input; element-wise float ops need an input known to be float32
    (``floats``), as NumPy would compute them in another dtype otherwise. Every value the node
    reads or writes must be in ``batched`` (its leading axis the batch: the plan sizes by it).
    """
    op = node.op
    attention = _attention_op(node, shapes, constants, floats, batched)
    if attention is not None:
        return attention
    if len(node.outputs) != 1 or any(v in constants or v not in batched for v in (*node.inputs, *node.outputs)):
        return False
    k = op.kind
    x = shapes[node.inputs[0]] if node.inputs else ()
    if k in ("linear", "int4_linear", "relu"):
        return len(node.inputs) == 1
    if k == "sparse_linear":  # a pruned weight in a sparse format (the dense paths keep their Python op)
        return len(node.inputs) == 1 and isinstance(op.matrix, sparse._SparseMatrix)
    if k == "conv2d" or (k == "group_conv2d" and op.depthwise):
        return len(x) == 4
    if k in ("maxpool2d", "avgpool2d"):
        return len(x) == 4
    if k == "static_add":  # it casts its inputs to float32 (or quantizes them) itself
        return len(node.inputs) == 2 and len(x) == 4 and shapes[node.inputs[1]] == x
    if k == "flatten":
        return node.inputs[0] in floats
    if k == "affine":
        return node.inputs[0] in floats and len(x) >= 2
    if k == "float" and op.module.op_type == "GlobalAveragePool":
        return len(x) == 4 and node.inputs[0] in floats and gap_matches_numpy()
    if k == "float" and op.module.op_type == "Add":
        a, b = node.inputs if len(node.inputs) == 2 else (None, None)
        return a in floats and b in floats and shapes[a] == shapes[b]
    if k == "float" and _unary_of(op) is not None:
        return len(node.inputs) == 1 and node.inputs[0] in floats
    return False


# Float ops that only change a value's shape: one native reshape (the batch axis stays first).
_RESHAPES = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")
# Arithmetic with a scalar constant: (constant on the right, constant on the left) -> native fn.
_SCALAR = {"Add": ("add", "add"), "Mul": ("mul", "mul"), "Sub": ("sub", "rsub"), "Div": ("div", "rdiv")}


def _scalar_operand(node: Any, constants: dict[str, Any]) -> tuple[str, float, str] | None:
    """``(fn, constant, activation)`` of ``x (op) c`` with ``c`` a float32 constant of one element that
    broadcasting does not widen; None for any other node."""
    op = node.op
    if op.kind != "float" or op.module.op_type not in _SCALAR or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    right = b in constants and a not in constants
    if not right and not (a in constants and b not in constants):
        return None
    c = np.asarray(constants[b if right else a])
    if c.dtype != np.float32 or c.size != 1:
        return None
    return _SCALAR[op.module.op_type][0 if right else 1], float(c.reshape(-1)[0]), a if right else b


def _attention_op(node: Any, shapes: dict[str, tuple[int, ...]], constants: dict[str, Any], floats: set[str],
                  batched: set[str]) -> bool | None:
    """Whether the native executor runs this attention-block float op (None: not one of them).

    Every operand is a batched float32 value; the batch axis stays the leading one (a Transpose keeps
    axis 0, a MatMul has the batch above its two matrix axes, a mean reduces another axis)."""
    op = node.op
    if op.kind != "float" or len(node.outputs) != 1:
        return None
    t, m, y = op.module.op_type, op.module, node.outputs[0]
    sc = _scalar_operand(node, constants)
    if sc is not None:
        x = sc[2]
        return x in floats and x in batched and y in batched and shapes[y] == shapes[x]
    if t not in ("LayerNorm", "Softmax", "Gelu", "MatMul", "Transpose", "ReduceMean", *_RESHAPES):
        return None
    if any(v in constants or v not in batched or v not in floats for v in node.inputs) or y not in batched:
        return False
    x = shapes[node.inputs[0]]
    if t in _RESHAPES:
        return len(node.inputs) == 1 and math.prod(x[1:]) == math.prod(shapes[y][1:])
    if t == "LayerNorm":
        k = len(m.normalized_shape)
        f32 = all(a is None or a.dtype == np.float32 for a in m._affine())  # else Python's NumPy path
        return f32 and len(x) > k and tuple(x[-k:]) == m.normalized_shape
    if t == "Softmax":
        return len(x) >= 2 and m.axis % len(x) == len(x) - 1
    if t == "Gelu":
        return True
    if t == "MatMul":
        a, b = (shapes[v] for v in node.inputs)
        return len(a) == len(b) >= 3 and a[:-2] == b[:-2] and a[-1] == b[-2]
    if t == "Transpose":
        return m._perm(len(x))[0] == 0
    axes = m._norm_axes(len(x))  # ReduceMean: one outer per-sample axis, NumPy's sequential order
    return len(axes) == 1 and 0 < axes[0] and math.prod(x[axes[0] + 1:]) > 1


def _act(op: Any) -> tuple[float, int] | None:
    """A layer's static input quantization as the plan node takes it (None: dynamic)."""
    return None if op.act is None else (float(op.act[0]), int(op.act[1]))


@functools.cache
def gap_matches_numpy() -> bool:
    """Whether the native global average pool gives NumPy's ``mean`` bytes here (it follows NumPy's
    pairwise summation; checked once per process on both layouts, so a NumPy that sums otherwise
    keeps the op in Python rather than changing predictions)."""
    rng = np.random.default_rng(0)
    for h, w in ((1, 1), (2, 3), (7, 7), (9, 17), (40, 40), (100, 90)):
        x = (rng.standard_normal((2, 3, h, w)) * 8).astype(np.float32)
        want = x.mean(axis=(2, 3), keepdims=True)
        for last in (False, True):
            src = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if last else x
            dims = list(src.shape[1:])
            plan = _native._GraphPlan([("global_avgpool", [0], 1, {"channels_last": last})], [0], [dims], [1])
            if plan.forward([src], 1)[0].tobytes() != want.tobytes():
                return False
    return True


# Python ops whose outputs are always float32.
_FLOAT_OUT = ("linear", "int4_linear", "sparse_linear", "conv2d", "group_conv2d", "maxpool2d", "avgpool2d", "relu",
              "static_add")


@dataclass
class PlanNode:
    """One node of a segment's native plan: ``output = op(inputs)`` over integer value ids."""

    op: str
    inputs: list[int]
    output: int
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the graph node it came from (its profile entry)


class Segment:
    """A run of graph nodes executed as one native plan call.

    Called with the segment's input arrays (NCHW / the model's layout) and
    ``threads``; returns its output value, or a tuple of them.
    """

    def __init__(self, nodes: list[PlanNode], inputs: list[int], input_dims: list[tuple[int, ...]],
                 outputs: list[int]) -> None:
        self.nodes, self.n_outputs = nodes, len(outputs)
        self.plan = _native._GraphPlan([(n.op, n.inputs, n.output, n.params) for n in nodes], inputs,
                                       [list(d) for d in input_dims], outputs)

    def __call__(self, *xs: np.ndarray, threads: int) -> Any:
        if len(xs) == self.n_outputs == 1:  # one array in and out: no lists when x is ready as it is
            y = self.plan.forward_ready(xs[0], threads)
            if y is not None:
                return y
        ys = self.plan.forward([np.ascontiguousarray(x, dtype=np.float32) for x in xs], threads)
        return ys[0] if self.n_outputs == 1 else tuple(ys)

    def timed(self, *xs: np.ndarray, threads: int) -> tuple[Any, dict[str, float]]:
        """``self(*xs)`` and the seconds of each graph node it ran (a fused op counts with its
        producer, a layout change with the node it was made for), timed inside the native call."""
        ys, seconds = self.plan.forward_timed([np.ascontiguousarray(x, dtype=np.float32) for x in xs], threads)
        per: dict[str, float] = {}
        for n, t in zip(self.nodes, seconds):
            per[n.source] = per.get(n.source, 0.0) + t
        return (ys[0] if self.n_outputs == 1 else tuple(ys)), per


def fuse_activations(nodes: list[PlanNode], keep: set[int]) -> list[PlanNode]:
    """An element-wise node whose input only it reads, written by a dense / conv / depthwise node
    with no element-wise step yet, becomes that node's output step (``post``): one pass less."""
    readers = _readers(nodes)
    by_output = {n.output: n for n in nodes}
    gone: set[int] = set()
    for n in nodes:
        src = by_output.get(n.inputs[0]) if n.op == "unary" else None
        if (src is not None and src.op in ("dense", "int4_dense", "sparse_dense", "conv", "depthwise") and src.params["post"] is None
                and readers.get(n.inputs[0], 0) == 1 and n.inputs[0] not in keep):
            src.params["post"] = n.params["fn"]
            src.output = n.output
            gone.add(id(n))
    return [n for n in nodes if id(n) not in gone]


def fuse_add_relu(nodes: list[PlanNode], keep: set[int]) -> list[PlanNode]:
    """A ReLU whose input only it reads, written by a residual Add, becomes that Add's ReLU."""
    readers = _readers(nodes)
    by_output = {n.output: n for n in nodes}
    gone: set[int] = set()
    for n in nodes:
        src = by_output.get(n.inputs[0]) if n.op == "unary" and n.params["fn"][0] == "relu" else None
        if (src is not None and src.op in ("add", "static_add") and not src.params["relu"]
                and readers.get(n.inputs[0], 0) == 1 and n.inputs[0] not in keep):
            src.params["relu"] = True
            src.output = n.output
            gone.add(id(n))
    return [n for n in nodes if id(n) not in gone]


def fuse_residual_add(nodes: list[PlanNode], keep: set[int]) -> list[PlanNode]:
    """A residual Add (with its ReLU) becomes the output step of the static conv that writes one of its
    inputs (``conv_add``: the other input is added before the ReLU and the requantization, as the Add
    would; a static add's residual on its grid, ``res_act``), when only the Add reads that conv's output,
    the conv has no ReLU or element-wise step of its own (nor a grid on the add's side), and the other
    input is ready before the conv runs: one pass and one float tensor less."""
    readers = _readers(nodes)
    by_output = {n.output: n for n in nodes}
    pos = {n.output: i for i, n in enumerate(nodes)}
    gone: set[int] = set()
    for n in nodes:
        if n.op not in ("add", "static_add"):
            continue
        acts = n.params.get("acts", [None, None])
        for mine, other in ((0, 1), (1, 0)):
            v, r = n.inputs[mine], n.inputs[other]
            src = by_output.get(v)
            if (src is not None and src.op == "conv" and src.params.get("act") is not None
                    and not src.params["relu"] and src.params["post"] is None and readers.get(v, 0) == 1
                    and v not in keep and pos.get(r, -1) < pos[v] and acts[mine] is None):
                src.op, src.inputs, src.output = "conv_add", [src.inputs[0], r], n.output
                src.params["relu"] = n.params["relu"]
                src.params["res_act"] = acts[other]  # a static add's residual stays on its grid
                gone.add(id(n))
                break
    return [n for n in nodes if id(n) not in gone]


def fuse_transpose_matmul(nodes: list[PlanNode], keep: set[int]) -> list[PlanNode]:
    """A Transpose that swaps the last two axes of a MatMul's right operand, whose output only that
    MatMul reads, becomes the MatMul's ``trans_b`` (it reads the rows of ``b`` as columns)."""
    readers = _readers(nodes)
    by_output = {n.output: n for n in nodes}
    gone: set[int] = set()
    for n in nodes:
        src = by_output.get(n.inputs[1]) if n.op == "matmul" and not n.params["trans_b"] else None
        if src is None or src.op != "transpose" or readers.get(src.output, 0) != 1 or src.output in keep:
            continue
        r = len(src.params["perm"])
        if r >= 2 and src.params["perm"] == [*range(r - 2), r - 1, r - 2]:
            n.inputs = [n.inputs[0], src.inputs[0]]
            n.params["trans_b"] = True
            gone.add(id(src))
    return [n for n in nodes if id(n) not in gone]


def _readers(nodes: list[PlanNode]) -> dict[int, int]:
    r: dict[int, int] = {}
    for n in nodes:
        for v in n.inputs:
            r[v] = r.get(v, 0) + 1
    return r


def _compact(nodes: list[PlanNode], inputs: list[int], outputs: list[int]) -> tuple[list[int], list[int]]:
    """Renumbers the values ``0..`` in order of first appearance (rewrites leave gaps)."""
    ids: dict[int, int] = {}

    def new(v: int) -> int:
        return ids.setdefault(v, len(ids))

    ins = [new(v) for v in inputs]
    for n in nodes:
        n.inputs = [new(v) for v in n.inputs]
        n.output = new(n.output)
    return ins, [new(v) for v in outputs]


class _Builder:
    """Lowers one run of graph nodes to plan nodes, choosing each value's layout."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes
        self.nodes: list[PlanNode] = []
        self.inputs: list[int] = []
        self.input_names: list[str] = []
        # logical value name -> {layout: id}; layout "plain" (the model's) or "nhwc".
        self.ids: dict[str, dict[str, int]] = {}
        self.count = 0
        self.permuted: dict[str, Any] = {}  # flatten outputs in NHWC order -> their Dense's permuted layer
        self.source = ""  # the graph node being lowered

    def new(self) -> int:
        self.count += 1
        return self.count - 1

    def emit(self, op: str, inputs: list[int], **params: Any) -> int:
        out = self.new()
        self.nodes.append(PlanNode(op, inputs, out, params, self.source))
        return out

    def dims(self, v: str) -> tuple[int, ...]:
        return tuple(self.shapes[v][1:])

    def get(self, v: str, layout: str) -> int:
        """The id of value ``v`` in ``layout``, converting (once) when it is held in the other."""
        held = self.ids.get(v)
        if held is None:  # a segment input: plain
            held = self.ids[v] = {"plain": self.new()}
            self.inputs.append(held["plain"])
            self.input_names.append(v)
        if layout not in held:
            if layout == "nhwc":
                held["nhwc"] = self.emit("to_nhwc", [held["plain"]])
            else:
                held["plain"] = self.emit("to_nchw", [held["nhwc"]])
        return held[layout]

    def layout(self, v: str) -> str:
        held = self.ids.get(v, {"plain": -1})
        return "nhwc" if "nhwc" in held and "plain" not in held else "plain"

    def add_attention(self, node: Any, constants: dict[str, Any]) -> bool:
        """Lowers a node that :func:`_attention_op` accepts (False: not one of those)."""
        op, y = node.op, node.outputs[0]
        if op.kind != "float":
            return False
        t, m = op.module.op_type, op.module
        sc = _scalar_operand(node, constants)
        x = sc[2] if sc is not None else node.inputs[0]
        if sc is not None:
            out = self.emit("scalar", [self.get(x, "plain")], fn=sc[0], value=sc[1])
        elif t in _RESHAPES:
            out = self.emit("reshape", [self.get(x, "plain")], dims=list(self.dims(y)))
        elif t == "LayerNorm":
            w, b = m._affine()
            out = self.emit("layer_norm", [self.get(x, "plain")], d=math.prod(m.normalized_shape), eps=float(m.eps),
                            weight=None if w is None else np.ascontiguousarray(w, np.float32).reshape(-1),
                            bias=None if b is None else np.ascontiguousarray(b, np.float32).reshape(-1))
        elif t == "Softmax":
            out = self.emit("softmax", [self.get(x, "plain")])
        elif t == "Gelu":
            out = self.emit("gelu", [self.get(x, "plain")], approximate=m.approximate)
        elif t == "MatMul":
            out = self.emit("matmul", [self.get(v, "plain") for v in node.inputs], trans_b=False)
        elif t == "Transpose":
            out = self.emit("transpose", [self.get(x, "plain")],
                            perm=[p - 1 for p in m._perm(len(self.shapes[x]))[1:]])
        elif t == "ReduceMean":
            out = self.emit("mean", [self.get(x, "plain")], axis=m._norm_axes(len(self.shapes[x]))[0] - 1,
                            keepdims=m.keepdims)
        else:
            return False
        self.ids[y] = {"plain": out}
        return True

    def add(self, node: Any, next_dense: Any) -> None:
        op, x, y = node.op, node.inputs[0], node.outputs[0]
        self.source = node.name
        k = op.kind
        if k == "conv2d" or k == "group_conv2d":
            nchw_in = self.layout(x) == "plain"
            src = self.get(x, "plain" if nchw_in else "nhwc")
            if k == "conv2d":
                hwc = op._hwc
                out = self.emit("conv", [src], packed=hwc._packed._packed, scale=hwc.weight_scale, bias=hwc.bias,
                                relu=bool(hwc.relu), post=None, kernel=tuple(op.kernel_size), stride=tuple(op.stride),
                                padding=tuple(op.padding), nchw_in=nchw_in, act=_act(op))
            else:
                out = self.emit("depthwise", [src], weight=op._dw_weight, kernel=tuple(op.kernel_size),
                                scale=op._dw_col_scale, bias=op._dw_bias, relu=bool(op.layer.relu), post=None,
                                stride=tuple(op.stride), padding=tuple(op.padding), dilation=tuple(op.dilation),
                                nchw_in=nchw_in, act=_act(op))
            self.ids[y] = {"nhwc": out}
        elif k in ("maxpool2d", "avgpool2d"):
            out = self.emit("maxpool" if k == "maxpool2d" else "avgpool", [self.get(x, "nhwc")],
                            kernel=tuple(op.kernel_size), stride=tuple(op.stride), padding=tuple(op.padding))
            self.ids[y] = {"nhwc": out}
        elif k == "linear":
            layer = self.permuted.pop(x, None) or op.layer
            out = self.emit("dense", [self.get(x, "plain")], packed=layer._packed._packed, scale=layer.weight_scale,
                            bias=layer.bias, relu=bool(layer.relu), post=None, act=_act(op))
            self.ids[y] = {"plain": out}
        elif k == "int4_linear":
            layer = op.layer
            out = self.emit("int4_dense", [self.get(x, "plain")], weight=layer._w, bias=layer.bias,
                            relu=bool(layer.relu), post=None)
            self.ids[y] = {"plain": out}
        elif k == "sparse_linear":
            out = self.emit("sparse_dense", [self.get(x, "plain")], weight=op.matrix._m, bias=op.bias,
                            relu=bool(op.relu), post=None)
            self.ids[y] = {"plain": out}
        elif k == "flatten":
            if self.layout(x) == "nhwc" and op.start_dim == 1 and next_dense is not None:
                # NHWC column (y, x, ch) holds what NCHW column ch*h*w + y*w + x held: permute the Linear instead.
                c, h, w = self.dims(x)
                perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
                layer = next_dense.layer
                self.permuted[y] = Int8Linear(np.ascontiguousarray(layer.weight_q[:, perm]), layer.weight_scale,
                                              layer.bias, relu=layer.relu)
                src = self.get(x, "nhwc")
            else:
                src = self.get(x, "plain")
            self.ids[y] = {"plain": self.emit("reshape", [src], dims=list(self.dims(y)))}
        elif k == "affine":
            lay = self.layout(x)
            out = self.emit("affine", [self.get(x, lay)], scale=op.scale, shift=op.shift,
                            channels_last=lay == "nhwc")
            self.ids[y] = {lay: out}
        elif op.kind == "float" and op.module.op_type == "GlobalAveragePool":
            lay = self.layout(x)
            self.ids[y] = {"plain": self.emit("global_avgpool", [self.get(x, lay)], channels_last=lay == "nhwc")}
        elif op.kind == "float" and op.module.op_type == "Add":
            a, b = node.inputs
            lay = "nhwc" if "nhwc" in (self.layout(a), self.layout(b)) and len(self.shapes[a]) == 4 else "plain"
            self.ids[y] = {lay: self.emit("add", [self.get(a, lay), self.get(b, lay)], relu=False)}
        elif k == "static_add":  # its inputs on their uint8 grids (the plan passes them as uint8)
            a, b = node.inputs
            lay = "nhwc" if "nhwc" in (self.layout(a), self.layout(b)) else "plain"
            acts = [None if t is None else (float(t[0]), int(t[1])) for t in op.acts]
            self.ids[y] = {lay: self.emit("static_add", [self.get(a, lay), self.get(b, lay)], relu=False, acts=acts)}
        else:  # element-wise: any layout
            lay = self.layout(x)
            self.ids[y] = {lay: self.emit("unary", [self.get(x, lay)], fn=_unary_of(op))}


def _segment(run: list[Any], shapes: dict[str, tuple[int, ...]], needed: set[str],
             readers: dict[str, list[Any]], constants: dict[str, Any]) -> tuple[tuple[str, ...], Segment, tuple[str, ...]]:
    """One native segment of graph nodes: ``(reads, segment, writes)``."""
    b = _Builder(shapes)
    inside = {id(n) for n in run}
    for node in run:
        y = node.outputs[0]
        b.source = node.name
        if b.add_attention(node, constants):
            continue
        nxt = None
        if node.op.kind == "flatten" and y not in needed:
            r = readers.get(y, [])
            if len(r) == 1 and r[0].op.kind == "linear" and id(r[0]) in inside:
                nxt = r[0].op
        b.add(node, nxt)
    produced = [n.outputs[0] for n in run]
    outs = [v for v in produced if v in needed]
    out_ids = [b.get(v, "plain") for v in outs]
    keep = set(out_ids)
    nodes = fuse_residual_add(fuse_transpose_matmul(fuse_add_relu(fuse_activations(b.nodes, keep), keep), keep), keep)
    ins, out_ids = _compact(nodes, b.inputs, out_ids)
    seg = Segment(nodes, ins, [b.dims(v) for v in b.input_names], out_ids)
    return tuple(b.input_names), seg, tuple(outs)


def steps(nodes: Sequence[Any], inputs: Sequence[str], input_dtypes: Sequence[str], outputs: Sequence[str],
          constants: dict[str, Any], shapes: dict[str, tuple[int, ...]],
          batched: set[str]) -> list[tuple[tuple[str, ...], Any, tuple[str, ...]]]:
    """What ``predict`` runs: ``(reads, callable, writes)`` in order; a :class:`Segment` per maximal run
    of native nodes, each other node's ``op.forward``. ``shapes``: every value's shape at batch 1;
    ``batched``: the values whose leading axis is the batch."""
    floats = {v for v, d in zip(inputs, input_dtypes) if d == "float32"}
    readers: dict[str, list[Any]] = {}
    for n in nodes:
        for v in n.inputs:
            readers.setdefault(v, []).append(n)
    native = []
    for n in nodes:
        ok = _native_op(n, shapes, constants, floats, batched)
        native.append(ok)
        if ok or n.op.kind in _FLOAT_OUT:
            floats.update(n.outputs)
    out: list[tuple[tuple[str, ...], Any, tuple[str, ...]]] = []
    i = 0
    while i < len(nodes):
        if not native[i]:
            n = nodes[i]
            out.append((n.inputs, n.op.forward, n.outputs))
            i += 1
            continue
        j = i
        while j < len(nodes) and native[j]:
            j += 1
        run = list(nodes[i:j])
        inside = {id(n) for n in run}
        needed = set(outputs) | {v for n in nodes if id(n) not in inside for v in n.inputs}
        out.append(_segment(run, shapes, needed, readers, constants))
        i = j
    return out
