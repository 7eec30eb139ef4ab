"""The package's one timer: the median wall time of one call.

Every measurement the library makes (the host profile, the sparse chooser's
check, :func:`hwreg_rs.compress`, :meth:`hwreg_rs.runtime.RuntimeModel.profile`,
the demo and the benchmarks) goes through :func:`median_seconds`, so a figure
printed in one place means what the same figure means in another.

Why the median: on a shared machine a call is sometimes preempted; such a
sample is an outlier far above the rest, and the median ignores it where a
mean would not. (The minimum would be steadier still, but it reports a
best case no user sees.)
"""

from __future__ import annotations

import time
from typing import Any, Callable, Collection, Hashable, Mapping

import numpy as np

__all__ = ["median_seconds", "sample_seconds", "side_by_side", "numpy_seconds"]


def median_seconds(fn: Callable[[], Any], *, repeats: int = 7, min_seconds: float = 0.0,
                   budget_s: float | None = None, min_repeats: int = 5) -> float:
    """Median wall time, in seconds, of one call of ``fn()``: the median of :func:`sample_seconds`.

    One warm-up call comes first (and a second that sizes the samples). Each
    of ``repeats`` samples runs ``fn`` enough times in a row to last at least
    ``min_seconds`` (once when 0, the default: each call timed alone) and
    records the mean time of a call in it.

    Parameters
    ----------
    fn : callable
        Called with no arguments.
    repeats : int, default 7
        Samples to take (the most, when ``budget_s`` is given).
    min_seconds : float, default 0.0
        Shortest duration of one sample: very short calls are timed in loops
        so the clock's resolution does not dominate.
    budget_s : float, optional
        A time budget: take only as many samples as fit in it (at least
        ``min_repeats``, at most ``repeats``), and stop once ``min_repeats``
        samples have taken four times the budget.
    min_repeats : int, default 5
        The fewest samples under a ``budget_s``.

    Returns
    -------
    float

    Examples
    --------
    >>> t = median_seconds(lambda: sum(range(100)), repeats=3)
    >>> 0 < t < 1
    True
    """
    return float(np.median(sample_seconds(fn, repeats=repeats, min_seconds=min_seconds, budget_s=budget_s,
                                          min_repeats=min_repeats)))


def sample_seconds(fn: Callable[[], Any], *, repeats: int = 7, min_seconds: float = 0.0,
                   budget_s: float | None = None, min_repeats: int = 5) -> np.ndarray:
    """The timed samples behind :func:`median_seconds` (seconds per call, one per sample), for
    callers that report more than the median (the cost-model benchmark's 10th percentile).

    Examples
    --------
    >>> ts = sample_seconds(lambda: sum(range(100)), repeats=4)
    >>> ts.shape, bool((ts > 0).all())
    ((4,), True)
    """
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-9)
    inner = max(1, int(min_seconds / once)) if min_seconds > 0 else 1
    n = max(1, int(repeats))
    deadline = None
    if budget_s is not None:
        n = int(min(max(budget_s / max(once, 1e-7), min_repeats), n))
        deadline = time.perf_counter() + 4 * budget_s
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        t1 = time.perf_counter()
        samples.append((t1 - t0) / inner)
        if deadline is not None and i + 1 >= min_repeats and t1 > deadline:
            break
    return np.asarray(samples, dtype=np.float64)


def numpy_seconds(fn: Callable[[], Any], *, repeats: int = 7, min_seconds: float = 0.0) -> float:
    """:func:`median_seconds` of a NumPy computation, the better of NumPy's BLAS threads as they
    are and limited to one (with ``threadpoolctl``; as they are without it).

    On a busy machine with few cores threaded BLAS can be many times slower on small
    products; a float baseline timed only one way would flatter whatever it is compared with.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.ones((8, 8), np.float32)
    >>> numpy_seconds(lambda: a @ a, repeats=3) > 0
    True
    """
    from .train import blas_limit

    t = median_seconds(fn, repeats=repeats, min_seconds=min_seconds)
    with blas_limit(1):
        return min(t, median_seconds(fn, repeats=repeats, min_seconds=min_seconds))


def side_by_side(fns: Mapping[Hashable, Callable[[], Any]], *, rounds: int, min_seconds: float = 0.0,
                 pause_s: float = 0.0, repeats: int = 1, numpy: Collection[Hashable] = ()
                 ) -> dict[Hashable, float]:
    """Seconds per call of each contender, timed side by side: the median over ``rounds``
    round-robin rounds, each of which times every contender once.

    A burst of load on a shared machine then hits every contender alike, so the
    ratios between them hold even when the absolute figures drift.

    Parameters
    ----------
    fns : mapping of name to callable
        The contenders, called with no arguments.
    rounds : int
        Round-robin rounds (samples per contender).
    min_seconds : float, default 0.0
        Shortest duration of one sample (see :func:`median_seconds`).
    pause_s : float, default 0.0
        Sleep before each sample, so the previous contender's spinning pool threads
        (ONNX Runtime, OpenBLAS, ours) go idle and no one is timed against another's spin.
    repeats : int, default 1
        Timings per sample; a sample is their median.
    numpy : collection of names, optional
        Contenders that are NumPy computations: their samples are :func:`numpy_seconds`
        (the better of NumPy's BLAS threads as they are and one), the others' :func:`median_seconds`.

    Examples
    --------
    >>> t = side_by_side({"short": lambda: sum(range(10)), "long": lambda: sum(range(10_000))}, rounds=3)
    >>> t["short"] < t["long"]
    True
    """
    def sample(name: Hashable, fn: Callable[[], Any]) -> float:
        timer = numpy_seconds if name in numpy else median_seconds
        return timer(fn, repeats=repeats, min_seconds=min_seconds)

    samples: dict[Hashable, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, int(rounds))):
        for name, fn in fns.items():
            if pause_s > 0:
                time.sleep(pause_s)
            samples[name].append(sample(name, fn))
    return {name: float(np.median(v)) for name, v in samples.items()}
