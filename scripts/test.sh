#!/usr/bin/env bash
# Installs the package and its test dependencies into a fresh virtual
# environment (.venv by default, or $HWREG_VENV), then runs every test:
# the Rust kernel crate's unit tests, the stub check and the Python suite.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${HWREG_VENV:-.venv}"
python3 -m venv "$venv"
venv=$(cd "$venv" && pwd)
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q '.[test]'
cargo test --release -p hwreg-kernels
# The hand-written stubs must match the compiled module.
"$venv/bin/python" -m mypy.stubtest hwreg_rs._native --ignore-missing-stub --ignore-disjoint-bases
"$venv/bin/python" -m pytest -q
# Every public docstring carries a runnable example: run them against the installed package.
(cd "$(mktemp -d)" && "$venv/bin/python" -m pytest -q -p no:cacheprovider --doctest-modules --pyargs hwreg_rs)
