"""Compiling an incremental plan into one ONNX graph (the graph compiler of the engine).

:mod:`preddiff.incremental_plan` says which prefix of a network is evaluated incrementally,
where every window's changed box lies in every prefix tensor, and where to switch to full
inference. :func:`compile_plan` turns that plan into a single ONNX graph, so that a batch of
windows is *one* onnxruntime call on every execution provider, with no Python between layers:

- inputs: the window samples ``preddiff_patches`` (N, C, kh, kw), the index inputs of the
  batch (:class:`~preddiff.incremental_index.IndexProgram`, computed on the host from the
  windows' top-left corners: :meth:`CompiledPlan.feeds`) and the clean image's maps
  (:class:`CleanInput`), bound once per image and left on the device;
- per prefix tensor, the batch's box (start row and column per window, one common size: the
  batch's largest, smaller boxes shifted inwards at the border, which recomputes some
  unchanged values, exactly, as the per-layer engine did) is located on the host, and so are
  the row and column terms of every region's index: the graph holds no box arithmetic, only
  the float work and, per region, the few integer operators that broadcast its index
  (two ``Add``, ``Less``, ``Where``);
- a local step (convolution, pooling, constant Pad, with fused point-wise followers) reads a
  *region* of its input: the clean map, padded once with the operator's padding value (0,
  -inf for max pooling, the Pad constant) so that padding appears only at the true border, is
  bound as a table of channel vectors (positions, C); the previous step's crop is appended to
  it as (N·h·w, C), and one ``Gather`` reads every region position from the clean rows or,
  inside the window's crop, from the crop's rows (the index: the larger of the clean and the
  crop sum of row and column terms, a crop term outside the crop being far below zero;
  :class:`~preddiff.incremental_index.Region`); the step's own
  nodes then run on the region with their padding turned off. A 1×1 step with stride 1 and
  no padding (the 1×1 convolutions of bottleneck and inverted-residual blocks) has its input's
  box as output box: it reads the previous crop as it is, nothing gathered.
  Average pooling is multiplied by the true divisor of each output position (a constant map,
  gathered at the box);
- a channel Concat or an element-wise merge of several maps (a residual Add) reads every input
  on the output's box (clean values plus the input's crop, as above);
- layouts: local operators read and write channels-first crops (N, C, h, w), regions are
  gathered channels-last (N, h, w, C), and element-wise merges and concatenations run
  channels-last when they mean the same there (a residual Add + Relu fused behind a
  convolution included), so that a residual block's output is already laid out as the
  next regions read it. onnxruntime's CPU provider folds a Transpose beside a convolution
  into its reorder to or from the blocked NCHWc layout, so the conversions there cost
  nothing (ResNet-50: 28 Transposes of wide maps gone, about +4 % windows/s);
- at the switch point, the tensors that the rest of the network reads are assembled in full:
  a map of 8 channels or more as one region covering the whole map (clean channel vectors and
  the crop's, one ``Gather``), a thinner one (the image) by writing the crop into copies of
  the clean map (``ScatterElements``); the rest of the network runs in full in the same
  graph.

Every index operation is exact, so the outputs are those of the full forward passes up to
float32 rounding of the crop computations. The graph needs opset 11 (``ScatterElements``);
the helper operators used here (``Reshape`` instead of ``Unsqueeze``, ``Where``/``Less``
instead of an integer ``Max``) mean the same in every opset from 11 on, so the network's own
nodes keep their opset.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .compose import PATCHES, model_opset  # PATCHES: the window samples, as in compose
from .incremental_index import BoxTable, IndexProgram, Positions, Region
from .incremental_plan import Analysis, Geometry, _attrs, _frontier, pointwise_geometry

__all__ = ["PATCHES", "CleanInput", "CompiledPlan", "compile_plan", "MIN_OPSET"]

#: ScatterElements.
MIN_OPSET = 11
_I64 = np.int64
#: Full maps at the switch point with at least this many channels are gathered as channel
#: vectors, like regions (ResNet-50 +10 %, GoogLeNet and AlexNet about +10 % on a 2-core
#: CPU); thinner ones (images: 1 or 3 values per position) are written by ScatterElements.
_GATHER_MIN_CHANNELS = 8


@dataclasses.dataclass(frozen=True)
class CleanInput:
    """A clean map the compiled graph reads, as a graph input bound once per image.

    Attributes
    ----------
    name : str
        The graph input.
    tensor : str
        The prefix tensor (or the image input) whose clean map it is.
    pads : ((int, int), (int, int))
        Rows before/after and columns before/after of ``value`` put around the map.
    value : float
        The padding value.
    full : bool
        True: the map as (1, C, H·W), the base of a full map at the switch point; False: as
        (Hp·Wp, C) (padded, one row of channels per position), the source of gathered
        regions.
    """

    name: str
    tensor: str
    pads: tuple
    value: float
    full: bool = False

    def build(self, clean: np.ndarray) -> np.ndarray:
        """The input's value for a clean map (C, H, W) of :attr:`tensor`."""
        c = clean.shape[0]
        if self.full:
            return np.ascontiguousarray(clean.reshape(1, c, -1), np.float32)
        (t, b), (l, r) = self.pads
        padded = np.pad(clean, ((0, 0), (t, b), (l, r)), constant_values=self.value)
        return np.ascontiguousarray(padded.reshape(c, -1).T, np.float32)


@dataclasses.dataclass
class CompiledPlan:
    """The compiled graph of one (network, input size, window size, switch point).

    Attributes
    ----------
    model : onnx.ModelProto
        Inputs :data:`PATCHES`, the index inputs of :attr:`index` and :attr:`clean_inputs`;
        outputs :attr:`outputs`, each (N, ...).
    clean_inputs : list of CleanInput
    outputs : list of str
    index : IndexProgram
        Computes the graph's index inputs from the windows' positions, on the host.
    nodes : int
        Nodes of the graph (a size for logs and tests).
    """

    model: onnx.ModelProto
    clean_inputs: list
    outputs: list
    index: IndexProgram
    nodes: int = 0

    def feeds(self, patches: np.ndarray, top_left: np.ndarray) -> dict:
        """The per-batch inputs of :attr:`model`: the window samples ``patches``
        (N, C, kh, kw) float32 and the index inputs of windows at ``top_left`` (N, 2) int
        (the clean inputs are bound once per image)."""
        return {PATCHES: patches, **self.index.feeds(top_left)}


class _Builder:
    """Nodes, initializers and unique names of the graph under construction."""

    def __init__(self):
        self.nodes: list = []
        self.inits: list = []
        self._count = 0
        self._consts: dict = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"preddiff/{hint}_{self._count}"

    def const(self, value, dtype=_I64, hint: str = "const") -> str:
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh(hint)
            self.inits.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def op(self, op_type: str, inputs, hint: str | None = None, **attrs) -> str:
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def reshape(self, x: str, shape) -> str:
        return self.op("Reshape", [x, shape if isinstance(shape, str) else self.const(shape)])


@dataclasses.dataclass
class _Crop:
    """A tensor's changed crop in the graph: values (N, C, h, w) on the batch's box ``box``
    (a key of the index program's boxes); ``nhwc``: the values are laid out (N, h, w, C)
    instead (see :meth:`_Compiler.layout`)."""

    values: str
    box: tuple
    nhwc: bool = False


#: Operators that mean the same on channels-last values as on channels-first ones when every
#: constant operand is a single number: element-wise maps and merges (and a channel Concat,
#: whose axis is rewritten).
_LAYOUT_FREE_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Relu", "LeakyRelu", "Identity",
    "Sigmoid", "Tanh", "Clip", "Elu", "HardSigmoid", "HardSwish", "Softplus", "Selu", "Gelu",
    "Erf", "Softsign", "ThresholdedRelu", "Celu", "Mish", "Concat"})


def unpadded(node) -> onnx.NodeProto:
    """A copy of a Conv or pooling ``node`` with its padding turned off (``pads`` all 0; no
    ``auto_pad``, no ``ceil_mode``): it runs on a region whose padding is already in place."""
    return _replace_attributes(node, ("pads", "auto_pad", "ceil_mode"),
                               pads=[0, 0, 0, 0])


def _replace_attributes(node, drop, **new) -> onnx.NodeProto:
    """A copy of ``node`` without the attributes ``drop`` and with ``new`` set."""
    n = onnx.NodeProto()
    n.CopyFrom(node)
    keep = [a for a in n.attribute if a.name not in set(drop) | set(new)]
    del n.attribute[:]
    n.attribute.extend(keep + [helper.make_attribute(k, v) for k, v in new.items()])
    return n


def _channels_last_ok(nodes, constants: dict) -> bool:
    """Whether ``nodes`` compute the same on (N, h, w, C) values as on (N, C, h, w) ones."""
    for node in nodes:
        if node.op_type not in _LAYOUT_FREE_OPS:
            return False
        if node.op_type == "Concat" and _attrs(node).get("axis") not in (1, -3):
            return False
        if any(t in constants and np.size(constants[t]) != 1 for t in node.input if t):
            return False
        if len([o for o in node.output if o]) != 1:
            return False
    return True


def _merge_tail(step, constants: dict) -> tuple:
    """(head, tail): a local step's nodes split before its first element-wise merge with
    another map (a residual Add fused behind a convolution) when that merge and everything
    after it is layout-free and reads the head only through its last output; else
    (all nodes, [])."""
    nodes, others = list(step.nodes), set(step.inputs[1:])
    j = next((k for k in range(1, len(nodes)) if others & set(nodes[k].input)), None)
    if j is None or not _channels_last_ok(nodes[j:], constants):
        return nodes, []
    head, tail = nodes[:j], nodes[j:]
    inner = {o for n in head for o in n.output if o} - {head[-1].output[0]}
    if any(t in inner for n in tail for t in n.input):
        return nodes, []
    return head, tail


def _box_key(geo: Geometry, tensor: str) -> tuple:
    """Identity of a tensor's box tables: equal keys give equal boxes for every batch."""
    b = geo.boxes[tensor]
    return (tuple(geo.shapes[tensor][1:]), b.start[0].tobytes(), b.start[1].tobytes(),
            b.size[0].tobytes(), b.size[1].tobytes())


class _Compiler:
    def __init__(self, analysis: Analysis, geo: Geometry, cut: int, scales: dict):
        self.a, self.geo, self.cut, self.scales = analysis, geo, cut, scales
        self.b = _Builder()
        self.clean: dict = {}   # key -> CleanInput
        self.boxes: dict = {}   # box key -> BoxTable
        self.indices: dict = {}  # index entry without its name -> Region or Positions
        self._region_index: dict = {}  # Region name -> its combined index (N, gh, gw)
        self._converted: dict = {}  # (values, nhwc) -> values in that layout

    # ---- clean maps ----------------------------------------------------------------

    def clean_input(self, tensor: str, pads=((0, 0), (0, 0)), value: float = 0.0,
                    full: bool = False) -> CleanInput:
        key = (tensor, pads, float(value), full)
        if key not in self.clean:
            kind = "full" if full else "pad" + "_".join(str(p) for pp in pads for p in pp)
            name = f"preddiff_clean/{tensor}/{kind}/{value:g}"
            self.clean[key] = CleanInput(name, tensor, pads, float(value), full)
        return self.clean[key]

    # ---- boxes -----------------------------------------------------------------------

    def box(self, tensor: str) -> tuple:
        """The key of ``tensor``'s changed box (the batch's box is located on the host)."""
        key = _box_key(self.geo, tensor)
        if key not in self.boxes:
            box = self.geo.boxes[tensor]
            self.boxes[key] = BoxTable(
                tuple(np.ascontiguousarray(t, _I64) for t in box.start),
                tuple(np.ascontiguousarray(t, _I64) for t in box.size),
                tuple(int(v) for v in self.geo.shapes[tensor][1:]))
        return key

    def index(self, entry):
        """``entry`` named: the host feeds its graph inputs (one entry per distinct index)."""
        spec = dataclasses.replace(entry, name="")
        if spec not in self.indices:
            self.indices[spec] = dataclasses.replace(entry,
                                                     name=f"preddiff_index/{len(self.indices)}")
        return self.indices[spec]

    # ---- layouts ---------------------------------------------------------------------

    def layout(self, values: str, nhwc: bool, want: bool) -> str:
        """``values`` ((N, C, h, w), or (N, h, w, C) when ``nhwc``) laid out as ``want``.

        Local operators read and write channels-first values; regions are read as channel
        vectors, channels-last; element-wise merges take either. Crops keep the layout they
        are made in and are converted where a reader needs the other one (once per crop).
        On the CPU onnxruntime folds a Transpose beside a convolution or pooling into the
        reorder to and from its blocked layout (NCHWc), so a conversion there is free, one
        between two element-wise operators a pass over the values."""
        if nhwc == want:
            return values
        key = (values, want)
        if key not in self._converted:
            perm = [0, 2, 3, 1] if want else [0, 3, 1, 2]
            self._converted[key] = self.b.op("Transpose", [values], perm=perm)
        return self._converted[key]

    # ---- regions -----------------------------------------------------------------------

    def region(self, tensor: str, crop: _Crop, out, stride=(1, 1), extent=(1, 1),
               pads=((0, 0), (0, 0)), value: float = 0.0) -> str:
        """Values (N, gh, gw, C) (channels-last) of ``tensor`` padded by ``pads``, on the
        region that the box ``out`` reads (:class:`~preddiff.incremental_index.Region`; None:
        the whole map): the clean map with ``crop`` laid over it.

        Both sources are read position by position as channel vectors, by one ``Gather`` on
        axis 0 of a (positions, C) table (C contiguous values per index): the clean map's
        positions followed by the crops'; a position inside its window's crop reads the
        crop's row, any other the clean map's. The index is computed on the host."""
        b = self.b
        source = self.clean_input(tensor, pads, value)
        entry = self.index(Region("", out, crop.box, tuple(stride), tuple(extent),
                                  tuple(tuple(p) for p in pads)))
        if entry.name not in self._region_index:
            clean_r, clean_c, crop_r, crop_c = entry.inputs
            clean = b.op("Add", [clean_r, clean_c])                       # (N, gh, gw)
            inside = b.op("Add", [crop_r, crop_c])  # negative outside the crop
            self._region_index[entry.name] = b.op(
                "Where", [b.op("Less", [clean, inside]), inside, clean])  # Max of int64: opset 12
        index = self._region_index[entry.name]
        channels = self.layout(crop.values, crop.nhwc, True)               # (N, h, w, C)
        channels = b.op("Reshape", [channels, b.const([-1, self.geo.shapes[tensor][0]])])
        table = b.op("Concat", [source.name, channels], axis=0)
        return b.op("Gather", [table, index], axis=0)                     # (N, gh, gw, C)

    def on_box(self, tensor: str, crop: _Crop, key: tuple, nhwc: bool) -> str:
        """``tensor``'s values on the box ``key`` in the layout ``nhwc``: its crop as it is
        when the boxes agree, else a region."""
        if crop.box == key:
            return self.layout(crop.values, crop.nhwc, nhwc)
        return self.layout(self.region(tensor, crop, key), True, nhwc)

    def gathered_map(self, map_hw: np.ndarray, key: tuple) -> str:
        """A constant (H, W) map's values on the box ``key``, as (N, 1, h, w)."""
        b = self.b
        index = self.index(Positions("", key)).name
        return b.op("Gather", [b.const(map_hw.reshape(-1), np.float32, "scale"), index], axis=0)

    # ---- steps -----------------------------------------------------------------------

    def copy_nodes(self, nodes, rename: dict, output: str, padding_off: bool = False,
                   channels_last: bool = False) -> str:
        """``nodes`` with renamed tensors (``rename`` is updated); returns the graph name of
        ``output``. ``channels_last``: the values are (N, h, w, C) (a Concat's axis is
        rewritten; the nodes must be layout-free, :func:`_channels_last_ok`)."""
        b = self.b
        for node in nodes:
            if padding_off and node.op_type == "Pad":
                out = b.fresh("pad")
                b.nodes.append(helper.make_node("Identity", [rename.get(node.input[0],
                                                                        node.input[0])], [out]))
                rename[node.output[0]] = out
                continue
            if padding_off and node.op_type in ("Conv", "MaxPool", "AveragePool"):
                n = unpadded(node)
            elif channels_last and node.op_type == "Concat":
                n = _replace_attributes(node, (), axis=3)
            else:
                n = onnx.NodeProto()
                n.CopyFrom(node)
            for i, t in enumerate(n.input):
                if t in rename:
                    n.input[i] = rename[t]
                elif t in self.a.constants:
                    self.constant(t)
            for i, t in enumerate(n.output):
                if t:
                    rename[t] = n.output[i] = b.fresh("step")
            n.name = b.fresh("node")
            b.nodes.append(n)
        return rename[output]

    def constant(self, name: str) -> None:
        if name not in self._weights:
            self._weights.add(name)
            self.b.inits.append(numpy_helper.from_array(np.asarray(self.a.constants[name]),
                                                        name))

    def step(self, i: int, crops: dict) -> _Crop:
        step, geo, b = self.a.steps[i], self.geo, self.b
        consts = self.a.constants
        key = _box_key(geo, step.output)
        if step.kind == "pointwise":
            src = crops[step.inputs[0]]
            nhwc = src.nhwc and _channels_last_ok(step.nodes, consts)
            values = self.layout(src.values, src.nhwc, nhwc)
            out = self.copy_nodes(step.nodes, {step.inputs[0]: values}, step.output,
                                  channels_last=nhwc)
            return dataclasses.replace(src, values=out, nhwc=nhwc)
        key = self.box(step.output)
        if step.kind in ("concat", "merge"):
            # channels-last when it can: the inputs read as regions are, and a convolution's
            # output converts for free
            nhwc = _channels_last_ok(step.nodes, consts)
            rename = {t: self.on_box(t, crops[t], key, nhwc) for t in step.inputs}
            out = self.copy_nodes(step.nodes, rename, step.output, channels_last=nhwc)
            return _Crop(out, key, nhwc)
        # local: the region of the padded input that the box's outputs read
        src = crops[step.inputs[0]]
        if src.box == key and pointwise_geometry(step, geo.pads[i]):
            # a 1×1 operator whose output box is its input crop's box (the 1×1 convolutions
            # of bottleneck and inverted-residual blocks): the region is the crop itself
            region, region_nhwc = src.values, src.nhwc
        else:
            ax = step.axes
            region = self.region(step.inputs[0], src, key, (ax[0].stride, ax[1].stride),
                                 (ax[0].extent, ax[1].extent), geo.pads[i], step.pad_value)
            region_nhwc = True
        if all(n.op_type == "Pad" for n in step.nodes):
            return _Crop(region, key, region_nhwc)
        rename = {step.inputs[0]: self.layout(region, region_nhwc, False)}
        head, tail = _merge_tail(step, consts)
        if tail and self.scales.get(i) is None:
            # a residual merge behind the operator runs channels-last: its other operands are
            # read as regions (channels-last) and the result is what the next regions read
            last = self.copy_nodes(head, rename, head[-1].output[0], padding_off=True)
            rename[head[-1].output[0]] = self.layout(last, False, True)
            rename.update({t: self.on_box(t, crops[t], key, True) for t in step.inputs[1:]})
            out = self.copy_nodes(tail, rename, step.output, channels_last=True)
            return _Crop(out, key, True)
        rename.update({t: self.on_box(t, crops[t], key, False) for t in step.inputs[1:]})
        out = self.copy_nodes(step.nodes, rename, step.output, padding_off=True)
        if self.scales.get(i) is not None:
            out = b.op("Mul", [out, self.gathered_map(self.scales[i], key)])
        return _Crop(out, key)

    def full_map(self, tensor: str, crop: _Crop, name: str) -> None:
        """``name`` := the clean map of ``tensor`` with ``crop`` written in, (N, C, H, W)."""
        b = self.b
        c, height, width = self.geo.shapes[tensor]
        if c >= _GATHER_MIN_CHANNELS:
            # the whole map as one region: channel vectors gathered from the clean map's
            # table and the crops' (ScatterElements writes element by element: slower)
            region = self.region(tensor, crop, None)
            b.nodes.append(helper.make_node("Transpose", [region], [name], perm=[0, 3, 1, 2],
                                            name=b.fresh("node")))
            return
        base = self.clean_input(tensor, full=True)
        flat = self.index(Positions("", crop.box, flat=True)).name       # (N, 1, h·w)
        values = b.reshape(self.layout(crop.values, crop.nhwc, False), [0, 0, -1])
        shape = b.op("Shape", [values])
        n = b.op("Slice", [shape, b.const([0]), b.const([1])])
        expanded = b.op("Expand", [base.name, b.op("Concat", [n, b.const([1, 1])], axis=0)])
        index = b.op("Expand", [flat, shape])
        pasted = b.op("ScatterElements", [expanded, index, values], axis=2)
        b.nodes.append(helper.make_node("Reshape", [pasted, b.const([0, c, height, width])],
                                        [name], name=b.fresh("node")))

    def compile(self, outputs) -> CompiledPlan:
        a, b = self.a, self.b
        self._weights: set = set()
        kh, kw = self.geo.window
        crops = {a.input_name: _Crop(PATCHES, self.box(a.input_name))}
        for i in range(self.cut):
            crops[a.steps[i].output] = self.step(i, crops)
        frontier = _frontier(a, self.cut)
        remainder, needed = _remainder_nodes(a, self.cut, outputs)
        for t in frontier:
            if t in needed or t in outputs:
                self.full_map(t, crops[t], t)
        for name in sorted(needed):
            if name in a.constants and name not in set(frontier):
                init = [i for i in a.model.graph.initializer if i.name == name]
                if init:
                    if name not in self._weights:
                        self._weights.add(name)
                        b.inits.append(init[0])
        b.nodes.extend(n for n in remainder if not all(o in self._weights for o in n.output))
        inputs = [helper.make_tensor_value_info(PATCHES, TensorProto.FLOAT,
                                                ["n", *self.geo.shapes[a.input_name][:1], kh, kw])]
        entries = list(self.indices.values())
        for k, e in enumerate(entries):
            inputs += [helper.make_tensor_value_info(name, TensorProto.INT64, dims)
                       for name, dims in zip(e.inputs, e.dims(str(k)))]
        for ci in self.clean.values():
            c, height, width = self.geo.shapes[ci.tensor]
            (t, bo), (l, r) = ci.pads
            dims = [1, c, height * width] if ci.full else [(height + t + bo) * (width + l + r), c]
            inputs.append(helper.make_tensor_value_info(ci.name, TensorProto.FLOAT, dims))
        graph_outs = {o.name: o for o in a.model.graph.output}
        outs = [graph_outs.get(t) or helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                for t in outputs]
        graph = helper.make_graph(b.nodes, "preddiff_incremental", inputs, outs,
                                  initializer=b.inits)
        model = helper.make_model(graph, opset_imports=list(a.model.opset_import))
        model.ir_version = a.model.ir_version
        return CompiledPlan(model, list(self.clean.values()), list(outputs),
                            IndexProgram(self.boxes, entries), len(b.nodes))


def _remainder_nodes(analysis: Analysis, cut: int, outputs) -> tuple:
    """The graph's nodes after the switch point that ``outputs`` need, and the tensors they
    read (frontier maps, initializers, ...)."""
    incremental = {id(n) for s in analysis.steps[:cut] for n in s.nodes}
    nodes = [n for n in analysis.model.graph.node if id(n) not in incremental]
    needed, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(t for t in node.input if t)
    keep.reverse()
    return keep, needed


def compile_plan(analysis: Analysis, geo: Geometry, cut: int, outputs, scales=None
                 ) -> CompiledPlan:
    """One ONNX graph evaluating a batch of windows incrementally (see the module docstring).

    Parameters
    ----------
    analysis : Analysis
        From :func:`preddiff.incremental_plan.analyse`.
    geo : Geometry
        From :func:`preddiff.incremental_plan.geometry` for the input and window size.
    cut : int
        Number of steps evaluated incrementally (0: the images are composed in the graph and
        the whole network runs in full).
    outputs : sequence of str
        Tensors to return, each (N, ...): outputs of the network, or prefix tensors (returned
        as full maps).
    scales : dict, optional
        Step index -> (H, W) float32 factor of an average pooling step (its true divisor over
        the unpadded crop's); None or absent when 1.

    Returns
    -------
    CompiledPlan

    Raises
    ------
    ValueError
        When the model's opset is below :data:`MIN_OPSET`.
    """
    if model_opset(analysis.model) < MIN_OPSET:
        raise ValueError(f"incremental evaluation in one graph needs opset {MIN_OPSET} or "
                         f"newer; the model declares opset {model_opset(analysis.model)}")
    return _Compiler(analysis, geo, int(cut), dict(scales or {})).compile(list(outputs))
