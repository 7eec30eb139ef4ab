"""`hwreg-rs demo --quick`: one story, every figure consistent with every other."""

import json
import os

import pytest

from hwreg_rs import cli

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "digits.hwreg")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = cli.main(["demo", "--quick", "--json", "--out", out])
    return status, json.loads(buf.getvalue()), out


def test_demo_compresses_for_a_budget_int8_alone_misses(demo):
    status, d, out = demo
    float_row, int8_row, comp = d["models"]
    assert [r["model"] for r in d["models"]] == ["float32 (NumPy)", "int8 (hwreg_rs)", "compressed (hwreg_rs)"]
    assert int8_row["file_bytes"] == d["int8_bytes"] > d["budget_bytes"]  # int8 alone cannot meet the budget
    assert status == 0 and d["met"] and comp["file_bytes"] <= d["budget_bytes"]
    # A quarter of the int8 file: layers shrunk (channels removed) because the budget required it,
    # named as in the model; every compressed layer is shrunk, pruned and stored sparse, or 4-bit.
    assert d["budget_bytes"] == int(0.25 * d["int8_bytes"])
    layers = {l["name"]: l for l in d["report"]["layers"]}
    assert d["shrunk_layers"] and all(layers[n]["channels_removed"] > 0 for n in d["shrunk_layers"])
    assert all(layers[n]["op"] == "sparse_linear" for n in d["sparse_layers"])
    assert all(layers[n]["op"] == "int4_linear" and layers[n]["bits"] == 4 for n in d["int4_layers"])
    assert set(d["compressed_layers"]) == set(d["shrunk_layers"]) | set(d["sparse_layers"]) | set(d["int4_layers"])
    assert any(c["chosen"] and c["kind"] == "shrink" for c in d["report"]["candidates"])
    assert all(l["op"] != "relu" for l in d["report"]["layers"])


def test_demo_figures_are_one_number_per_quantity(demo):
    _, d, out = demo
    float_row, int8_row, comp = d["models"]
    rep = d["report"]
    assert comp["file_bytes"] == rep["nbytes"] == os.path.getsize(out) == os.path.getsize(d["runtime_file"])
    assert float_row["file_bytes"] == rep["float_bytes"]
    assert comp["accuracy"] == rep["accuracy"] and float_row["accuracy"] == rep["float_accuracy"]
    assert comp["latency_b1_us"] == pytest.approx(1e6 * rep["latency_s"])
    assert float_row["latency_b1_us"] == pytest.approx(1e6 * rep["float_latency_s"])
    # The per-layer rows and the rest add up to the compressed model's batch-1 latency.
    per_layer = sum(l["measured_us"] for l in rep["layers"]) + rep["other_us"]
    assert per_layer == pytest.approx(comp["latency_b1_us"]) or rep["other_us"] == 0.0
    assert d["speedup_b1"] == pytest.approx(float_row["latency_b1_us"] / comp["latency_b1_us"])
    assert d["speedup_b64"] == pytest.approx(float_row["latency_b64_us"] / comp["latency_b64_us"])
    assert d["int8_speedup_b64"] == pytest.approx(float_row["latency_b64_us"] / int8_row["latency_b64_us"])


def test_demo_files_feed_compress_and_predict(demo, tmp_path, capsys):
    _, d, _ = demo
    out = str(tmp_path / "a55.hwreg")
    status = cli.main(["compress", d["float_file"], d["data_file"], "--arch", "cnn", "--profile", "cortex-a55",
                       "--max-drop", "0.2", "-o", out])
    assert status == 0 and os.path.exists(out)
    y = str(tmp_path / "y.npy")
    assert cli.main(["predict", d["runtime_file"], d["batch_file"], "-o", y]) == 0
    import numpy as np

    assert np.load(y).shape == (8, 10)
