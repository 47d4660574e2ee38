"""Sensitivity maps (Simonyan, Vedaldi & Zisserman 2013), the paper's comparison method.

Zintgraf et al. (2016/2017), §2.1, eq. (1): ``s_i = ∂S_c/∂x_i``, the partial derivative of
the class score ``S_c`` — the class's unit in the *penultimate* layer, before the softmax —
with respect to each input feature; the map shows ``max_channels |s_i|`` per pixel.

Faithful to the authors' released code (``sensitivity_analysis_caffe.py``): the backward pass
is seeded with the unit's own value rather than 1, i.e. the gradient returned is
``S_c(x) · ∂S_c/∂x_i = ½ ∂(S_c²)/∂x_i``. Consequences: the map is the plain saliency map
of Simonyan et al. times ``|S_c(x)|`` (a per-image constant that does not change the map's shape
but does change its scale across images and classes), and where ``S_c(x) < 0`` the *signed*
gradient points the opposite way to ``∂S_c/∂x`` (the absolute-value map is unaffected).
Pass ``seed="one"`` for the unscaled derivative of eq. (1).

The gradient is computed with NumPy vector-Jacobian products through the converted ONNX graph
(:class:`preddiff.graph.Graph`), so no deep-learning framework is needed.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from .errors import InvalidArgument
from .graph import Graph
from .resources import MODELS_DIR

__all__ = ["sensitivity_gradient", "sensitivity_map", "penultimate_blob"]


def _as_graph(model, dtype) -> Graph:
    return model if isinstance(model, Graph) else Graph(model, dtype=dtype)


def _manifest_penultimate(manifest) -> str:
    """The penultimate blob named by a manifest: an object with ``.penultimate`` (the zoo's
    manifest), a mapping as in ``manifest.json``, a path to such a file, or a zoo name."""
    if hasattr(manifest, "penultimate"):
        return str(manifest.penultimate)
    if isinstance(manifest, (str, os.PathLike)):
        path = os.fspath(manifest)
        if not path.endswith(".json"):
            path = os.path.join(MODELS_DIR, path, "manifest.json")
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            known = sorted(p.name for p in MODELS_DIR.iterdir() if (p / "manifest.json").exists())
            raise InvalidArgument(
                f"cannot read manifest {os.fspath(path)!r} ({exc}); give a manifest.json path, "
                f"a manifest mapping or one of the models {known}") from exc
    if isinstance(manifest, Mapping):
        blobs = manifest.get("blobs", {})
        if isinstance(blobs, Mapping) and "penultimate" in blobs:
            return str(blobs["penultimate"])
        if "penultimate" in manifest:
            return str(manifest["penultimate"])
    raise InvalidArgument(f"manifest {manifest!r} names no penultimate blob (blobs.penultimate)")


def penultimate_blob(model, manifest=None) -> str:
    """The blob holding the class scores ``S_c`` of eq. (1).

    Parameters
    ----------
    model : Graph or onnx.ModelProto or path
        The converted network.
    manifest : optional
        A model manifest (zoo object with ``.penultimate``, ``manifest.json`` mapping or path,
        or a zoo name such as ``"alexnet"``). Without it, the input of the graph's last
        Softmax is used (``fc8``, ``loss3/classifier``, ``ip2`` for the zoo nets).

    Returns
    -------
    str
    """
    if manifest is not None:
        return _manifest_penultimate(manifest)
    blob = _as_graph(model, np.float32).softmax_input()
    if blob is None:
        raise InvalidArgument("the model has no Softmax; pass blob= or manifest= to name the "
                              "penultimate (class-score) blob")
    return blob


def _unit_index(unit, shape: tuple[int, ...], blob: str) -> tuple[int, ...]:
    """Index into one sample of a blob of per-sample ``shape``: an int indexes the flattened
    sample (the class for a ``(1, K)`` blob), a tuple indexes its axes."""
    size = int(np.prod(shape))
    if isinstance(unit, (int, np.integer)) and not isinstance(unit, bool):
        if not 0 <= unit < size:
            raise InvalidArgument(f"unit {unit} is out of range for blob {blob!r} with {size} "
                                  f"units per image (allowed 0..{size - 1})")
        return tuple(int(i) for i in np.unravel_index(int(unit), shape))
    if isinstance(unit, tuple) and len(unit) == len(shape) and all(
            isinstance(i, (int, np.integer)) and 0 <= i < n for i, n in zip(unit, shape)):
        return tuple(int(i) for i in unit)
    raise InvalidArgument(f"unit {unit!r} is not valid for blob {blob!r} of shape {shape}: give "
                          f"an int in 0..{size - 1} or an index tuple into {shape}")


def sensitivity_gradient(x, model, unit, blob=None, *, manifest=None, seed="value",
                         dtype=np.float32) -> np.ndarray:
    """Gradient of a penultimate-layer unit with respect to the input, eq. (1).

    Parameters
    ----------
    x : array_like, shape (C, H, W)
        One preprocessed image, as the network takes it (e.g. BGR, mean subtracted).
    model : Graph or onnx.ModelProto or str or os.PathLike
        The converted network (pass a :class:`~preddiff.graph.Graph` to avoid reloading it).
    unit : int or tuple of int
        The unit of ``blob``: an int indexes one image's flattened blob (the class index for
        the ``(1, K)`` score blobs), a tuple indexes its axes.
    blob : str, optional
        Blob of the unit; default the penultimate blob (see :func:`penultimate_blob`).
    manifest : optional
        A model manifest naming the penultimate blob (used when ``blob`` is None).
    seed : {"value", "one"}, default "value"
        Cotangent put on the unit: its own value ``S_c(x)``, as the released code did (the
        gradient is scaled by ``S_c(x)`` and flips sign where it is negative), or 1 for the
        plain derivative ``∂S_c/∂x``.
    dtype : numpy dtype, default float32
        Precision when ``model`` is not already a Graph.

    Returns
    -------
    ndarray, shape (C, H, W)
        ``seed · ∂S_c/∂x``.

    Raises
    ------
    InvalidArgument
        ``x`` is not ``(C, H, W)`` of the model's input size, ``blob`` is unknown, ``unit`` is
        out of range, or ``seed`` is not one of the allowed values.
    """
    if seed not in ("value", "one"):
        raise InvalidArgument(f"seed must be 'value' or 'one', got {seed!r}")
    graph = _as_graph(model, dtype)
    x = np.asarray(x)
    if x.ndim != 3:
        raise InvalidArgument(f"x must be one image of shape (C, H, W), got shape {x.shape}")
    blob = penultimate_blob(graph, manifest) if blob is None else blob
    cache = graph.forward(x[None], keep=blob, trace=True)
    value = cache[blob]
    index = (0,) + _unit_index(unit, value.shape[1:], blob)
    cotangent = np.zeros_like(value)
    cotangent[index] = value[index] if seed == "value" else 1
    return graph.vjp(cache, {blob: cotangent})[0]


def sensitivity_map(x, model, unit, blob=None, *, manifest=None, seed="value",
                    dtype=np.float32) -> np.ndarray:
    """Sensitivity map of Simonyan et al. (2013): ``max_channels |∂S_c/∂x|``, eq. (1).

    Parameters
    ----------
    x, model, unit, blob, manifest, seed, dtype
        As for :func:`sensitivity_gradient`.

    Returns
    -------
    ndarray, shape (H, W)
        Non-negative; the maximum over colour channels of the absolute gradient (scaled by
        ``|S_c(x)|`` with the default ``seed="value"``, as in the released code).

    Examples
    --------
    >>> g = Graph("alexnet.onnx")                                    # doctest: +SKIP
    >>> m = sensitivity_map(x, g, unit=281)          # fc8, tabby cat  # doctest: +SKIP
    >>> m.shape                                                      # doctest: +SKIP
    (227, 227)
    """
    gradient = sensitivity_gradient(x, model, unit, blob, manifest=manifest, seed=seed,
                                    dtype=dtype)
    return np.abs(gradient).max(axis=0)
