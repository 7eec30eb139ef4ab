"""What one layer computes and moves: the input of the cost model.

A leaf module (it imports nothing of the package), so the runtime, which
describes its operations with :class:`LayerWork`, and :mod:`hwreg_rs.profiles`,
which costs them, both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LayerWork", "PRECISIONS", "PATTERNS", "KINDS"]

PRECISIONS = ("fp32", "int8", "int4")
PATTERNS = ("dense", "unstructured", "block", "n:m")
KINDS = ("linear", "conv2d", "pool", "elementwise", "reshape")


@dataclass(frozen=True)
class LayerWork:
    """What one layer computes and moves, for one batch.

    Parameters
    ----------
    name : str
        Layer name.
    kind : str
        ``"linear"``, ``"conv2d"``, ``"pool"``, ``"elementwise"`` or
        ``"reshape"`` (a view: no data moved).
    macs : int
        Dense-equivalent multiply-accumulates for the whole batch.
    weight_bytes : int
        Bytes of stored weights as the runtime keeps them (values plus indices).
    act_in_bytes, act_out_bytes : int
        Bytes of input and output activations.
    precision : str
        ``"int8"``, ``"int4"`` (4-bit weights, uint8 activations; the
        weight bytes are the packed nibbles plus scales) or ``"fp32"``.
    density : float
        Fraction of weights kept (1.0 when dense).
    pattern : str
        ``"dense"``, ``"unstructured"``, ``"block"`` or ``"n:m"``.
    gemm : tuple of 3 int, optional
        ``(M, K, N)`` of the matrix product of a linear or conv2d layer (for a
        convolution ``M = batch*OH*OW``, ``K = C*kh*kw``). When omitted it is
        derived from ``macs`` and the activation bytes (4 per element; a
        conv2d's ``act_in_bytes`` counting its column matrix twice, as the
        runtime does).
    calls : int
        Separate kernel (or NumPy) calls the layer makes; each pays the fixed
        overhead.
    passes : int
        Passes over the activations an elementwise layer makes.
    sparse_kernel : bool, optional
        For a pattern other than ``"dense"``: True when the layer runs on the
        sparse kernel whatever it costs (a stored sparse matrix); None (the
        default) when it runs on the faster of the sparse kernel and dense, as
        the runtime's chooser decides.
    int4_group : int, optional
        For an ``"int4"`` layer with per-group scales: the inputs per scale
        (32, 64 or 128); None for one scale per output channel.
    native : bool
        Whether the layer runs inside a native plan call of the runtime (see
        :mod:`hwreg_rs._planner`): its fixed cost is then an in-plan step's,
        not a call from Python's.
    pixels : int, optional
        For a pooling layer: the spatial positions of its input for the whole
        batch (``N*H*W``; a channels-last pool walks them one by one, its
        channels a vector each), None when not known.
    """

    name: str
    kind: str
    macs: int
    weight_bytes: int
    act_in_bytes: int
    act_out_bytes: int
    precision: str = "fp32"
    density: float = 1.0
    pattern: str = "dense"
    gemm: tuple[int, int, int] | None = None
    calls: int = 1
    passes: int = 1
    sparse_kernel: bool | None = None
    int4_group: int | None = None
    native: bool = False
    pixels: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}; got {self.pattern!r}")
        if not 0 <= self.density <= 1:
            raise ValueError(f"density must be in [0, 1]; got {self.density!r}")
        for f in ("macs", "weight_bytes", "act_in_bytes", "act_out_bytes"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0; got {getattr(self, f)!r}")
        if self.gemm is not None:
            g = tuple(int(v) for v in self.gemm)
            if len(g) != 3 or min(g) < 0:
                raise ValueError(f"gemm must be (M, K, N) of non-negative ints; got {self.gemm!r}")
            object.__setattr__(self, "gemm", g)
        if self.int4_group is not None and (self.precision != "int4" or int(self.int4_group) < 1):
            raise ValueError(f"int4_group needs precision 'int4' and a group size >= 1; got {self.int4_group!r}")
        if self.pixels is not None and int(self.pixels) < 0:
            raise ValueError(f"pixels must be None or >= 0; got {self.pixels!r}")
        if self.calls < 1 or self.passes < 0:
            raise ValueError(f"calls must be >= 1 and passes >= 0; got {self.calls!r}, {self.passes!r}")
