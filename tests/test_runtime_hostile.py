"""Runtime files that pass every checksum but lie: each is refused at load with FormatError, fast,
before anything is sized by the lie (the hardening issue's findings, reproduced)."""

import copy
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import hwreg_rs as hw
from hwreg_rs import io, runtime


def _cnn():
    return runtime.convert(hw.nn.small_cnn(rng=0).eval(), input_shape=(1, 8, 8))


def _sparse_mlp():
    net = hw.nn.mlp([16, 32, 4], rng=0).eval()
    w = net[0].weight.data
    w[hw.prune.block_mask(w, 0.9, block=(1, 8)) == 0] = 0
    return runtime.convert(net, input_shape=(16,), sparse="always")


def _refused(tmp_path, rt, edit, match):
    arrays, meta = rt._to_arrays()
    arrays = dict(arrays)
    meta = copy.deepcopy(meta)
    edit(arrays, meta)
    path = tmp_path / "hostile.hwreg"
    io.save(path, arrays, meta)  # fresh, valid checksums
    t0 = time.perf_counter()
    with pytest.raises(io.FormatError, match=match):
        runtime.load(path)
    assert time.perf_counter() - t0 < 0.5


def _node(meta, kind):
    return next(n for n in meta["graph"]["nodes"] if n["spec"]["op"] == kind)


def test_huge_conv_padding_is_refused_at_load(tmp_path):
    for pad in (100000, 2**62):
        _refused(tmp_path, _cnn(), lambda a, m: _node(m, "conv2d")["spec"].update(padding=[pad, pad]), "padding")


def test_sparse_dims_are_checked_before_allocating(tmp_path):
    rt = _sparse_mlp()
    assert any(op.kind == "sparse_linear" for op in rt.ops)
    _refused(tmp_path, rt, lambda a, m: _node(m, "sparse_linear")["spec"].update(out=2**20, **{"in": 2**20}),
             "exceeds the bound")
    _refused(tmp_path, rt, lambda a, m: _node(m, "sparse_linear")["spec"].update(out=33), "mask_bits")
    _refused(tmp_path, rt, lambda a, m: _node(m, "sparse_linear")["spec"].update(path="teleport"), "path")


def test_semantically_wrong_files_are_refused(tmp_path):
    rt = _cnn()

    def more_columns(a, m):  # the Linear after Flatten takes more columns than the conv gives
        node = next(n for n in m["graph"]["nodes"] if n["spec"]["op"] == "linear")
        key = node["arrays"]["weight_q"]
        a[key] = np.concatenate([a[key], np.zeros((a[key].shape[0], 28), np.int8)], axis=1)

    _refused(tmp_path, rt, more_columns, r"linear expects inputs \(\.\.\., 540\); got shape \(1, 512\)")
    _refused(tmp_path, rt, lambda a, m: _node(m, "conv2d")["spec"].update(relu="no"), "'relu' must be true or false")
    _refused(tmp_path, rt, lambda a, m: _node(m, "conv2d")["spec"].update(in_channels=-1), "in_channels")
    _refused(tmp_path, rt, lambda a, m: _node(m, "conv2d")["spec"].update(stride=[0, 1]), "stride")
    _refused(tmp_path, rt, lambda a, m: m.update(input_shape=["16"]), "input_shape")

    def relabel(a, m):  # int8 weights relabelled as uint8: -3 would read as 253
        key = _node(m, "conv2d")["arrays"]["weight_q"]
        a[key] = a[key].view(np.uint8)

    _refused(tmp_path, rt, relabel, "dtype int8")

    def negative_scale(a, m):
        key = _node(m, "conv2d")["arrays"]["weight_scale"]
        a[key] = -a[key]

    _refused(tmp_path, rt, negative_scale, "positive")
    _refused(tmp_path, rt, lambda a, m: a.update({"stray": np.zeros(3, np.float32)}), "belong to no node")
    _refused(tmp_path, rt, lambda a, m: m.update(meta=[1, 2]), "'meta' must be a JSON object")
    _refused(tmp_path, rt, lambda a, m: m["graph"]["nodes"][1].update(name=m["graph"]["nodes"][0]["name"]), "unique")


def test_malformed_containers_are_format_errors(tmp_path):
    rt = _cnn()
    good = tmp_path / "good.hwreg"
    rt.save(good)
    data = good.read_bytes()
    header = struct.Struct("<8sHHIQQI28x")
    magic, major, minor, flags, jlen, doff, _ = header.unpack_from(data, 0)
    doc = json.loads(data[64:64 + jlen])

    def write(doc_obj, tail=b""):
        # Re-lay the file by hand so only the description changes; the header checksum is recomputed.
        import zlib
        body = json.dumps(doc_obj, separators=(",", ":")).encode() if not isinstance(doc_obj, bytes) else doc_obj
        start = (64 + len(body) + 63) // 64 * 64
        if start > doff:
            pytest.skip("the edited description does not fit before the data")
        head = header.pack(magic, major, minor, flags, len(body), doff, 0)
        crc = zlib.crc32(body, zlib.crc32(head))
        head = header.pack(magic, major, minor, flags, len(body), doff, crc)
        p = tmp_path / "bad.hwreg"
        p.write_bytes(head + body + b"\0" * (doff - 64 - len(body)) + data[doff:] + tail)
        return p

    cases = {
        "deep JSON": b"[" * 100000 + b"]" * 100000,
        "meta a list": {"meta": [], "arrays": doc["arrays"]},
        "missing crc32": {"meta": doc["meta"], "arrays": [{k: v for k, v in doc["arrays"][0].items() if k != "crc32"}]
                          + doc["arrays"][1:]},
        "shape 2**64": {"meta": doc["meta"], "arrays": [{**doc["arrays"][0], "shape": [2**64]}] + doc["arrays"][1:]},
        "duplicate names": {"meta": doc["meta"], "arrays": doc["arrays"][:-1] + doc["arrays"][:1]},
    }
    for what, d in cases.items():
        if what == "deep JSON":
            doff_big = (64 + len(d) + 63) // 64 * 64
            p = tmp_path / "deep.hwreg"
            import zlib
            head = header.pack(magic, major, minor, flags, len(d), doff_big, 0)
            head = header.pack(magic, major, minor, flags, len(d), doff_big, zlib.crc32(d, zlib.crc32(head)))
            p.write_bytes(head + d + b"\0" * (doff_big - 64 - len(d)))
        else:
            p = write(d)
        with pytest.raises(io.FormatError):
            runtime.load(p)
    with pytest.raises(io.FormatError, match="after the last array"):
        runtime.load(write(doc, tail=b"\0" * 64))


def test_rewriting_the_file_after_load_cannot_crash_the_model(tmp_path):
    # The model keeps copies, not views into the file: truncating or overwriting it (the usual
    # `cp new.hwreg live.hwreg` update) must not SIGBUS the next predict. In a subprocess, since a
    # failure would kill the interpreter.
    _cnn().save(tmp_path / "live.hwreg")
    code = f"""
import numpy as np, hwreg_rs as hw
rt = hw.runtime.load({str(tmp_path / 'live.hwreg')!r})
x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
y0 = rt.predict(x)
open({str(tmp_path / 'live.hwreg')!r}, 'r+b').truncate(100)
y1 = rt.predict(x)
open({str(tmp_path / 'live.hwreg')!r}, 'wb').write(b'x' * 10)
assert np.array_equal(y0, rt.predict(x)) and np.array_equal(y0, y1)
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HWREG_NUM_THREADS": "1"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_small_hostile_file_is_refused_fast(tmp_path):
    rt = runtime.convert(hw.nn.mlp([4, 3], rng=0).eval(), input_shape=(4,))
    arrays, meta = rt._to_arrays()
    meta["graph"]["nodes"][0]["spec"] = {"op": "sparse_linear", "path": "csr_int8", "block": None, "relu": False,
                                         "in": 2**16, "out": 2**16}
    p = tmp_path / "tiny.hwreg"
    size = io.save(p, arrays, meta)
    assert size < 2048
    t0 = time.perf_counter()
    with pytest.raises(io.FormatError):
        runtime.load(p)
    assert time.perf_counter() - t0 < 0.01 + 0.05  # the 10 ms target, with slack for a loaded CI machine
