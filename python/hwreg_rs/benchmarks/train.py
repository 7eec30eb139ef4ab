"""Training suite: digits accuracy targets, one MLP epoch against a hand-written NumPy loop,
and the Rust im2col / col2im / pooling kernels against their NumPy equivalents.

Every contender's answer is checked before it is timed; timings are medians
measured side by side in one run. Needs scikit-learn (the ``data`` extra) for
the digits parts.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable

import numpy as np

from . import Table, median_seconds  # noqa: F401

SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _acc(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    from ..train import evaluate

    return evaluate(model, X, y)["accuracy"]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------------------
# accuracy targets on digits
# ---------------------------------------------------------------------------

def targets(quick: bool = False) -> str:
    """Train the digits models of issue 4 and return the measured table (Markdown)."""
    from .. import constraints as C
    from .. import nn
    from ..data import load_digits
    from ..train import Trainer

    Xtr, ytr, Xte, yte = load_digits()
    Itr, _, Ite, _ = load_digits(images=True)
    f = 0.25 if quick else 1.0
    ep = lambda n: max(1, int(round(n * f)))  # noqa: E731
    bs = 32
    steps_per_epoch = math.ceil(len(Xtr) / bs)
    t = Table(["model", "setting", "test acc %", "drop (pt)", "target", "met", "train s"])

    def fit(model: Any, epochs: int, *, X: np.ndarray = Xtr, lr: float = 1e-3, seed: int = 0, **kw: Any) -> float:
        _, secs = _timed(lambda: Trainer(model, epochs=epochs, lr=lr, batch_size=bs, seed=seed, scheduler="cosine",
                                         verbose=False, **kw).fit(X, ytr))
        return secs

    # float MLP 64-256-128-10
    mlp = nn.mlp([64, 256, 128, 10], rng=0)
    secs = fit(mlp, ep(40))
    base = _acc(mlp, Xte, yte)
    t.add("MLP 64-256-128-10", f"float, Adam, {ep(40)} epochs", 100 * base, None, "≥ 97%, ≤ 60 s",
          "yes" if base >= 0.97 and secs <= 60 else "NO", secs)

    # gradual magnitude pruning to 90 % over 10 epochs, then 30 epochs of fine-tuning at the final masks
    pruned = copy.deepcopy(mlp)
    prune = C.GradualPruning(0.9, end_step=ep(10) * steps_per_epoch, frequency=max(1, steps_per_epoch // 4))
    secs = fit(pruned, ep(40), lr=2e-3, constraints=[prune])
    acc = _acc(pruned, Xte, yte)
    sp = np.mean(list(prune.sparsity().values()))
    t.add("MLP pruned", f"gradual to {100 * sp:.1f}% zeros per layer, {ep(10)}+{ep(40) - ep(10)} epochs", 100 * acc,
          100 * (base - acc), "drop ≤ 1.0", "yes" if base - acc <= 0.01 + 1e-9 else "NO", secs)

    # QAT
    for wb, target in ((4, 0.01), (8, 0.003)):
        q = copy.deepcopy(mlp)
        qat = C.QAT(weight_bits=wb, activation_bits=8)
        secs = fit(q, ep(10), lr=3e-4, constraints=[qat])
        acc = _acc(q, Xte, yte)
        t.add("MLP QAT", f"W{wb}/A8 per-channel, {ep(10)} epochs fine-tune", 100 * acc, 100 * (base - acc),
              f"drop ≤ {100 * target:.1f}", "yes" if base - acc <= target + 1e-9 else "NO", secs)

    # distillation: student 64-32-10, three seeds. T and alpha are chosen on a validation split
    # carved out of the training set (never on the test set); then alone vs distilled on the full set.
    n_val = len(Xtr) // 5
    Xfit, yfit, Xval, yval = Xtr[n_val:], ytr[n_val:], Xtr[:n_val], ytr[:n_val]
    kd_ep, kd_lr = ep(100), 3e-3

    def student(seed: int, X: np.ndarray, y: np.ndarray, **kw: Any) -> Any:
        s_ = nn.mlp([64, 32, 10], rng=100 + seed)
        Trainer(s_, epochs=kd_ep, lr=kd_lr, batch_size=bs, seed=seed, scheduler="cosine", verbose=False,
                **kw).fit(X, y)
        return s_

    val_teacher = nn.mlp([64, 256, 128, 10], rng=0)
    Trainer(val_teacher, epochs=ep(40), lr=1e-3, batch_size=bs, scheduler="cosine", verbose=False).fit(Xfit, yfit)
    grid = [(1.0, 0.5), (2.0, 0.5), (4.0, 0.5), (4.0, 0.9)]
    val_scores = {g: float(np.mean([_acc(student(s, Xfit, yfit, teacher=val_teacher, temperature=g[0], alpha=g[1]),
                                         Xval, yval) for s in SEEDS])) for g in grid}
    T, alpha = max(grid, key=lambda g: val_scores[g])
    alone, distilled, secs_kd = [], [], 0.0
    for s in SEEDS:
        alone.append(_acc(student(s, Xtr, ytr), Xte, yte))
        d, secs = _timed(lambda: student(s, Xtr, ytr, teacher=mlp, temperature=T, alpha=alpha))
        secs_kd += secs
        distilled.append(_acc(d, Xte, yte))
    ma, md = float(np.mean(alone)), float(np.mean(distilled))
    t.add("student 64-32-10", f"alone, {kd_ep} epochs, seeds " + "/".join(f"{100 * v:.1f}" for v in alone),
          100 * ma, None, "–", "–", None)
    t.add("student 64-32-10", f"distilled T={T:g} α={alpha:g} (picked on validation), seeds "
          + "/".join(f"{100 * v:.1f}" for v in distilled), 100 * md, 100 * (ma - md), "≥ alone",
          "yes" if md >= ma else "NO", secs_kd / len(SEEDS))
    kd_note = ("Distillation grid (validation accuracy, mean of 3 seeds, 20% of the training set held out): "
               + ", ".join(f"T={g[0]:g} α={g[1]:g}: {100 * v:.2f}%" for g, v in val_scores.items()) + ".")

    # small CNN
    cnn = nn.small_cnn(rng=0)
    secs = fit(cnn, ep(15), X=Itr)
    acc = _acc(cnn, Ite, yte)
    t.add("small CNN", f"2×conv3×3+BN, maxpool, 2×Linear, {ep(15)} epochs", 100 * acc, None, "≥ 97%",
          "yes" if acc >= 0.97 else "NO", secs)

    from ..analysis import sensitivity

    sens = sensitivity(mlp, Xte, yte, amounts=(0.5, 0.9), bits=(8, 4, 2))
    head = "### Digits targets (test split of 360, seed 0)\n\n"
    if quick:
        head += "*Quick mode: a quarter of the epochs; the targets are only meaningful in a full run.*\n\n"
    return (head + t.markdown() + "\n\n" + kd_note
            + "\n\nPer-layer sensitivity of the float MLP (each layer alone):\n\n" + sens.markdown())


# ---------------------------------------------------------------------------
# one epoch: Trainer vs a hand-written NumPy loop
# ---------------------------------------------------------------------------

def _numpy_mlp_epoch(params: list[np.ndarray], state: dict[str, Any], X: np.ndarray, y: np.ndarray,
                     order: np.ndarray, bs: int, lr: float) -> None:
    """What one would write by hand: 64-256-128-10 ReLU MLP, softmax cross-entropy, Adam."""
    W1, b1, W2, b2, W3, b3 = params
    b1_, b2_, eps = 0.9, 0.999, 1e-8
    for s in range(0, len(X), bs):
        idx = order[s: s + bs]
        xb, yb = X[idx], y[idx]
        h1 = xb @ W1.T + b1
        a1 = np.maximum(h1, 0)
        h2 = a1 @ W2.T + b2
        a2 = np.maximum(h2, 0)
        z = a2 @ W3.T + b3
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(yb)), yb] -= 1
        g = p / len(yb)
        grads = [None] * 6
        grads[4], grads[5] = g.T @ a2, g.sum(0)
        g = (g @ W3) * (h2 > 0)
        grads[2], grads[3] = g.T @ a1, g.sum(0)
        g = (g @ W2) * (h1 > 0)
        grads[0], grads[1] = g.T @ xb, g.sum(0)
        state["t"] += 1
        t = state["t"]
        for i, (w, gr) in enumerate(zip(params, grads)):
            m, v = state["m"][i], state["v"][i]
            m[...] = b1_ * m + (1 - b1_) * gr
            v[...] = b2_ * v + (1 - b2_) * gr * gr
            w -= lr / (1 - b1_**t) * m / (np.sqrt(v) / math.sqrt(1 - b2_**t) + eps)


def epoch_benchmark(quick: bool = False) -> str:
    """Median seconds of one MLP epoch: Trainer vs hand-written NumPy, same math, BLAS on 1 thread."""
    from .. import nn
    from ..data import load_digits
    from ..train import Trainer, blas_limit

    Xtr, ytr, _, _ = load_digits()
    bs, lr = 32, 1e-3
    net = nn.mlp([64, 256, 128, 10], rng=0)
    params = [p.data.copy() for p in net.parameters()]
    state = {"t": 0, "m": [np.zeros_like(p) for p in params], "v": [np.zeros_like(p) for p in params]}
    tr = Trainer(net, epochs=1, lr=lr, batch_size=bs, verbose=False, blas_threads=1)

    # check: one epoch from the same start on the same order gives the same weights
    tr.fit(Xtr, ytr)
    order = np.random.default_rng(0).permutation(len(Xtr))
    with blas_limit(1):
        _numpy_mlp_epoch(params, state, Xtr, ytr, order, bs, lr)
    err = max(float(np.max(np.abs(a.data - b))) for a, b in zip(net.parameters(), params))
    if err > 1e-4:
        raise AssertionError(f"Trainer and NumPy loop disagree after one epoch (max |Δw| = {err})")

    repeats = 5 if quick else 15
    t = Table(["contender", "epoch ms (median)", "samples/s", "ratio vs NumPy"])
    rng = np.random.default_rng(1)
    np_times, tr_times = [], []
    with blas_limit(1):
        for _ in range(repeats):  # interleaved, so load changes on the machine hit both alike
            order = rng.permutation(len(Xtr))
            t0 = time.perf_counter()
            _numpy_mlp_epoch(params, state, Xtr, ytr, order, bs, lr)
            np_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tr.fit(Xtr, ytr)
            tr_times.append(time.perf_counter() - t0)
    np_time, tr_time = float(np.median(np_times)), float(np.median(tr_times))
    t.add("hand-written NumPy loop (Adam)", 1e3 * np_time, len(Xtr) / np_time, 1.0)
    t.add("hwreg_rs Trainer (Adam, checks on)", 1e3 * tr_time, len(Xtr) / tr_time, tr_time / np_time)
    return (f"### One epoch of the digits MLP 64-256-128-10 (batch {bs}, {len(Xtr)} samples, BLAS 1 thread)\n\n"
            f"Answers checked first: max |Δw| after one epoch from the same start = {err:.1e}. "
            "Ratio = time / NumPy time (< 1 is faster).\n\n" + t.markdown())


# ---------------------------------------------------------------------------
# conv kernels: Rust vs NumPy
# ---------------------------------------------------------------------------

def conv_kernels(quick: bool = False) -> str:
    """im2col / col2im / max-pool / avg-pool: Rust (float32) vs the NumPy implementations."""
    from ..nn import functional as F

    shapes = [((32, 16, 8, 8), (3, 3), (1, 1), (1, 1)), ((16, 32, 28, 28), (3, 3), (1, 1), (1, 1))]
    if quick:
        shapes = shapes[:1]
    t = Table(["op", "input (N,C,H,W)", "kernel", "NumPy ms", "Rust ms", "speed-up"])
    rng = np.random.default_rng(0)
    for shape, k, s, p in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        cols = F.im2col(x, k, s, p)
        np.testing.assert_array_equal(cols, F._im2col_np(x, k, s, p))
        np.testing.assert_allclose(F.col2im(cols, shape, k, s, p), F._col2im_np(cols, shape, k, s, p), rtol=1e-5,
                                   atol=1e-4)
        mo, mi = F.max_pool2d(x, (2, 2), (2, 2))
        no, ni = F._max_pool2d_np(x, (2, 2), (2, 2), (0, 0))
        np.testing.assert_array_equal(mo, no)
        np.testing.assert_array_equal(mi, ni)
        g = rng.standard_normal(mo.shape).astype(np.float32)
        cases = [
            ("im2col", lambda: F._im2col_np(x, k, s, p), lambda: F.im2col(x, k, s, p)),
            ("col2im", lambda: F._col2im_np(cols, shape, k, s, p), lambda: F.col2im(cols, shape, k, s, p)),
            ("max_pool2d 2×2", lambda: F._max_pool2d_np(x, (2, 2), (2, 2), (0, 0)),
             lambda: F.max_pool2d(x, (2, 2), (2, 2))),
            ("max_pool2d backward", lambda: F._max_pool2d_backward_np(g, mi, shape),
             lambda: F.max_pool2d_backward(g, mi, shape, (2, 2), (2, 2))),
        ]
        for name, f_np, f_rs in cases:
            a = median_seconds(f_np, repeats=3 if quick else 7)
            b = median_seconds(f_rs, repeats=3 if quick else 7)
            t.add(name, str(shape), f"{k[0]}×{k[1]}" if "col" in name else "2×2", 1e3 * a, 1e3 * b, a / b)
    return "### Convolution kernels, float32 (Rust vs NumPy, answers checked first)\n\n" + t.markdown()


def run(quick: bool = False) -> str:
    """The Markdown section of ``hwreg-rs bench --suite train``."""
    parts = [conv_kernels(quick)]
    try:
        import sklearn  # noqa: F401
    except ImportError:
        parts.append("(digits parts skipped: scikit-learn is not installed; pip install 'hwreg-rs[data]')")
        return "## train\n\n" + "\n\n".join(parts)
    parts.append(epoch_benchmark(quick))
    parts.append(targets(quick))
    return "## train\n\n" + "\n\n".join(parts)
