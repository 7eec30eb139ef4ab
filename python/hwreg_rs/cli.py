"""The ``hwreg-rs`` command (also ``python -m hwreg_rs``).

Sub-commands: ``demo`` (the main job: train, compress for this machine, run
in int8, compare), ``bench`` (kernels against NumPy and peers), ``profile``
(measure, show or save a hardware profile), ``convert`` (ONNX model -> int8
runtime file), ``compress`` (ONNX model or saved state dict + data + profile +
budget -> runtime file), ``export`` (runtime file -> ONNX), ``predict``
(runtime file + input .npy -> output .npy). ``--json`` prints machine-readable
results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))


def _profile_arg(value: str) -> Any:
    from . import profiles

    if value == "host":
        return "host"
    if os.path.exists(value):
        return profiles.HardwareProfile.load(value)
    return profiles.preset(value)


def _build_model(arch: str) -> Any:
    from . import nn

    if arch == "cnn":
        return nn.small_cnn(rng=0)
    if arch.startswith("mlp:"):
        try:
            sizes = [int(v) for v in arch[4:].split(",")]
        except ValueError:
            raise SystemExit(f"--arch mlp:SIZES needs comma-separated integers; got {arch!r}") from None
        return nn.mlp(sizes, rng=0)
    raise SystemExit(f"--arch must be 'cnn' or 'mlp:IN,HIDDEN...,OUT'; got {arch!r}")


# -- demo ---------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from . import data, nn, train
    from .compress import _median_s, compress

    try:
        split = data.load_digits()
    except ImportError as e:
        raise SystemExit(f"the demo trains on scikit-learn's digits: {e}") from None
    say = (lambda *a: None) if args.json else print
    say("1/4 training the float MLP 64-256-128-10 on digits (1437 train / 360 test samples)")
    net = nn.mlp([64, 256, 128, 10], rng=args.seed)
    t0 = time.perf_counter()
    train.fit(net, split.X_train, split.y_train, epochs=args.epochs, lr=1e-3, scheduler="cosine", seed=args.seed,
              verbose=not args.json)
    train_s = time.perf_counter() - t0
    net.eval()
    x1 = split.X_test[:1].astype(np.float32)
    float_lat1 = _median_s(net, x1)
    budget = 0.5 * float_lat1
    say(f"2/4 compressing for this machine: latency budget {1e6 * budget:.0f} µs at batch 1 "
        f"(half the float model's), accuracy drop ≤ {100 * args.max_drop:.1f} pt")
    rt, report = compress(net, split, profile="host", latency_budget=budget, max_accuracy_drop=args.max_drop,
                            batch_size=1, raise_on_miss=False, seed=args.seed, verbose=False)
    say("3/4 running both models")
    out = args.out or os.path.join(tempfile.mkdtemp(prefix="hwreg-"), "digits_mlp.hwreg")
    file_bytes = rt.save(out)
    float_bytes = 4 * sum(p.data.size for _, p in net.named_parameters())
    xb = np.ascontiguousarray(np.resize(split.X_test, (256, 64)), dtype=np.float32)
    rows = []
    for name, fn in (("float32 (NumPy)", net), ("int8 runtime (hwreg_rs)", rt.predict)):
        acc = float(np.mean(fn(split.X_test.astype(np.float32)).argmax(axis=1) == split.y_test))
        rows.append({"model": name, "accuracy": acc, "bytes": float_bytes if name.startswith("float") else file_bytes,
                     "latency_b1_us": 1e6 * _median_s(fn, x1), "latency_b256_us": 1e6 * _median_s(fn, xb, 9)})
    result = {"train_seconds": train_s, "runtime_file": out, "models": rows, "report": report.to_dict()}
    if args.json:
        _print_json(result)
        return 0 if report.met else 1
    say("4/4 results\n")
    print("| model | test accuracy | size (bytes) | latency batch 1 (µs) | latency batch 256 (µs) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {100 * r['accuracy']:.2f}% | {r['bytes']} | {r['latency_b1_us']:.1f} | "
              f"{r['latency_b256_us']:.0f} |")
    f, q = rows
    print(f"\nint8 vs float: {q['bytes'] / f['bytes']:.1%} of the size, {f['latency_b1_us'] / q['latency_b1_us']:.1f}× "
          f"faster at batch 1, {f['latency_b256_us'] / q['latency_b256_us']:.1f}× at batch 256, "
          f"{100 * (q['accuracy'] - f['accuracy']):+.2f} pt accuracy")
    print(f"runtime model saved to {out}\n\nCompression report:\n{report.markdown()}")
    if args.plot:
        _plot_demo(args.plot, rows, report)
    return 0 if report.met else 1


def _plot_demo(path: str, rows: list[dict[str, Any]], report: Any) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        a.scatter(r["latency_b1_us"], 100 * r["accuracy"], label=r["model"])
    a.set_xlabel("latency at batch 1 (µs)")
    a.set_ylabel("test accuracy (%)")
    a.legend()
    a.set_title("accuracy against latency")
    names = [l.name for l in report.layers]
    b.bar(names, [l.measured_us for l in report.layers], label="measured")
    b.scatter(names, [l.estimated_us for l in report.layers], color="k", label="estimated", zorder=3)
    b.set_ylabel("µs")
    b.set_title("per-layer latency")
    b.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot saved to {path}")


# -- bench ----------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from . import benchmarks

    return benchmarks.main(quick=args.quick, suites=args.suite)


# -- profile --------------------------------------------------------------------


def _profile(args: argparse.Namespace) -> int:
    from . import profiles

    p = profiles.measure_host() if args.name == "host" else _profile_arg(args.name)
    if args.save:
        p.save(args.save)
    if args.json:
        _print_json(p.to_dict())
    else:
        print(p.describe())
        if args.save:
            print(f"\nsaved to {args.save}")
    return 0


# -- compress -------------------------------------------------------------------


def _shape_arg(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise SystemExit(f"--input-shape needs comma-separated integers such as 1,28,28; got {value!r}") from None


def _load_float_model(path: str, arch: str | None, input_shape: tuple[int, ...] | None) -> Any:
    """An ONNX file, or a state dict (.npz) for one of the built-in architectures."""
    if path.endswith(".onnx"):
        from . import onnx

        return onnx.load(path, input_shape=input_shape)
    if arch is None:
        raise SystemExit("a state dict (.npz) needs --arch; an .onnx model carries its own architecture")
    net = _build_model(arch)
    with np.load(path) as sd:
        net.load_state_dict({k: sd[k] for k in sd.files})
    return net


def _sample_shape(model: Any, given: tuple[int, ...] | None) -> tuple[int, ...]:
    if given is not None:
        return given
    shapes = getattr(model, "input_shapes", None)
    if not shapes:
        raise SystemExit("--input-shape is required for this model (one sample's shape, e.g. 1,8,8)")
    return tuple(shapes[0])


# -- convert / export -----------------------------------------------------------


def _convert(args: argparse.Namespace) -> int:
    from . import runtime

    model = _load_float_model(args.model, None, _shape_arg(args.input_shape))
    rt = runtime.convert(model.eval(), input_shape=_sample_shape(model, _shape_arg(args.input_shape)))
    size = rt.save(args.output)
    kinds: dict[str, int] = {}
    for op in rt.ops:
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
    if args.json:
        _print_json({"output": args.output, "bytes": size, "ops": kinds})
    else:
        print(f"{args.output}: {size} bytes, " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    return 0


def _export(args: argparse.Namespace) -> int:
    from . import onnx, runtime

    rt = runtime.load(args.model)
    onnx.export(rt, args.output, opset=args.opset)
    size = os.path.getsize(args.output)
    if args.json:
        _print_json({"output": args.output, "bytes": size})
    else:
        print(f"{args.output}: {size} bytes (ONNX opset {args.opset}, MatMulInteger / ConvInteger)")
    return 0


def _compress(args: argparse.Namespace) -> int:
    from .compress import compress

    net = _load_float_model(args.model, args.arch, _shape_arg(args.input_shape))
    with np.load(args.data) as d:
        missing = {"X_train", "y_train", "X_test", "y_test"} - set(d.files)
        if missing:
            raise SystemExit(f"{args.data} lacks arrays {sorted(missing)}")
        split = (d["X_train"], d["y_train"], d["X_test"], d["y_test"])
    budget = None if args.latency_budget_us is None else args.latency_budget_us * 1e-6
    rt, report = compress(net.eval(), split, profile=_profile_arg(args.profile), latency_budget=budget,
                            size_budget=args.size_budget, max_accuracy_drop=args.max_drop,
                            batch_size=args.batch_size, raise_on_miss=False,
                            input_shape=_shape_arg(args.input_shape) or (getattr(net, "input_shapes", None) or [None])[0])
    rt.save(args.output)
    if args.json:
        _print_json({"output": args.output, "report": report.to_dict()})
    else:
        print(report.markdown())
        print(f"\nruntime model saved to {args.output}")
    return 0 if report.met else 1


# -- predict --------------------------------------------------------------------


def _predict(args: argparse.Namespace) -> int:
    from . import runtime

    rt = runtime.load(args.model)
    x = np.load(args.input, allow_pickle=False)
    y = rt.predict(x)
    np.save(args.output, y)
    if args.json:
        _print_json({"output": args.output, "shape": list(y.shape)})
    else:
        print(f"{args.output}: {y.shape} float32")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwreg-rs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train digits, compress for this machine, run in int8, compare (the main job)")
    d.add_argument("--epochs", type=int, default=20)
    d.add_argument("--max-drop", type=float, default=0.01, help="largest accuracy drop allowed (0.01 = 1 point)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", help="where to save the runtime model (default: a temporary folder)")
    d.add_argument("--plot", help="save accuracy/latency plots here (needs matplotlib)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_demo)

    b = sub.add_parser("bench", help="time the kernels against NumPy and peers and print a table")
    b.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    b.add_argument("--suite", action="append", help="run only this suite (repeatable)")
    b.set_defaults(func=_bench)

    pr = sub.add_parser("profile", help="measure this machine's profile, or show a preset / saved profile")
    pr.add_argument("name", nargs="?", default="host", help="'host' (measure), a preset name or a JSON file")
    pr.add_argument("--save", help="write the profile as JSON")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=_profile)

    cv = sub.add_parser("convert", help="float ONNX model -> int8 runtime file")
    cv.add_argument("model", help="a float .onnx model")
    cv.add_argument("--input-shape", help="one sample's shape, e.g. 1,8,8 (when the file leaves dims symbolic)")
    cv.add_argument("-o", "--output", required=True)
    cv.add_argument("--json", action="store_true")
    cv.set_defaults(func=_convert)

    c = sub.add_parser("compress", help="float model + data + profile + budget -> runtime file")
    c.add_argument("model", help="a float .onnx model, or a state dict as .npz (hwreg_rs.nn layout, PyTorch names)")
    c.add_argument("data", help=".npz with X_train, y_train, X_test, y_test")
    c.add_argument("--arch", help="for a .npz state dict: 'cnn' or 'mlp:IN,HIDDEN...,OUT'")
    c.add_argument("--input-shape", help="one sample's shape, e.g. 1,8,8 (default: the data's)")
    c.add_argument("--profile", default="host", help="'host', a preset name or a profile JSON file")
    c.add_argument("--latency-budget-us", type=float)
    c.add_argument("--size-budget", type=int, help="bytes")
    c.add_argument("--max-drop", type=float, default=0.01)
    c.add_argument("--batch-size", type=int, default=1)
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_compress)

    ex = sub.add_parser("export", help="runtime file -> ONNX (MatMulInteger / ConvInteger) for other runtimes")
    ex.add_argument("model", help="a .hwreg runtime file")
    ex.add_argument("-o", "--output", required=True)
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=_export)

    pd = sub.add_parser("predict", help="runtime file + input .npy -> output .npy")
    pd.add_argument("model")
    pd.add_argument("input")
    pd.add_argument("-o", "--output", required=True)
    pd.add_argument("--json", action="store_true")
    pd.set_defaults(func=_predict)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as e:
        print(f"hwreg-rs {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
