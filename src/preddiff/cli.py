"""The ``preddiff`` command line.

Each sub-command lives in a module of :mod:`preddiff.commands` that defines
``register(subparsers)``; the module adds its parser and sets ``func`` (a callable taking the
parsed arguments and returning an exit code). This module only dispatches and turns user
errors into one line on stderr with a non-zero exit; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading

from . import __version__, commands
from .errors import PredDiffError, interrupted

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command of :mod:`preddiff.commands`."""
    parser = argparse.ArgumentParser(
        prog="preddiff",
        description="Prediction Difference Analysis (Zintgraf et al. 2016/2017): which pixels "
        "of an image speak for or against each class of an image classifier (the bundled "
        "LeNet, the Caffe-zoo nets, or your own ONNX model). In Python: preddiff.explain().",
    )
    parser.add_argument("--version", action="version", version=f"preddiff {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [
        importlib.import_module(f"{commands.__name__}.{info.name}")
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    ]
    for module in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        module.register(sub)
    return parser


def ignore_interrupts():
    """Ignore further Ctrl-C (SIGINT) in this process: called once the first one is being
    handled, so that pressing it again while the interpreter shuts down cannot print a
    traceback. Returns the previous handler (None outside the main thread: nothing done)."""
    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return _interrupted(args, argv)
    except (PredDiffError, OSError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"preddiff: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ImportError as exc:  # a broken installation (e.g. onnxruntime's shared library)
        if interrupted(exc):  # a Ctrl-C while an extension module initialised
            return _interrupted(args, argv)
        if args.debug:
            raise
        print(f"preddiff: error: {import_failure(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR


def _interrupted(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Handle a Ctrl-C: one line on stderr, exit status 130 (re-raised with ``--debug``)."""
    # a second Ctrl-C must not turn the one line into a traceback while the process ends;
    # a call from Python (explicit argv, e.g. tests) gets its handler back
    previous = ignore_interrupts()
    try:
        if args.debug:
            raise
        print("preddiff: interrupted", file=sys.stderr)
        return 130
    finally:
        if argv is not None and previous is not None:
            signal.signal(signal.SIGINT, previous)


def import_failure(exc: ImportError) -> str:
    """One line saying which installed package failed to import, and what to do."""
    package = None
    tb = exc.__traceback__
    while tb is not None:  # the innermost module that raised it, outside preddiff
        name = tb.tb_frame.f_globals.get("__name__", "")
        if name and not name.startswith(("preddiff", "importlib")):
            package = name.split(".")[0]
        tb = tb.tb_next
    package = package or (exc.name or "").split(".")[0] or "a required package"
    message = " ".join(str(exc).split()) or type(exc).__name__
    distribution = {"onnxruntime": "onnxruntime-gpu (or onnxruntime)"}.get(package, package)
    return (f"cannot import {package} ({type(exc).__name__}: {message}); the installation is "
            f"broken: reinstall it (pip install --force-reinstall {distribution}); `preddiff "
            "doctor` shows the versions")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
