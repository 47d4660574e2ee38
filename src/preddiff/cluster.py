"""Prediction difference analysis on a Dask cluster, bit for bit the single-process result.

Scope
-----
One explanation (Zintgraf et al. 2017, Algorithm 1) is split into *blocks* of consecutive
windows of one image; the blocks of every image of a run are tasks of one Dask
(:mod:`distributed`) computation, so that many images and also one large image spread over
the workers. The engine's per-window values depend only on the arguments, the window's own
random stream (:func:`preddiff.streams.window_rng`) and the batch it is evaluated in; blocks
start and end on the engine's fixed batch grid (:class:`preddiff.analysis.WindowEvaluator`),
so every batch is the one a single process would evaluate. The client puts the blocks' values
into place and computes the per-pixel average once, in the fixed window order
(:func:`preddiff.analysis.assemble`): the result equals ``prediction_difference`` in one
process, bit for bit (tested), whichever worker computed which block and whether a worker died
on the way.

What runs where
---------------
* The client prepares each image (arguments, sampler, the clean forward pass, the checkpoint)
  and submits one small task holding the image's data (:class:`_Job`: the image, the fitted
  sampler, the clean outputs and a :class:`ClassifierRecipe`) and one task per block.
* A worker builds each classifier (onnxruntime session, incremental plan) once per process
  and model (:func:`classifier_for`, keyed on the model file's sha1 and the options) and
  reuses it for every block. The workers need preddiff installed and the model file readable
  at the same path (a shared file system); its sha1 is checked there.
* Faults: Dask recomputes the tasks of a worker that died elsewhere (the image task too: it is
  part of the graph, not scattered data); a block that raises a
  :class:`~preddiff.errors.PredDiffError` stops the run with that error, prefixed with the
  image's name; Ctrl-C saves every image's checkpoint (the finished prefix of blocks) first,
  so that the same command resumes.

Nothing here schedules, queues or talks over sockets itself: that is Dask's job.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
import threading
import time
import types
import uuid
import warnings
from collections import OrderedDict
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InvalidArgument, PredDiffError

__all__ = ["ClassifierRecipe", "Analysis", "classifier_for", "connect", "explain_all",
           "prediction_difference", "map_images", "ClusterUnavailable", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'preddiff[cluster]'"

#: Blocks per worker the run is cut into (more: better balance and finer checkpoints, at
#: about 10 ms of scheduling each), and the largest block in classifier batches.
BLOCKS_PER_WORKER = 8
#: Environment variable giving a worker's onnxruntime threads (set for local workers).
THREADS_VARIABLE = "PREDDIFF_WORKER_THREADS"
MAX_BATCHES_PER_BLOCK = 8


class ClusterUnavailable(PredDiffError):
    """Dask is not installed, or the cluster cannot be started or reached."""


#: Environment variable: seconds a run waits for a scheduler without workers (at the start, or
#: after all its workers died) before it gives up (default :data:`NO_WORKERS_TIMEOUT`).
NO_WORKERS_VARIABLE = "PREDDIFF_NO_WORKERS_TIMEOUT"
NO_WORKERS_TIMEOUT = 120.0
#: Local worker processes per core at most, and the memory each needs at least (a worker with
#: its onnxruntime session and the image task).
MAX_WORKERS_PER_CORE = 4
WORKER_MEMORY = 256 * 2**20
#: Address schemes a client in another process can reach.
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


def no_workers_timeout() -> float:
    """Seconds to wait for workers (``PREDDIFF_NO_WORKERS_TIMEOUT``, default 120)."""
    text = os.environ.get(NO_WORKERS_VARIABLE, "")
    try:
        value = float(text) if text else NO_WORKERS_TIMEOUT
    except ValueError:
        raise InvalidArgument(f"{NO_WORKERS_VARIABLE}={text!r}: expected seconds, e.g. 120") \
            from None
    return max(0.0, value)


def max_local_workers() -> int:
    """The most local worker processes :func:`connect` starts: :data:`MAX_WORKERS_PER_CORE`
    per core, and no more than the available memory holds at :data:`WORKER_MEMORY` each."""
    from .explainer import available_memory as _available_memory

    cores = os.cpu_count() or 1
    limit = MAX_WORKERS_PER_CORE * cores
    available = _available_memory()
    if available is not None:
        limit = min(limit, max(1, available // WORKER_MEMORY))
    return int(limit)


def check_address(address: str) -> str:
    """``--scheduler ADDRESS`` checked before connecting: ``[SCHEME://]HOST:PORT`` with a port
    in 1–65535 and a scheme another process can reach (``inproc://`` cannot)."""
    text = str(address).strip()
    scheme, sep, location = text.partition("://")
    if not sep:
        scheme, location = "tcp", text
    scheme = scheme.lower()
    usage = "expected tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786"
    if scheme not in SCHEMES:
        why = (f"{scheme}:// addresses name a scheduler inside one process"
               if scheme == "inproc" else f"unknown scheme {scheme}://")
        raise InvalidArgument(f"--scheduler {text!r}: {why}; {usage}")
    host, colon, port = location.rpartition(":")
    if scheme in ("tcp", "tls") and (not colon or not host or not port.isdigit()):
        raise InvalidArgument(f"--scheduler {text!r}: no port; {usage}")
    if port.isdigit() and not 1 <= int(port) <= 65535:
        raise InvalidArgument(f"--scheduler {text!r}: port {port} is out of range (1-65535)")
    return f"{scheme}://{location}"


def _probe_scheduler(address: str, timeout: float) -> None:
    """Before Dask connects to a ``tcp://`` address: a refused connection, an unknown host or
    a server that is not a Dask scheduler (e.g. its dashboard, any HTTP server: Dask would
    wait for its answer for minutes) are one clear error, at once.

    A Dask scheduler speaks first: it sends its handshake as soon as a connection is accepted;
    an HTTP server waits for a request and sends nothing."""
    import socket

    scheme, _, location = address.partition("://")
    if scheme != "tcp":
        return
    host, _, port = location.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except ConnectionRefusedError:
        raise ClusterUnavailable(f"cannot reach the Dask scheduler {address!r}: the connection "
                                 "was refused (no scheduler listens on that port)") from None
    except socket.gaierror as exc:
        raise ClusterUnavailable(f"cannot reach the Dask scheduler {address!r}: unknown host "
                                 f"{host!r} ({exc.strerror})") from None
    except (TimeoutError, socket.timeout):
        raise ClusterUnavailable(f"cannot reach the Dask scheduler {address!r}: no answer "
                                 f"within {timeout:g} s") from None
    except OSError as exc:
        raise ClusterUnavailable(f"cannot reach the Dask scheduler {address!r}: "
                                 f"{exc.strerror or exc}") from None
    with sock:
        sock.settimeout(timeout)
        try:
            first = sock.recv(8)
        except (TimeoutError, socket.timeout):
            first = None
        except OSError:
            first = b""
    if not first:
        raise ClusterUnavailable(
            f"{address!r} is not a Dask scheduler: the server there "
            f"{'sent nothing within %g s' % timeout if first is None else 'closed the connection'}"
            " (a dashboard or another HTTP server? the scheduler's own port is usually 8786)")


def _lost(address) -> ClusterUnavailable:
    where = f" {address}" if address else ""
    return ClusterUnavailable(
        f"lost the connection to the Dask scheduler{where} (it stopped or the network failed); "
        "the finished work is saved: rerun the same command to resume")


class _Watchdog:
    """Watches a client while its futures run, in a thread: when the scheduler has had no
    workers for :func:`no_workers_timeout` seconds (all died), or the client lost the
    scheduler, it records why and cancels the futures, so that the loop over them ends."""

    def __init__(self, client, futures, address=None, poll: float = 0.5):
        self.client, self.futures, self.address, self.poll = client, futures, address, poll
        self.limit = no_workers_timeout()
        self.reason = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="preddiff-watchdog",
                                        daemon=True)

    def start(self) -> "_Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # a call to a lost scheduler must not delay the error

    def _watch(self) -> None:
        since = None
        while not self._stop.wait(self.poll):
            try:
                if self.client.status not in ("running", "connecting", "newly-created"):
                    self.reason = _lost(self.address)
                    return
                workers = self.client.nthreads()  # {worker address: threads}
            except Exception:  # noqa: BLE001 - a client shutting down
                continue
            if workers:
                since = None
                continue
            since = time.monotonic() if since is None else since
            if time.monotonic() - since >= self.limit:
                self.reason = ClusterUnavailable(
                    f"the Dask scheduler{' ' + self.address if self.address else ''} has had "
                    f"no workers for {self.limit:g} s (they died, or none were started); the "
                    "finished work is saved: start workers and rerun the same command to "
                    f"resume ({NO_WORKERS_VARIABLE} sets the wait)")
                self._cancel()
                return

    def _cancel(self) -> None:
        while True:
            try:
                pending = list(self.futures)  # the loop pops from it meanwhile
                break
            except RuntimeError:
                continue
        for future in pending:
            try:
                future.cancel()
            except Exception:  # noqa: BLE001 - a client shutting down
                pass

    def error(self, exc: BaseException) -> BaseException:
        """What to raise for ``exc`` (a cancelled future or a connection error): the reason
        recorded, a lost scheduler, else ``exc`` itself (an error of the task)."""
        if self.reason is not None:
            return self.reason
        if isinstance(exc, CancelledError) or self.client.status != "running":
            return _lost(self.address)
        return exc


def require_distributed():
    """Import :mod:`distributed`, or raise :class:`ClusterUnavailable` saying how to get it."""
    try:
        import distributed
    except ImportError:
        raise ClusterUnavailable(
            "--workers and --scheduler need Dask's distributed scheduler, which is not "
            f"installed: {INSTALL_HINT}") from None
    return distributed


# ----------------------------------------------------------------------------------------------
# classifiers, built once per worker process


@dataclass(frozen=True)
class ClassifierRecipe:
    """How to build a classifier on a worker: an ONNX file and the classifier's options.

    Attributes
    ----------
    path : str
        The ONNX file; read on the worker (same path on every machine, e.g. a shared folder).
    sha1 : str
        The file's sha1: part of the cache key, and checked on the worker.
    outputs : tuple of str
        Blobs the classifier returns.
    batch_size : int or None
        Images per onnxruntime call (as the single-process classifier's; None: the
        classifier's default).
    incremental : bool
        :class:`~preddiff.incremental.IncrementalClassifier` (exact incremental inference)
        instead of :class:`~preddiff.classifier.OnnxClassifier`.
    device : {"auto", "cpu", "cuda"}
    threads : int, optional
        onnxruntime intra-op threads on the worker (default: the worker's
        ``PREDDIFF_WORKER_THREADS`` environment variable, which :func:`connect` sets to each
        local worker's share of the cores, else onnxruntime's choice: every core).
    """

    path: str
    sha1: str
    outputs: tuple
    batch_size: int | None
    incremental: bool = False
    device: str = "auto"
    threads: int | None = None

    @classmethod
    def for_file(cls, path, outputs, batch_size, **options) -> "ClassifierRecipe":
        """A recipe for the ONNX file ``path`` (its sha1 is computed here)."""
        path = Path(path).resolve()
        batch_size = None if batch_size is None else int(batch_size)
        return cls(str(path), _file_sha1(path), tuple(outputs), batch_size, **options)

    def build(self):
        """A new classifier (checks that the file is the one the client meant)."""
        if not Path(self.path).is_file():
            raise ClusterUnavailable(
                f"model file {self.path} is not readable on this worker: workers need the "
                "model (and preddiff) at the same path as the client, e.g. a shared folder")
        found = _file_sha1(self.path)
        if found != self.sha1:
            raise ClusterUnavailable(f"model file {self.path} on this worker has sha1 {found}, "
                                     f"the client's has {self.sha1}")
        threads = self.threads
        if threads is None and os.environ.get(THREADS_VARIABLE, "").isdigit():
            threads = int(os.environ[THREADS_VARIABLE]) or None
        if self.incremental:
            from .incremental import IncrementalClassifier

            return IncrementalClassifier(self.path, outputs=list(self.outputs),
                                         batch_size=self.batch_size, device=self.device,
                                         threads=threads)
        from .classifier import OnnxClassifier

        return OnnxClassifier(self.path, outputs=list(self.outputs),
                              batch_size=self.batch_size or 64, device=self.device,
                              threads=threads)


def _file_sha1(path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_CLASSIFIERS: dict = {}
_CLASSIFIERS_LOCK = threading.Lock()
#: How many classifiers this process built, per recipe (tests read it on the workers).
BUILDS: dict = {}


def classifier_for(recipe: ClassifierRecipe):
    """The classifier of ``recipe``, built on first use in this process and then reused."""
    with _CLASSIFIERS_LOCK:
        if recipe not in _CLASSIFIERS:
            _CLASSIFIERS[recipe] = recipe.build()
            BUILDS[recipe] = BUILDS.get(recipe, 0) + 1
        return _CLASSIFIERS[recipe]


# ----------------------------------------------------------------------------------------------
# tasks (run on the workers)


@dataclass(frozen=True)
class _Job:
    """What every block of one image needs; one task of the graph, fetched once per worker."""

    token: str
    setup: object          # preddiff.analysis.AnalysisSetup
    sampler: object
    clean: dict
    recipe: ClassifierRecipe


def _hold(shared):
    return shared


#: Per-process working copies of shared task data (see :func:`_private`), most recent last.
_COPIES: OrderedDict = OrderedDict()
MAX_COPIES = 8


def _private(token: str, shared):
    """This process's own copy of ``shared`` (made once per ``token``).

    A worker may send a task's input to another worker while one of its own tasks runs on
    it; tasks therefore never touch the shared object, whose samplers and models fill caches
    as they work (pickling a dict that another thread changes fails), but a private copy
    that lives on for the worker's later tasks of the same image or context.
    """
    import pickle

    import cloudpickle

    with _CLASSIFIERS_LOCK:
        if token in _COPIES:
            _COPIES.move_to_end(token)
            return _COPIES[token]
    copy = pickle.loads(cloudpickle.dumps(shared))
    with _CLASSIFIERS_LOCK:
        _COPIES[token] = copy
        while len(_COPIES) > MAX_COPIES:
            _COPIES.popitem(last=False)
    return copy


def _run_block(job: _Job, start: int, stop: int):
    """Values of windows ``start … stop − 1`` of ``job``: ``(values, timings)``."""
    from .analysis import window_values

    job = _private(job.token, job)
    timings = {"classifier": 0.0, "sampler": 0.0}
    values = window_values(job.setup, classifier_for(job.recipe), job.sampler, job.clean,
                           start, stop, timings)
    return values, timings


def _apply(function, token: str, shared, item):
    return function(_private(token, shared), item)


# ----------------------------------------------------------------------------------------------
# the client side


@dataclass
class Analysis:
    """One explanation to compute on the cluster.

    Attributes
    ----------
    name : str
        Names the image in messages (e.g. the IMAGE argument).
    x : ndarray, shape (C, H, W)
    recipe : ClassifierRecipe
        The classifier the workers build.
    sampler : object
        A fitted sampler (shipped to the workers).
    kwargs : dict
        The engine's arguments: ``window``, ``stride``, ``num_samples``, ``blobs``,
        ``probability_blobs``, ``batch_size``, ``rng``, ``laplace_n`` (as
        :func:`preddiff.prediction_difference`).
    checkpoint : path, optional
        Progress file, as :func:`preddiff.prediction_difference`'s (same format: a run on the
        cluster resumes a single-process checkpoint and vice versa).
    keep_checkpoint : bool
    classifier : object, optional
        The client's classifier for the clean pass (default: built from ``recipe``); the
        checkpoint records its type.
    """

    name: str
    x: np.ndarray
    recipe: ClassifierRecipe
    sampler: object
    kwargs: dict
    checkpoint: object = None
    keep_checkpoint: bool = False
    classifier: object = None


@dataclass
class _State:
    """Client-side bookkeeping of one analysis."""

    analysis: Analysis
    setup: object
    clean: dict
    values: dict
    timings: dict
    store: object
    done: int
    blocks: list = field(default_factory=list)   # [(start, stop)] from ``done`` on
    finished: list = field(default_factory=list)  # bool per block

    def prefix(self) -> int:
        """Windows finished without a gap from the first (what a checkpoint can hold)."""
        done = self.done
        for (start, stop), ok in zip(self.blocks, self.finished):
            if not ok:
                break
            done = stop
        return done

    def save(self, elapsed: float) -> None:
        if self.store is None:
            return
        timings = dict(self.timings, total=self.timings["total"] + elapsed)
        self.store.save(self.prefix(), self.values, timings)


def _prepare(analysis: Analysis) -> _State:
    from .analysis import (checkpoint_fingerprint, clean_outputs, prepare, reducers,
                           _resume)
    from .checkpoint import Checkpoint

    setup = prepare(analysis.x, analysis.sampler, **analysis.kwargs)
    classifier = analysis.classifier or classifier_for(analysis.recipe)
    clean, seconds = clean_outputs(setup, classifier)
    units = {b: r.units for b, r in reducers(setup, clean).items()}
    values = {b: np.zeros((setup.n_windows, units[b])) for b in setup.blobs}
    timings = {"classifier": 0.0, "sampler": 0.0, "total": 0.0}
    store, done = None, 0
    if analysis.checkpoint is not None:
        store = Checkpoint(analysis.checkpoint, checkpoint_fingerprint(setup, classifier),
                           clean)
        done = _resume(store, values, timings)
    timings["classifier"] += seconds
    return _State(analysis, setup, clean, values, timings, store, done)


def _block_batches(states, workers: int, block_windows=None) -> None:
    """Cut each analysis's remaining windows into blocks on its batch grid."""
    total = sum(math.ceil((s.setup.n_windows - s.done) / s.setup.windows_per_batch)
                for s in states)
    per_block = min(MAX_BATCHES_PER_BLOCK,
                    max(1, math.ceil(total / (BLOCKS_PER_WORKER * max(1, workers)))))
    for s in states:
        wpb = s.setup.windows_per_batch
        batches = per_block if block_windows is None else math.ceil(int(block_windows) / wpb)
        size = max(1, batches) * wpb
        start, n = s.done, s.setup.n_windows
        while start < n:
            # ends on the batch grid (a multiple of wpb), so batches are the single process's
            # (a checkpoint of another batch size may leave ``start`` off the grid)
            stop = min(n, max(start + 1, (start + size) // wpb * wpb))
            s.blocks.append((start, stop))
            start = stop
        s.finished = [False] * len(s.blocks)


def _worker_count(client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


def explain_all(client, analyses, *, progress: bool = True, block_windows=None,
                on_block=None) -> list:
    """Compute ``analyses`` on the cluster of ``client``; one progress bar over all blocks.

    Parameters
    ----------
    client : distributed.Client
    analyses : sequence of Analysis
    progress : bool
        A tqdm bar (windows, rate, ETA) over every block of every image on stderr.
    block_windows : int, optional
        Windows per block, rounded up to whole classifier batches (default: about
        :data:`BLOCKS_PER_WORKER` blocks per worker, at most :data:`MAX_BATCHES_PER_BLOCK`
        batches each). Blocks never split a batch.
    on_block : callable, optional
        ``on_block(name, start, stop)`` after each finished block (tests).

    Returns
    -------
    list of Explanation
        In the order of ``analyses``; bit for bit :func:`preddiff.prediction_difference`'s
        results with the same arguments and classifier. Timings: ``total`` is the client's
        wall time of the whole run (all images together, plus earlier runs resumed);
        ``classifier`` and ``sampler`` are summed over the workers (worker-seconds, so
        ``outside`` = total − classifier can be negative).

    Raises
    ------
    PredDiffError
        The first error of a block (a bad input, non-finite outputs, an unreadable model on a
        worker), its message prefixed with the image's name; or :class:`ClusterUnavailable`
        when a block killed its workers repeatedly (out of memory?).
    """
    from tqdm import tqdm

    from .analysis import assemble

    distributed = require_distributed()
    started = time.perf_counter()
    states = []
    for analysis in analyses:
        try:
            states.append(_prepare(analysis))
        except PredDiffError as exc:
            raise _named(exc, analysis.name) from None
    _block_batches(states, _worker_count(client), block_windows)

    futures = {}
    with warnings.catch_warnings():
        # the image task carries the image and the fitted sampler (a few MB): it belongs in
        # the graph, so that Dask can recompute it when the worker holding it dies
        warnings.simplefilter("ignore", UserWarning)
        for i, s in enumerate(states):
            if not s.blocks:
                continue
            job = client.submit(_hold, _Job(uuid.uuid4().hex, s.setup, s.analysis.sampler,
                                            s.clean, s.analysis.recipe), pure=False)
            for j, (start, stop) in enumerate(s.blocks):
                futures[client.submit(_run_block, job, start, stop, pure=False)] = (i, j)
            del job  # the blocks hold it

    total = sum(s.setup.n_windows for s in states)
    bar = tqdm(total=total, initial=sum(s.done for s in states), unit="win",
               desc=f"prediction difference ({len(states)} image{'s' * (len(states) != 1)})",
               file=sys.stderr, disable=not progress, dynamic_ncols=True, smoothing=0.1)
    watchdog = _Watchdog(client, futures, _address(client)).start()
    try:
        for future in distributed.as_completed(list(futures)):
            i, j = futures.pop(future)
            s = states[i]
            try:
                values, timings = future.result()
            except PredDiffError as exc:
                raise _named(exc, s.analysis.name) from None
            except distributed.scheduler.KilledWorker as exc:
                raise ClusterUnavailable(
                    f"{s.analysis.name}: the workers computing windows {s.blocks[j][0]}–"
                    f"{s.blocks[j][1] - 1} died repeatedly (out of memory? {exc})") from None
            except (CancelledError, OSError, distributed.comm.CommClosedError) as exc:
                raise watchdog.error(exc) from None
            start, stop = s.blocks[j]
            for blob in s.setup.blobs:
                s.values[blob][start:stop] = values[blob]
            for key in ("classifier", "sampler"):
                s.timings[key] += timings[key]
            s.finished[j] = True
            bar.update(stop - start)
            if on_block is not None:
                on_block(s.analysis.name, start, stop)
            if s.store is not None and s.store.due():
                s.save(time.perf_counter() - started)
    except BaseException:
        for future in futures:
            future.cancel()
        for s in states:
            try:
                s.save(time.perf_counter() - started)
            except Exception:  # keep the previous checkpoint; report the original error
                pass
        raise
    finally:
        watchdog.stop()
        bar.close()

    elapsed = time.perf_counter() - started
    out = []
    for s in states:
        # every image's time is the run's wall time (they ran together) plus earlier runs'
        s.timings["total"] += elapsed
        explanation = assemble(s.setup, s.clean, s.values, s.timings)
        if s.store is not None:
            if s.analysis.keep_checkpoint:
                s.store.save(s.setup.n_windows, s.values, s.timings)
            else:
                s.store.remove()
        out.append(explanation)
    return out


def _named(exc: PredDiffError, name: str) -> PredDiffError:
    """``exc`` with its message prefixed by the image's name (same class when possible)."""
    message = f"{name}: {' '.join(str(exc).split())}"
    try:
        return type(exc)(message)
    except Exception:  # noqa: BLE001 - an exception class with another signature
        return PredDiffError(message)


def prediction_difference(x, recipe: ClassifierRecipe, sampler, *, client, name="image",
                          checkpoint=None, keep_checkpoint=False, progress=True,
                          block_windows=None, classifier=None, **kwargs):
    """:func:`preddiff.prediction_difference` of one image on the cluster of ``client``.

    ``kwargs`` are the engine's (``window``, ``stride``, ``num_samples``, ``blobs``,
    ``probability_blobs``, ``batch_size``, ``rng``, ``laplace_n``); the classifier is given
    as a :class:`ClassifierRecipe` that each worker builds once. See :func:`explain_all`.
    """
    analysis = Analysis(name, x, recipe, sampler, kwargs, checkpoint, keep_checkpoint,
                        classifier)
    return explain_all(client, [analysis], progress=progress,
                       block_windows=block_windows)[0]


class _NotCached(Exception):
    """Raised by the probe ``compute`` of :func:`map_images` (never leaves it)."""


def _probe():
    raise _NotCached


def map_images(client, function, context, items, names, *, per_image=None,
               progress=True, desc="images") -> list:
    """``[function(context, item) for item in items]`` on the cluster, one task per item.

    ``context`` is one task of the graph, fetched once by each worker (and recomputed if the
    worker holding it dies); objects it holds (e.g. classifiers built on first use) live on
    for the worker's later items. Used by ``preddiff evaluate``, whose unit of work is the
    whole evaluation of one image.

    Parameters
    ----------
    per_image : callable, optional
        ``per_image(name, compute) -> result``, the cache hook of
        :func:`preddiff.evaluate.compare`: items it already holds are not submitted, and each
        computed result goes through it (written) as soon as it arrives.
    names : sequence
        One name per item, for ``per_image`` and error messages.

    Returns
    -------
    list
        The results in the order of ``items``.
    """
    from tqdm import tqdm

    distributed = require_distributed()
    results = [None] * len(items)
    todo = []
    for k, name in enumerate(names):
        if per_image is None:
            todo.append(k)
            continue
        try:
            results[k] = dict(per_image(name, _probe))
        except _NotCached:
            todo.append(k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the context is large on purpose
        held = client.submit(_hold, context, pure=False)
        token = uuid.uuid4().hex
        futures = {client.submit(_apply, function, token, held, items[k], pure=False): k
                   for k in todo}
        del held
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="image",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    watchdog = _Watchdog(client, futures, _address(client)).start()
    try:
        for future in distributed.as_completed(list(futures)):
            k = futures.pop(future)
            try:
                value = future.result()
            except PredDiffError as exc:
                raise _named(exc, str(names[k])) from None
            except distributed.scheduler.KilledWorker as exc:
                raise ClusterUnavailable(
                    f"{names[k]}: the workers computing it died repeatedly (out of memory? "
                    f"{exc}); the images finished are saved: rerun to resume") from None
            except (CancelledError, OSError, distributed.comm.CommClosedError) as exc:
                raise watchdog.error(exc) from None
            results[k] = dict(per_image(names[k], lambda: value) if per_image else value)
            bar.update(1)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    finally:
        watchdog.stop()
        bar.close()
    return results


def _address(client):
    """The scheduler's address (for messages), or None."""
    try:
        return client.scheduler.address
    except Exception:  # noqa: BLE001
        return None


# ----------------------------------------------------------------------------------------------
# clusters


def threads_per_worker(workers: int) -> int:
    """onnxruntime threads of each of ``workers`` local worker processes: the cores shared
    out evenly (at least one)."""
    return max(1, (os.cpu_count() or 1) // int(workers))


def gpu_pinning_plugin(devices):
    """A Dask worker plugin giving each worker of a local cluster one GPU of ``devices``.

    Worker ``i`` (local workers are named 0 … N − 1) sets ``CUDA_VISIBLE_DEVICES`` to
    ``devices[i % len(devices)]`` when it starts, before any onnxruntime session exists in it,
    so that its CUDA sessions run on that GPU alone (Dask's usual pinning, as ``dask cuda
    worker`` does on a cluster).
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class PinGPU(WorkerPlugin):
        name = "preddiff-pin-gpu"

        def __init__(self, devices):
            self.devices = [str(d) for d in devices]

        def setup(self, worker):
            try:
                index = int(worker.name)
            except (TypeError, ValueError):
                index = abs(hash(worker.name))
            os.environ["CUDA_VISIBLE_DEVICES"] = self.devices[index % len(self.devices)]

    return PinGPU(devices)


def _pin_gpus(client) -> int:
    """One GPU per local worker when this machine has several (see
    :func:`gpu_pinning_plugin`); returns the number of GPUs shared out (0: none pinned)."""
    from .classifier import _cuda_device_count

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = ([d for d in visible.split(",") if d.strip()] if visible else
               list(range(_cuda_device_count())))
    if len(devices) < 2:
        return 0
    plugin = gpu_pinning_plugin(devices)
    register = getattr(client, "register_plugin", None)  # distributed >= 2023.9.2
    if register is None:
        client.register_worker_plugin(plugin)
    else:
        register(plugin)
    return len(devices)


@contextmanager
def connect(*, workers: int | None = None, scheduler: str | None = None):
    """A :class:`distributed.Client` on a new local cluster or an existing scheduler.

    Parameters
    ----------
    workers : int, optional
        Start a local cluster of this many worker processes on the loopback interface, one
        task at a time each (their onnxruntime sessions use :func:`threads_per_worker`
        threads, through ``PREDDIFF_WORKER_THREADS``); closed on exit. On a machine with
        several GPUs each worker gets one (``CUDA_VISIBLE_DEVICES``, round robin:
        :func:`gpu_pinning_plugin`), so ``--workers`` = the number of GPUs uses them all.
    scheduler : str, optional
        Address of a running scheduler, e.g. ``tcp://10.0.0.5:8786``.

    Yields
    ------
    distributed.Client
    """
    if (workers is None) == (scheduler is None):
        raise InvalidArgument("give either --workers N or --scheduler ADDRESS, not both")
    if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
        raise InvalidArgument(f"--workers must be a positive integer, got {workers}")
    check_options(types.SimpleNamespace(workers=workers, scheduler=scheduler))
    if scheduler is not None:
        scheduler = check_address(scheduler)
    distributed = require_distributed()
    import logging

    with _quiet_dask():
        if workers is not None:
            try:
                cluster = distributed.LocalCluster(
                    n_workers=int(workers), threads_per_worker=1, processes=True,
                    host="127.0.0.1", dashboard_address=None, silence_logs=logging.CRITICAL,
                    # no dashboard; its HTTP server on a free port, so that a busy 8787
                    # (another cluster) gives no "Port 8787 is already in use" warning
                    scheduler_kwargs={"dashboard_address": ":0"},
                    env={THREADS_VARIABLE: str(threads_per_worker(workers))})
            except Exception as exc:  # noqa: BLE001 - any start failure is one line
                raise ClusterUnavailable(f"cannot start a local cluster of {workers} workers: "
                                         f"{type(exc).__name__}: {exc}") from None
            try:
                with distributed.Client(cluster) as client:
                    _pin_gpus(client)  # several GPUs: one per worker
                    yield client
            finally:
                cluster.close()
            return
        import dask

        timeout = dask.utils.parse_timedelta(
            dask.config.get("distributed.comm.timeouts.connect"), default="seconds")
        _probe_scheduler(scheduler, timeout)
        try:
            client = distributed.Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterUnavailable(f"cannot reach the Dask scheduler {scheduler!r}: {exc}") \
                from None
        try:
            wait = no_workers_timeout()
            try:
                client.wait_for_workers(1, timeout=wait)
            except (TimeoutError, OSError):
                raise ClusterUnavailable(
                    f"the Dask scheduler {scheduler} has no workers (waited {wait:g} s): start "
                    f"workers with `dask worker {scheduler}` ({NO_WORKERS_VARIABLE} sets the "
                    "wait)") from None
            yield client
        finally:
            client.close()


@contextmanager
def _quiet_dask():
    """Dask's own log lines (worker tracebacks, "Task … marked as failed", "Couldn't gather
    keys", port warnings) off stderr while preddiff uses the cluster: its errors are reported
    once, as preddiff's one line. The worker processes inherit a filter for the leaked
    semaphore warnings that killed workers leave."""
    import logging

    names = ["distributed", "tornado", "asyncio"] + [
        name for name in list(logging.root.manager.loggerDict)
        if name.startswith(("distributed.", "tornado."))]
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
    added = quiet not in sys.warnoptions
    if added:
        sys.warnoptions.append(quiet)  # passed on to the resource tracker when it starts
    try:
        with warnings.catch_warnings():
            # "Port 8787 is already in use. Perhaps you already have a cluster running?"
            warnings.filterwarnings("ignore", message="Port .* is already in use")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if added and quiet in sys.warnoptions:
            sys.warnoptions.remove(quiet)


# ----------------------------------------------------------------------------------------------
# command-line glue (``preddiff explain`` / ``evaluate``)


def add_arguments(parser) -> None:
    """``--workers N`` and ``--scheduler ADDRESS`` (mutually exclusive)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="compute on a local Dask cluster of N worker processes (cores "
                       f"shared out evenly; needs {INSTALL_HINT})")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="compute on a running Dask cluster, e.g. tcp://HOST:8786 (workers "
                       "need preddiff and the model file at the same path)")


def check_options(args) -> None:
    """``--workers`` / ``--scheduler`` checked before any work (bounds, address syntax)."""
    workers, scheduler = getattr(args, "workers", None), getattr(args, "scheduler", None)
    if workers is not None:
        if workers < 1:
            raise InvalidArgument(f"--workers must be a positive integer, got {workers}")
        if workers > max_local_workers():
            raise InvalidArgument(
                f"--workers {workers}: this machine runs at most {max_local_workers()} local "
                f"workers ({MAX_WORKERS_PER_CORE} per core on {os.cpu_count() or 1} cores, "
                f"{WORKER_MEMORY >> 20} MiB of available memory each); more processes only "
                "add memory: give fewer, or --scheduler for a cluster of several machines")
    if scheduler is not None:
        check_address(scheduler)


def wanted(args) -> bool:
    """Whether the command line asks for a cluster."""
    return getattr(args, "workers", None) is not None or \
        getattr(args, "scheduler", None) is not None


def explain_images(args, model, window: int, prepare_image, engine_kwargs) -> dict:
    """``preddiff explain --workers/--scheduler``: compute every image on the cluster.

    The results are handed to the command's ordinary per-image loop through the checkpoint
    files (complete, kept), so that it writes exactly what a single-process run writes.

    Parameters
    ----------
    args : argparse.Namespace
    model : preddiff.explainer.Model
    window : int
    prepare_image : callable
        ``prepare_image(args, model, spec, window) -> (name, x, pool, sampler, stem,
        checkpoint)``.
    engine_kwargs : callable
        ``engine_kwargs(args, model, window) -> dict`` of the engine's arguments.

    Returns
    -------
    dict
        IMAGE argument → what ``prepare_image`` returned for it.
    """
    if args.workers is not None and args.workers < 1:
        raise InvalidArgument(f"--workers must be a positive integer, got {args.workers}")
    require_distributed()
    if args.no_checkpoint:
        print("preddiff: note: --no-checkpoint ignored with a cluster: the results are handed "
              "over through OUT/<name>_<model>.ckpt.npz (deleted after each image)",
              file=sys.stderr)
        args.no_checkpoint = False
    kwargs = engine_kwargs(args, model, window)
    classifier = model.classifier
    # an IncrementalClassifier built without a batch size picks its own (per device)
    recipe = ClassifierRecipe.for_file(
        model.extra["onnx"], [model.blob], getattr(classifier, "_user_batch",
                                                   classifier.batch_size),
        incremental=type(classifier).__name__ == "IncrementalClassifier",
        device=args.device, threads=args.threads)
    prepared, analyses = {}, []
    for spec in args.images:
        if spec in prepared:
            continue
        prepared[spec] = item = prepare_image(args, model, spec, window)
        _, x, _, sampler, _, checkpoint = item
        analyses.append(Analysis(spec, x, recipe, sampler, kwargs, checkpoint,
                                 keep_checkpoint=True, classifier=classifier))
    with connect(workers=args.workers, scheduler=args.scheduler) as client:
        explain_all(client, analyses, progress=not args.no_progress)
    return prepared
