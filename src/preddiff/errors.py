"""Exceptions raised by preddiff.

Every error a user can cause (a bad argument, a missing or corrupt file, a failed download)
is a :class:`PredDiffError`. Its message names the bad value and what is allowed; the
command-line interface prints it as one line on stderr and exits non-zero.
"""


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
