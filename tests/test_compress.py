import os

import numpy as np
import pytest

import hwreg_rs as hw


def _file_bytes(rt, tmp_path, name="m.hwreg"):
    return rt.save(os.path.join(tmp_path, name))


@pytest.fixture(scope="module")
def trained():
    X, y = hw.data.make_classification(600, n_features=128, n_classes=3, seed=0)
    net = hw.nn.mlp([128, 256, 3], rng=0)
    hw.fit(net, X[:400], y[:400], epochs=15, lr=0.01, verbose=False)
    return net.eval(), (X[:400], y[:400], X[400:], y[400:])


def test_no_budget_is_int8_and_met(trained, tmp_path):
    net, data = trained
    rt, rep = hw.compress(net, data, profile="x86-avx512-vnni", max_accuracy_drop=0.05, fine_tune_epochs=1)
    assert rep.met and not rep.misses
    # Layers by their model names, in order, each one row (the fused ReLU is no layer).
    assert [(l.name, l.op) for l in rep.layers] == [("0", "linear"), ("2", "linear")]
    assert rep.nbytes == _file_bytes(rt, tmp_path) < 0.3 * rep.float_bytes
    assert "MET" in rep.markdown()


def test_size_budget_prunes_in_the_profiles_pattern(trained, tmp_path):
    net, data = trained
    budget = int(0.5 * _file_bytes(hw.runtime.convert(net, input_shape=(128,)), tmp_path))
    rt, rep = hw.compress(net, data, profile="x86-avx512-vnni", size_budget=budget, max_accuracy_drop=0.1,
                          fine_tune_epochs=3)
    assert rep.met, rep.markdown()
    assert rep.nbytes == _file_bytes(rt, tmp_path) <= budget  # the file itself fits
    pruned = [l for l in rep.layers if l.sparsity >= 0.5]
    assert pruned and all(l.pattern == "block" and l.op == "sparse_linear" for l in pruned)
    assert any(op.kind == "sparse_linear" for op in rt.ops)
    assert rep.accuracy >= rep.float_accuracy - 0.1


def test_impossible_budget_fails_loudly(trained):
    net, data = trained
    with pytest.raises(hw.BudgetError, match="latency") as e:
        hw.compress(net, data, profile="x86-avx512-vnni", latency_budget=1e-9, fine_tune_epochs=1)
    assert not e.value.report.met
    _, rep = hw.compress(net, data, profile="x86-avx512-vnni", latency_budget=1e-9, fine_tune_epochs=1,
                         raise_on_miss=False)
    assert "MISSED" in rep.markdown()


def test_bad_arguments(trained):
    net, data = trained
    with pytest.raises(ValueError, match="data"):
        hw.compress(net, data[:2], profile="cortex-m7")
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        hw.compress(net, data, profile="cortex-m7", max_accuracy_drop=2)
    with pytest.raises(ValueError, match="unknown profile"):
        hw.compress(net, data, profile="pdp-11")
    with pytest.raises(TypeError, match="profile"):
        hw.compress(net, data, profile=3)


@pytest.mark.parametrize("profile", ["host", *sorted(hw.profiles.PRESETS)])
def test_a_quarter_of_the_int8_file_is_met_on_every_profile(trained, tmp_path, profile):
    net, data = trained
    int8_bytes = _file_bytes(hw.runtime.convert(net, input_shape=(128,)), tmp_path, "int8.hwreg")
    budget = int(0.25 * int8_bytes)
    rt, rep = hw.compress(net, data, profile=profile, size_budget=budget, max_accuracy_drop=0.05, fine_tune_epochs=3,
                          raise_on_miss=False, profile_repeats=3)
    assert rep.met, rep.markdown()
    assert rep.nbytes == _file_bytes(rt, tmp_path) <= budget
    # The budget is met by storing pruned layers sparse, in the file the runtime loads.
    assert any(op.kind == "sparse_linear" for op in hw.runtime.load(os.path.join(tmp_path, "m.hwreg")).ops)


def test_latency_budget_pays_no_accuracy_for_a_pattern_that_is_not_faster(trained):
    net, data = trained
    # cortex-m7 has no sparse kernel: pruning cannot make anything faster there.
    _, rep = hw.compress(net, data, profile="cortex-m7", latency_budget=1e-9, max_accuracy_drop=0.05,
                         fine_tune_epochs=1, raise_on_miss=False)
    assert not rep.met and any("latency" in m for m in rep.misses)
    assert all(l.sparsity < 0.5 and l.pattern == "dense" and l.delta_accuracy is None for l in rep.layers)
    # A profile whose block kernel is nearly dense speed per kept weight: pruning pays, in blocks.
    fast = hw.profiles.HardwareProfile.from_dict({**hw.profiles.preset("x86-avx2").to_dict(), "name": "fast-sparse",
                                                  "sparsity_patterns": {"block": 0.9}})
    dense_est = hw.profiles.estimate(hw.runtime.convert(net, input_shape=(128,)).layer_work(1), fast).latency_s
    _, rep = hw.compress(net, data, profile=fast, latency_budget=0.8 * dense_est, max_accuracy_drop=0.05,
                         fine_tune_epochs=2, raise_on_miss=False)
    assert any(l.sparsity >= 0.5 and l.pattern == "block" for l in rep.layers), rep.markdown()


def test_cnn_layers_by_name_and_convolutions_counted_dense(tmp_path):
    split = hw.data.load_digits(images=True)
    net = hw.nn.small_cnn(rng=0)
    hw.fit(net, split.X_train[:400], split.y_train[:400], epochs=2, lr=2e-3, verbose=False)
    net.eval()
    int8_bytes = _file_bytes(hw.runtime.convert(net, input_shape=(1, 8, 8)), tmp_path, "int8.hwreg")
    data = (split.X_train[:400], split.y_train[:400], split.X_test, split.y_test)
    rt, rep = hw.compress(net, data, profile="x86-avx512-vnni", size_budget=int(0.5 * int8_bytes),
                          max_accuracy_drop=0.2, fine_tune_epochs=2, raise_on_miss=False, profile_repeats=3)
    names = {n for n, _ in net.named_modules()}
    assert [l.name for l in rep.layers] == ["0", "3", "8", "10"] and set(names) >= {l.name for l in rep.layers}
    assert all(l.op != "relu" for l in rep.layers)
    convs = [l for l in rep.layers if l.op == "conv2d"]
    assert convs and all(l.pattern == "dense" and "no sparse convolution kernel" in l.note for l in convs)
    assert "no sparse convolution kernel" in rep.markdown()
    assert rep.nbytes == _file_bytes(rt, tmp_path)
    # The per-layer times come from RuntimeModel.profile and, with the rest, add up to the measured latency.
    total = sum(l.measured_us for l in rep.layers) + rep.other_us
    assert total == pytest.approx(1e6 * rep.latency_s, rel=1e-6) or rep.other_us == 0.0


def test_runtime_profile_attributes_every_step():
    net = hw.nn.small_cnn(rng=0).eval()
    rt = hw.runtime.convert(net, input_shape=(1, 8, 8))
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    t = rt.profile(x, repeats=2)
    assert list(t) == [n.name for n in rt.nodes] and all(v > 0 for v in t.values())
    mlp = hw.runtime.convert(hw.nn.mlp([8, 16, 16, 3], rng=0).eval(), input_shape=(8,))
    t = mlp.profile(np.ones((1, 8), np.float32), repeats=2)
    # The three Linear layers run as one native call, which times each of them.
    assert list(t) == ["0", "2", "4"] and all(v > 0 for v in t.values())
    with pytest.raises(ValueError, match="repeats"):
        mlp.profile(np.ones((1, 8), np.float32), repeats=0)
