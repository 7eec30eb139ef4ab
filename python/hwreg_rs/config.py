"""Process-wide settings of the kernels: SIMD path and threads."""

from __future__ import annotations

from . import _native
from ._native import active_isa, num_threads, supported_isas

__all__ = ["active_isa", "num_threads", "set_num_threads", "supported_isas"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in the kernels from now on (0 restores the default).

    The default is ``HWREG_NUM_THREADS`` when set, else the cores available.

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> hw.set_num_threads(1); hw.num_threads()
    1
    >>> hw.set_num_threads(0)
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int; got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    _native.set_num_threads(n)
