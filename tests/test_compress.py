import numpy as np
import pytest

import hwreg_rs as hw


@pytest.fixture(scope="module")
def trained():
    X, y = hw.data.make_classification(600, n_features=128, n_classes=3, seed=0)
    net = hw.nn.mlp([128, 256, 3], rng=0)
    hw.fit(net, X[:400], y[:400], epochs=15, lr=0.01, verbose=False)
    return net.eval(), (X[:400], y[:400], X[400:], y[400:])


def test_no_budget_is_int8_and_met(trained):
    net, data = trained
    rt, rep = hw.compress(net, data, profile="x86-avx512-vnni", max_accuracy_drop=0.05, fine_tune_epochs=1)
    assert rep.met and not rep.misses
    assert [l.op for l in rep.layers] == ["linear", "linear"]
    assert rep.nbytes == rt.nbytes < 0.3 * rep.float_bytes
    assert "MET" in rep.markdown()


def test_size_budget_prunes_in_the_profiles_pattern(trained):
    net, data = trained
    dense_bytes = hw.runtime.convert(net, input_shape=(128,)).nbytes
    budget = int(0.5 * dense_bytes)
    rt, rep = hw.compress(net, data, profile="x86-avx512-vnni", size_budget=budget, max_accuracy_drop=0.1,
                          fine_tune_epochs=3)
    assert rep.met, rep.markdown()
    assert rt.nbytes <= budget
    pruned = [l for l in rep.layers if l.sparsity > 0]
    assert pruned and all(l.pattern == "block" for l in pruned)
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
