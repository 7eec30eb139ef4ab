"""Hard constraints: each invariant holds after every step of training, and each check fails when violated."""

from __future__ import annotations

import numpy as np
import pytest

import hwreg_rs as hw
from hwreg_rs import constraints as C

nn = hw.nn


@pytest.fixture(scope="module")
def data():
    X, y = hw.data.make_classification(160, n_features=6, n_classes=3, class_sep=1.5, seed=0)
    return X, y


def train(constraints, data, *, model=None, epochs=3, optimizer="adam", lr=0.01, **kw):
    X, y = data
    net = model if model is not None else nn.mlp([6, 16, 3], rng=0)
    tr = hw.Trainer(net, constraints=constraints, epochs=epochs, optimizer=optimizer, lr=lr, momentum=0.9,
                    verbose=False, **kw).fit(X, y)
    return net, tr


class StepSpy(hw.train.Callback):
    """Runs every constraint check itself after every batch (in addition to the trainer's own)."""

    def __init__(self):
        self.batches = 0

    def on_batch_end(self, trainer, step, logs):
        self.batches += 1
        for c in trainer.constraints_:
            c.check()


# ---------------------------------------------------------------------------
# clipping and max-norm
# ---------------------------------------------------------------------------

def test_weight_clip_holds_and_binds(data):
    spy = StepSpy()
    net, _ = train([C.WeightClip(0.05)], data, callbacks=[spy], lr=0.05)
    assert spy.batches == 15
    for _, p in C.select_params(net):
        assert np.abs(p.data).max() <= 0.05
    assert np.isclose(np.abs(net[0].weight.data).max(), 0.05)  # the bound is active


def test_weight_clip_check_fails_when_violated():
    net = nn.mlp([4, 3], rng=0)
    c = C.WeightClip(0.1)
    c.attach(net)
    c.after_step()
    c.check()
    net[0].weight.data[0, 0] = 0.2
    with pytest.raises(C.ConstraintViolation, match="exceeds c"):
        c.check()
    with pytest.raises(ValueError):
        C.WeightClip(-1)


def test_max_norm_holds(data):
    net, _ = train([C.MaxNorm(0.5)], data, lr=0.05)
    for _, p in C.select_params(net):
        norms = np.linalg.norm(p.data.reshape(p.data.shape[0], -1), axis=1)
        assert norms.max() <= 0.5 and norms.max() > 0.45


def test_max_norm_conv_filters_and_check():
    conv = nn.Conv2d(2, 3, 3, rng=0)
    conv.weight.data *= 10
    c = C.MaxNorm(1.0)
    with pytest.raises(RuntimeError, match="not attached"):
        c.check()
    c.attach(conv)
    with pytest.raises(C.ConstraintViolation, match="norm"):
        c.check()
    c.after_step()
    c.check()
    np.testing.assert_allclose(np.linalg.norm(conv.weight.data.reshape(3, -1), axis=1), 1.0, rtol=1e-5)


def test_grad_clip_value_holds_and_check_fails(data):
    spy = StepSpy()
    net, tr = train([C.GradClipValue(1e-3)], data, callbacks=[spy])
    for p in net.parameters():
        assert np.abs(p.grad).max() <= 1e-3
    net[0].weight.grad[0, 0] = 1.0
    with pytest.raises(C.ConstraintViolation, match="GradClipValue"):
        tr.constraints_[0].check()


def test_grad_clip_norm_holds_and_matches_torch_rule(data):
    net, tr = train([C.GradClipNorm(0.01)], data)
    total = np.sqrt(sum(float(np.vdot(p.grad, p.grad)) for p in net.parameters()))
    assert 0.0099 < total <= 0.01
    # torch.nn.utils.clip_grad_norm_: scale by max_norm / (total + 1e-6) when that is < 1
    lin = nn.Linear(2, 1, bias=False, rng=0)
    lin.weight.grad = np.array([[30.0, 40.0]], np.float32)
    c = C.GradClipNorm(5.0)
    c.attach(lin)
    c.on_gradients()
    np.testing.assert_allclose(lin.weight.grad, [[3.0, 4.0]], rtol=1e-5)
    lin.weight.grad = np.array([[1.0, 1.0]], np.float32)
    c.on_gradients()
    np.testing.assert_array_equal(lin.weight.grad, [[1.0, 1.0]])  # under the bound: untouched
    lin.weight.grad = np.array([[30.0, 40.0]], np.float32)
    with pytest.raises(C.ConstraintViolation, match="global gradient norm"):
        c.check()


# ---------------------------------------------------------------------------
# penalties
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [C.L1, C.L2])
def test_penalty_gradient_is_the_derivative_of_the_penalty(cls):
    net = nn.mlp([3, 4, 2], rng=0).astype(np.float64)
    pen = cls(0.3)
    pen.attach(net)
    net.zero_grad()
    v = pen.penalty()
    w = net[0].weight.data
    want = 0.3 * (np.abs(w).sum() + np.abs(net[2].weight.data).sum()) if cls is C.L1 else \
        0.3 * (np.sum(w**2) + np.sum(net[2].weight.data ** 2))
    assert abs(v - want) < 1e-12
    # finite difference of the penalty w.r.t. one weight
    eps = 1e-6
    i = (1, 2)
    old = w[i]
    w[i] = old + eps
    net.zero_grad()
    fp = cls(0.3)
    fp.attach(net)
    vp = fp.penalty()
    w[i] = old - eps
    net.zero_grad()
    fm = cls(0.3)
    fm.attach(net)
    vm = fm.penalty()
    w[i] = old
    net.zero_grad()
    pen.penalty()
    assert abs((vp - vm) / (2 * eps) - net[0].weight.grad[i]) < 1e-6


def test_penalties_shrink_weights_and_enter_the_loss(data):
    base, tb = train([], data, epochs=4)
    l1, t1 = train([C.L1(1e-3)], data, epochs=4)
    l2, t2 = train([C.L2(1e-2)], data, epochs=4)
    norm = lambda m, o: sum(np.sum(np.abs(p.data) ** o) for _, p in C.select_params(m))  # noqa: E731
    assert norm(l1, 1) < norm(base, 1) and norm(l2, 2) < norm(base, 2)
    assert t1.history_["loss"][-1] > tb.history_["loss"][-1]  # the reported loss includes the penalty
    pen = t1.constraints_[0]
    pen.last_penalty_ = float("nan")
    with pytest.raises(C.ConstraintViolation):
        pen.check()


# ---------------------------------------------------------------------------
# quantization-aware training
# ---------------------------------------------------------------------------

def test_fake_quantize_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 100.0, -100.0], np.float32)
    np.testing.assert_array_equal(C.fake_quantize(x, 1.0, bits=4), [0, 2, 2, -0, -2, 7, -8])
    np.testing.assert_array_equal(C.fake_quantize(np.float32([0.3]), 0.1, 3, dtype="uint8"), np.float32([0.3]))
    # the same numbers as the package's ONNX operators
    qp = hw.calibrate(x, bits=4)
    np.testing.assert_array_equal(C.fake_quantize(x, qp.scale, bits=4), hw.dequantize(hw.quantize(x, qp), qp))


def test_qat_rounds_like_the_package_operators():
    """Training and inference round the same way: QAT's weights are dequantize(quantize(w)) of the package."""
    lin = nn.Linear(6, 4, rng=0)
    qat = C.QAT(weight_bits=5, activation_bits=8)
    qat.attach(lin)
    x = np.random.default_rng(0).random((8, 6), dtype=np.float32)
    lin(x)
    qp = hw.calibrate(lin.weight.data, symmetric=True, axis=0, bits=5)
    np.testing.assert_array_equal(lin.effective_weight(), hw.dequantize(hw.quantize(lin.weight.data, qp), qp))
    np.testing.assert_array_equal(qat.quantized_layers()[""]["weight_q"], hw.quantize(lin.weight.data, qp))
    s, zp = lin.input_fake_quant.qparams()
    aq = hw.calibrate(np.array([x.min(), x.max()], np.float32), dtype="uint8", symmetric=False)
    assert s == float(aq.scale) and zp == int(aq.zero_point)
    np.testing.assert_array_equal(lin._x, hw.dequantize(hw.quantize(x, aq), aq))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qat_weights_on_grid_every_step(data, bits):
    spy = StepSpy()
    qat = C.QAT(weight_bits=bits, activation_bits=8)
    net, _ = train([qat], data, callbacks=[spy])
    assert spy.batches == 15
    for name, m in qat.layers_.items():
        wq = m.effective_weight()
        for row in wq.reshape(wq.shape[0], -1):
            assert len(np.unique(row)) <= 2**bits
        q = qat.quantized_layers()[name]
        np.testing.assert_allclose(q["weight_q"].astype(np.float32) * q["weight_scale"][:, None], wq, rtol=1e-6)
        assert q["weight_q"].min() >= -(2 ** (bits - 1)) and q["weight_q"].max() <= 2 ** (bits - 1) - 1
        # per-channel torch symmetric scale: max|w| / ((qmax - qmin) / 2)
        np.testing.assert_allclose(q["weight_scale"], np.abs(m.weight.data).max(axis=1) / ((2**bits - 1) / 2),
                                   rtol=1e-6)


def test_qat_activations_are_quantized_with_moving_average_observer():
    lin = nn.Linear(3, 2, rng=0)
    qat = C.QAT(weight_bits=8, activation_bits=4, averaging_constant=0.5)
    qat.attach(lin)
    afq = lin.input_fake_quant
    x1 = np.array([[0.0, 1.0, 2.0]], np.float32)
    lin(x1)
    assert (afq.min_, afq.max_) == (0.0, 2.0)
    x2 = np.array([[-2.0, 0.0, 4.0]], np.float32)
    lin(x2)
    assert (afq.min_, afq.max_) == (-1.0, 3.0)
    scale, zp = afq.qparams()
    assert np.isclose(scale, 4.0 / 15) and zp == round(1.0 / (4.0 / 15))
    xq = lin._x
    q = xq / np.float32(scale) + zp
    np.testing.assert_allclose(q, np.rint(q), atol=1e-4)
    assert q.min() >= 0 and q.max() <= 15
    # eval freezes the observer
    lin.eval()
    lin(np.array([[100.0, 0.0, 0.0]], np.float32))
    assert (afq.min_, afq.max_) == (-1.0, 3.0)


def test_qat_straight_through_estimator():
    lin = nn.Linear(4, 3, rng=0).astype(np.float64)
    qat = C.QAT(weight_bits=3, activation_bits=None)
    qat.attach(lin)
    x = np.random.default_rng(0).standard_normal((5, 4))
    g = np.random.default_rng(1).standard_normal((5, 3))
    lin(x)
    gx = lin.backward(g)
    wq = lin.effective_weight()
    np.testing.assert_allclose(lin.weight.grad, g.T @ x)  # passes straight to the float weights
    np.testing.assert_allclose(gx, g @ wq)  # the input gradient sees the quantized weights
    # activation STE: zero gradient where the input was clipped
    lin2 = nn.Linear(2, 1, rng=0)
    C.QAT(activation_bits=8).attach(lin2)
    lin2(np.array([[0.0, 1.0]], np.float32))
    lin2.eval()
    lin2(np.array([[5.0, 0.5]], np.float32))
    gx2 = lin2.backward(np.ones((1, 1), np.float32))
    assert gx2[0, 0] == 0 and gx2[0, 1] != 0


def test_qat_power_of_two_scales(data):
    qat = C.QAT(weight_bits=4, activation_bits=8, power_of_two=True)
    net, _ = train([qat], data, epochs=1)
    for q in qat.quantized_layers().values():
        e = np.log2(q["weight_scale"])
        np.testing.assert_array_equal(e, np.rint(e))
        assert np.log2(q["input_scale"]) == np.rint(np.log2(q["input_scale"]))


def test_qat_check_fails_when_weights_leave_the_grid():
    net = nn.mlp([4, 3], rng=0)
    qat = C.QAT(weight_bits=4)
    qat.attach(net)
    net(np.ones((2, 4), np.float32))
    qat.check()
    net[0].weight_fake_quant = lambda w: w  # a layer that bypasses quantization
    with pytest.raises(C.ConstraintViolation, match="lost its weight fake-quant"):
        qat.check()
    qat.attach(net)
    qat.check()
    class Sloppy(C.WeightFakeQuant):
        def __call__(self, w):
            return super().__call__(w) + 0.3 * self.scale_

    net[0].weight_fake_quant = Sloppy(4)
    with pytest.raises(C.ConstraintViolation, match="off their 4-bit grid"):
        qat.check()
    with pytest.raises(ValueError):
        C.QAT(weight_bits=1)
    with pytest.raises(ValueError):
        C.QAT(activation_bits=9)


def test_qat_remove_restores_float():
    net = nn.mlp([4, 3], rng=0)
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    y0 = net(x)
    qat = C.QAT(weight_bits=2)
    qat.attach(net)
    assert not np.allclose(net(x), y0)
    qat.remove()
    np.testing.assert_array_equal(net(x), y0)


def test_qat_on_a_cnn(data):
    X, y = hw.data.load_digits(images=True)[:2]
    net = nn.small_cnn(channels=(2, 4), hidden=8, rng=0)
    qat = C.QAT(weight_bits=4)
    hw.Trainer(net, constraints=[qat], epochs=1, verbose=False).fit(X[:128], y[:128])
    assert set(qat.layers_) == {"0", "3", "8", "10"}


# ---------------------------------------------------------------------------
# gradual pruning
# ---------------------------------------------------------------------------

def test_polynomial_schedule_drives_the_masks():
    """The default schedule is hw.prune.PolynomialDecay; the final sparsity is reached at end_step exactly."""
    net = nn.mlp([10, 20, 3], rng=0)
    prune = C.GradualPruning(0.9, initial_sparsity=0.1, begin_step=10, end_step=30, frequency=7)
    assert isinstance(prune.schedule, hw.prune.PolynomialDecay)
    prune.attach(net)
    seen = {}
    for t in range(40):
        before = prune.sparsity_
        prune.before_step(t)
        if prune.sparsity_ != before:
            seen[t] = prune.sparsity_
    assert sorted(seen) == [10, 17, 24, 30]  # every `frequency` steps from begin_step, plus end_step
    for t in (10, 17, 24):
        p = (t - 10) / 20
        assert abs(seen[t] - (0.9 + (0.1 - 0.9) * (1 - p) ** 3)) < 1e-12
    assert seen[30] == 0.9
    assert prune.sparsity()["0.weight"] == round(0.9 * 200) / 200
    with pytest.raises(ValueError):
        C.GradualPruning(1.0, end_step=10)
    with pytest.raises(ValueError):
        C.GradualPruning(0.5, begin_step=5, end_step=5)


def test_magnitude_mask_ties_lower_index_first():
    w = np.array([1.0, -1.0, 1.0, 0.5, 2.0])
    np.testing.assert_array_equal(C.magnitude_mask(w, 0.4), [False, True, True, False, True])  # 0.5, then the first 1.0
    np.testing.assert_array_equal(C.magnitude_mask(w, 0.6), [False, False, True, False, True])
    assert C.magnitude_mask(np.ones(5), 0.5).sum() == 3  # round(2.5) = 2 (half to even)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_gradual_pruning_reaches_target_and_keeps_state_zero(data, optimizer):
    spy = StepSpy()
    steps = 3 * 5
    prune = C.GradualPruning(0.8, end_step=steps - 3, frequency=2)
    net, tr = train([prune], data, optimizer=optimizer, callbacks=[spy])
    sp = prune.sparsity()
    for name, p in C.select_params(net):
        assert sp[name] == pytest.approx(round(0.8 * p.data.size) / p.data.size)
        off = ~prune.masks_[name]
        assert np.all(p.data[off] == 0)
        for arr in tr.optimizer_.state_arrays(p):
            assert np.all(arr[off] == 0)
        assert tr.optimizer_.state_arrays(p) or optimizer == "sgd" and tr.optimizer_.momentum == 0
    # biases are not pruned
    assert np.all(net[0].bias.data != 0)


def test_gradual_pruning_masks_grow_monotonically(data):
    history = []

    class Masks(hw.train.Callback):
        def on_batch_end(self, trainer, step, logs):
            history.append(trainer.constraints_[0].masks_["0.weight"].copy())

    prune = C.GradualPruning(0.9, end_step=12, frequency=1)
    train([prune], data, callbacks=[Masks()])
    for a, b in zip(history, history[1:]):
        assert not np.any(b & ~a)  # nothing pruned comes back
    assert (~history[-1]).mean() == pytest.approx(0.9, abs=0.01)


def test_gradual_pruning_check_fails_when_violated(data):
    prune = C.GradualPruning(0.5, end_step=2, frequency=1)
    net, tr = train([prune], data, epochs=1, optimizer="sgd")
    off = ~prune.masks_["0.weight"]
    i = tuple(np.argwhere(off)[0])
    buf = tr.optimizer_.state[net[0].weight]["momentum_buffer"]
    buf[i] = 1.0
    with pytest.raises(C.ConstraintViolation, match="optimizer state"):
        prune.check()
    buf[i] = 0.0
    net[0].weight.data[i] = 0.1
    with pytest.raises(C.ConstraintViolation, match="pruned weights"):
        prune.check()


def test_gradual_pruning_with_a_custom_mask_function(data):
    def row_mask(w, amount):  # structured: drop whole output neurons by L2 norm
        k = int(round(amount * w.shape[0]))
        keep = np.ones(w.shape, bool)
        keep[np.argsort(np.linalg.norm(w, axis=1), kind="stable")[:k]] = False
        return keep

    prune = C.GradualPruning(0.5, end_step=10, frequency=5, mask_fn=row_mask, params=["0.weight"])
    net, _ = train([prune], data)
    rows_zero = np.all(net[0].weight.data == 0, axis=1)
    assert rows_zero.sum() == 8
    with pytest.raises(ValueError, match="bool array"):
        C.GradualPruning(0.5, end_step=2, frequency=1, mask_fn=lambda w, a: np.ones(3)).attach(net) or \
            train([C.GradualPruning(0.5, end_step=2, frequency=1, mask_fn=lambda w, a: np.ones(3))], data)


def test_gradual_pruning_validates():
    with pytest.raises(ValueError, match="final_sparsity and end_step"):
        C.GradualPruning(0.5)
    with pytest.raises(TypeError):
        C.GradualPruning(schedule=object())
    # a package schedule object works directly
    C.GradualPruning(schedule=hw.prune.ConstantSchedule(0.5, begin_step=2))
    with pytest.raises(ValueError, match="unknown parameter"):
        C.GradualPruning(0.5, end_step=3, params=["nope"]).attach(nn.mlp([2, 2], rng=0))


# ---------------------------------------------------------------------------
# everything at once
# ---------------------------------------------------------------------------

def test_all_constraints_compose_with_distillation(data):
    X, y = data
    teacher = nn.mlp([6, 32, 3], rng=5)
    hw.Trainer(teacher, epochs=5, lr=0.01, verbose=False).fit(X, y)
    spy = StepSpy()
    cons = [
        C.GradClipNorm(1.0), C.WeightClip(0.3), C.QAT(weight_bits=4, activation_bits=8),
        C.GradualPruning(0.7, end_step=20, frequency=4), C.MaxNorm(1.5), C.GradClipValue(0.5), C.L2(1e-4),
    ]
    net = nn.mlp([6, 16, 3], rng=0)
    tr = hw.Trainer(net, constraints=cons, teacher=teacher, alpha=0.7, temperature=3.0, epochs=6, lr=0.01,
                    optimizer="adam", verbose=False, callbacks=[spy]).fit(X, y)
    assert spy.batches == 30 and tr.history_["accuracy"][-1] > 0.6
    clipn, clip, qat, prune, maxn, clipv, _ = cons
    for name, p in C.select_params(net):
        assert np.abs(p.data).max() <= 0.3
        assert np.mean(p.data == 0) >= 0.69
        assert np.linalg.norm(p.data, axis=1).max() <= 1.5
    for name, m in qat.layers_.items():
        wq = m.effective_weight()
        assert np.all(wq[~prune.masks_[f"{name}.weight"]] == 0)  # pruned zeros stay exact zeros on the grid
        assert max(len(np.unique(r)) for r in wq) <= 16
    for p in net.parameters():
        assert np.abs(p.grad).max() <= 0.5


def test_check_constraints_can_be_turned_off(data):
    class Liar(C.Constraint):
        def check(self):
            raise C.ConstraintViolation("always")

    with pytest.raises(C.ConstraintViolation):
        train([Liar()], data, epochs=1)
    train([Liar()], data, epochs=1, check_constraints=False)


def test_early_stopping_restore_keeps_the_constraints(data):
    """Restoring the best epoch's weights re-applies the projections: the invariants still hold."""
    X, y = data
    prune = C.GradualPruning(0.8, end_step=12, frequency=3)
    clip = C.WeightClip(0.2)
    es = hw.train.EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)
    net = nn.mlp([6, 16, 3], rng=0)
    hw.Trainer(net, constraints=[prune, clip], early_stopping=es, epochs=6, lr=0.05, verbose=False).fit(
        X, y, validation_data=(X, y))
    assert es.best_epoch_ == 0 and es.stopped_epoch_ == 1
    prune.check()
    clip.check()
    assert np.all(net[0].weight.data[~prune.masks_["0.weight"]] == 0)
