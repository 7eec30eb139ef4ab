"""Neural-network layers in NumPy (float32) with PyTorch layouts, names and math.

Every layer has ``forward`` and ``backward``; :class:`Sequential` chains
them. Parameter names, initialisation and state dicts follow PyTorch, so a
PyTorch ``state_dict`` converted with ``{k: v.numpy() for k, v in sd.items()}``
loads with :meth:`Module.load_state_dict` and gives the same outputs.
Convolution (im2col / col2im) and pooling run in Rust for float32.

Examples
--------
>>> import numpy as np, hwreg_rs as hw
>>> net = hw.nn.mlp([64, 32, 10], rng=0)
>>> net(np.zeros((2, 64), np.float32)).shape
(2, 10)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import functional, ops, passes, registry
from .conv import AvgPool2d, Conv2d, MaxPool2d
from .graph import Graph, Node
from .layers import BatchNorm1d, BatchNorm2d, Dropout, Flatten, Linear, ReLU, bias_uniform, kaiming_uniform
from .layers import _positive_int
from .module import LoadResult, Module, Parameter, Sequential, as_rng, manual_seed
from .ops import (GELU, Add, Cast, Clip, Concat, Div, Embedding, Erf, Exp, Expand, Gather, GlobalAvgPool2d,
                  HardSigmoid, HardSwish, Identity, LayerNorm, LeakyReLU, LogSoftmax, MatMul, Mul, Neg, Pow,
                  ReduceMean, ReduceSum, ReLU6, Reshape, Sigmoid, Slice, Softmax, Split, Sqrt, Squeeze, Sub, Tanh,
                  Transpose, Unsqueeze, Where)

__all__ = [
    "Add", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Cast", "Clip", "Concat", "Conv2d", "Div", "Dropout",
    "Embedding", "Erf", "Exp", "Expand", "Flatten", "GELU", "Gather", "GlobalAvgPool2d", "Graph", "HardSigmoid",
    "HardSwish", "Identity", "LayerNorm", "LeakyReLU", "Linear", "LoadResult", "LogSoftmax", "MatMul", "MaxPool2d",
    "Module", "Mul", "Neg", "Node", "Parameter", "Pow", "ReLU", "ReLU6", "ReduceMean", "ReduceSum", "Reshape",
    "Sequential", "Sigmoid", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose",
    "Unsqueeze", "Where", "as_rng", "bias_uniform", "functional", "kaiming_uniform", "manual_seed", "mlp", "ops", "passes",
    "registry", "small_cnn",
]


def mlp(sizes: Sequence[int], *, dropout: float = 0.0, batch_norm: bool = False, rng: Any = None) -> Sequential:
    """A multilayer perceptron: Linear (+ BatchNorm1d) + ReLU (+ Dropout) between each pair of sizes.

    Parameters
    ----------
    sizes : sequence of int
        ``[in, hidden..., out]``; the last Linear has no activation.
    dropout : float, default 0.0
        Dropout after each hidden ReLU (none when 0).
    batch_norm : bool, default False
        BatchNorm1d after each hidden Linear.
    rng : int or numpy.random.Generator, optional
        Seed or generator for every layer's initial weights.

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> list(hw.nn.mlp([64, 256, 128, 10], rng=0).state_dict())
    ['0.weight', '0.bias', '2.weight', '2.bias', '4.weight', '4.bias']
    """
    if (isinstance(sizes, (str, bytes, dict)) or not hasattr(sizes, "__iter__")
            or (isinstance(sizes, np.ndarray) and sizes.ndim != 1)):
        raise TypeError(f"sizes must be a sequence of ints; got {type(sizes).__name__} {sizes!r}")
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output size; got {sizes}")
    g = as_rng(rng)
    layers: list[Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(a, b, rng=g))
        if i < len(sizes) - 2:
            if batch_norm:
                layers.append(BatchNorm1d(b))
            layers.append(ReLU())
            if dropout:
                layers.append(Dropout(dropout, rng=g.integers(2**63)))
    return Sequential(*layers)


def small_cnn(*, in_channels: int = 1, image_size: int = 8, channels: tuple[int, int] = (16, 32), hidden: int = 64,
              num_classes: int = 10, rng: Any = None) -> Sequential:
    """Two 3×3 convolutions with BatchNorm and ReLU, a 2×2 max-pool and two Linear layers.

    ``Conv(3x3, pad 1) BN ReLU  Conv(3x3, pad 1) BN ReLU  MaxPool(2)  Flatten  Linear ReLU  Linear``

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.nn.small_cnn(rng=0)(np.zeros((3, 1, 8, 8), np.float32)).shape
    (3, 10)
    """
    g = as_rng(rng)
    if not isinstance(channels, (tuple, list)) or len(channels) != 2:
        raise TypeError(f"channels must be a pair of ints; got {channels!r}")
    c1, c2 = channels
    image_size = _positive_int(image_size, "image_size")
    if image_size < 2:
        raise ValueError(f"image_size must be >= 2 (one 2x2 max-pool); got {image_size}")
    side = image_size // 2
    return Sequential(
        Conv2d(in_channels, c1, 3, padding=1, rng=g), BatchNorm2d(c1), ReLU(),
        Conv2d(c1, c2, 3, padding=1, rng=g), BatchNorm2d(c2), ReLU(),
        MaxPool2d(2), Flatten(),
        Linear(c2 * side * side, hidden, rng=g), ReLU(),
        Linear(hidden, num_classes, rng=g),
    )
