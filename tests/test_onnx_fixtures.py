"""The ONNX fixtures themselves are valid: the checker accepts them, ONNX Runtime and the reference evaluator run
them and agree, at batch 1 and 7. Needs only onnx (and onnxruntime where marked), not hwreg_rs.onnx."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from hwreg_rs import zoo as F

FIXTURES = F.all_fixtures()


def ort_session(model):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_passes_the_checker(name):
    onnx.checker.check_model(FIXTURES[name], full_check=True)


@pytest.mark.parametrize("name", list(FIXTURES))
@pytest.mark.parametrize("batch", [1, 7])
def test_fixture_runs_in_ort_and_matches_the_reference(name, batch):
    m = FIXTURES[name]
    feeds = F.input_for(m, batch)
    got = ort_session(m).run(None, feeds)
    assert len(got) == len(m.graph.output)
    # onnx.reference (1.23) computes BatchNormalization-9 (opsets 9-13) wrongly; ORT is right there
    bn9 = m.opset_import[0].version < 14 and any(n.op_type == "BatchNormalization" for n in m.graph.node)
    ref = got if bn9 else ReferenceEvaluator(m).run(None, feeds)
    for a, r in zip(got, ref):
        assert a.shape[0] == batch and np.all(np.isfinite(a))
        assert np.abs(a - r).max() <= 1e-5 * np.abs(r).max()


def test_fixture_names_follow_torch():
    r = FIXTURES["resnet"]
    inits = {t.name for t in r.graph.initializer}
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_mean", "fc.weight", "fc.bias"} <= inits
    nodes = {n.name for n in r.graph.node}
    assert {"/conv1/Conv", "/layer1/layer1.0/conv1/Conv", "/layer1/layer1.0/Add",
            "/layer2/layer2.0/downsample/downsample.0/Conv", "/avgpool/GlobalAveragePool", "/fc/Gemm"} <= nodes
    assert r.graph.input[0].type.tensor_type.shape.dim[0].dim_param == F.BATCH
    mb = FIXTURES["mobilenetv2"]
    assert {"features.1.conv.0.0.weight", "features.2.conv.1.0.weight", "classifier.1.weight"} <= {
        t.name for t in mb.graph.initializer}
    dw = [n for n in mb.graph.node if n.op_type == "Conv" and
          onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "group")) > 1]
    assert dw, "mobilenetv2 has depthwise convs"
    clips = [n for n in mb.graph.node if n.op_type == "Clip"]
    assert clips and all(len(n.input) == 3 and not n.attribute for n in clips)  # opset >= 11 style: min/max inputs
    assert any(n.op_type == "Add" for n in mb.graph.node)  # a residual


@pytest.mark.parametrize("name, ops", [
    ("transformer", {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Transpose", "Softmax", "Erf",
                     "LayerNormalization", "MatMul", "Div", "ReduceMean", "Gemm"}),
    ("transformer_decomposed_ln", {"ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Erf"}),
    ("transformer_causal", {"Equal", "Slice", "Where"}),
    ("transformer_causal_expand", {"Equal", "Expand", "Where"}),
    ("cnn", {"Conv", "BatchNormalization", "Relu", "MaxPool", "Flatten", "Gemm"}),
    ("cnn_fused_bn", {"Conv", "Relu", "MaxPool", "Flatten", "Gemm"}),
    ("concat_branches", {"Concat", "Conv"}),
])
def test_fixture_has_the_torch_patterns(name, ops):
    m = FIXTURES[name]
    have = {n.op_type for n in m.graph.node}
    assert ops <= have
    if name == "transformer_decomposed_ln":
        assert "LayerNormalization" not in have
    if name == "cnn_fused_bn":
        assert "BatchNormalization" not in have
        assert all(i.startswith("onnx::Conv_") for n in m.graph.node if n.op_type == "Conv" for i in n.input[1:])


def test_fixtures_are_seeded():
    a, b, c = F.resnet(seed=0), F.resnet(seed=0), F.resnet(seed=1)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()


def test_single_op_builder():
    m = F.single_op("Softmax", (2, 5), axis=0)
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(0).random((2, 5), dtype=np.float32)
    (y,) = ReferenceEvaluator(m).run(None, {"x": x})
    np.testing.assert_allclose(y.sum(axis=0), 1.0, rtol=1e-6)
    assert m.graph.node[0].name == "/op/Softmax"
