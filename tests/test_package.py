import os
import subprocess
import sys

import pytest

import hwreg_rs


def test_version_and_isas():
    assert hwreg_rs.__version__
    isas = hwreg_rs.supported_isas()
    assert isas[0] == "generic"
    assert hwreg_rs.active_isa() in isas
    assert hwreg_rs.num_threads() >= 1


def test_set_isa_rejects_unknown():
    with pytest.raises(ValueError, match="unknown ISA"):
        hwreg_rs._native._set_isa("sse9")


def test_env_pins_isa_and_threads():
    code = "import hwreg_rs; print(hwreg_rs.active_isa(), hwreg_rs.num_threads())"
    env = dict(os.environ, HWREG_FORCE_ISA="generic", HWREG_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["generic", "3"]


def _build_backend(monkeypatch, env_args=""):
    """The package's PEP 517 backend over a stand-in maturin that records what it is asked."""
    import importlib.util
    import types
    from pathlib import Path

    calls = []
    fake = types.ModuleType("maturin")

    def pep517_args(config_settings=None):  # maturin's rule: config settings win over the variable
        if config_settings and "maturin.build-args" in config_settings:
            return list(config_settings["maturin.build-args"])
        return env_args.split()

    fake.get_maturin_pep517_args = pep517_args
    fake.build_wheel = lambda d, cs=None, md=None: calls.append(pep517_args(cs)) or "w.whl"
    for name in ("build_sdist", "build_editable", "get_requires_for_build_wheel", "get_requires_for_build_sdist",
                 "prepare_metadata_for_build_wheel"):
        setattr(fake, name, lambda *a, **k: None)
    monkeypatch.setitem(sys.modules, "maturin", fake)
    path = Path(__file__).resolve().parents[1] / "build_backend" / "hwreg_build.py"
    spec = importlib.util.spec_from_file_location("hwreg_build", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, calls


def test_build_backend_tags_wheels_for_pypi(monkeypatch):
    mod, calls = _build_backend(monkeypatch)
    assert mod.build_wheel("dist") == "w.whl"
    assert calls == [["--compatibility", "pypi"]]


def test_build_backend_keeps_the_callers_tag_and_arguments(monkeypatch):
    mod, calls = _build_backend(monkeypatch, env_args="--zig --compatibility manylinux_2_28")
    mod.build_wheel("dist")
    mod.build_wheel("dist", {"maturin.build-args": ["--features", "x"]})
    assert calls == [["--zig", "--compatibility", "manylinux_2_28"], ["--features", "x", "--compatibility", "pypi"]]
