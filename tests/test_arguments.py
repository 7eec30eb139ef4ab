"""Argument checks of the public functions (issue #11, hardening): bad arguments raise TypeError or
ValueError naming the argument and the value, never OverflowError / IndexError / ZeroDivisionError /
AttributeError from deeper down. The first tests reproduce the issue's findings one by one."""

import math

import numpy as np
import pytest

import hwreg_rs as hw
from hwreg_rs import _validate as V


# ------------------------------------------------------------------------------- the findings

def test_qparams_int8_dtype_object_uses_the_signed_grid():
    # np.int8 (not "int8") used to fall through to the uint8 grid [0, 15]
    qp = hw.QParams(np.float32(1.0), 0, np.int8, None, 4)
    assert qp.dtype == "int8" and (qp.qmin, qp.qmax) == (-8, 7)
    assert hw.quantize(np.array([-100.0, 100.0], np.float32), qp).tolist() == [-8, 7]
    assert hw.QParams(np.float32(1.0), 0, np.uint8, None, 4).dtype == "uint8"


@pytest.mark.parametrize("bits", [1, 0, -3, 9, 64, 2**70])
def test_qparams_bits_outside_2_to_8_are_refused(bits):
    # bits=1 used to be accepted (grid [-1, 0]); bits=64 overflowed in quantize
    with pytest.raises(ValueError, match=rf"bits must be in \[2, 8\]; got {bits}"):
        hw.QParams(np.float32(1.0), 0, "int8", None, bits)


def test_qparams_bad_types():
    with pytest.raises(TypeError, match="bits must be an int; got float"):
        hw.QParams(np.float32(1.0), 0, "int8", None, 4.0)
    with pytest.raises(TypeError, match="dtype"):
        hw.QParams(np.float32(1.0), 0, "int4", None, 4)


def test_affine_calibration_of_a_range_beyond_float32_is_refused():
    # (hi - lo) / 255 overflows float32: the scale used to come back as inf
    x = np.array([3e38, -3e38], np.float32)
    with pytest.raises(ValueError, match=r"range \[-3.*e\+38, 3.*e\+38\] spans more than float32"):
        hw.calibrate(x, symmetric=False)
    with pytest.raises(ValueError, match="channel 1 along axis 0"):
        hw.calibrate(np.array([[1.0, -1.0], [3e38, -3e38]], np.float32), symmetric=False, axis=0)
    # the symmetric scheme divides max(|lo|, |hi|) only: finite
    assert np.isfinite(hw.calibrate(x, symmetric=True).scale)
    # a range that fits stays bit-exact torch
    qp = hw.calibrate(np.array([1e38, -1e38], np.float32), symmetric=False)
    assert qp.scale == (np.float32(1e38) - np.float32(-1e38)) / np.float32(255)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: hw.calibrate(np.ones(4, np.float32), method="mse", bins=-1), ValueError, r"bins .*got -1"),
    (lambda: hw.calibrate(np.ones(4, np.float32), bins=2**70), ValueError, r"bins .*got 1180591620717411303424"),
    (lambda: hw.calibrate(np.ones(4, np.float32), bins=2.0), TypeError, "bins must be an int"),
    (lambda: hw.calibrate(np.ones(4, np.float32), method="percentile", percentile=math.nan), ValueError, "percentile"),
    (lambda: hw.calibrate(np.ones(4, np.float32), symmetric="no"), TypeError, "symmetric must be a bool"),
    (lambda: hw.calibrate(np.ones(4, np.float32), method=["minmax"]), ValueError, "method"),
    (lambda: hw.set_num_threads(10**30), ValueError, r"n must be in \[0, 65536\]; got 10{30}"),
    (lambda: hw.set_num_threads(-1), ValueError, "n must be in"),
    (lambda: hw.set_num_threads(2.0), TypeError, "n must be an int; got float"),
    (lambda: hw.sparse.choose(np.zeros((4, 0), np.float32)), ValueError, r"w is empty \(shape \(4, 0\)\)"),
    (lambda: hw.sparse.choose(np.ones((4, 4), np.float32), batch=2**70), ValueError, "batch"),
    (lambda: hw.sparse.choose(np.ones((4, 4), np.float32), dtypes=None), TypeError, "dtypes"),
    (lambda: hw.nn.Linear(3, 2, rng=0)([[1.0, 2.0, 3.0]]), TypeError, "Linear: x must be a numeric numpy.ndarray"),
    (lambda: hw.nn.Conv2d(1, 1, 3, rng=0)([[[[0.0] * 3] * 3]]), TypeError, "Conv2d: x must be"),
    (lambda: hw.nn.ReLU()(None), TypeError, "ReLU: x must be .* got NoneType"),
    (lambda: hw.nn.BatchNorm1d(3)(np.array(["a"] * 3)), TypeError, "dtype <U1"),
    (lambda: hw.nn.MaxPool2d(2)(np.ones((1, 1, 4, 4), np.int32)), TypeError, "floating-point"),
    (lambda: hw.io.save("x.hwreg", None), TypeError, "arrays must be a mapping"),
    (lambda: hw.io.save("x.hwreg", {1: np.zeros(2)}), TypeError, "arrays keys must be str"),
    (lambda: hw.io.save(None, {}), TypeError, "path must be"),
    (lambda: hw.io.save("x.hwreg", {}, {"v": math.nan}), ValueError, "meta must be JSON-serialisable"),
    (lambda: hw.io.save("x.hwreg", {}, {"v": object()}), TypeError, "meta must be JSON-serialisable"),
    (lambda: hw.io.save("x.hwreg", {}, [1]), TypeError, "meta must be a mapping"),
], ids=lambda v: getattr(v, "__name__", None) if isinstance(v, type) else None)
def test_issue_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_magnitude_mask_of_a_0d_weight_is_0d():
    # the mask came back with shape (1,)
    w = np.array(2.5, np.float32)
    assert hw.prune.magnitude_mask(w, 0).shape == ()
    assert hw.prune.magnitude_mask(w, 1).shape == ()
    assert not hw.prune.magnitude_mask(w, 1)[()]
    assert hw.prune.magnitude_mask(np.array(3), 0.0, mask=np.array(True)).shape == ()


def test_convert_with_an_input_shape_the_model_does_not_take():
    # the issue's example (runtime.convert is not this suite's; this pins the message it gives now)
    with pytest.raises(ValueError, match=r"does not fit input_shape \(64,\).*Conv2d expects input \(N, 1, H, W\)"):
        hw.runtime.convert(hw.nn.small_cnn(rng=0).eval(), input_shape=(64,))


# ----------------------------------------------------------------------- the rest, by module

@pytest.mark.parametrize("call, exc, match", [
    # prune
    (lambda: hw.prune.random_mask(np.ones(4), 0.5, seed=-1), ValueError, "seed must be >= 0"),
    (lambda: hw.prune.random_mask((2, -3), 0.5), ValueError, r"w \(a shape\) must be >= 0"),
    (lambda: hw.prune.nm_mask(np.ones((2, 4)), 2, 2**40), ValueError, r"m must be in \[1, 2147483648\]"),
    (lambda: hw.prune.nm_mask(np.ones((2, 4)), 5, 4), ValueError, r"n must be in \[0, 4\]; got 5"),
    (lambda: hw.prune.block_mask(np.ones((4, 4)), 0.5, block=(1, 2**40)), ValueError, r"block\[1\]"),
    (lambda: hw.prune.block_mask(np.ones((4, 4)), 0.5, n=np.ones(2)), ValueError, "norm order n"),
    (lambda: hw.prune.structured_mask(np.ones((4, 4)), 0.5, n=np.ones(0)), ValueError, "norm order n"),
    (lambda: hw.prune.threshold_mask(np.ones(3), "a"), TypeError, "threshold must be a number"),
    (lambda: hw.prune.threshold_mask(np.ones(3), math.nan), ValueError, "threshold"),
    (lambda: hw.prune.global_magnitude_masks(np.ones((3, 3)), 0.5), TypeError, "ws must be a sequence"),
    (lambda: hw.prune.sparsity(None), TypeError, "mask must be a numeric array"),
    (lambda: hw.prune.ConstantSchedule(0.5, frequency=0.5)(3), TypeError, "frequency must be an int"),
    (lambda: hw.prune.ConstantSchedule(2.0)(3), ValueError, r"sparsity must be a number in \[0.0, 1.0\]"),
    (lambda: hw.prune.ConstantSchedule(0.5)(None), TypeError, "step must be an int"),
    (lambda: hw.prune.PolynomialDecay(0.0, 0.5, 0, None)(3), TypeError, "end_step must be an int"),
    (lambda: hw.prune.PolynomialDecay(0.0, 0.5, 0, 10, power=math.inf)(3), ValueError, "power"),
    (lambda: hw.prune.ExponentialThresholdDecay(0.1, 0.0)(3), ValueError, r"decay must be a number in \(0.0"),
    (lambda: hw.prune.ScoreAccumulator("x").update(np.ones(2)), ValueError, "method must be one of"),
    (lambda: hw.prune.MeanThreshold(factor="a").mask(np.ones(3)), TypeError, "factor"),
    (lambda: hw.prune.TargetSparsity(math.nan).mask(np.ones(3)), ValueError, "sparsity"),
    # sparse
    (lambda: hw.sparse.NMMatrix.from_dense(np.zeros((4, 8), np.float32), n=-1, m=4), ValueError, r"n must be in \[0, 4\]"),
    (lambda: hw.sparse.BSRMatrix.from_dense(np.zeros((4, 8), np.float32), block=(1, 2**40)), ValueError, r"block\[1\]"),
    (lambda: hw.sparse.BSRMatrix.from_dense(np.zeros((4, 8), np.float32), dtype=object()), TypeError, "dtype"),
    (lambda: hw.sparse.BSRMatrix.from_dense(np.zeros((4, 8), np.int8), dtype="int8", scale=-1.0), ValueError, "scale"),
    (lambda: hw.sparse.CSRMatrix.from_dense(np.eye(4, dtype=np.float32)).matmul(np.ones((1, 4)), relu=None),
     TypeError, "relu must be a bool"),
    (lambda: hw.sparse.would_speed_up("a:b", 0.5, 1), ValueError, "pattern"),
    (lambda: hw.sparse.would_speed_up("unstructured", 2.0, 1), ValueError, "sparsity"),
    (lambda: hw.sparse.would_speed_up("unstructured", 0.5, 1, shape=(2**40, 4)), ValueError, r"shape\[0\]"),
    # gemm
    (lambda: hw.Int8Linear.from_float(np.ones((2, 3)), per_channel=np.ones(2)), TypeError, "per_channel must be a bool"),
    (lambda: hw.Int8Linear.from_float(np.ones((2, 0))), ValueError, "at least one input column"),
    (lambda: hw.pack_int8(np.ones((2, 2), np.int8), [[1, 2], [3]]), TypeError, "zero_point"),
    # losses
    (lambda: hw.losses.softmax(None), TypeError, "z must be a numeric"),
    (lambda: hw.losses.softmax(np.ones(3), axis=2**63), ValueError, "axis=9223372036854775808 is out of range"),
    (lambda: hw.losses.softmax(np.ones((2, 0))), ValueError, "no entries along axis 1"),
    (lambda: hw.losses.log_softmax(np.array(1.0)), ValueError, "at least 1 dimension"),
    (lambda: hw.losses.softmax(np.ones(3, bool)), TypeError, "not bool"),
    (lambda: hw.losses.mse_loss(np.ones(3, bool), np.ones(3)), TypeError, "pred"),
    (lambda: hw.losses.cross_entropy("a", [0]), TypeError, "logits"),
    (lambda: hw.losses.DistillationLoss(temperature=0.0), ValueError, "temperature"),
    (lambda: hw.losses.DistillationLoss(alpha="x"), TypeError, "alpha"),
    (lambda: hw.losses.DistillationLoss(hard_loss="mse"), TypeError, "hard_loss must be a Loss"),
    # optim
    (lambda: hw.optim.SGD(hw.nn.mlp([2, 2], rng=0), lr="a"), TypeError, "lr must be a number"),
    (lambda: hw.optim.SGD(hw.nn.mlp([2, 2], rng=0), nesterov="yes"), TypeError, "nesterov must be a bool"),
    (lambda: hw.optim.Adam(hw.nn.mlp([2, 2], rng=0), betas=0.9), TypeError, "betas must be a pair"),
    (lambda: hw.optim.Adam(hw.nn.mlp([2, 2], rng=0), betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    (lambda: hw.optim.SGD(np.ones(3)), TypeError, "params must be a Module or an iterable"),
    (lambda: hw.optim.StepLR(hw.optim.SGD(hw.nn.mlp([2, 2], rng=0)), "a"), TypeError, "step_size must be an int"),
    (lambda: hw.optim.CosineAnnealingLR(hw.optim.SGD(hw.nn.mlp([2, 2], rng=0)), 10).lr_at(-1), ValueError, "epoch"),
    # constraints
    (lambda: hw.constraints.WeightClip("a"), TypeError, "c must be a number"),
    (lambda: hw.constraints.MaxNorm(math.inf), ValueError, "max_norm"),
    (lambda: hw.constraints.L1(-1.0), ValueError, "strength"),
    (lambda: hw.constraints.WeightFakeQuant(4.0), TypeError, "bits must be an int"),
    (lambda: hw.constraints.WeightFakeQuant(9), ValueError, r"bits must be in \[2, 8\]"),
    (lambda: hw.constraints.WeightFakeQuant(4).qparams(None), TypeError, "w must be a numeric array"),
    (lambda: hw.constraints.QAT(averaging_constant=0.0), ValueError, "averaging_constant"),
    (lambda: hw.constraints.GradualPruning(0.5, end_step=10.5), TypeError, "end_step must be an int"),
    (lambda: hw.constraints.fake_quantize(np.ones(3), 0.1, 1.5), ValueError, "zero_point must hold integers"),
    (lambda: hw.constraints.magnitude_mask(np.ones(3), np.ones(2)), TypeError, "amount must be a number"),
    # train, data, analysis
    (lambda: hw.fit(hw.nn.mlp([4, 3], rng=0), np.ones((4, 4), np.float32), np.zeros(4, int), epochs=-math.inf,
                    verbose=False), TypeError, "epochs must be an int; got float -inf"),
    (lambda: hw.fit(hw.nn.mlp([4, 3], rng=0), np.ones((4, 4), np.float32), np.zeros(4, int), batch_size=0,
                    verbose=False), ValueError, "batch_size must be >= 1"),
    (lambda: hw.fit(hw.nn.mlp([4, 3], rng=0), 3.0, np.zeros(4, int), verbose=False), ValueError, "X must have"),
    (lambda: hw.train.predict(hw.nn.mlp([4, 3], rng=0), np.ones((2, 4)), batch_size=0), ValueError, "batch_size"),
    (lambda: hw.data.make_classification(10, n_classes=2.5), TypeError, "n_classes must be an int"),
    (lambda: hw.data.make_regression(10, noise=-1.0), ValueError, "noise"),
    (lambda: hw.data.make_regression(10, n_features=2, coef=[1, 2, 3]), ValueError, "coef"),
    (lambda: hw.analysis.sensitivity(hw.nn.mlp([4, 3], rng=0), np.ones((4, 4)), np.zeros(4, int), amounts=0.5),
     TypeError, "amounts must be a sequence"),
    (lambda: hw.analysis.sensitivity(hw.nn.mlp([4, 3], rng=0), np.ones((4, 4)), np.zeros(4, int), bits=(1,)),
     ValueError, r"bits\[\]"),
    # nn constructors
    (lambda: hw.nn.Dropout("x"), TypeError, "p must be a number"),
    (lambda: hw.nn.Dropout(1.0), ValueError, r"p must be a number in \[0.0, 1.0\)"),
    (lambda: hw.nn.BatchNorm1d(3, eps=None), TypeError, "eps must be a number"),
    (lambda: hw.nn.BatchNorm1d(3, momentum=2.0), ValueError, "momentum"),
    (lambda: hw.nn.BatchNorm2d(2, affine=np.ones(2)), TypeError, "affine must be a bool"),
    (lambda: hw.nn.Linear(3, 2, bias=np.ones(2)), TypeError, "bias must be a bool"),
    (lambda: hw.nn.Linear(2**40, 2), ValueError, "in_features must be a positive int"),
    (lambda: hw.nn.Conv2d(1, 1, 10**30), ValueError, "kernel_size"),
    (lambda: hw.nn.mlp(3.0), TypeError, "sizes must be a sequence of ints"),
    (lambda: hw.nn.mlp([4, 3], rng=-1), ValueError, "rng must be None, a non-negative int seed"),
    (lambda: hw.nn.small_cnn(channels=3), TypeError, "channels must be a pair"),
    (lambda: hw.nn.mlp([4, 3]).train(np.ones(2)), TypeError, "mode must be a bool"),
])
def test_bad_arguments_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_all_zero_weight_is_an_infinite_speedup_not_a_division_by_zero():
    c = hw.sparse.choose(np.zeros((64, 64), np.float32), batch=1, dtypes=("float32",))
    assert c.speedup > 0
    assert isinstance(hw.sparse.would_speed_up("unstructured", 1.0, 1, shape=(64, 64), dtypes=("float32",)), bool)


def test_huge_broadcast_views_fail_fast_with_memory_error():
    huge = np.broadcast_to(np.ones(1, bool), (1 << 21, 1 << 21))  # 2**42 elements, no memory
    for call in (lambda: hw.prune.sparsity(huge), lambda: hw.losses.softmax(huge.astype(np.float32, copy=False)),
                 lambda: hw.quantize(np.ones(3, np.float32), 1.0, np.broadcast_to(np.int32(0), (1 << 21, 1 << 21)))):
        with pytest.raises(MemoryError):
            call()


# ------------------------------------------------------------------------- the helpers themselves

def test_check_int():
    assert V.check_int(np.int64(3), "k", 0, 3) == 3 and type(V.check_int(np.int64(3), "k")) is int
    for bad, exc in ((True, TypeError), (2.0, TypeError), ("2", TypeError), (None, TypeError), (-1, ValueError),
                     (4, ValueError)):
        with pytest.raises(exc, match="k"):
            V.check_int(bad, "k", 0, 3)
    with pytest.raises(ValueError, match="k must be >= 1; got 0"):
        V.check_int(0, "k", 1)
    with pytest.raises(ValueError, match="k must be <= 1; got 2"):
        V.check_int(2, "k", None, 1)


def test_check_float():
    assert V.check_float(np.float32(0.5), "p", 0, 1) == 0.5
    assert V.check_float(np.array(0.25), "p") == 0.25
    assert V.check_float(math.inf, "t", 0.0, finite=False) == math.inf
    assert V.check_float(10**400, "t", finite=False) == math.inf
    for bad, exc in ((True, TypeError), ("a", TypeError), (None, TypeError), (np.ones(2), TypeError),
                     (math.nan, ValueError), (math.inf, ValueError), (-0.1, ValueError), (1.0, ValueError)):
        with pytest.raises(exc, match="p"):
            V.check_float(bad, "p", 0.0, 1.0, hi_open=True)
    with pytest.raises(ValueError, match=r"must be a number in \(0.0, inf\]; got 0"):
        V.check_float(0, "x", 0.0, lo_open=True)
    with pytest.raises(ValueError, match="must be a number; got nan"):
        V.check_float(math.nan, "x", finite=False)


def test_check_choice_and_bool_and_array():
    assert V.check_choice("a", "m", ("a", "b")) == "a"
    for bad in ("c", 1, None, np.array(["a", "b"]), ["a"]):
        with pytest.raises(ValueError, match="m must be one of 'a', 'b'"):
            V.check_choice(bad, "m", ("a", "b"))
    assert V.check_bool(np.bool_(True), "f") is True
    with pytest.raises(TypeError, match="f must be a bool; got int 1"):
        V.check_bool(1, "f")
    a = V.check_array([[1, 2]], "x", ndim=2)
    assert a.shape == (1, 2)
    assert V.check_array(np.float32(2), "x").shape == ()
    f = np.ones((3, 4), order="F")
    assert V.check_array(f, "x").flags.c_contiguous
    with pytest.raises(TypeError, match="x must be array-like"):
        V.check_array([[1, 2], [3]], "x")
    with pytest.raises(ValueError, match="x must not be empty"):
        V.check_array(np.zeros(0), "x", nonempty=True)
    with pytest.raises(ValueError, match="x must be finite"):
        V.check_array([1.0, math.inf], "x", finite=True)
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        V.check_array([1, 2], "x", float_only=True)
    assert "shape (10,)" in V._show(np.zeros(10)) and "\n" not in V._show(np.zeros((3, 3)))
