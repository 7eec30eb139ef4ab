"""Process-wide settings of the kernels: SIMD path and threads."""

from __future__ import annotations

from . import _native
from ._native import active_isa, num_threads, supported_isas
from ._validate import check_int

MAX_THREADS = 1 << 16  # more threads than any machine has cores; beyond it a count is a mistake

__all__ = ["active_isa", "num_threads", "set_num_threads", "supported_isas"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in the kernels from now on (0 restores the default).

    ``n`` is an int in ``[0, 65536]``: ``TypeError`` / ``ValueError`` naming ``n`` otherwise.
    The default is ``HWREG_NUM_THREADS`` when set, else the cores available.

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> hw.set_num_threads(1); hw.num_threads()
    1
    >>> hw.set_num_threads(0)
    """
    _native.set_num_threads(check_int(n, "n", 0, MAX_THREADS))
