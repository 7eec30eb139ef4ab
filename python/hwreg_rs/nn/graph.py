"""Graph models: named values, nodes in topological order, and a trainable :class:`Graph` over them.

A graph is values plus nodes (as XNNPACK's subgraphs and ONNX are): every
node holds one op — a registered :class:`~hwreg_rs.nn.Module` — and names the
values it reads and writes. Values are the graph's inputs, its constants
(arrays that are not trainable, e.g. a positional table an ONNX file adds)
and the nodes' outputs. The same representation serves import (ONNX), training,
conversion to a runtime model, the cost model, the file and export;
:class:`~hwreg_rs.nn.Sequential` is the chain graph :meth:`Graph.from_module`
makes of it.

``Graph.forward`` runs the nodes in order, ``Graph.backward`` runs them in
reverse and sums the gradients of a value that feeds several nodes (a residual
connection's input), so every training constraint that works on a
``Sequential`` works on a graph: they find the same ``Linear`` and ``Conv2d``
modules through :meth:`~hwreg_rs.nn.Module.named_modules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .module import Module, Sequential

__all__ = ["Graph", "Node"]


@dataclass(frozen=True)
class Node:
    """One op of a graph: ``outputs = op(*inputs)``, values named by strings.

    ``name`` is the op's module name inside the graph (its parameters are
    ``<name>.weight`` and so on in ``state_dict()``); ``source`` is the name the
    node had where it came from (an ONNX node name), for messages.
    """

    name: str
    op: Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.op, Module):
            raise TypeError(f"node {self.name!r}: op must be a hwreg_rs.nn.Module; got {type(self.op).__name__}")
        object.__setattr__(self, "inputs", tuple(str(v) for v in self.inputs))
        object.__setattr__(self, "outputs", tuple(str(v) for v in self.outputs))
        if not self.outputs:
            raise ValueError(f"node {self.name!r} has no outputs")


def _as_tuple(out: Any) -> tuple[Any, ...]:
    return out if isinstance(out, tuple) else (out,)


class Graph(Module):
    """A model given as a graph of ops; trainable like any :class:`~hwreg_rs.nn.Module`.

    Parameters
    ----------
    nodes : sequence of Node
        The ops, in an order where every value is written before it is read
        (checked; ``ValueError`` names the node and the missing value).
    inputs : sequence of str
        Names of the graph's input values, in call order.
    outputs : sequence of str
        Names of the values ``forward`` returns (one array when there is one).
    constants : mapping of str to ndarray, optional
        Non-trainable values the nodes may read; saved as buffers, so they
        appear in ``state_dict()`` under their names.
    input_shapes : sequence of tuple of int, optional
        Shape of one sample of each input (without the batch dimension), when known.
    input_dtypes : sequence of str, optional
        NumPy dtype name of each input (default ``"float32"``; ``"int64"`` for token ids).

    Examples
    --------
    A residual block, ``y = relu(x + linear(x))``:

    >>> import numpy as np, hwreg_rs as hw
    >>> from hwreg_rs.nn.graph import Graph, Node
    >>> from hwreg_rs.nn.ops import Add
    >>> g = Graph([Node("fc", hw.nn.Linear(4, 4, rng=0), ("x",), ("h",)),
    ...            Node("add", Add(), ("x", "h"), ("s",)),
    ...            Node("relu", hw.nn.ReLU(), ("s",), ("y",))], inputs=["x"], outputs=["y"])
    >>> x = np.ones((2, 4), np.float32)
    >>> y = g(x); gx = g.backward(np.ones_like(y))
    >>> y.shape, gx.shape, list(g.state_dict())
    ((2, 4), (2, 4), ['fc.weight', 'fc.bias'])
    """

    def __init__(self, nodes: Sequence[Node], inputs: Sequence[str], outputs: Sequence[str], *,
                 constants: Mapping[str, np.ndarray] | None = None,
                 input_shapes: Sequence[tuple[int, ...]] | None = None,
                 input_dtypes: Sequence[str] | None = None) -> None:
        super().__init__()
        self.nodes: list[Node] = list(nodes)
        self.inputs = [str(v) for v in inputs]
        self.outputs = [str(v) for v in outputs]
        if not self.inputs:
            raise ValueError("a graph needs at least one input")
        if not self.outputs:
            raise ValueError("a graph needs at least one output")
        self.input_shapes = None if input_shapes is None else [tuple(int(d) for d in s) for s in input_shapes]
        if self.input_shapes is not None and len(self.input_shapes) != len(self.inputs):
            raise ValueError(f"input_shapes has {len(self.input_shapes)} entries for {len(self.inputs)} inputs")
        self.input_dtypes = [np.dtype(d).name for d in (input_dtypes or ["float32"] * len(self.inputs))]
        if len(self.input_dtypes) != len(self.inputs):
            raise ValueError(f"input_dtypes has {len(self.input_dtypes)} entries for {len(self.inputs)} inputs")
        self.constant_names: list[str] = []
        for name, value in (constants or {}).items():
            self.register_buffer(str(name), np.asarray(value))
            self.constant_names.append(str(name))
        seen_modules: set[str] = set()
        for node in self.nodes:
            if not isinstance(node, Node):
                raise TypeError(f"nodes must be Node instances; got {type(node).__name__}")
            if node.name in seen_modules:
                raise ValueError(f"two nodes are named {node.name!r}")
            seen_modules.add(node.name)
            self._children[node.name] = node.op  # registered like an attribute; names may hold dots
        self._check_order()

    # -- structure -----------------------------------------------------------
    def _check_order(self) -> None:
        defined = set(self.inputs) | set(self.constant_names)
        if len(defined) != len(self.inputs) + len(self.constant_names):
            raise ValueError("graph inputs and constants must have distinct names")
        last_use: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                if v not in defined:
                    raise ValueError(f"node {node.source or node.name!r} reads value {v!r}, which no earlier node, "
                                     "input or constant defines (missing, or the nodes are not in topological order)")
                last_use[v] = i
            for v in node.outputs:
                if v in defined:
                    raise ValueError(f"value {v!r} is written twice (node {node.source or node.name!r})")
                defined.add(v)
        for v in self.outputs:
            if v not in defined:
                raise ValueError(f"graph output {v!r} is not defined by any node, input or constant")
            last_use[v] = len(self.nodes)
        # After node i runs, these values are read by no later node: forward drops them.
        self._free_after: list[list[str]] = [[] for _ in self.nodes]
        for v, i in last_use.items():
            if i < len(self.nodes) and v not in self.constant_names:
                self._free_after[i].append(v)

    def consumers(self) -> dict[str, list[int]]:
        """For each value, the indices of the nodes that read it."""
        out: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                out.setdefault(v, []).append(i)
        return out

    def producers(self) -> dict[str, int]:
        """For each node output, the index of the node that writes it."""
        return {v: i for i, node in enumerate(self.nodes) for v in node.outputs}

    def constants(self) -> dict[str, np.ndarray]:
        """The graph's constant values by name."""
        return {k: self._buffers[k] for k in self.constant_names}

    def infer_shapes(self, *input_shapes: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The shape of every value for inputs of the given full shapes (batch included).

        Uses each op's ``out_shape`` rule; nothing is computed.

        Examples
        --------
        >>> import hwreg_rs as hw
        >>> g = hw.nn.Graph.from_module(hw.nn.mlp([8, 4, 2], rng=0))
        >>> g.infer_shapes((5, 8))[g.outputs[0]]
        (5, 2)
        """
        if len(input_shapes) != len(self.inputs):
            raise ValueError(f"infer_shapes takes one shape per input ({len(self.inputs)}); got {len(input_shapes)}")
        shapes: dict[str, tuple[int, ...]] = {v: tuple(int(d) for d in s) for v, s in zip(self.inputs, input_shapes)}
        for k in self.constant_names:
            shapes[k] = tuple(np.shape(self._buffers[k]))
        for node in self.nodes:
            try:
                out = node.op.out_shape(*(shapes[v] for v in node.inputs))
            except (ValueError, TypeError, IndexError) as e:
                raise ValueError(f"node {node.source or node.name!r} ({type(node.op).__name__}): {e}") from e
            outs = (out,) if len(node.outputs) == 1 else tuple(out)  # multi-output ops give a tuple of shapes
            for v, s in zip(node.outputs, outs):
                shapes[v] = tuple(int(d) for d in s)
        return shapes

    # -- computation -----------------------------------------------------------
    def forward(self, *xs: np.ndarray) -> Any:
        if len(xs) != len(self.inputs):
            raise ValueError(f"this graph takes {len(self.inputs)} input(s) ({', '.join(self.inputs)}); got {len(xs)}")
        env: dict[str, Any] = {k: self._buffers[k] for k in self.constant_names}
        env.update(zip(self.inputs, xs))
        keep = set(self.outputs)
        self._out_meta: list[tuple[tuple[tuple[int, ...], Any], ...]] = []
        for node, free in zip(self.nodes, self._free_after):
            try:
                out = node.op.forward(*(env[v] for v in node.inputs))
            except ValueError as e:
                raise ValueError(f"node {node.source or node.name!r} ({type(node.op).__name__}): {e}") from e
            outs = _as_tuple(out) if len(node.outputs) > 1 else (out,)
            if len(outs) != len(node.outputs):
                raise ValueError(f"node {node.name!r} returned {len(outs)} outputs for {len(node.outputs)} names")
            # Shapes and dtypes let backward hand a multi-output op zeros for an unused output.
            self._out_meta.append(tuple((np.shape(o), getattr(o, "dtype", None)) for o in outs))
            env.update(zip(node.outputs, outs))
            for v in free:
                if v not in keep:
                    env.pop(v, None)
        res = tuple(env[v] for v in self.outputs)
        return res[0] if len(res) == 1 else res

    def backward(self, *grads: np.ndarray) -> Any:
        if len(grads) != len(self.outputs):
            raise ValueError(f"backward takes one gradient per output ({len(self.outputs)}); got {len(grads)}")
        g: dict[str, np.ndarray] = {}
        for v, gr in zip(self.outputs, grads):
            _accumulate(g, v, gr)
        const = set(self.constant_names)
        for node, meta in zip(reversed(self.nodes), reversed(self._out_meta)):
            outs = [g.pop(v, None) for v in node.outputs]
            if all(o is None for o in outs):
                for p in node.op.parameters():  # off every path to an output: no gradient
                    p.grad = np.zeros_like(p.data)
                continue
            if len(node.outputs) == 1:
                arg: Any = outs[0]
            else:
                arg = tuple(o if o is not None else np.zeros(s, dt) for o, (s, dt) in zip(outs, meta))
            gin = node.op.backward(arg)
            gin = gin if isinstance(gin, tuple) else (gin,)
            for v, gv in zip(node.inputs, gin):
                if gv is not None and v not in const:
                    _accumulate(g, v, gv)
        res = tuple(g.get(v) for v in self.inputs)
        return res[0] if len(res) == 1 else res

    # -- building --------------------------------------------------------------
    @classmethod
    def from_module(cls, model: Module, *, input_name: str = "input") -> "Graph":
        """The graph of a model: a :class:`Graph` as it is, a :class:`Sequential` (nested ones
        flattened) as the chain of its layers, any other module as a one-node graph.

        The graph shares the model's modules (training one trains the other);
        node names are the modules' dotted names in the model.

        Examples
        --------
        >>> import hwreg_rs as hw
        >>> g = hw.nn.Graph.from_module(hw.nn.mlp([4, 3, 2], rng=0))
        >>> [n.name for n in g.nodes], list(g.state_dict())[:2]
        (['0', '1', '2'], ['0.weight', '0.bias'])
        """
        if isinstance(model, Graph):
            return model
        if not isinstance(model, Module):
            raise TypeError(f"model must be a hwreg_rs.nn.Module; got {type(model).__name__}")
        nodes: list[Node] = []
        value = input_name
        for name, layer in _chain(model, ""):
            out = f"{name or 'out'}:0"
            nodes.append(Node(name or type(layer).__name__.lower(), layer, (value,), (out,)))
            value = out
        return cls(nodes, [input_name], [value])

    def extra_repr(self) -> str:
        return f"inputs={self.inputs}, outputs={self.outputs}, nodes={len(self.nodes)}"

    def __repr__(self) -> str:
        lines = [f"Graph({self.extra_repr()}"]
        for node in self.nodes:
            lines.append(f"  {', '.join(node.outputs)} = ({node.name}) {repr(node.op)}({', '.join(node.inputs)})"
                         .replace("\n", "\n  "))
        return "\n".join(lines) + "\n)"


def _chain(model: Module, prefix: str) -> Iterator[tuple[str, Module]]:
    if isinstance(model, Sequential):
        for name, child in model._children.items():
            yield from _chain(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix, model


def _accumulate(g: dict[str, np.ndarray], v: str, grad: np.ndarray) -> None:
    # A value read by several nodes gets the sum of their gradients (never added in place:
    # an op may hand back an array it still holds).
    g[v] = grad if v not in g else g[v] + grad


def topological_order(names: Iterable[str], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """``names`` ordered so each comes after its ``deps`` (Kahn's algorithm, stable).

    Raises ``ValueError`` naming a node on a cycle.
    """
    names = list(names)
    pending = {n: {d for d in deps.get(n, ()) if d in deps or d in names} for n in names}
    users: dict[str, list[str]] = {}
    for n, ds in pending.items():
        for d in ds:
            users.setdefault(d, []).append(n)
    ready = [n for n in names if not pending[n]]
    order: list[str] = []
    i = 0
    while i < len(ready):
        n = ready[i]
        i += 1
        order.append(n)
        for u in users.get(n, ()):
            pending[u].discard(n)
            if not pending[u]:
                ready.append(u)
    if len(order) != len(names):
        stuck = next(n for n in names if pending[n])
        raise ValueError(f"the graph has a cycle through node {stuck!r}")
    return order
