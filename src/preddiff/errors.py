"""Exceptions raised by preddiff.

Every error a user can cause (a bad argument, a missing or corrupt file, a failed download)
is a :class:`PredDiffError`. Its message names the bad value and what is allowed; the
command-line interface prints it as one line on stderr and exits non-zero.
"""

from __future__ import annotations


class PredDiffError(Exception):
    """Base class of all user-facing preddiff errors."""


class InvalidArgument(PredDiffError, ValueError):
    """An argument has a value that is not allowed (the message says which, and what is)."""


class CaffeFormatError(PredDiffError):
    """A ``.prototxt`` or ``.caffemodel`` file cannot be read or does not match its net."""


class UnsupportedLayer(CaffeFormatError):
    """The deploy net uses a Caffe layer type the converter does not handle."""


class DownloadError(PredDiffError):
    """Model weights could not be downloaded or failed verification."""


class CheckpointMismatch(PredDiffError):
    """A checkpoint was written by a run with different arguments."""


def interrupted(exc: BaseException | None) -> bool:
    """True if ``exc`` is a Ctrl-C or was raised because of one.

    A ``KeyboardInterrupt`` that lands while a compiled extension module initialises (SciPy's
    HiGHS wrapper, onnxruntime) comes out as ``ImportError: initialization failed`` with the
    interrupt as its cause; the CLI and the figure scripts treat it as the interrupt it is.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
