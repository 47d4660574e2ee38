"""A classifier callable around onnxruntime: ``classifier(batch) -> {blob name: array}``.

PDA (Zintgraf et al. 2017, Algorithm 1) only needs to evaluate the network on many inputs and
read a few blobs: the class probabilities for the weight of evidence, eq. (4)–(5), or a hidden
or penultimate blob for the activation difference, eq. (9). :class:`OnnxClassifier` does that
for any ONNX model with one image input (N, C, H, W): a converted Caffe-zoo net
(:meth:`OnnxClassifier.for_model`) or a user's own model, with the user's own preprocessing.

Intermediate blobs are exposed by adding them as graph outputs on a copy of the model, and
only those asked for: exposing every blob of GoogLeNet made onnxruntime 2.3× slower. Graph
outputs that were not asked for are dropped, so onnxruntime also skips the layers that only
they need.

The CUDA execution provider is used when a CUDA device and onnxruntime's CUDA libraries are
present (``device="auto"`` or ``"cuda"``); otherwise the CPU, with a logged message saying
why. :attr:`OnnxClassifier.provider` says which one runs.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import threading
import re
import sys
from pathlib import Path

import numpy as np

from .binding import BoundSession
from .compose import CLEAN, PATCHES, TOP_LEFT, compose_batch
from .errors import InvalidArgument, PredDiffError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
#: Where :meth:`OnnxClassifier.evaluate_windows` composes PDA's perturbed images
#: (:mod:`preddiff.compose`): ``"auto"`` = inside the graph on CUDA (only the window samples
#: travel), on the host on the CPU (where there is no transfer to save and NumPy's copy costs
#: no more than the graph's).
COMPOSE = ("auto", "device", "host")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
#: Options of every CUDA session: full float32 arithmetic. onnxruntime's CUDA provider
#: defaults to TensorFloat-32 convolutions and matrix products (10-bit mantissa) on Ampere and
#: newer GPUs; measured on an H100 (bench/results/gpu_check.txt) that moved the relevance
#: maps by 1.7 % of their maximum between two batch sizes of the same naive run.
CUDA_OPTIONS = {"use_tf32": "0"}


def cuda_providers() -> list:
    """The providers list of a CUDA session: CUDA (with :data:`CUDA_OPTIONS`), then CPU."""
    return [(_CUDA, dict(CUDA_OPTIONS)), _CPU]


def _cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver), without onnxruntime,
    so that a machine without a GPU never triggers onnxruntime's provider-loading errors."""
    names = {"win32": ["nvcuda.dll"], "linux": ["libcuda.so.1", "libcuda.so"]}
    for name in names.get(sys.platform, []):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


_PRELOAD_NOTE = None


def preload_cuda_libraries() -> str:
    """Load the CUDA and cuDNN libraries of the ``nvidia-*`` pip packages (the
    ``preddiff[gpu]`` extra: ``onnxruntime-gpu[cuda,cudnn]``) with
    ``onnxruntime.preload_dlls()`` (onnxruntime ≥ 1.21), once per process, so that a machine
    with only the NVIDIA driver runs on CUDA. Done only when the driver reports a device.

    Returns
    -------
    str
        One line saying what happened (``preddiff doctor`` prints it).
    """
    global _PRELOAD_NOTE
    if _PRELOAD_NOTE is None:
        import contextlib
        import io

        import onnxruntime as ort

        if _CUDA not in ort.get_available_providers():
            _PRELOAD_NOTE = "not needed: this onnxruntime build has no CUDA provider"
        elif _cuda_device_count() == 0:
            _PRELOAD_NOTE = "not done: the NVIDIA driver reports no CUDA device"
        elif not hasattr(ort, "preload_dlls"):
            _PRELOAD_NOTE = (f"not available in onnxruntime {ort.__version__} (1.21 or newer "
                             "has it): the CUDA and cuDNN libraries must be on the loader path")
        else:
            printed = io.StringIO()  # it reports missing libraries with print()
            try:
                with contextlib.redirect_stdout(printed):
                    ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - a failure is reported, never fatal
                printed.write(f"{type(exc).__name__}: {exc}")
            failed = [line for line in printed.getvalue().splitlines() if "Failed" in line
                      or "rror" in line]
            _PRELOAD_NOTE = ("done" if not failed else
                             "incomplete: " + "; ".join(failed[:3]))
        log.info("onnxruntime.preload_dlls: %s", _PRELOAD_NOTE)
    return _PRELOAD_NOTE


def _load_model(model, name: str | None = None):
    """``(onnx.ModelProto, name for messages)`` of a model or a model file.

    The name is ``name`` when given, else the file's path, else ``ONNX model '<graph name>'``.
    An empty file, or one that parses as protobuf but holds no graph, is not an ONNX model.
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model, name or f"ONNX model {model.graph.name or '(unnamed graph)'!r}"
    path = Path(model)
    if not path.is_file():
        raise InvalidArgument(f"ONNX model file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise PredDiffError(f"ONNX model file {str(path)!r} is empty (0 bytes): not an ONNX "
                            "model (an interrupted copy or download?)")
    try:
        loaded = onnx.load(str(path))
    except Exception as exc:
        raise PredDiffError(f"cannot read {str(path)!r} as an ONNX model: {exc}") from exc
    if not loaded.HasField("graph") or not (loaded.graph.node or loaded.graph.input):
        raise PredDiffError(f"{str(path)!r} is not an ONNX model: it holds no graph "
                            f"({path.stat().st_size:,} bytes)")
    return loaded, name or str(path)


def _check_windows(shape, top_left, patches) -> None:
    """Windows inside the image (the device's ScatterND does not check its indices)."""
    channels, height, width = shape
    if patches.ndim != 4 or patches.shape[1] != channels or len(top_left) != len(patches):
        raise InvalidArgument(
            f"patches must have shape (N, {channels}, kh, kw) with one top-left corner each; "
            f"got patches {patches.shape} and top_left {top_left.shape}")
    if len(top_left):
        kh, kw = patches.shape[2:]
        low, high = top_left.min(axis=0), top_left.max(axis=0)
        if low.min() < 0 or high[0] > height - kh or high[1] > width - kw:
            raise InvalidArgument(
                f"window top-left corners must lie in [0, {height - kh}] x [0, {width - kw}] "
                f"for {kh}x{kw} windows in a {height}x{width} image; got rows {low[0]}–"
                f"{high[0]}, columns {low[1]}–{high[1]}")


def _input_dtype(value_info, source) -> type:
    """The NumPy type the image input takes: float32, or float64 / float16 (the float32 batch
    is cast: exactly, resp. rounded as the model's own Cast would). Integer inputs are refused:
    the preprocessed images are fractional ([0, 1], or normalised)."""
    from onnx import TensorProto

    elem = value_info.type.tensor_type.elem_type
    floats = {TensorProto.UNDEFINED: np.float32, TensorProto.FLOAT: np.float32,
              TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16}
    if elem in floats:
        return floats[elem]
    kind = TensorProto.DataType.Name(elem).lower() if elem in TensorProto.DataType.values() \
        else str(elem)
    raise InvalidArgument(
        f"{source} input {value_info.name!r} has type {kind}; preddiff feeds it preprocessed "
        f"float images (scaled to [0, 1] or normalised), which a {kind} input cannot hold: "
        "export the model with a float32 input (e.g. its Cast inside the graph)")


def _is_model_proto(model) -> bool:
    import onnx

    return isinstance(model, onnx.ModelProto)


@dataclasses.dataclass
class _Composer:
    """The composing graph of :meth:`OnnxClassifier.evaluate_windows` for one input shape,
    window and set of reduced blobs: its bound session, the output names it fetches, the
    clean image bound (our own copy) and whether it has run once."""

    key: tuple
    runner: BoundSession
    names: list
    clean: np.ndarray | None = None
    ran: bool = False


class OnnxClassifier:
    """Evaluate an ONNX image classifier in batches and return the requested blobs.

    Parameters
    ----------
    model : str, Path or onnx.ModelProto
        The network; its (first) graph input that is not an initializer takes the images,
        shape (N, C, H, W).
    outputs : sequence of str, optional
        Blob names (values of the graph) to return. Default: the model's graph outputs.
        Blobs that are not graph outputs are made graph outputs on a copy of the model.
    batch_size : int
        Largest number of inputs per onnxruntime call. A model with a fixed batch dimension
        is evaluated in chunks of that size, the last one padded.
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` and ``"cuda"`` use the CUDA execution provider when it works (a warning
        when it was asked for and does not); ``"cpu"`` never tries it.
    threads : int, optional
        onnxruntime's intra-op threads (default: its own choice, one per core).
    name : str, optional
        The model in messages (default: the file's path, or the graph's name for a
        ``ModelProto``; pass the path a ``ModelProto`` was read from).
    compose : {"auto", "device", "host"}, optional
        Where :meth:`evaluate_windows` composes the perturbed images (:data:`COMPOSE`).

    Attributes
    ----------
    provider : str
        The execution provider in use, ``"CUDAExecutionProvider"`` or ``"CPUExecutionProvider"``.
    outputs : tuple of str
        Blobs returned by :meth:`__call__`, in this order.
    blob_names : tuple of str
        Every value of the graph that can be requested (the input and every node output).
    input_name : str
    input_shape : tuple, (C, H, W)
        From the model's input; None for a dimension the model leaves free.

    Examples
    --------
    >>> clf = OnnxClassifier.for_model("lenet", outputs=["ip2", "prob"])  # doctest: +SKIP
    >>> out = clf(images)          # images: float32 (N, 1, 28, 28)      # doctest: +SKIP
    >>> out["prob"].shape                                                 # doctest: +SKIP
    (N, 10)
    """

    def __init__(self, model, *, outputs=None, batch_size: int = 64, device: str = "auto",
                 threads: int | None = None, name: str | None = None, compose: str = "auto"):
        if device not in DEVICES:
            raise InvalidArgument(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
        if int(batch_size) < 1:
            raise InvalidArgument(f"batch_size must be a positive integer, got {batch_size}")
        if threads is not None and int(threads) < 1:
            raise InvalidArgument(f"threads must be a positive integer, got {threads}")
        if compose not in COMPOSE:
            raise InvalidArgument(f"unknown compose {compose!r}; expected one of "
                                  f"{', '.join(COMPOSE)}")
        self.compose = compose
        self._lock = threading.Lock()  # evaluate_windows' buffers and binding are shared
        self._composer = None  # the composing graph's _Composer, built on first use
        self._buffer = None    # host composition buffer (batch_size images)
        self._from_file = not _is_model_proto(model)
        self._model, self.source = _load_model(model, name)
        self.batch_size = int(batch_size)
        self.device = device
        self.threads = threads
        graph = self._model.graph
        #: tensors a Softmax node produces: probability blobs (weight of evidence)
        self.probability_outputs = tuple(o for n in graph.node if n.op_type == "Softmax"
                                         for o in n.output if o)
        initializers = {t.name for t in graph.initializer}
        inputs = [v for v in graph.input if v.name not in initializers]
        if len(inputs) != 1:
            raise InvalidArgument(
                f"{self.source} has {len(inputs)} graph inputs "
                f"({', '.join(v.name for v in inputs)}); expected one image input"
            )
        self.input_name = inputs[0].name
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) != 4:
            raise InvalidArgument(f"{self.source} input {self.input_name!r} has {len(dims)} "
                                  "dimensions; expected (N, C, H, W)")
        self.input_shape = tuple(dims[1:])
        self._input_dtype = _input_dtype(inputs[0], self.source)
        self._fixed_batch = dims[0] if dims[0] else None
        names = [self.input_name]
        for node in graph.node:
            names.extend(o for o in node.output if o)
        self.blob_names = tuple(dict.fromkeys(names))
        default = [o.name for o in graph.output]
        self.outputs = tuple(default if outputs is None else self._check_outputs(outputs))
        self._session = None
        self.provider = None
        self._open_session()
        self._out_tail = None
        if self._from_file:
            self._model = None  # onnxruntime holds its own copy; with_outputs reloads the file

    def _check_outputs(self, outputs) -> list[str]:
        if isinstance(outputs, str):
            outputs = [outputs]
        outputs = list(dict.fromkeys(outputs))
        if not outputs:
            raise InvalidArgument("outputs is empty; name at least one blob")
        known = set(self.blob_names)
        unknown = [o for o in outputs if o not in known]
        if unknown:
            raise InvalidArgument(
                f"unknown blob(s) {', '.join(map(repr, unknown))} in {self.source}; "
                f"available: {', '.join(self.blob_names)}"
            )
        return outputs

    def _session_model(self):
        """The model with exactly the requested graph outputs (a copy when that changes it)."""
        import onnx

        wanted = [o for o in self.outputs if o != self.input_name]
        current = [o.name for o in self._model.graph.output]
        if wanted == current:
            return self._model
        model = onnx.ModelProto()
        model.CopyFrom(self._model)
        by_name = {o.name: o for o in self._model.graph.output}
        by_name.update({v.name: v for v in self._model.graph.value_info if v.name not in by_name})
        del model.graph.output[:]
        for name in wanted:
            # onnxruntime accepts an output without a type; keep the known one when there is
            model.graph.output.append(by_name.get(name, onnx.ValueInfoProto(name=name)))
        return model

    def _make_session(self, data: bytes, providers):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # no warnings about unused initializers etc.
        if self.threads is not None:
            options.intra_op_num_threads = int(self.threads)
        return ort.InferenceSession(data, options, providers=providers)

    def _open_session(self) -> None:
        import onnxruntime as ort

        model = self._session_model()
        data = model.SerializeToString()
        session = None
        if self.device != "cpu":
            session = self._try_cuda(data, ort)
        if session is None:
            try:
                session = self._make_session(data, [_CPU])
            except Exception as exc:
                session = self._retry_ir_version(model, exc, [_CPU])
        self._session = session
        self.provider = session.get_providers()[0]
        log.info("onnxruntime runs %s on %s", self.source, self.provider)

    def _retry_ir_version(self, model, exc, providers):
        """Retry with the IR version lowered to what this onnxruntime supports: newer onnx
        packages stamp a newer IR version than older onnxruntime builds read."""
        import onnx

        match = re.search(r"max supported IR version: (\d+)", str(exc))
        if not match or model.ir_version <= int(match.group(1)):
            raise PredDiffError(f"onnxruntime cannot load {self.source}: {exc}") from exc
        lowered = onnx.ModelProto()
        lowered.CopyFrom(model)
        lowered.ir_version = int(match.group(1))
        try:
            return self._make_session(lowered.SerializeToString(), providers)
        except Exception as again:
            raise PredDiffError(f"onnxruntime cannot load {self.source}: {again}") from again

    def _try_cuda(self, data: bytes, ort):
        """A CUDA session, or None (with a log message saying why)."""
        level = logging.WARNING if self.device == "cuda" else logging.INFO
        if _CUDA not in ort.get_available_providers():
            log.log(level, "CUDA requested but this onnxruntime has no CUDA provider; using the CPU")
            return None
        if _cuda_device_count() == 0:
            log.log(level, "no CUDA device found; using the CPU")
            return None
        preload_cuda_libraries()
        ort.set_default_logger_severity(4)  # its own errors would duplicate our one warning
        try:
            try:
                session = self._make_session(data, cuda_providers())
            except Exception as exc:
                import onnx

                session = self._retry_ir_version(onnx.load_from_string(data), exc,
                                                 cuda_providers())
        except Exception as exc:
            log.warning("could not create a CUDA session (%s); using the CPU", exc)
            return None
        finally:
            ort.set_default_logger_severity(2)
        if session.get_providers()[0] != _CUDA:
            log.warning("onnxruntime could not load its CUDA libraries (see the onnxruntime-gpu "
                        "requirements: CUDA and cuDNN versions); using the CPU")
            return None
        return session

    @classmethod
    def for_model(cls, name: str, outputs=None, **kwargs) -> "OnnxClassifier":
        """The classifier of zoo network ``name`` (converted to ONNX on first use).

        Parameters
        ----------
        name : str
            Zoo name (:data:`preddiff.zoo.MODEL_NAMES`).
        outputs : sequence of str, optional
            Blobs to return; default: the manifest's output blob (``prob``).
        **kwargs
            ``batch_size``, ``device``, ``threads``.
        """
        from . import zoo

        m = zoo.manifest(name)
        classifier = cls(zoo.ensure_onnx(name), outputs=outputs or [m.output], **kwargs)
        classifier.manifest = m
        return classifier

    def with_outputs(self, outputs) -> "OnnxClassifier":
        """A new classifier on the same model returning ``outputs`` instead."""
        model = self._model if self._model is not None else self.source
        clone = OnnxClassifier(model, outputs=outputs, batch_size=self.batch_size,
                               device=self.device, threads=self.threads, name=self.source,
                               compose=self.compose)
        clone.source = self.source
        if hasattr(self, "manifest"):
            clone.manifest = self.manifest
        return clone

    def _check_batch(self, batch) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim != 4 or any(
            want is not None and got != want for got, want in zip(batch.shape[1:], self.input_shape)
        ):
            shape = tuple("?" if d is None else d for d in self.input_shape)
            raise InvalidArgument(
                f"input batch has shape {batch.shape}; expected (N, {', '.join(map(str, shape))})"
            )
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _run(self, chunk: np.ndarray) -> list[np.ndarray]:
        wanted = [o for o in self.outputs if o != self.input_name]
        n = len(chunk)
        if self._fixed_batch and n != self._fixed_batch:
            padded = np.zeros((self._fixed_batch,) + chunk.shape[1:], np.float32)
            padded[:n] = chunk
            chunk = padded
        feed = chunk if self._input_dtype == np.float32 else chunk.astype(self._input_dtype)
        results = dict(zip(wanted, self._session.run(wanted, {self.input_name: feed}))) if wanted else {}
        results[self.input_name] = chunk
        return [results[o][:n] for o in self.outputs]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Evaluate the network.

        Parameters
        ----------
        batch : ndarray, shape (N, C, H, W)
            Any N ≥ 0; cast to float32. Evaluated in chunks of ``batch_size``.

        Returns
        -------
        dict of str to ndarray, each of shape (N, ...)
            The blobs of :attr:`outputs`, in that order.
        """
        batch = self._check_batch(batch)
        n = len(batch)
        step = self._fixed_batch or self.batch_size
        if n == 0:
            return {name: np.empty((0,) + tail, dtype) for name, (tail, dtype) in
                    zip(self.outputs, self._output_tails(batch))}
        out = None
        for start in range(0, n, step):
            results = self._run(batch[start : start + step])
            if out is None:
                out = [np.empty((n,) + r.shape[1:], r.dtype) for r in results]
            for full, part in zip(out, results):
                full[start : start + len(part)] = part
        return dict(zip(self.outputs, out))

    # -- PDA's fast path: windows instead of images ---------------------------------------

    @property
    def composes_on_device(self) -> bool:
        """Whether :meth:`evaluate_windows` composes the images inside the graph."""
        if self.compose == "auto":
            return self.provider == _CUDA and not self._fixed_batch
        return self.compose == "device" and not self._fixed_batch

    #: :meth:`evaluate_windows` can return blobs with spatial dimensions as per-map means.
    supports_spatial_means = True

    def evaluate_windows(self, x, top_left, patches, *, spatial_means=()) -> dict:
        """The blobs of the perturbed images ``x`` with ``patches[n]`` at ``top_left[n]``.

        The engine's fast path (:mod:`preddiff.analysis`): what ``self(batch)`` returns for
        those images, in calls of at most :attr:`batch_size` images, the images composed on
        the host or inside the graph (:attr:`composes_on_device`, :mod:`preddiff.compose`).

        Parameters
        ----------
        x : ndarray of float32, shape (C, H, W)
            The clean image (kept on the device between calls while it does not change).
        top_left : ndarray of int, shape (N, 2)
        patches : ndarray of float32, shape (N, C, kh, kw)
        spatial_means : sequence of str, optional
            Blobs of shape (N, C, h, w) to return as their per-feature-map mean (N, C) when
            the images are composed on the device (the mean is then taken there, in float64,
            and only (N, C) values are copied back); ignored otherwise.

        Returns
        -------
        dict of str to ndarray, each (N, ...)
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        top_left = np.ascontiguousarray(top_left, dtype=np.int64).reshape(-1, 2)
        patches = np.ascontiguousarray(patches, dtype=np.float32)
        self._check_batch(x[None])
        _check_windows(x.shape, top_left, patches)
        with self._lock:  # one call at a time: the buffers and the binding are shared
            return self._evaluate_windows(x, top_left, patches, spatial_means)

    def _evaluate_windows(self, x, top_left, patches, spatial_means) -> dict:
        n = len(patches)
        if n == 0 or not self.composes_on_device:
            return self._windows_on_host(x, top_left, patches)
        means = tuple(b for b in spatial_means if b in self.outputs and b != self.input_name)
        composer = self._composing(x, patches.shape[2:], means)
        if composer is None:  # the graph could not be composed: host from now on
            return self._windows_on_host(x, top_left, patches)
        if composer.clean is None or not np.array_equal(composer.clean, x):
            composer.clean = x.copy()  # our own copy: the caller may refill its array
            composer.runner.set_constant(CLEAN, composer.clean[None])
        step, names = self.batch_size, composer.names
        try:
            parts = [composer.runner.run({PATCHES: patches[i:i + step],
                                          TOP_LEFT: top_left[i:i + step]}, names,
                                         min(step, n - i))
                     for i in range(0, n, step)]
        except Exception as exc:  # noqa: BLE001 - host composition always works
            if self.compose == "device" or composer.ran:
                raise
            log.warning("composing the images on the host: the composing graph of %s "
                        "failed on its first batch (%s)", self.source,
                        " ".join(str(exc).split())[:300])
            self.compose, self._composer = "host", None
            return self._windows_on_host(x, top_left, patches)
        composer.ran = True  # ran once: later errors are errors
        out = {}
        for blob, name in zip(self._composed_outputs(), names):
            out[blob] = (parts[0][name] if len(parts) == 1 else
                         np.concatenate([p[name] for p in parts]))
        if self.input_name in self.outputs:
            out[self.input_name] = compose_batch(x, top_left, patches)
        return {o: out[o] for o in self.outputs}

    def _composed_outputs(self) -> list[str]:
        return [o for o in self.outputs if o != self.input_name]

    def _windows_on_host(self, x, top_left, patches) -> dict:
        """Host composition, one call of at most :attr:`batch_size` images at a time, in a
        buffer reused between calls."""
        n = len(patches)
        step = self._fixed_batch or self.batch_size
        if n == 0:
            return self(np.empty((0,) + x.shape, np.float32))
        if self._buffer is None or self._buffer.shape != (step,) + x.shape:
            self._buffer = np.empty((step,) + x.shape, np.float32)
        out = None
        for start in range(0, n, step):
            stop = min(n, start + step)
            batch = compose_batch(x, top_left[start:stop], patches[start:stop],
                                  out=self._buffer)
            results = self._run(batch)
            if out is None:
                out = [np.empty((n,) + r.shape[1:], r.dtype) for r in results]
            for full, part in zip(out, results):
                full[start:stop] = part
        return dict(zip(self.outputs, out))

    def _composing(self, x, window, means) -> "_Composer | None":
        """The composing graph for this input shape, window and reduced blobs (built on first
        use and when they change); None when it cannot be built (then: host from now on)."""
        key = (x.shape, tuple(window), means)
        if self._composer is None or self._composer.key != key:
            import onnx

            from .compose import MEAN_SUFFIX, composing_model

            model = self._model if self._model is not None else onnx.load(self.source)
            outputs = self._composed_outputs()
            providers = cuda_providers() if self.provider == _CUDA else [_CPU]
            try:
                wrapped = composing_model(model, self.input_name, x.shape, window, outputs,
                                          spatial_means=means)
                try:
                    session = self._make_session(wrapped.SerializeToString(), providers)
                except Exception as exc:
                    session = self._retry_ir_version(wrapped, exc, providers)
            except Exception as exc:  # noqa: BLE001 - host composition always works
                if self.compose == "device":
                    raise PredDiffError(f"cannot compose the images inside {self.source}: "
                                        f"{exc} (use compose='host')") from exc
                log.warning("composing the images on the host: the composing graph of %s "
                            "does not load (%s)", self.source, exc)
                self.compose = "host"
                return None
            device = "cuda" if session.get_providers()[0] == _CUDA else "cpu"
            names = [o + MEAN_SUFFIX if o in means else o for o in outputs]
            self._composer = _Composer(key, BoundSession(session, device), names)
        return self._composer

    def _output_tails(self, batch: np.ndarray):
        """Per-input shape and dtype of each output, from one evaluation on zeros (cached)."""
        if self._out_tail is None:
            shape = tuple(1 if d is None else d for d in self.input_shape)
            if None in self.input_shape and batch.ndim == 4:
                shape = batch.shape[1:]
            results = self._run(np.zeros((1,) + tuple(shape), np.float32))
            self._out_tail = [(r.shape[1:], r.dtype) for r in results]
        return self._out_tail

    def __repr__(self) -> str:
        return (f"OnnxClassifier({self.source!r}, outputs={list(self.outputs)}, "
                f"batch_size={self.batch_size}, provider={self.provider!r})")

