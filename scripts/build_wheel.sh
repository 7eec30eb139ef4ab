#!/usr/bin/env bash
# Builds the wheel for the widest range of Linux systems: manylinux_2_28 (glibc 2.28+:
# RHEL 8, Debian 10, Ubuntu 20.04 and later), abi3 (one wheel for CPython 3.9+).
# Plain `pip wheel .` gives the tag the build host's glibc allows (manylinux_2_34 on
# Debian 12); linking against zig's older glibc stubs lowers it. ziglang comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "maturin>=1.5,<2" ziglang
PATH="$venv/bin:$PATH" "$venv/bin/maturin" build --release --zig --compatibility manylinux_2_28 -o "$out"
