"""Hardware profiles and a roofline cost model.

A :class:`HardwareProfile` says what a target can do: dense int8 and fp32
throughput, memory bandwidth and capacity, energy per operation and per byte
moved, SIMD width, the kernels and sparsity patterns its runtime exploits.
:func:`estimate` turns a list of :class:`LayerWork` (what each layer of a model
computes and moves) into per-layer and total latency, memory and energy on a
profile. :func:`measure_host` builds a profile of this machine by timing the
package's own kernels.

The model is a roofline with a per-layer overhead::

    latency = overhead + max(compute, bytes_moved / bandwidth)
    compute = 2 * effective_macs / throughput                      (a preset)

where ``effective_macs`` counts only kept weights when the profile has a
kernel for the layer's sparsity pattern (scaled by that kernel's measured
efficiency) and all of them otherwise.

A measured profile (:func:`measure_host`) refines both terms with what a
pure roofline misses on small layers, all fitted from timings of synthetic
shapes when the profile is measured:

* ``overhead`` is per kind of layer and precision (``"linear/int8"``,
  ``"conv2d/fp32"``, ``"pool"``, ...): a call through Python into a kernel
  costs microseconds, which dominates tiny layers;
* ``compute`` of a GEMM layer with ``M`` rows, ``K`` inputs and ``N`` outputs
  adds per-element costs to the MACs: quantizing the ``M*K`` activations
  (int8), the output step on ``M*N`` results, im2col and the NCHW transpose
  for convolutions; MACs count the padding of the kernel's register tile
  (``gemm_tile``), and work above ``parallel_min_macs`` runs
  ``parallel_speedup`` times faster;
* pooling and elementwise layers cost a measured time per element.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from . import _native
from ._layerwork import KINDS, PATTERNS, PRECISIONS, LayerWork
from ._timing import median_seconds, side_by_side

__all__ = [
    "HardwareProfile",
    "LayerWork",
    "LayerEstimate",
    "CostEstimate",
    "estimate",
    "fits",
    "peak_activation_bytes",
    "preset",
    "PRESETS",
    "measure_host",
    "host_profile",
    "resolve",
    "model_work",
    "SpeedupCheck",
    "speedup_check",
]

# Per-element cost keys a profile may calibrate (nanoseconds per element).
ELEMENT_COSTS = ("int8_row", "int8_in", "int8_out", "fp32_in", "fp32_out", "im2col", "im2col_int8", "nchw", "pool",
                 "elementwise", "int4_group", "conv_row_native", "conv_col_native", "conv_out_native", "conv_mac_native",
                 "linear_row_native", "linear_col_native", "linear_out_native", "linear_mac_native",
                 "linear_gemv_native",
                 "pool_native", "pool_px_native", "sparse_out", "int4_out")


@dataclass(frozen=True)
class HardwareProfile:
    """What a deployment target can do, for the cost model and the compressor.

    Parameters
    ----------
    name : str
        Short identifier, e.g. ``"cortex-a72"``.
    int8_gops, fp32_gflops : float
        Sustained dense GEMM throughput in giga-operations per second
        (2 operations per multiply-accumulate), all cores.
    mem_bandwidth_gbs : float
        Sustained main-memory bandwidth in GB/s.
    mem_capacity_bytes : int
        Memory available to the model (weights plus activations). For a
        microcontroller this is its SRAM: a hard limit.
    energy_pj_per_mac : dict of str to float
        Energy of one multiply-accumulate, by precision (``"int8"``, ``"fp32"``;
        ``"int4"``, optional, defaults to int8's: the products run on the int8 units).
    energy_pj_per_byte : float
        Energy of moving one byte from main memory.
    simd_width_bits : int
        Vector register width the kernels use.
    cores : int
        Cores the throughput figures assume.
    kernels : tuple of str
        Kernels the runtime has: ``"dense_f32"``, ``"dense_int8"``, ``"dense_int4"``
        (measured into ``int4_speedup``), ``"sparse_f32"``, ``"sparse_int8"``.
    sparsity_patterns : dict of str to float
        Patterns the sparse kernels exploit, each with its efficiency: the
        fraction of dense per-MAC throughput a kept weight achieves (0..1).
        A key ``"pattern/precision"`` (``"block/fp32"``, ``"unstructured/int8"``)
        holds the efficiency of that precision's sparse kernel against the
        dense path of the same precision; a plain ``"pattern"`` key serves the
        precisions without their own (measured profiles give the int8 kernels'
        under the plain keys and the float kernels' under ``"…/fp32"``).
    needs_7bit_activations : bool
        Whether the target's fast int8 path saturates unless activations fit in
        7 bits (AVX2 ``vpmaddubsw`` without VNNI).
    layer_overhead_us : float
        Fixed cost of running one layer (dispatch, threads wake-up).
    source : str
        Where the figures come from.
    overhead_us : dict of str to float
        Fixed cost of one layer by ``"kind/precision"`` (e.g. ``"linear/int8"``)
        or by ``"kind"`` (``"pool"``, ``"elementwise"``, ``"reshape"``); a kind
        not listed costs ``layer_overhead_us``.
    ns_per_element : dict of str to float
        Costs besides MACs, in nanoseconds per element (keys in
        ``ELEMENT_COSTS``): ``"int8_row"`` per GEMM row (its quantization
        parameters), ``"int8_in"`` / ``"fp32_in"`` per GEMM input element
        (quantizing activations), ``"int8_out"`` / ``"fp32_out"`` per
        GEMM output element (the output step), ``"im2col"`` per column-matrix
        element (``"im2col_int8"`` for the int8 runtime's channels-last uint8
        unfold, when present) and ``"nchw"`` per output element of a
        convolution, ``"pool"``
        per pooling input element, ``"elementwise"`` per element and pass,
        ``"int4_group"`` per row, output and scale group of an int4 layer with
        per-group scales (each group's sum is scaled and added in float),
        ``"conv_row_native"`` per output pixel of a convolution run in a native
        plan call (its quantization, unfold and layout work, in place of
        ``"int8_row"``, ``"int8_in"``, ``"im2col_int8"`` and ``"nchw"``),
        ``"conv_col_native"`` per element of such a convolution's column matrix
        (``M x K`` with ``K`` padded to the tile's depth: the unfold writes it and
        the GEMM reads it) and ``"conv_out_native"`` per output of it with ``N``
        padded to the tile's 16-column panels (the output step runs per panel;
        in place of ``"int8_out"``), ``"conv_mac_native"`` per multiply-accumulate
        of it (``M x K x N`` padded to the tile; in place of ``int8_gops``: the
        convolution's kernel reads its packed panels at another rate than a
        Linear layer's GEMV); ``"linear_row_native"``, ``"linear_col_native"``,
        ``"linear_out_native"`` and ``"linear_mac_native"`` the same for a dense
        int8 (or int4) Linear layer in a native plan call (``"linear_gemv_native"``
        per weight for one batch row: the GEMV path), ``"pool_native"`` per input element of a
        pooling layer run in a native plan call (in place of ``"pool"``, NumPy's) and
        ``"pool_px_native"`` per input position of it (:attr:`LayerWork.pixels`: a
        channels-last pool's cost follows its pixels more than its channels),
        ``"sparse_out"`` per output element of a sparse product for one batch
        row (its walk over each weight row's blocks), ``"int4_out"`` per output
        element of an int4 layer beyond int8's output step (its nibble unpacking
        per column panel: at one batch row it made a 64-input int4 layer slower
        than int8 here, while a 1024-input one ran 1.5x faster).
        Empty for a pure roofline.
    gemm_tile : tuple of 3 int
        ``(rows, depth, cols)`` granularity the int8 GEMM pads ``M``, ``K`` and
        ``N`` to (its register tile); ``(1, 1, 1)`` for none.
    parallel_min_macs : int
        Int8 work (MACs) from which the kernels use all ``cores``; 0 when the
        throughput figures already include threading.
    parallel_speedup : float
        Speed-up of the int8 kernels on ``cores`` threads over one, for work of
        at least ``parallel_min_macs`` (``int8_gops`` is the all-cores figure).
        Below 1 when threads slow the kernels down, as on a machine whose
        cores are busy with other work.
    int4_speedup : tuple of (int, float) pairs
        The int4 kernel (4-bit weights x uint8 activations) against dense int8:
        ``((rows, factor), ...)``, the factor by which its multiply-accumulate
        time at ``rows`` batch rows is below int8's (above 1: faster),
        interpolated in log rows between the points and held beyond them.
        Empty (the presets): no int4 kernel figure, so an ``"int4"`` layer is
        assumed to compute at int8 speed after unpacking its nibbles (one int8
        operation per weight and call): int4 is then a size lever (its weights
        are stored and moved at 4 bits) that costs a little compute.
    native_overhead_us : float, optional
        Fixed cost of one layer inside a native plan call of the runtime (a
        :class:`LayerWork` with ``native=True``: no Python call of its own);
        None (the presets) costs such a layer like any other.
    sparse_overhead_us : float, optional
        Fixed cost of one call of a sparse matrix product (a layer stored
        sparse, ``sparse_kernel=True``); None: the dense layer's.
    sparsity_patterns_one_row : dict of str to float
        The patterns' efficiencies for a single batch row (a sparse GEMV walks
        every stored block for one row, where a batch shares the walk); a
        pattern not listed uses ``sparsity_patterns`` at every batch size.
    cache_bytes : int
        Size of the per-core cache (L2) whose bandwidth ``cache_bandwidth_gbs``
        is: a layer that moves no more than this (weights and activations, as
        when a model is run again and again) moves at that bandwidth, not at
        ``mem_bandwidth_gbs``. 0 (the presets): every layer at main memory's.
    cache_bandwidth_gbs : float, optional
        Sustained copy bandwidth within that cache, in GB/s.
    l3_cache_bytes : int
        Size of the last-level cache (L3) whose bandwidth ``l3_bandwidth_gbs``
        is: a layer that moves more than ``cache_bytes`` but no more than this
        moves at that bandwidth. 0 (the presets): no such level.
    l3_bandwidth_gbs : float, optional
        Sustained copy bandwidth within the L3 cache, in GB/s.

    Examples
    --------
    >>> p = preset("x86-avx2")
    >>> p.name, p.simd_width_bits
    ('x86-avx2', 256)
    >>> print(p.describe().splitlines()[0])
    | field | value |
    """

    name: str
    int8_gops: float
    fp32_gflops: float
    mem_bandwidth_gbs: float
    mem_capacity_bytes: int
    energy_pj_per_mac: Mapping[str, float] = field(default_factory=lambda: {"int8": 0.2, "fp32": 4.6})
    energy_pj_per_byte: float = 160.0
    simd_width_bits: int = 128
    cores: int = 1
    kernels: tuple[str, ...] = ("dense_f32", "dense_int8")
    sparsity_patterns: Mapping[str, float] = field(default_factory=dict)
    needs_7bit_activations: bool = False
    layer_overhead_us: float = 1.0
    source: str = ""
    overhead_us: Mapping[str, float] = field(default_factory=dict)
    ns_per_element: Mapping[str, float] = field(default_factory=dict)
    gemm_tile: tuple[int, int, int] = (1, 1, 1)
    parallel_min_macs: int = 0
    parallel_speedup: float = 1.0
    int4_speedup: tuple[tuple[int, float], ...] = ()
    native_overhead_us: float | None = None
    sparse_overhead_us: float | None = None
    sparsity_patterns_one_row: Mapping[str, float] = field(default_factory=dict)
    cache_bytes: int = 0
    cache_bandwidth_gbs: float | None = None
    l3_cache_bytes: int = 0
    l3_bandwidth_gbs: float | None = None

    def __post_init__(self) -> None:
        for f in ("int8_gops", "fp32_gflops", "mem_bandwidth_gbs", "energy_pj_per_byte"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"{f} must be a positive number; got {v!r}")
        if int(self.mem_capacity_bytes) <= 0:
            raise ValueError(f"mem_capacity_bytes must be positive; got {self.mem_capacity_bytes!r}")
        if self.layer_overhead_us < 0:
            raise ValueError(f"layer_overhead_us must be >= 0; got {self.layer_overhead_us!r}")
        for p, eff in {**self.sparsity_patterns, **self.sparsity_patterns_one_row}.items():
            pat, slash, prec = str(p).partition("/")
            if pat not in PATTERNS[1:] or (slash and prec not in ("fp32", "int8")):
                raise ValueError(f"unknown sparsity pattern {p!r}; expected one of {PATTERNS[1:]}, "
                                 "optionally with '/fp32' or '/int8'")
            if not 0 < eff <= 1:
                raise ValueError(f"efficiency of pattern {p!r} must be in (0, 1]; got {eff!r}")
        missing = {"fp32", "int8"} - set(self.energy_pj_per_mac)  # int4 MACs cost int8's unless given
        if missing:
            raise ValueError(f"energy_pj_per_mac lacks {sorted(missing)}")
        for key, v in self.overhead_us.items():
            kind, _, prec = str(key).partition("/")
            if kind not in KINDS or (prec and prec not in (*PRECISIONS, "native", "native1")):
                raise ValueError(f"overhead_us key {key!r} must be a kind {KINDS} optionally followed by "
                                 f"'/precision' {PRECISIONS}, '/native' or '/native1' (one batch row)")
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"overhead_us[{key!r}] must be a number >= 0; got {v!r}")
        for key, v in self.ns_per_element.items():
            if key not in ELEMENT_COSTS:
                raise ValueError(f"unknown ns_per_element key {key!r}; expected one of {ELEMENT_COSTS}")
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"ns_per_element[{key!r}] must be a number >= 0; got {v!r}")
        tile = tuple(int(t) for t in self.gemm_tile)
        if len(tile) != 3 or min(tile) < 1:
            raise ValueError(f"gemm_tile must be 3 positive ints (rows, depth, cols); got {self.gemm_tile!r}")
        for f in ("native_overhead_us", "sparse_overhead_us"):
            v = getattr(self, f)
            if v is not None and not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{f} must be None or a number >= 0; got {v!r}")
        if int(self.cache_bytes) < 0 or (self.cache_bandwidth_gbs is not None and not (
                isinstance(self.cache_bandwidth_gbs, (int, float)) and self.cache_bandwidth_gbs > 0)):
            raise ValueError(f"cache_bytes must be >= 0 and cache_bandwidth_gbs None or > 0; got "
                             f"{self.cache_bytes!r}, {self.cache_bandwidth_gbs!r}")
        object.__setattr__(self, "cache_bytes", int(self.cache_bytes))
        if int(self.l3_cache_bytes) < 0 or (self.l3_bandwidth_gbs is not None and not (
                isinstance(self.l3_bandwidth_gbs, (int, float)) and self.l3_bandwidth_gbs > 0)):
            raise ValueError(f"l3_cache_bytes must be >= 0 and l3_bandwidth_gbs None or > 0; got "
                             f"{self.l3_cache_bytes!r}, {self.l3_bandwidth_gbs!r}")
        object.__setattr__(self, "l3_cache_bytes", int(self.l3_cache_bytes))
        if int(self.parallel_min_macs) < 0:
            raise ValueError(f"parallel_min_macs must be >= 0; got {self.parallel_min_macs!r}")
        if not (isinstance(self.parallel_speedup, (int, float)) and self.parallel_speedup > 0):
            raise ValueError(f"parallel_speedup must be a number > 0; got {self.parallel_speedup!r}")
        # Freeze the mappings so a profile is a value.
        object.__setattr__(self, "energy_pj_per_mac", dict(self.energy_pj_per_mac))
        object.__setattr__(self, "sparsity_patterns", dict(self.sparsity_patterns))
        object.__setattr__(self, "sparsity_patterns_one_row", dict(self.sparsity_patterns_one_row))
        object.__setattr__(self, "kernels", tuple(self.kernels))
        object.__setattr__(self, "overhead_us", {str(k): float(v) for k, v in self.overhead_us.items()})
        object.__setattr__(self, "ns_per_element", {str(k): float(v) for k, v in self.ns_per_element.items()})
        object.__setattr__(self, "gemm_tile", tile)
        object.__setattr__(self, "parallel_min_macs", int(self.parallel_min_macs))
        try:
            pts = tuple(sorted((int(r), float(f)) for r, f in self.int4_speedup))
        except (TypeError, ValueError):
            raise ValueError(f"int4_speedup must be (rows, factor) pairs; got {self.int4_speedup!r}") from None
        if any(r < 1 or not (np.isfinite(f) and f > 0) for r, f in pts) or len({r for r, _ in pts}) != len(pts):
            raise ValueError(f"int4_speedup needs distinct rows >= 1 and finite factors > 0; got {self.int4_speedup!r}")
        object.__setattr__(self, "int4_speedup", pts)

    def throughput_ops(self, precision: str) -> float:
        """Dense throughput in operations per second for ``"int8"`` or ``"fp32"`` (``"int4"``: int8's,
        which :meth:`int4_factor` then scales)."""
        if precision in ("int8", "int4"):
            return self.int8_gops * 1e9
        if precision == "fp32":
            return self.fp32_gflops * 1e9
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")

    def int4_factor(self, rows: int) -> float | None:
        """How many times faster the int4 kernel's multiply-accumulates are than int8's at ``rows``
        batch rows (``int4_speedup`` interpolated in log rows); None without an int4 figure.

        Examples
        --------
        >>> p = HardwareProfile("t", 1.0, 1.0, 1.0, 1, int4_speedup=((1, 4.0), (16, 1.0)))
        >>> p.int4_factor(1), p.int4_factor(4), p.int4_factor(64), preset("cortex-m7").int4_factor(1)
        (4.0, 2.0, 1.0, None)
        """
        pts = self.int4_speedup
        if not pts:
            return None
        r = np.log(max(int(rows), 1))
        return float(np.exp(np.interp(r, [np.log(p[0]) for p in pts], [np.log(p[1]) for p in pts])))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HardwareProfile":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown profile fields {sorted(unknown)}")
        d = dict(d)
        for key in ("kernels", "gemm_tile"):
            if key in d:
                d[key] = tuple(d[key])
        if "int4_speedup" in d:
            d["int4_speedup"] = tuple(tuple(p) for p in d["int4_speedup"])
        return cls(**d)

    def scaled(self, factor: float) -> "HardwareProfile":
        """The same machine ``factor`` times slower: every time the cost model adds up
        (overheads, per-element costs, compute, memory) multiplied by ``factor``, so
        ``estimate(work, p.scaled(f)).latency_s == f * estimate(work, p).latency_s``.

        Examples
        --------
        >>> w = [LayerWork("fc", "linear", 4096, 4096, 256, 256, "int8")]
        >>> p = preset("x86-avx2")
        >>> round(estimate(w, p.scaled(2.0)).latency_s / estimate(w, p).latency_s, 6)
        2.0
        """
        if not (isinstance(factor, (int, float)) and np.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a finite number > 0; got {factor!r}")
        f = float(factor)
        return dataclasses.replace(
            self, int8_gops=self.int8_gops / f, fp32_gflops=self.fp32_gflops / f,
            mem_bandwidth_gbs=self.mem_bandwidth_gbs / f, layer_overhead_us=self.layer_overhead_us * f,
            native_overhead_us=None if self.native_overhead_us is None else self.native_overhead_us * f,
            sparse_overhead_us=None if self.sparse_overhead_us is None else self.sparse_overhead_us * f,
            cache_bandwidth_gbs=None if self.cache_bandwidth_gbs is None else self.cache_bandwidth_gbs / f,
            l3_bandwidth_gbs=None if self.l3_bandwidth_gbs is None else self.l3_bandwidth_gbs / f,
            overhead_us={k: v * f for k, v in self.overhead_us.items()},
            ns_per_element={k: v * f for k, v in self.ns_per_element.items()})

    def calibrated(self, work: Iterable["LayerWork"], measured_s: float) -> "HardwareProfile":
        """The profile scaled (:meth:`scaled`) so that it estimates ``work`` at ``measured_s``:
        it folds in what the model leaves out for this model on this machine (the Python
        around the kernels, the machine's load). Estimates of variants of the same model
        (some layers pruned) are then judged against what was measured.

        Examples
        --------
        >>> w = [LayerWork("fc", "linear", 4096, 4096, 256, 256, "int8")]
        >>> p = preset("x86-avx2").calibrated(w, 1e-4)
        >>> round(estimate(w, p).latency_s, 9)
        0.0001
        """
        work = list(work)
        est = estimate(work, self).latency_s
        if not (np.isfinite(measured_s) and measured_s > 0):
            raise ValueError(f"measured_s must be a finite number of seconds > 0; got {measured_s!r}")
        return self.scaled(measured_s / max(est, 1e-12))

    def overhead_s(self, kind: str, precision: str = "fp32", *, native: bool = False,
                   rows: int | None = None) -> float:
        """Fixed seconds of one call of a layer of ``kind`` at ``precision`` (``native``: one step
        of a native plan call, when the profile knows that cost: ``overhead_us["<kind>/native"]``,
        else ``native_overhead_us``; with ``rows == 1`` the plan's one-row path of int8 and float
        layers, ``overhead_us["<kind>/native1"]``, when measured: an int4 layer's one row takes the
        int4 kernel's driver, not that path)."""
        if native and rows == 1 and precision != "int4" and f"{kind}/native1" in self.overhead_us:
            return self.overhead_us[f"{kind}/native1"] * 1e-6
        if native and f"{kind}/native" in self.overhead_us:
            return self.overhead_us[f"{kind}/native"] * 1e-6
        if native and self.native_overhead_us is not None:
            return self.native_overhead_us * 1e-6
        default = self.overhead_us.get(kind, self.layer_overhead_us)
        if precision == "int4":  # the int4 layer is called like the int8 one unless measured apart
            default = self.overhead_us.get(f"{kind}/int8", default)
        us = self.overhead_us.get(f"{kind}/{precision}", default)
        return us * 1e-6

    def describe(self) -> str:
        """The profile as a two-column Markdown table (one row per field).

        Examples
        --------
        >>> print(preset("cortex-m7").describe())  # doctest: +ELLIPSIS
        | field | value |
        |---|---|
        | name | cortex-m7 |
        | int8_gops | 0.9 GOP/s |
        ...
        """
        units = {"int8_gops": "GOP/s", "fp32_gflops": "GFLOP/s", "mem_bandwidth_gbs": "GB/s",
                 "energy_pj_per_byte": "pJ/B", "simd_width_bits": "bits", "layer_overhead_us": "µs"}
        rows = ["| field | value |", "|---|---|"]
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "mem_capacity_bytes":
                text = f"{v} B ({v / _GIB:.2f} GiB)" if v >= _GIB else f"{v} B ({v / 1024:.0f} KiB)"
            elif isinstance(v, dict):
                text = ", ".join(f"{k}: {_num(x)}" for k, x in v.items()) or "–"
                if f.name == "overhead_us":
                    text += " (µs)" if v else ""
                elif f.name == "ns_per_element":
                    text += " (ns/element)" if v else ""
                elif f.name == "energy_pj_per_mac":
                    text += " (pJ)"
            elif isinstance(v, tuple):
                text = ", ".join(str(x) for x in v) or "–"
            elif isinstance(v, float):
                text = _num(v) + (f" {units[f.name]}" if f.name in units else "")
            else:
                text = str(v) + (f" {units[f.name]}" if f.name in units else "")
            rows.append(f"| {f.name} | {text.replace('|', '/')} |")
        return "\n".join(rows)

    def save(self, path: str | os.PathLike) -> None:
        """Write the profile as JSON.

        Examples
        --------
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "a72.json")
        >>> preset("cortex-a72").save(p)
        >>> HardwareProfile.load(p).name
        'cortex-a72'
        """
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HardwareProfile":
        """Read a profile written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)!r} is not a profile JSON file: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"{os.fspath(path)!r} does not hold a JSON object")
        return cls.from_dict(d)


# What writing one output element costs in multiply-accumulates in the GEMM's thread
# decision (the kernel crate's `gemm::OUTPUT_MACS`): a short-K product is mostly output.
_OUTPUT_MACS = 32


def _num(v: float) -> str:
    return f"{v:.4g}"


# Operation energies: M. Horowitz, "Computing's energy problem (and what we can
# do about it)", ISSCC 2014, 45 nm: 8-bit multiply 0.2 pJ + add 0.03 pJ; fp32
# multiply 3.7 pJ + add 0.9 pJ; DRAM 1.3-2.6 nJ per 64-bit access (about
# 160-320 pJ/byte); 8 KB SRAM 10 pJ per 64-bit access (about 1.25 pJ/byte).
# Newer nodes are several times lower; the ratios are what the compressor uses.
_E45 = {"int8": 0.23, "fp32": 4.6}
_E_DRAM = 160.0
_GIB = 1 << 30

PRESETS: dict[str, HardwareProfile] = {
    p.name: p
    for p in [
        HardwareProfile(
            name="x86-avx2",
            int8_gops=320.0, fp32_gflops=75.0, mem_bandwidth_gbs=20.0, mem_capacity_bytes=16 * _GIB,
            energy_pj_per_mac=_E45, energy_pj_per_byte=_E_DRAM, simd_width_bits=256, cores=2,
            kernels=("dense_f32", "dense_int8", "sparse_f32", "sparse_int8"),
            sparsity_patterns={"unstructured": 0.35, "block": 0.7, "n:m": 0.6},
            needs_7bit_activations=True, layer_overhead_us=4.0,
            source=("2-core AMD Zen 3 with AVX2+FMA, no VNNI: fp32 and int8 GEMM throughput measured with "
                    "NumPy and ONNX Runtime (docs/design.md §5); vpmaddubsw saturation per Intel SDM "
                    "vol. 2 (PMADDUBSW saturates its 16-bit pair sums); energies from Horowitz, ISSCC 2014."),
        ),
        HardwareProfile(
            name="x86-avx512-vnni",
            int8_gops=600.0, fp32_gflops=150.0, mem_bandwidth_gbs=25.0, mem_capacity_bytes=16 * _GIB,
            energy_pj_per_mac=_E45, energy_pj_per_byte=_E_DRAM, simd_width_bits=512, cores=2,
            kernels=("dense_f32", "dense_int8", "sparse_f32", "sparse_int8"),
            sparsity_patterns={"unstructured": 0.03, "block": 0.7, "n:m": 0.05,
                               "unstructured/fp32": 0.25, "block/fp32": 0.15, "n:m/fp32": 0.2},
            needs_7bit_activations=False, layer_overhead_us=4.0,
            source=("2 cores of an Intel Ice Lake-SP at 2.8 GHz: VPDPBUSD 64 u8xs8 MACs per instruction, one "
                    "per cycle (Intel 64 and IA-32 Optimization Reference Manual; uops.info), about 50% "
                    "sustained; fp32 2x512-bit FMA; VNNI accumulates in 32 bits without saturation; "
                    "energies from Horowitz, ISSCC 2014. Sparsity efficiencies: int8 CSR and N:M against "
                    "the VNNI dense layer, and the float kernels against NumPy (\"/fp32\"), as measure_host "
                    "measured them on a 2-core Zen 5 with AVX-512 VNNI (hwreg_rs 0.1, Dec 2026), rounded; "
                    "int8 blocks (output panels) 0.4-0.5 there at 48 rows, 1.0 at one row."),
        ),
        HardwareProfile(
            name="cortex-a72",
            int8_gops=40.0, fp32_gflops=20.0, mem_bandwidth_gbs=4.0, mem_capacity_bytes=4 * _GIB,
            energy_pj_per_mac=_E45, energy_pj_per_byte=_E_DRAM, simd_width_bits=128, cores=4,
            kernels=("dense_f32", "dense_int8", "sparse_f32"),
            sparsity_patterns={"unstructured": 0.3, "block": 0.6},
            needs_7bit_activations=False, layer_overhead_us=10.0,
            source=("Raspberry Pi 4 (Broadcom BCM2711, 4x Cortex-A72 at 1.5 GHz, LPDDR4-3200): peak fp32 "
                    "8 FLOP/cycle/core = 48 GFLOP/s (Arm Cortex-A72 Software Optimization Guide), about 40% "
                    "sustained in GEMM; ARMv8.0 has no SDOT, so int8 runs on SMLAL at about 2x fp32; "
                    "sustained memory bandwidth about 4 GB/s (STREAM on a Pi 4); energies Horowitz 2014."),
        ),
        HardwareProfile(
            name="cortex-a55",
            int8_gops=60.0, fp32_gflops=12.0, mem_bandwidth_gbs=5.0, mem_capacity_bytes=2 * _GIB,
            energy_pj_per_mac=_E45, energy_pj_per_byte=_E_DRAM, simd_width_bits=128, cores=4,
            kernels=("dense_f32", "dense_int8", "sparse_int8"),
            sparsity_patterns={"n:m": 0.5, "block": 0.5},
            needs_7bit_activations=False, layer_overhead_us=15.0,
            source=("4x Cortex-A55 at 1.8 GHz (e.g. Rockchip RK3566): in-order, one 128-bit NEON pipe; "
                    "ARMv8.2 SDOT gives 16 int8 MACs per instruction (Arm Cortex-A55 Software Optimization "
                    "Guide), about 25% sustained; LPDDR4 about 5 GB/s; energies Horowitz 2014."),
        ),
        HardwareProfile(
            name="cortex-m7",
            int8_gops=0.9, fp32_gflops=0.5, mem_bandwidth_gbs=1.0, mem_capacity_bytes=512 * 1024,
            energy_pj_per_mac={"int8": 60.0, "fp32": 250.0}, energy_pj_per_byte=30.0,
            simd_width_bits=32, cores=1,
            kernels=("dense_f32", "dense_int8"), sparsity_patterns={},
            needs_7bit_activations=False, layer_overhead_us=20.0,
            source=("STM32H743 (Cortex-M7 at 480 MHz, 512 KB contiguous AXI SRAM as the hard memory limit): "
                    "SMLAD does 2 16-bit MACs per cycle, CMSIS-NN int8 kernels reach about 1 MAC/cycle "
                    "(Lai et al., 'CMSIS-NN', arXiv:1801.06601); single-precision FPU 1 FMA/cycle; about "
                    "280 mW at full speed (ST datasheet DS12110) gives tens of pJ per operation."),
        ),
    ]
}


def resolve(profile: Any = None) -> HardwareProfile:
    """A :class:`HardwareProfile` from what the API accepts for ``profile=``: a profile, a
    preset name, ``"host"`` or None (both: :func:`host_profile`).

    Examples
    --------
    >>> resolve("cortex-m7").name
    'cortex-m7'
    """
    if isinstance(profile, HardwareProfile):
        return profile
    if profile is None or profile == "host":
        return host_profile()
    if isinstance(profile, str):
        return preset(profile)
    raise TypeError(f"profile must be a HardwareProfile, a preset name or 'host'; got {type(profile).__name__}")


_HOST: dict[int, HardwareProfile] = {}


def host_profile() -> HardwareProfile:
    """This machine's profile at the library's current thread count, measured once per process
    (and thread count) by :func:`measure_host` (a few seconds) and shared by everything that
    asks for ``"host"``, so one process reasons with one set of figures.

    Examples
    --------
    >>> host_profile() is host_profile()
    True
    """
    from .config import num_threads

    threads = int(num_threads())
    if threads not in _HOST:
        _HOST[threads] = measure_host()
    return _HOST[threads]


def preset(name: str) -> HardwareProfile:
    """A built-in profile by name (see ``PRESETS``).

    Examples
    --------
    >>> preset("cortex-m7").mem_capacity_bytes
    524288
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; presets are {sorted(PRESETS)}") from None


@dataclass(frozen=True)
class LayerEstimate:
    name: str
    latency_s: float
    compute_s: float
    memory_s: float
    energy_j: float
    weight_bytes: int
    activation_bytes: int
    bound: str  # "compute", "memory" or "overhead"


@dataclass(frozen=True)
class CostEstimate:
    """Per-layer and total cost of a model on a profile.

    ``activation_peak`` is the largest sum of activation bytes live at once in the planned
    order (:func:`peak_activation_bytes`), when :func:`estimate` was given it; without it
    :attr:`peak_activation_bytes` falls back to the largest one layer's input plus output.
    """

    profile: str
    layers: tuple[LayerEstimate, ...]
    activation_peak: int | None = None

    @property
    def latency_s(self) -> float:
        return sum(l.latency_s for l in self.layers)

    @property
    def energy_j(self) -> float:
        return sum(l.energy_j for l in self.layers)

    @property
    def weight_bytes(self) -> int:
        return sum(l.weight_bytes for l in self.layers)

    @property
    def peak_activation_bytes(self) -> int:
        """The most activation bytes live at once: the planned order's peak when known, else
        the largest one layer's input plus output."""
        if self.activation_peak is not None:
            return self.activation_peak
        return max((l.activation_bytes for l in self.layers), default=0)

    @property
    def memory_bytes(self) -> int:
        """Weights plus the peak live activations: what must fit the profile's
        ``mem_capacity_bytes`` (a microcontroller's SRAM)."""
        return self.weight_bytes + self.peak_activation_bytes

    def table(self) -> list[dict[str, Any]]:
        """Rows for printing: one per layer plus a total."""
        rows = [dataclasses.asdict(l) for l in self.layers]
        rows.append({"name": "total", "latency_s": self.latency_s, "energy_j": self.energy_j,
                     "weight_bytes": self.weight_bytes, "activation_bytes": self.peak_activation_bytes})
        return rows


def _effective_macs(work: LayerWork, profile: HardwareProfile) -> float:
    if work.pattern == "dense" or work.density >= 1.0:
        return float(work.macs)
    kernel = "sparse_int8" if work.precision == "int8" else "sparse_f32"
    eff = _pattern_efficiency(profile, work.pattern, work.precision)
    dims = _gemm_dims(work)
    if dims is not None and dims[0] == 1 and eff is not None:
        eff = _pattern_efficiency(profile, work.pattern, work.precision, one_row=True) or eff
    if eff is None or kernel not in profile.kernels:
        return float(work.macs)  # no kernel for it: the zeros are multiplied like any weight
    sparse_macs = work.macs * work.density / eff
    if work.sparse_kernel:
        return sparse_macs
    # Otherwise a sparse kernel is used only when it wins, as the runtime's chooser does.
    return min(float(work.macs), sparse_macs)


def _pattern_efficiency(profile: HardwareProfile, pattern: str, precision: str, *,
                       one_row: bool = False) -> float | None:
    """The efficiency of ``profile``'s sparse kernel for ``pattern`` in ``precision`` (see
    :attr:`HardwareProfile.sparsity_patterns`): the ``"pattern/precision"`` entry, else the plain
    ``"pattern"`` one; ``one_row``: from ``sparsity_patterns_one_row`` (None when it has no figure
    for this precision, or only the plain one where ``sparsity_patterns`` has this precision's)."""
    prec = "int8" if precision == "int4" else precision
    key = f"{pattern}/{prec}"
    if not one_row:
        return profile.sparsity_patterns.get(key, profile.sparsity_patterns.get(pattern))
    # One row: this precision's own figure first (one row, then any batch), then the plain one.
    table = profile.sparsity_patterns_one_row
    if key in table:
        return table[key]
    if key in profile.sparsity_patterns:
        return None
    return table.get(pattern)


def _gemm_dims(w: LayerWork) -> tuple[int, int, int] | None:
    """(M, K, N) of a linear / conv2d layer, given or derived from its bytes."""
    if w.gemm is not None:
        return w.gemm
    if w.macs <= 0 or w.kind not in ("linear", "conv2d"):
        return None
    in_el = w.act_in_bytes / 4 / (2 if w.kind == "conv2d" else 1)
    out_el = w.act_out_bytes / 4
    m = max(1, round(in_el * out_el / w.macs))
    return m, max(1, round(in_el / m)), max(1, round(out_el / m))


def _pad(v: int, t: int) -> int:
    return -(-v // t) * t


def _int4_mac_s(t_mac: float, profile: HardwareProfile, dims: tuple[int, int, int] | None, ops: float) -> float:
    """An int4 layer's multiply-accumulate seconds from int8's: the profile's int4 factor, or without
    one int8 speed plus unpacking every weight once per call (one int8 operation each)."""
    factor = profile.int4_factor(dims[0] if dims else 1)
    if factor is not None:
        return t_mac / factor
    return t_mac + (dims[1] * dims[2] / ops if dims else 0.0)


def _compute_s(w: LayerWork, profile: HardwareProfile, macs: float) -> float:
    """Seconds of work besides the fixed overhead (the roofline's compute term,
    refined by the profile's per-element costs when it has them)."""
    ns = profile.ns_per_element
    int4 = w.precision == "int4"
    prec = "int8" if int4 else w.precision  # int4 shares int8's row quantizer, output step and tile
    if w.kind in ("linear", "conv2d") and w.macs > 0:
        dims = _gemm_dims(w)
        ops = profile.throughput_ops(prec)
        if not ns or dims is None:
            t = 2.0 * macs / ops
            return _int4_mac_s(t, profile, dims, ops) if int4 else t
        m, k, n = dims
        if w.pattern == "dense" or (macs >= w.macs and not w.sparse_kernel):
            tr, tk, tn = profile.gemm_tile if prec == "int8" else (1, 1, 1)
            macs_eff = float(_pad(m, tr) * _pad(k, tk) * _pad(n, tn))
        else:
            macs_eff = macs
        t_in = (m * k * ns.get(f"{prec}_in", 0.0) + m * ns.get(f"{prec}_row", 0.0)) * 1e-9
        if macs_eff < w.macs or w.sparse_kernel:  # the sparse kernel: a walk per weight row, batch rows apart
            t_in += m * n * ns.get("sparse_out", 0.0) * 1e-9 if m == 1 else 0.0
        if w.kind == "conv2d" and prec == "int8" and "im2col_int8" in ns:
            t_in = 0.0  # the runtime quantizes the image, not the columns: "im2col_int8" covers both
        t_out = m * n * ns.get(f"{prec}_out", 0.0) * 1e-9
        # A dense int8 product inside a native plan call, with its own calibrated costs (``pre``): the
        # plan quantizes (a convolution: and unfolds) the input in one pass, a cost per row (output
        # pixel) and per element of the matrix A it reads (K padded to the tile's depth, as the
        # weights are packed); the output step runs on whole 16-column panels of N.
        pre = {"conv2d": "conv", "linear": "linear"}[w.kind]
        dense_pack = w.pattern == "dense" or (macs >= w.macs and not w.sparse_kernel)
        native_gemm = w.native and f"{pre}_row_native" in ns and prec == "int8" and dense_pack
        if native_gemm:
            tr, tk, tn = profile.gemm_tile
            t_in = (m * ns[f"{pre}_row_native"] + _pad(m, tr) * _pad(k, tk) * ns.get(f"{pre}_col_native", 0.0)) * 1e-9
            if f"{pre}_out_native" in ns:
                t_out = _pad(m, tr) * _pad(n, tn) * ns[f"{pre}_out_native"] * 1e-9
        s = profile.parallel_speedup
        if prec == "int8" and profile.parallel_min_macs and s != 1:
            # int8_gops is the all-cores figure; work below the threshold runs on one thread.
            par = m * n * (k + _OUTPUT_MACS) >= profile.parallel_min_macs
            t_mac = 2.0 * macs_eff / ops * (1.0 if par else s)
            t_out = t_out / s if par else t_out
            t_in = t_in / s if m * k >= profile.parallel_min_macs else t_in
        else:
            t_mac = 2.0 * macs_eff / ops
        if native_gemm and f"{pre}_mac_native" in ns:  # measured on one thread, below the parallel threshold
            par = bool(profile.parallel_min_macs) and m * n * (k + _OUTPUT_MACS) >= profile.parallel_min_macs
            per = ns.get(f"{pre}_gemv_native", ns[f"{pre}_mac_native"]) if m == 1 else ns[f"{pre}_mac_native"]
            t_mac = macs_eff * per * 1e-9 / (s if par else 1.0)
        if int4:
            t_mac = _int4_mac_s(t_mac, profile, dims, ops)
            t_out += m * n * ns.get("int4_out", 0.0) * 1e-9
            if w.int4_group is not None:  # a float scale-and-add per row, output and group
                t_out += m * n * -(-k // int(w.int4_group)) * ns.get("int4_group", 0.0) * 1e-9
        t = t_mac + t_in + t_out
        if native_gemm:
            return t
        if w.kind == "conv2d":
            unfold = ns.get("im2col_int8", ns.get("im2col", 0.0)) if prec == "int8" else ns.get("im2col", 0.0)
            t += (m * k * unfold + m * n * ns.get("nchw", 0.0)) * 1e-9
        return t
    if w.kind == "pool" and w.native and "pool_native" in ns:
        return (w.act_in_bytes / 4 * ns["pool_native"] + (w.pixels or 0) * ns.get("pool_px_native", 0.0)) * 1e-9
    if w.kind == "pool" and "pool" in ns:
        return w.act_in_bytes / 4 * ns["pool"] * 1e-9
    if w.kind == "elementwise" and "elementwise" in ns:
        return w.passes * max(w.act_in_bytes, w.act_out_bytes) / 4 * ns["elementwise"] * 1e-9
    if w.macs:
        return 2.0 * macs / profile.throughput_ops(prec)
    return 0.0


def _bandwidth_gbs(profile: HardwareProfile, moved: int) -> float:
    """The bandwidth a layer moving ``moved`` bytes gets: a layer that fits a cache level stays there
    between calls (a model run again and again), L2 first, then L3, else main memory's."""
    if profile.cache_bandwidth_gbs is not None and moved <= profile.cache_bytes:
        return float(profile.cache_bandwidth_gbs)
    if profile.l3_bandwidth_gbs is not None and moved <= profile.l3_cache_bytes:
        return float(profile.l3_bandwidth_gbs)
    return float(profile.mem_bandwidth_gbs)


def estimate(layers: Iterable[LayerWork], profile: HardwareProfile, *,
             activation_peak: int | None = None) -> CostEstimate:
    """Latency, memory and energy of running ``layers`` in order on ``profile``.

    Each layer costs ``calls * overhead + max(compute, bytes_moved /
    bandwidth)``; see the module docstring for ``compute``. A ``"reshape"``
    layer moves no data. ``activation_peak`` (bytes, from
    :func:`peak_activation_bytes` over the model's planned order) makes the
    memory figure that of the whole graph, skip connections held included.

    Examples
    --------
    >>> w = LayerWork("fc", "linear", macs=64 * 256, weight_bytes=64 * 256, act_in_bytes=64,
    ...               act_out_bytes=256 * 4, precision="int8")
    >>> est = estimate([w], preset("cortex-m7"))
    >>> est.memory_bytes <= preset("cortex-m7").mem_capacity_bytes
    True
    """
    out = []
    for w in layers:
        macs = _effective_macs(w, profile)
        compute = _compute_s(w, profile, macs)
        moved = 0 if w.kind == "reshape" else w.weight_bytes + w.act_in_bytes + w.act_out_bytes
        bandwidth = _bandwidth_gbs(profile, moved)
        memory = moved / (bandwidth * 1e9)
        dims = _gemm_dims(w) if w.native else None
        overhead = w.calls * profile.overhead_s(w.kind, w.precision, native=w.native,
                                                rows=dims[0] if dims else None)
        if w.sparse_kernel and w.pattern != "dense" and profile.sparse_overhead_us is not None:
            overhead = w.calls * profile.sparse_overhead_us * 1e-6
        bound = "compute" if compute >= memory else "memory"
        if overhead > max(compute, memory):
            bound = "overhead"
        pj = profile.energy_pj_per_mac.get(w.precision, profile.energy_pj_per_mac["int8"])
        energy = (macs * pj + moved * profile.energy_pj_per_byte) * 1e-12
        act = 0 if w.kind == "reshape" else int(w.act_in_bytes + w.act_out_bytes)
        out.append(LayerEstimate(w.name, overhead + max(compute, memory), compute, memory, energy,
                                 int(w.weight_bytes), act, bound))
    if activation_peak is not None and int(activation_peak) < 0:
        raise ValueError(f"activation_peak must be >= 0 bytes; got {activation_peak!r}")
    return CostEstimate(profile.name, tuple(out), None if activation_peak is None else int(activation_peak))


def peak_activation_bytes(steps: Iterable[tuple[Iterable[str], Iterable[str]]], value_bytes: Mapping[str, int], *,
                          inputs: Iterable[str] = (), outputs: Iterable[str] = ()) -> int:
    """The largest sum of bytes of values live at once when ``steps`` run in order.

    A value is live from the step that writes it (from the start for one of
    ``inputs``) through the last step that reads it (to the end for one of
    ``outputs``): while a step runs, its inputs, its outputs and every value a
    later step still needs are held. Values missing from ``value_bytes``
    (weights, constants) count nothing.

    Parameters
    ----------
    steps : iterable of (reads, writes)
        Value names each step reads and writes, in execution order.
    value_bytes : mapping of str to int
        Bytes of each activation value.
    inputs, outputs : iterable of str
        The graph's input and output values.

    Examples
    --------
    >>> # a residual block: x is held while a and b are computed
    >>> steps = [(["x"], ["a"]), (["a"], ["b"]), (["x", "b"], ["y"])]
    >>> peak_activation_bytes(steps, {"x": 100, "a": 10, "b": 10, "y": 100}, inputs=["x"], outputs=["y"])
    210
    """
    steps = [(tuple(r), tuple(w)) for r, w in steps]
    ins, outs = list(inputs), set(outputs)
    n = len(steps)
    born = {v: 0 for v in ins}
    last = {v: 0 for v in ins}
    for i, (reads, writes) in enumerate(steps):
        for v in writes:
            born.setdefault(v, i)
            last[v] = max(last.get(v, i), i)
        for v in reads:
            last[v] = max(last.get(v, i), i)
    for v in outs:
        last[v] = max(n - 1, 0)
    peak = 0
    for i in range(max(n, 1)):
        peak = max(peak, sum(int(value_bytes.get(v, 0)) for v in born if born[v] <= i <= last[v]))
    return peak


@dataclass(frozen=True)
class SpeedupCheck:
    """The layers one change of a model touched, and their speed-up: predicted and measured."""

    layers: tuple[str, ...]
    predicted: float
    measured: float | None

    @property
    def error(self) -> float | None:
        """predicted / measured - 1 (None when not measured)."""
        return None if self.measured is None else self.predicted / self.measured - 1.0


def speedup_check(before: Any, after: Any, x: Any, profile: HardwareProfile, *, measure: bool = True,
                  repeats: int = 15, rounds: int = 3) -> SpeedupCheck | None:
    """How much faster the layers that differ between two runtime models run: as :func:`estimate`
    predicts on ``profile``, and as :meth:`~hwreg_rs.runtime.RuntimeModel.profile` measures them
    on this machine for the batch ``x`` (the models in alternating rounds; the median of the
    rounds' ratios), the way the compressor checks each candidate it chose.

    Layers are matched by node name; a layer differs when its :class:`LayerWork` does (a shrunk
    layer and the layers that read it, a layer stored sparse or at 4 bits). None when none differs.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.mlp([64, 256, 10], rng=0).eval()
    >>> a = hw.runtime.convert(net, input_shape=(64,))
    >>> b = hw.runtime.convert(hw.prune.shrink(net, 0.5), input_shape=(64,))
    >>> c = speedup_check(a, b, np.zeros((1, 64), np.float32), preset("x86-avx2"), repeats=3, rounds=1)
    >>> c.layers, c.predicted > 1, c.measured > 0
    (('0', '2'), True, True)
    """
    batch = int(np.shape(x)[0])
    w0 = {n.name: w for n, w in zip(before.nodes, before.layer_work(batch))}  # one per node, in order
    w1 = {n.name: w for n, w in zip(after.nodes, after.layer_work(batch))}
    changed = tuple(n for n in w1 if n not in w0 or dataclasses.replace(w1[n], name=n) != dataclasses.replace(w0[n], name=n))
    if not changed:
        return None
    e0 = dict(zip(w0, (l.latency_s for l in estimate(list(w0.values()), profile).layers)))
    e1 = dict(zip(w1, (l.latency_s for l in estimate(list(w1.values()), profile).layers)))
    predicted = sum(e0.get(n, 0.0) for n in changed) / max(sum(e1[n] for n in changed), 1e-12)
    measured = None
    if measure:
        ratios = []
        for _ in range(max(1, int(rounds))):
            p0 = before.profile(x, repeats=repeats)
            p1 = after.profile(x, repeats=repeats)
            ratios.append(sum(p0.get(n, 0.0) for n in changed) / max(sum(p1[n] for n in changed), 1e-12))
        measured = float(np.median(ratios))
    return SpeedupCheck(changed, float(predicted), measured)


def fits(est: CostEstimate, profile: HardwareProfile) -> bool:
    """Whether the model's memory (weights plus peak activations) fits the profile."""
    return est.memory_bytes <= profile.mem_capacity_bytes



# ---------------------------------------------------------------------------
# The float model's work
# ---------------------------------------------------------------------------


def model_work(model: Any, input_shape: Iterable[int], batch: int = 1) -> list[LayerWork]:
    """What each layer of a float :mod:`hwreg_rs.nn` model computes and moves
    for a batch, as fp32 :class:`LayerWork` (input to :func:`estimate`).

    Costs follow how the layers run in NumPy: Linear is one matrix product
    plus a bias add; Conv2d is im2col, a product, a bias add and the NCHW
    transpose; BatchNorm (eval) is three passes over its input and about eight
    NumPy calls; ReLU two calls (the output and its one-byte mask); Flatten
    and Dropout (eval) are views. Weights are counted dense: NumPy multiplies
    pruned zeros like any weight.

    Parameters
    ----------
    model : hwreg_rs.nn.Module
        A :class:`~hwreg_rs.nn.Sequential` (nested ones are flattened) or one layer.
    input_shape : iterable of int
        Shape of one sample, e.g. ``(64,)`` or ``(1, 8, 8)``.
    batch : int, default 1

    Returns
    -------
    list of LayerWork
        One per layer, named ``"<index>.<LayerType>"``.

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> work = model_work(hw.nn.mlp([64, 256, 10], rng=0), (64,), batch=8)
    >>> [(w.name, w.macs) for w in work]
    [('0.Linear', 131072), ('1.ReLU', 0), ('2.Linear', 20480)]
    >>> estimate(work, preset("x86-avx2")).latency_s > 0
    True
    """
    from .nn import functional as F
    from .nn.conv import AvgPool2d, Conv2d, MaxPool2d
    from .nn.layers import BatchNorm1d, BatchNorm2d, Dropout, Flatten, Linear, ReLU
    from .nn.module import Sequential

    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a positive int; got {batch!r}")

    def flat(m: Any) -> list[Any]:
        if isinstance(m, Sequential):
            return [x for c in m for x in flat(c)]
        return [m]

    shape: tuple[int, ...] = (int(batch),) + tuple(int(d) for d in input_shape)
    out: list[LayerWork] = []
    for i, m in enumerate(flat(model)):
        name = f"{i}.{type(m).__name__}"
        size = int(np.prod(shape))
        if isinstance(m, Linear):
            if shape[-1] != m.in_features:
                raise ValueError(f"{name} expects {m.in_features} features; the input to it has shape {shape}")
            rows, k, n = size // shape[-1], m.in_features, m.out_features
            out.append(LayerWork(name, "linear", rows * k * n, 4 * (k * n + n), rows * k * 4, rows * n * 4,
                                 "fp32", gemm=(rows, k, n)))
            shape = shape[:-1] + (n,)
        elif isinstance(m, Conv2d):
            if len(shape) != 4 or shape[1] != m.in_channels:
                raise ValueError(f"{name} expects (N, {m.in_channels}, H, W); the input to it has shape {shape}")
            oh, ow = m.out_shape(shape)[2:]
            rows = shape[0] * oh * ow
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            n = m.out_channels
            out.append(LayerWork(name, "conv2d", rows * k * n, 4 * (k * n + n), rows * k * 4 * 2, rows * n * 4,
                                 "fp32", gemm=(rows, k, n)))
            shape = (shape[0], n, oh, ow)
        elif isinstance(m, (MaxPool2d, AvgPool2d)):
            oh, ow = F.out_size(shape[2], shape[3], m.kernel_size, m.stride, m.padding)
            new = (shape[0], shape[1], oh, ow)
            # MaxPool also returns its int64 argmax indices.
            extra = 2 if isinstance(m, MaxPool2d) else 1
            out.append(LayerWork(name, "pool", 0, 0, size * 4, int(np.prod(new)) * 4 * extra))
            shape = new
        elif isinstance(m, (BatchNorm1d, BatchNorm2d)):
            out.append(LayerWork(name, "elementwise", 0, 8 * m.num_features, size * 4, size * 4, calls=8, passes=3))
        elif isinstance(m, ReLU):
            # np.maximum writes the output, a comparison writes a one-byte mask.
            out.append(LayerWork(name, "elementwise", 0, 0, size * 4, size * 4, calls=2, passes=1))
        elif isinstance(m, Flatten):
            shape = shape[: m.start_dim] + (int(np.prod(shape[m.start_dim:])),)
            out.append(LayerWork(name, "reshape", 0, 0, size * 4, size * 4, calls=2))  # the layer call + the view
        elif isinstance(m, Dropout):
            out.append(LayerWork(name, "reshape", 0, 0, size * 4, size * 4))
        else:
            raise TypeError(f"cannot cost layer {type(m).__name__}; supported: Linear, Conv2d, BatchNorm1d/2d, "
                            "ReLU, MaxPool2d, AvgPool2d, Flatten, Dropout")
    return out


# ---------------------------------------------------------------------------
# Measuring this machine
# ---------------------------------------------------------------------------


def _nnls_rel(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error: min Σ ((x·c - t)/t)² with c ≥ 0
    (drop the most negative coefficient and refit until none is negative)."""
    xw = x / t[:, None]
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while active:
        c, *_ = np.linalg.lstsq(xw[:, active], np.ones(len(t)), rcond=None)
        if (c >= 0).all():
            coef[active] = c
            break
        active.pop(int(np.argmin(c)))
    return coef


def _nnls_rest(x: np.ndarray, t: np.ndarray, fixed: float) -> np.ndarray:
    """Non-negative coefficients of ``x`` fitting ``t - fixed`` (relative to ``t``)."""
    xw = x / t[:, None]
    y = (t - fixed) / t
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while active:
        c, *_ = np.linalg.lstsq(xw[:, active], y, rcond=None)
        if (c >= 0).all():
            coef[active] = c
            break
        active.pop(int(np.argmin(c)))
    return coef


def _fit_fixed_per(sizes: list[int], times: list[float]) -> tuple[float, float]:
    """(fixed seconds, seconds per element) through measured points."""
    coef = _nnls_rel(np.array([[1.0, float(s)] for s in sizes]), np.array(times))
    return float(coef[0]), float(coef[1])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_bytes(level: int, *, default: int = 256 << 10) -> int:
    """Bytes of cpu0's data or unified cache at ``level`` (sysfs); ``default`` when it does not say."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            d = os.path.join(base, entry)
            with open(os.path.join(d, "level"), encoding="ascii") as f:
                if int(f.read().strip()) != level:
                    continue
            with open(os.path.join(d, "type"), encoding="ascii") as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(d, "size"), encoding="ascii") as f:
                text = f.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
            return int(text.rstrip("KM")) * mult
    except (OSError, ValueError):
        pass
    return default


def _memory_capacity() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                v = f.read().strip()
        except OSError:
            continue
        if v.isdigit() and 0 < int(v) < total:
            total = int(v)
    return int(total)


def measure_host(*, quick: bool = False) -> HardwareProfile:
    """A profile of this machine, named ``"host"``, measured by timing the package's own kernels.

    * int8: :class:`hwreg_rs.Int8Linear` (dynamic quantization, the runtime's
      linear layer) on a grid of synthetic shapes on one thread; a
      non-negative least-squares fit (on relative error) of
      ``fixed + a·M·K + b·M·N + c·MACs`` gives the per-call overhead, the
      activation-quantization and output-step costs and the GEMM throughput;
      one large product on all threads gives the parallel speed-up.
    * fp32: the same fit for NumPy ``x @ w.T + b`` (the float model runs in NumPy).
    * convolution: im2col (float NCHW, and the int8 runtime's uint8 NHWC
      unfold) and the NCHW transpose timed at three sizes, and a
      small runtime convolution for its fixed cost.
    * pooling, elementwise (ReLU) and views: two sizes each, fixed + per element.
    * memory bandwidth: a large copy; within the L2 cache: a copy of a quarter
      of it (``cache_bytes``, ``cache_bandwidth_gbs``), and of the L3 cache
      likewise (``l3_cache_bytes``, ``l3_bandwidth_gbs``); capacity: physical
      memory (or the cgroup limit).
    * sparse kernels: int8 CSR, BSR 16×4 (output panels) and N:M 1:8 at ~90%
      sparsity against the dense int8 layer, as the efficiency of a kept weight
      (``sparsity_patterns``, at one batch row ``sparsity_patterns_one_row``);
      the same three in float32 against NumPy's dense product (``"…/fp32"``);
      a tiny sparse product for the fixed cost of a call (``sparse_overhead_us``).
    * int4: :class:`hwreg_rs.int4.Int4Linear` against :class:`~hwreg_rs.Int8Linear`
      on the same 512×512 weights (they fit the L2 cache at 8 bits) at 1 and 16 rows on one
      thread, each less the fitted row-quantization and output-step costs and
      its own per-call overhead (a tiny layer), as ``int4_speedup``; the same
      weights with scales per group of 32 inputs give ``"int4_group"``.
    * a native plan call's per-layer step: a chain of eight 4×4 int8 layers
      converted to a runtime model, each layer timed inside the call
      (:meth:`~hwreg_rs.runtime.RuntimeModel.profile`), as ``native_overhead_us``;
      3x3 convolutions the same way over a grid of channels and image sizes, for
      their fixed, per-pixel, per-column-element and per-panel-output costs
      beyond their multiply-accumulates (``overhead_us["conv2d/native"]``,
      ``"conv_row_native"``, ``"conv_col_native"``, ``"conv_out_native"``).
    * SIMD width and kernels from :func:`hwreg_rs.active_isa`.

    Timings are medians of single calls, so a busy machine moves them less;
    the library's thread count (:func:`hwreg_rs.num_threads`) is held fixed
    while measuring and recorded as ``cores``: estimate with the same setting.

    Parameters
    ----------
    quick : bool, default False
        Fewer shapes and repeats: well under a second, for tests; its
        figures are rough.

    Returns
    -------
    HardwareProfile

    Examples
    --------
    >>> p = measure_host(quick=True)
    >>> p.name, p.int8_gops > 0
    ('host', True)
    """
    from . import prune, sparse
    from .config import active_isa, num_threads, set_num_threads
    from .gemm import Int8Linear
    from .int4 import Int4Linear
    from .nn import functional as F
    from .nn.conv import Conv2d, MaxPool2d
    from .nn.layers import Linear
    from .nn.module import Sequential

    threads = num_threads()
    rng = np.random.default_rng(20260)
    budget = 0.001 if quick else 0.004
    max_n = 20 if quick else 60
    rounds = 1 if quick else 3  # small measurements are repeated apart in time: load comes in bursts

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    # Shapes of the GEMM grid: deliberately not the shapes of any model we check.
    ms = (1, 8, 48) if quick else (1, 3, 12, 40, 100, 200)
    ks = (24, 300) if quick else (20, 90, 300, 700)
    ns_ = (24, 300) if quick else (12, 40, 200, 600)
    grid = [(m, k, n) for m in ms for k in ks for n in ns_]
    # Tall and thin products (convolutions over many pixels) pin the per-row costs.
    grid += [(m, k, n) for m in ((700,) if quick else (600, 1500)) for k in (8, 27) for n in (8, 24)]
    order = rng.permutation(len(grid))  # shuffled, so a burst of load does not line up with one feature
    # NumPy's BLAS threads make fp32 calls slow and erratic on a busy machine: fewer shapes, fewer calls.
    if quick:
        fgrid = [(m, k, n) for m in (1, 16) for k in (24, 200) for n in (24, 200)] + [(300, 8, 24)]
    else:
        fgrid = [(m, k, n) for m in (1, 5, 24, 96) for k in (24, 300) for n in (24, 300)] + [(700, 8, 24)]

    tile = (1, 4, 16)  # int8 GEMM: K in groups of 4, N in panels of 16 (hwreg-kernels gemm::pack)
    par_min = _native.gemm_parallel_min_work()  # below it a GEMM stays on the caller's thread
    small: dict[str, list[float]] = {}

    def keep(key: str, v: float) -> None:
        small.setdefault(key, []).append(v)

    set_num_threads(1)
    try:
        # -- int8 GEMM (single thread) and fp32 NumPy (BLAS threads as they are) ---
        layers = {(k, n): Int8Linear.from_float(rand(n, k)) for _, k, n in grid}
        # The per-call overhead: a tiny layer, timed in rounds spread over the grid.
        tiny8 = Int8Linear.from_float(rand(4, 4))
        tw, tb, tx = rand(4, 4), rand(4), rand(1, 4)
        o8: list[float] = []
        of: list[float] = []

        def overheads() -> None:
            set_num_threads(1)
            o8.append(median_seconds(lambda: tiny8(tx), repeats=max_n, budget_s=budget))
            of.append(median_seconds(lambda: tx @ tw.T + tb, repeats=max_n, budget_s=budget))

        rows8, rowsf, t8, tf = [], [], [], []
        for j, i in enumerate(order):
            if j % max(len(order) // (2 * rounds + 1), 1) == 0:
                overheads()
            m, k, n = grid[i]
            lay, x = layers[(k, n)], rand(m, k)
            t8.append(median_seconds(lambda: lay(x), repeats=max_n, budget_s=budget))
            rows8.append([m * k, m * n, m * _pad(k, tile[1]) * _pad(n, tile[2]), m])
        set_num_threads(threads)
        for m, k, n in fgrid:
            w, b, x = rand(n, k), rand(n), rand(m, k)
            tf.append(median_seconds(lambda: x @ w.T + b, repeats=max_n, budget_s=budget, min_repeats=3))
            rowsf.append([m * k, m * n, m * k * n])
        overheads()
        set_num_threads(1)
        # Fit the rest of each call's time with the overhead held at the tiny layer's.
        fix8, fixf = float(np.median(o8)), float(np.median(of))
        c8 = np.concatenate([[fix8], _nnls_rest(np.array(rows8, float), np.array(t8), fix8)])
        cf = np.concatenate([[fixf], _nnls_rest(np.array(rowsf, float), np.array(tf), fixf)])

        from .runtime import convert

        conv = Sequential(Conv2d(2, 6, 3, padding=1, rng=rng)).eval()
        conv_x = rand(1, 2, 5, 5)
        conv_op = convert(conv, input_shape=(2, 5, 5)).ops[0]
        pool_op = convert(Sequential(MaxPool2d(2)), input_shape=(3, 6, 6)).ops[0]  # the runtime's pooling
        par_shapes = ((40, 600, 200),) if quick else ((40, 600, 200), (100, 200, 200), (160, 512, 512))
        par_layers = [(Int8Linear.from_float(rand(n, k)), rand(m, k)) for m, k, n in par_shapes]
        for _ in range(rounds):
            set_num_threads(1)
            # -- parallel speed-up on mid-size products (waking the pool included) --
            if threads > 1:
                for j, (lay, x) in enumerate(par_layers):
                    set_num_threads(1)
                    t1 = median_seconds(lambda: lay(x), repeats=max_n, budget_s=2 * budget)
                    set_num_threads(threads)
                    keep(f"par{j}", t1 / median_seconds(lambda: lay(x), repeats=max_n, budget_s=2 * budget))
            # The other kernels run at the library's thread count, as in a model.
            set_num_threads(threads)
            # -- convolution pieces: im2col and the NCHW transpose -------------------
            for j, x in enumerate((rand(1, 2, 6, 6), rand(3, 5, 10, 10), rand(6 if quick else 12, 5, 10, 10))):
                keep(f"im2col{j}", median_seconds(lambda: F.im2col(x, (3, 3), (1, 1), (1, 1)), repeats=max_n, budget_s=budget))
            # The int8 runtime's unfold: quantize the image, NHWC uint8 im2col.
            for j, x in enumerate((rand(1, 2, 6, 6), rand(3, 5, 10, 10), rand(6 if quick else 12, 5, 10, 10))):
                def unfold_u8(x: np.ndarray = x) -> Any:
                    n_ = x.shape[0]
                    xq = _native.quantize_linear(x, np.full(n_, 0.02, np.float32), np.full(n_, 128, np.int32), 0,
                                                 "uint8")
                    return _native.im2col_nhwc(np.ascontiguousarray(xq.transpose(0, 2, 3, 1)), (3, 3), (1, 1),
                                               (1, 1), 128.0)
                keep(f"im2col_u8_{j}", median_seconds(unfold_u8, repeats=max_n, budget_s=budget))
            for j, (n, h, c) in enumerate(((1, 6, 6), (3, 10, 10), (6 if quick else 12, 10, 20))):
                y = rand(n * h * h, c)
                keep(f"nchw{j}", median_seconds(
                    lambda: np.ascontiguousarray(y.reshape(n, h, h, -1).transpose(0, 3, 1, 2)), repeats=max_n, budget_s=budget))
            # -- pooling, elementwise, views -------------------------------------------
            for j, x in enumerate((rand(1, 3, 6, 6), rand(2, 8, 10, 10), rand(6 if quick else 40, 12, 12, 12))):
                keep(f"pool{j}", median_seconds(lambda: pool_op.forward(x), repeats=max_n, budget_s=budget))
            for j, x in enumerate((rand(1, 40), rand(8, 600), rand(48 if quick else 96, 1500))):
                keep(f"elem{j}", median_seconds(lambda: np.maximum(x, 0, dtype=np.float32), repeats=max_n, budget_s=budget))
            xr = rand(3, 4, 5, 5)
            keep("reshape", median_seconds(lambda: xr.reshape(xr.shape[:1] + (-1,)), repeats=max_n, budget_s=budget))
            # -- a whole small convolution layer, as the runtime and NumPy run it ------
            keep("conv8", median_seconds(lambda: conv_op.forward(conv_x), repeats=max_n, budget_s=budget))
            keep("convf", median_seconds(lambda: conv(conv_x), repeats=max_n, budget_s=budget))
        med = {key: float(np.median(v)) for key, v in small.items()}
        speedup = 1.0
        if threads > 1:
            speedup = float(min(max(np.median([med[f"par{j}"] for j in range(len(par_shapes))]), 0.25), threads))
        im2col_sizes = [1 * 2 * 36 * 9, 3 * 5 * 100 * 9, (6 if quick else 12) * 5 * 100 * 9]
        _, im2col_s = _fit_fixed_per(im2col_sizes, [med[f"im2col{j}"] for j in range(3)])
        _, im2col_u8_s = _fit_fixed_per(im2col_sizes, [med[f"im2col_u8_{j}"] for j in range(3)])
        nchw_sizes = [36 * 6, 3 * 100 * 10, (6 if quick else 12) * 100 * 20]
        _, nchw_s = _fit_fixed_per(nchw_sizes, [med[f"nchw{j}"] for j in range(3)])
        pool_sizes = [3 * 36, 2 * 8 * 100, (6 if quick else 40) * 12 * 144]
        pool_fixed, pool_s = _fit_fixed_per(pool_sizes, [med[f"pool{j}"] for j in range(3)])
        elem_sizes = [40, 8 * 600, (48 if quick else 96) * 1500]
        elem_fixed, elem_s = _fit_fixed_per(elem_sizes, [med[f"elem{j}"] for j in range(3)])
        reshape_fixed = med["reshape"]
        # Fixed cost of a convolution layer: the small one's time less its modelled work.
        m, k, n = 25, 18, 6
        body8 = (c8[2] * m * n + c8[3] * m * _pad(k, tile[1]) * _pad(n, tile[2]) + im2col_u8_s * m * k
                 + nchw_s * m * n)  # as _compute_s models an int8 convolution
        conv8 = max(med["conv8"] - body8, c8[0])
        bodyf = cf[1] * m * k + cf[2] * m * n + cf[3] * m * k * n + im2col_s * m * k + nchw_s * m * n
        convf = max(med["convf"] - bodyf, cf[0])

        # -- sparse kernels at ~90% sparsity against dense int8 -------------------
        # Efficiency of a kept weight: the dense layer's time per MAC over the
        # sparse product's time per stored MAC, both less the modelled costs of
        # the call, the activations and the output.
        patterns: dict[str, float] = {}
        kn, bm = (256, 32) if quick else (512, 48)
        w = rand(kn, kn)
        xs = rand(bm, kn)
        dense = Int8Linear.from_float(w)
        fixed = c8[0] + c8[1] * bm * kn + c8[2] * bm * kn + c8[4] * bm
        t_dense = max(median_seconds(lambda: dense(xs), repeats=max_n, budget_s=budget) - fixed, 1e-9) / (bm * kn * kn)
        cands = {
            "unstructured": lambda: sparse.CSRMatrix.from_dense(w, prune.magnitude_mask(w, 0.9), dtype="int8"),
            # The int8 block kernel: output-column panels of 16 rows x 4 inputs.
            "block": lambda: sparse.BSRMatrix.from_dense(w, prune.block_mask(w, 0.9, block=(16, 4)), block=(16, 4),
                                                         dtype="int8"),
            "n:m": lambda: sparse.NMMatrix.from_dense(w, prune.nm_mask(w, 1, 8), n=1, m=8, dtype="int8"),
        }
        tw8 = rand(8, 8)
        tiny_sparse = sparse.BSRMatrix.from_dense(tw8, prune.block_mask(tw8, 0.5, block=(1, 4)), block=(1, 4),
                                                  dtype="int8")
        tx8 = rand(1, 8)
        sparse_fixed = median_seconds(lambda: tiny_sparse.matmul(tx8), repeats=max_n, budget_s=budget)
        # The same kept weights on 4x the rows, for one batch row: the cost of walking a weight row.
        tall, wide = rand(256, 64), rand(64, 256)
        tall_m = sparse.BSRMatrix.from_dense(tall, prune.block_mask(tall, 0.8, block=(1, 4)), block=(1, 4), dtype="int8")
        wide_m = sparse.BSRMatrix.from_dense(wide, prune.block_mask(wide, 0.8, block=(1, 4)), block=(1, 4), dtype="int8")
        xt, xw = rand(1, 64), rand(1, 256)
        sparse_out = max(median_seconds(lambda: tall_m.matmul(xt), repeats=max_n, budget_s=budget)
                         - median_seconds(lambda: wide_m.matmul(xw), repeats=max_n, budget_s=budget), 0.0) / (256 - 64)
        x1 = rand(1, kn)
        fixed1 = c8[0] + c8[1] * kn + c8[2] * kn + c8[4]
        t_dense1 = max(median_seconds(lambda: dense(x1), repeats=max_n, budget_s=budget) - fixed1, 1e-9) / (kn * kn)
        one_row: dict[str, float] = {}
        for pat, make in cands.items():
            mat = make()
            t_sp = max(median_seconds(lambda: mat.matmul(xs), repeats=max_n, budget_s=budget) - fixed, 1e-9)
            patterns[pat] = float(min(max(t_dense / (t_sp / max(mat.stored * bm, 1)), 1e-3), 1.0))
            t_sp1 = max(median_seconds(lambda: mat.matmul(x1), repeats=max_n, budget_s=budget) - sparse_fixed
                        - kn * sparse_out, 1e-9)
            one_row[pat] = float(min(max(t_dense1 / (t_sp1 / max(mat.stored, 1)), 1e-3), 1.0))
        # The float kernels against the float model's dense product (NumPy), under "pattern/fp32",
        # less the fitted fp32 costs of the call, the activations and the output alike.
        fixedf = cf[0] + cf[1] * bm * kn + cf[2] * bm * kn
        t_densef = max(median_seconds(lambda: xs @ w.T, repeats=max_n, budget_s=budget) - fixedf, 1e-9) / (bm * kn * kn)
        fixedf1 = cf[0] + cf[1] * kn + cf[2] * kn
        t_densef1 = max(median_seconds(lambda: x1 @ w.T, repeats=max_n, budget_s=budget) - fixedf1, 1e-9) / (kn * kn)
        cands_f = {
            "unstructured": lambda: sparse.CSRMatrix.from_dense(w, prune.magnitude_mask(w, 0.9)),
            "block": lambda: sparse.BSRMatrix.from_dense(w, prune.block_mask(w, 0.9, block=(16, 4)), block=(16, 4)),
            "n:m": lambda: sparse.NMMatrix.from_dense(w, prune.nm_mask(w, 1, 8), n=1, m=8),
        }
        for pat, make in cands_f.items():
            mat = make()
            t_sp = max(median_seconds(lambda: mat.matmul(xs), repeats=max_n, budget_s=budget) - fixedf, 1e-9)
            patterns[f"{pat}/fp32"] = float(min(max(t_densef / (t_sp / max(mat.stored * bm, 1)), 1e-3), 1.0))
            t_sp1 = max(median_seconds(lambda: mat.matmul(x1), repeats=max_n, budget_s=budget) - sparse_fixed, 1e-9)
            one_row[f"{pat}/fp32"] = float(min(max(t_densef1 / (t_sp1 / max(mat.stored, 1)), 1e-3), 1.0))

        # -- int4 weights against dense int8 on the same weights (batch 1 and a small batch) ---
        # Both quantize the rows and finish the outputs alike: the ratio is of what is left.
        set_num_threads(1)
        # Weights that fit the per-core cache at 8 bits as at 4 (a 1 MiB L2 holds 1024x1024 int8 weights only
        # just): the factor is of the multiply-accumulates; the bytes moved are the roofline's memory term.
        k4 = 512
        w4 = rand(k4, k4)
        lay8, lay4 = Int8Linear.from_float(w4), Int4Linear.from_float(w4)
        tiny4 = Int4Linear.from_float(rand(4, 4))
        o4 = median_seconds(lambda: tiny4(tx), repeats=max_n, budget_s=budget)
        lay4g = Int4Linear.from_float(w4, group_size=32)  # per-group scales: the extra float work per group
        int4_speedup, group_ns = [], []
        # The int4 cost per output apart from its MACs: the same outputs from 64 and from k4 inputs, one row.
        k_short = 64
        w4s = np.ascontiguousarray(w4[:, :k_short])
        lay8s, lay4s = Int8Linear.from_float(w4s), Int4Linear.from_float(w4s)
        x1s, x1 = rand(1, k_short), rand(1, k4)
        # Side by side (differences of a few hundred ns: a burst of load must hit both alike), in samples
        # of several calls; the tiny pair takes out the two layers' own per-call costs from Python.
        ts = side_by_side({"8s": lambda: lay8s(x1s), "4s": lambda: lay4s(x1s), "8": lambda: lay8(x1),
                           "4": lambda: lay4(x1), "t8": lambda: tiny8(tx), "t4": lambda: tiny4(tx)},
                          rounds=max_n // 2, min_seconds=2e-5)
        calls = ts["t4"] - ts["t8"]
        extra = [ts["4s"] - ts["8s"] - calls, ts["4"] - ts["8"] - calls]  # int4 minus int8, one row: short K, k4
        saved_per_weight = max((extra[0] - extra[1]) / ((k4 - k_short) * k4), 0.0)
        int4_out = max(extra[0] / k4 + k_short * saved_per_weight, 0.0)
        for m4 in (1, 16):
            x4 = rand(m4, k4)
            rest = c8[1] * m4 * k4 + c8[2] * m4 * k4 + c8[4] * m4
            t8_ = median_seconds(lambda: lay8(x4), repeats=max_n, budget_s=2 * budget) - fix8 - rest
            t4c = median_seconds(lambda: lay4(x4), repeats=max_n, budget_s=2 * budget)
            t4_ = t4c - o4 - rest - m4 * k4 * int4_out
            int4_speedup.append((m4, float(min(max(t8_, 1e-9) / max(t4_, 1e-9), 20.0))))
            t4g = median_seconds(lambda: lay4g(x4), repeats=max_n, budget_s=2 * budget)
            group_ns.append(max(t4g - t4c, 0.0) / (m4 * k4 * (k4 // 32)) * 1e9)

        # -- one step of a native plan call: a chain of tiny int8 layers, each timed inside the call ---
        from .runtime import convert as _convert

        chain = Sequential(*[Linear(4, 4, rng=rng) for _ in range(8)]).eval()
        rt_chain = _convert(chain, input_shape=(4,))
        steps = rt_chain.profile(tx, repeats=max_n)
        tiny = c8[1] * 4 + c8[2] * 4 + c8[3] * 4 * 16 + c8[4]  # the modelled work of one (padded) 4x4 layer
        native_s = max(float(np.median(list(steps.values()))) - tiny, 0.0)
    finally:
        set_num_threads(threads)

    # -- memory bandwidth: a copy larger than the last-level cache ----------------
    nbytes = (16 if quick else 96) << 20
    src = np.ones(nbytes // 4, np.float32)
    dst = src.copy()
    t_copy = median_seconds(lambda: np.copyto(dst, src), repeats=3, budget_s=0.0, min_repeats=2 if quick else 3)
    del src, dst
    bandwidth = 2 * nbytes / t_copy / 1e9
    # -- and within the per-core cache: a copy of a quarter of it (source and destination fit) --------
    l2 = _cache_bytes(2)
    csrc = np.ones(l2 // 16, np.float32)
    cdst = csrc.copy()
    t_cache = median_seconds(lambda: np.copyto(cdst, csrc), repeats=max_n, min_seconds=2e-5)
    cache_bw = 2 * csrc.nbytes / t_cache / 1e9
    del csrc, cdst
    # -- and within the last-level cache: a copy of a quarter of it, above L2 --------------------
    l3 = _cache_bytes(3, default=0)
    l3_bw = None
    if l3 > 2 * l2:
        lsrc = np.ones(l3 // 16, np.float32)
        ldst = lsrc.copy()
        t_l3 = median_seconds(lambda: np.copyto(ldst, lsrc), repeats=max_n // 2, min_seconds=2e-4)
        l3_bw = float(min(max(2 * lsrc.nbytes / t_l3 / 1e9, bandwidth), max(cache_bw, bandwidth)))
        del lsrc, ldst

    isa = active_isa()
    simd = {"avx512vnni": 512, "avx512": 512, "avx2": 256}.get(isa, 128)
    us = 1e6
    prof = HardwareProfile(
        name="host",
        int8_gops=float(2.0 / max(c8[3], 1e-15) / 1e9 * speedup),
        fp32_gflops=float(2.0 / max(cf[3], 1e-15) / 1e9),
        mem_bandwidth_gbs=float(bandwidth),
        mem_capacity_bytes=_memory_capacity(),
        energy_pj_per_mac=dict(_E45),
        energy_pj_per_byte=_E_DRAM,
        simd_width_bits=simd,
        cores=int(threads),
        kernels=("dense_f32", "dense_int8", "dense_int4", "sparse_f32", "sparse_int8"),
        sparsity_patterns=patterns,
        needs_7bit_activations=False,  # every hwreg_rs int8 path is exact
        layer_overhead_us=float(c8[0] * us),
        source=(f"measured by hwreg_rs.profiles.measure_host(quick={quick}) on {_cpu_name()} "
                f"({platform.machine()}), ISA {isa}, {threads} thread(s), "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC; energies are the 45 nm figures of "
                "Horowitz (ISSCC 2014), not measured."),
        overhead_us={"linear/int8": float(c8[0] * us), "linear/int4": float(o4 * us), "linear/fp32": float(cf[0] * us),
                     "conv2d/int8": float(conv8 * us), "conv2d/fp32": float(convf * us),
                     "pool": float(pool_fixed * us), "elementwise": float(elem_fixed * us),
                     "reshape": float(reshape_fixed * us)},
        ns_per_element={"int8_row": float(c8[4] * 1e9), "int8_in": float(c8[1] * 1e9), "int8_out": float(c8[2] * 1e9),
                        "fp32_in": float(cf[1] * 1e9), "fp32_out": float(cf[2] * 1e9),
                        "im2col": float(im2col_s * 1e9), "im2col_int8": float(im2col_u8_s * 1e9),
                        "nchw": float(nchw_s * 1e9),
                        "pool": float(pool_s * 1e9), "elementwise": float(elem_s * 1e9),
                        "int4_group": float(np.median(group_ns)), "sparse_out": float(sparse_out * 1e9),
                        "int4_out": float(int4_out * 1e9)},
        gemm_tile=tile,
        parallel_min_macs=par_min,
        parallel_speedup=speedup,
        int4_speedup=tuple(int4_speedup),
        native_overhead_us=float(native_s * us),
        sparse_overhead_us=float(sparse_fixed * us),
        sparsity_patterns_one_row=one_row,
        cache_bytes=l2,
        cache_bandwidth_gbs=float(max(cache_bw, bandwidth)),
        l3_cache_bytes=l3 if l3_bw is not None else 0,
        l3_bandwidth_gbs=l3_bw,
    )
    return _fit_native_steps(prof, rng, max_n, quick)


def _fit_native_steps(prof: HardwareProfile, rng: np.random.Generator, repeats: int, quick: bool) -> HardwareProfile:
    """``prof`` with what a dense int8 Linear layer costs inside a native plan call (``overhead_us["linear/native"]``,
    ``"linear_row_native"``, ``"linear_col_native"``, ``"linear_out_native"``, ``"linear_mac_native"``,
    as for a convolution below; at one batch row, the plan's one-row path, its own fixed cost
    ``overhead_us["linear/native1"]`` and cost per weight ``"linear_gemv_native"``; fitted on the middle layer of three-layer chains over a grid of batch
    rows, inputs and outputs), and what a 3x3 convolution costs there: a fixed cost per node
    (``overhead_us["conv2d/native"]``), per output pixel (``"conv_row_native"``), per column-matrix
    element (``"conv_col_native"``), per output of a 16-column panel (``"conv_out_native"``) and per
    multiply-accumulate of the tile-padded product (``"conv_mac_native"``).

    Fitted (non-negative least squares on relative error) on the second convolution of models
    conv-conv-flatten-linear over a grid of input channels, output channels and image sizes, each timed
    inside the call (:meth:`~hwreg_rs.runtime.RuntimeModel.profile`): its input arrives and its output
    leaves channels-last, as between the layers of a model. A max pool after a convolution and the Flatten after it likewise, over a
    grid of channels and image sizes: the pool's fixed, per-input-element and per-input-position costs
    (``overhead_us["pool/native"]``, ``"pool_native"``, ``"pool_px_native"``) and the Flatten's (``overhead_us["reshape/native"]``)
    before a Linear layer, as in a model."""
    from .nn.conv import Conv2d, MaxPool2d
    from .nn.layers import Flatten, Linear
    from .nn.module import Sequential
    from .runtime import convert

    keys = ("conv_row_native", "conv_col_native", "conv_out_native", "conv_mac_native")
    grid = [(c, n, h) for c in (4, 16, 32) for n in (8, 24, 40) for h in (4, 8, 12)]
    if quick:  # a Latin square of the same levels
        grid = [(c, n, h) for i, c in enumerate((4, 16, 32)) for j, n in enumerate((8, 24, 40))
                for h in ((4, 8, 12)[(i + j) % 3],)]
    models = []
    for c, n, h in grid:
        # Between a convolution and a Linear layer: its input and output stay channels-last, as in a model.
        net = Sequential(Conv2d(2, c, 3, padding=1, rng=rng), Conv2d(c, n, 3, padding=1, rng=rng), Flatten(),
                         Linear(n * h * h, 4, rng=rng)).eval()
        rt = convert(net, input_shape=(2, h, h))
        x = rng.standard_normal((1, 2, h, h)).astype(np.float32)
        work = rt.layer_work(1)[1]
        if not work.native:  # this build runs convolutions in Python: the Python costs apply
            return prof
        models.append((rt, x, work))
    times: list[list[float]] = [[] for _ in models]
    for _ in range(3):  # rounds apart in time: load comes in bursts
        for i, (rt, x, _w) in enumerate(models):
            times[i].append(rt.profile(x, repeats=repeats)["1"])
    t = np.array([float(np.median(v)) for v in times])
    feats = []
    for (_rt, _x, w) in models:
        m, k, n = _gemm_dims(w)  # type: ignore[misc]
        tr, tk, tn = prof.gemm_tile
        feats.append([1.0, m, _pad(m, tr) * _pad(k, tk), _pad(m, tr) * _pad(n, tn),
                      _pad(m, tr) * _pad(k, tk) * _pad(n, tn)])
    coef = _nnls_rel(np.array(feats, float), t)
    # -- the middle Linear layer of a chain: its input and output are the plan's own buffers --------
    lgrid = [(m, k, n) for m in (1, 4, 32) for k in (32, 128, 512) for n in (16, 64, 256)]
    if quick:
        lgrid = [(m, k, n) for i, m in enumerate((1, 4, 32)) for j, k in enumerate((32, 128, 512))
                 for n in ((16, 64, 256)[(i + j) % 3],)]
    chains = []
    for m, k, n in lgrid:
        rt = convert(Sequential(Linear(16, k, rng=rng), Linear(k, n, rng=rng), Linear(n, 4, rng=rng)).eval(),
                     input_shape=(16,))
        work = rt.layer_work(m)[1]
        if not work.native:
            return prof
        chains.append((rt, rng.standard_normal((m, 16)).astype(np.float32)))
    tl: list[list[float]] = [[] for _ in chains]
    for _ in range(3):
        for i, (rt, x) in enumerate(chains):
            tl[i].append(rt.profile(x, repeats=repeats)["1"])
    tr, tk, tn = prof.gemm_tile
    # One batch row runs the plan's one-row path (its own fixed cost, no GEMM driver, and its own
    # rate per weight); more rows the driver and its tiles.
    lfeats = [[float(m > 1), float(m == 1), m, _pad(m, tr) * _pad(k, tk), _pad(m, tr) * _pad(n, tn),
               (m > 1) * _pad(m, tr) * _pad(k, tk) * _pad(n, tn), (m == 1) * _pad(k, tk) * _pad(n, tn)]
              for m, k, n in lgrid]
    lcoef = _nnls_rel(np.array(lfeats, float), np.array([float(np.median(v)) for v in tl]))
    lkeys = ("linear_row_native", "linear_col_native", "linear_out_native", "linear_mac_native",
             "linear_gemv_native")
    # -- a max pool after a convolution (channels-last input, as in a model) and the Flatten after it ---
    pools = []
    for c, h in ([(4, 4), (6, 8), (16, 12), (32, 8)] if quick else
                 [(c, h) for c in (4, 6, 16, 32) for h in (4, 8, 12)]):
        net = Sequential(Conv2d(2, c, 3, padding=1, rng=rng), MaxPool2d(2), Flatten(),
                         Linear(c * (h // 2) ** 2, 4, rng=rng)).eval()  # the Linear takes the channels-last Flatten
        rt = convert(net, input_shape=(2, h, h))
        pools.append((rt, rng.standard_normal((1, 2, h, h)).astype(np.float32), c * h * h, h * h))
    tp: list[list[float]] = [[] for _ in pools]
    tflat: list[float] = []
    for _ in range(3):
        for i, (rt, x, _n, _px) in enumerate(pools):
            steps = rt.profile(x, repeats=repeats)
            tp[i].append(steps["1"])
            tflat.append(steps["2"])
    pool_c = _nnls_rel(np.array([[1.0, px, n] for _, _, n, px in pools]), np.array([float(np.median(v)) for v in tp]))
    pool_fixed, pool_px, pool_s = (float(v) for v in pool_c)
    return dataclasses.replace(
        prof, overhead_us={**prof.overhead_us, "conv2d/native": float(coef[0] * 1e6), "linear/native": float(lcoef[0] * 1e6),
                           "linear/native1": float(lcoef[1] * 1e6),
                           "pool/native": pool_fixed * 1e6, "reshape/native": float(np.median(tflat)) * 1e6},
        ns_per_element={**prof.ns_per_element, **{k: float(v * 1e9) for k, v in zip(keys, coef[1:])},
                        **{k: float(v * 1e9) for k, v in zip(lkeys, lcoef[2:])},
                        "pool_native": pool_s * 1e9, "pool_px_native": pool_px * 1e9})
