"""Graph rewrites: each pass takes a :class:`~hwreg_rs.nn.Graph` and returns an equivalent one.

Passes share the modules of the graph they rewrite (nothing is copied) and
never change what the graph computes beyond float rounding. The import runs
:func:`fuse_imported`; the runtime's conversion has passes of its own on top
(:mod:`hwreg_rs.runtime`).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .graph import Graph, Node
from .module import Parameter

__all__ = ["fuse_imported", "fuse_linear_bias", "fuse_layernorm", "fuse_gelu", "spatial_mean_to_global_pool",
           "rebuild"]


def rebuild(graph: Graph, nodes: list[Node]) -> Graph:
    """A graph like ``graph`` with ``nodes``, keeping only the constants they still read."""
    read = {v for n in nodes for v in n.inputs} | set(graph.outputs)
    consts = {k: v for k, v in graph.constants().items() if k in read}
    out = Graph(nodes, graph.inputs, graph.outputs, constants=consts, input_shapes=graph.input_shapes,
                input_dtypes=graph.input_dtypes)
    return out.train(graph.training)


class _View:
    """Producers, consumers and constants of a graph, for pattern matching."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes = list(graph.nodes)
        self.prod = graph.producers()
        self.cons = graph.consumers()
        self.consts = graph.constants()
        for v in graph.outputs:
            self.cons.setdefault(v, []).append(-1)  # a graph output has a reader outside

    def node_of(self, v: str, op_type: str | tuple[str, ...]) -> Node | None:
        i = self.prod.get(v)
        if i is None:
            return None
        n = self.nodes[i]
        types = (op_type,) if isinstance(op_type, str) else op_type
        return n if n.op.op_type in types else None

    def only_reader(self, v: str) -> Node | None:
        readers = self.cons.get(v, [])
        return self.nodes[readers[0]] if len(readers) == 1 and readers[0] >= 0 else None

    def scalar(self, v: str) -> float | None:
        a = self.consts.get(v)
        return float(np.asarray(a).reshape(())) if a is not None and np.size(a) == 1 else None

    def other(self, node: Node, v: str) -> str | None:
        """The input of a two-input node that is not ``v``."""
        if len(node.inputs) != 2 or v not in node.inputs:
            return None
        a, b = node.inputs
        return b if a == v else a


def _replace(graph: Graph, view: _View, remove: set[int], insert_at: dict[int, Node]) -> Graph:
    nodes = []
    for i, n in enumerate(view.nodes):
        if i in insert_at:
            nodes.append(insert_at[i])
        elif i not in remove:
            nodes.append(n)
    return rebuild(graph, nodes)


def _fixpoint(graph: Graph, step: Callable[[Graph], Graph | None]) -> Graph:
    while True:
        new = step(graph)
        if new is None:
            return graph
        graph = new


def fuse_linear_bias(graph: Graph) -> Graph:
    """``Add(Linear(x), b)`` with a constant ``b`` over the outputs -> the Linear with bias ``b``
    (torch exports a Linear on a 3-D input as MatMul + Add)."""
    from .layers import Linear

    def step(g: Graph) -> Graph | None:
        view = _View(g)
        for i, n in enumerate(view.nodes):
            if not (isinstance(n.op, Linear) and n.op.bias is None):
                continue
            add = view.only_reader(n.outputs[0])
            if add is None or add.op.op_type != "Add":
                continue
            b = view.other(add, n.outputs[0])
            bias = view.consts.get(b) if b else None
            out = n.op.out_features
            if bias is None or bias.dtype.kind != "f" or bias.size != out or bias.shape[-1:] != (out,):
                continue
            n.op.bias = Parameter(bias.reshape(-1).astype(n.op.weight.data.dtype))
            j = view.nodes.index(add)
            # torch names the transposed weight "onnx::MatMul_12" but keeps "<layer>.bias": name the layer after it.
            name = n.name
            if b.endswith(".bias") and n.name.startswith("onnx::") and b[:-5] not in {m.name for m in view.nodes}:
                name = b[:-5]
            return _replace(g, view, {j}, {i: Node(name, n.op, n.inputs, add.outputs, n.source)})
        return None

    return _fixpoint(graph, step)


def fuse_layernorm(graph: Graph) -> Graph:
    """The written-out LayerNorm (ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div, then an
    optional Mul by a scale and Add of a shift) -> one :class:`~hwreg_rs.nn.ops.LayerNorm`."""
    from .ops import LayerNorm

    def step(g: Graph) -> Graph | None:
        view = _View(g)
        for i, div in enumerate(view.nodes):
            if div.op.op_type != "Div" or len(div.inputs) != 2:
                continue
            d, s = div.inputs
            sub, sqrt = view.node_of(d, "Sub"), view.node_of(s, "Sqrt")
            add = view.node_of(sqrt.inputs[0], "Add") if sqrt else None
            if not (sub and add):
                continue
            v = next((x for x in add.inputs if x not in view.consts), None)
            eps = view.scalar(view.other(add, v) or "") if v else None
            var = view.node_of(v, "ReduceMean") if v else None
            pw = view.node_of(var.inputs[0], "Pow") if var else None
            x, m = sub.inputs
            mean = view.node_of(m, "ReduceMean")
            if eps is None or not (pw and mean) or pw.inputs[0] != d or mean.inputs[0] != x:
                continue
            if getattr(pw.op, "exponent", None) != 2.0:
                continue
            axes, keep = list(mean.op.config()["axes"]), mean.op.config().get("keepdims", True)
            if list(var.op.config()["axes"]) != axes or not keep:
                continue
            shapes = g.infer_shapes(*((1,) + s for s in (g.input_shapes or [])))
            if x not in shapes:
                continue
            rank = len(shapes[x])
            norm_axes = sorted(a % rank for a in axes)
            if norm_axes != list(range(rank - len(axes), rank)) or 0 in norm_axes:
                continue
            inner = [sub, pw, var, add, sqrt]
            if any(view.only_reader(n.outputs[0]) is None for n in (mean, pw, var, add, sqrt)):
                continue
            if sorted(view.cons.get(d, [])) != sorted([view.nodes.index(pw), i]):
                continue
            norm_shape = tuple(shapes[x][rank - len(axes):])
            ln = LayerNorm(list(norm_shape), eps=eps, elementwise_affine=True)
            last, remove = div, {view.nodes.index(n) for n in [mean] + inner}
            for kind, param in (("Mul", ln.weight), ("Add", ln.bias)):
                nxt = view.only_reader(last.outputs[0])
                c = view.other(nxt, last.outputs[0]) if nxt and nxt.op.op_type == kind else None
                arr = view.consts.get(c) if c else None
                if arr is None or arr.dtype.kind != "f":
                    if kind == "Mul":
                        continue  # no scale: there may still be a shift
                    break
                try:
                    param.data[...] = np.broadcast_to(arr, norm_shape)
                except ValueError:
                    break
                remove.add(view.nodes.index(last))
                last = nxt
            remove.discard(view.nodes.index(last))
            at = view.nodes.index(last)
            name = div.name if last is div else last.name
            return _replace(g, view, remove, {at: Node(name, ln, (x,), last.outputs, div.source)})
        return None

    return _fixpoint(graph, step)


def fuse_gelu(graph: Graph) -> Graph:
    """``x * 0.5 * (1 + erf(x / sqrt 2))`` (in the orders torch writes it) -> one exact
    :class:`~hwreg_rs.nn.ops.GELU`."""
    from .ops import GELU

    def close(a: float | None, b: float) -> bool:
        return a is not None and abs(a - b) <= 1e-4 * abs(b)

    def step(g: Graph) -> Graph | None:
        view = _View(g)
        for erf in view.nodes:
            if erf.op.op_type != "Erf":
                continue
            pre = view.node_of(erf.inputs[0], ("Div", "Mul"))
            if pre is None:
                continue
            x = next((v for v in pre.inputs if v not in view.consts), None)
            c = view.scalar(view.other(pre, x) or "") if x else None
            if not (close(c, math.sqrt(2)) if pre.op.op_type == "Div" else close(c, 1 / math.sqrt(2))):
                continue
            add = view.only_reader(erf.outputs[0])
            if add is None or add.op.op_type != "Add" or not close(view.scalar(view.other(add, erf.outputs[0]) or ""),
                                                                    1.0):
                continue
            m1 = view.only_reader(add.outputs[0])
            if m1 is None or m1.op.op_type != "Mul":
                continue
            other = view.other(m1, add.outputs[0])
            chain = [pre, erf, add, m1]
            if other == x:  # (x * (1 + erf)) * 0.5
                m2 = view.only_reader(m1.outputs[0])
                if m2 is None or m2.op.op_type != "Mul" or not close(view.scalar(view.other(m2, m1.outputs[0]) or ""),
                                                                      0.5):
                    continue
                chain.append(m2)
                last = m2
            else:  # (x * 0.5) * (1 + erf)
                half = view.node_of(other or "", "Mul")
                if half is None or x not in half.inputs or not close(view.scalar(view.other(half, x) or ""), 0.5) \
                        or view.only_reader(half.outputs[0]) is not m1:
                    continue
                chain.append(half)
                last = m1
            if any(view.only_reader(n.outputs[0]) is None for n in chain if n is not last):
                continue
            idx = {view.nodes.index(n) for n in chain}
            at = view.nodes.index(last)
            return _replace(g, view, idx - {at}, {at: Node(last.name, GELU(approximate="none"), (x,), last.outputs,
                                                            erf.source)})
        return None

    return _fixpoint(graph, step)


def spatial_mean_to_global_pool(graph: Graph) -> Graph:
    """``ReduceMean`` over both spatial axes of an (N, C, H, W) value, keeping them -> one
    :class:`~hwreg_rs.nn.ops.GlobalAvgPool2d` (the same NumPy mean, so the same bytes).

    torch.export writes ``adaptive_avg_pool2d(x, 1)`` as ``ReduceMean(axes=[-1, -2], keepdims=1)``; the
    runtime's native plan runs a 4-D global average pool but not a mean over two axes, which ran in
    Python and split torchvision mobilenet_v2's plan in two (~15 µs of a ~130 µs batch-1 call). Other
    ranks keep their ReduceMean (the plan runs neither form natively there). The ranks come from the
    graph's input shapes; a graph without them, or whose shapes cannot be inferred, is unchanged.
    """
    from .ops import GlobalAvgPool2d, ReduceMean

    if graph.input_shapes is None or not any(isinstance(n.op, ReduceMean) for n in graph.nodes):
        return graph
    try:
        shapes = graph.infer_shapes(*((1, *s) for s in graph.input_shapes))
    except (ValueError, NotImplementedError):  # shapes that do not fit, an op without a shape rule
        return graph
    nodes, changed = [], False
    for n in graph.nodes:
        rank = len(shapes.get(n.inputs[0], ())) if n.inputs else 0
        if (isinstance(n.op, ReduceMean) and len(n.inputs) == 1 and n.op.keepdims and rank == 4
                and sorted(n.op._norm_axes(rank)) == [2, 3]):
            n, changed = Node(n.name, GlobalAvgPool2d(), n.inputs, n.outputs, n.source), True
        nodes.append(n)
    return rebuild(graph, nodes) if changed else graph


def fuse_imported(graph: Graph) -> Graph:
    """The rewrites an imported graph gets: Linear biases, LayerNorm and GELU patterns, spatial means."""
    for p in (fuse_linear_bias, fuse_layernorm, fuse_gelu, spatial_mean_to_global_pool):
        graph = p(graph)
    return graph

