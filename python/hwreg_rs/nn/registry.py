"""The op registry: one :class:`~hwreg_rs.nn.Module` class per op type.

Every layer class that can stand as a node of a :class:`~hwreg_rs.nn.Graph`
is registered here under its ``op_type``. The class is the whole op: its
constructor arguments (``config()``) and arrays (``state_dict()``) describe
it in a file, ``out_shape`` is its shape rule, ``forward``/``backward`` its
float arithmetic, ``work`` what the cost model prices. Adding an op is one new
class with ``@register``.

The node protocol (what :class:`~hwreg_rs.nn.Graph` relies on):

- ``forward(*inputs)`` takes one array per input and returns one array (or a
  tuple of arrays for a multi-output op such as Split).
- ``backward(grad)`` takes the gradient of the output (a tuple of them for a
  multi-output op) and returns the gradient of each input: one array when the
  op has one input, else a tuple with one entry per input (``None`` where an
  input is not differentiable, e.g. integer indices).
- ``out_shape(*shapes)`` returns the output shape (a tuple of shapes for a
  multi-output op) for input shapes that include the batch dimension.
- ``config()`` returns JSON-serialisable keyword arguments such that
  ``type(m)(**m.config())`` rebuilds the op (its arrays then come back with
  ``load_state_dict``).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register(cls: T) -> T:
    """Class decorator: add ``cls`` to the registry under ``cls.op_type``."""
    op_type = getattr(cls, "op_type", None)
    if not isinstance(op_type, str) or not op_type:
        raise TypeError(f"{cls.__name__} needs a non-empty str op_type to be registered")
    if op_type in REGISTRY and REGISTRY[op_type] is not cls:
        raise ValueError(f"op type {op_type!r} is registered twice ({REGISTRY[op_type].__name__}, {cls.__name__})")
    REGISTRY[op_type] = cls
    return cls


def op_class(op_type: str) -> type:
    """The registered class of ``op_type`` (``ValueError`` naming the known ones when absent)."""
    try:
        return REGISTRY[op_type]
    except KeyError:
        raise ValueError(f"unknown op type {op_type!r}; known: {sorted(REGISTRY)}") from None


def build(op_type: str, config: dict[str, Any]) -> Any:
    """A fresh op of ``op_type`` from its ``config()``."""
    cls = op_class(op_type)
    try:
        return cls(**config)
    except TypeError as e:
        raise ValueError(f"op {op_type!r}: bad configuration {config!r} ({e})") from e


__all__ = ["REGISTRY", "register", "op_class", "build"]
