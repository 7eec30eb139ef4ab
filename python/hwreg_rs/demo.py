"""``hwreg-rs demo``: the project's story in one minute.

1. Train the small digits CNN (:func:`hwreg_rs.nn.small_cnn`, the CNN of the
   ``bench`` runtime suite) under hard constraints: weights clipped to
   ``[-1, 1]``, gradients clipped, 8-bit weight fake quantization (QAT).
2. Convert it to int8 (:func:`hwreg_rs.runtime.convert`): the baseline.
3. Compress it (:func:`hwreg_rs.compress`) for a size budget the int8 file
   alone cannot meet (a quarter of the int8 file), so the planner must shrink
   layers (remove whole channels: convolutions can only get smaller that way)
   and prune and store Linear layers sparse.
4. Print one table, float NumPy / int8 / compressed: accuracy, file size
   (bytes of the saved file; the float model's state dict as ``.npz``),
   latency at batch 1 and 64, all six timed side by side in rounds (float
   NumPy timed as ``bench`` times it: the better of NumPy's BLAS threads as
   they are and one),
   and the per-layer report measured as ``predict`` runs it
   (:meth:`hwreg_rs.runtime.RuntimeModel.profile`).

Every figure is measured once and printed from that one measurement: sizes
and accuracies are the compression report's, the report's batch-1 latencies
are the side-by-side figures of the table, and its per-layer rows (with the
"other" row) sum to the compressed model's batch-1 latency.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np

__all__ = ["run"]


def run(*, quick: bool = False, size_fraction: float = 0.25, max_accuracy_drop: float = 0.02, epochs: int | None = None,
        seed: int = 0, out: str | None = None, say: Any = print) -> dict[str, Any]:
    """Run the demo; returns its results (what ``hwreg-rs demo --json`` prints).

    Parameters
    ----------
    quick : bool, default False
        Fewer epochs and repeats (for tests: well under a minute).
    size_fraction : float, default 0.25
        Size budget as a fraction of the int8 file.
    max_accuracy_drop : float, default 0.02
        Largest accuracy loss allowed against the float model.
    epochs : int, optional
        Training epochs (default 12, quick 4).
    seed : int, default 0
    out : str, optional
        Where to save the compressed runtime model (default: a temporary folder). Beside it go
        the int8 model (``digits_cnn.int8.hwreg``), the float state dict
        (``digits_cnn.float32.npz``, for ``hwreg-rs compress --arch cnn``), the data
        (``digits_images.npz``) and a batch of 8 test images (``x.npy``, for ``hwreg-rs predict``).
    say : callable, default print
        Progress lines.

    Returns
    -------
    dict
        ``models`` (one row per model: ``model``, ``accuracy``, ``file_bytes``,
        ``latency_b1_us``, ``latency_b64_us``), ``speedup_b1``/``speedup_b64`` (float
        over compressed), ``budget_bytes``, ``int8_bytes``, ``met``, ``shrunk_layers``,
        ``sparse_layers`` and ``int4_layers`` (names of the layers shrunk / pruned and stored sparse /
        stored with 4-bit weights), ``report`` (the
        compression report as a dict), ``runtime_file``, ``float_file``, ``data_file``,
        ``batch_file``, ``seconds``.
    """
    from . import constraints as C, data, nn, runtime
    from ._timing import side_by_side
    from .compress import compress
    from .train import Trainer

    t_start = time.perf_counter()
    repeats = 5 if quick else 15
    epochs = epochs if epochs is not None else (4 if quick else 12)
    try:
        digits = data.load_digits(images=True)
    except ImportError as e:
        raise ImportError(f"the demo trains on scikit-learn's digits: {e}") from None
    X_tr, y_tr, X_te, y_te = digits.X_train, digits.y_train, digits.X_test, digits.y_test
    say(f"1/4 training the digits CNN ({len(X_tr)} train / {len(X_te)} test images) for {epochs} epochs under hard "
        "constraints: |w| <= 1, gradients clipped to 1, 8-bit weight QAT")
    net = nn.small_cnn(rng=seed)
    qat = C.QAT(weight_bits=8, activation_bits=None)
    Trainer(net, constraints=[C.WeightClip(1.0), C.GradClipValue(1.0), qat], epochs=epochs, lr=2e-3,
            scheduler="cosine", seed=seed, verbose=False).fit(X_tr, y_tr)
    qat.remove()  # the float baseline runs plain float weights (already on the 8-bit grid)
    net.eval()

    out = out or os.path.join(tempfile.mkdtemp(prefix="hwreg-demo-"), "digits_cnn.hwreg")
    folder = os.path.dirname(os.path.abspath(out))
    int8 = runtime.convert(net, input_shape=(1, 8, 8))
    int8_bytes = int8.save(os.path.join(folder, "digits_cnn.int8.hwreg"))
    budget = int(size_fraction * int8_bytes)
    say(f"2/4 int8 alone: a {int8_bytes} B file; compressing for this machine with a size budget of {budget} B "
        f"({size_fraction:.0%} of it), accuracy drop <= {100 * max_accuracy_drop:.1f} pt")
    rt, report = compress(net, (X_tr, y_tr, X_te, y_te), profile="host", size_budget=budget,
                          max_accuracy_drop=max_accuracy_drop, batch_size=1, fine_tune_epochs=3 if quick else 6,
                          seed=seed, raise_on_miss=False, profile_repeats=repeats)
    file_bytes = rt.save(out)
    # The inputs of `hwreg-rs compress` / `predict`, beside the model: the float state dict, the data, a batch.
    float_file = os.path.join(folder, "digits_cnn.float32.npz")
    data_file = os.path.join(folder, "digits_images.npz")
    batch_file = os.path.join(folder, "x.npy")
    np.savez(float_file, **net.state_dict())  # type: ignore[arg-type]
    np.savez(data_file, X_train=X_tr, y_train=y_tr, X_test=X_te, y_test=y_te)
    np.save(batch_file, np.ascontiguousarray(X_te[:8], dtype=np.float32))
    for name, got, want in (("runtime model", file_bytes, report.nbytes),
                            ("float state dict", os.path.getsize(float_file), report.float_bytes)):
        if got != want:  # the report sized the same files; a difference would be a bug
            raise RuntimeError(f"the saved {name} has {got} B, the report says {want} B")

    say("3/4 timing the three models side by side (batch 1 and 64)")
    x1 = np.ascontiguousarray(X_te[:1], dtype=np.float32)
    x64 = np.ascontiguousarray(np.resize(X_te, (64, 1, 8, 8)), dtype=np.float32)
    calls = {("float", 1): lambda: net(x1), ("float", 64): lambda: net(x64),
             ("int8", 1): lambda: int8.predict(x1), ("int8", 64): lambda: int8.predict(x64),
             ("compressed", 1): lambda: rt.predict(x1), ("compressed", 64): lambda: rt.predict(x64)}
    floats = [k for k in calls if k[0] == "float"]
    us = {k: 1e6 * t for k, t in side_by_side(calls, rounds=3 if quick else 5, repeats=repeats, numpy=floats).items()}
    # One number per quantity: the report's batch-1 latencies become these side-by-side figures.
    report.float_latency_s, report.latency_s = 1e-6 * us[("float", 1)], 1e-6 * us[("compressed", 1)]
    report.other_us = max(0.0, us[("compressed", 1)] - sum(l.measured_us for l in report.layers))

    def accuracy(fn: Any) -> float:
        return float(np.mean(fn(X_te).argmax(axis=1) == y_te))

    rows: list[dict[str, Any]] = [
        {"model": "float32 (NumPy)", "accuracy": report.float_accuracy, "file_bytes": report.float_bytes,
         "latency_b1_us": us[("float", 1)], "latency_b64_us": us[("float", 64)]},
        {"model": "int8 (hwreg_rs)", "accuracy": accuracy(int8.predict), "file_bytes": int8_bytes,
         "latency_b1_us": us[("int8", 1)], "latency_b64_us": us[("int8", 64)]},
        {"model": "compressed (hwreg_rs)", "accuracy": report.accuracy, "file_bytes": file_bytes,
         "latency_b1_us": us[("compressed", 1)], "latency_b64_us": us[("compressed", 64)]},
    ]
    f, q, c = rows
    chosen = [l for l in report.layers if l.sparsity >= 0.5 or (l.bits or 8) < 8 or l.channels_removed > 0]
    return {
        "models": rows, "budget_bytes": budget, "int8_bytes": int8_bytes, "met": report.met,
        "speedup_b1": f["latency_b1_us"] / c["latency_b1_us"], "speedup_b64": f["latency_b64_us"] / c["latency_b64_us"],
        "int8_speedup_b1": f["latency_b1_us"] / q["latency_b1_us"],
        "int8_speedup_b64": f["latency_b64_us"] / q["latency_b64_us"],
        "compressed_layers": [l.name for l in chosen],
        "shrunk_layers": [l.name for l in report.layers if l.channels_removed > 0],
        "sparse_layers": [l.name for l in report.layers if l.op == "sparse_linear"],
        "int4_layers": [l.name for l in report.layers if l.bits == 4], "runtime_file": out, "float_file": float_file,
        "data_file": data_file, "batch_file": batch_file,
        "report": report.to_dict(), "report_markdown": report.markdown(),
        "seconds": time.perf_counter() - t_start,
    }


def markdown(result: dict[str, Any]) -> str:
    """The demo's one table and the per-layer report, from :func:`run`'s result."""
    lines = ["| model | test accuracy | file (bytes) | latency batch 1 (µs) | latency batch 64 (µs) |",
             "|---|---|---|---|---|"]
    for r in result["models"]:
        lines.append(f"| {r['model']} | {100 * r['accuracy']:.2f}% | {r['file_bytes']} | {r['latency_b1_us']:.1f} | "
                     f"{r['latency_b64_us']:.1f} |")
    f, q, c = result["models"]
    lines += [
        "",
        f"compressed vs float: {c['file_bytes'] / f['file_bytes']:.1%} of the file, {result['speedup_b1']:.2f}× at "
        f"batch 1, {result['speedup_b64']:.2f}× at batch 64, {100 * (c['accuracy'] - f['accuracy']):+.2f} pt; "
        f"int8 alone: {result['int8_speedup_b1']:.2f}× / {result['int8_speedup_b64']:.2f}×",
        f"size budget {result['budget_bytes']} B ({result['budget_bytes'] / result['int8_bytes']:.0%} of the int8 "
        f"file): {'met' if result['met'] else 'MISSED'}; shrunk (channels removed): "
        f"{', '.join(result['shrunk_layers']) or 'none'}; pruned and stored sparse: "
        f"{', '.join(result['sparse_layers']) or 'none'}; 4-bit weights: {', '.join(result['int4_layers']) or 'none'}",
        f"runtime model saved to {result['runtime_file']}; to go on from here:",
        f"  hwreg-rs compress {result['float_file']} {result['data_file']} --arch cnn --profile cortex-a55 "
        f"--size-budget {result['budget_bytes']} -o cnn_a55.hwreg",
        f"  hwreg-rs predict {result['runtime_file']} {result['batch_file']} -o y.npy",
        "",
        "Per layer, measured as predict runs it (batch 1):",
        "",
        result["report_markdown"],
    ]
    return "\n".join(lines)
