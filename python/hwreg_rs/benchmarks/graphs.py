"""Graph suite: ONNX models in, trained, converted to int8 and exported, against ONNX Runtime.

For each model of :mod:`hwreg_rs.zoo` (an MLP, a plain CNN, a ResNet, a
MobileNetV2-style net and a transformer encoder, written as torch.onnx.export
writes them): import it with :func:`hwreg_rs.onnx.load`, train it on digits
with :func:`hwreg_rs.fit`, then measure

- the imported float graph against ONNX Runtime on the same ONNX (its float
  export): max |Δ| / max |logit| on the test set, and both accuracies;
- the int8 runtime model (:func:`hwreg_rs.runtime.convert`): accuracy drop;
- its integer ONNX export in ONNX Runtime: argmax agreement with ``predict``
  and max |Δ| in units of the largest logit;
- latency at batch 1 and 32, side by side, on 1 and on all threads: our
  float graph (NumPy), our int8 runtime with dynamic activations and with
  static (calibrated) ones, ORT fp32 on the float export, ORT's own dynamic
  int8 (``quantize_dynamic``) and static int8 (``quant_pre_process``, then
  ``quantize_static``: QDQ, per channel, uint8 activations (ORT's fast x86
  form), calibrated on the same training
  images as ours) of that export, and ORT on our int8 export; the digits
  accuracy of each; and the import time.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any, Callable

import numpy as np

from .._timing import side_by_side
from . import Table


# Both our thread team and ORT's pool keep spinning briefly after a call: a pause between contenders
# keeps one's spinning workers from taking the other's second core.
_SETTLE_S = 0.01


def _ort_session(proto: Any, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_int8(proto: Any, calib: np.ndarray) -> dict[str, Any]:
    """ONNX Runtime's own int8 versions of a float model: ``{"dynamic": proto, "static": proto}``
    (``quantize_dynamic``; ``quant_pre_process`` then ``quantize_static`` in QDQ format, per channel,
    uint8 activations and int8 weights, calibrated on ``calib``). A quantizer that fails on a model gives its error message instead."""
    import onnx as onnx_pkg
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: calib[i:i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        src, pre = os.path.join(d, "float.onnx"), os.path.join(d, "pre.onnx")
        onnx_pkg.save(proto, src)
        steps: dict[str, Callable[[str], None]] = {
            "dynamic": lambda dst: quantize_dynamic(pre, dst, weight_type=QuantType.QInt8),
            # uint8 activations, int8 weights: ORT's fast x86 form (its default, int8 activations, ran
            # torchvision mobilenet_v2 at 32x32 no faster than fp32 on Zen 4 and 2.3x slower at 2 threads).
            "static": lambda dst: quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ,
                                                  per_channel=True, activation_type=QuantType.QUInt8,
                                                  weight_type=QuantType.QInt8),
        }
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizers log advice (per-channel axes of 1-D weights) as warnings
        try:
            quant_pre_process(src, pre)
            for kind, make in steps.items():
                dst = os.path.join(d, f"{kind}.onnx")
                try:
                    make(dst)
                    out[kind] = onnx_pkg.load(dst)
                except Exception as e:  # noqa: BLE001 - reported in the table, the suite goes on
                    out[kind] = f"{type(e).__name__}: {e}"[:80]
        except Exception as e:  # noqa: BLE001 - the pre-processing failed: neither quantizer runs
            out = dict.fromkeys(steps, f"pre-process: {type(e).__name__}: {e}"[:80])
        finally:
            root.setLevel(level)
    return out


def _train(name: str, proto: Any, X: np.ndarray, y: np.ndarray, quick: bool) -> Any:
    from .. import onnx, train

    g = onnx.load(proto).train()
    epochs, lr = {"mlp": (30, 2e-3), "cnn": (15, 2e-3), "resnet": (12, 2e-3), "mobilenetv2": (15, 2e-3),
                  "transformer": (60, 5e-3)}[name]
    train.fit(g, X, y, epochs=max(2, epochs // 5) if quick else epochs, lr=lr, scheduler="cosine", seed=0,
              verbose=False)
    return g.eval()


def run(quick: bool = False) -> str:
    import onnxruntime  # noqa: F401 - the peer of this suite; ImportError skips it

    from .. import data, num_threads, onnx, runtime, set_num_threads, zoo

    digits = data.load_digits()
    models = zoo.digits_models()
    acc_t = Table(["model", "nodes", "import ms", "float acc (hw)", "float acc (ORT)", "max|Δ| vs ORT / max|logit|",
                   "int8 acc", "drop (pt)", "int8 ONNX argmax agree", "int8 ONNX max|Δ| / max|logit|"])
    q_acc_t = Table(["model", "ORT fp32", "ORT dynamic int8", "ORT static int8", "hw int8 dynamic", "hw int8 static"])
    lat_t = Table(["model", "threads", "batch", "hw float µs", "hw int8 µs", "hw static int8 µs", "ORT fp32 µs",
                   "ORT dyn int8 µs", "ORT static int8 µs", "ORT on our int8 µs", "int8 vs hw float",
                   "int8 vs ORT fp32", "static vs ORT static"])
    ovh_t = Table(["model", "native calls", "predict µs", "its native plan call µs", "predict − native µs"])
    all_threads = num_threads()
    for name, proto in models.items():
        shape = zoo.sample_shape(proto)
        X_tr = digits.X_train.reshape((-1,) + shape).astype(np.float32)
        X_te = digits.X_test.reshape((-1,) + shape).astype(np.float32)
        t0 = time.perf_counter()
        onnx.load(proto)
        import_ms = 1e3 * (time.perf_counter() - t0)
        g = _train(name, proto, X_tr, digits.y_train, quick)
        float_proto = onnx.export(g)
        ref = _ort_session(float_proto, all_threads).run(None, {g.inputs[0]: X_te})[0]
        y_hw = g(X_te)
        rt = runtime.convert(g, input_shape=shape)
        y_rt = rt.predict(X_te)
        int8_proto = onnx.export(rt)
        y_ex = _ort_session(int8_proto, all_threads).run(None, {rt.inputs[0]: X_te})[0]
        acc = lambda out: float(np.mean(out.argmax(1) == digits.y_test))  # noqa: E731
        calib = np.ascontiguousarray(X_tr[:64 if quick else 256])
        rt_s = runtime.convert(g, input_shape=shape, calibration=calib)
        ort_q = _ort_int8(float_proto, calib)
        ort_acc = {k: f"{acc(_ort_session(p, all_threads).run(None, {g.inputs[0]: X_te})[0]):.2%}"
                   if not isinstance(p, str) else p for k, p in ort_q.items()}
        q_acc_t.add(name, f"{acc(ref):.2%}", ort_acc["dynamic"], ort_acc["static"], f"{acc(y_rt):.2%}",
                    f"{acc(rt_s.predict(X_te)):.2%}")
        acc_t.add(name, len(g.nodes), import_ms, f"{acc(y_hw):.2%}", f"{acc(ref):.2%}",
                  f"{np.abs(y_hw - ref).max() / np.abs(ref).max():.1e}", f"{acc(y_rt):.2%}",
                  f"{100 * (acc(y_hw) - acc(y_rt)):+.2f}", f"{np.mean(y_ex.argmax(1) == y_rt.argmax(1)):.2%}",
                  f"{np.abs(y_ex - y_rt).max() / np.abs(y_rt).max():.1e}")
        for threads in sorted({1, all_threads}):
            set_num_threads(threads)
            s_f, s_q = _ort_session(float_proto, threads), _ort_session(int8_proto, threads)
            s_ort = {k: _ort_session(p, threads) for k, p in ort_q.items() if not isinstance(p, str)}
            for batch in (1, 32):
                x = np.ascontiguousarray(np.resize(X_te, (batch,) + shape))
                feed = {g.inputs[0]: x}
                r = 3 if quick else 7
                calls = {"f": lambda: g(x), "q": lambda: rt.predict(x), "qs": lambda: rt_s.predict(x),
                         "of": lambda: s_f.run(None, feed), "oq": lambda: s_q.run(None, feed)}
                calls.update({k: (lambda s=s: s.run(None, feed)) for k, s in s_ort.items()})
                t = side_by_side(calls, rounds=r, min_seconds=0.01 if quick else 0.03, pause_s=_SETTLE_S)
                us = lambda k: 1e6 * t[k] if k in t else None  # noqa: E731
                vs_static = f"{t['static'] / t['qs']:.2f}×" if "static" in t else None
                lat_t.add(name, threads, batch, us("f"), us("q"), us("qs"), us("of"), us("dynamic"), us("static"),
                          us("oq"), f"{t['f'] / t['q']:.2f}×", f"{t['of'] / t['q']:.2f}×", vs_static)
        set_num_threads(1)
        ovh_t.add(name, *_overhead(rt, np.ascontiguousarray(X_te[:1]), quick))
        set_num_threads(all_threads)
    out = ("## Graphs: ONNX in, trained on digits, int8, ONNX out\n\n" + acc_t.markdown() + "\n\n" +
           "Digits test accuracy of each int8 version (ORT's quantizers and ours, static ones calibrated on the "
           "same training images):\n\n" + q_acc_t.markdown() + "\n\n" + lat_t.markdown() + "\n\nPer-predict overhead, batch 1, 1 thread (what Python adds to a model that is one "
           "native call):\n\n" + ovh_t.markdown())
    torch_dir = os.environ.get("HWREG_TORCH_ONNX_DIR")
    if torch_dir:
        out += "\n\n" + _torch_exports(torch_dir, quick)
    return out


def _overhead(rt: Any, x: np.ndarray, quick: bool) -> tuple[Any, ...]:
    """Native calls per predict, and for a model that is one native call: predict against that call alone."""
    from .. import _planner

    calls = sum(isinstance(c, _planner.Segment) for _, c, _ in rt._steps)
    if rt._whole is None:
        return calls, "-", "-", "-"
    plan = rt._whole.plan
    fns = {"p": lambda: rt.predict(x), "n": lambda: plan.forward([x], 1)}
    t = side_by_side(fns, rounds=3 if quick else 7, min_seconds=0.01 if quick else 0.03)
    p, n = 1e6 * t["p"], 1e6 * t["n"]
    return calls, p, n, p - n


def _torch_exports(folder: str, quick: bool) -> str:
    """torchvision's resnet18 and mobilenet_v2 as torch.onnx.export wrote them (random weights): our dynamic
    and static int8 against ORT fp32 and ORT static int8, both static ones calibrated on the same images;
    batch 1 and 32 (resnet18's batch 32 only when not ``quick``: it is slow)."""
    import onnx as onnx_pkg

    from .. import num_threads, onnx, runtime, set_num_threads

    t = Table(["file", "input", "import ms", "max|Δ| vs ORT / max|logit|", "threads", "batch", "hw int8 µs",
               "hw static int8 µs", "ORT fp32 µs", "ORT static int8 µs", "int8 vs ORT fp32", "int8 vs ORT static",
               "static vs ORT static", "static vs ORT fp32", "int8 vs float argmax agree",
               "static vs float argmax agree", "ORT static vs float argmax agree"])
    all_threads = num_threads()
    ratio = lambda a, b: None if a is None or b is None else f"{a / b:.2f}×"  # noqa: E731
    for name in ("resnet18.ts.onnx", "resnet18.dynamo.onnx", "mobilenet_v2.ts.onnx", "mobilenet_v2.dynamo.onnx"):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            continue
        proto = onnx_pkg.load(path)
        t0 = time.perf_counter()
        g = onnx.load(proto)
        import_ms = 1e3 * (time.perf_counter() - t0)
        shape = tuple(g.input_shapes[0])
        x8 = np.random.default_rng(0).standard_normal((8,) + shape).astype(np.float32)
        ref = _ort_session(proto, all_threads).run(None, {g.inputs[0]: x8})[0]
        err = float(np.abs(g(x8) - ref).max() / np.abs(ref).max())
        agree = lambda y: f"{np.mean(y.argmax(1) == ref.argmax(1)):.0%}"  # noqa: E731
        rt = runtime.convert(g, input_shape=shape)
        # Our static int8 and ORT's, calibrated on the same random images (the weights are random too).
        calib = np.random.default_rng(1).standard_normal((4 if quick else 16,) + shape).astype(np.float32)
        rt_s = runtime.convert(g, input_shape=shape, calibration=calib)
        static = _ort_int8(proto, calib)["static"]
        s_agree = (agree(_ort_session(static, all_threads).run(None, {g.inputs[0]: x8})[0])
                   if not isinstance(static, str) else static)
        q_agree, qs_agree = agree(rt.predict(x8)), agree(rt_s.predict(x8))
        batches = (1,) if quick and name.startswith("resnet") else (1, 32)
        for threads in sorted({1, all_threads}):
            set_num_threads(threads)
            sess = _ort_session(proto, threads)
            s_sess = None if isinstance(static, str) else _ort_session(static, threads)
            for batch in batches:
                x = np.ascontiguousarray(np.resize(x8, (batch,) + shape))
                feed = {g.inputs[0]: x}
                fns = {"q": lambda: rt.predict(x), "qs": lambda: rt_s.predict(x), "f": lambda: sess.run(None, feed)}
                if s_sess is not None:
                    fns["s"] = lambda: s_sess.run(None, feed)
                times = side_by_side(fns, rounds=2 if quick else 5, min_seconds=0.05, pause_s=_SETTLE_S)
                q, qs, f, st = times["q"], times["qs"], times["f"], times.get("s")
                t.add(name, "x".join(map(str, shape)), import_ms, f"{err:.1e}", threads, batch, 1e6 * q, 1e6 * qs,
                      1e6 * f, None if st is None else 1e6 * st, ratio(f, q), ratio(st, q), ratio(st, qs),
                      ratio(f, qs), q_agree, qs_agree, s_agree)
        set_num_threads(all_threads)
    return "### torchvision exports (random weights)\n\n" + t.markdown()
