import dataclasses
import json

import pytest

from hwreg_rs import profiles
from hwreg_rs.profiles import HardwareProfile, LayerWork, estimate, fits, preset


@pytest.mark.parametrize("name", sorted(profiles.PRESETS))
def test_presets_round_trip_json(tmp_path, name):
    p = preset(name)
    assert p.source, "every preset cites where its figures come from"
    path = tmp_path / f"{name}.json"
    p.save(path)
    assert HardwareProfile.load(path) == p
    assert json.loads(path.read_text())["name"] == name


def test_required_presets_exist():
    for name in ["x86-avx2", "x86-avx512-vnni", "cortex-a72", "cortex-a55", "cortex-m7"]:
        preset(name)
    assert preset("x86-avx2").needs_7bit_activations
    assert not preset("x86-avx512-vnni").needs_7bit_activations
    with pytest.raises(ValueError, match="unknown profile"):
        preset("pdp-11")


def test_bad_profiles_and_files(tmp_path):
    with pytest.raises(ValueError, match="int8_gops"):
        HardwareProfile("x", int8_gops=0, fp32_gflops=1, mem_bandwidth_gbs=1, mem_capacity_bytes=1)
    with pytest.raises(ValueError, match="pattern"):
        HardwareProfile("x", 1, 1, 1, 1, sparsity_patterns={"diagonal": 0.5})
    with pytest.raises(ValueError, match="unknown profile fields"):
        HardwareProfile.from_dict({**preset("cortex-m7").to_dict(), "colour": "red"})
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="not a profile JSON"):
        HardwareProfile.load(bad)


def _linear(name, k, n, batch, precision="fp32", density=1.0, pattern="dense"):
    wb = k * n * (1 if precision == "int8" else 4)
    return LayerWork(name, "linear", macs=batch * k * n, weight_bytes=int(wb * density) if pattern != "dense" else wb,
                     act_in_bytes=batch * k * 4, act_out_bytes=batch * n * 4, precision=precision,
                     density=density, pattern=pattern)


def test_roofline_compute_and_memory_bound():
    p = preset("x86-avx2")
    big = estimate([_linear("fc", 4096, 4096, 512)], p).layers[0]
    assert big.bound == "compute"
    assert big.compute_s == pytest.approx(2 * 512 * 4096 * 4096 / (p.fp32_gflops * 1e9))
    gemv = estimate([_linear("fc", 4096, 4096, 1)], p).layers[0]
    assert gemv.bound == "memory"
    tiny = estimate([_linear("fc", 4, 4, 1)], p).layers[0]
    assert tiny.bound == "overhead" and tiny.latency_s == pytest.approx(p.layer_overhead_us * 1e-6, rel=0.01)


def test_int8_and_sparsity_reduce_cost_only_where_supported():
    p = preset("x86-avx2")
    f = estimate([_linear("fc", 1024, 1024, 128)], p).latency_s
    q = estimate([_linear("fc", 1024, 1024, 128, "int8")], p).latency_s
    s = estimate([_linear("fc", 1024, 1024, 128, "fp32", 0.1, "block")], p).latency_s
    assert q < f and s < f
    m7 = preset("cortex-m7")  # no sparse kernels: sparsity saves nothing in compute
    d = estimate([_linear("fc", 64, 64, 1, "int8")], m7).layers[0].compute_s
    sp = estimate([_linear("fc", 64, 64, 1, "int8", 0.1, "unstructured")], m7).layers[0].compute_s
    assert sp == d


def test_memory_is_weights_plus_peak_activations_and_fits():
    layers = [_linear("a", 64, 256, 1, "int8"), _linear("b", 256, 10, 1, "int8")]
    est = estimate(layers, preset("cortex-m7"))
    assert est.weight_bytes == 64 * 256 + 256 * 10
    assert est.peak_activation_bytes == 64 * 4 + 256 * 4
    assert fits(est, preset("cortex-m7"))
    huge = estimate([_linear("big", 4096, 4096, 1, "fp32")], preset("cortex-m7"))
    assert not fits(huge, preset("cortex-m7"))
    assert est.table()[-1]["name"] == "total"
    assert est.energy_j > 0


def test_layerwork_validation():
    with pytest.raises(ValueError, match="precision"):
        LayerWork("x", "linear", 1, 1, 1, 1, precision="int2")
    with pytest.raises(ValueError, match="density"):
        LayerWork("x", "linear", 1, 1, 1, 1, density=1.5)


def test_scaled_and_calibrated_profiles_are_the_one_model():
    p = preset("x86-avx2")
    work = [_linear("fc", 512, 512, 8, "int8"), LayerWork("pool", "pool", 0, 0, 4096, 1024)]
    base = estimate(work, p).latency_s
    assert estimate(work, p.scaled(2.5)).latency_s == pytest.approx(2.5 * base)
    cal = p.calibrated(work, 3e-4)
    assert estimate(work, cal).latency_s == pytest.approx(3e-4)
    assert cal.sparsity_patterns == p.sparsity_patterns and cal.name == p.name
    with pytest.raises(ValueError, match="factor"):
        p.scaled(0.0)
    with pytest.raises(ValueError, match="measured_s"):
        p.calibrated(work, float("nan"))
    from hwreg_rs import profiles

    assert profiles.resolve(p) is p and profiles.resolve("cortex-m7") is preset("cortex-m7")
    with pytest.raises(TypeError, match="profile"):
        profiles.resolve(3)


def test_sparse_kernel_work_pays_the_sparse_cost_even_when_slower():
    p = preset("x86-avx2")  # unstructured efficiency 0.35: at 50% kept, sparse is slower than dense
    dense = LayerWork("fc", "linear", 64 * 512 * 512, 512 * 512, 64 * 512 * 4, 64 * 512 * 4, "int8")
    chooser = LayerWork("fc", "linear", dense.macs, dense.weight_bytes, dense.act_in_bytes, dense.act_out_bytes, "int8",
                        density=0.5, pattern="unstructured")
    stored = LayerWork("fc", "linear", dense.macs, dense.weight_bytes, dense.act_in_bytes, dense.act_out_bytes, "int8",
                       density=0.5, pattern="unstructured", sparse_kernel=True)
    t = [estimate([w], p).layers[0].compute_s for w in (dense, chooser, stored)]
    assert t[1] <= t[0] < t[2]


def test_the_one_timer_counts_its_calls():
    from hwreg_rs._timing import median_seconds

    calls = []
    assert median_seconds(lambda: calls.append(1), repeats=4) >= 0
    assert len(calls) == 2 + 4  # a warm-up, a sizing call, one call per sample
    calls.clear()
    median_seconds(lambda: calls.append(1), repeats=50, budget_s=0.0, min_repeats=3)
    assert len(calls) == 2 + 3  # a budget of nothing: the fewest samples


def test_peak_activation_bytes_holds_what_later_steps_read():
    from hwreg_rs.profiles import peak_activation_bytes

    sizes = {"x": 100, "a": 10, "b": 10, "y": 100}
    chain = [(["x"], ["a"]), (["a"], ["b"]), (["b"], ["y"])]
    # A chain holds one layer's input and output at a time.
    assert peak_activation_bytes(chain, sizes, inputs=["x"], outputs=["y"]) == 110
    # A residual block holds x while a and b are computed, and the sum reads it again.
    residual = [(["x"], ["a"]), (["a"], ["b"]), (["x", "b"], ["y"])]
    assert peak_activation_bytes(residual, sizes, inputs=["x"], outputs=["y"]) == 210
    # Values without a size (weights, constants) count nothing; no steps: the inputs alone.
    assert peak_activation_bytes([(["x", "w"], ["y"])], sizes, inputs=["x"]) == 200
    assert peak_activation_bytes([], sizes, inputs=["x"]) == 100
    layers = [_linear("a", 64, 256, 1, "int8"), _linear("b", 256, 10, 1, "int8")]
    est = estimate(layers, preset("cortex-m7"), activation_peak=12345)
    assert est.peak_activation_bytes == 12345 and est.memory_bytes == est.weight_bytes + 12345
    with pytest.raises(ValueError, match="activation_peak"):
        estimate(layers, preset("cortex-m7"), activation_peak=-1)


def test_peak_activation_bytes_of_a_runtime_chain_grows_with_the_batch():
    import numpy as np

    import hwreg_rs as hw
    from hwreg_rs.compress import _activation_peak

    g = hw.nn.Graph.from_module(hw.nn.mlp([8, 16, 8], rng=0))
    rt = hw.runtime.convert(g, input_shape=(8,))
    shapes = rt.shapes(1)
    # Chain: the largest input + output pair of one node (float32 values).
    want = max(4 * (int(np.prod(shapes[n.inputs[0]])) + int(np.prod(shapes[n.outputs[0]]))) for n in rt.nodes)
    assert _activation_peak(rt, 1) == want
    assert _activation_peak(rt, 4) == 4 * want


def test_peak_activation_bytes_of_a_resnet_holds_the_skip():
    import os

    import numpy as np

    import hwreg_rs as hw
    from hwreg_rs.compress import _activation_peak

    pytest.importorskip("onnx")
    path = os.path.join(os.path.dirname(__file__), "fixtures", "digits_resnet.dynamo.onnx")
    g = hw.onnx.load(path)
    rt = hw.runtime.convert(g.eval(), input_shape=g.input_shapes[0])
    shapes = rt.shapes(1)
    conv2 = next(n for n in rt.nodes if n.name == "layer1.0.conv2")
    add = next(n for n in rt.nodes if n.inputs[0] == conv2.outputs[0] or conv2.outputs[0] in n.inputs)
    skip = next(v for v in add.inputs if v != conv2.outputs[0])
    held = {conv2.inputs[0], conv2.outputs[0], skip}  # while conv2 runs, the skip waits for the add
    assert len(held) == 3
    assert _activation_peak(rt, 1) >= sum(4 * int(np.prod(shapes[v])) for v in held)


def _int4_pair(k=4096, n=4096, rows=1):
    """The same layer with int8 weights (one byte each + scale + bias) and int4 ones (half a byte)."""
    kw = dict(macs=rows * k * n, act_in_bytes=4 * rows * k, act_out_bytes=4 * rows * n, gemm=(rows, k, n))
    return (LayerWork("w8", "linear", weight_bytes=k * n + 8 * n, precision="int8", **kw),
            LayerWork("w4", "linear", weight_bytes=k * n // 2 + 8 * n, precision="int4", **kw))


def test_int4_without_a_kernel_figure_is_int8_compute_plus_an_unpack_and_moves_half_the_bytes():
    m7 = preset("cortex-m7")  # compute-bound at batch 1; no int4 figure
    assert m7.int4_speedup == () and m7.int4_factor(1) is None
    w8, w4 = _int4_pair(512, 256)
    e8, e4 = estimate([w8], m7).layers[0], estimate([w4], m7).layers[0]
    # The unpack: one int8 operation per weight on top of int8's two per MAC.
    assert e4.compute_s == pytest.approx(e8.compute_s * 1.5)
    assert e4.memory_s < e8.memory_s and e4.weight_bytes == 512 * 256 // 2 + 8 * 256
    assert e4.energy_j < e8.energy_j  # the MACs cost int8's, the bytes moved are fewer
    # Memory-bound (a big layer on a desktop preset): the halved bytes make it faster.
    big8, big4 = _int4_pair()
    avx = preset("x86-avx512-vnni")
    assert estimate([big4], avx).latency_s < 0.6 * estimate([big8], avx).latency_s


def test_int4_speedup_scales_the_mac_time_by_batch_rows(tmp_path):
    base = preset("x86-avx512-vnni")
    p = HardwareProfile.from_dict({**base.to_dict(), "int4_speedup": [[16, 0.5], [1, 4.0]]})
    assert p.int4_speedup == ((1, 4.0), (16, 0.5))
    assert p.int4_factor(1) == 4.0 and p.int4_factor(64) == 0.5
    assert p.int4_factor(4) == pytest.approx(4.0 * (0.5 / 4.0) ** 0.5)  # halfway in log rows
    for rows, f in ((1, 4.0), (16, 0.5)):
        w8, w4 = _int4_pair(512, 512, rows)
        assert estimate([w4], p).layers[0].compute_s == pytest.approx(estimate([w8], p).layers[0].compute_s / f)
    assert p.overhead_s("linear", "int4") == p.overhead_s("linear", "int8")  # not measured apart here
    path = tmp_path / "p.json"
    p.save(path)
    assert HardwareProfile.load(path) == p
    for bad in ([[0, 2.0]], [[1, 0.0]], [[1, 2.0], [1, 3.0]], [[1, float("nan")]], "x", [[1]]):
        with pytest.raises(ValueError, match="int4_speedup"):
            HardwareProfile("x", 1.0, 1.0, 1.0, 1, int4_speedup=bad)


def test_int4_out_costs_each_output_of_an_int4_layer_beyond_int8s():
    # measure_host: at one row a 64-input int4 layer ran slower than int8 (its per-output unpacking)
    base = preset("x86-avx512-vnni").to_dict()
    p = HardwareProfile.from_dict({**base, "int4_speedup": [[1, 1.0]], "ns_per_element": {"int4_out": 2.0}})
    for rows in (1, 4):
        w8, w4 = _int4_pair(64, 256, rows)
        extra = estimate([w4], p).layers[0].compute_s - estimate([w8], p).layers[0].compute_s
        assert extra == pytest.approx(rows * 256 * 2e-9)


def test_the_runtimes_int4_layer_reports_int4_work():
    import numpy as np

    import hwreg_rs as hw

    net = hw.nn.mlp([64, 48, 10], rng=0).eval()
    rt = hw.runtime.convert(net, input_shape=(64,), weight_bits=4)
    work = rt.layer_work(3)
    lin = [w for w in work if w.kind == "linear"]
    assert [w.precision for w in lin] == ["int4", "int4"]
    ops = [op for op in rt.ops if op.kind == "int4_linear"]
    assert [w.weight_bytes for w in lin] == [op.layer.nbytes for op in ops]
    assert lin[0].gemm == (3, 64, 48) and lin[0].weight_bytes == 48 * 32 + 2 * 4 * 48  # nibbles, scales, bias
    assert np.isfinite(estimate(work, preset("cortex-a55")).latency_s)


def _native_conv(m, k, n, **kw):
    return LayerWork("c", "conv2d", m * k * n, k * n + 8 * n, m * k * 8, m * n * 4, "int8", gemm=(m, k, n),
                     native=True, **kw)


def test_native_conv_costs_pixels_columns_and_16_column_panels():
    base = preset("x86-avx512-vnni")
    ns = {"int8_out": 1.0, "conv_row_native": 3.0, "conv_col_native": 0.5, "conv_out_native": 0.25, "conv_mac_native": 0.0}
    p = dataclasses.replace(base, ns_per_element=ns, gemm_tile=(1, 4, 16),
                            overhead_us={"conv2d/native": 0.7}, native_overhead_us=0.1)
    mac = dataclasses.replace(p, ns_per_element={k: 0.0 for k in ns}, overhead_us={"conv2d/native": 0.0})

    def t(prof, m, k, n):
        return estimate([_native_conv(m, k, n)], prof).layers[0].compute_s

    # Each calibrated term is used as stated: per pixel, per padded column element, per padded panel output.
    m, k, n = 64, 18, 20  # K pads to 20, N to 32
    extra = t(p, m, k, n) - t(mac, m, k, n)
    assert extra == pytest.approx(1e-9 * (3.0 * m + 0.5 * m * 20 + 0.25 * m * 32), rel=1e-9)
    # The fixed cost per node is the convolution's own native figure, not the generic step's.
    lat = estimate([_native_conv(m, k, n)], p).layers[0]
    assert lat.latency_s == pytest.approx(0.7e-6 + max(lat.compute_s, lat.memory_s), rel=1e-9)
    # Monotone in pixels, inputs and outputs; flat within one 16-column panel of N (17..32 cost alike).
    assert t(p, m, k, 17) == pytest.approx(t(p, m, k, 32), rel=1e-12)
    assert t(p, m, k, 32) < t(p, m, k, 33)
    assert t(p, m, k, 16) < t(p, m, k, 17)
    for a, b in (((16, 18, 20), (64, 18, 20)), ((64, 9, 20), (64, 36, 20)), ((64, 18, 8), (64, 18, 40))):
        assert t(p, *a) < t(p, *b)
    # Scaling a coefficient scales its term: the estimate follows the calibration.
    p2 = dataclasses.replace(p, ns_per_element={**ns, "conv_col_native": 1.0})
    assert t(p2, m, k, n) - t(p, m, k, n) == pytest.approx(1e-9 * 0.5 * m * 20, rel=1e-9)
    # A shrunk convolution's saving: at few channels the per-pixel cost stays, so halving N saves less than half.
    assert t(p, 64, 72, 16) / t(p, 64, 72, 32) > 0.5
    # A layer run from Python keeps the Python costs.
    py = estimate([dataclasses.replace(_native_conv(m, k, n), native=False)], p).layers[0].compute_s
    assert py != pytest.approx(t(p, m, k, n))


def test_a_layer_that_fits_l3_moves_at_l3_bandwidth():
    p = dataclasses.replace(preset("x86-avx512-vnni"), int8_gops=1e6, cache_bytes=1 << 20, cache_bandwidth_gbs=200.0,
                            l3_cache_bytes=32 << 20, l3_bandwidth_gbs=50.0, mem_bandwidth_gbs=10.0)
    # A 1024x1024 int8 layer: 1 MiB of weights plus activations is over L2, well within L3.
    fc = LayerWork("fc", "linear", 1024 * 1024, 1024 * 1024 + 8 * 1024, 4096, 4096, "int8")
    mem = estimate([fc], p).layers[0].memory_s
    assert mem == pytest.approx((fc.weight_bytes + 8192) / 50e9, rel=1e-9)
    small = dataclasses.replace(fc, weight_bytes=256 << 10)
    assert estimate([small], p).layers[0].memory_s == pytest.approx(((256 << 10) + 8192) / 200e9, rel=1e-9)
    big = dataclasses.replace(fc, weight_bytes=64 << 20)
    assert estimate([big], p).layers[0].memory_s == pytest.approx(((64 << 20) + 8192) / 10e9, rel=1e-9)
    # Without an L3 figure (the presets) it is main memory's; scaling slows the L3 too.
    no_l3 = dataclasses.replace(p, l3_cache_bytes=0, l3_bandwidth_gbs=None)
    assert estimate([fc], no_l3).layers[0].memory_s == pytest.approx((fc.weight_bytes + 8192) / 10e9, rel=1e-9)
    assert p.scaled(2.0).l3_bandwidth_gbs == 25.0
    assert HardwareProfile.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="l3_"):
        dataclasses.replace(p, l3_bandwidth_gbs=-1.0)


def test_native_linear_uses_its_calibrated_terms_and_the_gemv_rate_for_one_row():
    ns = {"linear_row_native": 20.0, "linear_col_native": 0.1, "linear_out_native": 0.2, "linear_mac_native": 0.002,
          "linear_gemv_native": 0.008}
    p = dataclasses.replace(preset("x86-avx512-vnni"), ns_per_element=ns, gemm_tile=(1, 4, 16),
                            overhead_us={"linear/native": 0.3}, native_overhead_us=0.1)

    def lin(m, k, n, native=True, precision="int8"):
        return LayerWork("fc", "linear", m * k * n, k * n + 8 * n, m * k * 4, m * n * 4, precision, gemm=(m, k, n),
                         native=native)

    one = estimate([lin(1, 64, 250)], p).layers[0]
    assert one.compute_s == pytest.approx(1e-9 * (20.0 + 0.1 * 64 + 0.2 * 256 + 0.008 * 64 * 256), rel=1e-9)
    assert one.latency_s == pytest.approx(0.3e-6 + max(one.compute_s, one.memory_s), rel=1e-9)
    eight = estimate([lin(8, 64, 250)], p).layers[0]
    assert eight.compute_s == pytest.approx(1e-9 * 8 * (20.0 + 0.1 * 64 + 0.2 * 256 + 0.002 * 64 * 256), rel=1e-9)
    # Monotone in rows, inputs and outputs.
    for a, b in (((1, 64, 64), (1, 128, 64)), ((1, 64, 64), (1, 64, 128)), ((1, 64, 64), (2, 64, 64))):
        assert estimate([lin(*a)], p).layers[0].compute_s < estimate([lin(*b)], p).layers[0].compute_s
    # From Python (not in a plan) the Python-call costs apply.
    assert estimate([lin(1, 64, 250, native=False)], p).layers[0].compute_s != pytest.approx(one.compute_s)
    # A measured one-row fixed cost (the plan's batch-1 path) applies to one row only.
    p1 = dataclasses.replace(p, overhead_us={"linear/native": 0.3, "linear/native1": 0.05})
    one1 = estimate([lin(1, 64, 250)], p1).layers[0]
    assert one1.latency_s == pytest.approx(0.05e-6 + max(one1.compute_s, one1.memory_s), rel=1e-9)
    eight1 = estimate([lin(8, 64, 250)], p1).layers[0]
    assert eight1.latency_s == pytest.approx(eight.latency_s, rel=1e-9)
    # ... and to int8 layers only: an int4 layer's one row runs the int4 kernel's driver.
    four = estimate([lin(1, 64, 250, precision="int4")], p1).layers[0]
    assert four.latency_s == pytest.approx(0.3e-6 + max(four.compute_s, four.memory_s), rel=1e-9)
    assert HardwareProfile.from_dict(p1.to_dict()) == p1
    with pytest.raises(ValueError, match="native1"):
        dataclasses.replace(p, overhead_us={"linear/native2": 0.1})
