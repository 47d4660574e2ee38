"""Exact incremental inference for Prediction Difference Analysis: the runner.

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
   recomputed only on that box, from an input region that is the clean activation with the
   changed crop of the previous layer laid over it, with the padding turned off: the layer's
   padding value (0 for convolution and average pooling, -inf for max pooling, the constant of
   a Pad) is put around the clean map once, so it only ever appears at the true image border.
   Average pooling is rescaled by the true divisor of each output position (which Caffe's and
   ONNX's ``count_include_pad`` semantics make position dependent).
3. When the changed box covers most of the map -- decided by a cost model comparing
   multiply-adds plus data movement for every possible switch point, printed in the log --
   or at the first layer that is not spatially local (Flatten, Gemm, global pooling, ...),
   the changed crops are written into full copies of the clean maps and the rest of the
   network runs in full.

The module layout follows those steps: :mod:`preddiff.incremental_plan` analyses the graph,
computes every window's boxes and picks the switch point (pure NumPy and ``onnx``);
:mod:`preddiff.incremental_graph` compiles that plan into **one ONNX graph** (gathers, the
crop computations, the pastes at the switch point and the rest of the network; no Python
between layers, the same graph on every execution provider); this module runs it
(:class:`IncrementalClassifier`), one session call per batch of windows, the clean maps bound
once per image through IOBinding (:class:`preddiff.binding.BoundSession`, shared with the
naive engine's :class:`~preddiff.classifier.OnnxClassifier`); and
:mod:`preddiff.incremental_decision` measures whether it is faster than the naive engine on
the machine at hand.

A window's projective field depends on its position (clipped at the border, and one unit
wider or narrower with the alignment to the strides), so windows are grouped into *classes*
whose boxes have the same size in every layer; the compiled graph computes each batch's boxes
from the windows' positions, widening smaller boxes to the batch's largest and shifting them
inwards at the border, which recomputes some unchanged values, exactly. A class too small to
batch well is merged with others (``grouping``).

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
``x * sigmoid(x)``, GELU's Erf chain), evaluated on the union of their changed boxes. A global
operator (GlobalAveragePool, a ReduceMean over H and W as in squeeze-and-excitation,
InstanceNormalization, Flatten, Gemm, ...) ends the prefix on its path; everything computed
from it runs in full inference. A graph with no spatially local layer on the prefix, without
one 4-D float input, or below opset 11 (the compiled graph's index operators) is evaluated
naively, with the reason logged at WARNING level (:func:`supported` gives it without building
anything). Whether the incremental engine is actually faster on a machine is measured by
:func:`preddiff.incremental_decision.decide_incremental`.

On CUDA the batch size defaults to :func:`auto_batch_size` of the free device memory;
``float16=True`` runs the graph in half precision (see :func:`to_float16`; off by default).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import queue
import re
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .binding import BoundSession
from .devices import available_cores, gpu_free_memory, resolve_device
from .errors import InvalidArgument
from .compose import compose_batch, model_opset
from .incremental_graph import MIN_OPSET, compile_plan, unpadded
from .incremental_plan import (
    Analysis, analyse, choose_cut, format_plan, geometry, load_model, remainder_macs,
)

log = logging.getLogger(__name__)

__all__ = ["IncrementalClassifier", "supported", "auto_batch_size", "gpu_free_memory",
           "to_float16", "theoretical_macs", "resolve_device"]

DEFAULT_BATCH_SIZE = 64
#: Batching model of grouping "auto", in multiply-add equivalents: the fixed cost of one
#: session call per node of the compiled graph (about 4 µs per node against about 120 G
#: multiply-adds/s, measured for ResNet-50 on a 2-core x86 CPU: 18 ms per call of 4,497
#: nodes), and moving one channel value of a crop (gathers, transposes, layout reorders:
#: several ns each; chosen among 256, 1024 and 4096 by measured speed on the benchmark's
#: networks, where 1024 was best or within noise of best).
CALL_COST_PER_NODE = 5.0e5
#: ... and per index entry of the compiled graph (a region's four terms or a box's positions,
#: computed on the host, fed, and combined in the graph; both charged alike): the batches the
#: in-graph index arithmetic's ~65 nodes per region gave before; on ResNet-18's benchmark
#: block 0, 1.6e7, 3.25e7 and 6.5e7 measured equal within noise (103, 69, 42 and 33 calls;
#: 6 same-process rounds each).
CALL_COST_PER_INDEX = 3.25e7
MOVE_COST = 1024.0
#: Changes when the engine's speed changes (2: two batches side by side on a CPU; 3: 1×1
#: steps fused; 4: full images timed as the engine sends them, composed on the device on
#: CUDA; 5: the plan compiled into one graph per input and window size; 6: full maps gathered,
#: classes merged by a cost model; 7: 1×1 steps read their input's crop; 8: switch point 0
#: on the CPU builds the images on the host, the clean pass does not spin; 9: residual merges
#: and concatenations channels-last; 10: a cut-0 plan composes into one reused buffer; 11: box
#: and index arithmetic on the host; 12: two compiled graph calls side by side on a CPU,
#: costliest first), so that the decisions cached by
#: :mod:`preddiff.incremental_decision` are measured again.
ENGINE_REVISION = 12


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
    analysis, reason = _supported(model, outputs)
    return bool(analysis), reason


def _supported(model, outputs) -> tuple:
    """``(analysis, "")`` when the model runs incrementally, else ``(None, reason)``."""
    from google.protobuf.message import DecodeError

    try:
        analysis = analyse(model, outputs)
    except (ValueError, OSError, DecodeError) as exc:
        return None, str(exc)
    if not analysis.steps:
        return None, ("no spatially local layer before the first other operator "
                      f"({analysis.stop_reason})")
    if model_opset(analysis.model) < MIN_OPSET:
        return None, (f"the compiled incremental graph needs opset {MIN_OPSET} or newer; the "
                      f"model declares opset {model_opset(analysis.model)}")
    return analysis, ""



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



def _store(result: dict, idx, total: int, part: dict) -> None:
    """``result[name][idx] = part[name]``, allocating (total, ...) arrays on first use."""
    for name, value in part.items():
        if name not in result:
            result[name] = np.empty((total, *value.shape[1:]), value.dtype)
        result[name][idx] = value


def _locked(method):
    """Run ``method`` holding the instance's lock (its clean activations are shared state)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


# --------------------------------------------------------------------------------------------
# the classifier


class _Plan:
    """Geometry, switch point and compiled graph for one input size and window size."""

    def __init__(self, geo, report, compiled, sessions):
        self.geo, self.report = geo, report
        self.cut = report["cut"]
        self.compiled = compiled
        self.sessions = sessions    # _Sessions of the compiled graph (one, or one per worker)
        self.runners = []           # BoundSessions (one per worker), created on first use
        self.bound = None           # the clean-image key whose maps are bound
        self.batch_model = None     # grouping "auto"'s cost arrays, computed on first use

    @property
    def session(self):
        """The first (often the only) session of the compiled graph."""
        return self.sessions[0]


class IncrementalClassifier:
    """An ONNX classifier with exact incremental evaluation of windowed perturbations.

    Called on a batch it behaves like :class:`preddiff.classifier.OnnxClassifier` (full
    forward passes). :meth:`evaluate_windows` returns the same outputs for images that differ
    from one clean image only inside a window, computing each layer only on the window's
    projective field (Krypton, Nakandala et al. SIGMOD 2019; see the module docstring), one
    compiled graph call per batch of windows.

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
        onnxruntime intra-op threads (default: onnxruntime's choice; with ``workers`` > 1,
        the available cores), shared by the workers: each compiled graph call gets
        ``threads // workers`` of them.
    workers : int, optional
        Batches of windows evaluated side by side, each on its own host thread (CPU only;
        a CUDA device runs one at a time), at most ``threads``. Default: 2 where that gives
        each call one thread (two cores, or ``threads=2``), else 1 (measured on a 2-core
        machine only). Coarse parallelism: each call runs its many small operators without
        waiting on the other cores, which on a 2-core VM made every benchmark network's
        block 1.05-1.24x faster and steadier (``bench/workers_ab.py``, see
        ``docs/performance.md``). With more than one thread per call each worker has its
        own onnxruntime session (onnxruntime's thread pool is per session, shared by
        overlapping runs), which holds its own copy of the weights. Outputs are identical
        to ``workers=1``.
    float16 : bool
        Run the sessions in float16 (CUDA only; default False).
    incremental : bool
        False disables the incremental path (:meth:`evaluate_windows` builds full images).
    cut : int, optional
        Force the number of steps evaluated incrementally (tests); default: cost model.
    grouping : {"auto", "exact", "merge"}, optional
        How windows are batched: "exact" batches windows whose changed boxes have the same
        sizes in every layer (fewest multiply-adds, but small classes make small batches,
        and each batch reads the weights after the switch point once); "merge" evaluates
        each chunk of ``batch_size`` windows, in the caller's order, as one batch with every
        box widened to the chunk's largest; "auto" batches by class and lets consecutive
        classes share a batch of up to ``batch_size`` windows when the multiply-adds added by
        widening their boxes cost less than the session call saved (a cost model:
        :data:`CALL_COST_PER_NODE`, :data:`CALL_COST_PER_INDEX`, :data:`MOVE_COST`).
        Default: "auto" on CPU, "merge" on CUDA.

    Attributes
    ----------
    incremental : bool
        Whether :meth:`evaluate_windows` runs incrementally.
    reason : str
        Why not, when it does not (also logged).
    workers : int
        Batches evaluated side by side (1 on CUDA).

    Notes
    -----
    The clean image's activations are cached state: calls from several threads are
    serialised by a lock. A model whose input declares a fixed batch size is run in chunks of
    exactly that size, as :class:`~preddiff.classifier.OnnxClassifier` runs it.
    """

    def __init__(self, model, *, outputs=("prob",), batch_size=None, device="auto",
                 threads=None, workers=None, float16=False, incremental=True, cut=None,
                 grouping=None):
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
        if workers is None:
            workers = 2 if self.device == "cpu" and (threads or available_cores()) == 2 else 1
        if (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                or workers < 1):
            raise InvalidArgument(f"workers must be a positive integer, got {workers!r}")
        if threads and workers > threads:
            raise InvalidArgument(f"workers ({workers}) must not exceed threads ({threads}): "
                                  "each worker's calls run on at least one thread")
        if self.device == "cuda" and workers > 1:
            log.warning("workers=%d needs the CPU provider; one batch at a time on CUDA",
                        workers)
            workers = 1
        self.workers = int(workers)
        self._pool = None  # the workers' threads, started on first use
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
        self._full = self._session(_with_outputs(self.model, self.outputs), fixed=True)
        self._cut = cut
        if grouping is None:  # a GPU wants large batches more than the fewest multiply-adds
            grouping = "merge" if self.device == "cuda" else "auto"
        if grouping not in ("auto", "exact", "merge"):
            raise InvalidArgument(f"grouping must be 'auto', 'exact' or 'merge', got {grouping!r}")
        self.grouping = grouping
        self._plans: dict = {}
        self._host_buffer = None  # whole images composed on the host (plans with cut 0)
        self._clean_key = None
        self._clean: dict = {}
        self.incremental, self.reason = False, "disabled by the caller"
        self.analysis = None
        if incremental:
            ok, self.reason = _supported(self.model, self.outputs)
            if ok:
                self.analysis = ok
                self.incremental = True
        if self.incremental:
            log.info("incremental inference: %d steps, prefix ends at %s",
                     len(self.analysis.steps), self.analysis.stop_reason)
            # the clean pass also returns the requested outputs: a single image evaluated by
            # __call__ (the engine's unperturbed image) fills the cache at no extra cost
            self._clean_names = list(dict.fromkeys(
                [s.output for s in self.analysis.steps]
                + [o for o in self.outputs if o != self.analysis.input_name]))
            # one call per image: its threads must not keep spinning after it (onnxruntime's
            # workers spin a while before they sleep) beside the windows' graph (LeNet's
            # windows after a spinning clean pass: 27k against 38k window-samples/s)
            self._clean_session = self._session(_with_outputs(self.model, self._clean_names),
                                                fixed=True, spinning=False)
        else:
            log.log(logging.WARNING if incremental else logging.INFO,
                    "incremental inference off, evaluating full images: %s", self.reason)

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider the sessions run on (as OnnxClassifier)."""
        return "CUDAExecutionProvider" if self.device == "cuda" else "CPUExecutionProvider"

    def _session(self, model, fixed=False, spinning=True) -> _Session:
        """A session; ``fixed``: a graph derived from the model's own (full or clean), which
        keeps the batch size the model's input may declare."""
        if self.float16:
            model = to_float16(model)
        return _Session(model, self.device, self.threads, spinning,
                        self._fixed_batch if fixed else None)

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
            self._clean_key = key
        return {o: self._clean[o][None] for o in self.outputs}

    @_locked
    def clear_cache(self) -> None:
        """Forget the clean image's cached activations (sessions and plans are kept), so that
        the next evaluation pays for its clean forward pass again (benchmarks)."""
        self._clean_key = None
        self._clean = {}
        for plan in self._plans.values():
            plan.bound = None

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
        scales = {i: self._average_scale(i, geo) for i, s in enumerate(a.steps[:cut])
                  if s.average is not None}
        compiled = compile_plan(a, geo, cut, self.outputs, scales)
        log.info("compiled graph: %d nodes, %d clean maps bound per image", compiled.nodes,
                 len(compiled.clean_inputs))
        model = to_float16(compiled.model) if self.float16 else compiled.model
        threads = self._call_threads()
        # onnxruntime's intra-op pool is the session's, shared by overlapping runs: with more
        # than one thread per call each worker gets a session, so that each call has its share
        sessions = [_Session(model, self.device, threads, True)
                    for _ in range(1 if threads == 1 else self.workers)]
        plan = _Plan(geo, report, compiled, sessions)
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
        """Modelled device memory of one more window in a batch (regions, crops, full maps
        after the switch point, the image)."""
        geo, cut = plan.geo, plan.cut
        crops = sum(geo.shapes[s.output][0] * geo.boxes[s.output].size[0].max()
                    * geo.boxes[s.output].size[1].max() for s in self.analysis.steps[:cut])
        full = sum(np.prod(geo.shapes[s.output]) for s in self.analysis.steps[cut:])
        return 4.0 * (6 * crops + 3 * full + 4 * np.prod(geo.shapes[self.analysis.input_name]))

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
        top_left = np.ascontiguousarray(top_left, np.int64)
        if not len(patches):
            return self(np.empty((0, *x.shape), np.float32))
        if not self.incremental:
            return self._full_images(x, top_left, patches)
        self._set_clean(x)
        plan = self._plan(x.shape, (kh, kw))
        if plan.cut == 0 and self.device == "cpu":
            # nothing incremental: the compiled graph would only paste the windows into the
            # image, which the host does faster on the CPU (LeNet, k = 10, 64 images per
            # call: 23,100 against 19,100 window-samples/s, medians of 3 interleaved rounds);
            # on CUDA the graph saves sending whole images
            return self._full_images(x, top_left, patches)
        runners = self._runners(plan)
        calls = self._calls(plan, top_left)
        free = queue.SimpleQueue()
        for runner in runners:
            free.put(runner)

        def call(stored, fed):
            runner = free.get()
            try:
                out = runner.run(plan.compiled.feeds(patches[fed], top_left[fed]),
                                 self.outputs, len(fed))
            finally:
                free.put(runner)
            return stored, {o: v[:len(stored)] for o, v in out.items()}

        result: dict = {}
        if len(runners) == 1 or len(calls) == 1:
            for stored, fed in calls:
                _store(result, stored, len(patches), call(stored, fed)[1])
            return {o: result[o] for o in self.outputs}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers,
                                            thread_name_prefix="preddiff-incremental")
            weakref.finalize(self, self._pool.shutdown, wait=False)
        futures = [self._pool.submit(call, *c) for c in calls]
        try:
            for future in futures:
                stored, out = future.result()
                _store(result, stored, len(patches), out)
        finally:
            # on an error (or an interrupt) no call may outlive this one: the next
            # evaluation rebinds the runners
            for future in futures:
                future.cancel()
            wait(futures)
        return {o: result[o] for o in self.outputs}

    def _full_images(self, x, top_left, patches) -> dict:
        """The outputs of the perturbed images built on the host, :attr:`batch_size` at a
        time (the naive engine's way), through the full graph (never the clean pass, which
        ``self(batch)`` takes for a batch of one image)."""
        name, size = self._full.inputs[0], self.batch_size
        if self._host_buffer is None or self._host_buffer.shape != (size,) + x.shape:
            # one buffer for all calls (LeNet: composing into new arrays cost 3.2 ms of
            # 3,610 images, more than the copies themselves)
            self._host_buffer = np.empty((size,) + x.shape, np.float32)
        parts = [self._full.run({name: compose_batch(x, top_left[i:i + size],
                                                     patches[i:i + size],
                                                     out=self._host_buffer)}, self.outputs)
                 for i in range(0, len(patches), size)]
        return {o: np.concatenate([p[k] for p in parts]) for k, o in enumerate(self.outputs)}

    def _call_threads(self):
        """Intra-op threads of one compiled graph call: all of them with one worker,
        else each worker's share of ``threads`` (or of the available cores)."""
        if self.workers == 1:
            return self.threads
        return max(1, (self.threads or available_cores()) // self.workers)

    def _runners(self, plan: _Plan) -> list:
        """The plan's bound sessions, one per worker (over one onnxruntime session, whose
        runs may overlap), with this image's clean maps bound (once per image)."""
        if not plan.runners:
            sessions = plan.sessions
            plan.runners = [BoundSession(sessions[i % len(sessions)].session,
                                         sessions[i % len(sessions)].device)
                            for i in range(self.workers)]
        if plan.bound != self._clean_key:
            for ci in plan.compiled.clean_inputs:
                value = ci.build(self._clean[ci.tensor])
                for runner in plan.runners:
                    runner.set_constant(ci.name, value)
            plan.bound = self._clean_key
        return plan.runners

    def _calls(self, plan: _Plan, top_left) -> list:
        """The compiled graph calls of a batch of windows, as (stored, fed) index arrays:
        :meth:`_batches`, and for a graph whose input declares a batch size, chunks of exactly
        that size (the last padded by repeating its last window, as OnnxClassifier runs
        it). With several workers, the costliest calls come first (longest processing time
        first), so that the last ones to finish are short."""
        step = self._fixed_batch
        batches = self._batches(plan, top_left[:, 0], top_left[:, 1])
        calls = []
        for idx in batches:
            if not step or len(idx) == step:
                calls.append((idx, idx))
                continue
            for start in range(0, len(idx), step):
                part = idx[start:start + step]
                calls.append((part, np.concatenate([part, np.repeat(part[-1:],
                                                                    step - len(part))])))
        if self.workers > 1 and len(calls) > 1 and plan.cut:
            per_pos, heights, widths = self._batch_model(plan)
            cost = []
            for _, fed in calls:
                h, w = _widened(heights, widths, top_left[fed, 0], top_left[fed, 1])
                cost.append(len(fed) * (per_pos @ (h * w)))
            calls = [calls[i] for i in np.argsort(-np.asarray(cost), kind="stable")]
        return calls

    def _batches(self, plan, rows, cols) -> list:
        """Index arrays of the batches, at most :attr:`batch_size` windows each: windows of
        one class (same box sizes) together; with grouping "auto", classes smaller than a
        batch share one with the classes next to them in class order (rows, then columns:
        boxes of similar sizes), widened to the largest box; "merge" batches windows in the
        caller's order."""
        geo, size = plan.geo, self.batch_size
        if plan.cut == 0 or self.grouping == "merge":
            return [np.arange(i, min(i + size, len(rows))) for i in range(0, len(rows), size)]
        key = geo.row_class[rows] * (geo.col_class.max() + 1) + geo.col_class[cols]
        order = np.argsort(key, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(key[order])) + 1)
        batches = [g[i:i + size] for g in groups for i in range(0, len(g), size)]
        if self.grouping == "exact":
            return batches
        # "auto": a batch takes the next one in when widening their boxes to a common size
        # costs less than the call saved (modelled in multiply-add equivalents)
        per_pos, heights, widths = self._batch_model(plan)
        call = (CALL_COST_PER_NODE * plan.compiled.nodes
                + CALL_COST_PER_INDEX * len(plan.compiled.index.entries))
        merged = [batches[0]]
        h, w = _widened(heights, widths, rows[batches[0]], cols[batches[0]])
        for batch in batches[1:]:
            bh, bw = _widened(heights, widths, rows[batch], cols[batch])
            mh, mw = np.maximum(h, bh), np.maximum(w, bw)
            n, m = len(merged[-1]), len(batch)
            apart = n * (per_pos @ (h * w)) + m * (per_pos @ (bh * bw)) + call
            if n + m <= size and (n + m) * (per_pos @ (mh * mw)) <= apart:
                merged[-1] = np.concatenate([merged[-1], batch])
                h, w = mh, mw
            else:
                merged.append(batch)
                h, w = bh, bw
        return merged

    def _batch_model(self, plan) -> tuple:
        """Per incremental step: modelled cost per output position (multiply-adds plus
        :data:`MOVE_COST` per channel value moved), and the box heights (by window row) and
        widths (by window column) of its output, as arrays (steps,), (steps, H), (steps, W);
        computed once per plan."""
        if plan.batch_model is None:
            steps, geo = self.analysis.steps[:plan.cut], plan.geo
            per_pos = np.array([t["macs_full"] / max(t["shape"][1] * t["shape"][2], 1)
                                + MOVE_COST * t["shape"][0]
                                for t in plan.report["steps"][:plan.cut]])
            heights = np.stack([geo.boxes[s.output].size[0] for s in steps]).astype(np.float64)
            widths = np.stack([geo.boxes[s.output].size[1] for s in steps]).astype(np.float64)
            plan.batch_model = (per_pos, heights, widths)
        return plan.batch_model


def _widened(heights, widths, rows, cols) -> tuple:
    """Per incremental step, the box height and width of a batch of windows at ``rows`` and
    ``cols``: every box widened to the batch's largest (``heights`` (steps, H) by window row,
    ``widths`` (steps, W) by window column, as :meth:`IncrementalClassifier._batch_model`)."""
    return heights[:, rows].max(1), widths[:, cols].max(1)


def _crop_model_single(template: onnx.ModelProto, node) -> onnx.ModelProto:
    """A pooling node with padding turned off, input ``x`` (1, 1, h, w), output ``y``."""
    n = unpadded(node)
    n.input[0], n.output[0] = "x", "y"
    return _new_model(template, [n], [_value_info("x", [1, 1, "h", "w"])],
                      [_value_info("y", None)], [], "avg_crop")
