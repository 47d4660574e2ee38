"""Run a reproduce script so that Ctrl-C at any moment ends it with exit status 130 and no
traceback — also while it is still importing NumPy, before its own handler
(:func:`reproduce.common.run_main`) exists (issue 11, case 13).

    python -m reproduce.launch reproduce.fig1 --scale smoke

``run_all.sh`` and ``reproduce/check.py`` start every script this way. Only the standard
library modules below are imported before the ``try``, so the window in which a Ctrl-C can
still print a traceback is the interpreter's own start-up.
"""
import os
import runpy
import signal
import sys

def interrupted(exc: BaseException | None) -> bool:
    """True if ``exc`` is a Ctrl-C or was caused by one (an extension module interrupted while
    it initialises raises ``ImportError`` from the ``KeyboardInterrupt``). Standard library
    only, like the rest of this launcher: :func:`preddiff.errors.interrupted` is the same test
    for code that may import preddiff."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


QUIET = "PREDDIFF_REPRODUCE_CHILD"  # = reproduce.common.INTERRUPT_QUIET: the parent says it


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m reproduce.launch MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except BaseException as exc:  # noqa: BLE001 - only a Ctrl-C, however it surfaces
        if not interrupted(exc):
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the script is already stopping
        if not os.environ.get(QUIET):
            print(f"{module.rsplit('.', 1)[-1]}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
