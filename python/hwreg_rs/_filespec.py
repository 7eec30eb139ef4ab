"""Validated reading of a runtime file's op specs and arrays: every field checked before use.

A file is hostile until validated (docs/design.md §6): each value an op reads from its
JSON spec or its arrays goes through :class:`Spec`, which checks the type, the
range and the dtype exactly and raises :class:`hwreg_rs.io.FormatError` naming
the node, the field and the value — never a KeyError, a TypeError or an
allocation sized by an unchecked number.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .io import FormatError

# No dimension, kernel, stride or padding a real model uses comes near these.
MAX_DIM = 1 << 20
MAX_PAD = 1 << 12
MAX_ELEMENTS = 1 << 28


class Spec:
    """One node's spec and arrays, read with checks.

    Parameters
    ----------
    spec : mapping
        The node's JSON spec (``{"op": ..., ...}``).
    arrays : mapping of str to ndarray
        The node's arrays by parameter name.
    where : str
        How messages name the node (``"node 3 ('fc1', linear)"``).
    """

    def __init__(self, spec: Any, arrays: Mapping[str, np.ndarray], where: str) -> None:
        if not isinstance(spec, dict):
            raise FormatError(f"{where}: the spec must be a JSON object; got {type(spec).__name__}")
        self.spec, self.arrays, self.where = spec, arrays, where

    def fail(self, field: str, message: str) -> FormatError:
        return FormatError(f"{self.where}: {field} {message}")

    def _get(self, key: str, default: Any = ...) -> Any:
        if key not in self.spec:
            if default is ...:
                raise self.fail(repr(key), "is missing")
            return default
        return self.spec[key]

    def int(self, key: str, *, lo: int = 0, hi: int = MAX_DIM, default: Any = ...) -> int:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(repr(key), f"must be an integer in [{lo}, {hi}]; got {v!r}")
        return v

    def ints(self, key: str, n: int, *, lo: int = 0, hi: int = MAX_DIM) -> tuple[int, ...]:
        v = self._get(key)
        if not isinstance(v, list) or len(v) != n or any(isinstance(e, bool) or not isinstance(e, int) or
                                                        not lo <= e <= hi for e in v):
            raise self.fail(repr(key), f"must be a list of {n} integers in [{lo}, {hi}]; got {v!r}")
        return tuple(v)

    def bool(self, key: str) -> bool:
        v = self._get(key)
        if not isinstance(v, bool):
            raise self.fail(repr(key), f"must be true or false; got {v!r}")
        return v

    def str(self, key: str, choices: Sequence[str] | None = None) -> str:
        v = self._get(key)
        if not isinstance(v, str) or (choices is not None and v not in choices):
            what = f"one of {sorted(choices)}" if choices is not None else "a string"
            raise self.fail(repr(key), f"must be {what}; got {v!r}")
        return v

    def activation_qparams(self) -> tuple[np.float32, int] | None:
        """A statically quantized op's ``(input_scale, input_zero_point)``: a finite float32 > 0 and
        an integer in [0, 255], both or neither (an older file without them: ``None``, dynamic)."""
        has = ["input_scale" in self.spec, "input_zero_point" in self.spec]
        if not any(has):
            return None
        if not all(has):
            missing = "input_zero_point" if has[0] else "input_scale"
            raise self.fail(repr(missing), "is missing (input_scale and input_zero_point come together)")
        v = self.spec["input_scale"]
        ok = not isinstance(v, bool) and isinstance(v, (int, float))
        with np.errstate(over="ignore"):
            scale = np.float32(v) if ok else np.float32(np.nan)
        if not (ok and np.isfinite(scale) and scale > 0 and float(scale) == float(v)):
            raise self.fail("'input_scale'", f"must be a float32 number, finite and > 0; got {v!r}")
        return scale, self.int("input_zero_point", hi=255)

    def array(self, name: str, dtype: Any, *, shape: tuple[int, ...] | None = None, ndim: int | None = None,
              finite: bool = False, positive: bool = False, optional: bool = False) -> np.ndarray | None:
        """The array ``name`` with exactly ``dtype`` (a relabelled dtype is refused, not cast)."""
        if name not in self.arrays:
            if optional:
                return None
            raise self.fail(f"array {name!r}", "is missing")
        a = self.arrays[name]
        want = np.dtype(dtype)
        if a.dtype != want:
            raise self.fail(f"array {name!r}", f"must have dtype {want}; got {a.dtype}")
        if shape is not None and a.shape != tuple(shape):
            raise self.fail(f"array {name!r}", f"must have shape {tuple(shape)}; got {a.shape}")
        if ndim is not None and a.ndim != ndim:
            raise self.fail(f"array {name!r}", f"must be {ndim}-D; got shape {a.shape}")
        if finite and not np.all(np.isfinite(a)):
            raise self.fail(f"array {name!r}", "must be finite")
        if positive and not np.all(a > 0):
            raise self.fail(f"array {name!r}", "must be positive")
        return a

    def only(self, names: Sequence[str]) -> None:
        """Refuse arrays the op does not read (a file that carries more than it says is not ours)."""
        extra = sorted(set(self.arrays) - set(names))
        if extra:
            raise self.fail("arrays", f"{extra} are not parameters of this op")
