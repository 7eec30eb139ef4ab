"""Small ONNX models written the way ``torch.onnx.export`` writes them: fixtures and starting points.

The tests check the importer and exporter on them, the graph benchmark trains
them on digits, and a user can start from one (``hw.onnx.load(zoo.resnet())``).

Every builder returns an ``onnx.ModelProto`` (float32, opset 17 unless told
otherwise) with seeded random weights, sized for scikit-learn's digits:
images ``(batch, 1, 8, 8)``, flat ``(batch, 64)`` or tokens ``(batch, 8, 8)``,
10 classes. Names follow the TorchScript exporter (``dynamo=False``):

* initializers carry the ``state_dict`` names of the module (``conv1.weight``,
  ``layer1.0.bn1.running_var``); weights that torch folds or transposes at
  export get ``onnx::<Op>_<n>`` names;
* nodes are named by module path, ``/layer1/layer1.0/conv1/Conv``, their
  outputs ``/layer1/layer1.0/conv1/Conv_output_0``;
* scalars and shapes come from ``Constant`` nodes (``/attn/Constant_3``);
* the batch dimension of the input and output is the symbolic ``"batch"``.

This module needs only ``onnx`` and NumPy (nothing else of hwreg_rs), so the
fixtures can be checked on their own (``tests/test_onnx_fixtures.py``).

Examples
--------
>>> import onnx
>>> m = mlp()
>>> onnx.checker.check_model(m, full_check=True)
>>> [n.name for n in m.graph.node]
['/fc1/Gemm', '/relu/Relu', '/fc2/Gemm']
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "BATCH", "OPSET", "GraphBuilder", "all_fixtures", "cnn", "concat_branches", "digits_input", "digits_models",
    "input_for", "sample_shape",
    "make_single_op", "mlp", "mobilenetv2", "resnet", "resnet_block", "single_op", "transformer",
    "two_inputs_two_outputs",
]

OPSET = 17
BATCH = "batch"


def _ir_for(opset: int) -> int:
    """The IR version torch writes with ``opset`` (IR 8 up to opset 18, 9 for 19-20, 10 for 21:
    ``onnx.helper.VERSION_TABLE``), so ORT 1.16+ reads every fixture."""
    return 8 if opset <= 18 else (9 if opset <= 20 else 10)


class GraphBuilder:
    """Collects nodes and initializers with torch-style names; ``model()`` returns the ModelProto.

    ``scope`` is a ``/``-joined module path (``"layer1/layer1.0/conv1"``); a
    node of type ``Conv`` in it is named ``/layer1/layer1.0/conv1/Conv`` (then
    ``Conv_1``, ``Conv_2`` ... within the same scope, as torch numbers them).
    """

    def __init__(self, *, opset: int = OPSET, seed: int = 0, name: str = "main_graph") -> None:
        self.opset = int(opset)
        self.rng = np.random.default_rng(seed)
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._counts: dict[str, int] = {}
        self._onnx_counter = 100

    # -- names -------------------------------------------------------------
    def _node_name(self, scope: str, op: str) -> str:
        base = f"/{scope}/{op}" if scope else f"/{op}"
        k = self._counts.get(base, 0)
        self._counts[base] = k + 1
        return base if k == 0 else f"{base}_{k}"

    def onnx_name(self, op: str) -> str:
        """A torch-style name for a folded constant, ``onnx::MatMul_123``."""
        self._onnx_counter += 1
        return f"onnx::{op}_{self._onnx_counter}"

    # -- values ------------------------------------------------------------
    def input(self, name: str, shape: Sequence[Any], dtype: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def init(self, name: str, array: Any) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, shape: Sequence[int], *, fan_in: int | None = None, scale: float = 1.0) -> str:
        """A He-initialised float32 weight (keeps activations O(1) through deep fixtures)."""
        fan = fan_in if fan_in is not None else int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        w = self.rng.standard_normal(tuple(shape)) * (scale * math.sqrt(2.0 / max(fan, 1)))
        return self.init(name, w.astype(np.float32))

    def bias(self, name: str, n: int, scale: float = 0.1) -> str:
        return self.init(name, (self.rng.standard_normal(n) * scale).astype(np.float32))

    def const(self, scope: str, value: Any, dtype: Any = None) -> str:
        """A ``Constant`` node (torch writes scalars, axes and shape pieces this way)."""
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self._node_name(scope, "Constant")
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node("Constant", [], [out], name=name,
                                           value=numpy_helper.from_array(arr, "")))
        return out

    def node(self, scope: str, op: str, inputs: Sequence[str], n_out: int = 1, *, domain: str = "",
             outputs: Sequence[str] | None = None, **attrs: Any) -> Any:
        """Append a node; returns its output name (or a list when ``n_out > 1``)."""
        name = self._node_name(scope, op)
        outs = list(outputs) if outputs is not None else [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    # -- torch idioms ------------------------------------------------------
    def axes_arg(self, scope: str, op: str, inputs: list[str], axes: Sequence[int], since: int, **attrs: Any) -> str:
        """``op`` with ``axes`` as an input from opset ``since`` on, as an attribute before."""
        if self.opset >= since:
            return self.node(scope, op, inputs + [self.const(scope, np.array(axes, np.int64))], **attrs)
        return self.node(scope, op, inputs, axes=list(axes), **attrs)

    def unsqueeze(self, scope: str, x: str, axes: Sequence[int]) -> str:
        return self.axes_arg(scope, "Unsqueeze", [x], axes, 13)

    def squeeze(self, scope: str, x: str, axes: Sequence[int]) -> str:
        return self.axes_arg(scope, "Squeeze", [x], axes, 13)

    def reduce_mean(self, scope: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        return self.axes_arg(scope, "ReduceMean", [x], axes, 18, keepdims=keepdims)

    def dim(self, scope: str, x: str, i: int) -> str:
        """``x.shape[i]`` as torch writes it: Shape -> Gather(scalar index) -> a 0-d int64."""
        shp = self.node(scope, "Shape", [x])
        return self.node(scope, "Gather", [shp, self.const(scope, np.array(i, np.int64))], axis=0)

    def shape_of(self, scope: str, parts: Sequence[Any]) -> str:
        """A 1-D shape from dynamic 0-d pieces and ints: Unsqueeze each piece, Concat (torch's ``view(B, N, h, d)``)."""
        pieces = [self.unsqueeze(scope, p, [0]) if isinstance(p, str) else self.const(scope, np.array([p], np.int64))
                  for p in parts]
        return self.node(scope, "Concat", pieces, axis=0)

    def linear(self, scope: str, x: str, n_in: int, n_out: int, *, bias: bool = True, prefix: str | None = None) -> str:
        """``nn.Linear`` on a 2-D input: Gemm(transB=1), weight ``(out, in)`` named ``<prefix>.weight``."""
        p = prefix if prefix is not None else _prefix(scope)
        ins = [x, self.weight(f"{p}.weight", (n_out, n_in))]
        if bias:
            ins.append(self.bias(f"{p}.bias", n_out))
        return self.node(scope, "Gemm", ins, alpha=1.0, beta=1.0, transB=1)

    def linear3d(self, scope: str, x: str, n_in: int, n_out: int, *, prefix: str | None = None) -> str:
        """``nn.Linear`` on a 3-D input: MatMul with the transposed weight folded (``onnx::MatMul_n``) + Add(bias)."""
        p = prefix if prefix is not None else _prefix(scope)
        wt = self.weight(self.onnx_name("MatMul"), (n_in, n_out), fan_in=n_in)
        y = self.node(scope, "MatMul", [x, wt])
        return self.node(scope, "Add", [self.bias(f"{p}.bias", n_out), y])

    def conv(self, scope: str, x: str, c_in: int, c_out: int, k: int, *, stride: int = 1, pad: int | None = None,
             group: int = 1, dilation: int = 1, bias: bool = False, prefix: str | None = None) -> str:
        p = prefix if prefix is not None else _prefix(scope)
        pad = (k // 2) * dilation if pad is None else pad
        ins = [x, self.weight(f"{p}.weight", (c_out, c_in // group, k, k))]
        if bias:
            ins.append(self.bias(f"{p}.bias", c_out))
        return self.node(scope, "Conv", ins, dilations=[dilation, dilation], group=group, kernel_shape=[k, k],
                         pads=[pad] * 4, strides=[stride, stride])

    def batchnorm(self, scope: str, x: str, c: int, *, prefix: str | None = None) -> str:
        p = prefix if prefix is not None else _prefix(scope)
        g = self.init(f"{p}.weight", (1.0 + 0.1 * self.rng.standard_normal(c)).astype(np.float32))
        b = self.init(f"{p}.bias", (0.1 * self.rng.standard_normal(c)).astype(np.float32))
        m = self.init(f"{p}.running_mean", (0.1 * self.rng.standard_normal(c)).astype(np.float32))
        v = self.init(f"{p}.running_var", self.rng.uniform(0.5, 1.5, c).astype(np.float32))
        return self.node(scope, "BatchNormalization", [x, g, b, m, v], epsilon=1e-5, momentum=0.9)

    def conv_bn(self, scope_conv: str, scope_bn: str, x: str, c_in: int, c_out: int, k: int, *, fused: bool = False,
                **kw: Any) -> str:
        """Conv + BatchNormalization, or (``fused``) one Conv with the BN folded in, as torch's eval-mode export
        writes it (weight and bias renamed ``onnx::Conv_n``)."""
        if not fused:
            return self.batchnorm(scope_bn, self.conv(scope_conv, x, c_in, c_out, k, **kw), c_out)
        group, stride, dilation = kw.get("group", 1), kw.get("stride", 1), kw.get("dilation", 1)
        pad = (k // 2) * dilation if kw.get("pad") is None else kw["pad"]
        w = self.weight(self.onnx_name("Conv"), (c_out, c_in // group, k, k))
        b = self.bias(self.onnx_name("Conv"), c_out)
        return self.node(scope_conv, "Conv", [x, w, b], dilations=[dilation, dilation], group=group,
                         kernel_shape=[k, k], pads=[pad] * 4, strides=[stride, stride])

    def relu6(self, scope: str, x: str) -> str:
        """``nn.ReLU6`` as opset >= 11 writes it: Clip with min / max as (Constant) inputs."""
        lo = self.const(scope, np.array(0.0, np.float32))
        hi = self.const(scope, np.array(6.0, np.float32))
        return self.node(scope, "Clip", [x, lo, hi])

    def model(self, outputs: Sequence[str] | str, *, out_shapes: Sequence[Any] | None = None,
              output_names: Sequence[str] | None = None, infer: bool = True) -> onnx.ModelProto:
        """Rename the final values to ``output_names`` (default ``output``/``output_1``...) and build the model.

        Output types come from shape inference unless ``out_shapes`` declares them; the checker wants a
        shape on every graph output, so ``infer=False`` needs ``out_shapes``.
        """
        outs = [outputs] if isinstance(outputs, str) else list(outputs)
        names = list(output_names) if output_names is not None else (
            ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))])
        for old, new in zip(outs, names):
            for n in self.nodes:
                n.output[:] = [new if o == old else o for o in n.output]
                n.input[:] = [new if i == old else i for i in n.input]
        shapes = list(out_shapes) if out_shapes is not None else [None] * len(outs)
        out_vi = [helper.make_tensor_value_info(nm, TensorProto.FLOAT, s) if s is not None or not infer
                  else helper.make_empty_tensor_value_info(nm) for nm, s in zip(names, shapes)]
        graph = helper.make_graph(self.nodes, self.name, self.inputs, out_vi, initializer=self.initializers)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                              producer_name="pytorch", producer_version="2.5.0")
        m.ir_version = _ir_for(self.opset)
        if infer:
            m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
            # keep the declared output types (torch declares them) but drop inferred intermediate value_info
            del m.graph.value_info[:]
        return m


def _prefix(scope: str) -> str:
    """The state_dict prefix of the module at a torch node scope.

    Torch writes a Sequential child as ``<parent piece>.<index>``: ``layer1/layer1.0/conv1`` is
    ``layer1.0.conv1``, ``features/features.1/conv/conv.0/conv.0.0`` is ``features.1.conv.0.0``.
    """
    full: list[str] = []
    prev = None
    for piece in scope.split("/"):
        if not piece:
            continue
        if prev is not None and piece.startswith(prev + "."):
            full.append(piece[len(prev) + 1:])
        else:
            full.append(piece)
        prev = piece
    return ".".join(full)


# ---------------------------------------------------------------------------
# whole models
# ---------------------------------------------------------------------------

def mlp(sizes: Sequence[int] = (64, 32, 10), *, opset: int = OPSET, seed: int = 0) -> onnx.ModelProto:
    """``nn.Sequential``-like MLP on ``(batch, 64)``: ``/fc1/Gemm`` (transB=1), ``/relu/Relu``, ``/fc2/Gemm``.

    Hidden layers are ``fc1, fc2, ...``; ReLUs ``relu, relu_1, ...`` (torch reuses one module).
    """
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("input", [BATCH, sizes[0]])
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        x = b.linear(f"fc{i + 1}", x, n_in, n_out)
        if i < len(sizes) - 2:
            x = b.node("relu", "Relu", [x])
    return b.model(x, out_shapes=[[BATCH, sizes[-1]]])


def cnn(*, channels: Sequence[int] = (8, 16), fused_bn: bool = False, opset: int = OPSET,
        seed: int = 0) -> onnx.ModelProto:
    """Two ``conv3x3 -> BN -> ReLU -> MaxPool(2)`` stages on ``(batch, 1, 8, 8)``, Flatten, ``fc`` Gemm -> 10.

    Names: ``conv1.weight``, ``bn1.running_var``, ``/conv1/Conv``, ``/bn1/BatchNormalization``,
    ``/pool/MaxPool``, ``/Flatten``, ``/fc/Gemm``. ``fused_bn`` folds BN into the convs the way the
    TorchScript exporter does in eval mode (``onnx::Conv_n`` weights, no BatchNormalization nodes).
    """
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("input", [BATCH, 1, 8, 8])
    c_in, hw_ = 1, 8
    for i, c in enumerate(channels):
        x = b.conv_bn(f"conv{i + 1}", f"bn{i + 1}", x, c_in, c, 3, fused=fused_bn)
        x = b.node(f"relu{i + 1}", "Relu", [x])
        x = b.node("pool", "MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0],
                   ceil_mode=0, dilations=[1, 1])
        c_in, hw_ = c, hw_ // 2
    x = b.node("", "Flatten", [x], axis=1)
    x = b.linear("fc", x, c_in * hw_ * hw_, 10)
    return b.model(x, out_shapes=[[BATCH, 10]])


def _basic_block(b: GraphBuilder, x: str, scope: str, c_in: int, c_out: int, stride: int, fused_bn: bool) -> str:
    """torchvision ``BasicBlock``: conv3x3(stride)-bn-relu-conv3x3-bn, downsample conv1x1(stride)+bn, Add, Relu."""
    y = b.conv_bn(f"{scope}/conv1", f"{scope}/bn1", x, c_in, c_out, 3, stride=stride, fused=fused_bn)
    y = b.node(f"{scope}/relu", "Relu", [y])
    y = b.conv_bn(f"{scope}/conv2", f"{scope}/bn2", y, c_out, c_out, 3, fused=fused_bn)
    if stride != 1 or c_in != c_out:
        # torchvision: downsample = Sequential(conv1x1(stride), BatchNorm2d): names downsample.0 / downsample.1
        x = b.conv_bn(f"{scope}/downsample/downsample.0", f"{scope}/downsample/downsample.1", x, c_in, c_out, 1,
                      stride=stride, pad=0, fused=fused_bn)
    y = b.node(scope, "Add", [y, x])
    return b.node(f"{scope}/relu_1", "Relu", [y])


def resnet(*, widths: Sequence[int] = (8, 16), blocks: Sequence[int] = (1, 1), stem: str = "3x3",
           fused_bn: bool = False, image_size: int = 8, in_channels: int = 1, num_classes: int = 10,
           opset: int = OPSET, seed: int = 0) -> onnx.ModelProto:
    """A torchvision-style ResNet on ``(batch, in_channels, image_size, image_size)``.

    ``stem="3x3"``: conv3x3 s1 + BN + ReLU (for 8x8 digits); ``stem="7x7"``: torchvision's conv7x7 s2 p3 +
    BN + ReLU + MaxPool 3x3 s2 p1. Then ``layer1..layerN`` of BasicBlocks (the first block of every layer
    after the first has stride 2 and a 1x1 stride-2 conv + BN downsample), GlobalAveragePool, Flatten,
    ``fc`` Gemm. Initializers are named like torchvision's state_dict (``layer2.0.downsample.0.weight``).
    """
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("input", [BATCH, in_channels, image_size, image_size])
    c = widths[0]
    if stem == "7x7":
        x = b.conv_bn("conv1", "bn1", x, in_channels, c, 7, stride=2, pad=3, fused=fused_bn)
        x = b.node("relu", "Relu", [x])
        x = b.node("maxpool", "MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=0,
                   dilations=[1, 1])
    elif stem == "3x3":
        x = b.conv_bn("conv1", "bn1", x, in_channels, c, 3, fused=fused_bn)
        x = b.node("relu", "Relu", [x])
    else:
        raise ValueError(f"stem must be '3x3' or '7x7'; got {stem!r}")
    for li, (w, nb) in enumerate(zip(widths, blocks)):
        for bi in range(nb):
            stride = 2 if (li > 0 and bi == 0) else 1
            x = _block_named(b, x, f"layer{li + 1}", bi, c, w, stride, fused_bn)
            c = w
    x = b.node("avgpool", "GlobalAveragePool", [x])
    x = b.node("", "Flatten", [x], axis=1)
    x = b.linear("fc", x, c, num_classes)
    return b.model(x, out_shapes=[[BATCH, num_classes]])


def _block_named(b: GraphBuilder, x: str, layer: str, idx: int, c_in: int, c_out: int, stride: int,
                 fused_bn: bool) -> str:
    """A BasicBlock in scope ``/layer1/layer1.0``; its parameters are ``layer1.0.conv1.weight`` etc."""
    return _basic_block(b, x, f"{layer}/{layer}.{idx}", c_in, c_out, stride, fused_bn)


def resnet_block(*, channels: int = 8, out_channels: int = 16, stride: int = 2, fused_bn: bool = False,
                 opset: int = OPSET, seed: int = 0) -> onnx.ModelProto:
    """One BasicBlock on ``(batch, channels, 8, 8)`` (``layer1.0``); with stride 2 or a channel change it has
    the 1x1 downsample conv + BN branch, else the identity shortcut."""
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("input", [BATCH, channels, 8, 8])
    y = _block_named(b, x, "layer1", 0, channels, out_channels, stride, fused_bn)
    side = (8 - 1) // stride + 1
    return b.model(y, out_shapes=[[BATCH, out_channels, side, side]])


def mobilenetv2(*, settings: Sequence[tuple[int, int, int, int]] = ((1, 8, 1, 1), (2, 16, 2, 2), (2, 16, 1, 1)),
                stem: int = 8, last: int = 32, fused_bn: bool = False, image_size: int = 8, in_channels: int = 1,
                num_classes: int = 10, opset: int = OPSET, seed: int = 0) -> onnx.ModelProto:
    """A torchvision-style MobileNetV2 on ``(batch, 1, 8, 8)``.

    ``settings`` rows are torchvision's ``(t, c, n, s)``: expansion, channels, repeats, stride. An
    InvertedResidual is ``[1x1 expand conv + BN + ReLU6]`` (when t != 1), depthwise 3x3 conv
    (``group=C``) + BN + ReLU6, 1x1 project conv + BN, and a residual Add when stride is 1 and the
    channels match. ReLU6 is ``Clip(x, min, max)`` with Constant inputs. Names follow torchvision:
    ``features.2.conv.0.0.weight`` (expand), ``features.2.conv.1.0.weight`` (depthwise),
    ``features.2.conv.2.weight`` (project), ``features.2.conv.3.*`` (its BN); node scopes
    ``/features/features.2/conv/conv.1/conv.1.0/Conv``; head ``features.N.0`` conv + ``features.N.1``
    BN + ReLU6, GlobalAveragePool, Flatten, ``classifier.1`` Gemm (the Dropout is gone in eval mode).
    """
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("input", [BATCH, in_channels, image_size, image_size])

    def cbr(x: str, scope: str, c_in: int, c_out: int, k: int, stride: int = 1, group: int = 1) -> str:
        # torchvision Conv2dNormActivation = Sequential(conv, bn, relu6): children <piece>.0 / .1 / .2
        piece = scope.split("/")[-1]
        y = b.conv_bn(f"{scope}/{piece}.0", f"{scope}/{piece}.1", x, c_in, c_out, k, stride=stride, group=group,
                      fused=fused_bn)
        return b.relu6(f"{scope}/{piece}.2", y)

    x = cbr(x, "features/features.0", in_channels, stem, 3)
    c = stem
    fi = 1
    for t, c_out, n, s in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = c * t
            block = f"features/features.{fi}/conv"
            y = x
            j = 0
            if t != 1:
                y = cbr(y, f"{block}/conv.{j}", c, hidden, 1)
                j += 1
            y = cbr(y, f"{block}/conv.{j}", hidden, hidden, 3, stride=stride, group=hidden)
            j += 1
            y = b.conv_bn(f"{block}/conv.{j}", f"{block}/conv.{j + 1}", y, hidden, c_out, 1, pad=0, fused=fused_bn)
            if stride == 1 and c == c_out:
                y = b.node(f"features/features.{fi}", "Add", [x, y])
            x, c = y, c_out
            fi += 1
    x = cbr(x, f"features/features.{fi}", c, last, 1)
    x = b.node("", "GlobalAveragePool", [x])
    x = b.node("", "Flatten", [x], axis=1)
    x = b.linear("classifier/classifier.1", x, last, num_classes)
    return b.model(x, out_shapes=[[BATCH, num_classes]])


def transformer(*, d_model: int = 8, heads: int = 2, ffn: int = 16, tokens: int = 8, layer_norm: str = "op",
                pool: str = "mean", causal: bool | str = False, flat_input: bool = False, eps: float = 1e-5,
                opset: int = OPSET, seed: int = 0) -> onnx.ModelProto:
    """One post-norm encoder layer on ``(batch, 8, 8)`` (digit rows as tokens), then a classifier.

    The attention is written as torch exports a hand-written multi-head attention module:
    ``q = x @ Wq^T + bq`` (MatMul with an ``onnx::MatMul_n`` constant, then Add), then
    ``q.view(B, N, h, d).transpose(1, 2)`` as Shape -> Gather -> Unsqueeze -> Concat -> Reshape ->
    Transpose, ``q @ k.transpose(-2, -1) / sqrt(d)`` (Transpose, MatMul, Div by a Constant),
    [``causal=True``: GPT-2's ``masked_fill(bias[:, :, :N, :N] == 0, -inf)`` as Slice (ends from Shape) ->
    Equal -> Where; ``causal="expand"``: Equal -> Expand(Shape(scores)) -> Where],
    Softmax(axis=-1), ``@ v``, transpose back and ``reshape(B, N, C)`` (again from Shape pieces),
    out-projection, residual Add, LayerNorm; FFN ``Linear -> GELU -> Linear`` with GELU written with Erf
    (``x * 0.5 * (1 + erf(x / sqrt 2))`` as Div, Erf, Add, Mul, Mul), residual, LayerNorm.

    ``layer_norm="op"`` writes ``LayerNormalization`` (opset >= 17), ``"decomposed"`` the
    ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div / Mul / Add pattern torch writes below
    opset 17. ``pool="mean"`` averages the tokens (ReduceMean axis 1), ``"first"`` takes token 0
    (Gather on axis 1). ``flat_input`` takes ``(batch, 64)`` and views it as ``(B, 8, 8)`` with a
    Shape-derived Reshape. The classifier is ``head`` Gemm -> 10.
    """
    if layer_norm not in ("op", "decomposed"):
        raise ValueError(f"layer_norm must be 'op' or 'decomposed'; got {layer_norm!r}")
    if layer_norm == "op" and opset < 17:
        raise ValueError("LayerNormalization needs opset >= 17")
    d = d_model // heads
    b = GraphBuilder(opset=opset, seed=seed)
    if flat_input:
        x0 = b.input("input", [BATCH, tokens * d_model])
        bsz = b.dim("", x0, 0)
        x = b.node("", "Reshape", [x0, b.shape_of("", [bsz, tokens, d_model])])
    else:
        x = b.input("input", [BATCH, tokens, d_model])

    def split_heads(scope: str, t: str) -> str:
        B = b.dim(scope, t, 0)
        N = b.dim(scope, t, 1)
        t = b.node(scope, "Reshape", [t, b.shape_of(scope, [B, N, heads, d])])
        return b.node(scope, "Transpose", [t], perm=[0, 2, 1, 3])

    def layernorm(scope: str, t: str, prefix: str) -> str:
        w = b.init(f"{prefix}.weight", (1.0 + 0.1 * b.rng.standard_normal(d_model)).astype(np.float32))
        bb = b.init(f"{prefix}.bias", (0.1 * b.rng.standard_normal(d_model)).astype(np.float32))
        if layer_norm == "op":
            return b.node(scope, "LayerNormalization", [t, w, bb], axis=-1, epsilon=eps)
        mean = b.reduce_mean(scope, t, [-1])
        diff = b.node(scope, "Sub", [t, mean])
        sq = b.node(scope, "Pow", [diff, b.const(scope, np.array(2.0, np.float32))])
        var = b.reduce_mean(scope, sq, [-1])
        std = b.node(scope, "Sqrt", [b.node(scope, "Add", [var, b.const(scope, np.array(eps, np.float32))])])
        y = b.node(scope, "Div", [diff, std])
        return b.node(scope, "Add", [b.node(scope, "Mul", [y, w]), bb])

    sa = "layer/self_attn"
    q = split_heads(sa, b.linear3d(f"{sa}/q_proj", x, d_model, d_model, prefix="layer.self_attn.q_proj"))
    k = split_heads(sa, b.linear3d(f"{sa}/k_proj", x, d_model, d_model, prefix="layer.self_attn.k_proj"))
    v = split_heads(sa, b.linear3d(f"{sa}/v_proj", x, d_model, d_model, prefix="layer.self_attn.v_proj"))
    kt = b.node(sa, "Transpose", [k], perm=[0, 1, 3, 2])
    s = b.node(sa, "MatMul", [q, kt])
    s = b.node(sa, "Div", [s, b.const(sa, np.array(math.sqrt(d), np.float32))])
    if causal == "expand":
        mask = b.init("layer.self_attn.mask", np.tril(np.ones((tokens, tokens), np.float32)))
        eq = b.node(sa, "Equal", [mask, b.const(sa, np.array(0.0, np.float32))])
        eq = b.node(sa, "Expand", [eq, b.node(sa, "Shape", [s])])
        s = b.node(sa, "Where", [eq, b.const(sa, np.array(-np.inf, np.float32)), s])
    elif causal:
        # GPT-2 style: a (1, 1, T, T) buffer sliced to the sequence length, ``masked_fill(mask[..] == 0, -inf)``
        mask = b.init("layer.self_attn.bias", np.tril(np.ones((tokens, tokens), np.float32))[None, None])
        n = b.unsqueeze(sa, b.dim(sa, x, 1), [0])
        zero = b.const(sa, np.array([0], np.int64))
        m2 = b.node(sa, "Slice", [mask, zero, n, b.const(sa, np.array([2], np.int64)),
                                  b.const(sa, np.array([1], np.int64))])
        m3 = b.node(sa, "Slice", [m2, zero, n, b.const(sa, np.array([3], np.int64)),
                                  b.const(sa, np.array([1], np.int64))])
        eq = b.node(sa, "Equal", [m3, b.const(sa, np.array(0.0, np.float32))])
        s = b.node(sa, "Where", [eq, b.const(sa, np.array(-np.inf, np.float32)), s])
    p = b.node(sa, "Softmax", [s], axis=-1)
    o = b.node(sa, "MatMul", [p, v])
    o = b.node(sa, "Transpose", [o], perm=[0, 2, 1, 3])
    B = b.dim(sa, o, 0)
    N = b.dim(sa, o, 1)
    o = b.node(sa, "Reshape", [o, b.shape_of(sa, [B, N, d_model])])
    o = b.linear3d(f"{sa}/out_proj", o, d_model, d_model, prefix="layer.self_attn.out_proj")
    x = b.node("layer", "Add", [x, o])
    x = layernorm("layer/norm1", x, "layer.norm1")
    h = b.linear3d("layer/linear1", x, d_model, ffn, prefix="layer.linear1")
    g = b.node("layer/activation", "Div", [h, b.const("layer/activation", np.array(math.sqrt(2.0), np.float32))])
    g = b.node("layer/activation", "Erf", [g])
    g = b.node("layer/activation", "Add", [g, b.const("layer/activation", np.array(1.0, np.float32))])
    g = b.node("layer/activation", "Mul", [h, g])
    g = b.node("layer/activation", "Mul", [g, b.const("layer/activation", np.array(0.5, np.float32))])
    h = b.linear3d("layer/linear2", g, ffn, d_model, prefix="layer.linear2")
    x = b.node("layer", "Add", [x, h])
    x = layernorm("layer/norm2", x, "layer.norm2")
    if pool == "mean":
        x = b.reduce_mean("", x, [1], keepdims=0)
    elif pool == "first":
        x = b.node("", "Gather", [x, b.const("", np.array(0, np.int64))], axis=1)
    else:
        raise ValueError(f"pool must be 'mean' or 'first'; got {pool!r}")
    x = b.linear("head", x, d_model, 10)
    return b.model(x, out_shapes=[[BATCH, 10]])


def concat_branches(*, opset: int = OPSET, seed: int = 0) -> onnx.ModelProto:
    """Two conv branches on ``(batch, 1, 8, 8)`` (1x1 -> 4 ch and 3x3 -> 4 ch, each + bias + ReLU), Concat on
    channels, MaxPool(2), Flatten, ``fc`` Gemm -> 10 (an Inception-style fork and join)."""
    b = GraphBuilder(opset=opset, seed=seed)
    x = b.input("input", [BATCH, 1, 8, 8])
    a = b.node("branch_a/relu", "Relu", [b.conv("branch_a/conv", x, 1, 4, 1, pad=0, bias=True,
                                                 prefix="branch_a.conv")])
    c = b.node("branch_b/relu", "Relu", [b.conv("branch_b/conv", x, 1, 4, 3, bias=True, prefix="branch_b.conv")])
    y = b.node("", "Concat", [a, c], axis=1)
    y = b.node("pool", "MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.node("", "Flatten", [y], axis=1)
    y = b.linear("fc", y, 8 * 4 * 4, 10)
    return b.model(y, out_shapes=[[BATCH, 10]])


def two_inputs_two_outputs(*, opset: int = OPSET, seed: int = 0) -> onnx.ModelProto:
    """``(x1 (batch, 64), x2 (batch, 64))`` -> ``(fc(x1 + x2), relu(x1 * x2))``: several inputs and outputs."""
    b = GraphBuilder(opset=opset, seed=seed)
    x1 = b.input("x1", [BATCH, 64])
    x2 = b.input("x2", [BATCH, 64])
    s = b.node("", "Add", [x1, x2])
    y1 = b.linear("fc", s, 64, 10)
    y2 = b.node("", "Relu", [b.node("", "Mul", [x1, x2])])
    return b.model([y1, y2], out_shapes=[[BATCH, 10], [BATCH, 64]])


# ---------------------------------------------------------------------------
# single ops
# ---------------------------------------------------------------------------

def make_single_op(op_type: str, inputs: Sequence[tuple[str, Any]], *, initializers: dict[str, Any] | None = None,
                   n_outputs: int = 1, opset: int = OPSET, domain: str = "", infer: bool = True,
                   out_shapes: Sequence[Any] | None = None, **attrs: Any) -> onnx.ModelProto:
    """A model of one node named ``/op/<op_type>``.

    ``inputs`` lists the node's inputs in order as ``(name, shape)`` for a graph input (float32, the shape
    may hold ``"batch"``), or ``(name, array)`` for an initializer; ``""`` as a name skips an optional
    input. Output types are inferred (``onnx.shape_inference``) unless ``out_shapes`` declares them
    (float32); the checker wants a shape on every graph output, so give ``out_shapes`` with
    ``infer=False`` or where inference cannot know the rank. Outputs are ``output`` / ``output_1`` ...
    """
    b = GraphBuilder(opset=opset)
    names = []
    for name, spec in inputs:
        if name == "":
            names.append("")
        elif isinstance(spec, np.ndarray):
            names.append(b.init(name, spec))
        else:
            names.append(b.input(name, list(spec)))
    for name, arr in (initializers or {}).items():
        b.init(name, arr)
    outs = ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
    b.nodes.append(helper.make_node(op_type, names, outs, name=f"/op/{op_type}", domain=domain or None, **attrs))
    shapes = list(out_shapes) if out_shapes is not None else [None] * len(outs)
    out_vi = [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) if s is not None or not infer
              else helper.make_empty_tensor_value_info(o) for o, s in zip(outs, shapes)]
    graph = helper.make_graph(b.nodes, "main_graph", b.inputs, out_vi, initializer=b.initializers)
    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    m = helper.make_model(graph, opset_imports=ops, producer_name="hwreg_rs-tests")
    m.ir_version = _ir_for(opset)
    if infer:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        del m.graph.value_info[:]  # outputs keep their inferred types; no duplicate (possibly shapeless) entries
    return m


def single_op(op_type: str, shape: Sequence[Any] = (2, 3, 8, 8), *, opset: int = OPSET,
              **attrs: Any) -> onnx.ModelProto:
    """A unary op on one float input ``x`` of ``shape`` (``Relu``, ``Softmax(axis=1)``, ``MaxPool(kernel_shape=..)``).

    Examples
    --------
    >>> single_op("Softmax", ("batch", 10), axis=-1).graph.node[0].name
    '/op/Softmax'
    """
    return make_single_op(op_type, [("x", list(shape))], opset=opset, **attrs)


# ---------------------------------------------------------------------------
# helpers for the tests
# ---------------------------------------------------------------------------

def input_for(model: onnx.ModelProto, batch: int = 2, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 feeds for the graph inputs (not initializers), the symbolic batch set to ``batch``.

    Digit-like data: uniform in [0, 1) as ``hw.data.load_digits`` scales pixels.
    """
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.random(dims, dtype=np.float32)
    return feeds


def all_fixtures() -> dict[str, onnx.ModelProto]:
    """Every whole-model fixture (with its main variants), keyed by a test id."""
    return {
        "mlp": mlp(),
        "mlp_opset13": mlp(opset=13),
        "mlp_opset21": mlp(opset=21),
        "cnn": cnn(),
        "cnn_fused_bn": cnn(fused_bn=True),
        "resnet_block_down": resnet_block(),
        "resnet_block_identity": resnet_block(channels=8, out_channels=8, stride=1),
        "resnet": resnet(),
        "resnet_fused_bn": resnet(fused_bn=True),
        "resnet_7x7_stem": resnet(stem="7x7", image_size=16, widths=(8, 16), blocks=(2, 1)),
        "resnet_opset13": resnet(opset=13),
        "resnet_opset21": resnet(opset=21, fused_bn=True),
        "cnn_opset21": cnn(opset=21),
        "mobilenetv2": mobilenetv2(),
        "mobilenetv2_fused_bn": mobilenetv2(fused_bn=True),
        "mobilenetv2_opset13": mobilenetv2(opset=13),
        "transformer": transformer(),
        "transformer_decomposed_ln": transformer(layer_norm="decomposed"),
        "transformer_decomposed_ln_opset13": transformer(layer_norm="decomposed", opset=13),
        "transformer_decomposed_ln_opset18": transformer(layer_norm="decomposed", opset=18),
        "transformer_first_token": transformer(pool="first"),
        "transformer_causal": transformer(causal=True),
        "transformer_causal_expand": transformer(causal="expand"),
        "transformer_flat_input": transformer(flat_input=True),
        "transformer_opset21": transformer(opset=21),
        "concat_branches": concat_branches(),
        "two_inputs_two_outputs": two_inputs_two_outputs(),
    }


def digits_input(model: onnx.ModelProto, X: np.ndarray) -> np.ndarray:
    """Reshape digits ``(n, 64)`` to what the model's (first) input declares: ``(n, 64)``, ``(n, 1, 8, 8)`` or
    ``(n, 8, 8)``."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    return np.ascontiguousarray(X.reshape((len(X),) + tuple(dims)), dtype=np.float32)


def iter_nodes(model: onnx.ModelProto, op_type: str) -> Iterable[onnx.NodeProto]:
    return (n for n in model.graph.node if n.op_type == op_type)


def digits_models(*, seed: int = 0) -> dict[str, onnx.ModelProto]:
    """The five architectures of the benchmarks and the README, untrained: an MLP, a plain CNN, a
    ResNet, a MobileNetV2-style net and a transformer encoder (8 tokens of 8 pixels).

    Examples
    --------
    >>> sorted(digits_models())
    ['cnn', 'mlp', 'mobilenetv2', 'resnet', 'transformer']
    """
    return {"mlp": mlp(seed=seed), "cnn": cnn(seed=seed), "resnet": resnet(seed=seed),
            "mobilenetv2": mobilenetv2(seed=seed), "transformer": transformer(ffn=32, seed=seed)}


def sample_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """The shape of one sample of the model's first input (its declared dims after the batch).

    Examples
    --------
    >>> sample_shape(cnn())
    (1, 8, 8)
    """
    inits = {t.name for t in model.graph.initializer}
    vi = next(v for v in model.graph.input if v.name not in inits)
    return tuple(int(d.dim_value) for d in vi.type.tensor_type.shape.dim[1:])
