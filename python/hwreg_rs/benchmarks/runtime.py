"""Runtime suite: the int8 digits models against the float models in NumPy and ONNX Runtime.

Trains the MLP 64-256-128-10 and the small CNN on digits (fixed seeded split,
360 test samples), converts both with :func:`hwreg_rs.runtime.convert`, checks
accuracy, then times ``predict`` side by side with the float model in NumPy
and, when onnxruntime is installed, with ORT running the same weights
dynamically quantized (``quantize_dynamic``, its weights prepacked). File sizes
compare the ``.hwreg`` files with the float32 parameters; a 90%-pruned MLP
shows what sparsity adds.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from . import Table
from .._timing import side_by_side


def _train(quick: bool) -> dict[str, Any]:
    from .. import data, nn, train

    split = data.load_digits()
    images = data.load_digits(images=True)
    mlp = nn.mlp([64, 256, 128, 10], rng=0)
    train.fit(mlp, split.X_train, split.y_train, epochs=8 if quick else 30, lr=1e-3, scheduler="cosine",
              verbose=False)
    cnn = nn.small_cnn(rng=0)
    train.fit(cnn, images.X_train, images.y_train, epochs=3 if quick else 12, lr=2e-3, scheduler="cosine",
              verbose=False)
    return {"split": split, "images": images, "mlp": mlp.eval(), "cnn": cnn.eval()}


def _ort_dynamic(mlp: Any, threads: int) -> Any:
    """An ORT session running the MLP's weights through ``quantize_dynamic``, or None."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return None
    from ..nn.layers import Linear, ReLU

    nodes, inits, cur = [], [], "x"
    for i, m in enumerate(mlp):
        if isinstance(m, Linear):
            inits += [numpy_helper.from_array(np.ascontiguousarray(m.weight.data.T), f"w{i}"),
                      numpy_helper.from_array(m.bias.data, f"b{i}")]
            nodes += [helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]),
                      helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
            cur = f"a{i}"
        elif isinstance(m, ReLU):
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    d = tempfile.mkdtemp(prefix="hwreg-ort-")
    src, dst = os.path.join(d, "mlp.onnx"), os.path.join(d, "mlp.int8.onnx")
    onnx.save(model, src)
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(dst, so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x})[0]


def run(quick: bool = False) -> str:
    from .. import num_threads, prune, runtime

    t = _train(quick)
    split, images, mlp, cnn = t["split"], t["images"], t["mlp"], t["cnn"]
    rt_mlp = runtime.convert(mlp, input_shape=(64,))
    rt_cnn = runtime.convert(cnn, input_shape=(1, 8, 8))
    ort_fn = _ort_dynamic(mlp, num_threads())

    acc = Table(["model", "float32 accuracy", "int8 accuracy", "drop (pt)"])
    for name, f, q, X, y in (("MLP", mlp, rt_mlp.predict, split.X_test, split.y_test),
                             ("CNN", cnn, rt_cnn.predict, images.X_test, images.y_test)):
        fa = float(np.mean(f(X).argmax(1) == y))
        qa = float(np.mean(q(X).argmax(1) == y))
        acc.add(name, f"{100 * fa:.2f}%", f"{100 * qa:.2f}%", f"{100 * (fa - qa):+.2f}")

    lat = Table(["model", "batch", "float NumPy µs (best BLAS threads)", "int8 hwreg µs", "ORT dyn-int8 µs", "hwreg vs float",
                 "hwreg vs ORT"])
    repeats = 5 if quick else 9
    cases = [("MLP", b, mlp, rt_mlp.predict, ort_fn, (64,)) for b in (1, 64, 256)]
    cases += [("CNN", b, cnn, rt_cnn.predict, None, (1, 8, 8)) for b in (1, 64)]
    for name, b, f, q, o, shape in cases:
        x = np.ascontiguousarray(np.random.default_rng(b).random((b,) + shape, dtype=np.float32))
        np.testing.assert_allclose(q(x), f(x), atol=0.25 * float(np.abs(f(x)).max()))  # sanity before timing
        # Side by side as the demo times them: the float model the better of its BLAS threads.
        calls = {"float": lambda: f(x), "hwreg": lambda: q(x)}
        if o is not None:
            calls["ort"] = lambda: o(x)
        t = side_by_side(calls, rounds=repeats, min_seconds=0.02, numpy=["float"])
        tf, tq, to = t["float"], t["hwreg"], t.get("ort")
        lat.add(name, b, 1e6 * tf, 1e6 * tq, None if to is None else 1e6 * to, f"{tf / tq:.2f}×",
                "–" if to is None else f"{to / tq:.2f}×")

    sizes = Table(["model", "float32 params (bytes)", ".hwreg file (bytes)", "ratio"])
    d = tempfile.mkdtemp(prefix="hwreg-bench-")
    pruned = runtime.convert(_pruned_copy(mlp, prune), input_shape=(64,), sparse="always")
    for name, net, rt in (("MLP int8", mlp, rt_mlp), ("CNN int8", cnn, rt_cnn), ("MLP int8 + 90% 1×8 blocks", mlp, pruned)):
        fb = 4 * sum(p.data.size for _, p in net.named_parameters())
        size = rt.save(os.path.join(d, "m.hwreg"))
        sizes.add(name, fb, size, f"{size / fb:.1%}")

    head = (f"## Runtime models (digits; {num_threads()} threads; median of {repeats}; "
            f"ORT {'absent' if ort_fn is None else 'quantize_dynamic, same threads'})")
    return "\n\n".join([head, acc.markdown(), lat.markdown(), sizes.markdown()])


def _pruned_copy(mlp: Any, prune: Any) -> Any:
    import copy

    from ..nn.layers import Linear

    net = copy.deepcopy(mlp)
    for m in net:
        if isinstance(m, Linear):
            m.weight.data *= prune.block_mask(m.weight.data, 0.9, block=(1, 8))
    return net
