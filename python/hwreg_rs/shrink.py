"""Structured pruning that physically shrinks a model: whole channels out, a smaller dense model back.

:func:`shrink` removes whole output channels of ``Conv2d`` layers and neurons of
``Linear`` layers, and everything that depends on them, and returns a **new,
smaller, dense** model (a :class:`~hwreg_rs.nn.Graph`, or a
:class:`~hwreg_rs.nn.Sequential` when given one); the model passed in is not
touched. Nothing is masked: the weights, the file and the work get smaller.

How the channels that must go together are found
--------------------------------------------------
Every channel of a value is an *atom* of a union-find; the pass walks the graph
once, in order, and applies one rule per op:

- ``Conv2d`` (``groups=1``) and ``Linear`` *produce* channels: their outputs
  get fresh atoms (one per output channel, on axis 1 resp. the last axis), and
  they *consume* the atoms of their input (their input channels / features).
- A depthwise ``Conv2d`` (``groups == in_channels == out_channels``) and
  ``BatchNorm1d/2d`` pass the channel axis through (output channel ``c`` is
  input channel ``c``): they are shrunk with it (filters, bias, ``gamma``,
  ``beta``, running statistics). Other grouped convolutions are not understood.
- Elementwise ops (ReLU, Clip, GELU, Sigmoid, Dropout, Cast, ...), pools,
  global average pooling, reductions and Softmax/LayerNorm over *other* axes,
  Transpose, Squeeze and Unsqueeze pass the channels through (moving the axis).
- ``Add``/``Sub``/``Mul``/``Div`` of two tensors with the channel axis in the
  same place *tie* their channels: channel ``c`` of every summand is one unit,
  removed from all of them or from none (a residual connection). A tensor that
  broadcasts along the channel axis (size 1 there) passes through.
- ``Concat`` along the channel axis offsets the channel indices (a part that
  comes from a graph input or an op the pass does not understand is kept);
  along another axis it ties its inputs like ``Add``.
- ``Flatten`` (and a ``Reshape`` that flattens trailing dimensions) maps
  channel ``c`` to the run of features ``c*h*w .. (c+1)*h*w - 1`` of the
  following ``Linear`` (NCHW order).
- Anything else that reads a channel axis (MatMul, Gather, Split or Slice on
  the channel axis, a per-channel constant, a graph output, an unknown op)
  makes those channels *unprunable*: the pass never produces a wrong model,
  it leaves what it does not understand alone.

A *group* is a set of producer layers whose channels are tied (a chain layer
alone; every convolution feeding one residual sum together); its *channels*
are its units. :meth:`ShrinkPlan.groups` lists them (:class:`ChannelGroup`).

Which channels go
-----------------
In every prunable group, ``round(amount * n)`` of its ``n`` prunable channels
are removed for a float ``amount`` (Python's ``round``: halves to even), or
``amount`` channels for an int, as torch counts ``amount``; at least one channel
of every layer always stays. They are the channels of
least importance, summed over the group (every layer that writes the channel):

- ``"l1"`` / ``"l2"``: the L1 / L2 norm of the producer weights of the channel
  (the output rows of every ``Conv2d``/``Linear`` and depthwise filter that
  writes it), as :func:`hwreg_rs.prune.structured_mask` ranks slices;
- ``"taylor"``: ``sum |w * dL/dw|`` over the same weights, from ``grads=``
  (parameter name -> gradient) or from one batch ``data=(X, y)`` run through a
  copy of the model in eval mode (its forward, ``loss`` and backward);
- ``"bn"``: ``|gamma|`` of the BatchNorm entries of the channel (a group
  without BatchNorm is then left alone).

Ties are broken deterministically: the channel created first (lower layer,
lower index) goes first.

Removing a channel is exactly masking it: the shrunk model computes what the
original computes with the removed channels' columns zeroed in every
consuming ``Conv2d``/``Linear`` (``tests/test_shrink.py`` checks this).

See Also
--------
hwreg_rs.train.GradualShrinking : shrink on a schedule while training, fine-tuning between.
hwreg_rs.prune.structured_mask : the mask (not shrinking) form of structured pruning.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ._validate import check_choice
from .nn import ops as O
from .nn.conv import AvgPool2d, Conv2d, MaxPool2d
from .nn.graph import Graph
from .nn.layers import Dropout, Flatten, Linear, ReLU, _BatchNorm
from .nn.module import Module, Parameter

__all__ = ["ChannelGroup", "HeadGroup", "ShrinkPlan", "attention_heads", "shrink", "shrink_heads", "shrink_plan", "take_kept"]

IMPORTANCE = ("l1", "l2", "taylor", "bn")

_Chan = tuple  # (channel axis, atom ids): the channels of one value


@dataclass(frozen=True)
class ChannelGroup:
    """Producer layers whose output channels are tied, and what may be removed from them.

    Attributes
    ----------
    layers : tuple of str
        Names of the ``Conv2d``/``Linear`` layers that write the group's channels.
    channels : int
        Channels of the group (units removed as a whole).
    prunable : int
        How many of them the pass may remove (0: the group is left alone).
    reason : str
        Why channels are unprunable ('' when all are prunable).
    """

    layers: tuple[str, ...]
    channels: int
    prunable: int
    reason: str = ""


class _Atoms:
    """Union-find over channels; a root is *fixed* (never removed) once any of its atoms is."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.why: dict[int, str] = {}

    def new(self, n: int, why: str | None = None) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        ids = np.arange(start, start + n, dtype=np.int64)
        if why is not None:
            for i in range(start, start + n):
                self.why[i] = why
        return ids

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx == ry:
                continue
            lo, hi = min(rx, ry), max(rx, ry)  # the older atom stays the root: deterministic ties
            self.parent[hi] = lo
            if hi in self.why:
                self.why.setdefault(lo, self.why.pop(hi))

    def fix(self, ids: np.ndarray, why: str) -> None:
        for i in ids.tolist():
            self.why.setdefault(self.find(i), why)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


_PASS = (ReLU, Dropout, O._Unary, O.Identity, O.Cast)


class _Analysis:
    """One walk over the graph: the atoms of every value and the channel roles of every node."""

    def __init__(self, graph: Graph, shapes: dict[str, tuple[int, ...]]) -> None:
        self.graph, self.shapes = graph, shapes
        self.atoms = _Atoms()
        # node index -> {"in": atoms of the consumed input channels, "out": produced channels,
        #                "dw"/"bn": channels passed through with parameters, "reshape": (k, axis, input atoms)}
        self.roles: dict[int, dict[str, Any]] = {}
        info: dict[str, _Chan | None] = {}
        uses: dict[int, int] = {}
        for node in graph.nodes:
            uses[id(node.op)] = uses.get(id(node.op), 0) + 1
        for i, node in enumerate(graph.nodes):
            ins = [info.get(v) for v in node.inputs]
            what = f"{type(node.op).__name__} {node.name!r}"
            if uses[id(node.op)] > 1 and node.op.parameters():  # one set of weights in two places: leave it
                self._fix_all(ins, f"{what} shares its module with another node")
                for v in node.outputs:
                    info[v] = None
                continue
            try:
                outs = self._rule(i, node.op, ins, [shapes[v] for v in node.inputs],
                                  [shapes[v] for v in node.outputs], what)
            except (ValueError, TypeError, IndexError, KeyError):  # a shape the rule cannot read
                self._fix_all(ins, f"{what} (shapes not understood)")
                outs = [None] * len(node.outputs)
            for v, c in zip(node.outputs, outs):
                info[v] = c
        for v in graph.outputs:
            c = info.get(v)
            if c is not None:
                self.atoms.fix(c[1], f"graph output {v!r}")
        self.root = self.atoms.roots()

    def _fix_all(self, ins: Sequence[_Chan | None], why: str) -> None:
        for c in ins:
            if c is not None:
                self.atoms.fix(c[1], why)

    def _role(self, i: int, key: str, value: Any) -> None:
        self.roles.setdefault(i, {})[key] = value

    def _rule(self, i: int, op: Module, ins: list[_Chan | None], in_shapes: list[tuple[int, ...]],
              out_shapes: list[tuple[int, ...]], what: str) -> list[_Chan | None]:
        c = ins[0] if ins else None
        rank = len(in_shapes[0]) if in_shapes else 0
        if isinstance(op, Linear):
            if c is not None:
                if c[0] == rank - 1:
                    self._role(i, "in", c[1])
                else:
                    self.atoms.fix(c[1], f"{what} reads them off its feature axis")
            out = self.atoms.new(op.out_features)
            self._role(i, "out", out)
            return [(len(out_shapes[0]) - 1, out)]
        if isinstance(op, Conv2d):
            if op.groups == 1:
                if c is not None:
                    if c[0] == 1:
                        self._role(i, "in", c[1])
                    else:
                        self.atoms.fix(c[1], f"{what} reads them off its channel axis")
                out = self.atoms.new(op.out_channels)
                self._role(i, "out", out)
                return [(1, out)]
            if op.groups == op.in_channels == op.out_channels and c is not None and c[0] == 1:
                self._role(i, "dw", c[1])
                return [c]
            self._fix_all(ins, f"{what} is a grouped convolution")
            return [None]
        if isinstance(op, _BatchNorm) and c is not None:
            if c[0] == 1:
                self._role(i, "bn", c[1])
                return [c]
            self._fix_all(ins, f"{what} normalises another axis")
            return [None]
        if c is None and len(ins) <= 1:
            return [None] * len(out_shapes)  # nothing tracked flows through (constants, graph inputs)
        if isinstance(op, _PASS):
            return [c]
        if isinstance(op, (MaxPool2d, AvgPool2d, O.GlobalAvgPool2d)):
            if c is not None and c[0] == 1:
                return [c]
        elif isinstance(op, O._Reduce):
            axes = op._norm_axes(rank)
            if c is not None and c[0] not in axes:
                return [(c[0] if op.keepdims else c[0] - sum(a < c[0] for a in axes), c[1])]
        elif isinstance(op, (O.Softmax, O.LayerNorm)):
            axes = (op.axis % rank,) if isinstance(op, O.Softmax) else op._axes_of(in_shapes[0])
            if c is not None and c[0] not in axes:
                return [c]
        elif isinstance(op, O.Transpose):
            if c is not None:
                return [(list(op._perm(rank)).index(c[0]), c[1])]
        elif isinstance(op, O.Squeeze):
            out_rank = len(out_shapes[0])
            removed = [a for a in range(rank) if in_shapes[0][a] == 1] if op.axes is None else \
                [a % rank for a in op.axes]
            if c is not None and c[0] not in removed and rank - len(set(removed)) == out_rank:
                return [(c[0] - sum(a < c[0] for a in set(removed)), c[1])]
        elif isinstance(op, O.Unsqueeze):
            out_rank = len(out_shapes[0])
            inserted = {a % out_rank for a in op.axes}
            kept = [j for j in range(out_rank) if j not in inserted]
            if c is not None and len(kept) == rank:
                return [(kept[c[0]], c[1])]
        elif isinstance(op, Flatten):
            if c is not None:
                return [self._flatten(c, in_shapes[0], op.start_dim % max(rank, 1))]
        elif isinstance(op, O.Reshape):
            k = _flatten_start(in_shapes[0], out_shapes[0])
            if c is not None and k is not None:
                self._role(i, "reshape", (k, c[0], c[1]))
                return [self._flatten(c, in_shapes[0], k)]
        elif isinstance(op, O._Binary):
            return [self._tie(ins, in_shapes, out_shapes[0], what)]
        elif isinstance(op, O.Concat):
            return [self._concat(op, ins, in_shapes, what)]
        elif isinstance(op, O.Split):
            if c is not None and op.axis % rank != c[0]:
                return [c] * len(out_shapes)
        elif isinstance(op, O.Slice):
            if c is not None and c[0] not in {a % rank for a in op.axes}:
                return [c]
        self._fix_all(ins, f"{what} is not understood by the shrinking pass")
        return [None] * len(out_shapes)

    @staticmethod
    def _flatten(c: _Chan, shape: tuple[int, ...], start: int) -> _Chan:
        axis, ids = c
        if axis < start:
            return c
        inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
        n = int(np.prod(shape[start:], dtype=np.int64))
        p = np.arange(n, dtype=np.int64)
        return (start, ids[(p // inner) % len(ids)])  # NCHW: channel c owns features c*h*w .. (c+1)*h*w-1

    def _tie(self, ins: list[_Chan | None], in_shapes: list[tuple[int, ...]], out_shape: tuple[int, ...],
             what: str) -> _Chan | None:
        rank = len(out_shape)
        tracked = [(j, c) for j, c in enumerate(ins) if c is not None]
        pos = {rank - len(in_shapes[j]) + c[0] for j, c in tracked}  # the channel axis, numpy-aligned
        sizes = {len(c[1]) for _, c in tracked}
        if len(pos) == 1 and len(sizes) == 1:
            p = pos.pop()
            ok = True
            for j, c in enumerate(ins):
                if c is None:
                    q = p - (rank - len(in_shapes[j]))
                    if q >= 0 and in_shapes[j][q] != 1:
                        ok = False  # a per-channel operand the pass cannot shrink
            if ok:
                base = tracked[0][1][1]
                for _, c in tracked[1:]:
                    self.atoms.union(base, c[1])
                return (p, base)
        self._fix_all(ins, f"{what} combines channels it cannot align")
        return None

    def _concat(self, op: O.Concat, ins: list[_Chan | None], in_shapes: list[tuple[int, ...]],
                what: str) -> _Chan | None:
        rank = len(in_shapes[0])
        ax = op.axis % rank
        tracked = [c for c in ins if c is not None]
        if all(c[0] == ax for c in tracked):  # along the channels: offsets
            parts = [c[1] if c is not None else self.atoms.new(s[ax], f"{what} joins channels from elsewhere")
                     for c, s in zip(ins, in_shapes)]
            return (ax, np.concatenate(parts))
        if len(tracked) == len(ins) and len({c[0] for c in tracked}) == 1 and len({len(c[1]) for c in tracked}) == 1:
            for c in tracked[1:]:
                self.atoms.union(tracked[0][1], c[1])
            return tracked[0]
        self._fix_all(ins, f"{what} joins channels it cannot align")
        return None


def _flatten_start(shape: tuple[int, ...], out: tuple[int, ...]) -> int | None:
    """``k`` when ``out == shape[:k] + (prod(shape[k:]),)`` (a Reshape that flattens), else None."""
    k = len(out) - 1
    if k < 0 or k >= len(shape) or tuple(out[:k]) != tuple(shape[:k]):
        return None
    return k if out[k] == int(np.prod(shape[k:], dtype=np.int64)) else None


def _check_amount(amount: Any, name: str) -> float | int:
    """torch's amount: an int is a count of channels, a float a fraction in [0, 1] (bools are refused)."""
    if isinstance(amount, (bool, np.bool_)) or not isinstance(amount, numbers.Real):
        raise TypeError(f"{name} must be an int (a count of channels) or a float in [0, 1] (a fraction); "
                        f"got {amount!r}")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"{name} must be a non-negative count or a fraction in [0, 1]; got {amount!r}")
        return int(amount)
    a = float(amount)
    if not 0.0 <= a <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be a fraction in [0, 1] or a non-negative count; got {amount!r}")
    return a


def _count(amount: float | int, n: int) -> int:
    """Channels to remove of ``n``: an int as given, a fraction ``round(amount * n)`` (halves to even)."""
    return amount if isinstance(amount, int) else round(amount * n)


def _input_shapes(graph: Graph, input_shape: Any, data: Any) -> list[tuple[int, ...]]:
    if input_shape is not None:
        shapes = input_shape if input_shape and isinstance(input_shape[0], (tuple, list)) else [input_shape]
        try:
            out = [tuple(int(d) for d in s) for s in shapes]
        except (TypeError, ValueError):
            raise TypeError(f"input_shape must be a tuple of ints (one sample, no batch); got {input_shape!r}") \
                from None
    elif graph.input_shapes is not None:
        out = list(graph.input_shapes)
    elif data is not None:
        out = [tuple(np.shape(data[0])[1:])]
    elif isinstance(graph.nodes[0].op, Linear):
        out = [(graph.nodes[0].op.in_features,)]
    else:
        raise ValueError("shrink needs the shape of one input sample: give input_shape= (without the batch), "
                         "e.g. input_shape=(1, 8, 8)")
    if len(out) != len(graph.inputs):
        raise ValueError(f"input_shape gives {len(out)} shape(s) for {len(graph.inputs)} graph input(s)")
    return out


def _taylor_grads(model: Module, data: Any, loss: Any) -> dict[str, np.ndarray]:
    from .losses import get_loss

    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"data must be a pair (X, y) of one batch; got {type(data).__name__}")
    X, y = np.asarray(data[0], np.float32), np.asarray(data[1])
    if len(X) != len(y) or len(X) == 0:
        raise ValueError(f"data: X and y must hold the same number (> 0) of samples; got {len(X)} and {len(y)}")
    work = copy.deepcopy(model).eval()  # the original keeps its gradients and statistics
    lf = get_loss(loss)
    lf.forward(work.forward(X), y)
    work.backward(lf.backward())
    return {n: p.grad for n, p in work.named_parameters()}


class ShrinkPlan:
    """Which channels :func:`shrink` removes from a model, and the smaller model it builds.

    Parameters
    ----------
    model : Module
        A :class:`~hwreg_rs.nn.Graph`, a :class:`~hwreg_rs.nn.Sequential` or any layer.
    amount : float in [0, 1] or int, optional
        Fraction (float) or count (int) of the prunable channels to remove from every group.
    amount_per_layer : mapping of str to float or int, optional
        Amount for the group of each named ``Conv2d``/``Linear`` layer (overrides
        ``amount`` there); two layers of one group must not ask for different amounts.
    importance : {"l1", "l2", "taylor", "bn"}, default "l1"
    grads : mapping of str to ndarray, optional
        Gradients by parameter name (``"<layer>.weight"``) for ``"taylor"``.
    data : (X, y), optional
        One batch to compute the gradients from for ``"taylor"``.
    loss : Loss or str, default "cross_entropy"
        The loss of that batch.
    input_shape : tuple of int (or one per input), optional
        Shape of one input sample; default: the graph's ``input_shapes``, the
        shape of ``data``, or the first ``Linear``'s ``in_features``.
    remove : mapping of tuple of str to int, optional
        How many channels to remove per group, keyed by the group's ``layers``
        (instead of fractions; what a schedule uses).

    Attributes
    ----------
    groups : list of ChannelGroup
    removed : dict of str to ndarray
        For every producer layer, the indices of its output channels that go.
    kept : dict of str to tuple
        For every parameter or buffer that shrinks, the kept indices along each
        axis (``None`` for an axis that keeps everything).
    skipped : dict of tuple of str to str
        Groups the importance could not rank (``"bn"`` without BatchNorm), and why.

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> plan = hw.prune.ShrinkPlan(hw.nn.mlp([8, 6, 4, 3], rng=0), amount=0.5)
    >>> [(g.layers, g.channels, g.prunable) for g in plan.groups]
    [(('0',), 6, 6), (('2',), 4, 4), (('4',), 3, 0)]
    >>> {k: len(v) for k, v in plan.removed.items()}
    {'0': 3, '2': 2}
    """

    def __init__(self, model: Module, amount: Any = None, *, amount_per_layer: Mapping[str, Any] | None = None,
                 importance: str = "l1", grads: Mapping[str, Any] | None = None, data: Any = None,
                 loss: Any = "cross_entropy", input_shape: Any = None,
                 remove: Mapping[tuple[str, ...], int] | None = None) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"model must be a hwreg_rs.nn.Module; got {type(model).__name__}")
        self.model = model
        self.importance = check_choice(importance, "importance", IMPORTANCE)
        default = None if amount is None else _check_amount(amount, "amount")
        if not isinstance(amount_per_layer, (Mapping, type(None))):
            raise TypeError(f"amount_per_layer must map layer names to amounts; "
                            f"got {type(amount_per_layer).__name__}")
        per_layer = {str(k): _check_amount(v, f"amount_per_layer[{k!r}]")
                     for k, v in (amount_per_layer or {}).items()}
        if default is None and not per_layer and remove is None:
            raise ValueError("give amount= (a fraction or count for every group) or amount_per_layer={layer: amount}")
        graph = Graph.from_module(model)
        shapes = graph.infer_shapes(*((1,) + s for s in _input_shapes(graph, input_shape, data)))
        self._graph = graph
        self._a = _Analysis(graph, shapes)
        self._units()
        if self.importance == "taylor":
            if grads is None:
                if data is None:
                    raise ValueError('importance="taylor" needs grads={param name: gradient} or data=(X, y)')
                grads = _taylor_grads(model, data, loss)
            elif not isinstance(grads, Mapping):
                raise TypeError(f"grads must map parameter names to arrays; got {type(grads).__name__}")
        scores, scored = self._scores(grads)
        self._select(default, per_layer, remove, scores, scored)

    # -- the groups ------------------------------------------------------------
    def _units(self) -> None:
        a, nodes = self._a, self._graph.nodes
        root = a.root
        self._producers = [i for i, r in sorted(a.roles.items()) if "out" in r]
        # unit (a root) -> {producer node index: how many of its output channels the unit holds}
        self._unit_layers: dict[int, dict[int, int]] = {}
        for i in self._producers:
            for u in root[a.roles[i]["out"]].tolist():
                d = self._unit_layers.setdefault(u, {})
                d[i] = d.get(i, 0) + 1
        parent = {i: i for i in self._producers}

        def find(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        for layers in self._unit_layers.values():
            first, *rest = sorted(layers)
            for j in rest:
                ri, rj = find(first), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
        by_group: dict[int, list[int]] = {}
        for u in sorted(self._unit_layers):
            by_group.setdefault(find(min(self._unit_layers[u])), []).append(u)
        self._group_units = [units for _, units in sorted(by_group.items())]
        self.groups: list[ChannelGroup] = []
        for units in self._group_units:
            layer_ids = sorted({i for u in units for i in self._unit_layers[u]})
            fixed = [u for u in units if u in a.atoms.why]
            self.groups.append(ChannelGroup(tuple(nodes[i].name for i in layer_ids), len(units),
                                            len(units) - len(fixed), a.atoms.why[fixed[0]] if fixed else ""))

    def _scores(self, grads: Mapping[str, Any] | None) -> tuple[dict[int, float], set[int]]:
        a, nodes = self._a, self._graph.nodes
        acc: dict[int, float] = {}
        scored: set[int] = set()  # units with a BatchNorm entry ("bn")
        for i, roles in a.roles.items():
            op: Any = nodes[i].op
            keys = ("bn",) if self.importance == "bn" else ("out", "dw")
            for key in keys:
                if key not in roles:
                    continue
                units = a.root[roles[key]]
                if key == "bn":
                    if op.weight is None:
                        continue
                    per = np.abs(op.weight.data.astype(np.float64))
                else:
                    w = op.weight.data.astype(np.float64).reshape(len(units), -1)
                    if self.importance == "l1":
                        per = np.abs(w).sum(axis=1)
                    elif self.importance == "l2":
                        per = (w * w).sum(axis=1)
                    else:
                        name = f"{nodes[i].name}.weight"
                        g = None if grads is None else grads.get(name)
                        if g is None:
                            raise ValueError(f"grads has no gradient for {name!r} (taylor importance)")
                        g = np.asarray(g, np.float64)
                        if g.shape != op.weight.data.shape:
                            raise ValueError(f"grads[{name!r}] has shape {g.shape}; the weight is "
                                             f"{op.weight.data.shape}")
                        per = np.abs(w * g.reshape(w.shape)).sum(axis=1)
                for u, s in zip(units.tolist(), per.tolist()):
                    acc[u] = acc.get(u, 0.0) + s
                    scored.add(u)
        if self.importance == "l2":
            acc = {u: math.sqrt(s) for u, s in acc.items()}
        return acc, scored

    # -- the selection ---------------------------------------------------------
    def _select(self, default: float | int | None, per_layer: dict[str, float | int],
                remove: Mapping[tuple[str, ...], int] | None, scores: dict[int, float], scored: set[int]) -> None:
        a, nodes = self._a, self._graph.nodes
        names = {nodes[i].name: gi for gi, g in enumerate(self.groups) for i in self._producers
                 if nodes[i].name in g.layers}
        unknown = sorted(set(per_layer) - set(names))
        if unknown:
            raise ValueError(f"amount_per_layer names {unknown}, which are not Conv2d/Linear layers of the model; "
                             f"its layers: {sorted(names)}")
        fractions: dict[int, float | int] = {}
        for layer, f in per_layer.items():
            gi = names[layer]
            g = self.groups[gi]
            if g.prunable == 0 and f > 0:
                raise ValueError(f"amount_per_layer[{layer!r}]: the channels of {layer!r} cannot be removed "
                                 f"({g.reason})")
            if gi in fractions and (type(fractions[gi]), fractions[gi]) != (type(f), f):
                other = next(k for k, v in per_layer.items() if names[k] == gi and (type(v), v) != (type(f), f))
                raise ValueError(f"amount_per_layer gives {other!r} and {layer!r}, which share their channels "
                                 f"(group {g.layers}), different amounts ({per_layer[other]!r} and {f!r})")
            fractions[gi] = f
        counts = {} if remove is None else {tuple(k): int(v) for k, v in remove.items()}
        unknown_groups = sorted(set(counts) - {g.layers for g in self.groups})
        if unknown_groups:
            raise ValueError(f"remove names groups {unknown_groups} the model does not have; its groups: "
                             f"{[g.layers for g in self.groups]}")
        kept_per_layer = {i: len(a.roles[i]["out"]) for i in self._producers}
        removed_units: set[int] = set()
        self.skipped: dict[tuple[str, ...], str] = {}
        for gi, (g, units) in enumerate(zip(self.groups, self._group_units)):
            free = [u for u in units if u not in a.atoms.why]
            if g.layers in counts:
                k = counts[g.layers]
            else:
                frac = fractions.get(gi, default)
                if frac is None or not free:
                    continue
                k = _count(frac, len(free))
            if k <= 0 or not free:
                continue
            if self.importance == "bn" and any(u not in scored for u in free):
                self.skipped[g.layers] = "no BatchNorm on its channels"
                if gi in fractions:
                    raise ValueError(f'importance="bn": the group of {g.layers} has no BatchNorm to rank by')
                continue
            order = sorted(free, key=lambda u: (scores.get(u, 0.0), u))  # least important first, then oldest
            for u in order:
                if k == 0:
                    break
                layers = self._unit_layers[u]
                if all(kept_per_layer[i] - n >= 1 for i, n in layers.items()):  # every layer keeps a channel
                    for i, n in layers.items():
                        kept_per_layer[i] -= n
                    removed_units.add(u)
                    k -= 1
        self._removed_units = removed_units
        gone = np.isin(a.root, np.fromiter(removed_units, np.int64, len(removed_units)))
        self._keep = lambda ids: np.flatnonzero(~gone[ids])
        self.removed = {nodes[i].name: np.flatnonzero(gone[a.roles[i]["out"]]) for i in self._producers
                        if gone[a.roles[i]["out"]].any()}
        self.kept: dict[str, tuple[Any, ...]] = {}
        for i, roles in sorted(a.roles.items()):
            op: Any = nodes[i].op
            name = nodes[i].name
            out = self._keep(roles["out"]) if "out" in roles else None
            inp = self._keep(roles["in"]) if "in" in roles else None
            for key in ("dw", "bn"):
                if key in roles:
                    out = self._keep(roles[key])
            if out is not None and len(out) == _size(roles, "out", "dw", "bn"):
                out = None
            if inp is not None and len(inp) == len(roles["in"]):
                inp = None
            if out is None and inp is None:
                continue
            if isinstance(op, (Linear, Conv2d)):
                self.kept[f"{name}.weight"] = (out, None if "dw" in roles else inp)
                if op.bias is not None and out is not None:
                    self.kept[f"{name}.bias"] = (out,)
            elif isinstance(op, _BatchNorm) and out is not None:
                for p in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(op, p, None) is not None:
                        self.kept[f"{name}.{p}"] = (out,)

    # -- the smaller model -----------------------------------------------------
    def apply(self) -> Module:
        """A new model with the selected channels removed (the planned model is not touched).

        Returns
        -------
        Module
            Of the planned model's type (a Sequential stays a Sequential).
        """
        new = copy.deepcopy(self.model)
        graph = Graph.from_module(new)
        for i, roles in self._a.roles.items():
            node = graph.nodes[i]
            op: Any = node.op
            if "reshape" in roles:
                k, axis, ids = roles["reshape"]
                _retarget(op, self._a.shapes[node.inputs[0]], k, axis, len(self._keep(ids)))
                continue
            for name in ("weight", "bias"):
                idx = self.kept.get(f"{node.name}.{name}")
                if idx is not None:
                    setattr(op, name, Parameter(take_kept(getattr(op, name).data, idx)))
            for name in ("running_mean", "running_var"):
                idx = self.kept.get(f"{node.name}.{name}")
                if idx is not None:
                    op.register_buffer(name, take_kept(op._buffers[name], idx))
            if isinstance(op, Linear):
                op.out_features, op.in_features = op.weight.data.shape
            elif isinstance(op, Conv2d):
                op.out_channels = op.weight.data.shape[0]
                if "dw" in roles:
                    op.in_channels = op.groups = op.out_channels
                else:
                    op.in_channels = op.weight.data.shape[1]
            elif isinstance(op, _BatchNorm) and f"{node.name}.running_mean" in self.kept:
                op.num_features = len(self.kept[f"{node.name}.running_mean"][0])
        return new


def take_kept(a: np.ndarray, kept: Sequence[Any]) -> np.ndarray:
    """``a`` cut to the kept indices along each axis (``kept[axis]``; ``None`` keeps the whole axis).

    This is how :meth:`ShrinkPlan.apply` cuts every parameter, and how a
    trainer cuts the optimizer state that goes with it (:attr:`ShrinkPlan.kept`).

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.shrink import take_kept
    >>> take_kept(np.arange(12).reshape(3, 4), (np.array([0, 2]), None))
    array([[ 0,  1,  2,  3],
           [ 8,  9, 10, 11]])
    """
    out = np.asarray(a)
    if len(kept) > out.ndim:
        raise ValueError(f"kept has {len(kept)} axes for an array of shape {out.shape}")
    for axis, idx in enumerate(kept):
        if idx is not None:
            out = np.take(out, np.asarray(idx, np.int64), axis=axis)
    return np.ascontiguousarray(out)


def _retarget(op: O.Reshape, shape: tuple[int, ...], k: int, axis: int, channels: int) -> None:
    """The target of a flattening Reshape once its input keeps ``channels`` on ``axis``."""
    target = list(op.shape)
    pos = axis if axis < k else k
    if target[pos] > 0:  # 0 (copy) and -1 (inferred) adapt by themselves
        new_shape = list(shape)
        new_shape[axis] = channels
        target[pos] = channels if axis < k else int(np.prod(new_shape[k:], dtype=np.int64))
        op.shape = target


def _size(roles: dict[str, Any], *keys: str) -> int:
    return next(len(roles[k]) for k in keys if k in roles)


def shrink_plan(model: Module, amount: Any = None, **options: Any) -> ShrinkPlan:
    """The :class:`ShrinkPlan` of ``model``: its channel groups and the channels :func:`shrink` would remove.

    Takes the arguments of :func:`shrink`.

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> plan = hw.prune.shrink_plan(hw.nn.small_cnn(rng=0), amount=0.25, input_shape=(1, 8, 8))
    >>> [(g.layers, g.channels) for g in plan.groups if g.prunable]
    [(('0',), 16), (('3',), 32), (('8',), 64)]
    """
    return ShrinkPlan(model, amount, **options)


def shrink(model: Module, amount: Any = None, *, amount_per_layer: Mapping[str, Any] | None = None,
           importance: str = "l1", grads: Mapping[str, Any] | None = None, data: Any = None,
           loss: Any = "cross_entropy", input_shape: Any = None) -> Module:
    """A smaller dense copy of ``model`` without its least important channels (structured pruning).

    Removes whole output channels of ``Conv2d`` layers / neurons of ``Linear``
    layers together with everything that depends on them (the next layers'
    input channels, BatchNorm entries, depthwise filters, biases), through
    the dependency groups of :mod:`hwreg_rs.shrink` (residual sums tie their
    inputs' channels, Concat offsets them, Flatten maps a channel to its run of
    features). Channels the pass cannot follow are left alone.

    Parameters
    ----------
    model : Module
        A :class:`~hwreg_rs.nn.Graph` (e.g. from :func:`hwreg_rs.onnx.load`), a
        :class:`~hwreg_rs.nn.Sequential` or a layer; not modified.
    amount : float in [0, 1] or int, optional
        Fraction of the prunable channels removed from every group,
        ``round(amount * n)`` (halves to even), or an int count of them (torch's
        ``amount``); at least one channel of every layer stays.
    amount_per_layer : mapping of str to float or int, optional
        Amount per ``Conv2d``/``Linear`` layer name (for that layer's group; overrides ``amount``).
    importance : {"l1", "l2", "taylor", "bn"}, default "l1"
        How channels are ranked (summed over every layer of the group): the L1 /
        L2 norm of their producer weights, ``sum |w * dL/dw|``, or BatchNorm ``|gamma|``.
    grads : mapping of str to ndarray, optional
        Parameter gradients by name, for ``"taylor"``.
    data : (X, y), optional
        One batch for ``"taylor"`` (run through a copy of the model in eval mode).
    loss : Loss or str, default "cross_entropy"
        Loss of that batch.
    input_shape : tuple of int, optional
        Shape of one input sample when the model does not say (a Sequential of convolutions).

    Returns
    -------
    Module
        A new model of the same type (Sequential or Graph), smaller.

    See Also
    --------
    shrink_plan : the groups and the channels that would go, without building the model.
    hwreg_rs.train.GradualShrinking : shrinking on a schedule during training.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.small_cnn(rng=0)              # conv 16, conv 32, fc 64, fc 10
    >>> small = hw.prune.shrink(net, 0.5, input_shape=(1, 8, 8))
    >>> [tuple(p.shape) for p in small.state_dict().values() if p.ndim > 1]
    [(8, 1, 3, 3), (16, 8, 3, 3), (32, 256), (10, 32)]
    >>> small(np.zeros((2, 1, 8, 8), np.float32)).shape, len(net[0].weight.data)
    ((2, 10), 16)
    """
    return ShrinkPlan(model, amount, amount_per_layer=amount_per_layer, importance=importance, grads=grads,
                      data=data, loss=loss, input_shape=input_shape).apply()


# ---------------------------------------------------------------------------
# Attention heads
# ---------------------------------------------------------------------------
#
# A head is found, not declared: an attention block is a MatMul of scores ``q @ k^T`` whose
# inputs, and the value MatMul ``p @ v`` after it, reach Linear projections through ops that only
# move data (Reshape, Transpose, Gather, Squeeze, Unsqueeze, a scalar Mul/Div). The data-moving ops
# are run on labels: each projection column's index flows forward to q, k and v (``(B, h, N, d)``,
# heads on axis -3), which says which columns make each head; a head index flows from the value
# MatMul's output to the output projection's input, which says which of its inputs each head
# feeds. Removing a head removes those columns and inputs, and rescales the literal dimensions of
# every Reshape on the way that carries heads. The result is checked against the original model
# with the removed heads' output-projection inputs zeroed (what removing them means): a block the
# labels misread is never shrunk wrongly.

_MOVES = (O.Reshape, O.Transpose, O.Gather, O.Squeeze, O.Unsqueeze, O.Identity, Dropout)


@dataclass(frozen=True)
class HeadGroup:
    """The heads of one attention block and what each is made of.

    Attributes
    ----------
    scores : str
        Name of the ``q @ k^T`` MatMul node (the block's key for :func:`shrink_heads`).
    heads, head_dim : int
    out_rows : dict of str to list of ndarray
        For each projection Linear writing q, k or v: the output rows (weight rows) of each head.
    consumer : str
        The output projection Linear.
    in_columns : list of ndarray
        For each head, the consumer's input columns (weight columns) it feeds.
    """

    scores: str
    heads: int
    head_dim: int
    out_rows: dict[str, list[np.ndarray]]
    consumer: str
    in_columns: list[np.ndarray]
    reshapes: tuple[tuple[int, tuple[int, ...]], ...]  # (node index, output axes that carry heads)


def _is_scalar_scale(graph: Graph, node: Any, consts: Mapping[str, Any]) -> bool:
    return (isinstance(node.op, (O.Mul, O.Div)) and len(node.inputs) == 2 and node.inputs[1] in consts
            and np.size(consts[node.inputs[1]]) == 1)


def _moves(node: Any, graph: Graph, consts: Mapping[str, Any]) -> bool:
    return (isinstance(node.op, _MOVES) and sum(v not in consts for v in node.inputs) == 1) or \
        _is_scalar_scale(graph, node, consts)


def _back_to_linear(graph: Graph, value: str, consts: Mapping[str, Any]) -> list[int] | None:
    """Node indices from a Linear to the node writing ``value``, every step a data move; None if not."""
    prod = graph.producers()
    path: list[int] = []
    v = value
    while v in prod:
        i = prod[v]
        node = graph.nodes[i]
        path.append(i)
        if isinstance(node.op, Linear):
            return path[::-1]
        if not _moves(node, graph, consts):
            return None
        v = node.inputs[0]
    return None


def _forward_to_linear(graph: Graph, value: str, consts: Mapping[str, Any]) -> list[int] | None:
    """Node indices from the sole reader of ``value`` to a Linear, every step before it a data move."""
    readers = graph.consumers()
    path: list[int] = []
    v = value
    while True:
        r = readers.get(v, [])
        if len(r) != 1 or v in graph.outputs:
            return None
        node = graph.nodes[r[0]]
        path.append(r[0])
        if isinstance(node.op, Linear):
            return path
        if not _moves(node, graph, consts) or node.inputs[0] != v:
            return None
        v = node.outputs[0]


def _run_moves(graph: Graph, path: Sequence[int], x: np.ndarray, consts: Mapping[str, Any],
               seen: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """``x`` (labels) through the data-moving nodes of ``path`` (a scalar scale leaves labels alone)."""
    for i in path:
        node = graph.nodes[i]
        if not _is_scalar_scale(graph, node, consts):
            x = np.asarray(node.op.forward(x, *(consts[v] for v in node.inputs[1:])))
        if seen is not None:
            seen[i] = x
    return x


def _head_groups(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> list[HeadGroup]:
    consts = graph.constants()
    readers = graph.consumers()
    out = []
    for si, node in enumerate(graph.nodes):
        if not isinstance(node.op, O.MatMul) or len(node.inputs) != 2:
            continue
        q_shape = shapes[node.inputs[0]]
        if len(q_shape) != 4:
            continue
        # The value MatMul: reached from the scores through element-wise ops (scale, mask, Softmax).
        v = node.outputs[0]
        pv = None
        for _ in range(8):
            r = readers.get(v, [])
            if len(r) != 1:
                break
            nxt = graph.nodes[r[0]]
            if isinstance(nxt.op, O.MatMul) and nxt.inputs[0] == v:
                pv = r[0]
                break
            if len(nxt.outputs) != 1:
                break
            v = nxt.outputs[0]
        if pv is None:
            continue
        group = _one_head_group(graph, shapes, consts, si, pv)
        if group is not None:
            out.append(group)
    return out


def _one_head_group(graph: Graph, shapes: dict[str, tuple[int, ...]], consts: Mapping[str, Any], si: int,
                    pv: int) -> HeadGroup | None:
    nodes = graph.nodes
    q_in, k_in = nodes[si].inputs
    v_in = nodes[pv].inputs[1]
    heads = shapes[q_in][1]
    d = shapes[q_in][-1]
    found = [_back_to_linear(graph, x, consts) for x in (q_in, k_in, v_in)]
    o_path = _forward_to_linear(graph, nodes[pv].outputs[0], consts)
    paths = [p for p in found if p is not None]
    if len(paths) != 3 or o_path is None:
        return None
    rows: dict[str, list[list[int]]] = {}
    head_axes: dict[int, set[int]] = {}
    for path, x in zip(paths, (q_in, k_in, v_in)):
        lin: Any = nodes[path[0]]
        s = shapes[lin.outputs[0]]
        n_out = lin.op.out_features
        cols = np.broadcast_to(np.arange(n_out, dtype=np.float64), s).copy()
        lab = _run_moves(graph, path[1:], cols, consts)
        if lab.shape != shapes[x] or lab.ndim != 4 or lab.shape[1] != heads:
            return None
        per = []
        for j in range(heads):
            h = lab[:, j]
            # a head's columns are the same for every sample and token
            if not (h == h[:1]).all() or (x == k_in and not (h == h[:, :, :1]).all()) or \
                    (x != k_in and not (h == h[:, :1]).all()):
                return None
            per.append(sorted({int(c) for c in np.unique(h)}))
        flat = [c for p in per for c in p]
        if len(flat) != len(set(flat)) or any(len(p) != len(per[0]) for p in per):
            return None
        got = rows.setdefault(lin.name, [[] for _ in range(heads)])
        for j in range(heads):
            got[j] += per[j]
    for path in paths:  # head labels (of every column of the projection) through each path: the axes with heads
        lin = nodes[path[0]]
        head_of = np.full(int(getattr(lin.op, "out_features")), -1.0)
        for j, p in enumerate(rows[lin.name]):
            head_of[p] = j
        seen: dict[int, np.ndarray] = {}
        _run_moves(graph, path[1:], np.broadcast_to(head_of, shapes[lin.outputs[0]]).copy(), consts, seen)
        for i, arr in seen.items():
            head_axes.setdefault(i, set()).update(a for a in range(arr.ndim) if np.ptp(arr, axis=a).any())
    o_shape = shapes[nodes[pv].outputs[0]]
    if len(o_shape) != 4 or o_shape[1] != heads:
        return None
    lab0 = np.broadcast_to(np.arange(heads, dtype=np.float64)[None, :, None, None], o_shape).copy()
    seen = {}
    lab = _run_moves(graph, o_path[:-1], lab0, consts, seen)
    for i, arr in seen.items():
        head_axes.setdefault(i, set()).update(a for a in range(arr.ndim) if np.ptp(arr, axis=a).any())
    consumer: Any = nodes[o_path[-1]]
    if lab.shape[-1] != consumer.op.in_features:
        return None
    feats = lab.reshape(-1, lab.shape[-1])
    if not (feats == feats[:1]).all():
        return None
    in_cols = [np.flatnonzero(feats[0] == j) for j in range(heads)]
    if any(len(c) != len(in_cols[0]) for c in in_cols) or sum(len(c) for c in in_cols) != consumer.op.in_features:
        return None
    if consumer.name in rows or any(len(set(map(len, per))) != 1 for per in rows.values()):
        return None
    reshapes = tuple(sorted((i, tuple(sorted(ax))) for i, ax in head_axes.items()
                            if isinstance(nodes[i].op, O.Reshape) and ax))
    return HeadGroup(nodes[si].name, heads, d, {k: [np.array(sorted(p), np.int64) for p in v] for k, v in rows.items()},
                     consumer.name, in_cols, reshapes)


def attention_heads(model: Module, *, input_shape: Any = None) -> list[HeadGroup]:
    """The attention blocks of ``model`` whose heads :func:`shrink_heads` can remove.

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> from hwreg_rs import zoo
    >>> g = hw.onnx.load(zoo.transformer())
    >>> [(h.heads, h.head_dim, sorted(h.out_rows), h.consumer) for h in attention_heads(g)]  # doctest: +NORMALIZE_WHITESPACE
    [(2, 4, ['layer.self_attn.k_proj', 'layer.self_attn.q_proj', 'layer.self_attn.v_proj'],
      'layer.self_attn.out_proj')]
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a hwreg_rs.nn.Module; got {type(model).__name__}")
    graph = Graph.from_module(model)
    shapes = graph.infer_shapes(*((2,) + s for s in _input_shapes(graph, input_shape, None)))
    return _head_groups(graph, shapes)


def _head_scores(model: Module, g: HeadGroup, importance: str, grads: Mapping[str, Any] | None) -> np.ndarray:
    mods: dict[str, Any] = dict(model.named_modules())
    score = np.zeros(g.heads)
    parts = [(name, rows, 0) for name, rows in g.out_rows.items()] + [(g.consumer, g.in_columns, 1)]
    for name, per, axis in parts:
        w = mods[name].weight.data.astype(np.float64)
        gw = None
        if importance == "taylor":
            gw = None if grads is None else grads.get(f"{name}.weight")
            if gw is None:
                raise ValueError(f"grads has no gradient for {name + '.weight'!r} (taylor importance)")
            gw = np.asarray(gw, np.float64).reshape(w.shape)
        for j, idx in enumerate(per):
            part = np.take(w, idx, axis=axis)
            if importance == "l1":
                score[j] += np.abs(part).sum()
            elif importance == "l2":
                score[j] += (part * part).sum()
            else:
                score[j] += np.abs(part * np.take(np.asarray(gw), idx, axis=axis)).sum()
    return np.sqrt(score) if importance == "l2" else score


def shrink_heads(model: Module, amount: Any = None, *, remove: Mapping[str, int] | None = None,
                 importance: str = "l1", grads: Mapping[str, Any] | None = None, data: Any = None,
                 loss: Any = "cross_entropy", input_shape: Any = None) -> Module:
    """A smaller copy of ``model`` without the least important heads of its attention blocks.

    Each head goes with everything that is only its: its rows of the q, k and v projections
    (weights and biases) and its columns of the output projection; the Reshapes between them
    are retargeted to the fewer heads. At least one head of every block stays.

    Parameters
    ----------
    model : Module
        A :class:`~hwreg_rs.nn.Graph` (e.g. from :func:`hwreg_rs.onnx.load`); not modified.
    amount : float in [0, 1] or int, optional
        Fraction of every block's heads (``round(amount * heads)``) or a count of them.
    remove : mapping of str to int, optional
        Heads to remove per block, keyed by :attr:`HeadGroup.scores`.
    importance : {"l1", "l2", "taylor"}, default "l1"
        Rank heads by the L1 / L2 norm of their weights (every projection row and
        output-projection column of the head) or by ``sum |w * dL/dw|`` over them.
    grads, data, loss, input_shape
        As for :func:`shrink`.

    Returns
    -------
    Module

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> from hwreg_rs import zoo
    >>> g = hw.onnx.load(zoo.transformer())
    >>> small = shrink_heads(g, 1)
    >>> [h.heads for h in attention_heads(small)], small(np.zeros((2, 8, 8), np.float32)).shape
    ([1], (2, 10))
    """
    check_choice(importance, "importance", ("l1", "l2", "taylor"))
    if amount is None and remove is None:
        raise ValueError("give amount= (a fraction or count of every block's heads) or remove={block: count}")
    default = None if amount is None else _check_amount(amount, "amount")
    groups = attention_heads(model, input_shape=input_shape)
    known = {g.scores for g in groups}
    unknown = sorted(set(remove or {}) - known)
    if unknown:
        raise ValueError(f"remove names blocks {unknown} the model does not have; its attention blocks: {sorted(known)}")
    if importance == "taylor" and grads is None:
        if data is None:
            raise ValueError('importance="taylor" needs grads={param name: gradient} or data=(X, y)')
        grads = _taylor_grads(model, data, loss)
    new = copy.deepcopy(model)
    graph = Graph.from_module(new)
    mods: dict[str, Any] = dict(new.named_modules())
    masked = copy.deepcopy(model)  # the meaning of removing a head: its output-projection inputs zeroed
    mmods: dict[str, Any] = dict(masked.named_modules())
    for g in groups:
        k = int((remove or {}).get(g.scores, _count(default, g.heads) if default is not None else 0))
        k = min(max(k, 0), g.heads - 1)
        if k == 0:
            continue
        scores = _head_scores(model, g, importance, grads)
        order = sorted(range(g.heads), key=lambda j: (scores[j], j))  # least important first, then the first
        gone = sorted(order[:k])
        keep = [j for j in range(g.heads) if j not in gone]
        for name, per in g.out_rows.items():
            lin = mods[name]
            kept_rows = _keep_rows(lin.out_features, per, gone)
            lin.weight = Parameter(take_kept(lin.weight.data, (kept_rows, None)))
            if lin.bias is not None:
                lin.bias = Parameter(take_kept(lin.bias.data, (kept_rows,)))
            lin.out_features = lin.weight.data.shape[0]
        cons = mods[g.consumer]
        cols = np.sort(np.concatenate([g.in_columns[j] for j in keep]))
        cons.weight = Parameter(take_kept(cons.weight.data, (None, cols)))
        cons.in_features = cons.weight.data.shape[1]
        zero = np.concatenate([g.in_columns[j] for j in gone])
        mmods[g.consumer].weight.data[:, zero] = 0
        for i, axes in g.reshapes:
            op: Any = graph.nodes[i].op
            target = list(op.shape)
            for a in axes:
                if a < len(target) and target[a] > 0:
                    if (target[a] * len(keep)) % g.heads:
                        raise NotImplementedError(f"Reshape {graph.nodes[i].name!r}: dimension {target[a]} does not "
                                                  f"split into {g.heads} heads")
                    target[a] = target[a] * len(keep) // g.heads
            op.shape = target
    _check_same(model, masked, new, input_shape)
    return new


def _keep_rows(n: int, per: Sequence[np.ndarray], gone: Sequence[int]) -> np.ndarray:
    drop = np.concatenate([per[j] for j in gone]) if gone else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(n), drop)


def _check_same(original: Module, masked: Module, shrunk: Module, input_shape: Any) -> None:
    """The shrunk model must compute what the original computes with the removed heads masked."""
    graph = Graph.from_module(original)
    shapes = _input_shapes(graph, input_shape, None)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((3,) + s).astype(np.float32) for s in shapes]
    want = masked.eval()(*xs) if len(xs) > 1 else masked.eval()(xs[0])
    got = shrunk.eval()(*xs) if len(xs) > 1 else shrunk.eval()(xs[0])
    if not np.allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5):
        raise NotImplementedError("removing these heads does not compute what masking them does: the attention "
                                  "block is laid out in a way the head pass does not follow")
