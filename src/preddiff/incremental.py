"""Exact incremental inference for Prediction Difference Analysis.

Prediction Difference Analysis (Zintgraf et al. 2017, Algorithm 1) re-evaluates the classifier
on (number of windows) × S images that each differ from the clean image only inside one k×k
window. Evaluated naively it can never run faster than the classifier's own throughput. The
method of Krypton (S. Nakandala, A. Kumar, Y. Papakonstantinou, "Incremental and approximate
inference for faster occlusion-based deep CNN explanations", SIGMOD 2019) computes the same
outputs exactly with far fewer multiply-adds:

1. The clean image's activations are computed once (and cached, keyed on a hash of the image).
2. For a perturbed image, a spatially local layer (convolution, pooling, and the point-wise
   ReLU/LRN fused behind it) only changes on the *projective field* of the window: the changed
   box grows by the kernel extent minus one and shrinks with the stride, layer by layer; a
   channel concatenation changes on the union of its inputs' boxes. Each such layer is
   recomputed only on that box, from an input crop that is the clean cached activation with
   the changed crop of the previous layer pasted in. The crop computation runs with the
   padding turned off ("valid"): the layer's padding value (0 for convolution and average
   pooling, -inf for max pooling, the constant of a Pad) is put around the cached clean map
   once, so it only ever appears at the true image border. Average pooling is rescaled by the
   true divisor of each output position (which Caffe's and ONNX's ``count_include_pad``
   semantics make position dependent).
3. When the changed box covers most of the map -- decided by a cost model comparing
   multiply-adds plus data movement for every possible switch point, printed in the log --
   or at the first layer that is not spatially local (Flatten, Gemm, global pooling, ...),
   the changed crops are written into full copies of the clean maps and the rest of the
   network runs in full.

Many windows are evaluated as one batch. A window's projective field depends on its position
(clipped at the border, and one unit wider or narrower with the alignment to the strides), so
windows are grouped into *classes* whose boxes have the same size in every layer; a class is
one batch (classes too small to batch well are merged, their boxes widened to the largest and
shifted inwards at the border, which recomputes some unchanged values, exactly). Gathers and
pastes are NumPy fancy indexing; the per-layer crop computations are onnxruntime sessions of
single layers (or a layer with its point-wise followers) on the batch of crops, with
intra-op thread spinning off (spinning threads of one small session would steal the cores of
the next); a 1×1 stride-1 convolution step runs in the session of the step in front of it, on
that step's output crop, since its changed box is the same (``fuse``: ResNet bottlenecks,
MobileNet projections and expansions; one call, gather and paste fewer each). On a CPU two
batches run side by side in threads (``workers``), each session call on half the cores, which
uses the cores better than one small call on all of them; the outputs are identical either
way. The full maps at the switch point of several batches go
through the remainder together, in the batches' order, so that fully connected weights are
read once per run.

Theoretical multiply-adds at k = 10 (:func:`theoretical_macs`: the window at the centre of
the image, true projective fields, best switch point; printed by ``preddiff bench``), equal
to the reference notes' counts: AlexNet 0.72 → 0.23 G (3.2×), GoogLeNet 1.58 → 0.67 G (2.4×),
VGG16 15.5 → 1.7 G (9.1×). Averaged over all window positions (border windows change less)
they are 4.3×, 2.6× and 10.4×.

Scope: the incremental prefix is the *data path* of the graph (the nodes computed from the
image input; shape computations such as torch's Shape/Gather/Unsqueeze/Concat chains are not on
it, and subgraphs of constants -- e.g. the pads torch computes for ``nn.ZeroPad2d`` -- are
folded first) up to the first node that is not one of Conv (any groups, strides, dilations,
padding), MaxPool, AveragePool, constant Pad, channel Concat; a point-wise Relu, LeakyRelu,
LRN, Identity, Dropout, BatchNormalization, Sigmoid, Tanh, Clip (ReLU6), Elu, HardSigmoid,
HardSwish, PRelu, Softplus, Selu, Gelu, Erf, Softsign, ThresholdedRelu, Celu, Mish; an
element-wise Add, Sub, Mul, Div, Pow, Max, Min or Sum with constants that broadcast over the
spatial axes (scalars or one value per channel: the input normalisation ``(x - mean) / std``);
or such an element-wise operator on several spatial maps of the prefix (a residual Add,
``x * sigmoid(x)``, GELU's Erf chain), evaluated on the union of their changed boxes as a
Concat. A global operator (GlobalAveragePool, a ReduceMean over H and W as in
squeeze-and-excitation, InstanceNormalization, Flatten, Gemm, ...) ends the prefix on its
path; everything computed from it runs in full inference. A graph with no spatially local layer
on the prefix (or without one 4-D float input) is evaluated naively, with the reason logged at
WARNING level (:func:`supported` gives it without building anything). Whether the incremental
engine is actually faster on a machine is measured by
:func:`preddiff.incremental_decision.decide_incremental`.

With the CUDA execution provider, sessions use I/O binding: the clean maps of the tensors at
the switch point live on the device as ``OrtValue`` objects, and the full maps are assembled
on the device by a ``ScatterElements`` prelude of the remainder graph, so only the small
crops and the network outputs cross the bus. The batch size then defaults to
:func:`auto_batch_size` of the free device memory; ``float16=True`` runs the sessions in half
precision (see :func:`to_float16`; off by default).
"""
from __future__ import annotations

import collections
import functools
import hashlib
import logging
import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

from .errors import InvalidArgument
from .incremental_decision import available_cores
from .incremental_plan import (
    Analysis, _frontier, analyse, choose_cut, format_plan, geometry, load_model, remainder_macs,
)

log = logging.getLogger(__name__)

__all__ = ["IncrementalClassifier", "supported", "auto_batch_size", "gpu_free_memory",
           "to_float16", "theoretical_macs"]

DEFAULT_BATCH_SIZE = 64
#: Changes when the engine's speed changes (2: two batches side by side on a CPU; 3: 1×1
#: steps fused; 4: full images timed as the engine sends them, composed on the device on
#: CUDA), so that the decisions cached by :mod:`preddiff.incremental_decision` are
#: measured again.
ENGINE_REVISION = 4
#: Largest number of windows, and of bytes of full maps, sent through the remainder at once.
REMAINDER_BATCH = 256
REMAINDER_BYTES = 64 * 2**20


# --------------------------------------------------------------------------------------------
# public helpers


def supported(model, outputs=None) -> tuple:
    """Whether exact incremental inference can be applied to a graph, and if not, why.

    Parameters
    ----------
    model : onnx.ModelProto, path or bytes
        The classifier graph.
    outputs : sequence of str, optional
        The tensors that will be requested (default: the graph outputs).

    Returns
    -------
    (bool, str)
        ``(True, "")`` when at least one spatially local layer precedes the first operator
        that is not; otherwise ``(False, reason)``.
    """
    from google.protobuf.message import DecodeError

    try:
        analysis = analyse(model, outputs)
    except (ValueError, OSError, DecodeError) as exc:
        return False, str(exc)
    if not analysis.steps:
        return False, ("no spatially local layer before the first other operator "
                       f"({analysis.stop_reason})")
    return True, ""


def auto_batch_size(free_bytes, bytes_per_item, *, fixed_bytes=0, fraction=0.6, minimum=1,
                    maximum=1024) -> int:
    """Batch size that fits a fraction of the free device memory.

    Parameters
    ----------
    free_bytes : int or None
        Free device memory; ``None`` (unknown) gives ``DEFAULT_BATCH_SIZE`` clipped to
        ``[minimum, maximum]``.
    bytes_per_item : float
        Memory one more batch item needs (activations, workspace).
    fixed_bytes : int
        Memory needed whatever the batch size (weights, cached maps).
    fraction : float
        Share of the free memory to use.
    minimum, maximum : int
        Bounds of the result.

    Returns
    -------
    int
        ``floor((fraction * free - fixed) / per_item)`` clipped to ``[minimum, maximum]`` and
        rounded down to a multiple of 8 when at least 8.

    Examples
    --------
    >>> auto_batch_size(8 * 2**30, 20 * 2**20)
    240
    """
    if free_bytes is None:
        return int(np.clip(DEFAULT_BATCH_SIZE, minimum, maximum))
    if bytes_per_item <= 0:
        raise InvalidArgument(f"bytes_per_item must be positive, got {bytes_per_item}")
    n = int((fraction * free_bytes - fixed_bytes) // bytes_per_item)
    n = int(np.clip(n, minimum, maximum))
    return n - n % 8 if n >= 8 else n


def gpu_free_memory(device_id: int = 0):
    """Free memory of a CUDA device in bytes (via ``nvidia-smi``), or None if unknown."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits",
                              "-i", str(device_id)], capture_output=True, text=True, timeout=10)
        return int(out.stdout.strip().splitlines()[0]) * 2**20
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` computing in float16 with float32 inputs and outputs.

    Float initializers and Constant values are cast to float16, a Cast follows every float
    graph input and precedes every float graph output. Intended for the CUDA provider (the CPU
    provider lacks float16 kernels for most operators).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in g.node:
        for a in node.attribute:
            if (node.op_type == "Constant" and a.name == "value"
                    and a.t.data_type == TensorProto.FLOAT):
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16)))
    rename = {}
    casts_in = []
    for inp in g.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            rename[inp.name] = inp.name + "__f16"
            casts_in.append(helper.make_node("Cast", [inp.name], [inp.name + "__f16"],
                                             to=TensorProto.FLOAT16))
    for node in g.node:
        for i, t in enumerate(node.input):
            if t in rename:
                node.input[i] = rename[t]
    casts_out = []
    for out in g.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = out.name + "__f16"
        for node in g.node:
            for i, t in enumerate(node.output):
                if t == out.name:
                    node.output[i] = inner
            for i, t in enumerate(node.input):
                if t == out.name:
                    node.input[i] = inner
        casts_out.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT))
    nodes = casts_in + list(g.node) + casts_out
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return m


def theoretical_macs(model, input_shape, window=(10, 10), outputs=None) -> dict:
    """Multiply-adds of naive and exact incremental inference for one window.

    Parameters
    ----------
    model : onnx.ModelProto, path or bytes
    input_shape : (int, int, int)
        (C, H, W) of the input.
    window : (int, int)
        Window size.
    outputs : sequence of str, optional

    Returns
    -------
    dict
        ``macs_full`` (Conv and Gemm multiply-adds of one image), ``macs_theoretical``
        (the window at the centre of the image, at its best switch point: the count of the
        reference notes), ``macs_planned`` (mean over all window positions at the switch point
        the cost model picks), ``reduction`` (= full / theoretical), ``cut`` (incremental
        steps), ``steps``, ``cost`` and ``plan`` (the table logged at INFO level).

    Examples
    --------
    >>> from preddiff.caffe.writer import random_onnx                    # doctest: +SKIP
    >>> r = theoretical_macs(random_onnx("vgg16"), (3, 224, 224))       # doctest: +SKIP
    >>> round(r["macs_full"] / 1e9, 1), round(r["reduction"], 1)        # doctest: +SKIP
    (15.5, 9.1)
    """
    analysis = analyse(model, outputs)
    if not analysis.steps:
        raise InvalidArgument(f"the model cannot be run incrementally: {analysis.stop_reason}")
    shapes = _infer_prefix_shapes(analysis, input_shape)
    geo = geometry(analysis, shapes, window)
    report = choose_cut(analysis, geo, remainder_macs(analysis, input_shape))
    report["reduction"] = report["macs_full"] / max(report["macs_theoretical"], 1.0)
    report["plan"] = format_plan(report, window)
    return report


# --------------------------------------------------------------------------------------------
# sessions


_CUDA_OK = None


def _probe_model() -> onnx.ModelProto:
    """A one-node graph to try a provider with. Its opset and IR version are pinned low:
    ``onnx.helper`` stamps the newest ones it knows, which an older onnxruntime refuses (and
    the probe would then report no usable GPU on a machine that has one)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                            "probe", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


def _cuda_usable() -> bool:
    """Whether the CUDA execution provider can actually create a session here."""
    global _CUDA_OK
    if _CUDA_OK is None:
        import onnxruntime as ort

        from .classifier import _cuda_device_count  # asks the driver, not onnxruntime
        from .classifier import preload_cuda_libraries

        _CUDA_OK = False
        if "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_device_count():
            preload_cuda_libraries()
            so = ort.SessionOptions()
            so.log_severity_level = 4
            try:
                s = ort.InferenceSession(_probe_model().SerializeToString(), so,
                                         providers=["CUDAExecutionProvider"])
                _CUDA_OK = "CUDAExecutionProvider" in s.get_providers()
            except Exception:  # noqa: BLE001 - any failure means no usable GPU
                _CUDA_OK = False
    return _CUDA_OK


def resolve_device(device: str) -> str:
    """``"cuda"`` or ``"cpu"`` for ``device`` in {"auto", "cpu", "cuda"}.

    As :class:`preddiff.classifier.OnnxClassifier`: "cuda" without a usable CUDA provider
    falls back to the CPU with a warning.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidArgument(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return "cpu"
    if _cuda_usable():
        return "cuda"
    if device == "cuda":
        log.warning("CUDA requested but onnxruntime has no usable CUDA provider; using the CPU")
    return "cpu"


class _Session:
    """An onnxruntime session; on CUDA it runs with I/O binding (OrtValue inputs stay put)."""

    def __init__(self, model: onnx.ModelProto, device: str, threads=None, spinning=False,
                 fixed_batch=None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        # many small sessions alternate with NumPy work: spinning threads would steal the cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        from .classifier import cuda_providers  # full float32: no TensorFloat-32

        providers = cuda_providers() if device == "cuda" else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), so,
                                                providers=providers)
        except Exception as exc:  # noqa: BLE001 - retried below, or re-raised
            # as OnnxClassifier: a file stamped with a newer IR version than this
            # onnxruntime reads is retried with the version lowered
            match = re.search(r"max supported IR version: (\d+)", str(exc))
            if not match or model.ir_version <= int(match.group(1)):
                raise
            lowered = onnx.ModelProto()
            lowered.CopyFrom(model)
            lowered.ir_version = int(match.group(1))
            self.session = ort.InferenceSession(lowered.SerializeToString(), so,
                                                providers=providers)
        self.device = device
        self.fixed_batch = fixed_batch
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict, outputs=None, batched=None) -> list:
        """Outputs for ``feeds``; with a fixed batch size (a graph whose input declares one, as
        many exported files do: constants such as a Reshape to (1, -1) depend on it) the feeds
        named in ``batched`` (default: all) are run in chunks of exactly that size, the last
        one padded by repeating its last item, and the outputs cut back."""
        outputs = list(outputs or self.outputs)
        fixed = self.fixed_batch
        names = list(feeds) if batched is None else [t for t in feeds if t in set(batched)]
        n = len(feeds[names[0]]) if names else 0
        if not fixed or not names or n == fixed:
            return self._run(feeds, outputs)
        parts = []
        for start in range(0, n, fixed):
            chunk = dict(feeds)
            for t in names:
                part = np.asarray(feeds[t][start:start + fixed])
                if len(part) < fixed:
                    part = np.concatenate([part, np.repeat(part[-1:], fixed - len(part), 0)])
                chunk[t] = part
            m = min(fixed, n - start)
            parts.append([v[:m] for v in self._run(chunk, outputs)])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(outputs))]

    def _run(self, feeds: dict, outputs: list) -> list:
        if self.device != "cuda":
            return self.session.run(outputs, feeds)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def _value_info(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def _fixed_batch(model: onnx.ModelProto, input_name: str):
    """The batch size the graph input declares (None when it is free)."""
    for inp in model.graph.input:
        if inp.name == input_name:
            dims = inp.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value)
    return None


def _new_model(template: onnx.ModelProto, nodes, inputs, outputs, initializers, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=list(template.opset_import))
    model.ir_version = template.ir_version
    return model


def _with_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    """Copy of ``model`` whose outputs are exactly ``names`` (float tensors)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name: o for o in m.graph.output}
    outs = [known.get(n) or _value_info(n, None) for n in names]
    del m.graph.output[:]
    m.graph.output.extend(outs)
    return m


def _crop_model(analysis: Analysis, step, channels: int, followers=()) -> onnx.ModelProto:
    """The model computing ``step`` on a batch of input crops, padding off (valid).

    ``followers``: 1×1 steps fused behind it (:func:`_fusable`); the model then returns the
    outputs of ``step`` and of each follower, in order."""
    nodes, needed = [], set()
    for node in [n for s in (step, *followers) for n in s.nodes]:
        if node.op_type == "Pad":
            nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]]))
            continue
        n = onnx.NodeProto()
        n.CopyFrom(node)
        if node.op_type in ("Conv", "MaxPool", "AveragePool"):
            keep = [a for a in n.attribute if a.name not in ("pads", "auto_pad", "ceil_mode")]
            del n.attribute[:]
            n.attribute.extend(keep)
            n.attribute.extend([helper.make_attribute("pads", [0, 0, 0, 0])])
        nodes.append(n)
        needed.update(t for t in node.input if t in analysis.constants)
    inits = [numpy_helper.from_array(np.asarray(analysis.constants[t]), t) for t in sorted(needed)]
    inputs = [_value_info(t, ["n", channels if len(step.inputs) == 1 else f"c{k}", "h", "w"])
              for k, t in enumerate(step.inputs)]
    outputs = [_value_info(s.output, None) for s in (step, *followers)]
    return _new_model(analysis.model, nodes, inputs, outputs, inits,
                      "crop_" + step.name.replace("/", "_"))


def _fusable(step) -> bool:
    """A 1×1, stride-1, unpadded operator on one input (a 1×1 convolution with point-wise
    followers): its changed box is its input's box, so it can run in the session of the step
    in front of it, on that step's output crop, exactly."""
    return (step.kind == "local" and step.average is None and len(step.inputs) == 1
            and step.axes is not None
            and all(a.extent == 1 and a.stride == 1 and a.pad_begin == 0 and a.pad_end == 0
                    and a.auto_pad in ("NOTSET", "VALID") for a in step.axes)
            and not any(n.op_type == "Pad" for n in step.nodes))


def _can_host(step) -> bool:
    """Whether 1×1 steps can be fused behind ``step``: it runs a session whose output is
    used as it comes (not rescaled like an average pool)."""
    return (step.kind in ("local", "pointwise", "merge") and step.average is None
            and not all(n.op_type == "Pad" for n in step.nodes))


def _remainder_model(analysis: Analysis, cut: int, frontier: list, shapes: dict, outputs,
                     device_paste: bool) -> tuple:
    """The graph after the switch point, fed by the frontier tensors.

    Returns ``(model, inputs)`` where ``inputs`` are the frontier tensors it reads (or
    ``(None, [])`` when no requested output needs it). With ``device_paste`` each frontier
    tensor ``T`` is instead assembled inside the graph from ``T__clean`` (1, C, H, W),
    ``T__crop`` (N, C, h, w) and ``T__index`` (N, 1, h*w) int64 (flat positions in the map) by
    ``ScatterElements``, so that the clean maps can stay on the device.
    """
    g = analysis.model.graph
    incremental = {id(n) for s in analysis.steps[:cut] for n in s.nodes}
    nodes = [n for n in g.node if id(n) not in incremental]
    needed, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(t for t in node.input if t)
    keep.reverse()
    if not keep:
        return None, []
    feeds = [t for t in frontier if t in needed]
    inits = [i for i in g.initializer if i.name in needed]
    graph_outs = {o.name: o for o in g.output}
    outs = [graph_outs.get(t) or _value_info(t, None) for t in outputs]
    prelude, ins = [], []
    for t in feeds:
        c, h, w = shapes[t]
        if not device_paste:
            ins.append(_value_info(t, ["n", c, h, w]))
            continue
        ins += [_value_info(t + "__clean", [1, c, h, w]),
                _value_info(t + "__crop", ["n", c, "a", "b"]),
                _value_info(t + "__index", ["n", 1, "ab"], TensorProto.INT64)]
        k = t + "__paste_"
        inits += [numpy_helper.from_array(np.array([1, 1, 1], np.int64), k + "ones"),
                  numpy_helper.from_array(np.array([0, c, -1], np.int64), k + "flat"),
                  numpy_helper.from_array(np.array([0, c, h, w], np.int64), k + "map"),
                  numpy_helper.from_array(np.array([0], np.int64), k + "0"),
                  numpy_helper.from_array(np.array([1], np.int64), k + "1")]
        prelude += [
            helper.make_node("Shape", [t + "__crop"], [k + "shape"]),
            helper.make_node("Slice", [k + "shape", k + "0", k + "1"], [k + "n"]),
            helper.make_node("Concat", [k + "n", k + "ones"], [k + "expand"], axis=0),
            helper.make_node("Expand", [t + "__clean", k + "expand"], [k + "full"]),
            helper.make_node("Reshape", [k + "full", k + "flat"], [k + "fullflat"]),
            helper.make_node("Reshape", [t + "__crop", k + "flat"], [k + "cropflat"]),
            helper.make_node("Shape", [k + "cropflat"], [k + "cropshape"]),
            helper.make_node("Expand", [t + "__index", k + "cropshape"], [k + "idx"]),
            helper.make_node("ScatterElements", [k + "fullflat", k + "idx", k + "cropflat"],
                             [k + "pasted"], axis=2),
            helper.make_node("Reshape", [k + "pasted", k + "map"], [t]),
        ]
    model = _new_model(analysis.model, prelude + keep, ins, outs, inits, "remainder")
    return model, feeds


def _infer_prefix_shapes(analysis: Analysis, input_shape) -> dict:
    """(C, H, W) of the input and every step output, by running the prefix on zeros."""
    names = [s.output for s in analysis.steps]
    m = _with_outputs(analysis.model, names)
    sess = _Session(m, "cpu", fixed_batch=_fixed_batch(analysis.model, analysis.input_name))
    x = np.zeros((1, *input_shape), np.float32)
    values = sess.run({analysis.input_name: x}, names)
    shapes = {analysis.input_name: tuple(int(v) for v in input_shape)}
    shapes.update({n: tuple(int(d) for d in v.shape[1:]) for n, v in zip(names, values)})
    return shapes


# --------------------------------------------------------------------------------------------
# gather and paste


def _gather(padded_hwc: np.ndarray, r0, c0, size) -> np.ndarray:
    """Crops ``padded[:, r0[n]:r0[n]+h, c0[n]:c0[n]+w]`` of a (H, W, C) map as (N, C, h, w)."""
    view = sliding_window_view(padded_hwc, tuple(size), axis=(0, 1))
    return view[r0, c0]


def _paste(dest: np.ndarray, src: np.ndarray, dy, dx) -> None:
    """``dest[n, :, dy[n]:dy[n]+h, dx[n]:dx[n]+w] = src[n]`` for all n, clipped to ``dest``."""
    n, _, h, w = src.shape
    gh, gw = dest.shape[2:]
    shift = dx.astype(np.int64) - dx.min()
    key = dy.astype(np.int64) * (int(shift.max()) + 1) + shift
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if len(uniq) <= 16:
        for u, i in enumerate(first):
            y, x = int(dy[i]), int(dx[i])
            y0, y1, x0, x1 = max(0, y), min(gh, y + h), max(0, x), min(gw, x + w)
            if y0 >= y1 or x0 >= x1:
                continue
            sel = slice(None) if len(uniq) == 1 else np.flatnonzero(inverse == u)
            dest[sel, :, y0:y1, x0:x1] = src[sel, :, y0 - y:y1 - y, x0 - x:x1 - x]
        return
    yy = dy[:, None] + np.arange(h)
    xx = dx[:, None] + np.arange(w)
    vy = (yy >= 0) & (yy < gh)
    vx = (xx >= 0) & (xx < gw)
    if vy.all() and vx.all():
        dest[np.arange(n)[:, None, None], :, yy[:, :, None], xx[:, None, :]] = \
            src.transpose(0, 2, 3, 1)
        return
    ni, yi, xi = np.nonzero(vy[:, :, None] & vx[:, None, :])
    dest[ni, :, yy[ni, yi], xx[ni, xi]] = src[ni, :, yi, xi]


def _boxes(box, shape, rows, cols) -> tuple:
    """Starts (N,), (N,) and the common size of the boxes of windows ``rows, cols``.

    The size is the largest changed box among these windows; smaller boxes are widened
    (shifted inwards at the border) to it, which recomputes some unchanged values, exactly.
    """
    out = []
    for d, pos in enumerate((rows, cols)):
        sizes = box.size[d][pos]
        size = int(sizes.max())
        start = box.start[d][pos]
        if sizes.min() != size:
            start = np.minimum(start, shape[1 + d] - size)
        out.append((start, size))
    return out[0][0], out[1][0], (out[0][1], out[1][1])


def _store(result: dict, idx, total: int, part: dict) -> None:
    """``result[name][idx] = part[name]``, allocating (total, ...) arrays on first use."""
    for name, value in part.items():
        if name not in result:
            result[name] = np.empty((total, *value.shape[1:]), value.dtype)
        result[name][idx] = value


def _patch_images(x: np.ndarray, top_left: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """Full images: ``x`` with ``patches[n]`` written at ``top_left[n]`` (N, C, H, W)."""
    out = np.empty((len(patches), *x.shape), np.float32)
    out[:] = x
    _paste(out, patches, top_left[:, 0], top_left[:, 1])
    return out


# --------------------------------------------------------------------------------------------
# the classifier


def _locked(method):
    """Run ``method`` holding the instance's lock (its clean activations are shared state)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


class _Plan:
    """Geometry, switch point and remainder session for one input and window size."""

    def __init__(self, geo, report, remainder, remainder_inputs, wanted, scales):
        self.geo, self.report = geo, report
        self.cut = report["cut"]
        self.remainder, self.remainder_inputs = remainder, remainder_inputs
        self.wanted = wanted  # outputs the remainder computes
        self.scales = scales


class IncrementalClassifier:
    """An ONNX classifier with exact incremental evaluation of windowed perturbations.

    Called on a batch it behaves like :class:`preddiff.classifier.OnnxClassifier` (full
    forward passes). :meth:`evaluate_windows` returns the same outputs for images that differ
    from one clean image only inside a window, computing each layer only on the window's
    projective field (Krypton, Nakandala et al. SIGMOD 2019; see the module docstring).

    Parameters
    ----------
    model : onnx.ModelProto, path or bytes
        Graph with one input (N, C, H, W), e.g. from :func:`preddiff.caffe.caffe_to_onnx`.
    outputs : sequence of str
        Tensors (blob names) to return.
    batch_size : int, optional
        Images or windows per session run; default 64 on CPU and
        :func:`auto_batch_size` of the free memory on CUDA.
    device : {"auto", "cpu", "cuda"}
        Execution provider; "auto" uses CUDA when it works.
    threads : int, optional
        onnxruntime intra-op threads (default: onnxruntime's choice).
    float16 : bool
        Run the sessions in float16 (CUDA only; default False).
    incremental : bool
        False disables the incremental path (:meth:`evaluate_windows` builds full images).
    cut : int, optional
        Force the number of steps evaluated incrementally (tests); default: cost model.
    device_paste : bool, optional
        Assemble the full maps at the switch point inside the remainder graph
        (ScatterElements) instead of with NumPy; default True on CUDA, False on CPU.
    grouping : {"auto", "exact", "merge"}, optional
        How windows are batched: "exact" batches windows whose changed boxes have the same
        sizes in every layer (fewest multiply-adds); "merge" evaluates each chunk of
        ``batch_size`` windows as one batch with every box widened to the chunk's largest;
        "auto" merges a chunk when its exact batches would hold fewer than ``min_group``
        windows on average. Default: "auto" on CPU, "merge" on CUDA.
    min_group : int
        See ``grouping``.
    workers : int, optional
        Batches of windows whose incremental steps run at the same time (CPU only), each
        session call on ``threads // workers`` onnxruntime threads: the small per-layer calls
        use many cores poorly, two batches side by side use them better. Default: 2 on a CPU
        when ``threads`` (default: the cores available) is at least 2, else 1; on the 2-core
        benchmark machine 10–17 % more window-samples/s than one batch at a time on 2
        threads (ResNet-50, MobileNetV2, EfficientNet-Lite0). Results do not depend on it.
    fuse : bool
        Run each 1×1 stride-1 convolution step (with its point-wise followers) in the session
        of the step in front of it, on that step's output crop: one session call, gather and
        paste fewer per fused step (default True; False for comparisons).

    Attributes
    ----------
    incremental : bool
        Whether :meth:`evaluate_windows` runs incrementally.
    reason : str
        Why not, when it does not (also logged).

    Notes
    -----
    The clean image's activations are cached state: calls from several threads are
    serialised by a lock. A model whose input declares a fixed batch size is run in chunks of
    exactly that size, as :class:`~preddiff.classifier.OnnxClassifier` runs it.
    """

    def __init__(self, model, *, outputs=("prob",), batch_size=None, device="auto",
                 threads=None, float16=False, incremental=True, cut=None, device_paste=None,
                 grouping=None, min_group=4, workers=None, fuse=True):
        self.model = load_model(model)
        self.outputs = tuple(outputs)
        if not self.outputs:
            raise InvalidArgument("outputs must name at least one tensor")
        known = {t for n in self.model.graph.node for t in n.output}
        known |= {i.name for i in self.model.graph.input}
        missing = [t for t in self.outputs if t not in known]
        if missing:
            raise InvalidArgument(f"outputs {missing} are not tensors of the model")
        self.device = resolve_device(device)
        if float16 and self.device != "cuda":
            log.warning("float16 needs the CUDA provider; running in float32")
            float16 = False
        self.float16 = bool(float16)
        self.threads = threads
        cores = available_cores()
        if workers is None:  # two batches side by side when two cores are ours
            workers = 2 if self.device != "cuda" and (threads or cores) >= 2 else 1
        if int(workers) != workers or workers < 1:
            raise InvalidArgument(f"workers must be a positive integer, got {workers!r}")
        # the device path keeps its clean maps on one device: one batch at a time there
        self.workers = 1 if self.device == "cuda" else int(workers)
        self.fuse = bool(fuse)
        self._crop_threads = (threads if self.workers == 1
                              else max(1, (threads or cores) // self.workers))
        self.device_paste = (self.device == "cuda") if device_paste is None else bool(device_paste)
        self._user_batch = batch_size
        if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
            raise InvalidArgument(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
        initializers = {i.name for i in self.model.graph.initializer}
        graph_inputs = [i.name for i in self.model.graph.input if i.name not in initializers]
        self._fixed_batch = (_fixed_batch(self.model, graph_inputs[0]) if len(graph_inputs) == 1
                             else None)
        # one evaluation at a time: the clean activations and plans are shared state
        self._lock = threading.RLock()
        self._sessions_lock = threading.Lock()
        self._full = self._session(_with_outputs(self.model, self.outputs), spinning=True,
                                   fixed=True)
        self._cut = cut
        if grouping is None:  # a GPU wants large batches more than the fewest multiply-adds
            grouping = "merge" if self.device == "cuda" else "auto"
        if grouping not in ("auto", "exact", "merge"):
            raise InvalidArgument(f"grouping must be 'auto', 'exact' or 'merge', got {grouping!r}")
        self.grouping, self.min_group = grouping, int(min_group)
        self._plans: dict = {}
        self._clean_key = None
        self.incremental, self.reason = False, "disabled by the caller"
        self.analysis = None
        if incremental:
            try:
                self.analysis = analyse(self.model, self.outputs)
            except ValueError as exc:
                self.reason = str(exc)
            else:
                self.incremental = bool(self.analysis.steps)
                self.reason = "" if self.incremental else (
                    "no spatially local layer before the first other operator "
                    f"({self.analysis.stop_reason})")
        if self.incremental:
            log.info("incremental inference: %d steps, prefix ends at %s",
                     len(self.analysis.steps), self.analysis.stop_reason)
            # the clean pass also returns the requested outputs: a single image evaluated by
            # __call__ (the engine's unperturbed image) fills the cache at no extra cost
            self._clean_names = list(dict.fromkeys(
                [s.output for s in self.analysis.steps]
                + [o for o in self.outputs if o != self.analysis.input_name]))
            self._clean_session = self._session(_with_outputs(self.model, self._clean_names),
                                                spinning=True, fixed=True)
            self._crop_sessions: dict = {}
        else:
            log.log(logging.WARNING if incremental else logging.INFO,
                    "incremental inference off, evaluating full images: %s", self.reason)

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider the sessions run on (as OnnxClassifier)."""
        return "CUDAExecutionProvider" if self.device == "cuda" else "CPUExecutionProvider"

    # ---- sessions ---------------------------------------------------------------------

    def _session(self, model, spinning=False, fixed=False, threads=None) -> _Session:
        """A session; ``fixed``: a graph derived from the model's own (full, clean or
        remainder), which keeps the batch size the model's input may declare."""
        if self.float16:
            model = to_float16(model)
        return _Session(model, self.device, threads or self.threads, spinning,
                        self._fixed_batch if fixed else None)

    def _crop_session(self, index: int, channels: int, fused: int = 0):
        """The session of step ``index`` with the ``fused`` steps after it (1×1) fused in."""
        step = self.analysis.steps[index]
        if all(n.op_type == "Pad" for n in step.nodes):
            return None
        key = (index, fused)
        if key not in self._crop_sessions:
            with self._sessions_lock:  # batches in worker threads may ask at the same time
                if key not in self._crop_sessions:
                    followers = self.analysis.steps[index + 1:index + 1 + fused]
                    self._crop_sessions[key] = self._session(
                        _crop_model(self.analysis, step, channels, followers),
                        threads=self._crop_threads)
        return self._crop_sessions[key]

    def _followers(self, index: int, cut: int) -> list:
        """Indices of the 1×1 steps right after step ``index`` (and before ``cut``) that run
        fused in its session, each reading the previous one's output."""
        steps = self.analysis.steps
        if not self.fuse or not _can_host(steps[index]):
            return []
        out, j = [], index + 1
        while j < cut and _fusable(steps[j]) and steps[j].inputs == (steps[j - 1].output,):
            out.append(j)
            j += 1
        return out

    # ---- plain calls ------------------------------------------------------------------

    @_locked
    def __call__(self, batch) -> dict:
        """Full forward pass.

        Parameters
        ----------
        batch : ndarray, shape (N, C, H, W)

        Returns
        -------
        dict
            Blob name -> array with leading dimension N.
        """
        batch = np.asarray(batch, np.float32)
        if batch.ndim != 4:
            raise InvalidArgument(f"batch must be (N, C, H, W), got shape {batch.shape}")
        if self.incremental and len(batch) == 1:
            return {o: v.copy() for o, v in self._set_clean(np.ascontiguousarray(batch[0])).items()}
        name = self._full.inputs[0]
        if not len(batch):  # the shapes of the outputs, from one image of zeros
            one = self._full.run({name: np.zeros((1, *batch.shape[1:]), np.float32)},
                                 self.outputs)
            return {o: np.empty((0, *v.shape[1:]), v.dtype) for o, v in zip(self.outputs, one)}
        parts = [self._full.run({name: batch[i:i + self.batch_size]}, self.outputs)
                 for i in range(0, len(batch), self.batch_size)]
        return {o: np.concatenate([p[k] for p in parts]) if parts else np.empty((0,))
                for k, o in enumerate(self.outputs)}

    # ---- incremental ------------------------------------------------------------------

    def _set_clean(self, x: np.ndarray) -> dict:
        """Cache the clean activations of ``x`` (C, H, W); returns the requested outputs."""
        key = (x.shape, hashlib.blake2b(x.tobytes(), digest_size=16).hexdigest())
        if key != self._clean_key:
            values = self._clean_session.run({self.analysis.input_name: x[None]},
                                             self._clean_names)
            self._clean = {self.analysis.input_name: x.copy()}  # not the caller's buffer
            self._clean.update({n: v[0] for n, v in zip(self._clean_names, values)})
            self._padded: dict = {}
            self._device_clean: dict = {}
            self._clean_key = key
        return {o: self._clean[o][None] for o in self.outputs}

    @_locked
    def clear_cache(self) -> None:
        """Forget the clean image's cached activations (sessions and plans are kept), so that
        the next evaluation pays for its clean forward pass again (benchmarks)."""
        self._clean_key = None
        self._clean, self._padded, self._device_clean = {}, {}, {}

    def _padded_hwc(self, name: str, pads, value: float) -> np.ndarray:
        """The clean map of ``name`` as (H, W, C) with ``pads`` of ``value`` around it."""
        key = (name, pads, value)
        if key not in self._padded:
            (t, b), (l, r) = pads
            m = self._clean[name].transpose(1, 2, 0)
            self._padded[key] = np.pad(m, ((t, b), (l, r), (0, 0)), constant_values=value)
        return self._padded[key]

    def _plan(self, x_shape, window) -> _Plan:
        key = (tuple(x_shape), tuple(window))
        if key in self._plans:
            return self._plans[key]
        a = self.analysis
        if self._clean_key is not None and self._clean_key[0] == tuple(x_shape):
            shapes = {a.input_name: tuple(x_shape)}
            shapes.update({n: v.shape for n, v in self._clean.items() if n != a.input_name})
        else:
            shapes = _infer_prefix_shapes(a, x_shape)
        geo = geometry(a, shapes, window)
        report = choose_cut(a, geo, remainder_macs(a, x_shape))
        if self._cut is not None:
            report["cut"] = int(np.clip(self._cut, 0, len(a.steps)))
        cut = report["cut"]
        report["reduction"] = report["macs_full"] / max(report["macs_theoretical"], 1.0)
        report["plan"] = format_plan(report, window)
        log.info("%s", report["plan"])
        frontier = _frontier(a, cut)
        wanted = [t for t in self.outputs if t not in set(frontier)]
        rem, feeds = _remainder_model(a, cut, frontier, shapes, wanted, self.device_paste)
        rem_session = self._session(rem, fixed=True) if rem is not None else None
        scales = {i: self._average_scale(i, geo) for i, s in enumerate(a.steps[:cut])
                  if s.average is not None}
        plan = _Plan(geo, report, rem_session, feeds, wanted, scales)
        self._plans[key] = plan
        if self._user_batch is None and self.device == "cuda":
            self.batch_size = auto_batch_size(gpu_free_memory(), self._bytes_per_window(plan))
            log.info("automatic batch size %d", self.batch_size)
        return plan

    @_locked
    def report(self, input_shape, window=(10, 10)) -> dict:
        """The cost model's plan for inputs of ``input_shape`` (C, H, W) and a window size.

        Returns
        -------
        dict
            As :func:`theoretical_macs`: ``cut``, ``macs_full``, ``macs_planned``,
            ``macs_theoretical``, ``reduction``, ``plan`` (the table logged at INFO level),
            ``steps`` and ``cost``.

        Raises
        ------
        InvalidArgument
            When the classifier does not run incrementally (the message says why).
        """
        if not self.incremental:
            raise InvalidArgument(f"the classifier does not run incrementally: {self.reason}")
        return self._plan(tuple(int(v) for v in input_shape), tuple(window)).report

    def _bytes_per_window(self, plan: _Plan) -> float:
        geo, cut = plan.geo, plan.cut
        crops = sum(geo.shapes[s.output][0] * geo.boxes[s.output].size[0].max()
                    * geo.boxes[s.output].size[1].max() for s in self.analysis.steps[:cut])
        full = sum(np.prod(geo.shapes[s.output]) for s in self.analysis.steps[cut:])
        return 4.0 * (3 * crops + 3 * full + 4 * np.prod(geo.shapes[self.analysis.input_name]))

    def _average_scale(self, index: int, geo) -> np.ndarray | None:
        """Per-output factor turning a valid sum/k² average into the true average."""
        step = self.analysis.steps[index]
        node = step.nodes[0]
        _, h, w = geo.shapes[step.inputs[0]]
        ones = np.ones((1, 1, h, w), np.float32)
        single = onnx.NodeProto()
        single.CopyFrom(node)
        single.output[0] = "y"
        single.input[0] = "x"
        m = _new_model(self.model, [single], [_value_info("x", [1, 1, h, w])],
                       [_value_info("y", None)], [], "avg")
        full = _Session(m, "cpu").run({"x": ones})[0][0, 0]
        (t, b), (l, r) = geo.pads[index]
        padded = np.pad(ones[0, 0], ((t, b), (l, r)))[None, None]
        crop = _Session(_crop_model_single(self.model, node), "cpu").run({"x": padded})[0][0, 0]
        crop = crop[:full.shape[0], :full.shape[1]]
        scale = np.divide(full, crop, out=np.zeros_like(full), where=crop > 0)
        return None if np.allclose(scale, 1.0, rtol=0, atol=1e-7) else scale.astype(np.float32)

    @_locked
    def evaluate_windows(self, x, top_left, patches) -> dict:
        """Outputs for copies of ``x`` with one window replaced, exactly, incrementally.

        Parameters
        ----------
        x : ndarray, shape (C, H, W)
            The clean (preprocessed) image.
        top_left : ndarray of int, shape (N, 2)
            Row and column of each window's top-left corner.
        patches : ndarray, shape (N, C, kh, kw)
            The values written into the window (e.g. samples of
            :class:`preddiff.samplers.ConditionalGaussianSampler`).

        Returns
        -------
        dict
            Exactly what ``self(batch)`` returns for ``batch[n] = x`` with
            ``x[:, r:r+kh, c:c+kw]`` replaced by ``patches[n]`` (up to float32 rounding).

        Raises
        ------
        InvalidArgument
            When the shapes do not match or a window is outside the image.
        """
        x = np.ascontiguousarray(x, np.float32)
        patches = np.asarray(patches, np.float32)
        top_left = np.asarray(top_left)
        if x.ndim != 3:
            raise InvalidArgument(f"x must be (C, H, W), got shape {x.shape}")
        if patches.ndim != 4 or patches.shape[1] != x.shape[0]:
            raise InvalidArgument(f"patches must be (N, {x.shape[0]}, kh, kw), got {patches.shape}")
        if top_left.shape != (len(patches), 2) or not np.issubdtype(top_left.dtype, np.integer):
            raise InvalidArgument(f"top_left must be integer (N, 2) with N = {len(patches)}, "
                                  f"got {top_left.dtype} {top_left.shape}")
        kh, kw = patches.shape[2:]
        if len(top_left) and (top_left.min() < 0 or top_left[:, 0].max() > x.shape[1] - kh
                              or top_left[:, 1].max() > x.shape[2] - kw):
            raise InvalidArgument(f"a window of size {kh}x{kw} at {top_left.tolist()} "
                                  f"leaves the image {x.shape[1:]}")
        top_left = top_left.astype(np.int64)
        if not len(patches):
            return self(np.empty((0, *x.shape), np.float32))
        if not self.incremental:
            parts = [self(_patch_images(x, top_left[i:i + self.batch_size],
                                        patches[i:i + self.batch_size]))
                     for i in range(0, len(patches), self.batch_size)]
            return {o: np.concatenate([p[o] for p in parts]) for o in self.outputs}
        self._set_clean(x)
        plan = self._plan(x.shape, (kh, kw))
        rows, cols = top_left[:, 0], top_left[:, 1]
        result: dict = {}
        pending: list = []
        batches = self._batches(plan, rows, cols)
        prefix = functools.partial(self._prefix_of, plan, rows, cols, patches)
        for idx, crops in _in_order(prefix, batches, self.workers):
            _store(result, idx, len(patches),
                   {t: self._materialize(t, crops[t]) for t in self.outputs if t in crops})
            if plan.remainder is None:
                continue
            if self.device_paste:  # crops of different sizes: one remainder run per batch
                feeds = {}
                for t in plan.remainder_inputs:
                    feeds.update(self._device_feeds(t, crops[t]))
                batched = [t for t in feeds if not t.endswith("__clean")]
                _store(result, idx, len(patches),
                       dict(zip(plan.wanted, plan.remainder.run(feeds, plan.wanted, batched))))
                continue
            # the full maps of several batches go through the remainder together: its fully
            # connected layers read their weights once per run
            pending.append((idx, {t: self._materialize(t, crops[t])
                                  for t in plan.remainder_inputs}))
            if (sum(len(i) for i, _ in pending) >= REMAINDER_BATCH
                    or sum(v.nbytes for _, f in pending for v in f.values()) >= REMAINDER_BYTES):
                self._flush(plan, pending, result, len(patches))
        self._flush(plan, pending, result, len(patches))
        return {o: result[o] for o in self.outputs}

    def _flush(self, plan: _Plan, pending: list, result: dict, total: int) -> None:
        """Run the remainder on the pending full maps and store its outputs."""
        if not pending:
            return
        idx = np.concatenate([i for i, _ in pending])
        feeds = {t: np.concatenate([f[t] for _, f in pending]) for t in plan.remainder_inputs}
        _store(result, idx, total, dict(zip(plan.wanted, plan.remainder.run(feeds, plan.wanted))))
        pending.clear()

    def _batches(self, plan, rows, cols) -> list:
        """Index arrays of the batches: windows of one class (same box sizes) together; the
        classes of a chunk are merged (boxes widened to the largest) when they are small."""
        geo = plan.geo
        if plan.cut == 0:
            return [np.arange(i, min(i + self.batch_size, len(rows)))
                    for i in range(0, len(rows), self.batch_size)]
        key = geo.row_class[rows] * (geo.col_class.max() + 1) + geo.col_class[cols]
        order = np.argsort(key, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(key[order])) + 1)
        if self.grouping == "merge" or (self.grouping == "auto"
                                        and len(rows) / len(groups) < self.min_group):
            groups = [np.arange(len(rows))]
        return [g[i:i + self.batch_size] for g in groups for i in range(0, len(g), self.batch_size)]

    def _prefix_of(self, plan: _Plan, rows, cols, patches, idx) -> tuple:
        """``(idx, crops)``: :meth:`_prefix` of the windows ``idx`` (one batch)."""
        return idx, self._prefix(plan, rows[idx], cols[idx], patches[idx])

    def _prefix(self, plan: _Plan, rows, cols, patches) -> dict:
        """The incremental steps for one batch of windows: tensor -> (crops, rows, cols)."""
        a, geo = self.analysis, plan.geo
        crops = {a.input_name: (patches, rows, cols)}
        for i, step in enumerate(a.steps[:plan.cut]):
            if step.output in crops:  # computed fused in the session of a step before it
                continue
            r0, c0, size = _boxes(geo.boxes[step.output], geo.shapes[step.output], rows, cols)
            # 1×1 steps behind this one run in its session when their boxes are its box
            # (always, unless merged classes widened one of them differently)
            fused = []
            for j in self._followers(i, plan.cut):
                box = _boxes(geo.boxes[a.steps[j].output], geo.shapes[a.steps[j].output],
                             rows, cols)
                if box[2] != size or not (np.array_equal(box[0], r0)
                                          and np.array_equal(box[1], c0)):
                    break
                fused.append(j)
            extra = []
            if step.kind == "pointwise":
                src = crops[step.inputs[0]][0]
                out, *extra = self._crop_session(i, src.shape[1], len(fused)).run(
                    {step.inputs[0]: src})
            elif step.kind == "concat":
                parts = [self._recrop(t, crops[t], r0, c0, size) for t in step.inputs]
                out = np.concatenate(parts, axis=1)
            elif step.kind == "merge":
                feeds = {t: self._recrop(t, crops[t], r0, c0, size) for t in step.inputs}
                out, *extra = self._crop_session(i, None, len(fused)).run(feeds)
            else:
                src, sr, sc = crops[step.inputs[0]]
                (pt, _), (pl, _) = geo.pads[i]
                ax = step.axes
                g0, h0 = r0 * ax[0].stride, c0 * ax[1].stride
                region_size = ((size[0] - 1) * ax[0].stride + ax[0].extent,
                               (size[1] - 1) * ax[1].stride + ax[1].extent)
                padded = self._padded_hwc(step.inputs[0], geo.pads[i], step.pad_value)
                region = _gather(padded, g0, h0, region_size)
                _paste(region, src, sr + pt - g0, sc + pl - h0)
                session = self._crop_session(i, region.shape[1], len(fused))
                feeds = {step.inputs[0]: region}
                feeds.update({t: self._recrop(t, crops[t], r0, c0, size)
                              for t in step.inputs[1:]})  # a fused residual Add's operands
                out, *extra = [region] if session is None else session.run(feeds)
                if plan.scales.get(i) is not None:
                    out = out * _gather(plan.scales[i][:, :, None], r0, c0, size)
            crops[step.output] = (out, r0, c0)
            for j, value in zip(fused, extra):
                crops[a.steps[j].output] = (value, r0, c0)
        return crops

    def _recrop(self, name, crop, r0, c0, size) -> np.ndarray:
        """The values of ``name`` on the box (r0, c0, size): clean context + its changed crop."""
        src, sr, sc = crop
        if src.shape[2:] == tuple(size) and np.array_equal(sr, r0) and np.array_equal(sc, c0):
            return src
        region = _gather(self._padded_hwc(name, ((0, 0), (0, 0)), 0.0), r0, c0, size)
        _paste(region, src, sr - r0, sc - c0)
        return region

    def _materialize(self, name, crop) -> np.ndarray:
        src, r0, c0 = crop
        return _patch_images(self._clean[name], np.stack([r0, c0], axis=1), src)

    def _device_feeds(self, name, crop) -> dict:
        """Inputs of the ScatterElements prelude for frontier tensor ``name``."""
        src, r0, c0 = crop
        c, h, w = self._clean[name].shape
        n, _, ch, cw = src.shape
        if name not in self._device_clean:
            value = self._clean[name][None]
            if self.device == "cuda":
                import onnxruntime as ort

                value = ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0)
            self._device_clean[name] = value
        index = ((r0[:, None, None] + np.arange(ch)[:, None]) * w
                 + c0[:, None, None] + np.arange(cw)).reshape(n, 1, ch * cw)
        return {name + "__clean": self._device_clean[name],
                name + "__crop": np.ascontiguousarray(src), name + "__index": index}


def _in_order(fn, items, workers: int):
    """``fn(item)`` for each item, in order; with ``workers > 1`` computed by that many
    threads, at most ``2 · workers`` ahead of the consumer (onnxruntime and most NumPy work
    release the GIL). An exception is raised where its item would have been yielded."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="preddiff-batch") as pool:
        queue = collections.deque()
        items = iter(items)
        try:
            for item in items:
                queue.append(pool.submit(fn, item))
                if len(queue) >= 2 * workers:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()
        finally:
            for future in queue:  # an error or an abandoned generator: start nothing more
                future.cancel()


def _crop_model_single(template: onnx.ModelProto, node) -> onnx.ModelProto:
    """A pooling node with padding turned off, input ``x`` (1, 1, h, w), output ``y``."""
    n = onnx.NodeProto()
    n.CopyFrom(node)
    keep = [a for a in n.attribute if a.name not in ("pads", "auto_pad", "ceil_mode")]
    del n.attribute[:]
    n.attribute.extend(keep + [helper.make_attribute("pads", [0, 0, 0, 0])])
    n.input[0], n.output[0] = "x", "y"
    return _new_model(template, [n], [_value_info("x", [1, 1, "h", "w"])],
                      [_value_info("y", None)], [], "avg_crop")
