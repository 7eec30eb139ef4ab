"""The thread count from the environment (exec/config.rs): HWREG_NUM_THREADS, else
OMP_NUM_THREADS, else the cores; a malformed value is ignored (the next source is used) and
never stops the import. Each case is a fresh process, since the environment is read once."""

import os
import subprocess
import sys

import pytest

CODE = "import hwreg_rs as hw; print(hw.num_threads())"


def threads_with(**env) -> int:
    base = {k: v for k, v in os.environ.items() if k not in ("HWREG_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", CODE], env={**base, **env}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip())


@pytest.fixture(scope="module")
def cores() -> int:
    return threads_with()


def test_hwreg_wins_over_omp():
    assert threads_with(HWREG_NUM_THREADS="3", OMP_NUM_THREADS="5") == 3


def test_omp_when_hwreg_is_unset():
    assert threads_with(OMP_NUM_THREADS="5") == 5
    assert threads_with(OMP_NUM_THREADS=" 6,2") == 6  # OpenMP's nested list: the outer level


@pytest.mark.parametrize("bad", ["", "0", "-2", "four", "1e3", "2.5", "65537", "9" * 30])
def test_malformed_values_are_ignored(bad, cores):
    assert threads_with(HWREG_NUM_THREADS=bad, OMP_NUM_THREADS="5") == 5
    assert threads_with(HWREG_NUM_THREADS=bad) == cores
    assert threads_with(OMP_NUM_THREADS=bad) == cores


def test_set_num_threads_overrides_the_environment():
    code = "import hwreg_rs as hw; hw.set_num_threads(2); print(hw.num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "7"},
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "2"
