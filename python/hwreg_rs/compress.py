"""Budget-driven compression: a trained model and a target in, a runtime model that fits out.

:func:`compress` measures how sensitive each layer is to pruning
(:func:`hwreg_rs.analysis.sensitivity`), plans per-layer sparsity in a
pattern the target's kernels exploit until the cost model says the latency and
size budgets hold, fine-tunes under the training loop's hard constraints
(gradual pruning with that pattern, 8-bit weight fake quantization), converts
to an int8 :class:`~hwreg_rs.runtime.RuntimeModel`, measures the result and
reports, layer by layer, what it chose and what it got. A missed budget
raises :class:`BudgetError` (carrying the report) unless told not to.

All weights are stored as int8: per-layer bit widths below 8 would only pay
on hardware with sub-byte kernels, which none of our runtimes has.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from . import analysis, constraints as C, profiles, prune, runtime
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
    """One runtime operation: what was chosen and what it costs."""

    name: str
    op: str
    bits: int | None
    sparsity: float
    pattern: str
    nbytes: int
    estimated_us: float
    measured_us: float
    delta_accuracy: float | None  # from the sensitivity analysis, before fine-tuning


@dataclass
class CompressionReport:
    """What :func:`compress` chose, estimated and measured."""

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
            f"size {self.float_bytes} → {self.nbytes} bytes ({self.nbytes / max(self.float_bytes, 1):.1%})",
        ]
        return "\n".join(lines)


def _median_s(fn: Any, x: np.ndarray, repeats: int = 15) -> float:
    fn(x)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _resolve_profile(profile: Any) -> profiles.HardwareProfile:
    if isinstance(profile, profiles.HardwareProfile):
        return profile
    if profile == "host":
        return profiles.measure_host()
    if isinstance(profile, str):
        return profiles.preset(profile)
    raise TypeError(f"profile must be a HardwareProfile, a preset name or 'host'; got {type(profile).__name__}")


def _pattern_for(profile: profiles.HardwareProfile) -> tuple[str, Any]:
    """The sparsity pattern the profile's sparse kernels run best, and its mask function."""
    eff = profile.sparsity_patterns
    if eff.get("block", 0) >= eff.get("unstructured", 0) and "block" in eff:
        return "block", lambda w, amount: prune.block_mask(w, float(amount), block=(1, 8))
    if "unstructured" in eff:
        return "unstructured", lambda w, amount: prune.magnitude_mask(w, float(amount))
    return "dense", None


def _sparse_bytes(k: int, n: int, sparsity: float, pattern: str) -> int:
    """Bytes of an int8 sparse (n, k) weight as the runtime stores it.

    Values (1 B) with an int32 index per 1x8 block (block pattern) or per value
    (unstructured), plus about 16 B per row (row pointer, scale, bias and the
    kernel's per-row bookkeeping).
    """
    kept = k * n * (1.0 - sparsity)
    per_value = 1.0 + (4.0 / 8 if pattern == "block" else 4.0)
    return int(kept * per_value) + 16 * n + 4


def _plan_work(base: list[profiles.LayerWork], dims: dict[int, tuple[str, int, int]], plan: dict[str, float],
               pattern: str) -> list[profiles.LayerWork]:
    """The dense int8 model's work with the planned Linear layers made sparse."""
    out = []
    for i, w in enumerate(base):
        if i in dims and plan.get(dims[i][0], 0.0) > 0:
            name, k, n = dims[i]
            s = plan[name]
            w = profiles.LayerWork(w.name, w.kind, w.macs, _sparse_bytes(k, n, s, pattern), w.act_in_bytes,
                                   w.act_out_bytes, "int8", density=1 - s, pattern=pattern)
        out.append(w)
    return out


def compress(model: Module, data: Sequence[Any], *, profile: Any = "host", latency_budget: float | None = None,
             size_budget: int | None = None, max_accuracy_drop: float = 0.01, batch_size: int = 1,
             input_shape: Sequence[int] | None = None, sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9),
             fine_tune_epochs: int = 8, lr: float = 5e-4, seed: int = 0, raise_on_miss: bool = True,
             verbose: bool = False) -> tuple[runtime.RuntimeModel, CompressionReport]:
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
        Bytes of stored weights (scales, biases, indices included).
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
    >>> rep.met
    True
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
    prof = _resolve_profile(profile)
    on_host = prof.name == "host"
    shape = tuple(input_shape) if input_shape is not None else tuple(X_val.shape[1:])
    x_batch = np.ascontiguousarray(np.resize(X_val, (batch_size,) + shape), dtype=np.float32)

    work_model = copy.deepcopy(model).eval()
    float_acc = evaluate(work_model, X_val, y_val)["accuracy"]
    float_lat = _median_s(work_model, x_batch)
    float_bytes = 4 * sum(p.data.size for _, p in work_model.named_parameters())

    # The dense int8 model: its per-op work is the base of every plan.
    dense_rt = runtime.convert(work_model, input_shape=shape, sparse="never")
    base_work = dense_rt.layer_work(batch_size)
    # Runtime nodes carry the names of the layers they came from.
    op_layer = {i: n.name for i, n in enumerate(dense_rt.nodes) if n.op.kind in ("linear", "conv2d", "group_conv2d")}
    pattern, mask_fn = _pattern_for(prof)
    dims = {i: (op_layer[i], op.layer.in_features, op.layer.out_features)
            for i, op in enumerate(dense_rt.ops) if op.kind == "linear"}

    # On this machine, measure the dense int8 model once and scale the cost
    # model's estimates by measured / estimated: that folds in what the model
    # leaves out (fused layers, the Python around them, the machine's load).
    calibration = 1.0
    if on_host:
        dense_est = profiles.estimate(base_work, prof).latency_s
        calibration = _median_s(dense_rt.predict, x_batch) / max(dense_est, 1e-12)

    def cost(plan: dict[str, float]) -> tuple[float, int]:
        work = _plan_work(base_work, dims, plan, pattern)
        est = profiles.estimate(work, prof)
        return calibration * est.latency_s, est.weight_bytes

    def fits(plan: dict[str, float]) -> bool:
        lat, size = cost(plan)
        return (latency_budget is None or lat <= latency_budget) and (size_budget is None or size <= size_budget)

    plan: dict[str, float] = {}
    sens: dict[tuple[str, float], float] = {}
    linear_names = [n for n, m in work_model.named_modules() if isinstance(m, Linear)]
    if not fits(plan) and mask_fn is not None and linear_names:
        table = analysis.sensitivity(work_model, X_val, y_val, amounts=tuple(sparsities), bits=(),
                                     layers=linear_names, mask_fn=mask_fn)
        for r in table.select(kind="prune"):
            sens[(r.layer, float(r.amount))] = float(r.delta_accuracy or 0.0)
        levels = sorted(float(s) for s in sparsities)
        # Greedy: take the step with the most estimated saving per point of
        # accuracy lost, while the summed single-layer drops stay within what
        # fine-tuning can win back (a few times the allowed drop).
        drop_allowance = 3 * max_accuracy_drop + 0.01
        while not fits(plan):
            lat0, size0 = cost(plan)
            spent = sum(max(0.0, -sens.get((n, s), 0.0)) for n, s in plan.items())
            best = None
            for name in linear_names:
                cur = plan.get(name, 0.0)
                nxt = next((s for s in levels if s > cur), None)
                if nxt is None:
                    continue
                trial = {**plan, name: nxt}
                lat1, size1 = cost(trial)
                gain = (lat0 - lat1) / max(lat0, 1e-12) + (size0 - size1) / max(size0, 1)
                drop = max(0.0, -sens.get((name, nxt), 0.0))
                extra = drop - max(0.0, -sens.get((name, cur), 0.0))
                if gain < 1e-3 or spent + extra > drop_allowance:
                    continue
                if best is None or gain / (drop + 1e-3) > best[0]:
                    best = (gain / (drop + 1e-3), name, nxt)
            if best is None:
                break  # the budget cannot be met within the accuracy allowance: reported below
            plan[best[1]] = best[2]

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

    rt = runtime.convert(tuned, input_shape=shape, sparse="auto" if on_host else "always", batch_size=batch_size)
    acc = float(np.mean(rt.predict(X_val).argmax(axis=1) == y_val))
    est = profiles.estimate(rt.layer_work(batch_size), prof)
    measured = _median_s(rt.predict, x_batch)
    per_op = _per_op_seconds(rt, x_batch)
    layers = []
    for i, (node, op) in enumerate(zip(rt.nodes, rt.ops)):
        name = node.name
        s = plan.get(name, 0.0)
        layers.append(LayerReport(
            name=name, op=op.kind, bits=8 if op.kind in ("linear", "conv2d", "sparse_linear") else None,
            sparsity=s if op.kind == "sparse_linear" or s else 0.0,
            pattern=pattern if s else "dense", nbytes=op.nbytes,
            estimated_us=1e6 * est.layers[i].latency_s, measured_us=1e6 * per_op[i],
            delta_accuracy=sens.get((name, s)) if s else None))
    judged_latency = measured if on_host else est.latency_s
    misses = []
    if latency_budget is not None and judged_latency > latency_budget:
        misses.append(f"latency {1e6 * judged_latency:.0f} µs > {1e6 * latency_budget:.0f} µs")
    if size_budget is not None and rt.nbytes > size_budget:
        misses.append(f"size {rt.nbytes} B > {size_budget} B")
    if float_acc - acc > max_accuracy_drop + 1e-12:
        misses.append(f"accuracy drop {100 * (float_acc - acc):.2f} pt > {100 * max_accuracy_drop:.2f} pt")
    report = CompressionReport(prof.name, batch_size, latency_budget, size_budget, max_accuracy_drop, float_acc, acc,
                               float_lat, measured, est.latency_s, float_bytes, rt.nbytes, not misses, misses, layers)
    if misses and raise_on_miss:
        raise BudgetError("compression missed its budget: " + "; ".join(misses), report)
    return rt, report


def _per_op_seconds(rt: runtime.RuntimeModel, x: np.ndarray, repeats: int = 15) -> list[float]:
    """Median time of each operation on its real input."""
    return [_median_s(lambda args, op=node.op: op.forward(*args), args, repeats) for node, args in rt.trace(x)]
