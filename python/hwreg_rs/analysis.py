"""Sensitivity analysis: how much each layer alone suffers from pruning or quantization.

The compressor uses this table to decide, layer by layer, how far it can go.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ._validate import check_float, check_int
from .constraints import WeightFakeQuant, _magnitude_mask
from .nn.conv import Conv2d
from .nn.layers import Linear
from .nn.module import Module
from .train import evaluate

__all__ = ["SensitivityRow", "SensitivityTable", "sensitivity"]


@dataclass(frozen=True)
class SensitivityRow:
    """One measurement: ``layer`` alone pruned to ``amount`` (kind "prune") or quantized to ``bits`` (kind "quantize")."""

    layer: str
    kind: str
    amount: float | None
    bits: int | None
    params: int
    loss: float
    accuracy: float | None
    delta_loss: float
    delta_accuracy: float | None


@dataclass
class SensitivityTable:
    """The rows of :func:`sensitivity` plus the unmodified model's ``baseline`` metrics."""

    baseline: dict[str, float]
    rows: list[SensitivityRow]

    def __iter__(self) -> Any:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rows]

    def select(self, *, layer: str | None = None, kind: str | None = None) -> list[SensitivityRow]:
        return [r for r in self.rows if (layer is None or r.layer == layer) and (kind is None or r.kind == kind)]

    def markdown(self) -> str:
        lines = ["| layer | kind | amount | bits | params | loss | accuracy | Δloss | Δaccuracy |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            acc = "–" if r.accuracy is None else f"{r.accuracy:.4f}"
            dacc = "–" if r.delta_accuracy is None else f"{r.delta_accuracy:+.4f}"
            lines.append(f"| {r.layer} | {r.kind} | {'–' if r.amount is None else r.amount} | "
                         f"{'–' if r.bits is None else r.bits} | {r.params} | {r.loss:.4f} | {acc} | "
                         f"{r.delta_loss:+.4f} | {dacc} |")
        return "\n".join(lines)


def sensitivity(model: Module, X: Any, y: Any, *, loss: Any = "cross_entropy",
                amounts: Sequence[float] = (0.5, 0.75, 0.9), bits: Sequence[int] = (8, 6, 4, 2),
                layers: Sequence[str] | None = None, mask_fn: Callable[..., np.ndarray] | None = None,
                per_channel: bool = True) -> SensitivityTable:
    """Per-layer loss / accuracy change when that layer alone is pruned or quantized.

    For every Linear / Conv2d layer (or those named in ``layers``) and every
    ``amount``, the layer's weight is magnitude-pruned (``mask_fn``) to that
    sparsity; for every width in ``bits`` it is fake-quantized symmetrically
    (per channel). All other layers stay as they are; the model is restored
    after each measurement.

    Returns
    -------
    SensitivityTable
        ``baseline`` and one :class:`SensitivityRow` per (layer, setting);
        ``delta_*`` are measured minus baseline (accuracy drops are negative).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> X, y = hw.data.make_classification(100, n_features=4, seed=0)
    >>> net = hw.nn.mlp([4, 8, 3], rng=0)
    >>> t = hw.analysis.sensitivity(net, X, y, amounts=(0.5,), bits=(4,))
    >>> [(r.layer, r.kind) for r in t]
    [('0', 'prune'), ('0', 'quantize'), ('2', 'prune'), ('2', 'quantize')]
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be an hwreg_rs.nn.Module; got {type(model).__name__}")
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (Linear, Conv2d))]
    if layers is not None:
        if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
            raise TypeError(f"layers must be a sequence of layer names; got {type(layers).__name__}")
        known = {n for n, _ in targets}
        bad = [n for n in layers if n not in known]
        if bad:
            raise ValueError(f"unknown layers {bad}; prunable/quantizable layers are {sorted(known)}")
        targets = [(n, m) for n, m in targets if n in set(layers)]
    for name, seq in (("amounts", amounts), ("bits", bits)):
        if isinstance(seq, (str, bytes, dict, np.ndarray)) or not hasattr(seq, "__iter__"):
            raise TypeError(f"{name} must be a sequence; got {type(seq).__name__} {seq!r}")
    amounts = [check_float(a, "amounts[]", 0.0, 1.0) for a in amounts]
    bits = [check_int(b, "bits[]", 2, 8) for b in bits]
    base = evaluate(model, X, y, loss=loss)
    fn = mask_fn if mask_fn is not None else _magnitude_mask
    rows: list[SensitivityRow] = []

    def row(name: str, m: Module, kind: str, amount: float | None, b: int | None) -> SensitivityRow:
        r = evaluate(model, X, y, loss=loss)
        acc = r.get("accuracy")
        return SensitivityRow(name, kind, amount, b, int(m.weight.data.size), r["loss"], acc, r["loss"] - base["loss"],
                              None if acc is None else acc - base["accuracy"])

    for name, m in targets:
        saved = m.weight.data.copy()
        saved_hook = m.weight_fake_quant
        try:
            for a in amounts:
                m.weight.data = saved * np.asarray(fn(saved, float(a)))
                rows.append(row(name, m, "prune", float(a), None))
                m.weight.data = saved.copy()
            for b in bits:
                fq = WeightFakeQuant(int(b), per_channel=per_channel)
                m.weight.data = fq(saved)
                m.weight_fake_quant = None
                rows.append(row(name, m, "quantize", None, int(b)))
                m.weight.data = saved.copy()
                m.weight_fake_quant = saved_hook
        finally:
            m.weight.data = saved
            m.weight_fake_quant = saved_hook
    return SensitivityTable(base, rows)
