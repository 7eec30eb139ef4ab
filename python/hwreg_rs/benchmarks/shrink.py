"""Shrink suite: structured shrinking of the digits CNN and ResNet, accuracy and int8 latency.

For the plain CNN, the ResNet (and the MobileNetV2-style net) of :mod:`hwreg_rs.zoo`,
trained on digits as in the graphs suite: remove 25% / 50% of every prunable
channel group with :func:`hwreg_rs.prune.shrink` (one shot, L1 or Taylor
importance) or gradually while fine-tuning (:class:`hwreg_rs.train.GradualShrinking`),
fine-tune every variant (the dense one too) for the same few epochs, then
report parameters, file size, float and int8 accuracy, and the int8 runtime's
latency at batch 1, the variants of one model timed side by side, round-robin.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .._timing import side_by_side
from . import Table

_SETTLE_S = 0.01


def _variants(g: Any, X: np.ndarray, y: np.ndarray, X_te: np.ndarray, y_te: np.ndarray,
              epochs: int) -> dict[str, tuple[Any, float | None]]:
    """label -> (fine-tuned model, test accuracy right after shrinking, before fine-tuning)."""
    import copy

    from .. import prune, train

    def acc(model: Any) -> float:
        return float(np.mean(train.predict(model, X_te).argmax(1) == y_te))

    def tune(model: Any, callbacks: tuple = ()) -> Any:
        tr = train.Trainer(model.train(), epochs=epochs, lr=1e-3, scheduler="cosine", seed=0, verbose=False,
                           callbacks=callbacks)
        return tr.fit(X, y).model.eval()

    out: dict[str, tuple[Any, float | None]] = {}
    for label, amount, importance in (("dense", 0.0, "l1"), ("25% l1", 0.25, "l1"), ("50% l1", 0.5, "l1"),
                                      ("50% taylor", 0.5, "taylor")):
        small = prune.shrink(g, amount, importance=importance,
                             data=(X[:256], y[:256]) if importance == "taylor" else None)
        before = acc(small)
        out[label] = (tune(small), before)
    steps = -(-len(X) // 32) * epochs
    cb = train.GradualShrinking(0.5, end_step=max(2, steps // 2), frequency=max(1, steps // 10))
    out["50% gradual"] = (tune(copy.deepcopy(g), (cb,)), None)
    return out


def _latency(rts: dict[str, Any], x: np.ndarray, quick: bool) -> dict[int, dict[str, float]]:
    """Median seconds of ``predict(x)`` per model, on 1 and on all threads, round-robin side by side."""
    from .. import num_threads, set_num_threads

    all_threads = num_threads()
    out = {}
    try:
        for threads in sorted({1, all_threads}):
            set_num_threads(threads)
            out[threads] = side_by_side({k: (lambda rt=rt: rt.predict(x)) for k, rt in rts.items()},
                                        rounds=3 if quick else 9, min_seconds=0.01 if quick else 0.05,
                                        pause_s=_SETTLE_S)
    finally:
        set_num_threads(all_threads)
    return out


def run(quick: bool = False) -> str:
    from .. import data, onnx, prune, runtime, zoo
    from .graphs import _train

    digits = data.load_digits()
    models = {"cnn": ("cnn", zoo.cnn()), "resnet": ("resnet", zoo.resnet())}
    if not quick:
        models.update({"mobilenetv2": ("mobilenetv2", zoo.mobilenetv2()),
                       "resnet 32/64": ("resnet", zoo.resnet(widths=(32, 64)))})
    t = Table(["model", "variant", "params", "file bytes", "acc after shrink", "acc fine-tuned", "int8 acc",
               "threads", "int8 µs (batch 1)", "speed-up vs dense"])
    epochs = 2 if quick else 10
    for name, (recipe, proto) in models.items():
        shape = zoo.sample_shape(proto)
        X_tr = digits.X_train.reshape((-1,) + shape).astype(np.float32)
        X_te = digits.X_test.reshape((-1,) + shape).astype(np.float32)
        acc = lambda out: float(np.mean(out.argmax(1) == digits.y_test))  # noqa: E731
        g = _train(recipe, proto, X_tr, digits.y_train, quick)
        variants = _variants(g, X_tr, digits.y_train, X_te, digits.y_test, epochs)
        rows: dict[str, list[Any]] = {}
        rts: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for label, (model, before) in variants.items():
                rt = runtime.convert(model, input_shape=shape)
                size = rt.save(Path(tmp) / f"{label}.hwreg")
                rows[label] = [name, label, sum(p.data.size for p in model.parameters()), size,
                               None if before is None else f"{before:.2%}", f"{acc(model(X_te)):.2%}",
                               f"{acc(rt.predict(X_te)):.2%}"]
                rts[label] = rt
        for threads, med in _latency(rts, np.ascontiguousarray(X_te[:1]), quick).items():
            for k in rts:
                t.add(*rows[k], threads, 1e6 * med[k], f"{med['dense'] / med[k]:.2f}×")
    # Latency only, random weights: models wide enough for the kernels, not the per-node overhead, to count.
    lt = Table(["model", "input", "shrunk", "params", "file bytes", "threads", "int8 µs (batch 1)",
                "speed-up vs dense"])
    wide = {"resnet 64/128/256": zoo.resnet(widths=(64, 128, 256), blocks=(2, 2, 2), image_size=32, in_channels=3),
            "mobilenetv2 ×4": zoo.mobilenetv2(settings=((1, 32, 1, 1), (6, 64, 2, 2), (6, 64, 2, 1), (6, 128, 2, 2)),
                                              stem=32, last=512, image_size=32, in_channels=3)}
    if quick:
        wide = {"resnet 32/64": zoo.resnet(widths=(32, 64), image_size=16, in_channels=3)}
    for name, proto in wide.items():
        g = onnx.load(proto)
        shape = tuple(g.input_shapes[0])
        rts, rows = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for amount in (0.0, 0.25, 0.5):
                small = prune.shrink(g, amount)
                rt = runtime.convert(small, input_shape=shape)
                label = f"{amount:.0%}"
                rows[label] = [name, "x".join(map(str, shape)), label, sum(p.data.size for p in small.parameters()),
                               rt.save(Path(tmp) / f"{amount}.hwreg")]
                rts[label] = rt
        x = np.random.default_rng(0).standard_normal((1,) + shape).astype(np.float32)
        for threads, med in _latency(rts, x, quick).items():
            for k in rts:
                lt.add(*rows[k], threads, 1e6 * med[k], f"{med['0%'] / med[k]:.2f}×")
    return ("## Shrink: structured shrinking of digits models (fine-tuned), int8 at batch 1\n\n"
            f"Fine-tune: {epochs} epochs, Adam 1e-3, cosine, batch 32, every variant (dense too). 'gradual' "
            "shrinks to 50% during that fine-tune (GradualShrinking, cubic schedule over its first half, "
            "10 steps).\n\n" + t.markdown() +
            "\n\n### Latency of wider models (random weights, L1 shrinking, int8 at batch 1)\n\n" + lt.markdown() +
            "\n\n" + budget_search(quick))


BUDGET_FRACTION = 0.5  # issue 14: a latency budget of half the dense int8 model's measured batch-1 latency
BUDGET_DROP = 0.01  # ... met with at most 1 point of accuracy lost


def budget_search(quick: bool = False) -> str:
    """Issue 14: :func:`hwreg_rs.compress` with a latency budget of ``BUDGET_FRACTION`` of the dense int8
    model's measured latency at batch 1 (1 thread) and ``BUDGET_DROP``, on the digits MLP (64-256-128-10)
    and the digits ResNet of :mod:`hwreg_rs.zoo`; the result timed side by side with the dense model, the
    chosen candidates' predicted and measured speed-ups, and what shrinking alone can give (random weights,
    every hidden layer or channel group shrunk alike: the floor of the per-layer costs)."""
    from .. import compress, data, nn, onnx, prune, runtime, set_num_threads, train, zoo
    from .graphs import _train

    digits = data.load_digits()
    rounds = 51 if quick else 401
    sample_s = 2e-5  # several calls per sample: a lone call carries the clock's own cost

    def timed(rts: dict[str, Any], x: np.ndarray) -> dict[str, float]:
        return side_by_side({k: (lambda rt=rt: rt.predict(x)) for k, rt in rts.items()}, rounds=rounds,
                            min_seconds=sample_s)

    mlp = nn.mlp([64, 256, 128, 10], rng=0)
    train.fit(mlp, digits.X_train, digits.y_train, epochs=4 if quick else 20, scheduler="cosine", verbose=False)
    proto = zoo.resnet()
    rshape = zoo.sample_shape(proto)
    resnet = _train("resnet", proto, digits.X_train.reshape((-1,) + rshape).astype(np.float32), digits.y_train, quick)
    models = {"mlp 64-256-128-10": (mlp.eval(), (64,)), "resnet 8-16 1x8x8": (resnet, rshape)}
    res = Table(["model", "dense int8 µs", "budget µs", "compressed µs", "speed-up", "accuracy", "drop (pt)", "met",
                 "chosen: predicted / measured speed-up of the layers it changes"])
    floor = Table(["model", "shrunk", "int8 µs (batch 1)", "speed-up vs dense", "its layers µs", "predict − layers µs"])
    notes: list[str] = []
    set_num_threads(1)
    try:
        for name, (model, shape) in models.items():
            split = (digits.X_train.reshape((-1,) + shape).astype(np.float32), digits.y_train,
                     digits.X_test.reshape((-1,) + shape).astype(np.float32), digits.y_test)
            x = np.ascontiguousarray(split[2][:1])
            dense = runtime.convert(model, input_shape=shape)
            t_dense = timed({"dense": dense}, x)["dense"]
            budget = BUDGET_FRACTION * t_dense
            rt, rep = compress(model, split, profile="host", latency_budget=budget, max_accuracy_drop=BUDGET_DROP,
                               raise_on_miss=False, input_shape=shape, fine_tune_epochs=2 if quick else 8,
                               profile_repeats=7 if quick else 15)
            t = timed({"dense": dense, "compressed": rt}, x)
            chosen = "; ".join(f"{c.layer} {c.kind} {c.ratio:.0%}{' int4' if c.bits == 4 else ''}: "
                               f"{c.predicted_speedup:.2f}x / {c.measured_speedup:.2f}x"
                               for c in rep.candidates if c.chosen and c.predicted_speedup is not None
                               and c.measured_speedup is not None) or "none"
            res.add(name, 1e6 * t_dense, 1e6 * budget, 1e6 * t["compressed"], f"{t['dense'] / t['compressed']:.2f}×",
                    f"{rep.accuracy:.2%}", f"{100 * (rep.float_accuracy - rep.accuracy):.2f}",
                    "yes" if rep.met else "no: " + "; ".join(rep.misses), chosen)
            notes += [f"- {name}: {n}" for n in rep.notes]
            # The floor: every hidden layer / channel group shrunk alike, random weights.
            g = nn.mlp([64, 256, 128, 10], rng=0).eval() if name.startswith("mlp") else onnx.load(proto).eval()
            rts = {f"{a:.0%}": runtime.convert(prune.shrink(g, a, input_shape=shape) if a else g, input_shape=shape)
                   for a in (0.0, 0.5, 0.75, 0.875)}
            tf = timed(rts, x)
            for k, r in rts.items():
                nodes = sum(r.profile(x, repeats=rounds).values())
                floor.add(name, k, 1e6 * tf[k], f"{tf['0%'] / tf[k]:.2f}×", 1e6 * nodes, 1e6 * (tf[k] - nodes))
    finally:
        set_num_threads(0)
    return ("### Latency budget (issue 14): half the dense int8 latency at batch 1, at most 1 point lost\n\n"
            "`hw.compress(..., profile=\"host\", latency_budget=0.5 × dense, max_accuracy_drop=0.01)` on 1 thread; "
            "latencies timed side by side (samples of several calls). Speed-ups of the chosen candidates: the "
            "layers each changes, predicted by the cost model and measured (`profiles.speedup_check`).\n\n"
            + res.markdown() + ("\n\nThe search's notes:\n\n" + "\n".join(notes) if notes else "")
            + "\n\nWhat shrinking can give at most (random weights, every group shrunk alike; "
            "'predict − layers' is predict's own cost beside its timed layers):\n\n" + floor.markdown())
