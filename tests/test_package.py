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
