"""ONNX in and out: float ONNX models become :class:`hwreg_rs.nn.Graph` models; models leave as ONNX.

:func:`load` reads a float model (opsets 11–21, as ``torch.onnx.export`` and
model zoos write them) into a trainable graph: one registered op per ONNX
node, parameters named after the ONNX initializers, and every value computed
only from shapes and constants (the Shape → Gather → Concat → Reshape chains
torch emits for attention) folded away at load. Folding runs for two batch
sizes, so a folded shape that depends on the batch keeps a ``-1`` there and
the graph runs at any batch. Written-out LayerNorm, GELU (with Erf) and
MatMul + Add become their fused ops.

:func:`export` writes a model back: a float ``hw.nn`` model (Sequential or
Graph) as float ONNX, a :class:`~hwreg_rs.runtime.RuntimeModel` as the
integer ONNX that reproduces its arithmetic (see :mod:`hwreg_rs.onnx_export`).

The file is parsed with the ``onnx`` package (``pip install 'hwreg-rs[onnx]'``)
and treated as hostile: every declared size is checked against what is stored
and against a bound before anything is allocated; a malformed file raises
:class:`hwreg_rs.io.FormatError`, an op, opset, dtype or attribute we do not
support a ``ValueError`` naming the op type and the node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .io import FormatError
from .nn.graph import Graph, Node, topological_order

__all__ = ["load", "export", "FormatError", "MIN_OPSET", "MAX_OPSET"]

MIN_OPSET, MAX_OPSET = 11, 21
# Bounds on what a file may declare before we allocate for it.
_MAX_FILE_BYTES = 2 << 30  # protobuf's own limit
_MAX_ELEMENTS = 1 << 28  # one tensor, or one sample of an input
_MAX_NODES = 200_000
# The two batch sizes static values are folded at: an entry that differs between them depends on the batch.
_BATCHES = (2, 3)


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("hwreg_rs.onnx needs the onnx package: pip install 'hwreg-rs[onnx]'") from e
    return onnx


# ---------------------------------------------------------------------------
# Reading and validating the file
# ---------------------------------------------------------------------------


def _read_model(src: Any) -> Any:
    onnx = _onnx()
    if isinstance(src, onnx.ModelProto):
        return _has_graph(src, "the given ModelProto")
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        where = "the given bytes"
    elif isinstance(src, (str, os.PathLike)):
        where = repr(os.fspath(src))
        try:
            size = os.path.getsize(src)
        except OSError as e:
            raise FileNotFoundError(f"cannot read ONNX model {where}: {e}") from e
        if size > _MAX_FILE_BYTES:
            raise FormatError(f"{where} is {size} bytes; ONNX files above 2 GiB (external data) are not supported")
        with open(src, "rb") as f:
            data = f.read()
    else:
        raise TypeError(f"model must be a path, bytes or an onnx.ModelProto; got {type(src).__name__}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError (and, on odd input, others): all mean "not ONNX"
        raise FormatError(f"{where} is not a valid ONNX protobuf ({type(e).__name__}: {e})") from None
    return _has_graph(model, where)


def _has_graph(model: Any, where: str) -> Any:
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise FormatError(f"{where} holds no ONNX graph (empty or not an ONNX model)")
    return model


def _opset(model: Any) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise FormatError("the model declares no opset for the default ONNX domain")
    v = int(versions[0])
    if not MIN_OPSET <= v <= MAX_OPSET:
        raise ValueError(f"ONNX opset {v} is not supported; hwreg_rs reads opsets {MIN_OPSET}–{MAX_OPSET} "
                         "(re-export, or convert with onnx.version_converter)")
    return v


_NP_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
             10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64, 4: np.uint16}
# The repeated field of TensorProto each element type is stored in when not in raw_data.
_TYPED_FIELD = {1: "float_data", 10: "int32_data", 2: "int32_data", 3: "int32_data", 4: "int32_data",
                5: "int32_data", 6: "int32_data", 9: "int32_data", 7: "int64_data", 11: "double_data",
                12: "uint64_data", 13: "uint64_data"}


def _type_name(code: int) -> str:
    from onnx import TensorProto

    try:
        return f"{TensorProto.DataType.Name(code)} ({code})"
    except ValueError:
        return str(code)


def _tensor(t: Any, what: str) -> np.ndarray:
    """A TensorProto as an array, after checking its declared size against what it stores."""
    from onnx import numpy_helper

    if t.data_location == 1 or len(t.external_data):  # never follow a path a file names
        raise FormatError(f"{what} {t.name!r} keeps its data in an external file, which is not supported "
                          "(save the model with its weights inside: onnx.save(m, path, save_as_external_data=False))")
    if t.data_type not in _NP_TYPES:
        raise ValueError(f"{what} {t.name!r} has ONNX element type {_type_name(t.data_type)}, which is not supported")
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise FormatError(f"{what} {t.name!r} declares negative dims {dims}")
    count = 1
    for d in dims:
        count *= d
        if count > _MAX_ELEMENTS:
            raise FormatError(f"{what} {t.name!r} declares dims {dims}, above the bound of {_MAX_ELEMENTS} elements")
    itemsize = np.dtype(_NP_TYPES[t.data_type]).itemsize
    typed = len(getattr(t, _TYPED_FIELD[t.data_type]))
    if t.raw_data and typed:
        raise FormatError(f"{what} {t.name!r} stores its values both as raw_data and as a typed field")
    if t.HasField("raw_data") or t.raw_data:
        if len(t.raw_data) != count * itemsize:
            raise FormatError(f"{what} {t.name!r} declares dims {dims} ({count * itemsize} bytes) but stores "
                              f"{len(t.raw_data)} bytes")
    else:
        stored = typed
        if stored != count:
            raise FormatError(f"{what} {t.name!r} declares dims {dims} ({count} values) but stores {stored}")
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:
        raise FormatError(f"{what} {t.name!r} cannot be read ({e})") from None
    return np.array(arr, copy=True)


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        if a.type == 4:  # TENSOR
            out[a.name] = _tensor(a.t, f"attribute {a.name} of node")
        elif a.type in (5, 10, 11, 13):  # graphs, sparse tensors, type protos
            raise ValueError(f"op {node.op_type} (node {node.name!r}): attribute {a.name!r} of this kind "
                             "(subgraph / sparse tensor) is not supported")
        else:
            v = helper.get_attribute_value(a)
            out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


# ---------------------------------------------------------------------------
# The import: one pass in topological order
# ---------------------------------------------------------------------------


@dataclass
class _Static:
    """A value known without data: its array at each of the two folding batch sizes."""

    at: tuple[np.ndarray, np.ndarray]

    @property
    def symmetric(self) -> bool:
        a, b = self.at
        return a.shape == b.shape and bool(np.array_equal(a, b))

    def value(self, what: str) -> np.ndarray:
        if not self.symmetric:
            raise ValueError(f"{what} depends on the batch size, which is not supported here")
        return self.at[0]


@dataclass
class _Import:
    opset: int
    static: dict[str, _Static] = field(default_factory=dict)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  # dynamic values
    dtypes: dict[str, Any] = field(default_factory=dict)
    alias: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    initializer_names: set[str] = field(default_factory=set)
    used_names: set[str] = field(default_factory=set)

    def name(self, v: str) -> str:
        while v in self.alias:
            v = self.alias[v]
        return v

    def is_static(self, v: str) -> bool:
        return self.name(v) in self.static

    def const(self, v: str, what: str) -> np.ndarray:
        v = self.name(v)
        if v not in self.static:
            raise ValueError(f"{what} must be a constant (an initializer or folded value); {v!r} is computed from data")
        return self.static[v].value(what)

    def data_input(self, v: str) -> str:
        """The name a node reads ``v`` under: a static value becomes a graph constant.

        A static value that depends on the batch only through its size (a mask
        ConstantOfShape'd or Expand'ed to the batch) is stored at batch size 1:
        the elementwise op reading it broadcasts it back.
        """
        v = self.name(v)
        if v in self.static and v not in self.constants:
            sv = self.static[v]
            arr = sv.at[0] if sv.symmetric else _batch_one(sv.at)
            if arr is None:
                raise ValueError(f"value {v!r} depends on the batch size in its values, which is not supported")
            self.constants[v] = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
        return v

    def shape(self, v: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        v = self.name(v)
        if v in self.static:
            a, b = self.static[v].at
            return a.shape, b.shape
        return self.shapes[v]

    def batch_axes(self, v: str) -> set[int]:
        """The axes of ``v`` whose size follows the batch (they differ between the two foldings)."""
        a, b = self.shape(v)
        return {i for i, (x, y) in enumerate(zip(a, b)) if x != y}

    def check_axes(self, v: str, axes: Sequence[int], what: str) -> None:
        rank = len(self.shape(v)[0])
        if any((int(a) % rank) in self.batch_axes(v) for a in axes):
            raise _Unsupported(f"{what} along the batch dimension is not supported")

    def module_name(self, node: Any, weight: str | None) -> str:
        # Name a module after its weight initializer ("layer1.0.conv1.weight" -> "layer1.0.conv1"),
        # so state_dict() keys read like the model's own; else after the ONNX node.
        base = ""
        if weight and weight in self.initializer_names:
            base = weight[: -len(".weight")] if weight.endswith(".weight") else weight
        base = base or node.name or f"{node.op_type.lower()}_{len(self.nodes)}"
        name, k = base, 1
        while name in self.used_names:
            name, k = f"{base}_{k}", k + 1
        self.used_names.add(name)
        return name


def _batch_one(at: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """The common size-1 slice of two arrays that differ only by broadcasting along some axes, or None."""
    a, b = at
    if a.ndim != b.ndim:
        return None
    axes = tuple(i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y)
    one = a[tuple(slice(0, 1) if i in axes else slice(None) for i in range(a.ndim))]
    if all(np.array_equal(np.broadcast_to(one, t.shape), t) for t in (a, b)):
        return one
    return None


class _Unsupported(ValueError):
    pass


def load(model: Any, *, input_shape: Sequence[int] | None = None) -> Graph:
    """Read a float ONNX model into a trainable :class:`hwreg_rs.nn.Graph`.

    Parameters
    ----------
    model : str, path-like, bytes or onnx.ModelProto
        The ONNX model.
    input_shape : sequence of int, optional
        Shape of one sample of the (first) input without the batch dimension;
        needed when the file leaves a non-batch dimension symbolic. The first
        dimension of every input is the batch: the graph runs at any batch size.

    Returns
    -------
    Graph
        In evaluation mode; ``g(x)`` runs it in float32; ``g.train()`` to fine-tune.

    Raises
    ------
    FormatError
        The file is not valid ONNX, or declares sizes it does not store or that exceed the bounds.
    ValueError
        An op, opset, element type or attribute that is not supported (the message names the
        op type and the node).

    Examples
    --------
    >>> import numpy as np, onnx, hwreg_rs as hw
    >>> from onnx import helper as h, numpy_helper as nh, TensorProto as T
    >>> w = np.arange(6, dtype=np.float32).reshape(3, 2)
    >>> graph = h.make_graph([h.make_node("Gemm", ["x", "fc.weight"], ["y"], transB=1)], "g",
    ...     [h.make_tensor_value_info("x", T.FLOAT, ["batch", 2])], [h.make_tensor_value_info("y", T.FLOAT, ["batch", 3])],
    ...     [nh.from_array(w, "fc.weight")])
    >>> g = hw.onnx.load(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    >>> g(np.ones((1, 2), np.float32)), list(g.state_dict())
    (array([[1., 5., 9.]], dtype=float32), ['fc.weight'])
    """
    m = _read_model(model)
    opset = _opset(m)
    g = m.graph
    if len(g.node) > _MAX_NODES:
        raise FormatError(f"the graph has {len(g.node)} nodes, above the bound of {_MAX_NODES}")
    st = _Import(opset)
    for t in g.initializer:
        if not t.name:
            raise FormatError("an initializer has no name")
        if t.name in st.static:
            raise FormatError(f"initializer {t.name!r} is defined twice")
        arr = _tensor(t, "initializer")
        st.static[t.name] = _Static((arr, arr))
        st.initializer_names.add(t.name)
    inputs, input_shapes = _graph_inputs(g, st, input_shape)
    for node in _sorted_nodes(g, st):
        domain = node.domain or ""
        if domain not in ("", "ai.onnx"):
            raise ValueError(f"op {domain}.{node.op_type} (node {node.name!r}) is not supported: only the default "
                             "ONNX domain is")
        _import_node(node, st)
    outputs = []
    for o in g.output:
        if o.name not in st.static and o.name not in st.alias and o.name not in st.shapes:
            raise FormatError(f"graph output {o.name!r} is not produced by any node, initializer or input")
        v = st.name(o.name)
        if v in st.static:
            raise ValueError(f"graph output {o.name!r} is a constant; hwreg_rs graphs compute every output from data")
        if v in outputs or v in inputs:  # an aliased output: give it a node of its own
            from .nn.ops import Identity
            st.nodes.append(Node(st.module_name(_FakeNode(o.name), None), Identity(), (v,), (o.name,)))
            v = o.name
        outputs.append(v)
    graph = Graph(st.nodes, inputs, outputs, constants=st.constants, input_shapes=input_shapes,
                  input_dtypes=[np.dtype(st.dtypes[v]).name for v in inputs])
    from .nn import passes
    graph = passes.fuse_imported(graph)
    return graph.eval()


@dataclass
class _FakeNode:
    name: str
    op_type: str = "Identity"


def _graph_inputs(g: Any, st: _Import, input_shape: Sequence[int] | None) -> tuple[list[str], list[tuple[int, ...]]]:
    inputs, shapes = [], []
    for k, vi in enumerate(v for v in g.input if v.name not in st.static):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"graph input {vi.name!r} is not a tensor")
        if tt.elem_type not in (1, 10, 11, 6, 7):
            raise ValueError(f"graph input {vi.name!r} has element type {_type_name(tt.elem_type)}; float32/16/64 "
                             "and int32/64 inputs are supported")
        dims: list[int | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                if d.dim_value < 0:
                    raise FormatError(f"graph input {vi.name!r} declares a negative dim {d.dim_value}")
                dims.append(int(d.dim_value))
            else:
                dims.append(None)
        if not tt.HasField("shape") or not dims:
            raise ValueError(f"graph input {vi.name!r} has no declared rank; give the model a shaped input")
        sample = list(dims[1:])
        if k == 0 and input_shape is not None:
            given = [int(d) for d in input_shape]
            if len(given) != len(sample) or any(a is not None and a != b for a, b in zip(sample, given)):
                raise ValueError(f"input_shape {tuple(given)} does not fit input {vi.name!r} of declared shape "
                                 f"{['?' if d is None else d for d in dims]}")
            sample = given
        if any(d is None for d in sample):
            raise ValueError(f"graph input {vi.name!r} has symbolic non-batch dims {dims}; pass input_shape=")
        n = 1
        for d in sample:
            n *= int(d)  # type: ignore[arg-type]
            if n > _MAX_ELEMENTS:
                raise FormatError(f"graph input {vi.name!r} declares a sample of {sample}, above the bound")
        shp = tuple(int(d) for d in sample)  # type: ignore[arg-type]
        st.shapes[vi.name] = tuple((b,) + shp for b in _BATCHES)  # type: ignore[assignment]
        st.dtypes[vi.name] = _NP_TYPES.get(tt.elem_type, np.float32)
        inputs.append(vi.name)
        shapes.append(shp)
    if not inputs:
        raise ValueError("the model has no data input")
    return inputs, shapes


def _sorted_nodes(g: Any, st: _Import) -> list[Any]:
    produced: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for o in node.output:
            if not o:
                continue
            if o in produced or o in st.static:
                raise FormatError(f"value {o!r} is written twice (node {node.name!r})")
            produced[o] = i
    known = set(st.static) | {v.name for v in g.input}
    deps: dict[str, list[str]] = {}
    for i, node in enumerate(g.node):
        for v in node.input:
            if v and v not in produced and v not in known:
                raise FormatError(f"node {node.name!r} ({node.op_type}) reads {v!r}, which no node, initializer or "
                                  "input defines (missing initializer?)")
        deps[str(i)] = [str(produced[v]) for v in node.input if v in produced]
    try:
        order = topological_order([str(i) for i in range(len(g.node))], deps)
    except ValueError as e:
        raise FormatError(str(e)) from None
    return [g.node[int(i)] for i in order]


# ---------------------------------------------------------------------------
# Per-node import
# ---------------------------------------------------------------------------

# Ops that only ever compute from shapes and constants here: evaluated with onnx.reference.
_FOLD_ONLY = {"Shape", "Size", "ConstantOfShape", "Constant", "Range", "Equal", "Not", "And", "Or",
              "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Floor", "Ceil", "Min", "Max", "Mod",
              "NonZero", "ReduceProd", "Tile", "CumSum", "Abs"}
# Ops whose output size comes from a value they read: bounded before folding.
_SIZED_BY_INPUT = {"ConstantOfShape": 0, "Expand": 1, "Tile": 1, "Range": None}


def _import_node(node: Any, st: _Import) -> None:
    op = node.op_type
    attrs = _attrs(node)
    ins = [st.name(v) if v else "" for v in node.input]
    data_ins = [v for v in ins if v]
    if op in ("Identity", "Dropout"):
        if op == "Dropout" and len(node.output) > 1 and node.output[1]:
            raise ValueError(f"op Dropout (node {node.name!r}): the mask output is not supported")
        if op == "Dropout" and attrs.get("training_mode") is not None:
            raise ValueError(f"op Dropout (node {node.name!r}): training_mode is not supported")
        st.alias[node.output[0]] = ins[0]
        return
    if op == "Shape" and ins[0] not in st.static:
        start, end = attrs.get("start", 0), attrs.get("end", None)
        st.static[node.output[0]] = _Static(tuple(np.array(s[start:end], np.int64) for s in st.shape(ins[0])))
        return
    if op == "Size" and ins[0] not in st.static:
        st.static[node.output[0]] = _Static(tuple(np.array(int(np.prod(s)), np.int64) for s in st.shape(ins[0])))
        return
    if op == "Constant" or (data_ins and all(v in st.static for v in data_ins)) or op in _FOLD_ONLY:
        if not all(v in st.static for v in data_ins):
            raise ValueError(f"op {op} (node {node.name!r}) computes from data, which hwreg_rs supports only when "
                             "its inputs are constants or shapes (it is folded at load)")
        _fold(node, st, attrs, ins)
        return
    conv = _CONVERTERS.get(op)
    if conv is None:
        raise ValueError(f"op {op} (node {node.name!r}) is not supported by hwreg_rs.onnx.load")
    try:
        module, reads, weight = conv(node, st, attrs, ins)
    except FormatError:
        raise
    except (ValueError, TypeError, IndexError) as e:  # incl. attributes of the wrong type or length
        raise ValueError(f"op {op} (node {node.name!r}): {e}") from None
    outs = [o for o in node.output if o]
    reads = [st.data_input(v) for v in reads]
    name = st.module_name(node, weight)
    try:
        shp = [module.out_shape(*(st.shape(v)[k] for v in reads)) for k in range(2)]
    except (ValueError, TypeError, IndexError) as e:
        raise ValueError(f"op {op} (node {node.name!r}): inputs of shapes {[st.shape(v)[0] for v in reads]} do "
                         f"not fit ({e})") from None
    if len(outs) == 1:
        st.shapes[outs[0]] = (tuple(shp[0]), tuple(shp[1]))
    else:
        # A file may list more outputs than the op makes: its shape rule then gives one shape, not a list.
        made = [len(s) if isinstance(s, (list, tuple)) and all(isinstance(d, (list, tuple)) for d in s) else 1
                for s in shp]
        if made != [len(outs)] * 2:
            raise FormatError(f"op {op} (node {node.name!r}) declares {len(outs)} outputs; the op makes {made[0]}")
        for i, o in enumerate(outs):
            st.shapes[o] = (tuple(shp[0][i]), tuple(shp[1][i]))
    for s in shp:
        for o in (s if len(outs) > 1 else [s]):
            if int(np.prod(o[1:], dtype=np.float64)) > _MAX_ELEMENTS:
                raise FormatError(f"op {op} (node {node.name!r}) would produce a sample of shape {o[1:]}, above "
                                  "the bound")
    st.nodes.append(Node(name, module, tuple(reads), tuple(outs), source=node.name or name))


def _fold(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> None:
    """Evaluate a node of constants with the ONNX reference, once per folding batch size."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    op = node.op_type
    if op == "Constant":
        if "value" not in attrs:
            keys = [k for k in attrs]
            vals = {"value_float": np.float32, "value_int": np.int64, "value_floats": np.float32,
                    "value_ints": np.int64}
            if len(keys) != 1 or keys[0] not in vals:
                raise ValueError(f"op Constant (node {node.name!r}): attribute {keys} is not supported")
            arr = np.array(attrs[keys[0]], vals[keys[0]])
        else:
            arr = attrs["value"]
            if not isinstance(arr, np.ndarray):  # a file may retype the attribute: TENSOR is the only kind
                raise FormatError(f"op Constant (node {node.name!r}): attribute 'value' must be a tensor; got "
                                  f"{type(arr).__name__} {str(arr)[:60]}")
        st.static[node.output[0]] = _Static((arr, arr))
        return
    results: list[list[np.ndarray]] = []
    for k in range(2):
        feeds = {v: st.static[v].at[k] for v in ins if v}
        which = _SIZED_BY_INPUT.get(op, -1)
        if which is not None and which >= 0 and len(ins) > which:
            target = feeds[ins[which]]
            if target.size > 64 or int(np.prod(np.maximum(target, 1), dtype=np.float64)) > _MAX_ELEMENTS:
                raise FormatError(f"op {op} (node {node.name!r}) would build a tensor of shape {target.tolist()}, "
                                  "above the bound")
        if op == "Range":
            s, lim, d = (float(feeds[v]) for v in ins)
            if d == 0 or abs((lim - s) / d) > _MAX_ELEMENTS:
                raise FormatError(f"op Range (node {node.name!r}) has delta {d} for [{s}, {lim})")
        if any(not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf" for a in feeds.values()):
            raise ValueError(f"op {op} (node {node.name!r}): an input is not a numeric constant")
        vi = [helper.make_tensor_value_info(v, helper.np_dtype_to_tensor_dtype(feeds[v].dtype), None)
              for v in dict.fromkeys(v for v in ins if v)]
        outs = [o for o in node.output if o]
        model = helper.make_model(
            helper.make_graph([node], "fold", vi, [helper.make_tensor_value_info(o, 0, None) for o in outs]),
            opset_imports=[helper.make_opsetid("", st.opset)])
        try:
            out = ReferenceEvaluator(model).run(None, feeds)
        except Exception as e:
            raise ValueError(f"op {op} (node {node.name!r}) could not be folded at load ({type(e).__name__}: {e})") \
                from None
        if any(r is None or np.asarray(r).dtype.kind not in "biuf" for r in out):
            raise ValueError(f"op {op} (node {node.name!r}) folds to a value that is not a numeric tensor")
        results.append([np.asarray(r) for r in out])
    for i, o in enumerate(o for o in node.output if o):
        a, b = results[0][i], results[1][i]
        if a.size > _MAX_ELEMENTS:
            raise FormatError(f"op {op} (node {node.name!r}) folds to {a.size} elements, above the bound")
        st.static[o] = _Static((a, b))


# -- converters: ONNX node -> (module, values it reads, weight initializer for its name) ----------------


def _ints(v: Any) -> list[int]:
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _scalar(v: np.ndarray, what: str) -> float:
    if v.size != 1:
        raise _Unsupported(f"{what} must be a scalar; got shape {v.shape}")
    return float(v.reshape(()))


def _known(attrs: dict[str, Any], allowed: set[str], what: str = "") -> None:
    extra = set(attrs) - allowed
    if extra:
        raise _Unsupported(f"attribute(s) {sorted(extra)} {what}not supported")


def _conv(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.conv import Conv2d

    _known(attrs, {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"})
    w = st.const(ins[1], "the Conv weight").astype(np.float32)
    if w.ndim != 4:
        raise _Unsupported(f"only 2-D convolutions are supported (weight of shape {w.shape})")
    x_shape = st.shape(ins[0])[0]
    if len(x_shape) != 4:
        raise _Unsupported(f"input must be 4-D (N, C, H, W); got shape {x_shape}")
    group = int(attrs.get("group", 1))
    out_c, cin_g, kh, kw = w.shape
    if group < 1 or x_shape[1] != cin_g * group or out_c % group:
        raise _Unsupported(f"group {group} does not fit weight {w.shape} and input {x_shape}")
    if "kernel_shape" in attrs and list(attrs["kernel_shape"]) != [kh, kw]:
        raise _Unsupported(f"kernel_shape {attrs['kernel_shape']} disagrees with the weight {w.shape}")
    strides = tuple(attrs.get("strides", (1, 1)))
    dil = tuple(attrs.get("dilations", (1, 1)))
    pads = _pads(attrs, x_shape[2:], (kh, kw), strides, dil)
    b = st.const(ins[2], "the Conv bias").astype(np.float32) if len(ins) > 2 and ins[2] else None
    m = Conv2d(cin_g * group, out_c, (kh, kw), stride=strides, padding=pads, dilation=dil, groups=group,
               bias=b is not None)
    m.weight.data[...] = w
    if b is not None:
        m.bias.data[...] = b.reshape(-1)
    return m, [ins[0]], ins[1]


def _pads(attrs: dict[str, Any], spatial: Sequence[int], k: Sequence[int], s: Sequence[int],
          d: Sequence[int] = (1, 1)) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from ONNX pads or auto_pad."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        p = list(attrs.get("pads", (0, 0, 0, 0)))
        if len(p) != 4 or min(p) < 0:
            raise _Unsupported(f"pads {p} must be 4 non-negative ints")
        return (p[0], p[1], p[2], p[3])
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise _Unsupported(f"auto_pad {auto!r} is not supported")
    lo, hi = [], []
    for size, kk, ss, dd in zip(spatial, k, s, d):
        out = -(-size // ss)
        total = max(0, (out - 1) * ss + (kk - 1) * dd + 1 - size)
        small, big = total // 2, total - total // 2
        lo.append(small if auto == "SAME_UPPER" else big)
        hi.append(big if auto == "SAME_UPPER" else small)
    return (lo[0], lo[1], hi[0], hi[1])


def _batchnorm(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.layers import BatchNorm1d, BatchNorm2d

    _known(attrs, {"epsilon", "momentum", "training_mode", "spatial"})
    if attrs.get("training_mode", 0):
        raise _Unsupported("training_mode=1 is not supported (export the model in eval mode)")
    scale, bias, mean, var = (st.const(v, "a BatchNormalization parameter").astype(np.float32) for v in ins[1:5])
    rank = len(st.shape(ins[0])[0])
    cls = BatchNorm2d if rank == 4 else BatchNorm1d
    if rank not in (2, 3, 4):
        raise _Unsupported(f"input rank {rank} is not supported")
    m = cls(scale.size, eps=float(attrs.get("epsilon", 1e-5)), momentum=1.0 - float(attrs.get("momentum", 0.9)))
    m.weight.data[...] = scale
    m.bias.data[...] = bias
    m.register_buffer("running_mean", mean.copy())
    m.register_buffer("running_var", var.copy())
    return m, [ins[0]], ins[1]


def _linear_from(w_out_in: np.ndarray, bias: np.ndarray | None) -> Any:
    from .nn.layers import Linear

    m = Linear(w_out_in.shape[1], w_out_in.shape[0], bias=bias is not None)
    m.weight.data[...] = w_out_in
    if bias is not None:
        m.bias.data[...] = bias
    return m


def _gemm(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    _known(attrs, {"alpha", "beta", "transA", "transB"})
    if attrs.get("transA", 0):
        raise _Unsupported("transA=1 is not supported")
    if not st.is_static(ins[1]):
        raise _Unsupported("B must be a constant weight")
    w = st.const(ins[1], "the Gemm weight").astype(np.float32)
    if w.ndim != 2:
        raise _Unsupported(f"B must be 2-D; got shape {w.shape}")
    w = w if attrs.get("transB", 0) else w.T
    w = np.ascontiguousarray(w * np.float32(attrs.get("alpha", 1.0)))
    bias = None
    if len(ins) > 2 and ins[2]:
        c = st.const(ins[2], "the Gemm bias").astype(np.float32) * np.float32(attrs.get("beta", 1.0))
        if c.size not in (1, w.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            raise _Unsupported(f"C of shape {c.shape} is not a bias over {w.shape[0]} outputs")
        bias = np.broadcast_to(c.reshape(-1), (w.shape[0],)).copy()
    return _linear_from(w, bias), [ins[0]], ins[1]


def _matmul(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import MatMul

    _known(attrs, set())
    if st.is_static(ins[1]) and not st.is_static(ins[0]):
        w = st.const(ins[1], "the MatMul weight")
        if w.ndim == 2 and w.dtype.kind == "f":  # x @ W: a Linear with weight W.T (a following Add gives its bias)
            return _linear_from(np.ascontiguousarray(w.T.astype(np.float32)), None), [ins[0]], ins[1]
    return MatMul(), ins[:2], None


def _simple(cls_name: str, allowed: set[str] = frozenset(), **from_attrs: tuple[str, Any]) -> Callable[..., Any]:
    """A converter for an op whose module takes (some of) the node's attributes as keyword arguments."""

    def convert(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
        from .nn import ops

        _known(attrs, set(allowed) | {a for a, _ in from_attrs.values()})
        kwargs = {k: attrs.get(a, default) for k, (a, default) in from_attrs.items()}
        cls = getattr(ops, cls_name)
        return cls(**kwargs), [v for v in ins if v], None

    return convert


def _relu(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.layers import ReLU

    _known(attrs, set())
    return ReLU(), ins[:1], None


def _clip(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Clip

    if st.opset < 11:  # pragma: no cover - below MIN_OPSET
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        _known(attrs, set())
        lo = _scalar(st.const(ins[1], "Clip's min"), "Clip's min") if len(ins) > 1 and ins[1] else None
        hi = _scalar(st.const(ins[2], "Clip's max"), "Clip's max") if len(ins) > 2 and ins[2] else None
    return Clip(min=lo, max=hi), ins[:1], None


def _pow(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Pow

    _known(attrs, set())
    e = st.const(ins[1], "the exponent of Pow")
    return Pow(exponent=_scalar(e, "the exponent of Pow (only a scalar is supported)")), ins[:1], None


def _softmax(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Softmax

    _known(attrs, {"axis"})
    rank = len(st.shape(ins[0])[0])
    axis = int(attrs.get("axis", -1 if st.opset >= 13 else 1))
    axis = axis + rank if axis < 0 else axis
    if st.opset < 13 and axis != rank - 1:  # the old semantics flatten from axis on: equal only on the last axis
        raise _Unsupported(f"axis {axis} of a rank-{rank} input under opset {st.opset} is not supported")
    return Softmax(axis=axis - rank), ins[:1], None


def _layernorm(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import LayerNorm

    _known(attrs, {"axis", "epsilon", "stash_type"})
    shape = st.shape(ins[0])[0]
    axis = int(attrs.get("axis", -1))
    axis = axis + len(shape) if axis < 0 else axis
    st.check_axes(ins[0], range(axis, len(shape)), "normalising")
    norm = tuple(shape[axis:])
    scale = st.const(ins[1], "LayerNormalization's scale").astype(np.float32)
    bias = st.const(ins[2], "LayerNormalization's bias").astype(np.float32) if len(ins) > 2 and ins[2] else None
    m = LayerNorm(list(norm), eps=float(attrs.get("epsilon", 1e-5)), elementwise_affine=True)
    m.weight.data[...] = np.broadcast_to(scale, norm)
    m.bias.data[...] = 0.0 if bias is None else np.broadcast_to(bias, norm)
    return m, ins[:1], ins[1]


def _pool(kind: str) -> Callable[..., Any]:
    def convert(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
        from .nn.conv import AvgPool2d, MaxPool2d

        _known(attrs, {"kernel_shape", "strides", "pads", "auto_pad", "ceil_mode", "count_include_pad",
                       "dilations", "storage_order"})
        if len(node.output) > 1 and node.output[1]:
            raise _Unsupported("the indices output is not supported")
        if attrs.get("ceil_mode", 0):
            raise _Unsupported("ceil_mode=1 is not supported")
        if any(d != 1 for d in attrs.get("dilations", (1, 1))):
            raise _Unsupported(f"dilations {attrs['dilations']} are not supported")
        x_shape = st.shape(ins[0])[0]
        if len(x_shape) != 4:
            raise _Unsupported(f"input must be 4-D (N, C, H, W); got shape {x_shape}")
        k = tuple(attrs.get("kernel_shape", ()))
        if len(k) != 2:
            raise _Unsupported(f"kernel_shape {list(k)} must have two entries")
        s = tuple(attrs.get("strides", (1, 1)))
        t, l, b, r = _pads(attrs, x_shape[2:], k, s)
        if (t, l) != (b, r):
            raise _Unsupported(f"asymmetric pads {[t, l, b, r]} are not supported for pooling")
        if kind == "avg" and (t or l) and not attrs.get("count_include_pad", 0):
            raise _Unsupported("count_include_pad=0 with padding is not supported (PyTorch exports 1)")
        cls = MaxPool2d if kind == "max" else AvgPool2d
        return cls(k, s, (t, l)), ins[:1], None

    return convert


def _global_pool(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import GlobalAvgPool2d

    _known(attrs, set())
    if len(st.shape(ins[0])[0]) != 4:
        raise _Unsupported("input must be 4-D (N, C, H, W)")
    return GlobalAvgPool2d(), ins[:1], None


def _reduce_mean(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import ReduceMean

    _known(attrs, {"axes", "keepdims", "noop_with_empty_axes"})
    if len(ins) > 1 and ins[1]:
        axes = _ints(st.const(ins[1], "ReduceMean's axes"))
    else:
        axes = list(attrs.get("axes", []))
    rank = len(st.shape(ins[0])[0])
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            raise _Unsupported("noop_with_empty_axes=1 is not supported")
        axes = list(range(rank))
    st.check_axes(ins[0], axes, "a mean")
    return ReduceMean(axes=axes, keepdims=bool(attrs.get("keepdims", 1))), ins[:1], None


def _flatten(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.layers import Flatten
    from .nn.ops import Reshape

    _known(attrs, {"axis"})
    shape = st.shape(ins[0])[0]
    axis = int(attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if axis == 1 and st.batch_axes(ins[0]) == {0}:
        return Flatten(1), ins[:1], None
    if axis < 1:
        raise _Unsupported(f"axis {axis} folds the batch dimension")
    s1, s2 = st.shape(ins[0])
    t = [int(np.prod(s1[:axis])), int(np.prod(s1[axis:]))]
    t2 = [int(np.prod(s2[:axis])), int(np.prod(s2[axis:]))]
    return Reshape(shape=_symmetric_target(t, t2, s1, s2, False)), ins[:1], None


def _reshape(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Reshape

    _known(attrs, {"allowzero"})
    allowzero = bool(attrs.get("allowzero", 0))
    if not st.is_static(ins[1]):
        raise _Unsupported("the target shape must be a constant or computed from shapes")
    t1, t2 = (_ints(a) for a in st.static[st.name(ins[1])].at)
    s1, s2 = st.shape(ins[0])
    target = _symmetric_target(t1, t2, s1, s2, allowzero)
    return Reshape(shape=target, allowzero=allowzero), ins[:1], None


def _resolve(target: list[int], shape: Sequence[int], allowzero: bool) -> list[int] | None:
    out = [shape[i] if (t == 0 and not allowzero and i < len(shape)) else t for i, t in enumerate(target)]
    if out.count(-1) > 1:
        return None
    known = int(np.prod([d for d in out if d != -1]))
    total = int(np.prod(shape))
    if -1 in out:
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return out if int(np.prod(out)) == total else None


def _symmetric_target(t1: list[int], t2: list[int], s1: Sequence[int], s2: Sequence[int], allowzero: bool) -> list[int]:
    """One Reshape target valid at both folding batch sizes: batch-dependent entries become -1."""
    if len(t1) != len(t2):
        raise _Unsupported("the target shape's rank depends on the batch size")
    target = list(t1)
    differ = [i for i, (a, b) in enumerate(zip(t1, t2)) if a != b]
    for i in list(differ):  # an entry that copies the input's own (batch) dim: ONNX's 0 says exactly that
        if not allowzero and i < min(len(s1), len(s2)) and (t1[i], t2[i]) == (s1[i], s2[i]):
            target[i] = 0
            differ.remove(i)
    if differ:
        if len(differ) > 1 or -1 in t1:
            raise _Unsupported(f"the target shape {t1} depends on the batch size in more than one place")
        target[differ[0]] = -1
    elif _resolve(target, s2, allowzero) is None and target and target[0] == s1[0] and -1 not in target:
        target[0] = -1  # a fixed batch written into the file: keep the graph batch-symmetric
    for s in (s1, s2):
        if _resolve(target, s, allowzero) is None:
            raise _Unsupported(f"cannot reshape a tensor of shape {tuple(s)} to {t1}")
    return target


def _transpose(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Transpose

    _known(attrs, {"perm"})
    rank = len(st.shape(ins[0])[0])
    perm = list(attrs.get("perm", range(rank - 1, -1, -1)))
    return Transpose(perm=perm), ins[:1], None


def _axes_of(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str], name: str) -> list[int] | None:
    if len(ins) > 1 and ins[1]:
        return _ints(st.const(ins[1], f"{node.op_type}'s axes"))
    return list(attrs[name]) if name in attrs else None


def _squeeze(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Squeeze

    _known(attrs, {"axes"})
    axes = _axes_of(node, st, attrs, ins, "axes")
    shape = st.shape(ins[0])[0]
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1 and i not in st.batch_axes(ins[0])]
    st.check_axes(ins[0], axes, "squeezing")
    return Squeeze(axes=axes), ins[:1], None


def _unsqueeze(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Unsqueeze

    _known(attrs, {"axes"})
    axes = _axes_of(node, st, attrs, ins, "axes")
    if axes is None:
        raise _Unsupported("axes are required")
    return Unsqueeze(axes=axes), ins[:1], None


def _concat(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Concat

    _known(attrs, {"axis"})
    if "axis" not in attrs:
        raise _Unsupported("axis is required")
    return Concat(axis=int(attrs["axis"])), [v for v in ins if v], None


def _split(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Identity, Split

    _known(attrs, {"axis", "split", "num_outputs"})
    shape = st.shape(ins[0])[0]
    axis = int(attrs.get("axis", 0))
    st.check_axes(ins[0], [axis], "splitting")
    if len(ins) > 1 and ins[1]:
        sizes = _ints(st.const(ins[1], "Split's sizes"))
    elif "split" in attrs:
        sizes = list(attrs["split"])
    else:
        n = int(attrs.get("num_outputs", len([o for o in node.output if o])))
        d = shape[axis]
        chunk = -(-d // n)
        sizes = [min(chunk, d - i * chunk) for i in range(n)]
    if len([o for o in node.output if o]) == 1:  # one part: the whole tensor
        if sizes != [shape[axis]]:
            raise _Unsupported(f"split {sizes} does not cover the axis of size {shape[axis]}")
        return Identity(), ins[:1], None
    return Split(axis=axis, split=sizes), ins[:1], None


def _slice(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Slice

    _known(attrs, set())
    starts, ends = (_ints(st.const(v, "Slice's starts/ends")) for v in ins[1:3])
    axes = _ints(st.const(ins[3], "Slice's axes")) if len(ins) > 3 and ins[3] else list(range(len(starts)))
    steps = _ints(st.const(ins[4], "Slice's steps")) if len(ins) > 4 and ins[4] else None
    st.check_axes(ins[0], axes, "slicing")
    return Slice(starts=starts, ends=ends, axes=axes, steps=steps), ins[:1], None


def _gather(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Embedding, Gather

    _known(attrs, {"axis"})
    axis = int(attrs.get("axis", 0))
    if st.is_static(ins[0]) and not st.is_static(ins[1]):
        table = st.const(ins[0], "the Gather table")
        if axis != 0 or table.ndim != 2 or table.dtype.kind != "f":
            raise _Unsupported("a constant table must be 2-D float gathered along axis 0 (an embedding)")
        m = Embedding(table.shape[0], table.shape[1])
        m.weight.data[...] = table
        return m, ins[1:2], ins[0]
    idx = st.const(ins[1], "Gather's indices")
    st.check_axes(ins[0], [axis], "gathering")
    indices = idx.tolist() if idx.ndim else int(idx)
    return Gather(axis=axis, indices=indices), ins[:1], None


def _cast(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Cast

    _known(attrs, {"to", "saturate"})
    to = int(attrs["to"])
    if to not in _NP_TYPES:
        raise _Unsupported(f"cast to element type {to} is not supported")
    return Cast(to=np.dtype(_NP_TYPES[to]).name), ins[:1], None


def _expand(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import Expand

    _known(attrs, set())
    t1, t2 = (_ints(a) for a in st.static[st.name(ins[1])].at) if st.is_static(ins[1]) else (None, None)
    if t1 is None:
        raise _Unsupported("the target shape must be a constant or computed from shapes")
    if t1 != t2:
        if len(t1) != len(t2) or [a for a, b in zip(t1, t2) if a != b] != [t1[0]] or t1[0] != st.shape(ins[0])[0][0]:
            raise _Unsupported(f"a target shape {t1} that depends on the batch size is not supported")
        t1 = [1] + t1[1:]  # the batch entry broadcasts from the input's own batch
    return Expand(shape=t1), ins[:1], None


def _leaky(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import LeakyReLU

    _known(attrs, {"alpha"})
    return LeakyReLU(alpha=float(attrs.get("alpha", 0.01))), ins[:1], None


def _hardsigmoid(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import HardSigmoid

    _known(attrs, {"alpha", "beta"})
    return HardSigmoid(alpha=float(attrs.get("alpha", 0.2)), beta=float(attrs.get("beta", 0.5))), ins[:1], None


def _gelu(node: Any, st: _Import, attrs: dict[str, Any], ins: list[str]) -> Any:
    from .nn.ops import GELU

    _known(attrs, {"approximate"})
    return GELU(approximate=str(attrs.get("approximate", "none"))), ins[:1], None


_CONVERTERS: dict[str, Callable[..., Any]] = {
    "Conv": _conv, "BatchNormalization": _batchnorm, "Gemm": _gemm, "MatMul": _matmul,
    "Add": _simple("Add"), "Sub": _simple("Sub"), "Mul": _simple("Mul"), "Div": _simple("Div"),
    "Pow": _pow, "Sqrt": _simple("Sqrt"), "Erf": _simple("Erf"), "Exp": _simple("Exp"), "Neg": _simple("Neg"),
    "Relu": _relu, "LeakyRelu": _leaky, "Clip": _clip, "Sigmoid": _simple("Sigmoid"), "Tanh": _simple("Tanh"),
    "HardSigmoid": _hardsigmoid, "HardSwish": _simple("HardSwish"), "Softmax": _softmax, "Gelu": _gelu,
    "LayerNormalization": _layernorm, "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_pool, "ReduceMean": _reduce_mean, "Flatten": _flatten, "Reshape": _reshape,
    "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Concat": _concat, "Split": _split,
    "Slice": _slice, "Gather": _gather, "Cast": _cast, "Expand": _expand, "Where": _simple("Where"),
}


def export(model: Any, path: Any = None, *, input_shape: Sequence[int] | None = None, opset: int = 17) -> Any:
    """Write a model as ONNX; see :func:`hwreg_rs.onnx_export.export`."""
    from .onnx_export import export as _export

    return _export(model, path, input_shape=input_shape, opset=opset)

