"""The command line behaves like a well-mannered Unix tool.

``--version``; help texts with units, defaults and choices; ``--json`` on
every command; exit status 0 ok, 1 budget missed or runtime error (one line on
stderr), 2 usage error; a closed pipe ends quietly; ``--verbose`` progress
through the ``logging`` logger ``"hwreg_rs"``; ``predict`` over several files.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hwreg_rs as hw
from hwreg_rs import cli

COMMANDS = ["demo", "bench", "profile", "convert", "compress", "export", "predict"]
ROOT = Path(__file__).resolve().parents[1]


def _run(*argv, **kw):
    """``python -m hwreg_rs ARGV`` in a subprocess (the real entry point, real stdout)."""
    return subprocess.run([sys.executable, "-m", "hwreg_rs", *argv], capture_output=True, text=True, timeout=120,
                          **kw)


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small trained MLP as a state dict and a runtime file, its data, and two input batches."""
    d = tmp_path_factory.mktemp("cli")
    X, y = hw.data.make_classification(300, n_features=16, n_classes=3, seed=1)
    net = hw.nn.mlp([16, 32, 3], rng=0)
    hw.fit(net, X[:200], y[:200], epochs=5, lr=0.01, verbose=False)
    np.savez(d / "model.npz", **net.state_dict())
    np.savez(d / "data.npz", X_train=X[:200], y_train=y[:200], X_test=X[200:], y_test=y[200:])
    rt = hw.runtime.convert(net.eval(), input_shape=(16,))
    rt.save(d / "m.hwreg")
    np.save(d / "a.npy", X[:4].astype(np.float32))
    np.save(d / "b.npy", X[4:7].astype(np.float32))
    return d, rt


# ------------------------------------------------------------ version and help

def test_version():
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"hwreg-rs {hw.__version__}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_documents_exit_status(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"] if command else ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "exit status" in out
    assert re.search(r"^\s+1\s+a budget was missed", out, re.M) and re.search(r"^\s+2\s+usage error", out, re.M)
    if command:
        assert "--json" in out and "--verbose" in out


def _help(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # unwrap argparse's line breaks


def test_help_names_units_defaults_and_choices(capsys):
    text = _help("compress", capsys)
    assert "microseconds (µs)" in text and "takes seconds" in text  # the library's compress() takes seconds
    assert "size budget in bytes" in text and "(default: 0.01 = 1 point)" in text and "(default: host)" in text
    for name in hw.profiles.PRESETS:
        assert name in text
    text = _help("bench", capsys)
    for suite in hw.benchmarks.SUITES:
        assert suite in text
    text = _help("profile", capsys)
    for name in hw.profiles.PRESETS:
        assert name in text
    assert "(default: 0.25)" in _help("demo", capsys)


def test_every_command_takes_json_and_verbose():
    parser = cli.build_parser()
    required = {"demo": [], "bench": [], "profile": [], "convert": ["m.onnx", "-o", "x"],
                "compress": ["m.onnx", "d.npz", "-o", "x"], "export": ["m.hwreg", "-o", "x"],
                "predict": ["m.hwreg", "x.npy"]}
    assert sorted(required) == sorted(COMMANDS)
    for command, rest in required.items():
        args = parser.parse_args([command, *rest, "--json", "--verbose"])
        assert args.json and args.verbose
        assert not parser.parse_args([command, *rest]).verbose
    assert parser.parse_args(["-v", "bench"]).verbose  # before the command too


# ------------------------------------------------------------------ bench --json

def test_bench_json(capsys):
    assert cli.main(["bench", "--quick", "--suite", "quant", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hwreg_rs"] == hw.__version__ and out["quick"] is True and list(out["suites"]) == ["quant"]
    quant = out["suites"]["quant"]
    assert quant["title"].startswith("quant:") and quant["markdown"].startswith("## quant")
    (table,) = quant["tables"]
    assert table["columns"][:2] == ["op", "params"]
    assert table["rows"] and all(len(r) == len(table["columns"]) for r in table["rows"])
    assert table["rows"][0][0] == "quantize int8"


# -------------------------------------------------------------------- pipes

def test_closed_pipe_ends_quietly():
    r, w = os.pipe()
    os.close(r)  # nobody will read: the first write fails with EPIPE
    try:
        p = subprocess.run([sys.executable, "-m", "hwreg_rs", "profile", "cortex-m7"], stdout=w,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 0 and p.stderr == ""


def test_bench_into_head():
    cmd = f"set -o pipefail; '{sys.executable}' -m hwreg_rs bench --quick --suite quant | head -1"
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert p.stdout.startswith(f"hwreg_rs {hw.__version__} | ISA") and p.stdout.count("\n") == 1


# -------------------------------------------------------------- exit status

def test_usage_errors_exit_2(files, capsys):
    d, _ = files
    err = _usage_error(["compress", str(d / "model.npz"), str(d / "data.npz"), "--arch", "mlp:16,32,3",
                        "--latency-budget-us", "-5", "-o", str(d / "o.hwreg")], capsys)
    assert "argument --latency-budget-us: must be > 0 (microseconds, µs); got -5" in err
    assert "e-06" not in err and not re.search(r"\bseconds", err)  # was "-4.9999999999999996e-06 seconds"
    assert "argument --size-budget" in _usage_error(["compress", "m.npz", "d.npz", "--size-budget", "0", "-o", "x"],
                                                    capsys)
    assert "argument --max-drop" in _usage_error(["compress", "m.npz", "d.npz", "--max-drop", "5", "-o", "x"],
                                                 capsys)
    assert "argument --input-shape" in _usage_error(["convert", "m.onnx", "--input-shape", "1,x", "-o", "x"],
                                                    capsys)
    assert "needs --arch" in _usage_error(["compress", str(d / "model.npz"), str(d / "data.npz"), "-o", "x"],
                                          capsys)
    assert "invalid choice: 'nope'" in _usage_error(["bench", "--suite", "nope"], capsys)
    assert "cortex-m7" in _usage_error(["profile", "no-such-preset"], capsys)
    assert "cortex-m7" in _usage_error(["compress", "m.npz", "d.npz", "--profile", "nope", "-o", "x"], capsys)
    assert "no file matches" in _usage_error(["predict", str(d / "m.hwreg"), str(d / "none*.npy")], capsys)
    assert "unrecognized arguments" in _usage_error(["predict", str(d / "m.hwreg"), "x.npy", "--bogus"], capsys)


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err
    return err


@pytest.mark.parametrize("arch, words", [
    ("mlp:16,32,32,3", ["missing keys", "'4.weight'"]),  # a layer more than the file has
    ("mlp:16,64,3", ["shape mismatch"]),                   # other widths
    ("cnn", ["missing keys", "unexpected keys"]),
])
def test_mismatched_state_dict_is_one_line(files, capsys, arch, words):
    d, _ = files
    rc = cli.main(["compress", str(d / "model.npz"), str(d / "data.npz"), "--arch", arch, "-o", str(d / "o.hwreg")])
    assert rc == 1
    _one_line_error(capsys, "hwreg-rs compress: error:", f"does not match --arch {arch}", *words)


def test_runtime_errors_exit_1(files, capsys):
    d, _ = files
    assert cli.main(["predict", str(d / "missing.hwreg"), str(d / "a.npy")]) == 1
    _one_line_error(capsys, "hwreg-rs predict: error:", "missing.hwreg")
    assert cli.main(["compress", str(d / "model.npz"), str(d / "model.npz"), "--arch", "mlp:16,32,3",
                     "-o", str(d / "o.hwreg")]) == 1
    _one_line_error(capsys, "lacks arrays")
    np.save(d / "wrong.npy", np.zeros((2, 5), np.float32))  # the model takes 16 features
    assert cli.main(["predict", str(d / "m.hwreg"), str(d / "wrong.npy")]) == 1
    _one_line_error(capsys, "hwreg-rs predict: error:")


def test_corrupt_file_in_a_subprocess(tmp_path):
    (tmp_path / "bad.hwreg").write_bytes(b"HWREG\0RT" + b"\xff" * 120)
    np.save(tmp_path / "x.npy", np.zeros((1, 16), np.float32))
    r = _run("predict", str(tmp_path / "bad.hwreg"), str(tmp_path / "x.npy"))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("hwreg-rs predict: error:") and r.stderr.count("\n") == 1


@pytest.mark.parametrize("as_json", [False, True])
def test_missed_budget_still_writes_and_says_so(files, capsys, as_json):
    d, _ = files
    out = d / f"missed{as_json}.hwreg"
    rc = cli.main(["compress", str(d / "model.npz"), str(d / "data.npz"), "--arch", "mlp:16,32,3",
                   "--profile", "x86-avx512-vnni", "--latency-budget-us", "0.001", "-o", str(out)]
                  + (["--json"] if as_json else []))
    assert rc == 1
    cap = capsys.readouterr()
    assert f"budget missed; model written anyway to {out}" in cap.err
    if as_json:
        assert json.loads(cap.out)["report"]["met"] is False
    else:
        assert "runtime model saved" not in cap.out
    assert hw.runtime.load(out).predict(np.zeros((1, 16), np.float32)).shape == (1, 3)


# ------------------------------------------------------------------ predict

def test_predict_several_files_beside_each(files, capsys):
    d, rt = files
    assert cli.main(["predict", str(d / "m.hwreg"), str(d / "a.npy"), str(d / "b.npy")]) == 0
    for name in "ab":
        np.testing.assert_array_equal(np.load(d / f"{name}.out.npy"), rt.predict(np.load(d / f"{name}.npy")))
    assert capsys.readouterr().out.count("\n") == 2


def test_predict_glob_into_a_folder(files, capsys):
    d, rt = files
    (d / "a.out.npy").write_bytes(b"")  # an earlier output the pattern must skip (it is not even an array)
    out = d / "preds"
    assert cli.main(["predict", str(d / "m.hwreg"), str(d / "[ab]*.npy"), "-o", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [Path(r["input"]).name for r in res["outputs"]] == ["a.npy", "b.npy"]
    assert sorted(p.name for p in out.iterdir()) == ["a.out.npy", "b.out.npy"]
    assert [r["shape"] for r in res["outputs"]] == [[4, 3], [3, 3]]
    np.testing.assert_array_equal(np.load(out / "b.out.npy"), rt.predict(np.load(d / "b.npy")))


def test_predict_one_file_into_an_existing_folder(files, capsys):
    d, _ = files
    (d / "into").mkdir()
    assert cli.main(["predict", str(d / "m.hwreg"), str(d / "a.npy"), "-o", str(d / "into")]) == 0
    assert (d / "into" / "a.out.npy").exists()


def test_predict_several_inputs_need_a_folder(files, capsys):
    d, _ = files
    (d / "file.npy").write_bytes(b"")
    err = _usage_error(["predict", str(d / "m.hwreg"), str(d / "a.npy"), str(d / "b.npy"), "-o",
                        str(d / "file.npy")], capsys)
    assert "several inputs need -o DIR" in err


# ------------------------------------------------------------------ verbose

def test_verbose_logs_progress_on_stderr(files, capsys, caplog):
    d, _ = files
    argv = ["predict", str(d / "m.hwreg"), str(d / "a.npy"), "-o", str(d / "v.npy"), "--json"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().err == ""
    with caplog.at_level("INFO", logger="hwreg_rs"):
        assert cli.main([*argv, "--verbose"]) == 0
    cap = capsys.readouterr()
    json.loads(cap.out)  # progress never mixes into the JSON on stdout
    assert "hwreg-rs: loading" in cap.err
    assert any(r.name == "hwreg_rs" and "loading" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ README

def test_readme_documents_exit_status():
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "Exit status" in text
    for status in ("`0`", "`1`", "`2`"):
        assert status in text
