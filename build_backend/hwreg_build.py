"""The package's PEP 517 build backend: maturin's, with one default changed.

Under pip, maturin tags a Linux wheel ``linux_x86_64`` (``--compatibility off``),
a tag PyPI refuses and that says nothing about which systems the wheel runs on.
This backend asks maturin for ``--compatibility pypi`` instead: maturin reads the
glibc symbol versions the library really uses and gives it the oldest
``manylinux_2_x`` tag they allow (``manylinux_2_34`` when built on Debian 12), or
refuses to build if the library links something a manylinux wheel may not.
Anything the caller sets (``MATURIN_PEP517_ARGS``, ``-C maturin.build-args=...``)
wins, e.g. ``--zig --compatibility manylinux_2_28`` for older systems
(``scripts/build_wheel.sh``). Editable installs are maturin's, unchanged.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import maturin

build_sdist = maturin.build_sdist
build_editable = maturin.build_editable
get_requires_for_build_wheel = maturin.get_requires_for_build_wheel
get_requires_for_build_sdist = maturin.get_requires_for_build_sdist
get_requires_for_build_editable = getattr(maturin, "get_requires_for_build_editable",
                                          maturin.get_requires_for_build_wheel)
prepare_metadata_for_build_wheel = maturin.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = getattr(maturin, "prepare_metadata_for_build_editable",
                                              maturin.prepare_metadata_for_build_wheel)

_TAG_FLAGS = ("--compatibility", "--manylinux", "--zig")


def build_wheel(wheel_directory: str, config_settings: Mapping[str, Any] | None = None,
                metadata_directory: str | None = None) -> str:
    args = maturin.get_maturin_pep517_args(config_settings)
    if not any(a.split("=")[0] in _TAG_FLAGS for a in args):
        # Config settings replace MATURIN_PEP517_ARGS in maturin, so they carry its arguments along.
        config_settings = dict(config_settings or {})
        config_settings["maturin.build-args"] = [*args, "--compatibility", "pypi"]
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)
