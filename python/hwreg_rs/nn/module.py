"""Module, Parameter and Sequential: the containers every layer builds on.

A :class:`Module` holds parameters (trainable arrays with a gradient),
buffers (state such as BatchNorm's running statistics) and child modules.
Names follow PyTorch (``0.weight``, ``1.running_mean``, ``1.num_batches_tracked``)
and :meth:`Module.state_dict` lists them in PyTorch's order (each module's
parameters, then its buffers, then its children), so a PyTorch state dict
converted to NumPy arrays loads with :meth:`Module.load_state_dict`.

``forward`` caches what ``backward`` needs; ``backward(grad_out)`` stores the
parameter gradients in ``Parameter.grad`` (overwriting them: one backward per
step) and returns the gradient with respect to the input.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np

from .._validate import check_bool

_DEFAULT_RNG = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator layers draw their initial weights from when given no ``rng``.

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> hw.nn.manual_seed(0); a = hw.nn.Linear(3, 2).weight.data
    >>> hw.nn.manual_seed(0); b = hw.nn.Linear(3, 2).weight.data
    >>> bool((a == b).all())
    True
    """
    global _DEFAULT_RNG
    _DEFAULT_RNG = np.random.default_rng(seed)


def as_rng(rng: Any) -> np.random.Generator:
    """A ``numpy.random.Generator`` from ``None`` (the module default), an int seed or a Generator."""
    if rng is None:
        return _DEFAULT_RNG
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"rng must be None, a non-negative int seed or a numpy Generator; got {rng!r}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy Generator; got {type(rng).__name__}")


class Parameter:
    """A trainable array and its gradient.

    Parameters
    ----------
    data : array_like
        Initial value (converted to a C-contiguous float array, float32 unless
        already floating point).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> p = hw.nn.Parameter(np.ones(3))
    >>> p.data.dtype, p.grad.shape
    (dtype('float64'), (3,))
    """

    __slots__ = ("data", "grad")

    def __init__(self, data: Any) -> None:
        arr = np.asarray(data)
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float32)
        self.data: np.ndarray = np.ascontiguousarray(arr)
        self.grad: np.ndarray = np.zeros_like(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class LoadResult(NamedTuple):
    """Keys that :meth:`Module.load_state_dict` skipped with ``strict=False``."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of the layers.

    Subclasses assign :class:`Parameter` and :class:`Module` attributes (they
    are registered in assignment order), call :meth:`register_buffer` for
    state, and implement ``forward`` and ``backward``.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> m = hw.nn.Sequential(hw.nn.Linear(4, 3, rng=0), hw.nn.ReLU(), hw.nn.Linear(3, 2, rng=1))
    >>> list(m.state_dict())
    ['0.weight', '0.bias', '2.weight', '2.bias']
    >>> m(np.ones((5, 4), np.float32)).shape
    (5, 2)
    """

    training: bool
    #: The key of this op in :mod:`hwreg_rs.nn.registry` (empty for containers).
    op_type: str = ""

    def __init__(self) -> None:
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_children", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration -------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_params" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._children[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """Add non-trainable state saved in :meth:`state_dict` (e.g. running statistics)."""
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    # -- traversal ----------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every descendant, with dotted names ('' for the root)."""
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator[Module]:
        yield from self._children.values()

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """Every parameter with its PyTorch-style dotted name."""
        for mname, m in self.named_modules():
            for pname, p in m._params.items():
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for mname, m in self.named_modules():
            for bname, b in m._buffers.items():
                yield (f"{mname}.{bname}" if mname else bname), b

    # -- modes --------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (batch statistics, dropout on); returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", check_bool(mode, "mode"))
        return self

    def eval(self) -> Module:
        """Evaluation mode (running statistics, dropout off); returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = np.zeros_like(p.data)

    def astype(self, dtype: Any) -> Module:
        """Cast parameters and floating buffers in place (float64 for gradient checks); returns self."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"dtype must be a float type; got {dtype}")
        for m in self.modules():
            for p in m._params.values():
                p.data = p.data.astype(dtype)
                p.grad = p.grad.astype(dtype)
            for name, b in list(m._buffers.items()):
                if b.dtype.kind == "f":
                    m.register_buffer(name, b.astype(dtype))
        return self

    # -- computation --------------------------------------------------------
    def forward(self, *inputs: np.ndarray) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def out_shape(self, *shapes: tuple[int, ...]) -> Any:  # pragma: no cover - abstract
        """Output shape for inputs of these shapes (batch included); see :mod:`hwreg_rs.nn.registry`."""
        raise NotImplementedError(f"{type(self).__name__} has no shape rule")

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this op: ``type(m)(**m.config())`` (arrays via ``load_state_dict``)."""
        return {}

    def __call__(self, *inputs: np.ndarray) -> Any:
        for i, x in enumerate(inputs):
            # arrays (and the NumPy scalars that operations on 0-d arrays produce); not lists
            if not isinstance(x, (np.ndarray, np.generic)) or x.dtype.kind not in "biuf":
                name = "x" if len(inputs) == 1 else f"inputs[{i}]"
                what = f"dtype {x.dtype}" if isinstance(x, (np.ndarray, np.generic)) else type(x).__name__
                raise TypeError(f"{type(self).__name__}: {name} must be a numeric numpy.ndarray "
                                f"(convert with np.asarray); got {what}")
        return self.forward(*inputs)

    # -- state --------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, keyed and ordered like PyTorch's."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        self._collect_state("", out)
        return out

    def _collect_state(self, prefix: str, out: "OrderedDict[str, np.ndarray]") -> None:
        for name, p in self._params.items():
            out[prefix + name] = p.data.copy()
        for name, b in self._buffers.items():
            out[prefix + name] = np.array(b, copy=True)
        for name, child in self._children.items():
            child._collect_state(f"{prefix}{name}.", out)

    def load_state_dict(self, state_dict: Mapping[str, Any], *, strict: bool = True) -> LoadResult:
        """Copy parameters and buffers from ``state_dict`` (e.g. a PyTorch one converted to NumPy).

        Parameters
        ----------
        state_dict : mapping of str to array_like
            Arrays keyed like :meth:`state_dict`.
        strict : bool, default True
            Raise ``KeyError`` on missing or unexpected keys. Shapes must match
            either way (``ValueError`` otherwise).

        Returns
        -------
        LoadResult
            ``(missing_keys, unexpected_keys)``.

        Examples
        --------
        >>> import numpy as np, hwreg_rs as hw
        >>> m = hw.nn.Linear(2, 1, rng=0)
        >>> m.load_state_dict({"weight": np.array([[1.0, 2.0]]), "bias": np.array([0.5])})
        LoadResult(missing_keys=[], unexpected_keys=[])
        >>> m(np.array([[1.0, 1.0]], np.float32))
        array([[3.5]], dtype=float32)
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of names to arrays; got {type(state_dict).__name__}")
        targets: dict[str, tuple[Module, str, bool]] = {}
        for mname, m in self.named_modules():
            pre = f"{mname}." if mname else ""
            for pname in m._params:
                targets[pre + pname] = (m, pname, True)
            for bname in m._buffers:
                targets[pre + bname] = (m, bname, False)
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"load_state_dict: {'; '.join(parts)}")
        converted: dict[str, np.ndarray] = {}
        errors = []
        for key, (m, name, is_param) in targets.items():
            if key not in state_dict:
                continue
            cur = m._params[name].data if is_param else np.asarray(m._buffers[name])
            try:
                new = np.asarray(state_dict[key])
            except Exception as e:  # pragma: no cover - exotic inputs
                raise TypeError(f"load_state_dict: {key!r} is not array-like") from e
            if new.dtype.kind not in "biuf":
                raise TypeError(f"load_state_dict: {key!r} has non-numeric dtype {new.dtype}")
            if new.shape != cur.shape:
                errors.append(f"{key!r}: expected shape {cur.shape}, got {new.shape}")
                continue
            converted[key] = np.array(new, dtype=cur.dtype, copy=True)
        if errors:
            raise ValueError("load_state_dict: shape mismatch for " + "; ".join(errors))
        for key, arr in converted.items():
            m, name, is_param = targets[key]
            if is_param:
                m._params[name].data = np.ascontiguousarray(arr)
            else:
                m.register_buffer(name, arr)
        return LoadResult(missing, unexpected)

    # -- repr ---------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._children:
            return head + ")"
        lines = [head]
        for name, child in self._children.items():
            lines.append("  (" + name + "): " + repr(child).replace("\n", "\n  "))
        return "\n".join(lines) + "\n)"


class Sequential(Module):
    """Layers applied in order; children are named ``"0"``, ``"1"``, ...

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.Sequential(hw.nn.Linear(3, 4, rng=0), hw.nn.ReLU())
    >>> y = net(np.ones((2, 3), np.float32)); g = net.backward(np.ones_like(y))
    >>> g.shape, len(net)
    ((2, 3), 2)
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for layer in layers:
            self.append(layer)

    def append(self, layer: Module) -> Sequential:
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential takes Module instances; got {type(layer).__name__}")
        setattr(self, str(len(self._children)), layer)
        return self

    def __len__(self) -> int:
        return len(self._children)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._children.values()))

    def __getitem__(self, i: int) -> Module:
        layers = list(self._children.values())
        return layers[i]

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self._children.values():
            x = layer.forward(x)
        return x

    def backward(self, grad: np.ndarray) -> np.ndarray:
        for layer in reversed(self._children.values()):
            grad = layer.backward(grad)
        return grad
