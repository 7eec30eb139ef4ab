"""Models exported by torch itself (``tests/fixtures/export_torch.py``) load and match ONNX Runtime.

Looks in ``tests/fixtures/*.onnx`` (small digits-sized models, committed) and in ``$HWREG_TORCH_ONNX_DIR``
(default ``/work/torch_onnx``, where the script writes torchvision ResNet-18 and MobileNetV2 too); each
file is imported with ``hw.onnx.load`` and compared with ONNX Runtime at two batch sizes. Skips cleanly
when no file is there or onnxruntime is missing.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import onnx
import pytest

import hwreg_rs as hw

HERE = pathlib.Path(__file__).parent / "fixtures"
EXTRA = pathlib.Path(os.environ.get("HWREG_TORCH_ONNX_DIR", "/work/torch_onnx"))
BIG = 5 * 2**20  # files above this run at batch 1 and 2 only


def _files():
    seen, out = set(), []
    for d in (HERE, EXTRA):
        if d.is_dir():
            for p in sorted(d.glob("*.onnx")):
                if p.name not in seen:
                    seen.add(p.name)
                    out.append(p)
    return out


FILES = _files()


def ort_run(path, x):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


@pytest.mark.parametrize("path", FILES or [pytest.param(None, marks=pytest.mark.skip(reason="no torch ONNX files"))],
                         ids=[p.name for p in FILES] or ["none"])
def test_torch_export_matches_ort(path):
    pytest.importorskip("onnxruntime")
    model = onnx.load(str(path))
    g = hw.onnx.load(path)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    assert all(dims), f"{path.name}: only the batch may be symbolic, got {dims}"
    batches = (1, 2) if path.stat().st_size > BIG else (1, 7)
    for batch in batches:
        x = np.random.default_rng(batch).random((batch, *dims), dtype=np.float32)
        ref = ort_run(path, x)
        got = g(x)
        got = list(got) if isinstance(got, tuple) else [got]
        assert len(got) == len(ref)
        for a, r in zip(got, ref):
            assert a.shape == r.shape and a.dtype == np.float32
            err = float(np.abs(a.astype(np.float64) - r).max())
            assert err <= 1e-4 * float(np.abs(r).max()), f"{path.name} batch {batch}: max|Δ| {err:.3g}"


@pytest.mark.parametrize("path", [p for p in FILES if ".ts_nofold." in p.name or ".dynamo." in p.name] or
                         [pytest.param(None, marks=pytest.mark.skip(reason="no torch ONNX files"))],
                         ids=[p.name for p in FILES if ".ts_nofold." in p.name or ".dynamo." in p.name] or ["none"])
def test_torch_parameter_names_survive(path):
    """Weights that torch did not fold keep their state_dict names (``conv1.weight``, ``fc.bias``)."""
    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    want = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1
            and n.input[1] in inits and not n.input[1].startswith("onnx::") and "." in n.input[1]}
    if not want:
        pytest.skip(f"{path.name}: every weight was renamed by the exporter")
    sd = hw.onnx.load(path).state_dict()
    missing = sorted(want - set(sd))
    assert not missing, f"{path.name}: {missing} not in state_dict ({sorted(sd)[:8]} ...)"
