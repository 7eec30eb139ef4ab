import json

import numpy as np
import pytest

import hwreg_rs as hw
from hwreg_rs import cli


def test_predict_round_trip(tmp_path, capsys):
    net = hw.nn.mlp([8, 16, 3], rng=0).eval()
    rt = hw.runtime.convert(net, input_shape=(8,))
    rt.save(tmp_path / "m.hwreg")
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["predict", str(tmp_path / "m.hwreg"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"),
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == [5, 3]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), rt.predict(x))


def test_predict_refuses_corrupt_file(tmp_path, capsys):
    # A corrupt file is a runtime error (status 1, one line), not a usage error (2).
    (tmp_path / "bad.hwreg").write_bytes(b"not a model at all, just bytes" * 4)
    np.save(tmp_path / "x.npy", np.zeros((1, 8), np.float32))
    assert cli.main(["predict", str(tmp_path / "bad.hwreg"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 1
    err = capsys.readouterr().err
    assert "not a .hwreg file" in err and err.count("\n") == 1
    assert not (tmp_path / "y.npy").exists()


def test_profile_show_and_save(tmp_path, capsys):
    assert cli.main(["profile", "cortex-m7", "--json", "--save", str(tmp_path / "p.json")]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "cortex-m7"
    assert hw.profiles.HardwareProfile.load(tmp_path / "p.json") == hw.profiles.preset("cortex-m7")


def test_compress_command(tmp_path, capsys):
    X, y = hw.data.make_classification(300, n_features=16, n_classes=3, seed=1)
    net = hw.nn.mlp([16, 32, 3], rng=0)
    hw.fit(net, X[:200], y[:200], epochs=10, lr=0.01, verbose=False)
    np.savez(tmp_path / "model.npz", **net.state_dict())
    np.savez(tmp_path / "data.npz", X_train=X[:200], y_train=y[:200], X_test=X[200:], y_test=y[200:])
    rc = cli.main(["compress", str(tmp_path / "model.npz"), str(tmp_path / "data.npz"), "--arch", "mlp:16,32,3",
                   "--profile", "x86-avx512-vnni", "--max-drop", "0.05", "-o", str(tmp_path / "out.hwreg"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["report"]["met"]
    rt = hw.runtime.load(tmp_path / "out.hwreg")
    assert rt.predict(X[200:]).shape == (100, 3)


def test_bad_arch_is_reported(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["compress", "m.npz", "d.npz", "--arch", "resnet", "-o", "x"])
    assert e.value.code == 2
    assert "argument --arch" in capsys.readouterr().err


def _compress_inputs(tmp_path):
    X, y = hw.data.make_classification(300, n_features=16, n_classes=3, seed=1)
    net = hw.nn.mlp([16, 32, 3], rng=0)
    hw.fit(net, X[:200], y[:200], epochs=10, lr=0.01, verbose=False)
    np.savez(tmp_path / "model.npz", **net.state_dict())
    np.savez(tmp_path / "data.npz", X_train=X[:200], y_train=y[:200], X_test=X[200:], y_test=y[200:])
    return [str(tmp_path / "model.npz"), str(tmp_path / "data.npz"), "--arch", "mlp:16,32,3", "--profile",
            "x86-avx512-vnni", "--max-drop", "0.05", "--size-budget", "1500", "-o", str(tmp_path / "out.hwreg")]


def test_compress_plot_writes_the_candidates_front(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc = cli.main(["compress", *_compress_inputs(tmp_path), "--plot", str(tmp_path / "front.png"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc in (0, 1) and out["plot"] == str(tmp_path / "front.png") and out["report"]["candidates"]
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"


def test_compress_plot_without_matplotlib_is_one_clear_error(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["compress", *_compress_inputs(tmp_path), "--plot", str(tmp_path / "front.png")]) == 1
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and err.count("\n") == 1
    assert not (tmp_path / "front.png").exists()
