"""Graph analysis, projective-field geometry and cost model of exact incremental inference.

This module is the pure (NumPy and ``onnx`` only) half of :mod:`preddiff.incremental`; see
that module's docstring for the method. It answers three questions about an ONNX graph:

1. :func:`analyse` -- which prefix of the graph (in topological order) can be evaluated
   incrementally, as a list of :class:`Step` objects (one spatially local operator followed by
   the point-wise operators fused behind it, or a channel concatenation), and why the prefix
   ends where it does.
2. :func:`geometry` -- for an input of size H×W and a kh×kw window, the box of every prefix
   tensor that a window at each possible position can change (its *projective field*,
   clipped to the map), widened to one uniform crop size per tensor so that many windows are
   evaluated as one batch.
3. :func:`choose_cut` -- where to switch from incremental to full inference, by comparing the
   multiply-adds (plus a data-movement overhead) of every possible switch point.

Coordinates: a box along one axis is the inclusive index range ``[lo, hi]`` of the rows (or
columns) of a tensor whose values may differ from the clean image's. A spatially local
operator with kernel extent ``ke = (k - 1) d + 1``, stride ``s`` and leading padding ``p``
reads, for output ``o``, the input rows ``o s - p ... o s - p + ke - 1``; the outputs that a
change of input rows ``[lo, hi]`` can reach are therefore
``ceil((lo + p - ke + 1) / s) ... floor((hi + p) / s)``, clipped to the output map.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

#: Operators recomputed on a crop with a kernel (padding handled at the true border only).
LOCAL_OPS = ("Conv", "MaxPool", "AveragePool", "Pad")
#: Operators that act on each spatial position separately (LRN mixes channels only); their
#: other inputs, if any, must be constants that broadcast over the spatial axes.
POINTWISE_OPS = ("Relu", "LeakyRelu", "LRN", "Identity", "Dropout", "BatchNormalization",
                 "Sigmoid", "Tanh", "Clip", "Elu", "HardSigmoid", "HardSwish", "PRelu",
                 "Softplus", "Selu", "Gelu", "Erf", "Softsign", "ThresholdedRelu", "Celu",
                 "Mish", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum")
#: Element-wise operators with several inputs: with one spatial input and constants they are
#: point-wise; with several spatial inputs (a residual Add, x * sigmoid(x), ...) they merge
#: them on the union of their changed boxes.
ELEMENTWISE_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "PRelu")
#: Operators that merge several spatial tensors (the union of their changed boxes).
MERGE_OPS = ("Concat",)
#: Operators that read only the shape of a tensor: not on the data path.
SHAPE_OPS = ("Shape", "Size")

#: Cost-model weights, in multiply-add equivalents: moving one float32 element through a
#: NumPy gather or paste, one element of a point-wise operator, one pooling comparison/add,
#: and the fixed cost of one incremental step per window (Python and session-call overhead
#: divided by a typical batch). Measured roughly on a 2-core x86 CPU; only their order of
#: magnitude matters, because the cut they choose is insensitive to them.
COPY_COST = 64.0
POINTWISE_COST = 2.0
POOL_COST = 1.0
STEP_COST = 2.0e5


@dataclasses.dataclass(frozen=True)
class Axis:
    """Geometry of a spatially local operator along one spatial axis.

    Attributes
    ----------
    extent : int
        Kernel extent ``(k - 1) * dilation + 1``.
    stride : int
        Stride.
    pad_begin, pad_end : int
        Explicit padding before and after (``-1`` for both when ``auto_pad`` is SAME_*, which
        :meth:`resolve` computes from the map sizes).
    auto_pad : str
        ONNX ``auto_pad`` value.
    """

    extent: int
    stride: int
    pad_begin: int
    pad_end: int
    auto_pad: str = "NOTSET"

    def resolve(self, size_in: int, size_out: int) -> tuple[int, int]:
        """Leading padding and the trailing padding actually read (ceil mode included).

        Parameters
        ----------
        size_in, size_out : int
            Length of the input and output map along this axis.

        Returns
        -------
        (int, int)
            ``(pad_begin, pad_end_total)``: rows of padding value to put before and after the
            input so that every output ``o`` reads padded rows ``o*stride ... o*stride+extent-1``.
        """
        begin = self.pad_begin
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, (size_out - 1) * self.stride + self.extent - size_in)
            begin = total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2
        elif self.auto_pad == "VALID":
            begin = 0
        needed = (size_out - 1) * self.stride + self.extent - begin - size_in
        return begin, max(0, needed, self.pad_end if self.auto_pad == "NOTSET" else 0)


@dataclasses.dataclass
class Step:
    """One unit of incremental work: a local operator plus fused point-wise followers,
    a point-wise chain alone, or a channel concatenation.

    Attributes
    ----------
    kind : str
        ``"local"``, ``"pointwise"``, ``"concat"`` or ``"merge"`` (an element-wise operator
        on several spatial maps, e.g. a residual Add, with point-wise followers).
    nodes : list of onnx.NodeProto
        The fused nodes, in order (for ``"concat"`` the single Concat node).
    inputs : tuple of str
        The dynamic (non-constant) input tensors. For ``"local"``: the local operator's input
        first, then the other operands of element-wise merges fused behind it (a residual
        Add), which are read on the step's output box.
    output : str
        The tensor this step produces (its crop is kept for later steps).
    axes : (Axis, Axis) or None
        Row and column geometry of a local operator.
    pad_value : float
        Value of the operator's padding: 0 (Conv, AveragePool), -inf (MaxPool) or the Pad
        constant.
    op : str
        ONNX type of the first node.
    average : dict or None
        For AveragePool: its attributes (the crop result is rescaled by the true divisor).
    """

    kind: str
    nodes: list
    inputs: tuple
    output: str
    axes: tuple | None = None
    pad_value: float = 0.0
    op: str = ""
    average: dict | None = None

    @property
    def name(self) -> str:
        """Name of the first node (or its output when unnamed)."""
        return self.nodes[0].name or self.nodes[0].output[0]


@dataclasses.dataclass
class Analysis:
    """The incremental prefix of a graph (see :func:`analyse`)."""

    model: onnx.ModelProto
    input_name: str
    steps: list
    stop_reason: str
    constants: dict
    prefix_nodes: set
    outputs: tuple


def load_model(model) -> onnx.ModelProto:
    """An :class:`onnx.ModelProto` from a ModelProto, a path or serialized bytes."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    return onnx.load(str(model))


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constants(graph) -> dict:
    """Initializers and Constant-node outputs as NumPy arrays."""
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and "value" in _attrs(node):
            consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
    return consts


def _dynamic_inputs(node, constants) -> list:
    return [t for t in node.input if t and t not in constants]


def _pair(values, default, name, op) -> tuple:
    values = list(values) if values is not None else [default, default]
    if len(values) != 2:
        raise ValueError(f"{op}: {name} {values} is not 2-D")
    return int(values[0]), int(values[1])


def _local_geometry(node, constants) -> tuple:
    """``(axes, pad_value, average)`` of a local node; raises ValueError when unsupported."""
    op, at = node.op_type, _attrs(node)
    if op == "Pad":
        mode = at.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            raise ValueError(f"Pad mode {mode!r} (only 'constant')")
        if len(node.input) > 3 and node.input[3]:
            raise ValueError("Pad with an axes input")
        pads = at.get("pads")
        if pads is None:
            if len(node.input) < 2 or node.input[1] not in constants:
                raise ValueError("Pad with non-constant pads")
            pads = constants[node.input[1]].tolist()
        value = float(at.get("value", 0.0))
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in constants:
                raise ValueError("Pad with a non-constant value")
            value = float(np.asarray(constants[node.input[2]]).reshape(-1)[0])
        pads = [int(p) for p in pads]
        if len(pads) != 8 or pads[0] or pads[1] or pads[4] or pads[5] or min(pads) < 0:
            raise ValueError(f"Pad pads {pads} (only non-negative spatial padding of 4-D)")
        axes = (Axis(1, 1, pads[2], pads[6]), Axis(1, 1, pads[3], pads[7]))
        return axes, value, None
    if op == "Conv":
        if len(node.input) < 2 or node.input[1] not in constants:
            raise ValueError("Conv with non-constant weights")
        kernel = constants[node.input[1]].shape[2:]
        if len(node.input) > 2 and node.input[2] and node.input[2] not in constants:
            raise ValueError("Conv with a non-constant bias")
    else:
        if len(node.output) > 1 and node.output[1]:
            raise ValueError(f"{op} with an indices output")
        kernel = at.get("kernel_shape")
    kernel = _pair(kernel, 1, "kernel_shape", op)
    strides = _pair(at.get("strides"), 1, "strides", op)
    dil = _pair(at.get("dilations"), 1, "dilations", op)
    pads = list(at.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4:
        raise ValueError(f"{op}: pads {pads} is not 2-D")
    auto = at.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    axes = tuple(Axis((kernel[i] - 1) * dil[i] + 1, strides[i], int(pads[i]), int(pads[i + 2]),
                      auto or "NOTSET") for i in range(2))
    value = -np.inf if op == "MaxPool" else 0.0
    average = at if op == "AveragePool" else None
    return axes, value, average


def _spatial_broadcast(value) -> bool:
    """Whether a constant broadcasts over the batch and spatial axes of an (N, C, H, W) map
    without changing its shape: a scalar or one value per channel (shape (C, 1, 1) or
    (1, C, 1, 1)). A (C,) vector would broadcast along the columns instead."""
    shape = tuple(np.shape(value))
    if len(shape) > 4:
        return False
    shape = (1,) * (4 - len(shape)) + shape
    return shape[0] == 1 and shape[2] == 1 and shape[3] == 1


def _local_reason(node, constants) -> str | None:
    """Why ``node`` cannot be a step (None when it can)."""
    if node.op_type in LOCAL_OPS:
        try:
            _local_geometry(node, constants)
        except ValueError as exc:
            return str(exc)
        return None
    if node.op_type in ELEMENTWISE_OPS:
        wide = [t for t in node.input if t in constants and not _spatial_broadcast(constants[t])]
        if wide:
            return (f"{node.op_type} with constants {wide} that do not broadcast over the "
                    "spatial axes (only scalars or one value per channel)")
        return None
    if node.op_type in POINTWISE_OPS:
        extra = [t for t in node.input[1:] if t and t not in constants]
        if extra:
            return f"{node.op_type} with non-constant inputs {extra}"
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            return "Dropout with a mask output"
        return None
    if node.op_type in MERGE_OPS:
        axis = _attrs(node).get("axis", 1)
        if axis not in (1, -3):
            return f"Concat along axis {axis} (only channels)"
        return None
    return "not spatially local"


#: Largest constant (elements) that :func:`fold_constants` writes into the graph.
FOLD_LIMIT = 1 << 20


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every node computed from constants alone replaced by an initializer.

    Exporters compute some operator arguments in the graph: torch writes the pads of
    ``nn.ZeroPad2d`` as a ``ConstantOfShape``/``Concat``/``Reshape``/``Slice`` chain, which
    leaves a ``Pad`` with a non-constant ``pads`` input. Evaluated once (with
    :mod:`onnx.reference`), such a ``Pad`` is an ordinary local step.

    Parameters
    ----------
    model : onnx.ModelProto

    Returns
    -------
    onnx.ModelProto
        ``model`` itself when nothing can be folded, otherwise a folded copy. Nodes with a
        random output, of another domain, or whose result has more than ``FOLD_LIMIT``
        elements are kept.
    """
    graph = model.graph
    consts = _constants(graph)
    folded, values = set(), {}
    for index, node in enumerate(graph.node):
        if (node.op_type == "Constant" or node.op_type.startswith("Random")
                or node.domain not in ("", "ai.onnx") or not node.input
                or not all(not t or t in consts for t in node.input)):
            continue
        try:
            outs = _evaluate_node(model, node, consts)
        except Exception as exc:  # noqa: BLE001 - an operator the reference cannot run stays
            log.debug("not folded: %s %s (%s)", node.op_type, node.name, exc)
            continue
        if any(np.size(v) > FOLD_LIMIT for v in outs):
            continue
        for name, value in zip(node.output, outs):
            if name:
                consts[name] = values[name] = np.asarray(value)
        folded.add(index)
    if not folded:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = []
    for index, node in enumerate(graph.node):
        if index not in folded:
            keep.append(onnx.NodeProto())
            keep[-1].CopyFrom(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    used = {t for n in keep for t in n.input} | {o.name for o in m.graph.output}
    m.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items()
                               if k in used)
    return m


def _evaluate_node(model, node, consts) -> list:
    """Outputs of one node whose inputs are all in ``consts`` (onnx reference evaluator)."""
    from onnx.reference import ReferenceEvaluator

    inputs = [t for t in dict.fromkeys(node.input) if t]
    ins = [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(
        np.asarray(consts[t]).dtype), np.shape(consts[t])) for t in inputs]
    outs = [helper.make_empty_tensor_value_info(t) for t in node.output if t]
    g = helper.make_graph([node], "fold", ins, outs)
    m = helper.make_model(g, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    result = ReferenceEvaluator(m).run(None, {t: np.asarray(consts[t]) for t in inputs})
    names = [t for t in node.output if t]
    full = dict(zip(names, result))
    return [full.get(t) for t in node.output]


def _can_host(step, tensor, operands, consumers, external) -> bool:
    """Whether the element-wise merge of ``operands`` reading ``tensor`` can be fused into
    ``step``: its local operator's input (a crop of another size) must not be an operand."""
    return (step is not None and step.kind == "local" and step.output == tensor
            and step.average is None and len(consumers.get(tensor, [])) == 1
            and tensor not in external and step.inputs[0] not in operands)


def analyse(model, outputs=None) -> Analysis:
    """Split a graph into an incremental prefix of steps and a remainder run in full.

    Only the *data path* is analysed: the nodes that read the image input or a tensor computed
    from it. Shape computations (``Shape``, ``Size`` and whatever reads only their results or
    constants) are not on it, and constant subgraphs are folded first
    (:func:`fold_constants`). A node on the data path that is not spatially local ends the
    prefix along its own path: everything computed from it runs in full; other branches
    continue.

    Parameters
    ----------
    model : onnx.ModelProto, path or bytes
        A graph with one 4-D float input (N, C, H, W) in topological order.
    outputs : sequence of str, optional
        Tensors the caller wants (default: the graph outputs). Tensors wanted by the caller
        are never fused away inside a step.

    Returns
    -------
    Analysis
        ``steps`` is empty when nothing can be done incrementally; ``stop_reason`` says why
        the prefix ends (the first operator on the data path, in topological order, that is
        not spatially local, or a local operator with an unsupported attribute).

    Raises
    ------
    ValueError
        When the graph does not have exactly one 4-D float input.
    """
    model = load_model(model)
    graph = model.graph
    constants = _constants(graph)
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise ValueError(f"the graph has {len(inputs)} non-constant inputs (exactly 1 needed)")
    ttype = inputs[0].type.tensor_type
    if ttype.elem_type != onnx.TensorProto.FLOAT or len(ttype.shape.dim) != 4:
        raise ValueError(f"input {inputs[0].name!r} is not a 4-D float32 tensor")
    model = fold_constants(model)
    graph = model.graph
    constants = _constants(graph)
    if outputs is None:
        outputs = tuple(o.name for o in graph.output)
    outputs = tuple(outputs)
    consumers: dict = {}
    for node in graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    external = set(outputs) | {o.name for o in graph.output}

    spatial = {inputs[0].name}
    blocked: set = set()  # data-path tensors computed by a node outside the prefix
    producer_step: dict = {}
    steps, prefix_nodes, stop = [], set(), ""
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        dyn = list(dict.fromkeys(_dynamic_inputs(node, constants)))
        if not any(t in spatial or t in blocked for t in dyn) or node.op_type in SHAPE_OPS:
            continue  # not on the data path
        reason = _local_reason(node, constants)
        if reason is None and not all(t in spatial for t in dyn):
            reason = "an input that is not a spatial map of the prefix"
        if (reason is None and node.op_type not in MERGE_OPS + ELEMENTWISE_OPS
                and len(dyn) != 1):
            reason = f"{len(dyn)} non-constant inputs"
        if reason is not None:
            if not stop:
                stop = f"{node.op_type} {node.name or node.output[0]!r}: {reason}"
            blocked.update(t for t in node.output if t)
            continue
        out = node.output[0]
        if node.op_type in POINTWISE_OPS and len(dyn) == 1:
            src = dyn[0]
            step = producer_step.get(src)
            fusable = (step is not None and step.output == src and step.kind != "concat"
                       and step.average is None and len(consumers.get(src, [])) == 1
                       and src not in external)
            if fusable:
                step.nodes.append(node)
                step.output = out
                producer_step[out] = step
                spatial.add(out)
                prefix_nodes.add(id(node))
                continue
            step = Step("pointwise", [node], (src,), out, op=node.op_type)
        elif node.op_type in ELEMENTWISE_OPS:
            host = next((t for t in dyn if _can_host(producer_step.get(t), t, dyn, consumers,
                                                        external)), None)
            if host is not None:
                # fused into the local step producing one operand (a residual Add behind the
                # block's last convolution): one session call less, and onnxruntime fuses
                # Conv + Add (+ Relu) in the crop session as it does in the full graph
                step = producer_step[host]
                step.nodes.append(node)
                step.inputs = step.inputs + tuple(t for t in dyn
                                                  if t != host and t not in step.inputs)
                step.output = out
                steps.remove(step)  # after the steps computing the other operands
                steps.append(step)
                producer_step[out] = step
                spatial.add(out)
                prefix_nodes.add(id(node))
                continue
            step = Step("merge", [node], tuple(dyn), out, op=node.op_type)
        elif node.op_type in MERGE_OPS:
            step = Step("concat", [node], tuple(dyn), out, op="Concat")
        else:
            axes, value, average = _local_geometry(node, constants)
            step = Step("local", [node], (dyn[0],), out, axes, value, node.op_type, average)
        steps.append(step)
        producer_step[out] = step
        spatial.add(out)
        prefix_nodes.add(id(node))
    if not stop:
        stop = "the whole graph is spatially local"
    if not any(s.kind == "local" for s in steps):
        steps = []
        prefix_nodes = set()
    return Analysis(model, inputs[0].name, steps, stop, constants, prefix_nodes, outputs)


# --------------------------------------------------------------------------------------------
# geometry


@dataclasses.dataclass
class Box:
    """Changed box of one tensor for every window position, per axis.

    Attributes
    ----------
    start : (ndarray, ndarray)
        ``start[0][r]``: first changed row for a window whose top row is ``r``;
        ``start[1][c]``: first changed column for window column ``c``.
    size : (ndarray, ndarray)
        Number of changed rows (columns) for each window row (column); the box is the true
        projective field, clipped to the map.
    """

    start: tuple
    size: tuple

    def mean_area(self) -> float:
        """Mean changed area over all window positions (rows and columns independent)."""
        return float(self.size[0].mean() * self.size[1].mean())

    def centre_area(self) -> float:
        """Changed area of the window at the centre of the image."""
        return float(self.size[0][len(self.size[0]) // 2] * self.size[1][len(self.size[1]) // 2])


@dataclasses.dataclass
class Geometry:
    """Projective fields of every prefix tensor for one input and window size.

    Windows with the same *class* (``row_class[r]``, ``col_class[c]``) have boxes of the same
    size in every tensor, so they are evaluated together as one batch.

    Attributes
    ----------
    shapes : dict
        Tensor name -> (C, H, W) of the input and every step output.
    boxes : dict
        Tensor name -> :class:`Box`.
    pads : dict
        Step index -> ((top, bottom), (left, right)): padding put around a local step's input.
    row_class, col_class : ndarray of int
        Class of each window row and column.
    window : (int, int)
        The window size (kh, kw).
    """

    shapes: dict
    boxes: dict
    pads: dict
    row_class: np.ndarray
    col_class: np.ndarray
    window: tuple


def _affected(lo, hi, axis: Axis, pad_begin: int, size_out: int):
    """Output index range reached by input change ``[lo, hi]`` (arrays), clipped; never empty."""
    a = -((-(lo + pad_begin - axis.extent + 1)) // axis.stride)
    b = (hi + pad_begin) // axis.stride
    a = np.clip(a, 0, size_out - 1)
    b = np.clip(b, 0, size_out - 1)
    return a, np.maximum(a, b)


def geometry(analysis: Analysis, shapes: dict, window) -> Geometry:
    """Projective fields of all prefix tensors for every window position.

    Parameters
    ----------
    analysis : Analysis
        From :func:`analyse`.
    shapes : dict
        Tensor name -> (C, H, W) for the input and every step output.
    window : (int, int)
        Window size (kh, kw); windows may start at any row ``0 ... H - kh`` and column
        ``0 ... W - kw``.

    Returns
    -------
    Geometry
    """
    kh, kw = int(window[0]), int(window[1])
    _, H, W = shapes[analysis.input_name]
    ranges = {analysis.input_name: []}
    for n, k in ((H, kh), (W, kw)):
        r = np.arange(n - k + 1)
        ranges[analysis.input_name].append((r, r + k - 1))
    pads = {}
    for i, step in enumerate(analysis.steps):
        if step.kind == "local":
            src = ranges[step.inputs[0]]
            in_shape, out_shape = shapes[step.inputs[0]], shapes[step.output]
            axis_ranges, axis_pads = [], []
            for d in range(2):
                begin, end = step.axes[d].resolve(in_shape[1 + d], out_shape[1 + d])
                axis_pads.append((begin, end))
                lo, hi = _affected(*src[d], step.axes[d], begin, out_shape[1 + d])
                for t in step.inputs[1:]:  # operands of a fused merge: the union of boxes
                    if tuple(shapes[t][1:]) != tuple(out_shape[1:]):
                        raise ValueError(f"{step.nodes[-1].op_type} behind {step.name!r} "
                                         f"merges maps of different sizes {shapes[t][1:]} and "
                                         f"{out_shape[1:]}")
                    lo, hi = np.minimum(lo, ranges[t][d][0]), np.maximum(hi, ranges[t][d][1])
                axis_ranges.append((lo, hi))
            pads[i] = tuple(axis_pads)
            ranges[step.output] = axis_ranges
        elif step.kind == "pointwise":
            ranges[step.output] = ranges[step.inputs[0]]
        else:
            sizes = {tuple(shapes[t][1:]) for t in step.inputs}
            if len(sizes) != 1:
                raise ValueError(f"{step.op} {step.name!r} merges maps of different sizes "
                                 f"{sorted(sizes)}")
            ranges[step.output] = [
                (np.min([ranges[t][d][0] for t in step.inputs], axis=0),
                 np.max([ranges[t][d][1] for t in step.inputs], axis=0)) for d in range(2)]
    boxes = {name: Box((rows[0], cols[0]), (rows[1] - rows[0] + 1, cols[1] - cols[0] + 1))
             for name, (rows, cols) in ranges.items()}
    classes = []
    for d in range(2):
        sizes = np.stack([b.size[d] for b in boxes.values()])
        classes.append(np.unique(sizes, axis=1, return_inverse=True)[1].reshape(-1))
    return Geometry(dict(shapes), boxes, pads, classes[0], classes[1], (kh, kw))


# --------------------------------------------------------------------------------------------
# cost model


def pointwise_geometry(step: Step, pads) -> bool:
    """Whether a local step is 1×1 with stride 1 and no padding: its output box is its input's
    changed box, so it reads the input's crop as it is (no region to gather)."""
    return (step.axes is not None and all(a.extent == 1 and a.stride == 1 for a in step.axes)
            and not any(p for pair in pads for p in pair))


def _step_costs(analysis: Analysis, geo: Geometry, i: int) -> dict:
    """Multiply-adds and modelled cost per window of step ``i``, full and incremental."""
    step = analysis.steps[i]
    c_out, h_out, w_out = geo.shapes[step.output]
    full_pos = h_out * w_out
    box = geo.boxes[step.output]
    crop_pos = box.mean_area()
    macs_per_pos, other_per_pos = 0.0, 0.0
    copied = 0.0
    for node in step.nodes:
        if node.op_type == "Conv":
            wshape = analysis.constants[node.input[1]].shape
            macs_per_pos += c_out * int(np.prod(wshape[1:]))
        elif node.op_type in ("MaxPool", "AveragePool"):
            other_per_pos += POOL_COST * c_out * step.axes[0].extent * step.axes[1].extent
        elif node.op_type in POINTWISE_OPS:
            other_per_pos += POINTWISE_COST * c_out * (5 if node.op_type == "LRN" else 1)
    if step.kind == "local":
        c_in = geo.shapes[step.inputs[0]][0]
        ax = step.axes
        gh = (box.size[0] - 1) * ax[0].stride + ax[0].extent
        gw = (box.size[1] - 1) * ax[1].stride + ax[1].extent
        copied = (len(step.inputs) - 1) * c_out * crop_pos
        if not pointwise_geometry(step, geo.pads[i]):  # a 1×1 step reads its input's crop
            copied += c_in * gh.mean() * gw.mean()
    elif step.kind == "concat":
        copied = 2 * c_out * crop_pos
    elif step.kind == "merge":
        copied = (len(step.inputs) + 1) * c_out * crop_pos
    full = (macs_per_pos + other_per_pos) * full_pos + (c_out * full_pos if step.kind == "concat"
                                                         else 0)
    incr = (macs_per_pos + other_per_pos) * crop_pos + COPY_COST * copied + STEP_COST
    return {
        "step": step.name, "op": "+".join(n.op_type for n in step.nodes),
        "shape": tuple(int(v) for v in geo.shapes[step.output]),
        "crop": (float(box.size[0].mean()), float(box.size[1].mean())),
        "macs_full": macs_per_pos * full_pos, "macs_crop": macs_per_pos * crop_pos,
        "macs_centre": macs_per_pos * box.centre_area(), "cost_full": full,
        "cost_incremental": incr,
    }


def _frontier(analysis: Analysis, cut: int) -> list:
    """Prefix tensors (or the input) that the part of the graph run in full reads."""
    produced = {analysis.input_name} | {s.output for s in analysis.steps[:cut]}
    needed = []
    for s in analysis.steps[cut:]:
        needed += [t for t in s.inputs if t in produced]
    for node in analysis.model.graph.node:
        if id(node) not in analysis.prefix_nodes and node.op_type != "Constant":
            needed += [t for t in node.input if t in produced]
    needed += [t for t in analysis.outputs if t in produced]
    return list(dict.fromkeys(needed))


def remainder_macs(analysis: Analysis, input_shape) -> float:
    """Multiply-adds per image of the Conv/Gemm/MatMul nodes outside the prefix.

    Uses ONNX shape inference with the input fixed to ``(1, *input_shape)``; nodes whose
    shapes cannot be inferred count as zero.
    """
    model = onnx.ModelProto()
    model.CopyFrom(analysis.model)
    for inp in model.graph.input:
        if inp.name == analysis.input_name:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, (1, *input_shape)):
                d.Clear()
                d.dim_value = int(v)
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - inference is best effort for a report
        log.debug("shape inference failed: %s", exc)
        return 0.0
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    consts = analysis.constants
    prefix = {t for s in analysis.steps for n in s.nodes for t in n.output}
    total = 0.0
    for node in model.graph.node:
        if node.output[0] in prefix or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        out = shapes.get(node.output[0])
        if not out or 0 in out:
            continue
        if node.op_type == "Conv" and node.input[1] in consts:
            total += np.prod(out[1:]) * np.prod(consts[node.input[1]].shape[1:])
        elif node.input[1] in consts:
            w = consts[node.input[1]].shape
            total += np.prod(w)
    return float(total)


def choose_cut(analysis: Analysis, geo: Geometry, remainder: float = 0.0) -> dict:
    """Pick the step at which to switch to full inference, by the cost model.

    For every cut ``j`` (steps ``< j`` incremental, the rest in full) the modelled cost per
    window is the incremental cost of steps ``< j`` (mean over all window positions), the cost
    of writing the frontier tensors into full maps, and the full cost of steps ``>= j``; the
    remainder after the prefix is the same for every cut.

    Parameters
    ----------
    analysis, geo : Analysis, Geometry
    remainder : float
        Multiply-adds per image outside the prefix.

    Returns
    -------
    dict
        ``cut`` (number of incremental steps), ``steps`` (per-step table), ``cost`` (modelled
        cost of every cut), ``macs_full`` (Conv and Gemm multiply-adds of one naive forward
        pass), ``macs_planned`` (per window at the chosen cut, mean over all window
        positions), ``macs_theoretical`` (the window at the centre of the image, best cut for
        that count: Krypton's theoretical count, and the one quoted in the reference notes).
    """
    n = len(analysis.steps)
    table = [_step_costs(analysis, geo, i) for i in range(n)]
    costs, centre = [], []
    for j in range(n + 1):
        frontier = sum(COPY_COST * np.prod(geo.shapes[t]) for t in _frontier(analysis, j))
        costs.append(sum(t["cost_incremental"] for t in table[:j])
                     + sum(t["cost_full"] for t in table[j:]) + frontier)
        centre.append(sum(t["macs_centre"] for t in table[:j])
                      + sum(t["macs_full"] for t in table[j:]))
    cut = int(np.argmin(costs))
    full = sum(t["macs_full"] for t in table) + remainder
    planned = (sum(t["macs_crop"] for t in table[:cut])
               + sum(t["macs_full"] for t in table[cut:]) + remainder)
    return {"cut": cut, "steps": table, "cost": costs, "macs_full": full,
            "macs_planned": planned, "macs_theoretical": min(centre) + remainder}


def format_plan(report: dict, window) -> str:
    """The cost-model table as text (one line per step; ``->`` marks the first full step)."""
    lines = [f"incremental plan for a {window[0]}x{window[1]} window (multiply-adds per "
             "window; crop = mean changed box over all window positions):",
             f"  {'step':28s} {'op':22s} {'map':>14s} {'crop':>11s} {'MACs full':>11s} "
             f"{'MACs crop':>11s}"]
    for j, t in enumerate(report["steps"]):
        mark = "->" if j == report["cut"] else "  "
        shape = "x".join(str(v) for v in t["shape"])
        crop = f"{t['crop'][0]:.1f}x{t['crop'][1]:.1f}"
        lines.append(f"{mark}{t['step'][:28]:28s} {t['op'][:22]:22s} {shape:>14s} {crop:>11s} "
                     f"{t['macs_full'] / 1e6:10.1f}M {t['macs_crop'] / 1e6:10.1f}M")
    c, full = report["cost"], report["macs_full"]
    lines.append(
        f"  switch to full inference after {report['cut']} of {len(report['steps'])} steps; "
        f"modelled cost {c[report['cut']] / 1e6:.1f}M vs naive {c[0] / 1e6:.1f}M "
        f"({c[0] / max(c[report['cut']], 1):.2f}x); multiply-adds {full / 1e9:.3f}G -> "
        f"{report['macs_planned'] / 1e9:.3f}G mean over windows "
        f"({full / max(report['macs_planned'], 1):.2f}x), "
        f"{report['macs_theoretical'] / 1e9:.3f}G centre window "
        f"({full / max(report['macs_theoretical'], 1):.2f}x)")
    return "\n".join(lines)
