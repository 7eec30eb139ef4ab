"""Budget-driven compression: a trained model and a target in, a runtime model that fits out.

:func:`compress` plans with two levers per layer, each a list of candidates:

* **shrink** a channel group (:func:`hwreg_rs.prune.shrink_plan`: a Conv2d's output
  channels or a Linear layer's neurons, with everything tied to them) by a ratio
  (``shrink_ratios``): the model becomes a smaller dense one, so its cost and its
  file are exact to estimate, and it pays on every target, convolutions included;
  the **heads** of an attention block likewise (:func:`hwreg_rs.shrink.shrink_heads`:
  whole heads, their q/k/v projection rows and output-projection columns; ``kind="heads"``
  candidates by the same ratios, keyed by the block's scores MatMul);
* **prune** a Linear layer to a sparsity (``sparsities``) in the pattern the
  target's kernels run best, stored sparse (its kept values plus one bit per
  weight);
* **4-bit weights** for a Linear layer (``weight_bits``): stored as int4
  (:class:`hwreg_rs.int4.Int4Linear`, two weights per byte) with one scale per
  group of ``int4_group_sizes`` inputs (32, 64, 128 along K: more scales,
  less error) or one per output channel (the grid 4-bit QAT trains); the
  levels of the lever run from the smallest group to per channel. A per-group
  layer is fine-tuned on the per-group grid convert stores (its fake
  quantization is :func:`hwreg_rs.int4.quantize_weight` itself) and
  converted from its raw weights, so the runtime computes what was trained.
  Costed by the profile's int4 figures (``int4_speedup``, and
  ``ns_per_element["int4_group"]`` for the per-group scaling; without them,
  int8 speed plus an unpack), sized exactly (the file of the model with it).
  It combines with shrinking, not with pruning: the runtime has no sparse
  int4 storage, so a layer is either pruned or 4-bit.

Every candidate is costed on the model with it alone by the one cost model
(:func:`hwreg_rs.profiles.estimate`: latency on the profile, weights plus peak
live activations) and the ``.hwreg`` file it makes, and its accuracy drop on the
held-out data is measured alone (before fine-tuning). Then an accuracy-aware
greedy search takes, one step at a time, the step with the most saving on the
missed budgets per point of accuracy it cost alone, re-measures the accuracy of
the combined plan, and rolls a step back (that lever goes no further) when the
drop exceeds the allowance before fine-tuning (``3 * max_accuracy_drop + 1 pt``:
fine-tuning wins much back), until the budgets hold or no step is left. When the
allowance is spent first, the plan so far is applied and briefly fine-tuned, and
the search goes on from the recovered model (``search_rounds``). The plan
is then applied (shrunk first), fine-tuned under the training loop's hard
constraints (gradual pruning in the pattern, weight fake quantization at 4
bits on the 4-bit layers and 8 elsewhere), converted to a
:class:`~hwreg_rs.runtime.RuntimeModel` (int4 where trained at 4 bits, int8
elsewhere), measured and
reported, layer by layer (by the model's own layer names), with every candidate
considered. The end never leaves the accuracy allowance for a budget: when the
fine-tuned plan loses more than ``max_accuracy_drop``, the search rolls back to the
plans it stood on before, latest first (each fine-tuned the same way; at most
``_MAX_ROLLBACKS``), then to the dense int8 model, and keeps the first within the
allowance; the report's ``notes`` say so, and say when the latency budget lay
below the cost model's floor (every useful lever at its last level). A missed
budget raises :class:`BudgetError` (carrying the report) unless told not to.

Each chosen candidate is also checked against the cost model: the report gives
its predicted speed-up (the layers it changes, estimated with and without it)
and, on "host", the measured one (those layers timed as ``predict`` runs them,
:meth:`~hwreg_rs.runtime.RuntimeModel.profile`, the model with and without it
in alternating rounds). :meth:`CompressionReport.plot` draws the
accuracy-latency-size front of the candidates (``plot=`` a PNG path).

The budgets, and what they are judged on:

* a size budget counts the bytes of the saved ``.hwreg`` file;
* a latency budget is judged on the measurement on "host", else on the
  estimate; a layer is pruned for it only where the profile's sparse kernel for
  the pattern is faster than dense int8 (:func:`hwreg_rs.sparse.choose`,
  checked before any accuracy is spent);
* memory: the weights as the runtime holds them plus the largest sum of
  activations live at once in execution order (float32 values, as the runtime
  holds them) must fit ``memory_budget`` and the profile's
  ``mem_capacity_bytes`` (for the Cortex-M7 preset its 512 KB SRAM, which holds
  weights and activations alike there: flash is not modelled).

Convolutions are stored and run dense (there is no sparse convolution kernel):
they are shrunk, never pruned, and stay at 8 bits (the int4 kernels are
linear layers).
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from . import constraints as C, profiles, prune, runtime, shrink as shrink_mod, sparse
from ._timing import median_seconds, numpy_seconds
from .int4 import Int4Linear
from .nn.conv import Conv2d
from .nn.layers import Linear
from .nn.module import Module
from .train import Trainer, evaluate

__all__ = ["BudgetError", "Candidate", "CompressionReport", "LayerReport", "compress"]


class BudgetError(RuntimeError):
    """The compressed model misses a budget; ``.report`` says by how much."""

    def __init__(self, message: str, report: "CompressionReport") -> None:
        super().__init__(message)
        self.report = report


@dataclass
class LayerReport:
    """One layer of the runtime model (a Linear or convolution, its BatchNorm and ReLU fused):
    what was chosen and what it costs; ``nbytes`` is what the file stores for it, ``measured_us``
    its time as ``predict`` runs it (:meth:`hwreg_rs.runtime.RuntimeModel.profile`)."""

    name: str
    op: str
    bits: int | None
    sparsity: float
    pattern: str
    nbytes: int
    estimated_us: float
    measured_us: float
    delta_accuracy: float | None  # its chosen candidate's, measured alone before fine-tuning
    note: str = ""
    channels_removed: float = 0.0  # fraction of the layer's output channels shrunk away
    group_size: int | None = None  # an int4 layer's inputs per scale (None: one per output channel)


@dataclass
class Candidate:
    """One lever setting the planner considered, costed and measured alone.

    ``layer`` is a Linear layer's name (``kind="sparse"``: prune ``ratio`` of its weights,
    stored sparse in ``pattern``) or a channel group's layers joined by ``+``
    (``kind="shrink"``: remove ``ratio`` of the group's prunable channels, ``channels_removed``
    of them, leaving a smaller dense layer). ``estimated_us``, ``file_bytes`` and
    ``memory_bytes`` are those of the whole model with this candidate alone (the cost model's
    latency on the profile; the ``.hwreg`` file, exact for shrinking; weights + peak
    activations), ``delta_accuracy`` its accuracy change on the held-out data before
    fine-tuning. ``bits`` is the weights' width: 4 for a ``kind="bits"`` candidate (the Linear
    layer stored int4, its accuracy measured with 4-bit fake quantization of that layer alone;
    ``ratio`` 0; ``group_size`` its inputs per scale, None for one scale per output channel), 8
    for every other. ``predicted_speedup`` is the cost model's speed-up of the layers the
    candidate changes over the model without it, ``measured_speedup`` the same layers timed on
    the host (both for chosen candidates; measured only on "host").
    """

    layer: str
    kind: str
    ratio: float
    pattern: str
    bits: int
    estimated_us: float
    file_bytes: int
    memory_bytes: int
    delta_accuracy: float
    chosen: bool = False
    channels_removed: int = 0
    round: int = 0  # the search round (each after a short recovery fine-tune of the previous plan)
    group_size: int | None = None
    predicted_speedup: float | None = None
    measured_speedup: float | None = None
    timed_layers: str = ""  # the layers the speed-ups are of, joined by "+"


@dataclass
class CompressionReport:
    """What :func:`compress` chose, estimated and measured.

    ``nbytes`` is the size of the saved ``.hwreg`` file (what a size budget is judged on),
    ``float_bytes`` that of the float model's state dict saved as ``.npz``; ``latency_s`` is measured on the host
    (``predict``), ``estimated_latency_s`` the cost model's figure on the profile;
    ``other_us`` is the part of the measured latency no layer row holds (pools, views,
    ``predict``'s own bookkeeping).
    """

    profile: str
    batch_size: int
    latency_budget_s: float | None
    size_budget_bytes: int | None
    max_accuracy_drop: float
    float_accuracy: float
    accuracy: float
    float_latency_s: float
    latency_s: float
    estimated_latency_s: float
    float_bytes: int
    nbytes: int
    met: bool
    misses: list[str] = field(default_factory=list)
    layers: list[LayerReport] = field(default_factory=list)
    other_us: float = 0.0
    memory_budget_bytes: int | None = None
    memory_limit_bytes: int | None = None  # the memory budget or the profile's capacity, the smaller
    weight_bytes: int = 0  # as the runtime holds them (estimated, with the profile)
    peak_activation_bytes: int = 0
    memory_bytes: int = 0  # weight_bytes + peak_activation_bytes: what must fit memory_limit_bytes
    candidates: list[Candidate] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)  # the greedy search, rolled-back steps too
    notes: list[str] = field(default_factory=list)  # what the search decided beside the plan (a rollback, a floor)

    @property
    def accuracy_change(self) -> float:
        return self.accuracy - self.float_accuracy

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy_change"] = self.accuracy_change
        return d

    def markdown(self) -> str:
        """The per-layer table and a summary line."""
        lines = ["| layer | op | bits | shrunk | sparsity | pattern | bytes | est. µs | measured µs | Δacc (alone) |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.layers:
            d = "–" if r.delta_accuracy is None else f"{100 * r.delta_accuracy:+.1f} pt"
            bits = f"{r.bits or '–'}" + (f" g{r.group_size}" if r.group_size else "")
            lines.append(f"| {r.name} | {r.op} | {bits} | {r.channels_removed:.0%} | {r.sparsity:.0%} | "
                         f"{r.pattern} | {r.nbytes} | {r.estimated_us:.1f} | {r.measured_us:.1f} | {d} |")
        lines.append(f"| (other: pools, views, predict itself) | – | – | – | – | – | – | – | {self.other_us:.1f} | – |")
        notes = sorted({r.note for r in self.layers if r.note})
        budget = []
        if self.latency_budget_s is not None:
            budget.append(f"latency ≤ {1e6 * self.latency_budget_s:.3g} µs")
        if self.size_budget_bytes is not None:
            budget.append(f"size ≤ {self.size_budget_bytes} B")
        if self.memory_limit_bytes is not None:
            budget.append(f"memory ≤ {self.memory_limit_bytes} B")
        budget.append(f"accuracy drop ≤ {100 * self.max_accuracy_drop:.1f} pt")
        verdict = "MET" if self.met else "MISSED: " + "; ".join(self.misses)
        lines += [
            "",
            f"profile {self.profile}, batch {self.batch_size}: budget {', '.join(budget)} → {verdict}",
            f"accuracy {100 * self.float_accuracy:.2f}% → {100 * self.accuracy:.2f}% "
            f"({100 * self.accuracy_change:+.2f} pt); latency {1e6 * self.float_latency_s:.0f} µs (float, NumPy) → "
            f"{1e6 * self.latency_s:.0f} µs measured ({1e6 * self.estimated_latency_s:.0f} µs estimated); "
            f"size {self.float_bytes} B (float .npz) → {self.nbytes} B (.hwreg file, "
            f"{self.nbytes / max(self.float_bytes, 1):.1%})",
        ]
        lines.append(f"memory {self.memory_bytes} B estimated: weights {self.weight_bytes} B + peak activations "
                     f"{self.peak_activation_bytes} B (batch {self.batch_size})")
        lines += [f"note: {n}" for n in notes]
        lines += [f"search: {n}" for n in self.notes]
        if self.candidates:
            lines += ["", "Candidates (the model with each one alone; Δacc before fine-tuning; * chosen):", "",
                      "| layer | kind | ratio | pattern | bits | est. µs | file bytes | memory bytes | Δacc | |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for c in self.candidates:
                bits = f"{c.bits}" + (f" g{c.group_size}" if c.group_size else "")
                lines.append(f"| {c.layer} | {c.kind} | {c.ratio:.1%} | {c.pattern} | {bits} | {c.estimated_us:.1f} | "
                             f"{c.file_bytes} | {c.memory_bytes} | {100 * c.delta_accuracy:+.1f} pt | "
                             f"{'*' if c.chosen else ''} |")
        checked = [c for c in self.candidates if c.predicted_speedup is not None]
        if checked:
            lines += ["", "Cost model check (chosen candidates: the layers each changes, with and without it):", "",
                      "| candidate | layers timed | predicted speed-up | measured speed-up | error |",
                      "|---|---|---|---|---|"]
            for c in checked:
                pred = float(c.predicted_speedup or 0.0)
                meas = "–" if c.measured_speedup is None else f"{c.measured_speedup:.2f}x"
                err = "–" if c.measured_speedup is None else f"{100 * (pred / c.measured_speedup - 1):+.0f}%"
                lines.append(f"| {_candidate_label(c)} | {c.timed_layers} | {pred:.2f}x | {meas} | {err} |")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> None:
        """Draw the accuracy-latency-size front of the candidates considered, as a PNG at ``path``.

        Two panels: accuracy change (alone, before fine-tuning) against the cost model's
        latency, and against the file size, of the model with each candidate alone; the
        points no other candidate beats on both axes are joined (the front), the chosen ones
        ringed, and the final model marked. Needs matplotlib (an optional dependency).
        """
        plt = _pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        kinds = sorted({c.kind for c in self.candidates})
        for ax, key, label, final in ((axes[0], "estimated_us", "latency (µs, cost model)",
                                       1e6 * self.estimated_latency_s),
                                      (axes[1], "file_bytes", "file size (bytes)", float(self.nbytes))):
            for kind in kinds:
                cs = [c for c in self.candidates if c.kind == kind]
                ax.scatter([getattr(c, key) for c in cs], [100 * c.delta_accuracy for c in cs], s=18, label=kind)
            front = _front([(float(getattr(c, key)), 100 * c.delta_accuracy) for c in self.candidates])
            if front:
                ax.plot(*zip(*front), color="0.4", lw=1, label="front")
            chosen = [c for c in self.candidates if c.chosen]
            if chosen:
                ax.scatter([getattr(c, key) for c in chosen], [100 * c.delta_accuracy for c in chosen], s=80,
                           facecolors="none", edgecolors="k", label="chosen")
            ax.scatter([final], [100 * self.accuracy_change], marker="*", s=160, color="crimson",
                       label="compressed (fine-tuned)")
            ax.set_xlabel(label)
            ax.set_ylabel("accuracy change (pt)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"candidates on {self.profile}, batch {self.batch_size}")
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png", dpi=110)
        plt.close(fig)


def _candidate_label(c: Candidate) -> str:
    if c.kind == "shrink":
        return f"{c.layer}: shrink {c.ratio:.0%}"
    if c.kind == "heads":
        return f"{c.layer}: {c.channels_removed} of its heads removed"
    if c.kind == "sparse":
        return f"{c.layer}: {c.pattern} {c.ratio:.0%}"
    return f"{c.layer}: int4 " + (f"g{c.group_size}" if c.group_size else "per channel")


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other beats on both axes (lower x, higher y), by x."""
    best = -np.inf
    out = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            out.append((x, y))
            best = y
    return out


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or an ImportError that says how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib, an optional dependency: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class _GroupInt4FakeQuant:
    """Fake quantization of a weight on the per-group int4 grid :func:`hwreg_rs.runtime.convert`
    stores (:func:`hwreg_rs.int4.quantize_weight`, ``group_size`` inputs per scale), for training:
    the forward pass sees the weights the runtime will multiply by; the gradient passes straight
    through (the Linear layer's backward uses the raw weights' gradient)."""

    bits = 4

    def __init__(self, group_size: int) -> None:
        self.group_size = int(group_size)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return Int4Linear.from_float(np.asarray(w, np.float32), group_size=self.group_size).dequantized_weight()


_WEIGHTED = ("linear", "int4_linear", "sparse_linear", "conv2d", "group_conv2d")
_CONV_NOTE = "convolutions are stored and run dense int8 (the runtime has no sparse convolution kernel)"
# Bytes the file adds for a sparse layer besides its values and mask bits: a second array's
# 64-byte alignment and the longer JSON entry.
_SPARSE_FILE_EXTRA = 160


def _pattern_for(profile: profiles.HardwareProfile, size_budget: int | None) -> tuple[str, Any]:
    """The sparsity pattern to prune in, and its mask function: the one the profile's sparse
    kernels run best; for a size budget on a profile without sparse kernels, blocks (the
    file stores any pattern sparse), shaped by :func:`_block_shape`."""
    eff = profile.sparsity_patterns
    if "block" in eff and eff["block"] >= eff.get("unstructured", 0):
        pattern = "block"
    elif "unstructured" in eff:
        pattern = "unstructured"
    elif size_budget is not None:
        pattern = "block"
    else:
        return "dense", None
    if pattern == "block":
        return pattern, lambda w, amount: prune.block_mask(w, float(amount), block=_block_shape(w))
    return pattern, lambda w, amount: prune.magnitude_mask(w, float(amount))


def _block_shape(w: np.ndarray) -> tuple[int, int]:
    """The block to prune a weight ``(out, in)`` in: 16 outputs x 4 inputs, the int8 panel
    kernel's block (the one the profiles' "block" efficiency is measured on), for a layer with
    16 outputs or more; 1x8 for a narrower one, which a 16-row block would mostly pad."""
    return (16, 4) if w.shape[0] >= 16 else (1, 8)


def _file_bytes(rt: runtime.RuntimeModel) -> int:
    """Bytes of ``rt`` saved as a ``.hwreg`` file."""
    with tempfile.TemporaryDirectory(prefix="hwreg-size-") as d:
        return int(rt.save(os.path.join(d, "m.hwreg")))


def _float_file_bytes(model: Module) -> int:
    """Bytes of the float model's state dict saved with ``numpy.savez`` (its float file)."""
    with tempfile.TemporaryDirectory(prefix="hwreg-size-") as d:
        path = os.path.join(d, "float.npz")
        np.savez(path, **model.state_dict())  # type: ignore[arg-type]
        return os.path.getsize(path)


def _sparse_memory_bytes(k: int, n: int, sparsity: float, pattern: str) -> int:
    """Bytes of an int8 sparse (n, k) weight in memory: values with an int32 index per 1x8
    block (block pattern) or per value, plus about 16 B per row."""
    kept = k * n * (1.0 - sparsity)
    per_value = 1.0 + (4.0 / 8 if pattern == "block" else 4.0)
    return int(kept * per_value) + 16 * n + 4


def _activation_peak(rt: runtime.RuntimeModel, batch: int) -> int:
    """Peak live activation bytes of ``rt`` in its execution order (values are held as float32)."""
    shapes = rt.shapes(batch)
    sizes = {v: 4 * int(np.prod(sh)) for v, sh in shapes.items() if v not in rt.constants}
    return profiles.peak_activation_bytes([(n.inputs, n.outputs) for n in rt.nodes], sizes, inputs=rt.inputs,
                                          outputs=rt.outputs)


@dataclass(frozen=True)
class _Cost:
    latency_s: float
    file_bytes: int
    memory_bytes: int  # weights as the runtime holds them + peak live activations
    weight_bytes: int
    peak_activation_bytes: int


_Unit = tuple[str, Any]  # ("shrink", group layers), ("heads", block), ("sparse", layer name) or ("bits", layer name)

# Plans of the search the end falls back to, latest first, when the fine-tuned plan loses more accuracy
# than allowed (each costs a fine-tune); then the dense int8 model.
_MAX_ROLLBACKS = 3


@dataclass
class _Plan:
    """A plan the search stood on: the model it planned from (a round's recovered model), the sparsity
    and 4-bit layers earlier rounds trained into it, and the steps taken on it."""

    base: Any
    baked: dict[str, float]
    baked4: dict[str, int]
    state: dict[_Unit, Any]
    round: int

    def same(self, other: "_Plan") -> bool:
        return (self.base is other.base and self.baked == other.baked and self.baked4 == other.baked4
                and self.state == other.state)


def _roll_back(plans: Sequence[Any], run: Any, ok: Any) -> tuple[int, Any, list[Any]]:
    """Run ``plans`` in order until ``ok(run(plan))``: ``(index, its result, the results that failed
    before it)``. When none passes: ``(0, the first plan's result, every result)``."""
    failed = []
    for i, p in enumerate(plans):
        r = run(p)
        if ok(r):
            return i, r, failed
        failed.append(r)
    return 0, failed[0], failed


# A final plan past the accuracy allowance is fine-tuned once more, this many times as long, before the
# search rolls back to an earlier, less compressed plan (shrunk layers often need longer to recover).
_RECOVERY_EPOCHS_FACTOR = 3


def _unit_name(unit: _Unit) -> str:
    return "+".join(unit[1]) if unit[0] == "shrink" else str(unit[1])


# Each timed sample of a whole predict runs it for at least this long: a call timed alone carries the
# clock's own cost (two perf_counter reads and a lambda, 0.1-0.25 µs on a 2-vCPU VM), as much as the
# fixed cost of a batch-1 MLP predict, and would make a latency budget on such a model look unmeetable.
_PREDICT_SAMPLE_S = 2e-5


def _predict_seconds(rt: runtime.RuntimeModel, x: np.ndarray, repeats: int) -> float:
    """Median seconds of one ``rt.predict(x)``, in samples of several calls."""
    return median_seconds(lambda: rt.predict(x), repeats=repeats, min_seconds=_PREDICT_SAMPLE_S)


def compress(model: Module, data: Sequence[Any], *, profile: Any = "host", latency_budget: float | None = None,
             size_budget: int | None = None, max_accuracy_drop: float = 0.01, memory_budget: int | None = None,
             batch_size: int = 1, input_shape: Sequence[int] | None = None,
             sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
             shrink_ratios: Sequence[float] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75), importance: str = "l1",
             fine_tune_epochs: int = 8, lr: float = 5e-4, seed: int = 0, raise_on_miss: bool = True,
             verbose: bool = False, profile_repeats: int = 15,
             search_rounds: int = 3, weight_bits: Sequence[int] = (8, 4),
             int4_group_sizes: Sequence[int] = (32, 64, 128),
             plot: str | os.PathLike | None = None) -> tuple[runtime.RuntimeModel, CompressionReport]:
    """Compress ``model`` into an int8 runtime model that fits a budget on ``profile``.

    Parameters
    ----------
    model : hwreg_rs.nn.Module
        A trained model (not modified; a copy is fine-tuned).
    data : (X_train, y_train, X_val, y_val)
        Fine-tuning data and the held-out data every decision and the final
        accuracy are measured on (a :class:`hwreg_rs.data.Split` fits).
    profile : HardwareProfile, preset name or "host", default "host"
        The target. Latency is estimated with its cost model; on "host" the
        result is also measured, and the budget is judged on the measurement.
        Its ``mem_capacity_bytes`` is always a budget: the model's memory
        (weights + peak live activations at ``batch_size``) must fit it.
    latency_budget : float, optional
        Seconds per batch of ``batch_size`` on the profile.
    size_budget : int, optional
        Bytes of the saved ``.hwreg`` file (weights, scales, biases, sparse
        masks and the file's own header and layer list).
    max_accuracy_drop : float, default 0.01
        Largest allowed accuracy loss against the float model (0.01 = 1 point).
    memory_budget : int, optional
        Bytes of memory while running: the weights as the runtime holds them
        plus the largest sum of activations live at once (float32 values, in
        execution order; :func:`hwreg_rs.profiles.peak_activation_bytes`).
        The profile's ``mem_capacity_bytes`` applies as well.
    batch_size : int, default 1
    input_shape : sequence of int, optional
        One sample's shape (default: ``X_val.shape[1:]``).
    sparsities : sequence of float
        Sparsity levels the planner may choose for a Linear layer (stored
        sparse from 0.5).
    shrink_ratios : sequence of float
        Fractions of a channel group's prunable channels the planner may
        remove (:func:`hwreg_rs.prune.shrink`); empty for none.
    importance : {"l1", "l2", "bn"}, default "l1"
        How channels to remove are ranked (see :mod:`hwreg_rs.shrink`).
    fine_tune_epochs, lr, seed : fine-tuning settings
    raise_on_miss : bool, default True
        Raise :class:`BudgetError` when a budget is missed.
    verbose : bool, default False
    profile_repeats : int, default 15
        Repeats of each timing (the whole model, and each layer with
        :meth:`~hwreg_rs.runtime.RuntimeModel.profile`).
    search_rounds : int, default 3
        Rounds of the search: when the accuracy allowance is spent before the
        budgets hold, the plan so far is applied and briefly fine-tuned
        (``fine_tune_epochs // 3`` epochs) and the search goes on from there.
    weight_bits : sequence of {8, 4}, default (8, 4)
        Weight widths a Linear layer may get; ``(8,)`` keeps every layer int8.
    int4_group_sizes : sequence of {32, 64, 128}, default (32, 64, 128)
        Per-group int4 candidates (inputs per scale along K) besides one scale
        per output channel; a group size is offered for a layer with more
        inputs than it. Empty: per channel only.
    plot : str or path, optional
        Write the accuracy-latency-size front of the candidates there as a PNG
        (:meth:`CompressionReport.plot`; needs matplotlib, checked first).

    Returns
    -------
    model : RuntimeModel
    report : CompressionReport

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> X, y = hw.data.make_classification(300, n_features=16, n_classes=3, seed=0)
    >>> net = hw.nn.mlp([16, 32, 3], rng=0)
    >>> _ = hw.fit(net, X[:200], y[:200], epochs=20, lr=0.01, verbose=False)
    >>> rt, rep = hw.compress(net, (X[:200], y[:200], X[200:], y[200:]), profile="x86-avx512-vnni",
    ...                         max_accuracy_drop=0.05, fine_tune_epochs=2)
    >>> rep.met, [l.name for l in rep.layers]
    (True, ['0', '2'])
    """
    if len(data) != 4:
        raise ValueError("data must be (X_train, y_train, X_val, y_val)")
    X_tr, y_tr, X_val, y_val = (np.asarray(a) for a in data)
    if not 0 <= max_accuracy_drop < 1:
        raise ValueError(f"max_accuracy_drop must lie in [0, 1); got {max_accuracy_drop!r}")
    if latency_budget is not None and not latency_budget > 0:
        raise ValueError(f"latency_budget must be > 0 seconds; got {latency_budget!r}")
    if size_budget is not None and not size_budget > 0:
        raise ValueError(f"size_budget must be > 0 bytes; got {size_budget!r}")
    if memory_budget is not None and not memory_budget > 0:
        raise ValueError(f"memory_budget must be > 0 bytes; got {memory_budget!r}")
    if any(not 0 < s < 1 for s in sparsities):
        raise ValueError(f"sparsities must lie in (0, 1); got {list(sparsities)}")
    if any(not 0 < r < 1 for r in shrink_ratios):
        raise ValueError(f"shrink_ratios must lie in (0, 1); got {list(shrink_ratios)}")
    if not (isinstance(search_rounds, int) and search_rounds >= 1):
        raise ValueError(f"search_rounds must be an int >= 1; got {search_rounds!r}")
    bits_ok = sorted({int(b) for b in weight_bits}) if all(
        isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in weight_bits) else []
    if 8 not in bits_ok or not set(bits_ok) <= {4, 8}:
        raise ValueError(f"weight_bits must hold 8 and optionally 4; got {list(weight_bits)!r}")
    if importance not in ("l1", "l2", "bn"):
        raise ValueError(f"importance must be 'l1', 'l2' or 'bn'; got {importance!r}")
    groups_ok = [int(g) for g in int4_group_sizes if isinstance(g, (int, np.integer)) and not isinstance(g, bool)]
    if len(groups_ok) != len(int4_group_sizes) or not set(groups_ok) <= {32, 64, 128}:
        raise ValueError(f"int4_group_sizes must hold 32, 64 or 128; got {list(int4_group_sizes)!r}")
    if plot is not None:
        _pyplot()  # fail before the work, not after it
    prof = profiles.resolve(profile)
    on_host = prof.name == "host"
    shape = tuple(input_shape) if input_shape is not None else tuple(X_val.shape[1:])
    x_batch = np.ascontiguousarray(np.resize(X_val, (batch_size,) + shape), dtype=np.float32)
    memory_limit = int(min(memory_budget or prof.mem_capacity_bytes, prof.mem_capacity_bytes))

    work_model = copy.deepcopy(model).eval()
    float_acc = evaluate(work_model, X_val, y_val)["accuracy"]
    float_lat = numpy_seconds(lambda: work_model(x_batch), repeats=profile_repeats)
    float_bytes = _float_file_bytes(work_model)

    dense_rt = runtime.convert(work_model, input_shape=shape, sparse="never")
    node_names = {n.name for n in dense_rt.nodes}
    modules_of = lambda m: dict(m.named_modules())  # noqa: E731
    modules = modules_of(work_model)
    kinds = {name: ("linear" if isinstance(m, Linear) else "conv2d") for name, m in modules.items()
             if name in node_names and isinstance(m, (Linear, Conv2d))}
    out_channels = {name: int(modules[name].weight.data.shape[0]) for name in kinds}
    pattern, mask_fn = _pattern_for(prof, size_budget)
    stores_sparse = size_budget is not None or not on_host  # convert's "always"; else the chooser decides
    fixed_s = 0.0  # predict's own cost besides its layers (input checks, the native calls), measured on the host
    if on_host:
        # Fold the machine's load into the profile: scale it to the dense model's layers as predict runs
        # them, and measure the rest of a predict call apart (it does not shrink with the layers).
        node_s = sum(dense_rt.profile(x_batch, repeats=profile_repeats).values())
        prof = prof.calibrated(dense_rt.layer_work(batch_size), node_s)
        fixed_s = max(0.0, _predict_seconds(dense_rt, x_batch, profile_repeats) - node_s)

    base = work_model  # what a round of the search plans from: the model, then each round's recovered one
    baked: dict[str, float] = {}  # sparsity earlier rounds already pruned into ``base``
    baked4: dict[str, int] = {}  # layers earlier rounds already trained at 4 bits: inputs per scale

    def levers() -> tuple[dict[_Unit, list[Any]], dict[_Unit, int]]:
        """The levers of ``base``, one unit each with its levels: a channel group to shrink (a
        smaller dense model: its cost and file are exact), a Linear layer to prune and store
        sparse (its file bytes modelled, then checked)."""
        levels: dict[_Unit, list[Any]] = {}
        prunable: dict[_Unit, int] = {}
        if shrink_ratios:
            try:
                groups = prune.shrink_plan(base, remove={}, input_shape=shape).groups
            except (ValueError, TypeError, NotImplementedError):
                groups = []  # a model the dependency pass cannot follow is not shrunk
            for grp in groups:
                counts = sorted({int(round(r * grp.prunable)) for r in shrink_ratios} - {0})
                if grp.prunable and counts and all(n in kinds for n in grp.layers):
                    levels[("shrink", grp.layers)] = counts
                    prunable[("shrink", grp.layers)] = grp.prunable
            try:
                blocks = shrink_mod.attention_heads(base, input_shape=shape)
            except (ValueError, TypeError, NotImplementedError):
                blocks = []
            for blk in blocks:  # whole heads of an attention block (at least one stays)
                counts = sorted({min(int(round(r * blk.heads)), blk.heads - 1) for r in shrink_ratios} - {0})
                if counts:
                    levels[("heads", blk.scores)] = counts
                    prunable[("heads", blk.scores)] = blk.heads
        if mask_fn is not None:
            for name, kind in kinds.items():
                if kind == "linear" and name not in baked4:
                    levels[("sparse", name)] = sorted({float(sp) for sp in sparsities
                                                       if sp >= 0.5 and sp > baked.get(name, 0.0)})
        if 4 in bits_ok:  # no sparse int4 storage: a pruned layer stays at 8 bits
            mods = modules_of(base)
            for name, kind in kinds.items():
                if kind == "linear" and name not in baked and name not in baked4:
                    # Inputs per scale, the most scales first; the layer's K itself is one scale per channel.
                    k = int(mods[name].weight.data.shape[1])
                    levels[("bits", name)] = sorted({g for g in groups_ok if g < k} | {k})
        return {u: v for u, v in levels.items() if v}, prunable

    def four_bit(state: dict[_Unit, Any]) -> dict[str, int]:
        """The 4-bit layers and their inputs per scale (their K: one scale per output channel)."""
        return {**baked4, **{u[1]: lvl for u, lvl in state.items() if u[0] == "bits"}}

    def group_of(m: Module, name: str, per_scale: int) -> int | None:
        return None if per_scale >= int(modules_of(m)[name].weight.data.shape[1]) else int(per_scale)

    def to_runtime(m: Module, **kw: Any) -> runtime.RuntimeModel:
        """``m`` converted; a per-group int4 layer from its raw weights (its training grid is convert's)."""
        groups = {n: fq.group_size for n, mod in modules_of(m).items()
                  if isinstance(fq := getattr(mod, "weight_fake_quant", None), _GroupInt4FakeQuant)}
        if not groups:
            return runtime.convert(m, input_shape=shape, **kw)
        m = copy.deepcopy(m)
        mods = modules_of(m)
        for n in groups:
            mods[n].weight_fake_quant = None
        return runtime.convert(m, input_shape=shape, int4_group_size=dict(groups), **kw)

    def excluded(u: _Unit, state: dict[_Unit, Any]) -> bool:
        """A step the runtime cannot store: pruning a 4-bit layer, or 4 bits for a pruned one."""
        if u[0] == "bits":
            return ("sparse", u[1]) in state
        return u[0] == "sparse" and ("bits", u[1]) in state

    def build(state: dict[_Unit, Any]) -> Module:
        counts = {u[1]: c for u, c in state.items() if u[0] == "shrink"}
        m = (prune.shrink_plan(base, remove=counts, input_shape=shape, importance=importance).apply()
             if counts else copy.deepcopy(base))
        heads = {u[1]: c for u, c in state.items() if u[0] == "heads"}
        if heads:
            m = shrink_mod.shrink_heads(m, remove=heads, importance="l2" if importance == "l2" else "l1",
                                        input_shape=shape)
        mods = modules_of(m)
        for u, sp in state.items():
            if u[0] == "sparse":
                w = mods[u[1]].weight
                w.data = w.data * mask_fn(w.data, sp)
        for name, per_scale in four_bit(state).items():  # the 4-bit grid convert keeps
            group = group_of(m, name, per_scale)
            fq = mods[name].weight_fake_quant
            if group is not None:
                if getattr(fq, "group_size", None) != group:
                    mods[name].weight_fake_quant = _GroupInt4FakeQuant(group)
            elif not (isinstance(fq, C.WeightFakeQuant) and fq.bits == 4):
                mods[name].weight_fake_quant = C.WeightFakeQuant(4)
        return m.eval()

    dense_cache: dict[Any, tuple[list[profiles.LayerWork], dict[str, int], dict[str, tuple[int, int]], int, int]] = {}
    size_offset = [0]  # the sparse file-size model's error, learnt from exact sizes of planned models

    def cost(state: dict[_Unit, Any]) -> _Cost:
        key = tuple(sorted((u[0], u[1], c) for u, c in state.items() if u[0] != "sparse"))
        if key not in dense_cache:
            m = build({u: c for u, c in state.items() if u[0] != "sparse"})
            rt = to_runtime(m, sparse="never")
            mods = modules_of(m)
            dims = {n: (int(np.prod(mods[n].weight.data.shape[1:])), int(mods[n].weight.data.shape[0]))
                    for n in kinds}
            dense_cache[key] = (rt.layer_work(batch_size), {n.name: i for i, n in enumerate(rt.nodes)}, dims,
                                _file_bytes(rt), _activation_peak(rt, batch_size))
        work0, index, dims, size, peak = dense_cache[key]
        work = list(work0)
        pruned = {**baked, **{u[1]: sp for u, sp in state.items() if u[0] == "sparse"}}
        for name, sp in pruned.items():
            k, n = dims[name]
            i = index[name]
            w = work[i]
            work[i] = profiles.LayerWork(w.name, w.kind, w.macs, _sparse_memory_bytes(k, n, sp, pattern),
                                         w.act_in_bytes, w.act_out_bytes, "int8", density=1 - sp, pattern=pattern,
                                         gemm=w.gemm, sparse_kernel=True if stores_sparse else None)
            size += int(round((1 - sp) * k * n)) + (k * n + 7) // 8 + _SPARSE_FILE_EXTRA - k * n
        if pruned:
            size += size_offset[0]
        est = profiles.estimate(work, prof, activation_peak=peak)
        return _Cost(est.latency_s + fixed_s, size, est.memory_bytes, est.weight_bytes, peak)

    def misses_of(c: _Cost) -> dict[str, tuple[float, float]]:
        out = {}
        if latency_budget is not None and c.latency_s > latency_budget:
            out["latency"] = (c.latency_s, latency_budget)
        if size_budget is not None and c.file_bytes > size_budget:
            out["size"] = (float(c.file_bytes), float(size_budget))
        if c.memory_bytes > memory_limit:
            out["memory"] = (float(c.memory_bytes), float(memory_limit))
        return out

    def gain(c0: _Cost, c1: _Cost) -> float:
        """Relative saving on every budget ``c0`` misses."""
        got = {"latency": c1.latency_s, "size": c1.file_bytes, "memory": c1.memory_bytes}
        return sum((was - got[k]) / max(was, 1e-12) for k, (was, _) in misses_of(c0).items())

    def accuracy(m: Module) -> float:
        return float(evaluate(m, X_val, y_val)["accuracy"])

    def fine_tune(m: Module, pruned: dict[str, tuple[float, float]], epochs: int, four: dict[str, int]) -> Module:
        """Train ``m`` under the hard constraints: each pruned layer's sparsity from its first to
        its second figure (gradually; held where equal), weight QAT at 4 bits on the layers in
        ``four`` (a per-group layer on its own per-group grid, set by ``build``) and 8 bits on
        the others."""
        m.train()
        steps_per_epoch = max(1, int(np.ceil(len(X_tr) / 32)))
        end = max(1, steps_per_epoch * max(1, epochs - 2))
        per_channel = sorted(n for n, ps in four.items() if group_of(m, n, ps) is None)
        qat = [C.QAT(weight_bits=bits, activation_bits=None, layers=sel) for bits, sel in (
            (4, per_channel), (8, [n for n in kinds if n not in four])) if sel]
        cons: list[Any] = [C.GradualPruning(final, initial_sparsity=first, end_step=end,
                                            frequency=max(1, end // 10), mask_fn=mask_fn, params=[f"{name}.weight"])
                           for name, (first, final) in pruned.items()]
        Trainer(m, constraints=[*cons, *qat], epochs=epochs, lr=lr, seed=seed, verbose=verbose).fit(X_tr, y_tr)
        return m.eval()

    final_sparse = "always" if stores_sparse else "auto"

    def check_speedup(cand: Candidate, alone: dict[_Unit, Any]) -> None:
        """The cost model's speed-up of the layers ``alone`` changes, and on the host the measured one."""
        check = profiles.speedup_check(to_runtime(build({}), sparse="never", batch_size=batch_size),
                                       to_runtime(build(alone), sparse=final_sparse, batch_size=batch_size),
                                       x_batch, prof, measure=on_host, repeats=profile_repeats)
        if check is not None:
            cand.timed_layers = "+".join(check.layers)
            cand.predicted_speedup, cand.measured_speedup = check.predicted, check.measured

    # Single-step drops are measured before fine-tuning, which wins much back: allow more here.
    allowance = 3 * max_accuracy_drop + 0.01
    candidates: list[Candidate] = []
    steps: list[dict[str, Any]] = []
    state: dict[_Unit, Any] = {}
    floor_s: float | None = None  # the cost model's latency with every useful lever at its last level
    # Every plan the search stood on, in order (a round's recovered model and each step it kept): what
    # the end falls back to when the fine-tuned plan loses more than the allowance.
    plans: list[_Plan] = []

    def snapshot(rnd: int) -> None:
        plans.append(_Plan(base, dict(baked), dict(baked4), dict(state), rnd))

    def restore(p: _Plan) -> None:
        nonlocal base, baked, baked4
        base, baked, baked4 = p.base, dict(p.baked), dict(p.baked4)
        dense_cache.clear()

    cand_keys: dict[int, tuple[_Unit, Any]] = {}  # id of a Candidate -> its (unit, level)
    for rnd in range(search_rounds):
        levels, prunable = levers()
        dense_cache.clear()
        size_offset[0] = 0
        state = {}
        base_cost = cost(state)
        snapshot(rnd)
        if not misses_of(base_cost):
            break
        # Only levers that make a missed budget smaller are worth an accuracy measurement.
        useful = [u for u in levels if gain(base_cost, cost({u: levels[u][-1]})) > 1e-4]
        if latency_budget is not None and size_budget is None:
            # A latency budget alone: pay accuracy for a sparse pattern only where the profile's kernel is faster.
            def faster(u: _Unit) -> bool:
                w = np.asarray(modules_of(base)[u[1]].weight.data, np.float32)
                mask = mask_fn(w, levels[u][-1])
                return not sparse.choose(w * mask, mask, batch_size, dtypes=("int8",), profile=prof,
                                         verify=False).path.startswith("dense")
            useful = [u for u in useful if u[0] != "sparse" or faster(u)]
        if rnd == 0 and latency_budget is not None and useful:
            # What the levers could give at most (a layer is pruned or 4-bit, never both): the fixed and
            # per-layer costs do not shrink, so a budget below this is out of reach whatever accuracy is paid.
            floor_s = min(cost({u: levels[u][-1] for u in useful if u[0] != other}).latency_s
                          for other in ("sparse", "bits"))
        drop: dict[tuple[_Unit, Any], float] = {}  # accuracy lost against the float model, each candidate alone
        base_drop = max(0.0, float_acc - accuracy(base))
        round_cands: dict[tuple[_Unit, Any], Candidate] = {}
        for u in useful:
            drop[(u, None)] = base_drop
            for j, lvl in enumerate(levels[u]):
                c = cost({u: lvl})
                drop[(u, lvl)] = max(0.0, float_acc - accuracy(build({u: lvl})))
                shrinks = u[0] in ("shrink", "heads")
                ratio = lvl / prunable[u] if shrinks else 0.0 if u[0] == "bits" else float(lvl)
                round_cands[(u, lvl)] = Candidate(
                    _unit_name(u), u[0], ratio, pattern if u[0] == "sparse" else "dense",
                    4 if u[0] == "bits" else 8, 1e6 * c.latency_s, c.file_bytes, c.memory_bytes,
                    -drop[(u, lvl)], channels_removed=lvl if shrinks else 0, round=rnd,
                    group_size=group_of(base, u[1], lvl) if u[0] == "bits" else None)
                cand_keys[id(round_cands[(u, lvl)])] = (u, lvl)
                if drop[(u, lvl)] > allowance:  # alone past the allowance: the levels beyond are not tried
                    levels[u] = levels[u][:j]
                    break
        candidates += round_cands.values()
        useful = [u for u in useful if levels[u]]
        stopped: set[_Unit] = set()
        for _ in range(4):
            while misses_of(now := cost(state)):
                options = []
                for u in useful:
                    cur = state.get(u)
                    nxt = next((lv for lv in levels[u] if cur is None or lv > cur), None)
                    if u in stopped or nxt is None or excluded(u, state):
                        continue
                    saving = gain(now, cost({**state, u: nxt}))
                    if saving > 1e-4:
                        options.append((saving / (max(drop[(u, nxt)] - drop[(u, cur)], 0.0) + 1e-3), u, nxt))
                took = False
                for _score, u, nxt in sorted(options, key=lambda o: -o[0]):
                    trial = {**state, u: nxt}
                    acc = accuracy(build(trial))
                    ok = float_acc - acc <= allowance
                    steps.append({"round": rnd, "layer": _unit_name(u), "kind": u[0], "level": nxt,
                                  "accuracy": acc, "kept": ok})
                    if ok:
                        state, took = trial, True
                        snapshot(rnd)
                        break
                    stopped.add(u)  # rolled back: this lever goes no further
                if not took:
                    break  # the allowance is spent: recover (below) or report the miss
            if size_budget is None or misses_of(cost(state)) or not (baked or any(u[0] == "sparse" for u in state)):
                break
            # The plan fits by the model: check the file it makes, and correct the model if it is off.
            exact = _file_bytes(to_runtime(build(state), sparse="always", batch_size=batch_size))
            size_offset[0] += exact - cost(state).file_bytes
            if exact <= size_budget:
                break
        if size_budget is None:
            # A latency budget alone: keep a pruned layer only where the sparse kernel really is faster.
            trial_model = build(state)
            for u in [u for u in state if u[0] == "sparse"]:
                w = np.asarray(modules_of(trial_model)[u[1]].weight.data, np.float32)
                mask = w != 0
                if sparse.choose(w, mask, batch_size, dtypes=("int8",), profile=prof).path.startswith("dense"):
                    del state[u]
        for key, cand in round_cands.items():
            cand.chosen = state.get(key[0]) == key[1]
            if cand.chosen:  # check the cost model on it, while its round's model is at hand
                check_speedup(cand, {key[0]: key[1]})
        if not state or not misses_of(cost(state)) or rnd == search_rounds - 1:
            break
        # The allowance is spent before the budgets hold: apply the plan, win accuracy back with a short
        # fine-tune under the hard constraints, and search again from the recovered model.
        pruned_now = {u[1]: sp for u, sp in state.items() if u[0] == "sparse"}
        held = {name: (sp, sp) for name, sp in {**baked, **pruned_now}.items()}
        base = fine_tune(build(state), held, max(1, fine_tune_epochs // 3), four_bit(state))
        baked.update(pruned_now)
        baked4.update(four_bit(state))
        state = {}

    def fine_tunes(state: dict[_Unit, Any]) -> bool:
        """Whether ``finish`` fine-tunes: a plan with steps, or one on a recovered model (not the dense one)."""
        return bool(state) or base is not work_model

    def finish(state: dict[_Unit, Any], epochs: int = fine_tune_epochs,
               ) -> tuple[Module, runtime.RuntimeModel, float, dict[str, float]]:
        """The plan applied to ``base``: shrunk first (the sparse levels ramp up while fine-tuning,
        from what earlier rounds pruned), fine-tuned for ``epochs``, converted; with its held-out accuracy."""
        tuned = build({u: c for u, c in state.items() if u[0] != "sparse"})
        plan = {**baked, **{u[1]: sp for u, sp in state.items() if u[0] == "sparse"}}
        if fine_tunes(state):
            tuned = fine_tune(tuned, {name: (baked.get(name, 0.0), sp) for name, sp in plan.items()},
                              epochs, four_bit(state))
        rt = to_runtime(tuned, sparse=final_sparse, batch_size=batch_size)
        return tuned, rt, float(np.mean(rt.predict(X_val).argmax(axis=1) == y_val)), plan

    notes: list[str] = []
    if floor_s is not None and latency_budget is not None and floor_s > latency_budget:
        notes.append(f"the latency budget {1e6 * latency_budget:.3g} µs is below the cost model's floor "
                     f"{1e6 * floor_s:.3g} µs (every useful lever at its last level): out of reach whatever accuracy "
                     "is paid; the search went toward the floor within the accuracy allowance only")
    final = _Plan(base, dict(baked), dict(baked4), dict(state), rnd)
    earlier: list[_Plan] = []
    for p in reversed(plans):  # the plans the search stood on, latest first, each once
        if not p.same(final) and not any(p.same(q) for q in earlier):
            earlier.append(p)
    dense_plan = _Plan(work_model, {}, {}, {}, 0)  # the dense int8 model: no step at all
    tried = [final] + [p for p in earlier[:_MAX_ROLLBACKS] if not p.same(dense_plan)] + [dense_plan]
    longer_epochs = _RECOVERY_EPOCHS_FACTOR * fine_tune_epochs
    retried: list[tuple[float, float]] = []  # the final plan's losses after its first and its longer fine-tune

    def within(r: tuple[Any, ...]) -> bool:
        return float_acc - r[2] <= max_accuracy_drop + 1e-12

    def attempt(p: _Plan) -> tuple[Module, runtime.RuntimeModel, float, dict[str, float]]:
        restore(p)
        r = finish(p.state)
        if p is final and not within(r) and fine_tunes(p.state):
            # The search's plan is what the budgets asked for: before giving it up for a smaller one, give the
            # fine-tune longer to win the accuracy back (the first fine-tune is sized for speed, not recovery).
            restore(p)
            longer = finish(p.state, longer_epochs)
            retried.append((float_acc - r[2], float_acc - longer[2]))
            if within(longer):
                return longer
        return r

    picked, (tuned, rt, acc, plan), failed = _roll_back(tried, attempt, within)
    recovered = bool(retried) and retried[0][1] <= max_accuracy_drop + 1e-12
    if recovered:
        notes.append(f"the fine-tuned plan lost {100 * retried[0][0]:.2f} pt > the allowance "
                     f"{100 * max_accuracy_drop:.2f} pt after {fine_tune_epochs} epochs; fine-tuned again for "
                     f"{longer_epochs} epochs it loses {100 * retried[0][1]:.2f} pt: kept")
    restore(tried[picked])
    losses = [float_acc - r[2] for r in failed]
    if picked > 0:
        back = tried[picked]
        state = back.state
        notes.append(f"rolled back: the fine-tuned plan lost {100 * losses[0]:.2f} pt > the allowance "
                     f"{100 * max_accuracy_drop:.2f} pt" + (
                         f" ({100 * retried[0][1]:.2f} pt fine-tuned {longer_epochs} epochs)"
                         if retried else "") + "; " + (
                         f"{picked - 1} later plan(s) of the search also did ({', '.join(f'{100 * v:.2f}' for v in losses[1:])}"
                         " pt); " if picked > 1 else "") +
                     ("kept the dense int8 model" if not back.state and back.base is work_model else
                      f"kept the search's plan from round {back.round} with {len(back.state)} step(s) "
                      f"({', '.join(f'{_unit_name(u)} {u[0]} {lvl}' for u, lvl in back.state.items()) or 'its recovered model'})")
                     + f", which loses {100 * (float_acc - acc):.2f} pt")
        for cand in candidates:  # the chosen candidates are the kept plan's
            if cand.round > back.round or back is dense_plan:
                cand.chosen = False
            elif cand.round == back.round:
                unit, lvl = cand_keys[id(cand)]
                was = cand.chosen
                cand.chosen = back.state.get(unit) == lvl
                if cand.chosen and not was:
                    check_speedup(cand, {unit: lvl})
            if not cand.chosen:
                cand.predicted_speedup = cand.measured_speedup = None
                cand.timed_layers = ""
    elif failed:
        notes.append(f"no plan is within the allowance {100 * max_accuracy_drop:.2f} pt: the fine-tuned plan lost "
                     f"{100 * losses[0]:.2f} pt, the dense int8 model {100 * losses[-1]:.2f} pt; kept the plan")
    est = profiles.estimate(rt.layer_work(batch_size), prof, activation_peak=_activation_peak(rt, batch_size))
    measured = _predict_seconds(rt, x_batch, profile_repeats)
    per_node = rt.profile(x_batch, repeats=profile_repeats)
    file_bytes = _file_bytes(rt)
    tuned_modules = modules_of(tuned)
    layers = []
    for i, node in enumerate(rt.nodes):
        op: Any = node.op
        if op.kind not in _WEIGHTED:
            continue
        sp = plan.get(node.name, 0.0)
        if op.kind == "sparse_linear":
            kept, path = float(op.matrix.density), op.path
            stored = "n:m" if path.startswith("nm") else "block" if path.startswith("bsr") else "unstructured"
        elif op.kind == "int4_linear":
            q = op.layer.int_weight()
            kept, stored = float(np.count_nonzero(q)) / max(q.size, 1), "dense"
        else:
            q = op.layer.weight_q
            kept, stored = float(np.count_nonzero(q)) / max(q.size, 1), "dense"
        note = _CONV_NOTE if "conv" in op.kind else ""
        if sp and stored == "dense":
            note = "pruned, stored dense: the chooser measured dense int8 faster here"
        if op.kind == "int4_linear" and not prof.int4_speedup:
            note = "int4 weights: the profile has no int4 kernel figure, costed as int8 compute plus an unpack"
        removed = 0.0
        if node.name in out_channels and node.name in tuned_modules:
            removed = 1.0 - tuned_modules[node.name].weight.data.shape[0] / out_channels[node.name]
        # The last chosen candidate of the layer: its accuracy change alone, before fine-tuning.
        delta = next((c.delta_accuracy for c in reversed(candidates)
                      if c.chosen and node.name in c.layer.split("+")), None)
        layers.append(LayerReport(
            group_size=op.layer.group_size if op.kind == "int4_linear" else None,
            name=node.name, op=op.kind, bits=4 if op.kind == "int4_linear" else 8, sparsity=1.0 - kept,
            pattern=stored,
            nbytes=int(sum(a.nbytes for a in op.arrays().values())),
            estimated_us=1e6 * est.layers[i].latency_s, measured_us=1e6 * per_node[node.name],
            delta_accuracy=delta, note=note, channels_removed=removed))
    judged_latency = measured if on_host else est.latency_s
    misses = []
    if latency_budget is not None and judged_latency > latency_budget:
        floor = (f" (out of reach: every lever at its last level costs {1e6 * floor_s:.3g} µs by the cost model)"
                 if floor_s is not None and floor_s > latency_budget else "")
        misses.append(f"latency {1e6 * judged_latency:.3g} µs > {1e6 * latency_budget:.3g} µs{floor}")
    if size_budget is not None and file_bytes > size_budget:
        misses.append(f"size {file_bytes} B > {size_budget} B")
    if est.memory_bytes > memory_limit:
        misses.append(f"memory {est.memory_bytes} B (weights + peak activations) > {memory_limit} B")
    if float_acc - acc > max_accuracy_drop + 1e-12:
        misses.append(f"accuracy drop {100 * (float_acc - acc):.2f} pt > {100 * max_accuracy_drop:.2f} pt")
    other_us = max(0.0, 1e6 * measured - sum(l.measured_us for l in layers))
    report = CompressionReport(prof.name, batch_size, latency_budget, size_budget, max_accuracy_drop, float_acc, acc,
                               float_lat, measured, est.latency_s + fixed_s, float_bytes, file_bytes, not misses, misses, layers,
                               other_us, memory_budget_bytes=memory_budget, memory_limit_bytes=memory_limit,
                               weight_bytes=est.weight_bytes, peak_activation_bytes=est.peak_activation_bytes,
                               memory_bytes=est.memory_bytes, candidates=candidates, steps=steps, notes=notes)
    if plot is not None:
        report.plot(plot)
    if misses and raise_on_miss:
        raise BudgetError("compression missed its budget: " + "; ".join(misses), report)
    return rt, report
