"""Convert MediaPipe's ``face_landmark.tflite`` to a :class:`~retinaserve.models.facemesh.FaceMeshNet` state_dict.

The flatbuffer is read with PyPI ``tflite`` (generated accessors only, imported lazily: conversion is the only
step that needs it), so neither TensorFlow, mediapipe nor a TFLite interpreter is involved. The FP16 weights
behind the graph's ``DEQUANTIZE`` ops are widened to float32 and transposed to PyTorch layouts (``CONV_2D``
OHWI -> OIHW, ``DEPTHWISE_CONV_2D`` 1HWC -> C1HW, PReLU alpha (1, 1, C) -> (C,)).

Every operator is matched to our module through an explicit layer table (the Keras layer names kept in the
file) and checked: operator type, the tensor it reads (so the wiring, residual skips and branch split are
those of our ``forward``), stride, padding (TFLite ``SAME``/``VALID`` resolved to pixels and compared with
what our module pads), dilation, fused activation, max-pool window, the channel padding of the skip path,
and every tensor shape. A file that differs in any of these, holds extra operators, or leaves a weight
unused is refused with :class:`~retinaserve.errors.WeightsIntegrityError`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ..errors import WeightsIntegrityError
from ..models.facemesh import INPUT_SIZE, ConvPReLU, FaceMeshNet, ResidualBlock
from .converted import META_FILENAME, MODEL_FILENAME, read_converted, write_converted

__all__ = [
    "CONVERSION_VERSION",
    "FACE_LANDMARK_SHA256",
    "META_FILENAME",
    "MODEL_FILENAME",
    "OUTPUT_NAMES",
    "convert_facemesh_tflite",
    "load_facemesh",
    "save_facemesh",
]

log = logging.getLogger(__name__)

CONVERSION_VERSION = 1
"""Bumped whenever the converted tensors or ``meta.json`` would change; older caches are then refused."""
FACE_LANDMARK_SHA256 = "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"
"""sha256 of ``mediapipe/modules/face_landmark/face_landmark.tflite`` in PyPI ``mediapipe==0.10.21``."""
OUTPUT_NAMES = ("conv2d_21", "conv2d_31")
"""The graph outputs, in file order: 1404 landmark values, then the face-presence logit."""
PROVISION_HINT = (
    "convert face_landmark.tflite (from PyPI mediapipe==0.10.21, mediapipe/modules/face_landmark/) with "
    "retinaserve.weights.tflite_facemesh.convert_facemesh_tflite and save_facemesh"
)

_PADDINGS = {0: "SAME", 1: "VALID"}
"""``tflite.Padding`` enum."""
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
"""``tflite.ActivationFunctionType`` enum."""


# --------------------------------------------------------------------------------------------------------------
# Layer table: TFLite (Keras) layer names -> our modules


@dataclass(frozen=True)
class _ConvLayers:
    """A conv + PReLU unit (:class:`ConvPReLU`) and the TFLite names of its two layers."""

    module: str
    conv: str
    prelu: str


@dataclass(frozen=True)
class _BlockLayers:
    """A :class:`ResidualBlock` and the TFLite names of its layers (pool and channel pad only on stride 2)."""

    module: str
    depthwise: str
    pointwise: str
    add: str
    prelu: str
    pool: str | None = None
    channel_pad: str | None = None


def _block(
    module: str, dw: int, conv: int, add: int, prelu: int, pool: int | None = None, pad: int | None = None
) -> _BlockLayers:
    return _BlockLayers(
        module,
        f"depthwise_conv2d_{dw}",
        f"conv2d_{conv}",
        f"add_{add}",
        f"p_re_lu_{prelu}",
        None if pool is None else f"max_pooling2d_{pool}",
        None if pad is None else f"channel_padding_{pad}",
    )


@dataclass(frozen=True)
class _BranchLayers:
    """One head's branch (:class:`FaceMeshBranch`) and its final convolution, which is a graph output."""

    module: str
    blocks: tuple[_BlockLayers, ...]
    reduce: _ConvLayers
    refine: _BlockLayers
    head_module: str
    head: str


# Keras numbering: the presence branch's layers come after those of heads MediaPipe stripped from this file
# (depthwise_conv2d_19..22, conv2d_22..27, p_re_lu_21..25, max_pooling2d_6 are absent).
_STEM = _ConvLayers("stem", "conv2d_1", "p_re_lu_1")
_TRUNK = (
    _block("blocks.0", dw=1, conv=2, add=1, prelu=2),
    _block("blocks.1", dw=2, conv=3, add=2, prelu=3),
    _block("blocks.2", dw=3, conv=4, add=3, prelu=4, pool=1, pad=1),
    _block("blocks.3", dw=4, conv=5, add=4, prelu=5),
    _block("blocks.4", dw=5, conv=6, add=5, prelu=6),
    _block("blocks.5", dw=6, conv=7, add=6, prelu=7, pool=2, pad=2),
    _block("blocks.6", dw=7, conv=8, add=7, prelu=8),
    _block("blocks.7", dw=8, conv=9, add=8, prelu=9),
    _block("blocks.8", dw=9, conv=10, add=9, prelu=10, pool=3, pad=3),
    _block("blocks.9", dw=10, conv=11, add=10, prelu=11),
    _block("blocks.10", dw=11, conv=12, add=11, prelu=12),
    _block("blocks.11", dw=12, conv=13, add=12, prelu=13, pool=4),
    _block("blocks.12", dw=13, conv=14, add=13, prelu=14),
    _block("blocks.13", dw=14, conv=15, add=14, prelu=15),
)
_LANDMARKS = _BranchLayers(
    "landmarks_branch",
    blocks=(
        _block("landmarks_branch.blocks.0", dw=15, conv=16, add=15, prelu=16, pool=5),
        _block("landmarks_branch.blocks.1", dw=16, conv=17, add=16, prelu=17),
        _block("landmarks_branch.blocks.2", dw=17, conv=18, add=17, prelu=18),
    ),
    reduce=_ConvLayers("landmarks_branch.reduce", "conv2d_19", "p_re_lu_19"),
    refine=_block("landmarks_branch.refine", dw=18, conv=20, add=18, prelu=20),
    head_module="landmarks_head",
    head=OUTPUT_NAMES[0],
)
_PRESENCE = _BranchLayers(
    "presence_branch",
    blocks=(_block("presence_branch.blocks.0", dw=23, conv=28, add=23, prelu=26, pool=7),),
    reduce=_ConvLayers("presence_branch.reduce", "conv2d_29", "p_re_lu_27"),
    refine=_block("presence_branch.refine", dw=24, conv=30, add=24, prelu=28),
    head_module="presence_head",
    head=OUTPUT_NAMES[1],
)


# --------------------------------------------------------------------------------------------------------------
# Flatbuffer reading


@dataclass(frozen=True)
class _Tensor:
    """A TFLite tensor: name, NHWC shape, element type and, for constants, the raw buffer."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    data: bytes | None


@dataclass(frozen=True)
class _Operator:
    """A TFLite operator: builtin name, tensor indices (-1 = absent optional input) and decoded options."""

    index: int
    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Mapping[str, Any]


@dataclass(frozen=True)
class _TfliteGraph:
    """The single subgraph of a TFLite model."""

    version: int
    tensors: tuple[_Tensor, ...]
    operators: tuple[_Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def _decode_options(tflite: Any, op: Any, kind: str) -> dict[str, Any]:
    """The builtin options we check, for the operator kinds this graph holds (others: none)."""
    option_classes = {
        "CONV_2D": "Conv2DOptions",
        "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
        "MAX_POOL_2D": "Pool2DOptions",
        "ADD": "AddOptions",
    }
    if kind not in option_classes:
        return {}
    class_name = option_classes[kind]
    table = op.BuiltinOptions()
    if table is None or op.BuiltinOptionsType() != getattr(tflite.BuiltinOptions, class_name):
        raise WeightsIntegrityError(f"TFLite operator {kind} carries no {class_name}")
    options = getattr(tflite, class_name)()
    options.Init(table.Bytes, table.Pos)
    decoded: dict[str, Any] = {"activation": _ACTIVATIONS.get(options.FusedActivationFunction(), "?")}
    if kind == "ADD":
        return decoded
    decoded["stride"] = (options.StrideH(), options.StrideW())
    decoded["padding"] = _PADDINGS.get(options.Padding(), "?")
    if kind == "MAX_POOL_2D":
        decoded["window"] = (options.FilterHeight(), options.FilterWidth())
    else:
        decoded["dilation"] = (options.DilationHFactor(), options.DilationWFactor())
    if kind == "DEPTHWISE_CONV_2D":
        decoded["depth_multiplier"] = options.DepthMultiplier()
    return decoded


def _read_tflite(data: bytes) -> tuple[_TfliteGraph, str]:
    """Decode the flatbuffer into plain records; returns (graph, model description)."""
    import tflite

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise WeightsIntegrityError(f"not a TFLite flatbuffer (no TFL3 identifier); {PROVISION_HINT}")
    builtin_names = {value: name for name, value in vars(tflite.BuiltinOperator).items() if not name.startswith("_")}
    type_names = {value: name for name, value in vars(tflite.TensorType).items() if not name.startswith("_")}
    model = tflite.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() != 1:
        raise WeightsIntegrityError(f"expected one TFLite subgraph, found {model.SubgraphsLength()}")
    subgraph = model.Subgraphs(0)
    tensors = []
    for index in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(index)
        buffer = model.Buffers(tensor.Buffer())
        contents: bytes | None = None
        if buffer.Offset() > 1:  # large models keep buffers after the flatbuffer, addressed by offset
            contents = data[buffer.Offset() : buffer.Offset() + buffer.Size()]
        elif buffer.DataLength() > 0:
            contents = buffer.DataAsNumpy().tobytes()
        shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        dtype = type_names.get(tensor.Type(), f"type {tensor.Type()}")
        tensors.append(_Tensor(tensor.Name().decode(), shape, dtype, contents))
    operators = []
    for index in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(index)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # the deprecated int8 field caps at 127
        kind = builtin_names.get(builtin, f"builtin {builtin}")
        if kind == "CUSTOM":
            kind = f"CUSTOM {(code.CustomCode() or b'').decode()!r}"
        inputs = tuple(int(i) for i in op.InputsAsNumpy()) if op.InputsLength() else ()
        outputs = tuple(int(i) for i in op.OutputsAsNumpy()) if op.OutputsLength() else ()
        if any(not -1 <= i < len(tensors) for i in inputs) or any(not 0 <= i < len(tensors) for i in outputs):
            raise WeightsIntegrityError(f"TFLite operator {index} ({kind}) refers to a tensor that does not exist")
        operators.append(_Operator(index, kind, inputs, outputs, _decode_options(tflite, op, kind)))
    graph = _TfliteGraph(
        version=model.Version(),
        tensors=tuple(tensors),
        operators=tuple(operators),
        inputs=tuple(int(i) for i in subgraph.InputsAsNumpy()),
        outputs=tuple(int(i) for i in subgraph.OutputsAsNumpy()),
    )
    return graph, (model.Description() or b"").decode(errors="replace")


def _parse(data: bytes) -> tuple[_TfliteGraph, str]:
    try:
        return _read_tflite(data)
    except WeightsIntegrityError:
        raise
    except Exception as exc:  # the generated accessors raise struct/index/value/unicode errors on damaged bytes
        raise WeightsIntegrityError(
            f"the TFLite file cannot be decoded ({type(exc).__name__}: {exc}); it is truncated or damaged. "
            f"{PROVISION_HINT}"
        ) from exc


# --------------------------------------------------------------------------------------------------------------
# Matching the graph to FaceMeshNet


def _tf_pads(padding: str, size: int, window: int, stride: int) -> tuple[int, int]:
    """Pixels TFLite pads before and after one spatial axis for ``SAME``/``VALID`` (``SAME`` puts the odd one after)."""
    if padding == "VALID":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _activation_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """NHWC shape of every conv, PReLU and max-pool output of ``model`` for one 192x192 crop, by module path."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.PReLU | nn.MaxPool2d):

            def record(_: nn.Module, __: Any, out: torch.Tensor, path: str = path) -> None:
                n, c, h, w = out.shape
                shapes[path] = (n, h, w, c)

            handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _submodule(model: nn.Module, path: str, kind: type[ModuleT]) -> ModuleT:
    module = model.get_submodule(path)
    if not isinstance(module, kind):
        raise TypeError(f"layer table out of sync with FaceMeshNet: {path} is a {type(module).__name__}")
    return module


class _GraphMapper:
    """Walks the layer table, checking each TFLite operator against our module and collecting the weights."""

    def __init__(self, graph: _TfliteGraph, model: FaceMeshNet) -> None:
        self.graph = graph
        self.model = model
        self.expected = model.state_dict()
        self.shapes = _activation_shapes(model)
        self.state: dict[str, torch.Tensor] = {}
        self.claimed: set[int] = set()
        self.producers: dict[str, _Operator] = {}
        for op in graph.operators:
            for index in op.outputs:
                name = graph.tensors[index].name
                if name in self.producers:
                    raise WeightsIntegrityError(f"two TFLite operators write a tensor named {name!r}")
                self.producers[name] = op

    # -- helpers -----------------------------------------------------------------------------------------------

    def _name(self, index: int) -> str:
        return self.graph.tensors[index].name if index >= 0 else "(none)"

    def operator(self, output: str, kind: str, reads: str | None, *, inputs: int) -> _Operator:
        """The operator writing tensor ``output``; raises unless it is a ``kind`` whose data input is ``reads``."""
        op = self.producers.get(output)
        if op is None:
            raise WeightsIntegrityError(f"the TFLite graph has no tensor {output!r}: not the expected face_landmark")
        if op.kind != kind:
            raise WeightsIntegrityError(f"TFLite {output!r} comes from a {op.kind}, FaceMeshNet expects a {kind}")
        if len(op.inputs) != inputs or len(op.outputs) != 1:
            raise WeightsIntegrityError(
                f"TFLite {kind} {output!r} has {len(op.inputs)} inputs / {len(op.outputs)} outputs, expected {inputs}/1"
            )
        if reads is not None and self._name(op.inputs[0]) != reads:
            raise WeightsIntegrityError(
                f"wiring mismatch: TFLite {output!r} reads {self._name(op.inputs[0])!r}, FaceMeshNet reads {reads!r}"
            )
        if op.index in self.claimed:
            raise WeightsIntegrityError(f"TFLite operator {op.index} ({output!r}) matched twice")
        self.claimed.add(op.index)
        return op

    def check_shape(self, output: str, module_path: str) -> None:
        actual = self.graph.tensors[self.producers[output].outputs[0]].shape
        ours = self.shapes[module_path]
        if actual != ours:
            raise WeightsIntegrityError(f"TFLite {output!r} has shape {actual}, FaceMeshNet's {module_path} {ours}")

    def weight(
        self, op: _Operator, slot: int, name: str, key: str, to_torch: Callable[[np.ndarray], np.ndarray]
    ) -> None:
        """Put the FP16 constant behind ``op``'s input ``slot`` (through its DEQUANTIZE) into ``state[key]``."""
        index = op.inputs[slot]
        dequantize = self.producers.get(self._name(index))
        if dequantize is None or dequantize.kind != "DEQUANTIZE" or len(dequantize.inputs) != 1:
            raise WeightsIntegrityError(f"TFLite {self._name(index)!r} is not a DEQUANTIZE of FP16 weights")
        source, widened = self.graph.tensors[dequantize.inputs[0]], self.graph.tensors[index]
        if source.name != name or source.dtype != "FLOAT16" or source.data is None:
            raise WeightsIntegrityError(
                f"TFLite weight for {key} is {source.name!r} ({source.dtype}), expected FP16 constant {name!r}"
            )
        if widened.dtype != "FLOAT32" or widened.shape != source.shape:
            raise WeightsIntegrityError(
                f"DEQUANTIZE of {name!r} ({source.dtype} {source.shape}) gives {widened.dtype} {widened.shape}: "
                "the file is damaged"
            )
        if len(source.data) != 2 * math.prod(source.shape):
            raise WeightsIntegrityError(
                f"TFLite constant {name!r} of shape {source.shape} holds {len(source.data)} bytes, "
                f"expected {2 * math.prod(source.shape)}: the file is damaged"
            )
        if dequantize.index in self.claimed:
            raise WeightsIntegrityError(f"TFLite constant {name!r} feeds two layers")
        self.claimed.add(dequantize.index)
        array = np.frombuffer(source.data, dtype="<f2").reshape(source.shape).astype(np.float32)
        self.put(key, to_torch(array), name)

    def put(self, key: str, array: np.ndarray, origin: str) -> None:
        if key not in self.expected or key in self.state:
            raise WeightsIntegrityError(f"layer table mismatch: {origin} maps to {key!r} (unknown or filled twice)")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if tensor.shape != self.expected[key].shape:
            raise WeightsIntegrityError(
                f"TFLite {origin!r} gives {key} the shape {tuple(tensor.shape)}, FaceMeshNet needs "
                f"{tuple(self.expected[key].shape)}"
            )
        self.state[key] = tensor

    # -- layers ------------------------------------------------------------------------------------------------

    def conv(self, path: str, name: str, reads: str, *, pads_bottom_right: bool = False) -> str:
        """A CONV_2D or DEPTHWISE_CONV_2D written to ``name`` against our ``nn.Conv2d`` at ``path``."""
        conv = _submodule(self.model, path, nn.Conv2d)
        depthwise = conv.groups > 1
        if depthwise and conv.groups != conv.in_channels:
            raise TypeError(f"{path} is a grouped, not a depthwise, convolution")
        op = self.operator(name, "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", reads, inputs=3)
        problems = []
        if op.options["stride"] != conv.stride:
            problems.append(f"stride {op.options['stride']} vs ours {conv.stride}")
        if op.options["dilation"] != conv.dilation:
            problems.append(f"dilation {op.options['dilation']} vs ours {conv.dilation}")
        if op.options["activation"] != "NONE":
            problems.append(f"fused activation {op.options['activation']} vs ours none")
        if depthwise and op.options["depth_multiplier"] != 1:
            problems.append(f"depth multiplier {op.options['depth_multiplier']} vs ours 1")
        in_shape = self.graph.tensors[op.inputs[0]].shape
        if isinstance(conv.padding, str) or len(in_shape) != 4:
            problems.append(f"input shape {in_shape}, our padding {conv.padding!r}")
        else:
            for axis in (0, 1):  # H, W
                size, window, stride = in_shape[axis + 1], conv.kernel_size[axis], conv.stride[axis]
                theirs = _tf_pads(op.options["padding"], size, window, stride)
                ours = (conv.padding[axis], conv.padding[axis] + int(pads_bottom_right))
                if theirs != ours:
                    problems.append(f"{op.options['padding']} pads {theirs} on axis {'HW'[axis]}, ours {ours}")
        if problems:
            raise WeightsIntegrityError(f"TFLite {name!r} does not match FaceMeshNet's {path}: {'; '.join(problems)}")
        if depthwise:  # (1, H, W, C) -> (C, 1, H, W)
            self.weight(op, 1, f"{name}/Kernel", f"{path}.weight", lambda a: a.transpose(3, 0, 1, 2))
        else:  # (O, H, W, I) -> (O, I, H, W)
            self.weight(op, 1, f"{name}/Kernel", f"{path}.weight", lambda a: a.transpose(0, 3, 1, 2))
        self.weight(op, 2, f"{name}/Bias", f"{path}.bias", lambda a: a)
        self.check_shape(name, path)
        return name

    def prelu(self, path: str, name: str, reads: str) -> str:
        prelu = _submodule(self.model, path, nn.PReLU)
        op = self.operator(name, "PRELU", reads, inputs=2)
        alpha_shape = self.graph.tensors[op.inputs[1]].shape
        if alpha_shape != (1, 1, prelu.num_parameters):
            raise WeightsIntegrityError(
                f"TFLite PReLU {name!r} has alpha of shape {alpha_shape}, FaceMeshNet's {path} is per channel "
                f"(1, 1, {prelu.num_parameters})"
            )
        self.weight(op, 1, f"{name}/Alpha", f"{path}.weight", lambda a: a.reshape(-1))
        self.check_shape(name, path)
        return name

    def conv_prelu(self, layers: _ConvLayers, reads: str) -> str:
        unit = _submodule(self.model, layers.module, ConvPReLU)
        out = self.conv(f"{layers.module}.conv", layers.conv, reads, pads_bottom_right=unit.pad_bottom_right)
        return self.prelu(f"{layers.module}.act", layers.prelu, out)

    def block(self, layers: _BlockLayers, reads: str) -> str:
        block = _submodule(self.model, layers.module, ResidualBlock)
        if (layers.pool is None) != (block.skip_pool is None) or (layers.channel_pad is None) != (
            block.skip_channels == 0
        ):
            raise TypeError(f"layer table out of sync with FaceMeshNet at {layers.module}")
        path = layers.module
        out = self.conv(f"{path}.depthwise", layers.depthwise, reads, pads_bottom_right=block.pad_bottom_right)
        out = self.conv(f"{path}.pointwise", layers.pointwise, out)
        skip = reads
        if layers.pool is not None:
            skip = self.max_pool(f"{path}.skip_pool", layers.pool, reads)
        if layers.channel_pad is not None:
            skip = self.channel_pad(layers.channel_pad, skip, block.skip_channels, like=f"{path}.act")
        add = self.operator(layers.add, "ADD", None, inputs=2)  # either operand order
        added = sorted(self._name(i) for i in add.inputs)
        if added != sorted((skip, out)) or add.options["activation"] != "NONE":
            raise WeightsIntegrityError(
                f"wiring mismatch: TFLite {layers.add!r} adds {added} ({add.options['activation']}), "
                f"FaceMeshNet's {path} adds {sorted((skip, out))} with no activation"
            )
        self.check_shape(layers.add, f"{path}.act")
        return self.prelu(f"{path}.act", layers.prelu, layers.add)

    def max_pool(self, path: str, name: str, reads: str) -> str:
        pool = _submodule(self.model, path, nn.MaxPool2d)
        op = self.operator(name, "MAX_POOL_2D", reads, inputs=1)
        window, stride = _pair(pool.kernel_size), _pair(pool.stride)
        size = self.graph.tensors[op.inputs[0]].shape[1:3]
        pads = [_tf_pads(op.options["padding"], s, w, t) for s, w, t in zip(size, window, stride)]
        if (
            op.options["window"] != window
            or op.options["stride"] != stride
            or any(p != (0, 0) for p in pads)
            or op.options["activation"] != "NONE"
        ):
            raise WeightsIntegrityError(
                f"TFLite max-pool {name!r} ({op.options}) is not FaceMeshNet's {path}: window {window}, stride "
                f"{stride}, no padding"
            )
        self.check_shape(name, path)
        return name

    def channel_pad(self, name: str, reads: str, channels: int, *, like: str) -> str:
        """The PAD that appends ``channels`` zero channels to the skip path (NHWC paddings [[0,0]]*3 + [[0,c]])."""
        op = self.operator(name, "PAD", reads, inputs=2)
        paddings = self.graph.tensors[op.inputs[1]]
        if paddings.dtype not in ("INT32", "INT64") or paddings.shape != (4, 2) or paddings.data is None:
            raise WeightsIntegrityError(f"TFLite PAD {name!r} has no constant (4, 2) paddings")
        dtype = "<i4" if paddings.dtype == "INT32" else "<i8"
        if len(paddings.data) != 8 * np.dtype(dtype).itemsize:
            raise WeightsIntegrityError(f"TFLite PAD {name!r}: paddings buffer of {len(paddings.data)} bytes")
        values = np.frombuffer(paddings.data, dtype=dtype).reshape(4, 2).tolist()
        if values != [[0, 0], [0, 0], [0, 0], [0, channels]]:
            raise WeightsIntegrityError(
                f"TFLite PAD {name!r} pads {values}, FaceMeshNet appends {channels} zero channels to the skip path"
            )
        self.check_shape(name, like)
        return name


def _expected_op_counts(model: FaceMeshNet) -> Counter[str]:
    """Operator histogram FaceMeshNet implies: one DEQUANTIZE per weight tensor, one ADD per residual block..."""
    counts: Counter[str] = Counter()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            counts["DEPTHWISE_CONV_2D" if module.groups > 1 else "CONV_2D"] += 1
        elif isinstance(module, nn.PReLU):
            counts["PRELU"] += 1
        elif isinstance(module, nn.MaxPool2d):
            counts["MAX_POOL_2D"] += 1
        elif isinstance(module, ResidualBlock):
            counts["ADD"] += 1
            counts["PAD"] += int(module.skip_channels > 0)
    counts["DEQUANTIZE"] = len(model.state_dict())
    return counts


def _check_io(graph: _TfliteGraph) -> str:
    """Require one float32 (1, 192, 192, 3) input and the outputs ``OUTPUT_NAMES``; returns the input's name."""
    if len(graph.inputs) != 1:
        raise WeightsIntegrityError(f"expected one graph input, found {len(graph.inputs)}")
    image = graph.tensors[graph.inputs[0]]
    if image.shape != (1, INPUT_SIZE, INPUT_SIZE, 3) or image.dtype != "FLOAT32":
        raise WeightsIntegrityError(
            f"the graph input {image.name!r} is {image.dtype} {image.shape}, FaceMeshNet takes FLOAT32 "
            f"(1, {INPUT_SIZE}, {INPUT_SIZE}, 3)"
        )
    outputs = tuple(graph.tensors[i].name for i in graph.outputs)
    if outputs != OUTPUT_NAMES:
        raise WeightsIntegrityError(f"the graph outputs are {outputs}, expected {OUTPUT_NAMES}")
    return image.name


def convert_facemesh_tflite(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map ``face_landmark.tflite`` (its bytes) onto ``FaceMeshNet().state_dict()`` (float32, PyTorch layouts).

    Returns (state_dict, metadata: input, outputs, operator counts, parameter count, source sha256). Raises
    :class:`WeightsIntegrityError` when the file cannot be decoded or its operators, wiring, strides, padding,
    activations or shapes differ from :class:`FaceMeshNet`, or when any operator or weight is left unmatched.
    """
    graph, description = _parse(data)
    model = FaceMeshNet().eval()
    op_counts = Counter(op.kind for op in graph.operators)
    expected_counts = _expected_op_counts(model)
    if op_counts != expected_counts:
        raise WeightsIntegrityError(
            f"the TFLite graph has operators {dict(sorted(op_counts.items()))}, FaceMeshNet implies "
            f"{dict(sorted(expected_counts.items()))}: not the expected face_landmark.tflite"
        )
    input_name = _check_io(graph)

    mapper = _GraphMapper(graph, model)
    trunk = mapper.conv_prelu(_STEM, input_name)
    for block in _TRUNK:
        trunk = mapper.block(block, trunk)
    for branch in (_LANDMARKS, _PRESENCE):
        features = trunk
        for block in branch.blocks:
            features = mapper.block(block, features)
        features = mapper.conv_prelu(branch.reduce, features)
        features = mapper.block(branch.refine, features)
        mapper.conv(branch.head_module, branch.head, features)

    unmatched = [f"{op.index}:{op.kind}" for op in graph.operators if op.index not in mapper.claimed]
    if unmatched:
        raise WeightsIntegrityError(f"TFLite operators without a FaceMeshNet counterpart: {unmatched[:8]}")
    missing = sorted(set(mapper.expected) - set(mapper.state))
    if missing:
        raise WeightsIntegrityError(f"no TFLite weight for {missing[:5]}")
    state = {key: mapper.state[key] for key in mapper.expected}  # our module's order
    metadata: dict[str, Any] = {
        "model": "mediapipe-face-mesh",
        "source_format": "tflite",
        "tflite_sha256": hashlib.sha256(data).hexdigest(),
        "tflite_schema_version": graph.version,
        "tflite_description": description,
        "input": {
            "name": input_name,
            "shape": [1, INPUT_SIZE, INPUT_SIZE, 3],
            "layout": "NHWC in the file; FaceMeshNet takes NCHW",
            "channels": "RGB",
            "range": [0.0, 1.0],
        },
        "input_size": INPUT_SIZE,
        "output_names": list(OUTPUT_NAMES),
        "outputs": {"landmarks": OUTPUT_NAMES[0], "presence": OUTPUT_NAMES[1]},
        "operators": len(graph.operators),
        "op_counts": dict(sorted(op_counts.items())),
        "tensors": len(graph.tensors),
        "weights_dtype_in_file": "float16",
        "parameters": int(sum(t.numel() for t in state.values())),
    }
    if metadata["tflite_sha256"] != FACE_LANDMARK_SHA256:
        log.info(
            "converted a face_landmark.tflite other than mediapipe 0.10.21's (sha256 %s)", metadata["tflite_sha256"]
        )
    log.info(
        "converted face_landmark.tflite: %d operators, %d parameters", len(graph.operators), metadata["parameters"]
    )
    return state, metadata


# --------------------------------------------------------------------------------------------------------------
# Cache: model.safetensors + meta.json


def save_facemesh(
    dest_dir: str | Path,
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    source: Mapping[str, Any],
) -> Path:
    """Write ``model.safetensors`` and ``meta.json`` (source, checksum, conversion version, graph metadata).

    ``source`` says where the tflite file came from (e.g. wheel name, member path, sha256). Returns the
    safetensors path. Both files are replaced atomically.
    """
    return write_converted(
        dest_dir,
        state,
        model="mediapipe-face-mesh",
        conversion_version=CONVERSION_VERSION,
        source=source,
        details=metadata,
    )


def load_facemesh(dest_dir: str | Path) -> dict[str, torch.Tensor]:
    """Read back the state_dict written by :func:`save_facemesh`, verifying the version and the recorded sha256."""
    state, _ = read_converted(
        dest_dir, model="mediapipe-face-mesh", conversion_version=CONVERSION_VERSION, hint=PROVISION_HINT
    )
    return state
