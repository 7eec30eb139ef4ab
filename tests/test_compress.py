import copy
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
                          fine_tune_epochs=3, weight_bits=(8,))  # 8 bits only: the sparse lever alone
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
    # Below what every lever at its last level gives by the cost model: the report says it was out of reach.
    assert any("out of reach" in m for m in rep.misses)


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
                          raise_on_miss=False, profile_repeats=3, weight_bits=(8,))
    assert rep.met, rep.markdown()
    assert rep.nbytes == _file_bytes(rt, tmp_path) <= budget
    # At 8 bits the budget is met by storing pruned layers sparse, in the file the runtime loads.
    assert any(op.kind == "sparse_linear" for op in hw.runtime.load(os.path.join(tmp_path, "m.hwreg")).ops)


def test_latency_budget_pays_no_accuracy_for_a_pattern_that_is_not_faster(trained):
    net, data = trained
    # cortex-m7 has no sparse kernel: pruning cannot make anything faster there.
    _, rep = hw.compress(net, data, profile="cortex-m7", latency_budget=1e-9, max_accuracy_drop=0.05,
                         fine_tune_epochs=1, raise_on_miss=False)
    assert not rep.met and any("latency" in m for m in rep.misses)
    assert all(l.sparsity < 0.5 and l.pattern == "dense" for l in rep.layers)
    # No accuracy is measured or spent on a sparse candidate there; shrinking (a smaller dense layer) pays anywhere.
    assert rep.candidates and all(c.kind == "shrink" for c in rep.candidates)
    # A profile whose block kernel is nearly dense speed per kept weight: pruning pays, in blocks.
    fast = hw.profiles.HardwareProfile.from_dict({**hw.profiles.preset("x86-avx2").to_dict(), "name": "fast-sparse",
                                                  "sparsity_patterns": {"block": 0.9}})
    dense_est = hw.profiles.estimate(hw.runtime.convert(net, input_shape=(128,)).layer_work(1), fast).latency_s
    _, rep = hw.compress(net, data, profile=fast, latency_budget=0.8 * dense_est, max_accuracy_drop=0.05,
                         fine_tune_epochs=2, raise_on_miss=False, weight_bits=(8,))  # (int4 would pay too)
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


# -- structured shrinking, candidates, memory -------------------------------------------------

CNN_DROP = 0.02  # the accuracy allowance of the digits-CNN size target: 2 points against the float model


@pytest.fixture(scope="module")
def digits_cnn():
    """The demo's digits CNN, trained as the demo trains it (quick), and its data."""
    from hwreg_rs import constraints as C

    split = hw.data.load_digits(images=True)
    net = hw.nn.small_cnn(rng=0)
    qat = C.QAT(weight_bits=8, activation_bits=None)
    hw.train.Trainer(net, constraints=[C.WeightClip(1.0), C.GradClipValue(1.0), qat], epochs=4, lr=2e-3,
                     scheduler="cosine", seed=0, verbose=False).fit(split.X_train, split.y_train)
    qat.remove()
    return net.eval(), (split.X_train, split.y_train, split.X_test, split.y_test)


@pytest.mark.parametrize("profile", ["host", *sorted(hw.profiles.PRESETS)])
def test_a_quarter_of_the_int8_file_is_met_for_the_digits_cnn_on_every_profile(digits_cnn, tmp_path, profile):
    net, data = digits_cnn
    int8_bytes = _file_bytes(hw.runtime.convert(net, input_shape=(1, 8, 8)), tmp_path, "int8.hwreg")
    budget = int(0.25 * int8_bytes)
    rt, rep = hw.compress(net, data, profile=profile, size_budget=budget, max_accuracy_drop=CNN_DROP,
                          fine_tune_epochs=3, raise_on_miss=False, profile_repeats=3)
    assert rep.met, rep.markdown()
    assert rep.nbytes == _file_bytes(rt, tmp_path) <= budget
    assert rep.accuracy >= rep.float_accuracy - CNN_DROP
    # Pruning alone cannot get there (convolutions are stored dense): a layer was shrunk, and the
    # runtime model really has fewer channels.
    shrunk = [l for l in rep.layers if l.channels_removed > 0]
    assert shrunk, rep.markdown()
    out = {"0": 16, "3": 32, "8": 64}
    for node in rt.nodes:
        if node.name in out and node.op.kind in ("conv2d", "linear"):
            removed = next((l.channels_removed for l in shrunk if l.name == node.name), 0.0)
            assert node.op.layer.weight_q.shape[0] == round(out[node.name] * (1 - removed))


def test_every_candidate_is_reported_and_the_chosen_ones_are_the_plan(digits_cnn, tmp_path):
    net, data = digits_cnn
    int8_bytes = _file_bytes(hw.runtime.convert(net, input_shape=(1, 8, 8)), tmp_path, "int8.hwreg")
    _, rep = hw.compress(net, data, profile="x86-avx512-vnni", size_budget=int(0.5 * int8_bytes),
                         max_accuracy_drop=CNN_DROP, fine_tune_epochs=1, raise_on_miss=False, profile_repeats=3)
    cands = rep.candidates
    # Shrinking for every prunable group (the last layer's outputs are the model's: not prunable),
    # sparsity for the Linear layers only (convolutions run dense).
    assert {(c.layer, c.kind) for c in cands} >= {("0", "shrink"), ("3", "shrink"), ("8", "shrink"), ("8", "sparse")}
    assert not any(c.kind == "shrink" and c.layer == "10" for c in cands)
    assert not any(c.kind == "sparse" and c.layer in ("0", "3") for c in cands)
    assert all(c.bits == 8 and 0 < c.ratio < 1 and c.delta_accuracy <= 0 for c in cands if c.kind != "bits")
    # 4 bits for the Linear layers (the int4 kernels are linear ones), never for a convolution.
    assert {c.layer for c in cands if c.kind == "bits"} == {"8", "10"}
    assert all(c.bits == 4 and c.ratio == 0 and c.pattern == "dense" for c in cands if c.kind == "bits")
    # Shrinking a group more makes a smaller file, exactly: it is a smaller dense model.
    for layer in ("0", "3", "8"):
        sizes = [c.file_bytes for c in cands if c.layer == layer and c.kind == "shrink"]
        assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    # At most one candidate per lever is chosen, and the layer rows say what was chosen.
    chosen = [c for c in cands if c.chosen]
    assert chosen and len({(c.layer, c.kind) for c in chosen}) == len(chosen)
    rows = {l.name: l for l in rep.layers}
    for c in chosen:
        if c.kind == "shrink":
            assert rows[c.layer].channels_removed == pytest.approx(c.channels_removed / {"0": 16, "3": 32, "8": 64}[c.layer])
    # The search re-measured after each step; a step it rolled back cost more than the allowance.
    allowance = 3 * CNN_DROP + 0.01
    assert rep.steps and all((rep.float_accuracy - s["accuracy"] <= allowance + 1e-12) == s["kept"] for s in rep.steps)
    d = rep.to_dict()
    import json

    assert json.loads(json.dumps(d))["candidates"][0].keys() >= {"layer", "kind", "ratio", "pattern", "bits",
                                                                 "estimated_us", "file_bytes", "delta_accuracy",
                                                                 "chosen"}
    assert "Candidates" in rep.markdown()


@pytest.fixture(scope="module")
def wide_mlp():
    """A digits MLP whose int8 weights alone (about 600 KB) overflow the Cortex-M7's 512 KB SRAM."""
    split = hw.data.load_digits()
    net = hw.nn.mlp([64, 1024, 512, 10], rng=0)
    hw.fit(net, split.X_train, split.y_train, epochs=2, lr=0.01, verbose=False)
    return net.eval(), (split.X_train, split.y_train, split.X_test, split.y_test)


def test_cortex_m7_gets_a_model_that_fits_its_sram(wide_mlp):
    from hwreg_rs.compress import _activation_peak

    net, data = wide_mlp
    m7 = hw.profiles.preset("cortex-m7")
    dense = hw.runtime.convert(net, input_shape=(64,))
    before = hw.profiles.estimate(dense.layer_work(1), m7, activation_peak=_activation_peak(dense, 1))
    assert before.memory_bytes > m7.mem_capacity_bytes  # it does not fit before compression
    rt, rep = hw.compress(net, data, profile="cortex-m7", max_accuracy_drop=0.02, fine_tune_epochs=2,
                          profile_repeats=3)
    assert rep.met and rep.memory_limit_bytes == m7.mem_capacity_bytes
    after = hw.profiles.estimate(rt.layer_work(1), m7, activation_peak=_activation_peak(rt, 1))
    assert rep.memory_bytes == after.memory_bytes == rep.weight_bytes + rep.peak_activation_bytes
    assert rep.memory_bytes <= m7.mem_capacity_bytes < before.memory_bytes
    # m7 has no sparse kernel: shrinking or 4-bit weights (half the bytes) got there, nothing was stored sparse.
    assert any(l.channels_removed > 0 or l.bits == 4 for l in rep.layers), rep.markdown()
    assert not any(l.op == "sparse_linear" for l in rep.layers)
    assert f"memory ≤ {m7.mem_capacity_bytes} B" in rep.markdown()


def test_memory_budget_and_its_cli_flag(wide_mlp, tmp_path, capsys):
    import json

    from hwreg_rs import cli

    net, data = wide_mlp
    with pytest.raises(ValueError, match="memory_budget"):
        hw.compress(net, data, profile="x86-avx2", memory_budget=0)
    _, rep = hw.compress(net, data, profile="x86-avx2", memory_budget=400_000, max_accuracy_drop=0.02,
                         fine_tune_epochs=1, profile_repeats=3, raise_on_miss=False)
    assert rep.memory_budget_bytes == rep.memory_limit_bytes == 400_000
    assert rep.met == (rep.memory_bytes <= 400_000 and rep.float_accuracy - rep.accuracy <= 0.02), rep.markdown()
    assert rep.memory_bytes <= 400_000, rep.markdown()
    np.savez(tmp_path / "model.npz", **net.state_dict())
    X_tr, y_tr, X_te, y_te = data
    np.savez(tmp_path / "data.npz", X_train=X_tr, y_train=y_tr, X_test=X_te, y_test=y_te)
    capsys.readouterr()
    cli.main(["compress", str(tmp_path / "model.npz"), str(tmp_path / "data.npz"), "--arch", "mlp:64,1024,512,10",
              "--profile", "x86-avx2", "--memory-budget", "400000", "--max-drop", "0.05", "--json",
              "-o", str(tmp_path / "o.hwreg")])
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["memory_budget_bytes"] == 400000 and report["memory_bytes"] <= 400000
    # Bits per layer: 4 exactly where the file holds an int4 layer.
    ops = {n.name: n.op.kind for n in hw.runtime.load(str(tmp_path / "o.hwreg")).nodes}
    assert [l["bits"] for l in report["layers"]] == [4 if ops[l["name"]] == "int4_linear" else 8
                                                      for l in report["layers"]]
    assert report["candidates"] and all("estimated_us" in c and "chosen" in c for c in report["candidates"])


@pytest.fixture(scope="module")
def digits_mlp():
    """An MLP trained well on the digits (about 98%): a tenth of its float file needs int4 and shrinking."""
    split = hw.data.load_digits()
    net = hw.nn.mlp([64, 512, 10], rng=0)
    hw.fit(net, split.X_train, split.y_train, epochs=15, lr=0.01, verbose=False)
    return net.eval(), (split.X_train, split.y_train, split.X_test, split.y_test)


@pytest.mark.parametrize("profile", ["host", *sorted(hw.profiles.PRESETS)])
def test_a_tenth_of_the_float_file_with_int4_and_at_most_one_point_lost(digits_mlp, tmp_path, profile):
    from hwreg_rs import constraints as C
    from hwreg_rs.compress import _float_file_bytes

    net, data = digits_mlp
    budget = int(0.1 * _float_file_bytes(net))
    rt, rep = hw.compress(net, data, profile=profile, size_budget=budget, max_accuracy_drop=0.01,
                          fine_tune_epochs=3, profile_repeats=3)
    assert rep.met and budget == int(0.1 * rep.float_bytes), rep.markdown()
    assert rep.nbytes == _file_bytes(rt, tmp_path) <= budget  # the file itself, as measured
    assert rep.accuracy >= rep.float_accuracy - 0.01
    X_val, y_val = data[2], data[3]
    loaded = hw.runtime.load(os.path.join(tmp_path, "m.hwreg"))
    assert np.mean(loaded.predict(X_val).argmax(axis=1) == y_val) == rep.accuracy
    # At least one layer is stored int4; the report says so per layer, and the chosen candidates are the plan.
    four = {l.name for l in rep.layers if l.bits == 4}
    assert four and four == {n.name for n in loaded.nodes if n.op.kind == "int4_linear"}
    assert four == {c.layer for c in rep.candidates if c.kind == "bits" and c.chosen}
    assert all(l.bits == 8 for l in rep.layers if l.name not in four)
    md = rep.markdown()
    assert any(line.startswith(f"| {name} | int4_linear | 4") for name in four for line in md.splitlines())
    # No layer is both 4-bit and pruned: the runtime has no sparse int4 storage.
    assert not four & {c.layer for c in rep.candidates if c.kind == "sparse" and c.chosen}
    # A 4-bit candidate's file bytes are exact: the model with that layer alone at 4 bits, saved.
    cand = next(c for c in rep.candidates if c.kind == "bits" and c.layer == "2" and c.group_size is None)
    alone = copy.deepcopy(net)
    alone[2].weight_fake_quant = C.WeightFakeQuant(4)
    assert cand.file_bytes == _file_bytes(hw.runtime.convert(alone, input_shape=(64,), sparse="never"), tmp_path,
                                          "alone.hwreg")
    assert cand.file_bytes < _file_bytes(hw.runtime.convert(net, input_shape=(64,)), tmp_path, "int8.hwreg")
    # The cost model is checked on every chosen candidate: predicted speed-up always, measured on the host.
    chosen = [c for c in rep.candidates if c.chosen]
    assert chosen and all(c.predicted_speedup > 0 and c.timed_layers for c in chosen)
    assert all((c.measured_speedup is not None and c.measured_speedup > 0) == (profile == "host") for c in chosen)
    assert "Cost model check" in md


def test_eight_bits_only_offers_no_int4_and_bad_weight_bits(digits_mlp):
    net, data = digits_mlp
    _, rep = hw.compress(net, data, profile="x86-avx512-vnni", size_budget=40_000, max_accuracy_drop=0.05,
                         fine_tune_epochs=1, profile_repeats=3, weight_bits=(8,), raise_on_miss=False)
    assert all(c.bits == 8 for c in rep.candidates) and all(l.bits == 8 for l in rep.layers)
    for bad in ((4,), (8, 2), (8, True), ()):
        with pytest.raises(ValueError, match="weight_bits"):
            hw.compress(net, data, profile="cortex-m7", weight_bits=bad)


def test_per_group_int4_candidates_are_sized_exactly_and_run_as_trained(digits_mlp, tmp_path):
    net, data = digits_mlp
    _, rep = hw.compress(net, data, profile="x86-avx512-vnni", size_budget=int(0.1 * 154_000), max_accuracy_drop=0.02,
                         fine_tune_epochs=1, profile_repeats=3, raise_on_miss=False)
    by_layer = {name: [c.group_size for c in rep.candidates if c.kind == "bits" and c.layer == name]
                for name in ("0", "2")}
    # A group size is offered where the layer has more inputs than it; the last level is one scale per channel.
    assert by_layer == {"0": [32, None], "2": [32, 64, 128, None]}, by_layer
    cand = next(c for c in rep.candidates if c.kind == "bits" and c.layer == "2" and c.group_size == 32)
    exact = hw.runtime.convert(net, input_shape=(64,), sparse="never", int4_group_size={"2": 32})
    assert [n.op.kind for n in exact.nodes] == ["linear", "int4_linear"] and exact.nodes[1].op.layer.group_size == 32
    assert cand.file_bytes == _file_bytes(exact, tmp_path)
    # More scales cost bytes: the per-group candidate's file is larger than the per-channel one's.
    per_channel = next(c for c in rep.candidates if c.kind == "bits" and c.layer == "2" and c.group_size is None)
    assert cand.file_bytes > per_channel.file_bytes


def test_group_fake_quant_is_the_grid_convert_stores():
    from hwreg_rs.compress import _GroupInt4FakeQuant

    net = hw.nn.mlp([96, 16, 3], rng=0).eval()
    x = np.random.default_rng(1).standard_normal((7, 96)).astype(np.float32)
    rt = hw.runtime.convert(net, input_shape=(96,), int4_group_size={"0": 32})
    net[0].weight_fake_quant = _GroupInt4FakeQuant(32)
    np.testing.assert_array_equal(net[0].effective_weight(), rt.nodes[0].op.layer.dequantized_weight())
    np.testing.assert_allclose(rt.predict(x), net(x), rtol=0.05, atol=0.05)  # int8 activations aside, the same


def test_convert_takes_int4_group_sizes_per_layer():
    net = hw.nn.mlp([64, 32, 16, 3], rng=0).eval()
    rt = hw.runtime.convert(net, input_shape=(64,), int4_group_size={"0": 64, "2": None})
    kinds = [(n.name, n.op.kind, getattr(getattr(n.op, "layer", None), "group_size", "-")) for n in rt.nodes]
    assert kinds == [("0", "int4_linear", 64), ("2", "int4_linear", None), ("4", "linear", "-")]
    with pytest.raises(ValueError, match="int4_group_size"):
        hw.runtime.convert(net, input_shape=(64,), int4_group_size={"0": 48})


def test_plot_writes_a_png_of_the_candidates(trained, tmp_path):
    pytest.importorskip("matplotlib")
    net, data = trained
    path = tmp_path / "front.png"
    _, rep = hw.compress(net, data, profile="x86-avx512-vnni", size_budget=20_000, max_accuracy_drop=0.1,
                         fine_tune_epochs=1, raise_on_miss=False, plot=path)
    assert rep.candidates and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(trained, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    net, data = trained
    with pytest.raises(ImportError, match="pip install matplotlib"):
        hw.compress(net, data, profile="x86-avx512-vnni", plot=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_attention_heads_are_a_lever(tmp_path):
    from hwreg_rs.shrink import shrink_heads

    split = hw.data.load_digits()
    g = hw.onnx.load(os.path.join(os.path.dirname(__file__), "fixtures", "digits_attention.ts.onnx"))
    hw.fit(g, split.X_train, split.y_train, epochs=3, lr=0.01, verbose=False)
    g.eval()
    size = _file_bytes(hw.runtime.convert(g, input_shape=(64,)), tmp_path, "dense.hwreg")
    _, rep = hw.compress(g, split, profile="x86-avx512-vnni", size_budget=size - 100, max_accuracy_drop=0.5,
                         fine_tune_epochs=1, raise_on_miss=False, weight_bits=(8,), sparsities=())
    (cand,) = [c for c in rep.candidates if c.kind == "heads"]
    assert (cand.layer, cand.ratio, cand.channels_removed) == ("/attn/MatMul", 0.5, 1)
    alone = shrink_heads(g, remove={"/attn/MatMul": 1})
    assert cand.file_bytes == _file_bytes(hw.runtime.convert(alone, input_shape=(64,), sparse="never"), tmp_path)


def test_an_impossible_budget_ends_within_the_allowance_and_says_so(trained):
    # A latency budget no plan can meet: the search may spend accuracy on the way to the cost model's
    # floor, but what it returns never loses more than the allowance (rolled back if it must).
    net, data = trained
    for drop in (0.0, 0.01):
        _, rep = hw.compress(net, data, profile="x86-avx512-vnni", latency_budget=1e-9, max_accuracy_drop=drop,
                             fine_tune_epochs=1, raise_on_miss=False)
        assert rep.float_accuracy - rep.accuracy <= drop + 1e-12, rep.markdown()
        assert not rep.met and any(m.startswith("latency") and "out of reach" in m for m in rep.misses)
        assert not any(m.startswith("accuracy") for m in rep.misses)
        assert any("out of reach" in n for n in rep.notes) and "search: " in rep.markdown()
        # The report's chosen candidates are the returned model's: a candidate chosen shrinks or prunes it.
        shrunk = {l.name for l in rep.layers if l.channels_removed > 0}
        for c in rep.candidates:
            if c.chosen and c.kind == "shrink":
                assert set(c.layer.split("+")) & shrunk


def test_roll_back_keeps_the_latest_plan_within_the_allowance():
    from hwreg_rs.compress import _roll_back

    runs = []

    def run(p):
        runs.append(p)
        return p

    # Plans latest first, their losses: the first within 1 pt is kept, the ones after it never run.
    i, r, failed = _roll_back([3.0, 2.0, 0.5, 0.0], run, lambda loss: loss <= 1.0)
    assert (i, r, failed, runs) == (2, 0.5, [3.0, 2.0], [3.0, 2.0, 0.5])
    runs.clear()
    assert _roll_back([0.2, 0.0], run, lambda loss: loss <= 1.0) == (0, 0.2, [])
    assert runs == [0.2]
    # None within: the first plan's result, every result reported.
    assert _roll_back([3.0, 2.0], lambda p: p, lambda loss: loss <= 1.0) == (0, 3.0, [3.0, 2.0])


def test_a_final_plan_past_the_allowance_is_fine_tuned_longer_before_rolling_back(trained, monkeypatch):
    # The final fine-tune (fine_tune_epochs) is made to ruin the model; the longer recovery fine-tune
    # (_RECOVERY_EPOCHS_FACTOR times as long) is not: the search keeps its own plan, said in the notes.
    import importlib

    compress_mod = importlib.import_module("hwreg_rs.compress")  # the module, not hw.compress the function
    net, data = trained
    real, epochs_run = compress_mod.Trainer, []

    class Spoiling:
        def __init__(self, m, *, epochs, **kw):
            self.m, self.epochs, self.inner = m, epochs, real(m, epochs=epochs, **kw)
            epochs_run.append(epochs)

        def fit(self, X, y):
            out = self.inner.fit(X, y)
            if self.epochs == 3:
                for p in self.m.parameters():
                    p.data[...] = 0.0
            return out

    monkeypatch.setattr(compress_mod, "Trainer", Spoiling)
    _, rep = hw.compress(net, data, profile="x86-avx512-vnni", latency_budget=1e-9, max_accuracy_drop=0.05,
                         fine_tune_epochs=3, raise_on_miss=False, weight_bits=(8,), sparsities=())
    longer = 3 * compress_mod._RECOVERY_EPOCHS_FACTOR
    assert longer in epochs_run and epochs_run.index(longer) == epochs_run.index(3) + 1
    assert rep.float_accuracy - rep.accuracy <= 0.05 + 1e-12, rep.markdown()
    assert any(f"fine-tuned again for {longer} epochs" in n for n in rep.notes), rep.notes
    assert not any(n.startswith("rolled back") for n in rep.notes)
