"""The model zoo: what defines each network, where its weights are, and how to get them.

Each network of the paper (Zintgraf et al. 2017, §4: the Caffe model-zoo AlexNet, GoogLeNet
and VGG16) plus the offline default, Caffe's MNIST LeNet, is described by a bundled
``models/<name>/manifest.json`` next to its ``deploy.prototxt``: the weights' URL, sha1 and
size, the input size and channel order, the mean, the labels, and the blob names of the
penultimate (pre-softmax) and output layers. :func:`manifest` reads it into a
:class:`Manifest`.

The zoo weights are not shipped. :func:`fetch` downloads them with pooch (progress bar on
stderr, sha1 verified, written to a temporary file and renamed only when the hash matches) into
``cache_dir()/"weights"`` (``$PREDDIFF_HOME`` or the platform cache). Offline, the user may
place the file there by hand: every error message names that exact path. LeNet's weights are
bundled with the package.

:func:`ensure_onnx` converts a network to ONNX with :func:`preddiff.caffe.caffe_to_onnx` once
and caches it under ``cache_dir()/"onnx"``; a JSON sidecar records the weights' sha1, the
prototxt's sha1 and a fingerprint of the converter, and the model is converted again when any
of them changes.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from .errors import DownloadError, InvalidArgument, PredDiffError
from .fileio import atomic_write_text, default_file_mode
from .resources import MODELS_DIR, cache_dir, describe_cache

log = logging.getLogger(__name__)

MODEL_NAMES = ("alexnet", "googlenet", "vgg16", "lenet")
"""The networks the zoo knows, in the order they are listed."""

_SIDECAR_VERSION = 2  # 2: the ONNX file's own size and sha1


@dataclasses.dataclass(frozen=True, eq=False)
class Manifest:
    """Everything that defines one network of the zoo (read from its ``manifest.json``).

    Attributes
    ----------
    name : str
        Zoo name (one of :data:`MODEL_NAMES`).
    title : str
        Human-readable description.
    prototxt : Path
        The Caffe deploy net.
    weights_url : str or None
        Where :func:`fetch` downloads the ``.caffemodel`` from; None for bundled weights.
    weights_filename : str
        File name of the weights in the cache (or in the package when bundled).
    sha1 : str
        Expected sha1 of the weights file (40 hex digits).
    size : int
        Expected size of the weights file in bytes.
    bundled : bool
        True when the weights are installed with the package (LeNet).
    input_shape : tuple of int, (C, H, W)
        Network input of one image.
    channel_order : str
        ``"BGR"`` (the Caffe zoo nets) or ``"gray"`` (LeNet).
    scale : float
        Network input value of a white pixel: 255 for the zoo nets (0–255 inputs), 1 for LeNet.
    mean : ndarray of float32, shape (C,) or (C, Hm, Wm)
        Subtracted from the scaled input: per channel, or a mean image (AlexNet, 3×256×256) that
        is cropped to the input, in network channel order. Read-only.
    mean_crop_offset : int or None
        For a mean image, the offset (both axes) of the crop that the released code used
        (29 for AlexNet: the bottom-right 227×227 of the 256×256 mean).
    labels : tuple of str
        Class names in output order.
    penultimate : str
        Blob holding the pre-softmax class scores (for sensitivity maps and eq. (9)).
    output : str
        Blob holding the class probabilities.
    """

    name: str
    title: str
    prototxt: Path
    weights_url: str | None
    weights_filename: str
    sha1: str
    size: int
    bundled: bool
    input_shape: tuple[int, int, int]
    channel_order: str
    scale: float
    mean: np.ndarray
    mean_crop_offset: int | None
    labels: tuple[str, ...]
    penultimate: str
    output: str

    @property
    def num_classes(self) -> int:
        """Number of classes K (length of :attr:`labels`)."""
        return len(self.labels)


def _check_name(name: str) -> str:
    if name not in MODEL_NAMES:
        raise InvalidArgument(
            f"unknown model {name!r}; the zoo has: {', '.join(MODEL_NAMES)}"
        )
    return name


@functools.lru_cache(maxsize=None)
def manifest(name: str) -> Manifest:
    """The :class:`Manifest` of the zoo network ``name``.

    Raises
    ------
    InvalidArgument
        ``name`` is not one of :data:`MODEL_NAMES`.
    """
    folder = MODELS_DIR / _check_name(name)
    spec = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    weights, inp, mean_spec = spec["weights"], spec["input"], spec["mean"]
    if "file" in mean_spec:
        mean = np.load(folder / mean_spec["file"]).astype(np.float32)
    else:
        mean = np.asarray(mean_spec["values"], dtype=np.float32)
    mean.flags.writeable = False
    labels = spec["labels"]
    if isinstance(labels, str):
        text = (folder / labels).read_text(encoding="utf-8")
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    bundled = "bundled" in weights
    return Manifest(
        name=spec["name"],
        title=spec["title"],
        prototxt=folder / spec["prototxt"],
        weights_url=None if bundled else weights["url"],
        weights_filename=weights["bundled"] if bundled else weights["filename"],
        sha1=weights["sha1"].lower(),
        size=int(weights["size"]),
        bundled=bundled,
        input_shape=(int(inp["channels"]), int(inp["height"]), int(inp["width"])),
        channel_order=inp["channel_order"],
        scale=float(inp["scale"]),
        mean=mean,
        mean_crop_offset=mean_spec.get("crop_offset"),
        labels=tuple(labels),
        penultimate=spec["blobs"]["penultimate"],
        output=spec["blobs"]["output"],
    )


def labels(name: str) -> list[str]:
    """Class names of network ``name``, in output order (a new list)."""
    return list(manifest(name).labels)


def weights_path(name: str) -> Path:
    """Where the ``.caffemodel`` of ``name`` is (or must be placed by hand).

    The bundled file for LeNet; ``cache_dir()/"weights"/<filename>`` for the zoo nets.
    """
    m = manifest(name)
    if m.bundled:
        return MODELS_DIR / name / m.weights_filename
    return cache_dir() / "weights" / m.weights_filename


def is_present(name: str, *, verify: bool = False) -> bool:
    """Whether the weights of ``name`` are in place.

    Parameters
    ----------
    name : str
        Zoo name.
    verify : bool
        Also check the sha1 (reads the whole file, about a second for VGG16); by default
        only existence and size are checked.
    """
    path = weights_path(name)
    m = manifest(name)
    try:
        if path.stat().st_size != m.size:
            return False
    except OSError:
        return False
    return not verify or file_sha1(path) == m.sha1


def file_sha1(path: str | os.PathLike) -> str:
    """Hex sha1 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_url_downloader(url: str, output_file, pooch_instance, check_only: bool = False):
    """A pooch downloader for ``file://`` URLs (a local mirror); pooch has none built in."""
    source = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if check_only:
        return source.is_file()
    with open(source, "rb") as src:
        if isinstance(output_file, (str, os.PathLike)):
            with open(output_file, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        else:
            shutil.copyfileobj(src, output_file, 1 << 20)
    return None


URL_SCHEMES = ("http", "https", "ftp", "file")
"""URL schemes :func:`fetch` downloads from."""


def _downloader(url: str, progress: bool):
    import pooch

    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme == "file":
        return _file_url_downloader
    if scheme in ("http", "https"):
        return pooch.HTTPDownloader(progressbar=progress, timeout=60)
    if scheme == "ftp":
        return pooch.FTPDownloader(progressbar=progress, timeout=60)
    raise InvalidArgument(
        f"cannot download from {url!r}: the URL must start with "
        f"{', '.join(s + '://' for s in URL_SCHEMES)}")


def _download_reason(exc: BaseException) -> str:
    """A short, human description of why a download failed."""
    import requests

    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason or ''}".strip()
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in str(exc):
        return "the transfer was interrupted before the whole file arrived"
    if isinstance(exc, requests.exceptions.Timeout):
        return "the server did not answer in time"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "could not connect (offline, or the server is down)"
    text = " ".join(str(exc).split())
    got = re.search(r"got:?\s*(?:sha1:)?([0-9a-f]{40})", text)
    if got or "does not match the known hash" in text:
        found = f"sha1 {got.group(1)}" if got else "another sha1"
        return f"the downloaded file has {found} and was removed"
    return text or type(exc).__name__


def fetch(name: str, *, progress: bool = True, url: str | None = None) -> Path:
    """Download and verify the weights of ``name``; return their path.

    pooch streams the file to a temporary name in the cache folder and renames it only when
    its sha1 matches the manifest (a mismatching download is removed). A file already present
    with the right sha1 is not downloaded again; a present file with a wrong sha1 is reported
    (a warning) and replaced by a fresh download.

    Parameters
    ----------
    name : str
        Zoo name. LeNet's weights are bundled: its path is returned at once.
    progress : bool
        Show a tqdm progress bar on stderr.
    url : str, optional
        Download from this URL (a mirror; ``http(s)://``, ``ftp://`` or ``file://``) instead of
        the manifest's. The sha1 is checked all the same.

    Returns
    -------
    Path
        :func:`weights_path` of ``name``.

    Raises
    ------
    InvalidArgument
        ``url`` is not an ``http(s)://``, ``ftp://`` or ``file://`` URL.
    DownloadError
        Offline, HTTP error, interrupted transfer or checksum mismatch. The one-line message
        names the URL, the expected sha1 and the exact path to place the file by hand.
    """
    import pooch

    m = manifest(name)
    dest = weights_path(name)
    if m.bundled:
        if url is not None:
            raise InvalidArgument(f"the {name} weights are bundled with preddiff; no url is used")
        return dest
    url = url or m.weights_url
    downloader = _downloader(url, progress)  # InvalidArgument for an unusable URL
    stale = ""
    if dest.is_file():
        found = file_sha1(dest)
        if found == m.sha1:
            log.info("%s weights already present at %s (sha1 verified)", name, dest)
            return dest
        stale = f" (the file already there has sha1 {found}, not the expected one)"
        log.warning("%s has sha1 %s, expected %s: downloading it again", dest, found, m.sha1)
    pooch_log = pooch.get_logger()
    level = pooch_log.level
    pooch_log.setLevel(logging.WARNING)  # its "Downloading ..." line: errors stay one line
    log.info("downloading %s weights from %s to %s", name, url, dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        pooch.retrieve(
            url,
            known_hash=f"sha1:{m.sha1}",
            fname=dest.name,
            path=dest.parent,
            progressbar=progress,
            downloader=downloader,
        )
        # pooch renames a private temporary file (mode 0600): give the weights the mode of
        # an ordinary new file, so that a shared cache stays readable
        os.chmod(dest, default_file_mode())
    except Exception as exc:  # requests, ValueError (hash), OSError: all become one message
        reason = _download_reason(exc)
        if isinstance(exc, OSError) and str(cache_dir()) in str(getattr(exc, "filename", "")):
            reason = f"{describe_cache()} cannot hold it ({exc.strerror})"
        raise DownloadError(
            f"could not download the {name} weights from {url}: {reason}. "
            f"Expected sha1 {m.sha1} ({m.size:,} bytes). To install them by hand, download the "
            f"file elsewhere and place it at {dest}{stale}"
        ) from exc
    finally:
        pooch_log.setLevel(level)
    return dest


def verified_weights(name: str) -> Path:
    """:func:`weights_path` of ``name`` after checking that the file is there and has the
    manifest's sha1 (a file placed by hand is verified before it is used).

    Raises
    ------
    PredDiffError
        The weights are missing (the message says ``preddiff models fetch NAME`` and the path
        for placing them by hand) or have the wrong sha1.
    """
    m = manifest(name)
    weights = weights_path(name)
    if not weights.is_file():
        raise PredDiffError(
            f"the {name} weights are not installed: run `preddiff models fetch {name}`, or "
            f"place {m.weights_filename} (sha1 {m.sha1}, {m.size:,} bytes) by hand at {weights}"
        )
    found = file_sha1(weights)
    if found != m.sha1:
        raise PredDiffError(
            f"{weights} has sha1 {found}, expected {m.sha1}: the file is corrupt or not the "
            f"{name} weights; delete it and run `preddiff models fetch {name}`"
        )
    return weights


def onnx_path(name: str, outputs: str | list[str] | tuple[str, ...] | None = None) -> Path:
    """Where the converted ONNX model of ``name`` is cached.

    ``cache_dir()/"onnx"/"<name>.onnx"`` for the default outputs (the last blob only);
    other output selections get their own file, ``<name>-<hash of the names>.onnx``.
    """
    _check_name(name)
    folder = cache_dir() / "onnx"
    if outputs is None:
        return folder / f"{name}.onnx"
    key = outputs if isinstance(outputs, str) else ",".join(outputs)
    return folder / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.onnx"


def _converter_fingerprint() -> str:
    """sha1 over the converter's source files, so that a changed converter reconverts."""
    digest = hashlib.sha1()
    for source in sorted((Path(__file__).parent / "caffe").glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write_json_atomic(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=1))


def _expected_record(name: str, outputs) -> dict:
    m = manifest(name)
    return {
        "version": _SIDECAR_VERSION,
        "model": name,
        "weights_sha1": m.sha1,
        "prototxt_sha1": file_sha1(m.prototxt),
        "converter": _converter_fingerprint(),
        "outputs": outputs if outputs is None or isinstance(outputs, str) else list(outputs),
    }


def onnx_is_current(name: str, outputs=None) -> bool:
    """Whether the cached ONNX of ``name`` exists, was converted from the current weights
    (sha1), prototxt and converter, and is the file that was written (its size and sha1, as
    recorded in the sidecar: a truncated or damaged file is converted again)."""
    path = onnx_path(name, outputs)
    try:
        record = json.loads(_sidecar_path(path).read_text(encoding="utf-8"))
        stat = path.stat()
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    own = {key: record.pop(key, None) for key in ("onnx_size", "onnx_sha1")}
    if record != _expected_record(name, outputs) or own["onnx_size"] != stat.st_size:
        return False
    return _cached_sha1(path, stat) == own["onnx_sha1"]


_SHA1_SEEN: dict = {}


def _cached_sha1(path: Path, stat) -> str:
    """:func:`file_sha1`, remembered per (path, size, mtime) for this process (hashing VGG16's
    ONNX takes a second; a changed file has another size or mtime)."""
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA1_SEEN:
        _SHA1_SEEN[key] = file_sha1(path)
    return _SHA1_SEEN[key]


def ensure_onnx(name: str, outputs: str | list[str] | None = None) -> Path:
    """Path of the ONNX model of ``name``, converting it first when needed.

    The model is (re)converted with :func:`preddiff.caffe.caffe_to_onnx` when it is missing or
    when its sidecar (``<file>.onnx.json``) does not record the current weights sha1, prototxt
    sha1 and converter. Before converting, the weights' sha1 is checked against the manifest
    (so a file placed by hand is verified). The ONNX file is written atomically, then the
    sidecar.

    Parameters
    ----------
    name : str
        Zoo name.
    outputs : None, "all" or list of str
        Graph outputs, as for ``caffe_to_onnx`` (None: the last blob only).
        :class:`preddiff.classifier.OnnxClassifier` can expose other blobs on request without
        a separate file.

    Raises
    ------
    PredDiffError
        The weights are missing (the message says ``preddiff models fetch NAME`` and the path
        for placing them by hand) or have the wrong sha1.
    """
    path = onnx_path(name, outputs)
    if onnx_is_current(name, outputs):
        return path
    m = manifest(name)
    weights = verified_weights(name)
    from .caffe import caffe_to_onnx, save_onnx

    log.info("converting %s to ONNX at %s", name, path)
    model = caffe_to_onnx(m.prototxt, weights, outputs=outputs)
    record = _expected_record(name, outputs)
    for key in ("model", "weights_sha1", "prototxt_sha1", "converter"):
        entry = model.metadata_props.add()
        entry.key, entry.value = f"preddiff.{key}", str(record[key])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sidecar_path(path).unlink(missing_ok=True)
        save_onnx(model, path)
        record.update(onnx_size=path.stat().st_size, onnx_sha1=file_sha1(path))
        _write_json_atomic(_sidecar_path(path), record)
    except OSError as exc:
        # an unusable cache must not stop the run: convert to a temporary folder instead
        fallback = _temporary_folder() / path.name
        save_onnx(model, fallback)
        log.warning("%s cannot hold the converted %s model (%s): using a temporary copy "
                    "at %s, converted again on every run until the cache is fixed",
                    describe_cache(), name, exc.strerror or exc, fallback)
        return fallback
    return path


@functools.lru_cache(maxsize=1)
def _temporary_folder() -> Path:
    """A folder for this process's converted models when the cache is unusable (removed at
    exit)."""
    import atexit
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="preddiff-onnx-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
