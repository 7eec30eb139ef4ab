"""Hardware profiles and a roofline cost model.

A :class:`HardwareProfile` says what a target can do: dense int8 and fp32
throughput, memory bandwidth and capacity, energy per operation and per byte
moved, SIMD width, the kernels and sparsity patterns its runtime exploits.
:func:`estimate` turns a list of :class:`LayerWork` (what each layer of a model
computes and moves) into per-layer and total latency, memory and energy on a
profile. :func:`measure_host` builds a profile of this machine by timing the
package's own kernels.

The model is a roofline with a per-layer overhead::

    latency = overhead + max(2 * effective_macs / throughput, bytes_moved / bandwidth)

where ``effective_macs`` counts only kept weights when the profile has a
kernel for the layer's sparsity pattern (scaled by that kernel's measured
efficiency) and all of them otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = [
    "HardwareProfile",
    "LayerWork",
    "LayerEstimate",
    "CostEstimate",
    "estimate",
    "fits",
    "preset",
    "PRESETS",
]

PRECISIONS = ("fp32", "int8")
PATTERNS = ("dense", "unstructured", "block", "n:m")


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
        Energy of one multiply-accumulate, by precision (``"int8"``, ``"fp32"``).
    energy_pj_per_byte : float
        Energy of moving one byte from main memory.
    simd_width_bits : int
        Vector register width the kernels use.
    cores : int
        Cores the throughput figures assume.
    kernels : tuple of str
        Kernels the runtime has: ``"dense_f32"``, ``"dense_int8"``, ``"sparse_f32"``,
        ``"sparse_int8"``.
    sparsity_patterns : dict of str to float
        Patterns the sparse kernels exploit, each with its efficiency: the
        fraction of dense per-MAC throughput a kept weight achieves (0..1).
    needs_7bit_activations : bool
        Whether the target's fast int8 path saturates unless activations fit in
        7 bits (AVX2 ``vpmaddubsw`` without VNNI).
    layer_overhead_us : float
        Fixed cost of running one layer (dispatch, threads wake-up).
    source : str
        Where the figures come from.
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

    def __post_init__(self) -> None:
        for f in ("int8_gops", "fp32_gflops", "mem_bandwidth_gbs", "energy_pj_per_byte"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"{f} must be a positive number; got {v!r}")
        if int(self.mem_capacity_bytes) <= 0:
            raise ValueError(f"mem_capacity_bytes must be positive; got {self.mem_capacity_bytes!r}")
        if self.layer_overhead_us < 0:
            raise ValueError(f"layer_overhead_us must be >= 0; got {self.layer_overhead_us!r}")
        for p, eff in self.sparsity_patterns.items():
            if p not in PATTERNS[1:]:
                raise ValueError(f"unknown sparsity pattern {p!r}; expected one of {PATTERNS[1:]}")
            if not 0 < eff <= 1:
                raise ValueError(f"efficiency of pattern {p!r} must be in (0, 1]; got {eff!r}")
        missing = set(PRECISIONS) - set(self.energy_pj_per_mac)
        if missing:
            raise ValueError(f"energy_pj_per_mac lacks {sorted(missing)}")
        # Freeze the mappings so a profile is a value.
        object.__setattr__(self, "energy_pj_per_mac", dict(self.energy_pj_per_mac))
        object.__setattr__(self, "sparsity_patterns", dict(self.sparsity_patterns))
        object.__setattr__(self, "kernels", tuple(self.kernels))

    def throughput_ops(self, precision: str) -> float:
        """Dense throughput in operations per second for ``"int8"`` or ``"fp32"``."""
        if precision == "int8":
            return self.int8_gops * 1e9
        if precision == "fp32":
            return self.fp32_gflops * 1e9
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HardwareProfile":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown profile fields {sorted(unknown)}")
        d = dict(d)
        if "kernels" in d:
            d["kernels"] = tuple(d["kernels"])
        return cls(**d)

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
                    "NumPy and ONNX Runtime (hwreg_rs DESIGN.md §5); vpmaddubsw saturation per Intel SDM "
                    "vol. 2 (PMADDUBSW saturates its 16-bit pair sums); energies from Horowitz, ISSCC 2014."),
        ),
        HardwareProfile(
            name="x86-avx512-vnni",
            int8_gops=600.0, fp32_gflops=150.0, mem_bandwidth_gbs=25.0, mem_capacity_bytes=16 * _GIB,
            energy_pj_per_mac=_E45, energy_pj_per_byte=_E_DRAM, simd_width_bits=512, cores=2,
            kernels=("dense_f32", "dense_int8", "sparse_f32", "sparse_int8"),
            sparsity_patterns={"unstructured": 0.3, "block": 0.7, "n:m": 0.6},
            needs_7bit_activations=False, layer_overhead_us=4.0,
            source=("2 cores of an Intel Ice Lake-SP at 2.8 GHz: VPDPBUSD 64 u8xs8 MACs per instruction, one "
                    "per cycle (Intel 64 and IA-32 Optimization Reference Manual; uops.info), about 50% "
                    "sustained; fp32 2x512-bit FMA; VNNI accumulates in 32 bits without saturation; "
                    "energies from Horowitz, ISSCC 2014."),
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
class LayerWork:
    """What one layer computes and moves, for one batch.

    Parameters
    ----------
    name : str
        Layer name.
    kind : str
        ``"linear"``, ``"conv2d"``, ``"pool"`` or ``"elementwise"``.
    macs : int
        Dense-equivalent multiply-accumulates for the whole batch.
    weight_bytes : int
        Bytes of stored weights as the runtime keeps them (values plus indices).
    act_in_bytes, act_out_bytes : int
        Bytes of input and output activations.
    precision : str
        ``"int8"`` or ``"fp32"``.
    density : float
        Fraction of weights kept (1.0 when dense).
    pattern : str
        ``"dense"``, ``"unstructured"``, ``"block"`` or ``"n:m"``.
    """

    name: str
    kind: str
    macs: int
    weight_bytes: int
    act_in_bytes: int
    act_out_bytes: int
    precision: str = "fp32"
    density: float = 1.0
    pattern: str = "dense"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}; got {self.pattern!r}")
        if not 0 <= self.density <= 1:
            raise ValueError(f"density must be in [0, 1]; got {self.density!r}")
        for f in ("macs", "weight_bytes", "act_in_bytes", "act_out_bytes"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0; got {getattr(self, f)!r}")


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
    """Per-layer and total cost of a model on a profile."""

    profile: str
    layers: tuple[LayerEstimate, ...]

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
        return max((l.activation_bytes for l in self.layers), default=0)

    @property
    def memory_bytes(self) -> int:
        """Weights plus the largest live activations (one layer's input and output)."""
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
    eff = profile.sparsity_patterns.get(work.pattern)
    if eff is None or kernel not in profile.kernels:
        return float(work.macs)  # no kernel for it: the zeros are multiplied like any weight
    # A sparse kernel is used only when it wins, as the runtime's chooser does.
    return min(float(work.macs), work.macs * work.density / eff)


def estimate(layers: Iterable[LayerWork], profile: HardwareProfile) -> CostEstimate:
    """Latency, memory and energy of running ``layers`` in order on ``profile``.

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
        compute = 2.0 * macs / profile.throughput_ops(w.precision) if w.macs else 0.0
        moved = w.weight_bytes + w.act_in_bytes + w.act_out_bytes
        memory = moved / (profile.mem_bandwidth_gbs * 1e9)
        overhead = profile.layer_overhead_us * 1e-6
        bound = "compute" if compute >= memory else "memory"
        if overhead > max(compute, memory):
            bound = "overhead"
        energy = (macs * profile.energy_pj_per_mac[w.precision] + moved * profile.energy_pj_per_byte) * 1e-12
        out.append(LayerEstimate(w.name, overhead + max(compute, memory), compute, memory, energy,
                                 int(w.weight_bytes), int(w.act_in_bytes + w.act_out_bytes), bound))
    return CostEstimate(profile.name, tuple(out))


def fits(est: CostEstimate, profile: HardwareProfile) -> bool:
    """Whether the model's memory (weights plus peak activations) fits the profile."""
    return est.memory_bytes <= profile.mem_capacity_bytes

