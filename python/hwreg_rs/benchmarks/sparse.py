"""Suite "sparse": sparse Linear products vs NumPy dense fp32 and SciPy CSR.

``Y = X · Wᵀ`` for ``W`` (N, K) pruned to each sparsity, ``X`` (batch, K).
Throughput is dense-equivalent: ``2·N·K·batch / time`` (GOP/s), so all
contenders are comparable and a sparse path beats dense exactly when its
number is higher. Contenders:

* NumPy dense fp32 (``x @ w.T``, BLAS with its own threads);
* SciPy CSR (``scipy.sparse.csr_matrix(w) @ x.T``; single-threaded);
* ours, float32: CSR on an unstructured magnitude mask, and BSR on block
  masks (1×8, 4×4, 8×1) at the same sparsity — the best block is reported;
* ours, int8: CSR int8 (unstructured) and BSR int8 (1×8, 4×4, 8×4, 16×4; the
  last three run over output-column panels), activations quantized on the fly
  per row (included in the time);
* dense int8: ours, :class:`hwreg_rs.Int8Linear` (dynamic per-row activation
  quantization + exact int8 GEMM), when the package has it.

A second table puts the int8 panel blocks (16×4, 8×4, 4×4) against our dense
int8 layer alone, at 80% and 90% block sparsity, batch 1 and 32, on 1 and 2
threads, timed round-robin side by side (:func:`hwreg_rs._timing.side_by_side`).

A third puts :func:`hwreg_rs.sparse.choose`'s pick (the cost model on the host
profile, no timing of its own) against the measured fastest of the formats it
weighs (dense fp32 and int8, CSR fp32 and int8, BSR 16×4 fp32 and int8), timed
side by side, for 16×4-block and unstructured masks.

Every contender's answer is checked against NumPy before it is timed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import Table, median_seconds

SHAPES = [(1024, 1024), (3072, 768)]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95]
BATCHES = [1, 32, 128]
F32_BLOCKS = [(1, 8), (4, 4), (8, 1)]
I8_BLOCKS = [(1, 8), (4, 4), (8, 4), (16, 4)]
PANEL_BLOCKS = [(16, 4), (8, 4), (4, 4)]
PANEL_SPARSITIES = [0.8, 0.9]
PANEL_BATCHES = [1, 32]


def _threads_note() -> str:
    from .. import num_threads

    blas = "?"
    try:
        from threadpoolctl import threadpool_info

        blas = ",".join(str(i.get("num_threads")) for i in threadpool_info() if i.get("user_api") == "blas") or "?"
    except Exception:  # threadpoolctl is optional
        pass
    return f"threads: hwreg_rs {num_threads()}, NumPy BLAS {blas}, SciPy CSR 1 (single-threaded)"


def _check(got: np.ndarray, want: np.ndarray, what: str, tol: float) -> None:
    scale = max(float(np.abs(want).max()), 1.0)
    err = float(np.abs(got - want).max()) / scale
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.2e} > {tol}")


def run(quick: bool = False) -> str:
    import scipy.sparse as sp

    from .. import prune, sparse

    try:
        from ..gemm import Int8Linear
    except ImportError:  # the dense int8 GEMM is not in this build
        Int8Linear = None  # type: ignore[assignment,misc]
    shapes = SHAPES
    sparsities = [0.7, 0.9] if quick else SPARSITIES
    batches = [1, 32] if quick else BATCHES
    repeats = 3 if quick else 7
    rng = np.random.default_rng(0)
    cols = ["N×K", "sparsity", "batch", "NumPy f32", "SciPy CSR", "CSR f32", "best block f32", "CSR i8",
            "best block i8", "dense i8", "CSR/SciPy", "CSR/NumPy", "block f32/NumPy", "block i8/f32 (same)",
            "best block/dense i8"]
    t = Table(cols)
    beats: dict[tuple, dict[str, float | None]] = {}
    for n, k in shapes:
        w = rng.standard_normal((n, k)).astype(np.float32)
        dense8 = None if Int8Linear is None else Int8Linear.from_float(w)
        for s in sparsities:
            mu = prune.magnitude_mask(w, s)
            wu = w * mu
            csr = sparse.CSRMatrix.from_dense(w, mu)
            csr8 = sparse.CSRMatrix.from_dense(w, mu, dtype="int8")
            sc = sp.csr_matrix(wu)
            blocks = {}
            for b in sorted(set(F32_BLOCKS) | set(I8_BLOCKS)):
                mb = prune.block_mask(w, s, block=b)
                blocks[b] = (mb, sparse.BSRMatrix.from_dense(w, mb, block=b),
                             sparse.BSRMatrix.from_dense(w, mb, block=b, dtype="int8") if b in I8_BLOCKS else None)
            for bsz in batches:
                x = rng.standard_normal((bsz, k)).astype(np.float32)
                ref = x @ wu.T
                _check(csr.matmul(x), ref, "CSR f32", 1e-4)
                _check((sc @ x.T).T, ref, "SciPy", 1e-4)
                _check(csr8.matmul(x), ref, "CSR i8", 3e-2)
                ops = 2.0 * n * k * bsz
                g = lambda sec: ops / sec / 1e9  # noqa: E731
                t_np = median_seconds(lambda: x @ w.T, repeats=repeats)
                t_sc = median_seconds(lambda: (sc @ x.T).T, repeats=repeats)
                t_csr = median_seconds(lambda: csr.matmul(x), repeats=repeats)
                t_csr8 = median_seconds(lambda: csr8.matmul(x), repeats=repeats)
                bf, bq = {}, {}
                for b, (mb, mf, mq) in blocks.items():
                    rb = x @ (w * mb).T
                    if b in F32_BLOCKS:
                        _check(mf.matmul(x), rb, f"BSR{b} f32", 1e-4)
                        bf[b] = median_seconds(lambda: mf.matmul(x), repeats=repeats)
                    if mq is not None:
                        _check(mq.matmul(x), rb, f"BSR{b} i8", 3e-2)
                        bq[b] = median_seconds(lambda: mq.matmul(x), repeats=repeats)
                        if b not in bf:
                            bf[b] = median_seconds(lambda: mf.matmul(x), repeats=repeats)
                best_f = min((b for b in F32_BLOCKS), key=lambda b: bf[b])
                best_q = min(bq, key=lambda b: bq[b])
                t_d8 = None
                if dense8 is not None:
                    _check(dense8(x), x @ w.T, "dense i8", 3e-2)
                    t_d8 = median_seconds(lambda: dense8(x), repeats=repeats)
                t.add(f"{n}×{k}", f"{s:.0%}", bsz, g(t_np), g(t_sc), g(t_csr),
                      f"{g(bf[best_f]):.0f} ({best_f[0]}×{best_f[1]})", g(t_csr8),
                      f"{g(bq[best_q]):.0f} ({best_q[0]}×{best_q[1]})", None if t_d8 is None else g(t_d8),
                      f"{t_sc / t_csr:.2f}×", f"{t_np / t_csr:.2f}×", f"{t_np / bf[best_f]:.2f}×",
                      f"{bf[best_q] / bq[best_q]:.2f}× ({best_q[0]}×{best_q[1]})",
                      "–" if t_d8 is None else f"{t_d8 / min(bf[best_f], bq[best_q]):.2f}×")
                row = beats.setdefault((n, k, bsz), {})
                for name, sec in (("CSR f32", t_csr), ("best block f32", bf[best_f]), ("CSR i8", t_csr8),
                                  ("best block i8", bq[best_q]), ("SciPy CSR", t_sc)):
                    for ref_name, ref_t in (("np", t_np), ("d8", t_d8)):
                        key = f"{name}|{ref_name}"
                        if ref_t is not None and sec < ref_t and (row.get(key) is None or s < row[key]):  # type: ignore[operator]
                            row[key] = s
                        row.setdefault(key, None)
    names = ("CSR f32", "best block f32", "CSR i8", "best block i8", "SciPy CSR")
    be = Table(["N×K", "batch", "vs"] + list(names))
    for (n, k, bsz), row in beats.items():
        for ref_name, label in (("np", "NumPy f32"), ("d8", "dense i8 (ours)")):
            if ref_name == "d8" and Int8Linear is None:
                continue
            be.add(f"{n}×{k}", bsz, label, *[("never" if row.get(f"{c}|{ref_name}") is None
                                               else f"{row[f'{c}|{ref_name}']:.0%}") for c in names])
    head = ("## sparse: Y = X·Wᵀ, W pruned (dense-equivalent GOP/s = 2·N·K·batch / time; "
            f"median of {repeats})\n\n{_threads_note()}. Block columns name the fastest block shape; "
            "int8 times include quantizing X. Ratios > 1 favour the first named.\n")
    note = "" if Int8Linear is not None else "\n(dense int8 is not in this build; column left empty.)\n"
    out = (head + "\n" + t.markdown() + "\n" + note
           + "\n### Lowest swept sparsity at which each path beats the dense paths\n\n" + be.markdown())
    out += "\n\n" + _csr_vs_scipy(rounds=5 if quick else 9)
    if Int8Linear is not None:
        out += "\n\n" + _panels_vs_dense_int8(Int8Linear, rounds=5 if quick else 9)
        out += "\n\n" + _choose_vs_measured(quick=quick)
    return out


def _choose_vs_measured(*, quick: bool) -> str:
    """``sparse.choose``'s pick on the host profile against the measured fastest candidate."""
    from .. import profiles, prune, sparse
    from .._timing import side_by_side

    rng = np.random.default_rng(2)
    n = k = 1024
    w = rng.standard_normal((n, k)).astype(np.float32)
    prof = profiles.host_profile()
    rows = [("block 16×4", s) for s in ([0.7, 0.9] if quick else [0.5, 0.7, 0.8, 0.9, 0.95])]
    rows += [("unstructured", s) for s in ([0.9] if quick else [0.8, 0.9, 0.95])]
    batches = [1, 32] if quick else [1, 32, 128]
    t = Table(["mask", "sparsity", "batch", "choose's pick", "measured best", "pick µs", "best µs",
               "pick / best time"])
    for pattern, s in rows:
        mask = (prune.block_mask(w, s, block=(16, 4)) if pattern.startswith("block")
                else prune.magnitude_mask(w, s))
        cands = [("dense_f32", None), ("dense_int8", None), ("csr_f32", (1, 1)), ("csr_int8", (1, 1)),
                 ("bsr_f32", (16, 4)), ("bsr_int8", (16, 4))]
        built = {c: sparse.Choice(*c).build(w, mask) for c in cands}
        for bsz in batches:
            x = rng.standard_normal((bsz, k)).astype(np.float32)
            ch = sparse.choose(w, mask, batch=bsz, profile=prof, verify=False)
            pick = (ch.path, ch.block)
            if pick not in built:
                built[pick] = ch.build(w, mask)
            fns = {}
            for c, m in built.items():
                if c[0] == "dense_f32":
                    fns[c] = lambda m=m: x @ m.T
                elif c[0] == "dense_int8":
                    fns[c] = lambda m=m: m(x)
                else:
                    fns[c] = lambda m=m: m.matmul(x)
            sec = side_by_side(fns, rounds=3 if quick else 5, min_seconds=0.01)
            best = min(sec, key=sec.get)
            name = lambda c: c[0] + ("" if c[1] is None or c[0].startswith("csr") else f" {c[1][0]}×{c[1][1]}")  # noqa: E731
            t.add(pattern, f"{s:.0%}", bsz, name(pick), name(best), sec[pick] * 1e6, sec[best] * 1e6,
                  f"{sec[pick] / sec[best]:.2f}×")
    return ("### sparse.choose's pick (cost model, host profile) vs the measured fastest, 1024×1024\n\n"
            "Time of the pick over the best time: 1.00× is the right answer.\n\n" + t.markdown())


def _csr_vs_scipy(*, rounds: int) -> str:
    """Unstructured CSR f32 at 90% against SciPy's CSR, side by side, ours on 1 and 2 threads."""
    import scipy.sparse as sp

    from .. import num_threads, prune, set_num_threads, sparse
    from .._timing import side_by_side

    rng = np.random.default_rng(2)
    t = Table(["N×K", "batch", "threads (ours)", "SciPy CSR µs", "CSR f32 µs", "CSR f32 / SciPy"])
    before = num_threads()
    try:
        for n, k in SHAPES:
            w = rng.standard_normal((n, k)).astype(np.float32)
            keep = prune.magnitude_mask(w, 0.9)
            ours, ref = sparse.CSRMatrix.from_dense(w, keep), sp.csr_matrix(w * keep)
            for bsz in (32, 128):
                x = rng.standard_normal((bsz, k)).astype(np.float32)
                _check(ours.matmul(x), x @ (w * keep).T, "CSR f32", 1e-4)
                for threads in (1, 2):
                    set_num_threads(threads)
                    sec = side_by_side({"ours": lambda: ours.matmul(x), "scipy": lambda: (ref @ x.T).T},
                                       rounds=rounds, min_seconds=0.02)
                    t.add(f"{n}×{k}", bsz, threads, sec["scipy"] * 1e6, sec["ours"] * 1e6,
                          f"{sec['scipy'] / sec['ours']:.2f}×")
    finally:
        set_num_threads(before)
    return (f"### CSR f32 at 90% vs SciPy CSR (side by side, median of {rounds} round-robin rounds; "
            "SciPy is single-threaded)\n\n" + t.markdown())


def _panels_vs_dense_int8(Int8Linear: Any, *, rounds: int) -> str:
    """The int8 panel blocks against our dense int8 layer, side by side, on 1 and 2 threads."""
    from .. import num_threads, prune, set_num_threads, sparse
    from .._timing import side_by_side

    rng = np.random.default_rng(1)
    cols = ["threads", "N×K", "sparsity", "batch", "dense i8 µs"] + [f"{r}×{c} i8 µs" for r, c in PANEL_BLOCKS]
    cols += [f"{r}×{c}/dense i8" for r, c in PANEL_BLOCKS]
    t = Table(cols)
    before = num_threads()
    try:
        for threads in (1, 2):
            set_num_threads(threads)
            for n, k in SHAPES:
                w = rng.standard_normal((n, k)).astype(np.float32)
                dense8 = Int8Linear.from_float(w)
                for s in PANEL_SPARSITIES:
                    mats = {}
                    for b in PANEL_BLOCKS:
                        mb = prune.block_mask(w, s, block=b)
                        mats[b] = (sparse.BSRMatrix.from_dense(w, mb, block=b, dtype="int8"), w * mb)
                    for bsz in PANEL_BATCHES:
                        x = rng.standard_normal((bsz, k)).astype(np.float32)
                        _check(dense8(x), x @ w.T, "dense i8", 3e-2)
                        fns: dict[Any, Any] = {"dense": lambda: dense8(x)}
                        for b, (m, wb) in mats.items():
                            _check(m.matmul(x), x @ wb.T, f"BSR{b} i8", 3e-2)
                            fns[b] = lambda m=m: m.matmul(x)
                        sec = side_by_side(fns, rounds=rounds, min_seconds=0.02)
                        t.add(threads, f"{n}×{k}", f"{s:.0%}", bsz, sec["dense"] * 1e6,
                              *[sec[b] * 1e6 for b in PANEL_BLOCKS],
                              *[f"{sec['dense'] / sec[b]:.2f}×" for b in PANEL_BLOCKS])
    finally:
        set_num_threads(before)
    return ("### int8 block panels vs our dense int8 (side by side, median of "
            f"{rounds} round-robin rounds)\n\nBlocks of 4, 8 or 16 output rows × 4 inputs, pruned by block "
            "norm; both quantize x per row (included). Ratios > 1: the sparse layer is faster.\n\n"
            + t.markdown())
