"""ONNX in, train under hardware constraints, convert, ONNX out.

* an imported residual CNN (``hwreg_rs.zoo.resnet``) fine-tunes on digits under QAT + gradual pruning +
  weight clipping, every constraint's invariant holds, and accuracy rises well above chance;
* ``ONNX -> hw.onnx.load -> hw.runtime.convert -> hw.onnx.export -> ONNX Runtime`` agrees with
  ``rt.predict`` on the argmax of >= 99% of inputs and within one quantization step on the logits (the
  output DequantizeLinear's scale, or ``max|logits| / 127`` when the export writes float logits);
* the float export of a loaded graph (or of a Sequential) matches ``g(x)`` to 1e-5 relative.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import hwreg_rs as hw
from hwreg_rs import constraints as C
from hwreg_rs import zoo as F

CLIP = 0.5
SPARSITY = 0.5
WEIGHT_BITS = 6


def ort_session(path_or_model):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = 1
    src = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def ort_predict(path, x):
    sess = ort_session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(float(np.abs(b).max()), 1e-12))


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return hw.data.load_digits(images=True)


@pytest.fixture(scope="module")
def trained(digits):
    """The imported ResNet fine-tuned 4 epochs on 640 digits under QAT + pruning + clipping."""
    X_tr, y_tr, X_te, y_te = digits
    model = F.resnet(seed=0)
    g = hw.onnx.load(model)
    acc0 = float(np.mean(np.argmax(g(X_te), axis=1) == y_te))
    steps_per_epoch = 640 // 32
    cons = [C.QAT(weight_bits=WEIGHT_BITS, activation_bits=8),
            C.GradualPruning(SPARSITY, end_step=3 * steps_per_epoch, frequency=5),
            C.WeightClip(CLIP)]
    tr = hw.Trainer(g, constraints=cons, epochs=4, batch_size=32, lr=0.01, optimizer="adam", verbose=False,
                    seed=0).fit(X_tr[:640], y_tr[:640])
    g.eval()
    return dict(model=model, g=g, cons=cons, trainer=tr, acc0=acc0, X_te=X_te, y_te=y_te)


# ---------------------------------------------------------------------------
# training an imported graph
# ---------------------------------------------------------------------------

def test_constraints_find_every_conv_and_linear_of_the_imported_graph(trained):
    model, g = trained["model"], trained["g"]
    expected = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    found = {name for name, _ in C.select_params(g)}
    assert found == expected, f"select_params found {sorted(found)}; the model's weights are {sorted(expected)}"
    qat = trained["cons"][0]
    assert len(qat.layers_) == len(expected)


def test_weight_clip_invariant(trained):
    clip = trained["cons"][2]
    clip.check()
    for name, p in C.select_params(trained["g"]):
        assert np.abs(p.data).max() <= CLIP, name


def test_gradual_pruning_reached_its_sparsity(trained):
    prune = trained["cons"][1]
    prune.check()
    for name, p in C.select_params(trained["g"]):
        target = round(SPARSITY * p.data.size) / p.data.size
        assert np.mean(p.data == 0) >= target - 1e-9, name
        assert np.all(p.data[~prune.masks_[name]] == 0)


def test_qat_weights_on_their_grid(trained):
    qat = trained["cons"][0]
    qat.check()
    for name, m in qat.layers_.items():
        wq = m.effective_weight()
        scale = m.weight_fake_quant.scale_for(m.weight.data).astype(np.float64)
        q = wq / scale
        np.testing.assert_allclose(q, np.rint(q), atol=1e-3, err_msg=name)
        assert np.rint(q).min() >= -(2 ** (WEIGHT_BITS - 1)) and np.rint(q).max() <= 2 ** (WEIGHT_BITS - 1) - 1
        assert max(len(np.unique(r)) for r in wq.reshape(wq.shape[0], -1)) <= 2 ** WEIGHT_BITS


def test_fine_tuning_beats_chance(trained):
    acc = float(np.mean(np.argmax(trained["g"](trained["X_te"]), axis=1) == trained["y_te"]))
    assert acc > 0.6, f"test accuracy {acc:.3f} (random init: {trained['acc0']:.3f}, chance 0.1)"
    assert acc > trained["acc0"] + 0.2
    hist = trained["trainer"].history_
    assert hist["loss"][-1] < hist["loss"][0]


def test_fit_one_shot_on_an_imported_mlp(digits):
    X_tr, y_tr, X_te, y_te = digits
    g = hw.onnx.load(F.mlp(seed=1))
    h = hw.fit(g, X_tr[:512].reshape(512, 64), y_tr[:512], epochs=3, lr=0.01, verbose=False)
    assert h["loss"][-1] < h["loss"][0]
    assert np.mean(np.argmax(g(X_te.reshape(-1, 64)), axis=1) == y_te) > 0.6


# ---------------------------------------------------------------------------
# int8 runtime and its ONNX export vs ONNX Runtime
# ---------------------------------------------------------------------------

def _output_step(model: onnx.ModelProto) -> float | None:
    """The quantization step of the exported logits: the scale of the DequantizeLinear that makes the output
    (through any Identity / Reshape / Flatten), or None when the output is not a dequantized tensor."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    v = model.graph.output[0].name
    while v in producer and producer[v].op_type in ("Identity", "Reshape", "Flatten", "Squeeze"):
        v = producer[v].input[0]
    n = producer.get(v)
    if n is None or n.op_type != "DequantizeLinear":
        return None
    s = inits.get(n.input[1], consts.get(n.input[1]))
    return None if s is None else float(np.max(s))


def _check_runtime_export(g, input_shape, X, tmp_path):
    rt = hw.runtime.convert(g, input_shape=input_shape)
    p_rt = rt.predict(X)
    path = tmp_path / "rt.onnx"
    hw.onnx.export(rt, path)
    exported = onnx.load(str(path))
    onnx.checker.check_model(exported, full_check=True)
    p_ort = ort_predict(path, X)
    assert p_ort.shape == p_rt.shape and p_ort.dtype == np.float32
    agree = float(np.mean(np.argmax(p_ort, axis=1) == np.argmax(p_rt, axis=1)))
    assert agree >= 0.99, f"argmax agrees on {agree:.3%}"
    # one quantization step of the logits: the scale of the DequantizeLinear that makes them, or, when the last
    # layer writes float logits (int32 accumulator * scale + bias), one int8 step of their range
    step = _output_step(exported)
    if step is None:
        step = float(np.abs(p_rt).max()) / 127
    err = float(np.abs(p_ort - p_rt).max())
    assert err <= step * (1 + 1e-5), f"logits differ by {err:.3g} > one quantization step {step:.3g}"
    ops = {n.op_type for n in exported.graph.node}
    assert ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                  "ConvInteger", "DynamicQuantizeLinear"}, f"the export is not quantized: {sorted(ops)}"
    return rt, p_rt


def test_trained_graph_round_trip_agrees_with_ort(trained, tmp_path):
    g = trained["g"]
    rt, p_rt = _check_runtime_export(g, (1, 8, 8), trained["X_te"], tmp_path)
    acc = float(np.mean(np.argmax(p_rt, axis=1) == trained["y_te"]))
    acc_float = float(np.mean(np.argmax(g(trained["X_te"]), axis=1) == trained["y_te"]))
    assert acc >= acc_float - 0.03, f"int8 runtime accuracy {acc:.3f} vs graph {acc_float:.3f}"


@pytest.mark.parametrize("name, input_shape", [
    ("mlp", (64,)), ("cnn", (1, 8, 8)), ("resnet", (1, 8, 8)), ("resnet_fused_bn", (1, 8, 8)),
    ("mobilenetv2", (1, 8, 8)), ("concat_branches", (1, 8, 8)), ("transformer", (8, 8)),
])
def test_imported_fixture_round_trip_agrees_with_ort(name, input_shape, digits, tmp_path):
    model = F.all_fixtures()[name]
    g = hw.onnx.load(model)
    X = F.digits_input(model, digits.X_test.reshape(len(digits.X_test), 64))
    _check_runtime_export(g, input_shape, X, tmp_path)


# ---------------------------------------------------------------------------
# float export
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "mobilenetv2", "concat_branches", "transformer",
                                  "transformer_decomposed_ln"])
def test_float_export_of_a_loaded_graph_matches(name, tmp_path):
    model = F.all_fixtures()[name]
    g = hw.onnx.load(model)
    path = tmp_path / f"{name}.onnx"
    hw.onnx.export(g, path)
    exported = onnx.load(str(path))
    onnx.checker.check_model(exported, full_check=True)
    for batch in (1, 7):
        x = F.input_for(model, batch, seed=batch)["input"]
        ref = g(x)
        got = ort_predict(path, x)
        assert got.shape == ref.shape
        assert rel_err(got, ref) <= 1e-5, f"batch {batch}"
    # and it loads back to the same function
    g2 = hw.onnx.load(path)
    x = F.input_for(model, 3)["input"]
    assert rel_err(g2(x), g(x)) <= 1e-5


def test_float_export_of_a_trained_graph_matches(trained, tmp_path):
    """After fine-tuning (hooks removed: float weights), the export computes what the graph computes."""
    g = trained["g"]
    trained["cons"][0].remove()
    try:
        path = tmp_path / "trained.onnx"
        hw.onnx.export(g, path)
        x = trained["X_te"][:50]
        assert rel_err(ort_predict(path, x), g(x)) <= 1e-5
    finally:
        trained["cons"][0].attach(g)


def test_float_export_of_a_sequential_matches(tmp_path):
    net = hw.nn.mlp([64, 32, 10], rng=0)
    net.eval()
    path = tmp_path / "mlp.onnx"
    hw.onnx.export(net, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = np.random.default_rng(0).random((9, 64), dtype=np.float32)
    assert rel_err(ort_predict(path, x), net(x)) <= 1e-5


def test_float_export_of_a_conv_sequential_matches(tmp_path):
    net = hw.nn.small_cnn(rng=0)
    net.eval()
    path = tmp_path / "cnn.onnx"
    hw.onnx.export(net, path, input_shape=(1, 8, 8))
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    assert rel_err(ort_predict(path, x), net(x)) <= 1e-5
