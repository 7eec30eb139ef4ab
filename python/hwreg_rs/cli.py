"""The ``hwreg-rs`` command (also ``python -m hwreg_rs``).

Sub-commands: ``demo`` (the main job: train the digits CNN under hard
constraints, compress it for a size budget int8 alone misses, compare), ``bench`` (kernels against NumPy and peers), ``profile``
(measure, show or save a hardware profile), ``convert`` (ONNX model -> int8
runtime file), ``compress`` (ONNX model or saved state dict + data + profile +
budget -> runtime file), ``export`` (runtime file -> ONNX), ``predict``
(runtime file + input .npy files -> output .npy files). Every sub-command
takes ``--json`` (machine-readable results on stdout) and ``-v/--verbose``
(progress messages on stderr, through the ``logging`` logger ``"hwreg_rs"``).

Exit status: 0 success; 1 a budget was missed (``compress``, ``demo``; the
model is written anyway) or the work failed (an unreadable or corrupt file, a
model or data the library refuses), with a one-line message on stderr; 2 a
usage error (an unknown option, a missing or malformed argument); 130
interrupted. A closed pipe (``hwreg-rs bench | head -1``) ends the command
quietly with status 0.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import traceback
from typing import Any, Callable, Sequence

import numpy as np

EXIT_OK = 0
EXIT_FAILURE = 1  # a budget missed, or a runtime error (bad file, refused model or data)
EXIT_USAGE = 2  # argparse's own status for bad command lines

EXIT_STATUS_HELP = """exit status:
  0  success
  1  a budget was missed (the model is written anyway), or the work failed:
     an unreadable or corrupt file, a model or data the library refuses
     (a one-line message on stderr; --verbose adds the traceback)
  2  usage error: unknown option, missing or malformed argument
  130  interrupted (Ctrl-C)"""

log = logging.getLogger("hwreg_rs")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout (the exit-status table)."""


class UsageError(Exception):
    """A bad argument found after parsing (reported like argparse's own errors, status 2)."""


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))


def _say_missed(args: argparse.Namespace, path: str) -> None:
    print(f"hwreg-rs {args.command}: budget missed; model written anyway to {path}", file=sys.stderr)


# -- argument types: each refusal is a usage error that names the flag ---------


def _number(kind: Callable[[str], Any], unit: str, *, low: float = 0.0, strict: bool = True,
            high: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` for a number in ``unit`` with ``value > low`` (``>=`` unless ``strict``)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} "
                                             f"({unit}); got {text!r}") from None
        bad = not np.isfinite(value) or (value <= low if strict else value < low) or (high is not None and value > high)
        if bad:
            bound = f"> {low:g}" if strict else f">= {low:g}"
            if high is not None:
                bound += f" and <= {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bound} ({unit}); got {text}")
        return value
    return parse


_MICROSECONDS = _number(float, "microseconds, µs")
_BYTES = _number(int, "bytes")
_SAMPLES = _number(int, "samples")
_EPOCHS = _number(int, "epochs")
_FRACTION = _number(float, "a fraction: 0.01 = 1 point of accuracy", strict=False, high=1.0)


def _shape_type(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,8,8; got {text!r}") from None
    if any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"every dimension must be > 0; got {text!r}")
    return shape


def _arch_type(text: str) -> str:
    if text == "cnn":
        return text
    if text.startswith("mlp:"):
        try:
            sizes = [int(v) for v in text[4:].split(",")]
        except ValueError:
            sizes = []
        if len(sizes) >= 2 and all(v > 0 for v in sizes):
            return text
    raise argparse.ArgumentTypeError(f"expected 'cnn' or 'mlp:IN,HIDDEN...,OUT' (positive integers); got {text!r}")


def _preset_names() -> list[str]:
    from . import profiles

    return sorted(profiles.PRESETS)


def _profile_name_type(text: str) -> str:
    if text == "host" or text in _preset_names() or os.path.exists(text):
        return text
    raise argparse.ArgumentTypeError(f"expected 'host', a preset ({', '.join(_preset_names())}) or an existing "
                                     f"profile JSON file; got {text!r}")


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
    return nn.mlp([int(v) for v in arch[4:].split(",")], rng=0)


# -- demo ---------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    result = demo.run(quick=args.quick, size_fraction=args.size_fraction, max_accuracy_drop=args.max_drop,
                      epochs=args.epochs, seed=args.seed, out=args.out, say=say)
    if args.json:
        _print_json({k: v for k, v in result.items() if k != "report_markdown"})
    else:
        say("4/4 results\n")
        print(demo.markdown(result))
        if args.plot:
            _plot_demo(args.plot, result["models"], result["report"])
    if not result["met"]:
        _say_missed(args, result["runtime_file"])
        return EXIT_FAILURE
    return EXIT_OK


def _plot_demo(path: str, rows: list[dict[str, Any]], report: dict[str, Any]) -> None:
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
    names = [l["name"] for l in report["layers"]]
    b.bar(names, [l["measured_us"] for l in report["layers"]], label="measured")
    b.scatter(names, [l["estimated_us"] for l in report["layers"]], color="k", label="estimated", zorder=3)
    b.set_ylabel("µs")
    b.set_title("per-layer latency")
    b.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot saved to {path}")


# -- bench ----------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from . import benchmarks

    log.info("running suites %s%s", ", ".join(args.suite or benchmarks.SUITES), " (quick)" if args.quick else "")
    return benchmarks.main(quick=args.quick, suites=args.suite, as_json=args.json)


# -- profile --------------------------------------------------------------------


def _profile(args: argparse.Namespace) -> int:
    from . import profiles

    if args.name == "host":
        log.info("measuring this machine's kernels (a few seconds)")
    p = profiles.measure_host() if args.name == "host" else _profile_arg(args.name)
    if args.save:
        p.save(args.save)
        log.info("saved the profile to %s", args.save)
    if args.json:
        _print_json(p.to_dict())
    else:
        print(p.describe())
        if args.save:
            print(f"\nsaved to {args.save}")
    return EXIT_OK


# -- compress -------------------------------------------------------------------


def _load_float_model(path: str, arch: str | None, input_shape: tuple[int, ...] | None) -> Any:
    """An ONNX file, or a state dict (.npz) for one of the built-in architectures."""
    log.info("loading %s", path)
    if path.endswith(".onnx"):
        from . import onnx

        return onnx.load(path, input_shape=input_shape)
    if arch is None:
        raise UsageError("a state dict (.npz) needs --arch; an .onnx model carries its own architecture")
    net = _build_model(arch)
    with np.load(path, allow_pickle=False) as sd:
        state = {k: sd[k] for k in sd.files}
    try:
        net.load_state_dict(state)
    except (KeyError, ValueError) as e:
        detail = e.args[0] if e.args else e
        raise ValueError(f"{path} does not match --arch {arch}: {detail}") from None
    return net


def _sample_shape(model: Any, given: tuple[int, ...] | None) -> tuple[int, ...]:
    if given is not None:
        return given
    shapes = getattr(model, "input_shapes", None)
    if not shapes:
        raise UsageError("--input-shape is required for this model (one sample's shape, e.g. 1,8,8)")
    return tuple(shapes[0])


# -- convert / export -----------------------------------------------------------


def _convert(args: argparse.Namespace) -> int:
    from . import runtime

    model = _load_float_model(args.model, None, args.input_shape)
    log.info("converting to int8")
    rt = runtime.convert(model.eval(), input_shape=_sample_shape(model, args.input_shape))
    size = rt.save(args.output)
    kinds: dict[str, int] = {}
    for op in rt.ops:
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
    if args.json:
        _print_json({"output": args.output, "bytes": size, "ops": kinds})
    else:
        print(f"{args.output}: {size} bytes, " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from . import onnx, runtime

    log.info("loading %s", args.model)
    rt = runtime.load(args.model)
    onnx.export(rt, args.output, opset=args.opset)
    size = os.path.getsize(args.output)
    if args.json:
        _print_json({"output": args.output, "bytes": size})
    else:
        print(f"{args.output}: {size} bytes (ONNX opset {args.opset}, MatMulInteger / ConvInteger)")
    return EXIT_OK


def _compress(args: argparse.Namespace) -> int:
    from .compress import compress

    net = _load_float_model(args.model, args.arch, args.input_shape)
    log.info("loading %s", args.data)
    with np.load(args.data, allow_pickle=False) as d:
        missing = {"X_train", "y_train", "X_test", "y_test"} - set(d.files)
        if missing:
            raise ValueError(f"{args.data} lacks arrays {sorted(missing)} (needs X_train, y_train, X_test, y_test)")
        split = (d["X_train"], d["y_train"], d["X_test"], d["y_test"])
    budget = None if args.latency_budget_us is None else args.latency_budget_us * 1e-6  # the library takes seconds
    log.info("compressing for profile %s (latency budget %s, size budget %s, accuracy drop <= %g)", args.profile,
             "none" if budget is None else f"{args.latency_budget_us:g} µs at batch {args.batch_size}",
             "none" if args.size_budget is None else f"{args.size_budget} bytes", args.max_drop)
    rt, report = compress(net.eval(), split, profile=_profile_arg(args.profile), latency_budget=budget,
                          size_budget=args.size_budget, max_accuracy_drop=args.max_drop,
                          memory_budget=args.memory_budget,
                          batch_size=args.batch_size, raise_on_miss=False, plot=args.plot,
                          verbose=args.verbose and not args.json,
                          input_shape=args.input_shape or (getattr(net, "input_shapes", None) or [None])[0])
    rt.save(args.output)
    log.info("wrote %s", args.output)
    if args.plot:
        log.info("wrote the candidates' front to %s", args.plot)
    if args.json:
        _print_json({"output": args.output, "report": report.to_dict(), **({"plot": args.plot} if args.plot else {})})
    else:
        print(report.markdown())
        if report.met:
            print(f"\nruntime model saved to {args.output}")
    if not report.met:
        _say_missed(args, args.output)
        return EXIT_FAILURE
    return EXIT_OK


# -- predict --------------------------------------------------------------------


def _expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Paths as given; a pattern that is not an existing path is expanded (sorted),
    leaving out earlier outputs (``*.out.npy``)."""
    paths: list[str] = []
    for p in patterns:
        if os.path.exists(p) or not glob.has_magic(p):
            paths.append(p)
            continue
        found = sorted(f for f in glob.glob(p) if not f.endswith(".out.npy"))
        if not found:
            raise UsageError(f"no file matches {p!r}")
        paths.extend(found)
    return paths


def _output_paths(inputs: Sequence[str], output: str | None) -> list[str]:
    """``-o FILE`` for one input; else ``<name>.out.npy`` in ``-o DIR`` or beside each input."""
    if output is not None and len(inputs) == 1 and not os.path.isdir(output) and not output.endswith(("/", os.sep)):
        return [output]

    def name(path: str) -> str:
        base = os.path.basename(path)
        return (base[:-4] if base.endswith(".npy") else base) + ".out.npy"

    if output is None:
        outs = [os.path.join(os.path.dirname(p), name(p)) for p in inputs]
    else:
        if os.path.exists(output) and not os.path.isdir(output):
            raise UsageError(f"-o {output!r} is a file; several inputs need -o DIR")
        os.makedirs(output, exist_ok=True)
        outs = [os.path.join(output, name(p)) for p in inputs]
    seen: dict[str, str] = {}
    for i, o in zip(inputs, outs):
        if o in seen:
            raise UsageError(f"{seen[o]!r} and {i!r} would both be written to {o!r}")
        seen[o] = i
    return outs


def _predict(args: argparse.Namespace) -> int:
    from . import runtime

    inputs = _expand_inputs(args.inputs)
    outputs = _output_paths(inputs, args.output)
    log.info("loading %s", args.model)
    rt = runtime.load(args.model)
    done = []
    for src, dst in zip(inputs, outputs):
        x = np.load(src, allow_pickle=False)
        y = rt.predict(x)
        np.save(dst, y)
        log.info("%s -> %s %s", src, dst, tuple(np.shape(y)))
        done.append({"input": src, "output": dst, "shape": list(np.shape(y))})
    if args.json:
        result: dict[str, Any] = {"outputs": done}
        if len(done) == 1:
            result.update(output=done[0]["output"], shape=done[0]["shape"])
        _print_json(result)
    else:
        for r in done:
            print(f"{r['input']} -> {r['output']}: {tuple(r['shape'])} float32")
    return EXIT_OK


# -- the parser -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .benchmarks import SUITES

    presets = ", ".join(_preset_names())
    p = argparse.ArgumentParser(prog="hwreg-rs", description="Train and compress neural networks to fit their hardware, then run\n"
                                "them with exact int8 and sparse kernels.",
                                epilog=EXIT_STATUS_HELP, formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"hwreg-rs {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="progress messages on stderr (also after COMMAND)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    # SUPPRESS: left out after COMMAND, the flag keeps what it was given before COMMAND
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="progress messages on stderr")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help, parents=[common], epilog=EXIT_STATUS_HELP,
                           formatter_class=_Formatter)
        c.set_defaults(func=func, parser=c)
        return c

    d = command("demo", _demo, "train the digits CNN under hard constraints, compress it for a size budget int8 "
                "alone misses, compare float / int8 / compressed (the main job)")
    d.add_argument("--quick", action="store_true", help="fewer epochs and repeats (rough figures, for tests)")
    d.add_argument("--epochs", type=_EPOCHS, default=None, help="training epochs (default: 12; 4 with --quick)")
    d.add_argument("--size-fraction", type=_FRACTION, default=0.25, metavar="FRACTION",
                   help="size budget as a fraction of the int8 file (default: %(default)s)")
    d.add_argument("--max-drop", type=_FRACTION, default=0.02, metavar="FRACTION",
                   help="largest accuracy drop allowed, a fraction in [0, 1] (default: %(default)s = 2 points)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    d.add_argument("--out", metavar="FILE", help="where to save the runtime model (default: a temporary folder)")
    d.add_argument("--plot", metavar="FILE", help="save accuracy/latency plots here (needs matplotlib)")

    b = command("bench", _bench, "time the kernels against NumPy and peers and print Markdown tables "
                "(--json: the tables as JSON)")
    b.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    b.add_argument("--suite", action="append", choices=SUITES, metavar="SUITE",
                   help=f"run only this suite (repeatable); one of: {', '.join(SUITES)} (default: all)")

    pr = command("profile", _profile, "measure this machine's profile, or show a preset / saved profile")
    pr.add_argument("name", nargs="?", default="host", type=_profile_name_type, metavar="NAME",
                    help=f"'host' (measure this machine; the default), a preset ({presets}) or a profile JSON file")
    pr.add_argument("--save", metavar="FILE", help="write the profile as JSON")

    cv = command("convert", _convert, "float ONNX model -> int8 runtime file")
    cv.add_argument("model", help="a float .onnx model")
    cv.add_argument("--input-shape", type=_shape_type, metavar="D1,D2,...",
                    help="one sample's shape without the batch, e.g. 1,8,8 (default: the model's, when it has one)")
    cv.add_argument("-o", "--output", required=True, metavar="FILE", help="the .hwreg runtime file to write")

    c = command("compress", _compress, "float model + data + profile + budget -> runtime file")
    c.add_argument("model", help="a float .onnx model, or a state dict as .npz (hwreg_rs.nn layout, PyTorch names)")
    c.add_argument("data", help=".npz with X_train, y_train, X_test, y_test")
    c.add_argument("--arch", type=_arch_type, help="for a .npz state dict: 'cnn' or 'mlp:IN,HIDDEN...,OUT'")
    c.add_argument("--input-shape", type=_shape_type, metavar="D1,D2,...",
                   help="one sample's shape without the batch, e.g. 1,8,8 (default: the model's or the data's)")
    c.add_argument("--profile", default="host", type=_profile_name_type, metavar="PROFILE",
                   help=f"'host' (measure this machine), a preset ({presets}) or a profile JSON file "
                        "(default: %(default)s)")
    c.add_argument("--latency-budget-us", type=_MICROSECONDS, metavar="US",
                   help="latency budget in microseconds (µs) for one batch of --batch-size samples "
                        "(default: none; Python's hw.compress takes seconds)")
    c.add_argument("--size-budget", type=_BYTES, metavar="BYTES",
                   help="size budget in bytes of the written .hwreg file (default: none)")
    c.add_argument("--memory-budget", type=_BYTES, metavar="BYTES",
                   help="memory budget in bytes while running: weights plus peak live activations at "
                        "--batch-size (default: none; the profile's memory capacity, a microcontroller's SRAM, "
                        "always applies)")
    c.add_argument("--max-drop", type=_FRACTION, default=0.01, metavar="FRACTION",
                   help="largest accuracy drop allowed, a fraction in [0, 1] (default: %(default)s = 1 point)")
    c.add_argument("--batch-size", type=_SAMPLES, default=1, metavar="N",
                   help="batch size the latency is measured at, in samples (default: %(default)s)")
    c.add_argument("--plot", metavar="FILE",
                   help="write the accuracy-latency-size front of the candidates as a PNG (needs matplotlib)")
    c.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="the .hwreg runtime file to write (written even when a budget is missed)")

    ex = command("export", _export, "runtime file -> ONNX (MatMulInteger / ConvInteger) for other runtimes")
    ex.add_argument("model", help="a .hwreg runtime file")
    ex.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset of the file (default: %(default)s)")

    pd = command("predict", _predict, "runtime file + input .npy files -> output .npy files")
    pd.add_argument("model", help="a .hwreg runtime file")
    pd.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="input .npy files of shape (N, *input_shape), or glob patterns such as 'batches/*.npy' "
                         "(quoted; earlier *.out.npy outputs are skipped)")
    pd.add_argument("-o", "--output", metavar="FILE_OR_DIR",
                    help="for one input: the output .npy file; otherwise a folder (created if needed) that gets "
                         "<name>.out.npy for each input (default: <name>.out.npy beside each input)")
    return p


def _stdout_to_devnull() -> None:
    """After a closed pipe: point stdout at /dev/null so the final flush cannot fail again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (pytest's capture)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Usage errors exit through argparse (``SystemExit(2)``); runtime errors
    print one line on stderr and return 1.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hwreg-rs: %(message)s"))
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
        return status
    except UsageError as e:
        args.parser.error(str(e))  # prints the usage line and exits with status 2
        raise  # not reached
    except BrokenPipeError:
        # The reader went away (`hwreg-rs bench | head -1`): stop quietly, as Unix tools do.
        _stdout_to_devnull()
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"hwreg-rs {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, KeyError, OSError, ImportError, MemoryError, RuntimeError) as e:
        if args.verbose:
            traceback.print_exc()
        detail = e.args[0] if isinstance(e, KeyError) and e.args else e
        text = " ".join(str(detail).split()) or type(e).__name__
        print(f"hwreg-rs {args.command}: error: {text}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)


if __name__ == "__main__":
    sys.exit(main())
