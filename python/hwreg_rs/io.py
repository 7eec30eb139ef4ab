"""The one-file container for runtime models (``.hwreg``).

A file holds named NumPy arrays and a JSON document describing the model. It
never executes code when loaded (no pickle), loads without copying (each
array is a view into one memory map), and refuses corrupt, truncated or
foreign files with :class:`FormatError`.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"HWREG\\x00RT"
    8       2     format major version (readers refuse a newer major)
    10      2     format minor version (additions a reader may ignore)
    12      4     flags (0; reserved)
    16      8     length J of the JSON document in bytes
    24      8     offset D of the data section (a multiple of 64)
    32      4     CRC-32 of bytes 0..31 with this field zeroed, then of the JSON
    36      28    zero padding (header is 64 bytes)
    64      J     JSON document, UTF-8
    ...           zero padding up to D
    D       ...   array buffers, each starting at a multiple of 64 from the file start
                  (zero padding between them; the file ends with the last buffer)

The JSON document is an object with keys ``"meta"`` (free-form, the model's
description) and ``"arrays"``: a list of ``{"name", "dtype", "shape",
"offset", "nbytes", "crc32"}`` where ``dtype`` is a NumPy little-endian type
string such as ``"<f4"`` or ``"|i1"``, ``offset`` is absolute and ``crc32``
covers the array's bytes. A C or Rust reader needs only these rules.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from typing import Any, Mapping

import numpy as np

MAGIC = b"HWREG\x00RT"
VERSION = (1, 0)
ALIGN = 64
_HEADER = struct.Struct("<8sHHIQQI28x")
_ALLOWED_DTYPES = {"|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8", "|b1"}

__all__ = ["FormatError", "save", "load", "MAGIC", "VERSION"]


class FormatError(ValueError):
    """A file that is not a valid ``.hwreg`` container (corrupt, truncated or foreign)."""


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _little_endian(a: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"array {name!r} must be a numpy.ndarray; got {type(a).__name__}")
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder not in ("|", "<") else a.dtype
    if dt.str not in _ALLOWED_DTYPES:
        raise TypeError(f"array {name!r} has dtype {a.dtype}, which the format does not store")
    return np.asarray(a, dtype=dt, order="C")


def save(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> int:
    """Write ``arrays`` and ``meta`` to ``path`` as one ``.hwreg`` file.

    Parameters
    ----------
    path : str or path-like
        Destination; written to a temporary name, then renamed, so a reader
        never sees half a file.
    arrays : mapping of str to ndarray
        Named arrays (numeric or bool dtypes).
    meta : mapping, optional
        JSON-serialisable description of the model.

    Returns
    -------
    int
        The file size in bytes.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from hwreg_rs import io
    >>> p = os.path.join(tempfile.mkdtemp(), "m.hwreg")
    >>> size = io.save(p, {"w": np.arange(6, dtype=np.int8).reshape(2, 3)}, {"kind": "demo"})
    >>> arrays, meta = io.load(p)
    >>> arrays["w"].tolist(), meta["kind"]
    ([[0, 1, 2], [3, 4, 5]], 'demo')
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping of str to ndarray; got {type(arrays).__name__}")
    for k in arrays:
        if not isinstance(k, str):
            raise TypeError(f"arrays keys must be str; got {type(k).__name__} {k!r}")
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a mapping or None; got {type(meta).__name__}")
    try:
        json.dumps(dict(meta or {}), allow_nan=False)
    except TypeError as err:
        raise TypeError(f"meta must be JSON-serialisable: {err}") from None
    except (ValueError, RecursionError) as err:  # NaN / inf, a cycle, absurd depth
        raise ValueError(f"meta must be JSON-serialisable (finite numbers, no cycles): {err}") from None
    prepared = [(str(k), _little_endian(v, str(k))) for k, v in arrays.items()]
    if len({k for k, _ in prepared}) != len(prepared):
        raise ValueError("array names must be unique")
    entries: list[dict[str, Any]] = []
    # Offsets depend on the JSON length, which depends on the offsets: lay the
    # data out after a JSON measured with generous offset placeholders.
    for k, a in prepared:
        entries.append({"name": k, "dtype": a.dtype.str, "shape": list(a.shape), "offset": 0,
                        "nbytes": int(a.nbytes), "crc32": zlib.crc32(memoryview(a).cast("B")) if a.size else 0})
    doc = {"meta": dict(meta or {}), "arrays": entries}
    # Offsets depend on the JSON's length and the JSON on the offsets: lay out
    # again until the layout is stable (offsets only grow, so this converges).
    data_offset = -1
    body = b""
    while True:
        body = json.dumps(doc, separators=(",", ":")).encode()
        start = _aligned(_HEADER.size + len(body))
        if start == data_offset:
            break
        data_offset = offset = start
        for e in entries:
            e["offset"] = offset
            offset = _aligned(offset + e["nbytes"])
    head = _HEADER.pack(MAGIC, VERSION[0], VERSION[1], 0, len(body), data_offset, 0)
    crc = zlib.crc32(body, zlib.crc32(head))
    head = _HEADER.pack(MAGIC, VERSION[0], VERSION[1], 0, len(body), data_offset, crc)
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(head)
        f.write(body)
        f.write(b"\0" * (data_offset - _HEADER.size - len(body)))
        pos = data_offset
        for e, (_, a) in zip(entries, prepared):
            f.write(b"\0" * (e["offset"] - pos))
            f.write(memoryview(a).cast("B") if a.size else b"")
            pos = e["offset"] + e["nbytes"]
        size = f.tell()
    os.replace(tmp, path)
    return size


def _entry(e: Any, i: int, path: Any) -> tuple[str, str, tuple[int, ...], int, int]:
    """One array entry of the description, every field type- and range-checked."""
    where = f"{os.fspath(path)!r}: array entry {i}"
    if not isinstance(e, dict):
        raise FormatError(f"{where} must be an object")
    for key in ("name", "dtype", "shape", "offset", "nbytes", "crc32"):
        if key not in e:
            raise FormatError(f"{where} lacks {key!r}")
    name, dtype, shape = e["name"], e["dtype"], e["shape"]
    if not isinstance(name, str) or not name:
        raise FormatError(f"{where}: 'name' must be a non-empty string; got {name!r}")
    if not isinstance(dtype, str) or dtype not in _ALLOWED_DTYPES:
        raise FormatError(f"{where} ({name!r}): unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or len(shape) > 32 or any(
            isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < 2**48 for d in shape):
        raise FormatError(f"{where} ({name!r}): 'shape' must be a list of non-negative integers; got {shape!r}")
    for key in ("offset", "nbytes", "crc32"):
        v = e[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
            raise FormatError(f"{where} ({name!r}): {key!r} must be a non-negative integer; got {v!r}")
    return name, dtype, tuple(shape), e["offset"], e["nbytes"]


def load(path: str | os.PathLike, *, verify: bool = True, use_mmap: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a ``.hwreg`` file.

    Parameters
    ----------
    path : str or path-like
        The file.
    verify : bool, default True
        Check every array's CRC-32 (the header and JSON are always checked).
    use_mmap : bool, default True
        Return read-only views into a memory map instead of reading the file.

    Returns
    -------
    arrays : dict of str to ndarray
        Read-only arrays.
    meta : dict
        The model description given to :func:`save`.

    Raises
    ------
    FormatError
        Not a ``.hwreg`` file, a newer major version, or corrupt / truncated.

    Examples
    --------
    See :func:`save`.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _HEADER.size:
            raise FormatError(f"{os.fspath(path)!r} is too short ({size} bytes) to be a .hwreg file")
        if use_mmap:
            buf: Any = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            buf = f.read()
    magic, major, minor, _flags, json_len, data_offset, crc = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise FormatError(f"{os.fspath(path)!r} is not a .hwreg file (magic {bytes(magic)!r})")
    if major > VERSION[0]:
        raise FormatError(f"{os.fspath(path)!r} has format version {major}.{minor}; this reader supports {VERSION[0]}.x")
    end_json = _HEADER.size + json_len
    if end_json > size or data_offset > size or data_offset % ALIGN:
        raise FormatError(f"{os.fspath(path)!r} is truncated or has a corrupt header")
    head = bytes(buf[: _HEADER.size])
    head = head[:32] + b"\0\0\0\0" + head[36:]
    body = bytes(buf[_HEADER.size:end_json])
    if zlib.crc32(body, zlib.crc32(head)) != crc:
        raise FormatError(f"{os.fspath(path)!r}: header checksum mismatch (corrupt file)")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested deeper than Python's stack
        raise FormatError(f"{os.fspath(path)!r}: unreadable model description ({type(e).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict) or not isinstance(doc.get("arrays"), list):
        raise FormatError(f"{os.fspath(path)!r}: the description must be an object with a 'meta' object and an "
                          "'arrays' list")
    meta, entries = doc["meta"], doc["arrays"]
    arrays: dict[str, np.ndarray] = {}
    end = data_offset
    for i, e in enumerate(entries):
        name, dtype, shape, off, nbytes = _entry(e, i, path)
        if name in arrays:
            raise FormatError(f"{os.fspath(path)!r}: array {name!r} is stored twice")
        dt = np.dtype(dtype)
        count = 1
        for d in shape:
            count *= d
        if count * dt.itemsize != nbytes or off % ALIGN or off < data_offset or off + nbytes > size:
            raise FormatError(f"{os.fspath(path)!r}: array {name!r} lies outside the file (truncated?)")
        end = max(end, off + nbytes)
        raw = memoryview(buf)[off:off + nbytes]
        if verify and zlib.crc32(raw) != e["crc32"]:
            raise FormatError(f"{os.fspath(path)!r}: array {name!r} checksum mismatch (corrupt file)")
        arr = np.frombuffer(raw, dtype=dt, count=count).reshape(shape) if count else np.zeros(shape, dt)
        arr.flags.writeable = False
        arrays[name] = arr
    if entries and size != end:
        raise FormatError(f"{os.fspath(path)!r}: {size - end} bytes after the last array (the file ends with it)")
    return arrays, meta
