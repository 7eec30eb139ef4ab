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
    "hw.nn.functional.im2col(np.zeros((1, 1, 4, 4), np.float32), (1, 1), (1, 1), (2**62, 1))",
    "hw.nn.functional.im2col(np.zeros((1, 1, 4, 4), np.float32), (1, 1), (1, 1), (2**22, 2**22))",
    # One output pixel, 2**46 input pixels: the gradients' images cannot be allocated.
    "hw.nn.functional.col2im(np.zeros((1, 1), np.float32), (1, 1, 2**23, 2**23), (1, 1), (2**23, 2**23))",
    "hw.nn.functional.avg_pool2d_backward(np.zeros((1, 1, 1, 1), np.float32), (1, 1, 2**23, 2**23), (2**23, 2**23), (1, 1))",
    "hw.nn.functional.max_pool2d_backward(np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.int64), (1, 1, 2**23, 2**23), (2**23, 2**23), (1, 1))",
    "hw.nn.functional.max_pool2d(np.zeros((1, 1, 4, 4), np.float32), (3, 3), (1, 1), (2**62, 1))",
    # An empty inner dimension does not bound the batch: (2**46, 0) rows.
    "hw.matmul_integer(np.zeros((2**46, 0), np.uint8), np.zeros((0, 3), np.int8))",
    "hw.Int8Linear(np.zeros((3, 0), np.int8), np.float32(1))(np.zeros((2**46, 0), np.float32))",
]

# Empty products of absurd declared extent allocate nothing and succeed.
EMPTY = [
    "hw.matmul_integer(np.zeros((2**46, 0), np.uint8), np.zeros((0, 0), np.int8))",
    "hw.prune.nm_mask(np.zeros((0,), np.float32), n=2, m=2**31)",
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


@pytest.mark.parametrize("call", EMPTY)
def test_empty_results_of_absurd_extent_allocate_nothing(call):
    code = f"""
import numpy as np, hwreg_rs as hw
r = {call}
print("ok", np.asarray(r).size)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok 0", out.stdout
