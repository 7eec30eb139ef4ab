"""measure_host, the calibrated cost model and model_work (no timing accuracy asserted here:
that is benches/bench_cost_model.py's job)."""

import dataclasses
import json

import numpy as np
import pytest

import hwreg_rs as hw
from hwreg_rs import profiles
from hwreg_rs.profiles import HardwareProfile, LayerWork, estimate, measure_host, model_work, preset


@pytest.fixture(scope="module")
def host():
    before = hw.num_threads()
    p = measure_host(quick=True)
    assert hw.num_threads() == before, "measure_host leaves the thread count as it was"
    return p


def _models():
    return [(hw.nn.mlp([64, 256, 128, 10], rng=0).eval(), (64,)), (hw.nn.small_cnn(rng=0).eval(), (1, 8, 8))]


def test_host_profile_is_valid_and_round_trips_json(host, tmp_path):
    assert host.name == "host"
    for f in ("int8_gops", "fp32_gflops", "mem_bandwidth_gbs"):
        v = getattr(host, f)
        assert np.isfinite(v) and v > 0, f
    assert host.mem_capacity_bytes > 1 << 20
    assert host.cores == hw.num_threads()
    assert host.simd_width_bits == {"avx512vnni": 512, "avx2": 256}.get(hw.active_isa(), 128)
    assert {"dense_int8", "dense_f32"} <= set(host.kernels)
    # The int8 kernels under the plain keys, the float ones under "pattern/fp32".
    assert set(host.sparsity_patterns) == {p + s for p in ("unstructured", "block", "n:m") for s in ("", "/fp32")}
    assert all(0 < e <= 1 for e in host.sparsity_patterns.values())
    assert not host.needs_7bit_activations
    assert set(host.ns_per_element) <= set(profiles.ELEMENT_COSTS)
    assert all(v >= 0 for v in host.ns_per_element.values())
    for key in ("linear/int8", "linear/fp32", "conv2d/int8", "conv2d/fp32", "pool", "elementwise", "reshape"):
        assert host.overhead_us[key] >= 0
    assert 0 < host.parallel_speedup <= hw.num_threads() and host.gemm_tile == (1, 4, 16)
    # int4 against int8 on the same weights, at batch 1 and a small batch, with its own call overhead.
    assert "dense_int4" in host.kernels and host.overhead_us["linear/int4"] > 0
    assert [r for r, _ in host.int4_speedup] == [1, 16] and all(0 < f <= 20 for _, f in host.int4_speedup)
    # The native convolution's costs are calibrated, its fixed cost per node included (measured: the
    # per-node costs change as the executor does).
    assert {"conv_row_native", "conv_col_native", "conv_out_native"} <= set(host.ns_per_element)
    assert host.overhead_us["conv2d/native"] >= 0
    # An L3 above L2 is measured as its own level, between L2's bandwidth and main memory's.
    if host.l3_cache_bytes:
        assert host.l3_cache_bytes > host.cache_bytes
        assert host.mem_bandwidth_gbs <= host.l3_bandwidth_gbs <= host.cache_bandwidth_gbs
    path = tmp_path / "host.json"
    host.save(path)
    assert HardwareProfile.load(path) == host
    assert HardwareProfile.from_dict(json.loads(json.dumps(host.to_dict()))) == host
    text = host.describe()
    for f in dataclasses.fields(host):
        assert f"| {f.name} |" in text


def test_old_profile_files_without_the_new_fields_still_load(tmp_path):
    d = preset("x86-avx2").to_dict()
    for key in ("overhead_us", "ns_per_element", "gemm_tile", "parallel_min_macs", "parallel_speedup",
                "int4_speedup"):
        d.pop(key)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(d))
    assert HardwareProfile.load(path) == preset("x86-avx2")


@pytest.mark.parametrize("name", ["host", *sorted(profiles.PRESETS)])
def test_estimates_positive_and_monotone_in_batch(host, name):
    prof = host if name == "host" else preset(name)
    for model, shape in _models():
        rt = hw.runtime.convert(model, input_shape=shape)
        for work_of in (rt.layer_work, lambda b, m=model, s=shape: model_work(m, s, b)):
            prev = None
            for batch in (1, 8, 64, 256):
                est = estimate(work_of(batch), prof)
                lat = np.array([l.latency_s for l in est.layers])
                assert (lat > 0).all() and np.isfinite(lat).all()
                if prev is not None:
                    assert (lat >= prev * (1 - 1e-12)).all()
                    assert est.latency_s > prev.sum()
                prev = lat


def test_int8_beats_float_estimate_on_large_batches(host):
    model, shape = _models()[1]
    rt = hw.runtime.convert(model, input_shape=shape)
    for prof in (preset("x86-avx512-vnni"), preset("x86-avx2")):
        assert estimate(rt.layer_work(256), prof).latency_s < estimate(model_work(model, shape, 256), prof).latency_s


def test_runtime_layer_kinds(host):
    rt = hw.runtime.convert(hw.nn.small_cnn(rng=0).eval(), input_shape=(1, 8, 8))
    kinds = [w.kind for w in rt.layer_work(2)]
    assert kinds == ["conv2d", "conv2d", "pool", "reshape", "linear", "linear"]
    est = estimate([dataclasses.replace(w, native=False) for w in rt.layer_work(2)], host)
    flat = est.layers[3]
    assert flat.memory_s == 0 and flat.latency_s == pytest.approx(host.overhead_us["reshape"] * 1e-6)
    # ... when run from Python; inside a native plan call a layer costs the plan's step instead.
    assert all(w.native for w in rt.layer_work(2))  # the whole small CNN is one native plan
    assert host.native_overhead_us is not None and host.native_overhead_us < host.overhead_us["linear/int8"]


def _calibrated(**kw):
    base = dict(name="t", int8_gops=200.0, fp32_gflops=100.0, mem_bandwidth_gbs=1e6, mem_capacity_bytes=1 << 30,
                overhead_us={"linear/int8": 5.0, "conv2d/int8": 9.0, "pool": 3.0, "elementwise": 1.0},
                ns_per_element={"int8_row": 10.0, "int8_in": 2.0, "int8_out": 1.0, "im2col": 0.5, "nchw": 0.25,
                                "pool": 4.0, "elementwise": 0.5},
                gemm_tile=(1, 4, 16))
    base.update(kw)
    return HardwareProfile(**base)


def test_calibrated_cost_formula():
    p = _calibrated()
    m, k, n = 3, 10, 20
    w = LayerWork("fc", "linear", m * k * n, k * n, m * k * 4, m * n * 4, "int8")
    got = estimate([w], p).layers[0]
    macs_padded = m * 12 * 32
    want = 5e-6 + (m * 10.0 + m * k * 2.0 + m * n * 1.0) * 1e-9 + 2 * macs_padded / 200e9
    assert got.latency_s == pytest.approx(want, rel=1e-9)
    # The same layer with explicit (M, K, N) and as a convolution (column matrix counted twice).
    assert estimate([dataclasses.replace(w, gemm=(m, k, n))], p).latency_s == pytest.approx(want, rel=1e-9)
    c = LayerWork("conv", "conv2d", m * k * n, k * n, m * k * 8, m * n * 4, "int8")
    extra = (m * k * 0.5 + m * n * 0.25) * 1e-9 + 4e-6
    assert estimate([c], p).latency_s == pytest.approx(want + extra, rel=1e-9)
    pool = LayerWork("pool", "pool", 0, 0, 400, 100)
    assert estimate([pool], p).latency_s == pytest.approx(3e-6 + 100 * 4e-9)
    relu = LayerWork("relu", "elementwise", 0, 0, 400, 400, calls=2, passes=3)
    assert estimate([relu], p).latency_s == pytest.approx(2e-6 + 3 * 100 * 0.5e-9)


def test_parallel_speedup_applies_above_threshold_only():
    # The threshold counts each output as 32 MACs besides its K (the kernel's rule): small is 4*16*(8+32) = 2560.
    serial = _calibrated()
    par = _calibrated(parallel_min_macs=3000, parallel_speedup=2.0, int8_gops=400.0)
    small = LayerWork("s", "linear", 4 * 8 * 16, 0, 4 * 8 * 4, 4 * 16 * 4, "int8")
    big = LayerWork("b", "linear", 64 * 64 * 64, 0, 64 * 64 * 4, 64 * 64 * 4, "int8")
    assert estimate([small], par).latency_s == pytest.approx(estimate([small], serial).latency_s)
    s_big, p_big = estimate([big], serial).layers[0], estimate([big], par).layers[0]
    assert p_big.compute_s < s_big.compute_s and p_big.latency_s > 5e-6
    # Threads that slow the kernels down (a busy machine) make big layers dearer.
    slow = _calibrated(parallel_min_macs=3000, parallel_speedup=0.5, int8_gops=100.0)
    assert estimate([small], slow).latency_s == pytest.approx(estimate([small], serial).latency_s)
    assert estimate([big], slow).layers[0].compute_s == pytest.approx(2 * s_big.compute_s)


def test_bad_calibration_fields():
    with pytest.raises(ValueError, match="overhead_us key"):
        _calibrated(overhead_us={"lstm": 1.0})
    with pytest.raises(ValueError, match="ns_per_element key"):
        _calibrated(ns_per_element={"warp": 1.0})
    with pytest.raises(ValueError, match="gemm_tile"):
        _calibrated(gemm_tile=(0, 4, 16))
    with pytest.raises(ValueError, match="parallel_speedup"):
        _calibrated(parallel_speedup=0.0)
    with pytest.raises(ValueError, match="gemm"):
        LayerWork("x", "linear", 1, 1, 1, 1, gemm=(1, 2))


def test_model_work_counts():
    model, shape = _models()[1]
    work = model_work(model, shape, 4)
    names = [w.name for w in work]
    assert names[:4] == ["0.Conv2d", "1.BatchNorm2d", "2.ReLU", "3.Conv2d"]
    conv2 = work[3]
    assert conv2.gemm == (4 * 64, 16 * 9, 32) and conv2.macs == 4 * 64 * 144 * 32 and conv2.precision == "fp32"
    assert work[6].kind == "pool" and work[7].kind == "reshape"
    assert work[8].gemm == (4, 32 * 16, 64)
    mlp = hw.nn.mlp([64, 256, 10], dropout=0.5, rng=0)
    assert [w.kind for w in model_work(mlp, (64,), 2)] == ["linear", "elementwise", "reshape", "linear"]
    with pytest.raises(ValueError, match="batch"):
        model_work(mlp, (64,), 0)
    with pytest.raises(ValueError, match="expects 64 features"):
        model_work(mlp, (32,), 1)
    with pytest.raises(TypeError, match="cannot cost"):
        model_work(hw.nn.Sequential(object.__new__(hw.nn.Module)), (3,), 1)
