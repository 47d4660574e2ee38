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

QUIET = "PREDDIFF_REPRODUCE_CHILD"  # = reproduce.common.INTERRUPT_QUIET: the parent says it


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m reproduce.launch MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the script is already stopping
        if not os.environ.get(QUIET):
            print(f"{module.rsplit('.', 1)[-1]}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
