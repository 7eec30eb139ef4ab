"""Losses, optimizers, schedules, the Trainer loop, data, the regression example and sensitivity analysis."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest

import hwreg_rs as hw
from hwreg_rs import losses as L
from hwreg_rs import optim

nn = hw.nn


def numgrad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        fp = f(x)
        x[i] = old - eps
        fm = f(x)
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------

def test_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4)) * 3
    y = np.array([0, 3, 1, 1, 2])
    loss = L.CrossEntropyLoss()
    v = loss(z, y)
    want = np.mean([-(z[i, y[i]] - math.log(np.exp(z[i]).sum())) for i in range(5)])
    assert abs(v - want) < 1e-12
    np.testing.assert_allclose(loss.backward(), numgrad(lambda t: L.CrossEntropyLoss()(t, y), z.copy()), atol=1e-7)
    assert np.isfinite(L.cross_entropy(np.array([[1000.0, -1000.0]]), np.array([1])))


def test_cross_entropy_rejects_bad_targets():
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        L.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError):
        L.cross_entropy(np.zeros((2, 3)), np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        L.cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))


def test_mse_value_and_gradient():
    rng = np.random.default_rng(1)
    p, t = rng.standard_normal((6, 1)), rng.standard_normal(6)
    loss = L.MSELoss()
    assert abs(loss(p, t) - np.mean((p[:, 0] - t) ** 2)) < 1e-12
    np.testing.assert_allclose(loss.backward(), numgrad(lambda q: L.MSELoss()(q, t), p.copy()), atol=1e-7)


@pytest.mark.parametrize("T,alpha", [(1.0, 1.0), (4.0, 0.7), (2.0, 0.0)])
def test_distillation_value_and_gradient(T, alpha):
    rng = np.random.default_rng(2)
    s, t = rng.standard_normal((4, 5)), rng.standard_normal((4, 5)) * 2
    y = np.array([0, 4, 2, 2])
    kd = L.DistillationLoss(temperature=T, alpha=alpha)
    v = kd.forward(s, y, teacher_logits=t)
    pt = L.softmax(t / T)
    kl = np.sum(pt * (np.log(pt) - L.log_softmax(s / T))) / 4
    want = alpha * T * T * kl + (1 - alpha) * L.cross_entropy(s, y)
    assert abs(v - want) < 1e-12
    g = kd.backward()
    np.testing.assert_allclose(
        g, numgrad(lambda q: L.DistillationLoss(temperature=T, alpha=alpha).forward(q, y, teacher_logits=t), s.copy()),
        atol=1e-7)
    assert abs(L.distillation_loss(s, y, t, temperature=T, alpha=alpha) - v) < 1e-12


def test_distillation_validates():
    with pytest.raises(ValueError):
        L.DistillationLoss(temperature=0)
    with pytest.raises(ValueError):
        L.DistillationLoss(alpha=1.5)
    with pytest.raises(ValueError, match="teacher"):
        L.DistillationLoss().forward(np.zeros((2, 3)), np.array([0, 1]))


# ---------------------------------------------------------------------------
# optimizers against the PyTorch update rules written out
# ---------------------------------------------------------------------------

def run_opt(make, grads, w0):
    p = nn.Parameter(w0.copy())
    opt = make([p])
    out = []
    for g in grads:
        p.grad = g.copy()
        opt.step()
        out.append(p.data.copy())
    return out


@pytest.mark.parametrize("momentum,dampening,nesterov,wd", [(0.0, 0.0, False, 0.0), (0.9, 0.0, False, 0.01),
                                                            (0.9, 0.0, True, 0.1), (0.5, 0.3, False, 0.0)])
def test_sgd_matches_torch_rule(momentum, dampening, nesterov, wd):
    rng = np.random.default_rng(0)
    w0, grads = rng.standard_normal(5), [rng.standard_normal(5) for _ in range(4)]
    got = run_opt(lambda ps: optim.SGD(ps, lr=0.1, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                       weight_decay=wd), grads, w0)
    w, buf = w0.copy(), None
    for i, g in enumerate(grads):
        d = g + wd * w
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        w = w - 0.1 * d
        np.testing.assert_allclose(got[i], w, rtol=1e-12)


@pytest.mark.parametrize("cls,wd", [(optim.Adam, 0.0), (optim.Adam, 0.1), (optim.AdamW, 0.1)])
def test_adam_adamw_match_torch_rule(cls, wd):
    rng = np.random.default_rng(1)
    w0, grads = rng.standard_normal(5), [rng.standard_normal(5) for _ in range(5)]
    got = run_opt(lambda ps: cls(ps, lr=0.01, weight_decay=wd), grads, w0)
    w, m, v = w0.copy(), np.zeros(5), np.zeros(5)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t, g in enumerate(grads, 1):
        if cls is optim.AdamW:
            w = w * (1 - 0.01 * wd)
        else:
            g = g + wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - 0.01 / (1 - b1**t) * m / (np.sqrt(v) / math.sqrt(1 - b2**t) + eps)
        np.testing.assert_allclose(got[t - 1], w, rtol=1e-12)


def test_optimizer_does_not_modify_gradients_and_validates():
    p = nn.Parameter(np.ones(3))
    g = np.array([1.0, -2.0, 3.0])
    p.grad = g.copy()
    optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5).step()
    np.testing.assert_array_equal(p.grad, g)
    with pytest.raises(ValueError):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError):
        optim.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError):
        optim.get_optimizer("rmsprop", [p])


def test_lr_schedules():
    p = [nn.Parameter(np.zeros(1))]
    opt = optim.SGD(p, lr=0.8)
    s = optim.StepLR(opt, 3, gamma=0.5)
    lrs = []
    for _ in range(7):
        s.step()
        lrs.append(opt.lr)
    assert lrs == [0.8, 0.8, 0.4, 0.4, 0.4, 0.2, 0.2]
    opt = optim.SGD(p, lr=1.0)
    c = optim.CosineAnnealingLR(opt, 4, eta_min=0.1)
    got = []
    for _ in range(4):
        c.step()
        got.append(opt.lr)
    want = [0.1 + 0.9 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(1, 5)]
    np.testing.assert_allclose(got, want)


# ---------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blobs():
    X, y = hw.data.make_classification(240, n_features=6, n_classes=3, class_sep=1.5, seed=0)
    return X[:180], y[:180], X[180:], y[180:]


def test_trainer_learns_and_records_history(blobs):
    X, y, Xv, yv = blobs
    net = nn.mlp([6, 16, 3], rng=0)
    tr = hw.Trainer(net, epochs=8, lr=0.01, verbose=False, scheduler="cosine").fit(X, y, validation_data=(Xv, yv))
    h = tr.history_
    assert len(h) == 8 and set(h.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"}
    assert h["loss"][-1] < h["loss"][0] and h["val_accuracy"][-1] > 0.85
    assert tr.step_ == 8 * math.ceil(180 / 32)
    assert h["lr"][0] == 0.01 and h["lr"][-1] < 0.001
    r = tr.evaluate(Xv, yv)
    assert abs(r["accuracy"] - h["val_accuracy"][-1]) < 1e-12
    assert tr.predict(Xv).shape == (60, 3)


def test_same_seed_same_run_different_seed_different_run(blobs):
    X, y, _, _ = blobs

    def run(seed):
        net = nn.mlp([6, 16, 3], dropout=0.2, rng=0)
        tr = hw.Trainer(net, epochs=3, lr=0.01, seed=seed, verbose=False).fit(X, y)
        return net.state_dict(), tr.history_["loss"]

    a, ha = run(1)
    b, hb = run(1)
    c, hc = run(2)
    assert ha == hb
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert ha != hc and not np.array_equal(a["0.weight"], c["0.weight"])


def test_fit_can_be_continued(blobs):
    X, y, _, _ = blobs
    net = nn.mlp([6, 8, 3], rng=0)
    tr = hw.Trainer(net, epochs=2, verbose=False)
    tr.fit(X, y)
    opt = tr.optimizer_
    tr.fit(X, y)
    assert tr.optimizer_ is opt and len(tr.history_) == 4 and tr.step_ == 4 * 6


def test_early_stopping_and_callbacks(blobs):
    X, y, Xv, yv = blobs
    seen = []

    class Recorder(hw.train.Callback):
        def on_train_begin(self, trainer):
            seen.append("begin")

        def on_batch_end(self, trainer, step, logs):
            seen.append("batch")

        def on_train_end(self, trainer):
            seen.append("end")

    es = hw.train.EarlyStopping(monitor="val_loss", patience=2, min_delta=10.0)  # never "improves" after epoch 0
    fn_calls = []
    net = nn.mlp([6, 8, 3], rng=0)
    tr = hw.Trainer(net, epochs=20, verbose=False, early_stopping=es,
                    callbacks=[Recorder(), lambda t, e, logs: fn_calls.append(e)])
    tr.fit(X, y, validation_data=(Xv, yv))
    assert len(tr.history_) == 3 and es.stopped_epoch_ == 2 and es.best_epoch_ == 0
    assert fn_calls == [0, 1, 2] and seen[0] == "begin" and seen[-1] == "end" and seen.count("batch") == 18
    # best weights restored: validation loss equals epoch 0's
    assert abs(tr.evaluate(Xv, yv)["loss"] - tr.history_["val_loss"][0]) < 1e-6


def test_early_stopping_needs_its_metric(blobs):
    X, y, _, _ = blobs
    with pytest.raises(KeyError, match="val_loss"):
        hw.Trainer(nn.mlp([6, 3], rng=0), epochs=2, verbose=False,
                   early_stopping=hw.train.EarlyStopping()).fit(X, y)


def test_quiet_and_verbose_modes(blobs, capsys):
    X, y, _, _ = blobs
    hw.Trainer(nn.mlp([6, 3], rng=0), epochs=2, verbose=False).fit(X, y)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    hw.Trainer(nn.mlp([6, 3], rng=0), epochs=2, verbose=True).fit(X, y)
    out = capsys.readouterr()
    assert "loss" in out.err or "epoch" in out.err


def test_trainer_validates_input(blobs):
    X, y, _, _ = blobs
    with pytest.raises(ValueError, match="same number of samples"):
        hw.Trainer(nn.mlp([6, 3], rng=0), verbose=False).fit(X, y[:-1])
    with pytest.raises(TypeError):
        hw.Trainer(lambda x: x, verbose=False).fit(X, y)
    with pytest.raises(TypeError):
        hw.Trainer(nn.mlp([6, 3], rng=0), constraints=["clip"], verbose=False).fit(X, y)
    with pytest.raises(ValueError):
        hw.Trainer(nn.mlp([6, 3], rng=0), scheduler="linear", verbose=False).fit(X, y)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_named_optimizers_train(blobs, name):
    X, y, Xv, yv = blobs
    net = nn.mlp([6, 16, 3], rng=0)
    hw.Trainer(net, optimizer=name, lr=0.05 if name == "sgd" else 0.01, momentum=0.9, epochs=5,
               verbose=False).fit(X, y)
    assert hw.train.evaluate(net, Xv, yv)["accuracy"] > 0.85


def test_distillation_through_trainer_uses_the_teacher(blobs):
    X, y, Xv, yv = blobs
    teacher = nn.mlp([6, 32, 3], rng=0)
    hw.Trainer(teacher, epochs=10, lr=0.01, verbose=False).fit(X, y)
    student = nn.mlp([6, 4, 3], rng=1)
    # alpha = 1: only the teacher's soft labels; the student still learns the task through them
    hw.Trainer(student, teacher=teacher, alpha=1.0, temperature=2.0, epochs=10, lr=0.01, verbose=False).fit(X, y)
    agree = np.mean(hw.train.predict(student, Xv).argmax(1) == hw.train.predict(teacher, Xv).argmax(1))
    assert agree > 0.85
    # any callable works as a teacher
    st2 = nn.mlp([6, 4, 3], rng=1)
    hw.Trainer(st2, teacher=lambda xb: teacher.eval()(xb), alpha=1.0, temperature=2.0, epochs=2, lr=0.01,
               verbose=False).fit(X, y)


# ---------------------------------------------------------------------------
# the linear regression example: y = 3x + 2 + noise
# ---------------------------------------------------------------------------

def regression(c, L_grad, *, epochs=40):
    X, y = hw.data.make_regression(256, coef=3.0, bias=2.0, noise=0.1, seed=0)
    model = nn.Linear(1, 1, rng=0)
    cons = [hw.constraints.WeightClip(c), hw.constraints.GradClipValue(L_grad)]
    hw.fit(model, X, y, loss="mse", optimizer="sgd", lr=0.1, epochs=epochs, batch_size=16, verbose=False,
           constraints=cons)
    return float(model.weight.data[0, 0]), float(model.bias.data[0])


def test_regression_recovers_weights_under_loose_clipping():
    w, b = regression(10.0, 1.0)
    assert abs(w - 3.0) < 0.05 and abs(b - 2.0) < 0.05


def test_regression_hits_the_clip_bound():
    w, b = regression(2.5, 1.0)
    assert w == np.float32(2.5)
    assert abs(b - 2.0) < 0.1  # x is symmetric about 0, so the bias still finds ~2


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

def test_digits_split_is_fixed_and_seeded():
    a = hw.data.load_digits()
    b = hw.data.load_digits()
    assert a.X_test.shape == (360, 64) and a.X_train.shape == (1437, 64)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.X_train.dtype == np.float32 and a.y_train.dtype == np.int64 and a.X_train.max() <= 1.0
    c = hw.data.load_digits(seed=1)
    assert not np.array_equal(a.y_test, c.y_test)
    img = hw.data.load_digits(images=True)
    assert img.X_train.shape == (1437, 1, 8, 8)
    np.testing.assert_array_equal(img.X_test.reshape(360, 64), a.X_test)


def test_synthetic_generators():
    X, y = hw.data.make_regression(50, n_features=3, coef=[1.0, -2.0, 0.5], bias=1.0, seed=3)
    np.testing.assert_allclose(y, X @ np.array([1.0, -2.0, 0.5]) + 1.0, rtol=1e-5)
    X1, y1 = hw.data.make_classification(90, n_features=4, n_classes=3, seed=0)
    X2, y2 = hw.data.make_classification(90, n_features=4, n_classes=3, seed=0)
    np.testing.assert_array_equal(X1, X2)
    assert np.bincount(y1).tolist() == [30, 30, 30]


def test_reduced_digits_mlp():
    """A reduced digits run (the full targets live in benches/bench_train.py)."""
    Xtr, ytr, Xte, yte = hw.data.load_digits()
    net = nn.mlp([64, 64, 10], rng=0)
    t0 = time.perf_counter()
    hw.Trainer(net, epochs=6, lr=3e-3, batch_size=64, verbose=False).fit(Xtr, ytr)
    assert time.perf_counter() - t0 < 30
    assert hw.train.evaluate(net, Xte, yte)["accuracy"] >= 0.93


def test_reduced_digits_cnn():
    Xtr, ytr, Xte, yte = hw.data.load_digits(images=True)
    net = nn.small_cnn(channels=(4, 8), hidden=32, rng=0)
    hw.Trainer(net, epochs=3, lr=3e-3, batch_size=64, verbose=False).fit(Xtr, ytr)
    assert hw.train.evaluate(net, Xte, yte)["accuracy"] >= 0.9


# ---------------------------------------------------------------------------
# sensitivity analysis
# ---------------------------------------------------------------------------

def test_sensitivity_table(blobs):
    X, y, Xv, yv = blobs
    net = nn.mlp([6, 16, 3], rng=0)
    hw.Trainer(net, epochs=6, lr=0.01, verbose=False).fit(X, y)
    before = net.state_dict()
    t = hw.analysis.sensitivity(net, Xv, yv, amounts=(0.0, 0.5, 0.99), bits=(8, 2))
    assert len(t) == 2 * 5
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # restored
    base = hw.train.evaluate(net, Xv, yv)
    assert t.baseline == base
    zero = t.select(layer="0", kind="prune")[0]
    assert zero.amount == 0.0 and zero.delta_loss == 0.0 and zero.delta_accuracy == 0.0
    # heavier pruning hurts more
    p = t.select(layer="0", kind="prune")
    assert p[2].loss > p[0].loss
    q8, q2 = t.select(layer="0", kind="quantize")
    assert abs(q8.delta_loss) < abs(q2.delta_loss)
    # the table is reproducible by hand for one row
    manual = copy.deepcopy(net)
    manual[2].weight.data = manual[2].weight.data * hw.constraints.magnitude_mask(manual[2].weight.data, 0.5)
    r = t.select(layer="2", kind="prune")[1]
    assert abs(hw.train.evaluate(manual, Xv, yv)["loss"] - r.loss) < 1e-9
    assert "| layer |" in t.markdown() and t.to_dicts()[0]["layer"] == "0"
    with pytest.raises(ValueError, match="unknown layers"):
        hw.analysis.sensitivity(net, Xv, yv, layers=["7"])


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam", "adam_wd", "adamw"])
def test_fused_float32_updates_match_the_float64_rule(kind):
    """float32 parameters take the fused Rust path; it must follow the same rule as the NumPy path."""
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((7, 5))
    grads = [rng.standard_normal((7, 5)) for _ in range(6)]
    make = {
        "sgd": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
        "nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        "adam": lambda ps: optim.Adam(ps, lr=0.01),
        "adam_wd": lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1),
        "adamw": lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    }[kind]
    p32 = nn.Parameter(w0.astype(np.float32))
    opt32 = make([p32])
    ref = run_opt(make, grads, w0)  # float64: the NumPy path
    for i, g in enumerate(grads):
        p32.grad = g.astype(np.float32)
        before = p32.grad.copy()
        opt32.step()
        np.testing.assert_array_equal(p32.grad, before)
        assert p32.data.dtype == np.float32
        np.testing.assert_allclose(p32.data, ref[i], rtol=2e-5, atol=2e-6)


def test_fused_update_falls_back_for_odd_arrays():
    p = nn.Parameter(np.ones((4, 4), np.float32))
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.ones((4, 8), np.float32)[:, ::2]  # strided gradient: NumPy path
    opt.step()
    np.testing.assert_allclose(p.data, 0.9, rtol=1e-6)
    from hwreg_rs import _native

    with pytest.raises(ValueError, match="elements"):
        _native.adam_step(np.ones(3, np.float32), np.ones(2, np.float32), np.zeros(3, np.float32),
                          np.zeros(3, np.float32), 0.1, 0.9, 0.999, 1e-8, 0.0, False, 0.1, 0.03)
    ro = np.ones(3, np.float32)
    ro.setflags(write=False)
    with pytest.raises(TypeError, match="not writeable"):
        _native.sgd_momentum_step(ro, np.ones(3, np.float32), np.zeros(3, np.float32), 0.1, 0.9, 0.0, 0.0, False)
