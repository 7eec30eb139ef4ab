"""Budget-driven compression: a trained model and a target in, a runtime model that fits out.

:func:`compress` measures how sensitive each layer is to pruning
(:func:`hwreg_rs.analysis.sensitivity`), plans per-layer sparsity in a
pattern the target's kernels exploit until the cost model says the latency and
size budgets hold, fine-tunes under the training loop's hard constraints
(gradual pruning with that pattern, 8-bit weight fake quantization), converts
to an int8 :class:`~hwreg_rs.runtime.RuntimeModel`, measures the result and
reports, layer by layer (by the model's own layer names), what it chose and
what it got. A missed budget raises :class:`BudgetError` (carrying the report)
unless told not to.

It plans with the storage format :func:`hwreg_rs.runtime.convert` will use and
the one cost model (:func:`hwreg_rs.profiles.estimate`):

* a size budget counts the bytes of the saved ``.hwreg`` file; a pruned Linear
  layer is stored sparse (its kept values plus one bit per weight), so the
  file really shrinks;
* a latency budget prunes a layer only where the profile's sparse kernel for
  the pattern is faster than dense int8 (checked with
  :func:`hwreg_rs.sparse.choose` before any accuracy is spent);
* convolutions are candidates too, but the runtime stores and runs them dense
  (there is no sparse convolution kernel): pruning one shrinks neither the
  file nor the time, so the planner counts them at their dense int8 cost and
  the report says so.

All weights are stored as int8: per-layer bit widths below 8 would only pay
on hardware with sub-byte kernels, which none of our runtimes has.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from . import analysis, constraints as C, profiles, prune, runtime, sparse
from ._timing import median_seconds, numpy_seconds
from .nn.conv import Conv2d
from .nn.layers import Linear
from .nn.module import Module
from .train import Trainer, evaluate

__all__ = ["BudgetError", "CompressionReport", "LayerReport", "compress"]


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
    delta_accuracy: float | None  # from the sensitivity analysis, before fine-tuning
    note: str = ""


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

    @property
    def accuracy_change(self) -> float:
        return self.accuracy - self.float_accuracy

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy_change"] = self.accuracy_change
        return d

    def markdown(self) -> str:
        """The per-layer table and a summary line."""
        lines = ["| layer | op | bits | sparsity | pattern | bytes | est. µs | measured µs | Δacc (sens.) |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in self.layers:
            d = "–" if r.delta_accuracy is None else f"{100 * r.delta_accuracy:+.1f} pt"
            lines.append(f"| {r.name} | {r.op} | {r.bits or '–'} | {r.sparsity:.0%} | {r.pattern} | {r.nbytes} | "
                         f"{r.estimated_us:.1f} | {r.measured_us:.1f} | {d} |")
        lines.append(f"| (other: pools, views, predict itself) | – | – | – | – | – | – | {self.other_us:.1f} | – |")
        notes = sorted({r.note for r in self.layers if r.note})
        budget = []
        if self.latency_budget_s is not None:
            budget.append(f"latency ≤ {1e6 * self.latency_budget_s:.0f} µs")
        if self.size_budget_bytes is not None:
            budget.append(f"size ≤ {self.size_budget_bytes} B")
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
        lines += [f"note: {n}" for n in notes]
        return "\n".join(lines)


_WEIGHTED = ("linear", "sparse_linear", "conv2d", "group_conv2d")
_CONV_NOTE = "convolutions are stored and run dense int8 (the runtime has no sparse convolution kernel)"
# Bytes the file adds for a sparse layer besides its values and mask bits: a second array's
# 64-byte alignment and the longer JSON entry.
_SPARSE_FILE_EXTRA = 160


def _pattern_for(profile: profiles.HardwareProfile, size_budget: int | None) -> tuple[str, Any]:
    """The sparsity pattern to prune in, and its mask function: the one the profile's sparse
    kernels run best; for a size budget on a profile without sparse kernels, 1x8 blocks (the
    file stores any pattern sparse)."""
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
        return pattern, lambda w, amount: prune.block_mask(w, float(amount), block=(1, 8))
    return pattern, lambda w, amount: prune.magnitude_mask(w, float(amount))


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


def _greedy(plan: dict[str, float], names: list[str], levels: list[float], sens: dict[tuple[str, float], float],
            cost: Any, fits: Any, sparse_in_runtime: Any, latency_budget: float | None, size_budget: int | None,
            drop_allowance: float) -> None:
    """Extend ``plan`` step by step (one layer one sparsity level further) until it fits:
    each time the step with the most estimated saving per point of accuracy lost, while the
    summed single-layer drops stay within ``drop_allowance``."""
    while not fits(plan):
        lat0, size0 = cost(plan)
        spent = sum(max(0.0, -sens.get((n, s), 0.0)) for n, s in plan.items())
        best = None
        for name in names:
            cur = plan.get(name, 0.0)
            nxt = next((s for s in levels if s > cur), None)
            if nxt is None:
                continue
            lat1, size1 = cost({**plan, name: nxt})
            gain = 0.0
            if latency_budget is not None and lat0 > latency_budget:
                gain += (lat0 - lat1) / max(lat0, 1e-12)
            if size_budget is not None and size0 > size_budget:
                gain += (size0 - size1) / max(size0, 1)
            drop = max(0.0, -sens.get((name, nxt), 0.0))
            extra = drop - max(0.0, -sens.get((name, cur), 0.0))
            # A step below the storage threshold (half pruned) saves nothing yet but leads to one.
            leads = not sparse_in_runtime(name, nxt) and any(sparse_in_runtime(name, s) for s in levels)
            if (gain < 1e-3 and not leads) or spent + extra > drop_allowance:
                continue
            score = (gain + (1e-4 if leads else 0.0)) / (drop + 1e-3)
            if best is None or score > best[0]:
                best = (score, name, nxt)
        if best is None:
            break  # the budget cannot be met within the accuracy allowance: reported below
        plan[best[1]] = best[2]


def compress(model: Module, data: Sequence[Any], *, profile: Any = "host", latency_budget: float | None = None,
             size_budget: int | None = None, max_accuracy_drop: float = 0.01, batch_size: int = 1,
             input_shape: Sequence[int] | None = None, sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
             fine_tune_epochs: int = 8, lr: float = 5e-4, seed: int = 0, raise_on_miss: bool = True,
             verbose: bool = False, profile_repeats: int = 15) -> tuple[runtime.RuntimeModel, CompressionReport]:
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
    latency_budget : float, optional
        Seconds per batch of ``batch_size`` on the profile.
    size_budget : int, optional
        Bytes of the saved ``.hwreg`` file (weights, scales, biases, sparse
        masks and the file's own header and layer list).
    max_accuracy_drop : float, default 0.01
        Largest allowed accuracy loss against the float model (0.01 = 1 point).
    batch_size : int, default 1
    input_shape : sequence of int, optional
        One sample's shape (default: ``X_val.shape[1:]``).
    sparsities : sequence of float
        Per-layer sparsity levels the planner may choose from.
    fine_tune_epochs, lr, seed : fine-tuning settings
    raise_on_miss : bool, default True
        Raise :class:`BudgetError` when a budget is missed.
    verbose : bool, default False
    profile_repeats : int, default 15
        Repeats of each timing (the whole model, and each layer with
        :meth:`~hwreg_rs.runtime.RuntimeModel.profile`).

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
    if any(not 0 < s < 1 for s in sparsities):
        raise ValueError(f"sparsities must lie in (0, 1); got {list(sparsities)}")
    prof = profiles.resolve(profile)
    on_host = prof.name == "host"
    shape = tuple(input_shape) if input_shape is not None else tuple(X_val.shape[1:])
    x_batch = np.ascontiguousarray(np.resize(X_val, (batch_size,) + shape), dtype=np.float32)

    work_model = copy.deepcopy(model).eval()
    float_acc = evaluate(work_model, X_val, y_val)["accuracy"]
    float_lat = numpy_seconds(lambda: work_model(x_batch), repeats=profile_repeats)
    float_bytes = _float_file_bytes(work_model)

    # The dense int8 model: its per-layer work and its file are the base of every plan.
    dense_rt = runtime.convert(work_model, input_shape=shape, sparse="never")
    base_work = dense_rt.layer_work(batch_size)
    base_file = _file_bytes(dense_rt)
    node_index = {n.name: i for i, n in enumerate(dense_rt.nodes)}
    modules_of = lambda m: dict(m.named_modules())  # noqa: E731
    modules = modules_of(work_model)
    # The layers a plan may prune: Linear and Conv2d modules that became a runtime node.
    dims: dict[str, tuple[str, int, int]] = {}
    for name, m in modules.items():
        if name in node_index and isinstance(m, (Linear, Conv2d)):
            w = m.weight.data
            dims[name] = ("linear" if isinstance(m, Linear) else "conv2d", int(np.prod(w.shape[1:])), int(w.shape[0]))
    pattern, mask_fn = _pattern_for(prof, size_budget)
    stores_sparse = size_budget is not None or not on_host  # convert's "always"; else the chooser decides
    if on_host:  # fold what the model leaves out (Python around the kernels, load) into the profile
        prof = prof.calibrated(base_work, median_seconds(lambda: dense_rt.predict(x_batch), repeats=profile_repeats))

    def sparse_in_runtime(name: str, s: float) -> bool:
        # convert stores a Linear sparse from half its weights pruned; convolutions always dense
        return dims[name][0] == "linear" and s >= 0.5 and pattern != "dense"

    size_offset = [0]  # the file-size model's error, learnt from exact sizes of planned models

    def cost(plan: dict[str, float]) -> tuple[float, int]:
        work, size = list(base_work), base_file + size_offset[0]
        for name, s in plan.items():
            if not sparse_in_runtime(name, s):
                continue
            _, k, n = dims[name]
            i = node_index[name]
            w = work[i]
            work[i] = profiles.LayerWork(w.name, w.kind, w.macs, _sparse_memory_bytes(k, n, s, pattern),
                                         w.act_in_bytes, w.act_out_bytes, "int8", density=1 - s, pattern=pattern,
                                         gemm=w.gemm, sparse_kernel=True if stores_sparse else None)
            nnz = int(round((1 - s) * k * n))
            size += nnz + (k * n + 7) // 8 + _SPARSE_FILE_EXTRA - k * n
        return profiles.estimate(work, prof).latency_s, size

    def fits(plan: dict[str, float]) -> bool:
        lat, size = cost(plan)
        return (latency_budget is None or lat <= latency_budget) and (size_budget is None or size <= size_budget)

    plan: dict[str, float] = {}
    sens: dict[tuple[str, float], float] = {}
    levels = sorted(float(s) for s in sparsities)
    # Only layers some level of pruning makes smaller or faster are worth an accuracy measurement.
    useful = [n for n in dims if cost({n: levels[-1]}) != cost({})]
    if not fits(plan) and mask_fn is not None and useful:
        table = analysis.sensitivity(work_model, X_val, y_val, amounts=tuple(sparsities), bits=(),
                                     layers=useful, mask_fn=mask_fn)
        for r in table.select(kind="prune"):
            sens[(r.layer, float(r.amount or 0.0))] = float(r.delta_accuracy or 0.0)
        # Single-layer drops may sum to a few times the allowed drop: fine-tuning wins much back.
        drop_allowance = 3 * max_accuracy_drop + 0.01
        for _ in range(4):
            _greedy(plan, useful, levels, sens, cost, fits, sparse_in_runtime, latency_budget, size_budget,
                    drop_allowance)
            if size_budget is None or not fits(plan):
                break
            # The plan fits by the model: check the file it makes, and correct the model if it is off.
            trial = copy.deepcopy(work_model)
            for name, s in plan.items():
                if sparse_in_runtime(name, s):
                    w = modules_of(trial)[name].weight
                    w.data = w.data * mask_fn(w.data, s)
            exact = _file_bytes(runtime.convert(trial, input_shape=shape, sparse="always", batch_size=batch_size))
            size_offset[0] += exact - cost(plan)[1]
            if exact <= size_budget:
                break
        plan = {n: s for n, s in plan.items() if sparse_in_runtime(n, s)}  # a level that saves nothing is not paid
        if size_budget is None and plan:
            # A latency budget alone: pay accuracy only where the profile's sparse kernel really is faster.
            for name in list(plan):
                w = np.asarray(modules[name].weight.data, np.float32)
                mask = mask_fn(w, plan[name])
                if sparse.choose(w * mask, mask, batch_size, dtypes=("int8",), profile=prof).path.startswith("dense"):
                    del plan[name]

    tuned = work_model
    if plan:
        tuned.train()
        steps_per_epoch = max(1, int(np.ceil(len(X_tr) / 32)))
        end = max(1, steps_per_epoch * max(1, fine_tune_epochs - 2))
        cons: list[Any] = [C.GradualPruning(s, end_step=end, frequency=max(1, end // 10), mask_fn=mask_fn,
                                            params=[f"{name}.weight"]) for name, s in plan.items()]
        cons.append(C.QAT(weight_bits=8, activation_bits=None))
        Trainer(tuned, constraints=cons, epochs=fine_tune_epochs, lr=lr, seed=seed, verbose=verbose).fit(X_tr, y_tr)
        tuned.eval()

    rt = runtime.convert(tuned, input_shape=shape, sparse="always" if stores_sparse else "auto",
                         batch_size=batch_size)
    acc = float(np.mean(rt.predict(X_val).argmax(axis=1) == y_val))
    est = profiles.estimate(rt.layer_work(batch_size), prof)
    measured = median_seconds(lambda: rt.predict(x_batch), repeats=profile_repeats)
    per_node = rt.profile(x_batch, repeats=profile_repeats)
    file_bytes = _file_bytes(rt)
    layers = []
    for i, node in enumerate(rt.nodes):
        op: Any = node.op
        if op.kind not in _WEIGHTED:
            continue
        s = plan.get(node.name, 0.0)
        if op.kind == "sparse_linear":
            kept, path = float(op.matrix.density), op.path
            stored = "n:m" if path.startswith("nm") else "block" if path.startswith("bsr") else "unstructured"
        else:
            q = op.layer.weight_q
            kept, stored = float(np.count_nonzero(q)) / max(q.size, 1), "dense"
        note = _CONV_NOTE if "conv" in op.kind else ""
        if s and stored == "dense":
            note = "pruned, stored dense: the chooser measured dense int8 faster here"
        layers.append(LayerReport(
            name=node.name, op=op.kind, bits=8, sparsity=1.0 - kept, pattern=stored,
            nbytes=int(sum(a.nbytes for a in op.arrays().values())),
            estimated_us=1e6 * est.layers[i].latency_s, measured_us=1e6 * per_node[node.name],
            delta_accuracy=sens.get((node.name, s)) if s else None, note=note))
    judged_latency = measured if on_host else est.latency_s
    misses = []
    if latency_budget is not None and judged_latency > latency_budget:
        misses.append(f"latency {1e6 * judged_latency:.0f} µs > {1e6 * latency_budget:.0f} µs")
    if size_budget is not None and file_bytes > size_budget:
        misses.append(f"size {file_bytes} B > {size_budget} B")
    if float_acc - acc > max_accuracy_drop + 1e-12:
        misses.append(f"accuracy drop {100 * (float_acc - acc):.2f} pt > {100 * max_accuracy_drop:.2f} pt")
    other_us = max(0.0, 1e6 * measured - sum(l.measured_us for l in layers))
    report = CompressionReport(prof.name, batch_size, latency_budget, size_budget, max_accuracy_drop, float_acc, acc,
                               float_lat, measured, est.latency_s, float_bytes, file_bytes, not misses, misses, layers,
                               other_us)
    if misses and raise_on_miss:
        raise BudgetError("compression missed its budget: " + "; ".join(misses), report)
    return rt, report
