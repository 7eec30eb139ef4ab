import os
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from hwreg_rs import io

DTYPES = [np.int8, np.uint8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]


@given(arrays=st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))),
    max_size=4))
def test_round_trip(tmp_path_factory, arrays):
    p = tmp_path_factory.mktemp("io") / "m.hwreg"
    meta = {"layers": [{"kind": "linear", "relu": True}], "note": "ü"}
    size = io.save(p, arrays, meta)
    assert size == os.path.getsize(p)
    got, got_meta = io.load(p)
    assert got_meta == meta
    assert set(got) == set(arrays)
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype.newbyteorder("<") and got[k].shape == a.shape
        np.testing.assert_array_equal(got[k], a)
        assert not got[k].flags.writeable
        if got[k].nbytes:
            assert got[k].ctypes.data % io.ALIGN == 0


def test_big_endian_and_strided_inputs(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    io.save(tmp_path / "m.hwreg", {"a": a})
    got, _ = io.load(tmp_path / "m.hwreg", use_mmap=False)
    np.testing.assert_array_equal(got["a"], a)


@pytest.fixture
def saved(tmp_path):
    p = tmp_path / "m.hwreg"
    io.save(p, {"w": np.arange(1000, dtype=np.float32)}, {"k": 1})
    return p


def test_refuses_foreign_file(tmp_path):
    p = tmp_path / "x.hwreg"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(io.FormatError, match="not a .hwreg file"):
        io.load(p)
    p.write_bytes(b"abc")
    with pytest.raises(io.FormatError, match="too short"):
        io.load(p)


def test_refuses_truncated(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[:-100])
    with pytest.raises(io.FormatError, match="outside the file"):
        io.load(saved)


@pytest.mark.parametrize("where", ["json", "data"])
def test_refuses_corrupt(saved, where):
    data = bytearray(saved.read_bytes())
    pos = 70 if where == "json" else len(data) - 200
    data[pos] ^= 0x20
    saved.write_bytes(bytes(data))
    with pytest.raises(io.FormatError, match="checksum"):
        io.load(saved)


def test_refuses_newer_major_version(saved):
    data = bytearray(saved.read_bytes())
    struct.pack_into("<H", data, 8, io.VERSION[0] + 1)
    saved.write_bytes(bytes(data))
    with pytest.raises(io.FormatError, match="version"):
        io.load(saved)


def test_rejects_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="dtype"):
        io.save(tmp_path / "m", {"s": np.array(["a"])})
    with pytest.raises(TypeError, match="numpy.ndarray"):
        io.save(tmp_path / "m", {"s": [1, 2]})
