"""Sizes that come from input and cannot be allocated are a MemoryError, never an abort (the
hardening issue's findings). Each call runs in a subprocess, since an abort would kill pytest."""

import subprocess
import sys

import pytest

CASES = [
    "hw.pack_int8(np.zeros((0, 2**40), np.int8))",
    "hw.matmul_integer(np.zeros((2**20, 0), np.uint8), np.zeros((0, 2**20), np.int8))",
    "hw.nn.Conv2d(1, 1, 1, padding=200000)(np.zeros((1, 1, 4, 4), np.float32))",
    "hw.nn.functional.im2col(np.zeros((1, 1, 4, 4), np.float32), (1, 1), (1, 1), (2**31, 1))",
]


@pytest.mark.parametrize("call", CASES)
def test_impossible_allocation_is_a_memory_error(call):
    code = f"""
import numpy as np, hwreg_rs as hw
try:
    {call}
except MemoryError as e:
    print("MemoryError", e)
except ValueError as e:  # an impossible size may also be refused before allocating
    print("ValueError", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(("MemoryError", "ValueError")), out.stdout
